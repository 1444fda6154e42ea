"""One JSON summary of the quality runs under a folder (studies/quality.sh's OUT):
dev metrics of each run, and for each training run its wall time, trainer wait,
async gap and refresh latencies read from metrics.jsonl.

    python studies/summarize_runs.py runs/quality            # JSON
    python studies/summarize_runs.py --table runs/quality    # one line a method
    python studies/summarize_runs.py --sweep runs/sweep      # quality_sweep.sh: lines + sweep.json
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def summarize_run(run: Path) -> dict:
    steps, refreshes = [], []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        try:
            e = json.loads(line)
        except json.JSONDecodeError:
            continue
        if e.get("event") == "step":
            steps.append(e)
        elif e.get("event") == "refresh" and not e.get("replayed"):
            refreshes.append(e)
    out: dict = {"steps": len(steps)}
    wall = run / "wall.json"
    if wall.exists():
        out.update(json.loads(wall.read_text()))
    if steps:
        out["wait_s"] = round(sum(s.get("wait_s") or 0.0 for s in steps), 3)
        out["step_s"] = round(sum(s.get("step_s") or 0.0 for s in steps), 3)
        # the training wall time: first step's start to the last step's end
        span = steps[-1]["time"] - steps[0]["time"] + (steps[0].get("step_s") or 0.0)
        out["train_span_s"] = round(span, 3)
        out["wait_fraction"] = round(out["wait_s"] / max(span, 1e-9), 4)
        gaps = [s["gap"] for s in steps if s.get("gap") is not None]
        out["max_gap"] = max(gaps) if gaps else None
        out["mean_gap"] = round(statistics.mean(gaps), 2) if gaps else None
    if refreshes:
        for key in ("latency_first_s", "latency_all_s", "encode_docs_per_s", "search_s", "overlap"):
            vals = [r[key] for r in refreshes if isinstance(r.get(key), (int, float))]
            if vals:
                out[f"refresh_{key}_median"] = round(statistics.median(vals), 4)
        out["refreshes"] = len(refreshes)
        evals = [(r["version"], r["eval_ndcg@10"]) for r in refreshes if r.get("eval_ndcg@10") is not None]
        out["eval_ndcg@10_by_version"] = evals
    return out


def summarize_folder(root: Path) -> dict:
    """``{run name: {"dev": metrics, ...run summary}}`` for every ``NAME.dev.json`` in ``root``."""
    summary: dict = {}
    for f in sorted(root.glob("*.dev.json")):
        name = f.name[: -len(".dev.json")]
        text = f.read_text().strip()  # empty when the job was stopped during its `ance eval`
        entry = {"dev": json.loads(text) if text else None}
        if (root / name / "metrics.jsonl").exists():
            entry.update(summarize_run(root / name))
        summary[name] = entry
    return summary


def method_lines(summary: dict, label: str = "") -> list[str]:
    """One line a method (the run name up to its first ``-``): each run's dev nDCG@10 and their mean."""
    by_method: dict[str, list] = {}
    for run, entry in summary.items():
        if entry["dev"] is not None:
            by_method.setdefault(run.split("-")[0], []).append((run, entry["dev"]["ndcg@10"]))
    return [f"{label + ' ' if label else ''}{method:8s} nDCG@10 " + "  ".join(f"{n}={v:.4f}" for n, v in vals)
            + f"  mean={statistics.mean(v for _, v in vals):.4f}" for method, vals in sorted(by_method.items())]


def main(argv: list[str]) -> int:
    """``FOLDER``: the JSON summary of one quality.sh folder. ``--table FOLDER``: its per-method lines.
    ``--sweep ROOT``: a quality_sweep.sh root, one folder a setting: per-method lines of every setting,
    and the summaries in ROOT/sweep.json."""
    if argv[:1] == ["--table"]:
        print("\n".join(method_lines(summarize_folder(Path(argv[1])))))
    elif argv[:1] == ["--sweep"]:
        root = Path(argv[1])
        sweep = {d.name: summarize_folder(d) for d in sorted(root.iterdir()) if d.is_dir()}
        for setting, summary in sweep.items():
            print("\n".join(method_lines(summary, f"{setting:14s}")))
        (root / "sweep.json").write_text(json.dumps(sweep, indent=1))
    else:
        print(json.dumps(summarize_folder(Path(argv[0] if argv else "runs/quality")), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
