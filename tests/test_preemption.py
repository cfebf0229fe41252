"""A distributed run survives preemption: a signal to mpirun stops every rank at one step, rank 0 writes one
checkpoint, every rank exits 128 + the signal, and `--resume auto` ends with exactly the parameters of an
uninterrupted run (2 ranks, 2 data workers each)."""
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from mobilenetv3.checkpoints import files as checkpoint
from conftest import ONE_JOB_AT_A_TIME, REPO

MPIRUN = shutil.which("mpirun")
pytestmark = [pytest.mark.skipif(MPIRUN is None, reason="mpirun (OpenMPI) is not installed"), ONE_JOB_AT_A_TIME]
# On SIGTERM (or SIGINT) OpenMPI 4's mpirun sends the ranks SIGCONT, SIGTERM odls_base_sigkill_timeout seconds
# later (1 by default), and SIGKILL as long again after that; SIGUSR1 it forwards at once, and does nothing else.
GRACE = 3
# 48 images, 2 ranks x batch 2: 12 steps an epoch; 6 epochs, so that the run outlasts the grace before SIGTERM
# reaches the ranks (4 ended before it once).
FLAGS = ["--device_target", "CPU", "--num_classes", 3, "--batch_size", 2, "--epoch_size", 6, "--decay_epoch", 6,
         "--resize", 32, "--bn_momentum", 0.9, "--num_parallel_workers", 2, "--max_lr", 0.02, "--drop_path_rate", 0.2]
EPOCHS, STEPS = 6, 12


def start(image_folder, ckpt_dir, *extra, grace=GRACE):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMIX_", "MS_"))}
    command = [MPIRUN, "--allow-run-as-root", "--bind-to", "none", "--oversubscribe", "--mca", "odls_base_sigkill_timeout",
               str(grace), "-n", "2",
               sys.executable, "-u", str(REPO / "scripts" / "train.py"), "--data_url", str(image_folder),
               "--ckpt_save_dir", str(ckpt_dir), *map(str, FLAGS), *map(str, extra)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def finish(process, timeout=600):
    output = process.communicate(timeout=timeout)[0]
    return process.returncode, output


def weights(ckpt_dir):
    path = checkpoint.latest(ckpt_dir)
    params, meta = checkpoint.load(path)
    assert meta["epoch"] == EPOCHS and meta["epoch_step"] == 0
    return {name: p.asnumpy() for name, p in params.items()}


@pytest.fixture(scope="module")
def uninterrupted(image_folder, tmp_path_factory):
    ckpt_dir = tmp_path_factory.mktemp("straight")
    status, output = finish(start(image_folder, ckpt_dir))
    assert status == 0, output[-3000:]
    return weights(ckpt_dir)


def stop_and_resume(image_folder, ckpt_dir, signum, when, *extra, grace=GRACE):
    """Start 2 ranks, send `signum` to mpirun once `when` is printed, check the stop, then resume with
    --resume auto; returns the seconds from the signal to the stop's checkpoint (its file's time: mpirun holds
    the ranks' output back while it waits to kill them)."""
    process = start(image_folder, ckpt_dir, *extra, grace=grace)
    seen, signalled = [], None
    for line in process.stdout:
        seen.append(line)
        if signalled is None and when in line:
            process.send_signal(signum)
            signalled = time.time()
    status = process.wait(timeout=600)
    output = "".join(seen)
    assert signalled is not None, f"{when!r} never printed:\n{output[-3000:]}"
    name = signal.Signals(signum).name
    stops = re.findall(rf"^error: {name}: stopped at step (\d+) of epoch (\d) \({STEPS} steps per epoch\); saved (\S+)\. Continue with "
                       r"--resume auto$", output, re.MULTILINE)
    # Every rank exits 128 + signal; mpirun passes that on, but after a SIGTERM of its own exits 1.
    assert status == (1 if signum == signal.SIGTERM else 128 + signum) and len(stops) == 1, output[-3000:]
    step, epoch, saved = stops[0]
    seconds = os.stat(saved).st_mtime - signalled
    meta = checkpoint.load(saved)[1]
    assert (meta["epoch"], meta["epoch_step"]) == ((int(epoch) - 1, int(step)) if int(step) < STEPS else (int(epoch), 0))
    assert int(epoch) < EPOCHS, "the run ended before the signal arrived: make it longer"
    assert [p.name for p in checkpoint.list_checkpoints(ckpt_dir)][-1] == os.path.basename(saved)
    status, resumed = finish(start(image_folder, ckpt_dir, "--resume", "auto", *extra))
    assert status == 0 and "resumed from" in resumed, resumed[-3000:]
    return seconds


# SIGTERM is what SLURM and Kubernetes send; SIGUSR1 (SLURM's --signal) takes another path through mpirun, run
# with --runslow to keep the default suite short.
@pytest.mark.parametrize("signum", [signal.SIGTERM, pytest.param(signal.SIGUSR1, marks=pytest.mark.slow)])
def test_a_signal_to_mpirun_stops_both_ranks_at_one_step_and_resumes_exactly(image_folder, tmp_path, uninterrupted,
                                                                           signum):
    seconds = stop_and_resume(image_folder, tmp_path, signum, f"Epoch:[  1/   {EPOCHS}], step:[    2/   {STEPS}]")
    # SIGUSR1 reaches the ranks at once, SIGTERM GRACE seconds after mpirun got it; then they stop in under GRACE.
    assert seconds < (2 * GRACE if signum == signal.SIGTERM else GRACE), seconds
    final = weights(tmp_path)
    assert set(final) == set(uninterrupted)
    assert all(np.array_equal(final[name], uninterrupted[name]) for name in final)


@pytest.mark.slow  # CI time: run with --runslow
def test_a_stop_during_the_epoch_end_checkpoint_and_validation_resumes_exactly(image_folder, tmp_path,
                                                                               uninterrupted):
    """The signal arrives as epoch 1 ends, while rank 0 writes its checkpoint and both ranks validate."""
    # A stop waits for the validation under way: on a loaded CI machine (two test workers on 2 cores) that outlasted
    # a 3 s grace and SIGKILL came first, as a cluster's own kill would; 10 s of grace, as a job script should give.
    stop_and_resume(image_folder, tmp_path, signal.SIGTERM, "Epoch 1 finished", "--eval_interval", 1, grace=10)
    final = weights(tmp_path)
    assert all(np.array_equal(final[name], uninterrupted[name]) for name in final)
