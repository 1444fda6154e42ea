"""Atomic checkpoints: only complete ones are ever listed, whatever kills the writer."""

from pathlib import Path

import pytest
import torch

from ance.run.errors import CheckpointError
from ance.run.rundir import RunDir
from ance.trainer.checkpoint import (latest_checkpoint, list_checkpoints, load_trainer_state, prune_checkpoints,
                                     read_manifest, sweep_incomplete, write_checkpoint)

from helpers_proc import kill_9_at_pause


def fake_model(payload: bytes):
    def save(path: Path) -> None:
        (path / "model.safetensors").write_bytes(payload)
        (path / "config.json").write_text("{}")
    return save


def test_write_list_load(tmp_path):
    for step in (0, 5, 10):
        write_checkpoint(tmp_path, step, fake_model(b"x" * step), {"step": step, "t": torch.ones(2)},
                         {"config_hash": "abc"})
    assert [s for s, _ in list_checkpoints(tmp_path)] == [0, 5, 10]
    step, path = latest_checkpoint(tmp_path)
    assert step == 10 and path == RunDir(tmp_path).checkpoint(10)
    assert read_manifest(path)["config_hash"] == "abc"
    assert load_trainer_state(path)["step"] == 10
    # re-writing the same step replaces it atomically
    write_checkpoint(tmp_path, 10, fake_model(b"y"), {"step": 10})
    assert (path / "model.safetensors").read_bytes() == b"y"


def test_incomplete_dirs_are_ignored_and_swept(tmp_path):
    write_checkpoint(tmp_path, 1, fake_model(b"a"), {"step": 1})
    half = RunDir(tmp_path).checkpoint(2)
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"partial")
    tmp = tmp_path / "checkpoints" / ".tmp-step-000003-123"
    tmp.mkdir()
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1]
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        read_manifest(half)
    removed = sweep_incomplete(tmp_path)
    assert set(removed) == {half, tmp}
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1]


def test_prune_keeps_newest_and_protected(tmp_path):
    for step in range(0, 50, 10):
        write_checkpoint(tmp_path, step, fake_model(b"m"), None)
    deleted = prune_checkpoints(tmp_path, keep=2, protect={10})
    assert deleted == [0, 20]
    assert [s for s, _ in list_checkpoints(tmp_path)] == [10, 30, 40]


WRITER = r"""
import sys, time
from pathlib import Path
from ance.trainer.checkpoint import write_checkpoint
run, flag = sys.argv[1], Path(sys.argv[2])
def save(path):
    (path / "model.safetensors").write_bytes(b"w" * 1_000_000)
write_checkpoint(run, 1, save, {"step": 1})
def save_then_pause(path):  # the model is saved after the trainer state, before the manifest
    save(path)
    flag.write_text(str(path))
    time.sleep(60)
write_checkpoint(run, 2, save_then_pause, {"step": 2})
"""


def test_kill_9_during_write_leaves_only_complete_checkpoints(tmp_path):
    flag = tmp_path / "paused"
    kill_9_at_pause(WRITER, str(tmp_path / "run"), str(flag), flag=flag)
    assert Path(flag.read_text()).exists()  # the half-written temp dir is there...
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [1]  # ...but never listed
    assert load_trainer_state(RunDir(tmp_path / "run").checkpoint(1))["step"] == 1
    sweep_incomplete(tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-000001"]
