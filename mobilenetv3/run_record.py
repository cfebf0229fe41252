"""What a training run leaves besides checkpoints, in its ckpt_save_dir (written by rank 0):

    run.yaml        the resolved config, loadable again with --config; how, where and with what it ran
                    (command line, world size, versions, git commit, device, CPU) in comments above it
    metrics.jsonl   one JSON object per finished epoch: loss, learning rate, speed, memory, validation
    train.log       what the run printed (the step log and the epoch lines), appended across resumes
"""
import contextlib
import dataclasses
import json
import platform
import resource
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from .cpu_info import cpu_model

RUN_FILE, METRICS_FILE, LOG_FILE = "run.yaml", "metrics.jsonl", "train.log"


def git_commit(directory: Path) -> str:
    """The commit of the checkout `directory` is in (with "+ uncommitted changes"), or "" outside one."""
    def git(*args):
        return subprocess.run(["git", "-C", str(directory), *args], capture_output=True, text=True, timeout=10)
    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return ""
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
        return head.stdout.strip() + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return ""


def write_run_file(config, world_size: int, directory) -> Path:
    import mindspore
    package_dir = Path(__file__).parent
    facts = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "world size": world_size,
        "python": platform.python_version(),
        "mindspore": mindspore.__version__,
        "mobilenetv3": str(package_dir),
        "git commit": git_commit(package_dir) or "(not a git checkout)",
        "device": config.device_target,
        "cpu": cpu_model(),
    }
    header = "".join(f"# {name}: {value}\n" for name, value in facts.items())
    path = Path(directory) / RUN_FILE
    path.write_text("# The resolved config of this run: python scripts/train.py --config " + RUN_FILE + " repeats it.\n"
                    + header + yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))
    return path


class MetricsFile:
    """ckpt_save_dir/metrics.jsonl, one line per finished epoch. A run resumed from epoch e first drops the
    lines of epochs after e (they are run again), so no epoch appears twice."""

    def __init__(self, directory, resumed_epoch: int):
        self.path = Path(directory) / METRICS_FILE
        kept = [line for line in read_metrics(self.path) if line["epoch"] <= resumed_epoch]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(json.dumps(line) + "\n" for line in kept))
        tmp.replace(self.path)

    def append(self, record: dict):
        with self.path.open("a") as out:
            out.write(json.dumps(record) + "\n")


def read_metrics(path) -> list:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def peak_rss_mb() -> float:
    """High-water resident set size of this process (VmHWM; ru_maxrss where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _Tee:
    def __init__(self, stream, log):
        self.stream, self.log = stream, log

    def write(self, text):
        self.log.write(text)
        return self.stream.write(text)

    def flush(self):
        self.log.flush()
        self.stream.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)


@contextlib.contextmanager
def tee_stdout(directory):
    """Everything printed to stdout also goes to ckpt_save_dir/train.log (appended)."""
    with (Path(directory) / LOG_FILE).open("a") as log:
        previous, sys.stdout = sys.stdout, _Tee(sys.stdout, log)
        try:
            yield
        finally:
            sys.stdout = previous
