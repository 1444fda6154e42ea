"""`ance launch` (async: broker, trainer, two CPU inferencers, tiny-bert) from the formats of issue 23:
a Tevatron training file with its corpus, and a Hugging Face ``save_to_disk`` folder (a dataset dict
whose ``dev`` split is the evaluation split) without one. The file's own negatives are the warm-up
(version 0); with ``max_gap`` = ``checkpoint_every`` = 4, steps 5 to 8 can only run on a refreshed
version, so at least one is consumed. Without a corpus the run says once, in its log and in
``ance monitor``, that it mines only among the file's passages.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from ance.run.telemetry import read_metrics
from helpers_proc import finish, kill_mentioning, proc_env
from helpers_refresh import free_port

ROOT = Path(__file__).resolve().parents[1]
SCIFACT = ROOT.parent / "shared" / "data" / "scifact"
pytestmark = [pytest.mark.skipif(not (SCIFACT / "corpus.jsonl").is_file(), reason=f"no SciFact at {SCIFACT}"),
              pytest.mark.slow]

ASYNC = ["data.max_docs=null", "data.max_queries=null", "train.max_steps=8", "train.checkpoint_every=4",
         "train.batch_size=8", "train.chunk_size=8", "model.passage_max_length=48", "negatives.max_gap=4",
         "negatives.warmup=static", "negatives.depth=20", "negatives.rank_window=[0,20]", "negatives.keep=5",
         "negatives.final_refresh=false", "telemetry.tensorboard=false", "inferencer.batch_size=64"]


def make_example_data():
    spec = importlib.util.spec_from_file_location("make_example_data", ROOT / "scripts" / "make_example_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    import datasets

    out = tmp_path_factory.mktemp("launch-data")
    mk = make_example_data()
    subset = mk.subset(SCIFACT, 40, 3)
    mk.write_tevatron(out / "tevatron", subset)
    rows = mk.triplet_rows(subset)
    datasets.disable_progress_bars()
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:32]),
                          "dev": datasets.Dataset.from_list(rows[32:])}).save_to_disk(str(out / "hf"))
    return out


def launch(run_dir: Path, *overrides: str) -> list[dict]:
    log = run_dir.parent / f"{run_dir.name}.log"
    argv = [sys.executable, "-m", "ance.cli", "launch", str(ROOT / "configs" / "tiny-async-cpu.yaml"),
            f"run_dir={run_dir}", f"broker.address=tcp://127.0.0.1:{free_port()}", *ASYNC, *overrides,
            "--no-progress"]
    proc = subprocess.Popen(argv, cwd=ROOT, env=proc_env(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                                                         CUDA_VISIBLE_DEVICES=""),
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        finish(proc, log, timeout=240)
    finally:
        kill_mentioning(run_dir)
    events = read_metrics(run_dir)
    steps = [ev for ev in events if ev["event"] == "step"]
    assert [ev["step"] for ev in steps] == list(range(1, 9))
    assert steps[0]["negatives_version"] == 0  # the file's own negatives as warm-up
    assert max(ev["negatives_version"] for ev in steps) >= 4, "no refreshed version consumed"
    return events


def test_launch_from_a_tevatron_file_and_its_corpus(data, tmp_path):
    events = launch(tmp_path / "tev", f"data.path={data / 'tevatron' / 'train.jsonl'}",
                    f"data.corpus={data / 'tevatron' / 'corpus.jsonl'}", "data.eval_split=null")
    assert not [ev for ev in events if ev["event"] == "data_note"]  # a corpus was given: nothing to say


def test_launch_from_a_hugging_face_folder_without_corpus_says_so(data, tmp_path):
    run_dir = tmp_path / "hf"
    events = launch(run_dir, f"data.path={data / 'hf'}", "data.eval_split=dev")
    notes = [ev for ev in events if ev["event"] == "data_note"]
    assert len(notes) == 1 and "mines negatives only among them" in notes[0]["note"]
    assert any(ev["event"] == "refresh" and ev.get("eval_ndcg@10") is not None for ev in events)
    out = subprocess.run([sys.executable, "-m", "ance.cli", "monitor", str(run_dir), "--once"], cwd=ROOT,
                         env=proc_env(COLUMNS="200"), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "mines negatives only among them" in " ".join(out.stdout.split())
