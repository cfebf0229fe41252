"""Crash safety: signals, kill -9, disk full, unwritable directories, broken checkpoints."""
import errno
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import mindspore as ms
from mobilenetv3.checkpoints import files as checkpoint
from mobilenetv3.checkpoints.meta import read_meta
from mobilenetv3.training import run_folder
from mobilenetv3.errors import UserError
from mobilenetv3.training.trainer import train
from conftest import REPO, run_script

# Dropout stays at its default (0.2) and stochastic depth is on: their masks follow the global step, so
# resumed runs must match too.
FLAGS = ["--device_target", "CPU", "--num_classes", 3, "--batch_size", 4, "--epoch_size", 3, "--decay_epoch", 3,
         "--resize", 32, "--bn_momentum", 0.9, "--num_parallel_workers", 1, "--dataset_sink_mode", "false",
         "--max_lr", 0.02, "--run_distribute", "false", "--drop_path_rate", 0.2]


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


@pytest.mark.parametrize("signum", [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)])
def test_signal_mid_epoch_saves_and_resumes_exactly(image_folder, tmp_path, uninterrupted, signum):
    """Stopped mid-epoch and resumed there, the run ends bit for bit where an uninterrupted one does,
    dropout masks included."""
    process = start_training(image_folder, tmp_path)
    wait_for_line(process, "Epoch:[  2/   3], step:[    3/   12]")
    process.send_signal(signum)
    output = process.communicate(timeout=300)[0]
    # MindSpore's runtime turns a SIGINT during a graph run into a SIGTERM; native/sigint_relay turns it back.
    assert process.returncode == 128 + signum, output[-2000:]
    name = signal.Signals(signum).name
    match = [line for line in output.splitlines()
             if re.match(rf"error: {name}: stopped at step \d+ of epoch 2 \(12 steps per epoch\)", line)]
    assert match and match[0].endswith("Continue with --resume auto"), output[-2000:]
    assert "Epoch 2 finished" not in output  # the stopped epoch did not finish
    saved = checkpoint.load(checkpoint.latest(tmp_path))[1]
    assert saved["epoch"] == 1 and 3 <= saved["epoch_step"] < 12
    output = resume(image_folder, tmp_path)
    assert "resumed from" in output and f"at epoch 2, step {saved['epoch_step'] + 1}" in output
    assert f"Epoch:[  2/   3], step:[   {saved['epoch_step'] + 1:2d}/   12]" in output
    assert_same(final_weights(tmp_path), uninterrupted)


def group_members(pgid):
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and _pgid(int(p)) == pgid]


def _pgid(pid):
    try:
        return os.getpgid(pid)
    except OSError:
        return None


@pytest.mark.parametrize("signum, to_group", [(signal.SIGINT, True), pytest.param(signal.SIGTERM, False, marks=pytest.mark.slow)])
def test_signal_with_data_worker_processes_saves_and_resumes_exactly(image_folder, tmp_path, uninterrupted, signum,
                                                                    to_group):
    """With 2 data workers (worker processes), ^C in a terminal (SIGINT to the whole process group) and
    `kill` (SIGTERM to the main process) stop after the step, save and exit 128+signal, and the workers
    end with the run; resumed after the ^C, again with 2 workers, the run ends bit for bit where the
    1-worker uninterrupted one does."""
    process = start_training(image_folder, tmp_path, "--num_parallel_workers", 2, own_group=True)
    wait_for_line(process, "Epoch:[  2/   3], step:[    3/   12]")
    assert len(group_members(process.pid)) > 1  # the worker processes run
    if to_group:
        os.killpg(process.pid, signum)
    else:
        process.send_signal(signum)
    output = process.communicate(timeout=300)[0]
    assert process.returncode == 128 + signum, output[-2000:]
    assert re.search(rf"^error: {signal.Signals(signum).name}: stopped at step \d+ of epoch 2 \(12 steps per epoch\); "
                     r"saved .*Continue with --resume auto$",
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
    # No partial file left visible; the lock file stays, but the OS released its lock with the process.
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [run_folder.LOCK_NAME]
    resume(image_folder, tmp_path)
    assert_same(final_weights(tmp_path), uninterrupted)
    assert not (tmp_path / run_folder.LOCK_NAME).exists()


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
    assert checkpoint.list_checkpoints(config.ckpt_save_dir) == [Path(first)]
    assert open(first, "rb").read() == before
    assert sorted(os.listdir(config.ckpt_save_dir)) == sorted([os.path.basename(first), *RUN_RECORD])


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


def test_two_runs_at_once_into_one_folder(image_folder, tmp_path):
    """Started together, one run gets the folder and the other is refused at once, naming the holder."""
    runs = [start_training(image_folder, tmp_path, "--epoch_size", "2", "--decay_epoch", "2") for _ in range(2)]
    outputs = [run.communicate(timeout=600)[0] for run in runs]
    assert sorted(run.returncode for run in runs) == [0, 2], [out[-2000:] for out in outputs]
    winner, loser = (0, 1) if runs[0].returncode == 0 else (1, 0)
    assert f"error: ckpt_save_dir {tmp_path} is in use by another training run (pid {runs[winner].pid}); wait " \
           "for it to end or pass another --ckpt_save_dir" in outputs[loser].splitlines()
    assert "Epoch:[" not in outputs[loser]
    assert f"last checkpoint: {tmp_path / 'mobilenet_v3_small-2_24.ckpt'}" in outputs[winner]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl", "mobilenet_v3_small-1_12.ckpt",
                                                          "mobilenet_v3_small-2_24.ckpt", "run.yaml", "train.log"]
    assert "# command: " in (tmp_path / "run.yaml").read_text()  # the winner's record, not a mix


RUN_RECORD = ["metrics.jsonl", "run.yaml", "train.log"]  # written beside the checkpoints (run_record)


def tiny_checkpoint(path, **meta):
    checkpoint.save(path, {"w": ms.Tensor(np.arange(3, dtype=np.float32))}, meta)
    return path.read_bytes()


def test_fresh_run_refuses_a_folder_holding_another_runs_checkpoints(small_config, tmp_path):
    other = tmp_path / "ckpt" / "mobilenet_v3_small-3_18.ckpt"
    before = tiny_checkpoint(other, run="other")
    with pytest.raises(UserError, match=re.escape(
            f"ckpt_save_dir {other.parent} already holds checkpoints of another run (mobilenet_v3_small-3_18.ckpt): "
            "continue that run with --resume auto, or pass another --ckpt_save_dir")):
        train(small_config(keep_checkpoint_max=1))
    assert other.read_bytes() == before and os.listdir(other.parent) == [other.name]  # no file of the refused run


def test_folder_lock_refuses_a_second_holder_and_survives_a_stale_file(tmp_path):
    (tmp_path / run_folder.LOCK_NAME).write_text("999999999\n")  # left by a killed run: not locked
    with run_folder.RunFolder(tmp_path, "m", keep=1, fresh=True):
        assert (tmp_path / run_folder.LOCK_NAME).read_text() == f"{os.getpid()}\n"
        with pytest.raises(UserError, match=re.escape(f"ckpt_save_dir {tmp_path} is in use by another training run "
                                                      f"(pid {os.getpid()})")):
            run_folder.RunFolder(tmp_path, "m", keep=1, fresh=False).__enter__()
    assert os.listdir(tmp_path) == []
    with run_folder.RunFolder(tmp_path, "m", keep=1, fresh=True):  # free again
        (tmp_path / run_folder.LOCK_NAME).unlink()  # deleted by hand meanwhile: the run still ends cleanly
    assert os.listdir(tmp_path) == []


def test_rotation_deletes_only_this_runs_checkpoints(tmp_path):
    """A resumed run rotates its own earlier checkpoints, never another run's, and never overwrites one."""
    other = tiny_checkpoint(tmp_path / "m-3_18.ckpt", run="other")
    for name in ("m-1_6.ckpt", "m-2_12.ckpt"):
        tiny_checkpoint(tmp_path / name, run="mine")
    tensors = {"w": ms.Tensor(np.ones(3, np.float32))}
    with run_folder.RunFolder(tmp_path, "m", keep=1, fresh=False) as folder:
        with pytest.raises(UserError, match=f"not overwriting {tmp_path / 'm-3_18.ckpt'}: another run wrote it"):
            folder.continue_run({"run": "mine"}, ["m-3_18.ckpt", "m-4_24.ckpt"])  # before training
        folder.continue_run({"run": "mine"}, ["m-4_24.ckpt"])
        with pytest.raises(UserError, match=f"not overwriting {tmp_path / 'm-3_18.ckpt'}: another run wrote it"):
            folder.save("m-3_18.ckpt", tensors, {})
        assert folder.save("m-4_24.ckpt", tensors, {}) == tmp_path / "m-4_24.ckpt"
    assert sorted(os.listdir(tmp_path)) == ["m-3_18.ckpt", "m-4_24.ckpt"]
    assert (tmp_path / "m-3_18.ckpt").read_bytes() == other
    assert read_meta(tmp_path / "m-4_24.ckpt") == {"run": "mine"}
    with run_folder.RunFolder(tmp_path / "new", "m", keep=2, fresh=True) as folder:
        for epoch in range(1, 4):
            folder.save(f"m-{epoch}_{6 * epoch}.ckpt", tensors, {})
        assert read_meta(tmp_path / "new" / "m-3_18.ckpt") == {"run": folder.run_id}
    assert sorted(os.listdir(tmp_path / "new")) == ["m-2_12.ckpt", "m-3_18.ckpt"]


def test_temporary_checkpoint_name_is_unique_per_process(tmp_path, monkeypatch):
    written = []
    real_save = ms.save_checkpoint
    monkeypatch.setattr(ms, "save_checkpoint", lambda entries, name, **kw: written.append(name) or
                        real_save(entries, name, **kw))
    tiny_checkpoint(tmp_path / "m-1_6.ckpt")
    assert written == [str(tmp_path / f".m-1_6.{os.getpid()}.partial.ckpt")]


def test_failed_write_leaves_no_partial_file_of_mindspore_either(tmp_path):
    """A write cut short for lack of room removes MindSpore's own ".partial.tmp" as well as ours. A file-size
    limit stands in for the full disk: the writer gets the same failed write() (EFBIG instead of ENOSPC)."""
    tensors = {"w": ms.Tensor(np.zeros(1 << 18, np.float32))}  # 1 MiB, twice the limit
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 19, hard))
    try:
        with pytest.raises(UserError, match=r"could not write checkpoint .*File too large.* Earlier checkpoints"):
            checkpoint.save(tmp_path / "m-1_6.ckpt", tensors, {})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert os.listdir(tmp_path) == []


def test_resumed_run_refuses_before_training_to_overwrite_another_runs_checkpoint(small_config, tmp_path, capsys):
    source = train(small_config(epoch_size=1, ckpt_save_dir=str(tmp_path / "a")))
    other = tmp_path / "b" / "mobilenet_v3_small-2_12.ckpt"
    before = tiny_checkpoint(other, run="other")
    capsys.readouterr()
    with pytest.raises(UserError, match=re.escape(f"not overwriting {other}: another run wrote it")):
        train(small_config(epoch_size=2, resume=str(source), ckpt_save_dir=str(other.parent)))
    assert "Epoch:[" not in capsys.readouterr().out
    assert other.read_bytes() == before
    # No checkpoint, no run.yaml or metrics.jsonl of the refused run: only its output appended to the log.
    assert sorted(os.listdir(other.parent)) == [other.name, "train.log"]


RELAY_PROBE = """
import os, signal, subprocess, sys, time
from mobilenetv3.native import sigint_relay
got = []
signal.signal(signal.SIGTERM, lambda signum, frame: got.append("SIGTERM"))
assert sigint_relay.install()
subprocess.run(["kill", "-TERM", str(os.getpid())], check=True)  # another process's SIGTERM stays one
time.sleep(0.2)
try:
    os.kill(os.getpid(), signal.SIGTERM)  # as MindSpore relays a Ctrl-C during a graph run
    time.sleep(1)
except KeyboardInterrupt:
    got.append("SIGINT")
print(got)
"""


def test_a_sigterm_the_process_sends_itself_is_the_ctrl_c_it_was_and_another_stays_sigterm():
    result = subprocess.run([sys.executable, "-c", RELAY_PROBE], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.stdout.strip() == "['SIGTERM', 'SIGINT']", result.stderr


@pytest.mark.parametrize("script, builds", [("plot", False), ("infer", True)])
def test_only_scripts_that_run_graphs_build_and_install_the_ctrl_c_relay(script, builds, tmp_path):
    """plot.py never runs a MindSpore graph: its --help builds no C++ library and warns of nothing, even
    with no compiler; infer.py's says why Ctrl-C will read as SIGTERM."""
    result = run_script(script, "--help", env=dict(XDG_CACHE_HOME=str(tmp_path), CXX="false"))
    assert result.returncode == 0, result.stderr
    assert ("Ctrl-C during a MindSpore graph run will read as SIGTERM: compiling it failed" in result.stderr) == builds
    assert builds or result.stderr == ""


def test_ctrl_c_during_infer_exits_130_at_once_without_a_traceback_or_an_output_file(tmp_path):
    """The predictions are written only when all are made, and then whole (written_whole)."""
    from mobilenetv3 import create_model
    from conftest import write_image_folder
    folder = write_image_folder(tmp_path / "images", {"photos": 400}, size=(32, 32))
    weights = tmp_path / "small.ckpt"
    checkpoint.save(weights, {p.name: p for p in create_model("mobilenet_v3_small", 3).get_parameters()},
                    dict(model="mobilenet_v3_small", num_classes=3, width=1.0))
    output = tmp_path / "predictions.csv"
    command = [sys.executable, str(REPO / "scripts" / "infer.py"), "--device_target", "CPU", "--pretrained",
               str(weights), "--data_url", str(folder), "--resize", "32", "--batch_size", "1", "--output", str(output)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stderr:
        if line.startswith("preprocessing"):  # the model is loaded; predicting 1,200 images one by one
            break
    time.sleep(1.0)
    started = time.monotonic()
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert time.monotonic() - started < 10
    assert stderr.strip().splitlines()[-1] == "interrupted (Ctrl-C)" and "Traceback" not in stderr
    assert "images predicted" not in stdout
    assert list(tmp_path.glob("*predictions*")) == []


def test_a_result_file_is_written_whole_or_not_at_all(tmp_path):
    from mobilenetv3.atomic import written_whole
    path = tmp_path / "metrics.json"
    path.write_text("older")
    with pytest.raises(KeyboardInterrupt):
        with written_whole(path) as partial:
            partial.write_text("half")
            raise KeyboardInterrupt
    assert path.read_text() == "older" and sorted(tmp_path.iterdir()) == [path]
    with written_whole(path) as partial:
        partial.write_text("new")
    assert path.read_text() == "new" and sorted(tmp_path.iterdir()) == [path]
