"""What one refresh measured: the broker's accounting for the refresh in progress
(:class:`RefreshTally`) and the ``stats`` of its ``version_done`` message and
"refresh" metrics event (:meth:`RefreshTally.stats`; fields in docs/design.md,
"Metrics").

Kept apart from the broker's event loop: the broker adds to a tally as chunks
arrive and asks it for the stats once, when the refresh completes.

``version_done.stats`` (what the trainer logs as the ``refresh`` event):

* ``load_s``, ``encode_s``, ``index_s``, ``search_s``, ``transfer_s`` (the
  shard stages of :data:`ance.wire.protocol.SHARD_STAGES`), ``query_encode_s`` and
  ``knn_s`` (the parts of ``search_s``), ``shard_s``: the slowest shard's
  time for each (shards run in parallel, so the slowest one is what the
  refresh waited for).
* ``encode_docs_per_s``: ``n_docs / encode_s`` as above, the pool's effective
  corpus-encoding rate (not the sum of per-worker rates, which ignores
  stragglers).
* ``queue_s``: checkpoint announced to job started, both on the broker's clock (the trainer's
  ``written_at`` is another host's clock: a skewed one gave -3600 s);
  ``merge_s``, ``select_s``, ``persist_s``, ``send_s``: broker time spent
  merging the shards' top-k, selecting negatives, appending them to the
  partial file (fsync) and sending them to the trainer, summed over the chunks;
  ``refresh_s``: job start to version complete, on the broker's clock.
* ``overlap``: mean fraction of the previous version's negatives of a query
  that are again candidates, i.e. inside the new version's rank window
  (ANCE's diagnostic: 1 means the refresh found nothing new); None for the
  first version.
* ``eval_ndcg@10``, ``eval_mrr@10``, ``eval_recall@100`` (and
  ``eval_recall@1000`` when the eval depth reaches 1000) on the eval split.
* ``shards``: one row per shard (:func:`shard_rows`): shard, worker, device,
  n_docs, every stage above, ``encode_docs_per_s``, ``gpu_peak_bytes`` and
  ``host_peak_bytes`` of the worker process; ``gpu_peak_bytes`` (the largest)
  and ``broker_host_peak_bytes`` (the broker's max RSS) beside them.
* ``n_docs``, ``n_queries``, ``depth``, ``keep``, ``reassigned`` (shards handed
  to another worker), ``replayed`` (True when the version is re-streamed from
  disk rather than just computed; its timings are then absent).
"""

from __future__ import annotations

import json
import resource
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ance.eval.metrics import evaluate_ranked
from ance.wire.protocol import BROKER_STAGES, SHARD_STAGES
from .refresh import Job

#: per-shard worker stages; a refresh reports the slowest shard's
STAGES = SHARD_STAGES + ("query_encode_s", "knn_s", "shard_s")
#: per-shard peak memory (bytes) the workers report
SHARD_MEMORY = ("gpu_peak_bytes", "host_peak_bytes")
#: broker stages summed over the chunks of a refresh
CHUNK_TIMERS = tuple(k for k in BROKER_STAGES if k != "queue_s")
#: ir-measures names -> the stats' keys
EVAL_MEASURES = {"ndcg@10": "eval_ndcg@10", "mrr@10": "eval_mrr@10", "recall@100": "eval_recall@100",
                 "recall@1000": "eval_recall@1000"}


def shard_rows(job: Job) -> list[dict[str, Any]]:
    """One row per shard of a finished job: who did it, on what, and each stage's seconds,
    so a user sees which worker or stage held the refresh back (``ance monitor``, ``ance report``)."""
    rows = []
    for shard in sorted(job.done):
        s = job.done[shard]
        lo, hi = job.ranges[shard]
        row: dict[str, Any] = {"shard": shard, "worker": job.done_by.get(shard), "device": s.get("device"),
                               "n_docs": hi - lo}
        for key in STAGES + SHARD_MEMORY:
            v = s.get(key)
            row[key] = v if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) else None
        enc = row.get("encode_s")
        row["encode_docs_per_s"] = (hi - lo) / enc if enc else None
        rows.append(row)
    return rows


def eval_depth(depth: int) -> int:
    """Depth searched for the eval split: enough for recall@100 at least."""
    return max(100, int(depth))


@dataclass
class RefreshTally:
    """Accumulators of one refresh: broker stage times, the overlap with the previous
    negatives, and the eval split's merged top-k (``n_eval`` queries; 0 = no eval)."""

    n_eval: int = 0
    depth: int = 200
    times: dict[str, float] = field(default_factory=lambda: dict.fromkeys(CHUNK_TIMERS, 0.0))
    overlap_sum: float = 0.0
    overlap_queries: int = 0
    eval_ids: np.ndarray | None = None
    eval_scores: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.n_eval:
            k = eval_depth(self.depth)
            self.eval_ids = np.full((self.n_eval, k), -1, np.int64)
            self.eval_scores = np.full((self.n_eval, k), -np.inf, np.float32)

    def add_time(self, stage: str, seconds: float) -> None:
        self.times[stage] += seconds

    def add_overlap(self, mean_overlap: float, n_queries: int) -> None:
        """``mean_overlap`` of ``n_queries`` queries' new top-k with their previous negatives."""
        self.overlap_sum += mean_overlap * n_queries
        self.overlap_queries += n_queries

    def add_eval(self, q_lo: int, q_hi: int, ids: np.ndarray, scores: np.ndarray) -> None:
        if self.eval_ids is None:
            raise ValueError("this refresh has no eval split")
        self.eval_ids[q_lo:q_hi] = ids
        self.eval_scores[q_lo:q_hi] = scores

    def stats(self, job: Job, *, n_docs: int, n_train: int, keep: int, eval_split=None, doc_ids=None,
              now: float | None = None) -> dict[str, Any]:
        """The refresh's stats: the slowest shard's stages, docs/s, the broker's times, the
        overlap, sizes, and with ``eval_split`` (its ids and qrels) the eval measures of the
        merged eval top-k. JSON- and msgpack-safe."""
        shards = list(job.done.values())
        stats: dict[str, Any] = {}
        for key in STAGES:
            vals = [float(s[key]) for s in shards if isinstance(s.get(key), (int, float))]
            stats[key] = max(vals) if vals else None
        enc = stats.get("encode_s")
        stats["encode_docs_per_s"] = n_docs / enc if enc else None
        stats["queue_s"] = job.started_at - job.ckpt.received_at
        stats.update(self.times)
        stats["refresh_s"] = (time.time() if now is None else now) - job.started_at
        stats["overlap"] = self.overlap_sum / self.overlap_queries if self.overlap_queries else None
        stats.update(n_docs=n_docs, n_queries=n_train, depth=self.depth, keep=keep,
                     reassigned=job.reassigned, replayed=False)
        stats["shards"] = shard_rows(job)
        peaks = [r["gpu_peak_bytes"] for r in stats["shards"] if isinstance(r.get("gpu_peak_bytes"), int)]
        stats["gpu_peak_bytes"] = max(peaks) if peaks else None
        stats["broker_host_peak_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        if job.eval and eval_split is not None and self.eval_ids is not None:

            t0 = time.perf_counter()
            measures = [m for m in EVAL_MEASURES if m != "recall@1000" or eval_depth(self.depth) >= 1000]
            metrics = evaluate_ranked(eval_split.ids, self.eval_ids, self.eval_scores, doc_ids, eval_split.qrels,
                                      measures=measures)
            stats.update({EVAL_MEASURES[m]: v for m, v in metrics.items()})
            stats["eval_s"] = time.perf_counter() - t0
        return json_safe(stats)


def json_safe(stats: dict[str, Any]) -> dict[str, Any]:
    """NaN/inf -> None and numpy scalars -> Python, so stats survive JSON and msgpack alike."""
    out = {}
    for k, v in stats.items():
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, float) and not np.isfinite(v):
            v = None
        out[k] = v
    json.dumps(out)  # fail here, not in a sink
    return out
