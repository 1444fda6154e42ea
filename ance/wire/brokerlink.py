"""What the broker's two kinds of client share: who they are, their socket, ``hello``, reading a frame.

The trainer (:class:`ance.trainer.link.TrainerLink`) and every inferencer
(:class:`ance.inferencer.link.InferencerLink`) hold one DEALER to the broker's
ROUTER. Both introduce themselves with the same ``hello`` (role, name, pid,
device, data fingerprint, plus their own state), read the broker's frames the
same way (a frame that fails :func:`ance.wire.protocol.unpack_message` is logged and
dropped, never raised into the loop), and say ``hello`` again when a restarted
broker answers "unknown peer". What each does with the messages is its own.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import zmq

from ance.run.config import Config
from ance.run.errors import ProtocolError
from ance.wire.auth import (broker_proof, client_proof, client_secret_path, new_nonce, read_secret, same,
                            session_tags)
from ance.wire.protocol import Message, pack_message, unpack_message
from ance.wire.transport import dealer_socket

log = logging.getLogger(__name__)
LOG_EVERY_S = 30.0  # a refused broker or forged frame is logged at most this often


def is_unknown_peer(msg: Message) -> bool:
    """An ``error`` by which a (restarted) broker says it does not know us: say ``hello`` again."""
    return msg.type == "error" and str(msg.get("reason", "")).startswith("unknown peer")


class BrokerLink:
    """``role`` and ``name`` identify the client (the socket identity is ``name``)."""

    role = ""

    def __init__(self, cfg: Config, name: str, device: str, fingerprint: str):
        self.cfg = cfg
        self.name = name
        self.identity = name.encode()
        self.device = device
        self.fingerprint = fingerprint
        self.broker_id: str | None = None
        self._secret: bytes | None = None
        self._nonces: list[str] = []                 # of our last hellos (a challenge answers one of them)
        self._tags: tuple[str, str] | None = None  # (ours, the broker's) once the broker proved the secret
        self.refused_brokers = 0                    # challenges that did not prove the run's secret
        self._logged: dict[str, float] = {}

    def open_socket(self, ctx: zmq.Context, **options: Any) -> zmq.Socket:
        """The DEALER to ``broker.address`` (:func:`ance.wire.transport.dealer_socket`'s policy)."""
        # no identity: the ROUTER names the route; our name picks our own CURVE key pair when one was issued
        return dealer_socket(ctx, self.cfg.broker, None, name=self.name, **options)

    def _log_once(self, key: str, level: int, text: str, *args: Any) -> None:
        now = time.time()
        if now - self._logged.get(key, float("-inf")) >= LOG_EVERY_S:
            self._logged[key] = now
            log.log(level, text, *args)

    def hello_frame(self, **state: Any) -> bytes | None:
        """``hello`` with who we are, a fresh nonce and ``state`` (the trainer's ``have_version``, an
        inferencer's job); None (logged) while the run's secret cannot be read yet (the broker writes it)."""
        path = client_secret_path(self.cfg.run_dir)
        if not os.path.lexists(path):
            self._log_once("secret", logging.WARNING, "%s: no run secret at %s yet (the broker or `ance launch` "
                           "writes it; another host: --secret-file); waiting", self.name, path)
            return None
        self._secret = read_secret(path)  # ConfigError (one line, exit 2) for a bad file
        nonce = new_nonce()
        self._nonces = [*self._nonces[-3:], nonce]
        return pack_message("hello", role=self.role, name=self.name, pid=os.getpid(), device=self.device,
                            data_fingerprint=self.fingerprint, nonce=nonce, **state)

    def pack(self, type_: str, **fields: Any) -> bytes:
        """A frame of our session (tagged ``s``; untagged before the broker proved the secret)."""
        return pack_message(type_, session=self._tags[0] if self._tags else None, **fields)

    def answer(self, msg: Message) -> bytes | None:
        """Our ``auth`` for a ``challenge`` whose proof shows the broker holds the run's secret; None (logged)
        for one that does not: a process squatting the port, or a broker of another run, is never answered."""
        if self._secret is None:
            return None
        mine = [n for n in self._nonces if same(broker_proof(self._secret, n, msg.nonce, self.name), msg.proof)]
        if not mine:
            self.refused_brokers += 1
            self._log_once("squat", logging.ERROR, "%s: the broker at %s could not prove the run's secret: refused "
                           "(another process on its port, or a broker of another run?)", self.name,
                           self.cfg.broker.address)
            return None
        self._tags = session_tags(self._secret, mine[0], msg.nonce, self.name)
        return pack_message("auth", nonce=msg.nonce,
                            proof=client_proof(self._secret, mine[0], msg.nonce, self.name, self.role))

    def read(self, frame: bytes) -> Message | None:
        """The broker's message in ``frame``; None (logged) for a frame the protocol refuses, or one not of our
        authenticated session. Outside a session only ``challenge`` and ``error`` pass (an ``error`` is only
        logged, or makes us say hello again)."""
        try:
            msg = unpack_message(frame, self.cfg.broker.max_frame_bytes)
        except ProtocolError as exc:
            log.error("%s: rejected a frame from the broker: %s", self.name, exc)
            return None
        if msg.type in ("challenge", "error") or (self._tags is not None and same(self._tags[1], msg.get("s"))):
            return msg
        self._log_once(f"forged-{msg.type}", logging.ERROR, "%s: dropped a %r frame not from our authenticated "
                       "broker session (forged, or from a process on the broker's port)", self.name, msg.type)
        return None

    def welcomed_by(self, msg: Message) -> bool:
        """Note the broker of a ``welcome``; True when it is a new one (first contact, or a restart)."""
        new = msg.get("broker_id") != self.broker_id
        self.broker_id = msg.get("broker_id")
        return new
