"""Resuming across AMP levels: an O0 (CPU) checkpoint into an O2 (GPU default) run and back."""
import numpy as np
import pytest
import mindspore as ms

from mobilenetv3 import checkpoint
from mobilenetv3.errors import UserError
from mobilenetv3.factory import create_model
from mobilenetv3.trainer import build_train_step, restore_training_state, training_state

LR = np.full(12, 0.01, np.float32)


def train_step_at(config):
    """build_train_step at `config`'s AMP level (O2 builds on CPU too: trainer.LossScaleTrainStep)."""
    net = create_model(config.model, config.num_classes, config.width, config.dropout_rate, config.bn_momentum,
                       config.bn_eps)
    return build_train_step(net, config, LR)


def saved(train_step, path):
    checkpoint.save(path, training_state(train_step), {"model": "mobilenet_v3_small"})
    return checkpoint.load(path)[0]


def arrays(train_step):
    return {name: p.asnumpy() for name, p in training_state(train_step).items()}


def scramble(train_step, seed):
    rng = np.random.default_rng(seed)
    for param in training_state(train_step).values():
        values = rng.normal(size=param.shape) if param.dtype == ms.float32 else rng.integers(2, 9, size=param.shape)
        param.set_data(ms.Tensor(values.astype(ms.dtype_to_nptype(param.dtype))))


def test_o0_checkpoint_resumes_at_o2_with_fresh_loss_scale_state_and_back(small_config, tmp_path):
    o0 = train_step_at(small_config(amp_level="O0"))
    scramble(o0, seed=0)
    o0_path = tmp_path / "o0.ckpt"
    params = saved(o0, o0_path)

    o2 = train_step_at(small_config(amp_level="O2", loss_scale=256.0))
    assert isinstance(o2, ms.nn.TrainOneStepWithLossScaleCell)
    notes = restore_training_state(o2, params, o0_path)
    assert notes == [f"{o0_path} holds no loss-scale state (saved by a run without loss scaling, e.g. O0 on CPU): "
                     "the loss scale starts at 256"]
    restored = arrays(o2)
    for name, value in arrays(o0).items():
        assert np.array_equal(restored[name], value), name
    assert (restored["opt.scale_sense"], restored["opt.current_iterator_step"],
            restored["opt.last_overflow_iterator_step"]) == (256.0, 1, 0)

    o2.scale_sense.set_data(ms.Tensor(np.float32(64.0)))
    o2_path = tmp_path / "o2.ckpt"
    params = saved(o2, o2_path)
    back = train_step_at(small_config(amp_level="O0"))
    assert restore_training_state(back, params, o2_path) == [
        f"{o2_path} holds loss-scale state (scale 64) that this run without loss scaling does not use"]
    for name, value in arrays(back).items():
        assert np.array_equal(value, restored[name]), name


def test_missing_optimiser_state_still_refuses_to_resume(small_config, tmp_path):
    o0 = train_step_at(small_config(amp_level="O0"))
    params = saved(o0, tmp_path / "o0.ckpt")
    del params["opt.moments.features.0.0.weight"]
    o2 = train_step_at(small_config(amp_level="O2"))
    with pytest.raises(UserError, match=r"lacks training state opt\.moments\.features\.0\.0\.weight: it cannot be "
                                        r"resumed"):
        restore_training_state(o2, params, tmp_path / "o0.ckpt")
