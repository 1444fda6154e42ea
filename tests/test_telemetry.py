"""MetricsWriter (jsonl, TensorBoard, Prometheus) and read_metrics."""

from __future__ import annotations

import json
import logging
import multiprocessing
import socket
import urllib.error
import urllib.request

import numpy as np
import pytest

from ance.run.errors import ConfigError, DataError
from ance.run.telemetry import MetricsWriter, prometheus_port_for, read_metrics


def test_log_writes_one_line_per_event(tmp_path):
    with MetricsWriter(tmp_path, "trainer", tensorboard=False) as mw:
        rec = mw.log("step", step=np.int64(3), loss=np.float32(0.5), gap=float("nan"), lr=float("inf"),
                     stats={"a": np.float64(1.5), "b": [np.int32(1), float("nan")]}, path=tmp_path / "x")
        mw.log("checkpoint", step=4, time=123.0)
    assert rec["event"] == "step" and isinstance(rec["time"], float)
    assert rec["step"] == 3 and type(rec["step"]) is int and rec["loss"] == 0.5
    assert rec["gap"] is None and rec["lr"] is None and rec["stats"] == {"a": 1.5, "b": [1, None]}
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0]) == rec
    assert "NaN" not in lines[0] and lines[0].startswith('{"event": "step"')
    assert read_metrics(tmp_path) == [rec, {"event": "checkpoint", "step": 4, "time": 123.0}]


def test_log_after_close_and_unknown_types(tmp_path):
    mw = MetricsWriter(tmp_path, "trainer", tensorboard=False)
    with pytest.raises(TypeError, match="cannot write object"):
        mw.log("step", thing=object())
    mw.close()
    mw.close()
    with pytest.raises(ValueError, match="closed"):
        mw.log("step", step=1)


def _writer_process(run_dir, role, n):
    mw = MetricsWriter(run_dir, role, tensorboard=False)
    for i in range(n):
        mw.log("step", step=i, role=role, pad="x" * 6000)  # longer than PIPE_BUF: atomicity is O_APPEND's
    mw.close()


def test_several_processes_append_whole_lines(tmp_path):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer_process, args=(tmp_path, f"w{k}", 150)) for k in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(20)
        assert p.exitcode == 0
    events = read_metrics(tmp_path / "metrics.jsonl")
    assert len(events) == 450
    for k in range(3):
        assert [e["step"] for e in events if e["role"] == f"w{k}"] == list(range(150))


def test_read_metrics_skips_a_torn_last_line(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"event": "step", "step": 1}\n{"event": "step", "st')
    with caplog.at_level(logging.WARNING, logger="ance.run.telemetry"):
        assert read_metrics(path) == [{"event": "step", "step": 1}]
    assert "metrics.jsonl:2" in caplog.text and "cut short" in caplog.text


def test_read_metrics_recovers_a_record_glued_to_a_torn_line(tmp_path, caplog):
    # A writer killed mid-line, then a restarted one appends: the fragment is dropped, the record kept.
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"event": "step", "step": 1}\n{"event": "step", "lo')
    with MetricsWriter(tmp_path, "trainer", tensorboard=False) as mw:
        mw.log("step", step=2, time=5.0)
    with caplog.at_level(logging.WARNING, logger="ance.run.telemetry"):
        assert read_metrics(path) == [{"event": "step", "step": 1}, {"event": "step", "step": 2, "time": 5.0}]
    assert "metrics.jsonl:2" in caplog.text


@pytest.mark.parametrize("bad", ['{"event": "step", "step": }', '[1, 2]', '{"step": 1}', 'not json',
                                 '{"event": 3}'])
def test_read_metrics_rejects_malformed_lines(tmp_path, bad):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"event": "step", "step": 1}\n\n' + bad + '\n{"event": "step", "step": 2}\n')
    with pytest.raises(DataError) as err:
        read_metrics(path)
    assert err.value.line == 3 and str(err.value).startswith(f"{path}:3: malformed metrics line")


def test_read_metrics_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_metrics(tmp_path)


def test_tensorboard_mirror(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with MetricsWriter(tmp_path, "trainer") as mw:
        assert not (tmp_path / "tensorboard").exists()  # created lazily
        for step in range(1, 4):
            mw.log("step", step=step, loss=1.0 / step, gap=step, negatives_version=None, note="text")
        mw.log("refresh", version=2, latency_all_s=3.5, replayed=True)
        mw.log("eval", ndcg=0.3)
        mw.log("eval", ndcg=0.4)
    acc = EventAccumulator(str(tmp_path / "tensorboard" / "trainer"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert tags == {"step/loss", "step/gap", "refresh/latency_all_s", "eval/ndcg"}
    assert [(s.step, round(s.value, 4)) for s in acc.Scalars("step/loss")] == [(1, 1.0), (2, 0.5), (3, 0.3333)]
    assert [(s.step, s.value) for s in acc.Scalars("refresh/latency_all_s")] == [(2, 3.5)]
    assert [s.step for s in acc.Scalars("eval/ndcg")] == [0, 1]  # no step: the event's index


def _scrape(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_prometheus_gauges_from_events(tmp_path):
    mw = MetricsWriter(tmp_path, "trainer", tensorboard=False, prometheus_port=0)
    other = MetricsWriter(tmp_path, "broker", tensorboard=False, prometheus_port=0)  # registries are private
    try:
        assert mw.prometheus_port and mw.prometheus_url == f"http://127.0.0.1:{mw.prometheus_port}/metrics"
        mw.log("step", step=7, loss=0.25, negatives_version=5, gap=2, examples_per_s=100.0, wait_s=1.5)
        mw.log("step", step=8, loss=0.2, negatives_version=None, gap=3, examples_per_s=90.0, wait_s=0.5)
        mw.log("refresh", version=5, latency_first_s=1.0, latency_all_s=2.0, encode_docs_per_s=500.0,
               **{"eval_ndcg@10": 0.42})
        mw.gauge("custom_thing", 3, shard="0")
        mw.inc("restarts")
        mw.inc("restarts", 2)
        other.gauge("ance_workers_alive", 2)  # the broker's spelling: the prefix is not doubled
        m = _scrape(mw.prometheus_url)
        assert m["ance_trainer_step"] == 8 and m["ance_train_loss"] == 0.2 and m["ance_async_gap"] == 3
        assert m["ance_negatives_version"] == 5  # None leaves the gauge as it was
        assert m["ance_examples_per_second"] == 90 and m["ance_wait_seconds_total"] == 2.0
        assert m["ance_refresh_latency_first_seconds"] == 1.0 and m["ance_refresh_latency_all_seconds"] == 2.0
        assert m["ance_encode_docs_per_second"] == 500 and m["ance_refresh_version"] == 5
        assert m["ance_eval_ndcg_at_10"] == 0.42
        assert m['ance_custom_thing{shard="0"}'] == 3 and m["ance_restarts_total"] == 3
        assert "ance_workers_alive" not in m
        o = _scrape(other.prometheus_url)
        assert o["ance_workers_alive"] == 2 and "ance_trainer_step" not in o
        with pytest.raises(ValueError, match="labels"):
            mw.gauge("custom_thing", 1)
        url = mw.prometheus_url
    finally:
        mw.close()
        other.close()
    assert mw.prometheus_url is None
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=2)


def test_no_port_means_no_prometheus(tmp_path):
    with MetricsWriter(tmp_path, "trainer", tensorboard=False) as mw:
        assert mw.prometheus_url is None and mw.prometheus_port is None
        mw.gauge("trainer_step", 1)
        mw.inc("wait_seconds", 1)
        mw.log("step", step=1, wait_s=1.0)


def test_busy_port_is_a_config_error(tmp_path):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    try:
        with pytest.raises(ConfigError, match="prometheus_port"):
            MetricsWriter(tmp_path, "trainer", tensorboard=False, prometheus_port=sock.getsockname()[1])
    finally:
        sock.close()


def test_prometheus_port_for():
    assert prometheus_port_for(None, "trainer") is None
    assert prometheus_port_for(0, "inferencer", 3) == 0
    assert prometheus_port_for(9100, "broker") == 9100
    assert prometheus_port_for(9100, "trainer") == 9101
    assert prometheus_port_for(9100, "inferencer") == 9102
    assert prometheus_port_for(9100, "inferencer", 2) == 9104
    with pytest.raises(ValueError, match="unknown role"):
        prometheus_port_for(9100, "launcher")
