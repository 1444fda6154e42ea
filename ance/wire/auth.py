"""Authenticated sessions: the run's secret, the hello challenge both ways, and session tags.

Every peer of a run proves it knows the run's secret (``RUN_DIR/run.secret``,
32 random bytes in hex, mode 0600) before anything it says counts, and the
broker proves it to every client, so neither a peer that only reaches the port
nor a process squatting the broker's port is believed (docs/design.md, "Wire
protocol", "Sessions")::

    client -> broker  hello     {..., nonce: Nc}
    broker -> client  challenge {nonce: Nb, proof: HMAC(K, "ance-broker" Nc Nb name)}   client checks it
    client -> broker  auth      {proof: HMAC(K, "ance-client" Nc Nb name role)}        broker checks it
    broker -> client  welcome   {..., s: T_b}

Both sides then derive two session tags from the secret and both nonces:
``T_c`` (every later client frame carries it in ``s``) and ``T_b`` (every later
broker frame carries it). A tag is only ever sent by its own side, so a process
that takes over the port or the TCP route learns at most the other side's tag
and cannot forge a frame the peer accepts. The secret itself never travels.

Nothing here trusts a ZeroMQ routing id: the broker binds a session to the
connection that completed the handshake (:mod:`ance.broker.sessions`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import stat
from pathlib import Path
from typing import Any

from ance.run.errors import ConfigError

log = logging.getLogger(__name__)

SECRET_NAME = "run.secret"
SECRET_ENV = "ANCE_SECRET_FILE"  # a client without the run dir (another host) reads the secret here
_SECRET_BYTES = 32
_MAX_SECRET_FILE = 256
TAG_CHARS = 32                    # hex characters of a session tag
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def secret_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / SECRET_NAME


def ensure_secret(run_dir: str | Path) -> bytes:
    """The run's secret, created first if missing (by whichever role comes first; safe when two race).

    Written to a private temp name opened with ``O_CREAT|O_EXCL|O_NOFOLLOW`` (mode
    0600), fsynced, then hard-linked to ``run.secret``: the link fails when the file
    exists, so a reader never sees a half-written secret, a planted symlink is never
    followed, and the first writer wins."""
    path = secret_path(run_dir)
    if not os.path.lexists(path):
        tmp = path.with_name(f".{SECRET_NAME}.{secrets.token_hex(8)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="ascii") as fh:
                fh.write(secrets.token_hex(_SECRET_BYTES) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass  # another role created it first: use theirs
        finally:
            os.unlink(tmp)
    return read_secret(path)


def read_secret(path: str | Path) -> bytes:
    """The secret in ``path``, or :class:`ConfigError` naming the file: a regular file (no symlink, no
    FIFO), at most 256 bytes, holding at least 64 hex characters."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | _O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise ConfigError(f"{path}: run secret not found (the broker or `ance launch` writes RUN_DIR/{SECRET_NAME}; "
                          f"copy it here or pass --secret-file / {SECRET_ENV})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot open the run secret ({exc.strerror}; a symlink is refused)") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{path}: the run secret must be a regular file")
        data = os.read(fd, _MAX_SECRET_FILE + 1)
    finally:
        os.close(fd)
    if st.st_mode & 0o077:
        log.warning("%s: the run secret is readable by others (mode %o); chmod 600 it", path, st.st_mode & 0o777)
    text = data.decode("ascii", "replace").strip()
    if len(data) > _MAX_SECRET_FILE or len(text) < 2 * _SECRET_BYTES or any(c not in "0123456789abcdef" for c in text):
        raise ConfigError(f"{path}: not a run secret (expected {2 * _SECRET_BYTES} or more lowercase hex "
                          "characters); copy RUN_DIR/run.secret of the run")
    return bytes.fromhex(text[: len(text) // 2 * 2])


def client_secret_path(run_dir: str | Path) -> Path:
    """Where a client reads the secret: ``$ANCE_SECRET_FILE`` when set, else ``RUN_DIR/run.secret``."""
    env = os.environ.get(SECRET_ENV)
    return Path(env) if env else secret_path(run_dir)


def new_nonce() -> str:
    return secrets.token_hex(16)


def _mac(secret: bytes, *parts: Any) -> str:
    msg = b"\x00".join(str(p).encode("utf-8", "backslashreplace") for p in parts)
    return hmac.new(secret, msg, hashlib.sha256).hexdigest()


def broker_proof(secret: bytes, cnonce: str, bnonce: str, name: str) -> str:
    return _mac(secret, "ance-broker", cnonce, bnonce, name)


def client_proof(secret: bytes, cnonce: str, bnonce: str, name: str, role: str) -> str:
    return _mac(secret, "ance-client", cnonce, bnonce, name, role)


def session_tags(secret: bytes, cnonce: str, bnonce: str, name: str) -> tuple[str, str]:
    """``(T_c, T_b)``: what the client's frames carry, what the broker's frames carry."""
    key = _mac(secret, "ance-session", cnonce, bnonce, name).encode()
    return (hmac.new(key, b"c", hashlib.sha256).hexdigest()[:TAG_CHARS],
            hmac.new(key, b"b", hashlib.sha256).hexdigest()[:TAG_CHARS])


def same(expected: str | None, given: Any) -> bool:
    """Constant-time comparison of a proof or tag with what a peer sent."""
    return (isinstance(expected, str) and isinstance(given, str)
            and hmac.compare_digest(expected.encode(), given.encode()))
