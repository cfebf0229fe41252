"""Top-k predictions for every image below a folder, from a checkpoint or an exported MINDIR.

Images go through the eval transforms one by one (decoded with Pillow, so any mode or format
works); files that cannot be read are skipped and reported with the reason, never fatal.
"""
import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import numpy as np

from . import checkpoint, data
from .errors import UserError
from .imagenet import class_names as imagenet_class_names


@dataclass
class Prediction:
    path: str
    indices: List[int]
    names: List[str]
    probs: List[float]


def class_names_for(num_classes: int, saved: Optional[List[str]] = None) -> List[str]:
    """The checkpoint's own class list, else ImageNet's names for 1000 classes, else the indices."""
    if saved and len(saved) == num_classes:
        return list(saved)
    if num_classes == 1000:
        return imagenet_class_names()
    return [str(i) for i in range(num_classes)]


def load_predictor(config) -> Tuple[Callable[[np.ndarray], np.ndarray], List[str]]:
    """(batch of CHW float32 images -> logits, class names) for config.pretrained (.ckpt or .mindir)."""
    import mindspore as ms
    from mindspore import nn
    from .evaluation import mindspore_predictor

    path = config.pretrained
    if not path:
        raise UserError("no model given: pass --pretrained CKPT or an exported .mindir")
    if str(path).lower().endswith(".mindir"):
        if not Path(path).is_file():
            raise UserError(f"MINDIR file {path} not found")
        meta_path = Path(path).with_suffix(".json")
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        net = nn.GraphCell(ms.load(str(path)))
        return mindspore_predictor(net), class_names_for(meta.get("num_classes", config.num_classes),
                                                          meta.get("classes"))
    net, meta = checkpoint.model_from_checkpoint(config)
    return mindspore_predictor(net), class_names_for(net.num_classes, meta.get("classes"))


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def predict_folder(predict, folder, config, class_names: List[str]):
    """(predictions in sorted path order, [(path, reason)] of files skipped)."""
    from mindspore.dataset.transforms import Compose
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"data_url {folder} is not a directory")
    paths = data.list_images(folder)
    if not paths:
        raise UserError(f"{folder} has no image files ({', '.join(sorted(data.IMAGE_EXTENSIONS))})")
    transform = Compose(data.eval_transforms(config))
    predictions, skipped = [], []
    k = min(config.top_k, len(class_names))
    for start in range(0, len(paths), config.batch_size):
        batch, batch_paths = [], []
        for path in paths[start:start + config.batch_size]:
            try:
                batch.append(transform(data.read_rgb(path)))
                batch_paths.append(path)
            except (OSError, ValueError, RuntimeError) as err:
                skipped.append((str(path), f"{type(err).__name__}: {err}"))
        if not batch:
            continue
        probs = softmax(predict(np.stack(batch).astype(np.float32)).astype(np.float64))
        for path, row in zip(batch_paths, probs):
            top = np.argsort(-row, kind="stable")[:k]
            predictions.append(Prediction(str(path), top.tolist(), [class_names[i] for i in top],
                                          [float(row[i]) for i in top]))
    return predictions, skipped


def format_prediction(prediction: Prediction) -> str:
    return f"{prediction.path}: " + ", ".join(f"{name} ({prob:.4f})"
                                              for name, prob in zip(prediction.names, prediction.probs))


def write_predictions(predictions: List[Prediction], path):
    """JSON (a list of records) or CSV (path, then index/name/prob for each rank), by the file's suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps([p.__dict__ for p in predictions], indent=1))
    elif path.suffix.lower() == ".csv":
        k = max((len(p.indices) for p in predictions), default=0)
        with path.open("w", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(["path"] + [f"{field}_{r}" for r in range(1, k + 1) for field in ("index", "name", "prob")])
            for p in predictions:
                writer.writerow([p.path] + [v for r in zip(p.indices, p.names, p.probs) for v in r])
    else:
        raise UserError(f"--output {path}: use a .json or .csv file name")
