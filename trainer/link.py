"""The trainer's end of the broker connection.

It announces checkpoints, reports the step and gap, and applies streamed
negatives chunks to the ``NegativesTable`` as they arrive. It also measures
each refresh's latency on the trainer's own clock (checkpoint written → first
chunk here → last chunk here) and writes the ``refresh`` event.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Sequence

import numpy as np
import zmq

from ance.wire.brokerlink import BrokerLink, is_unknown_peer
from ance.run.config import Config
from ance.run.errors import AnceError
from ance.wire.protocol import unpack_array

from .feed import NegativesTable

log = logging.getLogger(__name__)


class TrainerLink(BrokerLink):
    """``TrainerLink(cfg, table, metrics, query_ids, fingerprint).connect()``, then ``announce`` /
    ``status`` / ``poll`` / ``wait_for`` from the training loop's thread (no thread of its own)."""

    role = "trainer"

    def __init__(self, cfg: Config, table: NegativesTable, metrics, query_ids: Sequence[str], fingerprint: str):
        super().__init__(cfg, "trainer", "", fingerprint)
        self.table = table
        self.metrics = metrics
        self.n_queries = len(query_ids)
        self.sock = None
        self.ctx = None
        self.written_at: dict[int, float] = {}      # checkpoint step -> when it was written
        self.first_chunk_at: dict[int, float] = {}
        self.last_chunk_at: dict[int, float] = {}
        self.chunks_seen: dict[int, set[int]] = {}
        self.complete: set[int] = set()
        self.latest_complete = -1
        self.last_heard = 0.0
        self._announced: dict[int, str] = {}

    # ------------------------------------------------------------ socket
    def connect(self) -> None:
        self.ctx = zmq.Context.instance()
        self.sock = self.open_socket(self.ctx)
        self._hello()

    def _hello(self) -> None:
        frame = self.hello_frame(have_version=self.latest_complete)
        if frame is not None:
            self._put(frame)
        self.last_heard = time.time()

    def _send(self, type_: str, **fields: Any) -> None:
        self._put(self.pack(type_, **fields))

    def _put(self, frame: bytes) -> None:
        """Send without ever blocking the training loop. A DEALER blocks when it has no pipe to the
        broker (ZeroMQ drops the pipe for good after a refused handshake, e.g. CURVE keys that do
        not match) or its queue is full (a broker long gone): then the frame is dropped; ``hello``
        and the announcements are sent again after a silence (``wait_for``), and a wait that never
        ends raises its one-line error instead of hanging."""
        try:
            self.sock.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            log.debug("broker at %s unreachable; a %d-byte frame dropped", self.cfg.broker.address, len(frame))

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close(0)
            self.sock = None

    # ----------------------------------------------------------- outgoing
    def announce(self, step: int, path: str, written_at: float) -> None:
        self.written_at[step] = written_at
        self._announced[step] = path
        self._send("checkpoint", step=int(step), path=path, written_at=float(written_at))

    def status(self, step: int, version: int | None, gap: int) -> None:
        self._send("status", step=int(step), version_in_use=-1 if version is None else int(version), gap=int(gap))

    def pending_versions(self) -> set[int]:
        """Announced checkpoints whose negatives have not fully arrived (do not prune them)."""
        return {s for s in self._announced if s not in self.complete and s > self.latest_complete}

    # ----------------------------------------------------------- incoming
    def poll(self, timeout_s: float = 0.0) -> int:
        """Handle every message that arrives within ``timeout_s``; return how many."""
        handled = 0
        timeout_ms = int(timeout_s * 1000)
        while self.sock.poll(timeout_ms, zmq.POLLIN):
            frame = self.sock.recv()
            self._handle(frame)
            handled += 1
            timeout_ms = 0
        return handled

    def _handle(self, frame: bytes) -> None:
        msg = self.read(frame)
        if msg is None:
            return
        self.last_heard = time.time()
        kind = msg["type"]
        if kind == "challenge":
            reply = self.answer(msg)
            if reply is not None:
                self._put(reply)
                self._resend_announcements()
            return
        if kind == "negatives":
            version = int(msg["version"])
            q_idx = unpack_array(msg["q_idx"])
            neg = unpack_array(msg["neg"])
            if version < self.table.version[q_idx].min(initial=np.iinfo(np.int64).max):
                return  # older than what these queries already have (a re-stream)
            self.table.update(q_idx, neg, version)
            now = time.time()
            if version not in self.first_chunk_at:
                self.first_chunk_at[version] = now
            self.last_chunk_at[version] = now
            self.chunks_seen.setdefault(version, set()).add(int(msg["chunk"]))
        elif kind == "version_done":
            self._version_done(int(msg["version"]), msg)
        elif kind == "welcome":
            self.welcomed_by(msg)
            log.info("broker %s welcomes us (its newest version: %s)", msg.get("broker_id"),
                     msg.get("latest_version"))
        elif kind == "error":
            log.error("broker error: %s", msg.get("reason"))
            if is_unknown_peer(msg) or (msg.get("s") is not None and "hello" in str(msg.get("reason", ""))):
                self._hello_again()  # a restarted broker refuses our announcements until we say hello
        elif kind == "stop":
            raise AnceError(f"the broker asked the trainer to stop: {msg.get('reason')}")

    def _version_done(self, version: int, msg) -> None:
        now = time.time()
        first = self.first_chunk_at.get(version)
        written = self.written_at.get(version)
        stats = dict(msg.get("stats") or {})
        if stats.get("replayed") and version <= self.latest_complete:
            # A restarted broker re-sending a version we already have (or a newer one): not a new refresh.
            log.info("negatives v%d re-streamed by the broker (v%d already complete here)", version,
                     self.latest_complete)
            return
        self.complete.add(version)
        self.latest_complete = max(self.latest_complete, version)
        last = self.last_chunk_at.get(version)
        # latency_all_s: to the last negatives chunk; latency_done_s: to version_done, which
        # follows the evaluation of the checkpoint when an eval split is configured
        event = {"version": version, "n_shards": msg.get("n_shards"),
                 "latency_first_s": (first - written) if (first and written) else None,
                 "latency_all_s": (last - written) if (last and written) else None,
                 "latency_done_s": (now - written) if written else None, **stats}
        self.metrics.log("refresh", **event)
        log.info("negatives v%d complete: %s", version, {k: v for k, v in event.items() if v is not None})

    # ------------------------------------------------------------ waiting
    def wait_for(self, ready: Callable[[], bool], timeout: float, step: int | None = None) -> float:
        """Block on the socket until ``ready()``; return seconds waited.

        Re-sends ``hello`` when the broker has been silent for a while (it may
        have restarted and lost us), so a broker restart never deadlocks us.
        """
        t0 = time.time()
        silence = max(2.0, self.cfg.broker.worker_timeout_s)
        while not ready():
            if time.time() - t0 > timeout:
                if self.refused_brokers:
                    raise AnceError(
                        f"waited {timeout:.0f}s for fresh negatives at step {step}: the broker at "
                        f"{self.cfg.broker.address} could not prove the run's secret ({self.refused_brokers} times): "
                        "another process holds its port, or it serves another run (RUN_DIR/run.secret)")
                raise AnceError(
                    f"waited {timeout:.0f}s for fresh negatives at step {step} (negatives.max_gap="
                    f"{self.cfg.negatives.max_gap}); is the broker at {self.cfg.broker.address} running with "
                    f"inferencers? See RUN_DIR/logs/. Raise negatives.wait_timeout_s to wait longer.")
            self.poll(0.2)
            if time.time() - self.last_heard > silence:
                log.warning("no word from the broker for %.0fs; saying hello again", silence)
                self._hello_again()
        return time.time() - t0

    def _hello_again(self) -> None:
        """``hello``, then the checkpoints announced since the newest complete version (the broker only
        takes announcements from the trainer that said hello, so those sent before were refused)."""
        self._hello()

    def _resend_announcements(self) -> None:
        for s, path in sorted(self._announced.items()):
            if s > self.latest_complete:
                self._send("checkpoint", step=int(s), path=path, written_at=float(self.written_at[s]))

    def wait_for_version(self, version: int, timeout: float) -> float:
        """Wait until version ``version`` has fully arrived (the final refresh)."""
        return self.wait_for(lambda: self.latest_complete >= version, timeout, step=version)
