"""Node stats as soft state over the peer protocol: every locally reported update is broadcast to the peers
that are up at once (while their send queues have room to spare), a peer whose link comes up gets every fresh
entry, and received updates are merged last writer wins by report time. Stats never go to DA. The catch-up of
a peer whose link came up is paced by its send queue (``CATCH_UP_RESERVE``), so it loses no entry and leaves
room to other messages.

Received stats are checked exactly as ``POST /node/{id}/stats`` checks them (``node.scheduler.check_stats``,
the one validator), plus what only a peer can get wrong: the node id must be a valid id, the report time
neither older than the TTL nor more than ``MAX_FUTURE_MS`` ahead of our clock (a report from the future
would win every merge and never expire; a little skew is kept as stamped, and a node's own later report
here is stamped past it). Stats of a node this coordinator
does not know yet (its registration may still be on its way through DA) wait in a bounded buffer until it
is registered or the report goes stale; when the buffer is full, more are dropped and counted. So nothing
a peer sends can make ``/schedule`` fail or grow the stats table beyond the registered nodes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import trio

from node.coordinator import Coordinator
from node.hlc import wall_ms
from node.naming import ID_RE
from node.scheduler import MAX_FUTURE_MS, STAT_RANGES, InvalidValue, NodeStats, check_stats, supersedes
from protocol.envelope import Registry, is_float, is_int, is_str
from protocol.manager import PeerManager

log = logging.getLogger("dsdn.gossip")

STATS = "node.stats"
_FIELDS = tuple(STAT_RANGES)
SCHEMA = {"node_id": is_str(128), "reported_ms": is_int(), **{name: is_float() for name in _FIELDS}}
MAX_WAITING = 1024  # stats of not-yet-registered nodes held at once
FLUSH_INTERVAL_S = 1.0
CATCH_UP_RESERVE = 512  # a link-up's catch-up leaves at least this much of the peer's send queue to other messages
CATCH_UP_PAUSE_S = 0.02  # how long it waits for the queue to drain below that
CATCH_UP_PATIENCE_S = 60.0  # ... before it gives up on that peer until its next link-up


def register(registry: Registry) -> None:
    registry.register(STATS, SCHEMA)


def to_body(node_id: str, stats: NodeStats) -> dict[str, Any]:
    return {"node_id": node_id, "reported_ms": stats.reported_ms, **stats.as_dict()}


def from_body(body: Mapping[str, Any], now_ms: int, ttl_ms: int) -> tuple[str, NodeStats]:
    """The node id and stats of a received message; InvalidValue (naming the field) if any rule fails."""
    node_id = body.get("node_id")
    if type(node_id) is not str or not ID_RE.fullmatch(node_id):
        raise InvalidValue("node_id", "1-128 characters of A-Z a-z 0-9 . _ : -")
    reported = body.get("reported_ms")
    if type(reported) is not int or not now_ms - ttl_ms <= reported <= now_ms + MAX_FUTURE_MS:
        raise InvalidValue("reported_ms", f"a time within the stats TTL ({ttl_ms} ms) and at most "
                                          f"{MAX_FUTURE_MS} ms ahead of this coordinator's clock")
    values = check_stats(body)  # all five required: a peer sends what it stored, defaults already applied
    # as stamped: clamped to our clock, a report from a peer whose clock runs ahead was another report here than
    # there, and won or lost its merges differently (a reviewer's reproduction)
    return node_id, NodeStats(reported_ms=reported, **values)


class StatsIntake:
    """Checks and merges the stats peers send; holds those of nodes not registered here yet."""

    def __init__(self, coord: Coordinator, max_waiting: int = MAX_WAITING) -> None:
        self.coord, self.max_waiting = coord, max_waiting
        self.waiting: dict[str, NodeStats] = {}
        self.accepted = self.refused = self.dropped = 0
        self.shed = 0  # live updates not sent to a peer whose send queue was short of room (see run_stats_gossip)

    def receive(self, peer_id: str, body: Mapping[str, Any], now_ms: int) -> bool:
        """True if the update was merged now or kept until its node is registered."""
        try:
            node_id, stats = from_body(body, now_ms, self.coord.stats.ttl_ms)
        except InvalidValue as exc:
            self.refused += 1
            log.debug("stats from %s refused: %s", peer_id, exc)
            return False
        if self.coord.state.node(node_id) is not None:
            self.coord.accept_stats(node_id, stats)
            self.accepted += 1
            return True
        current = self.waiting.get(node_id)
        if current is None and len(self.waiting) >= self.max_waiting:
            self.dropped += 1
            return False
        if current is None or supersedes(stats, current):
            self.waiting[node_id] = stats
        return True

    def flush(self, now_ms: int) -> None:
        """Merge the waiting stats whose node is now registered; forget those gone stale."""
        ttl = self.coord.stats.ttl_ms
        for node_id, stats in list(self.waiting.items()):
            if self.coord.state.node(node_id) is not None:
                del self.waiting[node_id]
                self.coord.accept_stats(node_id, stats)
                self.accepted += 1
            elif now_ms - stats.reported_ms > ttl:
                del self.waiting[node_id]


async def run_stats_gossip(coord: Coordinator, peers: PeerManager, intake: StatsIntake | None = None) -> None:
    inbox = peers.subscribe(STATS)
    intake = intake or StatsIntake(coord)

    room = getattr(peers, "queue_room", None)  # (the simulated network's queues are unbounded)

    def share(node_id: str, stats: NodeStats) -> None:
        """To the peers that are up, each while its send queue has more room than ``CATCH_UP_RESERVE``: broadcast
        to every peer, a stream of reports (10,000 nodes reporting every 10 s) filled the queue of a slow or down
        peer, and the receipt engine's and the DKG's messages to it were refused (a reviewer's reading). A peer
        down gets every fresh entry at its link-up; one skipped here, the node's next report."""
        body = to_body(node_id, stats)
        for peer_id in peers.up_peers():
            if room is None or room(peer_id) > CATCH_UP_RESERVE:
                peers.send(peer_id, STATS, body)
            else:
                intake.shed += 1

    catching_up: dict[str, bool] = {}  # peers whose catch-up runs -> another link-up came meanwhile (run again)
    tasks: list[trio.Nursery] = []  # where the catch-ups run (once the gossip runs)

    def catch_up(peer_id: str) -> None:
        if peer_id in catching_up:
            catching_up[peer_id] = True
        elif tasks:
            catching_up[peer_id] = False
            tasks[0].start_soon(send_catch_up, peer_id)

    async def send_catch_up(peer_id: str) -> None:
        """One task per peer: a peer that stops reading holds up its own catch-up only."""
        try:
            while True:
                await send_fresh(peer_id)
                if not catching_up[peer_id]:
                    return
                catching_up[peer_id] = False
        finally:
            del catching_up[peer_id]

    async def send_fresh(peer_id: str) -> None:
        """Every fresh entry to a peer whose link came up, paced so that it never fills more than half of the
        peer's send queue: pushed all at once, entries past the queue's 1,024 were lost (and anything else sent
        to that peer meanwhile, requests included, was refused; a reviewer's finding). A peer whose link goes down
        meanwhile, or whose queue does not drain for CATCH_UP_PATIENCE_S, is left: its next link-up starts again."""
        now = wall_ms()
        bodies = [to_body(node_id, stats) for node_id, stats in coord.stats.current(now)]
        for body in bodies:
            with trio.move_on_after(CATCH_UP_PATIENCE_S) as patience:
                while room is not None and room(peer_id) <= CATCH_UP_RESERVE:
                    if peer_id not in peers.up_peers():
                        return
                    await trio.sleep(CATCH_UP_PAUSE_S)
            if patience.cancelled_caught:
                log.warning("stats catch-up of %s given up: its send queue did not drain for %g s", peer_id,
                            CATCH_UP_PATIENCE_S)
                return
            peers.send(peer_id, STATS, body)
            await trio.lowlevel.checkpoint()

    async def flush_waiting() -> None:
        while True:
            await trio.sleep(FLUSH_INTERVAL_S)
            intake.flush(wall_ms())

    coord.on_stats = share  # type: ignore[method-assign]
    peers.on_link_up(catch_up)
    async with trio.open_nursery() as nursery:
        tasks.append(nursery)
        nursery.start_soon(flush_waiting)
        async for peer_id, msg in inbox:
            intake.receive(peer_id, msg.body, wall_ms())
        nursery.cancel_scope.cancel()
