"""The config reference, generated from the sections' dataclasses and :data:`ance.run.keydocs.KEYS`.

One source of truth: type and default from the dataclass field, choices from ``_CHOICES``, ``> 0``
from ``_POSITIVE``, the words and the resume class from ``KEYS``. ``ance config keys`` prints it,
``ance config show`` writes a resolved config with it as comments, and docs/config.md is
:func:`markdown` (tests/test_config_reference.py fails when the file drifts or a key has no words).
"""

from __future__ import annotations

import dataclasses
from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from ance.run.keydocs import KEYS
from ance.run.sections import _CHOICES, _POSITIVE, Config
from ance.run.suggest import all_keys

REGENERATE = "ance config keys --markdown > docs/config.md"


def _type_name(typ: Any) -> str:
    """``int``, ``float or null``, ``list[float]``, ``[int, int]``."""
    args = [a for a in get_args(typ) if a is not type(None)]
    if get_origin(typ) in (Union, UnionType) and len(args) < len(get_args(typ)):
        return " or ".join(_type_name(a) for a in args) + " or null"
    if get_origin(typ) is tuple:
        return "[" + ", ".join(_type_name(a) for a in args) + "]"
    if get_origin(typ) is list:
        return f"list[{_type_name(args[0])}]"
    return getattr(typ, "__name__", str(typ))


def _fields(cls: type, prefix: str = ""):
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        typ = hints[f.name]
        if dataclasses.is_dataclass(typ):
            yield from _fields(typ, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", typ


def _yaml_value(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("...").strip()


def rows() -> list[dict[str, Any]]:
    """One row per key: key, type, default, allowed, resume, doc (None when KEYS lacks the key)."""
    defaults = _flat(Config().to_dict())
    out = []
    for key, typ in _fields(Config):
        allowed = " | ".join(_CHOICES[key]) if key in _CHOICES else ("> 0" if key in _POSITIVE else "")
        resume, doc = KEYS.get(key, (None, None))
        out.append({"key": key, "type": _type_name(typ), "default": _yaml_value(defaults[key]),
                    "allowed": allowed, "resume": resume, "doc": doc})
    return out


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def undocumented() -> list[str]:
    """Keys of the sections with no entry in KEYS."""
    return [k for k in all_keys(Config) if k not in KEYS]


def stale() -> list[str]:
    """Entries of KEYS that are no key of the sections."""
    known = set(all_keys(Config))
    return [k for k in KEYS if k not in known]


def markdown() -> str:
    """docs/config.md."""
    lines = ["# Config reference", "",
             f"Generated from `ance/run/sections.py` and `ance/run/keydocs.py` by `{REGENERATE}`; do not edit.",
             "", "Set a key in the YAML file or on the command line as `key=value` (e.g. `train.lr=3e-5`). "
             "`ance config show CONFIG [key=value ...]` prints a resolved config with these notes.", "",
             "**Resume**: *may change* keys may be given anew with `--resume RUN_DIR key=value` and take effect "
             "from the step resumed at (logged as a `resume` event, old -> new); a changed *fixed* key is "
             "refused (exit 2) unless `--force`.", ""]
    section = None
    for row in rows():
        top = row["key"].split(".")[0] if "." in row["key"] else "(top level)"
        if top != section:
            section = top
            lines += ["", f"## {section}", "", "| key | type | default | allowed | resume | what it does |",
                      "|---|---|---|---|---|---|"]
        doc = (row["doc"] or "UNDOCUMENTED").replace("|", "\\|")
        allowed = row["allowed"].replace("|", "\\|")
        lines.append(f"| `{row['key']}` | {row['type']} | `{row['default']}` | {allowed} | {row['resume'] or '?'} "
                     f"| {doc} |")
    return "\n".join(lines) + "\n"


def text(width: int = 100) -> str:
    """``ance config keys``: one block per key, for a terminal."""
    import textwrap

    out = []
    for row in rows():
        head = f"{row['key']}  ({row['type']}, default {row['default']}"
        head += f"; {row['allowed']}" if row["allowed"] else ""
        head += f"; {row['resume'] or '?'} on resume)"
        out.append(head)
        out += textwrap.wrap(row["doc"] or "UNDOCUMENTED", width=width, initial_indent="    ",
                             subsequent_indent="    ")
    return "\n".join(out) + "\n"


def commented_yaml(cfg: Config) -> str:
    """The resolved ``cfg`` as YAML, each key with its allowed values, resume class and words as a comment."""
    docs = {r["key"]: r for r in rows()}
    lines = []

    def walk(tree: dict, prefix: str, indent: str) -> None:
        for k, v in tree.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                lines.append(f"{indent}{k}:")
                walk(v, key + ".", indent + "  ")
                continue
            row = docs.get(key, {})
            note = " ".join(x for x in (f"[{row['allowed']}]" if row.get("allowed") else "",
                                        row.get("doc") or "", "(fixed on resume)" if row.get("resume") == "fixed"
                                        else "") if x)
            lines.append(f"{indent}{k}: {_yaml_value(v)}" + (f"  # {note}" if note else ""))

    walk(cfg.to_dict(), "", "")
    return "\n".join(lines) + "\n"
