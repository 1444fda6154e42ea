"""File-system helpers every role shares: crash-safe writes and the cache location.

A reader either sees the old file or the whole new one, never a torn one, and a
completed write survives a power cut: write a temp file in the same directory,
fsync it, ``os.replace`` it over the target, fsync the directory.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Iterable

from .errors import ConfigError


def default_cache_dir() -> Path:
    """``$ANCE_CACHE_DIR``, else ``~/.cache/ance``: built models, token caches, downloaded datasets."""
    return Path(os.environ.get("ANCE_CACHE_DIR") or Path.home() / ".cache" / "ance").expanduser()


def fsync_dir(path: str | Path) -> None:
    """Make a rename or a new entry in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_lines(path: str | Path, lines: Iterable[str]) -> None:
    """Write ``lines`` (each with its newline) to ``path`` atomically and durably (UTF-8, LF)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.writelines(lines)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


# What a run leaves in its directory; a new run must not mix with them.
RUN_LEFTOVERS = ("checkpoints", "negatives", "metrics.jsonl")


def previous_run(run_dir: str | Path, names: Iterable[str] = RUN_LEFTOVERS) -> list[str]:
    """The entries of ``names`` in ``run_dir`` that hold an earlier run's output: a non-empty file, or a
    folder with something but the ``.tmp-*`` leftovers of an interrupted write (swept on start)."""
    run = Path(run_dir)
    found = []
    for name in names:
        p = run / name
        if p.is_dir() and any(not c.name.startswith(".") for c in p.iterdir()) or p.is_file() and p.stat().st_size:
            found.append(name)
    return found


def claim_run_dir(run_dir: str | Path, *, resume: bool, overwrite: bool = False,
                  names: Iterable[str] = RUN_LEFTOVERS) -> Path | None:
    """Make ``run_dir`` ready for a run, or raise :class:`ConfigError` saying what to do.

    A fresh run (not ``resume``) refuses a directory that holds another run's
    ``names`` (checkpoints, negatives, metrics), so two runs never mix, unless
    ``overwrite``: the old directory is then renamed to ``RUN_DIR.old-<time>``,
    which is returned. The directory must be a writable directory either way.
    """
    run = Path(run_dir)
    if run.exists() and not run.is_dir():
        raise ConfigError(f"run_dir={run}: exists and is not a directory; pick another run_dir=PATH")
    aside = None
    if not resume:
        found = previous_run(run, names) if run.is_dir() else []
        if found and not overwrite:
            raise ConfigError(f"run_dir={run}: holds an earlier run ({', '.join(found)}); continue it with "
                              f"--resume {run}, pick a new run_dir=PATH, or pass --overwrite to move it aside")
        if found:
            aside = run.with_name(f"{run.name}.old-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
            os.replace(run, aside)
    try:
        run.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"run_dir={run}: cannot create it ({exc.strerror}); pick a writable run_dir=PATH") from None
    if not os.access(run, os.W_OK | os.X_OK):
        raise ConfigError(f"run_dir={run}: not writable; pick a writable run_dir=PATH or fix its permissions")
    return aside


def check_output_file(path: str | Path, flag: str = "--out") -> None:
    """Fail before any work when ``path`` cannot be written: its folder missing or read-only, or a folder."""
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise ConfigError(f"{flag} {p}: is a folder; give a file path")
    if not parent.is_dir():
        raise ConfigError(f"{flag} {p}: folder {parent} does not exist; create it first (mkdir -p {parent})")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {p}: folder {parent} is not writable")
