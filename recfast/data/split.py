"""Seeded train/validation/test splits of ``Interactions``.

Every split returns disjoint ``Interactions`` in the input's id space (same ``n_users``,
``n_items`` and id maps) whose union is the input; each part keeps the input's event order. Splits
work on events: repeated (user, item) pairs may land in different parts, so call
``drop_duplicates`` first when that matters. Per-user splits group events by user with one C++
counting sort (``CSR.from_coo``) keyed by a random or temporal rank, and ``leave_one_out`` picks
each user's last event with ``np.maximum.at``: no per-user Python loops.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ..csr import CSR
from .interactions import Interactions

__all__ = ["random_split", "stratified_split", "leave_one_out", "temporal_split"]


# -- checks -------------------------------------------------------------------------------------
def _check_x(fn: str, x: Any) -> Interactions:
    if not isinstance(x, Interactions):
        raise TypeError(f"{fn}: x must be recfast.data.Interactions, got {type(x).__name__}")
    return x


def _check_seed(fn: str, seed: Any) -> np.random.Generator:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"{fn}: seed must be an int, got {seed!r}")
    if seed < 0:
        raise ValueError(f"{fn}: seed must be non-negative, got {seed}")
    return np.random.default_rng(int(seed))


def _check_ratios(fn: str, ratios: Any) -> np.ndarray:
    try:
        r = np.asarray(ratios, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{fn}: ratios must be a sequence of 2 or 3 numbers, got {ratios!r}") from None
    if r.ndim != 1 or r.size not in (2, 3):
        raise ValueError(f"{fn}: ratios must hold 2 (train, test) or 3 (train, valid, test) numbers, got {ratios!r}")
    if not np.isfinite(r).all() or (r < 0).any():
        raise ValueError(f"{fn}: ratios must be finite and non-negative, got {ratios!r}")
    if abs(r.sum() - 1.0) > 1e-6:
        raise ValueError(f"{fn}: ratios must sum to 1, got {ratios!r} (sum {r.sum():.6g})")
    return r


def _check_timestamps(fn: str, x: Interactions) -> np.ndarray:
    if x.timestamps is None:
        raise ValueError(f"{fn}: these interactions have no timestamps")
    return x.timestamps


def _parts(x: Interactions, part: np.ndarray, k: int) -> tuple[Interactions, ...]:
    """``k`` Interactions: the events with ``part == j`` for each j, in input order."""
    return tuple(x._take(np.flatnonzero(part == j)) for j in range(k))


def _round(v: np.ndarray) -> np.ndarray:
    return np.floor(v + 0.5).astype(np.int64)  # round half up (np.round rounds half to even)


# -- per-user machinery -------------------------------------------------------------------------
def _time_rank(ts: np.ndarray) -> np.ndarray:
    """A permutation: the rank of each event by time, ties by position."""
    order = np.argsort(ts, kind="stable")
    rank = np.empty(ts.size, dtype=np.int64)
    rank[order] = np.arange(ts.size, dtype=np.int64)
    return rank


def _group_by_user(x: Interactions, rank: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(order, position, counts)``: event positions grouped by user, ascending ``rank`` within a
    user (``rank`` is a permutation of ``0..n-1``); each event's position within its user's group
    (aligned with ``order``); and events per user."""
    n = len(x)
    m = CSR.from_coo(torch.from_numpy(x.users), torch.from_numpy(rank), shape=(x.n_users, max(n, 1)),
                     duplicates="error")
    inv = np.empty(n, dtype=np.int64)
    inv[rank] = np.arange(n, dtype=np.int64)
    order = inv[m.indices.numpy()]
    indptr = m.indptr.numpy()
    counts = np.diff(indptr)
    position = np.arange(n, dtype=np.int64) - np.repeat(indptr[:-1], counts)
    return order, position, counts


def _per_user_split(x: Interactions, rank: np.ndarray, ratios: np.ndarray) -> tuple[Interactions, ...]:
    """Each user's events in ``rank`` order, cut by ``ratios`` (the first share to train)."""
    k = ratios.size
    order, position, counts = _group_by_user(x, rank)
    c = counts.astype(np.float64)
    cum = np.cumsum(ratios)
    cut1 = _round(c * cum[0])
    cut2 = _round(c * cum[1]) if k == 3 else cut1
    # Guarantees: a user with >= 2 events keeps >= 1 in train and >= 1 in test (when their ratios
    # are positive); a user with one event keeps it in train.
    two = counts >= 2
    if ratios[0] > 0:
        cut1 = np.where(two, np.maximum(cut1, 1), cut1)
    if ratios[-1] > 0:
        cut1 = np.where(two, np.minimum(cut1, counts - 1), cut1)
        cut2 = np.where(two, np.minimum(cut2, counts - 1), cut2)
    cut2 = np.maximum(cut2, cut1)
    if ratios[0] > 0:
        one = counts == 1
        cut1 = np.where(one, 1, cut1)
        cut2 = np.where(one, 1, cut2)
    per_event_u = np.repeat(np.arange(x.n_users), counts)
    part_sorted = (position >= cut1[per_event_u]).astype(np.int8)
    if k == 3:
        part_sorted += position >= cut2[per_event_u]
    part = np.empty(len(x), dtype=np.int8)
    part[order] = part_sorted
    return _parts(x, part, k)


# -- splits -------------------------------------------------------------------------------------
def random_split(x: Interactions, ratios: Sequence[float] = (0.8, 0.1, 0.1), *, seed: int) -> tuple[Interactions, ...]:
    """Split events uniformly at random by global ratios.

    ``ratios`` holds 2 (train, test) or 3 (train, valid, test) non-negative shares summing to 1;
    part sizes are ``round(cumsum(ratios) * len(x))`` differences. Returns that many Interactions.

    Example
    -------
    >>> from recfast.data import synthetic, random_split
    >>> train, valid, test = random_split(synthetic(50, 40, 1000, seed=0), (0.8, 0.1, 0.1), seed=0)
    >>> len(train), len(valid), len(test)
    (800, 100, 100)
    """
    fn = "random_split"
    _check_x(fn, x)
    r = _check_ratios(fn, ratios)
    rng = _check_seed(fn, seed)
    n = len(x)
    bounds = np.concatenate([[0], np.minimum(_round(np.cumsum(r)[:-1] * n), n), [n]])
    part = np.empty(n, dtype=np.int8)
    part[rng.permutation(n)] = np.repeat(np.arange(r.size, dtype=np.int8), np.diff(bounds))
    return _parts(x, part, r.size)


def stratified_split(
    x: Interactions, ratios: Sequence[float] = (0.8, 0.1, 0.1), *, seed: int
) -> tuple[Interactions, ...]:
    """Split each user's events at random by ``ratios`` (2 or 3 shares summing to 1).

    A user with ``c`` events gets ``round(c * r_train)`` train events and the cumulative rounding
    likewise for validation; the rest are test. Every user with at least 2 events has at least one
    in train and one in test (when those ratios are positive); a user with one event keeps it in
    train.

    Example
    -------
    >>> from recfast.data import synthetic, stratified_split
    >>> train, test = stratified_split(synthetic(50, 40, 1000, seed=0), (0.8, 0.2), seed=0)
    >>> bool((train.user_counts() > 0).all() and (test.user_counts() > 0).all())
    True
    """
    fn = "stratified_split"
    _check_x(fn, x)
    r = _check_ratios(fn, ratios)
    rng = _check_seed(fn, seed)
    return _per_user_split(x, rng.permutation(len(x)).astype(np.int64), r)


def leave_one_out(
    x: Interactions, *, by: str = "timestamp", validation: bool = False, seed: int | None = None
) -> tuple[Interactions, ...]:
    """Hold out each user's last event for test (and the one before for validation).

    ``by="timestamp"``: the latest event by time (ties go to the later position in ``x``);
    ``by="random"``: an event drawn uniformly (needs ``seed``). Users with fewer than 2 events
    keep them all in train; with ``validation=True`` a user needs 3 events to give one to
    validation. Returns ``(train, test)`` or ``(train, valid, test)``.

    Example
    -------
    >>> from recfast.data import Interactions, leave_one_out
    >>> x = Interactions([0, 0, 0, 1], [0, 1, 2, 0], timestamps=[3, 1, 2, 5])
    >>> train, test = leave_one_out(x)
    >>> test.items.tolist(), train.items.tolist()
    ([0], [1, 2, 0])
    """
    fn = "leave_one_out"
    _check_x(fn, x)
    if by not in ("timestamp", "random"):
        raise ValueError(f"{fn}: by must be 'timestamp' or 'random', got {by!r}")
    if not isinstance(validation, (bool, np.bool_)):
        raise TypeError(f"{fn}: validation must be a bool, got {validation!r}")
    n = len(x)
    if by == "timestamp":
        rank = _time_rank(_check_timestamps(fn, x))
        if seed is not None:
            _check_seed(fn, seed)
    else:
        if seed is None:
            raise ValueError(f"{fn}: by='random' needs a seed")
        rank = _check_seed(fn, seed).permutation(n).astype(np.int64)
    inv = np.empty(n, dtype=np.int64)
    inv[rank] = np.arange(n, dtype=np.int64)
    counts = np.bincount(x.users, minlength=x.n_users)
    part = np.zeros(n, dtype=np.int8)
    held = 0
    for label, need in ((2, 2), (1, 3)) if validation else ((1, 2),):
        latest = np.full(x.n_users, -1, dtype=np.int64)
        live = part == 0
        np.maximum.at(latest, x.users[live], rank[live])
        users = np.flatnonzero(counts >= need)
        part[inv[latest[users]]] = label
        held += 1
    return _parts(x, part, 1 + held)


def temporal_split(
    x: Interactions, *, cut: Any = None, ratios: Sequence[float] | None = None
) -> tuple[Interactions, ...]:
    """Split by time: a global cut, or each user's history by ratios.

    ``cut=t``: train holds the events with ``timestamp < t`` and test those with ``timestamp >= t``;
    ``cut=(t1, t2)`` with ``t1 <= t2`` adds validation (``t1 <= timestamp < t2``). ``ratios=(...)``:
    each user's events in time order (ties by position), the earliest ``round(c * r_train)`` to
    train, and so on, with the guarantees of ``stratified_split``. Give exactly one of the two.

    Example
    -------
    >>> from recfast.data import Interactions, temporal_split
    >>> x = Interactions([0, 0, 1, 1], [0, 1, 0, 1], timestamps=[1, 5, 2, 9])
    >>> train, test = temporal_split(x, cut=5)
    >>> train.timestamps.tolist(), test.timestamps.tolist()
    ([1, 2], [5, 9])
    """
    fn = "temporal_split"
    _check_x(fn, x)
    if (cut is None) == (ratios is None):
        raise ValueError(f"{fn}: give exactly one of cut= and ratios=")
    ts = _check_timestamps(fn, x)
    if ratios is not None:
        return _per_user_split(x, _time_rank(ts), _check_ratios(fn, ratios))
    cuts = list(cut) if isinstance(cut, (list, tuple, np.ndarray)) else [cut]
    if len(cuts) not in (1, 2):
        raise ValueError(f"{fn}: cut must be one time or a pair (t1, t2), got {cut!r}")
    if any(isinstance(c, float) and np.isnan(c) for c in cuts):
        raise ValueError(f"{fn}: cut is NaN")
    try:
        cuts_arr = np.asarray(cuts, dtype=ts.dtype) if ts.dtype.kind in "Mm" else np.asarray(cuts)
        part = sum((ts >= c).astype(np.int8) for c in cuts_arr)
        if len(cuts) == 2 and bool(cuts_arr[1] < cuts_arr[0]):
            raise ValueError(f"{fn}: cut=(t1, t2) needs t1 <= t2, got {cut!r}")
    except TypeError:
        raise TypeError(f"{fn}: cut {cut!r} cannot be compared with timestamps of dtype {ts.dtype}") from None
    return _parts(x, np.asarray(part, dtype=np.int8).reshape(len(x)), len(cuts) + 1)
