"""Evaluation metrics through ir-measures (files: :mod:`ance.eval.trec`; paired tests:
:mod:`ance.eval.compare`).

Metric conventions are trec_eval's (ir-measures runs pytrec_eval):

* nDCG uses linear gain (``rel``, not ``2**rel - 1``) and log2 discounts.
* ``mrr@10`` is RR@10: 1/rank of the first relevant doc in the top 10, else 0.
* a doc is relevant when its judgement is >= 1; judged 0 counts as not relevant.
* documents with equal scores are ordered by doc id, descending (trec_eval's
  rule), not by their position in the run.

:func:`evaluate_run` averages over every query of the qrels that has at least
one relevant document. ir-measures only reports queries present in the run, so
a query the system returned nothing for would silently drop out of the mean
and inflate it; here it counts 0, as trec_eval ``-c`` does.
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

import ir_measures
import numpy as np

MEASURES = ("ndcg@10", "mrr@10", "recall@100", "recall@1000")
_NAME = re.compile(r"^(ndcg|mrr|recall|map|precision)@([1-9][0-9]*)$")

def _measure(name: str):
    m = _NAME.match(name)
    if not m:
        raise ValueError(
            f"unknown measure {name!r}: use ndcg@K, mrr@K, recall@K, map@K or precision@K (e.g. {', '.join(MEASURES)})"
        )
    kind, cutoff = m.group(1), int(m.group(2))
    base = {"ndcg": ir_measures.nDCG, "mrr": ir_measures.RR, "recall": ir_measures.R,
            "map": ir_measures.AP, "precision": ir_measures.P}[kind]
    return base @ cutoff


MISSING = ("zero", "skip")


def judged_queries(qrels: Mapping[str, Mapping[str, int]]) -> list[str]:
    """The qrels' queries with at least one relevant document (relevance >= 1), sorted."""
    return sorted(q for q, docs in qrels.items() if any(r > 0 for r in docs.values()))


def missing_queries(run: Mapping[str, Mapping[str, float]], qrels: Mapping[str, Mapping[str, int]]) -> list[str]:
    """The judged queries (:func:`judged_queries`) the run has no ranking for (absent or empty), sorted."""
    return [q for q in judged_queries(qrels) if not run.get(q)]


def evaluate_per_query(
    run: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    measures: Sequence[str] = MEASURES,
    missing: str = "zero",
) -> tuple[list[str], dict[str, np.ndarray]]:
    """Each measure's value for every qrels query with a relevant document.

    Returns ``(query_ids, {name: float64 [n]})``, query ids sorted, values in
    that order; a query missing from the run (or with an empty ranking) is 0
    with ``missing="zero"`` (trec_eval ``-c``), left out with ``missing="skip"``.
    """
    import ir_measures

    if isinstance(measures, str):
        measures = (measures,)
    names = list(dict.fromkeys(measures))
    if not names:
        raise ValueError("measures is empty: give names such as ('ndcg@10', 'recall@100')")
    by_measure = {}
    for name in names:
        by_measure.setdefault(_measure(name), []).append(name)
    if missing not in MISSING:
        raise ValueError(f"missing must be one of {', '.join(MISSING)}, got {missing!r}")
    judged = judged_queries(qrels)
    if not judged:
        raise ValueError("the qrels have no relevant document (relevance >= 1): nothing to evaluate")
    if missing == "skip":
        judged = [q for q in judged if run.get(q)]
        if not judged:
            raise ValueError("the run ranks none of the qrels' judged queries: nothing to evaluate with "
                             "missing=skip (same dataset and split?)")
    row = {q: i for i, q in enumerate(judged)}
    qrels_in = {q: {d: int(r) for d, r in qrels[q].items()} for q in judged}
    run_in = {q: {d: float(s) for d, s in docs.items()} for q, docs in run.items() if q in row and docs}
    values = {name: np.zeros(len(judged)) for name in names}
    if run_in:
        for metric in ir_measures.iter_calc(list(by_measure), qrels_in, run_in):
            for name in by_measure[metric.measure]:
                values[name][row[metric.query_id]] = float(metric.value)
    return judged, values


def evaluate_run(
    run: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    measures: Sequence[str] = MEASURES,
    missing: str = "zero",
) -> dict[str, float]:
    """Mean of each measure over the qrels' queries with a relevant document.

    Returns ``{name: value}`` with the names as given (``"ndcg@10"``,
    ``"mrr@10"``, ``"recall@100"``, ``"recall@1000"`` by default). Queries the
    run has but the qrels do not are ignored; qrels queries missing from the
    run (or with an empty ranking) count 0 (``missing="zero"``) or are left out
    of the mean (``missing="skip"``); :func:`missing_queries` names them.
    """
    _, values = evaluate_per_query(run, qrels, measures, missing)
    return {name: float(v.mean()) for name, v in values.items()}


def evaluate_ranked(
    query_ids: Sequence[str],
    ids: np.ndarray,
    scores: np.ndarray,
    doc_ids: Sequence[str],
    qrels: Mapping[str, Mapping[str, int]],
    measures: Sequence[str] = MEASURES,
) -> dict[str, float]:
    """:func:`evaluate_run` on search results given as arrays (doc indices, ``-1`` pads skipped)."""
    ids, scores = np.asarray(ids), np.asarray(scores)
    if ids.ndim != 2 or ids.shape != scores.shape or ids.shape[0] != len(query_ids):
        raise ValueError(
            f"ids {ids.shape} and scores {scores.shape} must be [queries, k] with one row per query id "
            f"({len(query_ids)})"
        )
    run: dict[str, dict[str, float]] = {}
    for qid, row_ids, row_scores in zip(query_ids, ids.tolist(), scores.tolist()):
        run[qid] = {doc_ids[d]: s for d, s in zip(row_ids, row_scores) if d >= 0}
    return evaluate_run(run, qrels, measures)
