"""RefreshTally: a refresh's stats from its shards' stages, the broker's timers, the overlap
and the eval split's merged top-k (pure, no sockets)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from ance.broker.refresh import Checkpoint, Job
from ance.broker.stats import CHUNK_TIMERS, STAGES, RefreshTally, eval_depth


def job(eval_: bool = False) -> Job:
    j = Job(job_id=7, ckpt=Checkpoint(step=30, path="ckpt", received_at=100.0), n_shards=2,
            ranges=[(0, 5), (5, 10)], eval=eval_, started_at=100.5, reassigned=1)
    j.done = {0: {"load_s": 0.1, "encode_s": 2.0, "search_s": 0.5, "shard_s": 3.0},
              1: {"load_s": 0.3, "encode_s": 1.0, "search_s": float("nan"), "shard_s": 2.0}}
    return j


def test_stats_take_the_slowest_shard_and_sum_the_broker_timers():
    tally = RefreshTally(depth=50)
    tally.add_time("merge_s", 0.25)
    tally.add_time("merge_s", 0.25)
    tally.add_overlap(0.5, 2)
    tally.add_overlap(1.0, 2)
    st = tally.stats(job(), n_docs=10, n_train=4, keep=20, now=102.5)
    assert st["load_s"] == 0.3 and st["encode_s"] == 2.0 and st["shard_s"] == 3.0
    assert st["search_s"] == 0.5            # NaN of one shard is not a maximum
    assert st["index_s"] is None            # no shard reported it
    assert st["encode_docs_per_s"] == 5.0   # n_docs / the slowest encode
    assert st["queue_s"] == pytest.approx(0.5) and st["refresh_s"] == pytest.approx(2.0)
    assert st["merge_s"] == 0.5 and all(k in st for k in CHUNK_TIMERS)
    assert st["overlap"] == pytest.approx(0.75)
    assert (st["n_docs"], st["n_queries"], st["depth"], st["keep"], st["reassigned"], st["replayed"]) == \
        (10, 4, 50, 20, 1, False)
    assert set(STAGES) <= set(st)
    json.dumps(st)


def test_first_version_has_no_overlap_and_eval_needs_an_eval_split():
    st = RefreshTally(depth=50).stats(job(), n_docs=10, n_train=4, keep=20)
    assert st["overlap"] is None and not any(k.startswith("eval_") for k in st)
    with pytest.raises(ValueError, match="no eval split"):
        RefreshTally(depth=50).add_eval(0, 1, np.zeros((1, 100)), np.zeros((1, 100)))


def test_eval_measures_from_the_merged_eval_top_k():
    tally = RefreshTally(n_eval=2, depth=50)
    assert tally.eval_ids.shape == (2, eval_depth(50)) == (2, 100)
    k = eval_depth(50)
    ids = np.full((2, k), -1, np.int64)
    scores = np.full((2, k), -np.inf, np.float32)
    ids[0, :3], scores[0, :3] = [4, 1, 2], [0.9, 0.8, 0.7]   # q0's relevant doc "d4" first
    ids[1, :3], scores[1, :3] = [0, 3, 9], [0.9, 0.8, 0.7]   # q1's relevant doc "d3" second
    tally.add_eval(0, 2, ids, scores)
    split = SimpleNamespace(ids=["q0", "q1"], qrels={"q0": {"d4": 1}, "q1": {"d3": 1}})
    st = tally.stats(job(eval_=True), n_docs=10, n_train=4, keep=20, eval_split=split,
                     doc_ids=[f"d{i}" for i in range(10)])
    assert st["eval_mrr@10"] == pytest.approx(0.75)
    assert st["eval_recall@100"] == pytest.approx(1.0)
    assert 0.8 < st["eval_ndcg@10"] < 1.0 and "eval_recall@1000" not in st and st["eval_s"] >= 0


def test_per_shard_rows_say_which_worker_and_stage_held_the_refresh_back():
    j = job()
    j.done_by = {0: "inferencer-0", 1: "inferencer-1"}
    j.done[0].update(device="cuda:0", gpu_peak_bytes=3 << 30, host_peak_bytes=5 << 30)
    j.done[1].update(device="cuda:1", gpu_peak_bytes=1 << 30, host_peak_bytes=4 << 30)
    st = RefreshTally(depth=50).stats(j, n_docs=10, n_train=4, keep=20, now=102.5)
    rows = st["shards"]
    assert [(r["shard"], r["worker"], r["device"], r["n_docs"]) for r in rows] == [
        (0, "inferencer-0", "cuda:0", 5), (1, "inferencer-1", "cuda:1", 5)]
    assert rows[0]["encode_s"] == 2.0 and rows[0]["encode_docs_per_s"] == 2.5 and rows[1]["encode_docs_per_s"] == 5.0
    assert rows[1]["search_s"] is None and rows[0]["index_s"] is None  # NaN and missing alike
    assert rows[0]["gpu_peak_bytes"] == 3 << 30 and st["gpu_peak_bytes"] == 3 << 30
    assert st["broker_host_peak_bytes"] > 0
    json.dumps(st)
