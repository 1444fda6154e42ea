"""`ance launch`: broker + trainer group + inferencer pool, supervised, with live progress."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
from pathlib import Path

from ance.run.config import add_config_arguments, config_from_args, save_config
from ance.run.data_checks import is_record_data
from ance.run.errors import ConfigError
from ance.run.logutil import setup_logging
from ance.run.resume import check_resume
from ance.run.rundir import RunDir, claim_run_dir

NAME = "launch"
HELP = "Start a whole run (broker, trainer group, inferencer pool) and supervise it until training ends."


def _gpus(text: str | None) -> list[int]:
    if not text:
        return []
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of GPU indices, got {text!r}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "--resume", "continue the run in RUN_DIR (trainer from its newest checkpoint; "
                                             "broker reloads the newest persisted negatives)")
    parser.add_argument("--trainer-gpus", type=_gpus, default=[], metavar="0,1",
                        help="GPUs of the trainer group (torchrun over them when more than one); none = one CPU process")
    parser.add_argument("--inferencer-gpus", type=_gpus, default=[], metavar="2,3",
                        help="one inferencer worker per GPU listed; none = --inferencers CPU workers")
    parser.add_argument("--inferencers", type=int, default=None,
                        help="number of CPU inferencer workers when no --inferencer-gpus (default: launch.inferencers)")
    parser.add_argument("--only", default="broker,trainer,inferencer",
                        help="start only these roles (comma-separated), e.g. `inferencer` on a second node")
    parser.add_argument("--worker-prefix", default=None,
                        help="prefix of this launcher's inferencer names (inferencer-<prefix><i>); default: none "
                             "when this launcher runs the broker, else '<hostname>-', so pools on several hosts "
                             "never share a name")
    parser.add_argument("--nnodes", type=int, default=1, help="trainer nodes (torchrun rendezvous); 1 = this node only")
    parser.add_argument("--node-rank", type=int, default=0, help="this node's rank among --nnodes")
    parser.add_argument("--rdzv-endpoint", default=None, help="host:port of the torchrun rendezvous (multi-node)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start fresh in a run directory that holds an earlier run, moving that run aside to "
                             "RUN_DIR.old-<time> (without it, such a directory is refused)")
    parser.add_argument("--mps", default="off", choices=("off", "on", "auto"),
                        help="CUDA MPS for processes sharing a GPU (the launcher runs a private MPS control daemon "
                             "for the run): on, auto (when a trainer GPU also runs an inferencer and "
                             "nvidia-cuda-mps-control is there), off (default)")
    parser.add_argument("--force", action="store_true",
                        help="resume even though a fixed config key changed (see `ance config keys`)")
    parser.add_argument("--slurm", dest="slurm", action="store_const", const="on", default="auto",
                        help="run this node's part of the run inside a Slurm allocation (one launcher per node via "
                             "srun; placement from launch.slurm.*; see launch/slurm/ance.sbatch); default: on "
                             "inside an srun step of a multi-node allocation")
    parser.add_argument("--no-slurm", dest="slurm", action="store_const", const="off",
                        help="ignore the Slurm environment (one plain launch on this node)")
    parser.add_argument("--no-progress", action="store_true", help="no live progress line")
    parser.add_argument("--log-level", default="INFO", help="the launcher's own logging level")


def run(args: argparse.Namespace) -> int:
    # imported when the command runs (torch, faiss, zmq...), so `ance --help` stays fast
    from ance.launch.mps import MpsDaemon, find_control, wanted
    from ance.launch.progress import Progress, eval_line
    from ance.launch.slurm_place import wants_slurm
    from ance.launch.supervisor import Supervisor, plan
    from ance.run.lock import lock_run_dir, unlock
    from ance.run.telemetry import MetricsWriter
    from ance.wire.auth import SECRET_ENV, ensure_secret

    setup_logging(args.log_level, role="launch")
    cfg = config_from_args(args)
    slurm = None
    if wants_slurm(args.slurm, os.environ):
        from ance.launch.slurm_node import apply  # this node's part of a multi-node run
        slurm = apply(args, cfg, os.environ)
        cfg = config_from_args(args)
        args.no_progress = args.no_progress or not slurm.part.first
    roles = tuple(r.strip() for r in args.only.split(",") if r.strip())
    unknown = set(roles) - {"broker", "trainer", "inferencer"}
    if unknown:
        raise ConfigError(f"--only: unknown role(s) {', '.join(sorted(unknown))}; use broker, trainer, inferencer")
    n_cpu = args.inferencers if args.inferencers is not None else cfg.launch.inferencers
    if slurm is None:  # under Slurm the placement gives each node its part of the pool
        check_pool(cfg, roles, n_cpu, args.inferencer_gpus, flag=args.inferencers is not None)
    control = find_control()
    existing = os.environ.get("CUDA_MPS_PIPE_DIRECTORY")
    use_mps = wanted(args.mps, args.trainer_gpus, args.inferencer_gpus, control, existing)
    if existing and args.mps != "off":
        logging.getLogger("ance.launch").info("--mps: using the MPS daemon of CUDA_MPS_PIPE_DIRECTORY=%s", existing)
    run_dir = Path(cfg.run_dir)
    if is_record_data(cfg.data):  # not a BEIR/MS MARCO folder: check the user's file here, on the console,
        from ance.data.dataset import load_for_config  # before any run directory or process exists
        from ance.trainer.feed import check_given

        check_given(cfg, load_for_config(cfg))
    # Node 0's launcher starts the run; other nodes, and inferencer-only launchers, join a run that exists.
    if slurm is not None and slurm.waits_for_head:
        slurm.wait_for_head()  # the first node claims the run dir and writes the config and keys
    if args.node_rank == 0 and ("trainer" in roles or "broker" in roles):
        if run_dir.is_dir():  # never move aside, or join, a run another launcher is running
            unlock(lock_run_dir(run_dir))
        if args.from_run_dir:  # a changed fixed key is refused before anything is written
            check_resume(run_dir, cfg.to_dict(), force=args.force, command="ance launch --resume")
        aside = claim_run_dir(run_dir, resume=bool(args.from_run_dir), overwrite=args.overwrite)
        if aside is not None:
            logging.getLogger("ance.launch").warning("--overwrite: the earlier run moved to %s", aside)
        run_lock = lock_run_dir(run_dir)  # held until this process ends  # noqa: F841
        if not os.environ.get(SECRET_ENV):  # else every role reads that file (Slurm without a shared file system)
            ensure_secret(run_dir)  # every role proves it at hello (ance.wire.auth)
    if slurm is None or not slurm.waits_for_head:
        save_config(cfg, run_dir)
    if slurm is not None and slurm.part.first:
        slurm.set_up_head()
    if cfg.negatives.source != "async":
        roles = tuple(r for r in roles if r == "trainer")  # nothing to refresh
    specs = plan(run_dir, resume=bool(args.from_run_dir), trainer_gpus=args.trainer_gpus,
                 inferencer_gpus=args.inferencer_gpus, n_cpu_inferencers=n_cpu, nnodes=args.nnodes,
                 node_rank=args.node_rank, rdzv_endpoint=args.rdzv_endpoint, roles=roles,
                 worker_prefix=worker_prefix(args.worker_prefix, roles),
                 cpu_trainer_procs=slurm.part.cpu_trainer_procs if slurm else 1)
    log = logging.getLogger("ance.launch")
    mps = MpsDaemon(run_dir, control) if use_mps else None
    # Process starts, exits and restarts go to the metrics log too, so `ance monitor` and tests see them.
    metrics = MetricsWriter(run_dir, "launch", tensorboard=False)

    def on_event(event: str, **fields) -> None:
        log.info("%s %s", event, json.dumps(fields))
        metrics.log(event, **fields)

    sup = Supervisor(specs, run_dir, backoff_s=cfg.launch.restart_backoff_s, max_restarts=cfg.launch.max_restarts,
                     on_event=on_event)

    def handle(signum, _frame):
        sup.request_stop(f"signal {signal.Signals(signum).name}")

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)
    progress = None if args.no_progress else Progress(run_dir, cfg.train.max_steps, cfg.negatives.max_gap)
    log.info("run directory %s; logs in %s", run_dir, RunDir(run_dir).logs)
    rc = 1
    try:
        if mps is not None:
            env = mps.start()
            for spec in specs:
                spec.env.update(env)
            metrics.log("mps", state="started", pipe_dir=str(mps.pipe_dir))
        ticks = [t for t in (progress.tick if progress else None,
                             (lambda: slurm.tick(sup)) if slurm else None) if t is not None]
        rc = sup.run(tick=(lambda: [t() for t in ticks]) if ticks else None)
    finally:
        if mps is not None:
            mps.stop()
        # the run's last word in the metrics log, so `ance monitor` shows it finished (and when); only from
        # the launcher whose trainer ends the run, not from an `--only inferencer` one on another host
        if "trainer" in roles and args.node_rank == 0:
            metrics.log("run_end", code=rc, reason=sup.stop_reason or "interrupted")
        metrics.close()
        if slurm is not None:
            slurm.finish(rc)
            rc = slurm.exit_code(rc, sup.stop_reason)
    if slurm is not None and not slurm.part.first:
        return rc  # the run's summary comes from the first node
    result = (progress or Progress(run_dir, cfg.train.max_steps, cfg.negatives.max_gap, out=sys.stderr)).finish()
    print(json.dumps(result))
    line = eval_line(cfg.data.eval_split, result)
    if line:
        print(line, file=sys.stderr)
    if result.get("best"):
        b = result["best"]
        print(f"best checkpoint ({b.get('metric')} {b.get('value', float('nan')):.4f}): {b['checkpoint']}",
              file=sys.stderr)
    return rc


def check_pool(cfg, roles: tuple[str, ...], n_cpu: int, inferencer_gpus: list[int], flag: bool = False) -> None:
    """An async run that starts its inferencers here needs at least one: with none, nothing refreshes the
    negatives and the trainer waited ``negatives.wait_timeout_s`` before it gave up."""
    if cfg.negatives.source != "async" or "inferencer" not in roles or inferencer_gpus or n_cpu > 0:
        return
    given = f"--inferencers {n_cpu}" if flag else f"launch.inferencers={n_cpu}"
    raise ConfigError(f"{given} with negatives.source=async: no inferencer would refresh the negatives; start at "
                      "least one (launch.inferencers=N or --inferencer-gpus), run them elsewhere with --only "
                      "broker,trainer, or train without refreshes (negatives.source=static or inbatch)")


def worker_prefix(given: str | None, roles: tuple[str, ...]) -> str:
    if given is not None:
        return given
    return "" if "broker" in roles else f"{socket.gethostname()}-"
