"""AutoAugment's ImageNet policy (Cubuk et al. 2019) as torchvision's AutoAugment applies it, and colour
jitter as torchvision's ColorJitter, on uint8 HWC images with Pillow, drawn from a numpy Generator.

The draws come from the image's own generator (seed, epoch, key), so an image gets the same augmentation
whatever the worker count, and on resume (MindSpore's AutoAugment and RandomColorAdjust, used before,
drew from per-worker generators seeded once per run start).
"""
import numpy as np
from PIL import Image, ImageEnhance, ImageOps

# torchvision's AutoAugmentPolicy.IMAGENET: 25 sub-policies of two (op, probability, magnitude bin) each.
IMAGENET_POLICY = (
    (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)), (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)), (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)), (("Equalize", 0.4, None), ("Rotate", 0.8, 8)),
    (("Solarize", 0.6, 3), ("Equalize", 0.6, None)), (("Posterize", 0.8, 5), ("Equalize", 1.0, None)),
    (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)), (("Equalize", 0.6, None), ("Posterize", 0.4, 6)),
    (("Rotate", 0.8, 8), ("Color", 0.4, 0)), (("Rotate", 0.4, 9), ("Equalize", 0.6, None)),
    (("Equalize", 0.0, None), ("Equalize", 0.8, None)), (("Invert", 0.6, None), ("Equalize", 1.0, None)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)), (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
    (("Color", 0.8, 8), ("Solarize", 0.8, 7)), (("Sharpness", 0.4, 7), ("Invert", 0.6, None)),
    (("ShearX", 0.6, 5), ("Equalize", 1.0, None)), (("Color", 0.4, 0), ("Equalize", 0.6, None)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)), (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Invert", 0.6, None), ("Equalize", 1.0, None)), (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
)
BINS = 10
# op -> (its magnitude at each bin, whether a random sign applies): torchvision's augmentation space.
MAGNITUDES = {
    "ShearX": (np.linspace(0.0, 0.3, BINS), True),
    "Rotate": (np.linspace(0.0, 30.0, BINS), True),
    "Color": (np.linspace(0.0, 0.9, BINS), True),
    "Contrast": (np.linspace(0.0, 0.9, BINS), True),
    "Sharpness": (np.linspace(0.0, 0.9, BINS), True),
    "Posterize": (8 - np.round(np.arange(BINS) / ((BINS - 1) / 4)).astype(int), False),
    "Solarize": (np.linspace(255.0, 0.0, BINS), False),
}
RESAMPLING = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}

# name -> (image, magnitude, resampling) -> image, as torchvision's _apply_op with fill 0 (black).
OPS = {
    "ShearX": lambda image, m, resample: image.transform(image.size, Image.Transform.AFFINE, (1, m, 0, 0, 1, 0),
                                                         resample=resample),
    "Rotate": lambda image, m, resample: image.rotate(m, resample=resample),
    "Color": lambda image, m, resample: ImageEnhance.Color(image).enhance(1 + m),
    "Contrast": lambda image, m, resample: ImageEnhance.Contrast(image).enhance(1 + m),
    "Sharpness": lambda image, m, resample: ImageEnhance.Sharpness(image).enhance(1 + m),
    "Posterize": lambda image, m, resample: ImageOps.posterize(image, int(m)),
    "Solarize": lambda image, m, resample: ImageOps.solarize(image, m),
    "AutoContrast": lambda image, m, resample: ImageOps.autocontrast(image),
    "Equalize": lambda image, m, resample: ImageOps.equalize(image),
    "Invert": lambda image, m, resample: ImageOps.invert(image),
}


def auto_augment(pixels: np.ndarray, interpolation: str, rng: np.random.Generator) -> np.ndarray:
    """`pixels` (uint8 HWC RGB) after one sub-policy of IMAGENET_POLICY, drawn as torchvision draws it: the
    sub-policy, then for each of its two ops whether it applies and the sign of its magnitude."""
    policy = IMAGENET_POLICY[rng.integers(len(IMAGENET_POLICY))]
    probs, signs = rng.random(2), rng.integers(2, size=2)
    image = Image.fromarray(pixels)
    for (name, prob, bin_index), draw, sign in zip(policy, probs, signs):
        if draw <= prob:
            magnitude = 0.0
            if bin_index is not None:
                values, signed = MAGNITUDES[name]
                magnitude = float(values[bin_index]) * (-1 if signed and sign == 0 else 1)
            image = OPS[name](image, magnitude, RESAMPLING[interpolation])
    return np.array(image)  # writable: random erasing writes into it


def color_jitter(pixels: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """`pixels` with brightness, contrast and saturation each scaled by a factor drawn uniformly from
    [max(0, 1 - strength), 1 + strength], in an order drawn at random (torchvision's ColorJitter)."""
    image = Image.fromarray(pixels)
    enhancers = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)
    for index in rng.permutation(len(enhancers)):
        image = enhancers[index](image).enhance(rng.uniform(max(0.0, 1 - strength), 1 + strength))
    return np.array(image)  # writable: random erasing writes into it
