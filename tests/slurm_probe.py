"""Run inside a testbed namespace by tests/test_slurm_testbed.py: look at a broker on another node.

    python tests/slurm_probe.py scrape http://ance-n1:9400/metrics     -> {"ance_...": value, ...}
    python tests/slurm_probe.py curve tcp://ance-n1:5555 RUN_DIR/keys    -> {"with_keys": ..., "without_keys": ...}

``curve``: a DEALER with the run's client keys sends a hello and must get the broker's ``challenge``
(its proof of the run's secret) (the CURVE handshake completed); a plain DEALER without keys must get nothing
(the handshake never completes, so the broker never sees the frame).
"""

from __future__ import annotations

import os
import json
import re
import sys
import urllib.request

import zmq

from ance.run.sections import BrokerConfig
from ance.wire.protocol import pack_message, unpack_message
from ance.wire.transport import dealer_socket


def scrape(url: str) -> dict[str, float]:
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(ance_\w+)(?:\{[^}]*\})? (\S+)$", text, re.M)}


def ask(address: str, keys: str | None, wait_s: float = 4.0) -> str | None:
    ctx = zmq.Context()
    sock = dealer_socket(ctx, BrokerConfig(address=address, curve_keys=keys), b"probe-%d" % (keys is None))
    try:
        sock.send(pack_message("hello", role="inferencer", name="probe", pid=os.getpid(), device="cpu",
                               data_fingerprint="0" * 16, nonce="0" * 32, state="idle"))
        if sock.poll(int(wait_s * 1000)):
            return unpack_message(sock.recv(), 1 << 20).type
        return None
    finally:
        sock.close(0)
        ctx.term()


def main() -> None:
    mode, target = sys.argv[1], sys.argv[2]
    if mode == "scrape":
        out = scrape(target)
    else:
        out = {"with_keys": ask(target, sys.argv[3]), "without_keys": ask(target, None)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
