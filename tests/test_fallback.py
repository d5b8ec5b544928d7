"""Fallback and reconciliation through the whole pipeline, in process: the primary goes down, writes
fall through to the secondary, then the emergency layer; on recovery every fallback blob is moved to
the primary and confirmed. Mock DA stands in for each layer here (tests/test_cluster.py uses the real
devnet and blob stores)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from api.app import create_app
from node.config import Config
from node.coordinator import Coordinator
from node.da.base import BlobRef
from node.da.mock import MockDA
from node.da.reconcile import AlreadyRunning
from node.da.status import Status
from tests.conftest import wait_for

FAST = {"DA_FAILURE_THRESHOLD": "2", "DA_RECOVERY_THRESHOLD": "2", "DA_HEALTH_INTERVAL_MS": "50",
        "RECONCILE_RETRY_DELAY_MS": "10", "DA_TIMEOUT_MS": "2000"}


class SlowPrimary(MockDA):
    """A Mock DA primary whose posts take ``delay`` seconds, counting the posts in flight at once."""

    def __init__(self, path: str = ":memory:") -> None:
        super().__init__(path)
        self.delay = 0.0
        self.in_flight = self.max_in_flight = 0

    async def post(self, data: bytes) -> BlobRef:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await trio.sleep(self.delay)
            return await super().post(data)
        finally:
            self.in_flight -= 1


class Layers:
    def __init__(self, primary_path: Path | None = None) -> None:
        # a file-backed primary outlives the coordinators that close their layers when they stop
        self.primary = SlowPrimary(str(primary_path) if primary_path else ":memory:")
        self.secondary, self.emergency = MockDA(name="secondary"), MockDA(name="emergency")


@asynccontextmanager
async def coordinator(cfg: Config, layers: Layers, members: frozenset[bytes] = frozenset()) -> AsyncIterator[
        Coordinator]:
    coord = Coordinator(cfg, layers.primary, layers.secondary, layers.emergency)
    for consumer in coord.consumers.values():
        consumer.members = coord.members = frozenset(coord.members | members)
    async with trio.open_nursery() as nursery:
        await nursery.start(coord.run)
        yield coord
        nursery.cancel_scope.cancel()


async def test_outage_fallthrough_emergency_and_reconciliation(make_config: Callable[..., Config],
                                                                tmp_path: Path) -> None:
    layers = Layers(tmp_path / "primary.sqlite")
    async with (
        coordinator(make_config("a", **FAST), layers) as a,
        coordinator(make_config("b", **FAST), layers, frozenset({a.public_key})) as b,
    ):
        await a.register_node("before", "z", "1.1.1.1:1", 1)
        await wait_for(lambda: b.state.node("before") is not None, what="normal replication")

        layers.primary.down = True
        for i in range(10):
            await a.register_node(f"sec-{i}", "z", "1.1.1.1:1", 1)
        await wait_for(lambda: a.da_view().status is Status.DEGRADED, what="Degraded")
        await wait_for(lambda: b.state.node_count == 11, what="B to read the secondary")
        assert a.da_view().routing == "secondary" and a.da.pending.pending_count >= 1

        layers.secondary.down = True
        for i in range(10):
            await a.register_node(f"emg-{i}", "z", "1.1.1.1:1", 1)
        await wait_for(lambda: a.da_view().status is Status.EMERGENCY, what="Emergency")
        await wait_for(lambda: b.state.node_count == 21, what="B to read the emergency log")
        assert a.outbox.pending == 0  # nothing waits in the outbox: it all landed somewhere

        pending_before = a.da.pending.pending_count
        layers.primary.down = layers.secondary.down = False
        await wait_for(lambda: a.da_view().status is Status.HEALTHY, timeout=10, what="recovery")
        assert a.da.pending.pending_count == 0 and a.da.reconciler.total_reconciled >= pending_before
        client = create_app(a).test_client()
        report = await (await client.get("/fallback/consistency")).get_json()
        assert report["is_consistent"] and report["items_verified"] >= pending_before
        assert a.state.root() == b.state.root()

    # a coordinator that follows only the primary now sees every write: nothing was lost
    fresh = Coordinator(make_config("fresh", CLUSTER_MEMBER_KEYS=a.public_key.hex()),
                        MockDA(str(tmp_path / "primary.sqlite")))
    async with trio.open_nursery() as nursery:
        await nursery.start(fresh.run)
        await wait_for(lambda: fresh.rebuilt, what="rebuild")
        assert fresh.state.node_count == 21 and fresh.state.root() == b.state.root()
        nursery.cancel_scope.cancel()


async def test_failed_reconciliation_keeps_blobs_pending_with_their_error(make_config: Callable[..., Config]) -> None:
    layers = Layers()
    async with coordinator(make_config("a", **FAST, RECONCILE_MAX_RETRIES="2"), layers) as a:
        layers.primary.down = True
        for i in range(5):
            await a.register_object(f"o{i}", i)
        await wait_for(lambda: a.da.pending.pending_count > 0 and a.outbox.pending == 0, what="fallback writes")
        count = a.da.pending.pending_count
        report = await a.da.reconciler.run_pass()  # the primary is still down: the pass stops after it failed
        threshold = a.da.machine.failure_threshold  # this many times in a row (the first blob's attempts)
        assert not report.success and report.aborted and report.blobs_failed == 1 and report.blobs_reconciled == 0
        assert "stays pending" in report.errors[0] and f"failed {threshold} times in a row" in report.errors[-1]
        pending = await a.da.pending.pending()
        tried = [p for p in pending if p.retry_count]
        assert len(pending) == count and len(tried) == 1 and tried[0].retry_count == threshold
        assert tried[0].last_error
        client = create_app(a).test_client()
        listed = await (await client.get("/fallback/pending")).get_json()
        assert {p["blob_id"] for p in listed} == {p.blob_id for p in pending}
        assert all(p["source_da"] == "secondary" and p["last_error"] for p in listed)
        layers.primary.down = False
        resp = await client.post("/fallback/reconcile")
        body = await resp.get_json()
        assert resp.status_code == 200 and body["success"] and body["blobs_reconciled"] == count
        assert await (await client.get("/fallback/pending")).get_json() == []


@pytest.mark.parametrize("parallel", [True, False])
async def test_one_reconciliation_at_a_time_and_parallel_batches(make_config: Callable[..., Config],
                                                                 parallel: bool) -> None:
    layers = Layers()
    cfg = make_config("a", **FAST, RECONCILE_PARALLEL=str(parallel).lower(), RECONCILE_BATCH_SIZE="3",
                      DA_BLOB_MAX_BYTES="4096")
    async with coordinator(cfg, layers) as a:
        layers.primary.down = True
        for i in range(8):  # one blob each (each write published before the next): batches of 3, 3 and 2
            await a.register_node(f"n{i}", "z", "1.1.1.1:1", 1)
            await wait_for(lambda: a.outbox.pending == 0, what="fallback write")
        assert a.da.pending.pending_count >= 6  # at least two full batches
        primary = layers.primary
        primary.delay, primary.max_in_flight = 0.05, 0  # slow enough for the posts of one batch to overlap
        layers.primary.down = False
        results: list[object] = []

        async def run() -> None:
            try:
                results.append(await a.da.reconciler.run_pass())
            except AlreadyRunning as exc:
                results.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            nursery.start_soon(run)
        assert sum(isinstance(r, AlreadyRunning) for r in results) >= 1
        await wait_for(lambda: a.da.pending.pending_count == 0, what="all reconciled")
        if parallel:  # a batch of RECONCILE_BATCH_SIZE posts at once, never more
            assert 2 <= primary.max_in_flight <= 3, primary.max_in_flight
        else:
            assert primary.max_in_flight == 1


async def test_quorum_certificates_are_kept_with_the_fallback_record(make_config: Callable[..., Config],
                                                                      tmp_path) -> None:  # type: ignore[no-untyped-def]
    from functools import partial

    from deploy.blobstore import serve_blobstore
    from node.da.quorum import QuorumCertificate, QuorumDA

    async with trio.open_nursery() as servers:
        urls = [await servers.start(partial(serve_blobstore, "127.0.0.1", 0, tmp_path / f"v{i}")) for i in range(3)]
        from node import identity

        keys = [bytes(identity.load_or_create(tmp_path / f"v{i}").verify_key) for i in range(3)]
        quorum = QuorumDA(urls, threshold_percent=67, signature_timeout_s=2, public_keys=keys)
        primary = MockDA()
        coord = Coordinator(make_config("a", **FAST), primary, quorum)
        async with trio.open_nursery() as nursery:
            await nursery.start(coord.run)
            primary.down = True
            await coord.register_node("n1", "z", "1.1.1.1:1", 1)
            await wait_for(lambda: coord.da.pending.pending_count > 0, what="a blob on the QuorumDA")
            [pending] = await coord.da.pending.pending_keys()
            raw = await coord.da.pending.certificate(pending.blob_id)
            assert raw is not None
            cert = QuorumCertificate.from_bytes(raw)
            assert cert.blob_hash.hex() == pending.blob_id and cert.verify(keys, 2)
            nursery.cancel_scope.cancel()
        await quorum.aclose()
        servers.cancel_scope.cancel()
