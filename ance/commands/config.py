"""`ance config`: the resolved config with comments (`show`), and the reference of every key (`keys`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ance.run.config import add_config_arguments, config_from_args, load_config

NAME = "config"
HELP = "Show a resolved config with comments, or the reference of every config key."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True, help="show or keys")
    show = sub.add_parser("show", help="print the resolved config (file + overrides, or a run's) with comments",
                          description="Print the resolved config (defaults, CONFIG, then key=value overrides) as "
                                      "YAML with each key's allowed values and meaning as comments; no CONFIG: "
                                      "the defaults.")
    add_config_arguments(show)
    keys = sub.add_parser("keys", help="the reference of every config key (type, default, allowed values, "
                                       "resume class, meaning)")
    keys.add_argument("--markdown", action="store_true", help="as docs/config.md (the generated reference)")


def run(args: argparse.Namespace) -> int:
    from ance.run import reference

    if args.action == "keys":
        sys.stdout.write(reference.markdown() if args.markdown else reference.text())
        return 0
    overrides = list(args.overrides or [])
    if args.config is not None and "=" in args.config and not Path(args.config).is_file():
        args.config, overrides = None, [args.config] + overrides  # `ance config show train.lr=1e-5`
        args.overrides = overrides
    if args.config is None and not args.from_run_dir:
        cfg = load_config(None, overrides)
    else:
        cfg = config_from_args(args)
    sys.stdout.write(reference.commented_yaml(cfg))
    return 0
