"""--backend onnxruntime: the same predictions and metrics as MindSpore, the export cache, a given .onnx,
the exported graph against torch's export of the same network, and --threads."""
import ast
import json
import os
import runpy
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest

onnxruntime = pytest.importorskip("onnxruntime")

from conftest import REPO  # noqa: E402
from mobilenetv3.checkpoints import files as checkpoint  # noqa: E402
from mobilenetv3.checkpoints.meta import read_meta  # noqa: E402
from mobilenetv3.cli import run_cli  # noqa: E402
from mobilenetv3.cluster import device  # noqa: E402
from mobilenetv3.cli import MODEL_FILE_KEYS
from mobilenetv3.config import build_config  # noqa: E402
from mobilenetv3.deploy import export, onnx_backend  # noqa: E402
from mobilenetv3.deploy.inference import class_names_of, load_model  # noqa: E402
from mobilenetv3.deploy.onnx_graph import ONNX_OPSET  # noqa: E402
from mobilenetv3.errors import UserError  # noqa: E402
from mobilenetv3.native import cpu_info  # noqa: E402

CLASSES = ["class_0", "class_1", "class_2"]
SETTINGS = dict(device_target="CPU", num_classes=3, resize=32, batch_size=4, num_parallel_workers=2)


def flags(**values):
    """["--key", "value", ...] of SETTINGS updated with `values`."""
    return [str(v) for name, value in dict(SETTINGS, **values).items() for v in (f"--{name}", value)]


def run_main(name, capsys, **values):
    """stdout of scripts/<name>.py run in this process (MindSpore's threads are set once per process: every
    call here keeps --threads at its default)."""
    run_cli(runpy.run_path(str(REPO / "scripts" / f"{name}.py"), run_name=f"{name}_script")["main"], flags(**values))
    return capsys.readouterr().out


def export_onnx(checkpoint_path, file_name, capsys):
    """scripts/export.py --file_format ONNX run in this process; returns the .onnx written."""
    run_cli(runpy.run_path(str(REPO / "scripts" / "export.py"), run_name="export_script")["main"],
            ["--device_target", "CPU", "--num_classes", "3", "--resize", "32", "--file_format", "ONNX",
             "--pretrained", str(checkpoint_path), "--file_name", str(file_name)])
    assert capsys.readouterr().out == f"exported {checkpoint_path} to {file_name}.onnx\n"
    return Path(f"{file_name}.onnx")


def cached_session(**values):
    """onnx_backend.cached_session of the config SETTINGS updated with `values` (as flags)."""
    config = build_config(overrides=dict(SETTINGS, **values))
    return onnx_backend.cached_session(config.pretrained, config.threads, config.use_ema,
                                       config.subset(MODEL_FILE_KEYS), config.flags)


def predictor_of(**values):
    """(predict, class names, meta) of the model loaded as with SETTINGS updated with `values` as flags."""
    config = build_config(overrides=dict(SETTINGS, **values))
    predict, meta = load_model(config.pretrained, config.backend, config.threads, config.use_ema,
                               config.subset(MODEL_FILE_KEYS), config.flags)
    return predict, class_names_of(meta), meta


def script_error(name, capsys, **values):
    """The one error line of scripts/<name>.py run in this process."""
    with pytest.raises(SystemExit) as stop:
        run_main(name, capsys, **values)
    assert stop.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, errors
    return errors[0]


@pytest.fixture
def model_copy(trained, tmp_path):
    """The trained checkpoint in a folder of its own, so each test sees its own export cache."""
    return Path(shutil.copy(trained, tmp_path / "small.ckpt"))


def probabilities_by_class(records):
    """[images, classes] probabilities from the records infer writes (ranked indices and probs)."""
    probs = np.zeros((len(records), len(CLASSES)))
    for row, record in zip(probs, records):
        row[record["indices"]] = record["probs"]
    return probs


def test_infer_gives_the_same_predictions_with_both_backends(model_copy, image_folder, tmp_path, capsys):
    outputs = {}
    for backend in ("mindspore", "onnxruntime"):
        outputs[backend] = tmp_path / f"{backend}.json"
        out = run_main("infer", capsys, data_url=image_folder / "val", pretrained=model_copy, backend=backend,
                       output=outputs[backend])
        assert "18 images predicted, 0 skipped" in out
    assert onnx_backend.cache_path(model_copy, 32) == tmp_path / "small-32px.onnx"
    assert onnx_backend.cache_path(model_copy, 32, use_ema=True) == tmp_path / "small-ema-32px.onnx"
    assert (tmp_path / "small-32px.onnx").is_file() and not (tmp_path / "small-32px.onnx.json").exists()
    ours, theirs = (json.loads(outputs[backend].read_text()) for backend in ("mindspore", "onnxruntime"))
    assert [r["path"] for r in ours] == [r["path"] for r in theirs] == sorted(
        str(p) for p in (image_folder / "val").glob("*/*.jpg"))
    assert [r["names"][0] for r in ours] == [r["names"][0] for r in theirs]  # same top-1 on every image
    assert all(r["names"] == [CLASSES[i] for i in r["indices"]] for r in theirs)  # names from the checkpoint
    reference, onnx_probs = probabilities_by_class(ours), probabilities_by_class(theirs)
    assert reference.max(axis=1).min() < 0.9 and np.ptp(reference[:, 0]) > 0.05  # neither certain nor constant
    assert np.abs(reference - onnx_probs).max() <= 1e-4


def test_eval_gives_the_same_metrics_with_both_backends_and_a_given_onnx(model_copy, image_folder, tmp_path,
                                                                         capsys):
    metrics = {}
    for kind, values in {"mindspore": dict(pretrained=model_copy),
                         "onnxruntime": dict(pretrained=model_copy, backend="onnxruntime"),
                         "given .onnx": dict(pretrained=tmp_path / "small-32px.onnx", backend="onnxruntime")}.items():
        out = run_main("eval", capsys, data_url=image_folder, json=tmp_path / f"{kind}.json", **values)
        metrics[kind] = (ast.literal_eval(out.splitlines()[0]), json.loads((tmp_path / f"{kind}.json").read_text()))
    seed_line, saved = metrics["mindspore"]
    assert saved["images"] == 18 and saved["loss"] > 0.1
    for kind in ("onnxruntime", "given .onnx"):
        assert metrics[kind][0] == seed_line
        assert metrics[kind][1]["top1"] == saved["top1"] and metrics[kind][1]["images"] == 18
        assert abs(metrics[kind][1]["loss"] - saved["loss"]) <= 1e-4


def assert_same_logits(actual, expected):
    """Equal up to float32 rounding: kernels that sum in another order (ONNX Runtime against MindSpore, or
    torch against MindSpore) differ by ~1e-6 of the logits' size after 50 layers, and up to 1.1e-5 for Large
    on an AVX2-only EPYC (ONNX Runtime's AVX2 kernels), so the bound is 3e-5 of it: far below what a wrong
    BatchNorm eps, a dropped bias or a misplaced activation moves them by."""
    assert np.abs(actual - expected).max() <= 3e-5 * max(1.0, np.abs(expected).max())


def onnx_logits(path, images):
    return onnx_backend.make_session(path, 1).run(None, {export.INPUT_NAME: images})[0]


def test_cache_is_reused_and_redone_when_the_checkpoint_bytes_change(model_copy, monkeypatch):
    cached, _ = cached_session(pretrained=str(model_copy))
    assert cached == model_copy.with_name("small-32px.onnx")
    meta = read_meta(cached)
    assert meta["source_sha256"] == onnx_backend.file_sha256(model_copy) and meta["classes"] == CLASSES
    written = cached.stat().st_mtime_ns
    images = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    before = onnx_logits(cached, images)

    with monkeypatch.context() as patched:
        patched.setattr(export, "export", lambda *args, **kwargs: pytest.fail("exported again"))
        assert cached_session(pretrained=str(model_copy))[0] == cached
    assert cached.stat().st_mtime_ns == written

    # New weights of the same size and mtime: the shifted classifier bias shifts every logit by `shift`.
    params, saved_meta = checkpoint.load(model_copy)
    shift = np.array([0.5, -0.25, 0.125], np.float32)
    params["classifier.3.bias"] = ms.Tensor(params["classifier.3.bias"].asnumpy() + shift)
    stat = model_copy.stat()
    checkpoint.save(model_copy, params, saved_meta)
    os.utime(model_copy, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (model_copy.stat().st_size, model_copy.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    assert cached_session(pretrained=str(model_copy))[0] == cached
    assert read_meta(cached)["source_sha256"] == onnx_backend.file_sha256(model_copy) \
        != meta["source_sha256"]
    assert np.abs(onnx_logits(cached, images) - before - shift).max() <= 1e-5
    assert sorted(p.name for p in model_copy.parent.iterdir()) == ["small-32px.onnx", "small.ckpt"]


def test_a_changed_image_size_gets_an_export_of_its_own(model_copy):
    paths = {size: cached_session(resize=size, pretrained=str(model_copy))[0] for size in (32, 48)}
    assert paths == {32: model_copy.with_name("small-32px.onnx"), 48: model_copy.with_name("small-48px.onnx")}
    assert [onnx_backend.make_session(p).get_inputs()[0].shape for p in paths.values()] == [
        ["batch", 3, 32, 32], ["batch", 3, 48, 48]]


def test_given_onnx_from_the_export_script(model_copy, image_folder, tmp_path, capsys):
    given = export_onnx(model_copy, tmp_path / "exported" / "model", capsys)
    predict, names, _ = predictor_of(pretrained=str(given), backend="onnxruntime")
    cached_predict, _, _ = predictor_of(pretrained=str(model_copy), backend="onnxruntime")
    mindspore_predict, _, _ = predictor_of(pretrained=str(model_copy))
    images = np.random.default_rng(1).standard_normal((3, 3, 32, 32)).astype(np.float32)
    assert names == CLASSES  # from the meta inside model.onnx
    np.testing.assert_array_equal(predict(images), cached_predict(images))  # the same export, bit for bit
    assert_same_logits(predict(images), mindspore_predict(images))


def test_backend_and_file_errors(model_copy, image_folder, tmp_path, capsys):
    export_onnx(model_copy, tmp_path / "model", capsys)
    cached_session(pretrained=str(model_copy))  # checked too
    bare = without_meta(tmp_path / "model.onnx", tmp_path / "bare.onnx")
    (tmp_path / "corrupt.onnx").write_bytes((tmp_path / "model.onnx").read_bytes()[:3000])
    (tmp_path / "model.mindir").write_bytes(b"never read")
    val = image_folder / "val"
    cases = [
        (dict(pretrained=tmp_path / "model.onnx", backend="mindspore"),
         f"error: {tmp_path}/model.onnx is an exported ONNX model: run it with --backend onnxruntime or --backend "
         "openvino (or pass the checkpoint it was exported from)"),
        (dict(pretrained=tmp_path / "model.mindir", backend="onnxruntime"),
         f"error: {tmp_path}/model.mindir is an exported MINDIR model: run it with --backend mindspore "
         "(or pass the checkpoint it was exported from)"),
        (dict(pretrained=tmp_path / "model.onnx", backend="onnxruntime", resize=64),
         f"error: {tmp_path}/model.onnx was exported for 32-pixel images, but --resize is 64; pass --resize 32 or "
         "leave it out"),
        (dict(pretrained=tmp_path / "model.onnx", resize=64),  # the backend taken from the file, the flag kept
         f"error: {tmp_path}/model.onnx was exported for 32-pixel images, but --resize is 64; pass --resize 32 or "
         "leave it out"),
        (dict(pretrained=bare, backend="onnxruntime", resize=64),
         f"error: {bare} takes images ['batch', 3, 32, 32], but inference needs one input [batch, 3, 64, 64] with "
         "a dynamic batch size; export with scripts/export.py --file_format ONNX or pass --resize to match"),
        (dict(pretrained=tmp_path / "missing.onnx", backend="onnxruntime"),
         f"error: ONNX file {tmp_path}/missing.onnx not found"),
        (dict(pretrained=tmp_path / "missing.ckpt", backend="onnxruntime"),
         f"error: checkpoint {tmp_path}/missing.ckpt not found"),
        (dict(pretrained=model_copy, backend="onnxruntime", model="mobilenet_v3_large"),
         f"error: checkpoint {model_copy} is for model 'mobilenet_v3_small', but model is 'mobilenet_v3_large'; "
         "pass --model mobilenet_v3_small or use another checkpoint"),
    ]
    for values, message in cases:
        assert script_error("infer", capsys, data_url=val, **values) == message
    corrupt = script_error("infer", capsys, data_url=val, pretrained=tmp_path / "corrupt.onnx", backend="onnxruntime")
    assert corrupt.startswith(f"error: {tmp_path}/corrupt.onnx is truncated, corrupt or not an ONNX model "
                              "(InvalidProtobuf: ")


def test_the_engine_of_a_model_file():
    """What load_model runs and serve.py reports (it once reported an .onnx's engines as a list): an exported
    file's own engine unless --backend names another that runs it; a checkpoint the backend asked for."""
    from mobilenetv3.deploy.inference import engine_label, engine_of
    assert engine_of("m.onnx", "mindspore") == "onnxruntime"
    assert engine_of("m.onnx", "openvino") == engine_of("m.onnx", "openvino", {"backend"}) == "openvino"
    assert engine_of("m.MINDIR", "onnxruntime") == "mindspore"
    assert [engine_of("m.ckpt", backend) for backend in ("mindspore", "onnxruntime", "openvino")] == [
        "mindspore", "onnxruntime", "openvino"]
    with pytest.raises(UserError, match="m.mindir is an exported MINDIR model: run it with --backend mindspore"):
        engine_of("m.mindir", "openvino", {"backend"})
    assert engine_label("m.onnx", "mindspore") == "onnxruntime"
    assert engine_label("m.onnx", "openvino", {"backend", "precision"}, "bf16") == "openvino (bf16)"


@pytest.mark.parametrize("key, value, problem", [
    ("mean", "abc", "preprocessing mean is 'abc', not 3 numbers (R, G, B)"),
    ("mean", [0.5, 0.5], "preprocessing mean is [0.5, 0.5], not 3 numbers (R, G, B)"),
    ("mean", None, "preprocessing has no mean"),
    ("std", [0.2, 0.0, 0.2], "preprocessing std is [0.2, 0.0, 0.2], not 3 positive numbers (R, G, B)"),
    ("resize", "big", "preprocessing resize is 'big', not a whole number of pixels"),
    ("crop_pct", 1.5, "preprocessing crop_pct is 1.5, not a number in (0, 1]"),
    ("interpolation", "nearest", "preprocessing interpolation is 'nearest', not bilinear or bicubic"),
    ("image_size", "x", "image_size is 'x', not a whole number of pixels"),
    ("preprocessing", [1], "preprocessing is [1], not an object"),
])
def test_malformed_meta_is_one_line(key, value, problem, model_copy, image_folder, tmp_path, capsys):
    """#36: an .onnx whose meta records its preprocessing or image size wrongly (a hand edit, another tool):
    one line naming the file and the key (before: a TypeError, IndexError or KeyError traceback, or for a
    missing mean the default one, silently). value None: the key is missing."""
    import onnx
    from mobilenetv3.checkpoints.meta import ONNX_META_KEY
    given = export_onnx(model_copy, tmp_path / "model", capsys)
    model = onnx.load(str(given))
    meta = read_meta(given)
    holder = meta if key in ("image_size", "preprocessing") else meta["preprocessing"]
    if value is None:
        del holder[key]
    else:
        holder[key] = value
    export.set_onnx_meta(model, meta)
    onnx.save(model, str(given))
    assert json.loads(next(p.value for p in onnx.load(str(given)).metadata_props if p.key == ONNX_META_KEY)) == meta
    assert script_error("infer", capsys, data_url=image_folder / "val", pretrained=given) == (
        f"error: {given} carries a malformed meta: {problem}; export it again with scripts/export.py")


def without_meta(path, target) -> Path:
    """A copy of the ONNX file `path` without the meta it carries, as from another exporter."""
    import onnx
    model = onnx.load(str(path))
    del model.metadata_props[:]
    onnx.save(model, str(target))
    return Path(target)


def test_an_onnx_file_alone_names_the_classes_and_preprocesses_as_in_training(model_copy, image_folder, tmp_path,
                                                                              capsys):
    """The export of a checkpoint whose preprocessing is not the defaults, run with only --data_url and --pretrained
    (no .json beside it, no --backend, --resize, --num_classes or preprocessing flag): the checkpoint's
    predictions, class names included; the default preprocessing would have given other probabilities."""
    params, meta = checkpoint.load(model_copy)
    trained_with = dict(interpolation="bicubic", crop_pct=0.75, mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3])
    checkpoint.save(model_copy, params, dict(meta, preprocessing=trained_with))
    given = export_onnx(model_copy, tmp_path / "model", capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "small.ckpt"]
    assert read_meta(given)["preprocessing"] == dict(trained_with, resize=32)
    infer = runpy.run_path(str(REPO / "scripts" / "infer.py"), run_name="infer_script")["main"]
    onnx_alone = ["--device_target", "CPU", "--data_url", image_folder / "val", "--pretrained", given]
    records, preprocessing_lines = {}, {}
    for kind, arguments in {
            "checkpoint": flags(pretrained=model_copy, data_url=image_folder / "val", output=tmp_path / "ckpt.json"),
            "onnx": onnx_alone + ["--output", tmp_path / "onnx.json"],
            "onnx, default preprocessing": onnx_alone + [
                "--output", tmp_path / "default.json", "--interpolation", "bilinear", "--crop_pct", "0.875",
                "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225"]}.items():
        run_cli(infer, [str(a) for a in arguments])
        preprocessing_lines[kind] = capsys.readouterr().err.splitlines()[-1]
        records[kind] = json.loads(Path(arguments[arguments.index("--output") + 1]).read_text())
    assert preprocessing_lines["onnx"] == ("preprocessing: 32 px, bicubic, crop_pct 0.75, mean (0.5, 0.4, 0.3), "
                                           "std (0.2, 0.25, 0.3) (from the model's meta)")
    reference, onnx_probs, default_probs = (probabilities_by_class(records[kind]) for kind in records)
    assert [r["names"] for r in records["onnx"]] == [r["names"] for r in records["checkpoint"]]
    assert all(r["names"] == [CLASSES[i] for i in r["indices"]] for r in records["onnx"])
    assert np.abs(onnx_probs - reference).max() <= 1e-4
    assert np.abs(default_probs - reference).max() > 1e-2


def test_threads_reach_the_onnxruntime_session(model_copy, monkeypatch):
    import dataclasses
    sessions = []

    def recording_make_session(*args):
        sessions.append(onnx_backend.make_session(*args))
        return sessions[-1]

    monkeypatch.setattr(onnx_backend, "ONNX_RUNTIME",
                        dataclasses.replace(onnx_backend.ONNX_RUNTIME, open=recording_make_session))
    for threads in (1, 3, 0):
        predict, _, _ = predictor_of(pretrained=str(model_copy), backend="onnxruntime", threads=threads)
        assert predict(np.zeros((2, 3, 32, 32), np.float32)).shape == (2, 3)
    assert [s.get_session_options().intra_op_num_threads for s in sessions] == [1, 3, cpu_info.physical_cores()]
    assert {s.get_session_options().graph_optimization_level for s in sessions} == {
        onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL}


def test_threads_reach_mindspore_once_per_process(model_copy, monkeypatch):
    calls = []
    monkeypatch.setattr(ms.device_context.cpu.op_tuning, "threads_num", calls.append)
    monkeypatch.setattr(device, "_cpu_threads", {})
    predictor_of(pretrained=str(model_copy), threads=3)
    assert device.set_cpu_threads(3) == 3
    with pytest.raises(ValueError, match="already set to 3 in this process; cannot change them to 1"):
        device.set_cpu_threads(1)
    assert calls == [3]
    monkeypatch.setattr(device, "_cpu_threads", {})
    assert device.set_cpu_threads(0) == cpu_info.physical_cores()
    assert calls == [3, cpu_info.physical_cores()]


def test_physical_cores_agree_with_lscpu():
    if shutil.which("lscpu") is None:
        pytest.skip("no lscpu to compare with")
    listing = subprocess.run(["lscpu", "--parse=CPU,CORE,SOCKET"], capture_output=True, text=True, check=True).stdout
    rows = [line.split(",") for line in listing.splitlines() if not line.startswith("#")]
    usable = os.sched_getaffinity(0)
    cores = {(socket, core) for cpu, core, socket in rows if int(cpu) in usable}
    assert cpu_info.physical_cores() == len(cores) >= 1


def op_types(path) -> Counter:
    import onnx
    return Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def optimised_op_types(path) -> Counter:
    """Op types of the graph ONNX Runtime runs (after its ORT_ENABLE_ALL rewrites and fusions)."""
    options = onnx_backend.session_options(1)
    options.optimized_model_filepath = str(path.with_name(path.stem + "-optimised.onnx"))
    onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return op_types(options.optimized_model_filepath)


@pytest.mark.parametrize("model_name", ["mobilenet_v3_small", pytest.param("mobilenet_v3_large", marks=pytest.mark.slow)])  # Large: with --runslow
def test_export_is_the_graph_of_torchs_export(model_name, tmp_path):
    """Our export of a network and torch's export of its twin with the same weights: the same op types in
    the file (BN folded, HardSwish/HardSigmoid as single ops), the same graph after ONNX Runtime's
    optimisations, and the same logits."""
    torch = pytest.importorskip("torch")
    from mobilenetv3.deploy.convert import convert_state_dict
    from mobilenetv3.models.factory import create_model
    from benchmarks.torch_reference import TorchMobileNetV3, randomize_
    twin = randomize_(TorchMobileNetV3(model_name, num_classes=10), seed=3, image_size=64).eval()
    weights, _ = convert_state_dict(twin.state_dict(), "torchvision", model_name)
    net = create_model(model_name, 10)
    not_loaded, _ = ms.load_param_into_net(net, {k: ms.Parameter(ms.Tensor(v), name=k) for k, v in weights.items()},
                                           strict_load=True)
    assert not_loaded == []
    ours = export.export(net, tmp_path / "ours", "ONNX", 64)
    reference = tmp_path / "torch.onnx"
    torch.onnx.export(twin, torch.zeros(1, 3, 64, 64), str(reference), input_names=[export.INPUT_NAME],
                      output_names=[export.OUTPUT_NAME], opset_version=ONNX_OPSET, dynamo=False,
                      dynamic_axes={export.INPUT_NAME: {0: "batch"}, export.OUTPUT_NAME: {0: "batch"}})

    ours_ops, reference_ops = op_types(ours), op_types(reference)
    del reference_ops["Identity"]  # torch's aliases of shared initialisers; ONNX Runtime drops them
    assert ours_ops == reference_ops
    assert ours_ops["BatchNormalization"] == ours_ops["Clip"] == ours_ops["Div"] == 0
    assert ours_ops["HardSwish"] > 0 and ours_ops["HardSigmoid"] > 0
    assert optimised_op_types(ours) == optimised_op_types(reference)

    images = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32)
    cell = net(ms.Tensor(images)).asnumpy()
    with torch.no_grad():
        torch_logits = twin(torch.from_numpy(images)).numpy()
    assert np.abs(cell).max() > 1.0  # large enough for rounding differences to show
    assert_same_logits(onnx_logits(ours, images), cell)
    assert_same_logits(onnx_logits(reference, images), torch_logits)


def test_ctrl_c_is_one_line_and_exit_130(model_copy, tmp_path, capsys):
    """A real SIGINT in the middle of an ONNX Runtime evaluation: no traceback, the shell's status for SIGINT."""
    import signal
    import sys
    from conftest import write_image_folder
    given = export_onnx(model_copy, tmp_path / "model", capsys)
    data = write_image_folder(tmp_path / "many", {"val": 200}, size=(8, 8))
    process = subprocess.Popen([sys.executable, "-u", str(REPO / "scripts" / "eval.py"),
                                *flags(data_url=data, pretrained=given, backend="onnxruntime", batch_size=1)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stderr:
        if line.startswith("50/600 batches"):  # the progress line (stderr is not a terminal)
            process.send_signal(signal.SIGINT)
            break
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-2000:]
    assert err.splitlines()[-1] == "interrupted (Ctrl-C)" and "Traceback" not in err, err[-2000:]
    assert "Top_1_Accuracy" not in out
