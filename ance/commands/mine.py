"""`ance mine`: one-shot static hard negatives from a model's own ranking (positives excluded)."""

from __future__ import annotations

import argparse

from .retrieve import add_data_arguments, add_encoding_arguments, add_model_arguments, add_search_arguments

NAME = "mine"
HELP = "Mine static hard negatives: retrieve with a model, drop the positives, write a negatives file."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_data_arguments(parser, split="train")
    data = next(g for g in parser._action_groups if g.title == "data")  # the shared group above
    data.add_argument(
        "--eval-split", default=None,
        help="also load this split, as a training run with data.eval_split does: with --max-docs the subset "
             "then keeps its positives too, so the file's documents are those of the run's corpus (give the "
             "run's data.max_docs, data.max_queries, data.subset_seed and data.eval_split)")
    add_encoding_arguments(parser)
    add_search_arguments(parser, k=200, k_flag="--depth")
    g = parser.add_argument_group("negatives")
    g.add_argument("--rank-window", type=int, nargs=2, default=[0, 30], metavar=("LO", "HI"),
                   help="original ranks [LO, HI) (0-based) the negatives are drawn from; positives inside "
                        "are dropped, not replaced")
    g.add_argument("--n", type=int, default=1, help="negatives kept per query")
    g.add_argument("--sampling", choices=("uniform", "top"), default="uniform",
                   help="uniform: a random draw from the window; top: the best ranked")
    g.add_argument("--seed", type=int, default=0, help="seed of the uniform draw")
    parser.add_argument("--out", required=True,
                        help="negatives file (`# ance-negatives v1 {...}` header, then qid<TAB>did,did,...); "
                             "use it as negatives.static_file")
    parser.set_defaults(command_name=NAME)


def run(args: argparse.Namespace) -> int:
    import sys
    import time

    import numpy as np

    from ance.negatives import select_negatives, write_negatives
    from ance.retrieve import retrieve

    from .retrieve import check_positive, setup

    from ance.errors import ConfigError
    from ance.fsio import check_output_file

    check_output_file(args.out)

    check_positive(args, "n")
    lo, hi = args.rank_window
    if not 0 <= lo < hi:
        raise ConfigError(f"--rank-window {lo} {hi}: need 0 <= LO < HI")
    t0 = time.perf_counter()
    if args.eval_split and args.eval_split != args.split:
        device, model, data = _setup_with_eval(args)
    else:
        device, model, data = setup(args, args.split)
    qids, ids, _ = retrieve(model, data, args.split, k=args.k, max_length=args.max_length,
                            query_max_length=args.query_max_length, device=device, backend=args.backend,
                            cache_root=args.cache_dir, batch_size=args.batch_size, long_doc=args.long_doc,
                            n_windows=args.windows, precision=args.precision, progress=not args.quiet)
    split = data.split(args.split)
    try:
        neg = select_negatives(ids, split.positives, rank_window=tuple(args.rank_window), keep=args.n,
                               sampling=args.sampling, rng=np.random.default_rng(args.seed))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    header = {"version": 0, "source": "ance mine", "model": str(args.model), "split": args.split,
              "depth": args.k, "rank_window": list(args.rank_window), "keep": args.n, "sampling": args.sampling,
              "seed": args.seed, "data_fingerprint": data.fingerprint}
    write_negatives(args.out, qids, neg, data.corpus.ids, header)
    found = int((neg >= 0).sum())
    print(f"ance mine: {len(qids)} {args.split} queries, {found} negatives ({found / max(len(qids), 1):.2f} a "
          f"query) from ranks {args.rank_window[0]}-{args.rank_window[1]} of {args.k}, "
          f"{time.perf_counter() - t0:.1f}s -> {args.out}", file=sys.stderr)
    return 0


def _setup_with_eval(args: argparse.Namespace):
    """``setup`` loading the eval split too, so the subset (and fingerprint) is the training run's."""
    import logging

    from ance.data import load_dataset
    from ance.encode import resolve_device
    from ance.logutil import setup_logging
    from ance.retrieve import load_encoder

    from .retrieve import check_positive

    if not logging.getLogger().handlers:
        setup_logging("WARNING" if args.quiet else "INFO", role="ance-mine")
    check_positive(args, "k", "max_length", "query_max_length", "windows", "batch_size", "max_docs", "max_queries")
    data = load_dataset(args.data, splits=(args.split, args.eval_split), format=args.format,
                        max_docs=args.max_docs, max_queries=args.max_queries, seed=args.subset_seed)
    model = load_encoder(args.model, device=resolve_device(args.device), pooling=args.pooling,
                         normalize=args.normalize)
    return resolve_device(args.device), model, data
