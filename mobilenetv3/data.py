"""ImageNet-layout folders -> MindSpore datasets with the standard train and eval transforms.

Layout: DIR/train/<class>/... and DIR/val/<class>/..., or DIR itself a tree of class folders.
Class indices follow the sorted class-folder names, as torchvision's ImageFolder does.

Images are decoded with Pillow inside the dataset source, not with MindSpore's Decode: MindSpore
2.10's JPEG decoder kills the process (SIGFPE/SIGSEGV) on truncated or corrupt files, which no
error-samples mode can catch. Pillow raises instead, so a bad file is skipped with a warning naming
it; it also reads every mode (CMYK, palette, RGBA, 16-bit, WebP) into 3-channel RGB. Everything after
decoding runs in MindSpore's C++ vision ops.
"""
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
from PIL import Image

from .errors import UserError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
UNREADABLE = -1  # label of an evaluation sample whose file could not be read


@dataclass
class ImageFolder:
    root: Path
    classes: List[str]
    samples: List[Tuple[str, int]]  # (path, class index)


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def list_images(directory: Path) -> List[Path]:
    """Image files below `directory`, recursively, in sorted order."""
    found = []
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
        dirnames.sort()
        found.extend(Path(dirpath) / name for name in sorted(filenames) if is_image_file(Path(name)))
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
    samples = []
    for index, name in enumerate(found):
        images = list_images(directory / name)
        if not images:
            print(f"warning: class folder {directory / name} has no images", file=sys.stderr)
        samples.extend((str(path), index) for path in images)
    if not samples:
        raise UserError(f"{directory} has no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return ImageFolder(directory, found, samples)


def read_rgb(path) -> np.ndarray:
    """Decode any image file to an RGB uint8 HWC array; raises OSError/ValueError on bad files."""
    with Image.open(path) as image:
        image.load()
        if image.mode in ("I", "I;16", "I;16B", "I;16L"):  # 16-bit grayscale: keep the top 8 bits
            image = Image.fromarray((np.asarray(image, dtype=np.uint32) >> 8).astype(np.uint8))
        return np.asarray(image.convert("RGB"))


def warn_unreadable(path, err):
    print(f"warning: skipping unreadable image {path}: {type(err).__name__}: {err}", file=sys.stderr, flush=True)


def random_resized_crop_box(height, width, rng, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """(top, left, h, w) of a crop covering a random fraction `scale` of the area at a random aspect
    `ratio`, as torchvision's RandomResizedCrop draws it; centre crop after 10 failed tries."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class DecodedImages:
    """Random-access dataset source yielding (RGB image, label).

    With `augment`, it also draws the random-resized crop and horizontal flip of each sample from
    (seed, epoch, key) alone: MindSpore's random ops draw from per-worker generators, so their results
    depend on which worker gets which row, and neither a resumed run nor N ranks could reproduce them.
    An unreadable file is reported and, in training (`augment`), replaced by the next readable one, so
    every rank still runs the same number of steps; in evaluation it yields a black pixel labelled
    UNREADABLE, which the counts leave out, so no image is counted twice.
    Keys above len(samples) are later passes of a repeated epoch.
    """

    def __init__(self, samples: List[Tuple[str, int]], augment=False, seed=0, epoch=0, min_crop_area=0.08):
        self.samples, self.augment, self.seed, self.epoch = samples, augment, seed, epoch
        self.min_crop_area = min_crop_area

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, key):
        for offset in range(len(self.samples)):
            path, label = self.samples[(key + offset) % len(self.samples)]
            try:
                image = read_rgb(path)
                break
            except (OSError, ValueError, Image.DecompressionBombError) as err:
                warn_unreadable(path, err)
                if not self.augment:
                    return np.zeros((1, 1, 3), np.uint8), np.int32(UNREADABLE)
        else:
            raise UserError("no readable image in the data set")
        if self.augment:
            rng = np.random.default_rng([self.seed, self.epoch, int(key)])
            top, left, h, w = random_resized_crop_box(*image.shape[:2], rng, scale=(self.min_crop_area, 1.0))
            image = image[top:top + h, left:left + w]
            if rng.random() < 0.5:
                image = image[:, ::-1]
            image = np.ascontiguousarray(image)
        return image, np.int32(label)


class EpochSampler:
    """Sample order of one epoch for one rank, drawn from (seed, epoch) alone.

    The epoch holds `repeats` passes over the data, each its own permutation (keys of pass r are
    offset by r * size). Shards interleave (rank r takes every N-th key), so N ranks at batch B see
    together what one process at batch N*B sees. With `pad` the order wraps around so that every
    shard has the same length (training: all ranks must run the same number of steps); without,
    no sample is repeated (evaluation).
    """

    def __init__(self, size, shuffle, seed=0, epoch=0, repeats=1, num_shards=1, shard_id=0, pad=True):
        self.size, self.shuffle, self.seed, self.epoch, self.repeats = size, shuffle, seed, epoch, repeats
        self.num_shards, self.shard_id, self.pad = num_shards, shard_id, pad

    def indices(self) -> np.ndarray:
        passes = [np.random.default_rng([self.seed, self.epoch, r]).permutation(self.size) + r * self.size
                  if self.shuffle else np.arange(self.size) + r * self.size for r in range(self.repeats)]
        order = np.concatenate(passes)
        if self.pad:
            order = np.resize(order, math.ceil(len(order) / self.num_shards) * self.num_shards)  # wraps around
        return order[self.shard_id::self.num_shards]

    def __iter__(self):
        return iter(self.indices().tolist())

    def __len__(self):
        return len(self.indices())


def clamp_workers(requested: int) -> int:
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if requested > available:
        print(f"warning: num_parallel_workers {requested} > {available} CPUs available; using {available}",
              file=sys.stderr)
        return available
    return requested


def _interpolation(name: str):
    from mindspore.dataset.vision import Inter
    return {"bilinear": Inter.BILINEAR, "bicubic": Inter.BICUBIC}[name]


def normalize(config):
    """(pixel - 255 * mean) / (255 * std) per channel, on uint8 HWC images."""
    from mindspore.dataset import vision
    return vision.Normalize([255 * m for m in config.mean], [255 * s for s in config.std])


def train_transforms(config) -> list:
    from mindspore.dataset import vision
    inter = _interpolation(config.interpolation)
    ops = [vision.Resize((config.resize, config.resize), interpolation=inter)]  # of the crop DecodedImages drew
    if config.auto_augment:
        ops.append(vision.AutoAugment(vision.AutoAugmentPolicy.IMAGENET, interpolation=inter))
    if config.color_jitter > 0:
        strength = config.color_jitter
        ops.append(vision.RandomColorAdjust(brightness=strength, contrast=strength, saturation=strength))
    ops += [normalize(config), vision.HWC2CHW()]
    if config.random_erase > 0:
        ops.append(vision.RandomErasing(prob=config.random_erase))
    return ops


def eval_transforms(config) -> list:
    """Shorter side to resize / crop_pct (256 for 224), centre crop, normalise."""
    from mindspore.dataset import vision
    return [vision.Resize(int(config.resize / config.crop_pct), interpolation=_interpolation(config.interpolation)),
            vision.CenterCrop(config.resize),
            normalize(config),
            vision.HWC2CHW()]


def create_dataset(folder: ImageFolder, config, training: bool, num_shards=1, shard_id=0, epoch=0):
    """Batched dataset of (float32 CHW images, int32 labels) for one rank and one epoch."""
    import mindspore.dataset as ds
    sampler = EpochSampler(len(folder.samples), shuffle=training, seed=config.seed, epoch=epoch,
                           repeats=config.repeat_num if training else 1, num_shards=num_shards, shard_id=shard_id,
                           pad=training)
    if training and len(sampler) < config.batch_size:
        raise UserError(f"batch_size {config.batch_size} is larger than the {len(sampler)} training images per "
                        f"process in {folder.root}; lower --batch_size")
    workers = clamp_workers(config.num_parallel_workers)
    source = DecodedImages(folder.samples, augment=training, seed=config.seed, epoch=epoch,
                           min_crop_area=config.min_crop_area)
    dataset = ds.GeneratorDataset(source, ["image", "label"], sampler=sampler, num_parallel_workers=workers,
                                  python_multiprocessing=False)
    transforms = train_transforms(config) if training else eval_transforms(config)
    dataset = dataset.map(transforms, input_columns="image", num_parallel_workers=workers)
    return dataset.batch(config.batch_size, drop_remainder=training)
