"""`ance launch --slurm` on one node: set-up, hand-over between nodes, end (placement: ance.launch.slurm_place).

With a shared run directory the first trainer node claims it, makes the run's CURVE keys
(``RUN_DIR/keys``, when ``broker.curve_keys`` is not given), writes the config and then
``RUN_DIR/slurm/job-<id>.ready``; the other nodes wait for that file before they start anything, so
no process reads a config or keys that are not there yet. When the first node's launcher ends it
writes ``job-<id>.done``: launchers that run only inferencers stop (exit 0) when they see it, and the
other trainer nodes' launchers wait for it before they exit, so the first node is the first task to end
(``srun --wait`` counts from there).
Without a shared file system every node writes its own copy of the config, keys come from
``broker.curve_keys``, and the first node ends the inferencer-only nodes with ``scancel --signal=TERM
<job>.<step>`` (``srun --wait`` in launch/slurm/ance.sbatch is the fallback).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping

from ance.wire.auth import SECRET_ENV, SECRET_NAME
from ance.launch.slurm_place import NodePart, SlurmEnv, place, read_env
from ance.run.errors import ConfigError
from ance.run.rundir import RunDir
from ance.wire.keys import KEY_FILES, generate_keys

log = logging.getLogger("ance.launch")


@dataclass
class SlurmNode:
    env: SlurmEnv
    part: NodePart
    run_dir: Path
    shared_fs: bool
    wait_s: float

    @property
    def _dir(self) -> Path:
        return RunDir(self.run_dir).slurm

    def ready_file(self) -> Path:
        return self._dir / f"job-{self.env.job_id}.ready"

    def done_file(self) -> Path:
        return self._dir / f"job-{self.env.job_id}.done"

    @property
    def waits_for_head(self) -> bool:
        return self.shared_fs and not self.part.first

    def set_up_head(self) -> None:
        """First trainer node, after claiming the run dir and writing the config: keys, then ``.ready``."""
        if self.part.make_keys:
            make_run_keys(Path(self.part.keys_dir))
        if self.shared_fs:
            _write_atomic(self.ready_file(), json.dumps({"node": self.part.node, "pid": os.getpid(),
                                                         "part": asdict(self.part)}, indent=1))

    def wait_for_head(self) -> None:
        """Other nodes on a shared run dir: wait for the first node's ``.ready`` (bounded)."""
        deadline = time.time() + self.wait_s
        target = self.ready_file()
        while not target.is_file():
            if time.time() > deadline:
                raise ConfigError(f"{target}: not written by the first trainer node {self.part.trainer_nodes[0]} "
                                  f"within launch.slurm.wait_s={self.wait_s:g}s; see its launcher output (is "
                                  f"run_dir={self.run_dir} on a file system every node shares? else set "
                                  "launch.slurm.shared_fs=false)")
            time.sleep(0.5)

    def tick(self, sup) -> None:
        """Inferencer-only launchers on a shared run dir end when the first node says the run is over."""
        if self.shared_fs and self.part.roles == ("inferencer",) and self.done_file().is_file():
            sup.request_stop(f"the run ended ({self.done_file()})")

    def finish(self, rc: int) -> None:
        if not self.shared_fs:
            if self.part.first and self.part.inferencer_nodes:
                self._end_step()
            return
        if self.part.first:
            _write_atomic(self.done_file(), json.dumps({"code": rc, "at": time.time()}))
            return
        deadline = time.time() + self.wait_s
        while not self.done_file().is_file() and time.time() < deadline:
            time.sleep(0.5)

    def _end_step(self) -> None:
        """No shared run dir to say the run is over: SIGTERM the step's tasks through Slurm (the inferencer
        nodes' launchers then stop their workers and exit 0; this launcher is done and ignores it)."""
        target = f"{self.env.job_id}.{self.env.step_id}" if self.env.step_id else self.env.job_id
        try:
            done = subprocess.run(["scancel", "--signal=TERM", target], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("could not signal the inferencer nodes (scancel: %s); srun --wait will end them", exc)
            return
        if done.returncode != 0:
            log.warning("scancel --signal=TERM %s: %s; srun --wait will end the inferencer nodes", target,
                        done.stderr.strip())
        else:
            log.info("run over: SIGTERM to the inferencer nodes (scancel --signal=TERM %s)", target)

    def exit_code(self, rc: int, reason: str | None) -> int:
        """An inferencer-only launcher stopped because the run ended has done its job: 0, not 130. Without a
        shared run dir it learns that only from Slurm (srun --wait's SIGTERM once the first node has ended);
        a scancel shows as CANCELLED, and a failing node as FAILED, whatever this node returns."""
        if reason and reason.startswith("the run ended"):
            return 0
        if self.part.roles == ("inferencer",) and reason and reason.startswith("signal SIGTERM"):
            return 0
        return rc


def make_run_keys(keys_dir: Path) -> None:
    """The run's CURVE keys, made once and atomically (a directory renamed into place), never replaced."""
    if all((keys_dir / name).is_file() for name in KEY_FILES):
        return
    if keys_dir.exists():
        raise ConfigError(f"{keys_dir}: holds an incomplete set of CURVE keys; remove it (a new set is made) "
                          "or complete it with `ance keys`")
    keys_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".keys-", dir=keys_dir.parent))
    try:
        generate_keys(tmp / "k")
        os.replace(tmp / "k", keys_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("made the run's CURVE keys in %s", keys_dir)


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def apply(args: argparse.Namespace, cfg, environ: Mapping[str, str]) -> SlurmNode:
    """Place this node and turn its part into the launcher's own flags and overrides (``args`` changed)."""
    env = read_env(environ)
    scfg = cfg.launch.slurm
    part = place(env, scfg, run_dir=str(cfg.run_dir), curve_keys=cfg.broker.curve_keys)
    given = [f for f in ("trainer_gpus", "inferencer_gpus") if getattr(args, f)]
    if given or args.nnodes != 1 or args.node_rank != 0 or args.rdzv_endpoint or args.only != _ALL:
        raise ConfigError("--slurm places the processes itself: drop --trainer-gpus/--inferencer-gpus/--nnodes/"
                          "--node-rank/--rdzv-endpoint/--only (set launch.slurm.* instead)")
    args.overrides = list(args.overrides or []) + part.overrides
    args.trainer_gpus, args.inferencer_gpus = part.trainer_gpus, part.inferencer_gpus
    args.inferencers = part.n_cpu_inferencers
    args.nnodes, args.node_rank, args.rdzv_endpoint = part.nnodes, part.node_rank, part.rdzv_endpoint
    args.only = ",".join(part.roles)
    args.worker_prefix = part.worker_prefix
    log.info("slurm job %s: node %s (%d of %d) runs %s; trainer nodes %s, inferencer nodes %s",
             env.job_id, part.node, env.node_id, len(env.nodes), ",".join(part.roles),
             ",".join(part.trainer_nodes), ",".join(part.inferencer_nodes) or "(on the first trainer node)")
    if not scfg.shared_fs and cfg.broker.curve_keys:  # no RUN_DIR in common: the run's secret travels with the
        os.environ.setdefault(SECRET_ENV, str(Path(cfg.broker.curve_keys) / SECRET_NAME))  # keys (`ance keys`)
    return SlurmNode(env=env, part=part, run_dir=Path(cfg.run_dir), shared_fs=scfg.shared_fs, wait_s=scfg.wait_s)


_ALL = "broker,trainer,inferencer"
