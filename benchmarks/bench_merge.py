"""The broker's merge of per-shard top-k lists, timed for 1, 2, 4, 8 shards (docs/benchmarks.md).

Synthetic top-k: ``--queries`` queries, ``--depth`` hits per shard (sorted, disjoint global ids, as
the inferencers send them), merged chunk by chunk (``--chunk-queries``) the way the broker merges
(:func:`ance.search.topk.merge_topk`), beside the lexsort merge it replaced, on the same arrays in the
same process; then negatives selection on the merged lists, whose input no longer depends on N,
beside the selection it replaced (tests/negatives_reference.py, two full stable argsorts a chunk),
on the same lists and seeds, both checked equal.

    python benchmarks/bench_merge.py --queries 100000 --depth 200 --shards 1 2 4 8
    python benchmarks/bench_merge.py --queries 100000 --depth 200 --shards 1 --sampling rank --denoise-margin 0.1

A script, not a test: prints one JSON line and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from ance.negatives.select import SAMPLING, select_negatives
from ance.search.topk import merge_topk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from negatives_reference import reference_select_negatives  # noqa: E402


def lexsort_merge(scores_list, ids_list, k):
    """The merge before this change: one lexsort over (pad, -score, id) of the concatenated rows."""
    scores = np.concatenate(scores_list, axis=1)
    ids = np.concatenate(ids_list, axis=1)
    order = np.lexsort((ids, -scores, ids < 0), axis=-1)[:, :k]
    out_s = np.take_along_axis(scores, order, axis=1)
    out_i = np.take_along_axis(ids, order, axis=1)
    out_s[out_i < 0] = -np.inf
    return out_s, out_i


def shard_topk(rng, n_queries: int, depth: int, lo: int, hi: int):
    scores = -np.sort(-rng.standard_normal((n_queries, depth), dtype=np.float32), axis=1)
    ids = rng.integers(lo, hi, size=(n_queries, depth), dtype=np.int64)
    return scores, ids


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--queries", type=int, default=100_000)
    p.add_argument("--depth", type=int, default=200)
    p.add_argument("--chunk-queries", type=int, default=1024)
    p.add_argument("--docs", type=int, default=8_800_000)
    p.add_argument("--keep", type=int, default=20)
    p.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--sampling", choices=SAMPLING, default="uniform")
    p.add_argument("--denoise-margin", type=float, default=None)
    p.add_argument("--denoise-ratio", type=float, default=None,
                   help="NV-Retriever's ratio rule; the reference's is a per-row loop, so its 'before' time is no "
                        "baseline (time the old path without this flag)")
    p.add_argument("--no-baseline", action="store_true", help="skip the lexsort merge and the reference selection")
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    positives = [[int(x)] for x in rng.integers(0, args.docs, args.queries)]
    rows = []
    for n in args.shards:
        bounds = [(s * args.docs // n, (s + 1) * args.docs // n) for s in range(n)]
        parts = [shard_topk(rng, args.queries, args.depth, lo, hi) for lo, hi in bounds]
        timings = {"merge_s": 0.0, "lexsort_merge_s": 0.0, "select_s": 0.0, "reference_select_s": 0.0}
        for q0 in range(0, args.queries, args.chunk_queries):
            q1 = min(q0 + args.chunk_queries, args.queries)
            sl = [s[q0:q1] for s, _ in parts]
            il = [i[q0:q1] for _, i in parts]
            t0 = time.perf_counter()
            m_s, m_i = merge_topk(sl, il, args.depth)
            t1 = time.perf_counter()
            if not args.no_baseline:
                b_s, b_i = lexsort_merge(sl, il, args.depth)
                if not np.array_equal(b_i, m_i):
                    raise SystemExit(f"{n} shards, queries [{q0}, {q1}): the two merges disagree")
            kw = dict(rank_window=(0, args.depth), keep=args.keep, sampling=args.sampling, scores=m_s,
                      denoise_margin=args.denoise_margin, denoise_ratio=args.denoise_ratio)
            t2 = time.perf_counter()
            neg = select_negatives(m_i, positives[q0:q1], rng=np.random.default_rng([0, q0]), **kw)
            t3 = time.perf_counter()
            if not args.no_baseline:
                ref = reference_select_negatives(m_i, positives[q0:q1], rng=np.random.default_rng([0, q0]), **kw)
                if not np.array_equal(ref, neg):
                    raise SystemExit(f"{n} shards, queries [{q0}, {q1}): the two selections disagree")
            t4 = time.perf_counter()
            timings["merge_s"] += t1 - t0
            timings["lexsort_merge_s"] += t2 - t1
            timings["select_s"] += t3 - t2
            timings["reference_select_s"] += t4 - t3
        rows.append({"shards": n, **{k: round(v, 3) for k, v in timings.items()}})
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"bench": "merge", "queries": args.queries, "depth": args.depth, "sampling": args.sampling,
                      "denoise_margin": args.denoise_margin, "denoise_ratio": args.denoise_ratio,
                      "chunk_queries": args.chunk_queries,
                      "cpus": os.cpu_count(), "rows": rows}))
    print("\n| shards | merge s (key sort) | merge s (lexsort, before) | select s | select s (before) | select speed-up |"
          "\n|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if args.no_baseline:
            base, ref, ratio = "-", "-", "-"
        else:
            base, ref = f"{r['lexsort_merge_s']:.2f}", f"{r['reference_select_s']:.2f}"
            ratio = f"{r['reference_select_s'] / r['select_s']:.1f}x"
        print(f"| {r['shards']} | {r['merge_s']:.2f} | {base} | {r['select_s']:.2f} | {ref} | {ratio} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
