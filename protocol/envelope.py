"""The peer message envelope: msgpack ``{"v": 1, "type": str, "body": map, "id"?: int, "re"?: int}``.

A registry maps each message type to a schema (field -> checker); decoding is strict: size and
container limits (msgpack's), known version and type, every field present with the right type, no
unknown fields; nesting is bounded by the schemas (a checker only descends where its schema does).
Anything else raises ``ProtocolError``, the only exception a decoder lets out. ``id`` numbers a
request; ``re`` names the request a response answers.

A link carries batches: one sealed frame holds one or more encoded messages, each prefixed with its
length (4 bytes, big-endian), so a busy link pays the framing and encryption once per batch.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

VERSION = 1
MAX_FRAME = 1024 * 1024  # bytes of one decrypted frame
MAX_CONTAINER = 4096  # entries of any array or map
_LEN = struct.Struct(">I")

Checker = Callable[[Any], bool]


class ProtocolError(ValueError):
    """A frame or message that does not follow the protocol."""


class UnknownType(ProtocolError):
    """A well-formed envelope of a message type this build does not know (a newer member's, say)."""


def is_str(max_len: int = 256) -> Checker:
    return lambda v: type(v) is str and len(v) <= max_len


def is_bytes(size: int | None = None, max_len: int = MAX_FRAME) -> Checker:
    if size is not None:
        return lambda v: type(v) is bytes and len(v) == size
    return lambda v: type(v) is bytes and len(v) <= max_len


def is_int(lo: int = 0, hi: int = 2**63 - 1) -> Checker:
    return lambda v: type(v) is int and lo <= v <= hi


def is_float() -> Checker:
    return lambda v: type(v) is float and v == v and v not in (float("inf"), float("-inf"))


def is_list(item: Checker, max_len: int = MAX_CONTAINER) -> Checker:
    return lambda v: type(v) is list and len(v) <= max_len and all(item(x) for x in v)


def is_map(key: Checker, value: Checker, max_len: int = MAX_CONTAINER) -> Checker:
    return lambda v: type(v) is dict and len(v) <= max_len and all(key(k) and value(x) for k, x in v.items())


class _Optional:
    """A field that may be absent (or None): newer senders add such fields without breaking older bodies."""

    __slots__ = ("check",)

    def __init__(self, check: Checker) -> None:
        self.check = check

    def __call__(self, value: Any) -> bool:
        return value is None or self.check(value)


def optional(check: Checker) -> Checker:
    return _Optional(check)


@dataclass(frozen=True, slots=True)
class Message:
    type: str
    body: dict[str, Any]
    id: int | None = None
    re: int | None = None


class Registry:
    """Message types and their schemas. Layers above register theirs; ``protocol`` knows none of them."""

    def __init__(self) -> None:
        self._schemas: dict[str, dict[str, Checker]] = {}

    def register(self, type_: str, schema: dict[str, Checker]) -> None:
        if type_ in self._schemas and self._schemas[type_] is not schema:
            raise ValueError(f"message type {type_!r} is already registered")
        self._schemas[type_] = schema

    def __contains__(self, type_: str) -> bool:
        return type_ in self._schemas

    def check(self, type_: str, body: dict[str, Any]) -> None:
        schema = self._schemas.get(type_)
        if schema is None:
            raise UnknownType(f"unknown message type {type_!r}")
        if body.keys() != schema.keys() and (body.keys() - schema.keys() or any(
                not isinstance(schema[k], _Optional) for k in schema.keys() - body.keys())):
            # (repr: a body with both str and bytes keys made sorted() raise TypeError, not the promised
            # ProtocolError, and the link ended as an "unexpected error": a reviewer's reproduction)
            raise ProtocolError(f"{type_}: fields {sorted(map(repr, body))[:16]} != {sorted(schema)}"[:300])
        for name, value in body.items():
            if not schema[name](value):
                raise ProtocolError(f"{type_}: bad field {name!r}")

    def encode(self, msg: Message) -> bytes:
        self.check(msg.type, msg.body)
        obj: dict[str, Any] = {"v": VERSION, "type": msg.type, "body": msg.body}
        if msg.id is not None:
            obj["id"] = msg.id
        if msg.re is not None:
            obj["re"] = msg.re
        data = msgpack.packb(obj, use_bin_type=True)
        if len(data) > MAX_FRAME:
            raise ProtocolError(f"{msg.type}: message of {len(data)} bytes exceeds {MAX_FRAME}")
        return data

    def decode(self, data: bytes) -> Message:
        """The message ``data`` encodes. A type this build does not know is found before the body is built: a
        member's messages of an unknown type (counted apart, never as malformed: a newer member's) with a body of a
        million empty maps cost 50 ms and 70 MiB each to decode (a reviewer's reproduction)."""
        if len(data) > MAX_FRAME:
            raise ProtocolError(f"frame of {len(data)} bytes exceeds {MAX_FRAME}")
        named = _named_type(data)
        if named is not None and named not in self._schemas:
            raise UnknownType(f"unknown message type {named!r:.200}")
        try:
            obj = msgpack.unpackb(data, raw=False, strict_map_key=True, max_str_len=MAX_FRAME,
                                  max_bin_len=MAX_FRAME, max_array_len=MAX_CONTAINER, max_map_len=MAX_CONTAINER,
                                  max_ext_len=0)
        except Exception as exc:  # msgpack raises many unrelated types (ExtraData, ValueError, ...)
            raise ProtocolError(f"undecodable message: {type(exc).__name__}") from None
        if type(obj) is not dict or not {"v", "type", "body"} <= obj.keys() <= _ENVELOPE_KEYS:
            raise ProtocolError("not an envelope {v, type, body}")
        if obj["v"] != VERSION:  # (its repr cut short: a 1 MiB version was kept whole in the link's last error)
            raise ProtocolError(f"unsupported envelope version {obj['v']!r:.40}")
        type_, body = obj["type"], obj["body"]
        if type(type_) is not str or type(body) is not dict:
            raise ProtocolError("envelope type must be a string and body a map")
        if named != type_:  # (not the type looked ahead at: written as no member writes it, or named twice)
            raise ProtocolError("envelope type written in a way no member writes it")
        id_, re = obj.get("id"), obj.get("re")
        if (id_ is not None and not _is_u63(id_)) or (re is not None and not _is_u63(re)):
            raise ProtocolError("envelope id and re must be non-negative integers")
        self.check(type_, body)
        return Message(type_, body, id_, re)


_ENVELOPE_KEYS = frozenset({"v", "type", "body", "id", "re"})
_TYPE_KEY = msgpack.packb("type")
_CANONICAL_START = msgpack.packb("v") + msgpack.packb(VERSION) + _TYPE_KEY  # (after a map header: how members write)
_MAX_TYPE_BYTES = 300  # the encoded type name looked at (longer: no type a member registers)


def _named_type(data: bytes) -> str | None:
    """The type an envelope names, read without building anything else (msgpack's ``skip`` walks a value without
    making objects); None unless ``data`` is a map of at most five entries with one ``"type"`` key (encoded as every
    member encodes it) whose value is a string (a longer one than any member registers: its first characters)."""
    if len(data) > 9 and data[1:9] == _CANONICAL_START and 0x83 <= data[0] <= 0x85 and 0xA0 <= data[9] <= 0xBF:
        end = 10 + (data[9] & 0x1F)  # (as members write it: a fixstr, a type name of up to 31 bytes)
        try:
            return data[10:end].decode() if len(data) >= end else None
        except UnicodeDecodeError:
            return None
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=max(1, len(data)))
    found: bytes | None = None
    try:
        unpacker.feed(data)
        entries = unpacker.read_map_header()
        if entries > len(_ENVELOPE_KEYS):
            return None
        for _ in range(entries):
            start = unpacker.tell()
            unpacker.skip()
            is_type = data[start : unpacker.tell()] == _TYPE_KEY
            start = unpacker.tell()
            unpacker.skip()
            if is_type:
                if found is not None:
                    return None
                found = data[start : unpacker.tell()]
        if found is None:
            return None
        if len(found) > _MAX_TYPE_BYTES:
            return f"{found[:_MAX_TYPE_BYTES].decode('utf-8', 'replace')}…"
        name = msgpack.unpackb(found, raw=False)
    except Exception:  # not msgpack, not a map, truncated: the full decode says what
        return None
    return name if type(name) is str else None
_is_u63 = is_int()


def pack_batch(messages: list[bytes]) -> bytes:
    """Length-prefixed encoded messages, for one sealed frame."""
    return b"".join(_LEN.pack(len(m)) + m for m in messages)


def unpack_batch(data: bytes, max_messages: int) -> list[bytes]:
    """The messages of a batch, at most ``max_messages`` (what senders put in one: a member's frames of 52k tiny
    messages kept a receiver's event loop busy without end, a reviewer's reproduction); ProtocolError if the
    framing is wrong."""
    out, i, n = [], 0, len(data)
    while i < n:
        if len(out) == max_messages:
            raise ProtocolError(f"more than {max_messages} messages in a batch")
        if i + 4 > n:
            raise ProtocolError("truncated length prefix in a batch")
        (size,) = _LEN.unpack_from(data, i)
        i += 4
        if size > MAX_FRAME or i + size > n:
            raise ProtocolError("bad message length in a batch")
        out.append(data[i : i + size])
        i += size
    if not out:
        raise ProtocolError("empty batch")
    return out
