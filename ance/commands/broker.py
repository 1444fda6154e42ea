"""`ance broker`: the hub between the trainer and the inferencer pool."""

from __future__ import annotations

import argparse

from ance.run.config import add_config_arguments, config_from_args
from ance.run.logutil import setup_logging
from ance.run.rundir import claim_run_dir

NAME = "broker"
HELP = "Run the broker: track inferencers, turn checkpoints into refresh jobs, merge and persist negatives."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--log-level", default="INFO", help="logging level of this process")
    parser.epilog = ("Binds broker.bind (default broker.address, loopback); anything but loopback needs "
                     "broker.curve_keys (see `ance keys`). Restart it any time: it reloads RUN_DIR/negatives/ "
                     "and re-queues a checkpoint newer than the last complete version.")


def run(args: argparse.Namespace) -> int:
    # imported when the command runs (torch, faiss, zmq...), so `ance --help` stays fast
    from ance.broker.hub import Broker
    setup_logging(args.log_level, role="broker")
    cfg = config_from_args(args)
    claim_run_dir(cfg.run_dir, resume=True)  # a writable directory (a restart reuses what is there)
    return Broker(cfg).run()
