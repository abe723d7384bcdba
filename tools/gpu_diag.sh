#!/usr/bin/env bash
# GPU run in pieces: build, each test file in its own process (one crash does not hide the rest),
# then the CUDA benchmarks. Under $OUT: tests.log, bench.log and the benchmarks' JSON records.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu_out}; mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1
PYTHON=python3 JOBS=16 tools/build_inplace.sh -DRECFAST_CUDA=ON > "$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 1; }
python3 -c "import recfast; print(recfast.build_info())"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
: > "$out/tests.log"
for f in tests/test_*.py; do
  printf '%-28s ' "$(basename "$f")" | tee -a "$out/tests.log"
  python3 -m pytest -q -p no:cacheprovider "$f" > /tmp/one.log 2>&1
  rc=$?
  echo "rc=$rc $(tail -1 /tmp/one.log)" | tee -a "$out/tests.log"
  [ $rc -ne 0 ] && grep -B2 -A15 -E "^(FAILED|E  )|Fatal Python|Error" /tmp/one.log | head -60 >> "$out/tests.log"
done
grep -A15 -E "Fatal Python|^E  " "$out/tests.log" | head -40
if [ "${BENCH:-1}" = 1 ]; then
  : > "$out/bench.log"
  for b in propagation topk sampling bpr; do
    echo "== bench_$b (cuda)" | tee -a "$out/bench.log"
    timeout 150 python3 benchmarks/bench_$b.py --device cuda --out "$out/${b}_cuda.json" 2>&1 \
      | grep -vE "Warning|return torch" | tee -a "$out/bench.log" | tail -9
  done
fi
