"""Export an eval-mode model to MINDIR or ONNX for deployment.

Both formats take any batch size: the batch dimension is exported as dynamic (named "batch" in ONNX,
whose input is "images" and output "logits"); height and width are fixed at the exported image size.
Next to the file, <name>.json holds the checkpoint's meta (model, num_classes, width, bn_eps, classes...)
and the image size, so inference from the exported file can check its flags and name the classes.
"""
import json
from pathlib import Path
from typing import Optional

import mindspore as ms
import numpy as np

from .errors import UserError

EXTENSIONS = {"MINDIR": ".mindir", "ONNX": ".onnx"}
INPUT_NAME, OUTPUT_NAME, BATCH_AXIS = "images", "logits", "batch"


def with_extension(path, file_format: str) -> Path:
    """`path` with the format's extension added unless it ends with it already."""
    if file_format not in EXTENSIONS:
        raise ValueError(f"file_format must be one of {', '.join(EXTENSIONS)}, got {file_format!r}")
    path, extension = Path(path), EXTENSIONS[file_format]
    return path if path.suffix == extension else path.with_name(path.name + extension)


def export_path(checkpoint, file_format: str, file_name: Optional[str] = None) -> Path:
    """Where to export: `file_name`, else next to the checkpoint under its name; with the format's extension."""
    return with_extension(file_name or Path(checkpoint).with_suffix(""), file_format)


def meta_path(exported) -> Path:
    """The JSON file with the meta of an exported model: its name with .json for the extension."""
    return Path(exported).with_suffix(".json")


def read_meta(exported) -> dict:
    """The meta written next to an exported model, or {} if there is none (a file from elsewhere)."""
    path = meta_path(exported)
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{path} (the meta of {exported}) is not readable JSON ({err}); "
                        "export again or delete it") from None


def export(net, path, file_format: str, image_size: int, meta: Optional[dict] = None) -> Path:
    """Write `net` in eval mode for NCHW float32 images of `image_size`; returns the file written.

    With `meta` (the checkpoint's), also writes it with "image_size" to meta_path(file).
    """
    path = with_extension(path, file_format)
    net.set_train(False)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if file_format == "MINDIR":
            ms.export(net, ms.Tensor(shape=[None, 3, image_size, image_size], dtype=ms.float32),
                      file_name=str(path), file_format=file_format)
        else:
            _export_onnx(net, path, image_size)
        if not path.is_file():
            raise UserError(f"MindSpore reported no error but wrote no {path}")
        if meta is not None:
            meta_path(path).write_text(json.dumps(dict(meta, image_size=image_size), indent=1))
    except OSError as err:
        raise UserError(f"could not write {path} ({err}); check that {path.parent} is writable") from None
    return path


def _export_onnx(net, path: Path, image_size: int):
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
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
