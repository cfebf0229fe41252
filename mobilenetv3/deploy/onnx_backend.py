"""ONNX Runtime backend for eval and infer (--backend onnxruntime): MindSpore trains and stays the source
of truth, ONNX Runtime runs the same network several times faster on CPU.

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
from pathlib import Path
from typing import Collection, Optional

import numpy as np

from ..checkpoints.files import require_file
from ..checkpoints.meta import NETWORK_KEYS, ONNX_META_KEY, check_model_matches, flagged, read_meta, sidecar_path
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
        raise UserError(f"{path} is truncated, corrupt or not an ONNX model ({type(err).__name__}: {err})") from None


def embedded_meta(session) -> Optional[str]:
    """The JSON meta an ONNX file carries (ONNX_META_KEY of its metadata_props), or None."""
    return session.get_modelmeta().custom_metadata_map.get(ONNX_META_KEY)


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
                   flags: Collection[str] = ()):
    """(path, ONNX Runtime session with `threads` threads) of the ONNX export of checkpoint `path` for the
    image size it was trained at (or --resize), exported now unless the cached one is of the same
    checkpoint bytes (see the module docstring). --model, --num_classes and --width given as flags are
    checked against the checkpoint's meta either way."""
    stated = stated or {}
    expected = flagged(stated, flags)
    source = require_file(path)
    image_size = stated["resize"] if "resize" in flags else \
        recorded(read_meta(source)).get("resize", stated.get("resize"))  # the size it was trained at
    key = dict(zip(CACHE_KEYS, (file_sha256(source), CACHE_VERSION)))
    target = cache_path(source, image_size, use_ema)
    session = _open_cache(target, threads)
    cached = read_meta(target, embedded_meta(session)) if session is not None else {}
    if all(cached.get(name) == value for name, value in key.items()):
        check_model_matches(cached, source, **expected)
        return target, session
    if not os.access(target.parent, os.W_OK):
        raise UserError(f"cannot cache the ONNX export of {source}: {target.parent} is not writable; export it with "
                        "scripts/export.py --file_format ONNX --file_name <writable path> and pass that .onnx as "
                        "--pretrained")
    net, meta = model_from_checkpoint(source, use_ema, expected, stated)
    partial = target.with_name(f".{target.stem}.{os.getpid()}.partial")
    try:
        written = export.export(net, partial, "ONNX", image_size, dict(meta, **key))
        os.replace(written, target)
        sidecar_path(target).unlink(missing_ok=True)  # a cache version that kept the meta beside the file
    except OSError as err:
        raise UserError(f"could not write {target} ({err})") from None
    finally:
        for leftover in partial.parent.glob(f"{partial.name}.*"):
            leftover.unlink(missing_ok=True)
    logger.info(f"exported {source} to {target} for ONNX Runtime")
    return target, make_session(target, threads)


def _open_cache(target, threads):
    """A session of the cached export, or None if there is none or it is damaged (it is made again)."""
    if not target.is_file():
        return None
    try:
        session = make_session(target, threads)
        read_meta(target, embedded_meta(session))
        return session
    except UserError:
        return None


def check_input(session, path, image_size: int):
    """The model must take one NCHW batch of 3 x image_size x image_size with a dynamic batch size."""
    inputs = session.get_inputs()
    shape = inputs[0].shape if len(inputs) == 1 else None
    if shape is None or len(shape) != 4 or isinstance(shape[0], int) or shape[1] != 3 \
            or any(isinstance(side, int) and side != image_size for side in shape[2:]):
        given = ", ".join(f"{i.name} {i.shape}" for i in inputs)
        raise UserError(f"{path} takes {given}, but inference needs one input [batch, 3, {image_size}, {image_size}] "
                        f"with a dynamic batch size; export with scripts/export.py --file_format ONNX or pass "
                        f"--resize to match")


def onnx_model(path, threads: int = 0, use_ema: bool = False, stated: Optional[dict] = None,
               flags: Collection[str] = ()):
    """(batch of CHW float32 images -> logits, the model's meta) for `path` (.ckpt or .onnx) run by ONNX
    Runtime with `threads` threads: what inference.load_model returns for this backend."""
    stated = stated or {}
    path = Path(path)
    if path.suffix.lower() != ".onnx":
        path, session = cached_session(path, threads, use_ema, stated, flags)
    else:
        session = make_session(require_file(path, "ONNX file"), threads)
    expected = flagged(stated, flags, (*NETWORK_KEYS, "resize"))
    meta = export.checked_meta(path, "ONNX", stated.get("num_classes"), expected, embedded_meta(session))
    check_input(session, path, meta.get("image_size", stated.get("resize")))
    input_name = session.get_inputs()[0].name

    def predict(images: np.ndarray) -> np.ndarray:
        return session.run(None, {input_name: np.ascontiguousarray(images, dtype=np.float32)})[0]

    return predict, meta
