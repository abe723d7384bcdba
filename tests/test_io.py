"""recfast.data loaders: CSV, RecBole atomic files, adjacency lists, split folders, pandas, scipy."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import recfast
from recfast.data import (
    Interactions,
    from_pandas,
    from_scipy,
    load_adjacency_list,
    load_atomic,
    load_atomic_features,
    load_csv,
    load_split_dataset,
)
from recfast.data import io as rio


def _write(path: Path, text: str, *, newline: str = "\n") -> Path:
    path.write_bytes(text.replace("\n", newline).encode("utf-8"))
    return path


@pytest.fixture
def small_chunks(monkeypatch):
    """Read a few characters at a time so every file spans many chunks."""
    monkeypatch.setattr(rio, "_CHUNK_CHARS", 7)


# -- the shared datasets -----------------------------------------------------------------------
@pytest.mark.data
def test_ml100k_inter(data_dir):
    x = load_atomic(data_dir / "ml-100k" / "ml-100k.inter")
    assert (len(x), x.n_users, x.n_items) == (100_000, 943, 1_682)
    assert x.ratings.dtype == np.float32 and set(np.unique(x.ratings).tolist()) == {1, 2, 3, 4, 5}
    assert x.timestamps.dtype == np.int64 and x.timestamps[0] == 881250949
    assert sorted(x.user_ids.tolist()) == list(range(1, 944))
    assert sorted(x.item_ids.tolist()) == list(range(1, 1683))
    assert x.user_index(196) == 0 and x.item_index(242) == 0  # the first line, first-appearance order
    assert x.to_csr().nnz == 100_000  # no repeated pairs
    s = load_atomic(data_dir / "ml-100k" / "ml-100k.inter", id_order="sorted")
    assert s.user_ids.tolist() == list(range(1, 944)) and s.user_index(196) == 195


@pytest.mark.data
def test_ml100k_side_features(data_dir):
    x = load_atomic(data_dir / "ml-100k" / "ml-100k.inter")
    items = load_atomic_features(data_dir / "ml-100k" / "ml-100k.item")
    assert list(items) == ["item_id", "movie_title", "release_year", "class"]
    assert all(len(v) == 1_682 for v in items.values())
    assert items["item_id"].dtype == np.int64 and items["item_id"][:3].tolist() == [1, 2, 3]
    assert items["movie_title"][0] == ["Toy", "Story"]
    assert items["class"][0] == ["Animation", "Children's", "Comedy"]
    assert items["release_year"].dtype.kind == "U" and items["release_year"][0] == "1995"  # "unkonwn" occurs
    assert sorted(x.item_index(items["item_id"]).tolist()) == list(range(1_682))
    users = load_atomic_features(data_dir / "ml-100k" / "ml-100k.user")
    assert list(users) == ["user_id", "age", "gender", "occupation", "zip_code"]
    assert len(users["user_id"]) == 943 and users["age"][:2].tolist() == [24, 53]
    assert users["gender"][:2].tolist() == ["M", "F"] and users["zip_code"].dtype.kind == "U"


@pytest.mark.data
@pytest.mark.parametrize(
    "name, n_users, n_items, sizes",
    [("ml-1m", 6_039, 3_628, (590_733, 80_897, 164_848)), ("lastfm", 1_885, 17_388, (64_315, 9_143, 18_321))],
)
def test_split_folders(data_dir, name, n_users, n_items, sizes):
    parts = load_split_dataset(data_dir / name)
    assert tuple(len(p) for p in parts) == sizes
    for p in parts:
        assert p.shape == (n_users, n_items) and p.user_ids is None and p.ratings is None
    keys = [set((p.users * n_items + p.items).tolist()) for p in parts]
    assert sum(len(k) for k in keys) == sum(sizes)  # no repeated pairs ...
    assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])  # ... and disjoint parts
    assert (parts[0].user_counts() > 0).all()
    train = load_adjacency_list(data_dir / name / "train.txt", n_items=n_items)
    assert np.array_equal(train.users, parts[0].users) and np.array_equal(train.items, parts[0].items)


# -- load_csv ----------------------------------------------------------------------------------
@pytest.mark.parametrize("sep", [",", "\t", "::", "|", ";", None])
@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_load_csv_separators(tmp_path, sep, newline):
    s = sep if sep is not None else "  \t "
    text = f"user_id{s}item_id{s}rating{s}ts\n" + "".join(
        f"{u}{s}{i}{s}{r}{s}{t}\n" for u, i, r, t in [("u1", 10, 4.5, 100), ("u2", 10, 3, 50), ("u1", 7, 1, 75)])
    f = _write(tmp_path / "r.csv", text, newline=newline)
    x = load_csv(f, sep=sep, rating_col="rating", timestamp_col="ts")
    assert x.users.tolist() == [0, 1, 0] and x.user_ids.tolist() == ["u1", "u2"]
    assert x.items.tolist() == [0, 0, 1] and x.item_ids.tolist() == [10, 7] and x.item_ids.dtype == np.int64
    assert x.ratings.tolist() == [4.5, 3.0, 1.0] and x.timestamps.tolist() == [100, 50, 75]
    assert x.timestamps.dtype == np.int64


def test_load_csv_positions_names_and_options(tmp_path):
    f = _write(tmp_path / "r.dat", "# comment\n\n7::007::5::1.5\n   \n8::9::3::2\n# another\n")
    x = load_csv(f, sep="::", header=False, user_col=0, item_col=-3, rating_col=2, timestamp_col=-1, comment="#")
    assert x.user_ids.tolist() == [7, 8] and x.item_ids.tolist() == [7, 9]  # "007" parses as 7
    assert x.timestamps.dtype == np.float64 and x.timestamps.tolist() == [1.5, 2.0]
    s = load_csv(f, sep="::", header=False, names=["u", "i", "r", "t"], user_col="u", item_col="i",
                 comment="#", id_type="str")
    assert s.item_ids.tolist() == ["007", "9"] and s.ratings is None and s.timestamps is None
    o = load_csv(f, sep="::", header=False, user_col=1, item_col=0, comment="#", id_order="sorted")
    assert o.user_ids.tolist() == [7, 9] and o.item_ids.tolist() == [7, 8]
    h = _write(tmp_path / "h.csv", "a,b\n1,2\n")
    r = load_csv(h, names=["user_id", "item_id"])  # names replace the file's header
    assert r.user_ids.tolist() == [1] and len(r) == 1


def test_load_csv_bom_gzip_and_no_trailing_newline(tmp_path):
    text = "\ufeffuser_id,item_id\nä,1\nb,2"
    x = load_csv(_write(tmp_path / "r.csv", text))
    assert x.user_ids.tolist() == ["ä", "b"]
    g = tmp_path / "r.csv.gz"
    with gzip.open(g, "wt", encoding="utf-8") as fh:
        fh.write(text)
    assert load_csv(g).user_ids.tolist() == ["ä", "b"]


def test_load_csv_empty_files(tmp_path):
    x = load_csv(_write(tmp_path / "h.csv", "user_id,item_id,rating\n"), rating_col="rating")
    assert len(x) == 0 and x.shape == (0, 0) and x.ratings.tolist() == []
    y = load_csv(_write(tmp_path / "e.csv", "\n\n"), header=False, user_col=0, item_col=1)
    assert len(y) == 0
    with pytest.raises(ValueError, match=r"load_csv: .*e.csv is empty, expected a header line"):
        load_csv(tmp_path / "e.csv")


@pytest.mark.usefixtures("small_chunks")
@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_load_csv_across_chunks(tmp_path, newline):
    rows = [(f"{u}", f"{i}", f"{u * i % 5}") for u in range(12) for i in range(3)]
    f = _write(tmp_path / "r.csv", "user_id,item_id,rating\n" + "".join(",".join(r) + "\n" for r in rows),
               newline=newline)
    x = load_csv(f, rating_col=2)
    assert len(x) == 36 and x.user_ids.tolist() == list(range(12)) and x.user_ids.dtype == np.int64
    assert x.ratings.tolist() == [float(r[2]) for r in rows]
    # Integer ids in early chunks and a string id later: the column is read again as strings.
    g = _write(tmp_path / "mixed.csv", "user_id,item_id\n" + "".join(f"00{k},{k}\n" for k in range(9)) + "zz,1\n")
    m = load_csv(g)
    assert m.user_ids.tolist() == [f"00{k}" for k in range(9)] + ["zz"] and m.item_ids.dtype == np.int64
    with pytest.raises(ValueError, match=r"mixed.csv, line 11: user id 'zz' is not an integer"):
        load_csv(g, id_type="int")
    bad = _write(tmp_path / "bad.csv", "user_id,item_id\n" + "1,2\n" * 20 + "1,2,3\n")
    with pytest.raises(ValueError, match=r"bad.csv, line 22: expected 2 fields separated by ',', got 3"):
        load_csv(bad)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(st.tuples(st.sampled_from(["a", "b", "c", "10", "-3", "x y"]), st.integers(-5, 5),
                            st.floats(-1e3, 1e3, allow_nan=False).map(lambda v: round(v, 2))), max_size=40),
    sep=st.sampled_from([",", "\t", "::"]),
    chunk=st.sampled_from([5, 64, 1 << 20]),
)
def test_load_csv_round_trip(tmp_path_factory, monkeypatch, rows, sep, chunk):
    monkeypatch.setattr(rio, "_CHUNK_CHARS", chunk)
    f = tmp_path_factory.mktemp("csv") / "r.csv"
    _write(f, f"u{sep}i{sep}r\n" + "".join(f"{u}{sep}{i}{sep}{r}\n" for u, i, r in rows))
    x = load_csv(f, sep=sep, user_col="u", item_col="i", rating_col="r", id_type="str")
    assert len(x) == len(rows)
    assert x.original_users(x.users).tolist() == [r[0] for r in rows]
    assert x.original_items(x.items).tolist() == [str(r[1]) for r in rows]
    np.testing.assert_allclose(x.ratings, np.array([r[2] for r in rows], dtype=np.float32))
    a = load_csv(f, sep=sep, user_col="u", item_col="i")  # auto: item ids are all integers
    assert a.original_items(a.items).tolist() == [r[1] for r in rows]


@pytest.mark.parametrize(
    "text, kwargs, exc, match",
    [
        ("user_id,item_id\n1,2\n3\n", {}, ValueError, r"r.csv, line 3: expected 2 fields separated by ',', got 1"),
        ("user_id,item_id\n1,2\n\n3,4,5\n", {}, ValueError, r"line 4: expected 2 fields .* got 3"),
        ("user_id item_id\n1 2\n3 4 5\n", {"sep": None}, ValueError, "line 3: expected 2 fields separated by whitespace"),
        ("user_id,item_id,rating\n1,2,x\n", {"rating_col": "rating"}, ValueError, r"line 2: rating 'x' is not a number"),
        ("user_id,item_id,t\n1,2,5\n1,2,\n", {"timestamp_col": "t"}, ValueError, r"line 3: timestamp '' is not a number"),
        ("user_id,item_id\n1,2\n,3\n", {}, ValueError, r"line 3: user id is empty"),
        ("user_id,item_id\na,2\n", {"id_type": "int"}, ValueError, r"line 2: user id 'a' is not an integer"),
        ("u,i\n1,2\n", {}, ValueError, r"column 'user_id' \(user_col\) not found in .*r.csv; columns present: \['u', 'i'\]"),
        ("user_id,i\n1,2\n", {}, ValueError, r"column 'item_id' \(item_col\) not found .* columns present: \['user_id', 'i'\]"),
        ("user_id,item_id\n1,2\n", {"rating_col": "stars"}, ValueError, r"column 'stars' \(rating_col\) not found"),
        ("user_id,item_id\n1,2\n", {"timestamp_col": 5}, ValueError,
         r"column position 5 \(timestamp_col\) out of range in .*; columns present"),
        ("1,2\n", {"header": False}, ValueError, r"user_col='user_id' names a column, but .* without a header"),
        ("1,2\n", {"header": False, "user_col": 0, "item_col": 2}, ValueError, "its lines have 2 fields"),
        ("1,2\n", {"header": False, "names": ["a"], "user_col": 0, "item_col": 1}, ValueError,
         "names has 1 entries but the lines of .* have 2 fields"),
        ("user_id,item_id\n1,2\n", {"item_col": "user_id"}, ValueError, "item_col and user_col both name column 0"),
        ("user_id,item_id\n1,2\n", {"user_col": 1.0}, TypeError, "user_col must be a column name or position"),
        ("user_id,item_id\n1,2\n", {"user_col": None}, ValueError, "user_col is required"),
        ("user_id,item_id\n1,2\n", {"sep": ""}, ValueError, "sep must be a non-empty string"),
        ("user_id,item_id\n1,2\n", {"sep": "\n"}, ValueError, "sep must be a non-empty string without newlines"),
        ("user_id,item_id\n1,2\n", {"comment": ""}, ValueError, "comment must be a non-empty string"),
        ("user_id,item_id\n1,2\n", {"id_type": "float"}, ValueError, r"id_type must be one of \('auto', 'int', 'str'\)"),
        ("user_id,item_id\n1,2\n", {"id_order": "random"}, ValueError, "id_order must be one of"),
    ],
)
def test_load_csv_errors(tmp_path, text, kwargs, exc, match):
    f = _write(tmp_path / "r.csv", text)
    with pytest.raises(exc, match=match):
        load_csv(f, **kwargs)


def test_missing_files_and_folders(tmp_path):
    missing = tmp_path / "nope.csv"
    for fn in (load_csv, load_atomic, load_atomic_features, load_adjacency_list):
        with pytest.raises(FileNotFoundError, match=rf"{fn.__name__}: file not found: '.*nope.csv'") as e:
            fn(missing)
        assert e.value.filename == str(missing)
        with pytest.raises(IsADirectoryError, match="is a directory, expected a file"):
            fn(tmp_path)
        with pytest.raises(TypeError, match="path must be a str or os.PathLike, got int"):
            fn(3)
    with pytest.raises(FileNotFoundError, match=r"load_split_dataset: folder not found: '.*nope.csv'"):
        load_split_dataset(missing)


# -- RecBole atomic files -------------------------------------------------------------------------
INTER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\treview:token_seq\n"


def test_load_atomic_fields(tmp_path):
    f = _write(tmp_path / "x.inter", INTER + "u1\t5\t4\t1e9\tgood film\nu2\t6\t2.5\t7\t\n")
    x = load_atomic(f)
    assert x.user_ids.tolist() == ["u1", "u2"] and x.item_ids.tolist() == [5, 6]
    assert x.ratings.tolist() == [4.0, 2.5] and x.timestamps.dtype == np.float64
    assert x.timestamps.tolist() == [1e9, 7.0]
    bare = load_atomic(_write(tmp_path / "y.inter", "item_id:token\tuser_id:token\na\tb\n"))
    assert bare.ratings is None and bare.timestamps is None and bare.user_ids.tolist() == ["b"]
    r = load_atomic(f, rating_field=None, timestamp_field=None, id_type="str", id_order="sorted")
    assert r.ratings is None and r.item_ids.tolist() == ["5", "6"]
    alt = _write(tmp_path / "z.inter", "uid:token\tiid:token\tscore:float\n1\t2\t3\n")
    a = load_atomic(alt, user_field="uid", item_field="iid", rating_field="score")
    assert a.ratings.tolist() == [3.0] and a.user_ids.tolist() == [1]


@pytest.mark.parametrize(
    "text, kwargs, match",
    [
        ("user_id:token\titem\n1\t2\n", {}, r"x.inter, line 1: header field 'item' is not of the form name:type"),
        ("user_id:token\titem_id:int\n1\t2\n", {}, r"line 1: header field 'item_id:int' has unknown type 'int'"),
        ("user_id:token\tuser_id:float\n1\t2\n", {}, "line 1: header names column 'user_id' twice"),
        ("user_id:token\trating:float\n1\t2\n", {}, r"column 'item_id' \(item_field\) not found in .*x.inter; "
                                                    r"columns present: \['user_id:token', 'rating:float'\]"),
        ("user_id:float\titem_id:token\n1\t2\n", {}, "column 'user_id' of .* has type float, expected token"),
        ("user_id:token\titem_id:token\trating:token\n1\t2\tgood\n", {}, "column 'rating' .* has type token, expected float"),
        ("user_id:token\titem_id:token\n1\t2\n", {"rating_field": "stars"}, r"column 'stars' \(rating_field\) not found"),
        (INTER + "1\t2\t3\t4\tok\n1\t2\t3\n", {}, "line 3: expected 5 fields separated by '\\\\t', got 3"),
        (INTER + "1\t2\tgreat\t4\t\n", {}, r"line 2: rating 'great' is not a number"),
        ("", {}, "is empty, expected a header line"),
    ],
)
def test_load_atomic_errors(tmp_path, text, kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_atomic(_write(tmp_path / "x.inter", text), **kwargs)


def test_load_atomic_features_types(tmp_path):
    text = ("item_id:token\ttags:token_seq\tprice:float\temb:float_seq\tcode:token\n"
            "1\ta b  c\t9.5\t0.5 1\tx1\n"
            "2\t\t3\t\t\n")
    f = _write(tmp_path / "x.item", text)
    feats = load_atomic_features(f)
    assert list(feats) == ["item_id", "tags", "price", "emb", "code"]
    assert feats["item_id"].dtype == np.int64 and feats["item_id"].tolist() == [1, 2]
    assert feats["tags"].dtype == object and feats["tags"].tolist() == [["a", "b", "c"], []]
    assert feats["price"].dtype == np.float64 and feats["price"].tolist() == [9.5, 3.0]
    assert feats["emb"][0].tolist() == [0.5, 1.0] and feats["emb"][1].tolist() == []
    assert feats["code"].tolist() == ["x1", ""]  # an empty token is allowed in side features
    assert load_atomic_features(f, token_type="str")["item_id"].tolist() == ["1", "2"]
    empty = load_atomic_features(_write(tmp_path / "e.item", "item_id:token\tt:token_seq\n"))
    assert empty["item_id"].size == 0 and empty["t"].size == 0
    with pytest.raises(ValueError, match=r"x.item, line 3: emb 'a' is not a space-separated list of numbers"):
        load_atomic_features(_write(tmp_path / "x.item", "emb:float_seq\n1 2\na\n"))
    with pytest.raises(ValueError, match=r"line 2: price 'cheap' is not a number"):
        load_atomic_features(_write(tmp_path / "x.item", "price:float\ncheap\n"))
    with pytest.raises(ValueError, match="token_type must be one of"):
        load_atomic_features(f, token_type="int")


# -- adjacency lists and split folders ---------------------------------------------------------
def test_load_adjacency_list(tmp_path):
    f = _write(tmp_path / "train.txt", "0 1 2\n\n3\n1\t4   0 \n0 7\n")
    x = load_adjacency_list(f)
    assert x.users.tolist() == [0, 0, 1, 1, 0] and x.items.tolist() == [1, 2, 4, 0, 7]
    assert x.shape == (4, 8)  # user 3 has a line and no items
    assert load_adjacency_list(f, n_users=10, n_items=9).shape == (10, 9)
    assert len(load_adjacency_list(_write(tmp_path / "e.txt", ""))) == 0
    with pytest.raises(ValueError, match="n_items=5 but .*train.txt holds item id 7"):
        load_adjacency_list(f, n_items=5)
    with pytest.raises(ValueError, match="n_users=3 but .* holds user id 3"):
        load_adjacency_list(f, n_users=3)
    with pytest.raises(ValueError, match="n_items must be a non-negative int or None, got -1"):
        load_adjacency_list(f, n_items=-1)


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize(
    "text, match",
    [
        ("0 1\n1 2 x\n", r"a.txt, line 2: 'x' is not a non-negative integer id"),
        ("0 1\n\n1 -2\n", r"line 3: '-2' is not a non-negative integer id"),
        ("0 1\n1.5 2\n", r"line 2: '1.5' is not"),
        ("0 1\n" * 6 + "1 99999999999999999999\n", r"line 7: '99999999999999999999' is not"),
    ],
)
def test_load_adjacency_list_errors(tmp_path, monkeypatch, chunked, text, match):
    if chunked:
        monkeypatch.setattr(rio, "_CHUNK_CHARS", 3)
    with pytest.raises(ValueError, match=match):
        load_adjacency_list(_write(tmp_path / "a.txt", text))


def test_load_split_dataset(tmp_path):
    _write(tmp_path / "train.txt", "0 1 2\n1 0\n")
    _write(tmp_path / "valid.txt", "0 5\n")
    _write(tmp_path / "test.txt", "3 4\n2\n")
    train, valid, test = load_split_dataset(tmp_path)
    assert train.shape == valid.shape == test.shape == (4, 6)
    assert valid.items.tolist() == [5] and test.users.tolist() == [3]
    (tmp_path / "valid.txt").unlink()
    train, valid, test = load_split_dataset(str(tmp_path))
    assert valid is None and train.shape == test.shape == (4, 5)
    _write(tmp_path / "tr.txt", "0 1\n")
    _write(tmp_path / "te.txt", "1 0\n")
    tr, va, te = load_split_dataset(tmp_path, files=("tr.txt", "va.txt", "te.txt"))
    assert va is None and tr.shape == (2, 2)
    (tmp_path / "test.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"load_split_dataset: file not found: '.*test.txt'"):
        load_split_dataset(tmp_path)
    with pytest.raises(NotADirectoryError, match="is not a folder"):
        load_split_dataset(tmp_path / "tr.txt")
    with pytest.raises(ValueError, match="files must name the train, valid and test files"):
        load_split_dataset(tmp_path, files=("tr.txt", "te.txt"))
    with pytest.raises(TypeError, match="folder must be a str or os.PathLike"):
        load_split_dataset(None)


# -- pandas ------------------------------------------------------------------------------------
def test_from_pandas():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"user": ["b", "a", "b"], "item": [3, 1, 3], "stars": [1.0, 2.0, 3.0],
                       "when": pd.to_datetime(["2020-01-01", "2020-01-03", "2020-01-02"])})
    x = from_pandas(df, "user", "item", rating_col="stars", timestamp_col="when")
    assert x.users.tolist() == [0, 1, 0] and x.user_ids.tolist() == ["b", "a"] and x.item_ids.tolist() == [3, 1]
    assert x.ratings.tolist() == [1.0, 2.0, 3.0] and x.timestamps.dtype.kind == "M"
    assert x.drop_duplicates().ratings.tolist() == [2.0, 3.0]  # latest of the repeated pair
    s = from_pandas(df, "user", "item", id_order="sorted")
    assert s.user_ids.tolist() == ["a", "b"] and s.ratings is None
    tz = df.assign(when=df["when"].dt.tz_localize("Europe/Paris"))
    t = from_pandas(tz, "user", "item", timestamp_col="when")
    assert t.timestamps.dtype.kind == "M" and str(t.timestamps[0]).startswith("2019-12-31T23:00")
    cat = df.assign(user=df["user"].astype("category"))
    assert from_pandas(cat, "user", "item").user_ids.tolist() == ["b", "a"]
    d = pd.DataFrame({"user_id": [1, 2], "item_id": [5, 6]})
    assert from_pandas(d).shape == (2, 2)


def test_from_pandas_errors():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"user": ["b", None], "item": [3, 1]})
    with pytest.raises(ValueError, match=r"column 'user_id' \(user_col\) not found; columns present: \['user', 'item'\]"):
        from_pandas(df)
    with pytest.raises(ValueError, match=r"column 'r' \(rating_col\) not found"):
        from_pandas(df, "item", "item", rating_col="r")
    with pytest.raises(ValueError, match=r"column 'user' \(user_col\) has 1 missing values"):
        from_pandas(df, "user", "item")
    with pytest.raises(TypeError, match="expected a pandas DataFrame, got list"):
        from_pandas([1, 2])
    with pytest.raises(ValueError, match="item_col is required"):
        from_pandas(df, "item", None)
    with pytest.raises(TypeError, match="timestamps must be numeric or datetime64"):
        from_pandas(df.assign(t=["x", "y"]), "item", "item", timestamp_col="t")


# -- scipy and CSR -----------------------------------------------------------------------------
def test_from_scipy():
    m = sp.coo_matrix((np.array([2.0, 1.0, 3.0, 0.0]), (np.array([1, 0, 1, 0]), np.array([2, 1, 2, 0]))),
                      shape=(3, 4))
    x = from_scipy(m)
    assert x.shape == (3, 4) and x.user_ids is None
    assert x.users.tolist() == [0, 0, 1] and x.items.tolist() == [0, 1, 2]
    assert x.ratings.tolist() == [0.0, 1.0, 5.0]  # the explicit zero stays; duplicates are summed
    assert m.row.tolist() == [1, 0, 1, 0]  # the input is untouched
    assert from_scipy(m.tocsc(), values=None).ratings is None
    c = from_scipy(recfast.CSR.from_scipy(m))
    assert c.items.tolist() == [0, 1, 2] and c.ratings.tolist() == [0.0, 1.0, 5.0]
    b = from_scipy(recfast.CSR.from_scipy(m, binary=True))
    assert b.ratings is None and b.to_csr().shape == (3, 4)
    back = x.to_csr(values="ratings").to_scipy()
    assert (back != m.tocsr()).nnz == 0
    assert len(from_scipy(sp.csr_matrix((0, 5)))) == 0
    with pytest.raises(TypeError, match="expected a scipy sparse matrix or recfast.CSR, got ndarray"):
        from_scipy(np.eye(2))
    with pytest.raises(ValueError, match="values must be 'ratings' or None, got 'binary'"):
        from_scipy(m, values="binary")
    with pytest.raises(TypeError, match="matrix values must be real numbers, got dtype complex128"):
        from_scipy(sp.csr_matrix(np.array([[1j]])))


def test_loaders_produce_interactions(tmp_path):
    f = _write(tmp_path / "r.csv", "user_id,item_id\n1,2\n")
    assert isinstance(load_csv(f), Interactions)
    assert torch.equal(load_csv(f).to_csr().indptr, torch.tensor([0, 1]))
