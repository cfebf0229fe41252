"""Crash safety: signals, kill -9, disk full, unwritable directories, broken checkpoints."""
import errno
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import mindspore as ms
from mobilenetv3 import checkpoint
from mobilenetv3.errors import UserError
from mobilenetv3.trainer import train
from conftest import REPO

# Dropout stays at its default (0.2): its masks follow the global step, so resumed runs must match too.
FLAGS = ["--device_target", "CPU", "--num_classes", 3, "--batch_size", 4, "--epoch_size", 3, "--decay_epoch", 3,
         "--resize", 32, "--bn_momentum", 0.9, "--num_parallel_workers", 1, "--dataset_sink_mode", "false",
         "--max_lr", 0.02, "--run_distribute", "false"]


def start_training(image_folder, ckpt_dir, *extra, own_group=False):
    """scripts/train.py with FLAGS (a later flag wins); own_group: in a new process group, as a terminal
    runs it, so that killpg reaches the data workers too, as ^C does."""
    command = [sys.executable, "-u", str(REPO / "scripts" / "train.py"), "--data_url", str(image_folder),
               "--ckpt_save_dir", str(ckpt_dir), *map(str, FLAGS), *map(str, extra)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=own_group)


def wait_for_line(process, fragment, timeout=240):
    """Read output until a line contains `fragment`; returns everything read."""
    seen = []
    for line in process.stdout:
        seen.append(line)
        if fragment in line:
            return "".join(seen)
    raise AssertionError(f"{fragment!r} never printed:\n" + "".join(seen[-30:]))


def final_weights(ckpt_dir):
    path = checkpoint.latest(ckpt_dir)
    assert checkpoint.load(path)[1]["epoch"] == 3
    return {name: p.asnumpy() for name, p in checkpoint.load(path)[0].items()}


@pytest.fixture(scope="module")
def uninterrupted(image_folder, tmp_path_factory):
    ckpt_dir = tmp_path_factory.mktemp("straight")
    process = start_training(image_folder, ckpt_dir)
    output = process.communicate(timeout=600)[0]
    assert process.returncode == 0, output[-3000:]
    return final_weights(ckpt_dir)


def assert_same(a, b):
    assert set(a) == set(b)
    for name in a:
        assert np.array_equal(a[name], b[name]), name


def resume(image_folder, ckpt_dir):
    process = start_training(image_folder, ckpt_dir, "--resume", "auto")
    output = process.communicate(timeout=600)[0]
    assert process.returncode == 0, output[-3000:]
    return output


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_mid_epoch_saves_and_resumes_exactly(image_folder, tmp_path, uninterrupted, signum):
    """Stopped mid-epoch and resumed there, the run ends bit for bit where an uninterrupted one does,
    dropout masks included."""
    process = start_training(image_folder, tmp_path)
    wait_for_line(process, "Epoch:[  2/   3], step:[    3/   12]")
    process.send_signal(signum)
    output = process.communicate(timeout=300)[0]
    # MindSpore's runtime turns a SIGINT into a SIGTERM to the process; either is handled the same.
    received = [signal.SIGINT, signal.SIGTERM] if signum == signal.SIGINT else [signum]
    assert process.returncode in [128 + s for s in received], output[-2000:]
    names = "|".join(signal.Signals(s).name for s in received)
    match = [line for line in output.splitlines() if re.match(rf"error: ({names}): stopped at epoch 2, step", line)]
    assert match and match[0].endswith("Continue with --resume auto"), output[-2000:]
    saved = checkpoint.load(checkpoint.latest(tmp_path))[1]
    assert saved["epoch"] == 1 and 3 <= saved["epoch_step"] < 12
    output = resume(image_folder, tmp_path)
    assert f"resumed from" in output and f"at epoch 2, step {saved['epoch_step'] + 1}" in output
    assert f"Epoch:[  2/   3], step:[   {saved['epoch_step'] + 1:2d}/   12]" in output
    assert_same(final_weights(tmp_path), uninterrupted)


def group_members(pgid):
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and _pgid(int(p)) == pgid]


def _pgid(pid):
    try:
        return os.getpgid(pid)
    except OSError:
        return None


@pytest.mark.parametrize("signum, to_group", [(signal.SIGINT, True), (signal.SIGTERM, False)])
def test_signal_with_data_worker_processes_saves_and_resumes_exactly(image_folder, tmp_path, uninterrupted, signum,
                                                                    to_group):
    """With 2 data workers (worker processes), ^C in a terminal (SIGINT to the whole process group) and
    `kill` (SIGTERM to the main process) stop after the step, save and exit 128+signal, and the workers
    end with the run; resumed after the ^C, again with 2 workers, the run ends bit for bit where the
    1-worker uninterrupted one does."""
    process = start_training(image_folder, tmp_path, "--num_parallel_workers", 2, own_group=True)
    wait_for_line(process, "Epoch:[  2/  3], step:[    3/   12]")
    assert len(group_members(process.pid)) > 1  # the worker processes run
    if to_group:
        os.killpg(process.pid, signum)
    else:
        process.send_signal(signum)
    output = process.communicate(timeout=300)[0]
    # MindSpore answers a SIGINT during a graph run with a SIGTERM to the process (DefaultIntHandler).
    received = [signal.SIGINT, signal.SIGTERM] if signum == signal.SIGINT else [signum]
    assert process.returncode in [128 + s for s in received], output[-2000:]
    names = "|".join(signal.Signals(s).name for s in received)
    assert re.search(rf"^error: ({names}): stopped at epoch 2, step \d+/12; saved .*Continue with --resume auto$",
                     output, re.MULTILINE), output[-2000:]
    saved = checkpoint.load(checkpoint.latest(tmp_path))[1]
    assert saved["epoch"] == 1 and 3 <= saved["epoch_step"] < 12
    for _ in range(100):  # the worker processes end with the run
        if not group_members(process.pid):
            break
        time.sleep(0.1)
    assert not group_members(process.pid)
    if not to_group:
        return  # resuming is the same whatever stopped the run
    process = start_training(image_folder, tmp_path, "--num_parallel_workers", 2, "--resume", "auto")
    output = process.communicate(timeout=600)[0]
    assert process.returncode == 0, output[-3000:]
    assert_same(final_weights(tmp_path), uninterrupted)


def test_kill_9_loses_at_most_the_current_epoch(image_folder, tmp_path, uninterrupted):
    """Killed mid-epoch, `--resume auto` redoes that epoch from the last checkpoint and ends bit for bit
    where an uninterrupted run does, dropout masks included."""
    process = start_training(image_folder, tmp_path)
    wait_for_line(process, "Epoch:[  2/   3], step:[    5/   12]")
    process.kill()
    process.wait()
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["mobilenet_v3_small-1_12.ckpt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial file left visible
    resume(image_folder, tmp_path)
    assert_same(final_weights(tmp_path), uninterrupted)


def test_disk_full_while_saving_keeps_the_previous_checkpoint(small_config, tmp_path, monkeypatch):
    config = small_config(epoch_size=1)
    first = train(config)
    before = open(first, "rb").read()
    real_save = ms.save_checkpoint

    def fill_disk(entries, name, **kwargs):
        real_save(entries, name, **kwargs)
        with open(name, "r+b") as out:
            out.truncate(1000)  # half written, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(ms, "save_checkpoint", fill_disk)
    with pytest.raises(UserError, match=r"could not write checkpoint .*No space left on device.*Earlier "
                                        r"checkpoints are untouched"):
        train(small_config(epoch_size=2, resume="auto"))
    assert checkpoint.list_checkpoints(config.ckpt_save_dir) == [checkpoint.Path(first)]
    assert open(first, "rb").read() == before
    assert sorted(os.listdir(config.ckpt_save_dir)) == [os.path.basename(first)]


def test_unwritable_checkpoint_dir_fails_before_training(small_config, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(UserError, match=rf"ckpt_save_dir {blocker}/ckpt is not writable"):
        train(small_config(ckpt_save_dir=str(blocker / "ckpt")))


def test_truncated_checkpoint_cannot_be_resumed(small_config, tmp_path):
    config = small_config(epoch_size=1)
    path = train(config)
    with open(path, "r+b") as out:
        out.truncate(5000)
    with pytest.raises(UserError, match="is truncated, corrupt or not a MindSpore checkpoint"):
        train(small_config(epoch_size=2, resume="auto"))
