"""Image folders -> batched MindSpore datasets of (uint8 NHWC images, int32 labels), training or evaluation.

The pipeline: sample keys as (epoch, key) rows (sampler.RunKeys: every remaining epoch of a training run
in one pipeline; one epoch's in order for evaluation), batched -> the whole batch decoded, cropped,
flipped and resized (DecodedImages) by one of the data workers. One pipeline per run, not per epoch:
its worker processes start once, and in GPU/Ascend sink mode MindSpore keeps the sink network on the
dataset object, so one dataset is one graph compiled. A row per batch, not per image:
MindSpore's Python map costs a fixed time per row (thread hand-overs, queues, shared memory), which per
image was a sizeable share of the image's own work. The keys are batched before the map, so the dataset
reports its batch size (GPU sink mode sets up its queue with it). They come from a one-worker source and
the decoding is a map: a GeneratorDataset source with two or more workers waits for its threads in 100 ms
sleeps (MindSpore 2.10's SamplerFn.process), which made two workers slower than one, and those threads
install MindSpore's own SIGINT/SIGTERM handlers over the trainer's. With two or more workers the decoding
runs in worker processes (the Python around the decoders holds the GIL); MindSpore makes them ignore
SIGINT, so a ^C in a terminal reaches only the training loop.

The images are not normalised here: the network's input is made where the batch lands, on the device in
training (training.train_step.InputNormalization), by transforms.normalize_batch before a predictor; a
quarter of the bytes crosses to the device, and the pipeline's CPUs are spared the work.
"""
import functools
import logging
import math
from typing import List, Optional, Tuple

import numpy as np
from . import rand_augment
from ..cluster.distributed import is_main_process
from ..cluster.launchers import local_ranks
from ..errors import UserError
from ..native import jpeg_crop
from ..native.cpu_info import available_cpus
from .decoding import READ_ERRORS, EncodedImage
from .folders import ImageFolder
from .preprocessing import Preprocessing
from .sampler import EpochSampler, RunKeys, epoch_steps
from .transforms import Augmentation, augmented, cropped, eval_image

logger = logging.getLogger(__name__)
UNREADABLE = -1  # label of an evaluation sample whose file could not be read


class DecodedImages:
    """(epoch, key) -> (uint8 HWC image at the network's size, label); called with a batch of such rows, the
    map function of the pipeline.

    Training (with `augmentation`): the random-resized crop, horizontal flip, RandAugment and erased
    rectangle of each sample are drawn from (seed, epoch, key) alone: MindSpore's random ops draw from
    per-worker generators, so their results depend on which worker gets which row, and neither a resumed
    run nor N ranks could reproduce them. Evaluation: transforms.eval_image. All of an image's work runs
    here, in one worker (the worker count is then the CPU count). A JPEG whose crop (in evaluation: whose
    shorter side) will be shrunk 2x or more decodes at 1/2-1/8 scale; the box is drawn on the full-size
    geometry and cut, scaled, from the smaller image: the same region.
    An unreadable file is reported and, in training, replaced by the next readable one, so every rank
    still runs the same number of steps; in evaluation it yields a black image labelled UNREADABLE,
    which the counts leave out, so no image is counted twice.
    Keys above len(samples) are later passes of a repeated epoch.
    """

    def __init__(self, samples: List[Tuple[str, int]], preprocessing: Preprocessing,
                 augmentation: Optional[Augmentation] = None, seed: int = 0):
        self.samples, self.preprocessing, self.augmentation, self.seed = samples, preprocessing, augmentation, seed
        self.rand_augment = rand_augment.parse(augmentation.rand_augment) \
            if augmentation is not None and augmentation.rand_augment else None

    def __len__(self):
        return len(self.samples)

    def __call__(self, rows: np.ndarray):
        """(uint8 NHWC images, int32 labels) of the (epoch, key) `rows`: one batch."""
        size = self.preprocessing.resize
        images, labels = np.empty((len(rows), size, size, 3), np.uint8), np.empty(len(rows), np.int32)
        for index, (epoch, key) in enumerate(rows.tolist()):
            images[index], labels[index] = self.view(epoch, key)
        return images, labels

    def view(self, epoch: int, key: int):
        """(image, label) of sample `key` in `epoch`."""
        training = self.augmentation is not None
        for offset in range(len(self.samples)):
            path, label = self.samples[(key + offset) % len(self.samples)]
            rng = np.random.default_rng([self.seed, epoch, key]) if training else None
            try:  # only reading and decoding: an error in the augmentation below is not the file's fault
                image = EncodedImage(path)
                decoded = cropped(image, self.preprocessing.resize, self.augmentation.min_crop_area, rng) \
                    if training else eval_image(image, self.preprocessing)
            except READ_ERRORS as err:
                warn_unreadable(path, err)
                if not training:
                    size = self.preprocessing.resize
                    return np.zeros((size, size, 3), np.uint8), np.int32(UNREADABLE)
                continue
            if training:
                decoded = augmented(*decoded, self.preprocessing, self.augmentation, rng, self.rand_augment)
            return decoded, np.int32(label)
        raise UserError("no readable image in the data set")


def warn_unreadable(path, err):
    logger.warning(f"skipping unreadable image {path}: {type(err).__name__}: {err}")


@functools.lru_cache(maxsize=None)
def data_workers(requested: int) -> int:
    """Data workers of this process: `requested`, or for 0 its share of the CPUs (those available, divided
    among the job's processes on this machine), and never more than that share. Said once, by rank 0 (every
    rank of a machine has the same share)."""
    available = available_cpus()
    ranks = local_ranks()
    share = max(1, available // ranks)
    where = f"{available} CPUs available" + (f" / {ranks} processes on this machine" if ranks > 1 else "")
    workers = min(requested, share) or share
    if is_main_process() and requested > share:
        logger.warning(f"num_parallel_workers {requested} > {share} CPUs for this process ({where}); using {share}")
    elif is_main_process():
        logger.info(f"data pipeline: {workers} worker{'s' if workers > 1 else ''} per process "
                    f"({'num_parallel_workers' if requested else 'its share of the CPUs'}; {where})")
    return workers


def training_steps(folder: ImageFolder, batch_size: int, repeats: int = 1, num_shards: int = 1) -> int:
    """Steps of a training epoch over `folder` (sampler.epoch_steps); a UserError if not one batch fits."""
    steps = epoch_steps(len(folder.samples), batch_size, repeats, num_shards)
    if steps == 0:
        per_process = math.ceil(len(folder.samples) * repeats / num_shards)
        raise UserError(f"batch_size {batch_size} is larger than the {per_process} training images per process in "
                        f"{folder.root}; lower --batch_size")
    return steps


def create_dataset(folder: ImageFolder, preprocessing: Preprocessing, batch_size: int, workers: int = 0,
                   augmentation: Optional[Augmentation] = None, seed: int = 0, first_epoch: int = 0, epochs: int = 1,
                   skip_steps: int = 0, repeats: int = 1, num_shards: int = 1, shard_id: int = 0):
    """Batched dataset of (uint8 NHWC images, int32 labels) of `folder` for one rank, with data_workers(workers)
    workers.

    With `augmentation`, training: `epochs` epochs from `first_epoch` (counted from 0) in one pipeline, the
    first one's first `skip_steps` batches left out; each epoch `repeats` passes shuffled by (seed, epoch),
    shards padded to the same length, its last short batch dropped, random views drawn from (seed, epoch,
    key) (sampler.RunKeys). Without, an evaluation: every image once, in order, eval views."""
    import mindspore.dataset as ds
    training = augmentation is not None
    if training:
        training_steps(folder, batch_size, repeats, num_shards)
        source = RunKeys(len(folder.samples), batch_size, first_epoch, epochs, skip_steps, seed, repeats, num_shards,
                         shard_id)
        keys = ds.GeneratorDataset(source, column_names=["keys"], shuffle=False, num_parallel_workers=1,
                                   python_multiprocessing=False)
    else:
        order = EpochSampler(len(folder.samples), False, num_shards=num_shards, shard_id=shard_id, pad=False).indices()
        keys = ds.NumpySlicesDataset({"keys": np.stack([np.zeros_like(order), order], axis=1)}, shuffle=False)
    workers = data_workers(workers)
    if training and folder.has_jpegs:
        jpeg_crop.library(say_why=is_main_process())  # decided before the workers start: they inherit it
    decode = DecodedImages(folder.samples, preprocessing, augmentation, seed)
    return keys.batch(batch_size, drop_remainder=training).map(
        decode, input_columns="keys", output_columns=["image", "label"], num_parallel_workers=workers,
        python_multiprocessing=workers > 1)
