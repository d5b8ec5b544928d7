"""The peer message envelope: msgpack ``{"v": 1, "type": str, "body": map, "id"?: int, "re"?: int}``.

A registry maps each message type to a schema (field -> checker); decoding is strict: size, nesting
and container limits (msgpack Unpacker limits), known version and type, every field present with the
right type, no unknown fields. Anything else raises ``ProtocolError``, the only exception a decoder
lets out. ``id`` numbers a request; ``re`` names the request a response answers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

VERSION = 1
MAX_FRAME = 1024 * 1024  # bytes of one decrypted frame
MAX_CONTAINER = 4096  # entries of any array or map
MAX_DEPTH = 8

Checker = Callable[[Any], bool]


class ProtocolError(ValueError):
    """A frame or message that does not follow the protocol."""


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


def optional(check: Checker) -> Checker:
    return lambda v: v is None or check(v)


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
            raise ProtocolError(f"unknown message type {type_!r}")
        if body.keys() != schema.keys():
            raise ProtocolError(f"{type_}: fields {sorted(body)} != {sorted(schema)}")
        for name, check in schema.items():
            if not check(body[name]):
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
        if len(data) > MAX_FRAME:
            raise ProtocolError(f"frame of {len(data)} bytes exceeds {MAX_FRAME}")
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=True, max_buffer_size=MAX_FRAME,
                                    max_str_len=MAX_FRAME, max_bin_len=MAX_FRAME, max_array_len=MAX_CONTAINER,
                                    max_map_len=MAX_CONTAINER, max_ext_len=0)
        try:
            unpacker.feed(data)
            obj = unpacker.unpack()
            extra = True
            try:
                unpacker.unpack()
            except msgpack.OutOfData:
                extra = False
        except ProtocolError:
            raise
        except Exception as exc:  # msgpack raises many unrelated types (ValueError, OutOfData, ...)
            raise ProtocolError(f"undecodable frame: {type(exc).__name__}") from None
        if extra:
            raise ProtocolError("trailing data after the message")
        if _depth(obj) > MAX_DEPTH:
            raise ProtocolError(f"message nested deeper than {MAX_DEPTH}")
        if type(obj) is not dict or not {"v", "type", "body"} <= obj.keys() <= {"v", "type", "body", "id", "re"}:
            raise ProtocolError("not an envelope {v, type, body}")
        if obj["v"] != VERSION:
            raise ProtocolError(f"unsupported envelope version {obj['v']!r}")
        if type(obj["type"]) is not str or type(obj["body"]) is not dict:
            raise ProtocolError("envelope type must be a string and body a map")
        for key in ("id", "re"):
            if key in obj and not is_int()(obj[key]):
                raise ProtocolError(f"envelope {key} must be a non-negative integer")
        self.check(obj["type"], obj["body"])
        return Message(obj["type"], obj["body"], obj.get("id"), obj.get("re"))


def _depth(obj: Any, level: int = 1) -> int:
    if level > MAX_DEPTH:
        return level
    if type(obj) is dict:
        return max([level, *(_depth(v, level + 1) for v in obj.values())])
    if type(obj) is list:
        return max([level, *(_depth(v, level + 1) for v in obj)])
    return level
