"""select_negatives returns exactly the arrays of the selection it replaced (issue 10).

tests/negatives_reference.py keeps the old selection verbatim (two full stable argsorts). Every
case here runs both on the same inputs and generators: the outputs must be equal bit for bit and
the generators must end in the same state. Cases are drawn at random over shapes, windows, keep,
every sampling mode with and without denoise_margin and denoise_ratio (each, and both), and the edges: all -1 rows, keep beyond the
window, windows past the depth, rows whose every candidate is a positive, repeated docs, many
positives a row, scores with ties, +-inf, NaN and -0.0, more rows than one block, wide windows.
"""

import numpy as np
import pytest
from negatives_reference import reference_select_negatives

from ance.negatives.blocks import BLOCK_ROWS, COL_BITS, _first_in_order, _sortable, _uniform_pick
from ance.negatives.select import SAMPLING, select_negatives


def random_case(rng):
    """(ranked, positives, scores, lo, hi, keep) with a random mix of the edge cases."""
    nq = int(rng.choice([0, 1, int(rng.integers(2, 9)), int(rng.integers(BLOCK_ROWS - 3, 2 * BLOCK_ROWS + 5))]))
    depth = int(rng.integers(1, 45))
    n_docs = int(rng.integers(1, 70))
    ranked = np.full((nq, depth), -1, np.int64)
    style = rng.choice(["unique", "repeats", "pads", "all_pad"])
    for q in range(nq):
        if style == "repeats":  # docs listed twice in a row, -1 pads anywhere
            ranked[q] = rng.integers(-1, n_docs, depth)
        elif style != "all_pad":  # unique docs, shorter lists end in pads
            n = int(rng.integers(0, min(depth, n_docs) + 1)) if style == "pads" else min(depth, n_docs)
            ranked[q, :n] = rng.permutation(n_docs)[:n]
    many = int(rng.choice([1, 3, 12]))  # 12: more than DIRECT_POSITIVES, the sorted-codes path
    positives = []
    for q in range(nq):
        kind = rng.integers(0, 5)
        if kind == 0:  # every doc of the row is a positive
            positives.append(np.unique(ranked[q][ranked[q] >= 0]))
        elif kind == 1:
            positives.append(np.array([], np.int64))
        else:  # ranked or not, out of range, repeated
            positives.append(rng.integers(-2, n_docs + 3, int(rng.integers(1, many + 1))))
    scores = rng.standard_normal((nq, depth)).astype(rng.choice([np.float32, np.float64]))
    if rng.random() < 0.4:  # ties, infinities, NaN, negative zero
        scores = np.round(scores, 1)
        u = rng.random(scores.shape)
        scores[u < 0.1] = -np.inf
        scores[(u >= 0.1) & (u < 0.14)] = np.inf
        scores[(u >= 0.14) & (u < 0.18)] = np.nan
        scores[(u >= 0.18) & (u < 0.24)] = -0.0
    lo = int(rng.integers(0, depth + 3))  # past the depth sometimes
    hi = int(rng.integers(lo + 1, depth + 8))
    keep = int(rng.choice([1, int(rng.integers(2, 12)), int(rng.integers(12, 60))]))  # beyond the window too
    return ranked.astype(rng.choice([np.int64, np.int32])), positives, scores, lo, hi, keep


def assert_same(ranked, positives, seed, **kw):
    g_ref, g_new = np.random.default_rng(seed), np.random.default_rng(seed)
    want = reference_select_negatives(ranked, positives, rng=g_ref, **kw)
    got = select_negatives(ranked, positives, rng=g_new, **kw)
    assert got.dtype == want.dtype == np.int32 and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    assert g_new.integers(1 << 62) == g_ref.integers(1 << 62)  # the same numbers were drawn


@pytest.mark.parametrize("part", range(4))
def test_same_arrays_as_the_reference_over_random_cases(part):
    master = np.random.default_rng(1000 + part)
    for _ in range(60):
        ranked, positives, scores, lo, hi, keep = random_case(master)
        for sampling in SAMPLING:
            margin = float(master.choice([0.0, 0.3, -0.2]))
            ratio = float(master.choice([0.95, 0.5, 1.0, 1.3, 1e-3]))
            for denoise in ({}, {"denoise_margin": margin}, {"denoise_ratio": ratio},
                            {"denoise_margin": margin, "denoise_ratio": ratio}):
                kw = dict(rank_window=(lo, hi), keep=keep, sampling=sampling, scores=scores,
                          rank_decay=float(master.choice([0.5, 10.0, 1e-300])),
                          score_temperature=float(master.choice([0.05, 1.0, 1e-300])), **denoise)
                with np.errstate(all="ignore"):
                    assert_same(ranked, positives, int(master.integers(1 << 31)), **kw)


@pytest.mark.parametrize("sampling", SAMPLING)
def test_same_arrays_at_the_brokers_shape(sampling):
    """1,100 queries x depth 200 (several blocks), one positive each, a third of them ranked."""
    rng = np.random.default_rng(7)
    ranked = rng.integers(0, 8_800_000, (1100, 200))
    positives = [np.array([ranked[q, q % 200] if q % 3 == 0 else -5 - q]) for q in range(1100)]
    ranked[5, 10] = ranked[5, 3]  # one repeated doc
    scores = -np.sort(-rng.standard_normal((1100, 200), dtype=np.float32), axis=1)
    for margin, ratio in ((None, None), (0.1, None), (None, 0.95), (0.1, 0.95)):
        assert_same(ranked, positives, 11, rank_window=(0, 200), keep=20, sampling=sampling, scores=scores,
                    denoise_margin=margin, denoise_ratio=ratio)
        assert_same(ranked, positives, 12, rank_window=(3, 150), keep=200, sampling=sampling, scores=scores,
                    denoise_margin=margin, denoise_ratio=ratio)


@pytest.mark.parametrize("width", [2**COL_BITS, 2**COL_BITS + 1, 2**14 + 3])
def test_same_arrays_for_wide_windows(width):
    """Windows past the uniform packing's 2**10 columns and past int16 columns take other paths."""
    rng = np.random.default_rng(width)
    ranked = np.stack([rng.permutation(3 * width)[:width] for _ in range(3)])
    ranked[1, width // 2] = ranked[1, 0]
    positives = [ranked[0, :5], np.array([], np.int64), np.array([ranked[2, -1]])]
    scores = rng.standard_normal(ranked.shape)
    for sampling in SAMPLING:
        assert_same(ranked, positives, 3, rank_window=(0, width), keep=40, sampling=sampling, scores=scores)


def stable_first(key, n_pick):
    """The definition: the first n_pick of a stable argsort of each row."""
    order = np.argsort(key, axis=1, kind="stable")
    mask = np.zeros(key.shape, bool)
    for q, n in enumerate(n_pick):
        mask[q, order[q, :n]] = True
    return mask


def test_first_in_order_breaks_ties_by_column():
    rng = np.random.default_rng(3)
    floats = np.array([-np.inf, -1.0, -0.0, 0.0, 0.5, np.inf, np.nan, -np.nan])
    for i in range(600):
        rows, width = int(rng.integers(1, 6)), int(rng.integers(1, 30))
        if i % 2:  # integers, many ties
            key = rng.integers(-3, 4, (rows, width)).astype(np.int64)
        else:  # doubles: ties, -0.0 == 0.0, infinities, NaN (sorted last, the threshold too sometimes)
            key = rng.choice(floats, (rows, width), p=[0.1, 0.2, 0.1, 0.1, 0.2, 0.1, 0.1, 0.1])
        k = int(rng.integers(1, width + 1))
        n_pick = rng.integers(0, k + 1, rows)
        np.testing.assert_array_equal(_first_in_order(key, n_pick, k), stable_first(key, n_pick))


def test_sortable_orders_doubles_as_numpy_sorts_them():
    x = np.array([[0.0, -0.0, np.nan, -np.nan, np.inf, -np.inf, 1.5, -1.5, 0.0, -0.0, np.nan, 5e-324, -5e-324]])
    x = np.concatenate([x, np.random.default_rng(0).permutation(x[0])[None]])
    np.testing.assert_array_equal(np.argsort(_sortable(x), axis=1, kind="stable"), np.argsort(x, axis=1, kind="stable"))


def test_uniform_pick_with_tied_draws():
    """Draws on a coarse grid tie often: the smaller column must win, as in a stable argsort."""
    rng = np.random.default_rng(5)
    for _ in range(200):
        rows, width = int(rng.integers(1, 6)), int(rng.integers(1, 40))
        cand = rng.random((rows, width)) < 0.7
        draws = rng.integers(0, 4, (rows, width)) / 4.0
        k = int(rng.integers(1, width + 1))
        col = np.arange(width, dtype=np.int16)
        n_pick = np.minimum(cand.sum(axis=1), k)
        want = stable_first(np.where(cand, draws, 2.0), n_pick)
        cols = _uniform_pick(cand, draws, col, k)
        got = np.zeros((rows, width + 1), bool)
        np.put_along_axis(got, cols.astype(np.int64), True, axis=1)
        np.testing.assert_array_equal(got[:, :width], want)
        assert (np.diff(cols.astype(np.int64), axis=1) >= 0).all()  # in rank order, pads last
