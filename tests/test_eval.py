"""Evaluator: every metric equals a plain numpy reference; subsets add up; sampled protocol; AUC."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import recfast
from recfast.eval import Evaluator


def _data(seed=0, n_users=120, n_items=90):
    x = recfast.data.synthetic(n_users, n_items, 2500, seed=seed)
    tr, va, te = recfast.data.random_split(x, (0.7, 0.1, 0.2), seed=seed)
    return tr.to_csr(), va.to_csr(), te.to_csr()


def _reference(train, test, scores, ks, exclude=()):
    """Plain numpy: full score matrix, mask, argsort (stable, ties to lower id), metric formulas."""
    s = scores.astype(np.float64).copy()
    mask = train.to_scipy().toarray() > 0
    for e in exclude:
        mask |= e.to_scipy().toarray() > 0
    s[mask] = -np.inf
    te = test.to_scipy().tolil()
    out = {}
    users = [u for u in range(s.shape[0]) if te.rows[u]]
    for k in ks:
        vals = {m: [] for m in ("recall", "ndcg", "precision", "hit", "mrr", "map")}
        for u in users:
            order = np.argsort(-s[u], kind="stable")[:k]
            order = [i for i in order if np.isfinite(s[u, i])]
            truth = set(te.rows[u])
            hits = [1.0 if i in truth else 0.0 for i in order]
            n_hit = sum(hits)
            vals["recall"].append(n_hit / len(truth))
            vals["precision"].append(n_hit / k)
            vals["hit"].append(float(n_hit > 0))
            dcg = sum(h / np.log2(r + 2) for r, h in enumerate(hits))
            idcg = sum(1 / np.log2(r + 2) for r in range(min(len(truth), k)))
            vals["ndcg"].append(dcg / idcg)
            first = next((r for r, h in enumerate(hits) if h), None)
            vals["mrr"].append(0.0 if first is None else 1 / (first + 1))
            ap, c = 0.0, 0
            for r, h in enumerate(hits):
                if h:
                    c += 1
                    ap += c / (r + 1)
            vals["map"].append(ap / min(len(truth), k))
        for m, v in vals.items():
            out[f"{m}@{k}"] = float(np.mean(v))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_full_ranking_metrics_equal_numpy_reference(seed) -> None:
    train, valid, test = _data(seed)
    g = torch.Generator().manual_seed(seed)
    u, v, b = torch.randn(train.n_rows, 8, generator=g), torch.randn(train.n_cols, 8, generator=g), torch.randn(train.n_cols, generator=g)
    scores = (u.double() @ v.double().T + b.double()).numpy()
    ev = Evaluator(train, test, ks=(1, 5, 20), batch_size=37)
    got = ev.evaluate(user_emb=u, item_emb=v, item_bias=b)
    want = _reference(train, test, scores, (1, 5, 20))
    assert got.keys() == want.keys()
    for name in want:
        assert got[name] == pytest.approx(want[name], abs=1e-6), name
    ev2 = Evaluator(train, test, ks=(10,), exclude=[valid])
    got2 = ev2.evaluate(user_emb=u, item_emb=v, item_bias=b)
    want2 = _reference(train, test, scores, (10,), exclude=[valid])
    for name in want2:
        assert got2[name] == pytest.approx(want2[name], abs=1e-6), name


def test_models_without_embeddings_are_scored_densely() -> None:
    train, _, test = _data(3)
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(train.n_rows, train.n_cols, generator=g)

    class Dense:
        def score_users(self, users):
            return scores[users]

    got = Evaluator(train, test, ks=(5,)).evaluate(Dense())
    want = _reference(train, test, scores.numpy(), (5,))
    for name in want:
        assert got[name] == pytest.approx(want[name], abs=1e-6)


def test_sums_and_counts_add_up_over_user_subsets() -> None:
    train, _, test = _data(4)
    u, v = torch.randn(train.n_rows, 6), torch.randn(train.n_cols, 6)
    ev = Evaluator(train, test, ks=(10,), metrics=("recall", "ndcg", "popularity"))
    whole = ev.evaluate(user_emb=u, item_emb=v)
    halves = [ev.evaluate(user_emb=u, item_emb=v, users=torch.arange(a, b), return_sums=True)
              for a, b in ((0, 50), (50, train.n_rows))]
    for name in whole:
        s = sum(h[0][name] for h in halves)
        c = sum(h[1][name] for h in halves)
        assert s / c == pytest.approx(whole[name], abs=1e-9)
    users_with_tests = int((test.row_lengths() > 0).sum())
    assert sum(h[1]["recall@10"] for h in halves) == users_with_tests


def test_auc_coverage_popularity_against_brute_force() -> None:
    train, _, test = _data(5)
    g = torch.Generator().manual_seed(1)
    u, v = torch.randn(train.n_rows, 4, generator=g), torch.randn(train.n_cols, 4, generator=g)
    scores = (u.double() @ v.double().T).numpy()
    got = Evaluator(train, test, ks=(5,), metrics=("auc", "coverage", "popularity")).evaluate(user_emb=u, item_emb=v)
    tr, te = train.to_scipy().toarray() > 0, test.to_scipy().toarray() > 0
    aucs, recs = [], []
    for x in range(train.n_rows):
        pos = np.nonzero(te[x])[0]
        if not pos.size:
            continue
        neg = np.nonzero(~tr[x] & ~te[x])[0]
        p, n = scores[x, pos][:, None], scores[x, neg][None, :]
        aucs.append(((p > n).sum() + 0.5 * (p == n).sum()) / (pos.size * neg.size))
        s = np.where(tr[x], -np.inf, scores[x])
        recs.extend(np.argsort(-s, kind="stable")[:5].tolist())
    assert got["auc"] == pytest.approx(np.mean(aucs), abs=1e-9)
    assert got["coverage@5"] == pytest.approx(len(set(recs)) / train.n_cols)
    pop = tr.sum(0)
    assert got["popularity@5"] == pytest.approx(np.mean(pop[recs]))


def test_sampled_protocol_hr_ndcg_mrr() -> None:
    x = recfast.data.synthetic(80, 400, 2400, seed=6)
    train, test = recfast.data.leave_one_out(x)
    train, test = train.to_csr(), test.to_csr()
    u, v = torch.randn(80, 8), torch.randn(400, 8)
    ev = Evaluator(train, test, ks=(10,), protocol="sampled", num_negatives=99, seed=3)
    got = ev.evaluate(user_emb=u, item_emb=v)
    assert set(got) == {"hit@10", "ndcg@10", "mrr"}
    # reference: the same seeded negatives, ranked by hand
    known = recfast.eval._union([train, test], train.shape)
    users = torch.nonzero(test.row_lengths() > 0).squeeze(1)
    items = torch.stack([test.row(int(a))[0] for a in users]).long()
    neg = recfast.ops.sample_negatives(known, users, 99, seed=3, replace=False)
    assert not (train.dense_rows(users).gather(1, neg) > 0).any()
    s_pos = (u[users] * v[items]).sum(1)
    s_neg = (u[users][:, None] * v[neg]).sum(-1)
    rank = (s_neg >= s_pos[:, None]).sum(1).double()
    assert got["hit@10"] == pytest.approx(float((rank < 10).double().mean()))
    assert got["ndcg@10"] == pytest.approx(float(((rank < 10) / torch.log2(rank + 2)).mean()))
    assert got["mrr"] == pytest.approx(float((1 / (rank + 1)).mean()))
    # a perfect model: the test item scores highest
    perfect = torch.zeros(80, 400)
    perfect[users, items] = 1.0

    class Oracle:
        def score_users(self, us):
            return perfect[us]

    assert ev.evaluate(Oracle())["hit@10"] == 1.0


def test_errors() -> None:
    train, _, test = _data()
    with pytest.raises(ValueError, match="unknown metric"):
        Evaluator(train, test, metrics=("recal",))
    with pytest.raises(ValueError, match="ks must be positive"):
        Evaluator(train, test, ks=(0,))
    with pytest.raises(ValueError, match="train has shape"):
        Evaluator(train, recfast.CSR.from_coo([0], [0], shape=(1, 1)))
    with pytest.raises(TypeError, match="test must be a recfast.CSR"):
        Evaluator(train, test.to_scipy())
    with pytest.raises(ValueError, match="protocol must be"):
        Evaluator(train, test, protocol="loo")
    ev = Evaluator(train, test)
    with pytest.raises(ValueError, match="embeddings have"):
        ev.evaluate(user_emb=torch.randn(3, 2), item_emb=torch.randn(train.n_cols, 2))
    with pytest.raises(ValueError, match="give a model, or user_emb and item_emb"):
        ev.evaluate()
