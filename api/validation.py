"""Request schemas: turn a decoded JSON body into checked values or raise ``Invalid`` (→ 422).

Hand-written on purpose: the rules are few and precise (id charset, host:port, finite numbers in
range), and every message names the field and what is expected. The string rules are regular
expressions written in the common subset of Python's ``re`` and ECMA 262, always matched against the
whole value (``fullmatch``: a trailing newline is not let through by ``$``); api/openapi.py publishes
the same patterns, lengths and ranges in /openapi.json, so the document states exactly what is checked
(tests/test_contract_schemathesis.py holds the two together). The node stats rules live in
node/scheduler.py, shared with the stats that peers gossip (node/gossip.py).
"""

from __future__ import annotations

import re
from typing import Any

from node.events import MAX_STR
from node.naming import ID_RE
from node.scheduler import STAT_DEFAULTS, STAT_RANGES, WEIGHT_RANGE, check_number, check_stats
from node.scheduler import InvalidValue as Invalid

MAX_U63 = 2**63 - 1

# ---- string rules (published in /openapi.json) -----------------------------------------------------

# ... but not "." or "..": HTTP clients (httpx, browsers, curl) turn /node/.. into /, so such a node or object
# could be registered and never fetched (a reviewer's reproduction)
ID_PATTERN = ID_RE.pattern  # ^[A-Za-z0-9._:-]{1,128}$ but . and ..
HASH_PATTERN = r"^(?!\.\.?$)[A-Za-z0-9._:-]{1,256}$"
# 1-128 characters, no control characters (C0, DEL, C1), neither starting nor ending with a space
ZONE_PATTERN = r"^[^\x00-\x20\x7f-\x9f](?:[^\x00-\x1f\x7f-\x9f]*[^\x00-\x20\x7f-\x9f])?$"
MAX_ZONE = 128
DATA_HEX_PATTERN = r"^(?:[0-9A-Fa-f]{2})+$"  # whole bytes, no 0x, no spaces

_PORT = r"(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_H16 = r"[0-9A-Fa-f]{1,4}"
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_IPV6 = "|".join([
    rf"(?:{_H16}:){{7}}{_H16}",
    rf"(?:{_H16}:){{1,7}}:",
    rf"(?:{_H16}:){{1,6}}:{_H16}",
    rf"(?:{_H16}:){{1,5}}(?::{_H16}){{1,2}}",
    rf"(?:{_H16}:){{1,4}}(?::{_H16}){{1,3}}",
    rf"(?:{_H16}:){{1,3}}(?::{_H16}){{1,4}}",
    rf"(?:{_H16}:){{1,2}}(?::{_H16}){{1,5}}",
    rf"{_H16}:(?::{_H16}){{1,6}}",
    rf":(?:(?::{_H16}){{1,7}}|:)",
    rf"::(?:[Ff]{{4}}:)?{_OCTET}(?:\.{_OCTET}){{3}}",  # IPv4-mapped
])
# host:port; host a DNS name or dotted IPv4 (labels of letters, digits and inner hyphens), or [IPv6]
ADDR_PATTERN = rf"^(?:{_LABEL}(?:\.{_LABEL})*|\[(?:{_IPV6})\]):{_PORT}$"
MAX_ADDR = MAX_STR  # what an event field holds

_ID = re.compile(ID_PATTERN)
_HASH = re.compile(HASH_PATTERN)
_ZONE = re.compile(ZONE_PATTERN)
_DATA_HEX = re.compile(DATA_HEX_PATTERN)
_ADDR = re.compile(ADDR_PATTERN)
_QUERY_INT = re.compile(r"-?[0-9]{1,19}")


def require_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise Invalid("body", "a JSON object")
    return body


def _is_unicode(value: str) -> bool:
    """False for a string holding a lone surrogate (valid in JSON text, not a character; cannot be stored)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def node_id(value: Any, field: str = "id") -> str:
    if type(value) is not str or not _ID.fullmatch(value):
        raise Invalid(field, "1-128 characters of A-Z a-z 0-9 . _ : -")
    return value


def object_hash(value: Any, field: str = "hash") -> str:
    if type(value) is not str or not _HASH.fullmatch(value):
        raise Invalid(field, "1-256 characters of A-Z a-z 0-9 . _ : -")
    return value


def zone(value: Any) -> str:
    if (type(value) is not str or len(value) > MAX_ZONE or not _ZONE.fullmatch(value)
            or not _is_unicode(value)):
        raise Invalid("zone", f"1-{MAX_ZONE} characters, no control characters, no space at either end")
    return value


def addr(value: Any) -> str:
    """``host:port`` with a port from 1 to 65535; an IPv6 host is written in brackets: ``[::1]:50051``."""
    if type(value) is not str or len(value) > MAX_ADDR or not _ADDR.fullmatch(value):
        raise Invalid("addr", "host:port with a port from 1 to 65535 (IPv6 as [addr]:port)")
    return value


def data_hex(value: Any) -> bytes:
    if type(value) is not str or not _DATA_HEX.fullmatch(value):
        raise Invalid("data_hex", "an even, non-zero number of hex digits (no 0x prefix, no spaces)")
    return bytes.fromhex(value)


def integer(value: Any, field: str, lo: int = 0, hi: int = MAX_U63) -> int:
    """A JSON integer in range; like JSON Schema, ``20.0`` is the integer 20 (``true`` is not an integer)."""
    if type(value) is float and value.is_integer():
        value = int(value)
    if type(value) is not int or not lo <= value <= hi:
        raise Invalid(field, f"an integer from {lo} to {hi}")
    return value


def query_integer(raw: str | None, field: str, default: int, lo: int, hi: int) -> int:
    """A query parameter holding a decimal integer (``int()`` would also take ``" 3"``, ``"3_0"``, ``"٣"``)."""
    if raw is None:
        return default
    if not _QUERY_INT.fullmatch(raw):
        raise Invalid(field, f"an integer from {lo} to {hi}")
    return integer(int(raw), field, lo, hi)


number = check_number


def stats(body: dict[str, Any]) -> dict[str, float]:
    return check_stats(body, STAT_DEFAULTS)


WORKLOAD_FIELDS = {
    "cpu_req": "cpu_free", "ram_req_mb": "ram_free_mb", "gpu_req": "gpu_free",
    "max_latency_ms": "latency_ms", "io_tolerance": "io_pressure",
}


def workload(body: dict[str, Any]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name, stat in WORKLOAD_FIELDS.items():
        value = body.get(name)
        lo, hi, lo_open = STAT_RANGES[stat]
        out[name] = None if value is None else check_number(value, name, lo, hi, lo_open)
    return out


def weights(body: dict[str, Any], names: tuple[str, ...]) -> dict[str, float]:
    """The weights given; a field omitted or null keeps its default."""
    out = {}
    for name in names:
        if body.get(name) is not None:
            out[name] = check_number(body[name], name, *WEIGHT_RANGE)
    return out
