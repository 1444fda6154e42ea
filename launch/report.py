"""``ance report RUN_DIR``: PNG plots of a run, from its metrics log.

Five files, each written atomically; a plot whose data the run never logged
still gets a PNG that says so, so scripts can rely on the file names:

* ``gap.png``: async gap per step against ``negatives.max_gap``, steps that
  waited for negatives marked;
* ``refresh_latency.png``: checkpoint-to-first and checkpoint-to-last
  negatives chunk, per version;
* ``loss.png``: training loss; gradient norm (all and last layer, two axes);
* ``eval.png``: eval nDCG@10 and recall@100 per refreshed version;
* ``refresh_stages.png``: the slowest shard's stages and the broker's, stacked
  per version, and each shard's time per version (which stage or GPU holds
  refreshes back).

Matplotlib is used through its object API on the Agg canvas: no pyplot, no
global backend switch, safe in a process that has its own plotting going.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from ance.wire.protocol import SHARD_STAGES
from ance.run.rundir import RunDir
from ance.run.telemetry import read_metrics

from .monitor import read_run_config
from .overlay import smooth
from .stages import is_number

FIGSIZE = (8.0, 4.5)
DPI = 110


def _figure(rows: int = 1, height: float | None = None):
    # matplotlib (~5 s to import here) only when a report is drawn: `ance report` is its one user.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(FIGSIZE[0], height or FIGSIZE[1]), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    return fig, list(axes)


def _save(fig, path: Path) -> Path:
    """Write the PNG to a temporary name beside ``path``, then rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".png", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes it 0600; a report is for others to read
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format="png")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _no_data(path: Path, title: str, what: str) -> Path:
    fig, (ax,) = _figure()
    ax.set_title(title)
    ax.text(0.5, 0.5, f"no data\n({what})", ha="center", va="center", fontsize=14, color="0.4",
            transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])
    return _save(fig, path)


def _latest_by(events: list[dict], event: str, key: str, *, skip_replayed: bool = False) -> list[dict]:
    """Events of one kind, the last one per ``key`` value, sorted by it.

    A resumed trainer logs again the steps after its checkpoint; the newer record wins.
    """
    out: dict[Any, dict] = {}
    for ev in events:
        if ev.get("event") != event or not isinstance(ev.get(key), (int, float)):
            continue
        if skip_replayed and ev.get("replayed"):
            continue
        out[ev[key]] = ev
    return [out[k] for k in sorted(out)]


def _series(rows: list[dict], x: str, y: str) -> tuple[list[float], list[float]]:
    pts = [(r[x], r[y]) for r in rows if isinstance(r.get(y), (int, float)) and not isinstance(r.get(y), bool)]
    return [p[0] for p in pts], [p[1] for p in pts]


# ------------------------------------------------------------------ plots
def plot_gap(events: list[dict], max_gap: int | None, path: str | Path) -> Path:
    """Async gap (step − negatives version) per step, with the ``max_gap`` bound and the waits."""
    path, title = Path(path), "Async gap: step − negatives version"
    steps = _latest_by(events, "step", "step")
    xs, gaps = _series(steps, "step", "gap")
    if not xs:
        return _no_data(path, title, "no step events with a gap")
    fig, (ax,) = _figure()
    ax.plot(xs, gaps, drawstyle="steps-post", color="tab:blue", label="gap")
    if max_gap is not None:
        ax.axhline(max_gap, color="tab:red", linestyle="--", label=f"max_gap = {max_gap}")
    waits = [(s["step"], s["gap"], s["wait_s"]) for s in steps
             if isinstance(s.get("wait_s"), (int, float)) and s["wait_s"] > 0
             and isinstance(s.get("gap"), (int, float))]
    if waits:
        total = sum(w[2] for w in waits)
        ax.scatter([w[0] for w in waits], [w[1] for w in waits], color="tab:orange", zorder=3, s=18,
                   label=f"waited for negatives ({len(waits)} steps, {total:.1f}s)")
    ax.set_xlabel("training step")
    ax.set_ylabel("gap (steps)")
    ax.set_ylim(bottom=0, top=max(max(gaps), max_gap or 0) * 1.1 + 1)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    return _save(fig, path)


def _per_version(events: list[dict], path: Path, title: str, lines: list[tuple[str, str, str, str]], *,
                 ylabel: str, ylim: tuple[float, float | None], legend: str, annotate: bool, missing: str) -> Path:
    """One plot of refresh-event fields against the version: ``lines`` are (field, marker
    style, colour, label); replayed versions are skipped, the newest event of a version wins."""
    rows = _latest_by(events, "refresh", "version", skip_replayed=True)
    series = [(_series(rows, "version", key), style, color, label) for key, style, color, label in lines]
    if not any(xs for (xs, _), *_ in series):
        return _no_data(path, title, missing)
    fig, (ax,) = _figure()
    for (xs, ys), style, color, label in series:
        if xs:
            ax.plot(xs, ys, style, color=color, label=label)
            if annotate:
                ax.annotate(f"{ys[-1]:.4f}", (xs[-1], ys[-1]), textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("negatives version (checkpoint step)")
    ax.set_ylabel(ylabel)
    ax.set_ylim(*ylim)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc=legend)
    return _save(fig, path)


def plot_refresh_latency(events: list[dict], path: str | Path) -> Path:
    """Seconds from checkpoint written to its first / last negatives chunk received, per version."""
    return _per_version(events, Path(path), "Refresh latency (checkpoint written → negatives received)",
                        [("latency_first_s", "o-", "tab:green", "first chunk (latency_first_s)"),
                         ("latency_all_s", "s-", "tab:purple", "all chunks (latency_all_s)")],
                        ylabel="seconds", ylim=(0, None), legend="upper left", annotate=False,
                        missing="no refresh events with latencies")


def plot_loss(events: list[dict], path: str | Path) -> Path:
    """Training loss (top); gradient norm, all parameters and last layer on two axes (bottom)."""
    path, title = Path(path), "Training loss and gradient norm"
    steps = _latest_by(events, "step", "step")
    xl, loss = _series(steps, "step", "loss")
    xg, grad = _series(steps, "step", "grad_norm")
    xs, last = _series(steps, "step", "grad_norm_last")
    if not (xl or xg or xs):
        return _no_data(path, title, "no step events with loss or grad_norm")
    fig, (top, bottom) = _figure(rows=2, height=6.5)
    fig.suptitle(title)
    if xl:
        top.plot(xl, loss, color="tab:blue", alpha=0.35 if len(loss) > 50 else 1.0, label="loss")
        if len(loss) > 50:
            window = max(5, len(loss) // 50)
            top.plot(xl, smooth(loss, window), color="tab:blue", label=f"mean of {window} steps")
        top.legend(loc="upper right")
    else:
        top.text(0.5, 0.5, "no loss logged", ha="center", va="center", transform=top.transAxes, color="0.4")
    top.set_ylabel("loss")
    top.grid(alpha=0.3)
    handles = []
    if xg:
        handles += bottom.plot(xg, grad, color="tab:red", label="grad_norm (all)")
    bottom.set_ylabel("grad_norm", color="tab:red")
    if xs:
        right = bottom.twinx()
        handles += right.plot(xs, last, color="tab:gray", label="grad_norm_last (last layer)")
        right.set_ylabel("grad_norm_last", color="tab:gray")
    if handles:
        bottom.legend(handles=handles, loc="upper right")
    bottom.set_xlabel("training step")
    bottom.grid(alpha=0.3)
    return _save(fig, path)


def plot_eval(events: list[dict], path: str | Path) -> Path:
    """Eval nDCG@10 and recall@100 of each refreshed version (the eval split searched with the refresh)."""
    return _per_version(events, Path(path), "Evaluation at each refresh",
                        [("eval_ndcg@10", "o-", "tab:blue", "nDCG@10"),
                         ("eval_recall@100", "s-", "tab:orange", "recall@100")],
                        ylabel="score", ylim=(0, 1.05), legend="lower right", annotate=True,
                        missing="no refresh events with eval_ndcg@10 / eval_recall@100")


def plot_refresh_stages(events: list[dict], path: str | Path) -> Path:
    """Where each refresh spent its time: the slowest shard's stages stacked per version (top), the
    broker's beside them, and every shard's total time per version (bottom), so a stage or a GPU
    that holds refreshes back stands out."""
    path, title = Path(path), "Refresh stages (slowest shard) and shards"
    rows = [r for r in _latest_by(events, "refresh", "version", skip_replayed=True)
            if any(is_number(r.get(k)) for k in SHARD_STAGES)]
    if not rows:
        return _no_data(path, title, "no refresh events with stage times")
    fig, (top, bottom) = _figure(rows=2, height=6.5)
    fig.suptitle(title)
    xs = list(range(len(rows)))
    width = 0.4
    base = [0.0] * len(rows)
    for key, color in zip(SHARD_STAGES, ("tab:gray", "tab:blue", "tab:olive", "tab:orange", "tab:purple")):
        vals = [r.get(key) if is_number(r.get(key)) else 0.0 for r in rows]
        top.bar([x - width / 2 for x in xs], vals, width, bottom=base, color=color, label=key[:-2])
        base = [b + v for b, v in zip(base, vals)]
    base = [0.0] * len(rows)
    for key, color in zip(("merge_s", "select_s", "persist_s"), ("tab:cyan", "tab:pink", "tab:brown")):
        vals = [r.get(key) if is_number(r.get(key)) else 0.0 for r in rows]
        top.bar([x + width / 2 for x in xs], vals, width, bottom=base, color=color, label=f"broker {key[:-2]}",
                hatch="//")
        base = [b + v for b, v in zip(base, vals)]
    top.set_ylabel("seconds")
    top.legend(loc="upper left", fontsize="small", ncol=4)
    top.grid(alpha=0.3, axis="y")
    per_shard: dict[Any, tuple[list[int], list[float]]] = {}
    for x, r in zip(xs, rows):
        for sh in r.get("shards") or []:
            if isinstance(sh, dict) and is_number(sh.get("shard_s")):
                label = f"shard {sh.get('shard')} ({sh.get('worker')}, {sh.get('device')})"
                per_shard.setdefault(label, ([], []))[0].append(x)
                per_shard[label][1].append(sh["shard_s"])
    for label, (sx, sy) in sorted(per_shard.items()):
        bottom.plot(sx, sy, "o-", label=label)
    if per_shard:
        bottom.legend(loc="upper left", fontsize="small")
    else:
        bottom.text(0.5, 0.5, "no per-shard times logged", ha="center", va="center", transform=bottom.transAxes,
                    color="0.4")
    bottom.set_ylabel("shard seconds")
    bottom.set_xticks(xs, [str(r["version"]) for r in rows])
    bottom.set_xlabel("negatives version (checkpoint step)")
    bottom.grid(alpha=0.3)
    return _save(fig, path)


def write_report(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write gap.png, refresh_latency.png, loss.png, eval.png and refresh_stages.png; return their paths.

    ``out_dir`` defaults to ``RUN_DIR/report``. Raises
    :class:`~ance.run.errors.DataError` when the run's metrics log is missing
    or has a malformed line (a torn last line is skipped).
    """
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir / "report"
    events = read_metrics(RunDir(run_dir).metrics)
    cfg = read_run_config(run_dir)
    max_gap = cfg.negatives.max_gap if cfg is not None else None
    return [
        plot_gap(events, max_gap, out / "gap.png"),
        plot_refresh_latency(events, out / "refresh_latency.png"),
        plot_loss(events, out / "loss.png"),
        plot_eval(events, out / "eval.png"),
        plot_refresh_stages(events, out / "refresh_stages.png"),
    ]
