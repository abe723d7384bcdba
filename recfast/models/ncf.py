"""Neural collaborative filtering (He et al., WWW 2017): GMF, MLP and NeuMF.

All three are trained pointwise: each positive (user, item) comes with ``num_negatives`` sampled
unseen items labelled 0, and the loss is binary cross-entropy on the logits.

- ``GMF``: ``logit = h . (p_u * q_i) + b``. Since ``h . (p_u * q_i) = (h * p_u) . q_i``, GMF
  exposes ``embeddings()`` = (h * P, Q, b) and ranks with the streaming top-k.
- ``MLP``: ``logit = out(tower([p_u, q_i]))``; ``layers[0]`` is the width of the concatenated
  embedding (so each embedding has ``layers[0] // 2`` dims, as in the paper's code) and the
  tower is ``layers[0] -> layers[1] -> ... -> layers[-1]`` with ReLU (and optional dropout).
- ``NeuMF``: GMF and MLP branches with their own embeddings, the last layers concatenated
  into one output layer. ``NeuMF.from_pretrained(gmf, mlp, alpha)`` starts from trained branches
  as the paper does.

MLP and NeuMF have no dot-product form: ``score_users`` computes scores in blocks of users (the
first tower layer splits into a user part and an item part, so each block costs one broadcast
add plus the rest of the tower).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_model
from .base import Recommender

__all__ = ["GMF", "MLP", "NeuMF"]

#: floats a score block may hold in its widest tower activation (64 MiB).
_BLOCK_FLOATS = 1 << 24


def _check_layers(name: str, layers: Sequence[int]) -> list[int]:
    layers = [int(x) for x in layers]
    if len(layers) < 1 or any(x <= 0 for x in layers):
        raise ValueError(f"{name}: layers must be a non-empty list of positive widths, got {layers}")
    if layers[0] % 2:
        raise ValueError(f"{name}: layers[0] is the concatenated user+item embedding width and must be even, got {layers[0]}")
    return layers


def _check_common(name: str, num_negatives: int, dropout: float = 0.0) -> None:
    if int(num_negatives) < 1:
        raise ValueError(f"{name}: num_negatives must be >= 1, got {num_negatives}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"{name}: dropout must be in [0, 1), got {dropout}")


def _pointwise_batch(name: str, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if not isinstance(batch, (tuple, list)) or len(batch) != 3:
        raise ValueError(f"{name}.loss: expected a pointwise batch (users, items, labels), got {type(batch).__name__}"
                         f"{'' if not isinstance(batch, (tuple, list)) else f' of length {len(batch)}'}")
    users, items, labels = batch
    if users.dim() == items.dim() - 1 and users.shape == items.shape[:-1]:  # users (B,), items (B, 1 + k)
        users = users.unsqueeze(-1).expand_as(items)
    if users.shape != items.shape or labels.shape != users.shape:
        raise ValueError(f"{name}.loss: users, items and labels must have one shape, got "
                         f"{tuple(users.shape)}, {tuple(items.shape)}, {tuple(labels.shape)}")
    return users.long().reshape(-1), items.long().reshape(-1), labels.float().reshape(-1)


class _Tower(nn.Module):
    """The MLP branch: user and item tables of ``layers[0] // 2`` dims and a ReLU tower."""

    def __init__(self, n_users: int, n_items: int, layers: list[int], dropout: float, sparse: bool) -> None:
        super().__init__()
        half = layers[0] // 2
        self.user_emb = nn.Embedding(n_users, half, sparse=sparse)
        self.item_emb = nn.Embedding(n_items, half, sparse=sparse)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(layers[:-1], layers[1:]))
        self.dropout = float(dropout)
        nn.init.normal_(self.user_emb.weight, std=0.01)
        nn.init.normal_(self.item_emb.weight, std=0.01)
        for lin in self.layers:
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def _rest(self, h: torch.Tensor, start: int) -> torch.Tensor:
        for j, lin in enumerate(self.layers):
            if j < start:
                continue
            h = F.relu(lin(h))
            if self.dropout > 0:
                h = F.dropout(h, self.dropout, self.training)
        return h

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self.user_emb(users), self.item_emb(items)], dim=-1)
        if self.dropout > 0 and not self.layers:
            h = F.dropout(h, self.dropout, self.training)
        return self._rest(h, 0)

    def all_items(self, users: torch.Tensor) -> torch.Tensor:
        """Tower outputs for every (user in ``users``, item): (B, n_items, layers[-1])."""
        p = self.user_emb.weight[users]
        q = self.item_emb.weight
        if not self.layers:  # no hidden layer: the "tower" is the concatenation itself
            b, n = p.shape[0], q.shape[0]
            return torch.cat([p.unsqueeze(1).expand(b, n, -1), q.unsqueeze(0).expand(b, n, -1)], dim=-1)
        first = self.layers[0]
        half = p.shape[1]
        up = p @ first.weight[:, :half].T + first.bias  # (B, h1)
        iq = q @ first.weight[:, half:].T  # (n_items, h1)
        h = F.relu(up.unsqueeze(1) + iq.unsqueeze(0))
        return self._rest(h, 1)

    @property
    def out_dim(self) -> int:
        return self.layers[-1].out_features if self.layers else 2 * self.user_emb.embedding_dim


class _NCFBase(Recommender):
    batch_kind = "pointwise"

    def loss(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Binary cross-entropy with logits over the batch's positives and sampled negatives."""
        users, items, labels = _pointwise_batch(type(self).__name__, batch)
        dev = self.out.weight.device
        return F.binary_cross_entropy_with_logits(self(users.to(dev), items.to(dev)), labels.to(dev))

    def _block_rows(self, width: int) -> int:
        return max(1, _BLOCK_FLOATS // max(1, self.n_items * width))


@register_model("GMF")
class GMF(_NCFBase):
    """Generalized matrix factorization: ``logit(u, i) = h . (p_u * q_i) + b``.

    Parameters
    ----------
    n_users, n_items : sizes of the id spaces.
    embedding_dim : predictive factors (the paper's 8-64).
    num_negatives : sampled negatives per positive (the paper's 4).
    sparse : the embedding tables give row-sparse gradients (listed by ``sparse_parameters()``,
        for the trainer's row-sparse optimizer).

    Examples
    --------
    >>> import torch
    >>> m = GMF(5, 7, embedding_dim=4)
    >>> m.loss((torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([1.0, 0.0]))).shape
    torch.Size([])
    """

    def __init__(self, n_users: int, n_items: int, *, embedding_dim: int = 8, num_negatives: int = 4,
                 sparse: bool = True) -> None:
        _check_common("GMF", num_negatives)
        if int(embedding_dim) <= 0:
            raise ValueError(f"GMF: embedding_dim must be positive, got {embedding_dim}")
        super().__init__(n_users, n_items, embedding_dim=int(embedding_dim), num_negatives=int(num_negatives),
                         sparse=bool(sparse))
        self.num_negatives = int(num_negatives)
        self.user_emb = nn.Embedding(self.n_users, int(embedding_dim), sparse=bool(sparse))
        self.item_emb = nn.Embedding(self.n_items, int(embedding_dim), sparse=bool(sparse))
        self.out = nn.Linear(int(embedding_dim), 1)
        nn.init.normal_(self.user_emb.weight, std=0.01)
        nn.init.normal_(self.item_emb.weight, std=0.01)
        nn.init.kaiming_uniform_(self.out.weight, a=1.0)  # LeCun uniform, as the paper's code
        nn.init.zeros_(self.out.bias)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.out(self.user_emb(users) * self.item_emb(items)).squeeze(-1)

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [self.user_emb.weight, self.item_emb.weight] if self.params["sparse"] else []

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(h * P, Q, b for every item): dot products equal the logits exactly."""
        h = self.out.weight[0]
        return (self.user_emb.weight * h).detach(), self.item_emb.weight.detach(), \
            self.out.bias.detach().expand(self.n_items)


@register_model("MLP")
class MLP(_NCFBase):
    """NCF's multi-layer perceptron: ``logit(u, i) = out(tower([p_u, q_i]))``.

    Parameters
    ----------
    layers : tower widths; ``layers[0]`` is the concatenated embedding width (each embedding
        has ``layers[0] // 2`` dims), then ReLU layers ``layers[0] -> layers[1] -> ...``.
    dropout : dropout after each tower layer while training.
    num_negatives, sparse : as ``GMF``.
    """

    def __init__(self, n_users: int, n_items: int, *, layers: Sequence[int] = (64, 32, 16, 8), dropout: float = 0.0,
                 num_negatives: int = 4, sparse: bool = True) -> None:
        layers = _check_layers("MLP", layers)
        _check_common("MLP", num_negatives, dropout)
        super().__init__(n_users, n_items, layers=layers, dropout=float(dropout), num_negatives=int(num_negatives),
                         sparse=bool(sparse))
        self.num_negatives = int(num_negatives)
        self.tower = _Tower(self.n_users, self.n_items, layers, float(dropout), bool(sparse))
        self.out = nn.Linear(self.tower.out_dim, 1)
        nn.init.kaiming_uniform_(self.out.weight, a=1.0)
        nn.init.zeros_(self.out.bias)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.out(self.tower(users, items)).squeeze(-1)

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [self.tower.user_emb.weight, self.tower.item_emb.weight] if self.params["sparse"] else []

    @torch.no_grad()
    def score_users(self, users: torch.Tensor) -> torch.Tensor:
        """Logits of every item for each user (len(users), n_items), computed in blocks of users."""
        dev = self.out.weight.device
        users = torch.as_tensor(users, dtype=torch.int64).to(dev)
        rows = self._block_rows(self.params["layers"][min(1, len(self.params["layers"]) - 1)])
        parts = [self.out(self.tower.all_items(users[s:s + rows])).squeeze(-1) for s in range(0, users.numel(), rows)]
        return torch.cat(parts) if parts else torch.empty(0, self.n_items, device=dev)


@register_model("NeuMF")
class NeuMF(_NCFBase):
    """Neural matrix factorization: a GMF branch and an MLP branch fused in one output layer,
    ``logit(u, i) = out([p_u * q_i, tower([p'_u, q'_i])])``.

    Parameters
    ----------
    embedding_dim : GMF branch factors.
    layers, dropout : the MLP branch (as ``MLP``).
    num_negatives, sparse : as ``GMF``.
    """

    def __init__(self, n_users: int, n_items: int, *, embedding_dim: int = 8, layers: Sequence[int] = (64, 32, 16, 8),
                 dropout: float = 0.0, num_negatives: int = 4, sparse: bool = True) -> None:
        layers = _check_layers("NeuMF", layers)
        _check_common("NeuMF", num_negatives, dropout)
        if int(embedding_dim) <= 0:
            raise ValueError(f"NeuMF: embedding_dim must be positive, got {embedding_dim}")
        super().__init__(n_users, n_items, embedding_dim=int(embedding_dim), layers=layers, dropout=float(dropout),
                         num_negatives=int(num_negatives), sparse=bool(sparse))
        self.num_negatives = int(num_negatives)
        d = int(embedding_dim)
        self.gmf_user_emb = nn.Embedding(self.n_users, d, sparse=bool(sparse))
        self.gmf_item_emb = nn.Embedding(self.n_items, d, sparse=bool(sparse))
        nn.init.normal_(self.gmf_user_emb.weight, std=0.01)
        nn.init.normal_(self.gmf_item_emb.weight, std=0.01)
        self.tower = _Tower(self.n_users, self.n_items, layers, float(dropout), bool(sparse))
        self.out = nn.Linear(d + self.tower.out_dim, 1)
        nn.init.kaiming_uniform_(self.out.weight, a=1.0)
        nn.init.zeros_(self.out.bias)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        g = self.gmf_user_emb(users) * self.gmf_item_emb(items)
        return self.out(torch.cat([g, self.tower(users, items)], dim=-1)).squeeze(-1)

    def sparse_parameters(self) -> list[nn.Parameter]:
        if not self.params["sparse"]:
            return []
        return [self.gmf_user_emb.weight, self.gmf_item_emb.weight, self.tower.user_emb.weight,
                self.tower.item_emb.weight]

    @torch.no_grad()
    def score_users(self, users: torch.Tensor) -> torch.Tensor:
        """Logits of every item for each user (len(users), n_items), computed in blocks of users."""
        dev = self.out.weight.device
        users = torch.as_tensor(users, dtype=torch.int64).to(dev)
        d = self.params["embedding_dim"]
        w_g, w_m = self.out.weight[0, :d], self.out.weight[0, d:]
        rows = self._block_rows(self.params["layers"][min(1, len(self.params["layers"]) - 1)])
        parts = []
        for s in range(0, users.numel(), rows):
            ub = users[s:s + rows]
            gmf = (self.gmf_user_emb.weight[ub] * w_g) @ self.gmf_item_emb.weight.T
            mlp = self.tower.all_items(ub) @ w_m
            parts.append(gmf + mlp + self.out.bias)
        return torch.cat(parts) if parts else torch.empty(0, self.n_items, device=dev)

    @classmethod
    def from_pretrained(cls, gmf: GMF, mlp: MLP, alpha: float = 0.5, **params: Any) -> "NeuMF":
        """A NeuMF initialised from a trained ``GMF`` and ``MLP`` (the paper's pre-training).

        Embeddings and tower layers are copied; the output layer is
        ``[alpha * h_gmf, (1 - alpha) * h_mlp]`` with bias ``alpha * b_gmf + (1 - alpha) * b_mlp``.
        ``params`` may set ``num_negatives`` or ``sparse`` (default: the GMF's); the training
        matrix of ``gmf`` (if prepared) is carried over.
        """
        if not isinstance(gmf, GMF) or not isinstance(mlp, MLP):
            raise TypeError(f"NeuMF.from_pretrained: expected (GMF, MLP), got ({type(gmf).__name__}, {type(mlp).__name__})")
        if (gmf.n_users, gmf.n_items) != (mlp.n_users, mlp.n_items):
            raise ValueError(f"NeuMF.from_pretrained: GMF is {gmf.n_users}x{gmf.n_items} users x items but MLP is "
                             f"{mlp.n_users}x{mlp.n_items}")
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"NeuMF.from_pretrained: alpha must be in [0, 1], got {alpha}")
        bad = set(params) - {"num_negatives", "sparse"}
        if bad:
            raise TypeError(f"NeuMF.from_pretrained: unknown parameter(s) {sorted(bad)}; expected num_negatives, sparse")
        kw = {"num_negatives": gmf.params["num_negatives"], "sparse": gmf.params["sparse"], **params}
        model = cls(gmf.n_users, gmf.n_items, embedding_dim=gmf.params["embedding_dim"], layers=mlp.params["layers"],
                    dropout=mlp.params["dropout"], **kw)
        a = float(alpha)
        dev = gmf.out.weight.device
        model.to(dev)
        with torch.no_grad():
            model.gmf_user_emb.weight.copy_(gmf.user_emb.weight)
            model.gmf_item_emb.weight.copy_(gmf.item_emb.weight)
            model.tower.load_state_dict(mlp.tower.state_dict())
            model.out.weight.copy_(torch.cat([a * gmf.out.weight, (1 - a) * mlp.out.weight.to(dev)], dim=1))
            model.out.bias.copy_(a * gmf.out.bias + (1 - a) * mlp.out.bias.to(dev))
        if gmf.train_csr is not None:
            model.prepare(gmf.train_csr)
        return model
