"""ONNX Runtime backend for eval and infer (--backend onnxruntime): MindSpore trains and stays the source
of truth, ONNX Runtime runs the same network several times faster on CPU. What follows holds for every
engine that runs our ONNX files (a Runtime: this one, openvino_backend.OPENVINO).

A checkpoint is exported once (export.export: BatchNorm folded, HardSwish/HardSigmoid fused) to
<checkpoint name>-<resize>px.onnx next to it, which carries its meta. The meta records the SHA-256 of the
checkpoint's bytes and CACHE_VERSION; the export is redone when either no longer matches. A content hash
rather than mtime+size, because every checkpoint of one model has exactly the same size, copies (cp -p,
rsync -t) carry an older mtime over, and mtimes are coarse on some file systems; hashing a 10-20 MB
checkpoint takes tens of milliseconds, an export seconds. The cache is written to hidden temporary files
and renamed, so processes exporting at once (mpirun) never read half a file.

An .onnx given directly runs as it is, checked against the meta it carries (in the file, or the .onnx.json
an older export wrote next to it: checkpoints/meta.py); without one (a file from elsewhere, e.g.
torchvision's export), against its input shape. The int8 files quantize.py writes run the same way.

`stated` and `flags` are what the command line says of the model (see inference.load_model).
"""
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection, List, Optional

import numpy as np

from ..checkpoints.files import require_file
from ..checkpoints.meta import NETWORK_KEYS, ONNX_META_KEY, check_model_matches, flagged, read_meta
from ..cluster.device import cpu_threads
from ..data.preprocessing import recorded
from ..errors import UserError
from ..models.factory import model_from_checkpoint
from . import export

logger = logging.getLogger(__name__)
CACHE_VERSION = 2  # bump when the exported graph changes (export.fuse_onnx_graph), to redo cached exports
CACHE_KEYS = ("source_sha256", "onnx_cache_version")


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise UserError("--backend onnxruntime needs ONNX Runtime: pip install onnxruntime onnx "
                        "(or pip install .[onnx])") from None
    return onnxruntime


def session_options(threads: int = 0):
    """All graph optimisations, `threads` threads within each node (0: one per physical core), nodes run
    one after the other (a chain of convolutions has no independent branches worth threads of their own)."""
    ort = _onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = cpu_threads(threads)
    return options


def make_session(path, threads: int = 0):
    """An ONNX Runtime CPU session for the model file `path` with session_options(threads)."""
    ort = _onnxruntime()
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidGraph, InvalidProtobuf
    try:
        return ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
    except (Fail, InvalidGraph, InvalidProtobuf) as err:
        raise load_error(path, f"{type(err).__name__}: {err}") from None


def missing_external_data(path) -> List[str]:
    """The files named by the external-data tensors of the ONNX file `path` (weights kept outside the .onnx,
    as onnx.save(save_as_external_data=True) writes them) that are not beside it; [] when it keeps every
    tensor inside, or when the onnx package (needed to tell) is not installed."""
    try:
        import onnx
        from google.protobuf.message import DecodeError
        from onnx.external_data_helper import ExternalDataInfo, uses_external_data
    except ImportError:
        return []
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, OSError, ValueError):  # a file onnx cannot parse either: the engine's reason stands
        return []
    names = {ExternalDataInfo(tensor).location for tensor in model.graph.initializer if uses_external_data(tensor)}
    return sorted(name for name in names if not (Path(path).parent / name).is_file())


def load_error(path, reason: str) -> UserError:
    """The one line for an ONNX file an engine cannot load, `reason` its error: weights in external data
    files that are not beside it (an engine then names a tensor or a path, and nothing says why), else
    truncated, corrupt or not an ONNX model."""
    missing = missing_external_data(path)
    if missing:
        return UserError(f"{path} keeps its weights in external data ({', '.join(missing)}), missing from "
                         f"{Path(path).parent}: copy it next to the .onnx, or export one self-contained file "
                         "(scripts/export.py --file_format ONNX writes no external data)")
    return UserError(f"{path} is truncated, corrupt or not an ONNX model ({reason})")


def embedded_meta(session) -> Optional[str]:
    """The JSON meta an ONNX file carries (ONNX_META_KEY of its metadata_props), or None."""
    return session.get_modelmeta().custom_metadata_map.get(ONNX_META_KEY)


@dataclass(frozen=True)
class Runtime:
    """An engine that runs ONNX files: open(path, threads) -> its model of the file (a file it cannot load
    is a UserError: load_error), embedded_meta(model) -> the JSON meta the file carries or None,
    inputs(model) -> [(name, shape)] with each dimension an int or, when dynamic, a name."""
    open: Callable
    embedded_meta: Callable
    inputs: Callable


ONNX_RUNTIME = Runtime(make_session, embedded_meta, lambda session: [(i.name, i.shape) for i in session.get_inputs()])


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        for block in iter(lambda: source.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_path(checkpoint_path, image_size: int, use_ema: bool = False) -> Path:
    """Where the checkpoint's export for `image_size`-pixel images (of its EMA weights with `use_ema`) is
    cached: next to it."""
    checkpoint_path = Path(checkpoint_path)
    return checkpoint_path.with_name(f"{checkpoint_path.stem}{'-ema' if use_ema else ''}-{image_size}px.onnx")


def cached_session(path, threads: int = 0, use_ema: bool = False, stated: Optional[dict] = None,
                   flags: Collection[str] = (), runtime: Runtime = ONNX_RUNTIME):
    """(path, `runtime`'s model with `threads` threads: an ONNX Runtime session by default) of the ONNX export
    of checkpoint `path` for the image size it was trained at (or --resize), exported now unless the cached
    one is of the same checkpoint bytes (see the module docstring). --model, --num_classes and --width
    given as flags are checked against the checkpoint's meta either way."""
    stated = stated or {}
    expected = flagged(stated, flags)
    source = require_file(path)
    image_size = stated["resize"] if "resize" in flags else \
        recorded(read_meta(source)).get("resize", stated.get("resize"))  # the size it was trained at
    key = dict(zip(CACHE_KEYS, (file_sha256(source), CACHE_VERSION)))
    target = cache_path(source, image_size, use_ema)
    session = _open_cache(target, threads, runtime)
    cached = read_meta(target, runtime.embedded_meta(session)) if session is not None else {}
    if all(cached.get(name) == value for name, value in key.items()):
        check_model_matches(cached, source, **expected)
        return target, session
    if not os.access(target.parent, os.W_OK):
        raise UserError(f"cannot cache the ONNX export of {source}: {target.parent} is not writable; export it with "
                        "scripts/export.py --file_format ONNX --file_name <writable path> and pass that .onnx as "
                        "--pretrained")
    net, meta = model_from_checkpoint(source, use_ema, expected, stated)
    # Written whole or not at all, and without the meta file an older cache version kept beside it (export.export).
    export.export(net, target, "ONNX", image_size, dict(meta, **key))
    logger.info(f"exported {source} to {target}")
    return target, runtime.open(target, threads)


def _open_cache(target, threads, runtime: Runtime):
    """`runtime`'s model of the cached export, or None if there is none or it is damaged (it is made again)."""
    if not target.is_file():
        return None
    try:
        session = runtime.open(target, threads)
        read_meta(target, runtime.embedded_meta(session))
        return session
    except UserError:
        return None


def check_input(inputs, path, image_size: int):
    """The model (`inputs`: [(name, shape)], see Runtime) must take one NCHW batch of 3 x image_size x
    image_size with a dynamic batch size."""
    shape = inputs[0][1] if len(inputs) == 1 else None
    if shape is None or len(shape) != 4 or isinstance(shape[0], int) or shape[1] != 3 \
            or any(isinstance(side, int) and side != image_size for side in shape[2:]):
        given = ", ".join(f"{name} {shape}" for name, shape in inputs)
        raise UserError(f"{path} takes {given}, but inference needs one input [batch, 3, {image_size}, {image_size}] "
                        f"with a dynamic batch size; export with scripts/export.py --file_format ONNX or pass "
                        f"--resize to match")


def checked_model(path, runtime: Runtime, threads: int = 0, use_ema: bool = False, stated: Optional[dict] = None,
                  flags: Collection[str] = ()):
    """(`runtime`'s model with `threads` threads, its meta) for `path`: a checkpoint's cached export, or the
    .onnx given; its meta and input checked against what the command line says (inference.load_model)."""
    stated = stated or {}
    path = Path(path)
    if path.suffix.lower() != ".onnx":
        path, model = cached_session(path, threads, use_ema, stated, flags, runtime)
    else:
        model = runtime.open(require_file(path, "ONNX file"), threads)
    expected = flagged(stated, flags, (*NETWORK_KEYS, "resize"))
    meta = export.checked_meta(path, "ONNX", stated.get("num_classes"), expected, runtime.embedded_meta(model))
    check_input(runtime.inputs(model), path, meta.get("image_size", stated.get("resize")))
    return model, meta


def onnx_model(path, threads: int = 0, use_ema: bool = False, stated: Optional[dict] = None,
               flags: Collection[str] = ()):
    """(batch of CHW float32 images -> logits, the model's meta) for `path` (.ckpt or .onnx) run by ONNX
    Runtime with `threads` threads: what inference.load_model returns for this backend."""
    session, meta = checked_model(path, ONNX_RUNTIME, threads, use_ema, stated, flags)
    input_name = session.get_inputs()[0].name

    def predict(images: np.ndarray) -> np.ndarray:
        return session.run(None, {input_name: np.ascontiguousarray(images, dtype=np.float32)})[0]

    return predict, meta
