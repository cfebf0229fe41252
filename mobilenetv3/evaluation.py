"""Top-1/Top-5 accuracy and mean cross-entropy over a labelled folder, exact across ranks.

Each rank evaluates its own shard (no padding: no image is counted twice) and the integer counts are
summed across ranks at the end, so N processes print exactly what one process prints.
With fewer than 5 classes, "Top-5" means top-`num_classes`, which is always 1.0.
"""
from dataclasses import asdict, dataclass

import numpy as np

from . import data
from .errors import UserError
from .progress import progress


@dataclass
class Metrics:
    top1: float
    top5: float
    loss: float
    images: int

    def seed_dict(self) -> dict:
        """The seed's printed form: {'Top_1_Accuracy': ..., 'Top_5_Accuracy': ...}."""
        return {"Top_1_Accuracy": self.top1, "Top_5_Accuracy": self.top5}

    def as_dict(self) -> dict:
        return asdict(self)


def count_correct(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """[top-1 correct, top-5 correct, summed cross-entropy, images] of one batch, in float64.

    Equal logits rank the lower class index first (a stable sort), so a row of ties is top-1 correct
    for class 0 only, never for all classes at once. Rows labelled data.UNREADABLE are left out.
    """
    readable = labels != data.UNREADABLE
    logits, labels = logits[readable].astype(np.float64), labels[readable]
    k = min(5, logits.shape[1])
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return np.array([(top[:, 0] == labels).sum(), (top == labels[:, None]).any(axis=1).sum(),
                     -log_probs[np.arange(len(labels)), labels].sum(), len(labels)], dtype=np.float64)


def evaluate(predict, dataset, dist=None, source="the data set") -> Metrics:
    """`predict(images) -> logits` (numpy) over every batch of `dataset`; counts summed across ranks.
    `source` names the data in the error raised when not one image of it could be read."""
    totals = np.zeros(4, dtype=np.float64)
    batches = dataset.create_tuple_iterator(num_epochs=1, output_numpy=True)
    for images, labels in progress(batches, dataset.get_dataset_size(), "batch", enabled=dist is None or dist.rank == 0):
        totals += count_correct(predict(images), labels)
    if dist is not None and dist.size > 1:
        from .distributed import all_reduce_sum
        totals = all_reduce_sum(totals)
    correct1, correct5, loss_sum, images = totals
    if images == 0:
        raise UserError(f"none of the images in {source} could be read (see the warnings above): nothing to evaluate")
    return Metrics(correct1 / images, correct5 / images, loss_sum / images, int(images))


def mindspore_predictor(net):
    """Eval-mode forward of a Cell (or GraphCell) on numpy batches."""
    import mindspore as ms
    net.set_train(False)
    return lambda images: net(ms.Tensor(images)).asnumpy()


def evaluate_folder(predict, num_classes: int, config, classes=None, dist=None) -> Metrics:
    """Evaluate `predict(images) -> logits` (e.g. from inference.load_model) of a model with `num_classes`
    classes on the val split of config.data_url (or the class-folder tree itself).

    `classes` (the model's own list, if it has one) must equal the sorted class-folder names, so label i
    means the same class to the data and to the model.
    """
    folder = data.scan_image_folder(data.split_dir(config.data_url, "val"), classes)
    if len(folder.classes) != num_classes:  # checkpoints from elsewhere carry no class list to compare
        raise UserError(f"{folder.root} has {len(folder.classes)} class folders but the model has {num_classes} "
                        "classes; evaluate on a folder with one subfolder per class of the model")
    dataset = data.create_dataset(folder, config, training=False, num_shards=dist.size if dist else 1,
                                  shard_id=dist.rank if dist else 0)
    return evaluate(predict, dataset, dist, source=str(folder.root))
