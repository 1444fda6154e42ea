"""Checkpoints staged by the trainer and committed in the background (trainer/checkpoint.py)."""

import json
import threading
import time
from pathlib import Path

import pytest
import torch

from ance.run.rundir import manifest_path
from ance.trainer.checkpoint import (CommitThread, Staged, list_checkpoints, load_trainer_state, stage_checkpoint,
                                     sweep_incomplete)

from helpers_proc import kill_9_at_pause


def save_model(path: Path) -> None:
    (path / "model.safetensors").write_bytes(b"w" * 1000)
    (path / "config.json").write_text("{}")


class Gated(Staged):
    """A staged checkpoint whose commit waits for ``gate`` (or fails with ``error``)."""

    gate: threading.Event | None = None
    error: Exception | None = None

    def commit(self) -> Path:
        if self.error is not None:
            raise self.error
        assert self.gate is not None and self.gate.wait(10)
        return super().commit()


def gated(run: Path, step: int, gate=None, error=None) -> Gated:
    g = Gated(**vars(stage_checkpoint(run, step, save_model, {"step": step})))
    g.gate, g.error = gate, error
    return g


def test_staged_is_invisible_until_committed(tmp_path):
    staged = stage_checkpoint(tmp_path, 7, save_model, {"step": 7, "t": torch.ones(2)}, {"config_hash": "abc"})
    assert list_checkpoints(tmp_path) == [] and staged.tmp.is_dir() and staged.write_s is None
    assert staged.commit() == staged.final and not staged.tmp.exists()
    assert list_checkpoints(tmp_path) == [(7, staged.final)]
    manifest = json.loads(manifest_path(staged.final).read_text())
    assert manifest["step"] == 7 and manifest["config_hash"] == "abc"
    assert staged.write_s >= staged.staged_s >= 0


def test_the_staged_state_is_a_copy(tmp_path):
    """Training goes on while the commit runs: what was staged must not move with the live tensors."""
    live = torch.zeros(4)
    staged = stage_checkpoint(tmp_path, 1, save_model, {"step": 1, "exp_avg": live})
    live.add_(1.0)
    staged.commit()
    assert torch.equal(load_trainer_state(staged.final)["exp_avg"], torch.zeros(4))


def test_commits_one_at_a_time_in_order_each_reported_once(tmp_path):
    commits = CommitThread()
    assert commits.poll() is None and commits.wait() is None
    gate = threading.Event()
    first = gated(tmp_path, 1, gate)
    assert commits.submit(first) is None
    time.sleep(0.05)
    assert commits.poll() is None and list_checkpoints(tmp_path) == []  # in flight
    gate.set()
    assert commits.wait() is first and first.write_s is not None
    assert commits.poll() is None  # reported once
    second, third = gated(tmp_path, 2, gate), gated(tmp_path, 3, gate)
    commits.submit(second)
    assert commits.submit(third) is second  # the next submit finishes the one in flight first
    assert commits.wait() is third
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1, 2, 3]


def test_a_failed_commit_raises_in_the_callers_thread(tmp_path):
    commits = CommitThread()
    commits.submit(gated(tmp_path, 1, error=OSError(28, "No space left on device")))
    with pytest.raises(OSError, match="No space left"):
        commits.wait()
    assert commits.wait() is None and list_checkpoints(tmp_path) == []


COMMITTER = r"""
import sys, time
from pathlib import Path
from ance.trainer import checkpoint
run, flag = sys.argv[1], Path(sys.argv[2])
def save(path):
    (path / "model.safetensors").write_bytes(b"w" * 1_000_000)
commits = checkpoint.CommitThread()
commits.submit(checkpoint.stage_checkpoint(run, 1, save, {"step": 1}))
commits.wait()
fsync_tree = checkpoint._fsync_tree
def fsync_then_pause(root):  # the commit's files are durable, its manifest not yet written
    fsync_tree(root)
    flag.write_text(str(root))
    time.sleep(60)
checkpoint._fsync_tree = fsync_then_pause
commits.submit(checkpoint.stage_checkpoint(run, 2, save, {"step": 2}))
while True:  # the trainer stepping on
    time.sleep(0.01)
"""


def test_kill_9_during_a_background_commit_leaves_only_complete_checkpoints(tmp_path):
    flag, run = tmp_path / "paused", tmp_path / "run"
    kill_9_at_pause(COMMITTER, str(run), str(flag), flag=flag)
    assert Path(flag.read_text()).exists()
    assert [s for s, _ in list_checkpoints(run)] == [1]
    assert load_trainer_state(list_checkpoints(run)[0][1])["step"] == 1
    sweep_incomplete(run)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000001"]
