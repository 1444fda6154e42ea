"""The trainer's own evaluation of the eval split, for every negatives source (``eval.every``).

Async runs are evaluated by their refreshes (the broker scores the eval split with each refreshed
checkpoint); in-batch and static runs have no refresh, so without this their "before → after"
would be missing. :class:`Evaluator` encodes the run's corpus and the eval split's queries with the
live model (the same code as ``ance retrieve``: :func:`ance.search.retrieve.retrieve`, same corpus,
same lengths), searches exactly and logs an ``eval`` event with the refresh's field names
(``eval_ndcg@10``, ``eval_mrr@10``, ``eval_recall@100``), so the launcher's summary, ``ance report``
and ``ance retrieve`` + ``ance eval`` on the checkpoint all give the same figure.

When:

* ``eval.every: null`` (default): at step 0 and at the last step for inbatch/static; never for async.
* ``eval.every: N``: at step 0, every N steps and at the last step, for every source (a checkpoint is
  written at each of those steps, so the number belongs to a file).
* ``eval.every: 0``: never.

Aliases: ``checkpoints/best.json`` names the checkpoint best on ``eval.best_metric`` so far (never
pruned), ``checkpoints/final.json`` the last one (:func:`write_alias`; read back by
:func:`ance.run.rundir.resolve_alias`). Pointer files, not symlinks: the run dir holds none.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from ance.eval.metrics import evaluate_ranked
from ance.run.fsio import atomic_write_lines
from ance.run.rundir import RunDir, alias_path, step_name

log = logging.getLogger(__name__)

BASE_MEASURES = ("ndcg@10", "mrr@10", "recall@100")


def write_alias(run_dir: str | Path, alias: str, step: int, **info: Any) -> Path:
    """Point ``checkpoints/<alias>.json`` at checkpoint ``step`` (atomic replace)."""
    path = alias_path(run_dir, alias)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_lines(path, [json.dumps({"checkpoint": step_name(step), "step": int(step), **info}) + "\n"])
    return path


def read_alias(run_dir: str | Path, alias: str) -> dict[str, Any] | None:
    path = alias_path(run_dir, alias)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def inference_copy(model, device: str, precision: str):
    """What the evaluation encodes with: on a GPU with half precision, a copy held in it
    (:func:`ance.model.inference.for_inference`), as the inferencers and ``ance retrieve`` encode, so the
    printed figures are the ones ``ance retrieve`` + ``ance eval`` reproduce; elsewhere the model itself."""
    from ance.model.inference import for_inference
    from ance.run.device import autocast_dtype

    if not str(device).startswith("cuda") or autocast_dtype(str(device), precision) is None:
        return model
    return for_inference(copy.deepcopy(model), device, precision)


class Evaluator:
    """``due(step)`` says when; ``evaluate(model, step, checkpoint)`` scores the eval split and logs it."""

    def __init__(self, cfg, data, metrics, device: str, max_steps: int | None = None):
        self.cfg, self.data, self.metrics, self.device = cfg, data, metrics, device
        self.max_steps = cfg.train.max_steps if max_steps is None else max_steps  # train.epochs: the trainer's total
        self.run_dir = Path(cfg.run_dir)
        ev, split = cfg.eval, cfg.data.eval_split
        self.every = ev.every
        self.enabled = bool(split) and ev.every != 0 and not (ev.every is None and cfg.negatives.source == "async")
        self.split = data.split(split) if self.enabled else None
        depth = max(int(ev.depth), 10)
        self.depth = depth
        self.measures = list(dict.fromkeys(
            [m for m in BASE_MEASURES if int(m.split("@")[1]) <= depth]
            + ([f"recall@{depth}"] if depth > 100 else []) + ([ev.best_metric] if ev.best_metric else [])))
        self.best = read_alias(self.run_dir, "best") if ev.best_metric else None
        self.results: list[dict[str, Any]] = []

    def due(self, step: int) -> bool:
        if not self.enabled:
            return False
        return step == 0 or step == self.max_steps or bool(self.every and step % self.every == 0)

    @torch.no_grad()
    def evaluate(self, model, step: int, checkpoint: Path | None) -> dict[str, Any]:
        from ance.search.retrieve import retrieve

        m, t = self.cfg.model, self.cfg.train
        t0 = time.perf_counter()
        was_training = model.training
        model.eval()
        encoder = inference_copy(model, self.device, t.precision)
        try:
            qids, ids, scores = retrieve(encoder, self.data, self.split.name, k=self.depth,
                                         max_length=m.passage_max_length, query_max_length=m.query_max_length,
                                         device=self.device, cache_root=RunDir(self.run_dir).cache,
                                         batch_size=self.cfg.inferencer.batch_size, long_doc=m.long_doc,
                                         n_windows=m.maxp_windows, precision=t.precision, progress=False)
        finally:
            del encoder
            model.train(was_training)
        values = evaluate_ranked(qids, ids, scores, self.data.corpus.ids, self.split.qrels, self.measures)
        record = {"step": int(step), "checkpoint": str(checkpoint) if checkpoint else None,
                  "split": self.split.name, "n_queries": len(qids),
                  **{f"eval_{k}": v for k, v in values.items()}, "eval_s": time.perf_counter() - t0}
        self.metrics.log("eval", **record)
        self.results.append(record)
        metric = self.cfg.eval.best_metric
        if metric and checkpoint is not None and (self.best is None or values[metric] > self.best["value"]):
            self.best = {"checkpoint": step_name(step), "step": int(step), "metric": metric,
                         "value": values[metric]}
            write_alias(self.run_dir, "best", step, metric=metric, value=values[metric])
        log.info("eval at step %d on %s: %s", step, self.split.name,
                 ", ".join(f"{k} {v:.4f}" for k, v in values.items()))
        return record

    def protected(self) -> set[int]:
        """The steps pruning must spare: the best checkpoint's."""
        return {int(self.best["step"])} if self.best else set()

    def summary(self) -> dict[str, Any]:
        """What the run's summary says: before (first eval), after (last eval) and the best alias."""
        out: dict[str, Any] = {}
        if self.results:
            first, last = self.results[0], self.results[-1]
            out["before"] = {"step": first["step"], "ndcg@10": first.get("eval_ndcg@10")}
            out["after"] = {"step": last["step"], "ndcg@10": last.get("eval_ndcg@10")}
        if self.best:
            out["best"] = {k: self.best[k] for k in ("step", "metric", "value") if k in self.best}
        return out
