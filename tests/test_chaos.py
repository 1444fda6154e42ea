"""The chaos soak (benchmarks/chaos.py) for a few minutes with a fixed seed: 0 invariant violations.

``ANCE_CHAOS_MINUTES`` sets how long faults are injected (default 3; the runs then finish, so the test
takes that plus one run, about 1-2 minutes on 2 CPU cores); ``ANCE_CHAOS_MINUTES=0`` skips it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers_refresh import needs_scifact

REPO = Path(__file__).resolve().parents[1]
MINUTES = float(os.environ.get("ANCE_CHAOS_MINUTES", "3"))

pytestmark = [needs_scifact, pytest.mark.slow]


@pytest.mark.skipif(MINUTES <= 0, reason="ANCE_CHAOS_MINUTES=0")
def test_chaos_soak_loses_nothing(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "chaos.py"), "--minutes", str(MINUTES),
                          "--seed", "1", "--out", str(tmp_path / "chaos")], capture_output=True, text=True,
                         timeout=MINUTES * 60 + 900, cwd=REPO)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    assert lines, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads(lines[-1])
    print(result)
    assert result["violations"] == [], result
    assert out.returncode == 0 and result["runs"] >= 1 and sum(result["faults"].values()) >= 1, result
