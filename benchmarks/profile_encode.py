"""Where an encoder forward's GPU time goes: the inferencer's bf16 model (``for_inference``) on one
unpadded batch, kernels grouped into matrix products, attention, normalisation, activation and the
rest, each with its share of the forward and the achieved TFLOP/s of the whole.

    python benchmarks/profile_encode.py --tokenizer $ANCE_DEVICE_MODEL --shape minilm --batch 1024 --length 128

Diagnostic only (issue 26: the encoder is 106 of the MS MARCO-shaped refresh's 133.5 s); the
encode rates themselves are bench_encode_paths.py's. ``--device cpu`` is a smoke run (CPU kernels).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_encode_paths as paths  # noqa: E402

#: kernel name patterns, first match wins (cuBLAS/CUTLASS GEMMs, flash/SDPA, LayerNorm, GELU, ...)
CATEGORIES = (
    ("matmul", r"gemm|cutlass|sm\d+_xmma|addmm|matmul|\bmm\b|linear|ampere|hopper|nvjet"),
    ("attention", r"flash|fmha|attention|sdpa|softmax"),
    ("layernorm", r"layer_norm|layernorm"),
    ("gelu", r"gelu"),
    ("elementwise", r"elementwise|add|mul|copy|cast|fill|vectorized"),
)


def category(name: str) -> str:
    low = name.lower()
    for cat, pattern in CATEGORIES:
        if re.search(pattern, low):
            return cat
    return "other"


def profile(model, batch: int, length: int, device: str, iters: int) -> tuple[dict, float]:
    ids = torch.randint(1000, 29000, (batch, length), device=device)
    mask, tt = torch.ones_like(ids), torch.zeros_like(ids)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    activity = torch.profiler.ProfilerActivity.CUDA if device.startswith("cuda") else torch.profiler.ProfilerActivity.CPU
    with torch.inference_mode():
        for _ in range(3):
            model(ids, mask, tt, kind="passage", dense=True)
        sync()
        t = time.perf_counter()
        for _ in range(iters):
            model(ids, mask, tt, kind="passage", dense=True)
        sync()
        wall = (time.perf_counter() - t) / iters
        with torch.profiler.profile(activities=[activity]) as prof:
            for _ in range(iters):
                model(ids, mask, tt, kind="passage", dense=True)
            sync()
    kernels: dict[str, float] = {}
    for e in prof.key_averages():
        us = e.self_device_time_total if device.startswith("cuda") else e.self_cpu_time_total  # self: no double count
        if us > 0:
            kernels[e.key] = kernels.get(e.key, 0.0) + us / iters / 1e3   # ms a forward
    return kernels, wall


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokenizer", required=True, help="a model dir whose tokenizer the random BERT takes")
    ap.add_argument("--shape", default="minilm", choices=sorted(paths.MODEL_CONFIGS))
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--top", type=int, default=15, help="kernels listed")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    paths.DEVICE = args.device
    from ance.model.inference import for_inference

    base = paths.random_bert(args.shape, args.tokenizer)
    model = for_inference(base, args.device, "bf16" if args.device.startswith("cuda") else "fp32", compile="off")
    kernels, wall = profile(model, args.batch, args.length, args.device, args.iters)
    total = sum(kernels.values())
    cats: dict[str, float] = {}
    for name, ms in kernels.items():
        cats[category(name)] = cats.get(category(name), 0.0) + ms
    lengths = torch.full((args.batch,), args.length).numpy()
    tflops = paths.flops(lengths, model.query_encoder.config) / wall / 1e12
    result = {"bench": "profile_encode", "shape": args.shape, "batch": args.batch, "length": args.length,
              "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
              "torch": torch.__version__, "wall_ms": wall * 1e3, "docs_per_s": args.batch / wall,
              "tflops": tflops, "kernel_ms": total,
              "categories": {k: {"ms": v, "share": v / total} for k, v in sorted(cats.items(), key=lambda x: -x[1])},
              "top": [{"kernel": k[:160], "ms": v, "share": v / total, "category": category(k)}
                      for k, v in sorted(kernels.items(), key=lambda x: -x[1])[:args.top]]}
    print(f"{args.shape} batch {args.batch} x {args.length}: {wall * 1e3:.2f} ms a forward, "
          f"{args.batch / wall:,.0f} docs/s, {tflops:.0f} TFLOP/s; kernels {total:.2f} ms")
    for k, v in result["categories"].items():
        print(f"  {k:12s} {v['ms']:8.3f} ms  {v['share']:6.1%}")
    for row in result["top"]:
        print(f"  {row['ms']:8.3f} ms {row['share']:6.1%} [{row['category']}] {row['kernel'][:100]}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
