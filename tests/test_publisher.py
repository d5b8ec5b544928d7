"""The publisher against a DA layer that refuses some blobs as such (too large for it) and a local store that
fails: every event still reaches DA, exactly the events of the outbox, and the publisher task lives on."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import nacl.signing
import pytest
import trio
import trio.testing

from node import events as ev
from node.blob import HEADER, blob_size
from node.da.base import BlobRef, DAUnavailable
from node.da.blobstore_client import BlobRejected
from node.da.celestia import BlobTooLarge
from node.da.pending import PendingStore
from node.da.router import DARouter
from node.da.status import EMERGENCY, PRIMARY, SECONDARY, DAStatusMachine, Status
from node.outbox import Outbox
from node.publisher import Publisher

KEY = nacl.signing.SigningKey(b"p" * 32)


class SmallLayer:
    """A DA layer (a node or proxy) whose blob limit is below what the publisher was told: larger blobs are
    refused as such (BlobTooLarge), the rest land and are kept."""

    name = "primary"

    def __init__(self, limit: int) -> None:
        self.limit, self.blobs, self.refused = limit, [], 0

    async def post(self, data: bytes) -> BlobRef:
        await trio.sleep(0.001)
        if len(data) > self.limit:
            self.refused += 1
            raise BlobTooLarge(f"blob.Submit: blob of {len(data)} bytes is too large")
        self.blobs.append(data)
        return BlobRef(self.name, len(self.blobs), b"c" * 32)

    def events(self) -> list[bytes]:
        return [raw for blob in self.blobs for raw in msgpack.unpackb(blob[HEADER:])[1]]


def event(k: int) -> ev.Event:
    return ev.make_event(ev.NODE_REGISTERED, (1_000 + k, 0), "c0", id=f"node-{k:04d}", zone="z", addr="h:1",
                         capacity_gb=k + 1)


async def publish(tmp_path: Path, layer: SmallLayer, events: int, run_s: float) -> tuple[Publisher, Outbox]:
    outbox = Outbox(tmp_path / "outbox.sqlite", lambda committed: None, run_blocking=_now)
    publisher = Publisher(outbox, layer, KEY, "c0", max_blob_bytes=1_000_000, interval_s=0.01)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(outbox.run)
        await nursery.start(publisher.run)
        for k in range(events):
            await outbox.append(event(k))
        await trio.sleep(run_s)
        nursery.cancel_scope.cancel()
    return publisher, outbox


async def _now(fn: object, *args: object) -> object:
    return fn(*args)  # type: ignore[operator]


async def test_a_layer_refusing_large_blobs_gets_smaller_ones_and_every_event(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    layer = SmallLayer(limit=2_000)  # ~20 events of ~90 bytes a blob
    publisher, outbox = await publish(tmp_path, layer, 200, run_s=30)
    assert outbox.pending == 0 and layer.refused >= 1 and publisher.cap is not None
    assert layer.events() == [event(k).raw for k in range(200)]  # each once, in order
    assert all(len(blob) <= 2_000 for blob in layer.blobs)


async def test_an_event_no_blob_can_carry_stays_in_the_outbox_and_the_publisher_lives_on(
        tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    layer = SmallLayer(limit=100)  # not even one event fits
    caplog.set_level(logging.ERROR, logger="dsdn.publisher")
    publisher, outbox = await publish(tmp_path, layer, 3, run_s=60)
    assert outbox.pending == 3 and layer.blobs == [] and publisher.cap is not None
    assert len(publisher.take([(k, event(k).raw) for k in range(3)])[0]) == 1  # blobs of one event, refused too
    assert any("a blob size limit below the event" in r.getMessage() for r in caplog.records)
    assert layer.refused < 30  # with backoff, not a tight loop


async def test_a_failing_local_store_is_retried_not_fatal(tmp_path: Path,
                                                         autojump_clock: trio.testing.MockClock) -> None:
    layer = SmallLayer(limit=1_000_000)
    outbox = Outbox(tmp_path / "outbox.sqlite", lambda committed: None, run_blocking=_now)
    publisher = Publisher(outbox, layer, KEY, "c0", max_blob_bytes=1_000_000, interval_s=0.01)  # type: ignore[arg-type]
    mark, failures = outbox.mark_published, [2]

    async def full_disk(*args: object) -> None:
        if failures[0]:
            failures[0] -= 1
            raise sqlite3.OperationalError("database or disk is full")
        await mark(*args)  # type: ignore[arg-type]

    outbox.mark_published = full_disk  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        await nursery.start(outbox.run)
        await nursery.start(publisher.run)
        for k in range(5):
            await outbox.append(event(k))
        await trio.sleep(30)
        nursery.cancel_scope.cancel()
    assert outbox.pending == 0 and publisher.failures == 2 and "disk is full" in (publisher.last_error or "")
    # the blob landed once: its record alone was retried (each post to Celestia is paid; a review)
    assert layer.events() == [event(k).raw for k in range(5)] and publisher.blobs_posted == 1


async def test_an_event_the_primary_refuses_as_too_large_goes_to_the_next_layer(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """Through the router: a primary whose limit is below even a blob of one event refused it for ever, and with it
    every later event (a reviewer's reproduction: 52 refused submits, 50 events stuck, a healthy secondary unused).
    A blob of one event refused as too large goes on to the next layer; the primary is not blamed for it."""
    primary, secondary = SmallLayer(150), SmallLayer(1_000_000)  # (a blob of one event: ~190 bytes)
    secondary.name = SECONDARY
    machine = DAStatusMachine((PRIMARY, SECONDARY))
    pending = PendingStore(tmp_path / "pending.sqlite")
    router = DARouter({PRIMARY: primary, SECONDARY: secondary}, machine, pending, lambda: 0)
    pending._call = _now  # type: ignore[method-assign,assignment]
    _, outbox = await publish(tmp_path, router, 20, 5)  # type: ignore[arg-type]
    assert outbox.pending == 0 and sorted(secondary.events()) == sorted(event(k).raw for k in range(20))
    assert primary.blobs == [] and machine.status is Status.HEALTHY and pending.pending_count == len(secondary.blobs)
    pending.close()


async def test_a_blob_that_landed_on_a_fallback_whose_record_fails_is_recorded_not_posted_again(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """The primary is down, the secondary takes the blob, and recording it for reconciliation fails (a full disk):
    the publisher posted the same blob to the secondary at every retry (241 copies in an hour: a reviewer's
    reproduction). The record alone is retried; once it works, the outbox's follows."""
    primary, secondary = SmallLayer(1_000_000), SmallLayer(1_000_000)
    secondary.name = SECONDARY

    async def down(data: bytes) -> BlobRef:
        raise DAUnavailable("primary down")

    primary.post = down  # type: ignore[method-assign]
    machine = DAStatusMachine((PRIMARY, SECONDARY))
    pending = PendingStore(tmp_path / "pending.sqlite")
    pending._call = _now  # type: ignore[method-assign,assignment]
    record, full = pending.record, [True]

    async def full_disk(*args: Any) -> None:
        if full[0]:
            raise sqlite3.OperationalError("database or disk is full")
        await record(*args)

    pending.record = full_disk  # type: ignore[method-assign]
    router = DARouter({PRIMARY: primary, SECONDARY: secondary}, machine, pending, lambda: 0)
    outbox = Outbox(tmp_path / "outbox.sqlite", lambda committed: None, run_blocking=_now)
    publisher = Publisher(outbox, router, KEY, "c0", max_blob_bytes=1_000_000, interval_s=0.01)
    async with trio.open_nursery() as nursery:
        await nursery.start(outbox.run)
        await nursery.start(publisher.run)
        for k in range(5):
            await outbox.append(event(k))
        await trio.sleep(600)
        assert len(secondary.blobs) == 1 and publisher.failures > 5 and "disk is full" in (publisher.last_error or "")
        assert outbox.pending == 5 and pending.pending_count == 0  # nothing marked before its record
        full[0] = False
        await trio.sleep(60)
        nursery.cancel_scope.cancel()
    assert len(secondary.blobs) == 1 and outbox.pending == 0 and pending.pending_count == 1
    assert secondary.events() == [event(k).raw for k in range(5)] and publisher.blobs_posted == 1
    pending.close()


async def test_one_event_too_large_for_the_primary_does_not_hold_later_blobs_to_one_event(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """Each refusal halves the events per blob; one event too large for the primary halved it down to 1, the event
    then went to the secondary alone, and the cap stayed at 1 for every later event, relaxing only every 100 posts
    (2,000 small events took 339 paid posts instead of one or two: a reviewer's reproduction). Once that event
    lands, the cap is what it was before the refusals it caused."""
    primary, secondary = SmallLayer(200_000), SmallLayer(2_000_000)
    secondary.name = SECONDARY
    machine = DAStatusMachine((PRIMARY, SECONDARY))
    pending = PendingStore(tmp_path / "pending.sqlite")
    pending._call = _now  # type: ignore[method-assign,assignment]
    router = DARouter({PRIMARY: primary, SECONDARY: secondary}, machine, pending, lambda: 0)
    outbox = Outbox(tmp_path / "outbox.sqlite", lambda committed: None, run_blocking=_now)
    publisher = Publisher(outbox, router, KEY, "c0", max_blob_bytes=1_900_000, interval_s=0.01)
    big = ev.make_event(ev.RECEIPT_BATCH, (1_100, 0), "c0", group_key="g", root="r", tree_size=1, signature="s",
                        signers="c0", receipts=b"x" * 300_000)
    events = [big if k == 100 else event(k) for k in range(300)]
    async with trio.open_nursery() as nursery:
        await nursery.start(outbox.run)
        await outbox.append_all(events)
        await nursery.start(publisher.run)
        with trio.fail_after(600):
            while outbox.pending:
                await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert secondary.events() == [big.raw]
    assert sorted(primary.events()) == sorted(e.raw for e in events if e is not big)
    assert publisher.blobs_posted <= 4 and primary.refused <= 4, (publisher.blobs_posted, primary.refused)
    pending.close()


async def test_a_stop_while_the_outbox_is_busy_does_not_leave_a_landed_blob_unmarked(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """The post landed (on Celestia, paid); the mark waited for the outbox's lock (a prune chunk, a commit) when the
    stop came: cancelled there, the blob stayed unmarked and was posted again after the restart (a reviewer's
    reading). The mark is shielded."""
    layer = SmallLayer(limit=1_000_000)
    outbox = Outbox(tmp_path / "outbox.sqlite", lambda committed: None, run_blocking=_now)
    publisher = Publisher(outbox, layer, KEY, "c0", max_blob_bytes=1_000_000, interval_s=0.01)  # type: ignore[arg-type]
    mark, marking = outbox.mark_published, trio.Event()

    async def busy_outbox(*args: Any) -> None:
        marking.set()
        await trio.sleep(0.5)  # (waiting for the outbox's lock)
        await mark(*args)

    outbox.mark_published = busy_outbox  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        await nursery.start(outbox.run)
        await outbox.append(event(0))
        nursery.start_soon(publisher.run)
        await marking.wait()
        nursery.cancel_scope.cancel()  # the stop
    assert len(layer.blobs) == 1 and outbox.pending == 0
    outbox.close()


async def test_the_outbox_keeps_the_latest_timestamp_it_committed_even_from_an_older_file(tmp_path: Path) -> None:
    """``high_water`` is the latest timestamp of any event ever committed, the group's latest (not its last), and
    an outbox from before the ``clock`` table answers from the events it holds."""
    outbox = Outbox(tmp_path / "outbox.sqlite", lambda committed: None, run_blocking=_now)
    stamps = [(5_000, 2), (9_000, 1), (7_000, 0)]
    async with trio.open_nursery() as nursery:
        await nursery.start(outbox.run)
        assert await outbox.high_water() == (0, 0)
        await outbox.append_all([ev.make_event(ev.NODE_UNREGISTERED, t, "c0", id=f"n{i}")
                                 for i, t in enumerate(stamps)])
        await outbox.append(ev.make_event(ev.NODE_UNREGISTERED, (8_000, 0), "c0", id="later-but-lower"))
        assert await outbox.high_water() == (9_000, 1)
        outbox._db.execute("DELETE FROM clock")  # as a file written before the table existed (made empty at open)
        assert await outbox.high_water() == (9_000, 1)
        # an event stamped after a register's version further ahead names its clock's timestamp: the clock's high
        # water stays, the latest stamp committed (no event of ours on DA goes past it: Coordinator) moves
        assert await outbox.stamp_high_water() == (9_000, 1)
        await outbox.append(ev.make_event(ev.NODE_UNREGISTERED, (20_000, 3), "c0", id="ahead"), (9_500, 0))
        assert await outbox.high_water() == (9_500, 0) and await outbox.stamp_high_water() == (20_000, 3)
        nursery.cancel_scope.cancel()
    outbox.close()
    fresh = Outbox(tmp_path / "new.sqlite", lambda committed: None)
    assert await fresh.stamp_high_water() is None  # (nothing to tell by: the coordinator does not check)
    fresh.close()


async def test_a_backlog_of_large_events_is_read_about_once_to_publish_it(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """Each post read 4,096 outbox rows whatever their size, for one blob's worth: a backlog of large events (receipt
    batches carry up to 512 KiB) was read again for every blob, O(n²) bytes and the whole backlog in memory each
    time (a reviewer's run: 378 MB read to post 36 MB). Now about one blob's worth is read per post."""
    outbox = Outbox(tmp_path / "outbox.sqlite", lambda committed: None, run_blocking=_now)
    backlog = [ev.make_event(ev.RECEIPT_BATCH, (1_000 + k, 0), "c0", group_key="g" * 64, root="r" * 64, tree_size=1,
                             signature="s" * 64, signers="a", receipts=bytes([k]) * 200_000) for k in range(40)]
    async with trio.open_nursery() as nursery:
        await nursery.start(outbox.run)
        await outbox.append_all(backlog)
        nursery.cancel_scope.cancel()
    read_bytes = 0
    unpublished = outbox.unpublished

    async def counted(limit: int, max_bytes: int | None = None) -> list[tuple[int, bytes]]:
        nonlocal read_bytes
        rows = await unpublished(limit, max_bytes)
        read_bytes += sum(len(raw) for _, raw in rows)
        return rows

    outbox.unpublished = counted  # type: ignore[method-assign]
    layer = SmallLayer(limit=10_000_000)
    publisher = Publisher(outbox, layer, KEY, "c0", max_blob_bytes=1_000_000, interval_s=0.01)  # type: ignore[arg-type]
    while outbox.pending:
        assert await publisher.publish_once() > 0
    total = sum(len(e.raw) for e in backlog)
    assert layer.events() == [e.raw for e in backlog] and len(layer.blobs) >= 8
    assert read_bytes <= total + len(layer.blobs) * 200_100  # each event read once, plus one spare per post at most


class RefusingStore(SmallLayer):
    """A fallback store (or a quorum of them) refusing larger blobs as such: ``BlobRejected`` (413), not
    ``BlobTooLarge``."""

    async def post(self, data: bytes) -> BlobRef:
        await trio.sleep(0.001)
        if len(data) > self.limit:
            self.refused += 1
            raise BlobRejected(f"{self.name}: every validator rejected the blob with 413")
        self.blobs.append(data)
        return BlobRef(self.name, len(self.blobs), b"c" * 32)


async def test_an_event_every_layer_but_the_last_refuses_reaches_the_last(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """A blob of one event the primary refuses as too large and the quorum as rejected (413 from every validator)
    still goes on to the emergency store, which takes it: the quorum's refusal stopped the write there, and the
    event and every later one waited for the primary for ever (a reviewer's reproduction)."""
    primary, secondary, emergency = SmallLayer(150), RefusingStore(150), RefusingStore(1_000_000)
    secondary.name, emergency.name = SECONDARY, EMERGENCY
    machine = DAStatusMachine((PRIMARY, SECONDARY, EMERGENCY))
    pending = PendingStore(tmp_path / "pending.sqlite")
    pending._call = _now  # type: ignore[method-assign,assignment]
    router = DARouter({PRIMARY: primary, SECONDARY: secondary, EMERGENCY: emergency}, machine, pending, lambda: 0)
    _, outbox = await publish(tmp_path, router, 6, 60)  # type: ignore[arg-type]
    assert outbox.pending == 0 and sorted(emergency.events()) == sorted(event(k).raw for k in range(6))
    assert primary.blobs == secondary.blobs == [] and secondary.refused >= 1
    assert machine.status is Status.HEALTHY  # refusals blame no layer
    pending.close()


async def test_concurrent_appends_each_get_their_own_sequence_numbers(tmp_path: Path) -> None:
    """Calls committed in one group: the first call's result was the whole group's sequence numbers (its own list
    of waiters, extended in place by the others')."""
    outbox = Outbox(tmp_path / "outbox.sqlite", lambda committed: None, run_blocking=_now)
    results: dict[str, list[int]] = {}

    async def call(name: str, events: list[ev.Event]) -> None:
        results[name] = await outbox.append_all(events)

    async with trio.open_nursery() as nursery:
        await nursery.start(outbox.run)
        async with trio.open_nursery() as callers:
            callers.start_soon(call, "a", [event(0), event(1)])
            callers.start_soon(call, "b", [event(2)])
            callers.start_soon(call, "c", [event(3), event(4)])
        nursery.cancel_scope.cancel()
    assert outbox.commits == 1  # one group: the case in question
    stored = dict((raw, seq) for seq, raw in await outbox.since(0))
    assert {name: [stored[e.raw] for e in events] for name, events in
            [("a", [event(0), event(1)]), ("b", [event(2)]), ("c", [event(3), event(4)])]} == results
    outbox.close()


async def test_a_replay_page_holds_no_more_bytes_than_asked(tmp_path: Path) -> None:
    """Restart replay reads the outbox a page at a time: 4,096 rows of receipt batches were ~2 GB at once."""
    outbox = Outbox(tmp_path / "outbox.sqlite", lambda committed: None, run_blocking=_now)
    batches = [ev.make_event(ev.RECEIPT_BATCH, (1_000 + k, 0), "c0", group_key="g", root="r", tree_size=1,
                             signature="s", signers="a", receipts=bytes([k]) * 100_000) for k in range(8)]
    async with trio.open_nursery() as nursery:
        await nursery.start(outbox.run)
        await outbox.append_all(batches)
        nursery.cancel_scope.cancel()
    pages, seq = [], 0
    while rows := await outbox.since(seq, 4096, 250_000):
        pages.append([raw for _, raw in rows])
        seq = rows[-1][0]
    assert [raw for page in pages for raw in page] == [b.raw for b in batches]
    assert [len(page) for page in pages] == [2, 2, 2, 2]
    assert [len(raw) for _, raw in await outbox.since(0, 4096, 10)] == [len(batches[0].raw)]  # one, whatever its size
    outbox.close()


async def test_pruning_forgets_published_events_a_chunk_at_a_time(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Pruning after a large backlog deleted every published event in one transaction, appends held meanwhile; it
    goes a chunk at a time, and forgets exactly the published events at or below the mark."""
    import node.outbox

    monkeypatch.setattr(node.outbox, "PRUNE_CHUNK", 3)
    outbox = Outbox(tmp_path / "outbox.sqlite", lambda committed: None, run_blocking=_now)
    async with trio.open_nursery() as nursery:
        await nursery.start(outbox.run)
        seqs = await outbox.append_all([event(k) for k in range(12)])
        nursery.cancel_scope.cancel()
    await outbox.mark_published(seqs[:9], BlobRef(PRIMARY, 1, b"c" * 32))
    calls, db_call = [0], outbox._db_call

    async def counted(*args: object) -> object:
        calls[0] += 1
        return await db_call(*args)  # type: ignore[arg-type]

    outbox._db_call = counted  # type: ignore[method-assign,assignment]
    assert await outbox.prune(seqs[7]) == 8 and calls[0] == 3  # 3 + 3 + 2: the last chunk is short
    assert [seq for seq, _ in await outbox.since(0)] == seqs[8:] and outbox.pending == 3
    assert await outbox.prune(seqs[-1]) == 1  # the published one left; unpublished events are kept
    assert [seq for seq, _ in await outbox.since(0)] == seqs[9:]
    outbox.close()


async def test_failed_commits_give_back_their_in_flight_slots(tmp_path: Path) -> None:
    """From a review: a commit that failed (a full disk) kept its appends counted in flight (``inflight`` was not
    lowered on the failure path), so after a few failures every write was refused with Overloaded for good."""
    failures = [2]

    async def disk_full_twice(fn: Callable[..., Any], *args: Any) -> Any:
        if getattr(fn, "__name__", "") == "_insert" and failures[0]:
            failures[0] -= 1
            raise sqlite3.OperationalError("database or disk is full")
        return fn(*args)

    outbox = Outbox(tmp_path / "outbox.sqlite", lambda committed: None, max_inflight=2,
                    run_blocking=disk_full_twice)
    async with trio.open_nursery() as nursery:
        await nursery.start(outbox.run)
        with trio.fail_after(5):
            for k in range(2):
                with pytest.raises(sqlite3.OperationalError):
                    await outbox.append(event(k))
            assert outbox.inflight == 0
            assert len(await outbox.append_all([event(10), event(11)])) == 2  # the whole bound is free again
            assert await outbox.append(event(12)) >= 1
        nursery.cancel_scope.cancel()
    assert outbox.overloaded == 0 and outbox.pending == 3
    outbox.close()


async def test_reopening_an_outbox_counts_only_the_unpublished_events_as_pending(tmp_path: Path) -> None:
    """From a review: the count at start-up must skip published rows not pruned yet; counting every row (the
    ``layer IS NULL`` condition dropped) had the publisher wait for events that were already on DA."""
    path = tmp_path / "outbox.sqlite"
    outbox = Outbox(path, lambda committed: None, run_blocking=_now)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(outbox.run)
            seqs = await outbox.append_all([event(k) for k in range(5)])
            nursery.cancel_scope.cancel()
        await outbox.mark_published(seqs[:3], BlobRef(PRIMARY, 1, b"c" * 32))
    assert outbox.pending == 2
    outbox.close()
    again = Outbox(path, lambda committed: None, run_blocking=_now)
    assert again.pending == 2
    again.close()


class RefusesOnce(SmallLayer):
    """Refuses the first blob of more than one event as too large, then takes every blob; counts events per blob."""

    def __init__(self) -> None:
        super().__init__(limit=10_000_000)
        self.armed = True

    async def post(self, data: bytes) -> BlobRef:
        if self.armed and len(msgpack.unpackb(data[HEADER:])[1]) > 1:
            self.armed = False
            self.refused += 1
            raise BlobTooLarge("blob.Submit: blob is too large")
        return await super().post(data)

    def sizes(self) -> list[int]:
        return [len(msgpack.unpackb(blob[HEADER:])[1]) for blob in self.blobs]


async def test_the_blob_cap_relaxes_after_relax_after_posts_under_it(
        tmp_path: Path, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """From a review: the posts under a cap were not counted (``_under_cap`` never grew), so one refusal halved the
    blobs for good and they never grew again."""
    import node.publisher

    monkeypatch.setattr(node.publisher, "RELAX_AFTER", 2)
    layer = RefusesOnce()
    outbox = Outbox(tmp_path / "outbox.sqlite", lambda committed: None, run_blocking=_now)
    publisher = Publisher(outbox, layer, KEY, "c0", max_blob_bytes=1_000_000, interval_s=0.01)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(outbox.run)
        await outbox.append_all([event(k) for k in range(8)])
        await nursery.start(publisher.run)
        await trio.sleep(5)
        # refused at 8 events: blobs of at most half its bytes (2 events: each has the blob's header); after two
        # posts under the cap it doubles: the rest in one
        refused = blob_size("c0", [event(k).raw for k in range(8)])
        assert layer.sizes() == [2, 2, 4] and all(len(blob) <= refused // 2 for blob in layer.blobs[:2])
        await outbox.append_all([event(k) for k in range(8, 16)])
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    assert layer.refused == 1 and layer.sizes()[3:] == [7, 1] and outbox.pending == 0  # (the cap doubled again after)
    assert publisher.cap == 4 * (refused // 2)
    assert layer.events() == [event(k).raw for k in range(16)]
    outbox.close()


class FailsOnCue(SmallLayer):
    """Fails (unavailable) whenever the next entry of ``script`` is False, takes the blob when it is True."""

    def __init__(self, script: list[bool]) -> None:
        super().__init__(limit=10_000_000)
        self.script = script

    async def post(self, data: bytes) -> BlobRef:
        if self.script and not self.script.pop(0):
            await trio.sleep(0.001)
            raise DAUnavailable("primary: connection refused")
        return await super().post(data)


async def test_a_successful_post_resets_the_retry_backoff(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """From a review: the backoff was not reset after a successful post, so each later failure, however far apart,
    waited a step longer than the one before (up to 30 s at once after an isolated failure)."""
    layer = FailsOnCue([False, True, False, True])
    outbox = Outbox(tmp_path / "outbox.sqlite", lambda committed: None, run_blocking=_now)
    publisher = Publisher(outbox, layer, KEY, "c0", max_blob_bytes=1_000_000, interval_s=0.01)  # type: ignore[arg-type]
    attempts: list[int] = []
    backoff, step = publisher._backoff, publisher._backoff.next

    def next_delay() -> float:
        attempts.append(backoff.attempt)  # the step this retry's delay is drawn from
        return step()

    backoff.next = next_delay  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        await nursery.start(outbox.run)
        await nursery.start(publisher.run)
        await outbox.append(event(0))  # fails, then posted
        await trio.sleep(5)
        await outbox.append(event(1))  # fails again, then posted
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    assert publisher.failures == 2 and len(layer.blobs) == 2 and outbox.pending == 0
    assert attempts == [0, 0]  # the second failure waits the first step again
    outbox.close()


async def test_a_write_lock_held_outside_fails_a_commit_soon_and_the_outbox_works_after_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another connection (a backup, the sqlite3 shell) holding the outbox's write lock made each statement wait the
    30 s busy timeout, in a thread no stop can abandon: a stop took 30 s per blocked statement (a reviewer's
    reproduction). The commit fails after BUSY_TIMEOUT_S (5 s; shortened here), the caller hears it (503 for an API
    write), and once the lock is gone the outbox commits again."""
    import node.outbox

    assert node.outbox.BUSY_TIMEOUT_S <= 5
    monkeypatch.setattr(node.outbox, "BUSY_TIMEOUT_S", 0.2)
    path = tmp_path / "outbox.sqlite"
    outbox = Outbox(path, lambda committed: None)
    other = sqlite3.connect(str(path), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    async with trio.open_nursery() as nursery:
        await nursery.start(outbox.run)
        with trio.fail_after(10), pytest.raises(sqlite3.OperationalError, match="locked"):
            await outbox.append(event(0))
        other.execute("ROLLBACK")
        with trio.fail_after(10):
            await outbox.append(event(1))
        nursery.cancel_scope.cancel()
    assert outbox.pending == 1
    other.close()
    outbox.close()
