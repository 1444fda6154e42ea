"""Per-worker CURVE keys (issue 28): `ance keys issue|list|revoke`, the broker's allow-list, a key bound to
the name it was issued for.

The broker is the real one in a thread on a CURVE loopback ROUTER (test_hostile_peers.start_broker) with
``broker.client_keys``; the clients are real DEALERs holding issued (or stranger) key pairs and the run's secret.
"""

from __future__ import annotations

import logging
import os
import stat

import pytest
import zmq

from ance.cli import main as ance_main
from ance.run.config import load_config
from ance.run.errors import ConfigError
from ance.wire import clientkeys
from ance.wire.auth import new_nonce
from ance.wire.keys import generate_keys, load_client_keys, load_server_keys
from ance.wire.protocol import pack_message

from helpers_refresh import Peer, wait_until
from test_hostile_peers import start_broker


def _hello(name: str, role: str = "inferencer") -> dict:
    return dict(role=role, name=name, pid=os.getpid(), device="cpu", data_fingerprint="fp-test", state="idle")


# ------------------------------------------------------------------ files
def test_issue_list_revoke_files_and_modes(tmp_path):
    keys = tmp_path / "keys"
    generate_keys(keys)
    out = tmp_path / "host3"
    paths = clientkeys.issue(keys, "inferencer-3", out)
    for p in (out / "inferencer-3.key", out / "inferencer-3.key_secret", keys / "clients" / "inferencer-3.key"):
        assert p.is_file() and stat.S_IMODE(p.stat().st_mode) == 0o600, p
    assert (out / "broker.key").read_bytes() == (keys / "broker.key").read_bytes() and paths["broker"].is_file()
    assert not (keys / "clients" / "inferencer-3.key_secret").exists()  # the broker gets the public key only
    assert stat.S_IMODE(out.stat().st_mode) == 0o700 and not [p for p in out.iterdir() if p.name.startswith(".")]
    # the client picks its own pair by name, else the shared one
    own, _, server = load_client_keys(out, "inferencer-3")
    assert server == load_server_keys(keys)[0] and own != load_client_keys(keys)[0]
    with pytest.raises(ConfigError, match="client.key_secret"):
        load_client_keys(out, "inferencer-4")  # no pair for that name here and no shared one
    allowed = clientkeys.load_allow_list(keys / "clients")
    assert list(allowed.values()) == ["inferencer-3"]
    with pytest.raises(ConfigError, match="already exists"):
        clientkeys.issue(keys, "inferencer-3", tmp_path / "elsewhere")
    clientkeys.issue(keys, "trainer", tmp_path / "t")
    assert clientkeys.listing(keys) == {"issued": ["inferencer-3", "trainer"], "revoked": []}
    clientkeys.revoke(keys, "inferencer-3")
    assert clientkeys.listing(keys) == {"issued": ["trainer"], "revoked": ["inferencer-3"]}
    assert list(clientkeys.load_allow_list(keys / "clients").values()) == ["trainer"]
    with pytest.raises(ConfigError, match="no key issued"):
        clientkeys.revoke(keys, "inferencer-3")
    for bad in ("", "../x", "a/b", "broker", "client", "x" * 65, "-x", "a b"):
        with pytest.raises(ConfigError, match="--name"):
            clientkeys.check_name(bad)


def test_allow_list_refuses_a_key_under_two_names_links_and_junk(tmp_path, caplog):
    keys = tmp_path / "keys"
    generate_keys(keys)
    clientkeys.issue(keys, "inferencer-0", tmp_path / "o")
    clients = keys / "clients"
    (clients / "inferencer-9.key").write_bytes((clients / "inferencer-0.key").read_bytes())  # copied under another name
    (clients / "junk.key").write_text("not a certificate\n")
    clientkeys.issue(keys, "inferencer-1", tmp_path / "o1")
    os.symlink(clients / "inferencer-1.key", clients / "inferencer-2.key")
    assert sorted(clientkeys.load_allow_list(clients).values()) == ["inferencer-1"]
    assert "listed as inferencer-0, inferencer-9: refused under every name" in caplog.text
    with pytest.raises(ConfigError, match="not a directory"):
        clientkeys.load_allow_list(tmp_path / "nope")


def test_keys_command_issue_list_revoke(tmp_path, capsys):
    keys, out = tmp_path / "keys", tmp_path / "out"
    assert ance_main(["keys", str(keys)]) == 0
    assert ance_main(["keys", "issue", str(keys), "--name", "inferencer-3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"broker.client_keys={keys / 'clients'}" in printed and f"broker.curve_keys={out}" in printed
    assert ance_main(["keys", "list", str(keys)]) == 0
    assert capsys.readouterr().out == "issued\tinferencer-3\n"
    assert ance_main(["keys", "revoke", str(keys), "--name", "inferencer-3"]) == 0
    capsys.readouterr()
    assert ance_main(["keys", "list", str(keys)]) == 0
    assert capsys.readouterr().out == "revoked\tinferencer-3\n"
    for argv, says in ((["keys", "issue", str(keys), "--name", "../x"], "--name"),
                       (["keys", "issue", str(keys)], "--name NAME is required"),
                       (["keys", "issue", str(tmp_path / "none"), "--name", "a"], "broker.key: missing"),
                       (["keys", "revoke", str(keys), "--name", "ghost"], "no key issued"),
                       (["keys", str(keys), "--name", "a"], "--name and --out go with")):
        assert ance_main(argv) == 2
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_client_keys_need_curve_keys(tmp_path):
    with pytest.raises(ConfigError, match="broker.client_keys needs broker.curve_keys"):
        load_config(None, [f"run_dir={tmp_path}", f"broker.client_keys={tmp_path}"])


# ------------------------------------------------------------ real sockets
@pytest.fixture
def keyed(tmp_path, caplog):
    """A CURVE broker admitting per-worker keys; issued: inferencer-3 (host folder ``h3``) and trainer."""
    caplog.set_level(logging.INFO)
    keys = tmp_path / "keys"
    generate_keys(keys)
    clientkeys.issue(keys, "inferencer-3", tmp_path / "h3")
    clientkeys.issue(keys, "trainer", tmp_path / "ht")
    env, stop = start_broker(tmp_path, f"broker.curve_keys={keys}", f"broker.client_keys={keys / 'clients'}")
    env.keys = keys
    yield env
    stop()


def _peer(env, folder, name) -> Peer:
    p = Peer(env.addr, None, keys=folder, key_name=name)
    env.peers.append(p)
    return p


def _no_answer(env, folder, name) -> bool:
    """A DEALER with ``folder``'s key pair for ``name`` says hello; True when nothing at all comes back."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.sndtimeo = 1000  # a refused handshake leaves the DEALER no pipe: send would block for good
    from ance.wire.keys import secure_client

    secure_client(sock, folder, name)
    sock.connect(env.addr)
    try:
        sock.send(pack_message("hello", nonce=new_nonce(), **_hello(name)))
        return not sock.poll(1500)
    except zmq.Again:
        return True
    finally:
        sock.close(0)
        ctx.term()


def test_per_worker_key_is_accepted_under_its_name(keyed, tmp_path):
    w = _peer(keyed, tmp_path / "h3", "inferencer-3")
    assert w.hello(**_hello("inferencer-3"))  # the broker proved the run's secret, we proved ours
    w.wait_for(lambda ms: [m for m in ms if m.type == "welcome"], 30, "welcome")
    t = _peer(keyed, tmp_path / "ht", "trainer")
    assert t.hello(**_hello("trainer", "trainer"), have_version=-1)
    t.wait_for(lambda ms: [m for m in ms if m.type == "welcome"], 30, "trainer welcome")
    assert "inferencer-3" in keyed.b.state.workers


def test_unknown_key_is_refused(keyed, tmp_path, caplog):
    """A valid key pair the broker never issued (the shared client key of the same folder included)."""
    other = tmp_path / "other"
    generate_keys(other)
    clientkeys.issue(other, "inferencer-3", tmp_path / "stranger")
    (tmp_path / "stranger" / "broker.key").write_bytes((keyed.keys / "broker.key").read_bytes())
    assert _no_answer(keyed, tmp_path / "stranger", "inferencer-3")
    assert _no_answer(keyed, keyed.keys, "inferencer-5")  # the shared client.key_secret: not on the allow-list
    assert "CURVE: refused a CURVE client" in caplog.text and "allow-list" in caplog.text
    assert not keyed.b.state.workers


def test_key_name_mismatch_is_refused_and_logged(keyed, tmp_path, caplog):
    """inferencer-3's key, saying hello as inferencer-4 (or as the trainer): refused before any challenge."""
    thief = _peer(keyed, tmp_path / "h3", "inferencer-3")
    for name, role in (("inferencer-4", "inferencer"), ("trainer", "trainer")):
        thief.sock.send(pack_message("hello", nonce=new_nonce(), **_hello(name, role)))
        thief.wait_for(lambda ms, n=name: [m for m in ms if m.type == "error" and n in m.reason], 30, "refusal")
    assert not thief.of("challenge") and not thief.of("welcome")
    assert "hello as 'inferencer-4' from a connection whose key does not belong to that name: its CURVE key was " \
           "issued to 'inferencer-3'" in caplog.text
    assert not keyed.b.state.workers and keyed.b.trainer.peer is None


def test_revoked_key_is_refused(keyed, tmp_path, caplog):
    w = _peer(keyed, tmp_path / "h3", "inferencer-3")
    assert w.hello(**_hello("inferencer-3"))
    wait_until(lambda: "inferencer-3" in keyed.b.state.workers, 30, "inferencer-3 registered")
    clientkeys.revoke(keyed.keys, "inferencer-3")
    # the live session is dropped by the broker's sweep, and told so...
    w.wait_for(lambda ms: [m for m in ms if m.type == "error" and "revoked" in m.reason], 30, "revocation")
    wait_until(lambda: "inferencer-3" not in keyed.b.state.workers, 30, "inferencer-3 dropped")
    assert "its CURVE key left" in caplog.text
    # ...its hello on the same connection is refused...
    w.sock.send(pack_message("hello", nonce=new_nonce(), **_hello("inferencer-3")))
    w.wait_for(lambda ms: [m for m in ms if m.type == "error" and "no longer in" in m.reason], 30, "refused hello")
    # ...and a new connection with the key never completes the handshake
    assert _no_answer(keyed, tmp_path / "h3", "inferencer-3")
    assert "inferencer-3" not in keyed.b.state.workers


def test_shared_key_mode_still_admits_any_name(tmp_path):
    keys = tmp_path / "keys"
    generate_keys(keys)
    env, stop = start_broker(tmp_path, f"broker.curve_keys={keys}")
    try:
        p = Peer(env.addr, None, keys=keys, key_name="inferencer-7")  # no own pair: the shared client key
        env.peers.append(p)
        assert p.hello(**_hello("inferencer-7"))
        p.wait_for(lambda ms: [m for m in ms if m.type == "welcome"], 30, "welcome")
    finally:
        stop()



def test_real_clients_pick_their_own_pair_by_name(keyed, tmp_path):
    """The real InferencerLink and TrainerLink with ``broker.curve_keys`` = their issued folder: each connects
    with the pair of its own name and is welcomed."""
    from dataclasses import replace

    from ance.inferencer.link import InferencerLink
    from ance.trainer.feed import NegativesTable
    from ance.trainer.link import TrainerLink

    from test_broker import N_TRAIN, Recorder

    def cfg_with(folder):
        return replace(keyed.cfg, broker=replace(keyed.cfg.broker, curve_keys=str(folder), client_keys=None))

    worker = InferencerLink(cfg_with(tmp_path / "h3"), "3", "cpu", "fp-test")
    trainer = TrainerLink(cfg_with(tmp_path / "ht"), NegativesTable(N_TRAIN, 3), Recorder(),
                          [f"q{i}" for i in range(N_TRAIN)], "fp-test")
    try:
        worker.start()
        trainer.connect()
        wait_until(worker.welcomed.is_set, 60, "inferencer-3 welcomed")
        trainer.wait_for(lambda: trainer.broker_id == keyed.b.broker_id, timeout=60)
        assert "inferencer-3" in keyed.b.state.workers and keyed.b.sessions.get("trainer").key is not None
    finally:
        worker.close()
        trainer.close()
