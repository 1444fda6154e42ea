"""benchmarks/bench_tokenize.py runs end to end on the CPU: every mode (the call, whole texts, texts cut
at a space, forked shards) gives the same ids (the script refuses to report otherwise)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers_refresh import SCIFACT, needs_scifact

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@needs_scifact
def test_bench_tokenize_processes_give_the_batch_calls_ids(tmp_path):
    from ance.model.biencoder import resolve_model

    out = tmp_path / "tok.json"
    proc = subprocess.run([sys.executable, str(BENCH / "bench_tokenize.py"), "--tokenizer", resolve_model("tiny-bert"),
                           "--data", str(SCIFACT), "--limit", "300", "--procs", "1,3", "--repeats", "1",
                           "--max-tokens", "64", "--out", str(out)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got["docs"] == 300 and set(got["modes"]) == {"call", "whole", "normalised", "threads", "procs1", "procs3"}
    assert all(m["docs_per_s"] > 0 for m in got["modes"].values())
