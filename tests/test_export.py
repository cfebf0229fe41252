"""Export to MINDIR and ONNX: the files compute the checkpoint's logits for any batch size."""
import json
import runpy
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest

from conftest import REPO, run_script
from mobilenetv3.checkpoints import files as checkpoint
from mobilenetv3.errors import UserError
from mobilenetv3.deploy.export import export, export_path
from mobilenetv3.models.factory import create_model, model_from_checkpoint

MODEL = dict(model="mobilenet_v3_small", num_classes=10, width=0.5)
IMAGE_SIZE = 48
BN_EPS = 1e-5  # not the default 1e-3, so a model rebuilt without the checkpoint's eps gives other logits
IMAGES = np.random.default_rng(0).standard_normal((4, 3, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory):
    """Small model with random BatchNorm statistics (variances down to 0.01, where eps matters), biases
    and weights, scaled so that activations keep their size through every layer (unlike the
    training init with fresh statistics, whose logits hardly depend on the image)."""
    net = create_model(MODEL["model"], MODEL["num_classes"], MODEL["width"])
    rng = np.random.default_rng(0)
    params = {p.name: p for p in net.get_parameters()}
    for name, param in params.items():
        prefix, _, leaf = name.rpartition(".")
        if leaf == "moving_variance":
            variance = rng.uniform(0.01, 1.0, param.shape)
            param.set_data(ms.Tensor(variance, ms.float32))
            # scale by the standard deviation so activations keep their size through the layers
            params[f"{prefix}.gamma"].set_data(ms.Tensor(np.sqrt(variance) * rng.uniform(0.5, 1.5, param.shape),
                                                         ms.float32))
        elif leaf in ("moving_mean", "beta", "bias"):
            param.set_data(ms.Tensor(rng.normal(0.0, 0.1, param.shape), ms.float32))
        elif leaf == "weight":
            fan_in = int(np.prod(param.shape[1:]))
            param.set_data(ms.Tensor(rng.normal(0.0, np.sqrt(2.0 / fan_in), param.shape), ms.float32))
    path = tmp_path_factory.mktemp("export") / "small.ckpt"
    checkpoint.save(path, params, dict(MODEL, bn_eps=BN_EPS, bn_momentum=0.99, classes=None))
    return path


def checkpoint_logits(path, bn_eps):
    """The checkpoint's eval-mode logits for IMAGES, from a model built and loaded independently of export."""
    net = create_model(MODEL["model"], MODEL["num_classes"], MODEL["width"], bn_eps=bn_eps)
    checkpoint.load_weights(net, path, new_classifier_ok=False)
    net.set_train(False)
    return net(ms.Tensor(IMAGES)).asnumpy()


@pytest.fixture(scope="module")
def expected(random_checkpoint):
    logits = checkpoint_logits(random_checkpoint, BN_EPS)
    assert np.abs(logits - logits.mean(axis=0)).max() > 0.1  # they depend on the image
    return logits


def checkpoint_model(path):
    return model_from_checkpoint(str(path), expected=MODEL, fallback=MODEL)[0]


def onnx_logits(path, images):
    onnxruntime = pytest.importorskip("onnxruntime")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"images": images})[0]


def test_mindir_loads_back_and_takes_any_batch(random_checkpoint, expected, tmp_path):
    path = export(checkpoint_model(random_checkpoint), tmp_path / "small", "MINDIR", IMAGE_SIZE)
    assert path == tmp_path / "small.mindir"
    graph = ms.nn.GraphCell(ms.load(str(path)))
    for batch in (1, 3):
        logits = graph(ms.Tensor(IMAGES[:batch])).asnumpy()
        assert np.abs(logits - expected[:batch]).max() <= 1e-5


def test_onnx_matches_onnxruntime_for_any_batch(random_checkpoint, expected, tmp_path):
    onnx = pytest.importorskip("onnx")
    path = export(checkpoint_model(random_checkpoint), tmp_path / "small.onnx", "ONNX", IMAGE_SIZE)
    graph = onnx.load(str(path)).graph
    dims = [[d.dim_param or d.dim_value for d in tensor.type.tensor_type.shape.dim]
            for tensor in (graph.input[0], graph.output[0])]
    assert dims == [["batch", 3, IMAGE_SIZE, IMAGE_SIZE], ["batch", MODEL["num_classes"]]]
    for batch in (1, 4):
        assert np.abs(onnx_logits(path, IMAGES[:batch]) - expected[:batch]).max() <= 1e-4


def test_script_exports_next_to_the_checkpoint_with_its_bn_eps(random_checkpoint, expected):
    pytest.importorskip("onnx")
    result = run_script("export", "--device_target", "CPU", "--model", MODEL["model"], "--num_classes",
                        MODEL["num_classes"], "--width", MODEL["width"], "--pretrained", random_checkpoint,
                        "--file_format", "ONNX", "--resize", IMAGE_SIZE)
    assert result.returncode == 0, result.stderr
    path = random_checkpoint.with_suffix(".onnx")
    assert f"to {path}" in result.stdout
    logits = onnx_logits(path, IMAGES)
    assert np.abs(logits - expected).max() <= 1e-4
    # eps 1e-3 (the --bn_eps default) would have given clearly different logits
    assert np.abs(logits - checkpoint_logits(random_checkpoint, 1e-3)).max() > 0.02


def test_export_names():
    assert export_path("runs/small-30_100.ckpt", "MINDIR") == Path("runs/small-30_100.mindir")
    assert export_path("small.ckpt", "ONNX", "out/model") == Path("out/model.onnx")
    assert export_path("small.ckpt", "ONNX", "model.onnx") == Path("model.onnx")
    assert export_path("small.ckpt", "MINDIR", "model.v2") == Path("model.v2.mindir")
    assert export_path("runs/small-30_100.ckpt", "ONNX", use_ema=True) == Path("runs/small-30_100-ema.onnx")
    assert export_path("small.ckpt", "ONNX", "model", use_ema=True) == Path("model.onnx")  # a name given is kept
    with pytest.raises(ValueError, match="AIR"):
        export_path("small.ckpt", "AIR")


def test_script_needs_a_checkpoint():
    main = runpy.run_path(str(REPO / "scripts" / "export.py"), run_name="export_script")["main"]
    with pytest.raises(UserError, match="--pretrained"):
        main(["--device_target", "CPU", "--file_format", "ONNX"])


def test_each_exported_file_has_its_own_meta(random_checkpoint, tmp_path):
    """MINDIR at 64 px, then ONNX at 32 px under the same name: each file keeps the image size it was made for,
    the MINDIR in model.mindir.json, the ONNX file inside itself (a model.onnx.json an older export left is
    removed, so nothing beside the file can contradict it)."""
    onnx = pytest.importorskip("onnx")
    from mobilenetv3.checkpoints.meta import ONNX_META_KEY, read_meta, sidecar_path
    from mobilenetv3.deploy.export import checked_meta
    net, meta = model_from_checkpoint(str(random_checkpoint), expected=MODEL, fallback=MODEL)
    mindir = export(net, tmp_path / "model", "MINDIR", 64, meta)
    sidecar_path(tmp_path / "model.onnx").write_text('{"image_size": 48}')
    onnx_file = export(net, tmp_path / "model", "ONNX", 32, meta)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.mindir", "model.mindir.json", "model.onnx"]
    embedded = {prop.key: prop.value for prop in onnx.load(str(onnx_file)).metadata_props}[ONNX_META_KEY]
    assert read_meta(onnx_file, embedded) == dict(meta, image_size=32)
    assert read_meta(mindir) == dict(meta, image_size=64)
    assert checked_meta(mindir, "MINDIR", MODEL["num_classes"], dict(MODEL, resize=64))["image_size"] == 64
    with pytest.raises(UserError, match="model.mindir was exported for 64-pixel images, but --resize is 32"):
        checked_meta(mindir, "MINDIR", MODEL["num_classes"], dict(MODEL, resize=32))
    # Without --resize the file's size is taken (preprocessing.recorded), whatever the config file says.
    assert checked_meta(mindir, "MINDIR", MODEL["num_classes"], expected={})["image_size"] == 64
    with pytest.raises(UserError, match="the mobilenetv3.meta metadata of .*model.onnx is not readable JSON"):
        read_meta(onnx_file, "{not json")


def test_exporting_at_another_size_than_the_checkpoint_records_warns(random_checkpoint, tmp_path, capsys):
    from mobilenetv3.data.preprocessing import Preprocessing
    net, meta = model_from_checkpoint(str(random_checkpoint), expected=MODEL, fallback=MODEL)
    at_32 = tmp_path / "small-32px.ckpt"
    checkpoint.save(at_32, {p.name: p for p in net.get_parameters()},
                    dict(meta, preprocessing=Preprocessing(resize=32).as_meta()))
    main = runpy.run_path(str(REPO / "scripts" / "export.py"), run_name="export_script")["main"]
    common = ["--device_target", "CPU", "--pretrained", at_32, "--file_format", "MINDIR"]
    main([*map(str, common), "--resize", "48", "--file_name", str(tmp_path / "at48")])
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"warning: exporting {at_32} for 48-pixel images, but its meta records 32 px (the size it was trained at); "
        "its accuracy at 48 px is unknown and usually far lower: pass --resize 32 or leave --resize out")
    # The size it records, given or left to the meta: no warning.
    for resize in (["--resize", "32"], []):
        main([*map(str, common), *resize, "--file_name", str(tmp_path / "at32")])
        assert "warning" not in capsys.readouterr().err
        assert json.loads((tmp_path / "at32.mindir.json").read_text())["image_size"] == 32
    # A checkpoint that records no size (from elsewhere): nothing to compare with.
    main([*map(str, ["--device_target", "CPU", "--pretrained", random_checkpoint, "--file_format", "MINDIR",
                     "--model", MODEL["model"], "--num_classes", MODEL["num_classes"], "--width", MODEL["width"],
                     "--resize", 48, "--file_name", tmp_path / "other"])])
    assert "warning" not in capsys.readouterr().err
