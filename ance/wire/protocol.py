"""Every wire message, defined once: a spec table, ``pack_message`` and ``unpack_message``.

A message is one ZeroMQ frame holding a msgpack map
``{"v": PROTOCOL_VERSION, "type": str, ...fields}``. ``SPEC`` lists, per type,
the required and optional fields with their types; ``pack_message`` refuses a
message that does not match it (a bug at the sender), ``unpack_message`` refuses a
frame that does not match it with a :class:`ProtocolError` naming the reason
(oversized, not msgpack, not a map, missing/unknown version, unknown type,
missing field, wrongly typed field, malformed array). Unknown *extra* fields
are ignored on decode, so a newer peer may add optional fields.

Arrays travel as ``{"dtype": "<i8", "shape": [n, k], "data": bytes}``
(:func:`pack_array`, :func:`unpack_array`); only the dtypes of ``DTYPES`` are
accepted and the byte count must match the shape.

Untrusted input is bounded before it is unpacked: the frame length is checked
first, and msgpack's limits stop a frame that claims a huge string, binary,
array or map from allocating it.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np

from ance.run.errors import ProtocolError

PROTOCOL_VERSION = 2  # 2: authenticated sessions (hello nonce, challenge, auth, the "s" tag; ance.wire.auth)

# Wire dtypes (numpy ``dtype.str``, explicit little-endian) that unpack_array accepts.
DTYPES = frozenset({"|i1", "|u1", "<i2", "<i4", "<i8", "<f2", "<f4", "<f8", "|b1"})
_MAX_NDIM = 8

# Field kinds. "float" accepts ints too; "int" refuses bools.
INT, FLOAT, STR, BOOL, MAP, ARRAY, BYTES_MAP = "int", "float", "str", "bool", "map", "array", "bytes_map"
_OPT_STR = "str|None"

# type -> (required {field: kind}, optional {field: kind})
SPEC: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    "hello": ({"role": STR, "name": STR, "pid": INT, "device": STR, "data_fingerprint": STR, "nonce": STR},
              {"have_version": INT,          # trainer: newest complete version it holds (-1: none)
               "state": STR, "job_id": INT}),  # inferencer: "busy" (with job_id) when re-joining mid-shard
    "challenge": ({"nonce": STR, "proof": STR}, {}),  # broker -> client: its proof of the run's secret
    "auth": ({"nonce": STR, "proof": STR}, {}),       # client -> broker: the challenge's nonce, the client's proof
    "welcome": ({"broker_id": STR, "latest_version": INT, "heartbeat_s": FLOAT}, {}),
    "heartbeat": ({"state": STR}, {"step": INT, "job_id": INT}),
    "checkpoint": ({"step": INT, "path": STR, "written_at": FLOAT}, {}),
    "job": ({"job_id": INT, "version": INT, "ckpt_path": STR, "shard": INT, "n_shards": INT,
             "doc_lo": INT, "doc_hi": INT, "depth": INT, "chunk_queries": INT, "eval": BOOL,
             "data_fingerprint": STR},
            {"weights": BYTES_MAP, "eval_depth": INT}),
    "topk": ({"job_id": INT, "version": INT, "shard": INT, "chunk": INT, "n_chunks": INT,
              "q_lo": INT, "q_hi": INT, "ids": ARRAY, "scores": ARRAY, "split": STR}, {}),
    "shard_done": ({"job_id": INT, "version": INT, "shard": INT, "stats": MAP}, {}),
    "shard_failed": ({"job_id": INT, "shard": INT, "reason": STR}, {"version": INT}),
    "negatives": ({"version": INT, "chunk": INT, "n_chunks": INT, "q_idx": ARRAY, "neg": ARRAY,
                   "sent_at": FLOAT}, {}),
    "version_done": ({"version": INT, "n_shards": INT, "stats": MAP}, {}),
    "status": ({"step": INT, "version_in_use": INT, "gap": INT}, {}),
    "stop": ({"reason": STR}, {"token": STR}),  # to a broker: the run's token (RUN_DIR/broker.token)
    "error": ({"reason": STR, "of_type": _OPT_STR}, {}),
}
TYPES = tuple(SPEC)

# Stage times (seconds) of a refresh, by name; the ``stats`` maps stay open maps (a newer peer may add keys).
# ``shard_done.stats`` carries SHARD_STAGES, measured by the inferencer on its shard; they add up to about
# its wall time: load (checkpoint + token cache), encode (corpus), index (build), search (query encoding
# and k-NN), transfer (packing ``topk`` and handing every frame to the socket). ``version_done.stats``
# carries, for each, the slowest shard's time, plus the broker's own BROKER_STAGES: queue (checkpoint
# written -> job started, across two clocks), merge (``merge_topk``), select (negatives and overlap),
# persist (append + fsync) and send (``negatives`` to the trainer), each summed over the chunks. The broker
# stages overlap the shards' search, so the stages do not add up to the refresh latency.
SHARD_STAGES = ("load_s", "encode_s", "index_s", "search_s", "transfer_s")
BROKER_STAGES = ("queue_s", "merge_s", "select_s", "persist_s", "send_s")

# Enumerated string fields (checked on decode and encode).
_CHOICES = {
    ("hello", "role"): ("trainer", "inferencer"),
    ("hello", "state"): ("idle", "busy"),
    ("heartbeat", "state"): ("idle", "busy", "warming"),  # warming: an inferencer not ready for a shard yet
    ("topk", "split"): ("train", "eval"),
}


# Longest string a field may hold (characters), so a peer cannot make every log line or table
# entry it touches huge; MAX_STR for the others. A map field holds at most MAX_MAP_KEYS entries,
# keys of at most MAX_NAME characters and string values of at most MAX_STR.
MAX_STR, MAX_NAME, MAX_MAP_KEYS = 4096, 256, 1024
_STR_LIMITS = {
    ("hello", "role"): 32, ("hello", "name"): MAX_NAME, ("hello", "device"): MAX_NAME,
    ("hello", "data_fingerprint"): MAX_NAME, ("hello", "state"): 32, ("heartbeat", "state"): 32,
    ("welcome", "broker_id"): MAX_NAME, ("topk", "split"): 32, ("stop", "token"): MAX_NAME,
    ("job", "data_fingerprint"): MAX_NAME, ("hello", "nonce"): 64, ("challenge", "nonce"): 64,
    ("challenge", "proof"): 64, ("auth", "proof"): 64, ("auth", "nonce"): 64,
}
MAX_TAG = 64  # the session tag "s" every frame of a session carries (ance.wire.auth)


class Message(dict):
    """A decoded message: a dict of its fields (``"v"`` and ``"type"`` included)."""

    @property
    def type(self) -> str:
        return self["type"]

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"{self.get('type', 'message')!r} has no field {name!r}") from None


# --------------------------------------------------------------------------- arrays


def pack_array(a: np.ndarray) -> dict:
    """``{"dtype", "shape", "data"}`` for the wire (little-endian, C order)."""
    a = np.asarray(a)
    dt = a.dtype.newbyteorder("<") if a.dtype.byteorder not in ("|", "<", "=") else a.dtype
    a = np.ascontiguousarray(a, dtype=dt)
    if a.dtype.str not in DTYPES:
        raise ValueError(f"pack_array: dtype {a.dtype} is not a wire dtype ({', '.join(sorted(DTYPES))})")
    return {"dtype": a.dtype.str, "shape": list(a.shape), "data": a.tobytes()}


def _check_array(value: Any, where: str) -> None:
    if not isinstance(value, dict):
        raise ProtocolError(f"{where}: expected an array map {{dtype, shape, data}}, got {type(value).__name__}")
    missing = [k for k in ("dtype", "shape", "data") if k not in value]
    if missing:
        raise ProtocolError(f"{where}: array map lacks {', '.join(missing)}")
    dtype, shape, data = value["dtype"], value["shape"], value["data"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise ProtocolError(f"{where}: array dtype {dtype!r} is not allowed ({', '.join(sorted(DTYPES))})")
    if (not isinstance(shape, (list, tuple)) or len(shape) > _MAX_NDIM
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
        raise ProtocolError(f"{where}: array shape must be a list of at most {_MAX_NDIM} non-negative ints, "
                            f"got {shape!r}")
    if not isinstance(data, (bytes, bytearray)):
        raise ProtocolError(f"{where}: array data must be bytes, got {type(data).__name__}")
    expected = math.prod(shape) * np.dtype(dtype).itemsize
    if expected != len(data):
        raise ProtocolError(f"{where}: array of shape {list(shape)} and dtype {dtype} needs {expected} bytes, "
                            f"got {len(data)}")


def unpack_array(value: Any) -> np.ndarray:
    """The numpy array of a wire array map (validated; read-only view of the bytes)."""
    if isinstance(value, np.ndarray):
        return value
    _check_array(value, "array")
    return np.frombuffer(value["data"], dtype=np.dtype(value["dtype"])).reshape(value["shape"])


# --------------------------------------------------------------------------- fields


def _check_field(type_: str, name: str, kind: str, value: Any) -> None:
    where = f"{type_!r} field {name!r}"
    if kind == INT:
        ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    elif kind == FLOAT:
        ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    elif kind == STR:
        ok = isinstance(value, str)
    elif kind == _OPT_STR:
        ok = value is None or isinstance(value, str)
    elif kind == BOOL:
        ok = isinstance(value, (bool, np.bool_))
    elif kind == MAP:
        ok = isinstance(value, dict) and all(isinstance(k, str) for k in value)
    elif kind == BYTES_MAP:
        ok = isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, (bytes, bytearray))
                                             for k, v in value.items())
    elif kind == ARRAY:
        _check_array(value, where)
        return
    else:  # pragma: no cover - a bug in SPEC
        raise AssertionError(f"unknown field kind {kind!r}")
    if not ok:
        raise ProtocolError(f"{where}: expected {kind}, got {type(value).__name__} {_short(value)}")
    if isinstance(value, str):
        limit = _STR_LIMITS.get((type_, name), MAX_STR)
        if len(value) > limit:
            raise ProtocolError(f"{where}: {len(value)} characters, more than the limit of {limit}")
    elif kind in (MAP, BYTES_MAP):
        _check_map(value, where, kind == MAP)
    choices = _CHOICES.get((type_, name))
    if choices is not None and value not in choices:
        raise ProtocolError(f"{where}: {value!r} is not one of {', '.join(choices)}")


def _check_map(value: dict, where: str, check_values: bool) -> None:
    if len(value) > MAX_MAP_KEYS:
        raise ProtocolError(f"{where}: {len(value)} entries, more than the limit of {MAX_MAP_KEYS}")
    for k, v in value.items():
        if len(k) > (MAX_STR if not check_values else MAX_NAME):  # weights: relative file paths
            raise ProtocolError(f"{where}: a key of {len(k)} characters, more than the limit")
        if check_values and isinstance(v, str) and len(v) > MAX_STR:
            raise ProtocolError(f"{where}: value of {k[:40]!r} has {len(v)} characters, more than the limit of "
                                f"{MAX_STR}")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _plain(value: Any) -> Any:
    """numpy scalars -> Python scalars, so msgpack can pack them."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def validate(type_: str, fields: dict) -> None:
    """Raise ProtocolError unless ``fields`` match ``SPEC[type_]`` (extra fields allowed)."""
    if type_ not in SPEC:
        raise ProtocolError(f"unknown message type {type_!r}; known types: {', '.join(TYPES)}")
    required, optional = SPEC[type_]
    missing = [name for name in required if name not in fields]
    if missing:
        raise ProtocolError(f"{type_!r} message lacks field(s) {', '.join(missing)}")
    for name, kind in required.items():
        _check_field(type_, name, kind, fields[name])
    for name, kind in optional.items():
        if name in fields and fields[name] is not None:
            _check_field(type_, name, kind, fields[name])


# --------------------------------------------------------------------------- pack_message / unpack_message


def check_message(type_: str, **fields: Any) -> dict:
    """The fields of message ``type_`` as :func:`pack_message` encodes them, checked (unknown fields and
    invalid values refused here: a typo at the sender), without the encoding: a sender that packs on
    another thread checks in the caller with this."""
    if type_ not in SPEC:
        raise ProtocolError(f"cannot encode unknown message type {type_!r}; known types: {', '.join(TYPES)}")
    required, optional = SPEC[type_]
    extra = sorted(set(fields) - set(required) - set(optional))
    if extra:
        raise ProtocolError(f"cannot encode {type_!r}: unknown field(s) {', '.join(extra)}; "
                            f"valid: {', '.join(list(required) + list(optional))}")
    fields = {k: _plain(v) for k, v in fields.items() if not (k in optional and v is None)}
    validate(type_, fields)
    return fields


def pack_message(type_: str, *, session: str | None = None, **fields: Any) -> bytes:
    """One frame for message ``type_`` (:func:`check_message`'s fields).
    ``session``: the sender's session tag, carried in the envelope field ``s``."""
    fields = check_message(type_, **fields)
    envelope = {"v": PROTOCOL_VERSION, "type": type_} if session is None else \
        {"v": PROTOCOL_VERSION, "type": type_, "s": session}
    return msgpack.packb({**envelope, **fields}, use_bin_type=True)


def unpack_message(frame: bytes, max_bytes: int) -> Message:
    """Parse and validate one frame, or raise ProtocolError saying why not."""
    size = len(frame)
    if size > max_bytes:
        raise ProtocolError(f"frame of {size} bytes exceeds the limit of {max_bytes} (broker.max_frame_bytes)")
    try:
        obj = msgpack.unpackb(
            frame, raw=False, strict_map_key=True, use_list=True,
            # Nothing inside a frame can be longer than the frame itself; ext types are never used.
            max_str_len=size, max_bin_len=size, max_array_len=size, max_map_len=size, max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises ValueError, ExtraData, FormatError, StackError, ...
        raise ProtocolError(f"frame of {size} bytes is not valid msgpack ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"frame is msgpack but not a map (got {type(obj).__name__})")
    if "v" not in obj:
        raise ProtocolError("message has no protocol version field 'v'")
    if obj["v"] != PROTOCOL_VERSION or isinstance(obj["v"], bool):
        raise ProtocolError(f"protocol version {_short(obj['v'])} is not supported; this peer speaks "
                            f"v{PROTOCOL_VERSION} (upgrade the older side)")
    tag = obj.get("s")
    if tag is not None and (not isinstance(tag, str) or len(tag) > MAX_TAG):
        raise ProtocolError(f"session tag 's' must be a string of at most {MAX_TAG} characters")
    type_ = obj.get("type")
    if not isinstance(type_, str):
        raise ProtocolError(f"message has no string 'type' field (got {_short(type_)})")
    try:
        validate(type_, obj)
    except ProtocolError as exc:
        exc.of_type = type_ if type_ in SPEC else None  # for the `error` answer
        raise
    return Message(obj)

