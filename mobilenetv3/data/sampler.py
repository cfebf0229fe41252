"""The order in which one rank reads the samples of one epoch, drawn from (seed, epoch) alone."""
import math

import numpy as np


def epoch_steps(size: int, batch_size: int, repeats: int = 1, num_shards: int = 1) -> int:
    """Steps of a training epoch: each rank's padded shard of `repeats` passes over `size` samples, in
    whole batches."""
    return math.ceil(size * repeats / num_shards) // batch_size


class EpochSampler:
    """Sample order of one epoch for one rank, drawn from (seed, epoch) alone.

    The epoch holds `repeats` passes over the data, each its own permutation (keys of pass r are
    offset by r * size). Shards interleave (rank r takes every N-th key), so N ranks at batch B see
    together what one process at batch N*B sees. With `pad` the order wraps around so that every
    shard has the same length (training: all ranks must run the same number of steps); without,
    no sample is repeated (evaluation).
    """

    def __init__(self, size, shuffle, seed=0, epoch=0, repeats=1, num_shards=1, shard_id=0, pad=True):
        self.size, self.shuffle, self.seed, self.epoch, self.repeats = size, shuffle, seed, epoch, repeats
        self.num_shards, self.shard_id, self.pad = num_shards, shard_id, pad

    def indices(self) -> np.ndarray:
        passes = [np.random.default_rng([self.seed, self.epoch, r]).permutation(self.size) + r * self.size
                  if self.shuffle else np.arange(self.size) + r * self.size for r in range(self.repeats)]
        order = np.concatenate(passes)
        if self.pad:
            order = np.resize(order, math.ceil(len(order) / self.num_shards) * self.num_shards)  # wraps around
        return order[self.shard_id::self.num_shards]

    def __iter__(self):
        return iter(self.indices().tolist())

    def __len__(self):
        return len(self.indices())


class RunKeys:
    """The sample keys one rank reads in a training run, as (epoch, key) rows, epoch after epoch: epochs
    `first_epoch` to `first_epoch + epochs - 1` (counted from 0), each in EpochSampler's order cut to whole
    batches of `batch_size`, the first epoch's first `skip_steps` batches left out (a resumed run ran them).

    The random-access source of the one pipeline of a run: a row is computed when it is read, from the
    epoch's order, which is drawn once per epoch and kept until the next one is needed, so a run of
    hundreds of epochs over ImageNet holds one epoch's keys, not all of them.
    """

    def __init__(self, size: int, batch_size: int, first_epoch: int = 0, epochs: int = 1, skip_steps: int = 0,
                 seed: int = 0, repeats: int = 1, num_shards: int = 1, shard_id: int = 0):
        self.size, self.seed, self.repeats, self.num_shards, self.shard_id = size, seed, repeats, num_shards, shard_id
        self.first_epoch, self.epochs = first_epoch, epochs
        self.steps_per_epoch = epoch_steps(size, batch_size, repeats, num_shards)
        if not 0 <= skip_steps < max(self.steps_per_epoch, 1):
            raise ValueError(f"skip_steps must be in [0, {self.steps_per_epoch}), got {skip_steps}")
        self.rows_per_epoch = self.steps_per_epoch * batch_size
        self.skipped_rows = skip_steps * batch_size
        self._order = (None, None)  # (epoch, its keys)

    def epoch_order(self, epoch: int) -> np.ndarray:
        return EpochSampler(self.size, True, self.seed, epoch, self.repeats, self.num_shards, self.shard_id).indices()

    def __len__(self):
        return self.epochs * self.rows_per_epoch - self.skipped_rows

    def __getitem__(self, index: int) -> np.ndarray:
        if not 0 <= index < len(self):
            raise IndexError(index)
        position = index + self.skipped_rows
        epoch = self.first_epoch + position // self.rows_per_epoch
        if self._order[0] != epoch:
            self._order = (epoch, self.epoch_order(epoch))
        return np.array([epoch, self._order[1][position % self.rows_per_epoch]], np.int64)
