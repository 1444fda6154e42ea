"""The arithmetic of studies/equal_time.sh (issue 29): rates, step budgets, the sweep's pick, the table.

    python studies/equal_time.py rate-ance RUN_DIR [--skip 20]     # steps/s of a probe run (metrics.jsonl)
    python studies/equal_time.py budget RATES.json T [--async-share 0.1]   # steps each recipe gets in T s
    python studies/equal_time.py pick SWEEP_DIR BUDGETS.json [--prior PICK.json]   # the best recipe of each system
    python studies/equal_time.py has PICK.json NAME                 # exit 0 when an earlier pick scored NAME
    python studies/equal_time.py table FINAL_DIR BUDGETS.json PICK.json [--compare compare.jsonl]

Equal GPU time: every recipe's steps/s is probed ALONE on the GPU (nothing else running), then a
recipe gets ``floor(rate * T)`` steps; an async ance recipe gets ``floor(rate * T * (1 - share))``,
its inferencer's refreshes charged as ``share`` of the GPU time (``--async-share``, the measured
refresh seconds are reported beside it). The runs themselves may then share the GPU (MPS): the
budget is in steps, so contention changes wall time, not what each system gets.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path


def rate_of_steps(step_s: list[float]) -> float:
    """Steps per second from per-step seconds (the mean step time, inverted)."""
    if not step_s:
        raise ValueError("no timed steps")
    return 1.0 / statistics.fmean(step_s)


def budget(rate: float, seconds: float, share: float = 0.0) -> int:
    """Steps a recipe running at ``rate`` steps/s gets in ``seconds`` of GPU time, ``share`` of it charged elsewhere."""
    if rate <= 0 or seconds <= 0 or not 0 <= share < 1:
        raise ValueError(f"rate {rate}, seconds {seconds} and share {share} must be > 0, > 0 and in [0, 1)")
    return max(1, math.floor(rate * seconds * (1.0 - share)))


def pick(scores: dict[str, float], systems: dict[str, str]) -> dict[str, str]:
    """The best-scoring recipe name of each system (ties: the name first in sorted order)."""
    best: dict[str, str] = {}
    for name in sorted(scores):
        system = systems[name]
        if system not in best or scores[name] > scores[best[system]]:
            best[system] = name
    return best


def merge_prior(scores: dict[str, float], prior: dict[str, float], names) -> dict[str, float]:
    """This sweep's held-apart scores, and an earlier pick's for the recipes of ``names`` this sweep did not run
    (the same split and budgets: a run lost with a machine need not run again)."""
    return {**{n: float(prior[n]) for n in names if n in prior}, **scores}


def _ance_rate(run: Path, skip: int) -> float:
    events = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return rate_of_steps([e["step_s"] for e in events if e.get("event") == "step" and e["step"] > skip])


def _score(path: Path) -> float | None:
    try:
        return float(json.loads(path.read_text())["ndcg@10"])
    except (OSError, ValueError, KeyError):
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("rate-ance"); a.add_argument("run"); a.add_argument("--skip", type=int, default=20)
    b = sub.add_parser("budget"); b.add_argument("rates"); b.add_argument("seconds", type=float)
    b.add_argument("--async-share", type=float, default=0.1)
    c = sub.add_parser("pick"); c.add_argument("sweep"); c.add_argument("budgets"); c.add_argument("--prior")
    h = sub.add_parser("has"); h.add_argument("pick"); h.add_argument("name")
    d = sub.add_parser("table"); d.add_argument("final"); d.add_argument("budgets"); d.add_argument("pick")
    d.add_argument("--compare", default=None)
    args = ap.parse_args(argv)
    if args.cmd == "rate-ance":
        print(round(_ance_rate(Path(args.run), args.skip), 3))
    elif args.cmd == "budget":
        rates = json.loads(Path(args.rates).read_text())  # {name: {"system": st|ance, "rate": steps/s}}
        out = {name: {**r, "steps": budget(r["rate"], args.seconds, args.async_share if r["system"] == "ance" else 0.0),
                      "seconds": args.seconds, "charged_share": args.async_share if r["system"] == "ance" else 0.0}
               for name, r in rates.items()}
        print(json.dumps(out, indent=1))
    elif args.cmd == "pick":
        budgets = json.loads(Path(args.budgets).read_text())
        scores = {}
        for name in budgets:
            hits = sorted(Path(args.sweep, name).glob("*-13.dev.json"))
            s = _score(hits[0]) if hits else None
            if s is not None:
                scores[name] = s
        if args.prior:
            scores = merge_prior(scores, json.loads(Path(args.prior).read_text())["heldout_ndcg@10"], budgets)
        best = pick(scores, {n: budgets[n]["system"] for n in scores})
        print(json.dumps({"heldout_ndcg@10": scores, "best": best}, indent=1))
    elif args.cmd == "has":
        return 0 if args.name in json.loads(Path(args.pick).read_text()).get("heldout_ndcg@10", {}) else 1
    else:
        budgets, chosen = json.loads(Path(args.budgets).read_text()), json.loads(Path(args.pick).read_text())["best"]
        final = Path(args.final)
        rows = []
        for label, pattern in (("sentence-transformers", "st-*.dev.json"), ("ance async", "async-*.dev.json"),
                               ("ance static", "static-*.dev.json")):
            for f in sorted(final.glob(pattern)):
                m = json.loads(f.read_text())
                rows.append(f"| {label} | {f.stem.split('.')[0]} | {m.get('ndcg@10', float('nan')):.4f} | "
                            f"{m.get('mrr@10', float('nan')):.4f} | {m.get('recall@100', float('nan')):.4f} |")
        print("recipes:", json.dumps({s: {"name": n, **budgets[n]} for s, n in chosen.items()}))
        print("| system | run | nDCG@10 | MRR@10 | R@100 |\n|---|---|---:|---:|---:|")
        print("\n".join(rows))
        if args.compare and Path(args.compare).exists():
            print(Path(args.compare).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
