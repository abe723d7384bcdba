"""Sparse propagation: one SpMM layer, a layer forward+backward, and a LightGCN training step
(3 layers forward+backward + BPR on 2,048 triples), against torch.sparse.mm (CSR and COO),
embedding_bag, scipy and numba, on the Gowalla-shaped bipartite graph (and a ~2M-node, 100M-edge
graph with --large). Reports ms, GB/s against the compulsory bytes and the copy bandwidth
measured in the same run.

Compulsory bytes of one SpMM (n rows, nnz entries, width d, 4-byte floats and indices):
indptr 8(n+1) + indices 4 nnz + values 4 nnz + dense input 4 n d + output 4 n d.

  python benchmarks/bench_propagation.py [--device cuda] [--large] [--quick]
"""

from __future__ import annotations

import time
import warnings

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


def main() -> None:
    p = base_parser(__doc__, "propagation")
    p.add_argument("--large", action="store_true", help="also ~2M nodes / 100M nonzeros")
    p.add_argument("--d", type=int, default=64)
    args = p.parse_args()
    dev, d = args.device, args.d
    graphs = [("small", 3_000, 4_000, 80_000)] if args.quick else [("gowalla", 29_858, 40_981, 810_128)]
    if args.large:
        graphs.append(("large", 1_200_000, 800_000, 50_000_000))
    bw = copy_bandwidth(dev)
    print(f"copy bandwidth (read + write) on {dev}: {bw:.1f} GB/s")
    records = []
    for name, nu, ni, nnz in graphs:
        t0 = time.perf_counter()
        train = recfast.data.synthetic(nu, ni, nnz, seed=args.seed).to_csr()
        adj = recfast.graph.normalized_adjacency(train).to(dev)
        n = adj.n_rows
        print(f"[{name}] {adj} built in {time.perf_counter() - t0:.1f}s")
        g = torch.Generator().manual_seed(args.seed)
        x = torch.randn(n, d, generator=g).to(dev)
        ref = torch.sparse_csr_tensor(adj.indptr, adj.indices.long(), adj.values, adj.shape)
        out = recfast.ops.spmm(adj, x)
        assert torch.allclose(out, ref @ x, rtol=1e-4, atol=1e-5), "spmm disagrees with torch.sparse"
        params = {"graph": name, "nodes": n, "nnz": adj.nnz, "d": d}
        rf = time_fn(lambda: recfast.ops.spmm(adj, x), device=dev, repeat=args.repeat, warmup=args.warmup)
        comp = 8 * (n + 1) + 8 * adj.nnz + 2 * 4 * n * d
        gbs = comp / (rf / 1e3) / 1e9
        extra = {"compulsory_bytes": comp, "recfast_gb_per_s": round(gbs, 2), "copy_gb_per_s": round(bw, 2),
                 "fraction_of_copy_bandwidth": round(gbs / bw, 3)}
        print(f"  recfast spmm {rf:.2f} ms = {gbs:.1f} GB/s of compulsory traffic ({100 * gbs / bw:.0f}% of copy)")
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
            recfast.ops.bpr_loss(final[:nu], final[nu:], u, i, j).backward()

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
    out = write_results(records, args.out, "propagation", dev)
    print_table(records)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
