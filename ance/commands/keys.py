"""`ance keys`: make the ZeroMQ CURVE keys that let the broker listen off loopback; issue, list and revoke
per-worker client keys (:mod:`ance.wire.clientkeys`)."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "keys"
HELP = ("Create CURVE keys (broker and client keypairs) for an encrypted, authenticated broker socket; "
        "`ance keys issue|list|revoke DIR` for per-worker client keys.")
ACTIONS = ("issue", "list", "revoke")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.usage = ("%(prog)s DIR [--force | --if-missing]\n       %(prog)s issue DIR --name NAME [--out OUT] [--force]"
                    "\n       %(prog)s list DIR\n       %(prog)s revoke DIR --name NAME")
    parser.add_argument("words", nargs="+", metavar="DIR",
                        help="DIR: make the broker and shared client keys there (created, mode 0700); "
                             "`issue DIR --name NAME --out OUT`: a key pair for one peer, listed in DIR/clients; "
                             "`list DIR`: issued and revoked names; `revoke DIR --name NAME`")
    parser.add_argument("--name", help="issue/revoke: the peer the key is for (trainer, inferencer-3, ...)")
    parser.add_argument("--out", help="issue: folder for the peer's key files (default DIR/issued/NAME)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--force", action="store_true",
                       help="replace existing keys (peers still holding the old ones are refused)")
    which.add_argument("--if-missing", action="store_true",
                       help="keep a complete, readable set of keys already in DIR and exit 0 (for a container "
                            "that runs on every start); a partial set is still an error")


def run(args: argparse.Namespace) -> int:
    from ance.run.errors import ConfigError

    words = args.words
    if words[0] in ACTIONS:
        if len(words) != 2:
            raise ConfigError(f"ance keys {words[0]}: give the keys folder, e.g. `ance keys {words[0]} keys/"
                              f"{' --name inferencer-3' if words[0] != 'list' else ''}`")
        return _per_worker(words[0], Path(words[1]), args)
    if len(words) != 1:
        raise ConfigError(f"ance keys: unknown action {words[0]!r} (issue, list, revoke, or just DIR)")
    if args.name or args.out:
        raise ConfigError("ance keys: --name and --out go with `ance keys issue DIR` (or revoke)")
    args.dir = words[0]
    # imported when the command runs (torch, faiss, zmq...), so `ance --help` stays fast
    from ance.wire.keys import KEY_FILES, generate_keys, load_client_keys, load_server_keys

    out = Path(args.dir)
    if args.if_missing and all((out / name).is_file() for name in KEY_FILES):
        load_server_keys(out)  # a ConfigError naming the file if one is unreadable
        load_client_keys(out)
        from ance.wire.auth import ensure_secret

        ensure_secret(out)  # keys made before the run secret existed get one beside them
        print(f"{out} already holds CURVE keys; kept them")
        return 0
    from ance.wire.auth import ensure_secret, secret_path

    paths = generate_keys(out, force=args.force)
    ensure_secret(out)  # the run secret peers prove at hello, for hosts that share no RUN_DIR
    for path in [*paths.values(), secret_path(out)]:
        print(path)
    print(f"\nCopy {args.dir} to every host of the run (keep it private: it holds secret keys) and set\n"
          f"  broker.curve_keys={args.dir}\n"
          "on the broker, trainer and inferencers (e.g. as a dotted override). The broker may then bind\n"
          "off loopback, e.g. broker.bind=tcp://0.0.0.0:5555; it accepts only clients holding "
          "client.key_secret.\nHosts without the run directory (no shared file system) prove the run's secret with\n"
          f"  ance infer --secret-file {args.dir}/run.secret   (or ANCE_SECRET_FILE; `ance launch --slurm` sets it)")
    return 0


def _per_worker(action: str, keys_dir: Path, args: argparse.Namespace) -> int:
    from ance.run.errors import ConfigError
    from ance.wire import clientkeys

    if args.if_missing:
        raise ConfigError(f"ance keys {action}: --if-missing goes with `ance keys DIR` only")
    if action == "list":
        found = clientkeys.listing(keys_dir)
        for kind in ("issued", "revoked"):
            for name in found[kind]:
                print(f"{kind}\t{name}")
        return 0
    if not args.name:
        raise ConfigError(f"ance keys {action}: --name NAME is required (the peer's name, e.g. inferencer-3)")
    if action == "revoke":
        if args.force or args.out:
            raise ConfigError("ance keys revoke: takes only DIR and --name")
        moved = clientkeys.revoke(keys_dir, args.name)
        print(f"revoked {args.name}: its public key moved to {moved}; a broker with "
              f"broker.client_keys={keys_dir / clientkeys.CLIENTS} refuses it from its next handshake, and drops "
              "its live session within a few seconds")
        return 0
    out = Path(args.out) if args.out else keys_dir / "issued" / clientkeys.check_name(args.name)
    paths = clientkeys.issue(keys_dir, args.name, out, force=args.force)
    for path in paths.values():
        print(path)
    print(f"\nCopy {out} to the host of {args.name} (keep it private: it holds its secret key) and set\n"
          f"  broker.curve_keys={out}\n"
          f"there; the broker (broker.curve_keys={keys_dir}) admits it with\n"
          f"  broker.client_keys={keys_dir / clientkeys.CLIENTS}\n"
          f"and then only under the name {args.name!r}.")
    return 0
