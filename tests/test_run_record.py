"""What a run leaves besides checkpoints: metrics.jsonl (across resumes), train.log, run.yaml, curves."""
import ast
import json
import os
import re
import stat
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from conftest import STEP_LINE, run_script
from mobilenetv3.checkpoints import files as checkpoint
from mobilenetv3.config import build_config
from mobilenetv3.errors import UserError
from mobilenetv3.training import trainer
from mobilenetv3.training.run_record import MetricsFile, read_metrics
from mobilenetv3.training.trainer import train

RECORD_KEYS = {"epoch", "global_step", "loss", "lr", "steps", "seconds", "images_per_second",
               "images_per_second_total", "wall_seconds", "peak_rss_mb"}


@pytest.mark.slow  # CI time: run with --runslow
def test_metrics_log_and_run_file_of_a_run_resumed_twice(small_config, capsys):
    directory = small_config().ckpt_save_dir
    train(small_config(epoch_size=1, eval_interval=1))
    first = capsys.readouterr().out
    train(small_config(epoch_size=3, eval_interval=1, resume="auto"))
    second = capsys.readouterr().out
    lines = read_metrics(f"{directory}/metrics.jsonl")
    assert [line["epoch"] for line in lines] == [1, 2, 3]  # appended, no epoch twice
    assert all(set(line) - {"best_checkpoint"} == RECORD_KEYS | {"val_top1", "val_top5", "val_loss"} for line in lines)
    assert lines[0]["best_checkpoint"] == "mobilenet_v3_small-best.ckpt"  # the first validation is the best so far
    assert [line["global_step"] for line in lines] == [6, 12, 18] and all(line["steps"] == 6 for line in lines)
    printed_means = [float(m) for m in re.findall(r"mean loss (\d+\.\d+)", first + second)]
    assert [round(line["loss"], 4) for line in lines] == printed_means
    printed_val = [ast.literal_eval(v) for v in re.findall(r"validation after epoch \d+: (\{.*\})", first + second)]
    assert [(line["val_top1"], line["val_top5"]) for line in lines] == \
        [(v["Top_1_Accuracy"], v["Top_5_Accuracy"]) for v in printed_val]
    last_step_lrs = [line.rsplit("lr:", 1)[1] for line in (first + second).splitlines()
                     if STEP_LINE.match(line) and "step:[    6/    6]" in line]
    assert [f"{line['lr']:.5f}" for line in lines] == last_step_lrs
    assert all(line["images_per_second_total"] == line["images_per_second"] for line in lines)  # one process

    log = (Path(directory) / "train.log").read_text()
    assert [line for line in log.splitlines() if STEP_LINE.match(line)] == \
        [line for line in (first + second).splitlines() if STEP_LINE.match(line)]
    assert "resumed from" in log

    # A rerun from the epoch-1 checkpoint drops the later epochs' lines before running them again.
    for path in sorted(Path(directory).glob("*.ckpt"))[1:]:
        path.unlink()
    train(small_config(epoch_size=2, resume="auto"))
    assert [line["epoch"] for line in read_metrics(f"{directory}/metrics.jsonl")] == [1, 2]

    run_file = (Path(directory) / "run.yaml").read_text()
    assert re.search(r"^# world size: 1$", run_file, re.M) and re.search(r"^# mindspore: 2\.10\.0$", run_file, re.M)
    assert re.search(r"^# (command|git commit|cpu|python): .+$", run_file, re.M)
    again = build_config(Path(directory) / "run.yaml")  # loadable with --config, to the same config
    assert again.values() == small_config(epoch_size=2, resume="auto").values()


def write_metrics(directory, losses, top1=None):
    directory.mkdir(parents=True)
    with (directory / "metrics.jsonl").open("w") as out:
        for epoch, loss in enumerate(losses, 1):
            line = dict(epoch=epoch, loss=loss, lr=0.1 / epoch)
            if top1:
                line["val_top1"] = top1[epoch - 1]
            out.write(json.dumps(line) + "\n")


def test_plot_overlays_two_runs_in_one_png(tmp_path):
    pytest.importorskip("matplotlib")
    write_metrics(tmp_path / "momentum", [2.0, 1.5, 1.2], top1=[0.3, 0.5, 0.6])
    write_metrics(tmp_path / "rmsprop", [2.1, 1.4])
    done = run_script("plot", tmp_path / "momentum", tmp_path / "rmsprop", "--output", tmp_path / "c.png")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"curves of 2 run(s) written to {tmp_path / 'c.png'}"
    with Image.open(tmp_path / "c.png") as image:
        assert image.format == "PNG" and image.size == (560, 400)
        colours = image.convert("RGB").getcolors(1 << 16)
    assert len(colours) > 20  # lines drawn, not a blank canvas
    single = run_script("plot", tmp_path / "momentum")
    assert single.returncode == 0 and (tmp_path / "momentum" / "curves.png").is_file()


def test_plot_errors_are_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    done = run_script("plot", tmp_path / "empty")
    assert done.returncode == 2 and "metrics.jsonl not found or empty" in done.stderr
    (tmp_path / "no_mpl" / "matplotlib").mkdir(parents=True)
    (tmp_path / "no_mpl" / "matplotlib" / "__init__.py").write_text("raise ImportError('no matplotlib')\n")
    write_metrics(tmp_path / "run", [1.0])
    missing = run_script("plot", tmp_path / "run", env={"PYTHONPATH": str(tmp_path / "no_mpl")})
    assert missing.returncode == 2
    assert missing.stderr.strip() == 'error: plot.py needs matplotlib: pip install -e ".[plot]" (or pip install matplotlib)'


def test_a_metrics_file_cut_mid_line_loses_that_line_only(tmp_path, capsys):
    records = [dict(epoch=1, loss=2.0), dict(epoch=2, loss=1.5), dict(epoch=3, loss=1.2)]
    path = tmp_path / "metrics.jsonl"
    whole = "".join(json.dumps(r) + "\n" for r in records).encode()
    for cut in (b'{"epoch": 4, "loss": 1.', b'{"epoch": 4, "loss": "\xff\xfe'):  # the disk filled; bytes cut in two
        path.write_bytes(whole + cut)
        MetricsFile(tmp_path, 2)  # resumed after epoch 2
        assert f"warning: {path}: its last line (line 4) was cut short" in capsys.readouterr().err
        assert path.read_text() == "".join(json.dumps(r) + "\n" for r in records[:2])
    path.write_bytes(whole + b'{"epoch": 4, "loss": 1.1}')  # no newline, but whole: kept
    MetricsFile(tmp_path, 4)
    assert [r["epoch"] for r in read_metrics(path)] == [1, 2, 3, 4] and path.read_text().endswith("}\n")


@pytest.mark.parametrize("broken", [b'{"epoch": 2, "lo\n', b"\xff\n", b"[1, 2]\n", b"\n\n{oops}\n"])
def test_a_broken_line_before_the_last_is_refused_naming_file_and_line(tmp_path, broken):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"epoch": 1, "loss": 2.0}\n' + broken + b'{"epoch": 3, "loss": 1.0}\n')
    line = 4 if broken.startswith(b"\n\n") else 2
    with pytest.raises(UserError, match=rf"^{re.escape(str(path))}: line {line} is not an epoch's JSON record; fix or "
                                        "delete that line"):
        MetricsFile(tmp_path, 3)
    assert MetricsFile(tmp_path, 0) and path.read_text() == ""  # a fresh run starts its own record


def tensorboard_scalars(directory) -> dict:
    """{tag: [(step, value)]} of the event files in `directory`, read as TFRecords (length, CRC, Event proto,
    CRC) with tensorboardX's own Event message."""
    from tensorboardX.proto import event_pb2
    found = {}
    for path in sorted(Path(directory).glob("events.out.tfevents.*")):
        data, position = path.read_bytes(), 0
        while position < len(data):
            (length,) = struct.unpack("<Q", data[position:position + 8])
            event = event_pb2.Event.FromString(data[position + 12:position + 12 + length])
            position += 12 + length + 4
            for value in event.summary.value:
                found.setdefault(value.tag, []).append((event.step, round(value.simple_value, 6)))
    return found


def test_a_run_cut_resumed_and_rerun_keeps_its_best_checkpoint_record_and_events(small_config, tmp_path, capsys,
                                                                              monkeypatch):
    """Validation Top-1 0.5, 0.4, 0.7 over 3 epochs (a stand-in for evaluate_folder), stopped after epoch 1
    with metrics.jsonl cut while a line was written, resumed, then given --resume auto once more."""
    scores = iter([0.5, 0.4, 0.7])

    def validation(*args):
        top1 = next(scores)
        return SimpleNamespace(top1=top1, top5=1.0, loss=1 - top1,
                               seed_dict=lambda: {"Top_1_Accuracy": top1, "Top_5_Accuracy": 1.0})
    monkeypatch.setattr(trainer, "evaluate_folder", validation)
    events = tmp_path / "events"
    run = dict(eval_interval=1, keep_checkpoint_max=1, tensorboard=str(events))
    directory = Path(small_config().ckpt_save_dir)
    train(small_config(epoch_size=1, **run))
    metrics = directory / "metrics.jsonl"
    metrics.write_bytes(metrics.read_bytes() + b'{"epoch": 2, "global_st')
    capsys.readouterr()
    train(small_config(epoch_size=3, resume="auto", **run))
    resumed = capsys.readouterr()
    assert f"warning: {metrics}: its last line (line 2) was cut short" in resumed.err
    lines = read_metrics(metrics)
    assert [(line["epoch"], line["val_top1"], line.get("best_checkpoint")) for line in lines] == \
        [(1, 0.5, "mobilenet_v3_small-best.ckpt"), (2, 0.4, None), (3, 0.7, "mobilenet_v3_small-best.ckpt")]
    best = directory / "mobilenet_v3_small-best.ckpt"
    meta = checkpoint.load(best)[1]
    assert (meta["epoch"], meta["step"], meta["val_top1"], meta["val_top5"]) == (3, 18, 0.7, 1.0)
    # Beside the last keep_checkpoint_max (1), not counted among them nor taken by --resume auto.
    assert sorted(p.name for p in directory.glob("*.ckpt")) == ["mobilenet_v3_small-3_18.ckpt", best.name]
    assert checkpoint.latest(directory).name == "mobilenet_v3_small-3_18.ckpt"
    # Written following the umask (0644 under 022), like every checkpoint.
    assert stat.S_IMODE(os.stat(best).st_mode) == 0o666 & ~current_umask()

    train(small_config(epoch_size=3, resume="auto", **run))  # a finished run: said once, appended to train.log
    again = capsys.readouterr()
    assert again.out.count("nothing to do") == 1 and "Epoch:[" not in again.out
    log = (directory / "train.log").read_text()
    assert len(re.findall(r"^===== .*: another start, .* =====$", log, re.M)) == 2
    assert log.index("Epoch 1 finished") < log.index("resumed from") < log.index("nothing to do")

    scalars = tensorboard_scalars(events)
    assert scalars["val/top1"] == [(6, 0.5), (12, 0.4), (18, 0.7)] and [s for s, _ in scalars["val/top5"]] == [6, 12, 18]
    assert [step for step, _ in scalars["train/loss"]] == list(range(1, 19))  # log_interval 1: every step
    printed = [float(line.rsplit("lr:", 1)[1]) for line in (resumed.out + again.out).splitlines() if STEP_LINE.match(line)]
    assert [round(v, 5) for _, v in scalars["train/lr"][6:]] == printed
    assert all(v > 0 for _, v in scalars["train/images_per_second"])
    assert [(s, round(v, 4)) for s, v in scalars["epoch/loss"]] == [(6 * e, round(line["loss"], 4))
                                                                     for e, line in enumerate(lines, 1)]

    # eval, export and averaging take the best checkpoint like any other.
    last = directory / "mobilenet_v3_small-3_18.ckpt"
    averaged = run_script("average_checkpoints", "--inputs", best, last, "--output", tmp_path / "avg.ckpt")
    assert averaged.returncode == 0, averaged.stderr
    evaluated = run_script("eval", "--device_target", "CPU", "--data_url", small_config().data_url, "--pretrained", best)
    assert evaluated.returncode == 0 and "Top_1_Accuracy" in evaluated.stdout, evaluated.stderr
    exported = run_script("export", "--device_target", "CPU", "--pretrained", best, "--file_name", tmp_path / "best")
    assert exported.returncode == 0, exported.stderr
    assert stat.S_IMODE(os.stat(tmp_path / "best.mindir").st_mode) == 0o666 & ~current_umask()


def current_umask() -> int:
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def test_tensorboard_without_tensorboardx_is_one_line(tmp_path, monkeypatch):
    from mobilenetv3.training.tensorboard import EventFiles
    monkeypatch.setitem(__import__("sys").modules, "tensorboardX", None)  # as if not installed
    with pytest.raises(UserError, match=r"^--tensorboard needs tensorboardX: pip install -e '\.\[tensorboard\]'"):
        EventFiles(tmp_path, 1)


def test_a_one_epoch_run_shows_in_the_plot(tmp_path):
    """One point per curve: drawn as a marker (a line of one point draws nothing)."""
    pytest.importorskip("matplotlib")
    from plot import plot  # scripts/plot.py
    plot({"run": [dict(epoch=1, loss=1.2, lr=0.05)]}, tmp_path / "one.png")
    with Image.open(tmp_path / "one.png") as image:
        pixels = np.asarray(image.convert("RGB")).astype(int)
    lr_axes = pixels[pixels.shape[0] * 2 // 3:]  # the learning rate's axes, below the legend
    run_colour = np.all(np.abs(lr_axes - (31, 119, 180)) < 40, axis=-1)  # matplotlib's C0
    assert run_colour.sum() >= 5  # none without markers
