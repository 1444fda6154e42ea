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
from typing import Any

import zmq

from ance.run.config import Config
from ance.run.errors import ProtocolError
from ance.wire.protocol import Message, pack_message, unpack_message
from ance.wire.transport import dealer_socket

log = logging.getLogger(__name__)


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

    def open_socket(self, ctx: zmq.Context, **options: Any) -> zmq.Socket:
        """The DEALER to ``broker.address`` (:func:`ance.wire.transport.dealer_socket`'s policy)."""
        return dealer_socket(ctx, self.cfg.broker, self.identity, **options)

    def hello_frame(self, **state: Any) -> bytes:
        """``hello`` with who we are and ``state`` (the trainer's ``have_version``, an inferencer's job)."""
        return pack_message("hello", role=self.role, name=self.name, pid=os.getpid(), device=self.device,
                            data_fingerprint=self.fingerprint, **state)

    def read(self, frame: bytes) -> Message | None:
        """The broker's message in ``frame``; None (logged) for a frame the protocol refuses."""
        try:
            return unpack_message(frame, self.cfg.broker.max_frame_bytes)
        except ProtocolError as exc:
            log.error("%s: rejected a frame from the broker: %s", self.name, exc)
            return None

    def welcomed_by(self, msg: Message) -> bool:
        """Note the broker of a ``welcome``; True when it is a new one (first contact, or a restart)."""
        new = msg.get("broker_id") != self.broker_id
        self.broker_id = msg.get("broker_id")
        return new
