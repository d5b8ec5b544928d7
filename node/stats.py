"""Node runtime stats: soft state (telemetry, not ledger), last-writer-wins by report time, with a TTL.

Stats are not published to DA; the peer protocol will share them between coordinators. Entries older
than the TTL are dropped when read and by ``prune``.
"""

from __future__ import annotations

from collections.abc import Iterator

from node.hlc import wall_ms
from node.scheduler import MAX_FUTURE_MS, NodeStats, supersedes


class StatsTable:
    """Entries older than the TTL, or stamped more than ``MAX_FUTURE_MS`` ahead of the clock (held while it ran
    fast: stepped back, it made every later report of the node lose to that entry, so the node could not be
    scheduled for the size of the step, and nothing expired it: a reviewer's reproduction), count as absent."""

    def __init__(self, ttl_ms: int) -> None:
        self.ttl_ms = ttl_ms
        self._stats: dict[str, NodeStats] = {}

    def _current(self, stats: NodeStats, now_ms: int) -> bool:
        return -MAX_FUTURE_MS <= now_ms - stats.reported_ms <= self.ttl_ms

    def put(self, node_id: str, stats: NodeStats, now_ms: int | None = None) -> bool:
        """Keep ``stats`` unless the entry held supersedes it; whether it was kept."""
        now = wall_ms() if now_ms is None else now_ms
        current = self._stats.get(node_id)
        if current is None or not self._current(current, now) or supersedes(stats, current):
            self._stats[node_id] = stats
            return True
        return False

    def latest_ms(self, node_id: str, now_ms: int | None = None) -> int:
        """The report time of the entry held for ``node_id`` (stale or not, but not one from the future), or -1."""
        stats = self._stats.get(node_id)
        now = wall_ms() if now_ms is None else now_ms
        return -1 if stats is None or stats.reported_ms - now > MAX_FUTURE_MS else stats.reported_ms

    def get(self, node_id: str, now_ms: int) -> NodeStats | None:
        stats = self._stats.get(node_id)
        if stats is None or not self._current(stats, now_ms):
            return None
        return stats

    def items(self) -> Iterator[tuple[str, NodeStats]]:
        return iter(list(self._stats.items()))

    def prune(self, now_ms: int) -> int:
        stale = [nid for nid, s in self._stats.items() if not self._current(s, now_ms)]
        for nid in stale:
            del self._stats[nid]
        return len(stale)
