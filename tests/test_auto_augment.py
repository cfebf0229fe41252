"""AutoAugment and colour jitter: torchvision's policy and ranges, drawn from the image's own generator, so the
same batches come out whatever the number of data workers."""
import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from mobilenetv3.data import folders
from mobilenetv3.data.auto_augment import IMAGENET_POLICY, auto_augment, color_jitter
from mobilenetv3.data.pipeline import create_dataset
from mobilenetv3.data.preprocessing import Preprocessing
from mobilenetv3.data.transforms import Augmentation


def test_auto_augment_applies_a_drawn_sub_policy_as_torchvision_does():
    pixels = np.random.default_rng(0).integers(60, 200, (32, 40, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    for seed in range(60):
        rng = np.random.default_rng(seed)
        policy = IMAGENET_POLICY[rng.integers(len(IMAGENET_POLICY))]
        probs, signs = rng.random(2), rng.integers(2, size=2)
        expected = image
        for (name, prob, bin_index), draw, sign in zip(policy, probs, signs):
            if draw > prob:
                continue
            factor = 1 + (0.9 * bin_index / 9 if bin_index is not None else 0) * (1 if sign else -1)
            expected = {  # written out from torchvision's _apply_op and augmentation space (10 bins)
                "Posterize": lambda im: ImageOps.posterize(im, int(8 - round(bin_index / 2.25))),
                "Solarize": lambda im: ImageOps.solarize(im, 255 - 255 * bin_index / 9),
                "Rotate": lambda im: im.rotate(30 * bin_index / 9 * (1 if sign else -1), Image.Resampling.BILINEAR),
                "ShearX": lambda im: im.transform(im.size, Image.Transform.AFFINE,
                                                  (1, 0.3 * bin_index / 9 * (1 if sign else -1), 0, 0, 1, 0),
                                                  resample=Image.Resampling.BILINEAR),
                "Color": lambda im: ImageEnhance.Color(im).enhance(factor),
                "Contrast": lambda im: ImageEnhance.Contrast(im).enhance(factor),
                "Sharpness": lambda im: ImageEnhance.Sharpness(im).enhance(factor),
                "AutoContrast": ImageOps.autocontrast, "Equalize": ImageOps.equalize, "Invert": ImageOps.invert,
            }[name](expected)
        np.testing.assert_array_equal(auto_augment(pixels, "bilinear", np.random.default_rng(seed)),
                                      np.asarray(expected), err_msg=str((seed, policy)))


def test_color_jitter_scales_brightness_contrast_and_saturation_in_a_drawn_order():
    pixels = np.random.default_rng(1).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    rng = np.random.default_rng(9)
    order = rng.permutation(3)
    factors = [rng.uniform(0.6, 1.4) for _ in range(3)]
    expected = Image.fromarray(pixels)
    for index, factor in zip(order, factors):
        expected = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)[index](expected).enhance(factor)
    jittered = color_jitter(pixels, 0.4, np.random.default_rng(9))
    np.testing.assert_array_equal(jittered, np.asarray(expected))
    assert jittered.flags.writeable  # random erasing writes into it
    assert np.array_equal(color_jitter(pixels, 0.0, np.random.default_rng(3)), pixels)


@pytest.mark.parametrize("augmentation", [Augmentation(auto_augment=True), Augmentation(color_jitter=0.4),
                                          Augmentation(auto_augment=True, color_jitter=0.4, random_erase=0.5)],
                         ids=["auto_augment", "color_jitter", "both"])
def test_one_and_two_workers_give_the_same_batches(tmp_path, augmentation):
    rng = np.random.default_rng(2)
    for c in range(2):
        for i in range(8):
            path = tmp_path / "train" / f"c{c}" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (30, 36, 3), dtype=np.uint8)).save(path)
    folder = folders.scan_image_folder(tmp_path / "train")
    batches = {}
    for workers in (1, 2):
        dataset = create_dataset(folder, Preprocessing(resize=24), 4, workers=workers, augmentation=augmentation,
                                 seed=5, epochs=2)
        batches[workers] = [images for images, _ in dataset.create_tuple_iterator(output_numpy=True)]
    assert len(batches[1]) == 8
    for one, two in zip(batches[1], batches[2]):
        np.testing.assert_array_equal(one, two)
