"""recfast.Trainer: seeded runs, optimizers and parameter groups, schedulers, clipping, early stopping,
checkpoints and exact resume after SIGKILL, logs, classical models, errors.

The tests use a small model, loader and evaluator defined here (registered under test-only names),
so they do not depend on the kernels, the real loaders or recfast.eval. The subprocess tests import
this file by path to get them.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import recfast
from recfast.models.base import Recommender
from recfast.trainers import Trainer
from recfast.trainers.optimizers import clip_grad_norm

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
# Subprocesses import recfast from where this process did (site-packages in CI, the checkout
# in an in-place build), never from the source folder by accident.
_PKG_PARENT = str(Path(recfast.__file__).resolve().parents[1])


# -- toy components -------------------------------------------------------------------------------
class ToyLoader:
    """(users, pos, neg) batches; epoch order and negatives are functions of (seed, epoch).

    Global batch i holds positions [i*G, (i+1)*G) of the epoch's permutation with G = batch_size *
    world_size; rank r takes its r-th slice of batch_size. Incomplete global batches are dropped, so
    N ranks with batch B see exactly the batches one process with batch N*B sees.
    """

    def __init__(self, csr: recfast.CSR, batch_size: int, *, seed: int, device: Any = "cpu", rank: int = 0,
                 world_size: int = 1) -> None:
        self.users = torch.repeat_interleave(torch.arange(csr.n_rows), csr.row_lengths())
        self.items = csr.indices.to(torch.int64)
        self.n_items = csr.n_cols
        self.batch_size, self.seed, self.device = batch_size, seed, torch.device(device)
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.sleep = float(os.environ.get("TOY_SLEEP", "0"))
        self.marker = os.environ.get("TOY_MARKER")

    def __len__(self) -> int:
        return self.users.numel() // (self.batch_size * self.world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = state["epoch"]

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
        perm = torch.randperm(self.users.numel(), generator=g)
        neg = torch.randint(0, self.n_items, (self.users.numel(),), generator=g)
        big = self.batch_size * self.world_size
        for i in range(len(self)):
            sl = perm[i * big + self.rank * self.batch_size: i * big + (self.rank + 1) * self.batch_size]
            if self.marker:
                Path(self.marker).write_text(f"{self.epoch} {i}")
            if self.sleep:
                time.sleep(self.sleep)
            yield (self.users[sl].to(self.device), self.items[sl].to(self.device), neg[sl].to(self.device))
        self.epoch += 1


@recfast.register_model("_TestToyMF")
class ToyMF(Recommender):
    """Dot-product MF with a dense item bias; BPR loss in plain torch; optional sparse tables and
    dropout (which draws from torch's global RNG)."""

    batch_kind = "pairwise"

    def __init__(self, n_users: int, n_items: int, *, dim: int = 8, sparse: bool = False, dropout: float = 0.0,
                 seed: int = 0) -> None:
        super().__init__(n_users, n_items, dim=dim, sparse=sparse, dropout=dropout, seed=seed)
        g = torch.Generator().manual_seed(seed)
        self.user = nn.Embedding(n_users, dim, sparse=sparse)
        self.item = nn.Embedding(n_items, dim, sparse=sparse)
        with torch.no_grad():
            self.user.weight.copy_(torch.randn(n_users, dim, generator=g) * 0.1)
            self.item.weight.copy_(torch.randn(n_items, dim, generator=g) * 0.1)
        self.item_bias = nn.Parameter(torch.zeros(n_items))
        self.sparse, self.dropout = sparse, dropout

    def loss(self, batch):
        users, pos, neg = batch
        u = F.dropout(self.user(users), self.dropout, self.training)
        sp = (u * self.item(pos)).sum(-1) + self.item_bias[pos]
        sn = (u * self.item(neg)).sum(-1) + self.item_bias[neg]
        return -F.logsigmoid(sp - sn).mean()

    def make_loader(self, train, batch_size, *, seed, device="cpu", rank=0, world_size=1):
        return ToyLoader(train, batch_size, seed=seed, device=device, rank=rank, world_size=world_size)

    def sparse_parameters(self):
        return [self.user.weight, self.item.weight] if self.sparse else []

    def embeddings(self):
        return self.user.weight.detach(), self.item.weight.detach(), self.item_bias.detach()


@recfast.register_model("_TestToyPop")
class ToyPop(Recommender):
    """A classical model: item popularity, computed in fit()."""

    iterative = False

    def __init__(self, n_users: int, n_items: int) -> None:
        super().__init__(n_users, n_items)
        self.register_buffer("pop", torch.zeros(n_items))

    def fit(self, train):
        self.prepare(train)
        self.pop.copy_(torch.bincount(train.indices.to(torch.int64), minlength=self.n_items).float())
        return self

    def score_users(self, users):
        return self.pop.expand(len(users), -1)


class ToyEvaluator:
    """recall@k and ndcg@k by full ranking with torch, following the trainer's evaluator protocol."""

    def __init__(self, train: recfast.CSR, test: recfast.CSR, ks=(5, 10)) -> None:
        self.train_d = torch.from_numpy(train.to_scipy().toarray() > 0)
        self.test_d = torch.from_numpy(test.to_scipy().toarray() > 0)
        self.ks = tuple(ks)
        self.users = torch.nonzero(self.test_d.sum(1) > 0).squeeze(1)
        self.metrics = ("recall", "ndcg")
        self.calls: list[int] = []

    def evaluate(self, model, *, users=None, return_sums=False):
        users = self.users if users is None else torch.as_tensor(users)
        users = users[self.test_d[users].sum(1) > 0]
        self.calls.append(len(users))
        scores = model.score_users(users).float().cpu().masked_fill(self.train_d[users], -math.inf)
        top = scores.topk(max(self.ks), dim=1).indices
        hits = self.test_d[users].gather(1, top).double()
        n_test = self.test_d[users].sum(1).double()
        disc = 1.0 / torch.log2(torch.arange(max(self.ks), dtype=torch.float64) + 2)
        sums, counts = {}, {}
        for k in self.ks:
            sums[f"recall@{k}"] = float((hits[:, :k].sum(1) / n_test).sum())
            ideal = torch.stack([disc[: int(min(n, k))].sum() for n in n_test]) if len(users) else torch.zeros(0)
            sums[f"ndcg@{k}"] = float(((hits[:, :k] * disc[:k]).sum(1) / ideal).sum())
            counts[f"recall@{k}"] = counts[f"ndcg@{k}"] = len(users)
        if return_sums:
            return sums, counts
        return {m: sums[m] / counts[m] if counts[m] else 0.0 for m in sums}


# -- stand-ins for parts merged from other branches (used only where recfast lacks them) -------------
def _split_stand_in(x, ratios=(0.8, 0.1, 0.1), *, seed):
    rng = np.random.default_rng(seed)
    bins = np.searchsorted(np.cumsum(ratios)[:-1], rng.random(len(x)), side="right")
    return tuple(recfast.data.Interactions(x.users[bins == b], x.items[bins == b], n_users=x.n_users,
                                           n_items=x.n_items) for b in range(len(ratios)))


class EvaluatorStandIn(ToyEvaluator):
    def __init__(self, train, test, *, ks=(10, 20), metrics=None, exclude=(), batch_size=4096, protocol="full",
                 num_negatives=99, seed=0):
        super().__init__(train, test, ks=ks)
        for e in exclude:
            self.train_d |= torch.from_numpy(e.to_scipy().toarray() > 0)


def _topk_scores_stand_in(scores, k, *, exclude=None, rows=None):
    scores = scores.float().clone()
    if exclude is not None:
        ex = torch.from_numpy(exclude.to_scipy().toarray() > 0)
        scores = scores.masked_fill(ex[rows if rows is not None else torch.arange(len(scores))], -math.inf)
    kk = min(k, scores.shape[1])
    s, i = scores.topk(kk, dim=1)
    i = i.masked_fill(s == -math.inf, -1)
    pad = k - kk
    if pad:
        s = torch.cat([s, torch.full((len(s), pad), -math.inf)], 1)
        i = torch.cat([i, torch.full((len(i), pad), -1)], 1)
    return s, i


def _topk_stand_in(queries, keys, k, *, exclude=None, rows=None, key_bias=None):
    scores = queries @ keys.T + (key_bias if key_bias is not None else 0)
    return _topk_scores_stand_in(scores, k, exclude=exclude, rows=rows)


def install_stand_ins(monkeypatch) -> list[str]:
    """Put minimal stand-ins where recfast (this branch) lacks splits, Evaluator or top-k; returns their names."""
    installed = []
    for mod, name, obj in [(recfast.data, "stratified_split", _split_stand_in),
                           (recfast.data, "random_split", _split_stand_in),
                           (recfast.eval, "Evaluator", EvaluatorStandIn),
                           (recfast.ops, "topk", _topk_stand_in), (recfast.ops, "topk_scores", _topk_scores_stand_in)]:
        if not callable(getattr(mod, name, None)):  # absent (or the op's placeholder module)
            monkeypatch.setattr(mod, name, obj, raising=False)
            installed.append(name)
    return installed


def toy_data(n_users: int = 60, n_items: int = 40, density: float = 0.35, seed: int = 0):
    """A train/valid/test split of a random binary matrix with some structure (two communities)."""
    rng = np.random.default_rng(seed)
    group_u = rng.integers(0, 2, n_users)
    group_i = rng.integers(0, 2, n_items)
    p = np.where(group_u[:, None] == group_i[None, :], density * 1.7, density * 0.3)
    mask = rng.random((n_users, n_items)) < p
    part = rng.random((n_users, n_items))
    mats = []
    for lo, hi in ((0.0, 0.7), (0.7, 0.85), (0.85, 1.0)):
        r, c = np.nonzero(mask & (part >= lo) & (part < hi))
        mats.append(recfast.CSR.from_coo(torch.from_numpy(r), torch.from_numpy(c), shape=(n_users, n_items)))
    return tuple(mats)


@pytest.fixture(scope="module")
def splits():
    return toy_data()


def make_trainer(splits, model=None, **kw) -> Trainer:
    train, valid, _ = splits
    model = model if model is not None else ToyMF(train.n_rows, train.n_cols)
    defaults = dict(epochs=3, batch_size=64, lr=0.05, progress=False, seed=3, device="cpu",
                    evaluator=ToyEvaluator(train, valid))
    defaults.update(kw)
    return Trainer(model, train, valid, **defaults)


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# -- seeding and basic loop -------------------------------------------------------------------------
def test_history_records_and_learning(splits) -> None:
    tr = make_trainer(splits, epochs=6)
    before = tr.evaluator.evaluate(ToyMF(60, 40))["recall@10"]
    history = tr.fit()
    assert [h["epoch"] for h in history] == list(range(6))
    for h in history:
        assert set(h) == {"epoch", "loss", "samples_per_s", "seconds", "lr", "metrics"}
        assert h["samples_per_s"] > 0 and h["seconds"] > 0 and set(h["metrics"]) == {
            "recall@5", "recall@10", "ndcg@5", "ndcg@10"}
    assert history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["metrics"]["recall@10"] > before + 0.1
    assert tr.best_epoch == 5 and tr.best_metrics == history[-1]["metrics"]


@pytest.mark.parametrize("sparse", [False, True])
def test_same_seed_same_metrics_and_weights(splits, sparse) -> None:
    runs = []
    for _ in range(2):
        model = ToyMF(60, 40, sparse=sparse, dropout=0.3)
        history = make_trainer(splits, model, epochs=3).fit()
        runs.append(([h["metrics"] for h in history], [h["loss"] for h in history], weights(model)))
    assert runs[0][0] == runs[1][0] and runs[0][1] == runs[1][1]
    for k in runs[0][2]:
        assert torch.equal(runs[0][2][k], runs[1][2][k]), k
    other = ToyMF(60, 40, sparse=sparse, dropout=0.3)
    make_trainer(splits, other, epochs=3, seed=4).fit()
    assert not torch.equal(weights(other)["user.weight"], runs[0][2]["user.weight"])


def test_eval_every_and_last_epoch(splits) -> None:
    ev = ToyEvaluator(splits[0], splits[1])
    history = make_trainer(splits, epochs=5, eval_every=2, evaluator=ev).fit()
    assert [bool(h["metrics"]) for h in history] == [False, True, False, True, True]
    assert len(ev.calls) == 3


def test_interactions_accepted(splits) -> None:
    train, valid, _ = splits
    tu, ti = (torch.repeat_interleave(torch.arange(60), train.row_lengths()), train.indices)
    x = recfast.data.Interactions(tu.numpy(), ti.numpy(), n_users=60, n_items=40)
    a = ToyMF(60, 40)
    Trainer(a, x, None, epochs=2, batch_size=64, lr=0.05, progress=False, seed=1, device="cpu").fit()
    b = ToyMF(60, 40)
    Trainer(b, train, None, epochs=2, batch_size=64, lr=0.05, progress=False, seed=1, device="cpu").fit()
    assert torch.equal(a.user.weight, b.user.weight)


def test_device_auto_is_cpu_without_cuda(splits) -> None:
    tr = make_trainer(splits, device="auto", epochs=1)
    assert tr.device.type == ("cuda" if torch.cuda.is_available() else "cpu")


# -- optimizers -------------------------------------------------------------------------------------
def test_sparse_tables_get_the_row_sparse_optimizer(splits) -> None:
    model = ToyMF(60, 40, sparse=True)
    tr = make_trainer(splits, model, epochs=1, optimizer="adam")
    tr.fit()
    kinds = {type(o).__name__: [p.shape for g in o.param_groups for p in g["params"]] for o in tr.optimizers}
    assert kinds["Adam"] == [torch.Size([40])]  # the dense bias
    sparse_opt = [o for o in tr.optimizers if type(o) is not torch.optim.Adam]
    assert len(sparse_opt) == 1 and type(sparse_opt[0]).__name__ == "SparseAdam"
    assert {p.shape for g in sparse_opt[0].param_groups for p in g["params"]} == {torch.Size([60, 8]),
                                                                                 torch.Size([40, 8])}


def test_param_groups_own_optimizer_and_lr(splits) -> None:
    model = ToyMF(60, 40)
    tr = make_trainer(splits, model, epochs=2, optimizer="adam", lr=0.05,
                      param_groups=[{"params": "bias", "optimizer": "sgd", "lr": 0.5, "momentum": 0.9}])
    tr.fit()
    sgd = [o for o in tr.optimizers if isinstance(o, torch.optim.SGD)]
    adam = [o for o in tr.optimizers if isinstance(o, torch.optim.Adam)]
    assert len(sgd) == 1 and len(adam) == 1
    assert [p.shape for p in sgd[0].param_groups[0]["params"]] == [torch.Size([40])]
    assert sgd[0].param_groups[0]["lr"] == 0.5 and sgd[0].param_groups[0]["momentum"] == 0.9
    assert len(adam[0].param_groups[0]["params"]) == 2

    # A regex; first matching group wins.
    tr2 = make_trainer(splits, ToyMF(60, 40), epochs=1, param_groups=[
        {"params": ["^user\\."], "lr": 0.01}, {"params": "weight", "optimizer": "adagrad"}])
    tr2.fit()
    assert [type(o).__name__ for o in tr2.optimizers] == ["Adam", "Adagrad", "Adam"]
    assert tr2.optimizers[0].param_groups[0]["lr"] == 0.01

    with pytest.raises(ValueError, match=r"param_groups\[0\] \['nope'\] matches no parameter"):
        make_trainer(splits, ToyMF(60, 40), param_groups=[{"params": "nope"}]).fit()
    with pytest.raises(ValueError, match="bad regular expression"):
        make_trainer(splits, param_groups=[{"params": "("}])
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['lr'\] must be a positive number"):
        make_trainer(splits, param_groups=[{"params": "bias", "lr": 0}])
    with pytest.raises(ValueError, match="cannot build optimizer 'sgd'"):
        make_trainer(splits, ToyMF(60, 40), param_groups=[{"params": "bias", "optimizer": "sgd", "bogus": 1}]).fit()


def test_callable_optimizer_and_rmsprop_rules(splits) -> None:
    seen = []

    def factory(params, lr, weight_decay):
        seen.append(len(params))
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)

    make_trainer(splits, epochs=1, optimizer=factory).fit()
    assert seen == [3]
    make_trainer(splits, epochs=1, optimizer="rmsprop").fit()
    with pytest.raises(ValueError, match="'rmsprop' has no row-sparse version"):
        make_trainer(splits, ToyMF(60, 40, sparse=True), optimizer="rmsprop").fit()


def test_scheduler_by_name_dict_and_callable(splits) -> None:
    tr = make_trainer(splits, epochs=3, lr=0.1, scheduler={"name": "step", "step_size": 1, "gamma": 0.5})
    history = tr.fit()
    assert [h["lr"] for h in history] == pytest.approx([0.1, 0.05, 0.025])
    tr = make_trainer(splits, epochs=2, lr=0.1, scheduler={"name": "ExponentialLR", "gamma": 0.9, "interval": "step"})
    tr.fit()
    n_batches = len(tr.loader)
    assert tr.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.1 * 0.9 ** (2 * n_batches))
    made = []
    tr = make_trainer(splits, epochs=2, scheduler=lambda o: made.append(o) or torch.optim.lr_scheduler.LambdaLR(o, lambda e: 1.0))
    tr.fit()
    assert made == tr.optimizers
    tr = make_trainer(splits, epochs=3, lr=0.1, scheduler={"name": "plateau", "metric": "recall@10", "mode": "max",
                                                           "patience": 0, "factor": 0.5})
    tr.fit()
    with pytest.raises(ValueError, match="unknown scheduler 'nope'"):
        make_trainer(splits, scheduler="nope")
    with pytest.raises(ValueError, match="cannot build scheduler 'step'"):
        make_trainer(splits, epochs=1, scheduler={"name": "step"}).fit()
    with pytest.raises(ValueError, match="ReduceLROnPlateau needs a 'metric'"):
        make_trainer(splits, scheduler="plateau")


def test_grad_clip_dense_and_sparse() -> None:
    a = nn.Parameter(torch.zeros(3))
    b = nn.Parameter(torch.zeros(4, 2))
    a.grad = torch.tensor([3.0, 0.0, 0.0])
    # uncoalesced: row 1 appears twice -> (2, 2) + (2, 2) = (4, 4)... norm^2 = 32; plus 9 = 41
    b.grad = torch.sparse_coo_tensor(torch.tensor([[1, 1]]), torch.full((2, 2), 2.0), (4, 2), check_invariants=True)
    norm = clip_grad_norm([a, b], 1.0)
    assert float(norm) == pytest.approx(math.sqrt(41))
    total = math.sqrt(float(a.grad.pow(2).sum()) + float(b.grad.to_dense().pow(2).sum()))
    assert total == pytest.approx(1.0, rel=1e-5)
    assert b.grad.is_sparse and b.grad.is_coalesced()
    # below the threshold: unchanged
    a.grad = torch.tensor([0.1, 0.0, 0.0])
    b.grad = None
    clip_grad_norm([a, b], 1.0)
    assert torch.equal(a.grad, torch.tensor([0.1, 0.0, 0.0]))


def test_grad_clip_in_training(splits) -> None:
    a, b = ToyMF(60, 40, sparse=True), ToyMF(60, 40, sparse=True)
    make_trainer(splits, a, epochs=1, optimizer="sgd", lr=5.0, grad_clip=1e-3).fit()
    make_trainer(splits, b, epochs=1, optimizer="sgd", lr=5.0).fit()
    init = ToyMF(60, 40, sparse=True)
    moved_a = (a.user.weight - init.user.weight).norm()
    moved_b = (b.user.weight - init.user.weight).norm()
    assert moved_a < 0.1 * moved_b


def test_amp_is_ignored_on_cpu(splits) -> None:
    a, b = ToyMF(60, 40), ToyMF(60, 40)
    make_trainer(splits, a, epochs=1, amp=True).fit()
    make_trainer(splits, b, epochs=1).fit()
    assert torch.equal(a.user.weight, b.user.weight)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_amp_bf16_on_cuda(splits) -> None:
    model = ToyMF(60, 40, sparse=True)
    history = make_trainer(splits, model, epochs=3, amp=True, device="cuda").fit()
    assert model.user.weight.device.type == "cuda" and model.user.weight.dtype == torch.float32
    assert all(math.isfinite(h["loss"]) for h in history) and history[-1]["loss"] < history[0]["loss"]


# -- early stopping ---------------------------------------------------------------------------------
class ScriptedEvaluator:
    """Returns a fixed sequence of metric values, one per call."""

    def __init__(self, values):
        self.values, self.i = list(values), 0

    def evaluate(self, model):
        v = self.values[min(self.i, len(self.values) - 1)]
        self.i += 1
        return {"ndcg@20": v, "recall@20": 1 - v}


def test_early_stopping_patience_and_best_weights_restored(splits, tmp_path) -> None:
    model = ToyMF(60, 40)
    snapshots = []
    ev = ScriptedEvaluator([0.1, 0.3, 0.2, 0.25, 0.29, 0.5])

    class Snap(ScriptedEvaluator):
        def evaluate(self, m):
            snapshots.append(weights(m))
            return ev.evaluate(m)

    tr = make_trainer(splits, model, epochs=10, evaluator=Snap([]), log_dir=tmp_path,
                      early_stopping={"metric": "ndcg@20", "patience": 3})
    history = tr.fit()
    assert len(history) == 5 and tr.stopped_early and tr.best_epoch == 1 and tr.best_value == 0.3
    for k, v in weights(model).items():
        assert torch.equal(v, snapshots[1][k])
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == list(range(5))
    assert lines[1]["metrics"]["ndcg@20"] == 0.3 and "samples_per_s" in lines[0]

    # mode=min watches the other direction; min_delta ignores small improvements
    tr = make_trainer(splits, epochs=10, evaluator=ScriptedEvaluator([0.5, 0.45, 0.44, 0.43, 0.1]),
                      early_stopping={"metric": "ndcg@20", "patience": 3, "mode": "min", "min_delta": 0.02})
    assert len(tr.fit()) == 8 and tr.best_epoch == 4 and tr.best_value == 0.1 and tr.stopped_early


def test_early_stopping_errors(splits) -> None:
    with pytest.raises(ValueError, match="early_stopping needs a 'metric'"):
        make_trainer(splits, early_stopping={"patience": 2})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['patients'\]"):
        make_trainer(splits, early_stopping={"metric": "ndcg@10", "patients": 2})
    with pytest.raises(ValueError, match="mode must be 'max' or 'min'"):
        make_trainer(splits, early_stopping={"metric": "ndcg@10", "mode": "up"})
    with pytest.raises(ValueError, match="need validation data"):
        Trainer(ToyMF(60, 40), splits[0], None, early_stopping={"metric": "ndcg@10"})
    with pytest.raises(ValueError, match=r"metric 'ndcg@20' is not among the evaluator's metrics \['ndcg@10', 'ndcg@5'"):
        make_trainer(splits, epochs=1, early_stopping={"metric": "ndcg@20"}).fit()


# -- checkpoints and resume ---------------------------------------------------------------------------
def test_checkpoint_contents(splits, tmp_path) -> None:
    tr = make_trainer(splits, ToyMF(60, 40, sparse=True), epochs=2, checkpoint_dir=tmp_path,
                      scheduler={"name": "step", "step_size": 1})
    tr.fit()
    state = torch.load(tmp_path / "last.pt", weights_only=False)
    assert state["format"] == "recfast-checkpoint-1" and state["epoch"] == 1 and state["finished"]
    assert state["model_name"] == "_TestToyMF" and state["model_params"]["sparse"] is True
    assert len(state["optimizers"]) == 2 and len(state["schedulers"]) == 2
    assert state["loader"] == {"epoch": 2, "seed": 3}
    assert set(state["rng"]) >= {"torch", "numpy", "python"}
    assert [h["epoch"] for h in state["history"]] == [0, 1]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".last.pt")]  # no temporary left


@pytest.mark.parametrize("sparse", [False, True])
def test_resume_in_process_reproduces_an_uninterrupted_run(splits, tmp_path, sparse) -> None:
    kw = dict(optimizer="adam", scheduler={"name": "step", "step_size": 2, "gamma": 0.5},
              early_stopping={"metric": "ndcg@10", "patience": 10})
    full = ToyMF(60, 40, sparse=sparse, dropout=0.2)
    h_full = make_trainer(splits, full, epochs=5, **kw).fit()
    part = ToyMF(60, 40, sparse=sparse, dropout=0.2)
    # run 3 epochs only (as if killed during the 4th): epochs=5 in the checkpoint's eyes
    tr = make_trainer(splits, part, epochs=5, checkpoint_dir=tmp_path, **kw)
    tr.epochs = 3
    tr.fit()
    resumed = ToyMF(60, 40, sparse=sparse, dropout=0.2)
    tr2 = make_trainer(splits, resumed, epochs=5, checkpoint_dir=tmp_path, resume=True, log_dir=tmp_path, **kw)
    h = tr2.fit()
    assert [r["epoch"] for r in h] == [0, 1, 2, 3, 4]
    assert [r["metrics"] for r in h] == [r["metrics"] for r in h_full]
    for k, v in weights(full).items():
        assert torch.equal(v, weights(resumed)[k]), k
    # A finished run resumes to the same final state without training.
    again = ToyMF(60, 40, sparse=sparse, dropout=0.2)
    tr3 = make_trainer(splits, again, epochs=5, checkpoint_dir=tmp_path, resume=True, **kw)
    assert len(tr3.fit()) == 5
    for k, v in weights(full).items():
        assert torch.equal(v, weights(again)[k]), k


def test_resume_without_checkpoint_starts_fresh_and_errors(splits, tmp_path) -> None:
    a = ToyMF(60, 40)
    make_trainer(splits, a, epochs=2, checkpoint_dir=tmp_path / "none", resume=True).fit()
    b = ToyMF(60, 40)
    make_trainer(splits, b, epochs=2).fit()
    assert torch.equal(a.user.weight, b.user.weight)
    make_trainer(splits, ToyMF(60, 40), epochs=1, checkpoint_dir=tmp_path).fit()
    with pytest.raises(ValueError, match="written with seed 3, not 4"):
        make_trainer(splits, ToyMF(60, 40), epochs=2, checkpoint_dir=tmp_path, resume=True, seed=4).fit()
    with pytest.raises(ValueError, match="holds 1 optimizer states, this trainer has 2"):
        make_trainer(splits, ToyMF(60, 40), epochs=2, checkpoint_dir=tmp_path, resume=True,
                     param_groups=[{"params": "bias", "optimizer": "sgd"}]).fit()
    (tmp_path / "last.pt").write_bytes(b"")
    torch.save({"format": "other"}, tmp_path / "last.pt")
    with pytest.raises(ValueError, match="is not a recfast trainer checkpoint"):
        make_trainer(splits, ToyMF(60, 40), epochs=2, checkpoint_dir=tmp_path, resume=True).fit()


_SCRIPT = textwrap.dedent("""
    import importlib.util, sys, torch
    torch.set_num_threads(1)
    spec = importlib.util.spec_from_file_location("toy_trainer_tests", {test_file!r})
    toy = importlib.util.module_from_spec(spec); spec.loader.exec_module(toy)
    splits = toy.toy_data(120, 80, 0.12)
    model = toy.ToyMF(120, 80, dim=8, sparse={sparse}, dropout=0.2)
    tr = toy.make_trainer(splits, model, epochs=4, batch_size=32, checkpoint_dir={ckpt!r}, log_dir={ckpt!r},
                          resume={resume}, optimizer="adam", early_stopping={{"metric": "ndcg@10", "patience": 9}},
                          scheduler={{"name": "step", "step_size": 1, "gamma": 0.7}})
    tr.fit()
    torch.save(model.state_dict(), {out!r})
""")


def _run_script(tmp: Path, name: str, *, sparse: bool, resume: bool, ckpt: Path, env: dict | None = None,
                wait: bool = True):
    out = tmp / f"{name}.pt"
    script = tmp / f"{name}.py"
    script.write_text(_SCRIPT.format(test_file=str(HERE), sparse=sparse, ckpt=str(ckpt), resume=resume, out=str(out)))
    full_env = {**os.environ, "PYTHONPATH": _PKG_PARENT + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {})}
    proc = subprocess.Popen([sys.executable, str(script)], env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if wait:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()[-3000:]
    return proc, out


def test_sigkill_mid_epoch_then_resume_is_bitwise_identical(tmp_path) -> None:
    sparse = True  # row-sparse tables (row-sparse Adam) and a dense bias (torch Adam)
    _, ref_out = _run_script(tmp_path, "ref", sparse=sparse, resume=False, ckpt=tmp_path / "ref_ckpt")
    ckpt = tmp_path / "ckpt"
    marker = tmp_path / "marker"
    proc, _ = _run_script(tmp_path, "victim", sparse=sparse, resume=False, ckpt=ckpt, wait=False,
                          env={"TOY_SLEEP": "0.01", "TOY_MARKER": str(marker)})
    deadline = time.time() + 90
    killed_at = None
    while time.time() < deadline:
        log = ckpt / "log.jsonl"
        if log.exists() and log.read_text().count("\n") >= 1 and marker.exists():
            ep, batch = map(int, (marker.read_text() or "0 0").split())
            if ep >= 1 and batch >= 3:  # epoch 0's checkpoint is written and epoch 1 is under way
                os.kill(proc.pid, signal.SIGKILL)
                killed_at = (ep, batch)
                break
        if proc.poll() is not None:
            break
        time.sleep(0.005)
    proc.communicate(timeout=30)
    assert killed_at is not None, "the victim finished or stalled before it could be killed"
    assert proc.returncode == -signal.SIGKILL
    assert (ckpt / "last.pt").exists()
    epoch_done = torch.load(ckpt / "last.pt", weights_only=False)["epoch"]
    assert epoch_done < 3
    _, res_out = _run_script(tmp_path, "resumed", sparse=sparse, resume=True, ckpt=ckpt)
    ref, res = torch.load(ref_out), torch.load(res_out)
    assert ref.keys() == res.keys()
    for k in ref:
        assert torch.equal(ref[k], res[k]), k
    # the last epoch's weights (before the best ones were restored) agree too
    last_ref = torch.load(tmp_path / "ref_ckpt" / "last.pt", weights_only=False)
    last_res = torch.load(ckpt / "last.pt", weights_only=False)
    for k in last_ref["model"]:
        assert torch.equal(last_ref["model"][k], last_res["model"][k]), k
    assert [h["metrics"] for h in last_ref["history"]] == [h["metrics"] for h in last_res["history"]]
    lines = [json.loads(line) for line in (ckpt / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [0, 1, 2, 3]


# -- classical models, evaluate(), logs ---------------------------------------------------------------
def test_classical_model_fits_once(splits, tmp_path) -> None:
    tr = make_trainer(splits, ToyPop(60, 40), log_dir=tmp_path)
    history = tr.fit()
    assert len(history) == 1 and history[0]["epoch"] == 0 and "loss" not in history[0]
    assert history[0]["metrics"]["recall@10"] > 0
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 1


def test_evaluate_on_test_with_own_evaluator(splits) -> None:
    train, valid, test = splits
    tr = make_trainer(splits, epochs=2)
    tr.fit()
    ev = ToyEvaluator(train, test)
    assert tr.evaluate(test, evaluator=ev) == ev.evaluate(tr.model)
    with pytest.raises(TypeError, match="evaluator must have an evaluate"):
        tr.evaluate(test, evaluator=object())


def test_default_evaluator_is_recfast_eval(splits) -> None:
    if not hasattr(recfast.eval, "Evaluator"):
        pytest.skip("recfast.eval.Evaluator is not merged yet")
    train, valid, test = splits
    tr = Trainer(ToyMF(60, 40), train, valid, epochs=1, batch_size=64, lr=0.05, progress=False, device="cpu",
                 evaluator={"ks": [5]})
    h = tr.fit()
    assert "ndcg@5" in h[0]["metrics"]
    m = tr.evaluate(test)
    assert 0 <= m["recall@5"] <= 1


def test_fresh_run_truncates_the_log(splits, tmp_path) -> None:
    make_trainer(splits, epochs=3, log_dir=tmp_path).fit()
    make_trainer(splits, epochs=2, log_dir=tmp_path).fit()
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 2


def test_progress_bar_on_a_terminal(splits, monkeypatch) -> None:
    import io

    class Tty(io.StringIO):
        def isatty(self):
            return True

    fake = Tty()
    monkeypatch.setattr(sys, "stderr", fake)
    make_trainer(splits, epochs=1, progress=True).fit()
    assert "epoch 1/1" in fake.getvalue()
    fake2 = Tty()
    monkeypatch.setattr(sys, "stderr", fake2)
    make_trainer(splits, epochs=1, progress=False).fit()
    assert fake2.getvalue() == ""


def test_nan_loss_is_reported(splits) -> None:
    class Bad(ToyMF):
        def loss(self, batch):
            return super().loss(batch) * float("nan")

    with pytest.raises(FloatingPointError, match="training loss is nan in epoch 0"):
        make_trainer(splits, Bad(60, 40), epochs=1).fit()


def test_trainer_errors(splits) -> None:
    train = splits[0]
    with pytest.raises(TypeError, match="model must be a recfast Recommender"):
        Trainer(nn.Linear(2, 2), train)
    with pytest.raises(TypeError, match="train must be a recfast.CSR or recfast.data.Interactions"):
        Trainer(ToyMF(60, 40), [1, 2])
    with pytest.raises(ValueError, match=r"train has shape \(60, 40\), expected the model's \(61, 40\)"):
        Trainer(ToyMF(61, 40), train)
    for kw, msg in [({"epochs": -1}, "epochs must be an int >= 0"), ({"batch_size": 0}, "batch_size must be"),
                    ({"lr": 0.0}, "lr must be a positive number"), ({"lr": "1"}, "lr must be"),
                    ({"weight_decay": -1.0}, "weight_decay must be a non-negative"),
                    ({"eval_every": 0}, "eval_every must be"), ({"grad_clip": 0}, "grad_clip must be a positive"),
                    ({"optimizer": "lion"}, "optimizer must be one of"),
                    ({"scheduler": {"name": "step", "interval": "hour"}}, "interval must be 'epoch' or 'step'")]:
        with pytest.raises(ValueError, match=msg):
            make_trainer(splits, **kw)
    with pytest.raises(TypeError, match="evaluator must have an evaluate"):
        make_trainer(splits, evaluator=42)
    with pytest.raises(ValueError, match="requested but CUDA is not available") if not torch.cuda.is_available() \
            else pytest.raises(AssertionError):
        make_trainer(splits, device="cuda")
        raise AssertionError

    class NoEpoch(ToyMF):
        def make_loader(self, *a, **k):
            return [1, 2]

    with pytest.raises(TypeError, match="has no set_epoch"):
        make_trainer(splits, NoEpoch(60, 40)).fit()


def test_rating_models_get_the_ratings_and_fit_twice_starts_over(splits) -> None:
    class RatingToy(ToyMF):
        batch_kind = "ratings"

    x = recfast.data.Interactions([0, 1, 2, 3], [1, 2, 3, 0], n_users=60, n_items=40, ratings=[5.0, 3.0, 4.0, 1.0])
    tr = Trainer(RatingToy(60, 40), x, epochs=1, batch_size=2, progress=False, device="cpu")
    assert tr.train.values is not None and sorted(tr.train.values.tolist()) == [1.0, 3.0, 4.0, 5.0]
    assert Trainer(ToyMF(60, 40), x, epochs=1, progress=False, device="cpu").train.values is None
    tr = make_trainer(splits, epochs=2)
    first = [h["loss"] for h in tr.fit()]
    second = tr.fit()
    assert [h["epoch"] for h in second] == [0, 1] and [h["loss"] for h in second] != first  # continues from the weights


def test_tensorboard_scalars_when_installed(splits, tmp_path, monkeypatch) -> None:
    """A stand-in torch.utils.tensorboard records what the trainer writes (tensorboard is optional)."""
    import types

    calls = []

    class SummaryWriter:
        def __init__(self, log_dir):
            calls.append(("open", log_dir))

        def add_scalar(self, tag, value, step):
            calls.append((tag, step))

        def flush(self):
            pass

        def close(self):
            calls.append(("close", None))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=SummaryWriter))
    make_trainer(splits, epochs=2, log_dir=tmp_path).fit()
    assert calls[0] == ("open", str(tmp_path / "tensorboard")) and calls[-1] == ("close", None)
    assert ("train/loss", 1) in calls and ("valid/ndcg@10", 1) in calls and ("train/samples_per_s", 0) in calls
