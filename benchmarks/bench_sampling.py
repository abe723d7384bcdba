"""Negative sampling: recfast's rejection-free kernel against rejection samplers, same run.

Baselines:
  torch_rejection     vectorised torch: draw uniformly, test membership with searchsorted on the
                      sorted CSR row, redraw the hits until none is left
  numba_rejection     numba prange over rows: draw, binary-search the row, retry (skipped without numba)
  python_loop         the tutorials' per-sample loop with a Python set per user, on a subsample,
                      extrapolated

Reports negatives/s for one draw per training interaction (users in epoch order, i.e. shuffled),
and a whole epoch of (user, pos, neg) triples with the shuffle included (the CPU loader computes
its seeded order on the fly inside the batch kernel), with uniform and with weighted negatives.

  python benchmarks/bench_sampling.py [--large] [--device cuda] [--quick]
"""

from __future__ import annotations

import random
import time

import numpy as np
import torch

import recfast
from _common import base_parser, print_table, record, sync, time_fn, write_results

try:
    import numba
except ImportError:  # pragma: no cover
    numba = None


def torch_rejection(indptr, indices, n_items, users, g):
    """Draw, test by searchsorted within the row, redraw hits; correct but retries."""
    neg = torch.randint(0, n_items, users.shape, generator=g, device=users.device)
    todo = torch.arange(users.numel(), device=users.device)
    idx64 = indices.to(torch.int64)
    while todo.numel():
        u = users[todo]
        lo, hi = indptr[u], indptr[u + 1]
        cand = neg[todo]
        # binary search of cand in indices[lo:hi], vectorised
        left, right = lo.clone(), hi.clone()
        for _ in range(int(torch.log2(torch.tensor(float(max(1, int((hi - lo).max()) if u.numel() else 1)))).ceil()) + 1):
            mid = (left + right) // 2
            val = idx64[mid.clamp_max(idx64.numel() - 1)]
            go = (mid < right) & (val < cand)
            left = torch.where(go, mid + 1, left)
            right = torch.where(go | (mid >= right), right, mid)
        hit = (left < hi) & (idx64[left.clamp_max(idx64.numel() - 1)] == cand)
        todo = todo[hit]
        neg[todo] = torch.randint(0, n_items, (todo.numel(),), generator=g, device=users.device)
    return neg


if numba is not None:
    @numba.njit(parallel=True, cache=True)
    def _numba_rejection(indptr, indices, n_items, users, out):
        # numba gives each thread its own generator state; no reseeding in the loop.
        n = users.shape[0]
        for b in numba.prange(n):
            u = users[b]
            lo, hi = indptr[u], indptr[u + 1]
            while True:
                j = np.random.randint(0, n_items)
                a, c = lo, hi
                while a < c:
                    m = (a + c) >> 1
                    if indices[m] < j:
                        a = m + 1
                    else:
                        c = m
                if a == hi or indices[a] != j:
                    out[b] = j
                    break


def python_loop(pos_sets, n_items, users):
    out = []
    for u in users:
        s = pos_sets[u]
        while True:
            j = random.randrange(n_items)
            if j not in s:
                out.append(j)
                break
    return out


def check_exact(csr, users, neg):
    dense_rows = csr.to("cpu")
    ip, ix = dense_rows.indptr.numpy(), dense_rows.indices.numpy()
    u, n = users.cpu().numpy(), neg.cpu().numpy().reshape(-1)
    sample = np.random.default_rng(0).choice(u.size, min(u.size, 200_000), replace=False)
    for b in sample[:5000]:
        row = ix[ip[u[b]]:ip[u[b] + 1]]
        assert not np.isin(n[b], row), "a negative is a positive"


def main() -> None:
    p = base_parser(__doc__, "sampling")
    p.add_argument("--large", action="store_true", help="also 1M users x 200k items x 50M interactions")
    args = p.parse_args()
    dev = args.device
    sizes = [("gowalla", 29_858, 40_981, 810_128)]
    if args.quick:
        sizes = [("small", 3_000, 4_000, 80_000)]
    if args.large:
        sizes.append(("large", 1_000_000, 200_000, 50_000_000))
    records = []
    for name, nu, ni, nnz in sizes:
        t0 = time.perf_counter()
        csr = recfast.data.synthetic(nu, ni, nnz, seed=args.seed).to_csr()
        print(f"[{name}] built {csr} in {time.perf_counter() - t0:.1f}s")
        users_sorted = torch.repeat_interleave(torch.arange(csr.n_rows), csr.row_lengths())
        users = users_sorted[torch.randperm(users_sorted.numel(), generator=torch.Generator().manual_seed(args.seed))]
        d_csr = csr.to(dev)
        d_users = users.to(dev)
        n = users.numel()
        params = {"dataset": name, "n_users": nu, "n_items": ni, "nnz": csr.nnz}

        neg = recfast.ops.sample_negatives(d_csr, d_users, 1, seed=1)
        check_exact(csr, users, neg)
        rf = time_fn(lambda: recfast.ops.sample_negatives(d_csr, d_users, 1, seed=1), device=dev,
                     repeat=args.repeat, warmup=args.warmup)
        print(f"  recfast uniform: {n / rf / 1e3:.1f} M negatives/s")
        if dev == "cpu" and "avx512" in recfast._C.sampling_isas():
            # The same kernel with its AVX-512 path switched off (bit-identical output).
            prev = recfast._C.set_sampling_isa("scalar")
            try:
                assert torch.equal(recfast.ops.sample_negatives(d_csr, d_users, 1, seed=1), neg)
                rfs = time_fn(lambda: recfast.ops.sample_negatives(d_csr, d_users, 1, seed=1), device=dev,
                              repeat=args.repeat, warmup=args.warmup)
            finally:
                recfast._C.set_sampling_isa(prev)
            records.append(record("sample_negatives", "recfast_scalar_path", dev, params, rf, rfs,
                                  note="AVX-512 uniform kernel against its scalar fallback"))
        w = (torch.bincount(csr.indices.long(), minlength=ni).double() ** 0.75).float().to(dev)
        negw = recfast.ops.sample_negatives(d_csr, d_users, 1, seed=1, weights=w)
        check_exact(csr, users, negw)
        rfw = time_fn(lambda: recfast.ops.sample_negatives(d_csr, d_users, 1, seed=1, weights=w), device=dev,
                      repeat=args.repeat, warmup=args.warmup)
        print(f"  recfast weighted (pop^0.75): {n / rfw / 1e3:.1f} M negatives/s")

        g = torch.Generator(device=dev).manual_seed(0)
        tneg = torch_rejection(d_csr.indptr, d_csr.indices, ni, d_users, g)
        check_exact(csr, users, tneg)
        tr = time_fn(lambda: torch_rejection(d_csr.indptr, d_csr.indices, ni, d_users, g), device=dev,
                     repeat=max(3, args.repeat // 2), warmup=1)
        records.append(record("sample_negatives", "torch_rejection", dev, params, rf, tr,
                              recfast_negatives_per_s=n / rf * 1e3, baseline_negatives_per_s=n / tr * 1e3))
        records.append(record("sample_negatives_weighted", "recfast_uniform", dev, params, rfw, rf,
                              note="weighted against uniform: speedup < 1 means weighted is slower"))
        if numba is not None and dev == "cpu":
            ip, ix, un = csr.indptr.numpy(), csr.indices.numpy(), users.numpy()
            out = np.empty(n, dtype=np.int64)
            _numba_rejection(ip, ix, ni, un, out)
            check_exact(csr, users, torch.from_numpy(out))
            nb = time_fn(lambda: _numba_rejection(ip, ix, ni, un, out), repeat=args.repeat, warmup=1)
            records.append(record("sample_negatives", "numba_rejection", dev, params, rf, nb,
                                  baseline_negatives_per_s=n / nb * 1e3, numba_threads=numba.get_num_threads()))
        elif numba is None:
            print("  numba not installed: numba_rejection skipped (pip install '.[bench]')")
        # the tutorials' loop, on a subsample, extrapolated
        sub = users[:50_000].tolist()
        ip, ix = csr.indptr.numpy(), csr.indices.numpy()
        pos_sets = {u: set(ix[ip[u]:ip[u + 1]].tolist()) for u in set(sub)}
        random.seed(0)
        t = time.perf_counter()
        python_loop(pos_sets, ni, sub)
        py_ms = (time.perf_counter() - t) * 1e3 * n / len(sub)
        records.append(record("sample_negatives", "python_loop(extrapolated)", dev, params, rf, py_ms))

        # An epoch of triples, shuffle included, in the batches a fused-kernel trainer takes (65,536)
        # and, on the Gowalla-shaped set, in BPR's usual 2,048, where the per-batch costs (the
        # call, its tensors, the threads' start) show (on the large set torch's loop would take
        # 24,000 batches a run); uniform against torch, weighted (pop^0.75) against uniform.
        def torch_epoch(bs):
            perm = torch.randperm(csr.nnz, device=dev)
            us, it = users_sorted.to(dev)[perm], csr.indices.to(dev).long()[perm]
            for s in range(0, csr.nnz, bs):
                torch_rejection(d_csr.indptr, d_csr.indices, ni, us[s:s + bs], g)
                _ = it[s:s + bs]

        for bs in (65_536, 2_048) if name != "large" else (65_536,):
            eparams = dict(params, batch=bs)
            times = {}
            for kind, ww in (("uniform", None), ("weighted", w)):
                loader = recfast.data.PairwiseLoader(csr, bs, seed=0, device=dev, weights=ww)

                def epoch():
                    for _ in loader:
                        pass

                times[kind] = time_fn(epoch, device=dev, repeat=max(3, args.repeat // 2), warmup=1)
            ep, wep = times["uniform"], times["weighted"]
            tep = time_fn(lambda: torch_epoch(bs), device=dev, repeat=3, warmup=1)
            records.append(record("pairwise_epoch", "torch_shuffle+rejection", dev, eparams, ep, tep,
                                  recfast_triples_per_s=csr.nnz / ep * 1e3))
            records.append(record("pairwise_epoch_weighted", "recfast_uniform_epoch", dev, eparams, wep, ep,
                                  recfast_triples_per_s=csr.nnz / wep * 1e3,
                                  note="weighted epoch against uniform epoch: speedup < 1 means weighted is slower"))
            print(f"  recfast epoch of triples, batch {bs}: {csr.nnz / ep / 1e3:.1f} M/s uniform, "
                  f"{csr.nnz / wep / 1e3:.1f} M/s weighted")
    out = write_results(records, args.out, "sampling", dev, quick=args.quick)
    print_table(records)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
