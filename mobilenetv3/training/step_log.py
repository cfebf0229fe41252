"""The seed's step line, a summary per epoch, the epoch-end work and the guard against a loss gone bad,
as callbacks of the one Model.train call that runs a training run; and how the run is cut into sinks in
dataset sink mode. The lines are logged (logger mobilenetv3.training.step_log); the scripts print them on
stdout, and train.log keeps them."""
import logging
import math
import time

import numpy as np
from mindspore.train import Callback

from ..errors import UserError

logger = logging.getLogger(__name__)


# The seed README's step line: "Epoch:[ 90/ 120], step:[    1/ 2502], ...".
LOG_FORMAT = "Epoch:[{epoch:3d}/{epochs:4d}], step:[{step:5d}/{steps:5d}], loss:[{loss:.3f}/{mean:.3f}], " \
             "time:{ms:.3f} ms, lr:{lr:.5f}"


class NonFiniteLoss(UserError):
    pass


# Sinks of at least this many steps, where the epoch's steps allow: each sink ends with a return to the
# host (the loss read back, the callbacks), a fixed cost that a step of tens of milliseconds must not pay
# often (docs/performance.md, Feeding GPUs).
MIN_SINK_STEPS = 100


def divisors(number: int) -> list:
    return [d for d in range(1, number + 1) if number % d == 0]


def sink_size(steps: int, skip_steps: int = 0, log_interval: int = 0, requested: int = 0) -> int:
    """Steps per sink in dataset sink mode, for epochs of `steps` steps of which the first epoch's first
    `skip_steps` ran before a resume.

    Callbacks (the step line, the epoch-end work, the stop signals) run only between sinks, and one
    Model.train call has one sink size, so it divides an epoch's steps and, resuming, the steps done of the
    first epoch. `requested` (--sink_size) is taken as it is; else the largest divisor not above
    `log_interval` (the user asked to see steps that often); else the smallest divisor of at least
    MIN_SINK_STEPS, or the whole epoch. A resume from a step the size does not divide sinks in their
    greatest common divisor.
    """
    if requested:
        if steps % requested:
            raise UserError(f"sink_size {requested} does not divide the {steps} steps of an epoch; use one of "
                            f"{', '.join(map(str, divisors(steps)))}, or 0 to have one chosen")
        size = requested
    elif log_interval:
        size = max(d for d in divisors(steps) if d <= log_interval)
    else:
        size = min((d for d in divisors(steps) if d >= MIN_SINK_STEPS), default=steps)
    return math.gcd(size, skip_steps) if skip_steps else size


def run(model, dataset, log, steps: int, sink: int = 0):
    """The rest of a training run: `steps` batches of `dataset` through `model`, in sinks of `sink` steps
    (dataset sink mode; each sink one of Model.train's epochs), else unsunk, with `log` (a StepLog)."""
    if not sink:
        model.train(1, dataset, callbacks=[log], dataset_sink_mode=False)
        return
    model.train(steps // sink, dataset, callbacks=[log], dataset_sink_mode=True, sink_size=sink)


def step_outputs(outputs):
    """(loss, overflow, loss scale) of a train step's outputs; overflow False and scale None without
    loss scaling (TrainStep returns the loss alone, TrainOneStepWithLossScaleCell all three)."""
    if not isinstance(outputs, (tuple, list)):
        return float(outputs.asnumpy()), False, None
    loss, overflow, scale = outputs
    return float(loss.asnumpy()), bool(overflow.asnumpy()), float(scale.asnumpy())


class LossGuard:
    """Decides when a bad loss ends training.

    Without loss scaling any non-finite loss ends it. With dynamic loss scaling (O2/O3) an fp16
    overflow is routine: the step is skipped and the scale lowered. There training ends only after
    PATIENCE observed steps in a row whose loss is non-finite or that overflowed at the smallest scale
    (1, where MindSpore stops lowering it, so every further step would be skipped too). In sink mode
    the guard observes the last step of each sink.
    """
    PATIENCE = 5

    def __init__(self):
        self.bad_in_a_row = 0

    def check(self, loss, overflow, scale, epoch, step):
        advice = "The last good checkpoint is kept; lower max_lr or check the data, then --resume auto"
        if scale is None:
            if not math.isfinite(loss):
                raise NonFiniteLoss(f"loss is {loss} at epoch {epoch}, step {step}: stopping. {advice}")
            return
        collapsed = overflow and scale <= 1.0
        self.bad_in_a_row = self.bad_in_a_row + 1 if collapsed or not math.isfinite(loss) else 0
        if self.bad_in_a_row < self.PATIENCE:
            return
        in_a_row = f"in {self.bad_in_a_row} observed steps in a row"
        if math.isfinite(loss):
            raise NonFiniteLoss(f"gradients overflowed at loss scale {scale:g} (the smallest) {in_a_row} up to epoch "
                                f"{epoch}, step {step}: stopping. {advice}")
        raise NonFiniteLoss(f"loss is {loss} at epoch {epoch}, step {step}, {in_a_row} (loss scale {scale:g}): "
                            f"stopping. {advice}")


class DivergenceWatch:
    """Warns once when the mean loss over a log interval, after warmup, exceeds 3 x ln(num_classes), three
    times the loss of a uniform guess: a run that learns stays far below it, one whose learning rate is too
    high for its batch climbs past it and keeps going without ever giving a NaN. `context` says the learning
    rate, global batch and scaling rule in the warning."""

    def __init__(self, num_classes: int, warmup_steps: int, context: str):
        self.limit = 3 * math.log(num_classes) if num_classes > 1 else math.inf
        self.warmup_steps, self.context, self.warned = warmup_steps, context, False

    def check(self, mean_loss: float, global_step: int, epoch: int, step: int):
        if self.warned or global_step <= self.warmup_steps or not mean_loss > self.limit:
            return
        self.warned = True
        logger.warning(f"training is diverging: the mean loss of the steps up to epoch {epoch}, step {step} is "
                       f"{mean_loss:.3f}, above 3 x ln(num_classes) = {self.limit:.3f}, after warmup ({self.context}); "
                       "lower max_lr or lengthen warmup_epochs, then start again or --resume an earlier checkpoint")


class StepLog(Callback):
    """What happens between the steps of a training run: the seed's step line, the LossGuard, a summary at
    each epoch's end followed by `on_epoch_end(epoch, summary, stopping)` (the trainer's checkpoint,
    validation and metrics), and a stop once a stop signal was received.

    One Model.train call runs the rest of the run, starting `skipped` steps into `epoch`. Unsunk, the
    callbacks see every step and the line is printed every `log_interval` steps and at each epoch's end;
    sunk, they see the last step of each sink, its loss, and the time of the sink divided by its steps, and
    the line is printed at every sink's end (log_interval 0). The learning rate printed is the one the
    optimiser last applied, read from its step counter, which a step skipped on overflow does not advance.

    At each of these boundaries the ranks agree whether to stop: `agree(signal number or 0)` returns the
    largest over the ranks (a collective every rank calls at the same boundary; identity for one process),
    so all stop at the same step, after that epoch's end work if it is one; `stop_signum` then says which.

    Where it prints, at each line the mean loss of the steps since the last one goes to `divergence` (a
    DivergenceWatch), and the line's figures to `scalars(global step, {tag: value})` (TensorBoard).
    """

    def __init__(self, lr, epochs, steps, batch_size, log_interval, global_step, epoch=1, skipped=0, printing=True,
                 stop_signals=None, on_epoch_end=None, agree=lambda signum: signum, divergence=None, scalars=None):
        self.lr, self.epochs, self.steps, self.batch_size = lr, epochs, steps, batch_size
        self.log_interval, self.printing, self.stop_signals = log_interval, printing, stop_signals
        self.on_epoch_end, self.agree, self.stop_signum = on_epoch_end, agree, 0
        self.divergence, self.scalars, self.interval_losses = divergence, scalars, []
        self.global_step = global_step  # the optimiser's count of applied steps (a Parameter)
        self.epoch, self.skipped = epoch, skipped  # skipped: steps of this epoch done before a resume
        self.steps_done = skipped  # of this epoch
        self.run_steps = 0  # of this Model.train call
        self.guard = LossGuard()

    def applied_steps(self) -> int:
        return int(self.global_step.asnumpy().reshape(-1)[0])

    def start_epoch(self):
        self.losses, self.epoch_start, self.scale = [], time.time(), None
        self.applied_at_start = self.applied_steps()

    def on_train_begin(self, run_context):
        if self.printing:  # the first step (or sink) compiles the graph first, tens of seconds without a line
            logger.info("compiling the network (first step)")
        self.start_epoch()

    def on_train_step_begin(self, run_context):
        self.step_start = time.time()

    def on_train_step_end(self, run_context):
        params = run_context.original_args()
        loss, overflow, self.scale = step_outputs(params.net_outputs)
        # cur_step_num counts the steps of this Model.train call; in sink mode a sink's pass per callback.
        steps_run, self.run_steps = params.cur_step_num - self.run_steps, params.cur_step_num
        self.steps_done += steps_run
        step = self.steps_done
        self.guard.check(loss, overflow, self.scale, self.epoch, step)
        if math.isfinite(loss):
            self.losses.append(loss)
            self.interval_losses.append(loss)
        if self.printing and (not self.log_interval or step % self.log_interval == 0 or step == self.steps):
            self.print_line(loss, step, time.time() - self.step_start, steps_run)
        if self.stop_signals is not None:
            self.stop_signum = self.agree(self.stop_signals.received or 0)
        if step == self.steps:
            self.end_epoch()
        if self.stop_signum:
            run_context.request_stop()

    def print_line(self, loss, step, seconds, steps_run):
        """The seed's step line for `step` of this epoch, which took `seconds` for the `steps_run` steps since
        the last callback; the interval's mean loss to the divergence watch, the figures to scalars."""
        applied = min(max(self.applied_steps() - 1, 0), len(self.lr) - 1)
        lr = float(self.lr[applied])
        logger.info(LOG_FORMAT.format(epoch=self.epoch, epochs=self.epochs, step=step, steps=self.steps, loss=loss,
                                      mean=float(np.mean(self.losses)) if self.losses else loss,
                                      ms=1000 * seconds / steps_run, lr=lr))
        global_step = (self.epoch - 1) * self.steps + step
        if self.divergence is not None and self.interval_losses:
            self.divergence.check(float(np.mean(self.interval_losses)), global_step, self.epoch, step)
        if self.scalars is not None:
            self.scalars(global_step, {"train/loss": loss, "train/lr": lr,
                                       "train/images_per_second": steps_run * self.batch_size / max(seconds, 1e-9)})
        self.interval_losses = []

    def end_epoch(self):
        """The epoch's summary (what metrics.jsonl records), its line, on_epoch_end, then the next epoch."""
        seconds = time.time() - self.epoch_start
        steps = self.steps_done - self.skipped
        skipped = steps - (self.applied_steps() - self.applied_at_start)
        applied = min(max(self.applied_steps() - 1, 0), len(self.lr) - 1)
        summary = dict(global_step=self.epoch * self.steps,
                       loss=float(np.mean(self.losses)) if self.losses else float("nan"),
                       lr=float(self.lr[applied]), steps=steps, seconds=round(seconds, 3),
                       images_per_second=round(steps * self.batch_size / seconds, 2))
        if self.skipped:  # resumed within this epoch: the figures are those of the steps after the resume
            summary.update(resumed_after_step=self.skipped)
        if self.scale is not None:
            summary.update(loss_scale=self.scale, overflow_steps=skipped)
        if self.printing:
            scaling = "" if self.scale is None else \
                f", loss scale {self.scale:g}, {skipped} steps skipped on fp16 overflow"
            resumed = f" (resumed after step {self.skipped})" if self.skipped else ""
            logger.info(f"Epoch {self.epoch} finished: {steps} steps{resumed} in {seconds:.1f} s, "
                        f"{summary['images_per_second']:.1f} img/s per process, "
                        f"mean loss {summary['loss']:.4f}{scaling}")
        if self.on_epoch_end is not None:
            self.on_epoch_end(self.epoch, summary, bool(self.stop_signum))
        self.epoch, self.skipped, self.steps_done = self.epoch + 1, 0, 0
        self.start_epoch()
