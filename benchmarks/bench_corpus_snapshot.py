"""Reading a large corpus: parsing the file against loading its snapshot (ance.data.snapshot), side by
side in one process, as every role of a run does at its start (issue 26).

    python benchmarks/bench_corpus_snapshot.py --docs 1000000 --out benchmarks/results/corpus-snapshot-cpu.json

Writes a BEIR corpus.jsonl of ``--docs`` MS MARCO-length passages (~330 characters) to a temp dir,
then, ``--repeat`` times, parses it (the code before) and loads it through its snapshot.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    from ance.data import snapshot
    from ance.data.readers import read_beir_corpus_hashed

    with tempfile.TemporaryDirectory() as d:
        path, root = Path(d) / "corpus.jsonl", Path(d) / "cache"
        words = " ".join(f"word{i}" for i in range(55))
        with open(path, "w", encoding="utf-8") as f:
            for lo in range(0, args.docs, 100_000):
                f.write("".join(json.dumps({"_id": str(i), "title": "", "text": f"{words} {i}"}) + "\n"
                                for i in range(lo, min(lo + 100_000, args.docs))))
        t = time.perf_counter()
        first = snapshot.read_corpus_cached(path, "beir-corpus", read_beir_corpus_hashed, root)
        first_s = time.perf_counter() - t
        parse, load = [], []
        for _ in range(args.repeat):
            t = time.perf_counter()
            parsed = read_beir_corpus_hashed(path)
            parse.append(time.perf_counter() - t)
            t = time.perf_counter()
            loaded = snapshot.read_corpus_cached(path, "beir-corpus", read_beir_corpus_hashed, root)
            load.append(time.perf_counter() - t)
            assert loaded == parsed == first
        result = {"docs": args.docs, "file_mb": round(os.path.getsize(path) / 2**20, 1), "cpus": os.cpu_count(),
                  "first_read_with_snapshot_write_s": round(first_s, 3), "parse_s": [round(x, 3) for x in parse],
                  "snapshot_load_s": [round(x, 3) for x in load],
                  "ratio_best": round(min(load) / min(parse), 3)}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
