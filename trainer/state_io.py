"""The trainer state of a checkpoint as JSON + safetensors: nothing on disk can run code.

``torch.load`` of a pickle runs whatever the file says, so a planted
``trainer_state.pt`` would execute on ``--resume``. Instead the state (optimizer,
scheduler, RNGs, sampler, negatives table) is split in two files:

* ``trainer_state.safetensors``: every tensor and numpy array, by a generated key;
* ``trainer_state.json``: the structure, with plain values (ints of any size,
  floats, strings, bools, None) and tagged nodes for what JSON lacks:
  ``{"__tensor__": key}``, ``{"__ndarray__": key}``, ``{"__tuple__": [...]}`` and
  ``{"__items__": [[key, value], ...]}`` for a dict whose keys are not all
  strings (the optimizer's int parameter ids).

Loading reads only these two formats; a value of any other type is refused on
save (a bug) and an unknown tag on load (a foreign or damaged file).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ance.run.errors import CheckpointError
from ance.run.rundir import LEGACY_TRAINER_STATE, TRAINER_STATE, TRAINER_STATE_TENSORS

STATE_JSON, STATE_TENSORS, LEGACY_PICKLE = TRAINER_STATE, TRAINER_STATE_TENSORS, LEGACY_TRAINER_STATE
_TAGS = ("__tensor__", "__ndarray__", "__tuple__", "__items__")


def _encode(obj: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"__float__": repr(obj)}
    if isinstance(obj, np.generic):
        return _encode(obj.item(), tensors, path)
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        key = f"t{len(tensors)}"
        tensors[key] = torch.from_numpy(np.ascontiguousarray(obj).copy())
        return {"__ndarray__": key}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{path}[{i}]") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{path}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, tensors, f"{path}.{k}") for k, v in obj.items()}
        return {"__items__": [[_encode(k, tensors, path), _encode(v, tensors, f"{path}[{k!r}]")]
                              for k, v in obj.items()]}
    raise TypeError(f"trainer state {path}: cannot store a {type(obj).__name__} without pickle")


def save_state(state: dict[str, Any], directory: str | Path) -> None:
    """Write ``state`` as ``trainer_state.json`` + ``trainer_state.safetensors`` into ``directory``."""
    directory = Path(directory)
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(state, tensors, "state")
    save_file(tensors, str(directory / STATE_TENSORS))
    with open(directory / STATE_JSON, "w", encoding="utf-8") as fh:
        json.dump(tree, fh)


def _decode(node: Any, tensors, where: str) -> Any:
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    if isinstance(node, list):
        return [_decode(v, tensors, where) for v in node]
    if not isinstance(node, dict):
        raise CheckpointError(f"{where}: unexpected {type(node).__name__} in the trainer state")
    if len(node) == 1:
        (tag, value), = node.items()
        if tag in ("__tensor__", "__ndarray__"):
            if not isinstance(value, str) or value not in tensors:
                raise CheckpointError(f"{where}: tensor {value!r} missing from {STATE_TENSORS}")
            t = tensors[value]
            return t if tag == "__tensor__" else t.numpy()
        if tag == "__tuple__" and isinstance(value, list):
            return tuple(_decode(v, tensors, where) for v in value)
        if tag == "__items__" and isinstance(value, list):
            if not all(isinstance(kv, list) and len(kv) == 2 for kv in value):
                raise CheckpointError(f"{where}: malformed __items__ in the trainer state")
            return {_decode(k, tensors, where): _decode(v, tensors, where) for k, v in value}
        if tag == "__float__" and value in ("nan", "inf", "-inf"):
            return float(value)
    if any(k.startswith("__") for k in node):
        raise CheckpointError(f"{where}: unknown tag {sorted(node)[0]!r} in the trainer state")
    return {k: _decode(v, tensors, where) for k, v in node.items()}


def load_state(directory: str | Path) -> dict[str, Any]:
    """The trainer state of checkpoint ``directory``; never unpickles.

    Raises :class:`CheckpointError` when the state is missing, malformed, or only
    present as a legacy pickle (``trainer_state.pt``), which is refused.
    """
    directory = Path(directory)
    js, st = directory / STATE_JSON, directory / STATE_TENSORS
    if not js.is_file() or not st.is_file():
        if (directory / LEGACY_PICKLE).exists():
            raise CheckpointError(
                f"{directory / LEGACY_PICKLE}: refusing to load a pickled trainer state (unpickling can run "
                "code); ance reads only trainer_state.json + trainer_state.safetensors. Start a fresh run, or "
                "resume from a checkpoint written by this version")
        raise CheckpointError(f"{js}: missing; this checkpoint holds model weights only and cannot resume "
                              "training")
    try:
        with open(js, encoding="utf-8") as fh:
            tree = json.load(fh)
        state = _decode(tree, load_file(str(st), device="cpu"), str(js))
    except CheckpointError:
        raise
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{directory}: unreadable trainer state ({type(exc).__name__}: {exc}); "
                              "resume from an older checkpoint") from None
    except Exception as exc:  # safetensors raises its own SafetensorError for a damaged header
        raise CheckpointError(f"{st}: unreadable ({type(exc).__name__}: {exc}); resume from an older "
                              "checkpoint") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{js}: the trainer state is not a mapping")
    return state
