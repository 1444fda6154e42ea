"""The broker's host work per chunk after the merge (select, overlap, persist), before and now, side by side
in one process (issue 26).

At the MS MARCO shape the broker's work per chunk (merge, select, persist) overlaps the worker's k-NN; once
its sum over the chunks exceeds the k-NN's time, the refresh waits for it at the end (docs/benchmarks.md,
2026-12-06 third call: 18.1 s of broker work behind a 15.6 s k-NN on an H100). ``--queries`` train queries in
chunks of ``--chunk-queries``, ``--keep`` negatives each, drawn from ``--docs`` numeric doc ids (MS MARCO's
are numeric strings). The overlap with the previous version's negatives (a warm refresh computes it per chunk):

* ``overlap before``: a sort of every (row, id) code of the chunk (``np.unique``) and a membership test
  (the implementation before this change, copied here);
* ``overlap now``: ``ance.negatives.select.overlap``, each row sorted and one ``searchsorted``.

The persist:

* ``before``: ``append_negatives`` per chunk (the doc ids used checked at every chunk, each line joined from
  a Python list lookup);
* ``now``: ``IdTable`` built once (every id checked once, the doc ids as a numpy object array), then
  ``IdTable.append`` per chunk (one fancy index a chunk).

Each appends to its own file, flushed and fsynced per chunk as the broker does; the two files are compared
byte for byte. The chunks alternate between the two (before, now, now, before, ...), so drift in the machine's
speed falls on both. Also the selection per chunk (``select_negatives``, uniform), for scale.

    python benchmarks/bench_broker_chunk.py --queries 500000 --docs 8800000 --out benchmarks/results/broker-chunk-msmarco-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ance.negatives.blocks import _member, _pair_codes, _unique
from ance.negatives.files import IdTable, append_negatives
from ance.negatives.select import overlap, select_negatives


def overlap_before(previous: np.ndarray, ranked: np.ndarray) -> float:
    """``overlap`` as it was before the one-searchsorted version (commit 198171a)."""
    nq = previous.shape[0]
    n_codes = int(max(previous.max(initial=-1), ranked.max(initial=-1), 0)) + 1

    def code_set(a):
        rows = np.broadcast_to(np.arange(nq, dtype=np.int64)[:, None], a.shape)
        valid = a >= 0
        codes = _unique(_pair_codes(rows[valid], a[valid], n_codes))
        return codes, codes // n_codes

    prev_codes, prev_rows = code_set(previous)
    if len(prev_codes) == 0:
        return float("nan")
    new_codes, _ = code_set(ranked)
    hit = _member(prev_codes, new_codes)
    size = np.bincount(prev_rows, minlength=nq)
    hits = np.bincount(prev_rows[hit], minlength=nq)
    has = size > 0
    return float(np.mean(hits[has] / size[has]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--queries", type=int, default=500_000)
    p.add_argument("--docs", type=int, default=8_800_000)
    p.add_argument("--chunk-queries", type=int, default=2048)
    p.add_argument("--depth", type=int, default=200)
    p.add_argument("--keep", type=int, default=20)
    p.add_argument("--dir", default=None, help="where the two files go (default: a temp dir, removed)")
    p.add_argument("--out")
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    doc_ids = [str(i) for i in range(args.docs)]
    query_ids = [str(1_000_000 + i) for i in range(args.queries)]
    positives = [np.array([x]) for x in rng.integers(0, args.docs, args.queries)]
    t = time.perf_counter()
    table = IdTable(query_ids, doc_ids)
    build_s = time.perf_counter() - t
    times = {"before": 0.0, "now": 0.0, "select": 0.0, "overlap_before": 0.0, "overlap_now": 0.0}
    n_chunks = 0
    overlaps: dict[str, list] = {}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        paths = {k: Path(tmp) / f"{k}.tsv" for k in ("before", "now")}
        files = {k: open(v, "w", encoding="utf-8", newline="\n") for k, v in paths.items()}
        try:
            for q0 in range(0, args.queries, args.chunk_queries):
                q1 = min(q0 + args.chunk_queries, args.queries)
                ranked = rng.integers(0, args.docs, (q1 - q0, args.depth))
                t0 = time.perf_counter()
                neg = select_negatives(ranked, positives[q0:q1], rank_window=(0, args.depth), keep=args.keep,
                                       sampling="uniform", rng=np.random.default_rng([0, q0]))
                times["select"] += time.perf_counter() - t0
                previous = rng.integers(0, args.docs, neg.shape)
                previous[:, ::4] = ranked[:, ::20][:, :previous[:, ::4].shape[1]]  # some still ranked
                for k in (("overlap_before", "overlap_now") if n_chunks % 2 == 0 else ("overlap_now", "overlap_before")):
                    t0 = time.perf_counter()
                    o = (overlap_before if k == "overlap_before" else overlap)(previous, ranked)
                    times[k] += time.perf_counter() - t0
                    overlaps.setdefault(k, []).append(o)
                q_idx = np.arange(q0, q1, dtype=np.int32)
                order = ("before", "now") if n_chunks % 2 == 0 else ("now", "before")
                for k in order:
                    t0 = time.perf_counter()
                    if k == "before":
                        append_negatives(files[k], query_ids, q_idx, neg, doc_ids)
                    else:
                        table.append(files[k], q_idx, neg)
                    times[k] += time.perf_counter() - t0
                n_chunks += 1
        finally:
            for fh in files.values():
                fh.close()
        same = paths["before"].read_bytes() == paths["now"].read_bytes()
        size = paths["now"].stat().st_size
    if not same:
        raise SystemExit("the two files differ")
    if not np.allclose(overlaps["overlap_before"], overlaps["overlap_now"]):
        raise SystemExit("the two overlaps differ")
    result = {"bench": "persist", "queries": args.queries, "docs": args.docs, "chunk_queries": args.chunk_queries,
              "keep": args.keep, "chunks": n_chunks, "file_mb": round(size / 2**20, 1), "cpus": os.cpu_count(),
              "id_table_build_s": round(build_s, 3), "identical_files": same,
              **{f"{k}_s": round(v, 3) for k, v in times.items()},
              **{f"{k}_ms_per_chunk": round(1e3 * v / n_chunks, 2) for k, v in times.items()},
              "speedup": round(times["before"] / times["now"], 2),
              "overlap_speedup": round(times["overlap_before"] / times["overlap_now"], 2),
              "chunk_before_ms": round(1e3 * (times["select"] + times["overlap_before"] + times["before"]) / n_chunks, 2),
              "chunk_now_ms": round(1e3 * (times["select"] + times["overlap_now"] + times["now"]) / n_chunks, 2)}
    print(json.dumps(result))
    print(f"\n| {n_chunks} chunks of {args.chunk_queries} queries | s | ms a chunk |\n|---|---:|---:|")
    for k, label in (("select", "select_negatives (unchanged)"), ("overlap_before", "overlap (before)"),
                     ("overlap_now", "overlap (now)"), ("before", "persist: append_negatives (before)"),
                     ("now", "persist: IdTable.append (now)")):
        print(f"| {label} | {times[k]:.2f} | {1e3 * times[k] / n_chunks:.1f} |")
    print(f"IdTable built once in {build_s:.2f} s; persist {result['speedup']}x, overlap {result['overlap_speedup']}x; "
          f"a chunk {result['chunk_before_ms']} -> {result['chunk_now_ms']} ms; files identical: {same}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
