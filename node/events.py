"""Ledger events: their kinds, canonical encoding, ids and strict decoding.

An event is ``(kind, hlc wall ms, hlc counter, origin coordinator, fields)``. Its canonical encoding
is a msgpack array ``[1, kind, wall, counter, origin, [fields...]]`` with the fields in the fixed
order of the kind's schema; its id is the SHA-256 of that encoding. Decoding checks every field's
type and bounds, so nothing malformed reaches the state machine.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import msgpack

FORMAT_VERSION = 1
MAX_STR = 256
MAX_U63 = 2**63 - 1

NODE_REGISTERED = "node.registered"
NODE_UNREGISTERED = "node.unregistered"
OBJECT_REGISTERED = "object.registered"
REPLICA_MISSING = "replica.missing"
REPLICA_HEALED = "replica.healed"
SCHEDULER_CONFIG = "scheduler.config"

# kind -> field names and their types ("str", "int", "float"). New kinds (receipts) are added here
# and in state.py; a decoder that meets an unknown kind rejects that event (and counts it).
SCHEMAS: dict[str, tuple[tuple[str, str], ...]] = {
    NODE_REGISTERED: (("id", "str"), ("zone", "str"), ("addr", "str"), ("capacity_gb", "int")),
    NODE_UNREGISTERED: (("id", "str"),),
    OBJECT_REGISTERED: (("hash", "str"), ("size", "int")),
    REPLICA_MISSING: (("hash", "str"), ("node_id", "str")),
    REPLICA_HEALED: (("hash", "str"), ("node_id", "str")),
    SCHEDULER_CONFIG: (("w_cpu", "float"), ("w_ram", "float"), ("w_gpu", "float"), ("w_latency", "float"),
                       ("w_io", "float")),
}


class EventDecodeError(ValueError):
    """Bytes that are not a valid event."""


@dataclass(frozen=True, slots=True)
class Event:
    kind: str
    wall: int
    counter: int
    origin: str
    fields: tuple[Any, ...]
    raw: bytes
    id: bytes

    @property
    def hlc(self) -> tuple[int, int]:
        return (self.wall, self.counter)

    def field(self, name: str) -> Any:
        for (fname, _), value in zip(SCHEMAS[self.kind], self.fields, strict=True):
            if fname == name:
                return value
        raise KeyError(name)

    def as_dict(self) -> dict[str, Any]:
        return {name: value for (name, _), value in zip(SCHEMAS[self.kind], self.fields, strict=True)}


def make_event(kind: str, hlc: tuple[int, int], origin: str, **values: Any) -> Event:
    """Build an event from keyword fields (all of the kind's fields are required)."""
    schema = SCHEMAS[kind]
    if set(values) != {name for name, _ in schema}:
        raise ValueError(f"{kind} needs fields {[n for n, _ in schema]}, got {sorted(values)}")
    fields = tuple(_coerce(values[name], typ) for name, typ in schema)
    raw = msgpack.packb([FORMAT_VERSION, kind, hlc[0], hlc[1], origin, list(fields)], use_bin_type=True)
    event = decode_event(raw)  # one path for both directions: what we emit is what others accept
    return event


def _coerce(value: Any, typ: str) -> Any:
    if typ == "float":
        return float(value)
    return value


def _check(value: Any, typ: str) -> bool:
    if typ == "str":
        return type(value) is str and 0 < len(value) <= MAX_STR
    if typ == "int":
        return type(value) is int and 0 <= value <= MAX_U63
    return type(value) is float and math.isfinite(value)


def decode_event(raw: bytes) -> Event:
    """Strictly decode one event; raise EventDecodeError if anything is off."""
    try:
        obj = msgpack.unpackb(raw, use_list=True, raw=False, strict_map_key=True,
                              max_str_len=1024, max_bin_len=0, max_array_len=64, max_map_len=0)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise EventDecodeError(f"not msgpack: {exc}") from None
    if type(obj) is not list or len(obj) != 6:
        raise EventDecodeError("event is not a 6-element array")
    if msgpack.packb(obj, use_bin_type=True) != raw:
        raise EventDecodeError("event is not in canonical encoding")
    version, kind, wall, counter, origin, fields = obj
    if version != FORMAT_VERSION:
        raise EventDecodeError(f"unknown event format version {version!r}")
    schema = SCHEMAS.get(kind) if type(kind) is str else None
    if schema is None:
        raise EventDecodeError(f"unknown event kind {kind!r}")
    if not (type(wall) is int and type(counter) is int and 0 <= wall <= MAX_U63 and 0 <= counter <= MAX_U63):
        raise EventDecodeError("bad hybrid logical clock timestamp")
    if not (type(origin) is str and 0 < len(origin) <= MAX_STR):
        raise EventDecodeError("bad origin")
    if type(fields) is not list or len(fields) != len(schema):
        raise EventDecodeError(f"{kind}: expected {len(schema)} fields")
    for value, (name, typ) in zip(fields, schema, strict=True):
        if not _check(value, typ):
            raise EventDecodeError(f"{kind}: bad field {name}={value!r}")
    return Event(kind, wall, counter, origin, tuple(fields), bytes(raw), hashlib.sha256(raw).digest())
