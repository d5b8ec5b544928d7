"""Replica placement: multi-probe consistent hashing over a cached ring of virtual nodes.

Each node owns ``vnodes(capacity_gb)`` points on a 64-bit ring (one per started 8 GB, at least
``MIN_VNODES``, at most ``MAX_VNODES`` so a huge capacity cannot blow up memory or time: 10k nodes cost
at most 1.28M points). A key is hashed to ``PROBES`` positions; the point closest after any probe wins
(multi-probe consistent hashing, Appleton & O'Reilly 2015). Probes bring the peak-to-mean load near
1.05, where a plain ring would need ~1000 points per node; 32 points per node keep the least-loaded
node near the mean too (with one point per node, nodes whose point follows closely after another's
starve). A joining node takes keys only from the probes it wins.

Replica ``r`` repeats the lookup with a per-round salt. Distinct zones come first; a node is never
chosen twice; if rounds run out, the ring is walked clockwise from the primary. Every coordinator
with the same registry computes the same answer: ties break by node id.

The ring is rebuilt only when the registry's membership epoch changes, incrementally when few
nodes changed.
"""

from __future__ import annotations

import hashlib
import struct
from bisect import bisect_left

from node.state import State

PROBES = 21
MIN_VNODES = 32
MAX_VNODES = 128
GB_PER_VNODE = 8
MAX_ROUNDS_PER_REPLICA = 4
_RING = 1 << 64
_PROBE_STRUCT = struct.Struct(">24Q")  # 3 SHA-512 digests = 24 probe positions (PROBES of them used)


def vnodes(capacity_gb: int) -> int:
    return max(MIN_VNODES, min(MAX_VNODES, -(-capacity_gb // GB_PER_VNODE)))


def _point(node_id: str, v: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{node_id}#{v}".encode()).digest()[:8], "big")


def _probes(key: bytes, rnd: int) -> tuple[int, ...]:
    salt = rnd.to_bytes(4, "big")
    digest = b"".join(hashlib.sha512(bytes((i,)) + salt + key).digest() for i in range(3))
    return _PROBE_STRUCT.unpack(digest)[:PROBES]


class Ring:
    """Sorted vnode points with their owners; supports incremental add/remove."""

    def __init__(self) -> None:
        self.points: list[tuple[int, str]] = []  # (position, node id), sorted
        self.positions: list[int] = []  # positions only, parallel to points (fast bisect)
        self.zone: dict[str, str] = {}
        self.weight: dict[str, int] = {}
        self.zone_sizes: dict[str, int] = {}  # zone -> number of nodes in it

    def _count(self, zone: str, delta: int) -> None:
        size = self.zone_sizes.get(zone, 0) + delta
        if size:
            self.zone_sizes[zone] = size
        else:
            del self.zone_sizes[zone]

    def add(self, node_id: str, zone: str, weight: int) -> None:
        self.zone[node_id], self.weight[node_id] = zone, weight
        self._count(zone, 1)
        for v in range(weight):
            item = (_point(node_id, v), node_id)
            i = bisect_left(self.points, item)
            self.points.insert(i, item)
            self.positions.insert(i, item[0])

    def remove(self, node_id: str) -> None:
        for v in range(self.weight.pop(node_id)):
            item = (_point(node_id, v), node_id)
            i = bisect_left(self.points, item)
            del self.points[i]
            del self.positions[i]
        self._count(self.zone.pop(node_id), -1)

    @classmethod
    def build(cls, nodes: dict[str, tuple[str, int]]) -> Ring:
        ring = cls()
        for node_id, (zone, weight) in nodes.items():
            ring.zone[node_id], ring.weight[node_id] = zone, weight
            ring._count(zone, 1)
            ring.points.extend((_point(node_id, v), node_id) for v in range(weight))
        ring.points.sort()
        ring.positions = [p for p, _ in ring.points]
        return ring

    def closest(self, probes: tuple[int, ...]) -> int:
        """Index of the point closest after any of the probes (ties: smaller index)."""
        positions, n = self.positions, len(self.positions)
        best_i, best_d = 0, _RING
        for h in probes:
            i = bisect_left(positions, h)
            if i == n:
                i = 0
            d = (positions[i] - h) % _RING
            if d < best_d or (d == best_d and self.points[i][1] < self.points[best_i][1]):
                best_i, best_d = i, d
        return best_i


class Placement:
    """Placement over the current registry, with the ring cached by membership epoch."""

    def __init__(self, state: State) -> None:
        self._state = state
        self._epoch = -1
        self._ring = Ring()
        self.rebuilds = 0

    def ring(self) -> Ring:
        if self._epoch != self._state.membership_epoch:
            self._refresh()
        return self._ring

    def _refresh(self) -> None:
        want = {nid: (rec[0], vnodes(rec[2])) for nid, rec in self._state.live_nodes()}
        ring = self._ring
        have = {nid: (ring.zone[nid], ring.weight[nid]) for nid in ring.zone}
        changed = [nid for nid in want.keys() | have.keys() if want.get(nid) != have.get(nid)]
        if len(changed) > 64:
            self._ring = Ring.build(want)
        else:
            for nid in sorted(changed):
                if nid in have:
                    ring.remove(nid)
                if nid in want:
                    ring.add(nid, *want[nid])
        self._epoch = self._state.membership_epoch
        self.rebuilds += 1

    def place(self, key: str, rf: int) -> list[str]:
        """Up to ``rf`` distinct node ids for ``key``, distinct zones first."""
        ring = self.ring()
        if not ring.points or rf <= 0:
            return []
        total_nodes, total_zones = len(ring.zone), len(ring.zone_sizes)
        want = min(rf, total_nodes)
        kb = key.encode()
        chosen: list[str] = []
        zones: set[str] = set()
        deferred: list[str] = []
        start = -1
        rnd = 0
        for _ in range(want * MAX_ROUNDS_PER_REPLICA):
            if len(chosen) == want:
                break
            i = ring.closest(_probes(kb, rnd))
            rnd += 1
            if start < 0:
                start = i
            node_id = ring.points[i][1]
            if node_id in chosen:
                continue
            zone = ring.zone[node_id]
            if zone in zones and len(zones) < total_zones:
                if node_id not in deferred:
                    deferred.append(node_id)
                continue
            chosen.append(node_id)
            zones.add(zone)
        if len(chosen) < want:
            self._fill(ring, start, chosen, zones, total_zones, deferred, want)
        return chosen

    @staticmethod
    def _fill(ring: Ring, start: int, chosen: list[str], zones: set[str], total_zones: int,
              deferred: list[str], want: int) -> None:
        n = len(ring.points)
        # First pass: walk clockwise for nodes in zones not used yet.
        i, steps = start, 0
        while len(zones) < total_zones and len(chosen) < want and steps < n:
            node_id = ring.points[i][1]
            zone = ring.zone[node_id]
            if zone not in zones and node_id not in chosen:
                chosen.append(node_id)
                zones.add(zone)
            i, steps = (i + 1) % n, steps + 1
        # Second pass: any distinct node, round winners first, then clockwise from the primary.
        for node_id in deferred:
            if len(chosen) == want:
                return
            if node_id not in chosen:
                chosen.append(node_id)
        i, steps = start, 0
        while len(chosen) < want and steps < n:
            node_id = ring.points[i][1]
            if node_id not in chosen:
                chosen.append(node_id)
            i, steps = (i + 1) % n, steps + 1
