"""Reading a large corpus: parsing the file against loading its snapshot (ance.data.snapshot), side by
side in one process, as every role of a run does at its start (issue 26).

    python benchmarks/bench_corpus_snapshot.py --docs 1000000 --out benchmarks/results/corpus-snapshot-cpu.json

Writes a BEIR corpus.jsonl of ``--docs`` MS MARCO-length passages (~330 characters) to a temp dir,
then, ``--repeat`` times, parses it (the code before) and loads it through its snapshot; then, in a
fresh process each, the memory a process holds after either read (VmRSS) and its peak (VmHWM): the
snapshot's texts stay in the memory-mapped file, so a process holds only the ids (and titles); and, as
opening a token cache did before ``Corpus.passages()`` became a view, the parse plus every passage joined.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


_MEMORY = """
import sys
from pathlib import Path
from ance.data import snapshot
from ance.data.readers import read_beir_corpus_hashed
path, root, way = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
if way.startswith("parse"):
    got = read_beir_corpus_hashed(path)
else:
    got = snapshot.read_corpus_cached(path, "beir-corpus", read_beir_corpus_hashed, root)
if way == "parse+passages-list":  # what opening a token cache did before: every passage joined, held
    from ance.data.dataset import Corpus

    held = list(Corpus(*got[:3], path, got[3]).passages())
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(int(status["VmRSS"].split()[0]) // 1024, int(status["VmHWM"].split()[0]) // 1024, len(got[0]))
"""


def _memory(way: str, path: Path, root: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", _MEMORY, str(path), str(root), way], check=True,
                         capture_output=True, text=True).stdout.split()
    return {"rss_after_read": int(out[0]), "peak": int(out[1]), "docs": int(out[2])}


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
        memory = {way: _memory(way, path, root) for way in ("parse+passages-list", "parse", "snapshot")}
        result = {"memory_mib": memory, "docs": args.docs, "file_mb": round(os.path.getsize(path) / 2**20, 1), "cpus": os.cpu_count(),
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
