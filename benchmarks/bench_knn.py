"""Exact top-k inner-product search on one GPU: the tiled two-stage search (ance.search.knn, what
TorchIndex runs now) against the previous per-block ``topk`` and faiss-gpu's ``GpuIndexFlatIP``,
side by side in one process, on the same random unit vectors held on the GPU.

    # MS MARCO-shaped: 500k training queries x 8.8M passages x 384 (MiniLM), top-200
    python benchmarks/bench_knn.py --queries 500000 --docs 8800000 --dim 384 --k 200 --out knn.json
    # quick
    python benchmarks/bench_knn.py --queries 20000 --docs 1000000

Prints one JSON line: seconds per method (queries -> host arrays of scores and ids), TFLOP/s of the
GEMM part, and the agreement of each method's ids with the new search's (fraction of equal top-k
sets; fp16 scores make near-ties at the k-th place differ).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ance.search import fused  # noqa: E402
from ance.search.index import TorchIndex  # noqa: E402
from ance.search.knn import GROUP, block_search  # noqa: E402


def previous_search(q: torch.Tensor, blocks, k: int, q_block: int):
    """The TorchIndex search before the tiled two-stage kernel: float32 scores, per-block topk."""
    out_s, out_i = [], []
    for q0 in range(0, q.shape[0], q_block):
        qb = q[q0:q0 + q_block]
        best = None
        offset = 0
        for block in blocks:
            s = torch.mm(qb, block.T, out_dtype=torch.float32)
            ts, ti = s.topk(min(k, block.shape[0]), dim=1)
            ti = ti + offset
            offset += block.shape[0]
            if best is not None:
                ts, ti = torch.cat([best[0], ts], 1), torch.cat([best[1], ti], 1)
                ts, sel = ts.topk(k, dim=1)
                ti = ti.gather(1, sel)
            best = (ts, ti)
        out_s.append(best[0].cpu().numpy())
        out_i.append(best[1].cpu().numpy())
    return np.concatenate(out_s), np.concatenate(out_i)


def new_search(q: torch.Tensor, blocks, k: int, q_block: int, group: int = GROUP, overlap: bool = False):
    out_s, out_i = [], []
    for q0 in range(0, q.shape[0], q_block):
        s, i = block_search(q[q0:q0 + q_block], blocks, k, group=group, rescore=True, overlap=overlap)
        out_s.append(s.cpu().numpy())
        out_i.append(i.cpu().numpy())
    return np.concatenate(out_s), np.concatenate(out_i)


def fused_run(q: torch.Tensor, blocks, k: int, q_block: int):
    out_s, out_i = [], []
    for q0 in range(0, q.shape[0], q_block):
        s, i = fused.fused_search(q[q0:q0 + q_block], blocks, k)
        out_s.append(s.cpu().numpy())
        out_i.append(i.cpu().numpy())
    return np.concatenate(out_s), np.concatenate(out_i)


def tune_fused(q, blocks, k, q_block, n_queries):
    """Each kernel shape (rows, queries, warps, stages per program) on the first n_queries: seconds."""
    keep = (fused.BLOCK_ROWS, fused.BLOCK_QUERIES, fused.NUM_WARPS, fused.NUM_STAGES)
    out = {}
    for cfg in [(128, 128, 8, 3), (128, 128, 4, 4), (256, 128, 8, 3), (128, 256, 8, 3), (64, 128, 4, 4)]:
        fused.BLOCK_ROWS, fused.BLOCK_QUERIES, fused.NUM_WARPS, fused.NUM_STAGES = cfg
        try:
            fused_run(q[:q_block], blocks, k, q_block)
            out["x".join(map(str, cfg))] = round(timed(lambda: fused_run(q[:n_queries], blocks, k, q_block))[0], 3)
        except Exception as exc:  # a shape this GPU cannot hold: said
            out["x".join(map(str, cfg))] = f"{type(exc).__name__}: {exc}"[:120]
    fused.BLOCK_ROWS, fused.BLOCK_QUERIES, fused.NUM_WARPS, fused.NUM_STAGES = keep
    times = {c: t for c, t in out.items() if isinstance(t, float)}
    if times:
        best = min(times, key=times.get)
        fused.BLOCK_ROWS, fused.BLOCK_QUERIES, fused.NUM_WARPS, fused.NUM_STAGES = map(int, best.split("x"))
    return out


def faiss_search(q: torch.Tensor, corpus: torch.Tensor, k: int, q_block: int):
    import faiss

    res = faiss.StandardGpuResources()
    cfg = faiss.GpuIndexFlatConfig()
    cfg.useFloat16 = True
    index = faiss.GpuIndexFlatIP(res, corpus.shape[1], cfg)
    for lo in range(0, corpus.shape[0], 1 << 20):
        index.add(corpus[lo:lo + (1 << 20)].float().cpu().numpy())
    t = time.perf_counter()
    out_s, out_i = [], []
    for q0 in range(0, q.shape[0], q_block):
        s, i = index.search(q[q0:q0 + q_block].float().cpu().numpy(), k)
        out_s.append(s)
        out_i.append(i)
    return time.perf_counter() - t, np.concatenate(out_s), np.concatenate(out_i)


def timed(fn):
    torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t, out


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([len(set(x) & set(y)) / len(x) for x, y in zip(a[:2000].tolist(), b[:2000].tolist())]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--queries", type=int, default=20000)
    p.add_argument("--docs", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--k", type=int, default=200)
    p.add_argument("--block", type=int, default=262144, help="corpus rows per block (TorchIndex on a GPU)")
    p.add_argument("--group", type=int, default=GROUP, help="corpus rows per group (default ance.search.knn.GROUP)")
    p.add_argument("--skip-previous", action="store_true", help="leave out the previous search (slow)")
    p.add_argument("--faiss", action="store_true", help="also faiss-gpu GpuIndexFlatIP (fp16)")
    p.add_argument("--fused", action="store_true", help="also the fused kernel (ance.search.fused), after --tune")
    p.add_argument("--tune", type=int, default=0, metavar="Q",
                   help="time the fused kernel's shapes on the first Q queries and keep the fastest")
    p.add_argument("--qblock", type=int, default=0, help="queries per score tile (default: TorchIndex's tile budget / block)")
    p.add_argument("--also-qblocks", default="", metavar="N,N",
                   help="also time score tiles of these many queries, side by side, with their agreement and GPU peak")
    p.add_argument("--overlap", action="store_true",
                   help="also the tiles with each selection on a second stream (block_search overlap=True), side by side")
    p.add_argument("--profile", action="store_true", help="profile 4 query blocks of the new search, print the top ops")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)

    def unit(n):
        x = torch.randn(n, args.dim, device=dev, generator=g, dtype=torch.float16)
        return torch.nn.functional.normalize(x.float(), dim=1).half()

    corpus = torch.cat([unit(min(1 << 20, args.docs - lo)) for lo in range(0, args.docs, 1 << 20)])
    q = unit(args.queries)
    blocks = list(corpus.split(args.block))
    gemm_flop = 2.0 * args.queries * args.docs * args.dim
    out = {"group": args.group, "queries": args.queries, "docs": args.docs, "dim": args.dim, "k": args.k, "block": args.block,
           "gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    new_qb = args.qblock or max(1, TorchIndex._SCORE_BUDGET_GPU // args.block)
    out["qblock"] = new_qb
    new_search(q[:new_qb], blocks, args.k, new_qb, args.group)  # warm-up
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            new_search(q[: 4 * new_qb], blocks, args.k, new_qb, args.group)
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=50))
        return 0
    t_new, (s_new, i_new) = timed(lambda: new_search(q, blocks, args.k, new_qb, args.group))
    out["new_s"] = round(t_new, 2)
    out["new_gemm_tflops_equiv"] = round(gemm_flop / t_new / 1e12, 1)
    out["gpu_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    for qb in [int(x) for x in args.also_qblocks.split(",") if x.strip()]:
        torch.cuda.reset_peak_memory_stats()
        new_search(q[:qb], blocks, args.k, qb, args.group)  # warm-up
        t_qb, (s_qb, i_qb) = timed(lambda: new_search(q, blocks, args.k, qb, args.group))
        out[f"qblock_{qb}"] = {"s": round(t_qb, 2), "speedup": round(t_new / t_qb, 3),
                               "agreement": round(agreement(i_new, i_qb), 5),
                               "gpu_peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
    if args.overlap:
        torch.cuda.reset_peak_memory_stats()
        new_search(q[:new_qb], blocks, args.k, new_qb, args.group, overlap=True)  # warm-up
        t_ov, (s_ov, i_ov) = timed(lambda: new_search(q, blocks, args.k, new_qb, args.group, overlap=True))
        out["overlap"] = {"s": round(t_ov, 2), "speedup": round(t_new / t_ov, 3),
                          "agreement": round(agreement(i_new, i_ov), 5),
                          "max_score_diff": float(np.abs(s_ov - s_new).max()),
                          "gpu_peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
    if args.fused:
        if args.tune:
            out["fused_tune_s"] = tune_fused(q, blocks, args.k, new_qb, args.tune)
        out["fused_config"] = [fused.BLOCK_ROWS, fused.BLOCK_QUERIES, fused.NUM_WARPS, fused.NUM_STAGES]
        fused_run(q[:new_qb], blocks, args.k, new_qb)  # warm-up (compiles)
        torch.cuda.reset_peak_memory_stats()
        t_f, (s_f, i_f) = timed(lambda: fused_run(q, blocks, args.k, new_qb))
        out["fused_s"] = round(t_f, 2)
        out["fused_gemm_tflops_equiv"] = round(gemm_flop / t_f / 1e12, 1)
        out["fused_speedup_vs_new"] = round(t_new / t_f, 2)
        out["agreement_fused"] = round(agreement(i_new, i_f), 5)
        out["fused_max_score_diff"] = float(np.abs(s_f[:2000] - s_new[:2000]).max())
        out["fused_gpu_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    if not args.skip_previous:
        old_blocks = list(corpus.split(65536))
        old_qb = max(1, (1 << 26) // 65536)
        t_old, (s_old, i_old) = timed(lambda: previous_search(q, old_blocks, args.k, old_qb))
        out["previous_s"] = round(t_old, 2)
        out["speedup_vs_previous"] = round(t_old / t_new, 2)
        out["agreement_previous"] = round(agreement(i_new, i_old), 5)
    if args.faiss:
        try:
            t_f, s_f, i_f = faiss_search(q, corpus, args.k, 16384)
            out["faiss_gpu_s"] = round(t_f, 2)
            out["speedup_vs_faiss"] = round(t_f / t_new, 2)
            out["agreement_faiss"] = round(agreement(i_new, i_f), 5)
        except Exception as exc:  # faiss-gpu absent on this machine: said in the output
            out["faiss_gpu"] = f"not run: {type(exc).__name__}: {exc}"[:200]
    print(json.dumps(out))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
