"""Running `ance` commands as real processes in tests: the environment and the wait."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def proc_env(**extra: str) -> dict[str, str]:
    """One torch thread a process (on a shared 2-core box, torch's thread pool contending with
    other processes is ~10x slower), unbuffered output."""
    out = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    out.update(extra)
    return out


def finish(proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    """Wait for ``proc`` to exit 0; otherwise fail with the tail of its log (killing it after ``timeout``)."""
    what = " ".join(map(str, proc.args[:4])) if isinstance(proc.args, (list, tuple)) else str(proc.args)
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"{what} ran over {timeout}s:\n{log.read_text()[-3000:]}") from None
    assert rc == 0, f"{what} exited {rc}:\n{log.read_text()[-3000:]}"
