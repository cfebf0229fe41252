"""Convert PyTorch MobileNetV3 weights (torchvision or timm) into a MindSpore checkpoint.

Examples:
  python scripts/convert_weights.py --source torchvision --input mobilenet_v3_large-8738ca79.pth \\
      --model mobilenet_v3_large --output large.ckpt
  python scripts/convert_weights.py --source timm --input mobilenetv3_small_100.pth --model mobilenet_v3_small

The .pth holds a state_dict, or a training checkpoint with one under 'state_dict' or 'model' (timm's
mobilenetv3_small_100 / mobilenetv3_large_100, width 1.0 only; not its tf_* variants). The number of
classes comes from the weights; --output defaults to the input's name with .ckpt. The checkpoint's meta
records the model, num_classes, width and BatchNorm eps (timm: 1e-5), which eval, infer and export
read to rebuild the exact model. Needs torch: pip install torch==2.13.0.
"""
from pathlib import Path

from mobilenetv3.config import parse_args, run_cli
from mobilenetv3.convert import convert_file
from mobilenetv3.errors import UserError


def main(argv=None):
    config = parse_args(argv, description=__doc__, keys=["source", "input", "model", "width", "output"])
    if not config.input:
        raise UserError("no weights given: pass --input WEIGHTS.pth")
    output = config.output or Path(config.input).with_suffix(".ckpt")
    if Path(output).suffix != ".ckpt":
        raise UserError(f"--output {output}: use a file name ending in .ckpt (MindSpore reads checkpoints only under "
                        "that name)")
    meta = convert_file(config.input, config.source, config.model, output, config.width)
    print(f"converted {config.input} ({config.source}, {meta['model']}, width {meta['width']}, "
          f"{meta['num_classes']} classes, bn_eps {meta['bn_eps']}) -> {output}")


if __name__ == "__main__":
    run_cli(main)
