"""LightGCN (He et al. 2020) on the fused propagation and BPR kernels."""

from __future__ import annotations

import torch
from torch import nn

from ..csr import CSR
from ..registry import register_model
from .base import Recommender

__all__ = ["LightGCN"]


@register_model("LightGCN")
class LightGCN(Recommender):
    """LightGCN: E_final = sum_l w_l A^l E over the symmetric-normalised user-item graph, scored
    by dot products and trained with BPR plus L2 on the ego (layer-0) embeddings of the batch.

    The adjacency is built once in ``prepare``; propagation runs once per training batch (it is
    the gradient's path) and once per evaluation, cached until the weights change.

    Parameters
    ----------
    dim : embedding size.
    num_layers : propagation depth L.
    l2 : weight of the ego-embedding penalty l2 * (|u|^2 + |i|^2 + |j|^2) / 2 / B.
    layer_weights : w_0..w_L (default 1 / (L + 1) each).
    init_std : standard deviation of the normal initialisation (0.1 as in the paper's code).

    Example
    -------
    >>> import recfast
    >>> model = recfast.models.LightGCN(100, 50, dim=16, num_layers=2)
    >>> model.prepare(recfast.data.synthetic(100, 50, 2000, seed=0).to_csr())
    """

    batch_kind = "pairwise"

    def __init__(self, n_users: int, n_items: int, *, dim: int = 64, num_layers: int = 3, l2: float = 1e-4,
                 layer_weights: list[float] | None = None, init_std: float = 0.1, seed: int = 0) -> None:
        super().__init__(n_users, n_items, dim=dim, num_layers=num_layers, l2=l2, layer_weights=layer_weights,
                         init_std=init_std, seed=seed)
        if num_layers < 0:
            raise ValueError(f"LightGCN: num_layers must be >= 0, got {num_layers}")
        if layer_weights is not None and len(layer_weights) != num_layers + 1:
            raise ValueError(f"LightGCN: layer_weights needs num_layers + 1 = {num_layers + 1} entries, "
                             f"got {len(layer_weights)}")
        g = torch.Generator().manual_seed(int(seed))
        self.num_layers = int(num_layers)
        self.l2 = float(l2)
        self.layer_weights = None if layer_weights is None else [float(w) for w in layer_weights]
        self.embedding = nn.Parameter(torch.randn(n_users + n_items, dim, generator=g) * init_std)
        self.adj: CSR | None = None
        self._cache: tuple[int, torch.Tensor] | None = None

    def prepare(self, train: CSR) -> None:
        from ..graph import normalized_adjacency

        super().prepare(train)
        self.adj = normalized_adjacency(train.to("cpu"), normalization="sym")
        self._cache = None

    def propagate(self) -> torch.Tensor:
        """The final (n_users + n_items, dim) embeddings, differentiable w.r.t. ``embedding``."""
        from .. import ops

        if self.adj is None:
            raise RuntimeError("LightGCN: call prepare(train) (the Trainer does) before training or ranking")
        adj = self.adj.to(self.embedding.device)
        if adj is not self.adj:
            self.adj = adj
        return ops.lightgcn_propagate(adj, self.embedding, self.num_layers, layer_weights=self.layer_weights)

    def loss(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        from .. import ops

        self._cache = None
        users, pos, neg = batch[:3]
        final = self.propagate()
        # one table for both roles: one gradient, no slice copies (items sit after the users)
        loss = ops.bpr_loss(final, final, users, pos + self.n_users, neg + self.n_users)
        if self.l2 > 0:
            e = self.embedding
            u0 = e[users.long()]
            i0 = e[self.n_users + pos.long()]
            j0 = e[self.n_users + neg.long()]
            reg = u0.pow(2).sum() + i0.pow(2).sum() + j0.pow(2).sum() / max(1, neg.numel() // max(1, users.numel()))
            loss = loss + self.l2 * reg / 2 / max(1, users.numel())
        return loss

    def on_epoch_end(self) -> None:
        self._cache = None

    @torch.no_grad()
    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        version = self.embedding._version
        if self._cache is None or self._cache[0] != version:
            self._cache = (version, self.propagate().detach())
        final = self._cache[1]
        return final[: self.n_users], final[self.n_users:], None
