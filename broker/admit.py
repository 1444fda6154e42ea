"""How the broker admits a peer: the hello challenge, the proof, the session, the welcome.

A mixin of :class:`ance.broker.hub.Broker` (it uses the hub's socket, state and
logs). ``hello`` is answered with a ``challenge`` carrying the broker's proof of
the run's secret; ``auth`` carries the peer's; only then is the hello acted on
(fingerprint check, registration as trainer or worker, ``welcome``) and the
peer holds a session (:mod:`ance.broker.sessions`). A frame from a connection
without a session, or without its tag, is refused and logged, rate-limited
(hijacked names, forged results, a peer that never said hello).
"""

from __future__ import annotations

import logging
import time

from ance.run.errors import ConfigError
from ance.wire.clientkeys import load_allow_list
from ance.wire.protocol import MAX_NAME

from .guard import RateLimit, peer_label, peer_name, safe_text
from .sessions import AuthRefused

log = logging.getLogger("ance.broker.hub")
REFUSAL_LOG_S = 30.0  # one log line per misbehaving peer and message kind per this many seconds


class Admission:
    """The hub's peer admission (mixin: needs ``sessions``, ``state``, ``trainer``, ``_send``...)."""

    _told_unknown: RateLimit
    _log_refusal: RateLimit

    def _no_session(self, route: bytes, of_type: str) -> None:
        """A frame from a connection without an authenticated session, or without its tag: refused, logged."""
        now = time.time()
        if self._told_unknown.allow(route, now):
            self._error(route, f"unknown peer {peer_label(route)[:MAX_NAME]}: no session; send hello first", of_type,
                        raw=True)
        if self._log_refusal.allow((route, "session"), now):
            log.warning("peer %s: %r refused: no authenticated session on this connection (hello and the run's "
                        "secret first; logged at most every %gs)", peer_label(route), of_type, REFUSAL_LOG_S)

    def _known(self, peer: bytes, of_type: str) -> bool:
        """True for a peer that said hello; otherwise ask it to (at most once per heartbeat)."""
        if peer == self.trainer.peer or peer_name(peer) in self.state.workers:
            return True
        now = time.time()
        if self._told_unknown.allow(peer, now):
            self._error(peer, f"unknown peer {peer_name(peer)[:MAX_NAME]!r}: send hello first", of_type)
        if self._log_refusal.allow((peer, "unknown"), now):
            log.info("peer %s: %r from a peer that never said hello: ignored (logged at most every %gs)",
                     peer_label(peer), of_type, REFUSAL_LOG_S)
        return False

    def _on_hello(self, route: bytes, msg, key: str | None = None) -> None:
        """The challenge: the broker proves the run's secret, and asks the peer to (``_on_auth``). With
        per-worker keys, first: the connection's CURVE ``key`` must be the one issued for the hello's name."""
        if self.cfg.broker.client_keys and not self._key_fits(route, msg, key):
            return
        self._send_route(route, "challenge", **self.sessions.challenge(route, msg, time.time(), key=key))

    def _allow_list(self) -> dict[str, str]:
        try:
            return load_allow_list(self.cfg.broker.client_keys)
        except ConfigError as exc:
            log.error("%s; refusing every peer until it is fixed", exc)
            return {}

    def _key_fits(self, route: bytes, msg, key: str | None) -> bool:
        """True when ``key`` is listed in ``broker.client_keys`` under the name ``msg`` says hello as."""
        owner = self._allow_list().get(key or "")
        if owner == msg.name:
            return True
        why = (f"its CURVE key was issued to {owner!r}" if owner else
               f"its CURVE key is no longer in {self.cfg.broker.client_keys} (revoked)")
        self._refuse(route, "hello", f"hello as {safe_text(msg.name)!r} from a connection whose key does not "
                     f"belong to that name: {why}", raw=True)
        return False

    def _sweep_keys(self, now: float) -> None:
        """Per-worker keys: every few seconds, drop the live sessions whose key was revoked (or re-issued)."""
        if not self.cfg.broker.client_keys or now < self._next_sweep:
            return
        self._next_sweep = now + max(2.0, self.cfg.broker.heartbeat_s)
        allowed = self._allow_list()
        for s in list(self.sessions.by_name.values()):
            if s.key is not None and allowed.get(s.key) != s.name:
                log.error("%s %s (pid %d): its CURVE key left %s (revoked): session dropped, its hellos refused",
                          s.role, safe_text(s.name), s.pid, self.cfg.broker.client_keys)
                self._error(s.name.encode(), "refused: this peer's CURVE key was revoked", None)
                self._peer_gone(s.name.encode())

    def _on_auth(self, route: bytes, msg) -> None:
        try:
            sess, old = self.sessions.authenticate(route, msg.nonce, msg.proof, time.time())
        except AuthRefused as exc:
            self._refuse(route, "auth", str(exc), raw=True)
            return
        if old is not None:
            log.warning("%s %s (pid %d) proved the run's secret on a new connection: it replaces the session of "
                        "pid %d", sess.role, safe_text(sess.name), sess.pid, old.pid)
        self._hello_proven(sess.name.encode(), sess.hello)

    def _hello_proven(self, peer: bytes, msg) -> None:
        name = peer_name(peer)
        if msg.data_fingerprint != self.fingerprint:
            # Never echo the expected fingerprint: it is what a peer must know to register.
            reason = ("data fingerprint differs from the broker's: every role must load the same data with the "
                      "same config (data.* settings)")
            if self._log_refusal.allow((peer, "hello"), time.time()):
                log.error("peer %s (%s, pid %d) refused: data fingerprint %s differs from the broker's %s",
                          peer_label(peer), safe_text(msg.role), msg.pid, safe_text(msg.data_fingerprint), self.fingerprint)
            self._error(peer, reason, "hello")
            self._send(peer, "stop", reason=reason)
            self.sessions.drop(name)
            return
        self._told_unknown.forget(peer)
        if msg.role == "trainer":
            if self.trainer.peer is not None and self.trainer.peer != peer:
                log.warning("a second trainer %s replaces %s", peer_label(peer), peer_label(self.trainer.peer))
            have = int(msg.get("have_version", -1))
            self._welcome(peer)
            again = self.trainer.hello(peer, msg.pid, have)
            log.info("trainer %s (pid %d) says hello%s, holds version %d", peer_label(peer), msg.pid,
                     " again" if again else "", have)
        else:
            busy = msg.get("job_id") if msg.get("state") == "busy" else None
            self.state.on_hello(name, time.time(), busy_job=busy, device=msg.device, pid=msg.pid)
            log.info("inferencer %s (pid %d, %s) joined%s; %d workers", peer_label(peer), msg.pid, safe_text(msg.device),
                     f" busy with job {busy}" if busy is not None else "", len(self.state.workers))
            self._welcome(peer)
            self._emit()

    def _welcome(self, peer: bytes) -> None:
        self._send(peer, "welcome", broker_id=self.broker_id, latest_version=self.state.latest_version,
                   heartbeat_s=float(self.cfg.broker.heartbeat_s))
