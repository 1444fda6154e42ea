"""benchmarks/bench_train.py and benchmarks/profile_train.py run end to end, tiny and on CPU,
so the scripts behind docs/benchmarks.md's trainer figures do not rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers_refresh import SCIFACT, needs_scifact

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
TINY = ["--device", "cpu", "--batch", "4", "--max-length", "32", "--data", str(SCIFACT)]


def run(script: str, tmp_path: Path, *args: str) -> dict:
    from ance.model.biencoder import resolve_model

    out = tmp_path / f"{script}.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(BENCH / script), "--model", resolve_model("tiny-bert"), *TINY,
                           "--out", str(out), *args], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@needs_scifact
@pytest.mark.parametrize("chunk", ["2", "0"])  # 0: neither tool caches (plain step, plain MNRL)
def test_bench_train_compares_with_sentence_transformers(tmp_path, chunk):
    pytest.importorskip("sentence_transformers")
    got = run("bench_train.py", tmp_path, "--chunk", chunk, "--steps", "2", "--warmup", "1", "--repeats", "1")
    assert got["chunk"] == int(chunk)
    for precision in ("bf16", "fp32"):
        row = got[precision]
        assert row["ance"]["steps_per_s"] > 0 and row["sentence_transformers"]["steps_per_s"] > 0
        assert row["speedup"] == pytest.approx(row["ance"]["steps_per_s"] / row["sentence_transformers"]["steps_per_s"])


@needs_scifact
def test_profile_train_times_each_phase_of_each_variant(tmp_path):
    got = run("profile_train.py", tmp_path, "--chunks", "2", "--steps", "2", "--rows", "3",
              "--variants", "rows-hfmask,tokens", "--warmup", "1", "--profile-steps", "1")
    assert set(got) == {"rows-hfmask-2", "tokens-2"}
    for row in got.values():
        assert all(row[k] > 0 for k in ("build", "step", "clip", "adamw"))
        assert row["total_ms"] == pytest.approx(sum(row[k] for k in ("build", "step", "clip", "adamw")), abs=0.05)


def test_profile_encode_groups_the_forward_by_kernel_kind(tmp_path):
    from ance.model.biencoder import resolve_model

    out = tmp_path / "profile.json"
    proc = subprocess.run([sys.executable, str(BENCH / "profile_encode.py"), "--tokenizer", resolve_model("tiny-bert"),
                           "--shape", "tiny", "--device", "cpu", "--batch", "4", "--length", "16", "--iters", "2",
                           "--out", str(out)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got["docs_per_s"] > 0 and got["tflops"] > 0 and got["top"]
    assert sum(c["share"] for c in got["categories"].values()) == pytest.approx(1.0)
    assert "matmul" in got["categories"]


def test_bench_optimizer_times_each_adamw_variant(tmp_path):
    out = tmp_path / "opt.json"
    proc = subprocess.run([sys.executable, str(BENCH / "bench_optimizer.py"), "--model", "tiny-bert", "--steps", "2",
                           "--repeats", "1", "--out", str(out)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(out.read_text())
    assert set(got["ms"]) == {"loop", "foreach", "fused"} and all(v > 0 for v in got["ms"].values())
