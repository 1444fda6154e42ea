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
import os
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
    ap.add_argument("--mini-batch", type=int, default=32, help="CachedMNRL mini_batch_size; 0: plain MultipleNegativesRankingLoss (no gradient cache)")
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--scale", type=float, default=20.0,
                    help="the loss's similarity scale (1 / temperature; sentence-transformers' default 20 = ance's 0.05)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--max-steps", type=int, default=None,
                    help="this many steps instead of --epochs passes (the data is reshuffled each pass)")
    ap.add_argument("--probe-steps", type=int, default=0,
                    help="time this many steps after 10 warm-up steps, print {steps_per_s} and stop (no model saved)")
    ap.add_argument("--query-max-length", type=int, default=64, help="for the evaluation (ance retrieve)")
    ap.add_argument("--eval-args", default=os.environ.get("EVAL_ARGS", ""), help="more `ance retrieve` options, e.g. '--max-docs 800' (CPU smoke runs)")
    ap.add_argument("--warmup-ratio", type=float, default=0.1)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--max-pairs", type=int, default=None, help="first N training pairs (quick checks)")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    from sentence_transformers import SentenceTransformer
    from sentence_transformers.losses import CachedMultipleNegativesRankingLoss, MultipleNegativesRankingLoss

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
    loss = (CachedMultipleNegativesRankingLoss(model, scale=args.scale, mini_batch_size=args.mini_batch)
            if args.mini_batch else MultipleNegativesRankingLoss(model, scale=args.scale))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    steps_per_epoch = len(rows) // args.batch
    total = args.max_steps or steps_per_epoch * args.epochs
    if args.probe_steps:
        total = 10 + args.probe_steps
    warm = int(total * args.warmup_ratio)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm)))
    amp = torch.bfloat16 if args.precision == "bf16" else None
    model.train()
    t0 = time.time()
    step, epoch = 0, 0
    while step < total:
        order = np.random.default_rng([args.seed, epoch]).permutation(len(rows))
        epoch += 1
        for b in range(steps_per_epoch):
            if step == total:
                break
            if args.probe_steps and step == 10:
                torch.cuda.synchronize() if args.device.startswith("cuda") else None
                t_probe = time.time()
            step += 1
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
    if args.probe_steps:
        torch.cuda.synchronize() if args.device.startswith("cuda") else None
        rate = args.probe_steps / (time.time() - t_probe)
        print(json.dumps({"steps_per_s": round(rate, 3), "batch": args.batch, "probe_steps": args.probe_steps}))
        return 0
    train_s = time.time() - t0
    out = Path(args.out)
    model.save(str(out / "model"))
    # the retrieval runs in a child: give the GPU back first (2026-12-05: two such retrievals died with CUDA
    # out of memory while seven runs shared the GPU, this process still holding its model and optimizer)
    del model, opt, sched, loss
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    run = out / "dev.trec"
    retrying([sys.executable, "-m", "ance.cli", "retrieve", "--model", str(out / "model"), "--data", args.data,
              "--split", "dev", "--out", str(run), "--max-length", str(args.max_length),
              "--query-max-length", str(args.query_max_length), "--quiet", *args.eval_args.split()])
    res = subprocess.run([sys.executable, "-m", "ance.cli", "eval", "--run", str(run), "--qrels",
                          str(Path(args.data) / "qrels" / "dev.tsv")], check=True, capture_output=True, text=True)
    result = {"negatives": args.negatives, "seed": args.seed, "steps": total, "train_s": round(train_s, 1),
              "batch": args.batch, "lr": args.lr, "precision": args.precision,
              "pairs": len(rows), **json.loads(res.stdout)}
    (out / "result.json").write_text(json.dumps(result))
    print(json.dumps(result))
    return 0


def retrying(cmd: list[str], tries: int = 3, wait_s: float = 30.0) -> None:
    """Run ``cmd``; on failure (a GPU full for a moment) wait and run it again, ``tries`` times in all."""
    for attempt in range(1, tries + 1):
        if subprocess.run(cmd).returncode == 0:
            return
        if attempt < tries:
            print(f"st_reference: {cmd[3]} failed (attempt {attempt} of {tries}); again in {wait_s:.0f} s", flush=True)
            time.sleep(wait_s)
    raise SystemExit(f"st_reference: {cmd[3]} failed {tries} times: {' '.join(cmd)}")


if __name__ == "__main__":
    sys.exit(main())
