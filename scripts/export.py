"""Export a checkpoint's model to MINDIR or ONNX, for images of --resize pixels and any batch size.

Examples:
  python scripts/export.py --model mobilenet_v3_large --pretrained large.ckpt --file_format MINDIR --resize 224
  python scripts/export.py --model mobilenet_v3_small --pretrained small.ckpt --file_format ONNX \\
      --resize 224 --file_name exported/small --device_target CPU
  # the EMA weights of a run trained with --ema_decay, to large-ema.mindir
  python scripts/export.py --model mobilenet_v3_large --pretrained large.ckpt --use_ema
  python scripts/export.py --pretrained small.ckpt --file_format ONNX --resize 224 --device_target CPU \\
      --quantize int8 --calib_data ./dataset/imagenet/train --calib_images 300
  # the int8 file shaped for OpenVINO (eval.py/infer.py/serve.py --backend openvino)
  python scripts/export.py --pretrained small.ckpt --file_format ONNX --resize 224 --device_target CPU \\
      --quantize int8 --calib_data ./dataset/imagenet/train --backend openvino

The model is rebuilt in eval mode from the checkpoint's meta (model, num_classes, width, BatchNorm eps);
--model, --num_classes and --width must agree with it. The batch dimension is dynamic in both formats
(ONNX: input "images" of shape [batch, 3, resize, resize], output "logits"). The file is written to
--file_name, else next to the checkpoint, with .mindir or .onnx added. The checkpoint's meta (model,
classes, the preprocessing the model expects, ...) and the image size go with the file: inside an ONNX file
(its metadata_props, key mobilenetv3.meta), so the .onnx alone is enough for infer.py and eval.py; next to a
MINDIR in <file>.mindir.json (mindspore.load cannot read metadata back from a MINDIR), so copy both.
ONNX export needs: pip install onnx.

--quantize int8 also writes <file>.int8.onnx next to the float32 <file>.onnx: static post-training
quantization by ONNX Runtime (pip install onnxruntime), calibrated on --calib_images images (default 300)
drawn evenly from the sorted files below --calib_data and put through the eval transforms the model's
meta says (the same as eval.py and infer.py use). Its graph is shaped for ONNX Runtime, or with --backend
openvino for OpenVINO (each engine runs either, the other's more slowly). Run it with eval.py/infer.py
--backend onnxruntime (or openvino) --pretrained <file>.int8.onnx; README "int8" says what it costs in
accuracy and gains in speed.
"""
import importlib.util
import sys

from mobilenetv3.checkpoints.meta import flagged
from mobilenetv3.cli import EXPORT_KEYS, MODEL_FILE_KEYS, parse_args, run_cli
from mobilenetv3.errors import UserError


def int8_engine(config) -> str:
    """The engine the int8 file is shaped for: --backend openvino, else ONNX Runtime."""
    if "backend" in config.flags and config.quantize != "int8":
        raise UserError(f"--backend {config.backend} shapes the --quantize int8 file for its engine; add "
                        "--quantize int8, or drop --backend (a float export runs on every backend)")
    if "backend" in config.flags and config.backend == "mindspore":
        raise UserError("--quantize int8 writes an ONNX file for --backend onnxruntime or openvino, not mindspore")
    return "openvino" if config.backend == "openvino" else "onnxruntime"


def check_quantize(config):
    """The --quantize int8 errors a user can make, found before anything is exported."""
    if config.file_format != "ONNX":
        raise UserError(f"--quantize int8 needs --file_format ONNX (got {config.file_format}): int8 runs with "
                        "ONNX Runtime or OpenVINO")
    if not config.calib_data:
        raise UserError("--quantize int8 needs --calib_data DIR: a folder of a few hundred images like those the "
                        "model will see, to measure the ranges of its activations")
    if importlib.util.find_spec("onnxruntime") is None:
        raise UserError("--quantize int8 needs ONNX Runtime: pip install onnxruntime (or pip install .[onnx])")
    from mobilenetv3.deploy.quantize import calibration_paths
    return calibration_paths(config.calib_data, config.calib_images)


def main(argv=None):
    config = parse_args(argv, description=__doc__, keys=EXPORT_KEYS)
    engine = int8_engine(config)
    calibration = check_quantize(config) if config.quantize == "int8" else None
    from mobilenetv3.cluster import device  # MindSpore starts here, after run_cli's process defaults
    from mobilenetv3.data.preprocessing import resolve
    from mobilenetv3.deploy.export import export, export_path, warn_if_other_size
    from mobilenetv3.deploy.quantize import calibration_images, int8_path, quantize_onnx
    from mobilenetv3.models.factory import model_from_checkpoint
    device.setup(config.device_target, device_id=config.device_id)
    stated = config.subset(MODEL_FILE_KEYS)
    net, meta = model_from_checkpoint(config.pretrained, config.use_ema, flagged(stated, config.flags), stated)
    preprocessing, preprocessing_line = resolve(config.preprocessing(), config.flags, meta)
    print(preprocessing_line, file=sys.stderr)  # stdout keeps the seed's format
    warn_if_other_size(config.pretrained, meta, preprocessing.resize)
    meta = dict(meta, preprocessing=preprocessing.as_meta())
    path = export(net, export_path(config.pretrained, config.file_format, config.file_name, config.use_ema),
                  config.file_format, preprocessing.resize, meta)
    print(f"exported {config.pretrained} to {path}")
    if calibration is not None:
        images, skipped = calibration_images(calibration, preprocessing)
        for file, reason in skipped:
            print(f"calibration skipped {file}: {reason}", file=sys.stderr)
        quantized = quantize_onnx(path, int8_path(path), images, dict(meta, image_size=preprocessing.resize), engine)
        print(f"quantized {path} to {quantized} (int8 for {engine}, calibrated on {len(images)} images from "
              f"{config.calib_data})")


if __name__ == "__main__":
    run_cli(main)
