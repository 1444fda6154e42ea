"""Issue 24 end to end on one real `ance train` run (tiny-bert, SciFact subset, in-batch negatives):
the trainer evaluates (eval.every), the launcher's summary says before -> after and names the best
checkpoint, `ance retrieve` + `ance eval` reproduce the logged figure to 1e-4 (one subset rule),
checkpoints honour the umask, and `ance export` hands over a model sentence-transformers loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ance.run.telemetry import read_metrics
from helpers_proc import finish, proc_env

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "tiny-cpu.yaml"
SCIFACT = ROOT.parent / "shared" / "data" / "scifact"
pytestmark = pytest.mark.skipif(not (SCIFACT / "corpus.jsonl").is_file(), reason=f"no SciFact at {SCIFACT}")

SUBSET = ["--max-docs", "300", "--max-queries", "30"]
LENGTHS = ["--max-length", "64", "--query-max-length", "32"]


def ance(*argv) -> list[str]:
    return [sys.executable, "-m", "ance.cli", *map(str, argv)]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("results")
    run = work / "run"
    log = work / "train.log"
    argv = ance("train", CONFIG, f"run_dir={run}", f"data.path={SCIFACT}", "data.max_docs=300",
                "data.max_queries=30", "model.passage_max_length=64", "model.query_max_length=32",
                "train.batch_size=4", "train.chunk_size=2", "train.device=cpu", "train.max_steps=4",
                "train.checkpoint_every=2", "train.keep_checkpoints=1", "eval.every=2", "train.lr=5e-4")
    proc = subprocess.Popen(argv, cwd=ROOT, env=proc_env(), stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            preexec_fn=lambda: os.umask(0o022))
    finish(proc, log, timeout=240)
    return run


def evals(run: Path) -> list[dict]:
    return [ev for ev in read_metrics(run) if ev["event"] == "eval"]


def test_inbatch_run_is_evaluated_and_keeps_best_and_final_aliases(run_dir):
    got = evals(run_dir)
    assert [e["step"] for e in got] == [0, 2, 4]
    assert all(0 <= e["eval_ndcg@10"] <= 1 and e["n_queries"] == 30 for e in got)
    best = json.loads((run_dir / "checkpoints" / "best.json").read_text())
    want = max((e for e in got if e["step"]), key=lambda e: e["eval_ndcg@10"])
    assert best["step"] == want["step"] and best["value"] == pytest.approx(want["eval_ndcg@10"])
    assert (run_dir / "checkpoints" / best["checkpoint"] / "manifest.json").is_file()  # spared by pruning
    assert json.loads((run_dir / "checkpoints" / "final.json").read_text())["checkpoint"] == "step-000004"
    assert not [p for p in run_dir.rglob("*") if p.is_symlink()]


def test_launcher_summary_says_before_after_and_best(run_dir):
    from ance.launch.progress import Progress

    out = Progress(run_dir, 4, 0, out=open(os.devnull, "w")).finish()
    got = evals(run_dir)
    assert out["before"]["step"] == 0 and out["before"]["ndcg@10"] == got[0]["eval_ndcg@10"]
    assert out["after"]["step"] == 4 and out["after"]["ndcg@10"] == got[-1]["eval_ndcg@10"]
    assert out["best"]["checkpoint"].endswith(json.loads((run_dir / "checkpoints/best.json").read_text())["checkpoint"])
    assert out["final"]["checkpoint"].endswith("step-000004")


def test_checkpoint_files_honour_the_umask(run_dir):
    ckpt = run_dir / "checkpoints" / "step-000004"
    modes = {p.name: p.stat().st_mode & 0o777 for p in ckpt.rglob("*") if p.is_file()}
    assert modes["model.safetensors"] == 0o644 and modes["trainer_state.safetensors"] == 0o644, modes
    assert set(modes.values()) == {0o644}


def test_retrieve_and_eval_reproduce_the_logged_figure(run_dir, tmp_path, capsys):
    """The launcher's (trainer's) nDCG@10 of the final checkpoint, by hand, two ways: the run's own
    settings (--run-dir), and the same flags a user would type (--max-docs keeps train + dev positives)."""
    from ance.cli import main

    logged = evals(run_dir)[-1]
    qrels = SCIFACT / "qrels" / "dev.tsv"
    by_run = tmp_path / "by_run.trec"
    by_flags = tmp_path / "by_flags.trec"
    for argv in (["--run-dir", run_dir, "--model", run_dir / "checkpoints" / "final", "--out", by_run],
                 ["--model", run_dir / "checkpoints" / "step-000004", "--data", SCIFACT, "--split", "dev", *SUBSET,
                  *LENGTHS, "--out", by_flags]):
        assert main(["retrieve", *map(str, argv), "--device", "cpu", "--quiet", "--cache-dir",
                     str(tmp_path / "cache")]) == 0
    for trec in (by_run, by_flags):
        capsys.readouterr()
        assert main(["eval", "--run", str(trec), "--qrels", str(qrels), "--missing", "skip"]) == 0
        out, err = capsys.readouterr()
        got = json.loads(out)
        assert got["n_queries"] == 30 and "have no ranking" in err
        assert abs(got["ndcg@10"] - logged["eval_ndcg@10"]) <= 1e-4
        assert abs(got["recall@100"] - logged["eval_recall@100"]) <= 1e-4


def test_export_hands_over_a_plain_model(run_dir, tmp_path):
    from ance.cli import main

    out = tmp_path / "exported"
    old = os.umask(0o022)
    try:
        assert main(["export", str(run_dir / "checkpoints" / "best"), str(out)]) == 0
    finally:
        os.umask(old)
    best = run_dir / "checkpoints" / json.loads((run_dir / "checkpoints/best.json").read_text())["checkpoint"]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert not [p for p in files if p.name.startswith("trainer_state") or p.name == "manifest.json"]
    assert {p.stat().st_mode & 0o777 for p in files} == {0o644}
    model_bytes = sum(p.stat().st_size for p in best.rglob("*") if p.is_file() and not p.name.startswith("trainer_"))
    assert sum(p.stat().st_size for p in files) <= model_bytes + len((out / "README.md").read_bytes())
    card = (out / "README.md").read_text()
    assert "base_model: tiny-bert" in card and "## Evaluation" in card and "(this model)" in card
    assert "ance export" in card
    assert main(["export", str(best), str(out)]) == 2  # never overwritten

    from ance.search.retrieve import load_encoder
    from ance.model.encode import encode_texts

    texts = ["what causes fever", "vitamin d and bone density in adults", "a protein that binds dna"]
    ours = encode_texts(load_encoder(str(best)), texts, 32, kind="query", batch_size=8, device="cpu",
                        precision="fp32", progress=False)
    st = pytest.importorskip("sentence_transformers")
    theirs = st.SentenceTransformer(str(out), device="cpu").encode(texts, convert_to_numpy=True)
    assert np.abs(np.asarray(ours, dtype=np.float32) - theirs).max() <= 1e-4
    from transformers import AutoModel

    assert AutoModel.from_pretrained(str(out)).config.hidden_size == theirs.shape[1]
