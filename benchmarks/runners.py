"""The two sides of each comparison and what they run: the runners (MindSporeRunner, our train step and
folded inference; TorchRunner, the PyTorch twin in eager mode; OnnxRuntimeRunner and OpenVinoRunner, an
exported graph), the
ONNX exports and the int8 quantization made before the runners start (each in a helper process), and
COMPARISONS, which pairs them. A runner is built in its worker process (harness.Worker) and answers
step(mode, batch_size) and .info.
"""
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from benchmarks.processes import in_helper_process

CALIBRATION_IMAGES = 32  # random ones, for the int8 comparison
ROLES = ("ours", "baseline")
TORCH_INSTALL = "pip install torch==2.13.0"
ONNX_INSTALL = "pip install onnxruntime onnx"
OPENVINO_INSTALL = "pip install openvino"
LEARNING_RATE = 1e-3  # small, so that random data cannot drive the weights to inf/NaN over the run


def random_batch(batch_size, image_size, num_classes, seed):
    """The same images and labels for every framework: (uint8 NHWC pixels, as the data pipeline gives them
    to our train step, which normalises them in its graph; the float32 NCHW network input made from
    them, which everything else gets; int32 labels)."""
    from mobilenetv3.data.preprocessing import Preprocessing
    from mobilenetv3.data.transforms import normalize_batch
    rng = np.random.default_rng([seed, batch_size])
    pixels = rng.integers(0, 256, (batch_size, image_size, image_size, 3), dtype=np.uint8)
    images = normalize_batch(pixels, Preprocessing())
    return pixels, images, rng.integers(0, num_classes, batch_size).astype(np.int32)


class MindSporeRunner:
    """Our model: the package's train step (loss, backward, Momentum update) and GRAPH-mode inference of
    the network eval.py and infer.py run (BatchNorm folded: deploy.inference.load_model)."""

    def __init__(self, model, settings):
        import mindspore as ms
        from mobilenetv3.cluster import device
        from mobilenetv3.config import Config
        from mobilenetv3.models.factory import create_model
        from mobilenetv3.models.folding import fold_for_inference
        from mobilenetv3.models.mobilenetv3 import count_complexity
        from mobilenetv3.training.optim import build_optimizer
        from mobilenetv3.training.train_step import amp_level, build_train_step
        self.ms = ms
        device.setup("CPU", settings.seed)
        device.set_cpu_threads(settings.threads)
        self.settings = settings
        self.net = create_model(model, settings.num_classes)
        complexity = count_complexity(self.net, settings.image_size)
        self.info = {"params": complexity.params, "macs": complexity.macs, "threads": settings.threads,
                     "mode": "GRAPH", "jit_level": ms.get_context("jit_config").get("jit_level") or "default"}
        recipe = Config()  # the training defaults
        optimizer = build_optimizer(self.net, np.float32(LEARNING_RATE), recipe.optimizer, recipe.momentum,
                                    recipe.weight_decay)
        self.train_step = build_train_step(self.net, optimizer, recipe.preprocessing(),
                                           amp_level(recipe.amp_level, "CPU"), recipe.smooth_factor,
                                           recipe.loss_scale, recipe.grad_clip, recipe.ema_decay)
        self.inference_net = fold_for_inference(create_model(model, settings.num_classes))
        self.steps = {}

    def step(self, mode, batch_size):
        if (mode, batch_size) not in self.steps:
            pixels, images, labels = random_batch(batch_size, self.settings.image_size, self.settings.num_classes,
                                                  self.settings.seed)
            pixels, images, labels = self.ms.Tensor(pixels), self.ms.Tensor(images), self.ms.Tensor(labels)
            if mode == "train":
                self.steps[mode, batch_size] = lambda: self.train_step(pixels, labels).asnumpy()
            else:
                self.steps[mode, batch_size] = lambda: self.inference_net(images).asnumpy()
        self.net.set_train(mode == "train")
        return self.steps[mode, batch_size]


class TorchRunner:
    """The baseline: the same architecture, loss and optimiser in PyTorch eager (inference_mode for inference)."""

    def __init__(self, model, settings):
        import torch
        from mobilenetv3.config import Config
        from benchmarks.torch_reference import TorchMobileNetV3
        self.torch = torch
        torch.set_num_threads(settings.threads)
        torch.manual_seed(settings.seed)
        recipe = Config()
        self.settings = settings
        self.net = TorchMobileNetV3(model, settings.num_classes, bn_eps=recipe.bn_eps, dropout_rate=recipe.dropout_rate)
        params = list(self.net.parameters())
        groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": recipe.weight_decay},
                  {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
        self.optimizer = torch.optim.SGD(groups, lr=LEARNING_RATE, momentum=recipe.momentum)
        self.loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=recipe.smooth_factor)
        self.info = {"params": sum(p.numel() for p in params), "threads": torch.get_num_threads(), "mode": "eager"}
        self.steps = {}

    def _train(self, images, labels):
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.net(images), labels)
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def _infer(self, images):
        with self.torch.inference_mode():
            return self.net(images).numpy()

    def step(self, mode, batch_size):
        if (mode, batch_size) not in self.steps:
            _, images, labels = random_batch(batch_size, self.settings.image_size, self.settings.num_classes,
                                             self.settings.seed)
            images, labels = self.torch.from_numpy(images), self.torch.from_numpy(labels).long()
            if mode == "train":
                self.steps[mode, batch_size] = lambda: self._train(images, labels)
            else:
                self.steps[mode, batch_size] = lambda: self._infer(images)
        self.net.train(mode == "train")
        return self.steps[mode, batch_size]


class OnnxRuntimeRunner:
    """An exported graph in an ONNX Runtime session (deploy.onnx_backend.make_session): inference only."""

    def __init__(self, path, settings):
        from mobilenetv3.deploy.onnx_backend import make_session
        start = time.perf_counter()
        self.session = make_session(path, settings.threads)
        options = self.session.get_session_options()
        self.info = {"threads": options.intra_op_num_threads, "session_seconds": time.perf_counter() - start,
                     "mode": f"{options.graph_optimization_level.name}, {options.execution_mode.name}"}
        self.input_name = self.session.get_inputs()[0].name
        self.settings = settings
        self.steps = {}

    def step(self, mode, batch_size):
        if mode != "infer":
            raise ValueError(f"ONNX Runtime runs inference only, got mode {mode!r}")
        if batch_size not in self.steps:
            _, images, _ = random_batch(batch_size, self.settings.image_size, self.settings.num_classes,
                                        self.settings.seed)
            self.steps[batch_size] = lambda: self.session.run(None, {self.input_name: images})[0]
        return self.steps[batch_size]


class OpenVinoRunner:
    """An exported graph compiled by OpenVINO (deploy.openvino_backend, as --backend openvino runs it, in
    `precision`): inference only."""
    precision = "f32"

    def __init__(self, path, settings):
        # CompiledOnnx turns a missing openvino into a UserError; an ImportError here marks the comparison
        # as unavailable instead.
        import openvino  # noqa: F401
        from mobilenetv3.deploy.openvino_backend import CompiledOnnx
        start = time.perf_counter()
        loaded = CompiledOnnx(path, settings.threads, self.precision)
        self.request = loaded.compiled.create_infer_request()
        self.info = {"threads": loaded.compiled.get_property("INFERENCE_NUM_THREADS"),
                     "session_seconds": time.perf_counter() - start,
                     "mode": f"{loaded.compiled.get_property('PERFORMANCE_HINT')}, "
                             f"{loaded.compiled.get_property('INFERENCE_PRECISION_HINT').get_type_name()}"}
        self.settings = settings
        self.steps = {}

    def step(self, mode, batch_size):
        if mode != "infer":
            raise ValueError(f"OpenVINO runs inference only, got mode {mode!r}")
        if batch_size not in self.steps:
            _, images, _ = random_batch(batch_size, self.settings.image_size, self.settings.num_classes,
                                        self.settings.seed)
            self.steps[batch_size] = lambda: self.request.infer([images])[0]
        return self.steps[batch_size]


class OpenVinoBf16Runner(OpenVinoRunner):
    """As --backend openvino --precision bf16 runs it (f32 on CPUs without native bf16: its info says which)."""
    precision = "bf16"


def graph_summary(path) -> dict:
    """Node count, op-type histogram and default-domain opset of the ONNX file at `path`, as written
    (ONNX Runtime fuses further when it loads the graph)."""
    import onnx
    graph = onnx.load(str(path))
    op_types = Counter(node.op_type for node in graph.graph.node)
    return {"nodes": len(graph.graph.node), "op_types": dict(sorted(op_types.items())),
            "opset": next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")),
            "file_mb": Path(path).stat().st_size / 1e6}


def export_ours_onnx(model, settings, path) -> dict:
    """Our network with fresh weights, exported by deploy.export.export as the ONNX Runtime backend does."""
    # export and make_session turn a missing package into a UserError; an ImportError here
    # marks the comparison as unavailable instead.
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401
    from mobilenetv3.cluster import device
    from mobilenetv3.deploy.export import export
    from mobilenetv3.models.factory import create_model
    from mobilenetv3.models.mobilenetv3 import count_complexity
    device.setup("CPU", settings.seed)
    net = create_model(model, settings.num_classes)
    complexity = count_complexity(net, settings.image_size)
    start = time.perf_counter()
    written = export(net, path, "ONNX", settings.image_size, {"model": model, "num_classes": settings.num_classes})
    return {"path": str(written), "params": complexity.params, "macs": complexity.macs,
            "export_seconds": time.perf_counter() - start, "graph": graph_summary(written)}


def export_torch_onnx(model, settings, path, opset: int) -> dict:
    """The PyTorch twin (eval mode) exported by torch.onnx.export with a dynamic batch axis at `opset`."""
    import torch
    from mobilenetv3.config import Config
    from benchmarks.torch_reference import TorchMobileNetV3
    torch.manual_seed(settings.seed)
    net = TorchMobileNetV3(model, settings.num_classes, bn_eps=Config().bn_eps).eval()
    example = torch.zeros(1, 3, settings.image_size, settings.image_size)
    start = time.perf_counter()
    with warnings.catch_warnings():
        # dynamo=False: the TorchScript exporter, deprecated but the one needing no onnxscript
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, (example,), str(path), dynamo=False, opset_version=opset,
                          input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
    return {"path": str(path), "params": sum(p.numel() for p in net.parameters()),
            "export_seconds": time.perf_counter() - start, "graph": graph_summary(path)}


def quantize_ours_onnx(float_path, settings, path, engine) -> dict:
    """Our float32 export quantized to int8 for `engine` by deploy.quantize.quantize_onnx, calibrated on random
    batches."""
    from mobilenetv3.deploy.quantize import quantize_onnx
    _, images, _ = random_batch(CALIBRATION_IMAGES, settings.image_size, settings.num_classes, settings.seed)
    start = time.perf_counter()
    written = quantize_onnx(float_path, path, images, {}, engine)
    return {"path": str(written), "quantize_seconds": time.perf_counter() - start, "graph": graph_summary(written)}


# What a comparison's prepare returns: (runner arguments per role that can run, info per role,
# why a role cannot run per role that cannot).
Prepared = Tuple[Dict[str, tuple], Dict[str, dict], Dict[str, str]]


def prepare_frameworks(model, settings, directory: Path, log) -> Prepared:
    """Nothing to do beforehand: each runner builds its model itself."""
    return {role: (model, settings) for role in ROLES}, {role: {} for role in ROLES}, {}


def prepare_onnx_exports(model, settings, directory: Path, log) -> Prepared:
    """Export ours, then the PyTorch twin at ours' opset, each in a helper process, into `directory`."""
    log(f"{model}: exporting both networks to ONNX")
    try:
        ours = in_helper_process(export_ours_onnx, model, settings, directory / "ours.onnx")
    except ImportError as err:
        return {}, {}, {role: str(err) for role in ROLES}
    arguments, info = {"ours": (ours.pop("path"), settings)}, {"ours": ours}
    try:
        baseline = in_helper_process(export_torch_onnx, model, settings, directory / "baseline.onnx",
                                     ours["graph"]["opset"])
    except ImportError as err:
        return arguments, info, {"baseline": str(err)}
    arguments["baseline"], info["baseline"] = (baseline.pop("path"), settings), baseline
    return arguments, info, {}


def prepare_one_export(model, settings, directory: Path, log) -> Prepared:
    """Export ours in float32 (in a helper process) into `directory`: both sides run that file."""
    log(f"{model}: exporting to ONNX")
    try:
        ours = in_helper_process(export_ours_onnx, model, settings, directory / "float32.onnx")
    except ImportError as err:
        return {}, {}, {role: str(err) for role in ROLES}
    path = ours.pop("path")
    return {role: (path, settings) for role in ROLES}, {"ours": ours, "baseline": dict(ours)}, {}


def prepare_int8_exports(model, settings, directory: Path, log, engine: str) -> Prepared:
    """Export ours in float32, then quantize it to int8 for `engine`, each in a helper process, into
    `directory`."""
    log(f"{model}: exporting to ONNX and quantizing to int8 for {engine}")
    try:
        baseline = in_helper_process(export_ours_onnx, model, settings, directory / "float32.onnx")
        ours = in_helper_process(quantize_ours_onnx, baseline["path"], settings, directory / "int8.onnx", engine)
    except ImportError as err:
        return {}, {}, {role: str(err) for role in ROLES}
    ours.update(params=baseline["params"], macs=baseline["macs"])
    arguments = {"ours": (ours.pop("path"), settings), "baseline": (baseline.pop("path"), settings)}
    return arguments, {"ours": ours, "baseline": baseline}, {}


@dataclass(frozen=True)
class Comparison:
    """Ours against a baseline, each a runner class (built in its worker from prepare's arguments,
    answering step(mode, batch_size) and .info) in the modes both run."""
    runners: Dict[str, type]
    modes: Tuple[str, ...]
    prepare: Callable[..., Prepared]
    ours: str  # descriptions, formatted with the report's versions
    baseline: str
    ours_missing: Optional[str]  # why the comparison is left out, formatted with reason=; None: ours is required
    baseline_missing: str


COMPARISONS = {
    "mindspore": Comparison(
        runners={"ours": MindSporeRunner, "baseline": TorchRunner}, modes=("train", "infer"),
        prepare=prepare_frameworks, ours="MindSpore {mindspore} GRAPH mode", baseline="PyTorch {torch} eager",
        ours_missing=None,
        baseline_missing="PyTorch is not importable ({reason}): the baseline is left out; " + TORCH_INSTALL),
    "onnxruntime": Comparison(
        runners={"ours": OnnxRuntimeRunner, "baseline": OnnxRuntimeRunner}, modes=("infer",),
        prepare=prepare_onnx_exports, ours="our ONNX export (BatchNorm folded, HardSwish fused) in ONNX Runtime "
                                           "{onnxruntime}",
        baseline="the PyTorch twin exported by torch.onnx.export (TorchScript exporter, same opset) in ONNX Runtime "
                 "{onnxruntime}",
        ours_missing="ONNX Runtime or onnx is not importable ({reason}): the ONNX Runtime comparison is left out; "
                     + ONNX_INSTALL,
        baseline_missing="PyTorch is not importable ({reason}): the ONNX Runtime baseline (the PyTorch twin's "
                         "export) is left out; " + TORCH_INSTALL),
    "int8": Comparison(
        runners={"ours": OnnxRuntimeRunner, "baseline": OnnxRuntimeRunner}, modes=("infer",),
        prepare=partial(prepare_int8_exports, engine="onnxruntime"),
        ours="our ONNX export quantized to int8 for ONNX Runtime (deploy.quantize.quantize_onnx: QDQ, u8 "
             "activations, s8 per-channel weights) in ONNX Runtime {onnxruntime}",
        baseline="our float32 ONNX export in ONNX Runtime {onnxruntime}",
        ours_missing="ONNX Runtime or onnx is not importable ({reason}): the int8 comparison is left out; "
                     + ONNX_INSTALL,
        baseline_missing="{reason}"),
    "openvino": Comparison(
        runners={"ours": OpenVinoRunner, "baseline": OnnxRuntimeRunner}, modes=("infer",),
        prepare=prepare_one_export, ours="our float32 ONNX export in OpenVINO {openvino} (--backend openvino)",
        baseline="the same file in ONNX Runtime {onnxruntime}",
        ours_missing="OpenVINO, ONNX Runtime or onnx is not importable ({reason}): the OpenVINO comparison is left "
                     "out; " + OPENVINO_INSTALL,
        baseline_missing="{reason}"),
    "openvino_bf16": Comparison(
        runners={"ours": OpenVinoBf16Runner, "baseline": OnnxRuntimeRunner}, modes=("infer",),
        prepare=prepare_one_export, ours="our float32 ONNX export in OpenVINO {openvino} computing in bf16 "
                                         "(--backend openvino --precision bf16)",
        baseline="the same file in ONNX Runtime {onnxruntime}",
        ours_missing="OpenVINO, ONNX Runtime or onnx is not importable ({reason}): the OpenVINO bf16 comparison is "
                     "left out; " + OPENVINO_INSTALL,
        baseline_missing="{reason}"),
    "openvino_int8": Comparison(
        runners={"ours": OpenVinoRunner, "baseline": OnnxRuntimeRunner}, modes=("infer",),
        prepare=partial(prepare_int8_exports, engine="openvino"),
        ours="our ONNX export quantized to int8 for OpenVINO (export.py --quantize int8 --backend openvino) in "
             "OpenVINO {openvino}",
        baseline="our float32 ONNX export in ONNX Runtime {onnxruntime}",
        ours_missing="OpenVINO, ONNX Runtime or onnx is not importable ({reason}): the OpenVINO int8 comparison is "
                     "left out; " + OPENVINO_INSTALL,
        baseline_missing="{reason}"),
}
