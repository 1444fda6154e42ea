"""`ance train`: one trainer process (or one rank under torchrun)."""

from __future__ import annotations

import argparse
import os

NAME = "train"
HELP = "Train a bi-encoder with GradCache on in-batch, static or asynchronously refreshed negatives."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="YAML config (e.g. configs/tiny-cpu.yaml); omit with --resume")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted overrides, e.g. train.lr=3e-5 run_dir=runs/x")
    parser.add_argument("--resume", metavar="RUN_DIR", default=None,
                        help="continue the run in RUN_DIR from its newest complete checkpoint "
                             "(model, optimizer, scheduler, RNG and data position)")
    parser.add_argument("--auto-resume", action="store_true",
                        help="with CONFIG: resume when the run directory already holds a complete checkpoint, "
                             "else start fresh (for restarts by docker compose or a scheduler)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start fresh in a run directory that holds an earlier run, moving that run aside to "
                             "RUN_DIR.old-<time> (without it, such a directory is refused)")
    parser.add_argument("--log-level", default="INFO", help="logging level of this process")
    parser.epilog = ("Several GPUs: torchrun --nproc-per-node N -m ance.cli train CONFIG ... "
                     "(batch_size is the global batch, split over the ranks).")


def run(args: argparse.Namespace) -> int:
    import json
    import logging

    from ance.config import config_from_args, load_run_config
    from ance.fsio import claim_run_dir
    from ance.logutil import setup_logging

    setup_logging(args.log_level, role="trainer")
    if args.resume:
        overrides = list(args.overrides)
        if args.config is not None:
            overrides.insert(0, args.config)  # `ance train --resume R key=value`: no CONFIG
        cfg = load_run_config(args.resume, overrides)
    else:
        cfg = config_from_args(argparse.Namespace(config=args.config, overrides=args.overrides, from_run_dir=None))
    resume = bool(args.resume)
    if args.auto_resume and not resume:
        from pathlib import Path

        from ance.trainer.checkpoint import latest_checkpoint

        found = latest_checkpoint(Path(cfg.run_dir))
        if found is not None:
            logging.getLogger("ance.train").info("--auto-resume: continuing from %s", found[1])
            resume = True
    # A fresh run never mixes with an earlier one's checkpoints or negatives (under torchrun: rank 0 checks).
    if os.environ.get("RANK", "0") == "0":
        aside = claim_run_dir(cfg.run_dir, resume=resume, overwrite=args.overwrite,
                              names=("checkpoints", "negatives"))
        if aside is not None:
            logging.getLogger("ance.train").warning("--overwrite: the earlier run moved to %s", aside)

    from ance.trainer.loop import Trainer

    trainer = Trainer(cfg, resume=resume)
    try:
        summary = trainer.run()
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():  # under torchrun: leave the group cleanly
            dist.destroy_process_group()
    if trainer.is_main:
        logging.getLogger("ance.train").info("done: %s", json.dumps(summary))
    return 0
