"""Paired comparisons of runs over the same queries: t-test, Wilcoxon, bootstrap interval; a side
may pool several runs (a recipe's seeds) per query."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from scipy import stats

from ance.eval.metrics import MEASURES, evaluate_per_query, judged_queries

def paired_comparison(a: np.ndarray, b: np.ndarray, *, n_boot: int = 10000, seed: int = 0,
                      level: float = 0.95) -> dict[str, float | int | list[float]]:
    """Paired statistics of per-query scores ``a`` and ``b`` (same queries, same order).

    ``diff`` is ``mean(a - b)``; ``t``/``p_t`` the paired (two-sided) t-test
    (``t`` None when every query differs by the same non-zero amount),
    ``p_wilcoxon`` the Wilcoxon signed-rank test (zero differences dropped,
    scipy's default; 1.0 when every difference is zero), ``ci`` a percentile
    bootstrap interval of the mean difference (``n_boot`` resamples of the
    queries, seeded), ``wins``/``ties``/``losses`` count queries where a is
    above, equal to, below b.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape or a.size < 2:
        raise ValueError(f"a {a.shape} and b {b.shape} must be 1-d with the same length >= 2 (one value a query)")
    if n_boot < 1 or not 0 < level < 1:
        raise ValueError(f"n_boot must be >= 1 and level in (0, 1), got {n_boot}, {level}")
    d = a - b
    if np.all(d == d[0]):  # no spread: the t statistic is undefined, nothing to test
        t, p_t = (0.0, 1.0) if d[0] == 0 else (None, 0.0)
    else:
        res = stats.ttest_rel(a, b)
        t, p_t = float(res.statistic), float(res.pvalue)
    if np.any(d != 0):
        w = stats.wilcoxon(a, b)
        w_stat, p_w = float(w.statistic), float(w.pvalue)
    else:
        w_stat, p_w = 0.0, 1.0
    rng = np.random.default_rng(seed)
    boot = np.empty(n_boot)
    for lo in range(0, n_boot, 1000):  # 1000 resamples at a time: bounded memory for any n
        hi = min(lo + 1000, n_boot)
        boot[lo:hi] = d[rng.integers(0, d.size, size=(hi - lo, d.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return {
        "n": int(d.size), "a": float(a.mean()), "b": float(b.mean()), "diff": float(d.mean()),
        "ci": [float(np.percentile(boot, tail)), float(np.percentile(boot, 100 - tail))],
        "t": t, "p_t": p_t, "wilcoxon": w_stat, "p_wilcoxon": p_w,
        "wins": int((d > 0).sum()), "ties": int((d == 0).sum()), "losses": int((d < 0).sum()),
    }


def compare_runs(
    run_a: Mapping[str, Mapping[str, float]] | Sequence[Mapping[str, Mapping[str, float]]],
    run_b: Mapping[str, Mapping[str, float]] | Sequence[Mapping[str, Mapping[str, float]]],
    qrels: Mapping[str, Mapping[str, int]],
    measures: Sequence[str] = MEASURES,
    *, n_boot: int = 10000, seed: int = 0, level: float = 0.95, missing: str = "zero",
) -> dict[str, dict]:
    """:func:`paired_comparison` of two runs for each measure, over the qrels' judged queries.

    A judged query a run lacks counts 0 for it (``missing="zero"``, as in :func:`evaluate_run`)
    or, with ``missing="skip"``, the comparison is over the judged queries every run ranks.
    Runs that share no judged query cannot be compared: ValueError.

    Either side may be a list of runs, e.g. the seeds of one recipe: each query's value is then the
    mean over that side's runs before pairing (seeds pooled per query; the test stays over queries)."""
    sides = [_side(r) for r in (run_a, run_b)]
    qids = judged_queries(qrels)
    shared = [q for q in qids if all(r.get(q) for side in sides for r in side)]
    if not shared:
        raise ValueError("the runs share no judged query: nothing to compare (same dataset and split?)")
    keep = np.array([i for i, q in enumerate(qids) if q in set(shared)]) if missing == "skip" else None
    va, vb = (_seed_mean(side, qrels, measures, keep) for side in sides)
    return {name: paired_comparison(va[name], vb[name], n_boot=n_boot, seed=seed, level=level) for name in va}


def query_overlap(run_a, run_b, qrels: Mapping[str, Mapping[str, int]]) -> dict[str, int]:
    """How many judged queries each side ranks (every run of a side, as :func:`compare_runs` pairs them)
    and how many both do: ``{judged, a, b, shared}``. ``shared`` below ``a`` or ``b`` means the
    comparison mixes ranking quality with coverage (``missing="zero"``) or drops queries (``"skip"``)."""
    sides = [_side(r) for r in (run_a, run_b)]
    qids = judged_queries(qrels)
    ranked = [{q for q in qids if all(r.get(q) for r in side)} for side in sides]
    return {"judged": len(qids), "a": len(ranked[0]), "b": len(ranked[1]), "shared": len(ranked[0] & ranked[1])}


def _side(runs) -> list:
    side = [runs] if isinstance(runs, Mapping) else list(runs)
    if not side:
        raise ValueError("a side of the comparison has no run")
    return side


def _seed_mean(runs, qrels, measures, keep=None) -> dict[str, np.ndarray]:
    per_run = [evaluate_per_query(r, qrels, measures)[1] for r in runs]
    out = {name: np.mean([v[name] for v in per_run], axis=0) for name in per_run[0]}
    return out if keep is None else {name: v[keep] for name, v in out.items()}
