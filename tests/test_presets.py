"""Published weights as they are published: safetensors read without torch, presets that record the
preprocessing a weight set expects, and eval/infer/export using it unless a flag says otherwise."""
import json
import re

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import save_file

from conftest import run_script
from mobilenetv3.checkpoints import files as checkpoint
from mobilenetv3.config import build_config
from mobilenetv3.data import preprocessing
from mobilenetv3.deploy.convert import TIMM_CONV_HEAD, convert_file, torch_name, torchvision_to_timm
from mobilenetv3.deploy.presets import PRESETS
from mobilenetv3.errors import UserError
from mobilenetv3.models.factory import create_model

SMALL = "mobilenet_v3_small"


def known_arrays(num_classes=1000, seed=0):
    """Our parameter name -> a distinct random float32 array of its shape (variances positive, so logits are finite)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for p in create_model(SMALL, num_classes).get_parameters():
        values = rng.standard_normal(p.shape) * 0.2
        arrays[p.name] = (np.abs(values) + 0.5 if p.name.endswith("moving_variance") else values).astype(np.float32)
    return arrays


def published_tensors(arrays, source):
    """`arrays` under the names (and, for timm's conv_head, the shape) the publisher uses."""
    names = {name: torch_name(name) for name in arrays}
    if source == "timm":
        timm_names = torchvision_to_timm(names.values(), SMALL)
        names = {name: timm_names[key] for name, key in names.items()}
    tensors = {names[name]: array for name, array in arrays.items()}
    if source == "timm":
        tensors[TIMM_CONV_HEAD] = tensors[TIMM_CONV_HEAD].reshape(*tensors[TIMM_CONV_HEAD].shape, 1, 1)
    return tensors


def without_torch(tmp_path):
    """PYTHONPATH under which `import torch` fails, as on a machine without it."""
    (tmp_path / "no_torch" / "torch").mkdir(parents=True)
    (tmp_path / "no_torch" / "torch" / "__init__.py").write_text("raise ImportError(\"No module named 'torch'\")\n")
    return {"PYTHONPATH": str(tmp_path / "no_torch")}


@pytest.mark.parametrize("source", ["torchvision", "timm"])
def test_safetensors_convert_without_torch_to_exactly_the_arrays_given(tmp_path, source):
    arrays = known_arrays()
    save_file(published_tensors(arrays, source), str(tmp_path / "model.safetensors"))
    done = run_script("convert_weights", "--input", tmp_path / "model.safetensors", "--model", SMALL,
                      "--output", tmp_path / "small.ckpt", env=without_torch(tmp_path))
    assert done.returncode == 0, done.stderr
    assert f"({source}, {SMALL}, width 1.0, 1000 classes" in done.stdout  # the naming told by the names
    params, meta = checkpoint.load(tmp_path / "small.ckpt")
    assert meta["source"] == source and meta["bn_eps"] == {"torchvision": 1e-3, "timm": 1e-5}[source]
    assert sorted(params) == sorted(arrays)
    for name, array in arrays.items():
        assert np.array_equal(params[name].asnumpy(), array), name
    assert "preprocessing" not in meta  # nothing is known about an unnamed weight set


def test_pth_without_torch_says_how_to_install_it(tmp_path):
    (tmp_path / "w.pth").write_bytes(b"PK\x03\x04 not read")
    done = run_script("convert_weights", "--input", tmp_path / "w.pth", env=without_torch(tmp_path))
    assert done.returncode == 2 and done.stderr.startswith("error: converting PyTorch weights needs torch: pip install")


@pytest.mark.parametrize("make, message", [
    (lambda p: (p / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}"),
     "model.safetensors is not a readable safetensors file"),
    (lambda p: (p / "model.safetensors").mkdir(), "model.safetensors is a directory; pass the weights file in it"),
    (lambda p: None, "weights file {tmp}/model.safetensors not found"),
])
def test_unreadable_inputs_are_one_line(tmp_path, make, message):
    make(tmp_path)
    done = run_script("convert_weights", "--input", tmp_path / "model.safetensors")
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and message.format(tmp=tmp_path) in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_tensor_set_of_neither_naming_is_named(tmp_path):
    save_file({"fc.weight": np.zeros((2, 2), np.float32)}, str(tmp_path / "model.safetensors"))
    done = run_script("convert_weights", "--input", tmp_path / "model.safetensors")
    assert done.returncode == 2 and "cannot tell the naming of the weights" in done.stderr and "--source" in done.stderr


def test_preset_and_a_contradicting_flag_are_refused(tmp_path):
    save_file(published_tensors(known_arrays(), "timm"), str(tmp_path / "model.safetensors"))
    done = run_script("convert_weights", "--input", tmp_path / "model.safetensors", "--model", "mobilenet_v3_large",
                      "--preset", "timm/mobilenetv3_small_100.lamb_in1k")
    assert done.returncode == 2
    assert "--preset timm/mobilenetv3_small_100.lamb_in1k is model mobilenet_v3_small, but --model is " \
           "mobilenet_v3_large; drop --model" in done.stderr
    unknown = run_script("convert_weights", "--input", tmp_path / "model.safetensors", "--preset", "timm/nope")
    assert unknown.returncode == 2 and "unknown --preset 'timm/nope'; known: torchvision/" in unknown.stderr


def test_weights_holding_nan_or_inf_are_refused_naming_the_first_bad_tensor(tmp_path):
    tensors = published_tensors(known_arrays(), "timm")
    save_file({name: np.full_like(array, np.nan) for name, array in tensors.items()}, str(tmp_path / "nan.safetensors"))
    done = run_script("convert_weights", "--input", tmp_path / "nan.safetensors", "--output", tmp_path / "nan.ckpt")
    assert done.returncode == 2 and done.stderr.splitlines() == [
        f"error: {tmp_path / 'nan.safetensors'}: tensor blocks.0.0.bn1.bias holds NaN or infinite values (16 of 16); "
        "these weights are broken: download or export them again"]  # the first in the file, which sorts by name
    assert not (tmp_path / "nan.ckpt").exists()
    tensors["blocks.2.1.conv_pw.weight"][7, 3] = -np.inf
    save_file(tensors, str(tmp_path / "inf.safetensors"))
    with pytest.raises(UserError, match=re.escape(
            f"{tmp_path / 'inf.safetensors'}: tensor blocks.2.1.conv_pw.weight holds NaN or infinite values "
            "(1 of 9600); these weights")):
        convert_file(tmp_path / "inf.safetensors", "auto", SMALL, tmp_path / "inf.ckpt")
    assert not (tmp_path / "inf.ckpt").exists()


def test_weights_that_contradict_the_preset_are_refused(tmp_path):
    """10 classes under an ImageNet preset; another width; another model (the weights do not fit it)."""
    save_file(published_tensors(known_arrays(num_classes=10), "torchvision"), str(tmp_path / "ten.safetensors"))
    ten = run_script("convert_weights", "--input", tmp_path / "ten.safetensors", "--output", tmp_path / "ten.ckpt",
                     "--preset", "torchvision/mobilenet_v3_small.IMAGENET1K_V1")
    assert ten.returncode == 2 and ten.stderr.splitlines() == [
        f"error: {tmp_path / 'ten.safetensors'} holds weights for 10 classes, but --preset "
        "torchvision/mobilenet_v3_small.IMAGENET1K_V1 is 1000-class weights: drop --preset (it records the published "
        "weights' preprocessing and accuracy)"]
    assert not (tmp_path / "ten.ckpt").exists()
    narrow = run_script("convert_weights", "--input", tmp_path / "ten.safetensors", "--width", 0.75,
                        "--preset", "torchvision/mobilenet_v3_small.IMAGENET1K_V1")
    assert narrow.returncode == 2 and narrow.stderr.splitlines() == [
        "error: --preset torchvision/mobilenet_v3_small.IMAGENET1K_V1 is width 1.0, but --width is 0.75; drop --width"]
    save_file(published_tensors(known_arrays(), "timm"), str(tmp_path / "small.safetensors"))
    with pytest.raises(UserError, match=r"^timm weights do not fit mobilenet_v3_large width 1\.0 with 1000 classes: "
                                        r".* \(are these the weights of --preset timm/mobilenetv3_large_100\.ra_in1k\?\)$"):
        convert_file(tmp_path / "small.safetensors", "timm", "mobilenet_v3_large", tmp_path / "small.ckpt", 1.0,
                     "timm/mobilenetv3_large_100.ra_in1k")


def test_presets_are_consistent():
    for name, chosen in PRESETS.items():
        assert name.split("/")[0] == chosen.source and chosen.interpolation in ("bilinear", "bicubic")
        assert 0 < chosen.crop_pct <= 1 and len(chosen.mean) == len(chosen.std) == 3 and 50 < chosen.top1 < 90


@pytest.fixture(scope="module")
def preset_checkpoint(tmp_path_factory):
    """Weights in timm's naming converted as timm's lamb_in1k preset (bicubic), and a folder of 2 images."""
    root = tmp_path_factory.mktemp("preset")
    save_file(published_tensors(known_arrays(), "timm"), str(root / "model.safetensors"))
    done = run_script("convert_weights", "--input", root / "model.safetensors", "--output", root / "small.ckpt",
                      "--preset", "timm/mobilenetv3_small_100.lamb_in1k")
    assert done.returncode == 0, done.stderr
    rng = np.random.default_rng(3)
    (root / "images").mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
    return root


def test_preset_is_recorded_and_eval_infer_export_use_it_unless_a_flag_says_otherwise(preset_checkpoint):
    root = preset_checkpoint
    _, meta = checkpoint.load(root / "small.ckpt")
    assert meta["preset"] == "timm/mobilenetv3_small_100.lamb_in1k"
    assert meta["preprocessing"] == dict(interpolation="bicubic", crop_pct=0.875, mean=[0.485, 0.456, 0.406],
                                         std=[0.229, 0.224, 0.225])
    assert meta["published"] == {"top1": 67.636, "top5": None}

    common = ("--device_target", "CPU", "--pretrained", root / "small.ckpt", "--data_url", root / "images",
              "--resize", "32", "--top_k", "1")
    used = run_script("infer", *common)
    assert used.returncode == 0, used.stderr
    assert used.stderr.splitlines()[-1] == (
        "preprocessing: 32 px, bicubic, crop_pct 0.875, mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225) "
        "(from timm/mobilenetv3_small_100.lamb_in1k)")
    overridden = run_script("infer", *common, "--interpolation", "bilinear", "--mean", "0,0,0")
    assert overridden.returncode == 0, overridden.stderr
    assert overridden.stderr.splitlines()[-1] == (
        "preprocessing: 32 px, bilinear, crop_pct 0.875, mean (0, 0, 0), std (0.229, 0.224, 0.225) "
        "(from timm/mobilenetv3_small_100.lamb_in1k, except --interpolation, --mean from the command line)")

    exported = run_script("export", "--device_target", "CPU", "--pretrained", root / "small.ckpt", "--resize", "32",
                          "--file_name", root / "small_bilinear", "--interpolation", "bilinear")
    assert exported.returncode == 0, exported.stderr
    written = json.loads((root / "small_bilinear.mindir.json").read_text())
    assert written["preprocessing"]["interpolation"] == "bilinear" and written["preset"] == meta["preset"]
    from_export = run_script("infer", *common[:2], "--pretrained", root / "small_bilinear.mindir", *common[4:])
    assert from_export.returncode == 0, from_export.stderr
    assert "preprocessing: 32 px, bilinear, crop_pct 0.875" in from_export.stderr


def resolve(config, meta, own_size=False):
    """preprocessing.resolve of what `config` says (its preprocessing and the keys given as flags)."""
    return preprocessing.resolve(config.preprocessing(), config.flags, meta, own_size)


def test_resolve_precedence_flag_then_model_then_config():
    saved = dict(interpolation="bicubic", crop_pct=0.9, mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0])
    config = build_config(overrides=dict(crop_pct=0.8))  # a flag: wins over the model's 0.9
    resolved, line = resolve(config, {"preprocessing": saved})
    assert resolved.as_meta() == dict(saved, crop_pct=0.8, resize=224)
    assert line.endswith("(from the model's meta, except --crop_pct from the command line)")
    # A checkpoint written before "preprocessing" existed: its training config says how it was trained.
    resolved, _ = resolve(build_config(), {"config": dict(interpolation="bicubic", crop_pct=0.95)})
    assert (resolved.interpolation, resolved.crop_pct) == ("bicubic", 0.95)
    resolved, line = resolve(build_config(overrides=dict(mean=[0.5, 0.5, 0.5])), {})
    assert list(resolved.mean) == [0.5, 0.5, 0.5] and line.endswith("(from the config (the model records none))")


def test_the_image_size_a_model_was_trained_at_is_used_unless_a_flag_or_fine_tuning_says_otherwise():
    trained_at_32 = {"preprocessing": dict(resize=32, interpolation="bilinear", crop_pct=0.875,
                                           mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])}
    resolved, line = resolve(build_config(), trained_at_32)
    assert resolved.resize == 32 and line.startswith("preprocessing: 32 px, bilinear")
    assert resolve(build_config(overrides=dict(resize=40)), trained_at_32)[0].resize == 40
    assert resolve(build_config(), trained_at_32, own_size=True)[0].resize == 224
    # Checkpoints written before the size was recorded: the training config in their meta has it.
    older = {"preprocessing": {"interpolation": "bicubic"}, "config": dict(resize=28, interpolation="bilinear")}
    resolved, _ = resolve(build_config(), older)
    assert (resolved.resize, resolved.interpolation) == (28, "bicubic")


def test_the_resolved_preprocessing_is_what_evaluation_applies(tmp_path):
    from PIL import Image
    from mobilenetv3.data.decoding import EncodedImage
    from mobilenetv3.data.transforms import eval_image, normalize_batch
    saved = dict(interpolation="bilinear", crop_pct=0.875, mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0])  # timm's miil
    resolved, _ = resolve(build_config(overrides=dict(resize=8)), {"preprocessing": saved})
    Image.new("RGB", (30, 20), (51, 102, 204)).save(tmp_path / "a.png")
    pixels = eval_image(EncodedImage(tmp_path / "a.png"), resolved)
    out = normalize_batch(pixels[None], resolved)[0]
    assert out.shape == (3, 8, 8) and np.allclose(out[:, 4, 4], [0.2, 0.4, 0.8], atol=1e-6)


@pytest.mark.parametrize("name, values", [("mean", "1,2"), ("mean", "0,-0.1,0"), ("mean", "0,1.5,0"),
                                          ("std", "1,0,1"), ("std", "1,2,1")])
def test_mean_and_std_are_checked(name, values):
    from mobilenetv3.config import ConfigError
    bounds = {"mean": r"in \[0, 1\]", "std": r"in \(0, 1\]"}[name]
    with pytest.raises(ConfigError, match=rf"^{name} needs 3 numbers \(R, G, B\) {bounds}, e.g. --{name} 0\.\d+,"):
        build_config(overrides={name: values})
    with pytest.raises(ConfigError, match=rf"^{name} \(from overrides\): every number must be finite"):
        build_config(overrides={name: "0.5,nan,0.5"})
    assert build_config(overrides=dict(mean="0,0,0", std="1,1,1")).std == [1.0, 1.0, 1.0]  # timm's miil
