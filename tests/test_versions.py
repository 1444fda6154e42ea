"""NegativesVersions: the broker's negatives versions on disk, without sockets.

begin → append → finish gives a complete file ance.negatives.files reads back;
restore removes partial files, reloads the newest complete version and refuses
one made from other data; drop removes the partial file.
"""

from __future__ import annotations

import numpy as np
import pytest

from ance.run.errors import AnceError
from ance.negatives.files import read_negatives
from ance.run.rundir import RunDir
from ance.broker.versions import NegativesVersions


def negatives_path(run_dir, version: int, partial: bool = False):
    return RunDir(run_dir).negatives(version, partial)


QIDS = [f"q{i}" for i in range(5)]
DIDS = [f"d{i}" for i in range(8)]
QINDEX = {q: i for i, q in enumerate(QIDS)}
DINDEX = {d: i for i, d in enumerate(DIDS)}
KEEP, CQ, FP = 3, 2, "fp-ours"  # 5 queries in chunks of 2: [0, 2), [2, 4), [4, 5)
NEG = np.array([[1, 2, 3], [4, -1, -1], [5, 6, 7], [-1, -1, -1], [0, 7, -1]], np.int32)


def make_store(run_dir, fingerprint=FP) -> NegativesVersions:
    return NegativesVersions(run_dir, QIDS, DIDS, keep=KEEP, chunk_queries=CQ, fingerprint=fingerprint)


def begin(store: NegativesVersions, version: int):
    return store.begin(version, 2, checkpoint=f"ckpt/step-{version:06d}", depth=10, rank_window=(0, 10),
                       sampling="top", seed=7, model="tiny-bert")


def build(store: NegativesVersions, version: int, neg=NEG, chunks=(2, 0, 1)):
    """One version, chunks appended in the given (arrival) order; not finished."""
    begin(store, version)
    for c in chunks:
        lo, hi = c * CQ, min((c + 1) * CQ, len(QIDS))
        store.append(c, lo, hi, neg[lo:hi])


def test_begin_append_finish_writes_a_complete_readable_file(tmp_path):
    store = make_store(tmp_path)
    assert store.n_chunks == 3
    build(store, 4)
    partial = negatives_path(tmp_path, 4, partial=True)
    assert partial.exists() and not negatives_path(tmp_path, 4).exists()
    # appended + fsynced per chunk: readable before the version is finished
    _, q_idx, _ = read_negatives(partial, QINDEX, DINDEX, keep=KEEP)
    assert q_idx.tolist() == [4, 0, 1, 2, 3]

    final = store.finish()
    assert final == negatives_path(tmp_path, 4) and final.exists() and not partial.exists()
    header, q_idx, neg = read_negatives(final, QINDEX, DINDEX, keep=KEEP)
    assert header == {"version": 4, "checkpoint": "ckpt/step-000004", "keep": KEEP, "depth": 10,
                      "rank_window": [0, 10], "sampling": "top", "seed": 7, "n_shards": 2, "n_docs": len(DIDS),
                      "n_queries": len(QIDS), "data_fingerprint": FP, "model": "tiny-bert"}
    assert list(header) == ["version", "checkpoint", "keep", "depth", "rank_window", "sampling", "seed", "n_shards",
                            "n_docs", "n_queries", "data_fingerprint", "model"]  # the broker's order
    assert q_idx.tolist() == [4, 0, 1, 2, 3]  # arrival order
    np.testing.assert_array_equal(neg, NEG[q_idx])
    assert final.read_text().splitlines()[1:] == ["q4\td0,d7", "q0\td1,d2,d3", "q1\td4", "q2\td5,d6,d7", "q3\t"]

    latest = store.latest
    assert store.current is None and latest.version == 4 and latest.n_shards == 2
    assert latest.chunks == {0, 1, 2}
    np.testing.assert_array_equal(latest.neg, NEG)
    q, rows = store.chunk(latest, 2)
    assert q.dtype == np.int32 and q.tolist() == [4] and rows.tolist() == [[0, 7, -1]]


def test_restore_removes_partials_and_reloads_the_newest_complete_version(tmp_path):
    first = make_store(tmp_path)
    build(first, 1, neg=np.full_like(NEG, 1))
    first.finish()
    build(first, 3)
    first.finish()
    build(first, 5, chunks=(0,))  # interrupted mid-version
    first.close()
    stray = negatives_path(tmp_path, 9, partial=True)
    stray.write_text("# ance-negatives v1 {}\n")
    assert negatives_path(tmp_path, 5, partial=True).exists()

    store = make_store(tmp_path)
    latest = store.restore()
    assert not list((tmp_path / "negatives").glob("*.partial.tsv"))
    assert latest is store.latest and store.current is None
    assert latest.version == 3 and latest.n_shards == 2 and latest.stats == {"replayed": True}
    assert latest.chunks == {0, 1, 2}
    np.testing.assert_array_equal(latest.neg, NEG)
    assert sorted(p.name for p in (tmp_path / "negatives").iterdir()) == [
        "step-000001.tsv", "step-000001.tsv.sum", "step-000003.tsv", "step-000003.tsv.sum"]  # with their seals


def test_restore_with_nothing_on_disk(tmp_path):
    store = make_store(tmp_path / "run")
    assert (tmp_path / "run" / "negatives").is_dir()
    assert store.restore() is None and store.latest is None


def test_restore_refuses_a_version_from_other_data(tmp_path):
    other = make_store(tmp_path, fingerprint="fp-other")
    build(other, 2)
    other.finish()
    with pytest.raises(AnceError, match=r"step-000002\.tsv was made from other data \(fingerprint fp-other, "
                                        r"ours fp-ours\); use the run's config or move the negatives/ directory"):
        make_store(tmp_path).restore()


def test_drop_removes_the_partial_and_begin_drops_one_in_progress(tmp_path):
    store = make_store(tmp_path)
    build(store, 6, chunks=(0, 1))
    store.drop()
    assert not negatives_path(tmp_path, 6, partial=True).exists() and store.current is None
    store.drop()  # nothing in progress: a no-op

    build(store, 7, chunks=(0,))
    begin(store, 8)  # a new refresh replaces the one in progress
    assert not negatives_path(tmp_path, 7, partial=True).exists()
    assert store.current.version == 8 and store.current.chunks == set()
    with pytest.raises(RuntimeError, match="no version in progress"):
        make_store(tmp_path / "x").finish()


def test_overlapping_versions_keep_latest_until_finished(tmp_path):
    store = make_store(tmp_path)
    build(store, 1)
    store.finish()
    build(store, 2, neg=np.full_like(NEG, -1), chunks=(1,))
    # the version in progress fills its own table; latest stays what the trainer was sent
    np.testing.assert_array_equal(store.latest.neg, NEG)
    assert store.current.chunks == {1} and (store.current.neg == -1).all()


def test_a_version_cut_short_or_edited_is_refused_on_reload(tmp_path, caplog):
    """Hostile 2026-12-03: a negatives file cut to 10 of 40 rows was reloaded as complete and served."""
    first = make_store(tmp_path)
    build(first, 1, neg=np.full_like(NEG, 1))
    first.finish()
    build(first, 3)
    first.finish()
    first.close()
    path = negatives_path(tmp_path, 3)
    whole = path.read_text()
    path.write_text("".join(whole.splitlines(keepends=True)[:-2]))  # cut short
    caplog.set_level("ERROR")
    latest = make_store(tmp_path).restore()
    assert latest.version == 1 and "cut short" in caplog.text and path.exists()  # refused, left in place
    lines = whole.splitlines(keepends=True)
    a, b = lines[1].split("\t", 1)
    lines[1] = a + "\t" + ",".join(reversed(b.strip().split(","))) + "\n"  # same rows, other order
    path.write_text("".join(lines))
    caplog.clear()
    assert make_store(tmp_path).restore().version == 1 and "checksum differs" in caplog.text
    path.write_text(whole)
    assert make_store(tmp_path).restore().version == 3


def test_ids_that_cannot_be_written_are_refused_when_the_broker_starts(tmp_path):
    """Checked once, before any refresh (each chunk is then only formatted): the error names the id."""
    with pytest.raises(AnceError, match="doc id 'd,3' cannot be written"):
        NegativesVersions(tmp_path, QIDS, DIDS[:3] + ["d,3"], keep=KEEP, chunk_queries=CQ, fingerprint=FP)
    with pytest.raises(AnceError, match="query id ''"):
        NegativesVersions(tmp_path, QIDS + [""], DIDS, keep=KEEP, chunk_queries=CQ, fingerprint=FP)
