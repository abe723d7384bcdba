"""topk / topk_scores: parity with the dense reference, masking, ties, padding, errors, CUDA."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import recfast
from recfast.ops import topk, topk_scores
from recfast.ops.topk import _topk_reference as _topk_ref
from conftest import random_csr, requires_cuda

_topk_mod = importlib.import_module("recfast.ops.topk")  # the module (recfast.ops.topk is the function)


def _check_against_ref(got, want, scores_dense=None):
    gs, gi = got
    ws, wi = want
    assert gi.dtype == torch.int64 and gs.dtype == torch.float32 and gs.shape == ws.shape
    torch.testing.assert_close(gs.cpu(), ws, rtol=1e-5, atol=1e-5)
    if scores_dense is not None:  # each id carries its own score
        valid = gi.cpu() >= 0
        own = scores_dense.gather(1, gi.cpu().clamp_min(0))
        torch.testing.assert_close(own[valid].float(), gs.cpu()[valid], rtol=1e-5, atol=1e-5)
    assert torch.equal((gi.cpu() < 0), (wi < 0))


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("k", [1, 7, 40])
def test_matches_reference(device, index_dtype, seed, k) -> None:
    g = torch.Generator().manual_seed(seed)
    q, keys, bias = torch.randn(70, 9, generator=g), torch.randn(530, 9, generator=g), torch.randn(530, generator=g)
    ex = random_csr(90, 530, 0.2, seed=seed, index_dtype=index_dtype)
    rows = torch.randint(0, 90, (70,), generator=g)
    got = topk(q.to(device), keys.to(device), k, exclude=ex.to(device), rows=rows.to(device),
               key_bias=bias.to(device), block_size=16, tile_size=100)
    want = _topk_ref(q, keys, k, exclude=ex, rows=rows, key_bias=bias)
    dense = (q.double() @ keys.double().T + bias.double())
    _check_against_ref(got, want, dense)
    excl = ex.dense_rows(rows) > 0
    gi = got[1].cpu()
    assert not excl.gather(1, gi.clamp_min(0))[gi >= 0].any()


def test_integer_scores_give_exact_ids_and_lower_id_wins_ties(device) -> None:
    """Integer-valued embeddings make every score exact, so the ids must equal the reference's."""
    g = torch.Generator().manual_seed(3)
    q = torch.randint(-2, 3, (40, 4), generator=g).float()
    keys = torch.randint(-2, 3, (300, 4), generator=g).float()
    for bs, ts in ((8, 7), (512, 1024)):
        got = topk(q.to(device), keys.to(device), 25, block_size=bs, tile_size=ts)
        want = _topk_ref(q, keys, 25)
        assert torch.equal(got[1].cpu(), want[1]) and torch.equal(got[0].cpu(), want[0])


def test_all_equal_scores_return_lowest_ids(device) -> None:
    s, i = topk(torch.ones(3, 2, device=device), torch.ones(50, 2, device=device), 5, tile_size=7)
    assert i.tolist() == [[0, 1, 2, 3, 4]] * 3 and (s == 2).all()


@pytest.mark.parametrize("case", ["every_item_excluded", "one_item", "k_zero", "k_past_catalogue", "empty_batch"])
def test_adversarial(device, case) -> None:
    if case == "every_item_excluded":
        ex = recfast.CSR(torch.tensor([0, 4, 5]), torch.tensor([0, 1, 2, 3, 1], dtype=torch.int32), (2, 4))
        s, i = topk(torch.ones(2, 3, device=device), torch.randn(4, 3, device=device), 3, exclude=ex.to(device))
        assert i[0].tolist() == [-1, -1, -1] and torch.isinf(s[0]).all() and (s[0] < 0).all()
        assert 1 not in i[1].tolist() and sorted(i[1].tolist()) == [0, 2, 3]
    elif case == "one_item":
        s, i = topk(torch.randn(5, 2, device=device), torch.randn(1, 2, device=device), 3)
        assert i[:, 0].tolist() == [0] * 5 and (i[:, 1:] == -1).all()
    elif case == "k_zero":
        s, i = topk(torch.randn(5, 2, device=device), torch.randn(9, 2, device=device), 0)
        assert s.shape == (5, 0) and i.shape == (5, 0)
    elif case == "k_past_catalogue":
        s, i = topk(torch.randn(2, 2, device=device), torch.randn(3, 2, device=device), 10)
        assert (i[:, :3] >= 0).all() and (i[:, 3:] == -1).all() and torch.isinf(s[:, 3:]).all()
    else:
        s, i = topk(torch.randn(0, 2, device=device), torch.randn(3, 2, device=device), 2)
        assert s.shape == (0, 2)


def test_nan_and_neg_inf_scores_are_never_selected(device) -> None:
    scores = torch.tensor([[float("nan"), 1.0, float("-inf"), 0.5, float("inf")]], device=device)
    s, i = topk_scores(scores, 5)
    assert i.tolist() == [[4, 1, 3, -1, -1]]
    assert s[0, :3].tolist() == [float("inf"), 1.0, 0.5]


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_topk_scores_matches_reference(device, index_dtype) -> None:
    g = torch.Generator().manual_seed(5)
    scores = torch.randn(33, 77, generator=g)
    scores[:, ::7] = 0.25  # ties
    ex = random_csr(40, 77, 0.3, seed=2, index_dtype=index_dtype)
    rows = torch.randint(0, 40, (33,), generator=g)
    got = topk_scores(scores.to(device), 12, exclude=ex.to(device), rows=rows.to(device))
    want = _topk_ref(None, None, 12, exclude=ex, rows=rows, scores=scores)
    assert torch.equal(got[1].cpu(), want[1]) and torch.equal(got[0].cpu(), want[0])


@settings(max_examples=40, deadline=None)
@given(b=st.integers(0, 20), n=st.integers(1, 60), d=st.integers(1, 5), k=st.integers(0, 70),
       density=st.floats(0, 1), seed=st.integers(0, 10**6), bs=st.integers(1, 30), ts=st.integers(1, 70))
def test_property_matches_reference(b, n, d, k, density, seed, bs, ts) -> None:
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-3, 4, (b, d), generator=g).float()
    keys = torch.randint(-3, 4, (n, d), generator=g).float()
    ex = random_csr(max(b, 1), n, density, seed=seed)
    got = topk(q, keys, k, exclude=ex if b else None, block_size=bs, tile_size=ts)
    want = _topk_ref(q, keys, k, exclude=ex if b else None)
    assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0])


@pytest.mark.parametrize("kernel", ["gemm", "auto"])
def test_never_materialises_users_by_items(monkeypatch, kernel) -> None:
    """The biggest float buffer topk allocates is one block x tile, not B x n_items (the fused
    kernel allocates none through torch: its scores live in registers)."""
    monkeypatch.setattr(_topk_mod, "_CPU_KERNEL", kernel)
    sizes = []
    real_empty = torch.empty

    def spy(*shape, **kw):
        t = real_empty(*shape, **kw)
        sizes.append(t.numel())
        return t

    monkeypatch.setattr(torch, "empty", spy)
    topk(torch.randn(3000, 8), torch.randn(5000, 8), 10, block_size=256, tile_size=512)
    assert max(sizes, default=0) <= 256 * 512


def test_errors_name_the_argument() -> None:
    q, keys = torch.randn(3, 4), torch.randn(10, 4)
    ex = random_csr(3, 10, 0.2)
    with pytest.raises(TypeError, match="queries must be a float32 tensor, got float64"):
        topk(q.double(), keys, 2)
    with pytest.raises(ValueError, match="keys have dimension 5, queries 4"):
        topk(q, torch.randn(10, 5), 2)
    with pytest.raises(ValueError, match="k must be a non-negative int"):
        topk(q, keys, -1)
    with pytest.raises(ValueError, match="exclude has 9 columns, expected n_items = 10"):
        topk(q, keys, 2, exclude=random_csr(3, 9, 0.2))
    with pytest.raises(ValueError, match="rows holds id 3, expected 0 <= id < 3"):
        topk(q, keys, 2, exclude=ex, rows=torch.tensor([0, 1, 3]))
    with pytest.raises(ValueError, match="rows has 2 entries, expected one per query"):
        topk(q, keys, 2, exclude=ex, rows=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="only 3 rows; pass rows="):
        topk(torch.randn(4, 4), keys, 2, exclude=ex)
    with pytest.raises(ValueError, match="rows is given but exclude is None"):
        topk(q, keys, 2, rows=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="key_bias has 3 entries"):
        topk(q, keys, 2, key_bias=torch.randn(3))
    with pytest.raises(TypeError, match="exclude must be a recfast.CSR"):
        topk(q, keys, 2, exclude=ex.to_scipy())
    with pytest.raises(ValueError, match="queries must be contiguous"):
        topk(torch.randn(4, 3).T, torch.randn(10, 3), 2)
    with pytest.raises(TypeError, match="scores must be a float32"):
        topk_scores(torch.ones(2, 2, dtype=torch.int64), 1)


@pytest.mark.parametrize("threads", [1, 2])
def test_thread_count_does_not_change_results(threads) -> None:
    g = torch.Generator().manual_seed(0)
    q, keys = torch.randn(200, 16, generator=g), torch.randn(3000, 16, generator=g)
    ex = random_csr(200, 3000, 0.05, seed=1)
    a = topk(q, keys, 15, exclude=ex, num_threads=1)
    b = topk(q, keys, 15, exclude=ex, num_threads=threads)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@requires_cuda
def test_cuda_on_a_side_stream_matches_cpu() -> None:
    g = torch.Generator().manual_seed(1)
    q = torch.randint(-3, 4, (600, 8), generator=g).float()
    keys = torch.randint(-3, 4, (20000, 8), generator=g).float()
    ex = random_csr(600, 20000, 0.01, seed=4)
    want = topk(q, keys, 30, exclude=ex)
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        got = topk(q.cuda(), keys.cuda(), 30, exclude=ex.to("cuda"))
    s.synchronize()
    assert torch.equal(got[1].cpu(), want[1]) and torch.equal(got[0].cpu(), want[0])


# ---- CPU kernels: "gemm" (torch.mm tiles + topk_merge) and "fused" (register-blocked scoring with
# selection in the same pass), forced through the internal switch; both must equal the reference.


_FUSED = ["fused-portable"] + (["fused-avx512"] if recfast._C.topk_fused_best_isa() == "avx512" else [])
_CPU_KERNELS = ["gemm", *_FUSED]


@pytest.fixture(params=_CPU_KERNELS)
def cpu_kernel(request, monkeypatch):
    monkeypatch.setattr(_topk_mod, "_CPU_KERNEL", request.param)
    return request.param


@pytest.mark.parametrize("shape", [(70, 530, 9, 7), (100, 1000, 64, 20), (33, 77, 3, 40), (65, 301, 17, 5),
                                   (5, 3, 2, 10), (1, 1, 1, 1), (40, 250, 100, 30), (20, 300, 19, 70),
                                   (30, 90, 5, 100)])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_cpu_kernels_match_reference_exactly(cpu_kernel, shape, index_dtype) -> None:
    """Integer-valued inputs make every score exact whatever the summation order, so ids (ties to the
    lower id), scores and padding must equal the reference bit for bit; d and the row count are not
    multiples of the kernel's register block (32 query lanes x 12 items); k = 70 and 100 take the fused
    kernel's heap (k > 64 rows are not kept sorted), k = 100 > candidates pads."""
    b, n, d, k = shape
    g = torch.Generator().manual_seed(b * 1000 + n)
    q = torch.randint(-2, 3, (b, d), generator=g).float()
    keys = torch.randint(-2, 3, (n, d), generator=g).float()
    bias = torch.randint(-1, 2, (n,), generator=g).float()
    ex = random_csr(b + 3, n, 0.3, seed=b, index_dtype=index_dtype)
    rows = torch.randint(0, b + 3, (b,), generator=g)
    for kw in ({}, {"exclude": ex, "rows": rows}, {"exclude": ex, "rows": rows, "key_bias": bias},
               {"key_bias": bias}):
        got = topk(q, keys, k, **kw)
        want = _topk_ref(q, keys, k, **kw)
        assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0]), kw


def test_cpu_kernels_nan_inf_and_all_excluded(cpu_kernel) -> None:
    """NaN scores are never selected, +inf is, rows whose items are all excluded are padded."""
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    keys = torch.tensor([[float("nan"), 1.0], [2.0, float("inf")], [float("-inf"), 0.0], [1.0, 1.0],
                         [float("inf"), -1.0]])
    ex = recfast.CSR(torch.tensor([0, 0, 0, 5]), torch.tensor([0, 1, 2, 3, 4], dtype=torch.int32), (3, 5))
    got = topk(q, keys, 4, exclude=ex)
    want = _topk_ref(q, keys, 4, exclude=ex)
    assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0])
    assert got[1][2].tolist() == [-1] * 4


def test_cpu_kernels_all_equal_scores_lowest_ids(cpu_kernel) -> None:
    s, i = topk(torch.ones(37, 3), torch.ones(200, 3), 25)
    assert (i == torch.arange(25)).all() and (s == 3).all()


def test_fused_kernels_agree_bit_for_bit_on_float_data() -> None:
    """Random float data: the AVX-512 and portable fused kernels perform the same float operations,
    so scores and ids agree exactly, for any thread count; against the dense reference, the ids
    carry their scores."""
    g = torch.Generator().manual_seed(7)
    q, keys = torch.randn(300, 37, generator=g), torch.randn(2500, 37, generator=g)
    bias = torch.randn(2500, generator=g)
    ex = random_csr(300, 2500, 0.05, seed=3)
    outs = []
    for kind in _FUSED:
        for nt in (1, 2):
            _topk_mod._CPU_KERNEL = kind
            try:
                outs.append(topk(q, keys, 20, exclude=ex, key_bias=bias, num_threads=nt))
            finally:
                _topk_mod._CPU_KERNEL = "auto"
    for s, i in outs[1:]:
        assert torch.equal(s, outs[0][0]) and torch.equal(i, outs[0][1])
    dense = q.double() @ keys.double().T + bias.double()
    _check_against_ref(outs[0], _topk_ref(q, keys, 20, exclude=ex, key_bias=bias), dense)


def test_fused_rejects_an_unknown_isa() -> None:
    import numpy as np

    s, i = np.full((1, 1), -np.inf, np.float32), np.full((1, 1), -1, np.int64)
    with pytest.raises(ValueError, match="isa must be"):
        recfast._C.topk_fused(np.ones((1, 2), np.float32), np.ones((3, 2), np.float32), None, None,
                              np.empty(0, np.int64), np.empty(0, np.int32), s, i, "sse9", 1)
