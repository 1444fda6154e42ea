import math

import numpy as np
import pytest

from ance.run.errors import AnceError, DataError
from ance.negatives.files import IdTable, append_negatives, header_line, read_negatives, write_negatives
from ance.negatives.select import overlap, select_negatives

try:  # property tests run with hypothesis when installed, and with a seeded loop always
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:
    given = None


def make_case(rng, nq, n_docs, depth, lo, hi, keep, sampling):
    ranked = np.full((nq, depth), -1, np.int64)
    positives = []
    for q in range(nq):
        n = int(rng.integers(0, min(depth, n_docs) + 1))  # shorter lists end in pads
        ranked[q, :n] = rng.permutation(n_docs)[:n]
        # positives: some ranked, some not, sometimes none, repeats allowed
        positives.append(rng.choice(n_docs, size=int(rng.integers(0, 4)), replace=True))
    return ranked, positives, (lo, hi), keep, sampling


def check_case(ranked, positives, window, keep, sampling, seed):
    neg = select_negatives(ranked, positives, rank_window=window, keep=keep, sampling=sampling,
                           rng=np.random.default_rng(seed))
    assert neg.dtype == np.int32 and neg.shape == (len(ranked), keep)
    lo, hi = window
    for q in range(len(ranked)):
        pos = set(np.asarray(positives[q]).tolist())
        cands = [d for d in ranked[q, lo:hi].tolist() if d >= 0 and d not in pos]
        row = neg[q].tolist()
        got = [d for d in row if d >= 0]
        assert row[len(got):] == [-1] * (keep - len(got))  # pads only at the end
        assert not pos & set(got)  # never a positive
        assert set(got) <= set(cands)  # inside the window of original ranks
        assert len(got) == len(set(got)) == min(keep, len(cands))
        assert got == sorted(got, key=cands.index)  # in rank order
        if sampling == "top":
            assert got == cands[:keep]


def test_selection_properties_seeded():
    rng = np.random.default_rng(2024)
    for seed in range(300):
        depth = int(rng.integers(1, 30))
        lo = int(rng.integers(0, depth + 3))
        case = make_case(rng, int(rng.integers(1, 6)), int(rng.integers(1, 40)), depth, lo,
                         int(rng.integers(lo + 1, depth + 6)), int(rng.integers(1, 12)),
                         ("uniform", "top")[seed % 2])
        check_case(*case, seed)


if given is not None:

    @st.composite
    def cases(draw):
        depth = draw(st.integers(1, 30))
        lo = draw(st.integers(0, depth + 2))
        seed = draw(st.integers(0, 2**32 - 1))
        case = make_case(np.random.default_rng(seed), draw(st.integers(1, 6)), draw(st.integers(1, 40)), depth,
                         lo, draw(st.integers(lo + 1, depth + 5)), draw(st.integers(1, 12)),
                         draw(st.sampled_from(["uniform", "top"])))
        return (*case, seed)

    @settings(max_examples=300, deadline=None, database=None)  # no .hypothesis/ in the tree
    @given(cases())
    def test_selection_properties_hypothesis(case):
        check_case(*case)

else:

    def test_selection_properties_hypothesis():
        pytest.skip("hypothesis is not installed (the seeded property test ran instead)")


def test_window_applies_to_original_ranks():
    ranked = np.array([[10, 11, 12, 13, 14, 15]])
    # positive at rank 1: the window [0, 3) keeps 10 and 12, it does not slide to 13
    neg = select_negatives(ranked, [np.array([11])], rank_window=(0, 3), keep=5, sampling="top", rng=None)
    assert neg.tolist() == [[10, 12, -1, -1, -1]]
    neg = select_negatives(ranked, [np.array([])], rank_window=(2, 100), keep=2, sampling="top", rng=None)
    assert neg.tolist() == [[12, 13]]


def test_a_doc_listed_twice_counts_once():
    ranked = np.array([[5, 3, 5, 7, 3, -1]])
    neg = select_negatives(ranked, [np.array([7])], keep=5, sampling="top", rng=None)
    assert neg.tolist() == [[5, 3, -1, -1, -1]]


def test_uniform_is_deterministic_by_seed_and_covers_the_window():
    rng = np.random.default_rng(0)
    ranked = np.stack([rng.permutation(1000)[:200] for _ in range(50)])
    positives = [ranked[q, :3] for q in range(50)]

    def run(seed):
        return select_negatives(ranked, positives, rank_window=(0, 200), keep=20, rng=np.random.default_rng(seed))

    np.testing.assert_array_equal(run(7), run(7))
    assert (run(7) != run(8)).any()
    # uniform over ranks 3..199: picks spread over the window, not just the top
    picked_ranks = [np.flatnonzero(ranked[q] == d)[0] for q in range(50) for d in run(7)[q]]
    assert min(picked_ranks) >= 3 and np.mean(picked_ranks) > 60 and max(picked_ranks) > 150


def test_select_validates_arguments():
    ranked = np.zeros((2, 5), np.int64)
    pos = [np.array([], np.int64)] * 2
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="one array per query"):
        select_negatives(ranked, pos[:1], rng=rng)
    with pytest.raises(ValueError, match="0 <= lo < hi"):
        select_negatives(ranked, pos, rank_window=(5, 5), rng=rng)
    with pytest.raises(ValueError, match="keep"):
        select_negatives(ranked, pos, keep=0, rng=rng)
    with pytest.raises(ValueError, match="sampling"):
        select_negatives(ranked, pos, sampling="random", rng=rng)
    with pytest.raises(ValueError, match="default_rng"):
        select_negatives(ranked, pos, sampling="uniform", rng=None)
    with pytest.raises(ValueError, match="2-d integer"):
        select_negatives(ranked.astype(float), pos, rng=rng)


def test_overlap_hand_examples():
    prev = np.array([[1, 2, -1, -1], [5, 6, 7, 8], [-1, -1, -1, -1]])
    ranked = np.array([[2, 3, 4], [8, 7, 9], [1, 2, 3]])
    # query 0: 1/2, query 1: 2/4, query 2 has no previous negatives
    assert overlap(prev, ranked) == pytest.approx(0.5)
    assert overlap(np.array([[3, 3, 4]]), np.array([[3, 0]])) == pytest.approx(0.5)  # as sets
    assert overlap(prev[:1], np.array([[1, 2, -1]])) == 1.0
    assert math.isnan(overlap(np.full((2, 3), -1), ranked[:2]))
    with pytest.raises(ValueError, match="same queries"):
        overlap(prev, ranked[:2])
    assert overlap(prev, np.zeros((3, 0), np.int64)) == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_overlap_equals_per_row_sets(seed):
    """The one-searchsorted overlap against Python sets, with pads, repeated ids and ids shared across rows."""
    rng = np.random.default_rng(seed)
    prev = rng.integers(-1, 30, (40, 6))
    ranked = rng.integers(-1, 30, (40, 9))
    fractions = []
    for p, r in zip(prev.tolist(), ranked.tolist()):
        ps = {d for d in p if d >= 0}
        if ps:
            fractions.append(len(ps & {d for d in r if d >= 0}) / len(ps))
    assert overlap(prev, ranked) == pytest.approx(float(np.mean(fractions)))


QIDS = ["q0", "q1", "q2"]
DIDS = ["d0", "d1", "d2", "d3", "d4"]
QINDEX = {q: i for i, q in enumerate(QIDS)}
DINDEX = {d: i for i, d in enumerate(DIDS)}


def test_write_read_round_trip(tmp_path):
    neg = np.array([[3, 1, -1], [-1, -1, -1], [4, 0, 2]], np.int32)
    path = tmp_path / "step-000200.tsv"
    header = {"version": 200, "keep": 3, "note": "tab\tand\nnewline"}
    write_negatives(path, QIDS, neg, DIDS, header)
    text = path.read_text()
    assert text.startswith('# ance-negatives v1 {"version": 200')
    assert text.splitlines()[1:] == ["q0\td3,d1", "q1\t", "q2\td4,d0,d2"]
    assert not [p for p in tmp_path.iterdir() if p.name != path.name]  # no temp file left
    got_header, q_idx, got = read_negatives(path, QINDEX, DINDEX)
    assert got_header == header
    assert q_idx.dtype == np.int32 and q_idx.tolist() == [0, 1, 2]
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, neg)
    _, _, first2 = read_negatives(path, QINDEX, DINDEX, keep=2)
    assert first2.tolist() == [[3, 1], [-1, -1], [4, 0]]
    _, _, wide = read_negatives(path, QINDEX, DINDEX, keep=5)
    assert wide[0].tolist() == [3, 1, -1, -1, -1]


def test_append_partial_file(tmp_path):
    path = tmp_path / "step-000010.partial.tsv"
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(header_line({"version": 10}))
        append_negatives(fh, QIDS, [2], np.array([[1, -1]]), DIDS)
        append_negatives(fh, QIDS, np.array([0, 1]), np.array([[0, 4], [3, -1]]), DIDS)
    header, q_idx, neg = read_negatives(path, QINDEX, DINDEX)
    assert header == {"version": 10}
    assert q_idx.tolist() == [2, 0, 1]
    assert neg.tolist() == [[1, -1], [0, 4], [3, -1]]


def test_id_table_writes_what_append_negatives_writes(tmp_path):
    table = IdTable(QIDS, DIDS)
    neg = np.array([[0, 4], [3, -1], [-1, -1]])  # a full row, a short row, an empty row
    a, b = tmp_path / "a.tsv", tmp_path / "b.tsv"
    with open(a, "w", encoding="utf-8") as fh:
        append_negatives(fh, QIDS, [2, 0, 1], neg, DIDS)
    with open(b, "w", encoding="utf-8") as fh:
        table.append(fh, [2, 0, 1], neg)
    assert b.read_text() == a.read_text()
    assert table.lines([1], np.array([[4, 3]])) == [f"{QIDS[1]}\t{DIDS[4]},{DIDS[3]}\n"]
    with pytest.raises(ValueError, match="doc indices outside"):
        table.lines([0], np.array([[len(DIDS)]]))
    with pytest.raises(ValueError, match="q_idx holds indices outside"):
        table.lines([len(QIDS)], np.array([[0]]))


def test_id_table_refuses_ids_that_break_the_format_once():
    with pytest.raises(AnceError, match=r"doc id 'a,b' cannot be written.*rename it in the data"):
        IdTable(["q0"], ["x", "a,b"])
    with pytest.raises(AnceError, match="query id 'q.t1' cannot be written"):
        IdTable(["q0", "q\t1"], ["x"])
    with pytest.raises(AnceError, match="doc id ''"):
        IdTable(["q0"], ["x", ""])


def test_write_refuses_ids_that_break_the_format(tmp_path):
    with pytest.raises(ValueError, match="comma"):
        write_negatives(tmp_path / "n.tsv", ["q0"], np.array([[0]]), ["a,b"], {})
    with pytest.raises(ValueError, match="rows"):
        write_negatives(tmp_path / "n.tsv", QIDS, np.zeros((2, 1), np.int32), DIDS, {})
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "text, line, reason",
    [
        ("", 1, "empty file"),
        ("q0\td1\n", 1, "not a negatives file"),
        ("# ance-negatives v2 {}\n", 1, "v2 is not supported"),
        ("# ance-negatives v1 {oops\n", 1, "garbled header"),
        ("# ance-negatives v1 [1]\n", 1, "must be an object"),
        ("# ance-negatives v1 {}\nq0\td1\nq1 d2\n", 3, "no tab"),
        ("# ance-negatives v1 {}\nqX\td1\n", 2, "unknown query id 'qX'"),
        ("# ance-negatives v1 {}\nq0\td1,dX\n", 2, "unknown doc id 'dX'"),
        ("# ance-negatives v1 {}\nq0\td1,,d2\n", 2, "empty doc id"),
        ("# ance-negatives v1 {}\nq0\td1\n\nq0\td2\n", 4, "listed twice (first on line 2)"),
    ],
)
def test_read_errors_name_file_and_line(tmp_path, text, line, reason):
    path = tmp_path / "neg.tsv"
    path.write_text(text)
    with pytest.raises(DataError) as err:
        read_negatives(path, QINDEX, DINDEX)
    assert str(err.value).startswith(f"{path}:{line}: ")
    assert reason in str(err.value)
