"""Trainer step throughput and memory: ance's GradCache step vs sentence-transformers'
CachedMultipleNegativesRankingLoss, same model, same batches, same process.

    python benchmarks/bench_train.py --device cuda --batch 64 --out results.json
    python benchmarks/bench_train.py --device cuda --memory-sweep 64,256,1024,4096

Each "step" is one optimizer step over B queries, B positives and B hard
negatives (SciFact texts). Steps/s is 1 / the median step time after a few warm-up steps, the best of
--repeats interleaved runs. Peak memory is
torch.cuda.max_memory_allocated over the timed steps.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch


def default_model() -> str:
    if os.environ.get("ANCE_DEVICE_MODEL"):
        return os.environ["ANCE_DEVICE_MODEL"]
    from ance.model.biencoder import resolve_model

    return resolve_model("all-MiniLM-L6-v2")


def load_texts(data: str, n: int, seed: int = 0):
    from ance.data.dataset import load_dataset

    ds = load_dataset(data, splits=("train",))
    split = ds.split("train")
    rng = np.random.default_rng(seed)
    q = rng.choice(len(split), size=n, replace=len(split) < n)
    queries = [split.texts[i] for i in q]
    positives = [ds.corpus.passage(int(split.positives[i][0])) for i in q]
    negatives = [ds.corpus.passage(int(d)) for d in rng.choice(len(ds.corpus), size=n)]
    return queries, positives, negatives


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed_steps(model, step, n, batch, steps, warmup, device) -> dict:
    """Run ``step(idx)`` (forward + backward of one batch) then clip + AdamW, ``warmup + steps`` times;
    steps/s from the median timed step, and the peak GPU memory over all of them."""
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5, fused=device.startswith("cuda"))  # both tools alike
    times = []
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    for s in range(warmup + steps):
        idx = np.arange(s * batch, (s + 1) * batch) % n
        sync(device)
        t0 = time.perf_counter()
        step(idx)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        if s >= warmup:
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
    return {"steps_per_s": 1.0 / float(np.median(times)), "peak_mib": peak}


def ance_step(model_path, texts, batch, chunk, device, max_length, precision, *, by_tokens=True, prepared=None,
              compile_mode=None, lean=False):
    """ance's model and its two-part step: ``build(idx)`` (the batch from token ids, on the
    device) and ``run(inputs)`` (the GradCache forward + backward)."""
    from ance.learn.gradcache import GradCache, plain_step
    from ance.learn.losses import InfoNCE
    from ance.model.biencoder import BiEncoder
    from ance.model.tokcache import build_inputs

    model = BiEncoder.load(model_path).to(device).train()
    model.prepared_masks = prepared
    if lean:  # train.kernels=lean: ance.model.leanbert's forward on each tower
        from ance.model import leanbert

        assert all(leanbert.install(t) for t in model.towers())
    if compile_mode:  # train.compile: each tower through torch.compile, in place (as the trainer does)
        from ance.model.tuning import compile_towers

        compile_towers(model, {"default": "on"}.get(compile_mode, compile_mode), device)
    tok = model.tokenizer
    queries, positives, negatives = texts
    # Pre-tokenized, as the trainer does with its token cache.
    q_ids = tok(queries, add_special_tokens=False, truncation=True, max_length=62)["input_ids"]
    p_ids = tok(positives + negatives, add_special_tokens=False, truncation=True, max_length=max_length - 2)["input_ids"]
    n = len(queries)
    amp = torch.bfloat16 if (precision == "bf16" and device.startswith("cuda")) else None
    # the trainer's default (train.chunk_by_tokens): chunk x max_length tokens a chunk, so the
    # activation memory is that of `chunk` full-length rows, as sentence-transformers' mini-batch
    # chunk 0: no gradient cache, one forward + backward of the whole batch (train.chunk_size=null)
    gc = GradCache(model, InfoNCE(0.05), chunk, chunk_tokens=chunk * max_length if by_tokens else None,
                   autocast_dtype=amp, device_type=device.split(":")[0]) if chunk else None

    def build(idx):
        qi = {k: v.to(device, non_blocking=True) for k, v in build_inputs([q_ids[i] for i in idx], tok, 64).items()}
        pi = {k: v.to(device, non_blocking=True) for k, v in
              build_inputs([p_ids[i] for i in idx] + [p_ids[n + i] for i in idx], tok, max_length).items()}
        return qi, pi

    def run(inputs):
        if gc is None:
            plain_step(model, InfoNCE(0.05), *inputs, autocast_dtype=amp, device_type=device.split(":")[0],
                       pos_index=torch.arange(batch, device=device))
        else:
            gc.step(*inputs, pos_index=torch.arange(batch, device=device))

    return model, build, run


def bench_ance(model_path, texts, batch, chunk, steps, warmup, device, max_length, precision, compile_mode=None,
               lean=False):
    model, build, run = ance_step(model_path, texts, batch, chunk, device, max_length, precision,
                                  compile_mode=compile_mode, lean=lean)
    return timed_steps(model, lambda idx: run(build(idx)), len(texts[0]), batch, steps, warmup, device)


def bench_ance_compiled(model_path, texts, batch, chunk, steps, warmup, device, max_length, precision):
    """ance's step with the tower through torch.compile (more warm-up steps: it compiles per shape)."""
    return bench_ance(model_path, texts, batch, chunk, steps, max(warmup, 8), device, max_length, precision,
                      compile_mode="default")


def bench_ance_lean(model_path, texts, batch, chunk, steps, warmup, device, max_length, precision):
    """ance's step with ``train.kernels=lean`` (the lean BERT forward, its dropout included)."""
    return bench_ance(model_path, texts, batch, chunk, steps, warmup, device, max_length, precision, lean=True)


def bench_ance_lean_compiled(model_path, texts, batch, chunk, steps, warmup, device, max_length, precision):
    """``train.kernels=lean`` with the tower through torch.compile (fewer, fused kernels for a host-bound step)."""
    return bench_ance(model_path, texts, batch, chunk, steps, max(warmup, 8), device, max_length, precision,
                      compile_mode="default", lean=True)


def bench_st(model_path, texts, batch, chunk, steps, warmup, device, max_length, precision):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.losses import CachedMultipleNegativesRankingLoss, MultipleNegativesRankingLoss

    model = SentenceTransformer(model_path, device=device)
    model = model.float()
    model.max_seq_length = max_length
    model.train()
    # chunk 0: their plain MultipleNegativesRankingLoss (no gradient cache), as ance's chunk 0
    loss = CachedMultipleNegativesRankingLoss(model, mini_batch_size=chunk) if chunk else MultipleNegativesRankingLoss(model)
    queries, positives, negatives = texts
    n = len(queries)
    amp = torch.bfloat16 if (precision == "bf16" and device.startswith("cuda")) else None

    def step(idx):
        feats = []
        for column in (queries, positives, negatives):
            f = model.tokenize([column[i] for i in idx])
            feats.append({k: v.to(device) for k, v in f.items() if torch.is_tensor(v)})
        with torch.autocast(device.split(":")[0], dtype=amp, enabled=amp is not None):
            value = loss(feats, None)
        value.backward()

    return timed_steps(model, step, n, batch, steps, warmup, device)


def common_args(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    ap.add_argument("--model", default=None)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared/data/scifact"))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--out", default=None)
    return ap


def emit(results: dict, out: str | None) -> None:
    text = json.dumps(results, indent=2)
    print(text)
    if out:
        Path(out).write_text(text)


def main(argv=None) -> int:
    ap = common_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    ap.add_argument("--chunk", type=int, default=32,
                    help="GradCache chunk / CachedMNRL mini-batch; 0: neither tool caches (plain step, plain MNRL)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=2,
                    help="the four configurations run this many times, interleaved; the best median is kept")
    ap.add_argument("--memory-sweep", default=None, help="comma-separated batch sizes: ance peak memory only")
    ap.add_argument("--compiled", action="store_true", help="also ance with torch.compile'd towers (bf16 only)")
    ap.add_argument("--lean", action="store_true", help="also ance with train.kernels=lean")
    ap.add_argument("--precisions", nargs="+", default=["bf16", "fp32"])
    args = ap.parse_args(argv)
    model = args.model or default_model()
    results = {"device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
               "model": Path(model).name, "batch": args.batch, "chunk": args.chunk, "max_length": args.max_length}
    if args.memory_sweep:
        sweep = {}
        for b in [int(x) for x in args.memory_sweep.split(",")]:
            texts = load_texts(args.data, b)
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
            r = bench_ance(model, texts, b, args.chunk, 2, 1, args.device, args.max_length, "bf16")
            sweep[b] = r
            print(json.dumps({"batch": b, **r}), file=sys.stderr)
        results["memory_sweep"] = sweep
        bs = sorted(sweep)
        if sweep[bs[0]]["peak_mib"]:
            results["memory_ratio_max_vs_min"] = sweep[bs[-1]]["peak_mib"] / sweep[bs[0]]["peak_mib"]
    else:
        texts = load_texts(args.data, args.batch * (args.steps + args.warmup))
        runs: dict[tuple[str, str], dict] = {}
        # interleaved and repeated: the first configuration in a process pays CUDA's one-off costs
        for _ in range(args.repeats):
            for precision in args.precisions:
                tools = [("ance", bench_ance), ("sentence_transformers", bench_st)]
                if args.compiled and precision == "bf16":
                    tools.append(("ance_compiled", bench_ance_compiled))
                if args.lean:
                    tools.append(("ance_lean", bench_ance_lean))
                if args.lean and args.compiled and precision == "bf16":
                    tools.append(("ance_lean_compiled", bench_ance_lean_compiled))
                for name, fn in tools:
                    try:
                        r = fn(model, texts, args.batch, args.chunk, args.steps, args.warmup, args.device,
                               args.max_length, precision)
                    except Exception as exc:  # a compile that fails is reported; the others go on
                        print(f"{name} {precision}: {type(exc).__name__}: {str(exc)[:300]}", file=sys.stderr)
                        continue
                    best = runs.get((precision, name))
                    if best is None or r["steps_per_s"] > best["steps_per_s"]:
                        runs[(precision, name)] = r
                    if args.device.startswith("cuda"):
                        torch.cuda.empty_cache()
        for precision in args.precisions:
            a, s = runs[(precision, "ance")], runs[(precision, "sentence_transformers")]
            results[precision] = {"ance": a, "sentence_transformers": s,
                                  "speedup": a["steps_per_s"] / s["steps_per_s"]}
            for variant in ("compiled", "lean", "lean_compiled"):
                if (precision, f"ance_{variant}") in runs:
                    c = runs[(precision, f"ance_{variant}")]
                    results[precision].update({f"ance_{variant}": c,
                                               f"speedup_{variant}": c["steps_per_s"] / s["steps_per_s"]})
            print(json.dumps({precision: results[precision]}), file=sys.stderr)
        if "fp32" in args.precisions and "bf16" in args.precisions:
            results["speedup_default"] = (results["bf16"]["ance"]["steps_per_s"]
                                          / results["fp32"]["sentence_transformers"]["steps_per_s"])
    emit(results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
