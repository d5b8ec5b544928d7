"""Hybrid logical clock: timestamps that follow wall time yet never go backwards and respect causality.

A timestamp is ``(wall_ms, counter)``; ties between coordinators are broken by the origin id, which
the event carries. Pure: the wall clock is injected.

Observed timestamps move the clock forward by at most ``max_drift_ms`` past the wall clock: a member's
event stamped far in the future (up to ``2**63 - 1``) is still applied to the state, but it no longer
drags every later local timestamp with it. Both parts stay within ``0..2**63 - 1``, the range the event
encoding accepts, so ``now()`` always gives a timestamp that can be encoded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

Timestamp = tuple[int, int]
MAX_PART = 2**63 - 1  # the largest wall or counter an event may carry (node.events.MAX_U63)
MAX_DRIFT_MS = 60_000  # how far past the wall clock an observed timestamp may move ours


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class HybridLogicalClock:
    def __init__(self, clock: Callable[[], int] = wall_ms, last: Timestamp = (0, 0),
                 max_drift_ms: int = MAX_DRIFT_MS) -> None:
        self._clock = clock
        self.max_drift_ms = max_drift_ms
        self.clamped = 0  # observed timestamps that were further ahead than max_drift_ms
        self._wall, self._counter = 0, 0
        self.observe(last)

    def wall(self) -> int:
        """The wall clock this clock reads (ms)."""
        return self._clock()

    @property
    def last(self) -> Timestamp:
        return (self._wall, self._counter)

    def now(self) -> Timestamp:
        """A timestamp strictly greater than every one issued or observed before (observed ones as far as
        ``max_drift_ms`` lets them count)."""
        physical = min(self._clock(), MAX_PART - 1)
        if physical > self._wall:
            self._wall, self._counter = physical, 0
        elif self._counter < MAX_PART:
            self._counter += 1
        else:  # the counter is exhausted: borrow a millisecond (observe keeps wall far below MAX_PART)
            self._wall, self._counter = self._wall + 1, 0
        return (self._wall, self._counter)

    def resume(self, issued: Timestamp) -> None:
        """Continue past a timestamp this clock issued in an earlier run (the outbox's high-water mark), however
        far it is ahead of the wall clock now: our own earlier writes are not bounded by ``max_drift_ms`` (a wall
        clock stepped back while the coordinator was down would otherwise order its new writes before them,
        and last-writer-wins would keep the old values)."""
        if issued > (self._wall, self._counter):
            self._wall, self._counter = min(issued[0], MAX_PART - 1), issued[1]

    def observe(self, remote: Timestamp) -> None:
        """Fold in a timestamp seen on a remote event, so our next one orders after it; a timestamp more
        than ``max_drift_ms`` ahead of the wall clock only moves ours to that bound."""
        self.observe_all((remote,))

    def observe_all(self, remotes: Iterable[Timestamp], latest_of_them: Timestamp | None = None) -> None:
        """``observe`` each of ``remotes`` (one reading of the wall clock for all: a blob's events). Given the
        latest of them (``latest_of_them``, known to whoever applied them) within the bound, that one alone is
        observed, the same in one step: ``remotes`` is not read then (a rebuild's hot path)."""
        limit = min(self._clock() + self.max_drift_ms, MAX_PART - 1)
        latest = (self._wall, self._counter)
        if latest_of_them is not None and latest_of_them[0] <= limit:
            if latest_of_them > latest:
                self._wall, self._counter = latest_of_them
            return
        for remote in remotes:
            if remote[0] > limit:  # clamped one by one: (limit, 0) may order before another one at the bound
                self.clamped += 1
                remote = (limit, 0)
            if remote > latest:
                latest = remote
        self._wall, self._counter = latest
