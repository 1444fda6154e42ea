"""``ance monitor RUN_DIR``: a live terminal view of a run, built from the run's metrics log.

Three layers, each usable alone:

* :class:`RunSummary` / :func:`summarize` (:mod:`.summary`) fold events into a
  plain dict (pure: no clock, no files, no terminal);
* :func:`render` turns that dict into a rich renderable;
* :func:`watch` tails the file and redraws (``once=True``: one snapshot).

The broker writes ``shard`` and ``worker`` events to the same file, so refresh
progress and worker health need no connection to the broker.
"""

from __future__ import annotations

import contextlib
import re
import signal
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ance.run.config import Config, load_run_config
from ance.run.errors import ConfigError
from ance.run.progressline import eta_text
from ance.run.rundir import RunDir
from ance.run.telemetry import MetricsTail

from .stages import shard_table, stage_line
from .summary import RunSummary, summarize  # noqa: F401  (the monitor's first layer)

MAX_WORKERS_SHOWN = 32


def read_run_config(run_dir: str | Path) -> Config | None:
    """The run's resolved config (:func:`ance.run.config.load_run_config`); None while it is not written yet."""
    if not RunDir(run_dir).config.is_file():
        return None
    return load_run_config(run_dir)


# ------------------------------------------------------------------ render
def _f(value: Any, fmt: str = "{}", none: str = "–") -> str:
    if value is None:
        return none
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else ("es" if word.endswith("sh") else "s"))


def _seconds(value: float | None) -> str:
    if value is None:
        return "–"
    if value < 120:
        return f"{value:.1f}s"
    if value < 7200:
        return f"{value / 60:.1f}min"
    if value < 172800:
        return f"{value / 3600:.1f}h"
    return f"{value / 86400:.1f}d"


def _eta(t: dict[str, Any], total: Any) -> str:
    rate = t.get("steps_per_s")
    return "–" if not rate or not isinstance(total, int) else f"{rate:.2f}, ETA {eta_text(max(0, total - (t['step'] or 0)) / rate)}"


def _gap_text(gap: Any, max_gap: Any):
    style = ""
    if isinstance(gap, (int, float)) and isinstance(max_gap, (int, float)) and max_gap > 0:
        style = "bold red" if gap > max_gap else ("yellow" if gap > 0.8 * max_gap else "green")
    return Text(_f(gap), style=style)


def _pairs(title: str, rows: list[tuple[str, Any]]):
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column()
    for key, value in rows:
        table.add_row(key, value)
    return Panel(table, title=title, title_align="left")


def render(summary: dict[str, Any], *, title: str | None = None, now: float | None = None):
    """A rich renderable of :func:`summarize`'s dict. ``now`` (unix s) adds ages: last event, last seen."""
    parts: list[Any] = []
    head = Text(title or "ance run", style="bold")
    last = summary.get("last_time")
    head.append(f"   {summary.get('n_events', 0)} events")
    if now is not None and last is not None:
        head.append(f", last {_seconds(max(0.0, now - last))} ago")
    end = summary.get("finished")
    if end is not None:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(end["time"])) if end.get("time") else "?"
        head.append(f"   finished {when}: exit code {_f(end.get('code'))} ({_f(end.get('reason'))})",
                    style="green" if end.get("code") == 0 else "red")
    parts.append(head)
    if summary.get("data_note"):
        parts.append(Text(f"data: {summary['data_note']}", style="yellow"))

    t = summary.get("train")
    max_gap = summary.get("max_gap")
    if t is None:
        parts.append(Panel(Text("no training step logged yet", style="dim"), title="training", title_align="left"))
    else:
        step = _f(t["step"]) + (f" / {summary['max_steps']}" if summary.get("max_steps") else "")
        gap = Text.assemble(_gap_text(t["gap"], max_gap), "  (max so far ", _gap_text(t["max_gap_seen"], max_gap),
                            f", limit {max_gap})" if max_gap is not None else ")")
        wait = f"{_seconds(t['wait_s_total'])} over {_plural(t['n_waits'], 'step')}"
        parts.append(_pairs("training", [
            ("step", step), ("loss", _f(t["loss"], "{:.4f}")), ("lr", _f(t["lr"], "{:.3g}")),
            ("examples/s", _f(t["examples_per_s"], "{:.1f}")),
            ("steps/s, ETA", _eta(t, summary.get("max_steps"))),
            ("negatives version", _f(t["negatives_version"], none="in-batch")),
            ("async gap", gap), ("waited for negatives", wait),
        ]))

    r = summary.get("refresh")
    if r is not None:
        rows = [("version", _f(r["version"]) + (" (replayed)" if r.get("replayed") else "")
                 + f"   ({_plural(summary.get('n_refreshes', 0), 'refresh')} so far)"),
                ("latency first / all", f"{_seconds(r['latency_first_s'])} / {_seconds(r['latency_all_s'])}"),
                ("encode docs/s", _f(r["encode_docs_per_s"], "{:,.0f}")),
                ("overlap with previous", _f(r["overlap"], "{:.3f}")),
                ("eval nDCG@10", _f(r["eval_ndcg@10"], "{:.4f}"))]
        if r.get("eval_recall@100") is not None:
            rows.append(("eval recall@100", _f(r["eval_recall@100"], "{:.4f}")))
        if r.get("stages"):
            rows.append(("stages (slowest shard)", stage_line(r["stages"])))
        parts.append(_pairs("last refresh", rows))
        if r.get("shards"):
            parts.append(shard_table(r))

    p = summary.get("progress")
    if p is not None:
        table = Table(show_edge=False, pad_edge=False, expand=False)
        for col in ("shard", "worker", "state", "docs/s"):
            table.add_column(col)
        for s in p["shards"]:
            state = s["state"] or "–"
            style = "green" if state == "done" else ("yellow" if state == "assigned" else "red")
            table.add_row(str(s["shard"]), _f(s["worker"]), Text(state, style=style),
                          _f(s["docs_per_s"], "{:,.0f}"))
        status = "complete" if p["complete"] else "running"
        parts.append(Panel(table, title=f"refresh v{p['version']}: {p['done']}/{_f(p['n_shards'], none='?')} "
                                        f"shards done ({status})", title_align="left"))

    workers = summary.get("workers") or []
    if workers:
        table = Table(show_edge=False, pad_edge=False, expand=False)
        for col in ("worker", "state", "since", "working on"):
            table.add_column(col)
        for w in workers[:MAX_WORKERS_SHOWN]:
            state = w["state"] or "seen"
            lost = state.startswith("lost")
            seen = w["last_seen"]
            if seen is None:
                seen_text = "–"
            elif now is None:
                seen_text = time.strftime("%H:%M:%S", time.localtime(seen))
            else:
                seen_text = f"{_seconds(max(0.0, now - seen))} ago"
            job = f"v{w['shard'][0]} shard {w['shard'][1]}" if w.get("shard") else "–"
            table.add_row(w["name"], Text(state, style="red" if lost else "green"), seen_text, job)
        alive = sum(1 for w in workers if not (w["state"] or "").startswith("lost"))
        more = f", {len(workers) - MAX_WORKERS_SHOWN} more not shown" if len(workers) > MAX_WORKERS_SHOWN else ""
        count = f"{len(workers)} at the end of the run" if end is not None else f"{alive} alive of {len(workers)}"
        parts.append(Panel(table, title=f"workers: {count}{more}", title_align="left"))

    c = summary.get("checkpoint")
    if c is not None:
        parts.append(_pairs("checkpoints", [
            ("written", str(summary.get("n_checkpoints", 0))),
            ("last", f"step {_f(c['step'])}  {_f(c['path'])}"),
            ("write time", _seconds(c["write_s"])),
        ]))
    return Group(*parts)


# -------------------------------------------------------------------- loop
@contextlib.contextmanager
def _ctrl_c():
    """An event set by Ctrl-C (SIGINT) or SIGTERM while the block runs.

    A handler that sets a flag, rather than KeyboardInterrupt: an exception
    raised at an arbitrary point could land inside rich's Live while it holds
    its lock, and the view would then hang on exit instead of leaving.
    """
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def watch(run_dir: str | Path, *, interval: float = 0.5, once: bool = False, console=None) -> int:
    """Draw the run's state until Ctrl-C (``once``: print one snapshot). Returns the exit code."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such run directory")
    rd = RunDir(run_dir)
    if not (rd.config.is_file() or rd.metrics.is_file()):  # a typo'd or unrelated folder would show "no step yet"
        raise ConfigError(f"{run_dir} is not an ance run directory (no {rd.config.name} or {rd.metrics.name}); "
                          "give the run_dir of `ance launch` or `ance train` (started: wait for it to write them)")
    console = console or Console()
    config = read_run_config(run_dir)
    tail = MetricsTail(run_dir)
    summary = RunSummary(config).update(tail.read())
    restarts = tail.restarts

    def view():
        title = f"ance monitor  {run_dir}"
        if tail.skipped:
            title += f"  ({tail.skipped} malformed lines skipped)"
        return render(summary.result(), title=title, now=time.time())

    if once:
        console.print(view())
        return 0
    with _ctrl_c() as stop, Live(view(), console=console, refresh_per_second=2) as live:
        while not stop.wait(interval):
            if summary.config is None:
                summary.config = read_run_config(run_dir)
            events = tail.read()
            if tail.restarts != restarts:  # the file was replaced: start over
                restarts = tail.restarts
                summary = RunSummary(summary.config)
            summary.update(events)
            live.update(view())
    return 0


# ------------------------------------------------------------- over HTTP
#: what the remote view shows, from a broker's (or trainer's) Prometheus endpoint
REMOTE_ROWS = [
    ("trainer step", "ance_trainer_step", "{:.0f}"),
    ("negatives version", "ance_negatives_version", "{:.0f}"),
    ("async gap", "ance_async_gap", "{:.0f}"),
    ("newest refreshed version", "ance_refresh_version", "{:.0f}"),
    ("refresh shards done", "ance_refresh_shards_done", "{:.0f}"),
    ("workers alive", "ance_workers_alive", "{:.0f}"),
    ("refresh latency first / all", ("ance_refresh_latency_first_seconds", "ance_refresh_latency_all_seconds"), "{:.2f}s"),
    ("encode docs/s", "ance_encode_docs_per_second", "{:,.0f}"),
    ("eval nDCG@10", "ance_eval_ndcg_at_10", "{:.4f}"),
    ("trainer wait total", "ance_wait_seconds_total", "{:.1f}s"),
    ("examples/s", "ance_examples_per_second", "{:.1f}"),
    ("loss", "ance_train_loss", "{:.4f}"),
]


def parse_prometheus(text: str) -> dict[str, float]:
    """``name -> value`` of the ``ance_*`` samples in Prometheus text format (labelled ones: the last)."""
    samples: dict[str, float] = {}
    for m in re.finditer(r"^(ance_[A-Za-z0-9_]+)(?:\{[^}]*\})?\s+(\S+)", text, re.M):
        try:
            samples[m.group(1)] = float(m.group(2))
        except ValueError:
            continue
    return samples


def fetch(url: str, timeout: float = 3.0) -> dict[str, float]:
    target = url if url.rstrip("/").endswith("/metrics") else url.rstrip("/") + "/metrics"
    try:
        with urllib.request.urlopen(target, timeout=timeout) as resp:
            return parse_prometheus(resp.read().decode())
    except OSError as exc:
        raise ConfigError(f"{target}: no Prometheus metrics there ({exc}); give the broker's endpoint, "
                          "http://HOST:PORT with PORT = telemetry.prometheus_port (the trainer's is +1)") from None


def render_remote(samples: dict[str, float], url: str):
    """A rich renderable of the gauges an endpoint serves (those it does not serve show as –)."""
    rows = []
    for label, names, fmt in REMOTE_ROWS:
        if isinstance(names, tuple):
            rows.append((label, " / ".join(_f(samples.get(n), fmt) for n in names)))
        else:
            rows.append((label, _f(samples.get(names), fmt)))
    return _pairs(f"ance monitor  {url}", [(k, Text(v)) for k, v in rows])


def watch_url(url: str, *, interval: float = 1.0, once: bool = False, console=None) -> int:
    """Like :func:`watch`, from a Prometheus endpoint instead of the run directory."""
    console = console or Console()
    if once:
        console.print(render_remote(fetch(url), url))
        return 0
    with _ctrl_c() as stop, Live(render_remote(fetch(url), url), console=console, refresh_per_second=2) as live:
        while not stop.wait(interval):
            try:
                live.update(render_remote(fetch(url), url))
            except ConfigError as exc:  # the endpoint went away (a restart): say so, keep trying
                live.update(Text(str(exc), style="red"))
    return 0

