"""The negatives options of the SQuAD study: rank / score sampling, denoising (margin and ratio), static mixing."""

from __future__ import annotations

import numpy as np
import pytest

from ance.cli import main as ance_main
from ance.run.config import load_config
from ance.run.errors import ConfigError
from ance.negatives.select import select_negatives
from ance.trainer.batches import sample_negatives

RNG = np.random.default_rng


def ranked_rows(nq: int, depth: int) -> np.ndarray:
    return np.tile(np.arange(100, 100 + depth, dtype=np.int64), (nq, 1))


def mean_rank(neg: np.ndarray) -> float:
    return float((neg[neg >= 0] - 100).mean())


def test_rank_sampling_prefers_the_top_and_tends_to_uniform_and_top():
    ranked = ranked_rows(2000, 30)
    pos = [np.array([0])] * 2000
    kw = dict(rank_window=(0, 30), keep=3)
    uniform = select_negatives(ranked, pos, sampling="uniform", rng=RNG(0), **kw)
    steep = select_negatives(ranked, pos, sampling="rank", rank_decay=3.0, rng=RNG(0), **kw)
    flat = select_negatives(ranked, pos, sampling="rank", rank_decay=1e9, rng=RNG(0), **kw)
    top = select_negatives(ranked, pos, sampling="rank", rank_decay=1e-3, rng=RNG(0), **kw)
    assert mean_rank(uniform) == pytest.approx(14.5, abs=0.3)
    assert mean_rank(flat) == pytest.approx(14.5, abs=0.3)
    # exp(-r/3): P(rank r first) = (1 - e^-1/3) e^-r/3, so the three picks average a few ranks
    assert 2.0 < mean_rank(steep) < 6.0
    assert (top == np.array([100, 101, 102])).all()
    assert (np.diff(steep, axis=1) > 0).all()  # rows in rank order, no repeats


def test_score_sampling_follows_the_scores_not_the_ranks():
    ranked = ranked_rows(500, 10)
    scores = np.tile(np.linspace(0.0, 0.9, 10), (500, 1))  # best score at the last rank
    pos = [np.array([0])] * 500
    cold = select_negatives(ranked, pos, rank_window=(0, 10), keep=2, sampling="score", scores=scores,
                            score_temperature=1e-3, rng=RNG(1))
    assert (cold == np.array([108, 109])).all()
    warm = select_negatives(ranked, pos, rank_window=(0, 10), keep=1, sampling="score", scores=scores,
                            score_temperature=0.1, rng=RNG(1))
    # P(doc i) ∝ exp(0.1 i / 0.1) = e^i: the mean is sum i e^i / sum e^i
    w = np.exp(np.arange(10.0))
    assert mean_rank(warm) == pytest.approx(float((np.arange(10) * w).sum() / w.sum()), abs=0.15)
    with pytest.raises(ValueError, match="scores shaped like ranked"):
        select_negatives(ranked, pos, keep=2, sampling="score", rng=RNG(0))
    with pytest.raises(ValueError, match="score_temperature"):
        select_negatives(ranked, pos, keep=2, sampling="score", scores=scores, score_temperature=0, rng=RNG(0))


def test_denoising_drops_what_scores_above_the_positive_minus_the_margin():
    # query 0: ranks d5 d6 P d7 d8; query 1: its positive is not listed
    ranked = np.array([[5, 6, 1, 7, 8], [5, 6, 3, 7, 8]])
    scores = np.array([[0.9, 0.75, 0.7, 0.62, 0.3], [0.9, 0.75, 0.7, 0.62, 0.3]])
    pos = [np.array([1]), np.array([2])]
    kw = dict(rank_window=(0, 5), keep=5, sampling="top", rng=None, scores=scores)
    assert select_negatives(ranked, pos, **kw).tolist() == [[5, 6, 7, 8, -1], [5, 6, 3, 7, 8]]
    assert select_negatives(ranked, pos, denoise_margin=0.0, **kw).tolist() == [[7, 8, -1, -1, -1],
                                                                                   [5, 6, 3, 7, 8]]
    assert select_negatives(ranked, pos, denoise_margin=-0.1, **kw).tolist()[0] == [6, 7, 8, -1, -1]
    assert select_negatives(ranked, pos, denoise_margin=0.1, **kw).tolist()[0] == [8, -1, -1, -1, -1]
    # the positive outside the rank window still sets the threshold
    assert select_negatives(ranked, pos, denoise_margin=0.0, **{**kw, "rank_window": (0, 2)}).tolist()[0] == [-1] * 5


def test_denoise_ratio_drops_what_scores_above_the_ratio_times_the_positive():
    # NV-Retriever's TopK-PercPos, ratio 0.95. Query 0: P 0.80, then d5 0.79, d6 0.76, d7 0.70, d8 0.50.
    # The bar is 0.95 x 0.80 = 0.76 (exactly 0.76 in float64, as the literal): strictly above is dropped,
    # so d5 (0.79 > 0.76) goes and d6 (0.76, not above) stays, d7 and d8 too.
    # Query 1: the same list, its positive (doc 2) not ranked: nothing to compare with, all kept.
    ranked = np.array([[1, 5, 6, 7, 8], [3, 5, 6, 7, 8]])
    scores = np.array([[0.80, 0.79, 0.76, 0.70, 0.50]] * 2, dtype=np.float64)
    assert 0.95 * 0.80 == 0.76
    pos = [np.array([1]), np.array([2])]
    kw = dict(rank_window=(0, 5), keep=5, sampling="top", rng=None, scores=scores)
    assert select_negatives(ranked, pos, **kw).tolist() == [[5, 6, 7, 8, -1], [3, 5, 6, 7, 8]]
    assert select_negatives(ranked, pos, denoise_ratio=0.95, **kw).tolist() == [[6, 7, 8, -1, -1],
                                                                                   [3, 5, 6, 7, 8]]
    # ratio 0.9: bar 0.72, so d5 0.79 and d6 0.76 go; ratio 1: only what scores above the positive (none)
    assert select_negatives(ranked, pos, denoise_ratio=0.9, **kw).tolist()[0] == [7, 8, -1, -1, -1]
    assert select_negatives(ranked, pos, denoise_ratio=1.0, **kw).tolist()[0] == [5, 6, 7, 8, -1]
    # with denoise_margin: dropped when either rule drops it. margin 0 drops nothing here (bar 0.80),
    # so the ratio decides; margin 0.05 (bar 0.75) drops d6 too; margin 0.2 (bar 0.60) drops d7 as well
    both = {**kw, "denoise_ratio": 0.95}
    assert select_negatives(ranked, pos, denoise_margin=0.0, **both).tolist()[0] == [6, 7, 8, -1, -1]
    assert select_negatives(ranked, pos, denoise_margin=0.05, **both).tolist()[0] == [7, 8, -1, -1, -1]
    assert select_negatives(ranked, pos, denoise_margin=0.2, **both).tolist()[0] == [8, -1, -1, -1, -1]
    # the positive outside the rank window still sets the bar
    assert select_negatives(ranked, pos, denoise_ratio=0.95, **{**kw, "rank_window": (1, 3)}).tolist()[0] == [
        6, -1, -1, -1, -1]


def test_denoise_ratio_with_a_negative_positive_score_is_taken_as_written():
    # P scores -0.20: the bar 0.95 x -0.20 = -0.19 lies ABOVE the positive, so d5 -0.10 and d6 -0.15 go,
    # d7 -0.195 stays although it scores above the positive (below the bar), and d8 -0.30 stays
    ranked = np.array([[5, 6, 7, 1, 8]])
    scores = np.array([[-0.10, -0.15, -0.195, -0.20, -0.30]])
    got = select_negatives(ranked, [np.array([1])], rank_window=(0, 5), keep=5, sampling="top", rng=None,
                           scores=scores, denoise_ratio=0.95)
    assert got.tolist() == [[7, 8, -1, -1, -1]]


def test_denoise_ratio_needs_scores_and_a_positive_ratio():
    ranked, pos = ranked_rows(2, 5), [np.array([0])] * 2
    with pytest.raises(ValueError, match="denoise_ratio need scores shaped like ranked"):
        select_negatives(ranked, pos, keep=2, sampling="top", rng=None, denoise_ratio=0.95)
    for bad in (0, -0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="denoise_ratio must be a finite number > 0"):
            select_negatives(ranked, pos, keep=2, sampling="top", rng=None, scores=np.zeros((2, 5)), denoise_ratio=bad)


def test_mixing_takes_the_static_share():
    nq, n = 400, 8
    fresh = np.tile(np.arange(10, 40, dtype=np.int32), (nq, 1))
    static = np.tile(np.arange(50, 80, dtype=np.int32), (nq, 1))
    pos = [np.array([0])] * nq
    q = np.arange(nq)
    half = sample_negatives(fresh, q, pos, n, 100, RNG(0), static=static, mix=0.5)
    assert ((half >= 50).mean()) == pytest.approx(0.5, abs=0.03)
    assert all(len(set(r)) == n for r in half.tolist())
    assert (sample_negatives(fresh, q, pos, n, 100, RNG(0), static=static, mix=1.0) >= 50).all()
    # mix 0 is the unmixed draw, the same numbers from the same rng
    assert (sample_negatives(fresh, q, pos, n, 100, RNG(3), static=static, mix=0.0)
            == sample_negatives(fresh, q, pos, n, 100, RNG(3))).all()
    # a refreshed row that is still empty (in-batch warm-up) is made up from the static row
    empty = np.full_like(fresh, -1)
    assert (sample_negatives(empty, q, pos, n, 100, RNG(0), static=static, mix=0.25) >= 50).all()
    # positives never drawn from either table
    static_with_pos = static.copy()
    static_with_pos[:, 0] = 0
    got = sample_negatives(fresh, q, pos, n, 100, RNG(0), static=static_with_pos, mix=1.0)
    assert not (got == 0).any()


@pytest.mark.parametrize("override, message", [
    (["negatives.sampling=gumbel"], "negatives.sampling"),
    (["negatives.rank_decay=0"], "negatives.rank_decay: must be > 0"),
    (["negatives.score_temperature=-1"], "negatives.score_temperature: must be > 0"),
    (["negatives.mix_static=1.5"], "negatives.mix_static: must be a fraction"),
    (["negatives.mix_static=0.5"], "needs negatives.source=async and negatives.static_file"),
    (["negatives.mix_static=0.5", "negatives.source=static", "negatives.static_file=x.tsv"],
     "needs negatives.source=async"),
    (["negatives.source=async", "negatives.warmup=bm25", "negatives.sampling=score"], "bm25 warm-up"),
])
def test_config_validation(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, override)


def test_defaults_leave_selection_unchanged():
    cfg = load_config(None, [])
    n = cfg.negatives
    assert (n.sampling, n.denoise_margin, n.denoise_ratio, n.mix_static) == ("uniform", None, None, 0.0)
    ok = load_config(None, ["negatives.source=async", "negatives.static_file=x.tsv", "negatives.mix_static=0.5",
                            "negatives.sampling=score", "negatives.denoise_margin=0.05",
                            "negatives.denoise_ratio=0.95"])
    assert (ok.negatives.denoise_margin, ok.negatives.denoise_ratio) == (0.05, 0.95)
    assert load_config(None, ["negatives.denoise_ratio=1"]).negatives.denoise_ratio == 1.0


@pytest.mark.parametrize("value, says", [
    ("0", "negatives.denoise_ratio: must be a finite number > 0"),
    ("-0.5", "negatives.denoise_ratio: must be a finite number > 0"),
    (".inf", "negatives.denoise_ratio: must be a finite number > 0"),
    ("high", "negatives.denoise_ratio: expected a number"),
])
def test_denoise_ratio_out_of_range_is_a_one_line_config_error(value, says, capsys):
    with pytest.raises(ConfigError, match=says):
        load_config(None, [f"negatives.denoise_ratio={value}"])
    assert ance_main(["config", "show", f"negatives.denoise_ratio={value}"]) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
