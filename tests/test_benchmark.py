"""scripts/benchmark.py: a quick run on a tiny setting writes every figure, with ratios computed from them.

No timing thresholds: the machine is shared, so only signs, counts and exact relations are checked.
"""
import json

import numpy as np
import pytest

from conftest import run_script
from mobilenetv3 import benchmark

# Batch 1 only: one training and one inference graph to compile keeps the run under a minute. One thread:
# on a busy machine two OpenMP threads make PyTorch's steps up to 100x slower (waits at every barrier).
TINY = ["--quick", "--models", "small", "--batch_sizes", "1", "--image_size", "64", "--threads", "1"]
EXPECTED_ROWS = {("train_throughput", 1), ("infer_throughput", 1), ("latency_median", 1), ("latency_p90", 1),
                 ("train_first_step", 1), ("infer_first_step", 1), ("peak_rss", None), ("params", None)}
SMALL_PARAMS = 2_542_856


def fake_missing_torch(directory):
    """A `torch` package that fails to import, first on the path: what a machine without torch shows."""
    (directory / "torch").mkdir()
    (directory / "torch" / "__init__.py").write_text("raise ImportError(\"No module named 'torch'\")\n")
    return str(directory)


def check_report(report, with_baseline):
    assert report["settings"]["models"] == ["small"] and report["settings"]["batch_sizes"] == [1]
    assert report["settings"]["image_size"] == 64 and report["settings"]["quick"] is True
    windows = report["settings"]["windows"]
    machine = report["machine"]
    assert machine["cpu_model"] and machine["logical_cpus"] >= machine["cpus_available"] >= 1
    assert report["settings"]["threads"] == 1
    assert report["models"]["small"]["ours"]["threads"] == 1
    assert report["models"]["small"]["baseline"] == ({"params": SMALL_PARAMS, "threads": 1, "mode": "eager"}
                                                     if with_baseline else None)
    assert len(machine["load_average_start"]) == len(machine["load_average_end"]) == 3
    assert report["versions"]["mindspore"] == "2.10.0" and report["versions"]["python"].startswith("3.")
    assert report["baseline"]["available"] is with_baseline

    from mobilenetv3.model import count_complexity, create_model
    model = report["models"]["small"]
    assert model["params"] == SMALL_PARAMS
    assert model["macs"] == count_complexity(create_model("mobilenet_v3_small"), 64).macs

    rows = {(row["metric"], row["batch_size"]): row for row in report["rows"]}
    assert set(rows) == EXPECTED_ROWS and len(report["rows"]) == len(EXPECTED_ROWS)
    for key, row in rows.items():
        sides = ("ours", "baseline") if with_baseline else ("ours",)
        for side in sides:
            assert row[side] > 0, (key, side)
            assert all(value > 0 for value in row[f"{side}_windows"]), (key, side)
            if key[0].endswith("throughput"):  # the figure is the median of the timed windows
                assert len(row[f"{side}_windows"]) == windows
                assert row[side] == float(np.median(row[f"{side}_windows"]))
        if with_baseline:
            assert row["ratio"] == row["ours"] / row["baseline"], key
        else:
            assert row["baseline"] is None and row["baseline_windows"] is None and row["ratio"] is None
    assert rows["latency_p90", 1]["ours"] >= rows["latency_median", 1]["ours"]
    assert rows["params", None]["ours"] == SMALL_PARAMS
    assert 50 < rows["peak_rss", None]["ours"] < 24 * 1024  # MB: MindSpore alone takes more than 50
    if with_baseline:
        assert rows["params", None]["baseline"] == SMALL_PARAMS and rows["params", None]["ratio"] == 1.0

    pipeline = report["data_pipeline"]
    assert pipeline["batch_size"] == 1 and pipeline["workers"] == machine["cpus_available"]
    assert len(pipeline["windows"]) == windows and pipeline["img_per_s"] == float(np.median(pipeline["windows"]))
    assert pipeline["img_per_s"] > 0 and pipeline["source_image_size"] == [500, 375]


def test_quick_run_writes_every_figure(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "bench.json"
    result = run_script("benchmark", *TINY, "--json", out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    check_report(json.loads(out.read_text()), with_baseline=True)
    assert "ours/baseline" in result.stdout and "data pipeline:" in result.stdout
    assert "NOTE" not in result.stdout


def test_without_torch_reports_ours_and_says_why(tmp_path):
    out = tmp_path / "bench.json"
    result = run_script("benchmark", *TINY, "--json", out, cwd=tmp_path,
                        env={"PYTHONPATH": fake_missing_torch(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    check_report(report, with_baseline=False)
    assert "pip install torch==2.13.0" in report["baseline"]["reason"]
    assert f"NOTE: {report['baseline']['reason']}" in result.stdout


def test_latency_is_measured_at_batch_1_whatever_the_batch_sizes():
    assert benchmark.measured_cases([32, 2]) == [("train", 32), ("train", 2), ("infer", 1), ("infer", 2),
                                                  ("infer", 32)]
    assert benchmark.measured_cases([1]) == [("train", 1), ("infer", 1)]


def test_missing_torch_makes_the_baseline_worker_unavailable(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(fake_missing_torch(tmp_path))  # spawned workers inherit sys.path
    worker = benchmark.Worker("baseline", "mobilenet_v3_small", benchmark.Settings(models=["small"]))
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
])
def test_bad_settings_are_refused_before_measuring(flags, message, tmp_path):
    result = run_script("benchmark", *flags, cwd=tmp_path, timeout=60)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
