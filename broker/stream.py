"""The broker's side of the trainer: which peer it is, and the negatives streamed to it.

The broker talks to one trainer. :class:`TrainerStream` remembers its peer
(and pid, to tell the same process saying ``hello`` again from a new one) and
sends it negatives: each chunk as it is persisted, ``version_done`` when a
version is complete, and on ``hello`` whatever it lacks (the newest complete
version, replayed, and the chunks so far of the one in progress). Sending goes
through the hub's ``send`` (one socket, owned by the hub).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import numpy as np

from ance.wire.protocol import pack_array
from .versions import NegativesVersions, Version

log = logging.getLogger(__name__)

Send = Callable[..., bool]  # send(peer, type, **fields) -> False when not sent


class TrainerStream:
    def __init__(self, versions: NegativesVersions, send: Send):
        self.versions = versions
        self._send = send
        self.peer: bytes | None = None
        self.pid: int | None = None

    def hello(self, peer: bytes, pid: int, have: int) -> bool:
        """``peer`` is the trainer now; stream what it lacks. True when it is the same process again
        (it has the chunks of the version in progress already)."""
        again = self.peer == peer and self.pid == pid
        self.peer, self.pid = peer, pid
        self._catch_up(have, in_progress=not again)
        return again

    def gone(self, peer: bytes) -> bool:
        """Forget ``peer`` if it is the trainer; True when it was."""
        if peer != self.peer:
            return False
        self.peer = None
        return True

    def chunk(self, version: int, chunk: int, n_chunks: int, q_idx: np.ndarray, neg: np.ndarray) -> bool:
        if self.peer is None:
            return False
        return self._send(self.peer, "negatives", version=version, chunk=chunk, n_chunks=n_chunks,
                          q_idx=pack_array(q_idx), neg=pack_array(neg), sent_at=time.time())

    def version_done(self, version: int, n_shards: int, stats: dict[str, Any]) -> None:
        if self.peer is not None:
            self._send(self.peer, "version_done", version=version, n_shards=n_shards, stats=stats)

    def _catch_up(self, have: int, in_progress: bool) -> None:
        """The newest complete version (if the trainer lacks it) and the chunks of the one in progress."""
        latest = self.versions.latest
        if latest is not None and have < latest.version:
            self._stream(latest)
            self.version_done(latest.version, latest.n_shards, {**latest.stats, "replayed": True})
            log.info("streamed version %d in full to the trainer (it held %d)", latest.version, have)
        current = self.versions.current
        if in_progress and current is not None and current.chunks:
            self._stream(current)

    def _stream(self, v: Version) -> None:
        for c in sorted(v.chunks):
            q_idx, neg = self.versions.chunk(v, c)
            if not self.chunk(v.version, c, self.versions.n_chunks, q_idx, neg):
                return
