"""Rejection-free negative sampling over a CSR matrix.

A draw never retries: a uniform draw r in [0, n_items - deg(u)) is mapped to the r-th item absent
from the user's sorted row by a binary search (O(log deg)); a weighted draw inverts the CDF of the
weights restricted to the row's complement. Draw k of batch position b comes from a counter-based
generator keyed by (seed, row_offset + b, k): the output for a seed is the same for any thread
count, any split of the batch (with matching ``row_offset``) and on CPU and CUDA.
"""

from __future__ import annotations

import weakref

import numpy as np
import torch

from .. import _C
from .._backend import (INDEX_DTYPES, check_range, check_tensor, check_threads, cuda_errors, cuda_module, np_view,
                        stream_of)
from ..csr import CSR

__all__ = ["sample_negatives"]

_MASK64 = (1 << 64) - 1
# Per-CSR cache of the weighted tables: [weakref to the weights tensor, its _version, cum, keys, guide].
_WEIGHT_CACHE: "weakref.WeakKeyDictionary[CSR, tuple]" = weakref.WeakKeyDictionary()


@cuda_errors("sample_negatives")
def sample_negatives(
    csr: CSR,
    users: torch.Tensor,
    num_negatives: int = 1,
    *,
    seed: int,
    replace: bool = True,
    weights: torch.Tensor | None = None,
    row_offset: int = 0,
    num_threads: int | None = None,
) -> torch.Tensor:
    """Items that user ``users[b]`` has not interacted with, ``num_negatives`` per user.

    Parameters
    ----------
    csr : users x items interactions (rows sorted, as ``recfast.CSR`` guarantees).
    users : int32/int64 tensor (B,) of row ids, on ``csr``'s device.
    num_negatives : K, negatives per user.
    seed : the generator's seed (any Python int; taken modulo 2**64).
    replace : False draws K distinct items per row (NCF's sampled evaluation); a row with fewer than
        K candidates raises ValueError.
    weights : optional non-negative float tensor (n_items,): draws are proportional to the weights
        over the user's unseen items (e.g. popularity ** 0.75). Zero-weight items are never drawn.
    row_offset : the global position of ``users[0]``: sampling a batch in pieces with matching
        offsets gives exactly the output of sampling it whole.
    num_threads : OpenMP threads on CPU (default: OpenMP's setting).

    Returns
    -------
    LongTensor (B, K) on ``csr``'s device.

    Raises
    ------
    ValueError naming the user when a user has no (or too few) negatives left, and for ids out of
    range; TypeError for wrong dtypes.

    Examples
    --------
    >>> import torch, recfast
    >>> csr = recfast.CSR.from_coo(torch.tensor([0, 0, 1]), torch.tensor([0, 1, 2]), shape=(2, 4))
    >>> neg = recfast.ops.sample_negatives(csr, torch.tensor([0, 1]), 3, seed=7)
    >>> bool((neg[0] >= 2).all())
    True
    """
    op = "sample_negatives"
    if not isinstance(csr, CSR):
        raise TypeError(f"{op}: csr must be a recfast.CSR, got {type(csr).__name__}")
    check_tensor(op, "users", users, dtypes=INDEX_DTYPES, ndim=1, device=csr.device, contiguous=False)
    if isinstance(num_negatives, bool) or not isinstance(num_negatives, (int, np.integer)) or num_negatives < 0:
        raise ValueError(f"{op}: num_negatives must be a non-negative int, got {num_negatives!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"{op}: seed must be an int, got {type(seed).__name__}")
    if isinstance(row_offset, bool) or not isinstance(row_offset, (int, np.integer)) or row_offset < 0:
        raise ValueError(f"{op}: row_offset must be a non-negative int, got {row_offset!r}")
    if row_offset + users.numel() > 2**63 - 1:  # the kernels add batch positions in int64
        raise ValueError(f"{op}: row_offset must be at most 2**63 - 1 - len(users), got {row_offset!r}")
    nt = check_threads(op, num_threads)
    n_users, n_items = csr.shape
    k = int(num_negatives)
    check_range(op, "users", users, n_users)
    cum = keys = None
    if weights is not None:
        check_tensor(op, "weights", weights, dtypes=(torch.float32, torch.float64), ndim=1, device=csr.device,
                     contiguous=False)
        if weights.numel() != n_items:
            raise ValueError(f"{op}: weights has {weights.numel()} entries, expected n_items = {n_items}")
        cum, keys = _weighted_prefix(csr, weights)
    seed = int(seed) & _MASK64
    users64 = users.to(torch.int64).contiguous()
    out = torch.empty(users64.numel(), k, dtype=torch.int64, device=csr.device)
    if users64.numel() == 0 or k == 0:
        return out

    if csr.device.type == "cuda" and not (weights is not None and not replace):
        mod = cuda_module(op)
        if mod is None:
            return _sample_negatives_reference(csr, users64, k, seed=seed, replace=replace, weights=weights,
                                               row_offset=row_offset).to(csr.device)
        bad = torch.full((1,), users64.numel(), dtype=torch.int64, device=csr.device)
        with torch.cuda.device(csr.device):
            mod.sample_negatives(csr.indptr.data_ptr(), csr.indices.data_ptr(), csr.indices.dtype == torch.int64,
                                 n_items, users64.data_ptr(), users64.numel(), k, seed, int(row_offset), bool(replace),
                                 0 if cum is None else cum.data_ptr(), 0 if keys is None else keys.data_ptr(),
                                 out.data_ptr(), bad.data_ptr(), stream_of(out))
        b = int(bad.item())
        if b < users64.numel():
            _raise_no_negatives(csr, users64, b, k, replace, weights)
        return out

    # CPU, and weighted sampling without replacement on CUDA (sequential per row: run on the host;
    # the stream layout is the same, so the result is identical).
    on_cpu = csr.device.type == "cpu"
    c = csr if on_cpu else csr.to("cpu")
    host_out = out if on_cpu else torch.empty_like(out, device="cpu")
    tables = (None, None) if cum is None else (np_view(cum.cpu()), np_view(keys.cpu()))
    guide = _cdf_guide(csr, weights) if on_cpu and weights is not None and replace else None
    b = _C.sample_negatives(np_view(c.indptr), np_view(c.indices), n_items, np_view(users64.cpu()), k, seed,
                            int(row_offset), bool(replace), *tables, np_view(host_out).reshape(-1),
                            nt, None if guide is None else np_view(guide))
    if b >= 0:
        _raise_no_negatives(csr, users64, b, k, replace, weights)
    return out if on_cpu else host_out.to(csr.device)


def _sample_triples(
    csr: CSR,
    row_of: torch.Tensor,
    order: torch.Tensor,
    num_negatives: int,
    *,
    seed: int,
    weights: torch.Tensor | None = None,
    row_offset: int = 0,
    num_threads: int | None = None,
    check_order: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A loader's batch in one CPU kernel call: for the stored entries ``order`` (positions in
    ``csr.indices``), ``(users, items, negatives)`` with ``users = row_of[order]``,
    ``items = csr.indices[order]`` and negatives exactly as ``sample_negatives(csr, users,
    num_negatives, seed=seed, weights=weights, row_offset=row_offset)`` draws them.

    ``row_of`` (int64, nnz) is the row of every stored entry, as the loaders keep it.
    """
    op = "sample_negatives"
    if csr.device.type != "cpu":
        raise ValueError(f"{op}: _sample_triples runs on the CPU, got a CSR on {csr.device}")
    check_tensor(op, "order", order, dtypes=(torch.int64,), ndim=1, device=csr.device, contiguous=True)
    check_tensor(op, "row_of", row_of, dtypes=(torch.int64,), ndim=1, device=csr.device, contiguous=True)
    if row_of.numel() != csr.nnz:
        raise ValueError(f"{op}: row_of has {row_of.numel()} entries, expected nnz = {csr.nnz}")
    # The loaders pass their own permutation, which is in range by construction; checking would
    # also wake torch's OpenMP pool once per batch, and its spinning threads then compete with the
    # kernel's (a large cost on a busy machine).
    if check_order:
        check_range(op, "order", order, csr.nnz)
    n_items = csr.n_cols
    k = int(num_negatives)
    cum = keys = guide = None
    if weights is not None:
        cum, keys = _weighted_prefix(csr, weights)
        guide = _cdf_guide(csr, weights)
    n = order.numel()
    users = torch.empty(n, dtype=torch.int64)
    items = torch.empty(n, dtype=torch.int64)
    out = torch.empty(n, k, dtype=torch.int64)
    if n == 0:
        return users, items, out
    b = _C.sample_triples(np_view(csr.indptr), np_view(csr.indices), n_items, np_view(row_of), np_view(order), k,
                          int(seed) & _MASK64, int(row_offset), True, None if cum is None else np_view(cum),
                          None if keys is None else np_view(keys), np_view(users), np_view(items),
                          np_view(out).reshape(-1), int(num_threads or 0), None if guide is None else np_view(guide))
    if b >= 0:
        _raise_no_negatives(csr, users, b, k, True, weights)
    return users, items, out


def _weighted_prefix(csr: CSR, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The weighted tables (recfast/sampling.h), cached per CSR and weights version: ``cum``
    (n_items + 1, float64), the CDF of the weights, and ``keys`` (nnz + n_users, float64), each
    row's keys followed by its complement mass (see _weighted_tables)."""
    entry = _weighted_entry(csr, weights)
    return entry[2], entry[3]


def _weighted_entry(csr: CSR, weights: torch.Tensor) -> list:
    # Identity, not address: a freed weights tensor's memory can be reused by a new tensor with the
    # same data_ptr and _version, so the entry holds a weak reference to the tensor it was built
    # from and only that very tensor, unchanged since (same _version), hits.
    hit = _WEIGHT_CACHE.get(csr)
    if hit is not None and hit[0]() is weights and hit[1] == weights._version:
        return hit
    version = weights._version
    w = weights.detach().to(torch.float64)
    if not bool(torch.isfinite(w).all()):
        raise ValueError("sample_negatives: weights must be finite")
    if bool((w < 0).any()):
        raise ValueError(f"sample_negatives: weights must be non-negative, got {float(w.min())}")
    # Built on the CPU whatever the device (a serial float64 cumsum; a GPU scan rounds in another
    # order), so CPU and CUDA draw from the same bits and return the same negatives.
    cum, keys = _weighted_tables(csr.indptr.cpu(), csr.indices.cpu(), w.cpu())
    entry = [weakref.ref(weights), version, cum.to(w.device), keys.to(w.device), None]  # the CPU guide, on demand
    _WEIGHT_CACHE[csr] = entry
    return entry


def _weighted_tables(indptr: torch.Tensor, indices: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cum and keys (see _weighted_prefix) from float64 weights, on their device. With G the prefix
    of the weights over the stored entries and s the start of row u: row u's keys, at
    ``keys[s + u : s + u + deg + 1]``, are ``cum[indices[p]] - (G[p] - G[s])`` for its entries p
    (the complement mass below each item) and then ``cum[n_items] - (G[s + deg] - G[s])`` (the
    row's complement mass). Elementwise float64 operations: the kernels read these bits."""
    zero = torch.zeros(1, dtype=torch.float64, device=w.device)
    idx = indices.to(device=w.device, dtype=torch.int64)
    ip = indptr.to(device=w.device, dtype=torch.int64)
    n_rows, nnz = ip.numel() - 1, idx.numel()
    cum = torch.cat([zero, torch.cumsum(w, 0)])
    G = torch.cat([zero, torch.cumsum(w[idx], 0)])
    lengths = ip[1:] - ip[:-1]
    row_of = torch.repeat_interleave(torch.arange(n_rows, device=w.device), lengths, output_size=nnz)
    keys = torch.empty(nnz + n_rows, dtype=torch.float64, device=w.device)
    keys[torch.arange(nnz, device=w.device) + row_of] = cum[idx] - (G[:-1] - G[ip[:-1]][row_of])
    keys[ip[1:] + torch.arange(n_rows, device=w.device)] = cum[-1] - (G[ip[1:]] - G[ip[:-1]])
    return cum, keys


def _cdf_guide(csr: CSR, weights: torch.Tensor) -> torch.Tensor | None:
    """The CPU kernel's guide table over the cached CDF, built with the first weighted call and
    cached beside cum and keys (the output is the same with or without it). Its O(n_items) cost
    is a fraction of the tables' own, and every later call reuses it: without it a batch goes
    through the per-row code, whose O(log n_items) CDF search made 8,192 draws 17x slower than
    uniform ones."""
    entry = _weighted_entry(csr, weights)
    if entry[4] is not None:
        return entry[4]
    cum = entry[2]
    n_items = cum.numel() - 1
    if cum.device.type != "cpu" or n_items <= 1 or not float(cum[-1]) > 0.0:
        return None
    guide = torch.from_numpy(_C.sampling_cdf_guide(np_view(cum)))
    entry[4] = guide
    return guide


def _sample_epoch_triples(
    csr: CSR,
    row_of: torch.Tensor,
    shuffle: bool,
    order_seed: int,
    start: int,
    length: int,
    num_negatives: int,
    *,
    seed: int,
    weights: torch.Tensor | None = None,
    num_threads: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A loader's batch in one CPU kernel call, without an order array: epoch positions
    ``[start, start + length)`` take the entries ``order = arange`` (no shuffle) or
    ``_C.bpr_epoch_order(nnz, order_seed, start, start + length)``, and give
    ``_sample_triples(csr, row_of, order, num_negatives, seed=seed, weights=weights,
    row_offset=start)``. The loaders validate their arguments; ``row_of`` is int64 (nnz)."""
    k = int(num_negatives)
    cum = keys = guide = None
    if weights is not None:
        cum, keys = _weighted_prefix(csr, weights)
        guide = _cdf_guide(csr, weights)
    users = torch.empty(length, dtype=torch.int64)
    items = torch.empty(length, dtype=torch.int64)
    out = torch.empty(length, k, dtype=torch.int64)
    if length == 0:
        return users, items, out
    b = _C.sample_epoch_triples(np_view(csr.indptr), np_view(csr.indices), csr.n_cols, np_view(row_of), bool(shuffle),
                                int(order_seed) & _MASK64, int(start), k, int(seed) & _MASK64, True,
                                None if cum is None else np_view(cum), None if keys is None else np_view(keys),
                                None if guide is None else np_view(guide), np_view(users), np_view(items),
                                np_view(out).reshape(-1), int(num_threads or 0))
    if b >= 0:
        _raise_no_negatives(csr, users, b, k, True, weights)
    return users, items, out


def _raise_no_negatives(csr: CSR, users: torch.Tensor, b: int, k: int, replace: bool,
                        weights: torch.Tensor | None) -> None:
    u = int(users[b])
    deg = int(csr.indptr[u + 1] - csr.indptr[u])
    avail = csr.n_cols - deg
    if weights is not None:
        raise ValueError(
            f"sample_negatives: user {u} has no weighted mass left among its {avail} unseen items"
            + ("" if replace else f" for {k} distinct negatives (replace=False)")
        )
    if avail == 0:
        raise ValueError(f"sample_negatives: user {u} has no negative item left (it has all {csr.n_cols} items)")
    raise ValueError(
        f"sample_negatives: user {u} has {avail} unseen items, fewer than num_negatives={k} with replace=False"
    )


# ---------------------------------------------------------------------------------------------
# Reference: plain numpy, one user at a time, reproducing the counter-based generator exactly.
# ---------------------------------------------------------------------------------------------

def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = (x + np.uint64(0x9E3779B97F4A7C15)).astype(np.uint64)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _rng_key(seed: int, stream: np.ndarray) -> np.ndarray:
    s = _splitmix64(np.array([seed], dtype=np.uint64))
    return _splitmix64(s ^ (stream.astype(np.uint64) * np.uint64(0xD1B54A32D192ED03) + np.uint64(0x8CB92BA72F3D8DD7)))


def _rng_bits(key: np.ndarray, counter: np.ndarray) -> np.ndarray:
    return _splitmix64(key + counter.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))


def _mulhi(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    m32 = np.uint64(0xFFFFFFFF)
    s32 = np.uint64(32)
    a = a.astype(np.uint64)
    b = np.broadcast_to(np.asarray(b, dtype=np.uint64), a.shape)
    a_lo, a_hi = a & m32, a >> s32
    b_lo, b_hi = b & m32, b >> s32
    lo_lo, hi_lo, lo_hi, hi_hi = a_lo * b_lo, a_hi * b_lo, a_lo * b_hi, a_hi * b_hi
    cross = (lo_lo >> s32) + (hi_lo & m32) + lo_hi
    return hi_hi + (hi_lo >> s32) + (cross >> s32)


def _rng_unit(bits: np.ndarray) -> np.ndarray:
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def _search_count(vals: np.ndarray, t: float) -> int:
    """The kernels' binary search: the first position whose value is > t, if vals is sorted."""
    lo, n = 0, len(vals)
    while n > 0:
        half = n >> 1
        mid = lo + half
        if vals[mid] <= t:
            lo, n = mid + 1, n - half - 1
        else:
            n = half
    return lo


def _sample_negatives_reference(
    csr: CSR,
    users: torch.Tensor,
    num_negatives: int,
    *,
    seed: int,
    replace: bool = True,
    weights: torch.Tensor | None = None,
    row_offset: int = 0,
) -> torch.Tensor:
    """The same draws as the kernel, computed from each user's explicit complement list."""
    c = csr.to("cpu")
    indptr = c.indptr.numpy()
    indices = c.indices.numpy().astype(np.int64)
    n_items = csr.n_cols
    users_np = users.cpu().numpy().astype(np.int64)
    k = int(num_negatives)
    out = np.empty((users_np.size, k), dtype=np.int64)
    if k == 0:
        return torch.from_numpy(out)
    streams = _rng_key(int(seed) & _MASK64, np.arange(users_np.size, dtype=np.uint64) + np.uint64(row_offset))
    counters = np.arange(k, dtype=np.uint64)
    w = None if weights is None else weights.detach().cpu().numpy().astype(np.float64)
    if w is not None:
        cum, keys = (x.numpy() for x in _weighted_tables(c.indptr, c.indices, torch.from_numpy(w)))
    for b, u in enumerate(users_np):
        row = indices[indptr[u]:indptr[u + 1]]
        complement = np.setdiff1d(np.arange(n_items), row)
        bits = _rng_bits(np.full(k, streams[b], dtype=np.uint64), counters)
        if w is None:
            m = complement.size
            if m < (1 if replace else k):
                _raise_no_negatives(csr, users, b, k, replace, None)
            if replace:
                out[b] = complement[_mulhi(bits, np.uint64(m)).astype(np.int64)]
            else:
                ranks: list[int] = []
                for c_, j in enumerate(range(m - k, m)):
                    t = int(_mulhi(bits[c_:c_ + 1], np.uint64(j + 1))[0])
                    ranks.append(j if t in ranks else t)
                out[b] = complement[np.array(ranks, dtype=np.int64)]
            continue
        deg = row.size
        rowk = keys[indptr[u] + u:indptr[u + 1] + u + 1]  # the row's keys, then its complement mass
        local = list(row)
        # Without replacement the kernel keeps local_G[j] = P_j, the weight of the row's first j
        # entries (P_j = cum[row[j]] - key_j, P_deg = cum[n_items] - mass), updated as items join.
        local_G = [*(cum[row] - rowk[:deg]), cum[n_items] - rowk[deg]]
        for kk in range(k):
            arr = np.array(local, dtype=np.int64)
            if replace:
                mass = rowk[deg]
                if not mass > 0.0:
                    _raise_no_negatives(csr, users, b, k, replace, weights)
                t = _rng_unit(bits[kk:kk + 1])[0] * mass
                # Row items whose complement mass below them is <= t lie before the answer; the
                # gap after the last of them starts at cum[prev + 1] (the kernel's arithmetic).
                j = _search_count(rowk[:deg], t)
                ta = (t - rowk[j - 1]) + cum[row[j - 1] + 1] if j > 0 else t
            else:
                lg = np.array(local_G)
                mass = cum[n_items] - (lg[len(local)] - lg[0])
                if not mass > 1e-12 * cum[n_items]:
                    _raise_no_negatives(csr, users, b, k, replace, weights)
                t = _rng_unit(bits[kk:kk + 1])[0] * mass
                j = int(np.count_nonzero(cum[arr] - (lg[:len(local)] - lg[0]) <= t))
                ta = t + (lg[j] - lg[0])
            ok = (cum[1:] - cum[:-1] > 0) & ~np.isin(np.arange(n_items), arr)
            x = min(int(np.searchsorted(cum[1:], ta, side="right")), n_items - 1)
            if not ok.any():  # the complement's mass rounded to a few ulps, not 0: no negative
                _raise_no_negatives(csr, users, b, k, replace, weights)
            if not ok[x]:
                after = np.nonzero(ok[x:])[0]
                x = x + int(after[0]) if after.size else int(np.nonzero(ok[:x])[0][-1])
            out[b, kk] = x
            if not replace:
                pos = int(np.searchsorted(arr, x))
                wx = cum[x + 1] - cum[x]
                local.insert(pos, x)
                local_G.insert(pos + 1, local_G[pos] + wx)
                for q in range(pos + 2, len(local_G)):
                    local_G[q] += wx
    return torch.from_numpy(out)
