"""Atomic checkpoints: ``RunDir.checkpoint(step)`` (names in :mod:`ance.rundir`).

A checkpoint is written into ``checkpoints/.tmp-<name>-<pid>/``, every file
fsynced, the manifest written last, then the directory is renamed into
place and its parent fsynced. A directory without a manifest (or a
``.tmp-*`` one) is incomplete: never listed, never loaded, swept on start. So a
``kill -9`` at any instant leaves only complete checkpoints behind.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from ance.errors import CheckpointError
from ance.fsio import fsync_dir
from ance.rundir import MANIFEST, RunDir, is_complete_checkpoint, manifest_path, parse_step

from .state_io import load_state, save_state


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
) -> Path:
    """Write checkpoint ``step`` atomically and return its final path.

    ``trainer_state`` is saved first (``trainer_state.json`` + ``trainer_state.safetensors``,
    :mod:`.state_io`, no pickle), then ``save_model(dir)`` writes the HF model directory;
    the manifest follows once every file is fsynced.
    """
    final = RunDir(run_dir).checkpoint(step)
    parent = final.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    started = time.time()
    if trainer_state is not None:
        save_state(trainer_state, tmp)
    save_model(tmp)
    _fsync_tree(tmp)
    info = {"step": int(step), "time": time.time(), **(manifest or {})}
    with open(manifest_path(tmp), "w", encoding="utf-8") as fh:
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


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first."""
    return RunDir(run_dir).complete_checkpoints()


def latest_checkpoint(run_dir: str | Path) -> tuple[int, Path] | None:
    return RunDir(run_dir).latest_checkpoint()


def sweep_incomplete(run_dir: str | Path) -> list[Path]:
    """Remove leftovers of interrupted writes; return what was removed."""
    root = RunDir(run_dir).checkpoints
    removed = []
    if not root.is_dir():
        return removed
    for child in root.iterdir():
        if child.name.startswith(".tmp-") or (parse_step(child.name) is not None
                                                  and not is_complete_checkpoint(child)):
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
    if not is_complete_checkpoint(path):
        raise CheckpointError(f"{path}: not a complete checkpoint (no {MANIFEST}); "
                              "it was interrupted while being written — use an older one")
    with open(manifest_path(path), encoding="utf-8") as fh:
        return json.load(fh)


def load_trainer_state(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    read_manifest(path)
    return load_state(path)
