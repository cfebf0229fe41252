"""The AVX2 kernels: the depthwise one equal to nn.Conv2d(group=C) forward and backward for every depthwise
layer of both models, bit-identical run to run and across thread counts, put into a network by
passes.use_cpu_kernels with its parameters and names unchanged; hard-swish and the mean equal to MindSpore's
ops with their gradients; a clean fall back to MindSpore's ops (one line on stderr) when the library cannot
be built. The inference-only kernels: tests/test_folding.py."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import mindspore as ms
from mindspore import nn, ops

from mobilenetv3.native import build, cpu_info, cpu_kernels
from mobilenetv3.models.factory import create_model
from mobilenetv3.models.architectures import ARCHITECTURES, make_divisible
from mobilenetv3.models.mobilenetv3 import GlobalAvgPool, HardSwish, conv2d
from mobilenetv3.models.passes import KernelGlobalAvgPool, KernelHardSwish, is_depthwise, use_cpu_kernels

if cpu_kernels.kernel_library() is None:
    pytest.skip("the AVX2 kernels cannot run here (see the reason on stderr)", allow_module_level=True)


def depthwise_layers():
    """(channels, kernel, stride) of every depthwise convolution of both models at width 1.0."""
    return sorted({(make_divisible(row.expanded), row.kernel, row.stride)
                   for arch in ARCHITECTURES.values() for row in arch.blocks})


# Spatial sizes (odd, even, down to 1) and batches, cycled over the layers so that each size meets
# both strides and both kernels.
SIZES_AND_BATCHES = [(7, 3), (3, 1), (1, 3), (14, 1), (9, 3), (5, 1), (28, 3), (2, 1), (11, 3)]
CASES = [(*layer, *SIZES_AND_BATCHES[i % len(SIZES_AND_BATCHES)]) for i, layer in enumerate(depthwise_layers())]


class Gradients(nn.Cell):
    """(dL/dx, dL/dw) of conv(x) for the upstream gradient dy. (Calling conv for y in the same graph makes
    MindSpore 2.10 report a graph cycle, with nn.Conv2d too.)"""

    def __init__(self, conv):
        super().__init__()
        self.conv = conv
        self.grad = ms.ops.GradOperation(get_all=True, get_by_list=True, sens_param=True)
        self.weights = ms.ParameterTuple(conv.trainable_params())

    def construct(self, x, dy):
        (dx,), (dw,) = self.grad(self.conv, self.weights)(x, dy)
        return dx, dw


def forward_and_gradients(conv, x, dy) -> list:
    """[y, dL/dx, dL/dw] as numpy arrays, each computed in GRAPH mode."""
    return [t.asnumpy() for t in (conv(x), *Gradients(conv)(x, dy))]


def on_kernel(conv: nn.Conv2d) -> bool:
    return isinstance(conv.conv2d, ops.Custom)


def kernel_conv(channels, kernel, stride, **init) -> nn.Conv2d:
    """models.mobilenetv3.conv2d's depthwise convolution, running the kernel."""
    conv = use_cpu_kernels(conv2d(channels, channels, kernel, stride, channels, **init))
    assert on_kernel(conv)
    return conv


def reference_conv(conv) -> nn.Conv2d:
    channels, kernel, stride = conv.in_channels, conv.kernel_size[0], conv.stride[-1]
    return nn.Conv2d(channels, channels, kernel, stride, pad_mode="pad", padding=kernel // 2, group=channels,
                     has_bias=False, weight_init=ms.Tensor(conv.weight.asnumpy()))


def inputs(channels, kernel, stride, size, batch, seed=0):
    rng = np.random.default_rng(seed)
    out = (size + 2 * (kernel // 2) - kernel) // stride + 1
    return (ms.Tensor(rng.standard_normal((batch, channels, size, size), dtype=np.float32)),
            ms.Tensor(rng.standard_normal((batch, channels, out, out), dtype=np.float32)))


def test_every_depthwise_layer_of_both_models_is_covered():
    assert len(depthwise_layers()) == 20  # 11 Small + 15 Large layers, 6 shapes shared
    assert {(k, s) for _, k, s, _, _ in CASES} == {(3, 1), (3, 2), (5, 1), (5, 2)}
    assert {b for *_, b in CASES} == {1, 3} and {1, 3, 7} <= {size for *_, size, _ in CASES}


@pytest.mark.parametrize("channels,kernel,stride,size,batch", CASES)
def test_matches_nn_conv2d_forward_and_both_gradients(channels, kernel, stride, size, batch):
    conv = kernel_conv(channels, kernel, stride)
    assert conv.weight.shape == (channels, 1, kernel, kernel)
    x, dy = inputs(channels, kernel, stride, size, batch)
    ours = forward_and_gradients(conv, x, dy)
    expected = forward_and_gradients(reference_conv(conv), x, dy)
    for name, a, b in zip(("y", "dx", "dw"), ours, expected):
        assert a.shape == b.shape, name
        assert np.max(np.abs(a - b)) <= 1e-5 * np.max(np.abs(b)), name
        assert np.max(np.abs(b)) > 0, name  # not vacuous


def test_with_a_bias_matches_nn_conv2d_with_that_bias():
    bias = ms.Tensor(np.random.default_rng(3).standard_normal(40, dtype=np.float32))
    conv = kernel_conv(40, 5, 1, bias_init=bias)
    assert conv.bias.shape == (40,)
    reference = nn.Conv2d(40, 40, 5, 1, pad_mode="pad", padding=2, group=40, has_bias=True,
                          weight_init=ms.Tensor(conv.weight.asnumpy()), bias_init=bias)
    x, _ = inputs(40, 5, 1, 9, 2)
    ours, expected = conv(x).asnumpy(), reference(x).asnumpy()
    assert np.max(np.abs(ours - expected)) <= 1e-5 * np.max(np.abs(expected))
    assert np.max(np.abs(ours - conv2d(40, 40, 5, 1, 40, weight_init=conv.weight.value())(x).asnumpy())) > 0.1


class WeightedSum(nn.Cell):
    def __init__(self, cell):
        super().__init__()
        self.cell = cell

    def construct(self, x, weights):
        return (self.cell(x) * weights).sum()


@pytest.mark.parametrize("kind", ["hard-swish", "mean"])
def test_hard_swish_and_mean_kernels_match_mindspore_and_their_gradients(kind):
    library = cpu_kernels.kernel_library()
    kernel, reference = ((KernelHardSwish(library), HardSwish()) if kind == "hard-swish" else
                         (KernelGlobalAvgPool(library, keep_dims=True), GlobalAvgPool()))
    x = ms.Tensor(np.random.default_rng(4).uniform(-5, 5, (3, 13, 7, 9)).astype(np.float32))
    ones = ms.Tensor(np.random.default_rng(5).uniform(0.5, 2, (3, 13, 7, 9) if kind == "hard-swish" else (3, 13, 1, 1))
                     .astype(np.float32))
    gradients = [ms.grad(WeightedSum(cell)) for cell in (kernel, reference)]
    for ours, expected in ((kernel(x), reference(x)), (gradients[0](x, ones), gradients[1](x, ones))):
        ours, expected = ours.asnumpy(), expected.asnumpy()
        assert ours.shape == expected.shape and np.max(np.abs(expected)) > 0.01
        assert np.max(np.abs(ours - expected)) <= 1e-6 * np.max(np.abs(expected))


def test_bit_identical_run_to_run_and_for_any_thread_count():
    conv = kernel_conv(72, 5, 2)
    x, dy = inputs(72, 5, 2, 29, 4, seed=1)
    runs = []
    try:
        for threads in (2, 2, 1, 3):
            cpu_kernels.set_threads(threads)
            runs.append(forward_and_gradients(conv, x, dy))
    finally:
        cpu_kernels.set_threads(cpu_info.physical_cores())
    for run in runs[1:]:
        for a, b in zip(runs[0], run):
            assert a.tobytes() == b.tobytes()


def test_use_cpu_kernels_runs_every_depthwise_layer_hard_swish_and_pool_on_them_and_keeps_the_parameters():
    net = create_model("mobilenet_v3_small")
    before = [(p.name, p.shape, id(p)) for p in net.get_parameters()]
    assert not any(isinstance(cell, nn.Conv2d) and on_kernel(cell) for _, cell in net.cells_and_names())
    use_cpu_kernels(net)
    assert [(p.name, p.shape, id(p)) for p in net.get_parameters()] == before
    kernels = {name: cell for name, cell in net.cells_and_names() if isinstance(cell, nn.Conv2d) and on_kernel(cell)}
    assert len(kernels) == 11
    assert kernels["features.2.block.1.0"].weight.shape == (72, 1, 3, 3)
    assert all(cell.group == 1 for name, cell in net.cells_and_names()
               if isinstance(cell, nn.Conv2d) and name not in kernels)
    kinds = [type(cell) for _, cell in net.cells_and_names()]
    assert HardSwish not in kinds and GlobalAvgPool not in kinds
    assert kinds.count(KernelHardSwish) == 19 and kinds.count(KernelGlobalAvgPool) == 9 + 1  # SE blocks, head
    large = use_cpu_kernels(create_model("mobilenet_v3_large"))
    assert sum(isinstance(cell, nn.Conv2d) and on_kernel(cell) for _, cell in large.cells_and_names()) == 15


def test_whole_model_logits_match_the_nn_conv2d_formulation():
    nets = [create_model("mobilenet_v3_large", 10, dropout_rate=0.0).set_train(False) for _ in range(2)]
    ms.load_param_into_net(nets[1], {p.name: ms.Parameter(p.data.copy(), name=p.name)
                                     for p in nets[0].get_parameters()})
    x = ms.Tensor(np.random.default_rng(2).standard_normal((2, 3, 64, 64), dtype=np.float32))
    ours = use_cpu_kernels(nets[0])(x).asnumpy()
    plain = nets[1](x).asnumpy()
    assert np.max(np.abs(plain)) > 0
    assert np.max(np.abs(ours - plain)) <= 1e-5 * np.max(np.abs(plain))


MODEL_SUMMARY = """
import json, sys
from mobilenetv3 import log
log.configure()  # as the scripts do: warnings on stderr as "warning: ..."
import mindspore as ms
ms.set_device("CPU")
ms.set_seed(3)
from mobilenetv3.models.factory import create_model
from mobilenetv3.models.passes import use_cpu_kernels
net = use_cpu_kernels(create_model("mobilenet_v3_small"))
use_cpu_kernels(create_model("mobilenet_v3_large"))  # the reason is printed once, not per model
kernels = sum(isinstance(cell, ms.nn.Conv2d) and isinstance(cell.conv2d, ms.ops.Custom) for _, cell in net.cells_and_names())
params = {p.name: [list(p.shape), float(p.asnumpy().astype("float64").sum())] for p in net.get_parameters()}
print(json.dumps({"kernels": kernels, "params": params}))
"""


def model_summary(env) -> tuple:
    result = subprocess.run([sys.executable, "-c", MODEL_SUMMARY], capture_output=True, text=True, timeout=300,
                            env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


def test_without_a_compiler_the_pass_leaves_mindspores_ops_with_one_line_saying_why(tmp_path, monkeypatch):
    base = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), GLOG_v="3")
    fallback, stderr = model_summary(dict(base, CXX="/nonexistent"))
    assert fallback["kernels"] == 0
    reasons = [line for line in stderr.splitlines() if "AVX2" in line]
    assert reasons == ["warning: not using the faster AVX2 kernels (MindSpore's ops instead, same results): no "
                       "C++ compiler (/nonexistent not found); install one (apt-get install g++) or set CXX to a "
                       "C++17 compiler"]
    assert not list((tmp_path / "cache").rglob("*.so"))
    # Built into the (empty) cache: the kernel model has the same parameters, names and initial values.
    with_kernel, stderr = model_summary(base)
    assert with_kernel["kernels"] == 11
    assert "AVX2" not in stderr
    assert with_kernel["params"] == fallback["params"]
    assert fallback["params"]["features.1.block.0.0.weight"][0] == [16, 1, 3, 3]
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert [p.relative_to(tmp_path / "cache") for p in (tmp_path / "cache").rglob("*") if p.is_file()] \
        == [cpu_kernels.library_path().relative_to(tmp_path / "cache")]  # no temporary files left


def test_a_failing_build_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", "false")
    reason = build.build(cpu_kernels.SOURCE, cpu_kernels.FLAGS, tmp_path / "lib.so")
    assert reason.startswith("compiling it failed (exit status 1); run `false -Wall -O3 -mavx2 -mfma")
    assert list(tmp_path.iterdir()) == []


def test_kernel_refuses_what_it_cannot_compute():
    assert cpu_kernels.kernel_supports(16, 3, 1) and cpu_kernels.kernel_supports(16, 7, 2)
    assert not cpu_kernels.kernel_supports(16, 4, 1) and not cpu_kernels.kernel_supports(16, 9, 1)
    assert not cpu_kernels.kernel_supports(16, 3, 3)
    for unsupported in (conv2d(16, 16, 3, 3, 16), conv2d(16, 16, 4, 1, 16), conv2d(16, 16, 3, 1, 4)):
        assert not is_depthwise(unsupported) and not on_kernel(use_cpu_kernels(unsupported))
