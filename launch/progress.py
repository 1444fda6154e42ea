"""The launcher's one-line live progress and its closing summary, read from the run's metrics log."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, TextIO

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
        self.max_seen_gap = 0
        self._last = 0.0
        self._last_line = ""

    def update(self) -> None:
        restarts = self.tail.restarts
        events = self.tail.read()
        if self.tail.restarts != restarts:  # the metrics log was replaced: what we built from it is stale
            self.state, self.refreshes, self.max_seen_gap = {}, [], 0
        for ev in events:
            kind = ev.get("event")
            if kind == "step":
                self.state.update(step=ev.get("step"), loss=ev.get("loss"), gap=ev.get("gap"),
                                  version=ev.get("negatives_version"), eps=ev.get("examples_per_s"))
                if ev.get("gap") is not None:
                    self.max_seen_gap = max(self.max_seen_gap, ev["gap"])
            elif kind == "refresh":
                self.refreshes.append(ev)
            elif kind == "checkpoint":
                self.state["checkpoint"] = ev.get("step")
            elif kind == "shard":
                if ev.get("version") != self.state.get("shard_version"):  # a new refresh: forget the last one's
                    self.state["shards"] = {}
                self.state.setdefault("shards", {})[ev.get("shard")] = ev.get("state")
                self.state["shard_version"] = ev.get("version")

    def line(self) -> str:
        s = self.state
        parts = [f"step {s.get('step', 0)}/{self.max_steps}"]
        if s.get("loss") is not None:
            parts.append(f"loss {s['loss']:.3f}")
        if s.get("gap") is not None:
            parts.append(f"gap {s['gap']} (max {self.max_seen_gap}/{self.max_gap})")
        if s.get("version") is not None:
            parts.append(f"negatives v{s['version']}")
        shards = s.get("shards") or {}
        if shards:
            done = sum(1 for v in shards.values() if v == "done")
            parts.append(f"refresh v{s.get('shard_version')}: {done}/{len(shards)} shards")
        if self.refreshes:
            r = self.refreshes[-1]
            ndcg = r.get("eval_ndcg@10")
            parts.append(f"last refresh v{r.get('version')}" + (f" nDCG@10 {ndcg:.3f}" if ndcg is not None else ""))
        return " | ".join(parts)

    def tick(self) -> None:
        now = time.time()
        if now - self._last < (self.interval_s if self.tty else 10.0):
            return
        self._last = now
        self.update()
        text = self.line()
        if self.tty:
            self.out.write("\r\033[K" + text)
            self.out.flush()
        elif text != self._last_line:
            self.out.write(text + "\n")
            self.out.flush()
        self._last_line = text

    def finish(self) -> dict[str, Any]:
        self.update()
        if self.tty:
            self.out.write("\n")
        return summary(self.refreshes, self.state, self.max_seen_gap)


def summary(refreshes: list[dict[str, Any]], state: dict[str, Any], max_gap_seen: int) -> dict[str, Any]:
    """Evaluation before (first refresh) and after (last refresh) training."""
    evals = [r for r in refreshes if r.get("eval_ndcg@10") is not None]
    out: dict[str, Any] = {"steps": state.get("step"), "refreshes": len(refreshes), "max_gap": max_gap_seen}
    if evals:
        first, last = evals[0], evals[-1]
        out["before"] = {"step": first.get("version"), "ndcg@10": first["eval_ndcg@10"],
                         "recall@100": first.get("eval_recall@100")}
        out["after"] = {"step": last.get("version"), "ndcg@10": last["eval_ndcg@10"],
                        "recall@100": last.get("eval_recall@100")}
    return out
