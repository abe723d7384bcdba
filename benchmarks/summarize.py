"""Print the benchmark records in benchmarks/results/*.json as a markdown table (for the README).

  python benchmarks/summarize.py [results/*.json ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
KEYS = ("dataset", "graph", "d", "batch", "k", "layers")


def _cpu_label(env: dict) -> str:
    """'CPU, 2 threads', with the vendor and x86 family where the record names them (AMD Zen 3 is
    family 25, Zen 5 26; Intel's Xeons are 6) and whether the AVX-512 sampling path was available,
    so rows from different hosts differ."""
    label = "CPU, %s threads" % env.get("threads", "?")
    model = env.get("cpu_model", "")
    if "family" in model:
        vendor = model.split()[0].replace("(R)", "")  # "family" is in model, so it has a word
        label += ", %s family " % vendor if vendor in ("AMD", "Intel") else ", family "
        label += model.split("family", 1)[1].split(",")[0].strip()
        label += ", AVX-512" if "avx512" in env.get("sampling_isas", []) else ", no AVX-512"
    return label


def main(argv: list[str]) -> None:
    files = [Path(a) for a in argv] or sorted(f for f in RESULTS.glob("*.json") if not f.stem.endswith("_quick"))
    print("| device | op | case | recfast ms | baseline | baseline ms | speedup |")
    print("|---|---|---|---:|---|---:|---:|")
    for f in files:
        records = json.loads(f.read_text())
        if not isinstance(records, list):  # quality_cpu.json: a table of its own (bench_quality.py)
            continue
        for r in records:
            dev = r["env"].get("gpu") or _cpu_label(r["env"])
            case = " ".join(f"{k}={r['params'][k]}" for k in KEYS if k in r["params"])
            print(f"| {dev} | {r['op']} | {case} | {r['recfast_ms']:.3g} | {r['baseline']} | {r['baseline_ms']:.3g} | "
                  f"{r['speedup']:.2f}x |")


if __name__ == "__main__":
    main(sys.argv[1:])
