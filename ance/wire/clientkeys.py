"""Per-worker CURVE keys: one key pair per named client, an allow-list the broker reads, revocation.

With one shared client key pair (:mod:`ance.wire.keys`), whoever holds it may
connect under any name. With per-worker keys each client (``trainer``,
``inferencer-3``...) gets its own pair and the broker admits a key only under
the name it was issued for::

    ance keys issue DIR --name inferencer-3 --out OUT   # OUT: broker.key, inferencer-3.key(_secret)
    ance keys list DIR                                  # issued and revoked names
    ance keys revoke DIR --name inferencer-3            # refused from the next handshake / sweep on

``DIR`` is the broker's keys folder (``ance keys DIR``); the allow-list is
``DIR/clients/NAME.key`` (public keys only, the file name is the peer name);
a revoked key moves to ``DIR/revoked/``. The broker sets
``broker.client_keys=DIR/clients``: its ZAP handler admits only listed keys,
and at ``hello`` the broker refuses a key used under another name than its
file's; every few seconds it drops live sessions whose key left the list. A
client finds its own pair as ``broker.curve_keys/NAME.key_secret`` (else the
shared ``client.key_secret``).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import zmq.auth
from zmq.utils import z85

from ance.run.errors import ConfigError

log = logging.getLogger("ance.wire.keys")

CLIENTS = "clients"
REVOKED = "revoked"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
RESERVED = frozenset({"broker", "client"})  # the shared key files of `ance keys DIR`


def check_name(name: str) -> str:
    """``name`` when it can name a client key (letters, digits, ``._-``; at most 64; not broker/client)."""
    if not NAME_RE.fullmatch(name or "") or name in RESERVED or name.endswith(".key"):
        raise ConfigError(f"--name {name!r}: a client key is named after its peer, e.g. trainer or inferencer-3 "
                          "(letters, digits, . _ -, at most 64 characters; not 'broker' or 'client')")
    return name


def issue(keys_dir: str | Path, name: str, out: str | Path, *, force: bool = False) -> dict[str, Path]:
    """Make ``name``'s key pair in ``out`` (with a copy of ``broker.key``, and ``run.secret`` when ``keys_dir``
    has one) and list its public key in ``keys_dir/clients``; return ``{what: path}``."""
    keys_dir, out = Path(keys_dir), Path(out)
    check_name(name)
    if not (keys_dir / "broker.key").is_file():
        raise ConfigError(f"{keys_dir}/broker.key: missing; run `ance keys {keys_dir}` first (on the broker host)")
    listed = keys_dir / CLIENTS / f"{name}.key"
    if (listed.exists() or (out / f"{name}.key_secret").exists()) and not force:
        raise ConfigError(f"a key for {name!r} already exists ({listed}); revoke it first or pass --force to "
                          "replace it (the old key is refused from then on)")
    for folder in (out, keys_dir / CLIENTS):
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"{folder} exists and is not a directory")
        folder.mkdir(parents=True, mode=0o700, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".issue-", dir=out))  # private (0700): no secret ever readable by others
    try:
        zmq.auth.create_certificates(tmp, name)
        for f in tmp.iterdir():
            os.chmod(f, 0o600)
        shutil.copyfile(tmp / f"{name}.key", tmp / ".listed")
        os.chmod(tmp / ".listed", 0o600)
        os.replace(tmp / ".listed", listed)
        os.replace(tmp / f"{name}.key", out / f"{name}.key")
        os.replace(tmp / f"{name}.key_secret", out / f"{name}.key_secret")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    paths = {"public": out / f"{name}.key", "secret": out / f"{name}.key_secret", "listed": listed}
    if (out / "broker.key").resolve() != (keys_dir / "broker.key").resolve():
        shutil.copyfile(keys_dir / "broker.key", out / "broker.key")
        os.chmod(out / "broker.key", 0o600)
    paths["broker"] = out / "broker.key"
    if (keys_dir / "run.secret").is_file() and not (out / "run.secret").exists():
        shutil.copyfile(keys_dir / "run.secret", out / "run.secret")
        os.chmod(out / "run.secret", 0o600)
        paths["secret_file"] = out / "run.secret"
    (keys_dir / REVOKED / f"{name}.key").unlink(missing_ok=True)  # issued again: no longer listed as revoked
    return paths


def revoke(keys_dir: str | Path, name: str) -> Path:
    """Move ``name``'s public key from ``clients/`` to ``revoked/``; return where it went."""
    keys_dir = Path(keys_dir)
    listed = keys_dir / CLIENTS / f"{check_name(name)}.key"
    if not listed.is_file():
        raise ConfigError(f"{listed}: no key issued for {name!r}; `ance keys list {keys_dir}` shows the names")
    (keys_dir / REVOKED).mkdir(mode=0o700, exist_ok=True)
    os.replace(listed, keys_dir / REVOKED / listed.name)
    return keys_dir / REVOKED / listed.name


def listing(keys_dir: str | Path) -> dict[str, list[str]]:
    """``{"issued": names, "revoked": names}`` of ``keys_dir``."""
    keys_dir = Path(keys_dir)
    return {"issued": _stems(keys_dir / CLIENTS), "revoked": _stems(keys_dir / REVOKED)}


def _stems(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.key")) if folder.is_dir() else []


def load_allow_list(folder: str | Path) -> dict[str, str]:
    """``{z85 public key: peer name}`` of the ``NAME.key`` files in ``folder`` (re-read at every call).

    Symlinks, unreadable files and files that are not certificates are skipped (logged); a key listed
    under two names is refused under both (it would bind to neither reliably)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"broker.client_keys={folder}: not a directory; issue keys with "
                          "`ance keys issue DIR --name NAME --out OUT` and set broker.client_keys=DIR/clients")
    found: dict[str, list[str]] = {}
    for path in sorted(folder.glob("*.key")):
        name = path.stem
        try:
            if path.is_symlink() or not path.is_file() or name in RESERVED or not NAME_RE.fullmatch(name):
                raise ValueError("not a regular file named after a peer")
            public, _ = zmq.auth.load_certificate(path)
        except (OSError, ValueError) as exc:
            log.error("CURVE allow-list: %s skipped: %s", path, exc)
            continue
        found.setdefault(z85.encode(z85.decode(public)).decode(), []).append(name)
    allowed = {}
    for key, names in found.items():
        if len(names) > 1:
            log.error("CURVE allow-list: one public key is listed as %s: refused under every name", ", ".join(names))
        else:
            allowed[key] = names[0]
    return allowed


def client_key_file(keys_dir: str | Path, name: str | None) -> Path:
    """The key pair a client ``name`` connects with: ``keys_dir/NAME.key_secret`` when issued, else the shared
    ``keys_dir/client.key_secret``."""
    keys_dir = Path(keys_dir)
    if name and NAME_RE.fullmatch(name) and (keys_dir / f"{name}.key_secret").is_file():
        return keys_dir / f"{name}.key_secret"
    return keys_dir / "client.key_secret"
