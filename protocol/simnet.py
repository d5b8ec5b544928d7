"""A simulated network with the peer manager's interface, for simulation tests of the layers above.

Nodes of one ``SimNetwork`` exchange messages in memory, encoded and decoded through the same registry
as real links (so schemas are enforced). A seeded RNG decides, per message: drop (``drop``), duplicate
(``duplicate``), and a delivery delay uniform in ``delay`` seconds (different delays reorder messages).
``partition`` splits the nodes into groups that cannot reach each other until ``heal``. All waiting is
``trio.sleep``, so it runs under trio's ``MockClock`` (autojump) in virtual time.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import trio

from protocol.dispatch import Dispatcher
from protocol.envelope import Message, Registry


@dataclass
class SimStats:
    sent: int = 0
    delivered: int = 0
    dropped: int = 0
    duplicated: int = 0
    partitioned: int = 0


class SimNode:
    """One node's view: ``send``, ``broadcast``, ``request``, ``subscribe``, ``on_request``, ``up_peers``."""

    def __init__(self, net: SimNetwork, node_id: str) -> None:
        self.net, self.my_id = net, node_id
        net.incarnations += 1  # request ids distinct per incarnation (as the random ones of real nodes), seeded
        self.dispatcher = Dispatcher(self.send, first_id=net.incarnations << 40)
        self.subscribe = self.dispatcher.subscribe
        self.on_request = self.dispatcher.on_request
        self.request = self.dispatcher.request
        self.received = 0

    @property
    def peers(self) -> list[str]:
        return [n for n in self.net.nodes if n != self.my_id]

    def up_peers(self) -> list[str]:
        return [n for n in self.peers if self.net.reachable(self.my_id, n)]

    def send(self, peer_id: str, type_: str, body: dict[str, Any], *, id_: int | None = None,
             re: int | None = None) -> bool:
        return self.net.transmit(self.my_id, peer_id, self.net.registry.encode(Message(type_, body, id_, re)))

    def broadcast(self, type_: str, body: dict[str, Any]) -> int:
        return sum(self.send(peer, type_, body) for peer in self.peers)


class SimNetwork:
    def __init__(self, registry: Registry, seed: int = 0, *, drop: float = 0.0, duplicate: float = 0.0,
                 delay: tuple[float, float] = (0.0, 0.0)) -> None:
        self.registry = registry
        self.rng = random.Random(seed)
        self.drop, self.duplicate, self.delay = drop, duplicate, delay
        self.nodes: dict[str, SimNode] = {}
        self.incarnations = 0  # nodes added so far (a restarted node is added again)
        self.stats = SimStats()
        self._partitions: list[dict[str, int]] = []  # each: node -> its group (see partition)
        self._nursery: trio.Nursery | None = None

    def add(self, node_id: str) -> SimNode:
        node = self.nodes[node_id] = SimNode(self, node_id)
        node.dispatcher.nursery = self._nursery
        return node

    def partition(self, *groups: set[str]) -> dict[str, int]:
        """Nodes in different groups cannot reach each other (nodes in no group reach only each other). Partitions
        add up: two nodes reach each other when none of those in force separates them (a new one replaced the one
        in force, and each one's end healed every other: overlapping partitions cut each other short). Returns the
        partition, for ``heal``."""
        cut = {node: i for i, group in enumerate(groups) for node in group}
        self._partitions.append(cut)
        return cut

    def heal(self, partition: dict[str, int] | None = None) -> None:
        """End ``partition`` (what ``partition`` returned), or every one."""
        self._partitions = [] if partition is None else [p for p in self._partitions if p is not partition]

    def reachable(self, a: str, b: str) -> bool:
        return all(p.get(a, -1) == p.get(b, -1) for p in self._partitions)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Delivery needs this running (deliveries are tasks in its nursery)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for node in self.nodes.values():
                node.dispatcher.nursery = nursery
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:  # closing: what is sent from now on is lost, as on a network going down
                self._nursery = None

    def transmit(self, src: str, dst: str, frame: bytes) -> bool:
        if dst not in self.nodes or self._nursery is None:
            return False
        self.stats.sent += 1
        if self.rng.random() < self.drop:
            self.stats.dropped += 1
            return True  # like a real network: the sender does not learn of the loss
        copies = 2 if self.rng.random() < self.duplicate else 1
        self.stats.duplicated += copies - 1
        for _ in range(copies):
            self._nursery.start_soon(self._deliver, src, dst, frame, self.rng.uniform(*self.delay))
        return True

    async def _deliver(self, src: str, dst: str, frame: bytes, delay: float) -> None:
        await trio.sleep(delay)
        if not self.reachable(src, dst):  # a partition cuts messages still in flight too
            self.stats.partitioned += 1
            return
        node = self.nodes[dst]
        node.received += 1
        self.stats.delivered += 1
        await node.dispatcher.deliver(src, self.registry.decode(frame), size=len(frame))
