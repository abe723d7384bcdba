"""bpr_loss, bpr_sgd_step and bpr_sgd_epoch against plain torch / numpy references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import recfast
from recfast.ops import bpr_loss, bpr_sgd_epoch, bpr_sgd_step, sample_negatives
from recfast.ops.bpr import _bpr_loss_reference as _bpr_loss_ref
from conftest import DEVICES, requires_cuda


def _sgd_epoch_ref(U, V, bias, csr, start, stop, *, lr, l2, K, seed, shuffle=True):
    """Sequential float64 SGD over positions [start, stop) of bpr_sgd_epoch's order: entry
    order(p), negatives sample_negatives(..., row_offset=p), gradients of the per-example loss at
    the current values, then the updates. Returns the summed loss."""
    from recfast import _C

    U, V = U.numpy(), V.numpy()
    b = None if bias is None else bias.numpy()
    row_of = np.repeat(np.arange(csr.n_rows), csr.row_lengths().numpy())
    cols = csr.indices.numpy()
    order = _C.bpr_epoch_order(csr.nnz, seed, start, stop) if shuffle else np.arange(start, stop)
    negs = sample_negatives(csr, torch.as_tensor(row_of[order]), K, seed=seed, row_offset=start).reshape(stop - start, K)
    total = 0.0
    for p, e in zip(range(start, stop), order):
        u, i = int(row_of[e]), int(cols[e])
        js = negs[p - start].numpy()
        uu, vi = U[u].copy(), V[i].copy()
        x = [uu @ vi + (b[i] if b is not None else 0) - uu @ V[j] - (b[j] if b is not None else 0) for j in js]
        c = [-1.0 / (1.0 + np.exp(xk)) / K for xk in x]  # d loss_b / d x_k = -sigmoid(-x_k) / K
        total += sum(np.logaddexp(0.0, -xk) for xk in x) / K
        gu = sum(c) * vi - sum(ck * V[j] for ck, j in zip(c, js)) + l2 * uu
        for ck, j in zip(c, js):
            V[j] -= lr * (-ck * uu + l2 / K * V[j])
            if b is not None:
                b[j] -= lr * -ck
        V[i] -= lr * (sum(c) * uu + l2 * vi)
        if b is not None:
            b[i] -= lr * sum(c)
        U[u] -= lr * gu
    return total


def _inputs(n_users=30, n_items=25, d=8, B=40, K=None, dtype=torch.float64, device="cpu", seed=0, idx=torch.int64):
    g = torch.Generator().manual_seed(seed)
    U = torch.randn(n_users, d, generator=g, dtype=dtype).to(device).requires_grad_()
    V = torch.randn(n_items, d, generator=g, dtype=dtype).to(device).requires_grad_()
    b = torch.randn(n_items, generator=g, dtype=dtype).to(device).requires_grad_()
    u = torch.randint(0, n_users, (B,), generator=g).to(device, idx)
    i = torch.randint(0, n_items, (B,), generator=g).to(device, idx)
    j = torch.randint(0, n_items, (B,) if K is None else (B, K), generator=g).to(device, idx)
    return U, V, b, u, i, j


def _grads(loss, params, g=None):
    g = torch.ones_like(loss) if g is None else g
    return [x.to_dense() if x.is_sparse else x for x in torch.autograd.grad(loss, params, g)]


@pytest.mark.parametrize("d", [1, 7, 32, 64, 130])
@pytest.mark.parametrize("K", [None, 1, 4])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("sparse_grad", [False, True])
def test_matches_reference(device, d, K, reduction, sparse_grad) -> None:
    U, V, b, u, i, j = _inputs(d=d, K=K, device=device, dtype=torch.float32, idx=torch.int32 if d % 2 else torch.int64)
    got = bpr_loss(U, V, u, i, j, item_bias=b, l2=0.01, reduction=reduction, sparse_grad=sparse_grad)
    want = _bpr_loss_ref(U, V, u, i, j, item_bias=b, l2=0.01, reduction=reduction)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(got)
    for a, w in zip(_grads(got, (U, V, b), g), _grads(want, (U, V, b), g)):
        torch.testing.assert_close(a, w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("n,upper", [(0, 5), (1, 1), (7, 3), (2048, 40981), (5000, 100), (300, 1 << 40)])
def test_unique_rows_equals_torch_unique(n, upper) -> None:
    """The CPU sparse backward's unique (a bitmap over the id range, a sort for ranges far wider
    than the ids) against torch.unique."""
    from recfast import _C

    g = torch.Generator().manual_seed(n)
    ids = torch.randint(0, upper, (n,), generator=g)
    rows, inverse = np.empty(min(n, upper), np.int64), np.empty(n, np.int64)
    m = _C.unique_rows(ids.numpy(), upper, rows, inverse)
    rows, inverse = torch.from_numpy(rows[:m]), torch.from_numpy(inverse)
    want_rows, want_inverse = torch.unique(ids, return_inverse=True)
    assert torch.equal(rows, want_rows) and torch.equal(inverse, want_inverse)
    assert torch.equal(rows[inverse], ids)


def test_unique_rows_kernel_reports_out_of_range_ids() -> None:
    from recfast import _C

    ids = np.array([3, 9, 10, -1], dtype=np.int64)
    rows, inverse = np.empty(4, dtype=np.int64), np.empty(4, dtype=np.int64)
    assert _C.unique_rows(ids, 10, rows, inverse) == -1 - 2  # the first bad position, 2
    with pytest.raises(ValueError, match="inverse must have one entry per id"):
        _C.unique_rows(ids, 10, rows, inverse[:3])


def test_sparse_backward_kernel_rejects_out_of_range_ids() -> None:
    from recfast import _C

    f32, i64 = np.float32, np.int64
    U, V = np.zeros((3, 4), f32), np.zeros((5, 4), f32)
    users, pos, neg = np.array([0, 3], i64), np.array([1, 2], i64), np.array([[3], [4]], i64)
    bufs = [np.empty(n, i64) for n in (2, 2, 4, 4)] + [np.empty((2, 4), f32), np.empty((4, 4), f32)]
    with pytest.raises(ValueError, match="users holds an id outside the user table"):
        _C.bpr_backward_sparse(U, V, users, pos, neg, np.zeros(2, f32), np.ones(1, f32), 0.0, *bufs, None, 1)
    users[1], neg[1, 0] = 2, 5
    with pytest.raises(ValueError, match="neg_items holds an id outside the item table"):
        _C.bpr_backward_sparse(U, V, users, pos, neg, np.zeros(2, f32), np.ones(1, f32), 0.0, *bufs, None, 1)


def test_sparse_gradients_of_a_huge_item_table() -> None:
    """An item range far wider than the batch: the unique step sorts instead of a bitmap."""
    U, V, b, u, i, j = _inputs(n_users=7, n_items=3_000_000, d=2, B=12, K=2, dtype=torch.float32)
    got = _grads(bpr_loss(U, V, u, i, j, item_bias=b, sparse_grad=True), (U, V, b))
    want = _grads(_bpr_loss_ref(U, V, u, i, j, item_bias=b), (U, V, b))
    for a, w in zip(got, want):
        torch.testing.assert_close(a, w, rtol=1e-5, atol=1e-6)


def test_sparse_gradients_are_truly_coalesced() -> None:
    """The COO gradients are flagged coalesced: their indices must be sorted and distinct."""
    U, V, b, u, i, j = _inputs(n_users=50, n_items=40, B=300, K=3, dtype=torch.float32)
    gU, gV, gb = torch.autograd.grad(bpr_loss(U, V, u, i, j, item_bias=b, sparse_grad=True), (U, V, b))
    for g in (gU, gV, gb):
        idx = g.indices()[0]
        assert g.is_coalesced() and bool((idx[1:] > idx[:-1]).all())


def test_repeated_rows_lose_no_updates() -> None:
    U, V, b, _, _, _ = _inputs()
    u = torch.zeros(500, dtype=torch.int64)
    i = torch.ones(500, dtype=torch.int64)
    j = torch.full((500, 2), 2, dtype=torch.int64)
    for t in (1, 2, 3):
        got = _grads(bpr_loss(U, V, u, i, j, item_bias=b, l2=0.5), (U, V, b))
        want = _grads(_bpr_loss_ref(U, V, u, i, j, item_bias=b, l2=0.5), (U, V, b))
        for a, w in zip(got, want):
            torch.testing.assert_close(a, w)


@pytest.mark.parametrize("sparse_grad", [False, True])
@pytest.mark.parametrize("l2", [0.0, 0.01])
def test_gradients_identical_for_any_thread_count(sparse_grad, l2) -> None:
    from recfast import _C

    assert _C.max_threads() >= 1
    # big enough that the kernels fork (they keep batches under ~0.4 ms of work on one thread),
    # with each row repeated hundreds of times; 3 threads split 1 user thread, 2 item threads
    U, V, b, u, i, j = _inputs(B=20000, n_users=50, n_items=40, d=32, K=3, dtype=torch.float32)
    grads = []
    for threads in (1, 2, 3, 4):
        torch.set_num_threads(threads)
        try:
            grads.append(_grads(bpr_loss(U, V, u, i, j, item_bias=b, l2=l2, sparse_grad=sparse_grad), (U, V, b)))
        finally:
            torch.set_num_threads(2)
    for again in grads[1:]:
        for a, w in zip(grads[0], again):
            assert torch.equal(a, w)
    want = _grads(_bpr_loss_ref(U.double(), V.double(), u, i, j, item_bias=b.double(), l2=l2), (U, V, b))
    for a, w in zip(grads[0], want):
        torch.testing.assert_close(a, w.float(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("d", [32, 20, 64, 128, 5])
@pytest.mark.parametrize("K", [1, 3])
@pytest.mark.parametrize("l2", [0.0, 0.01])
def test_float_kernels_identical_on_every_instruction_set(d, K, l2) -> None:
    """The float forward and backward run as portable, AVX2 and AVX-512 variants (as far as the
    CPU goes); explicit fused multiply-adds make them agree bit for bit, also for |x| in the
    hundreds (exp underflowing to subnormals) and on the widths without a fixed-width copy."""
    from recfast import _C

    rng = np.random.default_rng(d * 10 + K)
    B, nu, ni = 300, 50, 70
    U = rng.standard_normal((nu, d)).astype(np.float32)
    U[0] *= 30
    V = rng.standard_normal((ni, d)).astype(np.float32)
    bias = rng.standard_normal(ni).astype(np.float32)
    u, i, j = rng.integers(0, nu, B), rng.integers(0, ni, B), rng.integers(0, ni, (B, K))
    outs = []
    for isa in range(_C.bpr_sgd_isa() + 1):
        loss, coef = np.empty(B, np.float32), np.empty(B * K, np.float32)
        _C.bpr_forward(U, V, bias, u, i, j, l2, loss, coef, 1, isa)
        gU, gV, gb = np.empty((nu, d), np.float32), np.empty((ni, d), np.float32), np.empty(ni, np.float32)
        _C.bpr_backward(U, V, u, i, j, coef, np.full(1, 1 / B, np.float32), l2, u, i, j.reshape(-1), gU, gV, gb, 2,
                        True, isa)
        outs.append((loss, coef, gU, gV, gb))
    for other in outs[1:]:
        for a, w in zip(outs[0], other):
            assert np.array_equal(a, w)


def test_float_loss_matches_float64_softplus_over_the_range() -> None:
    """The vector exp and log1p of the float forward: loss and coef within a few ulp of float64's
    softplus(-x) and -sigmoid(-x), from x = -200 to 200 (subnormal exp at the ends)."""
    x = torch.cat([torch.linspace(-200, 200, 4001), torch.tensor([0.0, -0.0, 1e-30, -1e-30, 87.0, -87.0, 104.0])])
    B = x.numel()
    U = torch.ones(1, 1)
    V = torch.cat([x[:, None], torch.zeros(1, 1)])
    u, i, j = torch.zeros(B, dtype=torch.int64), torch.arange(B), torch.full((B,), B)
    loss = bpr_loss(U, V, u, i, j, reduction="none")
    x64 = x.double()
    want = torch.nn.functional.softplus(-x64)
    assert torch.all((loss.double() - want).abs() <= 4 * torch.finfo(torch.float32).eps * want.abs()
                     + torch.finfo(torch.float32).smallest_normal * 4)
    from recfast import _C
    from recfast._backend import np_view

    coef = np.empty(B, np.float32)
    _C.bpr_forward(np_view(U), np_view(V), None, u.numpy(), i.numpy(), j[:, None].numpy(), 0.0,
                   np.empty(B, np.float32), coef, 1)
    want_c = -torch.sigmoid(-x64)
    assert torch.all((torch.from_numpy(coef).double() - want_c).abs()
                     <= 4 * torch.finfo(torch.float32).eps * want_c.abs() + 1e-44)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shared", [False, True])
def test_eager_path_equals_the_custom_op(reduction, shared) -> None:
    """Eager CPU calls skip the custom op (an autograd.Function on the same kernels, gradients
    zeroed inside the backward kernel); both give the same loss and the same dense gradients."""
    U, V, b, u, i, j = _inputs(n_users=40, n_items=40, d=16, B=300, K=3, dtype=torch.float32)
    E = U if shared else V
    fast = bpr_loss(U, E, u, i, j, item_bias=b, l2=0.01, reduction=reduction)
    if shared:
        slow = torch.ops.recfast.bpr_loss_shared(U, b, u, i, j, 0.01, reduction)[0]
        params = (U, b)
    else:
        slow = torch.ops.recfast.bpr_loss(U, V, b, u, i, j, 0.01, reduction)[0]
        params = (U, V, b)
    assert fast.grad_fn is not None and "BPRDenseCPU" in type(fast.grad_fn).__name__
    torch.testing.assert_close(fast, slow, rtol=0, atol=0)
    g = torch.rand(fast.shape) if reduction == "none" else None
    for a, w in zip(_grads(fast, params, g), _grads(slow, params, g)):
        torch.testing.assert_close(a, w, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("x", [80.0, -80.0])
def test_extreme_margins_are_exact_and_finite(x) -> None:
    U = torch.tensor([[1.0]], dtype=torch.float32, requires_grad=True)
    V = torch.tensor([[x], [0.0]], dtype=torch.float32, requires_grad=True)
    loss = bpr_loss(U, V, torch.tensor([0]), torch.tensor([0]), torch.tensor([1]))
    expected = torch.nn.functional.softplus(torch.tensor(-x, dtype=torch.float64)).float()
    assert torch.isfinite(loss) and torch.equal(loss, expected)
    loss.backward()
    assert torch.isfinite(U.grad).all() and torch.isfinite(V.grad).all()
    if x < 0:
        # d/du softplus(-x) = -sigmoid(-x) * (v_i - v_j) = -1 * (-80)
        assert loss.item() == 80.0 and U.grad.item() == pytest.approx(80.0)


def test_empty_batch_is_zero_with_zero_grads() -> None:
    U, V, b, *_ = _inputs()
    e = torch.empty(0, dtype=torch.int64)
    loss = bpr_loss(U, V, e, e, e)
    assert loss.item() == 0.0
    loss.backward()
    assert (U.grad == 0).all()
    assert bpr_loss(U, V, e, e, e, reduction="none").shape == (0,)


def test_gradcheck_and_opcheck() -> None:
    U, V, b, u, i, j = _inputs(n_users=6, n_items=5, d=3, B=7, K=2)
    assert torch.autograd.gradcheck(lambda a, c, e: bpr_loss(a, c, u, i, j, item_bias=e, l2=0.3), (U, V, b))
    torch.library.opcheck(torch.ops.recfast.bpr_loss.default,
                          (U.detach().float().requires_grad_(), V.detach().float().requires_grad_(), None, u, i, j,
                           0.1, "mean"))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("dtype", "K", "bias", "l2"), [(torch.float64, 1, False, 0.0), (torch.float64, 3, True, 0.2),
                                                      (torch.float32, 2, True, 0.0)])
def test_one_table_for_users_and_items_equals_its_slices(device, dtype, K, bias, l2) -> None:
    """bpr_loss(E, E, u, i + n_users, j + n_users) (LightGCN's form) equals the sliced tables, and
    its single gradient equals the sum of the two slice gradients, for any thread count."""
    nu, ni, d, B = 40, 30, 16, 3000
    g = torch.Generator().manual_seed(1)
    E = torch.randn(nu + ni, d, generator=g, dtype=dtype).to(device).requires_grad_(True)
    b = (torch.randn(nu + ni, generator=g, dtype=dtype).to(device).requires_grad_(True)) if bias else None
    u = torch.randint(0, nu, (B,), generator=g).to(device)
    i = torch.randint(0, ni, (B,), generator=g).to(device)
    j = torch.randint(0, ni, (B, K), generator=g).to(device)
    shared = bpr_loss(E, E, u, i + nu, j + nu, item_bias=b, l2=l2)
    got = torch.autograd.grad(shared, [E] + ([b] if bias else []))
    sliced = bpr_loss(E[:nu], E[nu:], u, i, j, item_bias=None if b is None else b[nu:], l2=l2)
    want = torch.autograd.grad(sliced, [E] + ([b] if bias else []))
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(shared, sliced, **tol)
    for a, w in zip(got, want):
        torch.testing.assert_close(a, w, **tol)
    if device == "cpu":
        torch.set_num_threads(1)
        try:
            again = torch.autograd.grad(bpr_loss(E, E, u, i + nu, j + nu, item_bias=b, l2=l2),
                                        [E] + ([b] if bias else []))
        finally:
            torch.set_num_threads(2)
        for a, w in zip(got, again):
            assert torch.equal(a, w)


def test_one_table_gradcheck_and_opcheck() -> None:
    g = torch.Generator().manual_seed(2)
    E = torch.randn(9, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(9, generator=g, dtype=torch.float64, requires_grad=True)
    u, i, j = torch.tensor([0, 1, 1, 3]), torch.tensor([4, 5, 8, 4]), torch.tensor([[6, 7], [4, 8], [5, 5], [7, 6]])
    assert torch.autograd.gradcheck(lambda e, c: bpr_loss(e, e, u, i, j, item_bias=c, l2=0.3), (E, b))
    torch.library.opcheck(torch.ops.recfast.bpr_loss_shared.default,
                          (E.detach().float().requires_grad_(), None, u, i, j, 0.1, "mean"))


def test_works_inside_a_graph_and_under_compile() -> None:
    """The tables may be the output of propagation (here a linear map), and torch.compile runs it."""
    U, V, _, u, i, j = _inputs(dtype=torch.float32)
    w = torch.randn(8, 8, requires_grad=True)

    def f(w):
        return bpr_loss(U @ w, V @ w, u, i, j)

    (g_eager,) = torch.autograd.grad(f(w), w)
    (g_ref,) = torch.autograd.grad(_bpr_loss_ref(U @ w, V @ w, u, i, j), w)
    torch.testing.assert_close(g_eager, g_ref, rtol=1e-4, atol=1e-5)
    try:
        compiled = torch.compile(f, backend="eager")
        torch.testing.assert_close(compiled(w), f(w))
    except Exception as exc:  # pragma: no cover
        pytest.skip(f"torch.compile unavailable: {exc}")


def test_errors_name_the_argument() -> None:
    U, V, b, u, i, j = _inputs(dtype=torch.float32)
    with pytest.raises(ValueError, match="users holds id 30, expected 0 <= id < 30"):
        bpr_loss(U, V, torch.full_like(u, 30), i, j)
    with pytest.raises(ValueError, match="neg_items holds id -1"):
        bpr_loss(U, V, u, i, torch.full_like(j, -1))
    with pytest.raises(TypeError, match="item_emb must be a float32 tensor, got float64"):
        bpr_loss(U, V.double(), u, i, j)
    with pytest.raises(TypeError, match="users must be a int32 or int64 tensor"):
        bpr_loss(U, V, u.float(), i, j)
    with pytest.raises(ValueError, match="item_emb has dimension 4, user_emb 8"):
        bpr_loss(U, torch.randn(25, 4), u, i, j)
    with pytest.raises(ValueError, match="neg_items must be \\(B,\\) or \\(B, K\\)"):
        bpr_loss(U, V, u, i, j[:5])
    with pytest.raises(ValueError, match="reduction must be one of"):
        bpr_loss(U, V, u, i, j, reduction="avg")
    with pytest.raises(ValueError, match="item_bias has 3 entries"):
        bpr_loss(U, V, u, i, j, item_bias=torch.zeros(3))
    with pytest.raises(ValueError, match="l2 must be a non-negative number"):
        bpr_loss(U, V, u, i, j, l2=-1.0)


def test_sgd_step_equals_unfused_steps_with_the_same_negatives() -> None:
    """With one thread the fused step applies the examples in order: each must equal an unfused
    SGD step on the reference loss, with the negatives sample_negatives draws for that position."""
    csr = recfast.data.synthetic(40, 60, 600, seed=1).to_csr()
    g = torch.Generator().manual_seed(0)
    U, V = torch.randn(40, 8, generator=g) * 0.1, torch.randn(60, 8, generator=g) * 0.1
    users = torch.randint(0, 40, (50,), generator=g)
    pos = torch.stack([csr.row(int(u))[0] for u in users]).long()
    neg = sample_negatives(csr, users, 3, seed=11)
    wantU, wantV, losses = U.clone(), V.clone(), []
    for b in range(50):
        Ut, Vt = wantU.clone().requires_grad_(), wantV.clone().requires_grad_()
        loss = _bpr_loss_ref(Ut, Vt, users[b:b + 1], pos[b:b + 1], neg[b:b + 1], l2=0.01, reduction="sum")
        gU, gV = torch.autograd.grad(loss, (Ut, Vt))
        losses.append(_bpr_loss_ref(wantU, wantV, users[b:b + 1], pos[b:b + 1], neg[b:b + 1]).item())
        wantU, wantV = wantU - 0.1 * gU, wantV - 0.1 * gV
    U1, V1 = U.clone(), V.clone()
    loss = bpr_sgd_step(U1, V1, csr, users, pos, lr=0.1, l2=0.01, num_negatives=3, seed=11, num_threads=1)
    torch.testing.assert_close(U1, wantU, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(V1, wantV, rtol=1e-5, atol=1e-6)
    assert loss == pytest.approx(sum(losses) / 50, rel=1e-5)


def test_sgd_step_single_thread_is_reproducible_and_learns() -> None:
    csr = recfast.data.synthetic(200, 150, 4000, seed=2).to_csr()
    users = torch.repeat_interleave(torch.arange(200), csr.row_lengths())
    pos = csr.indices.long()
    runs = []
    for _ in range(2):
        U, V = torch.full((200, 16), 0.01), torch.linspace(-0.1, 0.1, 150 * 16).view(150, 16)
        bias = torch.zeros(150)
        losses = [bpr_sgd_step(U, V, csr, users, pos, lr=0.05, seed=e, item_bias=bias, num_threads=1)
                  for e in range(15)]
        runs.append((U, V, losses))
    assert torch.equal(runs[0][0], runs[1][0]) and runs[0][2] == runs[1][2]
    assert runs[0][2][-1] < runs[0][2][0] - 0.05


def test_sgd_step_errors() -> None:
    csr = recfast.CSR(torch.tensor([0, 2]), torch.tensor([0, 1], dtype=torch.int32), (1, 2))
    U, V = torch.zeros(1, 4), torch.zeros(2, 4)
    with pytest.raises(ValueError, match="user 0 has no negative item left"):
        bpr_sgd_step(U, V, csr, torch.tensor([0]), torch.tensor([0]), lr=0.1, seed=0)
    with pytest.raises(ValueError, match="csr has shape"):
        bpr_sgd_step(U, torch.zeros(3, 4), csr, torch.tensor([0]), torch.tensor([0]), lr=0.1, seed=0)
    with pytest.raises(TypeError, match="user_emb must be a float32"):
        bpr_sgd_step(U.double(), V, csr, torch.tensor([0]), torch.tensor([0]), lr=0.1, seed=0)


@requires_cuda
def test_cuda_matches_cpu_on_a_side_stream() -> None:
    U, V, b, u, i, j = _inputs(n_users=300, n_items=400, d=64, B=5000, K=3, dtype=torch.float32)
    want = bpr_loss(U, V, u, i, j, item_bias=b, l2=0.01)
    wg = _grads(want, (U, V, b))
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        Uc, Vc, bc = (x.detach().cuda().requires_grad_() for x in (U, V, b))
        got = bpr_loss(Uc, Vc, u.cuda(), i.cuda(), j.cuda(), item_bias=bc, l2=0.01)
        gg = _grads(got, (Uc, Vc, bc))
        gs = _grads(bpr_loss(Uc, Vc, u.cuda(), i.cuda(), j.cuda(), item_bias=bc, sparse_grad=True), (Uc, Vc, bc))
    s.synchronize()
    torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-5)
    for a, w in zip(gg, wg):
        torch.testing.assert_close(a.cpu(), w, rtol=1e-4, atol=1e-5)
    assert all(torch.isfinite(x).all() for x in gs)


# ---------------------------------------------------------------------------------------------
# bpr_sgd_epoch
# ---------------------------------------------------------------------------------------------

def _sgd_tables(csr, d, seed=0, bias=True):
    g = torch.Generator().manual_seed(seed)
    U = torch.randn(csr.n_rows, d, generator=g) * 0.3
    V = torch.randn(csr.n_cols, d, generator=g) * 0.3
    b = torch.randn(csr.n_cols, generator=g) * 0.1 if bias else None
    return U, V, b


@pytest.mark.parametrize(("d", "K", "shuffle", "idx"), [
    (64, 1, True, torch.int32), (64, 3, False, torch.int64), (20, 1, True, torch.int64), (20, 3, True, torch.int32),
    (32, 1, False, torch.int32), (128, 2, True, torch.int64)])
def test_sgd_epoch_matches_numpy_reference(d, K, shuffle, idx) -> None:
    csr = recfast.data.synthetic(30, 45, 300, seed=3).to_csr()
    csr = recfast.CSR(csr.indptr, csr.indices.to(idx), csr.shape)
    U, V, b = _sgd_tables(csr, d)
    wantU, wantV, wantb = U.double(), V.double(), b.double()
    want = _sgd_epoch_ref(wantU, wantV, wantb, csr, 7, 260, lr=0.1, l2=0.02, K=K, seed=5, shuffle=shuffle)
    total, n = bpr_sgd_epoch(U, V, csr, lr=0.1, l2=0.02, num_negatives=K, seed=5, item_bias=b, start=7, stop=260,
                             shuffle=shuffle, num_threads=1)
    assert n == 253
    assert total == pytest.approx(want, rel=1e-4)
    torch.testing.assert_close(U, wantU.float(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(V, wantV.float(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b, wantb.float(), rtol=1e-4, atol=1e-5)


def test_sgd_epoch_one_step_gradient() -> None:
    """A single position: the update is exactly -lr times the autograd gradient of bpr_loss's
    per-example loss (with its l2 term) at that position's triple."""
    csr = recfast.data.synthetic(20, 30, 200, seed=4).to_csr()
    U, V, b = _sgd_tables(csr, 16)
    p = 37
    e = int(recfast._C.bpr_epoch_order(csr.nnz, 9, p, p + 1)[0])
    u = int(torch.repeat_interleave(torch.arange(20), csr.row_lengths())[e])
    i = int(csr.indices[e])
    j = sample_negatives(csr, torch.tensor([u]), 2, seed=9, row_offset=p)
    Ut, Vt, bt = (x.clone().requires_grad_() for x in (U, V, b))
    loss = _bpr_loss_ref(Ut, Vt, torch.tensor([u]), torch.tensor([i]), j, item_bias=bt, l2=0.1, reduction="sum")
    gU, gV, gb = torch.autograd.grad(loss, (Ut, Vt, bt))
    U1, V1, b1 = U.clone(), V.clone(), b.clone()
    total, n = bpr_sgd_epoch(U1, V1, csr, lr=0.5, l2=0.1, num_negatives=2, seed=9, item_bias=b1, start=p, stop=p + 1)
    assert n == 1
    plain = _bpr_loss_ref(U, V, torch.tensor([u]), torch.tensor([i]), j, item_bias=b, reduction="sum").item()
    assert total == pytest.approx(plain, rel=1e-5)
    torch.testing.assert_close(U1, U - 0.5 * gU, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(V1, V - 0.5 * gV, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b1, b - 0.5 * gb, rtol=1e-5, atol=1e-6)


def test_sgd_epoch_order_is_a_seeded_permutation() -> None:
    from recfast import _C

    for n in (1, 2, 3, 5, 64, 1000, 4097):
        for seed in (0, 1, 2**63 + 5):
            order = _C.bpr_epoch_order(n, seed, 0, n)
            assert np.array_equal(np.sort(order), np.arange(n))
    a, b = _C.bpr_epoch_order(4097, 0, 0, 4097), _C.bpr_epoch_order(4097, 1, 0, 4097)
    assert not np.array_equal(a, b) and not np.array_equal(a, np.arange(4097))
    assert np.array_equal(_C.bpr_epoch_order(4097, 0, 100, 300), a[100:300])


def test_sgd_epoch_negatives_are_never_positives() -> None:
    """Item rows start at zero and l2 = 0, so one position changes exactly its positive's row and
    its negatives' rows; user 0 has all items but one, which must then be its only negative."""
    rows = [list(range(1, 12))] + [[1, 4, 5], [0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [7]]
    indptr = torch.tensor(np.cumsum([0] + [len(r) for r in rows]))
    csr = recfast.CSR(indptr, torch.tensor(sum(rows, []), dtype=torch.int32), (4, 12))
    order = recfast._C.bpr_epoch_order(csr.nnz, 3, 0, csr.nnz)
    row_of = np.repeat(np.arange(4), [len(r) for r in rows])
    for p in range(csr.nnz):
        U, V = torch.ones(4, 8), torch.zeros(12, 8)
        bpr_sgd_epoch(U, V, csr, lr=0.1, num_negatives=3, seed=3, start=p, stop=p + 1, num_threads=1)
        touched = set(torch.nonzero(V.abs().sum(1)).reshape(-1).tolist())
        u, i = int(row_of[order[p]]), int(csr.indices[order[p]])
        negatives = touched - {i}
        assert i in touched and negatives and not negatives & set(rows[u])
        if u == 0:
            assert negatives == {0}
        if u == 2:
            assert negatives == {1}


def test_sgd_epoch_is_deterministic_with_one_thread_and_chunks_compose() -> None:
    csr = recfast.data.synthetic(100, 80, 3000, seed=6).to_csr()
    outs = []
    for chunks in ([0, csr.nnz], [0, 1000, 1001, 2500, csr.nnz]):
        U, V, b = _sgd_tables(csr, 64)
        total = 0.0
        for lo, hi in zip(chunks[:-1], chunks[1:]):
            total += bpr_sgd_epoch(U, V, csr, lr=0.05, l2=0.01, seed=2, item_bias=b, start=lo, stop=hi,
                                   num_threads=1)[0]
        outs.append((U, V, b, total))
    (U0, V0, b0, t0), (U1, V1, b1, t1) = outs
    assert torch.equal(U0, U1) and torch.equal(V0, V1) and torch.equal(b0, b1)
    assert t0 == pytest.approx(t1, rel=1e-12)


@pytest.mark.parametrize("d", [64, 37])
def test_sgd_variants_are_bit_identical(d) -> None:
    """The portable, AVX2 and AVX-512 variants (those this CPU runs) give the same bits."""
    from recfast import _C
    from recfast.ops.bpr import _row_of

    csr = recfast.data.synthetic(60, 50, 1500, seed=8).to_csr()
    results = []
    for isa in range(_C.bpr_sgd_isa() + 1):
        U, V, b = _sgd_tables(csr, d)
        out = _C.bpr_sgd_epoch(U.numpy(), V.numpy(), b.numpy(), csr.indptr.numpy(), csr.indices.numpy(),
                               _row_of(csr).numpy(), 0, csr.nnz, True, 2, 4, 0.05, 0.01, 1, isa)
        results.append((U, V, b, out))
    for U, V, b, out in results[1:]:
        assert torch.equal(U, results[0][0]) and torch.equal(V, results[0][1]) and torch.equal(b, results[0][2])
        assert out == results[0][3]


def test_sgd_epoch_threads_learn() -> None:
    csr = recfast.data.synthetic(300, 200, 8000, seed=7).to_csr()
    U, V, _ = _sgd_tables(csr, 32, bias=False)
    U.mul_(0.1), V.mul_(0.1)
    losses = [bpr_sgd_epoch(U, V, csr, lr=0.05, seed=e, num_threads=2) for e in range(10)]
    means = [t / n for t, n in losses]
    assert all(n == csr.nnz for _, n in losses)
    assert torch.isfinite(U).all() and torch.isfinite(V).all()
    assert means[-1] < means[0] - 0.05


def test_sgd_epoch_errors_name_the_argument() -> None:
    csr = recfast.data.synthetic(10, 8, 40, seed=0).to_csr()
    U, V = torch.zeros(10, 4), torch.zeros(8, 4)
    with pytest.raises(ValueError, match="start and stop must satisfy"):
        bpr_sgd_epoch(U, V, csr, lr=0.1, seed=0, start=5, stop=csr.nnz + 1)
    with pytest.raises(ValueError, match="start and stop must satisfy"):
        bpr_sgd_epoch(U, V, csr, lr=0.1, seed=0, start=-1)
    with pytest.raises(TypeError, match="start must be an int"):
        bpr_sgd_epoch(U, V, csr, lr=0.1, seed=0, start=1.5)
    with pytest.raises(ValueError, match="lr must be a positive number"):
        bpr_sgd_epoch(U, V, csr, lr=0.0, seed=0)
    with pytest.raises(ValueError, match="l2 must be a non-negative number"):
        bpr_sgd_epoch(U, V, csr, lr=0.1, l2=-1.0, seed=0)
    with pytest.raises(ValueError, match="num_negatives must be a positive int"):
        bpr_sgd_epoch(U, V, csr, lr=0.1, seed=0, num_negatives=0)
    with pytest.raises(ValueError, match="num_threads must be a positive int"):
        bpr_sgd_epoch(U, V, csr, lr=0.1, seed=0, num_threads=0)
    with pytest.raises(ValueError, match="csr has shape"):
        bpr_sgd_epoch(U, torch.zeros(9, 4), csr, lr=0.1, seed=0)
    with pytest.raises(ValueError, match="item_bias has 3 entries"):
        bpr_sgd_epoch(U, V, csr, lr=0.1, seed=0, item_bias=torch.zeros(3))
    with pytest.raises(TypeError, match="item_emb must be a float32"):
        bpr_sgd_epoch(U, V.double(), csr, lr=0.1, seed=0)
    with pytest.raises(TypeError, match="csr must be a recfast.CSR"):
        bpr_sgd_epoch(U, V, csr.to_scipy(), lr=0.1, seed=0)
    full = recfast.CSR(torch.tensor([0, 0, 2]), torch.tensor([0, 1], dtype=torch.int32), (2, 2))
    with pytest.raises(ValueError, match="user 1 has no negative item left"):
        bpr_sgd_epoch(torch.zeros(2, 4), torch.zeros(2, 4), full, lr=0.1, seed=0)


def test_gradient_buffers_are_recycled_only_once_free() -> None:
    from recfast._backend import cpu_buffers

    cpu_buffers.clear()
    U = torch.randn(5000, 64, requires_grad=True)  # 1.25 MB: above the pool's 1 MiB floor
    V = torch.randn(6000, 64, requires_grad=True)
    u, i, j = torch.tensor([0, 1, 4999]), torch.tensor([2, 3, 5999]), torch.tensor([4, 5, 0])
    bpr_loss(U, V, u, i, j).backward()
    first_u, first_v = U.grad, V.grad
    want_u, want_v = first_u.clone(), first_v.clone()
    U.grad = V.grad = None  # the tensors live on in first_u / first_v: nothing may reuse them
    bpr_loss(U, V, u, i, j).backward()
    assert U.grad.data_ptr() not in (first_u.data_ptr(), first_v.data_ptr())
    assert torch.equal(first_u, want_u) and torch.equal(first_v, want_v)
    torch.testing.assert_close(U.grad, want_u, rtol=0, atol=0)
    v_ptrs = {first_v.data_ptr(), V.grad.data_ptr()}
    del first_u, first_v
    U.grad = V.grad = None  # now free: the next backward takes the pooled memory, zeroed again
    assert cpu_buffers.held_bytes == 2 * (U.numel() + V.numel()) * 4
    bpr_loss(U, V, u, i, j).backward()
    assert V.grad.data_ptr() in v_ptrs
    torch.testing.assert_close(V.grad, want_v, rtol=0, atol=0)
    (U.grad.sum() + V.grad.sum()).item()  # ordinary tensors
    cpu_buffers.clear()
    assert cpu_buffers.held_bytes == 0
