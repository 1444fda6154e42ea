"""The pure top-k maths of exact search: sorting result rows, merging per-shard
top-k lists (the broker's job) and collapsing MaxP window hits into documents.

Rows are ``(scores float32 [m, k], ids int64 [m, k])``, sorted by score
descending with ties broken by the smaller id; ``-1`` ids with ``-inf`` scores
pad rows that have fewer than ``k`` hits.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


_PAD_KEY = np.iinfo(np.int64).max
_LOW32 = np.int64(0xFFFFFFFF)


def _order_keys(scores: np.ndarray, ids: np.ndarray) -> np.ndarray | None:
    """One int64 per entry whose ascending order is (valid first, score descending, smaller id first).

    The high 32 bits hold the float32 score's bits mapped to a signed integer
    that decreases as the score grows, the low 32 bits the id; pads (id < 0)
    get the largest key. Sorting one integer array is several times faster
    than ``np.lexsort`` over three keys, and the scores and ids are decoded
    from the sorted keys (:func:`_decode_keys`) without gathers. None when an
    id does not fit in 32 bits (the caller then uses lexsort).
    """
    if ids.size and int(ids.max()) >= 0xFFFFFFFF:
        return None
    s = np.where(np.isnan(scores), np.float32(-np.inf), scores + np.float32(0.0))  # NaN ranks as -inf; -0 -> +0
    i32 = s.view(np.int32)
    ascending = np.where(i32 < 0, i32 ^ np.int32(0x7FFFFFFF), i32)  # signed int, monotone in the score
    key = ((~ascending).astype(np.int64) << np.int64(32)) | ids
    key[ids < 0] = _PAD_KEY
    return key


def _decode_keys(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(scores float32, ids int64) of :func:`_order_keys`'s keys; pads come back as -inf / -1."""
    ascending = ~((key >> np.int64(32)).astype(np.int32))
    scores = np.where(ascending < 0, ascending ^ np.int32(0x7FFFFFFF), ascending).view(np.float32)
    ids = key & _LOW32
    pad = key == _PAD_KEY
    scores[pad] = -np.inf
    ids[pad] = -1
    return scores, ids


def _sort_rows(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row: valid ids first, score descending, smaller id first on ties; first k, padded.

    NaN scores rank as -inf and come back as -inf; -0.0 comes back as 0.0.
    """
    scores = np.ascontiguousarray(scores, dtype=np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    m, width = ids.shape
    key = _order_keys(scores, ids)
    if key is None:
        order = np.lexsort((ids, -scores, ids < 0), axis=-1)[:, :k]
        out_s = np.take_along_axis(scores, order, axis=1)
        out_i = np.take_along_axis(ids, order, axis=1)
        out_s[out_i < 0] = -np.inf
    else:
        if width > 2 * k:  # the k smallest keys first (linear), then sort only those
            key = np.partition(key, k - 1, axis=1)[:, :k]
        if not np.all(key[:, 1:] >= key[:, :-1]):  # one shard's rows arrive sorted already
            key = np.sort(key, axis=1)
        out_s, out_i = _decode_keys(key[:, :k])
    if width < k:
        out_s = np.concatenate([out_s, np.full((m, k - width), -np.inf, np.float32)], axis=1)
        out_i = np.concatenate([out_i, np.full((m, k - width), -1, np.int64)], axis=1)
    return np.ascontiguousarray(out_s), np.ascontiguousarray(out_i)


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def merge_topk(
    scores_list: Sequence[np.ndarray], ids_list: Sequence[np.ndarray], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard top-k lists of the same queries into the global top-k.

    Each shard gives ``scores [m, k_s]`` and ``ids [m, k_s]`` with *global* ids
    (``-1`` = pad); shards hold disjoint documents (an id appears in one shard
    only). Returns ``(scores float32 [m, k], ids int64 [m, k])`` sorted by score
    descending, ties broken by the smaller id so the result does not depend on
    shard order or on how a backend orders ties. Pads come last, only when
    fewer than ``k`` valid ids exist, as ``-1`` / ``-inf``.
    """
    k = _check_k(k)
    if len(scores_list) == 0 or len(scores_list) != len(ids_list):
        raise ValueError(
            f"merge_topk needs one scores and one ids array per shard, got "
            f"{len(scores_list)} scores and {len(ids_list)} ids arrays"
        )
    rows = None
    for s, (sc, ix) in enumerate(zip(scores_list, ids_list)):
        sc, ix = np.asarray(sc), np.asarray(ix)
        if sc.ndim != 2 or sc.shape != ix.shape:
            raise ValueError(
                f"shard {s}: scores {sc.shape} and ids {ix.shape} must be 2-d arrays of one shape"
            )
        if rows is None:
            rows = sc.shape[0]
        elif sc.shape[0] != rows:
            raise ValueError(
                f"shard {s} has {sc.shape[0]} query rows, shard 0 has {rows}: "
                "merge results of the same queries only"
            )
    scores = np.concatenate([np.asarray(s, dtype=np.float32) for s in scores_list], axis=1)
    ids = np.concatenate([np.asarray(i, dtype=np.int64) for i in ids_list], axis=1)
    return _sort_rows(scores, ids, k)


def maxp_collapse(
    scores: np.ndarray, ids: np.ndarray, owner: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """MaxP: turn window-level hits into document-level top-k.

    ``ids`` index windows (``-1`` = pad), ``owner[window]`` is the document the
    window belongs to. A document scores the max over its retrieved windows.
    Returns ``(scores float32 [m, k], doc ids int64 [m, k])`` without duplicate
    documents, sorted as :func:`merge_topk` sorts. Search the windows with a
    larger k first (e.g. ``k * windows``) so that k distinct documents survive.
    """
    k = _check_k(k)
    scores = np.asarray(scores, dtype=np.float32)
    ids = np.asarray(ids, dtype=np.int64)
    owner = np.asarray(owner)
    if scores.ndim != 2 or scores.shape != ids.shape:
        raise ValueError(f"scores {scores.shape} and ids {ids.shape} must be 2-d arrays of one shape")
    if owner.ndim != 1 or not np.issubdtype(owner.dtype, np.integer):
        raise ValueError(f"owner must be a 1-d integer array (window -> document), got {owner.dtype} {owner.shape}")
    if ids.size and ids.max(initial=-1) >= len(owner):
        raise ValueError(
            f"window id {int(ids.max())} is outside owner (length {len(owner)}): "
            "owner must map every indexed window to its document"
        )
    valid = ids >= 0
    docs = np.where(valid, owner[np.where(valid, ids, 0)], -1).astype(np.int64)
    # Group each row by document, best window first; keep the first of each group.
    order = np.lexsort((-scores, docs), axis=-1)
    d = np.take_along_axis(docs, order, axis=1)
    s = np.take_along_axis(scores, order, axis=1)
    first = np.ones(d.shape, dtype=bool)
    first[:, 1:] = d[:, 1:] != d[:, :-1]
    keep = first & (d >= 0)
    return _sort_rows(np.where(keep, s, -np.inf), np.where(keep, d, -1), k)
