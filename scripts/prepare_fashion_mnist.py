"""Write Fashion-MNIST as an ImageFolder tree (train/<class>/*.png, val/<class>/*.png) for the demo.

The IDX files come from Debian's package (`apt-get install dataset-fashion-mnist`, read from
/usr/share/datasets/fashion-mnist) or from --idx_dir. Images per class are the first N of each class in
file order; a tree that is already complete is left alone.

examples:
  # 600 training images per class, all 1000 per class of the test split for validation
  python scripts/prepare_fashion_mnist.py --output ./data/fashion_mnist --per_class_train 600
  # a tiny tree from IDX files downloaded elsewhere (plain or .gz)
  python scripts/prepare_fashion_mnist.py --output ./data/fm_tiny --per_class_train 20 --per_class_val 10 \\
      --idx_dir ~/Downloads/fashion-mnist
"""
import argparse

from fashion_mnist import DEFAULT_IDX_DIR, prepare  # beside this script: demo tooling, not the library
from mobilenetv3.cli import run_cli


def main(argv=None):
    # argparse rather than config.parse_args: these options are not training Config keys.
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, help="directory to write train/, val/ and the manifest into")
    parser.add_argument("--per_class_train", type=int, help="training images per class (default: all 6000)")
    parser.add_argument("--per_class_val", type=int, help="validation images per class (default: all 1000)")
    parser.add_argument("--idx_dir", help=f"directory with the 4 IDX files (default: {DEFAULT_IDX_DIR})")
    args = parser.parse_args(argv)
    print(prepare(args.output, args.per_class_train, args.per_class_val, args.idx_dir).summary())


if __name__ == "__main__":
    run_cli(main, runs_graphs=False)
