"""Every bad input of issue 15 gets one line naming the file, line or key and the fix, exit code 2,
no traceback. The CLI runs in-process (``ance.cli.main``); each row is one bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from ance.cli import main
from ance.run.errors import TrainingError
from ance.trainer.checkpoint import list_checkpoints
from ance.trainer.optim import check_finite, check_params_finite

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "tiny-cpu.yaml")

DOCS = [{"_id": f"d{i}", "title": "", "text": f"document {i} about topic {i % 3} and more words {i * 7}"}
        for i in range(12)]
QUERIES = [{"_id": f"q{i}", "text": f"what about topic {i % 3} number {i}"} for i in range(8)]


def mini_beir(root: Path, docs=DOCS) -> Path:
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in QUERIES), encoding="utf-8")
    (root / "qrels" / "train.tsv").write_text("".join(f"q{i}\td{i}\t1\n" for i in range(6)))
    (root / "qrels" / "dev.tsv").write_text("q6\td6\t1\nq7\td7\t1\n")
    return root


def small(tmp: Path, data: Path | None = None) -> list[str]:
    return [f"run_dir={tmp / 'run'}", f"data.path={data or mini_beir(tmp / 'data')}", "data.max_docs=null",
            "data.max_queries=null", "train.max_steps=2", "train.batch_size=4", "train.chunk_size=null",
            "train.checkpoint_every=1", "train.device=cpu", "model.passage_max_length=32"]


def run_cli(capsys, argv: list[str]) -> tuple[int, str]:
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return rc, err


def assert_user_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, err
    assert "Traceback" not in err, err
    line = next(ln for ln in err.splitlines() if ": error: " in ln)
    for needle in needles:
        assert needle in line, (needle, line)


# ---------------------------------------------------------------- config values and relations

CONFIG_CASES = [
    (["train.lr=.inf"], "train.lr: must be a finite number > 0"),
    (["train.lr=-1"], "train.lr: must be a finite number > 0, got -1"),
    (["model.temperature=.nan"], "model.temperature: must be a finite number > 0, got nan"),
    (["train.device=tpu"], "train.device='tpu': expected auto, cpu, cuda or cuda:N"),
    (["inferencer.device=gpu0"], "inferencer.device='gpu0'"),
    (["model.passage_max_length=100000"], "model.passage_max_length: must be in 4..8192"),
    (["data=0"], "data: expected a mapping, got 0"),
    (["broker.heartbeat_s=-1"], "broker.heartbeat_s: must be a finite number > 0"),
    (["broker.worker_timeout_s=0"], "broker.worker_timeout_s: must be a finite number > 0"),
    (["broker.worker_timeout_s=1", "broker.heartbeat_s=1"], "at least twice broker.heartbeat_s"),
    (["telemetry.prometheus_port=70000"], "telemetry.prometheus_port=70000: must be in 0..65535"),
    (["broker.address=garbage"], "broker.address='garbage': expected tcp://HOST:PORT"),
    (["broker.bind=tcp://0.0.0.0:99999"], "broker.bind=tcp://0.0.0.0:99999: port 99999 is not in 1..65535"),
    (["broker.max_frame_bytes=10"], "broker.max_frame_bytes=10: must be in"),
    (["negatives.source=async", "negatives.max_gap=5", "train.checkpoint_every=10"],
     "negatives.max_gap=5 is smaller than train.checkpoint_every=10"),
    (["negatives.wait_timeout_s=.inf"], "negatives.wait_timeout_s: must be a finite number > 0"),
    (["seed=-1"], "seed: must be in [0, 2**63)"),
    (["seed=99999999999999999999999"], "seed: must be in [0, 2**63)"),  # hostile 2026-12-03: a traceback
    (["launch.restart_backoff_s=[]"], "launch.restart_backoff_s: give at least one delay"),
    (["data.max_docs=0"], "data.max_docs: must be > 0"),
]


@pytest.mark.parametrize("overrides, message", CONFIG_CASES, ids=[" ".join(c[0]) for c in CONFIG_CASES])
def test_bad_config_values(capsys, tmp_path, overrides, message):
    rc, err = run_cli(capsys, ["train", CONFIG, f"run_dir={tmp_path / 'run'}", *overrides])
    assert_user_error(rc, err, message)
    assert not (tmp_path / "run").exists()  # refused before anything is written


# ---------------------------------------------------------------- run directories


def test_run_dir_that_is_a_file(capsys, tmp_path):
    (tmp_path / "f").write_text("x")
    rc, err = run_cli(capsys, ["train", CONFIG, f"run_dir={tmp_path / 'f'}"])
    assert_user_error(rc, err, f"run_dir={tmp_path / 'f'}: exists and is not a directory")


def test_run_dir_that_cannot_be_created(capsys):
    rc, err = run_cli(capsys, ["train", CONFIG, "run_dir=/proc/ance-h15/run"])
    assert_user_error(rc, err, "run_dir=/proc/ance-h15/run: cannot create it", "writable run_dir")


@pytest.mark.parametrize("leftover", ["checkpoints/step-000002", "negatives/step-000002.tsv"])
def test_a_new_run_never_mixes_with_an_earlier_one(capsys, tmp_path, leftover):
    """The run-directory mixing of issue 15: a fresh run appended to the old metrics and served its negatives."""
    old = tmp_path / "run" / leftover
    old.parent.mkdir(parents=True)
    (old.mkdir() if "checkpoints" in leftover else old.write_text("x"))
    rc, err = run_cli(capsys, ["train", CONFIG, *small(tmp_path)])
    assert_user_error(rc, err, "holds an earlier run", "--resume", "--overwrite")
    assert old.exists()


def test_launch_refuses_an_earlier_runs_metrics(capsys, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"event": "step", "step": 1}\n')
    rc, err = run_cli(capsys, ["launch", CONFIG, f"run_dir={run}", "--no-progress"])
    assert_user_error(rc, err, "holds an earlier run (metrics.jsonl)")
    assert (run / "metrics.jsonl").read_text().count("\n") == 1  # nothing appended


def test_overwrite_moves_the_earlier_run_aside(capsys, tmp_path):
    ckpt = tmp_path / "run" / "checkpoints" / "step-000002"
    ckpt.mkdir(parents=True)
    rc, err = run_cli(capsys, ["train", CONFIG, *small(tmp_path), "train.max_steps=1", "--overwrite"])
    assert rc == 0, err
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(aside) == 1 and (aside[0] / "checkpoints" / "step-000002").is_dir()
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [1]


# ---------------------------------------------------------------- data files


def test_lone_surrogate_in_the_corpus(capsys, tmp_path):
    docs = DOCS[:3] + [{"_id": "bad", "text": "x \ud800 y"}] + DOCS[3:]
    data = mini_beir(tmp_path / "data", docs)
    rc, err = run_cli(capsys, ["train", CONFIG, *small(tmp_path, data)])
    assert_user_error(rc, err, f"{data / 'corpus.jsonl'}:4:", "lone surrogate")


def test_static_negatives_made_for_other_data(capsys, tmp_path):
    neg = tmp_path / "neg.tsv"
    neg.write_text('# ance-negatives v1 {"version": 0, "data_fingerprint": "0000000000000000"}\nq0\td3,d4\n')
    rc, err = run_cli(capsys, ["train", CONFIG, *small(tmp_path), "negatives.source=static",
                               f"negatives.static_file={neg}"])
    assert_user_error(rc, err, f"{neg}:1: mined from other data", "ance mine")


def test_non_finite_loss_stops_training_without_a_bad_checkpoint(capsys, tmp_path):
    rc, err = run_cli(capsys, ["train", CONFIG, *small(tmp_path), "train.lr=1e30",
                               "train.max_steps=6", "train.warmup_ratio=0"])
    assert_user_error(rc, err, "step ", "non-finite" if "parameter" in err else "is nan", "--resume")
    from safetensors.torch import load_file

    for _, path in list_checkpoints(tmp_path / "run"):
        assert all(torch.isfinite(t).all() for t in load_file(str(path / "model.safetensors")).values())


def test_check_finite_names_the_step_and_the_value():
    with pytest.raises(TrainingError, match=r"step 7: loss is nan.*ance train --resume RUN_DIR train\.lr=1\.0e-02"):
        check_finite(7, math.nan, 1.0, 0.1, scaled=False)
    with pytest.raises(TrainingError, match="step 3: gradient norm is inf"):
        check_finite(3, 1.0, math.inf, 0.1, scaled=False)
    check_finite(3, 1.0, math.inf, 0.1, scaled=True)  # fp16: the GradScaler skips that step itself
    model = torch.nn.Linear(2, 2)
    check_params_finite(model, 1)
    with torch.no_grad():
        model.bias[0] = math.inf
    with pytest.raises(TrainingError, match="step 4: parameter bias holds non-finite values"):
        check_params_finite(model, 4)


# ---------------------------------------------------------------- eval and retrieve


def eval_files(tmp_path: Path) -> tuple[Path, Path]:
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("q1\td1\t1\nq2\td2\t1\n")
    run = tmp_path / "run.trec"
    run.write_text("q1 Q0 d1 1 2.0 t\nq2 Q0 d3 1 1.0 t\n")
    return run, qrels


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_bytes(b"q1 Q0 d1 1 2.0 t\n\xff\xfe junk\n"), ":2: not UTF-8 text"),
    (lambda p: None, ": no such file; give the path of the TREC run"),
    (lambda p: p.mkdir(), ": is a folder; give the TREC run"),
    (lambda p: p.write_text("x1 Q0 d1 1 2.0 t\n"), "none of its 1 query ids"),
], ids=["not-utf8", "missing", "folder", "no-matching-ids"])
def test_eval_bad_run_file(capsys, tmp_path, make, message):
    _, qrels = eval_files(tmp_path)
    bad = tmp_path / "bad.trec"
    make(bad)
    rc, err = run_cli(capsys, ["eval", "--run", bad, "--qrels", qrels])
    assert_user_error(rc, err, str(bad), message)


def test_eval_missing_qrels(capsys, tmp_path):
    run, _ = eval_files(tmp_path)
    rc, err = run_cli(capsys, ["eval", "--run", run, "--qrels", tmp_path / "nope.tsv"])
    assert_user_error(rc, err, "nope.tsv: no such file")


def test_retrieve_out_into_a_missing_folder_fails_before_encoding(capsys, tmp_path):
    out = tmp_path / "missing" / "run.trec"
    rc, err = run_cli(capsys, ["retrieve", "--model", "tiny-bert", "--data", tmp_path / "no-data", "--split", "dev",
                               "--out", out])
    # the data folder does not exist either: the output check comes first, before loading anything
    assert_user_error(rc, err, f"--out {out}: folder {out.parent} does not exist", "mkdir -p")


def test_leftovers_of_an_interrupted_first_checkpoint_do_not_block_a_restart(tmp_path):
    """`--auto-resume` after a kill -9 during the very first checkpoint: nothing complete, only a temp dir."""
    from ance.run.rundir import claim_run_dir, previous_run

    tmp = tmp_path / "run" / "checkpoints" / ".tmp-step-000000-123"
    tmp.mkdir(parents=True)
    assert previous_run(tmp_path / "run") == []
    assert claim_run_dir(tmp_path / "run", resume=False) is None
