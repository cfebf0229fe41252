"""Result files the scripts write (predictions, metrics, exported models): checked before the work that
fills them, and written whole or not at all."""
import contextlib
import os
from pathlib import Path

from ..errors import UserError


def check_writable_file(path, flag: str) -> Path:
    """Create the folders above `path` and make sure the file can be written there, so a bad path fails
    before the work (an evaluation, thousands of predictions) rather than after it. A file this creates
    to find out is removed again."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path} is a directory; give a file name")
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a"):
            pass
        if not existed:
            path.unlink()
    except OSError as err:
        raise UserError(f"{flag} {path} cannot be written ({err.strerror}); pass a path in a writable folder") \
            from None
    return path


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
