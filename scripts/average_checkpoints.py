"""Average several checkpoints of one model into one (torchvision's MobileNetV3 recipe evaluates the
average of its last checkpoints).

Examples:
  python scripts/average_checkpoints.py --inputs run/mobilenet_v3_large-598_x.ckpt \\
      run/mobilenet_v3_large-599_y.ckpt run/mobilenet_v3_large-600_z.ckpt --output large_avg.ckpt
  # the last 3 checkpoints of the run in ./mobilenet_v3, in the order it wrote them
  python scripts/average_checkpoints.py --last 3 --ckpt_save_dir ./mobilenet_v3 --output large_avg.ckpt
  python scripts/eval.py --data_url ./dataset/imagenet --pretrained large_avg.ckpt

Every floating-point entry is the element-wise mean: weights, BatchNorm running mean and variance, EMA
weights, optimiser state. Integer entries (step counters) and the meta (model, classes, config, epoch)
are the last input's; the meta also lists the files averaged under "averaged". The inputs must be of one
model, hold the same parameters with the same shapes, and each be given once (not twice, nor a copy). The
output loads in eval.py, infer.py and export.py like any checkpoint.
"""
import argparse

from mobilenetv3.cli import run_cli


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    chosen = parser.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--inputs", nargs="+", metavar="CKPT", help="Checkpoints to average (two or more)")
    chosen.add_argument("--last", type=int, metavar="N", help="Average the latest N checkpoints in --ckpt_save_dir")
    parser.add_argument("--ckpt_save_dir", metavar="DIR", help="The training run's folder, with --last")
    parser.add_argument("--output", required=True, metavar="CKPT", help="The averaged checkpoint to write (.ckpt)")
    args = parser.parse_args(argv)
    if args.last is not None and not args.ckpt_save_dir:
        parser.error("--last N needs --ckpt_save_dir DIR (the training run's folder)")
    if args.ckpt_save_dir and args.last is None:
        parser.error("--ckpt_save_dir goes with --last N; with --inputs name the files themselves")
    from mobilenetv3.checkpoints.averaging import average_checkpoints, last_checkpoints
    inputs = args.inputs or last_checkpoints(args.ckpt_save_dir, args.last)
    output = average_checkpoints(inputs, args.output)
    print(f"averaged {len(inputs)} checkpoints ({', '.join(map(str, inputs))}) into {output}")


if __name__ == "__main__":
    run_cli(main)
