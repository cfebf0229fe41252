"""Top-1/Top-5 accuracy, mean cross-entropy, per-class accuracy and the confusion matrix over a labelled
folder, exact across ranks.

Each rank evaluates its own shard (no padding: no image is counted twice) and the integer counts are
summed across ranks at the end, so N processes print exactly what one process prints.
With fewer than 5 classes, "Top-5" means top-`num_classes`, which is always 1.0.
"""
import math
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np

from .data import flat_folder, imagenet
from .data.folders import scan_image_folder, split_dir
from .data.pipeline import UNREADABLE, create_dataset
from .data.preprocessing import Preprocessing
from .data.transforms import normalize_batch
from .cluster.distributed import all_reduce_sum
from .errors import UserError
from .progress import progress

# Top-1 within this many standard errors of chance is reported as chance level (see chance_level_warning).
CHANCE_MARGIN = 3


@dataclass
class Counts:
    """What an evaluation counts; the integers are exact sums over batches and ranks."""
    confusion: np.ndarray  # int64 [true class, Top-1 predicted class]: images
    top5: np.ndarray  # int64 per true class: images whose class is among their 5 highest scores
    loss_sum: float  # summed cross-entropy

    @classmethod
    def zeros(cls, num_classes: int) -> "Counts":
        return cls(np.zeros((num_classes, num_classes), np.int64), np.zeros(num_classes, np.int64), 0.0)

    def __add__(self, other: "Counts") -> "Counts":
        return Counts(self.confusion + other.confusion, self.top5 + other.top5, self.loss_sum + other.loss_sum)

    @property
    def correct1(self) -> int:
        return int(np.trace(self.confusion))

    @property
    def correct5(self) -> int:
        return int(self.top5.sum())

    @property
    def images(self) -> int:
        return int(self.confusion.sum())


@dataclass
class Metrics:
    top1: float
    top5: float
    loss: float
    images: int
    classes: List[str]  # the class list labels index, which names the rows and columns of `confusion`
    confusion: np.ndarray  # [true class, Top-1 predicted class]: images
    top5_per_class: np.ndarray  # per true class: images whose class is among their 5 highest scores

    def seed_dict(self) -> dict:
        """The seed's printed form: {'Top_1_Accuracy': ..., 'Top_5_Accuracy': ...}."""
        return {"Top_1_Accuracy": self.top1, "Top_5_Accuracy": self.top5}

    def as_dict(self) -> dict:
        """The figures, then per class (in index order) its images, the images predicted (Top-1) as it and
        its accuracies (None without images), then the confusion matrix: row i the images of class i,
        column j those of them predicted (Top-1) as class j."""
        per_class = []
        for i, (name, readable) in enumerate(zip(self.classes, imagenet.display_names(self.classes))):
            images = int(self.confusion[i].sum())
            per_class.append(dict(
                **{"class": name, "name": readable}, images=images, predicted=int(self.confusion[:, i].sum()),
                top1=int(self.confusion[i, i]) / images if images else None,
                top5=int(self.top5_per_class[i]) / images if images else None))
        return dict(top1=self.top1, top5=self.top5, loss=self.loss, images=self.images, per_class=per_class,
                    confusion_matrix=self.confusion.tolist())


def count_correct(logits: np.ndarray, labels: np.ndarray) -> Counts:
    """The Counts of one batch, over the classes of the logits' columns.

    Equal logits rank the lower class index first (a stable sort), so a row of ties is top-1 correct
    for class 0 only, never for all classes at once. Rows labelled UNREADABLE (unreadable files) are left out.
    """
    num_classes = logits.shape[1]
    readable = labels != UNREADABLE
    logits, labels = logits[readable].astype(np.float64), labels[readable].astype(np.int64)
    k = min(5, num_classes)
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    confusion = np.bincount(labels * num_classes + top[:, 0], minlength=num_classes ** 2)
    top5 = np.bincount(labels[(top == labels[:, None]).any(axis=1)], minlength=num_classes)
    return Counts(confusion.reshape(num_classes, num_classes).astype(np.int64), top5.astype(np.int64),
                  float(-log_probs[np.arange(len(labels)), labels].sum()))


def evaluate(predict, dataset, classes: List[str], dist=None, source="the data set") -> Metrics:
    """`predict(images) -> logits` (numpy) over every batch of `dataset`, whose labels index `classes`;
    counts summed across ranks. `source` names the data in the error raised when not one image of it
    could be read."""
    totals = Counts.zeros(len(classes))
    batches = dataset.create_tuple_iterator(num_epochs=1, output_numpy=True)
    for images, labels in progress(batches, dataset.get_dataset_size(), "batch", enabled=dist is None or dist.rank == 0):
        logits = predict(images)
        if logits.shape[1] != len(classes):
            raise UserError(f"the model gives {logits.shape[1]} class scores, but {source} has {len(classes)} "
                            f"classes; pass --num_classes {logits.shape[1]} or the model of these classes")
        totals += count_correct(logits, labels)
    if dist is not None and dist.size > 1:
        integers = all_reduce_sum(np.concatenate([totals.confusion.ravel(), totals.top5]))
        totals = Counts(integers[:-len(classes)].reshape(totals.confusion.shape), integers[-len(classes):],
                        float(all_reduce_sum(np.array([totals.loss_sum]))[0]))
    images = totals.images
    if images == 0:
        raise UserError(f"none of the images in {source} could be read (see the warnings above): nothing to evaluate")
    return Metrics(totals.correct1 / images, totals.correct5 / images, totals.loss_sum / images, images,
                   list(classes), totals.confusion, totals.top5)


def chance_level_warning(metrics: Metrics) -> Optional[str]:
    """A warning line when Top-1 is not clearly better than guessing, else None.

    Guessing one of K classes is right with probability p = 1/K; over n images its accuracy has the
    standard error sqrt(p (1 - p) / n). Top-1 at most CHANCE_MARGIN standard errors above p (or below
    it) is reported: a sign of labels that do not belong to the images, not of a weak model. With one
    class there is nothing to guess.
    """
    num_classes = len(metrics.classes)
    if num_classes < 2:
        return None
    chance = 1 / num_classes
    threshold = chance + CHANCE_MARGIN * math.sqrt(chance * (1 - chance) / metrics.images)
    if metrics.top1 > threshold:
        return None
    return (f"warning: Top-1 accuracy {metrics.top1:.4f} is at chance level for {num_classes} classes (1/{num_classes} = "
            f"{chance:.4f}; not {CHANCE_MARGIN} standard errors above it over {metrics.images} images): check that the "
            "labels are not shifted, that their classes are in the model's order and that the preprocessing is the "
            "model's")


def mindspore_predictor(net):
    """Eval-mode forward of a Cell (or GraphCell) on numpy batches."""
    import mindspore as ms
    net.set_train(False)
    return lambda images: net(ms.Tensor(images)).asnumpy()


def evaluate_folder(predict, num_classes: int, data_url, preprocessing: Preprocessing, batch_size: int,
                    workers: int = 0, classes=None, dist=None, val_labels=None, val_synsets=None) -> Metrics:
    """Evaluate `predict(images) -> logits` (e.g. from deploy.inference.load_model) of a model with
    `num_classes` classes on the val split of `data_url` (or the class-folder tree itself), or with
    `val_labels` on the flat folder `data_url` labelled by that file (see data/flat_folder.py), with
    `workers` data workers (0: this process's share of the CPUs).

    `classes` (the model's own list, if it has one) must equal the sorted class-folder names, so label i
    means the same class to the data and to the model; a labels file names classes of that list.
    """
    if val_labels:
        if not data_url:
            raise UserError("data_url is not set: with --val_labels, pass --data_url FOLDER, the folder of the images")
        folder = flat_folder.scan_labelled_folder(Path(data_url), val_labels,
                                                  imagenet.model_classes(num_classes, classes), val_synsets)
    else:
        folder = scan_image_folder(split_dir(data_url, "val"), classes)
    if len(folder.classes) != num_classes:  # checkpoints from elsewhere carry no class list to compare
        raise UserError(f"{folder.root} has {len(folder.classes)} class folders but the model has {num_classes} "
                        "classes; evaluate on a folder with one subfolder per class of the model")
    dataset = create_dataset(folder, preprocessing, batch_size, workers, num_shards=dist.size if dist else 1,
                             shard_id=dist.rank if dist else 0)
    return evaluate(lambda images: predict(normalize_batch(images, preprocessing)), dataset, folder.classes, dist,
                    source=str(folder.root))
