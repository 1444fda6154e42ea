"""`ance retrieve`: encode a corpus and a split's queries with a model, search exactly, write a TREC run.

The flag groups here (model, data, encoding, search) are shared by `ance
encode`, `ance search` and `ance mine`, so the same flag means the same thing
everywhere.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from ance.run.errors import ConfigError
from ance.run.fsio import check_output_file
from ance.run.logutil import setup_logging

NAME = "retrieve"
HELP = "Encode the corpus and one split's queries, search exactly, write a TREC run."


# --------------------------------------------------------------------------- shared flag groups


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model")
    g.add_argument("--model", required=True,
                   help="a saved model dir (ance checkpoint, sentence-transformers or HF), 'all-MiniLM-L6-v2', "
                        "'tiny-bert', or a hub id when online")
    g.add_argument("--pooling", choices=("cls", "mean", "last"), default=None,
                   help="override the pooling (default: the model's ance.json or sentence-transformers files, "
                        "else mean)")
    g.add_argument("--no-normalize", dest="normalize", action="store_const", const=False, default=None,
                   help="do not L2-normalise the vectors (dot product instead of cosine)")
    g.add_argument("--query-prefix", default=None,
                   help="text put before every query (default: the model's sentence-transformers prompt 'query')")
    g.add_argument("--passage-prefix", default=None,
                   help="text put before every passage (default: the model's prompt 'passage' or 'document')")
    g.add_argument("--query-template", default=None,
                   help="a query prompt with the task, e.g. 'Instruct: {task}\\nQuery: {text}' (with --task)")
    g.add_argument("--task", default=None, help="the {task} of --query-template")


def add_data_arguments(parser: argparse.ArgumentParser, split: str | None = "required"):
    """``split``: "required", a default split name, or None (optional: only used by --max-docs).
    Returns the "data" group, for a command's own data flags."""
    g = parser.add_argument_group("data")
    g.add_argument("--data", required=True, help="a BEIR folder (corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv) "
                                                 "or an MS MARCO folder (collection.tsv, queries.SPLIT.tsv, "
                                                 "qrels.SPLIT.tsv)")
    if split == "required":
        g.add_argument("--split", required=True, help="the split whose queries are searched (e.g. dev, test)")
    elif split is None:
        g.add_argument("--split", default=None,
                       help="with --max-docs: the split whose positives the document subset keeps; give the "
                            "same --split, --max-docs and --max-queries to `ance search`")
    else:
        g.add_argument("--split", default=split, help="the split whose queries are used")
    g.add_argument("--format", choices=("auto", "beir", "msmarco"), default="auto", help="data folder layout")
    g.add_argument("--max-docs", type=int, default=None,
                   help="subset: keep the positives of the split's kept queries plus a seeded sample of other "
                        "documents, up to this many (for quick runs and tests)")
    g.add_argument("--max-queries", type=int, default=None, help="subset: the first N judged queries of the split")
    g.add_argument("--subset-seed", type=int, default=0, help="seed of the --max-docs sample")
    return g


def add_encoding_arguments(parser: argparse.ArgumentParser, query_length: bool = True) -> None:
    g = parser.add_argument_group("encoding")
    g.add_argument("--max-length", type=int, default=256,
                   help="passage length in tokens, special tokens included (the length of each MaxP window)")
    if query_length:
        g.add_argument("--query-max-length", type=int, default=None,
                       help="query length in tokens (default: --max-length)")
    g.add_argument("--long-doc", choices=("firstp", "maxp"), default="firstp",
                   help="firstp: a document is its first --max-length tokens; maxp: up to --windows windows, "
                        "a document scores its best window")
    g.add_argument("--windows", type=int, default=4, help="MaxP windows per document")
    g.add_argument("--batch-size", type=int, default=128, help="sequences per forward pass")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:<i>, or auto (cuda when available)")
    g.add_argument("--precision", choices=("auto", "bf16", "fp16", "fp32"), default="auto",
                   help="autocast dtype; auto = bf16 on GPU, fp32 on CPU")
    g.add_argument("--cache-dir", default=None,
                   help="where tokenized corpora are cached (default: $ANCE_CACHE_DIR, else ~/.cache/ance)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")


def add_search_arguments(parser: argparse.ArgumentParser, k: int = 1000, k_flag: str = "--k") -> None:
    g = parser.add_argument_group("search")
    g.add_argument(k_flag, dest="k", type=int, default=k, help="documents retrieved per query")
    g.add_argument("--backend", choices=("auto", "faiss", "torch"), default="auto",
                   help="exact inner-product search: faiss (IndexFlatIP) or torch (blocked matmul); "
                        "auto = faiss when installed")


def check_positive(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")


def setup(args: argparse.Namespace, split: str | None):
    """(device, model, dataset) as every command loads them, after checking the numeric flags."""
    # imported when the command runs (torch, faiss, zmq...), so `ance --help` stays fast
    from ance.run.device import resolve_device
    from ance.search.retrieve import load_data, load_encoder

    if not logging.getLogger().handlers:  # leave a host's logging (pytest, a notebook) alone
        setup_logging("WARNING" if args.quiet else "INFO", role=f"ance-{args.command_name}")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    check_positive(args, "k", "max_length", "query_max_length", "windows", "batch_size", "max_docs", "max_queries")
    device = resolve_device(args.device, "--device")
    data = load_data(args.data, split, format=args.format, max_docs=args.max_docs, max_queries=args.max_queries,
                     seed=args.subset_seed)
    model = load_encoder(args.model, device=device, pooling=args.pooling, normalize=args.normalize, prompts=args)
    return device, model, data


# --------------------------------------------------------------------------- the command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_data_arguments(parser)
    add_encoding_arguments(parser)
    add_search_arguments(parser)
    parser.add_argument("--out", required=True, help="the TREC run file to write (qid Q0 did rank score tag)")
    parser.add_argument("--tag", default="ance", help="run tag, the last TREC column")
    parser.set_defaults(command_name=NAME)


def run(args: argparse.Namespace) -> int:
    # imported when the command runs (torch, faiss, zmq...), so `ance --help` stays fast
    from ance.eval.trec import write_trec_run
    from ance.search.retrieve import retrieve

    check_output_file(args.out)  # before minutes of encoding
    t0 = time.perf_counter()
    device, model, data = setup(args, args.split)
    t1 = time.perf_counter()
    qids, ids, scores = retrieve(model, data, args.split, k=args.k, max_length=args.max_length,
                                 query_max_length=args.query_max_length, device=device, backend=args.backend,
                                 cache_root=args.cache_dir, batch_size=args.batch_size, long_doc=args.long_doc,
                                 n_windows=args.windows, precision=args.precision, progress=not args.quiet)
    t2 = time.perf_counter()
    write_trec_run(args.out, qids, ids, scores, data.corpus.ids, tag=args.tag)
    n_docs = len(data.corpus)
    print(f"ance retrieve: {n_docs} docs, {len(qids)} {args.split} queries, k={args.k}, {device}: "
          f"load {t1 - t0:.1f}s, encode+search {t2 - t1:.1f}s ({n_docs / max(t2 - t1, 1e-9):.0f} docs/s) "
          f"-> {args.out}", file=sys.stderr)
    return 0
