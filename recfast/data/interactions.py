"""``Interactions``: user-item events with optional ratings and timestamps, in a contiguous id space.

Everything here is vectorised numpy (sorts, ``bincount`` and group offsets; no per-user Python
loops), so filters and id look-ups stay fast on tens of millions of events.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ..csr import CSR

__all__ = ["Interactions", "UnknownIdError"]

_ORDERS = ("first", "sorted")


class _NoPad:
    def __repr__(self) -> str:
        return "<no pad>"


_NO_PAD: Any = _NoPad()


class UnknownIdError(KeyError, ValueError):
    """An original id that is not in an ``Interactions`` id map.

    Subclasses both ``KeyError`` (a failed look-up) and ``ValueError`` (a bad argument), so
    either ``except`` clause catches it.
    """

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if hasattr(x, "to_numpy") and not isinstance(x, np.ndarray):  # pandas Series / Index
        return np.asarray(x.to_numpy())
    return np.asarray(x)


def _dtype_name(a: np.ndarray) -> str:
    return str(a.dtype)


def _id_array(x: Any, what: str) -> np.ndarray:
    """Contiguous int64 ids from any integer array; rejects floats, bools and strings."""
    a = _as_numpy(x)
    if a.ndim != 1:
        raise ValueError(f"Interactions: {what} must be 1-D, got shape {a.shape}")
    if a.dtype.kind not in "iu":
        if a.size == 0:  # np.asarray([]) is float64
            return np.zeros(0, dtype=np.int64)
        raise TypeError(
            f"Interactions: {what} must hold integer ids, got dtype {_dtype_name(a)} "
            "(use Interactions.from_ids to map arbitrary ids)"
        )
    if a.dtype.kind == "u" and a.size and int(a.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"Interactions: {what} holds id {int(a.max())}, which does not fit int64")
    return np.ascontiguousarray(a, dtype=np.int64)


def _factorize(
    values: Any, order: str = "first", *, what: str = "ids", fn: str = "Interactions.from_ids"
) -> tuple[np.ndarray, np.ndarray]:
    """Map arbitrary hashable ids to contiguous codes ``0..n_unique-1``.

    Returns ``(uniques, codes)`` with ``uniques[codes] == values``. ``order="first"`` numbers ids in
    order of first appearance (like ``pandas.factorize``); ``order="sorted"`` in sorted order.
    Integer ids whose range is not much larger than their count take an O(n) ``bincount`` path.
    """
    if order not in _ORDERS:
        raise ValueError(f"{fn}: order must be one of {_ORDERS}, got {order!r}")
    a = _as_numpy(values)
    if a.ndim != 1:
        raise ValueError(f"{fn}: {what} must be 1-D, got shape {a.shape}")
    n = a.size
    if n == 0:
        return a[:0].copy(), np.zeros(0, dtype=np.int64)
    if a.dtype.kind == "f" and np.isnan(a).any():
        raise ValueError(f"{fn}: {what} holds NaN at position {int(np.flatnonzero(np.isnan(a))[0])}")
    if a.dtype.kind in "iu" and a.dtype.itemsize <= 8:
        lo, hi = int(a.min()), int(a.max())
        span = hi - lo + 1
        if span <= 4 * n + (1 << 20):
            off = (a - a.dtype.type(lo)).astype(np.intp)
            present = np.bincount(off, minlength=span) > 0
            uniq_off = np.flatnonzero(present)
            code_of = np.full(span, -1, dtype=np.int64)
            if order == "sorted":
                code_of[uniq_off] = np.arange(uniq_off.size, dtype=np.int64)
            else:
                first = np.full(span, n, dtype=np.int64)
                np.minimum.at(first, off, np.arange(n, dtype=np.int64))
                uniq_off = uniq_off[np.argsort(first[uniq_off], kind="stable")]
                code_of[uniq_off] = np.arange(uniq_off.size, dtype=np.int64)
            uniques = uniq_off.astype(a.dtype) + a.dtype.type(lo)
            return uniques, code_of[off]
    if a.dtype.kind == "O":
        try:
            uniq, first, inverse = np.unique(a, return_index=True, return_inverse=True)
        except TypeError:  # unorderable mix such as ints and strings
            if order == "sorted":
                raise TypeError(
                    f"{fn}: {what} mix types that cannot be sorted; use order='first'"
                ) from None
            table: dict[Any, int] = {}
            codes = np.fromiter((table.setdefault(v, len(table)) for v in a.tolist()), dtype=np.int64, count=n)
            uniques = np.empty(len(table), dtype=object)
            uniques[:] = list(table)
            return uniques, codes
    else:
        uniq, first, inverse = np.unique(a, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1).astype(np.int64, copy=False)
    if order == "sorted":
        return uniq, inverse
    rank = np.argsort(first, kind="stable")  # unique values by first appearance
    new_code = np.empty(rank.size, dtype=np.int64)
    new_code[rank] = np.arange(rank.size, dtype=np.int64)
    return uniq[rank], new_code[inverse]


def _same_map(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is b:
        return True
    if a is None or b is None:
        return False
    return a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(a, b))


class Interactions:
    """User-item interactions over contiguous ids ``0..n_users-1`` and ``0..n_items-1``.

    Each event is one row of the parallel arrays ``users``, ``items`` (int64) and, when present,
    ``ratings`` (float32) and ``timestamps`` (any numeric or datetime64 dtype). Original ids (ints
    or strings) live in the optional maps ``user_ids`` / ``item_ids``: contiguous id ``u`` stands
    for ``user_ids[u]``. Without a map the contiguous ids are the original ids.

    Filters and splits return new objects and never modify this one; the arrays of a result may
    share memory with this object's id maps, so treat the arrays as read-only.

    Parameters
    ----------
    users, items : integer arrays of equal length (contiguous ids).
    n_users, n_items : sizes of the id spaces (default: max id + 1).
    ratings : optional float array (explicit feedback).
    timestamps : optional numeric or datetime64 array.
    user_ids, item_ids : optional arrays mapping contiguous ids back to the original ids, of length
        ``n_users`` / ``n_items``.

    Examples
    --------
    >>> from recfast.data import Interactions
    >>> x = Interactions([0, 1, 1], [2, 0, 1])
    >>> x.to_csr().shape
    (2, 3)
    >>> y = Interactions.from_ids(["bob", "amy", "bob"], [10, 30, 20])
    >>> y.users.tolist(), y.original_users([0, 1]).tolist(), int(y.user_index("amy"))
    ([0, 1, 0], ['bob', 'amy'], 1)
    """

    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray | None
    timestamps: np.ndarray | None
    user_ids: np.ndarray | None
    item_ids: np.ndarray | None
    n_users: int
    n_items: int

    def __init__(
        self,
        users: Any,
        items: Any,
        *,
        n_users: int | None = None,
        n_items: int | None = None,
        ratings: Any = None,
        timestamps: Any = None,
        user_ids: Sequence[Any] | np.ndarray | None = None,
        item_ids: Sequence[Any] | np.ndarray | None = None,
    ) -> None:
        self.users = _id_array(users, "users")
        self.items = _id_array(items, "items")
        if len(self.users) != len(self.items):
            raise ValueError(
                f"Interactions: users and items must have equal length, got {len(self.users)} and {len(self.items)}"
            )
        for name, given in (("n_users", n_users), ("n_items", n_items)):
            if given is not None and (isinstance(given, bool) or not isinstance(given, (int, np.integer)) or given < 0):
                raise ValueError(f"Interactions: {name} must be a non-negative int, got {given!r}")
        self.n_users = int(n_users) if n_users is not None else (int(self.users.max()) + 1 if len(self.users) else 0)
        self.n_items = int(n_items) if n_items is not None else (int(self.items.max()) + 1 if len(self.items) else 0)
        for name, a, n in (("users", self.users, self.n_users), ("items", self.items, self.n_items)):
            if len(a):
                lo, hi = int(a.min()), int(a.max())
                if lo < 0 or hi >= n:
                    bad = lo if lo < 0 else hi
                    raise ValueError(f"Interactions: {name} holds id {bad}, expected 0 <= id < {n}")
        self.ratings = None
        if ratings is not None:
            r = _as_numpy(ratings)
            if r.dtype.kind not in "biuf":
                raise TypeError(f"Interactions: ratings must be numeric, got dtype {_dtype_name(r)}")
            self.ratings = np.ascontiguousarray(r, dtype=np.float32)
        self.timestamps = None
        if timestamps is not None:
            t = _as_numpy(timestamps)
            if t.dtype.kind not in "iufMm":
                raise TypeError(f"Interactions: timestamps must be numeric or datetime64, got dtype {_dtype_name(t)}")
            self.timestamps = np.ascontiguousarray(t)
        for name, a in (("ratings", self.ratings), ("timestamps", self.timestamps)):
            if a is not None and a.shape != self.users.shape:
                raise ValueError(f"Interactions: {name} has shape {a.shape}, expected {self.users.shape}")
        self.user_ids = None if user_ids is None else _as_numpy(user_ids)
        self.item_ids = None if item_ids is None else _as_numpy(item_ids)
        for name, m, n in (("user_ids", self.user_ids, self.n_users), ("item_ids", self.item_ids, self.n_items)):
            if m is not None and (m.ndim != 1 or m.shape[0] != n):
                raise ValueError(f"Interactions: {name} must be a 1-D map of length {n}, got shape {m.shape}")
        self._lookup_cache: dict[str, Any] = {}

    # -- basics ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.users)

    def __repr__(self) -> str:
        extra = "".join(f", {n}" for n in ("ratings", "timestamps") if getattr(self, n) is not None)
        return f"Interactions({len(self)} events, {self.n_users} users, {self.n_items} items{extra})"

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_lookup_cache"] = {}
        return state

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_users, n_items)``."""
        return (self.n_users, self.n_items)

    def user_counts(self) -> np.ndarray:
        """Events per user (int64, length ``n_users``)."""
        return np.bincount(self.users, minlength=self.n_users).astype(np.int64, copy=False)

    def item_counts(self) -> np.ndarray:
        """Events per item (int64, length ``n_items``)."""
        return np.bincount(self.items, minlength=self.n_items).astype(np.int64, copy=False)

    def to_csr(self, *, values: str | None = None, duplicates: str = "last") -> CSR:
        """The users x items CSR matrix.

        ``values=None`` gives a binary matrix; ``values="ratings"`` stores the ratings.
        Repeated pairs keep the latest occurrence by default (``duplicates`` is passed to
        ``CSR.from_coo``: ``"last"``, ``"sum"`` or ``"error"``).

        Example
        -------
        >>> Interactions([0, 0, 1], [1, 1, 0]).to_csr().nnz
        2
        """
        vals = None
        if values == "ratings":
            if self.ratings is None:
                raise ValueError("Interactions.to_csr: values='ratings' but these interactions have no ratings")
            vals = torch.from_numpy(self.ratings)
        elif values is not None:
            raise ValueError(f"Interactions.to_csr: values must be None or 'ratings', got {values!r}")
        m = CSR.from_coo(torch.from_numpy(self.users), torch.from_numpy(self.items), vals,
                         shape=(self.n_users, self.n_items), duplicates=duplicates)
        return m

    # -- original ids ---------------------------------------------------------------------------
    @classmethod
    def from_ids(
        cls,
        user_ids: Any,
        item_ids: Any,
        ratings: Any = None,
        timestamps: Any = None,
        *,
        order: str = "first",
    ) -> "Interactions":
        """Interactions from original ids (ints, strings or any hashable), mapped to contiguous ids.

        ``order="first"`` (default) numbers users and items in order of first appearance, as
        ``pandas.factorize`` and RecBole do, so appending events never renumbers earlier ones;
        ``order="sorted"`` numbers them in sorted order of the original ids. ``user_ids`` and
        ``item_ids`` of the result hold the maps back (``original_users``/``original_items``).

        Example
        -------
        >>> x = Interactions.from_ids(["bob", "amy", "bob"], [10, 30, 20], order="sorted")
        >>> x.users.tolist(), x.user_ids.tolist(), x.item_ids.tolist()
        ([1, 0, 1], ['amy', 'bob'], [10, 20, 30])
        """
        u = _as_numpy(user_ids)
        i = _as_numpy(item_ids)
        if u.ndim != 1 or i.ndim != 1 or u.shape != i.shape:
            raise ValueError(
                f"Interactions.from_ids: user_ids and item_ids must be 1-D of equal length, got {u.shape} and {i.shape}"
            )
        uniq_u, users = _factorize(u, order, what="user_ids")
        uniq_i, items = _factorize(i, order, what="item_ids")
        return cls(users, items, n_users=len(uniq_u), n_items=len(uniq_i), ratings=ratings, timestamps=timestamps,
                   user_ids=uniq_u, item_ids=uniq_i)

    def _index(self, kind: str, ids: Any) -> Any:
        table = self.user_ids if kind == "user" else self.item_ids
        n = self.n_users if kind == "user" else self.n_items
        fn = f"Interactions.{kind}_index"
        scalar = np.ndim(ids) == 0
        q = _as_numpy(ids).reshape(-1)
        if table is None:  # contiguous ids are the original ids
            if q.size and q.dtype.kind not in "iu":
                raise UnknownIdError(f"{fn}: unknown {kind} id(s) {q[:5].tolist()} (ids are integers 0..{n - 1})")
            out = q.astype(np.int64)
            found = (out >= 0) & (out < n)
        elif table.dtype == object or q.dtype == object:
            lut = self._lookup_cache.get(kind + "_dict")
            if lut is None:
                lut = {v: k for k, v in enumerate(table.tolist())}
                self._lookup_cache[kind + "_dict"] = lut
            out = np.fromiter((lut.get(v, -1) for v in q.tolist()), dtype=np.int64, count=q.size)
            found = out >= 0
        elif (table.dtype.kind in "USV") != (q.dtype.kind in "USV") or not len(table):
            out, found = np.zeros(q.shape, np.int64), np.zeros(q.shape, bool)
        else:
            sorter = self._lookup_cache.get(kind + "_sorter")
            if sorter is None:
                sorter = np.argsort(table, kind="stable")
                self._lookup_cache[kind + "_sorter"] = sorter
            ordered = table[sorter]
            try:
                pos = np.minimum(np.searchsorted(ordered, q), len(table) - 1)
                found = np.asarray(ordered[pos] == q, dtype=bool)
            except TypeError:  # e.g. bytes against str
                pos, found = np.zeros(q.shape, np.intp), np.zeros(q.shape, bool)
            out = sorter[pos].astype(np.int64)
        if not found.all():
            bad = q[~found]
            more = f" and {bad.size - 5} more" if bad.size > 5 else ""
            raise UnknownIdError(f"{fn}: unknown {kind} id(s) {bad[:5].tolist()}{more}")
        return int(out[0]) if scalar else out

    def user_index(self, ids: Any) -> Any:
        """Contiguous ids of original user ids (an int for a scalar, else an int64 array).

        Raises ``UnknownIdError`` (a ``KeyError`` and a ``ValueError``) naming unknown ids.

        Example
        -------
        >>> x = Interactions.from_ids(["bob", "amy"], [1, 2])
        >>> x.user_index(["amy", "bob"]).tolist()
        [1, 0]
        """
        return self._index("user", ids)

    def item_index(self, ids: Any) -> Any:
        """Contiguous ids of original item ids; see ``user_index``."""
        return self._index("item", ids)

    def _original(self, kind: str, ids: Any, pad: Any) -> Any:
        table = self.user_ids if kind == "user" else self.item_ids
        n = self.n_users if kind == "user" else self.n_items
        fn = f"Interactions.original_{kind}s"
        scalar = np.ndim(ids) == 0
        a = _as_numpy(ids)
        if a.dtype.kind not in "iu":
            if a.size:
                raise TypeError(f"{fn}: ids must be integers, got dtype {a.dtype}")
            a = a.astype(np.int64)
        a = a.astype(np.int64, copy=False)
        padded = (a == -1) if pad is not _NO_PAD else np.zeros(a.shape, bool)
        bad = a[((a < 0) | (a >= n)) & ~padded]
        if bad.size:
            hint = "; -1 (top-k padding) maps to pad= when pad is given" if (bad == -1).any() else ""
            raise ValueError(f"{fn}: id {int(bad.flat[0])} out of range for {n} {kind}s{hint}")
        if table is None:
            out = a.copy()
        elif len(table):
            out = table[np.where(padded, 0, a)]
        else:
            out = np.empty(a.shape, dtype=table.dtype)
        if padded.any():
            try:
                dtype = object if pad is None else np.result_type(out.dtype, np.asarray(pad).dtype)
            except TypeError:
                dtype = object
            out = out.astype(dtype)
            out[padded] = pad
        return out.reshape(()).item() if scalar else out

    def original_users(self, ids: Any, *, pad: Any = _NO_PAD) -> Any:
        """Original ids of contiguous user ids (the ids themselves when there is no map).

        Accepts a scalar (returns a Python scalar) or an array of any shape (returns an array of
        that shape). Out-of-range ids raise ``ValueError``. When ``pad`` is given, ids equal to -1
        map to ``pad`` instead (top-k results mark missing slots with -1); the result dtype then
        widens to hold ``pad`` (object for ``pad=None``).
        """
        return self._original("user", ids, pad)

    def original_items(self, ids: Any, *, pad: Any = _NO_PAD) -> Any:
        """Original ids of contiguous item ids; see ``original_users``.

        Example
        -------
        >>> x = Interactions.from_ids([1, 1], ["a", "b"])
        >>> x.original_items([[1, 0], [0, -1]], pad="").tolist()
        [['b', 'a'], ['a', '']]
        """
        return self._original("item", ids, pad)

    # -- selection ------------------------------------------------------------------------------
    def _take(self, idx: np.ndarray) -> "Interactions":
        take = lambda a: None if a is None else a[idx]  # noqa: E731
        out = Interactions.__new__(Interactions)
        out.users, out.items = self.users[idx], self.items[idx]
        out.ratings, out.timestamps = take(self.ratings), take(self.timestamps)
        out.n_users, out.n_items = self.n_users, self.n_items
        out.user_ids, out.item_ids = self.user_ids, self.item_ids
        out._lookup_cache = self._lookup_cache  # same maps, same look-up tables
        return out

    def subset(self, mask: Any) -> "Interactions":
        """The events where the boolean ``mask`` (one entry per event) is true, same id space.

        Example
        -------
        >>> x = Interactions([0, 1, 2], [0, 0, 1])
        >>> len(x.subset(x.users > 0)), x.subset(x.users > 0).n_users
        (2, 3)
        """
        m = _as_numpy(mask)
        if m.dtype != np.bool_:
            raise TypeError(f"Interactions.subset: mask must be boolean, got dtype {m.dtype}")
        if m.shape != self.users.shape:
            raise ValueError(f"Interactions.subset: mask has shape {m.shape}, expected {self.users.shape}")
        return self._take(np.flatnonzero(m))

    def select(self, idx: Any) -> "Interactions":
        """The events at integer positions ``idx`` (in that order; repeats allowed), same id space."""
        i = _as_numpy(idx)
        if i.dtype == np.bool_:
            return self.subset(i)
        if i.dtype.kind not in "iu":
            if i.size:
                raise TypeError(f"Interactions.select: idx must be integer positions, got dtype {i.dtype}")
            i = i.astype(np.int64)
        if i.ndim != 1:
            raise ValueError(f"Interactions.select: idx must be 1-D, got shape {i.shape}")
        if i.size and (int(i.min()) < -len(self) or int(i.max()) >= len(self)):
            bad = int(i.min()) if int(i.min()) < -len(self) else int(i.max())
            raise IndexError(f"Interactions.select: position {bad} out of range for {len(self)} events")
        return self._take(i.astype(np.intp, copy=False))

    @classmethod
    def concat(cls, parts: Sequence["Interactions"]) -> "Interactions":
        """The events of several ``Interactions`` in one id space (e.g. the parts of a split).

        All parts must share ``n_users``, ``n_items`` and id maps; ratings and timestamps are kept
        when every part has them.
        """
        parts = list(parts)
        if not parts:
            raise ValueError("Interactions.concat: need at least one part")
        p0 = parts[0]
        for k, p in enumerate(parts[1:], 1):
            if not isinstance(p, Interactions):
                raise TypeError(f"Interactions.concat: part {k} is a {type(p).__name__}, not Interactions")
            if p.shape != p0.shape:
                raise ValueError(f"Interactions.concat: part {k} has shape {p.shape}, part 0 has {p0.shape}")
            if not (_same_map(p.user_ids, p0.user_ids) and _same_map(p.item_ids, p0.item_ids)):
                raise ValueError(f"Interactions.concat: part {k} has different id maps from part 0")
        cat = lambda name: (np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
                            if all(getattr(p, name) is not None for p in parts) else None)
        return cls(cat("users"), cat("items"), n_users=p0.n_users, n_items=p0.n_items, ratings=cat("ratings"),
                   timestamps=cat("timestamps"), user_ids=p0.user_ids, item_ids=p0.item_ids)

    def compact(self) -> "Interactions":
        """Re-index to the users and items that have events, keeping their relative order.

        The id maps are updated so original ids still resolve: without a map, the old contiguous
        ids become the original ids of the result.

        Example
        -------
        >>> x = Interactions([0, 5], [3, 3]).compact()
        >>> x.shape, x.original_users([0, 1]).tolist()
        ((2, 1), [0, 5])
        """
        out = self._take(slice(None))  # type: ignore[arg-type]
        out._lookup_cache = {}
        for kind in ("user", "item"):
            ids = self.users if kind == "user" else self.items
            n = self.n_users if kind == "user" else self.n_items
            table = self.user_ids if kind == "user" else self.item_ids
            present = np.bincount(ids, minlength=n) > 0
            kept = np.flatnonzero(present)
            new_of_old = np.cumsum(present, dtype=np.int64) - 1
            new_map = kept.astype(np.int64) if table is None else table[kept]
            if kind == "user":
                out.users, out.n_users, out.user_ids = new_of_old[ids], int(kept.size), new_map
            else:
                out.items, out.n_items, out.item_ids = new_of_old[ids], int(kept.size), new_map
        return out

    # -- filters --------------------------------------------------------------------------------
    def _pair_order(self) -> np.ndarray:
        """Positions sorted by (user, item[, timestamp]), ties in input order."""
        if self.n_users * max(self.n_items, 1) < 2**62:
            key = self.users * np.int64(self.n_items) + self.items
            keys: tuple[np.ndarray, ...] = (key,)
        else:
            keys = (self.items, self.users)
        if self.timestamps is not None:
            return np.lexsort((self.timestamps, *keys))
        return np.argsort(keys[0], kind="stable") if len(keys) == 1 else np.lexsort(keys)

    def drop_duplicates(self) -> "Interactions":
        """One event per (user, item) pair: the latest by timestamp (ties: the last occurrence), or
        the last occurrence without timestamps. Kept events stay in input order; same id space.

        Example
        -------
        >>> x = Interactions([0, 0, 1], [1, 1, 0], timestamps=[5, 3, 1]).drop_duplicates()
        >>> x.items.tolist(), x.timestamps.tolist()
        ([1, 0], [5, 1])
        """
        n = len(self)
        if n == 0:
            return self._take(np.zeros(0, dtype=np.intp))
        if self.n_users <= 4 * n + (1 << 20):
            try:  # O(n) counting sort in C++: the common case, no repeated pair, skips the full sort
                CSR.from_coo(torch.from_numpy(self.users), torch.from_numpy(self.items), shape=self.shape,
                             duplicates="error")
                return self._take(np.arange(n, dtype=np.intp))
            except ValueError:
                pass
        order = self._pair_order()
        u, i = self.users[order], self.items[order]
        last = np.ones(n, dtype=bool)
        last[:-1] = (u[1:] != u[:-1]) | (i[1:] != i[:-1])
        return self._take(np.sort(order[last]))

    def binarize(self, threshold: float) -> "Interactions":
        """Implicit feedback: the events with ``rating >= threshold``, without ratings.

        Example
        -------
        >>> x = Interactions([0, 0, 1], [0, 1, 0], ratings=[5, 2, 4]).binarize(4)
        >>> x.items.tolist(), x.ratings is None
        ([0, 0], True)
        """
        if self.ratings is None:
            raise ValueError("Interactions.binarize: these interactions have no ratings")
        try:
            t = float(threshold)
        except (TypeError, ValueError):
            raise TypeError(f"Interactions.binarize: threshold must be a number, got {threshold!r}") from None
        if np.isnan(t):
            raise ValueError("Interactions.binarize: threshold is NaN")
        out = self.subset(self.ratings >= t)
        out.ratings = None
        return out

    def k_core(self, user_k: int, item_k: int | None = None) -> "Interactions":
        """The k-core: repeatedly drop users with fewer than ``user_k`` events and items with fewer
        than ``item_k`` (default ``user_k``) events until none is left, then re-index.

        Counts are events (a repeated pair counts twice: call ``drop_duplicates`` first to count
        distinct items). The result is compacted to the surviving users and items (see
        ``compact``): its ids are new, and its ``user_ids``/``item_ids`` map them to this object's
        original ids (or to this object's contiguous ids when it had no maps).

        Example
        -------
        >>> x = Interactions([0, 0, 1, 1, 2], [0, 1, 0, 1, 2]).k_core(2)
        >>> x.shape, x.original_users([0, 1]).tolist()
        ((2, 2), [0, 1])
        """
        ks = []
        for name, k in (("user_k", user_k), ("item_k", user_k if item_k is None else item_k)):
            if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
                raise ValueError(f"Interactions.k_core: {name} must be a non-negative int, got {k!r}")
            ks.append(int(k))
        uk, ik = ks
        idx = np.arange(len(self), dtype=np.intp)
        u, i = self.users, self.items
        while u.size:
            keep = (np.bincount(u, minlength=self.n_users)[u] >= uk) & (np.bincount(i, minlength=self.n_items)[i] >= ik)
            if keep.all():
                break
            idx, u, i = idx[keep], u[keep], i[keep]
        return self._take(idx).compact()
