"""The remaining traceback, hang and memory cases of the hostile report 2026-12-03 (issue 28): each bad
input gets one line naming the file, key or row, exit code 2, and nothing written before is lost.

Cases tested elsewhere: an over-large seed (test_hostile_inputs.py, ``seed=99999999999999999999999``);
a folder, a FIFO and /dev/zero as negatives.static_file (test_hostile_runs.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from ance.cli import main
from ance.run.errors import AnceError, DataError, DiskFullError
from ance.run.rundir import claim_run_dir

from test_hostile_inputs import CONFIG, ROOT, assert_user_error, mini_beir, run_cli, small

ASYNC_CONFIG = str(ROOT / "configs" / "tiny-async-cpu.yaml")


# ---------------------------------------------------------------- config values

def test_a_folder_that_is_not_a_model(capsys, tmp_path):
    rc, err = run_cli(capsys, ["train", CONFIG, *small(tmp_path), "model.name_or_path=/etc"])
    assert_user_error(rc, err, "model '/etc' could not be loaded")


BOMB = ("[&a [x,x,x,x,x,x,x,x,x], &b [*a,*a,*a,*a,*a,*a,*a,*a,*a], &c [*b,*b,*b,*b,*b,*b,*b,*b,*b], "
        "&d [*c,*c,*c,*c,*c,*c,*c,*c,*c], &e [*d,*d,*d,*d,*d,*d,*d,*d,*d], &f [*e,*e,*e,*e,*e,*e,*e,*e,*e], "
        "&g [*f,*f,*f,*f,*f,*f,*f,*f,*f], &h [*g,*g,*g,*g,*g,*g,*g,*g,*g], &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]]")


@pytest.mark.parametrize("where", ["file", "override", "recursive"])
def test_yaml_alias_bomb_is_refused_without_expanding_it(capsys, tmp_path, where):
    """Billion laughs (9**9 leaves) in a config value: its repr in the error took 50 s and all memory."""
    if where == "file":
        path = tmp_path / "bomb.yaml"
        path.write_text(f"train:\n  lora:\n    target_modules: {BOMB}\n")
        argv, name = [str(path)], str(path)
    elif where == "override":
        argv, name = [CONFIG, f"train.lora.target_modules={BOMB}"], "override train.lora.target_modules"
    else:
        path = tmp_path / "loop.yaml"
        path.write_text("train:\n  lora:\n    target_modules: &a [x, *a]\n")
        argv, name = [str(path)], str(path)
    rc, err = run_cli(capsys, ["train", *argv, f"run_dir={tmp_path / 'run'}"])
    assert_user_error(rc, err, name, "alias")
    assert len(err) < 2000 and not (tmp_path / "run").exists()


def test_a_wrong_value_is_shown_cut_short(capsys, tmp_path):
    rc, err = run_cli(capsys, ["train", CONFIG, f"run_dir={tmp_path / 'run'}", f"train.lr=[{'1,' * 5000}1]"])
    assert_user_error(rc, err, "train.lr: expected a number")
    assert len(err) < 1000


def test_async_launch_without_inferencers(capsys, tmp_path):
    """launch.inferencers=0 with async negatives: the trainer waited wait_timeout_s for nothing."""
    run = tmp_path / "run"
    rc, err = run_cli(capsys, ["launch", ASYNC_CONFIG, f"run_dir={run}", "launch.inferencers=0", "--no-progress"])
    assert_user_error(rc, err, "launch.inferencers=0 with negatives.source=async", "--only broker,trainer")
    assert not run.exists()
    rc, err = run_cli(capsys, ["launch", ASYNC_CONFIG, f"run_dir={run}", "--inferencers", "0", "--no-progress"])
    assert_user_error(rc, err, "--inferencers 0 with negatives.source=async")


def test_inferencers_0_is_fine_without_refreshes_or_elsewhere():
    from ance.commands.launch import check_pool
    from ance.run.config import load_config

    check_pool(load_config(None, ["negatives.source=static", "negatives.static_file=x"]), ("trainer",), 0, [])
    check_pool(load_config(ASYNC_CONFIG), ("broker", "trainer"), 0, [])   # inferencers run elsewhere
    check_pool(load_config(ASYNC_CONFIG), ("broker", "trainer", "inferencer"), 0, [1])  # one per GPU


# ---------------------------------------------------------------- data and negatives files

def test_static_negatives_with_an_endless_line(tmp_path):
    """A regular file of one endless line (/dev/zero copied): read in bounded pieces, refused at the bound."""
    from ance.negatives.files import MAX_LINE_CHARS
    from ance.trainer.feed import NegativesTable, fill_static

    path = tmp_path / "zeros.tsv"
    with open(path, "wb") as fh:
        fh.truncate(MAX_LINE_CHARS + 10)  # sparse: no disk used
    with pytest.raises(DataError, match=rf"zeros.tsv:1: a line longer than {MAX_LINE_CHARS} characters"):
        fill_static(NegativesTable(2, 3), str(path), ["q0", "q1"], ["d0", "d1"])


def test_one_document_corpus_with_hard_negatives(capsys, tmp_path):
    """No document is left to be a negative: a ValueError at the first step before."""
    data = mini_beir(tmp_path / "data", docs=[{"_id": "d0", "title": "", "text": "the only document"}])
    for qrels in ("train.tsv", "dev.tsv"):
        (data / "qrels" / qrels).write_text("q0\td0\t1\nq1\td0\t1\n")
    neg = tmp_path / "neg.tsv"
    neg.write_text('# ance-negatives v1 {}\nq0\t\nq1\t\n')
    rc, err = run_cli(capsys, ["train", CONFIG, *small(tmp_path, data), "train.batch_size=2",
                               "negatives.source=static", f"negatives.static_file={neg}"])
    assert_user_error(rc, err, "negatives.n_per_query=1, but query 'q0' has only 0 document(s)", "data.max_docs")


def test_a_batch_larger_than_the_queries(capsys, tmp_path):
    """A ValueError with a good message, but a traceback (the report's one old traceback)."""
    rc, err = run_cli(capsys, ["train", CONFIG, *small(tmp_path), "train.batch_size=1000"])
    assert_user_error(rc, err, "train.batch_size=1000 exceeds the 6 training queries")


# ---------------------------------------------------------------- resume from a damaged checkpoint

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run of two steps, a checkpoint each; tests damage a copy."""
    tmp = tmp_path_factory.mktemp("trained")
    assert main(["train", CONFIG, *small(tmp), "eval.every=0"]) == 0
    return tmp


def _copy(trained: Path, tmp_path: Path) -> tuple[Path, Path]:
    run = tmp_path / "run"
    shutil.copytree(trained / "run", run)
    return run, run / "checkpoints" / "step-000002"


def _state_json(ckpt: Path, change) -> None:
    path = ckpt / "trainer_state.json"
    tree = json.loads(path.read_text())
    change(tree)
    path.write_text(json.dumps(tree))


def _huge_table_ids(ckpt: Path) -> None:
    from safetensors.torch import load_file, save_file

    key = json.loads((ckpt / "trainer_state.json").read_text())["table"]["neg"]["__ndarray__"]
    tensors = load_file(str(ckpt / "trainer_state.safetensors"))
    tensors[key][1, 0] = 10 ** 9
    save_file(tensors, str(ckpt / "trainer_state.safetensors"))


DAMAGES = {
    "truncated model": (lambda c: (c / "model.safetensors").write_bytes((c / "model.safetensors").read_bytes()[:999]),
                        "step-000002' could not be loaded: Error while deserializing header"),
    "random model": (lambda c: (c / "model.safetensors").write_bytes(os.urandom(100_000)),
                     "step-000002' could not be loaded"),
    "no optimizer": (lambda c: _state_json(c, lambda t: t.pop("optimizer")),
                     "step-000002/trainer_state.json: damaged, no 'optimizer' field"),
    "step two": (lambda c: _state_json(c, lambda t: t.update(step="two")),
                 "step-000002/trainer_state.json: damaged, step 'two' is not a step number"),
    "manifest not json": (lambda c: (c / "manifest.json").write_text("{not json"),
                          "step-000002/manifest.json: unreadable (JSONDecodeError"),
    "table ids past the corpus": (_huge_table_ids,
                                  "trainer_state.json: negatives table row 1 (query 'q1') names document 1000000000, "
                                  "but the corpus has 12"),
    "no tokenizer files": (lambda c: [p.unlink() for p in c.glob("tokenizer*")],
                           "step-000002: the tokenizer maps 'the', 'of', 'and' to [UNK]"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_resume_from_a_damaged_checkpoint(capsys, trained, tmp_path, damage):
    run, ckpt = _copy(trained, tmp_path)
    make, message = DAMAGES[damage]
    make(ckpt)
    before = sorted(str(p.relative_to(run)) for p in run.rglob("*") if "cache" not in p.parts)
    rc, err = run_cli(capsys, ["train", "--resume", str(run), "train.max_steps=3"])
    assert_user_error(rc, err, message, "step-000002")
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*") if "cache" not in p.parts) == before


def test_retrieve_refuses_a_model_without_tokenizer_files(capsys, trained, tmp_path):
    """transformers built an empty tokenizer: every word [UNK], every document scored the same, exit 0."""
    model = tmp_path / "model"
    shutil.copytree(trained / "run" / "checkpoints" / "step-000002", model)
    for p in model.glob("tokenizer*"):
        p.unlink()
    out = tmp_path / "run.trec"
    rc, err = run_cli(capsys, ["retrieve", "--model", str(model), "--data", str(trained / "data"), "--split", "dev",
                               "--out", str(out)])
    assert_user_error(rc, err, f"{model}: the tokenizer maps", "none of the tokenizer files")
    assert not out.exists()


# ---------------------------------------------------------------- run directories

@pytest.mark.parametrize("taken", ["folder", "file"])
def test_overwrite_when_the_aside_name_is_taken(tmp_path, taken):
    """os.replace onto an existing RUN_DIR.old-<time>-<pid> failed (a non-empty folder, or a file)."""
    run = tmp_path / "run"
    (run / "checkpoints" / "step-000001").mkdir(parents=True)
    now = time.time()
    for t in range(-1, 4):  # the names of the seconds around this one are all taken
        name = tmp_path / f"run.old-{time.strftime('%Y%m%d-%H%M%S', time.localtime(now + t))}-{os.getpid()}"
        if taken == "folder":
            (name / "checkpoints").mkdir(parents=True)
            (name / "checkpoints" / "keep-me").write_text("earlier")
        else:
            name.write_text("earlier")
    taken_before = {p.name for p in tmp_path.iterdir() if p.name.startswith("run.old-")}
    aside = claim_run_dir(run, resume=False, overwrite=True)
    assert aside is not None and aside.name not in taken_before and aside.name.endswith("-1")
    assert (aside / "checkpoints" / "step-000001").is_dir() and run.is_dir() and not any(run.iterdir())
    for name in taken_before:  # nothing replaced
        p = tmp_path / name
        assert (p / "checkpoints" / "keep-me").read_text() == "earlier" if taken == "folder" else p.read_text() == "earlier"


# ---------------------------------------------------------------- disk full

@pytest.fixture
def small_disk(tmp_path):
    """A 40 MiB tmpfs (a real full disk), where mounting is permitted (root)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_trainer_on_a_full_disk(capsys, tmp_path, small_disk):
    """tiny-bert's checkpoint (25 MB with its optimizer state) fits once in 40 MiB: step 2 finds it full."""
    run = small_disk / "run"
    rc, err = run_cli(capsys, ["train", CONFIG, *small(tmp_path), f"run_dir={run}", "train.max_steps=3",
                               "eval.every=0"])
    assert_user_error(rc, err, f"{run}/checkpoints/step-000002: disk full while writing checkpoint step-000002")
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-000001"]  # the .tmp went, step 1 is whole
    from ance.trainer.checkpoint import load_trainer_state

    assert load_trainer_state(run / "checkpoints" / "step-000001")["step"] == 1


def test_broker_on_a_full_disk(tmp_path, small_disk):
    """The broker's metrics write hit ENOSPC: a traceback, exit 1. Now: DiskFullError (exit 2 from the CLI)."""
    from ance.broker.hub import Broker
    from ance.run.config import load_config

    from helpers_refresh import Peer, free_port
    from test_broker import FakeWorker, synthetic_dataset

    run = small_disk / "run"
    cfg = load_config(None, [f"run_dir={run}", f"broker.address=tcp://127.0.0.1:{free_port()}",
                             "broker.heartbeat_s=0.1", "telemetry.tensorboard=false"])
    b = Broker(cfg, dataset=synthetic_dataset())
    b.bind()  # writes the run's token and secret
    Peer.RUN_DIRS[cfg.broker.address] = run
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with open(small_disk / "filler", "wb") as fh:  # fill the disk (tmpfs: to the last page)
        block = b"\0" * (1 << 20)
        try:
            while True:
                fh.write(block)
                fh.flush()
        except OSError:
            pass
    errors: list[BaseException] = []

    def serve():
        try:
            b.run()
        except BaseException as exc:  # what `ance broker` turns into its exit code
            errors.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    worker = FakeWorker(cfg.broker.address, "0")  # its "joined" event goes to the metrics log
    thread.join(30)
    worker.close()
    assert not thread.is_alive(), "the broker went on with a full disk"
    assert len(errors) == 1 and isinstance(errors[0], DiskFullError), errors
    assert str(errors[0]).startswith(f"{run}/metrics.jsonl: disk full while writing the metrics log")
    assert isinstance(errors[0], AnceError) and "\n" not in str(errors[0])
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before  # no torn line
