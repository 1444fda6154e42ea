"""`ance infer`: one refresh worker (encode a corpus shard, index it, search the queries)."""

from __future__ import annotations

import argparse
import os

from ance.run.config import add_config_arguments, config_from_args
from ance.run.logutil import setup_logging
from ance.run.rundir import claim_run_dir

NAME = "infer"
HELP = "Run one inferencer: take refresh shards from the broker and stream their top-k back."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--device", default=None,
                        help="cpu, cuda or cuda:<i> (default: inferencer.device; auto = cuda:0 when available)")
    parser.add_argument("--name", default="0",
                        help="worker name, unique per broker; the socket identity is inferencer-<name>")
    parser.add_argument("--secret-file", default=None,
                        help="the run's secret (a copy of RUN_DIR/run.secret) when this host has no RUN_DIR; "
                             "default: $ANCE_SECRET_FILE, else RUN_DIR/run.secret")
    parser.add_argument("--log-level", default="INFO", help="logging level of this process")


def run(args: argparse.Namespace) -> int:
    # imported when the command runs (torch, faiss, zmq...), so `ance --help` stays fast
    from ance.inferencer.worker import Worker
    setup_logging(args.log_level, role=f"inferencer-{args.name}")
    cfg = config_from_args(args)
    if args.secret_file:
        from ance.wire.auth import SECRET_ENV, read_secret

        read_secret(args.secret_file)  # a bad file: one line, exit 2, now
        os.environ[SECRET_ENV] = args.secret_file
    claim_run_dir(cfg.run_dir, resume=True)  # a writable directory (a restart reuses what is there)
    return Worker(cfg, device=args.device, name=args.name).run()
