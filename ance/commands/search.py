"""`ance search`: encode a split's queries, search embeddings dirs from `ance encode`, write a TREC run."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from ance.run.fsio import check_output_file

from .retrieve import add_data_arguments, add_kernel_arguments, add_model_arguments, add_search_arguments, setup

NAME = "search"
HELP = "Search the embeddings dirs of `ance encode` (shards merged) with a split's queries; write a TREC run."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_data_arguments(parser)
    add_search_arguments(parser)
    parser.add_argument("--emb", nargs="+", required=True, metavar="EMB_DIR",
                        help="embeddings dirs of `ance encode`, or a dir holding its shard-i-of-n dirs; the "
                             "shards are searched one by one and merged")
    g = parser.add_argument_group("queries")
    g.add_argument("--query-max-length", type=int, default=None,
                   help="query length in tokens (default: the max_length the embeddings were made with)")
    g.add_argument("--batch-size", type=int, default=128, help="queries per forward pass")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:<i>, or auto (cuda when available)")
    g.add_argument("--precision", choices=("auto", "bf16", "fp16", "fp32"), default="auto",
                   help="autocast dtype; auto = bf16 on GPU, fp32 on CPU")
    add_kernel_arguments(g)
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--out", required=True, help="the TREC run file to write")
    parser.add_argument("--tag", default="ance", help="run tag, the last TREC column")
    parser.epilog = "Give the same --model, --data, --split, --max-docs and --max-queries as to `ance encode`."
    parser.set_defaults(command_name=NAME, max_length=None, windows=None)


def run(args: argparse.Namespace) -> int:
    # imported when the command runs (torch, faiss, zmq...), so `ance --help` stays fast
    from ance.model.encode import encode_texts, read_embeddings
    from ance.eval.trec import write_trec_run
    from ance.search.retrieve import expand_emb_dirs, search_shards

    check_output_file(args.out)

    t0 = time.perf_counter()
    device, model, data = setup(args, args.split)
    dirs = expand_emb_dirs(args.emb)
    first_meta = read_embeddings(dirs[0])[3]
    if first_meta.get("model") not in (None, str(args.model)):
        logging.getLogger("ance.search").warning(
            "%s was encoded with --model %s, the queries use %s: the vectors may not be comparable",
            dirs[0], first_meta["model"], args.model)
    split = data.split(args.split)
    q = encode_texts(model, split.texts, args.query_max_length or int(first_meta.get("max_length", 256)),
                     kind="query", batch_size=args.batch_size, device=device, precision=args.precision,
                     progress=not args.quiet)
    t1 = time.perf_counter()
    scores, ids, _ = search_shards(dirs, q, args.k, backend=args.backend, device=device, corpus=data.corpus)
    t2 = time.perf_counter()
    write_trec_run(args.out, list(split.ids), ids, scores, data.corpus.ids, tag=args.tag)
    print(f"ance search: {len(split)} {args.split} queries over {len(dirs)} shard(s), k={args.k}: load+encode "
          f"{t1 - t0:.1f}s, search {t2 - t1:.1f}s -> {args.out}", file=sys.stderr)
    return 0
