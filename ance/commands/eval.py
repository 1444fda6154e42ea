"""`ance eval`: score TREC runs against judgements.

One ``--run``: one JSON object on stdout (the measures, ``n_queries``, ``n_missing``).
Several runs (and several ``--qrels``, one per dataset): a table (``--table md|csv|latex|json``)
with paired tests against ``--baseline`` and Holm's correction (:mod:`ance.eval.table`).
``--compare RUN_A RUN_B``: paired per-query statistics of two runs instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ance.run.errors import ConfigError, DataError

NAME = "eval"
HELP = ("Evaluate TREC runs against qrels (one run: a JSON object; several runs or datasets: a table with "
        "paired tests), or compare two (--compare A B).")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", nargs="+", metavar="[DATASET:][NAME=]RUN",
                       help="TREC run file(s) (qid Q0 did rank score tag), e.g. from `ance retrieve`; NAME= names "
                            "the system in a table (default: the file's stem), DATASET: the --qrels it is scored "
                            "against when several are given")
    which.add_argument("--compare", nargs=2, metavar=("RUN_A", "RUN_B"),
                       help="two TREC runs over the same queries: per measure, the mean of A - B over the "
                            "queries, a paired t-test and Wilcoxon signed-rank test (scipy), a bootstrap "
                            "confidence interval of the mean difference, and wins/ties/losses of A. Either side "
                            "may be a comma-separated list of runs (a recipe's seeds): each query's value is "
                            "then averaged over them before pairing")
    parser.add_argument("--qrels", required=True, nargs="+", metavar="[DATASET=]QRELS",
                        help="judgements: BEIR TSV (query-id corpus-id score, header optional) or TREC qrels "
                             "(qid 0 did rel), or a dataset ance reads (a folder, Tevatron or pairs file, "
                             "Hugging Face dataset): its --split's judgements; several as DATASET=PATH for a "
                             "table over datasets")
    parser.add_argument("--split", default=None, help="--qrels DATASET: the split (default: its training split)")
    parser.add_argument("--measures", nargs="+", default=None, metavar="NAME@K",
                        help="measures to compute instead of the default four (ndcg, mrr, recall, map, "
                             "precision at a cutoff, e.g. ndcg@10 recall@100)")
    parser.add_argument("--missing", choices=("zero", "skip"), default="zero",
                        help="a judged query a run does not rank: zero counts it 0 (trec_eval -c), skip leaves it "
                             "out of the mean; either way the count is on stderr and in the output (n_missing)")
    parser.add_argument("--table", choices=("md", "csv", "latex", "json"), default=None,
                        help="write a table (default with several runs: md)")
    parser.add_argument("--baseline", default=None, metavar="NAME",
                        help="table: the system the others are tested against (default: the first run)")
    parser.add_argument("--test", choices=("t", "wilcoxon"), default="t",
                        help="table: paired two-sided test against the baseline (Holm-adjusted when several)")
    parser.add_argument("--alpha", type=float, default=0.05, help="table: significance level of the mark")
    parser.add_argument("--out", default=None, metavar="FILE", help="table: also write it to FILE")
    parser.add_argument("--bootstrap", type=int, default=10000, metavar="N",
                        help="--compare: bootstrap resamples of the queries (default 10000)")
    parser.add_argument("--seed", type=int, default=0, help="--compare: the bootstrap's seed (default 0)")
    parser.epilog = ("Means are over the qrels' queries with a relevant document; a query missing from the "
                     "run counts 0 unless --missing skip, and is reported on stderr. Nothing but the result "
                     "goes to stdout. With --compare the object is {measure: {n, a, b, diff, ci (95%% bootstrap "
                     "of diff), t, p_t, wilcoxon, p_wilcoxon, wins, ties, losses}, n_missing: [A, B], n_shared "
                     "(judged queries both rank)}; a partial overlap is reported on stderr, none is an error.")


def _round(value):
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, list):
        return [_round(v) for v in value]
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    return value


def parse_qrels_specs(specs: list[str]) -> dict[str, str]:
    """``[DATASET=]PATH`` -> {dataset: path}; the default name is the data folder's (``D/qrels/dev.tsv`` -> D)."""
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            p = Path(spec)
            name, path = (p.parent.parent.name if p.parent.name == "qrels" else p.parent.name) or p.stem, spec
        if name in out:
            raise ConfigError(f"--qrels: dataset {name!r} given twice; name them DATASET=PATH")
        out[name] = path
    return out


def parse_run_spec(spec: str, datasets: list[str]) -> tuple[str, str, str]:
    """``[DATASET:][NAME=]PATH`` -> (dataset, name, path)."""
    head, sep, path = spec.partition("=")
    if not sep:
        head, path = "", spec
    dataset, colon, name = head.rpartition(":")
    if not colon:
        dataset = ""
    if not dataset:
        if len(datasets) > 1:
            raise ConfigError(f"--run {spec}: several --qrels given; say which as DATASET:NAME=PATH "
                              f"(datasets: {', '.join(datasets)})")
        dataset = datasets[0]
    if dataset not in datasets:
        raise ConfigError(f"--run {spec}: dataset {dataset!r} is not one of the --qrels ({', '.join(datasets)})")
    return dataset, name or Path(path).stem, path


def run(args: argparse.Namespace) -> int:
    # imported when the command runs (ir-measures, scipy), so `ance --help` stays fast
    from ance.eval.compare import compare_runs, query_overlap
    from ance.eval.metrics import MEASURES, evaluate_per_query, missing_queries
    from ance.eval.trec import read_qrels, read_trec_run

    from ance.data.inspect import judgements

    qrels_paths = parse_qrels_specs(args.qrels)
    qrels_of = {}
    for d, p in qrels_paths.items():
        found = judgements(p, args.split)
        qrels_of[d] = read_qrels(p) if found is None else found
    measures = args.measures or MEASURES

    def read_run(path: str, dataset: str):
        run_, qrels = read_trec_run(path), qrels_of[dataset]
        if not run_:  # zeros with exit 0 would read as a result
            raise DataError(path, None, "holds no ranking (no `qid Q0 did rank score tag` line): nothing to "
                                        "evaluate; did the retrieve that wrote it fail or get cut short?")
        if not set(run_) & set(qrels):
            raise DataError(path, None, f"none of its {len(run_)} query ids (e.g. {next(iter(run_))!r}) is in "
                                        f"{qrels_paths[dataset]} (e.g. {next(iter(qrels))!r}); were they made for "
                                        "the same dataset and split?")
        n_missing = len(missing_queries(run_, qrels))
        if n_missing:
            n_judged = len(missing_queries({}, qrels))
            print(f"ance eval: {path}: {n_missing} of {n_judged} judged queries have no ranking; "
                  + ("counted 0 (--missing skip leaves them out)" if args.missing == "zero"
                     else "left out of the mean (--missing skip)"), file=sys.stderr)
        return run_, n_missing

    try:
        if args.compare:
            if len(qrels_of) != 1:
                raise ValueError("--compare takes one --qrels")
            if args.bootstrap < 1:
                raise ValueError(f"--bootstrap must be >= 1, got {args.bootstrap}")
            (dataset,) = qrels_of
            read = [[read_run(p, dataset) for p in side.split(",") if p] for side in args.compare]
            runs_a, runs_b = [r for r, _ in read[0]], [r for r, _ in read[1]]
            overlap = query_overlap(runs_a, runs_b, qrels_of[dataset])
            _warn_overlap(args, overlap)
            result = compare_runs(runs_a, runs_b, qrels_of[dataset], measures,
                                  n_boot=args.bootstrap, seed=args.seed, missing=args.missing)
            result["n_missing"] = [max((m for _, m in side), default=0) for side in read]
            result["n_shared"] = overlap["shared"]
        elif len(args.run) == 1 and len(qrels_of) == 1 and args.table is None:
            dataset, _, path = parse_run_spec(args.run[0], list(qrels_of))
            run_, n_missing = read_run(path, dataset)
            qids, values = evaluate_per_query(run_, qrels_of[dataset], measures, args.missing)
            result = {name: float(v.mean()) for name, v in values.items()}
            result.update(n_queries=len(qids), n_missing=n_missing)
        else:
            return _table(args, qrels_of, measures, read_run)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    print(json.dumps(_round(result)))
    return 0


def _warn_overlap(args, overlap: dict[str, int]) -> None:
    """--compare: say so when the runs rank different judged queries (none shared: compare_runs refuses)."""
    shared, a, b = overlap["shared"], overlap["a"], overlap["b"]
    if not shared or (shared == a and shared == b):
        return
    effect = (f"the {shared} shared are compared, the others left out (--missing skip)" if args.missing == "skip"
              else "a query one side lacks counts 0 for it, so the test mixes ranking quality with coverage; "
                   f"--missing skip compares the {shared} shared only")
    print(f"ance eval --compare: the runs share {shared} of {overlap['judged']} judged queries ({args.compare[0]} "
          f"ranks {a}, {args.compare[1]} ranks {b}); {effect}", file=sys.stderr)


def _table(args, qrels_of, measures, read_run) -> int:
    from ance.eval.metrics import evaluate_per_query
    from ance.eval.table import build_table, render

    per_query: dict[str, dict] = {d: {} for d in qrels_of}
    n_missing: dict[str, dict] = {d: {} for d in qrels_of}
    for spec in args.run:
        dataset, name, path = parse_run_spec(spec, list(qrels_of))
        if name in per_query[dataset]:
            raise ConfigError(f"--run {spec}: system {name!r} given twice for {dataset}; name runs NAME=PATH")
        run_, n_missing[dataset][name] = read_run(path, dataset)
        per_query[dataset][name] = evaluate_per_query(run_, qrels_of[dataset], measures, args.missing)
    table = build_table(per_query, measures, baseline=args.baseline, test=args.test, alpha=args.alpha,
                        n_missing=n_missing)
    text = render(table, args.table or "md")
    if args.out:
        from ance.run.fsio import atomic_write_lines, check_output_file

        check_output_file(args.out)
        atomic_write_lines(args.out, [text])
    sys.stdout.write(text)
    return 0
