"""The package's C++ sources (csrc/) built into shared libraries on first use, with the C++ compiler of
$CXX (g++ by default), into $XDG_CACHE_HOME/mobilenetv3/<hash>/ (~/.cache by default), keyed by the
source, the compiler flags and whatever else the library's binary interface depends on."""
import ctypes
import hashlib
import os
import shlex
import subprocess
import tempfile
from pathlib import Path
from typing import List, Optional, Sequence

CSRC = Path(__file__).resolve().parent / "csrc"


def compiler() -> List[str]:
    return shlex.split(os.environ.get("CXX") or "g++")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mobilenetv3"


def library_path(source: Path, flags: Sequence[str], name: str, depends_on: str = "") -> Path:
    """Where `source` built with `flags` (and `depends_on`, e.g. a version it is built against) goes."""
    key = hashlib.sha256(source.read_bytes() + " ".join([*flags, depends_on]).encode()).hexdigest()[:16]
    return cache_dir() / key / name


def build(source: Path, flags: Sequence[str], path: Path, libraries: Sequence[str] = ()) -> Optional[str]:
    """Compile `source` with `flags`, linked with `libraries` (e.g. -ljpeg), to `path`; returns None, or
    why it failed and what would fix it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A private temporary name, then an atomic rename: processes building at once each finish a whole file.
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    command = [*compiler(), *flags, str(source), "-o", temporary, *libraries]
    try:
        try:
            result = subprocess.run(command, capture_output=True, text=True)
        except FileNotFoundError:
            return (f"no C++ compiler ({command[0]} not found); install one (apt-get install g++) "
                    "or set CXX to a C++17 compiler")
        except OSError as err:
            return f"could not run the C++ compiler {command[0]} ({err.strerror}); set CXX to a C++17 compiler"
        if result.returncode != 0:
            lines = result.stderr.strip().splitlines()
            detail = next((line for line in lines if "error" in line), lines[-1] if lines else
                          f"exit status {result.returncode}")
            shown = shlex.join([*command[:-2 - len(libraries)], "-o", str(path), *libraries])
            return (f"compiling it failed ({detail.strip()}); run `{shown}` to see why, "
                    "or set CXX to a working C++17 compiler")
        os.chmod(temporary, 0o755)  # mkstemp made it private
        os.replace(temporary, path)
        return None
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def built(source: Path, flags: Sequence[str], path: Path, libraries: Sequence[str] = ()) -> Optional[str]:
    """None if the library at `path` exists or could be built there now, else why not and the fix."""
    if path.is_file():
        return None
    try:
        return build(source, flags, path, libraries)
    except OSError as err:
        return f"could not write {path.parent} ({err}); set XDG_CACHE_HOME to a writable directory"



class Unavailable(Exception):
    """A library that cannot be built or loaded here; the message says why and the fix."""


def load(source: Path, flags: Sequence[str], name: str, libraries: Sequence[str] = (),
         depends_on: str = "") -> ctypes.CDLL:
    """The library `name` built from `source` (on first use, keyed as library_path says) and loaded;
    Unavailable when it cannot be."""
    path = library_path(source, [*flags, *libraries], name, depends_on)
    reason = built(source, flags, path, libraries)
    if reason is not None:
        raise Unavailable(reason)
    try:
        return ctypes.CDLL(str(path))
    except OSError as err:
        raise Unavailable(f"loading {path} failed ({err}); delete it to rebuild") from None
