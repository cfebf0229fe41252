"""Checkpoints: atomic writes, the training run's folder (lock, rotation), metadata and checked loading.

A checkpoint holds the network's parameters under their own names, optional optimiser state under
"opt.<name>" and EMA weights under "ema.<name>", plus one JSON string "meta" with the model name,
num_classes, width, class names, epoch/step, config and the id of the run that wrote it. Files are
named <prefix>-<epoch>_<step>.ckpt as MindSpore's ModelCheckpoint does.
"""
import fcntl
import json
import os
import re
import uuid
from pathlib import Path
from typing import Dict, Optional, Tuple

import mindspore as ms

from .errors import UserError

META_KEY = "meta"
OPTIMIZER_PREFIX, EMA_PREFIX = "opt.", "ema."
RUNNING_STATS = ("moving_mean", "moving_variance")  # BatchNorm's, not trained by gradients
CLASSIFIER_OUT = ("classifier.3.weight", "classifier.3.bias")
NAME_PATTERN = re.compile(r"^(?P<prefix>.+)-(?P<epoch>\d+)_(?P<step>\d+)\.ckpt$")


def save(path, tensors: Dict[str, ms.Tensor], meta: dict):
    """Write `tensors` and `meta` to `path` atomically: a crash leaves the old file or the new, never half.

    MindSpore only writes names ending in .ckpt, so the temporary file is a hidden
    ".<name>.<pid>.partial.ckpt" that checkpoint listings never match, one per process; MindSpore itself
    writes it as ".<name>.<pid>.partial.tmp" first. A failed write removes both.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.partial.ckpt")
    entries = [{"name": name, "data": value} for name, value in tensors.items()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        ms.save_checkpoint(entries, str(tmp), append_dict={META_KEY: json.dumps(meta)}, crc_check=True)
        os.replace(tmp, path)
    except (OSError, RuntimeError, ValueError) as err:
        for partial in (tmp, tmp.with_suffix(".tmp")):
            partial.unlink(missing_ok=True)
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
    """Read a checkpoint into ({name: Parameter}, meta); meta is {} for checkpoints from elsewhere."""
    path = require_file(path)
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


MODEL_KEYS = ("model", "num_classes", "width")  # what a model's meta fixes about the network


def check_model_flags(meta: dict, path, config):
    """check_model_matches for the MODEL_KEYS given as flags: a model's meta wins over a config file
    (eval, infer, export), so only a flag can contradict it."""
    flags = getattr(config, "flags", frozenset())
    check_model_matches(meta, path, *(getattr(config, key) if key in flags else None for key in MODEL_KEYS))


def listing(names, most=8) -> str:
    """The first `most` names, comma-separated, and how many more there are."""
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def mismatch(missing, unexpected, wrong_shape, missing_label="missing from checkpoint",
             unexpected_label="not in the model") -> str:
    """One line describing names that are missing, unexpected, or of the wrong shape ("" if none)."""
    problems = [f"{label}: {listing(names)}" for label, names in
                ((missing_label, missing), (unexpected_label, unexpected), ("shape differs", wrong_shape)) if names]
    return "; ".join(problems)


def load_weights(net, path, new_classifier_ok: bool = True, use_ema: bool = False, loaded=None) -> dict:
    """Load a checkpoint's weights into `net` after checking every name and shape; returns its meta.
    `loaded` is what load(path) returned, when the caller has read the file already.

    With `new_classifier_ok`, a checkpoint for another number of classes loads everything but the
    last Linear layer, which keeps its fresh initialisation (fine-tuning), and says so. Any other
    mismatch is an error listing the names at fault.

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


def read_meta(path) -> dict:
    """The meta of checkpoint `path` alone (a few milliseconds: the tensors are not read); {} if unreadable."""
    try:
        meta = ms.load_checkpoint(str(path), choice_func=lambda name: name == META_KEY).get(META_KEY)
        return json.loads(str(meta)) if meta is not None else {}
    except (RuntimeError, ValueError, OSError):
        return {}


LOCK_NAME = ".train.lock"


def lock_folder(directory: Path):
    """An open file holding an exclusive flock on directory/LOCK_NAME, with this process's pid in it.

    The OS drops the lock when the process ends however it ends, so a killed run leaves no stale lock
    (only the file). Its owner deletes the file while still holding the lock (unlock_folder); a process
    that locked a file already deleted that way finds another file (or none) under the name, and tries again.
    """
    path = directory / LOCK_NAME
    while True:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            handle = open(path, "a+")
        except OSError as err:
            raise UserError(f"ckpt_save_dir {directory} is not writable ({err.strerror}); pass a writable "
                            "--ckpt_save_dir") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise UserError(f"ckpt_save_dir {directory} is in use by another training run (pid {holder}); wait "
                            "for it to end or pass another --ckpt_save_dir") from None
        try:
            if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                handle.truncate(0)
                handle.write(f"{os.getpid()}\n")
                handle.flush()
                return handle
        except FileNotFoundError:
            pass
        except OSError as err:
            handle.close()
            raise UserError(f"ckpt_save_dir {directory} is not writable ({err.strerror}); pass a writable "
                            "--ckpt_save_dir") from None
        handle.close()


def unlock_folder(handle):
    """Delete the lock file while still holding its lock (unless it is gone or another file took its name),
    then release it."""
    try:
        if os.stat(handle.name).st_ino == os.fstat(handle.fileno()).st_ino:
            os.unlink(handle.name)
    except FileNotFoundError:
        pass
    handle.close()


class RunFolder:
    """ckpt_save_dir while one training run writes into it (rank 0; a context manager).

    Entering locks the folder (lock_folder): a second run into it meanwhile is refused. A fresh run
    (`fresh`: not resuming) is also refused while the folder holds checkpoints with its prefix: they are
    another run's, which `--resume auto` would continue, and which this run would overwrite (same names)
    or rotate away. Refusing rather than writing beside them keeps the seed's file names and one run per
    folder, so `--resume auto` always means that run.

    Each checkpoint records its run's id in meta["run"]; a resumed run takes the id of the checkpoint it
    continues (continue_run). Rotation (`keep` most) deletes only checkpoints with this run's id, those
    written here and its earlier ones; save refuses to replace a file with another id.
    """

    def __init__(self, directory, prefix: str, keep: int, fresh: bool):
        self.directory, self.prefix, self.keep, self.fresh = Path(directory), prefix, keep, fresh
        self.run_id, self.own = uuid.uuid4().hex, set()

    def __enter__(self):
        self.lock = lock_folder(self.directory)
        found = list_checkpoints(self.directory, self.prefix) if self.fresh else []
        if found:
            unlock_folder(self.lock)
            raise UserError(f"ckpt_save_dir {self.directory} already holds checkpoints of another run "
                            f"({listing([p.name for p in found], 3)}): continue that run with --resume auto, or "
                            "pass another --ckpt_save_dir")
        return self

    def __exit__(self, *exc):
        unlock_folder(self.lock)

    def continue_run(self, meta: dict, names_ahead=()):
        """Continue the run that wrote a checkpoint with `meta`: its checkpoints here become this run's.
        Checkpoints written before runs had ids all count as one run. If another run's checkpoint has one
        of `names_ahead` (the ones this run will write at the end of its epochs), fail now, before training."""
        self.run_id = meta.get("run")
        found = list_checkpoints(self.directory, self.prefix)
        self.own = {p for p in found if read_meta(p).get("run") == self.run_id}
        for name in names_ahead:
            self.check_not_foreign(self.directory / name)

    def check_not_foreign(self, path: Path):
        if path.exists() and path not in self.own:
            raise UserError(f"not overwriting {path}: another run wrote it; move it away or pass another "
                            "--ckpt_save_dir, then --resume auto")

    def save(self, name: str, tensors: Dict[str, ms.Tensor], meta: dict) -> Path:
        """Write checkpoint `name` with this run's id, then delete this run's oldest beyond `keep`."""
        path = self.directory / name
        self.check_not_foreign(path)
        save(path, tensors, dict(meta, run=self.run_id))
        self.own.add(path)
        own = [p for p in list_checkpoints(self.directory, self.prefix) if p in self.own]
        for old in own[:-self.keep]:
            old.unlink(missing_ok=True)
            self.own.discard(old)
        return path


def latest(directory, prefix: Optional[str] = None) -> Optional[Path]:
    found = list_checkpoints(directory, prefix)
    return found[-1] if found else None
