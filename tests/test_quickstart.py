"""scripts/quickstart.sh end to end in its reduced mode (--smoke: 300 Fashion-MNIST images, 1 epoch),
then again to check that finished steps are skipped; and from a fresh clone with the system's externally
managed Python (PEP 668), including the commands it prints at the end. Needs the real Fashion-MNIST IDX files."""
import ast
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, STEP_LINE
from mobilenetv3.errors import UserError
from fashion_mnist import CLASS_NAMES, find_idx_files  # scripts/fashion_mnist.py (conftest puts scripts/ on sys.path)

SCRIPT = REPO / "scripts" / "quickstart.sh"
ACCURACY_LINE = re.compile(r"^\{'Top_1_Accuracy': [0-9.]+, 'Top_5_Accuracy': [0-9.]+\}$", re.M)
PREDICTION_LINE = re.compile(r"^(\S+\.png): (.+)$", re.M)
SUMMARY_LINE = re.compile(r"^  (checkpoint|train log|metrics|predictions|curves): +(\S+)", re.M)
SMOKE_STEPS = [3, 6, 9]  # 30 images x 10 classes, batch 32 (last partial batch dropped), log every 3 steps


def fashion_mnist_present() -> bool:
    try:
        find_idx_files()
        return True
    except UserError:
        return False


SYSTEM_PYTHON = Path("/usr/bin/python3")


def externally_managed(python: Path) -> bool:
    """PEP 668: the interpreter's stdlib folder holds an EXTERNALLY-MANAGED marker."""
    if not python.exists():
        return False
    stdlib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('stdlib'))"],
                            capture_output=True, text=True).stdout.strip()
    return bool(stdlib) and (Path(stdlib) / "EXTERNALLY-MANAGED").exists()


def run_quickstart(cwd: Path, *args, timeout=600, python=sys.executable, script=SCRIPT):
    environ = dict(os.environ, PYTHON=str(python))
    for name in ("QUICKSTART_SMOKE", "QUICKSTART_OUTPUT", "QUICKSTART_DATA", "QUICKSTART_IDX_DIR", "QUICKSTART_NP",
                 "VIRTUAL_ENV", "CONDA_PREFIX", "PYTHONPATH"):
        environ.pop(name, None)
    return subprocess.run(["bash", str(script), *args], cwd=cwd, env=environ, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.skipif(not fashion_mnist_present(), reason="Fashion-MNIST IDX files not installed "
                    "(apt-get install dataset-fashion-mnist)")
@pytest.mark.slow  # CI time: run with --runslow
def test_smoke_run_prints_every_stage_and_writes_what_the_summary_names(tmp_path):
    args = ("--smoke", "--output", "out", "--data_dir", "fm", "--np", "1")
    first = run_quickstart(tmp_path, *args)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    out = first.stdout

    steps = [line for line in out.splitlines() if STEP_LINE.match(line)]
    assert [int(re.search(r"step:\[ *(\d+)/ *9\]", line).group(1)) for line in steps] == SMOKE_STEPS
    assert all(line.startswith("Epoch:[  1/   1]") for line in steps)
    log = (tmp_path / "out" / "train.log").read_text()
    assert [line for line in log.splitlines() if STEP_LINE.match(line)] == steps  # tee'd, not just printed

    accuracy_lines = ACCURACY_LINE.findall(out)
    assert len(accuracy_lines) == 1
    printed = ast.literal_eval(accuracy_lines[0])
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["images"] == 100 and metrics["top1"] == printed["Top_1_Accuracy"]
    assert "loss: " in out and "images: 100" in out

    predictions = PREDICTION_LINE.findall(out)
    folders = sorted(CLASS_NAMES)[:8]  # the first image of each of the first 8 class folders
    assert [Path(path).name.rsplit("_", 1)[0] for path, _ in predictions] == folders
    for _, ranked in predictions:
        names = re.findall(r"(\S+) \((\d\.\d{4})\)", ranked)
        assert len(names) == 3 and all(name in CLASS_NAMES for name, _ in names), ranked
    saved = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert [Path(record["path"]).name for record in saved] == [Path(path).name for path, _ in predictions]

    summary = dict(SUMMARY_LINE.findall(out))
    assert sorted(summary) == ["checkpoint", "curves", "metrics", "predictions", "train log"]
    for name, path in summary.items():
        assert (tmp_path / path).is_file(), (name, path)
    assert re.fullmatch(r"out/checkpoints/mobilenet_v3_small-1_9\.ckpt", summary["checkpoint"].removeprefix("./"))

    # A second run skips what is done: no install, no PNG writing, no training; eval and infer again.
    second = run_quickstart(tmp_path, *args)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "mobilenetv3 is installed, with mindspore matplotlib" in second.stdout
    assert "already complete, nothing written" in second.stdout
    assert "continuing from the last checkpoint in" in second.stdout
    assert "nothing to do: the checkpoint is at epoch 1 of 1" in second.stdout
    assert second.stdout.count("nothing to do") == 1
    assert not [line for line in second.stdout.splitlines() if STEP_LINE.match(line)]
    assert ACCURACY_LINE.findall(second.stdout) == accuracy_lines  # the same checkpoint, the same numbers
    rerun_log = (tmp_path / "out" / "train.log").read_text()  # appended to, after a separator
    assert rerun_log.startswith(log) and rerun_log[len(log):].startswith("===== ")
    assert "nothing to do" in rerun_log[len(log):]


def test_bad_option_and_missing_idx_files_are_one_clear_error(tmp_path):
    bad = run_quickstart(tmp_path, "--epochs", "3")
    assert bad.returncode == 2
    assert "unknown option '--epochs'" in bad.stderr

    (tmp_path / "empty").mkdir()
    missing = run_quickstart(tmp_path, "--smoke", "--idx_dir", "empty", "--np", "1")
    assert missing.returncode == 2
    assert "--idx_dir empty lacks" in missing.stderr and "train-images-idx3-ubyte" in missing.stderr
    assert not (tmp_path / "demo_output_smoke" / "train.log").exists()  # stopped before training


@pytest.mark.skipif(not fashion_mnist_present(), reason="Fashion-MNIST IDX files not installed "
                    "(apt-get install dataset-fashion-mnist)")
@pytest.mark.skipif(not externally_managed(SYSTEM_PYTHON),
                    reason=f"{SYSTEM_PYTHON} is missing or not externally managed (PEP 668): nothing to show")
@pytest.mark.slow  # CI time (about 3 minutes: a whole install): run with --runslow
def test_fresh_clone_with_an_externally_managed_python_installs_into_dot_venv_and_its_next_commands_run(tmp_path):
    clone = tmp_path / "clone"  # what is committed, as a new user gets it
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    args = ("--smoke", "--output", "out", "--data_dir", "fm")
    first = run_quickstart(clone, *args, python=SYSTEM_PYTHON, script=clone / "scripts" / "quickstart.sh")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert f"creating the project's Python environment: {SYSTEM_PYTHON} -m venv {clone}/.venv" in first.stdout
    assert (clone / ".venv" / "bin" / "python").exists() and len(ACCURACY_LINE.findall(first.stdout)) == 1
    untracked = subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True).stdout
    assert ".venv" not in untracked  # ignored by git

    # Every command printed under "Next:" runs as pasted, from the clone, in a shell without the venv active.
    block = first.stdout.split("\nNext", 1)[1]
    commands = [line.strip() for line in block.splitlines()[1:] if line.startswith("  ") and line.strip()
                and not line.strip().startswith("#")]
    assert [shlex.split(c)[0] for c in commands] == [".venv/bin/python"] * 3 + ["mpirun"], commands
    assert sum("--allow-run-as-root" in c for c in commands) == (os.getuid() == 0)
    for command in commands:
        done = subprocess.run(command, shell=True, cwd=clone, capture_output=True, text=True, timeout=600,
                              env={k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")})
        assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-2000:])
        if "eval.py" in command:
            assert ACCURACY_LINE.findall(done.stdout) == ACCURACY_LINE.findall(first.stdout)
    assert (clone / "out" / "export" / "mobilenet_v3_small.mindir").is_file()
    assert list((clone / "out" / "retrain").glob("mobilenet_v3_small-5_*.ckpt"))

    # A second run reuses the environment: nothing is created or installed again.
    second = run_quickstart(clone, *args, python=SYSTEM_PYTHON, script=clone / "scripts" / "quickstart.sh")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "creating the project's Python environment" not in second.stdout
    assert f"Python: {clone}/.venv/bin/python" in second.stdout and "installing:" not in second.stdout


def test_a_python_mindspore_has_no_wheel_for_is_refused_before_any_download(tmp_path):
    scripts = tmp_path / "repo" / "scripts"  # a checkout without .venv, so the interpreter given is the one judged
    scripts.mkdir(parents=True)
    for name in ("quickstart.sh", "python_env.sh"):
        (scripts / name).write_text((SCRIPT.parent / name).read_text())
    fake = tmp_path / "python3.9"  # answers as a CPython 3.9 outside any environment would
    fake.write_text('#!/bin/sh\ncase "$*" in *sys.exit*) exit 1;; *version_info*) echo 3.9;; esac\n')
    fake.chmod(0o755)
    done = run_quickstart(tmp_path, "--smoke", python=fake, script=scripts / "quickstart.sh")
    assert done.returncode == 2
    assert f"error: {fake} is Python 3.9; mindspore 2.10 has wheels for CPython 3.10, 3.11 or 3.12 only" in done.stderr
    assert "PYTHON=/path/to/python3.11" in done.stderr
    assert "installing" not in done.stdout and not (tmp_path / "repo" / ".venv").exists()


def test_smoke_run_is_as_the_readme_says_and_its_output_is_ignored_by_git():
    from mobilenetv3.data.sampler import epoch_steps
    script = SCRIPT.read_text()
    per_class = re.search(r"PREPARE_ARGS=\(--per_class_train (\d+) --per_class_val (\d+)\)", script)
    train, val = (int(count) * len(CLASS_NAMES) for count in per_class.groups())
    batch = int(re.search(r"^batch_size: (\d+)\b", (REPO / "configs" / "fashion_mnist_demo.yaml").read_text(), re.M)[1])
    steps = {ranks: epoch_steps(train, batch, num_shards=ranks) for ranks in (2, 1)}
    readme = " ".join((REPO / "README.md").read_text().split())  # as a reader sees it, whatever the line breaks
    assert f"{train} training and {val} test images" in readme
    assert f"one epoch ({steps[2]} steps with 2 processes, {steps[1]} with one)" in readme
    assert (train, val, steps) == (300, 100, {2: 4, 1: 9})
    output = re.search(r'OUTPUT="\$\{OUTPUT:-\./([^}]+)\}"; DATA="\$\{DATA:-\./data/fashion_mnist_smoke', script)[1]
    ignored = subprocess.run(["git", "check-ignore", "-q", f"{output}/checkpoints/run.yaml"], cwd=REPO,
                             capture_output=True)
    if ignored.returncode == 128:
        pytest.skip("not a git checkout")
    assert ignored.returncode == 0, f"{output}/ is not in .gitignore"
