"""Query and passage prompts: the text put before every query / passage before tokenizing.

e5, bge, gte, nomic and Qwen3-Embedding models are trained with them ("query: ",
"passage: ", "Instruct: {task}\\nQuery: "); encoding without them silently degrades
the model. A model's prompts live in its ``config_sentence_transformers.json``
(``"prompts": {"query": ..., "passage": ...}``, or ``"document"``);
:class:`~ance.model.biencoder.BiEncoder` reads them from there by default, the
config's ``model.query_prefix`` / ``model.passage_prefix`` / ``model.query_template``
override them, and every saved model writes them back, so sentence-transformers'
``encode(texts, prompt_name="query")`` gives ance's vectors.

A prompt is a prefix: the text is ``prompt + text``, tokenized as one string (as
sentence-transformers does; byte-level BPE tokenizes a prefix differently alone).
Its tokens count against the max length, and are never cut: a prefix that leaves no
room for text is refused (:func:`check_fits`). BM25 never sees a prompt.
"""

from __future__ import annotations

from typing import Any, Sequence

from ance.run.errors import ConfigError

KINDS = ("query", "passage")
#: sentence-transformers prompt names read as the passage prompt, first found wins
PASSAGE_NAMES = ("passage", "document", "corpus")


def from_st(prompts: dict | None) -> dict[str, str]:
    """``{"query": ..., "passage": ...}`` from a ``config_sentence_transformers.json`` ``prompts`` dict."""
    prompts = prompts or {}
    passage = next((prompts[k] for k in PASSAGE_NAMES if prompts.get(k)), "")
    return {"query": str(prompts.get("query") or ""), "passage": str(passage)}


def to_st(prompts: dict[str, str]) -> dict[str, str]:
    """The ``prompts`` dict to write: ``query``, and the passage prompt as both ``passage`` and ``document``
    (sentence-transformers' ``encode_document`` looks for ``document``)."""
    out = {}
    if prompts.get("query"):
        out["query"] = prompts["query"]
    if prompts.get("passage"):
        out["passage"] = out["document"] = prompts["passage"]
    return out


def render_template(template: str, task: str | None, where: str = "model.query_template") -> str:
    """The query prefix of ``template`` (``"Instruct: {task}\\nQuery: {text}"``): ``{task}`` filled in,
    everything before ``{text}``. ``{text}`` must come last (a prompt is a prefix, as in
    sentence-transformers)."""
    if template.count("{text}") != 1 or not template.endswith("{text}"):
        raise ConfigError(f"{where}: {template!r} must end with {{text}} (once), e.g. "
                          "'Instruct: {task}\\nQuery: {text}'")
    head = template[:-len("{text}")]
    if "{task}" in head:
        if not task:
            raise ConfigError(f"{where} uses {{task}}: set model.task, e.g. "
                              "'model.task=Given a claim, retrieve documents that support or refute it'")
        head = head.replace("{task}", str(task))
    return head


def resolve(m: Any, saved: dict[str, str]) -> dict[str, str]:
    """The prompts of config section ``m`` (``query_prefix``, ``passage_prefix``, ``query_template``,
    ``task``; None = keep the model's) over the model's ``saved`` ones."""
    out = {"query": saved.get("query", ""), "passage": saved.get("passage", "")}
    template = getattr(m, "query_template", None)
    prefix = getattr(m, "query_prefix", None)
    if template is not None and prefix is not None:
        raise ConfigError("model.query_template and model.query_prefix both set: give one of them")
    if template is not None:
        out["query"] = render_template(template, getattr(m, "task", None))
    elif prefix is not None:
        out["query"] = str(prefix)
    if getattr(m, "passage_prefix", None) is not None:
        out["passage"] = str(m.passage_prefix)
    return out


def apply(prefix: str, texts: Sequence[str]) -> Sequence[str]:
    """``texts`` with ``prefix`` before each (the same object when there is none)."""
    return texts if not prefix else Prefixed(prefix, texts)


class Prefixed(Sequence):
    """A lazy ``prefix + texts[i]`` view (a corpus is read in blocks; it is not copied)."""

    def __init__(self, prefix: str, texts: Sequence[str]):
        self.prefix, self.texts = prefix, texts

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.prefix + t for t in self.texts[i]]
        return self.prefix + self.texts[i]


def prefix_tokens(tokenizer: Any, prefix: str) -> int:
    """Content tokens the prefix takes (its tokens alone; joined to a text it may merge by one)."""
    if not prefix:
        return 0
    return len(tokenizer(prefix, add_special_tokens=False, return_attention_mask=False)["input_ids"])


def check_fits(tokenizer: Any, prefix: str, room: int, key: str, length_key: str) -> None:
    """Refuse a prefix that leaves no room for text in ``room`` content tokens, naming the keys to change."""
    n = prefix_tokens(tokenizer, prefix)
    if n and n >= room:
        raise ConfigError(f"{key} {prefix!r} is {n} tokens but {length_key} leaves room for {room} beside the "
                          f"special tokens: shorten the prefix or raise {length_key}")
