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

import functools
import hashlib
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

import msgpack

from node import events as ev
from node.receipt_ledger import SAME, ReceiptLedger

Version = tuple[int, int, str, bytes]
NodeRecord = tuple[str, str, int]  # zone, addr, capacity_gb
Weights = tuple[float, float, float, float, float]  # w_cpu, w_ram, w_gpu, w_latency, w_io

_MOD = 1 << 256
RECENT_IDS = 1 << 16  # ids of the latest applied events kept for duplicate detection (2 MiB in a snapshot)
LAYOUT = 4  # the snapshot layout to_snapshot writes; from_snapshot also reads the earlier ones (no "layout")
CHUNK = 8192  # list items packed per call when a snapshot is encoded in pieces (each call holds the GIL)
_SAME = SAME  # what a register write returns when the register already holds exactly this version
_TRUE = 0xC3  # msgpack's true: the last byte of the entry of a replica marked present
_pack = msgpack.Packer(use_bin_type=True).pack
_sha256 = hashlib.sha256
_from_bytes = int.from_bytes
_unpack_tuples = functools.partial(msgpack.unpackb, use_list=False)


def _entry(tag: str, key: Any, version: Version, value: Any) -> bytes:
    """A register's canonical encoding: what the root hashes, and how objects and replicas are stored."""
    return _pack((tag, key, version, value))


def _entry_hash(tag: str, key: Any, version: Version, value: Any) -> int:
    return _from_bytes(_sha256(_pack((tag, key, version, value))).digest(), "big")


def _hash(entry: bytes) -> int:
    return _from_bytes(_sha256(entry).digest(), "big")


def _entry_version(entry: bytes) -> Version:
    return _unpack_tuples(entry)[2]  # type: ignore[no-any-return]


class State:
    def __init__(self, recent_ids: int = RECENT_IDS) -> None:
        self.nodes: dict[str, tuple[Version, NodeRecord | None]] = {}
        # object hash -> its register's entry ("o", hash, version, size): one bytes object per register
        self.objects: dict[str, bytes] = {}
        # object hash -> (node id, entry ("r", (hash, node id), version, present), node id, entry, ...)
        self.replicas: dict[str, tuple[Any, ...]] = {}
        self.scheduler: tuple[Version, Weights] | None = None
        self._names: dict[str, str] = {}  # node ids held in `replicas`, one string object each
        self._recent_cap = recent_ids
        self._recent: set[bytes] = set()  # ids of the last `recent_ids` events applied (duplicate detection)
        self._recent_order: deque[bytes] = deque()  # the same ids, oldest first
        self._applied = 0
        self._live_nodes = 0
        self.membership_epoch = 0  # bumps whenever a node's visible record changes (placement cache key)
        self.max_hlc: tuple[int, int] = (0, 0)
        self._acc = 0  # the set hash accumulator, reduced mod 2^256 when read (see root())
        self.ledger = ReceiptLedger(self._rehash)
        self._handlers = {
            ev.REPLICA_HEALED: lambda version, f: self._set_replica(version, f[0], f[1], True),
            ev.OBJECT_REGISTERED: lambda version, f: self._set_object(version, f[0], f[1]),
            ev.REPLICA_MISSING: lambda version, f: self._set_replica(version, f[0], f[1], False),
            ev.NODE_REGISTERED: self._node_registered,
            ev.NODE_UNREGISTERED: self._node_unregistered,
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
        kind, wall, counter, origin, f, _, eid = event
        if eid in self._recent:
            return False
        hlc = self.max_hlc
        if wall >= hlc[0] and (wall > hlc[0] or counter > hlc[1]):
            self.max_hlc = (wall, counter)
        # decode_event gives every event of a kind the same kind string: the hot kinds are found by identity
        if kind is _HEALED:
            wrote = self._set_replica((wall, counter, origin, eid), f[0], f[1], True)
        elif kind is _OBJECT:
            wrote = self._set_object((wall, counter, origin, eid), f[0], f[1])
        elif kind is _MISSING:
            wrote = self._set_replica((wall, counter, origin, eid), f[0], f[1], False)
        else:
            wrote = self._handlers[kind]((wall, counter, origin, eid), f)
        if wrote == _SAME:
            return False
        recent = self._recent  # _remember, inlined: this is the hot path of a rebuild
        recent.add(eid)
        order = self._recent_order
        order.append(eid)
        if len(order) > self._recent_cap:
            recent.discard(order.popleft())
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
        self._acc = acc

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

    def _set_object(self, version: Version, obj: str, size: int) -> int:
        entry = _pack(("o", obj, version, size))
        old = self.objects.get(obj)
        if old is None:
            self.objects[obj] = entry
            self._acc += _from_bytes(_sha256(entry).digest(), "big")
            return True
        current = _entry_version(old)
        if current >= version:
            return _SAME if current == version else False
        self.objects[obj] = entry
        self._acc += _hash(entry) - _hash(old)
        return True

    def _set_replica(self, version: Version, obj: str, node_id: str, present: bool) -> int:
        entry = _pack(("r", (obj, node_id), version, present))
        held = self.replicas.get(obj)
        if held is None:
            self.replicas[obj] = (self._names.setdefault(node_id, node_id), entry)
            self._acc += _from_bytes(_sha256(entry).digest(), "big")
            return True
        at = _index_of(held, node_id)
        if at < 0:
            self.replicas[obj] = (*held, self._names.setdefault(node_id, node_id), entry)
            self._acc += _hash(entry)
            return True
        old = held[at + 1]
        current = _entry_version(old)
        if current >= version:
            return _SAME if current == version else False
        self.replicas[obj] = (*held[: at + 1], entry, *held[at + 2 :])
        self._acc += _hash(entry) - _hash(old)
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

    @property
    def replica_count(self) -> int:
        """Replica registers (present or missing)."""
        return sum(len(held) for held in self.replicas.values()) // 2

    def object(self, obj: str) -> tuple[int, list[str]] | None:
        """(size, sorted replica node ids) of a registered object."""
        entry = self.objects.get(obj)
        if entry is None:
            return None
        held = self.replicas.get(obj, ())
        return _unpack_tuples(entry)[3], sorted(held[i] for i in range(0, len(held), 2) if held[i + 1][-1] == _TRUE)

    def weights(self) -> Weights | None:
        return self.scheduler[1] if self.scheduler is not None else None

    def root(self) -> bytes:
        return hashlib.sha256(b"dsdn-state-root-v1" + (self._acc % _MOD).to_bytes(32, "big")).digest()

    def recomputed_root(self) -> bytes:
        """The root computed afresh from every register (slow: for tests and audits); equals ``root()``."""
        acc = sum(_hash(entry) for entry in self.objects.values())
        acc += sum(_hash(held[i]) for held in self.replicas.values() for i in range(1, len(held), 2))
        acc += sum(_entry_hash("n", k, v, r) for k, (v, r) in self.nodes.items())
        if self.scheduler is not None:
            acc += _entry_hash("s", "", *self.scheduler)
        acc += self.ledger.recomputed_acc()
        return hashlib.sha256(b"dsdn-state-root-v1" + (acc % _MOD).to_bytes(32, "big")).digest()

    # ---- snapshots -------------------------------------------------------------------------------

    def frozen(self) -> State:
        """A copy that later events do not change, cheap enough to take on the event loop (the tables are
        copied, not their entries, which are immutable bytes and tuples); encode it in a thread."""
        copy = State(self._recent_cap)
        copy.nodes, copy.objects, copy.replicas = self.nodes.copy(), self.objects.copy(), self.replicas.copy()
        copy.scheduler, copy.max_hlc, copy._acc = self.scheduler, self.max_hlc, self._acc
        copy._recent, copy._recent_order, copy._applied = self._recent.copy(), self._recent_order.copy(), self._applied
        copy._live_nodes, copy.membership_epoch = self._live_nodes, self.membership_epoch
        copy.ledger = self.ledger.copy(copy._rehash)
        return copy

    def to_snapshot(self) -> dict[str, Any]:
        """Layout 4: objects and replicas as two flat columns each (keys, stored entries), so a restore is a
        few C calls and no per-register hashing: the accumulator is stored with them."""
        return {
            "layout": LAYOUT,
            "nodes": [[k, list(v), list(r) if r is not None else None] for k, (v, r) in self.nodes.items()],
            "objects": [list(self.objects), list(self.objects.values())],
            "replicas": [list(self.replicas), list(self.replicas.values())],
            "scheduler": [list(self.scheduler[0]), list(self.scheduler[1])] if self.scheduler else None,
            "applied": self._applied,
            "recent": b"".join(self._recent_order),  # oldest first, 32 bytes each: bounded by RECENT_IDS
            "max_hlc": list(self.max_hlc),
            "acc": (self._acc % _MOD).to_bytes(32, "big"),
            "ledger": self.ledger.to_snapshot(),
        }

    def snapshot_pieces(self) -> Iterator[bytes]:
        """``msgpack.packb(self.to_snapshot())``, byte for byte, in pieces of at most ``CHUNK`` list items, so
        a thread encoding a large state lets the event loop run between pieces (one C call holds the GIL)."""
        snap = self.to_snapshot()
        packer = msgpack.Packer(use_bin_type=True)  # not the module's: this runs in another thread
        yield packer.pack_map_header(len(snap))
        for key, value in snap.items():
            yield packer.pack(key)
            yield from _pack_pieces(packer, value)

    @classmethod
    def from_snapshot(cls, snap: dict[str, Any], recent_ids: int = RECENT_IDS) -> State:
        """The state of ``to_snapshot`` (lists may come back as tuples); also reads the earlier layouts (no
        ``layout`` key: every register is written and hashed again; the oldest has a ``seen`` set of 64-bit
        id prefixes instead of ``recent``: its size is the count, and duplicate detection restarts from the
        registers)."""
        st = cls(recent_ids)
        if snap.get("layout") == LAYOUT:
            st._load_columns(snap)
        elif "layout" in snap:
            raise ValueError(f"unknown state snapshot layout {snap['layout']!r}")
        else:
            for k, v, r in snap["nodes"]:
                st._set_node(tuple(v), k, tuple(r) if r is not None else None)  # type: ignore[arg-type]
            for k, v, size in snap["objects"]:
                st._set_object(tuple(v), k, size)  # type: ignore[arg-type]
            for h, n, v, p in snap["replicas"]:
                st._set_replica(tuple(v), h, n, p)  # type: ignore[arg-type]
            if snap["scheduler"] is not None:
                st._set_scheduler(tuple(snap["scheduler"][0]), tuple(snap["scheduler"][1]))  # type: ignore[arg-type]
            st.ledger.load_snapshot(snap.get("ledger", {}))
        if "recent" in snap:
            recent = snap["recent"]
            for i in range(max(0, len(recent) - 32 * recent_ids), len(recent), 32):
                st._remember(bytes(recent[i : i + 32]))
            st._applied = int(snap["applied"])
        else:
            st._applied = len(snap["seen"]) // 8
        st.max_hlc = (snap["max_hlc"][0], snap["max_hlc"][1])
        return st

    def _load_columns(self, snap: dict[str, Any]) -> None:
        """Layout 4: the tables are rebuilt from their columns without decoding or hashing a register."""
        for k, v, r in snap["nodes"]:
            record = tuple(r) if r is not None else None
            self.nodes[k] = (tuple(v), record)  # type: ignore[assignment]
            if record is not None:
                self._live_nodes += 1
                self.membership_epoch += 1
        keys, entries = snap["objects"]
        if len(keys) != len(entries):
            raise ValueError("snapshot objects: columns of different lengths")
        self.objects = dict(zip(keys, entries, strict=True))
        keys, held = snap["replicas"]
        if len(keys) != len(held):
            raise ValueError("snapshot replicas: columns of different lengths")
        if held and type(held[0]) is not tuple:  # a snapshot decoded with lists (use_list=True)
            held = [tuple(h) for h in held]
        self.replicas = dict(zip(keys, held, strict=True))
        if snap["scheduler"] is not None:
            self.scheduler = (tuple(snap["scheduler"][0]), tuple(snap["scheduler"][1]))  # type: ignore[assignment]
        self.ledger.load_snapshot(snap["ledger"], rehash=False)
        acc = snap["acc"]
        if type(acc) is not bytes or len(acc) != 32:
            raise ValueError("snapshot accumulator is not 32 bytes")
        self._acc = int.from_bytes(acc, "big")


_HEALED, _OBJECT, _MISSING = ev.REPLICA_HEALED, ev.OBJECT_REGISTERED, ev.REPLICA_MISSING


def _index_of(held: tuple[Any, ...], node_id: str) -> int:
    """Where ``node_id`` is among the node ids (even positions) of a replica tuple, or -1."""
    for i in range(0, len(held), 2):
        if held[i] == node_id:
            return i
    return -1


def _pack_pieces(packer: msgpack.Packer, value: Any, path: tuple[str, ...] = ()) -> Iterator[bytes]:
    """``packer.pack(value)`` in pieces: maps and short structural lists are opened here, long lists packed
    CHUNK items at a time (each chunk's own array header stripped: the whole list has one), and the ledger's
    batches (up to MAX_BIN bytes each) one at a time."""
    if type(value) is dict:
        yield packer.pack_map_header(len(value))
        for k, v in value.items():
            yield packer.pack(k)
            yield from _pack_pieces(packer, v, (*path, k))
    elif type(value) is not list:
        yield packer.pack(value)
    elif path == ("ledger", "batches") or (len(value) <= 4 and any(type(v) in (list, dict) for v in value)):
        yield packer.pack_array_header(len(value))
        for v in value:
            yield from _pack_pieces(packer, v, (*path, "[]"))
    elif len(value) > CHUNK:
        yield packer.pack_array_header(len(value))
        for i in range(0, len(value), CHUNK):
            yield packer.pack(value[i : i + CHUNK])[_array_header_size(min(CHUNK, len(value) - i)) :]
    else:
        yield packer.pack(value)


def _array_header_size(n: int) -> int:
    return 1 if n < 16 else 3 if n < 1 << 16 else 5
