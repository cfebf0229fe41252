"""Hand-written AVX2 CPU kernels (csrc/cpu_kernels.cc) as MindSpore AOT custom ops. They know no network:
models/passes.py (use_cpu_kernels) puts them into one.

- Depthwise convolutions (depthwise_op, forward and backward). MindSpore 2.10 runs Conv2D(group=C) on
  CPU through oneDNN's im2col+GEMM path, the largest share of a MobileNetV3-Small training step.
- Hard-swish and the global average pool, with their gradients (hard_swish_op, global_mean_op), faster
  than MindSpore's HSwish and ReduceMean kernels.
- For the inference network (models/folding.py): a depthwise convolution with its bias and activation, a bias
  with its activation, and a whole squeeze-excitation, each one kernel.
Results agree with MindSpore's ops to float32 rounding (tests/test_cpu_kernels.py, tests/test_folding.py)
and are bit-identical run to run for any thread count.

The library runs only on CPU, with AVX2 and FMA and a C++ compiler (kernel_library() says whether, and
why not, logged once); elsewhere the network keeps MindSpore's ops. It is compiled on first use into
$XDG_CACHE_HOME/mobilenetv3/<hash>/ (~/.cache by default), keyed by the source, the compiler flags and
the MindSpore version.
"""
import ctypes
import logging
from pathlib import Path
from typing import Optional

import mindspore as ms
from mindspore import ops

from . import build
from .cpu_info import cpu_flags, physical_cores

SOURCE = build.CSRC / "cpu_kernels.cc"
LIBRARY_NAME = "libmobilenetv3_kernels.so"
FLAGS = ["-Wall", "-O3", "-mavx2", "-mfma", "-std=c++17", "-shared", "-fPIC", "-pthread", "-Wl,--no-undefined"]
STRIDES = (1, 2)  # the library's entry points DwFwd<stride> and DwBwd<stride>
MAX_KERNEL = 7

logger = logging.getLogger(__name__)
_state = {}  # "library": its path or None once decided in this process; "handle": ctypes; "threads"


def library_path() -> Path:
    """Where this source, these flags and this MindSpore version are built to."""
    return build.library_path(SOURCE, FLAGS, LIBRARY_NAME, depends_on=ms.__version__)


def kernel_library() -> Optional[str]:
    """The built library's path if its kernels can run in this process, else None.
    Decided once per process; on CPU the reason is logged once when it cannot."""
    if "library" in _state:
        return _state["library"]
    _state["library"] = None
    if ms.get_context("device_target") != "CPU":
        return None  # GPU and Ascend have their own depthwise kernels
    try:
        missing = {"avx2", "fma"} - cpu_flags()
        if missing:
            raise build.Unavailable(f"this CPU lacks {' and '.join(sorted(missing))} (nothing to fix: only slower)")
        # the same loaded copy MindSpore's dlopen gets
        _state["handle"] = build.load(SOURCE, FLAGS, LIBRARY_NAME, depends_on=ms.__version__)
    except build.Unavailable as why:
        logger.warning(f"not using the faster AVX2 kernels (MindSpore's ops instead, same results): {why}")
        return None
    _state["library"] = str(library_path())
    set_threads(_state.get("threads") or physical_cores())
    return _state["library"]


def set_threads(threads: int):
    """Size the kernels' thread pool (caller included). runtime.set_cpu_threads calls this, so the pool
    follows MindSpore's CPU thread setting; until then it has one thread per physical core."""
    _state["threads"] = threads
    if "handle" in _state:
        _state["handle"].DwSetThreads(ctypes.c_int(threads))


def kernel_supports(channels: int, kernel: int, stride: int) -> bool:
    return channels >= 1 and kernel % 2 == 1 and 1 <= kernel <= MAX_KERNEL and stride in STRIDES


def _output_size(size, kernel, stride):
    return (size + 2 * (kernel // 2) - kernel) // stride + 1


def output_shape(stride: int):
    """out_shape of a depthwise op taking (x, w, ...): NCHW with kernel-size padding and `stride`."""
    return lambda x, w, *_: [x[0], x[1], _output_size(x[2], w[2], stride), _output_size(x[3], w[3], stride)]


def custom_op(library: str, entry: str, out_shape, bprop=None):
    """One of the library's entry points as a MindSpore op; its output has the first input's dtype."""
    return ops.Custom(f"{library}:{entry}", out_shape=out_shape, out_dtype=lambda x, *_: x, func_type="aot",
                      bprop=bprop)


def depthwise_op(library: str, stride: int):
    """A depthwise convolution f(x, w) -> y (padding kernel // 2, float32) in place of nn.Conv2d's op,
    whose bprop is the backward op g(x, w, dy) -> (dx, dw)."""
    backward = ops.Custom(f"{library}:DwBwd{stride}", out_shape=lambda x, w, dy: (x, w),
                          out_dtype=lambda x, w, dy: (x, w), func_type="aot")

    def bprop(x, weight, out, dout):
        return backward(x, weight, dout)

    return custom_op(library, f"DwFwd{stride}", output_shape(stride), bprop)


def _with_gradient(library: str, entry: str, out_shape):
    """The library's op `entry`(x) -> y whose gradient is its `entry`Grad(x, dy) -> dx."""
    grad = ops.Custom(f"{library}:{entry}Grad", out_shape=lambda x, dy: x, out_dtype=lambda x, dy: x, func_type="aot")

    def bprop(x, out, dout):
        return (grad(x, dout),)

    return custom_op(library, entry, out_shape, bprop)


def hard_swish_op(library: str):
    """x * relu6(x + 3) / 6 with its gradient, float32."""
    return _with_gradient(library, "HSwish", lambda x: x)


def global_mean_op(library: str):
    """(N, C, H, W) -> (N, C, 1, 1) means with their gradient, float32."""
    return _with_gradient(library, "Mean", lambda x: [x[0], x[1], 1, 1])
