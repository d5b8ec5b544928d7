"""Receipt consensus on the simulated network under MockClock, n = 4..7: every valid receipt signed and
verifiable, conflicting receipts never both signed, a lying signer named, crashed and slow signers tolerated,
a dead proposer's batch taken over, lossy/duplicating/reordering links and healed partitions, equal roots."""

from __future__ import annotations

import dataclasses
import random
import sqlite3
import types
from pathlib import Path
from typing import Any

import msgpack
import nacl.signing
import pytest
import trio
import trio.testing
from quart_trio import QuartTrio

from api import receipts as api_receipts
from consensus import receipt_service as rs
from consensus import receipts as rc
from consensus.group import GroupError, deserialize_element
from consensus.lockstore import LockTableBroken
from consensus.nonces import Nonce, NonceTable
from consensus.receipt_service import LOCK, LOCK_REPLY, ReceiptService, Unavailable
from consensus.slots import Verdict
from deploy import simulation as sim
from deploy.simulation import EPOCH, SimCluster, started
from node import events as ev
from node import merkle


def check_document(doc: dict, group_key: bytes) -> None:
    """Verify like a third party: Ed25519 under the group key, the Merkle path, the receipt bytes."""
    batch = doc["batch"]
    root = bytes.fromhex(batch["root"])
    raw = bytes.fromhex(doc["receipt_bytes"])
    nacl.signing.VerifyKey(group_key).verify(rc.batch_message(group_key, root, batch["tree_size"]),
                                             bytes.fromhex(doc["signature"]))
    assert merkle.verify_inclusion(raw, batch["index"], batch["tree_size"],
                                   [bytes.fromhex(p) for p in batch["path"]], root)
    assert rc.verify_document(doc, group_key) == (True, "valid")


async def settle(cluster: SimCluster, seconds: float = 3.0) -> None:
    await trio.sleep(seconds)  # virtual time: let DA delivery reach every member


@pytest.mark.parametrize("n", [4, 5, 7])
async def test_receipts_sent_to_every_coordinator_are_all_signed(tmp_path: Path, n: int,
                                                                autojump_clock: trio.testing.MockClock) -> None:
    cluster = SimCluster(tmp_path, n, seed=n, delay=(0.001, 0.01))
    cluster.seed_ledger()
    receipts = [distinct_receipt(cluster, k)
                for k in range(30)]
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        records = [cluster.service(f"c{k % n}").submit(r) for k, r in enumerate(receipts)]
        ids = {r.id for r in receipts}
        await cluster.wait_final(ids)
        assert all(rec.status == "final" for rec in records)
        await settle(cluster)
        # the documents the clients got verify; the proposers then let them go: each is served from the state
        assert {r.id for r, _ in cluster.observed.documents} == ids
        for _, doc in cluster.observed.documents:
            check_document(doc, cluster.group_key)
        assert all(rec.document is None for rec in records)
        # and no member keeps them in its cache of receipts locked for signing any more
        assert not any(ids & set(cluster.service(m.id)._locked) for m in cluster.members.values())
        for m in cluster.members.values():
            for r in receipts:
                doc = cluster.service(m.id).lookup(r.id)
                assert doc is not None and doc["status"] == "final"
                check_document(doc, cluster.group_key)
        assert len(cluster.roots()) == 1
        assert not cluster.double_signed()
        nursery.cancel_scope.cancel()


def answer_locks_late(cluster: SimCluster, member: str, delay: float = 0.05) -> None:
    """``member`` answers every rc.lock ``delay`` seconds late (its handler otherwise unchanged)."""
    lock = cluster.service(member)._on_lock

    async def later(peer: str, body: dict) -> dict:
        await trio.sleep(delay)
        return await lock(peer, body)

    cluster.net.nodes[member].on_request(LOCK, LOCK_REPLY, later)


def distinct_receipt(cluster: SimCluster, k: int) -> rc.Receipt:
    """Receipt k of a workload whose slots all differ: (node, object) pairs, then the previous epoch."""
    return cluster.receipt(f"n{k % 6}", f"obj{(k // 6) % 6}", proof=k, epoch=EPOCH - (k // 36) % 2)


@pytest.mark.parametrize("seed", range(12))
async def test_conflicting_receipts_for_one_slot_are_never_both_signed(tmp_path: Path, seed: int,
                                                                      autojump_clock: trio.testing.MockClock) -> None:
    rng = random.Random(seed)
    n = rng.choice([4, 5, 6, 7])
    cluster = SimCluster(tmp_path, n, seed=seed, delay=(0.0, 0.05), duplicate=0.1)
    cluster.seed_ledger()
    a = cluster.receipt("n1", "obj1", reward=10)
    b = cluster.receipt("n1", "obj1", reward=20)  # same slot (storage, n1, obj1, epoch), another receipt
    assert a.slot == b.slot and a.id != b.id
    ids = sorted(cluster.members)
    half = len(ids) // 2
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        first = [cluster.service(i).submit(a) for i in ids[:half]]
        second = [cluster.service(i).submit(b) for i in ids[half:]]
        with trio.fail_after(60):
            while any(r.status in ("pending", "locked") for r in first + second):
                await trio.sleep(0.1)
        await settle(cluster)
        assert not cluster.double_signed()
        signed = cluster.signed_ids() & {a.id, b.id}
        assert len(signed) <= 1
        for rec in first + second:
            if rec.receipt.id in signed:
                assert rec.status == "final"
            else:
                assert rec.status == "conflict" and rec.conflicting_id in {a.id, b.id} - {rec.receipt.id}
        assert len(cluster.roots()) == 1
        nursery.cancel_scope.cancel()


async def test_a_signer_sending_bad_shares_is_named_and_signing_completes(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    cluster = SimCluster(tmp_path, 4, seed=3, delay=(0.001, 0.01))
    cluster.seed_ledger()
    liar = "c2"
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        honest_sign = ReceiptService._sign_share

        def lying_sign(self: ReceiptService, peer: str, body: dict, held: list) -> dict:
            reply = honest_sign(self, peer, body, held)
            if self.my_id == liar and reply["share"]:
                reply["share"] = bytes(32 - 1) + b"\x01"  # a well-formed but wrong share
            return reply

        cluster.service(liar)._sign_share = lying_sign.__get__(cluster.service(liar))  # type: ignore[method-assign]
        for honest in ("c1", "c3"):  # they answer lock requests a little later, so the liar is always in the
            answer_locks_late(cluster, honest)  # first session (ROAST takes the first t ready signers)
        receipts = [cluster.receipt(f"n{k}", f"obj{k}") for k in range(4)]
        for r in receipts:
            cluster.service("c0").submit(r)
        await cluster.wait_final({r.id for r in receipts})
        blamed = {name for m in cluster.members.values() for name in cluster.service(m.id).counters.blamed}
        assert blamed == {liar}
        await settle(cluster)
        for r in receipts:
            doc = cluster.service("c0").lookup(r.id)
            assert doc is not None
            check_document(doc, cluster.group_key)
            assert liar not in doc["signers"]
        nursery.cancel_scope.cancel()


async def test_one_crashed_and_one_slow_signer_do_not_stop_signing(tmp_path: Path,
                                                                   autojump_clock: trio.testing.MockClock) -> None:
    cluster = SimCluster(tmp_path, 7, seed=5, delay=(0.001, 0.01))  # t = 5: two faults tolerated
    cluster.seed_ledger()
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        cluster.crash("c6")
        slow = cluster.service("c5")
        honest_lock = slow._on_lock

        async def slow_lock(peer: str, body: dict) -> dict:
            await trio.sleep(0.8)  # answers, but late (lock timeout is 1 s)
            return await honest_lock(peer, body)

        cluster.net.nodes["c5"].on_request(LOCK, LOCK_REPLY, slow_lock)
        cluster.net.partition(set(cluster.members) - {"c6"}, {"c6"})
        receipts = [cluster.receipt(f"n{k}", f"obj{k}") for k in range(6)]
        for k, r in enumerate(receipts):
            cluster.service(f"c{k % 5}").submit(r)
        await cluster.wait_final({r.id for r in receipts}, members={f"c{k}" for k in range(6)})
        assert not cluster.double_signed()
        nursery.cancel_scope.cancel()


async def test_a_proposer_dying_mid_batch_is_taken_over(tmp_path: Path,
                                                        autojump_clock: trio.testing.MockClock) -> None:
    cluster = SimCluster(tmp_path, 4, seed=9, delay=(0.001, 0.01))
    cluster.seed_ledger()
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        proposer = cluster.service("c1")

        async def die_before_signing(*args: object) -> tuple[None, tuple[int, ...]]:
            cluster.crash("c1")  # every peer has locked the batch; the proposer dies before any share
            await trio.sleep_forever()
            return None, ()

        proposer._sign = die_before_signing  # type: ignore[method-assign]
        receipts = [cluster.receipt(f"n{k}", f"obj{k}") for k in range(3)]
        for r in receipts:
            proposer.submit(r)
        survivors = {"c0", "c2", "c3"}
        await cluster.wait_final({r.id for r in receipts}, members=survivors)
        assert sum(cluster.service(i).counters.takeovers for i in survivors) >= 1
        # the same batch: same receipts, same order, so the same root as the dead proposer would have signed
        roots = {cluster.service("c0").lookup(r.id)["batch"]["root"] for r in receipts}  # type: ignore[index]
        assert roots == {merkle.root([r.to_bytes() for r in receipts]).hex()}
        # the dead proposer comes back with its lock table and converges
        await cluster.restart("c1")
        await settle(cluster)
        assert len(cluster.roots()) == 1 and not cluster.double_signed()
        nursery.cancel_scope.cancel()


async def test_a_batch_s_receipts_are_signing_here_before_its_task_first_runs(
        tmp_path: Path, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """The batcher started a batch's task and marked its receipts as signing only when that task first ran: a
    takeover pass running in between took them for stranded and signed them in a second batch of another root (a
    reviewer's reading). Every batch's receipts are marked where its task is started."""
    from consensus.receipt_service import ReceiptService

    honest = ReceiptService._run_batch_released
    unclaimed: list[int] = []

    async def entered(self: ReceiptService, batch: list[Any], token: object | None = None,
                      ids: set[bytes] | None = None) -> None:
        unclaimed.append(sum(r.id not in self._signing for r in batch))  # (what a takeover pass could take now)
        await (honest(self, batch, token) if ids is None else honest(self, batch, token, ids))

    monkeypatch.setattr(ReceiptService, "_run_batch_released", entered)
    cluster = SimCluster(tmp_path, 4, seed=3, delay=(0.001, 0.01))
    cluster.seed_ledger()
    receipts = [distinct_receipt(cluster, k) for k in range(12)]
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        for k, r in enumerate(receipts):
            cluster.service(f"c{k % 4}").submit(r)
        await cluster.wait_final({r.id for r in receipts})
        nursery.cancel_scope.cancel()
    assert unclaimed and not any(unclaimed), unclaimed


async def test_locks_that_cannot_be_signed_yet_do_not_starve_a_later_takeover(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """Found by dsdn nemesis: a receipt locked at three honest members stayed "locked" for good. Each takeover pass
    started as many of its batches as the in-flight slots allowed, oldest first, and began again from the oldest at
    the next pass: a few old locks that could not be signed (their slots split with a rival, the liar blamed) took
    the slots at every pass, and a signable batch behind them never got its turn. Now every batch of a pass gets its
    turn, and one taken over in vain waits longer before the next try."""
    async with started(tmp_path, seed=21) as cluster:
        c0, c1, c2 = (cluster.service(i) for i in ("c0", "c1", "c2"))
        split = [(cluster.receipt(f"n{k}", f"obj{k}"), cluster.receipt(f"n{k}", f"obj{k}", reward=7))
                 for k in range(4)]
        signable = cluster.receipt("n5", "obj5")
        # c3 proposed each receipt in a batch of its own and died: c0 and c2 locked one of each rival pair, c1 the
        # other (neither rival can ever get three honest shares), and c0 alone locked the signable one, last
        for k, (r, rival) in enumerate(split):
            for member in (c0, c2):
                reply = await member._on_lock("c3", {"batch": bytes([k]) * 16, "receipts": [r.to_wire()]})
                assert list(reply["verdicts"]) == [Verdict.OK]
            reply = await c1._on_lock("c3", {"batch": bytes([k + 100]) * 16, "receipts": [rival.to_wire()]})
            assert list(reply["verdicts"]) == [Verdict.OK]
            await trio.sleep(0.01)
        reply = await c0._on_lock("c3", {"batch": b"S" * 16, "receipts": [signable.to_wire()]})
        assert list(reply["verdicts"]) == [Verdict.OK]
        cluster.crash("c3")
        for member in (c0, c1, c2):  # c3 was the liar: proven to send bad shares, left out of every signer set
            member._blamed_until[member.identifier_of["c3"]] = trio.current_time() + 10**6
        await cluster.wait_final({signable.id}, members={"c0", "c1", "c2"}, timeout=20 * c0.takeover_s)
        assert c0.counters.takeovers >= 1
        signed = set(cluster.members["c1"].state.ledger.receipts)
        assert not any(r.id in signed or rival.id in signed for r, rival in split)  # those cannot be signed


async def test_a_takeover_gets_its_turn_while_its_member_has_steady_traffic(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """A reviewer's reproduction: a takeover started only if an in-flight slot was free at that moment, and with
    steady traffic it never was (the batcher waits for the next slot as soon as it starts a batch, and trio hands a
    released slot to that waiter): receipts locked at every survivor of a dead proposer stayed unsigned for as long
    as the traffic lasted (61.9 s for 60 s of it). Now the takeovers and the queue take turns."""
    cluster = SimCluster(tmp_path, 4, seed=9, delay=(0.1, 0.2))
    cluster.seed_ledger(nodes=10, objects=121)
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        proposer = cluster.service("c3")

        async def die_before_signing(*args: object) -> tuple[None, tuple[int, ...]]:
            cluster.crash("c3")  # every peer locked the batch; the proposer dies before any share
            await trio.sleep_forever()
            return None, ()

        proposer._sign = die_before_signing  # type: ignore[method-assign]
        stranded = [cluster.receipt(f"n{k}", "obj0") for k in range(3)]
        for r in stranded:
            proposer.submit(r)
        with trio.fail_after(10):
            while cluster.members["c3"].up:
                await trio.sleep(0.01)
        fresh = [cluster.receipt(f"n{k % 10}", f"obj{1 + k // 10}") for k in range(1200)]
        started = trio.current_time()

        async def feed() -> None:  # one receipt every 0.05 s, to each survivor in turn, for 60 s
            for k, r in enumerate(fresh):
                cluster.service(f"c{k % 3}").submit(r)
                await trio.sleep(0.05)

        nursery.start_soon(feed)
        await cluster.wait_final({r.id for r in stranded}, members={"c0", "c1", "c2"}, timeout=20)
        assert trio.current_time() - started < 20
        nursery.cancel_scope.cancel()


async def test_a_locked_receipt_whose_epoch_left_the_window_while_it_waited_is_rejected_and_let_go(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """A reviewer's reproduction: a receipt locked at its proposer whose batch failed (the proposer cut off) waits
    to be tried again; its epoch left the window meanwhile. A "locked" receipt was never given up: tried again every
    half second for ever, reported "locked" to its client, holding a place of the not-yet-valid quota. Now it is
    rejected and its lock closed, as a takeover closes such a lock."""
    async with started(tmp_path, seed=3) as cluster:
        c0 = cluster.service("c0")
        r = cluster.receipt("n1", "obj1")
        record = c0.submit(r)
        cluster.net.partition({"c0"}, {"c1", "c2", "c3"})  # c0 locks r, acknowledges it, no peer answers
        with trio.fail_after(10):
            while not (record.status == "locked" and r.id in c0._retry):
                await trio.sleep(0.05)
        for m in cluster.members.values():
            m.skew_s = 2 * 3600.0  # r's epoch leaves the window for good
        await trio.sleep(5)
        cluster.net.heal()
        await trio.sleep(30)
        assert r.id not in c0._retry and record.status == "rejected"
        assert c0.locks.open_locks(10**15) == []


async def test_a_withholding_signer_and_a_receipt_only_it_can_complete_do_not_hold_back_the_rest(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """A reviewer's reproduction: c3 withholds its shares (unprovable: never blamed); c1 holds the slot of a's rival,
    so only {c0, c2, c3} locked a, and every batch with a in it could only be signed with c3 in the signer set:
    three good receipts batched with a failed with it, again and again (90 s, 15 batches, none signed). Now a signer
    that let a share request time out is left out of the next signer sets when the others locked enough."""
    cluster = SimCluster(tmp_path, 4, seed=31, delay=(0.001, 0.01))
    cluster.seed_ledger()
    cluster.members["c3"].behaviour = "withhold"
    cluster.service_options["takeover_s"] = 600.0  # the proposer alone: no takeover by c1 rescues them
    a, b = cluster.receipt("n1", "obj1", reward=1), cluster.receipt("n1", "obj1", reward=2)
    good = [cluster.receipt("n2", f"obj{k}") for k in range(3)]
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        await cluster.service("c1")._on_lock("c2", {"batch": b"B" * 16, "receipts": [b.to_wire()]})
        c0 = cluster.service("c0")
        for x in (a, *good):  # submitted together: one batch
            c0.submit(x)
        await cluster.wait_final({x.id for x in good}, members={"c0", "c1", "c2"}, timeout=60)
        assert a.id not in cluster.members["c1"].state.ledger.receipts
        nursery.cancel_scope.cancel()


async def test_a_signer_that_timed_out_lately_still_stands_by_when_another_refuses(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """A reviewer's reproduction of a first version of the rule above: c1 (honest) let one share request time out,
    so the batch's signer set was {c0, c2, c3} alone, and c3 refused every sign request (which proves nothing): ROAST
    had no one to turn to, and the receipt waited out c1's 30 s. A quiet signer only leaves the choice of receipts;
    it stays a signer, asked last."""
    cluster = SimCluster(tmp_path, 4, seed=31, delay=(0.001, 0.01))
    cluster.seed_ledger()
    cluster.service_options["takeover_s"] = 600.0  # no takeover rescues it
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        c0, c3 = cluster.service("c0"), cluster.service("c3")

        async def refuse(peer: str, body: dict[str, Any]) -> dict[str, Any]:
            return c3._refuse("unknown or already used commitment")

        cluster.net.nodes["c3"].on_request(rs.SIGN, rs.SIGN_REPLY, refuse)
        c0._fast_plan = lambda *a, **k: None  # type: ignore[method-assign]  # the two-round path
        c0._timed_out["c1"] = trio.current_time()  # c1 let a share request time out just now
        r = cluster.receipt("n1", "obj1")
        started = trio.current_time()
        c0.submit(r)
        await cluster.wait_final({r.id}, members={"c0", "c1", "c2"}, timeout=60)
        assert trio.current_time() - started < 5
        nursery.cancel_scope.cancel()


async def test_a_lock_whose_epoch_left_the_window_is_closed_not_taken_over_again_and_again(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with started(tmp_path, seed=3) as cluster:
        c3 = cluster.service("c3")
        r = cluster.receipt("n1", "obj1")
        # c1 proposed r and died right after c3 locked it (no one else got the lock request)
        reply = await c3._on_lock("c1", {"batch": b"Z" * 16, "receipts": [r.to_wire()]})
        assert list(reply["verdicts"]) == [Verdict.OK]
        cluster.crash("c1")
        for m in cluster.members.values():
            m.skew_s = 2 * 3600.0  # two hours later everywhere: r's epoch is out of the window for good
        await trio.sleep(60)
        assert c3.locks.open_locks(10**15) == []  # closed: no takeover will propose it again
        takeovers, batches = c3.counters.takeovers, c3.counters.batches
        await trio.sleep(60)
        assert (c3.counters.takeovers, c3.counters.batches) == (takeovers, batches)
        assert c3.counters.rejected.get("epoch") == 1
        assert (await c3.lookup_durable(r.id))["status"] == "rejected"  # type: ignore[index]
        # the slot stays locked to r: a rival for it is still a conflict here
        rival = cluster.receipt("n1", "obj1", reward=7)
        assert rival.slot == r.slot and rival.id != r.id
        held = c3.locks.lock_batch([rival], lambda _: (Verdict.OK, ""), "c0")
        assert held[0].verdict is Verdict.CONFLICT


@pytest.mark.parametrize("seed", range(8))
async def test_lossy_links_and_a_healed_partition_still_sign_every_valid_receipt(
        tmp_path: Path, seed: int, autojump_clock: trio.testing.MockClock) -> None:
    rng = random.Random(1000 + seed)
    n = rng.choice([4, 5, 6, 7])
    cluster = SimCluster(tmp_path, n, seed=seed, drop=0.05, duplicate=0.1, delay=(0.0, 0.08))
    cluster.seed_ledger()
    receipts = [distinct_receipt(cluster, k) for k in range(20)]
    ids = sorted(cluster.members)
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        minority = set(ids[: n - cluster.threshold]) if n - cluster.threshold > 0 else set()
        cluster.net.partition(set(ids) - minority, minority)
        refused = []
        for k, r in enumerate(receipts):
            try:
                cluster.service(ids[k % n]).submit(r)
            except Unavailable:  # a member cut off from t − 1 peers says so at once
                assert ids[k % n] in minority
                refused.append((ids[k % n], r))
        await trio.sleep(rng.uniform(1, 4))
        cluster.net.heal()
        await trio.sleep(1)
        for member, r in refused:
            cluster.service(member).submit(r)
        await cluster.wait_final({r.id for r in receipts}, timeout=120)
        await settle(cluster)
        assert not cluster.double_signed()
        assert len(cluster.roots()) == 1
        nursery.cancel_scope.cancel()


async def test_a_receipt_waits_for_its_node_and_a_rejected_one_can_come_back(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    cluster = SimCluster(tmp_path, 4, seed=12, delay=(0.001, 0.01))
    cluster.seed_ledger()
    early = cluster.receipt("n1", "obj1")  # an ordinary receipt, for comparison
    events = cluster.late_node("late")
    waiting = cluster.receipt("late", "obj0")
    given_up = cluster.receipt("late", "obj1")
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        assert cluster.service("c0").submit(early).status == "pending"
        first = cluster.service("c1").submit(given_up)
        assert first.status == "pending" and "not registered" in first.reason  # not yet valid: not rejected
        await trio.sleep(35)  # nobody registers the node within the 30 s it is waited for
        assert first.status == "rejected" and "not registered" in first.reason
        second = cluster.service("c2").submit(waiting)
        await trio.sleep(2)
        await cluster.post_events(events)  # the node's registration reaches DA
        await cluster.wait_final({early.id, waiting.id})
        again = cluster.service("c1").submit(given_up)  # the client tries again: judged anew
        await cluster.wait_final({given_up.id})
        assert second.status == "final" and again.status == "final"
        nursery.cancel_scope.cancel()


async def test_a_proven_liar_is_left_out_so_a_stuck_rival_cannot_hold_back_its_batch(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """Found by dsdn nemesis: receipt A is locked by c0, c2 and the liar c3 (c1 holds A's rival B), so every
    signer set for a batch holding A includes the liar. Without remembering the proof against c3 the batch
    [A, C] failed for ever, and C with it; now c3 is left out, C is signed and A is reported a conflict."""
    cluster = SimCluster(tmp_path, 4, seed=31, delay=(0.001, 0.01))
    cluster.seed_ledger()
    cluster.members["c3"].behaviour = "bad_shares"
    cluster.service_options["takeover_s"] = 600.0  # no takeover by another member rescues C here
    a, b = cluster.receipt("n1", "obj1", reward=1), cluster.receipt("n1", "obj1", reward=2)
    c = cluster.receipt("n2", "obj2")
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        await cluster.service("c1")._on_lock("c2", {"batch": b"B" * 16, "receipts": [b.to_wire()]})
        first, third = cluster.service("c0").submit(a), cluster.service("c0").submit(c)
        await cluster.wait_final({c.id}, timeout=30, members={"c0", "c1", "c2"})
        assert third.status == "final"
        # A: the rival's holder and the proven liar leave fewer than t possible signers: a conflict (409) now
        with trio.fail_after(10):
            while first.status != "conflict":
                await trio.sleep(0.1)
        assert first.conflicting_id == b.id and a.id not in cluster.signed_ids()
        assert set(cluster.service("c0").counters.blamed) == {"c3"}
        assert not cluster.double_signed()
        nursery.cancel_scope.cancel()


async def test_a_receipt_its_proposer_refuses_never_reaches_a_peers_lock_table(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """Found by dsdn nemesis (history: rival B sent to the member that had already locked A for another
    proposer): when a proposer locked locally and at its peers in parallel, its peers locked B although the
    proposer refused it, so A lost t honest lockers and could never be signed. A refused receipt stays home."""
    cluster = SimCluster(tmp_path, 4, seed=33, delay=(0.001, 0.01))
    cluster.seed_ledger()
    a, b = cluster.receipt("n4", "obj4", reward=1), cluster.receipt("n4", "obj4", reward=2)
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        await cluster.service("c3")._on_lock("c1", {"batch": b"A" * 16, "receipts": [a.to_wire()]})
        rival = cluster.service("c3").submit(b)
        with trio.fail_after(10):
            while rival.status not in ("conflict", "final"):
                await trio.sleep(0.05)
        assert rival.status == "conflict" and rival.conflicting_id == a.id
        await trio.sleep(1)
        for member in ("c0", "c1", "c2"):
            assert cluster.service(member).locks.holds([b.id]) is None  # B locked nowhere else
        record = cluster.service("c1").submit(a)  # so A can still be signed by the honest majority
        await cluster.wait_final({a.id})
        assert record.status == "final"
        nursery.cancel_scope.cancel()


async def test_a_coordinator_restarted_after_acknowledging_still_answers_for_its_receipt(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """Found by dsdn nemesis (CI, seed 5): c2 acknowledged A (202 locked), then found that c0, c1 and the liar c3
    held the slot for B, so A could never be signed (conflict); c2 was killed, and after its restart GET
    /receipts/A on c2 answered 404: the status lived in memory only. The lock table now answers for it."""
    cluster = SimCluster(tmp_path, 4, seed=35, delay=(0.001, 0.01))
    cluster.seed_ledger()
    cluster.members["c3"].behaviour = "bad_shares"
    a, b = cluster.receipt("n3", "obj3", reward=1), cluster.receipt("n3", "obj3", reward=2)
    c = cluster.receipt("n4", "obj4")
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        for member in ("c0", "c1", "c3"):
            await cluster.service(member)._on_lock("c1", {"batch": b"B" * 16, "receipts": [b.to_wire()]})
        first = cluster.service("c2").submit(a)
        with trio.fail_after(10):
            while first.status in ("pending", "locked"):
                await trio.sleep(0.05)
        assert first.status == "conflict" and first.conflicting_id == b.id
        await cluster.service("c2")._on_lock("c0", {"batch": b"C" * 16, "receipts": [c.to_wire()]})
        cluster.crash("c2")
        await cluster.restart("c2")
        restarted = cluster.service("c2")
        assert restarted.lookup(a.id) is None  # nothing in memory...
        doc = await restarted.lookup_durable(a.id)  # ...but the lock table remembers
        assert doc is not None and doc["status"] == "conflict" and doc["conflicting_receipt_id"] == b.id.hex()
        assert doc["receipt_id"] == a.id.hex() and bytes.fromhex(doc["receipt_bytes"]) == a.to_bytes()
        held = await restarted.lookup_durable(c.id)  # locked here for another proposer: still locked
        assert held is not None and held["status"] in ("locked", "final")
        assert await restarted.lookup_durable(cluster.receipt("n5", "obj5").id) is None
        assert a.id not in cluster.signed_ids() and not cluster.double_signed()
        nursery.cancel_scope.cancel()


async def sign_one_by_one(cluster: SimCluster, proposer: str, receipts: list[rc.Receipt]) -> None:
    for r in receipts:
        cluster.service(proposer).submit(r)
        await cluster.wait_final({r.id}, members={proposer})


async def test_with_spare_commitments_a_batch_is_signed_in_the_lock_round(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """A lock reply carries a spare commitment for the proposer's next batch; with t − 1 of them the next rc.lock
    names a signer set and each named peer answers with its share: no rc.sign round at all."""
    cluster = SimCluster(tmp_path, 5, seed=41, delay=(0.001, 0.01))
    cluster.seed_ledger()
    receipts = [distinct_receipt(cluster, k) for k in range(8)]
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        proposer = cluster.service("c0")
        await sign_one_by_one(cluster, "c0", receipts)
        c = proposer.counters
        assert c.batches == 8 and c.one_round == 7  # the first batch gathers the spares
        assert c.sessions == 1  # only the first batch needed a ROAST session
        await settle(cluster)
        for r in receipts:
            check_document(cluster.service("c3").lookup(r.id), cluster.group_key)  # type: ignore[arg-type]
        assert len(cluster.roots()) == 1 and not cluster.double_signed()
        nursery.cancel_scope.cancel()


def count_locks(cluster: SimCluster, member: str, asked: dict[str, int]) -> None:
    """Count in ``asked[member]`` every rc.lock ``member`` receives (its handler otherwise unchanged)."""
    lock = cluster.service(member)._on_lock

    async def counted(peer: str, body: dict) -> dict:
        asked[member] = asked.get(member, 0) + 1
        return await lock(peer, body)

    cluster.net.nodes[member].on_request(LOCK, LOCK_REPLY, counted)


async def test_a_one_round_batch_asks_only_its_signer_set_to_lock(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """n = 5, t = 4: the first batch asks every peer (no spares yet); each later batch asks only the t − 1 peers
    named for the one-round path (a hedged request: the fourth is asked only if they fall short or are slow)."""
    cluster = SimCluster(tmp_path, 5, seed=51, delay=(0.001, 0.01))
    cluster.seed_ledger()
    receipts = [distinct_receipt(cluster, k) for k in range(8)]
    asked: dict[str, int] = {}
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        for m in ("c1", "c2", "c3", "c4"):
            count_locks(cluster, m, asked)
        await sign_one_by_one(cluster, "c0", receipts)
        c = cluster.service("c0").counters
        assert c.batches == 8 and c.one_round == 7
        assert sum(asked.values()) == 4 + 3 * 7, asked
        await settle(cluster)
        assert all(r.id in cluster.signed_ids() for r in receipts) and not cluster.double_signed()
        nursery.cancel_scope.cancel()


async def test_a_silent_one_round_signer_costs_one_batch_a_hedge_then_is_left_out(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """A named one-round signer goes silent (its link stays up): that batch asks the other peer after the hedge
    delay and signs with it, well before the lock timeout; the silent member loses its spares, so the batches after
    it sign in one round without it and without waiting."""
    cluster = SimCluster(tmp_path, 5, seed=53, delay=(0.001, 0.01))
    cluster.seed_ledger()
    receipts = [distinct_receipt(cluster, k) for k in range(8)]
    asked: dict[str, int] = {}
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        proposer = cluster.service("c0")
        await sign_one_by_one(cluster, "c0", receipts[:3])
        quickest = min((p for p in proposer._spares if proposer._spares[p]), key=lambda p: proposer._lag[p])

        async def silent(peer: str, body: dict) -> dict:
            await trio.sleep_forever()
            raise AssertionError("unreachable")

        cluster.net.nodes[quickest].on_request(LOCK, LOCK_REPLY, silent)
        for m in ("c1", "c2", "c3", "c4"):
            if m != quickest:
                count_locks(cluster, m, asked)
        took = []
        for r in receipts[3:]:
            t0 = trio.current_time()
            await sign_one_by_one(cluster, "c0", [r])
            took.append(trio.current_time() - t0)
        assert took[0] < proposer.lock_timeout_s / 2, took  # the hedge, not the lock timeout
        assert max(took[1:]) < 0.1, took  # no more waiting for the silent member
        assert proposer.counters.one_round == 2 + 4, proposer.counters  # only the hedged batch lost its round
        assert quickest not in proposer._spares and sum(asked.values()) == 3 * 5, asked
        await settle(cluster)
        assert all(r.id in cluster.signed_ids() for r in receipts) and not cluster.double_signed()
        nursery.cancel_scope.cancel()


async def test_a_bad_share_in_the_lock_round_is_named_and_the_batch_still_signed(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    cluster = SimCluster(tmp_path, 4, seed=43, delay=(0.001, 0.01))
    cluster.seed_ledger()
    cluster.members["c2"].behaviour = "bad_shares"
    cluster.service_options["lock_grace_s"] = 0.2  # c3's late lock replies (below) still count in every batch
    receipts = [distinct_receipt(cluster, k) for k in range(6)]
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        answer_locks_late(cluster, "c3")  # c3 answers last, so the quickest two (the one-round set) hold the liar
        await sign_one_by_one(cluster, "c0", receipts)
        c = cluster.service("c0").counters
        assert c.blamed == {"c2": c.blamed["c2"]} and c.blamed["c2"] >= 1
        assert c.one_round >= 3  # once c2 is named, the one-round path goes on with c0, c1 and c3
        # and no batch waits for a retry: the named liar's lock reply does not count towards the t answers awaited
        assert c.batches == 6 and c.batches_failed == 0
        await settle(cluster)
        for r in receipts:
            doc = cluster.service("c1").lookup(r.id)
            assert doc is not None and "c2" not in doc["signers"]
            check_document(doc, cluster.group_key)
        nursery.cancel_scope.cancel()


async def test_a_restarted_signer_forgot_its_spares_and_signing_falls_back(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    cluster = SimCluster(tmp_path, 4, seed=45, delay=(0.001, 0.01))
    cluster.seed_ledger()
    receipts = [distinct_receipt(cluster, k) for k in range(8)]
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        proposer = cluster.service("c0")
        await sign_one_by_one(cluster, "c0", receipts[:3])
        assert proposer.counters.one_round == 2 and all(proposer._spares.get(p) for p in ("c1", "c2", "c3"))
        for member in ("c1", "c2", "c3"):  # every spare c0 holds is now unknown to its signer
            cluster.crash(member)
            await cluster.restart(member)
        await trio.sleep(3)  # links back up
        refused = sum(cluster.service(m).counters.sign_refused for m in ("c1", "c2", "c3"))
        await sign_one_by_one(cluster, "c0", receipts[3:])
        assert sum(cluster.service(m).counters.sign_refused for m in ("c1", "c2", "c3")) > refused
        assert proposer.counters.one_round >= 5  # the batch after the restarts fell back; later ones did not
        assert all(r.id in cluster.signed_ids() for r in receipts) and not cluster.double_signed()
        nursery.cancel_scope.cancel()


async def test_a_withholding_signer_is_asked_last_so_batches_keep_their_one_round(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """c3 locks everything and never releases a share (nor answers rc.sign): each time it costs a batch its one
    round, or a session its patience, it goes to the back of the line, and the batches after it sign in one round
    with c0, c1 and c2."""
    cluster = SimCluster(tmp_path, 4, seed=47, delay=(0.001, 0.01))
    cluster.seed_ledger()
    cluster.members["c3"].behaviour = "withhold"
    receipts = [distinct_receipt(cluster, k) for k in range(10)]
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        started = trio.current_time()
        await sign_one_by_one(cluster, "c0", receipts)
        c = cluster.service("c0").counters
        print(f"one round {c.one_round}/{c.batches}, sessions {c.sessions}, {trio.current_time() - started:.2f}s")
        assert c.batches == 10 and c.one_round >= 7 and c.sessions <= 4
        assert all(r.id in cluster.signed_ids() for r in receipts) and not cluster.double_signed()
        nursery.cancel_scope.cancel()


async def test_a_receipt_is_acknowledged_only_once_its_own_lock_is_durable(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """A proposer answers "locked" (with the optimistic document) only after its own lock's commit: a crash
    before it must not leave a client holding an optimistic receipt for a lock that was never written (it did:
    the status was set when the lock was decided, and the submitter's handler ran while the commit was in its
    thread)."""
    cluster = SimCluster(tmp_path, 4, seed=41, delay=(0.001, 0.01))
    cluster.seed_ledger()
    first, second = cluster.receipt("n1", "obj1"), cluster.receipt("n2", "obj2")
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        service = cluster.service("c1")
        at_commit: list[list[str]] = []
        commit = service.locks.commit

        def watched_commit() -> None:
            at_commit.append([r.status for r in records])
            commit()

        service.locks.commit = watched_commit  # type: ignore[method-assign]
        records = [service.submit(first), service.submit(second)]
        with trio.fail_after(1):
            while any(r.status == "pending" for r in records):
                await trio.sleep(0.0001)
        assert at_commit == [["pending", "pending"]]  # one commit for the batch, before any acknowledgement
        assert all(r.status in ("locked", "final") and r.optimistic is not None for r in records)
        await cluster.wait_final({first.id, second.id})
        assert [r.status for r in records] == ["final", "final"]
        nursery.cancel_scope.cancel()


async def test_a_lone_receipt_starts_its_batch_at_once_and_waits_for_company_only_behind_a_batch_in_flight(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """With no batch in flight, waiting ``batch_wait_s`` would only add to a lone receipt's latency: its batch
    starts at once. Behind a batch in flight, receipts wait for company and go together."""
    cluster = SimCluster(tmp_path, 4, seed=47, delay=(0.001, 0.002))
    cluster.service_options["batch_wait_s"] = 0.5
    cluster.seed_ledger()
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        for peer in ("c1", "c2", "c3"):
            answer_locks_late(cluster, peer, 0.3)  # the first batch stays in flight for a while
        service = cluster.service("c0")
        started: list[tuple[float, list[bytes]]] = []
        run_batch = service._run_batch

        async def watched(batch: list[rc.Receipt]) -> None:
            started.append((trio.current_time(), [r.id for r in batch]))
            await run_batch(batch)

        service._run_batch = watched  # type: ignore[method-assign]
        first, second, third = (distinct_receipt(cluster, k) for k in range(3))
        t0 = trio.current_time()
        service.submit(first)
        await trio.sleep(0.05)
        service.submit(second)
        await trio.sleep(0.05)
        service.submit(third)
        await cluster.wait_final({first.id, second.id, third.id})
        assert [ids for _, ids in started] == [[first.id], [second.id, third.id]]
        assert started[0][0] - t0 < 0.01  # at once, not 0.5 s later
        assert started[1][0] - (t0 + 0.05) >= 0.5  # the second waited its batch_wait_s, and the third joined it
        nursery.cancel_scope.cancel()


async def test_behind_a_batch_in_flight_the_next_waits_for_it_to_end_unless_it_stalls(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """One batch at a time makes batches larger under load: receipts queued behind a batch in flight go together
    once it ended, not in a batch of their own beside it. A batch in flight far longer than usual (stalled) no
    longer holds them back: they start beside it at ``STALL_FACTOR`` times the usual batch's time."""
    cluster = SimCluster(tmp_path, 4, seed=53, delay=(0.001, 0.002))
    cluster.seed_ledger()
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        service = cluster.service("c0")
        started: list[tuple[float, list[bytes]]] = []
        ended: dict[bytes, float] = {}
        run_batch = service._run_batch

        async def watched(batch: list[rc.Receipt]) -> None:
            started.append((trio.current_time(), [r.id for r in batch]))
            await run_batch(batch)
            ended[batch[0].id] = trio.current_time()

        service._run_batch = watched  # type: ignore[method-assign]
        receipts = [distinct_receipt(cluster, k) for k in range(6)]
        for peer in ("c1", "c2", "c3"):
            answer_locks_late(cluster, peer, 0.1)
        service.submit(receipts[0])
        await cluster.wait_final({receipts[0].id})
        usual = service._batch_s
        assert usual >= 0.1
        t0 = trio.current_time()
        service.submit(receipts[1])
        await trio.sleep(0.01)
        service.submit(receipts[2])
        await trio.sleep(0.05)
        service.submit(receipts[3])
        await cluster.wait_final({r.id for r in receipts[1:4]})
        assert [ids for _, ids in started[1:]] == [[receipts[1].id], [receipts[2].id, receipts[3].id]]
        assert started[1][0] - t0 < 0.01  # nothing in flight: at once
        assert started[2][0] >= ended[receipts[1].id]  # behind it: once it ended
        # A stalled batch: its locks come back far later than usual (yet within the lock timeout).
        for peer in ("c1", "c2", "c3"):
            answer_locks_late(cluster, peer, 0.9)
        usual = service._batch_s
        stall_after = max(rs.STALL_MIN_S, rs.STALL_FACTOR * usual)
        assert stall_after < 0.8
        service.submit(receipts[4])
        await trio.sleep(0.01)
        service.submit(receipts[5])
        await cluster.wait_final({receipts[4].id, receipts[5].id})
        assert [ids for _, ids in started[3:]] == [[receipts[4].id], [receipts[5].id]]
        assert abs(started[4][0] - (started[3][0] + stall_after)) < 0.01  # beside it, once it counted as stalled
        assert started[4][0] < ended[receipts[4].id] - 0.05
        nursery.cancel_scope.cancel()


async def test_a_receipt_whose_own_lock_failed_to_commit_is_not_acknowledged_and_is_refused_again(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """The lock table breaks as the own lock commits (a disk error): the receipt is not locked here, so it is
    never "locked"; its record goes and a waiting submitter stops waiting (POST /receipts answers 503 "not
    locked here durably"), and submitting it again is refused at once: the table is broken, nothing is signed
    blind."""
    cluster = SimCluster(tmp_path, 4, seed=43, delay=(0.001, 0.01))
    cluster.seed_ledger()
    receipt = cluster.receipt("n1", "obj1")
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        service = cluster.service("c1")

        def failing_commit() -> None:
            service.locks.broken = "lock table failed: disk I/O error"
            raise LockTableBroken(service.locks.broken)

        service.locks.commit = failing_commit  # type: ignore[method-assign]
        record = service.submit(receipt)
        with trio.fail_after(5):  # a submitter waiting for the lock (as POST /receipts does) stops at once
            while record.awaiting_lock:
                await record.changed.wait()
        assert receipt.id not in service.records and record.abandoned
        assert record.status == "pending" and record.optimistic is None  # never acknowledged
        with pytest.raises(Unavailable, match="disk I/O error"):
            service.submit(receipt)
        await trio.sleep(2)
        assert receipt.id not in cluster.signed_ids()
        nursery.cancel_scope.cancel()


async def test_a_rival_refused_by_a_lock_that_failed_to_commit_is_not_answered_slot_conflict(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """Rivals A and B for one slot in one batch: the own lock takes A and refuses B, and the commit fails. B was
    settled "conflict" (409 naming A) before the commit, and stayed so, A locked nowhere; submitting B again gave the
    same 409 until a restart (a reviewer's reproduction). Now B's record goes like A's: 503, judged again."""
    cluster = SimCluster(tmp_path, 4, seed=44, delay=(0.001, 0.01))
    cluster.seed_ledger()
    a, b = cluster.receipt("n1", "obj1", reward=1), cluster.receipt("n1", "obj1", reward=2)
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        service = cluster.service("c1")
        seen: dict[str, str] = {}

        def failing_commit() -> None:
            seen["b"] = service.records[b.id].status
            service.locks.broken = "lock table failed: disk I/O error"
            raise LockTableBroken(service.locks.broken)

        service.locks.commit = failing_commit  # type: ignore[method-assign]
        records = [service.submit(a), service.submit(b)]  # (one batch: the second comes within the batch wait)
        with trio.fail_after(5):
            for record in records:
                while record.awaiting_lock:
                    await record.changed.wait()
        assert seen["b"] == "pending"  # (not answered before the commit)
        assert all(r.abandoned and r.status == "pending" for r in records), [r.status for r in records]
        assert a.id not in service.records and b.id not in service.records and service.counters.conflicts == 0
        with pytest.raises(Unavailable, match="disk I/O error"):
            service.submit(b)
        nursery.cancel_scope.cancel()


class DiskFullOnUpdates:
    """A lock table's connection whose UPDATEs fail as on a full disk (reads and lock inserts still work)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __getattr__(self, name: str) -> object:
        return getattr(self.db, name)

    def __enter__(self) -> sqlite3.Connection:
        return self.db.__enter__()

    def __exit__(self, *exc: object) -> object:
        return self.db.__exit__(*exc)  # type: ignore[arg-type]

    def executemany(self, sql: str, rows: object) -> sqlite3.Cursor:
        if sql.startswith("UPDATE"):
            raise sqlite3.OperationalError("database or disk is full")
        return self.db.executemany(sql, rows)  # type: ignore[arg-type]


async def test_a_lock_table_that_fails_in_housekeeping_stops_signing_here_not_the_service(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """Closing the locks of final receipts fails (disk full): the table is broken, so this coordinator refuses
    to sign, says why and keeps answering; the others go on signing. Before, the sqlite3 error took the whole
    service down, and with the disk still full it would again after every restart."""
    cluster = SimCluster(tmp_path, 4, seed=3, delay=(0.001, 0.01))
    cluster.seed_ledger()
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        c0 = cluster.service("c0")
        c0.locks.db = DiskFullOnUpdates(c0.locks.db)  # type: ignore[assignment]
        first = cluster.receipt("n1", "obj1")
        c0.submit(first)
        await cluster.wait_final({first.id})
        await trio.sleep(5)  # housekeeping tries to close its lock
        assert c0.locks.broken is not None and "disk is full" in c0.locks.broken
        with pytest.raises(Unavailable, match="disk is full"):
            c0.submit(cluster.receipt("n2", "obj2"))
        assert c0.lookup(first.id)["status"] == "final"  # type: ignore[index]  # still serving
        later = cluster.receipt("n3", "obj3")
        cluster.service("c1").submit(later)  # three healthy members of four: t = 3 still sign
        await cluster.wait_final({later.id}, members={"c1", "c2", "c3"})
        nursery.cancel_scope.cancel()


def no_point() -> list[bytes]:
    """A nonce commitment whose hiding part is no group element (about half of all 32-byte strings)."""
    for k in range(256):
        try:
            deserialize_element(bytes([k]) * 32, "candidate")
        except GroupError:
            return [bytes([k]) * 32, bytes([k]) * 32]
    raise AssertionError("no invalid encoding found")


async def test_a_signer_whose_commitments_are_no_points_is_named_and_costs_no_batch(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """c2 answers every lock request with commitments that are no group elements. Each honest signer of a session
    with one of them refused it and was left without a fresh commitment, so batches waited out their deadline
    (~5 s) and c2 was never named. Now the proposer checks a session before asking anyone: c2 is named, and every
    batch is signed at once by the others."""
    cluster = SimCluster(tmp_path, 4, seed=3, delay=(0.001, 0.01))
    cluster.seed_ledger()
    liar = "c2"
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        honest_lock = cluster.service(liar)._on_lock

        async def lock(peer: str, body: dict) -> dict:
            reply = await honest_lock(peer, body)
            for part in ("commitment", "spare"):
                if reply[part]:
                    reply[part] = no_point()
            return reply

        cluster.net.nodes[liar].on_request(LOCK, LOCK_REPLY, lock)
        for honest in ("c1", "c3"):
            answer_locks_late(cluster, honest)  # so that c2's reply is among the first t
        proposer = cluster.service("c0")
        receipts = [distinct_receipt(cluster, k) for k in range(12)]
        for r in receipts:
            proposer.submit(r)
            await trio.sleep(1.0)
        await cluster.wait_final({r.id for r in receipts}, timeout=30)
        assert proposer.counters.blamed == {liar: 1} and proposer.counters.batches_failed == 0
        assert max(proposer.latencies) < 1.0, proposer.latencies
        assert cluster.service("c1").counters.sign_refused == cluster.service("c3").counters.sign_refused == 0
        nursery.cancel_scope.cancel()


async def test_a_proposer_does_not_take_over_its_own_batch_while_signing_it(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """A batch may take longer than the takeover delay (a slow signer: up to the lock and signing timeouts):
    the proposer's own housekeeping must not propose it a second time meanwhile (twice the work, two roots)."""
    cluster = SimCluster(tmp_path, 4, seed=5, delay=(0.001, 0.01))
    cluster.seed_ledger()
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        proposer = cluster.service("c0")
        sign = proposer._sign

        async def slow_sign(*args: object) -> object:
            await trio.sleep(3 * proposer.takeover_s)
            return await sign(*args)  # type: ignore[arg-type]

        proposer._sign = slow_sign  # type: ignore[method-assign]
        receipt = cluster.receipt("n1", "obj1")
        proposer.submit(receipt)
        await cluster.wait_final({receipt.id}, timeout=10 * proposer.takeover_s)
        assert proposer.counters.takeovers == 0 and proposer.counters.batches == 1
        nursery.cancel_scope.cancel()


def bare_service(batch_max: int, run: Any) -> ReceiptService:
    """A ReceiptService with only what its batcher uses, whose ``_run_batch`` is ``run``."""
    service = ReceiptService.__new__(ReceiptService)
    service.batch_max, service.batch_wait_s = batch_max, 0.002
    service._inflight = trio.Semaphore(2)
    service._queue, service._queued, service._signing = [], set(), set()
    service._queue_wake = trio.Event()
    service._flights, service._batch_s = {}, 0.1
    service._run_batch = run  # type: ignore[method-assign]
    return service


async def test_a_batch_counts_as_in_flight_before_its_task_runs(autojump_clock: trio.testing.MockClock) -> None:
    """Receipts left in the queue behind a full batch: the batcher reached its next wait before the batch's task
    had registered it, saw nothing in flight and started the next batch beside it (a reviewer's run: 112 times in
    200)."""
    for _ in range(50):
        starts: list[float] = []

        async def run(batch: list[Any], starts: list[float] = starts) -> None:
            starts.append(trio.current_time())
            await trio.sleep(0.1)

        service = bare_service(4, run)
        service._queue = [types.SimpleNamespace(id=bytes([i]), to_bytes=lambda: b"r") for i in range(5)]  # type: ignore[misc]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(service._batcher, nursery)
            await trio.sleep(0.5)
            nursery.cancel_scope.cancel()
        assert starts[1] - starts[0] == pytest.approx(0.1)  # after the first ended, never beside it


async def test_a_stalled_batch_counts_as_the_stall_point_at_most_in_the_usual_time(
        autojump_clock: trio.testing.MockClock) -> None:
    """Stalled batches (10 s each, against a usual 0.1 s) fed the usual time, and so the stall point, until stalls
    no longer counted as stalls (a reviewer's note). Each counts as the stall point at most."""
    durations = iter([10.0] * 5)

    async def run(batch: list[Any]) -> None:
        await trio.sleep(next(durations))

    service = bare_service(1, run)
    for k in range(5):
        await service._run_batch_released([types.SimpleNamespace(id=bytes([k]))])  # type: ignore[list-item]
    # without the cap: 0.1 -> 1.34 -> 2.42 -> ... ; with it each step is at most x(1 + (4 - 1) / 8)
    assert service._batch_s == pytest.approx(0.1 * (1 + 3 / 8) ** 5)



async def test_receipts_given_up_as_rejected_are_kept_to_the_latest_few(
        tmp_path: Path, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """One client's receipts of nodes registered nowhere (not yet valid), each given up after NOT_YET_GIVE_UP_S and
    kept as a rejected record, filled the records up to ``max_records`` (200,000: ~360 MiB; a reviewer's
    measurement). The latest MAX_REJECTED_RECORDS of them answer why; older ones are forgotten (404)."""
    import nacl.signing

    import consensus.receipt_service as receipt_service
    from deploy.simulation import NOW

    monkeypatch.setattr(receipt_service, "MAX_REJECTED_RECORDS", 50)
    cluster = SimCluster(tmp_path, 4, seed=3)
    cluster.seed_ledger()
    key = nacl.signing.SigningKey(b"\x07" * 32)
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        service = cluster.service("c1")
        sent = []
        for k in range(120):
            r = rc.sign_as_node(key, receipt_type="storage", node_id=f"ghost{k}", subject="ab" * 32, epoch=EPOCH,
                                usage_proof_hash=f"{k:064x}", execution_commitment=None, reward_base=1,
                                submitter_address="ab" * 20, timestamp=int(NOW))
            assert service.submit(r).status == "pending"
            sent.append(r)
        await trio.sleep(receipt_service.NOT_YET_GIVE_UP_S + 5)
        kept = [r for r in sent if r.id in service.records]
        assert len(kept) == 50 and all(service.records[r.id].status == "rejected" for r in kept)
        assert service.status()["by_status"] == {"rejected": 50}
        # the oldest kept, submitted again and rejected again, is the latest: its new record stays (its first
        # entry dropped it, newest first: a regression review)
        assert service.submit(kept[0]).status == "pending"
        await trio.sleep(receipt_service.NOT_YET_GIVE_UP_S + 5)
        assert kept[0].id in service.records and all(service.records[r.id].status == "rejected" for r in kept)
        assert service.status()["by_status"] == {"rejected": 50}
        nursery.cancel_scope.cancel()

async def test_a_failing_outbox_while_publishing_a_signed_batch_is_retried_not_fatal(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """One "database or disk is full" as the proposer stores its signed batch escaped into the coordinator's nursery
    and took it down (a reviewer's reproduction). It is retried with backoff; the batch reaches every member."""
    cluster = SimCluster(tmp_path, 4, seed=2, delay=(0.001, 0.01))
    cluster.seed_ledger()
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        member = cluster.members["c0"]
        real = member.outbox._insert

        def full_disk_once(*args: object) -> list[int]:
            member.outbox._insert = real  # type: ignore[method-assign]
            raise sqlite3.OperationalError("database or disk is full")

        member.outbox._insert = full_disk_once  # type: ignore[method-assign]
        receipt = cluster.receipt("n1", "obj1")
        record = cluster.service("c0").submit(receipt)
        await cluster.wait_final({receipt.id})
        assert record.status == "final"
        with trio.fail_after(10):  # every member serves it (rc.final went out once it was durable)
            while not all(cluster.service(m).view.signed_document(receipt.id) for m in cluster.members):
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()


async def test_receipts_of_unknown_nodes_have_a_quota_of_their_own_and_forged_ones_are_refused_at_once(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """8,192 receipts of nodes not registered here (NOT_YET, kept up to 30 s) took the whole queue: valid receipts
    were refused with 503 for as long as the flood went on (a reviewer's reproduction). Forged ones (a signature that
    does not verify under the key they carry) are now refused at once, and the self-signed ones of unknown nodes get
    a quota of their own (MAX_NOT_YET)."""
    cluster = SimCluster(tmp_path, 4, seed=9, delay=(0.001, 0.002))
    cluster.seed_ledger()
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        service = cluster.service("c0")
        ghost = nacl.signing.SigningKey(bytes(32))

        def unknown(k: int, signed: bool = True) -> rc.Receipt:
            receipt = rc.sign_as_node(ghost, receipt_type="compute", node_id=f"ghost{k}", subject=f"{k:064x}",
                                      epoch=EPOCH, usage_proof_hash=f"{k:064x}", execution_commitment=[f"{k:064x}"] * 6,
                                      reward_base=1, submitter_address="ab" * 20, timestamp=1)
            if not signed:
                receipt = rc.Receipt.from_wire(receipt.to_bytes() + bytes(64))
            return receipt

        forged = service.submit(unknown(0, signed=False))
        assert forged.status == "rejected" and forged.reason == "the node signature is invalid"
        for k in range(rs.MAX_NOT_YET):
            assert service.submit(unknown(k)).status == "pending"
        with pytest.raises(Unavailable, match="wait for writes not seen here yet"):
            service.submit(unknown(rs.MAX_NOT_YET))
        valid = cluster.receipt("n1", "obj1")
        record = service.submit(valid)  # the room of receipts ready to be signed is untouched
        await cluster.wait_final({valid.id})
        assert record.status == "final"
        nursery.cancel_scope.cancel()


async def test_listing_receipts_looks_at_a_bounded_number_per_request_and_pages_on(
        tmp_path: Path, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """GET /receipts with a filter that matched little walked every known receipt in one go, holding the event loop
    (16 µs a receipt: 16 s at a million; a reviewer's finding). At most SCAN_MAX per request (here 5), the loop's
    turn every SCAN_STEP: a page may hold fewer than ``limit``, and ``next_after`` says where to go on."""
    monkeypatch.setattr(api_receipts, "SCAN_MAX", 5)
    monkeypatch.setattr(api_receipts, "SCAN_STEP", 2)
    cluster = SimCluster(tmp_path, 4, seed=21, delay=(0.001, 0.002))
    cluster.seed_ledger()
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        service = cluster.service("c0")
        receipts = [distinct_receipt(cluster, k) for k in range(12)]
        for r in receipts:
            service.submit(r)
        await cluster.wait_final({r.id for r in receipts})
        app = QuartTrio(__name__)

        class Refused(Exception):
            def __init__(self, status: int, body: dict[str, Any]) -> None:
                self.status, self.body = status, body

        api_receipts.register_receipt_routes(app, service, None, lambda f: f, lambda: None,  # type: ignore[arg-type]
                                             Refused, lambda node: None)
        client = app.test_client()
        seen: list[str] = []
        after: str | None = None
        pages = 0
        while True:
            query = "/receipts?status=rejected" + (f"&after={after}" if after else "")
            page = await (await client.get(query)).get_json()
            pages += 1
            assert page["receipts"] == []  # nothing matches, ...
            if page["next_after"] is None:
                break
            seen.append(page["next_after"])
            after = page["next_after"]
        assert pages == 3 and seen == sorted(r.id.hex() for r in receipts)[4:10:5]  # ... 5 looked at a request
        final = await (await client.get("/receipts?status=final&limit=100")).get_json()
        assert len(final["receipts"]) == 5 and final["next_after"] is not None
        # a node or epoch filter looks at each receipt's slot first: documents (their Merkle paths) are built only
        # for the receipts it picks (every scanned one's cost ~1 ms each: a reviewer's measurement)
        built: list[bytes] = []
        lookup = service.lookup
        service.lookup = lambda rid: built.append(rid) or lookup(rid)  # type: ignore[method-assign,func-returns-value]
        by_id = {r.id: r for r in receipts}
        scanned = sorted(by_id)[:5]  # SCAN_MAX
        node, epoch = by_id[scanned[0]].node_id, by_id[scanned[0]].epoch
        picked = await (await client.get(f"/receipts?node={node}&epoch={epoch}")).get_json()
        wanted = [rid for rid in scanned if by_id[rid].node_id == node and by_id[rid].epoch == epoch]
        assert sorted(built) == wanted and len(wanted) < len(scanned)
        assert [d["receipt_id"] for d in picked["receipts"]] == [rid.hex() for rid in wanted]
        built.clear()
        assert (await (await client.get("/receipts?node=nobody")).get_json())["receipts"] == [] and built == []
        nursery.cancel_scope.cancel()


async def test_a_receipt_that_lost_its_slot_here_is_not_acknowledged_again(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """A receipt whose lock here was closed for good (it lost its slot to a rival), submitted again after a restart
    or once its record was gone: it was acknowledged "locked" with a fresh optimistic signature, then ended in
    conflict (a reviewer's reproduction). The closed lock decides: a conflict at once, no promise made."""
    cluster = SimCluster(tmp_path, 4, seed=6, delay=(0.001, 0.01))
    cluster.seed_ledger()
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        a, b = cluster.receipt("n3", "obj3", reward=1), cluster.receipt("n3", "obj3", reward=2)
        for member in ("c0", "c1", "c3"):  # b holds the slot on three members: a can only lose
            await cluster.service(member)._on_lock("c1", {"batch": b"B" * 16, "receipts": [b.to_wire()]})
        first = cluster.service("c2").submit(a)
        with trio.fail_after(30):
            while first.status in ("pending", "locked"):
                await trio.sleep(0.01)
        assert first.status == "conflict"
        cluster.crash("c2")
        await cluster.restart("c2")
        await trio.sleep(3)
        service = cluster.service("c2")
        service.records.clear()
        again = service.submit(a)
        statuses = set()
        with trio.fail_after(30):
            while again.status in ("pending", "locked"):
                statuses.add(again.status)
                await trio.sleep(0.001)
        assert again.status == "conflict" and "locked" not in statuses and again.optimistic is None
        nursery.cancel_scope.cancel()


async def test_nonces_offered_for_batches_that_ended_are_let_go(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """Every one-round batch left its lock-reply commitment unused at each signer in the fast set: one more held nonce
    per batch until MAX_NONCES pushed out the oldest, the spares of idle peers first (a reviewer's reproduction).
    Nonces bound to a batch go once the batch's deadline passed, at a signer the proposer asks again or not (the
    fast set is drawn per batch, so a signer left out of the last batches held its stale ones until it was asked)."""
    cluster = SimCluster(tmp_path, 4, seed=3, delay=(0.001, 0.01))
    cluster.seed_ledger()
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        for k in range(40):
            receipt = distinct_receipt(cluster, k)
            cluster.service("c0").submit(receipt)
            await cluster.wait_final({receipt.id}, members={"c0"})
        assert cluster.service("c0").counters.one_round >= 30
        held = {m: cluster.service(m).status()["nonces_held"] for m in ("c1", "c2", "c3")}
        await trio.sleep(cluster.service("c1").batch_deadline_s + 1)
        after = {m: cluster.service(m).status()["nonces_held"] for m in ("c1", "c2", "c3")}
        assert sum(held.values()) >= 60 and max(after.values()) <= 10, (held, after)
        receipt = distinct_receipt(cluster, 40)  # and signing goes on
        cluster.service("c0").submit(receipt)
        await cluster.wait_final({receipt.id}, members={"c0"})
        nursery.cancel_scope.cancel()


async def test_a_member_that_never_locked_a_signed_slot_refuses_its_rivals(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """A member's lock table is its only guard against signing a rival of a slot: one that never locked the slot
    (down while it was signed, or whose table was replaced, say after a new DKG) locked and signed a rival (a
    reviewer's finding). A slot the state holds signed is checked too: the rival is refused, and its submitter gets
    the conflict with the signed receipt's id."""
    async with started(tmp_path, seed=41) as cluster:
        a, b = cluster.receipt("n1", "obj1", reward=10), cluster.receipt("n1", "obj1", reward=20)
        cluster.crash("c3")
        cluster.service("c0").submit(a)
        await cluster.wait_final({a.id}, members={"c0", "c1", "c2"})
        await cluster.restart("c3")
        with trio.fail_after(30):
            while a.id not in cluster.members["c3"].state.ledger.receipts:
                await trio.sleep(0.1)
        c3 = cluster.service("c3")
        verdict, reason = c3.validate(b)
        assert verdict is Verdict.INVALID and a.id.hex() in reason
        reply = await c3._on_lock("c1", {"batch": b"R" * 16, "receipts": [b.to_wire()]})
        # a slot conflict naming the signed receipt (its proposer closes b as one), and no commitment
        assert list(reply["verdicts"]) == [Verdict.CONFLICT] and reply["commitment"] == []
        assert list(reply["conflicts"]) == [(0).to_bytes(4, "big") + a.id]
        record = c3.submit(b)
        assert record.status == "conflict" and record.conflicting_id == a.id
        assert c3.validate(a)[0] is Verdict.OK  # the signed one itself is no rival of itself


async def test_a_lock_held_here_for_a_receipt_whose_rival_got_signed_closes_as_a_conflict(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """c3 locked b; its rival a was signed by the three others. b can never be signed: c3's takeover closes its lock
    as a slot conflict naming a (409 to b's submitter, the rival kept as evidence), not as a plain rejection."""
    async with started(tmp_path, seed=43) as cluster:
        a, b = cluster.receipt("n1", "obj1", reward=10), cluster.receipt("n1", "obj1", reward=20)
        c3 = cluster.service("c3")
        reply = await c3._on_lock("c2", {"batch": b"B" * 16, "receipts": [b.to_wire()]})
        assert list(reply["verdicts"]) == [Verdict.OK]
        cluster.service("c0").submit(a)
        await cluster.wait_final({a.id}, members={"c0", "c1", "c2", "c3"})
        with trio.fail_after(20 * c3.takeover_s):
            while c3.locks.open_locks(10**15):
                await trio.sleep(1)
        doc = await c3.lookup_durable(b.id)
        assert doc is not None and doc["status"] == "conflict"
        assert doc["conflicting_receipt_id"] == a.id.hex()
        assert c3.counters.conflicts >= 1 and not c3.counters.rejected
        rows = c3.locks.db.execute("SELECT conflicting_id FROM conflicts WHERE receipt_id = ?", (b.id,)).fetchall()
        assert [bytes(r[0]) for r in rows] == [a.id]


async def test_a_receipt_signed_with_another_key_is_no_conflict_evidence_against_the_node(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """a is final; anyone re-signing a rival of it with a key of their own (carried in the receipt) got a 409 "slot
    conflict" kept and served as the node's conflict evidence (GET, listings, counters; a reviewer's reproduction).
    It is rejected (its key is not the node's); the node's own rival is still a conflict."""
    async with started(tmp_path, seed=45) as cluster:
        a = cluster.receipt("n1", "obj1", reward=10)
        c0 = cluster.service("c0")
        c0.submit(a)
        await cluster.wait_final({a.id}, members={"c0"})
        forged = rc.sign_as_node(nacl.signing.SigningKey(b"f" * 32), receipt_type="storage", node_id="n1",
                                 subject="obj1", epoch=a.epoch, usage_proof_hash=a.usage_proof_hash.hex(),
                                 execution_commitment=None, reward_base=20, submitter_address="ab" * 20,
                                 timestamp=a.timestamp)
        assert forged.node_signature_valid()  # (under the key it carries)
        record = c0.submit(forged)
        assert record.status == "rejected" and forged.id not in c0.records and c0.counters.conflicts == 0
        rival = cluster.receipt("n1", "obj1", reward=30)  # signed by the node itself
        record = c0.submit(rival)
        assert record.status == "conflict" and record.conflicting_id == a.id and c0.counters.conflicts == 1
        # the other way round: forged first (not the node's key: not yet valid, retried), then the node's receipt
        # of that slot is signed: the retry took it for a conflict (a regression review)
        b = cluster.receipt("n1", "obj2", reward=10)
        early = rc.sign_as_node(nacl.signing.SigningKey(b"g" * 32), receipt_type="storage", node_id="n1",
                                subject="obj2", epoch=b.epoch, usage_proof_hash=b.usage_proof_hash.hex(),
                                execution_commitment=None, reward_base=20, submitter_address="ab" * 20,
                                timestamp=b.timestamp)
        record = c0.submit(early)
        assert record.status == "pending"
        c0.submit(b)
        await cluster.wait_final({b.id}, members={"c0"})
        await trio.sleep(10)  # (its retries)
        assert record.status == "rejected" and c0.counters.conflicts == 1, (record.status, record.reason)


async def test_a_fast_refuser_does_not_cut_short_the_wait_for_a_slower_honest_signer(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """n = 4, t = 3: c3's DA view lags (it answers every lock "not yet" at once), c2 is honest on a slower link.
    The refusal counted as an answer towards t, so the proposer waited only a short grace for c2, dropped its reply
    and failed every batch; only takeovers signed the receipts, seconds later (a reviewer's reproduction)."""
    async with started(tmp_path, seed=45) as cluster:
        slow = cluster.service("c2")._on_lock

        async def slow_lock(peer: str, body: dict[str, Any]) -> dict[str, Any]:
            await trio.sleep(0.3)
            return await slow(peer, body)

        cluster.net.nodes["c2"].on_request(rs.LOCK, rs.LOCK_REPLY, slow_lock)
        cluster.service("c3").validate = lambda r: (Verdict.NOT_YET, "not registered here (yet)")  # type: ignore
        c0 = cluster.service("c0")
        receipts = [cluster.receipt(f"n{k % 2 + 1}", f"obj{k + 1}") for k in range(3)]
        started_at = trio.current_time()
        for r in receipts:
            c0.submit(r)
        await cluster.wait_final({r.id for r in receipts}, members={"c0", "c1", "c2"}, timeout=30)
        assert trio.current_time() - started_at < 2  # well before any takeover (takeover_s)
        assert c0.counters.batches_failed == 0 and c0.counters.takeovers == 0


async def test_a_peer_flooding_lock_requests_pushes_out_only_its_own_nonces(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """c3 sent thousands of lock requests asking for spares: each answer minted a nonce, and MAX_NONCES of them
    pushed out every nonce c1 had offered the honest proposers, whose sign requests c1 then refused (a reviewer's
    reproduction). Nonces are bounded per peer, spares to SPARES per peer, and nothing locked earns no spare."""
    async with started(tmp_path, seed=47) as cluster:
        c1 = cluster.service("c1")
        spare = c1._offer("c0", None)
        for_batch = c1._offer("c2", b"b" * 16)
        reply = await c1._on_lock("c3", {"batch": b"m" * 16, "receipts": [b"\x00" * 70], "spare": 1})
        assert reply["verdicts"] == bytes([Verdict.INVALID]) and reply["spare"] == [] and reply["commitment"] == []
        valid = cluster.receipt("n1", "obj1").to_wire()  # locked once, then "fine" again and again
        for k in range(rs.MAX_NONCES + 100):
            reply = await c1._on_lock("c3", {"batch": k.to_bytes(16, "big"), "receipts": [valid], "spare": 1})
            assert reply["verdicts"] == bytes([Verdict.OK]) and len(reply["spare"]) == 2
        assert spare in c1._nonces and for_batch in c1._nonces
        assert len(c1._nonces) <= rs.MAX_NONCES_PER_PEER + 2
        held = list(c1._nonces._all.values())
        assert tuple(reply["spare"]) in c1._nonces and sum(n.peer == "c3" and n.batch is None for n in held) == 2


def test_the_nonce_table_keeps_its_bounds_and_its_books() -> None:
    table = NonceTable(max_total=10, max_per_peer=4, max_spares=2)
    for k in range(6):
        table.add((b"s", bytes([k])), Nonce((b"", b""), "p", None, k))  # spares of p: the two newest stay
    assert [c for c in [(b"s", bytes([k])) for k in range(6)] if c in table] == [(b"s", b"\x04"), (b"s", b"\x05")]
    for k in range(6):
        table.add((b"b", bytes([k])), Nonce((b"", b""), "p", b"batch", 10 + k))  # p holds at most 4 in all
    # p holds 4 in all: its two spares stay (a batch nonce goes first), and its two newest batch nonces
    assert len(table) == 4 and {(b"s", b"\x04"), (b"s", b"\x05"), (b"b", b"\x04"), (b"b", b"\x05")} == set(
        table._all)
    for peer in "qrs":
        for k in range(4):
            table.add((peer.encode(), bytes([k])), Nonce((b"", b""), peer, b"x", 20 + k))
    assert len(table) == 10  # the oldest went first
    assert table.pop((b"s", b"\x03")) is not None and table.pop((b"s", b"\x03")) is None
    table.drop_stale(stale_before=22, scan=None)
    assert all(n.made >= 22 for c in list(table._all) if (n := table.get(c)) is not None)
    assert {p: len(c) for p, c in table._of_peer.items()} == {
        p: sum(n.peer == p for n in table._all.values()) for p in table._of_peer}


async def test_a_batch_a_member_signed_under_its_own_key_is_no_signed_receipt(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """A lying member publishes a batch under a key of its own holding a genuine receipt a of a slot (the state
    keeps it: it cannot tell the cluster's key). It was served as final and listed (a reviewer's reproduction):
    only batches under the cluster's keys make signed receipts. As a rival of its slot it still counts (safety
    first: see ``signed_rival``), so a node that signed two receipts for one slot gets the second refused."""
    async with started(tmp_path, seed=49) as cluster:
        a, b = cluster.receipt("n1", "obj1", reward=10), cluster.receipt("n1", "obj1", reward=20)
        own = nacl.signing.SigningKey(b"o" * 32)
        own_key, root = bytes(own.verify_key), merkle.root([a.to_bytes()])
        event = ev.make_event(ev.RECEIPT_BATCH, (10**13, 0), "c3", group_key=own_key.hex(), root=root.hex(),
                              tree_size=1, signers="c3", receipts=msgpack.packb([[a.to_bytes(), a.node_signature]],
                                                                                use_bin_type=True),
                              signature=own.sign(rc.batch_message(own_key, root, 1)).signature.hex())
        for m in cluster.members.values():
            assert m.state.apply(event)  # kept by the state (the same on every member)
        c0 = cluster.service("c0")
        assert c0.view.signed_document(a.id) is None and not c0.view.holds(a.id)
        assert a.id not in c0.view.signed_ids() and c0.lookup(a.id) is None
        assert c0.view.signed_rival(b.id, b.slot) == a.id
        c = cluster.receipt("n1", "obj2")
        c0.submit(c)  # and the cluster signs on
        await cluster.wait_final({c.id}, members={"c0", "c1", "c2"})
        doc = c0.lookup(c.id)
        assert doc is not None and doc["status"] == "final" and rc.verify_document(doc, cluster.group_key)[0]


async def test_receipts_signed_under_the_key_of_an_earlier_dkg_stay_signed(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """Counting only batches under the current group key, a new DKG made every receipt signed before it vanish
    (not final, not listed, takeovers blind to it: a reviewer's reproduction). Every key the cluster has held
    counts; a key it never held does not."""
    from deploy.receipt_view import StateLedgerView

    async with started(tmp_path, seed=57) as cluster:
        r = cluster.receipt("n1", "obj1")
        cluster.service("c0").submit(r)
        await cluster.wait_final({r.id}, members={"c0"})
        state = cluster.members["c0"].state
        old = cluster.members["c0"].keys.key
        new = dataclasses.replace(old, group_public_key=bytes(nacl.signing.SigningKey(b"n" * 32).verify_key))
        after_dkg = types.SimpleNamespace(key=new, group_keys=frozenset({old.group_public_key,
                                                                         new.group_public_key}))
        view = StateLedgerView(lambda: state, None, after_dkg)  # type: ignore[arg-type]
        assert view.signed_document(r.id) is not None and view.holds(r.id) and r.id in view.signed_ids()
        c0 = cluster.service("c0")  # and POST /receipts/verify checks such a document against the key it names
        doc = c0.lookup(r.id)
        assert doc is not None
        c0.keys = after_dkg  # type: ignore[assignment]
        app = QuartTrio(__name__)

        async def json_body() -> Any:
            from quart import request
            return await request.get_json()

        api_receipts.register_receipt_routes(app, c0, None, lambda f: f, json_body, Exception,  # type: ignore[arg-type]
                                             lambda node: None)

        async def verify(document: dict[str, Any]) -> dict[str, Any]:
            answer = await app.test_client().post("/receipts/verify", json=document)
            return await answer.get_json()  # type: ignore[no-any-return]

        assert await verify(doc) == {"valid": True, "reason": "valid"}
        stranger = nacl.signing.SigningKey(b"s" * 32)
        forged = {**doc, "group_public_key": bytes(stranger.verify_key).hex()}
        assert (await verify(forged))["valid"] is False
        forgot = types.SimpleNamespace(key=new, group_keys=frozenset({new.group_public_key}))
        blind = StateLedgerView(lambda: state, None, forgot)  # type: ignore[arg-type]
        assert blind.signed_document(r.id) is None and not blind.holds(r.id)
        assert blind.signed_rival(b"x" * 32, r.slot) == r.id  # as a rival it counts whatever its key


async def test_a_receipt_of_an_epoch_begun_on_its_proposers_clock_only_waits_for_the_others(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """At an epoch boundary, a proposer whose clock is a second ahead takes a receipt of the new epoch; members a
    few seconds behind called it invalid (outside their window), and with more than n - t of them the receipt,
    acknowledged as locked, was closed as rejected for good. A receipt of the next epoch that close to its start
    is "not yet": it is signed once their clocks get there."""
    async with started(tmp_path, seed=51) as cluster:
        start_of_next = EPOCH * 3600 - sim.NOW  # seconds from NOW to the next epoch's start
        for m in cluster.members.values():
            m.skew_s = start_of_next - 3  # three seconds before it...
        cluster.members["c0"].skew_s = start_of_next + 1  # ... and c0 a second after it
        r = cluster.receipt("n1", "obj1", epoch=EPOCH + 1)
        c0 = cluster.service("c0")
        assert cluster.service("c1").validate(r)[0] is Verdict.NOT_YET
        record = c0.submit(r)
        assert record.status in ("pending", "locked")
        await cluster.wait_final({r.id}, members={"c0", "c1", "c2", "c3"}, timeout=30)
        far = cluster.receipt("n1", "obj2", epoch=EPOCH + 2)  # a later epoch is still invalid
        assert cluster.service("c1").validate(far)[0] is Verdict.INVALID


async def test_a_receipt_refused_for_good_by_more_than_n_minus_t_for_mixed_reasons_is_closed(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """n = 4, t = 3: c1 holds the slot for a rival (conflict), c2 finds the receipt invalid. Counted apart, neither
    reason reached n - t + 1, and the receipt was proposed again every half second until its epoch left the window
    (a reviewer's finding). Together they mean it can never be signed: it is closed, as a conflict."""
    cluster = SimCluster(tmp_path, 4, seed=53, delay=(0.001, 0.01))
    cluster.seed_ledger()
    cluster.service_options["takeover_s"] = 600.0  # nothing but c0's own batches
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        r, rival = cluster.receipt("n1", "obj1", reward=10), cluster.receipt("n1", "obj1", reward=20)
        c1, c2 = cluster.service("c1"), cluster.service("c2")
        reply = await c1._on_lock("c3", {"batch": b"V" * 16, "receipts": [rival.to_wire()]})
        assert list(reply["verdicts"]) == [Verdict.OK]
        honest = c2.validate
        c2.validate = lambda x: (Verdict.INVALID, "the node signature is invalid") if x.id == r.id else honest(x)  # type: ignore[method-assign]
        c0 = cluster.service("c0")
        record = c0.submit(r)
        with trio.fail_after(10):
            while record.status in ("pending", "locked"):
                await trio.sleep(0.1)
        assert record.status == "conflict" and record.conflicting_id == rival.id
        batches = c0.counters.batches
        await trio.sleep(10)
        assert c0.counters.batches == batches  # not proposed again
        assert c0.locks.open_locks(10**15) == []
        nursery.cancel_scope.cancel()


async def test_a_receipt_in_a_batch_in_flight_is_not_queued_again_by_its_retry(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """A receipt due for a retry while a batch in flight here holds it (a takeover's) was queued for another batch
    beside it: two batches signed it (a reviewer's reading). The retry waits for the batch in flight."""
    async with started(tmp_path, seed=55) as cluster:
        c0 = cluster.service("c0")
        r = cluster.receipt("n1", "obj1")
        c0._record(r)
        c0._signing.add(r.id)  # as a takeover's batch in flight holds it
        c0._retry[r.id] = trio.current_time()
        await trio.sleep(3 * rs.NOT_YET_RETRY_S)
        assert r.id not in c0._queued and r.id in c0._retry and c0.counters.batches == 0
        c0._signing.discard(r.id)  # the batch ended without it signed: the retry queues it now
        await cluster.wait_final({r.id}, members={"c0"}, timeout=10)


@pytest.mark.parametrize("wait_ms", [4000, 2000])
async def test_wait_ms_bounds_the_whole_wait_of_a_submission(
        tmp_path: Path, autojump_clock: trio.testing.MockClock, wait_ms: int) -> None:
    """POST /receipts?wait_ms=N waited for the receipt's own lock first (up to 10 s), then N more: N did not bound
    the answer's time (a reviewer's reading). The lock's wait counts in N; a lock slower than N (2000 here) answers
    202 at once, not a 500 for a negative timeout (a reviewer's find)."""
    async with started(tmp_path, seed=59) as cluster:
        c0 = cluster.service("c0")
        for member in ("c1", "c2", "c3"):  # never signable: it stays locked here
            cluster.service(member).validate = lambda r: (Verdict.NOT_YET, "not here yet")  # type: ignore
        lock_own = c0._lock_own

        async def slow_lock(batch: list[rc.Receipt], batch_id: bytes) -> Any:
            await trio.sleep(3)
            return await lock_own(batch, batch_id)

        c0._lock_own = slow_lock  # type: ignore[method-assign]
        app = QuartTrio(__name__)

        async def json_body() -> Any:
            from quart import request
            return await request.get_json()

        api_receipts.register_receipt_routes(app, c0, None, lambda f: f, json_body, Exception,  # type: ignore[arg-type]
                                             lambda node: None)
        r = cluster.receipt("n1", "obj1")
        started_at = trio.current_time()
        answer = await app.test_client().post(f"/receipts?wait_ms={wait_ms}", json=r.to_json())
        took = trio.current_time() - started_at
        assert answer.status_code == 202 and (await answer.get_json())["status"] == "locked"
        assert 3 <= took <= max(3, wait_ms / 1000) + 0.5, took
