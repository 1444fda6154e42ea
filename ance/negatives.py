"""Hard negatives: selection from ranked lists, the overlap diagnostic, file I/O.

Selection follows ANCE: take the ranks ``[lo, hi)`` of the *original* ranking
(ANCE's "top 200"), drop every labelled positive of the query, then keep
``keep`` of what is left, sampled uniformly or the top ones, or weighted by
rank (``exp(-rank / rank_decay)``) or by the ranking model's score
(``exp(score / score_temperature)``). With ``denoise_margin`` the candidates
the ranking model scores above its score of the query's positive minus the
margin are dropped first (likely unlabelled positives, RocketQA's denoising
with the retriever itself as the guide).

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

from ._negselect import BLOCK_ROWS, Rule, _member, _pair_codes, _unique, select_block
from .config import parse_rank_window
from .errors import DataError
from .fsio import atomic_write_lines

MAGIC = "# ance-negatives v1 "
SAMPLING = ("uniform", "top", "rank", "score")


# --------------------------------------------------------------------------- selection


def select_negatives(
    ranked: np.ndarray,
    positives: Sequence[np.ndarray],
    *,
    rank_window: tuple[int, int] = (0, 200),
    keep: int = 20,
    sampling: str = "uniform",
    rng: np.random.Generator,
    scores: np.ndarray | None = None,
    rank_decay: float = 10.0,
    score_temperature: float = 0.05,
    denoise_margin: float | None = None,
) -> np.ndarray:
    """Choose hard negatives for each query from its ranked list.

    ``ranked``: int64 ``[nq, depth]`` global doc indices in rank order (``-1``
    pads). ``positives[q]``: the doc indices labelled relevant for query ``q``;
    none of them is ever returned. ``rank_window=(lo, hi)`` applies to the
    original ranks (0-based, ``hi`` exclusive, may exceed ``depth``); the
    positives inside it are then removed, so the window is not widened to make
    up for them. ``sampling="uniform"`` draws ``keep`` candidates without
    replacement (all of them when fewer), ``"top"`` keeps the best ranked
    ``keep``; ``"rank"`` and ``"score"`` draw ``keep`` without replacement
    with weights ``exp(-rank / rank_decay)`` (rank 0-based in the original
    list) or ``exp(score / score_temperature)`` (Gumbel top-k). ``scores``
    (float ``[nq, depth]``, aligned with ``ranked``) is needed for ``"score"``
    and for ``denoise_margin``: a candidate scored above ``s_pos - margin`` is
    dropped, where ``s_pos`` is the best score of a positive in the row (rows
    with no positive listed keep every candidate: nothing to compare with).
    A doc listed twice in a row counts once.

    Returns int32 ``[nq, keep]``, each row in rank order, ``-1`` padded.
    """
    ranked = np.asarray(ranked)
    if ranked.ndim != 2 or not np.issubdtype(ranked.dtype, np.integer):
        raise ValueError(f"ranked must be a 2-d integer array [queries, depth], got {ranked.dtype} {ranked.shape}")
    nq = ranked.shape[0]
    if len(positives) != nq:
        raise ValueError(f"positives has {len(positives)} entries but ranked has {nq} query rows: give one array per query")
    lo, hi = parse_rank_window(rank_window)
    if isinstance(keep, bool) or not isinstance(keep, (int, np.integer)) or keep < 1:
        raise ValueError(f"keep must be a positive integer, got {keep!r}")
    if sampling not in SAMPLING:
        raise ValueError(f"sampling must be one of {SAMPLING}, got {sampling!r}")
    if sampling != "top" and not isinstance(rng, np.random.Generator):
        raise ValueError(f"sampling={sampling!r} needs rng=np.random.default_rng(seed)")
    if sampling == "rank" and not rank_decay > 0:
        raise ValueError(f"rank_decay must be > 0, got {rank_decay!r}")
    if sampling == "score" and not score_temperature > 0:
        raise ValueError(f"score_temperature must be > 0, got {score_temperature!r}")
    if sampling == "score" or denoise_margin is not None:
        if scores is None or np.shape(scores) != ranked.shape:
            raise ValueError(f"sampling='score' and denoise_margin need scores shaped like ranked {ranked.shape}, "
                             f"got {None if scores is None else np.shape(scores)}")
        scores = np.asarray(scores)  # each block's rows are made float64
    else:
        scores = None

    window = ranked[:, lo:hi]
    out = np.full((nq, keep), -1, np.int32)
    if window.size == 0:
        return out
    # the same draws, in the same shape, as one argsort over the whole chunk would use; then each
    # block of rows is selected on its own (every step is per row), its arrays small enough to stay in cache
    draws = (rng.random(window.shape) if sampling == "uniform"
             else rng.gumbel(size=window.shape) if sampling in ("rank", "score") else None)
    rule = Rule((lo, hi), keep, sampling, rank_decay, score_temperature, denoise_margin)
    positives = list(positives)
    for a in range(0, nq, BLOCK_ROWS):
        b = a + BLOCK_ROWS
        out[a:b] = select_block(rule, ranked[a:b], positives[a:b], None if draws is None else draws[a:b],
                                None if scores is None else scores[a:b])
    return out


def overlap(previous: np.ndarray, ranked: np.ndarray) -> float:
    """ANCE's overlap diagnostic between two refreshes.

    Mean, over the queries that had previous negatives, of the fraction of
    those negatives (as a set; ``-1`` ignored) that appear in the query's new
    ranked list. Both arrays are ``[nq, *]`` with rows for the same queries.
    ``nan`` when no query had previous negatives.
    """
    previous, ranked = np.asarray(previous), np.asarray(ranked)
    if previous.ndim != 2 or ranked.ndim != 2 or previous.shape[0] != ranked.shape[0]:
        raise ValueError(
            f"previous {previous.shape} and ranked {ranked.shape} must be 2-d with rows for the same queries"
        )
    nq = previous.shape[0]
    n_codes = int(max(previous.max(initial=-1), ranked.max(initial=-1), 0)) + 1

    def code_set(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = np.broadcast_to(np.arange(nq, dtype=np.int64)[:, None], a.shape)
        valid = a >= 0
        codes = _unique(_pair_codes(rows[valid], a[valid], n_codes))
        return codes, codes // n_codes

    prev_codes, prev_rows = code_set(previous)
    if len(prev_codes) == 0:
        return float("nan")
    new_codes, _ = code_set(ranked)
    hit = _member(prev_codes, new_codes)
    size = np.bincount(prev_rows, minlength=nq)
    hits = np.bincount(prev_rows[hit], minlength=nq)
    has = size > 0
    return float(np.mean(hits[has] / size[has]))


# --------------------------------------------------------------------------- files


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


def _check_neg(neg: np.ndarray, rows: int, doc_ids: Sequence[str]) -> np.ndarray:
    neg = np.asarray(neg)
    if neg.ndim != 2 or neg.shape[0] != rows or not np.issubdtype(neg.dtype, np.integer):
        raise ValueError(f"neg must be an integer array with {rows} rows, got {neg.dtype} {neg.shape}")
    if neg.size and (neg.max() >= len(doc_ids) or neg.min() < -1):
        raise ValueError(f"neg holds doc indices outside [-1, {len(doc_ids)}): they must index doc_ids")
    used = [doc_ids[d] for d in _unique(neg[neg >= 0]).tolist()]
    joined = "\x00".join(used)  # one scan instead of one check per id
    if any(c in joined for c in "\t\n\r,") or (used and min(map(len, used)) == 0):
        for did in used:
            _check_id("doc id", did, "\t\n\r,")
    return neg


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
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, (int, np.integer)) or keep < 1):
        raise ValueError(f"keep must be a positive integer or None, got {keep!r}")
    path = Path(path)
    q_list: list[int] = []
    rows: list[list[int]] = []
    seen: dict[int, int] = {}
    header: dict | None = None
    with open(path, encoding="utf-8", newline="") as fh:
        for lineno, raw in enumerate(fh, start=1):
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
    if header is None:
        raise DataError(path, 1, f"empty file: expected the header `{MAGIC.strip()} {{...}}`")
    width = keep if keep is not None else max((len(r) for r in rows), default=0)
    neg = np.full((len(rows), width), -1, np.int32)
    for i, docs in enumerate(rows):
        docs = docs[:width]
        neg[i, : len(docs)] = docs
    return header, np.asarray(q_list, dtype=np.int32), neg


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
