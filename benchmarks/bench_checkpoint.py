"""How long the trainer stops for a checkpoint: one synchronous write against the staged write
whose fsyncs, manifest and rename are committed in the background (trainer/checkpoint.py).

    python benchmarks/bench_checkpoint.py --out DIR [--repeat 5] [--load 0] [--json F]

A MiniLM-L6-shaped BERT (random weights, 22.7M parameters) with its AdamW state, written as
the trainer writes it (the model with ``save_pretrained``, the state as JSON + safetensors).
The two ways alternate, ``--repeat`` times each; reported: the median time the caller is
blocked, and the median time until the checkpoint is durable and visible. ``--load N`` runs N
other processes writing synchronous checkpoints to the same disk meanwhile (several runs on
one machine, as in docs/results.md's SQuAD studies).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import BertConfig, BertModel
from transformers.utils import logging as hf_logging

from ance.trainer.checkpoint import CommitThread, stage_checkpoint, write_checkpoint

MINILM = dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
              intermediate_size=1536, max_position_embeddings=512)


def model_and_state() -> tuple[BertModel, dict]:
    hf_logging.disable_progress_bar()
    torch.manual_seed(0)
    model = BertModel(BertConfig(**MINILM))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model(input_ids=torch.ones(2, 8, dtype=torch.long)).last_hidden_state.sum().backward()
    opt.step()
    return model, {"step": 1, "optimizer": opt.state_dict()}


def save_fn(model: BertModel):
    return lambda path: model.save_pretrained(str(path), safe_serialization=True)


def run(out: Path, repeat: int) -> dict:
    model, state = model_and_state()
    sync_block, bg_block, bg_done = [], [], []
    commits = CommitThread()
    for i in range(repeat):
        t0 = time.perf_counter()
        write_checkpoint(out / "sync", i, save_fn(model), state)
        sync_block.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        staged = stage_checkpoint(out / "staged", i, save_fn(model), state)
        commits.submit(staged)
        bg_block.append(time.perf_counter() - t0)
        commits.wait()
        bg_done.append(staged.write_s)
    med = statistics.median
    return {"params": sum(p.numel() for p in model.parameters()), "repeat": repeat,
            "sync_blocked_s": med(sync_block), "staged_blocked_s": med(bg_block),
            "staged_durable_s": med(bg_done), "blocked_ratio": med(bg_block) / med(sync_block)}


def load_loop(out: Path, stop: Path) -> None:
    model, state = model_and_state()
    i = 0
    while not stop.exists():
        write_checkpoint(out, i % 3, save_fn(model), state)
        i += 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="a scratch folder on the disk to measure")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--load", type=int, default=0, help="other processes writing checkpoints meanwhile")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--load-loop", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.load_loop:
        load_loop(args.out, args.load_loop)
        return 0
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    stop = args.out / "stop"
    others = [subprocess.Popen([sys.executable, __file__, "--out", str(args.out / f"load-{k}"),
                                "--load-loop", str(stop)]) for k in range(args.load)]
    try:
        if others:
            time.sleep(5)  # let them start writing
        result = {"load": args.load, **run(args.out, args.repeat)}
    finally:
        stop.touch()
        for p in others:
            p.wait()
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    shutil.rmtree(args.out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
