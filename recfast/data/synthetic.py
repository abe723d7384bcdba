"""A seeded power-law interaction generator: the built-in default dataset."""

from __future__ import annotations

import numpy as np

from .interactions import Interactions

__all__ = ["synthetic", "GOWALLA_SHAPE"]

#: (n_users, n_items, n_interactions) of the Gowalla set used by LightGCN/NGCF.
GOWALLA_SHAPE = (29_858, 40_981, 810_128)


def synthetic(
    n_users: int = GOWALLA_SHAPE[0],
    n_items: int = GOWALLA_SHAPE[1],
    n_interactions: int = GOWALLA_SHAPE[2],
    *,
    popularity_exponent: float = 0.8,
    activity_exponent: float = 0.5,
    min_user_interactions: int = 1,
    n_communities: int | None = None,
    affinity: float = 0.5,
    seed: int = 0,
) -> Interactions:
    """Distinct (user, item) pairs with Zipf-like item popularity and user activity, and latent
    communities that give models something to learn beyond popularity.

    Item ``i`` of popularity rank ``r`` is drawn with weight ``(r + 1) ** -popularity_exponent``,
    users likewise with ``activity_exponent``; ranks are assigned to ids by a seeded permutation,
    so popular items are spread over the id space. Users and items each belong to one of
    ``n_communities`` groups (default about sqrt(n_items) / 4); a share ``affinity`` of a user's
    draws come from the items of the user's group (by popularity), the rest from all items.
    Every user gets at least ``min_user_interactions`` items (when the catalogue allows).
    Timestamps are seeded random integers, so temporal splits work too.

    Examples
    --------
    >>> from recfast.data import synthetic
    >>> x = synthetic(100, 50, 1000, seed=1)
    >>> len(x), x.n_users, x.n_items
    (1000, 100, 50)
    """
    n_users, n_items, n_interactions = int(n_users), int(n_items), int(n_interactions)
    if n_users <= 0 or n_items <= 0:
        raise ValueError(f"synthetic: n_users and n_items must be positive, got {n_users} and {n_items}")
    if not 0 <= n_interactions <= n_users * n_items:
        raise ValueError(
            f"synthetic: n_interactions must be in [0, n_users * n_items = {n_users * n_items}], got {n_interactions}"
        )
    min_per_user = min(int(min_user_interactions), n_items)
    if min_per_user * n_users > n_interactions:
        raise ValueError(
            f"synthetic: min_user_interactions={min_user_interactions} needs {min_per_user * n_users} interactions, "
            f"more than n_interactions={n_interactions}"
        )
    if not 0.0 <= affinity <= 1.0:
        raise ValueError(f"synthetic: affinity must be in [0, 1], got {affinity}")
    rng = np.random.default_rng(seed)
    item_w = (np.arange(1, n_items + 1, dtype=np.float64)) ** -float(popularity_exponent)
    item_w = item_w[rng.permutation(n_items)]
    item_w /= item_w.sum()
    user_w = (np.arange(1, n_users + 1, dtype=np.float64)) ** -float(activity_exponent)
    user_w = user_w[rng.permutation(n_users)]
    user_w /= user_w.sum()
    n_comm = max(1, int(n_communities if n_communities is not None else round(np.sqrt(n_items) / 4)))
    item_comm = rng.integers(0, n_comm, n_items)
    user_comm = rng.integers(0, n_comm, n_users)
    # Items sorted by community, with the prefix of their weights: a draw inside community c is a
    # uniform point in c's stretch of that prefix.
    by_comm = np.argsort(item_comm, kind="stable")
    cum = np.concatenate([[0.0], np.cumsum(item_w[by_comm])])
    bounds = np.searchsorted(item_comm[by_comm], np.arange(n_comm + 1))

    def draw_items(users: np.ndarray) -> np.ndarray:
        items = rng.choice(n_items, size=users.size, p=item_w)
        inside = rng.random(users.size) < affinity
        c = user_comm[users[inside]]
        lo, hi = cum[bounds[c]], cum[bounds[c + 1]]
        t = lo + rng.random(c.size) * (hi - lo)
        pos = np.clip(np.searchsorted(cum, t, side="right") - 1, bounds[c], np.maximum(bounds[c + 1] - 1, bounds[c]))
        has_items = bounds[c + 1] > bounds[c]
        items[np.nonzero(inside)[0][has_items]] = by_comm[pos[has_items]]
        return items

    keys = np.empty(0, dtype=np.int64)
    need = np.full(n_users, min_per_user, dtype=np.int64)
    rounds = 0
    while need.any():
        # Guarantee activity: each user's first items, drawn like the rest; a user whose draws
        # collided draws again for the missing ones.
        base_u = np.repeat(np.arange(n_users, dtype=np.int64), need)
        if rounds < 20:
            base_i = draw_items(base_u)
        else:  # rare (min_user_interactions close to n_items): uniform over each user's unseen items
            have = np.zeros((np.count_nonzero(need), n_items), dtype=bool)
            rows = np.flatnonzero(need)
            row_of = np.full(n_users, -1, dtype=np.int64)
            row_of[rows] = np.arange(rows.size)
            mine = row_of[keys // n_items] >= 0
            have[row_of[keys[mine] // n_items], keys[mine] % n_items] = True
            base_i = np.concatenate([rng.choice(np.flatnonzero(~have[k]), size=need[u], replace=False)
                                     for k, u in enumerate(rows)])
        keys = np.union1d(keys, base_u * n_items + base_i)
        need = np.maximum(min_per_user - np.bincount(keys // n_items, minlength=n_users), 0)
        rounds += 1
    dense = n_interactions > 0.5 * n_users * n_items
    while keys.size < n_interactions:
        need = n_interactions - keys.size
        if dense:
            # Near-complete matrices: draw from the pairs not yet taken, uniformly.
            all_keys = np.setdiff1d(np.arange(n_users * n_items, dtype=np.int64), keys, assume_unique=True)
            keys = np.union1d(keys, rng.choice(all_keys, size=need, replace=False))
            break
        m = int(need * 1.15) + 64
        u = rng.choice(n_users, size=m, p=user_w)
        i = draw_items(u)
        new = np.setdiff1d(np.unique(u.astype(np.int64) * n_items + i), keys, assume_unique=True)
        if new.size > need:
            new = rng.choice(new, size=need, replace=False)
        keys = np.union1d(keys, new)
    keys = keys[rng.permutation(keys.size)]
    users = keys // n_items
    items = keys % n_items
    timestamps = rng.integers(0, 1_000_000_000, size=keys.size, dtype=np.int64)
    return Interactions(users, items, n_users=n_users, n_items=n_items, timestamps=timestamps)
