"""The encoder's forward in fewer kernels, side by side in one process (issue 26, item 1).

Variants of a random-initialised BERT (MiniLM and BERT-base shapes) in bf16, one unpadded batch of
``--length`` tokens already on the GPU, forward only (the encode loop runs within 1% of it,
docs/benchmarks.md):

* ``hf``            transformers' forward, as ``for_inference`` holds it (the current inferencer);
* ``lean``          ``ance.model.leanbert`` (one QKV GEMM, SDPA on strided views, exact GELU);
* ``lean-tanh``     ``lean`` with bias + GELU in the GEMM's epilogue (tanh approximation);
* ``hf-compile``    ``hf`` through ``torch.compile(dynamic=False)``;
* ``lean-compile``, ``lean-tanh-compile``: the lean ones compiled the same way;
* ``lean-tanh-compile-f32pool``: ``lean-tanh-compile`` pooling as before 2026-12-06 (the last hidden
  state copied to float32, then masked and summed), side by side with the pooling now (float32 accumulation
  of the bf16 states, no mask for a batch without padding);
* ``lean-autotune`` ``lean`` through ``max-autotune-no-cudagraphs`` (GEMM templates with fused
  epilogues; minutes of compile; only with ``--autotune``).

Each row: docs/s, TFLOP/s (a multiply-add counted twice), the ratio to ``hf``, and how far its pooled
vectors are from ``hf``'s (smallest cosine, largest absolute difference of the last hidden state), the
first variant's inputs for all. Also a ragged batch (``--ragged``: random lengths with the padding
mask) for the lean forward's agreement with ``hf`` on masked batches.

    python benchmarks/bench_encode_kernels.py --tokenizer $ANCE_DEVICE_MODEL --shapes minilm bert-base \
        --out benchmarks/results/encode-kernels-h200.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_encode_paths as paths  # noqa: E402

VARIANTS = ("hf", "lean", "lean-tanh", "hf-compile", "lean-compile", "lean-tanh-compile", "lean-tanh-compile-f32pool",
            "lean-autotune")


def build(base, name: str, device: str):
    from ance.model import leanbert
    from ance.model.inference import for_inference

    model = for_inference(copy.deepcopy(base), device, "bf16")
    for tower in model.towers():
        if name.startswith("lean"):
            assert leanbert.install(tower, "epilogue" if "tanh" in name else "exact")
        if name.endswith("compile") or name.endswith("f32pool"):
            tower.compile(dynamic=False)
        elif name == "lean-autotune":
            tower.compile(dynamic=False, mode="max-autotune-no-cudagraphs")
    return model


def f32_pool(hidden, attention_mask, pooling, *, full=False):
    """The pooling before 2026-12-06: the states copied to float32 whole, masked, then summed."""
    from ance.model import pooling as p

    hidden = hidden.float()
    if attention_mask is None:
        attention_mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
    return p.pool(hidden, attention_mask, pooling)


@contextlib.contextmanager
def pooled_as(name: str):
    """``BiEncoder.forward``'s pooling swapped for :func:`f32_pool` for an ``-f32pool`` variant."""
    from ance.model import biencoder

    if not name.endswith("f32pool"):
        yield
        return
    now = biencoder.pool
    biencoder.pool = f32_pool
    try:
        yield
    finally:
        biencoder.pool = now


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(model, ids, mask, tt, iters: int, repeats: int, device: str) -> tuple[float, float, torch.Tensor]:
    """(best seconds an iteration, first call's seconds: compile included, pooled output)."""
    with torch.inference_mode():
        sync(device)
        t = time.perf_counter()
        out = model(ids, mask, tt, kind="passage", dense=True)
        sync(device)
        first = time.perf_counter() - t
        for _ in range(2):
            model(ids, mask, tt, kind="passage", dense=True)
        best = float("inf")
        for _ in range(repeats):
            sync(device)
            t = time.perf_counter()
            for _ in range(iters):
                model(ids, mask, tt, kind="passage", dense=True)
            sync(device)
            best = min(best, (time.perf_counter() - t) / iters)
    return best, first, out.float()


def hidden(model, ids, mask, tt) -> torch.Tensor:
    with torch.inference_mode():
        return model.tower("passage")(input_ids=ids, attention_mask=mask, token_type_ids=tt).last_hidden_state.float()


def ragged_check(base, names, device: str, batch: int, length: int) -> dict:
    """Largest difference to ``hf`` over the unpadded positions of a batch of random lengths."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, 29000, (batch, length), generator=gen).to(device)
    lengths = torch.randint(2, length + 1, (batch,), generator=gen)
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long().to(device)
    tt = torch.zeros_like(ids)
    ref_model = build(base, "hf", device)
    with torch.inference_mode():
        ref = ref_model(ids, mask, tt, kind="passage")
    out = {}
    for name in names:
        if "compile" in name or "autotune" in name:
            continue
        with torch.inference_mode():
            got = build(base, name, device)(ids, mask, tt, kind="passage")
        out[name] = {"min_cos": float(F.cosine_similarity(ref, got).min()),
                     "max_abs_pooled": float((ref - got).abs().max())}
    return out


def bench_shape(args, shape: str) -> dict:
    if args.pretrained and shape == "minilm":  # the real weights: a variant's cosine to hf's is theirs
        from ance.model.biencoder import BiEncoder

        base = BiEncoder.load(args.tokenizer)
    else:
        base = paths.random_bert(shape, args.tokenizer)
    cfg = base.query_encoder.config
    ids = torch.randint(1000, 29000, (args.batch, args.length), device=args.device)
    mask, tt = torch.ones_like(ids), torch.zeros_like(ids)
    work = paths.flops(np.full(args.batch, args.length), cfg)
    result = {"shape": shape, "batch": args.batch, "length": args.length, "gflop_per_doc": work / args.batch / 1e9,
              "variants": {}}
    ref_vec = ref_hidden = None
    for name in args.variants:
        try:
            model = build(base, name, args.device)
            with pooled_as(name):
                s, first, vec = timed(model, ids, mask, tt, args.iters, args.repeats, args.device)
            h = hidden(model, ids, mask, tt)
        except Exception as exc:  # a variant that fails (a compile, a kernel) is reported, the rest go on
            result["variants"][name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            print(f"{shape:9s} {name:18s} failed: {exc}", flush=True)
            continue
        row = {"docs_per_s": args.batch / s, "tflops": work / s / 1e12, "ms_per_batch": s * 1e3,
               "first_call_s": first}
        if ref_vec is None:
            ref_vec, ref_hidden = vec, h
        row["min_cos_vs_hf"] = float(F.cosine_similarity(ref_vec, vec).min())
        row["max_abs_hidden_vs_hf"] = float((ref_hidden - h).abs().max())
        row["vs_hf"] = row["docs_per_s"] / result["variants"][args.variants[0]]["docs_per_s"] \
            if result["variants"] else 1.0
        result["variants"][name] = row
        print(f"{shape:9s} {name:18s} {row['docs_per_s']:>9,.0f} docs/s {row['tflops']:6.1f} TFLOP/s "
              f"{row['vs_hf']:5.2f}x  cos {row['min_cos_vs_hf']:.5f}  first {first:5.1f}s", flush=True)
        del model
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    if args.ragged:
        result["ragged"] = ragged_check(base, args.variants, args.device, min(args.batch, 256), args.length)
        print(f"{shape:9s} ragged vs hf: {result['ragged']}", flush=True)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--shapes", nargs="+", default=["minilm", "bert-base"])
    ap.add_argument("--variants", nargs="+", default=[v for v in VARIANTS if v != "lean-autotune"], choices=VARIANTS)
    ap.add_argument("--autotune", action="store_true", help="add lean-autotune (minutes of compile)")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ragged", action="store_true", help="also compare on a padded batch of random lengths")
    ap.add_argument("--pretrained", action="store_true",
                    help="the minilm shape with the weights of --tokenizer's model dir (default: random)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    if args.autotune and "lean-autotune" not in args.variants:
        args.variants.append("lean-autotune")
    if args.variants[0] != "hf":
        args.variants.insert(0, "hf")
    paths.DEVICE = args.device
    env = {"torch": torch.__version__, "pretrained": args.pretrained,
           "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"}
    results = {"env": env, "shapes": [bench_shape(args, s) for s in args.shapes]}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
