#!/usr/bin/env bash
# Install what the test suite needs (idempotent) and run it: bash scripts/test.sh [pytest args]
# e.g. bash scripts/test.sh --runslow      (also the slow tests)
#      bash scripts/test.sh tests/test_model.py -k counts
set -euo pipefail
cd "$(dirname "$0")/.."

# OpenMPI for the mpirun tests, Fashion-MNIST for the demo test: Debian packages, installed when we can.
missing=()
command -v mpirun >/dev/null || missing+=(openmpi-bin libopenmpi-dev)
[ -d /usr/share/datasets/fashion-mnist ] || missing+=(dataset-fashion-mnist)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then apt_get=(apt-get); elif sudo -n true 2>/dev/null; then apt_get=(sudo apt-get); else apt_get=(); fi
  if [ ${#apt_get[@]} -gt 0 ]; then
    "${apt_get[@]}" update -qq && DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" install -y -qq "${missing[@]}" >/dev/null
  else
    echo "note: cannot install ${missing[*]} (not root); the tests that need them are skipped"
  fi
fi

# (Re)install when anything is missing or mobilenetv3 is imported from another checkout.
python -c "
import os, mindspore, torch, onnxruntime, pytest, mobilenetv3
assert os.path.samefile(os.path.dirname(mobilenetv3.__file__), 'mobilenetv3')" 2>/dev/null || pip install -q -e ".[dev]"
exec python -m pytest "$@"
