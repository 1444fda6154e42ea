"""`ance eval --compare`: paired per-query statistics against a hand-computed example."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ance.cli import main
from ance.eval.compare import compare_runs, paired_comparison
from ance.eval.metrics import evaluate_per_query

# One relevant document a query, so nDCG@10 = 1/log2(rank + 1) and RR = 1/rank.
QRELS = {"q1": {"d1": 1}, "q2": {"d2": 1}, "q3": {"d3": 1}, "q4": {"d4": 1}, "q5": {"d9": 0}}
RANK_A = {"q1": 1, "q2": 1, "q3": 2, "q4": 1}
RANK_B = {"q1": 2, "q2": 3, "q3": 1, "q4": 1}


def make_run(ranks: dict[str, int]) -> dict[str, dict[str, float]]:
    run = {}
    for q, r in ranks.items():
        rel = "d" + q[1:]
        others = [f"x{i}" for i in range(4)]
        docs = others[: r - 1] + [rel] + others[r - 1:]
        run[q] = {d: 1.0 - i / 10 for i, d in enumerate(docs)}
    return run


def write_run(path, run):
    with open(path, "w") as fh:
        for q, docs in run.items():
            for rank, (d, s) in enumerate(sorted(docs.items(), key=lambda x: -x[1]), start=1):
                fh.write(f"{q} Q0 {d} {rank} {s} t\n")


def hand_t(d: list[float]) -> float:
    n = len(d)
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    return mean / (sd / math.sqrt(n))


def test_per_query_values_are_the_closed_forms():
    qids, vals = evaluate_per_query(make_run(RANK_A), QRELS, ("ndcg@10", "mrr@10"))
    assert qids == ["q1", "q2", "q3", "q4"]  # q5 has no relevant document
    assert vals["ndcg@10"] == pytest.approx([1, 1, 1 / math.log2(3), 1])
    assert vals["mrr@10"] == pytest.approx([1, 1, 0.5, 1])


def test_compare_hand_computed():
    out = compare_runs(make_run(RANK_A), make_run(RANK_B), QRELS, ("ndcg@10", "mrr@10"), n_boot=2000, seed=3)
    g = 1 / math.log2(3)
    d = [1 - g, 1 - 0.5, g - 1, 0.0]          # A - B per query, nDCG@10
    nd = out["ndcg@10"]
    assert nd["n"] == 4 and (nd["wins"], nd["ties"], nd["losses"]) == (2, 1, 1)
    assert nd["a"] == pytest.approx((3 + g) / 4) and nd["b"] == pytest.approx((g + 0.5 + 2) / 4)
    assert nd["diff"] == pytest.approx(sum(d) / 4) == pytest.approx(0.125)
    assert nd["t"] == pytest.approx(hand_t(d))
    # Wilcoxon: |d| = .369 (twice, ranks 1.5 each), .5 (rank 3); the zero is dropped; W- = 1.5
    assert nd["wilcoxon"] == pytest.approx(1.5)
    assert 0 < nd["p_wilcoxon"] <= 1 and 0 < nd["p_t"] < 1
    lo, hi = nd["ci"]
    assert min(d) <= lo <= nd["diff"] <= hi <= max(d)
    rr = out["mrr@10"]
    assert rr["diff"] == pytest.approx((0.5 + (1 - 1 / 3) - 0.5 + 0) / 4)
    assert rr["t"] == pytest.approx(hand_t([0.5, 2 / 3, -0.5, 0.0]))
    again = compare_runs(make_run(RANK_A), make_run(RANK_B), QRELS, ("ndcg@10",), n_boot=2000, seed=3)
    assert again["ndcg@10"]["ci"] == nd["ci"]  # seeded


def test_t_and_p_match_the_t_distribution():
    rng = np.random.default_rng(0)
    a = rng.random(50)
    b = a - 0.05 + rng.normal(0, 0.1, 50)
    out = paired_comparison(a, b, n_boot=500)
    d = a - b
    t = d.mean() / (d.std(ddof=1) / math.sqrt(50))
    assert out["t"] == pytest.approx(t)
    from scipy import stats
    assert out["p_t"] == pytest.approx(2 * stats.t.sf(abs(t), 49))


def test_identical_and_constant_runs():
    same = paired_comparison(np.array([0.2, 0.5, 1.0]), np.array([0.2, 0.5, 1.0]), n_boot=100)
    assert (same["diff"], same["t"], same["p_t"], same["p_wilcoxon"], same["ci"]) == (0.0, 0.0, 1.0, 1.0, [0.0, 0.0])
    assert (same["wins"], same["ties"], same["losses"]) == (0, 3, 0)
    shift = paired_comparison(np.array([0.3, 0.6]), np.array([0.2, 0.5]), n_boot=100)
    assert shift["t"] is None and shift["p_t"] == 0.0 and shift["diff"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="same length"):
        paired_comparison(np.array([1.0, 2.0]), np.array([1.0]))


def test_cli_compare_json(tmp_path, capsys):
    write_run(tmp_path / "a.trec", make_run(RANK_A))
    write_run(tmp_path / "b.trec", make_run(RANK_B))
    (tmp_path / "qrels.tsv").write_text("".join(f"{q}\t{d}\t{r}\n" for q, docs in QRELS.items()
                                                for d, r in docs.items()))
    rc = main(["eval", "--compare", str(tmp_path / "a.trec"), str(tmp_path / "b.trec"),
               "--qrels", str(tmp_path / "qrels.tsv"), "--bootstrap", "500"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out) == ["ndcg@10", "mrr@10", "recall@100", "recall@1000", "n_missing", "n_shared"]
    assert out["ndcg@10"]["diff"] == 0.125 and out["ndcg@10"]["n"] == 4
    assert out["n_shared"] == 4
    assert out["recall@100"]["p_t"] == 1.0  # every relevant doc retrieved by both
    rc = main(["eval", "--run", str(tmp_path / "a.trec"), "--qrels", str(tmp_path / "qrels.tsv")])
    assert rc == 0 and json.loads(capsys.readouterr().out)["ndcg@10"] == round((3 + 1 / math.log2(3)) / 4, 6)
    assert main(["eval", "--compare", str(tmp_path / "a.trec"), str(tmp_path / "b.trec"),
                 "--qrels", str(tmp_path / "qrels.tsv"), "--bootstrap", "0"]) == 2


def test_seeds_pooled_per_query():
    """A side given as several runs (a recipe's seeds): each query's value is their mean before pairing."""
    a, b = make_run(RANK_A), make_run(RANK_B)
    same = compare_runs([a, a], [b, b], QRELS, ("ndcg@10",), n_boot=500, seed=1)
    assert same == compare_runs(a, b, QRELS, ("ndcg@10",), n_boot=500, seed=1)
    half = compare_runs([a, b], [b, b], QRELS, ("ndcg@10",), n_boot=500, seed=1)["ndcg@10"]
    assert half["diff"] == pytest.approx(0.125 / 2) and half["n"] == 4
    with pytest.raises(ValueError, match="no run"):
        compare_runs([], [b], QRELS, ("ndcg@10",))


def test_cli_compare_takes_comma_separated_seeds(tmp_path, capsys):
    write_run(tmp_path / "a.trec", make_run(RANK_A))
    write_run(tmp_path / "b.trec", make_run(RANK_B))
    (tmp_path / "qrels.tsv").write_text("".join(f"{q}\t{d}\t{r}\n" for q, docs in QRELS.items()
                                                for d, r in docs.items()))
    a, b = str(tmp_path / "a.trec"), str(tmp_path / "b.trec")
    assert main(["eval", "--compare", f"{a},{b}", f"{b},{b}", "--qrels", str(tmp_path / "qrels.tsv"),
                 "--measures", "ndcg@10", "--bootstrap", "200"]) == 0
    assert json.loads(capsys.readouterr().out)["ndcg@10"]["diff"] == 0.0625
