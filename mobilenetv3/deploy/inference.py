"""Top-k predictions for an image file or every image below a folder (predict_images), or for one image in
Python (Classifier), from a checkpoint or an exported MINDIR or ONNX file, run by MindSpore, by ONNX Runtime
(onnx_backend.py) or by OpenVINO (openvino_backend.py).

Images go through the eval transforms one by one (decoded with Pillow, so any mode or format
works); files that cannot be read are skipped and reported with the reason, never fatal.
"""
import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Collection, List, Optional, Tuple

import mindspore as ms
import numpy as np
from PIL import Image

from ..checkpoints.meta import NETWORK_KEYS, flagged
from ..cluster.device import set_cpu_threads
from ..data.decoding import READ_ERRORS, EncodedImage, PillowImage
from ..data.folders import images_of_folder
from ..data.imagenet import display_names, model_classes
from ..data.preprocessing import Preprocessing, resolve
from ..data.transforms import eval_image, normalize_batch
from ..errors import UserError
from ..evaluation import mindspore_predictor
from ..models.factory import model_from_checkpoint
from ..models.folding import fold_for_inference
from ..progress import progress
from . import export
from .onnx_backend import onnx_model
from .openvino_backend import openvino_model
from ..atomic import written_whole


@dataclass
class Prediction:
    path: str
    indices: List[int]
    names: List[str]
    probs: List[float]


# suffix -> (format, the backends that run it, the first when --backend is not a flag)
EXPORTED_FORMATS = {".mindir": ("MINDIR", ("mindspore",)), ".onnx": ("ONNX", ("onnxruntime", "openvino"))}


def engine_of(path, backend: str, flags: Collection[str] = ()) -> str:
    """The backend that runs the model file `path`: `backend`, or an exported file's own engine when `backend`
    cannot run it and is not a flag (the first of EXPORTED_FORMATS')."""
    file_format, own_backends = EXPORTED_FORMATS.get(Path(path).suffix.lower(), (None, (backend,)))
    if backend in own_backends:
        return backend
    if "backend" in flags:
        raise UserError(f"{path} is an exported {file_format} model: run it with "
                        f"{' or '.join('--backend ' + name for name in own_backends)} "
                        f"(or pass the checkpoint it was exported from)")
    return own_backends[0]


def engine_label(path, backend: str, flags: Collection[str] = (), precision: str = "f32") -> str:
    """What runs the model file `path`, as the service reports it: "onnxruntime", "openvino (bf16)", ..."""
    return engine_of(path, backend, flags) + ("" if precision == "f32" else f" ({precision})")


def load_model(path, backend: str = "mindspore", threads: int = 0, use_ema: bool = False,
               stated: Optional[dict] = None, flags: Collection[str] = (),
               precision: str = "f32") -> Tuple[Callable, dict]:
    """(batch of CHW float32 images -> logits, the model's meta) for the model file `path` on `backend`,
    with `threads` CPU threads (0: one per physical core), computing in `precision` (bf16: openvino only).

    mindspore runs a .ckpt (with BatchNorm folded into the convolutions, see models/folding.py; logits agree
    with the unfolded network to float32 rounding) or an exported .mindir, onnxruntime and openvino a .ckpt
    (exported to ONNX once, see onnx_backend) or an exported .onnx; an exported file picks its own backend
    (an .onnx onnxruntime) unless --backend is a flag. The meta has "num_classes", and "classes" if the model carries its own class list.
    `stated`: what the command line says of the model (model, num_classes, width, bn_momentum, bn_eps,
    resize), used where the file's meta says nothing; `flags`: the keys given as flags, which the meta must
    agree with (export.checked_meta).
    """
    stated = stated or {}
    if not path:
        raise UserError("no model given: pass --pretrained CKPT or an exported .mindir or .onnx")
    file_format, own_backends = EXPORTED_FORMATS.get(Path(path).suffix.lower(), (None, (backend,)))
    if file_format and use_ema:
        raise UserError(f"--use_ema picks a checkpoint's EMA weights, but {path} is an exported {file_format} model; "
                        "drop --use_ema, or export the checkpoint with --use_ema")
    backend = engine_of(path, backend, flags)
    if precision != "f32" and backend != "openvino":
        raise UserError(f"--precision {precision} is OpenVINO's: add --backend openvino (with an .onnx or a "
                        f"checkpoint), or drop --precision")
    if backend == "openvino":
        return openvino_model(path, threads, use_ema, stated, flags, precision)
    if backend == "onnxruntime":
        return onnx_model(path, threads, use_ema, stated, flags)
    set_cpu_threads(threads)
    if file_format is None:
        expected = flagged(stated, flags)
        net, meta = model_from_checkpoint(path, use_ema, expected, stated)
        return mindspore_predictor(fold_for_inference(net)), dict(meta, num_classes=net.num_classes)
    expected = flagged(stated, flags, (*NETWORK_KEYS, "resize"))
    meta = export.checked_meta(path, file_format, stated.get("num_classes"), expected)
    try:
        graph = ms.load(str(path))
    except RuntimeError as err:
        raise UserError(f"{path} is truncated, corrupt or not a MINDIR file ({err})") from None
    return mindspore_predictor(ms.nn.GraphCell(graph)), meta


def class_names_of(meta: dict) -> List[str]:
    """The display names of a model's classes: its own list, else ImageNet's for 1000, else indices."""
    return display_names(model_classes(meta["num_classes"], meta.get("classes")))


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def class_probabilities(predict, images: np.ndarray, preprocessing: Preprocessing, num_classes: int) -> np.ndarray:
    """The softmax (float64) of the model's logits for a uint8 NHWC batch of eval views (eval_image)."""
    logits = predict(normalize_batch(images, preprocessing))
    if logits.shape[1] != num_classes:  # a MINDIR without its meta and the wrong --num_classes
        raise UserError(f"the model gives {logits.shape[1]} class scores, but num_classes is {num_classes}; "
                        f"pass --num_classes {logits.shape[1]}")
    return softmax(logits.astype(np.float64))


def top_classes(probabilities: np.ndarray, k: int) -> np.ndarray:
    """The indices of the k highest probabilities, highest first; ties in index order."""
    return np.argsort(-probabilities, kind="stable")[:k]


def predict_images(predict, data_url, preprocessing: Preprocessing, class_names: List[str], top_k: int = 5,
                   batch_size: int = 64):
    """(predictions, [(path, reason)] of the files skipped) of the image file `data_url`, or of every image
    below the folder `data_url`, in folders.list_images order."""
    paths = [Path(data_url)] if Path(data_url).is_file() else images_of_folder(data_url, "data_url")
    predictions, skipped = [], []
    k = min(top_k, len(class_names))
    for start in progress(range(0, len(paths), batch_size), -(-len(paths) // batch_size), "batch"):
        batch, batch_paths = [], []
        for path in paths[start:start + batch_size]:
            try:
                batch.append(eval_image(EncodedImage(path), preprocessing))
                batch_paths.append(path)
            except READ_ERRORS as err:
                skipped.append((str(path), f"{type(err).__name__}: {err}"))
        if not batch:
            continue
        for path, row in zip(batch_paths, class_probabilities(predict, np.stack(batch), preprocessing,
                                                              len(class_names))):
            top = top_classes(row, k)
            predictions.append(Prediction(str(path), top.tolist(), [class_names[i] for i in top],
                                          [float(row[i]) for i in top]))
    return predictions, skipped


class Classifier:
    """A model file that names what one image shows, from Python:

        classify = mobilenetv3.Classifier("small.ckpt")   # or an exported .mindir or .onnx
        classify(Image.open("cat.jpg"))                   # [("tabby", 0.62), ("tiger cat", 0.21), ...]

    The model, its class names and its preprocessing (image size, interpolation, crop, mean and std) come
    from the file's meta, as for scripts/infer.py (load_model); a PIL image in any mode, or an image file's
    path (decoded as infer.py decodes it), gives the `top_k` (class name, probability) pairs, most probable
    first. MindSpore runs on its default device unless the caller chose one (ms.set_device)."""

    def __init__(self, path, top_k: int = 5, backend: str = "mindspore", threads: int = 0, use_ema: bool = False,
                 precision: str = "f32"):
        self.predict, meta = load_model(path, backend, threads, use_ema, precision=precision)
        self.preprocessing, _ = resolve(Preprocessing(), (), meta)
        self.class_names = class_names_of(meta)
        self.top_k = top_k

    def __call__(self, image) -> List[Tuple[str, float]]:
        source = PillowImage(image) if isinstance(image, Image.Image) else EncodedImage(image)
        pixels = eval_image(source, self.preprocessing)
        probs = softmax(self.predict(normalize_batch(pixels[None], self.preprocessing)).astype(np.float64))[0]
        return [(self.class_names[i], float(probs[i])) for i in top_classes(probs, self.top_k)]


def format_prediction(prediction: Prediction) -> str:
    return f"{prediction.path}: " + ", ".join(f"{name} ({prob:.4f})"
                                              for name, prob in zip(prediction.names, prediction.probs))


OUTPUT_FORMATS = (".json", ".csv")


def output_format(path) -> str:
    """".json" or ".csv" from the file name; checked before predicting so a typo fails at once."""
    if Path(path).is_dir():
        raise UserError(f"--output {path} is a directory; give a file name ending in {' or '.join(OUTPUT_FORMATS)}")
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise UserError(f"--output {path}: use a file name ending in {' or '.join(OUTPUT_FORMATS)}, got {suffix!r}")
    return suffix


def write_predictions(predictions: List[Prediction], path):
    """JSON (a list of records with path, indices, names, probs) or CSV (path, then index/name/prob for
    each rank), by the file's suffix. JSON keeps every name exactly; in the CSV a name that a spreadsheet
    would run as a formula starts with a single quote (spreadsheet_text).

    File names that are not valid UTF-8 (Python holds their bytes as surrogates) are kept exactly: the CSV
    has the name's own bytes, the JSON its \\udcXX escapes, which json.loads and os.fsencode turn back
    into those bytes."""
    path = Path(path)
    file_format = output_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with written_whole(path) as partial:
        if file_format == ".json":
            partial.write_text(json.dumps([asdict(p) for p in predictions], indent=1))
            return
        k = max((len(p.indices) for p in predictions), default=0)
        with partial.open("w", newline="", encoding="utf-8", errors="surrogateescape") as out:
            writer = csv.writer(out)
            writer.writerow(["path"] + [f"{field}_{r}" for r in range(1, k + 1) for field in ("index", "name", "prob")])
            for p in predictions:
                ranks = [v for r in zip(p.indices, map(spreadsheet_text, p.names), p.probs) for v in r]
                writer.writerow([spreadsheet_text(p.path), *ranks])


# What makes a spreadsheet read a cell as a formula (OWASP, "CSV Injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_text(text: str) -> str:
    """`text` as a CSV cell that Excel and LibreOffice show as text: one starting like a formula gets a
    single quote in front, as OWASP advises."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text
