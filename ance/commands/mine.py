"""`ance mine`: one-shot static hard negatives from a model's own ranking (positives excluded)."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from ance.run.config import parse_rank_window
from ance.run.errors import ConfigError
from ance.run.fsio import check_output_file
from ance.run.logutil import setup_logging

from .retrieve import (add_data_arguments, add_encoding_arguments, add_model_arguments, add_search_arguments,
                       check_positive, setup)

NAME = "mine"
HELP = "Mine static hard negatives: retrieve with a model, drop the positives, write a negatives file."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    data = add_data_arguments(parser, split="train")
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
    g.add_argument("--sampling", choices=("uniform", "top", "rank", "score"), default="uniform",
                   help="uniform: a random draw from the window; top: the best ranked; rank / score: a draw "
                        "weighted by exp(-rank / --rank-decay) or exp(score / --score-temperature)")
    g.add_argument("--rank-decay", type=float, default=10.0, help="--sampling rank: the weights' decay in ranks")
    g.add_argument("--score-temperature", type=float, default=0.05,
                   help="--sampling score: the weights' temperature")
    g.add_argument("--denoise-margin", type=float, default=None,
                   help="drop candidates the model scores above its score of the query's positive minus this "
                        "margin (likely unlabelled positives)")
    g.add_argument("--denoise-ratio", type=float, default=None,
                   help="drop candidates the model scores above this times its score of the query's positive "
                        "(NV-Retriever's TopK-PercPos, e.g. 0.95; > 0); queries whose positive is not in the top "
                        "--depth keep all; with --denoise-margin, either rule drops")
    g.add_argument("--seed", type=int, default=0, help="seed of the uniform draw")
    parser.add_argument("--out", required=True,
                        help="negatives file (`# ance-negatives v1 {...}` header, then qid<TAB>did,did,...); "
                             "use it as negatives.static_file")
    parser.set_defaults(command_name=NAME)


def run(args: argparse.Namespace) -> int:
    # imported when the command runs (torch, faiss, zmq...), so `ance --help` stays fast
    import numpy as np

    from ance.negatives.files import write_negatives
    from ance.negatives.select import select_negatives
    from ance.search.retrieve import retrieve

    check_output_file(args.out)

    check_positive(args, "n")
    try:
        rank_window = parse_rank_window(args.rank_window)
    except ValueError as exc:
        raise ConfigError(f"--rank-window {args.rank_window[0]} {args.rank_window[1]}: {exc}") from None
    if args.denoise_ratio is not None and not 0 < args.denoise_ratio < float("inf"):  # before the corpus is encoded
        raise ConfigError(f"--denoise-ratio must be a finite number > 0 (e.g. 0.95), got {args.denoise_ratio}")
    t0 = time.perf_counter()
    if args.eval_split and args.eval_split != args.split and not args.run_dir:
        device, model, data = _setup_with_eval(args)
    else:
        device, model, data = setup(args, args.split)
    qids, ids, scores = retrieve(model, data, args.split, k=args.k, max_length=args.max_length,
                            query_max_length=args.query_max_length, device=device, backend=args.backend,
                            cache_root=args.cache_dir, batch_size=args.batch_size, long_doc=args.long_doc,
                            n_windows=args.windows, precision=args.precision, progress=not args.quiet)
    split = data.split(args.split)
    try:
        neg = select_negatives(ids, split.positives, rank_window=rank_window, keep=args.n,
                               sampling=args.sampling, rng=np.random.default_rng(args.seed), scores=scores,
                               rank_decay=args.rank_decay, score_temperature=args.score_temperature,
                               denoise_margin=args.denoise_margin, denoise_ratio=args.denoise_ratio)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    header = {"version": 0, "source": "ance mine", "model": str(args.model), "split": args.split,
              "depth": args.k, "rank_window": list(rank_window), "keep": args.n, "sampling": args.sampling,
              "denoise_margin": args.denoise_margin, "denoise_ratio": args.denoise_ratio, "seed": args.seed,
              "data_fingerprint": data.fingerprint}
    write_negatives(args.out, qids, neg, data.corpus.ids, header)
    found = int((neg >= 0).sum())
    print(f"ance mine: {len(qids)} {args.split} queries, {found} negatives ({found / max(len(qids), 1):.2f} a "
          f"query) from ranks {rank_window[0]}-{rank_window[1]} of {args.k}, "
          f"{time.perf_counter() - t0:.1f}s -> {args.out}", file=sys.stderr)
    return 0


def _setup_with_eval(args: argparse.Namespace):
    """``setup`` loading the eval split too, so the subset (and fingerprint) is the training run's."""
    # imported when the command runs (torch, faiss, zmq...), so `ance --help` stays fast
    from ance.data.dataset import load_dataset
    from ance.run.device import resolve_device
    from ance.search.retrieve import load_encoder

    from .retrieve import apply_run_dir

    if not logging.getLogger().handlers:
        setup_logging("WARNING" if args.quiet else "INFO", role="ance-mine")
    apply_run_dir(args)
    check_positive(args, "k", "max_length", "query_max_length", "windows", "batch_size", "max_docs", "max_queries")
    data = load_dataset(args.data, splits=(args.split, args.eval_split), format=args.format,
                        max_docs=args.max_docs, max_queries=args.max_queries, seed=args.subset_seed,
                        corpus=args.corpus, columns=args.columns)
    device = resolve_device(args.device, "--device")
    model = load_encoder(args.model, device=device, pooling=args.pooling, normalize=args.normalize, prompts=args,
                         precision=args.precision)
    return device, model, data
