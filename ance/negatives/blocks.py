"""The kernel of :func:`ance.negatives.select.select_negatives`, one block of query rows at a time.

The selection is defined as the first ``n_pick = min(candidates, keep)`` entries of
``np.argsort(key, kind="stable")`` over each row of the window, put back in rank order, where
``key`` is 0/1 (``top``), a uniform draw or 2.0 (``uniform``), or ``-(log w + Gumbel)`` or
``inf`` (``rank``, ``score``). This module gives exactly that set without the two full stable
sorts (duplicates, draw) that were 60% of the time: a plain sort finds the rows that repeat a doc,
and a partition to ``keep`` picks the set, with keys made unique by packing the column in, or
with a threshold whose ties go to the smaller column.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

BLOCK_ROWS = 256  # rows selected together: their [rows, window] arrays stay in a core's cache
DIRECT_POSITIVES = 8  # up to this many positives in a row: compare with each; more: a sorted set of codes
COL_BITS = 10  # uniform: a draw is k / 2**53, so (k, column) packs into a uint64 for windows <= 2**10


class Rule(NamedTuple):
    """select_negatives' options, checked there: the same for every block of a chunk."""

    window: tuple[int, int]
    keep: int
    sampling: str
    rank_decay: float
    score_temperature: float
    denoise_margin: float | None
    denoise_ratio: float | None


# Set operations use sort + searchsorted rather than np.unique / np.isin,
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


def select_block(rule: Rule, ranked: np.ndarray, positives: Sequence, draws: np.ndarray | None,
                 scores: np.ndarray | None) -> np.ndarray:
    """int32 ``[rows, keep]`` for these rows of ``ranked`` (full depth), given their draws ``[rows, hi - lo]``."""
    lo, hi = rule.window
    window = np.asarray(ranked[:, lo:hi], dtype=np.int64)
    out = np.full((window.shape[0], rule.keep), -1, np.int32)
    if scores is not None:
        scores = np.asarray(scores, dtype=np.float64)
    if rule.denoise_margin is not None or rule.denoise_ratio is not None:
        full = np.asarray(ranked, dtype=np.int64)
        is_pos = (full >= 0) & _is_positive(full, positives)
        cand = (window >= 0) & ~is_pos[:, lo:hi]
        cand &= ~_likely_positive(scores, is_pos, (lo, hi), rule.denoise_margin, rule.denoise_ratio)
    else:
        cand = (window >= 0) & ~_is_positive(window, positives)
    repeat = _repeats(window)  # a doc listed twice in a row: keep its first (best ranked) occurrence
    if repeat is not None:
        cand &= ~repeat

    width = window.shape[1]
    k = min(rule.keep, width)
    col = np.arange(width, dtype=np.int16 if width < 2**14 else np.int64)
    if rule.sampling == "top":  # candidates first, in rank order
        cols = _smallest(np.where(cand, col, col + width), k, in_order=True)
        cols[cols >= width] = width
    elif rule.sampling == "uniform" and width <= 2**COL_BITS:
        cols = _uniform_pick(cand, draws, col, k)
    else:
        if rule.sampling == "uniform":
            key = np.where(cand, draws, 2.0)
        else:  # Gumbel top-k: the smallest -(log w + G) are a weighted draw without replacement
            if rule.sampling == "rank":
                log_w = -np.arange(lo, lo + width, dtype=np.float64)[None, :] / rule.rank_decay
            else:
                log_w = scores[:, lo:hi] / rule.score_temperature
            key = np.where(cand, -(log_w + draws), np.inf)
        n_pick = np.minimum(cand.sum(axis=1), k)
        cols = _smallest(np.where(_first_in_order(key, n_pick, k), col, width), k, in_order=True)
    vals = np.take_along_axis(window, np.minimum(cols, width - 1), axis=1)
    out[:, :k] = np.where(cols < width, vals, -1)
    return out


def _is_positive(ids: np.ndarray, positives: Sequence) -> np.ndarray:
    """bool like ``ids`` (int64 ``[rows, w]``): ``ids[q, j]`` is one of ``positives[q]``; meaningful where ``ids >= 0``."""
    arrays = [np.asarray(p, dtype=np.int64).ravel() for p in positives]
    lengths = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
    width = int(lengths.max(initial=0))
    if width == 0 or ids.size == 0:
        return np.zeros(ids.shape, dtype=bool)
    docs = np.concatenate(arrays)
    rows = np.repeat(np.arange(len(arrays), dtype=np.int64), lengths)
    if width > DIRECT_POSITIVES:
        n_codes = int(max(ids.max(), 0)) + 1
        ok = (docs >= 0) & (docs < n_codes)  # a positive outside the ranked ids cannot be in them
        codes = _pair_codes(np.broadcast_to(np.arange(len(arrays))[:, None], ids.shape), np.maximum(ids, 0), n_codes)
        return _member(codes, _unique(_pair_codes(rows[ok], docs[ok], n_codes)))
    table = np.full((len(arrays), width), -1, np.int64)  # the pad -1 only meets ids < 0
    table[rows, np.arange(docs.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)] = docs
    hit = ids == table[:, :1]
    for j in range(1, width):
        hit |= ids == table[:, j : j + 1]
    return hit


def _likely_positive(scores: np.ndarray, is_pos: np.ndarray, window: tuple[int, int], margin: float | None,
                     ratio: float | None = None) -> np.ndarray:
    """bool ``[rows, hi - lo]``: window entries scored above the row's best positive score ``s_pos`` minus
    ``margin``, or above ``ratio * s_pos`` (either rule, those given); False in rows with no finite ``s_pos``."""
    lo, hi = window
    s_pos = np.where(is_pos, scores, -np.inf).max(axis=1, initial=-np.inf)
    win = scores[:, lo:hi]
    drop = np.zeros(win.shape, dtype=bool)
    if margin is not None:
        drop |= win > (s_pos - margin)[:, None]
    if ratio is not None:
        drop |= win > (ratio * s_pos)[:, None]
    return drop & np.isfinite(s_pos)[:, None]


def _repeats(window: np.ndarray) -> np.ndarray | None:
    """bool like ``window``: a doc (>= 0) listed earlier in its row; None when no row repeats one."""
    s = np.sort(window, axis=1)  # a plain sort finds the rows with repeats; most have none
    same = s[:, 1:] == s[:, :-1]
    rows = np.flatnonzero(same.any(axis=1))
    rows = rows[(same[rows] & (s[rows, 1:] >= 0)).any(axis=1)]  # repeated pads do not count
    if rows.size == 0:
        return None
    sub = window[rows]
    order = np.argsort(sub, axis=1, kind="stable")  # equal docs stay in rank order: the first is kept
    sorted_docs = np.take_along_axis(sub, order, axis=1)
    later = np.zeros(sub.shape, dtype=bool)
    later[:, 1:] = sorted_docs[:, 1:] == sorted_docs[:, :-1]
    np.put_along_axis(later, order, later.copy(), axis=1)
    repeat = np.zeros(window.shape, dtype=bool)
    repeat[rows] = later
    return repeat


def _smallest(key: np.ndarray, k: int, in_order: bool) -> np.ndarray:
    """The ``k`` smallest entries of each row (sorted when ``in_order``)."""
    small = np.partition(key, k - 1, axis=1)[:, :k] if k < key.shape[1] else key.copy()
    if in_order:
        small.sort(axis=1)
    return small


def _uniform_pick(cand: np.ndarray, draws: np.ndarray, col: np.ndarray, k: int) -> np.ndarray:
    """Columns of each row's ``k`` candidates with the smallest draws (ties: smaller column), ascending, ``width`` padded."""
    width = cand.shape[1]
    bits = max(width - 1, 1).bit_length()
    drawn = (draws * 2.0**53).astype(np.uint64)  # exact: the draws are multiples of 2**-53
    key = np.where(cand, drawn, np.uint64(1 << 53))  # not a candidate: after every draw
    key <<= np.uint64(bits)
    key |= col.astype(np.uint64)
    small = _smallest(key, k, in_order=False)
    cols = np.where(small < np.uint64((1 << 53) << bits), (small & np.uint64((1 << bits) - 1)).astype(col.dtype), width)
    cols.sort(axis=1)
    return cols


def _sortable(x: np.ndarray) -> np.ndarray:
    """int64 whose order is numpy's sort order of the doubles ``x`` (-0.0 == 0.0, every NaN equal and last)."""
    bits = (x + 0.0).view(np.int64)  # -0.0 + 0.0 is +0.0
    bits ^= (bits >> 63) & np.int64(0x7FFF_FFFF_FFFF_FFFF)  # negative doubles: reverse their bit order
    bits[np.isnan(x)] = np.iinfo(np.int64).max
    return bits


def _first_in_order(key: np.ndarray, n_pick: np.ndarray, k: int) -> np.ndarray:
    """bool like ``key``: the first ``n_pick[q]`` (<= ``k``) entries of row ``q`` in stable ascending order of ``key``.

    Floats compare as numpy sorts them (-0.0 == 0.0, NaN last) unless the threshold is NaN.
    """
    rows_n = key.shape[0]
    smallest = _smallest(key, k, in_order=True)
    last = smallest[np.arange(rows_n), np.maximum(n_pick, 1) - 1][:, None]  # the n_pick-th smallest key
    if key.dtype.kind == "f" and np.isnan(last).any():  # NaN compares with nothing: use integers that do
        return _first_in_order(_sortable(key), n_pick, k)
    chosen = key <= last
    rows = np.flatnonzero(chosen.sum(axis=1) > n_pick)  # keys tied with `last` past n_pick: the first ones
    if rows.size:
        sub, at = key[rows], last[rows]
        below, tied = sub < at, sub == at
        need = n_pick[rows] - below.sum(axis=1)
        chosen[rows] = below | (tied & (np.cumsum(tied, axis=1) <= need[:, None]))
    return chosen
