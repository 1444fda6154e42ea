"""CURVE keys: files, an authenticated server that ignores strangers, and the bind-address guard."""

from __future__ import annotations

import stat
import threading

import pytest
import zmq

from ance.run.errors import ConfigError
from ance.wire.keys import (KEY_FILES, check_bind_address, generate_keys, is_loopback, load_client_keys,
                       load_server_keys, secure_client, secure_server)


@pytest.fixture(scope="module")
def keys_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys") / "curve"
    generate_keys(d)
    return d


def test_generate_keys_files_and_modes(tmp_path):
    paths = generate_keys(tmp_path / "k")
    assert sorted(paths) == sorted(KEY_FILES)
    for path in paths.values():
        assert path.is_file() and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o700
    assert sorted(p.name for p in (tmp_path / "k").iterdir()) == sorted(KEY_FILES)  # no temp dir left
    pub, sec = load_server_keys(tmp_path / "k")
    cpub, csec, spub = load_client_keys(tmp_path / "k")
    assert len(pub) == len(sec) == len(cpub) == len(csec) == 40 and spub == pub and cpub != pub


def test_generate_keys_refuses_to_overwrite(tmp_path):
    generate_keys(tmp_path)
    before = load_server_keys(tmp_path)
    with pytest.raises(ConfigError, match="--force"):
        generate_keys(tmp_path)
    assert load_server_keys(tmp_path) == before
    generate_keys(tmp_path, force=True)
    assert load_server_keys(tmp_path) != before


def test_missing_keys_say_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="ance keys"):
        load_client_keys(tmp_path)
    (tmp_path / "broker.key_secret").write_text("garbage\n")
    with pytest.raises(ConfigError, match="not a ZeroMQ certificate"):
        load_server_keys(tmp_path)


def test_keys_command(tmp_path, capsys):
    import argparse

    from ance.commands import keys as cmd

    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    assert cmd.run(parser.parse_args([str(tmp_path / "k")])) == 0
    out = capsys.readouterr().out
    assert "broker.curve_keys=" in out and "client.key_secret" in out
    with pytest.raises(ConfigError):
        cmd.run(parser.parse_args([str(tmp_path / "k")]))
    assert cmd.run(parser.parse_args([str(tmp_path / "k"), "--force"])) == 0


class EchoServer:
    """A secured ROUTER on a free loopback port that echoes every message, in its own thread."""

    def __init__(self, keys_dir):
        self.keys_dir = keys_dir
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.served = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(5)

    def _run(self):
        ctx = zmq.Context()
        sock = ctx.socket(zmq.ROUTER)
        sock.linger = 0
        secure_server(sock, self.keys_dir)
        self.port = sock.bind_to_random_port("tcp://127.0.0.1")
        self.ready.set()
        while not self.stop.is_set():
            if sock.poll(50):
                peer, frame = sock.recv_multipart()
                self.served += 1
                sock.send_multipart([peer, b"echo:" + frame])
        sock.close(0)
        ctx.term()  # hangs if close() did not stop the authenticator

    def close(self):
        self.stop.set()
        self.thread.join(5)
        assert not self.thread.is_alive(), "context.term() hung: the ZAP authenticator was not stopped"


def _ask(ctx, port, payload, keys=None, timeout_ms=1000):
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    if keys is not None:
        keys(sock)
    sock.connect(f"tcp://127.0.0.1:{port}")
    sock.sndtimeo = timeout_ms  # a refused handshake drops the DEALER's pipe: send would block for good
    try:
        sock.send(payload)
    except zmq.Again:
        sock.close(0)
        return None
    answer = sock.recv() if sock.poll(timeout_ms) else None
    sock.close(0)
    return answer


def test_curve_server_answers_only_key_holders(keys_dir, tmp_path):
    other = tmp_path / "other"
    generate_keys(other)
    server = EchoServer(keys_dir)
    ctx = zmq.Context()
    try:
        # key holders get an answer (generous timeout: a loaded machine may be slow)...
        assert _ask(ctx, server.port, b"hi", lambda s: secure_client(s, keys_dir), 5000) == b"echo:hi"

        # ...others get none within a second
        assert _ask(ctx, server.port, b"plain") is None  # no keys at all

        def stranger(sock):  # a valid keypair the server does not know, with the right server key
            pub, sec, _ = load_client_keys(other)
            sock.curve_publickey, sock.curve_secretkey = pub, sec
            sock.curve_serverkey = load_server_keys(keys_dir)[0]

        assert _ask(ctx, server.port, b"stranger", keys=stranger) is None
        # the server is still fine and only ever saw the key holders
        assert _ask(ctx, server.port, b"again", lambda s: secure_client(s, keys_dir), 5000) == b"echo:again"
        assert server.served == 2
    finally:
        ctx.term()
        server.close()


def test_two_secured_sockets_share_one_authenticator(keys_dir):
    ctx = zmq.Context()
    a, b = ctx.socket(zmq.ROUTER), ctx.socket(zmq.ROUTER)
    secure_server(a, keys_dir)
    secure_server(b, keys_dir)
    a.close(0)
    b.close(0)
    b.close(0)  # closing twice releases once
    done = threading.Thread(target=ctx.term, daemon=True)
    done.start()
    done.join(5)
    assert not done.is_alive()


@pytest.mark.parametrize("address", [
    "tcp://127.0.0.1:5555", "tcp://127.3.2.1:1", "tcp://localhost:5555", "tcp://LOCALHOST:1",
    "tcp://[::1]:5555", "ipc:///tmp/ance.sock", "inproc://broker",
])
def test_loopback_needs_no_keys(address):
    assert is_loopback(address)
    check_bind_address(address, None)


@pytest.mark.parametrize("address", [
    "tcp://0.0.0.0:5555", "tcp://*:5555", "tcp://10.1.2.3:5555", "tcp://eth0:5555", "tcp://[::]:5555",
    "tcp://node7.cluster:5555", "tcp://128.0.0.1:5555",
])
def test_other_addresses_need_keys(address, keys_dir):
    with pytest.raises(ConfigError, match=r"refusing to listen on .* without CURVE keys; run `ance keys DIR`"):
        check_bind_address(address, None)
    check_bind_address(address, keys_dir)


def test_not_an_endpoint():
    with pytest.raises(ConfigError, match="not a ZeroMQ endpoint"):
        check_bind_address("127.0.0.1:5555", None)


def test_zap_replies(keys_dir, tmp_path, caplog):
    from zmq.utils import z85

    from ance.wire.keys import CurveZap

    zap = CurveZap(None, keys_dir)
    zap.reload()
    client = z85.decode(load_client_keys(keys_dir)[0])
    generate_keys(tmp_path / "other")
    stranger = z85.decode(load_client_keys(tmp_path / "other")[0])

    def ask(mechanism, *credentials):
        return zap.reply([b"1.0", b"7", b"", b"10.0.0.2", b"", mechanism, *credentials])

    ok = ask(b"CURVE", client)
    assert ok[:4] == [b"1.0", b"7", b"200", b"OK"] and ok[4] == z85.encode(client)
    with caplog.at_level("WARNING", logger="ance.wire.keys"):
        assert ask(b"CURVE", stranger)[2] == b"400"
        assert ask(b"CURVE", stranger)[2] == b"400"
        assert ask(b"NULL")[2] == b"400"
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 2 and "10.0.0.2" in refusals[0] and str(keys_dir) in refusals[0]  # once per client
    assert zap.reply([b"1.0", b"8"])[:3] == [b"1.0", b"8", b"500"]
    assert zap.reply([b"2.0", b"9", b"", b"", b"", b"CURVE", client])[2] == b"500"


def test_zap_handler_stops_promptly_and_is_one_per_context(keys_dir):
    import time

    from ance.wire.keys import CurveZap

    ctx = zmq.Context()
    zap = CurveZap(ctx, keys_dir)
    zap.start()
    with pytest.raises(ConfigError, match="another authenticator"):
        CurveZap(ctx, keys_dir).start()
    t0 = time.monotonic()
    zap.stop()
    assert not zap.thread.is_alive() and time.monotonic() - t0 < 2
    done = threading.Thread(target=ctx.term, daemon=True)
    done.start()
    done.join(5)
    assert not done.is_alive(), "context.term() hung: the ZAP socket was left open"
