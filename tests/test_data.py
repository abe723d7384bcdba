"""recfast.data.Interactions (id maps, filters, selection) and the synthetic generator."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import recfast
from recfast.data import GOWALLA_SHAPE, Interactions, UnknownIdError, synthetic

SETTINGS = settings(max_examples=40, deadline=None)


# -- slow, obviously right references ----------------------------------------------------------
def _drop_duplicates_ref(x: Interactions) -> list[int]:
    """Positions kept: per pair the latest timestamp, ties and no timestamps -> last occurrence."""
    best: dict[tuple[int, int], int] = {}
    for pos, (u, i) in enumerate(zip(x.users.tolist(), x.items.tolist())):
        prev = best.get((u, i))
        if prev is None or x.timestamps is None or x.timestamps[pos] >= x.timestamps[prev]:
            best[(u, i)] = pos
    return sorted(best.values())


def _k_core_ref(users, items, uk, ik) -> set[int]:
    """Positions left by removing one deficient user or item at a time until none is left."""
    alive = set(range(len(users)))
    while True:
        uc, ic = {}, {}
        for p in alive:
            uc[users[p]] = uc.get(users[p], 0) + 1
            ic[items[p]] = ic.get(items[p], 0) + 1
        bad = {p for p in alive if uc[users[p]] < uk or ic[items[p]] < ik}
        if not bad:
            return alive
        alive -= bad


@st.composite
def events(draw, max_users=8, max_items=8, max_n=60, timestamps=True, ratings=False):
    n_users = draw(st.integers(1, max_users))
    n_items = draw(st.integers(1, max_items))
    n = draw(st.integers(0, max_n))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    u = rng.integers(0, n_users, n)
    i = rng.integers(0, n_items, n)
    ts = rng.integers(0, 6, n) if timestamps else None  # few values: many ties
    r = rng.integers(1, 6, n).astype(np.float32) if ratings else None
    return Interactions(u, i, n_users=n_users, n_items=n_items, timestamps=ts, ratings=r)


# -- construction ------------------------------------------------------------------------------
def test_constructor_basics():
    x = Interactions([0, 2, 2], [1, 0, 4], ratings=[1, 2, 3], timestamps=[5, 6, 7])
    assert (x.n_users, x.n_items, len(x), x.shape) == (3, 5, 3, (3, 5))
    assert x.users.dtype == np.int64 and x.items.dtype == np.int64 and x.ratings.dtype == np.float32
    assert x.user_counts().tolist() == [1, 0, 2] and x.item_counts().tolist() == [1, 1, 0, 0, 1]
    assert "3 events, 3 users, 5 items, ratings, timestamps" in repr(x)
    y = Interactions(np.array([1], np.uint8), torch.tensor([2]), n_users=4, n_items=9)
    assert y.shape == (4, 9) and y.users.tolist() == [1] and y.items.tolist() == [2]
    e = Interactions([], [])
    assert len(e) == 0 and e.shape == (0, 0) and e.to_csr().shape == (0, 0)
    assert Interactions([], [], n_users=3, n_items=2).to_csr().shape == (3, 2)


def test_datetime_timestamps():
    ts = np.array(["2020-01-02", "2020-01-01"], dtype="datetime64[s]")
    x = Interactions([0, 0], [0, 1], timestamps=ts)
    assert x.timestamps.dtype == ts.dtype
    assert x.drop_duplicates().timestamps.tolist() == ts.tolist()


@pytest.mark.parametrize(
    "args, kwargs, exc, match",
    [
        (([0.5], [0]), {}, TypeError, "users must hold integer ids, got dtype float64"),
        (([0], ["a"]), {}, TypeError, "items must hold integer ids, got dtype <U1"),
        (([True], [0]), {}, TypeError, "users must hold integer ids, got dtype bool"),
        (([[0]], [0]), {}, ValueError, r"users must be 1-D, got shape \(1, 1\)"),
        (([0, 1], [0]), {}, ValueError, "users and items must have equal length, got 2 and 1"),
        (([0, 3], [0, 0]), {"n_users": 3}, ValueError, "users holds id 3, expected 0 <= id < 3"),
        (([0, -1], [0, 0]), {}, ValueError, "users holds id -1"),
        (([0], [7]), {"n_items": 2}, ValueError, "items holds id 7, expected 0 <= id < 2"),
        (([0], [0]), {"n_users": -1}, ValueError, "n_users must be a non-negative int, got -1"),
        (([0], [0]), {"n_items": True}, ValueError, "n_items must be a non-negative int, got True"),
        (([0], [0]), {"n_items": 2.0}, ValueError, "n_items must be a non-negative int"),
        (([0], [0]), {"ratings": [1, 2]}, ValueError, r"ratings has shape \(2,\), expected \(1,\)"),
        (([0], [0]), {"ratings": ["x"]}, TypeError, "ratings must be numeric"),
        (([0], [0]), {"timestamps": [1, 2]}, ValueError, "timestamps has shape"),
        (([0], [0]), {"timestamps": ["today"]}, TypeError, "timestamps must be numeric or datetime64"),
        (([0], [0]), {"user_ids": ["a", "b"]}, ValueError, r"user_ids must be a 1-D map of length 1, got shape \(2,\)"),
        (([0], [0]), {"item_ids": [["a"]]}, ValueError, "item_ids must be a 1-D map of length 1"),
    ],
)
def test_constructor_errors(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        Interactions(*args, **kwargs)


# -- id maps -----------------------------------------------------------------------------------
def test_from_ids_orders():
    u = ["bob", "amy", "bob", "cat"]
    i = [30, 10, 20, 30]
    first = Interactions.from_ids(u, i)
    assert first.users.tolist() == [0, 1, 0, 2] and first.user_ids.tolist() == ["bob", "amy", "cat"]
    assert first.items.tolist() == [0, 1, 2, 0] and first.item_ids.tolist() == [30, 10, 20]
    srt = Interactions.from_ids(u, i, order="sorted")
    assert srt.users.tolist() == [1, 0, 1, 2] and srt.user_ids.tolist() == ["amy", "bob", "cat"]
    assert srt.items.tolist() == [2, 0, 1, 2] and srt.item_ids.tolist() == [10, 20, 30]
    for x in (first, srt):
        assert x.shape == (3, 3)
        assert x.original_users(x.users).tolist() == u and x.original_items(x.items).tolist() == i


def test_from_ids_keeps_ratings_and_timestamps_aligned():
    x = Interactions.from_ids([9, 8], ["a", "b"], [4.5, 3.0], [100, 50])
    assert x.ratings.tolist() == [4.5, 3.0] and x.timestamps.tolist() == [100, 50]


@pytest.mark.parametrize("order", ["first", "sorted"])
@pytest.mark.parametrize("kind", ["dense_int", "sparse_int", "negative_int", "uint", "str", "mixed_object"])
@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 80))
def test_id_maps_round_trip(order, kind, seed, n):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 12, n)
    ids = {
        "dense_int": base,
        "sparse_int": base * 10**12 + 7,  # range far larger than the count: the np.unique path
        "negative_int": base - 6,
        "uint": base.astype(np.uint64) + np.uint64(2**63),
        "str": np.array([f"id{v}" for v in base.tolist()], dtype=str),
        "mixed_object": np.array([v if v % 2 else f"s{v}" for v in base.tolist()], dtype=object),
    }[kind]
    if kind == "mixed_object" and order == "sorted" and len(set(type(v) for v in ids.tolist())) > 1:
        with pytest.raises(TypeError, match="cannot be sorted; use order='first'"):
            Interactions.from_ids(ids, ids, order=order)
        return
    x = Interactions.from_ids(ids, ids[::-1], order=order)
    uniq = list(dict.fromkeys(ids.tolist()))  # first appearance
    if order == "sorted":
        uniq = sorted(uniq)
    assert x.user_ids.tolist() == uniq and x.n_users == len(uniq)
    assert x.original_users(x.users).tolist() == ids.tolist()
    assert x.original_items(x.items).tolist() == ids[::-1].tolist()
    assert x.user_index(ids).tolist() == x.users.tolist()
    assert x.item_index(ids[::-1]).tolist() == x.items.tolist()
    if n:
        assert x.user_index(ids[0]) == x.users[0] and isinstance(x.user_index(ids[0]), int)


def test_user_index_unknown_ids():
    x = Interactions.from_ids(["amy", "bob"], [1, 2])
    with pytest.raises(UnknownIdError, match=r"Interactions.user_index: unknown user id\(s\) \['zed'\]"):
        x.user_index(["amy", "zed"])
    with pytest.raises(KeyError, match="unknown user id"):  # also a KeyError ...
        x.user_index("zed")
    with pytest.raises(ValueError, match="unknown user id"):  # ... and a ValueError
        x.user_index(5)
    with pytest.raises(UnknownIdError, match=r"unknown item id\(s\) \[3, 4, 5, 6, 7\] and 2 more"):
        x.item_index([1, 3, 4, 5, 6, 7, 8, 9])
    with pytest.raises(UnknownIdError, match=r"unknown item id\(s\) \['1'\]"):
        x.item_index("1")  # types are not coerced
    assert x.item_index(np.array([2, 1], dtype=np.int32)).tolist() == [1, 0]
    assert x.user_index([]).tolist() == []


def test_index_without_maps_is_identity_with_range_check():
    x = Interactions([0, 1], [2, 0])
    assert x.user_index([1, 0]).tolist() == [1, 0] and x.item_index(2) == 2
    with pytest.raises(UnknownIdError, match=r"unknown user id\(s\) \[2\]"):
        x.user_index([0, 2])
    with pytest.raises(UnknownIdError, match=r"unknown item id\(s\) \[-1\]"):
        x.item_index(-1)
    with pytest.raises(UnknownIdError, match=r"unknown user id\(s\) \['a'\] \(ids are integers 0..1\)"):
        x.user_index("a")
    assert x.original_users([1, 0]).tolist() == [1, 0] and x.original_items(2) == 2


def test_original_ids_shapes_padding_and_errors():
    x = Interactions.from_ids([5, 5, 6], ["a", "b", "c"])
    top = torch.tensor([[2, 0], [1, -1]])
    assert x.original_items(top, pad="").tolist() == [["c", "a"], ["b", ""]]
    assert x.original_items(top, pad=None).tolist() == [["c", "a"], ["b", None]]
    assert x.original_users([1, -1], pad=-1).tolist() == [6, -1]
    assert x.original_users(np.array([], dtype=np.int64)).tolist() == []
    assert x.original_users(0) == 5 and isinstance(x.original_users(0), int)
    with pytest.raises(ValueError, match="id -1 out of range for 3 items; -1 .* pad="):
        x.original_items(top)
    with pytest.raises(ValueError, match="Interactions.original_users: id 2 out of range for 2 users"):
        x.original_users([0, 2])
    with pytest.raises(ValueError, match="id -2 out of range"):
        x.original_users([-2], pad=0)
    with pytest.raises(TypeError, match="ids must be integers, got dtype float64"):
        x.original_users([0.0])
    y = Interactions([0, 1], [0, 0])
    assert y.original_users([1, -1], pad=-7).tolist() == [1, -7]


def test_from_ids_errors():
    with pytest.raises(ValueError, match=r"user_ids and item_ids must be 1-D of equal length, got \(2,\) and \(1,\)"):
        Interactions.from_ids([1, 2], [1])
    with pytest.raises(ValueError, match="order must be one of"):
        Interactions.from_ids([1], [1], order="random")
    with pytest.raises(ValueError, match="user_ids holds NaN at position 1"):
        Interactions.from_ids([1.0, np.nan], [1, 2])


# -- to_csr ------------------------------------------------------------------------------------
def test_to_csr():
    x = Interactions([1, 0, 1, 1], [2, 1, 0, 2], ratings=[1, 2, 3, 4], n_users=3)
    m = x.to_csr()
    assert m.shape == (3, 3) and m.values is None
    assert m.indptr.tolist() == [0, 1, 3, 3] and m.indices.tolist() == [1, 0, 2]
    r = x.to_csr(values="ratings")
    assert r.values.tolist() == [2.0, 3.0, 4.0]  # the repeated pair keeps its last rating
    assert x.to_csr(values="ratings", duplicates="sum").values.tolist() == [2.0, 3.0, 5.0]
    with pytest.raises(ValueError, match="values='ratings' but these interactions have no ratings"):
        Interactions([0], [0]).to_csr(values="ratings")
    with pytest.raises(ValueError, match="values must be None or 'ratings', got 'timestamps'"):
        x.to_csr(values="timestamps")


# -- selection ---------------------------------------------------------------------------------
def test_subset_select_concat_keep_the_id_space():
    x = Interactions.from_ids(["a", "b", "c", "a"], [1, 2, 3, 4], [1, 2, 3, 4], [10, 20, 30, 40])
    s = x.subset(x.ratings > 2)
    assert s.shape == x.shape and s.user_ids is x.user_ids and s.items.tolist() == [2, 3]
    assert s.ratings.tolist() == [3, 4] and s.timestamps.tolist() == [30, 40]
    t = x.select([3, 0, 3])
    assert t.items.tolist() == [3, 0, 3] and t.shape == x.shape
    assert x.select(np.array([-1])).items.tolist() == [3]
    assert x.select([]).shape == x.shape and len(x.select([])) == 0
    both = Interactions.concat([s, x.subset(x.ratings <= 2)])
    assert sorted(both.timestamps.tolist()) == [10, 20, 30, 40] and both.shape == x.shape
    assert both.user_ids is x.user_ids
    assert Interactions.concat([s, Interactions([0], [0], n_users=3, n_items=4, user_ids=x.user_ids,
                                                item_ids=x.item_ids)]).ratings is None
    with pytest.raises(TypeError, match="mask must be boolean, got dtype int64"):
        x.subset([1, 0, 1, 0])
    with pytest.raises(ValueError, match=r"mask has shape \(2,\), expected \(4,\)"):
        x.subset([True, False])
    with pytest.raises(IndexError, match="position 4 out of range for 4 events"):
        x.select([4])
    with pytest.raises(TypeError, match="idx must be integer positions"):
        x.select([0.5])
    with pytest.raises(ValueError, match="need at least one part"):
        Interactions.concat([])
    with pytest.raises(ValueError, match=r"part 1 has shape \(1, 1\)"):
        Interactions.concat([x, Interactions([0], [0])])
    with pytest.raises(ValueError, match="part 1 has different id maps"):
        Interactions.concat([x, Interactions([0], [0], n_users=3, n_items=4)])
    with pytest.raises(TypeError, match="part 1 is a list"):
        Interactions.concat([x, []])


def test_compact_keeps_original_ids():
    x = Interactions([4, 1, 4], [0, 7, 3], n_users=6, n_items=9)
    c = x.compact()
    assert c.shape == (2, 3) and c.users.tolist() == [1, 0, 1] and c.items.tolist() == [0, 2, 1]
    assert c.original_users(c.users).tolist() == [4, 1, 4] and c.original_items(c.items).tolist() == [0, 7, 3]
    assert c.user_index(4) == 1
    y = Interactions.from_ids(["a", "b"], ["p", "q"]).subset(np.array([False, True])).compact()
    assert y.user_ids.tolist() == ["b"] and y.item_ids.tolist() == ["q"] and y.shape == (1, 1)


def test_pickle_round_trip():
    x = Interactions.from_ids(["a", "b"], [3, 4], [1.0, 2.0], [5, 6])
    x.user_index("a")  # fills the look-up cache
    y = pickle.loads(pickle.dumps(x))
    assert y.users.tolist() == x.users.tolist() and y.user_ids.tolist() == ["a", "b"]
    assert y.ratings.tolist() == [1.0, 2.0] and y.timestamps.tolist() == [5, 6] and y.user_index("b") == 1


# -- filters -----------------------------------------------------------------------------------
@SETTINGS
@given(events(), st.booleans())
def test_drop_duplicates_matches_reference(x, with_ts):
    if not with_ts:
        x = Interactions(x.users, x.items, n_users=x.n_users, n_items=x.n_items)
    d = x.drop_duplicates()
    kept = _drop_duplicates_ref(x)
    assert d.shape == x.shape
    assert d.users.tolist() == x.users[kept].tolist() and d.items.tolist() == x.items[kept].tolist()
    if with_ts:
        assert d.timestamps.tolist() == x.timestamps[kept].tolist()
    assert len(set(zip(d.users.tolist(), d.items.tolist()))) == len(d)


def test_drop_duplicates_named_cases():
    x = Interactions([0, 0, 0, 1], [1, 1, 1, 1], ratings=[1, 2, 3, 4], timestamps=[5, 9, 9, 1])
    d = x.drop_duplicates()
    assert d.ratings.tolist() == [3, 4]  # latest time 9, tie -> the last occurrence
    assert Interactions([0, 0], [1, 1], ratings=[1, 2]).drop_duplicates().ratings.tolist() == [2]
    assert len(Interactions([], []).drop_duplicates()) == 0
    big = Interactions([2**40, 0], [2**40, 0], n_users=2**40 + 1, n_items=2**40 + 1)  # pair keys overflow
    assert len(Interactions.concat([big, big]).drop_duplicates()) == 2


def test_binarize():
    x = Interactions([0, 0, 1, 2], [0, 1, 0, 1], ratings=[5, 2, 4, 3.5], timestamps=[1, 2, 3, 4])
    b = x.binarize(3.5)
    assert b.ratings is None and b.timestamps.tolist() == [1, 3, 4] and b.shape == x.shape
    assert x.ratings is not None  # the input is unchanged
    assert len(x.binarize(6)) == 0
    with pytest.raises(ValueError, match="binarize: these interactions have no ratings"):
        Interactions([0], [0]).binarize(1)
    with pytest.raises(ValueError, match="threshold is NaN"):
        x.binarize(float("nan"))
    with pytest.raises(TypeError, match="threshold must be a number, got 'high'"):
        x.binarize("high")


@SETTINGS
@given(events(max_users=10, max_items=10, max_n=90), st.integers(0, 4), st.integers(0, 4))
def test_k_core_is_the_maximal_fixed_point(x, uk, ik):
    c = x.k_core(uk, ik)
    # Every remaining user and item has enough events ...
    assert (c.user_counts() >= uk).all() and (c.item_counts() >= ik).all()
    assert (c.user_counts() > 0).all() and (c.item_counts() > 0).all()  # compacted
    # ... and nothing more was removed than the one-at-a-time reference removes.
    keep = sorted(_k_core_ref(x.users.tolist(), x.items.tolist(), uk, ik))
    assert c.original_users(c.users).tolist() == x.users[keep].tolist()
    assert c.original_items(c.items).tolist() == x.items[keep].tolist()
    assert c.timestamps.tolist() == x.timestamps[keep].tolist()
    assert c.k_core(uk, ik).users.tolist() == c.users.tolist()  # a fixed point
    if uk == ik:
        assert x.k_core(uk).users.tolist() == c.users.tolist()


def test_k_core_named_cases():
    x = Interactions.from_ids(["a", "a", "b", "b", "c"], ["p", "q", "p", "q", "r"])
    c = x.k_core(2)
    assert c.user_ids.tolist() == ["a", "b"] and c.item_ids.tolist() == ["p", "q"] and len(c) == 4
    # A chain that unravels over several rounds.
    chain = Interactions([0, 0, 1, 1, 2], [0, 1, 1, 2, 2])
    assert len(chain.k_core(2)) == 0 and chain.k_core(2).shape == (0, 0)
    assert len(chain.k_core(0)) == 5 and chain.k_core(1).shape == (3, 3)
    for bad in (-1, 1.5, True, None):
        with pytest.raises(ValueError, match="k_core: user_k must be a non-negative int"):
            chain.k_core(bad)
    with pytest.raises(ValueError, match="k_core: item_k must be a non-negative int, got -2"):
        chain.k_core(1, -2)


# -- synthetic ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gowalla_like() -> Interactions:
    return synthetic(seed=0)


def test_synthetic_default_shape_is_gowalla(gowalla_like):
    x = gowalla_like
    assert (x.n_users, x.n_items, len(x)) == GOWALLA_SHAPE
    assert (x.user_counts() >= 1).all()
    assert x.timestamps is not None and x.ratings is None


def test_synthetic_pairs_are_unique_and_skewed(gowalla_like):
    x = gowalla_like
    keys = x.users * x.n_items + x.items
    assert np.unique(keys).size == len(x)
    counts = np.sort(x.item_counts())[::-1]
    top = counts[: x.n_items // 100].sum() / counts.sum()
    assert top > 0.2, top  # the top 1% of items hold over 20% of events (uniform: 1%)
    users = np.sort(x.user_counts())[::-1]
    assert users[: x.n_users // 100].sum() / users.sum() > 0.03  # active users are skewed too


@pytest.mark.parametrize("args", [(50, 40, 300), (10, 10, 90), (5, 3, 15), (7, 9, 0)])
def test_synthetic_deterministic_per_seed(args):
    a, b, c = (synthetic(*args, seed=s, min_user_interactions=0) for s in (3, 3, 4))
    assert len(a) == args[2] and a.shape == args[:2]
    assert np.unique(a.users * a.n_items + a.items).size == len(a)
    assert np.array_equal(a.users, b.users) and np.array_equal(a.items, b.items)
    assert np.array_equal(a.timestamps, b.timestamps)
    if 0 < args[2] < args[0] * args[1]:
        assert not (np.array_equal(a.users, c.users) and np.array_equal(a.items, c.items))


def test_synthetic_min_user_interactions():
    x = synthetic(100, 30, 600, min_user_interactions=3, seed=1)  # first draws collide: drawn again
    assert (x.user_counts() >= 3).all() and len(x) == 600
    y = synthetic(20, 10, 190, min_user_interactions=9, popularity_exponent=3.0, seed=1)  # near-full rows
    assert (y.user_counts() >= 9).all() and len(y) == 190
    assert np.unique(y.users * 10 + y.items).size == 190


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((0, 5, 1), {}, "n_users and n_items must be positive"),
        ((5, -1, 1), {}, "n_users and n_items must be positive"),
        ((2, 2, 5), {}, r"n_interactions must be in \[0, n_users \* n_items = 4\], got 5"),
        ((2, 2, -1), {}, "n_interactions must be in"),
        ((10, 10, 5), {"min_user_interactions": 1}, "min_user_interactions=1 needs 10 interactions"),
    ],
)
def test_synthetic_errors(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        synthetic(*args, **kwargs)


def test_synthetic_feeds_to_csr():
    m = synthetic(30, 20, 200, seed=0).to_csr()
    assert isinstance(m, recfast.CSR) and m.shape == (30, 20) and m.nnz == 200
