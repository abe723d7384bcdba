"""``NGCF``: neural graph collaborative filtering (Wang et al., SIGIR 2019).

Each layer propagates the ego embeddings over the symmetric-normalized user-item graph ``L``::

    E' = LeakyReLU((L + I) E W1 + b1 + ((L E) * E) W2 + b2),   then message dropout

and the final user/item vectors concatenate ``E0`` with the L2-normalized output of every layer.
Node (edge) dropout resamples ``L`` each training step through ``recfast.ops.edge_dropout``; all
sparse products go through ``recfast.ops.spmm``. Trained with BPR (``recfast.ops.bpr_loss``)
plus ``l2 * (|e_u|^2 + |e_pos|^2 + |e_neg|^2) / 2 / batch`` on the ego embeddings, as the
authors' code does.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..csr import CSR
from ..registry import register_model
from ._loaders import csr_on, derive_seed
from .base import Recommender

__all__ = ["NGCF"]


@register_model("NGCF")
class NGCF(Recommender):
    """Neural graph collaborative filtering.

    Parameters
    ----------
    n_users, n_items : sizes of the id spaces.
    embedding_dim : width of the ego embeddings ``E0``.
    layer_dims : output width of each propagation layer (the paper's ``[64, 64, 64]``).
    message_dropout : dropout on each layer's output while training (0.1).
    node_dropout : fraction of graph edges dropped per training step (``ops.edge_dropout``); 0 keeps all.
    l2 : weight of the ego-embedding L2 term (the paper's 1e-5).
    leaky_slope : LeakyReLU slope (0.2).
    num_negatives : negatives per positive drawn by the pairwise loader.
    seed : base seed of the per-step edge dropout.

    The final vectors have ``embedding_dim + sum(layer_dims)`` dims. ``embeddings()`` propagates
    once without dropout and caches the result until the parameters change (any ``loss`` call,
    ``on_epoch_end``, an optimizer step, ``load_state_dict`` or a device move).
    """

    batch_kind = "pairwise"

    def __init__(self, n_users: int, n_items: int, *, embedding_dim: int = 64, layer_dims: Sequence[int] = (64, 64, 64),
                 message_dropout: float = 0.1, node_dropout: float = 0.0, l2: float = 1e-5, leaky_slope: float = 0.2,
                 num_negatives: int = 1, seed: int = 0) -> None:
        dims = [int(x) for x in layer_dims]
        if int(embedding_dim) <= 0 or any(x <= 0 for x in dims):
            raise ValueError(f"NGCF: embedding_dim and layer_dims must be positive, got {embedding_dim}, {dims}")
        for arg, p in (("message_dropout", message_dropout), ("node_dropout", node_dropout)):
            if not 0.0 <= float(p) < 1.0:
                raise ValueError(f"NGCF: {arg} must be in [0, 1), got {p}")
        if float(l2) < 0 or int(num_negatives) < 1:
            raise ValueError(f"NGCF: need l2 >= 0 and num_negatives >= 1, got {l2}, {num_negatives}")
        super().__init__(n_users, n_items, embedding_dim=int(embedding_dim), layer_dims=dims,
                         message_dropout=float(message_dropout), node_dropout=float(node_dropout), l2=float(l2),
                         leaky_slope=float(leaky_slope), num_negatives=int(num_negatives), seed=int(seed))
        self.num_negatives = int(num_negatives)
        self.ego = nn.Parameter(torch.empty(self.n_users + self.n_items, int(embedding_dim)))
        nn.init.xavier_uniform_(self.ego)
        widths = [int(embedding_dim), *dims]
        self.w1 = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.w2 = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        for lin in [*self.w1, *self.w2]:
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)
        self.adjacency: CSR | None = None
        self._step = 0
        self._cache: tuple[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor]] | None = None

    # -- graph ----------------------------------------------------------------------------------
    def prepare(self, train: CSR) -> None:
        """Keep the training matrix and build the normalized (n_users + n_items) adjacency once."""
        from .. import graph

        super().prepare(train)
        self.adjacency = graph.normalized_adjacency(train, normalization="sym", self_loops=False)
        self._cache = None

    def _adjacency_on(self, device: torch.device) -> CSR:
        if self.adjacency is None:
            raise RuntimeError("NGCF: call prepare(train) first (it builds the user-item graph)")
        return csr_on(self, self.adjacency, device)

    def propagate(self, adj: CSR, *, dropout: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Final (user vectors, item vectors) over graph ``adj``; ``dropout`` applies message dropout."""
        from .. import ops

        e = self.ego
        outs = [e]
        p = self.params["message_dropout"]
        for lin1, lin2 in zip(self.w1, self.w2):
            side = ops.spmm(adj, e)
            e = F.leaky_relu(lin1(side + e) + lin2(side * e), self.params["leaky_slope"])
            if dropout and p > 0:
                e = F.dropout(e, p, True)
            outs.append(F.normalize(e, p=2, dim=1))
        final = torch.cat(outs, dim=1)
        return final[: self.n_users], final[self.n_users:]

    # -- training -------------------------------------------------------------------------------
    def loss(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """BPR on the propagated vectors plus the ego-embedding L2 term."""
        from .. import ops

        if not isinstance(batch, (tuple, list)) or len(batch) != 3:
            raise ValueError(f"NGCF.loss: expected a pairwise batch (users, pos_items, neg_items), got {type(batch).__name__}")
        users, pos, neg = (t.to(self.ego.device) for t in batch)
        self._cache = None
        adj = self._adjacency_on(self.ego.device)
        q = self.params["node_dropout"]
        if self.training and q > 0:
            adj = ops.edge_dropout(adj, q, seed=derive_seed(self.params["seed"], self._step))
        self._step += 1
        u, v = self.propagate(adj, dropout=self.training)
        loss = ops.bpr_loss(u, v, users, pos, neg, reduction="mean")
        l2 = self.params["l2"]
        if l2 > 0:
            eu = self.ego[users.long()]
            items = self.ego[self.n_users:]
            ep, en = items[pos.long()], items[neg.long()]
            reg = (eu.pow(2).sum() + ep.pow(2).sum() + en.pow(2).sum()) / 2
            loss = loss + l2 * reg / max(1, users.numel())
        return loss

    def on_epoch_end(self) -> None:
        self._cache = None

    # -- scoring --------------------------------------------------------------------------------
    def _version(self) -> tuple[Any, ...]:
        return tuple((p.data_ptr(), p._version) for p in self.parameters()) + (id(self.adjacency),)

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor, None]:
        """Propagated (user vectors, item vectors, None) without dropout, cached until the weights change."""
        key = self._version()
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                u, v = self.propagate(self._adjacency_on(self.ego.device), dropout=False)
            self._cache = (key, (u.contiguous(), v.contiguous()))
        u, v = self._cache[1]
        return u, v, None

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        self._cache = None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        self._cache = None
        return super()._apply(fn, *args, **kwargs)

    def extra_state(self) -> dict[str, Any]:
        return {"step": self._step}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self._step = int(state.get("step", 0))
