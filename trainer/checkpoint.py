"""Atomic checkpoints: ``RunDir.checkpoint(step)`` (names in :mod:`ance.run.rundir`).

A checkpoint is written into ``checkpoints/.tmp-<name>-<pid>/``, every file
fsynced, the manifest written last, then the directory is renamed into
place and its parent fsynced. A directory without a manifest (or a
``.tmp-*`` one) is incomplete: never listed, never loaded, swept on start. So a
``kill -9`` at any instant leaves only complete checkpoints behind.

The write has two halves. :func:`stage_checkpoint` serialises the model and the
trainer state into the temp dir: it reads the live parameters, so the trainer
waits for it. :meth:`Staged.commit` makes the files durable and visible (fsync,
manifest, rename): it touches only files, so :class:`CommitThread` runs it in the
background while the trainer steps on; under I/O load (several runs writing to
one disk) the fsyncs are most of a checkpoint's write time.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ance.run.config import Config
from ance.run.errors import CheckpointError, ConfigError, DiskFullError
from ance.run.fsio import disk_full_error, fsync_dir, honour_umask
from ance.run.rundir import (MANIFEST, RunDir, is_complete_checkpoint, manifest_path, parse_step, shipped_bytes,
                             weights_limit)

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
    """Write checkpoint ``step`` atomically and return its final path (stage, then commit, in this thread).

    ``trainer_state`` is saved first (``trainer_state.json`` + ``trainer_state.safetensors``,
    :mod:`.state_io`, no pickle), then ``save_model(dir)`` writes the HF model directory;
    the manifest follows once every file is fsynced.
    """
    return stage_checkpoint(run_dir, step, save_model, trainer_state, manifest).commit()


@dataclass
class Staged:
    """A checkpoint whose files are written into its temp dir but not yet durable or visible."""

    step: int
    tmp: Path
    final: Path
    manifest: dict[str, Any]
    started: float
    staged_s: float
    write_s: float | None = None   # stage + commit, once committed

    def commit(self) -> Path:
        """fsync every file, write the manifest, rename into place; returns the final path. A full disk
        removes the temp dir and raises :class:`DiskFullError`; the earlier checkpoints stay as they were."""
        with _unless_full(self.tmp, self.final):
            return self._commit()

    def _commit(self) -> Path:
        _fsync_tree(self.tmp)
        info = {"step": self.step, "time": time.time(), **self.manifest}
        with open(manifest_path(self.tmp), "w", encoding="utf-8") as fh:
            json.dump(info, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        fsync_dir(self.tmp)
        parent = self.final.parent
        if self.final.exists():  # re-writing a step (resume): move the old one aside first
            old = parent / f".tmp-old-{self.final.name}-{os.getpid()}"
            os.replace(self.final, old)
            os.replace(self.tmp, self.final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.final)
        fsync_dir(parent)
        self.write_s = time.time() - self.started
        return self.final


@contextlib.contextmanager
def _unless_full(tmp: Path, final: Path):
    """A full disk while writing checkpoint ``final``: its temp dir goes (the space it took is given back,
    and it would be swept on start anyway), and :class:`DiskFullError` names the checkpoint."""
    try:
        with disk_full_error(final, f"checkpoint {final.name}"):
            yield
    except DiskFullError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def stage_checkpoint(
    run_dir: str | Path,
    step: int,
    save_model: Callable[[Path], None],
    trainer_state: dict[str, Any] | None,
    manifest: dict[str, Any] | None = None,
) -> Staged:
    """The first half of :func:`write_checkpoint`: the trainer state and the model, written into
    the checkpoint's temp dir (copies of the live tensors, so training may go on once it returns)."""
    final = RunDir(run_dir).checkpoint(step)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    started = time.time()
    with _unless_full(tmp, final):
        if trainer_state is not None:
            save_state(trainer_state, tmp)
        save_model(tmp)
    honour_umask(tmp)  # safetensors writes 0600: a checkpoint is for colleagues to load too (0644 under 022)
    return Staged(int(step), tmp, final, dict(manifest or {}), started, time.time() - started)


class CommitThread:
    """Commits staged checkpoints in a background thread, one at a time.

    ``submit`` first finishes the commit in flight (so checkpoints become visible in step
    order); ``poll`` returns a finished commit once, ``wait`` blocks for it. A commit that
    failed (e.g. disk full) raises its error from ``poll`` / ``wait`` / ``submit``, in the
    caller's thread. The thread is not a daemon: an interpreter that exits normally (end of
    run, Ctrl-C) finishes the commit first; a ``kill -9`` leaves only the temp dir, which is
    never listed (module docstring).
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._staged: Staged | None = None
        self._error: BaseException | None = None

    def _run(self, staged: Staged) -> None:
        try:
            staged.commit()
        except BaseException as exc:  # handed to the caller's thread by poll / wait
            self._error = exc

    def submit(self, staged: Staged) -> Staged | None:
        """Start committing ``staged``; returns the previous commit if it finished only now."""
        previous = self.wait()
        self._staged = staged
        self._thread = threading.Thread(target=self._run, args=(staged,), name=f"commit-{staged.step}")
        self._thread.start()
        return previous

    def poll(self) -> Staged | None:
        """The commit in flight if it has finished (once), else None."""
        if self._thread is None or self._thread.is_alive():
            return None
        return self.wait()

    def wait(self) -> Staged | None:
        """Block until the commit in flight has finished and return it (None when there was none)."""
        if self._thread is None:
            return None
        self._thread.join()
        staged, error = self._staged, self._error
        self._thread = self._staged = self._error = None
        if error is not None:
            raise error
        return staged


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
    try:
        with open(manifest_path(path), encoding="utf-8") as fh:
            manifest = json.load(fh)
    except (OSError, ValueError) as exc:  # ValueError: not JSON, not UTF-8
        raise CheckpointError(f"{manifest_path(path)}: unreadable ({type(exc).__name__}: {str(exc)[:200]}); "
                              "resume from an older checkpoint (move this one aside)") from None
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{manifest_path(path)}: not a JSON object; resume from an older checkpoint "
                              "(move this one aside)")
    return manifest


def load_trainer_state(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    read_manifest(path)
    return load_state(path)


def check_shippable(cfg: Config, ckpt: Path) -> None:
    """With ``broker.send_weights`` the broker ships each checkpoint to the inferencers in one frame:
    one too large for ``broker.max_frame_bytes`` (a full fine-tune of a large model) could never be
    refreshed from, so say so before announcing it, rather than leave the trainer waiting for negatives
    that never come. The checkpoint stays written (a resume, or ``ance export``, can use it)."""
    if not cfg.broker.send_weights:
        return
    size, limit = shipped_bytes(ckpt), weights_limit(cfg.broker.max_frame_bytes)
    if size > limit:
        raise ConfigError(f"checkpoint {ckpt} holds {size / 2**20:.0f} MiB of weights, more than the "
                          f"{limit / 2**20:.0f} MiB broker.send_weights ships in one frame "
                          f"(broker.max_frame_bytes={cfg.broker.max_frame_bytes}): set broker.send_weights=false "
                          "where the inferencers share the run directory's file system, raise "
                          "broker.max_frame_bytes, or train with LoRA (train.lora.r > 0: an adapter of a few MB)")
