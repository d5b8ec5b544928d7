"""The write/read pipeline with real SQLite: outbox, publisher, consumer, snapshots, restart, rebuild.

Several coordinators share one Mock DA (the stand-in for Celestia); everything else is real.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import nacl.signing
import pytest
import trio

from node import events as ev
from node import snapshot
from node.blob import MAX_BLOB_BYTES, encode_blob
from node.config import Config
from node.consumer import DROPPED_LOG_EVERY_S, Consumer
from node.coordinator import Coordinator
from node.da.mock import MockDA
from node.hlc import HybridLogicalClock
from node.outbox import Outbox
from tests.conftest import wait_for


@asynccontextmanager
async def running(cfg: Config, da: MockDA) -> AsyncIterator[Coordinator]:
    coord = Coordinator(cfg, da)
    async with trio.open_nursery() as nursery:
        await nursery.start(coord.run)
        yield coord
        nursery.cancel_scope.cancel()


async def register_nodes(coord: Coordinator, n: int, prefix: str = "node") -> None:
    for i in range(n):
        await coord.register_node(f"{prefix}-{i}", f"zone-{i % 3}", f"10.0.0.{i % 250}:5000", 100 + i)


async def test_a_write_is_durable_applied_published_and_seen_by_a_peer(make_config: Callable[..., Config]) -> None:
    da = MockDA()
    cfg_a = make_config("a")
    async with running(cfg_a, da) as a:
        cfg_b = make_config("b", CLUSTER_MEMBER_KEYS=a.public_key.hex())
        async with running(cfg_b, da) as b:
            await a.register_node("node-1", "zone-a", "10.0.0.1:50051", 100)
            assert a.state.node("node-1") == ("zone-a", "10.0.0.1:50051", 100)  # applied at once
            await wait_for(lambda: b.state.node("node-1") is not None, what="peer to see the node")
            await wait_for(lambda: a.outbox.pending == 0, what="publication")
            assert a.state.root() == b.state.root()
            assert b.consumers["primary"].blobs_applied >= 1 and a.publisher.blobs_posted >= 1


async def test_blobs_from_unknown_signers_are_dropped_and_counted(make_config: Callable[..., Config]) -> None:
    import nacl.signing

    da = MockDA()
    async with running(make_config("a"), da) as a:
        stranger = nacl.signing.SigningKey.generate()
        evil = ev.make_event(ev.NODE_REGISTERED, (1, 0), "evil", id="evil-node", zone="z", addr="6.6.6.6:1",
                             capacity_gb=1)
        await da.post(encode_blob(stranger, "evil", [evil.raw]))
        await da.post(b"not a blob at all")
        rejected = a.consumers["primary"].rejected
        await wait_for(lambda: rejected["unknown_signer"] == 1 and rejected["foreign"] == 1, what="rejections")
        assert a.state.node("evil-node") is None


async def test_a_member_added_to_the_configuration_is_read_from_its_start_after_a_restart(
        make_config: Callable[..., Config]) -> None:
    """a did not list b while b wrote; then b is added to a's configuration and a restarts. Its snapshot's cursor was
    past b's blobs (passed by as an unknown signer's): never read, a's state root differed from a rebuild's for good
    (a reviewer's reproduction). A snapshot taken under another member list is refused: rebuilt from DA."""
    from node import identity

    da = MockDA()
    b_cfg = make_config("b")
    b_cfg.data_dir.mkdir(parents=True)
    b_key = bytes(identity.load_or_create(b_cfg.data_dir).verify_key).hex()
    async with running(make_config("a"), da) as a:
        a_key = a.public_key.hex()
        async with running(make_config("b", CLUSTER_MEMBER_KEYS=a_key), da) as b:
            await register_nodes(b, 10, "b")
            await wait_for(lambda: b.outbox.pending == 0, what="b's publication")
            await a.register_node("a0", "z", "1.2.3.4:5", 10)
            await wait_for(lambda: a.outbox.pending == 0 and a.consumers["primary"].rejected["unknown_signer"] >= 1,
                           what="a to pass b's blobs by")
    async with running(make_config("a", CLUSTER_MEMBER_KEYS=b_key), da) as a:
        await wait_for(lambda: a.rebuilt, what="a's rebuild")
        assert all(a.state.node(f"b-{i}") is not None for i in range(10)) and a.state.node("a0") is not None
        root = a.state.root()
    async with running(make_config("fresh", CLUSTER_MEMBER_KEYS=f"{a_key},{b_key}"), da) as fresh:
        await wait_for(lambda: fresh.rebuilt, what="a fresh rebuild")
        assert fresh.state.root() == root


async def test_a_periodic_snapshot_for_moved_cursors_alone_comes_rarely(make_config: Callable[..., Config],
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A Celestia cursor moves at every block: an idle coordinator rewrote and fsynced its whole state every 30 s
    (133 MiB at 1M events; a reviewer's reading). Cursors alone make a periodic snapshot only every
    CURSORS_ONLY_SNAPSHOT_S; a final one (at a stop) is written whatever moved."""
    import node.coordinator as coordinator_module

    coord = Coordinator(make_config("a"), MockDA())
    await coord.restore()
    assert await coord.write_snapshot(cursors_alone=False)  # (the first)
    coord.consumers["primary"].cursor += 5
    assert not await coord.write_snapshot(cursors_alone=False)
    monkeypatch.setattr(coordinator_module, "CURSORS_ONLY_SNAPSHOT_S", 0.0)
    assert await coord.write_snapshot(cursors_alone=False)
    monkeypatch.undo()
    coord.consumers["primary"].cursor += 5
    assert await coord.write_snapshot()  # (a final one)
    assert snapshot.load(coord.config.data_dir).cursors["primary"] == coord.consumers["primary"].cursor
    coord.outbox.close()


async def test_a_snapshot_taken_on_another_da_primary_is_refused(make_config: Callable[..., Config]) -> None:
    """The basis holds the primary's network and namespace too: a snapshot's cursor is another log's height."""
    from node.da.namespace import namespace_from_name

    a = Coordinator(make_config("a"), MockDA())
    await a.restore()
    a.state.apply(ev.make_event(ev.NODE_REGISTERED, (1, 0), "a", id="n1", zone="z", addr="h:1", capacity_gb=1))
    assert await a.write_snapshot()
    a.outbox.close()
    for env, kept in (({}, True), ({"DA_NAMESPACE": namespace_from_name("another").hex()}, False),
                      ({"DA_NETWORK": "mocha"}, False)):
        again = Coordinator(make_config("a", **env), MockDA())
        await again.restore()
        assert (again.state.node("n1") is not None) is kept, env
        again.outbox.close()


async def test_the_snapshot_loop_asks_for_no_snapshot_of_moved_cursors_alone(
        make_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch) -> None:
    coord = Coordinator(make_config("a", SNAPSHOT_INTERVAL_MS="100"), MockDA())
    asked: list[bool] = []

    async def write_snapshot(*, cursors_alone: bool = True) -> bool:
        asked.append(cursors_alone)
        return False

    monkeypatch.setattr(coord, "write_snapshot", write_snapshot)
    with trio.move_on_after(0.35):
        await coord._snapshot_loop()
    assert asked and not any(asked)
    coord.outbox.close()


async def test_da_outage_loses_no_acknowledged_write(make_config: Callable[..., Config]) -> None:
    da = MockDA()
    async with running(make_config("a"), da) as a:
        b_cfg = make_config("b", CLUSTER_MEMBER_KEYS=a.public_key.hex())
        async with running(b_cfg, da) as b:
            da.down = True
            await register_nodes(a, 30)  # every call returns: the outbox is durable without DA
            await trio.sleep(0.5)
            assert a.outbox.pending == 30 and a.publisher.failures >= 1
            assert not a.da_view().healthy["primary"]
            assert b.state.node_count == 0
            da.down = False
            await wait_for(lambda: b.state.node_count == 30, timeout=40, what="peer to converge after outage")
            assert a.outbox.pending == 0 and a.state.root() == b.state.root()
            await wait_for(lambda: a.da_view().healthy["primary"], what="health to recover")


async def test_group_commit_shares_transactions(make_config: Callable[..., Config]) -> None:
    async with running(make_config("a"), MockDA()) as a:
        before = a.outbox.commits
        async with trio.open_nursery() as nursery:
            for i in range(100):
                nursery.start_soon(a.register_object, f"obj-{i}", i)
        assert a.state.events_applied == 100
        assert a.outbox.commits - before < 100


async def test_blobs_respect_the_size_cap(make_config: Callable[..., Config]) -> None:
    da = MockDA()
    async with running(make_config("a", DA_BLOB_MAX_BYTES="4096"), da) as a:
        await register_nodes(a, 200)
        await wait_for(lambda: a.outbox.pending == 0, what="publication")
        page = await da.read_after(0, 1000)
        assert page.at_head and len(page.items) > 1 and all(len(data) <= 4096 for _, data in page.items)


async def test_restart_restores_state_and_unpublished_writes(make_config: Callable[..., Config]) -> None:
    da = MockDA()
    cfg = make_config("a")
    async with running(cfg, da) as a:
        await register_nodes(a, 10)
        await wait_for(lambda: a.outbox.pending == 0, what="publication")
        da.down = True
        await a.register_object("written-during-outage", 42)  # acknowledged, not yet on DA
        root = a.state.root()
    assert (cfg.data_dir / "snapshot.msgpack").exists()
    da.down = False
    async with running(cfg, da) as again:
        assert again.state.root() == root and again.state.object("written-during-outage") == (42, [])
        await wait_for(lambda: again.outbox.pending == 0, what="the leftover write to be published")


async def test_a_restart_replays_an_outbox_larger_than_a_page_a_page_at_a_time(
        make_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch) -> None:
    """The outbox replay at start read every event above the snapshot's mark at once: after a long DA outage, the
    whole backlog in memory. It is read a page at a time now, and nothing is skipped between pages."""
    import node.coordinator

    monkeypatch.setattr(node.coordinator, "REPLAY_PAGE", 3)
    da = MockDA()
    cfg = make_config("a", SNAPSHOT_INTERVAL_MS="3600000")
    async with running(cfg, da) as a:
        da.down = True
        await register_nodes(a, 10)  # acknowledged, not on DA, not in any snapshot
        root = a.state.root()
    (cfg.data_dir / "snapshot.msgpack").unlink(missing_ok=True)
    pages: list[int] = []
    since = Outbox.since

    async def counted(self: Outbox, seq: int, limit: int = -1, max_bytes: int | None = None) -> list[tuple[int, bytes]]:
        rows = await since(self, seq, limit, max_bytes)
        pages.append(len(rows))
        return rows

    monkeypatch.setattr(Outbox, "since", counted)
    async with running(cfg, da) as again:
        assert again.state.node_count == 10 and again.state.root() == root
    assert pages[:5] == [3, 3, 3, 1, 0]


async def test_a_damaged_outbox_row_is_reported_and_passed_over_at_start(
        make_config: Callable[..., Config], caplog: pytest.LogCaptureFixture) -> None:
    """An outbox row that no longer decodes (a damaged file, or a row a later version refuses) raised out of the
    restart replay: the coordinator could never start again. It is logged and passed over (no member accepts it
    either); the rows after it are replayed."""
    da = MockDA()
    cfg = make_config("a", SNAPSHOT_INTERVAL_MS="3600000")
    async with running(cfg, da) as a:
        da.down = True
        await register_nodes(a, 4)
    (cfg.data_dir / "snapshot.msgpack").unlink(missing_ok=True)
    db = sqlite3.connect(cfg.data_dir / "outbox.sqlite")
    with db:
        db.execute("UPDATE outbox SET raw = ? WHERE seq = 2", (b"\x93damaged",))
    db.close()
    caplog.set_level(logging.ERROR, logger="dsdn.coordinator")
    async with running(cfg, da) as again:
        assert again.state.node_count == 3 and again.applied_outbox_seq == 4
    assert any("outbox event 2 is no valid event" in r.getMessage() for r in caplog.records)


async def test_empty_data_dir_rebuilds_the_same_root_from_da(make_config: Callable[..., Config]) -> None:
    da = MockDA()
    async with running(make_config("a"), da) as a:
        await register_nodes(a, 25)
        await a.register_object("obj", 7)
        await a.mark_replica("obj", "node-3", True)
        await a.set_weights({"w_cpu": 2.0})
        await wait_for(lambda: a.outbox.pending == 0, what="publication")
        root, count = a.state.root(), a.state.events_applied
        key = a.public_key.hex()
    async with running(make_config("fresh", CLUSTER_MEMBER_KEYS=key), da) as fresh:
        await wait_for(lambda: fresh.rebuilt, what="catch-up")
        assert fresh.state.root() == root and fresh.state.events_applied == count
        assert fresh.get_object("obj")["replicas"] == ["node-3"] and fresh.weights()["w_cpu"] == 2.0


async def test_concurrent_writers_on_two_coordinators_converge(make_config: Callable[..., Config]) -> None:
    da = MockDA()
    a_cfg = make_config("a")
    b_cfg = make_config("b")
    ca, cb = Coordinator(a_cfg, da), Coordinator(b_cfg, da)
    ca.members = ca.consumers["primary"].members = frozenset({ca.public_key, cb.public_key})
    cb.members = cb.consumers["primary"].members = frozenset({ca.public_key, cb.public_key})
    async with trio.open_nursery() as nursery:
        await nursery.start(ca.run)
        await nursery.start(cb.run)
        async with trio.open_nursery() as writers:
            writers.start_soon(register_nodes, ca, 40, "same")  # both write the same ids: LWW decides
            writers.start_soon(register_nodes, cb, 40, "same")
        await wait_for(lambda: ca.state.events_applied == cb.state.events_applied == 80, timeout=20,
                       what="both to see all 80 events")
        assert ca.state.root() == cb.state.root()
        assert ca.list_nodes() == cb.list_nodes()
        nursery.cancel_scope.cancel()


async def test_the_primary_log_is_read_from_da_start_height(make_config: Callable[..., Config]) -> None:
    da = MockDA()
    async with running(make_config("a"), da) as a:
        await a.register_node("early", "z", "1.1.1.1:1", 1)
        await wait_for(lambda: a.outbox.pending == 0, what="publication")
        early_height = await da.head()
        await a.register_node("late", "z", "1.1.1.1:1", 1)
        await wait_for(lambda: a.outbox.pending == 0, what="publication")
        key = a.public_key.hex()
    cfg = make_config("b", CLUSTER_MEMBER_KEYS=key, DA_START_HEIGHT=str(early_height + 1))
    async with running(cfg, da) as b:
        await wait_for(lambda: b.rebuilt, what="catch-up")
        assert b.state.node("late") is not None and b.state.node("early") is None
        assert b.consumers["primary"].cursor == await da.head()


# ---- issue 8 §4: what every coordinator accepts does not depend on local settings or on trust in the blob --


async def test_a_small_local_blob_cap_does_not_refuse_larger_blobs_of_other_members(
        make_config: Callable[..., Config]) -> None:
    da = MockDA()
    member = nacl.signing.SigningKey.generate()
    raws = [ev.make_event(ev.NODE_REGISTERED, (1000 + i, 0), "big", id=f"node-{i}", zone="z", addr="1.2.3.4:5",
                          capacity_gb=i).raw for i in range(300)]
    blob = encode_blob(member, "big", raws)
    assert 4096 < len(blob) <= MAX_BLOB_BYTES  # posted by a member whose DA_BLOB_MAX_BYTES is the default
    await da.post(blob)
    cfg = make_config("small", DA_BLOB_MAX_BYTES="4096", CLUSTER_MEMBER_KEYS=bytes(member.verify_key).hex())
    async with running(cfg, da) as small:
        await wait_for(lambda: small.rebuilt, what="catch-up")
        assert small.state.node_count == 300 and not small.consumers["primary"].rejected


async def test_events_whose_origin_is_not_the_signers_member_id_are_dropped_and_counted(
        make_config: Callable[..., Config]) -> None:
    da = MockDA()
    ka, kc = nacl.signing.SigningKey.generate(), nacl.signing.SigningKey.generate()

    def node(origin: str, name: str) -> bytes:
        return ev.make_event(ev.NODE_REGISTERED, (1, 0), origin, id=name, zone="z", addr="1.2.3.4:5",
                             capacity_gb=1).raw

    # member a (bound to its id) signs an event of its own and one claiming to be c's
    await da.post(encode_blob(ka, "a", [node("a", "by-a"), node("c", "forged-c")]))
    # member c is listed by key alone: it speaks for the origin its blob declares, and only for that one
    await da.post(encode_blob(kc, "c", [node("c", "by-c"), node("a", "forged-a")]))
    # ... and may not declare an id bound to another member's key
    await da.post(encode_blob(kc, "a", [node("a", "forged-a-2")]))
    members = f"a={bytes(ka.verify_key).hex()},{bytes(kc.verify_key).hex()}"
    async with running(make_config("b", CLUSTER_MEMBER_KEYS=members), da) as b:
        await wait_for(lambda: b.rebuilt, what="catch-up")
        assert [nid for nid, _ in b.state.live_nodes()] == ["by-a", "by-c"]
        consumer = b.consumers["primary"]
        assert consumer.events_wrong_origin == 3 and consumer.blobs_applied == 3 and consumer.events_invalid == 0


async def test_a_far_future_event_of_a_member_is_applied_without_breaking_local_writes(
        make_config: Callable[..., Config]) -> None:
    from node.hlc import wall_ms

    max_drift_ms = 60_000  # node.hlc.MAX_DRIFT_MS
    da = MockDA()
    member = nacl.signing.SigningKey.generate()
    future = ev.make_event(ev.NODE_REGISTERED, (ev.MAX_U63, ev.MAX_U63), "m", id="from-the-future", zone="z",
                           addr="1.2.3.4:5", capacity_gb=1)
    await da.post(encode_blob(member, "m", [future.raw]))
    cfg = make_config("b", CLUSTER_MEMBER_KEYS=bytes(member.verify_key).hex())
    async with running(cfg, da) as b:
        await wait_for(lambda: b.rebuilt, what="catch-up")
        assert b.state.node("from-the-future") is not None  # signed by a member: applied
        await b.register_node("local", "z", "1.1.1.1:1", 1)  # the clock was not dragged to 2^63 - 1
        await b.register_object("obj", 1)
        assert b.state.node("local") is not None and b.hlc.last[0] <= wall_ms() + max_drift_ms
    async with running(cfg, da) as again:  # the restored state's max timestamp is bounded the same way
        await again.register_node("after-restart", "z", "1.1.1.1:1", 1)
        assert again.hlc.last[0] <= wall_ms() + max_drift_ms


async def test_a_restarted_coordinator_orders_its_writes_after_its_own_earlier_ones_whatever_its_wall_clock(
        make_config: Callable[..., Config]) -> None:
    """Its clock ran 5 minutes fast, then was stepped back while it was down: the restored clock took its own
    latest timestamp as a remote one, clamped to the wall clock + 60 s, so its new write ordered before its old one
    and last-writer-wins kept the old value (a reviewer's reproduction). The outbox keeps a high-water mark."""
    from node.hlc import wall_ms

    da = MockDA()
    cfg = make_config("a")
    async with running(cfg, da) as a:
        a.hlc._clock = lambda: wall_ms() + 300_000
        await a.register_node("n1", "zone-old", "1.1.1.1:1", 1)
        issued = a.hlc.last
        await wait_for(lambda: a.outbox.pending == 0, what="publication")
        await a.outbox.prune(await a.outbox.last_seq())  # the high-water mark outlives the rows
    async with running(cfg, da) as again:
        assert again.hlc.last >= issued
        await again.register_node("n1", "zone-new", "1.1.1.1:1", 1)
        assert again.state.node("n1")[0] == "zone-new"  # type: ignore[index]


async def test_the_clock_observes_the_latest_event_of_every_blob_read_from_da(
        make_config: Callable[..., Config]) -> None:
    from node.hlc import wall_ms

    da = MockDA()
    member = nacl.signing.SigningKey.generate()
    async with running(make_config("b", CLUSTER_MEMBER_KEYS=bytes(member.verify_key).hex()), da) as b:
        await wait_for(lambda: b.rebuilt, what="catch-up")
        ahead = wall_ms() + 30_000  # ahead of the wall clock, within the drift bound: only observing moves ours
        stamps = [(ahead, 5), (ahead + 2, 0), (ahead + 1, 9)]  # the latest is not the blob's last
        await da.post(encode_blob(member, "m", [
            ev.make_event(ev.NODE_REGISTERED, t, "m", id=f"n{i}", zone="z", addr="1.2.3.4:5", capacity_gb=1).raw
            for i, t in enumerate(stamps)]))
        await wait_for(lambda: b.state.node("n2") is not None, what="the member's blob")
        assert b.hlc.last >= (ahead + 2, 0)
        await b.register_node("local", "z", "1.1.1.1:1", 1)  # orders after every event it has seen
        assert b.hlc.last > (ahead + 2, 0) and b.hlc.clamped == 0


async def test_a_failing_snapshot_write_is_logged_and_counted_and_the_coordinator_keeps_running(
        make_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk as a snapshot is written (a reviewer's reproduction: the whole coordinator died with the
    OSError, and a failing final snapshot skipped closing the outbox and the DA clients)."""
    failing = {"left": 1}
    finish = snapshot._finish

    def full_disk(*args: Any) -> None:
        if failing["left"]:
            failing["left"] -= 1
            args[0].close()
            raise OSError(errno.ENOSPC, "No space left on device")
        finish(*args)

    monkeypatch.setattr(snapshot, "_finish", full_disk)
    cfg = make_config("a", SNAPSHOT_INTERVAL_MS="100")
    da = MockDA()
    async with running(cfg, da) as a:
        await register_nodes(a, 3)
        await wait_for(lambda: a.snapshots_failed == 1 and a.snapshots_written >= 1, what="a failure, then a snapshot")
        await a.register_object("after", 1)  # still serving writes
        failing["left"] = 1  # the final snapshot fails too: the outbox is closed all the same
    assert a.snapshots_failed == 2
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        a.outbox._db.execute("SELECT 1")
    async with running(cfg, da) as again:  # the previous snapshot plus the outbox: nothing lost
        assert again.state.object("after") == (1, [])


async def test_a_damaged_snapshot_is_ignored_and_the_state_rebuilt_from_da(make_config: Callable[..., Config],
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    da = MockDA()
    cfg = make_config("a")
    async with running(cfg, da) as a:
        await register_nodes(a, 10)
        await wait_for(lambda: a.outbox.pending == 0, what="publication")
        root = a.state.root()
    path = cfg.data_dir / "snapshot.msgpack"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x04  # one bit, somewhere in the state
    path.write_bytes(bytes(data))
    async with running(cfg, da) as again:
        await wait_for(lambda: again.rebuilt, what="the rebuild from DA")
        assert again.state.root() == root == again.state.recomputed_root()
    assert any("ignoring unreadable snapshot" in r.getMessage() and "damaged" in r.getMessage()
               for r in caplog.records)


async def test_a_failed_outbox_commit_is_rolled_back_and_later_writes_go_through(tmp_path: Path) -> None:
    """SQLite may keep a transaction open after a failed COMMIT: every later write then failed ("cannot start a
    transaction within a transaction") until a restart (a reviewer's fault injection)."""
    outbox = Outbox(tmp_path / "outbox.sqlite", lambda committed: None)
    real = outbox._db

    class FailingCommitOnce:
        armed = True

        def execute(self, sql: str, *args: Any) -> Any:
            if sql == "COMMIT" and self.armed:
                self.armed = False
                real.execute("SELECT 1")  # the transaction is still open, as after SQLITE_IOERR at commit
                raise sqlite3.OperationalError("disk I/O error")
            return real.execute(sql, *args)

        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

    outbox._db = FailingCommitOnce()  # type: ignore[assignment]
    hlc = HybridLogicalClock()
    async with trio.open_nursery() as nursery:
        await nursery.start(outbox.run)
        with pytest.raises(sqlite3.OperationalError):
            await outbox.append(ev.make_event(ev.NODE_UNREGISTERED, hlc.now(), "c0", id="lost"))
        assert not real.in_transaction
        for i in range(3):
            await outbox.append(ev.make_event(ev.NODE_UNREGISTERED, hlc.now(), "c0", id=f"n{i}"))
        assert [ev.decode_event(raw).fields[0] for _, raw in await outbox.unpublished(10)] == ["n0", "n1", "n2"]
        nursery.cancel_scope.cancel()
    outbox.close()


async def test_junk_blobs_are_counted_each_and_logged_a_few_times(caplog: pytest.LogCaptureFixture) -> None:
    """The namespace is public: a warning per junk blob let anyone fill the coordinators' logs. Each is counted; one
    warning per reason at most every DROPPED_LOG_EVERY_S, saying how many were dropped since."""
    member, stranger = nacl.signing.SigningKey(b"m" * 32), nacl.signing.SigningKey(b"s" * 32)
    consumer = Consumer(MockDA(), lambda events: 0, frozenset({bytes(member.verify_key)}))
    junk = encode_blob(stranger, "evil", [ev.make_event(ev.NODE_UNREGISTERED, (1, 0), "evil", id="x").raw])
    caplog.set_level(logging.WARNING, logger="dsdn.consumer")
    clock = [1000.0]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("node.consumer.time.monotonic", lambda: clock[0])
        for _ in range(500):
            consumer.ingest(junk)
        clock[0] += DROPPED_LOG_EVERY_S + 1
        consumer.ingest(junk)
    warnings = [r.getMessage() for r in caplog.records if "dropped blob" in r.getMessage()]
    assert consumer.rejected["unknown_signer"] == 501
    assert len(warnings) == 2 and "499 more dropped for this reason" in warnings[1]


async def test_a_local_write_after_a_member_s_write_stamped_ahead_takes_effect(
        make_config: Callable[..., Config]) -> None:
    """A member whose clock runs 10 minutes fast registered n1 and obj1: our clock follows an observed timestamp no
    further than 60 s past the wall clock, so a later local write of those registers was stamped before the
    member's, acknowledged, and ignored (last writer wins; a reviewer's reproduction). It is stamped after the
    register's version now, and two such writes in flight keep their order. A register held by a write stamped
    further ahead than a day refuses the write instead (ClockConflict: the API's 409)."""
    from node.coordinator import ClockConflict
    from node.hlc import wall_ms

    da = MockDA()
    member = nacl.signing.SigningKey.generate()
    ahead = (wall_ms() + 600_000, 0)
    events = [ev.make_event(ev.NODE_REGISTERED, ahead, "m", id="n1", zone="zone-member", addr="1.2.3.4:5",
                            capacity_gb=1),
              ev.make_event(ev.OBJECT_REGISTERED, ahead, "m", hash="obj1", size=1),
              ev.make_event(ev.OBJECT_REGISTERED, (wall_ms() + 90_000, 0), "m", hash="obj3", size=1),
              ev.make_event(ev.NODE_REGISTERED, (ev.MAX_U63, 0), "m", id="n2", zone="zone-liar", addr="1.2.3.4:5",
                            capacity_gb=1)]
    await da.post(encode_blob(member, "m", [e.raw for e in events]))
    cfg = make_config("b", CLUSTER_MEMBER_KEYS=bytes(member.verify_key).hex())
    async with running(cfg, da) as b:
        await wait_for(lambda: b.rebuilt, what="catch-up")
        assert b.state.node("n1")[0] == "zone-member"  # type: ignore[index]
        await b.register_node("n1", "zone-local", "1.1.1.1:1", 1)
        await b.register_object("obj1", 7)
        assert b.state.node("n1")[0] == "zone-local" and b.state.object("obj1")[0] == 7  # type: ignore[index]
        async with trio.open_nursery() as nursery:  # two in flight at once: the later one wins
            for zone in ("zone-first", "zone-second"):
                nursery.start_soon(b.register_node, "n1", zone, "1.1.1.1:1", 1)
                await trio.sleep(0)
        assert b.state.node("n1")[0] == "zone-second"  # type: ignore[index]
        await b.register_node("n3", "z", "1.1.1.1:1", 1)  # another register: the clock itself was not dragged
        assert b.hlc.last[0] <= wall_ms() + 60_000
        await b.register_object("obj3", 3)  # held 90 s ahead: followed that far, not as far as n1 (10 min)
        assert b.state.object("obj3")[0] == 3 and b.state.held_version(  # type: ignore[index]
            ev.OBJECT_REGISTERED, {"hash": "obj3"})[0] < wall_ms() + 150_000  # type: ignore[index]
        with pytest.raises(ClockConflict, match="ahead of this coordinator"):
            await b.register_node("n2", "zone-local", "1.1.1.1:1", 1)
        assert b.state.node("n2")[0] == "zone-liar"  # type: ignore[index]
        assert b._stamped_ahead == {}  # every stamp kept ahead went with its write's commit
    async with running(cfg, da) as again:  # restarted: its own stamps are followed, the writes still win
        await wait_for(lambda: again.rebuilt, what="catch-up")
        assert again.state.node("n1")[0] == "zone-second"  # type: ignore[index]
        assert again.hlc.last[0] <= wall_ms() + 60_000  # the stamps that followed n1 did not drag the clock
        await again.register_node("n1", "zone-after-restart", "1.1.1.1:1", 1)
        assert again.state.node("n1")[0] == "zone-after-restart"  # type: ignore[index]


async def write_beside_one_in_flight(cfg: Config, mode: str) -> tuple[str, list[str]]:
    """One trial of the test below: (n1's zone at the end, the writes acknowledged)."""
    from node.coordinator import Coordinator
    from node.hlc import wall_ms

    coord = Coordinator(cfg, MockDA())
    coord.state.apply(ev.make_event(ev.NODE_REGISTERED, (wall_ms() + 600_000, 0), "m", id="n1", zone="zone-m",
                                    addr="1.2.3.4:5", capacity_gb=1))
    if mode == "conflict":  # the key register of n1 held further ahead than a write may follow
        coord.state.apply(ev.make_event(ev.NODE_KEY, (ev.MAX_U63, 0), "m", id="n1", public_key="cd" * 32))
    gate, run_blocking = trio.Event(), coord.outbox._run_blocking

    async def held_back(fn: Callable[..., Any], *args: Any) -> Any:
        await gate.wait()
        return await run_blocking(fn, *args)

    coord.outbox._run_blocking = held_back  # type: ignore[method-assign]
    acked: list[str] = []

    async def write(zone: str, key: str | None = None, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            try:
                await coord.register_node("n1", zone, "1.1.1.1:1", 1, key)
                acked.append(zone)
            except Exception:  # Overloaded, ClockConflict: the write is refused, and said so
                pass

    async with trio.open_nursery() as nursery:
        await nursery.start(coord.outbox.run)
        b = await nursery.start(write, "zone-b")
        await trio.sleep(0.01)
        if mode == "cancelled":
            b.cancel()
        else:
            await nursery.start(write, "zone-x", "ab" * 32)
        await trio.sleep(0.01)
        nursery.start_soon(write, "zone-c")
        await trio.sleep(0.05)
        gate.set()
        await wait_for(lambda: "zone-c" in acked, what="write C")
        nursery.cancel_scope.cancel()
    coord.outbox.close()
    return coord.state.node("n1")[0], acked  # type: ignore[index]


@pytest.mark.parametrize("mode", ["cancelled", "overloaded", "conflict"])
async def test_a_write_that_fails_or_is_abandoned_beside_one_in_flight_leaves_the_next_one_its_own_stamp(
        make_config: Callable[..., Config], mode: str) -> None:
    """n1 is held ten minutes ahead; write B to it is in flight (its commit held back). Then B's caller goes away
    (its event still commits), or a write with a key to n1 fails (Overloaded, or ClockConflict on the key): the
    stamp kept for B was dropped with it, so the next write C got B's very stamp, and lost to B half the time
    (a tie broken by event id): acknowledged and ignored (a regression review). C wins, in every trial."""
    for trial in range(6):
        cfg = make_config(f"t{trial}", MAX_INFLIGHT_WRITES="2" if mode == "overloaded" else "64")
        zone, acked = await write_beside_one_in_flight(cfg, mode)
        assert zone == "zone-c", (trial, acked)


async def test_a_data_folder_restored_from_an_older_copy_is_found_by_its_own_later_events_on_da(
        make_config: Callable[..., Config], tmp_path: Path) -> None:
    """A coordinator's data folder put back from a backup holds a lock table missing the locks taken since, and
    nothing in it tells (a reviewer's reproduction: rivals of slots locked meanwhile were locked). Its own events on
    DA, signed with its identity key, written after the copy and before this run, tell: it says so, once, and the
    receipt engine is told (``on_older_copy``). A plain restart says nothing."""
    import shutil

    da = MockDA()
    cfg = make_config("a")
    async with running(cfg, da) as a:
        await register_nodes(a, 3)
        await wait_for(lambda: a.outbox.pending == 0, what="publication")
    backup = tmp_path / "backup"
    shutil.copytree(cfg.data_dir, backup)
    async with running(cfg, da) as a:
        await wait_for(lambda: a.rebuilt, what="the rebuild")
        assert a.older_copy is None  # a plain restart
        await register_nodes(a, 3, prefix="later")
        await wait_for(lambda: a.outbox.pending == 0, what="publication")
        await trio.sleep(0.3)
        assert a.older_copy is None  # its own events of this run
    shutil.rmtree(cfg.data_dir)
    shutil.copytree(backup, cfg.data_dir)
    told: list[str] = []
    coord = Coordinator(cfg, da)
    coord.on_older_copy = told.append
    async with trio.open_nursery() as nursery:
        await nursery.start(coord.run)
        await wait_for(lambda: coord.state.node("later-2") is not None, what="the later writes read back from DA")
        assert coord.older_copy is not None and "older copy" in coord.older_copy and told == [coord.older_copy]
        nursery.cancel_scope.cancel()


async def test_a_wall_clock_stepped_back_after_a_restart_is_no_older_copy(make_config: Callable[..., Config]) -> None:
    """A plain restart, then the wall clock stepped back half a second (NTP): the next writes were stamped below
    the start, between it and the outbox's latest stamp, and read back from DA they passed for an older copy's
    (an error, and receipts held for hours: a regression review). The clock resumes past the start."""
    from node.hlc import wall_ms

    da = MockDA()
    cfg = make_config("b")
    async with running(cfg, da) as b:
        await register_nodes(b, 3)
        await wait_for(lambda: b.outbox.pending == 0, what="publication")
    await trio.sleep(1.0)
    async with running(cfg, da) as b:
        await wait_for(lambda: b.rebuilt, what="the rebuild")
        assert b._own_stamps is not None
        b.hlc._clock = lambda: wall_ms() - 500
        await register_nodes(b, 2, prefix="new")
        await wait_for(lambda: b.outbox.pending == 0 and b.state.node("new-1") is not None, what="publication")
        await trio.sleep(0.5)
        assert b.older_copy is None
