"""Export an eval-mode model to MINDIR or ONNX for deployment.

Both formats take any batch size: the batch dimension is exported as dynamic (named "batch" in ONNX,
whose input is "images" and output "logits"); height and width are fixed at the exported image size.
"""
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


def export(net, path, file_format: str, image_size: int) -> Path:
    """Write `net` in eval mode for NCHW float32 images of `image_size`; returns the file written."""
    path = with_extension(path, file_format)
    net.set_train(False)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if file_format == "MINDIR":
            ms.export(net, ms.Tensor(shape=[None, 3, image_size, image_size], dtype=ms.float32),
                      file_name=str(path), file_format=file_format)
        else:
            _export_onnx(net, path, image_size)
    except OSError as err:
        raise UserError(f"could not write {path} ({err}); check that {path.parent} is writable") from None
    if not path.is_file():
        raise UserError(f"MindSpore reported no error but wrote no {path}")
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
