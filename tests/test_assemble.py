"""VersionAssembler (broker/assemble.py) applies the negatives config to each merged chunk, without sockets.

A refresh of one chunk goes begin → chunk → finish through a real NegativesVersions and TrainerStream (its
``send`` collects the messages instead of a socket): what the trainer is sent and the complete version file
must be the selection that ``negatives.denoise_margin`` / ``negatives.denoise_ratio`` ask for.
"""

from __future__ import annotations

import numpy as np
import pytest

from ance.broker.assemble import VersionAssembler
from ance.broker.refresh import Checkpoint, ChunkReady, Job
from ance.broker.stream import TrainerStream
from ance.broker.versions import NegativesVersions
from ance.data.dataset import QuerySplit
from ance.negatives.files import read_negatives
from ance.run.config import load_config
from ance.run.rundir import RunDir
from ance.wire.protocol import unpack_array

DIDS = [f"d{i}" for i in range(10)]
QIDS = ["q0", "q1", "q2"]
# q0: its positive d1 ranked first at 0.80, then d5 0.79, d6 0.77, d7 0.76, d8 0.50
# q1: the same scores, its positive d2 not ranked: nothing to compare with, every candidate kept
# q2: its positive d4 first at 0.20, then d5 0.195, d6 0.185, d7 0.15, d8 0.10
IDS = np.array([[1, 5, 6, 7, 8], [3, 5, 6, 7, 8], [4, 5, 6, 7, 8]], np.int64)
SCORES = np.array([[0.80, 0.79, 0.77, 0.76, 0.50], [0.80, 0.79, 0.77, 0.76, 0.50],
                   [0.20, 0.195, 0.185, 0.15, 0.10]], np.float32)


def refresh(tmp_path, *overrides: str):
    """One refresh of one chunk; (what the trainer was sent, the complete version file's rows)."""
    cfg = load_config(None, ["negatives.depth=5", "negatives.rank_window=[0, 5]", "negatives.keep=5",
                             "negatives.sampling=top", "broker.chunk_queries=3", *overrides])
    positives = [np.array([1], np.int64), np.array([2], np.int64), np.array([4], np.int64)]
    train = QuerySplit("train", QIDS, ["a", "b", "c"], {"q0": {"d1": 1}, "q1": {"d2": 1}, "q2": {"d4": 1}},
                       positives)
    eval_split = QuerySplit("dev", [], [], {}, [])
    versions = NegativesVersions(tmp_path, QIDS, DIDS, keep=5, chunk_queries=3, fingerprint="fp")
    sent = []
    trainer = TrainerStream(versions, lambda peer, kind, **fields: sent.append((kind, fields)) or True)
    trainer.hello(b"trainer", 1, have=-1)
    assembler = VersionAssembler(cfg, train, eval_split, DIDS, versions, trainer)
    job = Job(job_id=1, ckpt=Checkpoint(step=10, path="ckpt/step-000010", received_at=0.0), n_shards=1,
              ranges=[(0, len(DIDS))], eval=False, started_at=0.0)
    assembler.begin(job)
    assembler.chunk(ChunkReady(version=10, split="train", chunk=0, q_lo=0, q_hi=3, scores=SCORES, ids=IDS),
                    n_chunks=1)
    assembler.finish(job)
    streamed = [unpack_array(f["neg"]).tolist() for kind, f in sent if kind == "negatives"]
    assert len(streamed) == 1 and [kind for kind, _ in sent] == ["negatives", "version_done"]
    _, q_idx, neg = read_negatives(RunDir(tmp_path).negatives(10), {q: i for i, q in enumerate(QIDS)},
                                   {d: i for i, d in enumerate(DIDS)}, keep=5)
    assert q_idx.tolist() == [0, 1, 2]
    assert neg.tolist() == streamed[0]
    return streamed[0]


@pytest.mark.parametrize("overrides, q0, q2", [
    ((), [5, 6, 7, 8, -1], [5, 6, 7, 8, -1]),
    # ratio 0.95: q0's bar 0.95 x 0.80 = 0.76 drops d5 and d6 (0.79, 0.77); d7 at 0.76 is not above it and
    # stays (float32 scores: 0.76 rounds below the bar, 0.80 above 0.80). q2's bar 0.19 drops d5 0.195 only
    (("negatives.denoise_ratio=0.95",), [7, 8, -1, -1, -1], [6, 7, 8, -1, -1]),
    # margin 0.02: bars 0.78 (q0: d5 only) and 0.18 (q2: d5 and d6)
    (("negatives.denoise_margin=0.02",), [6, 7, 8, -1, -1], [7, 8, -1, -1, -1]),
    # both: a candidate either rule drops is dropped, the ratio deciding q0 and the margin q2
    (("negatives.denoise_ratio=0.95", "negatives.denoise_margin=0.02"), [7, 8, -1, -1, -1], [7, 8, -1, -1, -1]),
])
def test_the_broker_applies_the_denoising_keys(tmp_path, overrides, q0, q2):
    assert refresh(tmp_path, *overrides) == [q0, [3, 5, 6, 7, 8], q2]
