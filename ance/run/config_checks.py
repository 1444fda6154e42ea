"""Ranges of every numeric config field and the relations between fields.

:func:`check_ranges` is called by :func:`ance.run.config.validate` after the
choices and the simpler rules there; each failure is a :class:`ConfigError`
naming the key, the value and what to do. The rules, and why:

* rates, temperatures, timeouts are finite and > 0 (``.inf``/``.nan`` parse as
  YAML floats and would train on with a NaN loss);
* ``negatives.max_gap >= train.checkpoint_every`` with async negatives: a
  refresh starts at a checkpoint, so a smaller gap waits for negatives that
  can never come (the trainer hangs until ``wait_timeout_s``);
* ``broker.worker_timeout_s >= 2 * broker.heartbeat_s``: a worker is not
  dropped between two of its own heartbeats;
* addresses parse as ``tcp://host:port``, ``ipc://path`` or ``inproc://name``;
  ports lie in 1..65535 (0..65535 for Prometheus, 0 meaning any free port);
* devices are ``auto``, ``cpu``, ``cuda`` or ``cuda:N``;
* token lengths stay within :data:`MAX_LENGTH` (no BERT-like model has more
  positions; the trainer checks the model's own limit once it is loaded).
"""

from __future__ import annotations

import math
import re
from typing import Any

from ance.run.errors import ConfigError

MAX_LENGTH = 8192
MIN_FRAME_BYTES, MAX_FRAME_BYTES = 1 << 20, 1 << 31
_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
_TCP = re.compile(r"^tcp://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.*-]+):(\*|\d+)$")


def _positive(key: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ConfigError(f"{key}: must be a finite number > 0, got {value}")


def _non_negative(key: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ConfigError(f"{key}: must be a finite number >= 0, got {value}")


def check_address(key: str, value: str | None) -> None:
    """``tcp://host:port`` (port 1..65535, or ``*`` to let the system pick), ``ipc://path`` or ``inproc://name``."""
    if value is None:
        return
    m = _TCP.match(value)
    if m:
        port = m.group(2)
        if port == "*" or 1 <= int(port) <= 65535:
            return
        raise ConfigError(f"{key}={value}: port {port} is not in 1..65535")
    if re.match(r"^(ipc|inproc)://.+", value):
        return
    raise ConfigError(f"{key}={value!r}: expected tcp://HOST:PORT (e.g. tcp://127.0.0.1:5555), ipc://PATH or "
                      "inproc://NAME")


def check_device(key: str, value: str) -> None:
    if not _DEVICE.match(value):
        raise ConfigError(f"{key}={value!r}: expected auto, cpu, cuda or cuda:N")


def check_lora(lora: Any) -> None:
    """train.lora: a rank >= 0 (0 = off), alpha > 0, dropout in [0, 1)."""
    if isinstance(lora.r, bool) or lora.r < 0:
        raise ConfigError(f"train.lora.r: must be >= 0 (0: no LoRA), got {lora.r}")
    _positive("train.lora.alpha", lora.alpha)
    if not 0.0 <= lora.dropout < 1.0:
        raise ConfigError(f"train.lora.dropout: must be in [0, 1), got {lora.dropout}")
    if any(not str(name).strip() for name in lora.target_modules):
        raise ConfigError("train.lora.target_modules: an empty module name; give names such as [q_proj, v_proj]")


def check_prompts(m: Any) -> None:
    """model.query_template ends with {text} and excludes query_prefix; {task} needs model.task
    (the model's rendering: ance.model.prompts)."""
    if m.query_template is None:
        return
    if m.query_prefix is not None:
        raise ConfigError("model.query_template and model.query_prefix both set: give one of them")
    if m.query_template.count("{text}") != 1 or not m.query_template.endswith("{text}"):
        raise ConfigError(f"model.query_template: {m.query_template!r} must end with {{text}} (once), e.g. "
                          "'Instruct: {task}\\nQuery: {text}'")
    if "{task}" in m.query_template and not m.task:
        raise ConfigError("model.query_template uses {task}: set model.task")


def check_ranges(cfg: Any) -> None:
    """Raise :class:`ConfigError` at the first field out of range or relation broken."""
    t, m, n, b = cfg.train, cfg.model, cfg.negatives, cfg.broker
    check_lora(t.lora)
    check_prompts(m)
    if not str(cfg.run_dir).strip():
        raise ConfigError("run_dir: empty; give a directory, e.g. run_dir=runs/x")
    if not 0 <= cfg.seed < 2 ** 63:  # torch.manual_seed takes at most 64 bits
        raise ConfigError(f"seed: must be in [0, 2**63), got {cfg.seed}")
    if not str(cfg.data.path).strip():
        raise ConfigError("data.path: empty; give a dataset folder or a known name")
    for key, value in (("data.max_docs", cfg.data.max_docs), ("data.max_queries", cfg.data.max_queries)):
        if value is not None and value <= 0:
            raise ConfigError(f"{key}: must be > 0, or null for all, got {value}")
    for key, value in (("train.lr", t.lr), ("train.max_grad_norm", t.max_grad_norm),
                       ("model.temperature", m.temperature), ("negatives.wait_timeout_s", n.wait_timeout_s),
                       ("broker.heartbeat_s", b.heartbeat_s), ("broker.worker_timeout_s", b.worker_timeout_s),
                       ("broker.shard_deadline_s", b.shard_deadline_s)):
        _positive(key, value)
    _non_negative("train.weight_decay", t.weight_decay)
    if not math.isfinite(t.gist_margin):
        raise ConfigError(f"train.gist_margin: must be finite, got {t.gist_margin}")
    for key, value in (("model.query_max_length", m.query_max_length),
                       ("model.passage_max_length", m.passage_max_length)):
        if not 4 <= value <= MAX_LENGTH:
            raise ConfigError(f"{key}: must be in 4..{MAX_LENGTH} tokens, got {value}")
    check_device("train.device", t.device)
    check_device("inferencer.device", cfg.inferencer.device)
    if n.source == "async" and n.max_gap < t.checkpoint_every:
        raise ConfigError(f"negatives.max_gap={n.max_gap} is smaller than train.checkpoint_every="
                          f"{t.checkpoint_every}: refreshes start at checkpoints, so the trainer would wait for "
                          "negatives that never come; raise max_gap or checkpoint more often")
    if b.worker_timeout_s < 2 * b.heartbeat_s:
        raise ConfigError(f"broker.worker_timeout_s={b.worker_timeout_s} must be at least twice broker.heartbeat_s="
                          f"{b.heartbeat_s}, or live workers are dropped between heartbeats")
    check_address("broker.address", b.address)
    if b.client_keys and not b.curve_keys:
        raise ConfigError("broker.client_keys needs broker.curve_keys (the broker's keys folder): per-worker keys "
                          "are CURVE keys; set broker.curve_keys=DIR and broker.client_keys=DIR/clients")
    check_address("broker.bind", b.bind)
    if not MIN_FRAME_BYTES <= b.max_frame_bytes <= MAX_FRAME_BYTES:
        raise ConfigError(f"broker.max_frame_bytes={b.max_frame_bytes}: must be in {MIN_FRAME_BYTES}.."
                          f"{MAX_FRAME_BYTES} (1 MiB..2 GiB)")
    if b.send_weights and b.max_frame_bytes < 2 * MIN_FRAME_BYTES:  # 1 MiB of each frame is the job itself
        raise ConfigError(f"broker.max_frame_bytes={b.max_frame_bytes} leaves no room for weights with "
                          "broker.send_weights=true (1 MiB of a frame is the job itself): raise it to at least "
                          f"{2 * MIN_FRAME_BYTES}, or set broker.send_weights=false")
    port = cfg.telemetry.prometheus_port
    if port is not None and not 0 <= port <= 65535:
        raise ConfigError(f"telemetry.prometheus_port={port}: must be in 0..65535 (0: any free port), or null "
                          "for none")
    launch = cfg.launch
    if launch.inferencers < 0 or launch.max_restarts < 0:
        raise ConfigError("launch.inferencers and launch.max_restarts: must be >= 0")
    if not launch.restart_backoff_s:
        raise ConfigError("launch.restart_backoff_s: give at least one delay, e.g. [1, 2, 5]")
    for i, delay in enumerate(launch.restart_backoff_s):
        _non_negative(f"launch.restart_backoff_s[{i}]", delay)
    check_eval(cfg)


def check_eval(cfg: Any) -> None:
    """eval.every >= 0 (or null), eval.best_metric a measure name such as ndcg@10 (or null)."""
    ev = getattr(cfg, "eval", None)
    if ev is None:
        return
    if ev.every is not None and ev.every < 0:
        raise ConfigError(f"eval.every: must be >= 0 steps (0: never, null: start and end), got {ev.every}")
    if ev.best_metric is not None and not re.match(r"^(ndcg|mrr|recall|map|precision)@[1-9][0-9]*$",
                                                   ev.best_metric):
        raise ConfigError(f"eval.best_metric: {ev.best_metric!r} is not a measure; use e.g. ndcg@10, mrr@10, "
                          "recall@100, or null for no best alias")


def check_model_lengths(cfg: Any, max_positions: int | None, model: str) -> None:
    """The token lengths fit the loaded model's position embeddings."""
    if not max_positions:
        return
    for key, value in (("model.query_max_length", cfg.model.query_max_length),
                       ("model.passage_max_length", cfg.model.passage_max_length)):
        if value > max_positions:
            raise ConfigError(f"{key}={value} exceeds the {max_positions} positions of {model}; "
                              f"set {key}={max_positions} or less")
