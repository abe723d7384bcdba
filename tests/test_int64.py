"""64-bit index arithmetic (issue 9): offsets past 2**31 nonzeros, output elements past 2**31, and
ids past 2**32, without allocating them.

Arrays of more than 2**31 elements are anonymous private mappings with MAP_NORESERVE: untouched
pages cost no memory (reading one maps the shared zero page), so a kernel that computes its
offsets in 64 bits reads and writes only the few pages a test fills, while one that truncated an
offset to 32 bits would read the wrong (zero) entries or fault.
"""

from __future__ import annotations

import mmap
import sys

import numpy as np
import pytest
import torch

import recfast
from recfast import CSR, _C
from recfast.ops import bpr_loss, bpr_sgd_step, sample_negatives, topk
from recfast.ops.bpr import _bpr_loss_reference
from recfast.ops.sampling import _mulhi, _rng_bits, _rng_key
from recfast.ops.topk import _decode, _keys
from recfast.optim import SparseSGD
from conftest import requires_cuda

BIG = 2**31 + 8  # an offset past int32
MAP_NORESERVE = 0x4000  # Linux; the mmap module does not export it

pytestmark = pytest.mark.skipif(sys.platform != "linux" or sys.maxsize < 2**62, reason="needs 64-bit Linux mappings")


def virtual(shape: tuple[int, ...], dtype) -> np.ndarray:
    """A zero-filled array of any size whose pages are only allocated when written."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    try:
        m = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE)
    except (OSError, OverflowError) as e:
        pytest.skip(f"cannot reserve {nbytes >> 30} GiB of address space: {e}")
    return np.frombuffer(m, dtype=dtype).reshape(shape)


@pytest.fixture(scope="module")
def far_csr():
    """A 2-row CSR whose row 1 = [3, 50, 51, 99] is stored at positions BIG..BIG+3 (row 0 is
    BIG zeros, never read), and the same row as a small matrix."""
    row = [3, 50, 51, 99]
    indices = virtual((BIG + len(row),), np.int32)
    indices[BIG:] = row
    far = CSR(torch.tensor([0, BIG, BIG + len(row)]), torch.from_numpy(indices), (2, 100), check=False)
    near = CSR(torch.tensor([0, len(row)]), torch.tensor(row, dtype=torch.int32), (1, 100))
    return far, near


def test_sampling_reads_rows_past_2_31_nonzeros(far_csr) -> None:
    far, near = far_csr
    for replace, k in ((True, 7), (False, 40)):
        got = sample_negatives(far, torch.ones(5, dtype=torch.long), k, seed=3, replace=replace)
        want = sample_negatives(near, torch.zeros(5, dtype=torch.long), k, seed=3, replace=replace)
        assert torch.equal(got, want)


def test_topk_exclusion_rows_past_2_31_nonzeros(far_csr) -> None:
    far, near = far_csr
    q, keys = torch.randn(3, 4), torch.randn(100, 4)
    got = topk(q, keys, 100, exclude=far, rows=torch.ones(3, dtype=torch.long))
    want = topk(q, keys, 100, exclude=near, rows=torch.zeros(3, dtype=torch.long))
    assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0])
    assert (got[1][:, -4:] == -1).all()
    hits = np.empty((3, 100), dtype=np.uint8)
    ids = np.tile(np.arange(100, dtype=np.int64), (3, 1))
    _C.topk_hits(ids, np.ones(3, dtype=np.int64), far.indptr.numpy(), far.indices.numpy(), hits, 0)
    assert np.nonzero(hits[0])[0].tolist() == [3, 50, 51, 99] and (hits == hits[0]).all()


def test_bpr_sgd_step_rows_past_2_31_nonzeros(far_csr) -> None:
    far, near = far_csr
    g = torch.Generator().manual_seed(0)
    U, V = torch.randn(2, 8, generator=g), torch.randn(100, 8, generator=g)
    a_u, a_v, b_u, b_v = U.clone(), V.clone(), U[1:].clone(), V.clone()
    la = bpr_sgd_step(a_u, a_v, far, torch.tensor([1, 1]), torch.tensor([3, 50]), lr=0.1, seed=9, num_threads=1)
    lb = bpr_sgd_step(b_u, b_v, near, torch.tensor([0, 0]), torch.tensor([3, 50]), lr=0.1, seed=9, num_threads=1)
    assert la == lb and torch.equal(a_u[1:], b_u) and torch.equal(a_v, b_v)


def test_spmm_offsets_past_2_31_nonzeros_and_dense_elements(far_csr) -> None:
    """Entries at positions past 2**31 of indices, whose columns' rows in dense start past 2**31
    elements (column * d)."""
    far, _ = far_csr
    d = 16
    n_cols = 2**27 + 128  # (n_cols - 1) * d > 2**31
    cols = [5, 2**27 + 3, 2**27 + 100]
    indices = far.indices.numpy()
    indices[BIG:BIG + 3] = cols
    dense = virtual((n_cols, d), np.float32)
    rng = np.random.default_rng(0)
    for c in cols:
        dense[c] = rng.standard_normal(d)
    values = virtual((BIG + 3,), np.float32)
    values[BIG:] = [0.5, -2.0, 3.0]
    out = np.empty((1, d), np.float32)
    indptr = np.array([BIG, BIG + 3], dtype=np.int64)  # one row, stored past 2**31
    _C.spmm(indptr, indices[:BIG + 3], values, dense, out, 0)
    want = 0.5 * dense[cols[0]] - 2.0 * dense[cols[1]] + 3.0 * dense[cols[2]]
    np.testing.assert_allclose(out[0], want, rtol=1e-6)
    _C.spmm(indptr, indices[:BIG + 3], None, dense, out, 0)
    np.testing.assert_allclose(out[0], dense[cols].sum(0), rtol=1e-6)
    indices[BIG:BIG + 4] = [3, 50, 51, 99]  # restore the fixture's row


def test_topk_merge_score_rows_and_heaps_past_2_31_elements() -> None:
    """A score row starting past 2**31 elements (row * ld), and a heap starting past 2**31
    (row * k)."""
    ld = 2**31 + 64
    scores = virtual((2, ld), np.float32)
    scores[1, :8] = [0, 7, 1, 7, 3, -1, 9, 2]
    ts, ti = np.full((2, 3), -np.inf, np.float32), np.full((2, 3), -1, np.int64)
    _C.topk_merge(scores, 10, 8, None, np.empty(0, np.int64), np.empty(0, np.int32), ts, ti, 0)
    _C.topk_finalize(ts, ti, 0)
    assert ti[1].tolist() == [16, 11, 13] and ts[1].tolist() == [9, 7, 7]
    assert ti[0].tolist() == [10, 11, 12]  # row 0: the zeros, lowest ids first
    # heaps: 3 rows of k = 2**30 + 1, zero-initialised (all "score 0, id 0"); a 5.0 entering row 2
    # sinks along the leftmost path to position 2**30 - 1, element 2 * k + 2**30 - 1 > 2**31.
    k = 2**30 + 1
    top_s, top_i = virtual((3, k), np.float32), virtual((3, k), np.int64)
    small = np.zeros((3, 4), np.float32)
    small[2, 1] = 5.0
    _C.topk_merge(small, 1000, 4, None, np.empty(0, np.int64), np.empty(0, np.int32), top_s, top_i, 0)
    assert top_s[2, 2**30 - 1] == 5.0 and top_i[2, 2**30 - 1] == 1001
    assert top_s[0, 2**30 - 1] == 0.0 and top_s[1, 2**30 - 1] == 0.0


def test_bpr_loss_table_rows_past_2_31_elements() -> None:
    d = 16
    n = 2**27 + 8
    U = torch.from_numpy(virtual((n, d), np.float32))
    rows = [2**27 + 5, 2**27 + 7, 3]
    g = torch.Generator().manual_seed(0)
    U[rows] = torch.randn(3, d, generator=g)
    V = torch.randn(10, d, generator=g)
    users, pos, neg = torch.tensor(rows), torch.tensor([1, 2, 3]), torch.tensor([[4, 5], [6, 7], [8, 9]])
    Ug = U.requires_grad_(True)
    loss = bpr_loss(Ug, V, users, pos, neg, l2=0.1, sparse_grad=True)
    (gU,) = torch.autograd.grad(loss, Ug)
    small = U.detach()[rows].clone().requires_grad_(True)
    ref = _bpr_loss_reference(small, V, torch.arange(3), pos, neg, l2=0.1)
    (gs,) = torch.autograd.grad(ref, small)
    torch.testing.assert_close(loss.detach(), ref.detach())
    gU = gU.coalesce()
    assert gU.indices()[0].tolist() == sorted(rows)
    order = [sorted(rows).index(r) for r in rows]
    torch.testing.assert_close(gU.values()[order], gs)


def test_sparse_optimizer_rows_past_2_31_elements() -> None:
    d = 16
    n = 2**27 + 8
    p = torch.nn.Parameter(torch.from_numpy(virtual((n, d), np.float32)))
    r = 2**27 + 6
    with torch.no_grad():
        p[r] = 1.0
    p.grad = torch.sparse_coo_tensor(torch.tensor([[r, r, 2]]), torch.ones(3, d), (n, d))
    SparseSGD([p], lr=0.25).step()
    assert torch.equal(p.detach()[r], torch.full((d,), 0.5)) and torch.equal(p.detach()[2], torch.full((d,), -0.25))
    assert float(p.detach()[r + 1].abs().sum()) == 0.0


# ---- ids past 2**32: exact big-integer references --------------------------------------------------

def _kth_unseen(row: list[int], r: int) -> int:
    return r + sum(1 for j, v in enumerate(row) if v - j <= r)


def _draws(seed: int, stream: int, n_items: int, row: list[int], K: int, replace: bool) -> list[int]:
    key = _rng_key(seed, np.array([stream], dtype=np.uint64))
    m = n_items - len(row)
    bits = [_rng_bits(key, np.array([c], dtype=np.uint64)) for c in range(K)]
    if replace:
        return [_kth_unseen(row, int(_mulhi(b, np.uint64(m))[0])) for b in bits]
    ranks: list[int] = []
    for c, j in enumerate(range(m - K, m)):
        t = int(_mulhi(bits[c], np.uint64(j + 1))[0])
        ranks.append(j if t in ranks else t)
    return [_kth_unseen(row, r) for r in ranks]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, requires_cuda])])
def test_sampling_ids_past_2_32(device) -> None:
    n_items = 2**40 + 12345
    row = [5, 2**31 - 1, 2**31, 2**32 + 7, 2**40 + 100]
    csr = CSR(torch.tensor([0, 0, len(row)]), torch.tensor(row, dtype=torch.int64), (2, n_items)).to(device)
    users = torch.tensor([1, 0, 1], device=device)
    for replace in (True, False):
        got = sample_negatives(csr, users, 6, seed=2**63 + 5, replace=replace, row_offset=2**40).cpu()
        for b, u in enumerate(users.tolist()):
            want = _draws(2**63 + 5, 2**40 + b, n_items, row if u == 1 else [], 6, replace)
            assert got[b].tolist() == want
            assert not set(want) & set(row if u == 1 else [])


def test_cuda_topk_keys_hold_ids_below_2_31() -> None:
    """The CUDA top-k packs (score, id) into one int64 with 31 bits of id: exact up to 2**31 - 1,
    and topk refuses larger catalogues on CUDA (they would alias)."""
    ids = torch.tensor([0, 1, 2**31 - 2, 2**31 - 1, 7])
    s = torch.tensor([1.5, -0.0, float("inf"), -3.0, float("nan")])
    got_s, got_i = _decode(_keys(s, ids))
    assert got_i.tolist() == [0, 1, 2**31 - 2, 2**31 - 1, -1]
    assert got_s[:4].tolist() == [1.5, 0.0, float("inf"), -3.0]
    assert bool(_keys(torch.tensor([2.0]), torch.tensor([2**31 - 1])) > _keys(torch.tensor([1.0]), torch.tensor([0])))


def test_graph_index_dtype_follows_node_count() -> None:
    """normalized_adjacency stores column ids of users + items nodes: int64 once they pass int32."""
    from recfast.csr import _index_dtype

    assert _index_dtype(2**31 - 1) == torch.int32 and _index_dtype(2**31) == torch.int64
    r = CSR(torch.tensor([0, 1]), torch.tensor([2], dtype=torch.int32), (1, 3))
    assert recfast.graph.normalized_adjacency(r).indices.dtype == torch.int32
