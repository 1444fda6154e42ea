"""ZeroMQ CURVE keys: make them, load them, secure a broker or peer socket.

``ance keys DIR`` makes two keypairs (ZeroMQ certificate files)::

    DIR/broker.key          broker public key   (peers need it to connect)
    DIR/broker.key_secret   broker keypair      (the broker only)
    DIR/client.key          client public key   (the broker allows the keys of DIR/*.key)
    DIR/client.key_secret   client keypair      (trainer and inferencers)

Set ``broker.curve_keys=DIR`` on every process. The broker host keeps all four
files; other hosts get only ``broker.key``, ``client.key`` and
``client.key_secret`` (never ``broker.key_secret``: whoever holds it can pose
as the broker).
The broker's socket then encrypts everything and a ZAP handler (:class:`CurveZap`)
accepts only clients whose public key is one of ``DIR/*.key``; a peer without the keys,
or with another keypair, never completes the handshake and gets no answer.
Per-worker keys instead (``broker.client_keys``, :mod:`ance.wire.clientkeys`):
the handler admits only the keys of that allow-list, re-read at every handshake.

:func:`check_bind_address` refuses to listen off loopback without keys: the
wire protocol carries checkpoint paths (and, with ``broker.send_weights``,
model weights) and trusts whoever connects.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path

import zmq
import zmq.auth
from zmq.utils import z85

from ance.run.errors import ConfigError
from ance.wire.clientkeys import client_key_file, load_allow_list

log = logging.getLogger("ance.wire.keys")

SERVER = "broker"
CLIENT = "client"
KEY_FILES = (f"{SERVER}.key", f"{SERVER}.key_secret", f"{CLIENT}.key", f"{CLIENT}.key_secret")


# ------------------------------------------------------------------ files
def generate_keys(out_dir: str | Path, *, force: bool = False) -> dict[str, Path]:
    """Create the broker and client keypairs in ``out_dir``; return ``{file name: path}``.

    Files are mode 0600 (the directory 0700 when created here). Existing keys
    are kept, with a :class:`ConfigError`, unless ``force``: replacing them
    locks out every peer that still has the old ones.
    """
    out = Path(out_dir)
    existing = [name for name in KEY_FILES if (out / name).exists()]
    if existing and not force:
        raise ConfigError(f"{out} already holds CURVE keys ({', '.join(existing)}); pass --force to replace "
                          "them (peers still using the old keys will be refused)")
    if not out.exists():
        out.mkdir(parents=True, mode=0o700)
    elif not out.is_dir():
        raise ConfigError(f"{out} exists and is not a directory")
    # zmq writes with the process umask: make the files in a private (0700) directory, restrict them,
    # and only then move them into place, so no secret is ever readable by others.
    tmp = Path(tempfile.mkdtemp(prefix=".keys-", dir=out))
    try:
        for name in (SERVER, CLIENT):
            zmq.auth.create_certificates(tmp, name)
        paths = {}
        for name in KEY_FILES:
            os.chmod(tmp / name, 0o600)
            os.replace(tmp / name, out / name)
            paths[name] = out / name
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return paths


def _load(path: Path, want_secret: bool) -> tuple[bytes, bytes | None]:
    if not path.is_file():
        raise ConfigError(f"missing CURVE key file {path}; run `ance keys {path.parent}` "
                          "on the broker host (other hosts need only broker.key, client.key and client.key_secret "
                          "copied from there) and set broker.curve_keys to that directory (per-worker keys: copy "
                          "the folder of `ance keys issue DIR --name NAME --out OUT`)")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except ValueError as exc:
        raise ConfigError(f"{path}: not a ZeroMQ certificate ({exc}); re-create it with `ance keys`") from None
    if want_secret and not secret:
        raise ConfigError(f"{path}: holds no secret key; re-create it with `ance keys`")
    return public, secret


def load_server_keys(keys_dir: str | Path) -> tuple[bytes, bytes]:
    """``(public, secret)`` of the broker, from ``keys_dir/broker.key_secret``."""
    public, secret = _load(Path(keys_dir) / f"{SERVER}.key_secret", want_secret=True)
    return public, secret


def load_client_keys(keys_dir: str | Path, name: str | None = None) -> tuple[bytes, bytes, bytes]:
    """``(client_public, client_secret, server_public)`` for a peer connecting to the broker: the pair issued
    for ``name`` (``keys_dir/NAME.key_secret``, per-worker keys) when there is one, else the shared pair."""
    keys_dir = Path(keys_dir)
    public, secret = _load(client_key_file(keys_dir, name), want_secret=True)
    server_public, _ = _load(keys_dir / f"{SERVER}.key", want_secret=False)
    return public, secret, server_public


# ---------------------------------------------------------------- sockets
ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # where libzmq asks a context's ZAP handler (RFC 27)


class CurveZap:
    """The ZAP handler of one context: accepts CURVE clients whose public key is allowed.

    A plain thread with a REP socket polled every 100 ms (level-triggered, so a
    stop request is never missed) that stops within a poll interval. It stands
    in for pyzmq's ``ThreadAuthenticator``, whose asyncio thread has no timeout
    on stop and is stopped again from ``__del__`` in whichever thread collects it.
    """

    def __init__(self, ctx, keys_dir: Path, allow_dir: Path | None = None):
        self.ctx = ctx
        self.keys_dir = keys_dir
        self.allow_dir = allow_dir  # per-worker keys: admit only this allow-list (re-read at every handshake)
        self.allowed: frozenset[bytes] = frozenset()
        self._refused: set[tuple[bytes, bytes]] = set()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="ance-zap", daemon=True)

    def reload(self) -> None:
        """Re-read the allowed public keys: every ``keys_dir/*.key``, or the allow-list of ``allow_dir``."""
        if self.allow_dir is not None:
            self.allowed = frozenset(z85.decode(k) for k in load_allow_list(self.allow_dir))
        else:
            self.allowed = frozenset(z85.decode(k) for k in zmq.auth.load_certificates(str(self.keys_dir)))

    def start(self) -> None:
        self.reload()
        self.thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the ZAP handler thread did not start within 10 s")
        if self._error is not None:
            raise ConfigError(f"cannot serve ZAP on this ZeroMQ context ({self._error}): another "
                              "authenticator already runs on it") from self._error

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(timeout)
            if self.thread.is_alive():
                log.warning("the ZAP handler thread did not stop within %gs", timeout)

    def _run(self) -> None:
        sock = self.ctx.socket(zmq.REP)
        sock.linger = 0
        try:
            sock.bind(ZAP_ENDPOINT)
        except zmq.ZMQError as exc:
            self._error = exc
            sock.close(0)
            self._ready.set()
            return
        self._ready.set()
        try:
            while not self._stop.is_set():
                if sock.poll(100, zmq.POLLIN):
                    sock.send_multipart(self.reply(sock.recv_multipart()))
        finally:
            sock.close(0)

    def reply(self, request: list[bytes]) -> list[bytes]:
        """The ZAP reply to one request: 200 for an allowed CURVE key, 400 otherwise, 500 if malformed."""
        if len(request) < 6 or request[0] != b"1.0":
            log.warning("CURVE: malformed ZAP request (%d frames) refused", len(request))
            return [b"1.0", request[1] if len(request) > 1 else b"", b"500", b"malformed request", b"", b""]
        _, request_id, _domain, address, _identity, mechanism, *credentials = request
        if self.allow_dir is not None:
            try:
                self.reload()  # a revoked key is refused from its next handshake on
            except ConfigError as exc:
                log.error("CURVE: %s; refusing every client until it is fixed", exc)
                self.allowed = frozenset()
        if mechanism == b"CURVE" and len(credentials) == 1 and credentials[0] in self.allowed:
            return [b"1.0", request_id, b"200", b"OK", z85.encode(credentials[0]), b""]
        key = credentials[0] if mechanism == b"CURVE" and credentials else mechanism
        if (address, key) not in self._refused:  # once per client, not once per reconnect
            self._refused.add((address, key))
            log.warning("CURVE: refused a %s client from %s: its public key is not in %s",
                        mechanism.decode(errors="replace"), address.decode(errors="replace") or "?",
                        f"the allow-list {self.allow_dir}" if self.allow_dir is not None else f"{self.keys_dir}/*.key")
        return [b"1.0", request_id, b"400", b"key not allowed", b"", b""]


# One ZAP handler per context (ZAP is the context-wide inproc://zeromq.zap.01), shared by the
# secured sockets of that context and stopped when the last of them closes: its socket would
# otherwise keep `ctx.term()` waiting forever.
_auth_lock = threading.Lock()
_authenticators: dict[int, list] = {}  # id(context) -> [CurveZap, open secured sockets]; CurveZap holds the context


def secure_server(socket, keys_dir: str | Path, client_keys: str | Path | None = None) -> None:
    """Make ``socket`` a CURVE server that accepts only the public keys in ``keys_dir`` (or, per-worker keys,
    only those of the allow-list folder ``client_keys``).

    Call before ``bind``. Starts (or shares) the context's :class:`CurveZap`;
    ``socket.close()`` stops it again once no other secured socket of that
    context is open.
    """
    keys_dir = Path(keys_dir).resolve()
    allow_dir = Path(client_keys).resolve() if client_keys else None
    public, secret = load_server_keys(keys_dir)
    if allow_dir is not None:
        load_allow_list(allow_dir)  # a ConfigError (one line) for a missing folder, before the socket serves
    ctx = socket.context
    with _auth_lock:
        entry = _authenticators.get(id(ctx))
        if entry is None:
            zap = CurveZap(ctx, keys_dir, allow_dir)
            zap.start()
            log.info("CURVE: accepting only clients whose public key is in %s",
                     f"the allow-list {allow_dir} (per-worker keys)" if allow_dir else f"{keys_dir}/*.key")
            entry = _authenticators[id(ctx)] = [zap, 0]
        elif entry[0].keys_dir != keys_dir or entry[0].allow_dir != allow_dir:
            raise ConfigError(f"this ZeroMQ context already authenticates with the keys of {entry[0].keys_dir}; "
                              f"cannot also use {keys_dir} (use one keys directory, or another context)")
        else:
            entry[0].reload()  # keys may have been added since the first socket
        entry[1] += 1
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_server = True

    close = socket.close
    released = False

    def close_and_release(linger=None):
        nonlocal released
        try:
            close(linger)
        finally:
            if not released:
                released = True
                _release(ctx)

    # pyzmq sockets take no new attributes, but may shadow their own methods: hook close() so that
    # the callers' usual `sock.close(); ctx.term()` stops the ZAP handler in between.
    socket.close = close_and_release


def _release(ctx) -> None:
    with _auth_lock:
        entry = _authenticators.get(id(ctx))
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _authenticators[id(ctx)]
    entry[0].stop()


def secure_client(socket, keys_dir: str | Path, name: str | None = None) -> None:
    """Make ``socket`` a CURVE client of the broker whose keys are in ``keys_dir`` (with ``name``'s own key
    pair when one was issued: :func:`ance.wire.clientkeys.client_key_file`). Call before ``connect``."""
    public, secret, server_public = load_client_keys(keys_dir, name)
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_serverkey = server_public


# ---------------------------------------------------------------- addresses
def is_loopback(address: str) -> bool:
    """True for ``ipc://``, ``inproc://`` and TCP-like endpoints on 127.0.0.0/8, ``localhost`` or ``[::1]``."""
    scheme, sep, rest = address.partition("://")
    if not sep:
        raise ConfigError(f"{address!r} is not a ZeroMQ endpoint (expected e.g. tcp://127.0.0.1:5555)")
    if scheme.lower() in ("ipc", "inproc"):
        return True
    if rest.startswith("["):
        host = rest[1:rest.find("]")] if "]" in rest else rest[1:]
    else:
        host = rest.rsplit(":", 1)[0]
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # `*`, an interface name or a host name: assume reachable from outside
        return False


def check_bind_address(address: str, keys_dir: str | Path | None) -> None:
    """Raise :class:`ConfigError` when ``address`` is reachable from other hosts and there are no keys."""
    if keys_dir:
        return
    if not is_loopback(address):
        raise ConfigError(f"refusing to listen on {address} without CURVE keys; run `ance keys DIR` and set "
                          "broker.curve_keys=DIR")
