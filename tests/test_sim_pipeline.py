"""The simulator's members run a coordinator's real DA pipeline (outbox → publisher → in-memory DA → consumer):
the in-memory DA's outages and inclusion lag, a crash right after a blob is on DA (posted again after the
restart, applied once), a crash right after an outbox commit (the write survives and reaches DA), a restart
that rebuilds the member's state from its outbox and DA, and planted pipeline bugs the simulator catches (a
publisher losing events DA refused, an outbox forgetting unpublished writes at a restart)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from deploy import simulate
from deploy.sim_da import MemoryDA
from deploy.simulation import SimCluster, started
from node import events as ev
from node.blob import decode_blob
from node.da.base import BlobRef, DAUnavailable
from node.outbox import Outbox
from node.publisher import Publisher


@pytest.fixture(autouse=True)
def quiet() -> Iterator[None]:
    logging.disable(logging.WARNING)  # crashes make the engines warn on purpose
    yield
    logging.disable(logging.NOTSET)


async def test_memory_da_has_inclusion_lag_outages_and_pages(autojump_clock: trio.testing.MockClock) -> None:
    da = MemoryDA()
    da.lag = 1.0
    first = await da.post(b"a")
    await da.post(b"b")
    assert (await da.read_after(0, 10)).items == [] and await da.head() == 0  # not included yet
    await trio.sleep(1.0)
    page = await da.read_after(0, 1)
    assert page.items == [(first, b"a")] and page.cursor == 1 and not page.at_head
    page = await da.read_after(page.cursor, 10)
    assert [d for _, d in page.items] == [b"b"] and page.at_head and await da.get(first) == b"a"
    da.down_until = trio.current_time() + 5
    with pytest.raises(DAUnavailable):
        await da.read_after(0, 10)
    await trio.sleep(5)
    assert await da.head() == 2

    async def outage_during_the_call() -> None:
        await trio.sleep(0.1)
        da.down_until = trio.current_time() + 1

    da.latency = 0.5

    async with trio.open_nursery() as nursery:  # an outage that begins while a post is in flight loses it
        nursery.start_soon(outage_during_the_call)
        with pytest.raises(DAUnavailable):
            await da.post(b"c")
    assert da.posts == 2 and da.refused >= 1


def blobs_of(cluster: SimCluster, member: str) -> list[list[ev.Event]]:
    """The events of every blob on DA that ``member`` signed, in log order."""
    keys = frozenset(cluster.member_keys.values())
    out = []
    for _, data in cluster.da.blobs:
        blob = decode_blob(data, keys, member_ids=cluster.ids)
        if blob.origin == member:
            out.append([ev.Event._make(e) for e in blob.events])
    return out


async def sign_some(cluster: SimCluster, proposer: str, k: int = 3, objects_from: int = 0) -> set[bytes]:
    receipts = [cluster.receipt(f"n{i}", f"obj{objects_from + i}", proof=i) for i in range(k)]
    for r in receipts:
        cluster.service(proposer).submit(r)
    return {r.id for r in receipts}


async def wait_quiet(cluster: SimCluster) -> None:
    with trio.fail_after(60):
        while not cluster.quiet():
            await trio.sleep(0.2)


@pytest.mark.parametrize("step", ["crash_after_post", "crash_after_commit"])
async def test_a_crash_right_after_a_durable_pipeline_step_loses_nothing(
        tmp_path: Path, step: str, autojump_clock: trio.testing.MockClock) -> None:
    cluster = SimCluster(tmp_path, 4, seed=3, delay=(0.001, 0.01))
    cluster.seed_ledger()
    crashed: list[float] = []
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        m = cluster.members["c1"]

        def crash() -> None:
            crashed.append(trio.current_time())
            simulate._crash_now(cluster, "c1", 1.0)

        simulate.CRASH_AFTER[step](cluster, m, crash)
        ids = await sign_some(cluster, "c1")
        with trio.fail_after(60):
            while not crashed:
                await trio.sleep(0.05)
        await cluster.wait_final(ids, timeout=60)
        await wait_quiet(cluster)
        assert m.up and len(cluster.roots()) == 1  # the restarted member rebuilt the same state
        assert ids <= set(m.state.ledger.receipts)
        batches = [e for events in blobs_of(cluster, "c1") for e in events if e.kind == ev.RECEIPT_BATCH]
        on_da = {e.id for e in batches}
        if step == "crash_after_post":  # the blob was on DA, its record was not: posted again after the restart
            assert len(batches) > len(on_da) >= 1
        else:  # committed, never acknowledged, then published by the restarted member
            assert on_da and m.outbox is not None and m.outbox.pending == 0
        assert not cluster.double_signed()
        nursery.cancel_scope.cancel()
    cluster.close()


async def test_a_restarted_member_rebuilds_its_state_from_its_outbox_and_da(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    cluster = SimCluster(tmp_path, 4, seed=8, delay=(0.001, 0.01))
    cluster.seed_ledger()
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        ids = await sign_some(cluster, "c2", 4)
        await cluster.wait_final(ids)
        cluster.da.down_until = trio.current_time() + 30  # nothing reaches DA or is read from it meanwhile
        more = await sign_some(cluster, "c0", 2, objects_from=4)  # other slots, signed while DA is down
        await cluster.wait_final(more, members={"c0"})  # in the proposer's state, heard by the others
        await wait_announced_final(cluster, more, {"c1", "c3"})
        cluster.crash("c2")
        await cluster.restart("c2")
        m = cluster.members["c2"]
        # DA is down: what c2 holds now came from its own outbox only (its batch events), not from DA
        assert m.state.events_applied > 0 and ids <= set(m.state.ledger.receipts)
        assert not m.consumer.caught_up.is_set()  # type: ignore[union-attr]
        await trio.sleep(31)
        await cluster.wait_final(ids | more)
        await wait_quiet(cluster)
        assert len(cluster.roots()) == 1
        nursery.cancel_scope.cancel()
    cluster.close()


def test_a_publisher_that_forgets_events_it_could_not_post_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted bug: when DA refuses a blob, the publisher records its events as published anyway (lost)."""
    publish_once = Publisher.publish_once

    async def lossy(self: Publisher) -> int:
        try:
            return await publish_once(self)
        except DAUnavailable:
            rows = await self.outbox.unpublished(10_000)
            seqs, _ = self.take(rows)
            await self.outbox.mark_published(seqs, BlobRef("primary", 0, b"\0" * 32))  # where nothing is
            raise

    monkeypatch.setattr(Publisher, "publish_once", lossy)
    for seed in range(300):
        _, outcome = simulate.run_seed(seed, dkg="none")
        if outcome.violations:
            print(f"lossy publisher: caught at seed {seed}: {outcome.violations[0]}")
            assert any(v.startswith(("convergence", "liveness")) for v in outcome.violations)
            return
    raise AssertionError("the lossy publisher went unnoticed for 300 seeds")


def test_an_outbox_that_forgets_unpublished_writes_at_a_restart_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted bug: after a restart the publisher only sees events appended since (the acknowledged writes still
    unpublished at the crash stay on the member's disk for ever)."""
    opened = Outbox.__init__
    unpublished = Outbox.unpublished

    def remember_the_start(self: Outbox, *args: Any, **kwargs: Any) -> None:
        opened(self, *args, **kwargs)
        self.born = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM outbox").fetchone()[0]  # type: ignore
        self.pending = 0

    async def only_new(self: Outbox, limit: int, max_bytes: int | None = None) -> list[tuple[int, bytes]]:
        return [(seq, raw) for seq, raw in await unpublished(self, limit, max_bytes) if seq > self.born]  # type: ignore

    monkeypatch.setattr(Outbox, "__init__", remember_the_start)
    monkeypatch.setattr(Outbox, "unpublished", only_new)
    for seed in range(300):
        _, outcome = simulate.run_seed(seed, dkg="none")
        if outcome.violations:
            print(f"forgetful outbox: caught at seed {seed}: {outcome.violations[0]}")
            # a lost node/object write, or a lost receipt batch (its receipts never final on DA)
            assert any("an acknowledged write" in v or v.startswith(("liveness", "convergence"))
                       for v in outcome.violations)
            return
    raise AssertionError("the forgetful outbox went unnoticed for 300 seeds")


async def wait_announced_final(cluster: SimCluster, ids: set[bytes], members: set[str]) -> None:
    """Until every member in ``members`` answers each receipt as final (its proposer's document, or a heard
    batch's)."""
    with trio.fail_after(30):
        while not all((doc := cluster.service(m).lookup(rid)) is not None and doc["status"] == "final"
                      for m in members for rid in ids):
            await trio.sleep(0.05)


def open_lock_ids(cluster: SimCluster, member: str) -> set[bytes]:
    return {o.receipt.id for o in cluster.service(member).locks.open_locks(2**62, 1000, None)}


async def wait_settled(cluster: SimCluster, members: set[str]) -> None:
    """Until these members have published what their outboxes hold and read all of DA."""
    with trio.fail_after(120):
        while not all((m := cluster.members[i]).outbox.pending == 0  # type: ignore[union-attr]
                      and m.consumer.cursor == len(cluster.da.blobs) for i in members):  # type: ignore[union-attr]
            await trio.sleep(0.2)


def batches_on_da(cluster: SimCluster) -> list[ev.Event]:
    return [e for m in cluster.members for events in blobs_of(cluster, m) for e in events
            if e.kind == ev.RECEIPT_BATCH]


@pytest.mark.parametrize("restart_survivors", [False, True])
async def test_a_batch_reported_final_reaches_da_when_its_proposer_dies_with_its_disk(
        tmp_path: Path, restart_survivors: bool, autojump_clock: trio.testing.MockClock) -> None:
    """A proposer reported a batch final, then died for good, its disk lost, before its publisher posted the batch.
    Peers applied announced batches to their state: the receipts were final in every state and snapshot, and in no
    coordinator rebuilt from DA. Now the proposer reports final only once n − t peers keep the batch on disk (as
    heard: served, not applied, their locks still open), and one of them publishes it again once DA has worked for
    a while without bringing it — also after a restart of every survivor (the heard copy is on their disks)."""
    alive = {"c0", "c2", "c3"}
    async with started(tmp_path, seed=5) as cluster:
        cluster.da.down_until = trio.current_time() + 3600  # c1's publisher cannot post the batch
        ids = await sign_some(cluster, "c1", 3)
        await wait_announced_final(cluster, ids, set(cluster.members))
        signatures = {cluster.service("c2").lookup(rid)["signature"] for rid in ids}  # type: ignore[index]
        assert len(signatures) == 1
        for i in alive:  # heard, not applied: DA has not brought it, and the locks stay open until it does
            assert not ids & set(cluster.members[i].state.ledger.receipts)
            assert ids <= open_lock_ids(cluster, i)
        cluster.lose("c1")
        if restart_survivors:
            for i in sorted(alive):
                cluster.crash(i)
                await cluster.restart(i)
            await trio.sleep(1)
        cluster.da.down_until = 0.0
        await cluster.wait_final(ids, members=alive, timeout=300)
        await wait_settled(cluster, alive)
        rebuilt = cluster.rebuilt_from_da()
        assert ids <= set(rebuilt.ledger.receipts)
        assert {e.fields[3] for e in batches_on_da(cluster)} == signatures  # the batch as signed, not signed again
        assert {cluster.members[i].state.root() for i in alive} == {rebuilt.root()}
        assert sum(cluster.service(i).counters.republished for i in alive) == 1  # one member did, the others saw it
        await trio.sleep(1)  # a housekeeping pass
        for i in alive:  # their locks are closed as signed, and the heard copies forgotten
            assert not open_lock_ids(cluster, i) and cluster.service(i).locks.heard() == []


async def test_a_batch_its_proposer_announces_but_never_publishes_is_published_by_another(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """A lying proposer that announces a signed batch and keeps it off DA (connected all along): the honest members
    publish it once DA has worked for them a while without bringing it."""
    async with started(tmp_path, seed=7) as cluster:

        async def withhold(fields: dict[str, Any]) -> bytes:
            return b""

        cluster.service("c2").view.publish_batch = withhold  # type: ignore[method-assign]
        ids = await sign_some(cluster, "c2", 3)
        await wait_announced_final(cluster, ids, set(cluster.members))
        await cluster.wait_final(ids, timeout=300)
        await wait_quiet(cluster)
        batches = batches_on_da(cluster)
        assert len(batches) == 1 and batches[0].origin != "c2"
        assert len(cluster.roots()) == 1 and ids <= set(cluster.rebuilt_from_da().ledger.receipts)
        await trio.sleep(1)
        assert all(not open_lock_ids(cluster, i) for i in cluster.members)


async def test_an_announced_batch_is_not_published_again_while_its_proposer_is_up(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """Through a long DA outage the proposer's outbox holds the batch: nobody else publishes it (one copy on DA)."""
    async with started(tmp_path, seed=6) as cluster:
        cluster.da.down_until = trio.current_time() + 120
        ids = await sign_some(cluster, "c3", 3)
        await wait_announced_final(cluster, ids, set(cluster.members))
        await trio.sleep(121)
        await cluster.wait_final(ids)
        await wait_quiet(cluster)
        batches = batches_on_da(cluster)
        assert len(batches) == 1 and batches[0].origin == "c3"
        assert sum(cluster.service(i).counters.republished for i in cluster.members) == 0
        assert len(cluster.roots()) == 1


async def test_a_member_reading_da_slowly_does_not_publish_again_a_batch_already_there(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """c0 (rank 0) reads DA slowly (45 s a read, never failing): its consumer had reached the head once, which
    counted as "DA works" for good, and it published again a batch that was on DA all along (a reviewer's run).
    A batch is missing only once a read that began long enough after it was heard reached the head without it."""
    async with started(tmp_path, seed=5) as cluster:
        consumer = cluster.members["c0"].consumer
        assert consumer is not None
        real = consumer.poll_once

        async def slow_poll() -> bool:
            await trio.sleep(45)
            return await real()

        consumer.poll_once = slow_poll  # type: ignore[method-assign]
        ids = await sign_some(cluster, "c2", 3)
        await wait_announced_final(cluster, ids, set(cluster.members))
        await cluster.wait_final(ids, timeout=300)
        await trio.sleep(120)
        assert [b.origin for b in batches_on_da(cluster)] == ["c2"]
        assert sum(cluster.service(i).counters.republished for i in cluster.members) == 0


async def test_a_proposer_whose_peers_do_not_keep_its_batch_still_signs_and_keeps_house(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """Peers that never answer rc.signed for one batch (a build that does not know it, a broken lock table): the
    proposer awaited them while holding the batch's in-flight slot, and its housekeeping waited for a slot to take
    over a lock: both froze (a reviewer's run). The slot is free once the batch is signed; takeovers never wait."""
    from consensus.receipt_service import FINAL, FINAL_ACK

    async with started(tmp_path, seed=5) as cluster:
        first = await sign_some(cluster, "c0", 2)
        stuck_ids: set[bytes] = set()
        for i in ("c1", "c2", "c3"):
            service = cluster.service(i)
            keep = service._on_final

            async def never_for_the_first(peer: str, body: dict[str, Any], keep: Any = keep) -> dict[str, Any]:
                heard = cluster.service("c1").view.check_batch(body)
                if heard is not None and set(heard.ids) & first:
                    stuck_ids.update(heard.ids)
                    await trio.sleep_forever()
                return await keep(peer, body)  # type: ignore[no-any-return]

            service.net.on_request(FINAL, FINAL_ACK, never_for_the_first)
        c0 = cluster.service("c0")
        with trio.fail_after(30):
            while not stuck_ids:
                await trio.sleep(0.1)
        # a lock c0 holds for a batch c2 never signed (c2 died after the lock round): a takeover candidate
        orphan = cluster.receipt("n4", "obj4", proof=9)
        c0.locks.lock_batch([orphan], c0.validate, "c2", int(c0.clock() * 1000) - 60_000, b"x" * 16)
        later = await sign_some(cluster, "c0", 2, objects_from=3)
        await cluster.wait_final(later | {orphan.id}, timeout=120)  # signed, and the orphan taken over
        assert all(c0.records[r].status == "locked" for r in first)  # never reported final: not kept
        assert c0._announcing >= first and not c0.view.holds(next(iter(first)))


async def test_a_peer_that_cannot_keep_a_batch_does_not_serve_it_as_final(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """A peer served an announced batch and settled its receipts final before writing it to disk, and even when
    the write failed (a reviewer's finding): "final" was reported by a member that did not keep it."""
    from consensus.lockstore import LockTableBroken

    async with started(tmp_path, seed=5) as cluster:
        cluster.da.down_until = trio.current_time() + 3600  # the batch stays heard only

        def broken(*args: Any, **kwargs: Any) -> None:
            raise LockTableBroken("disk failure")

        c3 = cluster.service("c3")
        c3.locks.keep_heard = broken  # type: ignore[method-assign]
        ids = await sign_some(cluster, "c1", 3)
        await wait_announced_final(cluster, ids, {"c0", "c1", "c2"})
        for rid in ids:
            doc = c3.lookup(rid)
            assert doc is None or doc["status"] != "final"


async def test_a_batch_is_final_only_once_n_minus_t_peers_answer_that_they_keep_it(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """n = 7, t = 5: a signed batch is final at its proposer once n − t = 2 peers answer that they keep it on disk.
    Peers answering kept: 0 (a full disk, a broken lock table) do not count: with one peer keeping it (n − t − 1)
    the receipts stay locked; with a second they are final. (A kept: 0 counted as kept, or waiting for n − t − 1,
    passed every test: a reviewer's planted bugs.)"""
    from consensus.receipt_service import FINAL, FINAL_ACK

    async with started(tmp_path, seed=5, n=7) as cluster:
        keeping = {"c1"}
        for i in ("c1", "c2", "c3", "c4", "c5", "c6"):
            service = cluster.service(i)

            async def kept_or_not(peer: str, body: dict[str, Any], keep: Any = service._on_final,
                                  me: str = i) -> dict[str, Any]:
                return await keep(peer, body) if me in keeping else {"kept": 0}  # type: ignore[no-any-return]

            service.net.on_request(FINAL, FINAL_ACK, kept_or_not)
        c0 = cluster.service("c0")
        ids = await sign_some(cluster, "c0", 2)
        with trio.fail_after(60):
            while not c0._announcing >= ids:
                await trio.sleep(0.1)
        await trio.sleep(2)  # (a few announce rounds; before takeover_s, after which another member signs it too)
        assert all(c0.records[r].status == "locked" for r in ids)  # kept by one peer only: not final
        assert c0._announcing >= ids and not any(c0.view.holds(r) for r in ids)
        keeping.add("c2")
        await cluster.wait_final(ids, timeout=300, members={"c0"})
        assert all(c0.records[r].status == "final" for r in ids)


async def test_a_receipt_one_member_refuses_waits_for_a_member_down_and_is_signed(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """n = 4, t = 3: one member finds a receipt invalid (n − t = 1 refusal) while another is down: the receipt waits
    (two locks are not enough), and once the member is back the three sign it. A receipt is given up only when more
    than n − t refuse it (giving up at n − t passed every test but a slow simulation: a reviewer's planted bug)."""
    from consensus.slots import Verdict

    async with started(tmp_path, seed=5) as cluster:
        r = cluster.receipt("n1", "obj1")
        c1 = cluster.service("c1")
        valid = c1.validate
        c1.validate = lambda x: (Verdict.INVALID, "c1 says no") if x.id == r.id else valid(x)  # type: ignore[method-assign]
        cluster.crash("c3")
        c0 = cluster.service("c0")
        c0.submit(r)
        await trio.sleep(5)
        assert c0.records[r.id].status == "locked" and not c0.counters.rejected  # not given up
        await cluster.restart("c3")
        await cluster.wait_final({r.id}, timeout=120, members={"c0", "c2", "c3"})
        assert c0.records[r.id].status == "final" and not c0.counters.rejected


async def test_a_peer_that_cannot_validate_a_receipt_yet_is_not_asked_to_sign_it(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """n = 4, t = 3: two peers answer "not yet valid" (a write they have not seen): nothing is locked there and no
    nonce handed out, so no signing session starts and none of them is asked for a share; once they see the write,
    the receipt is signed."""
    from consensus.slots import Verdict

    async with started(tmp_path, seed=5) as cluster:
        r = cluster.receipt("n1", "obj1")
        late = {"c1", "c2"}
        for name in late:
            service = cluster.service(name)
            service.validate = (lambda x, valid=service.validate, me=name:  # type: ignore[method-assign]
                                (Verdict.NOT_YET, "not seen yet") if x.id == r.id and me in late else valid(x))
        c0 = cluster.service("c0")
        c0.submit(r)
        await trio.sleep(2)
        assert c0.records[r.id].status in ("pending", "locked") and c0.counters.sessions == 0
        assert all(cluster.service(m).counters.sign_refused == 0 for m in ("c1", "c2", "c3"))
        late.clear()
        await cluster.wait_final({r.id}, timeout=120, members={"c0", "c1", "c2", "c3"})
