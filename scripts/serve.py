"""Serve a model over HTTP: a web page to try it, and a JSON API for programs.

Examples:
  python scripts/serve.py --pretrained small.ckpt                      # http://127.0.0.1:8000/
  python scripts/serve.py --pretrained small.onnx --port 8080 --max_batch 16 --max_wait_ms 2
  python scripts/serve.py --pretrained large.ckpt --backend onnxruntime --host 0.0.0.0
  curl -H 'Content-Type: image/jpeg' --data-binary @cat.jpg 'http://127.0.0.1:8000/predict?top_k=3'
  curl -F file=@cat.jpg http://127.0.0.1:8000/predict
  curl http://127.0.0.1:8000/metadata

--pretrained is a checkpoint, a MINDIR or an ONNX file (float or int8), run as scripts/infer.py runs it:
class names and preprocessing from the model's meta, --backend, --threads and --precision as there. The page at / takes
an image (chosen or dropped) and shows its top 5 as bars. POST /predict takes an image as the body
(Content-Type image/* or application/octet-stream) or as the file of a multipart form, and answers JSON: the
model, backend, preprocessing and the top_k (default --top_k, or ?top_k=K) {label, index, probability}.
GET /health, GET /metadata, GET /openapi.json. Concurrent requests are decoded in --num_parallel_workers
threads and run through the model as one batch: up to --max_batch, waiting at most --max_wait_ms for more.
Bad input gets a 4xx JSON error naming the fault: not an image, truncated, too many pixels, a body over
--max_bytes, a wrong Content-Type, a bad top_k; over --max_queue requests in progress, 503 with Retry-After.
Serves 127.0.0.1 (this machine only) unless --host says otherwise. SIGTERM or Ctrl-C: the requests in
progress are answered, then it stops (exit 0 for SIGTERM). Needs the serve extra: pip install -e '.[serve]'.
"""
from pathlib import Path

from mobilenetv3.cli import MODEL_FILE_KEYS, SERVE_KEYS, parse_args, run_cli


def main(argv=None):
    config = parse_args(argv, description=__doc__, keys=SERVE_KEYS)
    from mobilenetv3.serving import server
    server.require_web_stack()
    from mobilenetv3.cluster import device  # MindSpore starts here, after run_cli's process defaults
    from mobilenetv3.data.preprocessing import resolve
    from mobilenetv3.deploy.inference import class_names_of, engine_label, load_model
    from mobilenetv3.serving.app import Limits, create_app
    from mobilenetv3.serving.model import ServedModel
    device.setup(config.device_target, config.seed, device_id=config.device_id)
    predict, meta = load_model(config.pretrained, config.backend, config.threads, config.use_ema,
                               config.subset(MODEL_FILE_KEYS), config.flags, config.precision)
    preprocessing, preprocessing_line = resolve(config.preprocessing(), config.flags, meta)
    print(preprocessing_line)
    model = ServedModel(predict, preprocessing, class_names_of(meta), meta.get("model") or Path(config.pretrained).stem,
                        engine_label(config.pretrained, config.backend, config.flags, config.precision))
    sock = server.listening_socket(config.host, config.port)  # a taken port fails before the warm-up
    print(f"warming up: batches of 1 to {config.max_batch} images (MindSpore compiles each shape once)")
    model.warm_up(config.max_batch)
    print(f"serving {model.name} ({model.backend}) on {server.address_line(sock)}", flush=True)
    server.run(create_app(model, Limits(config.max_batch, config.max_wait_ms, config.max_bytes, config.max_queue,
                                        config.num_parallel_workers, config.top_k)), sock)
    print("stopped: every request in progress was answered")


if __name__ == "__main__":
    run_cli(main)
