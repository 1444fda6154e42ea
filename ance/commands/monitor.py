"""`ance monitor`: live view of a run from its metrics log."""

from __future__ import annotations

import argparse

from ance.run.rundir import CONFIG, METRICS

NAME = "monitor"
HELP = "Show a run's live state: training step, loss, async gap, refreshes, shards, workers, checkpoints."


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR|URL", help=f"the run directory (reads RUN_DIR/{METRICS} "
                        f"and RUN_DIR/{CONFIG}), or a broker's Prometheus endpoint http://HOST:PORT "
                        "(PORT = telemetry.prometheus_port) from a machine without the run directory")
    parser.add_argument("--once", action="store_true", help="print one snapshot and exit (for scripts)")
    parser.add_argument("--interval", type=_positive, default=0.5, help=f"seconds between reads of {METRICS}")
    parser.epilog = ("Works from any machine that sees RUN_DIR; the broker logs shard and worker events to the "
                     "same file, so no connection to the run is needed. Elsewhere, point it at the broker's "
                     "Prometheus endpoint (a shorter view: gauges only). Ctrl-C leaves.")


def run(args: argparse.Namespace) -> int:
    # imported when the command runs (torch, faiss, zmq...), so `ance --help` stays fast
    from ance.launch.monitor import watch, watch_url

    if args.run_dir.startswith(("http://", "https://")):
        return watch_url(args.run_dir, interval=max(args.interval, 1.0), once=args.once)
    return watch(args.run_dir, interval=args.interval, once=args.once)
