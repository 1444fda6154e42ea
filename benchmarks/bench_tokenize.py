"""Corpus tokenization, cold: the fast tokenizer's batch call across its own threads (what
ance.model.tokcache does now, long texts cut at a space first and, for a BERT normaliser, plain ASCII texts
lowercased by Python and tokenized without it: ance.model.tokenize), against the same with every text through
the normaliser (`normalised`), every text tokenized whole and normalised (`whole`), the tokenizer's own __call__ (`call`), and the corpus cut into
shards tokenized by forked processes, each single-threaded, their ids sent back through pipes as raw
int32 (no pickle). Same ids checked.

    python benchmarks/bench_tokenize.py --tokenizer MODEL_DIR --data ../shared/data/scifact --procs 4,16 \
        --out tokenize.json

Why: on one H200 host (16 cores) the batch call tokenized SciFact's 5,183 abstracts in 0.47 s, about
5x one core's time (docs/benchmarks.md, issue 26's cold-encode line); whether processes, free of the
shared heap and the thread pool's scheduling, do better is what this measures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np


def load_texts(data: str, limit: int | None = None) -> list[str]:
    from ance.data.dataset import load_dataset

    corpus = load_dataset(data, splits=("train",)).corpus
    return [corpus.passage(i) for i in range(min(len(corpus), limit or len(corpus)))]


def by_threads(backend, texts: list[str], batch: int, tokenizer=None) -> tuple[np.ndarray, np.ndarray]:
    """``backend`` (ance.model.tokenize.fast_backend's), or None: ``tokenizer``'s own __call__."""
    from ance.model.tokenize import token_ids

    lengths, flat = [], []
    for lo in range(0, len(texts), batch):
        ids = token_ids(tokenizer, texts[lo:lo + batch], backend.max_tokens if backend else MAX_TOKENS, backend)
        lengths.append(np.fromiter(map(len, ids), dtype=np.int64, count=len(ids)))
        flat.append(np.fromiter((t for row in ids for t in row), dtype=np.int32, count=int(lengths[-1].sum())))
    return np.concatenate(lengths), np.concatenate(flat)


def _read_exact(fd: int, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        b = os.read(fd, min(n - got, 1 << 22))
        if not b:
            raise RuntimeError("a tokenizing process ended early")
        parts.append(b)
        got += len(b)
    return b"".join(parts)


def by_processes(backend, texts: list[str], procs: int) -> tuple[np.ndarray, np.ndarray]:
    """Shards of ``texts`` tokenized by ``procs`` forked children, one thread each."""
    bounds = np.linspace(0, len(texts), procs + 1).astype(int)
    pipes = []
    for p in range(procs):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: tokenize its shard, write lengths then ids, exit without cleanup
            os.close(r)
            try:
                os.environ["TOKENIZERS_PARALLELISM"] = "false"
                lengths, flat = by_threads(backend, texts[bounds[p]:bounds[p + 1]], 1 << 30)
                with os.fdopen(w, "wb") as f:
                    f.write(np.array([len(lengths), len(flat)], np.int64).tobytes())
                    f.write(lengths.tobytes())
                    f.write(flat.tobytes())
            finally:
                os._exit(0)
        os.close(w)
        pipes.append((pid, r))
    lengths, flat = [], []
    for pid, r in pipes:
        n, m = np.frombuffer(_read_exact(r, 16), np.int64)
        lengths.append(np.frombuffer(_read_exact(r, 8 * int(n)), np.int64))
        flat.append(np.frombuffer(_read_exact(r, 4 * int(m)), np.int32))
        os.close(r)
        os.waitpid(pid, 0)
    return np.concatenate(lengths), np.concatenate(flat)


MAX_TOKENS = 254


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--max-tokens", type=int, default=254)
    ap.add_argument("--batch", type=int, default=512, help="texts per batch call (the thread path)")
    ap.add_argument("--procs", default="4,16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--limit", type=int, default=None, help="the first N passages only (tests)")
    ap.add_argument("--join", type=int, default=1, help="K consecutive passages joined into one text "
                                                          "(long documents, as MS MARCO's or Robust04's)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from transformers import AutoTokenizer

    import dataclasses

    from ance.model.tokenize import fast_backend

    global MAX_TOKENS
    MAX_TOKENS = args.max_tokens
    texts = load_texts(args.data, args.limit)
    texts = [" ".join(texts[i:i + args.join]) for i in range(0, len(texts), args.join)]
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    backend = fast_backend(tokenizer, args.max_tokens)
    whole = dataclasses.replace(backend, cut=False, plain=None)
    normalised = dataclasses.replace(backend, plain=None)  # every text through the normaliser (before 2026-12-06)
    ref = by_threads(whole, texts, args.batch)
    modes = {"call": lambda: by_threads(None, texts, args.batch, tokenizer),
             "whole": lambda: by_threads(whole, texts, args.batch),
             "normalised": lambda: by_threads(normalised, texts, args.batch),
             "threads": lambda: by_threads(backend, texts, args.batch)}
    for p in [int(x) for x in args.procs.split(",") if x]:
        modes[f"procs{p}"] = (lambda p=p: by_processes(backend, texts, p))
    times: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(args.repeats):  # interleaved
        for name, fn in modes.items():
            t0 = time.perf_counter()
            got = fn()
            times[name].append(time.perf_counter() - t0)
            if not (np.array_equal(got[0], ref[0]) and np.array_equal(got[1], ref[1])):
                raise SystemExit(f"{name}: ids differ from the whole texts' batch call")
    out = {"docs": len(texts), "join": args.join, "chars": sum(map(len, texts)), "cores": os.cpu_count(), "max_tokens": args.max_tokens,
           "modes": {m: {"s": [round(t, 4) for t in ts], "best_s": round(min(ts), 4),
                         "docs_per_s": round(len(texts) / min(ts))} for m, ts in times.items()}}
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
