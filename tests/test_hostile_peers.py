"""Peers that lie (issue 28, hostile report 2026-12-03): each test reproduces an attack of the report and
asserts it is refused and logged, the negatives stay unpoisoned and the refresh finishes.

The broker runs in a thread on a loopback ROUTER (test_broker.py's ``broker`` fixture, or ``start_broker``
here with other settings); attackers and honest fakes are plain DEALERs (helpers_refresh.Peer), the
clients under attack the real ``TrainerLink`` / ``InferencerLink``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import zmq

from ance.run.config import load_config
from ance.run.errors import AnceError, ConfigError
from ance.wire.auth import ensure_secret, new_nonce, secret_path
from ance.wire.protocol import pack_array, pack_message, unpack_array, unpack_message

from helpers_refresh import Peer, free_port, wait_until
from test_broker import (CQ, DEPTH, N_DOCS, N_TRAIN, FakeWorker, Recorder, broker, synthetic_dataset,  # noqa: F401
                         topk_for, trainer_peer)


def start_broker(tmp_path, *overrides):
    """A broker thread like test_broker's fixture, with ``overrides``; returns (env, stop)."""
    from ance.broker.hub import Broker

    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", f"broker.address=tcp://127.0.0.1:{free_port()}",
                             "broker.heartbeat_s=0.1", "broker.worker_timeout_s=5", f"broker.chunk_queries={CQ}",
                             f"negatives.depth={DEPTH}", "negatives.rank_window=[0,10]", "negatives.keep=3",
                             *overrides])
    ckpts = tmp_path / "run" / "checkpoints"
    d = ckpts / "step-000001"
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    b = Broker(cfg, dataset=synthetic_dataset(), metrics=Recorder())
    (d / "manifest.json").write_text('{"step": 1}')
    b.bind()
    Peer.RUN_DIRS[cfg.broker.address] = tmp_path / "run"
    thread = threading.Thread(target=b.run, daemon=True)
    thread.start()
    env = SimpleNamespace(b=b, cfg=cfg, peers=[], addr=cfg.broker.address, ckpts=ckpts)

    def stop():
        for p in env.peers:
            p.close()
        b.stop("test over")
        thread.join(10)
        assert not thread.is_alive()
    return env, stop


def forge_session(addr: str, identity: bytes | None, name: str, role: str = "inferencer") -> Peer:
    """An attacker without the run's secret: hello, then an ``auth`` with a made-up proof."""
    p = Peer(addr, identity, secret=b"\x00" * 32)
    p.sock.send(pack_message("hello", role=role, name=name, pid=666, device="cpu", data_fingerprint="fp-test",
                             nonce=new_nonce()))
    challenge = p.wait_for(lambda ms: [m for m in ms if m.type == "challenge"], 10, "challenge")[0]
    p.sock.send(pack_message("auth", nonce=challenge.nonce, proof="ab" * 32))
    return p


def honest_rows(q_idx: np.ndarray, neg: np.ndarray) -> bool:
    """Every negative is in its query's honest top-10 (topk_for over the whole corpus)."""
    for q, row in zip(q_idx.tolist(), neg):
        _, ids = topk_for(0, N_DOCS, q, q + 1, 10)
        if not set(row[row >= 0].tolist()) <= set(ids[0].tolist()):
            return False
    return True


def streamed(t: Peer, version: int):
    chunks = t.of("negatives", version=version)
    return (np.concatenate([unpack_array(m.q_idx) for m in chunks]),
            np.concatenate([unpack_array(m.neg) for m in chunks]))


def test_hijack_worker(broker, caplog):
    """Finding 1: a DEALER named ``inferencer-0`` took the worker's route, got 5/5 jobs and poisoned every
    version. Now: its hello cannot be completed without the secret, its frames carry no session: refused,
    logged; the job goes to the real worker, the version is clean."""
    caplog.set_level(logging.INFO, logger="ance.broker")
    w = FakeWorker(broker.addr, "0", identity=None)  # as a real worker: the ROUTER names its route
    broker.peers.append(w)
    wait_until(lambda: broker.b.state.ready_workers, 10, "a ready worker")
    thief = forge_session(broker.addr, b"inferencer-0", "inferencer-0")
    broker.peers.append(thief)
    thief.wait_for(lambda ms: [m for m in ms if m.type == "error" and "wrong proof" in m.reason], 10, "refusal")
    thief.send("heartbeat", state="idle")
    t = trainer_peer(broker)
    t.send("checkpoint", step=1, path=str(broker.ckpts / "step-000001"), written_at=time.time())
    job = w.job()
    junk = np.zeros((CQ, DEPTH), np.int64)
    for c in range(3):  # junk results under the worker's name, for the running job
        thief.send("topk", job_id=job.job_id, version=1, shard=0, chunk=c, n_chunks=3, q_lo=c * CQ,
                   q_hi=min((c + 1) * CQ, N_TRAIN), ids=pack_array(junk[: min(CQ, N_TRAIN - c * CQ)]),
                   scores=pack_array(np.zeros(junk[: min(CQ, N_TRAIN - c * CQ)].shape, np.float32)), split="train")
    thief.send("shard_done", job_id=job.job_id, version=1, shard=0, stats={"n_docs": N_DOCS})
    w.finish(job)
    t.wait_for(lambda ms: [m for m in ms if m.type == "version_done" and m.version == 1], 10, "version_done")
    q, neg = streamed(t, 1)
    assert sorted(q.tolist()) == list(range(N_TRAIN)) and honest_rows(q, neg)  # not poisoned
    assert not thief.of("job") and not thief.of("negatives")  # no work, no weights, no negatives for it
    assert "'auth' refused: wrong proof for 'inferencer-0'" in caplog.text
    assert "no authenticated session" in caplog.text
    # a second connection under the name takes it over only by proving the secret, and that is logged
    again = FakeWorker(broker.addr, "0", identity=None)
    broker.peers.append(again)
    again.wait_for(lambda ms: [m for m in ms if m.type == "welcome"], 10, "welcome")
    assert "proved the run's secret on a new connection: it replaces" in caplog.text


def test_hijack_trainer(broker, caplog):
    """Finding 2: a peer connecting as ``trainer`` had checkpoint and status accepted and the real trainer's
    frames dropped (0 refreshes). Now it is refused, logged, and the real trainer's refresh completes."""
    caplog.set_level(logging.INFO, logger="ance.broker")
    w = FakeWorker(broker.addr, "0")
    broker.peers.append(w)
    wait_until(lambda: broker.b.state.ready_workers, 10, "a ready worker")
    t = trainer_peer(broker)
    impostor = Peer(broker.addr, b"trainer")  # no hello at all
    broker.peers.append(impostor)
    impostor.send("checkpoint", step=1, path=str(broker.ckpts / "step-000001"), written_at=time.time())
    impostor.send("status", step=99, version_in_use=-1, gap=0)
    impostor.wait_for(lambda ms: [m for m in ms if m.type == "error"], 10, "refusal")
    time.sleep(0.3)
    assert broker.b.state.pending is None and broker.b.state.job is None  # its checkpoint did not count
    forger = forge_session(broker.addr, None, "trainer", role="trainer")
    broker.peers.append(forger)
    forger.wait_for(lambda ms: [m for m in ms if m.type == "error" and "wrong proof" in m.reason], 10, "refusal")
    t.send("checkpoint", step=1, path=str(broker.ckpts / "step-000001"), written_at=time.time())
    w.finish(w.job())
    t.wait_for(lambda ms: [m for m in ms if m.type == "version_done" and m.version == 1], 10, "version_done")
    assert not impostor.of("negatives") and not forger.of("negatives")
    assert "'checkpoint' refused: no authenticated session" in caplog.text
    assert "'auth' refused: wrong proof for 'trainer'" in caplog.text


class Squatter:
    """A ROUTER bound first on the run's port, with its own secret: it answers every hello with a challenge
    it cannot prove, and pushes forged negatives, jobs and stops, tagged and untagged."""

    def __init__(self, address: str):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(address)
        self.hellos = 0

    def serve(self, seconds: float, nudge: bool = False) -> None:
        """``nudge``: answer every other frame with "unknown peer", as a restarted broker does, so that
        clients of an earlier broker say hello to us."""
        end = time.time() + seconds
        while time.time() < end:
            if not self.sock.poll(50):
                continue
            route, frame = self.sock.recv_multipart()
            msg = unpack_message(frame, 1 << 20)
            if msg.type != "hello":
                if nudge:
                    self.sock.send_multipart([route, pack_message("error", reason="unknown peer: send hello first",
                                                                  of_type=msg.type)])
                continue
            self.hellos += 1
            for tag in (None, "f" * 32):
                for type_, fields in (
                        ("challenge", dict(nonce=new_nonce(), proof="ab" * 32)),
                        ("welcome", dict(broker_id="rogue", latest_version=5, heartbeat_s=1.0)),
                        ("negatives", dict(version=1, chunk=0, n_chunks=1, q_idx=pack_array(np.arange(4, dtype=np.int32)),
                                           neg=pack_array(np.zeros((4, 3), np.int32)), sent_at=time.time())),
                        ("version_done", dict(version=1, n_shards=1, stats={})),
                        ("job", dict(job_id=1, version=1, ckpt_path="/x/checkpoints/step-000001", shard=0,
                                     n_shards=1, doc_lo=0, doc_hi=1, depth=1, chunk_queries=1, eval=False,
                                     data_fingerprint="fp")),
                        ("stop", dict(reason="forged"))):
                    self.sock.send_multipart([route, pack_message(type_, session=tag, **fields)])

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


def test_squat_broker(tmp_path, caplog):
    """Finding 3: a ROUTER bound first on the run's port fed the trainer forged negatives and stopped the
    inferencers. Now both refuse a broker that cannot prove the run's secret, and say so."""
    from ance.inferencer.link import InferencerLink
    from ance.trainer.feed import NegativesTable
    from ance.trainer.link import TrainerLink

    caplog.set_level(logging.INFO)
    port = free_port()
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", f"broker.address=tcp://127.0.0.1:{port}",
                             "broker.heartbeat_s=0.1", "broker.worker_timeout_s=1"])
    (tmp_path / "run").mkdir()
    ensure_secret(tmp_path / "run")  # the run's secret; the squatter does not hold it
    rogue = Squatter(cfg.broker.address)
    table = NegativesTable(4, 3)
    before = table.state_dict()
    trainer = TrainerLink(cfg, table, Recorder(), ["q0", "q1", "q2", "q3"], "fp")
    worker = InferencerLink(cfg, "0", "cpu", "fp")
    try:
        trainer.connect()
        worker.start()
        server = threading.Thread(target=rogue.serve, args=(4.0,), daemon=True)
        server.start()
        with pytest.raises(AnceError, match="could not prove the run's secret"):
            trainer.wait_for(lambda: False, timeout=3.0, step=1)
        server.join(10)
        assert rogue.hellos >= 2
        assert worker.inbox.empty() and not worker.welcomed.is_set()  # no forged job, no forged stop
        assert trainer.latest_complete == -1 and not trainer.first_chunk_at  # no forged negatives
        after = table.state_dict()
        assert (after["version"] == before["version"]).all() and (after["neg"] == before["neg"]).all()
        assert worker.refused_brokers >= 1 and trainer.refused_brokers >= 1
        assert "could not prove the run's secret: refused" in caplog.text
    finally:
        worker.close()
        trainer.close()
        rogue.close()


def test_squat_after_broker_restart(tmp_path, caplog):
    """Issue 28, "the launcher holds the port across broker restarts or checks the new broker the same way":
    clients check every broker the same way. A trainer and an inferencer welcomed by the real broker; the broker
    goes down (a launcher restart window) and a squatter binds its port and nudges them to say hello: they refuse
    it (it cannot prove the run's secret) and use nothing it sends (no negatives, job, stop or welcome); the
    restarted broker proves the secret and both carry on with it."""
    from ance.broker.hub import Broker
    from ance.inferencer.link import InferencerLink
    from ance.trainer.feed import NegativesTable
    from ance.trainer.link import TrainerLink

    caplog.set_level(logging.INFO)
    env, stop = start_broker(tmp_path)
    table = NegativesTable(N_TRAIN, 3)
    before = table.state_dict()
    trainer = TrainerLink(env.cfg, table, Recorder(), [f"q{i}" for i in range(N_TRAIN)], "fp-test")
    worker = InferencerLink(env.cfg, "0", "cpu", "fp-test")
    rogue = restarted = None
    try:
        trainer.connect()
        worker.start()
        trainer.wait_for(lambda: trainer.broker_id is not None, timeout=30)
        wait_until(worker.welcomed.is_set, 30, "inferencer welcomed")
        first = env.b.broker_id
        assert trainer.broker_id == worker.broker_id == first
        stop()  # the broker is down: its port is free

        rogue = Squatter(env.addr)
        server = threading.Thread(target=rogue.serve, args=(6.0, True), daemon=True)
        server.start()
        trainer.status(1, None, 0)  # a frame to the port: the squatter answers "unknown peer", we say hello
        trainer.wait_for(lambda: trainer.refused_brokers > 0, timeout=30)
        wait_until(lambda: worker.refused_brokers > 0, 30, "the inferencer refusing the squatter")
        server.join(15)
        rogue.close()
        rogue = None
        assert worker.inbox.empty()  # no forged job, no forged stop
        assert trainer.latest_complete == -1 and not trainer.first_chunk_at and trainer.broker_id == first
        after = table.state_dict()
        assert (after["version"] == before["version"]).all() and (after["neg"] == before["neg"]).all()
        assert "could not prove the run's secret: refused" in caplog.text
        assert "frame not from our authenticated broker session" in caplog.text

        # the launcher restarts the broker on the same port: it proves the secret, the clients take it
        b2 = Broker(env.cfg, dataset=synthetic_dataset(), metrics=Recorder())
        b2.bind()
        restarted = threading.Thread(target=b2.run, daemon=True)
        restarted.start()
        trainer.wait_for(lambda: trainer.broker_id == b2.broker_id, timeout=60)
        wait_until(lambda: worker.welcomed.is_set() and worker.broker_id == b2.broker_id, 60, "welcomed again")
        job = worker.inbox.get(timeout=60)  # the restarted broker queued the run's checkpoint: a real job
        assert job.type == "job" and job.ckpt_path.endswith("checkpoints/step-000001") and str(tmp_path) in job.ckpt_path
    finally:
        worker.close()
        trainer.close()
        if rogue is not None:
            rogue.close()
        if restarted is not None:
            b2.stop("test over")
            restarted.join(10)


def test_deadline(tmp_path, caplog):
    """Finding 4: registered workers heartbeating "busy" for ever stalled every refresh (trainer exit 2 after
    1800 s). Now a shard without progress within its bound is re-queued, repeated misses exclude the
    worker (logged, an event), and an honest worker finishes the refresh."""
    caplog.set_level(logging.INFO, logger="ance.broker")
    env, stop = start_broker(tmp_path, "broker.shard_deadline_s=1.0")
    try:
        liars = [FakeWorker(env.addr, f"busy{i}") for i in range(2)]
        env.peers += liars
        wait_until(lambda: len(env.b.state.ready_workers) == 2, 10, "two ready liars")
        t = trainer_peer(env)
        t.send("checkpoint", step=1, path=str(env.ckpts / "step-000001"), written_at=time.time())

        def excluded():
            for p in liars:  # they say "busy", and nothing else, for ever
                p.pump(0.01)
                p.send("heartbeat", state="busy")
            return len(env.b.state.excluded) == 2
        wait_until(excluded, 20, "both liars excluded")
        honest = FakeWorker(env.addr, "honest")
        env.peers.append(honest)
        done_jobs = set()

        def finished():
            for p in liars:
                p.send("heartbeat", state="busy")
            honest.pump(0.05)
            for job in honest.of("job"):
                if (job.job_id, job.shard) not in done_jobs:
                    done_jobs.add((job.job_id, job.shard))
                    honest.finish(job)
            t.pump(0.01)
            return t.of("version_done", version=1)
        wait_until(finished, 30, "the refresh finished by the honest worker")
        q, neg = streamed(t, 1)
        assert sorted(q.tolist()) == list(range(N_TRAIN)) and honest_rows(q, neg)
        assert "made no progress within" in caplog.text and "excluded: missed 2 shard deadlines" in caplog.text
        assert any(e["event"] == "worker" and "excluded" in e["state"] for e in env.b.metrics.events)
    finally:
        stop()


def test_symlink_checkpoint(tmp_path, caplog):
    """Finding 5: a symlink planted in RUN_DIR/checkpoints was queued at broker restart (and its files
    shipped with send_weights), and loaded by ``train --resume``. Now it is never followed, and logged."""
    from ance.broker.hub import Broker
    from ance.run.rundir import RunDir
    from ance.trainer.checkpoint import latest_checkpoint

    caplog.set_level(logging.INFO)
    run = tmp_path / "run"
    real = run / "checkpoints" / "step-000001"
    real.mkdir(parents=True)
    (real / "manifest.json").write_text('{"step": 1}')
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "SECRET.txt").write_text("secret")
    (outside / "manifest.json").write_text('{"step": 99}')
    os.symlink(outside, run / "checkpoints" / "step-000099")
    assert RunDir(run).complete_checkpoints() == [(1, real)]
    assert latest_checkpoint(run) == (1, real)  # what `train --resume` resumes from
    cfg = load_config(None, [f"run_dir={run}", f"broker.address=tcp://127.0.0.1:{free_port()}",
                             "broker.send_weights=true"])
    b = Broker(cfg, dataset=synthetic_dataset(), metrics=Recorder())  # a broker (re)start
    try:
        assert b.state.pending is not None and b.state.pending.step == 1
        assert "step-000099 is a symlink: ignored" in caplog.text
    finally:
        b.close()


def test_symlink_token_tmp(tmp_path):
    """Finding 6: the broker opened the predictable ``.broker.token.<pid>.tmp`` following symlinks and
    overwrote another file with the token. Now temp files are private names opened O_EXCL|O_NOFOLLOW, and the
    run's secret is never read through, nor written to, a planted link."""
    from ance.broker.guard import read_token, write_token

    run = tmp_path / "run"
    run.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    os.chmod(victim, 0o644)
    for pid in (os.getpid(), os.getpid() + 1):
        os.symlink(victim, run / f".broker.token.{pid}.tmp")
    os.symlink(victim, run / "broker.token")
    token = write_token(run)
    assert victim.read_text() == "precious\n"
    tok = run / "broker.token"
    assert not tok.is_symlink() and tok.stat().st_mode & 0o777 == 0o600 and read_token(run) == token
    # the run's secret: a planted link is refused (one line), its target untouched
    other = tmp_path / "other"
    other.mkdir()
    os.symlink(victim, secret_path(other))
    with pytest.raises(ConfigError, match="symlink is refused"):
        ensure_secret(other)
    assert victim.read_text() == "precious\n"
    secret = ensure_secret(run)
    assert len(secret) == 32 and secret_path(run).stat().st_mode & 0o777 == 0o600
    assert ensure_secret(run) == secret  # the first writer wins, later roles read it
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp") and not p.is_symlink()]
