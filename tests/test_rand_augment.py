"""rand_augment: timm's RandAugment ops and arguments, drawn from the image's own generator."""
import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from mobilenetv3.config import ConfigError, build_config
from mobilenetv3.data import rand_augment, transforms
from mobilenetv3.data.pipeline import DecodedImages
from mobilenetv3.data.preprocessing import Preprocessing
from mobilenetv3.data.rand_augment import GEOMETRIC_RESAMPLING, OPS, RandAugment, apply, parse
from mobilenetv3.data.transforms import Augmentation, random_resized_crop_box

FILL = (124, 116, 104)  # ImageNet's mean colour, timm's fill


def bright_image(seed=0, size=(40, 48)):
    """Values 100-250: every op below changes it (there is contrast to stretch, >= 230 to solarize, < 128 to add to)."""
    return np.random.default_rng(seed).integers(100, 251, (*size, 3), dtype=np.uint8)


def test_parse_reads_timms_strings_and_names_what_it_cannot():
    assert parse("rand-m9-mstd0.5") == RandAugment(magnitude=9.0, num_ops=2, prob=0.5, magnitude_std=0.5)
    assert parse("rand-m7-n3-p1.0") == RandAugment(magnitude=7.0, num_ops=3, prob=1.0, magnitude_std=0.0)
    assert parse("rand-mstd101").magnitude_std == float("inf")  # timm: above 100 means uniform
    with pytest.raises(ValueError, match="cannot read 'inc1'"):
        parse("rand-m9-inc1")
    with pytest.raises(ValueError, match="does not start with 'rand'"):
        parse("m9-mstd0.5")
    with pytest.raises(ConfigError, match=r"rand_augment 'rand-m9-n0': n must be at least 1"):
        build_config(overrides=dict(rand_augment="rand-m9-n0"))
    with pytest.raises(ConfigError, match="auto_augment and rand_augment are alternatives"):
        build_config(overrides=dict(rand_augment="rand-m9", auto_augment=True))


def timms_arguments_at_magnitude_9(image, sign, resample):
    """What timm's ops give at m9 (level 0.9), its level functions worked out: 27 degrees, shear 0.27,
    shift 0.405 of the side, 3 bits, solarize from 230, add 99 below 128, enhance by 1.72."""
    def affine(matrix):
        return image.transform(image.size, Image.Transform.AFFINE, matrix, resample=resample, fillcolor=FILL)
    return {
        "AutoContrast": ImageOps.autocontrast(image),
        "Equalize": ImageOps.equalize(image),
        "Invert": ImageOps.invert(image),
        "Rotate": image.rotate(sign * 27.0, resample=resample, fillcolor=FILL),
        "Posterize": ImageOps.posterize(image, 3),
        "Solarize": ImageOps.solarize(image, 230),
        "SolarizeAdd": image.point([min(255, i + 99) if i < 128 else i for i in range(256)] * 3),
        "Color": ImageEnhance.Color(image).enhance(1.72),
        "Contrast": ImageEnhance.Contrast(image).enhance(1.72),
        "Brightness": ImageEnhance.Brightness(image).enhance(1.72),
        "Sharpness": ImageEnhance.Sharpness(image).enhance(1.72),
        "ShearX": affine((1, sign * 0.27, 0, 0, 1, 0)),
        "ShearY": affine((1, 0, 0, sign * 0.27, 1, 0)),
        "TranslateXRel": affine((1, 0, sign * 0.405 * image.size[0], 0, 1, 0)),
        "TranslateYRel": affine((1, 0, 0, 0, 1, sign * 0.405 * image.size[1])),
    }


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_every_op_at_magnitude_9_is_timms(seed):
    """The 15 ops of timm's RandAugment set, with the arguments its level functions give at m9; a signed
    argument's sign and a geometric op's resampling (bilinear or bicubic) drawn from the generator."""
    pixels = bright_image(seed)
    image = Image.fromarray(pixels)
    assert sorted(OPS) == sorted(timms_arguments_at_magnitude_9(image, 1, Image.Resampling.BILINEAR))
    for name, op in OPS.items():
        draws = np.random.default_rng(seed)
        signed = name in ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
        sign = -1 if signed and draws.random() > 0.5 else 1
        resample = GEOMETRIC_RESAMPLING[draws.integers(2)] if signed else Image.Resampling.BILINEAR  # unused
        expected = timms_arguments_at_magnitude_9(image, sign, resample)[name]
        result = np.asarray(op(image, 0.9, np.random.default_rng(seed), FILL))
        assert np.array_equal(result, np.asarray(expected)), name
        assert not np.array_equal(result, pixels), name  # each op does something to this image


def test_the_draws_come_from_the_generator_and_each_op_runs_with_probability_p():
    settings = parse("rand-m9-n1-p0.5-mstd0.5")
    pixels = bright_image()
    first = apply(pixels, settings, FILL, np.random.default_rng(5))
    assert np.array_equal(apply(pixels, settings, FILL, np.random.default_rng(5)), first)
    unchanged = [np.array_equal(apply(pixels, settings, FILL, np.random.default_rng(seed)), pixels)
                 for seed in range(400)]
    assert abs(np.mean(unchanged) - 0.5) < 0.08  # 400 draws: 0.08 is over three standard deviations
    assert sum(not np.array_equal(apply(pixels, parse("rand-m9-n2-p1.0"), FILL, np.random.default_rng(seed)),
                                  pixels) for seed in range(20)) == 20


def test_training_images_get_it_after_the_flip_from_their_own_generator(tmp_path):
    """Crop, flip, RandAugment, then random erasing, all drawn from (seed, epoch, key)."""
    pixels = np.random.default_rng(3).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    path = tmp_path / "a.png"
    Image.fromarray(pixels).save(path)
    augmentation = Augmentation(rand_augment="rand-m9-mstd0.5", random_erase=0.5)
    rows = np.stack([np.full(12, 1), np.arange(12)], axis=1)  # the pipeline's (epoch, key) rows: epoch 1
    images, _ = DecodedImages([(str(path), 0)], Preprocessing(resize=32), augmentation, seed=4)(rows)
    erased = 0
    for key, image in enumerate(images):
        rng = np.random.default_rng([4, 1, key])
        top, left, h, w = random_resized_crop_box(60, 80, rng)
        expected = transforms.resize(np.ascontiguousarray(pixels[top:top + h, left:left + w]), (32, 32), "bilinear")
        expected = np.ascontiguousarray(expected[:, ::-1]) if rng.random() < 0.5 else expected
        expected = rand_augment.apply(expected, parse("rand-m9-mstd0.5"), FILL, rng)
        if rng.random() < 0.5 and (box := transforms.random_erasing_box(32, 32, rng)) is not None:
            top, left, h, w = box
            expected[top:top + h, left:left + w] = FILL
            erased += 1
        assert np.array_equal(image, expected), key
    assert erased > 0
