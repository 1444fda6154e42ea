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
    g.add_argument("--model", default=None,
                   help="a saved model dir (ance checkpoint, sentence-transformers or HF), 'all-MiniLM-L6-v2', "
                        "'tiny-bert', or a hub id when online; RUN_DIR/checkpoints/best or final names a run's "
                        "alias (required unless --run-dir: then the run's final checkpoint)")
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
    g.add_argument("--data", default=None, help="a BEIR folder (corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv), "
                                                "an MS MARCO folder (collection.tsv, queries.SPLIT.tsv, "
                                                "qrels.SPLIT.tsv), a Tevatron JSONL(.gz) file, sentence-"
                                                "transformers pairs/triplets (JSONL, CSV, TSV, Parquet), or a "
                                                "Hugging Face dataset (save_to_disk folder, .arrow, hf:NAME); "
                                                "required unless --run-dir")
    g.add_argument("--run-dir", default=None, metavar="RUN_DIR",
                   help="a training run: its data (path, subset, seed, splits), lengths and final checkpoint are "
                        "the defaults, so the corpus is exactly the one the run trained and evaluated on")
    g.add_argument("--train-split", default="train",
                   help="with --max-docs: the training split whose positives the subset also keeps, as a "
                        "training run's does (its train + eval positives); 'none' for --split's alone")
    if split == "required":
        g.add_argument("--split", default=None,
                       help="the split whose queries are searched (e.g. dev, test); required unless --run-dir "
                            "(then the run's eval split)")
        parser.set_defaults(split_required=True)
    elif split is None:
        g.add_argument("--split", default=None,
                       help="with --max-docs: the split whose positives the document subset keeps; give the "
                            "same --split, --max-docs and --max-queries to `ance search`")
    else:
        g.add_argument("--split", default=split, help="the split whose queries are used")
    g.add_argument("--format", choices=("auto", "beir", "msmarco", "tevatron", "pairs", "hf"), default="auto",
                   help="data layout (auto: from the path and the first record)")
    g.add_argument("--corpus", default=None, help="Tevatron/pairs/HF data: the corpus to index (as data.corpus; "
                                                  "default: the union of the file's passages)")
    g.add_argument("--columns", type=_mapping, default=None,
                   help="pairs: the column mapping, e.g. '{query: anchor, positive: pos, negatives: [neg]}'")
    g.add_argument("--max-docs", type=int, default=None,
                   help="subset: keep the positives of the split's kept queries plus a seeded sample of other "
                        "documents, up to this many (for quick runs and tests)")
    g.add_argument("--max-queries", type=int, default=None, help="subset: the first N judged queries of the split")
    g.add_argument("--subset-seed", type=int, default=0, help="seed of the --max-docs sample")
    return g


def _mapping(text: str) -> dict:
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a mapping like '{{query: anchor, positive: pos}}', got {text!r}")
    return value


def add_encoding_arguments(parser: argparse.ArgumentParser, query_length: bool = True) -> None:
    g = parser.add_argument_group("encoding")
    g.add_argument("--max-length", type=int, default=None,
                   help="passage length in tokens, special tokens included (the length of each MaxP window); "
                        "default 256, or the run's model.passage_max_length with --run-dir")
    if query_length:
        g.add_argument("--query-max-length", type=int, default=None,
                       help="query length in tokens (default: --max-length, or the run's model.query_max_length "
                            "with --run-dir)")
    g.add_argument("--long-doc", choices=("firstp", "maxp"), default="firstp",
                   help="firstp: a document is its first --max-length tokens; maxp: up to --windows windows, "
                        "a document scores its best window")
    g.add_argument("--windows", type=int, default=4, help="MaxP windows per document")
    g.add_argument("--batch-size", type=int, default=128, help="sequences per forward pass")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:<i>, or auto (cuda when available)")
    g.add_argument("--precision", choices=("auto", "bf16", "fp16", "fp32"), default="auto",
                   help="autocast dtype; auto = bf16 on GPU, fp32 on CPU")
    add_kernel_arguments(g)
    g.add_argument("--cache-dir", default=None,
                   help="where tokenized corpora are cached (default: $ANCE_CACHE_DIR, else ~/.cache/ance)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")


def add_kernel_arguments(g) -> None:
    """The encoder's forward, as the inferencer's ``inferencer.kernels`` / ``inferencer.compile`` choose it."""
    from ance.run.sections import _CHOICES  # torch-free: `ance --help` stays fast

    g.add_argument("--kernels", choices=_CHOICES["inferencer.kernels"], default="hf",
                   help="the towers' forward: hf (transformers'), lean, lean-tanh (BERT-family towers: fewer, "
                        "larger kernels); as inferencer.kernels (docs/config.md)")
    g.add_argument("--compile", choices=_CHOICES["inferencer.compile"], default="off",
                   help="torch.compile the towers on a GPU (the first batches compile); as inferencer.compile")


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
    splits = apply_run_dir(args)
    split = args.split
    check_positive(args, "k", "max_length", "query_max_length", "windows", "batch_size", "max_docs", "max_queries")
    device = resolve_device(args.device, "--device")
    data = load_data(args.data, split, format=args.format, max_docs=args.max_docs, max_queries=args.max_queries,
                     seed=args.subset_seed, train_split=None if args.train_split == "none" else args.train_split,
                     splits=splits, corpus=args.corpus, columns=args.columns)
    model = load_encoder(args.model, device=device, pooling=args.pooling, normalize=args.normalize, prompts=args,
                         precision=args.precision, kernels=getattr(args, "kernels", "hf"),
                         compile=getattr(args, "compile", "off"))
    return device, model, data


def apply_run_dir(args: argparse.Namespace) -> list[str] | None:
    """Fill the flags left out from ``--run-dir``'s config (data, subset, splits, lengths, model) and check
    that --data, --split and --model are there; returns the run's splits (None without --run-dir)."""
    from ance.run.rundir import RunDir

    splits = None
    if getattr(args, "run_dir", None):
        from ance.run.config import load_run_config

        cfg = load_run_config(args.run_dir)
        d, m = cfg.data, cfg.model
        splits = [d.train_split] + ([d.eval_split] if d.eval_split else [])
        for name, value in (("data", d.path), ("format", d.format), ("max_docs", d.max_docs),
                            ("max_queries", d.max_queries), ("subset_seed", d.subset_seed),
                            ("train_split", d.train_split)):
            if getattr(args, name, None) in (None, "auto", 0, "train") and hasattr(args, name):
                setattr(args, name, value)
        if hasattr(args, "split") and args.split is None:
            args.split = d.eval_split or d.train_split
        if args.split is not None and args.split not in splits:
            raise ConfigError(f"--split {args.split}: not a split of the run {args.run_dir} ({', '.join(splits)}); "
                              "its corpus keeps the positives of those only")
        if getattr(args, "max_length", None) is None:
            args.max_length = m.passage_max_length
        if hasattr(args, "query_max_length") and args.query_max_length is None:
            args.query_max_length = m.query_max_length
        if args.model is None:
            args.model = str(RunDir(args.run_dir).checkpoints / "final")
    if getattr(args, "max_length", 0) is None:
        args.max_length = 256
    if args.data is None:
        raise ConfigError("give --data FOLDER (or --run-dir RUN_DIR to use a training run's data)")
    if getattr(args, "split_required", False) and args.split is None:
        raise ConfigError("give --split SPLIT (e.g. dev, test), or --run-dir RUN_DIR for the run's eval split")
    if args.model is None:
        raise ConfigError("give --model MODEL (or --run-dir RUN_DIR for the run's final checkpoint)")
    return splits


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
