"""Start and supervise one run's process groups: broker, trainer group, inferencer pool.

Every child runs a plain ``ance`` subcommand (``python -m ance.cli ...``) with
the run's resolved config (``--run-dir``), in its own process group, its output
appended to ``RUN_DIR/logs/<role>-<n>.log``. A crashed broker or inferencer is
restarted with backoff; the trainer's exit, Ctrl-C or SIGTERM stops everything
and leaves no process behind.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ance.run.rundir import RunDir

log = logging.getLogger(__name__)


def last_error(log_path: Path, tail_bytes: int = 16384) -> str | None:
    """The last one-line error (``ance <cmd>: error: ...``) in the tail of a role's log, if any: what the
    launcher repeats when that role ends the run, so the reason is on the console, not only in the log."""
    try:
        with open(log_path, "rb") as fh:
            fh.seek(max(0, os.fstat(fh.fileno()).st_size - tail_bytes))
            lines = fh.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if line.startswith("ance ") and ": error: " in line:
            return line.strip()[:1000]
    return None


@dataclass
class ProcSpec:
    """One supervised process: how to start it and whether to restart it."""

    name: str                     # log name, e.g. "inferencer-1"
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    restart: bool = True          # False: its exit ends the run (the trainer)


@dataclass
class _Proc:
    spec: ProcSpec
    popen: subprocess.Popen | None = None
    restarts: int = 0
    next_start: float = 0.0
    started_at: float = 0.0


def ance_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "ance.cli", *args]


def cpu_threads(n_procs: int) -> str:
    """Threads per CPU process so the group does not oversubscribe the cores."""
    return str(max(1, (os.cpu_count() or 1) // max(1, n_procs)))


def plan(run_dir: Path, *, resume: bool, trainer_gpus: list[int], inferencer_gpus: list[int],
         n_cpu_inferencers: int, nnodes: int = 1, node_rank: int = 0, rdzv_endpoint: str | None = None,
         extra_train_overrides: list[str] | None = None, roles: tuple[str, ...] = ("broker", "trainer", "inferencer"),
         worker_prefix: str = "", cpu_trainer_procs: int = 1) -> list[ProcSpec]:
    """The processes of a run, as argv lists (pure; tested on its own).

    ``worker_prefix`` goes in front of the inferencers' names (``inferencer-<prefix><i>``,
    ``--name <prefix><i>``), so pools launched on several hosts stay distinct at the broker.
    Without GPUs and with ``nnodes > 1`` the trainer is torchrun over the nodes too, with
    ``cpu_trainer_procs`` CPU ranks (gloo) on this node (:mod:`ance.launch.slurm_place`).
    """
    rd = str(run_dir)
    specs: list[ProcSpec] = []
    n_inf = len(inferencer_gpus) if inferencer_gpus else n_cpu_inferencers
    cpu_env = {} if (trainer_gpus and inferencer_gpus) else {"OMP_NUM_THREADS": cpu_threads(1 + n_inf)}
    if "broker" in roles:
        specs.append(ProcSpec("broker", ance_cmd("broker", "--run-dir", rd), {"OMP_NUM_THREADS": "1"}))
    if "trainer" in roles:
        train_args = ["train", "--resume", rd] if resume else ["train", str(RunDir(run_dir).config), f"run_dir={rd}"]
        train_args += list(extra_train_overrides or [])
        if trainer_gpus:
            env = {"CUDA_VISIBLE_DEVICES": ",".join(map(str, trainer_gpus))}
            if len(trainer_gpus) > 1 or nnodes > 1:
                rdzv = ["--standalone"] if nnodes == 1 else _rdzv(nnodes, node_rank, rdzv_endpoint)
                argv = [sys.executable, "-m", "torch.distributed.run", *rdzv,
                        "--nproc-per-node", str(len(trainer_gpus)), "-m", "ance.cli", *train_args, "train.device=auto"]
            else:
                argv = ance_cmd(*train_args, "train.device=cuda:0")
            specs.append(ProcSpec("trainer-0", argv, env, restart=False))
        elif nnodes > 1:
            argv = [sys.executable, "-m", "torch.distributed.run", *_rdzv(nnodes, node_rank, rdzv_endpoint),
                    "--nproc-per-node", str(cpu_trainer_procs), "-m", "ance.cli", *train_args, "train.device=cpu"]
            specs.append(ProcSpec("trainer-0", argv, {"CUDA_VISIBLE_DEVICES": "", **cpu_env}, restart=False))
        else:
            specs.append(ProcSpec("trainer-0", ance_cmd(*train_args, "train.device=cpu"),
                                  {"CUDA_VISIBLE_DEVICES": "", **cpu_env}, restart=False))
    if "inferencer" in roles:
        if inferencer_gpus:
            # One GPU each, but the host's cores are shared: torch's default of every core per process
            # oversubscribes them and slows each worker's batch building (docs/benchmarks.md, pool scaling).
            gpu_procs = len(inferencer_gpus) + (len(trainer_gpus) if "trainer" in roles else 0)
            for i, gpu in enumerate(inferencer_gpus):
                specs.append(ProcSpec(f"inferencer-{worker_prefix}{i}",
                                      ance_cmd("infer", "--run-dir", rd, "--device", "cuda:0",
                                               "--name", f"{worker_prefix}{i}"),
                                      {"CUDA_VISIBLE_DEVICES": str(gpu), "OMP_NUM_THREADS": cpu_threads(gpu_procs)}))
        else:
            for i in range(n_cpu_inferencers):
                specs.append(ProcSpec(f"inferencer-{worker_prefix}{i}",
                                      ance_cmd("infer", "--run-dir", rd, "--device", "cpu",
                                               "--name", f"{worker_prefix}{i}"),
                                      {"CUDA_VISIBLE_DEVICES": "", **cpu_env}))
    return specs


def _rdzv(nnodes: int, node_rank: int, endpoint: str | None) -> list[str]:
    return ["--nnodes", str(nnodes), "--node-rank", str(node_rank), "--rdzv-backend", "c10d",
            "--rdzv-endpoint", endpoint or "127.0.0.1:29400"]


def _terminate_with_parent() -> None:
    """In the child, before exec: SIGTERM us if the launcher dies, even by kill -9 (Linux)."""
    try:
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: teardown relies on the launcher's own handlers
        pass


class Supervisor:
    """Runs the planned processes until the trainer exits or we are told to stop."""

    def __init__(self, specs: list[ProcSpec], run_dir: Path, *, backoff_s: list[float], max_restarts: int,
                 on_event: Callable[..., None] | None = None, poll_s: float = 0.2):
        self.procs = [_Proc(s) for s in specs]
        self.run_dir = Path(run_dir)
        self.backoff = list(backoff_s) or [1.0]
        self.max_restarts = max_restarts
        self.on_event = on_event or (lambda event, **kw: None)
        self.poll_s = poll_s
        self._stop_reason: str | None = None
        RunDir(self.run_dir).logs.mkdir(parents=True, exist_ok=True)

    # -- process control
    def _start(self, proc: _Proc) -> None:
        logf = open(RunDir(self.run_dir).log(proc.spec.name), "ab", buffering=0)
        logf.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} start: {' '.join(proc.spec.argv)}\n".encode())
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **proc.spec.env}
        proc.popen = subprocess.Popen(proc.spec.argv, stdout=logf, stderr=subprocess.STDOUT, env=env,
                                      stdin=subprocess.DEVNULL, start_new_session=True,
                                      preexec_fn=_terminate_with_parent)
        logf.close()
        proc.started_at = time.time()
        log.info("started %s (pid %d)", proc.spec.name, proc.popen.pid)
        self.on_event("process", name=proc.spec.name, state="started", pid=proc.popen.pid, restarts=proc.restarts)

    def pids(self) -> dict[str, int]:
        return {p.spec.name: p.popen.pid for p in self.procs if p.popen is not None and p.popen.poll() is None}

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to a child's whole process group (tests, and `stop`)."""
        for p in self.procs:
            if p.spec.name == name and p.popen is not None and p.popen.poll() is None:
                os.killpg(p.popen.pid, sig)

    def request_stop(self, reason: str) -> None:
        self._stop_reason = self._stop_reason or reason

    @property
    def stop_reason(self) -> str | None:
        """Why the run ended (e.g. "trainer-0 exited with code 0"); None while it runs."""
        return self._stop_reason

    @staticmethod
    def _group_alive(p: "_Proc") -> bool:
        """Whether any process of the child's group is still there (the leader may be gone)."""
        if p.popen is None:
            return False
        p.popen.poll()  # reap the leader so a zombie does not count
        try:
            os.killpg(p.popen.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def _signal_all(self, sig: int) -> None:
        # the whole group, even when its leader has exited: a grandchild forked while the
        # first signal was in flight would otherwise survive
        for p in self.procs:
            if self._group_alive(p):
                try:
                    os.killpg(p.popen.pid, sig)
                except ProcessLookupError:
                    pass

    def stop_all(self, grace_s: float = 5.0) -> None:
        """SIGTERM every group, wait up to ``grace_s``, then SIGKILL what is left."""
        self._signal_all(signal.SIGTERM)
        deadline = time.time() + grace_s
        while time.time() < deadline and any(self._group_alive(p) for p in self.procs):
            time.sleep(0.05)
        self._signal_all(signal.SIGKILL)
        for p in self.procs:
            if p.popen is not None:
                try:
                    p.popen.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    log.error("%s (pid %d) did not exit after SIGKILL", p.spec.name, p.popen.pid)

    # -- the loop
    def run(self, tick: Callable[[], None] | None = None) -> int:
        """Supervise until the trainer ends (its exit code) or a stop request (130)."""
        for p in self.procs:
            self._start(p)
        trainer_rc: int | None = None
        try:
            while self._stop_reason is None:
                now = time.time()
                for p in self.procs:
                    if p.popen is None:
                        if now >= p.next_start:
                            self._start(p)
                        continue
                    rc = p.popen.poll()
                    if rc is None:
                        continue
                    if self._group_alive(p):  # leader gone: take its leftovers with it
                        try:
                            os.killpg(p.popen.pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                    if not p.spec.restart:
                        trainer_rc = rc
                        why = last_error(RunDir(self.run_dir).log(p.spec.name)) if rc else None
                        self.request_stop(f"{p.spec.name} exited with code {rc}" + (f": {why}" if why else ""))
                        break
                    if p.restarts >= self.max_restarts:
                        self.request_stop(f"{p.spec.name} crashed {p.restarts + 1} times; giving up "
                                          f"(see {RunDir(self.run_dir).log(p.spec.name)})")
                        trainer_rc = 1
                        break
                    delay = self.backoff[min(p.restarts, len(self.backoff) - 1)]
                    log.warning("%s exited with code %s; restarting in %.1fs", p.spec.name, rc, delay)
                    self.on_event("process", name=p.spec.name, state="exited", code=rc, restart_in_s=delay)
                    p.restarts += 1
                    p.popen = None
                    p.next_start = now + delay
                if tick is not None:
                    tick()
                time.sleep(self.poll_s)
        finally:
            log.info("stopping: %s", self._stop_reason or "interrupted")
            self.stop_all()
        return 130 if trainer_rc is None else trainer_rc
