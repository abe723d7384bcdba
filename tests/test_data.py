"""Interactions (id maps, filters), the loaders of files and frames, splits, synthetic data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import recfast
from recfast.data import (Interactions, from_pandas, from_scipy, leave_one_out, load_adjacency_list, load_atomic,
                          load_atomic_features, load_csv, load_split_dataset, random_split, stratified_split, synthetic,
                          temporal_split)


# -- Interactions -------------------------------------------------------------------------------

def test_id_maps_round_trip() -> None:
    x = Interactions.from_ids(["b", "a", "c", "b"], [30, 10, 20, 10])
    assert x.n_users == 3 and x.n_items == 3
    assert x.original_users(x.users).tolist() == ["b", "a", "c", "b"]
    assert x.original_items(x.items).tolist() == [30, 10, 20, 10]
    assert x.user_index(["c", "a"]).tolist() == [2, 0]
    assert x.item_index([20]).tolist() == [1]
    assert x.original_items([1, -1]).tolist() == [20, None]
    with pytest.raises(KeyError, match="unknown user id"):
        x.user_index(["zz"])
    with pytest.raises(KeyError, match="unknown item id"):
        x.item_index([99])


def test_filters() -> None:
    x = Interactions([0, 0, 1, 0], [1, 1, 2, 3], timestamps=[5, 2, 1, 4], ratings=[1, 5, 3, 4])
    d = x.drop_duplicates()
    assert sorted(zip(d.users, d.items, d.timestamps)) == [(0, 1, 5), (0, 3, 4), (1, 2, 1)]
    nodup = Interactions([0, 0], [1, 1], ratings=[1.0, 2.0]).drop_duplicates()
    assert nodup.ratings.tolist() == [2.0]  # without timestamps, the last occurrence
    b = x.binarize(3)
    assert b.ratings is None and sorted(zip(b.users, b.items)) == [(0, 1), (0, 3), (1, 2)]
    with pytest.raises(ValueError, match="no ratings"):
        Interactions([0], [0]).binarize(1)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10**6), k=st.integers(1, 4))
def test_k_core_reaches_a_fixed_point(seed, k) -> None:
    x = synthetic(40, 30, 300, seed=seed)
    core = x.k_core(k)
    if len(core):
        assert core.user_counts().min() >= k and core.item_counts().min() >= k
    # every original pair of the core is an original event
    orig = set(zip(x.users.tolist(), x.items.tolist()))
    assert set(zip(core.original_users(core.users).tolist(), core.original_items(core.items).tolist())) <= orig


def test_interactions_errors() -> None:
    with pytest.raises(ValueError, match="equal length"):
        Interactions([0, 1], [0])
    with pytest.raises(ValueError, match="items holds id 5, expected 0 <= id < 3"):
        Interactions([0], [5], n_items=3)
    with pytest.raises(ValueError, match="ratings has shape"):
        Interactions([0], [0], ratings=[1, 2])
    with pytest.raises(ValueError, match="values='ratings' but these interactions have no ratings"):
        Interactions([0], [0]).to_csr(values="ratings")


# -- synthetic ----------------------------------------------------------------------------------

def test_synthetic_shape_uniqueness_skew_and_determinism() -> None:
    x = synthetic(2000, 1000, 30_000, seed=3)
    assert (len(x), x.n_users, x.n_items) == (30_000, 2000, 1000)
    assert len(set(zip(x.users.tolist(), x.items.tolist()))) == 30_000
    assert x.user_counts().min() >= 1
    counts = np.sort(x.item_counts())[::-1]
    assert counts[:10].sum() > 0.05 * len(x)  # the top 1% of items hold far more than 1%
    y = synthetic(2000, 1000, 30_000, seed=3)
    assert np.array_equal(x.users, y.users) and np.array_equal(x.items, y.items)
    assert not np.array_equal(x.items, synthetic(2000, 1000, 30_000, seed=4).items)
    dense = synthetic(10, 10, 95, seed=0)
    assert len(dense) == 95
    with pytest.raises(ValueError, match="n_interactions must be in"):
        synthetic(2, 2, 5)


# -- files and frames ---------------------------------------------------------------------------

def test_load_csv_any_delimiter_and_columns(tmp_path) -> None:
    p = tmp_path / "x.tsv"
    p.write_text("uid;iid;stars;ts\nu2;a;4;100\nu1;b;5;50\n\nu2;b;1;70\n")
    x = load_csv(p, sep=";", user_col="uid", item_col="iid", rating_col="stars", timestamp_col="ts")
    assert x.n_users == 2 and x.n_items == 2 and x.ratings.tolist() == [4, 5, 1]
    assert x.original_users(x.users).tolist() == ["u2", "u1", "u2"]
    q = tmp_path / "y.csv"
    q.write_text("7,10\n3,10\n")
    y = load_csv(q, header=False, user_col=0, item_col=1)
    assert y.user_ids.tolist() == [3, 7]  # numeric ids sort numerically
    with pytest.raises(ValueError, match="no user column 'user'; columns are"):
        load_csv(p, sep=";", user_col="user")
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,item_id,r\n1,2,x\n")
    with pytest.raises(ValueError, match="bad.csv, line 2"):
        load_csv(bad, rating_col="r")
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_csv(tmp_path / "missing.csv")


def test_load_adjacency_list_and_errors(tmp_path) -> None:
    p = tmp_path / "a.txt"
    p.write_text("0 1 2\n1\n3 0\n")
    x = load_adjacency_list(p)
    assert x.n_users == 4 and x.n_items == 3 and sorted(zip(x.users, x.items)) == [(0, 1), (0, 2), (3, 0)]
    p.write_text("0 1 x\n")
    with pytest.raises(ValueError, match="a.txt, line 1: expected integer ids"):
        load_adjacency_list(p)


def test_atomic_header_errors(tmp_path) -> None:
    p = tmp_path / "x.inter"
    p.write_text("user_id\titem_id:token\n1\t2\n")
    with pytest.raises(ValueError, match="not 'name:type'"):
        load_atomic(p)
    p.write_text("user_id:token\titem_id:token\n1\t2\t3\n")
    with pytest.raises(ValueError, match="line 2: expected 2 tab-separated fields"):
        load_atomic(p)


def test_from_pandas_and_scipy() -> None:
    df = pd.DataFrame({"u": ["x", "y", "x"], "i": [1, 2, 2], "r": [1.0, 2.0, 3.0]})
    x = from_pandas(df, user_col="u", item_col="i", rating_col="r")
    assert x.n_users == 2 and x.ratings.tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="no column 'nope'"):
        from_pandas(df, user_col="nope")
    m = sp.random(5, 6, density=0.4, random_state=1, format="csr")
    y = from_scipy(m, ratings=True)
    assert (y.to_csr(values="ratings").to_scipy() != m.astype(np.float32)).nnz == 0


def test_shared_ml100k(data_dir) -> None:
    x = load_atomic(data_dir / "ml-100k" / "ml-100k.inter")
    assert (len(x), x.n_users, x.n_items) == (100_000, 943, 1_682)
    assert x.ratings.min() == 1 and x.ratings.max() == 5 and x.timestamps is not None
    items = load_atomic_features(data_dir / "ml-100k" / "ml-100k.item")
    assert len(items["item_id"]) == 1_682 and "Comedy" in items["class"][0]
    users = load_atomic_features(data_dir / "ml-100k" / "ml-100k.user")
    assert len(users["user_id"]) == 943


@pytest.mark.parametrize("name,n_users,sizes", [("ml-1m", 6_039, (590_733, 80_897, 164_848)),
                                                ("lastfm", 1_885, (64_315, 9_143, 18_321))])
def test_shared_split_datasets(data_dir, name, n_users, sizes) -> None:
    parts = load_split_dataset(data_dir / name)
    assert tuple(len(p) for p in parts) == sizes
    assert all(p.n_users == n_users and p.n_items == parts[0].n_items for p in parts)
    assert max(int(p.items.max()) for p in parts) == parts[0].n_items - 1


# -- splits -------------------------------------------------------------------------------------

def _pairs(x: Interactions) -> list[tuple[int, int]]:
    return list(zip(x.users.tolist(), x.items.tolist()))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10**6), three=st.booleans())
def test_split_invariants(seed, three) -> None:
    x = synthetic(60, 50, 700, seed=seed, min_user_interactions=2)
    ratios = (0.7, 0.1, 0.2) if three else (0.8, 0.2)
    for parts in (random_split(x, ratios, seed=seed), stratified_split(x, ratios, seed=seed),
                  temporal_split(x, ratios=ratios)):
        assert len(parts) == len(ratios)
        assert sorted(sum((_pairs(p) for p in parts), [])) == sorted(_pairs(x))  # disjoint cover
        assert all(p.n_users == x.n_users and p.n_items == x.n_items for p in parts)
    rs = random_split(x, ratios, seed=seed)
    assert abs(len(rs[0]) - ratios[0] * len(x)) <= 1
    st_parts = stratified_split(x, ratios, seed=seed)
    assert set(st_parts[0].users.tolist()) == set(range(60)) == set(st_parts[-1].users.tolist())
    assert np.array_equal(random_split(x, ratios, seed=seed)[0].items, rs[0].items)


def test_temporal_orders_and_cut() -> None:
    x = Interactions([0, 0, 0, 1, 1], [0, 1, 2, 0, 1], timestamps=[3, 1, 2, 9, 8])
    train, test = temporal_split(x, ratios=(0.5, 0.5))
    assert all(tr < te for u in (0, 1) for tr in train.timestamps[train.users == u]
               for te in test.timestamps[test.users == u])
    a, b = temporal_split(x, cut=3)
    assert sorted(b.timestamps.tolist()) == [3, 8, 9]
    with pytest.raises(ValueError, match="exactly one of"):
        temporal_split(x)


def test_leave_one_out() -> None:
    x = Interactions([0, 0, 0, 1, 2, 2], [0, 1, 2, 0, 1, 2], timestamps=[3, 9, 1, 5, 2, 2])
    train, test = leave_one_out(x)
    assert sorted(_pairs(test)) == [(0, 1), (2, 2)]  # latest; tie broken by position; user 1 keeps its only event
    train, valid, test = leave_one_out(x, validation=True)
    assert _pairs(valid) == [(0, 0)]
    r1 = leave_one_out(x, by="random", seed=1)[1]
    assert len(r1) == 2 and _pairs(r1) == _pairs(leave_one_out(x, by="random", seed=1)[1])
    with pytest.raises(ValueError, match="needs timestamps"):
        leave_one_out(Interactions([0], [0]))
    with pytest.raises(ValueError, match="ratios must be 2 or 3"):
        random_split(x, (0.5, 0.6), seed=0)
