"""Trainer step times of runs side by side, from their metrics.jsonl (benchmarks/colocate.sh).

For each run dir: steps after the first 10 (warm), the mean and median ``step_s - wait_s`` (compute
only: a step that waited for negatives is not slowed by sharing, it is blocked), steps per second,
and the ratio to the first run's rate; for async runs also the mean step time of the steps taken
while a refresh was running (between a checkpoint and the trainer's ``refresh`` event of it).

    python benchmarks/colocate_summary.py RUN_STATIC RUN_ASYNC [RUN_ASYNC2 ...]
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def load(run: Path) -> list[dict]:
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def summary(run: Path) -> dict:
    events = load(run)
    steps = {e["step"]: e for e in events if e.get("event") == "step" and isinstance(e.get("step_s"), (int, float))}
    warm = [steps[s] for s in sorted(steps) if s > 10]
    compute = [e["step_s"] - (e.get("wait_s") or 0.0) for e in warm]
    refreshes = [e for e in events if e.get("event") == "refresh" and not e.get("replayed")]
    during = []
    for r in refreshes:
        written = r["time"] - (r.get("latency_done_s") or 0.0)
        during += [e["step_s"] - (e.get("wait_s") or 0.0) for e in warm if written <= e["time"] <= r["time"]]
    mean = statistics.mean(compute) if compute else float("nan")
    return {"run": run.name, "steps": len(warm), "mean_step_s": mean,
            "median_step_s": statistics.median(compute) if compute else float("nan"),
            "steps_per_s": 1 / mean if compute else float("nan"), "refreshes": len(refreshes),
            "wait_s": sum(e.get("wait_s") or 0.0 for e in warm),
            "steps_during_refresh": len(during), "mean_step_s_during_refresh": statistics.mean(during) if during
            else None}


def main(argv: list[str]) -> int:
    rows = [summary(Path(a)) for a in argv]
    base = rows[0]["steps_per_s"]
    print(json.dumps(rows))
    print("\n| run | warm steps | mean step s | median step s | steps/s | vs first | refreshes | steps during a "
          "refresh (mean s) | waited s |\n|---|---:|---:|---:|---:|---:|---:|---|---:|")
    for r in rows:
        during = (f"{r['steps_during_refresh']} ({r['mean_step_s_during_refresh']:.3f})"
                  if r["mean_step_s_during_refresh"] is not None else "-")
        print(f"| {r['run']} | {r['steps']} | {r['mean_step_s']:.3f} | {r['median_step_s']:.3f} | "
              f"{r['steps_per_s']:.2f} | {r['steps_per_s'] / base:.2f} | {r['refreshes']} | {during} | "
              f"{r['wait_s']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
