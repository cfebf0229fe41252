"""A training run's folder (ckpt_save_dir) while rank 0 writes into it: locked against a second run,
refused to a fresh run if another run's checkpoints are there, and its old checkpoints rotated away."""
import fcntl
import os
import uuid
from pathlib import Path
from typing import Dict

import mindspore as ms

from ..checkpoints.files import best_name, list_checkpoints, listing, save
from ..checkpoints.meta import read_meta
from ..errors import UserError


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
    written here and its earlier ones; save refuses to replace a file with another id. The run's best
    checkpoint (files.best_name) is one of its files too, replaced rather than rotated.
    """

    def __init__(self, directory, prefix: str, keep: int, fresh: bool):
        self.directory, self.prefix, self.keep, self.fresh = Path(directory), prefix, keep, fresh
        self.run_id, self.own = uuid.uuid4().hex, set()

    def __enter__(self):
        self.lock = lock_folder(self.directory)
        found = self.run_files() if self.fresh else []
        if found:
            unlock_folder(self.lock)
            raise UserError(f"ckpt_save_dir {self.directory} already holds checkpoints of another run "
                            f"({listing([p.name for p in found], 3)}): continue that run with --resume auto, or "
                            "pass another --ckpt_save_dir")
        return self

    def __exit__(self, *exc):
        unlock_folder(self.lock)

    def run_files(self) -> list:
        """The checkpoints here with this folder's prefix, its best one (if any) last."""
        best = self.directory / best_name(self.prefix)
        return list_checkpoints(self.directory, self.prefix) + ([best] if best.is_file() else [])

    def continue_run(self, meta: dict, names_ahead=()):
        """Continue the run that wrote a checkpoint with `meta`: its checkpoints here become this run's.
        Checkpoints written before runs had ids all count as one run. If another run's checkpoint has one
        of `names_ahead` (the ones this run will write at the end of its epochs), fail now, before training."""
        self.run_id = meta.get("run")
        self.own = {p for p in self.run_files() if _run_of(p) == self.run_id}
        for name in names_ahead:
            self.check_not_foreign(self.directory / name)

    def check_not_foreign(self, path: Path):
        if path.exists() and path not in self.own:
            raise UserError(f"not overwriting {path}: another run wrote it; move it away or pass another "
                            "--ckpt_save_dir, then --resume auto")

    def best_top1(self, epochs_done: int) -> float:
        """The validation Top-1 of this run's best checkpoint, if it is of one of the first `epochs_done`
        epochs (one of later epochs, left by a resume from an earlier checkpoint, is to be replaced)."""
        path = self.directory / best_name(self.prefix)
        if path not in self.own:
            return -1.0
        meta = read_meta(path)
        return meta.get("val_top1", -1.0) if meta.get("epoch", epochs_done + 1) <= epochs_done else -1.0

    def save(self, name: str, tensors: Dict[str, ms.Tensor], meta: dict) -> Path:
        """Write checkpoint `name` with this run's id, then delete this run's oldest beyond `keep` (the best
        checkpoint is not counted among them: its name is not <prefix>-<epoch>_<step>.ckpt)."""
        path = self.directory / name
        self.check_not_foreign(path)
        save(path, tensors, dict(meta, run=self.run_id))
        self.own.add(path)
        own = [p for p in list_checkpoints(self.directory, self.prefix) if p in self.own]
        for old in own[:-self.keep]:
            old.unlink(missing_ok=True)
            self.own.discard(old)
        return path


def _run_of(path):
    """The run id a checkpoint records; None for one that cannot be read (it is not this run's to rotate)."""
    try:
        return read_meta(path).get("run")
    except UserError:
        return None
