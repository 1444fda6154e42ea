"""The pure parts of authenticated sessions (ance/wire/auth.py, broker/sessions.py)."""

from __future__ import annotations

import os

import pytest

from ance.broker.sessions import AuthRefused, Sessions
from ance.run.errors import ConfigError
from ance.wire.auth import (broker_proof, client_proof, ensure_secret, new_nonce, read_secret, secret_path,
                            session_tags)


def test_read_secret_refuses_bad_files_in_one_line(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="must be a regular file"):  # no hang on a FIFO
        read_secret(fifo)
    (tmp_path / "short").write_text("abc\n")
    with pytest.raises(ConfigError, match="not a run secret"):
        read_secret(tmp_path / "short")
    (tmp_path / "big").write_text("a" * 10_000)
    with pytest.raises(ConfigError, match="not a run secret"):
        read_secret(tmp_path / "big")
    with pytest.raises(ConfigError, match="run secret not found"):
        read_secret(tmp_path / "missing")


def test_proofs_are_bound_to_their_side_nonces_and_name(tmp_path):
    secret = ensure_secret(tmp_path)
    assert secret_path(tmp_path).stat().st_mode & 0o777 == 0o600
    nc, nb = new_nonce(), new_nonce()
    assert broker_proof(secret, nc, nb, "w") != client_proof(secret, nc, nb, "w", "inferencer")  # no reflection
    assert broker_proof(secret, nc, nb, "w") != broker_proof(secret, nc, nb, "w2")
    assert broker_proof(secret, nc, nb, "w") != broker_proof(b"x" * 32, nc, nb, "w")
    tc, tb = session_tags(secret, nc, nb, "w")
    assert tc != tb and len(tc) == 32 and session_tags(secret, nc, new_nonce(), "w")[0] != tc


def test_sessions_handshake_takeover_and_bounds():
    secret = b"k" * 32
    s = Sessions(secret, max_pending=3)
    hello = {"nonce": new_nonce(), "name": "inferencer-0", "role": "inferencer", "pid": 1}
    ch = s.challenge(b"r1", hello, 0.0)
    with pytest.raises(AuthRefused, match="wrong proof"):
        s.authenticate(b"r1", ch["nonce"], "00" * 32, 1.0)
    with pytest.raises(AuthRefused, match="no challenge"):  # one try per challenge
        s.authenticate(b"r1", ch["nonce"], "00" * 32, 1.0)
    ch = s.challenge(b"r1", hello, 0.0)
    sess, old = s.authenticate(b"r1", ch["nonce"], client_proof(secret, hello["nonce"], ch["nonce"],
                                                                "inferencer-0", "inferencer"), 1.0)
    assert old is None and s.of(b"r1", {"s": sess.client_tag}) is sess and s.of(b"r1", {"s": "x"}) is None
    assert s.of(b"r2", {"s": sess.client_tag}) is None  # the tag is bound to its connection
    hello2 = {**hello, "nonce": new_nonce(), "pid": 2}
    ch2 = s.challenge(b"r2", hello2, 2.0)
    new, old = s.authenticate(b"r2", ch2["nonce"], client_proof(secret, hello2["nonce"], ch2["nonce"],
                                                                "inferencer-0", "inferencer"), 2.0)
    assert old is sess and s.get("inferencer-0") is new and not s.knows_route(b"r1")
    for i in range(10):  # a hello flood keeps a bounded table
        s.challenge(f"f{i}".encode(), hello, 3.0)
    assert len(s._pending) <= 3
    ch = s.challenge(b"late", hello, 0.0)
    with pytest.raises(AuthRefused, match="no challenge"):  # too late
        s.authenticate(b"late", ch["nonce"], "00", 100.0)
