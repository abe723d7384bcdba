"""Row-sparse optimizers: update only the rows a batch touched, in one fused kernel per parameter.

Embedding tables are most of a recommender's parameters, and a dense optimizer step touches every
row on every batch. These optimizers take sparse COO gradients (``nn.Embedding(sparse=True)``,
``recfast.ops.bpr_loss(..., sparse_grad=True)``); repeated rows are summed (coalesced) first. A
dense gradient updates every row (the same formulas).

- ``SparseSGD``: p -= lr * (g + weight_decay * p)
- ``SparseAdagrad``: s += g^2; p -= lr * g / (sqrt(s) + eps)
- ``SparseAdam``: torch.optim.SparseAdam's lazy moments (only touched rows' moments move) with its
  global step count for the bias corrections.

In all three, weight decay adds ``weight_decay * p`` to the gradient of the touched rows.

Parameters are float32 or float64; on CUDA also float16 and bfloat16, whose states (Adagrad's
sum, Adam's moments) are float32 and each update is computed in float32 and rounded once to the
parameter's dtype. An update smaller than half a unit in the last place of a half parameter is
lost in that rounding (bfloat16 keeps 8 bits): for long training keep float32 parameters.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from . import _C
from ._backend import _dtype_name, cuda_errors, cuda_module, np_view, stream_of

__all__ = ["SparseSGD", "SparseAdagrad", "SparseAdam"]

_KIND = {"sgd": 0, "adagrad": 1, "adam": 2}
_HALF = (torch.float16, torch.bfloat16)  # CUDA only: float32 states, float32 arithmetic


class _RowSparseOptimizer(torch.optim.Optimizer):
    _kind = "sgd"
    _states: tuple[str, ...] = ()

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        if defaults["lr"] <= 0:
            raise ValueError(f"{type(self).__name__}: lr must be positive, got {defaults['lr']}")
        if defaults.get("weight_decay", 0.0) < 0:
            raise ValueError(f"{type(self).__name__}: weight_decay must be non-negative")
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.dtype not in (torch.float32, torch.float64) and not (p.is_cuda and p.dtype in _HALF):
                    where = "" if p.is_cuda else " on CPU"
                    raise TypeError(f"{type(self).__name__}: parameters must be float32 or float64{where}, got "
                                    f"{_dtype_name(p.dtype)} (float16/bfloat16 parameters are accepted on CUDA only)")
                with cuda_errors(f"recfast.optim.{type(self).__name__}.step", p.device if p.is_cuda else None):
                    state = self.state[p]
                    if not state:  # all or nothing: an out-of-memory here leaves no half-made state
                        fresh = {name: torch.zeros_like(p, dtype=_state_dtype(p.dtype),
                                                        memory_format=torch.contiguous_format)
                                 for name in self._states}
                        state.update(step=0, **fresh)
                    state["step"] += 1
                    # half gradients are summed (coalesced) in float32, as the states are kept
                    grad = p.grad.to(torch.float32) if p.dtype in _HALF else p.grad
                    rows, values = _rows_and_values(grad, p)
                    self._apply(group, state, p, rows, values)
        return loss

    def _hyper(self, group: dict[str, Any], step: int) -> tuple[float, ...]:
        beta1, beta2 = group.get("betas", (0.9, 0.999))
        bc1 = 1 - beta1 ** step if self._kind == "adam" else 1.0
        bc2 = 1 - beta2 ** step if self._kind == "adam" else 1.0
        return (group["lr"], group.get("weight_decay", 0.0), beta1, beta2, group.get("eps", 1e-8), bc1, bc2)

    def _apply(self, group, state, p, rows, values) -> None:
        if not p.is_contiguous():
            raise ValueError(f"{type(self).__name__}: parameters must be contiguous")
        d = p[0].numel() if p.dim() > 1 else 1
        values = values.reshape(rows.numel(), d).to(_state_dtype(p.dtype)).contiguous()
        rows = rows.to(torch.int64).contiguous()
        states = [state[name] for name in self._states] + [None] * (2 - len(self._states))
        h = self._hyper(group, state["step"])
        if p.device.type == "cuda":
            mod = cuda_module("sparse optimizer")
            if mod is None:
                table = p.view(-1, d)
                work = table.float() if p.dtype in _HALF else table  # float32 arithmetic, rounded once below
                _reference_step(self._kind, h, work, [None if s is None else s.view(-1, d) for s in states], rows,
                                values)
                if work is not table:
                    table[rows] = work[rows].to(p.dtype)
                return
            with torch.cuda.device(p.device):
                mod.sparse_opt_step(_KIND[self._kind], *h, p.data_ptr(), 0 if states[0] is None else states[0].data_ptr(),
                                    0 if states[1] is None else states[1].data_ptr(), d, rows.data_ptr(),
                                    values.data_ptr(), rows.numel(), _dtype_name(p.dtype), stream_of(p))
            return
        _C.sparse_opt_step(_KIND[self._kind], *h, np_view(p).reshape(-1),
                           *[None if s is None else np_view(s).reshape(-1) for s in states], np_view(rows),
                           np_view(values).reshape(-1), 0)


def _state_dtype(dtype: torch.dtype) -> torch.dtype:
    """States and gradients of a parameter of ``dtype``: float32 for half parameters."""
    return torch.float32 if dtype in _HALF else dtype


def _rows_and_values(grad: torch.Tensor, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if grad.is_sparse:
        g = grad.coalesce()
        if g.sparse_dim() != 1:
            raise ValueError("row-sparse optimizers need gradients sparse in the first dimension only")
        return g.indices()[0], g.values()
    return torch.arange(p.shape[0], device=p.device), grad


def _reference_step(kind, h, p, states, rows, g) -> None:
    lr, wd, beta1, beta2, eps, bc1, bc2 = h
    pr = p[rows]
    g = g + wd * pr
    if kind == "sgd":
        p[rows] = pr - lr * g
    elif kind == "adagrad":
        s = states[0][rows] + g * g
        states[0][rows] = s
        p[rows] = pr - lr * g / (s.sqrt() + eps)
    else:
        m = states[0][rows]
        v = states[1][rows]
        m = m + (g - m) * (1 - beta1)
        v = v + (g * g - v) * (1 - beta2)
        states[0][rows], states[1][rows] = m, v
        p[rows] = pr - lr * (bc2 ** 0.5) / bc1 * m / (v.sqrt() + eps)


class SparseSGD(_RowSparseOptimizer):
    """SGD on the touched rows.

    Example
    -------
    >>> import torch, recfast
    >>> emb = torch.nn.Embedding(10, 4, sparse=True)
    >>> opt = recfast.optim.SparseSGD(emb.parameters(), lr=0.1)
    >>> emb(torch.tensor([1, 1, 3])).sum().backward(); opt.step()
    """

    _kind = "sgd"

    def __init__(self, params: Iterable[Any], lr: float = 0.01, weight_decay: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})


class SparseAdagrad(_RowSparseOptimizer):
    """Adagrad on the touched rows (torch's formula with lr_decay = 0 and no initial accumulator)."""

    _kind = "adagrad"
    _states = ("sum",)

    def __init__(self, params: Iterable[Any], lr: float = 0.01, eps: float = 1e-10, weight_decay: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "eps": eps, "weight_decay": weight_decay})


class SparseAdam(_RowSparseOptimizer):
    """Adam with lazy moments, as ``torch.optim.SparseAdam``, plus weight decay on touched rows."""

    _kind = "adam"
    _states = ("exp_avg", "exp_avg_sq")

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"SparseAdam: betas must be in [0, 1), got {betas}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})
