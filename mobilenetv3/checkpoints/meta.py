"""The meta a model file carries: what network it holds (model, num_classes, width, BatchNorm's eps and
momentum), its class list and preprocessing, how it was made (config, epoch, source, preset, ...), and for
an exported file the image size it takes. One JSON object, kept
- in a checkpoint, as its entry "meta" (files.py writes it);
- in an ONNX file, in its metadata_props under ONNX_META_KEY (ONNX Runtime reads it without the onnx
  package: session.get_modelmeta().custom_metadata_map);
- beside a MINDIR, in <file>.json (sidecar_path): MindIR can hold strings, but mindspore.load gives no
  access to them.
read_meta reads it from any of them; a file from elsewhere has none ({}).
"""
import json
from pathlib import Path
from typing import Optional

from ..errors import UserError

META_KEY = "meta"
ONNX_META_KEY = "mobilenetv3.meta"
NETWORK_KEYS = ("model", "num_classes", "width")  # what a meta fixes about the network


def sidecar_path(exported) -> Path:
    """The JSON file with the meta of an exported MINDIR (or of an ONNX file exported before the meta went
    inside it): its full name with .json added."""
    exported = Path(exported)
    return exported.with_name(exported.name + ".json")


def parse_meta(text: str, where: str) -> dict:
    """The JSON object `text`; a UserError naming `where` it came from if it is not one."""
    try:
        meta = json.loads(text)
    except ValueError as err:
        raise UserError(f"{where} is not readable JSON ({err}); export or save it again") from None
    if not isinstance(meta, dict):
        raise UserError(f"{where} is not a JSON object; export or save it again")
    return meta


def read_meta(path, embedded: Optional[str] = None) -> dict:
    """The meta of the model file `path`: a checkpoint's own (read alone, in milliseconds); for an exported
    file the JSON it carries (`embedded`, when the caller has read it already, e.g. from its ONNX Runtime
    session), else the sidecar_path file beside it, else {}. An unreadable checkpoint or malformed meta is a
    UserError."""
    path = Path(path)
    if path.suffix == ".ckpt":
        return _checkpoint_meta(path)
    if embedded is None and path.suffix == ".onnx":
        embedded = _onnx_embedded(path)
    if embedded is not None:
        return parse_meta(embedded, f"the {ONNX_META_KEY} metadata of {path}")
    sidecar = sidecar_path(path)
    try:
        text = sidecar.read_text()
    except FileNotFoundError:
        return {}
    except OSError as err:
        raise UserError(f"{sidecar} (the meta of {path}) cannot be read ({err.strerror})") from None
    return parse_meta(text, f"{sidecar} (the meta of {path})")


def _checkpoint_meta(path: Path) -> dict:
    import mindspore as ms
    try:
        meta = ms.load_checkpoint(str(path), choice_func=lambda name: name == META_KEY).get(META_KEY)
    except (RuntimeError, ValueError, OSError) as err:
        raise UserError(f"checkpoint {path} is truncated, corrupt or not a MindSpore checkpoint ({err})") from None
    return parse_meta(str(meta), f"the meta of checkpoint {path}") if meta is not None else {}


def _onnx_embedded(path: Path) -> Optional[str]:
    try:
        import onnxruntime
    except ImportError:
        raise UserError(f"reading {path} needs ONNX Runtime: pip install onnxruntime (or pip install .[onnx])") \
            from None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    try:
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # ONNX Runtime's errors have no common base class but Exception
        raise UserError(f"{path} is truncated, corrupt or not an ONNX model ({type(err).__name__}: {err})") from None
    return session.get_modelmeta().custom_metadata_map.get(ONNX_META_KEY)


def check_model_matches(meta: dict, path, model: Optional[str] = None, num_classes: Optional[int] = None,
                        width: Optional[float] = None):
    """One clear UserError if the meta of `path` says it was made for another model than the values given
    (None: not checked)."""
    kind = "checkpoint" if str(path).endswith(".ckpt") else "file"
    for key, value in (("model", model), ("num_classes", num_classes), ("width", width)):
        saved = meta.get(key)
        if value is not None and saved is not None and saved != value:
            raise UserError(f"{'checkpoint ' if kind == 'checkpoint' else ''}{path} is for {key} {saved!r}, but {key} "
                            f"is {value!r}; pass --{key} {saved} or use another {kind}")


def flagged(stated: dict, flags, keys=NETWORK_KEYS) -> dict:
    """The values of `stated` among `keys` that the user gave as flags: what a file's meta must agree with
    (its meta wins over a config file's value, so only a flag can contradict it)."""
    return {key: stated[key] for key in keys if key in flags and key in stated}
