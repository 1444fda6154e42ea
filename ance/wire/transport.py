"""The ZeroMQ sockets of a run, made in one place: the broker's ROUTER and the
DEALER each trainer and inferencer connects with (docs/design.md, "Wire protocol").

One policy for all of them:

* ``LINGER 0``: closing never blocks on unsent messages (the protocol resends
  what matters: hellos, heartbeats, announcements).
* ``MAXMSGSIZE`` at twice ``broker.max_frame_bytes``: a frame past the transport
  cap drops the connection before it is buffered; up to it, the protocol's
  ``decode`` refuses oversized frames with an ``error`` the peer can read.
* ``RCVHWM`` on the broker's ROUTER: frames queued per peer are bounded, so
  the broker's inbound memory is too (peers x frames x ``MAXMSGSIZE``).
* CURVE encryption and authentication when ``broker.curve_keys`` is set
  (:mod:`ance.wire.keys`; per-worker keys with ``broker.client_keys``,
  :mod:`ance.wire.clientkeys`).
"""

from __future__ import annotations

import zmq

from ance.wire.keys import check_bind_address, secure_client, secure_server

from ance.run.config import BrokerConfig
from ance.run.errors import AnceError

ROUTER_RCVHWM = 16


def router_socket(ctx, b: BrokerConfig, max_inbound_bytes: int | None = None):
    """The broker's ROUTER, bound to ``broker.bind`` (else ``broker.address``); returns
    ``(socket, endpoint)``. Raises :class:`AnceError` when the address cannot be bound.

    ``max_inbound_bytes``: the largest frame a peer may send (default
    ``broker.max_frame_bytes``); frames to the broker never carry weights, so the
    broker passes a much smaller bound."""
    address = b.bind or b.address
    check_bind_address(address, b.curve_keys)
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    # A vanished peer raises EHOSTUNREACH instead of a silent drop. Routing ids are the ROUTER's own (clients
    # set none) and never taken over (no ROUTER_HANDOVER): who a peer is, is its authenticated session's
    # business (ance.wire.auth, ance.broker.sessions), not its routing id's.
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.MAXMSGSIZE, 2 * (max_inbound_bytes or b.max_frame_bytes))
    # At most RCVHWM frames wait per connected peer (a fast sender is held back, not buffered without end):
    # inbound memory <= peers x (RCVHWM + 1) x MAXMSGSIZE; CURVE bounds the peers.
    sock.setsockopt(zmq.RCVHWM, ROUTER_RCVHWM)
    # A whole version streamed to a trainer that reads between steps: let it queue (bounded by size).
    sock.setsockopt(zmq.SNDHWM, 1_000_000)
    try:
        if b.curve_keys:
            secure_server(sock, b.curve_keys, b.client_keys)  # ConfigError on a missing, empty or garbage key: one line, exit 2
        sock.bind(address)
    except zmq.ZMQError as exc:
        sock.close(0)
        raise AnceError(f"broker cannot bind {address}: {exc} (is another broker running? "
                        "set broker.address / broker.bind)") from None
    except BaseException:
        sock.close(0)  # an open socket would block ctx.term() for ever (the broker hung, silent)
        raise
    return sock, sock.getsockopt(zmq.LAST_ENDPOINT).decode()


def dealer_socket(ctx, b: BrokerConfig, identity: bytes | None = None, *, immediate: bool = False,
                  name: str | None = None):
    """A DEALER (``identity``: a routing id for tests; clients leave it to the ROUTER), connected to ``broker.address``; it reconnects on its
    own (200 ms, backing off to 2 s) when the broker restarts. ``immediate``: queue
    nothing while no broker is connected (sends are dropped or refused, not piled up
    for the next broker). ``name``: the peer's name, whose own CURVE key pair is used when one was issued
    (per-worker keys, :mod:`ance.wire.clientkeys`)."""
    sock = ctx.socket(zmq.DEALER)
    if identity:
        sock.setsockopt(zmq.IDENTITY, identity)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, 2 * b.max_frame_bytes)
    sock.setsockopt(zmq.RECONNECT_IVL, 200)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
    if immediate:
        sock.setsockopt(zmq.IMMEDIATE, 1)
    try:
        if b.curve_keys:
            secure_client(sock, b.curve_keys, name)
        sock.connect(b.address)
    except BaseException:
        sock.close(0)
        raise
    return sock
