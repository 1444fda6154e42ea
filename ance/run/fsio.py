"""File-system helpers every role shares: crash-safe writes and the cache location.

A reader either sees the old file or the whole new one, never a torn one, and a
completed write survives a power cut: write a temp file in the same directory,
fsync it, ``os.replace`` it over the target, fsync the directory.
"""

from __future__ import annotations

import errno
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from ance.run.errors import ConfigError, DiskFullError

#: "no space left" and "quota exceeded": the errno, and the text Rust writers (safetensors) wrap it in
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_FULL_TEXTS = tuple(f"os error {n}" for n in _FULL_ERRNOS) + (os.strerror(errno.ENOSPC),)


def default_cache_dir() -> Path:
    """``$ANCE_CACHE_DIR``, else ``~/.cache/ance``: built models, token caches, downloaded datasets."""
    return Path(os.environ.get("ANCE_CACHE_DIR") or Path.home() / ".cache" / "ance").expanduser()


def is_disk_full(exc: BaseException) -> bool:
    """An ``OSError`` ENOSPC or EDQUOT, or a library's error wrapping one (safetensors: "os error 28")."""
    if isinstance(exc, OSError):
        return exc.errno in _FULL_ERRNOS
    return any(text in str(exc) for text in _FULL_TEXTS)


@contextmanager
def disk_full_error(path: str | Path, what: str) -> Iterator[None]:
    """Inside: a full disk raises :class:`DiskFullError` naming ``path`` and ``what`` (one line, exit 2)
    instead of a traceback; every other error goes through as it was."""
    try:
        yield
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        raise DiskFullError(path, what) from None


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


def current_umask() -> int:
    """The process umask, read without changing it (``os.umask`` sets it, racing other threads):
    from ``/proc/self/status`` on Linux, else set-and-restore."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def honour_umask(root: str | Path) -> None:
    """Give every file under ``root`` mode ``0666 & ~umask`` and every folder ``0777 & ~umask`` (0644 and
    0755 under the usual 022), as a plain ``open`` would: some writers (safetensors' ``save_file``,
    ``mkstemp``) create files 0600, which a colleague could not read. Symlinks are left alone."""
    mask = current_umask()
    root = Path(root)
    os.chmod(root, 0o777 & ~mask)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            if not os.path.islink(os.path.join(dirpath, name)):
                os.chmod(os.path.join(dirpath, name), 0o777 & ~mask)
        for name in filenames:
            if not os.path.islink(os.path.join(dirpath, name)):
                os.chmod(os.path.join(dirpath, name), 0o666 & ~mask)


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
