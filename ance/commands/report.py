"""`ance report`: PNG plots of a run from its metrics log."""

from __future__ import annotations

import argparse

from ance.run.rundir import CONFIG, METRICS

NAME = "report"
HELP = "Plot a run (async gap, refresh latency, loss and gradient norms, evaluation) as PNG files."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help=f"the run directory (reads RUN_DIR/{METRICS} "
                        f"and negatives.max_gap from RUN_DIR/{CONFIG})")
    parser.add_argument("--out", metavar="DIR", default=None, help="output directory; RUN_DIR/report when not given")


def run(args: argparse.Namespace) -> int:
    # imported when the command runs (torch, faiss, zmq...), so `ance --help` stays fast
    from ance.launch.report import write_report

    for path in write_report(args.run_dir, args.out):
        print(path)
    return 0
