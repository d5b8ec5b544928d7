"""Receipt consensus over the peer links: batches, slot locks, ROAST-driven FROST signing, takeovers.

A thin trio layer over the pure cores (receipts, slots, roast, merkle). Roles, in every coordinator:

* **proposer** (whoever a client sent the receipt to): queue → batch (closes at ``batch_max`` receipts; at once
  when no other batch is in flight, else ``batch_wait_s`` after its first or once that batch ended if later, unless
  it stalled) → lock its own slots durably →
  ``rc.lock`` to the peers (each validates, locks durably, answers per receipt, plus a fresh nonce commitment) →
  the receipts locked by ≥ t members and
  a signer set that locked all of them (``slots.choose_batch``) → ROAST sessions of ``rc.sign`` requests until
  t valid shares aggregate → ``rc.final`` (the signed batch) to every peer, until n − t of them answer that they
  keep it on disk → the batch event goes to the outbox (DA), and only then are the receipts final for clients.
  So losing the proposer for good, disk and all, within the fault budget loses no receipt reported final.
* **announced batches**: a peer keeps an ``rc.final`` batch *heard* (durably in its lock table, served, not applied:
  the state holds only what this member wrote or read from DA) and closes its locks and forgets the heard copy
  once its state holds the batch. A heard batch still missing from the state after ``republish_after_s``
  (staggered by rank) of DA working for this member since it was heard — this member's writes land and its reads
  reach the head, so an honest proposer's would have too — is published again by this member, under its own name:
  its proposer died with its outbox, or withholds it. (Whether the proposer is connected proves nothing: a liar
  is, and a restarting honest one is not.)
* **one round when it can**: FROST lets a signer publish nonce commitments ahead of use. Each lock reply may carry
  a *spare* commitment offered to that proposer for a later batch; a proposer holding spares from t − 1 peers
  names a signer set in its ``rc.lock`` (the spares plus a fresh commitment of its own), and each named peer that
  locks every receipt of the batch answers with its signature share in the lock reply. t valid shares: signed in
  one round trip. Anything less (a refusal, a restarted peer that forgot its spare, a bad share — named and
  excluded) falls back to the ROAST sessions below with the commitments the lock replies carried anyway. Such a
  batch's ``rc.lock`` goes to the named peers first; the others are asked as soon as that set falls short, or
  when it takes longer than ``HEDGE_LAGS`` of its usual round trips (their work is not needed otherwise: they
  neither lock nor hand out spares then). A named peer that never answers loses its spares and is asked last.
* **signer**: answers ``rc.lock`` and ``rc.sign``. A share is released only for a batch whose every receipt
  this member has locked to exactly that receipt (the lock table is durable before the reply leaves; a share is
  made while the lock commits in a worker thread, and dropped if the commit fails). Secret
  nonces live in memory only, each bound to the proposer and batch it was offered to, used once, then gone;
  after a restart no earlier commitment is honoured.
* **takeover**: a lock that stays open (its receipt not final) for ``takeover_s`` is re-proposed by a member
  holding it (staggered by rank), so a proposer that died mid-batch strands no slot. Takeovers wait for in-flight
  slots in turn with new batches; a batch taken over in vain waits longer before each next try (up to 120 s).

Replies are taken only from the peer asked and of the expected type (the dispatcher's ``expect``).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, TypeVar

import msgpack
import nacl.signing
import trio

from consensus import frost, group
from consensus import receipts as rc
from consensus.dkg import assign_identifiers
from consensus.lockstore import CLOSED_CONFLICT, CLOSED_REJECTED, SIGNED, LockStore, LockTableBroken
from consensus.nonces import Nonce, NonceTable
from consensus.roast import Outcome, RoastTracker, Session
from consensus.slots import Decision, Verdict, choose_batch
from node import merkle
from protocol.dispatch import Inbox
from protocol.envelope import Message, Registry, is_bytes, is_int, is_list, is_str, optional

log = logging.getLogger("dsdn.receipts")
LOCK, LOCK_REPLY = "rc.lock", "rc.lock.reply"
SIGN, SIGN_REPLY = "rc.sign", "rc.sign.reply"
FINAL, FINAL_ACK = "rc.signed", "rc.signed.kept"  # (rc.final before: a broadcast of the event, applied at once)
BATCH_ID_SIZE = 16
#: A batch in flight for ``STALL_FACTOR`` times the usual batch's time (and at least ``STALL_MIN_S``) counts as
#: stalled: the next batch starts beside it instead of waiting for it to end (``ReceiptService._await_company``).
STALL_FACTOR, STALL_MIN_S = 4.0, 0.05
MAX_BATCH = 1024  # receipts per batch: an rc.lock message stays far below the 1 MiB frame
# fewer receipts than this always fit one batch (rc.MAX_BATCH_BYTES), whatever their length
FULL_BY_SIZE_FROM = rc.MAX_BATCH_BYTES // (rc.packed_size(rc.MAX_RECEIPT_BYTES + 64)) - 1
MAX_NONCES = 8192
MAX_NONCES_PER_PEER = 1024  # nonces offered to one peer (a flood of its lock requests pushes out only its own)
MAX_LOCKED_CACHE = 65_536
REJECT_CAUSES = (("node_key", ("node_public_key", "public key")), ("node_signature", ("node signature",)),
                 ("epoch", ("epoch",)), ("not_registered", ("not registered", "not a present replica")),
                 ("commitment", ("commitment",)), ("malformed", ("malformed",)))
ANNOUNCE_BACKOFF_MAX_S = 5.0  # a signed batch not kept by enough peers is announced again at least this often
MAX_REPUBLISHING = 4  # heard batches published again at once
MAX_FINISHING = 64  # signed batches announced to peers and published at once; one more waits (backpressure)
MAX_QUEUED = 8192  # receipts waiting for a batch; beyond that a submission is refused (503, submit again)
#: receipts kept waiting for a write not seen here yet (NOT_YET, retried for NOT_YET_GIVE_UP_S): their own quota, so
#: a flood of them (any node id, self-signed) cannot take the room of receipts ready to be signed
MAX_NOT_YET = 1024
MAX_REJECTED_RECORDS = 4096  # records settled as rejected kept to answer why (see ``_reject``)
EVICTION_SCAN = 1024  # records in flight passed over (to the back) to evict a settled one past ``max_records``
NOT_YET_RETRY_S = 0.5
NOT_YET_GIVE_UP_S = 30.0
EPOCH_SKEW_S = 10.0  # a receipt of the next epoch this close to its start is "not yet" here, not invalid (clock skew)
BLAME_S = 60.0  # a signer proven to have sent a bad share is left out of signer sets this long
TAKEOVER_BACKOFF_MAX_S = 120.0  # the longest wait between two takeovers of one locked batch that stays unsigned
TAKEOVER_BATCHES_PER_PASS = 8  # a pass waits for a slot for each in turn: a long pass held up the next ones
MAX_TAKEOVER_TRIES = 4096  # locked batches whose takeovers are counted (the oldest forgotten: tried again sooner)
TIMED_OUT_S = 30.0  # a signer that let a share request time out is left out of a batch's signers this long, when
#                     the others locked enough of it
SPARES = 2  # spare commitments a proposer keeps per peer for the one-round path
HEDGE_LAGS = 3.0  # the one-round set's lock replies may take this many of their usual round trips before the
#                   other peers are asked too
INLINE_DECIDE_MAX = 16  # a batch this small is checked and locked (uncommitted) in the event loop: SQLite page-cache
#                         work and signature checks, well under a millisecond, where a worker thread's round trip
#                         costs 1-3 ms on a loaded 2-core machine; larger ones go to a thread (the loop stays
#                         responsive). The commit, with its fsync, always runs in a thread.
RunBlocking = Callable[..., Awaitable[Any]]
T = TypeVar("T")


def named_rival(refusals: list[Decision]) -> bytes | None:
    """The rival receipt id the most CONFLICT refusals name (the first named among those named as often): taken from
    the first reply, a lying member answering first chose the ``conflicting_receipt_id`` the submitter saw and the
    evidence kept, over the honest members' (a reviewer's reproduction)."""
    named = [d.conflicting_id for d in refusals if d.verdict is Verdict.CONFLICT and d.conflicting_id is not None]
    return max(dict.fromkeys(named), key=named.count) if named else None


def register(registry: Registry) -> None:
    wire = is_bytes(max_len=rc.MAX_RECEIPT_BYTES + 64)
    point = is_bytes(32)
    registry.register(LOCK, {"batch": is_bytes(BATCH_ID_SIZE), "receipts": is_list(wire, MAX_BATCH),
                             # the one-round path: the signer set and its commitments; a spare wanted for later
                             "fast_signers": optional(is_bytes(max_len=255)),
                             "fast_hiding": optional(is_list(point, 255)),
                             "fast_binding": optional(is_list(point, 255)),
                             "spare": optional(is_int(0, 1))})
    registry.register(LOCK_REPLY, {"verdicts": is_bytes(max_len=MAX_BATCH), "conflicts": is_list(is_bytes(36),
                                   MAX_BATCH), "reasons": is_list(is_str(200), MAX_BATCH),
                                   "commitment": is_list(point, 2),
                                   "share": optional(is_bytes(max_len=32)), "spare": optional(is_list(point, 2))})
    registry.register(SIGN, {"batch": is_bytes(BATCH_ID_SIZE), "ids": is_bytes(max_len=32 * MAX_BATCH),
                             "session": is_int(0, 2**31), "signers": is_bytes(max_len=255),
                             "hiding": is_list(point, 255), "binding": is_list(point, 255)})
    registry.register(SIGN_REPLY, {"share": is_bytes(max_len=32), "commitment": is_list(point, 2),
                                   "error": is_str(200)})
    registry.register(FINAL, {"group_key": is_str(64), "root": is_str(64), "tree_size": is_int(1, MAX_BATCH),
                              "signature": is_str(128), "signers": is_str(255 * 140),
                              "receipts": is_bytes(max_len=rc.MAX_BATCH_BYTES)})
    registry.register(FINAL_ACK, {"kept": is_int(0, 1)})


class Network(Protocol):
    my_id: str

    def send(self, peer_id: str, type_: str, body: dict[str, Any]) -> bool: ...
    def broadcast(self, type_: str, body: dict[str, Any]) -> int: ...
    def subscribe(self, type_: str) -> Inbox: ...
    def on_request(self, type_: str, reply_type: str, handler: Any) -> None: ...
    async def request(self, peer_id: str, type_: str, body: dict[str, Any], timeout_s: float, *,
                      expect: str) -> Message: ...
    def up_peers(self) -> list[str]: ...


class LedgerView(Protocol):
    """What the service needs of the coordinator's DA-derived state."""

    def node_key(self, node_id: str) -> tuple[bool, bytes | None]:
        """(registered, its Ed25519 key or None)."""
        ...

    def replica(self, object_hash: str, node_id: str) -> bool | None:
        """None: object unknown here; True: the node is a present replica; False: it is not."""
        ...

    def signed_document(self, receipt_id: bytes) -> dict[str, Any] | None:
        """The signed document of a receipt in the state or in a heard batch."""
        ...

    def holds(self, receipt_id: bytes) -> bool:
        """Whether the state holds the receipt as signed."""
        ...

    def signed_ids(self) -> list[bytes]:
        """Every receipt id the state holds as signed, or a heard batch."""
        ...

    def signed_version(self) -> object:
        """A value that changes whenever ``signed_ids`` may."""
        ...

    def signed_rival(self, receipt_id: bytes, slot: tuple[str, str, str, int]) -> bytes | None:
        """A receipt other than ``receipt_id`` the state holds as signed for ``slot``, if any."""
        ...

    def slot_of(self, receipt_id: bytes) -> tuple[str, str, str, int] | None:
        """The slot of a receipt the state holds (cheap: no document is built), or None."""
        ...

    async def publish_batch(self, fields: dict[str, Any]) -> bytes:
        """Append the batch event durably (outbox → DA) and apply it; return its raw event bytes."""
        ...

    def check_batch(self, fields: dict[str, Any]) -> Heard | None:
        """Verify a signed batch a member announced (a batch event's fields: group key, Merkle root, signature):
        the heard batch with its root, or a new one not served yet; None when it does not verify."""
        ...

    def serve(self, heard: Heard, origin: str) -> Heard:
        """Serve a checked batch until the state holds it (``origin`` announced it); the one served."""
        ...

    def in_state(self, heard: Heard) -> bool:
        """Whether the state holds every receipt of the batch."""
        ...

    def covered(self, receipt_ids: list[bytes]) -> bool:
        """Whether each of these receipts is signed in a batch served here already (heard) or held by the state."""
        ...

    def settled_heard(self) -> list[Heard]:
        """The heard batches the state now holds, which stop being heard."""
        ...

    def heard_batches(self) -> list[Heard]:
        """The heard batches the state does not hold yet, oldest first."""
        ...

    def da_read_through(self) -> float | None:
        """While DA works for this member (its writes land, its reads reach the head), the trio time its latest
        read that reached the head began (all DA held then is in the state); None otherwise."""
        ...


class Heard(Protocol):
    fields: dict[str, Any]  # the batch event's fields
    ids: list[bytes]
    origins: set[str]  # the members that announced it
    heard_at: float  # trio time
    kept: bool  # in the lock table here
    flowing_mark: float  # ``ReceiptService._flowing_s`` when it was first served here


class KeySource(Protocol):
    key: frost.KeyShare | None


@dataclass
class Record:
    """A receipt this coordinator has seen, and where it stands."""

    receipt: rc.Receipt
    status: str = "pending"  # pending | locked | final | conflict | rejected
    reason: str = ""
    conflicting_id: bytes | None = None
    first_seen: float = field(default_factory=trio.current_time)
    changed: trio.Event = field(default_factory=trio.Event)
    optimistic: dict[str, Any] | None = None
    document: dict[str, Any] | None = None  # the signed document, as soon as the signature exists
    abandoned: bool = False  # dropped unlocked (the own lock failed): whoever waits for its lock stops waiting
    tally: dict[str, int] | None = field(default=None, repr=False, compare=False)  # records per status, kept here

    @property
    def awaiting_lock(self) -> bool:
        """Still waiting for this coordinator's own durable lock (not yet locked, settled or abandoned)."""
        return self.status == "pending" and not self.reason and not self.abandoned

    def abandon(self) -> None:
        self.abandoned = True
        self._changed()

    def settle(self, status: str, reason: str = "", conflicting_id: bytes | None = None) -> None:
        if self.status in ("final",):
            return
        if self.tally is not None and status != self.status:
            self.tally[self.status] -= 1
            self.tally[status] = self.tally.get(status, 0) + 1
        self.status, self.reason = status, reason
        if conflicting_id is not None:
            self.conflicting_id = conflicting_id
        self._changed()

    def _changed(self) -> None:
        """Wake whoever waits on ``changed`` (each wait takes the event current at the time)."""
        self.changed.set()
        self.changed = trio.Event()



@dataclass
class Counters:
    proposed: int = 0
    final: int = 0
    conflicts: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    batches_failed: int = 0
    sessions: int = 0
    blamed: dict[str, int] = field(default_factory=dict)
    takeovers: int = 0
    shares_released: int = 0
    sign_refused: int = 0
    one_round: int = 0  # batches signed in the lock round, with spare commitments
    republished: int = 0  # batches announced by members now gone and missing from DA, published again here

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Unavailable(Exception):
    """The cluster cannot sign now (no key yet, too few peers, lock table broken)."""


class ReceiptService:
    def __init__(self, net: Network, identity: nacl.signing.SigningKey, members: dict[str, bytes],
                 keys: KeySource, view: LedgerView, locks: LockStore, *, batch_max: int = 256,
                 batch_wait_s: float = 0.002, epoch_length_s: int = 3600, epoch_grace: int = 1,
                 lock_timeout_s: float = 2.0, sign_timeout_s: float = 2.0, batch_deadline_s: float = 10.0,
                 takeover_s: float = 5.0, republish_after_s: float = 300.0, sign_patience_s: float = 0.1,
                 lock_grace_s: float = 0.05,
                 clock: Callable[[], float] = time.time,
                 run_blocking: RunBlocking = trio.to_thread.run_sync, max_inflight_batches: int = 2,
                 random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        """``random_bytes`` feeds batch ids and nonces (a simulation seeds it to replay a run exactly)."""
        self.net, self.identity, self.members, self.keys, self.view = net, identity, members, keys, view
        self.locks = locks
        self.batch_max, self.batch_wait_s = min(batch_max, MAX_BATCH), batch_wait_s
        self.epoch_length_s, self.epoch_grace, self.clock = epoch_length_s, epoch_grace, clock
        self.lock_timeout_s, self.sign_timeout_s, self.batch_deadline_s = lock_timeout_s, sign_timeout_s, \
            batch_deadline_s
        self.takeover_s, self.run_blocking, self.sign_patience_s = takeover_s, run_blocking, sign_patience_s
        self.republish_after_s = republish_after_s
        self._flowing_s = 0.0  # seconds DA has worked for this member, added up (``_publish_stranded``)
        self._last_tick: float | None = None
        self.random_bytes = random_bytes
        self.lock_grace_s = lock_grace_s
        self.identifiers = assign_identifiers(members.values())
        by_key = {k: m for m, k in members.items()}
        self.member_of: dict[int, str] = {i: by_key[k] for i, k in self.identifiers.items()}
        self.identifier_of: dict[str, int] = {m: i for i, m in self.member_of.items()}
        self.records: OrderedDict[bytes, Record] = OrderedDict()
        self._by_status: dict[str, int] = {}  # records per status, kept as they change (status() is polled)
        self.max_records = 200_000
        # the records settled as rejected, oldest first (``_reject``)
        self._rejected: OrderedDict[bytes, Record] = OrderedDict()
        self.counters = Counters()
        self._queue: list[rc.Receipt] = []
        self._queued: set[bytes] = set()
        self._signing: set[bytes] = set()  # receipts of the batches in flight here (a takeover leaves them be)
        self._queue_wake = trio.Event()
        self._nonces = NonceTable(MAX_NONCES, MAX_NONCES_PER_PEER, SPARES)
        self._db = trio.Lock()  # one lock-table call at a time (one SQLite connection)
        self._inflight = trio.Semaphore(max_inflight_batches)
        self._flights: dict[object, float] = {}  # the batches in flight here: when each started (trio time)
        self._batch_s = 0.0  # the usual time a batch takes here, from its start to its end (smoothed)
        self._locked: OrderedDict[bytes, rc.Receipt] = OrderedDict()  # recently locked here (durable)
        self._blamed_until: dict[int, float] = {}  # identifier -> until when it is left out of signer sets
        self._closing: list[bytes] = []  # final receipts whose locks are closed in the next housekeeping pass
        self._republishing: set[bytes] = set()  # roots of heard batches being published again here
        self._nursery: trio.Nursery | None = None  # the service's own (``run``): batches signed finish there
        self._finishing = trio.Semaphore(MAX_FINISHING)  # signed batches being announced and published
        self._announcing: set[bytes] = set()  # their receipt ids (no takeover signs them again meanwhile)
        self._heard_loaded = False  # the heard batches kept on disk are heard again once the key is known
        self._retry: dict[bytes, float] = {}  # not-yet-valid receipts: id -> next try (monotonic)
        self._takeover_after: tuple[int, bytes, int] | None = None  # where the next takeover pass starts
        self._taking_over = False  # a pass's batches still wait for in-flight slots (_run_takeovers)
        self._takeover_tries: dict[bytes, tuple[int, float]] = {}  # locked batch -> (takeovers, next one not before)
        self._timed_out: dict[str, float] = {}  # peer -> when it last let a share request time out
        self._records_version = 0  # grows with every record added: receipt_ids' cache key
        self._spares: dict[str, list[tuple[bytes, bytes]]] = {}  # peer -> commitments it offered us for later
        self._lag: dict[str, float] = {}  # peer -> smoothed lock reply time (s): the one-round path asks the fastest
        self._sorted_ids: tuple[tuple[int, bytes | None, int], list[bytes]] | None = None
        self.latencies: list[float] = []  # seconds from first seen to final, the latest ones
        #: called at event time with (what, value): "batch_size" and "sign_seconds" of each batch signed here,
        #: "final_seconds" (first seen → final) of each receipt (GET /metrics, api/metrics.py)
        self.observers: list[Callable[[str, float], None]] = []

    # ---- views -------------------------------------------------------------------------------------

    @property
    def my_id(self) -> str:
        return self.net.my_id

    @property
    def threshold(self) -> int | None:
        key = self.keys.key
        return key.threshold if key is not None else None

    @property
    def signing_now(self) -> frozenset[bytes]:
        """The receipts of the batches this coordinator is locking or signing now."""
        return frozenset(self._signing)

    def status(self) -> dict[str, Any]:
        by_status = {k: n for k, n in self._by_status.items() if n}
        lat = sorted(self.latencies)
        latency = ({"p50": round(lat[len(lat) // 2] * 1000, 2), "p99": round(lat[int(len(lat) * 0.99)] * 1000, 2),
                    "samples": len(lat)} if lat else None)
        return {**self.counters.as_json(), "by_status": by_status, "queued": len(self._queue),
                "final_latency_ms": latency,
                "lock_table": {"locks": self._safe_count(), "broken": self.locks.broken,
                               "new_locks_held": self._held()},
                "nonces_held": len(self._nonces)}

    def hold_new_locks(self, why: str) -> None:
        """Lock no slot anew while a slot this member may have locked before ``why`` happened can still be signed:
        until its epoch, at most the one after the current (``validate`` takes it near the boundary), is older than
        the grace allows. The locks held are kept to; clients are answered 503 meanwhile."""
        epoch_now = int(self.clock() // self.epoch_length_s)
        until_s = (epoch_now + self.epoch_grace + 2) * self.epoch_length_s
        until = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(until_s))
        reason = (f"{why}: this member locks no slot anew until {until} (every slot it may have locked since is then "
                  "past the epoch grace)")
        log.error("%s", reason)
        self.locks.hold_new(int(until_s * 1000), reason)  # (in force at once)
        if self._nursery is not None:  # kept in the table as any write of the running service: never beside a
            #                            batch's transaction left open on the same connection
            self._nursery.start_soon(self._lock_table_work, self.locks.keep_hold)
            return
        try:  # (not running yet: no transaction can be open)
            self.locks.keep_hold()
        except LockTableBroken as exc:  # (held in memory all the same; a broken table signs nothing anyway)
            log.error("cannot keep the hold in the lock table: %s", exc)

    def _held(self) -> str | None:
        """Why no slot is locked anew here now, if so (``hold_new_locks``)."""
        return self.locks.held_reason if self.clock() * 1000 < self.locks.held_until_ms else None

    def _observe(self, what: str, value: float) -> None:
        for observe in self.observers:
            observe(what, value)

    def _safe_count(self) -> int | None:
        try:
            return self.locks.count()
        except Exception:  # a broken table: the status says so above
            return None

    def current_epoch(self) -> int:
        return int(self.clock() // self.epoch_length_s) + 1

    def lookup(self, receipt_id: bytes) -> dict[str, Any] | None:
        doc = self.view.signed_document(receipt_id)
        if doc is not None:
            return doc
        record = self.records.get(receipt_id)
        if record is None:
            return None
        if record.document is not None:
            return record.document
        out: dict[str, Any] = {"receipt_id": receipt_id.hex(), "receipt": record.receipt.to_json(),
                               "receipt_bytes": record.receipt.to_bytes().hex(), "epoch": record.receipt.epoch,
                               "status": record.status}
        if record.reason:
            out["reason"] = record.reason
        if record.conflicting_id is not None:
            out["conflicting_receipt_id"] = record.conflicting_id.hex()
        if record.optimistic is not None and record.status in ("locked", "final"):  # (a promise the slot broke: not)
            out["optimistic"] = record.optimistic
        return out

    async def lookup_durable(self, receipt_id: bytes) -> dict[str, Any] | None:
        """``lookup``, falling back to the lock table: a receipt this coordinator locked (and acknowledged)
        before a restart keeps its status — locked, or closed as a conflict or as rejected."""
        doc = self.lookup(receipt_id)
        if doc is not None or self.locks.broken is not None:
            return doc
        try:
            async with self._db:
                held = await self.run_blocking(partial(self.locks.lock_of, receipt_id))
        except LockTableBroken:
            return None  # it just broke: this coordinator knows no more than its records
        if held is None:
            try:  # refused by its own lock here for a rival (a 409): kept as conflict evidence, not as a lock
                async with self._db:
                    refused = await self.run_blocking(partial(self.locks.refused_for_conflict, receipt_id))
            except LockTableBroken:
                return None
            if refused is None:
                return None
            receipt, rival = refused
            self._record(receipt).settle("conflict", "slot conflict", rival)
            return self.lookup(receipt_id)
        receipt, why, rival = held
        record = self._record(receipt)
        if why == CLOSED_CONFLICT:
            record.settle("conflict", "slot conflict", rival)
        elif why == CLOSED_REJECTED:
            self._reject(record, "refused by more than n - t coordinators")
        else:  # open, or signed and on its way to the state: locked until the batch event arrives
            record.settle("locked")
        return self.lookup(receipt_id)

    def receipt_ids(self) -> list[bytes]:
        """Every receipt known here (signed in the state, or seen by this coordinator), in id order. Sorted once
        per change, not per call (the dashboard lists receipts every second on every member)."""
        # (keyed by the count and last id, it went stale when one id left and another came between two calls)
        key = (self.view.signed_version(), self._records_version)
        if self._sorted_ids is None or self._sorted_ids[0] != key:
            self._sorted_ids = (key, sorted(set(self.view.signed_ids()) | set(self.records)))
        return self._sorted_ids[1]

    # ---- validation against the DA-derived state ---------------------------------------------------

    def validate(self, r: rc.Receipt) -> tuple[Verdict, str]:
        rival = self.view.signed_rival(r.id, r.slot)
        if rival is not None:  # the state holds another receipt of the slot signed: never lock this one (a member
            #                    whose lock table was replaced, say after a new DKG, would have: a reviewer's finding)
            return Verdict.INVALID, f"slot conflict: receipt {rival.hex()} of this slot is signed"
        registered, key = self.view.node_key(r.node_id)
        if not registered:
            return Verdict.NOT_YET, f"node {r.node_id} is not registered here (yet)"
        if key is None:
            return Verdict.NOT_YET, f"node {r.node_id} has no registered public key (yet)"
        if not r.node_signature_valid():
            return Verdict.INVALID, "the node signature is invalid"
        current = self.current_epoch()
        if r.epoch == current + 1 and self.clock() >= current * self.epoch_length_s - EPOCH_SKEW_S:
            # the next epoch, begun on a clock a little ahead of ours (its proposer's, at the boundary): not yet,
            # not invalid (more than n - t members a little behind closed a receipt acknowledged as locked for good)
            return Verdict.NOT_YET, f"epoch {r.epoch} has not begun here yet"
        if not current - self.epoch_grace <= r.epoch <= current:
            return Verdict.INVALID, f"epoch {r.epoch} is outside [{current - self.epoch_grace}, {current}]"
        if r.receipt_type == "storage":
            present = self.view.replica(r.subject, r.node_id)
            if present is None:
                return Verdict.NOT_YET, f"object {r.subject} is not registered here (yet)"
            if not present:
                return Verdict.NOT_YET, f"node {r.node_id} is not a present replica of {r.subject} (yet)"
        elif r.execution_commitment is None:
            return Verdict.INVALID, "a compute receipt needs an execution commitment"
        if key != r.node_public_key:
            # not yet, not invalid: a node that registered a new key made receipts with it before every member read
            # that write; refused as invalid by those, the receipt was closed as rejected for good (a reviewer's
            # reproduction). Checked after every rule that refuses for good (its epoch, its fields): one made with
            # a key the node no longer holds is closed once its epoch leaves the window, not proposed for ever.
            return Verdict.NOT_YET, "node_public_key is not the node's registered key here (yet)"
        return Verdict.OK, ""

    # ---- submitting --------------------------------------------------------------------------------

    def check_available(self) -> None:
        key = self.keys.key
        if key is None:
            raise Unavailable("the cluster has no group key yet (DKG not complete)")
        if self.locks.broken is not None:
            raise Unavailable(self.locks.broken)
        held = self._held()
        if held is not None:
            raise Unavailable(held)
        up = len(self.net.up_peers()) + 1
        if up < key.threshold:
            raise Unavailable(f"only {up} of {len(self.members)} coordinators are connected; signing needs "
                              f"{key.threshold}")

    def submit(self, receipt: rc.Receipt) -> Record:
        """Queue a receipt (idempotent); raise Unavailable when signing is impossible now."""
        rid = receipt.id
        record = self.records.get(rid)
        if record is not None and record.status == "rejected":
            self._drop(rid)  # rejected for now (e.g. its node was not registered in time): judge it again
            record = None
        if record is not None:
            if record.receipt.node_signature != receipt.node_signature and not receipt.node_signature_valid():
                return Record(receipt, "rejected", "the node signature is invalid")
            return record
        if self.view.signed_document(rid) is not None:
            record = self._record(receipt)
            record.settle("final")
            return record
        rival = self.view.signed_rival(rid, receipt.slot)
        # 409 with the rival, as for a conflict of locks; only for the node's own receipt (``_evidence``; others are
        # judged below: not yet valid, or invalid)
        if rival is not None and self._evidence(receipt):
            self.counters.conflicts += 1
            record = self._record(receipt)
            record.settle("conflict", "slot conflict", rival)
            return record
        # Checked first (a client learns its receipt can never be signed, not "retry later"), and the node
        # signature against the key the receipt carries before anything else: a receipt of a node not registered
        # here yet (NOT_YET) is kept for a while, and forged ones flooded that store (a reviewer's reproduction).
        verdict, reason = ((Verdict.INVALID, "the node signature is invalid") if not receipt.node_signature_valid()
                           else self.validate(receipt))
        if verdict is Verdict.INVALID:
            self._count_rejected(reason)
            return Record(receipt, "rejected", reason)
        self.check_available()
        if verdict is Verdict.NOT_YET and len(self._retry) >= MAX_NOT_YET:
            raise Unavailable(f"{MAX_NOT_YET} receipts here wait for writes not seen here yet ({reason}): submit "
                              "again shortly")
        if len(self._queue) >= MAX_QUEUED:
            raise Unavailable(f"{MAX_QUEUED} receipts are waiting to be signed here: submit again shortly")
        record = self._record(receipt)
        self.counters.proposed += 1
        if verdict is Verdict.NOT_YET:
            record.reason = reason
            self._retry[rid] = trio.current_time() + NOT_YET_RETRY_S
        else:
            self._enqueue(receipt)
        return record

    def _record(self, receipt: rc.Receipt) -> Record:
        record = self.records.get(receipt.id)
        if record is None:
            record = self.records[receipt.id] = Record(receipt, tally=self._by_status)
            self._by_status["pending"] = self._by_status.get("pending", 0) + 1
            self._records_version += 1
            while len(self.records) > self.max_records:
                self._evict_one()
        return record

    def _evict_one(self) -> None:
        """Past ``max_records``, the oldest settled record goes (final, conflict, rejected: the state or the lock
        table still answers for them). A record still in flight (pending, or locked and not final yet) goes to the
        back instead: dropped, a receipt acknowledged a moment before answered 404, and whoever waited for it was
        never woken (``wait_ms`` ran out). When the EVICTION_SCAN oldest are all in flight, the oldest of them goes
        all the same (the bound holds, and a flood of records in flight costs a bounded scan per record)."""
        oldest = next(iter(self.records))
        for _ in range(min(len(self.records), EVICTION_SCAN)):
            receipt_id, record = next(iter(self.records.items()))
            if record.status not in ("pending", "locked") or record.abandoned:
                self._drop(receipt_id)
                return
            del self.records[receipt_id]
            self.records[receipt_id] = record
        self._drop(oldest)._changed()

    def _let_go_of_finals(self, receipt_ids: list[bytes]) -> None:
        """What is kept of final receipts only until they are: their entries in the cache of receipts locked here
        (for sign requests; ~3.5 KB a receipt, up to MAX_LOCKED_CACHE), and, once the state holds them, the
        signed documents their proposer made (``lookup`` builds theirs from the state; ~6 KB each, up to
        ``max_records``). Kept, the two took ~2.5 KB per receipt the cluster signed, on every member."""
        for rid in receipt_ids:
            self._locked.pop(rid, None)
            record = self.records.get(rid)
            if record is not None and record.document is not None and self.view.holds(rid):
                record.document = None

    def _reject(self, record: Record, reason: str) -> None:
        """Settle a kept record as rejected. Of those, the latest MAX_REJECTED_RECORDS are kept to answer why (one
        client's receipts of nodes registered nowhere, each given up after NOT_YET_GIVE_UP_S, filled the records up
        to ``max_records`` as rejected ones: ~360 MiB, a reviewer's measurement); an older one is forgotten (404: its
        client submits it again and it is judged anew)."""
        record.settle("rejected", reason)
        rid = record.receipt.id
        self._rejected.pop(rid, None)  # (rejected again: the latest, not the first, decides when it goes)
        self._rejected[rid] = record
        while len(self._rejected) > MAX_REJECTED_RECORDS:
            old_id, old = self._rejected.popitem(last=False)
            if self.records.get(old_id) is old and old.status == "rejected":  # (only that very record: a regression
                self._drop(old_id)  #                     review's receipt rejected twice had its new record dropped)
                self._records_version += 1

    def _drop(self, receipt_id: bytes) -> Record:
        record = self.records.pop(receipt_id)
        self._by_status[record.status] -= 1
        record.tally = None
        return record

    def _enqueue(self, receipt: rc.Receipt) -> None:
        if receipt.id in self._queued:
            return
        self._queued.add(receipt.id)
        self._queue.append(receipt)
        self._queue_wake.set()

    def _count_rejected(self, reason: str) -> None:
        """Count a rejection under one of a few fixed causes (reasons carry ids, and peers' reasons are theirs to
        choose: keyed by the text, the counter would grow without bound)."""
        key = next((cause for cause, words in REJECT_CAUSES if any(w in reason for w in words)), "other")
        self.counters.rejected[key] = self.counters.rejected.get(key, 0) + 1

    # ---- running -----------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.net.on_request(LOCK, LOCK_REPLY, self._on_lock)
        self.net.on_request(SIGN, SIGN_REPLY, self._on_sign)
        self.net.on_request(FINAL, FINAL_ACK, self._on_final)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._batcher, nursery)
            nursery.start_soon(self._housekeeping, nursery)
            task_status.started()

    async def _batcher(self, nursery: trio.Nursery) -> None:
        """A batch closes at ``batch_max`` receipts; with no other batch in flight, at once (waiting would only
        add to a lone receipt's latency: the next receipt could start a batch of its own anyway); with one in
        flight, when that one ends (``_await_company``): the queue grows meanwhile, so batches grow with the
        load."""
        while True:
            await self._inflight.acquire()
            try:
                while not self._queue:
                    await self._wait_for_queue()
                await self._await_company()
            except BaseException:
                self._inflight.release()
                raise
            cut = rc.fitting(self._queue, self.batch_max)  # (by count, and by size: see rc.MAX_BATCH_BYTES)
            batch, self._queue = self._queue[:cut], self._queue[cut:]
            for r in batch:
                self._queued.discard(r.id)
            nursery.start_soon(self._run_batch_released, batch, self._take_off(), self._claim(batch))

    async def _wait_for_queue(self) -> None:
        """Until a receipt is queued or a batch ends."""
        await self._queue_wake.wait()
        self._queue_wake = trio.Event()

    async def _await_company(self) -> None:
        """While another batch is in flight, hold the next one back: at least ``batch_wait_s``, then until the
        batches in flight end (each batch costs its signers a lock round, a FROST session and a DA event
        whatever its size: per receipt, the batches' cost is what limits a loaded cluster, and one batch at a
        time made them ~30% larger and throughput 15-20% higher than two at a time in bench.receipts), but no
        longer than until the oldest of them counts as stalled: in flight for ``STALL_FACTOR`` times the usual
        batch's time (at least ``STALL_MIN_S``). A stalled batch (waiting out a signer gone silent mid-session)
        then no longer holds back the receipts queued behind it: they go in a batch of their own beside it. A
        full batch (``batch_max``) goes at once."""
        if not self._flights:
            return
        stalled_at = min(self._flights.values()) + max(STALL_MIN_S, STALL_FACTOR * self._batch_s)
        with trio.move_on_after(self.batch_wait_s):
            while not self._queue_full():
                await self._wait_for_queue()
        with trio.move_on_at(stalled_at):
            while self._flights and not self._queue_full():
                await self._wait_for_queue()

    def _queue_full(self) -> bool:
        """Whether the queue holds a full batch: ``batch_max`` receipts, or as many as fit one (see rc.fitting;
        counted only for queues long enough that long receipts could fill a batch before ``batch_max``)."""
        queued = len(self._queue)
        return queued >= self.batch_max or (queued > FULL_BY_SIZE_FROM
                                            and rc.fitting(self._queue, self.batch_max) < queued)

    def _take_off(self) -> object:
        """Count a batch in flight from now on (before its task starts: the batcher must see it at once)."""
        token = object()
        self._flights[token] = trio.current_time()
        return token

    def _claim(self, batch: list[rc.Receipt]) -> set[bytes]:
        """Mark the receipts of a batch about to start as signing here (those not already): done where the batch's
        task is started, not when it first runs, else a takeover pass running in between took them for stranded
        and signed them in a second batch of another root (a reviewer's reading)."""
        ids = {r.id for r in batch} - self._signing
        self._signing |= ids
        return ids

    async def _run_batch_released(self, batch: list[rc.Receipt], token: object | None = None,
                                  ids: set[bytes] | None = None) -> None:
        if ids is None:
            ids = self._claim(batch)
        if token is None:
            token = self._take_off()
        started = self._flights[token]
        try:
            await self._run_batch(batch)
        except* LockTableBroken as group:  # raised in the batch's nursery too (the own lock's commit)
            log.error("receipt signing stopped: %s", group.exceptions[0])
        finally:
            del self._flights[token]
            took = trio.current_time() - started
            # smoothed (the first batch sets it): a few slow batches do not make the next ones wait much longer
            if self._batch_s:  # a stalled batch counts as the stall point at most: stalls cannot hide stalls
                took = min(took, max(STALL_MIN_S, STALL_FACTOR * self._batch_s))
            self._batch_s = self._batch_s + (took - self._batch_s) / 8 if self._batch_s else took
            self._signing -= ids
            self._inflight.release()
            self._queue_wake.set()  # a batcher waiting for this batch to end

    async def _housekeeping(self, nursery: trio.Nursery) -> None:
        """Retry not-yet-valid receipts; take over locks left open; mark locks final."""
        last_takeover = trio.current_time()
        while True:
            await trio.sleep(NOT_YET_RETRY_S)
            if not self._heard_loaded and self.keys.key is not None:
                await self._load_heard()
            settled = self.view.settled_heard()  # heard batches DA has brought (or this member published)
            for heard in settled:
                self._closing.extend(heard.ids)
            self._publish_stranded(nursery)
            if self._closing:  # one transaction for every batch final since (none with a broken table)
                closing, self._closing = self._closing, []
                if self.locks.broken is None:
                    roots = [bytes.fromhex(h.fields["root"]) for h in settled if h.kept]
                    await self._lock_table_work(partial(self.locks.mark_final, closing, SIGNED, roots))
                self._let_go_of_finals(closing)
            now = trio.current_time()
            self._let_go_of_stale_nonces(now, scan=None)  # a signer no proposer asks again holds none for ever
            unsignable_locks: list[tuple[rc.Receipt, str]] = []
            final_here: list[rc.Receipt] = []
            for rid, when in list(self._retry.items()):
                record = self.records.get(rid)
                if record is None or record.status not in ("pending", "locked"):
                    del self._retry[rid]
                    continue
                if when > now:
                    continue
                if self.view.holds(rid):  # signed by a takeover while we were cut off from the peers, not from DA:
                    final_here.append(record.receipt)  # it was queued and signed again, and its client waiting
                    continue  # here was answered "locked" (a reviewer's reproduction)
                if rid in self._signing or rid in self._announcing:  # in a batch in flight (a takeover's, say):
                    self._retry[rid] = now + NOT_YET_RETRY_S  # not queued beside it (two batches signed it)
                    continue
                verdict, reason = self.validate(record.receipt)
                if verdict is Verdict.OK:
                    del self._retry[rid]
                    self._enqueue(record.receipt)
                elif record.status == "pending" and (verdict is Verdict.INVALID
                                                      or now - record.first_seen > NOT_YET_GIVE_UP_S):
                    del self._retry[rid]
                    self._settle_unsignable(record.receipt, reason)
                elif record.status == "locked" and verdict is Verdict.INVALID \
                        and rid not in self._signing and rid not in self._announcing and rid not in self._queued:
                    # locked here and never signable any more (its epoch left the window while the batch could
                    # not be signed): its lock is closed, as a takeover closes one; it was tried again every half
                    # second for ever, holding a place of the MAX_NOT_YET quota (a reviewer's reproduction)
                    del self._retry[rid]
                    unsignable_locks.append((record.receipt, reason))
                elif record.status == "locked" and now - record.first_seen > NOT_YET_GIVE_UP_S:
                    del self._retry[rid]  # not valid here for that long: left to the takeovers of its lock
                else:
                    self._retry[rid] = now + NOT_YET_RETRY_S
            if final_here:
                self._settle_final(final_here)  # (out of the retries; its lock marked final with the others')
                self._closing.extend(r.id for r in final_here)
            if unsignable_locks:  # (settled even with a broken lock table: its client read "locked" for ever)
                await self._close_unsignable(unsignable_locks)
            if now - last_takeover >= self.takeover_s / 2 and self.keys.key is not None \
                    and self.locks.broken is None:
                last_takeover = now
                try:
                    await self._take_over(nursery)
                except LockTableBroken as exc:
                    log.error("receipt signing stopped: %s", exc)

    async def _lock_table_work(self, work: Callable[[], object]) -> None:
        """Housekeeping's writes to the lock table: a failure (disk full, an I/O error) breaks the table, so this
        coordinator stops signing and says why, and keeps serving (it took the whole service down before)."""
        try:
            async with self._db:
                await self.run_blocking(work)
        except LockTableBroken as exc:
            log.error("receipt signing stopped: %s", exc)

    async def _take_over(self, nursery: trio.Nursery) -> None:
        if self._taking_over:  # the previous pass's batches still wait for their turn
            return
        older = int(self.clock() * 1000 - self.takeover_s * 1000 * (1 + self._rank()))
        start = self._takeover_after
        async with self._db:  # page through the open locks, so unsignable old ones cannot starve newer ones
            open_locks = await self.run_blocking(partial(self.locks.open_locks, older, self.batch_max, start))
        self._takeover_after = None
        if len(open_locks) == self.batch_max:  # more may follow: the last batch of the page may go on past it, and
            #                                    is left whole to the next pass (cut in two, each part was signed
            #                                    as a batch of its own: not the same root; a reviewer's reproduction)
            whole = len(open_locks)
            while whole > 0 and open_locks[whole - 1].batch == open_locks[-1].batch:
                whole -= 1
            open_locks = open_locks[:whole] or open_locks  # (one batch larger than a page: taken as it comes)
            last = open_locks[-1]
            self._takeover_after = (last.locked_ms, last.batch, last.idx)
        final = [o.receipt.id for o in open_locks if self.view.holds(o.receipt.id)]
        if final:
            async with self._db:
                await self.run_blocking(partial(self.locks.mark_final, final))
            self._settle_final([self.records[rid].receipt for rid in final if rid in self.records])
        # final, on its way in a batch of this coordinator, or signed in a heard batch (``_publish_stranded``)
        busy = set(final) | self._queued | self._signing | self._announcing
        busy.update(o.receipt.id for o in open_locks if o.receipt.id not in busy
                    and self.view.signed_document(o.receipt.id) is not None)
        candidates = [o for o in open_locks if o.receipt.id not in busy]
        # A lock whose receipt can no longer be signed anywhere (its epoch left the window while its proposer was
        # gone, say) is closed, not taken over: else every pass proposed it again, in vain, and such locks, the
        # oldest, filled the first pages ahead of locks a takeover can still save. The slot stays locked to it.
        unsignable: list[tuple[rc.Receipt, str]] = []
        for o in candidates:
            verdict, reason = self.validate(o.receipt)
            if verdict is Verdict.INVALID:
                unsignable.append((o.receipt, reason))
        if unsignable:
            await self._close_unsignable(unsignable)
            if self.locks.broken is not None:
                return
            busy.update(r.id for r, _ in unsignable)
            log.info("closed %d lock(s) whose receipts can no longer be signed (%s)", len(unsignable),
                     unsignable[0][1])
        now = trio.current_time()
        groups: dict[bytes, list[rc.Receipt]] = {}  # the batches as they were locked (same receipts, same order:
        for o in candidates:  # same root), but those taken over lately in vain, until their back-off ends
            if o.receipt.id not in busy and self._takeover_tries.get(o.batch, (0, 0.0))[1] <= now:
                groups.setdefault(o.batch, []).append(o.receipt)
        if not groups or len(self.net.up_peers()) + 1 < (self.threshold or 1):
            if groups:
                self._takeover_after = start  # this page again once enough peers are up
            return
        self.counters.takeovers += 1
        log.info("taking over %d batch(es), %d receipt(s) locked here and still not final", len(groups),
                 sum(map(len, groups.values())))
        self._taking_over = True  # a few batches a pass: the back-off of those lets the next pass take others
        nursery.start_soon(self._run_takeovers, nursery, list(groups.items())[:TAKEOVER_BATCHES_PER_PASS])

    async def _run_takeovers(self, nursery: trio.Nursery, groups: list[tuple[bytes, list[rc.Receipt]]]) -> None:
        """A takeover pass's batches, each as an in-flight slot comes free: the takeovers and the batcher's queue
        take turns (trio's semaphore serves its waiters first come, first served). A takeover that only took a
        slot already free got none while its member had steady traffic (the batcher waits for the next slot as
        soon as it starts a batch), and a pass that began from its oldest locks each time let old locks that
        can never be signed (slots split with a rival, the liar blamed) take every free slot: in both cases a
        receipt locked at every honest member stayed unsigned (a reviewer's reproduction; dsdn nemesis). A
        batch taken over in vain waits longer each time before the next try (``_note_takeover``)."""
        try:
            for batch, receipts in groups:
                await self._inflight.acquire()
                receipts = [r for r in receipts if self._still_to_take_over(r.id)]
                receipts = receipts[:rc.fitting(receipts, self.batch_max)]
                if not receipts:
                    self._inflight.release()
                    continue
                self._note_takeover(batch)
                for r in receipts:
                    self._record(r)
                nursery.start_soon(self._run_batch_released, receipts, None, self._claim(receipts))
        finally:
            self._taking_over = False

    def _still_to_take_over(self, receipt_id: bytes) -> bool:
        """Whether a receipt of a takeover pass still needs it once its turn came: not final meanwhile, not signing
        or queued here, not signed in a heard batch. (A receipt reported in conflict keeps its lock open, and a
        takeover may still sign it: it stays.)"""
        if receipt_id in self._queued or receipt_id in self._signing or receipt_id in self._announcing:
            return False
        return not self.view.holds(receipt_id) and self.view.signed_document(receipt_id) is None

    def _note_takeover(self, batch: bytes) -> None:
        """Count a takeover of a locked batch: the next one waits takeover_s, then twice as long each time, up to
        TAKEOVER_BACKOFF_MAX_S (a signed batch leaves the open locks, and this record ages out)."""
        tries = self._takeover_tries.pop(batch, (0, 0.0))[0] + 1
        wait = min(TAKEOVER_BACKOFF_MAX_S, self.takeover_s * 2 ** (tries - 1))
        self._takeover_tries[batch] = (tries, trio.current_time() + wait)
        while len(self._takeover_tries) > MAX_TAKEOVER_TRIES:
            del self._takeover_tries[next(iter(self._takeover_tries))]

    def _publish_stranded(self, nursery: trio.Nursery) -> None:
        """Publish again, under this member's name, each heard batch DA has not brought although DA has worked for
        this member ``republish_after_s`` (staggered by rank; the seconds it worked are added up, so a flaky DA
        delays this but cannot prevent it) since it was heard: its proposer died with the only copy in its outbox,
        or withholds it, and its receipts were reported final. Another member's copy, once on DA, settles it
        everywhere before the next rank's patience ends. At most MAX_REPUBLISHING at once."""
        now = trio.current_time()
        read_through = self.view.da_read_through()
        if self._last_tick is not None and read_through is not None:
            self._flowing_s += now - self._last_tick
        self._last_tick = now
        if read_through is None:
            return
        patience = self.republish_after_s * (1 + self._rank() / 2)
        for heard in self.view.heard_batches():
            # DA worked that long since, and a read of it that began that long after the batch was heard reached
            # the head without it (a member reading slowly has not read it yet: no evidence)
            if (self._flowing_s - heard.flowing_mark < patience or read_through - heard.heard_at < patience
                    or len(self._republishing) >= MAX_REPUBLISHING):
                break
            root = bytes.fromhex(heard.fields["root"])
            if root in self._republishing:
                continue
            self._republishing.add(root)
            nursery.start_soon(self._republish, heard, root)

    async def _republish(self, heard: Heard, root: bytes) -> None:
        try:
            log.warning("a signed batch of %d receipt(s) announced by %s is still not on DA and they are gone: "
                        "publishing it again", len(heard.ids), ",".join(sorted(heard.origins)))
            await self.view.publish_batch(heard.fields)
            self.counters.republished += 1
            await self._announce(heard.fields, need=1, rounds=1)  # the others leave it to this member now
        finally:
            self._republishing.discard(root)

    async def _load_heard(self) -> None:
        """The heard batches kept on disk before a restart, heard again (once the group key is known); those
        that no longer verify (another key) are forgotten."""
        self._heard_loaded = True
        try:
            async with self._db:
                rows = await self.run_blocking(self.locks.heard)
            stale = []
            for root, origin, packed in rows:
                try:
                    fields = msgpack.unpackb(packed, raw=False)
                except Exception:  # msgpack raises several unrelated types for garbage
                    fields = None
                heard = self.view.check_batch(fields) if type(fields) is dict else None
                if heard is None:
                    stale.append(root)
                else:
                    self._serve(heard, origin)
            if stale:
                await self._lock_table_work(partial(self.locks.mark_final, [], SIGNED, stale))
        except LockTableBroken as exc:
            log.error("receipt signing stopped: %s", exc)

    def _rank(self) -> int:
        """0 for the first member in id order, 1 for the next... (staggers takeovers)."""
        return sorted(self.members).index(self.my_id)

    # ---- proposer ----------------------------------------------------------------------------------

    async def _decide(self, batch: list[rc.Receipt], proposer: str, batch_id: bytes) -> list[Decision]:
        """Check and lock a batch's slots, left uncommitted (the caller holds ``_db`` and commits with
        ``_durably``): in the event loop for a small batch, in a worker thread otherwise."""
        call = partial(self.locks.lock_batch, batch, self.validate, proposer, int(self.clock() * 1000), batch_id,
                       commit=False)
        decisions = call() if len(batch) <= INLINE_DECIDE_MAX else await self.run_blocking(call)
        return [self._as_conflict(d, r) for d, r in zip(decisions, batch, strict=True)]

    def _as_conflict(self, decision: Decision, receipt: rc.Receipt) -> Decision:
        """A receipt refused because the state holds a rival of its slot signed is a slot conflict, naming the
        rival (its proposer closes it as one: 409 with the rival's id), not a plain rejection."""
        if decision.verdict is Verdict.INVALID:
            rival = self.view.signed_rival(receipt.id, receipt.slot)
            if rival is not None and self._evidence(receipt):
                return Decision(receipt.id, Verdict.CONFLICT, "slot conflict", rival)
        return decision

    def _evidence(self, receipt: rc.Receipt) -> bool:
        """Whether ``receipt`` is its node's own (signed with the key registered for it here): only such a rival of
        a signed receipt is kept and served as the node's slot conflict. Checked against the key it carries alone,
        anyone's receipt naming a node was (a reviewer's reproduction; and its retry took the same way round: a
        regression review)."""
        return (self.view.node_key(receipt.node_id)[1] == receipt.node_public_key
                and receipt.node_signature_valid())

    def _settle_unsignable(self, receipt: rc.Receipt, reason: str) -> bytes | None:
        """Settle a receipt that can never be signed (its record, when pending or locked, and the counters): a
        slot conflict when the state holds a rival of its slot signed (that rival is returned), else rejected
        for ``reason``."""
        record = self.records.get(receipt.id)
        open_ = record is not None and record.status in ("pending", "locked")
        rival = self.view.signed_rival(receipt.id, receipt.slot)
        if rival is not None and not self._evidence(receipt):
            rival, reason = None, "the node signature is not the node's (not its registered key)"
        if rival is not None:
            self.counters.conflicts += 1
            if open_:
                record.settle("conflict", "slot conflict", rival)  # type: ignore[union-attr]
        else:
            self._count_rejected(reason)
            if open_:
                self._reject(record, reason)  # type: ignore[arg-type]
        return rival

    async def _close_unsignable(self, unsignable: list[tuple[rc.Receipt, str]]) -> None:
        """Settle receipts locked here that can never be signed (``_settle_unsignable``) and close their locks,
        as conflicts (with the rival kept as evidence) or as rejected, so no takeover proposes them again."""
        lost: list[tuple[rc.Receipt, bytes | None]] = []
        rejected: list[bytes] = []
        for receipt, reason in unsignable:
            rival = self._settle_unsignable(receipt, reason)
            if rival is not None:
                lost.append((receipt, rival))
            else:
                rejected.append(receipt.id)
        if self.locks.broken is not None:  # settled; the locks stay as they are (nothing signs here any more)
            return
        if lost:
            await self._lock_table_work(partial(self.locks.close_conflicts, lost, int(self.clock() * 1000)))
        if rejected:
            await self._lock_table_work(partial(self.locks.mark_final, rejected, CLOSED_REJECTED))

    async def _lock_own(self, batch: list[rc.Receipt], batch_id: bytes) -> list[Decision]:
        """The proposer's own lock for its batch, decided and left uncommitted (the caller holds ``_db`` and
        commits)."""
        return await self._decide(batch, self.my_id, batch_id)

    async def _durably(self, work: Callable[[], T]) -> T:
        """Commit the open lock transaction in a worker thread while ``work`` (in memory only: a signature
        share) runs in the event loop; its result once the commit is durable. A failed commit raises
        ``LockTableBroken`` and the result is dropped: nothing made from it leaves before the locks it rests on
        are durable. The commit runs to its end whatever happens meanwhile (a cancelled caller, a failing
        ``work``): a transaction left open would take every later lock into it, never durable. The caller
        holds ``_db`` and calls this right after deciding (no checkpoint in between)."""
        failed: list[LockTableBroken] = []

        async def commit() -> None:
            with trio.CancelScope(shield=True):  # entered in the task's first step, before any checkpoint
                try:
                    await self.run_blocking(self.locks.commit)
                except LockTableBroken as exc:
                    failed.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(commit)
            for _ in range(3):  # its worker thread starts at the task's second step: the fsync overlaps work
                await trio.lowlevel.checkpoint()
            result = work()
        if failed:
            raise failed[0]
        return result

    def _remember_locked(self, batch: list[rc.Receipt], decisions: list[Decision]) -> None:
        by_id = {r.id: r for r in batch}
        for d in decisions:  # durable now: remembered so a sign request needs no second trip to the table
            if d.verdict is Verdict.OK:
                self._locked[d.receipt_id] = by_id[d.receipt_id]
        while len(self._locked) > MAX_LOCKED_CACHE:
            self._locked.popitem(last=False)

    def _offer(self, peer: str, batch_id: bytes | None) -> tuple[bytes, bytes]:
        key = self.keys.key
        assert key is not None
        nonces, commitment = frost.commit(key.secret_share, self.random_bytes(32), self.random_bytes(32))
        now = trio.current_time()
        self._nonces.add(commitment, Nonce(nonces, peer, batch_id, now))
        self._let_go_of_stale_nonces(now, scan=64)
        return commitment

    def _let_go_of_stale_nonces(self, now: float, scan: int | None) -> None:
        """Forget nonces offered for a batch whose deadline passed, looking at the oldest ``scan`` (all if None).

        One offered for a batch that ended without needing it (the one-round path: the commitment of every lock
        reply, in case the fast set fell short) stayed until MAX_NONCES pushed it out, and with it, first, the
        spares of idle peers (a reviewer's reproduction). Such nonces are no use past the batch's deadline."""
        self._nonces.drop_stale(now - self.batch_deadline_s, scan)

    async def _run_batch(self, batch: list[rc.Receipt]) -> None:
        key = self.keys.key
        if key is None:
            for r in batch:
                self._retry[r.id] = trio.current_time() + NOT_YET_RETRY_S
            return
        t = key.threshold
        self.counters.batches += 1
        batch_id = self.random_bytes(BATCH_ID_SIZE)
        me = key.identifier
        t_start = time.perf_counter()
        # Our own lock decides first, then the peers are asked for what we locked: a receipt we refuse (its slot is
        # ours for another receipt) must not reach a peer's lock table, where it would take the slot from the one
        # we hold (found by dsdn nemesis: locking in parallel left rival receipts unsignable). Our decision is
        # committed while the peers lock: every share of ours is made after that commit, and the submitters hear
        # "locked" (with the optimistic document) only then.
        accepted: dict[int, set[bytes]] = {me: set()}
        refusals: dict[bytes, list[Decision]] = {r.id: [] for r in batch}
        conflicted_by: dict[bytes, set[int]] = {}  # receipt -> members holding its slot for a rival
        commitments: dict[int, tuple[bytes, bytes]] = {}
        mine: list[rc.Receipt] = []
        wires: list[bytes] = []
        peers: list[str] = []
        got_all, enough = trio.Event(), trio.Event()
        replies = 0
        answered: set[int] = set()
        fast: tuple[dict[int, tuple[bytes, bytes]], dict[str, Any]] | None = None  # the one-round path
        fast_shares: dict[int, bytes] = {}
        fast_signature: bytes | None = None
        fast_waiting: set[int] = set()
        fast_replied = trio.Event()  # every peer of the one-round set answered (or gave up)
        hedge = trio.Event()  # ask the peers outside the one-round set now (it fell short, or took too long)
        rest: list[str] = []  # those peers
        hedged_at: float | None = None  # when they were asked

        def usable() -> int:  # this member and the peers that locked something and offered a commitment for it,
            #                   proven liars left out (a peer that answered refusing everything counted too: one
            #                   fast refuser ended the wait before a slower honest signer's answer, so every batch
            #                   missed it and failed; only takeovers signed, seconds later: a reviewer's finding)
            now = trio.current_time()
            return 1 + sum(self._blamed_until.get(i, 0.0) <= now for i in answered if i in commitments)

        async def ask(peer: str) -> None:
            nonlocal replies, enough
            ident = self.identifier_of[peer]
            body: dict[str, Any] = {"batch": batch_id, "receipts": wires}
            if fast is not None and ident in fast[0]:
                body.update(fast[1])
            if len(self._spares.get(peer, ())) < SPARES:
                body["spare"] = 1
            sent = trio.current_time()
            try:
                msg = await self.net.request(peer, LOCK, body, timeout_s=self.lock_timeout_s, expect=LOCK_REPLY)
                lag = trio.current_time() - sent
                self._lag[peer] = 0.8 * self._lag.get(peer, lag) + 0.2 * lag
                self._take_lock_reply(peer, msg.body, mine, accepted, refusals, commitments, conflicted_by)
                share = msg.body.get("share") or b""
                if fast is not None and ident in fast[0]:
                    if len(share) == 32:
                        fast_shares[ident] = share
                    else:  # refused, or forgot its spares (restarted): they are of no use any more
                        hedge.set()
                        self._spares.pop(peer, None)
                        if accepted.get(ident) == {r.id for r in mine}:  # locked it all, yet no share: withheld?
                            self._penalize(peer)
                spare = msg.body.get("spare") or []
                if len(spare) == 2 and self._commitment_of(ident, spare) is not None:
                    self._spares[peer] = [*self._spares.get(peer, []), (spare[0], spare[1])][-SPARES:]
                answered.add(ident)
                if usable() >= t:
                    enough.set()
            except TimeoutError:
                log.debug("no lock reply from %s", peer)
                hedge.set()
            finally:
                replies += 1
                if replies == len(peers):
                    got_all.set()
                    enough.set()
                fast_waiting.discard(ident)
                if not fast_waiting:
                    fast_replied.set()

        async def ask_rest(delay_s: float) -> None:
            nonlocal hedged_at
            with trio.move_on_after(delay_s):
                await hedge.wait()
            hedged_at = trio.current_time()
            for p in rest:
                nursery.start_soon(ask, p)

        # every peer's answer, or t answers and a short grace for the rest: a silent member (crashed, paused,
        # or withholding) must not cost every batch the whole lock timeout
        async with trio.open_nursery() as nursery:
            async with self._db:
                with trio.CancelScope(shield=True):  # decided and committed together (nothing in between waits)
                    decisions = await self._lock_own(batch, batch_id)
                    try:
                        self._take_own_decisions(decisions, accepted[me], refusals)
                        mine = [r for r in batch if r.id in accepted[me]]
                        if mine:
                            commitments[me] = self._offer(self.my_id, batch_id)
                            wires = [r.to_wire() for r in mine]
                            peers = [p for p in self.net.up_peers() if p in self.identifier_of]
                            fast = self._fast_plan(key, peers, batch_id)
                            fast_waiting = set(fast[0]) - {me} if fast is not None else set()
                            first = [p for p in peers if self.identifier_of[p] in fast_waiting] or peers
                            for p in first:
                                nursery.start_soon(ask, p)
                            rest = [p for p in peers if p not in first]
                            if rest:
                                nursery.start_soon(ask_rest, self._hedge_s(first))
                    finally:
                        try:  # durable before any share of ours leaves (ours is made meanwhile)
                            own_share = await self._durably(partial(self._own_fast_share, batch_id, fast, mine))
                        except LockTableBroken:
                            self._forget_unlocked(decisions)
                            raise
            self._remember_locked(batch, decisions)
            self._acknowledge(decisions)
            t_locked = time.perf_counter()
            if not mine:
                return
            if peers:
                deadline = trio.current_time() + self.lock_timeout_s
                with trio.move_on_at(deadline):
                    await enough.wait()
                if fast is not None:
                    with trio.move_on_after(self.lock_grace_s):
                        await fast_replied.wait()
                if fast is not None and len(fast_shares) == t - 1:
                    fast_signature = self._fast_sign(key, fast, fast_shares, own_share, mine)
                if fast_signature is None:
                    hedge.set()  # the one-round set fell short: every peer's answer counts now
                    if fast is not None and len(fast_shares) == t - 1 and usable() < t and not got_all.is_set():
                        enough = trio.Event()  # a liar just named: wait for other answers to make up for it
                        with trio.move_on_at(deadline):
                            await enough.wait()
                if fast_signature is None:
                    until = trio.current_time() + self.lock_grace_s
                    if hedged_at is not None:  # peers asked late get their usual round trip, and the grace
                        until = max(until, hedged_at + self._hedge_s(rest) + self.lock_grace_s)
                    with trio.move_on_at(min(until, deadline)):
                        await got_all.wait()
            nursery.cancel_scope.cancel()
        if fast is not None:  # a one-round signer that never answered goes to the back of the line, spares gone
            for ident in set(fast[0]) - answered - {me}:
                self._spares.pop(self.member_of[ident], None)
                self._penalize(self.member_of[ident])
        t_peers = time.perf_counter()
        if fast is not None and fast_signature is not None:
            self.counters.one_round += 1
            await self._signed(key, mine, fast_signature, tuple(sorted(fast[0])), (t_start, t_locked, t_peers))
            return
        candidates = [r for r in batch if r.id in accepted[me]]
        if not candidates:
            return
        ids = [r.id for r in candidates]
        now = trio.current_time()
        accepted = {i: ok for i, ok in accepted.items()  # no commitment: cannot sign; proven liars: will not
                    if i in commitments and i in key.verifying_shares
                    and (i == me or self._blamed_until.get(i, 0.0) <= now)}
        chosen, signer_set = self._choose(ids, accepted, t, now)
        closed = self._settle_refused(candidates, set(chosen), accepted, refusals, t, conflicted_by)
        lost = [(r, named_rival(refusals[r.id])) for r in candidates if closed.get(r.id) == CLOSED_CONFLICT]
        rejected = [rid for rid, why in closed.items() if why == CLOSED_REJECTED]
        if lost:
            async with self._db:
                await self.run_blocking(partial(self.locks.close_conflicts, lost, int(self.clock() * 1000)))
        if rejected:
            async with self._db:
                await self.run_blocking(partial(self.locks.mark_final, rejected, CLOSED_REJECTED))
        if not chosen:
            self.counters.batches_failed += 1
            log.info("batch of %d receipt(s) not signed: no receipt accepted by %d signers that can sign (%s)",
                     len(candidates), t, self._why_unsigned(candidates, accepted, refusals, answered | {me}))
            return
        by_id = {r.id: r for r in candidates}
        final = [by_id[i] for i in chosen]
        signature, signers = await self._sign(key, batch_id, final, signer_set, commitments)
        if signature is None:
            self.counters.batches_failed += 1
            for r in final:  # still locked everywhere: try again (a takeover would do it too)
                self._retry[r.id] = trio.current_time() + NOT_YET_RETRY_S
            return
        await self._signed(key, final, signature, signers, (t_start, t_locked, t_peers))

    def _choose(self, ids: list[bytes], accepted: dict[int, set[bytes]], t: int,
                now: float) -> tuple[list[bytes], set[int]]:
        """``choose_batch``'s receipts chosen without the signers that let a share request go unanswered within
        TIMED_OUT_S, when the others locked enough to sign some of the batch: a signer that withholds its shares
        (which proves nothing: it is never blamed) and a receipt only it helped reach t locks made every receipt
        batched with that one wait for a signer set with the withholder in it, batch after batch (a reviewer's
        reproduction). The receipt left out is tried again on its own. The signers are all that locked the chosen
        receipts, the quiet ones too (asked last): ROAST needs every spare when another one refuses."""
        quiet = {i for i in accepted if self._timed_out.get(self.member_of.get(i, ""), -math.inf) > now - TIMED_OUT_S}
        if quiet:
            chosen, _ = choose_batch(ids, {i: ok for i, ok in accepted.items() if i not in quiet}, t)
            if chosen:
                return chosen, {i for i, ok in accepted.items() if ok.issuperset(chosen)}
        return choose_batch(ids, accepted, t)

    def _why_unsigned(self, candidates: list[rc.Receipt], accepted: dict[int, set[bytes]],
                      refusals: dict[bytes, list[Decision]], answered: set[int]) -> str:
        """For the log: who accepted how many of a batch's receipts, who refused them and why, who never
        answered."""
        usable = ", ".join(f"{self.member_of.get(i, i)} {len(ok)}" for i, ok in sorted(accepted.items()))
        reasons: dict[str, int] = {}
        for r in candidates:
            for d in refusals[r.id]:
                why = f"{d.verdict.name.lower()} {d.reason}".strip()
                reasons[why] = reasons.get(why, 0) + 1
        silent = sorted(self.member_of[i] for i in self.member_of if i not in answered)
        return (f"accepted, with a commitment and not blamed: {usable or 'none'}; refusals: "
                f"{'; '.join(f'{why} ×{n}' for why, n in reasons.items()) or 'none'}; no answer from "
                f"{', '.join(silent) or 'none'}")

    async def _signed(self, key: frost.KeyShare, final: list[rc.Receipt], signature: bytes, signers: tuple[int, ...],
                      times: tuple[float, float, float]) -> None:
        t_start, t_locked, t_peers = times
        t_signed = time.perf_counter()
        self._observe("batch_size", len(final))
        self._observe("sign_seconds", t_signed - t_peers)
        log.debug("batch of %d signed: own lock %.1f ms, all locks %.1f ms, signing %.1f ms", len(final),
                  (t_locked - t_start) * 1000, (t_peers - t_start) * 1000, (t_signed - t_peers) * 1000)
        # Announced and published in a task of its own: the batch's in-flight slot is free once it is signed (a
        # proposer whose peers could not keep its batches stalled with both slots held, and its housekeeping
        # with them: a reviewer's run); at most MAX_FINISHING at once
        await self._finishing.acquire()
        self._announcing.update(r.id for r in final)
        assert self._nursery is not None
        self._nursery.start_soon(self._finish_released, key, final, signature, signers)

    async def _finish_released(self, key: frost.KeyShare, final: list[rc.Receipt], signature: bytes,
                               signers: tuple[int, ...]) -> None:
        try:
            await self._finish(key, final, signature, signers)
        finally:
            self._announcing.difference_update(r.id for r in final)
            self._finishing.release()

    def _hedge_s(self, asked: list[str]) -> float:
        """How long the one-round set may take before the other peers are asked too: a few of its slowest
        member's usual lock round trips, at least the lock grace, at most half the lock timeout."""
        slowest = max(self._lag.get(p, self.lock_grace_s) for p in asked)
        return min(max(HEDGE_LAGS * slowest, self.lock_grace_s), self.lock_timeout_s / 2)

    def _fast_plan(self, key: frost.KeyShare, peers: list[str], batch_id: bytes
                   ) -> tuple[dict[int, tuple[bytes, bytes]], dict[str, Any]] | None:
        """A signer set for the one-round path: this member (a fresh commitment) and the t − 1 quickest peers
        holding a spare commitment for us, holding a share of the key (not a member a DKG left out: each attempt with
        one failed), not proven liars; None when there are not enough."""
        now = trio.current_time()
        ready = sorted((p for p in peers if self._spares.get(p) and self.identifier_of[p] in key.verifying_shares
                        and self._blamed_until.get(self.identifier_of[p], 0.0) <= now),
                       key=lambda p: self._lag.get(p, 1.0))
        if len(ready) < key.threshold - 1:
            return None
        chosen = {self.identifier_of[p]: self._spares[p].pop(0) for p in ready[:key.threshold - 1]}
        chosen[key.identifier] = self._offer(self.my_id, batch_id)
        order = sorted(chosen)
        return chosen, {"fast_signers": bytes(order), "fast_hiding": [chosen[i][0] for i in order],
                        "fast_binding": [chosen[i][1] for i in order]}

    def _own_fast_share(self, batch_id: bytes, fast: tuple[dict[int, tuple[bytes, bytes]], dict[str, Any]] | None,
                        receipts: list[rc.Receipt]) -> bytes:
        """Our share for the one-round path (our lock is durable by now); empty without one."""
        if fast is None:
            return b""
        fields = fast[1]
        return self._fast_share(self.my_id, {"batch": batch_id, "signers": fields["fast_signers"],
                                             "hiding": fields["fast_hiding"], "binding": fields["fast_binding"]},
                                receipts)

    def _fast_sign(self, key: frost.KeyShare, fast: tuple[dict[int, tuple[bytes, bytes]], dict[str, Any]],
                   shares: dict[int, bytes], own: bytes, receipts: list[rc.Receipt]) -> bytes | None:
        """Aggregate the peers' shares with ours and verify; a bad share names its signer (left out for
        BLAME_S)."""
        chosen = fast[0]
        if len(own) != 32:
            return None
        message = rc.batch_message(key.group_public_key, merkle.root([r.to_bytes() for r in receipts]),
                                   len(receipts))
        try:
            return frost.aggregate_or_blame(chosen, message, key.group_public_key, {**shares, key.identifier: own},
                                            key.verifying_shares)
        except frost.InvalidShareError as exc:
            for culprit in exc.culprits:
                self._blame(culprit)
        except frost.FrostError as exc:
            log.warning("one-round signing failed: %s", exc)
        return None

    def _penalize(self, peer: str) -> None:
        """A peer that let a share request go unanswered is asked last for a while (its lag decays with every
        lock reply it sends)."""
        self._lag[peer] = self._lag.get(peer, 0.0) + 1.0

    def _blame(self, culprit: int, what: str = "an invalid signature share") -> None:
        self._blamed_until[culprit] = trio.current_time() + BLAME_S
        name = self.member_of.get(culprit, str(culprit))
        self.counters.blamed[name] = self.counters.blamed.get(name, 0) + 1
        self._spares.pop(name, None)
        log.warning("signer %s sent %s: excluded from this batch", name, what)

    def _commitment_of(self, ident: int, pair: list[bytes]) -> tuple[bytes, bytes] | None:
        """A peer's nonce commitment (a pair of points; none: empty), each checked as a group element as it arrives.
        An invalid one (the identity, say) proves its sender lying: blamed, and not used. Taken unchecked, a liar's
        spare put into the one-round signer set made every honest signer named beside it refuse (``frost.prepare``
        rejects the set), and they were the ones penalised, while the one-round path never ran again and the liar
        was never named; in a session, the honest refusals took the honest signers out of the batch (a reviewer's
        reproduction)."""
        if len(pair) != 2:
            return None
        if not (group.is_valid_element(pair[0]) and group.is_valid_element(pair[1])):
            if self._blamed_until.get(ident, 0.0) <= trio.current_time():  # (once: a reply carries two pairs)
                self._blame(ident, "an invalid nonce commitment")
            return None
        return pair[0], pair[1]

    def _acknowledge(self, decisions: list[Decision]) -> None:
        """The receipts locked here durably (the decisions committed): "locked", with the optimistic document; and
        the rivals of those locks: "conflict" (answered before the commit, a rival's 409 named a lock the failed
        commit then rolled back, and stayed so: a reviewer's reproduction)."""
        for d in decisions:
            record = self.records.get(d.receipt_id)
            if record is None or record.status != "pending":
                continue
            if d.verdict is Verdict.OK:
                record.optimistic = self._optimistic(d.receipt_id)
                record.settle("locked")
            elif d.verdict is Verdict.CONFLICT:
                self.counters.conflicts += 1
                record.settle("conflict", "slot conflict", d.conflicting_id)

    def _forget_unlocked(self, decisions: list[Decision]) -> None:
        """The own lock's commit failed: the receipts it was to lock are not locked here. Their records go, so a
        submitter waiting for the lock answers 503 (not locked durably) and a resubmission is judged again (503
        while the lock table is broken)."""
        for d in decisions:
            record = self.records.get(d.receipt_id)
            if d.verdict in (Verdict.OK, Verdict.CONFLICT) and record is not None and record.status == "pending":
                self._drop(d.receipt_id)
                self._records_version += 1
                record.abandon()

    def _take_own_decisions(self, decisions: list[Decision], mine: set[bytes],
                            refusals: dict[bytes, list[Decision]]) -> None:
        for d in decisions:
            record = self.records.get(d.receipt_id)
            if d.verdict is Verdict.OK:
                mine.add(d.receipt_id)
                continue
            refusals[d.receipt_id].append(d)
            if record is None:
                continue
            if d.verdict is Verdict.CONFLICT:
                pass  # settled once the lock it conflicts with is durable (``_acknowledge``)
            elif d.verdict is Verdict.INVALID:
                self._count_rejected(d.reason)
                self._reject(record, d.reason)
            else:
                self._retry[d.receipt_id] = trio.current_time() + NOT_YET_RETRY_S

    def _take_lock_reply(self, peer: str, body: dict[str, Any], candidates: list[rc.Receipt],
                         accepted: dict[int, set[bytes]], refusals: dict[bytes, list[Decision]],
                         commitments: dict[int, tuple[bytes, bytes]], conflicted_by: dict[bytes, set[int]]) -> None:
        verdicts = body["verdicts"]
        if len(verdicts) != len(candidates):
            log.warning("malformed lock reply from %s: %d verdicts for %d receipts", peer, len(verdicts),
                        len(candidates))
            return
        conflicts = {int.from_bytes(c[:4], "big"): c[4:] for c in body["conflicts"] if len(c) == 36}
        reasons = body["reasons"]
        ident = self.identifier_of[peer]
        ok: set[bytes] = set()
        for i, (r, v) in enumerate(zip(candidates, verdicts, strict=True)):
            try:
                verdict = Verdict(v)
            except ValueError:
                verdict = Verdict.INVALID
            if verdict is Verdict.OK:
                ok.add(r.id)
            else:
                reason = reasons[i] if i < len(reasons) else ""
                refusals[r.id].append(Decision(r.id, verdict, reason, conflicts.get(i)))
                if verdict is Verdict.CONFLICT:
                    conflicted_by.setdefault(r.id, set()).add(ident)
        accepted[ident] = ok
        commitment = self._commitment_of(ident, body["commitment"])
        if commitment is not None and ok:
            commitments[ident] = commitment

    def _settle_refused(self, candidates: list[rc.Receipt], chosen: set[bytes], accepted: dict[int, set[bytes]],
                        refusals: dict[bytes, list[Decision]], t: int,
                        conflicted_by: dict[bytes, set[int]]) -> dict[bytes, int]:
        """Settle the receipts left out of the batch; return those that can never be signed, and why
        (CLOSED_CONFLICT or CLOSED_REJECTED)."""
        n = len(self.members)
        closed: dict[bytes, int] = {}
        for r in candidates:
            if r.id in chosen:
                continue
            record = self.records.get(r.id)
            refused = refusals[r.id]
            conflicts = [d for d in refused if d.verdict is Verdict.CONFLICT]
            invalid = [d for d in refused if d.verdict is Verdict.INVALID]
            # can never be signed (more than n - t members refuse it for good, for either reason: counted apart,
            # a receipt refused by some as a conflict and by others as invalid was proposed again every half second
            # until its epoch left the window): no takeover of our lock
            never = len(conflicts) + len(invalid) > n - t
            if never:
                closed[r.id] = CLOSED_CONFLICT if conflicts else CLOSED_REJECTED
            # members that hold the slot for a rival, and proven liars, will not sign this one: with fewer than t
            # others left it cannot be signed now (its lock stays open: a takeover may still sign it later)
            blocked = conflicted_by.get(r.id, set()) | {i for i, until in self._blamed_until.items()
                                                         if until > trio.current_time()}
            if (never and conflicts) or (conflicts and n - len(blocked) < t):
                self.counters.conflicts += 1
                if record is not None:
                    record.settle("conflict", "slot conflict", named_rival(conflicts))
            elif never:
                self._count_rejected(invalid[0].reason)
                if record is not None:
                    self._reject(record, invalid[0].reason)
            else:  # not yet valid elsewhere, or too few answers: retry later
                self._retry[r.id] = trio.current_time() + NOT_YET_RETRY_S
                if record is None:
                    self._record(r)
        return closed

    async def _sign(self, key: frost.KeyShare, batch_id: bytes, final: list[rc.Receipt], signer_set: set[int],
                    commitments: dict[int, tuple[bytes, bytes]]) -> tuple[bytes | None, tuple[int, ...]]:
        root = merkle.root([r.to_bytes() for r in final])
        message = rc.batch_message(key.group_public_key, root, len(final))
        tracker = RoastTracker(key.threshold, signer_set, message, key.group_public_key, key.verifying_shares,
                               eager=False)
        ids_blob = b"".join(r.id for r in final)
        done = trio.Event()

        def handle(out: Outcome) -> None:
            for culprit in out.blamed:
                self._blame(culprit)
            if out.signature is not None or tracker.stalled():
                done.set()
            for session in out.start:
                self.counters.sessions += 1
                log.debug("signing session %d with %s", session.id,
                          sorted(self.member_of.get(i, str(i)) for i in session.commitments))
                for ident in session.commitments:
                    nursery.start_soon(ask, ident, session)

        async def ask(ident: int, session: Session) -> None:
            body = {"batch": batch_id, "ids": ids_blob, "session": session.id,
                    "signers": bytes(sorted(session.commitments)),
                    "hiding": [session.commitments[i][0] for i in sorted(session.commitments)],
                    "binding": [session.commitments[i][1] for i in sorted(session.commitments)]}
            if ident == key.identifier:
                reply = self._sign_share(self.my_id, body, final)
            else:
                peer = self.member_of[ident]
                try:
                    msg = await self.net.request(peer, SIGN, body, timeout_s=self.sign_timeout_s, expect=SIGN_REPLY)
                    reply = msg.body
                except TimeoutError:
                    self._penalize(peer)
                    self._timed_out[peer] = trio.current_time()
                    handle(tracker.forget(ident))
                    return
            share = reply["share"] if len(reply["share"]) == 32 else None
            commitment = self._commitment_of(ident, reply["commitment"])
            if share is None:
                # out of R until the batch ends: an honest refusal carries no commitment, and a liar's refusals
                # with fresh commitments put it in session after session (44 for one batch, where ROAST's bound
                # is n - t + 1: a reviewer's reproduction)
                handle(tracker.forget(ident))
                if reply["error"]:
                    log.info("%s refused to sign: %s", self.member_of.get(ident), reply["error"])
                return
            handle(tracker.receive(ident, session.id, share, commitment))  # type: ignore[arg-type]

        async with trio.open_nursery() as nursery:
            # the first session takes the first t ready signers: the responsive ones first, a member that lately
            # let a share request time out (crashed, paused, withholding) last
            for ident in sorted(commitments, key=lambda i: 0.0 if i == key.identifier
                                else self._lag.get(self.member_of[i], 1.0)):
                if ident in signer_set:
                    handle(tracker.add_commitment(ident, commitments[ident]))
            with trio.move_on_after(self.batch_deadline_s):
                while not done.is_set():  # patience: a new session only when the live ones are slow
                    with trio.move_on_after(self.sign_patience_s):
                        await done.wait()
                    if not done.is_set():
                        handle(tracker.kick())
            nursery.cancel_scope.cancel()
        if tracker.signature is None:
            log.warning("batch of %d receipt(s) not signed: %s", len(final),
                        "too many signers blamed" if tracker.stalled() else "no t signers answered in time")
            return None, ()
        return tracker.signature, tracker.signers

    def _optimistic(self, receipt_id: bytes) -> dict[str, Any]:
        signature = self.identity.sign(rc.optimistic_message(receipt_id)).signature
        return {"coordinator": self.my_id, "public_key": bytes(self.identity.verify_key).hex(),
                "signature": signature.hex()}

    async def _finish(self, key: frost.KeyShare, final: list[rc.Receipt], signature: bytes,
                      signers: tuple[int, ...]) -> None:
        """The signature exists. The peers hear of the batch first, until n − t of them keep it on disk (one of
        them outlives this member's loss, disk and all, within the fault budget, and publishes it); then it goes
        to the outbox (DA) and the state; only then are the receipts final for clients. A member that dies
        before that leaves its locks open at the peers that did not keep the batch: a takeover signs it again."""
        raws = [r.to_bytes() for r in final]
        root, paths = merkle.all_paths(raws)
        names = sorted(self.member_of[i] for i in signers)
        fields = {"group_key": key.group_public_key.hex(), "root": root.hex(), "tree_size": len(final),
                  "signature": signature.hex(), "signers": ",".join(names),
                  "receipts": msgpack.packb([[raw, r.node_signature] for raw, r in zip(raws, final, strict=True)],
                                            use_bin_type=True)}
        await self._announce(fields, need=len(self.members) - key.threshold)
        await self.view.publish_batch(fields)
        for i, r in enumerate(final):
            record = self.records.get(r.id)
            if record is not None:
                record.document = rc.document(r, root, len(final), i, paths[i], signature, key.group_public_key,
                                              names)
        self._settle_final(final)
        self._closing.extend(r.id for r in final)

    async def _announce(self, fields: dict[str, Any], need: int, rounds: int | None = None) -> None:
        """Send a signed batch (``rc.final``) to every peer until ``need`` of them answer that they keep it on
        disk; the others are asked again, with backoff, up to ``rounds`` times (None: until enough answered).
        Requests are all sent before any answer is awaited: peers beyond ``need`` get it too."""
        kept: set[str] = set()
        peers = [m for m in self.members if m != self.my_id]
        delay = self.lock_timeout_s
        attempt = 0
        while True:
            attempt += 1
            async with trio.open_nursery() as nursery:
                async def ask(peer: str, timeout_s: float) -> None:
                    try:
                        msg = await self.net.request(peer, FINAL, fields, timeout_s=timeout_s, expect=FINAL_ACK)
                    except TimeoutError:
                        return
                    if msg.body["kept"]:
                        kept.add(peer)
                        if len(kept) >= need:
                            nursery.cancel_scope.cancel()

                for peer in peers:
                    if peer not in kept:
                        nursery.start_soon(ask, peer, delay)
            if len(kept) >= need or (rounds is not None and attempt >= rounds):
                return
            log.warning("a signed batch of %d receipt(s) is kept by %d peer(s) of the %d needed: announcing it "
                        "again in %.1f s", fields["tree_size"], len(kept), need, delay)
            await trio.sleep(delay)
            delay = min(delay * 2, ANNOUNCE_BACKOFF_MAX_S)

    def _settle_final(self, final: list[rc.Receipt]) -> None:
        now = trio.current_time()
        for r in final:
            record = self.records.get(r.id)
            if record is not None and record.status != "final":
                self.counters.final += 1
                self.latencies.append(now - record.first_seen)
                self._observe("final_seconds", now - record.first_seen)
                record.settle("final")
            self._retry.pop(r.id, None)
        del self.latencies[:-4096]

    # ---- signer ------------------------------------------------------------------------------------

    async def _on_lock(self, peer: str, body: dict[str, Any]) -> dict[str, Any]:
        receipts: list[rc.Receipt | None] = []
        for w in body["receipts"]:
            try:
                receipts.append(rc.Receipt.from_wire(w))
            except rc.ReceiptError:
                receipts.append(None)
        if not rc.fits(map(len, body["receipts"])):
            # signed, it could not be published (a lying proposer's, or one of an older version): nothing locked
            return {"verdicts": bytes([Verdict.INVALID]) * len(receipts), "conflicts": [],
                    "reasons": [f"batch over {rc.MAX_BATCH_BYTES} bytes"] * len(receipts), "commitment": [],
                    "share": b"", "spare": []}
        valid = [r for r in receipts if r is not None]
        decisions: dict[bytes, Decision] = {}
        share = b""
        if valid and self.locks.broken is None:
            try:
                async with self._db:
                    decided = await self._decide(valid, peer, body["batch"])
                    for d in decided:
                        decisions.setdefault(d.receipt_id, d)
                    share = await self._durably(partial(self._lock_share, peer, body, len(receipts), valid,
                                                        decisions))
                self._remember_locked(valid, decided)
                self.counters.shares_released += bool(share)  # counted once it may leave (the lock is durable)
            except LockTableBroken as exc:
                log.error("refusing to lock: %s", exc)
                decisions, share = {}, b""
        verdicts, conflicts, reasons = bytearray(), [], []
        for i, r in enumerate(receipts):
            d = decisions.get(r.id) if r is not None else None
            if d is None:
                verdicts.append(Verdict.INVALID if r is None or self.locks.broken is None else Verdict.NOT_YET)
                reasons.append("malformed receipt" if r is None else (self.locks.broken or "")[:200])
                continue
            verdicts.append(d.verdict)
            reasons.append(d.reason[:200])
            if d.conflicting_id is not None:
                conflicts.append(i.to_bytes(4, "big") + d.conflicting_id)
        commitment: list[bytes] = []
        if self.keys.key is not None and any(v == Verdict.OK for v in verdicts):
            commitment = list(self._offer(peer, body["batch"]))
        # a spare only with something locked: a request locking nothing earns no nonce (NonceTable bounds the rest)
        spare = list(self._offer(peer, None)) if body.get("spare") and commitment else []
        return {"verdicts": bytes(verdicts), "conflicts": conflicts, "reasons": reasons, "commitment": commitment,
                "share": share, "spare": spare}

    def _lock_share(self, peer: str, body: dict[str, Any], count: int, valid: list[rc.Receipt],
                    decisions: dict[bytes, Decision]) -> bytes:
        """The one-round share of an ``rc.lock`` that names us in its signer set, when every one of its ``count``
        receipts is locked here (decided; the caller releases it only once that is durable); empty otherwise."""
        if body.get("fast_signers") is None or len(valid) != count or len({r.id for r in valid}) != count or any(
                (d := decisions.get(r.id)) is None or d.verdict is not Verdict.OK for r in valid):
            return b""
        return self._fast_share(peer, {"batch": body["batch"], "signers": body["fast_signers"],
                                       "hiding": body.get("fast_hiding") or [],
                                       "binding": body.get("fast_binding") or []}, valid)

    def _fast_share(self, peer: str, body: dict[str, Any], held: list[rc.Receipt]) -> bytes:
        """A share for the one-round path (the same checks as an ``rc.sign``); empty when refused."""
        reply = self._sign_share(peer, body, held)
        if len(reply["commitment"]) == 2:  # the next-session commitment _sign_share offers: not needed here
            self._nonces.pop(tuple(reply["commitment"]))  # type: ignore[arg-type]
        return bytes(reply["share"]) if len(reply["share"]) == 32 else b""

    async def _on_sign(self, peer: str, body: dict[str, Any]) -> dict[str, Any]:
        ids = body["ids"]
        if not ids or len(ids) % 32:
            return self._refuse("malformed receipt id list")
        receipt_ids = [ids[i:i + 32] for i in range(0, len(ids), 32)]
        if len(set(receipt_ids)) != len(receipt_ids):  # a lying proposer minted batches without end from one
            return self._refuse("a receipt appears twice in the batch")  # locked receipt (a reviewer's find)
        if self.locks.broken is not None:
            return self._refuse(self.locks.broken)
        held: list[rc.Receipt] | None = [self._locked[r] for r in receipt_ids if r in self._locked]
        if held is None or len(held) != len(receipt_ids):
            try:
                async with self._db:
                    held = await self.run_blocking(partial(self.locks.holds, receipt_ids))
            except LockTableBroken as exc:
                return self._refuse(str(exc))
        if held is None:
            return self._refuse("not every receipt of the batch is locked here to that receipt")
        if not rc.fits(len(r.to_bytes()) + 64 for r in held):
            return self._refuse(f"batch over {rc.MAX_BATCH_BYTES} bytes")
        reply = self._sign_share(peer, body, held)
        if reply["share"]:
            self.counters.shares_released += 1
        return reply

    def _refuse(self, error: str) -> dict[str, Any]:
        self.counters.sign_refused += 1
        return {"share": b"", "commitment": [], "error": error[:200]}

    def _sign_share(self, peer: str, body: dict[str, Any], held: list[rc.Receipt]) -> dict[str, Any]:
        """Release a share for a batch every receipt of which is locked here (checked by the caller)."""
        key = self.keys.key
        if key is None:
            return self._refuse("no key share")
        signers = list(body["signers"])
        if not (len(signers) == len(body["hiding"]) == len(body["binding"])) or key.identifier not in signers:
            return self._refuse("malformed commitment list")
        commitments = {i: (d, e) for i, d, e in zip(signers, body["hiding"], body["binding"], strict=True)}
        mine = commitments[key.identifier]
        nonce = self._nonces.get(mine)
        if nonce is None or nonce.peer != peer or nonce.batch not in (None, body["batch"]):
            return self._refuse("unknown or already used commitment")
        self._nonces.pop(mine)  # used at most once, whatever happens next
        root = merkle.root([r.to_bytes() for r in held])
        message = rc.batch_message(key.group_public_key, root, len(held))
        try:
            share = frost.sign(key.identifier, key.secret_share, key.group_public_key, nonce.nonces, message,
                               commitments)
        except frost.FrostError as exc:
            return self._refuse(f"cannot sign: {exc}")
        return {"share": share, "commitment": list(self._offer(peer, body["batch"])), "error": ""}

    async def _on_final(self, peer: str, body: dict[str, Any]) -> dict[str, Any]:
        """A signed batch a member announced: verified, heard (served until the state holds it), kept on disk,
        then acknowledged (``kept``: 1 once it is durable here; 0 when it does not verify or the lock table
        cannot keep it)."""
        heard = self.view.check_batch(body)
        if heard is None:
            log.warning("ignored an invalid receipt batch from %s", peer)
            return {"kept": 0}
        if not self.view.in_state(heard) and not heard.kept and self.view.covered(heard.ids):
            # every receipt of it is kept here already, signed in another batch: acknowledged, not kept again (a
            # liar re-signing the same few receipts in every order and subset had each batch kept, on disk and in
            # memory, without bound: a reviewer's reproduction); their documents are the other batch's
            self._settle_final([self.records[rid].receipt for rid in heard.ids if rid in self.records])
            return {"kept": 1}
        if not self.view.in_state(heard):  # (one the state holds, announced again, is kept: nothing to write)
            if not heard.kept:  # on disk before it is served or answered: "kept" means durable here
                packed = msgpack.packb(heard.fields, use_bin_type=True)
                try:
                    async with self._db:
                        await self.run_blocking(partial(self.locks.keep_heard, bytes.fromhex(heard.fields["root"]),
                                                        peer, packed, int(self.clock() * 1000)))
                except LockTableBroken as exc:
                    log.error("receipt signing stopped: %s", exc)
                    return {"kept": 0}
            self._serve(heard, peer)
        self._settle_final([self.records[rid].receipt for rid in heard.ids if rid in self.records])
        return {"kept": 1}

    def _serve(self, heard: Heard, origin: str) -> None:
        new = not heard.origins
        served = self.view.serve(heard, origin)
        served.kept = True
        if new:
            served.flowing_mark = self._flowing_s
