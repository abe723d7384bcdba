"""Biased matrix factorization for explicit ratings (Koren et al.; Collie's MF with biases).

``prediction(u, i) = g + b_u + b_i + p_u . q_i``, optionally squashed into a rating range:
``lo + (hi - lo) * sigmoid(raw)`` with ``y_range=(lo, hi)``. Trained with mean squared error on
the stored ratings of the training CSR (``Interactions.to_csr(values="ratings")``).

The biases are parameters named ``global_bias``, ``user_bias`` and ``item_bias`` so a trainer's
parameter groups can give them their own optimizer or learning rate.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..csr import CSR
from ..registry import register_model
from ._loaders import IndexBatchLoader, csr_on
from .base import Recommender

__all__ = ["BiasedMF", "RatingsLoader"]


class RatingsLoader(IndexBatchLoader):
    """Batches ``(users int64, items int64, ratings float32)`` over the stored entries of a ratings
    CSR, in a seeded order per epoch (see ``IndexBatchLoader``).

    Examples
    --------
    >>> import torch, recfast
    >>> m = recfast.CSR.from_coo([0, 1, 1], [2, 0, 1], [4.0, 3.0, 5.0], shape=(2, 3))
    >>> loader = RatingsLoader(m, 2, seed=0)
    >>> len(loader), sum(len(b[0]) for b in loader)
    (2, 3)
    """

    def __init__(self, csr: CSR, batch_size: int, *, seed: int, shuffle: bool = True,
                 device: str | torch.device = "cpu", rank: int = 0, world_size: int = 1) -> None:
        if not isinstance(csr, CSR):
            raise TypeError(f"RatingsLoader: csr must be a recfast.CSR, got {type(csr).__name__}")
        if csr.values is None:
            raise ValueError("RatingsLoader: the CSR has no values; build it with Interactions.to_csr(values='ratings')")
        super().__init__(csr.nnz, batch_size, seed=seed, shuffle=shuffle, device=device, rank=rank,
                         world_size=world_size)
        cpu = csr.to("cpu")
        users = torch.repeat_interleave(torch.arange(csr.n_rows, dtype=torch.int64), cpu.row_lengths())
        self.users = users.to(self.device)
        self.items = cpu.indices.to(torch.int64).to(self.device)
        self.ratings = cpu.values.to(self.device)  # type: ignore[union-attr]

    def _make_batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.users[idx], self.items[idx], self.ratings[idx]


@register_model("BiasedMF")
class BiasedMF(Recommender):
    """Matrix factorization with global, user and item biases, fitted to explicit ratings (MSE).

    Parameters
    ----------
    n_users, n_items : sizes of the id spaces.
    embedding_dim : factors per user and item.
    y_range : optional ``(lo, hi)``: predictions are ``lo + (hi - lo) * sigmoid(raw)``.
    l2 : L2 penalty on the factor and bias rows of each batch (``l2 * mean(|p_u|^2 + |q_i|^2 + b_u^2 + b_i^2)``),
        for optimizers without weight decay (sparse ones).
    init_std : standard deviation of the initial factors.
    sparse : the user/item tables (factors and biases) give row-sparse gradients.

    ``prepare(train)`` sets the global bias from the mean training rating (once). For ranking,
    ``embeddings()`` gives (P, Q, item bias): the global and user biases and the monotone
    ``y_range`` squashing do not change a user's ranking, so ``score``/``recommend`` order items
    by ``b_i + p_u . q_i``; use ``predict`` for ratings.

    Examples
    --------
    >>> import torch
    >>> m = BiasedMF(3, 4, embedding_dim=2, y_range=(1, 5))
    >>> bool(((m.predict(torch.tensor([0]), torch.tensor([1])) - 3).abs() < 0.1).all())
    True
    """

    batch_kind = "ratings"

    def __init__(self, n_users: int, n_items: int, *, embedding_dim: int = 32,
                 y_range: tuple[float, float] | list[float] | None = None, l2: float = 0.0, init_std: float = 0.01,
                 sparse: bool = True) -> None:
        if int(embedding_dim) <= 0:
            raise ValueError(f"BiasedMF: embedding_dim must be positive, got {embedding_dim}")
        if y_range is not None:
            if len(y_range) != 2 or not float(y_range[0]) < float(y_range[1]):
                raise ValueError(f"BiasedMF: y_range must be (lo, hi) with lo < hi, got {y_range!r}")
            y_range = [float(y_range[0]), float(y_range[1])]
        if float(l2) < 0:
            raise ValueError(f"BiasedMF: l2 must be >= 0, got {l2}")
        super().__init__(n_users, n_items, embedding_dim=int(embedding_dim), y_range=y_range, l2=float(l2),
                         init_std=float(init_std), sparse=bool(sparse))
        d = int(embedding_dim)
        self.user_emb = nn.Parameter(torch.randn(self.n_users, d) * float(init_std))
        self.item_emb = nn.Parameter(torch.randn(self.n_items, d) * float(init_std))
        self.user_bias = nn.Parameter(torch.zeros(self.n_users, 1))
        self.item_bias = nn.Parameter(torch.zeros(self.n_items, 1))
        self.global_bias = nn.Parameter(torch.zeros(1))
        self._global_set = False

    # -- training -------------------------------------------------------------------------------
    def prepare(self, train: CSR) -> None:
        """Keep the training ratings; the first call sets the global bias to their mean."""
        super().prepare(train)
        if train.values is None:
            raise ValueError("BiasedMF.prepare: the training CSR has no ratings; build it with "
                             "Interactions.to_csr(values='ratings')")
        if not self._global_set and train.nnz:
            mean = float(train.values.double().mean())
            self.global_bias.data.fill_(self._raw_of(mean))
            self._global_set = True

    def _raw_of(self, rating: float) -> float:
        """The raw score whose prediction is ``rating`` (inverse of the y_range squashing)."""
        yr = self.params["y_range"]
        if yr is None:
            return rating
        lo, hi = yr
        p = min(max((rating - lo) / (hi - lo), 1e-4), 1 - 1e-4)
        return math.log(p / (1 - p))

    def make_loader(self, train: CSR, batch_size: int, *, seed: int, device: str | torch.device = "cpu",
                    rank: int = 0, world_size: int = 1) -> RatingsLoader:
        """``RatingsLoader`` over the training ratings: batches of (users, items, ratings)."""
        return RatingsLoader(train, batch_size, seed=seed, device=device, rank=rank, world_size=world_size)

    def _rows(self, table: nn.Parameter, idx: torch.Tensor) -> torch.Tensor:
        return F.embedding(idx, table, sparse=self.params["sparse"])

    def raw(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``g + b_u + b_i + p_u . q_i`` for the pairs (before the y_range squashing)."""
        dev = self.user_emb.device
        users = torch.as_tensor(users).to(dev, torch.int64)
        items = torch.as_tensor(items).to(dev, torch.int64)
        p, q = self._rows(self.user_emb, users), self._rows(self.item_emb, items)
        bu, bi = self._rows(self.user_bias, users).squeeze(-1), self._rows(self.item_bias, items).squeeze(-1)
        return self.global_bias + bu + bi + (p * q).sum(-1)

    def _squash(self, raw: torch.Tensor) -> torch.Tensor:
        yr = self.params["y_range"]
        return raw if yr is None else yr[0] + (yr[1] - yr[0]) * torch.sigmoid(raw)

    def predict(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Predicted ratings of the pairs (users[b], items[b])."""
        return self._squash(self.raw(users, items))

    def loss(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Mean squared error on the batch's ratings (plus the ``l2`` penalty)."""
        if not isinstance(batch, (tuple, list)) or len(batch) != 3:
            raise ValueError(f"BiasedMF.loss: expected a ratings batch (users, items, ratings), got {type(batch).__name__}")
        users, items, ratings = batch
        if not (users.shape == items.shape == ratings.shape):
            raise ValueError(f"BiasedMF.loss: users, items and ratings must have one shape, got "
                             f"{tuple(users.shape)}, {tuple(items.shape)}, {tuple(ratings.shape)}")
        dev = self.user_emb.device
        users, items = users.to(dev, torch.int64), items.to(dev, torch.int64)
        pred = self._squash(self.raw(users, items))
        loss = F.mse_loss(pred, ratings.to(dev, pred.dtype))
        l2 = self.params["l2"]
        if l2 > 0:
            p, q = self._rows(self.user_emb, users), self._rows(self.item_emb, items)
            bu, bi = self._rows(self.user_bias, users), self._rows(self.item_bias, items)
            loss = loss + l2 * ((p * p).sum(-1) + (q * q).sum(-1) + (bu * bu).sum(-1) + (bi * bi).sum(-1)).mean()
        return loss

    def sparse_parameters(self) -> list[nn.Parameter]:
        if not self.params["sparse"]:
            return []
        return [self.user_emb, self.item_emb, self.user_bias, self.item_bias]

    # -- metrics --------------------------------------------------------------------------------
    @torch.no_grad()
    def _errors(self, csr: CSR, batch_size: int) -> torch.Tensor:
        if not isinstance(csr, CSR):
            raise TypeError(f"BiasedMF: expected a ratings recfast.CSR, got {type(csr).__name__}")
        if csr.values is None:
            raise ValueError("BiasedMF: the CSR has no ratings; build it with Interactions.to_csr(values='ratings')")
        if csr.shape != (self.n_users, self.n_items):
            raise ValueError(f"BiasedMF: the CSR has shape {csr.shape}, expected ({self.n_users}, {self.n_items})")
        if csr.nnz == 0:
            raise ValueError("BiasedMF: the ratings CSR is empty")
        dev = self.user_emb.device
        m = csr_on(self, csr, dev)
        users = torch.repeat_interleave(torch.arange(m.n_rows, device=dev), m.row_lengths())
        items = m.indices.to(torch.int64)
        out = []
        for s in range(0, m.nnz, batch_size):
            out.append(self.predict(users[s:s + batch_size], items[s:s + batch_size]) - m.values[s:s + batch_size])  # type: ignore[index]
        return torch.cat(out).double()

    def rmse(self, csr: CSR, *, batch_size: int = 1 << 16) -> float:
        """Root mean squared error of the predictions on the ratings stored in ``csr``."""
        was = self.training
        self.eval()
        try:
            return float(self._errors(csr, batch_size).pow(2).mean().sqrt())
        finally:
            self.train(was)

    def mae(self, csr: CSR, *, batch_size: int = 1 << 16) -> float:
        """Mean absolute error of the predictions on the ratings stored in ``csr``."""
        was = self.training
        self.eval()
        try:
            return float(self._errors(csr, batch_size).abs().mean())
        finally:
            self.train(was)

    # -- ranking --------------------------------------------------------------------------------
    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(user factors, item factors, item bias): ranks items by ``b_i + p_u . q_i``."""
        return self.user_emb.detach(), self.item_emb.detach(), self.item_bias.detach().squeeze(-1)

    def extra_state(self) -> dict[str, Any]:
        return {"global_set": self._global_set}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self._global_set = bool(state.get("global_set", True))
