"""Optional metric sinks (issue 25): MLflow to a local file store and Weights & Biases offline, fed by
MetricsWriter; a key set without its package is one line saying what to install."""

from __future__ import annotations

import sys
import time

import pytest

from ance.run.errors import ConfigError
from ance.run.sections import TelemetryConfig
from ance.run.telemetry import MetricsWriter
from ance.run.trackers import trackers_for

STEPS = [{"step": s, "loss": 2.0 / s, "lr": 1e-4, "negatives_version": None} for s in (1, 2, 3)]


def _log(run_dir, sinks) -> None:
    with MetricsWriter(run_dir, "trainer", tensorboard=False, sinks=sinks) as w:
        for record in STEPS:
            w.log("step", **record)
        w.log("resume", step=2, changes={"train.lr": [1e-4, 2e-4]})


def test_mlflow_file_store(tmp_path):
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed (pip install 'ance[mlflow]')")
    from mlflow.tracking import MlflowClient

    uri = f"file:{tmp_path / 'mlruns'}"
    sinks = trackers_for(TelemetryConfig(tensorboard=False, mlflow=uri), tmp_path / "run", {"train.lr": 1e-4})
    _log(tmp_path / "run", sinks)
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(sinks[0].run_id)
    assert run.data.params["train.lr"] == "0.0001" and run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "step/loss")
    assert [(m.step, m.value) for m in history] == [(1, 2.0), (2, 1.0), (3, 2.0 / 3)]


def test_wandb_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="the wandb extra is not installed (pip install 'ance[wandb]')")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "run"
    _log(run_dir, trackers_for(TelemetryConfig(tensorboard=False, wandb="ance-test"), run_dir, {"seed": 13}))
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((run_dir / "wandb").iterdir())
    needles = (b"step/loss", b"step/lr", b"trainer_step", b"0.6666666666666666")
    deadline = time.monotonic() + 20  # the offline run log (`wandb sync` uploads it), written by wandb's service
    while True:
        data = next(runs[0].glob("run-*.wandb")).read_bytes()
        if all(n in data for n in needles) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for needle in needles:
        assert needle in data, needle


@pytest.mark.parametrize("key, package", [("mlflow", "mlflow"), ("wandb", "wandb")])
def test_missing_package_is_one_line(tmp_path, monkeypatch, key, package):
    monkeypatch.setitem(sys.modules, package, None)
    monkeypatch.setitem(sys.modules, f"{package}.tracking", None)
    with pytest.raises(ConfigError) as err:
        trackers_for(TelemetryConfig(**{key: "x"}), tmp_path)
    assert str(err.value) == (f"telemetry.{key} is set but {package} is not installed: pip install "
                              f"'ance[{key}]' (or pip install {package}), or set telemetry.{key}=null")
