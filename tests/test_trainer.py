"""The trainer on tiny-bert and a SciFact subset: real `ance train` / `ance mine` / torchrun processes.

What a run leaves behind (step events, checkpoints that are plain HF model dirs
with trainer state and a manifest, the last K kept, the resolved config), the
static-negatives path from `ance mine`, the BM25 warm-up table, the GIST guide,
two ranks under torchrun, and the small contracts of the loop (one token cache
for trainer and inferencer under MaxP, autocast on the plain path, replayed
refreshes).
"""

from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ance.run.config import config_hash, load_config, load_run_config
from ance.run.errors import DataError
from ance.run.telemetry import read_metrics
from ance.trainer.batches import sample_negatives
from ance.run.rundir import MANIFEST, TRAINER_STATE as STATE
from ance.trainer.checkpoint import list_checkpoints, load_trainer_state, read_manifest
from ance.trainer.feed import NegativesTable, fill_bm25, fill_static
from helpers_proc import finish, proc_env

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "tiny-cpu.yaml"
SCIFACT = ROOT.parent / "shared" / "data" / "scifact"
pytestmark = pytest.mark.skipif(not (SCIFACT / "corpus.jsonl").is_file(), reason=f"no SciFact at {SCIFACT}")

DATA = [f"data.path={SCIFACT}", "data.max_docs=300", "data.max_queries=40"]
SMALL = [*DATA, "model.passage_max_length=64", "train.batch_size=4", "train.chunk_size=2", "train.device=cpu",
         "train.log_every=1"]
STEP_KEYS = {"step", "loss", "lr", "grad_norm", "grad_norm_last", "examples_per_s", "negatives_version", "gap",
             "wait_s"}


def start(argv: list, log: Path) -> subprocess.Popen:
    return subprocess.Popen([str(a) for a in argv], cwd=ROOT, env=proc_env(), stdout=log.open("wb"),
                            stderr=subprocess.STDOUT)


def ance(*argv) -> list:
    return [sys.executable, "-m", "ance.cli", *argv]


def steps(run_dir: Path) -> list[dict]:
    return [ev for ev in read_metrics(run_dir) if ev["event"] == "step"]


def dataset():
    from ance.data.dataset import load_for_config

    cfg = load_config(CONFIG, DATA)
    data = load_for_config(cfg)
    return data, data.split(cfg.data.train_split)


# --------------------------------------------------------------------------- fixtures: real processes


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("trainer")


@pytest.fixture(scope="module")
def mined(work) -> Path:
    """`ance mine` with tiny-bert on the run's subset (train split, eval split's positives kept)."""
    out = work / "mined.tsv"
    log = work / "mine.log"
    proc = start(ance("mine", "--model", "tiny-bert", "--data", SCIFACT, "--split", "train", "--eval-split", "dev",
                      "--max-docs", 300, "--max-queries", 40, "--max-length", 64, "--query-max-length", 32,
                      "--depth", 50, "--rank-window", 0, 50, "--n", 10, "--device", "cpu", "--quiet",
                      "--cache-dir", work / "cache", "--out", out), log)
    finish(proc, log)
    return out


@pytest.fixture(scope="module")
def guide(work) -> Path:
    """tiny-bert's model directory copied to a path of our own, as a frozen GIST guide."""
    import shutil

    from ance.model.biencoder import resolve_model

    path = work / "guide"
    shutil.copytree(resolve_model("tiny-bert"), path)
    return path


@pytest.fixture(scope="module")
def runs(request, work, guide) -> dict[str, Path]:
    """`ance train` runs, overlapped (one thread each): GIST, and static negatives from `ance mine`."""
    static, gist = work / "static", work / "gist"
    # the plain path (no GradCache) with bf16 autocast, guided by a frozen model; runs while `ance mine` does
    procs = {"gist": start(ance("train", CONFIG, f"run_dir={gist}", *SMALL, "train.max_steps=2",
                                "train.chunk_size=null", "train.precision=bf16", f"train.gist_guide={guide}",
                                "train.gist_margin=0.1", "train.sample_by=pair"), work / "gist.log")}
    try:
        mined = request.getfixturevalue("mined")
        procs["static"] = start(ance("train", CONFIG, f"run_dir={static}", *SMALL, "train.max_steps=5",
                                     "train.checkpoint_every=2", "train.keep_checkpoints=2",
                                     "negatives.source=static", "negatives.n_per_query=2",
                                     f"negatives.static_file={mined}"), work / "static.log")
        for name, proc in procs.items():
            finish(proc, work / f"{name}.log")
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return {"static": static, "gist": gist}


# --------------------------------------------------------------------------- a run's outputs


def test_step_events_carry_every_field(runs):
    events = steps(runs["static"])
    assert [ev["step"] for ev in events] == [1, 2, 3, 4, 5]
    for ev in events:
        assert STEP_KEYS <= ev.keys(), STEP_KEYS - ev.keys()
        assert math.isfinite(ev["loss"]) and ev["loss"] > 0
        assert ev["lr"] > 0 and ev["grad_norm"] > 0 and ev["grad_norm_last"] > 0 and ev["examples_per_s"] > 0
        assert ev["negatives_version"] == 0 and ev["gap"] == ev["step"]  # static negatives are version 0
        assert ev["wait_s"] == 0
    assert events[0]["lr"] != events[-1]["lr"]  # the schedule moves


def test_checkpoints_are_hf_dirs_with_state_and_manifest_and_only_last_k_kept(runs):
    from transformers import AutoModel

    run = runs["static"]
    logged = [ev for ev in read_metrics(run) if ev["event"] == "checkpoint"]
    assert [ev["step"] for ev in logged] == [2, 4, 5]  # every 2 steps, and the last (committed before the end)
    assert all(0 <= ev["blocking_s"] <= ev["write_s"] for ev in logged)  # the trainer waits for a part only
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "best.json", "final.json", "step-000004", "step-000005"]  # + the aliases (eval at steps 0 and 5)
    assert [s for s, _ in list_checkpoints(run)] == [4, 5]

    cfg = load_run_config(run)
    for step, path in list_checkpoints(run):
        manifest = read_manifest(path)
        assert manifest["step"] == step and manifest["config_hash"] == config_hash(cfg)
        assert abs(manifest["time"] - time.time()) < 3600
        assert (path / MANIFEST).is_file() and (path / STATE).is_file()
        model = AutoModel.from_pretrained(str(path))
        assert model.config.hidden_size == 64
        state = load_trainer_state(path)
        assert state["step"] == step
        assert {"optimizer", "scheduler", "rng", "sampler", "pos_rng", "neg_rng", "table"} <= state.keys()
        assert (state["table"]["neg"] >= 0).any()  # the static negatives are part of the state
    # the saved weights are the trained ones, not the starting model
    from ance.model.biencoder import resolve_model

    start = AutoModel.from_pretrained(resolve_model("tiny-bert"))
    last = AutoModel.from_pretrained(str(list_checkpoints(run)[-1][1]))
    assert not torch.equal(start.embeddings.word_embeddings.weight, last.embeddings.word_embeddings.weight)


def test_pair_sampling_run_saves_its_sampler(runs):
    """train.sample_by=pair (the GIST run): the checkpoint's sampler walks (query, positive) pairs."""
    state = load_trainer_state(list_checkpoints(runs["gist"])[-1][1])
    assert state["sampler"]["by"] == "pair"
    assert state["sampler"]["offset"] == 2 * 4


def test_resume_with_the_other_sampling_says_so(runs, tmp_path):
    """A run sampled by query resumed with train.sample_by=pair (a fixed key): one line naming the key, exit 2;
    with --force, one line naming the checkpoint whose sampler cannot go on that way."""
    import shutil

    run = tmp_path / "static"
    shutil.copytree(runs["static"], run)
    res = subprocess.run(ance("train", "--resume", run, "train.sample_by=pair", "train.max_steps=6"), cwd=ROOT,
                         env=proc_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert "train.sample_by cannot change on resume" in last and "--force" in last, last
    res = subprocess.run(ance("train", "--resume", run, "train.sample_by=pair", "train.max_steps=6", "--force"),
                         cwd=ROOT, env=proc_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert "step-" in last and "train.sample_by=query" in last and "Traceback" not in res.stderr


def test_resolved_config_is_saved(runs):
    run = runs["static"]
    saved = load_run_config(run)
    assert saved.run_dir == str(run)
    expected = load_config(CONFIG, [f"run_dir={run}", *SMALL, "train.max_steps=5", "train.checkpoint_every=2",
                                    "train.keep_checkpoints=2", "negatives.source=static",
                                    "negatives.n_per_query=2",
                                    f"negatives.static_file={saved.negatives.static_file}"])
    assert saved.to_dict() == expected.to_dict()
    assert saved.train.max_steps == 5 and saved.negatives.source == "static"


def test_gist_guide_run_completes(runs):
    events = steps(runs["gist"])
    assert [ev["step"] for ev in events] == [1, 2]
    assert all(math.isfinite(ev["loss"]) for ev in events)
    assert [s for s, _ in list_checkpoints(runs["gist"])] == [2]


# --------------------------------------------------------------------------- negatives


def test_mined_negatives_fill_the_table_without_positives(mined):
    data, split = dataset()
    table = NegativesTable(len(split), keep=10)
    covered = fill_static(table, str(mined), split.ids, data.corpus.ids, fingerprint=data.fingerprint)
    assert covered == len(split)
    assert (table.version == 0).all()
    assert ((table.neg >= 0).sum(axis=1) > 0).all()
    for q, pos in enumerate(split.positives):
        assert not np.isin(table.neg[q], pos).any(), q

    rng = np.random.default_rng(0)
    q_idx = np.arange(len(split))
    for _ in range(5):
        drawn = sample_negatives(table.neg, q_idx, split.positives, 3, len(data.corpus), rng)
        assert drawn.shape == (len(split), 3)
        for q, row in zip(q_idx, drawn):
            assert len(set(row.tolist())) == 3 and set(row.tolist()) <= set(table.neg[q].tolist())
            assert not np.isin(row, split.positives[q]).any()


def test_sampling_never_draws_a_positive_even_when_the_table_lists_it():
    positives = [np.array([0, 1]), np.array([5])]
    table = np.array([[0, 1, 2, -1], [5, 6, 7, 8]], dtype=np.int32)  # positives listed by a foreign file
    rng = np.random.default_rng(3)
    for _ in range(50):
        out = sample_negatives(table, np.array([0, 1]), positives, 2, 10, rng)
        assert 2 in out[0] and not np.isin(out[0], [0, 1]).any()  # 2 is the only listed negative; 1 more random
        assert len(set(out[0].tolist())) == 2 and not np.isin(out[1], [5]).any()
    empty = np.full((1, 4), -1, dtype=np.int32)  # in-batch warm-up: random non-positives
    out = sample_negatives(empty, np.array([0]), positives[:1], 3, 5, rng)
    assert set(out[0].tolist()) == {2, 3, 4}
    with pytest.raises(ValueError, match="not its positives"):
        sample_negatives(empty, np.array([0]), positives[:1], 4, 5, rng)


def test_static_file_from_other_data_says_so(tmp_path):
    data, split = dataset()
    path = tmp_path / "other.tsv"
    path.write_text('# ance-negatives v1 {"version": 0, "data_fingerprint": "0000000000000000"}\n'
                    f"{split.ids[0]}\tnot-a-doc-here\n")
    with pytest.raises(DataError, match="mined from other data.*--eval-split"):
        fill_static(NegativesTable(len(split), 4), str(path), split.ids, data.corpus.ids,
                    fingerprint=data.fingerprint)


def test_bm25_warmup_fills_the_table_without_positives():
    data, split = dataset()
    table = NegativesTable(len(split), keep=8)
    fill_bm25(table, data.corpus.passages(), split.texts, split.positives, depth=50, rank_window=[0, 50],
              sampling="top", seed=13)
    assert (table.version == 0).all()
    filled = (table.neg >= 0).sum(axis=1)
    assert (filled > 0).mean() > 0.9, filled  # almost every query shares words with some document
    for q, pos in enumerate(split.positives):
        assert not np.isin(table.neg[q], pos).any(), q
    # "top": the best BM25-ranked documents that are not positives, in rank order
    from ance.data.bm25 import bm25_rank

    ranked = bm25_rank(data.corpus.passages(), split.texts, 50)
    for q in range(5):
        expected = [d for d in ranked[q] if d >= 0 and d not in set(split.positives[q].tolist())][:8]
        assert table.neg[q][:len(expected)].tolist() == expected


# --------------------------------------------------------------------------- torchrun


def test_torchrun_two_ranks_on_cpu(work, mined):
    run = work / "ddp"
    log = work / "ddp.log"
    proc = start([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                  "-m", "ance.cli", "train", CONFIG, f"run_dir={run}", *SMALL, "train.max_steps=3",
                  "train.checkpoint_every=3", "negatives.source=static", f"negatives.static_file={mined}"], log)
    finish(proc, log, timeout=240)
    events = read_metrics(run)
    assert [ev["step"] for ev in events if ev["event"] == "step"] == [1, 2, 3]  # rank 0 alone logs
    assert [ev["step"] for ev in events if ev["event"] == "checkpoint"] == [3]
    assert [s for s, _ in list_checkpoints(run)] == [3]
    assert load_trainer_state(run / "checkpoints" / "step-000003")["step"] == 3
    assert all(math.isfinite(ev["loss"]) for ev in events if ev["event"] == "step")


# --------------------------------------------------------------------------- small contracts of the loop


def test_plain_path_gets_autocast_and_metrics_get_prometheus_addr(tmp_path, monkeypatch):
    import ance.learn.gradcache
    from ance.trainer.loop import Trainer

    seen = {}
    real = ance.learn.gradcache.plain_step

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(ance.learn.gradcache, "plain_step", spy)
    cfg = load_config(CONFIG, [f"run_dir={tmp_path / 'run'}", *SMALL, "train.chunk_size=null",
                               "train.precision=bf16", "train.max_steps=1", "telemetry.prometheus_port=0",
                               "telemetry.prometheus_addr=localhost"])
    trainer = Trainer(cfg)
    try:
        assert trainer.metrics.prometheus_addr == "localhost" and trainer.metrics.prometheus_port
        record = trainer.train_step()
    finally:
        trainer.metrics.close()
    assert seen["autocast_dtype"] == torch.bfloat16 and seen["device_type"] == "cpu" and "scaler" in seen
    assert math.isfinite(record["loss"])


def test_maxp_token_cache_is_the_same_from_trainer_and_inferencer(tmp_path):
    """One token budget (special tokens counted from the tokenizer): under MaxP both roles build the same cache."""
    import dataclasses

    from ance.inferencer.worker import Worker
    from ance.trainer.loop import Trainer

    cfg = load_config(CONFIG, [f"run_dir={tmp_path / 'trainer'}", *SMALL, "model.long_doc=maxp",
                               "model.maxp_windows=3", "train.max_steps=1", "negatives.source=inbatch",
                               "data.shared_token_cache=false"])
    trainer = Trainer(cfg)
    trainer.metrics.close()
    worker = Worker(dataclasses.replace(cfg, run_dir=str(tmp_path / "inferencer")), device="cpu", name="w",
                    dataset=trainer.data)
    ours, theirs = trainer.passages, worker._token_cache(trainer.tokenizer)
    assert ours.built and theirs.built and ours.path.parent != theirs.path.parent  # each built its own
    assert ours.key == theirs.key and len(ours) == len(theirs) == len(trainer.data.corpus)
    for i in range(len(ours)):
        assert np.array_equal(ours[i], theirs[i]), i
    assert max(len(ours[i]) for i in range(len(ours))) > cfg.model.passage_max_length  # MaxP: several windows


class _Recorder:
    def __init__(self):
        self.events = []

    def log(self, event, **fields):
        self.events.append((event, fields))


def test_replayed_refresh_is_not_logged_twice():
    from ance.wire.protocol import pack_message
    from ance.trainer.link import TrainerLink

    cfg = load_config(CONFIG, [])
    metrics = _Recorder()
    client = TrainerLink(cfg, NegativesTable(3, 2), metrics, ["a", "b", "c"], "f" * 16)
    client._tags = ("c" * 32, "b" * 32)  # an authenticated session: the broker's frames carry its tag
    client._handle(pack_message("version_done", session="b" * 32, version=5, n_shards=2, stats={"replayed": False}))
    client._handle(pack_message("version_done", session="b" * 32, version=5, n_shards=2,
                                stats={"replayed": True}))  # broker restarted
    assert [(e, f["version"]) for e, f in metrics.events] == [("refresh", 5)]
    # a replay of a version this trainer never completed is still its first report (marked replayed)
    client._handle(pack_message("version_done", session="b" * 32, version=7, n_shards=1, stats={"replayed": True}))
    assert [(e, f["version"], f.get("replayed")) for e, f in metrics.events][-1] == ("refresh", 7, True)
    assert client.latest_complete == 7
    client._handle(pack_message("version_done", version=5, n_shards=2, stats={"replayed": True}))  # stale replay
    assert len(metrics.events) == 2 and client.latest_complete == 7


def test_a_later_run_links_the_tokenized_corpus_from_the_shared_cache(tmp_path, monkeypatch):
    """data.shared_token_cache: the first run's trainer tokenizes and publishes into $ANCE_CACHE_DIR; a second
    run's inferencer (another run dir) links it (same inode, nothing tokenized); off, it builds its own."""
    import dataclasses

    from ance.inferencer.worker import Worker
    from ance.trainer.loop import Trainer

    monkeypatch.setenv("ANCE_CACHE_DIR", str(tmp_path / "user-cache"))
    cfg = load_config(CONFIG, [f"run_dir={tmp_path / 'run1'}", *SMALL, "train.max_steps=1",
                               "negatives.source=inbatch"])
    trainer = Trainer(cfg)
    trainer.metrics.close()
    first = trainer.passages
    shared = tmp_path / "user-cache" / first.path.name
    assert first.built and (shared / "meta.json").is_file()
    worker = Worker(dataclasses.replace(cfg, run_dir=str(tmp_path / "run2")), device="cpu", name="w",
                    dataset=trainer.data)
    second = worker._token_cache(trainer.tokenizer)
    assert not second.built and second.path.parent == tmp_path / "run2" / "cache"
    assert (second.path / "ids.int32").stat().st_ino == (first.path / "ids.int32").stat().st_ino  # a hard link
    assert all(np.array_equal(first[i], second[i]) for i in range(len(first)))
    off = Worker(dataclasses.replace(cfg, run_dir=str(tmp_path / "run3"),
                                     data=dataclasses.replace(cfg.data, shared_token_cache=False)),
                 device="cpu", name="w3", dataset=trainer.data)
    assert off._token_cache(trainer.tokenizer).built
