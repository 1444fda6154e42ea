"""The broker's authenticated sessions: who is behind each connection, proven, not claimed.

A connection (ZeroMQ routing id, a *route*) counts for nothing until its
client has answered the hello challenge with the run's secret
(:mod:`ance.wire.auth`). Then it holds a :class:`Session` under the name its
hello gave, and every later frame must carry the session's client tag; the
broker's frames to it carry the broker tag. Names are unique: a second
connection under a live name takes it over only by proving the secret too, and
the takeover is logged by the hub. Routes are never trusted as names: a peer
that sets its ZeroMQ identity to ``inferencer-0`` gets nothing by it.

Half-open handshakes are bounded (``max_pending``, forgotten after ``ttl_s``),
so a flood of hellos costs a bounded table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ance.wire.auth import broker_proof, client_proof, new_nonce, same, session_tags


class AuthRefused(Exception):
    """A handshake that failed (no hello before, a wrong proof)."""


@dataclass
class Session:
    name: str
    role: str
    route: bytes
    pid: int
    client_tag: str
    broker_tag: str
    key: str | None = None  # its connection's CURVE public key (z85), per-worker keys only
    hello: Any = field(repr=False, default=None)  # the hello it opened with (acted on once authenticated)


class Sessions:
    def __init__(self, secret: bytes, *, max_pending: int = 4096, ttl_s: float = 30.0):
        self.secret = secret
        self.max_pending = max_pending
        self.ttl_s = ttl_s
        # (route, broker nonce) -> (hello, when, the connection's CURVE key or None)
        self._pending: dict[tuple[bytes, str], tuple[Any, float, str | None]] = {}
        self.by_route: dict[bytes, Session] = {}
        self.by_name: dict[str, Session] = {}

    def challenge(self, route: bytes, hello: Any, now: float, key: str | None = None) -> dict[str, str]:
        """The ``challenge`` fields answering ``hello`` on ``route`` (the hello, and the connection's CURVE key,
        are kept for :meth:`authenticate`)."""
        if len(self._pending) >= self.max_pending:
            self._pending = {k: p for k, p in self._pending.items() if now - p[1] < self.ttl_s}
            while len(self._pending) >= self.max_pending:  # still full: forget the oldest
                self._pending.pop(next(iter(self._pending)))
        bnonce = new_nonce()
        self._pending[(route, bnonce)] = (hello, now, key)
        return {"nonce": bnonce, "proof": broker_proof(self.secret, hello["nonce"], bnonce, hello["name"])}

    def authenticate(self, route: bytes, bnonce: str, proof: Any, now: float) -> tuple[Session, Session | None]:
        """Check the client's proof of challenge ``bnonce``; return its new session and the one it replaced
        (same name, or the same connection under another name)."""
        pending = self._pending.pop((route, bnonce), None)
        if pending is None or now - pending[1] > self.ttl_s:
            raise AuthRefused("auth for no challenge of this connection (or more than "
                              f"{self.ttl_s:.0f}s after it): send hello again")
        hello, _, key = pending
        name, role = hello["name"], hello["role"]
        if not same(client_proof(self.secret, hello["nonce"], bnonce, name, role), proof):
            raise AuthRefused(f"wrong proof for {name!r}: this peer does not hold the run's secret "
                              "(RUN_DIR/run.secret)")
        ctag, btag = session_tags(self.secret, hello["nonce"], bnonce, name)
        old = self.by_name.pop(name, None)
        if old is not None:
            self.by_route.pop(old.route, None)
        other = self.by_route.pop(route, None)  # the same connection under another name before
        if other is not None:
            self.by_name.pop(other.name, None)
        s = Session(name, role, route, int(hello["pid"]), ctag, btag, key, hello)
        self.by_route[route] = s
        self.by_name[name] = s
        return s, old if old is not None and old.route != route else other

    def of(self, route: bytes, msg: Any) -> Session | None:
        """The session a frame belongs to: its route's, and only when the frame carries its client tag."""
        s = self.by_route.get(route)
        return s if s is not None and same(s.client_tag, msg.get("s")) else None

    def knows_route(self, route: bytes) -> bool:
        return route in self.by_route

    def get(self, name: str) -> Session | None:
        return self.by_name.get(name)

    def drop(self, name: str) -> None:
        s = self.by_name.pop(name, None)
        if s is not None:
            self.by_route.pop(s.route, None)
