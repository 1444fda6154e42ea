"""`ance train`: one trainer process (or one rank under torchrun)."""

from __future__ import annotations

import argparse
import json
import logging
import os

from ance.run.config import add_config_arguments, config_from_args
from ance.run.logutil import setup_logging
from ance.run.resume import check_resume
from ance.run.rundir import RunDir, claim_run_dir

NAME = "train"
HELP = "Train a bi-encoder with GradCache on in-batch, static or asynchronously refreshed negatives."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "--resume", "continue the run in RUN_DIR from its newest complete checkpoint "
                                             "(model, optimizer, scheduler, RNG and data position)")
    parser.add_argument("--auto-resume", action="store_true",
                        help="with CONFIG: resume when the run directory already holds a complete checkpoint, "
                             "else start fresh (for restarts by docker compose or a scheduler)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start fresh in a run directory that holds an earlier run, moving that run aside to "
                             "RUN_DIR.old-<time> (without it, such a directory is refused)")
    parser.add_argument("--force", action="store_true",
                        help="resume even though a fixed config key changed (see `ance config keys`)")
    parser.add_argument("--log-level", default="INFO", help="logging level of this process")
    parser.epilog = ("Several GPUs: torchrun --nproc-per-node N -m ance.cli train CONFIG ... "
                     "(batch_size is the global batch, split over the ranks).")


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level, role="trainer")
    cfg = config_from_args(args)
    resume = bool(args.from_run_dir)
    from ance.data.dataset import load_for_config
    from ance.trainer.feed import check_given

    dataset = load_for_config(cfg)  # bad data fails here, before the run directory is created or touched
    check_given(cfg, dataset)
    if args.auto_resume and not resume:
        found = RunDir(cfg.run_dir).latest_checkpoint()
        if found is not None:
            logging.getLogger("ance.train").info("--auto-resume: continuing from %s", found[1])
            resume = True
    if resume:  # a changed fixed key is refused before anything is written; the trainer applies the rest
        check_resume(cfg.run_dir, cfg.to_dict(), force=args.force, command="ance train --resume")
    # A fresh run never mixes with an earlier one's checkpoints or negatives (under torchrun: rank 0 checks).
    if os.environ.get("RANK", "0") == "0":
        aside = claim_run_dir(cfg.run_dir, resume=resume, overwrite=args.overwrite,
                              names=("checkpoints", "negatives"))
        if aside is not None:
            logging.getLogger("ance.train").warning("--overwrite: the earlier run moved to %s", aside)

    from ance.trainer.loop import Trainer  # torch, transformers: only when the command runs

    trainer = Trainer(cfg, resume=resume, dataset=dataset)
    try:
        summary = trainer.run()
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():  # under torchrun: leave the group cleanly
            dist.destroy_process_group()
    if trainer.is_main:
        logging.getLogger("ance.train").info("done: %s", json.dumps(summary))
    return 0
