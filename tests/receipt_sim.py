"""A cluster of receipt engines in one trio run: the real ReceiptService, LockStore (SQLite in a temp dir),
State and StateLedgerView on each member, linked by protocol/simnet, with an in-memory DA log that every
member's state follows. Used by the simulation tests; everything runs in virtual time under MockClock."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nacl.signing
import trio

from consensus import frost
from consensus import receipts as rc
from consensus.dkg import assign_identifiers
from consensus.lockstore import LockStore
from consensus.receipt_service import ReceiptService, register
from deploy.receipt_view import StateLedgerView
from node import events as ev
from node.state import State
from protocol.envelope import Registry
from protocol.simnet import SimNetwork

NOW = 1_800_000_000.0  # the wall clock every member sees (seconds)
EPOCH = int(NOW // 3600) + 1


async def inline(fn: Callable[[], Any]) -> Any:
    """Blocking calls run inline: a thread would let MockClock's virtual time jump while it runs."""
    return fn()


@dataclass
class Keys:
    key: frost.KeyShare | None


@dataclass
class Member:
    id: str
    identity: nacl.signing.SigningKey
    keys: Keys
    state: State = field(default_factory=State)
    service: ReceiptService | None = None
    scope: trio.CancelScope | None = None
    locks: LockStore | None = None
    counter: int = 0


class SimCluster:
    def __init__(self, tmp: Path, n: int, seed: int, **net_options: Any) -> None:
        self.tmp, self.n, self.rng = tmp, n, random.Random(seed)
        self.registry = Registry()
        register(self.registry)
        self.net = SimNetwork(self.registry, seed=seed, **net_options)
        ids = [f"c{i}" for i in range(n)]
        identities = {i: nacl.signing.SigningKey(bytes([seed % 256, k]) + bytes(30)) for k, i in enumerate(ids)}
        self.member_keys = {i: bytes(k.verify_key) for i, k in identities.items()}
        identifiers = assign_identifiers(self.member_keys.values())
        t = (2 * n) // 3 + 1
        shares = frost.trusted_dealer_key_shares(n, t)
        by_key = {k: m for m, k in self.member_keys.items()}
        self.threshold = t
        self.group_key = shares[1].group_public_key
        self.members = {by_key[identifiers[i]]: Member(by_key[identifiers[i]], identities[by_key[identifiers[i]]],
                                                       Keys(shares[i])) for i in identifiers}
        self.da: list[bytes] = []  # the shared DA log: raw events in the order they were posted
        self.nodes: dict[str, nacl.signing.SigningKey] = {}
        self.service_options: dict[str, Any] = {}
        self.nursery: trio.Nursery | None = None
        self.t0 = 0.0

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
        self.da.extend(raws)
        for m in self.members.values():
            for raw in raws:
                m.state.apply(ev.decode_event(raw))

    def receipt(self, node: str, subject: str, *, epoch: int = EPOCH, reward: int = 100, proof: int = 0,
                ) -> rc.Receipt:
        return rc.sign_as_node(self.nodes[node], receipt_type="storage", node_id=node, subject=subject, epoch=epoch,
                               usage_proof_hash=f"{proof:064x}", execution_commitment=None, reward_base=reward,
                               submitter_address="ab" * 20, timestamp=int(NOW))

    # ---- members -----------------------------------------------------------------------------------

    def _make_service(self, m: Member) -> ReceiptService:
        node = self.net.add(m.id)
        m.locks = LockStore(self.tmp / f"{m.id}.locks.sqlite", expect_existing=m.locks is not None)

        async def submit(kind: str, **fields: Any) -> ev.Event:
            m.counter += 1
            event = ev.make_event(kind, (int(NOW * 1000), m.counter), m.id, **fields)
            self.da.append(event.raw)
            m.state.apply(event)
            return event

        view = StateLedgerView(lambda: m.state, submit, m.state.apply, m.keys)
        options = {"batch_wait_s": 0.002, "lock_timeout_s": 1.0, "sign_timeout_s": 1.0, "takeover_s": 3.0,
                   "batch_deadline_s": 5.0, **self.service_options}
        return ReceiptService(node, m.identity, self.member_keys, m.keys, view, m.locks,
                              clock=lambda: NOW + trio.current_time() - self.t0,
                              run_blocking=inline, **options)

    async def start(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.t0 = trio.current_time()  # the members' wall clock reads NOW at the start, then follows trio's
        await nursery.start(self.net.run)
        nursery.start_soon(self._follow_da)
        for m in self.members.values():
            await self.start_member(m.id)

    async def start_member(self, member_id: str) -> None:
        assert self.nursery is not None
        m = self.members[member_id]
        m.service = self._make_service(m)
        self.net.nodes[m.id].dispatcher.nursery = self.net._nursery

        async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with trio.CancelScope() as scope:
                m.scope = scope
                assert m.service is not None
                await m.service.run(task_status=task_status)

        await self.nursery.start(run)

    def crash(self, member_id: str) -> None:
        """Stop a member at once: its tasks end, its memory (nonces, queue) is gone, its lock table stays."""
        m = self.members[member_id]
        assert m.scope is not None
        m.scope.cancel()
        self.net.partition({m.id}, set(self.members) - {m.id})
        if m.locks is not None:
            m.locks.close()

    async def restart(self, member_id: str) -> None:
        self.net.heal()
        await self.start_member(member_id)

    async def _follow_da(self) -> None:
        """Every member's consumer: apply what DA holds (in a random order per member, as convergence allows)."""
        seen = 0
        while True:
            await trio.sleep(0.2)
            fresh = self.da[seen:]
            seen = len(self.da)
            for m in self.members.values():
                order = list(fresh)
                self.rng.shuffle(order)
                for raw in order:
                    m.state.apply(ev.decode_event(raw))

    # ---- checks ------------------------------------------------------------------------------------

    def service(self, member_id: str) -> ReceiptService:
        s = self.members[member_id].service
        assert s is not None
        return s

    def signed_ids(self) -> set[bytes]:
        return {rid for m in self.members.values() for rid in m.state.ledger.receipts}

    def double_signed(self) -> list[Any]:
        return [d for m in self.members.values() for d in m.state.ledger.double_signed()]

    def roots(self) -> set[bytes]:
        return {m.state.root() for m in self.members.values()}

    async def wait_final(self, ids: set[bytes], timeout: float = 60.0, members: set[str] | None = None) -> None:
        targets = [self.members[i] for i in (members or set(self.members))]
        with trio.fail_after(timeout):
            while not all(ids <= set(m.state.ledger.receipts) for m in targets):
                await trio.sleep(0.1)
