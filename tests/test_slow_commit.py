"""A trainer that must wait for fresher negatives while its last checkpoint is still being committed
(in the background, trainer/checkpoint.py) first finishes that commit and announces it: the
negatives it waits for come from that checkpoint. Real broker, inferencer and trainer processes."""

import sys

import pytest

from ance.run.telemetry import read_metrics
from helpers_refresh import free_port, needs_scifact
from test_e2e import CONFIG, REPO, ance, start, tails


@needs_scifact
@pytest.mark.timeout(300)
def test_a_wait_for_negatives_announces_the_commit_in_flight(tmp_path):
    run_dir, logs = tmp_path / "run", tmp_path / "logs"
    # max_gap = checkpoint_every: the step after each checkpoint needs that checkpoint's negatives,
    # while its commit (1.5 s longer here) is still running; a trainer that waited without
    # announcing it would time out after wait_timeout_s
    common = [str(CONFIG), f"run_dir={run_dir}", f"broker.address=tcp://127.0.0.1:{free_port()}",
              "train.max_steps=8", "train.checkpoint_every=4", "negatives.max_gap=4",
              "negatives.wait_timeout_s=60"]
    one_thread = {"OMP_NUM_THREADS": "1"}
    broker = start(ance("broker", *common), logs / "broker.log", **one_thread)
    worker = start(ance("infer", *common, "--device", "cpu", "--name", "0"), logs / "inferencer.log", **one_thread)
    trainer = start([sys.executable, str(REPO / "tests" / "slow_commit_train.py"), "1.5", *common],
                    logs / "trainer.log", **one_thread)
    try:
        assert trainer.wait(timeout=240) == 0, f"the trainer failed\n{tails(logs)}"
    finally:
        for p in (trainer, broker, worker):
            if p.poll() is None:
                p.terminate()
        for p in (broker, worker):
            p.wait(timeout=15)
    events = read_metrics(run_dir)
    assert [e["step"] for e in events if e["event"] == "checkpoint"] == [0, 4, 8]
    steps = {e["step"]: e for e in events if e["event"] == "step"}
    assert steps[5]["negatives_version"] == 4 and steps[5]["wait_s"] > 0, steps[5]  # it waited for version 4
    assert max(e["gap"] for e in steps.values()) <= 4
