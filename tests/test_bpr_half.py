"""bpr_loss on float16/bfloat16 tables: CUDA only, float32 accumulation, gradients in the tables' dtype.

The CUDA kernel is compared with the float32 reference on the upcast tables (loss and gradients,
dense, shared-table and sparse). On the CPU: the validation messages, the reference's upcasting
(which the CUDA path without compiled kernels runs) and the dtypes the custom ops declare.
"""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import recfast
from recfast.ops import bpr_loss
from recfast.ops import bpr as bpr_mod
from recfast.ops.bpr import _bpr_loss_reference
from conftest import requires_cuda

HALF = [torch.float16, torch.bfloat16]
# The loss and the gradients are rounded once to the tables' dtype: half an ulp of it.
RTOL = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _batch(n_users=30, n_items=40, B=256, K=1, d=32, seed=0, dtype=torch.float16, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    U = (torch.randn(n_users, d, generator=g) * 0.3).to(dtype)
    V = (torch.randn(n_items, d, generator=g) * 0.3).to(dtype)
    bias = (torch.randn(n_items, generator=g) * 0.1).to(dtype)
    users = torch.randint(0, n_users, (B,), generator=g)  # B >> n_users: many repeated rows
    pos = torch.randint(0, n_items, (B,), generator=g)
    neg = torch.randint(0, n_items, (B, K) if K > 1 else (B,), generator=g)
    return [t.to(device) for t in (U, V, bias, users, pos, neg)]


# ---------------------------------------------------------------------------------------------
# CPU: validation
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", HALF)
def test_cpu_half_tables_rejected(dtype):
    U, V, _, users, pos, neg = _batch(dtype=dtype)
    name = str(dtype).replace("torch.", "")
    with pytest.raises(TypeError, match=rf"bpr_loss: user_emb must be a float32 or float64 tensor on CPU, got {name} "
                                        r"\(float16/bfloat16 tables are accepted on CUDA only"):
        bpr_loss(U, V, users, pos, neg)


@pytest.mark.parametrize("dtype", HALF)
def test_cpu_mixed_dtypes_rejected(dtype):
    U, V, bias, users, pos, neg = _batch(dtype=dtype)
    with pytest.raises(TypeError, match="bpr_loss: item_emb must be a float32 tensor, got"):
        bpr_loss(U.float(), V, users, pos, neg)
    with pytest.raises(TypeError, match="bpr_loss: item_bias must be a float32 tensor"):
        bpr_loss(U.float(), V.float(), users, pos, neg, item_bias=bias)


@pytest.mark.parametrize("dtype", HALF)
def test_sparse_optimizers_reject_half_params_on_cpu(dtype):
    p = torch.nn.Parameter(torch.zeros(4, 2, dtype=dtype))
    p.grad = torch.zeros_like(p)
    name = str(dtype).replace("torch.", "")
    for cls in (recfast.optim.SparseSGD, recfast.optim.SparseAdagrad, recfast.optim.SparseAdam):
        with pytest.raises(TypeError, match=rf"{cls.__name__}: parameters must be float32 or float64 on CPU, got "
                                            rf"{name} \(float16/bfloat16 parameters are accepted on CUDA only\)"):
            cls([p], lr=0.1).step()
    assert recfast.optim._state_dtype(dtype) == torch.float32
    assert recfast.optim._state_dtype(torch.float64) == torch.float64


# ---------------------------------------------------------------------------------------------
# CPU: the reference upcasts; the custom ops declare float32 coef for half tables
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", HALF)
def test_reference_upcasts(dtype):
    U, V, bias, users, pos, neg = _batch(dtype=dtype, K=3)
    Uh, Vh, bh = (t.clone().requires_grad_() for t in (U, V, bias))
    Uf, Vf, bf = (t.float().requires_grad_() for t in (U, V, bias))
    lh = _bpr_loss_reference(Uh, Vh, users, pos, neg, item_bias=bh, l2=1e-2)
    lf = _bpr_loss_reference(Uf, Vf, users, pos, neg, item_bias=bf, l2=1e-2)
    assert lh.dtype == dtype
    torch.testing.assert_close(lh.float(), lf.detach(), rtol=RTOL[dtype], atol=0)
    lh.backward()
    lf.backward()
    for h, f in ((Uh, Uf), (Vh, Vf), (bh, bf)):
        assert h.grad.dtype == dtype
        torch.testing.assert_close(h.grad.float(), f.grad, rtol=RTOL[dtype], atol=1e-5)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("shared", [False, True])
def test_fallback_kernels_upcast(dtype, shared):
    """_forward_reference / _backward_reference (the CUDA path without _C_cuda) on half tables equal
    the float32 ones, rounded once; a shared table's one gradient buffer gets both roles once."""
    U, V, bias, users, pos, neg = _batch(dtype=dtype, K=2)
    if shared:
        V = U
        pos, neg = pos % U.shape[0], neg % U.shape[0]
    neg = neg.reshape(len(users), -1)
    b = None if shared else bias
    loss_h, coef_h = bpr_mod._forward_reference(U, V, b, users, pos, neg, 1e-2)
    loss_f, coef_f = bpr_mod._forward_reference(U.float(), V.float(), None if b is None else b.float(), users, pos,
                                                neg, 1e-2)
    assert loss_h.dtype == dtype and coef_h.dtype == torch.float32
    torch.testing.assert_close(loss_h, loss_f.to(dtype))
    torch.testing.assert_close(coef_h, coef_f)
    scale = bpr_mod._scale(torch.tensor(1.0, dtype=dtype), len(users), "mean", dtype, U.device)
    assert scale.dtype == torch.float32  # 1/B in float16 would be subnormal for large batches
    gU = torch.zeros_like(U)
    gV = gU if shared else torch.zeros_like(V)
    gb = None if shared else torch.zeros_like(bias)
    bpr_mod._backward_reference(U, V, users, pos, neg, coef_h, scale, 1e-2, users, pos, neg.reshape(-1), gU, gV, gb)
    fU = torch.zeros(U.shape)
    fV = fU if shared else torch.zeros(V.shape)
    fb = None if shared else torch.zeros(bias.shape)
    bpr_mod._backward_reference(U.float(), V.float(), users, pos, neg, coef_f, scale, 1e-2, users, pos,
                                neg.reshape(-1), fU, fV, fb)
    assert gU.dtype == dtype
    torch.testing.assert_close(gU, fU.to(dtype))
    if not shared:
        torch.testing.assert_close(gV, fV.to(dtype))
        torch.testing.assert_close(gb, fb.to(dtype))


@pytest.mark.parametrize("dtype", HALF)
def test_custom_op_fake_dtypes(dtype):
    U, V, bias, users, pos, neg = _batch(dtype=dtype, K=2)
    mode = FakeTensorMode()
    args = [mode.from_tensor(t) for t in (U, V, bias, users, pos, neg)]
    with mode:
        loss, coef = bpr_mod._bpr_op(*args, 0.0, "none")
        assert loss.dtype == dtype and coef.dtype == torch.float32
        loss, coef = bpr_mod._bpr_shared_op(args[0], None, *args[3:], 0.0, "mean")
        assert loss.dtype == dtype and loss.shape == () and coef.dtype == torch.float32


# ---------------------------------------------------------------------------------------------
# CUDA: the half kernel against the float32 reference on the upcast tables
# ---------------------------------------------------------------------------------------------

@requires_cuda
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("K", [1, 4])
@pytest.mark.parametrize("mode", ["dense", "shared", "sparse"])
def test_cuda_half_matches_float32_reference(dtype, K, mode):
    U, V, bias, users, pos, neg = _batch(dtype=dtype, K=K, device="cuda")
    if mode == "shared":
        V = U
        pos, neg = pos % U.shape[0], neg % U.shape[0]
    l2 = 1e-2
    tables = [U] if mode == "shared" else [U, V, bias]
    h = [t.clone().requires_grad_() for t in tables]
    f = [t.float().requires_grad_() for t in tables]

    def args(ts):
        u = ts[0]
        v = u if mode == "shared" else ts[1]
        return (u, v, users, pos, neg), dict(item_bias=None if mode == "shared" else ts[2], l2=l2)

    a, kw = args(h)
    loss_h = bpr_loss(*a, **kw, sparse_grad=mode == "sparse")
    a, kw = args(f)
    loss_f = _bpr_loss_reference(*a, **kw)
    assert loss_h.dtype == dtype
    torch.testing.assert_close(loss_h.float(), loss_f.detach(), rtol=RTOL[dtype], atol=1e-6)
    loss_h.backward()
    loss_f.backward()
    for th, tf in zip(h, f):
        g = th.grad.to_dense() if th.grad.is_sparse else th.grad
        assert g.dtype == dtype
        torch.testing.assert_close(g.float(), tf.grad, rtol=RTOL[dtype], atol=1e-5)


@requires_cuda
@pytest.mark.parametrize("dtype", HALF)
def test_cuda_half_reduction_none_and_scores_of_80(dtype):
    """Per-example losses of half tables at |x| = 80 (softplus form) stay exact to the dtype."""
    d = 32
    U = torch.zeros(2, d, device="cuda", dtype=dtype)
    V = torch.zeros(3, d, device="cuda", dtype=dtype)
    U[0, 0], V[1, 0], V[2, 0] = 8.0, 10.0, 0.0  # x = 80 for user 0; x = -80 with the roles swapped
    users = torch.tensor([0, 0], device="cuda")
    loss = bpr_loss(U, V, users, torch.tensor([1, 2], device="cuda"), torch.tensor([2, 1], device="cuda"),
                    reduction="none")
    assert loss.dtype == dtype
    torch.testing.assert_close(loss.float().cpu(), torch.tensor([0.0, 80.0]), rtol=RTOL[dtype], atol=1e-6)


@requires_cuda
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("name", ["SparseSGD", "SparseAdagrad", "SparseAdam"])
def test_cuda_half_sparse_optimizers(dtype, name):
    """Half parameters: float32 states, each step computed in float32 and rounded once. Against
    the same optimizer on a float32 copy given the same (upcast) gradients, step by step."""
    cls = getattr(recfast.optim, name)
    U, V, _, users, pos, neg = _batch(dtype=dtype, device="cuda")
    ph = torch.nn.Parameter(U.clone())
    pf = torch.nn.Parameter(U.float())
    oh, of = cls([ph], lr=0.01), cls([pf], lr=0.01)
    for _ in range(3):
        for p in (ph, pf):
            p.grad = None
        bpr_loss(ph, V, users, pos % U.shape[0], neg % U.shape[0], sparse_grad=True).backward()
        pf.grad = ph.grad.float()
        oh.step()
        of.step()
        assert ph.dtype == dtype and all(s.dtype == torch.float32 for s in oh.state[ph].values()
                                         if isinstance(s, torch.Tensor))
        torch.testing.assert_close(ph.detach().float(), pf.detach().to(dtype).float(), rtol=RTOL[dtype], atol=1e-4)
        pf.data.copy_(ph.data.float())  # the next step starts from the same point
