"""A pool of N inferencers gives exactly the negatives one inferencer gives (same checkpoint, same data).

Real processes: a broker and 1, then 2, inferencers (``ance broker`` / ``ance infer`` on the CPU), a
fake trainer announcing the same tiny-bert checkpoint; the persisted negatives files of the two runs
must hold the same lists. (A worker killed mid-refresh, whose shard another worker then completes:
tests/test_broker.py::test_a_killed_worker_has_its_shard_reassigned and tests/test_e2e.py's launch test.)
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from ance.run.config import load_config
from ance.data.dataset import load_for_config
from ance.wire.protocol import unpack_array
from ance.run.rundir import RunDir
from helpers_refresh import Peer, free_port, make_checkpoint, needs_scifact, spawn, stop, wait_until, write_config


def start_pool(tmp, n_workers: int) -> dict:
    """A broker and ``n_workers`` inferencers on their own config and port, started (not yet ready)."""
    tmp.mkdir()
    cfg_path = write_config(tmp, free_port(), data={"max_docs": 200, "max_queries": 30, "eval_split": None})
    cfg = load_config(cfg_path)
    logs = [tmp / "broker.log"] + [tmp / f"inferencer-{i}.log" for i in range(n_workers)]
    procs = [spawn("broker", str(cfg_path), log=logs[0])]
    procs += [spawn("infer", str(cfg_path), "--device", "cpu", "--name", str(i), log=logs[1 + i])
              for i in range(n_workers)]
    return {"tmp": tmp, "cfg": cfg, "n": n_workers, "logs": logs, "procs": procs}


def refresh_with(pool: dict):
    """One refresh of checkpoint step 1 by ``pool``: (version_done, negatives file lines, streamed)."""
    tmp, cfg, n_workers, logs = pool["tmp"], pool["cfg"], pool["n"], pool["logs"]
    data = load_for_config(cfg)
    Peer.RUN_DIRS[cfg.broker.address] = tmp / "run"
    trainer = Peer(cfg.broker.address, b"trainer")
    try:
        wait_until(lambda: logs[0].exists() and logs[0].read_text().count(" ready for shards") >= n_workers, 180,
                   f"{n_workers} inferencers ready", logs)
        trainer.send("hello", role="trainer", name="trainer", pid=1, device="cpu",
                     data_fingerprint=data.fingerprint, have_version=-1)
        ckpt = make_checkpoint(tmp / "run", 1)
        trainer.send("checkpoint", step=1, path=str(ckpt), written_at=time.time())
        done = trainer.wait_for(lambda ms: [m for m in ms if m.type == "version_done" and m.version == 1], 180,
                                "version_done 1", logs)[0]
        chunks = sorted((m for m in trainer.received if m.type == "negatives" and m.version == 1),
                        key=lambda m: m.chunk)
        streamed = np.concatenate([unpack_array(m.neg) for m in chunks])
        body = RunDir(tmp / "run").negatives(1).read_text().splitlines()[1:]  # the lines after the header
        return done, body, streamed
    finally:
        trainer.close()


@needs_scifact
@pytest.mark.slow
def test_two_workers_give_the_negatives_one_worker_gives(tmp_path):
    # both pools start at once (their imports overlap), then refresh one after the other
    pools = [start_pool(tmp_path / "one", 1), start_pool(tmp_path / "two", 2)]
    try:
        one, body1, neg1 = refresh_with(pools[0])
        two, body2, neg2 = refresh_with(pools[1])
    finally:
        procs = pools[0]["procs"] + pools[1]["procs"]
        for p in procs:
            p.terminate()  # all at once; stop() then waits for each (and kills one that does not exit)
        for p in procs:
            stop(p)
    assert (one.n_shards, two.n_shards) == (1, 2)
    assert [r["n_docs"] for r in two.stats["shards"]] == [100, 100]  # per-shard rows, one per worker
    assert {r["worker"] for r in two.stats["shards"]} == {"inferencer-0", "inferencer-1"}
    assert len(body1) == 30 and body1 == body2  # one line per training query
    np.testing.assert_array_equal(neg1, neg2)
