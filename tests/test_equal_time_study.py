"""The arithmetic behind docs/results.md's equal-time study (studies/equal_time.py) and its held-apart
split (studies/holdout_split.py): budgets from probed rates, the sweep's pick, a fixed split of the
training questions that never touches dev."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "studies"))

import equal_time  # noqa: E402
from helpers_refresh import SCIFACT, needs_scifact  # noqa: E402
import holdout_split  # noqa: E402


def test_budget_is_rate_times_time_less_the_charged_share():
    assert equal_time.budget(10.54, 90) == 948
    assert equal_time.budget(10.54, 90, 0.1) == 853  # floor(853.74)
    assert equal_time.budget(4.939, 90) == 444
    assert equal_time.budget(0.001, 90) == 1  # at least one step
    for bad in ((0, 90, 0), (1, 0, 0), (1, 90, 1.0), (1, 90, -0.1)):
        with pytest.raises(ValueError):
            equal_time.budget(*bad)


def test_rate_is_the_inverse_of_the_mean_step_time():
    assert equal_time.rate_of_steps([0.1, 0.1, 0.2, 0.2]) == pytest.approx(1 / 0.15)
    with pytest.raises(ValueError):
        equal_time.rate_of_steps([])


def test_pick_is_the_best_of_each_system_ties_to_the_first_name():
    scores = {"st64": 0.7959, "st256": 0.7902, "a64": 0.8012, "a64r95": 0.7951, "b": 0.8012}
    systems = {"st64": "st", "st256": "st", "a64": "ance", "a64r95": "ance", "b": "ance"}
    assert equal_time.pick(scores, systems) == {"ance": "a64", "st": "st64"}


def test_pick_merges_an_earlier_picks_scores_for_recipes_not_run_again(tmp_path):
    budgets = {"st64p": {"system": "st"}, "a64p": {"system": "ance"}, "a64pn3": {"system": "ance"},
               "a64pn3t3": {"system": "ance"}}
    (tmp_path / "budgets.json").write_text(json.dumps(budgets))
    prior = {"heldout_ndcg@10": {"st64p": 0.7977, "a64p": 0.807, "a64pn3": 0.8121, "gone": 0.9}, "best": {}}
    (tmp_path / "prior.json").write_text(json.dumps(prior))
    run = tmp_path / "sweep" / "a64pn3t3"
    run.mkdir(parents=True)
    (run / "async-13.dev.json").write_text(json.dumps({"ndcg@10": 0.8130}))
    (tmp_path / "sweep" / "a64p").mkdir()
    (tmp_path / "sweep" / "a64p" / "async-13.dev.json").write_text(json.dumps({"ndcg@10": 0.80}))  # this sweep's wins
    out = subprocess.run([sys.executable, str(REPO / "studies" / "equal_time.py"), "pick", str(tmp_path / "sweep"),
                          str(tmp_path / "budgets.json"), "--prior", str(tmp_path / "prior.json")],
                         capture_output=True, text=True, check=True)
    got = json.loads(out.stdout)
    assert got["heldout_ndcg@10"] == {"st64p": 0.7977, "a64p": 0.80, "a64pn3": 0.8121, "a64pn3t3": 0.8130}
    assert got["best"] == {"ance": "a64pn3t3", "st": "st64p"}
    has = [sys.executable, str(REPO / "studies" / "equal_time.py"), "has", str(tmp_path / "prior.json")]
    assert subprocess.run([*has, "a64pn3"]).returncode == 0
    assert subprocess.run([*has, "a64pn3t3"]).returncode == 1


def test_budget_command_writes_steps_for_every_recipe(tmp_path):
    rates = {"st64": {"system": "st", "rate": 4.939, "args": "--batch 64"},
             "a64": {"system": "ance", "rate": 10.54, "args": ""}}
    (tmp_path / "rates.json").write_text(json.dumps(rates))
    out = subprocess.run([sys.executable, str(REPO / "studies" / "equal_time.py"), "budget", str(tmp_path / "rates.json"),
                          "90"], capture_output=True, text=True, check=True).stdout
    got = json.loads(out)
    assert (got["st64"]["steps"], got["a64"]["steps"]) == (444, 853)
    assert got["a64"]["charged_share"] == 0.1 and got["st64"]["charged_share"] == 0.0


def test_split_ids_is_fixed_and_seeded():
    qids = [f"q{i:03d}" for i in range(50)]
    a = holdout_split.split_ids(list(reversed(qids)), 10, 0)
    assert a == holdout_split.split_ids(qids, 10, 0) and len(a) == 10  # order of the input does not matter
    assert a != holdout_split.split_ids(qids, 10, 1)
    for n in (0, 50):
        with pytest.raises(ValueError):
            holdout_split.split_ids(qids, n, 0)


def _write(path: Path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        csv.writer(f, delimiter="\t", lineterminator="\n").writerows(rows)


def test_holdout_folder_moves_n_training_questions_to_dev_and_drops_the_real_dev(tmp_path):
    data = tmp_path / "data"
    train = [("query-id", "corpus-id", "score")] + [(f"q{i}", f"d{i % 7}", "1") for i in range(30)] + [("q3", "d5", "1")]
    _write(data / "qrels" / "train.tsv", train)
    _write(data / "qrels" / "dev.tsv", [("query-id", "corpus-id", "score"), ("dev1", "d1", "1")])
    for name in ("corpus.jsonl", "queries.jsonl"):
        (data / name).write_text("{}\n")
    out = tmp_path / "hold"
    assert holdout_split.main([str(data), str(out), "--n", "5"]) == 0
    read = lambda split: list(csv.reader(open(out / "qrels" / f"{split}.tsv"), delimiter="\t"))  # noqa: E731
    held, rest = read("dev"), read("train")
    assert held[0] == rest[0] == ["query-id", "corpus-id", "score"]
    held_q, rest_q = {r[0] for r in held[1:]}, {r[0] for r in rest[1:]}
    assert len(held_q) == 5 and not held_q & rest_q and held_q | rest_q == {f"q{i}" for i in range(30)}
    assert len(held) - 1 + len(rest) - 1 == 31  # every judgement kept once (q3 has two)
    assert "dev1" not in held_q and (out / "corpus.jsonl").resolve() == (data / "corpus.jsonl").resolve()
    assert holdout_split.main([str(data), str(out), "--n", "5"]) == 0  # again: the same folder
    assert {r[0] for r in read("dev")[1:]} == held_q
    assert holdout_split.main([str(data), str(tmp_path / "x"), "--n", "30"]) == 2


@needs_scifact
@pytest.mark.parametrize("mini_batch, scale", [("2", "20"), ("0", "30")])  # CachedMNRL; plain MNRL, scale 30
def test_st_reference_probe_runs_with_and_without_its_gradient_cache(tmp_path, mini_batch, scale):
    pytest.importorskip("sentence_transformers")
    from ance.model.biencoder import resolve_model

    proc = subprocess.run([sys.executable, str(REPO / "studies" / "st_reference.py"), "--model",
                           resolve_model("tiny-bert"), "--data", str(SCIFACT), "--device", "cpu", "--batch", "4",
                           "--mini-batch", mini_batch, "--scale", scale, "--max-pairs", "64", "--max-length", "32",
                           "--probe-steps", "2",
                           "--out", str(tmp_path / "st")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["steps_per_s"] > 0 and got["probe_steps"] == 2 and got["batch"] == 4


def test_st_reference_retries_a_failed_step_then_gives_up(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("st_reference", REPO / "studies" / "st_reference.py")
    st = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(st)
    marker = tmp_path / "tries"
    # fails the first time, succeeds the second (a GPU full for a moment)
    flaky = [sys.executable, "-c", f"import pathlib,sys; p=pathlib.Path({str(marker)!r}); n=len(p.read_text()) "
             "if p.exists() else 0; p.write_text('x'*(n+1)); sys.exit(0 if n else 1)", "retrieve"]
    st.retrying(flaky, tries=3, wait_s=0)
    assert marker.read_text() == "xx"
    with pytest.raises(SystemExit, match="failed 2 times"):
        st.retrying([sys.executable, "-c", "import sys; sys.exit(1)", "retrieve"], tries=2, wait_s=0)
