"""The step log, the epoch-end work and the loss guard, driven the way MindSpore's Model.train calls its
callbacks, over the one Model.train call that runs a whole training run.

Dataset sink mode exists only on GPU and Ascend (on CPU MindSpore trains unsunk whatever is asked), so
FakeModel replays the callback order of Model._train_dataset_sink_process (MindSpore 2.10, model.py):
per sink one step_begin, then step_end with cur_step_num advanced by the sink size; a stop requested in a
callback ends the call after that sink. Unsunk: the same per step.
"""
import re
from types import SimpleNamespace

import numpy as np
import pytest
import mindspore as ms

from mobilenetv3.errors import UserError
from mobilenetv3.training import step_log
from mobilenetv3.training.step_log import LOG_FORMAT, DivergenceWatch, LossGuard, NonFiniteLoss, StepLog, sink_size
from conftest import STEP_LINE


class FakeModel:
    """Model.train's callback calls. `outputs(global_step)` gives the train step's outputs for step
    `global_step` (0-based over the run) and whether the optimiser applied it."""

    def __init__(self, outputs, global_step):
        self.outputs, self.global_step, self.calls, self.done = outputs, global_step, [], 0

    def train(self, epoch, dataset, callbacks, dataset_sink_mode, sink_size=-1):
        size = dataset.get_dataset_size()
        sinks, per_call = (epoch, sink_size) if dataset_sink_mode else (size, 1)
        assert sinks * per_call == size  # the run's steps, no more
        self.calls.append((epoch, dataset_sink_mode, sink_size))
        params = SimpleNamespace(cur_step_num=0, net_outputs=None, dataset_sink_mode=dataset_sink_mode)
        stop = []
        context = SimpleNamespace(original_args=lambda: params, request_stop=lambda: stop.append(True))
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
            if stop:
                break
        for callback in callbacks:
            callback.on_train_end(context)


def dataset_of(size):
    return SimpleNamespace(get_dataset_size=lambda: size)


def plain_loss(step):
    return ms.Tensor(np.float32(2.0 + step / 100)), True


def run(steps, log_interval=0, sink=0, outputs=plain_loss, skip=0, epochs=2, lr=None, stop_at=None,
        agree=lambda signum: signum, divergence=None, summaries=None):
    """Train `epochs` epochs of `steps` (the first resumed after `skip`) in one Model.train call, in sinks of
    `sink` steps (0: unsunk); a stop signal arrives during run step `stop_at` (0-based). Returns (the fake
    model's train calls, the epoch-end calls as (epoch, summary steps, global_step), the StepLog); the log is
    printed."""
    lr = np.arange(1, epochs * steps + 1, dtype=np.float32) / 1000 if lr is None else lr
    global_step = ms.Parameter(ms.Tensor([skip], ms.int32), name="global_step")
    ends = []
    stop_signals = SimpleNamespace(received=None)

    def outputs_and_signal(step):
        if step == stop_at:
            stop_signals.received = 15
        return outputs(step)

    model = FakeModel(outputs_and_signal, global_step)
    model.done = skip
    def on_epoch_end(epoch, summary, stopping):
        ends.append((epoch, summary["global_step"], stopping))
        if summaries is not None:
            summaries.append(summary)
    log = StepLog(lr, epochs, steps, 8, log_interval, global_step, epoch=1, skipped=skip, stop_signals=stop_signals,
                  on_epoch_end=on_epoch_end, agree=agree, divergence=divergence)
    step_log.run(model, dataset_of(epochs * steps - skip), log, epochs * steps - skip, sink)
    return model.calls, ends, log


def step_fields(text):
    return [(int(e), int(s), l, r) for e, s, l, r in
            re.findall(r"Epoch:\[ *(\d+)/ *\d+\], step:\[ *(\d+)/ *\d+\], loss:\[([\d.naif]+)/[\d.naif]+\], "
                       r"time:[\d.]+ ms, lr:([\d.]+)", text)]


def test_step_line_has_the_seed_widths():
    line = LOG_FORMAT.format(epoch=90, epochs=120, step=1, steps=2502, loss=2.771, mean=2.771, ms=177.988, lr=0.07329)
    assert line == "Epoch:[ 90/ 120], step:[    1/ 2502], loss:[2.771/2.771], time:177.988 ms, lr:0.07329"
    assert STEP_LINE.match(line)
    assert not STEP_LINE.match(line.replace("[ 90/ 120]", "[ 90/120]"))  # the 3-wide epoch count of before


@pytest.mark.parametrize("steps,skip,log_interval,requested,expected", [
    (2502, 0, 0, 0, 139),  # ImageNet on 8 ranks at batch 64: the smallest divisor of at least 100
    (5004, 0, 0, 0, 139), (12, 0, 0, 0, 12), (97, 0, 0, 0, 97),  # no such divisor: the whole epoch
    (2502, 0, 100, 0, 18), (2502, 0, 1, 0, 1), (12, 0, 4, 0, 4), (10, 0, 4, 0, 2),  # at most log_interval
    (12, 0, 0, 6, 6), (12, 0, 4, 12, 12),  # --sink_size wins
    (2502, 278, 0, 0, 139), (2502, 1, 0, 0, 1), (12, 2, 4, 0, 2), (12, 8, 4, 0, 4)])  # resumed: a divisor of both
def test_sink_size_divides_the_epoch_and_its_resumed_part(steps, skip, log_interval, requested, expected):
    assert sink_size(steps, skip, log_interval, requested) == expected


def test_a_sink_size_that_does_not_divide_an_epoch_is_refused_with_the_sizes_that_do():
    with pytest.raises(UserError, match=r"^sink_size 5 does not divide the 12 steps of an epoch; use one of "
                                        r"1, 2, 3, 4, 6, 12, or 0 to have one chosen$"):
        sink_size(12, requested=5)


@pytest.mark.parametrize("steps,log_interval,skip", [(12, 4, 0), (10, 4, 0), (12, 4, 2), (12, 1, 5), (7, 3, 0)])
def test_a_run_is_one_train_call_whose_sinks_print_the_lines_of_an_unsunk_run(capsys, steps, log_interval, skip):
    unsunk_calls, unsunk_ends, _ = run(steps, 1, skip=skip)
    unsunk = capsys.readouterr().out
    per_sink = sink_size(steps, skip, log_interval)
    sunk_calls, sunk_ends, _ = run(steps, 0, sink=per_sink, skip=skip)  # the trainer logs every sink's end
    sunk = capsys.readouterr().out
    expected = [(epoch, step) for epoch in (1, 2) for step in range(skip + 1 if epoch == 1 else 1, steps + 1)
                if step % per_sink == 0 or step == steps]
    assert [(e, s) for e, s, _, _ in step_fields(sunk)] == expected
    unsunk_at_sink_ends = [f for f in step_fields(unsunk) if f[1] % per_sink == 0 or f[1] == steps]
    assert step_fields(sunk) == unsunk_at_sink_ends  # same steps, losses and learning rates
    assert all(STEP_LINE.match(line) for line in sunk.splitlines() if line.startswith("Epoch:["))
    assert unsunk_calls == [(1, False, -1)] and sunk_calls == [((2 * steps - skip) // per_sink, True, per_sink)]
    assert re.findall(r"Epoch (\d) finished: (\d+) steps", sunk) == [("1", str(steps - skip)), ("2", str(steps))]
    # The epoch-end work runs once per epoch, at its last step, in both modes.
    assert unsunk_ends == sunk_ends == [(1, steps, False), (2, 2 * steps, False)]


def test_unsunk_the_line_comes_every_log_interval_steps_and_at_the_epoch_end(capsys):
    calls, _, _ = run(5, 0, epochs=1)
    assert calls == [(1, False, -1)]
    assert [s for _, s, _, _ in step_fields(capsys.readouterr().out)] == [1, 2, 3, 4, 5]  # 0: every step
    run(10, 4, epochs=2)
    assert [(e, s) for e, s, _, _ in step_fields(capsys.readouterr().out)] == [(1, 4), (1, 8), (1, 10), (2, 4),
                                                                                (2, 8), (2, 10)]


@pytest.mark.parametrize("sink", [0, 3])
def test_a_stop_signal_ends_the_run_at_the_next_step_or_sink_after_the_epoch_end_work(sink, capsys):
    _, ends, log = run(6, 0, sink=sink, stop_at=7)  # run step 7: epoch 2, its second step
    stopped_at = 3 if sink else 2  # the end of that sink, else that step
    assert (log.epoch, log.steps_done, log.stop_signum) == (2, stopped_at, 15) and ends == [(1, 6, False)]
    _, ends, log = run(6, 0, sink=sink, stop_at=5)  # the last step of epoch 1: its work runs, told it stops
    assert (log.epoch, log.steps_done) == (2, 0) and ends == [(1, 6, True)]


@pytest.mark.parametrize("sink", [0, 3])
def test_a_signal_another_rank_received_stops_this_one_at_the_same_boundary(sink):
    """No signal here; the agreement (the largest of every rank's signal) says another rank got SIGUSR1 by the
    boundary of run step 8: the run stops there as that rank's does. The agreement is asked at every boundary."""
    asked = []

    def agree(signum):
        asked.append(signum)
        return 10 if len(asked) * (sink or 1) >= 8 else signum
    _, ends, log = run(6, 0, sink=sink, agree=agree)
    assert (log.epoch, log.steps_done, log.stop_signum) == (2, 3 if sink else 2, 10) and ends == [(1, 6, False)]
    assert asked == [0] * len(asked) and len(asked) == (3 if sink else 8)


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
    run(6, 1, outputs=loss_scaled(overflow_at))
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
        run(6, 1, outputs=loss_scaled(nan_at=four_then_five, scale=64.0))
    out = capsys.readouterr().out
    assert "Epoch 1 finished" in out and "step:[    5/    6], loss:[nan/" in out  # run on through the four


def test_overflow_at_the_smallest_loss_scale_stops_even_with_a_finite_loss():
    """In sink mode the guard sees the last step of each sink (here every second step)."""
    with pytest.raises(NonFiniteLoss, match=r"gradients overflowed at loss scale 1 \(the smallest\) in 5 observed "
                                            r"steps in a row up to epoch 1, step 10"):
        run(20, 0, sink=2, outputs=loss_scaled(overflow_at=range(100), scale=4.0), epochs=1)


def test_without_loss_scaling_a_non_finite_loss_stops_at_once():
    guard = LossGuard()
    guard.check(2.0, False, None, 1, 1)
    with pytest.raises(NonFiniteLoss, match=r"^loss is inf at epoch 1, step 2: stopping"):
        guard.check(float("inf"), False, None, 1, 2)


def test_the_compile_is_announced_before_the_first_step(capsys):
    run(3, 0, epochs=1)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "compiling the network (first step)" and lines[1].startswith("Epoch:[  1/   1], step:[    1/")
    assert lines.count("compiling the network (first step)") == 1


def test_a_resumed_epoch_is_recorded_as_such_with_the_steps_it_counted(capsys):
    summaries = []
    run(6, 0, skip=2, summaries=summaries)
    out = capsys.readouterr().out
    assert [(s["steps"], s.get("resumed_after_step")) for s in summaries] == [(4, 2), (6, None)]
    assert summaries[0]["loss"] == pytest.approx(np.mean([2.0 + step / 100 for step in range(2, 6)]))
    assert re.findall(r"Epoch (\d) finished: (\d) steps( \(resumed after step 2\))? in", out) == \
        [("1", "4", " (resumed after step 2)"), ("2", "6", "")]


def climbing(step):
    """A loss that settles, then climbs without ever becoming NaN (as with a learning rate too high)."""
    return ms.Tensor(np.float32(1.0 if step < 8 else 1.0 + (step - 8))), True


def test_a_loss_climbing_far_above_chance_after_warmup_is_warned_once(capsys):
    """3 classes: the limit is 3 x ln 3 = 3.296 for the mean loss of each log interval (here 2 steps)."""
    watch = DivergenceWatch(3, warmup_steps=4, context="lr 0.4 = 0.1 x 2048/512, linear")
    run(6, 2, outputs=climbing, divergence=watch)
    err = capsys.readouterr().err
    # Losses by 0-based step: 1 (0-7), 2, 3, 4, 5: the interval of steps 11-12 (loss 3 and 4, mean 3.5) passes.
    assert err.count("training is diverging") == 1, err
    assert ("warning: training is diverging: the mean loss of the steps up to epoch 2, step 6 is 3.500, above 3 x "
            "ln(num_classes) = 3.296, after warmup (lr 0.4 = 0.1 x 2048/512, linear); lower max_lr") in err


def test_no_divergence_warning_during_warmup_or_below_the_limit_and_nan_still_stops(capsys):
    early = DivergenceWatch(3, warmup_steps=12, context="")  # the climb happens within warmup
    run(6, 2, outputs=climbing, divergence=early)
    calm = DivergenceWatch(1000, warmup_steps=0, context="")  # 3 x ln 1000 = 20.7: never reached
    run(6, 2, outputs=climbing, divergence=calm)
    assert "diverging" not in capsys.readouterr().err
    with pytest.raises(NonFiniteLoss):
        run(6, 2, outputs=lambda step: (ms.Tensor(np.float32("nan")), True), divergence=DivergenceWatch(3, 0, ""))
