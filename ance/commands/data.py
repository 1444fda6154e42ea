"""`ance data inspect PATH`: what ance understands of a dataset (format, counts, a sample, the corpus)."""

from __future__ import annotations

import argparse
import json

from .retrieve import _mapping

NAME = "data"
HELP = "Inspect training data: the detected format, counts, a sample record and the corpus ance will index."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True, help="inspect: show what "
                                "ance reads from PATH")
    p = sub.add_parser("inspect", help="show what ance reads from PATH", description=HELP)
    p.add_argument("path", help="a BEIR or MS MARCO folder, a Tevatron JSONL(.gz) file, sentence-transformers "
                                "pairs/triplets (JSONL, CSV, TSV, Parquet), a Hugging Face dataset (save_to_disk "
                                "folder, .arrow, hf:NAME[:CONFIG])")
    p.add_argument("--format", choices=("auto", "beir", "msmarco", "tevatron", "pairs", "hf"), default="auto",
                   help="force a format (default: detected from the path and the first record)")
    p.add_argument("--corpus", default=None, help="the corpus to index, as data.corpus")
    p.add_argument("--columns", type=_mapping, default=None,
                   help="pairs: the column mapping, e.g. '{query: anchor, positive: pos, negatives: [neg]}'")
    p.add_argument("--split", action="append", default=None, help="only this split (repeatable)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace) -> int:
    from ance.data.inspect import inspect_data, render, summary
    from ance.run.logutil import setup_logging

    setup_logging("WARNING", role="ance-data")
    fmt, data = inspect_data(args.path, args.format, corpus=args.corpus, columns=args.columns, splits=args.split)
    s = summary(fmt, data)
    print(json.dumps(s, indent=2) if args.json else render(s))
    return 0
