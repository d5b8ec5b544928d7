"""Workload scheduling: score eligible nodes and pick the best (pure; the clock is passed in).

score = w_cpu·cpu_free + w_ram·ram_free_mb + w_gpu·gpu_free + w_latency/latency_ms − w_io·io_pressure

A node is eligible only with fresh stats (reported within the stats TTL) that meet every requirement
given: cpu_free ≥ cpu_req, ram_free_mb ≥ ram_req_mb, gpu_free ≥ gpu_req, latency_ms ≤ max_latency_ms,
io_pressure ≤ io_tolerance. The highest score wins; equal scores go to the smaller node id.

Also the one definition of valid stats (``STAT_RANGES``, ``check_stats``): the HTTP route
``POST /node/{id}/stats`` and the stats received from peers (node/gossip.py) both go through it, and
``choose`` skips any entry that would not pass it (zero latency, non-finite values, a report time far
in the future), so no stored value can make scheduling fail.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# The one default weight set: used at start and for fields a /scheduler/config request omits.
# Scales match the units: ram in MB (1 GB free ~ 1 point), latency as 1/ms (5 ms ~ 10 points).
DEFAULT_WEIGHTS: dict[str, float] = {"w_cpu": 1.0, "w_ram": 0.001, "w_gpu": 2.0, "w_latency": 50.0, "w_io": 1.5}
WEIGHT_NAMES = ("w_cpu", "w_ram", "w_gpu", "w_latency", "w_io")
WEIGHT_RANGE = (0.0, 1e9)

# Valid node stats (and workload requirements on them): field -> (lo, hi, lower bound excluded)
STAT_RANGES: dict[str, tuple[float, float, bool]] = {
    "cpu_free": (0.0, 1e6, False),
    "ram_free_mb": (0.0, 1e12, False),
    "gpu_free": (0.0, 1e6, False),
    "latency_ms": (0.0, 1e7, True),
    "io_pressure": (0.0, 1.0, False),
}
# What the HTTP route assumes for an omitted optional field (peers always send all five)
STAT_DEFAULTS: dict[str, float] = {"gpu_free": 0.0, "latency_ms": 10.0, "io_pressure": 0.0}
# Clock skew tolerated between coordinators: a report stamped later than this in the future is refused
MAX_FUTURE_MS = 60_000


class InvalidValue(ValueError):
    """A value outside its documented rule; ``field`` names it (the HTTP API answers 422 with it)."""

    def __init__(self, field: str, expected: str) -> None:
        super().__init__(f"{field}: expected {expected}")
        self.field, self.expected = field, expected


def check_number(value: Any, field: str, lo: float, hi: float, lo_open: bool = False) -> float:
    """``value`` as a float if it is a JSON number (not a bool) in range; InvalidValue otherwise."""
    if type(value) not in (int, float):
        raise InvalidValue(field, "a finite number")
    try:
        v = float(value)  # an integer literal of 400 digits overflows here
    except OverflowError:
        raise InvalidValue(field, "a finite number") from None
    if not math.isfinite(v):
        raise InvalidValue(field, "a finite number")
    if v < lo or v > hi or (lo_open and v == lo):
        raise InvalidValue(field, f"a number {'>' if lo_open else '>='} {lo:g} and <= {hi:g}")
    return v + 0.0  # -0.0 is 0.0: kept as sent, it was echoed, and (t, -0.0) and (t, 0.0) each superseded the other


def check_stats(values: Mapping[str, Any], defaults: Mapping[str, float] | None = None) -> dict[str, float]:
    """The five stats, checked against ``STAT_RANGES``; a missing (or null) field takes its value from
    ``defaults`` if it has one there, else it is an error."""
    out = {}
    for name, (lo, hi, lo_open) in STAT_RANGES.items():
        value = values.get(name)
        if value is None:
            if defaults is None or name not in defaults:
                raise InvalidValue(name, "a finite number (required)")
            value = defaults[name]
        out[name] = check_number(value, name, lo, hi, lo_open)
    return out


@dataclass(frozen=True, slots=True)
class NodeStats:
    cpu_free: float
    ram_free_mb: float
    gpu_free: float
    latency_ms: float
    io_pressure: float
    reported_ms: int  # wall clock ms when the coordinator received them

    def as_dict(self) -> dict[str, float]:
        return {"cpu_free": self.cpu_free, "ram_free_mb": self.ram_free_mb, "gpu_free": self.gpu_free,
                "latency_ms": self.latency_ms, "io_pressure": self.io_pressure}


@dataclass(frozen=True, slots=True)
class Workload:
    cpu_req: float | None = None
    ram_req_mb: float | None = None
    gpu_req: float | None = None
    max_latency_ms: float | None = None
    io_tolerance: float | None = None

    def admits(self, s: NodeStats) -> bool:
        return not (
            (self.cpu_req is not None and s.cpu_free < self.cpu_req)
            or (self.ram_req_mb is not None and s.ram_free_mb < self.ram_req_mb)
            or (self.gpu_req is not None and s.gpu_free < self.gpu_req)
            or (self.max_latency_ms is not None and s.latency_ms > self.max_latency_ms)
            or (self.io_tolerance is not None and s.io_pressure > self.io_tolerance)
        )


def usable(s: NodeStats, now_ms: int, ttl_ms: int) -> bool:
    """Fresh (reported within the TTL, not beyond the tolerated clock skew in the future) and valid."""
    if not -MAX_FUTURE_MS <= now_ms - s.reported_ms <= ttl_ms:
        return False
    for name, (lo, hi, lo_open) in STAT_RANGES.items():
        v = getattr(s, name)
        if not lo <= v <= hi or (lo_open and v == lo):  # NaN fails every comparison, ±inf the range
            return False
    return True


MIN_SCORED_LATENCY_MS = 1e-3  # below it, a latency scores as this: 1e-320 ms made the score inf, every such node
#                               tied, and the smaller id won whatever its other stats (a reviewer's reproduction)


def supersedes(new: NodeStats, old: NodeStats) -> bool:
    """Whether report ``new`` replaces ``old`` of the same node: the later one, and of two stamped alike the larger
    values, so every coordinator keeps the same one whatever order they arrived in (with ``>=`` on the time alone,
    two coordinators holding each other's report of one millisecond swapped them, and scheduled differently)."""
    return (new.reported_ms, new.cpu_free, new.ram_free_mb, new.gpu_free, new.latency_ms, new.io_pressure) >= (
        old.reported_ms, old.cpu_free, old.ram_free_mb, old.gpu_free, old.latency_ms, old.io_pressure)


def score(w: tuple[float, float, float, float, float], s: NodeStats) -> float:
    # (never 0 for checked stats; no crash if it is)
    latency = w[3] / max(s.latency_ms, MIN_SCORED_LATENCY_MS) if s.latency_ms > 0 else 0.0
    return w[0] * s.cpu_free + w[1] * s.ram_free_mb + w[2] * s.gpu_free + latency - w[4] * s.io_pressure


def choose(
    candidates: Iterable[tuple[str, NodeStats]],
    workload: Workload,
    weights: tuple[float, float, float, float, float],
    now_ms: int,
    ttl_ms: int,
) -> str | None:
    """The best eligible node id, or None when nothing fits (stats that are stale, stamped in the future or
    outside ``STAT_RANGES`` are not eligible)."""
    best: tuple[float, str] | None = None
    for node_id, stats in candidates:
        if not usable(stats, now_ms, ttl_ms) or not workload.admits(stats):
            continue
        sc = score(weights, stats)
        if math.isnan(sc):  # weights from a (signed) event are checked on the way in; stay safe anyway
            continue
        if best is None or sc > best[0] or (sc == best[0] and node_id < best[1]):
            best = (sc, node_id)
    return best[1] if best is not None else None
