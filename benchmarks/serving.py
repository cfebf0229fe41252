"""HTTP serving speed: scripts/serve.py with dynamic batching against the same server answering one request
at a time (--max_batch 1), at 1, 8 and 32 concurrent clients, on loopback.

Examples:
  python benchmarks/serving.py                                  # Small, 224 px, mindspore, 1/8/32 clients
  python benchmarks/serving.py --backend onnxruntime --json serving.json
  python benchmarks/serving.py --quick                          # smoke run: short windows, 1 and 8 clients

Both servers run the same MobileNetV3 with random weights (speed does not depend on the weights), written
once as a checkpoint in a temporary folder, on the same backend and threads, each in its own process; they
bind 127.0.0.1 only. Each client sends the same JPEG (--image_width x --image_height, a photo-like gradient
with noise) back to back on its own keep-alive connection and times each answer. A window is --requests
requests per client or --window_seconds, whichever ends first, so a run is bounded in count and time.
Windows alternate between the two servers (batched, one at a time, one at a time, batched, ...), so a change
of load on a shared machine hits both alike. Per server and client count: requests/s (the median of its
windows), the median and 99th percentile latency over all of its requests, the batch sizes the batched
server ran; the ratio is batched / one at a time. The servers are started twice, in one order and then the
other, half the windows each (the first started measured slower). --json writes every window, the machine
(load average at start and end) and the versions.
"""
import argparse
import collections
import http.client
import io
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is not installed: import it from the checkout
from benchmarks.processes import in_helper_process  # noqa: E402
from benchmarks.report import cpu_pressure, machine_info, versions  # noqa: E402
from mobilenetv3.cli import run_cli  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SIDES = {"batched": None, "one_at_a_time": 1}  # name: --max_batch (None: the --max_batch of this benchmark)
ADDRESS = re.compile(r"^serving .* on http://127\.0\.0\.1:(\d+)/")


def write_checkpoint(path, model, num_classes):
    """A checkpoint of `model` with random weights and the meta training writes (in a helper process)."""
    from mobilenetv3.checkpoints import files
    from mobilenetv3.data.preprocessing import Preprocessing
    from mobilenetv3.models.architectures import MODEL_DEFAULTS
    from mobilenetv3.models.factory import create_model
    net = create_model(model, num_classes=num_classes)
    files.save(path, {p.name: p for p in net.get_parameters()},
               dict(model=model, num_classes=num_classes, width=1.0, bn_momentum=MODEL_DEFAULTS["bn_momentum"],
                    bn_eps=MODEL_DEFAULTS["bn_eps"], preprocessing=Preprocessing().as_meta()))


def model_alone(checkpoint, backend, threads, batch_sizes, body, seconds) -> dict:
    """{batch size: images/s} of the model as the server runs it (serving.model.ServedModel.probabilities on
    the body's eval view), without HTTP or decoding: what batching can gain at most on this machine."""
    from mobilenetv3.cluster import device
    from mobilenetv3.data.preprocessing import Preprocessing, resolve
    from mobilenetv3.deploy.inference import class_names_of, load_model
    from mobilenetv3.serving.model import ServedModel
    device.setup("CPU")
    predict, meta = load_model(checkpoint, backend, threads)
    model = ServedModel(predict, resolve(Preprocessing(), (), meta)[0], class_names_of(meta), "", backend)
    view = model.eval_view(body)
    rates = {}
    for size in batch_sizes:
        model.probabilities([view] * size)  # compiles
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            model.probabilities([view] * size)
            count += size
        rates[size] = count / (time.perf_counter() - start)
    return rates


def photo_like_jpeg(width, height, seed=0) -> bytes:
    from PIL import Image
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([255 * x / width, 255 * y / height, 128 + 100 * np.sin(x / 37 + y / 53)], axis=-1)
    pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=90)
    return out.getvalue()


class Server:
    def __init__(self, checkpoint, max_batch, args, log):
        command = [sys.executable, str(REPO / "scripts" / "serve.py"), "--device_target", "CPU", "--pretrained",
                   str(checkpoint), "--port", "0", "--backend", args.backend, "--threads", str(args.threads),
                   "--max_batch", str(max_batch), "--max_wait_ms", str(args.max_wait_ms),
                   "--max_queue", str(4 * max(args.clients))]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
        for line in self.process.stdout:
            if match := ADDRESS.match(line):
                self.port = int(match.group(1))
                return
        raise RuntimeError(f"{' '.join(command)} stopped before serving (exit {self.process.wait()}); see {log.name}")

    def health(self) -> dict:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            connection.request("GET", "/health")
            return json.loads(connection.getresponse().read())
        finally:
            connection.close()

    def stop(self):
        self.process.terminate()
        self.process.wait(60)


def window(port, body, clients, requests, seconds):
    """(seconds taken, [latency s of each answered request], [status of each request that failed])."""
    latencies, failures = [], []
    deadline = time.perf_counter() + seconds

    def client():
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        connection.connect()
        # http.client sends the headers and the body in two writes: with Nagle's algorithm the body waits for
        # the server's delayed ACK of the headers, 40 ms on Linux, which would dominate every latency.
        connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            for _ in range(requests):
                if time.perf_counter() > deadline:
                    return
                start = time.perf_counter()
                connection.request("POST", "/predict", body, {"Content-Type": "image/jpeg"})
                response = connection.getresponse()
                response.read()
                (latencies if response.status == 200 else failures).append(
                    time.perf_counter() - start if response.status == 200 else response.status)
        finally:
            connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start, latencies, failures


def measure(args) -> dict:
    report = {"machine": machine_info(), "versions": versions(), "settings": vars(args)}
    body = photo_like_jpeg(args.image_width, args.image_height)
    report["settings"]["image_kb"] = len(body) / 1000
    measured = {clients: {"batch_sizes": collections.Counter(), **{side: {"windows": [], "latencies": []}
                                                                   for side in SIDES}} for clients in args.clients}
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(folder) / f"{args.model}.ckpt"
        in_helper_process(write_checkpoint, str(checkpoint), args.model, 1000)
        report["model_alone"] = in_helper_process(model_alone, str(checkpoint), args.backend, args.threads,
                                                  [1, args.max_batch], body, args.window_seconds)
        with open(Path(folder) / "servers.log", "w") as log:
            # Two rounds, the servers started in one order, then in the other, half the windows each: with both
            # servers alike (--max_batch 1), the one started first answered 0.76x as fast in one order and 0.92x in
            # the other, a bias of start order that the rounds cancel.
            for round_number, order in enumerate((list(SIDES), list(reversed(SIDES)))):
                windows = (args.windows + 1 - round_number) // 2
                servers = {}
                try:
                    for side in order:  # one after the other: the onnxruntime export is cached
                        servers[side] = Server(checkpoint, SIDES[side] or args.max_batch, args, log)
                    for clients in args.clients:
                        run_windows(servers, body, clients, windows, args, measured[clients])
                finally:
                    for server in servers.values():
                        server.stop()
    report["rows"] = [summarize(clients, measured[clients]) for clients in args.clients]
    report["machine"].update(load_average_end=list(os.getloadavg()), cpu_pressure_end=cpu_pressure())
    return report


def run_windows(servers, body, clients, windows, args, measured):
    """`windows` timed windows per server, alternating (A B B A ...), added to `measured`."""
    for server in servers.values():  # warm-up: connections, first batches
        window(server.port, body, clients, 2, args.window_seconds)
    before = servers["batched"].health()["batch_sizes"]
    for side in [side for i in range(windows) for side in (SIDES if i % 2 == 0 else reversed(list(SIDES)))]:
        seconds, answered, failed = window(servers[side].port, body, clients, args.requests, args.window_seconds)
        if failed:
            raise RuntimeError(f"{side} server, {clients} clients: {len(failed)} requests failed ({sorted(set(failed))})")
        measured[side]["windows"].append({"seconds": seconds, "requests": len(answered)})
        measured[side]["latencies"] += answered
        time.sleep(0.3)  # MindSpore's threads spin a moment after a run: let them stop before the other side's window
    after = servers["batched"].health()["batch_sizes"]
    measured["batch_sizes"].update({size: count - before.get(size, 0) for size, count in after.items()})


def summarize(clients, measured) -> dict:
    row = {"clients": clients, "batch_sizes": {size: count for size, count in measured["batch_sizes"].items() if count}}
    for side in SIDES:
        latencies, windows = measured[side]["latencies"], measured[side]["windows"]
        rates = [w["requests"] / w["seconds"] for w in windows]
        row[side] = {"requests_per_s": float(np.median(rates)), "p50_ms": 1000 * float(np.percentile(latencies, 50)),
                     "p99_ms": 1000 * float(np.percentile(latencies, 99)), "requests": len(latencies),
                     "windows": windows}
    row["ratio"] = row["batched"]["requests_per_s"] / row["one_at_a_time"]["requests_per_s"]
    return row


def format_table(report) -> str:
    machine, settings = report["machine"], report["settings"]
    lines = [f"serving {settings['model']} on {settings['backend']}, {settings['image_width']}x{settings['image_height']} "
             f"JPEG ({settings['image_kb']:.0f} KB), batched: --max_batch {settings['max_batch']} --max_wait_ms "
             f"{settings['max_wait_ms']:g}; {machine['cpu_model']} ({machine['cpus_available']} CPUs available, load "
             f"{machine['load_average_start'][0]:.1f} -> {machine['load_average_end'][0]:.1f})",
             "model alone (no HTTP, no decoding): " + ", ".join(
                 f"{rate:.0f} img/s at batch {size}" for size, rate in report["model_alone"].items()) +
             f": batching gains at most {report['model_alone'][settings['max_batch']] / report['model_alone'][1]:.2f}x "
             "here",
             "| clients | batched req/s | p50 ms | p99 ms | one at a time req/s | p50 ms | p99 ms | batched / one at a time |",
             "|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for row in report["rows"]:
        cells = [str(row["clients"])]
        for side in SIDES:
            cells += [f"{row[side]['requests_per_s']:.1f}", f"{row[side]['p50_ms']:.0f}", f"{row[side]['p99_ms']:.0f}"]
        lines.append("| " + " | ".join(cells + [f"**{row['ratio']:.2f}**"]) + " |")
    lines.append("batch sizes run by the batched server (size: batches): " + "; ".join(
        f"{row['clients']} clients: " + ", ".join(f"{s}: {n}" for s, n in sorted(row["batch_sizes"].items(),
                                                                              key=lambda item: int(item[0])))
        for row in report["rows"]))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mobilenet_v3_small", choices=["mobilenet_v3_small", "mobilenet_v3_large"])
    parser.add_argument("--backend", default="mindspore", help="as serve.py's --backend; default mindspore")
    parser.add_argument("--threads", type=int, default=0, help="the model's threads in each server; 0: one per core")
    parser.add_argument("--clients", type=int, nargs="+", help="concurrent clients; default 1 8 32 (--quick: 1 8)")
    parser.add_argument("--max_batch", type=int, default=32, help="the batched server's; default 32")
    parser.add_argument("--max_wait_ms", type=float, default=5.0, help="the batched server's; default 5")
    parser.add_argument("--requests", type=int, help="the most requests per client per window; default 50 (--quick: 10)")
    parser.add_argument("--window_seconds", type=float, help="the longest window; default 10 (--quick: 3)")
    parser.add_argument("--windows", type=int, help="timed windows per server and client count; default 4 (--quick: 2)")
    parser.add_argument("--image_width", type=int, default=640)
    parser.add_argument("--image_height", type=int, default=480)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter windows: a smoke test")
    parser.add_argument("--json", metavar="FILE", help="also write the full report as JSON")
    args = parser.parse_args(argv)
    defaults = dict(clients=[1, 8], requests=10, window_seconds=3.0, windows=2) if args.quick else \
        dict(clients=[1, 8, 32], requests=50, window_seconds=10.0, windows=4)
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if min(args.clients) < 1 or args.requests < 1 or args.windows < 1 or args.max_batch < 1:
        parser.error("--clients, --requests, --windows and --max_batch must be >= 1")
    report = measure(args)
    print(format_table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
        print(f"report written to {args.json}")


if __name__ == "__main__":
    run_cli(main)
