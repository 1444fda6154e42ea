"""studies/quality_sweep.sh (and the quality.sh it runs per job) end to end, tiny and on CPU:
two settings side by side, static and ANCE, each evaluated, summarised in sweep.json, so the
scripts behind docs/results.md's sweep do not rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers_refresh import SCIFACT, needs_scifact

ROOT = Path(__file__).resolve().parents[1]
TINY = ("train.max_steps=4 train.batch_size=8 train.checkpoint_every=2 negatives.max_gap=4 launch.inferencers=1 "
        "model.passage_max_length=32 broker.worker_timeout_s=60 data.max_docs=800 data.max_queries=80")


@needs_scifact
@pytest.mark.slow
def test_sweep_runs_settings_side_by_side(tmp_path):
    from ance.model.biencoder import resolve_model

    root = tmp_path / "sweep"
    sweep = f"w30|static async|13|{TINY}\nw50|static|13|{TINY}|0 50"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "GPUS": "", "MODEL": resolve_model("tiny-bert"), "DATA": str(SCIFACT), "ROOT": str(root),
           "JOBS": "3", "SWEEP": sweep, "MINE_ARGS": "--max-docs 800 --max-queries 80 --max-length 32",
           # the evaluation on the same subset, not all 5,183 docs at 256 tokens (35 s a job on 2 cores)
           "EVAL_ARGS": "--max-docs 800 --max-queries 80 --max-length 32"}
    proc = subprocess.run(["bash", str(ROOT / "studies" / "quality_sweep.sh")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((root / "sweep.json").read_text())
    assert set(summary) == {"w30", "w50"}
    assert set(summary["w30"]) == {"static-13", "async-13"} and set(summary["w50"]) == {"static-13"}
    for setting in summary.values():
        for run in setting.values():
            assert 0 <= run["dev"]["ndcg@10"] <= 1 and run["steps"] == 4
    # at least the final refresh (final_refresh); with max_gap 4 over 4 steps the trainer never waits, so on a
    # loaded machine the inferencer may still be starting when versions 0 and 2 are written (newest wins)
    assert summary["w30"]["async-13"]["refreshes"] >= 1 and summary["w30"]["async-13"]["max_gap"] <= 4
    # each window's static negatives were mined once, with that window
    for lo, hi in ((0, 30), (0, 50)):
        header = (root / f"static-{lo}-{hi}.tsv").read_text().splitlines()[0]
        assert f'"rank_window": [{lo}, {hi}]' in header
    assert "w30" in proc.stdout and "mean=" in proc.stdout
