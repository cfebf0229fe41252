"""Folder inference: checkpoint and exported MINDIR agree, class names, image kinds, bad files, outputs."""
import csv
import json
import re
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest
from PIL import Image

from conftest import REPO, reference_eval_input, run_main, run_script, script_main
from mobilenetv3.checkpoints import files as checkpoint
from mobilenetv3.checkpoints.meta import sidecar_path
from mobilenetv3.cli import run_cli
from mobilenetv3.cli import MODEL_FILE_KEYS
from mobilenetv3.config import build_config
from mobilenetv3.data.imagenet import display_names, model_classes
from mobilenetv3.deploy.inference import (Prediction, class_names_of, load_model, predict_images, spreadsheet_text,
                                          write_predictions)
from mobilenetv3.models.factory import create_model

CLASSES = ["class_0", "class_1", "class_2"]
SETTINGS = dict(device_target="CPU", num_classes=3, resize=32, batch_size=6)  # 6 images per val class


def flags(**values):
    """["--key", "value", ...] of SETTINGS updated with `values`."""
    return [str(v) for name, value in dict(SETTINGS, **values).items() for v in (f"--{name}", value)]


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    """The checkpoint exported by the export script (in this process): model.mindir and model.json."""
    path = tmp_path_factory.mktemp("exported") / "model"
    script_main("export")(["--device_target", "CPU", "--num_classes", "3", "--resize", "32", "--file_format", "MINDIR",
                           "--pretrained", str(trained), "--file_name", str(path)])
    return path.with_suffix(".mindir")


@pytest.fixture(scope="module")
def predictors(trained, exported):
    """(predict, class names) of the checkpoint and of the MINDIR, loaded once: each compiles its graph."""
    return {kind: predictor_of(path) for kind, path in (("checkpoint", trained), ("mindir", exported))}


def predictor_of(path):
    """(predict, class names) of the model file `path`, loaded as with SETTINGS as flags."""
    config = build_config(overrides=dict(SETTINGS, pretrained=str(path)))
    predict_logits, meta = load_model(config.pretrained, config.backend, config.threads, config.use_ema,
                                      config.subset(MODEL_FILE_KEYS), config.flags)
    return predict_logits, class_names_of(meta)


def predict(predictor, folder, **settings):
    predict_logits, class_names = predictor
    config = build_config(overrides=dict(SETTINGS, **settings))
    return predict_images(predict_logits, folder, config.preprocessing(), class_names, config.top_k, config.batch_size)


def test_export_writes_the_checkpoint_meta_next_to_the_mindir(trained, exported):
    assert sidecar_path(exported) == exported.with_name("model.mindir.json")
    saved = json.loads(sidecar_path(exported).read_text())
    assert saved == dict(checkpoint.load(trained)[1], image_size=32)
    assert (saved["model"], saved["num_classes"], saved["classes"]) == ("mobilenet_v3_small", 3, CLASSES)


def reference_probabilities(trained, paths):
    """Softmax of the checkpoint's logits, computed without the inference module: Pillow decoding, one
    eval transform per image, a model built and loaded here."""
    meta = checkpoint.load(trained)[1]
    net = create_model(meta["model"], meta["num_classes"], meta["width"], bn_momentum=meta["bn_momentum"],
                       bn_eps=meta["bn_eps"])
    checkpoint.load_weights(net, trained, new_classifier_ok=False)
    net.set_train(False)
    logits = net(ms.Tensor(reference_eval_input(paths)))
    logits = logits.asnumpy().astype(np.float64)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    return probs / probs.sum(axis=1, keepdims=True)


def test_checkpoint_and_mindir_give_the_same_predictions(trained, predictors, image_folder):
    folder = image_folder / "val"
    paths = sorted(folder.glob("*/*.jpg"))
    reference = reference_probabilities(trained, paths)
    assert reference.max(axis=1).min() < 0.9 and np.ptp(reference[:, 0]) > 0.05  # neither certain nor constant
    probs = {}
    for kind, predictor in predictors.items():
        assert predictor[1] == CLASSES  # the MINDIR's from the meta written next to it
        predictions, skipped = predict(predictor, folder)
        assert skipped == [] and [p.path for p in predictions] == [str(p) for p in paths]
        for prediction, row in zip(predictions, reference):
            assert prediction.indices == np.argsort(-row, kind="stable").tolist()  # all 3 classes, best first
            assert prediction.names == [CLASSES[i] for i in prediction.indices]
            assert np.abs(np.array(prediction.probs) - row[prediction.indices]).max() <= 1e-5
        probs[kind] = np.array([p.probs for p in predictions])
    assert np.abs(probs["checkpoint"] - probs["mindir"]).max() <= 1e-5


def class_names_for(num_classes, saved=None):
    """What infer prints for a model's classes."""
    return display_names(model_classes(num_classes, saved))


def test_class_names_for():
    imagenet = class_names_for(1000)
    assert len(imagenet) == 1000
    assert (imagenet[0], imagenet[999]) == ("tench, Tinca tinca", "toilet tissue, toilet paper, bathroom tissue")
    assert class_names_for(3, ["a", "b", "c"]) == ["a", "b", "c"]
    assert class_names_for(1000, [f"k{i}" for i in range(1000)])[0] == "k0"  # the checkpoint's own list wins
    assert class_names_for(2, ["n01440764", "dog"]) == ["tench, Tinca tinca", "dog"]  # WordNet ids read as names
    assert class_names_for(3) == ["0", "1", "2"]
    assert class_names_for(3, None) == class_names_for(3, []) == ["0", "1", "2"]


def noise(size=(30, 40), channels=3, seed=0, dtype=np.uint8, high=256):
    shape = size if channels == 1 else (*size, channels)
    return np.random.default_rng(seed).integers(0, high, shape).astype(dtype)


WALK_ORDER = ["binary.tiff", "bitmap.bmp", "gray.jpg", "photo.WebP", "scan.TIF", "tiny.jpg", "sub/palette.png",
              "sub/rgba.PNG", "sub/deeper/cmyk.JPEG", "sub/deeper/sixteen_bit.png"]


def write_mixed_folder(root: Path):
    """Good images of every mode and format (nested, upper-case extensions), three bad files and a
    non-image file; returns (good paths in walk order: a folder's files sorted, then its subfolders,
    {bad path: expected reason})."""
    good = {
        "gray.jpg": Image.fromarray(noise(channels=1), "L"),
        "sub/rgba.PNG": Image.fromarray(noise(channels=4), "RGBA"),
        "sub/palette.png": Image.fromarray(noise(seed=1)).convert("P"),
        "sub/deeper/cmyk.JPEG": Image.fromarray(noise(channels=4, seed=2), "CMYK"),
        "sub/deeper/sixteen_bit.png": Image.fromarray(noise(channels=1, dtype=np.uint16, high=65536)),
        "photo.WebP": Image.fromarray(noise(seed=3)),
        "bitmap.bmp": Image.fromarray(noise(seed=4)),
        "scan.TIF": Image.fromarray(noise(seed=5)),
        "binary.tiff": Image.fromarray(noise(channels=1, seed=6) > 127),
        "tiny.jpg": Image.fromarray(noise(size=(1, 1))),
    }
    for name, image in good.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        image.save(root / name)
    assert Image.open(root / "sub/deeper/sixteen_bit.png").mode.startswith("I")  # really 16-bit
    full = (root / "gray.jpg").read_bytes()
    (root / "sub" / "truncated.jpg").write_bytes(full[:len(full) // 2])
    (root / "empty.jpg").write_bytes(b"")
    (root / "notes.png").write_text("not an image\n")
    (root / "readme.txt").write_text("not an image extension: ignored\n")
    bad = {root / "sub" / "truncated.jpg": "OSError: image file is truncated",
           root / "empty.jpg": "UnidentifiedImageError: cannot identify image file",
           root / "notes.png": "UnidentifiedImageError: cannot identify image file"}
    return [root / name for name in WALK_ORDER], bad


def test_every_image_kind_is_predicted_and_bad_files_are_listed(trained, tmp_path):
    good, bad = write_mixed_folder(tmp_path / "mixed")
    output = tmp_path / "out" / "preds.json"
    result = run_main("infer", *flags(model="mobilenet_v3_small", data_url=tmp_path / "mixed",
                                      pretrained=trained, output=output))
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    pattern = re.compile(r"^(.+): (class_\d) \((\d\.\d{4})\), (class_\d) \((\d\.\d{4})\), (class_\d) \((\d\.\d{4})\)$")
    printed = [pattern.match(line) for line in lines if line.startswith(str(tmp_path))]
    assert [Path(m[1]) for m in printed] == good  # top_k 5 clamped to the 3 classes
    skipped = [line for line in lines if line.startswith("skipped ")]
    assert len(skipped) == len(bad)
    for path, reason in bad.items():
        assert any(line.startswith(f"skipped {path}: {reason}") for line in skipped), (path, skipped)
    assert lines.index(skipped[0]) > lines.index(printed[-1][0])  # listed at the end
    assert f"{len(good)} images predicted, {len(bad)} skipped" in lines
    records = json.loads(output.read_text())
    assert [list(r) for r in records] == [["path", "indices", "names", "probs"]] * len(good)
    assert [r["path"] for r in records] == [m[1] for m in printed]
    for record, match in zip(records, printed):
        assert sorted(record["indices"]) == [0, 1, 2]
        assert record["names"] == [CLASSES[i] for i in record["indices"]] == [match[2], match[4], match[6]]
        assert record["probs"] == sorted(record["probs"], reverse=True)
        assert sum(record["probs"]) == pytest.approx(1.0, abs=1e-9)
        assert [f"{p:.4f}" for p in record["probs"]] == [match[3], match[5], match[7]]


def test_mindir_script_writes_csv_with_class_names(exported, predictors, image_folder, tmp_path):
    output = tmp_path / "preds.csv"
    result = run_script("infer", *flags(data_url=image_folder / "val", pretrained=exported, output=output,
                                        top_k=2))
    assert result.returncode == 0, result.stderr[-2000:]
    with output.open(newline="") as table:
        rows = list(csv.reader(table))
    assert rows[0] == ["path", "index_1", "name_1", "prob_1", "index_2", "name_2", "prob_2"]
    paths = sorted(str(p) for p in (image_folder / "val").glob("*/*.jpg"))
    assert [row[0] for row in rows[1:]] == paths
    expected = {p.path: p for p in predict(predictors["mindir"], image_folder / "val", top_k=2)[0]}
    for row in rows[1:]:
        want = expected[row[0]]
        assert row[1:] == [str(v) for pair in zip(want.indices, want.names, want.probs) for v in pair]
        assert row[2] == CLASSES[int(row[1])] and row[5] == CLASSES[int(row[4])]
    assert "18 images predicted, 0 skipped" in result.stdout


def test_top_k_is_at_most_the_number_of_classes(predictors, image_folder):
    for top_k, length in ((1, 1), (2, 2), (3, 3), (50, 3)):
        predictions, _ = predict(predictors["checkpoint"], image_folder / "val" / "class_0", top_k=top_k)
        assert {len(p.indices) for p in predictions} == {length}


def test_write_predictions_json_and_csv(tmp_path):
    predictions = [Prediction("a/1.jpg", [2, 0], ["cat", "dog"], [0.75, 0.25]),
                   Prediction("b,2.png", [0, 1], ["dog", "fish, salmon"], [0.5, 0.5])]
    write_predictions(predictions, tmp_path / "p.json")
    assert json.loads((tmp_path / "p.json").read_text()) == [
        {"path": "a/1.jpg", "indices": [2, 0], "names": ["cat", "dog"], "probs": [0.75, 0.25]},
        {"path": "b,2.png", "indices": [0, 1], "names": ["dog", "fish, salmon"], "probs": [0.5, 0.5]}]
    write_predictions(predictions, tmp_path / "P.CSV")
    assert (tmp_path / "P.CSV").read_bytes().decode() == ("path,index_1,name_1,prob_1,index_2,name_2,prob_2\r\n"
                                                "a/1.jpg,2,cat,0.75,0,dog,0.25\r\n"
                                                '"b,2.png",0,dog,0.5,1,"fish, salmon",0.5\r\n')



def test_no_csv_cell_starts_like_a_spreadsheet_formula_and_json_stays_exact(tmp_path):
    """Before: a file named =HYPERLINK(...).jpg was a live formula when the CSV was opened in Excel."""
    risky = ['=HYPERLINK("http://x","y").jpg', "+1.jpg", "-2.jpg", "@SUM(A1).jpg", "\tcmd.jpg", "\rcmd.jpg"]
    predictions = [Prediction(name, [0, 1], ["=cmd|' /C calc'!A0", "-minus"], [0.5, 0.5]) for name in risky]
    write_predictions(predictions, tmp_path / "p.csv")
    with (tmp_path / "p.csv").open(newline="") as rows:
        cells = [cell for row in list(csv.reader(rows))[1:] for cell in row]
    text_cells = [cell for cell in cells if not cell.replace(".", "").isdigit()]
    assert len(text_cells) == 3 * len(risky)
    assert all(cell.startswith("'") and cell[1:] in risky + ["=cmd|' /C calc'!A0", "-minus"] for cell in text_cells)
    write_predictions(predictions, tmp_path / "p.json")
    assert [p["path"] for p in json.loads((tmp_path / "p.json").read_text())] == risky
    assert spreadsheet_text("plain/1.jpg") == "plain/1.jpg"

def run_infer_expecting_error(capsys, **values):
    """The one error line of the infer script, and its stdout."""
    with pytest.raises(SystemExit) as stop:
        run_cli(script_main("infer"), flags(**values))
    assert stop.value.code == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if not line.startswith(("warning:", "preprocessing:"))]
    assert len(errors) == 1 and errors[0].startswith("error: "), errors
    return errors[0], captured.out


def test_empty_folder_is_an_error(trained, tmp_path, capsys):
    (tmp_path / "empty" / "nested").mkdir(parents=True)
    (tmp_path / "empty" / "nested" / "notes.txt").write_text("no images here")
    error, _ = run_infer_expecting_error(capsys, data_url=tmp_path / "empty", pretrained=trained)
    assert error.startswith(f"error: data_url {tmp_path / 'empty'} has no image files (.bmp, .jpeg, .jpg, .png, .tif, .tiff, "
                            ".webp, any case, in any subfolder)")


def test_a_folder_of_only_unreadable_files_is_an_error(trained, tmp_path, capsys):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.jpg").write_bytes(b"")
    error, out = run_infer_expecting_error(capsys, data_url=tmp_path / "bad", pretrained=trained)
    assert error == f"error: none of the 1 image files in {tmp_path / 'bad'} could be read (listed above)"
    assert out.startswith(f"skipped {tmp_path / 'bad' / 'a.jpg'}: UnidentifiedImageError")


@pytest.mark.parametrize("values,message", [
    (dict(output="preds.txt"), r"--output preds.txt: use a file name ending in .json or .csv, got '.txt'"),
    (dict(resize=64), r"\S+model.mindir was exported for 32-pixel images, but --resize is 64; pass --resize 32 or "
                      r"leave it out"),
    (dict(num_classes=1000), r"\S+model.mindir is for num_classes 3, but num_classes is 1000; pass --num_classes 3"),
    (dict(pretrained="missing.mindir"), r"MINDIR file missing.mindir not found"),
], ids=["output_suffix", "resize", "num_classes", "missing"])
def test_mindir_and_output_errors(exported, image_folder, capsys, values, message):
    error, _ = run_infer_expecting_error(capsys, **dict(dict(data_url=image_folder / "val", pretrained=exported),
                                                        **values))
    assert re.search(message, error), error


def test_corrupt_mindir_is_an_error(exported, image_folder, tmp_path, capsys):
    corrupt = tmp_path / "model.mindir"
    corrupt.write_bytes(exported.read_bytes()[:1000])
    error, _ = run_infer_expecting_error(capsys, data_url=image_folder / "val", pretrained=corrupt)
    assert re.search(r"model.mindir is truncated, corrupt or not a MINDIR file", error), error


def test_mindir_without_meta_names_classes_by_index_and_checks_their_number(exported, image_folder, tmp_path,
                                                                            capsys):
    bare = tmp_path / "bare.mindir"
    bare.write_bytes(exported.read_bytes())
    assert predictor_of(bare)[1] == ["0", "1", "2"]
    error, _ = run_infer_expecting_error(capsys, data_url=image_folder / "val" / "class_0", pretrained=bare,
                                         num_classes=1000)
    assert error == "error: the model gives 3 class scores, but num_classes is 1000; pass --num_classes 3"


@pytest.mark.parametrize("output,message", [
    ("{tmp}/preds.json", "--output {tmp}/preds.json is a directory; give a file name"),
    ("{tmp}", "--output {tmp} is a directory; give a file name ending in .json or .csv"),
    ("/proc/x.json", "--output /proc/x.json cannot be written ("),
], ids=["directory", "directory_without_suffix", "proc"])
def test_output_is_checked_before_predicting(exported, image_folder, tmp_path, capsys, output, message):
    (tmp_path / "preds.json").mkdir()
    error, out = run_infer_expecting_error(capsys, data_url=image_folder / "val", pretrained=exported,
                                           output=output.format(tmp=tmp_path))
    assert error.startswith("error: " + message.format(tmp=tmp_path)), error
    assert out == ""  # nothing predicted


@pytest.mark.parametrize("backend", ["mindspore", "onnxruntime"])
def test_pretrained_naming_a_directory_says_so(trained, image_folder, capsys, backend):
    error, _ = run_infer_expecting_error(capsys, data_url=image_folder / "val", pretrained=trained.parent,
                                         backend=backend)
    assert error == (f"error: checkpoint {trained.parent} is a directory (the latest checkpoint in it is {trained}); "
                     "pass the file itself")


def test_file_names_that_are_not_utf8_are_written_as_they_are(exported, image_folder, tmp_path):
    """A Latin-1 name (bytes b'caf\\xe9.jpg') goes to a strict UTF-8 stdout, the CSV and the JSON unchanged."""
    import os
    import subprocess
    import sys
    folder = tmp_path / "names"
    folder.mkdir()
    raw = os.fsencode(folder) + b"/caf\xe9.jpg"
    Path(os.fsdecode(raw)).write_bytes((image_folder / "val" / "class_0" / "0.jpg").read_bytes())
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "infer.py"),
                             *flags(data_url=folder, pretrained=exported, output=tmp_path / "p.csv")],
                            capture_output=True, env=dict(os.environ, PYTHONIOENCODING="utf-8:strict"), timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(raw + b": class_")
    assert (tmp_path / "p.csv").read_bytes().splitlines()[1].startswith(raw + b",")
    with (tmp_path / "p.csv").open(newline="", encoding="utf-8", errors="surrogateescape") as table:
        assert os.fsencode(list(csv.reader(table))[1][0]) == raw
    write_predictions([Prediction(os.fsdecode(raw), [0], ["class_0"], [1.0])], tmp_path / "p.json")
    assert os.fsencode(json.loads((tmp_path / "p.json").read_text())[0]["path"]) == raw


def test_one_image_file_is_predicted_as_in_its_folder(trained, predictors, image_folder, tmp_path, capsys):
    folder = image_folder / "val" / "class_1"
    image = sorted(folder.glob("*.jpg"))[2]
    in_folder = {p.path: p for p in predict(predictors["checkpoint"], folder)[0]}[str(image)]
    run_cli(script_main("infer"), flags(data_url=image, pretrained=trained, top_k=2))
    assert capsys.readouterr().out.splitlines() == [f"{image}: " + ", ".join(
        f"{name} ({prob:.4f})" for name, prob in zip(in_folder.names[:2], in_folder.probs[:2])),
        "1 images predicted, 0 skipped"]
    (tmp_path / "bad.jpg").write_bytes(b"")
    error, out = run_infer_expecting_error(capsys, data_url=tmp_path / "bad.jpg", pretrained=trained)
    assert error == f"error: {tmp_path / 'bad.jpg'} could not be read (see above)"
    assert out.startswith(f"skipped {tmp_path / 'bad.jpg'}: UnidentifiedImageError")


def test_classifier_names_one_pil_image_as_infer_does(trained, exported, predictors, image_folder):
    import mobilenetv3
    folder = image_folder / "val" / "class_2"
    expected = {p.path: p for p in predict(predictors["checkpoint"], folder)[0]}
    for path in (trained, exported):  # the meta in the checkpoint, beside the MINDIR
        classify = mobilenetv3.Classifier(path, top_k=2)
        for image in sorted(folder.glob("*.jpg"))[:3]:
            want = expected[str(image)]
            for given in (Image.open(image), Image.open(image).convert("RGBA"), image):  # any mode, or a path
                got = classify(given)
                assert [name for name, _ in got] == want.names[:2], given
                np.testing.assert_allclose([prob for _, prob in got], want.probs[:2], rtol=0, atol=1e-6)
