import dataclasses
import math

import numpy as np
import pytest

from mobilenetv3.config import ConfigError, build_config
from mobilenetv3.errors import UserError
from mobilenetv3.training.lr_schedules import Schedule, learning_rates, scaled_lr, schedule_warnings
from mobilenetv3.training.trainer import peak_lr, schedule_of
from conftest import REPO

STEPS = 10  # per epoch
# The config's defaults (epoch_size 200, max_lr 0.1, cosine to 0 over 200 epochs, no warmup, seed 1).
DEFAULT = Schedule(epochs=200, max_lr=0.1, mode="cosine_decay_lr", min_lr=0.0, decay_epoch=200, warmup_epochs=0,
                   decay_rate=0.973, decay_step_epochs=2, milestones=(), rates=(), noise=(), seed=1)


def schedule(**values):
    """The learning rates of DEFAULT with `values` (Schedule's fields) changed."""
    return learning_rates(dataclasses.replace(DEFAULT, **values), STEPS)


def config_schedule(**overrides):
    """The learning rates of the config with `overrides` (its keys)."""
    config = build_config(overrides=overrides)
    return learning_rates(schedule_of(config, config.max_lr), STEPS)


def test_cosine_follows_its_formula_per_epoch():
    lr = schedule(mode="cosine_decay_lr", max_lr=0.1, min_lr=0.001, epochs=8, decay_epoch=8)
    assert lr.shape == (80,) and lr.dtype == np.float32
    for step in (0, 9, 10, 35, 79):
        epoch = step // STEPS
        expected = 0.001 + 0.5 * (0.1 - 0.001) * (1 + math.cos(math.pi * epoch / 8))
        assert lr[step] == pytest.approx(expected, rel=1e-6), step


def test_linear_warmup_then_cosine_from_the_peak():
    lr = schedule(mode="cosine_decay_lr", max_lr=0.2, min_lr=0.0, epochs=5, decay_epoch=4, warmup_epochs=1)
    assert lr[:STEPS] == pytest.approx([0.2 * (i + 1) / STEPS for i in range(STEPS)], rel=1e-6)
    assert lr[STEPS] == pytest.approx(0.2) and lr[STEPS + 10] == pytest.approx(0.1 * (1 + math.cos(math.pi / 4)))
    assert len(lr) == 50


def test_step_decay_is_the_torchvision_recipe():
    lr = schedule(mode="step", max_lr=0.064, decay_rate=0.973, decay_step_epochs=2, epochs=7)
    for step in (0, 19, 20, 45, 69):
        assert lr[step] == pytest.approx(0.064 * 0.973 ** (step // STEPS // 2), rel=1e-6), step


def test_step_decay_every_fraction_of_an_epoch_is_timms():
    """timm's recipe: 0.973 every 2.4 epochs, changed at epoch boundaries (floor(epoch / 2.4))."""
    lr = schedule(mode="step", max_lr=0.064, decay_rate=0.973, decay_step_epochs=2.4, epochs=15)
    exponents = [0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 4, 5, 5, 5]
    assert np.array_equal(lr, np.repeat(np.float32([0.064 * 0.973 ** k for k in exponents]), STEPS))


def test_exponential_decays_every_epoch_fractionally():
    lr = schedule(mode="exponential", max_lr=0.1, decay_rate=0.5, decay_step_epochs=2, epochs=4)
    assert lr[15] == pytest.approx(0.1 * 0.5 ** 0.5, rel=1e-6) and lr[35] == pytest.approx(0.1 * 0.5 ** 1.5, rel=1e-6)


def test_piecewise_holds_the_last_rate_to_the_end():
    lr = schedule(mode="piecewise", milestones=(2, 3), rates=(0.1, 0.01), epochs=5)
    assert np.array_equal(lr, np.array([0.1] * 20 + [0.01] * 30, dtype=np.float32))
    with pytest.raises(UserError, match="strictly increasing"):
        schedule(mode="piecewise", milestones=(3, 2), rates=(0.1, 0.01), epochs=5)
    with pytest.raises(ConfigError, match="needs milestone"):
        config_schedule(lr_decay_mode="piecewise", epoch_size=5)


def test_lr_noise_multiplies_the_epochs_in_its_range_by_a_bounded_normal_factor():
    """timm's --lr-noise: epochs in [START, END) x epoch_size only, one factor per epoch, 1 + n with |n| < 0.67,
    n normal: over 395 epochs its mean is near 1 and its spread that of a normal truncated at 0.67 (0.37)."""
    plain = dict(mode="step", max_lr=0.1, decay_rate=1.0, epochs=500)
    lr = schedule(**plain, noise=(0.2, 0.99)).reshape(500, STEPS)
    factors = lr[:, 0] / np.float32(0.1)
    assert np.array_equal(lr, np.repeat(lr[:, :1], STEPS, axis=1))  # constant within an epoch
    assert np.all(factors[:100] == 1) and np.all(factors[495:] == 1) and np.all(factors[100:495] != 1)
    noisy = factors[100:495]
    assert np.all(np.abs(noisy - 1) < 0.67) and abs(noisy.mean() - 1) < 0.06 and 0.33 < noisy.std() < 0.41
    assert np.array_equal(schedule(**plain, noise=(0.2, 0.99)), lr.ravel())  # a function of (seed, epoch)
    assert not np.array_equal(schedule(**plain, noise=(0.2, 0.99), seed=2), lr.ravel())
    # The config's keys reach the schedule: lr_noise and seed as noise and seed.
    config_keys = dict(lr_decay_mode="step", max_lr=0.1, lr_decay_rate=1.0, epoch_size=500, lr_noise=[0.2, 0.99])
    assert np.array_equal(config_schedule(**config_keys), lr.ravel())
    assert np.array_equal(config_schedule(**config_keys, seed=2), schedule(**plain, noise=(0.2, 0.99), seed=2))
    with pytest.raises(ConfigError, match=r"lr_noise takes two fractions of the epochs, START,END with START < END "
                                          r"in \[0, 1\] .*got 0.9,0.42"):
        config_schedule(lr_decay_mode="step", max_lr=0.1, lr_decay_rate=1.0, epoch_size=500, lr_noise=[0.9, 0.42])


def test_the_cosine_spans_the_run_unless_decay_epoch_is_given():
    """decay_epoch 0 (the default): the cosine reaches min_lr at the run's end, whatever epoch_size; a
    decay_epoch that ends after the run is a warning naming the last learning rate."""
    for epochs, warmup in ((120, 0), (7, 2)):
        lr = config_schedule(epoch_size=epochs, warmup_epochs=warmup, max_lr=0.1).reshape(epochs, STEPS)
        cosine = epochs - warmup
        expected = [0.05 * (1 + math.cos(math.pi * e / cosine)) for e in range(cosine)]
        assert lr[warmup:, 0] == pytest.approx(expected, rel=1e-5, abs=1e-9)
        assert schedule_warnings(dataclasses.replace(DEFAULT, epochs=epochs, warmup_epochs=warmup, decay_epoch=0)) == []
    long = dataclasses.replace(DEFAULT, epochs=120, decay_epoch=200)
    assert schedule_warnings(long) == [
        "decay_epoch 200 ends after the run (warmup_epochs 0 + 200 > epoch_size 120): the last learning rate is "
        "0.0353, 35% of max_lr; leave decay_epoch out (0) for a cosine that ends with the run"]
    assert learning_rates(long, 1)[-1] == pytest.approx(0.05 * (1 + math.cos(math.pi * 119 / 200)), rel=1e-6)
    assert schedule_warnings(dataclasses.replace(DEFAULT, epochs=5, warmup_epochs=5, decay_epoch=0)) == [
        "warmup_epochs 5 fills the whole run of 5 epochs (epoch_size): the learning rate only rises; lower "
        "warmup_epochs"]
    assert schedule_warnings(dataclasses.replace(DEFAULT, epochs=5, warmup_epochs=1, decay_epoch=4)) == []


def test_max_lr_follows_the_global_batch_as_timm_scales_it():
    assert scaled_lr(0.1, 512, 2048, "linear") == (0.4, "lr 0.4 = 0.1 x 2048/512, linear")
    assert scaled_lr(0.1, 512, 2048, "sqrt") == (0.2, "lr 0.2 = 0.1 x sqrt(2048/512), sqrt")
    assert scaled_lr(0.064, 1024, 1024, "linear")[0] == 0.064
    # A recipe at 8 x 64 = 512, run at 32 x 64: scaled; the config keeps the recipe's value.
    recipe = REPO / "configs" / "mobilenet_v3_large_imagenet.yaml"
    config = build_config(recipe)
    lr, line, warning, recorded = peak_lr(config, 2048)
    assert (lr, line, warning) == (0.4, "lr 0.4 = 0.1 x 2048/512, linear", None) and recorded == config
    # --max_lr on the command line is the peak at this global batch, recorded with lr_base_size = it.
    flagged = build_config(recipe, {"max_lr": "0.3"})
    lr, line, warning, recorded = peak_lr(flagged, 2048)
    assert (lr, line, warning) == (0.3, "lr 0.3 (--max_lr) at global batch 2048", None)
    assert (recorded.max_lr, recorded.lr_base_size) == (0.3, 2048)
    assert learning_rates(schedule_of(build_config(overrides=recorded.values()), 0.3), 1)[0] == np.float32(0.3)
    # More than 4x off the recipe's scaled value: warned.
    warning = peak_lr(build_config(recipe, {"max_lr": "0.09"}), 2048)[2]
    assert warning == ("--max_lr 0.09 is 0.225 times the config's max_lr scaled to global batch 2048 (lr 0.4 = 0.1 x "
                       "2048/512, linear; lr_base_size 512); check the flag, or leave it out to train at the scaled "
                       "value")
    assert peak_lr(build_config(recipe, {"max_lr": "0.11"}), 2048)[2] is None


def test_the_demo_trains_with_the_learning_rates_it_always_had():
    """The quickstart's 2 processes x batch 32 are the demo's lr_base_size: max_lr 0.05, a cosine over its 5
    epochs, per step exactly what the demo's reproduced numbers were trained with."""
    config = build_config(REPO / "configs" / "fashion_mnist_demo.yaml")
    lr, line, warning, _ = peak_lr(config, 2 * config.batch_size)
    assert (lr, line, warning) == (0.05, "lr 0.05 at global batch 64 = lr_base_size", None)
    before = Schedule(epochs=5, max_lr=0.05, mode="cosine_decay_lr", min_lr=0.0, decay_epoch=5, warmup_epochs=0,
                      decay_rate=0.973, decay_step_epochs=2, milestones=(), rates=(), noise=(), seed=1)
    assert np.array_equal(learning_rates(schedule_of(config, lr), 234), learning_rates(before, 234))
    assert schedule_warnings(schedule_of(config, lr)) == []
