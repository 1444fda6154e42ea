"""Hostile peers against a real broker loop (issue 15): each test fails on the broker before the fix.

The broker runs in a thread on a loopback ROUTER (the ``broker`` fixture of
test_broker.py, ``broker.send_weights=true``); the attackers are plain DEALERs
that speak the protocol correctly but lie: a peer that never said hello, a
registered worker reporting on a shard it was not given, a path out of the run
directory, a ``stop`` without the run's token, silent workers that only say
hello, and strings built to forge or flood the log.
"""

from __future__ import annotations

import logging
import os
import time


from ance.broker.guard import read_token
from ance.run.rundir import RunDir
from ance.wire.protocol import pack_array

from helpers_refresh import Peer, wait_until
from test_broker import CQ, DEPTH, N_DOCS, FakeWorker, broker, first_job, topk_for, trainer_peer  # noqa: F401 (fixture)


def errors(peer: Peer, n: int = 1, timeout: float = 10) -> list:
    """The ``error`` messages ``peer`` got, once there are ``n``."""
    peer.wait_for(lambda ms: len([m for m in ms if m.type == "error"]) >= n, timeout, f"{n} error(s)")
    return peer.of("error")


def no_job_for(worker: Peer, seconds: float = 0.5) -> bool:
    worker.pump(seconds)
    return not worker.of("job")


def test_checkpoint_paths_outside_the_run_dir_are_refused(broker, tmp_path):
    """Finding 2: a peer announced ``../../secretdir`` and the broker shipped its files to a worker."""
    secret = tmp_path / "secretdir"
    secret.mkdir()
    (secret / "id_rsa").write_text("SECRET")
    (secret / "manifest.json").write_text("{}")
    w = FakeWorker(broker.addr, "eve")
    broker.peers.append(w)
    wait_until(lambda: broker.b.state.ready_workers, 10, "a ready worker")
    # a peer that never said hello may not announce at all
    stranger = Peer(broker.addr, b"mallory")
    broker.peers.append(stranger)
    rel = os.path.relpath(secret, broker.ckpts / "step-000009")
    stranger.send("checkpoint", step=9, path=str(broker.ckpts / "step-000009" / rel), written_at=time.time())
    assert "no session" in errors(stranger)[-1].reason
    t = trainer_peer(broker)
    bad = [(str(secret), "is not RUN_DIR/checkpoints/step-000009"),
           (str(broker.ckpts / ".." / ".." / "secretdir"), "is not RUN_DIR/checkpoints"),
           (str(broker.ckpts / "step-000008"), "is not RUN_DIR/checkpoints/step-000009")]
    for path, _ in bad:
        t.send("checkpoint", step=9, path=path, written_at=time.time())
    os.symlink(secret, broker.ckpts / "step-000009")  # a symlink out of the run directory
    t.send("checkpoint", step=9, path=str(broker.ckpts / "step-000009"), written_at=time.time())
    (broker.ckpts / "step-000010").mkdir()              # incomplete: no manifest
    t.send("checkpoint", step=10, path=str(broker.ckpts / "step-000010"), written_at=time.time())
    reasons = [m.reason for m in errors(t, len(bad) + 2)]
    for (_, want), reason in zip(bad, reasons):
        assert want in reason
    assert "resolves outside" in reasons[-2] and "not complete" in reasons[-1]
    assert no_job_for(w) and broker.b.state.pending is None and broker.b.state.job is None
    assert "SECRET" not in str(w.received)


def test_forged_results_are_refused_and_never_complete_a_version(broker):
    """Finding 3: a never-registered peer completed a version with junk ``topk`` / ``shard_done``."""
    w, t, job = first_job(broker)
    scores, ids = topk_for(0, N_DOCS, 0, CQ, DEPTH)
    forged = dict(job_id=job.job_id, shard=0, chunk=0, n_chunks=3, q_lo=0, q_hi=CQ, ids=pack_array(ids),
                  scores=pack_array(scores), split="train")
    ghost = Peer(broker.addr, b"ghost")                 # never said hello
    other = FakeWorker(broker.addr, "1")                # registered, but shard 0 is not its
    broker.peers += [ghost, other]
    wait_until(lambda: "inferencer-1" in broker.b.state.workers, 10, "worker 1")
    ghost.send("topk", version=1, **forged)
    ghost.send("shard_done", job_id=job.job_id, version=1, shard=0, stats={})
    assert errors(ghost)[0].reason.startswith("unknown peer")
    other.send("topk", version=1, **forged)
    other.send("shard_done", job_id=job.job_id, version=777, shard=0, stats={})
    other.send("shard_failed", job_id=job.job_id, version=1, shard=0, reason="x")
    got = [m.reason for m in errors(other, 3)]
    assert all("not assigned to 'inferencer-1'" in r or "version 777" in r for r in got), got
    w.send("topk", version=777, **forged)              # the owner, but for another version
    assert "version 777" in errors(w)[-1].reason
    assert broker.b.state.job is not None and not broker.b.state.job.done and not broker.b.state.job.failures
    assert not RunDir(broker.cfg.run_dir).negatives(1).exists()
    w.finish(job)                                       # the owner's true results still complete it
    t.wait_for(lambda ms: [m for m in ms if m.type == "version_done"], 10, "version_done")


def test_stop_needs_the_run_token(broker):
    """Finding 4: one ``stop`` frame from an unknown peer shut the broker down (exit 0)."""
    for name, fields in ((b"mallory", {}), (b"mallory2", {"token": "0" * 32})):
        p = Peer(broker.addr, name)
        broker.peers.append(p)
        p.send("stop", reason="bye", **fields)
        assert "token" in errors(p)[0].reason
    time.sleep(0.3)
    assert broker.b._stop_reason is None
    token_file = broker.cfg.run_dir + "/broker.token"
    assert oct(os.stat(token_file).st_mode & 0o777) == "0o600"
    launcher = Peer(broker.addr, b"launcher")
    broker.peers.append(launcher)
    launcher.send("stop", reason="run over", token=read_token(broker.cfg.run_dir))
    wait_until(lambda: broker.b._stop_reason is not None, 10, "stop")


def test_wrong_fingerprint_is_not_echoed(broker):
    """Finding 2 (how eve registered): the error to a wrong-fingerprint hello held the right one."""
    p = Peer(broker.addr, b"eve")
    broker.peers.append(p)
    p.send("hello", role="inferencer", name="eve", pid=1, device="cpu", data_fingerprint="guess")
    reason = errors(p)[0].reason
    assert "fingerprint differs" in reason and "fp-test" not in reason


def test_silent_workers_get_no_shards_and_jobs_are_capped(broker):
    """Finding 5a: 200 silent fake workers turned every hello into a shard that never finished."""
    silent = []
    for i in range(20):
        p = Peer(broker.addr, f"inferencer-s{i}".encode())
        p.send("hello", role="inferencer", name=f"s{i}", pid=1, device="cpu", data_fingerprint="fp-test")
        silent.append(p)
    broker.peers.extend(silent)
    w = FakeWorker(broker.addr, "0")
    broker.peers.append(w)
    wait_until(lambda: len(broker.b.state.workers) == 21 and broker.b.state.ready_workers, 10, "workers")
    t = trainer_peer(broker)
    t.send("checkpoint", step=1, path=str(broker.ckpts / "step-000001"), written_at=time.time())
    job = w.job()
    assert job.n_shards == 1 and (job.doc_lo, job.doc_hi) == (0, N_DOCS)
    assert all(no_job_for(p, 0.05) for p in silent)


def test_warming_workers_get_no_shard_until_warmed_up():
    from ance.broker.refresh import RefreshState

    st = RefreshState(100, 10, depth=5, chunk_queries=4, worker_timeout_s=5)
    st.on_checkpoint(1, "c", 0.0)
    st.on_hello("w", 0.0)
    assert st.assign(0.0) == []                  # said hello only
    st.on_seen("w", 0.1, state="warming")
    assert st.assign(0.1) == [] and st.job is None
    st.on_seen("w", 0.2, state="idle")           # warmed up
    (name, a), = st.assign(0.2)
    assert name == "w" and a.n_shards == 1


def test_max_shards_caps_a_job():
    from ance.broker.refresh import RefreshState

    st = RefreshState(100, 10, depth=5, chunk_queries=4, worker_timeout_s=5, max_shards=3)
    st.on_checkpoint(1, "c", 0.0)
    for i in range(10):
        st.on_hello(f"w{i}", 0.0)
        st.on_seen(f"w{i}", 0.0, state="idle")
    assert len(st.assign(0.0)) == 3 and st.job.n_shards == 3


def test_peer_strings_are_escaped_bounded_and_logged_once(broker, caplog):
    """Finding 5b/c: a 200 MB ``device`` grew the log to 1 GB; peer strings forged log lines."""
    caplog.set_level(logging.INFO, logger="ance.broker")
    big = Peer(broker.addr, b"flood")
    broker.peers.append(big)
    big.send_raw(__import__("msgpack").packb({"v": 2, "type": "hello", "role": "inferencer", "name": "x", "pid": 1,
                                              "device": "d" * 100_000, "data_fingerprint": "fp-test", "nonce": "0"}))
    assert "more than the limit" in errors(big)[0].reason
    forger = Peer(broker.addr, b"evil\nINFO forged line")
    broker.peers.append(forger)
    for _ in range(5):
        forger.send("heartbeat", state="idle")
        forger.send("stop", reason="x\nINFO broker stopping")
    errors(forger, 2)
    time.sleep(0.3)
    text = caplog.text
    assert "\nINFO forged line" not in text and "\nINFO broker stopping" not in text
    assert "'evil\\nINFO forged line'" in text
    assert text.count("no authenticated session") == 1 and text.count("'stop' refused") == 1  # rate-limited
    assert all(len(r.getMessage()) < 2000 for r in caplog.records)


def test_results_of_another_job_are_logged(broker, caplog):
    """Finding 3: results with a wrong job id were dropped without a log line."""
    caplog.set_level(logging.INFO, logger="ance.broker")
    w = FakeWorker(broker.addr, "0")
    broker.peers.append(w)
    wait_until(lambda: broker.b.state.ready_workers, 10, "worker")
    scores, ids = topk_for(0, N_DOCS, 0, CQ, DEPTH)
    w.send("topk", job_id=424242, version=1, shard=0, chunk=0, n_chunks=3, q_lo=0, q_hi=CQ, ids=pack_array(ids),
           scores=pack_array(scores), split="train")
    wait_until(lambda: "not the running job" in caplog.text, 10, "a log line")
    assert "job 424242" in caplog.text


def test_inbound_frames_are_bounded(broker):
    """Finding 5d: frames to the broker never carry weights, so the inbound cap is a top-k chunk, not 256 MB."""
    assert broker.b.max_inbound < broker.cfg.broker.max_frame_bytes
    p = Peer(broker.addr, b"big")
    broker.peers.append(p)
    p.send_raw(b"\x00" * (broker.b.max_inbound + 1))
    assert "exceeds the limit" in errors(p)[0].reason
