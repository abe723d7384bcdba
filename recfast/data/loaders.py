"""Training loaders: plain Python iterables of tensors, usable from any training loop.

Each epoch is a seeded permutation of the training interactions (a function of ``seed`` and the
epoch number: the Feistel permutation that ``ops.bpr_sgd_epoch`` uses, computed on the fly by the
CPU kernel, so no shuffled index array is built), and negatives come from one
``ops.sample_negatives`` call per batch whose stream positions are the batch's global positions
in the epoch: an epoch's batches are the same whether it runs whole, resumes from a checkpoint, or
is split across ranks.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch

from ..csr import CSR
from .. import _C
from ..ops.sampling import _sample_epoch_triples, sample_negatives

__all__ = ["PairwiseLoader", "PointwiseLoader"]

_MIX = 0x9E3779B97F4A7C15


def _epoch_seed(seed: int, epoch: int, salt: int) -> int:
    return (int(seed) * 1_000_003 + int(epoch) * 7_919 + salt) & ((1 << 63) - 1)


class _InteractionLoader:
    """Shared machinery: epoch permutation, sharding across ranks, resumable state."""

    def __init__(self, csr: CSR, batch_size: int, num_negatives: int, *, seed: int, shuffle: bool,
                 device: str | torch.device, drop_last: bool, rank: int, world_size: int,
                 weights: torch.Tensor | None, name: str) -> None:
        if not isinstance(csr, CSR):
            raise TypeError(f"{name}: csr must be a recfast.CSR, got {type(csr).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"{name}: batch_size must be a positive int, got {batch_size!r}")
        if isinstance(num_negatives, bool) or not isinstance(num_negatives, int) or num_negatives < 0:
            raise ValueError(f"{name}: num_negatives must be a non-negative int, got {num_negatives!r}")
        if not isinstance(world_size, int) or world_size < 1 or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"{name}: need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.device = torch.device(device)
        # Everything an epoch touches lives on the loader's device: the CSR the negatives come
        # from and the interactions' users and items; only the seeded permutation is made on the
        # CPU (so the order is the same on every device) and moved batch by batch.
        self.csr = csr.to(self.device)
        self.batch_size = batch_size
        self.num_negatives = num_negatives
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.rank = rank
        self.world_size = world_size
        self.weights = None if weights is None else weights.detach().to(self.device)
        self.epoch = 0
        self._users = torch.repeat_interleave(torch.arange(csr.n_rows, dtype=torch.int64, device=self.device),
                                              self.csr.row_lengths())
        self._items = self.csr.indices.to(torch.int64)
        nnz = self._users.numel()
        # Each rank takes a contiguous, equal-length share of the epoch's permutation (the last
        # nnz % world_size positions go unused in multi-process runs so every rank steps equally).
        self._share = nnz // world_size if world_size > 1 else nnz
        self._lo = rank * self._share

    def __len__(self) -> int:
        n = self._share
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration yields (for resuming and distributed runs)."""
        self.epoch = int(epoch)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.seed = int(state.get("seed", self.seed))

    def _order_seed(self) -> int:
        return _epoch_seed(self.seed, self.epoch, 0)

    def _order_slice(self, start: int, stop: int) -> torch.Tensor:
        """Entries at epoch positions [start, stop): the identity, or the seeded Feistel permutation
        of the nnz entries (``_C.bpr_epoch_order``, the order ``bpr_sgd_epoch`` uses) that the CPU
        kernel computes on the fly; made on the CPU, so the order is the same on every device."""
        if not self.shuffle:
            return torch.arange(start, stop, device=self.device)
        order = torch.from_numpy(_C.bpr_epoch_order(self._users.numel(), self._order_seed(), start, stop))
        return order.to(self.device)

    def _spans(self) -> Iterator[tuple[int, int]]:
        """(position, length) of this rank's batches in the epoch."""
        n = self._share
        stop = n - n % self.batch_size if self.drop_last else n
        for start in range(0, stop, self.batch_size):
            yield self._lo + start, min(self.batch_size, n - start)

    def _batches(self) -> Iterator[tuple[int, torch.Tensor]]:
        for position, length in self._spans():
            yield position, self._order_slice(position, position + length)

    def negative_seed(self) -> int:
        """The seed of this epoch's negatives: ``sample_negatives(csr, users, k, seed=negative_seed(),
        row_offset=position)`` gives the negatives of the batch at ``position``."""
        return _epoch_seed(self.seed, self.epoch, 1)

    def positives(self) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """This epoch's (position, users, items) batches without negatives (for fused kernels that
        draw their own, such as ``ops.bpr_sgd_step``); advances to the next epoch at the end."""
        for position, idx in self._batches():
            yield position, self._users[idx], self._items[idx]
        self.epoch += 1

    def _negatives(self, users: torch.Tensor, position: int, k: int) -> torch.Tensor:
        return sample_negatives(self.csr, users, k, seed=self.negative_seed(), weights=self.weights,
                                row_offset=position)

    def _triples(self, position: int, length: int, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(users, items, negatives (B, K)) of the batch at epoch ``position``."""
        if self.device.type == "cpu":
            # One kernel call computes the batch's entries of the epoch order, gathers their users
            # and items and draws the negatives (the same as the generic path below), with no
            # shuffled index array.
            return _sample_epoch_triples(self.csr, self._users, self.shuffle, self._order_seed(), position, length, k,
                                         seed=self.negative_seed(), weights=self.weights)
        idx = self._order_slice(position, position + length)
        users = self._users[idx]
        neg = (self._negatives(users, position, k) if k
               else torch.empty(users.numel(), 0, dtype=torch.int64, device=self.device))
        return users, self._items[idx], neg


class PairwiseLoader(_InteractionLoader):
    """Batches of (users, pos_items, neg_items) for pairwise losses such as BPR.

    An epoch covers every training interaction once, in a new seeded order each epoch; the
    negatives of a batch come from one ``sample_negatives`` call (exact: never a positive).

    Parameters
    ----------
    csr : users x items training interactions.
    batch_size : positives per batch.
    num_negatives : K; ``neg_items`` has shape (B,) when K == 1, else (B, K).
    seed : seeds the epoch orders and the negatives.
    shuffle : a new order each epoch (False: row-major order).
    device : where the yielded tensors live.
    drop_last : skip the last incomplete batch.
    rank, world_size : take this rank's share of each epoch (multi-process training).
    weights : optional item weights for the negatives (e.g. popularity ** 0.75).

    Example
    -------
    >>> import recfast
    >>> csr = recfast.data.synthetic(100, 50, 1000, seed=0).to_csr()
    >>> loader = recfast.data.PairwiseLoader(csr, 256, seed=0)
    >>> users, pos, neg = next(iter(loader))
    >>> users.shape, neg.shape, len(loader)
    (torch.Size([256]), torch.Size([256]), 4)
    """

    def __init__(self, csr: CSR, batch_size: int, num_negatives: int = 1, *, seed: int, shuffle: bool = True,
                 device: str | torch.device = "cpu", drop_last: bool = False, rank: int = 0, world_size: int = 1,
                 weights: torch.Tensor | None = None) -> None:
        super().__init__(csr, batch_size, num_negatives, seed=seed, shuffle=shuffle, device=device,
                         drop_last=drop_last, rank=rank, world_size=world_size, weights=weights,
                         name="PairwiseLoader")
        if num_negatives < 1:
            raise ValueError(f"PairwiseLoader: num_negatives must be >= 1, got {num_negatives}")

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        for position, length in self._spans():
            users, pos, neg = self._triples(position, length, self.num_negatives)
            if self.num_negatives == 1:
                neg = neg.squeeze(1)
            yield users, pos, neg
        self.epoch += 1


class PointwiseLoader(_InteractionLoader):
    """Batches of (users, items, labels) for pointwise losses (BCE), as NCF trains.

    Each batch holds B positives (label 1) and B * K sampled negatives (label 0), shuffled
    together; a new draw of negatives every epoch.

    Example
    -------
    >>> import recfast
    >>> csr = recfast.data.synthetic(100, 50, 1000, seed=0).to_csr()
    >>> users, items, labels = next(iter(recfast.data.PointwiseLoader(csr, 100, 4, seed=0)))
    >>> users.shape, float(labels.sum())
    (torch.Size([500]), 100.0)
    """

    def __init__(self, csr: CSR, batch_size: int, num_negatives: int = 4, *, seed: int, shuffle: bool = True,
                 device: str | torch.device = "cpu", drop_last: bool = False, rank: int = 0, world_size: int = 1,
                 weights: torch.Tensor | None = None) -> None:
        super().__init__(csr, batch_size, num_negatives, seed=seed, shuffle=shuffle, device=device,
                         drop_last=drop_last, rank=rank, world_size=world_size, weights=weights,
                         name="PointwiseLoader")

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        k = self.num_negatives
        for position, length in self._spans():
            users, pos, neg = self._triples(position, length, k)
            b = users.numel()
            all_users = torch.cat([users, users.repeat_interleave(k)])
            all_items = torch.cat([pos, neg.reshape(-1)])
            labels = torch.cat([torch.ones(b, device=self.device), torch.zeros(b * k, device=self.device)])
            if self.shuffle:
                g = torch.Generator().manual_seed(_epoch_seed(self.seed, self.epoch, 2 + position))
                p = torch.randperm(all_users.numel(), generator=g).to(self.device)
                all_users, all_items, labels = all_users[p], all_items[p], labels[p]
            yield all_users, all_items, labels
        self.epoch += 1
