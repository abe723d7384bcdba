#!/usr/bin/env bash
# Developer build: compiles recfast._C (and _C_cuda where nvcc is found) into ./recfast so that
# `PYTHONPATH=. pytest` runs against this checkout. Each worktree gets its own build folder.
# Usage: tools/build_inplace.sh [extra cmake -D options], e.g. -DRECFAST_CUDA=OFF
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python}
pybind_dir=$("$py" -c 'import pybind11; print(pybind11.get_cmake_dir())')
cmake -S . -B build/inplace -G Ninja -DRECFAST_INPLACE=ON -Dpybind11_DIR="$pybind_dir" \
  -DPython_EXECUTABLE="$(command -v "$py")" "$@" >/dev/null
cmake --build build/inplace -j "${JOBS:-2}"
