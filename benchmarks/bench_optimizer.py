"""AdamW's step over a model's parameters, side by side in one process: torch's per-tensor loop (its
CPU default), the multi-tensor (foreach) version and the fused kernel, which trainer/optim.py takes.

    python benchmarks/bench_optimizer.py --model all-MiniLM-L6-v2 --device cpu [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

VARIANTS = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def time_step(params: list[torch.Tensor], device: str, steps: int, **kw) -> float:
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01, **kw)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(3):
        opt.step()
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        opt.step()
    sync()
    return (time.perf_counter() - t) / steps


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="all-MiniLM-L6-v2", help="a model dir or name (ance.model.biencoder.resolve_model)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2, help="rounds over the variants, interleaved; best kept")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from transformers import AutoModel

    from ance.model.biencoder import resolve_model

    model = AutoModel.from_pretrained(resolve_model(args.model)).to(args.device)
    params = list(model.parameters())
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    best = {name: float("inf") for name in VARIANTS}
    for _ in range(args.repeats):
        for name, kw in VARIANTS.items():
            best[name] = min(best[name], time_step(params, args.device, args.steps, **kw))
    result = {"bench": "optimizer", "model": args.model, "device": args.device, "torch": torch.__version__,
              "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
              "n_params": sum(p.numel() for p in params), "ms": {k: v * 1e3 for k, v in best.items()},
              "fused_vs_loop": best["loop"] / best["fused"], "fused_vs_foreach": best["foreach"] / best["fused"]}
    print(json.dumps(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
