"""benchmarks/benchmark.py: a quick run on a tiny setting writes every figure, with ratios computed from them.

No timing thresholds: the machine is shared, so only signs, counts and exact relations are checked.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import openvino_computes_bf16, run_script
from benchmarks import harness, pipelines, runners
from benchmarks.report import compare_graphs

# Batch 1 only: one training and one inference graph to compile keeps the run under a minute or two. One
# thread: on a busy machine two OpenMP threads make PyTorch's steps up to 100x slower (waits at every barrier).
TINY = ["--quick", "--models", "small", "--batch_sizes", "1", "--image_size", "64", "--threads", "1"]
EXPECTED_ROWS = {
    "mindspore": {("train_throughput", 1), ("infer_throughput", 1), ("latency_median", 1), ("latency_p90", 1),
                  ("train_first_step", 1), ("infer_first_step", 1), ("peak_rss", None), ("params", None)},
    "onnxruntime": {("infer_throughput", 1), ("latency_median", 1), ("latency_p90", 1), ("infer_first_step", 1),
                    ("peak_rss", None), ("params", None)},
}
SMALL_PARAMS = 2_542_856


def fake_missing(directory, *packages):
    """Packages that fail to import, first on the path: what a machine without them shows. Returns the
    PYTHONPATH to run with (the directory, then the PYTHONPATH of this process)."""
    for package in packages:
        (directory / package).mkdir()
        (directory / package / "__init__.py").write_text(f"raise ImportError(\"No module named '{package}'\")\n")
    return os.pathsep.join(filter(None, [str(directory), os.environ.get("PYTHONPATH")]))


def check_graph(graph):
    """An exported MobileNetV3-Small as ONNX Runtime gets it: BatchNorm folded, hard activations fused."""
    assert graph["nodes"] == sum(graph["op_types"].values()) > 0
    assert graph["op_types"]["Conv"] == 52 and "BatchNormalization" not in graph["op_types"]
    assert graph["op_types"]["HardSwish"] > 0 and graph["op_types"]["HardSigmoid"] == 9  # one per SE block
    assert graph["file_mb"] > 4 * SMALL_PARAMS / 1e6 * 0.9  # float32 weights


def check_report(report, with_baseline):
    assert report["settings"]["models"] == ["small"] and report["settings"]["batch_sizes"] == [1]
    assert report["settings"]["image_size"] == 64 and report["settings"]["quick"] is True
    assert report["settings"]["backends"] == ["mindspore", "onnxruntime"]
    windows = report["settings"]["windows"]
    machine = report["machine"]
    assert machine["cpu_model"] and machine["logical_cpus"] >= machine["cpus_available"] >= 1
    assert report["settings"]["threads"] == 1
    assert len(machine["load_average_start"]) == len(machine["load_average_end"]) == 3
    assert report["versions"]["mindspore"] == "2.10.0" and report["versions"]["python"].startswith("3.")
    for backend in ("mindspore", "onnxruntime"):
        comparison = report["comparisons"][backend]
        assert comparison["available"] is True and comparison["reason"] is None
        assert comparison["baseline_available"] is with_baseline

    from mobilenetv3.models.factory import create_model
    from mobilenetv3.models.mobilenetv3 import count_complexity
    model = report["models"]["small"]
    assert model["params"] == SMALL_PARAMS
    assert model["macs"] == count_complexity(create_model("mobilenet_v3_small"), 64).macs
    mindspore, onnxruntime = model["backends"]["mindspore"], model["backends"]["onnxruntime"]
    assert mindspore["ours"]["threads"] == 1 and mindspore["ours"]["mode"] == "GRAPH"
    assert mindspore["baseline"] == ({"params": SMALL_PARAMS, "threads": 1, "mode": "eager"}
                                     if with_baseline else None)
    assert onnxruntime["ours"]["threads"] == 1 and onnxruntime["ours"]["params"] == SMALL_PARAMS
    assert onnxruntime["ours"]["macs"] == model["macs"]
    check_graph(onnxruntime["ours"]["graph"])
    if with_baseline:
        assert onnxruntime["baseline"]["threads"] == 1 and onnxruntime["baseline"]["params"] == SMALL_PARAMS
        check_graph(onnxruntime["baseline"]["graph"])
        assert onnxruntime["baseline"]["graph"]["opset"] == onnxruntime["ours"]["graph"]["opset"] >= 14
    else:
        assert onnxruntime["baseline"] is None

    rows = {(row["backend"], row["metric"], row["batch_size"]): row for row in report["rows"]}
    assert set(rows) == {(backend, *key) for backend, keys in EXPECTED_ROWS.items() for key in keys}
    assert len(report["rows"]) == len(rows)
    for key, row in rows.items():
        sides = ("ours", "baseline") if with_baseline else ("ours",)
        for side in sides:
            assert row[side] > 0, (key, side)
            assert all(value > 0 for value in row[f"{side}_windows"]), (key, side)
            if key[1].endswith("throughput"):  # the figure is the median of the timed windows
                assert len(row[f"{side}_windows"]) == windows
                assert row[side] == float(np.median(row[f"{side}_windows"]))
        if with_baseline:
            assert row["ratio"] == row["ours"] / row["baseline"], key
        else:
            assert row["baseline"] is None and row["baseline_windows"] is None and row["ratio"] is None
    for backend in EXPECTED_ROWS:
        assert rows[backend, "latency_p90", 1]["ours"] >= rows[backend, "latency_median", 1]["ours"]
        assert rows[backend, "params", None]["ours"] == SMALL_PARAMS
        if with_baseline:
            assert rows[backend, "params", None]["baseline"] == SMALL_PARAMS
            assert rows[backend, "params", None]["ratio"] == 1.0
    assert 50 < rows["mindspore", "peak_rss", None]["ours"] < 24 * 1024  # MB: MindSpore alone takes more than 50

    pipeline = report["data_pipeline"]
    assert pipeline["batch_size"] == 8 and pipeline["source_image_size"] == [500, 375]
    assert pipeline["images"] == 48 and 10 < pipeline["mean_file_kb"] < 200
    assert (pipeline["torch_reason"] is None) is with_baseline
    names = ["ours", "mindspore", "mindspore_uint8"] + (["torch"] if with_baseline else [])
    workers = range(1, machine["cpus_available"] + 1)
    assert sorted((r["pipeline"], r["transform"], r["workers"]) for r in pipeline["rows"]) == \
        sorted((name, "train", w) for name in names for w in workers)  # --quick: train transforms only
    for row in pipeline["rows"]:
        assert len(row["windows"]) == windows and row["img_per_s"] == float(np.median(row["windows"])) > 0
        assert row["cpu_ms_per_image"] > 0 and 20 < row["peak_pss_mb"] < 24 * 1024


@pytest.mark.slow  # CI time: run with --runslow
def test_quick_run_writes_every_figure(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    out = tmp_path / "bench.json"
    result = run_script("benchmark", *TINY, "--json", out, cwd=tmp_path, folder="benchmarks")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    check_report(report, with_baseline=True)
    assert "ours/baseline" in result.stdout and "data pipelines:" in result.stdout
    assert "ours/mindspore" in result.stdout and "ours/torch" in result.stdout
    graphs = report["models"]["small"]["backends"]["onnxruntime"]
    line = f"small ONNX graphs: {compare_graphs(graphs['ours']['graph'], graphs['baseline']['graph'])}"
    assert line in result.stdout.splitlines()
    assert "NOTE" not in result.stdout


@pytest.mark.slow  # CI time: run with --runslow
def test_without_torch_reports_ours_and_says_why(tmp_path):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "bench.json"
    result = run_script("benchmark", *TINY, "--json", out, cwd=tmp_path, folder="benchmarks",
                        env={"PYTHONPATH": fake_missing(tmp_path, "torch")})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    check_report(report, with_baseline=False)
    for comparison in report["comparisons"].values():
        assert "No module named 'torch'" in comparison["baseline_reason"]
        assert "pip install torch==2.13.0" in comparison["baseline_reason"]
        assert f"NOTE: {comparison['baseline_reason']}" in result.stdout
    assert "ONNX graphs" not in result.stdout
    assert "NOTE: PyTorch is not importable (No module named 'torch'): its DataLoader is left out" in result.stdout


@pytest.mark.parametrize("package", ["onnxruntime", "onnx"])
def test_without_onnxruntime_or_onnx_leaves_that_comparison_out_and_says_why(package, tmp_path):
    out = tmp_path / "bench.json"
    result = run_script("benchmark", *TINY, "--backends", "onnxruntime", "--json", out, cwd=tmp_path, folder="benchmarks",
                        env={"PYTHONPATH": fake_missing(tmp_path, package)})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    comparison = report["comparisons"]["onnxruntime"]
    assert comparison["available"] is False and comparison["reason"] == (
        f"ONNX Runtime or onnx is not importable (No module named '{package}'): the ONNX Runtime comparison is "
        "left out; pip install onnxruntime onnx")
    assert list(report["comparisons"]) == ["onnxruntime"]
    assert report["rows"] == [] and report["models"] == {} and report["data_pipeline"] is None
    assert f"NOTE: {comparison['reason']}" in result.stdout.splitlines()


@pytest.mark.slow  # CI time: run with --runslow
def test_int8_comparison_runs_the_quantized_export_against_the_float32_one(tmp_path):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "bench.json"
    result = run_script("benchmark", *TINY, "--backends", "int8", "--json", out, cwd=tmp_path, folder="benchmarks")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert list(report["comparisons"]) == ["int8"] and report["comparisons"]["int8"]["baseline_available"] is True
    int8, float32 = (report["models"]["small"]["backends"]["int8"][role] for role in ("ours", "baseline"))
    check_graph(float32["graph"])
    # Hard-swish written out for the int8 ops but for the stem's, left in float32
    assert int8["graph"]["op_types"]["QuantizeLinear"] > 50 and int8["graph"]["op_types"]["HardSwish"] == 1
    # Weights of 1 byte instead of 4 but for the float stem, the classifier's included: under 0.35 of the
    # float32 file (measured 0.28; biases, scales and zero points stay wider)
    assert float32["graph"]["file_mb"] - int8["graph"]["file_mb"] > 0.8 * 3 * SMALL_PARAMS / 1e6
    assert int8["graph"]["file_mb"] < 0.35 * float32["graph"]["file_mb"]
    assert int8["params"] == float32["params"] == SMALL_PARAMS and int8["threads"] == float32["threads"] == 1
    rows = {(row["metric"], row["batch_size"]): row for row in report["rows"]}
    assert set(rows) == EXPECTED_ROWS["onnxruntime"] and {row["backend"] for row in report["rows"]} == {"int8"}
    assert all(row["ratio"] == row["ours"] / row["baseline"] > 0 for row in rows.values())
    assert "int8: ours = our ONNX export quantized to int8" in result.stdout and "NOTE" not in result.stdout


@pytest.mark.slow  # CI time: run with --runslow
def test_openvino_comparisons_run_the_float32_and_int8_files_against_onnxruntime(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    out = tmp_path / "bench.json"
    result = run_script("benchmark", *TINY, "--backends", "openvino_int8", "openvino_bf16", "openvino", "--json", out,
                        cwd=tmp_path, folder="benchmarks")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert list(report["comparisons"]) == ["openvino", "openvino_bf16", "openvino_int8"]  # in the running order
    backends = report["models"]["small"]["backends"]
    same_file, bf16, int8 = backends["openvino"], backends["openvino_bf16"], backends["openvino_int8"]
    assert same_file["ours"]["graph"] == same_file["baseline"]["graph"] == bf16["ours"]["graph"]  # one file
    check_graph(same_file["ours"]["graph"])
    assert int8["ours"]["graph"]["op_types"]["QuantizeLinear"] > 50
    check_graph(int8["baseline"]["graph"])
    for info, precision in ((same_file, "f32"), (bf16, "bf16" if openvino_computes_bf16() else "f32"), (int8, "f32")):
        assert info["ours"]["threads"] == info["baseline"]["threads"] == 1
        assert info["ours"]["mode"] == f"LATENCY, {precision}"
    for backend in ("openvino", "openvino_bf16", "openvino_int8"):
        rows = {(row["metric"], row["batch_size"]): row for row in report["rows"] if row["backend"] == backend}
        assert set(rows) == EXPECTED_ROWS["onnxruntime"]
        assert all(row["ratio"] == row["ours"] / row["baseline"] > 0 for row in rows.values())
    assert report["versions"]["openvino"].startswith("20") and "NOTE" not in result.stdout
    assert "openvino: ours = our float32 ONNX export in OpenVINO" in result.stdout


def test_latency_is_measured_at_batch_1_whatever_the_batch_sizes():
    assert harness.measured_cases([32, 2], ("train", "infer")) == [("train", 32), ("train", 2), ("infer", 1),
                                                                     ("infer", 2), ("infer", 32)]
    assert harness.measured_cases([1], ("train", "infer")) == [("train", 1), ("infer", 1)]
    assert harness.measured_cases([32], ("infer",)) == [("infer", 1), ("infer", 32)]


def test_graph_comparison_names_the_op_counts_that_differ():
    ours = {"nodes": 5, "opset": 14, "op_types": {"Conv": 3, "HardSwish": 2}}
    baseline = {"nodes": 6, "opset": 14, "op_types": {"Conv": 3, "HardSwish": 1, "Mul": 2}}
    assert compare_graphs(ours, baseline) == (
        "ours 5 nodes, baseline 6 nodes (opset 14/14); op counts that differ, ours/baseline: HardSwish 2/1, Mul 0/2")
    assert compare_graphs(ours, ours) == (
        "ours 5 nodes, baseline 5 nodes (opset 14/14); the same count of every op type")


def test_missing_torch_makes_the_baseline_worker_unavailable(tmp_path, monkeypatch):
    fake_missing(tmp_path, "torch")
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned workers inherit sys.path
    worker = harness.Worker("baseline", runners.TorchRunner,
                              ("mobilenet_v3_small", harness.Settings(models=["small"])))
    try:
        info, reason = worker.ready()
    finally:
        worker.close()
    assert info is None and reason == "No module named 'torch'"


@pytest.mark.parametrize("flags, message", [
    (["--image_size", "32"], "image_size must be > 32, got 32"),
    (["--batch_sizes", "0"], "batch_sizes must be a non-empty list of integers >= 1, got [0]"),
    (["--threads", "-1"], "threads must be >= 0 (0: one per CPU), got -1"),
    (["--models", "tiny"], "invalid choice: 'tiny'"),
    (["--backends", "tensorflow"], "invalid choice: 'tensorflow'"),
])
def test_bad_settings_are_refused_before_measuring(flags, message, tmp_path):
    result = run_script("benchmark", *flags, cwd=tmp_path, folder="benchmarks", timeout=60)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_workers_are_pinned_to_as_many_cpus_as_threads():
    script = ("import os; from benchmarks.harness import pin_to; pin_to({}); "
              "print(len(os.sched_getaffinity(0)))")
    available = len(os.sched_getaffinity(0))
    counts = [int(subprocess.run([sys.executable, "-c", script.format(threads)], capture_output=True, text=True,
                                 check=True).stdout.split()[-1]) for threads in (1, available + 1)]
    assert counts == [1, available]


def test_benchmark_jpegs_are_cut_from_photos_or_said_to_be_synthetic(tmp_path, monkeypatch):
    from PIL import Image
    photo = tmp_path / "photo.jpg"
    y, x = np.mgrid[0:477, 0:720]
    rng = np.random.default_rng(0)
    pixels = np.stack([x % 256, y % 256, (x * y) % 256], axis=-1) + rng.integers(0, 40, (477, 720, 3))
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(photo, quality=98)
    monkeypatch.setattr(pipelines, "PHOTO_GLOBS", (str(tmp_path / "*.jpg"),))
    made = pipelines.write_benchmark_jpegs(tmp_path / "cut", 4, seed=0)
    assert made["source"] == "cut from 1 photos (photo.jpg)"
    files = sorted((tmp_path / "cut").glob("class_*/*.jpg"))
    assert len(files) == 4 and all(Image.open(f).size == (500, 375) for f in files)
    assert made["mean_file_kb"] == pytest.approx(np.mean([f.stat().st_size for f in files]) / 1000)
    monkeypatch.setattr(pipelines, "PHOTO_GLOBS", ())
    assert pipelines.write_benchmark_jpegs(tmp_path / "synthetic", 2, seed=0)["source"].startswith("synthetic")
