"""Train MobileNetV3 on an ImageNet-layout folder (DIR/train/<class>/*.jpg, DIR/val/<class>/*.jpg).

Examples:
  # 8 GPUs, the seed recipe (batch_size is per process: 8 x 64 images per step)
  mpirun -n 8 python scripts/train.py --model mobilenet_v3_small --data_url ./dataset/imagenet --epoch_size 120
  # a recipe file, some keys overridden
  python scripts/train.py --config configs/mobilenet_v3_large_imagenet.yaml --data_url DIR --max_lr 0.2
  # CPU, 2 processes
  mpirun --bind-to none -n 2 python scripts/train.py --device_target CPU --data_url DIR --num_classes 10
  # continue the latest checkpoint in ckpt_save_dir; fine-tune from other weights
  python scripts/train.py --config my.yaml --resume auto
  python scripts/train.py --data_url DIR --num_classes 37 --pretrained imagenet.ckpt --max_lr 0.01
"""
from mobilenetv3.cli import TRAIN_KEYS, parse_args, run_cli


def main(argv=None):
    config = parse_args(argv, description=__doc__, keys=TRAIN_KEYS)
    from mobilenetv3.cluster import device  # MindSpore starts here, after run_cli's process defaults
    from mobilenetv3.cluster.distributed import check_same_config, init_distributed
    from mobilenetv3.training.trainer import train
    device.setup(config.device_target, config.seed, device_id=config.device_id)
    dist = init_distributed(config.device_target, config.run_distribute, config.device_id)
    check_same_config(config.values())
    last = train(config, dist)
    if dist.rank == 0:
        print(f"last checkpoint: {last}")


if __name__ == "__main__":
    run_cli(main)
