"""The broker: the hub process between the trainer and the inferencer pool.

One ZeroMQ ROUTER; the trainer and every inferencer connect a DEALER. The
refresh logic lives in :class:`ance.broker.refresh.RefreshState` (pure, tested on its
own); this module is the loop around it: decode every frame (a bad one is
logged with the peer and answered with ``error``; the broker goes on), track
peers, turn the state's decisions into ``job`` messages, and for every merged
chunk hand it to :class:`ance.broker.assemble.VersionAssembler`, which selects
negatives, **persists them, then sends them** to the trainer.

The versions' files and tables are :class:`ance.broker.versions.NegativesVersions`'s
(``RUN_DIR/negatives/step-N.partial.tsv`` fsynced per chunk, renamed
``step-N.tsv`` when complete). On start the newest complete version is reloaded
(so a trainer that says ``hello`` gets it streamed) and the newest complete
checkpoint newer than it is queued as a refresh, so killing the broker loses
nothing.

``version_done.stats`` (what the trainer logs as the ``refresh`` event) are
:mod:`ance.broker.stats`'s.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import zmq

from ance.run.config import Config
from ance.data.dataset import load_for_config
from ance.run.errors import DiskFullError, ProtocolError
from ance.wire.protocol import MAX_STR, pack_message, unpack_array, unpack_message
from ance.run.rundir import RunDir, weights_limit
from ance.run.telemetry import MetricsWriter, prometheus_port_for
from ance.wire.transport import router_socket

from ance.wire.auth import SECRET_ENV, ensure_secret, read_secret

from .guard import (RateLimit, confine_checkpoint, max_inbound_bytes, peer_label, peer_name, safe_text,
                    token_matches, write_token)
from .assemble import VersionAssembler
from .refresh import Assignment, RefreshError, RefreshState
from .sessions import Sessions
from .admit import REFUSAL_LOG_S, Admission
from .stats import STAGES, eval_depth
from .stream import TrainerStream
from .deadline import ShardDeadlines
from .versions import NegativesVersions

log = logging.getLogger(__name__)



class Broker(Admission):
    """``Broker(cfg).run()`` serves until ``stop``, SIGTERM or SIGINT; ``close()`` frees the socket.

    ``dataset``: the loaded dataset (tests pass one in); default
    :func:`ance.data.dataset.load_for_config`. ``metrics``: a ``MetricsWriter``-like sink;
    default ``MetricsWriter(run_dir, "broker", ...)``.
    """

    def __init__(self, cfg: Config, *, dataset=None, metrics=None):
        self.cfg = cfg
        self.run_dir = Path(cfg.run_dir)
        self.data = dataset if dataset is not None else load_for_config(cfg)
        self.train = self.data.split(cfg.data.train_split)
        self.eval = self.data.split(cfg.data.eval_split) if cfg.data.eval_split else None
        self.doc_ids = list(self.data.corpus.ids)
        self.n_docs = len(self.doc_ids)
        self.n_train = len(self.train.ids)
        self.fingerprint = self.data.fingerprint
        self.depth = cfg.negatives.depth
        self.keep = cfg.negatives.keep
        self.broker_id = f"{socket.gethostname()}-{os.getpid()}-{int(time.time())}"
        self.max_inbound = max_inbound_bytes(cfg)
        self.metrics = metrics if metrics is not None else self._metrics_writer()
        self.state = RefreshState(self.n_docs, self.n_train, len(self.eval.ids) if self.eval else 0,
                                  depth=self.depth, eval_depth=eval_depth(self.depth),
                                  chunk_queries=cfg.broker.chunk_queries,
                                  worker_timeout_s=cfg.broker.worker_timeout_s,
                                  max_shards=cfg.broker.max_shards,
                                  # job ids differ across broker restarts, so stale results are told apart
                                  first_job_id=int(time.time() * 1000) % (1 << 40))
        self.versions = NegativesVersions(self.run_dir, self.train.ids, self.doc_ids, keep=self.keep,
                                    chunk_queries=cfg.broker.chunk_queries, fingerprint=self.fingerprint)
        self.trainer = TrainerStream(self.versions, self._send)
        self.deadlines = ShardDeadlines(cfg.broker.shard_deadline_s,
                                        floor_s=max(3 * cfg.broker.worker_timeout_s, 30.0))
        self.output = VersionAssembler(cfg, self.train, self.eval, self.doc_ids, self.versions, self.trainer)
        self._told_unknown = RateLimit(cfg.broker.heartbeat_s)  # "send hello first", per peer
        self._log_refusal = RateLimit(REFUSAL_LOG_S)               # one log line per peer and kind
        self._stop_reason: str | None = None
        self._next_sweep = 0.0  # per-worker keys: when to look for revoked keys next (Admission._sweep_keys)
        self._token: str | None = None
        self.sessions = Sessions(b"")  # keyed with the run's secret at bind()
        self.ctx = None
        self.sock = None
        self._restore()

    # ------------------------------------------------------------ startup
    def _metrics_writer(self):
        t = self.cfg.telemetry
        return MetricsWriter(self.run_dir, "broker", tensorboard=False,
                             prometheus_port=prometheus_port_for(t.prometheus_port, "broker"),
                             prometheus_addr=t.prometheus_addr)

    def _restore(self) -> None:
        """Reload the newest complete negatives; queue a newer complete checkpoint."""
        latest = self.versions.restore()
        if latest is not None:
            self.state.latest_version = latest.version
        ckpts = RunDir(self.run_dir).complete_checkpoints()
        if ckpts and ckpts[-1][0] > self.state.latest_version:
            step, path = ckpts[-1]
            log.info("%s", self.state.on_checkpoint(step, str(path), time.time()))

    def bind(self) -> str:
        """Create and bind the ROUTER; return the bound endpoint."""
        self.ctx = zmq.Context()
        try:
            self.sock, endpoint = router_socket(self.ctx, self.cfg.broker, self.max_inbound)
        except BaseException:
            self.ctx.term()
            self.ctx = None
            raise
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._token = write_token(self.run_dir)  # `stop` must carry it (RUN_DIR/broker.token)
        given = os.environ.get(SECRET_ENV)  # a run spread over hosts without a shared file system
        self.sessions.secret = read_secret(given) if given else ensure_secret(self.run_dir)  # proved at hello
        log.info("broker %s listening on %s (%d docs, %d train queries, %s)", self.broker_id, endpoint,
                 self.n_docs, self.n_train, f"eval split {self.cfg.data.eval_split} with {len(self.eval.ids)} "
                 "queries" if self.eval else "no eval split")
        return endpoint

    # --------------------------------------------------------------- loop
    def run(self) -> int:
        """Serve until stopped; return the exit code (0)."""

        if self.sock is None:
            self.bind()
        self._install_signals()
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        timeout_ms = max(10, int(self.cfg.broker.heartbeat_s * 500))
        try:
            self._gauges()
            self._schedule()
            while self._stop_reason is None:
                try:
                    events = dict(poller.poll(timeout_ms))
                except zmq.ZMQError as exc:
                    if exc.errno == zmq.EINTR:  # a signal: the flag says what to do
                        continue
                    raise
                if self.sock in events:
                    for _ in range(1000):  # drain what is there, but let timers run now and then
                        try:  # per-worker keys: frames, for the CURVE key ZAP bound to the connection
                            parts = self.sock.recv_multipart(zmq.NOBLOCK, copy=not self.cfg.broker.client_keys)
                        except zmq.Again:
                            break
                        key = None if isinstance(parts[-1], bytes) else parts[-1].get("User-Id")
                        self._dispatch([bytes(p) for p in parts], key)
                for name in self.state.expire(time.time()):
                    log.warning("worker %s lost (silent for more than %gs)", name, self.cfg.broker.worker_timeout_s)
                for line in self.deadlines.check(self.state, time.time()):  # busy for ever, no progress
                    log.error("%s", line)
                self._sweep_keys(time.time())
                self._schedule()
            log.info("broker stopping: %s", self._stop_reason)
            return 0
        finally:
            self.close()

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum, frame):
            self._stop_reason = f"signal {signal.Signals(signum).name}"

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def stop(self, reason: str = "stop requested") -> None:
        self._stop_reason = reason

    def close(self) -> None:
        self.versions.close()
        if self.sock is not None:
            self.sock.close(0)
            self.sock = None
        if self.ctx is not None:
            self.ctx.term()
            self.ctx = None
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None

    # ------------------------------------------------------------ sending
    def _send(self, peer: bytes, type_: str, **fields: Any) -> bool:
        """Send one message to the session named ``peer``; False (logged) when it is gone or its queue is full."""
        sess = self.sessions.get(peer_name(peer))
        if sess is None:
            log.warning("peer %s has no session; could not send %r", peer_label(peer), type_)
            self._peer_gone(peer)
            return False
        return self._send_route(sess.route, type_, peer, session=sess.broker_tag, **fields)

    def _send_route(self, route: bytes, type_: str, peer: bytes | None = None, **fields: Any) -> bool:
        """Send one message on a connection (an unauthenticated one: ``error``, ``challenge``)."""
        frame = pack_message(type_, **fields)
        peer = route if peer is None else peer
        try:
            self.sock.send_multipart([route, frame], zmq.NOBLOCK)
            return True
        except zmq.Again:
            log.error("peer %s: send queue full, dropped a %r message", peer_label(peer), type_)
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            log.warning("peer %s is gone; could not send %r", peer_label(peer), type_)
            self._peer_gone(peer)
        return False

    def _error(self, peer: bytes, reason: str, of_type: str | None, raw: bool = False) -> None:
        """``error`` to the session ``peer``, or (``raw``) to the connection ``peer``."""
        (self._send_route if raw else self._send)(peer, "error", reason=reason[:MAX_STR], of_type=of_type)

    def _refuse(self, peer: bytes, of_type: str, reason: str, raw: bool = False) -> None:
        """Answer a refused message; log it once per peer, kind and ``REFUSAL_LOG_S``."""
        if self._log_refusal.allow((peer, of_type), time.time()):
            log.warning("peer %s: %r refused: %s (further refusals of this peer logged at most every %gs)",
                        peer_label(peer), of_type, reason, REFUSAL_LOG_S)
        self._error(peer, f"refused: {reason}", of_type, raw)

    def _peer_gone(self, peer: bytes) -> None:
        self.sessions.drop(peer_name(peer))
        if self.trainer.gone(peer):
            return
        if peer_name(peer) in self.state.workers:
            self.state.on_lost(peer_name(peer), "disconnected")
            self._emit()

    # ------------------------------------------------------------ receive
    def _dispatch(self, parts: list[bytes], key: str | None = None) -> None:
        """One message; ``key``: the CURVE public key of its connection (per-worker keys)."""
        if len(parts) != 2:
            peer = parts[0] if parts else b"?"
            log.error("peer %s: rejected a message of %d frames (one frame per message)", peer_label(peer),
                      len(parts) - 1)
            if parts:
                self._error(peer, f"expected one frame per message, got {len(parts) - 1}", None)
            return
        peer, frame = parts
        try:
            msg = unpack_message(frame, self.max_inbound)
        except ProtocolError as exc:
            log.error("peer %s: rejected a frame of %d bytes: %s", peer_label(peer), len(frame), exc)
            self._error(peer, f"rejected: {exc}", getattr(exc, "of_type", None), raw=True)
            return
        handler = getattr(self, f"_on_{msg.type}", None)
        if handler is None:
            log.error("peer %s: unexpected %r message (not sent to a broker)", peer_label(peer), msg.type)
            self._error(peer, f"a broker does not accept {msg.type!r} messages", msg.type, raw=True)
            return
        raw = msg.type in ("hello", "auth", "stop")  # the only messages taken outside a session
        if msg.type == "hello":
            handler = functools.partial(handler, key=key)
        if not raw:
            sess = self.sessions.of(peer, msg)
            if sess is None:
                self._no_session(peer, msg.type)
                return
            peer = sess.name.encode()
        try:
            handler(peer, msg)
        except (RefreshError, ProtocolError) as exc:
            self._refuse(peer, msg.type, str(exc), raw)
        except (OSError, DiskFullError):
            raise  # the run directory is unwritable or full: stop; a restarted broker resumes from disk
        except Exception as exc:  # a message we cannot handle must not take the broker down
            log.exception("peer %s: handling a %r message failed", peer_label(peer), msg.type)
            self._error(peer, f"broker could not handle it: {type(exc).__name__}: {exc}", msg.type, raw)

    def _on_heartbeat(self, peer: bytes, msg) -> None:
        if peer == self.trainer.peer:
            return
        if self._known(peer, "heartbeat"):
            w = self.state.workers[peer_name(peer)]
            was_ready = w.ready
            self.state.on_seen(w.name, time.time(), state=msg.state)
            if w.ready and not was_ready:
                log.info("inferencer %s ready for shards; %d of %d workers ready", peer_label(peer),
                         len(self.state.ready_workers), len(self.state.workers))

    def _on_checkpoint(self, peer: bytes, msg) -> None:
        if peer != self.trainer.peer:
            self._refuse(peer, "checkpoint", "only the trainer that said hello announces checkpoints")
            return
        # A checkpoint is named by its step in our own RUN_DIR/checkpoints, never read from where a peer says.
        path = confine_checkpoint(self.run_dir, msg.path, msg.step)  # RefreshError: refused and logged
        # queued at our receive time: msg.written_at is the trainer's clock, which may be skewed from ours
        outcome = self.state.on_checkpoint(msg.step, str(path), time.time())
        log.info("checkpoint %d announced by %s: %s", msg.step, peer_label(peer), outcome)

    def _on_status(self, peer: bytes, msg) -> None:
        if peer != self.trainer.peer:
            self._refuse(peer, "status", "only the trainer that said hello reports its status")
            return
        self._gauge("ance_trainer_step", msg.step)
        self._gauge("ance_async_gap", msg.gap)
        self._gauge("ance_negatives_version", msg.version_in_use)

    def _on_stop(self, peer: bytes, msg) -> None:
        if self._token is None or not token_matches(self._token, msg.get("token")):
            self._refuse(peer, "stop", "a stop must carry the run's token (RUN_DIR/broker.token); ignored", raw=True)
            return
        log.info("stop from %s: %s", peer_label(peer), safe_text(msg.reason))
        self._stop_reason = f"stop from {peer_label(peer)}: {safe_text(msg.reason)}"

    def _on_topk(self, peer: bytes, msg) -> None:
        if not self._worker_seen(peer, "topk", msg.job_id):
            return
        t0 = time.perf_counter()
        ready = self.state.on_topk(peer_name(peer), job_id=msg.job_id, shard=msg.shard, split=msg.split,
                                   chunk=msg.chunk, n_chunks=msg.n_chunks, q_lo=msg.q_lo, q_hi=msg.q_hi,
                                   scores=unpack_array(msg.scores), ids=unpack_array(msg.ids), version=msg.version)
        self.output.merged(msg.job_id, time.perf_counter() - t0)
        self.deadlines.progress(msg.job_id, msg.shard, peer_name(peer), time.time())
        for r in ready:
            self.output.chunk(r, self.state.n_chunks("train"))

    def _on_shard_done(self, peer: bytes, msg) -> None:
        if not self._worker_seen(peer, "shard_done", msg.job_id):
            return
        if self.state.on_shard_done(peer_name(peer), job_id=msg.job_id, shard=msg.shard, stats=msg.stats,
                                    now=time.time(), version=msg.version):
            s = msg.stats
            self.deadlines.measured(s)
            log.info("v%d shard %d done by %s: %s docs, %s", msg.version, msg.shard, peer_label(peer), s.get("n_docs"),
                     " ".join(f"{k[:-2]} {s[k]:.2f}s" for k in STAGES if isinstance(s.get(k), (int, float))))
        self._emit()

    def _on_shard_failed(self, peer: bytes, msg) -> None:
        if not self._worker_seen(peer, "shard_failed", msg.job_id):
            return
        reason = safe_text(msg.reason, 500)
        abandoned = self.state.on_shard_failed(peer_name(peer), job_id=msg.job_id, shard=msg.shard, reason=reason,
                                               version=msg.get("version"))
        log.error("shard %d of job %d failed on %s: %s", msg.shard, msg.job_id, peer_label(peer), reason)
        if abandoned:
            log.error("%s", abandoned)
            self._drop_partial()
        self._emit()

    def _worker_seen(self, peer: bytes, of_type: str, job_id: int) -> bool:
        """True for a registered worker's report; others are refused. A report on another job than the
        running one is logged (rate-limited) and passed on, for the state machine to free the worker."""
        name = peer_name(peer)
        if name not in self.state.workers:
            if peer == self.trainer.peer:
                self._refuse(peer, of_type, "the trainer does not report on shards")
            else:
                self._known(peer, of_type)
            return False
        self.state.on_seen(name, time.time())
        if not self.state.is_current(job_id) and self._log_refusal.allow((peer, "stale"), time.time()):
            log.warning("peer %s: %r for job %d, not the running job (%s): dropped (logged at most every %gs)",
                        peer_label(peer), of_type, job_id, self.state.job.job_id if self.state.job else "none",
                        REFUSAL_LOG_S)
        return True

    # ------------------------------------------------------------ schedule
    def _schedule(self) -> None:
        """Start jobs and hand out shards; close a complete version."""
        before = self.state.job.job_id if self.state.job else None
        assignments = self.state.assign(time.time())
        job = self.state.job
        if job is not None and job.job_id != before:
            self.output.begin(job)
        for worker, a in assignments:
            if self.state.job is not job:  # abandoned while sending (weights unreadable)
                break
            self._send_job(worker, a)
        if self.state.complete():
            self._finish()
        self._emit()

    def _send_job(self, worker: str, a: Assignment) -> None:
        fields: dict[str, Any] = {}
        if self.cfg.broker.send_weights:
            try:
                fields["weights"] = self.output.weights(a.ckpt_path, weights_limit(self.cfg.broker.max_frame_bytes))
            except (OSError, ValueError) as exc:
                log.error("%s", self.state.abandon(f"cannot ship checkpoint {a.ckpt_path}: {exc}"))
                self._drop_partial()
                return
        sent = self._send(worker.encode(), "job", job_id=a.job_id, version=a.version, ckpt_path=a.ckpt_path,
                          shard=a.shard, n_shards=a.n_shards, doc_lo=a.doc_lo, doc_hi=a.doc_hi, depth=self.depth,
                          chunk_queries=self.cfg.broker.chunk_queries, eval=a.eval,
                          data_fingerprint=self.fingerprint, eval_depth=eval_depth(self.depth), **fields)
        if sent:
            log.info("v%d shard %d/%d docs [%d, %d) -> %s", a.version, a.shard, a.n_shards, a.doc_lo, a.doc_hi,
                     worker)

    def _finish(self) -> None:
        self.output.finish(self.state.finish())
        self._gauges()

    def _drop_partial(self) -> None:
        self.output.drop()

    # ------------------------------------------------------------ telemetry
    def _emit(self) -> None:
        for event in self.state.drain_events():
            kind = event.pop("event")
            if kind == "shard" and event["state"] not in ("assigned", "done"):
                log.warning("v%s shard %s (%s): %s", event["version"], event["shard"], event["worker"],
                            event["state"])
            if self.metrics is not None:
                self.metrics.log(kind, **event)
        self._gauges()

    def _gauges(self) -> None:
        self._gauge("ance_workers_alive", len(self.state.workers))
        self._gauge("ance_refresh_shards_done", self.state.shards_done)

    def _gauge(self, name: str, value: float) -> None:
        if self.metrics is not None:
            self.metrics.gauge(name, value)

