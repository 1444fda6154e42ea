"""Where a trainer step's time goes: host batch building, the GradCache step,
clipping and AdamW timed separately (synchronised), the GPU's busy fraction,
and the top operators by host and by device time (torch.profiler).

    python benchmarks/profile_train.py --device cuda --batch 64 --chunk 32 [--chunks 32,64]

Diagnostic only: the comparison against sentence-transformers is bench_train.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import ance_step, common_args, default_model, emit, load_texts, sync  # noqa: E402


VARIANTS = {  # name: (chunk by tokens, prepared 4-D masks)
    "rows-hfmask": (False, False),   # as of the first H100 measurement
    "rows": (False, None),
    "tokens": (True, None),          # the trainer's default
}


def phases(model_path, texts, batch, chunk, steps, device, max_length, table_rows, variant="tokens",
           warmup=5, profiled=5):
    by_tokens, prepared = VARIANTS[variant]
    model, build, run = ance_step(model_path, texts, batch, chunk, device, max_length, "bf16",
                                  by_tokens=by_tokens, prepared=prepared)
    n = len(texts[0])
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5)
    timings: dict[str, list[float]] = {"build": [], "step": [], "clip": [], "adamw": []}

    def one(s, record):
        idx = np.arange(s * batch, (s + 1) * batch) % n
        marks = [time.perf_counter()]
        inputs = build(idx)
        sync(device)
        marks.append(time.perf_counter())
        run(inputs)
        sync(device)
        marks.append(time.perf_counter())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        sync(device)
        marks.append(time.perf_counter())
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        marks.append(time.perf_counter())
        if record:
            for key, a, b in zip(timings, marks, marks[1:]):
                timings[key].append(b - a)

    for s in range(warmup):
        one(s, False)
    for s in range(warmup, warmup + steps):
        one(s, True)
    out = {k: round(1000 * float(np.median(v)), 2) for k, v in timings.items()}
    out["total_ms"] = round(sum(out.values()), 2)

    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    sync(device)
    t0 = time.perf_counter()
    with profile(activities=acts) as prof:
        for s in range(100, 100 + profiled):
            one(s, False)
    wall = (time.perf_counter() - t0) / profiled
    ev = prof.key_averages()
    if device.startswith("cuda"):
        gpu = sum(e.self_device_time_total for e in ev if e.device_type.name == "CUDA") / profiled / 1e6
        out["profiled_wall_ms"] = round(1000 * wall, 2)
        out["gpu_kernel_ms"] = round(1000 * gpu, 2)
        out["gpu_busy_fraction"] = round(gpu / wall, 3)
        print(ev.table(sort_by="self_cuda_time_total", row_limit=table_rows, max_name_column_width=48),
              file=sys.stderr)
    print(ev.table(sort_by="self_cpu_time_total", row_limit=table_rows, max_name_column_width=48), file=sys.stderr)
    n_kernels = sum(e.count for e in ev if e.key == "cudaLaunchKernel") / profiled
    out["kernel_launches_per_step"] = n_kernels
    return out


def main(argv=None) -> int:
    ap = common_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    ap.add_argument("--chunks", default="32", help="comma-separated chunk sizes to profile")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--variants", default="tokens", help=f"comma-separated, of {', '.join(VARIANTS)}")
    ap.add_argument("--rows", type=int, default=15, help="rows of each operator table")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps before the timed ones")
    ap.add_argument("--profile-steps", type=int, default=5, help="steps under torch.profiler (its tables)")
    args = ap.parse_args(argv)
    model = args.model or default_model()
    texts = load_texts(args.data, args.batch * 120)
    results = {}
    for chunk in [int(c) for c in args.chunks.split(",")]:
        for variant in args.variants.split(","):
            key = f"{variant}-{chunk}"
            results[key] = phases(model, texts, args.batch, chunk, args.steps, args.device, args.max_length,
                                  args.rows, variant, args.warmup, args.profile_steps)
            print(json.dumps({"variant": key, **results[key]}), file=sys.stderr)
    emit(results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
