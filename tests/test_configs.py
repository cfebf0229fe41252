"""Every YAML in configs/ loads and trains: two steps of it on tiny images, with CPU overrides only."""
import re

import pytest
import yaml

from conftest import REPO, STEP_LINE, write_image_folder
from mobilenetv3.checkpoints import files as checkpoint
from mobilenetv3.config import build_config
from mobilenetv3.training.trainer import train

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
RECIPES = ["mobilenet_v3_large_imagenet_timm.yaml", "mobilenet_v3_large_imagenet_torchvision.yaml",
           "mobilenet_v3_small_imagenet_torchvision.yaml"]
# What a 2-core CPU test must change: the device (and with it AMP), the data, and the size of the run.
CPU_OVERRIDES = dict(device_target="CPU", amp_level="O0", num_classes=3, batch_size=3, epoch_size=1, resize=32,
                     num_parallel_workers=1, dataset_sink_mode=False, log_interval=1, eval_interval=0)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """Two images per class: two steps of batch 3."""
    return write_image_folder(tmp_path_factory.mktemp("tiny"), {"train": 2})


def test_the_recipes_name_their_source_global_batch_and_lr_scaling():
    assert set(RECIPES) <= {path.name for path in CONFIGS}
    for name in RECIPES:
        text = (REPO / "configs" / name).read_text()
        assert "source:" in text and re.search(r"Global batch 1024 = \d GPUs x batch_size \d+", text), name
        assert "max_lr = 0.064 * N * B / 1024" in text and "What differs from" in text, name


# The global batch each ImageNet recipe's max_lr was published at (its header says so).
GLOBAL_BATCH = {"mobilenet_v3_small_imagenet.yaml": 8 * 64, "mobilenet_v3_large_imagenet.yaml": 8 * 64,
                "mobilenet_v3_small_imagenet_torchvision.yaml": 8 * 128,
                "mobilenet_v3_large_imagenet_torchvision.yaml": 8 * 128, "mobilenet_v3_large_imagenet_timm.yaml": 2 * 512}


def test_the_imagenet_recipes_validate_every_epoch_log_sparsely_and_record_their_global_batch():
    assert set(GLOBAL_BATCH) == {path.name for path in CONFIGS if "imagenet" in path.name}
    for name, global_batch in GLOBAL_BATCH.items():
        config = build_config(REPO / "configs" / name)
        assert (config.eval_interval, config.log_interval) == (1, 100), name
        assert (config.lr_base_size, config.lr_scaling) == (global_batch, "linear"), name
        assert config.decay_epoch == 0, name  # a cosine follows --epoch_size


# The ImageNet recipes (RMSProp, EMA, long compiles on CPU) train with --runslow only, for CI time; by
# default the demo and the seed's configs train.
SLOW = {"mobilenet_v3_large_imagenet_torchvision.yaml", "mobilenet_v3_small_imagenet_torchvision.yaml",
        "mobilenet_v3_large_imagenet_timm.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_every_config_loads(path):
    assert build_config(path).model in ("mobilenet_v3_small", "mobilenet_v3_large")


@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.slow) if p.name in SLOW else p for p in CONFIGS],
                         ids=lambda path: path.name)
def test_config_trains_two_steps_with_its_own_settings(path, tiny_folder, tmp_path, capsys):
    overrides = dict(CPU_OVERRIDES, data_url=str(tiny_folder), ckpt_save_dir=str(tmp_path / "run"))
    last = train(build_config(path, overrides))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Epoch:[")]
    assert len(lines) == 2 and all(STEP_LINE.match(line) for line in lines), lines
    params, meta = checkpoint.load(last)
    # Everything the YAML says that the test did not override is what the run used.
    recipe = yaml.safe_load(path.read_text())
    used = {name: meta["config"][name] for name in recipe if name not in overrides}
    assert used == {name: value if value is not False else None for name, value in recipe.items()
                    if name not in overrides}
    assert any(name.startswith(checkpoint.EMA_PREFIX) for name in params) == bool(recipe.get("ema_decay"))
