"""Export a checkpoint's model to MINDIR or ONNX, for images of --resize pixels and any batch size.

Examples:
  python scripts/export.py --model mobilenet_v3_large --pretrained large.ckpt --file_format MINDIR --resize 224
  python scripts/export.py --model mobilenet_v3_small --pretrained small.ckpt --file_format ONNX \\
      --resize 224 --file_name exported/small --device_target CPU
  # the EMA weights of a run trained with --ema_decay, to large-ema.mindir
  python scripts/export.py --model mobilenet_v3_large --pretrained large.ckpt --use_ema

The model is rebuilt in eval mode from the checkpoint's meta (model, num_classes, width, BatchNorm eps);
--model, --num_classes and --width must agree with it. The batch dimension is dynamic in both formats
(ONNX: input "images" of shape [batch, 3, resize, resize], output "logits"). The file is written to
--file_name, else next to the checkpoint, with .mindir or .onnx added, and the checkpoint's meta (model,
classes, the preprocessing the model expects, ...) with the image size to that file's name with .json added
(model.mindir.json). ONNX export needs: pip install onnx.
"""
import sys

from mobilenetv3 import preprocessing, runtime
from mobilenetv3.config import PREPROCESSING_KEYS, parse_args, run_cli
from mobilenetv3.export import export, export_path
from mobilenetv3.factory import model_from_checkpoint

KEYS = ["device_target", "device_id", "pretrained", "use_ema", "model", "num_classes", "width", "bn_eps",
        "file_format", "file_name", "resize", *PREPROCESSING_KEYS]


def main(argv=None):
    config = parse_args(argv, description=__doc__, keys=KEYS)
    runtime.setup(config.device_target, device_id=config.device_id)
    net, meta = model_from_checkpoint(config)
    config, preprocessing_line = preprocessing.resolve(config, meta)
    print(preprocessing_line, file=sys.stderr)  # stdout keeps the seed's format
    meta = dict(meta, preprocessing=preprocessing.of_config(config))
    path = export(net, export_path(config.pretrained, config.file_format, config.file_name, config.use_ema),
                  config.file_format, config.resize, meta)
    print(f"exported {config.pretrained} to {path}")


if __name__ == "__main__":
    run_cli(main)
