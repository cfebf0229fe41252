"""Export an eval-mode model to MINDIR or ONNX for deployment.

Both formats take any batch size: the batch dimension is exported as dynamic (named "batch" in ONNX,
whose input is "images" and output "logits"); height and width are fixed at the exported image size.
The checkpoint's meta (model, num_classes, width, bn_eps, classes, preprocessing...) and the image size
travel with the file (inside an ONNX file, beside a MINDIR: checkpoints/meta.py), so the file alone is
enough to predict. The ONNX graph is rewritten into the form ONNX Runtime runs fastest (onnx_graph.py).
"""
import json
import logging
from pathlib import Path
from typing import Optional

import mindspore as ms
import numpy as np

from ..checkpoints.files import follow_umask, require_file
from ..checkpoints.meta import ONNX_META_KEY, check_model_matches, read_meta, sidecar_path
from ..data.preprocessing import INTERPOLATIONS, recorded
from ..errors import UserError
from ..models.passes import written_out
from .onnx_graph import fuse_onnx_graph
from ..atomic import written_whole

logger = logging.getLogger(__name__)

EXTENSIONS = {"MINDIR": ".mindir", "ONNX": ".onnx"}

INPUT_NAME, OUTPUT_NAME, BATCH_AXIS = "images", "logits", "batch"


def with_extension(path, file_format: str) -> Path:
    """`path` with the format's extension added unless it ends with it already."""
    if file_format not in EXTENSIONS:
        raise ValueError(f"file_format must be one of {', '.join(EXTENSIONS)}, got {file_format!r}")
    path, extension = Path(path), EXTENSIONS[file_format]
    return path if path.suffix == extension else path.with_name(path.name + extension)


def export_path(checkpoint, file_format: str, file_name: Optional[str] = None, use_ema: bool = False) -> Path:
    """Where to export: `file_name`, else next to the checkpoint under its name (with -ema added for its EMA
    weights); with the format's extension."""
    checkpoint = Path(checkpoint)
    return with_extension(file_name or checkpoint.with_name(checkpoint.stem + ("-ema" if use_ema else "")), file_format)


def checked_meta(path, file_format: str, num_classes: int, expected: Optional[dict] = None,
                 embedded: Optional[str] = None) -> dict:
    """The meta of an exported model (read_meta), checked like a checkpoint's against what the user insists
    on (`expected`: model, num_classes, width or resize given as flags): the file fixes them, so only those
    can contradict it (data.preprocessing.recorded takes the image size from it). `num_classes` is the
    model's where the file has no meta."""
    require_file(path, f"{file_format} file")
    meta = read_meta(path, embedded)
    problem = malformed_preprocessing(meta)
    if problem:
        raise UserError(f"{path} carries a malformed meta: {problem}; export it again with scripts/export.py")
    expected = dict(expected or {})
    resize = expected.pop("resize", None)
    check_model_matches(meta, path, **expected)
    image_size = meta.get("image_size")
    if None not in (resize, image_size) and image_size != resize:
        raise UserError(f"{path} was exported for {image_size}-pixel images, but --resize is {resize}; "
                        f"pass --resize {image_size} or leave it out")
    return dict(meta, num_classes=meta.get("num_classes", num_classes))


def warn_if_other_size(checkpoint, meta: dict, image_size: int):
    """A warning when `image_size` is not the one the checkpoint's `meta` records (the size it was trained,
    fine-tuned or converted at): the file would take only that size, at which the network's accuracy is
    unknown and often lost (a 32-px model at 224 px is near chance), and nothing else would say so."""
    trained = recorded(meta).get("resize")
    if trained is not None and trained != image_size:
        logger.warning(f"exporting {checkpoint} for {image_size}-pixel images, but its meta records {trained} px "
                       f"(the size it was trained at); its accuracy at {image_size} px is unknown and usually far "
                       f"lower: pass --resize {trained} or leave --resize out")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_size(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _are_channels(value) -> bool:
    return isinstance(value, list) and len(value) == 3 and all(map(_is_number, value))


PREPROCESSING_CHECKS = {  # key -> (valid(value), what it must be)
    "resize": (_is_size, "a whole number of pixels"),
    "interpolation": (lambda value: value in INTERPOLATIONS, " or ".join(INTERPOLATIONS)),
    "crop_pct": (lambda value: _is_number(value) and 0 < value <= 1, "a number in (0, 1]"),
    "mean": (_are_channels, "3 numbers (R, G, B)"),
    "std": (lambda value: _are_channels(value) and min(value) > 0, "3 positive numbers (R, G, B)"),
}


def malformed_preprocessing(meta: dict) -> Optional[str]:
    """What is wrong with the image size and preprocessing an exported file's meta records, or None: an
    "image_size", and a "preprocessing" with mean and std (every writer records them; a weight preset no
    resize), each of its keys as PREPROCESSING_CHECKS says. A file from elsewhere records neither; one that
    records them wrongly would be predicted on with images made wrong, or fail deep inside the pipeline."""
    if "image_size" in meta and not _is_size(meta["image_size"]):
        return f"image_size is {meta['image_size']!r}, not a whole number of pixels"
    if "preprocessing" not in meta:
        return None
    saved = meta["preprocessing"]
    if not isinstance(saved, dict):
        return f"preprocessing is {saved!r}, not an object"
    missing = [key for key in ("mean", "std") if key not in saved]
    if missing:
        return f"preprocessing has no {' or '.join(missing)}"
    for key, (valid, what) in PREPROCESSING_CHECKS.items():
        if key in saved and not valid(saved[key]):
            return f"preprocessing {key} is {saved[key]!r}, not {what}"
    return None


def export(net, path, file_format: str, image_size: int, meta: Optional[dict] = None) -> Path:
    """Write `net` in eval mode for NCHW float32 images of `image_size`; returns the file written. `net`
    is changed in place into ops every exporter knows (passes.written_out).

    With `meta` (the checkpoint's), the file carries it with "image_size" (see the module docstring).
    """
    path = with_extension(path, file_format)
    meta = None if meta is None else dict(meta, image_size=image_size)
    net.set_train(False)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        written_out(net)  # ops both formats know
        with written_whole(path) as partial:
            if file_format == "MINDIR":
                ms.export(net, ms.Tensor(shape=[None, 3, image_size, image_size], dtype=ms.float32),
                          file_name=str(partial), file_format=file_format)
            else:
                _export_onnx(net, partial, image_size, meta)
            if not partial.is_file():
                raise UserError(f"MindSpore reported no error but wrote no {path}")
        follow_umask(path)
        if file_format == "MINDIR" and meta is not None:
            sidecar_path(path).write_text(json.dumps(meta, indent=1))
        elif file_format == "ONNX":
            sidecar_path(path).unlink(missing_ok=True)  # an older export's, which would contradict the file
    except OSError as err:
        raise UserError(f"could not write {path} ({err}); check that {path.parent} is writable") from None
    return path


def _export_onnx(net, path: Path, image_size: int, meta: Optional[dict]):
    try:
        import onnx
    except ImportError:
        raise UserError("ONNX export needs the onnx package: pip install onnx (or pip install .[onnx])") from None
    # ms.export(file_format="ONNX") rejects dynamic shapes; ms.onnx.export takes dynamic input axes.
    example = ms.Tensor(np.zeros((1, 3, image_size, image_size), np.float32))
    ms.onnx.export(net, example, file_name=str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                   dynamic_axes={INPUT_NAME: {0: BATCH_AXIS}})
    # The output keeps the example's batch of 1, and onnxruntime warns on every other batch size.
    model = onnx.load(str(path))
    for output in model.graph.output:
        output.type.tensor_type.shape.dim[0].dim_param = BATCH_AXIS
    fuse_onnx_graph(model)
    if meta is not None:
        set_onnx_meta(model, meta)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def set_onnx_meta(model, meta: dict):
    """Put `meta` into the ONNX model's metadata_props as JSON under ONNX_META_KEY, in place."""
    kept = [prop for prop in model.metadata_props if prop.key != ONNX_META_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=ONNX_META_KEY, value=json.dumps(meta))
