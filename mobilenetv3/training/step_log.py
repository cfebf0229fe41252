"""The seed's step line every `log_interval` steps, a summary per epoch, the guard against a loss gone
bad, and how an epoch is cut into sinks in dataset sink mode. The lines are logged (logger
mobilenetv3.training.step_log); the scripts print them on stdout, and train.log keeps them."""
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


def sink_size(steps: int, skip_steps: int, log_interval: int) -> int:
    """Steps per sink in dataset sink mode for an epoch of `steps` of which `skip_steps` are done.

    Callbacks run only between sinks, so every sink must end on a step the log prints (the multiples
    of log_interval and the epoch's last step), and none may run past the epoch's end: MindSpore would
    repeat this epoch's pipeline instead of starting the next one's.
    """
    return math.gcd(log_interval, steps, skip_steps)


def run_epoch(model, dataset, log, steps, skip_steps, log_interval, sink):
    """One epoch of `model.train` on `dataset` (its `steps - skip_steps` batches), sunk in
    sink_size(...) chunks when `sink`: each chunk is one of Model.train's epochs."""
    if not sink:
        model.train(1, dataset, callbacks=[log], dataset_sink_mode=False)
        return
    per_sink = sink_size(steps, skip_steps, log_interval)
    model.train((steps - skip_steps) // per_sink, dataset, callbacks=[log], dataset_sink_mode=True,
                sink_size=per_sink)


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


class StepLog(Callback):
    """The seed's step line every `log_interval` steps, a summary per epoch, and the LossGuard.

    One Model.train call runs one epoch, whether unsunk or in several sinks. In sink mode the callbacks
    see the last step of each sink: its loss, and the time of the sink divided by its steps. The
    learning rate printed is the one the optimiser last applied, read from its step counter, which a
    step skipped on overflow does not advance.
    """

    def __init__(self, lr, epochs, steps, batch_size, log_interval, global_step, printing=True, stop_signals=None):
        self.lr, self.epochs, self.steps, self.batch_size = lr, epochs, steps, batch_size
        self.log_interval, self.printing, self.stop_signals = log_interval, printing, stop_signals
        self.global_step = global_step  # the optimiser's count of applied steps (a Parameter)
        self.epoch, self.skipped = 0, 0  # skipped: steps of this epoch done before a resume
        self.steps_done = 0
        self.guard = LossGuard()

    def applied_steps(self) -> int:
        return int(self.global_step.asnumpy().reshape(-1)[0])

    def on_train_begin(self, run_context):
        self.losses, self.epoch_start, self.steps_done = [], time.time(), self.skipped
        self.applied_at_start, self.scale = self.applied_steps(), None

    def on_train_step_begin(self, run_context):
        self.step_start = time.time()

    def on_train_step_end(self, run_context):
        params = run_context.original_args()
        loss, overflow, self.scale = step_outputs(params.net_outputs)
        # cur_step_num counts the steps of this Model.train call; in sink mode several pass per callback.
        step = self.skipped + params.cur_step_num
        steps_run, self.steps_done = step - self.steps_done, step
        self.guard.check(loss, overflow, self.scale, self.epoch, step)
        if math.isfinite(loss):
            self.losses.append(loss)
        if self.printing and (step % self.log_interval == 0 or step == self.steps):
            applied = min(max(self.applied_steps() - 1, 0), len(self.lr) - 1)
            logger.info(LOG_FORMAT.format(epoch=self.epoch, epochs=self.epochs, step=step, steps=self.steps, loss=loss,
                                          mean=float(np.mean(self.losses)) if self.losses else loss,
                                          ms=1000 * (time.time() - self.step_start) / steps_run,
                                          lr=float(self.lr[applied])))
        if self.stop_signals is not None and self.stop_signals.received is not None:
            run_context.request_stop()

    def on_train_end(self, run_context):
        seconds = time.time() - self.epoch_start
        steps = self.steps_done - self.skipped
        skipped = steps - (self.applied_steps() - self.applied_at_start)
        applied = min(max(self.applied_steps() - 1, 0), len(self.lr) - 1)
        self.summary = dict(global_step=(self.epoch - 1) * self.steps + self.steps_done,
                            loss=float(np.mean(self.losses)) if self.losses else float("nan"),
                            lr=float(self.lr[applied]), steps=steps, seconds=round(seconds, 3),
                            images_per_second=round(steps * self.batch_size / seconds, 2))
        if self.scale is not None:
            self.summary.update(loss_scale=self.scale, overflow_steps=skipped)
        if self.printing:
            scaling = "" if self.scale is None else \
                f", loss scale {self.scale:g}, {skipped} steps skipped on fp16 overflow"
            logger.info(f"Epoch {self.epoch} finished: {steps} steps in {seconds:.1f} s, "
                        f"{self.summary['images_per_second']:.1f} img/s per process, "
                        f"mean loss {self.summary['loss']:.4f}{scaling}")
