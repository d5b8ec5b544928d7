"""The write/read pipeline with real SQLite: outbox, publisher, consumer, snapshots, restart, rebuild.

Several coordinators share one Mock DA (the stand-in for Celestia); everything else is real.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio

from node import events as ev
from node.blob import encode_blob
from node.config import Config
from node.coordinator import Coordinator
from node.da.mock import MockDA
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
