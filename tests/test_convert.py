"""PyTorch -> MindSpore weight conversion: logits match a torch twin, timm naming, checks and the script."""
import argparse
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import mindspore as ms  # noqa: E402

from conftest import run_script  # noqa: E402
from mobilenetv3.checkpoints import files as checkpoint  # noqa: E402
from mobilenetv3.checkpoints.meta import flagged  # noqa: E402
from mobilenetv3.cli import MODEL_FILE_KEYS
from mobilenetv3.config import build_config  # noqa: E402
from mobilenetv3.deploy.convert import (TIMM_STAGE_SIZES, convert_state_dict, read_torch_state_dict,  # noqa: E402
                                        torchvision_to_timm)
from mobilenetv3.errors import UserError  # noqa: E402
from mobilenetv3.models.architectures import ARCHITECTURES  # noqa: E402
from mobilenetv3.models.factory import create_model, model_from_checkpoint  # noqa: E402
from benchmarks.torch_reference import TorchMobileNetV3, randomize_, to_timm_state_dict  # noqa: E402

BN_EPS = {"torchvision": 1e-3, "timm": 1e-5}


def random_images(size, batch=2, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, 3, size, size)).astype(np.float32)


def torch_twin(model_name, source, num_classes=1000, width=1.0, image_size=64, seed=1):
    """A randomised torch model and its state_dict in `source`'s naming."""
    twin = randomize_(TorchMobileNetV3(model_name, num_classes, width, BN_EPS[source]), seed, image_size).eval()
    state_dict = twin.state_dict()
    return twin, to_timm_state_dict(state_dict, model_name) if source == "timm" else state_dict


def torch_logits(twin, images):
    with torch.no_grad():
        return twin(torch.from_numpy(images)).numpy()


def mindspore_logits(weights, model_name, width, bn_eps, images):
    net = create_model(model_name, weights["classifier.3.bias"].shape[0], width, bn_eps=bn_eps)
    not_loaded, _ = ms.load_param_into_net(net, {k: ms.Parameter(ms.Tensor(v), name=k) for k, v in weights.items()},
                                           strict_load=True)
    assert not_loaded == []
    net.set_train(False)
    return net(ms.Tensor(images)).asnumpy()


@pytest.mark.parametrize("model_name, source, width, image_size", [
    ("mobilenet_v3_small", "torchvision", 1.0, 64),
    ("mobilenet_v3_small", "timm", 1.0, 64),
    ("mobilenet_v3_small", "torchvision", 0.75, 64),
    ("mobilenet_v3_large", "torchvision", 1.0, 224),
    ("mobilenet_v3_large", "timm", 1.0, 64),
])
def test_converted_weights_give_the_torch_logits(model_name, source, width, image_size):
    twin, state_dict = torch_twin(model_name, source, width=width, image_size=image_size)
    weights, bn_eps = convert_state_dict(state_dict, source, model_name, width)
    net_names = {p.name for p in create_model(model_name, 1000, width).get_parameters()}
    assert bn_eps == BN_EPS[source]
    assert set(weights) == net_names  # every parameter, and no num_batches_tracked
    images = random_images(image_size)
    expected = torch_logits(twin, images)
    assert np.abs(expected).max() > 1.0  # logits of a working network, not all near zero
    assert np.abs(mindspore_logits(weights, model_name, width, bn_eps, images) - expected).max() <= 1e-4


def test_timm_weights_need_their_own_bn_eps():
    """Negative control: the randomised statistics make eps 1e-3 instead of timm's 1e-5 visible."""
    twin, state_dict = torch_twin("mobilenet_v3_small", "timm")
    weights, _ = convert_state_dict(state_dict, "timm", "mobilenet_v3_small")
    images = random_images(64)
    wrong = mindspore_logits(weights, "mobilenet_v3_small", 1.0, 1e-3, images)
    assert np.abs(wrong - torch_logits(twin, images)).max() > 0.1


def test_torch_twin_has_torchvision_parameter_counts():
    """Counts published for torchvision's models, so the twin stands in for them."""
    for model_name, width, trainable, with_statistics in [("mobilenet_v3_large", 1.0, 5_483_032, 5_507_432),
                                                          ("mobilenet_v3_small", 1.0, 2_542_856, 2_554_968),
                                                          ("mobilenet_v3_small", 0.75, 1_653_920, 1_663_120)]:
        twin = TorchMobileNetV3(model_name, width=width)
        assert sum(p.numel() for p in twin.parameters()) == trainable
        assert sum(v.numel() for k, v in twin.state_dict().items() if "num_batches" not in k) == with_statistics


def test_timm_names_follow_timm_stages():
    """Names and shapes as in timm's mobilenetv3_{large,small}_100, whose arch_def groups blocks into stages."""
    for model_name, sizes in TIMM_STAGE_SIZES.items():
        assert sum(sizes) == len(ARCHITECTURES[model_name].blocks)
    large = to_timm_state_dict(TorchMobileNetV3("mobilenet_v3_large").state_dict(), "mobilenet_v3_large")
    small = to_timm_state_dict(TorchMobileNetV3("mobilenet_v3_small").state_dict(), "mobilenet_v3_small")
    expected_large = {
        "conv_stem.weight": (16, 3, 3, 3), "bn1.running_var": (16,),
        "blocks.0.0.conv_dw.weight": (16, 1, 3, 3), "blocks.0.0.bn1.weight": (16,),
        "blocks.0.0.conv_pw.weight": (16, 16, 1, 1), "blocks.0.0.bn2.bias": (16,),
        "blocks.1.1.conv_pw.weight": (72, 24, 1, 1), "blocks.2.0.se.conv_reduce.weight": (24, 72, 1, 1),
        "blocks.3.3.conv_pwl.weight": (80, 184, 1, 1), "blocks.4.1.bn3.running_mean": (112,),
        "blocks.5.2.se.conv_expand.bias": (960,), "blocks.6.0.conv.weight": (960, 160, 1, 1),
        "blocks.6.0.bn1.weight": (960,), "conv_head.weight": (1280, 960, 1, 1), "conv_head.bias": (1280,),
        "classifier.weight": (1000, 1280),
    }
    expected_small = {
        "blocks.0.0.se.conv_expand.weight": (16, 8, 1, 1), "blocks.0.0.conv_pw.weight": (16, 16, 1, 1),
        "blocks.1.1.conv_dw.weight": (88, 1, 3, 3), "blocks.2.2.conv_pwl.weight": (40, 240, 1, 1),
        "blocks.3.1.se.conv_reduce.weight": (40, 144, 1, 1), "blocks.4.2.bn3.weight": (96,),
        "blocks.5.0.conv.weight": (576, 96, 1, 1), "conv_head.weight": (1024, 576, 1, 1),
        "classifier.weight": (1000, 1024),
    }
    for state_dict, expected in [(large, expected_large), (small, expected_small)]:
        assert {name: tuple(state_dict[name].shape) for name in expected} == expected
    assert "blocks.6.0.conv.weight" not in small and "blocks.7.0.conv.weight" not in large
    assert len(large) == 312 and len(small) == 244  # tensors incl. BatchNorm statistics and counters


def test_timm_names_follow_each_layers_role():
    """Same-shaped BatchNorms told apart by role: timm's expanding block has conv_pw/bn1 (expand),
    conv_dw/bn2 (depthwise), conv_pwl/bn3 (project); its first block conv_dw/bn1, conv_pw/bn2."""
    renames = {
        "mobilenet_v3_large": {
            "features.0.1.running_mean": "bn1.running_mean",
            "features.1.block.0.1.weight": "blocks.0.0.bn1.weight",
            "features.1.block.1.0.weight": "blocks.0.0.conv_pw.weight",
            "features.1.block.1.1.running_var": "blocks.0.0.bn2.running_var",
            "features.5.block.0.0.weight": "blocks.2.1.conv_pw.weight",
            "features.5.block.0.1.weight": "blocks.2.1.bn1.weight",
            "features.5.block.1.0.weight": "blocks.2.1.conv_dw.weight",
            "features.5.block.1.1.running_mean": "blocks.2.1.bn2.running_mean",
            "features.5.block.2.fc1.weight": "blocks.2.1.se.conv_reduce.weight",
            "features.5.block.2.fc2.bias": "blocks.2.1.se.conv_expand.bias",
            "features.5.block.3.0.weight": "blocks.2.1.conv_pwl.weight",
            "features.5.block.3.1.bias": "blocks.2.1.bn3.bias",
            "features.16.1.weight": "blocks.6.0.bn1.weight",
            "classifier.0.bias": "conv_head.bias",
            "classifier.3.weight": "classifier.weight",
        },
        "mobilenet_v3_small": {
            "features.1.block.1.fc1.weight": "blocks.0.0.se.conv_reduce.weight",
            "features.1.block.2.1.weight": "blocks.0.0.bn2.weight",
            "features.9.block.1.1.weight": "blocks.4.0.bn2.weight",
            "features.12.0.weight": "blocks.5.0.conv.weight",
        },
    }
    for model_name, expected in renames.items():
        names = torchvision_to_timm(TorchMobileNetV3(model_name).state_dict(), model_name)
        assert {key: names[key] for key in expected} == expected


def test_missing_and_unmapped_keys_are_named():
    _, state_dict = torch_twin("mobilenet_v3_small", "torchvision")
    del state_dict["features.4.block.1.1.running_var"]
    state_dict["features.99.0.weight"] = torch.zeros(3)
    with pytest.raises(UserError) as error:
        convert_state_dict(state_dict, "torchvision", "mobilenet_v3_small")
    assert "missing: features.4.block.1.1.running_var" in str(error.value)
    assert "not mapped to the model: features.99.0.weight" in str(error.value)


def test_wrong_shape_is_named():
    _, state_dict = torch_twin("mobilenet_v3_small", "timm")
    state_dict["blocks.2.1.conv_dw.weight"] = torch.zeros(240, 1, 3, 3)
    with pytest.raises(UserError, match=r"shape differs: blocks\.2\.1\.conv_dw\.weight \(240, 1, 3, 3\) "
                                        r"vs \(240, 1, 5, 5\) for features\.5\.block\.1\.0\.weight"):
        convert_state_dict(state_dict, "timm", "mobilenet_v3_small")


def test_wrong_source_or_model_is_explained():
    _, timm_state_dict = torch_twin("mobilenet_v3_small", "timm")
    with pytest.raises(UserError, match=r"classifier\.3\.weight.*--source torchvision"):
        convert_state_dict(timm_state_dict, "torchvision", "mobilenet_v3_small")
    with pytest.raises(UserError, match=r"timm weights do not fit mobilenet_v3_large.*missing: blocks\."):
        convert_state_dict(timm_state_dict, "timm", "mobilenet_v3_large")
    with pytest.raises(UserError, match="width 1.0"):
        convert_state_dict(timm_state_dict, "timm", "mobilenet_v3_small", width=0.75)


def test_pth_files_hold_a_state_dict_or_wrap_one(tmp_path):
    state_dict = TorchMobileNetV3("mobilenet_v3_small", num_classes=4, width=0.5).state_dict()
    for wrapped in (state_dict, {"state_dict": state_dict, "epoch": 3}, {"model": state_dict}):
        torch.save(wrapped, tmp_path / "weights.pth")
        loaded = read_torch_state_dict(tmp_path / "weights.pth")
        assert list(loaded) == list(state_dict)
        assert all(torch.equal(loaded[k], state_dict[k]) for k in state_dict)
    torch.save({"model": state_dict, "args": argparse.Namespace(lr=0.1)}, tmp_path / "train.pth")
    with pytest.raises(UserError, match="re-save only its state_dict"):
        read_torch_state_dict(tmp_path / "train.pth")
    with pytest.raises(UserError, match="not found"):
        read_torch_state_dict(tmp_path / "absent.pth")


def test_script_converts_timm_weights_that_eval_rebuilds(tmp_path):
    """.pth -> convert_weights.py -> .ckpt -> model_from_checkpoint (as eval/infer do) -> the torch logits."""
    twin, state_dict = torch_twin("mobilenet_v3_small", "timm")
    torch.save(state_dict, tmp_path / "timm_small.pth")
    result = run_script("convert_weights", "--source", "timm", "--input", tmp_path / "timm_small.pth",
                        "--model", "mobilenet_v3_small", "--output", tmp_path / "small.ckpt")
    assert result.returncode == 0, result.stderr
    assert "1000 classes, bn_eps 1e-05" in result.stdout

    _, meta = checkpoint.load(tmp_path / "small.ckpt")
    assert {k: meta[k] for k in ("model", "num_classes", "width", "bn_eps", "bn_momentum", "source")} == dict(
        model="mobilenet_v3_small", num_classes=1000, width=1.0, bn_eps=1e-5, bn_momentum=0.99, source="timm")
    # The class list is the ImageNet val folders' names, so eval on an ImageNet tree passes its class check.
    assert len(meta["classes"]) == 1000 and meta["classes"][:2] == ["n01440764", "n01443537"]
    config = build_config(overrides=dict(model="mobilenet_v3_small", pretrained=str(tmp_path / "small.ckpt")))
    stated = config.subset(MODEL_FILE_KEYS)
    net, _ = model_from_checkpoint(config.pretrained, config.use_ema, flagged(stated, config.flags), stated)
    images = random_images(64, seed=5)
    assert np.abs(net(ms.Tensor(images)).asnumpy() - torch_logits(twin, images)).max() <= 1e-4


def test_script_failure_is_one_line(tmp_path):
    torch.save(TorchMobileNetV3("mobilenet_v3_small").state_dict(), tmp_path / "small.pth")
    result = run_script("convert_weights", "--input", tmp_path / "small.pth", "--model", "mobilenet_v3_large")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: torchvision weights do not fit mobilenet_v3_large")
    assert not (tmp_path / "small.ckpt").exists()


def test_output_must_be_a_ckpt_and_random_bytes_are_not_a_pytorch_file(tmp_path):
    torch.save(TorchMobileNetV3("mobilenet_v3_small").state_dict(), tmp_path / "small.pth")
    result = run_script("convert_weights", "--input", tmp_path / "small.pth", "--output", tmp_path / "s.bin")
    assert result.returncode == 2 and result.stderr.splitlines() == [
        f"error: --output {tmp_path / 's.bin'}: use a file name ending in .ckpt (MindSpore reads checkpoints only "
        "under that name)"]
    assert not (tmp_path / "s.bin").exists()
    noise = tmp_path / "noise.pth"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(UserError, match=re.escape(f"{noise} is not a PyTorch file (torch.save writes a zip archive, "
                                                  "before torch 1.6 a pickle)")):
        read_torch_state_dict(noise)
    legacy = {"classifier.3.weight": torch.zeros(2, 3)}
    torch.save(legacy, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    assert list(read_torch_state_dict(tmp_path / "legacy.pth")) == list(legacy)
