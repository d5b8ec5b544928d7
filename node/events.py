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
from typing import Any, NamedTuple, NoReturn

import msgpack

FORMAT_VERSION = 1
MAX_STR = 256
MAX_NAMES = 255 * 129  # a "names" field: up to 255 member ids of up to 128 characters, comma-separated
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

# kind -> field names and their types ("str", "int", "float", "bin"; "names": a str up to MAX_NAMES, the signers of a
# batch: a "str" of 256 refused the batch of a cluster of long ids, a reviewer's reproduction). New kinds are added here
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
                    ("signers", "names"), ("receipts", "bin")),
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


_TYPES = {"str": "str", "names": "str", "int": "int", "float": "float", "bin": "bytes"}
_CHECKS = {
    "str": "0 < len({v}) <= MAX_STR",
    "names": "0 < len({v}) <= MAX_NAMES",
    "int": "0 <= {v} <= MAX_U63",
    "float": "_isfinite({v})",
    "bin": "0 < len({v}) <= MAX_BIN",
}


def _compile_decoder(kind: str, schema: tuple[tuple[str, str], ...]) -> Callable[[list[Any], bytes], EventTuple | None]:
    """The checks of one kind's events as generated code (decoding is the hot path of a rebuild), over an event
    unpacked as ``[version, kind, wall, counter, origin, fields]``: the format version is the int 1, the clock two
    ints in 0..MAX_U63, the origin 1..MAX_STR characters, the fields the kind's exact arity, each of the exact type
    (bool is not int) and within its bounds: str 1..MAX_STR characters, int 0..MAX_U63, float finite, bin
    1..MAX_BIN bytes. Returns the event as a plain tuple (its kind the shared string of ``SCHEMAS``), or None."""
    names = [f"f{i}" for i in range(len(schema))]
    types = " and ".join(f"type({n}) is {_TYPES[t]}" for n, (_, t) in zip(names, schema, strict=True))
    bounds = " and ".join(_CHECKS[t].format(v=n) for n, (_, t) in zip(names, schema, strict=True))
    unpack = f"{', '.join(names)}, = fields" if names else "pass"
    name = f"decode_{kind.replace('.', '_')}"
    source = (f"def {name}(obj, raw):\n"
              f"    version, _, wall, counter, origin, fields = obj\n"
              f"    if not (version is ONE and type(wall) is int and type(counter) is int and 0 <= wall <= MAX_U63\n"
              f"            and 0 <= counter <= MAX_U63 and type(origin) is str and 0 < len(origin) <= MAX_STR\n"
              f"            and type(fields) is list and len(fields) == {len(schema)}):\n"
              f"        return None\n"
              f"    {unpack}\n"
              f"    if {types or 'True'} and {bounds or 'True'}:\n"
              f"        return (KIND, wall, counter, origin, ({''.join(n + ', ' for n in names)}), raw,\n"
              f"                _sha256(raw).digest())\n"
              f"    return None\n")
    scope: dict[str, Any] = {"MAX_STR": MAX_STR, "MAX_NAMES": MAX_NAMES, "MAX_U63": MAX_U63, "MAX_BIN": MAX_BIN,
                             "_isfinite": math.isfinite,
                             "ONE": FORMAT_VERSION, "KIND": kind, "_sha256": hashlib.sha256}
    exec(compile(source, f"<event decoder {kind}>", "exec"), scope)  # the source is built from SCHEMAS alone
    return scope[name]  # type: ignore[no-any-return]


# kind -> its decoder (``_compile_decoder``); the kind strings of SCHEMAS are the ones events carry (one object)
_DECODERS: dict[str, Callable[[list[Any], bytes], EventTuple | None]] = {
    kind: _compile_decoder(kind, schema) for kind, schema in SCHEMAS.items()
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
    path (``node.blob.decode_blob``): a plain tuple costs a third of a NamedTuple's ``tuple.__new__``; the kind's
    generated decoder checks everything but the encoding in one call, and only an event it refuses, or one not in
    canonical encoding, goes through ``_refuse`` for the reason."""
    try:  # use_list, raw=False and strict_map_key are msgpack's defaults
        if len(raw) <= _SMALL:  # too short for the limits to matter (< 1,024 items); what they stop, checks reject
            obj = _unpackb(raw)
        else:  # the limits bound what garbage costs (whatever they stop, the checks below would reject too)
            obj = _unpackb(raw, max_str_len=MAX_NAMES, max_bin_len=MAX_BIN, max_array_len=64, max_map_len=0)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise EventDecodeError(f"not msgpack: {exc}") from None
    if type(obj) is list and len(obj) == 6:
        kind = obj[1]
        decoder = _DECODERS.get(kind) if type(kind) is str else None
        # (its fields are scalars once the decoder took it: re-packing cannot fail then)
        if decoder is not None and (event := decoder(obj, raw)) is not None and _pack(obj) == raw:
            return event
    _refuse(obj, raw)


def _refuse(obj: Any, raw: bytes) -> NoReturn:
    """Raise the EventDecodeError saying why ``obj`` (``raw`` unpacked) is no valid event, checking in this order:
    the shape, the encoding, the format version, the kind, the clock, the origin, then the fields."""
    if type(obj) is not list or len(obj) != 6:
        raise EventDecodeError("event is not a 6-element array")
    try:  # msgpack refuses to re-pack an array nested past its limit: garbage too
        canonical = _pack(obj) == raw
    except ValueError as exc:
        raise EventDecodeError(f"not re-encodable: {exc}") from None
    if not canonical:
        raise EventDecodeError("event is not in canonical encoding")
    version, kind, wall, counter, origin, fields = obj
    if version is not FORMAT_VERSION:  # the int 1 itself (a small int: one object); True and 1.0 only equal it
        raise EventDecodeError(f"unknown event format version {_brief(version)}")
    if type(kind) is not str or kind not in _DECODERS:
        raise EventDecodeError(f"unknown event kind {_brief(kind)}")
    if not (type(wall) is int and type(counter) is int and 0 <= wall <= MAX_U63 and 0 <= counter <= MAX_U63):
        raise EventDecodeError("bad hybrid logical clock timestamp")
    if not (type(origin) is str and 0 < len(origin) <= MAX_STR):
        raise EventDecodeError("bad origin")
    raise EventDecodeError(f"{kind}: bad fields {_brief(fields)}; expected {SCHEMAS[kind]}")


def decode_event(raw: bytes) -> Event:
    """Strictly decode one event (``raw`` must be ``bytes``); raise EventDecodeError if anything is off."""
    return _new_event(Event, decode_event_tuple(raw))  # type: ignore[no-any-return]


def _drop_uncanonical(events: list[EventTuple], invalid: int) -> tuple[list[EventTuple], int]:
    """``decode_events``' rare path, when the blob's encoding check failed: drop the events whose bytes are not
    the canonical encoding of what they unpack to, and count them invalid."""
    kept = [event for event in events if _pack(_unpackb(event[5])) == event[5]]
    return kept, invalid + len(events) - len(kept)


def _array_header(n: int) -> bytes:
    """msgpack's header of an array of ``n`` items (what ``_pack`` writes before the items)."""
    return _pack([None] * n)[:-n] if n else b"\x90"


def _same_bytes(packed: bytes, header: bytes, parts: list[bytes]) -> bool:
    """Whether ``packed`` is ``header`` followed by ``parts`` joined (compared in place: no copy of it is made)."""
    joined = b"".join(parts)
    return len(packed) == len(header) + len(joined) and packed.startswith(header) and packed.endswith(joined)


# the kinds in the order ``decode_events`` tries them: the most frequent in a rebuild first
_HOT_FIRST = (REPLICA_HEALED, OBJECT_REGISTERED, REPLICA_MISSING, NODE_REGISTERED)
_KIND_ORDER = _HOT_FIRST + tuple(kind for kind in SCHEMAS if kind not in _HOT_FIRST)


def _compile_blob_decoder() -> Callable[[list[Any], Any], tuple[list[EventTuple], int, int]]:
    """``decode_events`` as generated code: one loop over a blob's events with every kind's checks inline (the same
    checks as ``_compile_decoder``'s, see there; events unpacked as tuples, cheaper than lists, whose fields tuple is
    the event's), the origin compared with the blob's expected one instead of checked on its own, and the
    canonical-encoding check run once for the whole blob: the events taken inline packed in one C call equal their
    bytes joined exactly when each event's bytes are its canonical encoding (each event's bytes unpacked to exactly
    one value, and msgpack is prefix-free: no boundary can shift between the two). An event the
    inline checks do not take (too large, not msgpack, another origin, any check failing) goes through
    ``decode_event_tuple``, whose error says why."""
    branches = []
    for i, kind in enumerate(_KIND_ORDER):
        schema = SCHEMAS[kind]
        names = [f"f{j}" for j in range(len(schema))]
        types = " and ".join(f"type({n}) is {_TYPES[t]}" for n, (_, t) in zip(names, schema, strict=True))
        bounds = " and ".join(_CHECKS[t].format(v=n) for n, (_, t) in zip(names, schema, strict=True))
        # (unpacking checks the arity: a ValueError, which costs nothing when not raised, unlike a len() call)
        unpack = f"{', '.join(names)}, = fields" if names else "[] = fields"
        branches.append(
            f"                elif kind == K{i}:\n"
            f"                    try:\n"
            f"                        {unpack}\n"
            f"                    except ValueError:\n"
            f"                        pass\n"
            f"                    else:\n"
            f"                        if {types or 'True'} and {bounds or 'True'}:\n"
            f"                            append((K{i}, wall, counter, origin, fields, raw, _sha256(raw).digest()))\n"
            f"                            inline_append(obj)\n"
            f"                            continue\n")
    source = ("def decode_events(raws, origin):\n"
              "    events, inline, invalid, wrong = [], [], 0, 0\n"
              "    append, inline_append = events.append, inline.append\n"
              "    fast = type(origin) is str and 0 < len(origin) <= MAX_STR\n"
              "    for raw in raws:\n"
              "        if fast and type(raw) is bytes and len(raw) <= SMALL:\n"
              "            try:\n"
              "                obj = _unpackb(raw, use_list=False)\n"
              "            except Exception:\n"
              "                obj = None\n"
              "            if type(obj) is tuple:\n"
              "                try:\n"
              "                    version, kind, wall, counter, event_origin, fields = obj\n"
              "                except ValueError:\n"
              "                    version = None\n"
              "                if not (version is ONE and event_origin == origin and type(wall) is int\n"
              "                        and type(counter) is int and 0 <= wall <= MAX_U63 and 0 <= counter <= MAX_U63\n"
              "                        and type(fields) is tuple):\n"
              "                    pass\n"
              + "".join(branches) +
              "        try:\n"
              "            if type(raw) is not bytes:\n"
              "                raise EventDecodeError('event is not bytes')\n"
              "            event = decode_event_tuple(raw)\n"
              "        except EventDecodeError:\n"
              "            invalid += 1\n"
              "            continue\n"
              "        if event[3] != origin:\n"
              "            wrong += 1\n"
              "            continue\n"
              "        append(event)\n"
              "    if inline and (len(inline) != len(raws)\n"
              "                   or not _same_bytes(_pack(inline), _array_header(len(raws)), raws)):\n"
              "        events, invalid = _drop_uncanonical(events, invalid)\n"
              "    return events, invalid, wrong\n")
    scope: dict[str, Any] = {"MAX_STR": MAX_STR, "MAX_NAMES": MAX_NAMES, "MAX_U63": MAX_U63, "MAX_BIN": MAX_BIN,
                             "_isfinite": math.isfinite,
                             "ONE": FORMAT_VERSION, "_sha256": hashlib.sha256, "_unpackb": msgpack.unpackb,
                             "_pack": _pack, "SMALL": _SMALL, "EventDecodeError": EventDecodeError,
                             "decode_event_tuple": decode_event_tuple, "_drop_uncanonical": _drop_uncanonical,
                             "_array_header": _array_header, "_same_bytes": _same_bytes}
    scope.update({f"K{i}": kind for i, kind in enumerate(_KIND_ORDER)})
    exec(compile(source, "<blob decoder>", "exec"), scope)  # the source is built from SCHEMAS alone
    return scope["decode_events"]  # type: ignore[no-any-return]


decode_events = _compile_blob_decoder()
decode_events.__doc__ = """Decode a blob's events (``raws``) whose origin must be ``origin``: (the valid events of
that origin as plain tuples in order, the number of invalid events, the number of valid events of another origin).
The same result as ``decode_event_tuple`` on each event followed by the origin check, in one loop."""
