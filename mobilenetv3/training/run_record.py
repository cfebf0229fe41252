"""What a training run leaves besides checkpoints, in its ckpt_save_dir (written by rank 0):

    run.yaml        the resolved config, loadable again with --config; how, where and with what it ran
                    (command line, world size, versions, git commit, device, CPU) in comments above it
    metrics.jsonl   one JSON object per finished epoch: loss, learning rate, speed, memory, validation
    train.log       what the run logged (the step log, the epoch lines, notes and warnings) and the error that
                    ended it, appended across resumes and reruns, each start after a separator line
"""
import contextlib
import json
import logging
import platform
import resource
import shlex
import subprocess
import sys
import time
import traceback
from pathlib import Path

import yaml

from .. import log
from ..atomic import written_whole
from ..errors import UserError
from ..native.cpu_info import cpu_model

logger = logging.getLogger(__name__)

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


def write_run_file(config_values: dict, world_size: int, directory) -> Path:
    """run.yaml in `directory`: `config_values` (every key of the run's config), and how it ran."""
    import mindspore
    package_dir = Path(__file__).resolve().parents[1]
    facts = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "world size": world_size,
        "python": platform.python_version(),
        "mindspore": mindspore.__version__,
        "mobilenetv3": str(package_dir),
        "git commit": git_commit(package_dir) or "(not a git checkout)",
        "device": config_values["device_target"],
        "cpu": cpu_model(),
    }
    header = "".join(f"# {name}: {value}\n" for name, value in facts.items())
    path = Path(directory) / RUN_FILE
    path.write_text("# The resolved config of this run: python scripts/train.py --config " + RUN_FILE + " repeats it.\n"
                    + header + yaml.safe_dump(config_values, sort_keys=False))
    return path


class MetricsFile:
    """ckpt_save_dir/metrics.jsonl, one line per finished epoch. A run resumed from epoch e first drops the
    lines of epochs after e (they are run again), so no epoch appears twice, and a last line cut short (see
    read_metrics), with a warning."""

    def __init__(self, directory, resumed_epoch: int):
        self.path = Path(directory) / METRICS_FILE
        kept = [line for line in read_metrics(self.path, drop_cut_end=True)
                if line["epoch"] <= resumed_epoch] if resumed_epoch else []
        with written_whole(self.path) as partial:
            partial.write_text("".join(json.dumps(line) + "\n" for line in kept))

    def append(self, record: dict):
        with self.path.open("a") as out:
            out.write(json.dumps(record) + "\n")


def read_metrics(path, drop_cut_end: bool = False) -> list:
    """The records of the metrics.jsonl at `path` ([] where there is none). A line that is not a JSON record of
    an epoch is an error naming the file and line; with `drop_cut_end`, a last line cut short (no newline:
    the disk filled, or the process was killed while writing it) is dropped with a warning instead."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_bytes().split(b"\n")  # the last item: what follows the last newline, b"" if nothing
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
            if isinstance(record, dict) and isinstance(record.get("epoch"), int):
                records.append(record)
                continue
        except ValueError:  # UnicodeDecodeError included
            pass
        if drop_cut_end and number == len(lines):
            logger.warning(f"{path}: its last line (line {number}) was cut short, as a full disk or a kill while "
                           "writing leaves it; dropped it, the file is rewritten from the resumed epoch on")
            break
        raise UserError(f"{path}: line {number} is not an epoch's JSON record; fix or delete that line "
                        "(or the file: it is the run's record, not needed to resume)")
    return records


def epoch_record(summary: dict, epoch: int, world_size: int, wall_seconds: float, validation=None) -> dict:
    """One line of metrics.jsonl; wall_seconds counts from the start of this process's training loop."""
    record = dict(epoch=epoch, **summary, images_per_second_total=round(summary["images_per_second"] * world_size, 2),
                  wall_seconds=round(wall_seconds, 3), peak_rss_mb=round(peak_rss_mb(), 1))
    if validation is not None:
        record.update(val_top1=validation.top1, val_top5=validation.top5, val_loss=validation.loss)
    return record


def peak_rss_mb() -> float:
    """High-water resident set size of this process (VmHWM; ru_maxrss where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextlib.contextmanager
def log_file(directory, said_before=()):
    """While open, what the package logs (INFO and above) is also appended to ckpt_save_dir/train.log, as
    the scripts print it, and so is the error that ends the run (as cli.run_cli prints it, or its
    traceback); the package's logger passes INFO meanwhile even where nobody configured logging. A file
    that holds earlier runs gets a separator line first; then `said_before`, lines the console had before
    the file opened."""
    path = Path(directory) / LOG_FILE
    earlier = path.is_file() and path.stat().st_size > 0
    handler = log.to_file(path)
    if earlier:
        handler.emit(_record(logging.INFO, f"===== {time.strftime('%Y-%m-%d %H:%M:%S %Z')}: another start, "
                                           f"{shlex.join(sys.argv)} ====="))
    for line in said_before:
        handler.emit(_record(logging.INFO, line))
    package = logging.getLogger(log.PACKAGE)
    level = package.level
    if not package.isEnabledFor(logging.INFO):
        package.setLevel(logging.INFO)
    package.addHandler(handler)
    try:
        yield
    except UserError as err:
        handler.emit(_record(logging.ERROR, str(err)))
        raise
    except KeyboardInterrupt:
        handler.emit(_record(logging.ERROR, "interrupted (Ctrl-C)"))
        raise
    except Exception:
        handler.emit(_record(logging.ERROR, traceback.format_exc().rstrip()))
        raise
    finally:
        package.removeHandler(handler)
        package.setLevel(level)
        handler.close()


def _record(level: int, message: str) -> logging.LogRecord:
    return logging.makeLogRecord(dict(name=__name__, levelno=level, levelname=logging.getLevelName(level),
                                      msg=message))
