"""Masked top-k for every user, against torch (mm, -inf on training items, topk), numpy
argpartition and implicit's batch recommend; with the bare GEMM of the same shapes (the floor),
peak extra memory, agreement of the returned items, and the full Evaluator pass.

Peak extra memory: recfast's buffers are block x tile scores plus B x k results; the torch
baseline's score block is batch x n_items (both computed from the shapes, in bytes; on CUDA,
torch.cuda.max_memory_allocated is recorded too).

  python benchmarks/bench_topk.py [--device cuda] [--large] [--quick]
"""

from __future__ import annotations

import importlib
import statistics
import time

import numpy as np
import torch

import recfast
from _common import base_parser, print_table, record, time_fn, write_results


def torch_masked_topk(U, V, train, k, batch):
    out = []
    dev = U.device
    for s in range(0, U.shape[0], batch):
        users = torch.arange(s, min(s + batch, U.shape[0]), device=dev)
        scores = U[users] @ V.T
        lens = train.row_lengths()[users]
        r = torch.repeat_interleave(torch.arange(users.numel(), device=dev), lens)
        starts = train.indptr[users]
        pos = torch.arange(int(lens.sum()), device=dev) - torch.repeat_interleave(torch.cumsum(lens, 0) - lens, lens)
        cols = train.indices[torch.repeat_interleave(starts, lens) + pos].long()
        scores.index_put_((r, cols), torch.tensor(float("-inf"), device=dev))
        out.append(torch.topk(scores, k, dim=1).indices)
    return torch.cat(out)


def numpy_argpartition(U, V, train_sp, k, batch):
    out = []
    for s in range(0, U.shape[0], batch):
        scores = U[s:s + batch] @ V.T
        sub = train_sp[s:s + batch]
        scores[sub.nonzero()] = -np.inf
        part = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.take_along_axis(scores, part, 1).argsort(axis=1)[:, ::-1]
        out.append(np.take_along_axis(part, order, 1))
    return np.concatenate(out)


def interleaved_ms(fns, repeat):
    """Median ms of each function, timed in turn (A, B, A, B, ...) so that load from other processes
    hits both alike; one untimed warm-up each."""
    for f in fns:
        f()
    times = [[] for _ in fns]
    for _ in range(repeat):
        for t, f in zip(times, fns):
            t0 = time.perf_counter()
            f()
            t.append((time.perf_counter() - t0) * 1e3)
    return [statistics.median(t) for t in times]


def main() -> None:
    p = base_parser(__doc__, "topk")
    p.add_argument("--large", action="store_true", help="also 200,000 users x 200,000 items")
    p.add_argument("--k", type=int, default=20)
    args = p.parse_args()
    dev, k, d = args.device, args.k, 64
    sets = [("small", 3_000, 4_000, 60_000)] if args.quick else [("gowalla", 29_858, 40_981, 810_128)]
    if args.large:
        sets.append(("large", 200_000, 200_000, 5_000_000))
    records = []
    for name, nu, ni, nnz in sets:
        x = recfast.data.synthetic(nu, ni, nnz, seed=args.seed)
        tr, te = recfast.data.stratified_split(x, (0.8, 0.2), seed=args.seed)
        train, test = tr.to_csr().to(dev), te.to_csr()
        g = torch.Generator().manual_seed(args.seed)
        U = torch.randn(nu, d, generator=g).to(dev)
        V = torch.randn(ni, d, generator=g).to(dev)
        params = {"dataset": name, "n_users": nu, "n_items": ni, "d": d, "k": k}
        reps = max(3, args.repeat // 2)
        # the large set's baselines take a minute or more per pass: the comparison pass warms them
        # up, then one timed pass
        b_reps, b_warm = (1, 0) if name == "large" else (reps, 1)
        ours = recfast.ops.topk(U, V, k, exclude=train)[1]
        rf = time_fn(lambda: recfast.ops.topk(U, V, k, exclude=train), device=dev, repeat=reps, warmup=1)
        block, tile = (2048, 8192) if dev == "cuda" else (512, 1024)
        rf_mem = 4 * (block * tile + 2 * nu * k)
        # the floor: the bare GEMM of the same shapes into a preallocated buffer
        buf = torch.empty(4096, ni, device=dev)

        def gemm():
            for s in range(0, nu, 4096):
                e = min(s + 4096, nu)
                torch.mm(U[s:e], V.T, out=buf[: e - s])

        gemm_ms = time_fn(gemm, device=dev, repeat=reps, warmup=1)
        print(f"[{name}] recfast {rf:.0f} ms ({nu / rf * 1e3 / 1e3:.1f}k users/s), bare GEMM {gemm_ms:.0f} ms")
        extra = {"recfast_users_per_s": nu / rf * 1e3, "bare_gemm_ms": round(gemm_ms, 2),
                 "recfast_over_gemm": round(rf / gemm_ms, 3), "recfast_peak_extra_bytes": rf_mem}
        for batch in (1024, 4096):
            theirs = torch_masked_topk(U, V, train, k, batch)
            same = float((torch.sort(theirs, 1).values == torch.sort(ours, 1).values).all(1).float().mean())
            ms = time_fn(lambda: torch_masked_topk(U, V, train, k, batch), device=dev, repeat=b_reps, warmup=b_warm)
            records.append(record("topk_all_users", f"torch_mm_mask_topk(batch={batch})", dev, params, rf, ms,
                                  baseline_peak_extra_bytes=4 * batch * ni, same_items_fraction=same, **extra))
        if dev == "cpu":
            Un, Vn = U.numpy(), V.numpy()
            sp = train.to_scipy()
            theirs = numpy_argpartition(Un, Vn, sp, k, 4096)
            same = float((np.sort(theirs, 1) == np.sort(ours.numpy(), 1)).all(1).mean())
            ms = time_fn(lambda: numpy_argpartition(Un, Vn, sp, k, 4096), repeat=b_reps, warmup=b_warm)
            records.append(record("topk_all_users", "numpy_argpartition(batch=4096)", dev, params, rf, ms,
                                  baseline_peak_extra_bytes=4 * 4096 * ni, same_items_fraction=same, **extra))
            try:
                from implicit.cpu.als import AlternatingLeastSquares

                mf = AlternatingLeastSquares(factors=d)  # only its recommend() runs, on our factors
                mf.user_factors, mf.item_factors = Un, Vn
                users = np.arange(nu)
                ids, _ = mf.recommend(users, sp[users], N=k, filter_already_liked_items=True)
                same = float((np.sort(ids, 1) == np.sort(ours.numpy(), 1)).all(1).mean())
                ms = time_fn(lambda: mf.recommend(users, sp[users], N=k, filter_already_liked_items=True),
                             repeat=b_reps, warmup=b_warm)
                records.append(record("topk_all_users", "implicit_recommend", dev, params, rf, ms,
                                      same_items_fraction=same, **extra))
            except ImportError:
                print("  implicit not installed: its baseline is skipped (pip install '.[bench]')")
            # A/B of recfast's own CPU kernels: the fused kernel (what "auto" picks with AVX-512)
            # against torch.mm tiles + topk_merge (the "gemm" kernel), interleaved in one run.
            mod = importlib.import_module("recfast.ops.topk")
            kernels = {}
            for kind in ("fused", "gemm"):
                mod._CPU_KERNEL = kind
                kernels[kind] = recfast.ops.topk(U, V, k, exclude=train)
            mod._CPU_KERNEL = "auto"
            same = float((kernels["fused"][1] == kernels["gemm"][1]).all(1).float().mean())

            def with_kernel(kind):
                def f():
                    mod._CPU_KERNEL = kind
                    try:
                        recfast.ops.topk(U, V, k, exclude=train)
                    finally:
                        mod._CPU_KERNEL = "auto"
                return f

            fused_ms, gemm_k_ms = interleaved_ms([with_kernel("fused"), with_kernel("gemm")],
                                                 b_reps if name == "large" else reps)
            print(f"[{name}] fused kernel {fused_ms:.0f} ms, gemm kernel {gemm_k_ms:.0f} ms (interleaved medians)")
            records.append(record("topk_all_users", "recfast_gemm_kernel(torch.mm tiles + topk_merge)", dev,
                                  {**params, "recfast_kernel": "fused-" + recfast._C.topk_fused_best_isa()},
                                  fused_ms, gemm_k_ms, same_items_fraction=same))
        ev = recfast.eval.Evaluator(train.to("cpu"), test, ks=(10, 20))
        ev_ms = time_fn(lambda: ev.evaluate(user_emb=U, item_emb=V), device=dev, repeat=reps, warmup=1)
        users_eval = ev.users.to(dev)
        only = time_fn(lambda: recfast.ops.topk(U[users_eval], V, k, exclude=train, rows=users_eval), device=dev,
                       repeat=reps, warmup=1)
        records.append(record("evaluator_full_pass", "recfast_topk_alone", dev,
                              {**params, "metrics": "recall,ndcg,precision,hit,mrr,map @10,20"}, ev_ms, only))
    out = write_results(records, args.out, "topk", dev, quick=args.quick)
    print_table(records)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
