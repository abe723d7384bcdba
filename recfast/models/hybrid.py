"""``HybridMF``: matrix factorization whose item vectors add a projection of item side features
(genres, year, ...), in the spirit of Collie's hybrid model, trained with BPR.

``q_i = e_i + W f_i`` and ``b_i = c_i + w . f_i``, so items that share features share signal
and an item with few interactions still gets a vector from its features.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..registry import register_model
from .base import Recommender

__all__ = ["HybridMF"]


@register_model("HybridMF")
class HybridMF(Recommender):
    """BPR matrix factorization with item side features.

    Parameters
    ----------
    n_users, n_items : sizes of the id spaces.
    item_features : float tensor or array (n_items, n_features) of item side features (dataset
        info: pass it to ``from_params``/``build_model`` or the constructor). Scale dense
        features (e.g. standardize a year) before passing them. It is kept as a buffer (saved
        with the weights), not among the hyperparameters.
    n_features : the feature width; needed only when ``item_features`` is omitted (``load``
        rebuilds the model that way and then restores the buffer).
    embedding_dim : factors per user and item.
    l2 : L2 regularization passed to ``recfast.ops.bpr_loss``.
    use_item_bias : learn an item bias ``c_i + w . f_i``.
    init_std : standard deviation of the initial embeddings.
    num_negatives : negatives per positive drawn by the pairwise loader.

    Examples
    --------
    >>> import torch
    >>> m = HybridMF(4, 3, torch.eye(3), embedding_dim=2)
    >>> [t.shape for t in m.embeddings()[1:]]
    [torch.Size([3, 2]), torch.Size([3])]
    """

    batch_kind = "pairwise"

    def __init__(self, n_users: int, n_items: int, item_features: Any = None, *, n_features: int | None = None,
                 embedding_dim: int = 64, l2: float = 0.0, use_item_bias: bool = True, init_std: float = 0.1,
                 num_negatives: int = 1) -> None:
        if item_features is not None:
            feats = torch.as_tensor(np.asarray(item_features) if not isinstance(item_features, torch.Tensor)
                                    else item_features).detach().to("cpu", torch.float32)
            if feats.dim() != 2 or feats.shape[0] != int(n_items):
                raise ValueError(f"HybridMF: item_features must have shape (n_items={n_items}, n_features), got "
                                 f"{tuple(feats.shape)}")
            if not torch.isfinite(feats).all():
                raise ValueError("HybridMF: item_features holds NaN or infinite values")
            if n_features is not None and int(n_features) != feats.shape[1]:
                raise ValueError(f"HybridMF: n_features={n_features} but item_features has {feats.shape[1]} columns")
            n_features = feats.shape[1]
        elif n_features is None:
            raise ValueError("HybridMF: pass item_features (n_items, n_features) as dataset info, or n_features")
        else:
            feats = torch.zeros(int(n_items), int(n_features))
        if int(n_features) <= 0 or int(embedding_dim) <= 0:
            raise ValueError(f"HybridMF: n_features and embedding_dim must be positive, got {n_features}, {embedding_dim}")
        if float(l2) < 0 or int(num_negatives) < 1:
            raise ValueError(f"HybridMF: need l2 >= 0 and num_negatives >= 1, got {l2}, {num_negatives}")
        super().__init__(n_users, n_items, n_features=int(n_features), embedding_dim=int(embedding_dim), l2=float(l2),
                         use_item_bias=bool(use_item_bias), init_std=float(init_std), num_negatives=int(num_negatives))
        self.num_negatives = int(num_negatives)
        d = int(embedding_dim)
        self.register_buffer("item_features", feats.contiguous())
        self.user_emb = nn.Parameter(torch.randn(self.n_users, d) * float(init_std))
        self.item_emb = nn.Parameter(torch.randn(self.n_items, d) * float(init_std))
        self.feature_proj = nn.Linear(int(n_features), d, bias=False)
        nn.init.normal_(self.feature_proj.weight, std=float(init_std) / max(1.0, float(n_features)) ** 0.5)
        if use_item_bias:
            self.item_bias = nn.Parameter(torch.zeros(self.n_items))
            self.feature_bias = nn.Linear(int(n_features), 1, bias=False)
            nn.init.zeros_(self.feature_bias.weight)
        else:
            self.item_bias = None
            self.feature_bias = None

    def item_vectors(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(combined item vectors ``e_i + W f_i``, item bias ``c_i + w . f_i`` or None), differentiable."""
        v = self.item_emb + self.feature_proj(self.item_features)
        if self.item_bias is None:
            return v.contiguous(), None
        return v.contiguous(), (self.item_bias + self.feature_bias(self.item_features).squeeze(-1)).contiguous()

    def loss(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """BPR loss (``recfast.ops.bpr_loss``) of (users, pos_items, neg_items) on the combined item table."""
        from .. import ops

        if not isinstance(batch, (tuple, list)) or len(batch) != 3:
            raise ValueError(f"HybridMF.loss: expected a pairwise batch (users, pos_items, neg_items), got "
                             f"{type(batch).__name__}")
        dev = self.user_emb.device
        users, pos, neg = (t.to(dev) for t in batch)
        v, b = self.item_vectors()
        return ops.bpr_loss(self.user_emb, v, users, pos, neg, item_bias=b, l2=self.params["l2"], reduction="mean")

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(user vectors, combined item vectors, combined item bias or None)."""
        with torch.no_grad():
            v, b = self.item_vectors()
        return self.user_emb.detach(), v, b
