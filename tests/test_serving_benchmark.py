"""benchmarks/serving.py: a tiny run writes every figure, each derived exactly from the windows it records.

No timing thresholds: the machine is shared, so only counts and exact relations are checked.
"""
import json

import numpy as np
import pytest

from conftest import run_script

pytest.importorskip("uvicorn", reason="the serve extra: pip install -e '.[serve]'")


@pytest.mark.slow  # four servers started: run with --runslow
def test_a_tiny_serving_benchmark_reports_consistent_rows(tmp_path):
    out = tmp_path / "serving.json"
    result = run_script("serving", "--quick", "--clients", 1, 3, "--requests", 4, "--window_seconds", 2,
                        "--max_batch", 4, "--image_width", 96, "--image_height", 64, "--json", out,
                        folder="benchmarks", timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [row["clients"] for row in report["rows"]] == [1, 3]
    assert set(report["model_alone"]) == {"1", "4"} and all(rate > 0 for rate in report["model_alone"].values())
    for row in report["rows"]:
        for side in ("batched", "one_at_a_time"):
            figures = row[side]
            assert len(figures["windows"]) == 2  # --quick: two windows per side
            assert figures["requests"] == sum(w["requests"] for w in figures["windows"]) > 0
            assert all(w["requests"] <= 4 * row["clients"] for w in figures["windows"])  # bounded by --requests
            rates = [w["requests"] / w["seconds"] for w in figures["windows"]]
            assert figures["requests_per_s"] == pytest.approx(float(np.median(rates)), rel=1e-12)
            assert 0 < figures["p50_ms"] <= figures["p99_ms"]
        assert row["ratio"] == pytest.approx(row["batched"]["requests_per_s"] / row["one_at_a_time"]["requests_per_s"],
                                             rel=1e-12)
        assert all(1 <= int(size) <= 4 for size in row["batch_sizes"])
        # every request of the batched server's windows ran in one of the batches counted for them
        assert sum(int(size) * count for size, count in row["batch_sizes"].items()) == row["batched"]["requests"]
    assert report["machine"]["load_average_end"] and "| clients | batched req/s |" in result.stdout
