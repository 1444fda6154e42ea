"""Hard-negative selection from ranked lists (ANCE's rule) and the overlap diagnostic.

Selection follows ANCE: take the ranks ``[lo, hi)`` of the *original* ranking
(ANCE's "top 200"), drop every labelled positive of the query, then keep
``keep`` of what is left, sampled uniformly or the top ones, or weighted by
rank (``exp(-rank / rank_decay)``) or by the ranking model's score
(``exp(score / score_temperature)``). With ``denoise_margin`` the candidates
the ranking model scores above its score of the query's positive minus the
margin are dropped first (likely unlabelled positives, RocketQA's denoising
with the retriever itself as the guide); with ``denoise_ratio`` those scored
above the ratio times that score (NV-Retriever's TopK-PercPos). The files the
lists are kept in: :mod:`ance.negatives.files`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ance.negatives.blocks import BLOCK_ROWS, Rule, select_block
from ance.run.config import parse_rank_window

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
    ``denoise_ratio`` (> 0, needs ``scores`` too) drops a candidate scored
    above ``ratio * s_pos``, the same ``s_pos``, taken as written: with a
    negative ``s_pos`` the threshold lies above it. Given both, a candidate
    either rule drops is dropped. A doc listed twice in a row counts once.

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
    if denoise_ratio is not None and (isinstance(denoise_ratio, bool) or not isinstance(
            denoise_ratio, (int, float, np.integer, np.floating)) or not 0 < denoise_ratio < np.inf):
        raise ValueError(f"denoise_ratio must be a finite number > 0 (e.g. 0.95), got {denoise_ratio!r}")
    if sampling == "score" or denoise_margin is not None or denoise_ratio is not None:
        if scores is None or np.shape(scores) != ranked.shape:
            raise ValueError(f"sampling='score', denoise_margin and denoise_ratio need scores shaped like ranked "
                             f"{ranked.shape}, got {None if scores is None else np.shape(scores)}")
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
    rule = Rule((lo, hi), keep, sampling, rank_decay, score_temperature, denoise_margin, denoise_ratio)
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
    prev = np.sort(previous, axis=1)
    valid = prev >= 0
    valid[:, 1:] &= prev[:, 1:] != prev[:, :-1]  # each id of a row once: a set
    size = valid.sum(axis=1)
    has = size > 0
    if not has.any():
        return float("nan")
    if ranked.shape[1] == 0:
        return 0.0
    # row i's ids as codes i * n_codes + id + 1 (a -1 pad codes below every id of its row): each row sorted,
    # the rows in order, so the whole is sorted and one searchsorted finds every previous negative in its row
    n_codes = int(max(prev.max(initial=-1), ranked.max(initial=-1), 0)) + 2
    offset = np.arange(nq, dtype=np.int64)[:, None] * n_codes
    new = (np.sort(ranked, axis=1).astype(np.int64) + 1 + offset).ravel()
    old = prev.astype(np.int64) + 1 + offset
    pos = np.minimum(np.searchsorted(new, old.ravel()), new.size - 1).reshape(old.shape)
    hits = ((new[pos] == old) & valid).sum(axis=1)
    return float(np.mean(hits[has] / size[has]))
