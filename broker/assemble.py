"""A refresh's output, from merged top-k chunks to a complete negatives version.

For every merged chunk of the training queries: select the negatives
(:func:`ance.negatives.select.select_negatives`, seeded by version and chunk, so the
same chunk always draws the same negatives), measure how many of the previous
version's negatives are candidates again, **persist the chunk, then stream it**
to the trainer. Eval chunks only feed the refresh's own evaluation. The
version's stats (:class:`~ance.broker.stats.RefreshTally`) are kept as it goes
and sent with ``version_done``. The broker's socket loop (:mod:`ance.broker.hub`)
calls :meth:`VersionAssembler.begin`, :meth:`chunk`, :meth:`finish` and
:meth:`drop`; it owns no negatives logic itself.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from ance.run.config import Config
from ance.negatives.select import overlap, select_negatives
from ance.run.rundir import checkpoint_files

from .refresh import ChunkReady, Job
from .stats import RefreshTally
from .stream import TrainerStream
from .versions import NegativesVersions

log = logging.getLogger("ance.broker.hub")


class VersionAssembler:
    """One refresh at a time: its negatives version on disk, its stream to the trainer, its stats."""

    def __init__(self, cfg: Config, train, eval_split, doc_ids: list[str], versions: NegativesVersions,
                 trainer: TrainerStream):
        self.cfg, self.train, self.eval, self.doc_ids = cfg, train, eval_split, doc_ids
        self.versions, self.trainer = versions, trainer
        self.keep = cfg.negatives.keep
        self.depth = cfg.negatives.depth
        self.job_id: int | None = None  # the refresh in progress, None between refreshes
        self.tally = RefreshTally(depth=self.depth)
        self._weights: dict[str, bytes] | None = None  # the checkpoint's files, read once a refresh

    def begin(self, job: Job) -> None:
        self.job_id = job.job_id
        neg = self.cfg.negatives
        self.versions.begin(job.version, job.n_shards, checkpoint=job.ckpt.path, depth=neg.depth,
                            rank_window=neg.rank_window, sampling=neg.sampling, seed=self.cfg.seed,
                            model=self.cfg.model.name_or_path)
        self.tally = RefreshTally(n_eval=len(self.eval.ids) if job.eval else 0, depth=self.depth)
        self._weights = None
        log.info("refresh of version %d started: job %d, %d shards over %d docs, checkpoint %s", job.version,
                 job.job_id, job.n_shards, len(self.doc_ids), job.ckpt.path)

    def weights(self, ckpt_path: str, max_bytes: int) -> dict[str, bytes]:
        """The checkpoint's files for ``job.weights`` (``broker.send_weights``), read once a refresh.
        Raises OSError or ValueError (too large) when they cannot be shipped."""
        if self._weights is None:
            self._weights = checkpoint_files(ckpt_path, max_bytes)
        return self._weights

    def merged(self, job_id: int, seconds: float) -> None:
        """Count ``seconds`` of merging towards the refresh in progress (when ``job_id`` is it)."""
        if self.versions.current is not None and job_id == self.job_id:
            self.tally.add_time("merge_s", seconds)

    def chunk(self, r: ChunkReady, n_chunks: int) -> None:
        """Select, persist, then stream one merged chunk (eval chunks: evaluation only)."""
        if r.split == "eval":
            self.tally.add_eval(r.q_lo, r.q_hi, r.ids, r.scores)
            return
        t0 = time.perf_counter()
        neg_cfg = self.cfg.negatives
        rng = np.random.default_rng([self.cfg.seed, r.version, r.chunk])  # same chunk, same draw
        neg = select_negatives(r.ids, self.train.positives[r.q_lo:r.q_hi], rank_window=neg_cfg.rank_window,
                               keep=self.keep, sampling=neg_cfg.sampling, rng=rng, scores=r.scores,
                               rank_decay=neg_cfg.rank_decay, score_temperature=neg_cfg.score_temperature,
                               denoise_margin=neg_cfg.denoise_margin, denoise_ratio=neg_cfg.denoise_ratio)
        if self.versions.latest is not None:
            prev = self.versions.latest.neg[r.q_lo:r.q_hi]
            has = (prev >= 0).any(axis=1)
            if has.any():
                lo, hi = neg_cfg.rank_window  # still a candidate: back inside the new rank window
                self.tally.add_overlap(overlap(prev[has], r.ids[has, lo:hi]), int(has.sum()))
        q_idx = np.arange(r.q_lo, r.q_hi, dtype=np.int32)
        t1 = time.perf_counter()
        self.versions.append(r.chunk, r.q_lo, r.q_hi, neg)  # persist, then send
        t2 = time.perf_counter()
        self.trainer.chunk(r.version, r.chunk, n_chunks, q_idx, neg)
        t3 = time.perf_counter()
        self.tally.add_time("select_s", t1 - t0)
        self.tally.add_time("persist_s", t2 - t1)
        self.tally.add_time("send_s", t3 - t2)

    def finish(self, job: Job) -> dict[str, Any]:
        """Close the version (rename it complete), send ``version_done``; return its stats."""
        self.job_id = None
        final = self.versions.finish()
        stats = self.tally.stats(job, n_docs=len(self.doc_ids), n_train=len(self.train.ids), keep=self.keep,
                                 eval_split=self.eval, doc_ids=self.doc_ids)
        self.versions.latest.stats = stats
        self.trainer.version_done(job.version, job.n_shards, stats)
        log.info("negatives version %d complete in %.1fs -> %s: %s", job.version, stats["refresh_s"], final,
                 ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in stats.items()))
        return stats

    def drop(self) -> None:
        """Forget the refresh in progress (abandoned): its partial file goes."""
        self.versions.drop()
        self.job_id = None
