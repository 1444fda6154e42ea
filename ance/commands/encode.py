"""`ance encode`: corpus embeddings (float16 memmap + ids) for `ance search`, optionally one shard of several."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ance.run.fsio import default_cache_dir

from .retrieve import add_data_arguments, add_encoding_arguments, add_model_arguments, setup

NAME = "encode"
HELP = "Encode a corpus (or one shard of it) into an embeddings dir for `ance search`."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_data_arguments(parser, split=None)
    add_encoding_arguments(parser, query_length=False)
    parser.add_argument("--out", required=True,
                        help="embeddings dir (emb.f16, owner.int64, ids.txt, meta.json); with --shard i/n the "
                             "shard goes to OUT/shard-i-of-n, so n processes can share one --out")
    parser.add_argument("--shard", default=None, metavar="I/N",
                        help="encode only shard I of N (0-based) contiguous document ranges, e.g. 0/4")
    parser.epilog = ("Example, two GPUs: ance encode --shard 0/2 --device cuda:0 ... & "
                     "ance encode --shard 1/2 --device cuda:1 ...; then ance search --emb OUT ...")
    parser.set_defaults(command_name=NAME)


def shard_dir(out: str, shard: tuple[int, int] | None):
    return Path(out) if shard is None else Path(out) / f"shard-{shard[0]}-of-{shard[1]}"


def run(args: argparse.Namespace) -> int:
    # imported when the command runs (torch, faiss, zmq...), so `ance --help` stays fast
    from ance.model.encode import parse_shard, shard_range, write_embeddings
    from ance.model.stream import tokenize_and_encode
    shard = parse_shard(args.shard) if args.shard else None
    t0 = time.perf_counter()
    device, model, data = setup(args, args.split)
    corpus = data.corpus
    lo, hi = shard_range(len(corpus), *shard) if shard else (0, len(corpus))
    t1 = time.perf_counter()
    # the first encode of a corpus tokenizes it too, the model encoding each batch as it is tokenized
    cache, emb, owner = tokenize_and_encode(model, corpus, lo=lo, hi=hi, max_length=args.max_length,
                                            long_doc=args.long_doc, n_windows=args.windows,
                                            cache_root=args.cache_dir or default_cache_dir(),
                                            batch_size=args.batch_size, device=device, precision=args.precision,
                                            progress=not args.quiet, prefix=model.prompt("passage"))
    t2 = time.perf_counter()
    out = shard_dir(args.out, shard)
    meta = {"model": str(args.model), "pooling": model.pooling, "normalize": model.normalize,
            "similarity": model.similarity, "passage_prompt": model.prompt("passage"), "max_length": args.max_length, "long_doc": args.long_doc,
            "n_windows": args.windows if args.long_doc == "maxp" else 1,
            "shard": list(shard) if shard else [0, 1], "lo": lo, "hi": hi, "n_docs": len(corpus),
            "corpus_hash": corpus.source_hash, "data": str(args.data), "precision": args.precision,
            "kernels": args.kernels,
            "encode_s": round(t2 - t1, 3), "tokenized_now": cache.built}  # then encode_s counts tokenizing too
    write_embeddings(out, emb, owner, [corpus.ids[o] for o in owner.tolist()], meta)
    print(f"ance encode: docs [{lo}, {hi}) of {len(corpus)}, {len(emb)} vectors, {device}: tokens "
          f"{'built while encoding' if cache.built else 'cached'} (loading {t1 - t0:.1f}s), encode {t2 - t1:.1f}s "
          f"({(hi - lo) / max(t2 - t1, 1e-9):.0f} docs/s) -> {out}", file=sys.stderr)
    return 0
