"""`ance eval`: score a TREC run against judgements; one JSON object on stdout."""

from __future__ import annotations

import argparse

NAME = "eval"
HELP = "Evaluate a TREC run against qrels: prints one JSON object (ndcg@10, mrr@10, recall@100, recall@1000)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="TREC run file (qid Q0 did rank score tag), e.g. from "
                                                     "`ance retrieve` or `ance search`")
    parser.add_argument("--qrels", required=True,
                        help="judgements: BEIR TSV (query-id corpus-id score, header optional) or TREC qrels "
                             "(qid 0 did rel)")
    parser.add_argument("--measures", nargs="+", default=None, metavar="NAME@K",
                        help="measures to compute instead of the default four (ndcg, mrr, recall, map, "
                             "precision at a cutoff, e.g. ndcg@10 recall@100)")
    parser.epilog = ("Means are over the qrels' queries with a relevant document; a query missing from the "
                     "run counts 0. Nothing but the JSON object goes to stdout.")


def run(args: argparse.Namespace) -> int:
    import json

    from ance.errors import ConfigError, DataError
    from ance.evaluate import MEASURES, evaluate_run, read_qrels, read_trec_run

    run_ = read_trec_run(args.run)
    qrels = read_qrels(args.qrels)
    if run_ and not set(run_) & set(qrels):
        raise DataError(args.run, None, f"none of its {len(run_)} query ids (e.g. {next(iter(run_))!r}) is in "
                                        f"{args.qrels} (e.g. {next(iter(qrels))!r}); were they made for the same "
                                        "dataset and split?")
    try:
        metrics = evaluate_run(run_, qrels, args.measures or MEASURES)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    print(json.dumps({k: round(v, 6) for k, v in metrics.items()}))
    return 0
