"""The report: what it records of the machine and the versions (machine_info, versions), its rows (METRICS,
make_row: a figure of ours against the baseline's, with their ratio), and its forms: the table printed
(format_table, with format_data_pipeline and compare_graphs) and the JSON file (save_json).
"""
import importlib.metadata
import json
import os
import platform
from pathlib import Path
from typing import List, Optional

import numpy as np

from benchmarks.pipelines import PIPELINES, TRANSFORMS
from mobilenetv3.native.cpu_info import available_cpus, cpu_flags, cpu_model, physical_cores

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


def make_row(backend, model, metric, batch_size, ours: dict, baseline: Optional[dict]) -> dict:
    label, unit, better = METRICS[metric]
    row = {"backend": backend, "model": model, "metric": metric, "label": label, "batch_size": batch_size,
           "unit": unit, "better": better, "ours": ours["value"], "ours_windows": ours["windows"],
           "baseline": None, "baseline_windows": None, "ratio": None}
    if baseline is not None:
        row.update(baseline=baseline["value"], baseline_windows=baseline["windows"],
                   ratio=ours["value"] / baseline["value"])
    return row


def _version(package) -> Optional[str]:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> dict:
    """Versions of Python and of the packages measured or used, None for those not installed."""
    return {"python": platform.python_version(), "mobilenetv3": _version("mobilenetv3-mindspore"),
            "mindspore": _version("mindspore"), "torch": _version("torch"), "onnxruntime": _version("onnxruntime"),
            "onnx": _version("onnx"), "openvino": _version("openvino"), "numpy": _version("numpy"), "pillow": _version("pillow")}


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
             "ours = data.pipeline.create_dataset (uint8 NHWC; eval: + normalize_batch, as evaluation runs it; training "
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
