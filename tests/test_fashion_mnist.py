"""Fashion-MNIST IDX -> ImageFolder PNG tree: pixels, folders, subsets, idempotence and error messages."""
import gzip
import json
import os
import re
import runpy
from types import SimpleNamespace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fashion_mnist  # scripts/fashion_mnist.py, the demo's data writer (conftest puts scripts/ on sys.path)
from fashion_mnist import CLASS_NAMES, IMAGES_MAGIC, LABELS_MAGIC, MANIFEST, prepare, read_idx
from mobilenetv3.cli import run_cli
from mobilenetv3.errors import UserError

FOLDERS_SORTED = ["ankle_boot", "bag", "coat", "dress", "pullover",
                  "sandal", "shirt", "sneaker", "t-shirt_top", "trouser"]
TRAIN_PER_CLASS, VAL_PER_CLASS = 4, 2
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "prepare_fashion_mnist.py"


def write_idx(path: Path, array: np.ndarray, magic: int):
    header = magic.to_bytes(4, "big") + b"".join(size.to_bytes(4, "big") for size in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def make_split(seed: int, per_class: int):
    """Labels shuffled so the classes interleave in file order, and random 28x28 images."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(10), per_class)).astype(np.uint8)
    images = rng.integers(0, 256, size=(len(labels), 28, 28), dtype=np.uint8)
    return images, labels


@pytest.fixture(params=["plain", "gz"])
def idx(request, tmp_path):
    """Tiny Fashion-MNIST look-alike: 4 train and 2 test images per class, files plain or gzipped."""
    directory = tmp_path / f"idx_{request.param}"
    directory.mkdir()
    suffix = ".gz" if request.param == "gz" else ""
    data = {"train": make_split(0, TRAIN_PER_CLASS), "t10k": make_split(1, VAL_PER_CLASS)}
    for prefix, (images, labels) in data.items():
        write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", images, IMAGES_MAGIC)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels, LABELS_MAGIC)
    return SimpleNamespace(dir=directory, data={"train": data["train"], "val": data["t10k"]})


def pngs(root: Path, split: str):
    return sorted((root / split).glob("*/*.png"))


def test_png_pixels_and_folders_equal_idx(idx, tmp_path):
    out = tmp_path / "out"
    result = prepare(out, idx_dir=idx.dir)
    assert not result.skipped
    for split, per_class in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
        images, labels = idx.data[split]
        files = pngs(out, split)
        assert len(files) == 10 * per_class
        for file in files:
            index = int(file.stem)
            with Image.open(file) as png:
                assert png.mode == "L" and png.size == (28, 28)
                np.testing.assert_array_equal(np.asarray(png), images[index])
            assert file.parent.name == CLASS_NAMES[labels[index]]


def test_class_folder_names_and_counts(idx, tmp_path):
    out = tmp_path / "out"
    result = prepare(out, idx_dir=idx.dir)
    assert sorted(os.listdir(out)) == [MANIFEST, "train", "val"]
    for split, per_class in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
        assert sorted(os.listdir(out / split)) == FOLDERS_SORTED
        assert all(len(os.listdir(out / split / name)) == per_class for name in CLASS_NAMES)
        assert result.counts[split] == {name: per_class for name in CLASS_NAMES}
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["classes_by_label"] == list(CLASS_NAMES)
    assert manifest["classes_by_folder_order"] == FOLDERS_SORTED
    assert result.summary() == f"Fashion-MNIST written: 40 train + 20 val images in 10 classes under {out}"


def test_stratified_subset_is_first_n_per_class_in_file_order(idx, tmp_path):
    out = tmp_path / "out"
    prepare(out, per_class_train=3, per_class_val=1, idx_dir=idx.dir)
    for split, per_class in (("train", 3), ("val", 1)):
        _, labels = idx.data[split]
        for label, name in enumerate(CLASS_NAMES):
            first = np.flatnonzero(labels == label)[:per_class]
            assert sorted(os.listdir(out / split / name)) == [f"{index:02d}.png" for index in first]


def test_second_run_skips_and_a_new_request_rewrites(idx, tmp_path):
    out = tmp_path / "out"
    prepare(out, per_class_train=3, idx_dir=idx.dir)
    mtimes = {file: file.stat().st_mtime_ns for file in out.rglob("*")}
    again = prepare(out, per_class_train=3, idx_dir=idx.dir)
    assert again.skipped and again.summary().startswith("Fashion-MNIST already complete, nothing written: 30 train")
    assert {file: file.stat().st_mtime_ns for file in out.rglob("*")} == mtimes

    smaller = prepare(out, per_class_train=1, idx_dir=idx.dir)
    assert not smaller.skipped
    assert len(pngs(out, "train")) == 10 and len(pngs(out, "val")) == 20  # the 2 extra per class are gone


def test_interrupted_run_is_redone(idx, tmp_path, monkeypatch):
    class Interrupted(Exception):
        pass

    real_save, saved = Image.Image.save, []

    def save_then_interrupt(image, *args, **kwargs):
        if len(saved) == 7:
            raise Interrupted()
        saved.append(args[0])
        real_save(image, *args, **kwargs)

    out = tmp_path / "out"
    monkeypatch.setattr(Image.Image, "save", save_then_interrupt)
    with pytest.raises(Interrupted):
        prepare(out, idx_dir=idx.dir)
    monkeypatch.undo()
    assert len(pngs(out, "train")) == 7 and not (out / MANIFEST).exists()

    result = prepare(out, idx_dir=idx.dir)
    assert not result.skipped
    assert len(pngs(out, "train")) == 40 and len(pngs(out, "val")) == 20 and (out / MANIFEST).is_file()


def test_missing_png_after_completion_is_redone(idx, tmp_path):
    out = tmp_path / "out"
    prepare(out, idx_dir=idx.dir)
    pngs(out, "val")[0].unlink()
    assert not prepare(out, idx_dir=idx.dir).skipped
    assert len(pngs(out, "val")) == 20


def test_foreign_files_in_output_are_refused_and_kept(idx, tmp_path):
    out = tmp_path / "out"
    (out / "train" / "n01440764").mkdir(parents=True)
    with pytest.raises(UserError, match=f"{re.escape(str(out / 'train' / 'n01440764'))}.*not from this tool"):
        prepare(out, idx_dir=idx.dir)
    assert os.listdir(out / "train") == ["n01440764"]


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_bad_magic_names_the_file(tmp_path, suffix):
    path = tmp_path / f"train-labels-idx1-ubyte{suffix}"
    write_idx(path, np.zeros((5, 28, 28)), IMAGES_MAGIC)  # an images file where labels are expected
    with pytest.raises(UserError) as error:
        read_idx(path, LABELS_MAGIC)
    assert str(error.value).startswith(f"{path}: not an IDX labels file (magic number 0x00000803, "
                                       "expected 0x00000801)")


def test_truncated_file_names_the_file(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte"
    write_idx(path, np.zeros((3, 28, 28)), IMAGES_MAGIC)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(UserError) as error:
        read_idx(path, IMAGES_MAGIC)
    assert str(error.value).startswith(f"{path}: truncated: the header promises shape (3, 28, 28) (2352 bytes "
                                       "of data) but the file holds 2342")


def test_truncated_gzip_names_the_file(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    write_idx(path, np.arange(3 * 28 * 28).reshape(3, 28, 28), IMAGES_MAGIC)
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(UserError, match=f"^{re.escape(str(path))}: cannot read"):
        read_idx(path, IMAGES_MAGIC)


def test_label_count_mismatch_names_both_files(idx, tmp_path):
    images_path = next(idx.dir.glob("t10k-images-*"))
    write_idx(images_path, idx.data["val"][0][:-1], IMAGES_MAGIC)
    expected = f"{re.escape(str(images_path))} has 19 images but .*t10k-labels.* has 20 labels"
    with pytest.raises(UserError, match=expected):
        prepare(tmp_path / "out", idx_dir=idx.dir)


def test_too_many_per_class_names_the_limit(idx, tmp_path):
    with pytest.raises(UserError, match="--per_class_val 3 is more than .*t10k-labels.*use at most 2"):
        prepare(tmp_path / "out", per_class_val=3, idx_dir=idx.dir)
    assert not (tmp_path / "out").exists()


def test_missing_data_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "DEFAULT_IDX_DIR", tmp_path / "absent")
    with pytest.raises(UserError) as error:
        prepare(tmp_path / "out")
    message = str(error.value)
    assert message.startswith(f"Fashion-MNIST not found in {tmp_path / 'absent'}")
    assert "apt-get install dataset-fashion-mnist" in message and "--idx_dir DIR" in message
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        assert name in message


def test_idx_dir_missing_a_file_names_it(idx, tmp_path):
    next(idx.dir.glob("train-labels-*")).unlink()
    expected = f"^--idx_dir {re.escape(str(idx.dir))} lacks train-labels-idx1-ubyte \\(plain or .gz\\)"
    with pytest.raises(UserError, match=expected):
        prepare(tmp_path / "out", idx_dir=idx.dir)
    with pytest.raises(UserError, match="is not a directory"):
        prepare(tmp_path / "out", idx_dir=tmp_path / "typo")


def test_script_prints_one_line_and_errors_exit_2(idx, tmp_path, capsys):
    main = runpy.run_path(str(SCRIPT))["main"]
    out = tmp_path / "out"
    run_cli(main, ["--output", str(out), "--per_class_train", "2", "--idx_dir", str(idx.dir)])
    assert capsys.readouterr().out == f"Fashion-MNIST written: 20 train + 20 val images in 10 classes under {out}\n"
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, ["--output", str(out), "--per_class_train", "0", "--idx_dir", str(idx.dir)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: --per_class_train must be >= 1 (or omitted for all images), got 0\n"


@pytest.mark.skipif(not fashion_mnist.DEFAULT_IDX_DIR.is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist_subset(tmp_path):
    out = tmp_path / "out"
    result = prepare(out, per_class_train=5, per_class_val=3)
    assert result.counts == {"train": {name: 5 for name in CLASS_NAMES}, "val": {name: 3 for name in CLASS_NAMES}}
    assert len(pngs(out, "train")) == 50 and len(pngs(out, "val")) == 30
    labels = read_idx(fashion_mnist.DEFAULT_IDX_DIR / "t10k-labels-idx1-ubyte.gz", LABELS_MAGIC)
    images = read_idx(fashion_mnist.DEFAULT_IDX_DIR / "t10k-images-idx3-ubyte.gz", IMAGES_MAGIC)
    assert images.shape == (10000, 28, 28) and np.bincount(labels).tolist() == [1000] * 10
    for file in pngs(out, "val"):
        index = int(file.stem)
        assert file.parent.name == CLASS_NAMES[labels[index]]
        np.testing.assert_array_equal(np.asarray(Image.open(file)), images[index])
