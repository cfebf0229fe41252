"""Smoke test of a GPU node with this package, in a few minutes, before a long run.

  python scripts/gpu_smoke.py                       # on a GPU node (uses CUDA_VISIBLE_DEVICES' GPUs)
  python scripts/gpu_smoke.py --device_target CPU   # the same steps on the CPU (CI), GPU-only ones skipped

Runs the scripts as a user would, on a small synthetic image folder in --work, and prints one line per
step: PASS, FAIL or SKIP with the reason. Steps: check_gpu.py; MindSpore's run_check; training for 3
epochs at the device's defaults (GPU: O2 and dataset sink), checking the step lines, that epochs 2-3 take
a fraction of epoch 1 (no graph compiled again) and, via nvidia-smi, steady GPU memory; resume for a 4th
epoch; O0 with RMSProp, EMA and gradient clipping; eval; MINDIR export and inference from it against the
checkpoint's; with 2 GPUs and mpirun, an exact all-reduce of 2**60 + 1 over NCCL and 2-process training,
then 2-process eval equal to one process's. Exit status 0 when no step failed.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from mobilenetv3.checkpoints import files as checkpoint
from mobilenetv3.cluster import gpu_env
from mobilenetv3.training.step_log import LOG_FORMAT

REPO = Path(__file__).resolve().parents[1]
CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS, BATCH, LOG_INTERVAL = 3, 16, 4, 8, 2
STEPS = CLASSES * TRAIN_PER_CLASS // BATCH
STEP_PREFIX = LOG_FORMAT.split(", loss")[0]
EPOCH_LINE = re.compile(r"^Epoch (\d+) finished: (\d+) steps in ([\d.]+) s")


class Skip(Exception):
    pass


class Fail(Exception):
    pass


def write_images(root: Path):
    """root/{train,val}/class_<c>/<i>.jpg: one noisy colour per class, easy to learn."""
    rng = np.random.default_rng(0)
    for split, count in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
        for c in range(CLASSES):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            colour = np.roll([220, 30, 30], c)
            for i in range(count):
                pixels = np.clip(rng.normal(0, 30, (48, 48, 3)) + colour, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=95)


def run(args, on_line=None, timeout=900, mpirun=0):
    """Run scripts/<args[0]>.py (or `python -c` for args[0] == '-c') in a fresh process, under mpirun -n
    `mpirun` if given; returns (exit status, stdout lines, stderr). `on_line(line, pid)` sees each stdout line."""
    command = [sys.executable, "-c", args[1]] if args[0] == "-c" else \
        [sys.executable, str(REPO / "scripts" / f"{args[0]}.py"), *map(str, args[1:])]
    if mpirun:
        root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
        command = [shutil.which("mpirun"), *root, "-n", str(mpirun), *command]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    watchdog = threading.Timer(timeout, process.kill)
    watchdog.start()
    stderr = []
    reader = threading.Thread(target=lambda: stderr.append(process.stderr.read()))  # so a full pipe cannot block
    reader.start()
    lines = []
    for line in process.stdout:
        lines.append(line.rstrip("\n"))
        if on_line:
            on_line(lines[-1], process.pid)
    status = process.wait()
    watchdog.cancel()
    reader.join()
    return status, lines, stderr[0]


def ok(result, what):
    status, lines, stderr = result
    if status != 0:
        last = (stderr.strip().splitlines() or lines or [""])[-1]
        raise Fail(f"{what} exited with status {status}: {last}")
    return lines


def step_lines(lines):
    return [line for line in lines if line.startswith("Epoch:[")]


def expected_steps(epochs, steps, log_interval=LOG_INTERVAL, first_epoch=1):
    return [STEP_PREFIX.format(epoch=e, epochs=epochs, step=s, steps=steps) for e in range(first_epoch, epochs + 1)
            for s in range(1, steps + 1) if s % log_interval == 0 or s == steps]


def gpu_memory_mib(pid):
    """MiB of GPU memory nvidia-smi shows for `pid` (or its mpirun children), None if not listed."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    used = [int(m) for p, m in (row.split(", ") for row in out.strip().splitlines() if ", " in row) if int(p) == pid]
    return used[0] if used else None


class Smoke:
    def __init__(self, device, work: Path):
        self.device, self.work, self.failed = device, work, False
        self.data, self.ckpt = work / "data", work / "ckpt"
        self.gpus = gpu_env.visible_gpus() if device == "GPU" else 0
        self.done = set()

    def report(self, name, status, reason):
        print(f"{status:4} {name}: {reason}", flush=True)
        self.failed |= status == "FAIL"

    def run_step(self, name, needs, gpus, body):
        """Run `body(self)` unless a step it needs did not pass or it needs more GPUs; report the outcome."""
        missing = [n for n in needs if n not in self.done]
        if self.device == "GPU" and name != "check_gpu" and "check_gpu" not in self.done:
            return self.report(name, "SKIP", "check_gpu did not pass")
        if missing:
            return self.report(name, "SKIP", f"needs step {missing[0]}, which did not pass")
        if gpus and (self.device != "GPU" or (self.gpus or 0) < gpus):
            return self.report(name, "SKIP", f"needs {gpus} GPUs; device {self.device}"
                                             + (f" with {self.gpus or 0}" if self.device == "GPU" else ""))
        try:
            reason = body(self)
        except (Skip, Fail) as outcome:
            return self.report(name, "SKIP" if isinstance(outcome, Skip) else "FAIL", str(outcome))
        self.done.add(name)
        self.report(name, "PASS", reason)

    def train_args(self, *extra, ckpt=None):
        return ["train", "--device_target", self.device, "--data_url", self.data, "--num_classes", CLASSES,
                "--batch_size", BATCH, "--resize", 32, "--bn_momentum", 0.5, "--max_lr", 0.05, "--decay_epoch", 4,
                "--log_interval", LOG_INTERVAL, "--num_parallel_workers", 2, "--ckpt_save_dir", ckpt or self.ckpt,
                *extra]

    def last_checkpoint(self, directory=None):
        found = checkpoint.latest(directory or self.ckpt)
        if found is None:
            raise Fail(f"no checkpoint in {directory or self.ckpt}")
        return found


SMOKE_STEPS = []  # (name, names of the steps it needs, GPUs it needs, function), in order


def step(name, needs=(), gpus=0):
    def register(body):
        SMOKE_STEPS.append((name, needs, gpus, body))
        return body
    return register


@step("check_gpu")
def check_gpu(smoke):
    if smoke.device != "GPU":
        raise Skip(f"device {smoke.device}")
    return ok(run(["check_gpu"]), "check_gpu.py")[-1]


@step("run_check")
def run_check(smoke):
    lines = ok(run(["-c", f"import mindspore as ms; ms.set_device({smoke.device!r}); ms.run_check()"]), "run_check")
    if not any("successfully" in line for line in lines):
        raise Fail(f"run_check did not report success: {lines[-1:]}")
    return lines[-1]


@step("train")
def train(smoke):
    memory = {}

    def watch(line, pid):
        match = EPOCH_LINE.match(line)
        if match and smoke.device == "GPU":
            memory[int(match[1])] = gpu_memory_mib(pid)
    lines = ok(run(smoke.train_args("--epoch_size", 3, "--dataset_sink_mode", "true"), watch), "train.py")
    if step_lines(lines) and [line[:36] for line in step_lines(lines)] != expected_steps(3, STEPS):
        raise Fail(f"step lines {[line[:36] for line in step_lines(lines)]}, expected {expected_steps(3, STEPS)}")
    seconds = [float(m[3]) for m in map(EPOCH_LINE.match, lines) if m]
    if len(seconds) != 3:
        raise Fail(f"{len(seconds)} epoch lines, expected 3")
    if min(seconds[1:]) > 0.5 * seconds[0]:
        raise Fail(f"epochs took {seconds} s: epochs 2-3 should take a fraction of epoch 1 (which compiles the "
                   "graph); is the graph compiled again every epoch?")
    reason = f"{len(step_lines(lines))} step lines as expected; epochs {', '.join(f'{s:.1f}' for s in seconds)} s"
    if smoke.device == "GPU":
        if None in memory.values() or len(memory) != 3:
            return reason + "; GPU memory not checked (nvidia-smi does not list the process)"
        if memory[3] > memory[2] * 1.05 + 64:
            raise Fail(f"GPU memory grew after epochs 1-3: {memory} MiB")
        reason += f"; GPU memory after epochs 1-3: {memory[1]}, {memory[2]}, {memory[3]} MiB"
    return reason


@step("resume", needs=["train"])
def resume(smoke):
    lines = ok(run(smoke.train_args("--epoch_size", 4, "--dataset_sink_mode", "true", "--resume", "auto")),
               "train.py --resume auto")
    if not any(line.startswith("resumed from ") and line.endswith("at epoch 4, step 1") for line in lines):
        raise Fail("no 'resumed from ... at epoch 4, step 1' line")
    if [line[:36] for line in step_lines(lines)] != expected_steps(4, STEPS, first_epoch=4):
        raise Fail(f"step lines {[line[:36] for line in step_lines(lines)]} are not those of epoch 4")
    return f"continued at epoch 4 to {smoke.last_checkpoint().name}"


@step("O0 RMSProp EMA clip")
def o0_extras(smoke):
    directory = smoke.work / "ckpt_o0"
    ok(run(smoke.train_args("--epoch_size", 1, "--amp_level", "O0", "--optimizer", "rmsprop", "--ema_decay", 0.9,
                            "--grad_clip", 1.0, ckpt=directory)), "train.py at O0")
    params = checkpoint.load(smoke.last_checkpoint(directory))[0]
    if not any(name.startswith("ema.") for name in params) or "opt.mean_square.classifier.3.weight" not in params:
        raise Fail("the checkpoint lacks EMA weights or RMSProp state")
    bad = [name for name, value in params.items() if not np.isfinite(value.asnumpy()).all()]
    if bad:
        raise Fail(f"non-finite values in {bad[:3]}")
    return "trained one epoch; checkpoint holds EMA weights and RMSProp state, all finite"


def evaluate(smoke, mpirun=0):
    lines = ok(run(["eval", "--device_target", smoke.device, "--data_url", smoke.data, "--resize", 32,
                    "--num_classes", CLASSES,
                    "--pretrained", smoke.last_checkpoint(), "--batch_size", 4], mpirun=mpirun), "eval.py")
    metrics = next((line for line in lines if line.startswith("{'Top_1_Accuracy'")), None)
    if metrics is None:
        raise Fail("eval.py printed no metrics")
    return metrics


@step("eval", needs=["resume"])
def eval_step(smoke):
    smoke.metrics = evaluate(smoke)
    return smoke.metrics


@step("export MINDIR + infer", needs=["resume"])
def export_and_infer(smoke):
    ckpt = smoke.last_checkpoint()
    ok(run(["export", "--device_target", smoke.device, "--pretrained", ckpt, "--file_format", "MINDIR",
            "--num_classes", CLASSES,
            "--resize", 32, "--file_name", smoke.work / "export" / "smoke"]), "export.py")
    predictions = {}
    for name, model in (("mindir", smoke.work / "export" / "smoke.mindir"), ("ckpt", ckpt)):
        output = smoke.work / f"predictions_{name}.json"
        ok(run(["infer", "--device_target", smoke.device, "--data_url", smoke.data / "val", "--resize", 32,
                "--num_classes", CLASSES,
                "--pretrained", model, "--output", output]), f"infer.py from the {name}")
        predictions[name] = {p["path"]: p for p in json.loads(output.read_text())}
    if predictions["mindir"].keys() != predictions["ckpt"].keys():
        raise Fail("the MINDIR and the checkpoint predicted different sets of images")
    worst = max(abs(a - b) for path, p in predictions["ckpt"].items()
                for a, b in zip(p["probs"], predictions["mindir"][path]["probs"]))
    same_top1 = all(p["indices"][0] == predictions["mindir"][path]["indices"][0]
                    for path, p in predictions["ckpt"].items())
    if not same_top1 or worst > 5e-3:
        raise Fail(f"MINDIR and checkpoint predictions differ (same top-1: {same_top1}, largest probability "
                   f"difference {worst:.2g})")
    return f"{len(predictions['ckpt'])} images, same top-1, probabilities within {worst:.1g}"


ALL_REDUCE = """
import numpy as np
from mobilenetv3.cli import apply_process_defaults
apply_process_defaults()
from mobilenetv3.cluster import device
from mobilenetv3.cluster.distributed import all_reduce_sum, init_distributed
device.setup("GPU")
info = init_distributed("GPU", True)
print("sum", info.rank, info.size, int(all_reduce_sum(np.array([2**60 + 1]))[0]))
"""


@step("all-reduce over NCCL", gpus=2)
def all_reduce(smoke):
    if shutil.which("mpirun") is None:
        raise Skip("no mpirun on PATH")
    lines = ok(run(["-c", ALL_REDUCE], mpirun=2), "mpirun -n 2 all_reduce_sum")
    sums = sorted(line for line in lines if line.startswith("sum "))
    expected = [f"sum {rank} 2 {2 * (2**60 + 1)}" for rank in range(2)]
    if sums != expected:
        raise Fail(f"got {sums}, expected {expected}")
    return f"2 x (2**60 + 1) = {2 * (2**60 + 1)} exactly on both ranks"


@step("mpirun -n 2 train + eval", needs=["eval"], gpus=2)
def two_processes(smoke):
    if shutil.which("mpirun") is None:
        raise Skip("no mpirun on PATH")
    single = smoke.metrics
    lines = ok(run(smoke.train_args("--epoch_size", 1, ckpt=smoke.work / "ckpt_2"), mpirun=2), "mpirun -n 2 train")
    if [line[:36] for line in step_lines(lines)] != expected_steps(1, STEPS // 2):
        raise Fail(f"step lines {[line[:36] for line in step_lines(lines)]}, expected rank 0's of {STEPS // 2} steps")
    both = evaluate(smoke, mpirun=2)
    if both != single:
        raise Fail(f"2-process eval printed {both}, one process {single}")
    return f"trained; 2-process eval equals one process's: {both}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device_target", default="GPU", choices=["GPU", "CPU"])
    parser.add_argument("--work", type=Path, default=Path("gpu_smoke"), help="scratch folder (emptied first)")
    args = parser.parse_args(argv)
    shutil.rmtree(args.work, ignore_errors=True)
    smoke = Smoke(args.device_target, args.work)
    write_images(smoke.data)
    start = time.monotonic()
    for name, needs, gpus, body in SMOKE_STEPS:
        smoke.run_step(name, needs, gpus, body)
    print(f"{'FAILED' if smoke.failed else 'passed'} in {time.monotonic() - start:.0f} s")
    return 1 if smoke.failed else 0


if __name__ == "__main__":
    sys.exit(main())
