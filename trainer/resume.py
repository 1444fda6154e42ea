"""A resume that honours what changed: the horizon, the lr schedule, the optimizer's settings, and a
``resume`` event in the metrics log naming each change (old -> new).

What may change is :data:`ance.run.keydocs.KEYS`'s; fixed keys were refused by the command
before the trainer started (:func:`ance.run.resume.check_resume`). Readers of the metrics
log drop the events of steps re-run after the checkpoint (:func:`ance.run.telemetry.drop_rerun`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ance.run.resume import config_changes, describe

from .optim import build_scheduler, fresh_spec, schedule_multiplier, steps_for_epochs

log = logging.getLogger("ance.trainer.resume")


def total_steps(cfg, positives) -> int:
    """The run's horizon: ``train.max_steps``, or ``train.epochs`` passes over the queries (``sample_by=query``)
    or the (query, positive) pairs (``pair``) at ``train.batch_size`` a step."""
    t = cfg.train
    if t.epochs is None:
        return int(t.max_steps)
    n = sum(len(p) for p in positives) if t.sample_by == "pair" else len(positives)
    return steps_for_epochs(t.epochs, n, t.batch_size)


def restore_schedule(trainer, state: dict[str, Any], path: Path) -> dict[str, Any]:
    """After the optimizer and scheduler states are loaded: rebuild the schedule for the config in effect,
    apply the optimizer settings, log the ``resume`` event; return the event."""
    cfg, step = trainer.cfg, trainer.step
    old_spec = state.get("schedule")
    restored = state["scheduler"]
    old_peak = float(restored["base_lrs"][0])
    if old_spec is None:  # a checkpoint from before schedule specs: its peak and where it stood are enough
        old_m = float(restored["_last_lr"][0]) / old_peak if old_peak else 0.0
    else:
        old_m = schedule_multiplier(step, old_spec)
    new = fresh_spec(cfg.train.lr, trainer.max_steps, cfg.train.warmup_ratio)
    same = old_spec is not None and all(old_spec[k] == new[k] for k in ("peak", "total", "warmup"))
    restarted = not same and old_m <= 0.0 and step < new["total"]
    if restarted:  # the old schedule had ended (lr 0): a longer run goes on from the new schedule's value here
        old_m = schedule_multiplier(step, new)
        log.warning("resume at step %d: the lr schedule had reached 0; it goes on at %.3g of train.lr, "
                    "decaying to 0 at step %d", step, old_m, new["total"])
    spec = old_spec if same else {**new, "start": step, "m0": old_m}
    trainer.schedule = spec
    trainer.scheduler = build_scheduler(trainer.optimizer, trainer.max_steps, cfg.train.warmup_ratio, spec, step)
    trainer.optimizer.param_groups[0]["weight_decay"] = cfg.train.weight_decay  # group 0: the decayed params

    changes = config_changes(state["config"], cfg.to_dict()) if state.get("config") else []
    if old_spec is None and old_peak != cfg.train.lr:
        changes.append(("train.lr", old_peak, cfg.train.lr))
    next_lr = trainer.scheduler.get_last_lr()[0]
    if changes:
        log.info("resume at step %d: %s; next lr %.3g, horizon %d", step, describe(changes), next_lr,
                 trainer.max_steps)
    event = {"step": step, "checkpoint": str(path), "max_steps": trainer.max_steps, "lr": next_lr,
             "changes": {k: [o, n] for k, o, n in changes}, "schedule_restarted": restarted}
    if trainer.metrics is not None:
        trainer.metrics.log("resume", **event)
    return event
