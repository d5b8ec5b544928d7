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
The cache is consulted only for an event that lost to a later version (a write proves an event new, an
exact version proves it old), so its set is built on demand and dropped when unused.

``root()`` is an incremental set hash: the sum, mod 2^256, of one 256-bit hash per register, hashed once
more. It changes with every register write in O(1), so a coordinator holding millions of registers answers
/state/root at once, and it is the same whatever the order in which the registers were written. A register's
hash is that of its canonical encoding (key, version, value): for an object or replica register, the
canonical encoding of the event that wrote it (which holds the key, the value and the version but for the id)
and so its hash is that event's id, already computed when the event was decoded; for the other registers the
SHA-256 of the msgpack of ``(tag, key, version, value)``. (An additive set hash is not collision-resistant
against an adversary who can choose many registers; it detects divergence between cluster members, whose
events are all signed, which is what it is for.) Layout 5 defined object and replica registers this way
(layout 4 hashed a msgpack ``("o"|"r", key, version, value)`` built and hashed again per write: a third of a
rebuild's time); a snapshot of another layout is refused (``from_snapshot``).

Representation (the object and replica registers are nearly every register: a rebuild's hot path). Such a
register is kept as the bytes of the event that wrote it: the very object the decoded blob holds, so a
write allocates nothing but its table slot, decoded only to compare versions on a conflict or to answer a
read. ``objects`` maps a hash to its event; ``replicas`` maps a hash to a tuple ``(node id, event, node id,
event, ...)``, whose events are ``replica.healed`` when the replica is present, ``replica.missing`` when not.
Both are split into ``SHARDS`` dicts by the key's last character, and a cut for a snapshot (``frozen``) shares
them: the live state copies a shard the first time it writes to it after a cut, so a cut costs microseconds
on the event loop however large the state.

``apply_events`` applies a decoded blob's events in one loop (the consumer's path); ``apply`` is one event.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import operator
import weakref
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TypeVar

import msgpack

from node import events as ev
from node.receipt_ledger import SAME, ReceiptLedger, batch_term

Version = tuple[int, int, str, bytes]
NodeRecord = tuple[str, str, int]  # zone, addr, capacity_gb
Weights = tuple[float, float, float, float, float]  # w_cpu, w_ram, w_gpu, w_latency, w_io
V = TypeVar("V")

_MOD = 1 << 256
RECENT_IDS = 1 << 16  # ids of the latest applied events kept for duplicate detection (2 MiB in a snapshot)
LAYOUT = 5  # the snapshot layout to_snapshot writes and from_snapshot reads
MEMBERSHIP_LOG = 4096  # membership changes kept in State.membership_log (at least)
SHARDS = 32  # a key's shard: ord(its last character) % SHARDS (part of the snapshot layout: snapshots keep the shards)
_MASK = SHARDS - 1
CHUNK = 1024  # list items (recent ids) per piece of a snapshot's encoding: ~1-5 ms of work each at most
#: An object's replica registers are a flat tuple (node id, event, node id, event, ...) of fewer than 2 * WIDE items,
#: then a dict node id -> event (of WIDE entries at least: ``len(held) < WIDE`` finds a small tuple alone; the apply
#: loop appends to those inline). Each write to a tuple copies and scans it: a member's blob of 51,000 replica events
#: for one object (any node ids: they need not be registered) took 17 s of the event loop to apply, quadratic (a
#: reviewer's find).
WIDE = 32
_ABSENT = object()  # (a key a cut's shard did not hold)
_SAME = SAME  # what a register write returns when the register already holds exactly this version
_pack = msgpack.Packer(use_bin_type=True).pack
_sha256 = hashlib.sha256
_from_bytes = int.from_bytes
_digest = operator.methodcaller("digest")
_unpack_tuples = functools.partial(msgpack.unpackb, use_list=False)
_HEALED, _OBJECT, _MISSING = ev.REPLICA_HEALED, ev.OBJECT_REGISTERED, ev.REPLICA_MISSING
# what every replica.healed event starts with: its 6-element array header, the format version and the kind
_HEALED_PREFIX = b"\x96" + _pack(ev.FORMAT_VERSION) + _pack(_HEALED)


def _no_rehash(*_: Any) -> None:
    """A cut's ledger changes nothing."""


def _entry_hash(tag: str, key: Any, version: Version, value: Any) -> int:
    return _from_bytes(_sha256(_pack((tag, key, version, value))).digest(), "big")


def _event_hash(raw: bytes) -> int:
    """The hash of an object or replica register: the id of the event it holds, as an integer."""
    return _from_bytes(_sha256(raw).digest(), "big")


def _event_version(raw: bytes) -> Version:
    """The version of the event an object or replica register holds."""
    _, _, wall, counter, origin, _ = _unpack_tuples(raw)
    return (wall, counter, origin, _sha256(raw).digest())


def _present(raw: bytes) -> bool:
    """Whether a replica register (the event it holds) marks the replica present."""
    return raw.startswith(_HEALED_PREFIX)


def _flat(held: tuple[Any, ...] | dict[str, bytes]) -> tuple[Any, ...]:
    """An object's replica registers as the flat tuple (node id, event, ...), whichever form they are kept in."""
    return held if type(held) is tuple else tuple(itertools.chain.from_iterable(held.items()))  # type: ignore[union-attr]


class ReplicaView(Mapping[str, tuple[Any, ...]]):
    """A read-only mapping: object hash -> its replica registers as a flat tuple (``State.replicas``)."""

    __slots__ = ("_view",)

    def __init__(self, shards: list[dict[str, Any]]) -> None:
        self._view: ShardedView[Any] = ShardedView(shards)

    def __getitem__(self, key: str) -> tuple[Any, ...]:
        return _flat(self._view[key])

    def __contains__(self, key: object) -> bool:
        return key in self._view

    def __iter__(self) -> Iterator[str]:
        return iter(self._view)

    def __len__(self) -> int:
        return len(self._view)


def _forget(shared: set[int], undo: list[dict[str, Any]]) -> None:
    """A cut no longer reads its shards in place: the live state stops noting values for it."""
    shared.clear()
    for notes in undo:
        notes.clear()


class ShardedView(Mapping[str, V]):
    """A read-only mapping over the shards of a table (``State.objects``, ``State.replicas``)."""

    __slots__ = ("_shards",)

    def __init__(self, shards: list[dict[str, V]]) -> None:
        self._shards = shards

    def __getitem__(self, key: str) -> V:
        if type(key) is not str or not key:
            raise KeyError(key)
        return self._shards[ord(key[-1]) & _MASK][key]

    def __contains__(self, key: object) -> bool:
        return type(key) is str and bool(key) and key in self._shards[ord(key[-1]) & _MASK]

    def __iter__(self) -> Iterator[str]:
        return itertools.chain.from_iterable(self._shards)

    def __len__(self) -> int:
        return sum(map(len, self._shards))


class State:
    def __init__(self, recent_ids: int = RECENT_IDS) -> None:
        self.nodes: dict[str, tuple[Version, NodeRecord | None]] = {}
        # object hash -> its register: the object.registered event that wrote it, in SHARDS dicts
        self._objects: list[dict[str, bytes]] = [{} for _ in range(SHARDS)]
        # object hash -> (node id, its replica.healed or replica.missing event, node id, event, ...), or from WIDE
        # items on {node id: event, ...}
        self._replicas: list[dict[str, Any]] = [{} for _ in range(SHARDS)]
        # per replica shard, the objects whose registers are a dict (they only grow; shared with cuts: see _take)
        self._wide: list[set[str]] = [set() for _ in range(SHARDS)]
        # shards a cut still reads in place (objects 0.., replicas SHARDS..), shared with that cut, and per shard the
        # value each key had at the cut (_ABSENT: none), noted before its first change (see frozen)
        self._shared: set[int] = set()
        self._undo: list[dict[str, Any]] = []
        # the cut reading these shards (a live state's), settled by the next one; weak: a finished save's cut,
        # holding its own copy of every table, was kept until the next snapshot (a reviewer's find)
        self._cut: weakref.ref[State] | None = None
        self._is_cut = False
        self.scheduler: tuple[Version, Weights] | None = None
        self._recent_cap = recent_ids
        # ids of the last `recent_ids` events applied (duplicate detection), oldest first; a cut has a tuple
        self._recent_order: deque[bytes] | tuple[bytes, ...] = deque(maxlen=recent_ids)
        self._recent: set[bytes] | None = None  # the same ids as a set, kept only while lookups need it
        self._recent_idle = 0  # events applied since the set was last looked up
        self._applied = 0
        self._live_nodes = 0
        self.membership_epoch = 0  # bumps whenever a node's visible record changes (placement cache key)
        # (epoch, node id) of each bump by an event, the last MEMBERSHIP_LOG at least: placement follows a change
        # from it without comparing the whole registry (~450 µs at 10,000 nodes; see node/placement.py)
        self.membership_log: list[tuple[int, str]] = []
        self.max_hlc: tuple[int, int] = (0, 0)
        self.last_hlc: tuple[int, int] = (0, 0)  # the latest (wall, counter) of the last apply_events call's events
        self._acc = 0  # the set hash accumulator, reduced mod 2^256 when read (see root())
        self.ledger = ReceiptLedger(self._rehash)
        self._handlers = {
            ev.REPLICA_HEALED: lambda version, f, raw: self._set_replica(version, f[0], f[1], raw),
            ev.OBJECT_REGISTERED: lambda version, f, raw: self._set_object(version, f[0], raw),
            ev.REPLICA_MISSING: lambda version, f, raw: self._set_replica(version, f[0], f[1], raw),
            ev.NODE_REGISTERED: lambda version, f, raw: self._set_node(version, f[0], (f[1], f[2], f[3])),
            ev.NODE_UNREGISTERED: lambda version, f, raw: self._set_node(version, f[0], None),
            ev.SCHEDULER_CONFIG: lambda version, f, raw: self._set_scheduler(version, (f[0], f[1], f[2], f[3], f[4])),
            ev.NODE_KEY: lambda version, f, raw: self.ledger.set_key(version, f[0], f[1]),
            ev.RECEIPT_BATCH: lambda version, f, raw: self.ledger.add_batch(version, f),
        }

    @property
    def objects(self) -> ShardedView[bytes]:
        """object hash -> its register's event (read-only; ``object()`` decodes one)."""
        self._settle()
        return ShardedView(self._objects)

    @property
    def replicas(self) -> ReplicaView:
        """object hash -> (node id, event, node id, event, ...) (read-only; ``object()`` decodes one)."""
        self._settle()
        return ReplicaView(self._replicas)

    def holds_replica_register(self, obj: str, node_id: str) -> bool:
        """Whether a replica register of ``obj`` on ``node_id`` exists (present or missing)."""
        if not obj:
            return False
        self._settle()
        held = self._replicas[ord(obj[-1]) & _MASK].get(obj, ())
        return node_id in held if type(held) is dict else node_id in held[::2]

    # ---- applying events -------------------------------------------------------------------------

    @property
    def events_applied(self) -> int:
        """Events applied, duplicates not counted (see the module docstring for the one exception)."""
        return self._applied

    def apply(self, event: ev.Event) -> bool:
        """Apply one event; return False if it is recognised as already applied (a no-op either way)."""
        return self.apply_events((event,)) == 1

    def apply_events(self, events: Iterable[ev.EventTuple]) -> int:
        """Apply events in order (a decoded blob's: Events or plain tuples in their field order); return how many
        were new, i.e. not recognised as already applied (each a no-op either way). One loop with the tables in
        locals: a rebuild's hot path. The ids of new events join the recent ids once per call (``_note_new``)."""
        objects, replicas, shared, handlers = self._objects, self._replicas, self._shared, self._handlers
        wall_max, counter_max = 0, 0  # the latest timestamp of these events (the clock observes it: last_hlc)
        applied_before = self._applied
        new: list[bytes] = []  # ids of the events found new since the last flush
        new_append = new.append
        slow: list[bytes] = []  # those of them that did not go the hot kinds' way (their writes added to _acc)
        replaced: list[bytes] = []  # the events the hot kinds' way replaced in their registers
        replaced_append = replaced.append

        def flush() -> None:
            """The registers the hot kinds' way wrote join the accumulator (the sum of their ids: all new ids but
            ``slow``), the events they replaced leave it, then every new id joins the recent ids (``_note_new``)."""
            self._acc += (sum(map(_from_bytes, new)) - sum(map(_from_bytes, slow))  # (from_bytes: big-endian)
                          - sum(map(_from_bytes, map(_digest, map(_sha256, replaced)))))
            slow.clear()
            replaced.clear()
            self._note_new(new)

        try:
            for kind, wall, counter, origin, f, raw, eid in events:
                if wall >= wall_max and (wall > wall_max or counter > counter_max):
                    wall_max, counter_max = wall, counter
                # The hot kinds, inlined (the same as _set_replica and _set_object): decode_event gives every
                # event of a kind the same kind string, so they are found by identity; any other string goes
                # through the handlers. A new register adds the event's id to the accumulator (at the flush: see there).
                if kind is _HEALED or kind is _MISSING:
                    obj, node_id = f
                    shard = ord(obj[-1]) & _MASK
                    if shared and SHARDS + shard in shared:
                        self._keep(SHARDS + shard, obj)
                    table = replicas[shard]
                    first = (node_id, raw)
                    held = table.setdefault(obj, first)  # one lookup for an object's first replica register
                    if held is first:
                        new_append(eid)
                        continue
                    if len(held) < WIDE:
                        try:
                            at = 2 * held[::2].index(node_id)  # (among the node ids only: str to bytes is a
                            #                                        BytesWarning under python -b; a review)
                        except ValueError:  # another node's replica of this object
                            table[obj] = held + (node_id, raw)  # noqa: RUF005 (faster than unpacking)
                            new_append(eid)
                            continue
                        # this node's register of this object, held: a later event (by wall, counter, origin)
                        # replaces it here; the id of the event it held leaves the accumulator at the flush. Older or
                        # as old (the ids decide a tie) go the general way
                        old = held[at + 1]
                        _, _, old_wall, old_counter, old_origin, _ = _unpack_tuples(old)
                        if old_wall < wall or (old_wall == wall and (old_counter < counter or (
                                old_counter == counter and old_origin < origin))):
                            table[obj] = (*held[: at + 1], raw, *held[at + 2 :])
                            replaced_append(old)
                            new_append(eid)
                            continue
                    wrote = self._replace_replica(table, held, obj, node_id, (wall, counter, origin, eid), raw)
                elif kind is _OBJECT:
                    obj = f[0]
                    shard = ord(obj[-1]) & _MASK
                    if shared and shard in shared:
                        self._keep(shard, obj)
                    table = objects[shard]
                    old = table.get(obj)  # (not setdefault: a duplicate may hold this very bytes object)
                    if old is None:
                        table[obj] = raw
                        new_append(eid)
                        continue
                    else:
                        wrote = self._replace_object(table, old, obj, (wall, counter, origin, eid), raw)
                else:
                    wrote = handlers[kind]((wall, counter, origin, eid), f, raw)
                # A write (True) proves the event new: a register never goes back to an older version. _SAME
                # proves it applied before. Only an event that lost to a later version needs the recent-id cache,
                # which must hold this call's earlier new events first.
                if wrote is not True:
                    if wrote == _SAME:
                        continue
                    flush()
                    if self._recently_applied(eid):
                        continue
                new_append(eid)
                slow.append(eid)
        finally:  # what the loop kept in locals (an exception cannot leave the state half-counted)
            flush()
            self.last_hlc = (wall_max, counter_max)
            if self.last_hlc > self.max_hlc:
                self.max_hlc = self.last_hlc
        return self._applied - applied_before

    def _note_new(self, ids: list[bytes]) -> None:
        """Count the events of ``ids`` (found new) as applied and add them to the recent ids; empty ``ids``."""
        if not ids:
            return
        self._applied += len(ids)
        if self._recent is None:
            self._recent_order.extend(ids)  # type: ignore[union-attr]  # (a cut's tuple takes no events)
        else:
            for eid in ids:
                if self._recent is None:  # _remember stopped keeping the set
                    self._recent_order.append(eid)  # type: ignore[union-attr]
                else:
                    self._remember(eid)
        ids.clear()

    def _recently_applied(self, eid: bytes) -> bool:
        """Whether ``eid`` is among the last ``recent_ids`` applied. The set is built on the first lookup and
        kept in step while lookups keep coming: a rebuild whose events all win their registers never needs
        it, and pays one deque append per event."""
        if self._recent is None:
            self._recent = set(self._recent_order)
        self._recent_idle = 0
        return eid in self._recent

    def _remember(self, eid: bytes) -> None:
        recent, order = self._recent, self._recent_order
        assert recent is not None and type(order) is deque
        if order and len(order) == self._recent_cap:
            recent.discard(order[0])  # the ids in the deque are distinct: a counted event was not among them
        order.append(eid)
        if self._recent_cap:
            recent.add(eid)
        self._recent_idle += 1
        if self._recent_idle > 2 * self._recent_cap:  # no lookup for a while: stop keeping the set
            self._recent = None

    def apply_all(self, items: Iterable[ev.Event]) -> int:
        return self.apply_events(items)

    def _keep(self, shard: int, key: str) -> None:
        """Before the first change of ``key`` in a shard a cut still reads in place, note its value for the cut (a
        copy of a dict of replica registers: it changes in place)."""
        undo = self._undo[shard]
        if key not in undo:
            table = self._objects[shard] if shard < SHARDS else self._replicas[shard - SHARDS]
            old = table.get(key, _ABSENT)
            undo[key] = old.copy() if type(old) is dict else old

    # Each register write returns True when it wrote, False when the register holds a later version and
    # _SAME when it holds exactly this one (the event was applied before).

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
            log = self.membership_log
            log.append((self.membership_epoch, node_id))
            if len(log) > 2 * MEMBERSHIP_LOG:
                del log[:MEMBERSHIP_LOG]
        return True

    def _set_object(self, version: Version, obj: str, raw: bytes) -> int:
        """Write an object register: ``raw`` is the object.registered event of ``version``."""
        shard = ord(obj[-1]) & _MASK
        if shard in self._shared:
            self._keep(shard, obj)
        table = self._objects[shard]
        old = table.get(obj)
        if old is None:
            table[obj] = raw
            self._acc += _from_bytes(version[3], "big")
            return True
        return self._replace_object(table, old, obj, version, raw)

    def _replace_object(self, table: dict[str, bytes], old: bytes, obj: str, version: Version, raw: bytes) -> int:
        current = _event_version(old)
        if current >= version:
            return _SAME if current == version else False
        table[obj] = raw
        self._acc += _from_bytes(version[3], "big") - _from_bytes(current[3], "big")
        return True

    def _set_replica(self, version: Version, obj: str, node_id: str, raw: bytes) -> int:
        """Write a replica register: ``raw`` is the replica.healed or replica.missing event of ``version``."""
        shard = ord(obj[-1]) & _MASK
        if SHARDS + shard in self._shared:
            self._keep(SHARDS + shard, obj)
        table = self._replicas[shard]
        held = table.get(obj)
        if held is None:
            table[obj] = (node_id, raw)
            self._acc += _from_bytes(version[3], "big")
            return True
        return self._replace_replica(table, held, obj, node_id, version, raw)

    def _replace_replica(self, table: dict[str, Any], held: tuple[Any, ...] | dict[str, bytes], obj: str,
                         node_id: str, version: Version, raw: bytes) -> int:
        """Write a replica register of an object that already has some (``held``; see WIDE)."""
        if type(held) is dict or len(held) >= 2 * WIDE:
            if type(held) is tuple:
                held = table[obj] = dict(zip(held[::2], held[1::2], strict=True))
                self._wide[ord(obj[-1]) & _MASK].add(obj)
            old = held.get(node_id)  # type: ignore[union-attr]
            if old is not None:
                current = _event_version(old)
                if current >= version:
                    return _SAME if current == version else False
                self._acc -= _from_bytes(current[3], "big")
            held[node_id] = raw  # type: ignore[index]
            self._acc += _from_bytes(version[3], "big")
            return True
        assert type(held) is tuple
        for at in range(0, len(held), 2):
            if held[at] == node_id:
                break
        else:
            table[obj] = held + (node_id, raw)  # noqa: RUF005 (faster than unpacking)
            self._acc += _from_bytes(version[3], "big")
            return True
        current = _event_version(held[at + 1])
        if current >= version:
            return _SAME if current == version else False
        table[obj] = (*held[: at + 1], raw, *held[at + 2 :])
        self._acc += _from_bytes(version[3], "big") - _from_bytes(current[3], "big")
        return True

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
        self._settle()
        return sum(len(held) * (2 if type(held) is dict else 1) for table in self._replicas
                   for held in table.values()) // 2

    def object(self, obj: str) -> tuple[int, list[str]] | None:
        """(size, sorted replica node ids) of a registered object."""
        if not obj:
            return None
        self._settle()
        entry = self._objects[ord(obj[-1]) & _MASK].get(obj)
        if entry is None:
            return None
        held = _flat(self._replicas[ord(obj[-1]) & _MASK].get(obj, ()))
        return _unpack_tuples(entry)[5][1], sorted(held[i] for i in range(0, len(held), 2) if _present(held[i + 1]))

    def weights(self) -> Weights | None:
        return self.scheduler[1] if self.scheduler is not None else None

    def held_version(self, kind: str, fields: dict[str, Any]) -> Version | None:
        """The version the register an event of ``kind`` with ``fields`` would write holds now; None when it is empty
        (or the kind writes no register: a receipt batch). For stamping a local write after it (the coordinator)."""
        if kind in (ev.NODE_REGISTERED, ev.NODE_UNREGISTERED):
            node = self.nodes.get(fields["id"])
            return None if node is None else node[0]
        if kind == ev.NODE_KEY:
            key = self.ledger.node_keys.get(fields["id"])
            return None if key is None else key[0]
        if kind == ev.SCHEDULER_CONFIG:
            return None if self.scheduler is None else self.scheduler[0]
        obj = fields.get("hash")
        if not obj or kind not in (ev.OBJECT_REGISTERED, ev.REPLICA_HEALED, ev.REPLICA_MISSING):
            return None
        self._settle()
        shard = ord(obj[-1]) & _MASK
        if kind == ev.OBJECT_REGISTERED:
            raw = self._objects[shard].get(obj)
            return None if raw is None else _event_version(raw)
        held = self._replicas[shard].get(obj, ())
        if type(held) is dict:
            raw = held.get(fields["node_id"])
            return None if raw is None else _event_version(raw)
        for at in range(0, len(held), 2):
            if held[at] == fields["node_id"]:
                return _event_version(held[at + 1])
        return None

    def root(self) -> bytes:
        acc = self._acc + self.ledger.batch_acc
        return hashlib.sha256(b"dsdn-state-root-v1" + (acc % _MOD).to_bytes(32, "big")).digest()

    def recomputed_root(self) -> bytes:
        """The root computed afresh from every register (slow: for tests and audits); equals ``root()``."""
        acc = self._recomputed_acc() + sum(map(batch_term, self.ledger.batches))
        return hashlib.sha256(b"dsdn-state-root-v1" + (acc % _MOD).to_bytes(32, "big")).digest()

    def _recomputed_acc(self) -> int:
        self._settle()
        acc = sum(_event_hash(raw) for table in self._objects for raw in table.values())
        acc += sum(_event_hash(held[i]) for table in self._replicas for held in map(_flat, table.values())
                   for i in range(1, len(held), 2))
        acc += sum(_entry_hash("n", k, v, r) for k, (v, r) in self.nodes.items())
        if self.scheduler is not None:
            acc += _entry_hash("s", "", *self.scheduler)
        return acc + self.ledger.recomputed_acc()

    # ---- snapshots -------------------------------------------------------------------------------

    def frozen(self) -> State:
        """A cut that later events do not change, taken in microseconds plus the small tables' copies: the
        object and replica shards are shared, the live state notes the value each key had at the cut before it
        changes it, and the cut's encoder takes each shard as it was when it gets to it (``_take``). (The live state
        copied each shard before writing to it again: one blob touches nearly all, so the first blob after every
        cut copied the whole table on the event loop: 80-190 ms at a million objects; a reviewer's reproduction.)
        Encode it in pieces; it is for reading, not for applying events (its recent ids are a tuple)."""
        cut = self._cut() if self._cut is not None and self._shared else None
        if cut is not None:  # a cut still reading in place: it takes its shards now
            cut._settle()
        copy = State(self._recent_cap)
        copy._objects, copy._replicas, copy._wide = list(self._objects), list(self._replicas), self._wide
        self._shared = copy._shared = shared = set(range(2 * SHARDS))
        self._undo = copy._undo = undo = [{} for _ in range(2 * SHARDS)]
        # (a cut dropped unreleased: the notes stop when it is collected)
        self._cut, copy._is_cut = weakref.ref(copy, lambda _: _forget(shared, undo)), True
        copy.nodes = self.nodes.copy()
        copy.scheduler, copy.max_hlc, copy._acc = self.scheduler, self.max_hlc, self._acc
        copy._recent_order, copy._applied = tuple(self._recent_order), self._applied  # a tuple: no events
        copy._live_nodes, copy.membership_epoch = self._live_nodes, self.membership_epoch
        # a cut applies no events: without its handlers and its ledger's rehash (both refer to it), nothing but
        # its holders keeps it alive, and dropped unreleased it stops sharing at once, not at the next collection
        # of the cycle (meanwhile every first write to a key was noted for it: a reviewer's reading)
        copy._handlers = {}
        copy.ledger = self.ledger.cut(_no_rehash)
        return copy

    def _take(self, shard: int) -> None:
        """(A cut) its own copy of ``shard`` as it was at the cut, and the live state writes to it freely again."""
        tables = self._objects if shard < SHARDS else self._replicas
        table, undo = tables[shard % SHARDS].copy(), self._undo[shard]
        for key, old in undo.items():
            if old is _ABSENT:
                del table[key]
            else:
                table[key] = old
        if shard >= SHARDS:  # dicts of replica registers change in place: the cut's own copies (undo's are its own)
            for key in self._wide[shard - SHARDS]:
                held = table.get(key)
                if type(held) is dict and key not in undo:
                    table[key] = held.copy()
        tables[shard % SHARDS] = table
        self._shared.discard(shard)
        undo.clear()

    def _settle(self) -> None:
        """(A cut) its own copies of the shards it still reads in place: read otherwise than by its encoder."""
        if self._is_cut:
            for shard in sorted(self._shared):
                self._take(shard)

    def release(self) -> None:
        """(A cut) no longer read: the live state stops noting changes for it (a save that failed or was cancelled
        took only some shards; it stays unusable)."""
        if self._is_cut:
            _forget(self._shared, self._undo)

    def to_snapshot(self) -> dict[str, Any]:
        """Layout 5: objects and replicas as flat columns (keys, stored registers: events) per shard, so a
        restore is a few C calls and no register is decoded or hashed: the accumulator is stored with them."""
        self._settle()
        return {
            "layout": LAYOUT,
            "nodes": [[k, list(v), list(r) if r is not None else None] for k, (v, r) in self.nodes.items()],
            "objects": [[list(table), list(table.values())] for table in self._objects],
            "replicas": [[list(table), list(map(_flat, table.values())) if wide else list(table.values())]
                         for table, wide in zip(self._replicas, self._wide, strict=True)],
            "scheduler": [list(self.scheduler[0]), list(self.scheduler[1])] if self.scheduler else None,
            "applied": self._applied,
            "recent": b"".join(self._recent_order),  # oldest first, 32 bytes each: bounded by RECENT_IDS
            "max_hlc": list(self.max_hlc),
            "acc": (self._acc % _MOD).to_bytes(32, "big"),
            "ledger": self.ledger.to_snapshot(),
        }

    def snapshot_pieces(self) -> Iterator[bytes]:
        """``msgpack.packb(self.to_snapshot())``, byte for byte, in pieces that each take a short, bounded
        amount of work (at most ``CHUNK`` list items, built when the piece is asked for): an encoder can run
        on the event loop with a checkpoint between pieces (see ``node.snapshot.save``), or in a thread."""
        packer = msgpack.Packer(use_bin_type=True)  # not the module's: an encoder may run in another thread
        pack = packer.pack
        yield packer.pack_map_header(10)  # the keys of to_snapshot, in its order
        yield pack("layout") + pack(LAYOUT)
        nodes = list(self.nodes.items())
        yield pack("nodes") + packer.pack_array_header(len(nodes))
        for i in range(0, len(nodes), CHUNK):
            yield b"".join([pack([k, list(v), list(r) if r is not None else None])
                            for k, (v, r) in nodes[i : i + CHUNK]])
        for base, name, tables in ((0, "objects", self._objects), (SHARDS, "replicas", self._replicas)):
            yield pack(name) + packer.pack_array_header(len(tables))
            for i in range(len(tables)):
                if self._is_cut and base + i in self._shared:  # (a cut: the shard as it was, in one piece of work;
                    #  the live state, encoding itself beside a cut, undid its own writes: a reviewer's fuzzing)
                    self._take(base + i)
                yield packer.pack_array_header(2)
                yield from _pack_list(packer, list(tables[i]))
                yield from _pack_list(packer, list(tables[i].values()) if base == 0 or not self._wide[i] else
                                      list(map(_flat, tables[i].values())))  # (dicts, if any: flat as a tuple's)
        yield pack("scheduler") + pack([list(self.scheduler[0]), list(self.scheduler[1])] if self.scheduler else None)
        yield pack("applied") + pack(self._applied)
        order = list(self._recent_order)  # oldest first, 32 bytes each, as one bin
        yield pack("recent") + _bin_header(32 * len(order))
        for i in range(0, len(order), CHUNK):
            yield b"".join(order[i : i + CHUNK])
        yield pack("max_hlc") + pack(list(self.max_hlc))
        yield pack("acc") + pack((self._acc % _MOD).to_bytes(32, "big"))
        yield pack("ledger")
        yield from self.ledger.snapshot_pieces(packer, CHUNK)

    @classmethod
    def from_snapshot(cls, snap: dict[str, Any], recent_ids: int = RECENT_IDS) -> State:
        """The state of ``to_snapshot`` (lists may come back as tuples). Only the current layout: a snapshot of
        another was written under other rules for accepting events (see ``snapshot.FORMAT``). ValueError if it is
        not one or inconsistent."""
        if snap.get("layout") != LAYOUT:
            raise ValueError(f"unknown state snapshot layout {snap.get('layout')!r}")
        st = cls(recent_ids)
        st._load_columns(snap)
        recent = snap["recent"]
        if type(recent) is not bytes or len(recent) % 32:
            raise ValueError("snapshot recent ids are not a bin of 32-byte ids")
        ids = [recent[i : i + 32] for i in range(max(0, len(recent) - 32 * recent_ids), len(recent), 32)]
        st._recent_order = deque(ids, maxlen=recent_ids)
        st._applied = int(snap["applied"])
        wall, counter = snap["max_hlc"]
        if type(wall) is not int or type(counter) is not int:
            raise ValueError(f"snapshot max_hlc is not two integers: {snap['max_hlc']!r}")
        st.max_hlc = (wall, counter)
        return st

    def _load_columns(self, snap: dict[str, Any]) -> None:
        """The tables are rebuilt from their columns without decoding or hashing a register."""
        for k, v, r in snap["nodes"]:
            record = tuple(r) if r is not None else None
            if record is not None and not (len(record) == 3 and type(record[0]) is str and type(record[1]) is str
                                           and type(record[2]) is int):
                raise ValueError(f"snapshot node {k!r}: its record is not (zone, addr, capacity): {record!r}")
            self.nodes[k] = (tuple(v), record)  # type: ignore[assignment]
            if record is not None:
                self._live_nodes += 1
                self.membership_epoch += 1
        objects, replicas = snap["objects"], snap["replicas"]
        if len(objects) != SHARDS or len(replicas) != SHARDS:
            raise ValueError(f"snapshot tables: not {SHARDS} shards")
        self._objects = [dict(zip(keys, entries, strict=True)) for keys, entries in objects]
        self._replicas = [dict(zip(keys, held if not held or type(held[0]) is tuple else map(tuple, held),
                                   strict=True)) for keys, held in replicas]
        if snap["scheduler"] is not None:
            self.scheduler = (tuple(snap["scheduler"][0]), tuple(snap["scheduler"][1]))  # type: ignore[assignment]
        self.ledger.load_snapshot(snap["ledger"], rehash=False)
        acc = snap["acc"]
        if type(acc) is not bytes or len(acc) != 32:
            raise ValueError("snapshot accumulator is not 32 bytes")
        self._acc = int.from_bytes(acc, "big")


def _pack_list(packer: msgpack.Packer, items: list[Any]) -> Iterator[bytes]:
    """``packer.pack(items)`` in pieces of CHUNK items (each chunk's own array header stripped)."""
    if len(items) <= CHUNK:
        yield packer.pack(items)
        return
    yield packer.pack_array_header(len(items))
    for i in range(0, len(items), CHUNK):
        yield packer.pack(items[i : i + CHUNK])[_array_header_size(min(CHUNK, len(items) - i)) :]


def _bin_header(n: int) -> bytes:
    """msgpack's header of a bin of ``n`` bytes (what ``pack(bytes(n))`` starts with)."""
    if n < 1 << 8:
        return bytes((0xC4, n))
    if n < 1 << 16:
        return b"\xc5" + n.to_bytes(2, "big")
    return b"\xc6" + n.to_bytes(4, "big")


def _array_header_size(n: int) -> int:
    return 1 if n < 16 else 3 if n < 1 << 16 else 5
