"""--backend openvino: the ONNX files of the ONNX Runtime backend (float32 and int8, given or a checkpoint's
cached export) give ONNX Runtime's logits to float tolerance and the same eval metrics; --threads reaches
OpenVINO; a missing package and a file OpenVINO cannot read are one line each."""
import ast
import importlib.util
import runpy
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from conftest import REPO, openvino_computes_bf16, reference_eval_input  # noqa: E402
from mobilenetv3.cli import MODEL_FILE_KEYS, run_cli  # noqa: E402
from mobilenetv3.config import build_config  # noqa: E402
from mobilenetv3.deploy import onnx_backend  # noqa: E402
from mobilenetv3.deploy.inference import load_model  # noqa: E402
from mobilenetv3.native import cpu_info  # noqa: E402

CLASSES = ["class_0", "class_1", "class_2"]
SETTINGS = dict(device_target="CPU", num_classes=3, resize=32, batch_size=4, num_parallel_workers=2)
needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                                    reason="OpenVINO is not installed: pip install -e '.[openvino]'")


def script(name):
    return runpy.run_path(str(REPO / "scripts" / f"{name}.py"), run_name=f"{name}_script")["main"]


def flags(**values):
    return [str(v) for name, value in dict(SETTINGS, **values).items() for v in (f"--{name}", value)]


def script_error(name, capsys, **values):
    """The one error line of scripts/<name>.py run in this process (exit status 2, no traceback)."""
    with pytest.raises(SystemExit) as stop:
        run_cli(script(name), flags(**values))
    assert stop.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def predictor_of(**values):
    """(predict, meta) of the model loaded as with SETTINGS updated with `values` as flags."""
    config = build_config(overrides=dict(SETTINGS, **values))
    return load_model(config.pretrained, config.backend, config.threads, config.use_ema,
                      config.subset(MODEL_FILE_KEYS), config.flags, config.precision)


@pytest.fixture(scope="module")
def exported(trained_longer, image_folder, tmp_path_factory):
    """(checkpoint, float32 .onnx, int8 .onnx) of the 6-epoch model (the one int8 keeps accurate), in a folder
    of their own, quantized as scripts/export.py --quantize int8 does, calibrated on the training images."""
    folder = tmp_path_factory.mktemp("openvino")
    checkpoint = Path(shutil.copy(trained_longer, folder / "small.ckpt"))
    export_int8(checkpoint, folder / "model", image_folder)
    return checkpoint, folder / "model.onnx", folder / "model.int8.onnx"


def export_int8(checkpoint, file_name, image_folder, *extra):
    """scripts/export.py --quantize int8 of `checkpoint` into `file_name`.onnx and .int8.onnx, calibrated on the
    training images."""
    run_cli(script("export"), ["--device_target", "CPU", "--num_classes", "3", "--resize", "32", "--file_format",
                               "ONNX", "--pretrained", str(checkpoint), "--file_name", str(file_name),
                               "--quantize", "int8", "--calib_data", str(image_folder / "train"),
                               "--calib_images", "48", *extra])


@pytest.fixture(scope="module")
def shaped_for_openvino(exported, image_folder):
    """The int8 file export.py --quantize int8 --backend openvino writes, next to `exported`'s, from the same
    checkpoint and calibration images."""
    checkpoint = exported[0]
    export_int8(checkpoint, checkpoint.parent / "ov", image_folder, "--backend", "openvino")
    return checkpoint.parent / "ov.int8.onnx"


@needs_openvino
@pytest.mark.parametrize("kind, bound", [("float32", 1e-5), ("int8", 0.6)])
def test_openvino_gives_onnxruntimes_logits(exported, image_folder, kind, bound):
    """Every test image (66) through both engines, in one batch and one by one (the batch stays dynamic).
    float32: equal to float32 rounding (kernels that sum in another order), within 1e-5 of the logits' size.
    int8: the same quantized graph on other int8 kernels, which requantize between layers with their own
    rounding: the same top-1 on every image, and logits within `bound` of their size (measured: 0.45, where
    ONNX Runtime's int8 logits are within 0.09 of its float32 ones and OpenVINO's within 0.50: this barely
    trained model's logits are small, 0.4 at most, so int8 rounding shows; the demo model's Top-1 is
    docs/performance.md's)."""
    path = exported[1] if kind == "float32" else exported[2]
    images = reference_eval_input(sorted(Path(image_folder).glob("*/*/*.jpg")))
    assert len(images) == 66
    (openvino, ov_meta), (onnxruntime, ort_meta) = (predictor_of(pretrained=str(path), backend=backend)
                                                    for backend in ("openvino", "onnxruntime"))
    assert ov_meta == ort_meta and ov_meta["classes"] == CLASSES
    expected = onnxruntime(images)
    scale = np.abs(expected).max()
    assert len(set(expected.argmax(axis=1))) == 3  # a model that tells the classes apart
    for logits in (openvino(images), np.concatenate([openvino(image[None]) for image in images])):
        assert logits.shape == expected.shape and logits.dtype == np.float32
        assert np.abs(logits - expected).max() <= bound * scale
        np.testing.assert_array_equal(logits.argmax(axis=1), expected.argmax(axis=1))


@needs_openvino
def test_eval_metrics_are_identical(exported, image_folder, tmp_path, capsys):
    """eval.py's Top-1/Top-5 line with OpenVINO equals ONNX Runtime's, for the checkpoint (its cached export,
    made once and shared by both engines), the given float32 file and the int8 file."""
    checkpoint, float_path, int8_path = exported
    lines = {}
    for pretrained in (checkpoint, float_path, int8_path):
        for backend in ("onnxruntime", "openvino"):
            run_cli(script("eval"), flags(data_url=image_folder, pretrained=pretrained, backend=backend))
            lines[pretrained, backend] = ast.literal_eval(capsys.readouterr().out.splitlines()[0])
        assert lines[pretrained, "openvino"] == lines[pretrained, "onnxruntime"]
    assert lines[checkpoint, "openvino"] == lines[float_path, "openvino"]
    assert lines[float_path, "openvino"]["Top_1_Accuracy"] > 0.9  # a model that tells the classes apart
    assert sorted(p.name for p in checkpoint.parent.glob("small*")) == ["small-32px.onnx", "small.ckpt"]


@needs_openvino
def test_infer_with_openvino_runs_the_int8_file(exported, image_folder, tmp_path, capsys):
    run_cli(script("infer"), flags(data_url=image_folder / "val", pretrained=exported[2], backend="openvino",
                                   output=tmp_path / "p.csv"))
    out = capsys.readouterr().out
    assert "18 images predicted, 0 skipped" in out
    assert (tmp_path / "p.csv").read_text().count("\n") == 19


@needs_openvino
def test_threads_reach_openvino(exported, monkeypatch):
    from mobilenetv3.deploy import openvino_backend
    compiled = []
    original = openvino_backend.CompiledOnnx.__init__

    def recording_init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        compiled.append(self.compiled)

    monkeypatch.setattr(openvino_backend.CompiledOnnx, "__init__", recording_init)
    for threads in (1, 2, 0):
        predict, _ = predictor_of(pretrained=str(exported[1]), backend="openvino", threads=threads)
        assert predict(np.zeros((2, 3, 32, 32), np.float32)).shape == (2, 3)
    assert [c.get_property("INFERENCE_NUM_THREADS") for c in compiled] == [1, 2, cpu_info.physical_cores()]
    assert {c.get_property("INFERENCE_PRECISION_HINT").get_type_name() for c in compiled} == {"f32"}
    assert {c.get_property("ENABLE_CPU_PINNING") for c in compiled} == {False}


@needs_openvino
def test_bf16_where_the_cpu_has_it(exported, image_folder, caplog):
    """--precision bf16: on a CPU with native bfloat16 (OpenVINO lists BF16) the network's layers compute in bf16
    and the logits stay within 10% of their size of float32's (measured: 4%, on this barely trained model's small
    logits), with the same top-1; elsewhere one warning and float32's logits exactly."""
    from mobilenetv3.deploy.openvino_backend import CompiledOnnx
    native = openvino_computes_bf16()
    images = reference_eval_input(sorted(Path(image_folder).glob("*/*/*.jpg")))
    float32, _ = predictor_of(pretrained=str(exported[1]), backend="openvino")
    with caplog.at_level("WARNING"):
        bf16, _ = predictor_of(pretrained=str(exported[1]), backend="openvino", precision="bf16")
    expected, logits = float32(images), bf16(images)
    precisions = {precision for _, precision in CompiledOnnx(exported[1], 1, "bf16").layer_precisions()}
    if native:
        assert "bf16" in precisions and not caplog.records
        assert 0 < np.abs(logits - expected).max() <= 0.1 * np.abs(expected).max()
        np.testing.assert_array_equal(logits.argmax(axis=1), expected.argmax(axis=1))
    else:
        assert "bf16" not in precisions
        assert [r.getMessage().split(":")[0] for r in caplog.records] == ["--precision bf16"]
        np.testing.assert_array_equal(logits, expected)


def test_bf16_without_native_bf16_is_f32_with_a_warning(caplog):
    """What a CPU without AVX512_BF16 or AMX (an AVX2 EPYC: FP32, INT8 only) gets; the test above runs on this
    machine's own CPU."""
    from mobilenetv3.deploy.openvino_backend import native_precision

    class Core:
        def __init__(self, capabilities):
            self.capabilities = capabilities

        def get_property(self, device, name):
            assert (device, name) == ("CPU", "OPTIMIZATION_CAPABILITIES")
            return self.capabilities

    with caplog.at_level("WARNING"):
        assert native_precision(Core(["BF16", "FP32", "INT8"]), "bf16") == "bf16"
        assert native_precision(Core(["FP32", "INT8"]), "f32") == "f32"
        assert not caplog.records
        assert native_precision(Core(["FP32", "INT8"]), "bf16") == "f32"
    assert [r.getMessage() for r in caplog.records] == [
        "--precision bf16: this CPU has no native bf16 (OpenVINO's CPU plugin lists FP32, INT8); computing in f32"]


def test_openvino_starts_without_mindspores_onednn_cap(monkeypatch):
    """The AVX2 cap is MindSpore's (set on AVX-512 CPUs unless the user set one); OpenVINO starts without it,
    whoever set it, and it is back afterwards."""
    monkeypatch.setattr(cpu_info, "cpu_flags", lambda: {"avx2", "avx512f"})
    for environ, cap in (({}, "AVX2"), ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}, "AVX512_CORE")):
        cpu_info.cap_onednn_isa(environ)
        assert environ == {"ONEDNN_MAX_CPU_ISA": cap}
        with cpu_info.onednn_uncapped(environ):
            assert environ == {}
        assert environ == {"ONEDNN_MAX_CPU_ISA": cap}
    monkeypatch.setattr(cpu_info, "cpu_flags", lambda: {"avx2"})
    environ = {}
    cpu_info.cap_onednn_isa(environ)
    with cpu_info.onednn_uncapped(environ):
        assert environ == {}
    assert environ == {}


def test_bf16_needs_openvino(exported, image_folder, capsys):
    for pretrained in exported[:2]:
        assert script_error("eval", capsys, data_url=image_folder, pretrained=pretrained, backend="onnxruntime",
                            precision="bf16") == ("error: --precision bf16 is OpenVINO's: add --backend openvino "
                                                  "(with an .onnx or a checkpoint), or drop --precision")


@needs_openvino
def test_a_file_openvino_cannot_read_is_one_line(exported, image_folder, tmp_path, capsys):
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(exported[1].read_bytes()[:3000])
    assert script_error("infer", capsys, data_url=image_folder / "val", pretrained=truncated, backend="openvino") == (
        f"error: {truncated} is truncated, corrupt or not an ONNX model (OpenVINO: Model can't be parsed)")


def test_missing_openvino_is_one_line(exported, image_folder, capsys, monkeypatch):
    """Without the package (its import fails, as when it is not installed) the one line names the extra."""
    monkeypatch.setitem(sys.modules, "openvino", None)
    for pretrained in (exported[1], exported[0]):
        assert script_error("eval", capsys, data_url=image_folder, pretrained=pretrained, backend="openvino") == (
            "error: --backend openvino needs OpenVINO: pip install -e '.[openvino]' (or pip install openvino)")


@pytest.mark.parametrize("backend", ["onnxruntime", pytest.param("openvino", marks=needs_openvino)])
def test_external_data_missing_is_named(backend, exported, image_folder, tmp_path, capsys):
    """#36: an .onnx whose weights are in a separate file that was not copied with it: the refusal names
    that file and what to do (before: "truncated, corrupt or not an ONNX model")."""
    import onnx
    folder = tmp_path / "copied"
    folder.mkdir()
    onnx.save(onnx.load(str(exported[1])), str(folder / "model.onnx"), save_as_external_data=True,
              location="model.onnx.data", size_threshold=0)
    predict, _ = predictor_of(pretrained=str(folder / "model.onnx"), backend=backend)  # runs with the data beside it
    assert predict(np.zeros((1, 3, 32, 32), np.float32)).shape == (1, 3)
    (folder / "model.onnx.data").rename(tmp_path / "model.onnx.data")
    assert script_error("infer", capsys, data_url=image_folder / "val", pretrained=folder / "model.onnx",
                        backend=backend) == (
        f"error: {folder}/model.onnx keeps its weights in external data (model.onnx.data), missing from "
        f"{folder}: copy it next to the .onnx, or export one self-contained file (scripts/export.py "
        "--file_format ONNX writes no external data)")
    assert onnx_backend.missing_external_data(exported[1]) == []


@needs_openvino
@needs_openvino
def test_the_int8_file_shaped_for_openvino(exported, shaped_for_openvino, image_folder):
    """It keeps HardSwish and HardSigmoid whole, which OpenVINO fuses into the int8 convolutions before them
    (docs/performance.md: faster than the written-out form ONNX Runtime's file has); its meta says so; its
    convolutions and classifier run in u8; and either engine gives it the same top-1 on every image, each
    within the int8 bound of float32's logits (test_openvino_gives_onnxruntimes_logits)."""
    import onnx
    from mobilenetv3.checkpoints.meta import read_meta
    from mobilenetv3.deploy.openvino_backend import CompiledOnnx
    ops = Counter(node.op_type for node in onnx.load(str(shaped_for_openvino)).graph.node)
    float_ops = Counter(node.op_type for node in onnx.load(str(exported[1])).graph.node)
    assert ops["HardSwish"] == float_ops["HardSwish"] > 0 and ops["HardSigmoid"] == float_ops["HardSigmoid"] == 9
    assert "Clip" not in ops and ops["QuantizeLinear"] > 50
    assert read_meta(shaped_for_openvino)["quantization"]["engine"] == "openvino"
    assert read_meta(exported[2])["quantization"]["engine"] == "onnxruntime"
    layers = {key: count for key, count in CompiledOnnx(shaped_for_openvino, 1).layer_precisions().items()
              if key[0] in ("Convolution", "FullyConnected")}
    assert layers == {("Convolution", "u8"): 51, ("Convolution", "f32"): 1, ("FullyConnected", "u8"): 2}
    images = reference_eval_input(sorted(Path(image_folder).glob("*/*/*.jpg")))
    float32 = predictor_of(pretrained=str(exported[1]), backend="onnxruntime")[0](images)
    for backend in ("openvino", "onnxruntime"):
        logits = predictor_of(pretrained=str(shaped_for_openvino), backend=backend)[0](images)
        assert 0 < np.abs(logits - float32).max() <= 0.6 * np.abs(float32).max()
        np.testing.assert_array_equal(logits.argmax(axis=1), float32.argmax(axis=1))


def test_openvino_runs_the_int8_file_in_int8(exported):
    """What OpenVINO's CPU plugin compiles the files to: the int8 file's convolutions and classifier run in
    u8, but the stem, which the quantization leaves float32 (deploy.quantize.float_nodes)."""
    from mobilenetv3.deploy.openvino_backend import CompiledOnnx
    layers = {path.name: {key: count for key, count in CompiledOnnx(path, 1).layer_precisions().items()
                          if key[0] in ("Convolution", "FullyConnected")} for path in exported[1:]}
    assert layers == {"model.onnx": {("Convolution", "f32"): 52, ("FullyConnected", "f32"): 2},
                      "model.int8.onnx": {("Convolution", "u8"): 51, ("Convolution", "f32"): 1,
                                          ("FullyConnected", "u8"): 2}}
