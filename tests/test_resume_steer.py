"""A resume that honours what changed (issue 25): the lr and the horizon take effect without a jump, a
fixed key is refused (exit 2, named), readers count each step once, and `ance train` shows its progress.

Two real `ance train` processes on tiny-bert and a SciFact subset, in-batch negatives: 6 steps with
checkpoints at 3 and 6; the step-6 checkpoint is removed, then `--resume` from 3 with train.lr doubled
and train.max_steps=9. The test computes the expected lr of every step.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ance.run.config import load_config, save_config
from ance.run.telemetry import drop_rerun, read_metrics
from ance.trainer.optim import linear_schedule, resumed_schedule
from helpers_proc import proc_env

ROOT = Path(__file__).resolve().parents[1]
SCIFACT = ROOT.parent / "shared" / "data" / "scifact"
LR = 1e-4
BASE = ["configs/tiny-cpu.yaml", "data.max_docs=200", "data.max_queries=32", "train.batch_size=8",
        "train.chunk_size=8", "train.checkpoint_every=3", "train.warmup_ratio=0.34", f"train.lr={LR}",
        "model.passage_max_length=32", "train.device=cpu", "train.progress_every_s=0.001"]


def ance(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "ance.cli", *argv, "--log-level", "WARNING"], cwd=ROOT,
                         env=proc_env(), capture_output=True, text=True, timeout=240)
    if check and out.returncode:
        raise AssertionError(f"ance {' '.join(argv)} exited {out.returncode}:\n{out.stderr[-3000:]}")
    return out


def test_resumed_schedule_is_the_old_one_when_nothing_changes():
    total, warmup = 20, 5
    for start in range(total):
        m0 = linear_schedule(start, total, warmup)
        for k in range(start, total + 1):
            assert math.isclose(resumed_schedule(k, start, m0, total, warmup), linear_schedule(k, total, warmup),
                                abs_tol=1e-12), (start, k)


def test_resumed_schedule_moves_the_horizon_without_a_jump():
    m0 = linear_schedule(12, 20, 2)  # past warm-up
    values = [resumed_schedule(k, 12, m0, 30, 3) for k in range(12, 31)]
    assert values[0] == m0 and values[-1] == 0.0
    assert all(a > b for a, b in zip(values, values[1:]))  # straight down from where it stood


@pytest.mark.skipif(not (SCIFACT / "corpus.jsonl").is_file(), reason=f"no SciFact at {SCIFACT}")
def test_resume_with_new_lr_and_horizon(tmp_path):
    run = tmp_path / "run"
    first = ance("train", *BASE, "train.max_steps=6", f"run_dir={run}")
    lines = [x for x in first.stderr.splitlines() if x.startswith("step ")]
    assert lines and lines[-1].startswith("step 6/6 100% loss "), first.stderr  # non-TTY progress lines
    assert all(len(x) <= 80 for x in lines) and " lr " in lines[-1] and "ETA 0:00" in lines[-1]
    shutil.rmtree(run / "checkpoints" / "step-000006")

    ance("train", "--resume", str(run), f"train.lr={2 * LR}", "train.max_steps=9")

    raw = read_metrics(run, rerun=True)
    assert [e["step"] for e in raw if e["event"] == "step"] == [1, 2, 3, 4, 5, 6, 4, 5, 6, 7, 8, 9]
    events = read_metrics(run)
    steps = {e["step"]: e for e in events if e["event"] == "step"}
    assert [e["step"] for e in events if e["event"] == "step"] == list(range(1, 10))  # each step once
    resume = next(e for e in events if e["event"] == "resume")
    assert resume["step"] == 3
    assert resume["changes"]["train.lr"] == [LR, 2 * LR] and resume["changes"]["train.max_steps"] == [6, 9]

    # steps 1-3 on the old schedule (warm-up 2 of 6), then from where it stood at 3, scaled to the new
    # peak, straight down to 0 at step 9: the lr of step j is the multiplier at j - 1
    m3 = linear_schedule(3, 6, 2)
    expected = {j: LR * linear_schedule(j - 1, 6, 2) for j in (1, 2, 3)}
    expected.update({j: 2 * LR * m3 * (9 - (j - 1)) / (9 - 3) for j in range(4, 10)})
    for j, lr in expected.items():
        assert math.isclose(steps[j]["lr"], lr, rel_tol=1e-6), (j, steps[j]["lr"], lr)
    assert math.isclose(steps[4]["lr"] / (2 * LR), m3 * 1.0, rel_tol=1e-6)  # no jump: the old multiplier
    assert steps[9]["total"] == 9
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["lr"] == 2 * LR and saved["train"]["max_steps"] == 9  # what is in effect


def test_a_changed_fixed_key_is_refused_naming_it(tmp_path):
    run = tmp_path / "run"
    save_config(load_config(ROOT / "configs" / "tiny-cpu.yaml", [f"run_dir={run}"]), run)
    out = ance("train", "--resume", str(run), "model.pooling=cls", "train.lr=1e-5", check=False)
    assert out.returncode == 2, out.stderr
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and "model.pooling cannot change on resume ('mean'" in err[0] and "--force" in err[0]
    assert "Traceback" not in out.stderr
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["pooling"] == "mean"  # nothing written


def test_launch_refuses_a_changed_fixed_key_too(tmp_path):
    run = tmp_path / "run"
    save_config(load_config(ROOT / "configs" / "tiny-async-cpu.yaml", [f"run_dir={run}"]), run)
    out = ance("launch", "--resume", str(run), "seed=7", "--no-progress", check=False)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("ance launch: error: seed cannot change on resume (13 in ")
    assert not (run / "logs").exists() and not (run / "metrics.jsonl").exists()  # nothing started


def test_readers_count_each_step_once():
    events = [{"event": "step", "step": s} for s in (1, 2, 3, 4, 5)] + [
        {"event": "checkpoint", "step": 4}, {"event": "refresh", "version": 3},
        {"event": "resume", "step": 3}] + [{"event": "step", "step": s} for s in (4, 5, 6)]
    kept = drop_rerun(events)
    assert [e["step"] for e in kept if e["event"] == "step"] == [1, 2, 3, 4, 5, 6]
    assert {"event": "refresh", "version": 3} in kept and {"event": "checkpoint", "step": 4} not in kept


def test_epochs_give_the_horizon():
    from ance.trainer.resume import total_steps

    positives = [[0], [1, 2], [3], [4, 5, 6]]  # 4 queries, 7 (query, positive) pairs
    cfg = load_config(ROOT / "configs" / "tiny-cpu.yaml", ["train.epochs=2.5", "train.batch_size=2"])
    assert total_steps(cfg, positives) == 5  # ceil(2.5 * 4 / 2)
    cfg = load_config(ROOT / "configs" / "tiny-cpu.yaml", ["train.epochs=1", "train.batch_size=2",
                                                           "train.sample_by=pair"])
    assert total_steps(cfg, positives) == 4  # ceil(7 / 2)
    assert total_steps(load_config(ROOT / "configs" / "tiny-cpu.yaml"), positives) == 40  # max_steps
