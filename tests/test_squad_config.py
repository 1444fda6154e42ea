"""The SQuAD configs: both load, and the CPU one trains (two steps, eight static negatives a
query through GradCache, four queries a step) on its subset with all-MiniLM-L6-v2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ance.run.config import load_config
from ance.negatives.files import write_negatives
from ance.run.telemetry import read_metrics
from helpers_proc import finish, proc_env

ROOT = Path(__file__).resolve().parents[1]
SQUAD = ROOT.parent / "shared" / "data" / "squad"
CPU, GPU = ROOT / "configs" / "squad-minilm-cpu.yaml", ROOT / "configs" / "squad-minilm-gpu.yaml"


def test_both_configs_load():
    gpu = load_config(GPU)
    assert (gpu.train.max_steps, gpu.train.batch_size, gpu.data.path) == (4000, 64, "../shared/data/squad")
    cpu = load_config(CPU)
    assert cpu.data.max_queries and cpu.data.max_docs and cpu.data.path == gpu.data.path


@pytest.mark.skipif(not (SQUAD / "corpus.jsonl").is_file(), reason=f"no SQuAD at {SQUAD}")
def test_cpu_config_trains_with_eight_static_negatives(tmp_path):
    from ance.data.dataset import load_for_config

    over = [f"data.path={SQUAD}", f"run_dir={tmp_path / 'run'}", "train.max_steps=2", "train.batch_size=4", "train.chunk_size=4",
            "train.device=cpu", "model.passage_max_length=32", "negatives.source=static",
            f"negatives.static_file={tmp_path / 'static.tsv'}", "negatives.n_per_query=8", "eval.every=0"]  # no eval: the 2,000-doc encodes took most of 150 s
    cfg = load_config(CPU, over)
    data = load_for_config(cfg)
    split = data.split(cfg.data.train_split)
    assert len(split) == 300 and len(data.corpus.ids) == 2000
    rng = np.random.default_rng(0)
    neg = np.stack([rng.choice(np.setdiff1d(np.arange(2000), p), 10, replace=False) for p in split.positives])
    write_negatives(tmp_path / "static.tsv", split.ids, neg.astype(np.int32), data.corpus.ids,
                    {"version": 0, "data_fingerprint": data.fingerprint})
    log = tmp_path / "train.log"
    proc = subprocess.Popen([sys.executable, "-m", "ance.cli", "train", str(CPU), *over], cwd=ROOT,
                            env=proc_env(), stdout=log.open("wb"), stderr=subprocess.STDOUT)
    finish(proc, log, timeout=300)
    steps = [e for e in read_metrics(tmp_path / "run") if e["event"] == "step"]
    assert [e["step"] for e in steps] == [1, 2]
    assert all(np.isfinite(e["loss"]) and e["loss"] > 0 for e in steps)
