"""Every path inside a run directory, named once.

A run directory holds::

    config.yaml                      the resolved config (ance.config.save_config)
    metrics.jsonl                    one event a line (ance.telemetry)
    checkpoints/step-NNNNNN/         HF model dir + trainer_state.pt; manifest.json written last
    negatives/step-N.tsv             a complete negatives version (step-N.partial.tsv while streaming)
    logs/<role>-<n>.log              one log per process (launch.supervisor)
    cache/                           the tokenized corpus (ance.tokcache)
    tensorboard/<role>/              TensorBoard event files

Every role, the monitor and the report take their paths from :class:`RunDir`
(and the name functions below), so the layout is spelled here and nowhere else,
as :mod:`ance.protocol`'s ``SPEC`` is for messages. The name functions are pure;
the listings read the directory and nothing else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
MANIFEST = "manifest.json"
TRAINER_STATE = "trainer_state.pt"

_STEP = re.compile(r"^step-(\d{6,})$")
_NEGATIVES = re.compile(r"^step-(\d{6,})\.tsv$")


def step_name(step: int) -> str:
    """``step-000200``: the name of checkpoint ``step`` (and the stem of negatives version ``step``)."""
    return f"step-{int(step):06d}"


def parse_step(name: str) -> int | None:
    """The step of a checkpoint directory name, or None for any other name (``.tmp-*`` included)."""
    m = _STEP.match(name)
    return int(m.group(1)) if m else None


def negatives_name(version: int, partial: bool = False) -> str:
    """``step-000200.tsv`` (complete) or ``step-000200.partial.tsv`` (being streamed)."""
    return f"{step_name(version)}{'.partial' if partial else ''}.tsv"


def parse_negatives_name(name: str) -> int | None:
    """The version of a complete negatives file name, or None (partial files included)."""
    m = _NEGATIVES.match(name)
    return int(m.group(1)) if m else None


def manifest_path(checkpoint: str | Path) -> Path:
    return Path(checkpoint) / MANIFEST


def trainer_state_path(checkpoint: str | Path) -> Path:
    return Path(checkpoint) / TRAINER_STATE


def is_complete_checkpoint(path: str | Path) -> bool:
    """A ``step-N`` directory whose manifest is written (the last file of an atomic write)."""
    path = Path(path)
    return path.is_dir() and parse_step(path.name) is not None and manifest_path(path).is_file()


def _child(name: str, doc: str) -> property:
    return property(lambda self: self.root / name, doc=doc)


@dataclass(frozen=True)
class RunDir:
    """``RunDir(root)``: the paths of one run directory (nothing is created or read on construction)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    config = _child(CONFIG, "the resolved config (ance.config.save_config)")
    metrics = _child(METRICS, "the run's events, one JSON line each (ance.telemetry)")
    cache = _child("cache", "the tokenized corpus (ance.tokcache)")
    logs = _child("logs", "one log per process started by ance launch")
    tensorboard = _child("tensorboard", "TensorBoard events, one folder per role")
    checkpoints = _child("checkpoints", "checkpoint directories step-NNNNNN")
    negatives_dir = _child("negatives", "negatives versions step-NNNNNN.tsv")

    def log(self, process: str) -> Path:
        """``logs/<process>.log``, e.g. ``logs/inferencer-0.log``."""
        return self.logs / f"{process}.log"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / step_name(step)

    def complete_checkpoints(self) -> list[tuple[int, Path]]:
        """``(step, dir)`` of the complete checkpoints, oldest first."""
        if not self.checkpoints.is_dir():
            return []
        found = []
        for child in self.checkpoints.iterdir():
            step = parse_step(child.name)
            if step is not None and is_complete_checkpoint(child):
                found.append((step, child))
        return sorted(found)

    def latest_checkpoint(self) -> tuple[int, Path] | None:
        ckpts = self.complete_checkpoints()
        return ckpts[-1] if ckpts else None

    def negatives(self, version: int, partial: bool = False) -> Path:
        return self.negatives_dir / negatives_name(version, partial)

    def complete_negatives(self) -> list[tuple[int, Path]]:
        """``(version, file)`` of the complete negatives versions, oldest first."""
        if not self.negatives_dir.is_dir():
            return []
        return sorted((v, p) for p in self.negatives_dir.iterdir() if (v := parse_negatives_name(p.name)) is not None)


def checkpoint_files(path: str | Path, max_bytes: int) -> dict[str, bytes]:
    """The files of a checkpoint dir (relative posix path -> bytes), to ship to an inferencer.

    The trainer state stays behind (optimizer state: large, and of no use to an
    inferencer). Raises ValueError when the files exceed ``max_bytes``.
    """
    root = Path(path)
    files: dict[str, bytes] = {}
    total = 0
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.name == TRAINER_STATE:
            continue
        total += p.stat().st_size
        if total > max_bytes:
            raise ValueError(f"checkpoint {root} is larger than broker.max_frame_bytes={max_bytes}: "
                             "raise it, or give the inferencers a shared file system (broker.send_weights=false)")
        files[p.relative_to(root).as_posix()] = p.read_bytes()
    return files
