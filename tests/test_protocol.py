"""Wire protocol: every message type round-trips; every rejection names its reason."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from ance.run.errors import ProtocolError
from ance.wire.protocol import (PROTOCOL_VERSION, SPEC, check_message, unpack_message, pack_message, pack_array,
                                unpack_array)

MAX = 1 << 20

ARR_I = pack_array(np.arange(6, dtype=np.int64).reshape(2, 3))
ARR_F = pack_array(np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3))

EXAMPLES = {
    "hello": dict(role="inferencer", name="inferencer-0", pid=123, device="cpu", data_fingerprint="ab12",
                  nonce="00" * 16, state="busy", job_id=7),
    "challenge": dict(nonce="11" * 16, proof="ab" * 32),
    "auth": dict(nonce="11" * 16, proof="cd" * 32),
    "welcome": dict(broker_id="host-1-2", latest_version=-1, heartbeat_s=1.0),
    "heartbeat": dict(state="idle", step=3, job_id=9),
    "checkpoint": dict(step=200, path="runs/x/checkpoints/step-000200", written_at=1.7e9),
    "job": dict(job_id=1, version=200, ckpt_path="/c", shard=0, n_shards=2, doc_lo=0, doc_hi=50, depth=20,
                chunk_queries=8, eval=True, data_fingerprint="ab12", eval_depth=100,
                weights={"config.json": b"{}", "1_Pooling/config.json": b"{}"}),
    "topk": dict(job_id=1, version=200, shard=0, chunk=0, n_chunks=1, q_lo=0, q_hi=2, ids=ARR_I, scores=ARR_F,
                 split="train"),
    "shard_done": dict(job_id=1, version=200, shard=0, stats={"load_s": 1.0, "n_docs": 50}),
    "shard_failed": dict(job_id=1, shard=0, reason="boom", version=200),
    "negatives": dict(version=200, chunk=0, n_chunks=1, q_idx=pack_array(np.arange(2, dtype=np.int32)),
                      neg=pack_array(np.full((2, 3), -1, np.int32)), sent_at=1.7e9),
    "version_done": dict(version=200, n_shards=2, stats={"eval_ndcg@10": 0.5, "overlap": None}),
    "status": dict(step=5, version_in_use=0, gap=5),
    "stop": dict(reason="done"),
    "error": dict(reason="bad", of_type=None),
}


def test_examples_cover_every_type():
    assert set(EXAMPLES) == set(SPEC)


@pytest.mark.parametrize("type_", sorted(EXAMPLES))
def test_round_trip(type_):
    msg = unpack_message(pack_message(type_, **EXAMPLES[type_]), MAX)
    assert msg.type == type_ and msg["v"] == PROTOCOL_VERSION
    for key, value in EXAMPLES[type_].items():
        assert msg[key] == value


def test_arrays_round_trip_exactly():
    a = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)
    for arr in (a, a.astype(np.float16), np.arange(7, dtype=np.int32), np.zeros((0, 3), np.int64),
                a.astype(">f4")):
        back = unpack_array(unpack_message(pack_message("topk", **{**EXAMPLES["topk"], "ids": pack_array(arr)}), MAX)["ids"])
        assert back.shape == arr.shape and np.array_equal(back, arr) and back.dtype.byteorder in "<=|"


def test_optional_fields_may_be_left_out_or_none():
    msg = unpack_message(pack_message("hello", role="trainer", name="trainer", pid=1, device="", data_fingerprint="x",
                        nonce="ab", have_version=None), MAX)
    assert "have_version" not in msg
    assert unpack_message(pack_message("heartbeat", state="busy"), MAX).state == "busy"


def test_encode_refuses_bad_messages():
    with pytest.raises(ProtocolError, match="unknown message type"):
        pack_message("hallo", x=1)
    with pytest.raises(ProtocolError, match="unknown field"):
        pack_message("stop", reason="x", reasn="y")
    with pytest.raises(ProtocolError, match="lacks field"):
        pack_message("checkpoint", step=1, path="p")
    with pytest.raises(ProtocolError, match="expected int"):
        pack_message("status", step=True, version_in_use=0, gap=0)
    with pytest.raises(ProtocolError, match="not one of"):
        pack_message("hello", **{**EXAMPLES["hello"], "role": "admin"})


def _raw(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _bad(frame: bytes, match: str, max_bytes: int = MAX):
    with pytest.raises(ProtocolError, match=match):
        unpack_message(frame, max_bytes)


def test_oversized_frame_is_refused_before_unpacking():
    frame = pack_message("stop", reason="x" * 1000)
    _bad(frame, "exceeds the limit of 100", max_bytes=100)


def test_not_msgpack():
    _bad(b"\xc1\xc1\xc1", "not valid msgpack")
    _bad(b"", "not valid msgpack")
    _bad(pack_message("stop", reason="x") + b"\x00", "not valid msgpack")  # trailing bytes
    _bad(pack_message("stop", reason="x")[:-3], "not valid msgpack")        # truncated


def test_hostile_lengths_do_not_allocate():
    # A bin32 header claiming 4 GiB in a 10-byte frame: refused by the unpack limits.
    _bad(b"\xc6\xff\xff\xff\xff" + b"\x00" * 5, "not valid msgpack")
    _bad(b"\xdd\xff\xff\xff\xff" + b"\x00" * 5, "not valid msgpack")  # array32 of 4G items
    _bad(b"\xdf\xff\xff\xff\xff" + b"\x00" * 5, "not valid msgpack")  # map32
    _bad(b"\x91" * 5000 + b"\xc0", "not valid msgpack|not a map")      # deep nesting


def test_not_a_map_and_non_string_keys():
    _bad(_raw([1, 2, 3]), "not a map")
    _bad(_raw(42), "not a map")
    _bad(msgpack.packb({1: 2}), "not valid msgpack")  # strict_map_key


def test_version_checks():
    _bad(_raw({"type": "stop", "reason": "x"}), "no protocol version")
    _bad(_raw({"v": 1, "type": "stop", "reason": "x"}), "protocol version 1 is not supported")
    _bad(_raw({"v": True, "type": "stop", "reason": "x"}), "not supported")


def test_type_checks():
    _bad(_raw({"v": 2, "reason": "x"}), "no string 'type'")
    _bad(_raw({"v": 2, "type": "rm -rf", "reason": "x"}), "unknown message type 'rm -rf'")


def test_missing_and_wrongly_typed_fields():
    _bad(_raw({"v": 2, "type": "checkpoint", "step": 1, "path": "p"}), "lacks field.*written_at")
    _bad(_raw({"v": 2, "type": "checkpoint", "step": "1", "path": "p", "written_at": 1.0}),
         "'step': expected int, got str")
    _bad(_raw({"v": 2, "type": "job", **{**EXAMPLES["job"], "eval": 1}}), "'eval': expected bool")
    _bad(_raw({"v": 2, "type": "shard_done", **{**EXAMPLES["shard_done"], "stats": [1]}}), "expected map")
    _bad(_raw({"v": 2, "type": "job", **{**EXAMPLES["job"], "weights": {"a": "text"}}}), "expected bytes_map")
    _bad(_raw({"v": 2, "type": "topk", **{**EXAMPLES["topk"], "split": "test"}}), "not one of train, eval")
    try:
        unpack_message(_raw({"v": 2, "type": "status", "step": 1, "gap": 0}), MAX)
    except ProtocolError as exc:
        assert exc.of_type == "status"


def test_extra_fields_are_tolerated_on_decode():
    msg = unpack_message(_raw({"v": 2, "type": "stop", "reason": "x", "from_the_future": 1}), MAX)
    assert msg.reason == "x"


@pytest.mark.parametrize("array, match", [
    ({"dtype": "<i8", "shape": [2, 2]}, "lacks data"),
    ({"dtype": "object", "shape": [1], "data": b"\x00" * 8}, "dtype 'object' is not allowed"),
    ({"dtype": "<i8", "shape": [2, 2], "data": b"\x00" * 8}, "needs 32 bytes, got 8"),
    ({"dtype": "<i8", "shape": [-1], "data": b"\x00" * 8}, "shape must be"),
    ({"dtype": "<i8", "shape": [1] * 9, "data": b"\x00" * 8}, "shape must be"),
    ({"dtype": "<i8", "shape": [1], "data": "abcdefgh"}, "data must be bytes"),
    ([1, 2], "expected an array map"),
])
def test_malformed_arrays(array, match):
    _bad(_raw({"v": 2, "type": "topk", **{**EXAMPLES["topk"], "ids": array}}), match)
    with pytest.raises(ProtocolError, match=match):
        unpack_array(array)


def test_pack_array_refuses_odd_dtypes():
    with pytest.raises(ValueError, match="not a wire dtype"):
        pack_array(np.array(["a"]))


def test_check_message_refuses_what_pack_message_refuses_and_gives_its_fields():
    """The inferencer's link checks in the caller and encodes on its thread: the same checks, the same fields."""
    ids = pack_array(np.arange(6, dtype=np.int64).reshape(2, 3))
    scores = pack_array(np.zeros((2, 3), np.float32))
    fields = dict(job_id=1, version=2, shard=0, chunk=0, n_chunks=1, q_lo=0, q_hi=2, split="train", ids=ids,
                  scores=scores)
    checked = check_message("topk", **fields)
    packed = msgpack.unpackb(pack_message("topk", **fields), raw=False)
    assert {k: v for k, v in packed.items() if k not in ("v", "type")} == checked
    for bad, match in ((dict(fields, bogus=1), "unknown field"), (dict(fields, q_lo="x"), "q_lo")):
        with pytest.raises(ProtocolError, match=match):
            check_message("topk", **bad)
        with pytest.raises(ProtocolError, match=match):
            pack_message("topk", **bad)
    with pytest.raises(ProtocolError, match="unknown message type"):
        check_message("nope")
