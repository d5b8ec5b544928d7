"""The simulator's DA layer: one append-only blob log in memory, shared by every simulated member, in virtual time.

It implements ``node.da.base.DALayer``, so the members' real Publisher and Consumer run over it unchanged. Faults:
``down_until`` (trio time) — an outage: every call fails with ``DAUnavailable`` until then, and a call in flight
when it begins loses its answer (as with a real network); ``lag`` (seconds) — a posted blob becomes readable only
that long after it was posted (inclusion delay); ``latency`` (seconds) — how long each call takes. Heights start at
1, one blob per height; the commitment is SHA-256 of the data. Nothing here touches a thread or the wall clock, so a
seeded run replays exactly.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right

import trio

from node.da.base import BlobNotFound, BlobRef, DAUnavailable, Page


class MemoryDA:
    def __init__(self, name: str = "primary") -> None:
        self.name = name
        self.down_until = 0.0
        self.lag = 0.0
        self.latency = 0.0
        self.posted_at: list[float] = []  # trio time of each blob's post, non-decreasing
        self.blobs: list[tuple[BlobRef, bytes]] = []
        self.posts = 0  # successful posts (blobs in the log)
        self.refused = 0  # calls failed by an outage

    def preload(self, data: bytes) -> BlobRef:
        """Append a blob readable from the start (history that existed before the run)."""
        return self._append(data, float("-inf"))

    def _append(self, data: bytes, at: float) -> BlobRef:
        ref = BlobRef(self.name, len(self.blobs) + 1, hashlib.sha256(data).digest())
        self.blobs.append((ref, data))
        self.posted_at.append(at)
        self.posts += 1
        return ref

    def _check(self) -> None:
        if trio.current_time() < self.down_until:
            self.refused += 1
            raise DAUnavailable(f"{self.name}: simulated outage")

    def _visible(self) -> int:
        """How many blobs (a prefix of the log) are readable now."""
        return bisect_right(self.posted_at, trio.current_time() - self.lag)

    async def post(self, data: bytes) -> BlobRef:
        self._check()
        await trio.sleep(self.latency)  # the call is in flight
        self._check()
        return self._append(bytes(data), trio.current_time())

    async def get(self, ref: BlobRef) -> bytes:
        await trio.sleep(self.latency)
        self._check()
        if 1 <= ref.height <= self._visible() and self.blobs[ref.height - 1][0] == ref:
            return self.blobs[ref.height - 1][1]
        raise BlobNotFound(f"{self.name}: no blob at height {ref.height} with that commitment")

    async def read_after(self, cursor: int, limit: int, wait_s: float = 0.0) -> Page:
        """Answers after the simulated latency, never waiting for new blobs (the consumer paces itself)."""
        await trio.sleep(self.latency)
        self._check()
        visible = self._visible()
        items = self.blobs[cursor:min(visible, cursor + limit)]
        return Page(list(items), cursor + len(items), cursor + len(items) >= visible)

    async def head(self) -> int:
        await trio.sleep(self.latency)
        self._check()
        return self._visible()
