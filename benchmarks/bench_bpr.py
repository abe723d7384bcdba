"""Fused BPR against the plain torch reference, and end-to-end BPR-MF against implicit and a torch loop.

1. forward+backward of ``ops.bpr_loss`` vs torch (embedding gather, mul-sum, logsigmoid, autograd)
   at d in {32, 64, 128} and batch in {2,048, 65,536}, on Gowalla-sized tables;
2. BPR-MF training, d = 64: recfast's fused ``BPRMF.fit_sgd`` (``ops.bpr_sgd_epoch``) vs
   implicit's ``BayesianPersonalizedRanking`` (a bench extra, given the same ``--threads``) vs a
   plain torch loop (sparse embeddings + SparseAdam), samples/s and Recall@20 / NDCG@20 on
   held-out data after a fixed epoch budget, on the Gowalla-shaped synthetic set and on
   ../shared/data/ml-1m when present.

  python benchmarks/bench_bpr.py [--device cuda] [--quick] [--epochs 30]
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import recfast
from _common import base_parser, print_table, record, sync, write_results
from recfast.ops.bpr import _bpr_loss_reference

def _data_dir() -> Path:
    """$RECFAST_DATA, else ../shared/data beside the checkout (or beside a worktree's parent)."""
    if "RECFAST_DATA" in os.environ:
        return Path(os.environ["RECFAST_DATA"])
    here = Path(__file__).resolve()
    for up in (2, 3):
        if (here.parents[up] / "shared" / "data").is_dir():
            return here.parents[up] / "shared" / "data"
    return here.parents[2] / "shared" / "data"


DATA = _data_dir()


def _time_rounds(fns, dev, args, block: int) -> list[float]:
    """Median wall time (ms) of each fn over ``args.repeat`` rounds of ``block`` calls.

    The rounds alternate between the fns, each after one untimed call, so that a fn is timed in
    its own steady state (its allocations recycled: interleaving single calls lets one side's
    frees and page faults land on the other) while load that comes and goes on a shared machine
    reaches every side alike; ``args.warmup`` untimed calls of each precede the first round.
    """
    for fn in fns:
        for _ in range(args.warmup):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(max(args.repeat, 5)):
        for fn, ts in zip(fns, times):
            fn()
            for _ in range(block):
                sync(dev)
                t0 = time.perf_counter()
                fn()
                sync(dev)
                ts.append((time.perf_counter() - t0) * 1e3)
    return [statistics.median(ts) for ts in times]


def bench_loss(args, records):
    dev = args.device
    n_users, n_items = (3_000, 4_000) if args.quick else (29_858, 40_981)
    for d in (32, 64, 128):
        for B in (2_048, 65_536):
            g = torch.Generator().manual_seed(args.seed)
            U = torch.randn(n_users, d, generator=g).to(dev).requires_grad_()
            V = torch.randn(n_items, d, generator=g).to(dev).requires_grad_()
            u = torch.randint(0, n_users, (B,), generator=g).to(dev)
            i = torch.randint(0, n_items, (B,), generator=g).to(dev)
            j = torch.randint(0, n_items, (B,), generator=g).to(dev)
            a = recfast.ops.bpr_loss(U, V, u, i, j)
            b = _bpr_loss_reference(U, V, u, i, j)
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), "fused and reference losses disagree"

            def fused():
                U.grad = V.grad = None
                recfast.ops.bpr_loss(U, V, u, i, j).backward()

            def fused_sparse():
                U.grad = V.grad = None
                recfast.ops.bpr_loss(U, V, u, i, j, sparse_grad=True).backward()

            def ref():
                U.grad = V.grad = None
                _bpr_loss_reference(U, V, u, i, j).backward()

            rf, rs, tr = _time_rounds((fused, fused_sparse, ref), dev, args, block=10 if B <= 4096 else 2)
            params = {"d": d, "batch": B, "n_users": n_users, "n_items": n_items}
            records.append(record("bpr_loss_fwd_bwd", "torch_autograd", dev, params, rf, tr))
            records.append(record("bpr_loss_fwd_bwd_sparse_grad", "torch_autograd", dev, params, rs, tr))


def _embeddings_metrics(train, test, U, V, bias=None):
    ev = recfast.eval.Evaluator(train, test, ks=(20,), metrics=("recall", "ndcg"))
    return ev.evaluate(user_emb=torch.as_tensor(U).float().contiguous(), item_emb=torch.as_tensor(V).float().contiguous(),
                       item_bias=None if bias is None else torch.as_tensor(bias).float().contiguous())


def _datasets(args):
    if args.quick:
        x = recfast.data.synthetic(3_000, 2_000, 60_000, seed=args.seed)
        tr, te = recfast.data.stratified_split(x, (0.8, 0.2), seed=args.seed)
        yield "synthetic-small", tr.to_csr(), te.to_csr()
        return
    x = recfast.data.synthetic(seed=args.seed)
    tr, te = recfast.data.stratified_split(x, (0.8, 0.2), seed=args.seed)
    yield "gowalla-shaped", tr.to_csr(), te.to_csr()
    if (DATA / "ml-1m").is_dir():
        tr, _va, te = recfast.data.load_split_dataset(DATA / "ml-1m")
        yield "ml-1m", tr.to_csr(), te.to_csr()
    else:
        print(f"  {DATA / 'ml-1m'} not found: ml-1m skipped")


def bench_training(args, records):
    epochs, d, lr, l2 = args.epochs, 64, args.lr, args.l2
    for name, train, test in _datasets(args):
        params = {"dataset": name, "n_users": train.n_rows, "n_items": train.n_cols, "nnz": train.nnz, "d": d,
                  "epochs": epochs}
        params["threads"] = args.threads
        model = recfast.models.BPRMF(train.n_rows, train.n_cols, dim=d, l2=l2, init_std=0.01, seed=args.seed)
        t0 = time.perf_counter()
        model.fit_sgd(train, epochs=epochs, lr=lr, seed=args.seed, num_threads=args.threads)
        rf_s = time.perf_counter() - t0
        rf_rate = train.nnz * epochs / rf_s
        rf_q = _embeddings_metrics(train, test, model.user_emb.detach(), model.item_emb.detach())
        print(f"  [{name}] recfast fit_sgd: {rf_rate / 1e6:.2f} M samples/s, recall@20 {rf_q['recall@20']:.4f}")
        try:
            from implicit.cpu.bpr import BayesianPersonalizedRanking

            # implicit adds a bias column (d factors in all); the same thread count as recfast
            imp = BayesianPersonalizedRanking(factors=d - 1, learning_rate=lr, regularization=l2, iterations=epochs,
                                              random_state=args.seed, num_threads=args.threads)
            ui = train.to_scipy().tocsr()
            t0 = time.perf_counter()
            imp.fit(ui, show_progress=False)
            imp_s = time.perf_counter() - t0
            imp_rate = train.nnz * epochs / imp_s
            imp_q = _embeddings_metrics(train, test, imp.user_factors, imp.item_factors)
            print(f"  [{name}] implicit BPR: {imp_rate / 1e6:.2f} M samples/s, recall@20 {imp_q['recall@20']:.4f}")
            records.append(record("bprmf_epoch", "implicit_bpr", "cpu", params, rf_s / epochs * 1e3,
                                  imp_s / epochs * 1e3, recfast_samples_per_s=rf_rate, baseline_samples_per_s=imp_rate,
                                  recfast_metrics=rf_q, baseline_metrics=imp_q))
        except ImportError:
            print("  implicit not installed: its baseline is skipped (pip install '.[bench]')")
        # plain torch: sparse embeddings, reference loss, SparseAdam; fewer epochs (it is slow)
        t_epochs = 1 if args.quick else 2
        torch.manual_seed(args.seed)
        ue = torch.nn.Embedding(train.n_rows, d, sparse=True)
        ie = torch.nn.Embedding(train.n_cols, d, sparse=True)
        torch.nn.init.normal_(ue.weight, std=0.01)
        torch.nn.init.normal_(ie.weight, std=0.01)
        opt = torch.optim.SparseAdam([ue.weight, ie.weight], lr=1e-3)
        loader = recfast.data.PairwiseLoader(train, 2_048, seed=args.seed)
        t0 = time.perf_counter()
        for e in range(t_epochs):
            loader.set_epoch(e)
            for u, i, j in loader:
                opt.zero_grad()
                x = (ue(u) * (ie(i) - ie(j))).sum(-1)
                torch.nn.functional.softplus(-x).mean().backward()
                opt.step()
        t_s = time.perf_counter() - t0
        t_rate = train.nnz * t_epochs / t_s
        t_q = _embeddings_metrics(train, test, ue.weight.detach(), ie.weight.detach())
        records.append(record("bprmf_epoch", "torch_loop_sparse_adam", "cpu", {**params, "baseline_epochs": t_epochs},
                              rf_s / epochs * 1e3, t_s / t_epochs * 1e3, recfast_samples_per_s=rf_rate,
                              baseline_samples_per_s=t_rate, recfast_metrics=rf_q, baseline_metrics=t_q))


def main() -> None:
    p = base_parser(__doc__, "bpr")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--l2", type=float, default=0.001)
    p.add_argument("--skip-training", action="store_true")
    p.add_argument("--threads", type=int, default=recfast._C.max_threads(),
                   help="threads for recfast's fit_sgd and implicit alike (default: OpenMP's)")
    args = p.parse_args()
    if args.quick:
        args.epochs = min(args.epochs, 3)
    records: list = []
    bench_loss(args, records)
    if args.device == "cpu" and not args.skip_training:
        bench_training(args, records)
    out = write_results(records, args.out, "bpr", args.device, quick=args.quick)
    print_table(records)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
