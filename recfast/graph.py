"""Graphs built from interactions, for propagation models (LightGCN, NGCF)."""

from __future__ import annotations

import torch

from . import _C
from ._backend import np_view
from .csr import CSR, _index_dtype

__all__ = ["normalized_adjacency"]

_NORMALIZATIONS = {"none": 0, "sym": 1, "left": 2}


def normalized_adjacency(train_csr: CSR, *, normalization: str = "sym", self_loops: bool = False) -> CSR:
    """The (n_users + n_items) square bipartite adjacency [[0, R], [R^T, 0]] of a users x items
    matrix R (stored entries count as 1), normalised:

    - ``"sym"``: D^-1/2 A D^-1/2 (LightGCN, NGCF);
    - ``"left"``: D^-1 A (row-stochastic, a mean over neighbours);
    - ``"none"``: A.

    ``self_loops=True`` adds the identity before normalising (degrees count the loop): NGCF's
    (L + I) variant. Zero-degree nodes get empty rows, never NaN or inf. Built in C++ in one pass;
    "sym" and "none" results are marked symmetric, so their transpose is themselves.

    Example
    -------
    >>> import torch, recfast
    >>> r = recfast.CSR.from_coo(torch.tensor([0, 0]), torch.tensor([0, 1]), shape=(2, 2))
    >>> a = recfast.graph.normalized_adjacency(r)
    >>> a.shape, a.nnz, round(float(a.values[0]), 4)
    ((4, 4), 4, 0.7071)
    """
    if not isinstance(train_csr, CSR):
        raise TypeError(f"normalized_adjacency: train_csr must be a recfast.CSR, got {type(train_csr).__name__}")
    if normalization not in _NORMALIZATIONS:
        raise ValueError(f"normalized_adjacency: normalization must be one of {sorted(_NORMALIZATIONS)}, "
                         f"got {normalization!r}")
    device = train_csr.device
    r = train_csr.to("cpu")
    n_users, n_items = r.shape
    idx_dtype = _index_dtype(n_users + n_items)
    if r.indices.dtype != idx_dtype:
        r = CSR(r.indptr, r.indices.to(idx_dtype), r.shape, check=False)
    t = r.transpose()
    if t.indices.dtype != idx_dtype:
        t = CSR(t.indptr, t.indices.to(idx_dtype), t.shape, check=False)
    indptr, indices, values = _C.normalized_adjacency(np_view(r.indptr), np_view(r.indices), np_view(t.indptr),
                                                      np_view(t.indices), n_items, _NORMALIZATIONS[normalization],
                                                      bool(self_loops))
    n = n_users + n_items
    adj = CSR(torch.from_numpy(indptr), torch.from_numpy(indices), (n, n), torch.from_numpy(values), check=False,
              symmetric=normalization in ("sym", "none"))
    return adj.to(device)
