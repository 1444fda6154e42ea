"""The README's first command, `ance launch configs/scifact-quickstart.yaml`: refreshed negatives at work.

* The config's own numbers guarantee that the trainer consumes at least three
  refreshed versions whatever the timing: with ``checkpoint_every = C <= max_gap
  = G < 2C``, step ``G + 1 + kC`` needs a version newer than ``kC`` while
  checkpoint ``(k + 2)C`` does not exist yet, so versions C, 2C, 3C are each used.
* The same config launched on a smaller budget (a smaller subset, shorter
  passages, 8 steps of 8 with C=2, G=3, so the same rule holds) with the real
  all-MiniLM-L6-v2 and two CPU inferencers: at least three refreshed versions
  among the steps besides the warm-up's 0, the gap bounded and falling back when
  a version arrives, the before/after line printed, and `ance monitor` on the
  finished run saying it finished.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from ance.run.config import load_config

from helpers_refresh import free_port, needs_scifact
from test_e2e import ance, check_run, child_env, kill_leftovers, tails

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "scifact-quickstart.yaml"
SMALL = ["data.max_docs=160", "data.max_queries=50", "model.passage_max_length=32", "model.query_max_length=24",
         "train.max_steps=8", "train.batch_size=8", "train.checkpoint_every=2", "negatives.max_gap=3",
         "negatives.depth=50", "negatives.wait_timeout_s=240"]
RUN_TIMEOUT_S = 420


def guaranteed_versions(max_steps: int, every: int, max_gap: int) -> list[int]:
    """The checkpoint versions every run of these numbers must train on (besides 0), however refreshes are timed."""
    if not every <= max_gap < 2 * every:
        return []
    return [every * k for k in range(1, max_steps // every + 1) if max_gap + 1 + (k - 1) * every <= max_steps]


def test_the_config_guarantees_three_refreshed_versions():
    cfg = load_config(CONFIG)
    t, n = cfg.train, cfg.negatives
    assert n.source == "async" and n.final_refresh and cfg.data.eval_split
    assert guaranteed_versions(t.max_steps, t.checkpoint_every, n.max_gap) == [8, 16, 24]
    small = load_config(CONFIG, SMALL)
    assert guaranteed_versions(small.train.max_steps, small.train.checkpoint_every, small.negatives.max_gap) \
        == [2, 4, 6]
    assert guaranteed_versions(30, 30, 60) == []  # the full SciFact CPU config: no such guarantee


@needs_scifact
@pytest.mark.slow
def test_quickstart_consumes_refreshed_versions(tmp_path):
    run_dir = tmp_path / "run"
    log = tmp_path / "launch.log"
    argv = ance("launch", CONFIG, f"run_dir={run_dir}", f"broker.address=tcp://127.0.0.1:{free_port()}",
                *SMALL, "--no-progress")
    try:
        with open(log, "wb") as fh:
            proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=fh, env=child_env(), cwd=str(REPO),
                                  timeout=RUN_TIMEOUT_S)
    finally:
        kill_leftovers(run_dir)
    logs = (log, run_dir / "logs")
    assert proc.returncode == 0, f"ance launch exited with {proc.returncode}\n{tails(*logs)}"

    run = check_run(run_dir, logs)  # every step logged, gap <= max_gap, >= 3 refreshed versions trained on, ...
    assert {2, 4, 6} <= set(run["consumed"]), run["consumed"]
    gaps = [e["gap"] for e in run["steps"]]
    assert any(b < a for a, b in zip(gaps, gaps[1:])), gaps  # a new version arrived: the gap fell back
    printed = log.read_text()
    assert re.search(r"^dev nDCG@10: 0\.\d{4} at step 0 -> 0\.\d{4} at step 8$", printed, re.M), tails(log)
    end = [e for e in run["events"] if e["event"] == "run_end"]
    assert len(end) == 1 and end[0]["code"] == 0 and run["events"][-1] is end[0], end

    shown = subprocess.run([sys.executable, "-m", "ance.cli", "monitor", str(run_dir), "--once"],
                           capture_output=True, text=True, env={**child_env(), "COLUMNS": "400"}, cwd=str(REPO),
                           timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "finished" in shown.stdout and "exit code 0" in shown.stdout and "alive" not in shown.stdout, \
        shown.stdout
