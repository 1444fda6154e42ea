"""The pure arithmetic of a worker's search: which queries each search call takes (:func:`search_spans`)
and how index positions become document ids (:func:`consecutive_start`, :func:`doc_ids`)."""

from __future__ import annotations

import numpy as np


def search_spans(n: int, chunk: int, block: int | None) -> list[tuple[int, int]]:
    """The ``[lo, hi)`` query ranges of a shard's search calls: whole chunks of ``chunk`` queries,
    as many as fit in ``block`` (the queries an index scores at once; at least one chunk), so a
    GPU index scoring 6,144 queries a tile is not handed 2,048 at a time. Chunk boundaries, and so
    the ``topk`` frames the broker receives, stay the same."""
    if n < 0 or chunk < 1:
        raise ValueError(f"n must be >= 0 and chunk >= 1, got {n}, {chunk}")
    span = chunk * max(1, (block or chunk) // chunk)
    return [(lo, min(lo + span, n)) for lo in range(0, n, span)]


def consecutive_start(owner: np.ndarray) -> int | None:
    """``owner[0]`` where the owner array is one run of consecutive ids (FirstP: ``arange(doc_lo, doc_hi)``),
    else None (MaxP). Checked once for each split searched, so each search's ids come from :func:`doc_ids`
    without a gather."""
    n = len(owner)
    if n and np.array_equal(owner, np.arange(int(owner[0]), int(owner[0]) + n, dtype=owner.dtype)):
        return int(owner[0])
    return None


def doc_ids(pos: np.ndarray, owner: np.ndarray, start: int | None) -> np.ndarray:
    """Global document ids of index positions ``pos`` (``-1`` stays ``-1``): ``owner[pos]``, or ``pos + start``
    where the owner is consecutive from ``start`` (:func:`consecutive_start`), which spares a random gather
    over the shard's ids: 8 ms against 2 for 4,096 x 200 positions in 8.8M, each search."""
    if start is not None:
        return np.where(pos >= 0, pos + start, -1)
    return np.where(pos >= 0, owner[np.maximum(pos, 0)], -1)
