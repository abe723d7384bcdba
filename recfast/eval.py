"""Ranking evaluation in one pass over the users: full ranking (every item but the excluded ones)
or the NCF sampled protocol.

Conventions (full ranking):
- users without test items are skipped; every metric is a mean over the evaluated users;
- recall@k = hits in the top k / |test items of the user|;
- precision@k = hits in the top k / k;
- ndcg@k: binary relevance, DCG = sum over hits at rank r (0-based) of 1 / log2(r + 2), divided by
  the ideal DCG over min(|test|, k) hits;
- hit@k = 1 if any test item is in the top k;
- mrr@k = 1 / (rank + 1) of the first hit within the top k, else 0;
- map@k = sum over hits at rank r of precision@(r + 1), divided by min(|test|, k);
- auc = per user, the fraction of (test item, candidate negative) pairs ranked correctly (ties count
  one half), candidates being the items neither excluded nor in the user's test set; averaged;
- coverage@k = distinct items recommended in the top k over all evaluated users / n_items;
- popularity@k = mean training popularity (interaction count) of the recommended items.

Sampled protocol (NCF, leave-one-out): each (user, test item) pair is ranked against
``num_negatives`` distinct items the user has neither trained on nor tests on (seeded); its rank is
the number of those negatives scoring at least as high (ties count against the model).
hit@k, ndcg@k and mrr are means over pairs.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np
import torch

from . import _C
from ._backend import np_view
from .csr import CSR

__all__ = ["Evaluator", "RANKING_METRICS"]

RANKING_METRICS = ("recall", "ndcg", "precision", "hit", "mrr", "map")
_EXTRA = ("auc", "coverage", "popularity")
_SAMPLED = ("hit", "ndcg", "mrr")


def _union(mats: Sequence[CSR], shape: tuple[int, int]) -> CSR:
    rows, cols = [], []
    for m in mats:
        m = m.to("cpu")
        rows.append(torch.repeat_interleave(torch.arange(m.n_rows), m.row_lengths()))
        cols.append(m.indices.to(torch.int64))
    return CSR.from_coo(torch.cat(rows), torch.cat(cols), shape=shape, duplicates="sum").with_values(None)


class Evaluator:
    """Evaluates embeddings or a model against held-out interactions.

    Parameters
    ----------
    train : users x items training CSR (its items are excluded from the rankings).
    test : users x items held-out CSR.
    ks : cut-offs.
    metrics : any of "recall", "ndcg", "precision", "hit", "mrr", "map", "auc", "coverage",
        "popularity" (full protocol); "hit", "ndcg", "mrr" (sampled protocol).
    exclude : further CSRs whose items are excluded too (e.g. the validation set when testing).
    batch_size : users per batch.
    protocol : "full" or "sampled".
    num_negatives, seed : the sampled protocol's negatives.

    Example
    -------
    >>> import torch, recfast
    >>> x = recfast.data.synthetic(100, 60, 1500, seed=0)
    >>> train, test = recfast.data.random_split(x, (0.8, 0.2), seed=0)
    >>> ev = recfast.eval.Evaluator(train.to_csr(), test.to_csr(), ks=(10,))
    >>> sorted(ev.evaluate(user_emb=torch.randn(100, 8), item_emb=torch.randn(60, 8)))
    ['hit@10', 'map@10', 'mrr@10', 'ndcg@10', 'precision@10', 'recall@10']
    """

    def __init__(
        self,
        train: CSR,
        test: CSR,
        *,
        ks: Iterable[int] = (10, 20),
        metrics: Iterable[str] = RANKING_METRICS,
        exclude: Sequence[CSR] = (),
        batch_size: int = 4096,
        protocol: str = "full",
        num_negatives: int = 99,
        seed: int = 0,
    ) -> None:
        for name, m in (("train", train), ("test", test)):
            if not isinstance(m, CSR):
                raise TypeError(f"Evaluator: {name} must be a recfast.CSR, got {type(m).__name__}")
        if train.shape != test.shape:
            raise ValueError(f"Evaluator: train has shape {train.shape} but test has {test.shape}")
        ks = tuple(ks)
        if not ks or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0 for k in ks):
            raise ValueError(f"Evaluator: ks must be positive ints, got {ks}")
        self.ks = tuple(int(k) for k in ks)
        if protocol not in ("full", "sampled"):
            raise ValueError(f"Evaluator: protocol must be 'full' or 'sampled', got {protocol!r}")
        self.metrics = tuple(metrics)
        allowed = _SAMPLED if protocol == "sampled" else RANKING_METRICS + _EXTRA
        bad = [m for m in self.metrics if m not in allowed]
        if protocol == "sampled" and self.metrics == RANKING_METRICS:
            self.metrics, bad = _SAMPLED, []
        if bad:
            raise ValueError(f"Evaluator: unknown metric(s) {bad} for protocol {protocol!r}; choose from {list(allowed)}")
        if batch_size <= 0:
            raise ValueError(f"Evaluator: batch_size must be positive, got {batch_size}")
        for i, e in enumerate(exclude):
            if not isinstance(e, CSR) or e.shape != train.shape:
                raise ValueError(f"Evaluator: exclude[{i}] must be a CSR of shape {train.shape}")
        self.protocol = protocol
        self.batch_size = int(batch_size)
        self.num_negatives = int(num_negatives)
        self.seed = int(seed)
        self.train = train.to("cpu")
        self.test = test.to("cpu")
        self.n_users, self.n_items = train.shape
        self.excluded = _union([self.train, *exclude], train.shape) if exclude else self.train
        self.users = torch.nonzero(self.test.row_lengths() > 0).squeeze(1)
        self.popularity = torch.bincount(self.train.indices.to(torch.int64), minlength=self.n_items).double()
        kmax = max(self.ks)
        self._discount = 1.0 / torch.log2(torch.arange(kmax, dtype=torch.float64) + 2.0)
        self._ideal = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(self._discount, 0)])

    # -- public -------------------------------------------------------------------------------------
    def evaluate(
        self,
        model: Any = None,
        *,
        user_emb: torch.Tensor | None = None,
        item_emb: torch.Tensor | None = None,
        item_bias: torch.Tensor | None = None,
        users: torch.Tensor | None = None,
        return_sums: bool = False,
    ) -> dict[str, float] | tuple[dict[str, float], dict[str, int]]:
        """Metrics of a model (anything with ``embeddings()``, ``score_users(users)`` or
        ``score(users, items)``) or of embeddings.

        ``users`` restricts the evaluation to a subset (e.g. one rank's share); with
        ``return_sums=True`` the result is (sums, counts) per metric, which add up across subsets
        (coverage is reported as the count of distinct items and only adds up when combined as sets).
        """
        scorer = self._scorer(model, user_emb, item_emb, item_bias)
        users_t = self.users if users is None else self._subset(users)
        with torch.no_grad():
            sums, counts = (self._sampled(scorer, users_t) if self.protocol == "sampled"
                            else self._full(scorer, users_t))
        if return_sums:
            return sums, counts
        return {m: (sums[m] / counts[m] if counts[m] else 0.0) for m in sums}

    # -- scoring ------------------------------------------------------------------------------------
    def _subset(self, users: torch.Tensor) -> torch.Tensor:
        u = torch.as_tensor(users, dtype=torch.int64).cpu()
        if u.numel() and (int(u.min()) < 0 or int(u.max()) >= self.n_users):
            raise ValueError(f"Evaluator.evaluate: users must be in [0, {self.n_users})")
        return u[self.test.row_lengths()[u] > 0]

    def _scorer(self, model, user_emb, item_emb, item_bias):
        if model is not None:
            if user_emb is not None or item_emb is not None:
                raise ValueError("Evaluator.evaluate: pass a model or embeddings, not both")
            emb = model.embeddings() if hasattr(model, "embeddings") else None
            if emb is not None:
                user_emb, item_emb, item_bias = emb
            elif hasattr(model, "score_users"):
                return ("dense", model)
            elif hasattr(model, "score"):
                return ("pairs", model)
            else:
                raise TypeError("Evaluator.evaluate: the model needs embeddings(), score_users() or score()")
        if user_emb is None or item_emb is None:
            raise ValueError("Evaluator.evaluate: give a model, or user_emb and item_emb")
        if user_emb.shape[0] != self.n_users or item_emb.shape[0] != self.n_items:
            raise ValueError(f"Evaluator.evaluate: embeddings have {user_emb.shape[0]} users and {item_emb.shape[0]} "
                             f"items, expected {self.n_users} and {self.n_items}")
        return ("emb", (user_emb.detach().float().contiguous(), item_emb.detach().float().contiguous(),
                        None if item_bias is None else item_bias.detach().float().contiguous()))

    def _topk(self, scorer, users: torch.Tensor, k: int) -> torch.Tensor:
        from .ops import topk, topk_scores

        kind, obj = scorer
        if kind == "emb":
            u, v, b = obj
            ex = self.excluded.to(v.device)
            _, ids = topk(u[users.to(u.device)].contiguous(), v, k, exclude=ex, rows=users.to(v.device), key_bias=b)
            return ids.cpu()
        scores = self._dense_scores(scorer, users)
        _, ids = topk_scores(scores, k, exclude=self.excluded.to(scores.device), rows=users.to(scores.device))
        return ids.cpu()

    def _dense_scores(self, scorer, users: torch.Tensor) -> torch.Tensor:
        kind, obj = scorer
        if kind == "emb":
            u, v, b = obj
            s = u[users.to(u.device)] @ v.T
            return (s + b if b is not None else s).float().contiguous()
        if kind == "dense":
            return obj.score_users(users).float().contiguous()
        items = torch.arange(self.n_items).expand(users.numel(), -1)
        return obj.score(users, items).float().contiguous()

    # -- full ranking ---------------------------------------------------------------------------------
    def _full(self, scorer, users: torch.Tensor) -> tuple[dict[str, float], dict[str, int]]:
        kmax = max(self.ks)
        rank_metrics = [m for m in self.metrics if m in RANKING_METRICS]
        sums: dict[str, float] = {f"{m}@{k}": 0.0 for m in rank_metrics for k in self.ks}
        counts: dict[str, int] = {name: 0 for name in sums}
        seen_items = [torch.zeros(self.n_items, dtype=torch.bool) for _ in self.ks]
        pop_sum = [0.0 for _ in self.ks]
        pop_n = [0 for _ in self.ks]
        auc_sum, auc_n = 0.0, 0
        test_ip, test_ix = np_view(self.test.indptr), np_view(self.test.indices)
        for start in range(0, users.numel(), self.batch_size):
            ub = users[start:start + self.batch_size].contiguous()
            ids = self._topk(scorer, ub, kmax).contiguous()
            hits_np = np.empty(tuple(ids.shape), dtype=np.uint8)
            _C.topk_hits(np_view(ids), np_view(ub), test_ip, test_ix, hits_np, 0)
            hits = torch.from_numpy(hits_np).double()
            n_test = self.test.row_lengths()[ub].double()
            cum = torch.cumsum(hits, 1)
            for ki, k in enumerate(self.ks):
                h = hits[:, :k]
                n_hit = cum[:, k - 1] if k <= hits.shape[1] else cum[:, -1]
                per = {}
                if "recall" in rank_metrics:
                    per["recall"] = n_hit / n_test
                if "precision" in rank_metrics:
                    per["precision"] = n_hit / k
                if "hit" in rank_metrics:
                    per["hit"] = (n_hit > 0).double()
                if "ndcg" in rank_metrics:
                    dcg = (h * self._discount[:k]).sum(1)
                    per["ndcg"] = dcg / self._ideal[torch.clamp(n_test, max=k).long()]
                if "mrr" in rank_metrics:
                    first = torch.where(h.any(1), h.argmax(1).double(), torch.full_like(n_test, float("inf")))
                    per["mrr"] = 1.0 / (first + 1.0)
                if "map" in rank_metrics:
                    prec = cum[:, :k] / torch.arange(1, k + 1, dtype=torch.float64)
                    per["map"] = (prec * h).sum(1) / torch.clamp(n_test, max=k)
                for m, v in per.items():
                    sums[f"{m}@{k}"] += float(v.sum())
                    counts[f"{m}@{k}"] += int(v.numel())
                valid = ids[:, :k][ids[:, :k] >= 0]
                seen_items[ki][valid] = True
                pop_sum[ki] += float(self.popularity[valid].sum())
                pop_n[ki] += int(valid.numel())
            if "auc" in self.metrics:
                a, n = self._auc(scorer, ub)
                auc_sum += a
                auc_n += n
        for ki, k in enumerate(self.ks):
            if "coverage" in self.metrics:
                sums[f"coverage@{k}"] = float(seen_items[ki].sum()) / self.n_items
                counts[f"coverage@{k}"] = 1
            if "popularity" in self.metrics:
                sums[f"popularity@{k}"] = pop_sum[ki]
                counts[f"popularity@{k}"] = pop_n[ki]
        if "auc" in self.metrics:
            sums["auc"] = auc_sum
            counts["auc"] = auc_n
        return sums, counts

    def _auc(self, scorer, users: torch.Tensor) -> tuple[float, int]:
        """Per user: sort the candidate negatives' scores once, then count, for each test item, the
        negatives below it (searchsorted); O(B * n_items) memory per batch, never all pairs."""
        total, n = 0.0, 0
        for s0 in range(0, users.numel(), 256):
            ub = users[s0:s0 + 256]
            # NaN ranks below everything, as in top-k (a NaN score would otherwise count as a win)
            scores = self._dense_scores(scorer, ub).double().cpu().nan_to_num(nan=float("-inf"))
            test_mask = self.test.dense_rows(ub) > 0
            neg_mask = ~(test_mask | (self.excluded.dense_rows(ub) > 0))
            neg = torch.where(neg_mask, scores, torch.full_like(scores, float("inf")))
            neg_sorted = torch.sort(neg, dim=1).values
            n_neg = neg_mask.sum(1).double()
            pos = torch.where(test_mask, scores, torch.full_like(scores, float("nan")))
            less = torch.searchsorted(neg_sorted, pos.nan_to_num(float("-inf")), side="left").double()
            leq = torch.searchsorted(neg_sorted, pos.nan_to_num(float("-inf")), side="right").double()
            less, leq = torch.minimum(less, n_neg[:, None]), torch.minimum(leq, n_neg[:, None])
            correct = ((less + 0.5 * (leq - less)) * test_mask).sum(1)
            pairs = test_mask.sum(1).double() * n_neg
            ok = pairs > 0
            total += float((correct[ok] / pairs[ok]).sum())
            n += int(ok.sum())
        return total, n

    # -- sampled protocol -------------------------------------------------------------------------------
    def _sampled(self, scorer, users: torch.Tensor) -> tuple[dict[str, float], dict[str, int]]:
        from .ops import sample_negatives

        known = _union([self.excluded, self.test], self.train.shape)
        test = self.test
        which, pair_items, _ = test.rows_coo(users)
        pair_users = users[which]
        names = [f"{m}@{k}" for m in self.metrics if m != "mrr" for k in self.ks]
        names += ["mrr"] if "mrr" in self.metrics else []
        sums = {m: 0.0 for m in names}
        for start in range(0, pair_users.numel(), self.batch_size):
            pu = pair_users[start:start + self.batch_size]
            pi = pair_items[start:start + self.batch_size]
            neg = sample_negatives(known, pu, self.num_negatives, seed=self.seed, replace=False, row_offset=start)
            cand = torch.cat([pi[:, None], neg], dim=1)
            s = self._pair_scores(scorer, pu, cand)
            rank = (s[:, 1:] >= s[:, :1]).sum(1).double()
            for k in self.ks:
                inside = rank < k
                if "hit" in self.metrics:
                    sums[f"hit@{k}"] += float(inside.sum())
                if "ndcg" in self.metrics:
                    sums[f"ndcg@{k}"] += float((inside / torch.log2(rank + 2)).sum())
            if "mrr" in self.metrics:
                sums["mrr"] += float((1.0 / (rank + 1)).sum())
        counts = {m: int(pair_users.numel()) for m in names}
        return sums, counts

    def _pair_scores(self, scorer, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        kind, obj = scorer
        if kind == "emb":
            u, v, b = obj
            uu = u[users.to(u.device)]
            vv = v[items.to(v.device)]
            s = (uu[:, None, :] * vv).sum(-1)
            if b is not None:
                s = s + b[items.to(v.device)]
            return s.double().cpu()
        if kind == "pairs":
            return obj.score(users, items).double().cpu()
        return self._dense_scores(scorer, users).double().cpu().gather(1, items)

