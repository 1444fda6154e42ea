"""Shared pieces of the refresh-pipeline tests: configs, checkpoints, processes, a fake trainer."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from ance.wire.protocol import unpack_message, pack_message

SCIFACT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "scifact"
MAX_FRAME = 16 << 20  # a tiny-bert checkpoint (~9 MB) fits in one job frame

needs_scifact = pytest.mark.skipif(not (SCIFACT / "corpus.jsonl").is_file(),
                                   reason=f"SciFact not found at {SCIFACT} (shared test data)")

# Runs one ance subcommand module without going through ance.cli (which imports every command); exits
# with the GC frozen, as ance.cli.entry does.
_RUNNER = ("import argparse, gc, sys; from ance.commands import {mod} as m; p = argparse.ArgumentParser(); "
           "m.add_arguments(p); rc = m.run(p.parse_args(sys.argv[1:])); gc.freeze(); sys.exit(rc)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(tmp_path: Path, port: int, **sections: dict[str, Any]) -> Path:
    """A small run config (SciFact subset, tiny-bert) at ``tmp_path/config.yaml``; sections override."""
    cfg: dict[str, Any] = {
        "run_dir": str(tmp_path / "run"),
        "seed": 7,
        "data": {"path": str(SCIFACT), "train_split": "train", "eval_split": "dev", "max_docs": 300,
                 "max_queries": 40},
        "model": {"name_or_path": "tiny-bert", "query_max_length": 32, "passage_max_length": 64},
        "negatives": {"source": "async", "depth": 30, "rank_window": [0, 30], "keep": 5},
        "broker": {"address": f"tcp://127.0.0.1:{port}", "heartbeat_s": 0.25, "worker_timeout_s": 3.0,
                   "chunk_queries": 16, "max_frame_bytes": MAX_FRAME},
        "inferencer": {"batch_size": 32, "backend": "faiss", "device": "cpu"},
        "telemetry": {"tensorboard": False},
    }
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


_MODEL_DIR: Path | None = None


def make_checkpoint(run_dir: Path, step: int) -> Path:
    """``RUN_DIR/checkpoints/step-N`` holding tiny-bert (saved once, then copied) and its manifest."""
    global _MODEL_DIR
    if _MODEL_DIR is None or not _MODEL_DIR.exists():
        from ance.model.biencoder import BiEncoder, resolve_model

        _MODEL_DIR = run_dir.parent / "tiny-bert-saved"
        BiEncoder.load(resolve_model("tiny-bert")).save(str(_MODEL_DIR))
    final = run_dir / "checkpoints" / f"step-{step:06d}"
    tmp = final.parent / f".tmp-{final.name}"
    shutil.copytree(_MODEL_DIR, tmp)
    (tmp / "manifest.json").write_text(json.dumps({"step": step, "time": time.time(), "config_hash": "test"}))
    os.replace(tmp, final)
    return final


def spawn(command: str, *args: str, log: Path) -> subprocess.Popen:
    """Start ``ance <command> ARGS`` as its own process, output to ``log``."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "CUDA_VISIBLE_DEVICES": ""}
    fh = open(log, "ab")
    try:
        return subprocess.Popen([sys.executable, "-c", _RUNNER.format(mod=command), *args], stdout=fh,
                                stderr=subprocess.STDOUT, env=env, cwd=str(Path(__file__).resolve().parents[1]))
    finally:
        fh.close()


def stop(proc: subprocess.Popen, sig: int | None = None, timeout: float = 10.0) -> int | None:
    if proc.poll() is None:
        if sig is None:
            proc.terminate()
        else:
            proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


def wait_until(pred: Callable[[], Any], timeout: float, what: str, logs: list[Path] = ()):
    end = time.time() + timeout
    while time.time() < end:
        value = pred()
        if value:
            return value
        time.sleep(0.05)
    tails = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in logs if p.exists())
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{tails}")


def wait_secret(run_dir: Path, timeout: float = 60.0) -> bytes:
    """The run's secret, once the broker (or launcher) has written it."""
    from ance.wire.auth import read_secret, secret_path

    wait_until(lambda: secret_path(run_dir).exists(), timeout, f"{secret_path(run_dir)}")
    return read_secret(secret_path(run_dir))


class Peer:
    """A DEALER in the test (a fake trainer or a raw client) speaking the protocol.

    ``send("hello", ...)`` does the whole handshake (ance.wire.auth) with the secret of the run registered
    for ``address`` in ``RUN_DIRS`` (or ``secret``): hello, the broker's challenge checked, auth; later
    frames carry the session tag. The challenge is not kept in ``received``."""

    RUN_DIRS: dict[str, Path] = {}  # broker address -> its run dir (registered by the fixtures)

    def __init__(self, address: str, identity: bytes | None, keys: Path | None = None, secret: bytes | None = None,
                 key_name: str | None = None):
        import zmq

        self.address = address
        self.secret = secret
        self.tags: tuple[str, str] | None = None
        self.broker_proved: bool | None = None

        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        if identity:  # a label in the broker's logs (the real clients leave the routing id to the ROUTER)
            self.sock.setsockopt(zmq.IDENTITY, identity)
        self.sock.setsockopt(zmq.LINGER, 0)
        # a DEALER whose handshake was refused has no pipe and would block in send forever: raise instead
        self.sock.setsockopt(zmq.SNDTIMEO, 10_000)
        if keys is not None:
            from ance.wire.keys import secure_client

            secure_client(self.sock, keys, key_name)  # key_name: its own pair (per-worker keys), if issued
        self.sock.connect(address)
        self.received: list = []

    def send(self, type_: str, **fields) -> None:
        if type_ == "hello":
            self.hello(**fields)
            return
        self.sock.send(pack_message(type_, session=self.tags[0] if self.tags else None, **fields))

    def hello(self, timeout: float = 60.0, **fields) -> bool:
        """The handshake; True when the broker proved the secret and our auth went out."""
        from ance.wire.auth import broker_proof, client_proof, new_nonce, same, session_tags

        import zmq

        secret = self.secret if self.secret is not None else wait_secret(self.RUN_DIRS[self.address])
        nonce = new_nonce()
        self.sock.send(pack_message("hello", nonce=nonce, **fields))
        end = time.time() + timeout
        while time.time() < end:
            if not self.sock.poll(50, zmq.POLLIN):
                continue
            msg = unpack_message(self.sock.recv(), MAX_FRAME)
            if msg.type != "challenge":
                self.received.append(msg)
                continue
            name = fields["name"]
            self.broker_proved = same(broker_proof(secret, nonce, msg.nonce, name), msg.proof)
            if not self.broker_proved:
                return False
            self.tags = session_tags(secret, nonce, msg.nonce, name)
            self.sock.send(pack_message("auth", nonce=msg.nonce,
                                        proof=client_proof(secret, nonce, msg.nonce, name, fields["role"])))
            return True
        return False

    def send_raw(self, frame: bytes) -> None:
        self.sock.send(frame)

    def pump(self, timeout: float = 0.05) -> None:
        import zmq

        ms = int(timeout * 1000)
        while self.sock.poll(ms, zmq.POLLIN):
            self.received.append(unpack_message(self.sock.recv(), MAX_FRAME))
            ms = 0

    def wait_for(self, pred: Callable[[list], Any], timeout: float, what: str, logs: list[Path] = ()):
        def check():
            self.pump(0.05)
            return pred(self.received)
        return wait_until(check, timeout, what, logs)

    def of(self, type_: str, **match) -> list:
        return [m for m in self.received if m.type == type_ and all(m.get(k) == v for k, v in match.items())]

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()
