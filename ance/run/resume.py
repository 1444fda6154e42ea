"""What a resume may change: the config in effect against the one asked for, key by key.

Each key is classed in :data:`ance.run.keydocs.KEYS`: a changed *may change* key takes
effect (the trainer logs a ``resume`` event naming old -> new, trainer/resume.py);
a changed *fixed* key is refused before anything is written, naming the key, unless
``--force``. A key the table does not know counts as fixed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ance.run.config import load_yaml
from ance.run.errors import ConfigError
from ance.run.keydocs import KEYS, MAY
from ance.run.rundir import RunDir

log = logging.getLogger("ance.run.resume")

IGNORED = ("run_dir",)  # where the run lives, not how it trains


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return out


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``[(key, old, new), ...]`` for every leaf of ``new`` that differs (run_dir ignored). A key the old
    config lacks (added to ance since) counts as its default; one ``new`` lacks (removed) is ignored."""
    from ance.run.sections import Config

    a, b, defaults = flatten(old), flatten(new), flatten(Config().to_dict())
    out = []
    for key in b:
        if key in IGNORED:
            continue
        was = a.get(key, defaults.get(key))
        if was != b[key]:
            out.append((key, was, b[key]))
    return out


def may_change(key: str) -> bool:
    entry = KEYS.get(key)
    return entry is not None and entry[0] == MAY


def describe(changes: list[tuple[str, Any, Any]]) -> str:
    return ", ".join(f"{k} {o!r} -> {n!r}" for k, o, n in changes)


def check_resume(run_dir: str | Path, new: dict[str, Any], *, force: bool = False,
                 command: str = "ance train") -> list[tuple[str, Any, Any]]:
    """Compare ``RUN_DIR/config.yaml`` (the config in effect) with ``new``; refuse a changed fixed key.

    Returns the changes. Raises :class:`ConfigError` naming the first fixed key changed,
    unless ``force`` (then each is logged as a warning). Nothing is written here.
    """
    import yaml

    path = RunDir(run_dir).config
    if not path.is_file():
        return []
    try:
        old = load_yaml(path.read_text(encoding="utf-8"), str(path)) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: unreadable ({exc}); the run's config in effect is needed to resume") from None
    changes = config_changes(old, new)
    fixed = [c for c in changes if not may_change(c[0])]
    if fixed and not force:
        key, was, now = fixed[0]
        more = f" (and {len(fixed) - 1} more fixed key(s): {', '.join(c[0] for c in fixed[1:])})" if fixed[1:] else ""
        raise ConfigError(f"{key} cannot change on resume ({was!r} in {path}, now {now!r}){more}: it shapes the "
                          f"model, data or sampling state; start a new run, or {command} --force to accept it")
    for key, was, now in fixed:
        log.warning("--force: resuming with fixed key %s changed %r -> %r", key, was, now)
    for key, was, now in changes:
        if may_change(key):
            log.info("resume: %s %r -> %r", key, was, now)
    return changes
