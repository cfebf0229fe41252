"""The pixel work on decoded images: the training view's random crop, flip, augmentations and erasing, the
evaluation view's resize and centre crop, and normalisation.

Every random draw of a training view comes from the image's own generator, seeded by (seed, epoch, key)
(pipeline.py), so an image's view is the same whatever the worker count, and on resume. Resizing runs in
MindSpore's C++ vision op on uint8 pixels; RandAugment, AutoAugment and colour jitter in Pillow.
"""
import functools
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import rand_augment
from .auto_augment import auto_augment, color_jitter
from .decoding import EncodedImage
from .preprocessing import Preprocessing


@dataclass(frozen=True)
class Augmentation:
    """What a training view adds to the random-resized crop and flip (see augmented)."""
    min_crop_area: float = 0.08  # the crop's smallest share of the image area
    rand_augment: str = ""  # timm's form, e.g. rand-m9-mstd0.5; "" off
    auto_augment: bool = False  # MindSpore's ImageNet policy
    color_jitter: float = 0.0
    random_erase: float = 0.0  # probability
    random_erase_mode: str = "const"  # const: the mean colour; pixel: normal noise once normalised


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


def flip_left_right(pixels: np.ndarray) -> np.ndarray:
    """A contiguous mirror image of HWC uint8 `pixels`, copied as 3-byte items: numpy's reversed-stride
    copy goes byte by byte, several times slower."""
    height, width, channels = pixels.shape
    items = np.ascontiguousarray(pixels).view(f"V{channels}")[:, ::-1, 0]
    return np.ascontiguousarray(items).view(np.uint8).reshape(height, width, channels)


def cropped(image: EncodedImage, size: int, min_crop_area: float, rng: np.random.Generator) -> tuple:
    """(the random-resized crop of the image, decoded, whether to flip): the part of a training view that
    reads the file, drawn from `rng`."""
    top, left, h, w = random_resized_crop_box(image.height, image.width, rng, scale=(min_crop_area, 1.0))
    flip = rng.random() < 0.5
    return image.rgb_box(top, left, h, w, min(h, w) / size), flip


def augmented(crop: np.ndarray, flip: bool, preprocessing: Preprocessing, augmentation: Augmentation,
              rng: np.random.Generator, rand_augment_policy: Optional[rand_augment.RandAugment] = None) -> np.ndarray:
    """The training view of a decoded crop: resized, flipped, augmented (RandAugment, then AutoAugment and
    colour jitter, torchvision's order) and erased, drawing on from `rng`. `rand_augment_policy` is
    augmentation.rand_augment parsed, once per pipeline."""
    size = preprocessing.resize
    out = resize(crop, (size, size), preprocessing.interpolation)
    if flip:
        out = flip_left_right(out)
    if rand_augment_policy is not None:
        out = rand_augment.apply(out, rand_augment_policy, mean_colour(preprocessing.mean), rng)
    if augmentation.auto_augment:
        out = auto_augment(out, preprocessing.interpolation, rng)
    if augmentation.color_jitter > 0:
        out = color_jitter(out, augmentation.color_jitter, rng)
    if augmentation.random_erase > 0 and rng.random() < augmentation.random_erase:
        box = random_erasing_box(size, size, rng)
        if box is not None:
            top, left, h, w = box
            out[top:top + h, left:left + w] = erasure(h, w, augmentation.random_erase_mode, preprocessing.mean,
                                                      preprocessing.std, rng)
    return out


def random_erasing_box(height, width, rng, scale=(0.02, 1 / 3), ratio=(0.3, 10 / 3)):
    """(top, left, h, w) of the rectangle torchvision's RandomErasing erases, or None after 10 tries."""
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        area = height * width * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        h, w = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if h < height and w < width:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    return None


def erasure(height, width, mode: str, mean, std, rng) -> np.ndarray:
    """The uint8 pixels an erased rectangle gets: for mode "const" the mean colour, 0 once normalised
    (torchvision's default); for "pixel" normal noise once normalised (timm's), rounded to uint8 and so cut
    at the ends of the pixel range (about 2 standard deviations with ImageNet's mean and std)."""
    if mode == "pixel":
        noise = np.asarray(mean) + np.asarray(std) * rng.standard_normal((height, width, 3))
        return np.clip(np.round(255 * noise), 0, 255).astype(np.uint8)
    return np.asarray(mean_colour(mean), np.uint8)


def mean_colour(mean) -> tuple:
    """The RGB uint8 colour that normalises to 0."""
    return tuple(int(value) for value in np.round(255 * np.asarray(mean)))


def interpolation_mode(name: str):
    from mindspore.dataset.vision import Inter
    return {"bilinear": Inter.BILINEAR, "bicubic": Inter.BICUBIC}[name]


@functools.lru_cache(maxsize=None)
def _resize_op(size, interpolation: str):
    from mindspore.dataset import vision
    return vision.Resize(size, interpolation=interpolation_mode(interpolation))


def resize(pixels: np.ndarray, size, interpolation: str) -> np.ndarray:
    """MindSpore's C++ Resize of uint8 HWC `pixels`: to (height, width), or an int for the shorter side."""
    return _resize_op(size, interpolation)(pixels)


def eval_image(image: EncodedImage, preprocessing: Preprocessing) -> np.ndarray:
    """The evaluation view of an image, uint8 HWC: shorter side to resize / crop_pct (256 for 224), centre
    crop resize x resize; a JPEG that will be shrunk 2x or more decodes reduced."""
    short_side = preprocessing.eval_short_side
    pixels = resize(image.rgb(min(image.width, image.height) / short_side), short_side, preprocessing.interpolation)
    height, width, _ = pixels.shape
    size = preprocessing.resize
    top, left = (height - size) // 2, (width - size) // 2  # as MindSpore's CenterCrop
    return np.ascontiguousarray(pixels[top:top + size, left:left + size])


def normalize_batch(images: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """The network's input from a batch of the pipeline: uint8 NHWC -> float32 NCHW (pixel - 255 mean) /
    (255 std) per channel. training.train_step.InputNormalization computes the same on the device."""
    shift, scale = preprocessing.normalization()
    count, height, width, channels = images.shape
    out = np.empty((count, channels, height, width), np.float32)
    for channel in range(channels):  # a channel at a time: no float32 NHWC temporary
        np.subtract(images[..., channel], shift[channel], out=out[:, channel], dtype=np.float32)
        out[:, channel] *= scale[channel]
    return out
