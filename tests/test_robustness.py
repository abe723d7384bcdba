"""Robustness of every public op (issue 9): fuzzed boundaries, determinism over thread counts,
thread safety and GIL release, bounded memory, and CUDA errors that name the op.

Every fuzz case either equals the op's reference implementation or raises ValueError/TypeError
whose message starts with the op's name and names the offending argument. 64-bit index arithmetic
is in test_int64.py.

Public surface covered: recfast.ops.{sample_negatives, bpr_loss, bpr_sgd_step, bpr_sgd_epoch, spmm,
lightgcn_propagate, edge_dropout, topk, topk_scores}, recfast.graph.normalized_adjacency,
recfast.CSR (constructor with check=True, from_coo, transpose), recfast.eval.Evaluator,
recfast.optim.{SparseSGD, SparseAdagrad, SparseAdam}.
"""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import recfast
from recfast import CSR, _C
from recfast.graph import normalized_adjacency
from recfast.ops import (bpr_loss, bpr_sgd_epoch, bpr_sgd_step, edge_dropout, lightgcn_propagate, sample_negatives,
                         spmm, topk, topk_scores)
from recfast.ops.bpr import _bpr_loss_reference
from recfast.ops.sampling import _sample_negatives_reference
from recfast.ops.spmm import _spmm_reference
from recfast.ops.topk import _topk_reference
from recfast.optim import SparseAdagrad, SparseAdam, SparseSGD, _reference_step
from conftest import random_csr, requires_cuda

FUZZ = settings(max_examples=30, deadline=None)
PUBLIC_OPS = {"sample_negatives", "bpr_loss", "bpr_sgd_step", "bpr_sgd_epoch", "spmm", "lightgcn_propagate",
              "edge_dropout", "topk", "topk_scores"}
SANITIZED = bool(os.environ.get("RECFAST_EXPECT_SANITIZE"))


def test_every_public_op_is_covered() -> None:
    assert set(recfast.ops.__all__) == PUBLIC_OPS, "a new op needs its fuzz, determinism and thread cases here"


# ---------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def raises_named(op: str, *args: str, exc: type | tuple = (ValueError, TypeError)):
    """The block raises ValueError/TypeError whose message starts with ``op:`` and names one of
    ``args``."""
    with pytest.raises(exc) as info:
        yield info
    msg = str(info.value)
    assert msg.startswith(f"{op}:"), msg
    assert not args or any(a in msg for a in args), (msg, args)


def make_csr(mask: np.ndarray, index_dtype: torch.dtype = torch.int32, values: np.ndarray | None = None) -> CSR:
    rows, cols = np.nonzero(mask)
    indptr = np.zeros(mask.shape[0] + 1, dtype=np.int64)
    np.cumsum(mask.sum(1), out=indptr[1:])
    vals = None if values is None else torch.from_numpy(values[rows, cols].astype(np.float32))
    return CSR(torch.from_numpy(indptr), torch.from_numpy(cols).to(index_dtype), mask.shape, vals)


@st.composite
def masks(draw, max_rows: int = 7, max_cols: int = 9, min_rows: int = 0, min_cols: int = 0) -> np.ndarray:
    """Random interaction patterns with the adversarial shapes: empty matrix, empty rows, a row
    with every item, one item."""
    n_rows = draw(st.integers(min_rows, max_rows))
    n_cols = draw(st.integers(min_cols, max_cols))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    density = draw(st.sampled_from([0.0, 0.2, 0.5, 0.9, 1.0]))
    mask = rng.random((n_rows, n_cols)) < density
    if n_rows and draw(st.booleans()):
        mask[rng.integers(n_rows)] = True  # a user who has every item
    if n_rows and draw(st.booleans()):
        mask[rng.integers(n_rows)] = False  # an empty row
    return mask


def ids_strategy(upper: int, max_len: int = 8):
    """Ids mostly in [0, upper), sometimes exactly at the bounds or past them, or negative."""
    valid = st.integers(0, max(upper - 1, 0)) if upper > 0 else st.just(0)
    edge = st.sampled_from([-1, -(2**31), upper, upper + 1, 2**31 - 1, 2**40])
    return st.lists(st.one_of(valid, valid, valid, edge), max_size=max_len)


def in_range(ids: list[int], upper: int) -> bool:
    return all(0 <= i < upper for i in ids)


def poison(t: torch.Tensor, rng: np.random.Generator, rate: float) -> torch.Tensor:
    """Some entries replaced by NaN, +inf or -inf."""
    if rate == 0 or t.numel() == 0:
        return t
    flat = t.reshape(-1).clone()
    hit = torch.from_numpy(rng.random(flat.numel()) < rate)
    specials = torch.tensor([float("nan"), float("inf"), float("-inf")], dtype=t.dtype)
    flat[hit] = specials[torch.from_numpy(rng.integers(0, 3, int(hit.sum())))]
    return flat.reshape(t.shape)


def assert_same(a: torch.Tensor, b: torch.Tensor, **tol) -> None:
    torch.testing.assert_close(a, b, equal_nan=True, **tol)


@contextlib.contextmanager
def omp_threads(n: int):
    """torch.set_num_threads also sets recfast's OpenMP default in this thread (one libgomp)."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        if _C.max_threads() != n:
            pytest.skip("recfast's OpenMP runtime is not torch's here; its default cannot be set from Python")
        yield
    finally:
        torch.set_num_threads(old)


THREADS = sorted({1, 2, 3, os.cpu_count() or 1})


# ---------------------------------------------------------------------------------------------------
# 1. Fuzzed boundaries: reference or a named error
# ---------------------------------------------------------------------------------------------------

@FUZZ
@given(mask=masks(), data=st.data(), k=st.integers(0, 5), replace=st.booleans(), weighted=st.booleans(),
       seed=st.integers(-(2**70), 2**70), idx=st.sampled_from([torch.int32, torch.int64]))
def test_fuzz_sample_negatives(mask, data, k, replace, weighted, seed, idx) -> None:
    csr = make_csr(mask, idx)
    users_l = data.draw(ids_strategy(csr.n_rows))
    dt = data.draw(st.sampled_from([torch.int32, torch.int64]))
    fits32 = all(-(2**31) <= u < 2**31 for u in users_l)
    users = torch.tensor(users_l, dtype=dt if fits32 else torch.int64)
    w = None
    if weighted:
        w = torch.from_numpy(np.random.default_rng(abs(seed) % 2**32).random(csr.n_cols))
        w[: csr.n_cols // 3] = 0.0  # zero-weight items are never drawn
    kwargs = dict(seed=seed, replace=replace, weights=w)
    if not in_range(users_l, csr.n_rows):
        with raises_named("sample_negatives", "users"):
            sample_negatives(csr, users, k, **kwargs)
        return
    try:
        want = _sample_negatives_reference(csr, users.long(), k, **kwargs)
    except ValueError:
        with raises_named("sample_negatives", "user "):
            sample_negatives(csr, users, k, **kwargs)
        return
    got = sample_negatives(csr, users, k, **kwargs)
    assert torch.equal(got, want)


def test_sample_negatives_named_errors() -> None:
    csr = make_csr(np.array([[1, 0, 1], [1, 1, 1]], dtype=bool))
    u = torch.tensor([0])
    cases = [
        (lambda: sample_negatives(csr, u.float(), 1, seed=0), "users"),
        (lambda: sample_negatives(csr, u[None], 1, seed=0), "users"),
        (lambda: sample_negatives(csr.indptr, u, 1, seed=0), "csr"),
        (lambda: sample_negatives(csr, u, -1, seed=0), "num_negatives"),
        (lambda: sample_negatives(csr, u, 1.0, seed=0), "num_negatives"),
        (lambda: sample_negatives(csr, u, 1, seed=0.5), "seed"),
        (lambda: sample_negatives(csr, u, 1, seed=0, row_offset=-1), "row_offset"),
        (lambda: sample_negatives(csr, u, 1, seed=0, row_offset=2**63), "row_offset"),
        (lambda: sample_negatives(csr, u, 1, seed=0, num_threads=-1), "num_threads"),
        (lambda: sample_negatives(csr, u, 1, seed=0, num_threads=10**6), "num_threads"),
        (lambda: sample_negatives(csr, u, 1, seed=0, num_threads="2"), "num_threads"),
        (lambda: sample_negatives(csr, u, 1, seed=0, weights=torch.ones(3, dtype=torch.int64)), "weights"),
        (lambda: sample_negatives(csr, u, 1, seed=0, weights=torch.ones(4)), "weights"),
        (lambda: sample_negatives(csr, u, 1, seed=0, weights=torch.tensor([1.0, float("nan"), 1.0])), "weights"),
        (lambda: sample_negatives(csr, u, 1, seed=0, weights=torch.tensor([1.0, -1.0, 1.0])), "weights"),
        (lambda: sample_negatives(csr, u, 2, seed=0, replace=False), "num_negatives"),
        (lambda: sample_negatives(csr, torch.tensor([1]), 1, seed=0), "user 1"),
    ]
    for fn, arg in cases:
        with raises_named("sample_negatives", arg):
            fn()
    # a user with every item is fine when no negative is asked for
    assert sample_negatives(csr, torch.tensor([1]), 0, seed=0).shape == (1, 0)


def test_sample_negatives_weights_cache_never_serves_another_tensor() -> None:
    """A new weights tensor at the address of an old one (same data_ptr, version 0) once got the old
    tensor's cached prefix sums: here item 0 has zero weight and must never be drawn."""
    csr = make_csr(np.array([[1, 1], [0, 1]], dtype=bool))
    a = np.ones(2)
    assert sample_negatives(csr, torch.tensor([1]), 1, seed=0, weights=torch.from_numpy(a)).tolist() == [[0]]
    a[:] = [0.0, 1.0]
    with raises_named("sample_negatives", "user 1 has no weighted mass"):
        sample_negatives(csr, torch.tensor([1]), 1, seed=0, weights=torch.from_numpy(a))


@FUZZ
@given(data=st.data(), n_users=st.integers(1, 6), n_items=st.integers(1, 7), d=st.sampled_from([0, 1, 3, 8]),
       K=st.integers(1, 3), dtype=st.sampled_from([torch.float32, torch.float64]), bias=st.booleans(),
       l2=st.sampled_from([0.0, 0.1]), reduction=st.sampled_from(["mean", "sum", "none"]),
       nan_rate=st.sampled_from([0.0, 0.0, 0.1, 0.5]), sparse=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_fuzz_bpr_loss(data, n_users, n_items, d, K, dtype, bias, l2, reduction, nan_rate, sparse, seed) -> None:
    rng = np.random.default_rng(seed)
    U = poison(torch.from_numpy(rng.standard_normal((n_users, d))).to(dtype), rng, nan_rate)
    V = poison(torch.from_numpy(rng.standard_normal((n_items, d))).to(dtype), rng, nan_rate)
    b = torch.from_numpy(rng.standard_normal(n_items)).to(dtype) if bias else None
    B = data.draw(st.integers(0, 6))
    users_l = data.draw(ids_strategy(n_users, B).filter(lambda x: len(x) == B) | st.just([0] * B))
    pos_l = [int(x) for x in rng.integers(0, n_items, B)]
    neg = torch.from_numpy(rng.integers(0, n_items, (B, K)))
    if data.draw(st.booleans()) and B:
        neg[rng.integers(B), 0] = data.draw(st.sampled_from([-1, n_items, n_items + 7]))
    users, pos = torch.tensor(users_l, dtype=torch.int64), torch.tensor(pos_l, dtype=torch.int64)
    U.requires_grad_(True)
    V.requires_grad_(True)
    kw = dict(item_bias=b, l2=l2, reduction=reduction)
    if not in_range(users_l, n_users):
        with raises_named("bpr_loss", "users"):
            bpr_loss(U, V, users, pos, neg, sparse_grad=sparse, **kw)
        return
    if not bool(((neg >= 0) & (neg < n_items)).all()):
        with raises_named("bpr_loss", "neg_items"):
            bpr_loss(U, V, users, pos, neg, sparse_grad=sparse, **kw)
        return
    got = bpr_loss(U, V, users, pos, neg, sparse_grad=sparse, **kw)
    want = _bpr_loss_reference(U, V, users, pos, neg, **kw)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-10)
    assert got.shape == want.shape and got.dtype == dtype
    assert_same(got.detach(), want.detach(), **tol)
    finite = bool(torch.isfinite(U).all() and torch.isfinite(V).all())
    if finite and B:
        g = torch.randn(got.shape, dtype=dtype) if reduction == "none" else torch.tensor(1.0, dtype=dtype)
        gU, gV = torch.autograd.grad(got, (U, V), g)
        wU, wV = torch.autograd.grad(want, (U, V), g)
        assert_same(gU.to_dense() if gU.is_sparse else gU, wU, **tol)
        assert_same(gV.to_dense() if gV.is_sparse else gV, wV, **tol)


def test_bpr_named_errors() -> None:
    U, V = torch.randn(3, 4), torch.randn(5, 4)
    u, i, j = torch.tensor([0, 1]), torch.tensor([1, 2]), torch.tensor([3, 4])
    cases = [
        (lambda: bpr_loss(U.half(), V.half(), u, i, j), "user_emb"),
        (lambda: bpr_loss(U, V.double(), u, i, j), "item_emb"),
        (lambda: bpr_loss(U.t().contiguous().t()[:, :2], V[:, :2], u, i, j), "user_emb"),
        (lambda: bpr_loss(U, V, u, i, j, l2=float("nan")), "l2"),
        (lambda: bpr_loss(U, V, u, i, j, l2=float("inf")), "l2"),
        (lambda: bpr_loss(U, V, u, i, j, l2=-1.0), "l2"),
        (lambda: bpr_loss(U, V, u, i, torch.zeros(2, 0, dtype=torch.long)), "neg_items"),
        (lambda: bpr_loss(U, V, u[:1], i, j), "users"),
        (lambda: bpr_loss(U, V, u, i, j, item_bias=torch.zeros(5, dtype=torch.float64)), "item_bias"),
        (lambda: bpr_loss(U, V, u.float(), i, j), "users"),
    ]
    for fn, arg in cases:
        with raises_named("bpr_loss", arg):
            fn()
    # empty batch: zero loss, zero gradients
    U.requires_grad_(True)
    e = torch.empty(0, dtype=torch.long)
    loss = bpr_loss(U, V, e, e, e)
    loss.backward()
    assert float(loss.detach()) == 0.0 and not U.grad.any()


def test_bpr_sgd_step_named_errors_and_reference() -> None:
    csr = make_csr(np.array([[1, 0, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=bool))
    U, V = torch.randn(3, 4), torch.randn(4, 4)
    u, i = torch.tensor([0, 2]), torch.tensor([0, 3])
    step = lambda **kw: bpr_sgd_step(U.clone(), V.clone(), csr, **{**dict(users=u, pos_items=i, lr=0.1, seed=0), **kw})
    for kw, arg in [(dict(lr="x"), "lr"), (dict(lr=float("nan")), "lr"), (dict(l2=-1.0), "l2"),
                    (dict(seed=0.5), "seed"), (dict(row_offset=-1), "row_offset"), (dict(num_threads=-2), "num_threads"),
                    (dict(num_negatives=0), "num_negatives"), (dict(users=torch.tensor([3, 0])), "users"),
                    (dict(pos_items=torch.tensor([0, -1])), "pos_items"), (dict(users=torch.tensor([1, 0])), "user 1"),
                    (dict(item_bias=torch.zeros(4, dtype=torch.float64)), "item_bias")]:
        with raises_named("bpr_sgd_step", arg):
            step(**kw)
    # One example on one thread equals its formula from bpr_loss's gradient and sample_negatives' draw.
    Uc, Vc = U.clone(), V.clone()
    loss = bpr_sgd_step(Uc, Vc, csr, u[:1], i[:1], lr=0.1, seed=5, num_threads=1)
    j = sample_negatives(csr, u[:1], 1, seed=5)
    U0, V0 = U.clone().requires_grad_(True), V.clone().requires_grad_(True)
    ref = _bpr_loss_reference(U0, V0, u[:1], i[:1], j, reduction="sum")
    ref.backward()
    assert math.isclose(loss, float(ref), rel_tol=1e-5)
    torch.testing.assert_close(Uc, U - 0.1 * U0.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(Vc, V - 0.1 * V0.grad, rtol=1e-5, atol=1e-6)


@FUZZ
@given(mask=masks(max_rows=6, max_cols=7), d=st.sampled_from([1, 5, 32, 64]), K=st.integers(1, 3),
       bias=st.booleans(), shuffle=st.booleans(), span=st.tuples(st.floats(0, 1), st.floats(0, 1)),
       seed=st.integers(0, 2**64 - 1))
def test_fuzz_bpr_sgd_epoch(mask, d, K, bias, shuffle, span, seed) -> None:
    """One thread equals the sequential float64 reference of test_bpr.py (the same order, the same
    negatives), or both find the same user without a negative."""
    from test_bpr import _sgd_epoch_ref

    csr = make_csr(mask)
    g = torch.Generator().manual_seed(seed % 2**32)
    U = torch.randn(csr.n_rows, d, generator=g) * 0.3
    V = torch.randn(csr.n_cols, d, generator=g) * 0.3
    b = torch.randn(csr.n_cols, generator=g) * 0.1 if bias else None
    start, stop = sorted(int(f * csr.nnz) for f in span)
    Ud, Vd, bd = U.double(), V.double(), None if b is None else b.double()
    try:
        want = _sgd_epoch_ref(Ud, Vd, bd, csr, start, stop, lr=0.1, l2=0.01, K=K, seed=seed, shuffle=shuffle)
    except ValueError as e:  # the reference's sample_negatives found a user with every item
        assert "has no negative" in str(e) or "no negative" in str(e), e
        with raises_named("bpr_sgd_epoch", "no negative item left"):
            bpr_sgd_epoch(U, V, csr, lr=0.1, l2=0.01, num_negatives=K, seed=seed, item_bias=b, start=start,
                          stop=stop, shuffle=shuffle, num_threads=1)
        return
    total, n = bpr_sgd_epoch(U, V, csr, lr=0.1, l2=0.01, num_negatives=K, seed=seed, item_bias=b, start=start,
                             stop=stop, shuffle=shuffle, num_threads=1)
    assert n == stop - start
    assert total == pytest.approx(want, rel=1e-4, abs=1e-5)
    torch.testing.assert_close(U, Ud.float(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(V, Vd.float(), rtol=1e-4, atol=1e-5)


def test_bpr_sgd_epoch_named_errors() -> None:
    csr = make_csr(np.array([[1, 0, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=bool))
    U, V = torch.randn(3, 4), torch.randn(4, 4)
    epoch = lambda **kw: bpr_sgd_epoch(**{**dict(user_emb=U.clone(), item_emb=V.clone(), csr=csr, lr=0.1, seed=0),
                                          **kw})
    for kw, arg in [(dict(lr="x"), "lr"), (dict(lr=float("inf")), "lr"), (dict(l2=float("nan")), "l2"),
                    (dict(seed=0.5), "seed"), (dict(seed="1"), "seed"), (dict(num_threads=-1), "num_threads"),
                    (dict(num_threads=10**6), "num_threads"), (dict(num_negatives=0), "num_negatives"),
                    (dict(start=2, stop=1), "start"), (dict(stop=csr.nnz + 1), "stop"),
                    (dict(item_emb=torch.randn(4, 3)), "item_emb"), (dict(user_emb=U.double()), "user_emb"),
                    (dict(user_emb=U.t()), "user_emb"), (dict(csr=csr.to_scipy()), "csr"),
                    (dict(item_bias=torch.zeros(5)), "item_bias"), (dict(shuffle=False), "user 1")]:
        with raises_named("bpr_sgd_epoch", arg):
            epoch(**kw)


def _dense(csr: CSR, dtype=torch.float64) -> torch.Tensor:
    return torch.from_numpy(csr.to_scipy().toarray()).to(dtype)


@FUZZ
@given(mask=masks(max_rows=6, max_cols=6), d=st.sampled_from([0, 1, 5, 16]), dtype=st.sampled_from([torch.float32,
       torch.float64]), with_values=st.booleans(), nan_rate=st.sampled_from([0.0, 0.0, 0.2]),
       noncontig=st.booleans(), idx=st.sampled_from([torch.int32, torch.int64]), seed=st.integers(0, 2**32 - 1))
def test_fuzz_spmm(mask, d, dtype, with_values, nan_rate, noncontig, idx, seed) -> None:
    rng = np.random.default_rng(seed)
    csr = make_csr(mask, idx, rng.standard_normal(mask.shape) if with_values else None)
    x = poison(torch.from_numpy(rng.standard_normal((csr.n_cols, d))).to(dtype), rng, nan_rate)
    if noncontig:
        x = x.t().contiguous().t()  # same values, column-major
    got = spmm(csr, x)
    want = _spmm_reference(csr.indptr, csr.indices, csr.values, x.contiguous(), csr.n_rows)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else {}
    assert got.shape == (csr.n_rows, d) and got.dtype == dtype
    assert_same(got, want, **tol)
    if nan_rate == 0:
        x.requires_grad_(True)
        g = torch.from_numpy(rng.standard_normal((csr.n_rows, d))).to(dtype)
        (gx,) = torch.autograd.grad(spmm(csr, x), x, g)
        assert_same(gx, (_dense(csr, dtype).T @ g), **tol)


@FUZZ
@given(mask=masks(max_rows=5, max_cols=5), layers=st.integers(0, 3), d=st.sampled_from([1, 4, 16]),
       dtype=st.sampled_from([torch.float32, torch.float64]), nan_rate=st.sampled_from([0.0, 0.0, 0.2]),
       norm=st.sampled_from(["sym", "left", "none"]), self_loops=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_fuzz_graph_and_lightgcn(mask, layers, d, dtype, nan_rate, norm, self_loops, seed) -> None:
    rng = np.random.default_rng(seed)
    r = make_csr(mask)
    adj = normalized_adjacency(r, normalization=norm, self_loops=self_loops)
    # reference adjacency, in numpy
    n_u, n_i = mask.shape
    A = np.zeros((n_u + n_i, n_u + n_i))
    A[:n_u, n_u:] = mask
    A[n_u:, :n_u] = mask.T
    if self_loops:
        A += np.eye(n_u + n_i)
    deg = A.sum(1)
    inv = np.divide(1.0, deg, out=np.zeros_like(deg), where=deg > 0)
    A_ref = {"none": A, "left": inv[:, None] * A, "sym": np.sqrt(inv)[:, None] * A * np.sqrt(inv)[None, :]}[norm]
    adj.check()
    np.testing.assert_allclose(adj.to_scipy().toarray(), A_ref, rtol=1e-6)
    assert np.isfinite(adj.values.numpy()).all()
    # propagation against sum_l w_l A^l E
    E = poison(torch.from_numpy(rng.standard_normal((n_u + n_i, d))).to(dtype), rng, nan_rate)
    w = [float(x) for x in rng.random(layers + 1)]
    got = lightgcn_propagate(adj, E, layers, layer_weights=w)
    want, cur = w[0] * E, E
    for l in range(1, layers + 1):
        cur = _spmm_reference(adj.indptr, adj.indices, adj.values, cur, adj.n_rows)
        want = want + w[l] * cur
    assert_same(got, want, **(dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else {}))
    if nan_rate == 0 and (n_u + n_i):
        E.requires_grad_(True)
        g = torch.randn(n_u + n_i, d, dtype=dtype)
        (gE,) = torch.autograd.grad(lightgcn_propagate(adj, E, layers, layer_weights=w), E, g)
        At = torch.from_numpy(A_ref.T).to(dtype)
        want_g, cur = w[0] * g, g
        for l in range(1, layers + 1):
            cur = At @ cur
            want_g = want_g + w[l] * cur
        assert_same(gE, want_g, **(dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else {}))


def test_spmm_graph_named_errors() -> None:
    a = make_csr(np.array([[1, 0], [1, 1]], dtype=bool))
    cases = [
        ("spmm", lambda: spmm(a, torch.ones(2, 2, dtype=torch.int64)), "dense"),
        ("spmm", lambda: spmm(a, torch.ones(2, 2).half()), "dense"),
        ("spmm", lambda: spmm(a, torch.ones(3, 2)), "dense"),
        ("spmm", lambda: spmm(a, torch.ones(2)), "dense"),
        ("spmm", lambda: spmm(a.to_scipy(), torch.ones(2, 2)), "matrix"),
        ("lightgcn_propagate", lambda: lightgcn_propagate(a, torch.ones(2, 2), -1), "num_layers"),
        ("lightgcn_propagate", lambda: lightgcn_propagate(a, torch.ones(2, 2), 1.0), "num_layers"),
        ("lightgcn_propagate", lambda: lightgcn_propagate(a, torch.ones(2, 2), 1, layer_weights=[1.0]),
         "layer_weights"),
        ("lightgcn_propagate", lambda: lightgcn_propagate(a, torch.ones(2, 2), 1, layer_weights=["a", 1]),
         "layer_weights"),
        ("lightgcn_propagate", lambda: lightgcn_propagate(make_csr(np.ones((1, 2), bool)), torch.ones(2, 2), 1),
         "adj"),
        ("edge_dropout", lambda: edge_dropout(a, 1.0, seed=0), "p"),
        ("edge_dropout", lambda: edge_dropout(a, float("nan"), seed=0), "p"),
        ("edge_dropout", lambda: edge_dropout(a, 0.5, seed=0.5), "seed"),
        ("edge_dropout", lambda: edge_dropout(a, 0.5, seed="1"), "seed"),
        ("normalized_adjacency", lambda: normalized_adjacency(a, normalization="rw"), "normalization"),
        ("normalized_adjacency", lambda: normalized_adjacency(a.indptr), "train_csr"),
    ]
    for op, fn, arg in cases:
        with raises_named(op, arg):
            fn()


@FUZZ
@given(mask=masks(), p=st.sampled_from([0.0, 0.1, 0.5, 0.99]), seed=st.integers(-(2**70), 2**70),
       with_values=st.booleans())
def test_fuzz_edge_dropout(mask, p, seed, with_values) -> None:
    rng = np.random.default_rng(0)
    csr = make_csr(mask, values=rng.standard_normal(mask.shape) if with_values else None)
    out = edge_dropout(csr, p, seed=seed)
    out.check()
    assert out.shape == csr.shape
    kept, full = _dense(out), _dense(csr)
    on = kept != 0
    assert bool(((full != 0) | ~on).all()), "dropout added entries"
    torch.testing.assert_close(kept[on], full[on] / (1 - p), rtol=1e-6, atol=1e-6)
    again = edge_dropout(csr, p, seed=seed)
    assert torch.equal(again.indptr, out.indptr) and torch.equal(again.indices, out.indices)


@FUZZ
@given(mask=masks(max_rows=6, max_cols=9, min_rows=1), data=st.data(), k=st.sampled_from([0, 1, 3, 9, 20]),
       d=st.sampled_from([1, 3]), nan_rate=st.sampled_from([0.0, 0.0, 0.1, 0.3]), bias=st.booleans(),
       use_exclude=st.booleans(), block=st.sampled_from([1, 2, 512]), tile=st.sampled_from([1, 4, 1024]),
       idx=st.sampled_from([torch.int32, torch.int64]), seed=st.integers(0, 2**32 - 1))
def test_fuzz_topk(mask, data, k, d, nan_rate, bias, use_exclude, block, tile, idx, seed) -> None:
    """Integer-valued embeddings make every score exact, so ids must equal the reference's (NaN
    and inf included: inf * 0 is NaN in both)."""
    rng = np.random.default_rng(seed)
    n_items = mask.shape[1]
    B = data.draw(st.integers(0, 6))
    q = poison(torch.from_numpy(rng.integers(-2, 3, (B, d))).float(), rng, nan_rate)
    keys = poison(torch.from_numpy(rng.integers(-2, 3, (n_items, d))).float(), rng, nan_rate)
    kb = torch.from_numpy(rng.integers(-2, 3, n_items)).float() if bias else None
    ex = make_csr(mask, idx) if use_exclude else None
    rows = None
    if use_exclude:
        rows_l = data.draw(st.lists(st.integers(0, mask.shape[0] - 1), min_size=B, max_size=B) |
                           st.lists(st.sampled_from([-1, mask.shape[0]]), min_size=B, max_size=B))
        rows = torch.tensor(rows_l, dtype=torch.int64)
        if B and not in_range(rows_l, mask.shape[0]):
            with raises_named("topk", "rows"):
                topk(q, keys, k, exclude=ex, rows=rows, key_bias=kb)
            return
    s, i = topk(q, keys, k, exclude=ex, rows=rows, key_bias=kb, block_size=block, tile_size=tile)
    ws, wi = _topk_reference(q, keys, k, exclude=ex, rows=rows, key_bias=kb)
    assert torch.equal(i, wi) and torch.equal(s, ws)
    # topk_scores on the same scores (computed exactly in float32: small integers)
    scores = (q.double() @ keys.double().T + (kb.double() if bias else 0)).float() if B else torch.zeros(0, n_items)
    s2, i2 = topk_scores(scores.contiguous(), k, exclude=ex, rows=rows)
    ws2, wi2 = _topk_reference(None, None, k, exclude=ex, rows=rows, scores=scores)
    assert torch.equal(i2, wi2) and torch.equal(s2, ws2)


def test_topk_named_errors() -> None:
    q, keys = torch.randn(2, 3), torch.randn(5, 3)
    ex = make_csr(np.eye(3, 5, dtype=bool))
    cases = [
        ("topk", lambda: topk(q, keys, -1), "k"),
        ("topk", lambda: topk(q, keys, 2.0), "k"),
        ("topk", lambda: topk(q, keys, True), "k"),
        ("topk", lambda: topk(q.double(), keys, 2), "queries"),
        ("topk", lambda: topk(q, keys.double(), 2), "keys"),
        ("topk", lambda: topk(q, keys[:, :2], 2), "keys"),
        ("topk", lambda: topk(torch.randn(3, 2).t(), keys[:, :3], 2), "queries"),
        ("topk", lambda: topk(q, keys, 2, key_bias=torch.randn(4)), "key_bias"),
        ("topk", lambda: topk(q, keys, 2, key_bias=torch.randn(10)[::2]), "key_bias"),
        ("topk", lambda: topk(q, keys, 2, block_size=0), "block_size"),
        ("topk", lambda: topk(q, keys, 2, tile_size=2.5), "tile_size"),
        ("topk", lambda: topk(q, keys, 2, num_threads=-1), "num_threads"),
        ("topk", lambda: topk(q, keys, 2, num_threads=2**40), "num_threads"),
        ("topk", lambda: topk(q, keys, 2, exclude=make_csr(np.eye(3, 4, dtype=bool))), "exclude"),
        ("topk", lambda: topk(q, keys, 2, exclude=ex, rows=torch.tensor([0, 3])), "rows"),
        ("topk", lambda: topk(q, keys, 2, exclude=ex, rows=torch.tensor([0])), "rows"),
        ("topk", lambda: topk(q, keys, 2, rows=torch.tensor([0, 1])), "rows"),
        ("topk", lambda: topk(torch.randn(4, 3), keys, 2, exclude=ex), "exclude"),
        ("topk_scores", lambda: topk_scores(torch.randn(2, 5).double(), 2), "scores"),
        ("topk_scores", lambda: topk_scores(torch.randn(5, 2).t(), 2), "scores"),
        ("topk_scores", lambda: topk_scores(torch.randn(2, 5), "2"), "k"),
        ("topk_scores", lambda: topk_scores(torch.randn(2, 5), 2, num_threads=1.5), "num_threads"),
        ("topk_scores", lambda: topk_scores(torch.randn(2, 5), 2, exclude=ex, rows=torch.tensor([-1, 0])), "rows"),
    ]
    for op, fn, arg in cases:
        with raises_named(op, arg):
            fn()


@FUZZ
@given(mask=masks(max_rows=6, max_cols=8, min_rows=1, min_cols=1), data=st.data(),
       corruption=st.sampled_from(["none", "duplicate", "unsorted", "past_end", "at_end", "negative", "indptr_dec",
                                   "indptr_start", "indptr_end"]),
       idx=st.sampled_from([torch.int32, torch.int64]))
def test_fuzz_csr_check(mask, data, corruption, idx) -> None:
    m = make_csr(mask, idx)
    indptr, indices = m.indptr.clone(), m.indices.clone()
    n_cols = m.n_cols
    lens = m.row_lengths()
    long_rows = torch.nonzero(lens >= 2).squeeze(1).tolist()
    any_rows = torch.nonzero(lens >= 1).squeeze(1).tolist()
    expect = {"none": None, "duplicate": "indices", "unsorted": "indices", "past_end": "indices",
              "at_end": "indices", "negative": "indices", "indptr_dec": "indptr", "indptr_start": "indptr",
              "indptr_end": "indptr"}[corruption]
    if corruption in ("duplicate", "unsorted"):
        if not long_rows:
            return
        r = data.draw(st.sampled_from(long_rows))
        a = int(indptr[r])
        if corruption == "duplicate":
            indices[a + 1] = indices[a]
        else:
            indices[a], indices[a + 1] = indices[a + 1].clone(), indices[a].clone()
    elif corruption in ("past_end", "at_end", "negative"):
        if not any_rows:
            return
        p = data.draw(st.integers(0, int(indptr[-1]) - 1))
        indices[p] = {"past_end": n_cols + 5, "at_end": n_cols, "negative": -1}[corruption]
    elif corruption == "indptr_dec":
        if m.n_rows < 2 or int(indptr[-1]) == 0:
            return
        r = data.draw(st.integers(1, m.n_rows - 1))
        indptr[r] = int(indptr[-1]) + 1
    elif corruption == "indptr_start":
        indptr[0] = -1 if int(indptr[1]) >= 0 else 1
    elif corruption == "indptr_end":
        indptr[-1] += 1
    if expect is None:
        c = CSR(indptr, indices, m.shape)
        assert (c.to_scipy() != m.to_scipy()).nnz == 0
        assert (c.transpose().to_scipy() != m.to_scipy().T).nnz == 0
        return
    with raises_named("CSR", expect):
        CSR(indptr, indices, m.shape, check=True)


def test_csr_constructor_named_errors() -> None:
    ip, ix = torch.tensor([0, 2]), torch.tensor([0, 1], dtype=torch.int32)
    for fn, arg in [
        (lambda: CSR(ip.int(), ix, (1, 3)), "indptr"),
        (lambda: CSR(ip.float(), ix, (1, 3)), "indptr"),
        (lambda: CSR(ip, ix.float(), (1, 3)), "indices"),
        (lambda: CSR(ip, ix, (2, 3)), "indptr"),
        (lambda: CSR(ip, ix, (1, -3)), "shape"),
        (lambda: CSR(ip, ix, (1,)), "shape"),
        (lambda: CSR(ip, ix, (1, 3), torch.ones(2, dtype=torch.float64)), "values"),
        (lambda: CSR(ip, ix, (1, 3), torch.ones(3)), "values"),
        (lambda: CSR(ip, ix, (1, 2**33)), "int32"),
        (lambda: CSR(ip, ix[:, None], (1, 3)), "indices"),
    ]:
        with raises_named("CSR", arg):
            fn()
    for fn, arg in [
        (lambda: CSR.from_coo(torch.tensor([0.0]), torch.tensor([1])), "rows"),
        (lambda: CSR.from_coo(torch.tensor([0, -1]), torch.tensor([1, 1])), "rows"),
        (lambda: CSR.from_coo(torch.tensor([0]), torch.tensor([3]), shape=(1, 3)), "cols"),
        (lambda: CSR.from_coo(torch.tensor([0, 1]), torch.tensor([3])), "cols"),
        (lambda: CSR.from_coo(torch.tensor([0]), torch.tensor([1]), shape=(1.0, 3)), "shape"),
        (lambda: CSR.from_coo(torch.tensor([0]), torch.tensor([1]), duplicates="max"), "duplicates"),
    ]:
        with raises_named("CSR.from_coo", arg):
            fn()


def _ranking_reference(train: CSR, test: CSR, U: torch.Tensor, V: torch.Tensor, ks) -> dict[str, float]:
    users = torch.nonzero(test.row_lengths() > 0).squeeze(1)
    _, ids = _topk_reference(U[users], V, max(ks), exclude=train, rows=users)
    out = {}
    for k in ks:
        acc = {m: [] for m in ("recall", "precision", "hit", "ndcg", "mrr", "map")}
        for b, u in enumerate(users.tolist()):
            rel = set(test.row(u).tolist())
            hits = [1.0 if x in rel else 0.0 for x in ids[b, :k].tolist()]
            n_hit = sum(hits)
            acc["recall"].append(n_hit / len(rel))
            acc["precision"].append(n_hit / k)
            acc["hit"].append(float(n_hit > 0))
            dcg = sum(h / math.log2(r + 2) for r, h in enumerate(hits))
            acc["ndcg"].append(dcg / sum(1 / math.log2(r + 2) for r in range(min(len(rel), k))))
            first = next((r for r, h in enumerate(hits) if h), None)
            acc["mrr"].append(0.0 if first is None else 1 / (first + 1))
            prec = [sum(hits[: r + 1]) / (r + 1) * h for r, h in enumerate(hits)]
            acc["map"].append(sum(prec) / min(len(rel), k))
        for m, v in acc.items():
            out[f"{m}@{k}"] = float(np.mean(v)) if v else 0.0
    return out


@settings(max_examples=20, deadline=None)
@given(train_mask=masks(max_rows=6, max_cols=8, min_rows=1, min_cols=1), seed=st.integers(0, 2**32 - 1),
       ks=st.sampled_from([(1,), (3, 20), (2, 5)]), batch=st.sampled_from([1, 2, 4096]))
def test_fuzz_evaluator(train_mask, seed, ks, batch) -> None:
    rng = np.random.default_rng(seed)
    test_mask = (rng.random(train_mask.shape) < 0.4) & ~train_mask
    train, test = make_csr(train_mask), make_csr(test_mask)
    U = torch.from_numpy(rng.integers(-2, 3, (train.n_rows, 3))).float()
    V = torch.from_numpy(rng.integers(-2, 3, (train.n_cols, 3))).float()
    ev = recfast.eval.Evaluator(train, test, ks=ks, batch_size=batch)
    got = ev.evaluate(user_emb=U, item_emb=V)
    want = _ranking_reference(train, test, U, V, ks)
    assert got.keys() == want.keys()
    for m in want:
        assert math.isclose(got[m], want[m], rel_tol=1e-9, abs_tol=1e-12), (m, got[m], want[m])

    class Dense:  # the topk_scores path must agree with the embedding path
        def score_users(self, users):
            return U[users] @ V.T

    assert ev.evaluate(Dense()) == got


def test_evaluator_named_errors() -> None:
    a = make_csr(np.eye(3, 4, dtype=bool))
    E = recfast.eval.Evaluator
    for fn in [lambda: E(a, make_csr(np.eye(3, 5, dtype=bool))), lambda: E(a, a, ks=(0,)), lambda: E(a, a, ks=()),
               lambda: E(a, a, metrics=("recal",)), lambda: E(a, a, batch_size=0), lambda: E(a, a, protocol="x"),
               lambda: E(a.indptr, a), lambda: E(a, a, exclude=[make_csr(np.eye(2, 4, dtype=bool))])]:
        with raises_named("Evaluator"):
            fn()
    ev = E(a, a, ks=(2,))
    with raises_named("Evaluator.evaluate", "embeddings"):
        ev.evaluate(user_emb=torch.randn(2, 3), item_emb=torch.randn(4, 3))
    with raises_named("Evaluator.evaluate", "users"):
        ev.evaluate(user_emb=torch.randn(3, 3), item_emb=torch.randn(4, 3), users=torch.tensor([3]))


@FUZZ
@given(n=st.integers(1, 6), d=st.sampled_from([1, 4]), nnz=st.integers(0, 12), data=st.data(),
       kind=st.sampled_from(["sgd", "adagrad", "adam"]), dense=st.booleans(), wd=st.sampled_from([0.0, 0.1]),
       dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 2**32 - 1))
def test_fuzz_sparse_optimizers(n, d, nnz, data, kind, dense, wd, dtype, seed) -> None:
    """Two steps with repeated (uncoalesced) rows equal the reference step on the coalesced gradient."""
    rng = np.random.default_rng(seed)
    cls = {"sgd": SparseSGD, "adagrad": SparseAdagrad, "adam": SparseAdam}[kind]
    p = torch.nn.Parameter(torch.from_numpy(rng.standard_normal((n, d))).to(dtype))
    opt = cls([p], lr=0.1, weight_decay=wd)
    ref = p.detach().clone()
    states = [torch.zeros_like(ref) for _ in cls._states] + [None] * (2 - len(cls._states))
    for step in (1, 2):
        rows = torch.from_numpy(rng.integers(0, n, nnz))
        vals = torch.from_numpy(rng.standard_normal((nnz, d))).to(dtype)
        g = torch.sparse_coo_tensor(rows[None], vals, (n, d))
        p.grad = g.to_dense() if dense else g
        opt.step()
        gc = g.coalesce()
        r, v = (torch.arange(n), g.to_dense()) if dense else (gc.indices()[0], gc.values())
        beta1, beta2 = 0.9, 0.999
        h = (0.1, wd, beta1, beta2, 1e-8 if kind == "adam" else 1e-10,
             1 - beta1**step if kind == "adam" else 1.0, 1 - beta2**step if kind == "adam" else 1.0)
        _reference_step(kind, h, ref, states, r, v)
        torch.testing.assert_close(p.detach(), ref, rtol=1e-6, atol=1e-6)


def test_sparse_optimizer_named_errors() -> None:
    for cls in (SparseSGD, SparseAdagrad, SparseAdam):
        with raises_named(cls.__name__, "lr"):
            cls([torch.nn.Parameter(torch.zeros(2, 2))], lr=0.0)
        with raises_named(cls.__name__, "weight_decay"):
            cls([torch.nn.Parameter(torch.zeros(2, 2))], lr=0.1, weight_decay=-1.0)
        p = torch.nn.Parameter(torch.zeros(2, 2, dtype=torch.float16))
        p.grad = torch.ones_like(p)
        with raises_named(cls.__name__, "parameters"):
            cls([p], lr=0.1).step()
        q = torch.nn.Parameter(torch.zeros(2, 4)[:, ::2])
        q.grad = torch.ones_like(q)
        with raises_named(cls.__name__, "contiguous"):
            cls([q], lr=0.1).step()
    with raises_named("SparseAdam", "betas"):
        SparseAdam([torch.nn.Parameter(torch.zeros(2, 2))], betas=(1.0, 0.9))


# ---------------------------------------------------------------------------------------------------
# 2. Determinism: the same output for 1, 2, 3 and all threads, and across repeated runs
# ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def big():
    """Large enough for OpenMP to split every kernel's loop over several threads."""
    train = random_csr(3000, 400, 0.03, seed=11)
    g = torch.Generator().manual_seed(0)
    return dict(train=train, adj=normalized_adjacency(train), U=torch.randn(3000, 16, generator=g),
                V=torch.randn(400, 16, generator=g), users=torch.randint(0, 3000, (10000,), generator=g),
                pos=torch.randint(0, 400, (10000,), generator=g), neg=torch.randint(0, 400, (10000, 3), generator=g),
                weights=torch.rand(400, generator=g, dtype=torch.float64),
                test=random_csr(3000, 400, 0.01, seed=12))


def _run_all(big, nt: int) -> dict[str, object]:
    """Every op once; nt goes to the ops' num_threads where they have one (the rest read the
    OpenMP default, which the caller sets)."""
    out: dict[str, object] = {}
    tr, users = big["train"], big["users"]
    out["sample"] = sample_negatives(tr, users, 4, seed=3, num_threads=nt)
    out["sample_distinct"] = sample_negatives(tr, users[:2000], 20, seed=3, replace=False, num_threads=nt)
    out["sample_weighted"] = sample_negatives(tr, users, 2, seed=3, weights=big["weights"], num_threads=nt)
    out["sample_weighted_distinct"] = sample_negatives(tr, users[:1000], 5, seed=3, weights=big["weights"],
                                                       replace=False, num_threads=nt)
    U = big["U"].clone().requires_grad_(True)
    V = big["V"].clone().requires_grad_(True)
    for sparse in (False, True):
        loss = bpr_loss(U, V, users, big["pos"], big["neg"], l2=0.01, sparse_grad=sparse)
        gU, gV = torch.autograd.grad(loss, (U, V))
        out[f"bpr{sparse}"] = (loss.detach(), gU.to_dense() if sparse else gU, gV.to_dense() if sparse else gV)
    Uc, Vc = big["U"].clone(), big["V"].clone()
    l = bpr_sgd_step(Uc, Vc, tr, users[:3000], big["pos"][:3000], lr=0.05, seed=1, num_threads=1)
    out["sgd_step_1thread"] = (l, Uc, Vc)
    Uc, Vc = big["U"].clone(), big["V"].clone()
    out["sgd_epoch_1thread"] = (bpr_sgd_epoch(Uc, Vc, tr, lr=0.05, seed=2, num_negatives=2, num_threads=1), Uc, Vc)
    E = torch.cat([big["U"], big["V"]]).requires_grad_(True)
    prop = lightgcn_propagate(big["adj"], E, 3)
    out["lightgcn"] = (prop.detach(), torch.autograd.grad(prop.square().sum(), E)[0])
    X = big["V"].double().requires_grad_(True)
    y = spmm(tr, X)
    out["spmm"] = (y.detach(), torch.autograd.grad(y.sum(), X)[0])
    out["topk"] = topk(big["U"][:1500], big["V"], 20, exclude=tr, key_bias=big["V"][:, 0].contiguous(), num_threads=nt,
                       block_size=256, tile_size=128)
    out["topk_scores"] = topk_scores(big["U"][:500] @ big["V"].T, 20, exclude=tr, rows=users[:500],
                                     num_threads=nt)
    out["adjacency"] = big["adj"].__getstate__()
    out["adjacency_left"] = normalized_adjacency(tr, normalization="left", self_loops=True).__getstate__()
    out["transpose"] = tr.transpose().__getstate__()
    out["from_coo"] = CSR.from_coo(users, big["neg"][:, 0], shape=(3000, 400)).__getstate__()
    out["edge_dropout"] = edge_dropout(tr, 0.3, seed=5).__getstate__()
    out["check"] = tr.check()
    ev = recfast.eval.Evaluator(tr, big["test"], ks=(5, 20), metrics=("recall", "ndcg", "auc", "coverage"),
                                batch_size=700)
    subset = torch.arange(0, 3000, 3)
    out["eval"] = ev.evaluate(user_emb=big["U"], item_emb=big["V"], users=subset)
    out["eval_sampled"] = recfast.eval.Evaluator(tr, big["test"], protocol="sampled", num_negatives=20,
                                                 batch_size=300).evaluate(user_emb=big["U"], item_emb=big["V"],
                                                                          users=subset)
    for cls in (SparseSGD, SparseAdagrad, SparseAdam):
        p = torch.nn.Parameter(big["U"].clone())
        opt = cls([p], lr=0.1, weight_decay=0.01)
        for s in range(2):
            p.grad = torch.sparse_coo_tensor(users[None, s * 3000:(s + 1) * 3000],
                                             big["V"][big["pos"][s * 3000:(s + 1) * 3000]], p.shape)
            opt.step()
        out[cls.__name__] = p.detach().clone()
    return out


def _assert_identical(a, b, path="") -> None:
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_identical(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_identical(x, y, f"{path}[{i}]")
    else:
        assert a == b, (path, a, b)


def test_deterministic_for_any_thread_count_and_rerun(big) -> None:
    with omp_threads(1):
        base = _run_all(big, 1)
    assert _C.max_threads() == torch.get_num_threads()
    for nt in THREADS:
        with omp_threads(nt):
            _assert_identical(base, _run_all(big, nt), f"threads={nt}")
            if nt == max(THREADS):
                _assert_identical(base, _run_all(big, 0), "num_threads=None")  # OpenMP's default


# ---------------------------------------------------------------------------------------------------
# 3. Thread safety and GIL release
# ---------------------------------------------------------------------------------------------------

def _job(big, seed: int) -> dict[str, object]:
    """Per-seed work on SHARED inputs (the CSR's cached transpose and weight prefix sums included)."""
    tr = big["train"]
    g = torch.Generator().manual_seed(seed)
    users = torch.randint(0, 3000, (2000,), generator=g)
    E = torch.randn(3400, 8, generator=g, requires_grad=True)
    prop = lightgcn_propagate(big["adj"], E, 2)
    U = big["U"].clone().requires_grad_(True)
    loss = bpr_loss(U, big["V"], users, big["pos"][:2000], big["neg"][:2000], sparse_grad=seed % 2 == 1)
    p = torch.nn.Parameter(big["V"].clone())
    opt = SparseAdam([p], lr=0.01)
    p.grad = torch.sparse_coo_tensor(users[None, :100] % 400, torch.ones(100, 16), p.shape)
    opt.step()
    return {
        "sample": sample_negatives(tr, users, 3, seed=seed),
        "weighted": sample_negatives(tr, users, 2, seed=seed, weights=big["weights"]),
        "topk": topk(big["U"][users[:300]], big["V"], 10, exclude=tr, rows=users[:300], block_size=64),
        "spmm": spmm(tr.transpose(), big["U"]),
        "lightgcn": (prop.detach(), torch.autograd.grad(prop.sum(), E)[0]),
        "bpr": (loss.detach(), torch.autograd.grad(loss, U)[0].to_dense()),
        "adam": p.detach(),
        "sgd_epoch": _epoch_job(big, seed),
        "dropout": edge_dropout(tr, 0.5, seed=seed).__getstate__(),
        "eval": recfast.eval.Evaluator(tr, big["test"], ks=(10,), batch_size=100).evaluate(
            user_emb=big["U"] + seed, item_emb=big["V"], users=users[:400]),
    }


def _epoch_job(big, seed: int):
    U, V = big["U"].clone(), big["V"].clone()
    return bpr_sgd_epoch(U, V, big["train"], lr=0.05, seed=seed, num_threads=1), U, V


def test_concurrent_calls_give_serial_results(big) -> None:
    seeds = list(range(6))
    serial = [_job(big, s) for s in seeds]
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(lambda s: _job(big, s), seeds))
    for s, a, b in zip(seeds, serial, concurrent):
        _assert_identical(a, b, f"seed={s}")


def _gil_call(big, name: str):
    """A raw kernel call, long enough (tens of ms on one thread) to see whether Python runs
    meanwhile."""
    tr = big["train"]
    ip, ix = tr.indptr.numpy(), tr.indices.numpy()
    rng = np.random.default_rng(0)
    users = rng.integers(0, 3000, 2_000_000)
    if name == "sample_negatives":
        out = np.empty(users.size * 2, dtype=np.int64)
        return lambda: _C.sample_negatives(ip, ix, 400, users, 2, 1, 0, True, None, None, out, 1)
    if name == "lightgcn_propagate":
        adj = big["adj"]
        E = rng.random((3400, 256)).astype(np.float32)
        bufs = [np.empty_like(E) for _ in range(3)]
        return lambda: _C.lightgcn_propagate(adj.indptr.numpy(), adj.indices.numpy(), adj.values.numpy(), E,
                                             [0.01] * 40, *bufs, 1)
    U, V = big["U"].numpy().copy(), big["V"].numpy().copy()
    bp = users % 400
    if name == "bpr_forward":
        users, bp = users[:1_000_000], bp[:1_000_000]
        bn = np.stack([bp, bp[::-1]], 1).copy()
        loss, coef = np.empty(users.size, np.float32), np.empty(bn.size, np.float32)
        return lambda: _C.bpr_forward(U, V, None, users, bp, bn, 0.0, loss, coef, 1)
    if name == "bpr_sgd_step":
        return lambda: _C.bpr_sgd_step(U, V, None, ip, ix, users[:500_000], bp[:500_000], 1, 0, 0, 0.01, 0.0, 1)
    if name == "bpr_sgd_epoch":
        row_of = np.repeat(np.arange(3000, dtype=np.int32), np.diff(ip))
        return lambda: [_C.bpr_sgd_epoch(U, V, None, ip, ix, row_of, 0, ix.size, True, 1, r, 0.01, 0.0, 1)
                        for r in range(20)]
    if name == "topk_fused":
        Q = rng.standard_normal((3000, 16)).astype(np.float32)
        K_ = rng.standard_normal((20000, 16)).astype(np.float32)
        ts, ti = np.empty((3000, 20), np.float32), np.empty((3000, 20), np.int64)
        return lambda: _C.topk_fused(Q, K_, None, None, np.empty(0, np.int64), np.empty(0, np.int32), ts, ti,
                                     "auto", 1)
    if name == "topk_merge":
        scores = np.sort(rng.random((1000, 6000)).astype(np.float32), axis=1)  # every item enters the heap
        ts, ti = np.empty((1000, 200), np.float32), np.empty((1000, 200), np.int64)

        def merge():
            ts.fill(-np.inf)
            ti.fill(-1)
            _C.topk_merge(scores, 0, 6000, None, np.empty(0, np.int64), np.empty(0, np.int32), ts, ti, 1)
        return merge
    assert name == "csr_from_coo"
    return lambda: _C.csr_from_coo_i32(users, bp, None, 3000, 0)


def _longest_stall(call, repeat: int = 2) -> tuple[float, float]:
    """Runs ``call`` in a thread while this thread spins on a pure-Python loop; returns (the
    longest time the loop was stalled, the shortest call). A call holding the GIL stalls the loop
    for its whole duration; one that releases it does not."""
    started, done = threading.Event(), threading.Event()
    durations: list[float] = []

    def worker():
        for _ in range(repeat):
            started.set()
            t0 = time.perf_counter()
            call()
            durations.append(time.perf_counter() - t0)
        done.set()

    t = threading.Thread(target=worker)
    t.start()
    started.wait()
    last = time.perf_counter()
    stall = 0.0
    while not done.is_set():
        now = time.perf_counter()
        stall = max(stall, now - last)
        last = now
    t.join()
    return stall, min(durations)


def test_gil_probe_sees_a_held_gil() -> None:
    """The probe's control: math.factorial holds the GIL."""
    stall, dur = _longest_stall(lambda: math.factorial(80_000))
    assert dur > 0.05 and stall > 0.5 * dur


@pytest.mark.parametrize("name", ["sample_negatives", "lightgcn_propagate", "bpr_forward", "bpr_sgd_step",
                                  "bpr_sgd_epoch", "topk_merge", "topk_fused", "csr_from_coo"])
def test_kernels_release_the_gil(big, name) -> None:
    call = _gil_call(big, name)
    stall, dur = _longest_stall(call)
    assert stall < 0.5 * dur, f"{name}: Python stalled {stall * 1e3:.0f} ms during {dur * 1e3:.0f} ms kernel calls"


# ---------------------------------------------------------------------------------------------------
# 4. Memory: no growth over 50 epochs; top-k and evaluation never hold users x items
# ---------------------------------------------------------------------------------------------------

def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads /proc/self/statm")
@pytest.mark.skipif(SANITIZED, reason="ASan's allocator quarantines freed memory: RSS is not the program's")
def test_training_50_epochs_does_not_grow_resident_memory() -> None:
    data = recfast.data.synthetic(200, 100, 3000, seed=0)
    train, valid = recfast.data.random_split(data, (0.8, 0.2), seed=0)
    model = recfast.models.BPRMF(200, 100, dim=16)
    rss: list[int] = []
    tr = recfast.Trainer(model, train, valid, epochs=50, batch_size=1024, lr=0.01, optimizer="sparse_adam",
                         eval_every=10, progress=False, device="cpu", seed=0,
                         callbacks=[lambda _t, _r: rss.append(_rss_bytes())])
    with omp_threads(1):  # one thread: the 2-core CI box is shared, and spinning OpenMP teams only add noise
        tr.fit()
    assert len(rss) == 50
    growth = max(rss[10:]) - rss[5]
    assert growth < 8 * 2**20, f"resident memory grew {growth / 2**20:.1f} MiB from epoch 5 to 50: {rss[::5]}"


_PEAK_SCRIPT = textwrap.dedent("""
    import resource, sys, torch, recfast
    n_users, n_items = int(sys.argv[1]), int(sys.argv[2])
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    U, V = torch.randn(n_users, 8, generator=g), torch.randn(n_items, 8, generator=g)
    rows = torch.arange(n_users)
    train = recfast.CSR.from_coo(rows, (rows * 7) % n_items, shape=(n_users, n_items))
    test = recfast.CSR.from_coo(rows, (rows * 13 + 1) % n_items, shape=(n_users, n_items))
    ev = recfast.eval.Evaluator(train, test, ks=(10, 20), metrics=("recall", "ndcg", "coverage"))
    recfast.ops.topk(U[:100], V, 20, exclude=train)  # warm up allocators and thread pools
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    s, i = recfast.ops.topk(U, V, 20, exclude=train)
    assert i.shape == (n_users, 20)
    m = ev.evaluate(user_emb=U, item_emb=V)
    assert 0 <= m["recall@20"] <= 1
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
""")


@pytest.mark.skipif(SANITIZED, reason="ASan's shadow memory inflates the peak")
def test_topk_and_evaluator_never_hold_users_x_items() -> None:
    """4,000 x 4,000 scores would be 64 MB in float32; the peak RSS rise of a full top-k and a
    full evaluation stays below a quarter of that."""
    n = 4_000
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in [os.path.dirname(os.path.dirname(recfast.__file__)),
                                                                   os.environ.get("PYTHONPATH", "")] if p))
    # cwd: `python -c` puts the working folder first on sys.path, and from the repository root that
    # is the source package without its compiled module
    res = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(n), str(n)], capture_output=True, text=True,
                         env=env, timeout=300, cwd=os.path.dirname(os.path.abspath(__file__)))
    assert res.returncode == 0, res.stderr
    peak = int(res.stdout.strip().splitlines()[-1])
    assert peak < n * n * 4 // 4, f"peak RSS rose {peak / 2**20:.0f} MiB for {n} x {n}"


# ---------------------------------------------------------------------------------------------------
# 6. CUDA: device mismatches are named; CUDA failures surface as exceptions naming the op
# ---------------------------------------------------------------------------------------------------

@pytest.mark.cuda
@requires_cuda
def test_cuda_mismatched_devices_are_named() -> None:
    csr = make_csr(np.eye(4, 6, dtype=bool))
    g = csr.to("cuda")
    U, V = torch.randn(4, 3), torch.randn(6, 3)
    cases = [
        ("sample_negatives", lambda: sample_negatives(csr, torch.tensor([0], device="cuda"), 1, seed=0), "users"),
        ("sample_negatives", lambda: sample_negatives(g, torch.tensor([0]), 1, seed=0), "users"),
        ("bpr_loss", lambda: bpr_loss(U.cuda(), V, torch.tensor([0]), torch.tensor([1]), torch.tensor([2])),
         "item_emb"),
        ("bpr_loss", lambda: bpr_loss(U.cuda(), V.cuda(), torch.tensor([0]), torch.tensor([1]), torch.tensor([2])),
         "users"),
        ("bpr_sgd_step", lambda: bpr_sgd_step(U.cuda(), V.cuda(), csr, torch.tensor([0]), torch.tensor([1]), lr=0.1,
                                              seed=0), "user_emb"),
        ("spmm", lambda: spmm(g, V), "dense"),
        ("lightgcn_propagate", lambda: lightgcn_propagate(normalized_adjacency(g), torch.randn(10, 3), 1), "emb"),
        ("topk", lambda: topk(U.cuda(), V, 2), "keys"),
        ("topk", lambda: topk(U.cuda(), V.cuda(), 2, exclude=csr), "exclude"),
        ("topk", lambda: topk(U.cuda(), V.cuda(), 2, exclude=g, rows=torch.tensor([0, 1, 2, 3])), "rows"),
        ("topk_scores", lambda: topk_scores(torch.randn(4, 6, device="cuda"), 2, exclude=csr), "exclude"),
    ]
    for op, fn, arg in cases:
        with raises_named(op, arg):
            fn()


@pytest.mark.cuda
@requires_cuda
def test_cuda_fuzz_matches_cpu() -> None:
    rng = np.random.default_rng(0)
    for trial in range(5):
        mask = rng.random((40, 30)) < [0.0, 0.1, 0.5, 0.9, 1.0][trial]
        mask[3] = True
        mask[5] = False
        csr = make_csr(mask, [torch.int32, torch.int64][trial % 2])
        users = torch.from_numpy(rng.integers(0, 40, 200))
        users = users[(users != 3)]
        if trial < 4:
            assert torch.equal(sample_negatives(csr.to("cuda"), users.cuda(), 3, seed=trial).cpu(),
                               sample_negatives(csr, users, 3, seed=trial))
        q = poison(torch.from_numpy(rng.integers(-2, 3, (40, 4))).float(), rng, 0.05)
        k = poison(torch.from_numpy(rng.integers(-2, 3, (30, 4))).float(), rng, 0.05)
        for kk in (0, 5, 40):
            a = topk(q.cuda(), k.cuda(), kk, exclude=csr.to("cuda"))
            b = topk(q, k, kk, exclude=csr)
            assert torch.equal(a[1].cpu(), b[1]) and torch.equal(a[0].cpu(), b[0])
        x = poison(torch.randn(30, 16), rng, 0.05)
        assert_same(spmm(csr.to("cuda"), x.cuda()).cpu(), spmm(csr, x), rtol=1e-5, atol=1e-5)


_CUDA_FAULT_SCRIPT = textwrap.dedent("""
    import os, sys, torch, recfast
    from recfast.ops.spmm import _spmm_impl
    what = sys.argv[1]
    x = torch.zeros(4, 4, device="cuda")
    if what == "oom":
        csr = recfast.CSR.from_coo(torch.tensor([0]), torch.tensor([0]), shape=(1, 10)).to("cuda")
        try:
            recfast.ops.sample_negatives(csr, torch.zeros(1, dtype=torch.long, device="cuda"), 2**40, seed=0)
        except (RuntimeError, ValueError, MemoryError) as e:
            print("RAISED", type(e).__name__, e)
        print("ALIVE", float((x + 1).sum()))
    else:
        # An unvalidated CSR (check=False) whose column 10**9 lies far outside dense: the kernel
        # faults asynchronously; the fault must surface as a Python exception, not a crash.
        indptr = torch.tensor([0, 1], device="cuda")
        indices = torch.tensor([10**9], dtype=torch.int32, device="cuda")
        try:
            _spmm_impl(indptr, indices, None, torch.ones(2, 4, device="cuda"), 1)
            torch.cuda.synchronize()
        except RuntimeError as e:
            print("RAISED", e)
        print("ALIVE")
    sys.stdout.flush()
    os._exit(0)  # a faulted context cannot be torn down cleanly
""")


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("what", ["oom", "illegal_address"])
def test_cuda_failures_surface_as_exceptions(what) -> None:
    """In a subprocess (a fault poisons the CUDA context). Launch failures name the op
    (RF_CUDA_CHECK_LAUNCH after every launch); an out-of-memory is raised by torch's allocator when
    the op allocates its output, and an asynchronous fault at the next synchronisation: both are
    Python exceptions, though their messages are torch's."""
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(recfast.__file__)))
    res = subprocess.run([sys.executable, "-c", _CUDA_FAULT_SCRIPT, what], capture_output=True, text=True,
                         timeout=120, env=env, cwd=os.path.dirname(os.path.abspath(__file__)))
    assert res.returncode == 0, res.stderr
    assert "RAISED" in res.stdout and "ALIVE" in res.stdout, (res.stdout, res.stderr)


def test_non_integer_sizes_and_nan_auc_are_named_not_truncated() -> None:
    """Found by the fuzzing: fractional shapes and ks were truncated, a k far past the catalogue hit
    torch's allocator, and NaN scores counted as wins in AUC."""
    empty = make_csr(np.zeros((2, 3), dtype=bool))
    with raises_named("CSR", "shape"):
        CSR(empty.indptr, empty.indices, (1.5, 3))
    with raises_named("Evaluator", "ks"):
        recfast.eval.Evaluator(empty, empty, ks=(2.5,))
    with raises_named("topk", "k = "):
        topk(torch.randn(3, 4), torch.randn(5, 4), 10**13)
    train = make_csr(np.array([[1, 0, 0, 0], [0, 1, 0, 0]], dtype=bool))
    test = make_csr(np.array([[0, 1, 0, 0], [0, 0, 1, 0]], dtype=bool))
    U, V = torch.ones(2, 2), torch.ones(4, 2)
    V[1] = float("nan")  # user 0's test item scores NaN: it ranks last, below the negatives
    auc = recfast.eval.Evaluator(train, test, metrics=("auc",)).evaluate(user_emb=U, item_emb=V, users=torch.tensor([0]))
    assert auc["auc"] == 0.0
