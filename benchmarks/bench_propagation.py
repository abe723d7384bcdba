"""Sparse propagation: one SpMM layer, a layer forward+backward, and a LightGCN training step
(3 layers forward+backward + BPR on 2,048 triples), against torch.sparse.mm (CSR and COO),
embedding_bag, scipy and numba, on the Gowalla-shaped bipartite graph (and a ~2M-node, 100M-edge
graph with --large). Reports ms, GB/s against the compulsory bytes and the copy bandwidth
measured in the same run.

Compulsory bytes of one SpMM (n rows, nnz entries, width d, 4-byte floats and indices):
indptr 8(n+1) + indices 4 nnz + values 4 nnz + dense input 4 n d + output 4 n d.

  python benchmarks/bench_propagation.py [--device cuda] [--large] [--quick] [--compare-build PATH]
                                        [--cache DIR]

--cache keeps each synthetic graph (the train matrix and its normalized adjacency) as an .npz in
DIR and loads it on later runs (the large graph takes minutes to generate).

THP_MEM_ALLOC_ENABLE=1 in the environment makes torch's CPU allocator ask for transparent huge
pages, for every contender's tensors alike (the dense input included: with 4 KiB pages nearly every
random row gather of the large graph misses the TLB). It is recorded in the JSON env as "thp".
recfast's own outputs and layer buffers ask for huge pages either way.

--compare-build loads another build's recfast._C (a _C*.so, or a folder holding one: e.g. main's
build) and times its spmm and 3-layer lightgcn_propagate kernels against this build's, interleaved
call by call in this process (A/B on a shared machine), baseline "build:<path>".
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

import recfast
from _common import base_parser, print_table, record, time_fn, write_results

warnings.filterwarnings("ignore", message=".*Sparse.*")

try:
    import numba
except ImportError:  # pragma: no cover
    numba = None

if numba is not None:
    @numba.njit(parallel=True, cache=True)
    def numba_spmm(indptr, indices, values, x, out):
        for r in numba.prange(indptr.size - 1):
            out[r, :] = 0.0
            for p in range(indptr[r], indptr[r + 1]):
                out[r, :] += values[p] * x[indices[p], :]


def copy_bandwidth(dev: str) -> float:
    a = torch.empty(64 * 2**20 // 4 * 4, dtype=torch.float32, device=dev).uniform_()
    b = torch.empty_like(a)
    ms = time_fn(lambda: b.copy_(a), device=dev, repeat=9, warmup=2)
    return 2 * a.numel() * 4 / (ms / 1e3) / 1e9


def load_build(path: str):
    """Another build's recfast._C extension module, loaded beside ours under another name."""
    p = Path(path)
    if p.is_dir():
        found = sorted(p.glob("_C.*.so")) + sorted(p.glob("recfast/_C.*.so"))
        if not found:
            raise SystemExit(f"--compare-build: no _C*.so in {p}")
        p = found[0]
    spec = importlib.util.spec_from_file_location("recfast_compare._C", p)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def interleaved(fa, fb, repeat: int, warmup: int) -> tuple[float, float, float]:
    """Medians of fa and fb timed alternately, and the median of the per-pair ratios a / b."""
    for _ in range(warmup):
        fa(), fb()
    ta, tb = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fa()
        t1 = time.perf_counter()
        fb()
        t2 = time.perf_counter()
        ta.append((t1 - t0) * 1e3)
        tb.append((t2 - t1) * 1e3)
    return statistics.median(ta), statistics.median(tb), statistics.median(a / b for a, b in zip(ta, tb))


def compare_builds(other, adj, x, params: dict, args) -> list[dict]:
    """This build's kernels (recfast) against another build's (baseline), same inputs, interleaved."""
    from recfast import _C

    n, d = x.shape
    ip, ix, vv, xn = adj.indptr.numpy(), adj.indices.numpy(), adj.values.numpy(), x.numpy()
    bufs = [torch.empty(n, d).numpy() for _ in range(6)]
    w = [0.25] * 4
    cases = {
        "spmm": (lambda: _C.spmm(ip, ix, vv, xn, bufs[0], 0), lambda: other.spmm(ip, ix, vv, xn, bufs[3], 0)),
        "lightgcn_propagate": (lambda: _C.lightgcn_propagate(ip, ix, vv, xn, w, *bufs[:3], 0),
                               lambda: other.lightgcn_propagate(ip, ix, vv, xn, w, *bufs[3:], 0)),
    }
    out = []
    for op, (ours, theirs) in cases.items():
        repeat = max(3 * args.repeat, 15)
        theirs_ms, ours_ms, ratio = interleaved(theirs, ours, repeat, args.warmup)
        print(f"  {op}: this build {ours_ms:.2f} ms, {args.compare_build} {theirs_ms:.2f} ms, "
              f"median pairwise ratio {ratio:.3f}")
        out.append(record(op, f"build:{args.compare_build}", "cpu", {**params, "layers": 3} if op != "spmm" else params,
                          ours_ms, theirs_ms, pairwise_speedup=round(ratio, 3),
                          max_abs_diff=float(abs(bufs[0] - bufs[3]).max())))
    return out


def build_graph(name: str, nu: int, ni: int, nnz: int, seed: int, cache: Path | None):
    """The synthetic train matrix and its symmetric normalized adjacency, from DIR/name.npz when cached."""
    f = None if cache is None else cache / f"propagation_{name}_{nu}_{ni}_{nnz}_seed{seed}.npz"
    if f is not None and f.exists():
        z = np.load(f)
        train = recfast.CSR(torch.from_numpy(z["indptr"]), torch.from_numpy(z["indices"]), (nu, ni), check=False)
        adj = recfast.CSR(torch.from_numpy(z["a_indptr"]), torch.from_numpy(z["a_indices"]), (nu + ni, nu + ni),
                          torch.from_numpy(z["a_values"]), check=False, symmetric=True)
        return train, adj
    train = recfast.data.synthetic(nu, ni, nnz, seed=seed).to_csr()
    adj = recfast.graph.normalized_adjacency(train)
    if f is not None:
        f.parent.mkdir(parents=True, exist_ok=True)
        np.savez(f, indptr=train.indptr.numpy(), indices=train.indices.numpy(), a_indptr=adj.indptr.numpy(),
                 a_indices=adj.indices.numpy(), a_values=adj.values.numpy())
    return train, adj


def main() -> None:
    p = base_parser(__doc__, "propagation")
    p.add_argument("--large", action="store_true", help="also ~2M nodes / 100M nonzeros")
    p.add_argument("--d", type=int, default=64)
    p.add_argument("--compare-build", default=None, help="another build's _C*.so (or its folder), CPU only")
    p.add_argument("--cache", type=Path, default=None, help="keep the synthetic graphs as .npz in this folder")
    args = p.parse_args()
    dev, d = args.device, args.d
    other = load_build(args.compare_build) if args.compare_build and dev == "cpu" else None
    graphs = [("small", 3_000, 4_000, 80_000)] if args.quick else [("gowalla", 29_858, 40_981, 810_128)]
    if args.large:
        graphs.append(("large", 1_200_000, 800_000, 50_000_000))
    bw = copy_bandwidth(dev)
    thp = os.environ.get("THP_MEM_ALLOC_ENABLE", "0") not in ("", "0")
    print(f"copy bandwidth (read + write) on {dev}: {bw:.1f} GB/s; torch huge pages (THP_MEM_ALLOC_ENABLE): {thp}")
    records = []
    for name, nu, ni, nnz in graphs:
        t0 = time.perf_counter()
        train, adj = build_graph(name, nu, ni, nnz, args.seed, args.cache)
        adj = adj.to(dev)
        n = adj.n_rows
        print(f"[{name}] {adj} built in {time.perf_counter() - t0:.1f}s")
        g = torch.Generator().manual_seed(args.seed)
        x = torch.randn(n, d, generator=g).to(dev)
        ref = torch.sparse_csr_tensor(adj.indptr, adj.indices.long(), adj.values, adj.shape)
        out = recfast.ops.spmm(adj, x)
        assert torch.allclose(out, ref @ x, rtol=1e-4, atol=1e-5), "spmm disagrees with torch.sparse"
        params = {"graph": name, "nodes": n, "nnz": adj.nnz, "d": d, "thp": thp}
        rf = time_fn(lambda: recfast.ops.spmm(adj, x), device=dev, repeat=args.repeat, warmup=args.warmup)
        comp = 8 * (n + 1) + 8 * adj.nnz + 2 * 4 * n * d
        gbs = comp / (rf / 1e3) / 1e9
        extra = {"compulsory_bytes": comp, "recfast_gb_per_s": round(gbs, 2), "copy_gb_per_s": round(bw, 2),
                 "fraction_of_copy_bandwidth": round(gbs / bw, 3)}
        print(f"  recfast spmm {rf:.2f} ms = {gbs:.1f} GB/s of compulsory traffic ({100 * gbs / bw:.0f}% of copy)")
        if other is not None:
            records += compare_builds(other, adj, x, params, args)
        records.append(record("spmm", "torch_sparse_csr", dev, params, rf,
                              time_fn(lambda: ref @ x, device=dev, repeat=args.repeat, warmup=args.warmup), **extra))
        coo = ref.to_sparse_coo().coalesce()
        records.append(record("spmm", "torch_sparse_coo", dev, params, rf,
                              time_fn(lambda: torch.sparse.mm(coo, x), device=dev, repeat=args.repeat), **extra))
        rows = torch.repeat_interleave(torch.arange(n, device=dev), adj.row_lengths())
        offsets = adj.indptr[:-1]
        eb = torch.nn.functional.embedding_bag
        records.append(record("spmm", "embedding_bag", dev, params, rf, time_fn(
            lambda: eb(adj.indices.long(), x, offsets, mode="sum", per_sample_weights=adj.values), device=dev,
            repeat=args.repeat), **extra))
        del rows
        if dev == "cpu":
            a_sp = adj.to_scipy()
            xn = x.numpy()
            records.append(record("spmm", "scipy", dev, params, rf, time_fn(lambda: a_sp @ xn, repeat=args.repeat),
                                  **extra))
            if numba is not None:
                o = np.empty_like(xn)
                ip, ix, vv = adj.indptr.numpy(), adj.indices.numpy(), adj.values.numpy()
                numba_spmm(ip, ix, vv, xn, o)
                records.append(record("spmm", "numba_csr", dev, params, rf,
                                      time_fn(lambda: numba_spmm(ip, ix, vv, xn, o), repeat=args.repeat), **extra))
        # one layer forward + backward
        xg = x.clone().requires_grad_()

        def rf_fb():
            xg.grad = None
            recfast.ops.spmm(adj, xg).sum().backward()

        def t_fb():
            xg.grad = None
            torch.sparse.mm(ref, xg).sum().backward()

        records.append(record("spmm_fwd_bwd", "torch_sparse_csr_autograd", dev, params,
                              time_fn(rf_fb, device=dev, repeat=args.repeat, warmup=args.warmup),
                              time_fn(t_fb, device=dev, repeat=args.repeat, warmup=args.warmup)))
        # LightGCN training step: 3 layers forward + backward, BPR on 2,048 triples
        emb = (torch.randn(n, d, generator=g) * 0.1).to(dev).requires_grad_()
        loader = recfast.data.PairwiseLoader(train, 2_048, seed=args.seed, device=dev)
        u, i, j = next(iter(loader))

        def rf_step():
            emb.grad = None
            final = recfast.ops.lightgcn_propagate(adj, emb, 3)
            recfast.ops.bpr_loss(final, final, u, i + nu, j + nu).backward()  # one table: no slice copies

        def t_step():
            emb.grad = None
            cur, acc = emb, emb / 4
            for _ in range(3):
                cur = torch.sparse.mm(ref, cur)
                acc = acc + cur / 4
            uu, ii = acc[:nu], acc[nu:]
            x_ = (uu[u] * (ii[i] - ii[j])).sum(-1)
            torch.nn.functional.softplus(-x_).mean().backward()

        records.append(record("lightgcn_step", "torch_sparse_mm_autograd", dev, {**params, "layers": 3, "batch": 2048},
                              time_fn(rf_step, device=dev, repeat=args.repeat, warmup=args.warmup),
                              time_fn(t_step, device=dev, repeat=max(3, args.repeat // 2), warmup=1)))
    out = write_results(records, args.out, "propagation", dev, quick=args.quick)
    print_table(records)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
