"""One typed config for a run: dataclasses, YAML, dotted overrides.

``load_config("configs/x.yaml", ["train.lr=3e-5", "run_dir=runs/y"])`` reads the
file, applies the overrides (values parse as YAML scalars) and validates every
field. Unknown keys are errors that list the valid ones. The resolved config
is what ``save_config`` writes to the run directory (:attr:`ance.run.rundir.RunDir.config`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import reprlib

from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from ance.run.config_checks import check_ranges
from ance.run.data_checks import check_columns, is_record_data
from ance.run.errors import ConfigError
from ance.run.suggest import check_override_keys, override_for, unknown_key_message
from ance.run.rundir import CONFIG, RunDir
from ance.run.sections import (  # noqa: F401  (the sections are part of the config's face)
    _CHOICES, _POSITIVE, BrokerConfig, Config, DataConfig, EvalConfig, InferencerConfig, LaunchConfig, ModelConfig,
    NegativesConfig, TelemetryConfig, TrainConfig, _plain,
)


#: the most YAML nodes a config may hold once its aliases are expanded: a config has a few hundred; a
#: "billion laughs" alias bomb (9 aliases of 9 aliases ...) has 9**9 and took 50 s, then all memory
MAX_YAML_NODES = 100_000

_SHOW = reprlib.Repr()
_SHOW.maxstring, _SHOW.maxother, _SHOW.maxlist, _SHOW.maxdict, _SHOW.maxlevel = 60, 60, 6, 6, 3


def _show(value: Any) -> str:
    """``repr(value)``, cut short: an error names a value, it never prints a huge one."""
    return _SHOW.repr(value)


def _cut(text: str, n: int = 120) -> str:
    return text if len(text) <= n else f"{text[:n - 3]}..."


def load_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load(text)``, refused (:class:`ConfigError` naming ``where``) when its aliases expand to
    more than :data:`MAX_YAML_NODES` nodes, refer to themselves, or nest too deeply. PyYAML builds an
    alias once and shares it, so the load is cheap; it is walking or printing the value that explodes."""
    try:
        value = yaml.safe_load(text)
        _count_nodes(value, {}, set())
    except RecursionError:
        raise ConfigError(f"{where}: YAML nested too deeply") from None
    except _TooBig as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return value


class _TooBig(Exception):
    pass


def _count_nodes(value: Any, seen: dict[int, int], open_: set[int]) -> int:
    """Nodes of ``value`` with every alias expanded, counted once per shared object (so in linear time)."""
    if not isinstance(value, (list, dict)):
        return 1
    key = id(value)
    if key in seen:
        return seen[key]
    if key in open_:
        raise _TooBig("a YAML alias refers to itself (a recursive value); write the value out")
    open_.add(key)
    children = list(value.keys()) + list(value.values()) if isinstance(value, dict) else value
    total = 1 + sum(_count_nodes(c, seen, open_) for c in children)
    open_.discard(key)
    if total > MAX_YAML_NODES:
        raise _TooBig(f"YAML aliases expand to more than {MAX_YAML_NODES} values (an alias bomb?); write the "
                      "config out without nested aliases")
    seen[key] = total
    return total


def _convert(value: Any, typ: Any, where: str) -> Any:
    """Coerce a YAML value to a dataclass field's type, or raise ConfigError."""
    origin = get_origin(typ)
    args = get_args(typ)
    if origin is not None and type(None) in args:  # Optional[X]
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], where)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {_show(value)}")
        return [_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:  # a mapping checked by its section's own rules (data.columns: ance.run.data_checks)
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{where}: expected a mapping, got {_show(value)}")
        return dict(value)
    if origin is tuple:  # fixed length: [lo, hi] in YAML, a tuple once loaded
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{where}: expected a list of {len(args)} values, got {_show(value)}")
        return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {_show(value)}")
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: expected an integer, got {_show(value)}")
        return value
    if typ is float:
        if isinstance(value, str):  # YAML 1.1 reads "3e-5" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {_show(value)}")
        return float(value)
    if typ is str:
        if isinstance(value, bool) and {"on", "off"} <= set(_CHOICES.get(where, ())):
            return "on" if value else "off"  # YAML 1.1 reads a bare on / off as true / false
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {_show(value)}")
        return str(value)
    raise ConfigError(f"{where}: unsupported type {typ!r}")


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {_show(values)}")
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(unknown_key_message(f"{prefix}.{unknown[0]}" if prefix else unknown[0], Config))
    kwargs = {}
    for name in names:
        if name not in values:
            continue
        where = f"{prefix}.{name}" if prefix else name
        typ = hints[name]
        if dataclasses.is_dataclass(typ):  # `data:` with nothing is the defaults; `data: 0` is an error
            kwargs[name] = _build(typ, {} if values[name] is None else values[name], where)
        else:
            kwargs[name] = _convert(values[name], typ, where)
    return cls(**kwargs)


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: {part} is not a section")
        node = child
    node[parts[-1]] = value


#: override values taken as typed, not parsed as YAML
_TEXT_KEYS = frozenset({"model.query_prefix", "model.passage_prefix", "model.query_template", "model.task"})


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` → nested dict; values parse as YAML scalars."""
    tree: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {_show(item)}: expected key=value, e.g. train.lr=3e-5")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override {_show(item)}: empty key")
        if key in _TEXT_KEYS:  # prompts: the text as typed ("query: " is not YAML's {query: null}), \n a newline
            _set_dotted(tree, key, None if raw == "null" else raw.replace("\\n", "\n"))
            continue
        try:
            value = load_yaml(raw, f"override {key}") if raw != "" else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {_show(item)}: value is not valid YAML ({exc})") from exc
        _set_dotted(tree, key, value)
    return tree


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_rank_window(value: Any) -> tuple[int, int]:
    """``(lo, hi)``, ranks ``[lo, hi)`` with ``0 <= lo < hi``: the one check of a rank window (config,
    ``ance mine --rank-window``, :func:`ance.negatives.select.select_negatives`); ValueError otherwise."""
    try:
        lo, hi = (int(x) for x in value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"rank_window must be two integers (lo, hi), got {value!r}") from exc
    if not 0 <= lo < hi:
        raise ValueError(f"rank_window must satisfy 0 <= lo < hi, got {value!r}")
    return lo, hi


def validate(cfg: Config) -> Config:
    """Check choices, ranges and cross-field rules; return ``cfg``."""
    flat = _flatten(cfg.to_dict())
    for key, choices in _CHOICES.items():
        if flat[key] not in choices:
            raise ConfigError(f"{key}: {_show(flat[key])} is not one of {', '.join(choices)}")
    for key in _POSITIVE:
        if flat[key] <= 0:
            raise ConfigError(f"{key}: must be > 0, got {flat[key]}")
    _validate_horizon(cfg.train)
    try:
        lo, hi = cfg.negatives.rank_window = parse_rank_window(cfg.negatives.rank_window)
    except ValueError as exc:
        raise ConfigError(f"negatives.rank_window: {exc}; write [lo, hi]") from None
    if hi > cfg.negatives.depth:
        raise ConfigError(f"negatives.rank_window: hi={hi} exceeds negatives.depth={cfg.negatives.depth}")
    if cfg.negatives.max_gap < 0:
        raise ConfigError("negatives.max_gap: must be >= 0")
    if cfg.negatives.n_per_query > cfg.negatives.keep:
        raise ConfigError("negatives.n_per_query must be <= negatives.keep")
    check_columns(cfg.data.columns)
    if ("static" in (cfg.negatives.source, cfg.negatives.warmup) and not cfg.negatives.static_file
            and not is_record_data(cfg.data)):
        raise ConfigError("negatives.static_file is required when negatives.source or negatives.warmup is static "
                          "(make one with `ance mine`, or train from a Tevatron/pairs file that holds negatives)")
    _validate_negative_options(cfg.negatives, own_negatives=is_record_data(cfg.data))
    if cfg.train.chunk_size is not None and cfg.train.chunk_size <= 0:
        raise ConfigError("train.chunk_size: must be > 0, or null for no GradCache")
    if not 0.0 <= cfg.train.warmup_ratio < 1.0:
        raise ConfigError("train.warmup_ratio: must be in [0, 1)")
    check_ranges(cfg)
    return cfg


def _validate_horizon(t: TrainConfig) -> None:
    """Exactly one of train.max_steps and train.epochs, > 0; the progress interval >= 0."""
    if (t.max_steps is None) == (t.epochs is None):
        raise ConfigError(f"train.max_steps={t.max_steps} and train.epochs={t.epochs}: give exactly one of the "
                          "two (e.g. train.epochs=3 train.max_steps=null)")
    if t.max_steps is not None and t.max_steps <= 0:
        raise ConfigError(f"train.max_steps: must be > 0, got {t.max_steps}")
    if t.epochs is not None and not 0 < t.epochs < float("inf"):
        raise ConfigError(f"train.epochs: must be a number > 0, got {t.epochs}")
    if not 0 <= t.progress_every_s < float("inf"):
        raise ConfigError(f"train.progress_every_s: must be >= 0 seconds (0: no progress), got {t.progress_every_s}")


def _validate_negative_options(neg: NegativesConfig, own_negatives: bool = False) -> None:
    """The selection and mixing options (docs/results.md, SQuAD) and the sources they need."""
    if neg.rank_decay <= 0:
        raise ConfigError(f"negatives.rank_decay: must be > 0 (ranks), got {neg.rank_decay}")
    if neg.score_temperature <= 0:
        raise ConfigError(f"negatives.score_temperature: must be > 0, got {neg.score_temperature}")
    if neg.denoise_ratio is not None and not 0 < neg.denoise_ratio < float("inf"):
        raise ConfigError(f"negatives.denoise_ratio: must be a finite number > 0 (e.g. 0.95: drop candidates "
                          f"scored above 0.95 x the positive's score), or null for none; got {neg.denoise_ratio}")
    if not 0.0 <= neg.static_min_coverage <= 1.0:
        raise ConfigError(f"negatives.static_min_coverage: must be a fraction in [0, 1], got "
                          f"{neg.static_min_coverage}")
    if not 0.0 <= neg.mix_static <= 1.0:
        raise ConfigError(f"negatives.mix_static: must be a fraction in [0, 1], got {neg.mix_static}")
    if neg.mix_static > 0 and (neg.source != "async" or not (neg.static_file or own_negatives)):
        raise ConfigError("negatives.mix_static mixes static into refreshed negatives: it needs "
                          "negatives.source=async and negatives.static_file (make one with `ance mine`)")
    if neg.source == "async" and neg.warmup == "bm25" and neg.sampling == "score":
        raise ConfigError("negatives.sampling=score needs the dense model's scores, which the bm25 warm-up "
                          "does not give: use negatives.warmup=inbatch or static, or sampling=rank")


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> Config:
    """Read ``path`` (YAML; None = defaults), apply dotted ``overrides``, validate."""
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            where = "" if p.is_absolute() else f" (a relative path, resolved against {os.getcwd()})"
            raise ConfigError(f"{p}: config file not found{where}")
        try:
            tree = load_yaml(p.read_text(encoding="utf-8"), str(p)) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{p}:{mark.line + 1}" if mark is not None else str(p)
            raise ConfigError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from exc
        if not isinstance(tree, dict):
            raise ConfigError(f"{p}: expected a mapping at the top level")
    if tree:
        try:  # the file on its own: its errors name the file
            _build(Config, tree, "")
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}" if path else str(exc)) from None
    overrides = list(overrides or [])
    check_override_keys(overrides, Config)
    extra = parse_overrides(overrides)
    tree = _merge(_one_horizon(tree, extra), extra)
    try:
        cfg = _build(Config, tree, "")
    except ConfigError as exc:  # the file alone was fine: an override is wrong, name it
        key = str(exc).split(":", 1)[0].split("[", 1)[0]
        item = override_for(key, overrides)
        raise ConfigError(f"override {_cut(item)}: {exc}" if item else str(exc)) from None
    return validate(cfg)


def _one_horizon(tree: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """train.max_steps and train.epochs are one of the two: the command line's choice wins over the
    file's, and a file (or command line) giving train.epochs alone leaves max_steps out (its default)."""
    file_t, over_t = tree.get("train") or {}, extra.get("train") or {}
    if not isinstance(file_t, dict) or not isinstance(over_t, dict):
        return tree
    given = {**file_t, **over_t}
    drop = None
    if over_t.get("epochs") is not None and "max_steps" not in over_t:
        drop = "max_steps"
    elif over_t.get("max_steps") is not None and "epochs" not in over_t:
        drop = "epochs"
    elif given.get("epochs") is not None and "max_steps" not in given:
        drop = "max_steps"
    if drop is None:
        return tree
    return {**tree, "train": {**file_t, drop: None}}


def config_from_dict(tree: dict[str, Any]) -> Config:
    return validate(_build(Config, tree, ""))


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def config_hash(cfg: Config) -> str:
    """Digest of the settings that shape the model and data (not run_dir)."""
    tree = cfg.to_dict()
    tree.pop("run_dir", None)
    for section in ("launch", "telemetry"):
        tree.pop(section, None)
    blob = json.dumps(tree, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def save_config(cfg: Config, run_dir: str | os.PathLike | None = None) -> Path:
    """Write the resolved config into the run directory atomically."""
    run = Path(run_dir if run_dir is not None else cfg.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    target = RunDir(run).config
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(dump_config(cfg))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, target)
    return target


def load_run_config(run_dir: str | os.PathLike, overrides: list[str] | None = None) -> Config:
    """The resolved config of an existing run (for --resume and the other roles)."""
    path = RunDir(run_dir).config
    if not path.is_file():
        raise ConfigError(f"{path}: no {path.name} in the run directory; is {run_dir} a run directory?")
    cfg = load_config(path, overrides)
    cfg.run_dir = str(run_dir)
    return cfg


def add_config_arguments(parser, run_dir_flag: str = "--run-dir",
                         run_dir_help: str = f"use RUN_DIR/{CONFIG} (the resolved config of an existing run)") -> None:
    """The config flags every role takes: CONFIG [key=value ...] or ``run_dir_flag`` RUN_DIR.

    ``ance train`` and ``ance launch`` name the run-directory flag ``--resume``
    (the run's config, and its checkpoints); the others ``--run-dir``.
    """
    parser.add_argument("config", nargs="?", help=f"YAML config file (see configs/); omit with {run_dir_flag}")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted overrides, e.g. train.lr=3e-5 run_dir=runs/x")
    parser.add_argument(run_dir_flag, dest="from_run_dir", metavar="RUN_DIR", default=None, help=run_dir_help)
    parser.set_defaults(run_dir_flag=run_dir_flag)


def config_from_args(args) -> Config:
    """Resolve the config from ``add_config_arguments`` flags.

    A first positional that looks like ``key=value`` is an override, so
    ``ance broker --run-dir R broker.address=...`` works too.
    """
    config = getattr(args, "config", None)
    overrides = list(getattr(args, "overrides", None) or [])
    if config is not None and "=" in config and not Path(config).is_file():
        overrides.insert(0, config)
        config = None
    run_dir = getattr(args, "from_run_dir", None)
    flag = getattr(args, "run_dir_flag", "--run-dir")
    if run_dir:
        if config is not None:
            raise ConfigError(f"give either CONFIG or {flag}, not both")
        return load_run_config(run_dir, overrides)
    if config is None:
        raise ConfigError(f"a config file is required (e.g. configs/tiny-cpu.yaml), or {flag} RUN_DIR")
    return load_config(config, overrides)
