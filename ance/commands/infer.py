"""`ance infer`: one refresh worker (encode a corpus shard, index it, search the queries)."""

from __future__ import annotations

import argparse

NAME = "infer"
HELP = "Run one inferencer: take refresh shards from the broker and stream their top-k back."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ance.config import add_config_arguments

    add_config_arguments(parser)
    parser.add_argument("--device", default=None,
                        help="cpu, cuda or cuda:<i> (default: inferencer.device; auto = cuda:0 when available)")
    parser.add_argument("--name", default="0",
                        help="worker name, unique per broker; the socket identity is inferencer-<name>")
    parser.add_argument("--log-level", default="INFO", help="logging level of this process")


def run(args: argparse.Namespace) -> int:
    from ance.config import config_from_args
    from ance.fsio import claim_run_dir
    from ance.inferencer.worker import Worker
    from ance.logutil import setup_logging

    setup_logging(args.log_level, role=f"inferencer-{args.name}")
    cfg = config_from_args(args)
    claim_run_dir(cfg.run_dir, resume=True)  # a writable directory (a restart reuses what is there)
    return Worker(cfg, device=args.device, name=args.name).run()
