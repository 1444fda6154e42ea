"""benchmarks/bench_refresh.py runs end to end, tiny and on CPU, so it does not rot.

Synthetic mode (random-initialised tiny BERT, a token cache written with random
ids, two inferencers so two shards merge) and a BEIR folder (SciFact subset,
one inferencer). Each checks the JSON line and the markdown table: every stage
time is there, the timed refresh ran on all shards, and the refresh events in
metrics.jsonl carry the stage times.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import sys
from pathlib import Path

import pytest

from helpers_refresh import SCIFACT, needs_scifact

pytestmark = pytest.mark.slow

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_refresh.py"
STAGES = ("load_s", "encode_s", "index_s", "search_s", "transfer_s", "query_encode_s", "knn_s",
          "queue_s", "merge_s", "select_s", "persist_s", "send_s")


def run_bench(tmp_path: Path, *args: str) -> tuple[dict, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(BENCH), "--device", "cpu", "--worker-threads", "1",
                           "--work-dir", str(tmp_path), *args], capture_output=True, text=True, env=env,
                          timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("{"))
    return json.loads(line), proc.stdout


def check(result: dict, stdout: str, tmp_path: Path, workers: int, n_chunks: int) -> None:
    for run in [result["warmup"], *result["runs"]]:
        assert run["n_shards"] == workers and run["n_chunks"] == n_chunks
        assert 0 < run["latency_first_s"] <= run["latency_all_s"] <= run["latency_done_s"]
        for key in STAGES:
            assert isinstance(run[key], float) and run[key] >= 0, (key, run.get(key))
    warm = result["median"]
    for row in ("| load |", "| encode |", "| index |", "| search |", "| transfer |", "| merge |", "| select |",
                "| persist |", "| send |", "| **latency_first** |", "| **latency_all** |"):
        assert row in stdout, row
    events = [json.loads(x) for p in tmp_path.glob("run-*/metrics.jsonl") for x in p.read_text().splitlines()]
    refresh = [e for e in events if e["event"] == "refresh"]
    assert len(refresh) == 1 + len(result["runs"]) and all(k in refresh[-1] for k in STAGES + ("latency_all_s",))


def test_synthetic_two_workers(tmp_path):
    result, out = run_bench(tmp_path, "--synthetic-docs", "2000", "--doc-tokens", "32", "--synthetic-queries",
                            "200", "--model-config", "tiny", "--workers", "2", "--chunk-queries", "64",
                            "--depth", "50", "--backend", "torch", "--out", str(tmp_path / "result.json"))
    assert result["mode"] == "synthetic" and result["n_docs"] == 2000 and result["n_queries"] == 200
    assert json.loads((tmp_path / "result.json").read_text()) == result   # the JSON alone, tables beside it
    assert "| **latency_all** |" in (tmp_path / "result.md").read_text()
    check(result, out, tmp_path, workers=2, n_chunks=4)
    # The inferencers used the synthetic token cache (32 tokens a passage), not one of their own.
    caches = list(tmp_path.glob("run-*/cache/tokens-*"))
    assert len(caches) == 1 and json.loads((caches[0] / "meta.json").read_text())["max_tokens"] == 30


@needs_scifact
def test_beir_folder(tmp_path):
    result, out = run_bench(tmp_path, "--data", str(SCIFACT), "--model", "tiny-bert", "--max-docs", "300",
                            "--max-queries", "40", "--passage-max-length", "64", "--chunk-queries", "16",
                            "--depth", "30", "--keep", "5")
    assert result["mode"] == "data" and result["n_docs"] == 300 and result["goal_s"] is None  # a CPU subset
    check(result, out, tmp_path, workers=1, n_chunks=3)


def test_a_broker_that_dies_at_start_ends_the_benchmark_at_once(tmp_path):
    """A broker that cannot start (here: an address of no local interface) never writes the run's secret;
    the benchmark says so with the broker's log instead of waiting out --start-timeout."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    t = time.time()
    proc = subprocess.run([sys.executable, str(BENCH), "--device", "cpu", "--worker-threads", "1",
                           "--work-dir", str(tmp_path), "--synthetic-docs", "200", "--doc-tokens", "16",
                           "--synthetic-queries", "20", "--model-config", "tiny", "--start-timeout", "600",
                           "--set", "broker.address=tcp://203.0.113.1:5555"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode != 0
    assert "exited before the trainer could join: broker" in proc.stdout + proc.stderr
    assert time.time() - t < 240  # not the 600 s start timeout
