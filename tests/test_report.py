"""`ance report`: five PNGs from a synthetic metrics.jsonl, "no data" PNGs from an empty one."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import yaml

from ance.run.errors import DataError
from ance.launch.report import write_report

NAMES = ["gap.png", "refresh_latency.png", "loss.png", "eval.png", "refresh_stages.png"]


def synthetic_run(run_dir, max_steps=120, every=20, max_gap=40):
    """A run as the trainer logs it: refreshes every `every` steps arriving 25 steps later."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"train": {"max_steps": max_steps, "checkpoint_every": every},
                                                         "negatives": {"max_gap": max_gap}}))
    lines, version, t = [], 0, 1000.0
    for step in range(1, max_steps + 1):
        t += 0.5
        arrived = [v for v in range(0, step, every) if v + 25 <= step]
        wait = 0.0
        if arrived and arrived[-1] > version:
            version = arrived[-1]
            lines.append({"event": "refresh", "version": version, "time": t, "n_shards": 2,
                          "latency_first_s": 3.0 + version / 50, "latency_all_s": 9.0 + version / 20,
                          "encode_docs_per_s": 800.0, "overlap": 0.4, "eval_ndcg@10": 0.3 + version / 1000,
                          "eval_recall@100": 0.6 + version / 800, "load_s": 0.1, "encode_s": 5.0 + version / 40,
                          "index_s": 0.2, "search_s": 2.0, "transfer_s": 0.1, "merge_s": 0.3, "select_s": 0.5,
                          "persist_s": 0.2,
                          "shards": [{"shard": i, "worker": f"inferencer-{i}", "device": "cuda:0",
                                      "shard_s": 7.0 + i + version / 40, "encode_s": 5.0} for i in range(2)]})
        if step - version > max_gap:
            wait = 1.5
        lines.append({"event": "step", "step": step, "time": t, "loss": 2.0 * math.exp(-step / 60) + 0.1,
                      "lr": 2e-5, "grad_norm": 1.0 + 0.3 * math.sin(step / 5), "grad_norm_last": 0.1,
                      "examples_per_s": 120.0, "negatives_version": version, "gap": step - version,
                      "wait_s": wait})
        if step % every == 0:
            lines.append({"event": "checkpoint", "step": step, "time": t, "path": f"ckpt/step-{step:06d}",
                          "write_s": 0.8})
    with open(run_dir / "metrics.jsonl", "w") as fh:
        for rec in lines:
            fh.write(json.dumps(rec) + "\n")
        fh.write('{"event": "step", "step": 121, "lo')  # a writer killed mid-line
    return run_dir


def _check_pngs(paths, out):
    assert [p.name for p in paths] == NAMES
    for p in paths:
        assert p.parent == out
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1024, p
    assert sorted(x.name for x in out.iterdir()) == sorted(NAMES)  # no temporary files left


def test_report_writes_five_pngs(tmp_path):
    run = synthetic_run(tmp_path / "run")
    paths = write_report(run)
    _check_pngs(paths, run / "report")


def test_report_command_prints_paths(tmp_path, capsys):
    from ance.commands import report as cmd

    run = synthetic_run(tmp_path / "run")
    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    assert cmd.run(parser.parse_args([str(run), "--out", str(tmp_path / "plots")])) == 0
    printed = capsys.readouterr().out.split()
    figures = [f"{n}.{f}" for n in ("learning", "loss", "gap") for f in ("png", "pdf")]  # launch/overlay.py
    assert printed == [str(tmp_path / "plots" / n) for n in NAMES + figures]


def test_report_without_data_says_no_data(tmp_path):
    run = tmp_path / "empty"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"event": "checkpoint", "step": 0, "path": "x"}\n')
    paths = write_report(run, tmp_path / "out")  # no config.yaml either: no max_gap line
    _check_pngs(paths, tmp_path / "out")


def test_report_needs_metrics(tmp_path):
    with pytest.raises(DataError, match="metrics.jsonl"):
        write_report(tmp_path)


def test_refresh_stages_plot_with_and_without_shard_rows(tmp_path):
    from ance.launch.report import plot_refresh_stages

    old_style = [{"event": "refresh", "version": v, "encode_s": 1.0, "search_s": 0.5, "time": 1.0 + v}
                 for v in (10, 20)]  # a run from before per-shard rows: the bars, and a note below
    big = plot_refresh_stages(old_style, tmp_path / "a.png").stat().st_size
    none = plot_refresh_stages([{"event": "refresh", "version": 1, "latency_all_s": 2.0}], tmp_path / "b.png")
    assert big > 1024 and none.stat().st_size > 1024
