"""Checkpoint files: atomic writes, checked loading into a network, and listing a folder's checkpoints.

A checkpoint holds the network's parameters under their own names, optional optimiser state under
"opt.<name>" and EMA weights under "ema.<name>", plus its meta (meta.py) as one JSON string "meta". Files
are named <prefix>-<epoch>_<step>.ckpt as MindSpore's ModelCheckpoint does; a run's best by validation
Top-1 is <prefix>-best.ckpt, which listings of a run's checkpoints (rotation, --resume auto) leave out.
"""
import json
import logging
import os
import re
from pathlib import Path
from typing import Dict, Optional, Tuple

import mindspore as ms
import numpy as np

from ..atomic import written_whole
from ..errors import UserError
from .meta import META_KEY, parse_meta

logger = logging.getLogger(__name__)

OPTIMIZER_PREFIX, EMA_PREFIX = "opt.", "ema."

RUNNING_STATS = ("moving_mean", "moving_variance")  # BatchNorm's, not trained by gradients

CLASSIFIER_OUT = ("classifier.3.weight", "classifier.3.bias")

NAME_PATTERN = re.compile(r"^(?P<prefix>.+)-(?P<epoch>\d+)_(?P<step>\d+)\.ckpt$")


def follow_umask(path):
    """Give the file at `path` the mode a newly created file gets under the process's umask (0644 under
    022): MindSpore writes checkpoints and MINDIR files read-only for their owner (0400), which keeps a
    group from reading them and a rerun from replacing them."""
    mask = os.umask(0o077)  # read it by setting it; the moment between errs on the restrictive side
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def save(path, tensors: Dict[str, ms.Tensor], meta: dict):
    """Write `tensors` and `meta` to `path` atomically: a crash leaves the old file or the new, never half.

    MindSpore only writes names ending in .ckpt, which written_whole's hidden ".<name>.<pid>.partial.ckpt"
    keeps (checkpoint listings never match it); MindSpore itself writes it as ".<name>.<pid>.partial.tmp"
    first. A failed write removes both.
    """
    path = Path(path)
    entries = [{"name": name, "data": value} for name, value in tensors.items()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with written_whole(path) as partial:
            try:
                ms.save_checkpoint(entries, str(partial), append_dict={META_KEY: json.dumps(meta)}, crc_check=True)
            finally:
                partial.with_suffix(".tmp").unlink(missing_ok=True)
            follow_umask(partial)
    except (OSError, RuntimeError, ValueError) as err:
        raise UserError(f"could not write checkpoint {path} ({err}); check that {path.parent} is writable "
                        "and has free space. Earlier checkpoints are untouched.") from None


def require_file(path, kind: str = "checkpoint") -> Path:
    """`path` if it is a file; else one clear line: not found, or a directory (naming a checkpoint in it)."""
    path = Path(path)
    if path.is_dir():
        found = latest(path)
        inside = f" (the latest checkpoint in it is {found})" if found else ""
        raise UserError(f"{kind} {path} is a directory{inside}; pass the file itself")
    if not path.is_file():
        raise UserError(f"{kind} {path} not found")
    return path


def load(path) -> Tuple[Dict[str, ms.Parameter], dict]:
    """Read a checkpoint into ({name: Parameter}, meta); meta is {} for checkpoints from elsewhere.

    Every tensor must be finite: a run that diverged saves NaN weights, which would otherwise evaluate,
    export or train on as if they were weights (one pass of np.isfinite, small beside reading the file)."""
    path = require_file(path)
    try:
        params = ms.load_checkpoint(str(path), crc_check=True)
    except (RuntimeError, ValueError, OSError) as err:
        raise UserError(f"checkpoint {path} is truncated, corrupt or not a MindSpore checkpoint ({err})") from None
    meta = params.pop(META_KEY, None)
    bad = first_non_finite((name, value.asnumpy()) for name, value in params.items() if isinstance(value, ms.Tensor))
    if bad:
        raise UserError(f"checkpoint {path}: tensor {bad}: the run that saved it diverged or the file is damaged; "
                        "use an earlier checkpoint")
    meta = parse_meta(str(meta), f"the meta of checkpoint {path}") if meta is not None else {}
    check_meta_fits_tensors(meta, params, path)
    return params, meta


def check_meta_fits_tensors(meta: dict, params: dict, path):
    """One line if the meta of checkpoint `path` contradicts its own tensors: its num_classes, or the length
    of its class list, is not the number of rows of the classifier (raw or EMA). Said here, the error blames
    the file, not a mismatch with the model built from that meta or with the flags."""
    recorded = [(f"num_classes {meta['num_classes']}", meta["num_classes"])] if "num_classes" in meta else []
    if isinstance(meta.get("classes"), list):
        recorded.append((f"{len(meta['classes'])} class names", len(meta["classes"])))
    for name in (*CLASSIFIER_OUT, *(EMA_PREFIX + n for n in CLASSIFIER_OUT)):
        shape = tuple(params[name].shape) if name in params else None
        for said, count in recorded:
            if shape is not None and shape[:1] != (count,):
                raise UserError(f"checkpoint {path}: its meta says {said}, but its tensor {name} is {shape}; "
                                "the file contradicts itself: save or convert it again")


def first_non_finite(arrays) -> Optional[str]:
    """"<name> holds NaN or infinite values (N of M)" for the first of the (name, array) pairs `arrays` that
    holds any, else None."""
    for name, array in arrays:
        finite = np.isfinite(array)
        if not finite.all():
            return f"{name} holds NaN or infinite values ({finite.size - np.count_nonzero(finite)} of {finite.size})"
    return None


def listing(names, most=8) -> str:
    """The first `most` names, comma-separated, and how many more there are."""
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def mismatch(missing, unexpected, wrong_shape, missing_label="missing from checkpoint",
             unexpected_label="not in the model") -> str:
    """One line describing names that are missing, unexpected, or of the wrong shape ("" if none)."""
    problems = [f"{label}: {listing(names)}" for label, names in
                ((missing_label, missing), (unexpected_label, unexpected), ("shape differs", wrong_shape)) if names]
    return "; ".join(problems)


def load_weights(net, path, new_classifier_ok: bool = True, use_ema: bool = False, loaded=None,
                 built_from_meta: bool = False) -> dict:
    """Load a checkpoint's weights into `net` after checking every name and shape; returns its meta.
    `loaded` is what load(path) returned, when the caller has read the file already.

    With `new_classifier_ok`, a checkpoint for another number of classes loads everything but the
    last Linear layer, which keeps its fresh initialisation (fine-tuning), and says so. Any other
    mismatch is an error listing the names at fault; `built_from_meta` (`net` is the model the meta
    records) makes it an error about the file, whose meta then contradicts its tensors.

    With `use_ema`, the EMA weights ("ema.<name>") are loaded instead of the raw ones. BatchNorm running
    statistics are the EMA of them where the checkpoint has it (the trainer averages them too), else the
    raw ones (EMA weights from elsewhere that average trainable parameters only).
    """
    params, meta = loaded or load(path)
    weights = {name: p for name, p in params.items() if not name.startswith((OPTIMIZER_PREFIX, EMA_PREFIX))}
    if use_ema:
        averaged = {name[len(EMA_PREFIX):]: p for name, p in params.items() if name.startswith(EMA_PREFIX)}
        if not averaged:
            raise UserError(f"--use_ema: checkpoint {path} has no EMA weights (its run trained without --ema_decay); "
                            "drop --use_ema or pass a checkpoint of a run with --ema_decay > 0")
        weights = {**{name: p for name, p in weights.items() if name.endswith(RUNNING_STATS)}, **averaged}
    own = {p.name: p for p in net.get_parameters()}
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    wrong_shape = sorted(name for name in set(own) & set(weights) if own[name].shape != weights[name].shape)
    if new_classifier_ok and wrong_shape and set(wrong_shape) <= set(CLASSIFIER_OUT) and not missing + unexpected:
        classes = (weights[CLASSIFIER_OUT[1]].shape[0], own[CLASSIFIER_OUT[1]].shape[0])
        logger.info(f"{path} has {classes[0]} classes, the model {classes[1]}: loaded all but the last Linear layer "
                    "(classifier.3), which is freshly initialised for fine-tuning")
        for name in wrong_shape:
            del weights[name]
    elif missing or unexpected or wrong_shape:
        problems = mismatch(missing, unexpected, [f"{n} {tuple(weights[n].shape)} vs {tuple(own[n].shape)}"
                                                  for n in wrong_shape])
        recorded = f"{meta.get('model')}, width {meta.get('width')}, {meta.get('num_classes')} classes"
        if built_from_meta:
            raise UserError(f"checkpoint {path}: its meta records {recorded}, but its tensors do not fit that model "
                            f"({problems}); the file contradicts itself: save or convert it again")
        saved = f" (it was saved for {recorded})" if meta.get("model") else ""
        raise UserError(f"checkpoint {path} does not fit this model{saved}: {problems}")
    not_loaded, _ = ms.load_param_into_net(net, weights, strict_load=True)
    if not_loaded and set(not_loaded) - set(CLASSIFIER_OUT):
        raise UserError(f"checkpoint {path}: parameters not loaded: {', '.join(not_loaded)}")
    return meta


def checkpoint_name(prefix: str, epoch: int, step: int) -> str:
    return f"{prefix}-{epoch}_{step}.ckpt"


def best_name(prefix: str) -> str:
    return f"{prefix}-best.ckpt"


def list_checkpoints(directory, prefix: Optional[str] = None):
    """Checkpoints in `directory` named <prefix>-<epoch>_<step>.ckpt, oldest first."""
    found = []
    for path in Path(directory).glob("*.ckpt"):
        match = NAME_PATTERN.match(path.name)
        if match and not path.name.startswith(".") and (prefix is None or match["prefix"] == prefix):
            found.append((int(match["epoch"]), int(match["step"]), path))
    return [path for _, _, path in sorted(found)]


def latest(directory, prefix: Optional[str] = None) -> Optional[Path]:
    found = list_checkpoints(directory, prefix)
    return found[-1] if found else None
