"""Suggestions for misspelt config keys, overrides and flags ("did you mean")."""

from __future__ import annotations

import dataclasses
import difflib
from typing import get_type_hints

from ance.run.errors import ConfigError
from ance.run.keydocs import REMOVED


ALIASES = {"learning_rate": "train.lr", "num_train_epochs": "train.epochs", "per_device_train_batch_size":
           "train.batch_size", "warmup_ratio": "train.warmup_ratio", "weight_decay": "train.weight_decay",
           "output_dir": "run_dir", "seed": "seed", "max_grad_norm": "train.max_grad_norm",
           "model_name_or_path": "model.name_or_path", "logging_steps": "train.log_every",
           "save_steps": "train.checkpoint_every", "save_total_limit": "train.keep_checkpoints",
           "dataset_name": "data.path", "temperature": "model.temperature"}  # HF TrainingArguments' names -> ours


def did_you_mean(word: str, options, n: int = 1) -> str:
    """``"; did you mean train.max_steps?"`` for the closest of ``options``, or ``""``."""
    close = difflib.get_close_matches(word, list(options), n=n, cutoff=0.6)
    if not close:
        return ""
    return "; did you mean " + " or ".join(close) + "?"


def all_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted leaf key of a config dataclass, in declaration order."""
    out: list[str] = []
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            out.extend(all_keys(hints[f.name], name + "."))
        else:
            out.append(name)
    return out


def sections(cls: type) -> list[str]:
    hints = get_type_hints(cls)
    return [f.name for f in dataclasses.fields(cls) if dataclasses.is_dataclass(hints[f.name])]


def unknown_key_message(key: str, cls: type) -> str:
    """The error for ``key`` that is not a config key: removed-key advice, or a "did you mean"."""
    if key in REMOVED:
        return REMOVED[key]
    keys = all_keys(cls)
    section = key.split(".")[0]
    alias = ALIASES.get(key.rsplit(".", 1)[-1])
    hint = f"; did you mean {alias}?" if alias else did_you_mean(key, keys + sections(cls))
    if not hint and section in sections(cls):
        hint = "; valid keys of " + section + ": " + ", ".join(k.split(".", 1)[1] for k in keys
                                                               if k.startswith(section + "."))
    elif not hint:
        hint = "; `ance config keys` lists them all"
    return f"unknown config key {key}{hint}"


def check_override_keys(overrides: list[str], cls: type) -> None:
    """Each ``key=value`` names a config key (or a whole section); else one line naming the override."""
    keys = set(all_keys(cls))
    secs = set(sections(cls))
    for item in overrides:
        if "=" not in item:
            continue
        key = item.split("=", 1)[0].strip()
        if key in keys or key in secs:
            continue
        if any(k.startswith(key + ".") for k in keys):
            continue
        raise ConfigError(f"override {item}: {unknown_key_message(key, cls)}")


def override_for(key: str, overrides: list[str]) -> str | None:
    """The override that sets ``key`` (or a section above it), last one first."""
    for item in reversed(overrides):
        name = item.split("=", 1)[0].strip()
        if key == name or key.startswith(name + "."):
            return item
    return None


def flag_hint(flag: str, known_flags, keys) -> str:
    """For an unrecognised ``--flag [value]``: the config key it probably means (HF style), or a close flag."""
    name = flag.split("=", 1)[0]
    bare = name.lstrip("-").replace("-", "_")
    key = ALIASES.get(bare)
    if key is None:
        leaf = {k.rsplit(".", 1)[-1]: k for k in keys}
        key = leaf.get(bare)
        if key is None:
            close = difflib.get_close_matches(bare, list(leaf), n=1, cutoff=0.8)
            key = leaf[close[0]] if close else None
    if key is not None:
        return f"config keys are set as key=value, e.g. {key}=VALUE (not {name})"
    near = difflib.get_close_matches(name, list(known_flags), n=1, cutoff=0.6)
    return f"did you mean {near[0]}?" if near else ""
