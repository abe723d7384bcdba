"""``Interactions``: user-item events with optional ratings and timestamps, in a contiguous id space."""

from __future__ import annotations

from typing import Any, Sequence

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
