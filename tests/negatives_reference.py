"""The negatives selection before issue 10's speed-up, kept verbatim as the reference.

``reference_select_negatives`` is ``ance.negatives.select.select_negatives`` as it was at main 3a7c88f
(one stable argsort for duplicates, one for the draw). tests/test_negatives_fast.py checks the
current selection returns exactly its arrays; benchmarks/bench_merge.py times both side by side.
Do not "improve" this file: its value is that it does not change. The one addition since is a new
option, ``denoise_ratio`` (issue 29), written here the plain way as the definition the fast path meets.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ance.run.config import parse_rank_window

SAMPLING = ("uniform", "top", "rank", "score")


# Set operations below use sort + searchsorted rather than np.unique / np.isin,
# which are 50x slower on millions of int64 in numpy 2.x.


def _pair_codes(rows: np.ndarray, docs: np.ndarray, n_codes: int) -> np.ndarray:
    """One int64 per (query row, doc), so set operations over all rows are one array operation."""
    return rows.astype(np.int64) * n_codes + docs.astype(np.int64)


def _unique(x: np.ndarray) -> np.ndarray:
    s = np.sort(x, axis=None)
    return s[np.r_[True, s[1:] != s[:-1]]] if s.size else s


def _member(x: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """x in sorted_set, elementwise."""
    if sorted_set.size == 0:
        return np.zeros(x.shape, dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_set, x), sorted_set.size - 1)
    return sorted_set[pos] == x


def _positive_codes(positives: Sequence[np.ndarray], n_codes: int) -> np.ndarray:
    arrays = [np.asarray(p, dtype=np.int64).ravel() for p in positives]
    lengths = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
    if lengths.sum() == 0:
        return np.empty(0, np.int64)
    docs = np.concatenate(arrays)
    rows = np.repeat(np.arange(len(arrays), dtype=np.int64), lengths)
    ok = (docs >= 0) & (docs < n_codes)  # a positive outside the ranked ids cannot be in them
    return _pair_codes(rows[ok], docs[ok], n_codes)


def reference_select_negatives(
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
    denoise_ratio: float | None = None,
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
    ``denoise_ratio`` drops a candidate scored above ``ratio * s_pos`` (the
    same ``s_pos``). A doc listed twice in a row counts once.

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
    if denoise_ratio is not None and not 0 < denoise_ratio < np.inf:
        raise ValueError(f"denoise_ratio must be a finite number > 0 (e.g. 0.95), got {denoise_ratio!r}")
    if sampling == "score" or denoise_margin is not None or denoise_ratio is not None:
        if scores is None or np.shape(scores) != ranked.shape:
            raise ValueError(f"sampling='score', denoise_margin and denoise_ratio need scores shaped like ranked "
                             f"{ranked.shape}, got {None if scores is None else np.shape(scores)}")
        scores = np.asarray(scores, dtype=np.float64)

    window = ranked[:, lo:hi].astype(np.int64)
    out = np.full((nq, keep), -1, np.int32)
    if window.size == 0:
        return out
    n_codes = int(max(window.max(), 0)) + 1
    rows = np.broadcast_to(np.arange(nq, dtype=np.int64)[:, None], window.shape)
    codes = _pair_codes(rows, np.maximum(window, 0), n_codes)
    pos_codes = _unique(_positive_codes(positives, n_codes))
    cand = (window >= 0) & ~_member(codes, pos_codes)
    if denoise_margin is not None:
        cand &= ~_likely_positive(ranked, scores, positives, (lo, hi), denoise_margin)
    if denoise_ratio is not None:
        cand &= ~_above_ratio_of_positive(ranked, scores, positives, (lo, hi), denoise_ratio)
    # a doc listed twice in a row: keep its first (best ranked) occurrence
    order = np.argsort(window, axis=1, kind="stable")
    sorted_docs = np.take_along_axis(window, order, axis=1)
    repeat = np.zeros(window.shape, dtype=bool)
    repeat[:, 1:] = sorted_docs[:, 1:] == sorted_docs[:, :-1]
    np.put_along_axis(repeat, order, repeat.copy(), axis=1)
    cand &= ~repeat

    if sampling == "top":
        key = np.where(cand, 0.0, 1.0)  # the stable sort keeps rank order among candidates
    elif sampling == "uniform":
        key = np.where(cand, rng.random(window.shape), 2.0)
    else:  # Gumbel top-k: the smallest -(log w + G) are a weighted draw without replacement
        if sampling == "rank":
            log_w = -np.arange(lo, lo + window.shape[1], dtype=np.float64)[None, :] / rank_decay
        else:
            log_w = scores[:, lo:hi] / score_temperature
        key = np.where(cand, -(log_w + rng.gumbel(size=window.shape)), np.inf)
    pick = np.argsort(key, axis=1, kind="stable")[:, :keep]
    n_pick = np.minimum(cand.sum(axis=1), keep)
    chosen = np.arange(pick.shape[1])[None, :] < n_pick[:, None]
    pick = np.sort(np.where(chosen, pick, window.shape[1]), axis=1)  # rank order, unused last
    vals = np.take_along_axis(window, np.minimum(pick, window.shape[1] - 1), axis=1)
    out[:, : pick.shape[1]] = np.where(pick < window.shape[1], vals, -1)
    return out


def _likely_positive(ranked: np.ndarray, scores: np.ndarray, positives: Sequence[np.ndarray],
                     window: tuple[int, int], margin: float) -> np.ndarray:
    """bool ``[nq, hi - lo]``: window entries scored above the row's best positive score minus ``margin``."""
    lo, hi = window
    full = ranked.astype(np.int64)
    n_codes = int(max(full.max(initial=0), 0)) + 1
    rows = np.broadcast_to(np.arange(full.shape[0], dtype=np.int64)[:, None], full.shape)
    pos_codes = _unique(_positive_codes(positives, n_codes))
    is_pos = (full >= 0) & _member(_pair_codes(rows, np.maximum(full, 0), n_codes), pos_codes)
    s_pos = np.where(is_pos, scores, -np.inf).max(axis=1, initial=-np.inf)
    return (scores[:, lo:hi] > (s_pos - margin)[:, None]) & np.isfinite(s_pos)[:, None]


def _above_ratio_of_positive(ranked: np.ndarray, scores: np.ndarray, positives: Sequence[np.ndarray],
                             window: tuple[int, int], ratio: float) -> np.ndarray:
    """bool ``[nq, hi - lo]``: window entries scored above ``ratio`` times the row's best positive score,
    one row at a time; all False in a row whose positives are not ranked (or whose best score is not finite)."""
    lo, hi = window
    out = np.zeros((ranked.shape[0], scores[:, lo:hi].shape[1]), dtype=bool)
    for q in range(ranked.shape[0]):
        pos = set(int(p) for p in np.asarray(positives[q]).ravel())
        pos_scores = [float(scores[q, j]) for j in range(ranked.shape[1])
                      if ranked[q, j] >= 0 and int(ranked[q, j]) in pos]
        s_pos = max(pos_scores, default=-np.inf)
        if pos_scores and any(np.isnan(pos_scores)):
            s_pos = np.nan  # numpy's max: NaN wins
        if np.isfinite(s_pos):
            out[q] = scores[q, lo:hi] > ratio * s_pos
    return out
