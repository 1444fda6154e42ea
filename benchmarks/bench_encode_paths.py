"""Encode paths side by side, one process (issue 26): the previous path against the fast one.

Variants, each through ``ance.model.encode.encode_token_lists`` (the inferencer's own loop):

* ``previous``  fp32 weights under bf16 autocast, every batch with its padding mask (the code before);
* ``half``      weights cast by ``for_inference`` (bf16, no autocast), batches without padding sent
                without a mask (flash attention): the current default;
* ``compile``   ``half`` with each tower through ``torch.compile`` (``--compile-mode``);
* ``gpu-only``  ``half``'s forward alone on inputs already on the GPU (the ceiling without host work).

Shapes: random-initialised BERTs (``benchmarks/synthetic.py``: minilm, bert-base) on synthetic token
ids of exactly ``--length`` tokens, and real text (``--text DIR``, a BEIR folder: its passages, cut at
``--text-length``). TFLOP/s counts the matrix work of the tokens actually run (padding included):
``n × layers × (8 d² + 4 d f + 4 n d)`` FLOPs per sequence of ``n`` tokens (a multiply-add counted
as two; 2.9 GFLOP for MiniLM at 128 tokens). Before 2026-12-03 17:20 the script counted twice that:
benchmarks/results/encode-paths-h200.json's ``tflops`` fields are twice the true rate.

``--cold DIR`` also times SciFact-style cold encoding: the token cache built from the texts (the fast
tokenizer's batch API over all cores) plus the first encode, as docs/s: every text through BERT's normaliser
(``normalised``, before 2026-12-06), plain ASCII texts without it (``prenorm``), and that with each batch
encoded as it is tokenized (``stream``, ance.model.stream), side by side, each twice.

    python benchmarks/bench_encode_paths.py --tokenizer $MODEL --shapes minilm bert-base --docs 200000 \
        --text ../shared/data/squad --cold ../shared/data/scifact --out encode-paths.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic import MODEL_CONFIGS  # noqa: E402


DEVICE = "cuda"


def sync() -> None:
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


def flops(lengths: np.ndarray, cfg) -> float:
    d, f, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    n = lengths.astype(np.float64)
    return float(np.sum(n * layers * (8 * d * d + 4 * d * f + 4 * n * d)))


def padded_lengths(lengths: np.ndarray, batch: int, n_special: int) -> np.ndarray:
    """The width each sequence runs at: its length-sorted batch's longest, specials included."""
    from ance.model.encode import length_sorted_batches

    out = np.empty(len(lengths), np.int64)
    for pos in length_sorted_batches(lengths, batch):
        out[pos] = lengths[pos].max() + n_special
    return out


def random_bert(shape: str, tokenizer_dir: str):
    from transformers import AutoTokenizer, BertConfig, BertModel

    from ance.model.biencoder import BiEncoder

    cfg = BertConfig(vocab_size=30522, max_position_embeddings=512, **MODEL_CONFIGS[shape])
    torch.manual_seed(0)
    return BiEncoder(BertModel(cfg), None, AutoTokenizer.from_pretrained(tokenizer_dir))


def variant_model(base, name: str, compile_mode: str):
    import copy

    from ance.model.inference import for_inference

    model = copy.deepcopy(base)
    if name == "previous":
        return model.to(DEVICE).eval()
    return for_inference(model, DEVICE, "bf16", compile=compile_mode if name == "compile" else "off")


def time_encode(model, tokens, idx, max_length: int, batch: int, dense: bool, repeats: int) -> float:
    from ance.model import encode

    encode.DROP_FULL_MASKS = dense
    try:
        best = float("inf")
        for r in range(repeats + 1):  # the first is a warm-up (and compiles)
            sync()
            t = time.perf_counter()
            out = encode.encode_token_lists(model, tokens, idx, model.tokenizer, max_length, kind="passage",
                                            batch_size=batch, device=DEVICE, progress=False, on_device=True)
            sync()
            if r:
                best = min(best, time.perf_counter() - t)
        return best, out
    finally:
        encode.DROP_FULL_MASKS = True


def time_gpu_only(model, n: int, length: int, batch: int, repeats: int) -> float:
    """``half``'s forward over n docs of ``length`` tokens whose inputs already sit on the GPU."""
    ids = torch.randint(1000, 29000, (batch, length), device=DEVICE)
    mask = torch.ones_like(ids)
    tt = torch.zeros_like(ids)
    steps = -(-n // batch)
    best = float("inf")
    with torch.inference_mode():
        for r in range(repeats + 1):
            sync()
            t = time.perf_counter()
            for _ in range(steps):
                model(ids, mask, tt, kind="passage", dense=True)
            sync()
            if r:
                best = min(best, time.perf_counter() - t)
    return best * n / (steps * batch)


def bench_shape(args, shape: str) -> dict:
    from ance.model.tokcache import FlatTokens

    base = random_bert(shape, args.tokenizer)
    cfg = base.query_encoder.config
    rng = np.random.default_rng(0)
    room = args.length - 2
    flat = rng.integers(1000, 29000, size=args.docs * room, dtype=np.int32)
    tokens = FlatTokens(flat, np.arange(0, args.docs * room + 1, room, dtype=np.int64))
    idx = np.arange(args.docs)
    work = flops(np.full(args.docs, args.length), cfg)
    out, ref = {"shape": shape, "docs": args.docs, "length": args.length, "batch": args.batch}, None
    for name in args.variants:
        try:
            if name == "gpu-only":
                model = variant_model(base, "half", args.compile_mode)
                s = time_gpu_only(model, args.docs, args.length, args.batch, args.repeats)
                emb = None
            else:
                model = variant_model(base, name, args.compile_mode)
                s, emb = time_encode(model, tokens, idx, args.length, args.batch, name != "previous", args.repeats)
        except Exception as exc:  # a variant that fails (compile) is reported, the others go on
            out[name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            print(f"{shape} {name}: {out[name]['error']}", file=sys.stderr, flush=True)
            continue
        rec = {"s": round(s, 3), "docs_per_s": round(args.docs / s), "tflops": round(work / s / 1e12, 1)}
        if emb is not None:
            if ref is None:
                ref = torch.as_tensor(emb).float()
            emb = torch.as_tensor(emb).float()
            rec["min_cosine_vs_previous"] = round(float(torch.nn.functional.cosine_similarity(emb, ref).min()), 5)
        out[name] = rec
        print(f"{shape} {name}: {rec}", file=sys.stderr, flush=True)
        del model
        if DEVICE.startswith("cuda"):
            torch.cuda.empty_cache()
    return out


def bench_text(args) -> dict:
    """Real text (a BEIR folder's passages): the previous and the half path, padding counted."""
    from ance.model.biencoder import BiEncoder
    from ance.model.encode import corpus_max_tokens, n_special_tokens
    from ance.model.tokcache import TokenCache
    from ance.search.retrieve import load_data

    corpus = load_data(args.text, "train" if args.max_docs else None, max_docs=args.max_docs).corpus
    base = random_bert("minilm", args.tokenizer) if args.text_model == "minilm" else BiEncoder.load(args.text_model)
    tok = base.tokenizer
    with tempfile.TemporaryDirectory() as root:
        cache = TokenCache.open(corpus.passages(), tok, corpus_max_tokens(tok, args.text_length), root,
                                corpus.source_hash, progress=False)
        idx = np.arange(len(cache))
        cut = np.minimum(cache.lengths, args.text_length - n_special_tokens(tok))
        runs = padded_lengths(cut, args.batch_text, n_special_tokens(tok))
        work = flops(runs, base.query_encoder.config)
        out = {"data": str(args.text), "docs": len(cache), "max_length": args.text_length,
               "mean_tokens": round(float(cut.mean()) + n_special_tokens(tok), 1),
               "padding_share": round(1 - float((cut + n_special_tokens(tok)).sum() / runs.sum()), 4)}
        for name in ("previous", "half"):
            model = variant_model(base, name, args.compile_mode)
            s, _ = time_encode(model, cache, idx, args.text_length, args.batch_text, name != "previous",
                               args.repeats)
            out[name] = {"s": round(s, 3), "docs_per_s": round(len(cache) / s), "tflops": round(work / s / 1e12, 1)}
            print(f"text {name}: {out[name]}", file=sys.stderr, flush=True)
    return out


def bench_cold(args) -> dict:
    """Cold: tokenize into a fresh token cache, then the first encode (the real model when given)."""
    from ance.model.biencoder import BiEncoder
    from ance.model.encode import corpus_max_tokens, encode_corpus
    from ance.model.inference import for_inference
    from ance.model.tokcache import TokenCache
    from ance.search.retrieve import load_data

    corpus = load_data(args.cold, "train" if args.max_docs else None, max_docs=args.max_docs).corpus
    model = for_inference(BiEncoder.load(args.cold_model or args.tokenizer), DEVICE, "bf16")
    encode_corpus(model, TokenCache.open(corpus.passages()[:512], model.tokenizer, 254, tempfile.mkdtemp(), "w",
                                         progress=False), max_length=256, batch_size=256, device=DEVICE,
                  progress=False)  # CUDA context and kernels: not what "cold" measures
    from ance.model import tokenize as tokenizing

    from ance.model.stream import tokenize_and_encode

    out = {"data": str(args.cold), "docs": len(corpus)}
    # side by side, twice over: every text through the BERT normaliser (before 2026-12-06), plain ASCII texts
    # without it (tokenize.PRENORMALIZE), and that with each batch encoded as it is tokenized (ance.model.stream)
    for path, prenorm, streamed in (("normalised", False, False), ("prenorm", True, False),
                                    ("stream", True, True)) * 2:
        tokenizing.PRENORMALIZE = prenorm
        for batch in (256, 512):
            with tempfile.TemporaryDirectory() as root:
                sync()
                t = time.perf_counter()
                if streamed:
                    tokenize_and_encode(model, corpus, max_length=256, cache_root=root, batch_size=batch,
                                        device=DEVICE, progress=False)
                    t1 = t
                else:
                    cache = TokenCache.open(corpus.passages(), model.tokenizer,
                                            corpus_max_tokens(model.tokenizer, 256), root, corpus.source_hash,
                                            progress=False)
                    t1 = time.perf_counter()
                    encode_corpus(model, cache, max_length=256, batch_size=batch, device=DEVICE, progress=False)
                sync()
                t2 = time.perf_counter()
            row = {"tokenize_s": round(t1 - t, 3), "encode_s": round(t2 - t1, 3),
                   "docs_per_s_cold": round(len(corpus) / (t2 - t))}
            out.setdefault(f"{path}_batch_{batch}", []).append(row)
            print(f"cold {path} batch {batch}: {row}", file=sys.stderr, flush=True)
    tokenizing.PRENORMALIZE = True
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokenizer", required=True, help="a model dir whose tokenizer (and, for --cold, weights) to use")
    ap.add_argument("--shapes", nargs="*", default=["minilm", "bert-base"], choices=list(MODEL_CONFIGS))
    ap.add_argument("--variants", nargs="+", default=["previous", "half", "compile", "gpu-only"])
    ap.add_argument("--compile-mode", default="on", help="inferencer.compile for the compile variant: on | max-autotune")
    ap.add_argument("--device", default="cuda", help="cuda (what it is for) or cpu (a smoke run)")
    ap.add_argument("--docs", type=int, default=200_704, help="a multiple of --batch keeps one shape")
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--text", default=None, help="a BEIR folder: real-length passages")
    ap.add_argument("--text-length", type=int, default=256)
    ap.add_argument("--batch-text", type=int, default=512)
    ap.add_argument("--text-model", default="minilm", help="minilm (random) or a model dir")
    ap.add_argument("--cold", default=None, help="a BEIR folder for the cold encode (tokenization included)")
    ap.add_argument("--cold-model", default=None, help="model dir for --cold (default: --tokenizer's dir)")
    ap.add_argument("--max-docs", type=int, default=None, help="--text / --cold: a subset (smoke runs)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    global DEVICE
    DEVICE = args.device
    name = torch.cuda.get_device_name(0) if DEVICE.startswith("cuda") else "cpu"
    result = {"device": name, "torch": torch.__version__, "args": vars(args), "shapes": {}}
    for shape in args.shapes:
        result["shapes"][shape] = bench_shape(args, shape)
    if args.text:
        result["text"] = bench_text(args)
    if args.cold:
        result["cold"] = bench_cold(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
