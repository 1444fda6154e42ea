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


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie, exited but not reaped, is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def pids_mentioning(token: str | Path) -> list[int]:
    """Live processes (never this one) whose command line holds ``token``, e.g. a run dir every role names."""
    needle, out = str(token).encode(), []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(needle in a for a in argv) and alive(int(entry.name)):
                out.append(int(entry.name))
    return out


def kill_mentioning(token: str | Path) -> None:
    """SIGKILL every process :func:`pids_mentioning` finds (a launcher killed on timeout leaves its roles)."""
    for pid in pids_mentioning(token):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
