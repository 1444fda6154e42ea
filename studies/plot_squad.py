"""docs/results.md's SQuAD figures and table from studies/squad_study.sh's archive.

    python studies/plot_squad.py RUNS_DIR [--compare compare.jsonl [--recover]] [--img docs/img]

RUNS_DIR is the unpacked squad-runs.tgz (one folder a setting, ``METHOD-SEED.dev.json`` and
``METHOD-SEED/metrics.jsonl`` in each). Writes ``squad-gap.png`` (dev nDCG@10 against the measured
mean gap of the ANCE runs) and ``squad-learning.png`` (each ANCE run's refresh evaluations against
the checkpoint step, the static and in-batch runs' final dev nDCG@10 as lines), and prints the
markdown table (and the comparisons, when given).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from summarize_runs import summarize_folder  # noqa: E402


# squad_study.sh's comparison names -> run folders (ck100 is base/async-13)
RUNS = {"ance13": "base/async-13", "ance14": "base/async-14", "static13": "base/static-13",
        "static14": "base/static-14", "inbatch13": "inbatch/inbatch-13", "ck100": "base/async-13",
        "denoise": "denoise/async-13", "mix": "mix/async-13", "score": "score/async-13"}
MEASURES = ("ndcg@10", "mrr@10", "recall@100", "recall@1000")


def recover(root: Path, compare: Path) -> list[str]:
    """Write the dev metrics of runs whose ``.dev.json`` is empty (``ance eval`` cut by the job timeout)
    from the means ``ance eval --compare`` computed on the same TREC files; return the runs filled."""
    filled = []
    for raw in compare.read_text().splitlines():
        for name, res in json.loads(raw).items():
            if isinstance(res, str):
                continue
            for side, short in zip(("a", "b"), name.split("-")):
                run = RUNS.get(short) or (f"{short}/async-13" if short.startswith("ck") else None)
                f = root / f"{run}.dev.json"
                if run and (not f.exists() or not f.read_text().strip()):
                    f.write_text(json.dumps({m: res[m][side] for m in MEASURES}) + "\n")
                    filled.append(run)
    return filled


def load(root: Path) -> dict[str, dict]:
    """``{"setting/run": summary}`` over every setting folder."""
    out = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        for run, entry in summarize_folder(d).items():
            out[f"{d.name}/{run}"] = entry
    return out


def table(runs: dict[str, dict]) -> str:
    lines = ["| run | dev nDCG@10 | MRR@10 | R@100 | steps | train wall s | trainer wait s (fraction) | mean gap |",
             "|---|---|---|---|---|---|---|---|"]
    for name, e in runs.items():
        dev = e.get("dev") or {}
        if not dev:
            y, _ = final_ndcg(e)
            score = "" if y is None else f"{y:.4f} (last refresh eval)"
            gap = "" if e.get("mean_gap") is None else f"{e['mean_gap']:.0f}"
            lines.append(f"| {name} | {score} | | | {e.get('steps', '')} | | | {gap} |")
            continue
        wait = f"{e['wait_s']:.1f} ({e['wait_fraction']:.3f})" if "wait_s" in e else ""
        gap = "" if e.get("mean_gap") is None or name.startswith(("base/static", "inbatch")) else f"{e['mean_gap']:.0f}"
        lines.append(f"| {name} | {dev['ndcg@10']:.4f} | {dev['mrr@10']:.4f} | {dev['recall@100']:.4f} | "
                     f"{e.get('steps', '')} | {e.get('train_wall_s', '')} | {wait} | {gap} |")
    return "\n".join(lines)


def final_ndcg(e: dict) -> tuple[float | None, bool]:
    """A run's dev nDCG@10 at its last checkpoint, or (when `ance eval` did not run: the job timed out
    waiting for the final refresh) its last refresh evaluation, flagged True."""
    if (e.get("dev") or {}).get("ndcg@10") is not None:
        return e["dev"]["ndcg@10"], False
    curve = e.get("eval_ndcg@10_by_version") or []
    return (sorted(curve)[-1][1], True) if curve else (None, False)


def plots(runs: dict[str, dict], img: Path, prefix: str = "squad") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img.mkdir(parents=True, exist_ok=True)
    every = {name.split("/")[0]: int(name.split("/")[0][2:]) for name in runs if name.startswith("ck")}
    every["base"] = 100
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, e in runs.items():
        setting, run = name.split("/")
        y, from_refresh = final_ndcg(e)
        if setting in every and run.startswith("async") and e.get("mean_gap") is not None and y is not None:
            ax.scatter(e["mean_gap"], y, color="C0", facecolors="none" if from_refresh else "C0")
            ax.annotate(f"every {every[setting]} ({run[-2:]}){'*' if from_refresh else ''}", (e["mean_gap"], y),
                        fontsize=7, xytext=(4, 2), textcoords="offset points")
    for name, style in (("base/static-13", "--"), ("base/static-14", ":")):
        if name in runs:
            ax.axhline(runs[name]["dev"]["ndcg@10"], color="C1", ls=style, lw=1, label=f"static {name[-2:]}")
    _save(fig, ax, "measured mean gap (steps)", "dev nDCG@10, last checkpoint\n(*: the last refresh's eval)",
          "SQuAD: ANCE's async gap and quality", 7, img / f"{prefix}-gap.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (name, e) in enumerate(runs.items()):
        curve = e.get("eval_ndcg@10_by_version") or []
        if curve:
            xs, ys = zip(*sorted(curve))
            ax.plot(xs, ys, marker=".", ms=3, lw=1, label=name, color=f"C{i % 10}")
    for name, e in runs.items():
        if name.startswith(("base/static", "inbatch/")):
            ax.axhline(e["dev"]["ndcg@10"], ls="--", lw=0.8, color="grey")
            ax.annotate(name, (0, e["dev"]["ndcg@10"]), fontsize=6, xytext=(2, 2), textcoords="offset points")
    _save(fig, ax, "checkpoint step", "dev nDCG@10 (the refresh's own evaluation)",
          "SQuAD learning curves (ANCE runs; dashed: final static / in-batch)", 6, img / f"{prefix}-learning.png")


def _save(fig, ax, xlabel: str, ylabel: str, title: str, legend_size: int, path: Path) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _p(value: float) -> str:
    """p-values as `ance eval` rounds them (6 decimals): 0.0 means below 5e-7."""
    return "<1e-6" if value == 0 else f"{value:.3g}"


def comparisons(path: Path) -> str:
    lines = ["| A − B | measure | diff | 95% CI | t-test p | Wilcoxon p | wins/ties/losses |",
             "|---|---|---|---|---|---|---|"]
    for raw in path.read_text().splitlines():
        for name, res in json.loads(raw).items():
            if isinstance(res, str):
                lines.append(f"| {name} | {res} | | | | | |")
                continue
            for m in ("ndcg@10", "mrr@10", "recall@100"):
                r = res[m]
                lines.append(f"| {name} | {m} | {r['diff']:+.4f} | [{r['ci'][0]:+.4f}, {r['ci'][1]:+.4f}] | "
                             f"{_p(r['p_t'])} | {_p(r['p_wilcoxon'])} | {r['wins']}/{r['ties']}/{r['losses']} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", type=Path)
    p.add_argument("--compare", type=Path, default=None)
    p.add_argument("--img", type=Path, default=Path("docs/img"))
    p.add_argument("--prefix", default="squad", help="image names: PREFIX-gap.png, PREFIX-learning.png")
    p.add_argument("--recover", action="store_true",
                   help="fill empty METHOD-SEED.dev.json files from --compare's means first")
    args = p.parse_args(argv)
    if args.recover and args.compare:
        print("recovered dev metrics of:", ", ".join(recover(args.runs, args.compare)) or "none", file=sys.stderr)
    runs = load(args.runs)
    print(table(runs))
    plots(runs, args.img, args.prefix)
    if args.compare:
        print()
        print(comparisons(args.compare))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
