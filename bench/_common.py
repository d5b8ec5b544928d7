"""Small helpers shared by the benchmarks: printing, goal verdicts, a registry of N nodes, memory."""

from __future__ import annotations

import resource

from node import events as ev
from node.state import State

ADDR = "10.0.0.1:5000"


def title(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def say(text: str) -> None:
    print(text, flush=True)


def verdict(goal: str, met: bool, detail: str = "") -> bool:
    """Print one goal line, honestly; return ``met``."""
    suffix = f" ({detail})" if detail else ""
    say(f"GOAL {goal}: {'goal met' if met else 'goal NOT met'}{suffix}")
    return met


def node_id(i: int) -> str:
    return f"node-{i:05d}"


def registry(n: int, zones: int = 10, capacity_gb: int = 100, origin: str = "coordinator-0") -> State:
    """A State holding ``n`` registered nodes spread round-robin over ``zones`` zones."""
    state = State()
    for i in range(n):
        state.apply(ev.make_event(ev.NODE_REGISTERED, (1_700_000_000_000 + i, 0), origin,
                                  id=node_id(i), zone=f"zone-{i % zones}", addr=ADDR, capacity_gb=capacity_gb))
    return state


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    """Current resident set size of this process."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0
