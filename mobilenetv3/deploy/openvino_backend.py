"""OpenVINO backend for eval and infer (--backend openvino): the very ONNX files of the ONNX Runtime backend
(a checkpoint's cached export, or an .onnx given, float32 or int8), read by OpenVINO's ONNX frontend and
compiled for its CPU plugin, which runs them faster (docs/performance.md). Everything happens in memory
at run time: no converted model is written, nothing is downloaded.

Float32 stays float32 unless --precision bf16 asks otherwise (INFERENCE_PRECISION_HINT; on CPUs with native
bfloat16 OpenVINO's own default is bf16), so the logits agree with ONNX Runtime's to float rounding; an int8
file's quantized ops run in int8, the rest in that precision.
"""
import logging
from collections import Counter
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Collection, Optional

import numpy as np

from ..checkpoints.meta import ONNX_META_KEY
from ..cluster.device import cpu_threads
from ..errors import UserError
from ..native.cpu_info import onednn_uncapped
from .onnx_backend import Runtime, checked_model, load_error

logger = logging.getLogger(__name__)


def _openvino():
    try:
        import openvino
    except ImportError:
        raise UserError("--backend openvino needs OpenVINO: pip install -e '.[openvino]' (or pip install openvino)") \
            from None
    return openvino


def load_failures(ov) -> tuple:
    """The exceptions OpenVINO raises for a model it cannot read or compile."""
    frontend = ov.frontend
    return (RuntimeError, frontend.GeneralFailure, frontend.OpConversionFailure, frontend.OpValidationFailure,
            frontend.InitializationFailure, frontend.NotImplementedFailure)


def reason_of(err: Exception) -> str:
    """OpenVINO's message without the source locations before it: its last line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


def native_precision(core, precision: str) -> str:
    """`precision` if this CPU computes in it natively, else f32 with a warning: without AVX512_BF16 or AMX,
    OpenVINO's CPU plugin would emulate bf16, slower than f32 and as inexact as bf16."""
    if precision == "f32":
        return precision
    capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if precision.upper() not in capabilities:
        logger.warning("--precision %s: this CPU has no native %s (OpenVINO's CPU plugin lists %s); computing in "
                       "f32", precision, precision, ", ".join(capabilities))
        return "f32"
    return precision


class CompiledOnnx:
    """An ONNX file read by OpenVINO (`model`: ov.Model, with the file's metadata) and compiled for the CPU
    with `threads` threads (`compiled`), computing in `precision` (f32 or bf16, see native_precision)."""

    def __init__(self, path, threads: int = 0, precision: str = "f32"):
        ov = _openvino()
        frontend = ov.frontend.FrontEndManager().load_by_framework("onnx")  # the file is ONNX, whatever its name
        try:
            self.model = frontend.convert(frontend.load(str(path)))
            with onednn_uncapped():
                core = ov.Core()
                self.compiled = core.compile_model(self.model, "CPU", {
                    "INFERENCE_NUM_THREADS": cpu_threads(threads),
                    "INFERENCE_PRECISION_HINT": native_precision(core, precision),
                    "PERFORMANCE_HINT": "LATENCY",  # one stream: all threads on each call, as predict makes them
                    "ENABLE_CPU_PINNING": False})  # as ONNX Runtime's threads: free to move off a core others hold
        except load_failures(ov) as err:
            raise load_error(path, f"OpenVINO: {reason_of(err)}") from None
        self.path = Path(path)

    def embedded_meta(self) -> Optional[str]:
        """The JSON meta the file carries (ONNX_META_KEY of its metadata_props, which the frontend keeps in the
        model's rt_info under "framework"), or None."""
        key = ["framework", ONNX_META_KEY]
        return self.model.get_rt_info(key).astype(str) if self.model.has_rt_info(key) else None

    def inputs(self) -> list:
        return [(tensor.get_any_name(), [side.get_length() if side.is_static else "batch" if axis == 0 else "?"
                                         for axis, side in enumerate(tensor.get_partial_shape())])
                for tensor in self.model.inputs]

    def layer_precisions(self) -> Counter:
        """(layer type, precision it runs in) -> how many layers of the compiled graph: what the CPU plugin
        made of the file (an int8 file's quantized convolutions run in u8)."""
        return Counter(tuple(op.get_rt_info()[key].astype(str) for key in ("layerType", "runtimePrecision"))
                       for op in self.compiled.get_runtime_model().get_ops())


OPENVINO = Runtime(CompiledOnnx, CompiledOnnx.embedded_meta, CompiledOnnx.inputs)


def openvino_model(path, threads: int = 0, use_ema: bool = False, stated: Optional[dict] = None,
                   flags: Collection[str] = (), precision: str = "f32"):
    """(batch of CHW float32 images -> logits, the model's meta) for `path` (.ckpt or .onnx) run by OpenVINO
    with `threads` threads in `precision`: what inference.load_model returns for this backend."""
    runtime = replace(OPENVINO, open=partial(CompiledOnnx, precision=precision))
    loaded, meta = checked_model(path, runtime, threads, use_ema, stated, flags)
    request = loaded.compiled.create_infer_request()

    def predict(images: np.ndarray) -> np.ndarray:
        return request.infer([np.ascontiguousarray(images, dtype=np.float32)])[0]  # a copy (share_outputs=False)

    return predict, meta
