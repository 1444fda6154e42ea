"""Which queries, positives and negatives make up each training step.

Everything here is deterministic given its state, and the state is a small
dict saved in every checkpoint, so ``--resume`` continues with the exact batch
an uninterrupted run would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ance.run.errors import ConfigError


class QuerySampler:
    """Epochs of shuffled query indices, cut into global batches of ``batch_size``.

    A batch never straddles an epoch boundary; the tail of an epoch shorter
    than a batch is dropped (every step sees a full batch, which the loss and
    DDP slicing need).
    """

    def __init__(self, n_queries: int, batch_size: int, seed: int, unit: str = "training queries"):
        if n_queries < batch_size:
            raise ValueError(f"batch_size={batch_size} exceeds the {n_queries} {unit}; "
                             "lower train.batch_size or use more queries")
        self.n = n_queries
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self.offset = 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def next_batch(self) -> np.ndarray:
        if self.offset + self.batch_size > self.n:
            self.epoch += 1
            self.offset = 0
            self._order = self._permutation(self.epoch)
        batch = self._order[self.offset:self.offset + self.batch_size]
        self.offset += self.batch_size
        return batch.astype(np.int64)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "offset": self.offset, "n": self.n, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("by", "query") != "query":
            raise ValueError("the checkpoint sampled by (query, positive) pair; resume with train.sample_by=pair")
        if state["n"] != self.n or state["seed"] != self.seed:
            raise ValueError("the checkpoint's sampler was made for another query set or seed")
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])
        self._order = self._permutation(self.epoch)


class PairSampler:
    """Epochs of shuffled (query, positive) pairs: a query with three labelled
    positives comes three times a pass, each time with one of them (the way
    sentence-transformers' trainers read a pairs dataset). Same batching rules
    and state as :class:`QuerySampler`, over pairs."""

    def __init__(self, positives: Sequence[np.ndarray], batch_size: int, seed: int):
        lengths = np.fromiter((len(p) for p in positives), dtype=np.int64, count=len(positives))
        self.pair_query = np.repeat(np.arange(len(positives), dtype=np.int64), lengths)
        self.pair_positive = (np.concatenate([np.asarray(p, dtype=np.int64) for p in positives])
                              if len(positives) else np.empty(0, np.int64))
        self.pairs = QuerySampler(len(self.pair_query), batch_size, seed, unit="(query, positive) training pairs")

    def next_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """Query indices and their positives for the next batch."""
        idx = self.pairs.next_batch()
        return self.pair_query[idx], self.pair_positive[idx]

    def state_dict(self) -> dict[str, Any]:
        return {**self.pairs.state_dict(), "by": "pair"}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("by") != "pair":
            raise ValueError("the checkpoint sampled by query; resume with train.sample_by=query")
        self.pairs.load_state_dict({k: v for k, v in state.items() if k != "by"})


@dataclass
class Batch:
    """One global batch: query indices, their positives and hard negatives (corpus indices)."""

    queries: np.ndarray            # int64 [B] train query indices
    positives: np.ndarray          # int64 [B] one sampled positive per query
    negatives: np.ndarray          # int64 [B, n] hard negatives (n may be 0)
    negatives_version: int         # oldest negatives version among the batch's queries

    def passages(self) -> np.ndarray:
        """Positives first, then the hard negatives query by query: the loss's layout."""
        return np.concatenate([self.positives, self.negatives.reshape(-1)])


def sample_positives(q_idx: np.ndarray, positives: Sequence[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """One labelled positive per query, uniformly among its positives."""
    out = np.empty(len(q_idx), dtype=np.int64)
    for row, q in enumerate(q_idx):
        pos = positives[q]
        out[row] = pos[rng.integers(len(pos))] if len(pos) > 1 else pos[0]
    return out


def check_negatives_fit(positives: Sequence[np.ndarray], n_docs: int, n: int, query_ids: Sequence[str]) -> None:
    """Before training: every query has ``n`` documents that are not its positives to draw negatives
    from (a one-document corpus has none), else :class:`ConfigError` naming the query."""
    if n <= 0:
        return
    for q, pos in enumerate(positives):
        free = n_docs - len(np.unique(pos))
        if free < n:
            raise ConfigError(f"negatives.n_per_query={n}, but query {query_ids[q]!r} has only {free} document(s) "
                              f"in the {n_docs}-document corpus that are not its positives; use a larger corpus "
                              "(data.max_docs) or fewer negatives (negatives.n_per_query, or negatives.source="
                              "inbatch)")


def sample_negatives(
    table: np.ndarray,
    q_idx: np.ndarray,
    positives: Sequence[np.ndarray],
    n: int,
    n_docs: int,
    rng: np.random.Generator,
    static: np.ndarray | None = None,
    mix: float = 0.0,
) -> np.ndarray:
    """``n`` hard negatives per query drawn from its row of ``table`` (-1 = empty).

    With ``static`` (a second table, the static file's negatives) and ``mix``
    > 0, each of a query's ``n`` negatives comes from its ``static`` row with
    probability ``mix`` (a binomial count a query), the rest from ``table``; a
    source with too few candidates hands its share to the other.

    A query's own positives are never drawn, even if the table lists them (a
    static file from elsewhere). Where a row holds fewer than ``n`` usable
    negatives (in-batch warm-up, a short list) the rest are random corpus
    documents that are not positives of the query, so every step has the same
    shape.
    """
    out = np.empty((len(q_idx), n), dtype=np.int64)
    if n == 0:
        return out
    if static is not None and mix > 0:
        return _sample_mixed(table, static, q_idx, positives, n, n_docs, rng, mix)
    for row, q in enumerate(q_idx):
        pos = np.asarray(positives[q])
        if table is not None:
            listed = table[q]
            cand = listed[(listed >= 0) & ~np.isin(listed, pos)]
        else:
            cand = np.empty(0, dtype=np.int64)
        if len(cand) >= n:
            out[row] = rng.choice(cand, size=n, replace=False)
            continue
        out[row] = _fill_at_random([int(c) for c in cand], pos, n, n_docs, rng, q)
    return out


def _fill_at_random(chosen: list[int], pos: np.ndarray, n: int, n_docs: int, rng: np.random.Generator,
                    q: int) -> list[int]:
    """``chosen`` topped up to ``n`` with random documents that are neither positives nor chosen."""
    if len(chosen) >= n:
        return chosen
    if n_docs - len(pos) < n:
        raise ValueError(f"query {int(q)} needs {n} negatives but the corpus has only "
                         f"{n_docs - len(pos)} documents that are not its positives")
    pos_set = set(int(p) for p in pos)
    while len(chosen) < n:
        d = int(rng.integers(n_docs))
        if d not in pos_set and d not in chosen:
            chosen.append(d)
    return chosen


def _usable(row: np.ndarray, pos: np.ndarray) -> np.ndarray:
    return row[(row >= 0) & ~np.isin(row, pos)]


def _sample_mixed(table: np.ndarray, static: np.ndarray, q_idx: np.ndarray, positives: Sequence[np.ndarray],
                  n: int, n_docs: int, rng: np.random.Generator, mix: float) -> np.ndarray:
    out = np.empty((len(q_idx), n), dtype=np.int64)
    n_static = rng.binomial(n, mix, size=len(q_idx))
    for row, q in enumerate(q_idx):
        pos = np.asarray(positives[q])
        fresh = _usable(table[q], pos) if table is not None else np.empty(0, np.int64)
        old = _usable(static[q], pos)
        k = min(int(n_static[row]), len(old))
        k = max(k, n - len(fresh))          # too few refreshed: more static ones
        k = min(k, len(old))
        chosen = [int(d) for d in rng.choice(old, size=k, replace=False)] if k else []
        fresh = fresh[~np.isin(fresh, chosen)]
        take = min(n - k, len(fresh))
        chosen += [int(d) for d in rng.choice(fresh, size=take, replace=False)] if take else []
        out[row] = _fill_at_random(chosen, pos, n, n_docs, rng, q)
    return out
