"""LoRA adapters (peft) on a :class:`~ance.model.biencoder.BiEncoder`'s towers.

With ``train.lora.r > 0`` the trainer wraps each tower in a peft ``PeftModel``
(:func:`apply`): only the adapter's parameters train, and a checkpoint holds the
adapter in peft's format (``adapter_config.json``, ``adapter_model.safetensors``;
the query tower's under ``query_encoder/``) plus, in ``ance.json``, ``lora_base``:
the base model it adapts. ``BiEncoder.load`` of such a dir loads the base, then the
adapter (:func:`attach`). An inferencer keeps the base and swaps only the adapter's
weights per version (:func:`swap_adapter`), and ``broker.send_weights`` ships the
checkpoint dir, which is the adapter: a few MB, not the model.

:func:`merge_adapter` writes a plain HF + sentence-transformers model dir with the
adapter folded into the weights (for ``ance export``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from ance.run.errors import ConfigError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
QUERY_DIR = "query_encoder"  # the BiEncoder's second tower (biencoder.QUERY_DIR)


def _peft():
    try:
        import peft
    except ImportError:
        raise ConfigError("LoRA needs the peft package: pip install peft (or ance-retriever[lora])") from None
    return peft


def is_adapter_dir(path: Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def is_lora(model) -> bool:
    return any(hasattr(t, "peft_config") for t in model.towers())


def base_of(path: Path, saved: dict) -> str:
    """The base model of the adapter checkpoint ``path``: ``ance.json``'s ``lora_base``, else peft's
    ``base_model_name_or_path``; a relative path is taken relative to ``path``."""
    base = saved.get("lora_base")
    if not base:
        try:
            base = json.loads((Path(path) / ADAPTER_CONFIG).read_text(encoding="utf-8")).get("base_model_name_or_path")
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path / ADAPTER_CONFIG}: unreadable ({exc})") from None
    if not base:
        raise ConfigError(f"{path}: a LoRA adapter that names no base model (ance.json lora_base)")
    local = Path(base).expanduser()
    if not local.is_absolute() and (Path(path) / local).is_dir():
        local = Path(path) / local
    if local.is_dir():
        return str(local)
    if str(base).startswith((".", "/", "~")):
        raise ConfigError(f"{path}: its LoRA base model {base} is not here; copy the base model there, "
                          "or merge the adapter where it is (ance.model.lora.merge_adapter)")
    return str(base)


def ance_json(model) -> dict[str, Any]:
    """The keys a LoRA model adds to ``ance.json`` ({} without LoRA)."""
    if not is_lora(model):
        return {}
    cfg = model.tower("passage").peft_config["default"]
    return {"lora_base": model.base_path,
            "lora": {"r": cfg.r, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout,
                     "target_modules": sorted(cfg.target_modules or [])}}


def linear_names(tower: nn.Module) -> list[str]:
    """Leaf names of the tower's linear layers (what target_modules can name)."""
    return sorted({name.rsplit(".", 1)[-1] for name, mod in tower.named_modules()
                   if isinstance(mod, nn.Linear) and name})


def apply(model, r: int, alpha: float, dropout: float, target_modules: list[str] | None):
    """Wrap ``model``'s towers in LoRA adapters (rank ``r``); only the adapters train. Returns ``model``.

    ``target_modules`` empty or None: peft's default for the model type (query/value for
    BERT, q_proj/v_proj for Llama-style decoders). A module name that matches nothing is a
    :class:`ConfigError` listing the linear layers there are. A model that already holds
    adapters (a resumed LoRA checkpoint) is returned as is.
    """
    if is_lora(model):
        return model
    peft = _peft()
    targets = list(target_modules) if target_modules else None
    wrapped = []
    for tower in model.towers():
        config = peft.LoraConfig(r=int(r), lora_alpha=float(alpha), lora_dropout=float(dropout),
                                 target_modules=targets)
        try:
            wrapped.append(peft.get_peft_model(tower, config))
        except ValueError as exc:
            model_type = getattr(tower.config, "model_type", type(tower).__name__)
            raise ConfigError(f"train.lora.target_modules {targets or '(peft default)'}: "
                              f"{str(exc).splitlines()[0]} ({model_type}; its linear layers: "
                              f"{', '.join(linear_names(tower))})") from None
    _set_towers(model, wrapped)
    return model


def _set_towers(model, towers: list[nn.Module]) -> None:
    if model.shared_towers:
        model.query_encoder = towers[0]
    else:
        model.passage_encoder, model.query_encoder = towers


def attach(model, path: Path, base: str):
    """Load the adapter checkpoint ``path`` onto the base ``model`` (trainable: a resume trains on)."""
    peft = _peft()
    path = Path(path)
    towers = []
    for tower, sub in zip(model.towers(), [path] if model.shared_towers else [path, path / QUERY_DIR]):
        if not is_adapter_dir(sub):
            raise ConfigError(f"{sub}: no {ADAPTER_CONFIG} for this tower of the LoRA checkpoint")
        towers.append(peft.PeftModel.from_pretrained(tower, str(sub), is_trainable=True))
    _set_towers(model, towers)
    model.base_path = base
    return model


def same_adapter_shape(model, path: Path) -> bool:
    """Whether the adapter at ``path`` has the rank and targets of ``model``'s (so its weights swap in)."""
    if not is_lora(model) or not is_adapter_dir(path):
        return False
    try:
        saved = json.loads((Path(path) / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    cfg = model.tower("passage").peft_config["default"]
    return (int(saved.get("r", -1)) == int(cfg.r) and sorted(saved.get("target_modules") or [])
            == sorted(cfg.target_modules or []))


def swap_adapter(model, path: Path) -> None:
    """Load the adapter weights of checkpoint ``path`` into ``model`` in place (the base stays)."""
    from safetensors.torch import load_file

    peft = _peft()
    path = Path(path)
    for tower, sub in zip(model.towers(), [path] if model.shared_towers else [path, path / QUERY_DIR]):
        state = load_file(str(sub / ADAPTER_WEIGHTS), device=str(next(tower.parameters()).device))
        result = peft.set_peft_model_state_dict(tower, state)
        missing = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
        if missing:
            raise ConfigError(f"{sub}: adapter weights {missing[:3]} do not fit the loaded adapter")


def merge_adapter(ckpt_dir: str | Path, out_dir: str | Path) -> Path:
    """Write ``ckpt_dir`` (a LoRA checkpoint, or any BiEncoder dir) as a plain HF + sentence-transformers
    model dir ``out_dir``, the adapters folded into the weights; its vectors equal the adapter's."""
    from ance.model.biencoder import BiEncoder  # here: biencoder imports this module

    model = BiEncoder.load(str(ckpt_dir))
    if is_lora(model):
        _set_towers(model, [t.merge_and_unload() for t in model.towers()])
    for tower in model.towers():
        tower.requires_grad_(True)
    model.save(out_dir)
    return Path(out_dir)
