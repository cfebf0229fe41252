"""Per-step learning rates: optional linear warmup, then one of the decay schedules.

Decay schedules count epochs from the end of warmup and change once per epoch: cosine and piecewise
come from MindSpore (nn.cosine_decay_lr, nn.piecewise_constant_lr); step and exponential are written here
because nn.exponential_decay_lr takes whole epochs per decay step only, and timm's recipe decays every 2.4.
lr noise (timm's --lr-noise) then multiplies whole epochs (noise_factors). Warmup is per step
(max_lr * (i + 1) / warmup_steps): MindSpore's nn.warmup_lr is constant per epoch and starts at 0,
which wastes the whole first epoch.

The peak follows the global batch as timm's train.py scales it (--lr-base, --lr-base-size, --lr-base-scale):
scaled_lr.
"""
import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import UserError

DECAY_MODES = ("cosine_decay_lr", "piecewise", "step", "exponential")
NOISE_LIMIT = 0.67  # timm's noise_pct


@dataclass(frozen=True)
class Schedule:
    """A run's learning rates by epoch; the config's keys of these names say what each means (epoch_size,
    lr_decay_mode, lr_decay_rate, lr_decay_step_epochs, milestone, learning_rates, lr_noise)."""
    epochs: int
    max_lr: float
    mode: str  # one of DECAY_MODES
    min_lr: float  # cosine: the last rate
    decay_epoch: int  # cosine: the epochs it takes to reach min_lr after warmup; 0: the rest of the run
    warmup_epochs: int
    decay_rate: float  # step and exponential: the factor per period
    decay_step_epochs: float  # step and exponential: the period, fractions allowed
    milestones: Sequence[int]  # piecewise: the epochs at which each rate ends
    rates: Sequence[float]  # piecewise
    noise: Sequence[float]  # START, END as fractions of the epochs (timm's --lr-noise); () off
    seed: int  # of the noise


def warmup(max_lr: float, warmup_steps: int) -> list:
    return [max_lr * (i + 1) / warmup_steps for i in range(warmup_steps)]


def decay(schedule: Schedule, total_steps: int, steps_per_epoch: int) -> list:
    """The schedule after warmup, `total_steps` long."""
    if total_steps <= 0:
        return []
    from mindspore import nn
    mode = schedule.mode
    if mode == "cosine_decay_lr":
        return nn.cosine_decay_lr(schedule.min_lr, schedule.max_lr, total_steps, steps_per_epoch,
                                  cosine_epochs(schedule))
    if mode in ("step", "exponential"):
        # Each epoch's exponent as timm's and torch's schedulers compute it, Python's float // for step.
        epochs = [i // steps_per_epoch for i in range(total_steps)]
        period = schedule.decay_step_epochs
        return [schedule.max_lr * schedule.decay_rate ** (e // period if mode == "step" else e / period)
                for e in epochs]
    if mode == "piecewise":
        milestones = [m * steps_per_epoch for m in schedule.milestones]
        if milestones != sorted(set(milestones)) or milestones[0] <= 0:
            raise UserError(f"milestone must be strictly increasing positive epochs, got {list(schedule.milestones)}")
        rates = list(schedule.rates)
        if milestones[-1] < total_steps:  # the last rate holds to the end of training
            milestones.append(total_steps)
            rates.append(rates[-1])
        return nn.piecewise_constant_lr(milestones, rates)[:total_steps]
    raise UserError(f"lr_decay_mode {mode!r} is not one of {', '.join(DECAY_MODES)}")


def noise_factors(schedule: Schedule) -> np.ndarray:
    """Per epoch, the factor timm's --lr-noise puts on its learning rate: 1 + n for the epochs e with
    START x epochs <= e < END x epochs, n normal, drawn from (seed, e) and redrawn until |n| < NOISE_LIMIT
    (timm's distribution; its draws come from torch's generator); 1 elsewhere."""
    factors = np.ones(schedule.epochs)
    if schedule.noise:
        start, end = (fraction * schedule.epochs for fraction in schedule.noise)
        for epoch in range(schedule.epochs):
            if start <= epoch < end:
                rng = np.random.default_rng([schedule.seed, epoch])
                noise = rng.standard_normal()
                while abs(noise) >= NOISE_LIMIT:
                    noise = rng.standard_normal()
                factors[epoch] = 1 + noise
    return factors


def learning_rates(schedule: Schedule, steps_per_epoch: int) -> np.ndarray:
    """One float32 learning rate per training step of the whole run."""
    total = schedule.epochs * steps_per_epoch
    warmup_steps = min(schedule.warmup_epochs * steps_per_epoch, total)
    rates = warmup(schedule.max_lr, warmup_steps) + list(decay(schedule, total - warmup_steps, steps_per_epoch))
    return np.asarray(np.asarray(rates) * np.repeat(noise_factors(schedule), steps_per_epoch), dtype=np.float32)


def cosine_epochs(schedule: Schedule) -> int:
    """The epochs the cosine takes from max_lr to min_lr: decay_epoch, else those after warmup."""
    return schedule.decay_epoch or max(schedule.epochs - schedule.warmup_epochs, 1)


def schedule_warnings(schedule: Schedule) -> list:
    """What makes the schedule end elsewhere than the run: warmup that fills the run, a cosine that ends after
    it (with the learning rate the run ends at)."""
    warnings = []
    if schedule.warmup_epochs >= schedule.epochs:
        warnings.append(f"warmup_epochs {schedule.warmup_epochs} fills the whole run of {schedule.epochs} epochs "
                        "(epoch_size): the learning rate only rises; lower warmup_epochs")
    elif schedule.mode == "cosine_decay_lr" and schedule.warmup_epochs + cosine_epochs(schedule) > schedule.epochs:
        last = learning_rates(dataclasses.replace(schedule, noise=()), 1)[-1]
        warnings.append(f"decay_epoch {schedule.decay_epoch} ends after the run (warmup_epochs {schedule.warmup_epochs} "
                        f"+ {schedule.decay_epoch} > epoch_size {schedule.epochs}): the last learning rate is "
                        f"{last:.4g}, {100 * last / schedule.max_lr:.0f}% of max_lr; leave decay_epoch out (0) for a "
                        "cosine that ends with the run")
    return warnings


def scaled_lr(base_lr: float, base_size: int, global_batch: int, rule: str) -> tuple:
    """(peak learning rate at `global_batch`, how it was found, in words) for `base_lr` at `base_size`: times
    global_batch / base_size ("linear") or its square root ("sqrt"), as timm scales --lr-base."""
    if global_batch == base_size:
        return base_lr, f"lr {base_lr:g} at global batch {global_batch} = lr_base_size"
    ratio = f"{global_batch}/{base_size}"
    factor = global_batch / base_size if rule == "linear" else math.sqrt(global_batch / base_size)
    lr = base_lr * factor
    return lr, f"lr {lr:.6g} = {base_lr:g} x {ratio if rule == 'linear' else f'sqrt({ratio})'}, {rule}"
