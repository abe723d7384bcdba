"""Row-sparse optimizers against torch's optimizers and the package reference."""

from __future__ import annotations

import copy

import pytest
import torch

import recfast
from recfast.optim import SparseAdagrad, SparseAdam, SparseSGD
from conftest import requires_cuda


def _run(opt_cls, kwargs, torch_cls, torch_kwargs, steps=4, sparse=True, device="cpu"):
    torch.manual_seed(0)
    a = torch.nn.Embedding(20, 6, sparse=sparse).to(device)
    b = copy.deepcopy(a)
    oa, ob = opt_cls(a.parameters(), **kwargs), torch_cls(b.parameters(), **torch_kwargs)
    g = torch.Generator().manual_seed(1)
    touched = set()
    for _ in range(steps):
        idx = torch.randint(0, 12, (15,), generator=g).to(device)  # rows 12.. are never touched
        touched |= set(idx.tolist())
        for emb, opt in ((a, oa), (b, ob)):
            opt.zero_grad()
            (emb(idx) ** 2).sum().backward()
            opt.step()
    return a, b, oa, touched


@pytest.mark.parametrize("dtype_device", ["cpu"] + (["cuda"] if recfast.cuda_available() else []))
def test_sparse_adam_equals_torch_sparse_adam(dtype_device) -> None:
    a, b, opt, touched = _run(SparseAdam, {"lr": 0.05}, torch.optim.SparseAdam, {"lr": 0.05}, device=dtype_device)
    torch.testing.assert_close(a.weight, b.weight, rtol=1e-5, atol=1e-6)
    untouched = [r for r in range(20) if r not in touched]
    state = opt.state[a.weight]
    assert (state["exp_avg"][untouched] == 0).all() and (state["exp_avg_sq"][untouched] == 0).all()


def test_sparse_sgd_and_adagrad_equal_torch() -> None:
    a, b, _, _ = _run(SparseSGD, {"lr": 0.1}, torch.optim.SGD, {"lr": 0.1})
    torch.testing.assert_close(a.weight, b.weight)
    a, b, _, _ = _run(SparseAdagrad, {"lr": 0.1}, torch.optim.Adagrad, {"lr": 0.1})
    torch.testing.assert_close(a.weight, b.weight, rtol=1e-5, atol=1e-6)


def test_dense_gradients_update_every_row_like_torch() -> None:
    a, b, _, _ = _run(SparseSGD, {"lr": 0.1, "weight_decay": 0.01}, torch.optim.SGD,
                      {"lr": 0.1, "weight_decay": 0.01}, sparse=False)
    torch.testing.assert_close(a.weight, b.weight)


def test_weight_decay_only_on_touched_rows() -> None:
    w = torch.nn.Parameter(torch.ones(5, 2))
    opt = SparseSGD([w], lr=0.5, weight_decay=0.1)
    w.grad = torch.sparse_coo_tensor(torch.tensor([[1, 1]]), torch.ones(2, 2), (5, 2))
    opt.step()
    assert torch.allclose(w[1], torch.full((2,), 1 - 0.5 * (2 + 0.1)))
    assert (w[[0, 2, 3, 4]] == 1).all()


def test_matches_reference_on_bpr_sparse_gradients() -> None:
    from recfast.optim import _reference_step

    torch.manual_seed(0)
    U = torch.nn.Parameter(torch.randn(30, 8))
    V = torch.nn.Parameter(torch.randn(25, 8))
    U2, V2 = copy.deepcopy(U), copy.deepcopy(V)
    opt = SparseAdam([U, V], lr=0.01, weight_decay=0.01)
    state = {id(p): [torch.zeros_like(p), torch.zeros_like(p)] for p in (U2, V2)}
    for step in range(1, 4):
        u, i, j = torch.randint(0, 30, (64,)), torch.randint(0, 25, (64,)), torch.randint(0, 25, (64,))
        opt.zero_grad()
        recfast.ops.bpr_loss(U, V, u, i, j, sparse_grad=True).backward()
        opt.step()
        gU, gV = torch.autograd.grad(recfast.ops.bpr_loss(U2, V2, u, i, j, sparse_grad=True), (U2, V2))
        with torch.no_grad():
            for p, g in ((U2, gU.coalesce()), (V2, gV.coalesce())):
                h = (0.01, 0.01, 0.9, 0.999, 1e-8, 1 - 0.9 ** step, 1 - 0.999 ** step)
                _reference_step("adam", h, p, state[id(p)], g.indices()[0], g.values())
    torch.testing.assert_close(U, U2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(V, V2, rtol=1e-5, atol=1e-6)


def test_state_dict_round_trip_continues_identically() -> None:
    a, _, opt, _ = _run(SparseAdam, {"lr": 0.05}, torch.optim.SparseAdam, {"lr": 0.05})
    b = copy.deepcopy(a)
    opt_b = SparseAdam(b.parameters(), lr=0.05)
    opt_b.load_state_dict(copy.deepcopy(opt.state_dict()))
    idx = torch.tensor([1, 2, 2, 9])
    for emb, o in ((a, opt), (b, opt_b)):
        o.zero_grad()
        (emb(idx) ** 2).sum().backward()
        o.step()
    assert torch.equal(a.weight, b.weight)


def test_errors() -> None:
    p = torch.nn.Parameter(torch.ones(3, 2))
    with pytest.raises(ValueError, match="lr must be positive"):
        SparseSGD([p], lr=0.0)
    with pytest.raises(ValueError, match="betas must be in"):
        SparseAdam([p], betas=(1.0, 0.9))
    q = torch.nn.Parameter(torch.ones(3, 2, dtype=torch.float16))
    q.grad = torch.ones(3, 2, dtype=torch.float16)
    with pytest.raises(TypeError, match="float32 or float64"):
        SparseSGD([q], lr=0.1).step()


@requires_cuda
def test_cuda_on_a_side_stream() -> None:
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        a, b, _, _ = _run(SparseAdagrad, {"lr": 0.1}, torch.optim.Adagrad, {"lr": 0.1}, device="cuda")
    s.synchronize()
    torch.testing.assert_close(a.weight, b.weight, rtol=1e-5, atol=1e-6)
