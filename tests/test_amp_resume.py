"""Resuming across AMP levels: an O0 (CPU) checkpoint into an O2 (GPU default) run and back."""
import numpy as np
import pytest
import mindspore as ms

from mobilenetv3.checkpoints import files as checkpoint
from mobilenetv3.data.preprocessing import Preprocessing
from mobilenetv3.errors import UserError
from mobilenetv3.models.factory import create_model
from mobilenetv3.training.optim import build_optimizer
from mobilenetv3.training.state import restore_training_state, training_state
from mobilenetv3.training.train_step import build_train_step

LR = np.full(12, 0.01, np.float32)


def train_step_at(amp, loss_scale=1024.0):
    """build_train_step at AMP level `amp` (O2 builds on CPU too: train_step.LossScaleTrainStep), for the
    small_config fixture's model (MobileNetV3-Small, 3 classes, BN momentum 0.9) and its Momentum optimiser."""
    net = create_model("mobilenet_v3_small", num_classes=3, bn_momentum=0.9)
    optimizer = build_optimizer(net, LR, "momentum", momentum=0.9, weight_decay=4e-5)
    return build_train_step(net, optimizer, Preprocessing(resize=32), amp, smooth_factor=0.1, loss_scale=loss_scale)


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


def test_o0_checkpoint_resumes_at_o2_with_fresh_loss_scale_state_and_back(tmp_path):
    o0 = train_step_at("O0")
    scramble(o0, seed=0)
    o0_path = tmp_path / "o0.ckpt"
    params = saved(o0, o0_path)

    o2 = train_step_at("O2", loss_scale=256.0)
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
    back = train_step_at("O0")
    assert restore_training_state(back, params, o2_path) == [
        f"{o2_path} holds loss-scale state (scale 64) that this run without loss scaling does not use"]
    for name, value in arrays(back).items():
        assert np.array_equal(value, restored[name]), name


def test_missing_optimiser_state_still_refuses_to_resume(tmp_path):
    o0 = train_step_at("O0")
    params = saved(o0, tmp_path / "o0.ckpt")
    del params["opt.moments.features.0.0.weight"]
    o2 = train_step_at("O2")
    with pytest.raises(UserError, match=r"lacks training state opt\.moments\.features\.0\.0\.weight: it cannot be "
                                        r"resumed"):
        restore_training_state(o2, params, tmp_path / "o0.ckpt")
