"""Loaders: delimited text (CSV/TSV, any delimiter), RecBole atomic files, LightGCN-style adjacency
lists and split folders, pandas data frames and scipy matrices.

The text readers parse in chunks of lines with C-level string operations (one ``split`` per chunk,
``numpy`` conversions per column), so memory stays bounded and there is no per-field Python work on
well-formed files. Problems are reported exactly: a missing file raises ``FileNotFoundError``
naming the path; a malformed line raises ``ValueError`` naming the file and the line number; a
missing column raises ``ValueError`` naming the column and the columns present. Fields are split
on the delimiter only: quoting is not interpreted (read quoted CSV with pandas and use
``from_pandas``). Files ending in ``.gz`` are decompressed on the fly.
"""

from __future__ import annotations

import errno
import gzip
import os
from itertools import chain
from operator import methodcaller
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Sequence

import numpy as np
import scipy.sparse as sp

from ..csr import CSR
from .interactions import Interactions, _factorize

__all__ = [
    "load_csv",
    "load_atomic",
    "load_atomic_features",
    "atomic_feature_matrix",
    "load_adjacency_list",
    "load_split_dataset",
    "from_pandas",
    "from_scipy",
]

_CHUNK_CHARS = 1 << 24  # characters read per chunk (whole lines are completed)
_ID_TYPES = ("auto", "int", "str")
_ATOMIC_TYPES = ("token", "token_seq", "float", "float_seq")
PathLike = str | os.PathLike


# -- files --------------------------------------------------------------------------------------
def _check_file(path: PathLike, fn: str) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{fn}: path must be a str or os.PathLike, got {type(path).__name__}")
    p = Path(path)
    if p.is_dir():
        raise IsADirectoryError(f"{fn}: {p} is a directory, expected a file")
    if not p.is_file():
        raise FileNotFoundError(errno.ENOENT, f"{fn}: file not found", str(p))
    return p


def _open(p: Path, encoding: str) -> IO[str]:
    if p.suffix == ".gz":
        return gzip.open(p, "rt", encoding=encoding, newline=None)
    return open(p, encoding=encoding, newline=None)


def _line_chunks(f: IO[str]) -> Iterator[tuple[int, list[str]]]:
    """Yields ``(lines before this chunk, lines)``; lines carry no newline characters."""
    chunk_chars = _CHUNK_CHARS  # read at call time (tests shrink it to exercise chunking)
    base = 0
    first = True
    while True:
        text = f.read(chunk_chars)
        if not text:
            return
        if not text.endswith("\n"):
            text += f.readline()
        if first and text.startswith("\ufeff"):  # byte order mark
            text = text[1:]
        first = False
        lines = text.split("\n")
        if lines[-1] == "":
            lines.pop()
        yield base, lines
        base += len(lines)


def _split(line: str, sep: str | None) -> list[str]:
    return line.split() if sep is None else line.split(sep)


def _is_skipped(line: str, comment: str | None) -> bool:
    return not line.strip() or (comment is not None and line.startswith(comment))


# -- typed column conversion --------------------------------------------------------------------
class _ColumnError(Exception):
    def __init__(self, row: int, msg: str) -> None:
        self.row, self.msg = row, msg


def _first_bad(col: list[str], conv: Callable[[str], Any]) -> int:
    for j, v in enumerate(col):
        try:
            conv(v)
        except (ValueError, OverflowError):
            return j
    return -1  # pragma: no cover - only called after a failure


def _to_int(col: list[str], label: str) -> np.ndarray:
    try:
        return np.array(col, dtype=np.int64)
    except (ValueError, OverflowError):
        j = _first_bad(col, lambda s: np.int64(int(s)))
        raise _ColumnError(j, f"{label} {col[j]!r} is not an integer") from None


def _to_float(col: list[str], label: str) -> np.ndarray:
    try:
        return np.array(col, dtype=np.float64)
    except ValueError:
        j = _first_bad(col, float)
        raise _ColumnError(j, f"{label} {col[j]!r} is not a number") from None


def _to_str(col: list[str], label: str, *, nonempty: bool) -> np.ndarray:
    if nonempty and "" in col:
        raise _ColumnError(col.index(""), f"{label} is empty")
    return np.array(col, dtype=str) if col else np.zeros(0, dtype="<U1")


def _convert(kind: str, col: list[str], label: str) -> np.ndarray:
    """``kind``: int, float, num (int when every value is one, else float), id/token (int when
    every value is one, else str; ids must be non-empty), str, token_seq, float_seq."""
    if kind == "int":
        return _to_int(col, label)
    if kind == "float":
        return _to_float(col, label)
    if kind == "num":
        try:
            return np.array(col, dtype=np.int64)
        except (ValueError, OverflowError):
            return _to_float(col, label)
    if kind in ("id", "token"):
        try:
            return np.array(col, dtype=np.int64)
        except (ValueError, OverflowError):
            return _to_str(col, label, nonempty=kind == "id")
    if kind in ("str", "id_str"):
        return _to_str(col, label, nonempty=kind == "id_str")
    if kind == "token_seq":
        out = np.empty(len(col), dtype=object)
        out[:] = [s.split() for s in col]  # list assignment keeps each list as one element
        return out
    if kind == "float_seq":
        out = np.empty(len(col), dtype=object)
        for j, s in enumerate(col):
            try:
                out[j] = np.array(s.split(), dtype=np.float64)
            except ValueError:
                raise _ColumnError(j, f"{label} {s!r} is not a space-separated list of numbers") from None
        return out
    raise AssertionError(kind)  # pragma: no cover


def _merge(kind: str, parts: list[np.ndarray]) -> np.ndarray:
    if not parts:
        empty = {"int": np.int64, "id": np.int64, "token": np.int64, "num": np.int64, "float": np.float64}
        return np.zeros(0, dtype=empty.get(kind, object if kind.endswith("seq") else "<U1"))
    if len(parts) == 1:
        return parts[0]
    if kind == "num" and any(p.dtype.kind == "f" for p in parts):
        parts = [p.astype(np.float64) for p in parts]
    return np.concatenate(parts)


_Selection = list[tuple[int, str, str]]  # (position, kind, label)


class _Restart(Exception):
    """An auto-typed column held integers in earlier chunks and strings in a later one."""

    def __init__(self, label: str) -> None:
        self.label = label


def _read_columns(
    p: Path,
    fn: str,
    *,
    sep: str | None,
    header: bool,
    comment: str | None,
    encoding: str,
    select: Callable[[list[str] | None, int], _Selection],
    header_names: Callable[[list[str]], list[str]] | None = None,
) -> tuple[list[str] | None, dict[str, np.ndarray]]:
    """Parse a delimited file into ``{label: array}`` for the columns ``select(names, n_fields)``
    picks; every non-blank, non-comment line must have exactly ``n_fields`` fields. A file with
    no data line and no header gives ``{}``."""
    forced: set[str] = set()
    while True:
        try:
            return _read_columns_once(p, fn, sep=sep, header=header, comment=comment, encoding=encoding,
                                      select=select, header_names=header_names, forced_str=forced)
        except _Restart as r:  # rare: parse again with that column as strings from the start
            forced.add(r.label)


_AS_STR = {"id": "id_str", "token": "str"}


def _read_columns_once(
    p: Path,
    fn: str,
    *,
    sep: str | None,
    header: bool,
    comment: str | None,
    encoding: str,
    select: Callable[[list[str] | None, int], _Selection],
    header_names: Callable[[list[str]], list[str]] | None,
    forced_str: set[str],
) -> tuple[list[str] | None, dict[str, np.ndarray]]:
    names: list[str] | None = None
    n_fields = -1
    wanted: _Selection = []
    parts: dict[str, list[np.ndarray]] = {}
    str_seen: set[str] = set()
    count_sep = methodcaller("count", sep) if sep is not None else None
    sep_name = "whitespace" if sep is None else repr(sep)
    with _open(p, encoding) as f:
        for base, lines in _line_chunks(f):
            start = 0
            if n_fields < 0:  # the header, or the first data line, fixes the number of fields
                while start < len(lines) and _is_skipped(lines[start], comment):
                    start += 1
                if start == len(lines):
                    continue
                first = _split(lines[start], sep)
                if header:
                    names = [s.strip() for s in first]
                    if header_names is not None:
                        try:
                            names = header_names(names)
                        except ValueError as e:
                            raise ValueError(f"{fn}: {p}, line {base + start + 1}: {e}") from None
                    start += 1
                n_fields = len(first)
                wanted = [(pos, _AS_STR.get(kind, kind) if label in forced_str else kind, label)
                          for pos, kind, label in select(names, n_fields)]
                parts = {label: [] for _, _, label in wanted}
            rows = lines[start:] if start else lines
            if not rows:
                continue
            toks: list[list[str]] = []
            if sep is not None:
                counts = np.fromiter(map(count_sep, rows), dtype=np.int64, count=len(rows)) + 1  # type: ignore

                bad = counts != n_fields
                if n_fields == 1:
                    bad |= np.fromiter((not r.strip() for r in rows), dtype=bool, count=len(rows))
            else:
                toks = [r.split() for r in rows]
                counts = np.fromiter(map(len, toks), dtype=np.int64, count=len(rows))
                bad = counts != n_fields
            if comment is not None:
                bad |= np.fromiter(map(methodcaller("startswith", comment), rows), dtype=bool, count=len(rows))
            line_of = None  # row -> index in `rows`, when blank or comment rows were dropped
            if bad.any():
                for j in np.flatnonzero(bad):
                    if not _is_skipped(rows[j], comment):
                        raise ValueError(f"{fn}: {p}, line {base + start + j + 1}: expected {n_fields} fields "
                                         f"separated by {sep_name}, got {int(counts[j])}")
                line_of = np.flatnonzero(~bad)
                rows = [rows[j] for j in line_of]
                if sep is None:
                    toks = [toks[j] for j in line_of]
                if not rows:
                    continue
            flat = sep.join(rows).split(sep) if sep is not None else list(chain.from_iterable(toks))
            for pos, kind, label in wanted:
                col = flat[pos::n_fields]
                try:
                    arr = _convert(kind, col, label)
                    if kind in _AS_STR:
                        if arr.dtype.kind == "U":
                            if any(q.dtype.kind != "U" for q in parts[label]):
                                raise _Restart(label)
                            str_seen.add(label)
                        elif label in str_seen:
                            arr = _convert(_AS_STR[kind], col, label)
                except _ColumnError as e:
                    row = int(line_of[e.row]) if line_of is not None else e.row
                    raise ValueError(f"{fn}: {p}, line {base + start + row + 1}: {e.msg}") from None
                parts[label].append(arr)
    if n_fields < 0 and header:
        raise ValueError(f"{fn}: {p} is empty, expected a header line")
    return names, {label: _merge(kind, parts[label]) for _, kind, label in wanted}


def _resolve(col: Any, names: list[str] | None, n_fields: int, fn: str, arg: str, p: Path) -> int:
    if isinstance(col, bool) or not isinstance(col, (int, str, np.integer)):
        raise TypeError(f"{fn}: {arg} must be a column name or position, got {col!r}")
    if isinstance(col, str):
        if names is None:
            raise ValueError(f"{fn}: {arg}={col!r} names a column, but {p} is read without a header; "
                             f"pass a position or names=")
        if col not in names:
            raise ValueError(f"{fn}: column {col!r} ({arg}) not found in {p}; columns present: {names}")
        return names.index(col)
    if not -n_fields <= int(col) < n_fields:
        present = f"columns present: {names}" if names is not None else f"its lines have {n_fields} fields"
        raise ValueError(f"{fn}: column position {int(col)} ({arg}) out of range in {p}; {present}")
    return int(col) % n_fields


def _check_choice(fn: str, arg: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{fn}: {arg} must be one of {tuple(choices)}, got {value!r}")


_EMPTY = {"user id": np.zeros(0, np.int64), "item id": np.zeros(0, np.int64)}


def _interactions(cols: dict[str, np.ndarray], id_order: str) -> Interactions:
    cols = {**_EMPTY, **cols}
    return Interactions.from_ids(cols["user id"], cols["item id"], ratings=cols.get("rating"),
                                 timestamps=cols.get("timestamp"), order=id_order)


# -- CSV ----------------------------------------------------------------------------------------
def load_csv(
    path: PathLike,
    *,
    sep: str | None = ",",
    user_col: int | str = "user_id",
    item_col: int | str = "item_id",
    rating_col: int | str | None = None,
    timestamp_col: int | str | None = None,
    header: bool = True,
    names: Sequence[str] | None = None,
    comment: str | None = None,
    id_type: str = "auto",
    id_order: str = "first",
    encoding: str = "utf-8",
) -> Interactions:
    """Interactions from a delimited text file, one event per line.

    Parameters
    ----------
    path : the file (``.gz`` is decompressed).
    sep : the delimiter, any string (``","``, ``"\\t"``, ``"::"`` for MovieLens ``.dat`` files),
        or ``None`` for runs of whitespace.
    user_col, item_col, rating_col, timestamp_col : column names (from the header or ``names``)
        or 0-based positions (negative ones count from the end); rating and timestamp are optional.
    header : the first line (after blank and comment lines) names the columns.
    names : column names for a file without a header; with ``header=True`` they replace the
        file's own header line.
    comment : lines starting with this string are skipped; blank lines always are.
    id_type : ``"auto"`` (integer original ids when every id of the column parses as an integer,
        else strings), ``"int"`` or ``"str"``.
    id_order : ``"first"`` appearance or ``"sorted"``: how original ids are numbered
        (``Interactions.from_ids``).

    Ratings become float32; timestamps int64 when every one is an integer, else float64.

    Example
    -------
    >>> import os, tempfile
    >>> f = os.path.join(tempfile.mkdtemp(), "ratings.dat")
    >>> _ = open(f, "w").write("1::10::5::978300760\\n2::10::3::978302109\\n")
    >>> x = load_csv(f, sep="::", header=False, user_col=0, item_col=1, rating_col=2, timestamp_col=3)
    >>> len(x), x.shape, x.ratings.tolist(), x.original_users([0, 1]).tolist()
    (2, (2, 1), [5.0, 3.0], [1, 2])
    """
    fn = "load_csv"
    p = _check_file(path, fn)
    _check_choice(fn, "id_type", id_type, _ID_TYPES)
    _check_choice(fn, "id_order", id_order, ("first", "sorted"))
    if sep is not None and (not isinstance(sep, str) or sep == "" or "\n" in sep or "\r" in sep):
        raise ValueError(f"{fn}: sep must be a non-empty string without newlines, or None, got {sep!r}")
    if comment is not None and (not isinstance(comment, str) or comment == ""):
        raise ValueError(f"{fn}: comment must be a non-empty string or None, got {comment!r}")
    for arg, col in (("user_col", user_col), ("item_col", item_col)):
        if col is None:
            raise ValueError(f"{fn}: {arg} is required")
    given = list(names) if names is not None else None
    id_kind = {"auto": "id", "int": "int", "str": "id_str"}[id_type]
    specs = (("user_col", user_col, id_kind, "user id"), ("item_col", item_col, id_kind, "item id"),
             ("rating_col", rating_col, "float", "rating"), ("timestamp_col", timestamp_col, "num", "timestamp"))

    def select(found: list[str] | None, n_fields: int) -> _Selection:
        cols = given if given is not None else found
        if given is not None and len(given) != n_fields:
            raise ValueError(f"{fn}: names has {len(given)} entries but the lines of {p} have {n_fields} fields")
        out: _Selection = []
        used: dict[int, str] = {}
        for arg, col, kind, label in specs:
            if col is None:
                continue
            pos = _resolve(col, cols, n_fields, fn, arg, p)
            if pos in used:
                raise ValueError(f"{fn}: {arg} and {used[pos]} both name column {pos}")
            used[pos] = arg
            out.append((pos, kind, label))
        return out

    _, cols = _read_columns(p, fn, sep=sep, header=header, comment=comment, encoding=encoding, select=select)
    return _interactions(cols, id_order)


# -- RecBole atomic files -----------------------------------------------------------------------
def _atomic_header(types: dict[str, str]) -> Callable[[list[str]], list[str]]:
    def parse(fields: list[str]) -> list[str]:
        names = []
        for field in fields:
            name, colon, typ = field.rpartition(":")
            if not colon or not name:
                raise ValueError(f"header field {field!r} is not of the form name:type")
            if typ not in _ATOMIC_TYPES:
                raise ValueError(f"header field {field!r} has unknown type {typ!r}; expected one of {_ATOMIC_TYPES}")
            if name in types:
                raise ValueError(f"header names column {name!r} twice")
            types[name] = typ
            names.append(name)
        return names

    return parse


def load_atomic(
    path: PathLike,
    *,
    user_field: str = "user_id",
    item_field: str = "item_id",
    rating_field: str | None = "rating",
    timestamp_field: str | None = "timestamp",
    id_type: str = "auto",
    id_order: str = "first",
    encoding: str = "utf-8",
) -> Interactions:
    """Interactions from a RecBole atomic ``.inter`` file.

    The file is tab-separated; its first line types each column as ``name:type`` with type
    ``token``, ``token_seq``, ``float`` or ``float_seq``, e.g.
    ``user_id:token  item_id:token  rating:float  timestamp:float``. The user and item fields must
    be tokens; ratings and timestamps are read when those fields are present (a field named
    explicitly, other than the defaults, must be present). Other columns are checked for shape
    and ignored: read side features with ``load_atomic_features``. ``id_type``/``id_order`` as
    in ``load_csv``: with ``"auto"``, tokens that are all integers become integer original ids.

    Example
    -------
    >>> import os, tempfile
    >>> f = os.path.join(tempfile.mkdtemp(), "x.inter")
    >>> _ = open(f, "w").write("user_id:token\\titem_id:token\\trating:float\\n7\\ta\\t4\\n9\\tb\\t5\\n")
    >>> x = load_atomic(f)
    >>> x.shape, x.item_ids.tolist(), x.timestamps is None
    ((2, 2), ['a', 'b'], True)
    """
    fn = "load_atomic"
    p = _check_file(path, fn)
    _check_choice(fn, "id_type", id_type, _ID_TYPES)
    _check_choice(fn, "id_order", id_order, ("first", "sorted"))
    types: dict[str, str] = {}
    id_kind = {"auto": "id", "int": "int", "str": "id_str"}[id_type]

    def select(names: list[str] | None, n_fields: int) -> _Selection:
        assert names is not None
        out: _Selection = []
        for arg, field, kind, label, want, default in (
            ("user_field", user_field, id_kind, "user id", "token", None),
            ("item_field", item_field, id_kind, "item id", "token", None),
            ("rating_field", rating_field, "float", "rating", "float", "rating"),
            ("timestamp_field", timestamp_field, "num", "timestamp", "float", "timestamp"),
        ):
            if field is None or (field == default and field not in names):
                continue
            if field not in names:
                raise ValueError(f"{fn}: column {field!r} ({arg}) not found in {p}; columns present: "
                                 f"{[f'{n}:{types[n]}' for n in names]}")
            if types[field] != want:
                raise ValueError(f"{fn}: column {field!r} of {p} has type {types[field]}, expected {want}")
            out.append((names.index(field), kind, label))
        return out

    _, cols = _read_columns(p, fn, sep="\t", header=True, comment=None, encoding=encoding, select=select,
                            header_names=_atomic_header(types))
    return _interactions(cols, id_order)


def load_atomic_features(
    path: PathLike,
    *,
    token_type: str = "auto",
    encoding: str = "utf-8",
) -> dict[str, np.ndarray]:
    """The columns of a RecBole atomic side-feature file (``.item``, ``.user``) as numpy arrays.

    Returns ``{name: array}`` in file order: ``token`` columns as int64 when every value parses as
    an integer and ``token_type="auto"`` (so ids match ``load_atomic``), else as str arrays;
    ``float`` as float64; ``token_seq`` as an object array of lists of str (the field split on
    spaces; an empty field is an empty list); ``float_seq`` as an object array of float64 arrays.
    Map a feature's id column to contiguous ids with ``Interactions.item_index``.

    Example
    -------
    >>> import os, tempfile
    >>> f = os.path.join(tempfile.mkdtemp(), "x.item")
    >>> _ = open(f, "w").write("item_id:token\\tgenre:token_seq\\n1\\tAction Comedy\\n2\\t\\n")
    >>> feats = load_atomic_features(f)
    >>> feats["item_id"].tolist(), feats["genre"].tolist()
    ([1, 2], [['Action', 'Comedy'], []])
    """
    fn = "load_atomic_features"
    p = _check_file(path, fn)
    _check_choice(fn, "token_type", token_type, ("auto", "str"))
    types: dict[str, str] = {}
    kinds = {"token": "token" if token_type == "auto" else "str", "float": "float",
             "token_seq": "token_seq", "float_seq": "float_seq"}

    def select(names: list[str] | None, n_fields: int) -> _Selection:
        assert names is not None
        return [(pos, kinds[types[name]], name) for pos, name in enumerate(names)]

    names, cols = _read_columns(p, fn, sep="\t", header=True, comment=None, encoding=encoding, select=select,
                                header_names=_atomic_header(types))
    return {name: cols[name] for name in names or []}


def _numeric(col: np.ndarray) -> np.ndarray:
    """float64 values of a float or token column; tokens that are not numbers (RecBole writes a
    missing ml-100k year "unkonwn") become NaN."""
    if col.dtype.kind in "fiu":
        return col.astype(np.float64)
    out = np.full(col.size, np.nan)
    for k, v in enumerate(col):
        try:
            out[k] = float(v)
        except (TypeError, ValueError):
            pass
    return out


def atomic_feature_matrix(
    source: PathLike | dict[str, np.ndarray],
    ids: Sequence[Any] | np.ndarray,
    *,
    id_field: str = "item_id",
    multi_hot: Sequence[str] = (),
    numeric: Sequence[str] = (),
    encoding: str = "utf-8",
) -> np.ndarray:
    """A dense float32 side-feature matrix, one row per id, from a RecBole atomic feature file.

    ``source`` is a ``.item``/``.user`` file or what ``load_atomic_features`` returned for one.
    Row ``r`` describes ``ids[r]`` (original ids, e.g. ``Interactions.item_ids``), matched against
    the ``id_field`` column. The columns are, in order: for each ``multi_hot`` field (``token`` or
    ``token_seq``), one 0/1 column per value of its sorted vocabulary (the whole file's); then one
    column per ``numeric`` field (``float``, or a ``token`` holding numbers), standardized to mean 0
    and standard deviation 1 over the rows, a missing or non-numeric value taking the mean. An id
    absent from the file gets no multi-hot value and the means.

    Example
    -------
    >>> import os, tempfile
    >>> f = os.path.join(tempfile.mkdtemp(), "x.item")
    >>> _ = open(f, "w").write("item_id:token\\tyear:token\\tgenre:token_seq\\n"
    ...                        "1\\t1990\\tAction Comedy\\n2\\tunknown\\tDrama\\n3\\t2000\\tComedy\\n")
    >>> atomic_feature_matrix(f, [3, 1, 2], multi_hot=["genre"], numeric=["year"]).tolist()
    [[0.0, 1.0, 0.0, 1.2247449159622192], [1.0, 1.0, 0.0, -1.2247449159622192], [0.0, 0.0, 1.0, 0.0]]
    """
    fn = "atomic_feature_matrix"
    cols = source if isinstance(source, dict) else load_atomic_features(source, encoding=encoding)
    for arg, fields in (("id_field", [id_field]), ("multi_hot", list(multi_hot)), ("numeric", list(numeric))):
        for f in fields:
            if f not in cols:
                raise ValueError(f"{fn}: {arg} names column {f!r}, not among {list(cols)}")
    row_of = {k: r for r, k in enumerate(cols[id_field].tolist())}
    ids_list = np.asarray(ids).tolist()
    at = np.array([row_of.get(i, -1) for i in ids_list], dtype=np.int64)
    found = at >= 0
    blocks: list[np.ndarray] = []
    for f in multi_hot:
        col = cols[f]
        values = [v if isinstance(v, list) else [str(v)] for v in col.tolist()]  # a token is a one-value seq
        vocab = sorted({v for vs in values for v in vs})
        index = {v: j for j, v in enumerate(vocab)}
        block = np.zeros((len(ids_list), len(vocab)), dtype=np.float32)
        for r in np.flatnonzero(found):
            block[r, [index[v] for v in values[at[r]]]] = 1.0
        blocks.append(block)
    for f in numeric:
        col = cols[f]
        if col.dtype == object:
            raise ValueError(f"{fn}: numeric field {f!r} is a sequence column; expected float or token")
        x = np.full(len(ids_list), np.nan)
        x[found] = _numeric(col)[at[found]]
        known = ~np.isnan(x)
        x = np.where(known, x, x[known].mean() if known.any() else 0.0)
        sd = x.std()
        blocks.append(((x - x.mean()) / (sd if sd > 0 else 1.0)).astype(np.float32)[:, None])
    if not blocks:
        return np.zeros((len(ids_list), 0), dtype=np.float32)
    return np.concatenate(blocks, axis=1)


# -- adjacency lists and split folders -----------------------------------------------------------
def _read_adjacency(p: Path, fn: str, encoding: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(users, items, every user that has a line) of a ``user item item ...`` file."""
    users, items, line_users = [], [], []
    with _open(p, encoding) as f:
        for base, lines in _line_chunks(f):
            toks = [line.split() for line in lines]
            counts = np.fromiter(map(len, toks), dtype=np.int64, count=len(toks))
            flat = list(chain.from_iterable(toks))
            try:
                vals = np.array(flat, dtype=np.int64)
                neg = np.flatnonzero(vals < 0)
                bad = int(neg[0]) if neg.size else -1
            except (ValueError, OverflowError):
                vals = np.zeros(0, np.int64)
                bad = _first_bad(flat, lambda s: np.int64(int(s)))
            if bad >= 0:
                line = int(np.searchsorted(np.cumsum(counts), bad, side="right"))
                raise ValueError(f"{fn}: {p}, line {base + line + 1}: {flat[bad]!r} is not a non-negative "
                                 f"integer id")
            c = counts[counts > 0]
            starts = np.cumsum(c) - c
            is_item = np.ones(vals.size, dtype=bool)
            is_item[starts] = False
            line_users.append(vals[starts])
            users.append(np.repeat(vals[starts], c - 1))
            items.append(vals[is_item])
    cat = lambda parts: np.concatenate(parts) if parts else np.zeros(0, np.int64)  # noqa: E731
    return cat(users), cat(items), cat(line_users)


def _size(fn: str, arg: str, given: int | None, needed: int, what: str, where: str) -> int:
    if given is None:
        return needed
    if isinstance(given, bool) or not isinstance(given, (int, np.integer)) or given < 0:
        raise ValueError(f"{fn}: {arg} must be a non-negative int or None, got {given!r}")
    if given < needed:
        raise ValueError(f"{fn}: {arg}={given} but {where} holds {what} id {needed - 1}")
    return int(given)


def load_adjacency_list(
    path: PathLike,
    *,
    n_users: int | None = None,
    n_items: int | None = None,
    encoding: str = "utf-8",
) -> Interactions:
    """Interactions from an adjacency-list file, one line per user: ``user item item ...``.

    This is how the LightGCN/NGCF datasets (Gowalla, Yelp2018, Amazon-book) ship. Ids are
    whitespace-separated non-negative integers, used as they are (no id maps); a line with a user
    and no items is allowed (the user still counts towards ``n_users``), blank lines are skipped,
    and a user may have several lines. ``n_users``/``n_items`` default to the largest id + 1.

    Example
    -------
    >>> import os, tempfile
    >>> f = os.path.join(tempfile.mkdtemp(), "train.txt")
    >>> _ = open(f, "w").write("0 1 2\\n1\\n2 0\\n")
    >>> x = load_adjacency_list(f, n_items=5)
    >>> x.users.tolist(), x.items.tolist(), x.shape
    ([0, 0, 2], [1, 2, 0], (3, 5))
    """
    fn = "load_adjacency_list"
    p = _check_file(path, fn)
    users, items, line_users = _read_adjacency(p, fn, encoding)
    nu = _size(fn, "n_users", n_users, int(line_users.max()) + 1 if line_users.size else 0, "user", str(p))
    ni = _size(fn, "n_items", n_items, int(items.max()) + 1 if items.size else 0, "item", str(p))
    return Interactions(users, items, n_users=nu, n_items=ni)


def load_split_dataset(
    folder: PathLike,
    *,
    files: Sequence[str] = ("train.txt", "valid.txt", "test.txt"),
    encoding: str = "utf-8",
) -> tuple[Interactions, Interactions | None, Interactions]:
    """``(train, valid, test)`` from a folder of adjacency-list files (``load_adjacency_list``).

    The three share one id space: ``n_users`` and ``n_items`` are the largest id over all files
    plus one (an item seen only in valid or test still has its id). ``files`` names the train,
    validation and test files; the validation file may be absent (``valid`` is then ``None``),
    the others may not.

    Example
    -------
    >>> import os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> for name, text in [("train.txt", "0 1\\n1 0\\n"), ("valid.txt", "0 2\\n"), ("test.txt", "1 3\\n")]:
    ...     _ = open(os.path.join(d, name), "w").write(text)
    >>> train, valid, test = load_split_dataset(d)
    >>> train.shape == valid.shape == test.shape == (2, 4)
    True
    """
    fn = "load_split_dataset"
    if not isinstance(folder, (str, os.PathLike)):
        raise TypeError(f"{fn}: folder must be a str or os.PathLike, got {type(folder).__name__}")
    d = Path(folder)
    if not d.exists():
        raise FileNotFoundError(errno.ENOENT, f"{fn}: folder not found", str(d))
    if not d.is_dir():
        raise NotADirectoryError(f"{fn}: {d} is not a folder")
    files = list(files)
    if len(files) != 3 or not all(isinstance(f, str) for f in files):
        raise ValueError(f"{fn}: files must name the train, valid and test files, got {files!r}")
    raw: list[tuple[np.ndarray, np.ndarray, np.ndarray] | None] = []
    for k, name in enumerate(files):
        p = d / name
        if k == 1 and not p.exists():
            raw.append(None)
            continue
        raw.append(_read_adjacency(_check_file(p, fn), fn, encoding))
    present = [r for r in raw if r is not None]
    n_users = max((int(r[2].max()) + 1 for r in present if r[2].size), default=0)
    n_items = max((int(r[1].max()) + 1 for r in present if r[1].size), default=0)
    out = [None if r is None else Interactions(r[0], r[1], n_users=n_users, n_items=n_items) for r in raw]
    return out[0], out[1], out[2]  # type: ignore[return-value]


# -- in-memory sources ---------------------------------------------------------------------------
def from_pandas(
    df: Any,
    user_col: Any = "user_id",
    item_col: Any = "item_id",
    rating_col: Any = None,
    timestamp_col: Any = None,
    *,
    id_order: str = "first",
) -> Interactions:
    """Interactions from a pandas DataFrame (pandas itself is optional for recfast).

    Ids are mapped as in ``Interactions.from_ids`` (any hashable values: ints, strings,
    categoricals). Missing ids raise ``ValueError``. Timestamps may be numeric or datetime64
    (timezone-aware ones are converted to UTC).

    Example
    -------
    >>> import pandas as pd
    >>> df = pd.DataFrame({"user": ["u1", "u2", "u1"], "item": [5, 5, 7], "stars": [4.0, 3.0, 5.0]})
    >>> x = from_pandas(df, "user", "item", rating_col="stars")
    >>> x.users.tolist(), x.items.tolist(), x.item_ids.tolist()
    ([0, 1, 0], [0, 0, 1], [5, 7])
    """
    fn = "from_pandas"
    if not (hasattr(df, "columns") and hasattr(df, "__getitem__")):
        raise TypeError(f"{fn}: expected a pandas DataFrame, got {type(df).__name__}")
    _check_choice(fn, "id_order", id_order, ("first", "sorted"))
    present = list(df.columns)
    series: dict[str, Any] = {}
    for arg, col in (("user_col", user_col), ("item_col", item_col), ("rating_col", rating_col),
                     ("timestamp_col", timestamp_col)):
        if col is None:
            if arg in ("user_col", "item_col"):
                raise ValueError(f"{fn}: {arg} is required")
            continue
        if col not in present:
            raise ValueError(f"{fn}: column {col!r} ({arg}) not found; columns present: {present}")
        s = df[col]
        if getattr(s, "ndim", 1) != 1:
            raise ValueError(f"{fn}: column {col!r} ({arg}) is not unique in the frame")
        if arg in ("user_col", "item_col") and bool(s.isna().any()):
            raise ValueError(f"{fn}: column {col!r} ({arg}) has {int(s.isna().sum())} missing values")
        if arg == "timestamp_col" and getattr(getattr(s, "dtype", None), "tz", None) is not None:
            s = s.dt.tz_convert("UTC").dt.tz_localize(None)
        series[arg] = s.to_numpy()
    return Interactions.from_ids(series["user_col"], series["item_col"], ratings=series.get("rating_col"),
                                 timestamps=series.get("timestamp_col"), order=id_order)


def from_scipy(matrix: Any, *, values: str | None = "ratings") -> Interactions:
    """Interactions from a users x items sparse matrix (scipy, or a ``recfast.CSR``).

    Every stored entry becomes an event, in row-major order (explicit zeros too: call
    ``eliminate_zeros()`` first to drop them; duplicate COO entries are summed, as scipy does).
    ``values="ratings"`` keeps the stored values as ratings; ``None`` drops them. No id maps.

    Example
    -------
    >>> import scipy.sparse as sp
    >>> x = from_scipy(sp.csr_matrix([[0, 2.0], [1.0, 0]]))
    >>> x.users.tolist(), x.items.tolist(), x.ratings.tolist(), x.shape
    ([0, 1], [1, 0], [2.0, 1.0], (2, 2))
    """
    fn = "from_scipy"
    if values not in ("ratings", None):
        raise ValueError(f"{fn}: values must be 'ratings' or None, got {values!r}")
    if isinstance(matrix, CSR):
        cpu = matrix.to("cpu")
        indptr, indices = cpu.indptr.numpy(), cpu.indices.numpy().astype(np.int64)
        data = None if cpu.values is None else cpu.values.numpy()
        shape = matrix.shape
    elif sp.issparse(matrix):
        if matrix.ndim != 2:
            raise ValueError(f"{fn}: expected a 2-D matrix, got shape {matrix.shape}")
        m = sp.csr_matrix(matrix, copy=True)
        m.sum_duplicates()
        m.sort_indices()
        indptr, indices, data, shape = m.indptr.astype(np.int64), m.indices.astype(np.int64), m.data, m.shape
        if data.dtype.kind not in "biuf":
            raise TypeError(f"{fn}: matrix values must be real numbers, got dtype {data.dtype}")
    else:
        raise TypeError(f"{fn}: expected a scipy sparse matrix or recfast.CSR, got {type(matrix).__name__}")
    users = np.repeat(np.arange(shape[0], dtype=np.int64), np.diff(indptr))
    ratings = data if values == "ratings" else None
    return Interactions(users, indices, n_users=shape[0], n_items=shape[1], ratings=ratings)
