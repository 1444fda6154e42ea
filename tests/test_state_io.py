"""Trainer state on disk without pickle: a round trip of everything a resume needs; a planted pickle refused."""

import os
import random

import numpy as np
import pytest
import torch

from ance.run.errors import CheckpointError
from ance.trainer.checkpoint import load_trainer_state, write_checkpoint
from ance.trainer.state_io import LEGACY_PICKLE, STATE_JSON, STATE_TENSORS, load_state, save_state


def full_state():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.ones(4, 3)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5)
    return {"step": 7, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "pcg": np.random.default_rng(3).bit_generator.state, "table": {"neg": np.arange(6, dtype=np.int32)},
            "inf": float("inf"), "none": None, "hash": "abc"}


def same(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b and type(a) is type(b)


def test_round_trip_is_exact_and_restorable(tmp_path):
    state = full_state()
    save_state(state, tmp_path)
    back = load_state(tmp_path)
    assert same(state, back)
    random.setstate(back["python"])  # the types the setters insist on (tuples) come back
    np.random.set_state(back["numpy"])
    torch.set_rng_state(back["torch"])
    np.random.default_rng().bit_generator.state = back["pcg"]


def test_planted_pickle_is_refused_and_never_run(tmp_path):
    """Finding 1: `torch.load(weights_only=False)` ran a planted pickle on --resume."""
    ran = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {ran}",))

    ckpt = write_checkpoint(tmp_path, 1, lambda d: (d / "config.json").write_text("{}"), None)
    torch.save({"step": 1, "x": Evil()}, ckpt / LEGACY_PICKLE)
    with pytest.raises(CheckpointError, match="refusing to load a pickled trainer state"):
        load_trainer_state(ckpt)
    assert not ran.exists()


@pytest.mark.parametrize("damage, match", [
    (lambda d: (d / STATE_JSON).write_text("{not json"), "unreadable trainer state"),
    (lambda d: (d / STATE_TENSORS).write_bytes(b"\x00" * 20), "unreadable"),
    (lambda d: (d / STATE_JSON).write_text('{"a": {"__tensor__": "t99"}}'), "missing from"),
    (lambda d: (d / STATE_JSON).write_text('{"a": {"__reduce__": 1}}'), "unknown tag"),
    (lambda d: (d / STATE_JSON).unlink(), "cannot resume"),
])
def test_damaged_state_is_a_clear_error(tmp_path, damage, match):
    save_state({"step": 1, "t": torch.ones(2)}, tmp_path)
    damage(tmp_path)
    with pytest.raises(CheckpointError, match=match):
        load_state(tmp_path)


def test_unstorable_value_is_refused_on_save(tmp_path):
    with pytest.raises(TypeError, match="without pickle"):
        save_state({"f": object()}, tmp_path)
