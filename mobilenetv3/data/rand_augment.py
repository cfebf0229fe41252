"""timm's RandAugment ("rand-m9-mstd0.5" and the like) on uint8 HWC images, drawn from a numpy Generator.

The ops, their magnitude-to-argument rules and the order of the draws are those of timm's
rand_augment_transform (data/auto_augment.py, after TensorFlow's EfficientNet code), all with Pillow as
timm does; the draws come from the image's own generator (seed, epoch, key) instead of Python's global
`random`, so an image gets the same augmentation whatever the worker count, and on resume.

Per image: `num_ops` ops chosen uniformly with replacement; each is skipped with probability 1 - prob,
else applied at a magnitude drawn around `magnitude` (normal, std `magnitude_std`; uniform on [0, magnitude]
for an infinite std) and clipped to [0, MAX_MAGNITUDE].
"""
import math
import re
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

MAX_MAGNITUDE = 10.0  # timm's _LEVEL_DENOM: "m9" is 9 tenths of each op's largest argument
GEOMETRIC_RESAMPLING = (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC)  # one drawn per op, as timm's


class RandAugment(NamedTuple):
    magnitude: float = 10.0
    num_ops: int = 2
    prob: float = 0.5
    magnitude_std: float = 0.0


def parse(spec: str) -> RandAugment:
    """RandAugment settings from timm's string: "rand" then any of -m<magnitude>, -n<ops per image>,
    -p<probability of each op>, -mstd<std of the magnitude> (above 100: uniform), e.g. "rand-m9-mstd0.5".
    Raises ValueError naming the part it cannot read."""
    parts = spec.split("-")
    if parts[0] != "rand":
        raise ValueError(f"{spec!r} does not start with 'rand' (timm's form, e.g. rand-m9-mstd0.5)")
    settings = {}
    names = {"m": "magnitude", "n": "num_ops", "p": "prob", "mstd": "magnitude_std"}
    for part in parts[1:]:
        match = re.fullmatch(r"([a-z]+)(\d+(?:\.\d*)?)", part)
        if match is None or match.group(1) not in names:
            raise ValueError(f"{spec!r}: cannot read {part!r}; the parts are m<magnitude>, n<ops per image>, "
                             "p<probability>, mstd<magnitude std>, e.g. rand-m9-mstd0.5")
        key, value = names[match.group(1)], float(match.group(2))
        if key in settings:
            raise ValueError(f"{spec!r} gives {match.group(1)} twice; give each part once")
        settings[key] = int(value) if key == "num_ops" else (math.inf if key == "magnitude_std" and value > 100
                                                              else value)
    result = RandAugment(**settings)
    if not (result.num_ops >= 1 and 0 < result.prob <= 1 and 0 <= result.magnitude <= MAX_MAGNITUDE):
        raise ValueError(f"{spec!r}: n must be at least 1, p in (0, 1], m in [0, {MAX_MAGNITUDE:g}]")
    return result


def _signed(value, rng):
    return -value if rng.random() > 0.5 else value


def _affine(image, matrix, rng, fill):
    return image.transform(image.size, Image.Transform.AFFINE, matrix,
                           resample=GEOMETRIC_RESAMPLING[rng.integers(2)], fillcolor=fill)


def _solarize_add(image, add, threshold=128):
    table = [min(255, i + add) if i < threshold else i for i in range(256)]
    return image.point(table * len(image.getbands()))


def _enhance(kind):
    """An ImageEnhance op at timm's factor for a level: 0.1 to 1.9."""
    return lambda image, level, rng, fill: kind(image).enhance(level * 1.8 + 0.1)


# name -> (image, level in [0, 1], rng, fill colour) -> image; the arguments timm's level functions give.
OPS = {
    "AutoContrast": lambda image, level, rng, fill: ImageOps.autocontrast(image),
    "Equalize": lambda image, level, rng, fill: ImageOps.equalize(image),
    "Invert": lambda image, level, rng, fill: ImageOps.invert(image),
    "Rotate": lambda image, level, rng, fill: image.rotate(
        _signed(level * 30.0, rng), resample=GEOMETRIC_RESAMPLING[rng.integers(2)], fillcolor=fill),
    "Posterize": lambda image, level, rng, fill: ImageOps.posterize(image, int(level * 4)),
    "Solarize": lambda image, level, rng, fill: ImageOps.solarize(image, min(256, int(level * 256))),
    "SolarizeAdd": lambda image, level, rng, fill: _solarize_add(image, min(128, int(level * 110))),
    "Color": _enhance(ImageEnhance.Color),
    "Contrast": _enhance(ImageEnhance.Contrast),
    "Brightness": _enhance(ImageEnhance.Brightness),
    "Sharpness": _enhance(ImageEnhance.Sharpness),
    "ShearX": lambda image, level, rng, fill: _affine(image, (1, _signed(level * 0.3, rng), 0, 0, 1, 0), rng, fill),
    "ShearY": lambda image, level, rng, fill: _affine(image, (1, 0, 0, _signed(level * 0.3, rng), 1, 0), rng, fill),
    "TranslateXRel": lambda image, level, rng, fill: _affine(
        image, (1, 0, _signed(level * 0.45, rng) * image.size[0], 0, 1, 0), rng, fill),
    "TranslateYRel": lambda image, level, rng, fill: _affine(
        image, (1, 0, 0, 0, 1, _signed(level * 0.45, rng) * image.size[1]), rng, fill),
}
OP_NAMES = list(OPS)


def apply(pixels: np.ndarray, settings: RandAugment, fill: tuple, rng: np.random.Generator) -> np.ndarray:
    """`pixels` (uint8 HWC RGB) after settings.num_ops ops drawn from `rng`; `fill`: the RGB colour uncovered
    areas of rotated, sheared and shifted images get (timm's: the mean colour)."""
    image = Image.fromarray(pixels)
    for index in rng.integers(len(OP_NAMES), size=settings.num_ops):
        if settings.prob < 1.0 and rng.random() > settings.prob:
            continue
        magnitude = settings.magnitude
        if settings.magnitude_std == math.inf:
            magnitude = rng.uniform(0, magnitude)
        elif settings.magnitude_std > 0:
            magnitude = rng.normal(magnitude, settings.magnitude_std)
        level = max(0.0, min(magnitude, MAX_MAGNITUDE)) / MAX_MAGNITUDE
        image = OPS[OP_NAMES[index]](image, level, rng, fill)
    return np.array(image)  # writable: random erasing follows
