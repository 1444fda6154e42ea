"""`ance eval` over partial runs, several runs and datasets: missing queries, Holm, tables (issue 24)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from ance.cli import main
from ance.eval.table import build_table, holm, render


def test_holm_against_hand_computed_values():
    # sorted: .005 x4 = .02, .01 x3 = .03, .03 x2 = .06, .04 x1 = .04 -> max(.06, .04) = .06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([None, 0.5, 0.3]) == [None, pytest.approx(0.6), pytest.approx(0.6)]  # None: not in the family
    assert holm([0.6, 0.7]) == [1.0, 1.0]  # capped at 1
    assert holm([0.02]) == [0.02]  # one test: nothing to correct
    with pytest.raises(ValueError, match="not in"):
        holm([1.5])


QIDS = [f"q{i}" for i in range(6)]
BASE = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
BETTER = BASE + np.array([0.30, 0.25, 0.35, 0.20, 0.30, 0.28])  # clearly better
SAME = BASE + np.array([0.01, -0.02, 0.0, 0.02, -0.01, 0.005])


def per_query():
    m = "ndcg@10"
    return {d: {"bm25": (QIDS, {m: BASE}), "ance": (QIDS, {m: BETTER}), "static": (QIDS, {m: SAME})}
            for d in ("scifact", "squad")}


def test_table_tests_each_system_against_the_baseline_with_holm():
    table = build_table(per_query(), ["ndcg@10"], baseline="bm25")
    cells = {(c["dataset"], c["system"]): c for c in table["cells"]}
    p_better = stats.ttest_rel(BETTER, BASE).pvalue
    p_same = stats.ttest_rel(SAME, BASE).pvalue
    want = holm([p_better, p_same, p_better, p_same])  # the family: 2 systems x 2 datasets
    c = cells["squad", "ance"]
    assert c["p"] == pytest.approx(p_better) and c["p_holm"] == pytest.approx(want[2])
    assert c["diff"] == pytest.approx((BETTER - BASE).mean()) and c["significant"] is True
    assert cells["squad", "static"]["significant"] is False
    assert cells["scifact", "bm25"]["p"] is None and table["correction"] == "holm"
    # Holm by hand: p_better twice (x4, x3), p_same twice (x2, x1), monotone
    assert want[0] == pytest.approx(min(1, 4 * p_better))
    assert want[1] == pytest.approx(min(1, max(4 * p_better, 2 * p_same)))


def test_renderers():
    table = build_table(per_query(), ["ndcg@10"], baseline="bm25")
    md = render(table, "md")
    assert md.splitlines()[0] == "| ndcg@10 | scifact | squad | avg |"
    assert f"| ance | **{BETTER.mean():.4f}**† | **{BETTER.mean():.4f}**† | {BETTER.mean():.4f} |" in md
    assert "Holm correction over the 4 tests" in md
    tex = render(table, "latex")
    assert r"\begin{tabular}{lrrr}" in tex and r"\textbf{" in tex and r"$^\dagger$" in tex
    assert "ndcg@10 & scifact & squad & avg" in tex
    rows = render(table, "csv").splitlines()
    assert rows[0].startswith("dataset,system,measure,mean,n,n_missing") and len(rows) == 7
    assert json.loads(render(table, "json"))["baseline"] == "bm25"


# --------------------------------------------------------------------------- the command

QRELS = {"q1": {"d1": 1}, "q2": {"d2": 1}, "q3": {"d3": 1}, "q4": {"d4": 1}}


def write(path, run):
    with open(path, "w") as fh:
        for q, docs in run.items():
            for r, (d, s) in enumerate(sorted(docs.items(), key=lambda x: -x[1]), 1):
                fh.write(f"{q} Q0 {d} {r} {s} t\n")
    return str(path)


@pytest.fixture
def files(tmp_path):
    (tmp_path / "qrels.tsv").write_text("".join(f"{q}\t{d}\t1\n" for q, j in QRELS.items() for d in j))
    full = {q: {f"d{i}": 1.0, "x": 0.5} for i, q in enumerate(QRELS, 1)}  # every query: relevant at rank 1
    partial = {q: full[q] for q in ("q1", "q2")}
    other = {"q3": full["q3"], "q4": full["q4"]}
    return {"qrels": str(tmp_path / "qrels.tsv"), "full": write(tmp_path / "full.trec", full),
            "partial": write(tmp_path / "partial.trec", partial), "other": write(tmp_path / "other.trec", other)}


def test_partial_run_is_reported_and_skip_gives_the_subset_mean(files, capsys):
    assert main(["eval", "--run", files["partial"], "--qrels", files["qrels"]]) == 0
    out, err = capsys.readouterr()
    got = json.loads(out)
    assert got["ndcg@10"] == 0.5 and got["n_missing"] == 2 and got["n_queries"] == 4
    assert "2 of 4 judged queries have no ranking" in err
    assert main(["eval", "--run", files["partial"], "--qrels", files["qrels"], "--missing", "skip"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["ndcg@10"] == 1.0 and got["n_queries"] == 2 and got["n_missing"] == 2


def test_compare_runs_sharing_no_query_is_an_error(files, capsys):
    rc = main(["eval", "--compare", files["partial"], files["other"], "--qrels", files["qrels"]])
    assert rc == 2 and "share no judged query" in capsys.readouterr().err
    assert main(["eval", "--compare", files["full"], files["partial"], "--qrels", files["qrels"],
                 "--missing", "skip", "--bootstrap", "10"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["ndcg@10"]["n"] == 2 and got["ndcg@10"]["ties"] == 2 and got["n_missing"] == [0, 2]


def test_several_runs_and_datasets_in_one_table(files, tmp_path, capsys):
    argv = ["eval", "--qrels", f"a={files['qrels']}", f"b={files['qrels']}",
            "--run", f"a:full={files['full']}", f"a:half={files['partial']}", f"b:full={files['full']}",
            f"b:half={files['partial']}", "--measures", "ndcg@10", "--table", "latex", "--out", tmp_path / "t.tex"]
    assert main([str(x) for x in argv]) == 0
    out = capsys.readouterr().out
    assert "ndcg@10 & a & b & avg" in out and "(2 missing)" in out
    assert (tmp_path / "t.tex").read_text() == out
    rc = main(["eval", "--qrels", f"a={files['qrels']}", f"b={files['qrels']}", "--run", files["full"]])
    assert rc == 2 and "say which as DATASET:NAME=PATH" in capsys.readouterr().err
