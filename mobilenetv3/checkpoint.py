"""Checkpoints: atomic writes, rotation, metadata (model, classes, epoch, config) and checked loading.

A checkpoint holds the network's parameters under their own names, optional optimiser state under
"opt.<name>" and EMA weights under "ema.<name>", plus one JSON string "meta" with the model name,
num_classes, width, class names, epoch/step and config. Files are named <prefix>-<epoch>_<step>.ckpt
as MindSpore's ModelCheckpoint does.
"""
import json
import os
import re
from pathlib import Path
from typing import Dict, Optional, Tuple

import mindspore as ms

from .errors import UserError

META_KEY = "meta"
OPTIMIZER_PREFIX, EMA_PREFIX = "opt.", "ema."
CLASSIFIER_OUT = ("classifier.3.weight", "classifier.3.bias")
NAME_PATTERN = re.compile(r"^(?P<prefix>.+)-(?P<epoch>\d+)_(?P<step>\d+)\.ckpt$")


def save(path, tensors: Dict[str, ms.Tensor], meta: dict):
    """Write `tensors` and `meta` to `path` atomically: a crash leaves the old file or the new, never half.

    MindSpore only writes names ending in .ckpt, so the temporary file is a hidden ".<name>.partial.ckpt"
    that checkpoint listings never match.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.partial.ckpt")
    entries = [{"name": name, "data": value} for name, value in tensors.items()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        ms.save_checkpoint(entries, str(tmp), append_dict={META_KEY: json.dumps(meta)}, crc_check=True)
        os.replace(tmp, path)
    except (OSError, RuntimeError, ValueError) as err:
        tmp.unlink(missing_ok=True)
        raise UserError(f"could not write checkpoint {path} ({err}); check that {path.parent} is writable "
                        "and has free space. Earlier checkpoints are untouched.") from None


def load(path) -> Tuple[Dict[str, ms.Parameter], dict]:
    """Read a checkpoint into ({name: Parameter}, meta); meta is {} for checkpoints from elsewhere."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found")
    try:
        params = ms.load_checkpoint(str(path), crc_check=True)
    except (RuntimeError, ValueError, OSError) as err:
        raise UserError(f"checkpoint {path} is truncated, corrupt or not a MindSpore checkpoint ({err})") from None
    meta = params.pop(META_KEY, None)
    return params, json.loads(str(meta)) if meta is not None else {}


def check_model_matches(meta: dict, path, model: str, num_classes: Optional[int] = None, width: Optional[float] = None):
    """Fail with one clear message if the checkpoint says it was made for another model."""
    wanted = {"model": model, "num_classes": num_classes, "width": width}
    for key, value in wanted.items():
        saved = meta.get(key)
        if value is not None and saved is not None and saved != value:
            raise UserError(f"checkpoint {path} is for {key} {saved!r}, but {key} is {value!r}; "
                            f"pass --{key} {saved} or use another checkpoint")


def listing(names, most=8) -> str:
    """The first `most` names, comma-separated, and how many more there are."""
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def mismatch(missing, unexpected, wrong_shape, missing_label="missing from checkpoint",
             unexpected_label="not in the model") -> str:
    """One line describing names that are missing, unexpected, or of the wrong shape ("" if none)."""
    problems = [f"{label}: {listing(names)}" for label, names in
                ((missing_label, missing), (unexpected_label, unexpected), ("shape differs", wrong_shape)) if names]
    return "; ".join(problems)


def load_weights(net, path, new_classifier_ok: bool = True, use_ema: bool = False) -> dict:
    """Load a checkpoint's weights into `net` after checking every name and shape; returns its meta.

    With `new_classifier_ok`, a checkpoint for another number of classes loads everything but the
    last Linear layer, which keeps its fresh initialisation (fine-tuning), and says so. Any other
    mismatch is an error listing the names at fault.
    """
    params, meta = load(path)
    prefix = EMA_PREFIX if use_ema else ""
    if use_ema and not any(name.startswith(EMA_PREFIX) for name in params):
        raise UserError(f"checkpoint {path} has no EMA weights (train with --ema_decay > 0)")
    weights = {name[len(prefix):]: p for name, p in params.items()
               if name.startswith(prefix) and not name.startswith(OPTIMIZER_PREFIX)
               and (use_ema or not name.startswith(EMA_PREFIX))}
    own = {p.name: p for p in net.get_parameters()}
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    wrong_shape = sorted(name for name in set(own) & set(weights) if own[name].shape != weights[name].shape)
    if new_classifier_ok and wrong_shape and set(wrong_shape) <= set(CLASSIFIER_OUT) and not missing + unexpected:
        print(f"{path} has {weights[CLASSIFIER_OUT[1]].shape[0]} classes, the model {own[CLASSIFIER_OUT[1]].shape[0]}: "
              "loaded all but the last Linear layer (classifier.3), which is freshly initialised for fine-tuning")
        for name in wrong_shape:
            del weights[name]
    elif missing or unexpected or wrong_shape:
        problems = mismatch(missing, unexpected, [f"{n} {tuple(weights[n].shape)} vs {tuple(own[n].shape)}"
                                                  for n in wrong_shape])
        saved = f" (it was saved for {meta.get('model')}, width {meta.get('width')}, {meta.get('num_classes')} classes)" \
            if meta.get("model") else ""
        raise UserError(f"checkpoint {path} does not fit this model{saved}: {problems}")
    not_loaded, _ = ms.load_param_into_net(net, weights, strict_load=True)
    if not_loaded and set(not_loaded) - set(CLASSIFIER_OUT):
        raise UserError(f"checkpoint {path}: parameters not loaded: {', '.join(not_loaded)}")
    return meta


def checkpoint_name(prefix: str, epoch: int, step: int) -> str:
    return f"{prefix}-{epoch}_{step}.ckpt"


def list_checkpoints(directory, prefix: Optional[str] = None):
    """Checkpoints in `directory` named <prefix>-<epoch>_<step>.ckpt, oldest first."""
    found = []
    for path in Path(directory).glob("*.ckpt"):
        match = NAME_PATTERN.match(path.name)
        if match and not path.name.startswith(".") and (prefix is None or match["prefix"] == prefix):
            found.append((int(match["epoch"]), int(match["step"]), path))
    return [path for _, _, path in sorted(found)]


def rotate(directory, prefix: str, keep: int):
    """Delete the oldest checkpoints so that at most `keep` remain."""
    for path in list_checkpoints(directory, prefix)[:-keep]:
        path.unlink(missing_ok=True)


def latest(directory, prefix: Optional[str] = None) -> Optional[Path]:
    found = list_checkpoints(directory, prefix)
    return found[-1] if found else None


def model_from_checkpoint(config, path=None):
    """The eval-mode model a checkpoint was saved for, and its meta.

    The architecture comes from the checkpoint's meta (BN eps included: timm weights use 1e-5);
    --model, --num_classes and --width must agree with it, so a wrong flag is one clear error.
    """
    from .model import create_model
    path = path or config.pretrained
    if not path:
        raise UserError("no checkpoint given: pass --pretrained CKPT")
    _, meta = load(path)
    check_model_matches(meta, path, config.model, config.num_classes, config.width)
    net = create_model(config.model, config.num_classes, config.width, config.dropout_rate,
                       meta.get("bn_momentum", config.bn_momentum), meta.get("bn_eps", config.bn_eps))
    load_weights(net, path, new_classifier_ok=False)
    net.set_train(False)
    return net, meta
