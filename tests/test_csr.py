"""recfast.CSR: construction, validation, conversions, transpose, immutability, pickling."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import recfast
from recfast import CSR

I64 = np.int64
SETTINGS = settings(max_examples=50, deadline=None)


def _scipy_ref(rows, cols, vals, shape) -> sp.csr_matrix:
    """scipy's COO -> CSR with duplicates summed and indices sorted."""
    m = sp.coo_matrix((vals, (rows, cols)), shape=shape).tocsr()
    m.sum_duplicates()
    m.sort_indices()
    return m


def _last_ref(rows, cols, vals, shape) -> sp.csr_matrix:
    """Duplicates resolved by the last occurrence, by a plain dict."""
    last = {}
    for r, c, v in zip(rows.tolist(), cols.tolist(), vals.tolist()):
        last[(r, c)] = v
    keys = sorted(last)
    r = np.array([k[0] for k in keys], dtype=I64)
    c = np.array([k[1] for k in keys], dtype=I64)
    v = np.array([last[k] for k in keys], dtype=np.float32)
    return _scipy_ref(r, c, v, shape)


def _same(m: CSR, ref: sp.csr_matrix, *, values: bool = True) -> None:
    assert m.shape == ref.shape
    assert m.indptr.dtype == torch.int64
    np.testing.assert_array_equal(m.indptr.numpy(), ref.indptr)
    np.testing.assert_array_equal(m.indices.numpy(), ref.indices)
    if values:
        assert m.values is not None and m.values.dtype == torch.float32
        np.testing.assert_allclose(m.values.numpy(), ref.data, rtol=1e-6)


@st.composite
def coo(draw, max_dim: int = 9, max_nnz: int = 40):
    n_rows = draw(st.integers(0, max_dim))
    n_cols = draw(st.integers(0, max_dim))
    nnz = draw(st.integers(0, max_nnz)) if n_rows and n_cols else 0
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, max(n_rows, 1), nnz).astype(I64)
    cols = rng.integers(0, max(n_cols, 1), nnz).astype(I64)
    vals = rng.integers(-5, 6, nnz).astype(np.float32)  # small integers: sums are exact
    return rows, cols, vals, (n_rows, n_cols)


def _csr(rows, cols, vals=None, shape=None, **kw) -> CSR:
    t = lambda a: None if a is None else torch.from_numpy(np.asarray(a))  # noqa: E731
    return CSR.from_coo(t(rows), t(cols), t(vals), shape=shape, **kw)


# -- from_coo ----------------------------------------------------------------------------------
@SETTINGS
@given(coo())
def test_from_coo_sum_matches_scipy(data):
    rows, cols, vals, shape = data
    _same(_csr(rows, cols, vals, shape), _scipy_ref(rows, cols, vals, shape))


@SETTINGS
@given(coo())
def test_from_coo_binary_structure_matches_scipy(data):
    rows, cols, _, shape = data
    m = _csr(rows, cols, None, shape)
    assert m.values is None
    _same(m, _scipy_ref(rows, cols, np.ones(rows.size, np.float32), shape), values=False)


@SETTINGS
@given(coo())
def test_from_coo_last_keeps_latest_value(data):
    rows, cols, vals, shape = data
    vals = np.arange(rows.size, dtype=np.float32)  # distinct: identifies the occurrence kept
    _same(_csr(rows, cols, vals, shape, duplicates="last"), _last_ref(rows, cols, vals, shape))


@SETTINGS
@given(coo())
def test_from_coo_error_iff_duplicates(data):
    rows, cols, vals, shape = data
    has_dup = len(set(zip(rows.tolist(), cols.tolist()))) < rows.size
    if has_dup:
        with pytest.raises(ValueError, match=r"duplicate \(row, col\) pairs"):
            _csr(rows, cols, vals, shape, duplicates="error")
    else:
        _same(_csr(rows, cols, vals, shape, duplicates="error"), _scipy_ref(rows, cols, vals, shape))


@pytest.mark.parametrize("rtype", [np.int8, np.int16, np.int32, np.int64, np.uint8])
def test_from_coo_accepts_integer_dtypes_and_inferrs_shape(rtype):
    rows = np.array([2, 0, 0], dtype=rtype)
    cols = np.array([1, 3, 0], dtype=rtype)
    m = CSR.from_coo(rows, cols)
    assert m.shape == (3, 4)
    assert m.indptr.tolist() == [0, 2, 2, 3]
    assert m.indices.tolist() == [0, 3, 1]
    assert m.indices.dtype == torch.int32


def test_from_coo_lists_and_float64_values():
    m = CSR.from_coo([1, 0], [0, 1], np.array([0.5, 2.0]), shape=(2, 2))
    assert m.values.dtype == torch.float32
    assert m.values.tolist() == [2.0, 0.5]


def test_from_coo_sorts_unsorted_rows():
    m = CSR.from_coo(np.array([0, 0, 0, 1]), np.array([5, 1, 3, 0]), shape=(2, 6))
    assert m.indices.tolist() == [1, 3, 5, 0]
    m.check()


def test_from_coo_wide_matrix_takes_int64_indices():
    n_cols = 2**31 + 10
    rows = np.array([1, 0, 1, 1], dtype=I64)
    cols = np.array([n_cols - 1, 7, 2**31, n_cols - 1], dtype=I64)
    m = CSR.from_coo(rows, cols, np.array([1.0, 2.0, 3.0, 4.0]), shape=(2, n_cols))
    assert m.indices.dtype == torch.int64
    assert m.indptr.tolist() == [0, 1, 3]
    assert m.indices.tolist() == [7, 2**31, n_cols - 1]
    assert m.values.tolist() == [2.0, 3.0, 5.0]
    m.check()
    s = m.to_scipy()
    assert s.shape == (2, n_cols) and s[1, n_cols - 1] == 5.0


# -- the int64 index path ----------------------------------------------------------------------
@SETTINGS
@given(coo())
def test_int64_indices_behave_like_int32(data):
    rows, cols, vals, shape = data
    m32 = _csr(rows, cols, vals, shape)
    m64 = CSR(m32.indptr, m32.indices.to(torch.int64), m32.shape, m32.values)
    assert m64.indices.dtype == torch.int64
    t32, t64 = m32.transpose(), m64.transpose()
    assert t64.indices.dtype == torch.int64
    assert torch.equal(t32.indptr, t64.indptr)
    assert torch.equal(t32.indices.to(torch.int64), t64.indices)
    assert torch.equal(t32.values, t64.values)
    assert (m64.to_scipy() != m32.to_scipy()).nnz == 0


def test_int64_indices_are_validated():
    indptr = torch.tensor([0, 2], dtype=torch.int64)
    with pytest.raises(ValueError, match="sorted and unique"):
        CSR(indptr, torch.tensor([3, 1], dtype=torch.int64), (1, 4))
    with pytest.raises(ValueError, match="out of range"):
        CSR(indptr, torch.tensor([1, 4], dtype=torch.int64), (1, 4))


def test_int32_indices_column_limit():
    indptr = torch.tensor([0, 1], dtype=torch.int64)
    idx = torch.tensor([2**31 - 1], dtype=torch.int32)
    assert CSR(indptr, idx, (1, 2**31)).shape == (1, 2**31)  # every column id fits int32
    with pytest.raises(TypeError, match="do not fit int32 indices; use int64"):
        CSR(indptr, idx, (1, 2**31 + 1))


# -- transpose ---------------------------------------------------------------------------------
@SETTINGS
@given(coo(), st.booleans())
def test_transpose_matches_scipy_and_twice_is_identity(data, with_values):
    rows, cols, vals, shape = data
    m = _csr(rows, cols, vals if with_values else None, shape)
    t = m.transpose()
    ref = m.to_scipy().T.tocsr()
    ref.sort_indices()
    _same(t, ref, values=with_values)
    assert (t.values is None) == (not with_values)
    fresh = CSR(t.indptr, t.indices, t.shape, t.values)  # uncached: really computes it again
    tt = fresh.transpose()
    assert tt.shape == m.shape
    assert torch.equal(tt.indptr, m.indptr) and torch.equal(tt.indices, m.indices)
    if with_values:
        assert torch.equal(tt.values, m.values)
    tt.check()


def test_transpose_is_cached_both_ways_and_symmetric_hint():
    m = CSR.from_coo(np.array([0, 1, 1]), np.array([2, 0, 1]), np.array([1.0, 2.0, 3.0]), shape=(2, 3))
    t = m.transpose()
    assert m.transpose() is t and m.T is t
    assert t.transpose() is m
    assert t.indices.tolist() == [1, 1, 0] and t.values.tolist() == [2.0, 3.0, 1.0]
    s = CSR(m.indptr, m.indices, m.shape, symmetric=True)
    assert s.transpose() is s


# -- scipy round trip --------------------------------------------------------------------------
@SETTINGS
@given(coo())
def test_scipy_round_trip(data):
    rows, cols, vals, shape = data
    ref = _scipy_ref(rows, cols, vals, shape)
    m = CSR.from_scipy(ref)
    _same(m, ref)
    back = m.to_scipy()
    assert isinstance(back, sp.csr_matrix)
    assert back.shape == ref.shape and (back != ref).nnz == 0
    binary = CSR.from_scipy(ref, binary=True)
    assert binary.values is None
    np.testing.assert_array_equal(binary.to_scipy().data, np.ones(ref.nnz, np.float32))


@pytest.mark.parametrize("fmt", ["coo", "csc", "lil", "dok"])
def test_from_scipy_any_format_sums_duplicates(fmt):
    m = sp.coo_matrix((np.array([1.0, 2.0, 4.0]), (np.array([1, 0, 1]), np.array([2, 0, 2]))), shape=(2, 3))
    c = CSR.from_scipy(m.asformat(fmt))
    assert c.indptr.tolist() == [0, 1, 2] and c.indices.tolist() == [0, 2] and c.values.tolist() == [2.0, 5.0]


def test_from_scipy_does_not_modify_its_input():
    m = sp.csr_matrix((np.array([1.0, 2.0]), np.array([2, 0]), np.array([0, 2])), shape=(1, 3))
    CSR.from_scipy(m)
    assert m.indices.tolist() == [2, 0] and not m.has_sorted_indices


def test_from_scipy_rejects_dense():
    with pytest.raises(TypeError, match="expected a scipy sparse matrix, got ndarray"):
        CSR.from_scipy(np.eye(2))


# -- empty matrices ----------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(0, 0), (0, 5), (5, 0), (3, 4)])
def test_empty_matrices(shape):
    z = np.zeros(0, dtype=I64)
    for m in (CSR.from_coo(z, z, shape=shape), CSR.from_scipy(sp.csr_matrix(shape)),
              CSR(torch.zeros(shape[0] + 1, dtype=torch.int64), torch.zeros(0, dtype=torch.int32), shape)):
        assert m.shape == shape and m.nnz == 0
        assert m.row_lengths().tolist() == [0] * shape[0]
        t = m.transpose()
        assert t.shape == shape[::-1] and t.nnz == 0 and t.indptr.tolist() == [0] * (shape[1] + 1)
        assert m.to_scipy().shape == shape
        assert pickle.loads(pickle.dumps(m)).shape == shape


def test_from_coo_infers_empty_shape():
    z = np.zeros(0, dtype=I64)
    assert CSR.from_coo(z, z).shape == (0, 0)


# -- accessors, immutability, pickling, devices ------------------------------------------------
def test_row_lengths_row_and_repr():
    m = CSR.from_coo(np.array([0, 0, 2]), np.array([1, 3, 0]), shape=(3, 4))
    assert m.row_lengths().tolist() == [2, 0, 1] and m.row_lengths().dtype == torch.int64
    assert m.row(0).tolist() == [1, 3] and m.row(1).tolist() == []
    assert (m.n_rows, m.n_cols, m.nnz) == (3, 4, 3)
    assert "shape=(3, 4)" in repr(m) and "nnz=3" in repr(m) and "binary" in repr(m)
    with pytest.raises(IndexError, match="row 3 out of range for 3 rows"):
        m.row(3)
    with pytest.raises(IndexError, match="row -1 out of range"):
        m.row(-1)


def test_immutable():
    m = CSR.from_coo(np.array([0]), np.array([0]), shape=(1, 1))
    for name in ("indptr", "indices", "values", "shape", "symmetric", "anything"):
        with pytest.raises(AttributeError, match="CSR is immutable"):
            setattr(m, name, None)
    assert m.indptr.tolist() == [0, 1] and m.shape == (1, 1)


def test_immutable_delete():
    m = CSR.from_coo(np.array([0]), np.array([0]), shape=(1, 1))
    with pytest.raises(AttributeError, match="CSR is immutable"):
        del m.indptr


def test_with_values():
    m = CSR.from_coo(np.array([0, 1]), np.array([1, 0]), shape=(2, 2))
    v = m.with_values(torch.tensor([3.0, 4.0]))
    assert v.values.tolist() == [3.0, 4.0] and torch.equal(v.indices, m.indices) and m.values is None
    assert v.with_values(None).values is None
    with pytest.raises(ValueError, match="values has 3 entries, expected nnz = 2"):
        m.with_values(torch.tensor([1.0, 2.0, 3.0]))


@pytest.mark.parametrize("values", [False, True])
def test_pickle_round_trip(values):
    m = CSR.from_coo(np.array([0, 1, 1]), np.array([2, 0, 1]), np.array([1.0, 2.0, 3.0]) if values else None,
                     shape=(2, 3))
    m.transpose()  # the cache must not break pickling
    p = pickle.loads(pickle.dumps(m))
    assert p.shape == m.shape and torch.equal(p.indptr, m.indptr) and torch.equal(p.indices, m.indices)
    assert (p.values is None) == (not values) and (not values or torch.equal(p.values, m.values))
    assert torch.equal(p.transpose().indices, m.transpose().indices)
    with pytest.raises(AttributeError, match="immutable"):
        p.shape = (1, 1)
    s = pickle.loads(pickle.dumps(CSR(m.indptr, m.indices, m.shape, symmetric=True)))
    assert s.symmetric


def test_to_same_device_is_identity(device):
    m = CSR.from_coo(np.array([0, 1]), np.array([1, 0]), np.array([1.0, 2.0]), shape=(2, 2))
    d = m.to(device)
    assert d.device.type == device
    assert torch.equal(d.to("cpu").indices, m.indices) and torch.equal(d.to("cpu").values, m.values)
    assert d.to(d.device) is d
    assert m.to("cpu") is m
    t = d.transpose()
    assert t.device.type == device and t.to("cpu").indices.tolist() == [1, 0]


def test_from_coo_follows_input_device(device):
    m = CSR.from_coo(torch.tensor([0, 0], device=device), torch.tensor([1, 0], device=device), shape=(1, 2))
    assert m.device.type == device and m.to("cpu").indices.tolist() == [0, 1]


# -- every validation message ------------------------------------------------------------------
IP = torch.tensor([0, 1, 3], dtype=torch.int64)
IX = torch.tensor([2, 0, 1], dtype=torch.int32)


@pytest.mark.parametrize(
    "args, kwargs, exc, match",
    [
        (("nope", IX, (2, 3)), {}, TypeError, "indptr must be a tensor or array, got str"),
        ((IP, 5, (2, 3)), {}, TypeError, "indices must be a tensor or array, got int"),
        ((IP, IX, (2, 3), "v"), {}, TypeError, "values must be a tensor or array, got str"),
        ((IP, IX, (2, 3, 1)), {}, ValueError, r"shape must be a pair \(n_rows, n_cols\)"),
        ((IP, IX, 6), {}, ValueError, r"shape must be a pair"),
        ((IP, IX, (2, -3)), {}, ValueError, r"shape must be non-negative, got \(2, -3\)"),
        ((IP.int(), IX, (2, 3)), {}, TypeError, "indptr must be an int64 tensor, got int32"),
        ((IP, IX.float(), (2, 3)), {}, TypeError, "indices must be an int32 or int64 tensor, got float32"),
        ((IP, IX.to(torch.int16), (2, 3)), {}, TypeError, "indices must be an int32 or int64 tensor, got int16"),
        ((IP, IX, (2, 3), torch.ones(3, dtype=torch.float64)), {}, TypeError,
         "values must be a float32 tensor, got float64"),
        ((IP, IX, (3, 3)), {}, ValueError, r"indptr has 3 entries, expected n_rows \+ 1 = 4"),
        ((IP.view(3, 1), IX, (2, 3)), {}, ValueError, "indptr has 3 entries"),
        ((IP, IX.view(1, 3), (2, 3)), {}, ValueError, r"indices must be 1-D, got shape \(1, 3\)"),
        ((IP, IX, (2, 3), torch.ones(2)), {}, ValueError, "values has 2 entries, expected nnz = 3"),
        ((IP, IX, (2, 3), torch.ones(1, 3)), {}, ValueError, "values has 3 entries, expected nnz = 3"),
        ((IP.to("meta"), IX, (2, 3)), {}, ValueError, "must share one device"),
        ((torch.tensor([1, 1, 3]), IX, (2, 3)), {}, ValueError, r"indptr\[0\] must be 0, got 1"),
        ((torch.tensor([0, 1, 2]), IX, (2, 3)), {}, ValueError,
         r"indptr\[-1\] must equal the number of indices \(3\), got 2"),
        ((torch.tensor([0, 2, 1, 3]), torch.tensor([0, 1, 2], dtype=torch.int32), (3, 3)), {}, ValueError,
         r"indptr must be non-decreasing, but indptr\[2\] = 1 < indptr\[1\] = 2"),
        ((IP, torch.tensor([2, 0, 3], dtype=torch.int32), (2, 3)), {}, ValueError,
         r"indices out of range: row 1 has column 3, expected 0 <= column < 3"),
        ((IP, torch.tensor([2, -1, 1], dtype=torch.int32), (2, 3)), {}, ValueError,
         "indices out of range: row 1 has column -1"),
        ((IP, torch.tensor([2, 1, 0], dtype=torch.int32), (2, 3)), {}, ValueError,
         "indices must be sorted and unique within each row: row 1 has column 0 after 1"),
        ((IP, torch.tensor([2, 1, 1], dtype=torch.int32), (2, 3)), {}, ValueError,
         "indices must be sorted and unique within each row: row 1 has column 1 after 1"),
    ],
)
def test_constructor_errors(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        CSR(*args, **kwargs)


def test_first_bad_row_is_reported():
    # Rows 1 and 3 are bad; the message names the lowest one whatever the thread count.
    indptr = torch.tensor([0, 2, 4, 6, 8], dtype=torch.int64)
    indices = torch.tensor([0, 1, 1, 0, 0, 1, 1, 1], dtype=torch.int32)
    with pytest.raises(ValueError, match="row 1 has column 0 after 1"):
        CSR(indptr, indices, (4, 2))


def test_check_false_skips_validation_and_check_reports():
    bad = CSR(IP, torch.tensor([2, 1, 0], dtype=torch.int32), (2, 3), check=False)
    with pytest.raises(ValueError, match="sorted and unique"):
        bad.check()


Z = np.zeros(0, dtype=I64)


@pytest.mark.parametrize(
    "args, kwargs, exc, match",
    [
        ((np.array([0.0]), np.array([0])), {}, TypeError, "rows must be an integer tensor, got float64"),
        ((np.array([0]), np.array([True])), {}, TypeError, "cols must be an integer tensor, got bool"),
        ((np.array([[0]]), np.array([0])), {}, ValueError, r"rows must be 1-D, got shape \(1, 1\)"),
        ((np.array([0, 1]), np.array([0])), {}, ValueError, "rows has 2 entries but cols has 1"),
        ((np.array([0]), np.array([0]), np.array([1.0, 2.0])), {}, ValueError, "values has 2 entries, expected 1"),
        ((np.array([-1]), np.array([0])), {"shape": (2, 2)}, ValueError, "rows holds negative id -1"),
        ((np.array([0]), np.array([-3])), {"shape": (2, 2)}, ValueError, "cols holds negative id -3"),
        ((np.array([2]), np.array([0])), {"shape": (2, 2)}, ValueError,
         r"rows holds id 2, out of range for shape \(2, 2\)"),
        ((np.array([0]), np.array([5])), {"shape": (2, 2)}, ValueError, "cols holds id 5, out of range"),
        ((np.array([0]), np.array([0])), {"duplicates": "first"}, ValueError,
         r"duplicates must be one of \['error', 'last', 'sum'\], got 'first'"),
        ((np.array([0, 0]), np.array([1, 1])), {"duplicates": "error"}, ValueError,
         r"duplicate \(row, col\) pairs found and duplicates='error'"),
        (("x", np.array([0])), {}, TypeError, "rows must be a tensor or array, got str"),
    ],
)
def test_from_coo_errors(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        CSR.from_coo(*args, **kwargs)


# Known gaps in recfast/csr.py (reported with the fix): from_coo does not check `shape` itself, so
# a negative row count reaches C++ (pybind11 turns std::length_error into an obscure message), a
# 1-tuple raises IndexError and floats are truncated; and empty Python lists become float64.
@pytest.mark.parametrize("shape", [(-1, 3), (3,), (1.5, 2)])
def test_from_coo_checks_shape(shape):
    with pytest.raises(ValueError, match="CSR.from_coo: shape must be"):
        CSR.from_coo(Z, Z, shape=shape)


def test_from_coo_empty_lists():
    assert CSR.from_coo([], [], shape=(2, 2)).nnz == 0


def test_csr_is_exported():
    assert recfast.CSR is CSR
