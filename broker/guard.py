"""What the broker checks before it trusts a peer's word: paths, strings, log volume.

A peer that got through the socket (loopback, or CURVE keys) is still only
believed about what it may know: a checkpoint is named by its step inside the
broker's own ``RUN_DIR/checkpoints`` (:func:`confine_checkpoint`); its strings
reach the log escaped and truncated (:func:`safe_text`); one misbehaving peer
is logged once per interval, not once per frame (:class:`RateLimit`); its
frames are capped at the size of a top-k chunk (:func:`max_inbound_bytes`); and
only a holder of the run's token (``RUN_DIR/broker.token``) may ``stop`` the
broker (:func:`write_token`, :func:`token_matches`).
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path, PurePath
from typing import Any

from ance.run.rundir import RunDir, is_complete_checkpoint, step_name

from .refresh import RefreshError
from .stats import eval_depth


def confine_checkpoint(run_dir: str | Path, announced: str, step: int) -> Path:
    """The broker's own path of the checkpoint ``step`` a trainer announced at ``announced``.

    A peer names a checkpoint, never an arbitrary folder: the announced path must
    end in ``checkpoints/step-NNNNNN`` for that step (no ``..``), and the broker's
    ``RUN_DIR/checkpoints/step-NNNNNN`` must be a complete checkpoint (with
    its manifest) that resolves inside ``RUN_DIR/checkpoints`` (no symlink
    out). Raises :class:`RefreshError` otherwise.
    """
    name = step_name(step)
    p = PurePath(announced)
    if ".." in p.parts or p.name != name or p.parent.name != "checkpoints":
        raise RefreshError(f"checkpoint path {safe_text(announced)} is not RUN_DIR/checkpoints/{name}: refused")
    root = RunDir(run_dir).checkpoints
    own = root / name
    try:
        inside = own.resolve().parent == root.resolve()
    except (OSError, RuntimeError):
        inside = False
    if not inside:
        raise RefreshError(f"checkpoint {own} resolves outside {root}: refused")
    if not is_complete_checkpoint(own):
        raise RefreshError(f"checkpoint {own} is not complete (no manifest): refused")
    return own


def safe_text(value: Any, limit: int = 80) -> str:
    """A peer's string for a log line: as is when short and printable, else repr-escaped (no forged
    lines) and truncated."""
    if isinstance(value, str) and len(value) <= limit and value.isprintable():
        return value
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} chars)"


def peer_name(peer: bytes) -> str:
    """A ZeroMQ identity as text (the worker's name; undecodable bytes escaped)."""
    return peer.decode("utf-8", "backslashreplace")


def peer_label(peer: bytes) -> str:
    """A peer's identity for a log line: as is when short and printable, else escaped and truncated."""
    return safe_text(peer_name(peer), 64)


class RateLimit:
    """``allow(key, now)``: True at most once per ``interval_s`` per key (bounded memory)."""

    def __init__(self, interval_s: float, max_keys: int = 10_000):
        self.interval_s = float(interval_s)
        self.max_keys = int(max_keys)
        self._last: dict[Any, float] = {}

    def allow(self, key: Any, now: float) -> bool:
        if now - self._last.get(key, float("-inf")) < self.interval_s:
            return False
        if len(self._last) >= self.max_keys:  # many one-off peers: forget them
            self._last.clear()
        self._last[key] = now
        return True

    def forget(self, key: Any) -> None:
        self._last.pop(key, None)


def write_token(run_dir: str | Path) -> str:
    """A fresh random stop token in ``RUN_DIR/broker.token`` (mode 0600); returns it.

    Whoever can read the run directory (the launcher, the operator) may stop the
    broker with ``stop`` carrying this token; a peer that can only reach the
    socket cannot.
    """
    path = RunDir(run_dir).broker_token
    token = secrets.token_hex(16)
    # A private, unpredictable temp name, created (O_EXCL) and never followed (O_NOFOLLOW): a link planted
    # under a guessable name cannot make the broker overwrite another file, nor become broker.token.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(token + "\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
    return token


def read_token(run_dir: str | Path) -> str:
    """The broker's current stop token (for the launcher and tests)."""
    return RunDir(run_dir).broker_token.read_text(encoding="ascii").strip()


def token_matches(expected: str, given: Any) -> bool:
    return isinstance(given, str) and hmac.compare_digest(expected.encode(), given.encode())


def max_inbound_bytes(cfg: Any) -> int:
    """The largest frame a peer may send the broker: a top-k chunk (ids + scores, 12 bytes a hit) and
    1 MiB of room; frames to the broker never carry weights, so ``max_frame_bytes`` is far too much."""
    depth = max(cfg.negatives.depth, eval_depth(cfg.negatives.depth))
    return min(cfg.broker.max_frame_bytes, cfg.broker.chunk_queries * depth * 12 + (1 << 20))
