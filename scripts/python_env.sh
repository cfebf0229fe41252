# Sourced by quickstart.sh and test.sh: picks the Python the project runs with, before anything is downloaded.
#
#   project_python REPO EXTRAS [MODULE...]
#       sets PYTHON to an interpreter that has REPO installed (editable, with EXTRAS such as "dev", or "")
#       and can import each MODULE; creates REPO/.venv and installs into it when needed.
#
# An active virtual environment or conda environment is used as it is. Otherwise the project gets its own
# environment in REPO/.venv, made from $PYTHON (default python3) and reused by later runs: system Pythons
# (Debian 12+, Ubuntu 23.04+, Fedora) refuse `pip install` outside one (PEP 668, "externally managed").
# Only CPython 3.10-3.12 qualify: mindspore 2.10.0 publishes wheels for those alone.

PY_VERSIONS_OK="3.10, 3.11 or 3.12"

_as_root() {  # run a command as root: directly, or through sudo when it needs no password
    if [ "$(id -u)" = 0 ]; then "$@"; elif sudo -n true 2>/dev/null; then sudo "$@"; else return 1; fi
}

# apt_install PACKAGE...: install Debian/Ubuntu packages when we are root or have password-less sudo.
apt_install() {
    command -v apt-get >/dev/null || return 1
    _as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1 \
        || { _as_root apt-get update -qq >/dev/null 2>&1 \
             && _as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null; }
}

_supported_python() {  # exits 0 for CPython 3.10-3.12
    "$1" -c 'import sys, platform; sys.exit(not (platform.python_implementation() == "CPython"
                                                 and (3, 10) <= sys.version_info[:2] <= (3, 12)))' 2>/dev/null
}

_in_environment() {  # exits 0 when the interpreter belongs to a virtual or conda environment
    "$1" -c 'import os, sys; sys.exit(not (sys.prefix != sys.base_prefix
             or os.path.exists(os.path.join(sys.prefix, "conda-meta"))))' 2>/dev/null
}

project_python() {
    local repo="$1" spec="$1${2:+[$2]}" base="${PYTHON:-python3}" venv="$1/.venv" version
    if ! command -v "$base" >/dev/null; then
        echo "error: $base not found: install CPython $PY_VERSIONS_OK (mindspore 2.10 has wheels for those only)," \
             "or set PYTHON=/path/to/python3.11" >&2
        return 2
    fi
    if ! _in_environment "$base" && _supported_python "$venv/bin/python"; then
        base="$venv/bin/python"  # made by an earlier run
    fi
    version="$("$base" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo "?")"
    if ! _supported_python "$base"; then
        echo "error: $base is Python $version; mindspore 2.10 has wheels for CPython $PY_VERSIONS_OK only." \
             "Install one (Debian/Ubuntu: apt-get install python3.11 python3.11-venv; or pyenv, uv, conda)" \
             "and run again with PYTHON=/path/to/python3.11" >&2
        return 2
    fi
    if ! _in_environment "$base"; then
        if ! "$base" -c "import ensurepip, venv" 2>/dev/null; then
            echo "installing python$version-venv (needed to create $venv): apt-get install python$version-venv"
            if ! apt_install "python$version-venv"; then
                echo "error: $base cannot create a virtual environment (no ensurepip) and python$version-venv" \
                     "cannot be installed from here. Run: sudo apt-get install python$version-venv" \
                     "(or activate any virtual environment of Python $PY_VERSIONS_OK) and run again" >&2
                return 2
            fi
        fi
        echo "creating the project's Python environment: $base -m venv $venv"
        rm -rf "$venv"
        "$base" -m venv "$venv" || { echo "error: $base -m venv $venv failed (see above)" >&2; return 2; }
        base="$venv/bin/python"
    fi
    PYTHON="$base"
    echo "Python: $PYTHON ($version)"
    # (Re)install when anything is missing or mobilenetv3 is imported from another checkout.
    if ! "$PYTHON" -c "
import importlib, os, sys
for name in sys.argv[2:]:
    importlib.import_module(name)
import mobilenetv3
assert os.path.samefile(os.path.dirname(mobilenetv3.__file__), os.path.join(sys.argv[1], 'mobilenetv3'))
" "$repo" "${@:3}" 2>/dev/null; then
        echo "installing: $PYTHON -m pip install -e $spec (the first time about 3 GB on disk, 2.5 GB of it mindspore)"
        "$PYTHON" -m pip install -e "$spec" || { echo "error: pip install -e $spec failed (see above)" >&2; return 1; }
    else
        echo "mobilenetv3 is installed, with ${*:3}"
    fi
}
