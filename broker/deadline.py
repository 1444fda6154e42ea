"""Shard deadlines: a worker that holds a shard and makes no progress loses it, and repeated misses exclude it.

Heartbeats only say a worker's I/O thread is alive; a worker that says "busy"
for ever and never answers (broken, wedged, or lying) would stall every refresh
(hostile report 2026-12-03, finding 4). So the broker also watches *progress*:
the shard's assignment, then every ``topk`` chunk of it. A shard that makes no
progress within its bound is re-queued for another worker, and a worker that
misses ``max_misses`` deadlines is excluded (no more shards for that process;
a restarted one, with another pid, starts afresh) and reported.

The bound comes from measured rates: ``factor`` times the slowest recent
``shard_s`` per document of finished shards, times the shard's documents
(never below ``floor_s``: the hub passes max(3 x worker_timeout_s, 30 s)); before any shard has finished, ``broker.shard_deadline_s``.
"""

from __future__ import annotations

import collections
from typing import Any

from .refresh import RefreshState


class ShardDeadlines:
    def __init__(self, first_bound_s: float, floor_s: float, *, factor: float = 3.0, max_misses: int = 2):
        self.first_bound_s = float(first_bound_s)
        self.floor_s = float(floor_s)
        self.factor = float(factor)
        self.max_misses = int(max_misses)
        self._s_per_doc: collections.deque = collections.deque(maxlen=16)  # of finished shards
        self._progress: dict[tuple[int, int, str], float] = {}  # (job, shard, worker) -> last progress
        self.misses: dict[str, int] = collections.Counter()

    def measured(self, stats: dict[str, Any]) -> None:
        """A ``shard_done``'s stats: its time per document joins the rates."""
        n, t = stats.get("n_docs"), stats.get("shard_s")
        if t is None:
            t = sum(v for k, v in stats.items() if k in ("load_s", "encode_s", "index_s", "search_s", "transfer_s")
                    and isinstance(v, (int, float)))
        if isinstance(n, (int, float)) and n > 0 and isinstance(t, (int, float)) and t >= 0:
            self._s_per_doc.append(float(t) / float(n))

    def bound(self, n_docs: int) -> float:
        if not self._s_per_doc:
            return self.first_bound_s
        return max(self.floor_s, self.factor * max(self._s_per_doc) * n_docs)

    def progress(self, job_id: int, shard: int, worker: str, now: float) -> None:
        self._progress[(job_id, shard, worker)] = now

    def check(self, state: RefreshState, now: float) -> list[str]:
        """Re-queue the shards past their deadline; return a log line for each (and each exclusion)."""
        job = state.job
        if job is None:
            self._progress.clear()
            return []
        out = []
        live = set()
        for shard, name in list(job.owner.items()):
            key = (job.job_id, shard, name)
            live.add(key)
            since = self._progress.setdefault(key, now)  # first seen: assigned now
            lo, hi = job.ranges[shard]
            bound = self.bound(hi - lo)
            w = state.workers.get(name)
            if now - since <= bound or w is None or w.busy_with != (job.job_id, shard):
                continue
            state._requeue(w, f"no progress within {bound:.0f}s (shard deadline)")
            self.misses[name] += 1
            out.append(f"v{job.version} shard {shard}: worker {name} made no progress within {bound:.1f}s; "
                       f"re-queued ({self.misses[name]} missed deadline(s))")
            if self.misses[name] >= self.max_misses and state.excluded.get(name) != w.pid:
                state.excluded[name] = w.pid
                state._worker_event(w, "excluded: missed shard deadlines")
                out.append(f"worker {name} (pid {w.pid}) excluded: missed {self.misses[name]} shard deadlines; "
                           "restart it to let it in again")
        self._progress = {k: v for k, v in self._progress.items() if k in live}
        return out
