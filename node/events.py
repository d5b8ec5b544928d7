"""Ledger events: their kinds, canonical encoding, ids and strict decoding.

An event is ``(kind, hlc wall ms, hlc counter, origin coordinator, fields)``. Its canonical encoding
is a msgpack array ``[1, kind, wall, counter, origin, [fields...]]`` with the fields in the fixed
order of the kind's schema; its id is the SHA-256 of that encoding. Decoding checks every field's
type and bounds, so nothing malformed reaches the state machine.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, NamedTuple

import msgpack

FORMAT_VERSION = 1
MAX_STR = 256
MAX_U63 = 2**63 - 1
MAX_BIN = 512 * 1024  # a bin field (a signed receipt batch)

NODE_REGISTERED = "node.registered"
NODE_UNREGISTERED = "node.unregistered"
OBJECT_REGISTERED = "object.registered"
REPLICA_MISSING = "replica.missing"
REPLICA_HEALED = "replica.healed"
SCHEDULER_CONFIG = "scheduler.config"
NODE_KEY = "node.key"
RECEIPT_BATCH = "receipt.batch"

# kind -> field names and their types ("str", "int", "float", "bin"). New kinds (receipts) are added here
# and in state.py; a decoder that meets an unknown kind rejects that event (and counts it).
SCHEMAS: dict[str, tuple[tuple[str, str], ...]] = {
    NODE_REGISTERED: (("id", "str"), ("zone", "str"), ("addr", "str"), ("capacity_gb", "int")),
    NODE_UNREGISTERED: (("id", "str"),),
    OBJECT_REGISTERED: (("hash", "str"), ("size", "int")),
    REPLICA_MISSING: (("hash", "str"), ("node_id", "str")),
    REPLICA_HEALED: (("hash", "str"), ("node_id", "str")),
    SCHEDULER_CONFIG: (("w_cpu", "float"), ("w_ram", "float"), ("w_gpu", "float"), ("w_latency", "float"),
                       ("w_io", "float")),
    # a node's Ed25519 key (64 hex), needed for it to earn usage receipts
    NODE_KEY: (("id", "str"), ("public_key", "str")),
    # a threshold-signed batch of usage receipts: receipts = msgpack array of [receipt_bytes, node_signature]
    # in batch order; root = its RFC 9162 Merkle root; signature over the batch message (consensus/receipts.py)
    RECEIPT_BATCH: (("group_key", "str"), ("root", "str"), ("tree_size", "int"), ("signature", "str"),
                    ("signers", "str"), ("receipts", "bin")),
}


class EventDecodeError(ValueError):
    """Bytes that are not a valid event."""


class Event(NamedTuple):
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


_TYPES = {"str": str, "int": int, "float": float, "bin": bytes}


class _Rule(NamedTuple):
    types: tuple[type, ...]  # exact type of each field (bool is not int)
    strs: tuple[int, ...]  # positions of str fields: 1..MAX_STR characters
    ints: tuple[int, ...]  # positions of int fields: 0..MAX_U63
    floats: tuple[int, ...]  # positions of float fields: finite
    bins: tuple[int, ...]  # positions of bin fields: 1..MAX_BIN bytes


# kind -> its rule, compiled once: decoding is the hot path of a rebuild
_RULES = {
    kind: _Rule(tuple(_TYPES[t] for _, t in schema),
                tuple(i for i, (_, t) in enumerate(schema) if t == "str"),
                tuple(i for i, (_, t) in enumerate(schema) if t == "int"),
                tuple(i for i, (_, t) in enumerate(schema) if t == "float"),
                tuple(i for i, (_, t) in enumerate(schema) if t == "bin"))
    for kind, schema in SCHEMAS.items()
}
_sha256 = hashlib.sha256
_unpackb = msgpack.unpackb
_pack = msgpack.Packer(use_bin_type=True).pack


def _fields_ok(rule: _Rule, fields: list[Any]) -> bool:
    if tuple(map(type, fields)) != rule.types:
        return False
    for i in rule.strs:
        if not 0 < len(fields[i]) <= MAX_STR:
            return False
    for i in rule.ints:
        if not 0 <= fields[i] <= MAX_U63:
            return False
    if not all(0 < len(fields[i]) <= MAX_BIN for i in rule.bins):
        return False
    return all(math.isfinite(fields[i]) for i in rule.floats) if rule.floats else True


def decode_event(raw: bytes) -> Event:
    """Strictly decode one event (``raw`` must be ``bytes``); raise EventDecodeError if anything is off."""
    try:
        obj = _unpackb(raw, use_list=True, raw=False, strict_map_key=True,
                       max_str_len=1024, max_bin_len=MAX_BIN, max_array_len=64, max_map_len=0)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise EventDecodeError(f"not msgpack: {exc}") from None
    if type(obj) is not list or len(obj) != 6:
        raise EventDecodeError("event is not a 6-element array")
    if _pack(obj) != raw:
        raise EventDecodeError("event is not in canonical encoding")
    version, kind, wall, counter, origin, fields = obj
    if version != FORMAT_VERSION:
        raise EventDecodeError(f"unknown event format version {version!r}")
    rule = _RULES.get(kind) if type(kind) is str else None
    if rule is None:
        raise EventDecodeError(f"unknown event kind {kind!r}")
    if not (type(wall) is int and type(counter) is int and 0 <= wall <= MAX_U63 and 0 <= counter <= MAX_U63):
        raise EventDecodeError("bad hybrid logical clock timestamp")
    if not (type(origin) is str and 0 < len(origin) <= MAX_STR):
        raise EventDecodeError("bad origin")
    if type(fields) is not list or not _fields_ok(rule, fields):
        raise EventDecodeError(f"{kind}: bad fields {fields!r}; expected {SCHEMAS[kind]}")
    return Event(kind, wall, counter, origin, tuple(fields), raw, _sha256(raw).digest())
