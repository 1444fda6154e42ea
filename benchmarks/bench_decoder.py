"""Decoder (LLM) embedders on one GPU: corpus encode docs/s at 128 tokens, GradCache steps/s with LoRA
and with gradient checkpointing, peak memory, and the projected MS MARCO-sized refresh, for
random-initialised Qwen2-shaped decoders (last-token pooling, bf16), through ance's own code paths
(``BiEncoder``, ``encode_token_lists``, ``tuning.for_training``, ``GradCache``).

    python benchmarks/bench_decoder.py --shapes 0.5b 1.5b --out decoders.json

The tokenizer is a tiny byte-level BPE built here (no download); the token ids are random, so the
numbers are the model's, not the text's. Prints one JSON line per shape.
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

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def sync() -> None:
    if DEV == "cuda":
        torch.cuda.synchronize()


def peak_gib() -> float:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if DEV == "cuda" else 0.0


def reset_peak() -> None:
    if DEV == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

SHAPES = {  # Qwen2.5-0.5B and -1.5B (vocabulary left small: it does not change the throughput)
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2),  # a CPU smoke run of this script
}
MSMARCO_DOCS = 8_841_823


def build(shape: str, root: Path) -> Path:
    from transformers import AutoModel, Qwen2Config

    from helpers_models import tiny_tokenizer

    tok = tiny_tokenizer("qwen3")
    cfg = Qwen2Config(vocab_size=len(tok), max_position_embeddings=4096, **SHAPES[shape])
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = AutoModel.from_config(cfg, torch_dtype=torch.bfloat16)
    out = root / shape
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def encode_rate(path: Path, n_docs: int, batch: int, length: int) -> dict:
    from ance.model.biencoder import BiEncoder
    from ance.model.encode import encode_token_lists

    model = BiEncoder.load(str(path), pooling="last").to(DEV).eval()
    rng = np.random.default_rng(0)
    vocab = len(model.tokenizer)
    lists = [rng.integers(10, vocab, size=length - 1).tolist() for _ in range(n_docs)]  # + EOS appended
    reset_peak()
    kw = dict(kind="passage", batch_size=batch, device=DEV, precision="bf16" if DEV == "cuda" else "fp32", progress=False)
    encode_token_lists(model, lists[: batch * 2], np.arange(batch * 2), model.tokenizer, length, **kw)  # warm
    sync()
    t = time.perf_counter()
    encode_token_lists(model, lists, np.arange(n_docs), model.tokenizer, length, **kw)
    sync()
    s = time.perf_counter() - t
    params = n_params(model)
    out = {"params_m": round(params / 1e6, 1), "encode_docs_s": round(n_docs / s, 1),
           "encode_tflops": round(2 * params * length * n_docs / s / 1e12, 1),
           "encode_peak_gib": peak_gib(),
           "msmarco_encode_s_1gpu": round(MSMARCO_DOCS / (n_docs / s), 1)}
    del model
    reset_peak()
    return out


def train_rate(path: Path, lora_r: int, checkpointing: bool, batch: int, steps: int, length: int) -> dict:
    from types import SimpleNamespace

    from ance.learn.gradcache import GradCache
    from ance.learn.losses import InfoNCE
    from ance.model import tuning
    from ance.model.biencoder import BiEncoder
    from ance.model.tokcache import build_inputs

    model = BiEncoder.load(str(path), pooling="last")
    tuning.for_training(model, SimpleNamespace(
        lora=SimpleNamespace(r=lora_r, alpha=2.0 * max(lora_r, 1), dropout=0.0, target_modules=[]),
        gradient_checkpointing=checkpointing))
    model.to(DEV).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, fused=DEV == "cuda")
    rng = np.random.default_rng(0)
    vocab = len(model.tokenizer)
    tok = model.tokenizer

    def inputs(n, m):
        return {k: v.to(DEV) for k, v in build_inputs(
            [rng.integers(10, vocab, size=m - 1).tolist() for _ in range(n)], tok, m).items()}

    gc = GradCache(model, InfoNCE(0.05), 16, autocast_dtype=torch.bfloat16 if DEV == "cuda" else None,
                   device_type=DEV)
    reset_peak()
    times = []
    for i in range(steps + 2):
        q, p = inputs(batch, 32), inputs(2 * batch, length)   # a positive and a hard negative per query
        sync()
        t = time.perf_counter()
        gc.step(q, p, pos_index=torch.arange(0, 2 * batch, 2, device=DEV))
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        if i >= 2:
            times.append(time.perf_counter() - t)
    out = {"steps_s": round(1 / float(np.median(times)), 3), "trainable_m": round(sum(p.numel() for p in params) / 1e6, 2),
           "peak_gib": peak_gib()}
    del model, opt, gc
    reset_peak()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", nargs="+", default=["0.5b", "1.5b"], choices=sorted(SHAPES))
    p.add_argument("--docs", type=int, default=20000, help="passages encoded per shape")
    p.add_argument("--batch", type=int, default=256, help="encode batch")
    p.add_argument("--train-batch", type=int, default=64, help="queries per step (each with a positive and a negative)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--gpus", nargs="+", type=int, default=[1, 2, 4, 8], help="pool sizes for the projection")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape in args.shapes:
            path = build(shape, Path(tmp))
            r = {"shape": shape, "gpu": torch.cuda.get_device_name() if DEV == "cuda" else "cpu", "length": args.length}
            r.update(encode_rate(path, args.docs, args.batch, args.length))
            r["msmarco_encode_s"] = {g: round(r["msmarco_encode_s_1gpu"] / g, 1) for g in args.gpus}
            for name, lora_r, ckpt in (("lora_r16", 16, False), ("lora_r16_ckpt", 16, True), ("full_ckpt", 0, True)):
                try:
                    r[name] = train_rate(path, lora_r, ckpt, args.train_batch, args.steps, args.length)
                except torch.cuda.OutOfMemoryError as exc:  # said in the output, not hidden
                    r[name] = f"out of memory: {str(exc)[:120]}"
                    reset_peak()
            print(json.dumps(r), flush=True)
            results.append(r)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
