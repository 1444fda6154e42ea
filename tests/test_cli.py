"""The `ance` command: every subcommand listed, every flag explained, defaults shown once."""

import argparse
import subprocess
import sys

from ance.cli import COMMANDS, build_parser


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_help_lists_every_subcommand():
    out = subprocess.run([sys.executable, "-m", "ance.cli", "--help"], capture_output=True, text=True, check=True)
    for name in COMMANDS:
        assert f"    {name}" in out.stdout, name


def test_every_flag_has_a_help_text_and_no_doubled_default():
    subs = subparsers(build_parser())
    assert set(subs) == set(COMMANDS)
    for name, parser in subs.items():
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help and action.help.strip(), f"ance {name} {action.option_strings or action.dest}: no help"
        text = parser.format_help()
        assert "(default: None)" not in text and text.count("(default:") <= len(parser._actions), name
