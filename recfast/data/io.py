"""Reading interactions: delimited files, RecBole atomic files, adjacency lists, pandas, scipy."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from .interactions import Interactions

__all__ = ["load_csv", "load_atomic", "load_atomic_features", "load_adjacency_list", "load_split_dataset",
           "from_pandas", "from_scipy"]

PathLike = str | os.PathLike


def _existing(path: PathLike) -> Path:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such file: {p}")
    return p


def _column(header: list[str], col: str | int | None, what: str, path: Path) -> int | None:
    if col is None:
        return None
    if isinstance(col, int):
        if not 0 <= col < len(header):
            raise ValueError(f"{path}: {what} column {col} out of range; the file has {len(header)} columns")
        return col
    if col not in header:
        raise ValueError(f"{path}: no {what} column {col!r}; columns are {header}")
    return header.index(col)


def load_csv(
    path: PathLike,
    *,
    sep: str = ",",
    user_col: str | int = "user_id",
    item_col: str | int = "item_id",
    rating_col: str | int | None = None,
    timestamp_col: str | int | None = None,
    header: bool = True,
) -> Interactions:
    """Read a delimited file of events; original ids (any strings) are mapped to contiguous ids.

    Columns are named (with ``header=True``) or given by position. Ratings and timestamps are
    parsed as numbers; a malformed line raises ValueError naming the file and the line.

    Example
    -------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.csv"
    >>> _ = p.write_text("user_id,item_id\\nu1,a\\nu2,b\\n")
    >>> load_csv(p).n_users
    2
    """
    p = _existing(path)
    with p.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter=sep))
    if header:
        if not rows:
            raise ValueError(f"{p}: empty file, expected a header line")
        head, rows, first_line = [c.strip() for c in rows[0]], rows[1:], 2
    else:
        head, first_line = [str(i) for i in range(len(rows[0]) if rows else 0)], 1
        user_col = int(user_col) if not isinstance(user_col, int) else user_col
    cols = {name: _column(head, c, name, p) for name, c in
            (("user", user_col), ("item", item_col), ("rating", rating_col), ("timestamp", timestamp_col))}
    width = max(c for c in cols.values() if c is not None) + 1
    users, items, ratings, stamps = [], [], [], []
    for n, row in enumerate(rows, start=first_line):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) < width:
            raise ValueError(f"{p}, line {n}: expected at least {width} fields, got {len(row)}")
        users.append(row[cols["user"]].strip())
        items.append(row[cols["item"]].strip())
        try:
            if cols["rating"] is not None:
                ratings.append(float(row[cols["rating"]]))
            if cols["timestamp"] is not None:
                stamps.append(float(row[cols["timestamp"]]))
        except ValueError as e:
            raise ValueError(f"{p}, line {n}: {e}") from None
    return Interactions.from_ids(_as_ids(users), _as_ids(items), ratings=ratings if cols["rating"] is not None else None,
                                 timestamps=stamps if cols["timestamp"] is not None else None)


def _as_ids(values: list[str]) -> np.ndarray:
    """Integers when every id is an integer (so numeric ids sort numerically), else strings."""
    arr = np.asarray(values)
    try:
        as_int = arr.astype(np.int64)
        if np.array_equal(as_int.astype(str), arr):
            return as_int
    except ValueError:
        pass
    return arr


def _atomic_header(p: Path, line: str) -> list[tuple[str, str]]:
    fields = []
    for cell in line.rstrip("\n").split("\t"):
        name, sep, typ = cell.partition(":")
        if not sep or typ not in ("token", "token_seq", "float", "float_seq"):
            raise ValueError(f"{p}, line 1: header field {cell!r} is not 'name:type' with a RecBole type "
                             f"(token, token_seq, float, float_seq)")
        fields.append((name, typ))
    return fields


def load_atomic(path: PathLike, *, user_col: str = "user_id", item_col: str = "item_id",
                rating_col: str | None = "rating", timestamp_col: str | None = "timestamp") -> Interactions:
    """Read a RecBole atomic ``.inter`` file (tab-separated, ``name:type`` header line).

    ``rating``/``timestamp`` are read when present (set them to None to ignore).
    """
    p = _existing(path)
    with p.open(encoding="utf-8") as f:
        first = f.readline()
        fields = _atomic_header(p, first)
        names = [n for n, _ in fields]
        for need in (user_col, item_col):
            if need not in names:
                raise ValueError(f"{p}: no column {need!r}; columns are {names}")
        ui, ii = names.index(user_col), names.index(item_col)
        ri = names.index(rating_col) if rating_col in names else None
        ti = names.index(timestamp_col) if timestamp_col in names else None
        users, items, ratings, stamps = [], [], [], []
        for n, line in enumerate(f, start=2):
            if not line.strip():
                continue
            cells = line.rstrip("\n").split("\t")
            if len(cells) != len(fields):
                raise ValueError(f"{p}, line {n}: expected {len(fields)} tab-separated fields, got {len(cells)}")
            users.append(cells[ui])
            items.append(cells[ii])
            try:
                if ri is not None:
                    ratings.append(float(cells[ri]))
                if ti is not None:
                    stamps.append(float(cells[ti]))
            except ValueError as e:
                raise ValueError(f"{p}, line {n}: {e}") from None
    return Interactions.from_ids(_as_ids(users), _as_ids(items), ratings=ratings if ri is not None else None,
                                 timestamps=stamps if ti is not None else None)


def load_atomic_features(path: PathLike) -> dict[str, Any]:
    """Read a RecBole ``.item``/``.user`` side-feature file into {column: values}.

    ``token`` columns give arrays of strings, ``float`` arrays of floats, ``token_seq`` lists of
    token lists (space-separated in the file), ``float_seq`` lists of float arrays.
    """
    p = _existing(path)
    with p.open(encoding="utf-8") as f:
        fields = _atomic_header(p, f.readline())
        cols: list[list[Any]] = [[] for _ in fields]
        for n, line in enumerate(f, start=2):
            if not line.strip():
                continue
            cells = line.rstrip("\n").split("\t")
            if len(cells) != len(fields):
                raise ValueError(f"{p}, line {n}: expected {len(fields)} tab-separated fields, got {len(cells)}")
            for c, (cell, (_, typ)) in enumerate(zip(cells, fields)):
                try:
                    if typ == "token":
                        cols[c].append(cell)
                    elif typ == "float":
                        cols[c].append(float(cell) if cell else np.nan)
                    elif typ == "token_seq":
                        cols[c].append(cell.split())
                    else:
                        cols[c].append(np.array([float(v) for v in cell.split()]))
                except ValueError as e:
                    raise ValueError(f"{p}, line {n}: {e}") from None
    out: dict[str, Any] = {}
    for (name, typ), values in zip(fields, cols):
        out[name] = np.asarray(values) if typ in ("token", "float") else values
    return out


def load_adjacency_list(path: PathLike, *, n_users: int | None = None, n_items: int | None = None) -> Interactions:
    """Read one line per user, ``user item item ...`` (0-based ids), as LightGCN/NGCF datasets ship.

    A line with a user and no items is allowed (a user with no events in this file).
    """
    p = _existing(path)
    users, items = [], []
    max_user = -1
    with p.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                continue
            try:
                ids = [int(v) for v in parts]
            except ValueError:
                raise ValueError(f"{p}, line {n}: expected integer ids, got {line.strip()[:60]!r}") from None
            if min(ids) < 0:
                raise ValueError(f"{p}, line {n}: negative id")
            max_user = max(max_user, ids[0])
            users.extend([ids[0]] * (len(ids) - 1))
            items.extend(ids[1:])
    u = np.asarray(users, dtype=np.int64)
    i = np.asarray(items, dtype=np.int64)
    nu = n_users if n_users is not None else max_user + 1
    ni = n_items if n_items is not None else (int(i.max()) + 1 if i.size else 0)
    return Interactions(u, i, n_users=nu, n_items=ni)


def load_split_dataset(folder: PathLike) -> tuple[Interactions, Interactions, Interactions]:
    """``train.txt``, ``valid.txt`` and ``test.txt`` adjacency lists of one folder, in one id space
    sized by the largest user and item id over the three files, plus one."""
    folder = Path(folder)
    parts = [load_adjacency_list(folder / f"{name}.txt") for name in ("train", "valid", "test")]
    nu = max(x.n_users for x in parts)
    ni = max(x.n_items for x in parts)
    return tuple(Interactions(x.users, x.items, n_users=nu, n_items=ni) for x in parts)  # type: ignore[return-value]


def from_pandas(df: Any, *, user_col: str = "user_id", item_col: str = "item_id", rating_col: str | None = None,
                timestamp_col: str | None = None) -> Interactions:
    """From a pandas DataFrame; original ids are mapped to contiguous ids."""
    for c in (user_col, item_col, rating_col, timestamp_col):
        if c is not None and c not in df.columns:
            raise ValueError(f"from_pandas: no column {c!r}; columns are {list(df.columns)}")
    return Interactions.from_ids(df[user_col].to_numpy(), df[item_col].to_numpy(),
                                 ratings=None if rating_col is None else df[rating_col].to_numpy(),
                                 timestamps=None if timestamp_col is None else df[timestamp_col].to_numpy())


def from_scipy(matrix: Any, *, ratings: bool = False) -> Interactions:
    """From a users x items scipy sparse matrix (stored values become ratings with ``ratings=True``)."""
    if not sp.issparse(matrix):
        raise TypeError(f"from_scipy: expected a scipy sparse matrix, got {type(matrix).__name__}")
    coo = sp.coo_matrix(matrix)
    return Interactions(coo.row.astype(np.int64), coo.col.astype(np.int64), n_users=coo.shape[0], n_items=coo.shape[1],
                        ratings=coo.data.astype(np.float32) if ratings else None)
