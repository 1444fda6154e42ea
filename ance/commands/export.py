"""`ance export CKPT OUT`: a checkpoint as a plain model dir with a model card, for hand-off."""

from __future__ import annotations

import argparse
import shlex
import sys

NAME = "export"
HELP = ("Write a checkpoint as a plain model dir (no trainer state) with a model card README.md, loadable by "
        "sentence-transformers and transformers.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CKPT",
                        help="a checkpoint dir RUN/checkpoints/step-N, or an alias RUN/checkpoints/best or final")
    parser.add_argument("out", metavar="OUT", help="the model dir to write (must not exist, or be empty)")


def run(args: argparse.Namespace) -> int:
    from ance.model.export import export_model

    command = "ance " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["export"] else \
        f"ance export {shlex.quote(str(args.checkpoint))} {shlex.quote(str(args.out))}"
    out = export_model(args.checkpoint, args.out, command=command)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"ance export: {args.checkpoint} -> {out} ({size / 1e6:.1f} MB)", file=sys.stderr)
    return 0
