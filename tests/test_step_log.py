"""The step log and the loss guard, driven the way MindSpore's Model.train calls its callbacks.

Dataset sink mode exists only on GPU and Ascend (on CPU MindSpore trains unsunk whatever is asked), so
FakeModel replays the callback order of Model._train_dataset_sink_process (MindSpore 2.10, model.py):
per sink one epoch_begin, step_begin, step_end with cur_step_num advanced by the sink size, epoch_end.
"""
import re
from types import SimpleNamespace

import numpy as np
import pytest
import mindspore as ms

from mobilenetv3.training.step_log import LOG_FORMAT, LossGuard, NonFiniteLoss, StepLog, run_epoch, sink_size
from conftest import STEP_LINE


class FakeModel:
    """Model.train's callback calls. `outputs(global_step)` gives the train step's outputs for step
    `global_step` (0-based over the run) and whether the optimiser applied it."""

    def __init__(self, outputs, global_step):
        self.outputs, self.global_step, self.calls, self.done = outputs, global_step, [], 0

    def train(self, epoch, dataset, callbacks, dataset_sink_mode, sink_size=-1):
        size = dataset.get_dataset_size()
        sinks, per_call = (epoch, sink_size) if dataset_sink_mode else (size, 1)
        assert sinks * per_call == size  # no sink runs past the epoch's end
        self.calls.append((epoch, dataset_sink_mode, sink_size))
        params = SimpleNamespace(cur_step_num=0, net_outputs=None, dataset_sink_mode=dataset_sink_mode)
        context = SimpleNamespace(original_args=lambda: params, request_stop=lambda: None)
        for callback in callbacks:
            callback.on_train_begin(context)
        for _ in range(sinks):
            for callback in callbacks:
                callback.on_train_step_begin(context)
            for _ in range(per_call):
                params.net_outputs, applied = self.outputs(self.done)
                self.done += 1
                if applied:
                    self.global_step.set_data(self.global_step + 1)
            params.cur_step_num += per_call
            for callback in callbacks:
                callback.on_train_step_end(context)
        for callback in callbacks:
            callback.on_train_end(context)


def dataset_of(size):
    return SimpleNamespace(get_dataset_size=lambda: size)


def plain_loss(step):
    return ms.Tensor(np.float32(2.0 + step / 100)), True


def run(steps, log_interval, sink, outputs=plain_loss, skip=0, epochs=2, lr=None):
    """Train `epochs` epochs of `steps` (the first resumed after `skip`); returns the fake model's
    train calls (the log is printed)."""
    lr = np.arange(1, epochs * steps + 1, dtype=np.float32) / 1000 if lr is None else lr
    global_step = ms.Parameter(ms.Tensor([0], ms.int32), name="global_step")
    model = FakeModel(outputs, global_step)
    model.done = skip
    global_step.set_data(ms.Tensor([skip], ms.int32))
    log = StepLog(lr, epochs, steps, 8, log_interval, global_step)
    for epoch in range(1, epochs + 1):
        log.epoch, log.skipped = epoch, skip
        run_epoch(model, dataset_of(steps - skip), log, steps, skip, log_interval, sink)
        skip = 0
    return model.calls


def step_fields(text):
    return [(int(e), int(s), l, r) for e, s, l, r in
            re.findall(r"Epoch:\[ *(\d+)/ *\d+\], step:\[ *(\d+)/ *\d+\], loss:\[([\d.naif]+)/[\d.naif]+\], "
                       r"time:[\d.]+ ms, lr:([\d.]+)", text)]


def test_step_line_has_the_seed_widths():
    line = LOG_FORMAT.format(epoch=90, epochs=120, step=1, steps=2502, loss=2.771, mean=2.771, ms=177.988, lr=0.07329)
    assert line == "Epoch:[ 90/ 120], step:[    1/ 2502], loss:[2.771/2.771], time:177.988 ms, lr:0.07329"
    assert STEP_LINE.match(line)
    assert not STEP_LINE.match(line.replace("[ 90/ 120]", "[ 90/120]"))  # the 3-wide epoch count of before


@pytest.mark.parametrize("steps,log_interval,skip,expected", [
    (12, 4, 0, 4), (12, 1, 0, 1), (10, 4, 0, 2), (12, 4, 2, 2), (12, 4, 8, 4), (2502, 100, 0, 2)])
def test_sink_size_ends_every_sink_on_a_logged_step(steps, log_interval, skip, expected):
    assert sink_size(steps, skip, log_interval) == expected


@pytest.mark.parametrize("steps,log_interval,skip", [(12, 4, 0), (10, 4, 0), (12, 4, 2), (12, 1, 5), (7, 3, 0)])
def test_sink_mode_prints_the_lines_of_an_unsunk_run(capsys, steps, log_interval, skip):
    run(steps, log_interval, sink=False, skip=skip)
    unsunk = capsys.readouterr().out
    calls = run(steps, log_interval, sink=True, skip=skip)
    sunk = capsys.readouterr().out
    expected = [(epoch, step) for epoch in (1, 2) for step in range(skip + 1 if epoch == 1 else 1, steps + 1)
                if step % log_interval == 0 or step == steps]
    assert [(e, s) for e, s, _, _ in step_fields(unsunk)] == expected
    assert step_fields(sunk) == step_fields(unsunk)  # same steps, losses and learning rates
    assert all(STEP_LINE.match(line) for line in sunk.splitlines() if line.startswith("Epoch:["))
    per_sink = sink_size(steps, skip, log_interval)
    assert calls[0] == ((steps - skip) // per_sink, True, per_sink)
    assert re.findall(r"Epoch (\d) finished: (\d+) steps", sunk) == [("1", str(steps - skip)), ("2", str(steps))]


def test_seed_default_log_interval_one_sinks_every_step(capsys):
    calls = run(5, 1, sink=True, epochs=1)
    assert calls == [(5, True, 1)]
    assert [s for _, s, _, _ in step_fields(capsys.readouterr().out)] == [1, 2, 3, 4, 5]


def loss_scaled(overflow_at=(), nan_at=(), scale=1024.0):
    """Outputs of TrainOneStepWithLossScaleCell (loss, overflow, scale) under dynamic loss scaling:
    an overflowing step (a non-finite loss overflows too) is not applied and halves the scale, down to 1."""
    state = {"scale": scale}

    def outputs(step):
        loss = float("nan") if step in nan_at else 2.0 + step / 100
        overflow = step in overflow_at or step in nan_at
        if overflow:
            state["scale"] = max(state["scale"] / 2, 1.0)
        return (ms.Tensor(np.float32(loss)), ms.Tensor(overflow), ms.Tensor(np.float32(state["scale"]))), not overflow
    return outputs


def test_overflow_under_loss_scaling_skips_steps_without_stopping_and_logs_the_applied_lr(capsys):
    overflow_at = (1, 2, 6)  # 0-based steps of the run; 6 steps per epoch
    run(6, 1, sink=False, outputs=loss_scaled(overflow_at))
    out = capsys.readouterr().out
    lr = np.arange(1, 13, dtype=np.float32) / 1000
    applied = np.cumsum([step not in overflow_at for step in range(12)])  # the optimiser's step counter
    assert [float(r) for _, _, _, r in step_fields(out)] == [float(f"{lr[a - 1]:.5f}") for a in applied]
    assert [float(r) for _, _, _, r in step_fields(out)][:4] == [0.001, 0.001, 0.001, 0.002]
    assert re.findall(r"Epoch \d finished: .*, loss scale (\d+), (\d) steps skipped on fp16 overflow", out) == \
        [("256", "2"), ("128", "1")]


def test_non_finite_loss_under_loss_scaling_stops_after_five_in_a_row(capsys):
    four_then_five = (2, 3, 4, 5, 7, 8, 9, 10, 11)  # four in a row, a good step, then five
    with pytest.raises(NonFiniteLoss, match=r"^loss is nan at epoch 2, step 6, in 5 observed steps in a row "
                                            r"\(loss scale 1\): stopping\. The last good checkpoint is kept"):
        run(6, 1, sink=False, outputs=loss_scaled(nan_at=four_then_five, scale=64.0))
    out = capsys.readouterr().out
    assert "Epoch 1 finished" in out and "step:[    5/    6], loss:[nan/" in out  # run on through the four


def test_overflow_at_the_smallest_loss_scale_stops_even_with_a_finite_loss():
    """In sink mode the guard sees the last step of each sink (here every second step)."""
    with pytest.raises(NonFiniteLoss, match=r"gradients overflowed at loss scale 1 \(the smallest\) in 5 observed "
                                            r"steps in a row up to epoch 1, step 10"):
        run(20, 2, sink=True, outputs=loss_scaled(overflow_at=range(100), scale=4.0), epochs=1)


def test_without_loss_scaling_a_non_finite_loss_stops_at_once():
    guard = LossGuard()
    guard.check(2.0, False, None, 1, 1)
    with pytest.raises(NonFiniteLoss, match=r"^loss is inf at epoch 1, step 2: stopping"):
        guard.check(float("inf"), False, None, 1, 2)
