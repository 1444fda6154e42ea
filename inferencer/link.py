"""The inferencer's connection to the broker, run by one I/O thread.

ZeroMQ sockets must not be used from two threads, and the worker's main thread
spends minutes inside torch and faiss (loading, tokenizing, encoding, building
an index) where it cannot answer anything. So one background thread owns the
DEALER socket: it sends heartbeats every ``heartbeat_s`` whatever the main
thread is doing, forwards ``job``/``stop`` to :attr:`InferencerLink.inbox`, and sends what
the main thread puts in the outbox. The broker therefore never times out a
worker that is merely busy; ``worker_timeout_s`` only has to cover a dead or
unreachable process (a wedged main thread keeps heartbeating, the price of this
choice; the broker's shard events show a shard that never finishes).

Reconnection: ZeroMQ reconnects the TCP connection by itself. A restarted
broker does not know us and answers our next heartbeat with ``error`` "unknown
peer"; we then say ``hello`` again (with ``state=busy`` and the job id when in
the middle of a shard, so it is not handed another one). ``hello`` is also
repeated while no ``welcome`` has come back.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from typing import Any

import zmq

from ance.wire.brokerlink import BrokerLink, is_unknown_peer
from ance.run.config import Config
from ance.wire.protocol import check_message

log = logging.getLogger(__name__)


class InferencerLink(BrokerLink):
    """``InferencerLink(cfg, name, device, fingerprint).start()``; ``send(type, **fields)``; ``inbox.get()``; ``close()``."""

    role = "inferencer"

    def __init__(self, cfg: Config, name: str, device: str, fingerprint: str):
        super().__init__(cfg, f"inferencer-{name}", device, fingerprint)
        self.inbox: queue.Queue = queue.Queue()
        self._outbox: queue.Queue = queue.Queue()
        self._busy_job: int | None = None
        self._warming = False
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="broker-link", daemon=True)
        self.welcomed = threading.Event()
        self.error: BaseException | None = None
        self._pending: collections.deque = collections.deque()  # frames the socket refused for now
        self._unsent = 0
        self._lock = threading.Lock()

    # ------------------------------------------------------------ main thread
    def start(self) -> "InferencerLink":
        self._thread.start()
        return self

    def send(self, type_: str, **fields: Any) -> None:
        """Queue one message (checked here, so a bad one fails in the caller; encoded and tagged with the
        session on the link's thread, so a large ``topk`` frame's encoding overlaps the next search)."""
        check_message(type_, **fields)
        with self._lock:
            self._unsent += 1
        self._outbox.put((type_, fields))

    def set_busy(self, job_id: int | None) -> None:
        """The job the main thread works on (None: idle); goes into heartbeats and hellos."""
        self._busy_job = job_id

    def set_warming(self, warming: bool) -> None:
        """While warming up, heartbeats say so and the broker hands us no shard yet."""
        self._warming = warming

    def flush(self, timeout: float) -> bool:
        """Wait until the outbox is sent (to the socket's queue); False on timeout."""
        end = time.time() + timeout
        while time.time() < end:
            if self._unsent == 0:
                return True
            time.sleep(0.01)
        return False

    def close(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # ------------------------------------------------------------ I/O thread
    def _run(self) -> None:
        b = self.cfg.broker
        ctx = zmq.Context()
        sock = None
        try:
            # immediate: queue nothing while no broker is connected: heartbeats and hellos are then dropped
            # (best effort) and results wait in self._pending, not piled up stale for the next broker.
            sock = self.open_socket(ctx, immediate=True)
            log.info("connecting to the broker at %s as %s", b.address, self.name)
            last_hb, last_job, last_warming = 0.0, None, False
            hello_at = self._hello(sock)
            hello_every = max(2.0, 3 * b.heartbeat_s)
            while not self._stopping.is_set():
                # short waits while there is something to send: a queued result goes out within ~10 ms
                if sock.poll(1 if ((self._pending and self.welcomed.is_set()) or not self._outbox.empty()) else 10,
                             zmq.POLLIN):
                    for _ in range(100):
                        try:
                            frame = sock.recv(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        if self._handle(sock, frame):
                            hello_at = self._hello(sock)
                while True:
                    try:
                        self._pending.append(self._outbox.get_nowait())
                    except queue.Empty:
                        break
                while self._pending and self.welcomed.is_set():  # results go to an authenticated broker only
                    try:
                        sock.send(self.pack(*self._pending[0][:1], **self._pending[0][1]), zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self._pending.popleft()
                    with self._lock:
                        self._unsent -= 1
                now = time.time()
                job, warming = self._busy_job, self._warming
                # every heartbeat_s, and at once when the main thread takes or finishes a job or warms up
                if self.welcomed.is_set() and (now - last_hb >= b.heartbeat_s or job != last_job
                                               or warming != last_warming):
                    last_hb, last_job, last_warming = now, job, warming
                    state = "busy" if job is not None else ("warming" if warming else "idle")
                    self._send_now(sock, self.pack("heartbeat", state=state, job_id=job))
                if not self.welcomed.is_set() and now - hello_at > hello_every:
                    hello_at = self._hello(sock)
        except BaseException as exc:  # surfaced to the main thread, which exits
            log.exception("broker link failed")
            self.error = exc
            self.inbox.put(None)
        finally:
            if sock is not None:
                sock.close(0)
            ctx.term()

    def _send_now(self, sock, frame: bytes | None) -> None:
        if frame is None:
            return
        try:
            sock.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            pass  # heartbeats and hellos are best-effort; the next one follows soon

    def _hello(self, sock) -> float:
        self.welcomed.clear()
        job = self._busy_job
        self._send_now(sock, self.hello_frame(state="busy" if job is not None else "idle", job_id=job))
        return time.time()

    def _handle(self, sock, frame: bytes) -> bool:
        """Handle one frame from the broker; True when we must say hello again."""
        msg = self.read(frame)
        if msg is None:
            return False
        if msg.type == "challenge":
            self._send_now(sock, self.answer(msg))
        elif msg.type == "welcome":
            if self.welcomed_by(msg):
                log.info("welcomed by broker %s (latest version %d)", msg.broker_id, msg.latest_version)
            self.welcomed.set()
        elif msg.type in ("job", "stop"):
            self.inbox.put(msg)
        elif msg.type == "error":
            if msg.get("s") is None and not is_unknown_peer(msg):
                log.error("broker error outside a session (about %s): %s", msg.of_type, msg.reason)
            elif is_unknown_peer(msg):
                log.info("the broker does not know us (restarted?); saying hello again")
                return True
            log.error("broker error (about %s): %s", msg.of_type, msg.reason)
        else:
            log.warning("ignored an unexpected %r message from the broker", msg.type)
        return False
