"""Workload scheduling: score eligible nodes and pick the best (pure; the clock is passed in).

score = w_cpu·cpu_free + w_ram·ram_free_mb + w_gpu·gpu_free + w_latency/latency_ms − w_io·io_pressure

A node is eligible only with fresh stats (reported within the stats TTL) that meet every requirement
given: cpu_free ≥ cpu_req, ram_free_mb ≥ ram_req_mb, gpu_free ≥ gpu_req, latency_ms ≤ max_latency_ms,
io_pressure ≤ io_tolerance. The highest score wins; equal scores go to the smaller node id.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# The one default weight set: used at start and for fields a /scheduler/config request omits.
# Scales match the units: ram in MB (1 GB free ~ 1 point), latency as 1/ms (5 ms ~ 10 points).
DEFAULT_WEIGHTS: dict[str, float] = {"w_cpu": 1.0, "w_ram": 0.001, "w_gpu": 2.0, "w_latency": 50.0, "w_io": 1.5}
WEIGHT_NAMES = ("w_cpu", "w_ram", "w_gpu", "w_latency", "w_io")


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


def score(w: tuple[float, float, float, float, float], s: NodeStats) -> float:
    return w[0] * s.cpu_free + w[1] * s.ram_free_mb + w[2] * s.gpu_free + w[3] / s.latency_ms - w[4] * s.io_pressure


def choose(
    candidates: Iterable[tuple[str, NodeStats]],
    workload: Workload,
    weights: tuple[float, float, float, float, float],
    now_ms: int,
    ttl_ms: int,
) -> str | None:
    """The best eligible node id, or None when nothing fits."""
    best: tuple[float, str] | None = None
    for node_id, stats in candidates:
        if now_ms - stats.reported_ms > ttl_ms or not workload.admits(stats):
            continue
        sc = score(weights, stats)
        if best is None or sc > best[0] or (sc == best[0] and node_id < best[1]):
            best = (sc, node_id)
    return best[1] if best is not None else None
