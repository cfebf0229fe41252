"""Predict the top-k classes of an image file, or of every image below a folder (jpg, jpeg, png, bmp, webp, tif;
any case).

Examples:
  python scripts/infer.py --model mobilenet_v3_small --data_url ./infer --pretrained small.ckpt
  python scripts/infer.py --model mobilenet_v3_large --data_url ./infer --pretrained large.mindir --output preds.csv
  python scripts/infer.py --config configs/fashion_mnist_demo.yaml --data_url ./photos --pretrained demo.ckpt \\
      --top_k 3 --output preds.json
  python scripts/infer.py --device_target CPU --data_url ./infer --pretrained small.ckpt --backend onnxruntime
  python scripts/infer.py --device_target CPU --data_url ./infer --pretrained small.onnx --backend onnxruntime \\
      --threads 1
  python scripts/infer.py --device_target CPU --data_url ./infer --pretrained large.int8.onnx --backend openvino
  python scripts/infer.py --data_url ./infer --pretrained large.ckpt --use_ema
  python scripts/infer.py --data_url cat.jpg --pretrained small.onnx

Prints each image's top_k class names and probabilities (and, on stderr, the preprocessing used: the model's
own unless a flag says otherwise); --output writes path, indices, names and probabilities as a JSON list or a
CSV table. Class names come from the checkpoint (an .onnx from scripts/export.py carries them inside, with
the image size and preprocessing, so it needs no other flag; a .mindir has them in the <file>.json export
wrote next to it), else ImageNet's for 1000 classes, else indices. Unreadable files
(not images, truncated, corrupt) are skipped and listed at the end with the reason. --backend onnxruntime
runs a checkpoint (exported to ONNX once, cached next to it as <name>-<resize>px.onnx) or an exported .onnx
with ONNX Runtime: the same predictions, several times faster on CPU; --backend openvino runs the same files
with OpenVINO (pip install -e '.[openvino]'), faster still with --precision bf16 on CPUs that compute bfloat16
natively.
"""
import sys
from pathlib import Path

from mobilenetv3.cli import INFER_KEYS, MODEL_FILE_KEYS, parse_args, run_cli
from mobilenetv3.errors import UserError


def main(argv=None):
    config = parse_args(argv, description=__doc__, keys=INFER_KEYS)
    from mobilenetv3.cluster import device  # MindSpore starts here, after run_cli's process defaults
    from mobilenetv3.data.preprocessing import resolve
    from mobilenetv3.deploy.inference import (class_names_of, format_prediction, load_model, output_format,
                                              predict_images, write_predictions)
    from mobilenetv3.deploy.outputs import check_writable_file
    if config.output:
        output_format(config.output)
        check_writable_file(config.output, "--output")
    device.setup(config.device_target, config.seed, device_id=config.device_id)
    predict, meta = load_model(config.pretrained, config.backend, config.threads, config.use_ema,
                               config.subset(MODEL_FILE_KEYS), config.flags, config.precision)
    preprocessing, preprocessing_line = resolve(config.preprocessing(), config.flags, meta)
    print(preprocessing_line, file=sys.stderr)  # stdout keeps the seed's format
    predictions, skipped = predict_images(predict, config.data_url, preprocessing, class_names_of(meta),
                                          config.top_k, config.batch_size)
    for prediction in predictions:
        print(format_prediction(prediction))
    for path, reason in skipped:
        print(f"skipped {path}: {reason}")
    if not predictions:
        raise UserError(f"{config.data_url} could not be read (see above)" if Path(config.data_url).is_file() else
                        f"none of the {len(skipped)} image files in {config.data_url} could be read (listed above)")
    print(f"{len(predictions)} images predicted, {len(skipped)} skipped")
    if config.output:
        write_predictions(predictions, config.output)
        print(f"predictions written to {config.output}")


if __name__ == "__main__":
    run_cli(main)
