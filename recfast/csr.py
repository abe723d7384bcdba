"""``recfast.CSR``: the sparse matrix every op takes (user-item interactions, adjacency)."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from . import _C
from ._backend import np_view

_INT32_MAX = 2**31 - 1
_DUPLICATES = {"sum": 0, "last": 1, "error": 2}


def _index_dtype(n_cols: int) -> torch.dtype:
    return torch.int32 if n_cols <= _INT32_MAX else torch.int64


def _as_tensor(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (np.ndarray, list, tuple, range)):
        a = np.asarray(x)
        if a.size == 0 and not isinstance(x, np.ndarray):
            a = a.astype(np.int64)  # np.asarray([]) is float64
        return torch.as_tensor(a)
    raise TypeError(f"CSR: {name} must be a tensor or array, got {type(x).__name__}")


class CSR:
    """An immutable compressed sparse row matrix held in torch tensors.

    Parameters
    ----------
    indptr : int64 tensor of shape (n_rows + 1,)
    indices : int32 or int64 tensor of shape (nnz,); sorted and unique within each row.
    shape : (n_rows, n_cols)
    values : optional float32 tensor of shape (nnz,); absent means every stored entry is 1.
    check : validate the structure (default). Ops rely on sorted, unique, in-range indices.
    symmetric : a trusted hint that the matrix equals its transpose, so ``transpose()`` returns
        ``self`` (set by ``recfast.graph.normalized_adjacency``).

    Examples
    --------
    >>> import torch, recfast
    >>> m = recfast.CSR.from_coo(torch.tensor([0, 0, 1]), torch.tensor([2, 0, 1]), shape=(2, 3))
    >>> m.indptr.tolist(), m.indices.tolist()
    ([0, 2, 3], [0, 2, 1])
    """

    __slots__ = ("indptr", "indices", "values", "shape", "symmetric", "_transpose", "__weakref__")

    indptr: torch.Tensor
    indices: torch.Tensor
    values: torch.Tensor | None
    shape: tuple[int, int]
    symmetric: bool

    def __init__(
        self,
        indptr: torch.Tensor,
        indices: torch.Tensor,
        shape: tuple[int, int],
        values: torch.Tensor | None = None,
        *,
        check: bool = True,
        symmetric: bool = False,
    ) -> None:
        indptr = _as_tensor(indptr, "indptr")
        indices = _as_tensor(indices, "indices")
        if values is not None:
            values = _as_tensor(values, "values")
        if not (isinstance(shape, (tuple, list)) and len(shape) == 2):
            raise ValueError(f"CSR: shape must be a pair (n_rows, n_cols), got {shape!r}")
        if any(isinstance(x, bool) or not isinstance(x, (int, np.integer)) for x in shape):
            raise ValueError(f"CSR: shape must be a pair of ints (n_rows, n_cols), got {shape!r}")
        n_rows, n_cols = int(shape[0]), int(shape[1])
        if n_rows < 0 or n_cols < 0:
            raise ValueError(f"CSR: shape must be non-negative, got {(n_rows, n_cols)}")
        if indptr.dtype != torch.int64:
            raise TypeError(f"CSR: indptr must be an int64 tensor, got {str(indptr.dtype).replace('torch.', '')}")
        if indices.dtype not in (torch.int32, torch.int64):
            raise TypeError(
                f"CSR: indices must be an int32 or int64 tensor, got {str(indices.dtype).replace('torch.', '')}"
            )
        if indices.dtype == torch.int32 and n_cols > _INT32_MAX + 1:
            raise TypeError(f"CSR: {n_cols} columns do not fit int32 indices; use int64")
        if values is not None and values.dtype != torch.float32:
            raise TypeError(f"CSR: values must be a float32 tensor, got {str(values.dtype).replace('torch.', '')}")
        if indptr.dim() != 1 or indptr.numel() != n_rows + 1:
            raise ValueError(f"CSR: indptr has {indptr.numel()} entries, expected n_rows + 1 = {n_rows + 1}")
        if indices.dim() != 1:
            raise ValueError(f"CSR: indices must be 1-D, got shape {tuple(indices.shape)}")
        if values is not None and (values.dim() != 1 or values.numel() != indices.numel()):
            raise ValueError(f"CSR: values has {values.numel()} entries, expected nnz = {indices.numel()}")
        devices = {indptr.device, indices.device} | ({values.device} if values is not None else set())
        if len(devices) != 1:
            raise ValueError(f"CSR: indptr, indices and values must share one device, got {sorted(map(str, devices))}")
        indptr, indices = indptr.contiguous(), indices.contiguous()
        values = values.contiguous() if values is not None else None
        if check:
            _validate(indptr, indices, n_cols)
        set_ = object.__setattr__
        set_(self, "indptr", indptr)
        set_(self, "indices", indices)
        set_(self, "values", values)
        set_(self, "shape", (n_rows, n_cols))
        set_(self, "symmetric", bool(symmetric))
        set_(self, "_transpose", None)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("CSR is immutable; build a new one")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("CSR is immutable; build a new one")

    # -- properties ---------------------------------------------------------------------------
    @property
    def n_rows(self) -> int:
        return self.shape[0]

    @property
    def n_cols(self) -> int:
        return self.shape[1]

    @property
    def nnz(self) -> int:
        return int(self.indices.numel())

    @property
    def device(self) -> torch.device:
        return self.indptr.device

    def __repr__(self) -> str:
        vals = "values" if self.values is not None else "binary"
        return (
            f"CSR(shape={self.shape}, nnz={self.nnz}, indices={str(self.indices.dtype).replace('torch.', '')}, "
            f"{vals}, device={self.device})"
        )

    def row_lengths(self) -> torch.Tensor:
        """Number of stored entries per row (int64)."""
        return self.indptr[1:] - self.indptr[:-1]

    def row(self, i: int) -> torch.Tensor:
        """Column ids stored in row ``i``."""
        if not 0 <= i < self.n_rows:
            raise IndexError(f"CSR.row: row {i} out of range for {self.n_rows} rows")
        return self.indices[int(self.indptr[i]) : int(self.indptr[i + 1])]

    def rows_coo(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The stored entries of rows ``rows``: (position in ``rows`` of each entry, column, value or
        None), gathered with tensor ops on this matrix's device (no Python loop over rows)."""
        rows = torch.as_tensor(rows, dtype=torch.int64, device=self.device)
        if rows.dim() != 1:
            raise ValueError(f"CSR.rows_coo: rows must be 1-D, got shape {tuple(rows.shape)}")
        if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= self.n_rows):
            raise ValueError(f"CSR.rows_coo: rows must be in [0, {self.n_rows}), got {int(rows.min())}..{int(rows.max())}")
        starts = self.indptr[rows]
        lens = self.indptr[rows + 1] - starts
        total = int(lens.sum()) if rows.numel() else 0
        which = torch.repeat_interleave(torch.arange(rows.numel(), device=self.device), lens, output_size=total)
        first = torch.cumsum(lens, 0) - lens
        pos = torch.arange(total, device=self.device) + torch.repeat_interleave(starts - first, lens, output_size=total)
        cols = self.indices[pos].to(torch.int64)
        return which, cols, None if self.values is None else self.values[pos]

    def dense_rows(self, rows: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Rows ``rows`` as a dense (len(rows), n_cols) tensor on this matrix's device (binary
        matrices give 1.0 at stored entries). For blocks of users, never the whole matrix."""
        try:
            which, cols, vals = self.rows_coo(rows)
        except ValueError as e:
            raise ValueError(str(e).replace("rows_coo", "dense_rows")) from None
        out = torch.zeros(torch.as_tensor(rows).numel(), self.n_cols, dtype=dtype, device=self.device)
        if cols.numel():
            out[which, cols] = vals.to(dtype) if vals is not None else torch.ones((), dtype=dtype, device=self.device)
        return out

    # -- constructors -------------------------------------------------------------------------
    @classmethod
    def from_scipy(cls, m: sp.spmatrix | sp.sparray, *, binary: bool = False) -> "CSR":
        """From any scipy sparse matrix; duplicates are summed and indices sorted, as scipy does.

        ``binary=True`` drops the values (every stored entry counts as 1).
        """
        if not sp.issparse(m):
            raise TypeError(f"CSR.from_scipy: expected a scipy sparse matrix, got {type(m).__name__}")
        m = sp.csr_matrix(m, copy=True)
        m.sum_duplicates()
        m.sort_indices()
        n_rows, n_cols = m.shape
        indptr = torch.from_numpy(m.indptr.astype(np.int64))
        indices = torch.from_numpy(m.indices.astype(np.int32 if n_cols <= _INT32_MAX else np.int64))
        values = None if binary else torch.from_numpy(m.data.astype(np.float32))
        return cls(indptr, indices, (n_rows, n_cols), values)

    @classmethod
    def from_coo(
        cls,
        rows: Any,
        cols: Any,
        values: Any = None,
        shape: tuple[int, int] | None = None,
        *,
        duplicates: str = "sum",
    ) -> "CSR":
        """From coordinate lists; sorts and de-duplicates in C++.

        Parameters
        ----------
        rows, cols : integer tensors or arrays of equal length.
        values : optional float values (cast to float32).
        shape : (n_rows, n_cols); inferred as max id + 1 when omitted.
        duplicates : ``"sum"`` (scipy's rule), ``"last"`` (keep the latest occurrence) or
            ``"error"`` (raise ValueError).
        """
        if duplicates not in _DUPLICATES:
            raise ValueError(f"CSR.from_coo: duplicates must be one of {sorted(_DUPLICATES)}, got {duplicates!r}")
        r = _as_tensor(rows, "rows")
        c = _as_tensor(cols, "cols")
        device = r.device
        for name, t in (("rows", r), ("cols", c)):
            if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
                raise TypeError(f"CSR.from_coo: {name} must be an integer tensor, got {str(t.dtype).replace('torch.', '')}")
            if t.dim() != 1:
                raise ValueError(f"CSR.from_coo: {name} must be 1-D, got shape {tuple(t.shape)}")
        if r.numel() != c.numel():
            raise ValueError(f"CSR.from_coo: rows has {r.numel()} entries but cols has {c.numel()}")
        r = r.detach().to("cpu", torch.int64).contiguous()
        c = c.detach().to("cpu", torch.int64).contiguous()
        v = None
        if values is not None:
            v = _as_tensor(values, "values").detach().to("cpu", torch.float32).contiguous()
            if v.dim() != 1 or v.numel() != r.numel():
                raise ValueError(f"CSR.from_coo: values has {v.numel()} entries, expected {r.numel()}")
        if shape is None:
            shape = (int(r.max()) + 1 if r.numel() else 0, int(c.max()) + 1 if c.numel() else 0)
        if not (isinstance(shape, (tuple, list)) and len(shape) == 2
                and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in shape)):
            raise ValueError(f"CSR.from_coo: shape must be a pair of ints (n_rows, n_cols), got {shape!r}")
        n_rows, n_cols = int(shape[0]), int(shape[1])
        if n_rows < 0 or n_cols < 0:
            raise ValueError(f"CSR.from_coo: shape must be non-negative, got {(n_rows, n_cols)}")
        for name, t, upper in (("rows", r, n_rows), ("cols", c, n_cols)):
            if t.numel():
                lo, hi = int(t.min()), int(t.max())
                if lo < 0:
                    raise ValueError(f"CSR.from_coo: {name} holds negative id {lo}")
                if hi >= upper:
                    raise ValueError(f"CSR.from_coo: {name} holds id {hi}, out of range for shape {tuple(shape)}")
        fn = _C.csr_from_coo_i32 if _index_dtype(n_cols) == torch.int32 else _C.csr_from_coo_i64
        indptr, indices, out_v, kept = fn(np_view(r), np_view(c), None if v is None else np_view(v), n_rows,
                                          _DUPLICATES[duplicates])
        indices = torch.from_numpy(indices[:kept].copy()) if kept < r.numel() else torch.from_numpy(indices)
        vals = None
        if out_v is not None:
            vals = torch.from_numpy(out_v[:kept].copy()) if kept < r.numel() else torch.from_numpy(out_v)
        out = cls(torch.from_numpy(indptr), indices, (n_rows, n_cols), vals, check=False)
        return out.to(device) if device.type != "cpu" else out

    # -- conversions --------------------------------------------------------------------------
    def to_scipy(self) -> sp.csr_matrix:
        """A scipy CSR copy (values default to 1.0 for a binary matrix)."""
        cpu = self.to("cpu")
        data = np_view(cpu.values) if cpu.values is not None else np.ones(self.nnz, dtype=np.float32)
        return sp.csr_matrix((data.copy(), np_view(cpu.indices).copy(), np_view(cpu.indptr).copy()), shape=self.shape)

    def to(self, device: str | torch.device) -> "CSR":
        """This matrix on ``device`` (``self`` when already there)."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if self.device == device:
            return self
        vals = self.values.to(device) if self.values is not None else None
        return CSR(self.indptr.to(device), self.indices.to(device), self.shape, vals, check=False,
                   symmetric=self.symmetric)

    def with_values(self, values: torch.Tensor | None) -> "CSR":
        """The same structure with other values (or none)."""
        return CSR(self.indptr, self.indices, self.shape, values, check=False, symmetric=False)

    def transpose(self) -> "CSR":
        """The transpose, computed once (in C++ on CPU) and cached on this object."""
        if self.symmetric:
            return self
        if self._transpose is None:
            object.__setattr__(self, "_transpose", self._compute_transpose())
        return self._transpose  # type: ignore[return-value]

    @property
    def T(self) -> "CSR":
        return self.transpose()

    def _compute_transpose(self) -> "CSR":
        if self.device.type != "cpu":
            t = self.to("cpu").transpose()
            return t.to(self.device)
        v = None if self.values is None else np_view(self.values)
        src = self.indices
        if src.dtype == torch.int32 and self.n_rows > _INT32_MAX:
            src = src.to(torch.int64)  # the transpose's column ids are this matrix's row ids
        indptr, indices, vals = _C.csr_transpose(np_view(self.indptr), np_view(src), v, self.n_cols)
        vals_t = torch.from_numpy(vals) if vals is not None else None
        out = CSR(torch.from_numpy(indptr), torch.from_numpy(indices), (self.n_cols, self.n_rows), vals_t, check=False)
        object.__setattr__(out, "_transpose", self)
        return out

    def check(self) -> None:
        """Validate the structure again; raises ValueError naming the problem."""
        _validate(self.indptr, self.indices, self.n_cols)

    def __getstate__(self) -> dict[str, Any]:
        return {"indptr": self.indptr, "indices": self.indices, "values": self.values, "shape": self.shape,
                "symmetric": self.symmetric}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            object.__setattr__(self, k, v)
        object.__setattr__(self, "_transpose", None)


def _validate(indptr: torch.Tensor, indices: torch.Tensor, n_cols: int) -> None:
    if indptr.device.type != "cpu":
        indptr, indices = indptr.cpu(), indices.cpu()
    msg = _C.csr_check(np_view(indptr), np_view(indices), n_cols)
    if msg:
        raise ValueError(f"CSR: {msg}")
