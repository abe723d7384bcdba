"""Sparse propagation for graph models: CSR SpMM with autograd, fused LightGCN layers, edge dropout.

``spmm`` and ``lightgcn_propagate`` are ``torch.library`` custom ops (``recfast::spmm``,
``recfast::lightgcn_propagate``), so ``torch.compile`` sees them; their backward multiplies by the
transpose, which each ``CSR`` computes once and caches (a symmetric matrix is its own transpose).
"""

from __future__ import annotations

import numbers
from typing import Optional, Sequence

import torch

from .. import _C
from .._backend import check_tensor, cuda_errors, cuda_module, np_view, stream_of
from ..csr import CSR

__all__ = ["spmm", "lightgcn_propagate", "edge_dropout"]

_CPU_FLOATS = (torch.float32, torch.float64)
_CUDA_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


# ---------------------------------------------------------------------------------------------
# Kernels behind the custom ops (tensors in, tensor out).
# ---------------------------------------------------------------------------------------------

def _values_for(values: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
    return None if values is None else values.to(dtype).contiguous()


def _spmm_impl(indptr: torch.Tensor, indices: torch.Tensor, values: Optional[torch.Tensor], dense: torch.Tensor,
               n_rows: int) -> torch.Tensor:
    if dense.device.type == "cuda" and dense.dtype in (torch.float16, torch.bfloat16):
        # half inputs accumulate in float32
        return _spmm_impl(indptr, indices, values, dense.float(), n_rows).to(dense.dtype)
    dense = dense.contiguous()
    d = dense.shape[1]
    out = torch.empty(n_rows, d, dtype=dense.dtype, device=dense.device)
    if n_rows == 0 or d == 0:
        return out
    vals = _values_for(values, dense.dtype)
    if dense.device.type == "cuda":
        mod = cuda_module("spmm")
        if mod is None:
            return _spmm_reference(indptr, indices, vals, dense, n_rows)
        with torch.cuda.device(dense.device):
            mod.spmm(indptr.data_ptr(), indices.data_ptr(), indices.dtype == torch.int64,
                     0 if vals is None else vals.data_ptr(), n_rows, dense.data_ptr(), d, out.data_ptr(),
                     dense.dtype == torch.float64, stream_of(out))
        return out
    _C.spmm(np_view(indptr), np_view(indices), None if vals is None else np_view(vals), np_view(dense),
            np_view(out), 0)
    return out


def _lightgcn_impl(indptr: torch.Tensor, indices: torch.Tensor, values: Optional[torch.Tensor], emb: torch.Tensor,
                   weights: Sequence[float]) -> torch.Tensor:
    if emb.device.type == "cuda" and emb.dtype in (torch.float16, torch.bfloat16):
        return _lightgcn_impl(indptr, indices, values, emb.float(), weights).to(emb.dtype)
    emb = emb.contiguous()
    n, d = emb.shape
    vals = _values_for(values, emb.dtype)
    if emb.device.type == "cuda":
        mod = cuda_module("lightgcn_propagate")
        out = emb * weights[0]
        cur = emb
        for w in weights[1:]:
            nxt = _spmm_impl(indptr, indices, vals, cur, n)
            if mod is None:
                out.add_(nxt, alpha=w)
            else:
                with torch.cuda.device(emb.device):
                    mod.axpy(out.data_ptr(), nxt.data_ptr(), float(w), out.numel(), emb.dtype == torch.float64,
                             stream_of(out))
            cur = nxt
        return out
    out = torch.empty_like(emb)
    if n == 0 or d == 0:
        return out.zero_()
    # The kernel never stores the last layer (it adds it into out), so L layers need L - 1 layer
    # buffers, at most two; unused buffer arguments are passed out and never written.
    buf_a = torch.empty_like(emb) if len(weights) > 2 else out
    buf_b = torch.empty_like(emb) if len(weights) > 3 else out
    _C.lightgcn_propagate(np_view(indptr), np_view(indices), None if vals is None else np_view(vals), np_view(emb),
                          [float(w) for w in weights], np_view(out), np_view(buf_a), np_view(buf_b), 0)
    return out


# ---------------------------------------------------------------------------------------------
# Custom ops: the forward takes the matrix and its transpose, so backward needs no rebuild.
# ---------------------------------------------------------------------------------------------

@torch.library.custom_op("recfast::spmm", mutates_args=())
def _spmm_op(indptr: torch.Tensor, indices: torch.Tensor, values: Optional[torch.Tensor], t_indptr: torch.Tensor,
             t_indices: torch.Tensor, t_values: Optional[torch.Tensor], dense: torch.Tensor, n_rows: int) -> torch.Tensor:
    return _spmm_impl(indptr, indices, values, dense, n_rows)


@_spmm_op.register_fake
def _(indptr, indices, values, t_indptr, t_indices, t_values, dense, n_rows):
    return dense.new_empty(n_rows, dense.shape[1])


def _spmm_setup(ctx, inputs, output):
    indptr, indices, values, t_indptr, t_indices, t_values, dense, n_rows = inputs
    ctx.save_for_backward(indptr, indices, values, t_indptr, t_indices, t_values)
    ctx.n_cols = dense.shape[0]


@cuda_errors("spmm")  # the backward, which autograd runs later
def _spmm_backward(ctx, grad):
    indptr, indices, values, t_indptr, t_indices, t_values = ctx.saved_tensors
    g = _spmm_op(t_indptr, t_indices, t_values, indptr, indices, values, grad.contiguous(), ctx.n_cols)
    return None, None, None, None, None, None, g, None


_spmm_op.register_autograd(_spmm_backward, setup_context=_spmm_setup)


@torch.library.custom_op("recfast::lightgcn_propagate", mutates_args=())
def _lightgcn_op(indptr: torch.Tensor, indices: torch.Tensor, values: Optional[torch.Tensor], t_indptr: torch.Tensor,
                 t_indices: torch.Tensor, t_values: Optional[torch.Tensor], emb: torch.Tensor,
                 weights: list[float]) -> torch.Tensor:
    return _lightgcn_impl(indptr, indices, values, emb, weights)


@_lightgcn_op.register_fake
def _(indptr, indices, values, t_indptr, t_indices, t_values, emb, weights):
    return torch.empty_like(emb)


def _lightgcn_setup(ctx, inputs, output):
    indptr, indices, values, t_indptr, t_indices, t_values, emb, weights = inputs
    ctx.save_for_backward(indptr, indices, values, t_indptr, t_indices, t_values)
    ctx.weights = list(weights)


@cuda_errors("lightgcn_propagate")
def _lightgcn_backward(ctx, grad):
    # d/dE sum_l w_l A^l E applied to G is sum_l w_l (A^T)^l G: the same fused pass over A^T.
    indptr, indices, values, t_indptr, t_indices, t_values = ctx.saved_tensors
    g = _lightgcn_op(t_indptr, t_indices, t_values, indptr, indices, values, grad.contiguous(), ctx.weights)
    return None, None, None, None, None, None, g, None


_lightgcn_op.register_autograd(_lightgcn_backward, setup_context=_lightgcn_setup)


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------

def _check_dense(op: str, name: str, csr: CSR, dense: torch.Tensor) -> None:
    if not isinstance(csr, CSR):
        raise TypeError(f"{op}: the matrix must be a recfast.CSR, got {type(csr).__name__}")
    floats = _CUDA_FLOATS if dense.device.type == "cuda" else _CPU_FLOATS
    check_tensor(op, name, dense, dtypes=floats, ndim=2, device=csr.device, contiguous=False)
    if dense.shape[0] != csr.n_cols:
        raise ValueError(f"{op}: {name} has {dense.shape[0]} rows, expected the matrix's column count {csr.n_cols}")


def _parts(csr: CSR) -> tuple:
    t = csr.transpose()
    return csr.indptr, csr.indices, csr.values, t.indptr, t.indices, t.values


@cuda_errors("spmm")
def spmm(csr: CSR, dense: torch.Tensor) -> torch.Tensor:
    """``csr @ dense``, differentiable with respect to ``dense``.

    Parameters
    ----------
    csr : (n_rows, n_cols) sparse matrix (binary when it has no values).
    dense : (n_cols, d) float32 or float64 (and float16/bfloat16 on CUDA, accumulated in float32).

    Example
    -------
    >>> import torch, recfast
    >>> a = recfast.CSR.from_coo(torch.tensor([0, 1]), torch.tensor([1, 0]), torch.tensor([2.0, 3.0]))
    >>> recfast.ops.spmm(a, torch.tensor([[1.0], [10.0]])).tolist()
    [[20.0], [3.0]]
    """
    _check_dense("spmm", "dense", csr, dense)
    return _spmm_op(*_parts(csr), dense, csr.n_rows)


@cuda_errors("lightgcn_propagate")
def lightgcn_propagate(adj: CSR, emb: torch.Tensor, num_layers: int, *,
                       layer_weights: Sequence[float] | None = None) -> torch.Tensor:
    """LightGCN's final embeddings ``sum_l w_l A^l E`` for l = 0..num_layers, in one call.

    The forward keeps two layer buffers, not L; the backward computes ``sum_l w_l (A^T)^l G`` the
    same way. Default weights are 1 / (num_layers + 1).

    Example
    -------
    >>> import torch, recfast
    >>> train = recfast.data.synthetic(20, 10, 60, seed=0).to_csr()
    >>> adj = recfast.graph.normalized_adjacency(train)
    >>> recfast.ops.lightgcn_propagate(adj, torch.randn(30, 4), 3).shape
    torch.Size([30, 4])
    """
    if not isinstance(adj, CSR):
        raise TypeError(f"lightgcn_propagate: adj must be a recfast.CSR, got {type(adj).__name__}")
    if adj.n_rows != adj.n_cols:
        raise ValueError(f"lightgcn_propagate: adj must be square, got shape {adj.shape}")
    _check_dense("lightgcn_propagate", "emb", adj, emb)
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 0:
        raise ValueError(f"lightgcn_propagate: num_layers must be a non-negative int, got {num_layers!r}")
    if layer_weights is None:
        weights = [1.0 / (num_layers + 1)] * (num_layers + 1)
    else:
        try:
            weights = [float(w) for w in layer_weights]
        except (TypeError, ValueError):
            raise TypeError(f"lightgcn_propagate: layer_weights must be numbers, got {layer_weights!r}") from None
        if len(weights) != num_layers + 1:
            raise ValueError(f"lightgcn_propagate: layer_weights has {len(weights)} entries, "
                             f"expected num_layers + 1 = {num_layers + 1}")
    return _lightgcn_op(*_parts(adj), emb, weights)


@cuda_errors("edge_dropout")
def edge_dropout(csr: CSR, p: float, *, seed: int) -> CSR:
    """Keep each stored entry with probability ``1 - p`` and scale the kept values by
    ``1 / (1 - p)``, as NGCF's sparse dropout does (a binary matrix gets values ``1 / (1 - p)``).

    Seeded: the kept entries depend only on ``seed`` and the matrix, on any device.

    Example
    -------
    >>> import torch, recfast
    >>> a = recfast.data.synthetic(50, 40, 800, seed=0).to_csr()
    >>> b = recfast.ops.edge_dropout(a, 0.5, seed=0)
    >>> 300 < b.nnz < 500
    True
    """
    if not isinstance(csr, CSR):
        raise TypeError(f"edge_dropout: csr must be a recfast.CSR, got {type(csr).__name__}")
    if not (isinstance(p, (int, float)) and 0.0 <= p < 1.0):
        raise ValueError(f"edge_dropout: p must be in [0, 1), got {p!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"edge_dropout: seed must be an int, got {type(seed).__name__}")
    if p == 0:
        return csr
    g = torch.Generator().manual_seed(int(seed) & ((1 << 64) - 1))  # as manual_seed reads a negative seed
    keep = (torch.rand(csr.nnz, generator=g) >= p).to(csr.device)
    rows = torch.repeat_interleave(torch.arange(csr.n_rows, device=csr.device), csr.row_lengths())
    counts = torch.bincount(rows[keep], minlength=csr.n_rows)
    indptr = torch.cat([torch.zeros(1, dtype=torch.int64, device=csr.device), torch.cumsum(counts, 0)])
    vals = csr.values[keep] if csr.values is not None else torch.ones(int(keep.sum()), device=csr.device)
    return CSR(indptr, csr.indices[keep], csr.shape, vals / (1.0 - p), check=False)


def _spmm_reference(indptr: torch.Tensor, indices: torch.Tensor, values: Optional[torch.Tensor], dense: torch.Tensor,
                    n_rows: int) -> torch.Tensor:
    """torch.sparse CSR @ dense, in the dense dtype."""
    vals = values if values is not None else torch.ones(indices.numel(), dtype=dense.dtype, device=dense.device)
    a = torch.sparse_csr_tensor(indptr, indices.to(torch.int64), vals.to(dense.dtype), (n_rows, dense.shape[0]))
    return (a @ dense) if indices.numel() else dense.new_zeros(n_rows, dense.shape[1])
