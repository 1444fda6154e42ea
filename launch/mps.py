"""CUDA MPS for a run whose trainer and inferencers share a GPU (`ance launch --mps`).

Without MPS, two processes on one GPU are time-sliced: while the inferencer
encodes, the trainer's kernels wait for their turn, and the trainer, whose step
is bound by host time and leaves the GPU idle most of the step, loses far more
than the inferencer's share of the GPU (docs/benchmarks.md, co-location). Under
MPS both processes' kernels go through one server and run side by side.

The launcher starts its own MPS control daemon with a private pipe and log
directory (nothing else on the machine talks to it; its logs go to
``RUN_DIR/logs/mps``), gives every child the
directory in ``CUDA_MPS_PIPE_DIRECTORY``, and quits the daemon when the run
ends. The GPU's settings (compute mode, MIG) are not touched.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from ance.run.errors import ConfigError
from ance.run.rundir import RunDir

log = logging.getLogger(__name__)

CONTROL = "nvidia-cuda-mps-control"
MODES = ("off", "on", "auto")


def shares_gpu(trainer_gpus: list[int], inferencer_gpus: list[int]) -> bool:
    """Whether a trainer GPU also runs an inferencer (the case MPS is for)."""
    return bool(set(trainer_gpus) & set(inferencer_gpus))


def wanted(mode: str, trainer_gpus: list[int], inferencer_gpus: list[int], control: str | None,
           existing: str | None = None) -> bool:
    """``--mps`` decision (pure): ``on`` always (the binary must exist), ``auto`` when a GPU is shared
    and the binary is there, ``off`` never. ``control`` is the binary's path or None; ``existing`` is
    ``CUDA_MPS_PIPE_DIRECTORY`` when the environment already names an MPS daemon: then no daemon of our
    own (the children inherit the variable and use that one)."""
    if mode not in MODES:
        raise ConfigError(f"--mps: expected one of {', '.join(MODES)}, got {mode!r}")
    if mode == "off" or not (trainer_gpus or inferencer_gpus) or existing:
        return False
    if control is None:
        if mode == "on":
            raise ConfigError(f"--mps on: {CONTROL} is not on PATH; install the NVIDIA driver's utilities "
                              "or launch with --mps off")
        return False
    return mode == "on" or shares_gpu(trainer_gpus, inferencer_gpus)


def pipe_dir_for(run_dir: Path, base: str | None = None) -> Path:
    """A short private directory for the daemon's pipes (UNIX socket paths are limited to ~100
    bytes, so not inside a possibly deep run directory): ``<tmp>/ance-mps-<hash of the run dir>``."""
    tag = hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:12]
    return Path(base or tempfile.gettempdir()) / f"ance-mps-{tag}"


def client_env(pipe_dir: Path, log_dir: Path) -> dict[str, str]:
    """What every child needs to reach the run's MPS server (and the daemon, where to log)."""
    return {"CUDA_MPS_PIPE_DIRECTORY": str(pipe_dir), "CUDA_MPS_LOG_DIRECTORY": str(log_dir)}


class MpsDaemon:
    """The run's MPS control daemon: ``start()`` returns the children's environment, ``stop()`` quits it."""

    def __init__(self, run_dir: Path, control: str):
        self.control = control
        self.pipe_dir = pipe_dir_for(run_dir)
        self.log_dir = RunDir(run_dir).logs / "mps"  # control.log, server.log: kept with the run's logs
        self.env = client_env(self.pipe_dir, self.log_dir)
        self.running = False

    def _ctl(self, stdin: str | None = None, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([self.control, *args], input=stdin, text=True, capture_output=True, timeout=30,
                              env={**os.environ, **self.env})

    def start(self) -> dict[str, str]:
        if self.pipe_dir.exists():  # a daemon left by a launcher that was killed: quit it, start clean
            self._ctl("quit\n")
            shutil.rmtree(self.pipe_dir, ignore_errors=True)
        self.pipe_dir.mkdir(parents=True, mode=0o700)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        res = self._ctl(None, "-d")
        if res.returncode != 0:
            raise ConfigError(f"--mps: {CONTROL} -d failed (exit {res.returncode}): "
                              f"{(res.stderr or res.stdout).strip()[:200]}; launch with --mps off")
        self.running = True
        log.info("MPS control daemon started (pipes in %s)", self.pipe_dir)
        return dict(self.env)

    def stop(self) -> None:
        if not self.running:
            return
        self.running = False
        try:
            self._ctl("quit\n")
        except (OSError, subprocess.TimeoutExpired) as e:
            log.warning("MPS control daemon did not quit cleanly: %s", e)
        shutil.rmtree(self.pipe_dir, ignore_errors=True)
        log.info("MPS control daemon stopped")


def find_control() -> str | None:
    return shutil.which(CONTROL)
