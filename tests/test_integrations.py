"""recfast's pieces outside recfast.Trainer: a hand-written torch loop over the real loader and the
fused BPR op, a recfast model and its loader in a plain loop, and a PyTorch Lightning module
(Lightning is optional; that test skips without it)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import recfast

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_trainer import ToyEvaluator, ToyMF, toy_data  # noqa: E402


def _recall_at(user_emb: torch.Tensor, item_emb: torch.Tensor, train: recfast.CSR, test: recfast.CSR, k: int) -> float:
    """Plain torch recall@k with the training items masked."""
    seen = torch.from_numpy(train.to_scipy().toarray() > 0)
    held = torch.from_numpy(test.to_scipy().toarray() > 0)
    users = torch.nonzero(held.sum(1) > 0).squeeze(1)
    scores = (user_emb[users] @ item_emb.T).masked_fill(seen[users], -math.inf)
    top = scores.topk(k, dim=1).indices
    hits = held[users].gather(1, top).sum(1).double()
    return float((hits / held[users].sum(1)).mean())


def _real_parts():
    loader = getattr(recfast.data, "PairwiseLoader", None)
    bpr = getattr(recfast.ops, "bpr_loss", None)
    if loader is None or not callable(bpr):
        pytest.skip("recfast.data.PairwiseLoader / recfast.ops.bpr_loss are not merged yet")
    return loader, bpr


@pytest.mark.parametrize("sparse", [False, True])
def test_real_loader_and_bpr_op_in_a_hand_written_loop(sparse) -> None:
    PairwiseLoader, bpr_loss = _real_parts()
    x = recfast.data.synthetic(300, 200, 6000, seed=0)
    parts = recfast.data.random_split(x, (0.8, 0.2), seed=0) if hasattr(recfast.data, "random_split") else None
    if parts is None:
        pytest.skip("recfast.data.random_split is not merged yet")
    train, test = parts[0].to_csr(), parts[1].to_csr()
    g = torch.Generator().manual_seed(0)
    user_emb = torch.nn.Parameter(torch.randn(300, 16, generator=g) * 0.1)
    item_emb = torch.nn.Parameter(torch.randn(200, 16, generator=g) * 0.1)
    opt = (torch.optim.SparseAdam if sparse else torch.optim.Adam)([user_emb, item_emb], lr=0.02)
    loader = PairwiseLoader(train, 512, seed=0)
    before = _recall_at(user_emb.detach(), item_emb.detach(), train, test, 20)
    losses = []
    for epoch in range(6):
        loader.set_epoch(epoch)
        total, n = 0.0, 0
        for users, pos, neg in loader:
            assert users.shape == pos.shape == neg.shape
            opt.zero_grad()
            loss = bpr_loss(user_emb, item_emb, users, pos, neg, sparse_grad=sparse)
            loss.backward()
            assert user_emb.grad.is_sparse == sparse
            opt.step()
            total += float(loss.detach()) * len(users)
            n += len(users)
        losses.append(total / n)
        assert n == train.nnz  # an epoch covers every training interaction once
    assert losses[-1] < losses[0] - 0.05
    assert _recall_at(user_emb.detach(), item_emb.detach(), train, test, 20) > before + 0.02

    # the loader is a pure function of (seed, epoch): the same epoch again gives the same batches
    loader.set_epoch(2)
    first = [torch.cat(b) for b in loader]
    loader.set_epoch(2)
    again = [torch.cat(b) for b in loader]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    state = loader.state_dict()
    other = PairwiseLoader(train, 512, seed=0)
    other.load_state_dict(state)
    assert all(torch.equal(torch.cat(a), torch.cat(b)) for a, b in zip(loader, other))


def test_recfast_model_and_loader_in_a_plain_loop() -> None:
    """A recfast model needs nothing from the Trainer: make_loader + loss + any optimizer."""
    train, valid, _ = toy_data()
    model = ToyMF(60, 40, sparse=True)
    model.prepare(train)
    loader = model.make_loader(train, 64, seed=0)
    opt_dense = torch.optim.Adam([model.item_bias], lr=0.05)
    opt_sparse = torch.optim.SparseAdam(model.sparse_parameters(), lr=0.05)
    ev = ToyEvaluator(train, valid)
    before = ev.evaluate(model)["recall@10"]
    for epoch in range(6):
        loader.set_epoch(epoch)
        for batch in loader:
            opt_dense.zero_grad()
            opt_sparse.zero_grad()
            model.loss(batch).backward()
            opt_dense.step()
            opt_sparse.step()
        model.on_epoch_end()
    assert ev.evaluate(model)["recall@10"] > before + 0.1


def test_lightning_module() -> None:
    pl = None
    for name in ("lightning.pytorch", "pytorch_lightning"):
        try:
            pl = __import__(name, fromlist=["LightningModule"])
            break
        except ImportError:
            continue
    if pl is None:
        pytest.skip("PyTorch Lightning is not installed (optional)")
    use_real = callable(getattr(recfast.ops, "bpr_loss", None)) and hasattr(recfast.data, "PairwiseLoader")
    train, valid, _ = toy_data()

    class LitBPR(pl.LightningModule):
        """Embedding tables + recfast's loader and fused BPR op (or the toy model where they are missing)."""

        def __init__(self) -> None:
            super().__init__()
            self.model = ToyMF(60, 40)
            self.loader = (recfast.data.PairwiseLoader(train, 64, seed=0) if use_real
                           else self.model.make_loader(train, 64, seed=0))

        def train_dataloader(self):
            return self.loader

        def on_train_epoch_start(self) -> None:
            self.loader.set_epoch(self.current_epoch)  # the epoch's order and negatives

        def training_step(self, batch, batch_idx):
            users, pos, neg = batch
            if use_real:
                loss = recfast.ops.bpr_loss(self.model.user.weight, self.model.item.weight, users, pos, neg,
                                            item_bias=self.model.item_bias)
            else:
                loss = self.model.loss((users, pos, neg))
            self.log("loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=0.05)

    lit = LitBPR()
    ev = ToyEvaluator(train, valid)
    before = ev.evaluate(lit.model)["recall@10"]
    trainer = pl.Trainer(max_epochs=6, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(lit)
    assert ev.evaluate(lit.model)["recall@10"] > before + 0.1
    assert np.isfinite(float(trainer.callback_metrics["loss"]))
