"""Image folders: ImageNet's layout (DIR/train/<class>/..., DIR/val/<class>/...) or DIR itself a tree of
class folders, listed recursively. Class indices follow the sorted class-folder names, as torchvision's
ImageFolder does."""
import functools
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

from ..errors import UserError

logger = logging.getLogger(__name__)


IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


@dataclass
class ImageFolder:
    root: Path
    classes: List[str]
    samples: List[Tuple[str, int]]  # (path, class index)

    @functools.cached_property
    def has_jpegs(self) -> bool:
        """Whether a sample is a .jpg/.jpeg file; looked for once (a PNG-only ImageNet takes a second)."""
        return any(Path(path).suffix.lower() in (".jpg", ".jpeg") for path, _ in self.samples)


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _directory_id(path) -> Tuple[int, int]:
    info = os.stat(path)
    return info.st_dev, info.st_ino


def images_of_folder(folder, flag: str, hint: str = "") -> List[Path]:
    """list_images(folder) of a folder the user named with `flag`: one UserError if it is not a directory or
    holds no image file (`hint` says what to give instead)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{flag} {folder} is not a directory")
    paths = list_images(folder)
    if not paths:
        raise UserError(f"{flag} {folder} has no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}, any case, in "
                        f"any subfolder){hint}")
    return paths


def list_images(directory: Path, listed: Optional[set] = None) -> List[Path]:
    """Regular image files below `directory`, recursively, in sorted order.

    Links are followed, but no directory is listed twice: `listed` holds the (device, inode) of the
    directories listed so far, and of those not to enter (scan_image_folder puts the split folder,
    its ancestors and the class folders there), so a link loop cannot repeat or mislabel images.
    Names with an image extension that are not regular files (a FIFO would block the reader forever,
    a dangling link cannot be read) are skipped with a warning.
    """
    listed = set() if listed is None else listed
    listed.add(_directory_id(directory))
    found = []
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
        entered = []
        for name in sorted(dirnames):
            path = Path(dirpath) / name
            identity = _directory_id(path)
            if identity in listed:
                logger.warning(f"skipping {path}: it leads to a directory listed already (a link loop?)")
            else:
                listed.add(identity)
                entered.append(name)
        dirnames[:] = entered
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if not is_image_file(path):
                continue
            try:
                regular = stat.S_ISREG(os.stat(path).st_mode)
            except OSError:  # a dangling link
                regular = False
            if regular:
                found.append(path)
            else:
                logger.warning(f"skipping {path}: not a regular file")
    return found


def split_dir(data_url, split: str) -> Path:
    """DIR/<split> if it exists, else DIR itself when it is a class-folder tree."""
    if not data_url:
        raise UserError("data_url is not set: pass --data_url DIR (ImageNet layout: DIR/train/<class>/*.jpg, "
                        "DIR/val/<class>/*.jpg, or DIR/<class>/*.jpg)")
    root = Path(data_url)
    if not root.is_dir():
        raise UserError(f"data_url {root} is not a directory")
    if (root / split).is_dir():
        return root / split
    if any(child.is_dir() for child in root.iterdir()) and not {"train", "val"} & {c.name for c in root.iterdir()}:
        return root
    raise UserError(f"data_url {root} has no {split}/ folder and no class folders; expected "
                    f"{root}/{split}/<class>/*.jpg or {root}/<class>/*.jpg")


def scan_image_folder(directory: Path, classes: Optional[List[str]] = None) -> ImageFolder:
    """Class folders (sorted) and their image files; `classes` (e.g. from training) must match exactly."""
    found = sorted(d.name for d in directory.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not found:
        raise UserError(f"{directory} has no class folders; expected {directory}/<class>/<image files>")
    if classes is not None and found != list(classes):
        only_here, only_there = sorted(set(found) - set(classes)), sorted(set(classes) - set(found))
        raise UserError(f"class folders of {directory} differ from the training classes: "
                        f"only here: {only_here or 'none'}; missing here: {only_there or 'none'}")
    # The split folder, its ancestors and every class folder are listed once each, in their own right.
    listed = {_directory_id(path) for path in (directory, *directory.resolve().parents)}
    listed.update(_directory_id(directory / name) for name in found)
    samples = []
    for index, name in enumerate(found):
        images = list_images(directory / name, listed)
        if not images:
            logger.warning(f"class folder {directory / name} has no images")
        samples.extend((str(path), index) for path in images)
    if not samples:
        raise UserError(f"{directory} has no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return ImageFolder(directory, found, samples)
