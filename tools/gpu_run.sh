#!/usr/bin/env bash
# On a GPU machine: build with CUDA, run the whole test suite (CUDA tests included), then the
# benchmarks on the GPU. Logs and JSON go to $OUT (or ./gpu_out).
# Usage: tools/gpu_run.sh [tests|bench|all]
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu_out}
mkdir -p "$out"
what=${1:-all}
py=${PYTHON:-python3}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
PYTHON=$py JOBS=${JOBS:-16} tools/build_inplace.sh -DRECFAST_CUDA=ON 2>&1 | tail -2
$py -c "import recfast; print(recfast.build_info()); assert recfast.cuda_available()" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
status=0
if [ "$what" != bench ]; then
  $py -m pytest -q -x -p no:cacheprovider tests ${PYTEST_ARGS:-} 2>&1 | tee "$out/pytest.log" | tail -25
  status=${PIPESTATUS[0]}
fi
if [ "$what" != tests ]; then
  for b in benchmarks/bench_*.py; do
    name=$(basename "$b" .py)
    echo "== $name (cuda)"
    timeout "${BENCH_TIMEOUT:-150}" $py "$b" --device cuda --out "$out/${name#bench_}_cuda.json" ${BENCH_ARGS:-} 2>&1 \
      | tee "$out/$name.log" | tail -15
  done
fi
exit $status
