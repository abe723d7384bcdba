#!/usr/bin/env bash
# Builds the CPU module with AddressSanitizer + UBSan (RECFAST_SANITIZE=ON) into a private copy of
# the package and runs the kernel tests against it. Any sanitizer report fails the run.
# Usage: tools/sanitize_tests.sh [pytest args]   (needs the test extras installed)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT  # the sanitized build and its package copy
py=${PYTHON:-python}
pybind_dir=$("$py" -c 'import pybind11; print(pybind11.get_cmake_dir())' 2>/dev/null || true)
if [ -z "$pybind_dir" ]; then
  "$py" -m pip install -q "pybind11>=2.12"
  pybind_dir=$("$py" -c 'import pybind11; print(pybind11.get_cmake_dir())')
fi
gen=()
command -v ninja >/dev/null && gen=(-G Ninja)
cmake -S "$root" -B "$work/build" "${gen[@]}" -DRECFAST_SANITIZE=ON -DRECFAST_CUDA=OFF -DCMAKE_BUILD_TYPE=Release \
  -Dpybind11_DIR="$pybind_dir" -DPython_EXECUTABLE="$(command -v "$py")" \
  -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$work/lib" >/dev/null
cmake --build "$work/build" -j "${JOBS:-2}" >/dev/null
mkdir -p "$work/site"
cp -r "$root/recfast" "$work/site/"
rm -f "$work/site/recfast/"_C*.so
cp "$work/lib/"_C*.so "$work/site/recfast/"
tests=()
for t in build csr sampling loaders bpr optim spmm graph topk eval robustness int64; do
  [ -f "$root/tests/test_$t.py" ] && tests+=("$root/tests/test_$t.py")
done
cd "$work"
# Leaks are not checked: the Python interpreter itself holds memory at exit.
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
export PYTHONPATH="$work/site" RECFAST_EXPECT_SANITIZE=1
"$py" -m pytest -q -p no:cacheprovider -c "$root/pyproject.toml" --rootdir "$root" "${tests[@]}" "$@"
