"""Wraps a DA layer with a timeout on every call and real counters and latencies (for /da/metrics).

Also: ``probe(timeout_s)``, the health check (one attempt, its own short deadline: a layer slower than that
fails it); the outcome of the latest ``read_after`` (``last_read_error``, what /ready reports while a log
cannot be read); and ``on_page``, an optional hook that sees every page a consumer reads (the stack uses it to
find fallback blobs that are not on the primary yet). ``observers`` see the duration of every successful call
but long polls (a read given ``wait_s``, whose deadline grows by it); ``head_seen`` keeps the newest head a
health check or a read reported (for GET /metrics).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import trio

from node.da.base import BlobRef, DAError, DALayer, DATimeout, Page, read_failure
from node.hlc import wall_ms

T = TypeVar("T")


@dataclass
class LayerMetrics:
    post_count: int = 0
    get_count: int = 0
    read_count: int = 0
    error_count: int = 0
    health_check_count: int = 0
    retry_count: int = 0
    post_latency_us: int = 0
    get_latency_us: int = 0

    def as_dict(self, available: bool) -> dict[str, Any]:
        return {
            "available": available,
            "post_count": self.post_count,
            "get_count": self.get_count,
            "error_count": self.error_count,
            "health_check_count": self.health_check_count,
            "retry_count": self.retry_count,
            "avg_post_latency_us": self.post_latency_us // self.post_count if self.post_count else 0,
            "avg_get_latency_us": self.get_latency_us // self.get_count if self.get_count else 0,
        }


class MeteredLayer:
    """Same interface as the wrapped layer; every call is bounded by ``timeout_s`` and counted."""

    def __init__(self, inner: DALayer, timeout_s: float) -> None:
        self.inner = inner
        self.name = inner.name
        self.timeout_s = timeout_s
        self.metrics = LayerMetrics()
        self.last_read_error: str | None = None  # the latest read_after failed with this (None: it worked)
        self.last_read_answered = False  # ... and the layer did answer (an error, not an outage: not DAUnavailable)
        self.last_read_ms: int | None = None  # wall ms when the latest successful read_after started
        self.marker: Callable[[], int] | None = None  # the status machine's mark(), taken when a read starts
        self.read_mark: int | None = None  # its value at the start of the latest read_after
        #: called with (page, wall ms when its read started) after every successful read_after
        self.on_page: Callable[[Page, int], Awaitable[None]] | None = None
        #: called with (operation, seconds) after every successful call (post, get, read, head)
        self.observers: list[Callable[[str, float], None]] = []
        self.head_seen: int | None = None  # the newest head a health check, head() or a read at the head reported

    def _limit(self, what: str) -> float:
        """The time ``what`` may take: ``timeout_s``, one call's (with its retries), or what the layer says the
        operation needs when it makes several calls in a row (``op_timeout_s``: a Celestia post is a Submit and
        its reads back; with one call's time, a post the node had included counted as failed, went to the next
        layer and was paid for twice: a reviewer's reproduction)."""
        op_timeout = getattr(self.inner, "op_timeout_s", None)
        return float(op_timeout(what, self.timeout_s)) if callable(op_timeout) else self.timeout_s

    async def _call(self, what: str, fn: Callable[[], Awaitable[T]], wait_s: float = 0.0) -> T:
        """``fn()`` within its limit (``_limit``, plus ``wait_s``, a long poll's own wait), counted."""
        start = time.perf_counter_ns()
        limit = self._limit(what) + wait_s
        try:
            with trio.fail_after(limit):
                result = await fn()
        except trio.TooSlowError:
            self.metrics.error_count += 1
            raise DATimeout(f"{self.name}: {what} timed out after {limit:.3g}s") from None
        except DAError:
            self.metrics.error_count += 1
            raise
        elapsed_us = (time.perf_counter_ns() - start) // 1000
        if what == "post":
            self.metrics.post_count += 1
            self.metrics.post_latency_us += elapsed_us
        elif what == "get":
            self.metrics.get_count += 1
            self.metrics.get_latency_us += elapsed_us
        elif what == "read":
            self.metrics.read_count += 1
        if not wait_s:  # a long poll's duration is mostly its wait: it says nothing of the layer's speed
            for observe in self.observers:
                observe(what, elapsed_us / 1e6)
        return result

    def metrics_json(self, available: bool) -> dict[str, Any]:
        self.metrics.retry_count = int(getattr(self.inner, "retries", 0))  # layers that retry count them
        return self.metrics.as_dict(available)

    async def post(self, data: bytes) -> BlobRef:
        return await self._call("post", lambda: self.inner.post(data))

    async def get(self, ref: BlobRef) -> bytes:
        return await self._call("get", lambda: self.inner.get(ref))

    async def read_after(self, cursor: int, limit: int, wait_s: float = 0.0) -> Page:
        started = wall_ms()  # a long poll's empty answer holds for its end too, so its start is the safe bound
        if self.marker is not None:
            self.read_mark = self.marker()
        try:
            page = await self._call("read", lambda: self.inner.read_after(cursor, limit, wait_s), wait_s)
        except DAError as exc:
            self.last_read_error, self.last_read_answered = read_failure(cursor, exc)
            raise
        self.last_read_error, self.last_read_ms = None, started
        if page.at_head:
            self.head_seen = max(self.head_seen or 0, page.cursor)
        if self.on_page is not None:
            await self.on_page(page, started)
        return page

    async def head(self) -> int:
        self.metrics.health_check_count += 1
        self.head_seen = await self._call("head", self.inner.head)
        return self.head_seen

    async def probe(self, timeout_s: float) -> int:
        """A health check: the head, in one attempt (``inner.probe(timeout_s)`` when the layer has one, e.g.
        Celestia without its retries), within ``timeout_s``: slower counts as failing (DATimeout)."""
        self.metrics.health_check_count += 1
        probe = getattr(self.inner, "probe", None)
        fn: Callable[[], Awaitable[int]] = (lambda: probe(timeout_s)) if callable(probe) else self.inner.head
        try:
            with trio.fail_after(timeout_s):
                self.head_seen = await fn()
                return self.head_seen
        except trio.TooSlowError:
            self.metrics.error_count += 1
            raise DATimeout(f"{self.name}: health check got no answer within {timeout_s:.3g}s") from None
        except DAError:
            self.metrics.error_count += 1
            raise
