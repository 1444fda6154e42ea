"""`ance launch` of the whole asynchronous loop with a tiny random decoder (Llama shape), last-token
pooling, an instruction template on queries, and LoRA, the adapters shipped with broker.send_weights:
refreshed negatives are consumed, every checkpoint is an adapter, the last one loads with its prompts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("peft")

from ance.run.telemetry import read_metrics  # noqa: E402

from helpers_models import tiny_decoder  # noqa: E402
from helpers_refresh import free_port, needs_scifact  # noqa: E402

pytestmark = [needs_scifact, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(420)
def test_launch_tiny_decoder_with_lora(tmp_path):
    base = tiny_decoder("llama", tmp_path / "tiny-llama")
    run_dir = tmp_path / "run"
    argv = [sys.executable, "-m", "ance.cli", "launch", str(REPO / "configs" / "tiny-async-cpu.yaml"),
            f"run_dir={run_dir}", f"broker.address=tcp://127.0.0.1:{free_port()}", f"model.name_or_path={base}",
            "model.pooling=last", "model.query_template=Instruct: {task}\nQuery: {text}",
            "model.task=find the evidence", "train.lora.r=4", "train.lora.alpha=8", "train.lr=1e-3",
            "train.gradient_checkpointing=true", "train.max_steps=16", "train.checkpoint_every=4",
            "negatives.max_gap=8", "data.max_docs=300", "data.max_queries=64", "launch.inferencers=1",
            "broker.send_weights=true"]
    env = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(argv, cwd=str(REPO), env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]

    steps = [e for e in read_metrics(run_dir) if e.get("event") == "step"]
    assert len(steps) == 16
    assert max(e.get("negatives_version") or 0 for e in steps) > 0, "refreshed negatives consumed"
    ckpts = sorted((run_dir / "checkpoints").glob("step-*"))
    assert ckpts
    for ckpt in ckpts:
        names = {p.name for p in ckpt.iterdir()}
        assert "adapter_model.safetensors" in names and "model.safetensors" not in names, names
    logs = "".join(p.read_text(errors="replace") for p in (run_dir / "logs").glob("inferencer-*"))
    assert "swapped into the loaded base" in logs, "inferencers swap adapters, no full reload"
    from ance.model.biencoder import BiEncoder

    last = BiEncoder.load(str(ckpts[-1]))
    assert last.pooling == "last" and last.prompts["query"] == "Instruct: find the evidence\nQuery: "
    st = json.loads((ckpts[-1] / "config_sentence_transformers.json").read_text())
    assert st["prompts"]["query"] == last.prompts["query"]
