"""Evaluate a checkpoint (or an exported .mindir/.onnx): Top-1/Top-5 accuracy on DIR/val (or on DIR, a
class-folder tree), or with --val_labels on the flat folder DIR (ImageNet's val as it ships).

Examples:
  python scripts/eval.py --model mobilenet_v3_small --data_url ./dataset/imagenet --pretrained small.ckpt
  mpirun -n 8 python scripts/eval.py --model mobilenet_v3_large --data_url ./dataset/imagenet --pretrained large.ckpt
  python scripts/eval.py --config configs/fashion_mnist_demo.yaml --pretrained demo.ckpt --json metrics.json
  python scripts/eval.py --device_target CPU --data_url ./dataset/imagenet --pretrained small.ckpt \\
      --backend onnxruntime --threads 2
  python scripts/eval.py --device_target CPU --data_url ./dataset/imagenet --pretrained small.int8.onnx \\
      --backend openvino --threads 2
  # OpenVINO computing in bfloat16, on CPUs that have it (AMD Zen 4, Intel Sapphire Rapids and later)
  python scripts/eval.py --device_target CPU --data_url ./dataset/imagenet --pretrained small.onnx \\
      --backend openvino --precision bf16
  python scripts/eval.py --data_url ./ILSVRC2012_img_val --pretrained small.ckpt --val_labels val_labels.csv
  python scripts/eval.py --data_url ./ILSVRC2012_img_val --pretrained small.ckpt \\
      --val_labels ILSVRC2012_validation_ground_truth.txt --val_synsets ilsvrc2012_synsets.txt
  # the EMA weights of a run trained with --ema_decay (BatchNorm statistics averaged too)
  python scripts/eval.py --data_url ./dataset/imagenet --pretrained large.ckpt --use_ema

Prints {'Top_1_Accuracy': ..., 'Top_5_Accuracy': ...}, then the mean loss and image count; on stderr, the
preprocessing used (the model's own, recorded in its meta, unless --interpolation, --crop_pct, --mean or --std
say otherwise), and a warning when Top-1 is at chance level (labels that do not belong to the images).
--val_labels: FILE.csv with the header filename,class (filename relative to --data_url), or any other file
with one label per line for the image files in sorted name order. A class is a name or synset of the model's
class list, or an integer: a 0-based index into it, or with --val_synsets line k of that file (from 1, as the
devkit's ILSVRC2012_validation_ground_truth.txt counts). Every image needs a label, every label a known class.
--json FILE also gets per-class accuracy and the confusion matrix (rows: true class, columns: Top-1 prediction).
With fewer than 5 classes, Top-5 is top-num_classes accuracy (always 1.0). --backend onnxruntime exports
the checkpoint to ONNX once (cached next to it as <name>-<resize>px.onnx) and runs it with ONNX Runtime;
--backend openvino runs the same file (or a given .onnx, float32 or int8) with OpenVINO (pip install -e
'.[openvino]'); --precision bf16 makes it compute in bfloat16 where the CPU does so natively: faster, and
eval tells what it costs.
"""
import json
import sys

from mobilenetv3.cli import EVAL_KEYS, MODEL_FILE_KEYS, parse_args, run_cli


def main(argv=None):
    config = parse_args(argv, description=__doc__, keys=EVAL_KEYS)
    from mobilenetv3.cluster import device  # MindSpore starts here, after run_cli's process defaults
    from mobilenetv3.cluster.distributed import init_distributed
    from mobilenetv3.data.preprocessing import resolve
    from mobilenetv3.deploy.inference import load_model
    from mobilenetv3.atomic import written_whole
    from mobilenetv3.deploy.outputs import check_writable_file
    from mobilenetv3.evaluation import chance_level_warning, evaluate_folder
    device.setup(config.device_target, config.seed, device_id=config.device_id)
    dist = init_distributed(config.device_target, config.run_distribute, config.device_id)
    if config.json and dist.rank == 0:
        check_writable_file(config.json, "--json")
    predict, meta = load_model(config.pretrained, config.backend, config.threads, config.use_ema,
                               config.subset(MODEL_FILE_KEYS), config.flags, config.precision)
    preprocessing, preprocessing_line = resolve(config.preprocessing(), config.flags, meta)
    if dist.rank == 0:
        print(preprocessing_line, file=sys.stderr)  # stdout keeps the seed's format
    metrics = evaluate_folder(predict, meta["num_classes"], config.data_url, preprocessing, config.batch_size,
                              config.num_parallel_workers, meta.get("classes"), dist, config.val_labels,
                              config.val_synsets)
    if dist.rank == 0:
        print(metrics.seed_dict())
        print(f"loss: {metrics.loss:.4f}, images: {metrics.images}")
        warning = chance_level_warning(metrics)
        if warning:
            print(warning, file=sys.stderr)
        if config.json:
            with written_whole(config.json) as partial:
                partial.write_text(json.dumps(metrics.as_dict(), indent=1))


if __name__ == "__main__":
    run_cli(main)
