"""A signer's guarantees, driven directly through its handlers: a share only for a batch locked here to
exactly those receipts, every commitment used once and bound to the proposer it was offered to, none honoured
after a restart, and no signing at all with a lost or corrupt lock table (never sign blind)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from consensus import frost
from consensus import receipts as rc
from consensus.lockstore import LockStore, LockTableBroken
from consensus.receipt_service import ReceiptService, Unavailable, named_rival
from consensus.slots import Decision, Verdict
from deploy.simulation import EPOCH, SimCluster
from node import merkle
from tests.test_receipt_sim import distinct_receipt


def sign_request(batch: bytes, receipts: list[rc.Receipt], commitments: dict[int, tuple[bytes, bytes]]) -> dict:
    ids = sorted(commitments)
    return {"batch": batch, "ids": b"".join(r.id for r in receipts), "session": 0, "signers": bytes(ids),
            "hiding": [commitments[i][0] for i in ids], "binding": [commitments[i][1] for i in ids]}


async def lock_and_commit(signer: ReceiptService, proposer: str, batch: bytes, receipts: list[rc.Receipt]
                          ) -> tuple[bytes, bytes]:
    reply = await signer._on_lock(proposer, {"batch": batch, "receipts": [r.to_wire() for r in receipts]})
    assert list(reply["verdicts"]) == [Verdict.OK] * len(receipts), reply["reasons"]
    return reply["commitment"][0], reply["commitment"][1]


def others(cluster: SimCluster, signer: ReceiptService, n: int = 2) -> dict[int, tuple[bytes, bytes]]:
    """Commitments of n other members (their nonces are irrelevant here)."""
    out = {}
    for m in cluster.members.values():
        key = m.keys.key
        assert key is not None
        if key.identifier != signer.keys.key.identifier and len(out) < n:  # type: ignore[union-attr]
            out[key.identifier] = frost.commit(key.secret_share)[1]
    return out


@pytest.fixture
async def cluster(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> Any:
    c = SimCluster(tmp_path, 4, seed=21)
    c.seed_ledger()
    async with trio.open_nursery() as nursery:
        await c.start(nursery)
        yield c
        nursery.cancel_scope.cancel()


async def test_a_share_is_released_once_per_commitment_and_only_to_its_proposer(cluster: SimCluster) -> None:
    signer = cluster.service("c2")
    receipts = [cluster.receipt("n1", "obj1"), cluster.receipt("n2", "obj2")]
    batch = b"B" * 16
    mine = await lock_and_commit(signer, "c0", batch, receipts)
    commitments = {signer.keys.key.identifier: mine, **others(cluster, signer)}  # type: ignore[union-attr]
    request = sign_request(batch, receipts, commitments)
    stolen = await signer._on_sign("c1", request)  # another member replaying c0's request
    assert stolen["share"] == b"" and "commitment" in stolen["error"]
    first = await signer._on_sign("c0", request)
    assert len(first["share"]) == 32 and len(first["commitment"]) == 2
    key = signer.keys.key
    assert key is not None
    message = rc.batch_message(key.group_public_key, merkle.root([r.to_bytes() for r in receipts]), 2)
    assert frost.verify_signature_share(key.identifier, key.public_share, first["share"], commitments, message,
                                        key.group_public_key)
    again = await signer._on_sign("c0", request)  # the same commitment twice: never
    assert again["share"] == b"" and "already used" in again["error"]


async def test_a_commitment_offered_for_one_batch_signs_no_other(cluster: SimCluster) -> None:
    """A commitment c0 was offered for batch A, used in a sign request for its batch B (both locked here): refused;
    for A it signs (a planted bug that ignored the batch passed every test: a reviewer's finding)."""
    signer = cluster.service("c2")
    a_receipts, b_receipts = [cluster.receipt("n1", "obj1")], [cluster.receipt("n2", "obj2")]
    for_a = await lock_and_commit(signer, "c0", b"A" * 16, a_receipts)
    await lock_and_commit(signer, "c0", b"B" * 16, b_receipts)
    commitments = {signer.keys.key.identifier: for_a, **others(cluster, signer)}  # type: ignore[union-attr]
    refused = await signer._on_sign("c0", sign_request(b"B" * 16, b_receipts, commitments))
    assert refused["share"] == b"" and "commitment" in refused["error"]
    signed = await signer._on_sign("c0", sign_request(b"A" * 16, a_receipts, commitments))
    assert len(signed["share"]) == 32


async def test_no_share_for_a_receipt_not_locked_here_or_locked_to_another(cluster: SimCluster) -> None:
    signer = cluster.service("c3")
    a, b = cluster.receipt("n1", "obj1", reward=1), cluster.receipt("n1", "obj1", reward=2)  # one slot
    mine = await lock_and_commit(signer, "c0", b"X" * 16, [a])
    commitments = {signer.keys.key.identifier: mine, **others(cluster, signer)}  # type: ignore[union-attr]
    refused = await signer._on_sign("c0", sign_request(b"X" * 16, [b], commitments))
    assert refused["share"] == b"" and "not every receipt" in refused["error"]
    reply = await signer._on_lock("c1", {"batch": b"Y" * 16, "receipts": [b.to_wire()]})
    assert list(reply["verdicts"]) == [Verdict.CONFLICT] and reply["conflicts"] == [(0).to_bytes(4, "big") + a.id]
    assert reply["commitment"] == []  # nothing to sign: no nonce handed out
    assert signer.locks.conflict_for(b.id) == a.id  # the evidence is kept


async def test_after_a_restart_no_earlier_commitment_is_honoured_and_locks_are_kept(cluster: SimCluster) -> None:
    before = cluster.service("c1")
    receipts = [cluster.receipt("n4", "obj4")]
    mine = await lock_and_commit(before, "c0", b"R" * 16, receipts)
    commitments = {before.keys.key.identifier: mine, **others(cluster, before)}  # type: ignore[union-attr]
    cluster.crash("c1")
    await cluster.restart("c1")
    after = cluster.service("c1")
    assert after is not before and after.locks.holds([receipts[0].id]) is not None  # the lock survived
    reply = await after._on_sign("c0", sign_request(b"R" * 16, receipts, commitments))
    assert reply["share"] == b"" and "commitment" in reply["error"]


async def test_a_one_round_share_made_while_the_lock_commits_is_dropped_when_the_commit_fails(
        cluster: SimCluster) -> None:
    """A signer named in an rc.lock's one-round set makes its share while its lock commits (the fsync overlaps
    the signing work): the share leaves only once the lock is durable. When the commit fails, the reply carries
    no share and no lock, and the table is broken (no more signing)."""
    signer = cluster.service("c2")
    me = signer.keys.key.identifier  # type: ignore[union-attr]

    async def spare(batch: bytes) -> tuple[bytes, bytes]:  # a spare commitment for c0's next batch
        offered = await signer._on_lock("c0", {"batch": batch, "receipts": [distinct_receipt(
            cluster, batch[0]).to_wire()], "spare": 1})
        return offered["spare"][0], offered["spare"][1]

    async def one_round(batch: bytes, receipt: rc.Receipt, mine: tuple[bytes, bytes]) -> dict[str, Any]:
        commitments = {me: mine, **others(cluster, signer)}
        ids = sorted(commitments)
        return await signer._on_lock("c0", {"batch": batch, "receipts": [receipt.to_wire()],
                                            "fast_signers": bytes(ids), "fast_hiding": [commitments[i][0] for i in ids],
                                            "fast_binding": [commitments[i][1] for i in ids]})

    spares = [await spare(bytes([k]) * 16) for k in (1, 2)]
    released = signer.counters.shares_released
    durable = await one_round(b"D" * 16, cluster.receipt("n1", "obj1"), spares[0])
    assert list(durable["verdicts"]) == [Verdict.OK] and len(durable["share"]) == 32  # the control
    assert signer.counters.shares_released == released + 1

    commits: list[str] = []

    def failing_commit() -> None:
        commits.append("failed")
        signer.locks.broken = "lock table failed: disk I/O error"
        raise LockTableBroken(signer.locks.broken)

    async def slow_disk(fn: Any, *args: Any) -> Any:  # the commit takes a while, as an fsync does
        await trio.sleep(0.01)
        return fn(*args)

    signer.locks.commit = failing_commit  # type: ignore[method-assign]
    signer.run_blocking = slow_disk
    made: list[bytes] = []
    fast_share = signer._fast_share
    signer._fast_share = lambda *args: made.append(fast_share(*args)) or made[-1]  # type: ignore[method-assign]
    receipt = cluster.receipt("n2", "obj2")
    failed = await one_round(b"F" * 16, receipt, spares[1])
    assert commits == ["failed"] and len(made) == 1 and len(made[0]) == 32  # decided, share made, commit failed
    assert failed["share"] == b"" and list(failed["verdicts"]) == [Verdict.NOT_YET]
    assert "disk I/O error" in failed["reasons"][0] and failed["commitment"] == []
    assert signer.counters.shares_released == released + 1  # the dropped share was never released
    assert receipt.id not in signer._locked


async def test_a_lock_request_cancelled_while_its_lock_commits_leaves_it_durable_and_the_table_usable(
        cluster: SimCluster) -> None:
    """The dispatcher's handler deadline (or a shutdown) cancels an rc.lock while its lock commits: the commit
    still runs to its end. A transaction left open would take every later lock into it, never durable, and
    the next lock's BEGIN would break the table."""
    signer = cluster.service("c2")

    async def slow_disk(fn: Any, *args: Any) -> Any:  # the commit takes a while, as an fsync does
        await trio.sleep(0.01)
        return fn(*args)

    signer.run_blocking = slow_disk
    first, second = cluster.receipt("n1", "obj1"), cluster.receipt("n2", "obj2")
    t0 = trio.current_time()
    with trio.move_on_after(0.001):  # fires while the commit is under way (the reply may still go out after it)
        await signer._on_lock("c0", {"batch": b"C" * 16, "receipts": [first.to_wire()]})
    assert trio.current_time() - t0 >= 0.01  # the commit ran to its end
    assert not signer.locks.db.in_transaction
    cluster.crash("c2")  # what a restart sees: committed rows only (an open transaction is rolled back)
    await cluster.restart("c2")
    signer = cluster.service("c2")
    assert signer.locks.holds([first.id]) == [first]
    reply = await signer._on_lock("c1", {"batch": b"D" * 16, "receipts": [second.to_wire()]})
    assert list(reply["verdicts"]) == [Verdict.OK] and signer.locks.broken is None


async def test_a_lost_lock_table_stops_signing(tmp_path: Path, cluster: SimCluster) -> None:
    m = cluster.members["c2"]
    cluster.crash("c2")
    (tmp_path / "c2.locks.sqlite").unlink()
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"c2.locks.sqlite{suffix}").unlink(missing_ok=True)
    await cluster.restart("c2")  # the harness opens it with expect_existing=True: this member holds a key share
    service = cluster.service("c2")
    assert m.locks is not None and m.locks.broken is not None and "missing" in m.locks.broken
    with pytest.raises(Unavailable, match="missing"):
        service.submit(cluster.receipt("n1", "obj1"))
    reply = await service._on_lock("c0", {"batch": b"L" * 16, "receipts": [cluster.receipt("n1", "obj1").to_wire()]})
    assert list(reply["verdicts"]) == [Verdict.NOT_YET] and reply["commitment"] == []
    assert "missing" in reply["reasons"][0]
    # and at every start after it: the first one made an empty table in its place, which the next one took for the
    # real one, and this member signed again, a rival of a slot it had locked included (a reviewer's reproduction)
    assert not (tmp_path / "c2.locks.sqlite").exists()
    cluster.crash("c2")
    await cluster.restart("c2")
    assert m.locks.broken is not None and "missing" in m.locks.broken
    reply = await cluster.service("c2")._on_lock("c0", {"batch": b"M" * 16,
                                                         "receipts": [cluster.receipt("n1", "obj1").to_wire()]})
    assert list(reply["verdicts"]) == [Verdict.NOT_YET] and reply["commitment"] == []


async def test_a_member_told_its_data_is_an_older_copy_locks_no_slot_anew_until_those_it_may_have_locked_expire(
        cluster: SimCluster) -> None:
    """``hold_new_locks`` (the coordinator found its own later events on DA): the slots it locked before stay locked
    to their receipts; a free one is "not yet" to a proposer and a client's receipt is refused (503), until every
    epoch a lock of before may name is past the grace: then it locks again."""
    service = cluster.service("c2")
    kept = cluster.receipt("n1", "obj1")
    await lock_and_commit(service, "c0", b"K" * 16, [kept])
    service.hold_new_locks("an older copy")
    status = service.status()["lock_table"]["new_locks_held"]
    assert status is not None and status.startswith("an older copy: this member locks no slot anew until")
    with pytest.raises(Unavailable, match="older copy"):
        service.submit(cluster.receipt("n2", "obj2"))
    reply = await service._on_lock("c0", {"batch": b"L" * 16, "receipts": [kept.to_wire(),
                                                                             cluster.receipt("n2", "obj2").to_wire()]})
    assert list(reply["verdicts"]) == [Verdict.OK, Verdict.NOT_YET] and "older copy" in reply["reasons"][1]
    epoch_now = int(service.clock() // service.epoch_length_s)
    assert service.locks.held_until_ms == (epoch_now + service.epoch_grace + 2) * service.epoch_length_s * 1000
    service.locks.held_until_ms = int(service.clock() * 1000)  # (the hold over: as when the clock gets there)
    assert service.status()["lock_table"]["new_locks_held"] is None
    await lock_and_commit(service, "c0", b"M" * 16, [cluster.receipt("n2", "obj2")])


async def test_a_hold_told_while_a_batch_s_locks_are_uncommitted_waits_its_turn_to_be_kept(
        cluster: SimCluster) -> None:
    """The coordinator tells the hold from its DA reader, at any moment: a batch's locks may be decided and not yet
    committed on the table's connection. Written at once, the hold's transaction met that one and broke the table
    (a regression review's reading); it is kept once the batch lets go of the table."""
    service = cluster.service("c2")
    receipt = cluster.receipt("n1", "obj1")
    async with service._db:  # (as a batch holds the table: its locks decided, the commit to come)
        service.locks.lock_batch([receipt], service.validate, "c0", int(service.clock() * 1000), b"T" * 16,
                                 commit=False)
        service.hold_new_locks("an older copy")
        await trio.sleep(0.5)
        assert service.locks.broken is None and service.locks.db.in_transaction
        service.locks.commit()
    await trio.sleep(0.5)
    kept = dict(service.locks.db.execute("SELECT k, v FROM meta WHERE k LIKE 'held_%'"))
    assert int(bytes(kept["held_until_ms"])) == service.locks.held_until_ms and service.locks.broken is None
    assert service.locks.lock_of(receipt.id) is not None


def test_a_corrupt_lock_table_is_broken(tmp_path: Path) -> None:
    path = tmp_path / "locks.sqlite"
    path.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)
    store = LockStore(path)
    assert store.broken is not None
    fresh = LockStore(tmp_path / "new.sqlite")  # a first start: an empty table is fine
    assert fresh.broken is None and fresh.count() == 0
    fresh.close()  # (one process at a time holds a lock table)
    empty = tmp_path / "empty.sqlite"
    empty.write_bytes(b"")  # a member with a key share: an empty file is a lost table, not a fresh one
    assert LockStore(empty, expect_existing=True).broken is not None and empty.stat().st_size == 0
    assert LockStore(tmp_path / "new.sqlite", expect_existing=True).broken is None  # its own table, reopened


def test_another_member_s_lock_table_copied_in_is_broken(tmp_path: Path) -> None:
    """Another coordinator's locks.sqlite copied into this member's folder was taken as its own: the slots this
    member had locked looked free, and their rivals were locked (a reviewer's reproduction)."""
    me, other = b"m" * 32, b"o" * 32
    theirs = LockStore(tmp_path / "theirs.sqlite", owner=other)
    assert theirs.broken is None
    theirs.close()
    copied = LockStore(tmp_path / "theirs.sqlite", expect_existing=True, owner=me)
    assert copied.broken is not None and "another member's" in copied.broken
    copied.close()
    LockStore(tmp_path / "mine.sqlite").close()  # (a table from before the owner was kept: adopted at its next open)
    for owner, broken in ((me, False), (me, False), (other, True)):
        store = LockStore(tmp_path / "mine.sqlite", expect_existing=True, owner=owner)
        assert (store.broken is not None) is broken, store.broken
        store.close()
    # a new identity starting over (its key share moved aside: a new DKG to come) takes its old table over, locks and
    # all; it was refused for good (a regression review)
    store = LockStore(tmp_path / "mine.sqlite", owner=other)
    assert store.broken is None
    store.close()
    store = LockStore(tmp_path / "mine.sqlite", expect_existing=True, owner=other)
    assert store.broken is None
    store.close()


async def test_a_full_queue_refuses_new_receipts(cluster: SimCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    from consensus import receipt_service

    monkeypatch.setattr(receipt_service, "MAX_QUEUED", 2)
    service = cluster.service("c0")
    service.submit(cluster.receipt("n1", "obj1"))  # no checkpoint in between: the batcher takes nothing yet
    service.submit(cluster.receipt("n2", "obj2"))
    with pytest.raises(Unavailable, match="waiting to be signed"):
        service.submit(cluster.receipt("n3", "obj3"))


async def test_rejections_are_counted_under_a_few_causes_and_latency_is_reported(cluster: SimCluster) -> None:
    service = cluster.service("c1")
    for i in range(100):  # reasons carry ids, and a peer chooses its own: the counter must not grow with them
        service._count_rejected(f"peer says: made-up reason {i}")
        service._count_rejected(f"node n{i} is not registered here (yet)")
    service._count_rejected("the node signature is invalid")
    service._count_rejected("epoch 3 is outside [7, 8]")
    assert service.counters.rejected == {"other": 100, "not_registered": 100, "node_signature": 1, "epoch": 1}
    assert service.status()["final_latency_ms"] is None
    r = cluster.receipt("n5", "obj5")
    service.submit(r)
    await cluster.wait_final({r.id})
    latency = service.status()["final_latency_ms"]
    assert latency is not None and latency["samples"] == 1 and 0 < latency["p50"] == latency["p99"]


async def test_status_counts_kept_as_records_change_match_a_recount(cluster: SimCluster) -> None:
    """``status()`` is polled every second (dashboard, metrics): its records per status and its lock count are
    kept as they change instead of being recounted. They must still equal a recount, through finals, slot
    conflicts, rejections, evictions and not-yet-valid receipts."""
    service = cluster.service("c1")
    service.max_records = 12  # evictions happen below
    for m in cluster.members.values():
        assert cluster.service(m.id).status()["lock_table"]["locks"] == 0  # counted once; from now on, kept
    receipts = [distinct_receipt(cluster, k) for k in range(10)]
    rivals = [cluster.receipt("n1", "obj1", reward=r) for r in (7, 8)]  # one slot: at most one signed
    unknown = cluster.receipt("n1", "obj99")  # its object is not registered: not yet valid, retried
    for r in [*receipts, *rivals, unknown]:
        service.submit(r)
    service.submit(cluster.receipt("n1", "obj2", epoch=1))  # outside the epoch window: rejected, not kept
    await cluster.wait_final({r.id for r in receipts})
    await trio.sleep(1)
    for m in cluster.members.values():
        svc = cluster.service(m.id)
        recount: dict[str, int] = {}
        for record in svc.records.values():
            recount[record.status] = recount.get(record.status, 0) + 1
        assert svc.status()["by_status"] == recount
        rows = svc.locks.db.execute("SELECT count(*) FROM locks").fetchone()[0]
        assert svc.status()["lock_table"]["locks"] == rows > 0
    kept = service.status()["by_status"]
    assert sum(kept.values()) == len(service.records) == 12 and kept.get("final", 0) >= 9


async def test_open_locks_are_paged_so_old_unsignable_ones_cannot_starve_newer_ones(tmp_path: Path,
                                                                                    cluster: SimCluster) -> None:
    """Found by dsdn nemesis (CI, seed 5): a takeover pass read the oldest ``batch_max`` open locks only, so old
    locks nobody can sign (a liar among the exactly t members holding them) would hide every newer one."""
    store = LockStore(tmp_path / "paged.sqlite")
    receipts = [distinct_receipt(cluster, k) for k in range(7)]
    for k, r in enumerate(receipts):
        store.lock_batch([r], lambda _: (Verdict.OK, ""), "c1", now_ms=1000 + k, batch=bytes([k]) * 16)
    pages, after = [], None
    while True:
        page = store.open_locks(10_000, limit=3, after=after)
        pages.append([o.receipt.id for o in page])
        if len(page) < 3:
            break
        after = (page[-1].locked_ms, page[-1].batch, page[-1].idx)
    assert pages == [[r.id for r in receipts[i:i + 3]] for i in (0, 3, 6)]
    assert store.open_locks(1003, limit=10) == store.open_locks(1003, limit=10, after=None)
    assert [o.receipt.id for o in store.open_locks(1003, limit=10)] == [r.id for r in receipts[:3]]


async def test_receipt_ids_are_sorted_once_per_change(cluster: SimCluster) -> None:
    service = cluster.service("c2")
    first = [cluster.receipt(f"n{k}", f"obj{k}", proof=k) for k in range(3)]
    for r in first:
        service.submit(r)
    ids = service.receipt_ids()
    assert ids == sorted(r.id for r in first) and service.receipt_ids() is ids  # unchanged: the same list
    await cluster.wait_final({r.id for r in first})
    await trio.sleep(2)  # the batch event reaches c2's state too
    more = cluster.receipt("n4", "obj4", proof=9)
    service.submit(more)
    assert service.receipt_ids() == sorted([*(r.id for r in first), more.id])
    other = cluster.service("c0")  # signed in the state only (c0 never saw them as records): listed too
    assert set(other.receipt_ids()) >= {r.id for r in first}


async def test_an_uncommitted_own_lock_is_gone_after_a_crash_and_durable_once_committed(tmp_path: Path,
                                                                                         cluster: SimCluster) -> None:
    """A proposer decides its own lock, asks its peers, and commits meanwhile: until the commit nothing is
    durable (a crash then leaves no lock, and no share of its can exist), after it the lock survives."""
    ok = lambda _: (Verdict.OK, "")  # noqa: E731
    a, b = (cluster.receipt("n1", "obj1", proof=p) for p in (1, 2))  # rivals for one slot
    store = LockStore(tmp_path / "own.sqlite")
    assert [d.verdict for d in store.lock_batch([a], ok, "c0", commit=False)] == [Verdict.OK]
    store.close()  # the crash: the open transaction dies with the process
    store = LockStore(tmp_path / "own.sqlite")
    assert store.holds([a.id]) is None and store.holds([b.id]) is None
    store.lock_batch([a], ok, "c0", commit=False)
    store.commit()
    store.commit()  # nothing open any more: nothing to do
    store.close()
    again = LockStore(tmp_path / "own.sqlite")
    assert again.holds([a.id]) == [a]
    assert [d.verdict for d in again.lock_batch([b], ok, "c1")] == [Verdict.CONFLICT]


async def test_a_receipt_made_with_a_key_not_yet_seen_everywhere_waits_then_is_signed(cluster: SimCluster) -> None:
    """A node registered a new key at one coordinator and made a receipt with it at once: the members that had not
    read the write refused it as invalid, more than n - t of them, and it was closed as rejected for good (422,
    then "can no longer be signed" once every member had the key; a reviewer's reproduction). Not yet, not
    invalid."""
    import nacl.signing

    from node import events as ev

    new = nacl.signing.SigningKey(b"\x77" * 32)
    await cluster.write("c0", ev.NODE_KEY, id="n1", public_key=bytes(new.verify_key).hex())
    cluster.nodes["n1"] = new
    r = cluster.receipt("n1", "obj1")
    assert cluster.service("c2").validate(r)[0] is Verdict.NOT_YET  # c2 has not read the new key yet
    # ... but one that fails a rule for good is refused for good, key or not (else a lock on a receipt made with a
    # key the node replaced stayed open, proposed again by every takeover for ever: the regression review's run)
    old = rc.sign_as_node(new, receipt_type="storage", node_id="n1", subject="obj1", epoch=EPOCH - 5,
                          usage_proof_hash="00" * 32, execution_commitment=None, reward_base=1,
                          submitter_address="ab" * 20, timestamp=0)
    verdict, reason = cluster.service("c2").validate(old)
    assert verdict is Verdict.INVALID and "epoch" in reason
    record = cluster.service("c0").submit(r)
    assert record.status != "rejected"
    await cluster.wait_final({r.id}, timeout=60)


async def test_a_receipt_refused_for_a_rival_by_its_own_lock_is_still_a_conflict_after_a_restart(
        cluster: SimCluster) -> None:
    """Answered 409 (its own coordinator's lock held a rival), it read 404 there after a restart: the evidence was
    kept, but looked for among the locks only (a reviewer's reproduction)."""
    a, b = cluster.receipt("n1", "obj1", proof=1), cluster.receipt("n1", "obj1", proof=2)
    c2 = cluster.service("c2")
    await c2._on_lock("c1", {"batch": b"A" * 16, "receipts": [a.to_wire()]})  # c2 locked a for c1's batch
    c2.submit(b)
    with trio.fail_after(10):
        while (c2.lookup(b.id) or {}).get("status") != "conflict":
            await trio.sleep(0.05)
    cluster.crash("c2")
    await cluster.restart("c2")
    doc = await cluster.service("c2").lookup_durable(b.id)
    assert doc is not None and doc["status"] == "conflict" and doc["conflicting_receipt_id"] == a.id.hex()
    assert "optimistic" not in doc


async def test_a_takeover_signs_each_batch_as_it_was_locked_whatever_the_page_size(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """A dead proposer's two batches locked at the others were read in pages of batch_max locks: a page boundary
    cut the second in two, each part signed as a batch of its own, under other roots (a reviewer's
    reproduction). Same receipts, same root."""
    cluster = SimCluster(tmp_path, 4, seed=11, delay=(0.001, 0.01))
    cluster.service_options = {"batch_max": 4}
    cluster.seed_ledger()
    first = [cluster.receipt(f"n{k}", "obj1") for k in range(3)]
    second = [cluster.receipt(f"n{k}", "obj2") for k in range(3)]
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        cluster.crash("c1")  # the proposer, dead after its peers locked its two batches
        for m in ("c0", "c2", "c3"):
            for batch_id, batch in ((b"1" * 16, first), (b"2" * 16, second)):
                await cluster.service(m)._on_lock("c1", {"batch": batch_id, "receipts": [r.to_wire() for r in batch]})
        await cluster.wait_final({r.id for r in first + second}, timeout=120, members={"c0", "c2", "c3"})
        c0 = cluster.service("c0")
        for batch in (first, second):
            roots = {c0.lookup(r.id)["batch"]["root"] for r in batch}  # type: ignore[index]
            assert roots == {merkle.root([r.to_bytes() for r in batch]).hex()}
        nursery.cancel_scope.cancel()
    cluster.close()


def test_the_rival_named_is_the_one_most_refusers_name() -> None:
    """From a review: the rival id a submitter saw in its 409 (and the evidence kept) was taken from the first CONFLICT
    reply, so a lying member answering first chose it over the honest members'."""
    real, fake = b"\x01" * 32, b"\xee" * 32
    rid = b"\x02" * 32

    def conflict(rival: bytes | None) -> Decision:
        return Decision(rid, Verdict.CONFLICT, "slot conflict", rival)

    assert named_rival([conflict(fake), conflict(real), conflict(real)]) == real
    assert named_rival([Decision(rid, Verdict.INVALID, "bad"), conflict(None), conflict(real)]) == real
    assert named_rival([conflict(fake), conflict(real)]) == fake  # (a tie: the first named; see the note)
    assert named_rival([Decision(rid, Verdict.INVALID, "bad")]) is None


async def test_past_max_records_settled_records_go_before_ones_still_in_flight(cluster: SimCluster) -> None:
    """Records past ``max_records`` went oldest first, whatever their status: a receipt acknowledged a moment
    before (still waiting for a write, or locked and not final) answered 404, and a submitter waiting for it was
    never woken. Settled records go first now; the one in flight stays."""
    service = cluster.service("c1")
    service.max_records = 6
    waiting = cluster.receipt("n1", "obj99")  # its object is not registered (yet): in flight, retried
    assert service.submit(waiting).status == "pending"
    receipts = [distinct_receipt(cluster, k) for k in range(12)]
    for k in range(0, 12, 2):
        for r in receipts[k:k + 2]:
            service.submit(r)
        await cluster.wait_final({r.id for r in receipts[k:k + 2]})
    assert len(service.records) == 6 and waiting.id in service.records
    doc = service.lookup(waiting.id)
    assert doc is not None and doc["status"] == "pending"
    assert [r.id for r in receipts[-5:]] == [rid for rid in service.records if rid != waiting.id]


async def test_when_the_scanned_records_are_all_in_flight_the_oldest_goes_not_the_new_one(
        cluster: SimCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past EVICTION_SCAN records in flight the oldest goes (a regression review: the record past the scan went,
    the one just submitted when max_records was no more than the scan, answering 404 at once)."""
    from consensus import receipt_service

    monkeypatch.setattr(receipt_service, "EVICTION_SCAN", 4)
    service = cluster.service("c1")
    service.max_records = 4
    waiting = [cluster.receipt(f"n{k}", "obj99") for k in range(1, 6)]  # objects not registered: all in flight
    for r in waiting:
        assert service.submit(r).status == "pending"
    assert set(service.records) == {r.id for r in waiting[1:]}
