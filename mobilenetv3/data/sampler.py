"""The order in which one rank reads the samples of one epoch, drawn from (seed, epoch) alone."""
import math

import numpy as np


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
