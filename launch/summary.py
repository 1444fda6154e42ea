"""The monitor's first layer: :class:`RunSummary` folds a run's metrics events into a plain dict
(pure: no clock, no files, no terminal); :mod:`.monitor` renders it."""

from __future__ import annotations

from typing import Any, Iterable

from ance.run.config import Config

from .stages import breakdown


class RunSummary:
    """The state of a run, folded event by event (so a long run is not re-read at every redraw)."""

    def __init__(self, config: Config | None = None):
        self.config = config
        self.n_events = 0
        self.last_time: float | None = None
        self.train: dict[str, Any] | None = None
        self.max_gap_seen: int | None = None
        self.wait_total, self.n_waits, self._waits, self.total, self._t0 = 0.0, 0, {}, None, None
        self.refresh: dict[str, Any] | None = None
        self.n_refreshes = 0
        self.progress: dict[str, Any] | None = None
        self.workers: dict[str, dict[str, Any]] = {}
        self.checkpoint: dict[str, Any] | None = None
        self.n_checkpoints = 0
        self.finished: dict[str, Any] | None = None  # the launcher's run_end: code, reason, time
        self.data_note: str | None = None  # what the trainer said once about the data (e.g. a file-only corpus)

    def update(self, events: Iterable[dict]) -> RunSummary:
        for ev in events:
            self.n_events += 1
            t = ev.get("time")
            if isinstance(t, (int, float)):
                self.last_time = t if self.last_time is None else max(self.last_time, t)
            handler = getattr(self, f"_on_{ev.get('event')}", None)
            if handler is not None:
                handler(ev)
        return self

    # ----------------------------------------------------------- events
    def _on_step(self, ev: dict) -> None:
        self.train = {k: ev.get(k) for k in ("step", "loss", "lr", "grad_norm", "examples_per_s",
                                              "negatives_version", "gap", "time")}
        if isinstance(ev.get("step"), int) and isinstance(ev.get("time"), (int, float)):
            s0, t0 = self._t0 = self._t0 or (ev["step"], ev["time"])  # speed since the first step seen
            self.train["steps_per_s"] = (ev["step"] - s0) / (ev["time"] - t0) if ev["time"] > t0 else None
        gap = ev.get("gap")
        if isinstance(gap, (int, float)):
            self.max_gap_seen = gap if self.max_gap_seen is None else max(self.max_gap_seen, gap)
        wait = ev.get("wait_s")
        if isinstance(wait, (int, float)) and wait > 0:
            self._waits[ev.get("step")] = wait
            self.wait_total, self.n_waits = sum(self._waits.values()), len(self._waits)
        if isinstance(ev.get("total"), int):
            self.total = ev["total"]

    def _on_resume(self, ev: dict) -> None:  # steps after ev["step"] run again: count them once
        self._t0 = None
        self._waits = {s: w for s, w in self._waits.items() if not (isinstance(s, int) and s > ev.get("step", 0))}
        self.wait_total, self.n_waits = sum(self._waits.values()), len(self._waits)

    def _on_refresh(self, ev: dict) -> None:
        self.n_refreshes += 1
        self.refresh = {k: ev.get(k) for k in ("version", "n_shards", "latency_first_s", "latency_all_s",
                                                "encode_docs_per_s", "overlap", "eval_ndcg@10",
                                                "eval_recall@100", "replayed", "time")}
        self.refresh.update(breakdown(ev))
        p = self.progress
        if p is not None and isinstance(ev.get("version"), int) and ev["version"] >= p["version"]:
            p["complete"] = True

    def _on_checkpoint(self, ev: dict) -> None:
        self.n_checkpoints += 1
        self.checkpoint = {k: ev.get(k) for k in ("step", "path", "write_s", "time")}

    def _on_shard(self, ev: dict) -> None:
        version, shard = ev.get("version"), ev.get("shard")
        if not isinstance(version, int) or not isinstance(shard, int):
            return
        p = self.progress
        if p is None or version > p["version"]:
            p = self.progress = {"version": version, "n_shards": ev.get("n_shards"), "shards": {},
                                 "complete": False}
        elif version < p["version"]:
            return  # a late message of an older refresh
        if ev.get("n_shards") is not None:
            p["n_shards"] = ev["n_shards"]
        state = str(ev.get("state"))
        entry = p["shards"].setdefault(shard, {"shard": shard, "worker": None, "state": None,
                                               "docs_per_s": None})
        entry.update(worker=ev.get("worker"), state=state)
        if ev.get("docs_per_s") is not None:
            entry["docs_per_s"] = ev["docs_per_s"]
        worker = ev.get("worker")
        if worker:
            w = self._worker(worker)
            w["shard"] = (version, shard) if state == "assigned" else None

    def _on_worker(self, ev: dict) -> None:
        name = ev.get("name")
        if not name:
            return
        w = self._worker(name)
        w["state"] = str(ev.get("state"))
        if ev.get("last_seen") is not None:
            w["last_seen"] = ev["last_seen"]
        if w["state"].startswith("lost"):
            w["shard"] = None

    def _on_data_note(self, ev: dict) -> None:
        self.data_note = ev.get("note")

    def _on_run_end(self, ev: dict) -> None:
        self.finished = {k: ev.get(k) for k in ("code", "reason", "time")}

    def _on_process(self, ev: dict) -> None:
        if ev.get("state") == "started":  # `ance launch --resume` after a run_end: running again
            self.finished = None

    def _worker(self, name: str) -> dict[str, Any]:
        return self.workers.setdefault(name, {"name": name, "state": None, "last_seen": None, "shard": None})

    # ----------------------------------------------------------- result
    def result(self) -> dict[str, Any]:
        progress = None
        if self.progress is not None:
            p = self.progress
            shards = [dict(p["shards"][s]) for s in sorted(p["shards"])]
            done = sum(1 for s in shards if s["state"] == "done")
            progress = {"version": p["version"], "n_shards": p["n_shards"], "done": done, "shards": shards,
                        "complete": p["complete"] or (p["n_shards"] is not None and done >= p["n_shards"])}
        train = None if self.train is None else dict(self.train, max_gap_seen=self.max_gap_seen,
                                                     wait_s_total=self.wait_total, n_waits=self.n_waits)
        return {
            "max_steps": self.total or (self.config.train.max_steps if self.config else None),
            "max_gap": self.config.negatives.max_gap if self.config else None,
            "n_events": self.n_events,
            "last_time": self.last_time,
            "train": train,
            "refresh": dict(self.refresh) if self.refresh else None,
            "n_refreshes": self.n_refreshes,
            "progress": progress,
            "workers": [dict(self.workers[n]) for n in sorted(self.workers)],
            "checkpoint": dict(self.checkpoint) if self.checkpoint else None,
            "n_checkpoints": self.n_checkpoints,
            "finished": dict(self.finished) if self.finished else None,
            "data_note": self.data_note,
        }


def summarize(events: list[dict], config: Config | None) -> dict[str, Any]:
    """The monitor's view of a run: the latest training step, refresh, shards, workers and checkpoint."""
    return RunSummary(config).update(events).result()
