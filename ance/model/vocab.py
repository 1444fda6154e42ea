"""A tokenizer that knows words: a model dir without its tokenizer files loads an empty vocabulary.

``AutoTokenizer.from_pretrained`` on a BERT dir that lost ``vocab.txt`` / ``tokenizer.json`` builds a
tokenizer of five special tokens without a word, and every text becomes ``[UNK]``: retrieval and
training ran on and exited 0 with every document scored the same. :func:`check_vocabulary` refuses it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ance.run.errors import ConfigError

#: words any vocabulary of English text holds
COMMON_WORDS = ("the", "of", "and")
#: the files a tokenizer is built from (one of them is enough)
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "merges.txt", "sentencepiece.bpe.model",
                   "spiece.model", "tokenizer.model")


def check_vocabulary(tokenizer: Any, source: str) -> None:
    """Raise :class:`ConfigError` naming ``source`` (a dir or hub id) when its tokenizer has an unknown
    token and maps every one of :data:`COMMON_WORDS` to it (tokenizers without one, byte-level BPE,
    cannot lose a word and pass)."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None:
        return
    ids = [tokenizer(word, add_special_tokens=False)["input_ids"] for word in COMMON_WORDS]
    if not all(all(i == unk for i in word) for word in ids):
        return
    path = Path(source)
    found = [name for name in TOKENIZER_FILES if (path / name).is_file()] if path.is_dir() else []
    files = (f"it has none of the tokenizer files ({', '.join(TOKENIZER_FILES[:2])}, ...): copy them from the "
             "base model" if not found else f"its tokenizer files ({', '.join(found)}) hold no vocabulary: "
             "copy them again from the base model")
    raise ConfigError(f"{source}: the tokenizer maps {', '.join(repr(w) for w in COMMON_WORDS)} to "
                      f"{tokenizer.unk_token} (an empty vocabulary); {files}")
