"""`ance eval`: score a TREC run against judgements; one JSON object on stdout.

``--compare RUN_A RUN_B``: paired per-query statistics of two runs instead.
"""

from __future__ import annotations

import argparse
import json

from ance.run.errors import ConfigError, DataError

NAME = "eval"
HELP = ("Evaluate a TREC run against qrels, or compare two (--compare A B): prints one JSON object "
        "(ndcg@10, mrr@10, recall@100, recall@1000).")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", help="TREC run file (qid Q0 did rank score tag), e.g. from "
                                     "`ance retrieve` or `ance search`")
    which.add_argument("--compare", nargs=2, metavar=("RUN_A", "RUN_B"),
                       help="two TREC runs over the same queries: per measure, the mean of A - B over the "
                            "queries, a paired t-test and Wilcoxon signed-rank test (scipy), a bootstrap "
                            "confidence interval of the mean difference, and wins/ties/losses of A. Either side "
                            "may be a comma-separated list of runs (a recipe's seeds): each query's value is "
                            "then averaged over them before pairing")
    parser.add_argument("--qrels", required=True,
                        help="judgements: BEIR TSV (query-id corpus-id score, header optional) or TREC qrels "
                             "(qid 0 did rel), or a dataset ance reads (a folder, Tevatron or pairs file, "
                             "Hugging Face dataset): its --split's judgements")
    parser.add_argument("--split", default=None, help="--qrels DATASET: the split (default: its training split)")
    parser.add_argument("--measures", nargs="+", default=None, metavar="NAME@K",
                        help="measures to compute instead of the default four (ndcg, mrr, recall, map, "
                             "precision at a cutoff, e.g. ndcg@10 recall@100)")
    parser.add_argument("--bootstrap", type=int, default=10000, metavar="N",
                        help="--compare: bootstrap resamples of the queries (default 10000)")
    parser.add_argument("--seed", type=int, default=0, help="--compare: the bootstrap's seed (default 0)")
    parser.epilog = ("Means are over the qrels' queries with a relevant document; a query missing from the "
                     "run counts 0. Nothing but the JSON object goes to stdout. With --compare the object is "
                     "{measure: {n, a, b, diff, ci (95%% bootstrap of diff), t, p_t, wilcoxon, p_wilcoxon, "
                     "wins, ties, losses}}.")


def _round(value):
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, list):
        return [_round(v) for v in value]
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    return value


def run(args: argparse.Namespace) -> int:
    # imported when the command runs (ir-measures, scipy), so `ance --help` stays fast
    from ance.eval.compare import compare_runs
    from ance.eval.metrics import MEASURES, evaluate_run
    from ance.eval.trec import read_qrels, read_trec_run

    from ance.data.inspect import judgements

    qrels = judgements(args.qrels, args.split)
    qrels = read_qrels(args.qrels) if qrels is None else qrels
    measures = args.measures or MEASURES

    def read_run(path: str):
        run_ = read_trec_run(path)
        if run_ and not set(run_) & set(qrels):
            raise DataError(path, None, f"none of its {len(run_)} query ids (e.g. {next(iter(run_))!r}) is in "
                                        f"{args.qrels} (e.g. {next(iter(qrels))!r}); were they made for the same "
                                        "dataset and split?")
        return run_

    try:
        if args.compare:
            if args.bootstrap < 1:
                raise ValueError(f"--bootstrap must be >= 1, got {args.bootstrap}")
            run_a, run_b = ([read_run(p) for p in side.split(",") if p] for side in args.compare)
            result = compare_runs(run_a, run_b, qrels, measures, n_boot=args.bootstrap, seed=args.seed)
        else:
            result = evaluate_run(read_run(args.run), qrels, measures)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    print(json.dumps(_round(result)))
    return 0
