"""MindSpore's own random augmentations get one seed per (run start epoch, rank)."""
import mindspore as ms

from mobilenetv3.cluster.distributed import DistInfo
from mobilenetv3.training.trainer import augment_seed, train


def test_augment_seeds_differ_between_ranks_and_epochs():
    seeds = {augment_seed(7, epoch, rank, 8) for epoch in range(300) for rank in range(8)}
    assert len(seeds) == 300 * 8
    assert [augment_seed(1, epoch, 0, 1) for epoch in range(3)] == [100003, 100004, 100005]  # one process: as before
    assert 0 <= augment_seed(2**31, 5, 3, 64) < 2**32  # MindSpore takes a uint32


def test_each_rank_seeds_the_pipeline_with_its_own_seed(small_config, monkeypatch):
    """Rank 1 of 2 trained alone (no collectives are needed for one epoch of its shard)."""
    seeds = []
    real = ms.dataset.config.set_seed
    monkeypatch.setattr(ms.dataset.config, "set_seed", lambda seed: seeds.append(seed) or real(seed))
    config = small_config(epoch_size=2, color_jitter=0.4, random_erase=0.25)
    train(config, DistInfo(rank=1, size=2, is_distributed=False))
    # ms.set_seed(seed) sets the pipeline's seed too; then the run's one pipeline is seeded once.
    assert seeds == [1, augment_seed(1, 0, 1, 2)]
    assert augment_seed(1, 0, 0, 2) not in seeds
