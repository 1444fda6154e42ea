"""The trainer's construction steps (a mixin of :class:`.loop.Trainer`): the process group, the run
directory, the data, the model and its token inputs, the optimisation, the sampling state, the
metrics, the warm-up negatives and the state of a checkpoint it resumes from."""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ance.learn import distributed as dist_util
from ance.learn import gradcache
from ance.run.config import save_config
from ance.run.config_checks import check_model_lengths
from ance.data.dataset import load_for_config
from ance.run.device import autocast_dtype, describe_device, device_type, resolve_device
from ance.model.encode import corpus_tokens, query_tokens, shared_token_root
from ance.run.errors import AnceError, CheckpointError, ConfigError
from ance.learn.losses import BidirectionalInfoNCE, InfoNCE
from ance.model import leanbert, tuning
from ance.model.biencoder import BiEncoder, resolve_model
from ance.run.rundir import TRAINER_STATE, RunDir
from ance.run.resume import flatten
from ance.run.telemetry import MetricsWriter, prometheus_port_for
from ance.run.trackers import trackers_for

from .batches import PairSampler, QuerySampler, check_negatives_fit
from .checkpoint import (latest_checkpoint, load_trainer_state, sweep_incomplete)
from .feed import NegativesTable, check_table, fill_bm25, fill_given, fill_static
from .optim import (build_optimizer, build_scheduler, fresh_spec, last_layer_params)
from .resume import restore_schedule, total_steps

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


class TrainerSetup:
    """What ``Trainer.__init__`` calls, one named step each (the loop itself: :mod:`.loop`)."""

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
        if self.data is None:
            self.data = load_for_config(self.cfg)
        self.split = self.data.split(self.cfg.data.train_split)
        self.n_docs = len(self.data.corpus)
        neg = self.cfg.negatives
        if neg.source != "inbatch":  # each step draws this many hard negatives a query: before the model loads
            check_negatives_fit(self.split.positives, self.n_docs, neg.n_per_query, self.split.ids)

    def _resume_point(self) -> tuple[int, Path]:
        start = latest_checkpoint(self.run_dir)
        if start is None:
            raise AnceError(f"{self.run_dir}: nothing to resume, no complete checkpoint under checkpoints/")
        return start

    def _load_model(self, checkpoint: Path | None) -> None:
        """The model of ``cfg.model``, from ``checkpoint`` when resuming; DDP-wrapped under torchrun."""
        self.model = BiEncoder.from_config(self.cfg.model, checkpoint)
        tuning.for_training(self.model, self.cfg.train)  # LoRA adapters, gradient checkpointing
        if self.cfg.train.kernels == "lean":
            for tower in self.model.towers():
                if not leanbert.install(tower):
                    log.info("train.kernels=lean: %s keeps transformers' forward", type(tower).__name__)
        self.model.to(self.device)
        self.model.train()
        if tuning.compile_towers(self.model, self.cfg.train.compile, self.device):
            log.info("train.compile=%s: the towers compile during the first steps", self.cfg.train.compile)
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
                                      prefix=self.model.prompt("passage"), shared_root=shared_token_root(self.cfg))
        self.query_tokens = query_tokens(self.split.texts, self.tokenizer, m.query_max_length,
                                         prefix=self.model.prompt("query"))

    def _build_optimization(self) -> None:
        t = self.cfg.train
        self.optimizer = build_optimizer(self.model, t.lr, t.weight_decay)
        self.max_steps = total_steps(self.cfg, self.split.positives)  # train.max_steps, or train.epochs in steps
        self.schedule = fresh_spec(t.lr, self.max_steps, t.warmup_ratio)
        self.scheduler = build_scheduler(self.optimizer, self.max_steps, t.warmup_ratio, self.schedule)
        self.amp_dtype = autocast_dtype(self.device, t.precision)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.loss_fn = self._build_loss()
        self.guide = self._build_guide()
        self.gradcache = self._build_gradcache()
        self._last_layer = last_layer_params(self.model)

    def _build_sampling(self) -> None:
        """Seeded query order, positive and negative draws, and the table of negatives in use."""
        cfg = self.cfg
        try:
            if cfg.train.sample_by == "pair":
                self.sampler = PairSampler(self.split.positives, cfg.train.batch_size, cfg.seed)
            else:
                self.sampler = QuerySampler(len(self.split), cfg.train.batch_size, cfg.seed)
        except ValueError as exc:  # a batch larger than the queries (pairs) there are
            raise ConfigError(f"train.{exc}") from None
        self.pos_rng = np.random.default_rng([cfg.seed, 1])
        self.neg_rng = np.random.default_rng([cfg.seed, 2])
        self.table = NegativesTable(len(self.split), cfg.negatives.keep)
        self.step = 0
        self.wait_total = 0.0

    def _metrics_writer(self) -> MetricsWriter:
        t = self.cfg.telemetry
        return MetricsWriter(self.run_dir, "trainer", tensorboard=t.tensorboard,
                             prometheus_port=prometheus_port_for(t.prometheus_port, "trainer"),
                             prometheus_addr=t.prometheus_addr,
                             sinks=trackers_for(t, self.run_dir, flatten(self.cfg.to_dict())))

    def _static_beside_refreshed(self) -> None:
        """negatives.mix_static: the static file's negatives kept beside the refreshed ones."""
        self.static_table = None
        neg = self.cfg.negatives
        if self.is_main and neg.mix_static > 0:
            self.static_table = NegativesTable(len(self.split), neg.keep)
            if not neg.static_file:  # the data's own negatives (Tevatron, triplets)
                fill_given(self.static_table, self.split.negatives, self.cfg.data.path)
            else:
                fill_static(self.static_table, neg.static_file, self.split.ids, self.data.corpus.ids,
                            fingerprint=self.data.fingerprint, min_coverage=neg.static_min_coverage)

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
        if source == "static" and not neg.static_file:  # the data's own (Tevatron, triplets)
            fill_given(self.table, self.split.negatives, self.cfg.data.path)
        elif source == "static":
            fill_static(self.table, neg.static_file, self.split.ids, self.data.corpus.ids,
                        fingerprint=self.data.fingerprint, min_coverage=neg.static_min_coverage)
        elif source == "bm25":
            fill_bm25(self.table, self.data.corpus.passages(), self.split.texts, self.split.positives,
                      depth=neg.depth, rank_window=neg.rank_window, sampling=neg.sampling, seed=self.cfg.seed,
                      rank_decay=neg.rank_decay)

    def _restore(self, path: Path) -> None:
        """The trainer state of checkpoint ``path``; a damaged one (a field missing or of the wrong kind, a
        negatives table of other data) is a :class:`CheckpointError` naming the file, and nothing is written."""
        state = load_trainer_state(path)
        where = path / TRAINER_STATE
        try:
            self._apply_state(state, path)
        except CheckpointError:
            raise
        except KeyError as exc:
            raise CheckpointError(f"{where}: damaged, no {exc} field; resume from an older checkpoint "
                                  "(move this one aside)") from None
        except (TypeError, ValueError, IndexError, AttributeError, RuntimeError) as exc:
            first = (str(exc).splitlines() or [""])[0][:200]
            raise CheckpointError(f"{where}: damaged ({type(exc).__name__}: {first}); resume from an older "
                                  "checkpoint (move this one aside)") from None

    def _apply_state(self, state: dict[str, Any], path: Path) -> None:
        step = state["step"]
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise CheckpointError(f"{path / TRAINER_STATE}: damaged, step {str(step)[:40]!r} is not a step "
                                  "number; resume from an older checkpoint (move this one aside)")
        self.step = step
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
        check_table(self.table, self.n_docs, self.split.ids, path / TRAINER_STATE)
        self.wait_total = float(state.get("wait_total", 0.0))
        set_rng_state(state["rng"])
        restore_schedule(self, state, path)  # what changed takes effect, and is logged
        log.info("resumed from %s at step %d", path, self.step)

    # ---------------------------------------------------------------- steps
