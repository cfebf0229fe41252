"""ImageNet-layout folders -> MindSpore datasets with the standard train and eval transforms.

Layout: DIR/train/<class>/... and DIR/val/<class>/..., or DIR itself a tree of class folders.
Class indices follow the sorted class-folder names, as torchvision's ImageFolder does.

Images are decoded in Python (EncodedImage: libjpeg-turbo through simplejpeg for JPEGs, Pillow for the
rest), not with MindSpore's Decode: MindSpore 2.10's JPEG decoder kills the process (SIGFPE/SIGSEGV) on
truncated or corrupt files, which no error-samples mode can catch. These raise instead, so a bad file is
skipped with a warning naming it; Pillow also reads every mode (CMYK, palette, RGBA, 16-bit, WebP) into
3-channel RGB. Resizing and the other transforms run in MindSpore's C++ vision ops, on uint8 pixels;
normalising them is left to where the batch lands (create_dataset).

The pipeline: the sample keys of one epoch (EpochSampler), batched -> the whole batch decoded, cropped,
flipped and resized (DecodedImages) by one of `num_parallel_workers` workers. A row per batch, not per
image: MindSpore's Python map costs a fixed time per row (thread hand-overs, queues, shared memory),
which per image was a sizeable share of the image's own work. The keys are batched before the map, so
the dataset reports its batch size (GPU sink mode sets up its queue with it). They come from a
one-worker source and the decoding is a map: a GeneratorDataset source with two or more workers waits
for its threads in 100 ms sleeps (MindSpore 2.10's SamplerFn.process), which made two workers slower
than one, and those threads install MindSpore's own SIGINT/SIGTERM handlers over the trainer's. With two
or more workers the decoding runs in worker processes (the Python around the decoders holds the GIL);
MindSpore makes them ignore SIGINT, so a ^C in a terminal reaches only the training loop.
"""
import functools
import io
import math
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import simplejpeg
from PIL import Image

from . import jpeg_crop, rand_augment
from .cpu_info import available_cpus
from .errors import UserError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
UNREADABLE = -1  # label of an evaluation sample whose file could not be read


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
                print(f"warning: skipping {path}: it leads to a directory listed already (a link loop?)",
                      file=sys.stderr)
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
                print(f"warning: skipping {path}: not a regular file", file=sys.stderr)
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
            print(f"warning: class folder {directory / name} has no images", file=sys.stderr)
        samples.extend((str(path), index) for path in images)
    if not samples:
        raise UserError(f"{directory} has no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return ImageFolder(directory, found, samples)


def rgb(image: Image.Image) -> Image.Image:
    """An opened image, loaded and converted to RGB; raises OSError/ValueError on bad files."""
    image.load()
    if image.mode in ("I", "I;16", "I;16B", "I;16L"):  # 16-bit grayscale: keep the top 8 bits
        image = Image.fromarray((np.asarray(image, dtype=np.uint32) >> 8).astype(np.uint8))
    return image if image.mode == "RGB" else image.convert("RGB")


def reduction(shrink: float) -> int:
    """The DCT scaling (1, 2, 4 or 8) a JPEG may decode at when its pixels will be shrunk `shrink` times."""
    return next((s for s in (8, 4, 2) if s <= shrink), 1)


class EncodedImage:
    """An image file's bytes, its size, and its pixels decoded to RGB.

    JPEGs in YCbCr or grayscale (nearly every photo) decode with libjpeg-turbo through simplejpeg, which
    writes straight into a numpy array without holding the GIL, faster than Pillow and to the same pixels
    (both are libjpeg-turbo with the same settings; tests/test_data.py compares them). Every other file,
    and any JPEG simplejpeg refuses, goes to Pillow, which reads some files libjpeg-turbo's strict mode
    refuses and names the fault of those it cannot read either.
    """

    def __init__(self, path):
        with open(path, "rb") as file:
            self.blob = file.read()
        try:
            height, width, colorspace, _ = simplejpeg.decode_jpeg_header(self.blob)
            self.turbo = colorspace in ("YCbCr", "Gray")  # Pillow's CMYK conversion is its own
        except ValueError:
            self.turbo = False
            with Image.open(io.BytesIO(self.blob)) as image:
                width, height = image.size
        self.width, self.height = width, height

    def rgb_box(self, top: int, left: int, height: int, width: int, shrink: float = 1.0) -> np.ndarray:
        """rgb(shrink) cut to the box (full-size coordinates, scaled as the image is). A JPEG that simplejpeg
        would decode has only the box decoded (jpeg_crop), when that library is available."""
        if self.turbo and jpeg_crop.library() is not None:
            scale = reduction(shrink)
            top_row, end_row, left_column, end_column = self._box_in(
                (-(-self.height // scale), -(-self.width // scale)), top, left, height, width)  # libjpeg's sides
            try:
                return jpeg_crop.decode(self.blob, scale, top_row, left_column, end_row - top_row,
                                        end_column - left_column)
            except ValueError:
                pass  # as rgb(): Pillow reads some files libjpeg-turbo's strict mode refuses, or says why not
        pixels = self.rgb(shrink)
        top_row, end_row, left_column, end_column = self._box_in(pixels.shape[:2], top, left, height, width)
        return np.ascontiguousarray(pixels[top_row:end_row, left_column:end_column])

    def _box_in(self, size, top, left, height, width) -> Tuple[int, int, int, int]:
        """(first row, end row, first column, end column) of the box in this image decoded to `size`."""
        y, x = self.height / size[0], self.width / size[1]
        return round(top / y), round((top + height) / y), round(left / x), round((left + width) / x)

    def rgb(self, shrink: float = 1.0) -> np.ndarray:
        """RGB uint8 HWC pixels; a JPEG whose pixels will be shrunk at least 2, 4 or 8 times afterwards
        decodes at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling; sides rounded up)."""
        scale = reduction(shrink)
        if self.turbo:
            try:
                return simplejpeg.decode_jpeg(self.blob, min_height=-(-self.height // scale),
                                              min_width=-(-self.width // scale))
            except ValueError:
                pass
        with Image.open(io.BytesIO(self.blob)) as image:
            if scale > 1 and image.format == "JPEG":
                image.draft(None, (self.width // scale, self.height // scale))
            return np.asarray(rgb(image))


def flip_left_right(pixels: np.ndarray) -> np.ndarray:
    """A contiguous mirror image of HWC uint8 `pixels`, copied as 3-byte items: numpy's reversed-stride
    copy goes byte by byte, several times slower."""
    height, width, channels = pixels.shape
    items = np.ascontiguousarray(pixels).view(f"V{channels}")[:, ::-1, 0]
    return np.ascontiguousarray(items).view(np.uint8).reshape(height, width, channels)


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
    """Key -> (uint8 HWC image at the network's size, label); called with a batch of keys, the map
    function of the pipeline.

    Training: the random-resized crop, horizontal flip, RandAugment (rand_augment) and (random_erase > 0)
    erased rectangle of each sample are drawn from (seed, epoch, key) alone: MindSpore's random ops draw
    from per-worker generators, so their results depend on which worker gets which row, and neither a
    resumed run nor N ranks could reproduce them. Evaluation: shorter side to resize / crop_pct, centre
    crop (eval_image). Resizing (and AutoAugment and colour jitter, augmentation_ops) runs in MindSpore's C++ ops, called
    here so that all of an image's work is one worker's (the worker count is then the CPU count). A JPEG
    whose crop (in evaluation: whose shorter side) will be shrunk 2x or more decodes at 1/2-1/8 scale;
    the box is drawn on the full-size geometry and cut, scaled, from the smaller image: the same region.
    An unreadable file is reported and, in training, replaced by the next readable one, so every rank
    still runs the same number of steps; in evaluation it yields a black image labelled UNREADABLE,
    which the counts leave out, so no image is counted twice.
    Keys above len(samples) are later passes of a repeated epoch.
    """

    def __init__(self, samples: List[Tuple[str, int]], config, training: bool, epoch=0):
        self.samples, self.config, self.training, self.epoch = samples, config, training, epoch
        self.rand_augment = rand_augment.parse(config.rand_augment) if config.rand_augment else None

    def __len__(self):
        return len(self.samples)

    def __call__(self, keys: np.ndarray):
        """(uint8 NHWC images, int32 labels) of the samples `keys`: one batch."""
        size = self.config.resize
        images, labels = np.empty((len(keys), size, size, 3), np.uint8), np.empty(len(keys), np.int32)
        for row, key in enumerate(keys.tolist()):
            images[row], labels[row] = self[key]
        return images, labels

    def __getitem__(self, key):
        for offset in range(len(self.samples)):
            path, label = self.samples[(key + offset) % len(self.samples)]
            try:  # only reading and decoding: an error in the augmentation below is not the file's fault
                image = EncodedImage(path)
                decoded = self.cropped(image, key) if self.training else eval_image(image, self.config)
            except (OSError, ValueError, RuntimeError, Image.DecompressionBombError) as err:
                warn_unreadable(path, err)
                if not self.training:
                    size = self.config.resize
                    return np.zeros((size, size, 3), np.uint8), np.int32(UNREADABLE)
                continue
            return (self.augmented(*decoded) if self.training else decoded), np.int32(label)
        raise UserError("no readable image in the data set")

    def cropped(self, image: "EncodedImage", key) -> tuple:
        """(the random-resized crop of the image decoded, the image's generator, whether to flip): the part
        of a training view that reads the file, its draws from (seed, epoch, key)."""
        config = self.config
        rng = np.random.default_rng([config.seed, self.epoch, key])
        top, left, h, w = random_resized_crop_box(image.height, image.width, rng, scale=(config.min_crop_area, 1.0))
        flip = rng.random() < 0.5
        return image.rgb_box(top, left, h, w, min(h, w) / config.resize), rng, flip

    def augmented(self, crop: np.ndarray, rng: np.random.Generator, flip: bool) -> np.ndarray:
        """The training view of a decoded crop: resized, flipped, augmented and erased, drawing on from `rng`."""
        config = self.config
        out = resize(crop, (config.resize, config.resize), config.interpolation)
        if flip:
            out = flip_left_right(out)
        if self.rand_augment is not None:
            out = rand_augment.apply(out, self.rand_augment, mean_colour(config), rng)
        for op in augmentation_ops(config.auto_augment, config.color_jitter, config.interpolation):
            out = op(out)
        if config.random_erase > 0 and rng.random() < config.random_erase:
            box = random_erasing_box(config.resize, config.resize, rng)
            if box is not None:
                top, left, h, w = box
                out[top:top + h, left:left + w] = erasure(h, w, config, rng)
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


def erasure(height, width, config, rng) -> np.ndarray:
    """The uint8 pixels an erased rectangle gets (config.random_erase_mode): the mean colour, 0 once
    normalised (torchvision's default); or normal noise once normalised (timm's "pixel"), rounded to uint8
    and so cut at the ends of the pixel range (about 2 standard deviations with ImageNet's mean and std)."""
    if config.random_erase_mode == "pixel":
        noise = np.asarray(config.mean) + np.asarray(config.std) * rng.standard_normal((height, width, 3))
        return np.clip(np.round(255 * noise), 0, 255).astype(np.uint8)
    return np.asarray(mean_colour(config), np.uint8)


def mean_colour(config) -> tuple:
    """The RGB uint8 colour that normalises to 0."""
    return tuple(int(value) for value in np.round(255 * np.asarray(config.mean)))


@functools.lru_cache(maxsize=None)
def _resize_op(size, interpolation: str):
    from mindspore.dataset import vision
    return vision.Resize(size, interpolation=_interpolation(interpolation))


def resize(pixels: np.ndarray, size, interpolation: str) -> np.ndarray:
    """MindSpore's C++ Resize of uint8 HWC `pixels`: to (height, width), or an int for the shorter side."""
    return _resize_op(size, interpolation)(pixels)


def eval_image(image: "EncodedImage", config) -> np.ndarray:
    """The evaluation view of an image, uint8 HWC: shorter side to resize / crop_pct (256 for 224), centre
    crop resize x resize; a JPEG that will be shrunk 2x or more decodes reduced."""
    short_side = eval_short_side(config)
    pixels = resize(image.rgb(min(image.width, image.height) / short_side), short_side, config.interpolation)
    height, width, _ = pixels.shape
    size = config.resize
    top, left = (height - size) // 2, (width - size) // 2  # as MindSpore's CenterCrop
    return np.ascontiguousarray(pixels[top:top + size, left:left + size])


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


# How launchers tell a process how many processes of its job run on the same machine.
LOCAL_RANKS_VARIABLES = ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "LOCAL_WORLD_SIZE")


def local_ranks(environ=None) -> int:
    """Processes of this job on this machine (1 without a launcher that says)."""
    environ = os.environ if environ is None else environ
    return next((int(environ[name]) for name in LOCAL_RANKS_VARIABLES if environ.get(name, "").isdigit()), 1)


@functools.lru_cache(maxsize=None)
def data_workers(requested: int) -> int:
    """Data workers of this process: `requested`, or for 0 its share of the CPUs (those available, divided
    among the job's processes on this machine), and never more than that share. Said once per process."""
    from .distributed import is_main_process
    available = available_cpus()
    ranks = local_ranks()
    share = max(1, available // ranks)
    where = f"{available} CPUs available" + (f" / {ranks} processes on this machine" if ranks > 1 else "")
    if requested > share:
        print(f"warning: num_parallel_workers {requested} > {share} CPUs for this process ({where}); "
              f"using {share}", file=sys.stderr)
    elif is_main_process():
        workers = requested or share
        print(f"data pipeline: {workers} worker{'s' if workers > 1 else ''} per process "
              f"({'num_parallel_workers' if requested else 'its share of the CPUs'}; {where})", file=sys.stderr)
    return min(requested, share) or share


def _interpolation(name: str):
    from mindspore.dataset.vision import Inter
    return {"bilinear": Inter.BILINEAR, "bicubic": Inter.BICUBIC}[name]


def normalize_batch(images: np.ndarray, config) -> np.ndarray:
    """The network's input from a batch of the pipeline: uint8 NHWC -> float32 NCHW (pixel - 255 mean) /
    (255 std) per channel. InputNormalization (trainer) computes the same on the device."""
    shift, scale = normalization(config)
    count, height, width, channels = images.shape
    out = np.empty((count, channels, height, width), np.float32)
    for channel in range(channels):  # a channel at a time: no float32 NHWC temporary
        np.subtract(images[..., channel], shift[channel], out=out[:, channel], dtype=np.float32)
        out[:, channel] *= scale[channel]
    return out


def normalization(config) -> Tuple[np.ndarray, np.ndarray]:
    """(255 mean, 1 / (255 std)) per channel, float32: a network input is (pixel - shift) * scale."""
    return (np.float32(255) * np.asarray(config.mean, np.float32),
            np.float32(1) / (np.float32(255) * np.asarray(config.std, np.float32)))


@functools.lru_cache(maxsize=None)
def augmentation_ops(auto_augment: bool, color_jitter: float, interpolation: str) -> tuple:
    """MindSpore's C++ AutoAugment and colour jitter when the config asks for them, on uint8 HWC images,
    called by DecodedImages after the flip and before random erasing, torchvision's order. They draw from
    MindSpore's per-worker generators: unlike crop, flip and erasing, not reproducible across worker counts."""
    from mindspore.dataset import vision
    ops = []
    if auto_augment:
        ops.append(vision.AutoAugment(vision.AutoAugmentPolicy.IMAGENET, interpolation=_interpolation(interpolation)))
    if color_jitter > 0:
        ops.append(vision.RandomColorAdjust(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter))
    return tuple(ops)


def eval_short_side(config) -> int:
    return int(config.resize / config.crop_pct)


def create_dataset(folder: ImageFolder, config, training: bool, num_shards=1, shard_id=0, epoch=0):
    """Batched dataset of (uint8 NHWC images, int32 labels) for one rank and one epoch. The images are
    not normalised: the network's input is made where the batch lands, on the device in training
    (trainer.InputNormalization), by normalize_batch before a predictor; a quarter of the bytes crosses
    to the device, and the pipeline's CPUs are spared the work."""
    import mindspore.dataset as ds
    sampler = EpochSampler(len(folder.samples), shuffle=training, seed=config.seed, epoch=epoch,
                           repeats=config.repeat_num if training else 1, num_shards=num_shards, shard_id=shard_id,
                           pad=training)
    if training and len(sampler) < config.batch_size:
        raise UserError(f"batch_size {config.batch_size} is larger than the {len(sampler)} training images per "
                        f"process in {folder.root}; lower --batch_size")
    workers = data_workers(config.num_parallel_workers)
    if training and folder.has_jpegs:
        from .distributed import is_main_process
        jpeg_crop.library(say_why=is_main_process())  # decided before the workers start: they inherit it
    decode = DecodedImages(folder.samples, config, training, epoch)
    keys = ds.NumpySlicesDataset({"keys": sampler.indices()}, shuffle=False).batch(config.batch_size,
                                                                                  drop_remainder=training)
    return keys.map(decode, input_columns="keys", output_columns=["image", "label"], num_parallel_workers=workers,
                    python_multiprocessing=workers > 1)
