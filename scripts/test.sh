#!/usr/bin/env bash
# Install what the test suite needs (idempotent) and run it: bash scripts/test.sh [pytest args]
# Python: an active virtual/conda environment, else ./.venv (created from $PYTHON or python3; see python_env.sh).
# The tests run in one pytest-xdist worker per core, at most 4 (each holds a MindSpore of its own); tests
# that start mpirun or msrun jobs stay on one worker (tests/conftest.py, ONE_JOB_AT_A_TIME).
# e.g. bash scripts/test.sh --runslow      (also the slow tests: what .ci/run runs)
#      bash scripts/test.sh tests/test_model.py -k counts -n 0     (in one process, e.g. for --pdb)
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/python_env.sh
project_python "$PWD" dev mindspore torch onnxruntime openvino pytest xdist matplotlib tensorboardX starlette \
    uvicorn python_multipart httpx2 || exit $?

# OpenMPI for the mpirun tests, Fashion-MNIST for the demo test, Chromium for the serving page's browser test:
# Debian packages, installed when we can.
missing=()
command -v mpirun >/dev/null || missing+=(openmpi-bin)
command -v chromedriver >/dev/null || missing+=(chromium chromium-driver)
[ -d /usr/share/datasets/fashion-mnist ] || missing+=(dataset-fashion-mnist)
if [ ${#missing[@]} -gt 0 ] && ! apt_install "${missing[@]}"; then
  echo "note: cannot install ${missing[*]} (needs apt-get as root or password-less sudo); the tests that need them are skipped"
fi

cores=$(nproc 2>/dev/null || echo 2)
exec "$PYTHON" -m pytest -n "$(( cores < 4 ? cores : 4 ))" --dist loadgroup --no-loadscope-reorder "$@"
