"""The held-apart split a recipe sweep is chosen on (issue 29): never the dev questions.

Writes a BEIR folder OUT beside DATA whose ``train`` split is DATA's training questions minus
N of them, and whose ``dev`` split IS those N held-apart training questions, so every study
script (which trains on ``train`` and evaluates on ``dev``) runs on it unchanged. The corpus and
the queries file are links to DATA's; DATA's own dev judgements are not in OUT at all.

Which questions: DATA's training query ids, sorted, permuted with numpy's
``default_rng(SEED)`` (SEED 0), the first N (2,000) -- a fixed subset, the same on every machine.

    python studies/holdout_split.py ../shared/data/squad /tmp/data/squad-holdout [--n 2000] [--seed 0]
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

import numpy as np


def split_ids(qids: list[str], n: int, seed: int) -> set[str]:
    """The held-apart query ids: ``n`` of the sorted ``qids`` drawn by ``default_rng(seed)``."""
    ordered = sorted(set(qids))
    if not 0 < n < len(ordered):
        raise ValueError(f"--n {n}: must be between 1 and {len(ordered) - 1} (the training questions less one)")
    pick = np.random.default_rng(seed).permutation(len(ordered))[:n]
    return {ordered[i] for i in pick}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", help="a BEIR folder with qrels/train.tsv")
    ap.add_argument("out", help="the folder to write (must not exist, or be one this script wrote)")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    data, out = Path(args.data).resolve(), Path(args.out)
    with open(data / "qrels" / "train.tsv", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    header, body = rows[0], rows[1:]
    try:
        held = split_ids([r[0] for r in body], args.n, args.seed)
    except ValueError as e:
        print(f"holdout_split: {e}", file=sys.stderr)
        return 2
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    for name in ("corpus.jsonl", "queries.jsonl"):
        link = out / name
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(data / name, link)
    for split, keep in (("train", lambda q: q not in held), ("dev", lambda q: q in held)):
        with open(out / "qrels" / f"{split}.tsv", "w", newline="") as f:
            w = csv.writer(f, delimiter="\t", lineterminator="\n")
            w.writerow(header)
            w.writerows(r for r in body if keep(r[0]))
    (out / "HOLDOUT").write_text(f"dev = {args.n} training questions of {data} (sorted ids, "
                                 f"numpy default_rng({args.seed}).permutation, first {args.n}); never its dev\n")
    print(f"{out}: train {len(body) - sum(r[0] in held for r in body)} judgements, dev (held apart) {len(held)} questions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
