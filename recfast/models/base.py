"""The interface every recfast model follows.

A model is a ``torch.nn.Module`` built from a params dict plus dataset info. Iterative models
(BPR-MF, LightGCN, NeuMF, ...) define ``loss(batch)`` and say which batches they eat
(``batch_kind``); ``recfast.Trainer`` drives them. Classical models (EASE, ItemKNN, Popularity)
compute themselves in ``fit(train)``. Every model ranks through ``recommend``: models with user
and item vectors expose them by ``embeddings()`` and rank with the streaming ``ops.topk`` (never a
users x items matrix); models that produce a score matrix define ``score_users`` and rank with
``ops.topk_scores`` on blocks of users.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, ClassVar, Iterable, Mapping

import torch
from torch import nn

from ..csr import CSR

__all__ = ["Recommender"]


class Recommender(nn.Module):
    """Base class of recfast models.

    Subclasses call ``super().__init__(n_users, n_items, **hyperparameters)``; the
    hyperparameters are kept in ``self.params`` so ``save``/``load`` can rebuild the model.
    """

    #: trained by ``recfast.Trainer`` through ``loss(batch)`` (False: ``fit(train)`` computes it).
    iterative: ClassVar[bool] = True
    #: what ``make_loader`` yields: "pairwise" (users, pos, neg), "pointwise" (users, items, labels),
    #: "ratings" (users, items, ratings) or "rows" (user ids; the model reads their CSR rows).
    batch_kind: ClassVar[str] = "pairwise"
    #: negatives per positive for pairwise/pointwise loaders.
    num_negatives: int = 1
    registered_name: ClassVar[str] = ""

    def __init__(self, n_users: int, n_items: int, **params: Any) -> None:
        super().__init__()
        if int(n_users) <= 0 or int(n_items) <= 0:
            raise ValueError(f"{type(self).__name__}: n_users and n_items must be positive, got {n_users}, {n_items}")
        self.n_users = int(n_users)
        self.n_items = int(n_items)
        self.params: dict[str, Any] = dict(params)
        self.train_csr: CSR | None = None

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_params(cls, params: Mapping[str, Any], *, n_users: int, n_items: int, **dataset_info: Any) -> "Recommender":
        """Build from a config's params dict plus dataset info; unknown params raise TypeError."""
        import inspect

        sig = inspect.signature(cls.__init__)
        accepts_info = {k: v for k, v in dataset_info.items() if k in sig.parameters}
        bad = [k for k in params if k not in sig.parameters and not any(
            p.kind == inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())]
        if bad:
            allowed = [p for p in sig.parameters if p not in ("self", "n_users", "n_items")]
            raise TypeError(f"{cls.__name__}: unknown parameter(s) {bad}; expected some of {allowed}")
        return cls(n_users=n_users, n_items=n_items, **accepts_info, **params)

    # -- training -------------------------------------------------------------------------------
    def prepare(self, train: CSR) -> None:
        """Called once before training or fitting with the users x items training matrix."""
        if train.shape != (self.n_users, self.n_items):
            raise ValueError(
                f"{type(self).__name__}: train has shape {train.shape}, expected ({self.n_users}, {self.n_items})"
            )
        self.train_csr = train

    def fit(self, train: CSR) -> "Recommender":
        """Classical models compute themselves here; iterative ones are trained by ``recfast.Trainer``."""
        raise NotImplementedError(
            f"{type(self).__name__} is trained iteratively: use recfast.Trainer(model, train, ...).fit()"
        )

    def loss(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no loss(); it is fitted with fit(train)")

    def make_loader(self, train: CSR, batch_size: int, *, seed: int, device: str | torch.device = "cpu",
                    rank: int = 0, world_size: int = 1) -> Iterable[tuple[torch.Tensor, ...]]:
        """The batches ``loss`` expects, by ``batch_kind``."""
        from .. import data

        if self.batch_kind == "pairwise":
            return data.PairwiseLoader(train, batch_size, self.num_negatives, seed=seed, device=device,
                                       rank=rank, world_size=world_size)
        if self.batch_kind == "pointwise":
            return data.PointwiseLoader(train, batch_size, self.num_negatives, seed=seed, device=device,
                                        rank=rank, world_size=world_size)
        raise NotImplementedError(f"{type(self).__name__}: no loader for batch_kind={self.batch_kind!r}")

    def sparse_parameters(self) -> list[nn.Parameter]:
        """Parameters whose gradients are row-sparse (embedding tables): the trainer gives them a
        row-sparse optimizer."""
        return []

    def on_epoch_end(self) -> None:
        """Hook after each training epoch (e.g. to drop cached propagated embeddings)."""

    # -- scoring --------------------------------------------------------------------------------
    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None:
        """(user vectors, item vectors, item bias or None) when scores are dot products, else None."""
        return None

    def score_users(self, users: torch.Tensor) -> torch.Tensor:
        """Scores of every item for each user, shape (len(users), n_items)."""
        emb = self.embeddings()
        if emb is None:
            raise NotImplementedError(f"{type(self).__name__} defines neither embeddings() nor score_users()")
        u, v, b = emb
        s = u[users.to(u.device)] @ v.T
        return s + b if b is not None else s

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Scores of the pairs (users[b], items[b]), or of items (B, m) for each user when 2-D."""
        users = torch.as_tensor(users)
        items = torch.as_tensor(items)
        emb = self.embeddings()
        if emb is not None:
            u, v, b = emb
            uu = u[users.to(u.device)]
            vv = v[items.to(v.device)]
            s = (uu.unsqueeze(1) * vv).sum(-1) if items.dim() == 2 else (uu * vv).sum(-1)
            return s + b[items.to(v.device)] if b is not None else s
        full = self.score_users(users)
        idx = items.to(full.device)
        return full.gather(1, idx if idx.dim() == 2 else idx.unsqueeze(1)).squeeze(1) if idx.dim() == 1 else full.gather(1, idx)

    @torch.no_grad()
    def recommend(self, users: torch.Tensor | Iterable[int], k: int = 10, exclude_seen: bool = True,
                  *, batch_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` items for each user, best first: (items int64 (B, k), scores float32 (B, k)).

        With ``exclude_seen`` the training items never appear; rows with fewer than ``k``
        candidates are padded with item -1 and score -inf.
        """
        from .. import ops

        users = torch.as_tensor(users if isinstance(users, torch.Tensor) else list(users), dtype=torch.int64)
        if users.dim() != 1:
            raise ValueError(f"recommend: users must be 1-D, got shape {tuple(users.shape)}")
        if users.numel() and (int(users.min()) < 0 or int(users.max()) >= self.n_users):
            raise ValueError(f"recommend: users must be in [0, {self.n_users}), got ids {int(users.min())}..{int(users.max())}")
        exclude = self.train_csr if exclude_seen else None
        was_training = self.training
        self.eval()
        try:
            emb = self.embeddings()
            if emb is not None:
                u, v, b = emb
                dev = v.device
                ex = exclude.to(dev) if exclude is not None else None
                q = u[users.to(u.device)].to(dev).float().contiguous()
                scores, items = ops.topk(q, v.float().contiguous(), k, exclude=ex,
                                         rows=users.to(dev) if ex is not None else None,
                                         key_bias=None if b is None else b.float().contiguous())
                return items, scores
            out_i, out_s = [], []
            for start in range(0, users.numel(), batch_size):
                ub = users[start:start + batch_size]
                s = self.score_users(ub).float().contiguous()
                ex = exclude.to(s.device) if exclude is not None else None
                sc, it = ops.topk_scores(s, k, exclude=ex, rows=ub.to(s.device) if ex is not None else None)
                out_i.append(it)
                out_s.append(sc)
            if not out_i:
                return torch.empty(0, k, dtype=torch.int64), torch.empty(0, k)
            return torch.cat(out_i), torch.cat(out_s)
        finally:
            self.train(was_training)

    @torch.no_grad()
    def similar_items(self, items: torch.Tensor | Iterable[int], k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` items most similar to each given item by cosine of item vectors (itself excluded)."""
        from .. import ops

        emb = self.embeddings()
        if emb is None:
            raise NotImplementedError(f"{type(self).__name__} has no item vectors for similar_items")
        items = torch.as_tensor(items if isinstance(items, torch.Tensor) else list(items), dtype=torch.int64)
        v = emb[1].float()
        v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self_mask = CSR(torch.arange(items.numel() + 1, dtype=torch.int64), items.to(torch.int64).cpu(),
                        (items.numel(), self.n_items), check=False)
        scores, idx = ops.topk(v[items.to(v.device)].contiguous(), v.contiguous(), k, exclude=self_mask.to(v.device))
        return idx, scores

    # -- persistence ----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the model (name, params, sizes, weights, training matrix) atomically."""
        path = Path(path)
        state = {
            "format": "recfast-model-1",
            "model": self.registered_name or type(self).__name__,
            "params": self.params,
            "n_users": self.n_users,
            "n_items": self.n_items,
            "state_dict": self.state_dict(),
            "extra": self.extra_state(),
            "train": None if self.train_csr is None else self.train_csr.to("cpu").__getstate__(),
        }
        atomic_torch_save(state, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu") -> "Recommender":
        """Rebuild a model written by ``save`` (the class comes from the registry)."""
        from ..registry import get_model

        state = torch.load(Path(path), map_location=map_location, weights_only=False)
        if not isinstance(state, dict) or state.get("format") != "recfast-model-1":
            raise ValueError(f"Recommender.load: {path} is not a recfast model file")
        model_cls = get_model(state["model"]) if cls is Recommender else cls
        model = model_cls(n_users=state["n_users"], n_items=state["n_items"], **state["params"])
        if state["train"] is not None:
            train = CSR.__new__(CSR)
            train.__setstate__(state["train"])
            model.prepare(train)
        model.load_extra_state(state.get("extra") or {})
        sd = state["state_dict"]
        # Buffers that fit() sizes (EASE's weights) start empty: take the saved shape.
        for name, buf in list(model.named_buffers()):
            if name in sd and sd[name].shape != buf.shape:
                owner_name, _, attr = name.rpartition(".")
                owner = model.get_submodule(owner_name) if owner_name else model
                owner.register_buffer(attr, torch.empty_like(sd[name]))
        model.load_state_dict(sd)
        return model

    def extra_state(self) -> dict[str, Any]:
        """Non-parameter state a subclass needs saved (e.g. a fitted similarity matrix)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what ``extra_state`` returned."""


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over ``path``: a reader
    sees the old file or the new one, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
