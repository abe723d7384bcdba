"""Seeded splits of ``Interactions`` into disjoint parts in the same id space."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .interactions import Interactions

__all__ = ["random_split", "stratified_split", "leave_one_out", "temporal_split"]


def _check_ratios(ratios: Sequence[float], op: str) -> np.ndarray:
    r = np.asarray(ratios, dtype=np.float64)
    if r.ndim != 1 or len(r) not in (2, 3) or np.any(r < 0) or not np.isclose(r.sum(), 1.0):
        raise ValueError(f"{op}: ratios must be 2 or 3 non-negative numbers summing to 1, got {list(ratios)}")
    return r


def _parts(x: Interactions, part: np.ndarray, k: int) -> tuple[Interactions, ...]:
    return tuple(x.select(np.nonzero(part == j)[0]) for j in range(k))


def random_split(x: Interactions, ratios: Sequence[float] = (0.8, 0.1, 0.1), *, seed: int) -> tuple[Interactions, ...]:
    """Shuffle all events (seeded) and cut them by global ratios into 2 or 3 parts.

    Example
    -------
    >>> import recfast
    >>> train, test = random_split(recfast.data.synthetic(50, 40, 500, seed=0), (0.8, 0.2), seed=0)
    >>> len(train), len(test)
    (400, 100)
    """
    r = _check_ratios(ratios, "random_split")
    n = len(x)
    perm = np.random.default_rng(seed).permutation(n)
    cuts = np.round(np.cumsum(r)[:-1] * n).astype(np.int64)
    part = np.empty(n, dtype=np.int64)
    part[perm] = np.searchsorted(cuts, np.arange(n), side="right")
    return _parts(x, part, len(r))


def _user_ranks(x: Interactions, key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each event, its rank within its user's events ordered by ``key``; and the user's count."""
    order = np.lexsort((key, x.users))
    counts = np.bincount(x.users, minlength=x.n_users)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(len(x), dtype=np.int64)
    rank[order] = np.arange(len(x)) - starts[x.users[order]]
    return rank, counts[x.users]


def _by_user_ratios(x: Interactions, key: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Part of each event when each user's events, ordered by key, are cut by ratios; every user with
    at least 2 events keeps one in the first part and one in the last."""
    rank, count = _user_ranks(x, key)
    k = len(r)
    cum = np.cumsum(r)[:-1]
    # boundaries per user: events [0, b1) -> part 0, [b1, b2) -> part 1, ...
    bounds = np.round(count[:, None] * cum[None, :]).astype(np.int64)
    many = count >= 2
    bounds[:, 0] = np.where(many, np.clip(bounds[:, 0], 1, count - 1), bounds[:, 0])
    if k == 3:
        bounds[:, 1] = np.where(many, np.clip(bounds[:, 1], bounds[:, 0], count - 1), bounds[:, 1])
    part = (rank[:, None] >= bounds).sum(axis=1)
    return part


def stratified_split(x: Interactions, ratios: Sequence[float] = (0.8, 0.1, 0.1), *, seed: int) -> tuple[Interactions, ...]:
    """Cut each user's events (in a seeded random order) by the ratios; every user with at least 2
    events appears in the first (train) and the last (test) part."""
    r = _check_ratios(ratios, "stratified_split")
    key = np.random.default_rng(seed).random(len(x))
    return _parts(x, _by_user_ratios(x, key, r), len(r))


def leave_one_out(x: Interactions, *, by: str = "timestamp", validation: bool = False,
                  seed: int = 0) -> tuple[Interactions, ...]:
    """Hold out each user's last event (by timestamp, ties broken by position; or a random one with
    ``by="random"``) as test, and with ``validation=True`` the one before it as validation.

    Users with a single event keep it in train (with ``validation``, users need 3 events to give one
    to each part, else they fill test first, then train).
    Returns (train, test) or (train, valid, test).
    """
    if by == "timestamp":
        if x.timestamps is None:
            raise ValueError("leave_one_out: by='timestamp' needs timestamps; use by='random'")
        key = np.lexsort((np.arange(len(x)), x.timestamps)).argsort().astype(np.float64)
    elif by == "random":
        key = np.random.default_rng(seed).random(len(x))
    else:
        raise ValueError(f"leave_one_out: by must be 'timestamp' or 'random', got {by!r}")
    rank, count = _user_ranks(x, key)
    from_end = count - 1 - rank  # 0 = last event of the user
    part = np.zeros(len(x), dtype=np.int64)
    if validation:
        part[(from_end == 0) & (count >= 2)] = 2
        part[(from_end == 1) & (count >= 3)] = 1
        return _parts(x, part, 3)
    part[(from_end == 0) & (count >= 2)] = 1
    return _parts(x, part, 2)


def temporal_split(x: Interactions, *, cut: float | None = None,
                   ratios: Sequence[float] | None = None) -> tuple[Interactions, ...]:
    """By time: a global cut (events before ``cut`` train, the rest test), or per-user ratios over
    each user's events in time order (earliest in train)."""
    if x.timestamps is None:
        raise ValueError("temporal_split: these interactions have no timestamps")
    if (cut is None) == (ratios is None):
        raise ValueError("temporal_split: give exactly one of cut= or ratios=")
    if cut is not None:
        part = (x.timestamps >= cut).astype(np.int64)
        return _parts(x, part, 2)
    r = _check_ratios(ratios, "temporal_split")  # type: ignore[arg-type]
    key = np.lexsort((np.arange(len(x)), x.timestamps)).argsort().astype(np.float64)
    return _parts(x, _by_user_ratios(x, key, r), len(r))
