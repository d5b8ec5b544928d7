"""Node stats as soft state over the peer protocol: every locally reported update is broadcast to the
peers at once, a peer whose link comes up gets every fresh entry, and received updates are merged last
writer wins by report time. Stats never go to DA."""

from __future__ import annotations

from typing import Any

from node.coordinator import Coordinator
from node.hlc import wall_ms
from node.scheduler import NodeStats
from protocol.envelope import Registry, is_float, is_int, is_str
from protocol.manager import PeerManager

STATS = "node.stats"
_FIELDS = ("cpu_free", "ram_free_mb", "gpu_free", "latency_ms", "io_pressure")
SCHEMA = {"node_id": is_str(128), "reported_ms": is_int(), **{name: is_float() for name in _FIELDS}}


def register(registry: Registry) -> None:
    registry.register(STATS, SCHEMA)


def to_body(node_id: str, stats: NodeStats) -> dict[str, Any]:
    return {"node_id": node_id, "reported_ms": stats.reported_ms, **stats.as_dict()}


def from_body(body: dict[str, Any]) -> tuple[str, NodeStats]:
    return body["node_id"], NodeStats(reported_ms=body["reported_ms"], **{name: body[name] for name in _FIELDS})


async def run_stats_gossip(coord: Coordinator, peers: PeerManager) -> None:
    inbox = peers.subscribe(STATS)

    def share(node_id: str, stats: NodeStats) -> None:
        peers.broadcast(STATS, to_body(node_id, stats))

    def catch_up(peer_id: str) -> None:
        now = wall_ms()
        for node_id, stats in coord.stats.items():
            if now - stats.reported_ms <= coord.stats.ttl_ms:
                peers.send(peer_id, STATS, to_body(node_id, stats))

    coord.on_stats = share  # type: ignore[method-assign]
    peers.on_link_up(catch_up)
    async for _, msg in inbox:
        coord.accept_stats(*from_body(msg.body))
