"""Convert published MobileNetV3 weights (torchvision or timm) into a MindSpore checkpoint.

Examples:
  # timm's weights as published (model.safetensors; no torch needed), with their preprocessing and accuracy
  python scripts/convert_weights.py --input model.safetensors --preset timm/mobilenetv3_large_100.ra_in1k \\
      --output large_ra.ckpt
  # torchvision's .pth (needs torch: pip install torch==2.13.0)
  python scripts/convert_weights.py --input mobilenet_v3_large-8738ca79.pth \\
      --preset torchvision/mobilenet_v3_large.IMAGENET1K_V1 --output large.ckpt
  python scripts/convert_weights.py --source timm --input mobilenetv3_small_100.pth --model mobilenet_v3_small

--input is a .safetensors file, or a .pth holding a state_dict (or one under 'state_dict' or 'model'):
timm's mobilenetv3_small_100 / mobilenetv3_large_100 (width 1.0 only; not its tf_* variants) or
torchvision's mobilenet_v3_small / mobilenet_v3_large. The naming is told by the tensor names (--source to
say it), the number of classes by the weights; --output defaults to the input's name with .ckpt. The
checkpoint's meta records the model, num_classes, width and BatchNorm eps (timm: 1e-5), which eval, infer
and export read to rebuild the exact model. --preset (model, width and naming follow from it; weights of
another model or number of classes are refused) also records the preprocessing the weight set was evaluated
with and its published accuracy; eval, infer and export then use those transforms unless --interpolation,
--crop_pct, --mean or --std say otherwise (the presets are listed below; the README gives their accuracy).
"""
from pathlib import Path

from mobilenetv3.cli import CONVERT_KEYS, parse_args, run_cli
from mobilenetv3.deploy.presets import PRESETS, preset
from mobilenetv3.errors import UserError


def main(argv=None):
    config = parse_args(argv, description=__doc__, epilog="presets:\n  " + "\n  ".join(PRESETS), keys=CONVERT_KEYS)
    if not config.input:
        raise UserError("no weights given: pass --input WEIGHTS (.safetensors or .pth)")
    source, model, width = config.source, config.model, config.width
    if config.preset:
        chosen = preset(config.preset)
        for name, value in (("source", chosen.source), ("model", chosen.model), ("width", chosen.width)):
            given = getattr(config, name)
            if name in config.flags and given not in (value, "auto"):
                raise UserError(f"--preset {config.preset} is {name} {value}, but --{name} is {given}; "
                                f"drop --{name}")
        source, model, width = chosen.source, chosen.model, chosen.width
    output = config.output or Path(config.input).with_suffix(".ckpt")
    if Path(output).suffix != ".ckpt":
        raise UserError(f"--output {output}: use a file name ending in .ckpt (MindSpore reads checkpoints only under "
                        "that name)")
    from mobilenetv3.deploy.convert import convert_file  # MindSpore starts here, after run_cli's process defaults
    meta = convert_file(config.input, source, model, output, width, config.preset)
    print(f"converted {config.input} ({meta['source']}, {meta['model']}, width {meta['width']}, "
          f"{meta['num_classes']} classes, bn_eps {meta['bn_eps']}"
          + (f", preset {config.preset}" if config.preset else "") + f") -> {output}")


if __name__ == "__main__":
    run_cli(main)
