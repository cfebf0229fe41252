"""--quantize int8: scripts/export.py writes an int8 ONNX file that carries the float export's meta, agrees with
it on the test images, and runs with eval/infer --backend onnxruntime; the user errors are one line each."""
import importlib.util
import json
import runpy
import shutil
from pathlib import Path

import numpy as np
import pytest

onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from conftest import REPO, reference_eval_input  # noqa: E402
from mobilenetv3.checkpoints.meta import read_meta  # noqa: E402
from mobilenetv3.cli import run_cli  # noqa: E402
from mobilenetv3.cli import MODEL_FILE_KEYS
from mobilenetv3.config import build_config  # noqa: E402
from mobilenetv3.deploy import export, onnx_backend, quantize  # noqa: E402
from mobilenetv3.deploy.inference import class_names_of, load_model  # noqa: E402

CLASSES = ["class_0", "class_1", "class_2"]


def script(name):
    return runpy.run_path(str(REPO / "scripts" / f"{name}.py"), run_name=f"{name}_script")["main"]


def export_args(checkpoint_path, file_name, *extra):
    return ["--device_target", "CPU", "--num_classes", "3", "--resize", "32", "--file_format", "ONNX",
            "--pretrained", str(checkpoint_path), "--file_name", str(file_name), *map(str, extra)]


@pytest.fixture(scope="module")
def quantized(trained_longer, image_folder, tmp_path_factory):
    """(float .onnx, int8 .onnx) of the trained model, calibrated on its training images."""
    folder = tmp_path_factory.mktemp("int8")
    model = Path(shutil.copy(trained_longer, folder / "small.ckpt"))
    run_cli(script("export"), export_args(model, folder / "model", "--quantize", "int8", "--calib_data",
                                          image_folder / "train", "--calib_images", 24))
    return folder / "model.onnx", folder / "model.int8.onnx"


def test_int8_file_carries_the_float_meta_and_is_quantized(quantized):
    float_path, int8_path = quantized
    float_meta, int8_meta = read_meta(float_path), read_meta(int8_path)
    assert int8_meta.pop("quantization") == dict(format="QDQ", activations="uint8", weights="int8 per channel",
                                                 calibration="minmax", calibration_images=24, engine="onnxruntime")
    assert int8_meta == float_meta and int8_meta["classes"] == CLASSES and int8_meta["image_size"] == 32
    import onnx
    graph = onnx.load(str(int8_path)).graph
    producers = {name: node for node in graph.node for name in node.output}
    weights = {node.name: getattr(producers.get(node.input[1]), "op_type", "initializer")
               for node in graph.node if node.op_type in ("Conv", "Gemm")}
    # Every convolution and Gemm but the stem, squeeze-excitation and classifier included, reads int8 weights;
    # the stem (reading the float images, not quantized ones) stays float, its activation one op. The other
    # hard activations are written out, so that ONNX Runtime's int8 Add and Mul run them. The Gemms'
    # outputs are not quantized: the logits come out of the last Gemm unrounded.
    float_graph = onnx.load(str(float_path)).graph
    float_ops = {node.name: node.op_type for node in float_graph.node}
    left_float = quantize.float_nodes(onnx.load(str(float_path)))
    stem = next(node for node in graph.node if export.INPUT_NAME in node.input)
    assert stem.op_type == "Conv" and left_float == [stem.name, next(
        node.name for node in float_graph.node if stem.output[0] in node.input)]
    assert {name for name, source in weights.items() if source == "initializer"} == {stem.name}
    assert len(weights) == 52 + 2 and {source for name, source in weights.items() if name != stem.name} == {
        "DequantizeLinear"}
    gemms = [node for node in graph.node if node.op_type == "Gemm"]
    assert [producers[node.input[1]].op_type for node in gemms] == ["DequantizeLinear"] * 2
    assert gemms[-1].output[0] == export.OUTPUT_NAME
    assert sorted(node.op_type for node in graph.node if node.op_type in ("HardSwish", "HardSigmoid")) == [
        float_ops[left_float[1]]]


def test_int8_file_is_under_a_third_of_the_float32_one(quantized):
    """The classifier's weights (most of Small's with 1000 classes, 0.6 M of 1.5 M here) are int8 too.
    Measured: 0.30 of the float32 file (the 6-epoch model of 3 classes, 32 px)."""
    float_path, int8_path = quantized
    assert int8_path.stat().st_size < 0.35 * float_path.stat().st_size


def predictor_of(values):
    """(predict, class names) of the model loaded as with `values` as flags."""
    config = build_config(overrides=values)
    predict, meta = load_model(config.pretrained, config.backend, config.threads, config.use_ema,
                               config.subset(MODEL_FILE_KEYS), config.flags)
    return predict, class_names_of(meta)


def test_int8_agrees_with_float32_on_the_images(quantized, image_folder):
    """Top-1 of the int8 file against the float32 export on every image of the synthetic folder (66), and the
    logits' distance. Measured: agreement 1.0 (66 of 66) and logits within 0.03, where the top-2 margins are
    0.06 and more; the bounds allow 3 flips and 3x that distance."""
    settings = dict(device_target="CPU", backend="onnxruntime", resize=32, num_classes=3)
    (float_predict, _), (int8_predict, names) = (predictor_of(dict(settings, pretrained=str(path)))
                                                 for path in quantized)
    assert names == CLASSES
    images = reference_eval_input(sorted(Path(image_folder).glob("*/*/*.jpg")))
    assert len(images) == 66
    reference, int8 = float_predict(images), int8_predict(images)
    agreement = (reference.argmax(axis=1) == int8.argmax(axis=1)).mean()
    assert agreement >= 0.95, agreement
    assert 0 < np.abs(reference - int8).max() <= 0.1  # another computation, not the float file again


def test_eval_and_infer_run_the_int8_file(quantized, image_folder, tmp_path, capsys):
    _, int8_path = quantized
    run_cli(script("infer"), ["--device_target", "CPU", "--backend", "onnxruntime", "--pretrained", str(int8_path),
                              "--data_url", str(image_folder / "val"), "--output", str(tmp_path / "p.json")])
    records = json.loads((tmp_path / "p.json").read_text())
    assert len(records) == 18 and all(r["names"][0] in CLASSES for r in records)
    run_cli(script("eval"), ["--device_target", "CPU", "--backend", "onnxruntime", "--pretrained", str(int8_path),
                             "--data_url", str(image_folder), "--json", str(tmp_path / "m.json")])
    assert json.loads((tmp_path / "m.json").read_text())["images"] == 18
    assert "preprocessing: 32 px, bilinear" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--quantize", "int8", "--calib_data", "{calib}", "--file_format", "MINDIR"],
     "error: --quantize int8 needs --file_format ONNX (got MINDIR): int8 runs with ONNX Runtime or OpenVINO"),
    (["--quantize", "int8"],
     "error: --quantize int8 needs --calib_data DIR: a folder of a few hundred images like those the model will "
     "see, to measure the ranges of its activations"),
    (["--quantize", "int8", "--calib_data", "{empty}"],
     "error: --calib_data {empty} has no image files (.bmp, .jpeg, .jpg, .png, .tif, .tiff, .webp, any case, in any "
     "subfolder); give a folder of images like those the model will see"),
    (["--quantize", "int8", "--calib_data", "{tmp}/missing"],
     "error: --calib_data {tmp}/missing is not a directory"),
    (["--quantize", "int8", "--calib_data", "{calib}", "no onnxruntime"],
     "error: --quantize int8 needs ONNX Runtime: pip install onnxruntime (or pip install .[onnx])"),
    (["--file_format", "ONNX", "--backend", "openvino"],
     "error: --backend openvino shapes the --quantize int8 file for its engine; add --quantize int8, or drop "
     "--backend (a float export runs on every backend)"),
    (["--quantize", "int8", "--calib_data", "{calib}", "--backend", "mindspore"],
     "error: --quantize int8 writes an ONNX file for --backend onnxruntime or openvino, not mindspore"),
], ids=["mindir", "no calib_data", "empty calib_data", "missing calib_data", "no onnxruntime", "backend without int8",
        "int8 for mindspore"])
def test_quantize_errors_are_one_line(extra, message, trained, image_folder, tmp_path, capsys, monkeypatch):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    names = dict(calib=image_folder / "train", empty=tmp_path / "empty", tmp=tmp_path)
    extra = [value.format(**names) for value in extra]
    if "no onnxruntime" in extra:
        extra.remove("no onnxruntime")
        find_spec = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime"
                            else find_spec(name, *a))
    with pytest.raises(SystemExit) as stop:
        run_cli(script("export"), export_args(trained, tmp_path / "model", *extra))
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("error")] == [message.format(**names)], err
    assert not list(tmp_path.glob("model*"))  # refused before exporting anything


@pytest.mark.parametrize("images, size, warnings", [
    (1, (40, 48), ["int8 calibrated on 1 image only: activation ranges from fewer than 32 are weak; give "
                   "--calib_data a folder of a few hundred images like those the model will see (--calib_images, "
                   "default 300)"]),
    (40, (8, 8), ["the calibration images are 8 px on their shorter side (median), the model takes 32 px: "
                  "calibrated on them blown up 4.0x, its ranges may not fit real images; give --calib_data images "
                  "near the model's size or larger"]),
    (40, (200, 150), []),
], ids=["one image", "images a quarter of the model's size", "larger images"])
def test_weak_calibration_is_a_warning(images, size, warnings, trained, tmp_path, capsys):
    """#36: calibration that works but is weak says so in one line each; larger images than the model's are
    what the eval transforms resize anyway. The int8 file is written either way."""
    from conftest import write_image_folder
    calib = write_image_folder(tmp_path / "calib", {"train": images}, size=size, colours=[(120, 120, 120)])
    run_cli(script("export"), export_args(trained, tmp_path / "model", "--quantize", "int8", "--calib_data", calib))
    err = capsys.readouterr().err
    assert [line[len("warning: "):] for line in err.splitlines() if line.startswith("warning: ")] == warnings, err
    assert (tmp_path / "model.int8.onnx").is_file()


def test_written_out_hard_activations_compute_the_fused_ones(quantized, tmp_path):
    """What quantize_onnx quantizes is the float export with HardSwish/HardSigmoid written out: the same logits."""
    import onnx
    float_path, _ = quantized
    model = onnx.load(str(float_path))
    fused = {op: sum(node.op_type == op for node in model.graph.node) for op in ("HardSwish", "HardSigmoid")}
    quantize.write_out_hard_activations(model)
    ops = [node.op_type for node in model.graph.node]
    assert fused["HardSwish"] > 0 and fused["HardSigmoid"] == 9 and "HardSwish" not in ops
    assert ops.count("Clip") == fused["HardSwish"] + fused["HardSigmoid"]
    # Every 1/6 went into the weights of the convolutions after it: one Mul per hard-swish (x * relu6), one
    # per squeeze-excitation (features * gate), none by 1/6.
    assert ops.count("Mul") == fused["HardSwish"] + fused["HardSigmoid"]
    assert "hard_activation.sixth" not in {init.name for init in model.graph.initializer}
    onnx.save(model, str(tmp_path / "written_out.onnx"))
    images = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    logits = [onnx_backend.make_session(path, 1).run(None, {export.INPUT_NAME: images})[0]
              for path in (float_path, tmp_path / "written_out.onnx")]
    assert np.abs(logits[0]).max() > 0.1 and np.abs(logits[0] - logits[1]).max() <= 1e-5


def test_hard_activations_whose_scale_cannot_move_keep_the_division(tmp_path):
    """A hard-swish read by an Add (as a residual would) and a hard-sigmoid that is a graph output keep
    their Mul by 1/6; the hard-swish read by a convolution alone has it moved into the weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(1)
    weight = numpy_helper.from_array(rng.standard_normal((2, 2, 1, 1)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("HardSwish", ["x"], ["a"], name="swish_into_add"),
         helper.make_node("Add", ["a", "x"], ["sum"], name="add"),
         helper.make_node("HardSwish", ["sum"], ["b"], name="swish_into_conv"),
         helper.make_node("Conv", ["b", "w"], ["y"], name="conv"),
         helper.make_node("HardSigmoid", ["y"], ["gate"], name="sigmoid_out", alpha=1 / 6, beta=0.5)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 3])],
        [helper.make_tensor_value_info("gate", TensorProto.FLOAT, [1, 2, 3, 3])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(tmp_path / "fused.onnx"))
    quantize.write_out_hard_activations(model)
    divisions = [node.name for node in model.graph.node if "hard_activation.sixth" in node.input]
    assert sorted(divisions) == ["sigmoid_out.div", "swish_into_add.div"]
    onnx.save(model, str(tmp_path / "written_out.onnx"))
    x = rng.uniform(-5, 5, (1, 2, 3, 3)).astype(np.float32)
    fused, written = (onnx_backend.make_session(tmp_path / f"{name}.onnx", 1).run(None, {"x": x})[0]
                      for name in ("fused", "written_out"))
    assert np.ptp(fused) > 0.5 and np.abs(fused - written).max() <= 1e-6


def test_calibration_ranges_cover_every_batch(quantized, tmp_path):
    """The int8 range of the first quantized tensor, the stem's output, is its min/max over all calibration
    images, the first batch's included (ONNX Runtime's CalibMaxIntermediateOutputs would have dropped the
    first 4 of these 5 batches)."""
    import onnx
    from onnx import helper, numpy_helper
    float_path, _ = quantized
    images = np.random.default_rng(0).uniform(-1.0, 1.0, (5 * quantize.CALIBRATION_BATCH, 3, 32, 32)).astype(np.float32)
    images[0] *= 8  # the extremes, in the first batch only
    model = onnx.load(str(float_path))
    stem_output = next(node for node in model.graph.node if node.name == quantize.float_nodes(model)[1]).output[0]
    model.graph.output.append(helper.make_value_info(stem_output, helper.make_empty_tensor_value_info("").type))
    onnx.save(model, str(tmp_path / "with_stem_output.onnx"))
    session = onnx_backend.make_session(tmp_path / "with_stem_output.onnx", 1)
    outputs = [session.run([stem_output], {export.INPUT_NAME: batch})[0]
               for batch in np.split(images, 5)]
    low, high = min(0.0, min(map(np.min, outputs))), max(0.0, max(map(np.max, outputs)))
    assert high > max(map(np.max, outputs[1:]))  # so a range without the first batch would differ

    written = quantize.quantize_onnx(float_path, tmp_path / "model.int8.onnx", images, {"classes": CLASSES})
    model = onnx.load(str(written))
    constants = {tensor.name: numpy_helper.to_array(tensor) for tensor in model.graph.initializer}
    quantize_stem = next(node for node in model.graph.node
                         if node.op_type == "QuantizeLinear" and node.input[0] == stem_output)
    scale = (high - low) / 255
    assert float(constants[quantize_stem.input[1]]) == pytest.approx(scale, rel=1e-6)
    assert int(constants[quantize_stem.input[2]]) == round(-low / scale)
    assert read_meta(written)["quantization"]["calibration_images"] == 80
