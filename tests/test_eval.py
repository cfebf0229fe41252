"""Evaluation: exact counts on hand-made logits, and the eval script against an independent recount."""
import ast
import json
import re
import shutil
from pathlib import Path

import mindspore as ms
import mindspore.dataset as ds
import numpy as np
import pytest

from conftest import reference_eval_input, run_main, run_script, script_main, write_image_folder
from mobilenetv3.checkpoints import files as checkpoint
from mobilenetv3.cli import run_cli
from mobilenetv3.config import build_config
from mobilenetv3.errors import UserError
from mobilenetv3.evaluation import count_correct, evaluate
from mobilenetv3.models.factory import create_model
from mobilenetv3.training.trainer import train

# Seven classes, so that Top-5 is a real test (with fewer than 5 classes it is always 1.0).
COLOURS = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40), (200, 40, 200), (40, 200, 200),
           (128, 128, 128)]
CLASSES = [f"class_{c}" for c in range(len(COLOURS))]
VAL_PER_CLASS = 3
SETTINGS = dict(device_target="CPU", num_classes=len(COLOURS), resize=32, batch_size=8, num_parallel_workers=2)


def flags(**values):
    """["--key", "value", ...] of SETTINGS updated with `values`."""
    return [str(v) for name, value in dict(SETTINGS, **values).items() for v in (f"--{name}", value)]


def numpy_log_softmax(logits):
    logits = np.asarray(logits, np.float64)
    return np.log(np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True))


def figures(counts):
    """(top-1 correct, top-5 correct, summed loss, images) of a Counts."""
    return counts.correct1, counts.correct5, counts.loss_sum, counts.images


def test_count_correct_on_hand_made_logits():
    logits = np.array([
        [0, 1, 2, 3, 4, 5, 6],  # ranks 6 5 4 3 2 1 0
        [6, 5, 4, 3, 2, 1, 0],  # ranks 0 1 2 3 4 5 6
        [1, 1, 1, 1, 1, 1, 1],  # all tied: ranks 0 1 2 3 4 5 6 (lower index first)
        [0, 9, 9, 0, 0, 0, 0],  # tie for first between 1 and 2: 1 wins
        [3, 0, 0, 0, 0, 0, 0],  # ranks 0, then the tied 1 2 3 4 5 6
    ], np.float32)
    labels = np.array([6, 5, 0, 2, 6])
    per_row = [tuple(np.array(figures(count_correct(logits[[i]], labels[[i]])))[[0, 1, 3]]) for i in range(len(labels))]
    assert per_row == [(1, 1, 1), (0, 0, 1), (1, 1, 1), (0, 1, 1), (0, 0, 1)]  # (top-1, top-5, images)
    counts = count_correct(logits, labels)
    correct1, correct5, loss_sum, images = figures(counts)
    assert (correct1, correct5, images) == (2, 3, 5)
    # Top-1 predictions 6, 0, 0, 1, 0 for the labels 6, 5, 0, 2, 6; top 5 hits for labels 6, 0, 2
    confusion = np.zeros((7, 7), np.int64)
    for label, predicted in [(6, 6), (5, 0), (0, 0), (2, 1), (6, 0)]:
        confusion[label, predicted] += 1
    assert counts.confusion.tolist() == confusion.tolist()
    assert counts.top5.tolist() == [1, 0, 1, 0, 0, 0, 1]
    expected_loss = -numpy_log_softmax(logits)[np.arange(5), labels].sum()
    assert loss_sum == pytest.approx(expected_loss, rel=1e-12)
    # 20 ties (past the small-array case where every sort is stable): only label 0 is top-1, 0-4 top-5
    ties = np.zeros((1, 20), np.float32)
    per_label = [figures(count_correct(ties, np.array([label])))[:2] for label in range(20)]
    assert per_label == [(1, 1)] + [(0, 1)] * 4 + [(0, 0)] * 15


def test_top5_with_fewer_than_five_classes_is_top_all():
    logits = np.array([[0.0, 2.0, 1.0], [5.0, -1.0, 0.0], [0.0, 0.0, 3.0]])
    labels = np.array([0, 0, 1])
    correct1, correct5, loss_sum, images = figures(count_correct(logits, labels))
    assert (correct1, correct5, images) == (1, 3, 3)
    assert loss_sum == pytest.approx(-numpy_log_softmax(logits)[np.arange(3), labels].sum(), rel=1e-12)


def test_loss_is_exact_for_large_logits():
    """The shift by the row maximum keeps exp() finite: log-softmax of [1000, 0] is [0, -1000]."""
    loss_sum = count_correct(np.array([[1000.0, 0.0], [1000.0, 0.0]]), np.array([0, 1])).loss_sum
    assert loss_sum == pytest.approx(1000.0, abs=1e-9)


def test_evaluate_sums_batches(capsys):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((10, 7)).astype(np.float32)
    labels = rng.integers(0, 7, 10).astype(np.int32)
    dataset = ds.NumpySlicesDataset({"image": logits, "label": labels}, shuffle=False).batch(3)  # 3+3+3+1
    metrics = evaluate(lambda batch: batch, dataset, CLASSES)
    correct1, correct5, loss_sum, images = figures(count_correct(logits, labels))
    assert 0 < correct1 < correct5 < images == 10
    assert (metrics.top1, metrics.top5, metrics.images) == (correct1 / 10, correct5 / 10, 10)
    assert metrics.loss == pytest.approx(loss_sum / 10, rel=1e-12)
    assert capsys.readouterr().err == ""  # 4 batches: no progress line (one every 50 off a terminal)


def test_scores_for_another_number_of_classes_are_an_error():
    dataset = ds.NumpySlicesDataset({"image": np.zeros((2, 7), np.float32), "label": np.zeros(2, np.int32)},
                                    shuffle=False).batch(2)
    with pytest.raises(UserError, match=r"^the model gives 7 class scores, but the data set has 6 classes; pass "
                                        r"--num_classes 7 or the model of these classes$"):
        evaluate(lambda batch: batch, dataset, CLASSES[:6])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("seven"), {"train": 6, "val": VAL_PER_CLASS},
                              colours=COLOURS)


@pytest.fixture(scope="module")
def trained(folder, tmp_path_factory):
    """Two epochs: enough for accuracies that are neither 0 nor 1 (BN momentum 0.5: settled statistics)."""
    config = build_config(overrides=dict(
        device_target="CPU", data_url=str(folder), num_classes=len(COLOURS), batch_size=8, epoch_size=2, resize=32,
        num_parallel_workers=2, bn_momentum=0.5, max_lr=0.02, decay_epoch=2, dataset_sink_mode=False,
        log_interval=100, ckpt_save_dir=str(tmp_path_factory.mktemp("ckpt"))))
    return Path(train(config))


@pytest.fixture(scope="module")
def expected(trained, folder):
    """Top-1, Top-5 and mean loss recounted without the evaluation code or its data pipeline: images
    decoded here, one eval transform each, one forward pass, labels from the folder names."""
    meta = checkpoint.load(trained)[1]
    assert meta["classes"] == CLASSES
    net = create_model(meta["model"], meta["num_classes"], meta["width"], bn_momentum=meta["bn_momentum"],
                       bn_eps=meta["bn_eps"])
    checkpoint.load_weights(net, trained, new_classifier_ok=False)
    net.set_train(False)
    paths = sorted((folder / "val").glob("*/*.jpg"))
    labels = np.array([CLASSES.index(path.parent.name) for path in paths])
    logits = net(ms.Tensor(reference_eval_input(paths))).asnumpy().astype(np.float64)
    ranks = (logits > logits[np.arange(len(labels)), labels][:, None]).sum(axis=1)  # classes scoring higher
    top1, top5 = (ranks == 0).sum() / len(labels), (ranks < 5).sum() / len(labels)
    assert len(labels) == 21 and 0 < top1 < top5 < 1, (top1, top5)  # a test that can fail
    return dict(top1=top1, top5=top5, loss=-numpy_log_softmax(logits)[np.arange(len(labels)), labels].mean(),
                images=len(labels), paths=paths, labels=labels, predicted=logits.argmax(axis=1))


def test_eval_script_prints_the_seed_line(trained, folder, expected, tmp_path):
    result = run_script("eval", *flags(model="mobilenet_v3_small", data_url=folder, pretrained=trained,
                                       json=tmp_path / "metrics.json"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "run_distribute" not in result.stderr  # true by default, yet one process is what was asked for
    assert "chance level" not in result.stderr
    first, second = result.stdout.splitlines()[:2]
    printed = ast.literal_eval(first)
    assert list(printed) == ["Top_1_Accuracy", "Top_5_Accuracy"]
    assert printed == {"Top_1_Accuracy": expected["top1"], "Top_5_Accuracy": expected["top5"]}
    assert first == str(printed)  # the seed's formatting: a dict repr with full float precision
    assert second == f"loss: {expected['loss']:.4f}, images: 21"
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert list(saved) == ["top1", "top5", "loss", "images", "per_class", "confusion_matrix"]
    assert (saved["top1"], saved["top5"], saved["images"]) == (expected["top1"], expected["top5"], 21)
    assert saved["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    predicted = expected["predicted"]
    assert saved["confusion_matrix"] == [[int(((expected["labels"] == t) & (predicted == p)).sum()) for p in range(7)]
                                         for t in range(7)]
    assert [(c["class"], c["images"], c["predicted"], c["top1"]) for c in saved["per_class"]] == [
        (name, VAL_PER_CLASS, int((predicted == c).sum()), int((predicted[expected["labels"] == c] == c).sum()) / 3)
        for c, name in enumerate(CLASSES)]
    assert sum(c["top5"] * c["images"] for c in saved["per_class"]) == pytest.approx(expected["top5"] * 21)


def test_data_url_may_be_a_class_folder_tree(trained, folder, expected, capsys):
    run_cli(script_main("eval"), flags(data_url=folder / "val", pretrained=trained))
    first = capsys.readouterr().out.splitlines()[0]
    assert ast.literal_eval(first) == {"Top_1_Accuracy": expected["top1"], "Top_5_Accuracy": expected["top5"]}


def test_the_checkpoint_alone_says_model_classes_and_image_size(trained, folder, expected, capsys):
    """Without --num_classes or --resize (defaults 1000 and 224) the checkpoint's
    meta builds the model it is for and evaluates at the size it was trained at (32 px)."""
    run_cli(script_main("eval"), ["--device_target", "CPU", "--data_url", str(folder), "--pretrained", str(trained)])
    out, err = capsys.readouterr()
    assert ast.literal_eval(out.splitlines()[0]) == {"Top_1_Accuracy": expected["top1"],
                                                     "Top_5_Accuracy": expected["top5"]}
    assert "preprocessing: 32 px, bilinear" in err


def test_missing_checkpoint_is_one_error_line(folder, tmp_path):
    missing = tmp_path / "missing.ckpt"
    result = run_main("eval", *flags(data_url=folder, pretrained=missing))
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if not line.startswith(("warning:", "preprocessing:"))]
    assert errors == [f"error: checkpoint {missing} not found"]


def truncated_checkpoint(trained, tmp_path):
    path = tmp_path / "truncated.ckpt"
    path.write_bytes(trained.read_bytes()[:len(trained.read_bytes()) // 2])
    return path


def checkpoint_without_classes(trained, tmp_path):
    """As converted torchvision weights are: no class list to check the folders against."""
    params, meta = checkpoint.load(trained)
    path = tmp_path / "no_classes.ckpt"
    checkpoint.save(path, params, dict(meta, classes=None))
    return path


def renamed_class_folder(folder, tmp_path):
    root = tmp_path / "renamed"
    shutil.copytree(folder / "val", root / "val")
    (root / "val" / "class_6").rename(root / "val" / "zebra")
    return root


def one_class_fewer(folder, tmp_path):
    root = tmp_path / "six"
    shutil.copytree(folder / "val", root)
    shutil.rmtree(root / "class_6")
    return root


def flat_val(folder, root):
    """The val images in one folder, named as ImageNet's are and classes interleaved (file k is image k // 7
    of class k % 7); returns [(file name, class index)] in name order."""
    root.mkdir()
    paths = sorted((folder / "val").glob("*/*.jpg"))
    files = [(f"ILSVRC2012_val_{k + 1:08d}.JPEG", k % 7) for k in range(len(paths))]
    for k, (name, _) in enumerate(files):
        shutil.copy(paths[(k % 7) * VAL_PER_CLASS + k // 7], root / name)
    return files


def write_lines(path, lines):
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def eval_output(capsys, **values):
    """(stdout lines, stderr lines) of eval.py run in this process with flags(**values)."""
    run_cli(script_main("eval"), flags(**values))
    captured = capsys.readouterr()
    return captured.out.splitlines(), captured.err.splitlines()


def test_flat_folder_with_csv_labels_evaluates_as_the_class_folders(trained, folder, expected, tmp_path, capsys):
    files = flat_val(folder, tmp_path / "flat")
    # Classes as names and as indices, the header and a row quoted as spreadsheets write them.
    labels = write_lines(tmp_path / "val_labels.csv", ["filename,class", f'"{files[0][0]}","{CLASSES[files[0][1]]}"'] +
                         [f"{name},{CLASSES[c] if k % 2 else c}" for k, (name, c) in enumerate(files[1:])])
    out, err = eval_output(capsys, data_url=tmp_path / "flat", pretrained=trained, val_labels=labels,
                           json=tmp_path / "flat.json")
    assert out[:2] == [str({"Top_1_Accuracy": expected["top1"], "Top_5_Accuracy": expected["top5"]}),
                       f"loss: {expected['loss']:.4f}, images: 21"]
    assert not [line for line in err if "chance level" in line]
    eval_output(capsys, data_url=folder, pretrained=trained, json=tmp_path / "folders.json")
    flat, folders = (json.loads((tmp_path / name).read_text()) for name in ("flat.json", "folders.json"))
    assert flat["loss"] == pytest.approx(folders.pop("loss"), rel=1e-6)  # other batches: float32 rounding
    assert dict(flat, loss=None) == dict(folders, loss=None)  # per class and confusion matrix included


def test_flat_folder_with_devkit_ground_truth_and_synsets(trained, folder, expected, tmp_path, capsys):
    """The devkit's numbering is not the model's: line 1 of the synsets file here is the model's last class."""
    files = flat_val(folder, tmp_path / "flat")
    synsets = write_lines(tmp_path / "synsets.txt", reversed(CLASSES))
    ground_truth = write_lines(tmp_path / "ILSVRC2012_validation_ground_truth.txt", [7 - c for _, c in files])
    out, _ = eval_output(capsys, data_url=tmp_path / "flat", pretrained=trained, val_labels=ground_truth,
                         val_synsets=synsets)
    assert ast.literal_eval(out[0]) == {"Top_1_Accuracy": expected["top1"], "Top_5_Accuracy": expected["top5"]}


def test_labels_shifted_by_one_line_warn_of_chance_level(trained, folder, tmp_path, capsys):
    files = flat_val(folder, tmp_path / "flat")
    shifted = write_lines(tmp_path / "labels.txt", [CLASSES[c] for _, c in files[1:] + files[:1]])
    out, err = eval_output(capsys, data_url=tmp_path / "flat", pretrained=trained, val_labels=shifted)
    printed = ast.literal_eval(out[0])
    assert list(printed) == ["Top_1_Accuracy", "Top_5_Accuracy"] and out[0] == str(printed)
    top1 = printed["Top_1_Accuracy"]
    assert top1 < 3 / 21  # the model's mistakes rarely name the next file's class
    warnings = [line for line in err if "chance level" in line]
    assert warnings == [f"warning: Top-1 accuracy {top1:.4f} is at chance level for 7 classes (1/7 = 0.1429; not 3 "
                        "standard errors above it over 21 images): check that the labels are not shifted, that their "
                        "classes are in the model's order and that the preprocessing is the model's"]


def unlabelled_flat(folder, tmp):
    files = flat_val(folder, tmp / "flat")
    return write_lines(tmp / "labels.csv", ["filename,class"] + [f"{name},{c}" for name, c in files[:-1]])


ERRORS = {  # case: (flags made from the trained checkpoint, its folder and tmp_path; the error expected)
    "truncated": (lambda trained, folder, tmp: dict(pretrained=truncated_checkpoint(trained, tmp)),
                  r"checkpoint \S+/truncated.ckpt is truncated, corrupt or not a MindSpore checkpoint"),
    "wrong_model": (lambda trained, folder, tmp: dict(model="mobilenet_v3_large"),
                    r"is for model 'mobilenet_v3_small', but model is 'mobilenet_v3_large'; "
                    r"pass --model mobilenet_v3_small"),
    "wrong_num_classes": (lambda trained, folder, tmp: dict(num_classes=5),
                          r"is for num_classes 7, but num_classes is 5; pass --num_classes 7"),
    "other_classes": (lambda trained, folder, tmp: dict(data_url=renamed_class_folder(folder, tmp)),
                      r"class folders of \S+/renamed/val differ from the training classes: "
                      r"only here: \['zebra'\]; missing here: \['class_6'\]"),
    "class_count": (lambda trained, folder, tmp: dict(pretrained=checkpoint_without_classes(trained, tmp),
                                                      data_url=one_class_fewer(folder, tmp)),
                    r"\S+/six has 6 class folders but the model has 7 classes"),
    "unlabelled": (lambda trained, folder, tmp: dict(val_labels=unlabelled_flat(folder, tmp), data_url=tmp / "flat"),
                   r"--val_labels \S+/labels.csv does not fit the images in \S+/flat: 1 image file\(s\) without a "
                   r"label \(ILSVRC2012_val_00000021.JPEG\)\. Classes are the model's: class_0, class_1, class_2, "
                   r"\.\.\. \(7\)"),
    "synsets_alone": (lambda trained, folder, tmp: dict(val_synsets=tmp / "synsets.txt"),
                      r"val_synsets numbers the labels of a val_labels file; pass --val_labels FILE too"),
}


@pytest.mark.parametrize("case", ERRORS)
def test_user_errors_are_one_line_and_exit_2(trained, folder, tmp_path, capsys, case):
    make_flags, message = ERRORS[case]
    with pytest.raises(SystemExit) as stop:
        run_cli(script_main("eval"), flags(**dict(dict(data_url=folder, pretrained=trained),
                                          **make_flags(trained, folder, tmp_path))))
    assert stop.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if not line.startswith(("warning:", "preprocessing:"))]
    assert len(errors) == 1 and errors[0].startswith("error: "), errors
    assert re.search(message, errors[0]), errors[0]


def test_json_folders_are_created_and_a_bad_path_fails_before_evaluating(trained, folder, tmp_path, capsys):
    nested = tmp_path / "no" / "such" / "dir" / "m.json"
    run_cli(script_main("eval"), flags(data_url=folder, pretrained=trained, json=nested))
    assert json.loads(nested.read_text())["images"] == 21
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        run_cli(script_main("eval"), flags(data_url=folder, pretrained=trained, json=tmp_path))
    captured = capsys.readouterr()
    assert stop.value.code == 2 and captured.out == ""
    assert captured.err.splitlines() == [f"error: --json {tmp_path} is a directory; give a file name"]


def test_a_folder_of_only_unreadable_images_is_an_error_not_nan(trained, tmp_path, capfd):
    """capfd: the warnings come from the pipeline's worker processes, which write to file descriptor 2."""
    for name in CLASSES:
        (tmp_path / "val" / name).mkdir(parents=True)
        (tmp_path / "val" / name / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(SystemExit) as stop:
        run_cli(script_main("eval"), flags(data_url=tmp_path, pretrained=trained, json=tmp_path / "m.json"))
    captured = capfd.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error")]
    assert stop.value.code == 2 and errors == [f"error: none of the images in {tmp_path / 'val'} could be read "
                                               "(see the warnings above): nothing to evaluate"]
    assert captured.err.count("warning: skipping unreadable image") == len(CLASSES)
    assert captured.out == "" and not (tmp_path / "m.json").exists()
