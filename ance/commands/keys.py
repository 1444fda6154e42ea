"""`ance keys`: make the ZeroMQ CURVE keys that let the broker listen off loopback."""

from __future__ import annotations

import argparse

NAME = "keys"
HELP = "Create CURVE keys (broker and client keypairs) for an encrypted, authenticated broker socket."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", metavar="DIR", help="directory for the keys (created, mode 0700)")
    parser.add_argument("--force", action="store_true",
                        help="replace existing keys (peers still holding the old ones are refused)")


def run(args: argparse.Namespace) -> int:
    from ance.keys import generate_keys

    paths = generate_keys(args.dir, force=args.force)
    for path in paths.values():
        print(path)
    print(f"\nCopy {args.dir} to every host of the run (keep it private: it holds secret keys) and set\n"
          f"  broker.curve_keys={args.dir}\n"
          "on the broker, trainer and inferencers (e.g. as a dotted override). The broker may then bind\n"
          "off loopback, e.g. broker.bind=tcp://0.0.0.0:5555; it accepts only clients holding "
          "client.key_secret.")
    return 0
