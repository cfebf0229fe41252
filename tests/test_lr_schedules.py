import dataclasses
import math

import numpy as np
import pytest

from mobilenetv3.config import ConfigError, build_config
from mobilenetv3.errors import UserError
from mobilenetv3.training.lr_schedules import Schedule, learning_rates
from mobilenetv3.training.trainer import schedule_of

STEPS = 10  # per epoch
# The config's defaults (epoch_size 200, max_lr 0.1, cosine to 0 over 200 epochs, no warmup, seed 1).
DEFAULT = Schedule(epochs=200, max_lr=0.1, mode="cosine_decay_lr", min_lr=0.0, decay_epoch=200, warmup_epochs=0,
                   decay_rate=0.973, decay_step_epochs=2, milestones=(), rates=(), noise=(), seed=1)


def schedule(**values):
    """The learning rates of DEFAULT with `values` (Schedule's fields) changed."""
    return learning_rates(dataclasses.replace(DEFAULT, **values), STEPS)


def config_schedule(**overrides):
    """The learning rates of the config with `overrides` (its keys)."""
    return learning_rates(schedule_of(build_config(overrides=overrides)), STEPS)


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
