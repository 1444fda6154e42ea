"""Optional metric sinks (issues 22, 25): MLflow to a local file store and Weights & Biases offline, fed
by MetricsWriter; a key set without its package is one line saying what to install.

A real `ance train` (tiny-bert, a SciFact subset, 3 steps, evaluated at steps 0 and 3) logs to both,
and what each holds is read back with its own client or file format: the config as params, the
loss once per step, the eval metrics. Nothing reaches the network: W&B runs offline with its dirs in
tmp_path, MLflow's and W&B's usage reporting are off. Without the extras (the `dev` extra has them)
the tests skip, naming what to install.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ance.run.config import load_run_config
from ance.run.errors import ConfigError
from ance.run.resume import flatten
from ance.run.sections import TelemetryConfig
from ance.run.telemetry import MetricsWriter, read_metrics
from ance.run.trackers import mlflow_key, trackers_for
from helpers_proc import finish, proc_env

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "tiny-cpu.yaml"
SCIFACT = ROOT.parent / "shared" / "data" / "scifact"
NO_MLFLOW = "the mlflow extra is not installed (pip install 'ance[mlflow]')"
NO_WANDB = "the wandb extra is not installed (pip install 'ance[wandb]')"
STEPS = [{"step": s, "loss": 2.0 / s, "lr": 1e-4, "negatives_version": None} for s in (1, 2, 3)]


def offline_env(tmp: Path) -> dict[str, str]:
    """W&B offline with every dir of its own under ``tmp``; no usage reporting from W&B or MLflow."""
    return {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_ERROR_REPORTING": "false",
            "WANDB_DIR": str(tmp / "wandb-dir"), "WANDB_CACHE_DIR": str(tmp / "wandb-cache"),
            "WANDB_CONFIG_DIR": str(tmp / "wandb-config"), "WANDB_DATA_DIR": str(tmp / "wandb-data"),
            "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    for key, value in offline_env(tmp_path).items():
        monkeypatch.setenv(key, value)


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def _log(run_dir, sinks) -> None:
    with MetricsWriter(run_dir, "trainer", tensorboard=False, sinks=sinks) as w:
        for record in STEPS:
            w.log("step", **record)
        w.log("eval", step=3, split="dev", **{"eval_ndcg@10": 0.5})
        w.log("resume", step=2, changes={"train.lr": [1e-4, 2e-4]})


# --------------------------------------------------------------------------- the sinks alone


def test_mlflow_key_spells_what_mlflow_refuses():
    assert mlflow_key("eval/eval_ndcg@10") == "eval/eval_ndcg_at_10"
    assert mlflow_key("step/loss") == "step/loss" and mlflow_key("a.b-c d:e") == "a.b-c d:e"
    assert mlflow_key("prompts[q]+é") == "prompts_q___" and len(mlflow_key("k" * 300)) == 250


def test_mlflow_file_store(tmp_path):
    pytest.importorskip("mlflow", reason=NO_MLFLOW)
    from mlflow.tracking import MlflowClient

    uri = f"file:{tmp_path / 'mlruns'}"
    params = {"train.lr": 1e-4, **{f"extra.k{i}": i for i in range(150)}}  # more than MLflow takes a call
    sinks = trackers_for(TelemetryConfig(tensorboard=False, mlflow=uri), tmp_path / "run", params)
    _log(tmp_path / "run", sinks)
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(sinks[0].run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params == {k: str(v) for k, v in params.items()}
    history = client.get_metric_history(run.info.run_id, "step/loss")
    assert [(m.step, m.value) for m in history] == [(1, 2.0), (2, 1.0), (3, 2.0 / 3)]
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "eval/eval_ndcg_at_10")] == [
        (3, 0.5)]


def test_a_tracker_that_goes_down_mid_run_is_dropped_and_metrics_go_on(tmp_path, caplog):
    """The MLflow store vanishes after the first record (a server gone): one warning, the sink dropped,
    every record still in metrics.jsonl, no exception into the trainer."""
    pytest.importorskip("mlflow", reason=NO_MLFLOW)
    import shutil

    store = tmp_path / "mlruns"
    sinks = trackers_for(TelemetryConfig(tensorboard=False, mlflow=f"file:{store}"), tmp_path / "run", {})
    with caplog.at_level("WARNING", logger="ance.run.telemetry"):
        with MetricsWriter(tmp_path / "run", "trainer", tensorboard=False, sinks=sinks) as w:
            w.log("step", **STEPS[0])
            shutil.rmtree(store)
            store.write_text("not a folder")  # nothing can be written there any more
            for rec in STEPS[1:]:
                w.log("step", **rec)
            assert w.sinks == []
    assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["event"] == "step"] == [1, 2, 3]
    warnings = [r.getMessage() for r in caplog.records if "MlflowSink failed" in r.getMessage()]
    assert len(warnings) == 1 and "metrics.jsonl" in warnings[0], caplog.text


def test_mlflow_uri_it_cannot_use_is_one_line(tmp_path):
    pytest.importorskip("mlflow", reason=NO_MLFLOW)
    with pytest.raises(ConfigError) as err:
        trackers_for(TelemetryConfig(mlflow="nosuchscheme://x"), tmp_path)
    message = str(err.value)
    assert message.startswith("telemetry.mlflow=nosuchscheme://x: MLflow cannot use this tracking URI (")
    assert message.endswith("or set telemetry.mlflow=null") and "\n" not in message


def test_wandb_offline(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb", reason=NO_WANDB)
    from helpers_wandb import wandb_run

    monkeypatch.delenv("WANDB_MODE")  # offline is the sink's default
    run_dir = tmp_path / "run"
    _log(run_dir, trackers_for(TelemetryConfig(tensorboard=False, wandb="ance-test"), run_dir, {"seed": 13}))
    # run.finish() can return before wandb's service has written the run log out; its teardown waits
    # for that (as a trainer process's exit does)
    wandb.teardown()
    run = wandb_run(run_dir)
    assert run["run"] == {"project": "ance-test", "name": "run", "config": {"seed": 13}}, run
    assert run["exit"] == 0
    assert run["metrics"] == {"trainer_step": "", "*": "trainer_step"}
    rows = [{k: v for k, v in row.items() if not k.startswith("_")} for row in run["history"]]
    assert rows == [*({"step/loss": r["loss"], "step/lr": 1e-4, "trainer_step": r["step"]} for r in STEPS),
                    {"eval/eval_ndcg@10": 0.5, "trainer_step": 3}]


@pytest.mark.parametrize("key, package", [("mlflow", "mlflow"), ("wandb", "wandb")])
def test_missing_package_is_one_line(tmp_path, monkeypatch, key, package):
    monkeypatch.setitem(sys.modules, package, None)
    monkeypatch.setitem(sys.modules, f"{package}.tracking", None)
    with pytest.raises(ConfigError) as err:
        trackers_for(TelemetryConfig(**{key: "x"}), tmp_path)
    assert str(err.value) == (f"telemetry.{key} is set but {package} is not installed: pip install "
                              f"'ance[{key}]' (or pip install {package}), or set telemetry.{key}=null")


# --------------------------------------------------------------------------- a real training run


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """`ance train` for 3 steps with the installed trackers: its run dir, MLflow URI and metrics log."""
    if not (SCIFACT / "corpus.jsonl").is_file():
        pytest.skip(f"no SciFact at {SCIFACT}")
    has = {name: _importable(name) for name in ("mlflow", "wandb")}
    if not any(has.values()):
        pytest.skip(f"{NO_MLFLOW}; {NO_WANDB}")
    work = tmp_path_factory.mktemp("trackers")
    run_dir, uri = work / "run", f"file:{work / 'mlruns'}"
    argv = [sys.executable, "-m", "ance.cli", "train", CONFIG, f"run_dir={run_dir}", f"data.path={SCIFACT}",
            "data.max_docs=300", "data.max_queries=40", "model.passage_max_length=64", "train.batch_size=4",
            "train.chunk_size=2", "train.device=cpu", "train.log_every=1", "train.max_steps=3",
            *([f"telemetry.mlflow={uri}"] if has["mlflow"] else []),
            *(["telemetry.wandb=ance-test"] if has["wandb"] else [])]
    log = work / "train.log"
    proc = subprocess.Popen([str(a) for a in argv], cwd=ROOT, env=proc_env(**offline_env(work)),
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)
    finish(proc, log)
    events = read_metrics(run_dir)
    steps = [(ev["step"], ev["loss"]) for ev in events if ev["event"] == "step"]
    evals = [(ev["step"], ev["eval_ndcg@10"]) for ev in events if ev["event"] == "eval"]
    assert [s for s, _ in steps] == [1, 2, 3] and [s for s, _ in evals] == [0, 3], events
    return {"run_dir": run_dir, "uri": uri, "steps": steps, "evals": evals,
            "config": flatten(load_run_config(run_dir).to_dict())}


def test_training_run_in_mlflow(trained):
    pytest.importorskip("mlflow", reason=NO_MLFLOW)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=trained["uri"])
    runs = client.search_runs([client.get_experiment_by_name("ance").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params == {k: str(v) for k, v in trained["config"].items()}
    assert run.data.params["train.max_steps"] == "3" and run.data.params["telemetry.mlflow"] == trained["uri"]

    def series(name):
        return [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, name)]

    assert series("step/loss") == trained["steps"]  # once a step, the values of metrics.jsonl
    assert series("eval/eval_ndcg_at_10") == trained["evals"]
    assert [s for s, _ in series("step/lr")] == [1, 2, 3]
    assert {"eval/eval_mrr_at_10", "eval/eval_recall_at_100", "checkpoint/write_s"} <= set(run.data.metrics)


def test_training_run_in_wandb(trained):
    pytest.importorskip("wandb", reason=NO_WANDB)
    from helpers_wandb import wandb_run

    run = wandb_run(trained["run_dir"])
    assert run["exit"] == 0 and run["run"]["project"] == "ance-test" and run["run"]["name"] == "run"
    assert run["run"]["config"] == json.loads(json.dumps(trained["config"]))
    assert run["metrics"]["*"] == "trainer_step"

    def series(name):
        return [(row["trainer_step"], row[name]) for row in run["history"] if name in row]

    assert series("step/loss") == trained["steps"]  # once a step, the values of metrics.jsonl
    assert series("eval/eval_ndcg@10") == trained["evals"]
    assert [s for s, _ in series("step/lr")] == [1, 2, 3]
