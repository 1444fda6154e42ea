"""`ance report`: figures of one run (diagnostics) or several runs overlaid (learning curves, loss, gap)."""

from __future__ import annotations

import argparse

from ance.run.errors import ConfigError
from ance.run.rundir import CONFIG, METRICS

NAME = "report"
HELP = ("Plot runs from their metrics logs: learning curves (eval metric), loss with learning rate, async gap, "
        "overlaid over several runs, as PNG/PDF/SVG; with one run also its refresh diagnostics.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help=f"run directories (each read: RUN_DIR/{METRICS} "
                        f"and RUN_DIR/{CONFIG}); several are overlaid in one figure each")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="output directory; RUN_DIR/report for one run (required for several)")
    parser.add_argument("--format", nargs="+", choices=("png", "pdf", "svg"), default=["png", "pdf"],
                        help="figure formats of the learning/loss/gap figures (the diagnostics are PNG)")
    parser.add_argument("--metric", default="ndcg@10", help="the eval measure of the learning curves")
    parser.add_argument("--label", nargs="+", default=None, metavar="NAME",
                        help="legend names of the runs, in order (default: the run dirs' names)")


def run(args: argparse.Namespace) -> int:
    # imported when the command runs (matplotlib), so `ance --help` stays fast
    from pathlib import Path

    from ance.launch.overlay import write_overlay
    from ance.launch.report import write_report

    if args.label is not None and len(args.label) != len(args.run_dirs):
        raise ConfigError(f"--label: give one name per RUN_DIR ({len(args.run_dirs)}), got {len(args.label)}")
    if len(args.run_dirs) > 1 and args.out is None:
        raise ConfigError("several RUN_DIRs: give --out DIR for the overlaid figures")
    out = Path(args.out) if args.out else Path(args.run_dirs[0]) / "report"
    paths = write_report(args.run_dirs[0], out) if len(args.run_dirs) == 1 else []
    paths += write_overlay(args.run_dirs, out, args.format, args.metric, args.label)
    for path in paths:
        print(path)
    return 0
