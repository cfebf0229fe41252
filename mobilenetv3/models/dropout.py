"""Dropout whose masks are a pure function of (seed, step), so a resumed run draws the masks an
uninterrupted one would; dropped per element (dropout) or per sample (stochastic depth, "drop path").

MindSpore 2.10's CPU Dropout kernel keeps a generator state that cannot be read or set, and the ops
that take a seed and offset instead (mint.nn.Dropout, UniformExt, BernoulliExt, ...) have no CPU
kernel. StepDropout therefore hashes (seed, step, element index) with integer ops into its mask.
Its seed and step counter live outside the model's parameters, so parameter names, checkpoints,
converted weights and exports are those of nn.Dropout; the trainer sets them with `set_state` when it
starts or resumes, from the run's seed, the rank and the global step.
"""
import mindspore as ms
from mindspore import nn, ops

LOW_32_BITS = 0xFFFFFFFF
MASK_BITS = 24  # a uniform integer in [0, 2**24) per element
INDEX_SPREAD = 0x61C88647  # odd, 2**32 over the golden ratio; below 2**31, so index * INDEX_SPREAD fits int64
# Stream k starts its steps at k * STREAM_SPREAD mod 2**32; for 0 < k < 64 that is at least 61 million from 0
# either way, so two streams draw the same masks only in a run of more steps than that.
STREAM_SPREAD = 0x85EBCA6B
MAX_STREAMS = 64


def hash32(x):
    """Thomas Mueller's 32-bit integer hash (two xorshift-multiply rounds, one xorshift) of int64 tensors
    holding values in [0, 2**32); the multiplier is below 2**27, so no int64 product overflows."""
    for _ in range(2):
        x = ops.bitwise_and(ops.bitwise_xor(ops.bitwise_right_shift(x, 16), x) * 0x45D9F3B, LOW_32_BITS)
    return ops.bitwise_xor(ops.bitwise_right_shift(x, 16), x)


@ms.jit_class
class DropoutState:
    """The seed and the number of training-mode calls so far; a jit_class keeps these Parameters out of
    the Cell tree, so they are not model parameters. A graph needs their names unique: one per stream."""

    def __init__(self, stream: int = 0):
        suffix = f"_{stream}" if stream else ""
        self.seed = ms.Parameter(ms.Tensor(0, ms.int64), name=f"dropout_seed{suffix}", requires_grad=False)
        self.step = ms.Parameter(ms.Tensor(0, ms.int64), name=f"dropout_step{suffix}", requires_grad=False)


class StepDropout(nn.Cell):
    """nn.Dropout(p) with masks drawn from (seed, step, stream): in training mode each element is kept with
    probability 1 - p and scaled by 1 / (1 - p), and every call advances the step by one. In eval mode it
    returns its input unchanged and the step stays.

    With `per_sample`, each sample (along the first axis) is kept or dropped whole: stochastic depth on a
    residual branch. `stream` tells apart cells that share (seed, step), so that each draws its own masks."""

    def __init__(self, p: float, per_sample: bool = False, stream: int = 0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout p must be in [0, 1), got {p!r}")
        if not 0 <= stream < MAX_STREAMS:
            raise ValueError(f"stream must be in [0, {MAX_STREAMS}), got {stream!r}")
        self.p, self.per_sample, self.stream = p, per_sample, stream
        self.state = DropoutState(stream)
        self.one = ms.Tensor(1, ms.int64)

    def construct(self, x):
        if not self.training or self.p == 0:
            return x
        stream = hash32(ops.bitwise_and(hash32(ops.bitwise_and(self.state.seed, LOW_32_BITS)) + self.state.step
                                        + (self.stream * STREAM_SPREAD & LOW_32_BITS), LOW_32_BITS))
        if self.per_sample:
            count, shape = x.shape[0], (x.shape[0],) + (1,) * (x.ndim - 1)
        else:
            count, shape = x.size, x.shape
        # Spreading the index over all 32 bits first leaves no measurable correlation between neighbours.
        index = ops.bitwise_and(ops.arange(count, dtype=ms.int64).reshape(shape) * INDEX_SPREAD, LOW_32_BITS)
        uniform = ops.bitwise_right_shift(hash32(ops.bitwise_xor(index, stream)), 32 - MASK_BITS)
        keep = uniform >= int(self.p * 2 ** MASK_BITS)
        ops.assign_add(self.state.step, self.one)
        return x * keep.astype(x.dtype) * (1.0 / (1.0 - self.p))

    def extend_repr(self):
        return f"p={self.p}" + (f", per_sample=True, stream={self.stream}" if self.per_sample else "")


def set_state(net: nn.Cell, seed: int, step: int):
    """Make every StepDropout in `net` draw the masks of `seed` from `step` on (all of them the same)."""
    for _, cell in net.cells_and_names():
        if isinstance(cell, StepDropout):
            cell.state.seed.set_data(ms.Tensor(seed, ms.int64))
            cell.state.step.set_data(ms.Tensor(step, ms.int64))


def get_state(net: nn.Cell):
    """(seed, step) of the first StepDropout in `net` that draws masks (p > 0), or None if it has none."""
    for _, cell in net.cells_and_names():
        if isinstance(cell, StepDropout) and cell.p > 0:
            return int(cell.state.seed.asnumpy()), int(cell.state.step.asnumpy())
    return None
