"""Per-step learning rates: optional linear warmup, then one of the decay schedules.

Decay schedules count epochs from the end of warmup and change once per epoch: cosine and piecewise
come from MindSpore (nn.cosine_decay_lr, nn.piecewise_constant_lr); step and exponential are written here
because nn.exponential_decay_lr takes whole epochs per decay step only, and timm's recipe decays every 2.4.
--lr_noise then multiplies whole epochs (noise_factors). Warmup is per step
(max_lr * (i + 1) / warmup_steps): MindSpore's nn.warmup_lr is constant per epoch and starts at 0,
which wastes the whole first epoch.
"""
import numpy as np
from mindspore import nn

from .errors import UserError


def warmup(max_lr: float, warmup_steps: int) -> list:
    return [max_lr * (i + 1) / warmup_steps for i in range(warmup_steps)]


def decay(config, total_steps: int, steps_per_epoch: int) -> list:
    """The schedule after warmup, `total_steps` long."""
    if total_steps <= 0:
        return []
    mode = config.lr_decay_mode
    if mode == "cosine_decay_lr":
        return nn.cosine_decay_lr(config.min_lr, config.max_lr, total_steps, steps_per_epoch, config.decay_epoch)
    if mode in ("step", "exponential"):
        # Each epoch's exponent as timm's and torch's schedulers compute it, Python's float // for step.
        epochs = [i // steps_per_epoch for i in range(total_steps)]
        period = config.lr_decay_step_epochs
        return [config.max_lr * config.lr_decay_rate ** (e // period if mode == "step" else e / period)
                for e in epochs]
    if mode == "piecewise":
        milestones = [m * steps_per_epoch for m in config.milestone]
        if milestones != sorted(set(milestones)) or milestones[0] <= 0:
            raise UserError(f"milestone must be strictly increasing positive epochs, got {config.milestone}")
        rates = list(config.learning_rates)
        if milestones[-1] < total_steps:  # the last rate holds to the end of training
            milestones.append(total_steps)
            rates.append(rates[-1])
        return nn.piecewise_constant_lr(milestones, rates)[:total_steps]
    raise UserError(f"lr_decay_mode {mode!r} is not one of cosine_decay_lr, piecewise, step, exponential")


NOISE_LIMIT = 0.67  # timm's noise_pct


def noise_factors(config) -> np.ndarray:
    """Per epoch, the factor timm's --lr-noise puts on its learning rate: 1 + n for the epochs e with
    START x epoch_size <= e < END x epoch_size, n normal, drawn from (seed, e) and redrawn until
    |n| < NOISE_LIMIT (timm's distribution; its draws come from torch's generator); 1 elsewhere."""
    factors = np.ones(config.epoch_size)
    if config.lr_noise:
        start, end = (fraction * config.epoch_size for fraction in config.lr_noise)
        for epoch in range(config.epoch_size):
            if start <= epoch < end:
                rng = np.random.default_rng([config.seed, epoch])
                noise = rng.standard_normal()
                while abs(noise) >= NOISE_LIMIT:
                    noise = rng.standard_normal()
                factors[epoch] = 1 + noise
    return factors


def learning_rates(config, steps_per_epoch: int) -> np.ndarray:
    """One float32 learning rate per training step of the whole run."""
    total = config.epoch_size * steps_per_epoch
    warmup_steps = min(config.warmup_epochs * steps_per_epoch, total)
    rates = warmup(config.max_lr, warmup_steps) + list(decay(config, total - warmup_steps, steps_per_epoch))
    return np.asarray(np.asarray(rates) * np.repeat(noise_factors(config), steps_per_epoch), dtype=np.float32)
