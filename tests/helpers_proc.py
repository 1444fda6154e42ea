"""Running `ance` commands as real processes in tests: the environment and the wait."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable

METRIC_LINE = re.compile(r"^(ance_[a-z0-9_]+)(?:\{[^}]*\})? (\S+)$", re.M)


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


def scrape(port: int, combine: Callable[[float, float], float] = max) -> dict[str, float]:
    """``ance_*`` samples at ``http://127.0.0.1:PORT/metrics``, one value a name (samples of one name with
    different labels joined by ``combine(old, new)``: the largest by default); {} when it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for name, value in METRIC_LINE.findall(text):
        out[name] = combine(out[name], float(value)) if name in out else float(value)
    return out


def kill_9_at_pause(script: str, *args: str, flag: Path, timeout: float = 60) -> None:
    """Run ``python -c script *args``, wait until it writes ``flag`` (where it pauses), then ``kill -9`` it."""
    proc = subprocess.Popen([sys.executable, "-c", script, *args])
    try:
        deadline = time.time() + timeout
        while not flag.exists():
            assert proc.poll() is None, "the script died before its pause"
            assert time.time() < deadline, "the script never reached its pause"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
