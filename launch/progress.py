"""The launcher's one-line live progress and its closing summary, read from the run's metrics log."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, TextIO

from ance.run.progressline import format_line
from ance.run.rundir import RunDir
from ance.run.telemetry import MetricsTail


class Progress:
    """Keeps the latest state of a run and renders one status line."""

    def __init__(self, run_dir: Path, max_steps: int, max_gap: int, out: TextIO = sys.stderr,
                 interval_s: float = 0.5):
        self.tail = MetricsTail(RunDir(run_dir).metrics)
        self.max_steps, self.max_gap = max_steps, max_gap
        self.out, self.interval_s = out, interval_s
        self.tty = out.isatty()
        self.state: dict[str, Any] = {}
        self.refreshes: list[dict[str, Any]] = []
        self.evals: list[dict[str, Any]] = []  # the trainer's own evaluations (eval.every)
        self.run_dir = Path(run_dir)
        self.max_seen_gap = 0
        self._last = 0.0
        self._last_line = ""

    def update(self) -> None:
        restarts = self.tail.restarts
        events = self.tail.read()
        if self.tail.restarts != restarts:  # the metrics log was replaced: what we built from it is stale
            self.state, self.refreshes, self.evals, self.max_seen_gap = {}, [], [], 0
        for ev in events:
            kind = ev.get("event")
            if kind == "step":
                self._on_step(ev)
            elif kind == "resume":  # steps after ev["step"] run again: the speed starts over from there
                self.state.pop("t0", None)
                if isinstance(ev.get("max_steps"), int):
                    self.max_steps = ev["max_steps"]
            elif kind == "refresh":
                self.refreshes.append(ev)
            elif kind == "eval":
                self.evals.append(ev)
            elif kind == "checkpoint":
                self.state["checkpoint"] = ev.get("step")
            elif kind == "shard":
                if ev.get("version") != self.state.get("shard_version"):  # a new refresh: forget the last one's
                    self.state["shards"] = {}
                self.state.setdefault("shards", {})[ev.get("shard")] = ev.get("state")
                self.state["shard_version"] = ev.get("version")

    def _on_step(self, ev: dict[str, Any]) -> None:
        s = self.state
        loss, step, t = ev.get("loss"), ev.get("step"), ev.get("time")
        if isinstance(loss, (int, float)):
            s["loss"] = loss if s.get("loss") is None else 0.9 * s["loss"] + 0.1 * loss
        if isinstance(ev.get("total"), int):
            self.max_steps = ev["total"]
        if isinstance(step, int) and isinstance(t, (int, float)):
            if "t0" not in s:
                s["t0"] = (step, t)
            s0, t0 = s["t0"]
            s["rate"] = (step - s0) / (t - t0) if step > s0 and t > t0 else None
        s.update(step=step, lr=ev.get("lr"), gap=ev.get("gap"), version=ev.get("negatives_version"))
        if ev.get("gap") is not None:
            self.max_seen_gap = max(self.max_seen_gap, ev["gap"])

    def line(self) -> str:
        """The training line (:func:`ance.run.progressline.format_line`), then refresh news, within 80 columns
        on a terminal; off one, the refresh news on a line of its own when it changed."""
        s = self.state
        text = format_line(s.get("step") or 0, self.max_steps, s.get("loss"), s.get("lr"), s.get("rate"),
                           s.get("version"), s.get("gap"))
        extra = []
        shards = s.get("shards") or {}
        if shards:
            done = sum(1 for v in shards.values() if v == "done")
            extra.append(f"refresh v{s.get('shard_version')} {done}/{len(shards)} shards")
        if self.refreshes:
            r = self.refreshes[-1]
            ndcg = r.get("eval_ndcg@10")
            extra.append(f"last v{r.get('version')}" + (f" nDCG@10 {ndcg:.3f}" if ndcg is not None else ""))
        return text + ("\n  " + " | ".join(extra) if extra else "")

    def tick(self) -> None:
        now = time.time()
        if now - self._last < (self.interval_s if self.tty else 10.0):
            return
        self._last = now
        self.update()
        text = self.line()
        head, _, news = text.partition("\n")
        if self.tty:  # refresh news printed once, above the live training line
            if news and news != self._last_line.partition("\n")[2]:
                self.out.write("\r\033[K" + news.strip() + "\n")
            self.out.write("\r\033[K" + head[:79])
            self.out.flush()
        elif text != self._last_line:
            self.out.write(text + "\n")
            self.out.flush()
        self._last_line = text

    def finish(self) -> dict[str, Any]:
        self.update()
        if self.tty:
            self.out.write("\n")
        out = summary(self.refreshes, self.state, self.max_seen_gap, self.evals)
        out.update(aliases(self.run_dir))
        return out


def summary(refreshes: list[dict[str, Any]], state: dict[str, Any], max_gap_seen: int,
            evals: list[dict[str, Any]] = ()) -> dict[str, Any]:
    """Evaluation before (first) and after (last) training: from the refreshes (async), else from the
    trainer's own ``eval`` events (in-batch, static, or ``eval.every``); a step's newer record wins."""
    scored = [(r.get("version"), r) for r in refreshes if r.get("eval_ndcg@10") is not None]
    if not scored:
        by_step = {e.get("step"): e for e in evals if e.get("eval_ndcg@10") is not None}
        scored = sorted(by_step.items(), key=lambda kv: kv[0])
    out: dict[str, Any] = {"steps": state.get("step"), "refreshes": len(refreshes), "max_gap": max_gap_seen}
    if scored:
        (s0, first), (s1, last) = scored[0], scored[-1]
        out["before"] = {"step": s0, "ndcg@10": first["eval_ndcg@10"], "recall@100": first.get("eval_recall@100")}
        if len(scored) > 1:  # one evaluation is a before, not an after (a run stopped before its next one)
            out["after"] = {"step": s1, "ndcg@10": last["eval_ndcg@10"], "recall@100": last.get("eval_recall@100")}
    return out


def eval_line(split: str | None, result: dict[str, Any]) -> str | None:
    """The closing line on the eval split, from :func:`summary`'s result: before -> after, and the last
    logged step when training went on past the last evaluation (an interrupted run), so an old figure is
    never shown as the result of the steps after it."""
    before, after, steps = result.get("before"), result.get("after"), result.get("steps")
    if not before:
        return None
    text = f"{split} nDCG@10: {before['ndcg@10']:.4f} at step {before['step']}"
    if after:
        text += f" -> {after['ndcg@10']:.4f} at step {after['step']}"
    last = (after or before)["step"]
    if isinstance(steps, int) and isinstance(last, int) and steps > last:
        text += f"; training stopped at step {steps}, not evaluated after step {last}"
    return text


def aliases(run_dir: Path) -> dict[str, Any]:
    """The run's ``best`` and ``final`` checkpoint aliases, as paths (with the best's metric)."""
    import json

    from ance.run.rundir import ALIASES, alias_path

    out: dict[str, Any] = {}
    for name in ALIASES:
        try:
            info = json.loads(alias_path(run_dir, name).read_text(encoding="utf-8"))
            out[name] = {"checkpoint": str(RunDir(run_dir).checkpoints / str(info["checkpoint"])),
                         **{k: info[k] for k in ("metric", "value") if k in info}}
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out
