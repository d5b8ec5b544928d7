"""Replica placement: multi-probe consistent hashing over a ring of virtual nodes, updated in place.

Each node owns ``vnodes(capacity_gb)`` points on a 64-bit ring (one per started 8 GB, at least ``MIN_VNODES``,
at most ``MAX_VNODES`` so a huge capacity cannot blow up memory or time: 10k nodes cost at most 1.28M points);
a node with ``capacity_gb`` 0 has none (it is placed nothing). A key is hashed to ``PROBES`` positions; the
point closest after any probe wins (multi-probe consistent hashing, Appleton & O'Reilly 2015). Probes bring
the peak-to-mean load near 1.05, where a plain ring would need ~1000 points per node; 32 points per node keep
the least-loaded node near the mean too (with one point per node, nodes whose point follows closely after
another's starve). A joining node takes keys only from the probes it wins.

Replica ``r`` repeats the lookup with a per-round salt. Distinct zones come first; a node is never
chosen twice; if rounds run out, the ring is walked clockwise from the primary. Every coordinator
with the same registry computes the same answer: ties break by node id.

The ring is a sorted sequence of (position, node id) points kept in blocks of about ``BLOCK`` points,
with each block's last position in a small index list (a hand-written sorted list in the manner of
``sortedcontainers``): a lookup bisects the index, then one block; adding or removing a node inserts or
deletes its points inside a few small blocks instead of shifting one list of up to 1.28M entries. The
ring is built from scratch once (the first lookup; a coordinator's lookups ``follow`` the registry first, so
large work runs in a worker thread, not on the event loop); after that, when the registry's membership epoch
changes, only the nodes whose registry entry changed are found (the registry's entries are immutable
tuples, so a changed node is one whose entry is no longer the same object: compared a block of entries
at a time in C) and their points removed or added. The ring holds exactly the points a fresh build for
the same node set would, in the same order, so answers do not depend on the history of changes.
"""

from __future__ import annotations

import hashlib
import struct
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain, compress, islice
from operator import is_not

import trio

from node.state import NodeRecord, State, Version

PROBES = 21
MIN_VNODES = 32
MAX_VNODES = 128
GB_PER_VNODE = 8
MAX_ROUNDS_PER_REPLICA = 4
INLINE_UPDATES = 8  # nodes a lookup updates in the ring on the event loop (~1 ms each); more go to a worker thread
BLOCK = 512  # target points per ring block; a block splits above 2 × BLOCK and merges below BLOCK / 2
_DIFF_CHUNK = 256  # registry entries compared per slice when looking for changed nodes
_RING = 1 << 64
_PROBE_STRUCT = struct.Struct(">24Q")  # 3 SHA-512 digests = 24 probe positions (PROBES of them used)

Location = tuple[int, int]  # (block, offset) of a point in a Ring


def vnodes(capacity_gb: int) -> int:
    return max(MIN_VNODES, min(MAX_VNODES, -(-capacity_gb // GB_PER_VNODE)))


def _point(node_id: str, v: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{node_id}#{v}".encode()).digest()[:8], "big")


def _probes(key: bytes, rnd: int) -> tuple[int, ...]:
    salt = rnd.to_bytes(4, "big")
    digest = b"".join(hashlib.sha512(bytes((i,)) + salt + key).digest() for i in range(3))
    return _PROBE_STRUCT.unpack(digest)[:PROBES]


class Ring:
    """Points (position, node id) sorted by position then id, in blocks; incremental add/remove.

    Invariants: no block is empty; ``_pos[b]`` and ``_own[b]`` are parallel; ``_last[b] == _pos[b][-1]``;
    concatenating the blocks gives the sorted sequence of every node's points.
    """

    def __init__(self) -> None:
        self._pos: list[list[int]] = []  # positions, per block
        self._own: list[list[str]] = []  # owner node ids, parallel to _pos
        self._last: list[int] = []  # last position of each block (bisected first)
        self._len = 0
        self.zone: dict[str, str] = {}
        self.weight: dict[str, int] = {}
        self.zone_sizes: dict[str, int] = {}  # zone -> number of nodes in it

    def __len__(self) -> int:
        return self._len

    def _count(self, zone: str, delta: int) -> None:
        size = self.zone_sizes.get(zone, 0) + delta
        if size:
            self.zone_sizes[zone] = size
        else:
            del self.zone_sizes[zone]

    # ---- reading ---------------------------------------------------------------------------------

    def points(self) -> list[tuple[int, str]]:
        """Every point in ring order (a copy: O(points); for tests and analysis, not lookups)."""
        return list(zip(self.positions(), chain.from_iterable(self._own), strict=True))

    def positions(self) -> list[int]:
        """Every position in ring order (a copy)."""
        return list(chain.from_iterable(self._pos))

    def owner(self, loc: Location) -> str:
        return self._own[loc[0]][loc[1]]

    def walk(self, loc: Location) -> Iterator[str]:
        """Owners of every point once, clockwise from ``loc`` (included)."""
        b, k = loc
        own = self._own
        return chain(islice(own[b], k, None), chain.from_iterable(own[b + 1:]), chain.from_iterable(own[:b]),
                     islice(own[b], k))

    def closest(self, probes: tuple[int, ...]) -> Location:
        """Location of the point closest after any of the probes (ties: smaller node id, then earlier probe)."""
        last, pos, own = self._last, self._pos, self._own
        nb = len(last)
        best_b = best_k = 0
        best_d = _RING
        for h in probes:
            b = bisect_left(last, h)
            if b == nb:  # past the last point: wrap to the first
                b = k = 0
                d = pos[0][0] - h + _RING
            else:
                blk = pos[b]
                k = bisect_left(blk, h)
                d = blk[k] - h
            if d < best_d or (d == best_d and own[b][k] < own[best_b][best_k]):
                best_b, best_k, best_d = b, k, d
        return best_b, best_k

    # ---- changing --------------------------------------------------------------------------------

    def _find(self, p: int, node_id: str) -> Location:
        """Where (p, node_id) is or would be inserted: before the first point ≥ it in (position, id) order."""
        last, pos, own = self._last, self._pos, self._own
        nb = len(last)
        b = bisect_left(last, p)
        if b == nb:
            return nb - 1, len(pos[nb - 1])
        blk, ob = pos[b], own[b]
        k = bisect_left(blk, p)
        # Equal positions (a 64-bit collision between nodes) are ordered by node id, possibly across blocks.
        while blk[k] == p and ob[k] < node_id:
            k += 1
            if k == len(blk):
                if b + 1 == nb or pos[b + 1][0] != p:
                    break
                b, k = b + 1, 0
                blk, ob = pos[b], own[b]
        return b, k

    def _insert(self, p: int, node_id: str) -> None:
        if not self._last:
            self._pos.append([p])
            self._own.append([node_id])
            self._last.append(p)
        else:
            b, k = self._find(p, node_id)
            blk = self._pos[b]
            blk.insert(k, p)
            self._own[b].insert(k, node_id)
            self._last[b] = blk[-1]
            if len(blk) > 2 * BLOCK:
                self._split(b)
        self._len += 1

    def _delete(self, p: int, node_id: str) -> None:
        b, k = self._find(p, node_id)
        blk, ob = self._pos[b], self._own[b]
        if k == len(blk) or blk[k] != p or ob[k] != node_id:
            raise KeyError(f"ring has no point {p} of {node_id}")
        del blk[k], ob[k]
        self._len -= 1
        if not blk:
            del self._pos[b], self._own[b], self._last[b]
            return
        self._last[b] = blk[-1]
        if len(blk) < BLOCK // 2 and len(self._pos) > 1:
            self._merge(b if b + 1 < len(self._pos) else b - 1)

    def _split(self, b: int) -> None:
        blk, ob = self._pos[b], self._own[b]
        half = len(blk) // 2
        self._pos[b + 1:b + 1] = [blk[half:]]
        self._own[b + 1:b + 1] = [ob[half:]]
        del blk[half:], ob[half:]
        self._last[b:b + 1] = [blk[-1], self._pos[b + 1][-1]]

    def _merge(self, b: int) -> None:
        """Join blocks b and b + 1 (splitting the result again if it is too long)."""
        self._pos[b].extend(self._pos.pop(b + 1))
        self._own[b].extend(self._own.pop(b + 1))
        del self._last[b]
        self._last[b] = self._pos[b][-1]
        if len(self._pos[b]) > 2 * BLOCK:
            self._split(b)

    def add(self, node_id: str, zone: str, weight: int) -> None:
        self.zone[node_id], self.weight[node_id] = zone, weight
        self._count(zone, 1)
        for v in range(weight):
            self._insert(_point(node_id, v), node_id)

    def remove(self, node_id: str) -> None:
        for v in range(self.weight.pop(node_id)):
            self._delete(_point(node_id, v), node_id)
        self._count(self.zone.pop(node_id), -1)

    @classmethod
    def build(cls, nodes: dict[str, tuple[str, int]]) -> Ring:
        """A ring holding ``nodes`` (id -> (zone, weight)), built from scratch."""
        ring = cls()
        points: list[tuple[int, str]] = []
        for node_id, (zone, weight) in nodes.items():
            ring.zone[node_id], ring.weight[node_id] = zone, weight
            ring._count(zone, 1)
            points.extend((_point(node_id, v), node_id) for v in range(weight))
        points.sort()
        for a in range(0, len(points), BLOCK):
            part = points[a:a + BLOCK]
            ring._pos.append([p for p, _ in part])
            ring._own.append([o for _, o in part])
            ring._last.append(part[-1][0])
        ring._len = len(points)
        return ring


@dataclass(frozen=True)
class _Plan:
    """A copy of the registry (ids and entries, in its order), its membership epoch, and what following it takes:
    (node id, its ring entry now, the one it should have) per changed node, or a full build."""

    ids: list[str] | None  # (None: followed from the membership log; the copy seen last stays as it was)
    entries: list[tuple[Version, NodeRecord | None]] | None
    epoch: int
    updates: list[tuple[str, tuple[str, int] | None, tuple[str, int] | None]]
    full: bool


def _target(record: NodeRecord | None) -> tuple[str, int] | None:
    """What the ring holds for a registry record: (zone, weight), or nothing for an unregistered node or one that
    offers no capacity (``capacity_gb`` 0: it got the share of a 256 GB node, ``MIN_VNODES`` points)."""
    return None if record is None or record[2] <= 0 else (record[0], vnodes(record[2]))


class Placement:
    """Placement over the current registry; the ring follows membership changes incrementally."""

    def __init__(self, state: State) -> None:
        self._state = state
        self._epoch = -1
        self._ring = Ring()
        self._seen_ids: list[str] = []  # the registry's node ids, in its order, when the ring last followed it
        self._seen: list[tuple[Version, NodeRecord | None]] = []  # the registry's entries, parallel to _seen_ids
        self.refreshes = 0  # membership changes followed (including the first build)
        self.full_builds = 0  # rings built from scratch
        self._following = trio.Lock()  # one follow() at a time (its worker thread owns the ring meanwhile)

    def ring(self) -> Ring:
        if self._epoch != self._state.membership_epoch:
            self._refresh()
        return self._ring

    def _changed(self, ids: list[str], entries: list[tuple[Version, NodeRecord | None]]) -> list[str] | None:
        """Ids whose registry entry is not the one seen last time; None when the registry lost or
        reordered ids (never done by State, but then everything is compared by value)."""
        old_ids, old = self._seen_ids, self._seen
        n = len(old_ids)
        if len(ids) < n or (ids if len(ids) == n else ids[:n]) != old_ids:
            return None
        changed: list[str] = []
        for a in range(0, n, _DIFF_CHUNK):
            b = a + _DIFF_CHUNK
            if entries[a:b] != old[a:b]:
                changed.extend(compress(ids[a:b], map(is_not, entries[a:b], old[a:b])))
        changed.extend(ids[n:])
        return changed

    def _refresh(self) -> None:
        self._apply(self._plan())

    def _logged_changes(self) -> list[str] | None:
        """The node ids changed since the ring last followed the registry, from the state's membership log; None
        unless the log holds every change since (one entry per epoch bump by an event; a snapshot restore bumps it
        without entries)."""
        log, since, now = self._state.membership_log, self._epoch, self._state.membership_epoch
        count = now - since
        if since < 0 or count <= 0 or count > len(log) or log[-1][0] != now or log[-count][0] != since + 1:
            return None
        return list(dict.fromkeys(nid for _, nid in log[-count:]))

    def _plan(self) -> _Plan:
        """What following the registry takes now (the event loop's part: the nodes whose ring points change, from
        the state's membership log, else by comparing a copy of the registry's entries with the last one; cheap)."""
        nodes = self._state.nodes
        ring = self._ring
        ids: list[str] | None = None
        entries: list[tuple[Version, NodeRecord | None]] | None = None
        changed = self._logged_changes()
        if changed is None:
            ids, entries = list(nodes), list(nodes.values())
            changed = self._changed(ids, entries)
        if changed is None:
            changed = list(nodes.keys() | ring.zone.keys())
        updates: list[tuple[str, tuple[str, int] | None, tuple[str, int] | None]] = []
        for nid in changed:
            entry = nodes.get(nid)
            want = _target(entry[1] if entry is not None else None)
            have = (ring.zone[nid], ring.weight[nid]) if nid in ring.zone else None
            if want != have:
                updates.append((nid, have, want))
        full = bool(updates) and (not ring.zone or len(updates) > max(64, len(ring.zone) // 4))  # first fill, or many
        if full and ids is None:
            ids, entries = list(nodes), list(nodes.values())
        return _Plan(ids, entries, self._state.membership_epoch, updates, full)

    def _apply(self, plan: _Plan) -> None:
        """Build or update the ring as planned (only from the plan's copies: it may run in a worker thread)."""
        if plan.full:
            assert plan.ids is not None and plan.entries is not None
            self._ring = Ring.build({nid: t for nid, (_, rec) in zip(plan.ids, plan.entries, strict=True)
                                     if (t := _target(rec)) is not None})
            self.full_builds += 1
        else:
            ring = self._ring
            for nid, have, want in plan.updates:
                if have is not None:
                    ring.remove(nid)
                if want is not None:
                    ring.add(nid, *want)
        if plan.ids is not None and plan.entries is not None:  # (else stale: ``_changed`` then finds a superset of
            self._seen_ids, self._seen = plan.ids, plan.entries  # the changes, each checked against the ring)
        self._epoch = plan.epoch
        self.refreshes += 1

    async def follow(self) -> None:
        """Follow the registry before a lookup without holding the event loop: a full build at 10,000 nodes (the
        first lookup after a start or a restore, or after many changes at once) took 0.5-2.7 s, and the event
        loop (peer heartbeats included) stopped meanwhile. A plan with more than ``INLINE_UPDATES`` nodes to
        update, or a full build, runs in a worker thread (the GIL's switch interval gives the loop its turn
        every few milliseconds); lookups meanwhile wait for it (``_following``), and nothing else touches the
        ring. It follows again what changed meanwhile (registrations keep coming while a rebuild from DA catches
        up), until the ring is current: then ``place`` answers at once."""
        async with self._following:
            while self._epoch != self._state.membership_epoch:  # again if it changed while a thread worked
                plan = self._plan()
                if plan.full or len(plan.updates) > INLINE_UPDATES:
                    await trio.to_thread.run_sync(self._apply, plan)
                else:
                    self._apply(plan)

    def place(self, key: str, rf: int) -> list[str]:
        """Up to ``rf`` distinct node ids for ``key``, distinct zones first."""
        ring = self.ring()
        if not len(ring) or rf <= 0:
            return []
        total_nodes, total_zones = len(ring.zone), len(ring.zone_sizes)
        want = min(rf, total_nodes)
        kb = key.encode()
        chosen: list[str] = []
        zones: set[str] = set()
        deferred: list[str] = []
        start: Location | None = None
        rnd = 0
        for _ in range(want * MAX_ROUNDS_PER_REPLICA):
            if len(chosen) == want:
                break
            loc = ring.closest(_probes(kb, rnd))
            rnd += 1
            if start is None:
                start = loc
            node_id = ring.owner(loc)
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
            assert start is not None
            self._fill(ring, start, chosen, zones, total_zones, deferred, want)
        return chosen

    @staticmethod
    def _fill(ring: Ring, start: Location, chosen: list[str], zones: set[str], total_zones: int,
              deferred: list[str], want: int) -> None:
        # First pass: walk clockwise for nodes in zones not used yet.
        if len(zones) < total_zones:
            for node_id in ring.walk(start):
                if len(zones) == total_zones or len(chosen) == want:
                    break
                zone = ring.zone[node_id]
                if zone not in zones and node_id not in chosen:
                    chosen.append(node_id)
                    zones.add(zone)
        # Second pass: any distinct node, round winners first, then clockwise from the primary.
        for node_id in deferred:
            if len(chosen) == want:
                return
            if node_id not in chosen:
                chosen.append(node_id)
        if len(chosen) < want:
            for node_id in ring.walk(start):
                if node_id not in chosen:
                    chosen.append(node_id)
                    if len(chosen) == want:
                        return
