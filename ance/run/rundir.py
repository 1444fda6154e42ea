"""Every path inside a run directory, named once.

A run directory holds::

    config.yaml                      the resolved config (ance.run.config.save_config)
    metrics.jsonl                    one event a line (ance.run.telemetry)
    checkpoints/step-NNNNNN/         HF model dir + trainer_state.{json,safetensors}; manifest.json written last
    checkpoints/best.json            alias: the checkpoint best on eval.best_metric (a pointer file, no symlink)
    checkpoints/final.json           alias: the last checkpoint of the run
    broker.token                     the broker's secret for `stop` (mode 0600, new every broker start)
    negatives/step-N.tsv             a complete negatives version (step-N.partial.tsv while streaming)
    logs/<role>-<n>.log              one log per process (launch.supervisor)
    cache/                           the tokenized corpus (ance.model.tokcache)
    tensorboard/<role>/              TensorBoard event files

Every role, the monitor and the report take their paths from :class:`RunDir`
(and the name functions below), so the layout is spelled here and nowhere else,
as :mod:`ance.wire.protocol`'s ``SPEC`` is for messages. The name functions are pure;
the listings read the directory and nothing else.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ance.run.errors import ConfigError

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
MANIFEST = "manifest.json"
TRAINER_STATE = "trainer_state.json"                # the trainer state's structure (trainer/state_io.py)
TRAINER_STATE_TENSORS = "trainer_state.safetensors"  # ... and its tensors
LEGACY_TRAINER_STATE = "trainer_state.pt"           # a pickle of older versions: refused, never loaded
BROKER_TOKEN = "broker.token"                       # the run's secret for `stop` (broker/guard.py)

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
    """A ``step-N`` directory (not a symlink) whose manifest is written (the last file of an atomic write)."""
    path = Path(path)
    return (not path.is_symlink() and path.is_dir() and parse_step(path.name) is not None
            and not manifest_path(path).is_symlink() and manifest_path(path).is_file())


ALIASES = ("best", "final")


def alias_path(run_dir: str | Path, alias: str) -> Path:
    """``checkpoints/<alias>.json``: a pointer file naming a checkpoint (``{"checkpoint": "step-N", ...}``).
    A pointer rather than a symlink: the run dir holds no symlinks (they are skipped when checkpoints
    are shipped, and a copied or archived run keeps its aliases)."""
    if alias not in ALIASES:
        raise ValueError(f"alias {alias!r} is not one of {', '.join(ALIASES)}")
    return Path(run_dir) / "checkpoints" / f"{alias}.json"


def resolve_alias(path: str | Path) -> str | Path:
    """``RUN_DIR/checkpoints/best`` (or ``final``) -> the checkpoint dir its pointer file names;
    any other path (or a name) is returned as given. The pointer may only name a ``step-N`` dir
    beside it, never a path elsewhere."""
    p = Path(path)
    pointer = p.parent / f"{p.name}.json"
    if p.exists() or p.name not in ALIASES or not pointer.is_file():
        return path
    import json

    try:
        target = json.loads(pointer.read_text(encoding="utf-8")).get("checkpoint")
    except (OSError, ValueError, AttributeError) as exc:
        raise ConfigError(f"{pointer}: unreadable alias ({exc}); point at a step-N checkpoint instead") from None
    if not isinstance(target, str) or parse_step(target) is None:
        raise ConfigError(f"{pointer}: names {target!r}, not a step-NNNNNN checkpoint beside it")
    if not is_complete_checkpoint(p.parent / target):
        raise ConfigError(f"{pointer}: {target} is gone or incomplete (pruned?); use another checkpoint")
    return p.parent / target


def _child(name: str, doc: str) -> property:
    return property(lambda self: self.root / name, doc=doc)


@dataclass(frozen=True)
class RunDir:
    """``RunDir(root)``: the paths of one run directory (nothing is created or read on construction)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    config = _child(CONFIG, "the resolved config (ance.run.config.save_config)")
    metrics = _child(METRICS, "the run's events, one JSON line each (ance.run.telemetry)")
    cache = _child("cache", "the tokenized corpus (ance.model.tokcache)")
    logs = _child("logs", "one log per process started by ance launch")
    tensorboard = _child("tensorboard", "TensorBoard events, one folder per role")
    checkpoints = _child("checkpoints", "checkpoint directories step-NNNNNN")
    negatives_dir = _child("negatives", "negatives versions step-NNNNNN.tsv")
    broker_token = _child(BROKER_TOKEN, "the broker's secret for `stop` (broker/guard.py)")
    keys = _child("keys", "CURVE keys made for the run by `ance launch --slurm` (ance.launch.slurm_node)")
    slurm = _child("slurm", "job-<id>.ready / job-<id>.done: the first Slurm node's set-up and end")

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
            if step is not None and child.is_symlink():  # planted: never followed (broker restart, --resume)
                logging.getLogger(__name__).warning("%s is a symlink: ignored (a checkpoint is a folder of the "
                                                    "run directory)", child)
            elif step is not None and is_complete_checkpoint(child):
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


def _shipped(root: Path) -> Iterable[Path]:
    """The files of a checkpoint dir that go to an inferencer: regular files in it, no symlink, and not
    the trainer state (``trainer_state.*``: optimizer state, large, and of no use to an inferencer)."""
    for p in sorted(root.rglob("*")):
        if not p.is_symlink() and p.is_file() and not p.name.startswith("trainer_state."):
            yield p


def shipped_bytes(path: str | Path) -> int:
    """How many bytes ``checkpoint_files`` would ship of the checkpoint dir ``path``."""
    return sum(p.stat().st_size for p in _shipped(Path(path)))


def weights_limit(max_frame_bytes: int) -> int:
    """The most checkpoint bytes one frame carries (``broker.max_frame_bytes`` less 1 MiB for the rest
    of the job message): what the broker passes to ``checkpoint_files``."""
    return max_frame_bytes - (1 << 20)


def checkpoint_files(path: str | Path, max_bytes: int) -> dict[str, bytes]:
    """The files of a checkpoint dir (relative posix path -> bytes), to ship to an inferencer.

    The trainer state (``trainer_state.*``: optimizer state, large, and of no
    use to an inferencer) stays behind, and so does every symlink: only regular
    files that lie in ``path`` are read. Raises ValueError when the files exceed
    ``max_bytes``.
    """
    root = Path(path)
    files: dict[str, bytes] = {}
    total = 0
    for p in _shipped(root):
        total += p.stat().st_size
        if total > max_bytes:
            raise ValueError(f"checkpoint {root} is larger than broker.max_frame_bytes={max_bytes}: "
                             "raise it, or give the inferencers a shared file system (broker.send_weights=false)")
        files[p.relative_to(root).as_posix()] = p.read_bytes()
    return files


# What a run leaves in its directory; a new run must not mix with them.
RUN_LEFTOVERS = ("checkpoints", "negatives", METRICS)


def previous_run(run_dir: str | Path, names: Iterable[str] = RUN_LEFTOVERS) -> list[str]:
    """The entries of ``names`` in ``run_dir`` that hold an earlier run's output: a non-empty file, or a
    folder with something but the ``.tmp-*`` leftovers of an interrupted write (swept on start)."""
    run = Path(run_dir)
    found = []
    for name in names:
        p = run / name
        if p.is_dir() and any(not c.name.startswith(".") for c in p.iterdir()) or p.is_file() and p.stat().st_size:
            found.append(name)
    return found


def _move_aside(run: Path) -> Path:
    """Rename ``run`` to ``RUN_DIR.old-<time>-<pid>``, or ``...-<pid>-<n>`` when that name is taken (by a
    folder or a file: it is never replaced, so nothing is lost); return the new name."""
    stem = f"{run.name}.old-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    for n in range(1000):
        aside = run.with_name(stem if n == 0 else f"{stem}-{n}")
        if os.path.lexists(aside):
            continue
        try:
            os.rename(run, aside)  # an empty folder made in between would be replaced: it held nothing
        except OSError as exc:
            raise ConfigError(f"run_dir={run}: --overwrite could not move it to {aside} ({exc.strerror}); "
                              "move it aside by hand or pick a new run_dir=PATH") from None
        return aside
    raise ConfigError(f"run_dir={run}: --overwrite found {stem} and 999 more such names taken; clear them out or "
                      "pick a new run_dir=PATH")


def claim_run_dir(run_dir: str | Path, *, resume: bool, overwrite: bool = False,
                  names: Iterable[str] = RUN_LEFTOVERS) -> Path | None:
    """Make ``run_dir`` ready for a run, or raise :class:`ConfigError` saying what to do.

    A fresh run (not ``resume``) refuses a directory that holds another run's
    ``names`` (checkpoints, negatives, metrics), so two runs never mix, unless
    ``overwrite``: the old directory is then renamed to ``RUN_DIR.old-<time>``,
    which is returned. The directory must be a writable directory either way.
    """
    run = Path(run_dir)
    if run.exists() and not run.is_dir():
        raise ConfigError(f"run_dir={run}: exists and is not a directory; pick another run_dir=PATH")
    aside = None
    if not resume:
        found = previous_run(run, names) if run.is_dir() else []
        if found and not overwrite:
            raise ConfigError(f"run_dir={run}: holds an earlier run ({', '.join(found)}); continue it with "
                              f"--resume {run}, pick a new run_dir=PATH, or pass --overwrite to move it aside")
        if found:
            aside = _move_aside(run)
    try:
        run.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"run_dir={run}: cannot create it ({exc.strerror}); pick a writable run_dir=PATH") from None
    if not os.access(run, os.W_OK | os.X_OK):
        raise ConfigError(f"run_dir={run}: not writable; pick a writable run_dir=PATH or fix its permissions")
    return aside
