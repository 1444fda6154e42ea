"""`ance report A B C`: overlaid learning curves, loss (smoothed, raw faint, negatives and resume marks,
learning rate) and gap of several runs, in PNG, PDF and SVG (issue 24)."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from ance.cli import main
from ance.launch.overlay import Run, fit, smooth, spread


def fake_run(root, source: str, final: float, resume_at: int | None = None, steps: int = 60):
    root.mkdir(parents=True)
    (root / "config.yaml").write_text(yaml.safe_dump({
        "data": {"path": "../shared/data/squad", "eval_split": "dev"}, "train": {"checkpoint_every": 10},
        "negatives": {"source": source, "max_gap": 20, **({"static_file": "x.tsv"} if source == "static" else {})}}))
    def ev(step):
        return {"event": "eval", "step": step, "eval_ndcg@10": 0.75 + (final - 0.75) * step / steps}

    lines, version = [ev(0)], 0  # in time order, as a run writes them (readers drop steps re-run after a resume)
    for step in range(1, steps + 1):
        if source == "async" and step % 15 == 0:
            version = step - 5
        lines.append({"event": "step", "step": step, "loss": 1.5 * math.exp(-step / 30) + 0.05 * math.sin(step),
                      "lr": 1e-4 * min(1, step / 6), "gap": step - version if source == "async" else 0,
                      "negatives_version": version if source == "async" else None})
        if step % 10 == 0:
            lines.append(ev(step))
        if resume_at is not None and step == resume_at + 3:  # killed at resume_at + 3, resumed from resume_at
            lines.append({"event": "resume", "step": resume_at})
            lines += [{"event": "step", "step": s, "loss": 0.9, "lr": 1e-4, "gap": 0} for s in (resume_at + 1,)]
    (root / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root


def test_pure_helpers():
    assert smooth([1, 2, 3, 4], 2) == [1, 1.5, 2.5, 3.5]
    lo, hi = fit([0.752, 0.809], floor=0, ceil=1)
    assert 0.74 < lo < 0.752 and 0.809 < hi < 0.82  # fitted to the data, not 0..1


def test_spread_keeps_labels_apart_in_order_and_near_their_values():
    assert spread([0.5], 0.1) == [0.5]
    assert spread([0.1, 0.9], 0.1) == [0.1, 0.9]  # far apart: left where they are
    values = [0.8041, 0.8006, 0.8021, 0.8048, 0.3]
    at = spread(values, 0.002)
    order = sorted(range(len(values)), key=lambda i: values[i])
    assert [at[i] for i in order] == sorted(at)  # the labels keep the values' order
    assert all(b - a >= 0.002 - 1e-12 for a, b in zip(sorted(at), sorted(at)[1:]))
    assert at[4] == 0.3  # a lone value is not moved
    cluster = [at[i] for i in range(4)]
    assert math.isclose(sum(cluster) / 4, sum(values[:4]) / 4)  # a packed cluster centred on its values


def test_run_reads_curves_arrivals_and_resumes(tmp_path):
    r = Run(fake_run(tmp_path / "ance", "async", 0.81, resume_at=30))
    assert r.series("eval_ndcg@10", "evals")[0] == [0, 10, 20, 30, 40, 50, 60]
    assert r.arrivals() == [15, 30, 45, 60] and r.resumes == [30]
    assert r.dataset == "squad" and r.split == "dev" and r.max_gap == 20


def test_report_overlays_three_runs_in_three_formats(tmp_path, capsys):
    runs = [fake_run(tmp_path / "ance", "async", 0.81, resume_at=30), fake_run(tmp_path / "static", "static", 0.79),
            fake_run(tmp_path / "inbatch", "inbatch", 0.77)]
    out = tmp_path / "fig"
    assert main(["report", *map(str, runs), "--out", str(out), "--format", "png", "pdf", "svg",
                 "--label", "ANCE", "static", "in-batch"]) == 0
    printed = capsys.readouterr().out.split()
    assert sorted(printed) == sorted(str(out / f"{n}.{f}") for n in ("learning", "loss", "gap")
                                     for f in ("png", "pdf", "svg"))
    assert (out / "learning.png").read_bytes()[:4] == b"\x89PNG" and (out / "loss.pdf").read_bytes()[:4] == b"%PDF"
    assert b"<svg" in (out / "gap.svg").read_bytes()[:400]
    assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {0o644}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left
    assert main(["report", *map(str, runs)]) == 2  # several runs need --out
    with pytest.raises(Exception):
        Run(tmp_path / "nothing")


def test_legend_columns_fit_the_figure_width():
    from ance.launch.overlay import legend_columns

    short = ["ANCE", "static", "in-batch"]
    assert legend_columns(short, 8.0) == 3
    # five labels of ~35 characters: 8 in x 13 chars/in = 104 chars, each column 41 -> 2 columns
    long = [f"LoRA ANCE seed {s} (async) max_gap = 100" for s in range(5)]
    assert legend_columns(long, 8.0) == 104 // (len(long[0]) + 6)
    assert legend_columns(["x" * 200], 8.0) == 1  # never zero columns
    assert legend_columns([], 8.0) == 1


def test_titles_wrap_the_run_names_after_commas():
    from ance.launch.overlay import wrap_runs

    labels = [f"LoRA static seed {s}" for s in range(8)]
    title = wrap_runs("Learning curves: ndcg@10 — squad (dev)", labels, width=60)
    lines = title.split("\n")
    assert lines[0] == "Learning curves: ndcg@10 — squad (dev)"
    assert all(len(line) <= 60 for line in lines[1:]) and len(lines) > 2
    assert " ".join(lines[1:]) == "runs: " + ", ".join(labels)  # nothing lost, only wrapped
