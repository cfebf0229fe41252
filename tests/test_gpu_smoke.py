"""scripts/gpu_smoke.py runs on CPU in CI, so the GPU smoke test cannot rot: every step a CPU can run
passes, the GPU-only ones are skipped with their reason."""
import re

import pytest

from conftest import run_script


@pytest.mark.slow  # CI time: run with --runslow
def test_gpu_smoke_passes_on_cpu_with_the_gpu_steps_skipped(tmp_path):
    result = run_script("gpu_smoke", "--device_target", "CPU", "--work", tmp_path / "smoke", timeout=900)
    outcomes = dict((name, status) for status, name in re.findall(r"^(PASS|FAIL|SKIP) ([^:]+):", result.stdout, re.M))
    assert outcomes == {"check_gpu": "SKIP", "run_check": "PASS", "train": "PASS", "resume": "PASS",
                        "O0 RMSProp EMA clip": "PASS", "eval": "PASS", "export MINDIR + infer": "PASS",
                        "all-reduce over NCCL": "SKIP", "mpirun -n 2 train + eval": "SKIP"}, result.stdout
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert "SKIP check_gpu: device CPU" in lines
    assert "SKIP all-reduce over NCCL: needs 2 GPUs; device CPU" in lines
    assert any(line.startswith("PASS train: 9 step lines as expected; epochs ") for line in lines)
    assert re.search(r"^PASS eval: \{'Top_1_Accuracy': [\d.]+, 'Top_5_Accuracy': 1\.0\}$", result.stdout, re.M)
