"""CPU speed benchmark: our MobileNetV3 against the same network in PyTorch, in two comparisons.

- "mindspore": our MindSpore model (GRAPH mode) against the PyTorch eager twin, training and inference.
- "onnxruntime": our model exported as the ONNX Runtime backend exports it (deploy.export.export: BatchNorm
  folded, HardSwish fused, dynamic batch) against the PyTorch twin exported by torch.onnx.export at
  the same opset, both run by deploy.onnx_backend.make_session with the same threads; inference only. The
  two exports are made first, each in a helper process, so that the measuring processes hold only
  ONNX Runtime sessions; the report records both graphs' node count and op-type histogram.
- "int8" (only when asked for, --backends int8): that export quantized to int8 as scripts/export.py
  --quantize int8 does (deploy.quantize.quantize_onnx, calibrated here on 32 random images: speed does not
  depend on the values) against the float32 export itself, both in ONNX Runtime as above.
- "openvino", "openvino_bf16" and "openvino_int8" (when asked for): OpenVINO (deploy.openvino_backend, as
  --backend openvino runs it) on our float32 export, the same computing in bf16 (--precision bf16), and on the
  int8 file shaped for it (--quantize int8 --backend openvino), each against ONNX Runtime on the float32 export.
  With "int8" in the same run, every deployment path has a ratio to ONNX Runtime float32.

Every model is measured in fresh worker processes, one per side, so that the first-step (compile)
time and the peak RSS are those of that model alone and the two sides' thread pools never share a
process. The parent drives both workers in turns, one timed window each, in the order ours,
baseline, baseline, ours, ...: a load change on a shared machine then hits both figures alike and
the ratio stays meaningful even when the absolute numbers drift. Warm-up steps are not timed;
throughputs are medians over the timed windows, latencies the median and 90th percentile of single
batch-1 calls. The PyTorch twin is benchmarks.torch_reference (torchvision's layout); without torch
the report says so and carries our figures alone; without onnxruntime or onnx it leaves the
"onnxruntime" comparison out and says so.

With the "mindspore" comparison, the data pipelines follow (pipelines.py): ours, MindSpore's C++ pipeline
and a PyTorch DataLoader, train and eval, at 1 to num_parallel_workers workers: what one rank's pipeline
delivers per core, and whether the model or the data limits training.

This module holds the settings (Settings), the worker processes (Worker, pin_to, settle), the measuring of
one model in one comparison (measure_model, summarize) and run(), which makes the report. The runners and
exports are in runners.py, the report's rows and forms in report.py, the fresh processes' plumbing in
processes.py.
"""
import multiprocessing
import os
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List

import numpy as np

from benchmarks.pipelines import measure_data_pipeline
from benchmarks.processes import start_up, timed_steps
from benchmarks.report import cpu_pressure, machine_info, make_row, versions
from benchmarks.runners import COMPARISONS, ROLES
from mobilenetv3.native.cpu_info import allowed_cpus, available_cpus
from mobilenetv3.training.run_record import peak_rss_mb

MODELS = {"small": "mobilenet_v3_small", "large": "mobilenet_v3_large"}
BACKENDS = ("mindspore", "onnxruntime", "int8", "openvino", "openvino_bf16", "openvino_int8")  # keys of COMPARISONS, in running order
DEFAULT_BACKENDS = ("mindspore", "onnxruntime")


@dataclass
class Settings:
    models: List[str] = field(default_factory=lambda: ["small", "large"])  # keys of MODELS
    batch_sizes: List[int] = field(default_factory=lambda: [1, 32])
    backends: List[str] = field(default_factory=lambda: list(DEFAULT_BACKENDS))  # keys of COMPARISONS
    image_size: int = 224
    num_classes: int = 1000
    threads: int = 0  # 0: one per CPU available to this process
    num_parallel_workers: int = 0  # data pipeline workers; 0: one per CPU available
    warmup_steps: int = 3
    windows: int = 7
    window_seconds: float = 2.0  # each timed window runs as many steps as fit in about this long
    data_images: int = 192  # JPEGs the data pipelines read
    quick: bool = False
    data_only: bool = False  # the data pipelines alone, no model
    seed: int = 1

    def __post_init__(self):
        unknown = [m for m in self.models if m not in MODELS]
        if unknown or not self.models:
            raise ValueError(f"models must be a non-empty list of {', '.join(MODELS)}, got {self.models!r}")
        if not self.backends or any(b not in BACKENDS for b in self.backends):
            raise ValueError(f"backends must be a non-empty list of {', '.join(BACKENDS)}, got {self.backends!r}")
        self.backends = [b for b in BACKENDS if b in self.backends]  # each once, in the running order
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise ValueError(f"batch_sizes must be a non-empty list of integers >= 1, got {self.batch_sizes!r}")
        if self.image_size <= 32:  # the last feature map (image_size / 32) needs 2x2 for BatchNorm at batch 1
            raise ValueError(f"image_size must be > 32, got {self.image_size}")
        for name in ("threads", "num_parallel_workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0: one per CPU), got {getattr(self, name)}")
        if self.threads == 0:
            self.threads = available_cpus()
        if self.num_parallel_workers == 0:
            self.num_parallel_workers = available_cpus()

    @classmethod
    def quick_settings(cls, **overrides):
        """Small only, batch 1 and 8, fewer and shorter windows, fewer images: a smoke test, same code path."""
        values = dict(models=["small"], batch_sizes=[1, 8], warmup_steps=1, windows=3, window_seconds=0.3,
                      data_images=48, quick=True)
        values.update(overrides)
        return cls(**values)


SETTLE_LIMIT = 3.0  # seconds


def settle():
    """Wait until this process's threads stop spinning. MindSpore's kernel threads busy-wait about 0.25 s
    after each graph run, ONNX Runtime's intra-op threads spin too before they sleep: the other side's
    window, timed next, would otherwise share the CPUs."""
    deadline = time.perf_counter() + SETTLE_LIMIT
    while time.perf_counter() < deadline:
        cpu = time.process_time()
        time.sleep(0.02)
        if time.process_time() - cpu < 0.002:
            return


def pin_to(threads: int):
    """Restrict this process to its first `threads` allowed CPUs if it may use more. A thread setting alone
    does not bound MindSpore: with threads_num(1) a convolution loop kept three threads at 0.5-0.7 of a core
    each, and ran 1.5x slower once pinned to one CPU. Pinned, --threads N means N cores for either side."""
    if hasattr(os, "sched_setaffinity") and threads < available_cpus():
        os.sched_setaffinity(0, allowed_cpus()[:threads])


def _serve(runner_class, arguments, conn):
    """Worker process: build the runner, then answer ("run", mode, batch, steps) and ("rss",) requests.
    The process defaults come first: unpickling this function and the runner class imported the package,
    which sets nothing, and no MindSpore yet (the runners import it when built)."""
    start_up()
    try:
        pin_to(arguments[-1].threads)  # every runner takes the Settings last
        runner = runner_class(*arguments)
        conn.send(("ready", runner.info))
    except ImportError as err:
        conn.send(("unavailable", str(err)))
        return
    except Exception:
        conn.send(("error", traceback.format_exc()))
        return
    while True:
        request = conn.recv()
        try:
            if request[0] == "run":
                _, mode, batch_size, steps = request
                durations = timed_steps(runner.step(mode, batch_size), steps)
                settle()
                conn.send(("ok", durations))
            elif request[0] == "rss":
                conn.send(("ok", peak_rss_mb()))
            else:
                return
        except Exception:
            conn.send(("error", traceback.format_exc()))


class Worker:
    """A spawned process holding runner_class(*arguments), the `role` side of a comparison."""

    def __init__(self, role, runner_class, arguments):
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.role = role
        self.process = context.Process(target=_serve, args=(runner_class, arguments, child), daemon=True)
        self.process.start()
        child.close()

    def ready(self):
        """(info dict, None) once the model is built, or (None, reason) when the framework is missing."""
        status, payload = self._receive()
        return (payload, None) if status == "ready" else (None, payload)

    def _receive(self):
        try:
            status, payload = self.conn.recv()
        except EOFError:
            raise RuntimeError(f"the {self.role} benchmark worker died (exit code {self.process.exitcode})") from None
        if status == "error":
            raise RuntimeError(f"the {self.role} benchmark worker failed:\n{payload}")
        return status, payload

    def request(self, *message):
        self.conn.send(message)
        return self._receive()[1]

    def close(self):
        if self.process.is_alive():
            self.conn.send(("stop",))
        self.process.join(timeout=30)


def measure_model(backend, model, settings: Settings, log=print):
    """(info per role, why each role cannot run or None, rows) for one model in one comparison: ours
    and the baseline, each in its own worker process, driven in turns. No rows when ours cannot run."""
    comparison = COMPARISONS[backend]
    with tempfile.TemporaryDirectory(prefix="mobilenetv3_benchmark_") as tmp:
        arguments, info, missing = comparison.prepare(MODELS[model], settings, Path(tmp), log)
        info = {role: info.get(role) for role in ROLES}
        missing = {role: missing.get(role) for role in ROLES}
        workers = {role: Worker(role, comparison.runners[role], arguments[role]) for role in ROLES if role in arguments}
        try:
            for role, worker in workers.items():
                ready, missing[role] = worker.ready()
                info[role] = None if ready is None else {**info[role], **ready}
            if missing["ours"]:
                return info, missing, []
            active = {role: worker for role, worker in workers.items() if info[role] is not None}
            runs = {role: {} for role in active}  # (mode, batch) -> list of windows, each a list of step durations
            first_steps = {role: {} for role in active}
            for mode, batch_size in measured_cases(settings.batch_sizes, comparison.modes):
                log(f"{model} ({backend}): {mode}, batch {batch_size}")
                window_steps = {}
                for role, worker in active.items():
                    first_steps[role][mode, batch_size] = worker.request("run", mode, batch_size, 1)[0]
                    warmup = worker.request("run", mode, batch_size, settings.warmup_steps)
                    window_steps[role] = max(1, round(settings.window_seconds / float(np.median(warmup))))
                roles = list(active)
                for window in range(settings.windows):
                    for role in roles if window % 2 == 0 else roles[::-1]:
                        durations = active[role].request("run", mode, batch_size, window_steps[role])
                        runs[role].setdefault((mode, batch_size), []).append(durations)
            figures = {role: summarize(runs[role], first_steps[role], comparison.modes, settings.batch_sizes,
                                       info[role]["params"], active[role].request("rss")) for role in active}
            rows = [make_row(backend, model, metric, batch_size, figure,
                             figures.get("baseline", {}).get((metric, batch_size)))
                    for (metric, batch_size), figure in figures["ours"].items()]
            return info, missing, rows
        finally:
            for worker in workers.values():
                worker.close()


def measured_cases(batch_sizes, modes) -> list:
    """(mode, batch size) pairs to run: inference at batch 1 always, for the latency."""
    return [("train", b) for b in batch_sizes if "train" in modes] + \
        [("infer", b) for b in sorted(set(batch_sizes) | {1})]


def summarize(runs, first_steps, modes, batch_sizes, params, rss) -> dict:
    """{(metric, batch size or None): {"value": v, "windows": per-window values}} of one side."""
    figures = {}
    for mode in modes:
        for batch_size in batch_sizes:
            windows = [batch_size * len(durations) / sum(durations) for durations in runs[mode, batch_size]]
            figures[f"{mode}_throughput", batch_size] = {"value": float(np.median(windows)), "windows": windows}
    calls = np.concatenate(runs["infer", 1]) * 1000
    figures["latency_median", 1] = {"value": float(np.median(calls)),
                                    "windows": [float(np.median(d)) * 1000 for d in runs["infer", 1]]}
    figures["latency_p90", 1] = {"value": float(np.percentile(calls, 90)),
                                 "windows": [float(np.percentile(d, 90)) * 1000 for d in runs["infer", 1]]}
    for (mode, batch_size), seconds in first_steps.items():
        figures[f"{mode}_first_step", batch_size] = {"value": seconds, "windows": [seconds]}
    figures["peak_rss", None] = {"value": rss, "windows": [rss]}
    figures["params", None] = {"value": params, "windows": [params]}
    return figures


def run(settings: Settings, log=print) -> dict:
    """Measure every comparison and model, and the data pipeline when training is measured; returns the
    report (see report.format_table and report.save_json)."""
    started = time.time()
    report = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info(),
              "versions": versions(),
              "settings": asdict(settings), "comparisons": {}, "models": {}, "rows": []}
    for backend in [] if settings.data_only else settings.backends:
        comparison = COMPARISONS[backend]
        summary = report["comparisons"][backend] = {
            "ours": comparison.ours.format(**report["versions"]),
            "baseline": comparison.baseline.format(**report["versions"]), "modes": list(comparison.modes),
            "available": True, "reason": None, "baseline_available": True, "baseline_reason": None}
        for model in settings.models:
            info, missing, rows = measure_model(backend, model, settings, log)
            if missing["ours"]:
                if comparison.ours_missing is None:
                    raise RuntimeError(f"{backend}: ours cannot run: {missing['ours']}")
                summary.update(available=False, reason=comparison.ours_missing.format(reason=missing["ours"]))
                break  # the same packages are missing for every model
            if missing["baseline"]:
                summary.update(baseline_available=False,
                               baseline_reason=comparison.baseline_missing.format(reason=missing["baseline"]))
            entry = report["models"].setdefault(model, {"name": MODELS[model], "params": info["ours"]["params"],
                                                        "macs": info["ours"]["macs"],
                                                        "image_size": settings.image_size, "backends": {}})
            entry["backends"][backend] = info
            report["rows"] += rows
    measure_data = settings.data_only or "mindspore" in settings.backends
    report["data_pipeline"] = measure_data_pipeline(settings, log) if measure_data else None
    report["machine"]["load_average_end"] = list(os.getloadavg())
    report["machine"]["cpu_pressure_end"] = cpu_pressure()
    report["elapsed_seconds"] = time.time() - started
    return report
