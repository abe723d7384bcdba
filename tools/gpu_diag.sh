#!/usr/bin/env bash
# GPU run in pieces: build, a crash diagnosis, each test file in its own process (one crash does
# not hide the rest), then the CUDA benchmarks. Output under $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu_out}; mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1
PYTHON=python3 JOBS=16 tools/build_inplace.sh -DRECFAST_CUDA=ON > "$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 1; }
echo "== OpenMP libraries"; ldd recfast/_C*.so | grep -iE "omp|gomp"
ls "$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))')/lib" | grep -iE "omp" || true
echo "== test_csr alone";    python3 -m pytest -q -p no:cacheprovider tests/test_csr.py 2>&1 | tail -2
echo "== test_csr, 1 thread"; OMP_NUM_THREADS=1 python3 -m pytest -q -p no:cacheprovider tests/test_csr.py 2>&1 | tail -2
echo "== bpr then csr";      python3 -m pytest -q -p no:cacheprovider tests/test_bpr.py tests/test_csr.py 2>&1 | grep -E "passed|failed|Fatal|File \"/work" | head -8
for f in tests/test_*.py; do
  printf '%-28s ' "$(basename "$f")"
  python3 -m pytest -q -p no:cacheprovider "$f" > "$out/$(basename "$f" .py).log" 2>&1
  echo "rc=$? $(tail -1 "$out/$(basename "$f" .py).log")"
done
grep -h -B2 -A12 -E "^(FAILED|E  )|Fatal Python" "$out"/test_*.log | head -80
if [ "${BENCH:-1}" = 1 ]; then
  for b in propagation topk sampling bpr; do
    echo "== bench_$b (cuda)"
    timeout 150 python3 benchmarks/bench_$b.py --device cuda --out "$out/${b}_cuda.json" > "$out/bench_$b.log" 2>&1
    grep -vE "Warning|return torch" "$out/bench_$b.log" | tail -9
  done
fi
