"""A flat folder of images labelled by a file, as ImageNet's validation set ships (--val_labels).

Two forms of labels file:
- FILE.csv with the header `filename,class`: filename relative to the folder, one row per image;
- any other file: one label per line, for the folder's image files in sorted file-name order (the
  devkit's ILSVRC2012_validation_ground_truth.txt).
A class is written as a name of the model's class list (a class folder it was trained on, a WordNet id
such as n01440764), the readable ImageNet name of one ("tench, Tinca tinca"), or an integer: a 0-based
index into that list, or with a synsets file (--val_synsets) line k of that file, counted from 1 as the
devkit's ILSVRC2012_IDs are. A name wins over an integer reading of the same text.

Every image file must have exactly one label and every label a known class, otherwise one UserError
names the first offenders of each kind.
"""
import csv
import re
from pathlib import Path, PurePosixPath
from typing import Dict, List, Optional, Tuple

from . import imagenet
from ..errors import UserError
from .folders import IMAGE_EXTENSIONS, ImageFolder, list_images

SHOWN = 3  # offenders named per kind of problem
CSV_HEADER = ["filename", "class"]


def _name_index(classes: List[str]) -> Dict[str, Optional[int]]:
    """Class name -> index, readable ImageNet names included; None for a readable name two classes share
    (ImageNet has two "crane"s), which only the WordNet id tells apart."""
    index: Dict[str, Optional[int]] = {}
    for i, readable in enumerate(imagenet.display_names(classes)):
        if readable != classes[i]:
            index[readable] = None if readable in index else i
    index.update((name, i) for i, name in enumerate(classes))
    return index


def _shown(items: List[str]) -> str:
    return ", ".join(items[:SHOWN]) + (", ..." if len(items) > SHOWN else "")


def _read_text(path: Path, flag: str) -> str:
    if not path.is_file():
        raise UserError(f"{flag} {path} not found")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise UserError(f"{flag} {path}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset "
                        f"{err.start}); save it as UTF-8") from None


def _read_synsets(path: Path, names: Dict[str, Optional[int]]) -> List[int]:
    """Class index of each line of a synsets file (its first word: `n01440764` or `n01440764 1 tench`)."""
    found, unknown = [], []
    for number, line in enumerate(_read_text(path, "--val_synsets").splitlines(), start=1):
        word = (line.split() or [""])[0]
        found.append(names.get(word))
        if found[-1] is None:
            unknown.append(f"line {number}: {word!r}")
    if not found:
        raise UserError(f"--val_synsets {path} is empty; give one class per line")
    if unknown:
        raise UserError(f"--val_synsets {path}: {len(unknown)} line(s) name no class of the model "
                        f"({_shown(unknown)}); each line must start with one of its classes")
    return found


def _read_labels(path: Path, images: List[str]) -> Tuple[List[Tuple[str, str, str]], List[str]]:
    """([(file, where, label)] as the file gives them, [problems with the file's rows]); `where` names the
    line for error messages."""
    text = _read_text(path, "--val_labels")
    if path.suffix.lower() == ".csv":
        rows = list(csv.reader(text.splitlines()))
        header = [field.strip() for field in rows[0]] if rows else []
        if header != CSV_HEADER:
            raise UserError(f"--val_labels {path}: the first line must be the header {','.join(CSV_HEADER)}, got "
                            f"{','.join(header)!r}")
        labelled, malformed = [], []
        for number, row in enumerate(rows[1:], start=2):
            if len(row) != 2:
                if any(field.strip() for field in row):
                    malformed.append(f"line {number}")
                continue
            name = PurePosixPath(row[0].strip().replace("\\", "/")).as_posix()
            labelled.append((name, f"line {number}", row[1].strip()))
        return labelled, [f"{len(malformed)} line(s) without exactly two fields ({_shown(malformed)})"] if malformed else []
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if lines and [field.strip() for field in lines[0].split(",")] == CSV_HEADER:
        raise UserError(f"--val_labels {path} starts with the CSV header {','.join(CSV_HEADER)}; name it "
                        f"{path.stem}.csv, or drop the header for one label per line")
    problems = []
    if len(lines) != len(images):  # too few: the files left without a label are named with the other offenders
        beyond = [f"line {n}" for n in range(len(images) + 1, len(lines) + 1)]
        problems.append(f"{len(lines)} labels for {len(images)} image files (one per line, in sorted name order)"
                        + (f", no image file for {_shown(beyond)}" if beyond else ""))
    return [(name, f"line {n}", label) for n, (name, label) in enumerate(zip(images, lines), start=1)], problems


def scan_labelled_folder(directory: Path, labels_path, classes: List[str], synsets_path=None) -> ImageFolder:
    """The image files below `directory` (any depth, named by their path relative to it) with the class
    index in `classes` that the labels file at `labels_path` gives each; see the module doc."""
    directory, labels_path = Path(directory), Path(labels_path)
    if not directory.is_dir():
        raise UserError(f"data_url {directory} is not a directory (with --val_labels, the folder of the images)")
    images = sorted(path.relative_to(directory).as_posix() for path in list_images(directory))
    if not images:
        raise UserError(f"{directory} has no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    names = _name_index(classes)
    synsets = _read_synsets(Path(synsets_path), names) if synsets_path else None
    labelled, problems = _read_labels(labels_path, images)
    index, unknown, twice, missing = {}, [], [], []
    existing = set(images)
    for name, where, label in labelled:
        if name in index:
            twice.append(f"{name} ({where})")
            continue
        if name not in existing:
            missing.append(f"{name} ({where})")
            continue
        class_index = names.get(label)
        if label not in names and re.fullmatch(r"\d+", label):
            number = int(label)
            if synsets is None:
                class_index = number if number < len(classes) else None
            else:
                class_index = synsets[number - 1] if 1 <= number <= len(synsets) else None
        if class_index is None:
            unknown.append(f"{where}: {label!r}" + (" (two classes have this name; give the WordNet id)"
                                                    if label in names else ""))
        index[name] = class_index
    unlabelled = [name for name in images if name not in index]
    for what, offenders in (("image file(s) without a label", unlabelled),
                            ("label(s) for files that are not images in the folder", missing),
                            ("file(s) labelled twice", twice), ("label(s) naming no class of the model", unknown)):
        if offenders:
            problems.append(f"{len(offenders)} {what} ({_shown(offenders)})")
    if problems:
        numbering = (f"integers are lines 1-{len(synsets)} of --val_synsets" if synsets is not None else
                     f"integers are 0-based indices below {len(classes)}; the devkit's 1-based ids need --val_synsets")
        raise UserError(f"--val_labels {labels_path} does not fit the images in {directory}: {'; '.join(problems)}. "
                        f"Classes are the model's: {_shown(classes)} ({len(classes)}); {numbering}")
    return ImageFolder(directory, list(classes), [(str(directory / name), index[name]) for name in images])
