"""File-system helpers every role shares: crash-safe writes and the cache location.

A reader either sees the old file or the whole new one, never a torn one, and a
completed write survives a power cut: write a temp file in the same directory,
fsync it, ``os.replace`` it over the target, fsync the directory.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable

from ance.run.errors import ConfigError


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
