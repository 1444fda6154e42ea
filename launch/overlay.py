"""``ance report RUN_A RUN_B ...``: publication figures overlaying several runs (ANCE vs static vs
in-batch), from their metrics logs.

Three figures, each written in every format asked (PNG, PDF, SVG), atomically:

* ``learning``: the eval metric against the training step, one line a run: the trainer's ``eval``
  events (``eval.every``) and the refreshes' evaluations (version = checkpoint step), the newer
  record of a step winning; the y-axis fitted to the data, the last value written at the line's end.
* ``loss``: training loss, smoothed (moving mean) in full colour over the raw per-step points drawn
  faint; thin dotted verticals where a run's new negatives arrived (its ``negatives_version`` changed)
  and a dashed one, marked "resumed", where a run was resumed; the learning rate below it.
* ``gap``: the async gap (step − negatives version) of each run, its ``max_gap`` dotted.

Titles name the runs and the dataset (``data.path`` and eval split from each run's config);
legends sit outside the axes, below them, so they never cover data.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from ance.run.errors import DataError
from ance.run.rundir import RunDir
from ance.run.telemetry import read_metrics

from .monitor import read_run_config

FORMATS = ("png", "pdf", "svg")
COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive")


class Run:
    """One run's curves, read once: eval points, loss, lr, gap, negatives arrivals, resumes."""

    def __init__(self, run_dir: str | Path, label: str | None = None):
        self.root = Path(run_dir)
        if not RunDir(self.root).metrics.is_file():
            raise DataError(RunDir(self.root).metrics, None, "no metrics log; is this a run directory?")
        events = read_metrics(RunDir(self.root).metrics)
        cfg = read_run_config(self.root)
        self.label = label or self.root.name
        self.dataset = Path(cfg.data.path).name if cfg else "?"
        self.split = (cfg.data.eval_split if cfg else None) or "eval"
        self.source = cfg.negatives.source if cfg else None
        self.max_gap = cfg.negatives.max_gap if cfg and cfg.negatives.source == "async" else None
        self.steps: dict[int, dict] = {}
        self.resumes: list[int] = []
        self.evals: dict[int, dict] = {}
        last = None
        for ev in events:
            kind, step = ev.get("event"), ev.get("step")
            if kind == "step" and isinstance(step, int):
                if last is not None and step <= last:  # went back without a resume event (older logs)
                    self.resumes.append(step - 1)
                self.steps[step] = ev  # a resumed run logs steps again: the newer record wins
                last = step
            elif kind == "resume" and isinstance(step, int):
                self.resumes.append(step)
                last = None
            elif kind == "eval" and isinstance(step, int):
                self.evals[step] = ev
            elif kind == "refresh" and isinstance(ev.get("version"), int) and not ev.get("replayed"):
                if ev.get("eval_ndcg@10") is not None:
                    self.evals[ev["version"]] = ev

    def series(self, key: str, source: str = "steps") -> tuple[list[int], list[float]]:
        rows = self.steps if source == "steps" else self.evals
        pts = [(s, rows[s][key]) for s in sorted(rows) if _num(rows[s].get(key))]
        return [p[0] for p in pts], [float(p[1]) for p in pts]

    def arrivals(self) -> list[int]:
        """Steps at which the negatives version in use changed (new negatives arrived)."""
        out, prev = [], None
        for s in sorted(self.steps):
            v = self.steps[s].get("negatives_version")
            if v is not None and prev is not None and v != prev:
                out.append(s)
            prev = v if v is not None else prev
        return out


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving mean over ``window`` points (fewer at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def fit(values: list[float], pad: float = 0.08, floor: float | None = None, ceil: float | None = None):
    """Axis limits around ``values`` with a margin of ``pad`` of their span (a small span gets a minimum)."""
    lo, hi = min(values), max(values)
    span = max(hi - lo, abs(hi) * 0.02, 1e-3)
    lo, hi = lo - pad * span, hi + pad * span
    return (max(lo, floor) if floor is not None else lo), (min(hi, ceil) if ceil is not None else hi)


def spread(values: list[float], gap: float) -> list[float]:
    """Positions for labels of ``values``: each as close to its value as can be while every two are at
    least ``gap`` apart, in the values' order (a cluster is centred on its values' mean)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    groups: list[list[int]] = []  # runs of labels packed gap apart, each centred on its members' mean
    for i in order:
        groups.append([i])
        while len(groups) > 1:
            a, b = groups[-2], groups[-1]
            if _centre(values, a) + (len(a) - 1) * gap / 2 + gap <= _centre(values, b) - (len(b) - 1) * gap / 2:
                break
            groups[-2:] = [a + b]
    out = [0.0] * len(values)
    for g in groups:
        start = _centre(values, g) - (len(g) - 1) * gap / 2
        for k, i in enumerate(g):
            out[i] = start + k * gap
    return out


def _centre(values: list[float], group: list[int]) -> float:
    return sum(values[i] for i in group) / len(group)


def _figure(rows: int, height: float, ratios=None):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, height), dpi=130, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False, gridspec_kw={"height_ratios": ratios})[:, 0]
    return fig, list(axes)


def _save(fig, path: Path, formats) -> list[Path]:
    out = []
    path.parent.mkdir(parents=True, exist_ok=True)
    for fmt in formats:
        target = path.with_suffix(f".{fmt}")
        fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}-", suffix=f".{fmt}", dir=target.parent)
        try:
            os.fchmod(fd, 0o644)  # mkstemp makes it 0600; a figure is for others to read
            with os.fdopen(fd, "wb") as fh:
                fig.savefig(fh, format=fmt)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        out.append(target)
    return out


def legend_columns(labels: list[str], width_in: float, chars_per_in: float = 13.0, handle_chars: int = 6) -> int:
    """How many legend columns of ``labels`` fit across a figure ``width_in`` inches wide (at most 3):
    a legend wider than its figure is cut at both edges."""
    if not labels:
        return 1
    widest = max(len(lab) for lab in labels) + handle_chars
    return max(1, min(3, len(labels), int(width_in * chars_per_in // widest)))


def wrap_runs(what: str, labels: list[str], width: int = 95) -> str:
    """A title: ``what`` then "runs: a, b, ..." wrapped at ``width`` characters, breaking after commas."""
    import textwrap

    return "\n".join([what] + textwrap.wrap("runs: " + ", ".join(labels), width=width, break_long_words=False))


def _legend(fig, axes, ncol: int | None = None) -> None:
    handles, labels = [], []
    for ax in axes:
        h, lab = ax.get_legend_handles_labels()
        for hh, ll in zip(h, lab):
            if ll not in labels and not ll.startswith("_"):
                handles.append(hh)
                labels.append(ll)
    if handles:
        ncol = min(ncol or 3, legend_columns(labels, fig.get_figwidth()))
        fig.legend(handles, labels, loc="outside lower center", ncol=ncol, fontsize="small", frameon=False)


def _title(runs: list[Run], what: str) -> str:
    data = sorted({f"{r.dataset} ({r.split})" for r in runs})
    return wrap_runs(f"{what} — {', '.join(data)}", [r.label for r in runs])


def plot_learning(runs: list[Run], path: Path, formats, metric: str = "ndcg@10") -> list[Path]:
    fig, (ax,) = _figure(1, 4.6)
    key, ys_all, ends = f"eval_{metric}", [], []
    for i, r in enumerate(runs):
        xs, ys = r.series(key, "evals")
        if not xs:
            continue
        c = COLORS[i % len(COLORS)]
        ax.plot(xs, ys, "o-", color=c, ms=4, label=f"{r.label} ({r.source})")
        ends.append((xs[-1], ys[-1], c))
        ys_all += ys
    if ys_all:
        lo, hi = fit(ys_all, floor=0.0, ceil=1.0)
        ax.set_ylim(lo, hi)
        ax.margins(x=0.08)
        # the last values, labelled beside their points, never on top of each other (~ one text line apart)
        from matplotlib.transforms import offset_copy

        beside = offset_copy(ax.transData, fig=fig, x=5, y=0, units="points")
        for (x, y, c), at in zip(ends, spread([e[1] for e in ends], 0.05 * (hi - lo))):
            ax.text(x, at, f"{y:.3f}", transform=beside, color=c, fontsize="small", va="center", ha="left")
    else:
        ax.text(0.5, 0.5, f"no {metric} evaluations logged\n(set eval.every or data.eval_split)", ha="center",
                va="center", transform=ax.transAxes, color="0.4")
    ax.set_xlabel("training step")
    ax.set_ylabel(f"{metric} ({runs[0].split})")
    ax.grid(alpha=0.3)
    ax.set_title(_title(runs, f"Learning curves: {metric}"), fontsize="medium")
    _legend(fig, [ax], ncol=min(len(runs), 3))
    return _save(fig, path, formats)


def plot_loss(runs: list[Run], path: Path, formats) -> list[Path]:
    fig, (top, bottom) = _figure(2, 6.0, ratios=[3, 1])
    loss_all = []
    for i, r in enumerate(runs):
        c = COLORS[i % len(COLORS)]
        xs, ys = r.series("loss")
        if not xs:
            continue
        window = max(3, len(ys) // 25)
        top.plot(xs, ys, ".", color=c, alpha=0.18, ms=3, label="_raw")
        top.plot(xs, smooth(ys, window), "-", color=c, lw=1.8, label=f"{r.label} (mean of {window} steps)")
        loss_all += ys
        for s in r.arrivals():
            top.axvline(s, color=c, lw=0.6, ls=":", alpha=0.6)
        for s in r.resumes:
            for ax in (top, bottom):
                ax.axvline(s, color=c, lw=1.2, ls="--")
            top.annotate("resumed", (s, 1), xycoords=("data", "axes fraction"), rotation=90, va="top", ha="right",
                         fontsize="x-small", color=c)
        lx, lr = r.series("lr")
        if lx:
            bottom.plot(lx, lr, "-", color=c, lw=1.2)
    if loss_all:
        top.set_ylim(*fit(loss_all, floor=0.0))
    if any(r.arrivals() for r in runs):
        top.plot([], [], ":", color="0.3", lw=0.8, label="new negatives arrived")
    top.set_ylabel("training loss")
    top.grid(alpha=0.3)
    top.set_title(_title(runs, "Training loss (raw points faint)"), fontsize="medium")
    bottom.set_ylabel("learning rate")
    bottom.set_xlabel("training step")
    bottom.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    bottom.grid(alpha=0.3)
    _legend(fig, [top], ncol=min(len(runs) + 1, 3))
    return _save(fig, path, formats)


def plot_gap(runs: list[Run], path: Path, formats) -> list[Path]:
    fig, (ax,) = _figure(1, 4.0)
    top = 1
    bounds = {r.max_gap for r in runs if r.source in ("async", None) and r.max_gap is not None}
    for i, r in enumerate(runs):
        c = COLORS[i % len(COLORS)]
        if r.source not in ("async", None):
            continue  # in-batch and static negatives never change: no gap to show
        xs, gaps = r.series("gap")
        if xs:
            ax.plot(xs, gaps, drawstyle="steps-post", color=c, label=f"{r.label} ({r.source})")
            top = max(top, max(gaps))
        if r.max_gap is not None and len(bounds) > 1:  # runs bounded differently: a line each
            ax.axhline(r.max_gap, color=c, ls=":", lw=1, label=f"{r.label} max_gap = {r.max_gap}")
            top = max(top, r.max_gap)
    if len(bounds) == 1:  # one bound shared by every async run: one line
        (bound,) = bounds
        ax.axhline(bound, color="0.3", ls=":", lw=1, label=f"max_gap = {bound}")
        top = max(top, bound)
    if not any(r.source in ("async", None) for r in runs):
        ax.text(0.5, 0.5, "no async run: in-batch and static negatives have no gap", ha="center", va="center",
                transform=ax.transAxes, color="0.4")
    ax.set_ylim(0, top * 1.1 + 1)
    ax.set_xlabel("training step")
    ax.set_ylabel("gap (step − negatives version)")
    ax.grid(alpha=0.3)
    ax.set_title(_title(runs, "Async gap (async runs)"), fontsize="medium")
    _legend(fig, [ax], ncol=min(len(runs), 3))
    return _save(fig, path, formats)


def write_overlay(run_dirs: list[str | Path], out_dir: str | Path, formats=("png", "pdf"),
                  metric: str = "ndcg@10", labels: list[str] | None = None) -> list[Path]:
    """``learning``, ``loss`` and ``gap`` figures of several runs in ``out_dir``, in each of ``formats``."""
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ValueError(f"formats must be among {', '.join(FORMATS)}, got {', '.join(formats) or 'none'}")
    runs = [Run(d, (labels or [None] * len(run_dirs))[i]) for i, d in enumerate(run_dirs)]
    out = Path(out_dir)
    return (plot_learning(runs, out / "learning", formats, metric) + plot_loss(runs, out / "loss", formats)
            + plot_gap(runs, out / "gap", formats))
