"""Fused BPR: gather, score, stable log-sigmoid and backward in one pass over the embedding tables.

For example b (user u, positive i, negatives j_1..j_K):

    x_bk   = <U[u], V[i] - V[j_k]> + bias[i] - bias[j_k]
    loss_b = (1/K) sum_k softplus(-x_bk) + l2/2 * (|U[u]|^2 + |V[i]|^2 + (1/K) sum_k |V[j_k]|^2)

and ``reduction`` combines the loss_b: "mean" (LightGCN's penalty l2 * (...) / 2 / B), "sum", or
"none" (a (B,) tensor). An empty batch gives 0 ("mean", "sum") with zero gradients.
"""

from __future__ import annotations

import math
import numbers
import weakref
from typing import Optional

import torch

from .. import _C
from .._backend import (INDEX_DTYPES, _dtype_name, check_range, check_tensor, check_threads, cpu_buffers,
                        cuda_errors, cuda_module, np_view, stream_of)
from ..csr import CSR

__all__ = ["bpr_loss", "bpr_sgd_step", "bpr_sgd_epoch"]

_REDUCTIONS = ("mean", "sum", "none")
_HALF = (torch.float16, torch.bfloat16)  # CUDA only: float32 accumulation, gradients in the tables' dtype


def _acc(dtype: torch.dtype) -> torch.dtype:
    """What the kernels accumulate (and keep coef, scale and gradient scratch) in for tables of ``dtype``."""
    return torch.float32 if dtype in _HALF else dtype


# ---------------------------------------------------------------------------------------------
# Kernel calls
# ---------------------------------------------------------------------------------------------

def _forward(U, V, bias, users, pos, neg, l2):
    B, K = neg.shape
    loss = torch.empty(B, dtype=U.dtype, device=U.device)
    coef = torch.empty(B, K, dtype=_acc(U.dtype), device=U.device)
    if B == 0:
        return loss, coef
    if U.device.type == "cuda":
        mod = cuda_module("bpr_loss")
        if mod is None:
            return _forward_reference(U, V, bias, users, pos, neg, l2)
        with torch.cuda.device(U.device):
            mod.bpr_forward(U.data_ptr(), V.data_ptr(), 0 if bias is None else bias.data_ptr(), U.shape[1],
                            users.data_ptr(), pos.data_ptr(), neg.data_ptr(), B, K, float(l2), loss.data_ptr(),
                            coef.data_ptr(), _dtype_name(U.dtype), stream_of(loss))
        return loss, coef
    _C.bpr_forward(np_view(U), np_view(V), None if bias is None else np_view(bias), np_view(users), np_view(pos),
                   np_view(neg), float(l2), np_view(loss), np_view(coef).reshape(-1), 0)
    return loss, coef


def _backward(U, V, users, pos, neg, coef, scale, l2, urow, prow, nrow, gU, gV, gbias, zero=False):
    """Add the gradients into gU, gV (and gbias); with ``zero`` (CPU) they are uninitialised and the
    kernel zeroes them first, in the parallel region of its scatter."""
    B, K = neg.shape
    if B == 0 and not zero:
        return
    if U.device.type == "cuda":
        assert not zero, "the CUDA backward adds into zeroed gradients"
        mod = cuda_module("bpr_loss")
        if mod is None:
            _backward_reference(U, V, users, pos, neg, coef, scale, l2, urow, prow, nrow, gU, gV, gbias)
            return
        # Half tables: the kernel adds into float32 scratch, rounded to the tables' dtype once at the end.
        dst = (gU, gV, gbias)
        if U.dtype in _HALF:
            gU, gV, gbias = _f32_scratch(dst)
        with torch.cuda.device(U.device):
            mod.bpr_backward(U.data_ptr(), V.data_ptr(), U.shape[1], users.data_ptr(), pos.data_ptr(), neg.data_ptr(),
                             B, K, coef.data_ptr(), scale.data_ptr(), float(l2), urow.data_ptr(), prow.data_ptr(),
                             nrow.data_ptr(), gU.data_ptr(), gV.data_ptr(), 0 if gbias is None else gbias.data_ptr(),
                             _dtype_name(U.dtype), stream_of(gU))
        if U.dtype in _HALF:
            _add_rounded(dst, (gU, gV, gbias))
        return
    _C.bpr_backward(np_view(U), np_view(V), np_view(users), np_view(pos), np_view(neg), np_view(coef).reshape(-1),
                    np_view(scale),
                    float(l2), np_view(urow), np_view(prow), np_view(nrow), np_view(gU), np_view(gV),
                    None if gbias is None else np_view(gbias), 0, zero)


def _f32_scratch(bufs):
    """float32 zeros shaped like each buffer; one for a buffer that appears twice (a shared table)."""
    seen: dict[int, torch.Tensor] = {}
    for g in bufs:
        if g is not None and id(g) not in seen:
            seen[id(g)] = torch.zeros(g.shape, dtype=torch.float32, device=g.device)
    return tuple(None if g is None else seen[id(g)] for g in bufs)


def _add_rounded(bufs, f32) -> None:
    """Add each float32 scratch into its buffer (rounding to the buffer's dtype), a shared one once."""
    done: set[int] = set()
    for d, f in zip(bufs, f32):
        if d is not None and id(d) not in done:
            d.add_(f)
            done.add(id(d))


def _reduce(loss_b: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return loss_b
    if reduction == "sum":
        return loss_b.sum()
    return loss_b.mean() if loss_b.numel() else loss_b.sum()


def _scale(grad: torch.Tensor, B: int, reduction: str, dtype, device) -> torch.Tensor:
    dtype = _acc(dtype)  # half tables: 1/B in float16 would be subnormal for large batches
    if reduction == "none":
        return grad.to(dtype).contiguous()
    g = grad.to(dtype) / (B if reduction == "mean" and B else 1)
    return g.expand(B).contiguous() if B else torch.empty(0, dtype=dtype, device=device)


def _scale_cpu(grad: torch.Tensor, B: int, reduction: str, dtype: torch.dtype) -> torch.Tensor:
    """The eager CPU backward's scale: one per example for "none", else a single value, which the
    CPU kernels read with stride 0 (no (B,) tensor to fill)."""
    if reduction == "none":
        return grad.to(dtype).contiguous()
    return torch.full((1,), float(grad) / (B if reduction == "mean" and B else 1), dtype=dtype)


# ---------------------------------------------------------------------------------------------
# Dense-gradient path: a custom op torch.compile can see.
# ---------------------------------------------------------------------------------------------

@torch.library.custom_op("recfast::bpr_loss", mutates_args=())
def _bpr_op(user_emb: torch.Tensor, item_emb: torch.Tensor, item_bias: Optional[torch.Tensor], users: torch.Tensor,
            pos: torch.Tensor, neg: torch.Tensor, l2: float, reduction: str) -> tuple[torch.Tensor, torch.Tensor]:
    loss_b, coef = _forward(user_emb, item_emb, item_bias, users, pos, neg, l2)
    return _reduce(loss_b, reduction), coef


@_bpr_op.register_fake
def _(user_emb, item_emb, item_bias, users, pos, neg, l2, reduction):
    B, K = neg.shape
    out = user_emb.new_empty(B) if reduction == "none" else user_emb.new_empty(())
    return out, user_emb.new_empty(B, K, dtype=_acc(user_emb.dtype))


def _bpr_setup(ctx, inputs, output):
    user_emb, item_emb, item_bias, users, pos, neg, l2, reduction = inputs
    ctx.save_for_backward(user_emb, item_emb, users, pos, neg, output[1])
    ctx.l2, ctx.reduction, ctx.has_bias = l2, reduction, item_bias is not None


@torch.library.custom_op("recfast::bpr_loss_backward", mutates_args=())
def _bpr_backward_op(user_emb: torch.Tensor, item_emb: torch.Tensor, users: torch.Tensor, pos: torch.Tensor,
                     neg: torch.Tensor, coef: torch.Tensor, grad: torch.Tensor, l2: float, reduction: str,
                     has_bias: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dense gradients of the tables (and of the bias; empty without one)."""
    U, V = user_emb, item_emb
    B = users.numel()
    scale = _scale(grad, B, reduction, U.dtype, U.device)
    gU, gV = torch.zeros_like(U), torch.zeros_like(V)
    gbias = torch.zeros(V.shape[0] if has_bias else 0, dtype=U.dtype, device=U.device)
    _backward(U, V, users, pos, neg, coef, scale, l2, users, pos, neg.reshape(-1), gU, gV, gbias if has_bias else None)
    return gU, gV, gbias


@_bpr_backward_op.register_fake
def _(user_emb, item_emb, users, pos, neg, coef, grad, l2, reduction, has_bias):
    n = item_emb.shape[0] if has_bias else 0
    return torch.empty_like(user_emb), torch.empty_like(item_emb), user_emb.new_empty(n)


@cuda_errors("bpr_loss")  # the backward, which autograd runs later
def _bpr_backward(ctx, grad_loss, _grad_coef):
    U, V, users, pos, neg, coef = ctx.saved_tensors
    gU, gV, gbias = _bpr_backward_op(U, V, users, pos, neg, coef, grad_loss, ctx.l2, ctx.reduction, ctx.has_bias)
    return gU, gV, gbias if ctx.has_bias else None, None, None, None, None, None


_bpr_op.register_autograd(_bpr_backward, setup_context=_bpr_setup)


# One table for users and items (user_emb is item_emb, e.g. LightGCN's propagated embeddings with
# item ids offset by n_users): one dense gradient, without the two slice gradients, their copies
# and their sum that final[:n_users] / final[n_users:] cost in autograd. The kernels may write
# both gradient roles into one buffer: the CPU backward gives each row to one thread by its index
# alone (whatever role it plays), CUDA adds atomically and the reference uses index_add_.
@torch.library.custom_op("recfast::bpr_loss_shared", mutates_args=())
def _bpr_shared_op(emb: torch.Tensor, item_bias: Optional[torch.Tensor], users: torch.Tensor, pos: torch.Tensor,
                   neg: torch.Tensor, l2: float, reduction: str) -> tuple[torch.Tensor, torch.Tensor]:
    loss_b, coef = _forward(emb, emb, item_bias, users, pos, neg, l2)
    return _reduce(loss_b, reduction), coef


@_bpr_shared_op.register_fake
def _(emb, item_bias, users, pos, neg, l2, reduction):
    B, K = neg.shape
    out = emb.new_empty(B) if reduction == "none" else emb.new_empty(())
    return out, emb.new_empty(B, K, dtype=_acc(emb.dtype))


def _bpr_shared_setup(ctx, inputs, output):
    emb, item_bias, users, pos, neg, l2, reduction = inputs
    ctx.save_for_backward(emb, users, pos, neg, output[1])
    ctx.l2, ctx.reduction, ctx.has_bias = l2, reduction, item_bias is not None


@torch.library.custom_op("recfast::bpr_loss_shared_backward", mutates_args=())
def _bpr_shared_backward_op(emb: torch.Tensor, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor,
                            coef: torch.Tensor, grad: torch.Tensor, l2: float, reduction: str,
                            has_bias: bool) -> tuple[torch.Tensor, torch.Tensor]:
    B = users.numel()
    scale = _scale(grad, B, reduction, emb.dtype, emb.device)
    g = torch.zeros_like(emb)
    gbias = torch.zeros(emb.shape[0] if has_bias else 0, dtype=emb.dtype, device=emb.device)
    _backward(emb, emb, users, pos, neg, coef, scale, l2, users, pos, neg.reshape(-1), g, g,
              gbias if has_bias else None)
    return g, gbias


@_bpr_shared_backward_op.register_fake
def _(emb, users, pos, neg, coef, grad, l2, reduction, has_bias):
    return torch.empty_like(emb), emb.new_empty(emb.shape[0] if has_bias else 0)


@cuda_errors("bpr_loss")
def _bpr_shared_backward(ctx, grad_loss, _grad_coef):
    E, users, pos, neg, coef = ctx.saved_tensors
    g, gbias = _bpr_shared_backward_op(E, users, pos, neg, coef, grad_loss, ctx.l2, ctx.reduction, ctx.has_bias)
    return g, gbias if ctx.has_bias else None, None, None, None, None, None


_bpr_shared_op.register_autograd(_bpr_shared_backward, setup_context=_bpr_shared_setup)


# ---------------------------------------------------------------------------------------------
# Eager CPU path of the dense gradient: the same kernels without the custom op's dispatch, which
# cost more than the kernels at batch 2,048 (about 0.2 ms of Python per forward+backward). The
# backward kernel zeroes the torch.empty gradient buffers itself, in the region of its scatter
# (no torch fill and its fork per table), and "mean"/"sum" pass one scale instead of a (B,) one.
# The ids' ranges are checked by the forward binding. torch.compile, FakeTensor, functorch and
# dispatch modes take the custom ops above.
# ---------------------------------------------------------------------------------------------

_PLAIN = (torch.Tensor, torch.nn.Parameter)


def _plain_eager_cpu(U: torch.Tensor, V: torch.Tensor, bias: Optional[torch.Tensor]) -> bool:
    return (U.device.type == "cpu" and type(U) in _PLAIN and type(V) in _PLAIN
            and (bias is None or type(bias) in _PLAIN) and not torch.compiler.is_compiling()
            and not torch._C._len_torch_dispatch_stack() and not torch._C._are_functorch_transforms_active())


class _BPRDenseCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, U, V, bias, users, pos, neg, l2, reduction):  # V None: U is the shared table
        loss, coef = _forward(U, U if V is None else V, bias, users, pos, neg, l2)
        ctx.save_for_backward(U, V, users, pos, neg, coef)
        ctx.l2, ctx.reduction, ctx.has_bias = l2, reduction, bias is not None
        return _reduce(loss, reduction)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        U, V, users, pos, neg, coef = ctx.saved_tensors
        T = U if V is None else V
        B = users.numel()
        scale = _scale_cpu(grad, B, ctx.reduction, coef.dtype)
        gU = cpu_buffers.empty(tuple(U.shape), U.dtype)  # the kernel zeroes it (zero=True below)
        gV = gU if V is None else cpu_buffers.empty(tuple(V.shape), V.dtype)
        gbias = torch.empty(T.shape[0], dtype=U.dtype) if ctx.has_bias else None
        _backward(U, T, users, pos, neg, coef, scale, ctx.l2, users, pos, neg.reshape(-1), gU, gV, gbias, zero=True)
        return gU, None if V is None else gV, gbias, None, None, None, None, None


# ---------------------------------------------------------------------------------------------
# Sparse-gradient path: only the touched rows, as coalesced sparse COO gradients.
# ---------------------------------------------------------------------------------------------

class _BPRSparse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, U, V, bias, users, pos, neg, l2, reduction):
        loss_b, coef = _forward(U, V, bias, users, pos, neg, l2)
        ctx.save_for_backward(U, V, bias if bias is not None else torch.empty(0), users, pos, neg, coef)
        ctx.l2, ctx.reduction, ctx.has_bias = l2, reduction, bias is not None
        return _reduce(loss_b, reduction)

    @staticmethod
    @cuda_errors("bpr_loss")
    def backward(ctx, grad):
        U, V, bias, users, pos, neg, coef = ctx.saved_tensors
        B, K = neg.shape
        if U.device.type == "cpu":
            return _sparse_backward_cpu(U, V, bias if ctx.has_bias else None, users, pos, neg, coef, grad, ctx.l2,
                                        ctx.reduction)
        scale = _scale(grad, B, ctx.reduction, U.dtype, U.device)
        urows, urow = torch.unique(users, return_inverse=True)
        irows, inv = torch.unique(torch.cat([pos, neg.reshape(-1)]), return_inverse=True)
        gU = torch.zeros(urows.numel(), U.shape[1], dtype=U.dtype, device=U.device)
        gV = torch.zeros(irows.numel(), V.shape[1], dtype=V.dtype, device=V.device)
        gb = torch.zeros(irows.numel(), dtype=U.dtype, device=U.device) if ctx.has_bias else None
        _backward(U, V, users, pos, neg, coef, scale, ctx.l2, urow.contiguous(), inv[:B].contiguous(),
                  inv[B:].contiguous(), gU, gV, gb)
        return (_sparse_coo(urows, gU, U.shape), _sparse_coo(irows, gV, V.shape),
                _sparse_coo(irows, gb, bias.shape) if ctx.has_bias else None, None, None, None, None, None)


def _sparse_coo(rows: torch.Tensor, values: torch.Tensor, size) -> torch.Tensor:
    return torch.sparse_coo_tensor(rows[None], values, size, is_coalesced=True, check_invariants=False)


def _sparse_backward_cpu(U, V, bias, users, pos, neg, coef, grad, l2, reduction):
    """The CPU sparse gradients from one kernel call (the distinct rows, each position's index among
    them, zeroing and scatter), into two buffers sliced for the outputs."""
    B, K = neg.shape
    d = U.shape[1]
    mu_cap, mi_cap = min(B, U.shape[0]), min(B * (K + 1), V.shape[0])
    scale = _scale_cpu(grad, B, reduction, U.dtype)
    ids = torch.empty(mu_cap + B + mi_cap + B * (K + 1), dtype=torch.int64)
    urows, urow, irows, iinv = ids.split((mu_cap, B, mi_cap, B * (K + 1)))
    vals = torch.empty((mu_cap + mi_cap) * d + (mi_cap if bias is not None else 0), dtype=U.dtype)
    gU, gV = vals[:mu_cap * d].view(mu_cap, d), vals[mu_cap * d:(mu_cap + mi_cap) * d].view(mi_cap, d)
    gb = vals[(mu_cap + mi_cap) * d:] if bias is not None else None
    mu, mi = _C.bpr_backward_sparse(np_view(U), np_view(V), np_view(users), np_view(pos), np_view(neg),
                                    np_view(coef).reshape(-1), np_view(scale), float(l2), np_view(urows),
                                    np_view(urow), np_view(irows), np_view(iinv), np_view(gU), np_view(gV),
                                    None if gb is None else np_view(gb), 0)
    return (_sparse_coo(urows[:mu], gU[:mu], U.shape), _sparse_coo(irows[:mi], gV[:mi], V.shape),
            _sparse_coo(irows[:mi], gb[:mi], bias.shape) if gb is not None else None, None, None, None, None, None)


# ---------------------------------------------------------------------------------------------
# Public ops
# ---------------------------------------------------------------------------------------------

def _check_ids(op: str, name: str, t: torch.Tensor, upper: int, device: torch.device) -> torch.Tensor:
    check_tensor(op, name, t, dtypes=INDEX_DTYPES, device=device, contiguous=False)
    if device.type != "cpu" or op != "bpr_loss":  # bpr_loss's CPU forward binding checks the range itself
        check_range(op, name, t, upper)
    return t.to(torch.int64).contiguous()


@cuda_errors("bpr_loss")
def bpr_loss(
    user_emb: torch.Tensor,
    item_emb: torch.Tensor,
    users: torch.Tensor,
    pos_items: torch.Tensor,
    neg_items: torch.Tensor,
    *,
    item_bias: torch.Tensor | None = None,
    l2: float = 0.0,
    reduction: str = "mean",
    sparse_grad: bool = False,
) -> torch.Tensor:
    """The BPR loss of (user, positive, negatives) triples, fused forward and backward.

    Parameters
    ----------
    user_emb : (n_users, d) float32 (float64 too, e.g. for gradcheck): a parameter or the output of
        propagation. On CUDA also float16 or bfloat16: loads are converted to float32 and everything
        accumulates in float32; the loss is returned, and the gradients given, in the tables' dtype
        (the gradients are summed in float32 scratch and rounded once).
    item_emb : (n_items, d), same dtype and device. It may be ``user_emb`` itself (LightGCN's
        propagated table, item ids offset by n_users): the gradient is then one dense table,
        without the copies that slicing the table into users and items costs in autograd.
    users, pos_items : int (B,).
    neg_items : int (B,) or (B, K); the loss averages over the K negatives.
    item_bias : optional (n_items,).
    l2 : penalty on the gathered rows (see the module docstring).
    reduction : "mean", "sum" or "none".
    sparse_grad : give the tables coalesced sparse COO gradients of the touched rows only (for
        ``recfast.optim``'s row-sparse optimizers and ``torch.optim.SparseAdam``); the default gives
        dense gradients through the ``recfast::bpr_loss`` custom op, which ``torch.compile`` sees.

    Example
    -------
    >>> import torch, recfast
    >>> u = torch.randn(4, 8, requires_grad=True); v = torch.randn(6, 8, requires_grad=True)
    >>> loss = recfast.ops.bpr_loss(u, v, torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([4, 5]))
    >>> loss.backward(); u.grad.shape
    torch.Size([4, 8])
    """
    op = "bpr_loss"
    on_cuda = isinstance(user_emb, torch.Tensor) and user_emb.device.type == "cuda"
    if not on_cuda and isinstance(user_emb, torch.Tensor) and user_emb.dtype in _HALF:
        raise TypeError(f"{op}: user_emb must be a float32 or float64 tensor on CPU, got {_dtype_name(user_emb.dtype)} "
                        "(float16/bfloat16 tables are accepted on CUDA only; call .float() on CPU)")
    floats = (torch.float32, torch.float64) + (_HALF if on_cuda else ())
    check_tensor(op, "user_emb", user_emb, dtypes=floats, ndim=2)
    check_tensor(op, "item_emb", item_emb, dtypes=(user_emb.dtype,), ndim=2, device=user_emb.device)
    if item_emb.shape[1] != user_emb.shape[1]:
        raise ValueError(f"{op}: item_emb has dimension {item_emb.shape[1]}, user_emb {user_emb.shape[1]}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if isinstance(l2, bool) or not isinstance(l2, numbers.Real) or not 0 <= l2 < math.inf:
        raise ValueError(f"{op}: l2 must be a non-negative number, got {l2!r}")
    dev = user_emb.device
    n_users, n_items = user_emb.shape[0], item_emb.shape[0]
    users64 = _check_ids(op, "users", users, n_users, dev)
    pos64 = _check_ids(op, "pos_items", pos_items, n_items, dev)
    neg64 = _check_ids(op, "neg_items", neg_items, n_items, dev)
    if users64.dim() != 1 or pos64.shape != users64.shape:
        raise ValueError(f"{op}: users and pos_items must be (B,), got {tuple(users.shape)} and {tuple(pos_items.shape)}")
    if neg64.dim() == 1:
        neg64 = neg64.unsqueeze(1)
    if neg64.dim() != 2 or neg64.shape[0] != users64.shape[0] or neg64.shape[1] == 0:
        raise ValueError(f"{op}: neg_items must be (B,) or (B, K) with K >= 1 and B = {users64.numel()}, "
                         f"got {tuple(neg_items.shape)}")
    if item_bias is not None:
        check_tensor(op, "item_bias", item_bias, dtypes=(user_emb.dtype,), ndim=1, device=dev)
        if item_bias.numel() != n_items:
            raise ValueError(f"{op}: item_bias has {item_bias.numel()} entries, expected n_items = {n_items}")
    U, V = user_emb.contiguous(), item_emb.contiguous()
    bias = None if item_bias is None else item_bias.contiguous()
    if sparse_grad:
        return _BPRSparse.apply(U, V, bias, users64, pos64, neg64.contiguous(), float(l2), reduction)
    if _plain_eager_cpu(U, V, bias):
        return _BPRDenseCPU.apply(U, None if user_emb is item_emb else V, bias, users64, pos64, neg64.contiguous(),
                                  float(l2), reduction)
    if user_emb is item_emb:
        return _bpr_shared_op(U, bias, users64, pos64, neg64.contiguous(), float(l2), reduction)[0]
    return _bpr_op(U, V, bias, users64, pos64, neg64.contiguous(), float(l2), reduction)[0]


def _check_sgd(op: str, user_emb, item_emb, csr, item_bias, num_negatives, lr, l2, seed) -> None:
    for name, t in (("user_emb", user_emb), ("item_emb", item_emb)):
        check_tensor(op, name, t, dtypes=(torch.float32,), ndim=2)
        if t.device.type != "cpu":
            raise ValueError(f"{op}: {name} must be on the CPU (the fused step is a CPU kernel); on CUDA use "
                             "bpr_loss(..., sparse_grad=True) with a recfast.optim optimizer")
    if not isinstance(csr, CSR):
        raise TypeError(f"{op}: csr must be a recfast.CSR, got {type(csr).__name__}")
    if csr.shape != (user_emb.shape[0], item_emb.shape[0]):
        raise ValueError(f"{op}: csr has shape {csr.shape}, expected (n_users, n_items) = "
                         f"{(user_emb.shape[0], item_emb.shape[0])}")
    if item_emb.shape[1] != user_emb.shape[1]:
        raise ValueError(f"{op}: item_emb has dimension {item_emb.shape[1]}, user_emb {user_emb.shape[1]}")
    if item_bias is not None:
        check_tensor(op, "item_bias", item_bias, dtypes=(torch.float32,), ndim=1)
        if item_bias.device.type != "cpu":
            raise ValueError(f"{op}: item_bias must be on the CPU")
        if item_bias.numel() != item_emb.shape[0]:
            raise ValueError(f"{op}: item_bias has {item_bias.numel()} entries, expected {item_emb.shape[0]}")
    if isinstance(num_negatives, bool) or not isinstance(num_negatives, int) or num_negatives < 1:
        raise ValueError(f"{op}: num_negatives must be a positive int, got {num_negatives!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{op}: seed must be an int, got {type(seed).__name__}")
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not 0 < lr < math.inf:
        raise ValueError(f"{op}: lr must be a positive number (finite), got {lr!r}")
    if isinstance(l2, bool) or not isinstance(l2, numbers.Real) or not 0 <= l2 < math.inf:
        raise ValueError(f"{op}: l2 must be a non-negative number (finite), got {l2!r}")


def _threads(op: str, num_threads: int | None) -> int:
    n = check_threads(op, num_threads)
    if num_threads is not None and n < 1:
        raise ValueError(f"{op}: num_threads must be a positive int or None, got {num_threads!r}")
    return n


# The row of each stored entry (int32), computed once per CSR: CSR is immutable.
_ROW_OF: "weakref.WeakKeyDictionary[CSR, torch.Tensor]" = weakref.WeakKeyDictionary()


def _row_of(csr: CSR) -> torch.Tensor:
    r = _ROW_OF.get(csr)
    if r is None:
        n = csr.n_rows
        r = torch.repeat_interleave(torch.arange(n, dtype=torch.int32), csr.row_lengths().to("cpu"),
                                    output_size=csr.nnz)
        _ROW_OF[csr] = r
    return r


@torch.no_grad()
def bpr_sgd_epoch(
    user_emb: torch.Tensor,
    item_emb: torch.Tensor,
    csr: CSR,
    *,
    lr: float,
    seed: int,
    l2: float = 0.0,
    num_negatives: int = 1,
    item_bias: torch.Tensor | None = None,
    start: int = 0,
    stop: int | None = None,
    shuffle: bool = True,
    num_threads: int | None = None,
) -> tuple[float, int]:
    """Positions ``[start, stop)`` of one fused SGD epoch of BPR-MF over every stored entry of ``csr``.

    One kernel call samples, scores and updates the CPU float32 tables in place. Position ``p``
    trains on stored entry ``e = order(p)`` (its row is the user, its column the positive), where
    ``order`` is a seeded permutation of ``range(csr.nnz)`` computed on the fly (a Feistel network;
    no shuffled index array) or the identity with ``shuffle=False``. Its ``num_negatives`` negatives
    are those of ``sample_negatives(csr, users, num_negatives, seed=seed, row_offset=p)`` (exact:
    never one of the user's items), and the update is ``bpr_sgd_step``'s. Splitting an epoch into
    calls on consecutive ``[start, stop)`` chunks with the same ``seed`` gives the same epoch.

    Threads take blocks of 4,096 consecutive positions from a shared counter and update rows
    Hogwild, as implicit does: results are bit-reproducible with ``num_threads=1``; with more
    threads, concurrent updates of a shared row may interleave and the blocks go to whichever thread
    is free, so the last bits vary between runs.

    Returns ``(sum of the per-position losses, number of positions)``: their ratio is the mean BPR
    loss (without the ``l2`` term) before each position's update.

    Example
    -------
    >>> import torch, recfast
    >>> csr = recfast.data.synthetic(50, 40, 500, seed=0).to_csr()
    >>> u, v = torch.randn(50, 8) * 0.1, torch.randn(40, 8) * 0.1
    >>> total, n = recfast.ops.bpr_sgd_epoch(u, v, csr, lr=0.05, seed=0)
    >>> n == csr.nnz and 0.6 < total / n < 0.7
    True
    """
    op = "bpr_sgd_epoch"
    _check_sgd(op, user_emb, item_emb, csr, item_bias, num_negatives, lr, l2, seed)
    nnz = csr.nnz
    stop = nnz if stop is None else stop
    for name, v in (("start", start), ("stop", stop)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{op}: {name} must be an int, got {type(v).__name__}")
    if not 0 <= start <= stop <= nnz:
        raise ValueError(f"{op}: start and stop must satisfy 0 <= start <= stop <= nnz = {nnz}, "
                         f"got start={start}, stop={stop}")
    if csr.n_rows >= 2**31:
        raise ValueError(f"{op}: csr has {csr.n_rows} rows; at most 2**31 - 1 are supported")
    threads = _threads(op, num_threads)
    c = csr.to("cpu")
    total, count, bad = _C.bpr_sgd_epoch(
        np_view(user_emb), np_view(item_emb), None if item_bias is None else np_view(item_bias), np_view(c.indptr),
        np_view(c.indices), np_view(_row_of(c)), int(start), int(stop), bool(shuffle), int(num_negatives),
        int(seed) & ((1 << 64) - 1), float(lr), float(l2), threads)
    if bad >= 0:
        e = int(_C.bpr_epoch_order(nnz, int(seed) & ((1 << 64) - 1), bad, bad + 1)[0]) if shuffle else bad
        u = int(_row_of(c)[e])
        raise ValueError(f"{op}: user {u} has no negative item left (it has all {csr.n_cols} items)")
    return float(total), int(count)


@torch.no_grad()
def bpr_sgd_step(
    user_emb: torch.Tensor,
    item_emb: torch.Tensor,
    csr: CSR,
    users: torch.Tensor,
    pos_items: torch.Tensor,
    *,
    lr: float,
    l2: float = 0.0,
    num_negatives: int = 1,
    seed: int,
    item_bias: torch.Tensor | None = None,
    row_offset: int = 0,
    num_threads: int | None = None,
) -> float:
    """One fused SGD step of BPR-MF on CPU float32 tables, updated in place; returns the mean loss.

    Each example draws ``num_negatives`` exact negatives from ``csr`` (the draws of
    ``sample_negatives(csr, users, num_negatives, seed=seed, row_offset=row_offset)``), scores them
    and applies the gradient of the BPR loss (with the ``l2`` penalty of ``bpr_loss``) to its rows,
    all in one kernel call. Across threads the updates are Hogwild, as in implicit: concurrent
    updates of a shared row may interleave, so results are bit-reproducible with ``num_threads=1``.

    Example
    -------
    >>> import torch, recfast
    >>> csr = recfast.data.synthetic(50, 40, 500, seed=0).to_csr()
    >>> u, v = torch.randn(50, 8) * 0.1, torch.randn(40, 8) * 0.1
    >>> users = torch.repeat_interleave(torch.arange(50), csr.row_lengths())
    >>> loss = recfast.ops.bpr_sgd_step(u, v, csr, users, csr.indices.long(), lr=0.05, seed=0)
    >>> 0.6 < loss < 0.7
    True
    """
    op = "bpr_sgd_step"
    _check_sgd(op, user_emb, item_emb, csr, item_bias, num_negatives, lr, l2, seed)
    nt = check_threads(op, num_threads)
    u64 = _check_ids(op, "users", users, user_emb.shape[0], torch.device("cpu"))
    p64 = _check_ids(op, "pos_items", pos_items, item_emb.shape[0], torch.device("cpu"))
    if u64.dim() != 1 or p64.shape != u64.shape:
        raise ValueError(f"{op}: users and pos_items must be (B,) of equal length")
    if isinstance(row_offset, bool) or not isinstance(row_offset, numbers.Integral) or \
            not 0 <= row_offset <= 2**63 - 1 - u64.numel():
        raise ValueError(f"{op}: row_offset must be a non-negative int below 2**63 - len(users), got {row_offset!r}")
    c = csr.to("cpu")
    loss, bad = _C.bpr_sgd_step(np_view(user_emb), np_view(item_emb), None if item_bias is None else np_view(item_bias),
                                np_view(c.indptr), np_view(c.indices), np_view(u64), np_view(p64), int(num_negatives),
                                int(seed) & ((1 << 64) - 1), int(row_offset), float(lr), float(l2), nt)
    if bad >= 0:
        raise ValueError(f"{op}: user {int(u64[bad])} has no negative item left (it has all {csr.n_cols} items)")
    return float(loss)


# ---------------------------------------------------------------------------------------------
# Reference (plain torch) and the fallback for CUDA tensors without _C_cuda.
# ---------------------------------------------------------------------------------------------

def _bpr_loss_reference(user_emb, item_emb, users, pos_items, neg_items, *, item_bias=None, l2=0.0,
                        reduction="mean") -> torch.Tensor:
    """Embedding gather, mul-sum, logsigmoid, autograd; half tables are upcast to float32 (the loss is
    returned in their dtype, and autograd gives gradients in their dtype)."""
    if user_emb.dtype in _HALF:
        loss = _bpr_loss_reference(user_emb.float(), item_emb.float(), users, pos_items, neg_items,
                                   item_bias=None if item_bias is None else item_bias.float(), l2=l2,
                                   reduction=reduction)
        return loss.to(user_emb.dtype)
    neg = neg_items if neg_items.dim() == 2 else neg_items.unsqueeze(1)
    u = user_emb[users.long()]
    i = item_emb[pos_items.long()]
    j = item_emb[neg.long()]
    x = (u * i).sum(-1, keepdim=True) - (u.unsqueeze(1) * j).sum(-1)
    if item_bias is not None:
        x = x + item_bias[pos_items.long()].unsqueeze(1) - item_bias[neg.long()]
    loss_b = -torch.nn.functional.logsigmoid(x).mean(1)
    if l2:
        loss_b = loss_b + l2 / 2 * (u.pow(2).sum(-1) + i.pow(2).sum(-1) + j.pow(2).sum(-1).mean(1))
    return _reduce(loss_b, reduction)


def _forward_reference(U, V, bias, users, pos, neg, l2):
    if U.dtype in _HALF:  # float32 arithmetic, the loss rounded to the tables' dtype (as the kernel)
        loss, coef = _forward_reference(U.float(), V.float(), None if bias is None else bias.float(), users, pos,
                                        neg, l2)
        return loss.to(U.dtype), coef
    with torch.no_grad():
        u, i, j = U[users], V[pos], V[neg]
        x = (u * i).sum(-1, keepdim=True) - (u.unsqueeze(1) * j).sum(-1)
        if bias is not None:
            x = x + bias[pos].unsqueeze(1) - bias[neg]
        loss = torch.nn.functional.softplus(-x).mean(1)
        if l2:
            loss = loss + l2 / 2 * (u.pow(2).sum(-1) + i.pow(2).sum(-1) + j.pow(2).sum(-1).mean(1))
        return loss, -torch.sigmoid(-x)


def _backward_reference(U, V, users, pos, neg, coef, scale, l2, urow, prow, nrow, gU, gV, gbias):
    if U.dtype in _HALF:  # float32 arithmetic and scratch, rounded once (as the kernel)
        dst = (gU, gV, gbias)
        f32 = _f32_scratch(dst)
        _backward_reference(U.float(), V.float(), users, pos, neg, coef, scale, l2, urow, prow, nrow, *f32)
        _add_rounded(dst, f32)
        return
    K = neg.shape[1]
    c = coef * scale[:, None] / K
    u, i, j = U[users], V[pos], V[neg]
    gu = c.sum(1, keepdim=True) * i - (c.unsqueeze(-1) * j).sum(1) + l2 * scale[:, None] * u
    gi = c.sum(1, keepdim=True) * u + l2 * scale[:, None] * i
    gj = -c.unsqueeze(-1) * u.unsqueeze(1) + (l2 * scale[:, None, None] / K) * j
    gU.index_add_(0, urow, gu)
    gV.index_add_(0, prow, gi)
    gV.index_add_(0, nrow, gj.reshape(-1, U.shape[1]))
    if gbias is not None:
        gbias.index_add_(0, prow, c.sum(1))
        gbias.index_add_(0, nrow, -c.reshape(-1))
