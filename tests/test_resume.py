"""`ance train --resume` after a kill -9 mid-checkpoint continues exactly as if never interrupted.

Two real `ance train` processes on tiny-bert and a SciFact subset, static hard
negatives (so the negatives table and its sampling RNG are part of the state):
one runs uninterrupted; the other (tests/paused_train.py) is frozen while writing
checkpoint 4 and killed with SIGKILL, then resumed from checkpoint 2. Dropout is
on, the LR schedule warms up, so model, optimizer, scheduler, RNG, data position
and negatives must all come back for the losses to match.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ance.run.telemetry import read_metrics
from helpers_proc import finish, proc_env
from ance.run.rundir import MANIFEST, TRAINER_STATE as STATE
from ance.trainer.checkpoint import latest_checkpoint, list_checkpoints, read_manifest

ROOT = Path(__file__).resolve().parents[1]
SCIFACT = ROOT.parent / "shared" / "data" / "scifact"
pytestmark = pytest.mark.skipif(not (SCIFACT / "corpus.jsonl").is_file(), reason=f"no SciFact at {SCIFACT}")

STEPS = 6
SMALL = [f"data.path={SCIFACT}", "data.max_docs=300", "data.max_queries=40", "model.passage_max_length=64",
         f"train.max_steps={STEPS}", "train.batch_size=4", "train.chunk_size=2", "train.checkpoint_every=2",
         "train.keep_checkpoints=10", "train.log_every=1", "train.warmup_ratio=0.34", "train.device=cpu",
         "negatives.source=static", "negatives.n_per_query=2"]


def train(*argv, log: Path, pause_at: tuple[int, Path] | None = None) -> subprocess.Popen:
    """`ance train ARGV`; with ``pause_at=(step, flag)`` frozen while writing that checkpoint."""
    entry = ["-m", "ance.cli", "train"] if pause_at is None else [str(ROOT / "tests" / "paused_train.py"),
                                                                  str(pause_at[0]), str(pause_at[1])]
    cmd = [sys.executable, *entry, *map(str, argv), "--log-level", "WARNING"]
    return subprocess.Popen(cmd, cwd=ROOT, env=proc_env(), stdout=log.open("wb"), stderr=subprocess.STDOUT)


def static_negatives(path: Path) -> Path:
    """A negatives file for the run's data: 5 random non-positive documents a query."""
    from ance.run.config import load_config
    from ance.data.dataset import load_for_config
    from ance.negatives.files import write_negatives

    cfg = load_config(ROOT / "configs" / "tiny-cpu.yaml", [o for o in SMALL if o.startswith("data.")])
    data = load_for_config(cfg)
    split = data.split(cfg.data.train_split)
    rng = np.random.default_rng(7)
    neg = np.stack([rng.choice(np.setdiff1d(np.arange(len(data.corpus)), pos), 5, replace=False)
                    for pos in split.positives])
    write_negatives(path, split.ids, neg, data.corpus.ids, {"version": 0, "data_fingerprint": data.fingerprint})
    return path


def losses(run_dir: Path) -> dict[int, dict]:
    """The step events of a run, by step; a step logged twice (before a kill and after resume) keeps the last."""
    return {ev["step"]: ev for ev in read_metrics(run_dir) if ev["event"] == "step"}


def params(ckpt: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(ckpt / "model.safetensors"))


def wait_for_file(path: Path, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not (path.is_file() and path.read_text()):
        if proc.poll() is not None:
            raise AssertionError(f"`ance train` exited {proc.returncode} before pausing:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no pause after {timeout}s:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


def test_kill_9_mid_checkpoint_then_resume_matches_uninterrupted_run(tmp_path):
    neg = static_negatives(tmp_path / "neg.tsv")
    config = ROOT / "configs" / "tiny-cpu.yaml"
    full, broken = tmp_path / "full", tmp_path / "broken"
    flag = tmp_path / "paused"
    overrides = [*SMALL, f"negatives.static_file={neg}"]

    # Both at once (one thread each): the uninterrupted reference and the run to be killed at checkpoint 4.
    ref = train(config, f"run_dir={full}", *overrides, log=tmp_path / "full.log")
    victim = train(config, f"run_dir={broken}", *overrides, log=tmp_path / "broken.log",
                   pause_at=(4, flag))
    try:
        wait_for_file(flag, victim, tmp_path / "broken.log")
        os.kill(victim.pid, signal.SIGKILL)
        assert victim.wait(30) == -signal.SIGKILL
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()

    # Only complete checkpoints count: step 2; the frozen write of step 4 is a temp dir without a manifest.
    tmp_dir = Path(flag.read_text())
    assert tmp_dir.parent == broken / "checkpoints" and tmp_dir.name.startswith(".tmp-step-000004-")
    assert tmp_dir.is_dir() and not (tmp_dir / MANIFEST).exists() and (tmp_dir / STATE).is_file()
    assert [s for s, _ in list_checkpoints(broken)] == [2]
    step, path = latest_checkpoint(broken)
    assert step == 2 and path == broken / "checkpoints" / "step-000002"
    manifest = read_manifest(path)
    assert manifest["step"] == 2 and manifest["config_hash"]
    assert max(losses(broken)) == 4  # it did train past the checkpoint it resumes from

    resumed = train("--resume", broken, log=tmp_path / "resume.log")
    finish(resumed, tmp_path / "resume.log")
    finish(ref, tmp_path / "full.log")

    assert not tmp_dir.exists(), "the interrupted write is swept on start"
    assert [s for s, _ in list_checkpoints(broken)] == [2, 4, 6]
    a, b = losses(full), losses(broken)
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
    for s in range(3, STEPS + 1):  # step 3 is the first after the resume point
        assert math.isclose(b[s]["loss"], a[s]["loss"], rel_tol=1e-6), (s, a[s]["loss"], b[s]["loss"])
        assert math.isclose(b[s]["lr"], a[s]["lr"], rel_tol=1e-9), (s, a[s]["lr"], b[s]["lr"])
        assert math.isclose(b[s]["grad_norm"], a[s]["grad_norm"], rel_tol=1e-5), s
    assert len({a[s]["loss"] for s in a}) == STEPS  # the losses do move: the comparison means something

    pa, pb = params(full / "checkpoints" / "step-000006"), params(broken / "checkpoints" / "step-000006")
    assert pa.keys() == pb.keys()
    worst = max(float(np.abs(pa[k] - pb[k]).max()) for k in pa)
    assert worst <= 1e-5, f"final parameters differ by up to {worst}"
    start = params(broken / "checkpoints" / "step-000002")
    assert max(float(np.abs(pa[k] - start[k]).max()) for k in pa) > 1e-4  # and they did train after step 2


def test_auto_resume_starts_fresh_then_continues(tmp_path):
    """`ance train --auto-resume CONFIG`: fresh when the run dir has no checkpoint, resumed when it has."""
    import json as _json
    import os as _os
    import subprocess as _sp
    import sys as _sys

    run = tmp_path / "run"
    base = [_sys.executable, "-m", "ance.cli", "train", "--auto-resume", "configs/tiny-cpu.yaml", f"run_dir={run}",
            "data.max_docs=200", "data.max_queries=32", "train.batch_size=8", "train.chunk_size=8",
            "train.checkpoint_every=2", "negatives.source=inbatch", "telemetry.tensorboard=false"]
    env = {**_os.environ, "OMP_NUM_THREADS": "1"}
    _sp.run(base + ["train.max_steps=2"], check=True, env=env, capture_output=True, timeout=180)
    out = _sp.run(base + ["train.max_steps=4"], check=True, env=env, capture_output=True, text=True, timeout=180)
    assert "--auto-resume: continuing from" in out.stderr + out.stdout
    steps = [_json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if '"event": "step"' in line]
    assert steps == [1, 2, 3, 4]
