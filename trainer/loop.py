"""The training loop: GradCache contrastive steps over a bounded-staleness feed of negatives.

One ``Trainer`` per process; under ``torchrun`` every rank builds the same
global batch (same seeds), rank 0 chooses its hard negatives and broadcasts
them, each rank encodes its slice, and representations are all-gathered inside
the loss so every rank's queries see every rank's passages.
"""

from __future__ import annotations

import logging
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ance.learn import distributed as dist_util
from ance.learn import gradcache
from ance.run.config import Config, config_hash, save_config
from ance.run.config_checks import check_model_lengths
from ance.data.dataset import load_for_config
from ance.run.device import autocast_dtype, describe_device, device_type, resolve_device
from ance.model.encode import corpus_tokens, query_tokens
from ance.run.errors import AnceError, CheckpointError, ConfigError
from ance.learn.losses import BidirectionalInfoNCE, InfoNCE, gist_mask, positive_mask
from ance.model import tuning
from ance.model.biencoder import BiEncoder, resolve_model
from ance.run.rundir import RunDir
from ance.run.telemetry import MetricsWriter, prometheus_port_for
from ance.model.tokcache import build_inputs

from .batches import Batch, PairSampler, QuerySampler, sample_negatives, sample_positives
from .checkpoint import (CommitThread, Staged, latest_checkpoint, load_trainer_state, prune_checkpoints,
                         stage_checkpoint, sweep_incomplete)
from .feed import NegativesTable, fill_bm25, fill_static
from .link import TrainerLink
from .optim import build_optimizer, build_scheduler, check_finite, check_params_finite, grad_norm, last_layer_params

log = logging.getLogger(__name__)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    if "numpy" in state:
        np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """``Trainer(cfg, resume=False).run()``: one process (or torchrun rank) of the training loop.

    Built in named steps: the process group, the run directory, the data, the
    model and its token inputs, the optimisation, the sampling state, the
    metrics; then the state of the checkpoint it resumes from, or the warm-up
    negatives.
    """

    def __init__(self, cfg: Config, resume: bool = False):
        self.cfg = cfg
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
        self.client = None
        self.commits = CommitThread()   # checkpoints committed in the background, one at a time
        self._commit_s, self._step_s = float("inf"), 0.0  # the last commit's and the last step's seconds
        if start:
            self._restore(start[1])
        elif self.is_main:
            self._warmup_negatives()
        self._static_beside_refreshed()

    # ---------------------------------------------------------------- setup
    def _join_process_group(self) -> None:
        """Device, and under torchrun the process group (NCCL bound to this rank's GPU, else gloo)."""
        self.distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        self.device = resolve_device(self.cfg.train.device, "train.device")
        if self.device.startswith("cuda"):
            torch.cuda.set_device(torch.device(self.device))
        if self.distributed and not torch.distributed.is_initialized():
            if self.device.startswith("cuda"):
                torch.distributed.init_process_group("nccl", device_id=torch.device(self.device))
            else:
                torch.distributed.init_process_group("gloo")
        self.rank, self.world = dist_util.rank(), dist_util.world_size()
        if self.distributed:
            log.info("trainer rank %d of %d on %s (%s)", self.rank, self.world, describe_device(self.device),
                     torch.distributed.get_backend())
        self.is_main = self.rank == 0
        if self.cfg.train.batch_size % self.world:
            raise ConfigError(f"train.batch_size={self.cfg.train.batch_size} is not divisible by the "
                              f"{self.world} trainer processes")

    def _prepare_run_dir(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.is_main:
            sweep_incomplete(self.run_dir)
            save_config(self.cfg, self.run_dir)

    def _load_data(self) -> None:
        torch.manual_seed(self.cfg.seed)
        random.seed(self.cfg.seed)
        self.data = load_for_config(self.cfg)
        self.split = self.data.split(self.cfg.data.train_split)
        self.n_docs = len(self.data.corpus)

    def _resume_point(self) -> tuple[int, Path]:
        start = latest_checkpoint(self.run_dir)
        if start is None:
            raise AnceError(f"{self.run_dir}: nothing to resume, no complete checkpoint under checkpoints/")
        return start

    def _load_model(self, checkpoint: Path | None) -> None:
        """The model of ``cfg.model``, from ``checkpoint`` when resuming; DDP-wrapped under torchrun."""
        self.model = BiEncoder.from_config(self.cfg.model, checkpoint)
        tuning.for_training(self.model, self.cfg.train)  # LoRA adapters, gradient checkpointing
        self.model.to(self.device)
        self.model.train()
        check_model_lengths(self.cfg, getattr(self.model.query_encoder.config, "max_position_embeddings", None),
                            str(checkpoint or self.cfg.model.name_or_path))
        self.tokenizer = self.model.tokenizer
        self.ddp = self.model
        if self.distributed:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device] if self.device.startswith("cuda") else None,
                find_unused_parameters=not self.cfg.model.shared_towers)

    def _load_tokens(self) -> None:
        """The corpus token cache (the inferencers' own, :func:`ance.model.encode.corpus_tokens`) and the queries."""
        m = self.cfg.model
        self.passages = corpus_tokens(self.data.corpus, self.tokenizer, max_length=m.passage_max_length,
                                      long_doc=m.long_doc, n_windows=m.maxp_windows,
                                      cache_root=RunDir(self.run_dir).cache, progress=self.is_main,
                                      prefix=self.model.prompt("passage"))
        self.query_tokens = query_tokens(self.split.texts, self.tokenizer, m.query_max_length,
                                         prefix=self.model.prompt("query"))

    def _build_optimization(self) -> None:
        t = self.cfg.train
        self.optimizer = build_optimizer(self.model, t.lr, t.weight_decay)
        self.scheduler = build_scheduler(self.optimizer, t.max_steps, t.warmup_ratio)
        self.amp_dtype = autocast_dtype(self.device, t.precision)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.loss_fn = self._build_loss()
        self.guide = self._build_guide()
        self.gradcache = self._build_gradcache()
        self._last_layer = last_layer_params(self.model)

    def _build_sampling(self) -> None:
        """Seeded query order, positive and negative draws, and the table of negatives in use."""
        cfg = self.cfg
        if cfg.train.sample_by == "pair":
            self.sampler = PairSampler(self.split.positives, cfg.train.batch_size, cfg.seed)
        else:
            self.sampler = QuerySampler(len(self.split), cfg.train.batch_size, cfg.seed)
        self.pos_rng = np.random.default_rng([cfg.seed, 1])
        self.neg_rng = np.random.default_rng([cfg.seed, 2])
        self.table = NegativesTable(len(self.split), cfg.negatives.keep)
        self.step = 0
        self.wait_total = 0.0

    def _metrics_writer(self) -> MetricsWriter:
        t = self.cfg.telemetry
        return MetricsWriter(self.run_dir, "trainer", tensorboard=t.tensorboard,
                             prometheus_port=prometheus_port_for(t.prometheus_port, "trainer"),
                             prometheus_addr=t.prometheus_addr)

    def _static_beside_refreshed(self) -> None:
        """negatives.mix_static: the static file's negatives kept beside the refreshed ones."""
        self.static_table = None
        neg = self.cfg.negatives
        if self.is_main and neg.mix_static > 0:
            self.static_table = NegativesTable(len(self.split), neg.keep)
            fill_static(self.static_table, neg.static_file, self.split.ids, self.data.corpus.ids,
                        fingerprint=self.data.fingerprint)

    def _build_gradcache(self):
        """The GradCache step of ``train.chunk_size`` (None: the plain step); with
        ``train.chunk_by_tokens`` a chunk holds chunk_size x passage_max_length tokens."""
        chunk = self.cfg.train.chunk_size
        if not chunk:
            return None
        tokens = chunk * self.cfg.model.passage_max_length if self.cfg.train.chunk_by_tokens else None
        return gradcache.GradCache(self.ddp, self.loss_fn, chunk, chunk_tokens=tokens, scaler=self.scaler,
                         autocast_dtype=self.amp_dtype, device_type=device_type(self.device))

    def _build_loss(self):
        cls = BidirectionalInfoNCE if self.cfg.train.loss == "bidirectional" else InfoNCE
        return cls(temperature=self.cfg.model.temperature)

    def _build_guide(self):
        if not self.cfg.train.gist_guide:
            return None
        guide = BiEncoder.load(resolve_model(self.cfg.train.gist_guide)).to(self.device).eval()
        for p in guide.parameters():
            p.requires_grad_(False)
        return guide

    def _warmup_negatives(self) -> None:
        neg = self.cfg.negatives
        source = neg.source if neg.source != "async" else neg.warmup
        if source == "static":
            fill_static(self.table, neg.static_file, self.split.ids, self.data.corpus.ids,
                        fingerprint=self.data.fingerprint)
        elif source == "bm25":
            fill_bm25(self.table, self.data.corpus.passages(), self.split.texts, self.split.positives,
                      depth=neg.depth, rank_window=neg.rank_window, sampling=neg.sampling, seed=self.cfg.seed,
                      rank_decay=neg.rank_decay)

    def _restore(self, path: Path) -> None:
        state = load_trainer_state(path)
        if state.get("config_hash") not in (None, config_hash(self.cfg)):
            log.warning("resuming with a config that differs from the checkpoint's (%s)", path)
        self.step = int(state["step"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        try:
            self.sampler.load_state_dict(state["sampler"])
        except ValueError as e:  # the run's data, seed or train.sample_by changed since the checkpoint
            raise CheckpointError(f"{path}: {e}") from None
        self.pos_rng.bit_generator.state = state["pos_rng"]
        self.neg_rng.bit_generator.state = state["neg_rng"]
        self.table.load_state_dict(state["table"])
        self.wait_total = float(state.get("wait_total", 0.0))
        set_rng_state(state["rng"])
        log.info("resumed from %s at step %d", path, self.step)

    # ---------------------------------------------------------------- steps
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
                "rng": rng_state(), "wait_total": self.wait_total, "config_hash": config_hash(self.cfg)}

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
            self.client.announce(staged.step, str(staged.final), written)
        protect = set(int(v) for v in np.unique(self.table.version))
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
        try:
            if self.is_main and (is_async and self.step == 0):
                self.save_checkpoint()
            while self.step < cfg.train.max_steps:
                record = self.train_step()
                self._step_s = record["step_s"] - record["wait_s"]
                if self.is_main:
                    if self.step % cfg.train.log_every == 0 or self.step == cfg.train.max_steps:
                        self.metrics.log("step", **record)
                    self._committed(self.commits.poll())
                    if self.client is not None:
                        self.client.status(self.step, record["negatives_version"], record["gap"])
                        self.client.poll(0)
                    if self.step % cfg.train.checkpoint_every == 0 or self.step == cfg.train.max_steps:
                        self.save_checkpoint()
                if self.distributed:
                    torch.distributed.barrier()
            if self.is_main:
                self._committed(self.commits.wait())
            summary = {"steps": self.step, "wait_s": self.wait_total}
            if self.is_main and self.client is not None and cfg.negatives.final_refresh:
                summary["final_refresh_s"] = self.client.wait_for_version(self.step, cfg.negatives.wait_timeout_s)
            return summary
        finally:
            if self.client is not None:
                self.client.close()
            if self.metrics is not None:
                self.metrics.close()
