"""The training loop: GradCache contrastive steps over a bounded-staleness feed of negatives.

One ``Trainer`` per process; under ``torchrun`` every rank builds the same
global batch (same seeds), rank 0 chooses its hard negatives and broadcasts
them, each rank encodes its slice, and representations are all-gathered inside
the loss so every rank's queries see every rank's passages.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ance.learn import gradcache
from ance.run.config import Config, config_hash
from ance.run.device import device_type
from ance.run.rundir import RunDir
from ance.learn.losses import gist_mask, positive_mask
from ance.model.tokcache import build_inputs

from .batches import Batch, PairSampler, sample_negatives, sample_positives
from .checkpoint import CommitThread, Staged, check_shippable, prune_checkpoints, stage_checkpoint
from .evaluator import Evaluator, write_alias
from .link import TrainerLink
from .console import console_for
from .optim import check_finite, check_params_finite, grad_norm
from .setup import TrainerSetup, rng_state

log = logging.getLogger(__name__)


class Trainer(TrainerSetup):
    """``Trainer(cfg, resume=False).run()``: one process (or torchrun rank) of the training loop.

    Built in named steps: the process group, the run directory, the data, the
    model and its token inputs, the optimisation, the sampling state, the
    metrics; then the state of the checkpoint it resumes from, or the warm-up
    negatives.
    """

    def __init__(self, cfg: Config, resume: bool = False, dataset=None):
        self.cfg = cfg
        self.data = dataset  # loaded by `ance train` before the run directory is touched, else here
        self.run_dir = Path(cfg.run_dir)
        self._join_process_group()
        self._prepare_run_dir()
        self._load_data()
        start = self._resume_point() if resume else None
        self._load_model(start[1] if start else None)
        self._load_tokens()
        self._build_optimization()
        self._build_sampling()
        self.metrics = self._metrics_writer() if self.is_main else None
        if self.metrics is not None and self.data.note and not resume:  # once a run: the log and `ance monitor`
            log.warning("%s", self.data.note)
            self.metrics.log("data_note", note=self.data.note)
        self.client = None
        self.commits = CommitThread()   # checkpoints committed in the background, one at a time
        self._commit_s, self._step_s = float("inf"), 0.0  # the last commit's and the last step's seconds
        if start:
            self._restore(start[1])
        elif self.is_main:
            self._warmup_negatives()
        self._static_beside_refreshed()

    def _next_batch(self) -> Batch:
        if isinstance(self.sampler, PairSampler):
            q_idx, positives = self.sampler.next_pairs()
        else:
            q_idx = self.sampler.next_batch()
            positives = sample_positives(q_idx, self.split.positives, self.pos_rng)
        n = self.cfg.negatives.n_per_query if self.cfg.negatives.source != "inbatch" else 0
        negatives = np.zeros((len(q_idx), n), dtype=np.int64)
        version = self.step + 1
        if n and self.is_main:
            version = self._await_fresh(q_idx)
            static = None if self.static_table is None else self.static_table.neg
            negatives = sample_negatives(self.table.neg, q_idx, self.split.positives, n, self.n_docs,
                                         self.neg_rng, static=static, mix=self.cfg.negatives.mix_static)
        if n and self.distributed:
            packed = torch.tensor(np.concatenate([negatives.reshape(-1), [version]]), dtype=torch.long,
                                  device=self.device if self.device.startswith("cuda") else "cpu")
            torch.distributed.broadcast(packed, src=0)
            flat = packed.cpu().numpy()
            negatives, version = flat[:-1].reshape(len(q_idx), n), int(flat[-1])
        return Batch(q_idx, positives, negatives, version)

    def _await_fresh(self, q_idx: np.ndarray) -> int:
        """Block until the batch's negatives are at most ``max_gap`` steps old (async only)."""
        if self.client is None:
            return self.table.batch_version(q_idx)
        self.client.poll(0)
        target = self.step + 1 - self.cfg.negatives.max_gap
        if self.table.batch_version(q_idx) < target:
            # the negatives may have to come from the checkpoint still being committed: announce it
            # first, or the wait could not end; the trainer waits for that commit too
            t0 = time.perf_counter()
            self._committed(self.commits.wait())
            committing = time.perf_counter() - t0
            waited = self.client.wait_for(lambda: self.table.batch_version(q_idx) >= target,
                                          timeout=self.cfg.negatives.wait_timeout_s, step=self.step + 1)
            self._step_wait += committing + waited
        return self.table.batch_version(q_idx)

    def _inputs(self, batch: Batch):
        per = len(batch.queries) // self.world
        lo, hi = self.rank * per, (self.rank + 1) * per
        n = batch.negatives.shape[1]
        q_tokens = [self.query_tokens[q] for q in batch.queries[lo:hi]]
        local_p = np.concatenate([batch.positives[lo:hi], batch.negatives[lo:hi].reshape(-1)])
        p_tokens = self.passages.take(local_p)
        m = self.cfg.model
        queries = {k: v.to(self.device) for k, v in build_inputs(q_tokens, self.tokenizer, m.query_max_length).items()}
        passages = {k: v.to(self.device) for k, v in
                    build_inputs(p_tokens, self.tokenizer, m.passage_max_length).items()}
        # The gathered passage layout is rank-major: [pos_r, neg_r] for r = 0..world-1.
        per_rank_p = per * (1 + n)
        pos_index = torch.cat([torch.arange(per) + r * per_rank_p for r in range(self.world)])
        all_p = np.concatenate([np.concatenate([batch.positives[r * per:(r + 1) * per],
                                                batch.negatives[r * per:(r + 1) * per].reshape(-1)])
                                for r in range(self.world)])
        return queries, passages, pos_index.to(self.device), all_p

    def _mask(self, batch: Batch, all_p: np.ndarray, pos_index: torch.Tensor, queries, passages):
        per = len(batch.queries) // self.world
        order = np.concatenate([batch.queries[r * per:(r + 1) * per] for r in range(self.world)])
        mask = positive_mask([self.split.positives[q] for q in order],
                             torch.as_tensor(all_p, device=self.device), pos_index)
        if self.guide is not None:
            mask = mask | self._gist(order, all_p, pos_index)
        return mask

    @torch.no_grad()
    def _gist(self, order: np.ndarray, all_p: np.ndarray, pos_index: torch.Tensor) -> torch.Tensor:
        m = self.cfg.model
        qi = build_inputs([self.query_tokens[q] for q in order], self.guide.tokenizer, m.query_max_length)
        pi = build_inputs(self.passages.take(all_p), self.guide.tokenizer, m.passage_max_length)
        gq = self.guide(**{k: v.to(self.device) for k, v in qi.items()}, kind="query")
        gp = self.guide(**{k: v.to(self.device) for k, v in pi.items()}, kind="passage")
        return gist_mask(gq, gp, pos_index, margin=self.cfg.train.gist_margin)

    def train_step(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        self._step_wait = 0.0
        batch = self._next_batch()
        waited = self._step_wait
        self.step += 1
        queries, passages, pos_index, all_p = self._inputs(batch)
        mask = self._mask(batch, all_p, pos_index, queries, passages)
        kwargs = {"pos_index": pos_index, "mask": mask}
        if self.gradcache is not None:
            loss = self.gradcache.step(queries, passages, **kwargs)
        else:
            loss = gradcache.plain_step(self.ddp, self.loss_fn, queries, passages, scaler=self.scaler,
                              autocast_dtype=self.amp_dtype, device_type=device_type(self.device), **kwargs)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        last = grad_norm(self._last_layer)
        total = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.max_grad_norm))
        lr = self.scheduler.get_last_lr()[0]
        check_finite(self.step, float(loss), total, lr, scaled=self.scaler is not None)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.wait_total += waited
        elapsed = time.perf_counter() - t0
        source = self.cfg.negatives.source
        version = None if source == "inbatch" else batch.negatives_version
        return {"step": self.step, "loss": float(loss), "lr": lr, "grad_norm": total, "grad_norm_last": last,
                "examples_per_s": len(batch.queries) / max(elapsed - waited, 1e-9),
                "negatives_version": version, "gap": 0 if version is None else self.step - version,
                "wait_s": waited, "step_s": elapsed}

    # ---------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "sampler": self.sampler.state_dict(), "pos_rng": self.pos_rng.bit_generator.state,
                "neg_rng": self.neg_rng.bit_generator.state, "table": self.table.state_dict(),
                "rng": rng_state(), "wait_total": self.wait_total, "config_hash": config_hash(self.cfg),
                "config": self.cfg.to_dict(), "schedule": self.schedule}

    def save_checkpoint(self) -> Path:
        """Stage ``checkpoints/step-N`` (rank 0; the trainer waits for this half) and commit it in the
        background; it is logged, announced to the broker and pruned around once the commit ends."""
        check_params_finite(self.model, self.step)  # never write a non-finite checkpoint
        staged = stage_checkpoint(self.run_dir, self.step, self.model.save, self.state_dict(),
                                  {"config_hash": config_hash(self.cfg)})
        self._committed(self.commits.submit(staged))
        if self.client is not None and self._commit_s < self._step_s:
            # a commit shorter than a step (small steps on CPU): waiting for it costs the trainer
            # less than announcing it a step late costs the refresh
            self._committed(self.commits.wait(), blocking_s=time.time() - staged.started)
        return staged.final

    def _committed(self, staged: Staged | None, blocking_s: float | None = None) -> None:
        """A commit that has ended: log it, announce it, prune the checkpoints no one needs."""
        if staged is None:
            return
        written = staged.started + staged.write_s
        self._commit_s = staged.write_s - staged.staged_s
        self.metrics.log("checkpoint", step=staged.step, path=str(staged.final), write_s=staged.write_s,
                         blocking_s=staged.staged_s if blocking_s is None else blocking_s)
        if self.client is not None:
            check_shippable(self.cfg, staged.final)
            self.client.announce(staged.step, str(staged.final), written)
        protect = set(int(v) for v in np.unique(self.table.version))
        protect |= self.evaluator.protected() if getattr(self, "evaluator", None) else set()  # the best one
        if self.client is not None:
            protect |= self.client.pending_versions()
        prune_checkpoints(self.run_dir, self.cfg.train.keep_checkpoints, protect)

    # ----------------------------------------------------------------- run
    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        is_async = cfg.negatives.source == "async"
        if self.is_main and is_async:
            self.client = TrainerLink(cfg, self.table, self.metrics, self.split.ids, self.data.fingerprint)
            self.client.connect()
        ev = self.evaluator = Evaluator(cfg, self.data, self.metrics, self.device, self.max_steps) if self.is_main else None
        try:
            if ev is not None and self.step == 0 and ev.due(0):
                ev.evaluate(self.model, 0, None)
            if self.is_main and (is_async and self.step == 0):
                self.save_checkpoint()
            console = console_for(cfg, self.max_steps, self.step) if self.is_main else None
            while self.step < self.max_steps:
                record = self.train_step()
                self._step_s = record["step_s"] - record["wait_s"]
                if self.is_main:
                    if self.step % cfg.train.log_every == 0 or self.step == self.max_steps:
                        self.metrics.log("step", total=self.max_steps, **record)
                    if console is not None:
                        console.update(record)
                    self._committed(self.commits.poll())
                    if self.client is not None:
                        self.client.status(self.step, record["negatives_version"], record["gap"])
                        self.client.poll(0)
                    due = ev.due(self.step)
                    if self.step % cfg.train.checkpoint_every == 0 or self.step == self.max_steps or due:
                        path = self.save_checkpoint()
                        if due:
                            ev.evaluate(self.model, self.step, path)
                if self.distributed:
                    torch.distributed.barrier()
            if self.is_main:
                self._committed(self.commits.wait())
            if console is not None:
                console.close()
            summary = {"steps": self.step, "wait_s": self.wait_total}
            if ev is not None and (last := RunDir(self.run_dir).latest_checkpoint()):
                write_alias(self.run_dir, "final", last[0])  # checkpoints/final.json: the last checkpoint
                summary.update(ev.summary(), final=last[0])
            if self.is_main and self.client is not None and cfg.negatives.final_refresh:
                summary["final_refresh_s"] = self.client.wait_for_version(self.step, cfg.negatives.wait_timeout_s)
            return summary
        finally:
            if self.client is not None:
                self.client.close()
            if self.metrics is not None:
                self.metrics.close()
