"""EMA weights: averaged under AMP O2 from the float32 weights, and used by eval, infer and export (--use_ema)."""
import json
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest

from conftest import run_main
from mobilenetv3.checkpoints import files as checkpoint
from mobilenetv3.config import build_config
from mobilenetv3.data.preprocessing import Preprocessing
from mobilenetv3.deploy import onnx_backend
from mobilenetv3.errors import UserError
from mobilenetv3.models.factory import create_model, model_from_checkpoint
from mobilenetv3.training.optim import build_optimizer
from mobilenetv3.training.train_step import LossScaleTrainStep, build_train_step
from mobilenetv3.training.trainer import train

DECAY = 0.75  # 1 - DECAY is exact in float32, so the expected average is computed as the graph does


@pytest.mark.slow  # an O2 graph compiles for half a minute on CPU: run with --runslow
def test_o2_clips_and_averages_the_float32_weights_and_skips_overflowed_steps():
    """Plain SGD (momentum 0, no weight decay), so the first update is lr times the clipped gradient."""
    lr, clip = 0.5, 1e-3
    net = create_model("mobilenet_v3_small", num_classes=3, bn_momentum=0.9)
    optimizer = build_optimizer(net, np.full(4, lr, np.float32), "momentum", momentum=0.0, weight_decay=0.0)
    step = build_train_step(net, optimizer, Preprocessing(resize=32), "O2", smooth_factor=0.1, loss_scale=1024.0,
                            grad_clip=clip, ema_decay=DECAY)
    assert isinstance(step, LossScaleTrainStep)
    rng = np.random.default_rng(0)
    images = ms.Tensor(rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8))  # as the data pipeline gives them
    labels = ms.Tensor(rng.integers(0, 3, 8).astype(np.int32))
    params = {p.name: p for p in net.get_parameters()}
    before = {name: p.asnumpy().copy() for name, p in params.items()}  # asnumpy shares the memory

    loss, overflow, scale = step(images, labels)
    assert not overflow.asnumpy() and float(scale.asnumpy()) == 1024.0
    update = np.sqrt(sum(np.sum((p.asnumpy().astype(np.float64) - before[p.name]) ** 2)
                         for p in net.trainable_params()))
    assert update == pytest.approx(lr * clip, rel=1e-3)
    ema = {p.name[len(checkpoint.EMA_PREFIX):]: p for p in step.ema_params}
    assert set(ema) == set(params)  # BN running statistics included
    for name, param in params.items():
        after = param.asnumpy()
        assert param.dtype == ema[name].dtype == ms.float32, name
        expected = before[name] * np.float32(DECAY) + after * np.float32(1 - DECAY)
        np.testing.assert_allclose(ema[name].asnumpy(), expected, rtol=1e-6, atol=1e-9, err_msg=name)

    # A scale that makes the float16 gradients overflow: the step is skipped, weights and EMA stay put.
    step.scale_sense.set_data(ms.Tensor(np.float32(2.0 ** 60)))
    averages = {name: p.asnumpy().copy() for name, p in ema.items()}
    trained = {name: p.asnumpy().copy() for name, p in params.items() if p.requires_grad}
    _, overflow, _ = step(images, labels)
    assert overflow.asnumpy() and float(step.scale_sense.asnumpy()) == 2.0 ** 59
    for name, value in trained.items():
        assert np.array_equal(params[name].asnumpy(), value), name
    for name, value in averages.items():
        assert np.array_equal(ema[name].asnumpy(), value), name
    assert net(ms.Tensor(rng.normal(size=(8, 3, 32, 32)).astype(np.float32))).dtype == ms.float16  # O2: float16 compute


@pytest.mark.slow  # O2 compiles for a minute on CPU; its step is tested above
def test_training_at_o2_saves_float32_ema_weights_beside_the_loss_scale_state(small_config):
    params, meta = checkpoint.load(train(small_config(amp_level="O2", ema_decay=0.9, epoch_size=1)))
    model = {n for n in params if not n.startswith((checkpoint.EMA_PREFIX, checkpoint.OPTIMIZER_PREFIX))}
    ema = {n[len(checkpoint.EMA_PREFIX):] for n in params if n.startswith(checkpoint.EMA_PREFIX)}
    assert ema == model and all(params[checkpoint.EMA_PREFIX + n].dtype == ms.float32 for n in ema)
    assert meta["config"]["amp_level"] == "O2" and "opt.scale_sense" in params


def test_o1_is_refused_with_the_reason(small_config):
    with pytest.raises(UserError, match=r"amp_level O1 cannot build this network: .*mindspore\.rewrite.*use "
                                        r"--amp_level O2"):
        train(small_config(amp_level="O1"))


@pytest.fixture(scope="module")
def ema_run(image_folder, tmp_path_factory):
    """One epoch with EMA (decay 0.5: the average differs clearly from the weights), and a copy of its
    checkpoint without the EMA weights. At O0: O2 compiles for a minute on CPU, and its step is tested above."""
    root = tmp_path_factory.mktemp("ema")
    with_ema = Path(train(build_config(overrides=dict(
        device_target="CPU", data_url=str(image_folder), num_classes=3, batch_size=8, epoch_size=1, resize=32,
        num_parallel_workers=2, bn_momentum=0.9, max_lr=0.05, decay_epoch=1, dataset_sink_mode=False,
        log_interval=100, ema_decay=0.5, ckpt_save_dir=str(root / "ema")))))
    params, meta = checkpoint.load(with_ema)
    without = root / "plain.ckpt"
    checkpoint.save(without, {n: p for n, p in params.items() if not n.startswith(checkpoint.EMA_PREFIX)}, meta)
    return with_ema, without


def loaded(path, use_ema):
    net, meta = model_from_checkpoint(path, use_ema=use_ema, expected=dict(num_classes=3))
    return {p.name: p.asnumpy() for p in net.get_parameters()}, meta


def test_use_ema_loads_the_averaged_weights_and_bn_statistics(ema_run):
    path = ema_run[0]
    saved, _ = checkpoint.load(path)
    raw, raw_meta = loaded(path, use_ema=False)
    ema, ema_meta = loaded(path, use_ema=True)
    assert "weights" not in raw_meta and ema_meta["weights"] == "ema"
    for name in raw:
        assert np.array_equal(raw[name], saved[name].asnumpy()), name
        assert np.array_equal(ema[name], saved[checkpoint.EMA_PREFIX + name].asnumpy()), name
    for name in ("features.0.0.weight", "features.0.1.moving_mean", "features.0.1.moving_variance"):
        assert not np.allclose(ema[name], raw[name]), name


def test_ema_without_running_statistics_takes_the_models(ema_run, tmp_path):
    """EMA weights from elsewhere may average the trainable parameters only: BN statistics are then the raw ones."""
    saved, meta = checkpoint.load(ema_run[0])
    stats = [name for name in saved
             if name.startswith(checkpoint.EMA_PREFIX) and name.endswith(checkpoint.RUNNING_STATS)]
    partial = tmp_path / "partial.ckpt"
    checkpoint.save(partial, {name: p for name, p in saved.items() if name not in stats}, meta)
    ema, _ = loaded(partial, use_ema=True)
    assert np.array_equal(ema["features.0.1.moving_mean"], saved["features.0.1.moving_mean"].asnumpy())
    assert np.array_equal(ema["features.0.0.weight"], saved["ema.features.0.0.weight"].asnumpy())


def test_use_ema_without_ema_weights_is_one_error_naming_flag_and_checkpoint(ema_run, image_folder):
    plain = ema_run[1]
    result = run_main("eval", "--device_target", "CPU", "--num_classes", 3, "--data_url", image_folder,
                        "--pretrained", plain, "--use_ema")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: --use_ema: checkpoint {plain} has no EMA weights (its run trained without --ema_decay); drop "
        "--use_ema or pass a checkpoint of a run with --ema_decay > 0")


def test_eval_and_export_use_the_ema_weights(ema_run, image_folder, tmp_path):
    path = ema_run[0]
    common = ["--device_target", "CPU", "--num_classes", 3, "--resize", 32, "--pretrained", path]
    accuracy = {}
    for use_ema in ("false", "true"):
        result = run_main("eval", *common, "--data_url", image_folder, "--use_ema", use_ema,
                            "--json", tmp_path / f"{use_ema}.json")
        assert result.returncode == 0, result.stderr
        accuracy[use_ema] = json.loads((tmp_path / f"{use_ema}.json").read_text())
    assert accuracy["true"] != accuracy["false"]  # other weights, other loss

    result = run_main("export", *common, "--file_format", "ONNX", "--use_ema")
    assert result.returncode == 0, result.stderr
    exported = path.with_name(path.stem + "-ema.onnx")
    import onnxruntime
    images = np.random.default_rng(2).normal(size=(2, 3, 32, 32)).astype(np.float32)
    session = onnxruntime.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    assert json.loads(onnx_backend.embedded_meta(session))["weights"] == "ema"  # the meta inside the file
    logits = session.run(None, {"images": images})[0]
    net, _ = model_from_checkpoint(path, use_ema=True, expected=dict(num_classes=3))
    np.testing.assert_allclose(logits, net(ms.Tensor(images)).asnumpy(), rtol=1e-4, atol=1e-4)

    result = run_main("infer", "--device_target", "CPU", "--num_classes", 3, "--resize", 32, "--data_url",
                        image_folder / "val", "--pretrained", exported, "--backend", "onnxruntime", "--use_ema")
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == (
        f"error: --use_ema picks a checkpoint's EMA weights, but {exported} is an exported ONNX model; drop "
        "--use_ema, or export the checkpoint with --use_ema")
