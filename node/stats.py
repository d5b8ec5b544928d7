"""Node runtime stats: soft state (telemetry, not ledger), last-writer-wins by report time, with a TTL.

Stats are not published to DA; the peer protocol will share them between coordinators. Entries older
than the TTL are dropped when read and by ``prune``.
"""

from __future__ import annotations

from node.hlc import wall_ms
from node.scheduler import MAX_FUTURE_MS, NodeStats, supersedes


class StatsTable:
    """Entries older than the TTL, or stamped more than ``MAX_FUTURE_MS`` ahead of the clock (held while it ran
    fast: stepped back, it made every later report of the node lose to that entry, so the node could not be
    scheduled for the size of the step, and nothing expired it: a reviewer's reproduction), count as absent.

    An entry's age counts from its stamp or from when it came here, whichever is earlier: a report stamped ahead
    (a peer's clock running fast, within the allowance, or a lying member) kept a node that stopped reporting
    schedulable for the TTL plus the skew (52 s past a 2 s TTL; a reviewer's reproduction)."""

    def __init__(self, ttl_ms: int) -> None:
        self.ttl_ms = ttl_ms
        self._stats: dict[str, tuple[NodeStats, int]] = {}  # node id → (stats, received here ms)

    def _current(self, held: tuple[NodeStats, int], now_ms: int) -> bool:
        stats, received = held
        return stats.reported_ms - now_ms <= MAX_FUTURE_MS and now_ms - min(stats.reported_ms, received) <= self.ttl_ms

    def put(self, node_id: str, stats: NodeStats, now_ms: int | None = None) -> bool:
        """Keep ``stats`` unless the entry held supersedes it; whether it was kept."""
        now = wall_ms() if now_ms is None else now_ms
        held = self._stats.get(node_id)
        if held is None or not self._current(held, now) or supersedes(stats, held[0]):
            # the same report again (a peer's catch-up) keeps its first arrival: else re-sending kept it alive
            self._stats[node_id] = (stats, held[1] if held is not None and held[0] == stats else now)
            return True
        return False

    def latest_ms(self, node_id: str, now_ms: int | None = None) -> int:
        """The report time of the entry held for ``node_id`` (stale or not, but not one from the future), or -1."""
        held = self._stats.get(node_id)
        now = wall_ms() if now_ms is None else now_ms
        return -1 if held is None or held[0].reported_ms - now > MAX_FUTURE_MS else held[0].reported_ms

    def get(self, node_id: str, now_ms: int) -> NodeStats | None:
        held = self._stats.get(node_id)
        return held[0] if held is not None and self._current(held, now_ms) else None

    def current(self, now_ms: int) -> list[tuple[str, NodeStats]]:
        """The entries that count now (what the scheduler chooses from and a peer catching up is sent)."""
        return [(nid, held[0]) for nid, held in self._stats.items() if self._current(held, now_ms)]

    def prune(self, now_ms: int) -> int:
        """Drop the entries stale by their stamp, or from the future. One stale only by its arrival (stamped ahead)
        stays until its stamp is stale too: dropped, the same report re-sent by a peer (a catch-up at each link
        coming up) came back as new, for another TTL, until stamp + TTL (a reviewer's reproduction)."""
        stale = [nid for nid, (stats, _) in self._stats.items()
                 if now_ms - stats.reported_ms > self.ttl_ms or stats.reported_ms - now_ms > MAX_FUTURE_MS]
        for nid in stale:
            del self._stats[nid]
        return len(stale)
