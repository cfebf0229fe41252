import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mobilenetv3.cluster.launchers import LOCAL_RANKS_VARIABLES
from mobilenetv3.data.auto_augment import color_jitter
from mobilenetv3.data import decoding, folders, pipeline, rand_augment, transforms
from mobilenetv3.data.decoding import EncodedImage
from mobilenetv3.data.pipeline import UNREADABLE, DecodedImages, create_dataset
from mobilenetv3.data.preprocessing import Preprocessing
from mobilenetv3.data.sampler import EpochSampler, RunKeys
from mobilenetv3.data.transforms import Augmentation, random_resized_crop_box
from mobilenetv3.errors import UserError
from mobilenetv3.native import cpu_info, jpeg_crop

SEED = 1  # Config's default seed, which these tests drew from before the data functions took value objects


def rows(epoch, keys):
    """A batch of the pipeline's (epoch, key) rows."""
    keys = np.asarray(list(keys))
    return np.stack([np.full_like(keys, epoch), keys], axis=1)


def read_rgb(path, shrink=1.0):
    return EncodedImage(path).rgb(shrink)


def save(path, image, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


@pytest.fixture
def odd_images(tmp_path):
    """One file per awkward format, each a solid colour whose RGB value is known exactly."""
    rgb = Image.new("RGB", (20, 12), (10, 200, 30))
    return {
        "grayscale.png": (save(tmp_path / "grayscale.png", Image.new("L", (20, 12), 77)), (77, 77, 77)),
        "rgba.png": (save(tmp_path / "rgba.png", Image.new("RGBA", (20, 12), (10, 200, 30, 128))), (10, 200, 30)),
        "palette.png": (save(tmp_path / "palette.png", rgb.convert("P", palette=Image.Palette.ADAPTIVE)), (10, 200, 30)),
        "cmyk.jpg": (save(tmp_path / "cmyk.jpg", Image.new("CMYK", (20, 12), (0, 255, 0, 0)), quality=100), None),
        "sixteen.png": (save(tmp_path / "sixteen.png", Image.fromarray(np.full((12, 20), 51400, np.uint16))),
                        (200, 200, 200)),
        "image.webp": (save(tmp_path / "image.webp", rgb, lossless=True), (10, 200, 30)),
        "image.BMP": (save(tmp_path / "image.BMP", rgb), (10, 200, 30)),
        "image.tif": (save(tmp_path / "image.tif", rgb), (10, 200, 30)),
    }


def test_every_mode_becomes_three_channel_rgb(odd_images):
    for name, (path, colour) in odd_images.items():
        pixels = read_rgb(path)
        assert pixels.shape == (12, 20, 3) and pixels.dtype == np.uint8, name
        if colour is not None:
            assert np.all(pixels == colour), (name, pixels[0, 0])
    cmyk = read_rgb(odd_images["cmyk.jpg"][0])
    assert np.abs(cmyk.astype(int) - (255, 0, 255)).max() < 8  # full magenta ink, within JPEG rounding


def test_bad_files_raise_in_pil_not_crash(tmp_path, odd_images):
    good = tmp_path / "good.jpg"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(good)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:200])
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "text.png"
    text.write_text("not an image")
    for path in (truncated, empty, text):
        with pytest.raises(OSError):
            read_rgb(path)


def test_unreadable_images_are_replaced_and_named(tmp_path, capsys):
    good = save(tmp_path / "a" / "good.png", Image.new("RGB", (8, 8), (5, 6, 7)))
    bad = tmp_path / "a" / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 garbage")
    source = DecodedImages([(str(bad), 0), (str(good), 1)], Preprocessing(resize=8), Augmentation(),
                           seed=SEED)  # training: replaced
    image, label = source.view(0, 0)
    assert label == 1 and np.all(image == (5, 6, 7))
    assert f"warning: skipping unreadable image {bad}" in capsys.readouterr().err


def test_folder_layouts_and_class_order(tmp_path, capsys):
    for split in ("train", "val"):
        for name in ("zebra", "Ant", "cat"):
            save(tmp_path / "root" / split / name / "x.png", Image.new("RGB", (4, 4)))
    save(tmp_path / "root" / "train" / "cat" / "nested" / "y.PNG", Image.new("RGB", (4, 4)))
    (tmp_path / "root" / "train" / "cat" / "notes.txt").write_text("skip me")
    folder = folders.scan_image_folder(folders.split_dir(tmp_path / "root", "train"))
    assert folder.classes == ["Ant", "cat", "zebra"]  # sorted folder names, as ImageFolder
    assert [(p.split("/root/train/")[1], c) for p, c in folder.samples] == \
        [("Ant/x.png", 0), ("cat/x.png", 1), ("cat/nested/y.PNG", 1), ("zebra/x.png", 2)]
    # A class-folder tree without train/ and val/ serves as both.
    assert folders.split_dir(tmp_path / "root" / "train", "val") == tmp_path / "root" / "train"
    (tmp_path / "root" / "val" / "dog").mkdir()
    with pytest.raises(UserError, match=r"only here: \['dog'\]; missing here: none"):
        folders.scan_image_folder(tmp_path / "root" / "val", folder.classes)
    capsys.readouterr()
    assert folders.scan_image_folder(tmp_path / "root" / "val").classes == ["Ant", "cat", "dog", "zebra"]
    assert f"warning: class folder {tmp_path / 'root' / 'val' / 'dog'} has no images" in capsys.readouterr().err


@pytest.mark.parametrize("layout,message", [
    ({}, "data_url is not set"),
    ({"file.txt": None}, "has no train/ folder and no class folders"),
    ({"train/a/readme.txt": None}, "has no image files"),
])
def test_bad_layouts_are_clear_errors(tmp_path, layout, message):
    for name in layout:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    with pytest.raises(UserError, match=message):
        folders.scan_image_folder(folders.split_dir(str(tmp_path) if layout else "", "train"))


def test_sampler_shards_partition_each_epoch():
    full = EpochSampler(10, shuffle=True, seed=3, epoch=2, num_shards=1).indices()
    shards = [EpochSampler(10, shuffle=True, seed=3, epoch=2, num_shards=3, shard_id=r).indices() for r in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]  # padded by wrapping: 12 = 10 + the first 2 again
    interleaved = np.stack(shards, axis=1).reshape(-1)
    assert np.array_equal(interleaved, np.resize(full, 12))
    evaluation = [EpochSampler(10, shuffle=False, num_shards=3, shard_id=r, pad=False).indices() for r in range(3)]
    assert sorted(np.concatenate(evaluation).tolist()) == list(range(10))  # nothing dropped or counted twice
    assert not np.array_equal(full, EpochSampler(10, shuffle=True, seed=3, epoch=3).indices())
    repeated = EpochSampler(4, shuffle=True, seed=0, repeats=2).indices()
    assert sorted(repeated.tolist()) == list(range(8))


def test_crop_boxes_stay_inside_and_follow_scale_and_ratio():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        top, left, h, w = random_resized_crop_box(100, 150, rng)
        assert 0 <= top and top + h <= 100 and 0 <= left and left + w <= 150
        assert 0.079 <= h * w / 15000 <= 1.0 and 0.74 <= w / h <= 1.35
    assert random_resized_crop_box(100, 100, rng, scale=(0.25, 0.25), ratio=(1, 1))[2:] == (50, 50)
    # Nothing fits: centre crop, clamped to the ratio range (torchvision's fallback).
    assert random_resized_crop_box(100, 300, rng, scale=(2, 2)) == (0, 83, 100, 133)
    assert random_resized_crop_box(80, 60, rng, scale=(2, 2)) == (0, 0, 80, 60)


@pytest.mark.parametrize("mean, std", [((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # ImageNet's, the default
                                       ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),  # timm's miil weights
                                       ((0.5, 0.25, 0.1), (0.5, 1.0, 0.25))])
def test_pipeline_gives_uint8_nhwc_that_host_and_device_normalise_alike(tmp_path, mean, std):
    import mindspore as ms
    from mobilenetv3.training.train_step import InputNormalization
    for c in range(2):
        save(tmp_path / "d" / "val" / f"c{c}" / "0.png", Image.new("RGB", (50, 40), (124, 116, 104)))
    folder = folders.scan_image_folder(tmp_path / "d" / "val")
    preprocessing = Preprocessing(resize=16, mean=list(mean), std=list(std))
    images, labels = next(create_dataset(folder, preprocessing, batch_size=2, workers=2)
                          .create_tuple_iterator(output_numpy=True))
    assert images.shape == (2, 16, 16, 3) and images.dtype == np.uint8 and labels.tolist() == [0, 1]
    assert np.all(images == (124, 116, 104))
    images[1, 3, 5] = (0, 128, 255)
    host = transforms.normalize_batch(images, preprocessing)
    assert host.shape == (2, 3, 16, 16) and host.dtype == np.float32
    expected = (np.array([124, 116, 104]) / 255 - np.array(mean)) / np.array(std)
    assert np.abs(host[0, :, 5, 5] - expected).max() < 1e-5
    assert np.abs(host[1, :, 3, 5] - (np.array([0, 128, 255]) / 255 - np.array(mean)) / np.array(std)).max() < 1e-5
    class Images(ms.nn.Cell):
        def construct(self, images, labels):
            return images
    device = InputNormalization(Images(), preprocessing)(ms.Tensor(images), ms.Tensor(labels))
    assert np.abs(device.asnumpy() - host).max() < 1e-6


def test_training_batches_are_reproducible_and_sharded(image_folder):
    folder = folders.scan_image_folder(image_folder / "train")

    def batches(batch_size=8, **kw):
        dataset = create_dataset(folder, Preprocessing(resize=32), batch_size, workers=2, augmentation=Augmentation(),
                                 seed=SEED, first_epoch=1, **kw)
        return [b for b, _ in dataset.create_tuple_iterator(output_numpy=True)]
    once, again = batches(), batches()
    assert len(once) == 48 // 8 and all(np.array_equal(a, b) for a, b in zip(once, again))
    ranks = [batches(8 // 2, num_shards=2, shard_id=r) for r in range(2)]
    # Rank r's batch k holds every other image of the one-process batch k: same crops, same flips.
    assert np.array_equal(ranks[0][0], once[0][0::2]) and np.array_equal(ranks[1][0], once[0][1::2])


def test_run_keys_are_each_epochs_order_in_whole_batches_after_the_skipped_steps():
    keys = RunKeys(10, 2, first_epoch=2, epochs=3, skip_steps=1, seed=5, num_shards=2, shard_id=1)
    assert keys.steps_per_epoch == 5 // 2 == 2 and len(keys) == 3 * 4 - 2
    orders = {epoch: EpochSampler(10, True, 5, epoch, num_shards=2, shard_id=1).indices()[:4] for epoch in (2, 3, 4)}
    expected = [(2, k) for k in orders[2][2:]] + [(e, k) for e in (3, 4) for k in orders[e]]
    assert [tuple(keys[i]) for i in range(len(keys))] == expected
    assert [tuple(keys[i]) for i in (9, 0, 5)] == [expected[9], expected[0], expected[5]]  # in any order
    with pytest.raises(IndexError):
        keys[len(keys)]
    with pytest.raises(ValueError, match="skip_steps"):
        RunKeys(10, 2, skip_steps=5)  # five steps per epoch: at most four of them can be done


def test_a_runs_pipeline_is_its_epochs_pipelines_one_after_the_other(image_folder):
    """The batches of one pipeline over epochs 1-2, resumed 2 steps into epoch 1, are those of the
    one-epoch pipelines of epochs 1 and 2 (each drawn from (seed, epoch, key) alone) without its first 2."""
    folder = folders.scan_image_folder(image_folder / "train")

    def batches(first_epoch, epochs=1, skip_steps=0):
        dataset = create_dataset(folder, Preprocessing(resize=16), 8, workers=2, augmentation=Augmentation(),
                                 seed=SEED, first_epoch=first_epoch, epochs=epochs, skip_steps=skip_steps)
        assert dataset.get_batch_size() == 8  # GPU sink mode sets its device queue up with it
        return list(dataset.create_tuple_iterator(output_numpy=True))
    run = batches(1, epochs=2, skip_steps=2)
    expected = batches(1)[2:] + batches(2)
    assert len(run) == len(expected) == 4 + 6
    for (images, labels), (images_1, labels_1) in zip(run, expected):
        assert np.array_equal(images, images_1) and np.array_equal(labels, labels_1)


def test_batch_larger_than_data(image_folder):
    folder = folders.scan_image_folder(image_folder / "train")
    with pytest.raises(UserError, match="batch_size 100 is larger than the 48 training images"):
        create_dataset(folder, Preprocessing(resize=32), 100, workers=2, augmentation=Augmentation(), seed=SEED)


@pytest.mark.parametrize("cpus, environ, requested, expected, line", [
    (96, {"OMPI_COMM_WORLD_LOCAL_SIZE": "8"}, 0, 12,
     "data pipeline: 12 workers per process (its share of the CPUs; 96 CPUs available / 8 processes on this machine)"),
    (96, {"MPI_LOCALNRANKS": "8"}, 4, 4,
     "data pipeline: 4 workers per process (num_parallel_workers; 96 CPUs available / 8 processes on this machine)"),
    (2, {}, 0, 2, "data pipeline: 2 workers per process (its share of the CPUs; 2 CPUs available)"),
    (16, {"OMPI_COMM_WORLD_LOCAL_SIZE": "8"}, 8, 2,
     "warning: num_parallel_workers 8 > 2 CPUs for this process (16 CPUs available / 8 processes on this machine); "
     "using 2"),
    (4, {"OMPI_COMM_WORLD_LOCAL_SIZE": "8"}, 0, 1,
     "data pipeline: 1 worker per process (its share of the CPUs; 4 CPUs available / 8 processes on this machine)"),
])
def test_workers_default_to_this_process_share_of_the_cpus(monkeypatch, capsys, cpus, environ, requested, expected,
                                                          line):
    for name in LOCAL_RANKS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(cpu_info.os, "sched_getaffinity", lambda pid: set(range(cpus)))
    pipeline.data_workers.cache_clear()
    try:
        assert pipeline.data_workers(requested) == expected
        assert pipeline.data_workers(requested) == expected
    finally:
        pipeline.data_workers.cache_clear()
    assert capsys.readouterr().err.splitlines() == [line]  # once per process


def test_extreme_sizes_and_unicode_paths_go_through_both_pipelines(tmp_path):
    root = tmp_path / "données d'été" / "val"
    save(root / "chat noir" / "1x1 px.png", Image.new("RGB", (1, 1), (9, 9, 9)))
    save(root / "chat noir" / "ünïcode.jpg", Image.new("RGB", (30, 20), (9, 9, 9)))
    save(root / "犬" / "huge.jpg", Image.new("RGB", (8000, 8000), (200, 10, 10)), quality=50)
    folder = folders.scan_image_folder(root)
    assert folder.classes == ["chat noir", "犬"]
    for augmentation in (None, Augmentation()):  # evaluation, training
        images, labels = next(create_dataset(folder, Preprocessing(resize=16), 3, workers=2, augmentation=augmentation,
                                             seed=SEED).create_tuple_iterator(output_numpy=True))
        assert images.shape == (3, 16, 16, 3) and images.dtype == np.uint8 and sorted(labels.tolist()) == [0, 0, 1]


def test_min_crop_area_one_keeps_the_whole_image_and_only_flips(tmp_path):
    pixels = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
    path = save(tmp_path / "a.png", Image.fromarray(pixels))
    whole = DecodedImages([(str(path), 0)] * 64, Preprocessing(resize=28), Augmentation(min_crop_area=1.0), seed=SEED)
    flips = 0
    for key in range(64):
        image = whole.view(0, key)[0][:, :, 0]
        flipped = np.array_equal(image, pixels[:, ::-1])
        assert flipped or np.array_equal(image, pixels), key
        flips += flipped
    assert 16 < flips < 48  # about half flipped
    cropped = DecodedImages([(str(path), 0)] * 8, Preprocessing(resize=28), Augmentation(),
                            seed=SEED)  # default 0.08: real crops
    assert all(cropped.view(0, key)[0].shape == (28, 28, 3) for key in range(8))
    assert sum(np.array_equal(cropped.view(0, key)[0][:, :, 0], pixels) for key in range(8)) <= 1


def test_unreadable_eval_images_are_left_out_not_replaced(tmp_path, capsys):
    from mobilenetv3.evaluation import count_correct
    good = save(tmp_path / "good.png", Image.new("RGB", (8, 8), (5, 6, 7)))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"")
    source = DecodedImages([(str(bad), 0), (str(good), 1)], Preprocessing(resize=8))  # no augmentation: evaluation
    assert source.view(0, 0)[1] == UNREADABLE and source.view(0, 1)[1] == 1
    assert f"skipping unreadable image {bad}" in capsys.readouterr().err
    logits = np.array([[0.0, 1.0], [1.0, 0.0]])
    counts = count_correct(logits, np.array([UNREADABLE, 1]))
    assert (counts.correct1, counts.images) == (0, 1)


def test_training_batches_are_the_same_for_any_worker_count(image_folder):
    folder = folders.scan_image_folder(image_folder / "train")

    def batches(workers):
        dataset = create_dataset(folder, Preprocessing(resize=32), 8, workers=workers, augmentation=Augmentation(),
                                 seed=SEED, first_epoch=3)
        return list(dataset.create_tuple_iterator(output_numpy=True))
    one, two = batches(1), batches(2)  # two: worker processes
    assert len(one) == len(two) == 48 // 8
    for (images_1, labels_1), (images_2, labels_2) in zip(one, two):
        assert np.array_equal(images_1, images_2) and np.array_equal(labels_1, labels_2)


def test_crop_flip_and_erasing_come_from_seed_epoch_and_key(tmp_path):
    """The box, flip and erased rectangle drawn from (seed, epoch, key), cut from the full image (below the
    size at which JPEGs decode reduced), resized by MindSpore's Resize, mirrored, erased to the mean."""
    pixels = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    path = save(tmp_path / "a.png", Image.fromarray(pixels))
    settings = Preprocessing(resize=24)
    source = DecodedImages([(str(path), 0)], settings, Augmentation(random_erase=0.5), seed=7)
    mean_colour = np.round(255 * np.asarray(settings.mean)).astype(np.uint8)
    erased, expected_images = 0, []
    for key in range(20):
        rng = np.random.default_rng([7, 2, key])
        top, left, h, w = random_resized_crop_box(60, 80, rng)
        expected = transforms.resize(np.ascontiguousarray(pixels[top:top + h, left:left + w]), (24, 24), "bilinear")
        expected = np.ascontiguousarray(expected[:, ::-1]) if rng.random() < 0.5 else expected
        if rng.random() < 0.5:
            box = transforms.random_erasing_box(24, 24, rng)
            if box is not None:
                top, left, h, w = box
                expected[top:top + h, left:left + w] = mean_colour
                assert 0.02 * 576 - 24 <= h * w <= 576 / 3 + 24 and h < 24 and w < 24
                erased += 1
        expected_images.append(expected)
    images, labels = source(rows(2, range(20)))  # one batch of epoch 2
    assert images.shape == (20, 24, 24, 3) and labels.tolist() == [0] * 20
    for key, (image, expected) in enumerate(zip(images, expected_images)):
        assert np.array_equal(image, expected), key
    assert 4 <= erased <= 16


def test_random_erasing_comes_after_colour_jitter_as_in_torchvision(tmp_path):
    """Through the pipeline: the erased rectangle keeps the exact mean colour, so colour jitter ran before
    it, as in torchvision's recipe, not after."""
    pixels = np.random.default_rng(6).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    for c in range(2):
        for i in range(4):
            save(tmp_path / "d" / "train" / f"c{c}" / f"{i}.png", Image.fromarray(pixels))
    folder = folders.scan_image_folder(tmp_path / "d" / "train")
    settings = Preprocessing(resize=24)
    images, _ = next(create_dataset(folder, settings, 8, workers=1,
                                    augmentation=Augmentation(random_erase=1.0, color_jitter=0.9), seed=3)
                     .create_tuple_iterator(output_numpy=True))
    mean_colour = np.round(255 * np.asarray(settings.mean)).astype(np.uint8)
    erased = 0
    for image, key in zip(images, EpochSampler(8, shuffle=True, seed=3).indices()):
        rng = np.random.default_rng([3, 0, key])
        random_resized_crop_box(60, 80, rng)
        rng.random()  # the flip
        color_jitter(pixels[:1, :1], 0.9, rng)  # its draws
        rng.random()  # the erasing probability
        box = transforms.random_erasing_box(24, 24, rng)
        if box is not None:
            top, left, h, w = box
            assert np.all(image[top:top + h, left:left + w] == mean_colour), key
            erased += 1
    assert erased >= 6


def test_flip_left_right_mirrors_any_crop():
    pixels = np.random.default_rng(1).integers(0, 256, (9, 13, 3), dtype=np.uint8)
    crop = pixels[2:7, 3:11]
    flipped = transforms.flip_left_right(crop)
    assert flipped.flags.c_contiguous and np.array_equal(flipped, crop[:, ::-1])


def test_large_jpegs_decode_reduced_but_crop_the_same_region(tmp_path):
    """A crop that will shrink 2x or more decodes at 1/2-1/8 scale: after the resize, pixels close to
    those of the full-size crop (smooth image), so the same region."""
    y, x = np.mgrid[0:1200, 0:1600]
    pixels = np.stack([x * 255 // 1600, y * 255 // 1200, (x + y) * 255 // 2800], axis=-1).astype(np.uint8)
    path = save(tmp_path / "big.jpg", Image.fromarray(pixels), quality=95)
    full = read_rgb(path)
    source = DecodedImages([(str(path), 0)], Preprocessing(resize=100), Augmentation(), seed=1)
    reduced = 0
    for key in range(12):
        rng = np.random.default_rng([1, 0, key])
        top, left, h, w = random_resized_crop_box(1200, 1600, rng)
        flip = rng.random() < 0.5
        expected = transforms.resize(np.ascontiguousarray(full[top:top + h, left:left + w]), (100, 100), "bilinear")
        expected = expected[:, ::-1] if flip else expected
        assert np.abs(source.view(0, key)[0].astype(int) - expected).mean() < 3, key
        reduced += decoding.reduction(min(h, w) / 100) > 1
    assert reduced >= 6
    for shrink, shape in ((1.9, (1200, 1600, 3)), (2, (600, 800, 3)), (4.7, (300, 400, 3)), (50, (150, 200, 3))):
        assert read_rgb(path, shrink).shape == shape


@pytest.mark.parametrize("subsampling, mode", [(0, "RGB"), (1, "RGB"), (2, "RGB"), (2, "L")])
def test_jpegs_decode_to_pillows_pixels_at_every_scale(tmp_path, subsampling, mode):
    """libjpeg-turbo through simplejpeg gives Pillow's pixels exactly: what was trained and evaluated
    before it came stays the same."""
    pixels = np.random.default_rng(2).integers(0, 256, (75, 101, 3), dtype=np.uint8)
    smooth = Image.fromarray(pixels).resize((403, 301), Image.BICUBIC).convert(mode)
    path = save(tmp_path / "a.jpg", smooth, quality=85, subsampling=subsampling)
    image = EncodedImage(path)
    assert image.turbo and (image.width, image.height) == (403, 301)
    boxes = [(0, 0, 301, 403), (0, 0, 1, 1), (300, 402, 1, 1), (17, 250, 284, 153), (150, 0, 40, 64)]
    boxes += [random_resized_crop_box(301, 403, np.random.default_rng(k)) for k in range(12)]
    for scale in (1, 2, 4, 8):
        with Image.open(path) as pillow:
            pillow.draft(None, (403 // scale, 301 // scale)) if scale > 1 else None
            expected = np.asarray(pillow.convert("RGB"))
        assert np.array_equal(image.rgb(scale), expected), scale
        # Only the box decoded (jpeg_crop; the fallback when it is unavailable): the same pixels.
        y, x = 301 / expected.shape[0], 403 / expected.shape[1]
        for top, left, h, w in boxes:
            box = expected[round(top / y):round((top + h) / y), round(left / x):round((left + w) / x)]
            assert np.array_equal(image.rgb_box(top, left, h, w, scale), box), (scale, top, left, h, w)


def test_without_the_crop_decoder_whole_jpegs_decode_to_the_same_box(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(jpeg_crop, "_state", {})
    monkeypatch.setenv("CXX", "/nonexistent")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert jpeg_crop.library() is None and jpeg_crop.library() is None
    assert capsys.readouterr().err.splitlines() == [
        "warning: decoding whole JPEGs, not only the crop (the same pixels, slower): no C++ compiler "
        "(/nonexistent not found); install one (apt-get install g++) or set CXX to a C++17 compiler; for "
        "libjpeg-turbo's headers: apt-get install libjpeg-dev"]  # once
    pixels = np.random.default_rng(5).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    image = EncodedImage(save(tmp_path / "a.jpg", Image.fromarray(pixels).resize((160, 120)), quality=90))
    assert np.array_equal(image.rgb_box(10, 20, 50, 60), image.rgb()[10:60, 20:80])


def test_the_crop_decoder_is_wanted_when_any_sample_is_a_jpeg():
    """create_dataset sets up jpeg_crop (building it, or saying why not) only for training data with JPEGs."""
    samples = [("r/a/x.png", 0), ("r/a/y.webp", 0), ("r/b/z.bmp", 1)]
    assert not folders.ImageFolder(Path("r"), ["a", "b"], samples).has_jpegs
    assert folders.ImageFolder(Path("r"), ["a", "b"], samples + [("r/b/w.JPEG", 1)]).has_jpegs
    assert folders.ImageFolder(Path("r"), ["a"], [("r/a/w.jpg", 0)]).has_jpegs


def test_cmyk_and_non_jpeg_files_decode_with_pillow(odd_images):
    for name, (path, _) in odd_images.items():
        assert not EncodedImage(path).turbo, name


def test_damaged_jpegs_raise_never_crash(tmp_path):
    """Truncated at 60 places, 60 with bytes overwritten: each decodes or raises OSError/ValueError (a
    crash would end the test run)."""
    pixels = np.random.default_rng(3).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    path = save(tmp_path / "a.jpg", Image.fromarray(pixels).resize((160, 120)), quality=90)
    blob = path.read_bytes()
    rng = np.random.default_rng(4)
    damaged = [blob[:n] for n in np.linspace(2, len(blob) - 1, 60).astype(int)]
    for _ in range(60):
        broken = bytearray(blob)
        for at in rng.integers(2, len(blob), 8):
            broken[at] = int(rng.integers(0, 256))
        damaged.append(bytes(broken))
    raised = cropped_raised = 0
    for i, content in enumerate(damaged):
        path.write_bytes(content)
        try:
            assert read_rgb(path).shape[2] == 3
        except (OSError, ValueError):
            raised += 1
        if jpeg_crop.library() is not None:  # and decoding only a box of it
            try:
                assert jpeg_crop.decode(content, 1, 50, 60, 70, 90).shape == (70, 90, 3)
            except ValueError:
                cropped_raised += 1
    assert raised >= 60  # every truncation at least
    if jpeg_crop.library() is not None:
        assert cropped_raised >= 60  # the box reaches the last row: every truncation cuts into it
        with pytest.raises(ValueError, match="box 90x70 at .60, 60. outside the 160x120 image"):
            jpeg_crop.decode(blob, 1, 60, 60, 70, 90)


def test_eval_image_is_mindspores_resize_and_centre_crop(tmp_path):
    """eval_image (resize in the worker) gives what MindSpore's Resize + CenterCrop ops gave."""
    from mindspore.dataset import vision
    from mindspore.dataset.transforms import Compose
    rng = np.random.default_rng(5)
    for width, height, resize, crop_pct, interpolation in ((500, 375, 224, 0.875, "bilinear"),
                                                          (333, 517, 32, 0.95, "bicubic"),
                                                          (1, 1, 16, 0.875, "bilinear"),
                                                          (64, 40, 48, 1.0, "bilinear")):
        path = save(tmp_path / f"{width}x{height}.png", Image.fromarray(
            rng.integers(0, 256, (height, width, 3), dtype=np.uint8)))
        settings = Preprocessing(resize=resize, crop_pct=crop_pct, interpolation=interpolation)
        inter = {"bilinear": vision.Inter.BILINEAR, "bicubic": vision.Inter.BICUBIC}[interpolation]
        ops = Compose([vision.Resize(settings.eval_short_side, interpolation=inter), vision.CenterCrop(resize)])
        assert np.array_equal(transforms.eval_image(EncodedImage(path), settings), ops(read_rgb(path))), (width, height)


def test_symlink_loops_list_each_image_once_under_its_own_class(tmp_path, capsys):
    train = tmp_path / "data" / "train"
    for name in ("bag/a.png", "bag/b.png", "cat/c.png"):
        save(train / name, Image.new("RGB", (4, 4)))
    save(tmp_path / "outside" / "d.png", Image.new("RGB", (4, 4)))
    (train / "bag" / "loop").symlink_to("..")  # the loop: back to train/
    (train / "bag" / "root").symlink_to("../../..")  # to an ancestor of the split folder
    (train / "bag" / "alias").symlink_to("../cat")  # another class folder: listed as that class
    (train / "bag" / "extra").symlink_to(tmp_path / "outside")  # a real folder elsewhere: followed once
    (tmp_path / "outside" / "self").symlink_to(".")
    (train / "bag" / "extra2").symlink_to(tmp_path / "outside")  # the same folder again: skipped
    folder = folders.scan_image_folder(train)
    assert [(p.split("/train/")[1], c) for p, c in folder.samples] == \
        [("bag/a.png", 0), ("bag/b.png", 0), ("bag/extra/d.png", 0), ("cat/c.png", 1)]
    warnings = capsys.readouterr().err
    for link in ("bag/loop", "bag/root", "bag/alias", "bag/extra2", "bag/extra/self"):
        assert f"warning: skipping {train / link}: it leads to a directory listed already" in warnings, link


def test_fifo_and_other_non_regular_files_are_skipped_not_read(tmp_path):
    """A FIFO named x.png would block its reader forever: it is named and left out of every listing
    (train, eval and infer list files alike). Run in a child process with a timeout, so a regression
    fails instead of hanging the suite."""
    import subprocess
    import sys
    from conftest import REPO
    root = tmp_path / "data"
    save(root / "val" / "a" / "ok.png", Image.new("RGB", (8, 8), (1, 2, 3)))
    save(root / "val" / "b" / "ok.png", Image.new("RGB", (8, 8), (4, 5, 6)))
    os.mkfifo(root / "val" / "a" / "x.png")
    (root / "val" / "b" / "dangling.jpg").symlink_to(tmp_path / "missing.jpg")
    script = ("from mobilenetv3 import log; log.configure()  # as the scripts do: warnings as 'warning: ...'\n"
              "from mobilenetv3.data import folders, pipeline\n"
              "from mobilenetv3.data.preprocessing import Preprocessing\n"
              f"folder = folders.scan_image_folder(folders.split_dir({str(root)!r}, 'val'))\n"
              "dataset = pipeline.create_dataset(folder, Preprocessing(resize=8), batch_size=2, workers=1)\n"
              "batches = list(dataset.create_tuple_iterator(output_numpy=True))\n"
              "print(len(folder.samples), batches[0][1].tolist())\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[-2] == "2 [0, 1]"
    assert f"warning: skipping {root / 'val' / 'a' / 'x.png'}: not a regular file" in result.stderr
    assert f"warning: skipping {root / 'val' / 'b' / 'dangling.jpg'}: not a regular file" in result.stderr


@pytest.mark.parametrize("workers", [1, 2])
def test_truncated_files_in_the_pipeline_are_named_replaced_or_left_out(tmp_path, capfd, workers):
    """Through the whole pipeline, with worker processes too: a truncated JPEG neither kills the process
    nor stops the run; training gets another image in its place, evaluation labels it UNREADABLE."""
    root = tmp_path / "d" / "val"
    for c in range(2):
        save(root / f"c{c}" / "good.jpg", Image.new("RGB", (40, 30), (10 + c, 20, 30)))
    truncated = root / "c1" / "truncated.jpg"
    truncated.write_bytes((root / "c0" / "good.jpg").read_bytes()[:300])
    folder = folders.scan_image_folder(root)
    preprocessing = Preprocessing(resize=16)
    _, labels = next(create_dataset(folder, preprocessing, 3, workers=workers).create_tuple_iterator(output_numpy=True))
    assert labels.tolist() == [0, 1, UNREADABLE]  # sorted: c0/good, c1/good, c1/truncated
    _, labels = next(create_dataset(folder, preprocessing, 3, workers=workers, augmentation=Augmentation(), seed=SEED)
                     .create_tuple_iterator(output_numpy=True))
    assert sorted(labels.tolist()) == [0, 0, 1]  # the truncated file (key 2) replaced by the next one, c0/good
    assert f"warning: skipping unreadable image {truncated}" in capfd.readouterr().err


def test_pixel_erasing_fills_normal_noise_once_normalised(tmp_path):
    """random_erase_mode pixel (timm's --remode pixel): the same rectangles as const, filled with noise that
    is standard normal after normalisation (but for the uint8 ends, about 2 standard deviations out)."""
    pixels = np.random.default_rng(2).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    path = save(tmp_path / "a.png", Image.fromarray(pixels))
    images = {}
    settings = Preprocessing(resize=64)
    for mode in ("const", "pixel"):
        augmentation = Augmentation(random_erase=1.0, random_erase_mode=mode)
        images[mode] = DecodedImages([(str(path), 0)], settings, augmentation, seed=9)(rows(0, range(8)))[0]
    const_colour = np.round(255 * np.asarray(settings.mean)).astype(np.uint8)
    erased = np.all(images["const"] == const_colour, axis=-1)
    assert erased.sum() > 8 * 0.02 * 64 * 64  # every image erased
    assert np.array_equal(images["const"][~erased], images["pixel"][~erased])  # the rest and the boxes alike
    noise = (images["pixel"][erased] / 255.0 - np.asarray(settings.mean)) / np.asarray(settings.std)
    inside = np.all((images["pixel"][erased] > 0) & (images["pixel"][erased] < 255), axis=-1)
    assert inside.mean() > 0.9 and np.abs(noise.mean(axis=0)).max() < 0.05
    assert np.all(np.abs(noise[inside].std(axis=0) - 0.95) < 0.06)  # a normal cut at about 2.1 sigma


def test_an_augmentation_error_is_not_taken_for_an_unreadable_file(tmp_path, monkeypatch, capsys):
    """Only reading and decoding can make a file count as unreadable (skipped with a warning); an error in
    the augmentation after it is raised as it is."""
    path = save(tmp_path / "a.png", Image.fromarray(np.zeros((20, 20, 3), np.uint8)))

    def broken(*args):
        raise ValueError("augmentation bug")
    monkeypatch.setattr(rand_augment, "apply", broken)
    source = DecodedImages([(str(path), 0)], Preprocessing(resize=16), Augmentation(rand_augment="rand-m9"),
                           seed=SEED)
    with pytest.raises(ValueError, match="augmentation bug"):
        source(rows(0, range(2)))
    assert "unreadable" not in capsys.readouterr().err


def test_only_rank_0_says_how_many_workers(monkeypatch, capsys):
    """Every rank of a machine has the same share; the others print nothing, not even the warning."""
    monkeypatch.setattr(cpu_info.os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "8")
    monkeypatch.setattr(pipeline, "is_main_process", lambda: False)
    pipeline.data_workers.cache_clear()
    try:
        assert (pipeline.data_workers(0), pipeline.data_workers(8)) == (2, 2)
    finally:
        pipeline.data_workers.cache_clear()
    assert capsys.readouterr().err == ""
