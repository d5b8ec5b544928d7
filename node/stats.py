"""Node runtime stats: soft state (telemetry, not ledger), last-writer-wins by report time, with a TTL.

Stats are not published to DA; the peer protocol will share them between coordinators. Entries older
than the TTL are dropped when read and by ``prune``.
"""

from __future__ import annotations

from collections.abc import Iterator

from node.scheduler import NodeStats, supersedes


class StatsTable:
    def __init__(self, ttl_ms: int) -> None:
        self.ttl_ms = ttl_ms
        self._stats: dict[str, NodeStats] = {}

    def put(self, node_id: str, stats: NodeStats) -> None:
        current = self._stats.get(node_id)
        if current is None or supersedes(stats, current):
            self._stats[node_id] = stats

    def latest_ms(self, node_id: str) -> int:
        """The report time of the entry held for ``node_id`` (stale or not), or -1."""
        stats = self._stats.get(node_id)
        return -1 if stats is None else stats.reported_ms

    def get(self, node_id: str, now_ms: int) -> NodeStats | None:
        stats = self._stats.get(node_id)
        if stats is None or now_ms - stats.reported_ms > self.ttl_ms:
            return None
        return stats

    def items(self) -> Iterator[tuple[str, NodeStats]]:
        return iter(list(self._stats.items()))

    def prune(self, now_ms: int) -> int:
        stale = [nid for nid, s in self._stats.items() if now_ms - s.reported_ms > self.ttl_ms]
        for nid in stale:
            del self._stats[nid]
        return len(stale)
