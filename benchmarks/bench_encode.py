"""Corpus encoding throughput: ance's encode path vs sentence-transformers, same model, data and process.

ance: tokenize once into a TokenCache (timed apart), then ``encode_corpus``
(length-sorted batches, autocast: bf16 on CUDA, pinned non-blocking copies).
sentence-transformers: ``SentenceTransformer.encode`` on the passage texts
(it tokenizes inside, so its time includes tokenizing; ours is reported both
without and with the tokenization), in fp32 as it loads, and, on CUDA, also
with the model cast to bf16, the fairer comparison of the two pipelines.

Prints one JSON object (and writes it to --out):

    python benchmarks/bench_encode.py --device cuda --data ../shared/data/scifact --out bench.json

This is a script, not a test; compare numbers taken in one process only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch


def default_model() -> str:
    if os.environ.get("ANCE_DEVICE_MODEL"):
        return os.environ["ANCE_DEVICE_MODEL"]
    from ance.model.biencoder import resolve_model

    return resolve_model("all-MiniLM-L6-v2")


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int):
    """(best seconds over ``repeats`` runs, last result); one untimed warm-up run first."""
    out = fn()
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        out = fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:<i> or auto")
    parser.add_argument("--model", default=None, help="model dir (default: $ANCE_DEVICE_MODEL, else all-MiniLM-L6-v2)")
    parser.add_argument("--data", default="../shared/data/scifact", help="BEIR or MS MARCO folder")
    parser.add_argument("--max-docs", type=int, default=None, help="encode only the first N documents (quick checks)")
    parser.add_argument("--max-length", type=int, default=256, help="tokens per passage, specials included")
    parser.add_argument("--batch-size", type=int, default=256, help="ance batch size")
    parser.add_argument("--st-batch-sizes", type=int, nargs="+", default=[64, 256],
                        help="sentence-transformers batch sizes tried; its best is reported")
    parser.add_argument("--precision", default="auto", help="ance autocast: auto (bf16 on CUDA) | bf16 | fp16 | fp32")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs after one warm-up (best is kept)")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)

    from sentence_transformers import SentenceTransformer

    from ance.run.device import autocast_dtype, resolve_device
    from ance.model.encode import corpus_max_tokens, encode_corpus
    from ance.model.biencoder import BiEncoder
    from ance.search.retrieve import load_data
    from ance.model.tokcache import TokenCache

    device = resolve_device(args.device)
    model_path = args.model or default_model()
    corpus = load_data(args.data, None).corpus
    passages = corpus.passages()[: args.max_docs] if args.max_docs else corpus.passages()
    n = len(passages)

    # ---- ance: weights cast to fp32 (packed weights may be fp16), autocast decides the compute dtype
    model = BiEncoder.load(model_path, dtype=torch.float32).to(device).eval()
    with tempfile.TemporaryDirectory(prefix="bench-encode-") as cache_root:
        t = time.perf_counter()
        cache = TokenCache.open(passages, model.tokenizer, corpus_max_tokens(model.tokenizer, args.max_length),
                                cache_root, f"{corpus.source_hash}:{n}", progress=False)
        tokenize_s = time.perf_counter() - t
        ance_s, (emb, _) = timed(lambda: encode_corpus(model, cache, max_length=args.max_length,
                                                       batch_size=args.batch_size, device=device,
                                                       precision=args.precision, progress=False),
                                 device, args.repeats)
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()

    # ---- sentence-transformers on the same weights
    st = SentenceTransformer(model_path, device=device).float()
    st.max_seq_length = args.max_length

    def st_run(batch_size: int):
        return st.encode(passages, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)

    st_results = {}
    for bs in args.st_batch_sizes:
        st_results[bs], st_emb = timed(lambda: st_run(bs), device, args.repeats)
    st_bs = min(st_results, key=st_results.get)
    st_s = st_results[st_bs]
    agree = float(np.mean(np.sum(emb * st_emb, axis=1) /
                          (np.linalg.norm(emb, axis=1) * np.linalg.norm(st_emb, axis=1) + 1e-12)))
    st_bf16 = None
    if device.startswith("cuda"):
        st.to(torch.bfloat16)
        st_bf16 = min(timed(lambda: st_run(bs), device, args.repeats)[0] for bs in args.st_batch_sizes)

    amp = autocast_dtype(device, args.precision)
    result = {
        "device": torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu",
        "model": str(model_path), "n_docs": n, "max_length": args.max_length,
        "ance": {"docs_per_s": round(n / ance_s, 1), "encode_s": round(ance_s, 3),
                 "tokenize_s": round(tokenize_s, 3),
                 "docs_per_s_with_tokenize": round(n / (ance_s + tokenize_s), 1),
                 "batch_size": args.batch_size, "autocast": str(amp).replace("torch.", "") if amp else "fp32"},
        "sentence_transformers": {"docs_per_s": round(n / st_s, 1), "encode_s": round(st_s, 3),
                                  "batch_size": st_bs, "dtype": "fp32",
                                  "per_batch_size_s": {str(k): round(v, 3) for k, v in st_results.items()}},
        "ratio": round(st_s / ance_s, 2),
        "ratio_with_tokenize": round(st_s / (ance_s + tokenize_s), 2),
        "mean_cosine_ance_vs_st": round(agree, 5),
    }
    if st_bf16 is not None:
        result["sentence_transformers_bf16"] = {"docs_per_s": round(n / st_bf16, 1), "encode_s": round(st_bf16, 3)}
        result["ratio_vs_st_bf16"] = round(st_bf16 / ance_s, 2)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
