import math

import numpy as np
import pytest

from ance.run.errors import DataError
from ance.eval.metrics import MEASURES, evaluate_ranked, evaluate_run
from ance.eval.trec import read_qrels, read_trec_run, write_trec_run

QRELS = {
    "q1": {"d2": 2, "d3": 1, "d4": 1, "d9": 0},
    "q2": {"d5": 1},
    "q3": {"d7": 1},  # missing from the run: counts 0
    "q4": {"d8": 0},  # no relevant document: not part of the mean
}
RUN = {
    "q1": {"d1": 0.9, "d2": 0.8, "d3": 0.7, "d9": 0.6},
    "q2": {**{f"x{i}": 1.0 - i / 100 for i in range(10)}, "d5": 0.5},  # relevant at rank 11
    "q4": {"d8": 1.0},
    "q5": {"d1": 1.0},  # not judged: ignored
}


def test_hand_computed_values():
    got = evaluate_run(RUN, QRELS)
    assert list(got) == ["ndcg@10", "mrr@10", "recall@100", "recall@1000"]
    # q1: DCG = 2/log2(3) + 1/log2(4); IDCG = 2/log2(2) + 1/log2(3) + 1/log2(4) (linear gain)
    ndcg_q1 = (2 / math.log2(3) + 1 / 2) / (2 + 1 / math.log2(3) + 1 / 2)
    assert ndcg_q1 == pytest.approx(0.562727, abs=1e-6)
    assert got["ndcg@10"] == pytest.approx(ndcg_q1 / 3)  # q2 (rank 11) and q3 (no results) give 0
    assert got["mrr@10"] == pytest.approx(0.5 / 3)
    assert got["recall@100"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert got["recall@1000"] == pytest.approx(got["recall@100"])


def test_matches_pytrec_eval():
    pytrec_eval = pytest.importorskip("pytrec_eval")
    rng = np.random.default_rng(0)
    docs = [f"d{i}" for i in range(300)]
    qrels, run = {}, {}
    for q in range(25):
        qid = f"q{q}"
        judged = rng.choice(300, size=8, replace=False)
        qrels[qid] = {docs[d]: int(rng.integers(0, 3)) for d in judged}
        if q % 7 == 3:
            continue  # no results for this query
        ranked = rng.permutation(300)[: int(rng.integers(5, 300))]
        run[qid] = {docs[d]: float(1000 - r + rng.random() * 0.5) for r, d in enumerate(ranked)}
    got = evaluate_run(run, qrels)

    judged = [q for q, d in qrels.items() if max(d.values()) > 0]
    full = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100", "recall.1000"}).evaluate(run)
    top10 = {q: dict(sorted(d.items(), key=lambda x: -x[1])[:10]) for q, d in run.items()}
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)

    def mean(res, key):
        return sum(res.get(q, {}).get(key, 0.0) for q in judged) / len(judged)

    assert got["ndcg@10"] == pytest.approx(mean(full, "ndcg_cut_10"), abs=1e-9)
    assert got["recall@100"] == pytest.approx(mean(full, "recall_100"), abs=1e-9)
    assert got["recall@1000"] == pytest.approx(mean(full, "recall_1000"), abs=1e-9)
    assert got["mrr@10"] == pytest.approx(mean(rr, "recip_rank"), abs=1e-9)
    assert 0 < got["ndcg@10"] < 1


def test_measure_names():
    got = evaluate_run(RUN, QRELS, measures=("recall@1", "map@10", "ndcg@10"))
    assert set(got) == {"recall@1", "map@10", "ndcg@10"}
    with pytest.raises(ValueError, match="unknown measure 'bleu'"):
        evaluate_run(RUN, QRELS, measures=("bleu",))
    with pytest.raises(ValueError, match="no relevant document"):
        evaluate_run(RUN, {"q4": {"d8": 0}})


def test_evaluate_ranked_and_run_file_round_trip(tmp_path):
    query_ids = ["q1", "q2", "q3"]
    doc_ids = ["d1", "d2", "d3", "d9", "d5"] + [f"x{i}" for i in range(10)]
    ids = np.full((3, 12), -1, np.int64)
    scores = np.full((3, 12), -np.inf, np.float32)
    ids[0, :4], scores[0, :4] = [0, 1, 2, 3], [0.9, 0.8, 0.7, 0.6]
    ids[1, :11], scores[1, :11] = list(range(5, 15)) + [4], np.linspace(1, 0.5, 11)
    got = evaluate_ranked(query_ids, ids, scores, doc_ids, QRELS)
    want = evaluate_run({q: d for q, d in RUN.items() if q in ("q1", "q2")}, QRELS)
    assert got == pytest.approx(want)

    path = tmp_path / "run.trec"
    write_trec_run(path, query_ids, ids, scores, doc_ids, tag="test")
    lines = path.read_text().splitlines()
    assert lines[0] == "q1 Q0 d1 1 0.899999976 test"
    assert len(lines) == 4 + 11  # pads skipped, q3 has no line
    assert lines[-1].split()[:4] == ["q2", "Q0", "d5", "11"]
    assert [p.name for p in tmp_path.iterdir()] == ["run.trec"]
    run = read_trec_run(path)
    assert run["q1"] == {"d1": pytest.approx(0.9), "d2": pytest.approx(0.8), "d3": pytest.approx(0.7),
                         "d9": pytest.approx(0.6)}
    assert evaluate_run(run, QRELS) == pytest.approx(want)
    # float32 scores survive the text round trip exactly
    assert np.float32(run["q2"]["x3"]) == scores[1, 3]


def test_write_trec_run_validates(tmp_path):
    with pytest.raises(ValueError, match="whitespace"):
        write_trec_run(tmp_path / "r", ["q 1"], np.array([[0]]), np.array([[1.0]]), ["d1"])
    with pytest.raises(ValueError, match="one row per query"):
        write_trec_run(tmp_path / "r", ["q1", "q2"], np.array([[0]]), np.array([[1.0]]), ["d1"])
    assert not list(tmp_path.iterdir())


def test_read_qrels_formats(tmp_path):
    beir = tmp_path / "dev.tsv"
    beir.write_text("query-id\tcorpus-id\tscore\nq1\td2\t2\nq1\td3\t1\nq2\td5\t1\n")
    trec = tmp_path / "qrels.txt"
    trec.write_text("q1 0 d2 2\nq1 0 d3 1\n\nq2 0 d5 1\n")
    want = {"q1": {"d2": 2, "d3": 1}, "q2": {"d5": 1}}
    assert read_qrels(beir) == want
    assert read_qrels(trec) == want


@pytest.mark.parametrize(
    "text, line, reason",
    [
        ("query-id\tcorpus-id\tscore\nq1\td2\n", 2, "expected 3 columns"),
        ("q1 0 d2 1\nq1 d3 1\n", 2, "expected 4 columns"),
        ("q1\td2\thigh\n", 1, "not an integer"),
        ("q1 0 d2 1\nq1 0 d2 0\n", 2, "judged 1 before, now 0"),
        ("q1 d2\n", 1, "BEIR"),
    ],
)
def test_read_qrels_errors(tmp_path, text, line, reason):
    path = tmp_path / "qrels.tsv"
    path.write_text(text)
    with pytest.raises(DataError) as err:
        read_qrels(path)
    assert str(err.value).startswith(f"{path}:{line}: ") and reason in str(err.value)


def test_read_qrels_empty(tmp_path):
    path = tmp_path / "qrels.tsv"
    path.write_text("query-id\tcorpus-id\tscore\n")
    with pytest.raises(DataError, match="no judgements"):
        read_qrels(path)


@pytest.mark.parametrize(
    "text, line, reason",
    [
        ("q1 Q0 d1 1 0.5 t\nq1 Q0 d2 2 0.4\n", 2, "expected 6 columns"),
        ("q1 Q0 d1 1 high t\n", 1, "not a number"),
        ("q1 Q0 d1 1 0.5 t\nq1 Q0 d1 2 0.4 t\n", 2, "appears twice"),
    ],
)
def test_read_trec_run_errors(tmp_path, text, line, reason):
    path = tmp_path / "run.trec"
    path.write_text(text)
    with pytest.raises(DataError) as err:
        read_trec_run(path)
    assert str(err.value).startswith(f"{path}:{line}: ") and reason in str(err.value)


def test_default_measures():
    assert MEASURES == ("ndcg@10", "mrr@10", "recall@100", "recall@1000")
