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


@pytest.mark.timeout(420)
def test_lora_training_resumes_exactly(tmp_path):
    """A LoRA run resumed from its step-2 checkpoint (the later one removed, as a kill -9 before it would
    leave it) logs the same losses at steps 3 and 4 as the run that never stopped: adapter weights,
    optimizer, schedule, RNG (LoRA dropout is on) and data position all come back from an adapter
    checkpoint."""
    import shutil

    base = tiny_decoder("llama", tmp_path / "tiny-llama")
    common = [str(REPO / "configs" / "tiny-async-cpu.yaml"), f"model.name_or_path={base}", "model.pooling=last",
              "train.lora.r=4", "train.lora.alpha=8", "train.lora.dropout=0.1", "train.lr=1e-3",
              "train.max_steps=4", "train.checkpoint_every=2", "negatives.source=inbatch", "data.max_docs=200",
              "data.max_queries=32", "eval.every=null", "telemetry.tensorboard=false"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": "",
           "OMP_NUM_THREADS": "1"}

    def train(*args: str) -> None:
        proc = subprocess.run([sys.executable, "-m", "ance.cli", "train", *args], cwd=str(REPO), env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-4000:]

    def losses(run: Path) -> dict[int, float]:
        out = {}
        for e in read_metrics(run):
            if e.get("event") == "step":
                out[e["step"]] = e["loss"]  # a resumed run logs steps again: the newer record wins
        return out

    train(*common, f"run_dir={tmp_path / 'straight'}")
    stopped = tmp_path / "stopped"
    train(*common, f"run_dir={stopped}")
    for ckpt in (stopped / "checkpoints").glob("step-00000[34]"):
        shutil.rmtree(ckpt)  # as if killed before checkpoint 4 was written
    assert (stopped / "checkpoints" / "step-000002" / "adapter_model.safetensors").is_file()
    train("--resume", str(stopped))
    resumes = [e for e in read_metrics(stopped) if e.get("event") == "resume"]
    assert resumes and resumes[-1]["step"] == 2, resumes
    want, got = losses(tmp_path / "straight"), losses(stopped)
    assert sorted(want) == sorted(got) == [1, 2, 3, 4]
    assert [got[s] for s in (3, 4)] == [want[s] for s in (3, 4)], (got, want)
