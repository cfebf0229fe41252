"""Files written whole or not at all: a run stopped by Ctrl-C, a crash or a full disk leaves no file that looks
complete (checkpoints, metrics.jsonl, predictions, exported models)."""
import contextlib
import os
from pathlib import Path


@contextlib.contextmanager
def written_whole(path):
    """Yields a hidden name beside `path` (same suffix) to write to, renamed to `path` when the block ends
    without error: a run stopped by Ctrl-C or an error leaves no file that looks complete, and an older
    file of that name stays as it was until the new one is whole."""
    path = Path(path)
    partial = path.with_name(f".{path.stem}.{os.getpid()}.partial{path.suffix}")
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
