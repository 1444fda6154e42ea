"""Run-level cases of the hostile report 2026-12-03 (issue 28): two launches into one run dir, a broker
with bad CURVE key files (it hung for ever, silently). Each: one line, exit 2, and nothing run or lost."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ance.run.config import load_config
from ance.run.errors import AnceError, ConfigError
from ance.run.lock import lock_run_dir, unlock

from helpers_proc import proc_env
from helpers_refresh import free_port
from test_broker import Recorder, synthetic_dataset

ROOT = Path(__file__).resolve().parents[1]


def test_run_dir_lock_refuses_a_second_launcher(tmp_path):
    """Two ``ance launch`` into one run dir both passed the claim (40 step events for a 24-step run)."""
    run = tmp_path / "run"
    run.mkdir()
    fd = lock_run_dir(run)
    try:
        with pytest.raises(ConfigError, match=r"another `ance launch` \(pid \d+\) is running in it"):
            lock_run_dir(run)
        # the CLI: one line, exit 2, before anything is written or started
        cfg = ROOT / "configs" / "tiny-async-cpu.yaml"
        out = subprocess.run([sys.executable, "-m", "ance.cli", "launch", str(cfg), f"run_dir={run}",
                              f"broker.address=tcp://127.0.0.1:{free_port()}"],
                             capture_output=True, text=True, env=proc_env(HF_HUB_OFFLINE="1"), timeout=120, cwd=ROOT)
        assert out.returncode == 2, out.stderr[-2000:]
        lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
        assert "another `ance launch`" in lines[-1] and "Traceback" not in out.stderr
        assert sorted(p.name for p in run.iterdir()) == [".launch.lock"]  # nothing written
    finally:
        unlock(fd)
    unlock(lock_run_dir(run))  # free again once the holder is gone


@pytest.mark.parametrize("bad", ["garbage", "empty", "missing", "file"])
def test_broker_with_bad_curve_keys_exits_instead_of_hanging(tmp_path, bad):
    from ance.broker.hub import Broker
    from ance.wire.keys import generate_keys

    keys = tmp_path / "keys"
    generate_keys(keys)
    secret = keys / "broker.key_secret"
    if bad == "garbage":
        secret.write_text("not a key\x00\xff")
    elif bad == "empty":
        secret.write_text("")
    elif bad == "missing":
        secret.unlink()
    else:
        keys = tmp_path / "afile"
        keys.write_text("x")
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", f"broker.address=tcp://127.0.0.1:{free_port()}",
                             f"broker.curve_keys={keys}"])
    result: list = []

    def start():
        b = Broker(cfg, dataset=synthetic_dataset(), metrics=Recorder())
        try:
            b.bind()
            result.append("bound")
            b.close()
        except AnceError as exc:
            result.append(exc)

    t = threading.Thread(target=start, daemon=True)
    t.start()
    t.join(20)
    assert not t.is_alive(), "the broker hung (a socket left open blocks ctx.term())"
    assert len(result) == 1 and isinstance(result[0], AnceError), result
    assert "\n" not in str(result[0])


def test_static_negatives_that_are_not_a_regular_file(tmp_path):
    """A folder (traceback), a FIFO (open() hung) and /dev/zero (MemoryError) as negatives.static_file."""
    import os

    from ance.run.errors import DataError
    from ance.trainer.feed import NegativesTable, fill_static

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (tmp_path, fifo, Path("/dev/zero")):
        with pytest.raises(DataError, match="not a regular file"):
            fill_static(NegativesTable(2, 3), str(path), ["q0", "q1"], ["d0", "d1"])
