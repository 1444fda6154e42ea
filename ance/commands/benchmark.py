"""`ance benchmark`: several models over several BEIR-format datasets, one BEIR-style table.

For each dataset and model: encode the corpus and the split's queries, search exactly
(:func:`ance.search.retrieve.retrieve`, as ``ance retrieve``), score per query; then the table of
:mod:`ance.eval.table` (paired tests against the first model, Holm-corrected) on stdout.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ance.run.errors import ConfigError

from .retrieve import add_encoding_arguments, add_search_arguments, check_positive

NAME = "benchmark"
HELP = "Retrieve and evaluate several models over several datasets; print a BEIR-style table with paired tests."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="+", metavar="[NAME=]MODEL",
                        help="models as for `ance retrieve --model` (a dir, tiny-bert, all-MiniLM-L6-v2, a run's "
                             "RUN_DIR/checkpoints/best); NAME= names its row (default: the dir's name)")
    g = parser.add_argument_group("data")
    g.add_argument("--data", nargs="+", required=True, metavar="[NAME=]FOLDER",
                   help="BEIR or MS MARCO folders; NAME= names the column (default: the folder's name)")
    g.add_argument("--split", nargs="+", default=["test", "dev"],
                   help="the split searched in each folder: the first of these the folder has")
    g.add_argument("--format", choices=("auto", "beir", "msmarco"), default="auto", help="data folder layout")
    g.add_argument("--max-docs", type=int, default=None,
                   help="subset per dataset, as `ance retrieve --max-docs` (train + searched split positives kept)")
    g.add_argument("--max-queries", type=int, default=None, help="subset: the first N judged queries of the split")
    g.add_argument("--subset-seed", type=int, default=0, help="seed of the --max-docs sample")
    add_encoding_arguments(parser)
    add_search_arguments(parser, k=100)
    t = parser.add_argument_group("table")
    t.add_argument("--measures", nargs="+", default=["ndcg@10", "recall@100"], metavar="NAME@K",
                   help="measures, one table each")
    t.add_argument("--table", choices=("md", "csv", "latex", "json"), default="md", help="output format")
    t.add_argument("--baseline", default=None, metavar="NAME", help="the model the others are tested against "
                                                                    "(default: the first)")
    t.add_argument("--test", choices=("t", "wilcoxon"), default="t", help="paired two-sided test")
    t.add_argument("--out", default=None, metavar="FILE", help="also write the table to FILE")
    t.add_argument("--runs-dir", default=None, metavar="DIR",
                   help="also keep each TREC run as DIR/<dataset>/<model>.trec")
    parser.set_defaults(command_name=NAME, pooling=None, normalize=None)


def _named(spec: str, what: str) -> tuple[str, str]:
    name, sep, value = spec.partition("=")
    if not sep:
        value = spec
        name = Path(spec.rstrip("/")).name or spec
    if not name or not value:
        raise ConfigError(f"{what} {spec!r}: give NAME=VALUE or a path")
    return name, value


def _unique(specs: list[str], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for spec in specs:
        name, value = _named(spec, what)
        if name in out:
            raise ConfigError(f"{what}: two entries are named {name!r}; name them NAME=...")
        out[name] = value
    return out


def run(args: argparse.Namespace) -> int:
    # imported when the command runs (torch, faiss, ir-measures...), so `ance --help` stays fast
    import logging

    from ance.eval.metrics import evaluate_per_query
    from ance.eval.table import build_table, render
    from ance.eval.trec import write_trec_run
    from ance.run.device import resolve_device
    from ance.run.fsio import atomic_write_lines, check_output_file
    from ance.run.logutil import setup_logging
    from ance.search.retrieve import has_split, load_data, load_encoder, retrieve

    if not logging.getLogger().handlers:
        setup_logging("WARNING" if args.quiet else "INFO", role="ance-benchmark")
    check_positive(args, "k", "max_length", "query_max_length", "windows", "batch_size", "max_docs", "max_queries")
    models, datasets = _unique(args.models, "MODEL"), _unique(args.data, "--data")
    if args.out:
        check_output_file(args.out)
    if args.baseline is not None and args.baseline not in models:
        raise ConfigError(f"--baseline {args.baseline}: not one of the models ({', '.join(models)})")
    max_length = args.max_length or 256
    device = resolve_device(args.device, "--device")
    encoders = {name: load_encoder(path, device=device, precision=args.precision) for name, path in models.items()}
    per_query: dict[str, dict] = {}
    for dname, folder in datasets.items():
        split = next((s for s in args.split if has_split(folder, args.format, s)), None)
        if split is None:
            raise ConfigError(f"--data {folder}: has none of the splits {', '.join(args.split)}; give --split")
        data = load_data(folder, split, format=args.format, max_docs=args.max_docs, max_queries=args.max_queries,
                         seed=args.subset_seed, train_split="train")
        qrels = data.split(split).qrels
        per_query[dname] = {}
        for mname, model in encoders.items():
            t0 = time.perf_counter()
            qids, ids, scores = retrieve(model, data, split, k=args.k, max_length=max_length,
                                         query_max_length=args.query_max_length, device=device,
                                         backend=args.backend, cache_root=args.cache_dir, batch_size=args.batch_size,
                                         long_doc=args.long_doc, n_windows=args.windows, precision=args.precision,
                                         progress=not args.quiet)
            run_ = {q: {data.corpus.ids[d]: float(s) for d, s in zip(r_ids, r_scores) if d >= 0}
                    for q, r_ids, r_scores in zip(qids, ids.tolist(), scores.tolist())}
            per_query[dname][mname] = evaluate_per_query(run_, qrels, args.measures)
            if args.runs_dir:
                out = Path(args.runs_dir) / dname
                out.mkdir(parents=True, exist_ok=True)
                write_trec_run(out / f"{mname}.trec", qids, ids, scores, data.corpus.ids, tag=mname.replace(" ", "_"))
            print(f"ance benchmark: {mname} on {dname} ({split}, {len(data.corpus)} docs, {len(qids)} queries): "
                  f"{time.perf_counter() - t0:.1f}s", file=sys.stderr)
    try:
        table = build_table(per_query, args.measures, baseline=args.baseline, test=args.test)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    text = render(table, args.table)
    if args.out:
        atomic_write_lines(args.out, [text])
    sys.stdout.write(text)
    return 0
