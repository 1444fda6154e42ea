"""One launcher per run directory: an exclusive ``flock`` on ``RUN_DIR/.launch.lock``.

Two ``ance launch`` into one run directory would mix their checkpoints, metrics
and brokers (hostile report 2026-12-03). The lock is taken on the open file (not
inherited by the children, whose descriptors are closed), released by the
kernel when the launcher dies however it dies, so a stale lock never blocks a
``--resume``. The file is opened with ``O_NOFOLLOW``: a planted symlink is refused.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ance.run.errors import ConfigError

LOCK_NAME = ".launch.lock"


def lock_run_dir(run_dir: str | Path) -> int:
    """Hold the run directory's lock (returns the descriptor; keep it open), or raise :class:`ConfigError`
    (one line, exit 2) when another process holds it."""
    path = Path(run_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0),
                     0o600)
    except OSError as exc:
        raise ConfigError(f"run_dir={run_dir}: cannot open its lock {path} ({exc.strerror}; a symlink is "
                          "refused)") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
        os.close(fd)
        raise ConfigError(f"run_dir={run_dir}: another `ance launch` (pid {holder}) is running in it; wait for it "
                          "to end, stop it, or pick another run_dir=PATH") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def unlock(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)
