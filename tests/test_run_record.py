"""What a run leaves besides checkpoints: metrics.jsonl (across resumes), train.log, run.yaml, curves."""
import ast
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from conftest import STEP_LINE, run_script
from mobilenetv3.config import build_config
from mobilenetv3.training.run_record import read_metrics
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
    assert all(set(line) == RECORD_KEYS | {"val_top1", "val_top5", "val_loss"} for line in lines)
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
