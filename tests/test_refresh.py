"""The broker's pure state machine (no sockets): jobs, shards, chunks, worker loss."""

from __future__ import annotations

import numpy as np
import pytest

from ance.negatives.select import select_negatives
from ance.broker.refresh import RefreshError, RefreshState, shard_ranges
from ance.broker.stats import json_safe

N_DOCS, N_TRAIN, N_EVAL, DEPTH, CQ = 100, 10, 3, 8, 4


def make_state(**kw) -> RefreshState:
    args = dict(depth=DEPTH, eval_depth=DEPTH, chunk_queries=CQ, worker_timeout_s=5.0)
    args.update(kw)
    return RefreshState(N_DOCS, N_TRAIN, 0, **args)


def join(st: RefreshState, name: str, now: float, busy_job: int | None = None) -> None:
    """A worker says hello, then heartbeats (only then is it ready for a shard)."""
    st.on_hello(name, now, busy_job=busy_job)
    st.on_seen(name, now, state="busy" if busy_job is not None else "idle")


def fake_topk(lo: int, hi: int, q_lo: int, q_hi: int, k: int = DEPTH, seed: int = 0):
    """Deterministic per-shard results: doc d scores -(d * 7 + q) % 13 (ties broken by id)."""
    docs = np.arange(lo, hi)
    q = np.arange(q_lo, q_hi)[:, None]
    s = -((docs[None, :] * 7 + q) % 13).astype(np.float32)
    order = np.lexsort((np.broadcast_to(docs, s.shape), -s), axis=1)[:, :k]
    ids = docs[order].astype(np.int64)
    scores = np.take_along_axis(s, order, axis=1)
    if ids.shape[1] < k:  # shard smaller than k: pad like the index does
        pad = k - ids.shape[1]
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
    return scores, ids


def send_chunk(st: RefreshState, worker: str, a, split: str, chunk: int):
    q_lo, q_hi = st.chunk_range(split, chunk)
    scores, ids = fake_topk(a.doc_lo, a.doc_hi, q_lo, q_hi)
    return st.on_topk(worker, job_id=a.job_id, shard=a.shard, split=split, chunk=chunk,
                      n_chunks=st.n_chunks(split), q_lo=q_lo, q_hi=q_hi, scores=scores, ids=ids)


def run_shard(st, worker, a, now=0.0):
    ready = []
    for c in range(st.n_chunks("train")):
        ready += send_chunk(st, worker, a, "train", c)
    if a.eval:
        for c in range(st.n_chunks("eval")):
            ready += send_chunk(st, worker, a, "eval", c)
    assert st.on_shard_done(worker, job_id=a.job_id, shard=a.shard, stats={"encode_s": 1.0, "n_docs": 5}, now=now)
    return ready


def test_shard_ranges_cover_the_corpus_contiguously():
    for n_docs in (1, 7, 100, 101):
        for n in range(1, 9):
            r = shard_ranges(n_docs, n)
            assert r[0][0] == 0 and r[-1][1] == n_docs and len(r) == n
            assert all(a[1] == b[0] for a, b in zip(r, r[1:]))
            sizes = [hi - lo for lo, hi in r]
            assert max(sizes) - min(sizes) <= 1


def test_newest_checkpoint_wins_and_stale_pending_is_skipped():
    st = make_state()
    assert "queued" in st.on_checkpoint(10, "c10", 1.0)
    join(st, "w0", 0.0)
    (w, a), = st.assign(0.0)
    assert a.version == 10 and (a.doc_lo, a.doc_hi) == (0, N_DOCS)
    assert "queued behind running version 10" in st.on_checkpoint(20, "c20", 2.0)
    assert "replaces waiting checkpoint 20" in st.on_checkpoint(30, "c30", 3.0)
    assert "already waiting" in st.on_checkpoint(25, "c25", 3.0)
    assert "not newer" in st.on_checkpoint(5, "c5", 3.0)
    assert st.pending.step == 30
    run_shard(st, w, a)
    assert st.complete()
    assert st.finish().version == 10 and st.latest_version == 10
    (w, b), = st.assign(1.0)
    assert b.version == 30 and b.ckpt_path == "c30" and b.job_id != a.job_id
    assert "not newer" in st.on_checkpoint(30, "c30", 4.0)


def test_no_job_without_workers_and_shards_equal_live_workers():
    st = make_state()
    st.on_checkpoint(1, "c1", 0.0)
    assert st.assign(0.0) == [] and st.job is None
    for i in range(3):
        join(st, f"w{i}", 0.0)
    out = st.assign(0.0)
    assert [a.shard for _, a in out] == [0, 1, 2] and {w for w, _ in out} == {"w0", "w1", "w2"}
    ranges = [(a.doc_lo, a.doc_hi) for _, a in out]
    assert ranges == shard_ranges(N_DOCS, 3)
    join(st, "w3", 0.0)  # joins late: the job keeps 3 shards
    assert st.assign(0.0) == []


def test_chunk_ready_only_when_every_shard_sent_it():
    st = make_state()
    st.on_checkpoint(1, "c1", 0.0)
    join(st, "a", 0.0)
    join(st, "b", 0.0)
    (wa, a), (wb, b) = st.assign(0.0)
    assert send_chunk(st, wa, a, "train", 0) == []
    assert send_chunk(st, wa, a, "train", 1) == []
    ready = send_chunk(st, wb, b, "train", 1)
    assert [r.chunk for r in ready] == [1]
    r = ready[0]
    assert (r.q_lo, r.q_hi) == (4, 8) and r.ids.shape == (4, DEPTH)
    # the merge equals the top-k over the whole corpus
    full_s, full_i = fake_topk(0, N_DOCS, 4, 8)
    assert np.array_equal(r.ids, full_i) and np.allclose(r.scores, full_s)
    assert not st.complete()


def test_duplicates_stale_jobs_and_wrong_messages():
    st = make_state()
    st.on_checkpoint(1, "c1", 0.0)
    join(st, "a", 0.0)
    join(st, "b", 0.0)
    (wa, a), (wb, b) = st.assign(0.0)
    assert send_chunk(st, wa, a, "train", 0) == []
    assert send_chunk(st, wa, a, "train", 0) == []  # a duplicate before the merge
    assert len(send_chunk(st, wb, b, "train", 0)) == 1
    assert send_chunk(st, wb, b, "train", 0) == []  # a duplicate after the merge
    stale = type(a)(**{**a.__dict__, "job_id": a.job_id + 99})
    assert send_chunk(st, wa, stale, "train", 1) == []
    s, i = fake_topk(a.doc_lo, a.doc_hi, 4, 8)
    with pytest.raises(RefreshError, match="covers queries"):
        st.on_topk(wa, job_id=a.job_id, shard=0, split="train", chunk=1, n_chunks=3, q_lo=0, q_hi=4, scores=s, ids=i)
    with pytest.raises(RefreshError, match="3 train chunks"):
        st.on_topk(wa, job_id=a.job_id, shard=0, split="train", chunk=1, n_chunks=2, q_lo=4, q_hi=8, scores=s, ids=i)
    with pytest.raises(RefreshError, match="outside its range"):
        st.on_topk(wa, job_id=a.job_id, shard=0, split="train", chunk=1, n_chunks=3, q_lo=4, q_hi=8, scores=s,
                   ids=i + 60)
    with pytest.raises(RefreshError, match="shard 5 out of range"):
        st.on_topk(wa, job_id=a.job_id, shard=5, split="train", chunk=1, n_chunks=3, q_lo=4, q_hi=8, scores=s, ids=i)
    with pytest.raises(RefreshError, match="split 'eval' not expected"):
        st.on_topk(wa, job_id=a.job_id, shard=0, split="eval", chunk=0, n_chunks=1, q_lo=0, q_hi=3, scores=s, ids=i)


def test_worker_loss_requeues_its_shard_and_chunks_are_kept():
    st = make_state()
    st.on_checkpoint(1, "c1", 0.0)
    join(st, "a", 0.0)
    join(st, "b", 0.0)
    (wa, a), (wb, b) = st.assign(0.0)
    ready = send_chunk(st, wb, b, "train", 0)       # b sends one chunk, then goes silent
    ready += run_shard(st, wa, a, now=1.0)
    assert [r.chunk for r in ready] == [0]
    st.on_seen("a", 4.0)
    assert st.expire(6.0) == ["b"]                   # silent since 0.0, timeout 5s
    assert "b" not in st.workers
    (w, again), = st.assign(6.0)
    assert w == "a" and again.shard == b.shard and (again.doc_lo, again.doc_hi) == (b.doc_lo, b.doc_hi)
    assert st.job.reassigned == 1
    # a redoes the whole shard: chunk 0 was merged already and is ignored
    redo = run_shard(st, "a", again, now=7.0)
    assert sorted(r.chunk for r in redo) == [1, 2]
    assert st.complete()
    events = st.drain_events()
    assert any(e["event"] == "worker" and e["name"] == "b" and e["state"].startswith("lost") for e in events)
    assert any(e["event"] == "shard" and e["state"].startswith("requeued") for e in events)


def test_rejoining_idle_means_the_shard_was_lost():
    st = make_state()
    st.on_checkpoint(1, "c1", 0.0)
    join(st, "a", 0.0)
    (_, a), = st.assign(0.0)
    st.on_hello("a", 1.0, busy_job=a.job_id)        # reconnect mid-shard: keeps it
    assert st.assign(1.0) == []
    st.on_hello("a", 2.0)                           # restarted: lost it, gets it again
    (_, again), = st.assign(2.0)
    assert again.shard == a.shard


def test_worker_busy_with_an_unknown_job_gets_nothing_until_idle():
    st = make_state()
    join(st, "a", 0.0, busy_job=12345)           # after a broker restart
    st.on_checkpoint(1, "c1", 0.0)
    st.assign(0.0)
    assert st.job is not None and st.job.queued == [0]
    st.on_seen("a", 1.0, state="idle")
    (w, _), = st.assign(1.0)
    assert w == "a"


def test_failures_requeue_then_abandon():
    st = make_state(max_attempts=2)
    st.on_checkpoint(1, "c1", 0.0)
    join(st, "a", 0.0)
    (_, a), = st.assign(0.0)
    assert st.on_shard_failed("a", job_id=a.job_id, shard=0, reason="oom") is None
    (_, a2), = st.assign(0.0)
    assert a2.shard == 0
    st.on_checkpoint(2, "c2", 0.0)
    reason = st.on_shard_failed("a", job_id=a.job_id, shard=0, reason="oom")
    assert "abandoned refresh of version 1" in reason and st.job is None
    (_, b), = st.assign(0.0)
    assert b.version == 2


def test_eval_chunks_are_part_of_completion():
    st = RefreshState(N_DOCS, N_TRAIN, N_EVAL, depth=DEPTH, eval_depth=DEPTH, chunk_queries=CQ, worker_timeout_s=5)
    st.on_checkpoint(1, "c1", 0.0)
    join(st, "a", 0.0)
    (_, a), = st.assign(0.0)
    assert a.eval
    for c in range(st.n_chunks("train")):
        send_chunk(st, "a", a, "train", c)
    assert not st.complete()
    st.on_shard_done("a", job_id=a.job_id, shard=0, stats={}, now=0.0)  # early: counted as a failure
    assert not st.complete() and st.job.queued == [0]
    (_, a), = st.assign(0.0)
    ready = run_shard(st, "a", a)
    assert [r.split for r in ready] == ["eval"]
    assert st.complete()


def test_negatives_never_contain_a_positive():
    st = make_state()
    st.on_checkpoint(1, "c1", 0.0)
    for i in range(3):
        join(st, f"w{i}", 0.0)
    ready = []
    for w, a in st.assign(0.0):
        ready += run_shard(st, w, a)
    rng = np.random.default_rng(0)
    # positives: the top-ranked docs of each query, so selection has to skip them
    for r in ready:
        positives = [r.ids[i, :3] for i in range(r.ids.shape[0])]
        for sampling in ("uniform", "top"):
            neg = select_negatives(r.ids, positives, rank_window=(0, DEPTH), keep=4, sampling=sampling, rng=rng)
            for i in range(neg.shape[0]):
                assert not set(neg[i][neg[i] >= 0].tolist()) & set(positives[i].tolist())
                assert (neg[i] >= 0).sum() == 4


def test_json_safe():
    assert json_safe({"a": np.float32(1.5), "b": float("nan"), "c": np.int64(3)}) == {"a": 1.5, "b": None, "c": 3}
