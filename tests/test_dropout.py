"""StepDropout: nn.Dropout's statistics, with masks a pure function of (seed, step)."""
import numpy as np
import pytest

import mindspore as ms
from mindspore import nn
from mindspore.train import Model

from mobilenetv3.models import dropout
from mobilenetv3.models.dropout import StepDropout

P = 0.2


def training_cell(p=P, seed=0, step=0):
    cell = StepDropout(p)
    cell.set_train(True)
    dropout.set_state(cell, seed, step)
    return cell


def apply(cell, x):
    return cell(ms.Tensor(x)).asnumpy()


def test_training_zeroes_a_fraction_p_and_scales_the_rest():
    x = np.random.default_rng(0).uniform(0.5, 2.0, (64, 1024)).astype(np.float32)
    y = apply(training_cell(), x)
    zeroed = y == 0
    assert abs(zeroed.mean() - P) < 0.01  # 65536 draws: 0.01 is six standard deviations
    assert abs(zeroed.mean(axis=0).mean() - P) < 0.01 and zeroed.any(axis=0).sum() > 1000  # spread over columns
    np.testing.assert_array_equal(y[~zeroed], x[~zeroed] * np.float32(1 / (1 - P)))


def test_masks_change_every_step_and_repeat_for_the_same_seed_and_step():
    x = np.ones((16, 256), np.float32)
    cell = training_cell(seed=5, step=10)
    first, second = apply(cell, x), apply(cell, x)
    assert dropout.get_state(cell) == (5, 12)
    assert not np.array_equal(first == 0, second == 0)
    np.testing.assert_array_equal(apply(training_cell(seed=5, step=11), x), second)
    assert not np.array_equal(apply(training_cell(seed=6, step=11), x) == 0, second == 0)


def test_eval_mode_returns_the_input_and_keeps_the_step():
    cell = training_cell(seed=3, step=7)
    cell.set_train(False)
    x = np.random.default_rng(1).standard_normal((8, 32)).astype(np.float32)
    np.testing.assert_array_equal(apply(cell, x), x)
    assert dropout.get_state(cell) == (3, 7)


def test_p_zero_is_the_identity_and_bad_p_is_refused():
    x = np.random.default_rng(2).standard_normal((8, 32)).astype(np.float32)
    np.testing.assert_array_equal(apply(training_cell(p=0.0), x), x)
    with pytest.raises(ValueError, match=r"dropout p must be in \[0, 1\), got 1.0"):
        StepDropout(1.0)


def test_it_adds_no_parameters():
    assert list(StepDropout(P).get_parameters()) == []


class WeightedSum(nn.Cell):
    def __init__(self, weights):
        super().__init__()
        self.dropout = training_cell(seed=4, step=20)
        self.weights = ms.Tensor(weights)

    def construct(self, x):
        return (self.dropout(x) * self.weights).sum()


def test_the_gradient_uses_the_mask_of_its_own_forward():
    rng = np.random.default_rng(3)
    x, weights = (rng.uniform(0.5, 2.0, (16, 64)).astype(np.float32) for _ in range(2))
    net = WeightedSum(weights)
    _, grad = ms.value_and_grad(net)(ms.Tensor(x))
    kept = apply(training_cell(seed=4, step=20), x) != 0
    np.testing.assert_array_equal(grad.asnumpy(), np.where(kept, weights * np.float32(1 / (1 - P)), 0))
    assert dropout.get_state(net) == (4, 21)


@pytest.mark.parametrize("sink", [False, True])
def test_one_training_step_advances_the_step_once(sink):
    net = nn.SequentialCell([nn.Dense(8, 16), StepDropout(P), nn.Dense(16, 2)])
    dropout.set_state(net, 1, 100)
    train_step = nn.TrainOneStepCell(nn.WithLossCell(net, nn.MSELoss()), nn.Momentum(net.trainable_params(), 0.01, 0.9))
    rng = np.random.default_rng(4)
    data = ms.dataset.NumpySlicesDataset({"x": rng.standard_normal((20, 8)).astype(np.float32),
                                          "y": rng.standard_normal((20, 2)).astype(np.float32)}, shuffle=False)
    Model(train_step).train(1, data.batch(4), dataset_sink_mode=sink)
    assert dropout.get_state(net) == (1, 105)


def test_per_sample_drops_whole_samples_with_probability_p():
    """Stochastic depth: each sample of a residual branch kept whole (scaled by 1 / (1 - p)) or zeroed."""
    cell = StepDropout(0.3, per_sample=True, stream=5)
    cell.set_train(True)
    dropout.set_state(cell, 0, 0)
    x = np.random.default_rng(5).uniform(0.5, 2.0, (4096, 3, 2, 2)).astype(np.float32)
    y = apply(cell, x)
    zeroed = (y == 0).reshape(len(x), -1)
    assert (zeroed.all(axis=1) | ~zeroed.any(axis=1)).all()  # never part of a sample
    assert abs(zeroed[:, 0].mean() - 0.3) < 0.03  # 4096 draws: 0.03 is over four standard deviations
    kept = ~zeroed[:, 0]
    np.testing.assert_array_equal(y[kept], x[kept] * np.float32(1 / 0.7))


def test_streams_draw_their_own_masks_from_the_same_seed_and_step():
    x = np.ones((512, 4), np.float32)
    masks = {}
    for stream in (0, 1, 2, 63):
        cell = StepDropout(0.5, per_sample=True, stream=stream)
        cell.set_train(True)
        dropout.set_state(cell, 7, 3)
        masks[stream] = apply(cell, x)[:, 0] == 0
        dropout.set_state(cell, 7, 3)
        np.testing.assert_array_equal(apply(cell, x)[:, 0] == 0, masks[stream])  # a pure function of them
    for a in masks:
        for b in masks:
            if a < b:  # independent halves: about 256 of 512 differ
                assert 180 < (masks[a] != masks[b]).sum() < 332, (a, b)
    # Stream 0 is the element-wise dropout's own, unchanged: the per-sample mask is its first column's draw.
    element_wise = training_cell(p=0.5, seed=7, step=3)
    np.testing.assert_array_equal(apply(element_wise, np.ones((512, 1), np.float32))[:, 0] == 0, masks[0])
    with pytest.raises(ValueError, match=r"stream must be in \[0, 64\), got 64"):
        StepDropout(0.1, stream=64)
