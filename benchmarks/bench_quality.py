"""Model quality on real data: every recfast model against peers, on the same split, in one run.

ml-1m (../shared/data/ml-1m: train / valid / test, implicit feedback)
  Every implicit-feedback model is trained on train, early-stopped (or tuned) on valid by NDCG@20,
  and scored on test: Recall@20 and NDCG@20 over all items, the train and valid items of each
  user excluded. Peers in the same run: implicit's BayesianPersonalizedRanking (a `bench` extra)
  and a plain numpy EASE (closed form, float64). Both BPR implementations get the same epoch
  budget and the same learning-rate grid, the best picked on valid.
ml-100k (../shared/data/ml-100k, RecBole atomic files)
  The NCF models (GMF, MLP, NeuMF, NeuMF with GMF/MLP pre-training) with the NCF protocol: leave
  the latest event of each user out, rank it against 99 sampled negatives: HR@10, NDCG@10.
  BiasedMF on the ratings (random 90/10 split): RMSE and MAE against the global mean.
  HybridMF with item genres and release year (leave-one-out, full ranking Recall@20).

Writes results/quality_cpu.json and prints a Markdown table; `--readme` also replaces the table
between the <!-- quality-table --> markers of README.md. Training times are wall seconds on the
machine of the run (shared and noisy): compare them within a run only.

  python benchmarks/bench_quality.py [--quick] [--models LightGCN,EASE,...] [--readme]
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import recfast
from _common import RESULTS, base_parser, env_record

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
KS = (20,)
HEAD = "ndcg@20"


# -- helpers ----------------------------------------------------------------------------------------------
def _metrics(train, test, exclude, *, model=None, user_emb=None, item_emb=None, item_bias=None) -> dict[str, float]:
    ev = recfast.eval.Evaluator(train, test, ks=KS, metrics=("recall", "ndcg"), exclude=exclude)
    if model is not None:
        return ev.evaluate(model)
    return ev.evaluate(user_emb=torch.as_tensor(np.ascontiguousarray(user_emb)).float(),
                       item_emb=torch.as_tensor(np.ascontiguousarray(item_emb)).float(),
                       item_bias=None if item_bias is None else torch.as_tensor(item_bias).float())


def _row(dataset: str, model: str, impl: str, test: dict[str, float], seconds: float, **extra: Any) -> dict[str, Any]:
    r = {"dataset": dataset, "model": model, "implementation": impl,
         "test": {k: round(float(v), 5) for k, v in test.items()}, "train_seconds": round(seconds, 2)}
    r.update(extra)
    print(f"  {dataset:<8} {model:<22} {impl:<10} " + "  ".join(f"{k} {v:.4f}" for k, v in test.items())
          + f"  ({seconds:.1f} s)" + (f"  {extra}" if extra else ""))
    return r


def _train_iterative(model, train, valid, test,
                     trainer_kw: dict[str, Any]) -> tuple[dict[str, float], float, dict[str, Any]]:
    kw = dict(progress=False, device="cpu", seed=0,
              evaluator={"ks": KS, "metrics": ("recall", "ndcg")},
              early_stopping={"metric": HEAD, "patience": 3})
    kw.update(trainer_kw)
    tr = recfast.Trainer(model, train, valid, **kw)
    t0 = time.perf_counter()
    hist = tr.fit()
    secs = time.perf_counter() - t0
    res = tr.evaluate(test)
    info = {"epochs_run": len(hist), "best_epoch": tr.best_epoch}
    return {k: res[k] for k in ("recall@20", "ndcg@20")}, secs, info


# -- ml-1m -------------------------------------------------------------------------------------------------
def _ml1m_specs(quick: bool) -> dict[str, tuple[str, dict[str, Any], dict[str, Any]]]:
    """name -> (registered model, params, trainer kwargs); classical models have no trainer kwargs."""
    e = (lambda n: 2) if quick else (lambda n: n)
    return {
        "Popularity": ("Popularity", {}, {}),
        "ItemKNN": ("ItemKNN", {"k": 100, "shrink": 10.0}, {}),
        "EASE": ("EASE", {"l2": 500.0, "dtype": "float64"}, {}),
        # BPR-MF and LightGCN share one trainer setting so that the comparison is about the model
        "BPRMF": ("BPRMF", {"dim": 64, "init_std": 0.1, "l2": 1e-4},
                  {"epochs": e(60), "batch_size": 8192, "lr": 1e-2, "eval_every": 3}),
        "LightGCN": ("LightGCN", {"dim": 64, "num_layers": 3, "l2": 1e-4},
                     {"epochs": e(60), "batch_size": 8192, "lr": 1e-2, "eval_every": 3}),
        "NGCF": ("NGCF", {"embedding_dim": 64, "layer_dims": [64, 64, 64], "message_dropout": 0.1, "l2": 1e-5},
                 {"epochs": e(12), "batch_size": 8192, "lr": 5e-3, "eval_every": 3}),
        "MultVAE": ("MultVAE", {"hidden_dims": [600], "latent_dim": 200, "total_anneal_steps": 20_000},
                    {"epochs": e(40), "batch_size": 500, "lr": 1e-3, "eval_every": 5}),
        "DAE": ("DAE", {"hidden_dims": [200]}, {"epochs": e(40), "batch_size": 500, "lr": 1e-3, "eval_every": 5}),
        "GMF": ("GMF", {"embedding_dim": 32, "num_negatives": 4},
                {"epochs": e(12), "batch_size": 8192, "lr": 2e-3, "eval_every": 2}),
        "NeuMF": ("NeuMF", {"embedding_dim": 32, "layers": [64, 32, 16], "num_negatives": 4},
                  {"epochs": e(10), "batch_size": 8192, "lr": 2e-3, "eval_every": 2}),
    }


def _numpy_ease(train, l2: float) -> np.ndarray:
    """The EASE paper's closed form in plain numpy (float64)."""
    X = train.to_scipy().astype(np.float64)
    G = (X.T @ X).toarray()
    G[np.diag_indices_from(G)] += l2
    P = np.linalg.inv(G)
    B = -P / np.diag(P)
    B[np.diag_indices_from(B)] = 0.0
    return B


class _ScoreMatrix(recfast.models.Recommender):
    """Wraps a peer's item-item matrix so the same evaluator scores it."""
    iterative = False

    def __init__(self, train, B: np.ndarray) -> None:
        super().__init__(train.n_rows, train.n_cols)
        self.X = train.to_scipy().astype(np.float32).tocsr()
        self.B = B.astype(np.float32)

    def score_users(self, users: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.X[users.cpu().numpy()] @ self.B))


def bench_ml1m(args, rows: list[dict[str, Any]]) -> None:
    folder = DATA / "ml-1m"
    if not folder.is_dir():
        print(f"{folder} not found: ml-1m skipped")
        return
    tr_i, va_i, te_i = recfast.data.load_split_dataset(folder)
    train, valid, test = tr_i.to_csr(), va_i.to_csr(), te_i.to_csr()
    print(f"[ml-1m] train {train.nnz}, valid {valid.nnz}, test {test.nnz}; {train.n_rows} users x {train.n_cols} items")
    specs = _ml1m_specs(args.quick)
    wanted = set(args.models) if args.models else None
    for name, (reg, params, tkw) in specs.items():
        if wanted and name not in wanted:
            continue
        torch.manual_seed(0)
        model = recfast.build_model(reg, params, n_users=train.n_rows, n_items=train.n_cols)
        if not tkw:
            t0 = time.perf_counter()
            model.fit(train)
            secs = time.perf_counter() - t0
            res = _metrics(train, test, [valid], model=model)
            rows.append(_row("ml-1m", name, "recfast", res, secs, params=params))
        else:
            res, secs, info = _train_iterative(model, train, valid, test, tkw)
            rows.append(_row("ml-1m", name, "recfast", res, secs, params=params, trainer=tkw, **info))
    if wanted is None or "EASE" in wanted:
        l2 = specs["EASE"][1]["l2"]
        t0 = time.perf_counter()
        B = _numpy_ease(train, l2)
        secs = time.perf_counter() - t0
        rows.append(_row("ml-1m", "EASE", "numpy", _metrics(train, test, [valid], model=_ScoreMatrix(train, B)), secs,
                         params={"l2": l2}))
    if wanted is None or "BPRMF-sgd" in wanted or "BPRMF" in wanted:
        _bpr_pair(args, train, valid, test, rows)


def _bpr_pair(args, train, valid, test, rows) -> None:
    """recfast's fused SGD path and implicit's BPR: same epochs, same lr grid, best lr on valid."""
    epochs = 3 if args.quick else 60
    grid = (0.05,) if args.quick else (0.01, 0.05, 0.1)
    d, l2 = 64, 1e-3

    def best_of(fit: Callable[[float], tuple[Any, float]], impl: str) -> None:
        best = None
        for lr in grid:
            (U, V, b), secs = fit(lr)
            v = _metrics(train, valid, [], user_emb=U, item_emb=V, item_bias=b)[HEAD]
            if best is None or v > best[0]:
                best = (v, lr, U, V, b, secs)
        _, lr, U, V, b, secs = best
        res = _metrics(train, test, [valid], user_emb=U, item_emb=V, item_bias=b)
        rows.append(_row("ml-1m", "BPRMF (SGD, fixed budget)", impl, res, secs,
                         params={"dim": d, "epochs": epochs, "lr": lr, "l2": l2, "lr_grid": list(grid)}))

    def fit_recfast(lr: float):
        m = recfast.models.BPRMF(train.n_rows, train.n_cols, dim=d, l2=l2, init_std=0.01, seed=0)
        t0 = time.perf_counter()
        m.fit_sgd(train, epochs=epochs, lr=lr, seed=0)
        return (m.user_emb.detach(), m.item_emb.detach(), None), time.perf_counter() - t0

    best_of(fit_recfast, "recfast")
    try:
        from implicit.cpu.bpr import BayesianPersonalizedRanking
    except ImportError:
        print("  implicit not installed: its BPR is skipped (pip install '.[bench]')")
        return

    def fit_implicit(lr: float):
        imp = BayesianPersonalizedRanking(factors=d - 1, learning_rate=lr, regularization=l2, iterations=epochs,
                                          random_state=0)  # implicit adds a bias column: d factors in all
        ui = train.to_scipy().tocsr()
        t0 = time.perf_counter()
        imp.fit(ui, show_progress=False)
        return (imp.user_factors, imp.item_factors, None), time.perf_counter() - t0

    best_of(fit_implicit, "implicit")


# -- ml-100k -----------------------------------------------------------------------------------------------
def bench_ml100k(args, rows: list[dict[str, Any]]) -> None:
    if not (DATA / "ml-100k").is_dir():
        print(f"{DATA / 'ml-100k'} not found: ml-100k skipped")
        return
    x = recfast.data.load_atomic(DATA / "ml-100k" / "ml-100k.inter")
    n_users, n_items = x.n_users, x.n_items
    print(f"[ml-100k] {len(x)} ratings; {n_users} users x {n_items} items")
    wanted = set(args.models) if args.models else None
    # every rating counts as an interaction, as in the NCF paper
    train_i, valid_i, test_i = recfast.data.leave_one_out(x, validation=True)
    train, valid, test = train_i.to_csr(), valid_i.to_csr(), test_i.to_csr()
    sampled = {"protocol": "sampled", "num_negatives": 99, "ks": (10,), "seed": 0}
    e = 2 if args.quick else 20

    def ncf(name: str, reg: str, params: dict[str, Any], model=None) -> Any:
        torch.manual_seed(0)
        model = model or recfast.build_model(reg, params, n_users=n_users, n_items=n_items)
        tr = recfast.Trainer(model, train, valid, epochs=e, batch_size=1024, lr=1e-3, progress=False, device="cpu",
                             evaluator=sampled, early_stopping={"metric": "ndcg@10", "patience": 3})
        t0 = time.perf_counter()
        tr.fit()
        secs = time.perf_counter() - t0
        ev = recfast.eval.Evaluator(train, test, exclude=[valid], **sampled)
        res = ev.evaluate(model)
        rows.append(_row("ml-100k", name, "recfast", {k: res[k] for k in ("hit@10", "ndcg@10")}, secs,
                         params=params, protocol="leave-one-out, 99 sampled negatives"))
        return model, secs

    ncf_models = {}
    for name, params in (("GMF", {"embedding_dim": 16}), ("MLP", {"layers": [64, 32, 16, 8]}),
                         ("NeuMF", {"embedding_dim": 16, "layers": [64, 32, 16, 8]})):
        if wanted is None or name in wanted:
            ncf_models[name] = ncf(name, name, params)
    if (wanted is None or "NeuMF-pretrained" in wanted) and {"GMF", "MLP"} <= set(ncf_models):
        neumf = recfast.models.NeuMF.from_pretrained(ncf_models["GMF"][0], ncf_models["MLP"][0])
        ncf("NeuMF (pre-trained)", "NeuMF", {"embedding_dim": 16, "layers": [64, 32, 16, 8], "pretrained": True},
            model=neumf)

    if wanted is None or "Popularity" in wanted:
        pop = recfast.build_model("Popularity", {}, n_users=n_users, n_items=n_items).fit(train)
        ev = recfast.eval.Evaluator(train, test, exclude=[valid], **sampled)
        res = ev.evaluate(pop)
        rows.append(_row("ml-100k", "Popularity", "recfast", {k: res[k] for k in ("hit@10", "ndcg@10")}, 0.0,
                         protocol="leave-one-out, 99 sampled negatives"))

    if wanted is None or "HybridMF" in wanted:
        item_ids = np.asarray(x.item_ids) if x.item_ids is not None else np.arange(n_items)
        feats = recfast.data.atomic_feature_matrix(DATA / "ml-100k" / "ml-100k.item", item_ids, multi_hot=["class"],
                                                   numeric=["release_year"])  # genres, then the standardized year
        for name, reg, params, extra in (("BPRMF", "BPRMF", {"dim": 32, "l2": 1e-4}, {}),
                                         ("HybridMF", "HybridMF", {"embedding_dim": 32, "l2": 1e-4},
                                          {"item_features": feats})):
            torch.manual_seed(0)
            model = recfast.build_model(reg, params, n_users=n_users, n_items=n_items, **extra)
            res, secs, info = _train_iterative(model, train, valid, test,
                                               {"epochs": 5 if args.quick else 60, "batch_size": 2048, "lr": 5e-3,
                                                "eval_every": 5})
            rows.append(_row("ml-100k", name, "recfast", res, secs, params=params,
                             protocol="leave-one-out, full ranking", **info))

    if wanted is None or "BiasedMF" in wanted:
        users, items = x.users, x.items
        ratings = np.asarray(x.ratings, dtype=np.float32)
        is_test = np.random.default_rng(0).random(len(x)) < 0.1
        I = recfast.data.Interactions
        tr = I(users[~is_test], items[~is_test], n_users=n_users, n_items=n_items, ratings=ratings[~is_test])
        te = I(users[is_test], items[is_test], n_users=n_users, n_items=n_items, ratings=ratings[is_test])
        torch.manual_seed(0)
        model = recfast.build_model("BiasedMF", {"embedding_dim": 32, "y_range": [0.5, 5.5], "l2": 0.1},
                                    n_users=n_users, n_items=n_items)
        t = recfast.Trainer(model, tr, None, epochs=2 if args.quick else 10, batch_size=1024, lr=5e-3,
                            progress=False, device="cpu")
        t0 = time.perf_counter()
        t.fit()
        secs = time.perf_counter() - t0
        te_csr = te.to_csr(values="ratings")
        base = float(np.sqrt(np.mean((ratings[is_test] - ratings[~is_test].mean()) ** 2)))
        rows.append(_row("ml-100k", "BiasedMF", "recfast", {"rmse": model.rmse(te_csr), "mae": model.mae(te_csr)},
                         secs, params=model.params, protocol="random 90/10 ratings split",
                         global_mean_rmse=round(base, 5)))


# -- report ------------------------------------------------------------------------------------------------
def markdown(rows: list[dict[str, Any]]) -> str:
    out = ["| dataset | model | implementation | test metrics | train s |", "|---|---|---|---|---|"]
    for r in rows:
        m = ", ".join(f"{k} {v:.4f}" for k, v in r["test"].items())
        out.append(f"| {r['dataset']} | {r['model']} | {r['implementation']} | {m} | {r['train_seconds']:.1f} |")
    return "\n".join(out)


def write_readme(table: str) -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    pat = re.compile(r"(<!-- quality-table -->\n).*?(\n<!-- /quality-table -->)", re.S)
    if not pat.search(text):
        print("README.md has no <!-- quality-table --> markers: not updated")
        return
    readme.write_text(pat.sub(lambda m: m.group(1) + table + m.group(2), text))
    print("README.md quality table updated")


def main() -> None:
    p = base_parser(__doc__, "quality")
    p.add_argument("--models", type=lambda s: [x for x in s.split(",") if x], default=None,
                   help="comma-separated subset, e.g. LightGCN,BPRMF,EASE")
    p.add_argument("--readme", action="store_true", help="write the table into README.md")
    args = p.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    bench_ml1m(args, rows)
    bench_ml100k(args, rows)
    table = markdown(rows)
    print(table)
    out = args.out or RESULTS / ("quality_cpu_quick.json" if args.quick else "quality_cpu.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.models and out.exists():
        # a subset run replaces its own rows in the record and keeps the others
        fresh = {(r["dataset"], r["model"], r["implementation"]): r for r in rows}
        old = json.loads(out.read_text())["rows"]
        kept = [fresh.pop((r["dataset"], r["model"], r["implementation"]), r) for r in old]
        rows = kept + list(fresh.values())
        table = markdown(rows)
    out.write_text(json.dumps({"env": env_record("cpu"), "seconds": round(time.perf_counter() - t0, 1),
                               "rows": rows}, indent=2) + "\n")
    print(f"wrote {out} in {time.perf_counter() - t0:.0f} s")
    if args.readme and not args.quick:
        write_readme(table)


if __name__ == "__main__":
    main()
