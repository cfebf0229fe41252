import dataclasses
import os
import re
import shutil
import stat
from pathlib import Path
from types import SimpleNamespace

import mindspore as ms
import numpy as np
import pytest

from mobilenetv3.checkpoints import files as checkpoint
from mobilenetv3.errors import UserError
from mobilenetv3.config import build_config
from mobilenetv3.training import trainer
from mobilenetv3.training.step_log import NonFiniteLoss
from mobilenetv3.training.trainer import train
from conftest import STEP_LINE, run_script

def weights(path):
    return {name: p.asnumpy() for name, p in checkpoint.load(path)[0].items()}


def test_seed_log_format_example_matches():
    assert STEP_LINE.match("Epoch:[ 90/ 120], step:[    1/ 2502], loss:[2.771/2.771], time:177.988 ms, lr:0.07329")


def test_loss_falls_log_lines_and_checkpoint_rotation(small_config, capsys):
    config = small_config(epoch_size=4, decay_epoch=4, keep_checkpoint_max=2)
    last = train(config)
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("Epoch:[")]
    assert len(lines) == 4 * 6 and all(STEP_LINE.match(line) for line in lines), lines[:2]
    assert lines[0].startswith("Epoch:[  1/   4], step:[    1/    6]") and lines[-1].startswith("Epoch:[  4/   4], step:[    6/    6]")
    epoch_means = [float(m) for m in re.findall(r"mean loss (\d+\.\d+)", out)]
    assert len(epoch_means) == 4 and epoch_means[-1] < 0.8 * epoch_means[0], epoch_means
    ckpt_dir = Path(config.ckpt_save_dir)
    assert sorted(p.name for p in ckpt_dir.glob("*.ckpt")) == ["mobilenet_v3_small-3_18.ckpt", "mobilenet_v3_small-4_24.ckpt"]
    meta = checkpoint.load(last)[1]
    assert (meta["epoch"], meta["step"], meta["classes"]) == (4, 24, ["class_0", "class_1", "class_2"])
    assert meta["config"]["batch_size"] == 8
    # The learning rate printed is the schedule's: cosine over 4 epochs, constant within an epoch.
    assert lines[6].endswith("lr:0.04268") and lines[0].endswith("lr:0.05000")


def test_a_run_builds_one_pipeline_for_all_its_epochs(small_config, monkeypatch):
    """One dataset per start or resume (its workers start once; in sink mode one sink graph): it holds every
    remaining epoch, from where the checkpoint left off."""
    from mobilenetv3.training import trainer
    built = []
    real = trainer.create_dataset
    monkeypatch.setattr(trainer, "create_dataset", lambda *a, **kw: built.append(kw) or real(*a, **kw))
    config = small_config(epoch_size=2, decay_epoch=3, log_interval=100)
    train(config)
    assert [(kw["first_epoch"], kw["epochs"], kw["skip_steps"]) for kw in built] == [(0, 2, 0)]
    train(dataclasses.replace(config, epoch_size=3, resume="auto"))
    assert [(kw["first_epoch"], kw["epochs"], kw["skip_steps"]) for kw in built[1:]] == [(2, 1, 0)]


# CI time: all with --runslow; test_hardening's resumes after a signal check the same exactness by default.
@pytest.mark.parametrize("optimizer,ema", [pytest.param("momentum", 0.9, marks=pytest.mark.slow),
                                           pytest.param("rmsprop", 0.0, marks=pytest.mark.slow),
                                           pytest.param("rmsprop_tf", 0.0, marks=pytest.mark.slow)])
def test_resumed_run_ends_with_identical_parameters(small_config, tmp_path, optimizer, ema):
    """Bit for bit, with dropout (the default 0.2), stochastic depth and EMA on.

    Data order, augmentation, dropout and drop-path masks (a function of seed, rank and global step), weights,
    BN statistics, optimiser and EMA state all carry over.
    """
    extra = dict(optimizer=optimizer, ema_decay=ema, epoch_size=3, decay_epoch=3, max_lr=0.01, drop_path_rate=0.2)
    straight = train(small_config(ckpt_save_dir=str(tmp_path / "a"), **extra))
    train(small_config(ckpt_save_dir=str(tmp_path / "b"), **dict(extra, epoch_size=1)))
    resumed = train(small_config(ckpt_save_dir=str(tmp_path / "b"), resume="auto", **extra))
    a, b = weights(straight), weights(resumed)
    assert set(a) == set(b) and any(name.startswith("opt.") for name in a)
    assert any(name.startswith("ema.") for name in a) == bool(ema)
    assert not np.array_equal(a["features.0.0.weight"], weights(tmp_path / "b" / "mobilenet_v3_small-1_6.ckpt")
                              ["features.0.0.weight"])  # training did move on after the resume
    for name in a:
        assert np.array_equal(a[name], b[name]), name


def test_sink_mode_trains_too(small_config):
    last = train(small_config(dataset_sink_mode=True, epoch_size=1))
    assert checkpoint.load(last)[1]["epoch"] == 1


@pytest.mark.slow  # CI time: run with --runslow
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(small_config):
    config = small_config(epoch_size=1)
    good = train(config)
    config = small_config(epoch_size=3, max_lr=1e30, resume="auto")
    with pytest.raises(NonFiniteLoss, match=r"loss is (nan|inf) at epoch 2, step \d+: stopping"):
        train(config)
    assert checkpoint.list_checkpoints(config.ckpt_save_dir) == [Path(good)]


@pytest.mark.slow  # CI time: run with --runslow
def test_pretrained_with_other_classes_fine_tunes(small_config, image_folder, tmp_path, capsys):
    source = train(small_config(ckpt_save_dir=str(tmp_path / "src"), epoch_size=1))
    two_classes = tmp_path / "two"
    for c in range(2):
        shutil.copytree(image_folder / "train" / f"class_{c}", two_classes / f"k{c}")
    capsys.readouterr()
    tuned = train(small_config(data_url=str(two_classes), pretrained=source, num_classes=2, epoch_size=1,
                               max_lr=1e-12, min_lr=0.0, ckpt_save_dir=str(tmp_path / "tuned")))
    assert f"{source} has 3 classes, the model 2: loaded all but the last Linear layer" in capsys.readouterr().err  # a logged note: stderr
    before, after = weights(source), weights(tuned)
    # Learning rate 1e-12: the loaded weights come through (BN running statistics do move).
    np.testing.assert_allclose(before["features.5.block.0.0.weight"], after["features.5.block.0.0.weight"], atol=1e-9)
    assert after["classifier.3.weight"].shape == (2, 1024)


def test_num_classes_must_match_the_folders(small_config):
    with pytest.raises(UserError, match="has 3 class folders but num_classes is 5; pass --num_classes 3"):
        train(small_config(num_classes=5))


def test_train_script_end_to_end(small_config, image_folder, tmp_path):
    result = run_script("train", "--device_target", "CPU", "--data_url", image_folder, "--num_classes", 3,
                        "--batch_size", 8, "--epoch_size", 1, "--resize", 32, "--bn_momentum", 0.9,
                        "--ckpt_save_dir", tmp_path / "cli", "--num_parallel_workers", 2, "--dataset_sink_mode", "false")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("Epoch:[")]
    assert len(lines) == 6 and all(STEP_LINE.match(line) for line in lines)
    assert f"last checkpoint: {tmp_path / 'cli' / 'mobilenet_v3_small-1_6.ckpt'}" in result.stdout


@pytest.mark.parametrize("layout,message", [
    ("tree", "--eval_interval 1 needs held-out images in {root}/val/<class>/, but data_url {root} is one class-folder "
             "tree, so validation would run on the training images; add them, or set --eval_interval 0"),
    ("no_val", "--eval_interval 1 needs held-out images in {root}/val/<class>/, but data_url {root} has no val/ "
               "folder; add them, or set --eval_interval 0"),
    ("other_classes", "class folders of {root}/val differ from the training classes: only here: ['zebra']; "
                      "missing here: ['class_2']"),
])
def test_eval_interval_checks_the_validation_folder_before_training(small_config, image_folder, tmp_path, capsys,
                                                                    layout, message):
    root = tmp_path / "data"
    shutil.copytree(image_folder / "train", root if layout == "tree" else root / "train")
    if layout == "other_classes":
        shutil.copytree(image_folder / "val", root / "val")
        (root / "val" / "class_2").rename(root / "val" / "zebra")
    with pytest.raises(UserError) as error:
        train(small_config(data_url=str(root), eval_interval=1))
    assert str(error.value) == message.format(root=root)
    assert "Epoch:[" not in capsys.readouterr().out


def test_eval_interval_validates_on_val(small_config, capsys):
    train(small_config(epoch_size=1, eval_interval=1))
    assert re.search(r"^validation after epoch 1: \{'Top_1_Accuracy': [\d.]+, 'Top_5_Accuracy': 1.0\}$",
                     capsys.readouterr().out, re.M)


def test_the_sink_plan_is_said_once_at_start_and_the_cpu_never_sinks(small_config, caplog):
    from mobilenetv3.training.trainer import sink_plan
    config = small_config(dataset_sink_mode=True, log_interval=0)
    assert sink_plan(config, 2502, 0, True) == 0  # CPU: MindSpore never sinks
    gpu = dataclasses.replace(config, device_target="GPU")
    with caplog.at_level("INFO", logger="mobilenetv3"):
        assert sink_plan(gpu, 2502, 0, True) == 139
        assert sink_plan(dataclasses.replace(gpu, log_interval=100), 2502, 0, False) == 18  # rank 1 says nothing
        assert sink_plan(dataclasses.replace(gpu, sink_size=278), 2502, 139, True) == 139
    assert [r.getMessage().split(";")[0] for r in caplog.records] == [
        "dataset sink mode: 139 steps per sink (the smallest divisor of at least 100, else the whole epoch, of the "
        "epoch's 2502 steps)",
        "dataset sink mode: 139 steps per sink (--sink_size, of the epoch's 2502 steps, and of the 139 steps done "
        "before the resume)"]
    assert sink_plan(dataclasses.replace(gpu, dataset_sink_mode=False), 2502, 0, True) == 0


def test_the_first_lines_say_the_scaled_learning_rate_and_a_schedule_that_outlasts_the_run(small_config, tmp_path,
                                                                                         capsys):
    """A recipe whose max_lr 0.1 belongs to global batch 32, run at 8 (one process x 8): 0.025, said before the
    first step and used by it; its decay_epoch 3 of a 1-epoch run is warned about at start."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("max_lr: 0.1\nlr_base_size: 32\ndecay_epoch: 3\n")
    plain = small_config().values()
    data = {name: plain[name] for name in ("device_target", "data_url", "num_classes", "batch_size", "resize",
                                           "num_parallel_workers", "bn_momentum", "ckpt_save_dir", "dataset_sink_mode")}
    train(build_config(recipe, dict(data, epoch_size=1, log_interval=1)))
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines.index("lr 0.025 = 0.1 x 8/32, linear") < lines.index("compiling the network (first step)") < \
        next(i for i, line in enumerate(lines) if STEP_LINE.match(line))
    assert next(line for line in lines if STEP_LINE.match(line)).endswith("lr:0.02500")
    assert "warning: decay_epoch 3 ends after the run (warmup_epochs 0 + 3 > epoch_size 1): the last learning rate " \
           "is 0.025, 100% of max_lr" in captured.err


def test_a_finished_run_given_resume_auto_says_nothing_to_do_once(small_config, capsys):
    config = small_config(epoch_size=1)
    last = train(config)
    capsys.readouterr()
    again = dataclasses.replace(config, resume="auto")
    assert train(again) == last
    assert capsys.readouterr().out.splitlines()[-1] == f"nothing to do: the checkpoint is at epoch 1 of 1 ({last}); " \
        "a larger --epoch_size trains on"
    train(again, SimpleNamespace(rank=1, size=2))  # another rank of the job: silent
    other = capsys.readouterr()
    assert "nothing to do" not in other.out + other.err


def test_a_run_that_fails_writes_its_error_to_train_log_too(small_config, tmp_path, monkeypatch):
    """What the scripts print on stderr as the run's last line is in train.log too: a refusal before training,
    and an unforeseen exception during it, with its traceback."""
    config = small_config(num_classes=5)
    with pytest.raises(UserError) as refused:
        train(config)
    log = (Path(config.ckpt_save_dir) / "train.log").read_text()
    assert log.splitlines()[-1] == f"error: {refused.value}"

    def broken(*args):
        raise RuntimeError("the validation folder went away")
    monkeypatch.setattr(trainer, "evaluate_folder", broken)
    config = small_config(epoch_size=1, eval_interval=1, ckpt_save_dir=str(tmp_path / "during"))
    with pytest.raises(RuntimeError):
        train(config)
    log = (Path(config.ckpt_save_dir) / "train.log").read_text()
    assert "Epoch:[  1/   1], step:[    6/    6]" in log and "error: Traceback (most recent call last):" in log
    assert log.rstrip().endswith("RuntimeError: the validation folder went away")


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_checkpoints_are_written_following_the_umask(tmp_path, umask):
    """MindSpore writes them 0400; a group should read them and a rerun replace them."""
    previous = os.umask(umask)
    try:
        checkpoint.save(tmp_path / "a.ckpt", {"w": ms.Tensor(np.ones(2, np.float32))}, {})
        checkpoint.save(tmp_path / "a.ckpt", {"w": ms.Tensor(np.zeros(2, np.float32))}, {})  # replaced
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(tmp_path / "a.ckpt").st_mode) == 0o666 & ~umask
    assert weights(tmp_path / "a.ckpt")["w"].tolist() == [0.0, 0.0]
