"""Timing and recording shared by the benchmark scripts.

Every script times recfast and its baselines in the same process, checks that their outputs
agree, and records medians of repeats (the machines are shared and noisy) in one JSON file.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch

import recfast

RESULTS = Path(__file__).resolve().parent / "results"


def base_parser(description: str, op: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--repeat", type=int, default=7, help="timed repeats; the median is reported")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="small sizes, to check the script runs")
    p.add_argument("--out", type=Path, default=None, help=f"JSON output (default results/{op}_<device>.json)")
    return p


def sync(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_fn(fn: Callable[[], Any], *, device: str | torch.device = "cpu", repeat: int = 7, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` in milliseconds, synchronizing CUDA around each call."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeat):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


@functools.lru_cache(maxsize=1)
def _cpu_model() -> str:
    """The CPU's name and x86 family/model from /proc/cpuinfo (VMs often report a bare "AMD EPYC";
    the family tells Zen 3 (25) from Zen 5 (26)), or the platform string elsewhere."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                k, _, v = line.partition(":")
                fields[k.strip()] = v.strip()
    except OSError:
        return platform.processor() or platform.machine()
    name = fields.get("model name", platform.machine())
    return f"{name} (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')})"


def env_record(device: str | torch.device = "cpu") -> dict[str, Any]:
    info = recfast.build_info()
    env: dict[str, Any] = {
        "recfast": recfast.__version__,
        "build": {"cuda": info["cuda"], "openmp": info["openmp"], "native": info["native"]},
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_model": _cpu_model(),
        "sampling_isas": list(recfast._C.sampling_isas()),
        "threads": info["openmp_max_threads"],
        "torch_threads": torch.get_num_threads(),
    }
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    return env


def write_results(records: list[dict[str, Any]], out: Path | None, op: str, device: str, quick: bool = False) -> Path:
    # A smoke run (--quick) writes beside the recorded results, not over them (git ignores it).
    out = out or RESULTS / f"{op}_{device}{'_quick' if quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(records, indent=2) + "\n")
    return out


def record(op: str, baseline: str, device: str, params: dict[str, Any], recfast_ms: float, baseline_ms: float,
           **extra: Any) -> dict[str, Any]:
    """One result in the layout of STYLE.md; speedup is baseline over recfast, same run."""
    r = {
        "op": op,
        "baseline": baseline,
        "device": device,
        "params": params,
        "recfast_ms": round(recfast_ms, 4),
        "baseline_ms": round(baseline_ms, 4),
        "speedup": round(baseline_ms / recfast_ms, 3) if recfast_ms > 0 else None,
        "env": env_record(device),
    }
    r.update(extra)
    return r


def print_table(records: list[dict[str, Any]]) -> None:
    """One line per case: op, baseline, params, both medians and the ratio."""
    for r in records:
        params = " ".join(f"{k}={v}" for k, v in r["params"].items())
        print(f"{r['op']:<18} vs {r['baseline']:<28} {params:<48} recfast {r['recfast_ms']:>10.3f} ms  "
              f"baseline {r['baseline_ms']:>10.3f} ms  speedup {r['speedup']}x")
