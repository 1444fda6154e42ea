"""Why a second inferencer slowed the first: the host-side work per encode batch, before and after.

Before: each batch was read from the token cache one text at a time (``take``) and padded in a Python
loop (``build_inputs``), on the encoding thread, in a process whose torch used every core. After:
one vectorised read and pad (``gather_padded`` + ``build_padded_inputs``) on a prefetch thread, in
a process with its share of the cores. Measured here, in one call:

1. host only: batches per second of each way, with torch on all cores and on half of them, alone and
   with a second process doing the same at once (two workers on one host);
2. on the GPU: corpus encoding docs/s of the old loop and of ``encode_token_lists``, for a
   MiniLM-shaped and a BERT-base-shaped random model (``--models``).

    python benchmarks/bench_batches.py --docs 200000 --device cuda --tokenizer $MODEL

A script, not a test: prints JSON lines.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ance.model.encode import encode_token_lists, length_sorted_batches  # noqa: E402
from ance.model.transfer import Results as _Results  # noqa: E402
from ance.model.tokcache import FlatTokens, build_inputs, build_padded_inputs  # noqa: E402
from synthetic import MODEL_CONFIGS  # noqa: E402


def table(n: int, tokens: int, vocab: int) -> FlatTokens:
    rng = np.random.default_rng(0)
    flat = rng.integers(1000, vocab, size=n * tokens, dtype=np.int32)
    return FlatTokens(flat, np.arange(n + 1, dtype=np.int64) * tokens)


def host_rate(way: str, n: int, tokens: int, batch: int, threads: int, tok_dir: str, q=None) -> float:
    """Batches per second of building (and pinning, when CUDA is there) model inputs one way."""
    from transformers import AutoTokenizer

    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    t = table(n, tokens - 2, len(tok))
    pin = torch.cuda.is_available()
    batches = length_sorted_batches(t.lengths, batch)
    start = time.perf_counter()
    for pos in batches:
        if way == "old":
            inputs = build_inputs(t.take(pos), tok, tokens)
        else:
            inputs = build_padded_inputs(*t.padded(pos, tokens - 2), tok, tokens)
        if pin:
            inputs = {k: v.pin_memory() for k, v in inputs.items()}
    rate = len(batches) / (time.perf_counter() - start)
    if q is not None:
        q.put(rate)
    return rate


def old_encode(model, t: FlatTokens, tok, tokens: int, batch: int, device: str) -> np.ndarray:
    """The encode loop before this change: per-batch take + Python padding on the encoding thread."""
    batches = length_sorted_batches(t.lengths, batch)
    results = _Results(len(t), model.dim, batch, device)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        for pos in batches:
            inputs = build_inputs(t.take(pos), tok, tokens)
            inputs = {k: v.pin_memory().to(device, non_blocking=True) for k, v in inputs.items()}
            results.put(model(**inputs, kind="passage").float(), pos)
        results.flush()
    return results.out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", type=int, default=200_000)
    p.add_argument("--host-docs", type=int, default=100_000)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--device", default="cuda")
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--models", nargs="*", default=["minilm", "bert-base"])
    args = p.parse_args(argv)
    cores = os.cpu_count() or 1
    ctx = mp.get_context("spawn")
    for way in ("old", "new"):
        for threads in (cores, max(1, cores // 2)):
            alone = host_rate(way, args.host_docs, args.tokens, args.batch_size, threads, args.tokenizer)
            q = ctx.Queue()
            procs = [ctx.Process(target=host_rate, args=(way, args.host_docs, args.tokens, args.batch_size, threads,
                                                        args.tokenizer, q)) for _ in range(2)]
            for pr in procs:
                pr.start()
            pair = [q.get() for _ in procs]
            for pr in procs:
                pr.join()
            print(json.dumps({"part": "host", "way": way, "threads": threads, "batch": args.batch_size,
                              "batches_per_s_alone": round(alone, 1),
                              "batches_per_s_two_procs": [round(x, 1) for x in pair]}), flush=True)
    if not args.device.startswith("cuda"):
        return 0
    from transformers import AutoTokenizer, BertConfig, BertModel

    from ance.model.biencoder import BiEncoder

    torch.set_num_threads(max(1, cores // 2))
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    t = table(args.docs, args.tokens - 2, len(tok))
    for name in args.models:
        cfg = BertConfig(vocab_size=len(tok), max_position_embeddings=512, **MODEL_CONFIGS[name])
        model = BiEncoder(BertModel(cfg), None, tok, max_seq_length=512).to(args.device).eval()
        small = FlatTokens(t._ids[: 20 * args.tokens], t._offsets[:21])
        old_encode(model, small, tok, args.tokens, args.batch_size, args.device)  # warm-up
        rates = {}
        for way in ("old", "new", "old", "new"):
            torch.cuda.synchronize()
            start = time.perf_counter()
            if way == "old":
                old_encode(model, t, tok, args.tokens, args.batch_size, args.device)
            else:
                encode_token_lists(model, t, np.arange(len(t)), tok, args.tokens, kind="passage",
                                   batch_size=args.batch_size, device=args.device, progress=False)
            torch.cuda.synchronize()
            rates.setdefault(way, []).append(args.docs / (time.perf_counter() - start))
        print(json.dumps({"part": "gpu", "model": name, "docs": args.docs, "tokens": args.tokens,
                          "batch": args.batch_size, "gpu": torch.cuda.get_device_name(0),
                          "old_docs_per_s": [round(x) for x in rates["old"]],
                          "new_docs_per_s": [round(x) for x in rates["new"]],
                          "gpu_peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}), flush=True)
        del model
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
