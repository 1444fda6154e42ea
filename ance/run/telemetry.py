"""Run metrics: the metrics log, TensorBoard and Prometheus, from one call.

``MetricsWriter(run_dir, role).log("step", step=..., loss=...)`` appends one
JSON line to the run's metrics log (:attr:`ance.run.rundir.RunDir.metrics`) (the record of the run, read by
``ance monitor`` and ``ance report``), mirrors the numeric fields to
TensorBoard (``RUN_DIR/tensorboard/<role>``, tag ``<event>/<field>``) and,
when a port is given, updates the Prometheus gauges of that event.

Several processes (trainer, broker) append to the same file: each record is
one ``os.write`` on an ``O_APPEND`` descriptor, so lines never interleave.
NaN and infinities are written as ``null`` (JSON has no NaN).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

from ance.run.errors import ConfigError, DataError
from ance.run.fsio import disk_full_error
from ance.run.rundir import METRICS, RunDir

log = logging.getLogger("ance.run.telemetry")


# Prometheus names (without the ``ance_`` prefix) and their help texts.
KNOWN_METRICS = {
    "trainer_step": "optimizer steps done by the trainer",
    "negatives_version": "oldest negatives version (checkpoint step) used in the last training batch",
    "async_gap": "trainer step minus negatives version of the last batch (bounded by negatives.max_gap)",
    "wait_seconds": "seconds the trainer blocked waiting for fresh negatives",
    "examples_per_second": "training queries per second of the last step, waits excluded",
    "train_loss": "training loss of the last step",
    "refresh_latency_first_seconds": "checkpoint written -> first negatives chunk of its refresh received",
    "refresh_latency_all_seconds": "checkpoint written -> last negatives chunk of its refresh received",
    "encode_docs_per_second": "corpus encoding rate of the last refresh (all shards)",
    "refresh_version": "newest complete negatives version",
    "eval_ndcg_at_10": "nDCG@10 on the eval split at the last refresh",
    "checkpoint_step": "step of the newest checkpoint written",
    "workers_alive": "inferencer workers the broker sees alive",
    "refresh_shards_done": "shards of the running refresh that are done",
    "inferencer_docs_per_second": "encoding rate of this worker's last shard",
    "inferencer_shards_done": "shard jobs this worker finished",
    "inferencer_last_version": "checkpoint step of this worker's last finished shard",
    "inferencer_shard_seconds": "wall time of this worker's last shard (load to last chunk sent)",
}

# event -> [(field, gauge)]: what ``log`` sets besides the JSON line. ``wait_s`` adds to a counter.
EVENT_GAUGES = {
    "step": [("step", "trainer_step"), ("negatives_version", "negatives_version"), ("gap", "async_gap"),
             ("examples_per_s", "examples_per_second"), ("loss", "train_loss")],
    "refresh": [("latency_first_s", "refresh_latency_first_seconds"),
                ("latency_all_s", "refresh_latency_all_seconds"),
                ("encode_docs_per_s", "encode_docs_per_second"), ("version", "refresh_version"),
                ("eval_ndcg@10", "eval_ndcg_at_10")],
    "checkpoint": [("step", "checkpoint_step")],
}
EVENT_COUNTERS = {"step": [("wait_s", "wait_seconds")]}

TB_FLUSH_S = 5.0


def prometheus_port_for(base: int | None, role: str, index: int = 0) -> int | None:
    """Port of ``role`` for the base port ``telemetry.prometheus_port``: broker +0, trainer +1, inferencer i +2+i.

    ``None`` stays ``None`` (no endpoint); 0 stays 0 (each process picks a free port).
    """
    offsets = {"broker": 0, "trainer": 1, "inferencer": 2 + index}
    if role not in offsets:
        raise ValueError(f"unknown role {role!r}; expected one of {', '.join(offsets)}")
    if base is None or base == 0:
        return base
    return int(base) + offsets[role]


def _clean(value: Any) -> Any:
    """JSON-ready copy: numpy scalars/arrays to Python, non-finite floats to None, paths to str."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_clean(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):  # numpy scalars and arrays, 0-d torch tensors
        return _clean(value.tolist())
    if hasattr(value, "item"):
        return _clean(value.item())
    raise TypeError(f"cannot write {type(value).__name__} to {METRICS}: {value!r}")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


class MetricsWriter:
    """Appends events to the run's metrics log (:attr:`ance.run.rundir.RunDir.metrics`) and mirrors them to TensorBoard and Prometheus.

    ``tensorboard``: write ``RUN_DIR/tensorboard/<role>`` (created at the
    first numeric field). ``prometheus_port``: serve ``/metrics`` on
    ``prometheus_addr:port`` from a registry private to this writer; 0 picks a
    free port (see :attr:`prometheus_port` / :attr:`prometheus_url`); ``None``
    serves nothing and makes :meth:`gauge` / :meth:`inc` no-ops.
    """

    def __init__(self, run_dir: str | Path, role: str, *, tensorboard: bool = True,
                 prometheus_port: int | None = None, prometheus_addr: str = "127.0.0.1", sinks: list | None = None):
        self.run_dir = Path(run_dir)
        self.sinks = list(sinks or [])  # ance.run.trackers: MLflow, W&B (.log(record), .close())
        self.role = role
        self.path = self.run_dir / METRICS
        self.tensorboard = tensorboard
        self._lock = threading.Lock()
        self._tb = None
        self._tb_last_flush = 0.0
        self._tb_counts: dict[str, int] = {}
        self._registry = None
        self._httpd = None
        self._metrics: dict[str, Any] = {}
        self.prometheus_port: int | None = None
        self.prometheus_addr = prometheus_addr
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        if prometheus_port is not None:
            self._serve(int(prometheus_port))

    # ------------------------------------------------------------ jsonl
    @staticmethod
    def _encode(record: dict) -> bytes:
        return (json.dumps(record, allow_nan=False, separators=(", ", ": ")) + "\n").encode()

    def _write(self, data: bytes) -> None:
        # One write of the whole line: O_APPEND makes it land after every other process's lines.
        with disk_full_error(self.path, "the metrics log"):  # one line, exit 2, and the lines before kept
            written = os.write(self._fd, data)
            while written < len(data):  # only on a full disk or a signal; the rest still goes out in order
                written += os.write(self._fd, data[written:])

    def log(self, event: str, **fields: Any) -> dict:
        """Append ``{"event": event, **fields, "time": now}`` as one line; return the record written."""
        record = _clean({"event": event, **fields})
        record.setdefault("time", time.time())
        data = self._encode(record)
        with self._lock:
            if self._fd is None:
                raise ValueError(f"MetricsWriter({self.path}) is closed")
            self._write(data)
            if self.tensorboard:
                self._to_tensorboard(record)
            for sink in list(self.sinks):
                try:
                    sink.log(record)
                except Exception as exc:  # a tracker going down must not stop training: metrics.jsonl is the record
                    self.sinks.remove(sink)
                    first = (str(exc).splitlines() or [""])[0][:200]
                    log.warning("%s failed (%s: %s); no more records go to it, %s keeps them all",
                                type(sink).__name__, type(exc).__name__, first, self.path)
            if self._registry is not None:
                for key, name in EVENT_GAUGES.get(event, ()):
                    value = _number(record.get(key))
                    if value is not None:
                        self._metric("gauge", name, ()).set(value)
                for key, name in EVENT_COUNTERS.get(event, ()):
                    value = _number(record.get(key))
                    if value is not None and value >= 0:  # served from the first step on, at 0 until a wait
                        self._metric("counter", name, ()).inc(value)
        return record

    # ------------------------------------------------------ tensorboard
    def _to_tensorboard(self, record: dict) -> None:
        event = record["event"]
        step_key = "step" if "step" in record else "version"
        values = {k: _number(v) for k, v in record.items() if k not in ("event", "time", step_key)}
        values = {k: v for k, v in values.items() if v is not None}
        if not values:
            return
        step = _number(record.get(step_key))
        count = self._tb_counts.get(event, 0)
        self._tb_counts[event] = count + 1
        step = int(step) if step is not None else count  # events without a step: their index
        # Optional sinks import on first use: a process without them (the launcher, inferencers) skips
        # tensorboard's ~0.4 s and prometheus_client's ~0.8 s of imports (python -X importtime, this box).
        from tensorboard.compat.proto import event_pb2, summary_pb2

        if self._tb is None:
            from tensorboard.summary.writer.event_file_writer import EventFileWriter

            self._tb = EventFileWriter(str(RunDir(self.run_dir).tensorboard / self.role), flush_secs=TB_FLUSH_S)
        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=f"{event}/{k}", simple_value=v)
                                             for k, v in values.items()])
        wall_time = _number(record["time"]) or time.time()
        self._tb.add_event(event_pb2.Event(wall_time=wall_time, step=step, summary=summary))
        now = time.monotonic()
        if now - self._tb_last_flush >= TB_FLUSH_S:
            self._tb.flush()
            self._tb_last_flush = now

    # ------------------------------------------------------- prometheus
    def _serve(self, port: int) -> None:
        from prometheus_client import CollectorRegistry, start_http_server

        self._registry = CollectorRegistry()
        try:
            self._httpd, _thread = start_http_server(port, addr=self.prometheus_addr, registry=self._registry)
        except OSError as exc:
            self.close()
            raise ConfigError(f"{self.role}: cannot serve Prometheus metrics on {self.prometheus_addr}:{port} "
                              f"({exc}); set telemetry.prometheus_port to a free base port, 0 (any) or null"
                              ) from None
        self.prometheus_port = self._httpd.server_address[1]
        log.info("%s: Prometheus metrics at %s", self.role, self.prometheus_url)

    @property
    def prometheus_url(self) -> str | None:
        """``http://addr:port/metrics`` while serving, else None."""
        if self.prometheus_port is None:
            return None
        host = f"[{self.prometheus_addr}]" if ":" in self.prometheus_addr else self.prometheus_addr
        return f"http://{host}:{self.prometheus_port}/metrics"

    def _metric(self, kind: str, name: str, labels: tuple[str, ...]):
        base = name.removeprefix("ance_")
        if kind == "counter":
            base = base.removesuffix("_total")
        key = f"{kind}:{base}"
        if key not in self._metrics:
            from prometheus_client import Counter, Gauge

            cls = Counter if kind == "counter" else Gauge
            metric = cls(f"ance_{base}", KNOWN_METRICS.get(base, f"ance {base.replace('_', ' ')}"),
                         labelnames=labels, registry=self._registry)
            self._metrics[key] = (metric, labels)
        metric, known = self._metrics[key]
        if known != labels:
            raise ValueError(f"Prometheus metric ance_{base} has labels {list(known)}, not {list(labels)}")
        return metric

    def gauge(self, name: str, value: float, **labels: Any) -> None:
        """Set gauge ``ance_<name>`` (an ``ance_`` prefix in ``name`` is not doubled); no-op without a port."""
        if self._registry is None:
            return
        with self._lock:
            metric = self._metric("gauge", name, tuple(sorted(labels)))
            if labels:
                metric = metric.labels(**{k: str(v) for k, v in labels.items()})
            metric.set(float(value))

    def inc(self, name: str, value: float = 1.0) -> None:
        """Add ``value`` to counter ``ance_<name>_total``; no-op without a port."""
        if self._registry is None:
            return
        with self._lock:
            self._metric("counter", name, ()).inc(float(value))

    # ------------------------------------------------------------ close
    def close(self) -> None:
        """Flush TensorBoard, close the file, stop serving. Safe to call twice."""
        with self._lock:
            if self._tb is not None:
                self._tb.close()
                self._tb = None
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            httpd, self._httpd = self._httpd, None
            sinks, self.sinks = self.sinks, []
        for sink in sinks:
            try:
                sink.close()
            except Exception as exc:
                log.warning("%s could not close (%s: %s)", type(sink).__name__, type(exc).__name__, exc)
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        self.prometheus_port = None

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def drop_rerun(events: list[dict]) -> list[dict]:
    """The events that count, once each: after a ``resume`` event at step s, the earlier events with
    ``step > s`` are dropped (those steps ran again from the checkpoint at s, and are logged again)."""
    out: list[dict] = []
    for ev in events:
        if ev.get("event") == "resume" and isinstance(ev.get("step"), (int, float)):
            s = ev["step"]
            out = [e for e in out if not (isinstance(e.get("step"), (int, float)) and e["step"] > s)]
        out.append(ev)
    return out


def read_metrics(path: str | Path, *, rerun: bool = False) -> list[dict]:
    """The events of a metrics log (a file or a run directory), in file order; steps re-run after a
    resume counted once (:func:`drop_rerun`; ``rerun=True``: every line as written).

    A line cut short by a killed writer is skipped with a warning: the last
    line when it has no newline, or the head of a line when a later writer's
    record was appended right after it (that record is kept). Any other
    malformed line raises :class:`~ance.run.errors.DataError` naming file and line.
    """
    path = Path(path)
    if path.is_dir():
        path = path / METRICS
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(path, None, "no such file (not a run directory, or nothing logged yet)") from None
    lines = data.split(b"\n")
    torn_tail = lines.pop() != b""  # every complete line ends with a newline
    if torn_tail:
        lines.append(data[data.rfind(b"\n") + 1:])
    events: list[dict] = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            events.append(_parse(raw))
            continue
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            reason = f"malformed metrics line ({exc})"
        if torn_tail and number == len(lines):
            log.warning("%s:%d: skipping the last line, cut short (a writer was killed mid-write)", path, number)
            continue
        record = _after_fragment(raw)
        if record is None:
            raise DataError(path, number, reason)
        log.warning("%s:%d: skipping the head of the line, cut short by a killed writer", path, number)
        events.append(record)
    return events if rerun else drop_rerun(events)


_RECORD_START = re.compile(rb'\{\s*"event"\s*:')


def _parse(raw: bytes) -> dict:
    record = json.loads(raw)
    if not isinstance(record, dict) or not isinstance(record.get("event"), str):
        raise ValueError('not a JSON object with a string "event"')
    return record


def _after_fragment(raw: bytes) -> dict | None:
    """The whole record that follows a torn fragment on the same line, if there is one."""
    for match in _RECORD_START.finditer(raw, 1):
        try:
            return _parse(raw[match.start():])
        except ValueError:
            continue
    return None


class MetricsTail:
    """Follows a growing metrics log by file offset: :meth:`read` returns the events appended since.

    A line still being written is kept until its newline arrives. A malformed
    complete line is skipped with a warning (a live view must not die of one),
    keeping a record glued to a torn fragment as :func:`read_metrics` does. A
    file that shrank or was replaced starts over from its beginning and bumps
    :attr:`restarts`, so a caller can drop what it built from the old one.
    ``path`` is metrics log or a run directory, which need not exist yet.
    """

    def __init__(self, path: str | Path):
        path = Path(path)
        self.path = path / METRICS if path.is_dir() else path
        self.offset = 0
        self.restarts = 0
        self.skipped = 0
        self._partial = b""
        self._inode: int | None = None

    def read(self) -> list[dict]:
        if self.path.is_dir():  # given a run directory that did not exist yet when we were made
            self.path = self.path / METRICS
        try:
            fh = open(self.path, "rb")
        except FileNotFoundError:
            return []
        except IsADirectoryError:  # the run directory appeared between the check above and the open
            self.path = self.path / METRICS
            return self.read()
        with fh:
            st = os.fstat(fh.fileno())
            if (self._inode is not None and st.st_ino != self._inode) or st.st_size < self.offset:
                self.offset, self._partial = 0, b""
                self.restarts += 1
            self._inode = st.st_ino
            fh.seek(self.offset)
            data = fh.read()
        self.offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        events = []
        for raw in lines:
            if not raw.strip():
                continue
            try:
                events.append(_parse(raw))
                continue
            except ValueError as exc:
                reason = str(exc)
            record = _after_fragment(raw)
            if record is not None:
                events.append(record)
            else:
                self.skipped += 1
                log.warning("%s: skipping a malformed line (%s): %.80r", self.path, reason, raw)
        return events
