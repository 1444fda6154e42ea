"""Evaluation: TREC run files, qrels, and metrics through ir-measures.

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
from pathlib import Path
from typing import Mapping, Sequence

import ir_measures
import numpy as np
from scipy import stats

from .errors import DataError
from .fsio import atomic_write_lines

MEASURES = ("ndcg@10", "mrr@10", "recall@100", "recall@1000")
_SPACE = re.compile(r"\s")
_NAME = re.compile(r"^(ndcg|mrr|recall|map|precision)@([1-9][0-9]*)$")


# --------------------------------------------------------------------------- files


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


# --------------------------------------------------------------------------- metrics


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


def evaluate_per_query(
    run: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    measures: Sequence[str] = MEASURES,
) -> tuple[list[str], dict[str, np.ndarray]]:
    """Each measure's value for every qrels query with a relevant document.

    Returns ``(query_ids, {name: float64 [n]})``, query ids sorted, values in
    that order; a query missing from the run (or with an empty ranking) is 0.
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
    judged = sorted(q for q, docs in qrels.items() if any(r > 0 for r in docs.values()))
    if not judged:
        raise ValueError("the qrels have no relevant document (relevance >= 1): nothing to evaluate")
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
) -> dict[str, float]:
    """Mean of each measure over the qrels' queries with a relevant document.

    Returns ``{name: value}`` with the names as given (``"ndcg@10"``,
    ``"mrr@10"``, ``"recall@100"``, ``"recall@1000"`` by default). Queries the
    run has but the qrels do not are ignored; qrels queries missing from the
    run (or with an empty ranking) count 0.
    """
    _, values = evaluate_per_query(run, qrels, measures)
    return {name: float(v.mean()) for name, v in values.items()}


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
    *, n_boot: int = 10000, seed: int = 0, level: float = 0.95,
) -> dict[str, dict]:
    """:func:`paired_comparison` of two runs for each measure, over the qrels' judged queries
    (a query one run lacks counts 0 for it, as in :func:`evaluate_run`).

    Either side may be a list of runs, e.g. the seeds of one recipe: each query's value is then the
    mean over that side's runs before pairing (seeds pooled per query; the test stays over queries)."""
    va, vb = (_seed_mean(side, qrels, measures) for side in (run_a, run_b))
    return {name: paired_comparison(va[name], vb[name], n_boot=n_boot, seed=seed, level=level) for name in va}


def _seed_mean(runs, qrels, measures) -> dict[str, np.ndarray]:
    runs = [runs] if isinstance(runs, Mapping) else list(runs)
    if not runs:
        raise ValueError("a side of the comparison has no run")
    per_run = [evaluate_per_query(r, qrels, measures)[1] for r in runs]
    return {name: np.mean([v[name] for v in per_run], axis=0) for name in per_run[0]}


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
