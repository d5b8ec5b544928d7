"""Ledger events: their kinds, canonical encoding, ids and strict decoding.

An event is ``(kind, hlc wall ms, hlc counter, origin coordinator, fields)``. Its canonical encoding
is a msgpack array ``[1, kind, wall, counter, origin, [fields...]]`` with the fields in the fixed
order of the kind's schema; its id is the SHA-256 of that encoding. Decoding checks every field's
type and bounds, so nothing malformed reaches the state machine.
"""

from __future__ import annotations

import hashlib
import math
import reprlib
from collections.abc import Callable
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


# An event's fields in Event's order, as a plain tuple (what ``decode_event_tuple`` gives; an Event is one too)
EventTuple = tuple[str, int, int, str, tuple[Any, ...], bytes, bytes]


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


_TYPES = {"str": "str", "int": "int", "float": "float", "bin": "bytes"}
_CHECKS = {
    "str": "0 < len({v}) <= MAX_STR",
    "int": "0 <= {v} <= MAX_U63",
    "float": "_isfinite({v})",
    "bin": "0 < len({v}) <= MAX_BIN",
}


def _compile_check(kind: str, schema: tuple[tuple[str, str], ...]) -> Callable[[list[Any]], tuple[Any, ...] | None]:
    """The field check of one kind as generated code (decoding is the hot path of a rebuild): the exact
    arity, the exact type of each field (bool is not int), then its bounds: str 1..MAX_STR characters, int
    0..MAX_U63, float finite, bin 1..MAX_BIN bytes. Returns the fields as a tuple, or None."""
    names = [f"f{i}" for i in range(len(schema))]
    types = " and ".join(f"type({n}) is {_TYPES[t]}" for n, (_, t) in zip(names, schema, strict=True))
    bounds = " and ".join(_CHECKS[t].format(v=n) for n, (_, t) in zip(names, schema, strict=True))
    unpack = f"{', '.join(names)}, = fields" if names else ""
    source = (f"def check_{kind.replace('.', '_')}(fields):\n"
              f"    if len(fields) != {len(schema)}:\n        return None\n"
              f"    {unpack}\n"
              f"    return ({', '.join(names)},) if {types} and {bounds} else None\n")
    scope: dict[str, Any] = {"MAX_STR": MAX_STR, "MAX_U63": MAX_U63, "MAX_BIN": MAX_BIN, "_isfinite": math.isfinite}
    exec(compile(source, f"<event check {kind}>", "exec"), scope)  # the source is built from SCHEMAS alone
    return scope[f"check_{kind.replace('.', '_')}"]  # type: ignore[no-any-return]


# kind -> (the kind's own string, so events carry one shared object per kind; its field check)
_RULES: dict[str, tuple[str, Callable[[list[Any]], tuple[Any, ...] | None]]] = {
    kind: (kind, _compile_check(kind, schema)) for kind, schema in SCHEMAS.items()
}
_sha256 = hashlib.sha256
_unpackb = msgpack.unpackb
_repr = reprlib.Repr()  # for error messages: bounded, never recursing deep (a peer's nesting blew the stack)
_repr.maxlevel, _repr.maxstring, _repr.maxother = 3, 64, 64
_brief = _repr.repr
_pack = msgpack.Packer(use_bin_type=True).pack
_new_event = tuple.__new__  # Event(...) without the NamedTuple's Python-level __new__
_SMALL = 1024  # events up to this size are unpacked without limits (see decode_event)


def decode_event_tuple(raw: bytes) -> EventTuple:
    """``decode_event`` as a plain tuple: the same checks, the same fields in the same order. A rebuild's hot
    path (``node.blob.decode_blob``): a plain tuple costs a third of a NamedTuple's ``tuple.__new__``."""
    try:  # use_list, raw=False and strict_map_key are msgpack's defaults
        if len(raw) <= _SMALL:  # too short for the limits to matter (< 1,024 items); what they stop, checks reject
            obj = _unpackb(raw)
        else:  # the limits bound what garbage costs (whatever they stop, the checks below would reject too)
            obj = _unpackb(raw, max_str_len=1024, max_bin_len=MAX_BIN, max_array_len=64, max_map_len=0)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise EventDecodeError(f"not msgpack: {exc}") from None
    if type(obj) is not list or len(obj) != 6:
        raise EventDecodeError("event is not a 6-element array")
    try:  # (free unless raised) msgpack refuses to re-pack an array nested past its limit: garbage too
        canonical = _pack(obj) == raw
    except ValueError as exc:
        raise EventDecodeError(f"not re-encodable: {exc}") from None
    if not canonical:
        raise EventDecodeError("event is not in canonical encoding")
    version, kind, wall, counter, origin, fields = obj
    if version is not FORMAT_VERSION:  # the int 1 itself (a small int: one object); True and 1.0 only equal it
        raise EventDecodeError(f"unknown event format version {_brief(version)}")
    rule = _RULES.get(kind) if type(kind) is str else None
    if rule is None:
        raise EventDecodeError(f"unknown event kind {_brief(kind)}")
    if not (type(wall) is int and type(counter) is int and 0 <= wall <= MAX_U63 and 0 <= counter <= MAX_U63):
        raise EventDecodeError("bad hybrid logical clock timestamp")
    if not (type(origin) is str and 0 < len(origin) <= MAX_STR):
        raise EventDecodeError("bad origin")
    checked = rule[1](fields) if type(fields) is list else None
    if checked is None:
        raise EventDecodeError(f"{kind}: bad fields {_brief(fields)}; expected {SCHEMAS[kind]}")
    return (rule[0], wall, counter, origin, checked, raw, _sha256(raw).digest())


def decode_event(raw: bytes) -> Event:
    """Strictly decode one event (``raw`` must be ``bytes``); raise EventDecodeError if anything is off."""
    return _new_event(Event, decode_event_tuple(raw))  # type: ignore[no-any-return]
