"""`ance keys`: make the ZeroMQ CURVE keys that let the broker listen off loopback."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "keys"
HELP = "Create CURVE keys (broker and client keypairs) for an encrypted, authenticated broker socket."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", metavar="DIR", help="directory for the keys (created, mode 0700)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--force", action="store_true",
                       help="replace existing keys (peers still holding the old ones are refused)")
    which.add_argument("--if-missing", action="store_true",
                       help="keep a complete, readable set of keys already in DIR and exit 0 (for a container "
                            "that runs on every start); a partial set is still an error")


def run(args: argparse.Namespace) -> int:
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
