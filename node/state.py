"""The convergent ledger state machine (pure: no I/O, no clock).

Every key is a last-writer-wins register ordered by the version ``(hlc wall, hlc counter, origin,
event id)``, a total order, so any permutation of a set of events, with any duplicates, yields the same
state and the same root. Removals are tombstones (a register holding ``None``). Keys:

* ``nodes[id]``            -> (zone, addr, capacity_gb) or tombstone
* ``objects[hash]``        -> size
* ``replicas[(hash, id)]`` -> True (healed / present) or False (missing)
* ``scheduler``            -> the five weights
* ``ledger``               -> node keys and signed receipt batches (node/receipt_ledger.py)

Re-applying an event changes nothing (its register already holds its version or a later one), so
duplicates need no unbounded record: ``apply`` recognises one when its register holds exactly its
version, or when its full 32-byte id is among the last ``RECENT_IDS`` applied (a bounded cache kept in
snapshots). ``events_applied`` counts the events that were not recognised as duplicates: exact unless a
superseded event comes back after ``RECENT_IDS`` newer ones; the state and its root never depend on it.

``root()`` is an incremental set hash: the sum, mod 2^256, of the SHA-256 of each register's canonical
encoding (key, version, value), hashed once more. It changes with every register write in O(1), so a
coordinator holding millions of registers answers /state/root at once, and it is the same whatever the
order in which the registers were written. (An additive set hash is not collision-resistant against an
adversary who can choose many registers; it detects divergence between cluster members, whose events
are all signed, which is what it is for.)
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Iterable
from typing import Any

import msgpack

from node import events as ev
from node.receipt_ledger import SAME, ReceiptLedger

Version = tuple[int, int, str, bytes]
NodeRecord = tuple[str, str, int]  # zone, addr, capacity_gb
Weights = tuple[float, float, float, float, float]  # w_cpu, w_ram, w_gpu, w_latency, w_io

_MOD = 1 << 256
RECENT_IDS = 1 << 16  # ids of the latest applied events kept for duplicate detection (2 MiB in a snapshot)
_SAME = SAME  # what a register write returns when the register already holds exactly this version
_pack = msgpack.Packer(use_bin_type=True).pack


def _entry_hash(tag: str, key: Any, version: Version, value: Any) -> int:
    return int.from_bytes(hashlib.sha256(_pack((tag, key, version, value))).digest(), "big")


class State:
    def __init__(self, recent_ids: int = RECENT_IDS) -> None:
        self.nodes: dict[str, tuple[Version, NodeRecord | None]] = {}
        self.objects: dict[str, tuple[Version, int]] = {}
        self.replicas: dict[tuple[str, str], tuple[Version, bool]] = {}
        self.scheduler: tuple[Version, Weights] | None = None
        self._present: dict[str, set[str]] = {}  # derived: object hash -> node ids holding a replica
        self._recent_cap = recent_ids
        self._recent: set[bytes] = set()  # ids of the last `recent_ids` events applied (duplicate detection)
        self._recent_order: deque[bytes] = deque()  # the same ids, oldest first
        self._applied = 0
        self._live_nodes = 0
        self.membership_epoch = 0  # bumps whenever a node's visible record changes (placement cache key)
        self.max_hlc: tuple[int, int] = (0, 0)
        self._acc = 0  # the set hash accumulator, see root()
        self.ledger = ReceiptLedger(self._rehash)
        self._handlers = {
            ev.NODE_REGISTERED: self._node_registered,
            ev.NODE_UNREGISTERED: self._node_unregistered,
            ev.OBJECT_REGISTERED: self._object_registered,
            ev.REPLICA_MISSING: self._replica_missing,
            ev.REPLICA_HEALED: self._replica_healed,
            ev.SCHEDULER_CONFIG: self._scheduler_config,
            ev.NODE_KEY: lambda version, f: self.ledger.set_key(version, f[0], f[1]),
            ev.RECEIPT_BATCH: lambda version, f: self.ledger.add_batch(version, f),
        }

    # ---- applying events -------------------------------------------------------------------------

    @property
    def events_applied(self) -> int:
        """Events applied, duplicates not counted (see the module docstring for the one exception)."""
        return self._applied

    def apply(self, event: ev.Event) -> bool:
        """Apply one event; return False if it is recognised as already applied (a no-op either way)."""
        eid = event.id
        if eid in self._recent:
            return False
        if event.hlc > self.max_hlc:
            self.max_hlc = event.hlc
        if self._handlers[event.kind]((event.wall, event.counter, event.origin, eid), event.fields) == _SAME:
            return False
        self._recent.add(eid)  # _remember, inlined: this is the hot path of a rebuild
        order = self._recent_order
        order.append(eid)
        if len(order) > self._recent_cap:
            self._recent.discard(order.popleft())
        self._applied += 1
        return True

    def _remember(self, eid: bytes) -> None:
        self._recent.add(eid)
        self._recent_order.append(eid)
        if len(self._recent_order) > self._recent_cap:
            self._recent.discard(self._recent_order.popleft())

    def apply_all(self, items: Iterable[ev.Event]) -> int:
        return sum(1 for e in items if self.apply(e))

    # Each register write returns True when it wrote, False when the register holds a later version and
    # _SAME when it holds exactly this one (the event was applied before).

    def _node_registered(self, version: Version, f: tuple[Any, ...]) -> int:
        return self._set_node(version, f[0], (f[1], f[2], f[3]))

    def _node_unregistered(self, version: Version, f: tuple[Any, ...]) -> int:
        return self._set_node(version, f[0], None)

    def _rehash(self, tag: str, key: Any, old: tuple[Version, Any] | None, version: Version, value: Any) -> None:
        acc = self._acc + _entry_hash(tag, key, version, value)
        if old is not None:
            acc -= _entry_hash(tag, key, old[0], old[1])
        self._acc = acc % _MOD

    def _set_node(self, version: Version, node_id: str, record: NodeRecord | None) -> int:
        current = self.nodes.get(node_id)
        if current is not None and current[0] >= version:
            return _SAME if current[0] == version else False
        old = current[1] if current is not None else None
        self.nodes[node_id] = (version, record)
        self._rehash("n", node_id, current, version, record)
        if old != record:
            self.membership_epoch += 1
            self._live_nodes += (record is not None) - (old is not None)
        return True

    def _object_registered(self, version: Version, f: tuple[Any, ...]) -> int:
        return self._set_object(version, f[0], f[1])

    def _set_object(self, version: Version, obj: str, size: int) -> int:
        current = self.objects.get(obj)
        if current is not None and current[0] >= version:
            return _SAME if current[0] == version else False
        self.objects[obj] = (version, size)
        self._rehash("o", obj, current, version, size)
        return True

    def _replica_missing(self, version: Version, f: tuple[Any, ...]) -> int:
        return self._set_replica(version, f[0], f[1], False)

    def _replica_healed(self, version: Version, f: tuple[Any, ...]) -> int:
        return self._set_replica(version, f[0], f[1], True)

    def _set_replica(self, version: Version, obj: str, node_id: str, present: bool) -> int:
        key = (obj, node_id)
        current = self.replicas.get(key)
        if current is not None and current[0] >= version:
            return _SAME if current[0] == version else False
        self.replicas[key] = (version, present)
        self._rehash("r", key, current, version, present)
        holders = self._present.get(obj)
        if present:
            if holders is None:
                self._present[obj] = holders = set()
            holders.add(node_id)
        elif holders is not None:
            holders.discard(node_id)
        return True

    def _scheduler_config(self, version: Version, f: tuple[Any, ...]) -> int:
        return self._set_scheduler(version, (f[0], f[1], f[2], f[3], f[4]))

    def _set_scheduler(self, version: Version, weights: Weights) -> int:
        if self.scheduler is not None and self.scheduler[0] >= version:
            return _SAME if self.scheduler[0] == version else False
        self._rehash("s", "", self.scheduler, version, weights)
        self.scheduler = (version, weights)
        return True

    # ---- reading ---------------------------------------------------------------------------------

    def node(self, node_id: str) -> NodeRecord | None:
        entry = self.nodes.get(node_id)
        return entry[1] if entry is not None else None

    def live_nodes(self) -> list[tuple[str, NodeRecord]]:
        """Registered nodes sorted by id."""
        return sorted((nid, rec) for nid, (_, rec) in self.nodes.items() if rec is not None)

    @property
    def node_count(self) -> int:
        return self._live_nodes

    def object(self, obj: str) -> tuple[int, list[str]] | None:
        """(size, sorted replica node ids) of a registered object."""
        entry = self.objects.get(obj)
        if entry is None:
            return None
        return entry[1], sorted(self._present.get(obj, ()))

    def weights(self) -> Weights | None:
        return self.scheduler[1] if self.scheduler is not None else None

    def root(self) -> bytes:
        return hashlib.sha256(b"dsdn-state-root-v1" + self._acc.to_bytes(32, "big")).digest()

    # ---- snapshots -------------------------------------------------------------------------------

    def frozen(self) -> State:
        """A copy that later events do not change, cheap enough to take on the event loop (the tables are
        copied, not their entries, which are immutable tuples); encode it in a thread."""
        copy = State(self._recent_cap)
        copy.nodes, copy.objects, copy.replicas = self.nodes.copy(), self.objects.copy(), self.replicas.copy()
        copy.scheduler, copy.max_hlc, copy._acc = self.scheduler, self.max_hlc, self._acc
        copy._recent, copy._recent_order, copy._applied = self._recent.copy(), self._recent_order.copy(), self._applied
        copy.ledger = self.ledger.copy(copy._rehash)
        return copy

    def to_snapshot(self) -> dict[str, Any]:
        return {
            "nodes": [[k, list(v), list(r) if r is not None else None] for k, (v, r) in self.nodes.items()],
            "objects": [[k, list(v), s] for k, (v, s) in self.objects.items()],
            "replicas": [[k[0], k[1], list(v), p] for k, (v, p) in self.replicas.items()],
            "scheduler": [list(self.scheduler[0]), list(self.scheduler[1])] if self.scheduler else None,
            "applied": self._applied,
            "recent": b"".join(self._recent_order),  # oldest first, 32 bytes each: bounded by RECENT_IDS
            "max_hlc": list(self.max_hlc),
            "ledger": self.ledger.to_snapshot(),
        }

    @classmethod
    def from_snapshot(cls, snap: dict[str, Any], recent_ids: int = RECENT_IDS) -> State:
        """The state of ``to_snapshot``; also reads the older layout (a ``seen`` set of 64-bit id prefixes:
        its size is the count, and duplicate detection restarts from the registers)."""
        st = cls(recent_ids)
        for k, v, r in snap["nodes"]:
            st._set_node(tuple(v), k, tuple(r) if r is not None else None)  # type: ignore[arg-type]
        for k, v, size in snap["objects"]:
            st._set_object(tuple(v), k, size)  # type: ignore[arg-type]
        for h, n, v, p in snap["replicas"]:
            st._set_replica(tuple(v), h, n, p)  # type: ignore[arg-type]
        if snap["scheduler"] is not None:
            st._set_scheduler(tuple(snap["scheduler"][0]), tuple(snap["scheduler"][1]))  # type: ignore[arg-type]
        if "recent" in snap:
            recent = snap["recent"]
            for i in range(max(0, len(recent) - 32 * recent_ids), len(recent), 32):
                st._remember(bytes(recent[i : i + 32]))
            st._applied = int(snap["applied"])
        else:
            st._applied = len(snap["seen"]) // 8
        st.max_hlc = (snap["max_hlc"][0], snap["max_hlc"][1])
        st.ledger.load_snapshot(snap.get("ledger", {}))
        return st
