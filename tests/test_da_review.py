"""DA stack review fixes: caller errors vs layer failures, automatic reconciliation in the background, write
failures vs reads in a real stack, the fallback record shielded from cancellation, closing every layer, and
bounded reconciliation and consistency passes."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio

from node.da.base import BlobRef, DAError, DAUnavailable
from node.da.blobstore_client import BlobRejected, BlobStoreDA
from node.da.celestia import BlobTooLarge, CelestiaDA, InvalidBlob
from node.da.mock import MockDA
from node.da.namespace import namespace_from_name
from node.da.pending import PendingStore
from node.da.quorum import QuorumDA
from node.da.reconcile import Reconciler
from node.da.stack import DAStack
from node.da.status import PRIMARY, SECONDARY, DAStatusMachine, Status
from tests.conftest import wait_for

NS = namespace_from_name("dsdn-review")


def make_stack(tmp_path: Path, primary: Any, secondary: Any = None, **kw: Any) -> DAStack:
    layers = {PRIMARY: primary} | ({SECONDARY: secondary} if secondary is not None else {})
    kw.setdefault("failure_threshold", 3)
    kw.setdefault("recovery_threshold", 2)
    kw.setdefault("health_interval_s", 0.02)
    kw.setdefault("retry_delay_s", 0.01)
    return DAStack(layers, tmp_path, timeout_s=2.0, **kw)


class RejectingDA(MockDA):
    """Serves reads; ``post`` raises ``error(...)`` for data starting with ``prefix`` (every post by default)."""

    def __init__(self, error: type[DAError], prefix: bytes = b"", name: str = "primary") -> None:
        super().__init__(name=name)
        self.error, self.prefix = error, prefix
        self.rejected = 0

    async def post(self, data: bytes) -> BlobRef:
        if data.startswith(self.prefix):
            self.rejected += 1
            raise self.error(f"{self.name}: blob is too large (refused)")
        return await super().post(data)


async def on_fallback(stack: DAStack, data: bytes) -> BlobRef:
    """A blob that landed on the secondary, recorded as the router would."""
    ref = await stack.layers[SECONDARY].post(data)
    await stack.pending.record(ref, data)
    return ref


# ---- 1. caller errors are not layer failures -------------------------------------------------------------------


async def test_caller_errors_do_not_degrade_the_primary_or_fall_through(tmp_path: Path) -> None:
    celestia = CelestiaDA("http://127.0.0.1:9", NS, timeout_s=1, retry_count=0, max_blob_bytes=10)
    secondary = MockDA(name="secondary")
    stack = make_stack(tmp_path, celestia, secondary)
    for bad, error in ((b"", InvalidBlob), (b"x" * 11, BlobTooLarge)):
        for _ in range(4):
            with pytest.raises(error):
                await stack.router.post(bad)
    snap = stack.snapshot()
    assert snap.status is Status.HEALTHY and snap.primary_failures == 0 and snap.routing == PRIMARY
    assert stack.router.fallthroughs == 0 and stack.router.rejected == 8
    assert await secondary.head() == 0 and stack.pending.pending_count == 0  # not tried elsewhere
    await stack.aclose()


async def test_a_blob_store_rejection_is_a_caller_error_on_any_layer(tmp_path: Path) -> None:
    secondary = RejectingDA(BlobRejected, name="secondary")
    stack = make_stack(tmp_path, MockDA(), secondary, failure_threshold=1)
    stack.layers[PRIMARY].inner.down = True  # type: ignore[attr-defined]
    for _ in range(3):  # the primary is down (a real failure), then the secondary refuses the blob itself
        with pytest.raises(BlobRejected):
            await stack.router.post(b"data")
    snap = stack.snapshot()
    assert snap.status is Status.DEGRADED and snap.healthy == {PRIMARY: False, SECONDARY: True}
    assert snap.routing == SECONDARY and stack.router.fallthroughs == 1
    await stack.aclose()


async def test_reconciliation_does_not_count_a_rejected_blob_against_the_primary(tmp_path: Path) -> None:
    primary = RejectingDA(BlobTooLarge, prefix=b"big")
    stack = make_stack(tmp_path, primary, MockDA(name="secondary"), max_retries=3)
    for _ in range(3):
        stack.machine.observe(PRIMARY, False, 1, "down", write=True)
    stack.machine.observe(PRIMARY, True, 2)
    stack.machine.observe(PRIMARY, True, 3)
    assert stack.machine.status is Status.RECOVERING
    await on_fallback(stack, b"big blob")
    await on_fallback(stack, b"fine blob")
    report = await stack.reconciler.run_pass()
    assert report.blobs_processed == 2 and report.blobs_reconciled == 1 and report.blobs_failed == 1
    assert primary.rejected == 1  # not retried within the pass
    assert stack.snapshot().primary_failures == 0
    assert stack.machine.status is Status.HEALTHY  # the refused blob does not hold the primary in Recovering
    [left] = await stack.pending.pending()
    assert left.data == b"big blob" and left.retry_count == 1 and "too large" in (left.last_error or "")
    assert "rejected by the primary" in report.errors[0]
    await stack.check_once()  # the monitor's passes do not hammer the primary with it ...
    assert primary.rejected == 1 and stack.reconciler.passes == 1 and stack.reconciler.waiting == 0
    await stack.reconciler.run_pass()  # ... a manual pass tries it again
    assert primary.rejected == 2 and stack.pending.pending_count == 1
    await stack.aclose()


# ---- 2 + 3. automatic reconciliation, in the background ---------------------------------------------------------


async def test_blobs_that_fell_through_while_healthy_are_reconciled(tmp_path: Path) -> None:
    primary, secondary = MockDA(), MockDA(name="secondary")
    stack = make_stack(tmp_path, primary, secondary)
    primary.down = True
    ref = await stack.router.post(b"fell through once")
    assert ref.layer == SECONDARY and stack.snapshot().status is Status.WARNING
    primary.down = False
    assert (await stack.router.post(b"next")).layer == PRIMARY
    assert stack.snapshot().status is Status.HEALTHY and stack.pending.pending_count == 1
    async with trio.open_nursery() as nursery:
        await nursery.start(stack.monitor)
        await wait_for(lambda: stack.pending.pending_count == 0, what="automatic reconciliation while Healthy")
        nursery.cancel_scope.cancel()
    page = await primary.read_after(0, 10)
    assert [d for _, d in page.items] == [b"next", b"fell through once"]
    await stack.aclose()


class GatedDA(MockDA):
    """Posts wait until ``gate`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = trio.Event()

    async def post(self, data: bytes) -> BlobRef:
        await self.gate.wait()
        return await super().post(data)


async def test_health_checks_go_on_while_a_pass_runs(tmp_path: Path) -> None:
    primary = GatedDA()
    stack = make_stack(tmp_path, primary, MockDA(name="secondary"))
    await on_fallback(stack, b"waiting")
    async with trio.open_nursery() as nursery:
        await nursery.start(stack.monitor)
        await wait_for(lambda: stack.reconciler.running, what="a pass to start")
        checks = stack.primary.metrics.health_check_count
        await wait_for(lambda: stack.primary.metrics.health_check_count >= checks + 5, timeout=2,
                       what="health checks during the pass")
        assert stack.reconciler.running and stack.reconciler.passes == 0  # still the same pass
        primary.gate.set()
        await wait_for(lambda: stack.pending.pending_count == 0, what="the pass to finish")
        nursery.cancel_scope.cancel()
    assert stack.reconciler.passes >= 1
    await stack.aclose()


# ---- 4. a primary that reads fine but rejects writes ---------------------------------------------------------


async def test_a_primary_that_only_reads_reaches_degraded(tmp_path: Path) -> None:
    primary = RejectingDA(DAUnavailable)  # a layer failure, not a caller error
    stack = make_stack(tmp_path, primary, MockDA(name="secondary"), failure_threshold=3)
    for i in range(3):
        if i:
            for _ in range(5):  # the coordinator's consumer polls (read observations) and health checks succeed
                stack.observe(PRIMARY, True)
                stack.observe(PRIMARY, await stack.primary.head() >= 0)
        assert stack.snapshot().status is (Status.HEALTHY if i == 0 else Status.WARNING)
        assert (await stack.router.post(b"w%d" % i)).layer == SECONDARY
    assert stack.snapshot().status is Status.DEGRADED and stack.snapshot().routing == SECONDARY
    assert primary.rejected == 3
    # reads alone may start a recovery; then the primary must take writes again, or it is back to the fallback
    stack.observe(PRIMARY, True)
    stack.observe(PRIMARY, True)
    assert stack.snapshot().status is Status.RECOVERING
    await stack.check_once()  # the reconciliation pass is the write probe: it fails
    assert stack.snapshot().status is Status.DEGRADED and stack.pending.pending_count == 3
    await stack.aclose()


# ---- 7. the fallback record survives the caller's cancellation ------------------------------------------------


class CancellingDA(MockDA):
    """Cancels ``scope`` once the blob is stored, as a client that disconnects at that moment would."""

    scope: trio.CancelScope | None = None

    async def post(self, data: bytes) -> BlobRef:
        ref = await super().post(data)
        assert self.scope is not None
        self.scope.cancel()
        return ref


async def test_a_fallback_blob_is_recorded_even_if_the_write_is_cancelled(tmp_path: Path) -> None:
    primary, secondary = MockDA(), CancellingDA(name="secondary")
    primary.down = True
    stack = make_stack(tmp_path, primary, secondary)
    with trio.CancelScope() as scope:
        secondary.scope = scope
        await stack.router.post(b"landed on the secondary")
        await trio.sleep(1)
    assert scope.cancelled_caught or scope.cancel_called
    assert stack.pending.pending_count == 1
    [blob] = await stack.pending.pending()
    assert blob.data == b"landed on the secondary" and blob.ref.layer == SECONDARY
    await stack.aclose()


# ---- 8. closing every layer once ----------------------------------------------------------------------------


async def test_aclose_closes_every_layer_once_and_the_pending_store(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    closed: list[int] = []
    original = BlobStoreDA.aclose

    async def counting(self: BlobStoreDA) -> None:
        closed.append(id(self))
        await original(self)

    monkeypatch.setattr(BlobStoreDA, "aclose", counting)
    celestia = CelestiaDA("http://127.0.0.1:9", NS, timeout_s=1)
    client = celestia._http()
    quorum = QuorumDA(["http://127.0.0.1:9", "http://127.0.0.1:10"], threshold_percent=50, signature_timeout_s=1)
    emergency = BlobStoreDA("http://127.0.0.1:11")
    followed: dict[str, Any] = {PRIMARY: celestia, "emergency": emergency}
    followed |= {v.name: v for v in quorum.validators()}
    stack = DAStack({PRIMARY: celestia, SECONDARY: quorum, "emergency": emergency}, tmp_path, timeout_s=1,
                    followed=followed)
    await stack.aclose()
    assert client.is_closed and celestia._client is None
    stores = [*quorum.validators(), emergency]
    assert sorted(closed) == sorted(id(s) for s in stores)  # each exactly once
    assert all(s._http.is_closed for s in stores)
    with pytest.raises(sqlite3.ProgrammingError):
        stack.pending._db.execute("SELECT 1")

    mock = MockDA()
    (tmp_path / "b").mkdir()
    stack = make_stack(tmp_path / "b", mock)
    await stack.aclose(close_layers=False)
    assert await mock.head() == 0  # the caller's layer stays open
    stack = make_stack(tmp_path / "b", mock)
    with trio.CancelScope() as scope:
        scope.cancel()
        await stack.aclose()  # shielded: closes even in a cancelled scope
    with pytest.raises(sqlite3.ProgrammingError):
        mock._db.execute("SELECT 1")


# ---- 10. bounded passes and consistency checks --------------------------------------------------------------


async def test_a_pass_loads_one_batch_of_blobs_at_a_time(tmp_path: Path) -> None:
    stack = make_stack(tmp_path, MockDA(), MockDA(name="secondary"), batch_size=4)
    for i in range(10):
        await on_fallback(stack, b"blob %d" % i)
    loads: list[int] = []
    load = stack.pending.load

    async def spy_load(ids: Any) -> Any:
        loads.append(len(ids))
        return await load(ids)

    async def everything(*_: Any) -> Any:
        raise AssertionError("a pass must not load every pending blob at once")

    stack.pending.load = spy_load  # type: ignore[method-assign]
    stack.pending.pending = everything  # type: ignore[method-assign]
    report = await stack.reconciler.run_pass()
    assert report.blobs_reconciled == 10 and stack.pending.pending_count == 0
    assert loads == [4, 4, 2]
    page = await stack.layers[PRIMARY].read_after(0, 100)
    assert [d for _, d in page.items] == [b"blob %d" % i for i in range(10)]  # oldest first
    await stack.aclose()


class CountingDA(MockDA):
    """``get`` counts reads in flight and the heights asked for; ``hang`` makes it never answer."""

    def __init__(self, name: str) -> None:
        super().__init__(name=name)
        self.hang = False
        self.in_flight = self.max_in_flight = 0
        self.asked: list[int] = []

    async def get(self, ref: BlobRef) -> bytes:
        self.asked.append(ref.height)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.hang:
                await trio.sleep_forever()
            await trio.sleep(0.01)
            return await super().get(ref)
        finally:
            self.in_flight -= 1


async def test_consistency_checks_the_most_recent_blobs_concurrently(tmp_path: Path) -> None:
    primary, secondary = CountingDA("primary"), CountingDA("secondary")
    pending = PendingStore(tmp_path / "fallback.sqlite")
    layers = {PRIMARY: primary, SECONDARY: secondary}
    reconciler = Reconciler(layers, pending, DAStatusMachine((PRIMARY, SECONDARY)), lambda: 1)
    reconciler.check_limit, reconciler.check_concurrency = 5, 3
    refs = []
    for i in range(16):
        data = b"blob %d" % i
        ref = await secondary.post(data)
        blob_id = await pending.record(ref, data)
        refs.append(ref)
        if i % 2:  # half of them reconciled
            await pending.mark_reconciled(blob_id, await primary.post(data))
    report = await reconciler.consistency()
    assert report["is_consistent"] and report["details"] == [] and report["items_verified"] == 10
    assert report["pending_unchecked"] == 3 and report["reconciled_unchecked"] == 3 and report["complete"]
    assert sorted(secondary.asked) == [refs[i].height for i in (6, 8, 10, 12, 14)]  # the newest pending ones
    assert sorted(primary.asked) == [4, 5, 6, 7, 8]  # the newest reconciled ones
    assert 2 <= max(primary.max_in_flight, secondary.max_in_flight) <= 3
    pending.close()


async def test_consistency_stops_at_its_deadline_and_says_so(tmp_path: Path) -> None:
    primary, secondary = CountingDA("primary"), CountingDA("secondary")
    pending = PendingStore(tmp_path / "fallback.sqlite")
    reconciler = Reconciler({PRIMARY: primary, SECONDARY: secondary}, pending,
                            DAStatusMachine((PRIMARY, SECONDARY)), lambda: 1)
    reconciler.check_deadline_s, reconciler.check_concurrency = 0.3, 3
    for i in range(8):
        await pending.record(await secondary.post(b"b%d" % i), b"b%d" % i)
    secondary.hang = True
    with trio.fail_after(3):
        report = await reconciler.consistency()
    assert not report["is_consistent"] and not report["complete"] and report["items_verified"] == 0
    assert report["inconsistencies_found"] == 0 and report["pending_unchecked"] == 8
    assert "deadline" in report["details"][-1] and "8 pending" in report["details"][-1]
    assert secondary.max_in_flight == 3
    pending.close()


# ---- fallbacks on standby while Healthy ----------------------------------------------------------------------


def count_probes(stack: DAStack) -> dict[str, int]:
    """Count each layer's health probes (MeteredLayer.probe falls back to head() for a layer without probe())."""
    probes = dict.fromkeys(stack.layers, 0)
    for name in probes:
        inner = stack.layers[name].inner

        async def counted(inner: Any = inner, name: str = name) -> int:  # no thread: the tests step the clock
            probes[name] += 1
            if inner.down:
                raise DAUnavailable(f"{name}: down")
            return 0

        inner.head = counted
    return probes


async def test_fallbacks_are_probed_every_five_seconds_while_healthy_and_every_round_from_warning(
        tmp_path: Path, mock_clock: trio.testing.MockClock) -> None:
    from node.da.stack import STANDBY_MAX_AGE_S

    primary, secondary = MockDA(name=PRIMARY), MockDA(name=SECONDARY)
    stack = make_stack(tmp_path, primary, secondary, health_interval_s=1.0)
    probes = count_probes(stack)
    for _ in range(10):  # ten rounds a second apart
        await stack.check_once()
        mock_clock.jump(1.0)
    assert STANDBY_MAX_AGE_S == 5.0 and probes == {PRIMARY: 10, SECONDARY: 2}  # at 0 s and 5 s
    assert stack.machine.status is Status.HEALTHY

    primary.down = True  # the first failed check: Warning; from then on every layer every round
    await stack.check_once()
    assert stack.machine.status is Status.WARNING
    before = dict(probes)
    await stack.check_once()
    await stack.check_once()
    assert probes[SECONDARY] - before[SECONDARY] == 2 and stack.machine.status is Status.DEGRADED
    assert stack.machine.snapshot().routing == SECONDARY  # chosen on a fresh check of the secondary
    await stack.aclose()


async def test_a_longer_interval_probes_the_fallbacks_every_round(tmp_path: Path,
                                                                   mock_clock: trio.testing.MockClock) -> None:
    stack = make_stack(tmp_path, MockDA(name=PRIMARY), MockDA(name=SECONDARY), health_interval_s=5.0)
    probes = count_probes(stack)
    for _ in range(4):
        await stack.check_once()
        mock_clock.jump(5.0)
    assert probes == {PRIMARY: 4, SECONDARY: 4}  # as before standby existed: the default interval is 5 s
    await stack.aclose()


async def test_leaving_healthy_by_failed_writes_probes_the_fallbacks_at_once(
        tmp_path: Path, mock_clock: trio.testing.MockClock) -> None:
    stack = make_stack(tmp_path, MockDA(name=PRIMARY), MockDA(name=SECONDARY), health_interval_s=1.0)
    probes = count_probes(stack)
    async with trio.open_nursery() as nursery:
        await nursery.start(stack.monitor)
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(1.0)
        await trio.testing.wait_all_tasks_blocked()  # rounds at 0 s and 1 s: the secondary probed at 0 s only
        assert probes == {PRIMARY: 2, SECONDARY: 1}
        stack.observe(PRIMARY, False, "post failed", write=True)  # not a probe: a publisher's failed write
        assert stack.machine.status is Status.WARNING
        await trio.testing.wait_all_tasks_blocked()
        assert probes[SECONDARY] == 2  # at once, not at the next round
        nursery.cancel_scope.cancel()
    await stack.aclose()


async def test_a_store_answering_a_position_beyond_what_sqlite_holds_is_malformed_not_a_crash() -> None:
    """A blob store (or one quorum validator) answering a post with position 2^63, or a log page with a cursor of
    2^64: the router's pending.record raised OverflowError from SQLite (or snapshot.save from msgpack), no DA
    error path catches that, and the coordinator went down; one lying validator of three took down every writer
    that fell back to the quorum (a reviewer's reproduction). Now the store's answer is malformed (DAUnavailable),
    as any other lie."""
    import hashlib

    store = BlobStoreDA("http://127.0.0.1:9")
    data = b"blob"
    answers: list[dict[str, Any]] = [
        {"position": 2**63, "hash": hashlib.sha256(data).hexdigest(), "signature": "00" * 64, "validator": "11" * 32},
        {"items": [], "cursor": 2**64, "at_head": False},
        {"items": [], "cursor": 3, "at_head": True, "head": 2**63},
    ]

    async def answer(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return answers.pop(0)

    store._call = answer  # type: ignore[method-assign]
    try:
        with pytest.raises(DAUnavailable, match="malformed post answer"):
            await store.store(data)
        for _ in range(2):
            with pytest.raises(DAUnavailable, match=r"malformed log (page|head)"):
                await store.read_after(2, 10)
    finally:
        await store.aclose()


async def test_a_fallback_down_at_the_start_is_checked_every_second_until_it_is_up(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """The members of a local cluster host each other's validators and start one after another: the secondary,
    found down at the first check, was on standby (checked every 5 s) and showed as down for 5 s after every member
    was ready (a fresh user's run). For START_S after the start, a layer found unhealthy is checked every second."""
    from node.da.stack import START_PROBE_S

    primary, secondary = MockDA(name=PRIMARY), MockDA(name=SECONDARY)
    stack = make_stack(tmp_path, primary, secondary, health_interval_s=1.0)
    probes = count_probes(stack)
    secondary.down = True
    async with trio.open_nursery() as nursery:
        await nursery.start(stack.monitor)
        await trio.sleep(2.5)
        assert not stack.machine.is_healthy(SECONDARY) and stack.machine.status is Status.HEALTHY
        secondary.down = False
        await trio.sleep(2.5 * START_PROBE_S)
        assert stack.machine.is_healthy(SECONDARY), probes  # (on standby, not before 5 s)
        nursery.cancel_scope.cancel()
    await stack.aclose()
