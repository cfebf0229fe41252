"""CPU speed benchmark: our MobileNetV3 against the same network in PyTorch, in two comparisons.

- "mindspore": our MindSpore model (GRAPH mode) against the PyTorch eager twin, training and inference.
- "onnxruntime": our model exported as the ONNX Runtime backend exports it (export.export: BatchNorm
  folded, HardSwish fused, dynamic batch) against the PyTorch twin exported by torch.onnx.export at
  the same opset, both run by onnx_backend.make_session with the same threads; inference only. The
  two exports are made first, each in a helper process, so that the measuring processes hold only
  ONNX Runtime sessions; the report records both graphs' node count and op-type histogram.
- "int8" (only when asked for, --backends int8): that export quantized to int8 as scripts/export.py
  --quantize int8 does (export.quantize_onnx, calibrated here on 32 random images: speed does not
  depend on the values) against the float32 export itself, both in ONNX Runtime as above.

Every model is measured in fresh worker processes, one per side, so that the first-step (compile)
time and the peak RSS are those of that model alone and the two sides' thread pools never share a
process. The parent drives both workers in turns, one timed window each, in the order ours,
baseline, baseline, ours, ...: a load change on a shared machine then hits both figures alike and
the ratio stays meaningful even when the absolute numbers drift. Warm-up steps are not timed;
throughputs are medians over the timed windows, latencies the median and 90th percentile of single
batch-1 calls. The PyTorch twin is benchmarks.torch_reference (torchvision's layout); without torch
the report says so and carries our figures alone; without onnxruntime or onnx it leaves the
"onnxruntime" comparison out and says so.

With the "mindspore" comparison, the data pipelines follow: ours (mobilenetv3.data.create_dataset),
MindSpore's C++ pipeline twice (to normalised float32 CHW as its docs build it, and stopped at uint8 HWC,
where ours stops in training) and a PyTorch DataLoader with the same transforms, train and eval, at 1 to
num_parallel_workers workers, each timed alone in a fresh process over 500x375 JPEGs cut from photos
found on this machine (find_photos), with CPU time per image and peak PSS of the process and its
workers: what one rank's pipeline delivers per core, and whether the model or the data limits training.
"""
import glob
import importlib.metadata
import json
import multiprocessing
import os
import platform
import tempfile
import time
import traceback
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from mobilenetv3.cpu_info import available_cpus, cpu_flags, cpu_model, physical_cores
from mobilenetv3.run_record import peak_rss_mb

MODELS = {"small": "mobilenet_v3_small", "large": "mobilenet_v3_large"}
BACKENDS = ("mindspore", "onnxruntime", "int8")  # keys of COMPARISONS, in the order they run
DEFAULT_BACKENDS = ("mindspore", "onnxruntime")
CALIBRATION_IMAGES = 32  # random ones, for the int8 comparison
ROLES = ("ours", "baseline")
SOURCE_IMAGE_SIZE = (500, 375)  # a typical ImageNet photo, width x height
TORCH_INSTALL = "pip install torch==2.13.0"
ONNX_INSTALL = "pip install onnxruntime onnx"
LEARNING_RATE = 1e-3  # small, so that random data cannot drive the weights to inf/NaN over the run


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


# Metric: (label in the table, unit, which way is better). Ratios are always ours / baseline.
METRICS = {
    "train_throughput": ("train", "img/s", "higher"),
    "infer_throughput": ("infer", "img/s", "higher"),
    "latency_median": ("latency median", "ms", "lower"),
    "latency_p90": ("latency p90", "ms", "lower"),
    "train_first_step": ("train 1st step", "s", "lower"),
    "infer_first_step": ("infer 1st step", "s", "lower"),
    "peak_rss": ("peak RSS", "MB", "lower"),
    "params": ("parameters", "", "equal"),
}


def random_batch(batch_size, image_size, num_classes, seed):
    """The same images and labels for every framework: (uint8 NHWC pixels, as the data pipeline gives them
    to our train step, which normalises them in its graph; the float32 NCHW network input made from
    them, which everything else gets; int32 labels)."""
    from mobilenetv3 import data
    from mobilenetv3.config import build_config
    rng = np.random.default_rng([seed, batch_size])
    pixels = rng.integers(0, 256, (batch_size, image_size, image_size, 3), dtype=np.uint8)
    images = data.normalize_batch(pixels, build_config(overrides=dict(device_target="CPU")))
    return pixels, images, rng.integers(0, num_classes, batch_size).astype(np.int32)


def timed_steps(step, count) -> List[float]:
    """Durations of `count` back-to-back calls of `step` (which must wait for its result)."""
    durations = []
    for _ in range(count):
        start = time.perf_counter()
        step()
        durations.append(time.perf_counter() - start)
    return durations


class MindSporeRunner:
    """Our model: the package's train step (loss, backward, Momentum update) and GRAPH-mode inference of
    the network eval.py and infer.py run (BatchNorm folded: inference.load_model)."""

    def __init__(self, model, settings: Settings):
        import mindspore as ms
        from mobilenetv3 import runtime
        from mobilenetv3.config import build_config
        from mobilenetv3.folding import fold_for_inference
        from mobilenetv3 import count_complexity, create_model
        from mobilenetv3.trainer import build_train_step
        self.ms = ms
        runtime.setup("CPU", settings.seed)
        runtime.set_cpu_threads(settings.threads)
        self.settings = settings
        self.net = create_model(model, settings.num_classes)
        complexity = count_complexity(self.net, settings.image_size)
        self.info = {"params": complexity.params, "macs": complexity.macs, "threads": settings.threads,
                     "mode": "GRAPH", "jit_level": ms.get_context("jit_config").get("jit_level") or "default"}
        recipe = build_config(overrides=dict(device_target="CPU", num_classes=settings.num_classes))
        self.train_step = build_train_step(self.net, recipe, np.float32(LEARNING_RATE))
        self.inference_net = fold_for_inference(create_model(model, settings.num_classes))
        self.steps = {}

    def step(self, mode, batch_size):
        if (mode, batch_size) not in self.steps:
            pixels, images, labels = random_batch(batch_size, self.settings.image_size, self.settings.num_classes,
                                                  self.settings.seed)
            pixels, images, labels = self.ms.Tensor(pixels), self.ms.Tensor(images), self.ms.Tensor(labels)
            if mode == "train":
                self.steps[mode, batch_size] = lambda: self.train_step(pixels, labels).asnumpy()
            else:
                self.steps[mode, batch_size] = lambda: self.inference_net(images).asnumpy()
        self.net.set_train(mode == "train")
        return self.steps[mode, batch_size]


class TorchRunner:
    """The baseline: the same architecture, loss and optimiser in PyTorch eager (inference_mode for inference)."""

    def __init__(self, model, settings: Settings):
        import torch
        from mobilenetv3.config import Config
        from benchmarks.torch_reference import TorchMobileNetV3
        self.torch = torch
        torch.set_num_threads(settings.threads)
        torch.manual_seed(settings.seed)
        recipe = Config()
        self.settings = settings
        self.net = TorchMobileNetV3(model, settings.num_classes, bn_eps=recipe.bn_eps, dropout_rate=recipe.dropout_rate)
        params = list(self.net.parameters())
        groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": recipe.weight_decay},
                  {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
        self.optimizer = torch.optim.SGD(groups, lr=LEARNING_RATE, momentum=recipe.momentum)
        self.loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=recipe.smooth_factor)
        self.info = {"params": sum(p.numel() for p in params), "threads": torch.get_num_threads(), "mode": "eager"}
        self.steps = {}

    def _train(self, images, labels):
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.net(images), labels)
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def _infer(self, images):
        with self.torch.inference_mode():
            return self.net(images).numpy()

    def step(self, mode, batch_size):
        if (mode, batch_size) not in self.steps:
            _, images, labels = random_batch(batch_size, self.settings.image_size, self.settings.num_classes,
                                             self.settings.seed)
            images, labels = self.torch.from_numpy(images), self.torch.from_numpy(labels).long()
            if mode == "train":
                self.steps[mode, batch_size] = lambda: self._train(images, labels)
            else:
                self.steps[mode, batch_size] = lambda: self._infer(images)
        self.net.train(mode == "train")
        return self.steps[mode, batch_size]


class OnnxRuntimeRunner:
    """An exported graph in an ONNX Runtime session (onnx_backend.make_session): inference only."""

    def __init__(self, path, settings: Settings):
        from mobilenetv3.onnx_backend import make_session
        start = time.perf_counter()
        self.session = make_session(path, settings.threads)
        options = self.session.get_session_options()
        self.info = {"threads": options.intra_op_num_threads, "session_seconds": time.perf_counter() - start,
                     "mode": f"{options.graph_optimization_level.name}, {options.execution_mode.name}"}
        self.input_name = self.session.get_inputs()[0].name
        self.settings = settings
        self.steps = {}

    def step(self, mode, batch_size):
        if mode != "infer":
            raise ValueError(f"ONNX Runtime runs inference only, got mode {mode!r}")
        if batch_size not in self.steps:
            _, images, _ = random_batch(batch_size, self.settings.image_size, self.settings.num_classes,
                                        self.settings.seed)
            self.steps[batch_size] = lambda: self.session.run(None, {self.input_name: images})[0]
        return self.steps[batch_size]


def graph_summary(path) -> dict:
    """Node count, op-type histogram and default-domain opset of the ONNX file at `path`, as written
    (ONNX Runtime fuses further when it loads the graph)."""
    import onnx
    graph = onnx.load(str(path))
    op_types = Counter(node.op_type for node in graph.graph.node)
    return {"nodes": len(graph.graph.node), "op_types": dict(sorted(op_types.items())),
            "opset": next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")),
            "file_mb": Path(path).stat().st_size / 1e6}


def export_ours_onnx(model, settings: Settings, path) -> dict:
    """Our network with fresh weights, exported by export.export as the ONNX Runtime backend does."""
    # export.export and make_session turn a missing package into a UserError; an ImportError here
    # marks the comparison as unavailable instead.
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401
    from mobilenetv3 import runtime
    from mobilenetv3.export import export
    from mobilenetv3 import count_complexity, create_model
    runtime.setup("CPU", settings.seed)
    net = create_model(model, settings.num_classes)
    complexity = count_complexity(net, settings.image_size)
    start = time.perf_counter()
    written = export(net, path, "ONNX", settings.image_size, {"model": model, "num_classes": settings.num_classes})
    return {"path": str(written), "params": complexity.params, "macs": complexity.macs,
            "export_seconds": time.perf_counter() - start, "graph": graph_summary(written)}


def export_torch_onnx(model, settings: Settings, path, opset: int) -> dict:
    """The PyTorch twin (eval mode) exported by torch.onnx.export with a dynamic batch axis at `opset`."""
    import torch
    from mobilenetv3.config import Config
    from benchmarks.torch_reference import TorchMobileNetV3
    torch.manual_seed(settings.seed)
    net = TorchMobileNetV3(model, settings.num_classes, bn_eps=Config().bn_eps).eval()
    example = torch.zeros(1, 3, settings.image_size, settings.image_size)
    start = time.perf_counter()
    with warnings.catch_warnings():
        # dynamo=False: the TorchScript exporter, deprecated but the one needing no onnxscript
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, (example,), str(path), dynamo=False, opset_version=opset,
                          input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
    return {"path": str(path), "params": sum(p.numel() for p in net.parameters()),
            "export_seconds": time.perf_counter() - start, "graph": graph_summary(path)}


def quantize_ours_onnx(float_path, settings: Settings, path) -> dict:
    """Our float32 export quantized to int8 by export.quantize_onnx, calibrated on random batches."""
    from mobilenetv3.export import quantize_onnx
    _, images, _ = random_batch(CALIBRATION_IMAGES, settings.image_size, settings.num_classes, settings.seed)
    start = time.perf_counter()
    written = quantize_onnx(float_path, path, images, {})
    return {"path": str(written), "quantize_seconds": time.perf_counter() - start, "graph": graph_summary(written)}


def in_helper_process(function, *args):
    """function(*args) in a fresh spawned process: its imports and memory stay out of this one."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, args)


# What a comparison's prepare returns: (runner arguments per role that can run, info per role,
# why a role cannot run per role that cannot).
Prepared = Tuple[Dict[str, tuple], Dict[str, dict], Dict[str, str]]


def prepare_frameworks(model, settings: Settings, directory: Path, log) -> Prepared:
    """Nothing to do beforehand: each runner builds its model itself."""
    return {role: (model, settings) for role in ROLES}, {role: {} for role in ROLES}, {}


def prepare_onnx_exports(model, settings: Settings, directory: Path, log) -> Prepared:
    """Export ours, then the PyTorch twin at ours' opset, each in a helper process, into `directory`."""
    log(f"{model}: exporting both networks to ONNX")
    try:
        ours = in_helper_process(export_ours_onnx, model, settings, directory / "ours.onnx")
    except ImportError as err:
        return {}, {}, {role: str(err) for role in ROLES}
    arguments, info = {"ours": (ours.pop("path"), settings)}, {"ours": ours}
    try:
        baseline = in_helper_process(export_torch_onnx, model, settings, directory / "baseline.onnx",
                                     ours["graph"]["opset"])
    except ImportError as err:
        return arguments, info, {"baseline": str(err)}
    arguments["baseline"], info["baseline"] = (baseline.pop("path"), settings), baseline
    return arguments, info, {}


def prepare_int8_exports(model, settings: Settings, directory: Path, log) -> Prepared:
    """Export ours in float32, then quantize it to int8, each in a helper process, into `directory`."""
    log(f"{model}: exporting to ONNX and quantizing to int8")
    try:
        baseline = in_helper_process(export_ours_onnx, model, settings, directory / "float32.onnx")
        ours = in_helper_process(quantize_ours_onnx, baseline["path"], settings, directory / "int8.onnx")
    except ImportError as err:
        return {}, {}, {role: str(err) for role in ROLES}
    ours.update(params=baseline["params"], macs=baseline["macs"])
    arguments = {"ours": (ours.pop("path"), settings), "baseline": (baseline.pop("path"), settings)}
    return arguments, {"ours": ours, "baseline": baseline}, {}


@dataclass(frozen=True)
class Comparison:
    """Ours against a baseline, each a runner class (built in its worker from prepare's arguments,
    answering step(mode, batch_size) and .info) in the modes both run."""
    runners: Dict[str, type]
    modes: Tuple[str, ...]
    prepare: Callable[..., Prepared]
    ours: str  # descriptions, formatted with the report's versions
    baseline: str
    ours_missing: Optional[str]  # why the comparison is left out, formatted with reason=; None: ours is required
    baseline_missing: str


COMPARISONS = {
    "mindspore": Comparison(
        runners={"ours": MindSporeRunner, "baseline": TorchRunner}, modes=("train", "infer"),
        prepare=prepare_frameworks, ours="MindSpore {mindspore} GRAPH mode", baseline="PyTorch {torch} eager",
        ours_missing=None,
        baseline_missing="PyTorch is not importable ({reason}): the baseline is left out; " + TORCH_INSTALL),
    "onnxruntime": Comparison(
        runners={"ours": OnnxRuntimeRunner, "baseline": OnnxRuntimeRunner}, modes=("infer",),
        prepare=prepare_onnx_exports, ours="our ONNX export (BatchNorm folded, HardSwish fused) in ONNX Runtime "
                                           "{onnxruntime}",
        baseline="the PyTorch twin exported by torch.onnx.export (TorchScript exporter, same opset) in ONNX Runtime "
                 "{onnxruntime}",
        ours_missing="ONNX Runtime or onnx is not importable ({reason}): the ONNX Runtime comparison is left out; "
                     + ONNX_INSTALL,
        baseline_missing="PyTorch is not importable ({reason}): the ONNX Runtime baseline (the PyTorch twin's "
                         "export) is left out; " + TORCH_INSTALL),
    "int8": Comparison(
        runners={"ours": OnnxRuntimeRunner, "baseline": OnnxRuntimeRunner}, modes=("infer",),
        prepare=prepare_int8_exports, ours="our ONNX export quantized to int8 (export.quantize_onnx: QDQ, u8 "
                                           "activations, s8 per-channel weights) in ONNX Runtime {onnxruntime}",
        baseline="our float32 ONNX export in ONNX Runtime {onnxruntime}",
        ours_missing="ONNX Runtime or onnx is not importable ({reason}): the int8 comparison is left out; "
                     + ONNX_INSTALL,
        baseline_missing="{reason}"),
}
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
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_setaffinity") else []
    if threads < len(allowed):
        os.sched_setaffinity(0, allowed[:threads])


def _serve(runner_class, arguments, conn):
    """Worker process: build the runner, then answer ("run", mode, batch, steps) and ("rss",) requests.
    (Unpickling this function imported the mobilenetv3 package, which set the CPU defaults.)"""
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


def make_row(backend, model, metric, batch_size, ours: dict, baseline: Optional[dict]) -> dict:
    label, unit, better = METRICS[metric]
    row = {"backend": backend, "model": model, "metric": metric, "label": label, "batch_size": batch_size,
           "unit": unit, "better": better, "ours": ours["value"], "ours_windows": ours["windows"],
           "baseline": None, "baseline_windows": None, "ratio": None}
    if baseline is not None:
        row.update(baseline=baseline["value"], baseline_windows=baseline["windows"],
                   ratio=ours["value"] / baseline["value"])
    return row


# Camera photos (720x477) that rustup's rust-docs component ships; the benchmark JPEGs are cut from them.
PHOTO_GLOBS = ("~/.rustup/toolchains/*/share/doc/rust/html/embedded-book/assets/*.jpg",
               "~/.rustup/toolchains/*/share/doc/rust/html/embedded-book/assets/*.jpeg")
PIPELINES = ("ours", "mindspore", "mindspore_uint8", "torch")
TRANSFORMS = ("train", "eval")


def find_photos() -> List[Path]:
    """Photos found on this machine (PHOTO_GLOBS), one of each file name."""
    found = {}
    for pattern in PHOTO_GLOBS:
        for path in sorted(glob.glob(os.path.expanduser(pattern))):
            if os.path.getsize(path) >= 50_000:
                found.setdefault(Path(path).name, Path(path))
    return list(found.values())


def write_benchmark_jpegs(root: Path, count: int, seed: int) -> dict:
    """root/class_<c>/<i>.jpg: `count` 500x375 JPEGs at quality 90, each a random crop (60-100% of the
    width) of a photo found on this machine, flipped at random; smooth noisy synthetic images (lighter
    to decode) where none is found. Returns what they were made from and their mean file size."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    width, height = SOURCE_IMAGE_SIZE
    photos = [Image.open(path).convert("RGB") for path in find_photos()]
    sizes = []
    for i in range(count):
        if photos:
            photo = photos[i % len(photos)]
            w = min(int(photo.width * rng.uniform(0.6, 1.0)), photo.height * width // height)
            h = w * height // width
            left, top = int(rng.integers(0, photo.width - w + 1)), int(rng.integers(0, photo.height - h + 1))
            image = photo.resize((width, height), Image.BICUBIC, box=(left, top, left + w, top + h))
            if rng.random() < 0.5:
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        else:
            coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((width, height),
                                                                                              Image.BICUBIC)
            pixels = np.asarray(coarse, dtype=np.float32) + rng.normal(0, 8, (height, width, 3))
            image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        path = root / f"class_{i % 2}" / f"{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, quality=90)
        sizes.append(path.stat().st_size)
    source = (f"cut from {len(photos)} photos ({', '.join(p.name for p in find_photos())})" if photos
              else "synthetic (no photos found: lighter to decode than photos)")
    return {"source": source, "mean_file_kb": float(np.mean(sizes)) / 1000}


class TorchImages:
    """The same transforms for a PyTorch DataLoader (torchvision is not needed): Pillow decode; train:
    random-resized crop (data.random_resized_crop_box) and flip, resized by Pillow; eval: shorter side
    to `short_side`, centre crop; then normalised CHW float32."""

    def __init__(self, samples, training, size, short_side, passes, seed, mean, std):
        self.samples, self.training, self.size, self.short_side = samples, training, size, short_side
        self.passes, self.seed, self.mean, self.std = passes, seed, np.float32(mean), np.float32(std)

    def __len__(self):
        return len(self.samples) * self.passes

    def __getitem__(self, index):
        from PIL import Image
        from mobilenetv3 import data
        path, label = self.samples[index % len(self.samples)]
        with Image.open(path) as image:
            image = image.convert("RGB")
        if self.training:
            rng = np.random.default_rng([self.seed, index])
            top, left, h, w = data.random_resized_crop_box(image.height, image.width, rng)
            image = image.resize((self.size, self.size), Image.BILINEAR, box=(left, top, left + w, top + h))
            if rng.random() < 0.5:
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        else:
            scale = self.short_side / min(image.size)
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
            left, top = (image.width - self.size) // 2, (image.height - self.size) // 2
            image = image.crop((left, top, left + self.size, top + self.size))
        pixels = (np.asarray(image, dtype=np.float32) / 255 - self.mean) / self.std
        return np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32), label


def pipeline_batches(pipeline, transform, workers, root, settings: Settings, batch_size, passes):
    """An iterator over `passes` passes of batches of one pipeline over the JPEGs below `root`."""
    from mobilenetv3 import data
    from mobilenetv3.config import build_config
    config = build_config(overrides=dict(device_target="CPU", resize=settings.image_size, batch_size=batch_size,
                                         num_parallel_workers=workers, seed=settings.seed, repeat_num=passes))
    folder = data.scan_image_folder(Path(root))
    training = transform == "train"
    if pipeline == "ours":
        if training:  # uint8 batches: training normalises them on the device
            return data.create_dataset(folder, config, True).create_tuple_iterator(num_epochs=1, output_numpy=True)
        folder = data.ImageFolder(folder.root, folder.classes, folder.samples * passes)  # eval has no repeat_num
        batches = data.create_dataset(folder, config, False).create_tuple_iterator(num_epochs=1, output_numpy=True)
        return ((data.normalize_batch(images, config), labels) for images, labels in batches)  # as evaluation does
    if pipeline.startswith("mindspore"):
        import mindspore.dataset as ds
        from mindspore.dataset import vision
        dataset = ds.ImageFolderDataset(str(root), num_parallel_workers=workers, shuffle=training)
        ops = ([vision.RandomCropDecodeResize(config.resize), vision.RandomHorizontalFlip()] if training else
               [vision.Decode(), vision.Resize(data.eval_short_side(config)), vision.CenterCrop(config.resize)])
        if pipeline == "mindspore":
            ops += [vision.Normalize([255 * m for m in config.mean], [255 * s for s in config.std]), vision.HWC2CHW()]
        dataset = dataset.map(ops, input_columns="image", num_parallel_workers=workers)
        return dataset.batch(batch_size, drop_remainder=True).repeat(passes).create_tuple_iterator(
            num_epochs=1, output_numpy=True)
    import torch
    torch.set_num_threads(1)
    images = TorchImages(folder.samples, training, config.resize, data.eval_short_side(config), passes, settings.seed,
                         config.mean, config.std)
    return iter(torch.utils.data.DataLoader(images, batch_size=batch_size, shuffle=training, num_workers=workers,
                                            drop_last=True))


def process_tree_usage() -> Tuple[float, float]:
    """(CPU seconds, proportional set size in MB) of this process and its children (the data workers)."""
    import psutil
    cpu, pss = 0.0, 0.0
    me = psutil.Process()
    for process in [me, *me.children(recursive=True)]:
        try:
            times = process.cpu_times()
            cpu += times.user + times.system
            pss += process.memory_full_info().pss / 2 ** 20
        except psutil.Error:  # a worker that ended meanwhile
            pass
    return cpu, pss


def time_pipeline(pipeline, transform, workers, root, settings: Settings, batch_size) -> dict:
    """img/s of one pipeline alone: one warm-up pass over the folder, then one timed pass per window,
    with the CPU time per image and the peak PSS of the process and its workers."""
    images = len(list(Path(root).glob("*/*.jpg")))
    steps = images // batch_size
    batches = pipeline_batches(pipeline, transform, workers, root, settings, batch_size, settings.windows + 1)
    timed_steps(lambda: next(batches), steps)
    windows, cpu_ms, peak_pss = [], [], 0.0
    for _ in range(settings.windows):
        cpu_start = process_tree_usage()[0]
        seconds = sum(timed_steps(lambda: next(batches), steps))
        cpu_end, pss = process_tree_usage()
        windows.append(steps * batch_size / seconds)
        cpu_ms.append(1000 * (cpu_end - cpu_start) / (steps * batch_size))
        peak_pss = max(peak_pss, pss)
    return {"pipeline": pipeline, "transform": transform, "workers": workers, "img_per_s": float(np.median(windows)),
            "windows": windows, "cpu_ms_per_image": float(np.median(cpu_ms)), "peak_pss_mb": peak_pss}


def _send_result(conn, function, args):
    try:
        conn.send(("ok", function(*args)))
    except ImportError as err:
        conn.send(("unavailable", str(err)))
    except Exception:
        conn.send(("error", traceback.format_exc()))


def in_child_process(function, *args):
    """function(*args) in a fresh spawned process that may start processes of its own (a Pool's may not);
    raises ImportError when it could not import what it needed."""
    context = multiprocessing.get_context("spawn")
    conn, child = context.Pipe()
    process = context.Process(target=_send_result, args=(child, function, args))
    process.start()
    child.close()
    try:
        status, payload = conn.recv()
    except EOFError:
        raise RuntimeError(f"the data pipeline benchmark process died (exit code {process.exitcode})") from None
    finally:
        process.join()
    if status == "unavailable":
        raise ImportError(payload)
    if status == "error":
        raise RuntimeError(f"the data pipeline benchmark process failed:\n{payload}")
    return payload


def measure_data_pipeline(settings: Settings, log=print) -> dict:
    """Ours, MindSpore's C++ pipeline and a PyTorch DataLoader, train and eval transforms (--quick: train
    only), 1 to num_parallel_workers workers, each configuration in a fresh process; the three pipelines
    of a configuration run one after another, in turns reversed from one configuration to the next."""
    batch_size = 8 if settings.quick else 32
    report = {"batch_size": batch_size, "source_image_size": list(SOURCE_IMAGE_SIZE),
              "output_image_size": settings.image_size, "rows": [], "torch_reason": None}
    with tempfile.TemporaryDirectory(prefix="mobilenetv3_benchmark_") as tmp:
        report.update(write_benchmark_jpegs(Path(tmp), max(settings.data_images, 2 * batch_size), settings.seed))
        report["images"] = max(settings.data_images, 2 * batch_size)
        log(f"data pipeline: {report['images']} JPEGs {report['source']}, mean {report['mean_file_kb']:.0f} KB")
        turn = 0
        for transform in TRANSFORMS[:1] if settings.quick else TRANSFORMS:
            for workers in range(1, settings.num_parallel_workers + 1):
                pipelines = [p for p in PIPELINES if p != "torch" or report["torch_reason"] is None]
                for pipeline in pipelines if turn % 2 == 0 else pipelines[::-1]:
                    log(f"data pipeline: {pipeline}, {transform}, {workers} workers")
                    try:
                        report["rows"].append(in_child_process(time_pipeline, pipeline, transform, workers, tmp,
                                                               settings, batch_size))
                    except ImportError as err:
                        if pipeline != "torch":
                            raise
                        report["torch_reason"] = f"PyTorch is not importable ({err}): its DataLoader is left out"
                turn += 1
    return report


def _version(package) -> Optional[str]:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict:
    return {"cpu_model": cpu_model(), "physical_cores": physical_cores(), "logical_cpus": os.cpu_count(),
            "cpus_available": available_cpus(), "avx512": "avx512f" in cpu_flags(),
            "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"), "platform": platform.platform(),
            "load_average_start": list(os.getloadavg()), "cpu_pressure_start": cpu_pressure()}


def cpu_pressure() -> Optional[float]:
    """Share of the last 10 s in which some runnable task waited for a CPU, in percent (Linux PSI)."""
    try:
        return float(Path("/proc/pressure/cpu").read_text().split()[1].split("=")[1])
    except (OSError, IndexError, ValueError):
        return None


def run(settings: Settings, log=print) -> dict:
    """Measure every comparison and model, and the data pipeline when training is measured; returns the
    report (see format_table and save_json)."""
    started = time.time()
    report = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info(),
              "versions": {"python": platform.python_version(), "mobilenetv3": _version("mobilenetv3-mindspore"),
                           "mindspore": _version("mindspore"), "torch": _version("torch"),
                           "onnxruntime": _version("onnxruntime"), "onnx": _version("onnx"),
                           "numpy": _version("numpy"), "pillow": _version("pillow")},
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


def _spread(windows) -> str:
    """Range of the windows around their median, in percent (the run-to-run noise of one figure)."""
    if not windows or len(windows) < 2:
        return ""
    return f"±{50 * (max(windows) - min(windows)) / float(np.median(windows)):.0f}%"


def _number(value) -> str:
    if value is None:
        return "-"
    if value >= 1e5:
        return f"{value:,.0f}"
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def compare_graphs(ours: dict, baseline: dict) -> str:
    """One line: both ONNX graphs' node counts and the op types whose counts differ (graph_summary's)."""
    ops = sorted(set(ours["op_types"]) | set(baseline["op_types"]))
    differ = [f"{op} {ours['op_types'].get(op, 0)}/{baseline['op_types'].get(op, 0)}" for op in ops
              if ours["op_types"].get(op, 0) != baseline["op_types"].get(op, 0)]
    return (f"ours {ours['nodes']} nodes, baseline {baseline['nodes']} nodes (opset {ours['opset']}/"
            f"{baseline['opset']}); " + ("op counts that differ, ours/baseline: " + ", ".join(differ) if differ
                                         else "the same count of every op type"))


def format_table(report: dict) -> str:
    machine, settings = report["machine"], report["settings"]
    lines = [f"MobileNetV3 CPU benchmark: {settings['image_size']} px, {settings['num_classes']} classes, "
             f"{settings['threads']} threads, {machine['cpu_model']} ({machine['cpus_available']} CPUs available, "
             f"load {machine['load_average_start'][0]:.1f} -> {machine['load_average_end'][0]:.1f})"]
    if settings["data_only"]:
        return "\n".join(lines + format_data_pipeline(report["data_pipeline"]))
    for backend, comparison in report["comparisons"].items():
        lines.append(f"{backend}: ours = {comparison['ours']}; baseline = {comparison['baseline']}")
    busiest = max(machine["load_average_start"][0], machine["load_average_end"][0])
    if busiest > machine["cpus_available"]:
        lines.append(f"WARNING: the machine was busy (load average {busiest:.1f} on {machine['cpus_available']} CPUs): "
                     "absolute figures are low and noisy, and PyTorch's OpenMP threads suffer most from it; "
                     "repeat on an idle machine")
    for comparison in report["comparisons"].values():
        for reason in (comparison["reason"], comparison["baseline_reason"]):
            if reason:
                lines.append(f"NOTE: {reason}")
    for name, model in report["models"].items():
        lines.append(f"{name}: {model['params']:,} parameters, {model['macs'] / 1e6:.1f} M MACs per image")
        graphs = model["backends"].get("onnxruntime")
        if graphs and graphs["baseline"]:
            lines.append(f"{name} ONNX graphs: {compare_graphs(graphs['ours']['graph'], graphs['baseline']['graph'])}")
    header = ("backend", "model", "metric", "batch", "ours", "spread", "baseline", "spread", "ours/baseline")
    table = [header]
    for row in report["rows"]:
        table.append((row["backend"], row["model"], f"{row['label']} {row['unit']}".strip(),
                      "" if row["batch_size"] is None else str(row["batch_size"]),
                      _number(row["ours"]), _spread(row["ours_windows"]), _number(row["baseline"]),
                      _spread(row["baseline_windows"]), "-" if row["ratio"] is None else f"{row['ratio']:.2f}"))
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for r in table:
        lines.append("  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    lines.append("ratio = ours / baseline: above 1 is better for img/s, below 1 for ms, s and MB. "
                 "spread: half the range of the timed windows around their median.")
    pipeline = report["data_pipeline"]
    if pipeline is None:
        return "\n".join(lines)
    lines += format_data_pipeline(pipeline)
    fastest = max(row["img_per_s"] for row in pipeline["rows"]
                  if row["pipeline"] == "ours" and row["transform"] == "train")
    slower = [f"{row['model']} at batch {row['batch_size']} ({row['ours']:.0f} img/s)" for row in report["rows"]
              if row["metric"] == "train_throughput" and row["ours"] > fastest]
    lines.append(f"our training pipeline is slower than training of {', '.join(slower)} on this CPU: the data is the "
                 "bottleneck there" if slower else "our training pipeline keeps up with every training throughput "
                                                   "measured on this CPU (a GPU needs more: see docs/performance.md)")
    return "\n".join(lines)


def format_data_pipeline(pipeline: dict) -> List[str]:
    """The data pipeline table: per transform and worker count, each pipeline's img/s, ours against the
    others and against our 1-worker figure, CPU time per image and peak PSS (process and workers)."""
    width, height = pipeline["source_image_size"]
    lines = [f"data pipelines: {pipeline['images']} JPEGs of {width}x{height} {pipeline['source']}, mean file "
             f"{pipeline['mean_file_kb']:.0f} KB; batch {pipeline['batch_size']}, {pipeline['output_image_size']} px. "
             "ours = data.create_dataset (uint8 NHWC; eval: + normalize_batch, as evaluation runs it; training "
             "normalises on the device); mindspore = ImageFolderDataset + RandomCropDecodeResize + flip (train) or "
             "Decode + Resize + CenterCrop (eval), + Normalize + HWC2CHW; mindspore_uint8 = the same without "
             "Normalize + HWC2CHW; torch = DataLoader over Pillow, the same transforms"]
    if pipeline["torch_reason"]:
        lines.append(f"NOTE: {pipeline['torch_reason']}")
    rows = {(r["pipeline"], r["transform"], r["workers"]): r for r in pipeline["rows"]}
    names = [p for p in PIPELINES if any(key[0] == p for key in rows)]
    header = ("transform", "workers", *[f"{p} img/s" for p in names], *[f"ours/{p}" for p in names[1:]],
              "ours/1 worker", "CPU ms/img " + "/".join(names), "peak PSS MB " + "/".join(names))
    table = [header]
    for transform, workers in sorted({key[1:] for key in rows}, key=lambda k: (TRANSFORMS.index(k[0]), k[1])):
        found = [rows[p, transform, workers] for p in names]
        ours, single = found[0], rows["ours", transform, 1]
        table.append((transform, str(workers),
                      *[f"{r['img_per_s']:.0f} {_spread(r['windows'])}" for r in found],
                      *[f"{ours['img_per_s'] / r['img_per_s']:.2f}" for r in found[1:]],
                      f"{ours['img_per_s'] / single['img_per_s']:.2f}",
                      "/".join(f"{r['cpu_ms_per_image']:.2f}" for r in found),
                      "/".join(f"{r['peak_pss_mb']:.0f}" for r in found)))
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines += ["  ".join(c.ljust(w) if i < 1 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in table]
    lines.append("CPU ms/img: CPU time of the process and its workers per image (1000 / it = images/s per core); "
                 "PSS: proportional set size, shared pages divided among the processes sharing them")
    return lines


def save_json(report: dict, path):
    Path(path).write_text(json.dumps(report, indent=1) + "\n")
