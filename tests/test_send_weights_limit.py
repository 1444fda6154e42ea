"""`ance launch` with ``broker.send_weights=true`` and a checkpoint larger than one frame carries: the
trainer refuses to announce its first checkpoint (before, the broker abandoned every refresh and the
trainer re-announced forever), exits 2 with a one-line error naming the fix, and the launcher stops
every process and exits 2 too. Real processes: launcher, broker, trainer, one CPU inferencer, tiny-bert.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from ance.run.rundir import shipped_bytes, weights_limit
from ance.run.telemetry import read_metrics
from helpers_proc import alive, kill_mentioning, pids_mentioning, proc_env
from helpers_refresh import free_port, needs_scifact

pytestmark = [needs_scifact, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
FRAME = 2 << 20  # 1 MiB of weights a frame (weights_limit), far less than a tiny-bert checkpoint (~9 MB)


@pytest.mark.timeout(180)
def test_launch_stops_when_a_checkpoint_is_too_large_to_send(tmp_path):
    run_dir = tmp_path / "run"
    log = tmp_path / "launch.log"
    argv = [sys.executable, "-m", "ance.cli", "launch", str(ROOT / "configs" / "tiny-async-cpu.yaml"),
            f"run_dir={run_dir}", f"broker.address=tcp://127.0.0.1:{free_port()}", "broker.send_weights=true",
            f"broker.max_frame_bytes={FRAME}", "train.max_steps=8", "train.checkpoint_every=4",
            "negatives.max_gap=4", "data.max_docs=300", "data.max_queries=40", "launch.inferencers=1",
            "telemetry.tensorboard=false", "--no-progress"]
    start = time.time()
    proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT,
                            env=proc_env(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", CUDA_VISIBLE_DEVICES=""))
    try:
        try:
            rc = proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"ance launch ran over 120 s (the trainer never gave up?):\n"
                                 f"{log.read_text(errors='replace')[-3000:]}") from None
        took = time.time() - start
        out = log.read_text(errors="replace")
        trainer_log = (run_dir / "logs" / "trainer-0.log").read_text(errors="replace")
        assert rc == 2, f"ance launch exited {rc} after {took:.0f}s:\n{out[-3000:]}\n{trainer_log[-3000:]}"

        # the trainer's last word: one line, the config error naming the fix; no traceback anywhere
        errors = [line for line in trainer_log.splitlines() if line.startswith("ance train: error:")]
        assert len(errors) == 1, trainer_log[-3000:]
        err = errors[0]
        assert "step-000000" in err and f"broker.max_frame_bytes={FRAME}" in err, err
        assert "broker.send_weights=false" in err and "raise broker.max_frame_bytes" in err, err
        for f in [log, *(run_dir / "logs").glob("*.log")]:
            assert "Traceback" not in f.read_text(errors="replace"), f"a traceback in {f.name}"
        # the launcher repeats the trainer's reason on its own console, not only in the trainer's log
        assert f"stopping: trainer-0 exited with code 2: {err}" in out, out[-3000:]

        # the check was real: the first checkpoint is written (a resume can use it) and too large to ship
        ckpt = run_dir / "checkpoints" / "step-000000"
        assert shipped_bytes(ckpt) > weights_limit(FRAME)
        events = read_metrics(run_dir)
        assert not [e for e in events if e["event"] == "refresh"], "nothing was announced, so nothing refreshed"
        assert events[-1]["event"] == "run_end" and events[-1]["code"] == 2, events[-1]

        # every role the launcher started is gone with it
        started = {e["name"]: e["pid"] for e in events if e["event"] == "process" and e.get("state") == "started"}
        assert set(started) == {"broker", "trainer-0", "inferencer-0"}, started
        assert not [n for n, pid in started.items() if alive(pid)], "processes left running"
        assert pids_mentioning(run_dir) == [], "processes of the run left running"
    finally:
        if proc.poll() is None:
            proc.kill()
        kill_mentioning(run_dir)  # a failed assertion above must not leave the roles running
