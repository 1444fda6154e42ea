"""The `ance` command: a thin dispatcher over ``ance.commands.*``."""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from ance.run.errors import AnceError

# Order is the order `ance --help` lists them in.
COMMANDS = (
    "launch", "train", "broker", "infer",
    "retrieve", "encode", "search", "eval", "benchmark", "mine", "export",
    "monitor", "report", "keys",
)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds ``(default: X)`` where it tells something: not for None, False or an empty
    list, and not where the help text already speaks of its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, [], argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ance",
        description="Train dense retrievers with asynchronously refreshed ANN hard negatives (ANCE).",
        epilog="Run `ance COMMAND --help` for the flags of a command.",
    )
    parser.add_argument("--version", action="version", version=f"ance {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"ance.commands.{name}")
        p = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP,
                           formatter_class=HelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except AnceError as exc:
        print(f"ance {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ance {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
