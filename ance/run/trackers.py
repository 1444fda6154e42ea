"""Optional experiment trackers for the trainer's metrics: MLflow (a tracking URI, e.g. a local file
store ``file:./mlruns``) and Weights & Biases (offline unless ``WANDB_MODE`` says otherwise).

Each is behind an extra (``pip install 'ance[mlflow]'`` / ``'ance[wandb]'``) and a config key
(``telemetry.mlflow`` / ``telemetry.wandb``); :class:`ance.run.telemetry.MetricsWriter` hands
them every record it writes. A key set without its package is one line saying what to install.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import Any

from ance.run.errors import ConfigError

log = logging.getLogger("ance.run.trackers")
PARAMS_PER_BATCH = 100  # mlflow.utils.validation.MAX_PARAMS_TAGS_PER_BATCH


def _numbers(record: dict[str, Any]) -> tuple[int | None, dict[str, float]]:
    """``(step, {"event/field": value})`` of a record's finite numeric fields."""
    event = record.get("event", "event")
    step = record.get("step") if isinstance(record.get("step"), int) else None
    values = {f"{event}/{k}": float(v) for k, v in record.items()
              if k not in ("event", "time", "step") and isinstance(v, (int, float)) and not isinstance(v, bool)
              and v == v and abs(v) != float("inf")}
    return step, values


def mlflow_key(name: str) -> str:
    """``name`` as MLflow accepts a metric or param key: ``@`` spelt ``_at_`` (``eval/eval_ndcg_at_10``),
    any other character outside ``[A-Za-z0-9_ .:/-]`` as ``_``, at most 250 characters."""
    return re.sub(r"[^\w.\- :/]", "_", name.replace("@", "_at_"), flags=re.ASCII)[:250]


def _missing(key: str, package: str, extra: str) -> ConfigError:
    return ConfigError(f"{key} is set but {package} is not installed: pip install 'ance[{extra}]' "
                       f"(or pip install {package}), or set {key}=null")


class MlflowSink:
    """One MLflow run (experiment ``ance``, named after the run directory) of the records' numbers."""

    def __init__(self, uri: str, run_dir: str | Path, params: dict[str, Any] | None = None):
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise _missing("telemetry.mlflow", "mlflow", "mlflow") from None
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException

        if uri.startswith("file:") or "://" not in uri:  # a local file store: mlflow 3 asks to opt in
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        try:
            self.client = MlflowClient(tracking_uri=uri)
            exp = self.client.get_experiment_by_name("ance")
            exp_id = exp.experiment_id if exp is not None else self.client.create_experiment("ance")
        except MlflowException as exc:  # e.g. sqlite: with mlflow-skinny (no SQLAlchemy), a store it cannot open
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"telemetry.mlflow={uri}: MLflow cannot use this tracking URI ({first}); "
                              f"use a local file store (file:./mlruns) or a tracking server (http://HOST:PORT), "
                              f"or set telemetry.mlflow=null") from None
        self.run_id = self.client.create_run(exp_id, run_name=Path(run_dir).name).info.run_id
        items = [Param(mlflow_key(k), str(v)[:500]) for k, v in (params or {}).items()]
        for i in range(0, len(items), PARAMS_PER_BATCH):  # MLflow takes at most 100 params a call
            self.client.log_batch(self.run_id, params=items[i:i + PARAMS_PER_BATCH])
        log.info("MLflow run %s at %s", self.run_id, uri)

    def log(self, record: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        step, values = _numbers(record)
        if not values:
            return
        ms = int(1000 * float(record.get("time") or time.time()))
        self.client.log_batch(self.run_id, metrics=[Metric(mlflow_key(k), v, ms, step or 0)
                                                           for k, v in values.items()])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class WandbSink:
    """One W&B run in project ``project``, files under ``RUN_DIR/wandb``; offline unless WANDB_MODE is set."""

    def __init__(self, project: str, run_dir: str | Path, params: dict[str, Any] | None = None):
        try:
            import wandb
        except ImportError:
            raise _missing("telemetry.wandb", "wandb", "wandb") from None
        mode = os.environ.get("WANDB_MODE", "offline")
        self.run = wandb.init(project=project, dir=str(run_dir), name=Path(run_dir).name, config=params or {},
                              mode=mode, reinit="create_new" if _new_wandb(wandb) else True)
        # every series against the trainer's step, not W&B's own row counter (one row per record logged)
        self.run.define_metric("trainer_step")
        self.run.define_metric("*", step_metric="trainer_step")
        log.info("W&B run %s (%s) in %s", self.run.id, mode, run_dir)

    def log(self, record: dict[str, Any]) -> None:
        step, values = _numbers(record)
        if values:
            self.run.log({**values, **({"trainer_step": step} if step is not None else {})})

    def close(self) -> None:
        self.run.finish()


def _new_wandb(wandb) -> bool:
    try:
        return tuple(int(x) for x in wandb.__version__.split(".")[:2]) >= (0, 19)
    except ValueError:
        return False


def trackers_for(telemetry, run_dir: str | Path, params: dict[str, Any] | None = None) -> list:
    """The sinks that ``telemetry.mlflow`` / ``telemetry.wandb`` ask for (none by default)."""
    sinks: list = []
    if telemetry.mlflow:
        sinks.append(MlflowSink(telemetry.mlflow, run_dir, params))
    if telemetry.wandb:
        sinks.append(WandbSink(telemetry.wandb, run_dir, params))
    return sinks
