"""``Interactions``: user-item events with optional ratings and timestamps, in a contiguous id space."""

from __future__ import annotations

from typing import Any, Hashable, Iterable, Sequence

import numpy as np
import torch

from ..csr import CSR

__all__ = ["Interactions"]


class Interactions:
    """User-item interactions over contiguous ids ``0..n_users-1`` and ``0..n_items-1``.

    Parameters
    ----------
    users, items : integer arrays of equal length (contiguous ids).
    n_users, n_items : sizes of the id spaces (default: max id + 1).
    ratings : optional float array (explicit feedback).
    timestamps : optional numeric array.
    user_ids, item_ids : optional arrays mapping contiguous ids back to the original ids.

    Examples
    --------
    >>> from recfast.data import Interactions
    >>> x = Interactions([0, 1, 1], [2, 0, 1])
    >>> x.to_csr().shape
    (2, 3)
    """

    def __init__(
        self,
        users: Any,
        items: Any,
        *,
        n_users: int | None = None,
        n_items: int | None = None,
        ratings: Any = None,
        timestamps: Any = None,
        user_ids: Sequence[Any] | np.ndarray | None = None,
        item_ids: Sequence[Any] | np.ndarray | None = None,
    ) -> None:
        self.users = np.ascontiguousarray(np.asarray(users), dtype=np.int64)
        self.items = np.ascontiguousarray(np.asarray(items), dtype=np.int64)
        if self.users.ndim != 1 or self.items.ndim != 1 or len(self.users) != len(self.items):
            raise ValueError(
                f"Interactions: users and items must be 1-D of equal length, got {self.users.shape} and {self.items.shape}"
            )
        self.n_users = int(n_users) if n_users is not None else (int(self.users.max()) + 1 if len(self.users) else 0)
        self.n_items = int(n_items) if n_items is not None else (int(self.items.max()) + 1 if len(self.items) else 0)
        for name, a, n in (("users", self.users, self.n_users), ("items", self.items, self.n_items)):
            if len(a) and (a.min() < 0 or a.max() >= n):
                bad = a.min() if a.min() < 0 else a.max()
                raise ValueError(f"Interactions: {name} holds id {bad}, expected 0 <= id < {n}")
        self.ratings = None if ratings is None else np.asarray(ratings, dtype=np.float32)
        self.timestamps = None if timestamps is None else np.asarray(timestamps)
        for name, a in (("ratings", self.ratings), ("timestamps", self.timestamps)):
            if a is not None and a.shape != self.users.shape:
                raise ValueError(f"Interactions: {name} has shape {a.shape}, expected {self.users.shape}")
        self.user_ids = None if user_ids is None else np.asarray(user_ids)
        self.item_ids = None if item_ids is None else np.asarray(item_ids)

    def __len__(self) -> int:
        return len(self.users)

    def __repr__(self) -> str:
        extra = "".join(f", {n}" for n in ("ratings", "timestamps") if getattr(self, n) is not None)
        return f"Interactions({len(self)} events, {self.n_users} users, {self.n_items} items{extra})"


    # -- original ids ----------------------------------------------------------------------------
    @classmethod
    def from_ids(
        cls,
        user_ids: Sequence[Hashable] | np.ndarray,
        item_ids: Sequence[Hashable] | np.ndarray,
        *,
        ratings: Any = None,
        timestamps: Any = None,
    ) -> "Interactions":
        """Map original ids (ints or strings) to contiguous ids, numbered in sorted order of the
        original ids; ``user_ids``/``item_ids`` of the result map them back.

        Example
        -------
        >>> x = Interactions.from_ids(["bob", "amy", "bob"], [10, 30, 20])
        >>> x.users.tolist(), x.user_ids.tolist()
        ([1, 0, 1], ['amy', 'bob'])
        """
        u = np.asarray(user_ids)
        i = np.asarray(item_ids)
        if u.shape != i.shape or u.ndim != 1:
            raise ValueError(f"Interactions.from_ids: user_ids and item_ids must be 1-D of equal length, "
                             f"got {u.shape} and {i.shape}")
        uniq_u, users = np.unique(u, return_inverse=True)
        uniq_i, items = np.unique(i, return_inverse=True)
        return cls(users, items, n_users=len(uniq_u), n_items=len(uniq_i), ratings=ratings, timestamps=timestamps,
                   user_ids=uniq_u, item_ids=uniq_i)

    def _lookup(self, table: np.ndarray | None, ids: Iterable[Hashable], what: str) -> np.ndarray:
        ids = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids)
        if table is None:
            out = ids.astype(np.int64)
            n = self.n_users if what == "user" else self.n_items
            bad = out[(out < 0) | (out >= n)]
        else:
            pos = np.searchsorted(table, ids)
            pos_c = np.clip(pos, 0, max(len(table) - 1, 0))
            found = (pos < len(table)) & (table[pos_c] == ids) if len(table) else np.zeros(ids.shape, bool)
            bad = ids[~found]
            out = pos_c.astype(np.int64)
        if bad.size:
            raise KeyError(f"Interactions: unknown {what} id(s) {bad[:5].tolist()}")
        return out

    def user_index(self, ids: Iterable[Hashable]) -> np.ndarray:
        """Contiguous ids of original user ids (KeyError names unknown ones)."""
        return self._lookup(self.user_ids, ids, "user")

    def item_index(self, ids: Iterable[Hashable]) -> np.ndarray:
        """Contiguous ids of original item ids (KeyError names unknown ones)."""
        return self._lookup(self.item_ids, ids, "item")

    def original_users(self, ids: Any) -> np.ndarray:
        """Original user ids of contiguous ids."""
        ids = np.asarray(ids, dtype=np.int64)
        return ids if self.user_ids is None else self.user_ids[ids]

    def original_items(self, ids: Any) -> np.ndarray:
        """Original item ids of contiguous ids (-1 padding of top-k results maps to None)."""
        ids = np.asarray(ids, dtype=np.int64)
        if self.item_ids is None:
            return ids
        out = self.item_ids[np.clip(ids, 0, None)].astype(object)
        out[ids < 0] = None
        return out

    # -- selection and filters --------------------------------------------------------------------
    def select(self, index: Any) -> "Interactions":
        """The events at ``index`` (a boolean mask or integer positions), in the same id space."""
        idx = np.asarray(index)
        take = lambda a: None if a is None else a[idx]  # noqa: E731
        return Interactions(self.users[idx], self.items[idx], n_users=self.n_users, n_items=self.n_items,
                            ratings=take(self.ratings), timestamps=take(self.timestamps),
                            user_ids=self.user_ids, item_ids=self.item_ids)

    def drop_duplicates(self) -> "Interactions":
        """Keep one event per (user, item) pair: the latest by timestamp, else the last one given."""
        key = self.users * max(self.n_items, 1) + self.items
        order = np.arange(len(self))
        if self.timestamps is not None:
            order = np.lexsort((order, self.timestamps))  # by time, ties by position
        # the last occurrence of each key in `order` wins
        rev = order[::-1]
        _, first = np.unique(key[rev], return_index=True)
        return self.select(np.sort(rev[first]))

    def binarize(self, threshold: float) -> "Interactions":
        """Keep the events rated at least ``threshold``, as implicit feedback (ratings dropped)."""
        if self.ratings is None:
            raise ValueError("Interactions.binarize: these interactions have no ratings")
        kept = self.select(self.ratings >= threshold)
        kept.ratings = None
        return kept

    def k_core(self, user_k: int, item_k: int | None = None) -> "Interactions":
        """Iteratively drop users with fewer than ``user_k`` and items with fewer than ``item_k``
        (default ``user_k``) events until every remaining user and item qualifies.

        The result is re-indexed to contiguous ids; ``user_ids``/``item_ids`` map them to the
        original ids (or to this object's contiguous ids when it had no id maps).
        """
        item_k = user_k if item_k is None else item_k
        if user_k < 0 or item_k < 0:
            raise ValueError(f"Interactions.k_core: k must be non-negative, got {user_k}, {item_k}")
        keep = np.ones(len(self), dtype=bool)
        while True:
            uc = np.bincount(self.users[keep], minlength=self.n_users)
            ic = np.bincount(self.items[keep], minlength=self.n_items)
            new = keep & (uc[self.users] >= user_k) & (ic[self.items] >= item_k)
            if new.sum() == keep.sum():
                break
            keep = new
        sub = self.select(keep)
        uniq_u, users = np.unique(sub.users, return_inverse=True)
        uniq_i, items = np.unique(sub.items, return_inverse=True)
        return Interactions(users, items, n_users=len(uniq_u), n_items=len(uniq_i), ratings=sub.ratings,
                            timestamps=sub.timestamps, user_ids=self.original_users(uniq_u),
                            item_ids=self.original_items(uniq_i) if self.item_ids is None else self.item_ids[uniq_i])

    def user_counts(self) -> np.ndarray:
        """Events per user."""
        return np.bincount(self.users, minlength=self.n_users)

    def item_counts(self) -> np.ndarray:
        """Events per item."""
        return np.bincount(self.items, minlength=self.n_items)

    def to_csr(self, *, values: str | None = None, duplicates: str = "last") -> CSR:
        """The users x items CSR matrix.

        ``values=None`` gives a binary matrix; ``values="ratings"`` stores the ratings.
        Repeated pairs keep the latest occurrence by default.
        """
        vals = None
        if values == "ratings":
            if self.ratings is None:
                raise ValueError("Interactions.to_csr: values='ratings' but these interactions have no ratings")
            vals = torch.from_numpy(self.ratings)
        elif values is not None:
            raise ValueError(f"Interactions.to_csr: values must be None or 'ratings', got {values!r}")
        m = CSR.from_coo(torch.from_numpy(self.users), torch.from_numpy(self.items), vals,
                         shape=(self.n_users, self.n_items), duplicates=duplicates)
        return m
