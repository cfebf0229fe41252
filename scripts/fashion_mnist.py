"""Demo data without ImageNet: Fashion-MNIST IDX files written out as an ImageFolder tree of PNGs.

Layout written under `output`:

    train/<class>/<index>.png   the first `per_class_train` images of each class of train-images (file order)
    val/<class>/<index>.png     the first `per_class_val` images of each class of t10k-images (default: all)
    fashion_mnist.json          manifest, written last: a run interrupted before it is redone in full

PNGs are 28x28 grayscale as in the IDX files; the data pipeline converts to RGB and resizes. <index>
is the image's position in its IDX file, so every PNG traces back to its source.

Class folders are named after labels 0..9 (CLASS_NAMES). The training code numbers classes by sorted
folder name, so a model's class index is not the Fashion-MNIST label: sorted order is ankle_boot, bag,
coat, dress, pullover, sandal, shirt, sneaker, t-shirt_top, trouser. The manifest lists both orders.

The IDX files come from Debian's `dataset-fashion-mnist` package (DEFAULT_IDX_DIR) or a directory
given as idx_dir holding the four files named in IDX_FILES, each plain or gzipped.
"""
import gzip
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

from mobilenetv3.errors import UserError

CLASS_NAMES = ("t-shirt_top", "trouser", "pullover", "dress", "coat",
               "sandal", "shirt", "sneaker", "bag", "ankle_boot")
DEFAULT_IDX_DIR = Path("/usr/share/datasets/fashion-mnist")
# split -> (images file, labels file), as named by the Fashion-MNIST release.
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
IDX_NAMES = [name for names in IDX_FILES.values() for name in names]
MANIFEST = "fashion_mnist.json"
# IDX magic: two zero bytes, element type 0x08 (unsigned byte), number of dimensions.
IMAGES_MAGIC, LABELS_MAGIC = 0x00000803, 0x00000801
GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path, magic: int) -> np.ndarray:
    """Read an IDX file (plain or gzipped) whose header must carry `magic`; the array has its dimensions."""
    path = Path(path)
    try:
        with open(path, "rb") as file:
            data = file.read()
        if data[:2] == GZIP_MAGIC:
            data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as err:
        raise UserError(f"{path}: cannot read ({err})") from None
    kind = "images" if magic == IMAGES_MAGIC else "labels"
    if len(data) < 4 or int.from_bytes(data[:4], "big") != magic:
        raise UserError(f"{path}: not an IDX {kind} file (magic number 0x{data[:4].hex()}, expected "
                        f"0x{magic:08x}); point --idx_dir to the Fashion-MNIST IDX files")
    ndim = magic & 0xFF
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise UserError(f"{path}: truncated IDX header ({len(data)} bytes, expected {header_size})")
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    if len(data) - header_size != expected:
        problem = "truncated" if len(data) - header_size < expected else "has extra bytes"
        raise UserError(f"{path}: {problem}: the header promises shape {shape} ({expected} bytes of data) "
                        f"but the file holds {len(data) - header_size}; get a fresh copy")
    return np.frombuffer(data, np.uint8, offset=header_size).reshape(shape)


def find_idx_files(idx_dir=None) -> Dict[str, Tuple[Path, Path]]:
    """split -> (images path, labels path) in idx_dir (default DEFAULT_IDX_DIR), each plain or .gz."""
    directory = Path(idx_dir) if idx_dir is not None else DEFAULT_IDX_DIR
    wanted = ", ".join(IDX_NAMES)
    if idx_dir is not None and not directory.is_dir():
        raise UserError(f"--idx_dir {directory} is not a directory; give the one holding the 4 Fashion-MNIST IDX "
                        f"files {wanted} (each plain or .gz)")
    found, missing = {}, []
    for name in IDX_NAMES:
        existing = [path for path in (directory / name, directory / f"{name}.gz") if path.is_file()]
        if existing:
            found[name] = existing[0]
        else:
            missing.append(name)
    if missing and idx_dir is None:
        raise UserError(f"Fashion-MNIST not found in {directory} (missing {', '.join(missing)}): install it with "
                        f"`apt-get install dataset-fashion-mnist`, or pass --idx_dir DIR holding the 4 IDX files "
                        f"{wanted} (each plain or .gz)")
    if missing:
        raise UserError(f"--idx_dir {directory} lacks {', '.join(missing)} (plain or .gz): it must hold the 4 "
                        f"Fashion-MNIST IDX files {wanted}; or omit --idx_dir to use {DEFAULT_IDX_DIR} from "
                        f"`apt-get install dataset-fashion-mnist`")
    return {split: (found[images], found[labels]) for split, (images, labels) in IDX_FILES.items()}


def select_per_class(labels: np.ndarray, per_class: Optional[int], labels_path, option: str) -> List[np.ndarray]:
    """Indices of the first `per_class` images of each class in file order (all of them if None), by label."""
    if per_class is not None and per_class < 1:
        raise UserError(f"--{option} must be >= 1 (or omitted for all images), got {per_class}")
    if labels.size and labels.max() >= len(CLASS_NAMES):
        position = int(np.argmax(labels >= len(CLASS_NAMES)))
        raise UserError(f"{labels_path}: label {labels[position]} at index {position} is not a Fashion-MNIST "
                        f"class (0-{len(CLASS_NAMES) - 1})")
    by_class = [np.flatnonzero(labels == label) for label in range(len(CLASS_NAMES))]
    fewest = min(range(len(CLASS_NAMES)), key=lambda label: len(by_class[label]))
    available = len(by_class[fewest])
    if available == 0:
        raise UserError(f"{labels_path}: no images of class {fewest} ({CLASS_NAMES[fewest]}); every class needs "
                        "at least one")
    if per_class is not None and per_class > available:
        raise UserError(f"--{option} {per_class} is more than {labels_path} has of class {CLASS_NAMES[fewest]} "
                        f"({available}); use at most {available}, or omit it for all images")
    return [indices[:per_class] for indices in by_class]


@dataclass
class PreparedData:
    root: Path
    counts: Dict[str, Dict[str, int]]  # split -> class folder name -> images
    skipped: bool  # True when the tree was already complete and nothing was written

    def summary(self) -> str:
        sizes = " + ".join(f"{sum(per_class.values())} {split}" for split, per_class in self.counts.items())
        action = "already complete, nothing written" if self.skipped else "written"
        return f"Fashion-MNIST {action}: {sizes} images in {len(CLASS_NAMES)} classes under {self.root}"


def _png_names(indices: np.ndarray, total: int) -> List[str]:
    width = len(str(max(total - 1, 0)))  # zero padded so file names sort in file order
    return [f"{index:0{width}d}.png" for index in indices]


def _tree_matches(root: Path, expected: Dict[str, Dict[str, List[str]]]) -> bool:
    for split, per_class in expected.items():
        for name, files in per_class.items():
            class_dir = root / split / name
            if not class_dir.is_dir() or sorted(os.listdir(class_dir)) != files:
                return False
    return True


def _clear_previous_output(root: Path):
    """Remove the manifest and PNGs of an earlier run; refuse to touch anything this module did not write."""
    for split in IDX_FILES:
        split_dir = root / split
        if not split_dir.is_dir():
            continue
        for entry in split_dir.iterdir():
            foreign = [entry] if entry.name not in CLASS_NAMES or not entry.is_dir() else \
                [file for file in entry.iterdir() if file.suffix != ".png" or not file.is_file()]
            if foreign:
                raise UserError(f"output {root} holds {foreign[0]}, which is not from this tool; choose an empty "
                                "or new output directory")
    (root / MANIFEST).unlink(missing_ok=True)  # first, so an interrupted rewrite is never taken as complete
    for split in IDX_FILES:
        for name in CLASS_NAMES:
            class_dir = root / split / name
            if class_dir.is_dir():
                for file in class_dir.iterdir():
                    file.unlink()


def _write_manifest(root: Path, manifest: dict):
    temporary = root / f"{MANIFEST}.tmp"
    temporary.write_text(json.dumps(manifest, indent=1))
    os.replace(temporary, root / MANIFEST)  # atomic: the manifest is whole or absent


def prepare(output, per_class_train: Optional[int] = None, per_class_val: Optional[int] = None,
            idx_dir=None) -> PreparedData:
    """Write the ImageFolder tree under `output`, or skip if its manifest and files already match the request.

    per_class_train/per_class_val: images per class taken in file order from the train/t10k files
    (None: all, 6000/1000 per class for the real data).
    """
    root = Path(output)
    if root.exists() and not root.is_dir():
        raise UserError(f"--output {root} is a file; give a directory")
    sources = find_idx_files(idx_dir)
    requested = {"train": (per_class_train, "per_class_train"), "val": (per_class_val, "per_class_val")}
    # Labels first (small): they decide whether anything needs writing at all.
    labels, selections = {}, {}
    for split, (_, labels_path) in sources.items():
        per_class, option = requested[split]
        labels[split] = read_idx(labels_path, LABELS_MAGIC)
        selections[split] = select_per_class(labels[split], per_class, labels_path, option)
    file_names = {split: {CLASS_NAMES[label]: _png_names(indices, len(labels[split]))
                          for label, indices in enumerate(selection)}
                  for split, selection in selections.items()}
    counts = {split: {name: len(files) for name, files in per_class.items()} for split, per_class in file_names.items()}
    manifest = {"classes_by_label": list(CLASS_NAMES), "classes_by_folder_order": sorted(CLASS_NAMES),
                "sources": {split: [str(path.resolve()) for path in paths] for split, paths in sources.items()},
                "counts": counts}
    try:
        previous = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        previous = None
    if previous == manifest and _tree_matches(root, file_names):
        return PreparedData(root, counts, skipped=True)

    images = {}
    for split, (images_path, labels_path) in sources.items():
        images[split] = read_idx(images_path, IMAGES_MAGIC)
        if len(images[split]) != len(labels[split]):
            raise UserError(f"{images_path} has {len(images[split])} images but {labels_path} has "
                            f"{len(labels[split])} labels; the two files must come from the same release")
    root.mkdir(parents=True, exist_ok=True)
    _clear_previous_output(root)
    for split, selection in selections.items():
        for label, indices in enumerate(selection):
            class_dir = root / split / CLASS_NAMES[label]
            class_dir.mkdir(parents=True, exist_ok=True)
            for index, file_name in zip(indices, file_names[split][CLASS_NAMES[label]]):
                Image.fromarray(images[split][index]).save(class_dir / file_name, format="PNG")
    _write_manifest(root, manifest)
    return PreparedData(root, counts, skipped=False)
