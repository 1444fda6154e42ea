"""The sentence-transformers side of a saved model dir: what :class:`ance.model.biencoder.BiEncoder` reads and writes.

A BiEncoder dir is a plain HF model dir plus these files, so
``SentenceTransformer(path)`` loads it with the same pooling and
normalisation: ``modules.json`` (Transformer, Pooling, optional Normalize),
``1_Pooling/config.json``, ``sentence_bert_config.json`` and
``config_sentence_transformers.json``. Reading accepts what
sentence-transformers 2.x to 6.x write (Transformer, Pooling and Normalize
modules; cls, mean or lasttoken pooling) and the ``prompts`` of
``config_sentence_transformers.json``.
"""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
import transformers

from ance.model import prompts as prompting
from ance.model.pooling import POOLINGS
from ance.run.errors import ConfigError


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: unreadable JSON ({exc})") from None


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def read_settings(path: Path) -> dict:
    """pooling / normalize / max_seq_length / prompts from a sentence-transformers dir ({} when it is not one)."""
    modules_file = path / "modules.json"
    if not modules_file.is_file():
        return {}
    found: dict = {"normalize": False}
    st_config = path / "config_sentence_transformers.json"
    if st_config.is_file():
        found["prompts"] = prompting.from_st(read_json(st_config).get("prompts"))
    for module in read_json(modules_file):
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        sub = path / module.get("path", "")
        if kind == "Transformer":
            cfg_file = sub / "sentence_bert_config.json"
            if cfg_file.is_file() and read_json(cfg_file).get("max_seq_length"):
                found["max_seq_length"] = int(read_json(cfg_file)["max_seq_length"])
        elif kind == "Pooling":
            cfg = read_json(sub / "config.json")
            mode = cfg.get("pooling_mode")
            if mode is None:  # the legacy boolean keys
                modes = [m for m in ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens",
                                     "weightedmean_tokens", "lasttoken") if cfg.get(f"pooling_mode_{m}")]
                mode = modes[0] if len(modes) == 1 else modes
            mode = ({"cls_token": "cls", "mean_tokens": "mean", "lasttoken": "last"}.get(mode, mode)
                    if isinstance(mode, str) else mode)
            if mode not in POOLINGS:
                raise ConfigError(f"{sub}: pooling {mode!r} is not supported (only {', '.join(POOLINGS)})")
            found["pooling"] = mode
        elif kind == "Normalize":
            found["normalize"] = True
        else:
            raise ConfigError(f"{modules_file}: module {module.get('type')!r} is not supported by BiEncoder "
                              "(Transformer, Pooling and Normalize are)")
    return found


def write_settings(path: Path, *, dim: int, pooling: str, normalize: bool, similarity: str,
                   max_seq_length: int, prompts: dict[str, str] | None = None) -> None:
    """Write the sentence-transformers files of a model dir whose HF files are in ``path``.

    ``max_seq_length`` is the length the model was trained / is encoded at (sentence-transformers
    cuts there); ``prompts`` ``{"query": .., "passage": ..}`` go to ``prompt_name`` "query",
    "passage" and "document"."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
        (path / "2_Normalize").mkdir(exist_ok=True)
    write_json(path / "modules.json", modules)
    # The legacy key names: every sentence-transformers version (2.x to 6.x) reads them.
    write_json(path / "1_Pooling" / "config.json", {
        "word_embedding_dimension": dim,
        "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_lasttoken": pooling == "last",
        "include_prompt": True,
    })
    write_json(path / "sentence_bert_config.json", {"max_seq_length": int(max_seq_length), "do_lower_case": False})
    write_json(path / "config_sentence_transformers.json", {
        "__version__": version_info(), "prompts": prompting.to_st(prompts or {}),
        "default_prompt_name": None,
        "similarity_fn_name": similarity,
    })


def version_info() -> dict:
    info = {"pytorch": torch.__version__, "transformers": transformers.__version__}
    try:
        info["sentence_transformers"] = version("sentence-transformers")
    except PackageNotFoundError:  # not installed: the files are still valid for any later version
        info["sentence_transformers"] = "2.0.0"
    return info
