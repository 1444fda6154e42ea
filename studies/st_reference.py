"""The sentence-transformers reference of docs/results.md, trained the way the
issue describes it: CachedMultipleNegativesRankingLoss, batch 64, lr 2e-5,
10 epochs over the SciFact training pairs, in-batch only or with one static hard
negative per pair drawn at random from the zero-shot model's top 30 (positives
excluded). Then the model is saved and evaluated with `ance retrieve` + `ance eval`
exactly like ance's own runs, so the two tables compare like for like.

    python studies/st_reference.py --model $MODEL --data ../shared/data/scifact \\
        --negatives none|static --out runs/st-ref [--static-file negs.tsv] [--seed 13]

`--static-file` takes a file made by `ance mine ... --rank-window 0 30 --n 30` (one
negative is drawn from its list per pair, once, as a static dataset column).
Written for the GPU machine; on CPU use tiny settings (--epochs 1 --max-pairs 64).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch


def pairs_of(data: str, max_pairs: int | None):
    from ance.data.dataset import load_dataset

    ds = load_dataset(data, splits=("train",))
    split = ds.split("train")
    rows = [(split.ids[q], split.texts[q], int(d)) for q in range(len(split)) for d in split.positives[q]]
    return ds, split, rows[:max_pairs] if max_pairs else rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model dir (e.g. $ANCE_DEVICE_MODEL)")
    ap.add_argument("--data", default="../shared/data/scifact")
    ap.add_argument("--negatives", choices=("none", "static"), default="none")
    ap.add_argument("--static-file", default=None, help="an `ance mine` file (required with --negatives static)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--mini-batch", type=int, default=32, help="CachedMNRL mini_batch_size")
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--warmup-ratio", type=float, default=0.1)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--max-pairs", type=int, default=None, help="first N training pairs (quick checks)")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    from sentence_transformers import SentenceTransformer
    from sentence_transformers.losses import CachedMultipleNegativesRankingLoss

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    ds, split, rows = pairs_of(args.data, args.max_pairs)
    negs = None
    if args.negatives == "static":
        from ance.negatives.files import read_negatives

        if not args.static_file:
            ap.error("--negatives static needs --static-file (make one with `ance mine`)")
        q_index = {q: i for i, q in enumerate(split.ids)}
        _, q_idx, neg = read_negatives(args.static_file, q_index, {d: i for i, d in enumerate(ds.corpus.ids)})
        table = {split.ids[q]: [int(d) for d in row if d >= 0] for q, row in zip(q_idx, neg)}
        rng = np.random.default_rng(args.seed)
        negs = []
        for qid, _, _ in rows:
            cands = table.get(qid, [])
            negs.append(int(rng.choice(cands)) if cands else int(rng.integers(len(ds.corpus))))

    model = SentenceTransformer(args.model, device=args.device).float()
    model.max_seq_length = args.max_length
    loss = CachedMultipleNegativesRankingLoss(model, mini_batch_size=args.mini_batch)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    steps_per_epoch = len(rows) // args.batch
    total = steps_per_epoch * args.epochs
    warm = int(total * args.warmup_ratio)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm)))
    amp = torch.bfloat16 if args.precision == "bf16" else None
    model.train()
    t0 = time.time()
    for epoch in range(args.epochs):
        order = np.random.default_rng([args.seed, epoch]).permutation(len(rows))
        for b in range(steps_per_epoch):
            idx = order[b * args.batch:(b + 1) * args.batch]
            columns = [[rows[i][1] for i in idx], [ds.corpus.passage(rows[i][2]) for i in idx]]
            if negs is not None:
                columns.append([ds.corpus.passage(negs[i]) for i in idx])
            feats = [{k: v.to(args.device) for k, v in model.tokenize(c).items() if torch.is_tensor(v)}
                     for c in columns]
            with torch.autocast(args.device.split(":")[0], dtype=amp, enabled=amp is not None):
                value = loss(feats, None)
            value.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
    out = Path(args.out)
    model.save(str(out / "model"))
    run = out / "dev.trec"
    subprocess.run([sys.executable, "-m", "ance.cli", "retrieve", "--model", str(out / "model"), "--data", args.data,
                    "--split", "dev", "--out", str(run), "--max-length", str(args.max_length), "--quiet"], check=True)
    res = subprocess.run([sys.executable, "-m", "ance.cli", "eval", "--run", str(run), "--qrels",
                          str(Path(args.data) / "qrels" / "dev.tsv")], check=True, capture_output=True, text=True)
    result = {"negatives": args.negatives, "seed": args.seed, "steps": total, "train_s": round(time.time() - t0, 1),
              "pairs": len(rows), **json.loads(res.stdout)}
    (out / "result.json").write_text(json.dumps(result))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
