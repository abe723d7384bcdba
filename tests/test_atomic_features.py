"""recfast.data.atomic_feature_matrix: dense side features from RecBole atomic feature files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import recfast
from recfast.data import atomic_feature_matrix, load_atomic_features

ITEMS = ("item_id:token\tyear:token\tscore:float\tgenre:token_seq\tkind:token\n"
         "10\t1990\t1.5\tAction Comedy\tmovie\n"
         "20\tunkonwn\t2.5\tDrama\tshow\n"
         "30\t2000\t3.0\tComedy\tmovie\n"
         "40\t1995\t4.0\t\tmovie\n")


@pytest.fixture
def item_file(tmp_path: Path) -> Path:
    p = tmp_path / "x.item"
    p.write_text(ITEMS, encoding="utf-8")
    return p


def _z(x: np.ndarray) -> np.ndarray:
    return ((x - x.mean()) / x.std()).astype(np.float32)


def test_multi_hot_then_numeric_in_order(item_file: Path) -> None:
    m = atomic_feature_matrix(item_file, [30, 10, 20, 40], multi_hot=["genre", "kind"], numeric=["year"])
    assert m.dtype == np.float32 and m.shape == (4, 3 + 2 + 1)
    # vocabularies sorted: genre (Action, Comedy, Drama), kind (movie, show)
    np.testing.assert_array_equal(m[:, :5], [[0, 1, 0, 1, 0], [1, 1, 0, 1, 0], [0, 0, 1, 0, 1], [0, 0, 0, 1, 0]])
    years = np.array([2000, 1990, np.nan, 1995])
    years[2] = np.nanmean(years)  # "unkonwn": the mean of the rows' known years
    np.testing.assert_allclose(m[:, 5], _z(years), rtol=1e-6)


def test_ids_absent_from_file_and_float_columns(item_file: Path) -> None:
    m = atomic_feature_matrix(item_file, [10, 99, 30], multi_hot=["genre"], numeric=["score"])
    np.testing.assert_array_equal(m[1, :3], 0)  # id 99: no genre, the means
    np.testing.assert_allclose(m[:, 3], _z(np.array([1.5, 2.25, 3.0])), rtol=1e-6)  # id 99's score: the mean


def test_accepts_loaded_columns_and_string_ids(item_file: Path) -> None:
    cols = load_atomic_features(item_file, token_type="str")
    m = atomic_feature_matrix(cols, np.array(["20", "10"]), multi_hot=["genre"])
    np.testing.assert_array_equal(m, [[0, 0, 1], [1, 1, 0]])
    assert atomic_feature_matrix(cols, ["10"]).shape == (1, 0)


def test_constant_numeric_column_is_zero(tmp_path: Path) -> None:
    p = tmp_path / "c.item"
    p.write_text("item_id:token\tx:float\n1\t3\n2\t3\n", encoding="utf-8")
    np.testing.assert_array_equal(atomic_feature_matrix(p, [1, 2], numeric=["x"]), [[0], [0]])


def test_errors(item_file: Path) -> None:
    with pytest.raises(ValueError, match=r"atomic_feature_matrix: multi_hot names column 'genres', not among"):
        atomic_feature_matrix(item_file, [10], multi_hot=["genres"])
    with pytest.raises(ValueError, match=r"atomic_feature_matrix: id_field names column 'user_id'"):
        atomic_feature_matrix(item_file, [10], id_field="user_id")
    with pytest.raises(ValueError, match=r"numeric field 'genre' is a sequence column"):
        atomic_feature_matrix(item_file, [10], numeric=["genre"])


def test_ml100k_genres(data_dir: Path) -> None:
    x = recfast.data.load_atomic(data_dir / "ml-100k" / "ml-100k.inter")
    m = atomic_feature_matrix(data_dir / "ml-100k" / "ml-100k.item", x.item_ids, multi_hot=["class"],
                              numeric=["release_year"])
    assert m.shape == (x.n_items, 20) and m[:, :-1].sum(1).min() >= 1  # 19 genres; every movie has one
    assert abs(float(m[:, -1].mean())) < 1e-5 and float(m[:, -1].std()) == pytest.approx(1.0, abs=1e-4)
