"""recfast.CSR: construction, validation, conversions, transpose."""

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


@settings(max_examples=50, deadline=None)
@given(n_rows=st.integers(0, 12), n_cols=st.integers(0, 12), nnz=st.integers(0, 60), seed=st.integers(0, 10**6),
       valued=st.booleans())
def test_from_coo_equals_scipy_sum_duplicates(n_rows, n_cols, nnz, seed, valued) -> None:
    rng = np.random.default_rng(seed)
    if n_rows == 0 or n_cols == 0:
        nnz = 0
    r = rng.integers(0, max(n_rows, 1), nnz)
    c = rng.integers(0, max(n_cols, 1), nnz)
    v = rng.random(nnz).astype(np.float32) if valued else None
    m = CSR.from_coo(torch.from_numpy(r), torch.from_numpy(c), None if v is None else torch.from_numpy(v),
                     shape=(n_rows, n_cols))
    ref = sp.coo_matrix((v if v is not None else np.ones(nnz, np.float32), (r, c)), shape=(n_rows, n_cols)).tocsr()
    ref.sum_duplicates()
    ref.sort_indices()
    assert np.array_equal(m.indptr.numpy(), ref.indptr) and np.array_equal(m.indices.numpy(), ref.indices)
    if valued:
        np.testing.assert_allclose(m.values.numpy(), ref.data, rtol=1e-6)
    else:
        assert m.values is None
    t = m.transpose()
    assert (t.to_scipy() != m.to_scipy().T.tocsr()).nnz == 0
    assert t.transpose() is m and m.transpose() is t  # cached both ways


def test_duplicates_last_and_error() -> None:
    r, c, v = torch.tensor([0, 0, 0]), torch.tensor([1, 1, 0]), torch.tensor([1.0, 2.0, 3.0])
    assert CSR.from_coo(r, c, v, duplicates="last").values.tolist() == [3.0, 2.0]
    assert CSR.from_coo(r, c, v).values.tolist() == [3.0, 3.0]
    with pytest.raises(ValueError, match="duplicate"):
        CSR.from_coo(r, c, v, duplicates="error")
    with pytest.raises(ValueError, match="duplicates must be one of"):
        CSR.from_coo(r, c, duplicates="max")


def test_index_dtype_and_int64_path() -> None:
    m = CSR.from_coo(torch.tensor([0, 1]), torch.tensor([2, 0]), shape=(2, 3))
    assert m.indices.dtype == torch.int32 and m.indptr.dtype == torch.int64
    m64 = CSR(m.indptr, m.indices.long(), m.shape)
    t = m64.transpose()
    assert t.indices.dtype == torch.int64 and t.indices.tolist() == [1, 0]
    assert recfast.csr._index_dtype(2**31 + 5) == torch.int64


@pytest.mark.parametrize("shape", [(0, 0), (0, 5), (5, 0), (3, 4)])
def test_empty_matrices(shape) -> None:
    m = CSR(torch.zeros(shape[0] + 1, dtype=torch.int64), torch.empty(0, dtype=torch.int32), shape)
    assert m.nnz == 0 and m.row_lengths().tolist() == [0] * shape[0]
    assert m.transpose().shape == (shape[1], shape[0])
    assert m.to_scipy().shape == shape


def test_round_trips_and_rows() -> None:
    a = sp.random(7, 9, density=0.3, random_state=0, format="csr", dtype=np.float32)
    m = CSR.from_scipy(a)
    assert (m.to_scipy() != a).nnz == 0
    assert m.row_lengths().tolist() == np.diff(a.indptr).tolist()
    assert m.row(3).tolist() == a[3].indices.tolist()
    assert torch.equal(m.dense_rows(torch.tensor([3, 0])), torch.from_numpy(a[[3, 0]].toarray()))
    b = CSR.from_scipy(a, binary=True)
    assert b.values is None and (b.to_scipy() != (a != 0).astype(np.float32)).nnz == 0
    assert pickle.loads(pickle.dumps(m)).to_scipy().nnz == a.nnz


def test_immutable() -> None:
    m = CSR.from_coo(torch.tensor([0]), torch.tensor([0]))
    with pytest.raises(AttributeError, match="immutable"):
        m.shape = (2, 2)


def test_validation_errors() -> None:
    ip, ix = torch.tensor([0, 2, 3]), torch.tensor([0, 2, 1], dtype=torch.int32)
    with pytest.raises(ValueError, match="indptr has 3 entries, expected n_rows \\+ 1 = 4"):
        CSR(ip, ix, (3, 3))
    with pytest.raises(TypeError, match="indptr must be an int64"):
        CSR(ip.int(), ix, (2, 3))
    with pytest.raises(TypeError, match="indices must be an int32 or int64"):
        CSR(ip, ix.float(), (2, 3))
    with pytest.raises(TypeError, match="values must be a float32"):
        CSR(ip, ix, (2, 3), torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="values has 2 entries, expected nnz = 3"):
        CSR(ip, ix, (2, 3), torch.ones(2))
    with pytest.raises(ValueError, match="out of range: row 0 has column 2"):
        CSR(ip, ix, (2, 2))
    with pytest.raises(ValueError, match="sorted and unique.*row 0 has column 0 after 2"):
        CSR(ip, torch.tensor([2, 0, 1], dtype=torch.int32), (2, 3))
    with pytest.raises(ValueError, match="sorted and unique.*row 0 has column 1 after 1"):
        CSR(ip, torch.tensor([1, 1, 1], dtype=torch.int32), (2, 3))
    with pytest.raises(ValueError, match="non-decreasing"):
        CSR(torch.tensor([0, 3, 2, 3]), torch.tensor([0, 1, 2], dtype=torch.int32), (3, 3))
    with pytest.raises(ValueError, match="indptr\\[0\\] must be 0"):
        CSR(torch.tensor([1, 3]), torch.tensor([0, 1, 2], dtype=torch.int32), (1, 3))
    with pytest.raises(ValueError, match="indptr\\[-1\\] must equal"):
        CSR(torch.tensor([0, 2]), torch.tensor([0, 1, 2], dtype=torch.int32), (1, 3))
    with pytest.raises(ValueError, match="column -1"):
        CSR(torch.tensor([0, 1]), torch.tensor([-1], dtype=torch.int32), (1, 3))
    with pytest.raises(ValueError, match="shape must be a pair"):
        CSR(ip, ix, (3,))
    with pytest.raises(ValueError, match="rows holds negative id -1"):
        CSR.from_coo(torch.tensor([-1]), torch.tensor([0]))
    with pytest.raises(ValueError, match="cols holds id 5, out of range"):
        CSR.from_coo(torch.tensor([0]), torch.tensor([5]), shape=(1, 3))
    with pytest.raises(ValueError, match="rows has 2 entries but cols has 1"):
        CSR.from_coo(torch.tensor([0, 1]), torch.tensor([0]))
    with pytest.raises(TypeError, match="rows must be an integer tensor"):
        CSR.from_coo(torch.tensor([0.5]), torch.tensor([0]))
    with pytest.raises(TypeError, match="expected a scipy sparse matrix"):
        CSR.from_scipy(np.eye(3))
    with pytest.raises(ValueError, match="dense_rows: rows must be in"):
        CSR(ip, ix, (2, 3)).dense_rows(torch.tensor([2]))
