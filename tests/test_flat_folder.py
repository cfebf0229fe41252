"""A flat image folder labelled by a file (--val_labels): both file forms, every error, and the per-class
counts and chance-level warning of an evaluation, checked against hand-made scores."""
import math
import re

import numpy as np
import pytest
from PIL import Image

from mobilenetv3.data import imagenet
from mobilenetv3.data.flat_folder import scan_labelled_folder
from mobilenetv3.data.imagenet import model_classes
from mobilenetv3.data.preprocessing import Preprocessing
from mobilenetv3.errors import UserError
from mobilenetv3.evaluation import Metrics, chance_level_warning, evaluate_folder

COLOURS = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40), (200, 40, 200), (40, 200, 200),
           (128, 128, 128)]
WNIDS = imagenet.wnids()[:7]  # n01440764 (tench), n01443537 (goldfish), ...
READABLE = imagenet.display_names(WNIDS)
FILES = [f"ILSVRC2012_val_{k + 1:08d}.png" for k in range(21)]  # file k shows colour k % 7
# The scores a made-up model gives an image of each colour: colour c is predicted as class c (colour 6 as 0);
# TOP5[c] are the classes of the 5 highest.
SCORES = np.array([[9, 5, 4, 3, 2, 0, 0],
                   [0, 9, 5, 4, 3, 2, 0],
                   [0, 0, 9, 5, 4, 3, 2],
                   [2, 0, 0, 9, 5, 4, 3],
                   [3, 2, 0, 0, 9, 5, 4],
                   [4, 3, 2, 0, 0, 9, 5],
                   [9, 0, 0, 2, 3, 4, 5]], np.float32)
TOP5 = [{0, 1, 2, 3, 4}, {1, 2, 3, 4, 5}, {2, 3, 4, 5, 6}, {3, 4, 5, 6, 0}, {4, 5, 6, 0, 1}, {5, 6, 0, 1, 2},
        {0, 6, 5, 4, 3}]
PREPROCESSING = Preprocessing(resize=8)  # ImageNet's mean and std, as predict_by_colour undoes them


def test_scores_rank_as_stated():
    assert [set(np.argsort(-row, kind="stable")[:5].tolist()) for row in SCORES] == TOP5


def predict_by_colour(images):
    """The scores of SCORES for the nearest colour to each (normalised, CHW) image's mean."""
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    pixels = (images.mean(axis=(2, 3)) * std + mean) * 255
    nearest = np.abs(pixels[:, None, :] - np.array(COLOURS)[None]).sum(axis=2).argmin(axis=1)
    return SCORES[nearest]


@pytest.fixture(scope="module")
def flat(tmp_path_factory):
    """21 solid-colour images in one folder, named as ImageNet's val images, colours interleaved."""
    root = tmp_path_factory.mktemp("flat")
    for k, name in enumerate(FILES):
        Image.new("RGB", (12, 10), COLOURS[k % 7]).save(root / name)
    return root


def write(path, lines):
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def csv_labels(path, classes):
    """filename,class rows, the class given in turn as WordNet id, readable name (quoted: it has commas)
    and index."""
    forms = [lambda c: WNIDS[c], lambda c: f'"{READABLE[c]}"', str]
    return write(path, ["filename,class"] + [f"{name},{forms[k % 3](c)}" for k, (name, c) in enumerate(zip(FILES, classes))])


def indices(folder):
    return [label for _, label in folder.samples]


def test_csv_labels_as_synsets_readable_names_and_indices(flat, tmp_path):
    truth = [k % 7 for k in range(21)]
    folder = scan_labelled_folder(flat, csv_labels(tmp_path / "val.csv", truth), WNIDS)
    assert [path.rsplit("/", 1)[1] for path, _ in folder.samples] == FILES
    assert indices(folder) == truth and folder.classes == WNIDS and folder.root == flat


def test_devkit_form_one_id_per_line_with_a_synsets_file(flat, tmp_path):
    """The devkit's numbering is not the model's: here line 1 of the synsets file is the model's last class.
    A line may carry more words after the synset (as the devkit's map_clsloc.txt does)."""
    synsets = write(tmp_path / "synsets.txt", [f"{wnid} {i + 1} name" for i, wnid in enumerate(reversed(WNIDS))])
    ground_truth = write(tmp_path / "ILSVRC2012_validation_ground_truth.txt", [7 - k % 7 for k in range(21)])
    folder = scan_labelled_folder(flat, ground_truth, WNIDS, synsets)
    assert indices(folder) == [k % 7 for k in range(21)]


def test_one_label_per_line_without_synsets_counts_from_0(flat, tmp_path):
    labels = write(tmp_path / "labels.txt", [(k + 3) % 7 for k in range(21)])
    assert indices(scan_labelled_folder(flat, labels, WNIDS)) == [(k + 3) % 7 for k in range(21)]


def test_a_name_wins_over_the_same_text_read_as_an_index(tmp_path):
    """Class folders named 0, 1, 10, 2 sort so that folder "10" is class 2; "3" is no folder, so index 3."""
    for name in ("a.png", "b.png"):
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    labels = write(tmp_path / "labels.txt", ["10", "3"])
    assert indices(scan_labelled_folder(tmp_path, labels, ["0", "1", "10", "2"])) == [2, 3]


def test_model_classes():
    assert model_classes(3, ["b", "a", "c"]) == ["b", "a", "c"]
    assert model_classes(1000) == imagenet.wnids() == model_classes(1000, ["x"])  # a list of the wrong length
    assert model_classes(3) == ["0", "1", "2"]


def error_of(*args):
    with pytest.raises(UserError) as caught:
        scan_labelled_folder(*args)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.fixture
def four(tmp_path):
    """a.png .. d.png in a folder of their own; the model's classes cat, dog, emu."""
    root = tmp_path / "images"
    root.mkdir()
    for name in "abcd":
        Image.new("RGB", (4, 4)).save(root / f"{name}.png")
    return root


CLASSES = ["cat", "dog", "emu"]
ERRORS = {  # case: (lines of the labels file, its name, the error expected after "--val_labels <file>")
    "header": (["file,label", "a.png,cat"], "l.csv",
               r": the first line must be the header filename,class, got 'file,label'$"),
    "unlabelled": (["filename,class", "a.png,cat", "c.png,dog"], "l.csv",
                   r" does not fit the images in \S+: 2 image file\(s\) without a label \(b.png, d.png\)\. "
                   r"Classes are the model's: cat, dog, emu \(3\)"),
    "no_such_file": (["filename,class", "a.png,cat", "b.png,cat", "c.png,cat", "d.png,cat", "e.png,dog"], "l.csv",
                     r": 1 label\(s\) for files that are not images in the folder \(e.png \(line 6\)\)\."),
    "unknown_class": (["filename,class", "a.png,cat", "b.png,cow", "c.png,3", "d.png,1"], "l.csv",
                      r": 2 label\(s\) naming no class of the model \(line 3: 'cow', line 4: '3'\)\. .*; integers are "
                      r"0-based indices below 3; the devkit's 1-based ids need --val_synsets$"),
    "twice": (["filename,class", "a.png,cat", "b.png,cat", "c.png,cat", "d.png,cat", "./a.png,dog"], "l.csv",
              r": 1 file\(s\) labelled twice \(a.png \(line 6\)\)\."),
    "fields": (["filename,class", "a.png,cat,dog", "b.png,cat", "c.png,cat", "d.png,cat"], "l.csv",
               r": 1 line\(s\) without exactly two fields \(line 2\); 1 image file\(s\) without a label \(a.png\)\."),
    "too_few_lines": (["cat", "dog"], "l.txt",
                      r": 2 labels for 4 image files \(one per line, in sorted name order\); 2 image file\(s\) "
                      r"without a label \(c.png, d.png\)\."),
    "too_many_lines": (["cat"] * 7, "l.txt",
                       r": 7 labels for 4 image files \(one per line, in sorted name order\), no image file for "
                       r"line 5, line 6, line 7\. "),
    "header_in_txt": (["filename,class", "a.png,cat"], "l.txt",
                      r" starts with the CSV header filename,class; name it l.csv, or drop the header"),
}


@pytest.mark.parametrize("case", ERRORS)
def test_labels_that_do_not_fit_are_one_error_naming_the_offenders(four, tmp_path, case):
    lines, name, expected = ERRORS[case]
    labels = write(tmp_path / name, lines)
    message = error_of(four, labels, CLASSES)
    assert message.startswith(f"--val_labels {labels}"), message
    assert re.search(expected, message), message


def test_every_kind_of_offender_in_one_message_three_named_each(four, tmp_path):
    labels = write(tmp_path / "l.csv", ["filename,class", "a.png,cow", "x.png,cat", "b.png,pig", "c.png,ant",
                                        "d.png,bee"])
    assert error_of(four, labels, CLASSES).endswith(
        "1 label(s) for files that are not images in the folder (x.png (line 3)); "
        "4 label(s) naming no class of the model (line 2: 'cow', line 4: 'pig', line 5: 'ant', ...). "
        "Classes are the model's: cat, dog, emu (3); integers are 0-based indices below 3; "
        "the devkit's 1-based ids need --val_synsets")


def test_synset_numbers_outside_the_synsets_file_and_unknown_synsets(four, tmp_path):
    synsets = write(tmp_path / "synsets.txt", ["emu", "cat"])
    labels = write(tmp_path / "gt.txt", [1, 2, 0, 3])
    assert re.search(r"2 label\(s\) naming no class of the model \(line 3: '0', line 4: '3'\)\. .*; integers are "
                     r"lines 1-2 of --val_synsets$", error_of(four, labels, CLASSES, synsets))
    bad = write(tmp_path / "bad.txt", ["emu", "", "n01440764 1 tench"])
    assert error_of(four, labels, CLASSES, bad) == (
        f"--val_synsets {bad}: 2 line(s) name no class of the model (line 2: '', line 3: 'n01440764'); "
        "each line must start with one of its classes")


def test_readable_names_two_classes_share_need_the_synset(tmp_path):
    cranes = ["n02012849", "n03126707"]  # the bird and the machine
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    assert re.search(r"line 1: 'crane' \(two classes have this name; give the WordNet id\)",
                     error_of(tmp_path, write(tmp_path / "l.txt", ["crane"]), cranes))
    assert indices(scan_labelled_folder(tmp_path, write(tmp_path / "l.txt", ["n03126707"]), cranes)) == [1]


def test_missing_files_and_folders(four, tmp_path):
    assert error_of(four, tmp_path / "none.csv", CLASSES) == f"--val_labels {tmp_path / 'none.csv'} not found"
    assert error_of(tmp_path / "nowhere", tmp_path / "none.csv", CLASSES) == (
        f"data_url {tmp_path / 'nowhere'} is not a directory (with --val_labels, the folder of the images)")


def evaluate_flat(flat, labels, synsets=None):
    return evaluate_folder(predict_by_colour, 7, str(flat), PREPROCESSING, batch_size=4, workers=1, classes=WNIDS,
                           val_labels=str(labels), val_synsets=str(synsets) if synsets else None)


def test_per_class_accuracy_and_confusion_matrix_by_hand(flat, tmp_path):
    """Two images mislabelled: file 1 (colour 1, predicted 1) as class 6, file 5 (colour 5, predicted 5,
    class 0 among its top 5) as class 0; colour 6 is predicted as class 0."""
    labels = [k % 7 for k in range(21)]
    labels[1], labels[5] = 6, 0
    metrics = evaluate_flat(flat, csv_labels(tmp_path / "val.csv", labels))
    confusion = [[3, 0, 0, 0, 0, 1, 0],  # row: true class, column: Top-1 prediction
                 [0, 2, 0, 0, 0, 0, 0],
                 [0, 0, 3, 0, 0, 0, 0],
                 [0, 0, 0, 3, 0, 0, 0],
                 [0, 0, 0, 0, 3, 0, 0],
                 [0, 0, 0, 0, 0, 2, 0],
                 [3, 1, 0, 0, 0, 0, 0]]
    assert (metrics.top1, metrics.top5, metrics.images) == (16 / 21, 20 / 21, 21)
    log_softmax = SCORES - np.log(np.exp(SCORES.astype(np.float64)).sum(axis=1, keepdims=True))
    assert metrics.loss == pytest.approx(-np.mean([log_softmax[k % 7, label] for k, label in enumerate(labels)]),
                                         rel=1e-12)
    saved = metrics.as_dict()
    assert list(saved) == ["top1", "top5", "loss", "images", "per_class", "confusion_matrix"]
    assert saved["confusion_matrix"] == confusion
    assert saved["per_class"] == [
        {"class": WNIDS[c], "name": READABLE[c], "images": images, "predicted": predicted, "top1": top1, "top5": top5}
        for c, (images, predicted, top1, top5) in enumerate([(4, 6, 3 / 4, 1.0), (2, 3, 1.0, 1.0), (3, 3, 1.0, 1.0),
                                                             (3, 3, 1.0, 1.0), (3, 3, 1.0, 1.0), (2, 3, 1.0, 1.0),
                                                             (4, 0, 0.0, 3 / 4)])]
    assert saved["per_class"][1]["name"] == "goldfish, Carassius auratus"


def test_a_class_without_images_has_no_accuracy(flat, tmp_path):
    labels = [0 if k % 7 == 3 else k % 7 for k in range(21)]  # no image labelled 3
    per_class = evaluate_flat(flat, csv_labels(tmp_path / "val.csv", labels)).as_dict()["per_class"]
    assert (per_class[3]["images"], per_class[3]["predicted"], per_class[3]["top1"], per_class[3]["top5"]) == \
        (0, 3, None, None)


def test_shifted_labels_are_at_chance_level_correct_ones_are_not(flat, tmp_path):
    truth = [k % 7 for k in range(21)]  # 18 of 21 right: colour 6 is predicted as 0
    synsets = write(tmp_path / "synsets.txt", WNIDS)
    correct = evaluate_flat(flat, write(tmp_path / "gt.txt", [c + 1 for c in truth]), synsets)
    assert correct.top1 == 18 / 21 and chance_level_warning(correct) is None
    # Each image labelled as the next: right only where colour 6, predicted 0, is followed by colour 0.
    shifted = evaluate_flat(flat, write(tmp_path / "shifted.txt", [c + 1 for c in truth[1:] + truth[:1]]), synsets)
    assert shifted.top1 == 3 / 21
    assert chance_level_warning(shifted) == (
        "warning: Top-1 accuracy 0.1429 is at chance level for 7 classes (1/7 = 0.1429; not 3 standard errors above "
        "it over 21 images): check that the labels are not shifted, that their classes are in the model's order and "
        "that the preprocessing is the model's")


def metrics_with(top1, images, num_classes):
    classes = [str(c) for c in range(num_classes)]
    return Metrics(top1, 1.0, 0.0, images, classes, np.zeros((num_classes, num_classes), np.int64),
                   np.zeros(num_classes, np.int64))


def test_chance_level_is_within_three_standard_errors():
    # 7 classes, 21 images: 1/7 + 3 sqrt((1/7)(6/7)/21) = 0.3719...; 7/21 is within, 8/21 above it.
    assert 7 / 21 < 1 / 7 + 3 * math.sqrt(1 / 7 * 6 / 7 / 21) < 8 / 21
    assert chance_level_warning(metrics_with(7 / 21, 21, 7)) is not None
    assert chance_level_warning(metrics_with(8 / 21, 21, 7)) is None
    # 1000 classes, 50,000 images: chance is 0.001, the margin 0.00042; 0.2% is clearly above it.
    assert chance_level_warning(metrics_with(0.0014, 50_000, 1000)) is not None
    assert chance_level_warning(metrics_with(0.002, 50_000, 1000)) is None
    assert chance_level_warning(metrics_with(1.0, 5, 1)) is None  # one class: nothing to guess
