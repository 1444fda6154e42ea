"""TREC files: run files (``qid Q0 did rank score tag``) and qrels (``qid 0 did rel`` or BEIR's
``query-id corpus-id score`` TSV), written atomically and read with every line checked."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np

from ance.run.errors import DataError
from ance.run.fsio import atomic_write_lines

_SPACE = re.compile(r"\s")

def write_trec_run(
    path: str | Path,
    query_ids: Sequence[str],
    ids: np.ndarray,
    scores: np.ndarray,
    doc_ids: Sequence[str],
    tag: str = "ance",
) -> None:
    """Write ``qid Q0 did rank score tag`` lines atomically (temp file, fsync, rename).

    Row ``i`` of ``ids``/``scores`` (doc indices and scores in rank order)
    belongs to ``query_ids[i]``; ``-1`` pads are skipped and ranks count from 1.
    Scores are written with 9 significant digits, enough to round-trip float32,
    so that no ties appear that the arrays did not have.
    """
    ids, scores = np.asarray(ids), np.asarray(scores)
    if ids.ndim != 2 or ids.shape != scores.shape or ids.shape[0] != len(query_ids):
        raise ValueError(
            f"ids {ids.shape} and scores {scores.shape} must be [queries, k] with one row per query id "
            f"({len(query_ids)})"
        )
    if ids.size and ids.max() >= len(doc_ids):
        raise ValueError(f"ids hold doc index {int(ids.max())} but there are {len(doc_ids)} doc ids")
    if not tag or any(c.isspace() for c in tag):
        raise ValueError(f"tag must be one word without whitespace, got {tag!r}")
    used = np.sort(ids[ids >= 0])
    if used.size:
        used = used[np.r_[True, used[1:] != used[:-1]]]
    _check_words("doc id", [doc_ids[d] for d in used.tolist()])
    _check_words("query id", query_ids)
    path = Path(path)

    def lines():
        for qid, row_ids, row_scores in zip(query_ids, ids.tolist(), scores.tolist()):
            rank = 0
            for d, s in zip(row_ids, row_scores):
                if d < 0:
                    continue
                rank += 1
                yield f"{qid} Q0 {doc_ids[d]} {rank} {s:.9g} {tag}\n"

    atomic_write_lines(path, lines())


def _check_words(kind: str, values: Sequence[str]) -> None:
    values = list(values)
    if not values or (_SPACE.search("\x00".join(values)) is None and min(map(len, values)) > 0):
        return  # one scan over all ids; look for the culprit only when there is one
    for value in values:
        if not value or _SPACE.search(value):
            raise ValueError(
                f"{kind} {value!r} cannot be written to a TREC file: it must be non-empty without whitespace"
            )


def text_lines(path: str | Path, what: str):
    """``(line number, line)`` of a UTF-8 text file; a folder, a missing or unreadable file, or bytes
    that are not UTF-8 raise :class:`DataError` naming the file (and line) and what was expected."""
    p = Path(path)
    if p.is_dir():
        raise DataError(p, None, f"is a folder; give the {what} file")
    try:
        fh = open(p, "rb")
    except FileNotFoundError:
        raise DataError(p, None, f"no such file; give the path of the {what}") from None
    except OSError as exc:
        raise DataError(p, None, f"cannot read it ({exc.strerror})") from None
    with fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(p, lineno, f"not UTF-8 text (byte {exc.start} of the line); is this a {what}?") \
                    from None


def read_trec_run(path: str | Path) -> dict[str, dict[str, float]]:
    """Read a TREC run (``qid Q0 did rank score tag``) into ``{qid: {did: score}}``."""
    run: dict[str, dict[str, float]] = {}
    for lineno, line in text_lines(path, "TREC run (qid Q0 did rank score tag)"):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 6:
            raise DataError(path, lineno, f"expected 6 columns `qid Q0 did rank score tag`, found {len(parts)}")
        qid, _, did, _, score, _ = parts
        try:
            value = float(score)
        except ValueError:
            raise DataError(path, lineno, f"score {score!r} is not a number") from None
        docs = run.setdefault(qid, {})
        if did in docs:
            raise DataError(path, lineno, f"document {did!r} appears twice for query {qid!r}")
        docs[did] = value
    return run


def read_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """Read judgements into ``{qid: {did: relevance}}``.

    Accepts BEIR tsv (``query-id<TAB>corpus-id<TAB>score``, header optional) and
    TREC qrels (``qid iteration did relevance``). A pair judged twice with
    different relevance is an error; an empty file too.
    """
    qrels: dict[str, dict[str, int]] = {}
    columns = None
    for lineno, line in text_lines(path, "qrels (BEIR TSV or TREC qrels)"):
        parts = line.split()
        if not parts:
            continue
        if columns is None and [p.lower() for p in parts[:2]] == ["query-id", "corpus-id"]:
            columns = 3
            continue
        if columns is None:
            if len(parts) not in (3, 4):
                raise DataError(
                    path, lineno,
                    f"expected BEIR `query-id corpus-id score` (3 columns) or TREC `qid iter did rel` "
                    f"(4 columns), found {len(parts)} columns",
                )
            columns = len(parts)
        if len(parts) != columns:
            raise DataError(path, lineno, f"expected {columns} columns like the lines before, found {len(parts)}")
        qid, did, rel = (parts[0], parts[1], parts[2]) if columns == 3 else (parts[0], parts[2], parts[3])
        try:
            value = int(rel)
        except ValueError:
            raise DataError(path, lineno, f"relevance {rel!r} is not an integer") from None
        docs = qrels.setdefault(qid, {})
        if docs.get(did, value) != value:
            raise DataError(path, lineno, f"query {qid!r} doc {did!r} judged {docs[did]} before, now {value}")
        docs[did] = value
    if not qrels:
        raise DataError(path, None, "no judgements in the file")
    return qrels
