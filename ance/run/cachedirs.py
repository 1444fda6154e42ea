"""The file-system side of cache directories (the token cache, :mod:`ance.model.tokcache`; corpus snapshots,
:mod:`ance.data.snapshot`): a per-key build lock, atomic installs of a built directory, and publishing a
complete one into another root (the shared cache) by hard links. Every step is a rename or a lock the kernel drops with its holder, so a process
killed at any point leaves either nothing or a complete directory.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from ance.run.fsio import fsync_dir

log = logging.getLogger(__name__)

LOCK_WAIT_S = 3600.0  # longer: build anyway (the rename keeps the race safe), with a warning
LOCK_BUILDS = True  # False: every process builds (benchmarks/bench_tokcache_startup.py compares)


@contextlib.contextmanager
def build_lock(root: Path, key: str, poll_s: float = 0.2, prefix: str = "tokens"):
    """Hold ``root/.lock-<prefix>-<key>`` (a POSIX record lock) while the cache is looked up and built, so
    the trainer and the inferencers of one run tokenize a corpus once instead of all at once. The kernel
    drops a dead holder's lock (kill -9 included). Only an economy: where locks are not to be had (a
    file system without them), or after ``LOCK_WAIT_S``, it goes on unlocked, as the atomic rename allows."""
    try:
        if not LOCK_BUILDS:
            raise OSError("locking off")
        fd = os.open(root / f".lock-{prefix}-{key}", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield
        return
    try:
        deadline, said = time.monotonic() + LOCK_WAIT_S, False
        while True:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EACCES, errno.EAGAIN):
                    break  # no locks here (ENOLCK, ...): go on without
                if time.monotonic() > deadline:
                    log.warning("%s cache %s: still locked after %.0fs; building anyway", prefix, key, LOCK_WAIT_S)
                    break
                if not said:
                    log.info("%s cache %s: another process is building it; waiting", prefix, key)
                    said = True
                time.sleep(poll_s)
        yield
    finally:
        os.close(fd)  # releases the lock


CACHE_FILES = ("ids.int32", "offsets.int64", "meta.json")


def publish(src: Path, final: Path, copy: bool = True) -> bool:
    """Put the complete cache ``src`` at ``final`` (another root) as ``install`` does, atomically: its
    files hard-linked into a temporary dir beside ``final`` (copied where links cannot cross file
    systems, if ``copy``), ``meta.json`` last, then renamed. False, logged, where that fails: a shared
    cache only saves time, and the caller goes on without it."""
    try:
        with building_dir(final) as tmp:
            for name in CACHE_FILES:  # meta.json last: a half-linked dir stays incomplete
                if not (src / name).is_file():
                    return False
                try:
                    os.link(src / name, tmp / name)
                except OSError:
                    if not copy:
                        log.info("cache: %s and %s are on different file systems; not shared", src, final.parent)
                        return False
                    shutil.copyfile(src / name, tmp / name)
            fsync_dir(tmp)
            install(tmp, final)
        return (final / "meta.json").is_file()
    except OSError as e:
        log.warning("cache: cannot put %s at %s (%s); going on without it", src, final, e)
        return False


@contextlib.contextmanager
def building_dir(final: Path):
    """A fresh temporary dir beside ``final`` to build it in (then :func:`install` it), removed on the way
    out unless installed. OSError where the parent cannot be made or written."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        yield tmp
    finally:
        if tmp.exists():  # not renamed: failed, or another process won the race
            shutil.rmtree(tmp, ignore_errors=True)


def set_aside(final: Path) -> None:
    """Move ``final`` out of the way (into a trash dir beside it, then delete it): a reader sees it whole or
    not at all; another process setting it aside first is fine."""
    try:
        trash = Path(tempfile.mkdtemp(prefix=f".trash-{final.name}-", dir=final.parent))
    except OSError:
        return
    try:
        os.replace(final, trash / final.name)
    except OSError:
        pass  # gone already (another process set it aside first)
    shutil.rmtree(trash, ignore_errors=True)


def install(tmp: Path, final: Path) -> None:
    """Rename the built ``tmp`` to ``final``, replacing an incomplete ``final``; a complete one wins."""
    if final.exists() and not (final / "meta.json").is_file():
        log.warning("%s is incomplete (no meta.json); rebuilding it", final)
        set_aside(final)
    try:
        os.replace(tmp, final)
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not (final / "meta.json").is_file():
            raise
        log.info("%s was built by another process meanwhile; using it", final)
        return
    fsync_dir(final.parent)
