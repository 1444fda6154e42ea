"""`ance monitor`: summarize (pure), render (rich text), the tail, and --once."""

from __future__ import annotations

import argparse
import json

import pytest
import yaml
from rich.console import Console

from ance.run.config import config_from_dict
from ance.run.errors import ConfigError
from ance.launch.monitor import read_run_config, render, summarize, watch
from ance.run.telemetry import MetricsTail

CONFIG_YAML = {"train": {"max_steps": 200, "checkpoint_every": 20}, "negatives": {"max_gap": 40}}
CONFIG = config_from_dict(CONFIG_YAML)

EVENTS = [
    {"event": "worker", "name": "inferencer-0", "state": "joined", "last_seen": 100.0, "time": 100.0},
    {"event": "worker", "name": "inferencer-1", "state": "joined", "last_seen": 100.5, "time": 100.5},
    {"event": "checkpoint", "step": 0, "path": "run/checkpoints/step-000000", "write_s": 0.5, "time": 101.0},
    {"event": "step", "step": 1, "loss": 2.0, "lr": 1e-5, "examples_per_s": 50.0, "negatives_version": 0,
     "gap": 1, "wait_s": 0.0, "time": 102.0},
    {"event": "shard", "version": 0, "shard": 0, "n_shards": 2, "worker": "inferencer-0", "state": "assigned",
     "docs_per_s": None, "time": 102.0},
    {"event": "shard", "version": 0, "shard": 1, "n_shards": 2, "worker": "inferencer-1", "state": "assigned",
     "docs_per_s": None, "time": 102.0},
    {"event": "shard", "version": 0, "shard": 0, "n_shards": 2, "worker": "inferencer-0", "state": "done",
     "docs_per_s": 900.0, "time": 110.0},
    {"event": "step", "step": 45, "loss": 1.25, "lr": 2e-5, "examples_per_s": 64.0, "negatives_version": 0,
     "gap": 45, "wait_s": 2.5, "time": 120.0},
    {"event": "worker", "name": "inferencer-1", "state": "lost: silent for 10.0s", "last_seen": 111.0,
     "time": 121.0},
    {"event": "shard", "version": 0, "shard": 1, "n_shards": 2, "worker": "inferencer-1",
     "state": "requeued: worker lost", "docs_per_s": None, "time": 121.0},
    {"event": "shard", "version": 0, "shard": 1, "n_shards": 2, "worker": "inferencer-0", "state": "assigned",
     "docs_per_s": None, "time": 121.5},
    {"event": "step", "step": 46, "loss": 1.2, "lr": 2e-5, "examples_per_s": 60.0, "negatives_version": 10,
     "gap": 36, "wait_s": 0.5, "time": 122.0},
    {"event": "checkpoint", "step": 50, "path": "run/checkpoints/step-000050", "write_s": 0.7, "time": 123.0},
]

SHARD_1_DONE = {"event": "shard", "version": 0, "shard": 1, "n_shards": 2, "worker": "inferencer-0",
                "state": "done", "docs_per_s": 700.0, "time": 124.0}
REFRESH = {"event": "refresh", "version": 0, "n_shards": 2, "latency_first_s": 4.0, "latency_all_s": 20.0,
           "encode_docs_per_s": 1500.0, "overlap": 0.25, "eval_ndcg@10": 0.4321, "eval_recall@100": 0.8,
           "time": 125.0}


def test_summarize_mid_refresh():
    s = summarize(EVENTS, CONFIG)
    assert s["max_steps"] == 200 and s["max_gap"] == 40 and s["n_events"] == len(EVENTS)
    assert s["last_time"] == 123.0
    t = s["train"]
    assert (t["step"], t["loss"], t["lr"], t["examples_per_s"], t["negatives_version"], t["gap"]) == \
        (46, 1.2, 2e-5, 60.0, 10, 36)
    assert t["max_gap_seen"] == 45 and t["wait_s_total"] == 3.0 and t["n_waits"] == 2
    assert s["refresh"] is None and s["n_refreshes"] == 0
    p = s["progress"]
    assert (p["version"], p["n_shards"], p["done"], p["complete"]) == (0, 2, 1, False)
    assert [(x["shard"], x["worker"], x["state"], x["docs_per_s"]) for x in p["shards"]] == [
        (0, "inferencer-0", "done", 900.0), (1, "inferencer-0", "assigned", None)]
    workers = {w["name"]: w for w in s["workers"]}
    assert workers["inferencer-0"]["state"] == "joined" and workers["inferencer-0"]["shard"] == (0, 1)
    assert workers["inferencer-1"]["state"].startswith("lost") and workers["inferencer-1"]["shard"] is None
    assert s["checkpoint"]["step"] == 50 and s["n_checkpoints"] == 2


def test_summarize_after_refresh_and_new_version():
    s = summarize(EVENTS + [SHARD_1_DONE, REFRESH], CONFIG)
    assert s["refresh"]["version"] == 0 and s["refresh"]["eval_ndcg@10"] == 0.4321 and s["n_refreshes"] == 1
    assert s["progress"]["complete"]
    later = [{"event": "shard", "version": 50, "shard": 0, "n_shards": 1, "worker": "inferencer-0",
              "state": "assigned", "docs_per_s": None},
             {"event": "shard", "version": 0, "shard": 1, "n_shards": 2, "worker": "inferencer-0",
              "state": "done", "docs_per_s": 1.0}]  # late news of the old version: ignored
    p = summarize(EVENTS + [SHARD_1_DONE, REFRESH] + later, CONFIG)["progress"]
    assert (p["version"], p["n_shards"], p["done"], p["complete"]) == (50, 1, 0, False)


def test_summarize_empty_and_without_config():
    s = summarize([], None)
    assert s["train"] is None and s["progress"] is None and s["workers"] == [] and s["max_gap"] is None
    s = summarize([{"event": "step", "step": 3, "gap": 0, "negatives_version": None},
                   {"event": "something-new", "x": 1}], None)
    assert s["train"]["step"] == 3 and s["max_gap"] is None and s["n_events"] == 2


def _text(renderable, width=110) -> str:
    console = Console(record=True, width=width, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_render_shows_everything():
    text = _text(render(summarize(EVENTS + [SHARD_1_DONE, REFRESH], CONFIG), title="ance monitor runs/x", now=130.0))
    for needle in ["ance monitor runs/x", "15 events, last 5.0s ago",
                   "step", "46 / 200", "1.2000", "2e-05", "60.0",
                   "negatives version", "36", "(max so far 45, limit 40)", "3.0s over 2 steps",
                   "last refresh", "(1 refresh so far)", "4.0s / 20.0s", "1,500", "0.250", "0.4321", "0.8000",
                   "refresh v0: 2/2 shards done (complete)", "inferencer-0", "900", "700",
                   "workers: 1 alive of 2", "lost: silent for 10.0s", "19.0s ago",
                   "checkpoints", "step 50  run/checkpoints/step-000050", "0.7s"]:
        assert needle in text, f"{needle!r} not in\n{text}"


def test_render_mid_refresh_and_empty():
    text = _text(render(summarize(EVENTS, CONFIG)))
    assert "refresh v0: 1/2 shards done (running)" in text and "v0 shard 1" in text
    assert "requeued" not in text  # shard 1 was reassigned since
    assert "last refresh" not in text
    text = _text(render(summarize([], None)))
    assert "no training step logged yet" in text and "0 events" in text


def test_finished_run_says_so_and_when():
    """The launcher's run_end: the view says the run finished (when, with what code), not "workers alive";
    a `--resume` (new process starts after it) makes it a live run again."""
    import time

    end = {"event": "run_end", "code": 0, "reason": "trainer-0 exited with code 0", "time": 126.0}
    s = summarize(EVENTS + [SHARD_1_DONE, REFRESH, end], CONFIG)
    assert s["finished"] == {"code": 0, "reason": "trainer-0 exited with code 0", "time": 126.0}
    text = _text(render(s, now=130.0))
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(126.0))
    assert f"finished {when}: exit code 0 (trainer-0 exited with code 0)" in text, text
    assert "workers: 2 at the end of the run" in text and "alive" not in text, text
    resumed = summarize(EVENTS + [end, {"event": "process", "name": "trainer-0", "state": "started", "pid": 7,
                                        "restarts": 0, "time": 200.0}], CONFIG)
    assert resumed["finished"] is None
    assert "workers: 1 alive of 2" in _text(render(resumed)) and "finished" not in _text(render(resumed))
    assert summarize(EVENTS, CONFIG)["finished"] is None


def test_tail_follows_partial_lines_and_restarts(tmp_path):
    path = tmp_path / "metrics.jsonl"
    tail = MetricsTail(tmp_path)
    assert tail.read() == []  # no file yet
    path.write_text('{"event": "step", "step": 1}\n{"event": "st')
    assert tail.read() == [{"event": "step", "step": 1}]
    with open(path, "a") as fh:
        fh.write('ep", "step": 2}\nnot json\n')
    assert tail.read() == [{"event": "step", "step": 2}] and tail.skipped == 1
    assert tail.read() == []
    path.write_text('{"event": "step", "step": 9}\n')  # a new, shorter file
    assert tail.read() == [{"event": "step", "step": 9}] and tail.restarts == 1


def _write_run(run_dir, events, config=CONFIG_YAML):
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return run_dir


def test_watch_once(tmp_path):
    run = _write_run(tmp_path / "run", EVENTS + [SHARD_1_DONE, REFRESH])
    console = Console(record=True, width=110, color_system=None)
    assert watch(run, once=True, console=console) == 0
    text = console.export_text()
    assert f"ance monitor  {run}" in text and "46 / 200" in text and "0.4321" in text


def test_monitor_command(tmp_path, capsys):
    from ance.commands import monitor as cmd

    run = _write_run(tmp_path / "run", EVENTS)
    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    args = parser.parse_args([str(run), "--once", "--interval", "2"])
    assert args.interval == 2.0
    assert cmd.run(args) == 0
    assert "46 / 200" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        parser.parse_args([str(run), "--interval", "0"])
    with pytest.raises(ConfigError, match="no such run directory"):
        cmd.run(parser.parse_args([str(tmp_path / "nope"), "--once"]))


def test_read_run_config(tmp_path):
    assert read_run_config(tmp_path) is None
    (tmp_path / "config.yaml").write_text("train: {checkpoint_every: 5}\nnegatives: {max_gap: 7}\n")
    assert read_run_config(tmp_path).negatives.max_gap == 7  # the typed config of ance.run.config's loader
    (tmp_path / "config.yaml").write_text("negatives: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        read_run_config(tmp_path)
    (tmp_path / "config.yaml").write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        read_run_config(tmp_path)


def test_live_loop_follows_the_file_and_leaves_on_ctrl_c(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    run = _write_run(tmp_path / "run", EVENTS[:4])
    code = ("import sys; from rich.console import Console; from ance.launch.monitor import watch; "
            "sys.exit(watch(sys.argv[1], interval=0.05, console=Console(width=110, force_terminal=False)))")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    def watching() -> bool:  # the view's signal handlers are in place (SIGTERM caught: bit 15 of SigCgt)
        try:
            status = open(f"/proc/{proc.pid}/status").read()
        except OSError:
            return False
        caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt")), 16)
        return bool(caught & (1 << (signal.SIGTERM - 1)))

    try:
        deadline = time.time() + 60
        while not watching() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(0.3)
        with open(run / "metrics.jsonl", "a") as fh:
            fh.write("".join(json.dumps(e) + "\n" for e in EVENTS[4:]))
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "46 / 200" in out and "step 50" in out  # the final frame shows events appended while watching


def test_monitor_over_http_reads_the_prometheus_gauges(tmp_path):
    """`ance monitor http://HOST:PORT`: the gauges of a live endpoint, no run directory needed."""
    import io

    from rich.console import Console

    from ance.run.errors import ConfigError
    from ance.launch.monitor import parse_prometheus, watch_url
    from ance.run.telemetry import MetricsWriter

    w = MetricsWriter(tmp_path / "run", "trainer", tensorboard=False, prometheus_port=0)
    try:
        w.log("step", step=42, loss=0.5, negatives_version=40, gap=2, examples_per_s=10.0, wait_s=0.0)
        w.log("refresh", version=40, latency_first_s=0.5, latency_all_s=0.75, encode_docs_per_s=1000.0)
        out = io.StringIO()
        assert watch_url(w.prometheus_url, once=True, console=Console(file=out, width=120)) == 0
        text = out.getvalue()
        assert "trainer step" in text and "42" in text and "0.50s / 0.75s" in text
    finally:
        w.close()
    assert parse_prometheus('ance_x{worker="0"} 3.0\nance_y 1e3\n# HELP ance_z\nother 1\n') == {"ance_x": 3.0,
                                                                                                 "ance_y": 1000.0}
    with pytest.raises(ConfigError, match="no Prometheus metrics there"):
        watch_url("http://127.0.0.1:9/", once=True, console=Console(file=io.StringIO()))


STAGED = dict(REFRESH, load_s=0.1, encode_s=18.2, index_s=0.3, search_s=3.9, transfer_s=0.1, merge_s=0.36,
              select_s=3.3, persist_s=0.9, queue_s=0.0,
              shards=[{"shard": 0, "worker": "inferencer-0", "device": "cuda:0", "encode_docs_per_s": 27000.0,
                       "load_s": 0.1, "encode_s": 18.2, "index_s": 0.3, "search_s": 3.9, "transfer_s": 0.1,
                       "shard_s": 22.6, "gpu_peak_bytes": 3 * 2**30},
                      {"shard": 1, "worker": "inferencer-1", "device": "cuda:1", "encode_docs_per_s": 55000.0,
                       "load_s": 0.1, "encode_s": 9.1, "index_s": 0.2, "search_s": 3.0, "transfer_s": 0.1,
                       "shard_s": 12.5, "gpu_peak_bytes": None}])


def test_stages_and_shards_of_the_last_refresh():
    r = summarize(EVENTS + [SHARD_1_DONE, STAGED], CONFIG)["refresh"]
    assert r["stages"]["encode_s"] == 18.2 and r["stages"]["queue_s"] == 0.0
    assert [x["worker"] for x in r["shards"]] == ["inferencer-0", "inferencer-1"]
    text = _text(render(summarize(EVENTS + [SHARD_1_DONE, STAGED], CONFIG)), width=220)
    for needle in ["stages (slowest shard)", "encode slowest:", "encode 18.2s", "broker merge 0.36s",
                   "select 3.30s", "last refresh v0 by shard", "cuda:1", "55,000", "22.6s*", "*=slowest",
                   "GiB=GPU-peak"]:
        assert needle in text, f"{needle!r} not in\n{text}"
    assert "12.5s*" not in text


def test_the_view_fits_80_columns_with_an_eta():
    """No cell cut short (…) at 80 columns; the shard table's short names come with a legend."""
    text = _text(render(summarize(EVENTS + [SHARD_1_DONE, STAGED], CONFIG)), width=80)
    assert "…" not in text, text
    for needle in ("inf-0", "cuda:1", "22.6s*", "3.0", "steps/s, ETA", "ETA 1:08"):
        assert needle in text, f"{needle!r} not in\n{text}"
    plain = _text(render(summarize(EVENTS + [SHARD_1_DONE, REFRESH], CONFIG)))
    assert "by shard" not in plain and "stages (slowest shard)" not in plain  # a refresh without them


def test_tail_of_a_run_dir_made_between_its_check_and_its_open(tmp_path, monkeypatch):
    """The run directory appears after read() checked for it and before it opens the path (a launch just
    starting): the tail follows the metrics file inside, not an IsADirectoryError (CI, 2026-12-06)."""
    from pathlib import Path

    run = tmp_path / "run"
    tail = MetricsTail(run)  # nothing there yet: taken as the metrics file's own path
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"event": "step", "step": 1}\n')
    real, calls = Path.is_dir, []
    monkeypatch.setattr(Path, "is_dir", lambda self: bool(calls.append(self)) or (len(calls) > 1 and real(self)))
    assert tail.read() == [{"event": "step", "step": 1}]
