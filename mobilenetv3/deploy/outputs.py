"""Result files the scripts write (predictions, metrics, exported models): checked before the work that
fills them (they are written whole or not at all: atomic.written_whole)."""
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
