"""The broker's pure state machine: workers, refresh jobs, shards, chunk merging.

No sockets, no files, no clocks: every method takes ``now`` and returns what
the broker must do, so the whole refresh logic is tested without processes.
:class:`ance.broker.hub.Broker` is the thin ZeroMQ loop around it.

A refresh of checkpoint ``version`` (its step) runs as one *job*: the corpus
``[0, n_docs)`` is split into ``n_shards`` contiguous ranges, ``n_shards`` being
the number of live workers when the job starts. Each shard goes to one idle
worker, which streams the top-k of every query chunk (``topk``) and then
``shard_done``. A chunk is *ready* when every shard has sent it: the state
merges the per-shard lists (``merge_topk``) and hands the result back. A worker
that goes silent, disconnects or re-joins idle has its shard re-queued for the
next idle worker; chunks already received stay (a checkpoint's results are
deterministic), so a duplicate chunk from the new worker is ignored.

One job runs at a time and at most one checkpoint waits: a newer announcement
replaces the waiting one (skipping stale checkpoints, as ANCE does).

Monitor events (``{"event": "worker"|"shard", ...}``) accumulate in
:attr:`RefreshState.events`; the broker drains them with :meth:`drain_events`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ance.search.topk import merge_topk
SPLITS = ("train", "eval")


class RefreshError(ValueError):
    """A message that does not fit the running job (wrong shard, range, shape...)."""


@dataclass
class Checkpoint:
    step: int
    path: str
    received_at: float  # when the broker learned of it, on its own clock (a peer's clock is not ours)


@dataclass
class Assignment:
    """One shard of one job, as sent in a ``job`` message."""
    job_id: int
    version: int
    ckpt_path: str
    shard: int
    n_shards: int
    doc_lo: int
    doc_hi: int
    eval: bool


@dataclass
class WorkerInfo:
    name: str
    joined_at: float
    last_seen: float
    busy_with: tuple[int, int] | None = None    # (job_id, shard) assigned by us
    foreign_job: int | None = None               # busy with a job we do not know (re-joined mid-shard)
    device: str = ""
    pid: int = 0
    ready: bool = False                          # heartbeated since hello: it reads and answers


    @property
    def idle(self) -> bool:
        return self.busy_with is None and self.foreign_job is None


@dataclass
class ChunkReady:
    """A query chunk that every shard has sent, merged."""
    version: int
    split: str
    chunk: int
    q_lo: int
    q_hi: int
    scores: np.ndarray  # float32 [q_hi - q_lo, k]
    ids: np.ndarray     # int64 [q_hi - q_lo, k], global doc indices, -1 pad


@dataclass
class Job:
    job_id: int
    ckpt: Checkpoint
    n_shards: int
    ranges: list[tuple[int, int]]
    eval: bool
    started_at: float
    queued: list[int] = field(default_factory=list)             # shards waiting for a worker
    owner: dict[int, str] = field(default_factory=dict)         # shard -> worker doing it
    assigned: dict[int, set[str]] = field(default_factory=dict)  # shard -> every worker it was given to
    done: dict[int, dict] = field(default_factory=dict)         # shard -> stats (shard_done)
    done_by: dict[int, str] = field(default_factory=dict)
    failures: dict[int, int] = field(default_factory=dict)
    reassigned: int = 0
    # split -> chunk -> shard -> (scores, ids); dropped once the chunk is merged
    parts: dict[str, dict[int, dict[int, tuple[np.ndarray, np.ndarray]]]] = field(
        default_factory=lambda: {s: {} for s in SPLITS})
    merged: dict[str, set[int]] = field(default_factory=lambda: {s: set() for s in SPLITS})

    @property
    def version(self) -> int:
        return self.ckpt.step


def shard_ranges(n_docs: int, n_shards: int) -> list[tuple[int, int]]:
    """``n_shards`` contiguous ranges covering ``[0, n_docs)``, sizes differing by at most one."""
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    return [(s * n_docs // n_shards, (s + 1) * n_docs // n_shards) for s in range(n_shards)]


def n_chunks(n_queries: int, chunk_queries: int) -> int:
    return (n_queries + chunk_queries - 1) // chunk_queries


def chunk_range(chunk: int, n_queries: int, chunk_queries: int) -> tuple[int, int]:
    return chunk * chunk_queries, min((chunk + 1) * chunk_queries, n_queries)


class RefreshState:
    """Workers, the running job, the waiting checkpoint, and chunk merging.

    ``depth``/``eval_depth``: top-k kept per train/eval query after merging.
    ``max_attempts``: ``shard_failed`` answers per shard before the job is
    abandoned (a checkpoint that cannot be loaded should not loop forever).
    ``max_shards``: the most workers one job is split over.

    Only *ready* workers (a heartbeat since their hello) get shards, and only
    the worker a shard was given to may report on it, for that job and version:
    a peer that merely said hello can neither stall a refresh nor forge results.
    """

    def __init__(self, n_docs: int, n_train: int, n_eval: int = 0, *, depth: int, eval_depth: int = 100,
                 chunk_queries: int, worker_timeout_s: float, max_attempts: int = 3,
                 latest_version: int = -1, first_job_id: int = 1, max_shards: int = 64):
        if n_docs < 1 or n_train < 1:
            raise ValueError(f"need documents and training queries, got n_docs={n_docs}, n_train={n_train}")
        self.n_docs, self.n_train, self.n_eval = int(n_docs), int(n_train), int(n_eval)
        self.depth, self.eval_depth = int(depth), int(eval_depth)
        self.chunk_queries = int(chunk_queries)
        self.worker_timeout_s = float(worker_timeout_s)
        self.max_attempts = int(max_attempts)
        self.max_shards = int(max_shards)
        self.latest_version = int(latest_version)  # newest complete version
        self.workers: dict[str, WorkerInfo] = {}
        self.job: Job | None = None
        self.pending: Checkpoint | None = None
        self._next_job_id = int(first_job_id)
        self.events: list[dict[str, Any]] = []
        self.excluded: dict[str, int] = {}  # worker name -> pid: missed shard deadlines (broker/deadline.py)

    # ------------------------------------------------------------ helpers
    def n_chunks(self, split: str) -> int:
        return n_chunks(self.n_train if split == "train" else self.n_eval, self.chunk_queries)

    def chunk_range(self, split: str, chunk: int) -> tuple[int, int]:
        return chunk_range(chunk, self.n_train if split == "train" else self.n_eval, self.chunk_queries)

    def drain_events(self) -> list[dict[str, Any]]:
        out, self.events = self.events, []
        return out

    def _worker_event(self, w: WorkerInfo, state: str) -> None:
        self.events.append({"event": "worker", "name": w.name, "state": state, "last_seen": w.last_seen})

    def _shard_event(self, shard: int, worker: str | None, state: str, docs_per_s: float | None = None) -> None:
        job = self.job
        self.events.append({"event": "shard", "version": job.version, "shard": shard, "n_shards": job.n_shards,
                            "worker": worker, "state": state, "docs_per_s": docs_per_s})

    @property
    def live_workers(self) -> list[str]:
        return sorted(self.workers)

    @property
    def ready_workers(self) -> list[str]:
        return sorted(n for n, w in self.workers.items() if w.ready)

    @property
    def shards_done(self) -> int:
        return len(self.job.done) if self.job else 0

    # ---------------------------------------------------------- checkpoints
    def on_checkpoint(self, step: int, path: str, now: float) -> str:
        """Queue checkpoint ``step``, announced at ``now`` (the broker's clock); return what happened (for the log)."""
        newest = max(self.latest_version, self.job.version if self.job else -1)
        if step <= newest:
            return f"ignored checkpoint {step}: not newer than version {newest} (complete or running)"
        if self.pending is not None:
            if step <= self.pending.step:
                return f"ignored checkpoint {step}: checkpoint {self.pending.step} is already waiting"
            skipped = self.pending.step
            self.pending = Checkpoint(int(step), path, float(now))
            return f"checkpoint {step} replaces waiting checkpoint {skipped} (skipped as stale)"
        self.pending = Checkpoint(int(step), path, float(now))
        return f"checkpoint {step} queued" + (f" behind running version {self.job.version}" if self.job else "")

    # --------------------------------------------------------------- workers
    def on_hello(self, name: str, now: float, *, busy_job: int | None = None, device: str = "", pid: int = 0) -> None:
        """A worker (re-)joins. Joining idle while we think it holds a shard means it lost it: re-queue."""
        w = self.workers.get(name)
        if w is None:
            w = self.workers[name] = WorkerInfo(name, joined_at=now, last_seen=now, device=device, pid=pid)
            self._worker_event(w, "joined")
        else:
            w.last_seen, w.device, w.pid = now, device, pid
            self._worker_event(w, "rejoined")
        if w.busy_with is not None and busy_job != w.busy_with[0]:
            self._requeue(w, "worker re-joined without it")
        w.foreign_job = busy_job if (busy_job is not None and (w.busy_with is None or busy_job != w.busy_with[0])) \
            else None

    def on_seen(self, name: str, now: float, *, state: str | None = None) -> bool:
        """Any message from worker ``name``; False when it is unknown (it must say hello)."""
        w = self.workers.get(name)
        if w is None:
            return False
        w.last_seen = now
        if state in ("idle", "busy") and not w.ready:  # heartbeating and warmed up ("warming": no shard yet)
            w.ready = True
            self._worker_event(w, "ready")
        if state == "idle" and w.foreign_job is not None:
            w.foreign_job = None
        return True

    def on_lost(self, name: str, reason: str) -> None:
        w = self.workers.pop(name, None)
        if w is None:
            return
        self._worker_event(w, f"lost: {reason}")
        if w.busy_with is not None:
            self._requeue(w, reason)

    def expire(self, now: float) -> list[str]:
        """Drop workers silent for longer than ``worker_timeout_s``; return their names."""
        gone = [n for n, w in self.workers.items() if now - w.last_seen > self.worker_timeout_s]
        for name in gone:
            self.on_lost(name, f"silent for more than {self.worker_timeout_s:g}s")
        return gone

    def _requeue(self, w: WorkerInfo, reason: str) -> None:
        job_id, shard = w.busy_with
        w.busy_with = None
        job = self.job
        if job is None or job.job_id != job_id or shard in job.done:
            return
        if job.owner.get(shard) == w.name:
            del job.owner[shard]
            job.queued.append(shard)
            job.reassigned += 1
            self._shard_event(shard, w.name, f"requeued: {reason}")

    # ------------------------------------------------------------- assigning
    def assign(self, now: float) -> list[tuple[str, Assignment]]:
        """Start the waiting checkpoint when idle, then hand queued shards to idle workers."""
        if self.job is None and self.pending is not None and self.ready_workers:
            self._start(now)
        job = self.job
        out: list[tuple[str, Assignment]] = []
        if job is None:
            return out
        for name in sorted(self.workers):
            if not job.queued:
                break
            w = self.workers[name]
            if not (w.idle and w.ready) or self.excluded.get(name) == w.pid:
                continue
            shard = job.queued.pop(0)
            w.busy_with = (job.job_id, shard)
            job.owner[shard] = name
            job.assigned.setdefault(shard, set()).add(name)
            lo, hi = job.ranges[shard]
            out.append((name, Assignment(job.job_id, job.version, job.ckpt.path, shard, job.n_shards, lo, hi,
                                         job.eval)))
            self._shard_event(shard, name, "assigned")
        return out

    def _start(self, now: float) -> None:
        ckpt, self.pending = self.pending, None
        n_shards = max(1, min(len(self.ready_workers), self.n_docs, self.max_shards))
        self.job = Job(self._next_job_id, ckpt, n_shards, shard_ranges(self.n_docs, n_shards),
                       eval=self.n_eval > 0, started_at=now, queued=list(range(n_shards)))
        self._next_job_id += 1

    # ------------------------------------------------------------ results
    def _job_for(self, job_id: int) -> Job | None:
        return self.job if self.job is not None and self.job.job_id == job_id else None

    def _check_sender(self, job: Job, sender: str, shard: int, version: int | None, what: str) -> None:
        """Refuse a report from a worker the shard was never given to, or for another version."""
        if not 0 <= shard < job.n_shards:
            raise RefreshError(f"shard {shard} out of range: job {job.job_id} has {job.n_shards} shards")
        if version is not None and version != job.version:
            raise RefreshError(f"{what} for version {version}, but job {job.job_id} refreshes version "
                               f"{job.version}: refused")
        if sender not in job.assigned.get(shard, ()):
            raise RefreshError(f"{what} for shard {shard} of job {job.job_id}, which was not assigned to "
                               f"{sender!r}: refused")

    def is_current(self, job_id: int) -> bool:
        """True when ``job_id`` is the running job (results for others are stale or forged)."""
        return self._job_for(job_id) is not None

    def on_topk(self, sender: str, *, job_id: int, shard: int, split: str, chunk: int, n_chunks: int,
                q_lo: int, q_hi: int, scores: np.ndarray, ids: np.ndarray,
                version: int | None = None) -> list[ChunkReady]:
        """One shard's top-k of one chunk. Returns the chunk merged once every shard has it.

        A chunk of another job (stale) or one already received is ignored
        (``[]``); one that contradicts the job, or comes from a worker the shard
        was not given to, raises :class:`RefreshError`.
        """

        job = self._job_for(job_id)
        if job is None:
            return []
        self._check_sender(job, sender, shard, version, "topk")
        if split not in SPLITS or (split == "eval" and not job.eval):
            raise RefreshError(f"split {split!r} not expected in job {job_id} (eval={job.eval})")
        want = self.n_chunks(split)
        if n_chunks != want or not 0 <= chunk < want:
            raise RefreshError(f"{split} chunk {chunk}/{n_chunks}: this job has {want} {split} chunks")
        lo, hi = self.chunk_range(split, chunk)
        if (q_lo, q_hi) != (lo, hi):
            raise RefreshError(f"{split} chunk {chunk} covers queries [{lo}, {hi}), got [{q_lo}, {q_hi})")
        if ids.ndim != 2 or ids.shape != scores.shape or ids.shape[0] != hi - lo or ids.shape[1] < 1:
            raise RefreshError(f"{split} chunk {chunk}: ids {ids.shape} and scores {scores.shape} must both be "
                               f"[{hi - lo}, k]")
        d_lo, d_hi = job.ranges[shard]
        valid = ids >= 0
        if np.any(valid & ((ids < d_lo) | (ids >= d_hi))) or np.any(ids < -1):
            raise RefreshError(f"shard {shard} returned doc ids outside its range [{d_lo}, {d_hi}) "
                               "(ids must be global corpus indices, -1 for padding)")
        if chunk in job.merged[split]:
            return []
        parts = job.parts[split].setdefault(chunk, {})
        if shard in parts:
            return []
        parts[shard] = (np.asarray(scores, dtype=np.float32), np.asarray(ids, dtype=np.int64))
        if len(parts) < job.n_shards:
            return []
        del job.parts[split][chunk]
        job.merged[split].add(chunk)
        order = sorted(parts)
        k = self.depth if split == "train" else self.eval_depth
        m_scores, m_ids = merge_topk([parts[s][0] for s in order], [parts[s][1] for s in order], k)
        return [ChunkReady(job.version, split, chunk, lo, hi, m_scores, m_ids)]

    def _release(self, sender: str, job_id: int, shard: int) -> None:
        """The worker that sent a shard's end (done or failed) is no longer busy with it."""
        w = self.workers.get(sender)
        if w is None:
            return
        if w.busy_with == (job_id, shard):
            w.busy_with = None
        if w.foreign_job == job_id:
            w.foreign_job = None

    def _report(self, sender: str, job_id: int, shard: int, version: int | None, what: str) -> Job | None:
        """A worker's last word on a shard: checked, the worker freed; the running job it concerns, or
        None when it is stale (another job) or the shard is done already."""
        job = self._job_for(job_id)
        if job is not None:
            self._check_sender(job, sender, shard, version, what)
        self._release(sender, job_id, shard)
        return None if job is None or shard in job.done else job

    def on_shard_done(self, sender: str, *, job_id: int, shard: int, stats: dict, now: float,
                      version: int | None = None) -> bool:
        """``shard_done``; True when it completed the shard (False: stale or duplicate)."""
        job = self._report(sender, job_id, shard, version, "shard_done")
        if job is None:
            return False
        missing = [f"{s}:{c}" for s in (("train", "eval") if job.eval else ("train",))
                   for c in range(self.n_chunks(s)) if c not in job.merged[s]
                   and shard not in job.parts[s].get(c, {})]
        if missing:  # cannot happen over one TCP connection; treat as a failed attempt
            self.on_shard_failed(sender, job_id=job_id, shard=shard,
                                 reason=f"shard_done before chunks {', '.join(missing[:5])}"
                                        f"{' ...' if len(missing) > 5 else ''}")
            return False
        job.done[shard] = dict(stats)
        job.done_by[shard] = sender
        if shard in job.queued:  # a worker we had given up on finished it after all
            job.queued.remove(shard)
        # If another worker was redoing it, it stays busy until its own shard_done (ignored then).
        job.owner.pop(shard, None)
        n_docs = stats.get("n_docs")
        enc = stats.get("encode_s")
        dps = (n_docs / enc) if (isinstance(n_docs, (int, float)) and isinstance(enc, (int, float)) and enc > 0) \
            else None
        self._shard_event(shard, sender, "done", dps)
        return True

    def on_shard_failed(self, sender: str, *, job_id: int, shard: int, reason: str,
                        version: int | None = None) -> str | None:
        """``shard_failed``: re-queue the shard, or abandon the job after ``max_attempts``.

        Returns the reason the job was abandoned, or None.
        """
        job = self._report(sender, job_id, shard, version, "shard_failed")
        if job is None:
            return None
        if job.owner.get(shard) == sender:
            del job.owner[shard]
        job.failures[shard] = job.failures.get(shard, 0) + 1
        self._shard_event(shard, sender, f"failed: {reason}")
        if job.failures[shard] >= self.max_attempts:
            return self.abandon(f"shard {shard} failed {job.failures[shard]} times, last: {reason}")
        if shard not in job.queued and shard not in job.owner:
            job.queued.append(shard)
            job.reassigned += 1
        return None

    def abandon(self, reason: str) -> str:
        """Give up the running job (the waiting checkpoint, if any, starts next)."""
        job, self.job = self.job, None
        for w in self.workers.values():
            if job is not None and w.busy_with is not None and w.busy_with[0] == job.job_id:
                w.busy_with, w.foreign_job = None, job.job_id  # still busy with it until it says so
        return f"abandoned refresh of version {job.version if job else '?'}: {reason}"

    # ------------------------------------------------------------ completion
    def complete(self) -> bool:
        """True when every shard is done and every chunk merged."""
        job = self.job
        if job is None or len(job.done) < job.n_shards:
            return False
        splits = ("train", "eval") if job.eval else ("train",)
        return all(len(job.merged[s]) == self.n_chunks(s) for s in splits)

    def finish(self) -> Job:
        """Close the complete job; its version becomes the latest."""
        if not self.complete():
            raise RuntimeError("finish() before the job is complete")
        job, self.job = self.job, None
        self.latest_version = max(self.latest_version, job.version)
        return job

