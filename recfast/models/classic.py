"""Models fitted in closed form, with no training loop: Popularity, EASE, ItemKNN."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from ..csr import CSR
from ..registry import register_model
from .base import Recommender

__all__ = ["Popularity", "EASE", "ItemKNN"]


def _resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@register_model("Popularity")
class Popularity(Recommender):
    """Ranks items by their number of training interactions (the baseline every model must beat).

    Example
    -------
    >>> import recfast, torch
    >>> train = recfast.data.synthetic(50, 30, 400, seed=0).to_csr()
    >>> model = recfast.models.Popularity(50, 30).fit(train)
    >>> items, scores = model.recommend(torch.tensor([0, 1]), k=5)
    >>> items.shape
    torch.Size([2, 5])
    """

    iterative = False

    def __init__(self, n_users: int, n_items: int) -> None:
        super().__init__(n_users, n_items)
        self.register_buffer("item_popularity", torch.zeros(n_items))

    def fit(self, train: CSR) -> "Popularity":
        self.prepare(train)
        counts = torch.bincount(train.indices.to(torch.int64).cpu(), minlength=self.n_items).float()
        self.item_popularity.copy_(counts)
        return self

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        # A zero-width dot product plus the popularity as item bias: ranks with the streaming top-k.
        dev = self.item_popularity.device
        return (torch.zeros(self.n_users, 1, device=dev), torch.zeros(self.n_items, 1, device=dev),
                self.item_popularity)

    def similar_items(self, items: Any, k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError("Popularity has no item similarity")


@register_model("EASE")
class EASE(Recommender):
    """Embarrassingly Shallow Autoencoder (Steck 2019): B = I - P diagMat(1 / diag(P)),
    P = (X^T X + l2 I)^-1, with diag(B) = 0; scores are X_u B.

    The Gram inverse is dense (n_items^2 floats): 40,000 items need 6.4 GB in float32.

    Parameters
    ----------
    l2 : the ridge penalty (Steck uses a few hundred for MovieLens-sized data).
    dtype : "float32" or "float64" for the inverse.
    device : where to invert ("cpu", "cuda" or "auto").
    """

    iterative = False

    def __init__(self, n_users: int, n_items: int, *, l2: float = 500.0, dtype: str = "float32",
                 device: str = "cpu") -> None:
        super().__init__(n_users, n_items, l2=l2, dtype=dtype, device=device)
        if l2 <= 0:
            raise ValueError(f"EASE: l2 must be positive, got {l2}")
        if dtype not in ("float32", "float64"):
            raise ValueError(f"EASE: dtype must be 'float32' or 'float64', got {dtype!r}")
        self.l2 = float(l2)
        self.dtype = getattr(torch, dtype)
        self.device_name = device
        self.register_buffer("weights", torch.zeros(0, 0))

    def fit(self, train: CSR) -> "EASE":
        self.prepare(train)
        dev = _resolve_device(self.device_name)
        x = train.to_scipy().astype(np.float64 if self.dtype == torch.float64 else np.float32)
        gram = torch.from_numpy((x.T @ x).toarray()).to(dev, self.dtype)
        gram.diagonal().add_(self.l2)
        p = torch.linalg.inv(gram)
        b = p / (-p.diagonal())
        b.diagonal().zero_()
        self.weights = b.to(torch.float32)
        return self

    def score_users(self, users: torch.Tensor) -> torch.Tensor:
        if self.train_csr is None or self.weights.numel() == 0:
            raise RuntimeError("EASE: call fit(train) first")
        rows = self.train_csr.to(self.weights.device).dense_rows(users.to(self.weights.device))
        return rows @ self.weights

    @torch.no_grad()
    def similar_items(self, items: Any, k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
        from .. import ops

        items = torch.as_tensor(items, dtype=torch.int64)
        scores = self.weights[items.to(self.weights.device)].contiguous()
        self_mask = CSR(torch.arange(items.numel() + 1), items.cpu(), (items.numel(), self.n_items), check=False)
        s, idx = ops.topk_scores(scores, k, exclude=self_mask.to(scores.device))
        return idx, s


@register_model("ItemKNN")
class ItemKNN(Recommender):
    """Item-based k-nearest neighbours: cosine similarity with shrinkage,
    sim(i, j) = <x_i, x_j> / (|x_i| |x_j| + shrink), keeping the ``k`` most similar items per item.
    A user's score for item j is the sum of sim(i, j) over the items i in the user's history.
    """

    iterative = False

    def __init__(self, n_users: int, n_items: int, *, k: int = 100, shrink: float = 10.0,
                 block_size: int = 2048) -> None:
        super().__init__(n_users, n_items, k=k, shrink=shrink, block_size=block_size)
        if k <= 0:
            raise ValueError(f"ItemKNN: k must be positive, got {k}")
        if shrink < 0:
            raise ValueError(f"ItemKNN: shrink must be non-negative, got {shrink}")
        self.k = int(k)
        self.shrink = float(shrink)
        self.block_size = int(block_size)
        self.similarity: CSR | None = None

    def fit(self, train: CSR) -> "ItemKNN":
        from .. import ops

        self.prepare(train)
        x = train.to_scipy().tocsc().astype(np.float32)
        xt = x.T.tocsr()
        norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=0)).ravel()).astype(np.float32)
        k = min(self.k, max(self.n_items - 1, 0))
        rows, cols, vals = [], [], []
        for start in range(0, self.n_items, self.block_size):
            stop = min(start + self.block_size, self.n_items)
            dots = torch.from_numpy((xt[start:stop] @ x).toarray())
            denom = torch.from_numpy(norms[start:stop, None] * norms[None, :] + self.shrink).clamp_min(1e-12)
            sims = (dots / denom).contiguous()
            # An item is not its own neighbour.
            mask = CSR(torch.arange(stop - start + 1), torch.arange(start, stop, dtype=torch.int32),
                       (stop - start, self.n_items), check=False)
            s, idx = ops.topk_scores(sims, k, exclude=mask)
            keep = (idx >= 0) & (s > 0)
            r = torch.arange(start, stop).unsqueeze(1).expand_as(idx)
            rows.append(r[keep])
            cols.append(idx[keep])
            vals.append(s[keep])
        r = torch.cat(rows) if rows else torch.empty(0, dtype=torch.int64)
        c = torch.cat(cols) if cols else torch.empty(0, dtype=torch.int64)
        v = torch.cat(vals) if vals else torch.empty(0)
        self.similarity = CSR.from_coo(r, c, v, shape=(self.n_items, self.n_items))
        return self

    def score_users(self, users: torch.Tensor) -> torch.Tensor:
        if self.similarity is None or self.train_csr is None:
            raise RuntimeError("ItemKNN: call fit(train) first")
        x = self.train_csr.to_scipy()[users.cpu().numpy()]
        return torch.from_numpy((x @ self.similarity.to_scipy()).toarray().astype(np.float32))

    @torch.no_grad()
    def similar_items(self, items: Any, k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
        from .. import ops

        if self.similarity is None:
            raise RuntimeError("ItemKNN: call fit(train) first")
        items = torch.as_tensor(items, dtype=torch.int64)
        sims = self.similarity.dense_rows(items)
        s, idx = ops.topk_scores(sims, k)
        return idx, s

    def extra_state(self) -> dict[str, Any]:
        return {} if self.similarity is None else {"similarity": self.similarity.__getstate__()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "similarity" in state:
            sim = CSR.__new__(CSR)
            sim.__setstate__(state["similarity"])
            self.similarity = sim
