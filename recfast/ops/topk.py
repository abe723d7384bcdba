"""Batched top-k over dot-product scores with training-item masking, streamed over item tiles.

On CPUs with AVX-512 (and d <= 256) one fused kernel scores a register block of 32 queries x 12
items at a time and compares each score with its query's current k-th best right away, so scores
never reach memory and only the few that beat it are selected (no score buffer at all). Elsewhere,
and on CUDA, scores are computed tile by tile (BLAS/cuBLAS through ``torch.mm`` into a reused buffer
that stays in cache) and a compiled kernel masks each tile and merges it into a running top-k per
query. Either way the extra memory is O(B * k + block * tile), never B x n_items.

Contract (both ops, every device): for each row, the ``k`` best items, best first; ties go to the
lower item id; excluded items never appear; NaN and -inf scores are never selected; rows with fewer
than ``k`` candidates are padded with id -1 and score -inf.
"""

from __future__ import annotations

import torch

from .. import _C
from .._backend import (INDEX_DTYPES, check_range, check_tensor, check_threads, cuda_errors, cuda_module, np_view,
                        stream_of)
from ..csr import CSR

__all__ = ["topk", "topk_scores"]

_FLOATS = (torch.float32,)


def _check_common(op: str, n_rows: int, n_items: int, device: torch.device, k: int, exclude: CSR | None,
                  rows: torch.Tensor | None) -> torch.Tensor | None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"{op}: k must be a non-negative int, got {k!r}")
    if exclude is None:
        if rows is not None:
            raise ValueError(f"{op}: rows is given but exclude is None")
        return None
    if not isinstance(exclude, CSR):
        raise TypeError(f"{op}: exclude must be a recfast.CSR, got {type(exclude).__name__}")
    if exclude.n_cols != n_items:
        raise ValueError(f"{op}: exclude has {exclude.n_cols} columns, expected n_items = {n_items}")
    if exclude.device != device:
        raise ValueError(f"{op}: exclude is on {exclude.device}, expected {device}")
    if rows is None:
        if n_rows > exclude.n_rows:
            raise ValueError(f"{op}: {n_rows} query rows but exclude has only {exclude.n_rows} rows; pass rows=")
        return None
    check_tensor(op, "rows", rows, dtypes=INDEX_DTYPES, ndim=1, device=device, contiguous=False)
    if rows.numel() != n_rows:
        raise ValueError(f"{op}: rows has {rows.numel()} entries, expected one per query ({n_rows})")
    check_range(op, "rows", rows, exclude.n_rows)
    return rows.to(torch.int64).contiguous()


@cuda_errors("topk")
def topk(
    queries: torch.Tensor,
    keys: torch.Tensor,
    k: int,
    *,
    exclude: CSR | None = None,
    rows: torch.Tensor | None = None,
    key_bias: torch.Tensor | None = None,
    block_size: int = 512,
    tile_size: int = 1024,
    num_threads: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each query, the ``k`` keys with the highest dot product (plus ``key_bias``).

    Parameters
    ----------
    queries : float32 (B, d).
    keys : float32 (n_items, d), on the same device.
    k : how many items per query.
    exclude : optional users x items CSR; items in row ``rows[b]`` never appear for query b.
    rows : int tensor (B,): the exclusion row of each query (default ``arange(B)``).
    key_bias : optional float32 (n_items,) added to every score.
    block_size, tile_size : queries and items per scored tile (when scores go through torch.mm:
        on CUDA, and on CPUs without AVX-512 or with d > 256).

    Returns
    -------
    (scores float32 (B, k), ids int64 (B, k)), best first; padded with (-inf, -1).

    Example
    -------
    >>> import torch, recfast
    >>> q, keys = torch.eye(2), torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])
    >>> recfast.ops.topk(q, keys, 2)[1].tolist()
    [[2, 0], [1, 2]]
    """
    op = "topk"
    check_tensor(op, "queries", queries, dtypes=_FLOATS, ndim=2)
    check_tensor(op, "keys", keys, dtypes=_FLOATS, ndim=2, device=queries.device)
    if keys.shape[1] != queries.shape[1]:
        raise ValueError(f"{op}: keys have dimension {keys.shape[1]}, queries {queries.shape[1]}")
    if key_bias is not None:
        check_tensor(op, "key_bias", key_bias, dtypes=_FLOATS, ndim=1, device=queries.device)
        if key_bias.numel() != keys.shape[0]:
            raise ValueError(f"{op}: key_bias has {key_bias.numel()} entries, expected n_items = {keys.shape[0]}")
    for name, v in (("block_size", block_size), ("tile_size", tile_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{op}: {name} must be a positive int, got {v!r}")
    num_threads = check_threads(op, num_threads)
    n_rows, n_items = queries.shape[0], keys.shape[0]
    rows64 = _check_common(op, n_rows, n_items, queries.device, k, exclude, rows)
    if queries.device.type == "cuda":
        return _topk_cuda(op, queries, keys, k, exclude, rows64, key_bias, block_size, tile_size)
    return _topk_cpu(queries, keys, k, exclude, rows64, key_bias, block_size, tile_size, num_threads)


@cuda_errors("topk_scores")
def topk_scores(
    scores: torch.Tensor,
    k: int,
    *,
    exclude: CSR | None = None,
    rows: torch.Tensor | None = None,
    num_threads: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same masking and selection as ``topk`` for a score matrix a model produced directly
    (EASE, autoencoders), in place of ``torch.topk``.

    Example
    -------
    >>> import torch, recfast
    >>> recfast.ops.topk_scores(torch.tensor([[0.1, 0.9, 0.5]]), 2)[1].tolist()
    [[1, 2]]
    """
    op = "topk_scores"
    check_tensor(op, "scores", scores, dtypes=_FLOATS, ndim=2)
    n_rows, n_items = scores.shape
    num_threads = check_threads(op, num_threads)
    rows64 = _check_common(op, n_rows, n_items, scores.device, k, exclude, rows)
    if scores.device.type == "cuda":
        return _topk_cuda(op, None, None, k, exclude, rows64, None, n_rows or 1, n_items or 1, scores=scores)
    top_s, top_i = _alloc(n_rows, k)
    ex_ip, ex_ix = _exclusion(exclude)
    if n_rows and k:
        _C.topk_merge(np_view(scores), 0, n_items, None if rows64 is None else np_view(rows64), ex_ip, ex_ix,
                      np_view(top_s), np_view(top_i), int(num_threads or 0))
        _C.topk_finalize(np_view(top_s), np_view(top_i), int(num_threads or 0))
    return top_s, top_i


def _alloc(n_rows: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    if n_rows * k * 12 > 1 << 40:  # past any machine's memory (and ASan's allocator limit): don't try
        raise ValueError(f"topk: k = {k} needs a ({n_rows}, {k}) output of {n_rows * k * 12 / 2**40:.0f} TiB")
    try:
        top_s = torch.full((n_rows, k), float("-inf"), dtype=torch.float32)
        top_i = torch.full((n_rows, k), -1, dtype=torch.int64)
    except (RuntimeError, MemoryError) as e:  # k far past the catalogue: say which argument
        raise ValueError(f"topk: k = {k} needs a ({n_rows}, {k}) output that cannot be allocated ({e})") from e
    return top_s, top_i


def _exclusion(exclude: CSR | None):
    import numpy as np

    if exclude is None:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int32)
    return np_view(exclude.indptr), np_view(exclude.indices)


# Which CPU kernel topk runs (an internal switch; tests force each one):
# "gemm"  - tiles scored by torch.mm into a reused buffer, then topk_merge (block_size x tile_size);
# "fused" - topk_fused: scores a register block at a time and selects at once, no score buffer
#           ("fused-avx512" / "fused-portable" force its kernel; both give the same bits);
# "auto"  - "fused" where its AVX-512 kernel runs and d <= _FUSED_MAX_DIM, else "gemm".
_CPU_KERNEL = "auto"
_FUSED_MAX_DIM = 256


def _cpu_kernel(d: int) -> tuple[str, str]:
    kind = _CPU_KERNEL
    if kind == "auto":
        kind = "fused" if d <= _FUSED_MAX_DIM and _C.topk_fused_best_isa() == "avx512" else "gemm"
    if kind == "gemm":
        return "gemm", ""
    isa = kind.partition("-")[2] or "auto"
    return "fused", isa


def _topk_cpu(queries, keys, k, exclude, rows64, key_bias, block_size, tile_size, num_threads):
    n_rows, n_items = queries.shape[0], keys.shape[0]
    top_s, top_i = _alloc(n_rows, k)
    if n_rows == 0 or k == 0 or n_items == 0:
        return top_s, top_i
    nt = int(num_threads or 0)
    queries = queries.detach().contiguous()
    keys = keys.detach().contiguous()
    ex_ip, ex_ix = _exclusion(exclude)
    kind, isa = _cpu_kernel(queries.shape[1])
    if kind == "fused":
        bias = None if key_bias is None else np_view(key_bias.detach().contiguous())
        rows_np = None if exclude is None or rows64 is None else np_view(rows64)
        _C.topk_fused(np_view(queries), np_view(keys), bias, rows_np, ex_ip, ex_ix, np_view(top_s), np_view(top_i),
                      isa, nt)
        return top_s, top_i
    block = max(1, min(block_size, n_rows))
    tile = max(1, min(tile_size, n_items))
    buf = torch.empty(block, tile, dtype=torch.float32)
    for b0 in range(0, n_rows, block):
        b1 = min(b0 + block, n_rows)
        q = queries[b0:b1]
        rows_b = None if exclude is None else np_view(rows64[b0:b1] if rows64 is not None else
                                                     torch.arange(b0, b1, dtype=torch.int64))
        s_view, i_view = np_view(top_s[b0:b1]), np_view(top_i[b0:b1])
        for t0 in range(0, n_items, tile):
            t1 = min(t0 + tile, n_items)
            out = buf[: b1 - b0] if t1 - t0 == tile else torch.empty(b1 - b0, t1 - t0)
            if key_bias is None:
                torch.mm(q, keys[t0:t1].T, out=out)
            else:
                torch.addmm(key_bias[t0:t1], q, keys[t0:t1].T, out=out)
            _C.topk_merge(np_view(out), t0, t1 - t0, rows_b, ex_ip, ex_ix, s_view, i_view, nt)
        _C.topk_finalize(s_view, i_view, nt)
    return top_s, top_i


_LOW = (1 << 31) - 1


def _keys(s: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """int64 keys ordered like (score descending, id ascending): the float's order-preserving bits
    above 31 bits of reversed id. NaN counts as -inf; -0.0 as +0.0 (they compare equal)."""
    s = torch.nan_to_num(s, nan=float("-inf"), posinf=float("inf"), neginf=float("-inf")) + 0.0
    b = s.view(torch.int32).to(torch.int64)
    ordered = torch.where(b < 0, (~b) & 0xFFFFFFFF, b | 0x80000000)
    return ordered * (1 << 31) + (_LOW - ids)


def _decode(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ordered = keys >> 31
    bits = torch.where(ordered >= 0x80000000, ordered & 0x7FFFFFFF, (~ordered) & 0xFFFFFFFF)
    scores = bits.to(torch.int32).view(torch.float32)
    ids = _LOW - (keys & _LOW)
    pad = (keys < 0) | (scores == float("-inf"))
    return (torch.where(pad, torch.full_like(scores, float("-inf")), scores),
            torch.where(pad, torch.full_like(ids, -1), ids))


def _tile_candidates(s: torch.Tensor, k: int, t0: int) -> torch.Tensor:
    """Keys of each row's k best (score, id) pairs in a tile. torch.topk on the float scores finds
    them fast, but among scores equal to the k-th it may pick any ids; only the rows where such a
    tie is cut (rare with real scores) are ranked again by the exact int64 keys."""
    s = torch.nan_to_num_(s, nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
    kk = min(k, s.shape[1])
    vals, idx = torch.topk(s, kk, dim=1)
    keys = _keys(vals, idx + t0)
    thr = vals[:, -1:]
    cut = ((s == thr).sum(1) > (vals == thr).sum(1)) & (thr.squeeze(1) != float("-inf"))
    if bool(cut.any()):
        rows = torch.nonzero(cut).squeeze(1)
        exact = _keys(s[rows], torch.arange(t0, t0 + s.shape[1], device=s.device))
        keys[rows] = torch.topk(exact, kk, dim=1).values
    return keys


def _topk_cuda(op, queries, keys, k, exclude, rows64, key_bias, block_size, tile_size, scores=None):
    """Tiles scored by cuBLAS; a CUDA kernel blanks each tile's excluded items; every (score, id) is
    packed into one int64 key, so torch.topk over [running keys, tile keys] is exact and
    deterministic, with equal scores going to the lower id."""
    device = (scores if scores is not None else queries).device
    n_rows = (scores if scores is not None else queries).shape[0]
    n_items = scores.shape[1] if scores is not None else keys.shape[0]
    top_s = torch.full((n_rows, k), float("-inf"), dtype=torch.float32, device=device)
    top_i = torch.full((n_rows, k), -1, dtype=torch.int64, device=device)
    if n_rows == 0 or k == 0 or n_items == 0:
        return top_s, top_i
    if n_items > _LOW:  # _keys packs each id into 31 bits
        raise ValueError(f"{op}: on CUDA n_items must be below 2**31, got {n_items}")
    mod = cuda_module(op) if exclude is not None else None
    block = max(1, min(max(block_size, 2048), n_rows))
    tile = max(1, min(max(tile_size, 32768), n_items))
    for b0 in range(0, n_rows, block):
        b1 = min(b0 + block, n_rows)
        run = torch.full((b1 - b0, k), -1, dtype=torch.int64, device=device)
        erows = None
        if exclude is not None:
            erows = rows64[b0:b1] if rows64 is not None else torch.arange(b0, b1, device=device)
        for t0 in range(0, n_items, tile):
            t1 = min(t0 + tile, n_items)
            if scores is not None:
                s = scores[b0:b1, t0:t1].contiguous().clone()
            else:
                s = queries[b0:b1] @ keys[t0:t1].T
                if key_bias is not None:
                    s += key_bias[t0:t1]
            if exclude is not None:
                if mod is not None:
                    with torch.cuda.device(device):
                        mod.topk_mask(s.data_ptr(), s.shape[0], s.shape[1], t0, erows.data_ptr(),
                                      exclude.indptr.data_ptr(), exclude.indices.data_ptr(),
                                      exclude.indices.dtype == torch.int64, stream_of(s))
                else:
                    _mask_reference(s, t0, exclude, erows)
            run = torch.topk(torch.cat([run, _tile_candidates(s, k, t0)], dim=1), k, dim=1).values
        top_s[b0:b1], top_i[b0:b1] = _decode(run)
    return top_s, top_i


def _mask_reference(s: torch.Tensor, t0: int, exclude: CSR, erows: torch.Tensor) -> None:
    dense = exclude.dense_rows(erows)[:, t0:t0 + s.shape[1]]
    s.masked_fill_(dense > 0, float("-inf"))


def _topk_reference(queries: torch.Tensor | None, keys: torch.Tensor | None, k: int, *, exclude: CSR | None = None,
                    rows: torch.Tensor | None = None, key_bias: torch.Tensor | None = None,
                    scores: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense and obviously right: all scores, excluded and NaN set to -inf, stable sort by
    (-score, id), first k, -inf entries reported as id -1."""
    if scores is None:
        scores = queries.double() @ keys.double().T
        if key_bias is not None:
            scores = scores + key_bias.double()
    s = scores.double().clone().cpu()
    s = torch.nan_to_num(s, nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
    if exclude is not None:
        r = rows if rows is not None else torch.arange(s.shape[0])
        s[exclude.to("cpu").dense_rows(r.cpu()) > 0] = float("-inf")
    srt, order = torch.sort(s, dim=1, descending=True, stable=True)
    kk = min(k, s.shape[1])
    top_s = torch.full((s.shape[0], k), float("-inf"), dtype=torch.float64)
    top_i = torch.full((s.shape[0], k), -1, dtype=torch.int64)
    top_s[:, :kk] = srt[:, :kk]
    top_i[:, :kk] = order[:, :kk]
    top_i[top_s == float("-inf")] = -1
    return top_s.float(), top_i
