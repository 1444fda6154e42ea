"""Negatives files: the text format the broker persists and ``ance mine`` writes.

A negatives file (``RUN_DIR/negatives/step-N.tsv``, ``ance mine``) is text::

    # ance-negatives v1 {"version": 200, "keep": 20, ...}
    <qid>\t<did>,<did>,...

one line per query, string ids, documents in the order they were selected. A
query with no negatives has an empty list after the tab.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import IO, Iterable, Mapping, Sequence

import numpy as np

from ance.negatives.blocks import _unique
from ance.run.errors import AnceError, DataError
from ance.run.fsio import atomic_write_lines

MAGIC = "# ance-negatives v1 "
#: the longest line read (characters): a query and its negatives take kilobytes; a file of one endless line (a
#: device, a binary) is refused at this bound instead of being read into memory whole
MAX_LINE_CHARS = 1 << 24


def read_lines(fh: IO[str], path: str | Path) -> Iterable[tuple[int, str]]:
    """``(lineno, line)`` of an open text file, each line at most :data:`MAX_LINE_CHARS` long, else
    :class:`DataError` naming the file and line."""
    lineno = 0
    while True:
        raw = fh.readline(MAX_LINE_CHARS + 1)
        if not raw:
            return
        lineno += 1
        if len(raw) > MAX_LINE_CHARS:
            raise DataError(path, lineno, f"a line longer than {MAX_LINE_CHARS} characters: not a negatives file "
                                          "(give the file `ance mine` wrote)")
        yield lineno, raw


def header_line(header: Mapping) -> str:
    """The first line of a negatives file, newline included (for writers that append)."""
    if not isinstance(header, Mapping):
        raise ValueError(f"header must be a dict, got {type(header).__name__}")
    try:
        return MAGIC + json.dumps(dict(header)) + "\n"
    except TypeError as exc:
        raise ValueError(f"header must be JSON-serializable: {exc}") from None


def _check_id(kind: str, value: str, seps: str) -> None:
    if not value or any(c in value for c in seps):
        raise ValueError(
            f"{kind} {value!r} cannot be written to a negatives file: ids must be non-empty and contain "
            "no tab, comma or newline"
        )


def _lines(query_ids: Sequence[str], q_idx: Iterable[int], neg: np.ndarray, doc_ids: Sequence[str]) -> Iterable[str]:
    for row, q in zip(neg.tolist(), q_idx):
        qid = query_ids[q]
        _check_id("query id", qid, "\t\n\r")
        yield f"{qid}\t{','.join(doc_ids[d] for d in row if d >= 0)}\n"


def _check_all(kind: str, ids: Sequence[str], seps: str) -> None:
    """:func:`_check_id` of every id, in one scan of them joined where all are fine."""
    joined = "\x00".join(ids)
    if any(c in joined for c in seps) or (len(ids) and min(map(len, ids)) == 0):
        for value in ids:
            _check_id(kind, value, seps)


def _check_shape(neg: np.ndarray, rows: int, n_docs: int) -> np.ndarray:
    neg = np.asarray(neg)
    if neg.ndim != 2 or neg.shape[0] != rows or not np.issubdtype(neg.dtype, np.integer):
        raise ValueError(f"neg must be an integer array with {rows} rows, got {neg.dtype} {neg.shape}")
    if neg.size and (neg.max() >= n_docs or neg.min() < -1):
        raise ValueError(f"neg holds doc indices outside [-1, {n_docs}): they must index doc_ids")
    return neg


def _check_neg(neg: np.ndarray, rows: int, doc_ids: Sequence[str]) -> np.ndarray:
    neg = _check_shape(neg, rows, len(doc_ids))
    _check_all("doc id", [doc_ids[d] for d in _unique(neg[neg >= 0]).tolist()], "\t\n\r,")
    return neg


class IdTable:
    """The query and doc ids of a run's negatives files, checked once (non-empty; no tab, newline, or comma in
    a doc id) so that each chunk the broker appends (:meth:`append`) is only formatted: the doc ids are held as
    a numpy object array and a chunk's rows are looked up in one fancy index. Raises :class:`AnceError` naming
    the first id that cannot be written."""

    def __init__(self, query_ids: Sequence[str], doc_ids: Sequence[str]):
        try:
            _check_all("query id", query_ids, "\t\n\r")
            _check_all("doc id", doc_ids, "\t\n\r,")
        except ValueError as exc:
            raise AnceError(f"{exc}; rename it in the data") from None
        self.query_ids = query_ids
        self.docs = np.empty(len(doc_ids), dtype=object)
        self.docs[:] = doc_ids

    def lines(self, q_idx: Sequence[int], neg: np.ndarray) -> list[str]:
        """The file lines of queries ``q_idx`` with the doc indices ``neg`` (``-1``: none)."""
        q_idx = np.asarray(q_idx).ravel()
        neg = _check_shape(neg, len(q_idx), len(self.docs))
        if q_idx.size and (q_idx.min() < 0 or q_idx.max() >= len(self.query_ids)):
            raise ValueError(f"q_idx holds indices outside [0, {len(self.query_ids)}): they must index query_ids")
        rows = self.docs[np.maximum(neg, 0)].tolist()
        for i in np.flatnonzero((neg < 0).any(axis=1)).tolist():  # short rows: -1 padded
            rows[i] = [self.docs[d] for d in neg[i].tolist() if d >= 0]
        return [f"{self.query_ids[q]}\t{','.join(row)}\n" for q, row in zip(q_idx.tolist(), rows)]

    def append(self, fh: IO[str], q_idx: Sequence[int], neg: np.ndarray) -> None:
        """:func:`append_negatives` with these ids: the lines appended to ``fh``, then fsynced."""
        fh.writelines(self.lines(q_idx, neg))
        fh.flush()
        os.fsync(fh.fileno())


def write_negatives(
    path: str | Path, query_ids: Sequence[str], neg: np.ndarray, doc_ids: Sequence[str], header: dict
) -> None:
    """Write a complete negatives file atomically (temp file in the same dir, fsync, rename).

    Row ``i`` of ``neg`` (doc indices, ``-1`` pads omitted) belongs to
    ``query_ids[i]``; every query gets a line, possibly with no documents.
    """
    path = Path(path)
    neg = _check_neg(neg, len(query_ids), doc_ids)
    first = header_line(header)
    atomic_write_lines(path, itertools.chain([first], _lines(query_ids, range(len(query_ids)), neg, doc_ids)))


def append_negatives(
    fh: IO[str], query_ids: Sequence[str], q_idx: Sequence[int], neg: np.ndarray, doc_ids: Sequence[str]
) -> None:
    """Append the lines of queries ``q_idx`` (indices into ``query_ids``) to an open file, then fsync.

    Used for ``step-N.partial.tsv``: write :func:`header_line` first, append a
    chunk at a time, rename when complete.
    """
    q_idx = np.asarray(q_idx).ravel()
    neg = _check_neg(neg, len(q_idx), doc_ids)
    if q_idx.size and (q_idx.min() < 0 or q_idx.max() >= len(query_ids)):
        raise ValueError(f"q_idx holds indices outside [0, {len(query_ids)}): they must index query_ids")
    fh.writelines(_lines(query_ids, q_idx.tolist(), neg, doc_ids))
    fh.flush()
    os.fsync(fh.fileno())


def read_negatives(
    path: str | Path,
    query_index: Mapping[str, int],
    doc_index: Mapping[str, int],
    keep: int | None = None,
) -> tuple[dict, np.ndarray, np.ndarray]:
    """Read a negatives file.

    Returns ``(header, q_idx int32 [m], neg int32 [m, keep])`` in file order,
    ``-1`` padded; ``keep=None`` takes the longest line's length, a given
    ``keep`` keeps the first ``keep`` documents of each line. Raises
    :class:`DataError` (``file:line: reason``) for a missing or garbled header,
    a line without a tab, an unknown query or doc id, or a query listed twice.
    """
    header, q_idx, neg, _ = read_negatives_lines(path, query_index, doc_index, keep)
    return header, q_idx, neg


def read_negatives_lines(
    path: str | Path,
    query_index: Mapping[str, int],
    doc_index: Mapping[str, int],
    keep: int | None = None,
) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`read_negatives`, and each row's line number in the file (int64 [m]), so a caller can
    name the line of a row it does not accept (e.g. a query listed with no document)."""
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, (int, np.integer)) or keep < 1):
        raise ValueError(f"keep must be a positive integer or None, got {keep!r}")
    path = Path(path)
    q_list: list[int] = []
    rows: list[list[int]] = []
    line_list: list[int] = []
    seen: dict[int, int] = {}
    header: dict | None = None
    with open(path, encoding="utf-8", newline="") as fh:
        for lineno, raw in read_lines(fh, path):
            line = raw.rstrip("\r\n")
            if header is None:
                header = _parse_header(path, lineno, line)
                continue
            if not line.strip():
                continue
            qid, tab, rest = line.partition("\t")
            if not tab:
                raise DataError(path, lineno, "expected `qid<TAB>did,did,...`, found no tab")
            q = query_index.get(qid)
            if q is None:
                raise DataError(path, lineno, f"unknown query id {qid!r} (not in this dataset's queries)")
            if q in seen:
                raise DataError(path, lineno, f"query {qid!r} is listed twice (first on line {seen[q]})")
            seen[q] = lineno
            docs = []
            for did in rest.split(",") if rest else []:
                d = doc_index.get(did)
                if d is None:
                    what = "empty doc id (stray comma?)" if not did else f"unknown doc id {did!r} (not in the corpus)"
                    raise DataError(path, lineno, what)
                docs.append(d)
            q_list.append(q)
            rows.append(docs)
            line_list.append(lineno)
    if header is None:
        raise DataError(path, 1, f"empty file: expected the header `{MAGIC.strip()} {{...}}`")
    width = keep if keep is not None else max((len(r) for r in rows), default=0)
    neg = np.full((len(rows), width), -1, np.int32)
    for i, docs in enumerate(rows):
        docs = docs[:width]
        neg[i, : len(docs)] = docs
    return header, np.asarray(q_list, dtype=np.int32), neg, np.asarray(line_list, dtype=np.int64)


def _parse_header(path: Path, lineno: int, line: str) -> dict:
    if not line.startswith("# ance-negatives "):
        raise DataError(path, lineno, f"not a negatives file: expected the header `{MAGIC.strip()} {{...}}`")
    if not line.startswith(MAGIC):
        version = line.split()[2] if len(line.split()) > 2 else "?"
        raise DataError(path, lineno, f"negatives file format {version} is not supported; this ance reads v1")
    try:
        header = json.loads(line[len(MAGIC) :])
    except json.JSONDecodeError as exc:
        raise DataError(path, lineno, f"garbled header JSON: {exc.msg} at column {exc.colno + len(MAGIC)}") from None
    if not isinstance(header, dict):
        raise DataError(path, lineno, "header JSON must be an object")
    return header
