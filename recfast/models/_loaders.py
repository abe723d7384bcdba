"""Small seeded loaders the model zoo needs for its own batch kinds ("ratings" and "rows"), and
the CSR helpers those models share (device cache, dense rows).

Both loaders walk a seeded permutation of ``n`` examples: the order of epoch ``e`` depends only
on ``(seed, e)``, so runs repeat and a resumed run (``load_state_dict``) continues where it
stopped. ``rank``/``world_size`` give each process an equal share of every epoch (the shares
are padded by wrapping around, as ``torch.utils.data.DistributedSampler`` does).
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch

from ..csr import CSR

__all__ = ["IndexBatchLoader", "epoch_generator", "dense_rows", "rows_coo", "csr_on", "derive_seed"]


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from ``(seed, epoch)`` through numpy's SeedSequence."""
    g = torch.Generator()
    g.manual_seed(derive_seed(seed, epoch))
    return g


class IndexBatchLoader:
    """Batches of positions ``0..n-1`` in a seeded per-epoch order, sharded over ranks.

    Subclasses turn each batch of positions into tensors (``_make_batch``).

    Parameters
    ----------
    n : number of examples.
    batch_size : examples per batch (the last batch of an epoch may be smaller).
    seed : base seed; epoch ``e`` uses the permutation drawn from ``(seed, e)``.
    shuffle : ``False`` walks the examples in order.
    device : where the yielded tensors live.
    rank, world_size : this process's share of every epoch.
    """

    def __init__(self, n: int, batch_size: int, *, seed: int, shuffle: bool = True,
                 device: str | torch.device = "cpu", rank: int = 0, world_size: int = 1) -> None:
        name = type(self).__name__
        if int(batch_size) <= 0:
            raise ValueError(f"{name}: batch_size must be positive, got {batch_size}")
        if int(world_size) <= 0 or not 0 <= int(rank) < int(world_size):
            raise ValueError(f"{name}: need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.n = int(n)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.device = torch.device(device)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.epoch = 0
        self.position = 0  # batches already yielded in the current epoch

    # -- sizes ------------------------------------------------------------------------------------
    @property
    def per_rank(self) -> int:
        """Examples each rank sees per epoch."""
        return -(-self.n // self.world_size) if self.n else 0

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return -(-self.per_rank // self.batch_size)

    # -- epochs and resumption ----------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Use the order of epoch ``epoch`` for the next pass (and restart it from its beginning)."""
        self.epoch = int(epoch)
        self.position = 0

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: the next pass is epoch ``state["epoch"]`` from batch ``state["position"]``."""
        self.seed = int(state.get("seed", self.seed))
        self.epoch = int(state["epoch"])
        self.position = int(state.get("position", 0))

    def order(self, epoch: int | None = None) -> torch.Tensor:
        """This rank's example positions (int64, CPU) for ``epoch`` (default: the current one)."""
        epoch = self.epoch if epoch is None else int(epoch)
        if self.shuffle:
            perm = torch.randperm(self.n, generator=epoch_generator(self.seed, epoch))
        else:
            perm = torch.arange(self.n, dtype=torch.int64)
        if self.world_size > 1 and self.n:
            total = self.per_rank * self.world_size
            if total > self.n:  # pad by wrapping around (several times when n < world_size)
                perm = perm.repeat(-(-total // self.n))[:total]
            perm = perm[self.rank::self.world_size]
        return perm

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        order = self.order().to(self.device)
        start = self.position
        for b in range(start, len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            self.position = b + 1
            yield self._make_batch(idx)
        self.epoch += 1
        self.position = 0

    def _make_batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (idx,)


# -- CSR helpers ------------------------------------------------------------------------------------

def csr_on(module: Any, csr: CSR, device: torch.device | str) -> CSR:
    """``csr`` on ``device``, cached on ``module`` (one copy per device; reset when ``csr`` changes)."""
    device = torch.device(device)
    src, cache = module.__dict__.get("_zoo_csr_cache", (None, {}))
    if src is not csr:
        src, cache = csr, {}
        module.__dict__["_zoo_csr_cache"] = (src, cache)
    key = str(device)
    if key not in cache:
        cache[key] = csr.to(device)
    return cache[key]


def rows_coo(csr: CSR, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The stored entries of rows ``users``: (batch row of each entry, column, value or None)."""
    return csr.rows_coo(users)


def dense_rows(csr: CSR, users: torch.Tensor, *, binary: bool = True, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Rows ``users`` of ``csr`` as a dense (len(users), n_cols) tensor (1 for each stored entry
    when ``binary``, else the stored values)."""
    return (csr.with_values(None) if binary else csr).dense_rows(users, dtype)


def derive_seed(seed: int, *counters: int) -> int:
    """A 63-bit seed mixed from ``seed`` and counters (e.g. a training step) by numpy's SeedSequence."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, *(int(c) for c in counters)]).generate_state(
        1, dtype=np.uint64)
    return int(state[0]) & 0x7FFFFFFFFFFFFFFF
