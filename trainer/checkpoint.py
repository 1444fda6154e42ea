"""Atomic checkpoints: ``RUN_DIR/checkpoints/step-NNNNNN/``.

A checkpoint is written into ``checkpoints/.tmp-step-NNNNNN-<pid>/``, every file
fsynced, ``manifest.json`` written last, then the directory is renamed into
place and its parent fsynced. A directory without ``manifest.json`` (or a
``.tmp-*`` one) is incomplete: never listed, never loaded, swept on start. So a
``kill -9`` at any instant leaves only complete checkpoints behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from ance.errors import CheckpointError
from ance.fsio import fsync_dir

from .state_io import STATE_JSON, load_state, save_state

MANIFEST = "manifest.json"
STATE = STATE_JSON
_NAME = re.compile(r"^step-(\d{6,})$")


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step-{step:06d}"


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fsync_dir(Path(dirpath) / name)
        fsync_dir(Path(dirpath))


def write_checkpoint(
    run_dir: str | Path,
    step: int,
    save_model: Callable[[Path], None],
    trainer_state: dict[str, Any] | None,
    manifest: dict[str, Any] | None = None,
    _pause: Callable[[Path], None] | None = None,
) -> Path:
    """Write checkpoint ``step`` atomically and return its final path.

    ``save_model(dir)`` writes the HF model directory; ``trainer_state`` goes to
    ``trainer_state.json`` + ``trainer_state.safetensors`` (:mod:`.state_io`, no pickle).
    ``_pause`` is a test hook called between the model
    files and the manifest (where a crash hurts most).
    """
    final = checkpoint_dir(run_dir, step)
    parent = final.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    started = time.time()
    save_model(tmp)
    if trainer_state is not None:
        save_state(trainer_state, tmp)
    if _pause is not None:
        _pause(tmp)
    _fsync_tree(tmp)
    info = {"step": int(step), "time": time.time(), **(manifest or {})}
    with open(tmp / MANIFEST, "w", encoding="utf-8") as fh:
        json.dump(info, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    fsync_dir(tmp)
    if final.exists():  # re-writing a step (resume): move the old one aside first
        old = parent / f".tmp-old-{final.name}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync_dir(parent)
    info["write_s"] = time.time() - started
    return final


def is_complete(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and _NAME.match(path.name) is not None and (path / MANIFEST).is_file()


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        m = _NAME.match(child.name)
        if m and is_complete(child):
            found.append((int(m.group(1)), child))
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> tuple[int, Path] | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def sweep_incomplete(run_dir: str | Path) -> list[Path]:
    """Remove leftovers of interrupted writes; return what was removed."""
    root = Path(run_dir) / "checkpoints"
    removed = []
    if not root.is_dir():
        return removed
    for child in root.iterdir():
        if child.name.startswith(".tmp-") or (_NAME.match(child.name) and not is_complete(child)):
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child)
    return removed


def prune_checkpoints(run_dir: str | Path, keep: int, protect: set[int] = frozenset()) -> list[int]:
    """Delete all but the newest ``keep`` checkpoints, sparing steps in ``protect``
    (e.g. the checkpoint a refresh is still encoding)."""
    ckpts = list_checkpoints(run_dir)
    doomed = [(s, p) for s, p in ckpts[:-keep] if s not in protect] if keep > 0 else []
    for _, path in doomed:
        # Rename first so a reader never sees a half-deleted complete checkpoint.
        trash = path.parent / f".tmp-del-{path.name}-{os.getpid()}"
        os.replace(path, trash)
        shutil.rmtree(trash, ignore_errors=True)
    return [s for s, _ in doomed]


def read_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not is_complete(path):
        raise CheckpointError(f"{path}: not a complete checkpoint (no {MANIFEST}); "
                              "it was interrupted while being written — use an older one")
    with open(path / MANIFEST, encoding="utf-8") as fh:
        return json.load(fh)


def load_trainer_state(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    read_manifest(path)
    return load_state(path)
