"""Silent wrong or misleading results (issue 28, hostile report 2026-12-03, "Silent wrong or misleading
result" and the interrupted summary of "Faults"): each case now says what is wrong (a one-line error, exit
code 2) or shows the right figure. One test per case; the CLI runs in-process (``ance.cli.main``), the
broker in a thread on a loopback ROUTER (test_broker's ``broker`` fixture)."""

from __future__ import annotations

import json
import logging
import time

import pytest

from ance.cli import main
from helpers_refresh import wait_until
from test_broker import FakeWorker, broker, trainer_peer  # noqa: F401  (fixture)
from test_hostile_inputs import CONFIG, assert_user_error, run_cli, small


def write_trec(path, run: dict[str, list[str]]):
    path.write_text("".join(f"{q} Q0 {d} {r + 1} {10 - r} t\n" for q, docs in run.items()
                            for r, d in enumerate(docs)))
    return path


def static_file(path, rows: list[str]):
    path.write_text('# ance-negatives v1 {"version": 0}\n' + "".join(r + "\n" for r in rows))
    return path


# 1. an empty run evaluated to zeros with exit 0
def test_eval_of_an_empty_run_is_refused_naming_it(tmp_path, capsys):
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\n")
    empty = tmp_path / "empty.trec"
    empty.write_text("")
    rc, err = run_cli(capsys, ["eval", "--run", empty, "--qrels", qrels])
    assert_user_error(rc, err, str(empty), "holds no ranking", "nothing to evaluate")
    full = write_trec(tmp_path / "full.trec", {"q1": ["d1"], "q2": ["d2"]})
    for argv in (["--compare", full, empty], ["--run", full, empty]):  # every way a run is read
        rc, err = run_cli(capsys, ["eval", *argv, "--qrels", qrels])
        assert_user_error(rc, err, str(empty), "holds no ranking")


# 2. a static file covering 2 of 40 queries was only an INFO line
def test_static_file_covering_few_queries_is_refused_below_the_floor(tmp_path, capsys):
    neg = static_file(tmp_path / "neg.tsv", ["q0\td7,d8", "q1\td9"])  # 2 of mini_beir's 6 training queries
    argv = ["train", CONFIG, *small(tmp_path), "negatives.source=static", f"negatives.static_file={neg}"]
    rc, err = run_cli(capsys, argv)
    assert_user_error(rc, err, f"{neg}: has negatives for 2 of 6 training queries (33%)",
                      "the other 4 get random negatives", "negatives.static_min_coverage=0.5",
                      "negatives.static_min_coverage=0")
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())
    # allowed by the key: it trains, and says so as a WARNING (not INFO) with the coverage
    assert argv[2].startswith("run_dir=")
    argv[2] = f"run_dir={tmp_path / 'run2'}"
    rc, err = run_cli(capsys, [*argv, "negatives.static_min_coverage=0"])
    assert rc == 0, err
    warned = [ln for ln in err.splitlines() if " WARNING " in ln and "static negatives" in ln]
    assert len(warned) == 1 and f"{neg}: has negatives for 2 of 6 training queries (33%)" in warned[0], err


# 3. `qid<TAB>` with no docs was counted as covered ("40 of 40") and the query got random negatives
def test_static_row_without_documents_is_not_covered_and_named(tmp_path, caplog):
    from ance.trainer.feed import NegativesTable, fill_static

    neg = static_file(tmp_path / "neg.tsv", ["q0\td1,d2", "q1\td3", "", "q2\t", "q3\td0"])
    table = NegativesTable(4, 3)
    with caplog.at_level(logging.WARNING):
        covered = fill_static(table, str(neg), ["q0", "q1", "q2", "q3"], ["d0", "d1", "d2", "d3"], min_coverage=0.5)
    assert covered == 3
    assert (table.neg[2] == -1).all() and table.neg[3, 0] == 0
    (msg,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "3 of 4 training queries (75%)" in msg and "1 listed with no document" in msg
    assert f"{neg}:5 ('q2')" in msg  # header, two rows, a blank line, then the empty row
    # every row empty: refused even with no floor
    from ance.run.errors import DataError
    with pytest.raises(DataError, match="has negatives for 0 of 2 training queries .* no query has a negative"):
        fill_static(NegativesTable(2, 3), str(static_file(tmp_path / "e.tsv", ["q0\t", "q1\t"])), ["q0", "q1"],
                    ["d0"], min_coverage=0)


# 4. --compare of runs with no query in common gave p-values
def test_compare_refuses_no_shared_query_and_warns_on_a_partial_overlap(tmp_path, capsys):
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("".join(f"q{i}\td{i}\t1\n" for i in range(4)))
    a = write_trec(tmp_path / "a.trec", {"q0": ["d0", "d9"], "q1": ["d9", "d1"], "q2": ["d2"]})
    b = write_trec(tmp_path / "b.trec", {"q1": ["d1"], "q2": ["d9", "d2"], "q3": ["d3"]})
    other = write_trec(tmp_path / "other.trec", {"q3": ["d3"]})
    rc, err = run_cli(capsys, ["eval", "--compare", a, other, "--qrels", qrels])
    assert_user_error(rc, err, "share no judged query")
    assert capsys.readouterr().out == ""
    assert main(["eval", "--compare", str(a), str(b), "--qrels", str(qrels), "--bootstrap", "10"]) == 0
    out, err = capsys.readouterr()
    assert f"the runs share 2 of 4 judged queries ({a} ranks 3, {b} ranks 3)" in err
    assert "--missing skip compares the 2 shared only" in err
    assert json.loads(out)["n_shared"] == 2
    assert main(["eval", "--compare", str(a), str(a), "--qrels", str(qrels), "--bootstrap", "10"]) == 0
    assert "the runs share" not in capsys.readouterr().err  # same queries: nothing to say


# 5. monitor on a folder that is not a run dir: "no training step logged yet", exit 0
def test_monitor_refuses_a_folder_that_is_not_a_run_dir(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a run")
    rc, err = run_cli(capsys, ["monitor", tmp_path, "--once"])
    assert_user_error(rc, err, f"{tmp_path} is not an ance run directory (no config.yaml or metrics.jsonl)")
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"event": "step", "step": 3, "time": 1.0}) + "\n")
    assert main(["monitor", str(tmp_path), "--once"]) == 0  # a run that has logged (config not yet read)


# 6. SIGTERM/SIGINT to `ance launch` after 8 steps printed "0.1638 at step 0 -> 0.1638 at step 0"
def test_interrupted_summary_shows_the_last_step_not_a_fake_after(tmp_path):
    from ance.launch.progress import Progress, eval_line

    run = tmp_path / "run"
    run.mkdir()
    events = [{"event": "refresh", "version": 0, "eval_ndcg@10": 0.1638, "eval_recall@100": 0.5, "time": 1.0}]
    events += [{"event": "step", "step": s, "loss": 1.0, "gap": s, "time": 1.0 + s} for s in range(1, 9)]
    events += [{"event": "shard", "version": 8, "shard": 0, "n_shards": 2, "state": "assigned", "time": 9.5},
               {"event": "run_end", "code": 130, "reason": "signal SIGTERM", "time": 10.0}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    with open(tmp_path / "out", "w") as out:
        result = Progress(run, 40, 8, out=out).finish()
    assert result["steps"] == 8 and result["before"]["step"] == 0 and "after" not in result
    line = eval_line("dev", result)
    assert line == "dev nDCG@10: 0.1638 at step 0; training stopped at step 8, not evaluated after step 0"
    # a run that finished (evaluated at its last step) keeps the old line
    done = dict(result, steps=16, after={"step": 16, "ndcg@10": 0.25})
    assert eval_line("dev", done) == "dev nDCG@10: 0.1638 at step 0 -> 0.2500 at step 16"


# 7. a trainer clock +1 h gave queue_s -3600 in every refresh event
def test_trainer_clock_ahead_gives_no_negative_queue_time(broker):  # noqa: F811 (fixture)
    w = FakeWorker(broker.addr, "0")
    broker.peers.append(w)
    wait_until(lambda: len(broker.b.state.workers) == 1, 10, "worker")
    t = trainer_peer(broker)
    t.send("checkpoint", step=1, path=str(broker.ckpts / "step-000001"), written_at=time.time() + 3600)
    w.finish(w.job())
    done = t.wait_for(lambda ms: [m for m in ms if m.type == "version_done"], 10, "version_done")[0]
    queue_s = done.stats["queue_s"]
    assert isinstance(queue_s, float) and 0 <= queue_s < 600, queue_s  # the broker's clock alone
