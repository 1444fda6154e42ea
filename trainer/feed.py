"""The trainer's table of hard negatives, and the warm-up sources that fill it.

The table holds, for every training query, the newest list of negatives it
has received (``keep`` corpus indices, -1 padded) and the version (checkpoint
step) that list came from. Warm-up negatives count as version 0. The async
feed (``link.TrainerLink``) overwrites rows chunk by chunk as a
refresh streams in, so a step can use fresh negatives before the whole
refresh has ended.
"""

from __future__ import annotations

import json
import os
import logging
from typing import Any, Sequence

import numpy as np

from ance.data.bm25 import bm25_rank
from ance.run.errors import CheckpointError, ConfigError, DataError
from ance.negatives.files import MAGIC, MAX_LINE_CHARS, read_negatives_lines
from ance.negatives.select import select_negatives

log = logging.getLogger(__name__)


class NegativesTable:
    def __init__(self, n_queries: int, keep: int):
        self.neg = np.full((n_queries, keep), -1, dtype=np.int32)
        self.version = np.zeros(n_queries, dtype=np.int64)

    @property
    def keep(self) -> int:
        return self.neg.shape[1]

    def update(self, q_idx: np.ndarray, neg: np.ndarray, version: int) -> None:
        q_idx = np.asarray(q_idx, dtype=np.int64)
        if len(q_idx) and (q_idx.min() < 0 or q_idx.max() >= len(self.version)):
            raise ValueError(f"negatives for query index {int(q_idx.max())} but the table has "
                             f"{len(self.version)} queries; trainer and broker load different data")
        width = min(self.keep, neg.shape[1])
        rows = np.full((len(q_idx), self.keep), -1, dtype=np.int32)
        rows[:, :width] = neg[:, :width]
        self.neg[q_idx] = rows
        self.version[q_idx] = version

    def batch_version(self, q_idx: np.ndarray) -> int:
        """The oldest version among a batch's queries: what its gap is measured from."""
        return int(self.version[q_idx].min())

    def state_dict(self) -> dict[str, Any]:
        return {"neg": self.neg.copy(), "version": self.version.copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["neg"].shape[0] != self.neg.shape[0]:
            raise ValueError("the checkpoint's negatives table was made for another query set")
        self.neg = np.array(state["neg"], dtype=np.int32)
        self.version = np.array(state["version"], dtype=np.int64)


def check_table(table: NegativesTable, n_docs: int, query_ids: Sequence[str], where: Any) -> None:
    """A table restored from a checkpoint names documents of this corpus only (-1: none), else
    :class:`CheckpointError` naming ``where`` and the first bad row (its query): an id past the corpus
    failed deep in the first step's tokenization."""
    bad = (table.neg < -1) | (table.neg >= n_docs)
    if bad.any():
        row = int(np.flatnonzero(bad.any(axis=1))[0])
        doc = int(table.neg[row][bad[row]][0])
        raise CheckpointError(f"{where}: negatives table row {row} (query {query_ids[row]!r}) names document "
                              f"{doc}, but the corpus has {n_docs}; the checkpoint is damaged or of other data: "
                              "resume from an older checkpoint (move this one aside)")


_MINE_HINT = ("Mine with the run's data settings: ance mine --data DATA.path --split DATA.train_split --eval-split "
              "DATA.eval_split --max-docs DATA.max_docs --max-queries DATA.max_queries --subset-seed "
              "DATA.subset_seed ...")


def fill_static(table: NegativesTable, path: str, query_ids: Sequence[str], doc_ids: Sequence[str],
                fingerprint: str | None = None, min_coverage: float = 0.0) -> int:
    """Load a negatives file (``ance mine`` output) as version 0; return queries covered.

    A query is covered when its row lists at least one document (``qid<TAB>`` alone is not);
    an uncovered query gets random negatives, so any gap is a warning (:func:`coverage_gap`), and
    a file covering less than ``min_coverage`` (``negatives.static_min_coverage``) of the queries is
    refused. ``fingerprint`` (the run's ``Dataset.fingerprint``): when the file's ids do
    not resolve and its header says it was mined from other data, the error
    says so and how to mine a matching file.
    """
    if not os.path.isfile(path):  # a folder, a FIFO (open() blocked for ever), /dev/zero (read without end)
        raise DataError(path, None, "not a regular file; give the negatives file `ance mine` wrote")
    theirs = _header_fingerprint(path)
    if fingerprint is not None and theirs is not None and theirs != fingerprint:
        raise DataError(path, 1, f"mined from other data (fingerprint {theirs}, this run's {fingerprint}). "
                                 f"{_MINE_HINT}")
    try:
        header, q_idx, neg, lines = read_negatives_lines(path, {q: i for i, q in enumerate(query_ids)},
                                                         {d: i for i, d in enumerate(doc_ids)}, keep=table.keep)
    except DataError as exc:
        theirs = _header_fingerprint(path)
        if fingerprint is None or theirs is None or theirs == fingerprint:
            raise
        raise DataError(path, None, f"mined from other data (fingerprint {theirs}, this run's {fingerprint}): "
                                    f"{exc}. {_MINE_HINT}") from None
    if len(q_idx) == 0:
        raise DataError(path, None, "no query of this run's training split is in the file; mine one for this data "
                                    "with `ance mine`")
    listed = (neg >= 0).any(axis=1)
    empty = [(int(n), query_ids[q]) for n, q in zip(lines[~listed], q_idx[~listed])]
    covered = int(listed.sum())
    gap = coverage_gap(path, covered, len(query_ids), empty)
    if not covered:
        raise DataError(path, None, f"{gap}: no query has a negative; mine one for this data with `ance mine`")
    if gap and covered < min_coverage * len(query_ids):
        raise DataError(path, None, f"{gap}; that is below negatives.static_min_coverage={min_coverage:g}: mine "
                                    "it for this run's training split (`ance mine`), or set "
                                    "negatives.static_min_coverage=0 to train anyway")
    if gap:
        log.warning("static negatives: %s: %s", path, gap)
    table.update(q_idx[listed], neg[listed], 0)
    log.info("static negatives: %d of %d queries from %s", covered, len(query_ids), path)
    return covered


def coverage_gap(path: str, covered: int, n_queries: int, empty: Sequence[tuple[int, str]]) -> str | None:
    """What a static file leaves uncovered, in words (None when it covers every query): the count, the
    share, and the rows that list a query with no document (``path:line``, the first three)."""
    if covered >= n_queries:
        return None
    text = (f"has negatives for {covered} of {n_queries} training queries ({covered / n_queries:.0%}); "
            f"the other {n_queries - covered} get random negatives")
    if empty:
        shown = ", ".join(f"{path}:{line} ({qid!r})" for line, qid in empty[:3])
        text += (f"; {len(empty)} listed with no document, counted as not covered: {shown}"
                 + (f" and {len(empty) - 3} more" if len(empty) > 3 else ""))
    return text


def check_given(cfg: Any, dataset: Any) -> None:
    """Before a run: negatives.source/warmup/mix_static static without a static_file needs negatives in the data."""
    neg = cfg.negatives
    wanted = "static" in (neg.source, neg.warmup if neg.source == "async" else None) or neg.mix_static > 0
    split = dataset.split(cfg.data.train_split)
    if wanted and not neg.static_file and not any(len(r) for r in split.negatives or ()):
        raise ConfigError(f"{cfg.data.path} holds no negatives for the training queries, so negatives.source, "
                          "warmup or mix_static static has none to use: give negatives.static_file (make one with "
                          "`ance mine`) or use warmup inbatch or bm25")


def fill_given(table: NegativesTable, negatives: Sequence[np.ndarray] | None, source: str) -> int:
    """The data's own negatives (a Tevatron file's negative passages, a triplet's negatives; file order,
    the first ``keep``) as version 0, as a ``negatives.static_file`` would be; return queries covered."""
    rows = [r for r in negatives or () if len(r)]
    if not rows:
        raise ConfigError(f"{source} holds no negatives for the training queries, so negatives.source or "
                          "negatives.warmup static has none to use: give negatives.static_file (make one with "
                          "`ance mine`) or use warmup inbatch or bm25")
    neg = np.full((len(negatives), table.keep), -1, dtype=np.int32)
    for i, row in enumerate(negatives):
        row = np.asarray(row[: table.keep], dtype=np.int32)
        neg[i, : len(row)] = row
    table.update(np.arange(len(negatives)), neg, 0)
    log.info("static negatives: %d of %d queries from the data's own negatives (%s)", len(rows), len(negatives),
             source)
    return len(rows)


def _header_fingerprint(path: str) -> str | None:
    """The ``data_fingerprint`` a negatives file's header records, or None."""
    try:
        with open(path, encoding="utf-8") as fh:
            line = fh.readline(MAX_LINE_CHARS).rstrip("\r\n")
        header = json.loads(line[len(MAGIC):]) if line.startswith(MAGIC) else {}
    except (OSError, ValueError):
        return None
    return header.get("data_fingerprint") if isinstance(header, dict) else None


def fill_bm25(table: NegativesTable, passages: Sequence[str], query_texts: Sequence[str],
              positives: Sequence[np.ndarray], *, depth: int, rank_window: tuple[int, int],
              sampling: str, seed: int, rank_decay: float = 10.0) -> None:
    """BM25 warm-up negatives (the ANCE paper's warm-up), as version 0 (no scores: no denoising)."""
    ranked = bm25_rank(passages, query_texts, depth)
    neg = select_negatives(ranked, positives, rank_window=rank_window, keep=table.keep,
                           sampling=sampling, rng=np.random.default_rng(seed), rank_decay=rank_decay)
    table.update(np.arange(len(query_texts)), neg, 0)
