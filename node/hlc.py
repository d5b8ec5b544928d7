"""Hybrid logical clock: timestamps that follow wall time yet never go backwards and respect causality.

A timestamp is ``(wall_ms, counter)``; ties between coordinators are broken by the origin id, which
the event carries. Pure: the wall clock is injected.
"""

from __future__ import annotations

import time
from collections.abc import Callable

Timestamp = tuple[int, int]


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class HybridLogicalClock:
    def __init__(self, clock: Callable[[], int] = wall_ms, last: Timestamp = (0, 0)) -> None:
        self._clock = clock
        self._wall, self._counter = last

    @property
    def last(self) -> Timestamp:
        return (self._wall, self._counter)

    def now(self) -> Timestamp:
        """A timestamp strictly greater than every one issued or observed before."""
        physical = self._clock()
        if physical > self._wall:
            self._wall, self._counter = physical, 0
        else:
            self._counter += 1
        return (self._wall, self._counter)

    def observe(self, remote: Timestamp) -> None:
        """Fold in a timestamp seen on a remote event, so our next one orders after it."""
        if remote > (self._wall, self._counter):
            self._wall, self._counter = remote
