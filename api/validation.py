"""Request schemas: turn a decoded JSON body into checked values or raise ``Invalid`` (→ 422).

Hand-written on purpose: the rules are few and precise (id charset, host:port, finite numbers in
range), and every message names the field and what is expected.
"""

from __future__ import annotations

import ipaddress
import math
import re
from typing import Any

from node.naming import HOSTNAME_RE, ID_RE

HASH_RE = re.compile(r"^[A-Za-z0-9._:-]{1,256}$")
MAX_ZONE = 128
MAX_U63 = 2**63 - 1


class Invalid(ValueError):
    def __init__(self, field: str, expected: str) -> None:
        super().__init__(f"{field}: expected {expected}")
        self.field = field


def require_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise Invalid("body", "a JSON object")
    return body


def node_id(value: Any, field: str = "id") -> str:
    if type(value) is not str or not ID_RE.match(value):
        raise Invalid(field, "1-128 characters of A-Z a-z 0-9 . _ : -")
    return value


def object_hash(value: Any, field: str = "hash") -> str:
    if type(value) is not str or not HASH_RE.match(value):
        raise Invalid(field, "1-256 characters of A-Z a-z 0-9 . _ : -")
    return value


def zone(value: Any) -> str:
    if type(value) is not str or not value.strip() or len(value) > MAX_ZONE:
        raise Invalid("zone", f"a non-empty string of at most {MAX_ZONE} characters")
    return value


def addr(value: Any) -> str:
    """``host:port`` with a valid port; an IPv6 host is written in brackets: ``[::1]:50051``."""
    expected = "host:port with a port from 1 to 65535 (IPv6 as [addr]:port)"
    if type(value) is not str or len(value) > 300 or ":" not in value:
        raise Invalid("addr", expected)
    host, _, port = value.rpartition(":")
    if not port.isdigit() or not 1 <= int(port) <= 65535 or len(port) > 5:
        raise Invalid("addr", expected)
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise Invalid("addr", expected) from None
        return value
    try:
        ipaddress.IPv4Address(host)
        return value
    except ValueError:
        pass
    if not HOSTNAME_RE.match(host):
        raise Invalid("addr", expected)
    return value


def integer(value: Any, field: str, lo: int = 0, hi: int = MAX_U63) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise Invalid(field, f"an integer from {lo} to {hi}")
    return value


def number(value: Any, field: str, lo: float, hi: float, lo_open: bool = False) -> float:
    if type(value) not in (int, float):
        raise Invalid(field, "a finite number")
    try:
        v = float(value)  # an integer literal of 400 digits overflows here
    except OverflowError:
        raise Invalid(field, "a finite number") from None
    if not math.isfinite(v):
        raise Invalid(field, "a finite number")
    if v < lo or v > hi or (lo_open and v == lo):
        raise Invalid(field, f"a number {'>' if lo_open else '>='} {lo:g} and <= {hi:g}")
    return v


# Ranges for node stats and workload requirements: (lo, hi, lower bound open)
STAT_RANGES: dict[str, tuple[float, float, bool]] = {
    "cpu_free": (0.0, 1e6, False),
    "ram_free_mb": (0.0, 1e12, False),
    "gpu_free": (0.0, 1e6, False),
    "latency_ms": (0.0, 1e7, True),
    "io_pressure": (0.0, 1.0, False),
}
STAT_DEFAULTS = {"gpu_free": 0.0, "latency_ms": 10.0, "io_pressure": 0.0}
WORKLOAD_FIELDS = {
    "cpu_req": "cpu_free", "ram_req_mb": "ram_free_mb", "gpu_req": "gpu_free",
    "max_latency_ms": "latency_ms", "io_tolerance": "io_pressure",
}
WEIGHT_RANGE = (0.0, 1e9)


def stats(body: dict[str, Any]) -> dict[str, float]:
    out = {}
    for name, (lo, hi, lo_open) in STAT_RANGES.items():
        value = body.get(name)
        if value is None:
            if name not in STAT_DEFAULTS:
                raise Invalid(name, "a finite number (required)")
            value = STAT_DEFAULTS[name]
        out[name] = number(value, name, lo, hi, lo_open)
    return out


def workload(body: dict[str, Any]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name, stat in WORKLOAD_FIELDS.items():
        value = body.get(name)
        lo, hi, lo_open = STAT_RANGES[stat]
        out[name] = None if value is None else number(value, name, lo, hi, lo_open)
    return out


def weights(body: dict[str, Any], names: tuple[str, ...]) -> dict[str, float]:
    out = {}
    for name in names:
        if body.get(name) is not None:
            out[name] = number(body[name], name, *WEIGHT_RANGE)
    return out
