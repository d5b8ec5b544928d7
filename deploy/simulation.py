"""A cluster of receipt engines in one trio run, for simulation (``dsdn simulate``) and the simulation tests.

Each member runs the real ReceiptService, LockStore, State and StateLedgerView, and the real DA pipeline of a
coordinator: its events go to its durable Outbox (SQLite), its Publisher posts them as blobs signed by its
identity to a shared in-memory DA (deploy/sim_da.py: outages and inclusion lag), and its Consumer follows that DA
and verifies every blob's signer. Members are linked by a seeded ``FaultNet`` (protocol/simnet plus one-way cuts
and slow members). Each member has its own files, so a crash keeps exactly what was made durable: a crash loses
the member's memory (its State included) and a restart rebuilds it as a coordinator does without a snapshot —
its outbox replayed, then DA read from the start. Every blocking call runs inline through the member's
``run_blocking``, which refuses once the member crashed (nothing reaches its files after the crash). Everything
waits with ``trio.sleep``, so it runs in virtual time under ``MockClock``. Byzantine
behaviours plug in per member (bad or withheld shares, signing anything, equivocation, replays, forged
replies); ``observe`` hooks record what safety checkers need (every share released, every signature made).

Keys: by default a seeded trusted dealer deals them (cheap, replayable). With ``dkg=True`` every member instead
runs the real DkgService (consensus/dkg_service.py) on the same simulated links, with its key store, journal and
certificate in the member's directory (a crash keeps what was made durable, a restart resumes from it); the
receipt engine reads its key from the DKG service, as a real coordinator does, and refuses work until the DKG
completes. The DKG's session ids come from a seeded RNG, so a run replays exactly.
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import nacl.signing
import trio

from consensus import dkg_service, frost, keystore
from consensus import receipts as rc
from consensus.dkg import DkgParticipant, assign_identifiers, default_threshold
from consensus.dkg_messages import Confirm
from consensus.dkg_service import DkgService
from consensus.group import L, serialize_scalar
from consensus.lockstore import LockStore
from consensus.receipt_service import ReceiptService, register
from consensus.slots import Decision, Verdict
from deploy.adversary import SIGNER_BEHAVIOURS, Adversary, GarblingDealer, corrupt_signer, equivocate_batches
from deploy.receipt_view import StateLedgerView
from deploy.sim_da import MemoryDA
from node import events as ev
from node import merkle
from node.backoff import Backoff
from node.blob import decode_blob, encode_blob
from node.consumer import Consumer
from node.da.base import DAUnavailable
from node.outbox import Outbox
from node.publisher import Publisher
from node.state import State
from protocol.envelope import Registry
from protocol.simnet import SimNetwork, SimNode

NOW = 1_800_000_000.0 + 1800  # the wall clock every member reads at the start (mid-epoch), in seconds
EPOCH = int(NOW // 3600) + 1


BLOB_BYTES = 64 * 1024  # what a simulated member's publisher puts in one blob
PUBLISH_INTERVAL_S = 0.05
POLL_S, IDLE_POLL_S = 0.05, 0.4  # how often a member's consumer reads the DA (busy, idle)


async def inline(fn: Callable[..., Any], *args: Any) -> Any:
    """Blocking calls run inline: a thread would let MockClock's virtual time jump while it runs."""
    return fn(*args)


class MemberCrashed(Exception):
    """A crashed member's task tried to reach its files (only a shielded one can: the others are cancelled)."""


class _SeededOs:
    """``os`` as consensus.dkg_service sees it while a simulated member starts a session: ``urandom`` (the session
    id) draws from a seeded RNG; everything else is the real module."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def urandom(self, size: int) -> bytes:
        return self.rng.randbytes(size)

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)


class SimDkgService(DkgService):
    """The real DKG service; only its session ids are seeded (``start`` is synchronous: nothing else runs while the
    module's ``os`` is swapped). An honest member's own confirmation is checked as it leaves: its key share must be
    in the key store on disk by then (``Observed.undurable``)."""

    session_rng: random.Random
    undurable: list[str] | None = None  # where a confirmation sent ahead of its stored share is noted

    def _send(self, s: Any, out: list[Any], only: str | None = None) -> None:
        share = s.participant.key_share
        if self.undurable is not None and any(isinstance(o.message, Confirm) and o.message.sender == self.me
                                              for o in out):
            stored = None
            for path in (self._pending_path(s.id), self.keystore_path):
                try:
                    stored = keystore.load(path, identity=self.identity, passphrase=self.passphrase)
                except keystore.KeystoreError:
                    continue
                if share is not None and stored.secret_share == share.secret_share:
                    break
                stored = None
            if stored is None:
                self.undurable.append(f"{self.net.my_id} sent its DKG confirmation of session {s.id.hex()[:12]} "
                                      f"before its key share was stored")
        super()._send(s, out, only)

    def start(self, threshold: int | None = None, leave_out: list[str] | None = None) -> bytes:
        saved = dkg_service.os
        dkg_service.os = _SeededOs(self.session_rng)  # type: ignore[assignment]
        try:
            return super().start(threshold, leave_out)
        finally:
            dkg_service.os = saved


class _Incarnation(SimNode):
    """A member's links for one run of it: once it crashed (another incarnation replaced it, or none is
    registered), nothing it still tries to send leaves — a handler that was running when the crash came and goes
    on until its next checkpoint, or a request handler running in the network's nursery, is a dead process."""

    def send(self, peer_id: str, type_: str, body: dict[str, Any], *, id_: int | None = None,
             re: int | None = None) -> bool:
        if self.net.nodes.get(self.my_id) is not self:
            return False
        return super().send(peer_id, type_, body, id_=id_, re=re)


class FaultNet(SimNetwork):
    """The simulated network plus one-way cuts (``cut(a, b)``: a cannot reach b) and slow members."""

    def __init__(self, registry: Registry, seed: int, **options: Any) -> None:
        super().__init__(registry, seed, **options)
        self.cuts: set[tuple[str, str]] = set()
        self.slow: dict[str, float] = {}  # member -> extra delay on every message to or from it

    def add(self, node_id: str) -> SimNode:
        node = self.nodes[node_id] = _Incarnation(self, node_id)
        node.dispatcher.nursery = self._nursery
        return node

    def reachable(self, a: str, b: str) -> bool:
        return super().reachable(a, b) and (a, b) not in self.cuts

    def transmit(self, src: str, dst: str, frame: bytes) -> bool:
        extra = self.slow.get(src, 0.0) + self.slow.get(dst, 0.0)
        if not extra:
            return super().transmit(src, dst, frame)
        if dst not in self.nodes or self._nursery is None:
            return False
        self.stats.sent += 1
        if self.rng.random() < self.drop:
            self.stats.dropped += 1
            return True
        self._nursery.start_soon(self._deliver, src, dst, frame, self.rng.uniform(*self.delay) + extra)
        return True

    async def _deliver(self, src: str, dst: str, frame: bytes, delay: float) -> None:
        await trio.sleep(delay)
        node = self.nodes.get(dst)
        if node is None or not self.reachable(src, dst):  # crashed meanwhile, or cut off
            self.stats.partitioned += 1
            return
        node.received += 1
        self.stats.delivered += 1
        await node.dispatcher.deliver(src, self.registry.decode(frame), size=len(frame))


@dataclass
class Keys:
    key: frost.KeyShare | None


@dataclass
class Member:
    id: str
    identity: nacl.signing.SigningKey
    keys: Keys | DkgService  # whatever holds the key share: dealt, or the member's DKG service
    state: State = field(default_factory=State)
    service: ReceiptService | None = None
    scope: trio.CancelScope | None = None
    locks: LockStore | None = None
    counter: int = 0
    skew_s: float = 0.0
    behaviour: str | None = None  # None: honest; else a byzantine behaviour (see SimCluster.BEHAVIOURS)
    up: bool = False
    dkg: DkgService | None = None  # with SimCluster(dkg=True)
    incarnation: int = 0  # bumped by a crash: what the previous run of the member still tries is refused
    lost: bool = False  # gone for good with its disk (``SimCluster.lose``)
    outbox: Outbox | None = None
    publisher: Publisher | None = None
    consumer: Consumer | None = None
    committed_locks: set[bytes] = field(default_factory=set)  # receipt ids its lock table holds committed


@dataclass
class Observed:
    """What the safety checkers read: shares released (member, commitment) and signatures made anywhere."""

    shares: list[tuple[str, tuple[bytes, bytes]]] = field(default_factory=list)
    adversary_signatures: list[tuple[list[rc.Receipt], bytes, bytes]] = field(default_factory=list)
    # every batch signature a receipt service made (receipts, root, signature), whether it reached a state or not: a
    # batch signed and lost before its announcement, then a rival signed in a takeover, left one signature unseen
    signatures: list[tuple[list[rc.Receipt], bytes, bytes]] = field(default_factory=list)
    # the signed documents as the clients waiting on them got them (the proposer lets go of them later)
    documents: list[tuple[rc.Receipt, dict[str, Any]]] = field(default_factory=list)
    # (blamer, blamed) for every blame by any incarnation of a member (a crash replaced the service and its counters:
    # a blame of an honest member by one that crashed later went unseen, a reviewer's reproduction)
    blames: list[tuple[str, str]] = field(default_factory=list)
    # what an honest member let out before what it rests on was on its disk (a signature share before its locks, a
    # DKG confirmation before its key share): a crash right then loses the promise. Checked where it leaves, on
    # the files (another connection sees committed rows only): a crash trap fires at a step, never in such a window
    # (a reviewer's planted bugs: a failed lock commit ignored, a confirmation sent before its share was stored)
    undurable: list[str] = field(default_factory=list)
    # (member, slot) -> the receipts of that slot an honest member released a signature share for, across its
    # restarts: never more than one. Judged only end to end (two signatures for one slot), a member that forgot its
    # locks at a restart and locked and signed rivals went unseen while fewer than t did so (a reviewer's plant)
    promised: dict[tuple[str, tuple[str, str, str, int]], set[bytes]] = field(default_factory=dict)


class SimCluster:
    BEHAVIOURS = ("bad_shares", "withhold", "signs_anything", "equivocate", "replay", "forge", "bad_commitments")

    def __init__(self, tmp: Path, n: int, seed: int, *, dkg: bool = False, dkg_timeout_s: float = 30.0,
                 **net_options: Any) -> None:
        self.tmp, self.n, self.seed, self.rng = tmp, n, seed, random.Random(seed)
        self.dkg, self.dkg_timeout_s = dkg, dkg_timeout_s
        self.registry = Registry()
        register(self.registry)
        if dkg:
            dkg_service.register(self.registry)
        self.net = FaultNet(self.registry, seed=seed, **net_options)
        ids = [f"c{i}" for i in range(n)]
        identities = {i: nacl.signing.SigningKey(self.rng.randbytes(32)) for i in ids}
        self.member_keys = {i: bytes(k.verify_key) for i, k in identities.items()}
        identifiers = assign_identifiers(self.member_keys.values())
        t = default_threshold(n)
        self.threshold = t
        by_key = {k: m for m, k in self.member_keys.items()}
        self.dealt_key: bytes | None = None
        if dkg:
            shares: dict[int, frost.KeyShare | None] = dict.fromkeys(identifiers)
        else:
            scalars = [serialize_scalar(int.from_bytes(self.rng.randbytes(64), "little") % (L - 1) + 1)
                       for _ in range(t)]
            dealt = frost.trusted_dealer_key_shares(n, t, scalars[0], scalars[1:])  # seeded: replayable
            shares = dict(dealt)
            self.dealt_key = dealt[1].group_public_key
        self.members = {by_key[identifiers[i]]: Member(by_key[identifiers[i]], identities[by_key[identifiers[i]]],
                                                       Keys(shares[i])) for i in identifiers}
        self.da = MemoryDA()  # the shared DA: its outages and lag are set on it
        self.ids = {key: m for m, key in self.member_keys.items()}
        self.nodes: dict[str, nacl.signing.SigningKey] = {}
        self.service_options: dict[str, Any] = {}
        self.nursery: trio.Nursery | None = None
        self.t0 = 0.0
        self.observed = Observed()
        self.conflicts: list[tuple[rc.Receipt, rc.Receipt]] = []  # pairs of receipts for one slot
        self.traps: list[Callable[[], None]] = []  # how to disarm each armed crash-after-a-durable-step fault
        self.faults_fired = 0  # faults of the schedule that took effect (deploy/simulate.py counts them)

    # ---- ledger set-up: nodes with keys, objects with replicas, the same on every member ------------

    def seed_ledger(self, nodes: int = 6, objects: int = 6) -> None:
        raws = []
        for k in range(nodes):
            key = nacl.signing.SigningKey(bytes([k + 1]) * 32)
            self.nodes[f"n{k}"] = key
            raws.append(ev.make_event(ev.NODE_REGISTERED, (1, k), "c0", id=f"n{k}", zone="z", addr="h:1",
                                      capacity_gb=10).raw)
            raws.append(ev.make_event(ev.NODE_KEY, (1, k), "c0", id=f"n{k}",
                                      public_key=bytes(key.verify_key).hex()).raw)
        for o in range(objects):
            raws.append(ev.make_event(ev.OBJECT_REGISTERED, (2, o), "c0", hash=f"obj{o}", size=1).raw)
            for k in range(nodes):
                raws.append(ev.make_event(ev.REPLICA_HEALED, (3, o * nodes + k), "c0", hash=f"obj{o}",
                                          node_id=f"n{k}").raw)
        # two nodes no storage receipt may ever be signed for (``refused_receipts``): "gone" held obj0, then left the
        # registry; "miss" held obj1, then its replica was marked missing
        for k, (name, obj, undo) in enumerate((("gone", "obj0", ev.NODE_UNREGISTERED), ("miss", "obj1", None))):
            key = nacl.signing.SigningKey(bytes([0xE0 + k]) * 32)
            self.nodes[name] = key
            raws += [ev.make_event(ev.NODE_REGISTERED, (4, 10 * k), "c0", id=name, zone="z", addr="h:4",
                                   capacity_gb=10).raw,
                     ev.make_event(ev.NODE_KEY, (4, 10 * k + 1), "c0", id=name,
                                   public_key=bytes(key.verify_key).hex()).raw,
                     ev.make_event(ev.REPLICA_HEALED, (4, 10 * k + 2), "c0", hash=obj, node_id=name).raw,
                     ev.make_event(undo, (5, k), "c0", id=name).raw if undo is not None
                     else ev.make_event(ev.REPLICA_MISSING, (5, k), "c0", hash=obj, node_id=name).raw]
        self.da.preload(self.blob_of_c0(raws))  # already on DA when the members start: they read it first

    def refused_receipts(self) -> list[rc.Receipt]:
        """Receipts no member's state ever makes valid (after ``seed_ledger``): of a node that left the registry,
        of a replica marked missing, of an object never registered, of an epoch long gone, with a bad node
        signature. Never signed, never locked by an honest member, whoever proposes them."""
        bad_signature = replace(self.receipt("n0", "obj0", proof=901), node_signature=bytes(64))
        return [self.receipt("gone", "obj0", proof=902), self.receipt("miss", "obj1", proof=903),
                self.receipt("n1", "no-such-object", proof=904), self.receipt("n2", "obj2", epoch=EPOCH - 3, proof=905),
                bad_signature]

    def blob_of_c0(self, raws: list[bytes]) -> bytes:
        """A blob of c0's events, signed by c0 (what c0's publisher would post)."""
        return encode_blob(self.members["c0"].identity, "c0", raws)

    async def post_events(self, raws: list[bytes]) -> None:
        """Post c0's events to DA in one blob, retrying through an outage (an operator's write landing)."""
        blob, backoff = self.blob_of_c0(raws), Backoff(0.1, 2.0, random.Random(self.rng.getrandbits(64)))
        while True:
            try:
                await self.da.post(blob)
                return
            except DAUnavailable:
                await trio.sleep(backoff.next())

    def late_node(self, name: str) -> list[bytes]:
        """Events registering one more node with its key, holding obj0 and obj1 (posted to DA later)."""
        key = nacl.signing.SigningKey(self.rng.randbytes(32))
        self.nodes[name] = key
        return [ev.make_event(ev.NODE_REGISTERED, (4, 0), "c0", id=name, zone="z", addr="h:2", capacity_gb=1).raw,
                ev.make_event(ev.NODE_KEY, (4, 1), "c0", id=name, public_key=bytes(key.verify_key).hex()).raw,
                *(ev.make_event(ev.REPLICA_HEALED, (4, 2 + o), "c0", hash=f"obj{o}", node_id=name).raw
                  for o in range(2))]

    def receipt(self, node: str, subject: str, *, epoch: int = EPOCH, reward: int = 100, proof: int = 0,
                ) -> rc.Receipt:
        return rc.sign_as_node(self.nodes[node], receipt_type="storage", node_id=node, subject=subject, epoch=epoch,
                               usage_proof_hash=f"{proof:064x}", execution_commitment=None, reward_base=reward,
                               submitter_address="ab" * 20, timestamp=int(NOW))

    # ---- members -----------------------------------------------------------------------------------

    def _blocking(self, m: Member) -> Callable[..., Any]:
        """This incarnation's ``run_blocking``: inline, and refused once the member crashed."""
        incarnation = m.incarnation

        async def run_blocking(fn: Callable[..., Any], *args: Any) -> Any:
            await trio.lowlevel.checkpoint_if_cancelled()
            if m.incarnation != incarnation:
                raise MemberCrashed(m.id)
            return fn(*args)

        return run_blocking

    def _make_pipeline(self, m: Member) -> None:
        """The member's state and DA pipeline, fresh as after a process start: outbox, publisher, consumer."""
        m.state = State()
        blocking = self._blocking(m)

        def on_commit(committed: list[tuple[int, ev.Event]]) -> None:
            for _, event in committed:
                m.state.apply(event)

        m.outbox = Outbox(self.tmp / f"{m.id}.outbox.sqlite", on_commit, run_blocking=blocking)
        m.publisher = Publisher(m.outbox, self.da, m.identity, m.id, BLOB_BYTES, PUBLISH_INTERVAL_S,
                                rng=random.Random(self.rng.getrandbits(64)))
        m.consumer = Consumer(self.da, lambda events: m.state.apply_events(events),
                              frozenset(self.member_keys.values()),
                              member_ids=self.ids, poll_s=POLL_S, idle_poll_s=IDLE_POLL_S,
                              rng=random.Random(self.rng.getrandbits(64)))

    async def write(self, member_id: str, kind: str, **fields: Any) -> ev.Event:
        """An event of this member, made durable in its outbox and applied (as a coordinator's write is); its
        publisher then takes it to DA."""
        m = self.members[member_id]
        m.counter += 1  # survives a crash, as a hybrid logical clock following the wall clock would
        event = ev.make_event(kind, (int(NOW * 1000), m.counter), m.id, **fields)
        assert m.outbox is not None
        await m.outbox.append(event)
        return event

    def _make_service(self, m: Member) -> ReceiptService:
        node = self.net.add(m.id)
        node.dispatcher.nursery = None  # requests are answered once the member runs (its nursery: see run())
        blocking = self._blocking(m)
        if self.dkg:  # a new DKG service on every (re)start: it resumes from its key store and journal
            dealer = GarblingDealer if m.behaviour == "bad_shares" else DkgParticipant  # bad shares in the DKG too
            m.dkg = SimDkgService(node, m.identity, self.member_keys, self.tmp / f"{m.id}.keyshare",
                                  timeout_s=self.dkg_timeout_s, run_blocking=blocking, participant_class=dealer)
            m.dkg.session_rng = random.Random(self.rng.getrandbits(64))
            if m.behaviour is None:
                m.dkg.undurable = self.observed.undurable
            m.keys = m.dkg
        m.locks = LockStore(self.tmp / f"{m.id}.locks.sqlite", expect_existing=m.locks is not None,
                            owner=bytes(m.identity.verify_key))
        self._track_commits(m)

        async def submit(kind: str, **fields: Any) -> ev.Event:
            return await self.write(m.id, kind, **fields)

        def da_read_through() -> float | None:
            consumer = m.consumer
            if trio.current_time() < self.da.down_until or consumer is None or not consumer.at_head:
                return None
            return consumer.head_read_started

        view = StateLedgerView(lambda: m.state, submit, m.keys, da_read_through)
        options = {"batch_wait_s": 0.002, "lock_timeout_s": 1.0, "sign_timeout_s": 1.0, "takeover_s": 3.0,
                   "republish_after_s": 35.0, "batch_deadline_s": 5.0, **self.service_options}
        # republish_after_s: above the publisher's longest backoff (30 s), so an honest proposer's batch lands first
        rng = random.Random(self.rng.getrandbits(64))
        service = ReceiptService(node, m.identity, self.member_keys, m.keys, view, m.locks,
                                 clock=lambda: NOW + m.skew_s + trio.current_time() - self.t0,
                                 run_blocking=blocking, random_bytes=rng.randbytes, **options)
        self._observe(m, service)
        if m.behaviour in SIGNER_BEHAVIOURS:
            corrupt_signer(service, m.behaviour)  # before it runs: run() registers its handlers
        elif m.behaviour == "equivocate":  # its own batches too (as DSDN_BYZANTINE=equivocate does), see _misbehave
            equivocate_batches(service)
        return service

    def _track_commits(self, m: Member) -> None:
        """Keep ``m.committed_locks``: the receipt ids the member's lock table holds committed (no other connection
        can read it: it is held EXCLUSIVE), read after every call of the store that ends outside a transaction."""
        store = m.locks
        assert store is not None

        def refresh() -> None:
            if not store.db.in_transaction:  # (a broken or closed store: what was committed stays as last read)
                with contextlib.suppress(sqlite3.Error):
                    m.committed_locks = {bytes(r) for (r,) in store.db.execute("SELECT receipt_id FROM locks")}

        def tracked(method: Callable[..., Any]) -> Callable[..., Any]:
            def call(*args: Any, **kwargs: Any) -> Any:
                try:
                    return method(*args, **kwargs)
                finally:
                    refresh()
            return call

        for name in ("lock_batch", "commit", "mark_final", "close_conflicts", "keep_heard"):
            setattr(store, name, tracked(getattr(store, name)))
        refresh()

    def _check_durable(self, m: Member, ids: list[bytes], what: str) -> None:
        if m.behaviour is None and not set(ids) <= m.committed_locks:
            self.observed.undurable.append(f"{m.id} let out {what} before its locks were committed")

    def _promise(self, m: Member, receipts: list[rc.Receipt]) -> None:
        """``m`` let out a signature share for these receipts (``Observed.promised``)."""
        if m.behaviour is None:
            for r in receipts:
                self.observed.promised.setdefault((m.id, r.slot), set()).add(r.id)

    def _observe(self, m: Member, service: ReceiptService) -> None:
        honest_on_lock, honest_on_sign = service._on_lock, service._on_sign
        # (peer, batch) -> the receipts of a share made for that peer, until the reply carrying it leaves: a share
        # made while the lock commit ran and dropped when it failed never left (a regression review's false alarm)
        made: dict[tuple[str, bytes], list[rc.Receipt]] = {}

        async def on_lock(peer: str, body: dict[str, Any]) -> dict[str, Any]:
            reply = await honest_on_lock(peer, body)
            held = made.pop((peer, body["batch"]), None)
            if reply.get("share"):  # (the one-round path: a share for the whole batch, sent with the verdicts)
                self._check_durable(m, [rc.Receipt.from_wire(w).id for w in body["receipts"]], "a one-round share")
                self._promise(m, held or [rc.Receipt.from_wire(w) for w in body["receipts"]])
            return reply

        async def on_sign(peer: str, body: dict[str, Any]) -> dict[str, Any]:
            reply = await honest_on_sign(peer, body)
            held = made.pop((peer, body["batch"]), None)
            if reply.get("share"):
                ids = body["ids"]
                self._check_durable(m, [ids[i:i + 32] for i in range(0, len(ids), 32)], "a signature share")
                self._promise(m, held or [])
            return reply

        service._on_lock = on_lock  # type: ignore[method-assign]
        service._on_sign = on_sign  # type: ignore[method-assign]
        honest_sign = service._sign_share

        def sign_share(peer: str, body: dict[str, Any], held: list[rc.Receipt]) -> dict[str, Any]:
            reply = honest_sign(peer, body, held)
            key = m.keys.key
            if reply["share"] and key is not None:
                signers = list(body["signers"])
                i = signers.index(key.identifier)
                self.observed.shares.append((m.id, (body["hiding"][i], body["binding"][i])))
                if peer != m.id:  # (counted as promised once it leaves: see on_lock, on_sign; its own in signed)
                    made[(peer, body["batch"])] = held
            return reply

        service._sign_share = sign_share  # type: ignore[method-assign]
        honest_signed = service._signed

        async def signed(key: Any, final: list[rc.Receipt], signature: bytes, *rest: Any) -> None:
            self.observed.signatures.append((list(final), merkle.root([r.to_bytes() for r in final]), signature))
            self._promise(m, final)  # (its own share is in the signature)
            self._check_durable(m, [r.id for r in final], "a batch signature (its own share in it)")
            await honest_signed(key, final, signature, *rest)

        service._signed = signed  # type: ignore[method-assign]
        honest_settle = service._settle_final

        def settle_final(final: list[rc.Receipt]) -> None:
            for r in final:
                record = service.records.get(r.id)
                if record is not None and record.document is not None and record.status != "final":
                    self.observed.documents.append((r, record.document))
            honest_settle(final)

        service._settle_final = settle_final  # type: ignore[method-assign]
        honest_blame = service._blame

        def blame(culprit: int, *why: str) -> None:
            self.observed.blames.append((m.id, service.member_of.get(culprit, str(culprit))))
            honest_blame(culprit, *why)

        service._blame = blame  # type: ignore[method-assign]

    async def start(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.t0 = trio.current_time()  # the members' wall clock reads NOW at the start, then follows trio's
        await nursery.start(self.net.run)
        for m in self.members.values():
            await self.start_member(m.id)
        for m in self.members.values():  # ready, as a coordinator is, once it has read what DA holds
            assert m.consumer is not None
            await m.consumer.caught_up.wait()

    async def start_member(self, member_id: str) -> None:
        assert self.nursery is not None
        m = self.members[member_id]
        self._make_pipeline(m)
        m.service = self._make_service(m)

        async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            assert m.outbox is not None and m.publisher is not None and m.consumer is not None
            try:
                with trio.CancelScope() as scope:
                    m.scope = scope
                    assert m.service is not None
                    for _, raw in await m.outbox.since(0):  # acknowledged writes, published or not
                        m.state.apply(ev.decode_event(raw))
                    async with trio.open_nursery() as inner:
                        self.net.nodes[m.id].dispatcher.nursery = inner  # a crash ends the requests it serves
                        await inner.start(m.outbox.run)
                        await inner.start(m.publisher.run)
                        await inner.start(m.consumer.run)
                        if m.dkg is not None:
                            await inner.start(m.dkg.run)  # loads a stored key before the receipt engine starts
                        await inner.start(m.service.run)
                        if m.behaviour is not None:
                            self._misbehave(m, inner)
                        task_status.started()
            except* MemberCrashed:
                pass  # a shielded step of the dead incarnation (an outbox commit) found its files gone

        await self.nursery.start(run)
        m.up = True

    def crash(self, member_id: str) -> None:
        """Stop a member at once: its tasks end, its memory (nonces, queue) is gone, its lock table stays."""
        m = self.members[member_id]
        assert m.scope is not None
        m.incarnation += 1
        m.scope.cancel()
        m.up = False
        self.net.nodes.pop(m.id, None)  # messages to it go nowhere until it restarts
        if m.locks is not None:
            m.locks.close()
        if m.outbox is not None:
            m.outbox.close()

    def lose(self, member_id: str) -> None:
        """The member dies for good and its disk with it (its outbox, lock table): it never restarts, and the
        checks leave it out (``honest``, ``quiet``)."""
        m = self.members[member_id]
        if m.up:
            self.crash(member_id)
        m.lost = True
        for name in (f"{m.id}.outbox.sqlite", f"{m.id}.locks.sqlite"):
            for suffix in ("", "-wal", "-shm"):
                (self.tmp / (name + suffix)).unlink(missing_ok=True)

    async def restart(self, member_id: str) -> None:
        await self.start_member(member_id)

    # ---- byzantine behaviours --------------------------------------------------------------------------

    def _misbehave(self, m: Member, nursery: trio.Nursery) -> None:
        service = m.service
        assert service is not None
        if m.behaviour == "signs_anything":  # locks nothing, answers OK to every receipt, signs every batch
            def lock_anything(receipts: list[rc.Receipt], *_: Any, **__: Any) -> list[Decision]:
                return [Decision(r.id, Verdict.OK) for r in receipts]

            assert m.locks is not None
            m.locks.lock_batch = lock_anything  # type: ignore[method-assign]
        elif m.behaviour in ("replay", "forge", "equivocate"):
            nursery.start_soon(Adversary(self, m).run, m.behaviour)

    # ---- checks ------------------------------------------------------------------------------------

    def service(self, member_id: str) -> ReceiptService:
        s = self.members[member_id].service
        assert s is not None
        return s

    def honest(self) -> list[Member]:
        """The honest members, but one lost for good."""
        return [m for m in self.members.values() if m.behaviour is None and not m.lost]

    @property
    def group_key(self) -> bytes | None:
        """The dealt group key, or the one the DKG gave the first honest member that holds one (None: no key)."""
        if self.dealt_key is not None:
            return self.dealt_key
        return next((k.group_public_key for m in self.honest() if (k := m.keys.key) is not None), None)

    def group_keys(self) -> dict[str, bytes | None]:
        """Every honest member's group key (None: it has none)."""
        return {m.id: k.group_public_key if (k := m.keys.key) is not None else None for m in self.honest()}

    def keyless(self) -> list[str]:
        """Honest members without a key share (the DKG has not completed there)."""
        return sorted(i for i, k in self.group_keys().items() if k is None)

    def signed_ids(self) -> set[bytes]:
        return {rid for m in self.members.values() for rid in m.state.ledger.receipts}

    def double_signed(self) -> list[Any]:
        return [d for m in self.members.values() for d in m.state.ledger.double_signed()]

    def quiet(self) -> bool:
        """Nothing in flight: every member is up, its outbox is empty, its consumer has read every blob on DA, and
        no batch of its is being locked or signed (one still in flight keeps its receipts' records open: judged
        then, they looked stuck), but for receipts of contested slots: a lock no takeover can sign while a liar
        holds the deciding vote stays open, tried again now and then, by design."""
        contested = {r.id for pair in self.conflicts for r in pair}
        return all(m.up and m.outbox is not None and m.outbox.pending == 0 and m.consumer is not None
                   and m.consumer.cursor == len(self.da.blobs)
                   and (m.service is None or m.service.signing_now <= contested)
                   for m in self.members.values() if not m.lost)

    def close(self) -> None:
        """Close every member's files (after the run)."""
        for m in self.members.values():
            for store in (m.locks, m.outbox):
                if store is not None:
                    store.close()

    def rebuilt_from_da(self) -> State:
        """A coordinator's state rebuilt from what DA holds alone (every member's blobs, in log order)."""
        state, keys = State(), frozenset(self.member_keys.values())
        for _, data in self.da.blobs:
            state.apply_events(decode_blob(data, keys, member_ids=self.ids).events)
        return state

    def roots(self) -> set[bytes]:
        return {m.state.root() for m in self.members.values() if not m.lost}

    async def wait_final(self, ids: set[bytes], timeout: float = 60.0, members: set[str] | None = None) -> None:
        targets = [self.members[i] for i in (members or set(self.members))]
        with trio.fail_after(timeout):
            while not all(ids <= set(m.state.ledger.receipts) for m in targets):
                await trio.sleep(0.1)


@asynccontextmanager
async def started(tmp: Path, seed: int, n: int = 4) -> AsyncIterator[SimCluster]:
    """A running simulated cluster of ``n`` members with the seeded ledger (tests' set-up), closed afterwards."""
    cluster = SimCluster(tmp, n, seed=seed, delay=(0.001, 0.01))
    cluster.seed_ledger()
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        yield cluster
        nursery.cancel_scope.cancel()
    cluster.close()
