"""recfast.data splits: invariants over random inputs, named cases and every error."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recfast.data import Interactions, leave_one_out, random_split, stratified_split, synthetic, temporal_split

SETTINGS = settings(max_examples=40, deadline=None)


@st.composite
def events(draw, max_users=10, max_n=120):
    """Random events; ``ratings`` hold each event's position so parts can be traced back."""
    n_users = draw(st.integers(1, max_users))
    n = draw(st.integers(0, max_n))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    u = rng.integers(0, n_users, n)
    i = rng.integers(0, 6, n)
    ts = rng.integers(0, draw(st.sampled_from([3, 1000])), n)  # heavy ties or few ties
    return Interactions.from_ids(u, i, ratings=np.arange(n), timestamps=ts)


def _ids(part: Interactions) -> np.ndarray:
    return part.ratings.astype(np.int64)


def _check_partition(x: Interactions, parts: tuple[Interactions, ...], k: int) -> None:
    assert len(parts) == k
    ids = [_ids(p) for p in parts]
    for p, pid in zip(parts, ids):
        assert p.shape == x.shape and p.user_ids is x.user_ids and p.item_ids is x.item_ids
        assert (np.diff(pid) > 0).all()  # input order kept
        assert np.array_equal(p.users, x.users[pid]) and np.array_equal(p.timestamps, x.timestamps[pid])
    union = np.concatenate(ids)
    assert union.size == len(x) and np.array_equal(np.sort(union), np.arange(len(x)))  # disjoint, complete


def _expected_per_user(counts: np.ndarray, ratios) -> np.ndarray:
    """Per-user part sizes by the documented rule, computed user by user."""
    out = []
    for c in counts.tolist():
        cum = np.cumsum(ratios)
        c1 = int(np.floor(c * cum[0] + 0.5))
        c2 = int(np.floor(c * cum[1] + 0.5)) if len(ratios) == 3 else c1
        if c >= 2:
            if ratios[0] > 0:
                c1 = max(c1, 1)
            if ratios[-1] > 0:
                c1, c2 = min(c1, c - 1), min(c2, c - 1)
        c2 = max(c2, c1)
        if c == 1 and ratios[0] > 0:
            c1 = c2 = 1
        sizes = [c1, c2 - c1, c - c2] if len(ratios) == 3 else [c1, c - c1]
        out.append(sizes)
    return np.array(out, dtype=np.int64).reshape(len(counts), len(ratios))


RATIOS = [(0.8, 0.2), (0.5, 0.5), (0.2, 0.8), (0.8, 0.1, 0.1), (0.1, 0.1, 0.8), (0.6, 0.2, 0.2), (0.9, 0.0, 0.1),
          (1.0, 0.0), (0.0, 1.0)]


# -- random_split ------------------------------------------------------------------------------
@SETTINGS
@given(events(), st.sampled_from(RATIOS), st.integers(0, 2**31))
def test_random_split_invariants(x, ratios, seed):
    parts = random_split(x, ratios, seed=seed)
    _check_partition(x, parts, len(ratios))
    bounds = np.floor(np.cumsum(ratios) * len(x) + 0.5).astype(int)
    bounds[-1] = len(x)
    assert [len(p) for p in parts] == np.diff(np.concatenate([[0], bounds])).tolist()
    again = random_split(x, ratios, seed=seed)
    assert all(np.array_equal(_ids(a), _ids(b)) for a, b in zip(parts, again))


def test_random_split_seeds_differ_and_default_ratios():
    x = synthetic(60, 50, 2000, seed=0)
    a = random_split(x, seed=1)
    b = random_split(x, seed=2)
    assert [len(p) for p in a] == [1600, 200, 200]
    assert not np.array_equal(a[2].users, b[2].users)
    ratios = np.array([len(p) for p in random_split(synthetic(300, 200, 20000, seed=0), (0.7, 0.3), seed=0)])
    assert ratios.tolist() == [14000, 6000]


# -- stratified_split --------------------------------------------------------------------------
@SETTINGS
@given(events(), st.sampled_from(RATIOS), st.integers(0, 2**31))
def test_stratified_split_invariants(x, ratios, seed):
    parts = stratified_split(x, ratios, seed=seed)
    _check_partition(x, parts, len(ratios))
    counts = x.user_counts()
    got = np.stack([p.user_counts() for p in parts], axis=1)
    assert np.array_equal(got, _expected_per_user(counts, ratios))
    two = counts >= 2
    if ratios[0] > 0:
        assert (got[two, 0] >= 1).all() and (got[counts == 1, 0] == 1).all()
    if ratios[-1] > 0:
        assert (got[two, -1] >= 1).all()
    again = stratified_split(x, ratios, seed=seed)
    assert all(np.array_equal(_ids(a), _ids(b)) for a, b in zip(parts, again))


@pytest.mark.parametrize("ratios", RATIOS)
@pytest.mark.parametrize("split", ["stratified", "temporal"])
def test_per_user_small_counts(ratios, split):
    # Users 0..7 have 1..8 events: every rounding and guarantee case occurs.
    users = np.repeat(np.arange(8), np.arange(1, 9))
    x = Interactions(users, np.arange(users.size), ratings=np.arange(users.size), timestamps=np.arange(users.size))
    parts = stratified_split(x, ratios, seed=0) if split == "stratified" else temporal_split(x, ratios=ratios)
    _check_partition(x, parts, len(ratios))
    got = np.stack([p.user_counts() for p in parts], axis=1)
    assert np.array_equal(got, _expected_per_user(x.user_counts(), ratios))
    if ratios[0] > 0:
        assert (got[:, 0] >= 1).all()
    if ratios[-1] > 0:
        assert got[0, -1] == (0 if ratios[0] > 0 else 1) and (got[1:, -1] >= 1).all()
    if split == "temporal":  # time = position here: each user's block is cut in order
        starts = np.concatenate([[0], np.cumsum(np.arange(1, 9))])
        for k, p in enumerate(parts):
            lo = starts[:-1] + got[:, :k].sum(axis=1)
            want = np.concatenate([np.arange(a, a + c) for a, c in zip(lo, got[:, k])])
            assert _ids(p).tolist() == want.tolist()


def test_stratified_split_is_random_within_users_and_respects_ratios():
    x = synthetic(200, 300, 20000, seed=0)
    tr, va, te = stratified_split(x, (0.8, 0.1, 0.1), seed=0)
    total = np.array([len(tr), len(va), len(te)]) / len(x)
    np.testing.assert_allclose(total, [0.8, 0.1, 0.1], atol=0.02)
    tr2, _, _ = stratified_split(x, (0.8, 0.1, 0.1), seed=1)
    assert not np.array_equal(tr.items, tr2.items)
    # Held-out events are not simply each user's last ones in input order.
    x2 = Interactions(np.zeros(100, np.int64), np.arange(100), ratings=np.arange(100), timestamps=np.arange(100))
    test = stratified_split(x2, (0.5, 0.5), seed=0)[1]
    assert len(test) == 50 and _ids(test).tolist() != list(range(50, 100))


# -- leave_one_out -----------------------------------------------------------------------------
@SETTINGS
@given(events(), st.booleans())
def test_leave_one_out_takes_the_latest(x, validation):
    parts = leave_one_out(x, validation=validation)
    _check_partition(x, parts, 3 if validation else 2)
    counts = x.user_counts()
    test = parts[-1]
    assert np.array_equal(test.user_counts(), (counts >= 2).astype(np.int64))
    for u, pos in zip(test.users.tolist(), _ids(test).tolist()):
        mine = np.flatnonzero(x.users == u)
        latest = mine[x.timestamps[mine] == x.timestamps[mine].max()][-1]  # ties: the last occurrence
        assert pos == latest
    if validation:
        valid = parts[1]
        assert np.array_equal(valid.user_counts(), (counts >= 3).astype(np.int64))
        for u, pos in zip(valid.users.tolist(), _ids(valid).tolist()):
            mine = np.setdiff1d(np.flatnonzero(x.users == u), _ids(test))
            latest = mine[x.timestamps[mine] == x.timestamps[mine].max()][-1]
            assert pos == latest


@SETTINGS
@given(events(), st.booleans(), st.integers(0, 2**31))
def test_leave_one_out_random(x, validation, seed):
    parts = leave_one_out(x, by="random", validation=validation, seed=seed)
    _check_partition(x, parts, 3 if validation else 2)
    counts = x.user_counts()
    assert np.array_equal(parts[-1].user_counts(), (counts >= 2).astype(np.int64))
    again = leave_one_out(x, by="random", validation=validation, seed=seed)
    assert all(np.array_equal(_ids(a), _ids(b)) for a, b in zip(parts, again))


def test_leave_one_out_random_is_uniform():
    x = Interactions(np.zeros(4, np.int64), np.arange(4))
    picks = np.array([leave_one_out(x, by="random", seed=s)[1].items[0] for s in range(400)])
    counts = np.bincount(picks, minlength=4)
    assert counts.min() > 60, counts  # each of 4 events is held out about 100 times in 400


def test_leave_one_out_named_cases():
    x = Interactions([0, 0, 0, 1, 2, 2], [0, 1, 2, 0, 1, 2], timestamps=[5, 9, 9, 1, 3, 2])
    train, valid, test = leave_one_out(x, validation=True)
    assert test.items.tolist() == [2, 1] and test.users.tolist() == [0, 2]  # tie at 9 -> the later event
    assert valid.items.tolist() == [1] and train.items.tolist() == [0, 0, 2]
    assert all(len(p) == 0 for p in leave_one_out(Interactions([], [], timestamps=[])))
    assert leave_one_out(x, seed=3)[1].items.tolist() == [2, 1]  # a seed is accepted and unused


# -- temporal_split ----------------------------------------------------------------------------
@SETTINGS
@given(events(), st.integers(-1, 1001), st.integers(0, 300))
def test_temporal_cut(x, t1, gap):
    train, test = temporal_split(x, cut=t1)
    _check_partition(x, (train, test), 2)
    assert (train.timestamps < t1).all() and (test.timestamps >= t1).all()
    tr, va, te = temporal_split(x, cut=(t1, t1 + gap))
    _check_partition(x, (tr, va, te), 3)
    assert (tr.timestamps < t1).all() and ((va.timestamps >= t1) & (va.timestamps < t1 + gap)).all()
    assert (te.timestamps >= t1 + gap).all()


@SETTINGS
@given(events(), st.sampled_from(RATIOS))
def test_temporal_ratios_per_user(x, ratios):
    parts = temporal_split(x, ratios=ratios)
    _check_partition(x, parts, len(ratios))
    got = np.stack([p.user_counts() for p in parts], axis=1)
    assert np.array_equal(got, _expected_per_user(x.user_counts(), ratios))
    # Per user, every earlier part precedes every later one in (time, position) order.
    key = x.timestamps.astype(np.int64) * (len(x) + 1) + np.arange(len(x))
    for a, b in zip(parts[:-1], parts[1:]):
        for u in np.intersect1d(a.users, b.users).tolist():
            assert key[_ids(a)[a.users == u]].max() < key[_ids(b)[b.users == u]].min()


def test_temporal_datetime_and_float_timestamps():
    ts = np.array(["2020-01-01", "2020-02-01", "2020-03-01"], dtype="datetime64[D]")
    x = Interactions([0, 0, 1], [0, 1, 0], timestamps=ts)
    train, test = temporal_split(x, cut="2020-01-15")
    assert train.timestamps.tolist() == ts[:1].tolist() and len(test) == 2
    tr, va, te = temporal_split(x, cut=(np.datetime64("2020-01-15"), "2020-02-15"))
    assert (len(tr), len(va), len(te)) == (1, 1, 1)
    y = Interactions([0, 1], [0, 0], timestamps=[0.5, 1.5])
    assert [len(p) for p in temporal_split(y, cut=1.0)] == [1, 1]


# -- errors ------------------------------------------------------------------------------------
X = Interactions([0, 0, 1], [0, 1, 0], timestamps=[1, 2, 3])
NO_TS = Interactions([0, 0, 1], [0, 1, 0])


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: random_split([1, 2], seed=0), TypeError, "random_split: x must be recfast.data.Interactions, got list"),
        (lambda: random_split(X, (0.5, 0.6), seed=0), ValueError, r"ratios must sum to 1, got \(0.5, 0.6\)"),
        (lambda: random_split(X, (1.0,), seed=0), ValueError, "ratios must hold 2 .* or 3 .* numbers"),
        (lambda: random_split(X, (0.5, 0.25, 0.125, 0.125), seed=0), ValueError, "ratios must hold 2"),
        (lambda: random_split(X, (1.2, -0.2), seed=0), ValueError, "ratios must be finite and non-negative"),
        (lambda: random_split(X, (float("nan"), 1.0), seed=0), ValueError, "finite and non-negative"),
        (lambda: random_split(X, ("a", "b"), seed=0), TypeError, "ratios must be a sequence of 2 or 3 numbers"),
        (lambda: random_split(X), TypeError, "seed"),  # seed is required
        (lambda: random_split(X, seed=1.5), TypeError, "random_split: seed must be an int, got 1.5"),
        (lambda: random_split(X, seed=True), TypeError, "seed must be an int, got True"),
        (lambda: random_split(X, seed=-1), ValueError, "seed must be non-negative, got -1"),
        (lambda: stratified_split(X, (0.5, 0.5)), TypeError, "seed"),
        (lambda: stratified_split(X, (0.5, 0.4), seed=0), ValueError, "stratified_split: ratios must sum to 1"),
        (lambda: stratified_split(None, seed=0), TypeError, "stratified_split: x must be"),
        (lambda: leave_one_out(NO_TS), ValueError, "leave_one_out: these interactions have no timestamps"),
        (lambda: leave_one_out(X, by="time"), ValueError, "by must be 'timestamp' or 'random', got 'time'"),
        (lambda: leave_one_out(X, by="random"), ValueError, "by='random' needs a seed"),
        (lambda: leave_one_out(X, validation="yes"), TypeError, "validation must be a bool"),
        (lambda: leave_one_out(X, by="random", seed="s"), TypeError, "seed must be an int"),
        (lambda: temporal_split(X), ValueError, "give exactly one of cut= and ratios="),
        (lambda: temporal_split(X, cut=2, ratios=(0.5, 0.5)), ValueError, "give exactly one of"),
        (lambda: temporal_split(NO_TS, cut=2), ValueError, "temporal_split: these interactions have no timestamps"),
        (lambda: temporal_split(X, cut=(3, 2)), ValueError, r"cut=\(t1, t2\) needs t1 <= t2, got \(3, 2\)"),
        (lambda: temporal_split(X, cut=(1, 2, 3)), ValueError, "cut must be one time or a pair"),
        (lambda: temporal_split(X, cut=float("nan")), ValueError, "cut is NaN"),
        (lambda: temporal_split(X, cut="soon"), TypeError, "cut 'soon' cannot be compared with timestamps of dtype int64"),
        (lambda: temporal_split(X, ratios=(0.5, 0.6)), ValueError, "temporal_split: ratios must sum to 1"),
    ],
)
def test_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_empty_inputs():
    e = Interactions([], [], n_users=3, n_items=2, ratings=[], timestamps=[])
    for parts in (random_split(e, seed=0), stratified_split(e, seed=0), leave_one_out(e),
                  leave_one_out(e, by="random", seed=0, validation=True), temporal_split(e, cut=1),
                  temporal_split(e, ratios=(0.5, 0.5))):
        assert all(len(p) == 0 and p.shape == (3, 2) for p in parts)
