"""Reconciliation in batches (issue 12 goal 4): a primary that takes several blobs per call (Celestia's blob.Submit
takes an array) gets them in calls of up to SUBMIT_BLOBS blobs and ``max_submit_bytes`` bytes, several calls in
flight, each read back in one call and marked in one transaction. The durability rules still hold: a blob is
marked reconciled only once the primary returned it; a crash between the submit and the mark leaves it pending
and a later pass posts it again (a harmless duplicate); a call the primary refuses as too large is split down
to the blob at fault, which alone stays pending. A fake batching layer here, and the real devnet."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import nacl.signing
import pytest
import trio
import trio.testing

from deploy.devnet import serve_devnet
from node.blob import MAGIC, encode_blob
from node.da import reconcile
from node.da.base import BlobNotFound, BlobRef, DATimeout
from node.da.celestia import BlobTooLarge, CelestiaDA
from node.da.metered import MeteredLayer
from node.da.mock import MockDA
from node.da.namespace import namespace_from_name
from node.da.pending import PendingStore
from node.da.reconcile import SUBMIT_BLOBS, SUBMITS_IN_FLIGHT
from node.da.stack import DAStack
from node.da.status import FALLBACK_READ_FAILURES, PRIMARY, SECONDARY, DAStatusMachine, Status

NS = namespace_from_name("dsdn-reconcile")
TOKEN = "reconcile-devnet"


class BatchingDA(MockDA):
    """A Mock DA primary with ``post_many``/``included``, as CelestiaDA has them. ``node_limit``: calls with more
    bytes than that are refused as too large (a node whose limit is below ours); ``missing``: data ``included``
    pretends not to find; ``after_submit``: called once a call's blobs are stored, before it returns."""

    def __init__(self, max_submit_bytes: int = 1_000_000, node_limit: int | None = None, delay: float = 0.0) -> None:
        super().__init__()
        self.max_submit_bytes, self.node_limit, self.delay = max_submit_bytes, node_limit, delay
        self.calls: list[list[int]] = []  # blob sizes of every accepted call
        self.refused = 0
        self.in_flight = self.max_in_flight = 0
        self.missing: set[bytes] = set()
        self.unanswered: set[bytes] = set()  # data whose read-back gets no answer (DATimeout)
        self.after_submit: Callable[[], None] | None = None

    async def post_many(self, datas: Sequence[bytes]) -> list[BlobRef]:
        if self.node_limit is not None and sum(len(d) for d in datas) > self.node_limit:
            self.refused += 1
            raise BlobTooLarge(f"{self.name}: blob too large: exceeds the maximum size")
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await trio.sleep(self.delay)
            refs = [await self.post(d) for d in datas]
        finally:
            self.in_flight -= 1
        self.calls.append([len(d) for d in datas])
        if self.after_submit is not None:
            self.after_submit()
            await trio.sleep(0)
        return refs

    async def included(self, refs: Sequence[BlobRef], datas: Sequence[bytes]) -> list[bool]:
        if self.unanswered.intersection(datas):
            raise DATimeout(f"{self.name}: blob.GetAll got no answer")
        return [d not in self.missing and await self.get(r) == d for r, d in zip(refs, datas, strict=True)]


def make_stack(tmp_path: Path, primary: Any, **kw: Any) -> DAStack:
    kw.setdefault("retry_delay_s", 0.01)
    return DAStack({PRIMARY: primary, SECONDARY: MockDA(name=SECONDARY)}, tmp_path, timeout_s=5.0, **kw)


async def fill(stack: DAStack, datas: Sequence[bytes]) -> None:
    """Blobs that landed on the secondary, recorded as the router records them."""
    for data in datas:
        await stack.pending.record(await stack.layers[SECONDARY].post(data), data)


def count_posts(primary: MockDA, **watched: bytes) -> dict[str, int]:
    """How many times each watched blob (name=data) is posted to ``primary`` from now on."""
    posted, post = dict.fromkeys(watched, 0), primary.post

    async def counting_post(data: bytes) -> BlobRef:
        for name, blob in watched.items():
            posted[name] += data == blob
        return await post(data)

    primary.post = counting_post  # type: ignore[method-assign]
    return posted


def garble_reads(primary: MockDA, blob: bytes) -> None:
    """``primary`` takes ``blob`` but gives other bytes back for it from now on (a poisoned blob)."""
    get = primary.get

    async def wrong_bytes(ref: BlobRef) -> bytes:
        data = await get(ref)
        return b"other bytes" if data == blob else data

    primary.get = wrong_bytes  # type: ignore[method-assign]


async def primary_blobs(primary: MockDA) -> list[bytes]:
    return [d for _, d in (await primary.read_after(0, 1_000_000)).items]


async def test_calls_are_filled_up_to_the_count_and_byte_limits_with_several_in_flight(tmp_path: Path) -> None:
    primary = BatchingDA(max_submit_bytes=20_000, delay=0.02)
    stack = make_stack(tmp_path, primary)
    small = [b"small %04d" % i for i in range(600)]  # pages of 256 keys: 256, 256, then 88 small + 100 big
    big = [os.urandom(1000) for _ in range(100)]  # byte-bound: 20 a call (19 after the 88 small ones)
    await fill(stack, small + big)
    report = await stack.reconciler.run_pass()
    assert report.success and report.blobs_processed == report.blobs_reconciled == 700
    assert stack.pending.pending_count == 0 and await stack.pending.pending() == []  # the counter agrees
    assert all(len(c) <= SUBMIT_BLOBS and sum(c) <= primary.max_submit_bytes for c in primary.calls)
    assert sorted(len(c) for c in primary.calls) == [1, 20, 20, 20, 20, 88 + 19, 256, 256]
    assert 2 <= primary.max_in_flight <= SUBMITS_IN_FLIGHT
    metrics = stack.primary.metrics  # each call counted once by the primary's MeteredLayer, and its read back
    assert metrics.post_count == metrics.get_count == len(primary.calls) and metrics.error_count == 0
    assert sorted(await primary_blobs(primary)) == sorted(small + big)
    assert all(b.primary_ref is not None for b in await stack.pending.reconciled())
    await stack.aclose()


async def test_a_call_refused_as_too_large_is_split_down_to_the_blob_at_fault(tmp_path: Path) -> None:
    primary = BatchingDA(node_limit=4000)  # the node takes less than our max_submit_bytes
    stack = make_stack(tmp_path, primary)
    fits = [os.urandom(900) for _ in range(20)]
    too_big = b"x" * 5000
    await fill(stack, [*fits[:7], too_big, *fits[7:]])
    report = await stack.reconciler.run_pass()
    assert report.blobs_processed == 21 and report.blobs_reconciled == 20
    assert report.blobs_failed == report.blobs_rejected == 1 and not report.success
    assert all(sum(c) <= 4000 for c in primary.calls) and primary.refused >= 2
    [left] = await stack.pending.pending()
    assert left.data == too_big and left.last_error and "too large" in left.last_error
    assert sorted(await primary_blobs(primary)) == sorted(fits)
    assert stack.machine.status is Status.HEALTHY  # the blob's fault, not the primary's
    assert stack.reconciler.waiting == 0  # automatic passes leave it alone; it stays visible
    await stack.aclose()


async def test_a_blob_the_primary_does_not_return_stays_pending(tmp_path: Path) -> None:
    primary = BatchingDA()
    stack = make_stack(tmp_path, primary, max_retries=2)
    datas = [b"blob %d" % i for i in range(10)]
    primary.missing.add(datas[3])
    await fill(stack, datas)
    report = await stack.reconciler.run_pass()
    assert report.blobs_reconciled == 9 and report.blobs_failed == 1
    [left] = await stack.pending.pending()
    assert left.data == datas[3] and left.retry_count == 3 and "did not return" in (left.last_error or "")
    assert [len(c) for c in primary.calls] == [10, 1, 1]  # only the missing blob is posted again
    primary.missing.clear()
    assert (await stack.reconciler.run_pass()).blobs_reconciled == 1 and stack.pending.pending_count == 0
    await stack.aclose()


async def test_a_crash_between_submit_and_mark_leaves_the_blobs_pending_and_they_are_posted_again(
        tmp_path: Path) -> None:
    primary = BatchingDA()
    stack = make_stack(tmp_path, primary)
    datas = [b"event blob %d" % i for i in range(300)]
    await fill(stack, datas)
    with trio.CancelScope() as crash:
        primary.after_submit = crash.cancel  # the process dies once the primary took the first call
        await stack.reconciler.run_pass()
    assert crash.cancelled_caught and len(primary.calls) == 1
    await stack.aclose(close_layers=False)

    restarted = make_stack(tmp_path, primary)  # the same data dir: the fallback record survived
    assert restarted.pending.pending_count == 300  # nothing was marked: the blobs on the primary stay pending
    primary.after_submit = None
    report = await restarted.reconciler.run_pass()
    assert report.success and report.blobs_reconciled == 300 and restarted.pending.pending_count == 0
    on_primary = await primary_blobs(primary)
    assert sorted(set(on_primary)) == sorted(datas)  # every blob is there, those posted before the crash twice
    assert len(on_primary) >= 300 + len(primary.calls[0]) and max(map(on_primary.count, datas)) == 2
    await restarted.aclose()


async def test_a_pass_that_stops_on_fallback_leaves_the_rest_pending(tmp_path: Path) -> None:
    primary = BatchingDA(delay=0.01)
    stack = make_stack(tmp_path, primary, failure_threshold=1)
    await fill(stack, [b"b%d" % i for i in range(2000)])

    def fail_over() -> None:
        stack.observe(PRIMARY, False, "down again", write=True)

    primary.after_submit = fail_over  # the primary fails again during the pass
    report = await stack.reconciler.run_pass(stop_on_fallback=True)
    assert report.aborted and stack.machine.status is Status.DEGRADED
    done = report.blobs_reconciled
    assert 0 < done < 2000 and stack.pending.pending_count == 2000 - done
    await stack.aclose()


# ---- the real devnet --------------------------------------------------------------------------------------------


@pytest.fixture
async def devnet(nursery: trio.Nursery) -> str:
    url: str = await nursery.start(partial(serve_devnet, "127.0.0.1", 0, ":memory:", 0.01, TOKEN))
    return url


async def test_reconciliation_through_the_devnet_posts_many_blobs_per_submit(devnet: str, tmp_path: Path) -> None:
    primary = CelestiaDA(devnet, NS, TOKEN, timeout_s=10, retry_count=0)
    stack = make_stack(tmp_path, primary)
    datas = [b"on the fallback %d " % i + os.urandom(200) for i in range(600)]
    await fill(stack, datas)
    submits = 0
    call = primary.call

    async def counting(method: str, params: Sequence[Any], **kw: Any) -> Any:
        nonlocal submits
        submits += method == "blob.Submit"
        return await call(method, params, **kw)

    primary.call = counting  # type: ignore[method-assign]
    report = await stack.reconciler.run_pass()
    assert report.success and report.blobs_reconciled == 600 and stack.pending.pending_count == 0
    assert submits == 3  # 256 + 256 + 88
    reconciled = await stack.pending.reconciled()
    for blob in reconciled[:20]:
        assert blob.primary_ref is not None and await primary.get(blob.primary_ref) == blob.data
    assert len({b.primary_ref.height for b in reconciled if b.primary_ref}) <= 3
    consistency = await stack.reconciler.consistency()
    assert consistency["is_consistent"] and consistency["complete"]
    await stack.aclose()


async def test_post_many_checks_the_total_before_any_io_and_included_reads_a_height_once(devnet: str) -> None:
    async with CelestiaDA("http://127.0.0.1:9", NS, max_blob_bytes=1000) as nowhere:  # nothing listens there
        with pytest.raises(BlobTooLarge, match="together"):
            await nowhere.post_many([b"a" * 600, b"b" * 600])
        with pytest.raises(BlobTooLarge):
            await nowhere.post_many([b"c" * 1001])
    async with CelestiaDA(devnet, NS, TOKEN, timeout_s=10, retry_count=0) as da:
        datas = [b"one", b"two", b"three"]
        refs = await da.post_many(datas)
        assert len({r.height for r in refs}) == 1
        assert [await da.get(r) for r in refs] == datas
        reads = 0
        call = da.call

        async def counting(method: str, params: Sequence[Any], **kw: Any) -> Any:
            nonlocal reads
            reads += method == "blob.GetAll"
            await trio.sleep(0.05)  # the other callers arrive while it is in flight
            return await call(method, params, **kw)

        da.call = counting  # type: ignore[method-assign]
        results: list[list[bool]] = []

        async def ask(i: int) -> None:
            results.append(await da.included([refs[i]], [datas[i]]))

        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(ask, i)
        assert reads == 1 and results == [[True]] * 3
        assert await da.included(refs, [b"one", b"TWO", b"three"]) == [True, False, True]  # bytes, not claims
        assert reads == 2


@pytest.mark.parametrize("batching", [True, False])
async def test_a_blob_the_primary_takes_but_never_returns_is_held_back_not_blamed_on_the_primary(
        tmp_path: Path, autojump_clock: trio.testing.MockClock, batching: bool) -> None:
    """One pending blob the primary takes and never gives back, and no other traffic: it used to count as the
    primary's failure at every attempt, so the monitor flipped a healthy primary to the fallback and back every
    health interval, for ever, posting the blob again each time (a reviewer's run: 121 transitions and 180 posts in
    ten minutes). Now the monitor's passes hold the blob back, longer after each miss; it stays pending with its
    error, and a manual pass tries it at once."""
    primary = BatchingDA() if batching else MockDA()
    poison = b"poison blob"
    posted = count_posts(primary, poison=poison)
    if batching:
        primary.missing.add(poison)
    else:
        get = primary.get
        garble_reads(primary, poison)
    autojump_clock.autojump_threshold = 0.02  # (the pending store's SQLite calls run in threads: real time)
    stack = make_stack(tmp_path, primary, health_interval_s=5.0, max_retries=1)
    stack.reconciler.clock = lambda: int(trio.current_time() * 1000)
    await fill(stack, [poison, b"fine"])
    async with trio.open_nursery() as nursery:
        await nursery.start(stack.monitor)
        await trio.sleep(600)
        # a pass that saw no blob back (the poisoned one alone, from the second on) counts the miss as one failure
        # of the primary (it might be losing every blob), and the post's success clears it at the next pass: at
        # most Warning and back, at each of the passes (30, 90, 210 and 450 s), never a failover
        assert stack.machine.status in (Status.HEALTHY, Status.WARNING) and stack.machine.transitions <= 8
        assert stack.machine.last_fallback_at is None
        # passes at about 0, 30, 90, 210 and 450 s (held 30 s after the first miss, doubling): two posts each
        assert 6 <= posted["poison"] <= 10, posted
        [left] = await stack.pending.pending()
        assert left.data == poison and "the primary took the blob but" in (left.last_error or "")
        last = stack.reconciler.last_report
        assert last is not None and any("held back from automatic passes for 480 s" in e for e in last.errors)
        assert stack.reconciler.waiting == 0 and stack.pending.pending_count == 1
        before = posted["poison"]
        report = await stack.reconciler.run_pass()  # manual: tried at once
        assert report.blobs_failed == 1 and posted["poison"] == before + 2
        if batching:
            primary.missing.clear()
        else:
            primary.get = get  # type: ignore[method-assign]
        assert (await stack.reconciler.run_pass()).blobs_reconciled == 1
        assert stack.pending.pending_count == 0 and not stack.reconciler.held
        nursery.cancel_scope.cancel()
    await stack.aclose()


@pytest.mark.parametrize("batching", [True, False])
async def test_a_blob_whose_read_back_gets_no_answer_is_held_back_not_posted_at_every_pass(
        tmp_path: Path, autojump_clock: trio.testing.MockClock, batching: bool) -> None:
    """The primary takes the blob, but reading it back times out (no answer) while its health checks pass: the blob
    was posted 1 + max_retries times at every pass, and a pass started at every health interval, for ever (a
    reviewer's run: 480 paid posts in ten minutes, 959 status transitions). It is held back like a blob the
    primary answered it has not got, after one post per pass; the read counts as the primary's failure."""
    primary = BatchingDA() if batching else MockDA()
    slow = b"a blob whose read-back times out"
    posted = count_posts(primary, slow=slow)
    if batching:
        primary.unanswered.add(slow)
    else:
        get = primary.get

        async def unanswered(ref: BlobRef) -> bytes:
            data = await get(ref)
            if data == slow:
                raise DATimeout(f"{PRIMARY}: get got no answer within 5s")
            return data

        primary.get = unanswered  # type: ignore[method-assign]
    autojump_clock.autojump_threshold = 0.02
    stack = make_stack(tmp_path, primary, health_interval_s=5.0, max_retries=3)
    stack.reconciler.clock = lambda: int(trio.current_time() * 1000)
    await fill(stack, [slow])
    async with trio.open_nursery() as nursery:
        await nursery.start(stack.monitor)
        await trio.sleep(600)
        # passes at about 0, 30, 90, 210 and 450 s (held 30 s after the first miss, doubling): one post each
        assert 4 <= posted["slow"] <= 6, posted
        assert stack.reconciler.held and stack.reconciler.waiting == 0 and stack.pending.pending_count == 1
        assert stack.machine.last_fallback_at is None and stack.machine.transitions <= 12
        last = stack.reconciler.last_report
        assert last is not None and any("held back from automatic passes" in e for e in last.errors)
        nursery.cancel_scope.cancel()
    await stack.aclose()


async def test_a_poisoned_blob_does_not_keep_a_working_primary_in_recovering(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """After an outage, one pending blob the primary takes and never gives back, beside one it gives back: while
    Recovering, holds were ignored and held blobs kept the status there, so the status stayed Recovering for ever
    and the blob was posted at every health interval (a reviewer's run: 1,438 paid posts in an hour). Once the
    primary gave other blobs back since its miss, the blob is its own failure: held back, and Recovering ends."""
    primary = MockDA()
    poison = b"poison blob"
    posted = count_posts(primary, poison=poison)
    garble_reads(primary, poison)
    autojump_clock.autojump_threshold = 0.02
    stack = make_stack(tmp_path, primary, health_interval_s=5.0, max_retries=1)
    stack.reconciler.clock = lambda: int(trio.current_time() * 1000)
    await fill(stack, [poison, b"fine"])
    for _ in range(3):  # an outage, over now
        stack.machine.observe(PRIMARY, False, 0, "down", write=True)
    assert stack.machine.status is Status.DEGRADED
    statuses: list[Status] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(stack.monitor)
        for i in range(360):  # an hour, a write every 10 s
            await trio.sleep(10)
            await stack.router.post(b"event %d" % i)
            statuses.append(stack.machine.status)
        nursery.cancel_scope.cancel()
    assert statuses[-1] is Status.HEALTHY and statuses.count(Status.RECOVERING) <= 6
    assert posted["poison"] <= 30, posted  # a few passes while Recovering, then held back, longer after each miss
    [left] = await stack.pending.pending()
    assert left.data == poison and stack.router.posts_by_layer[PRIMARY] >= 350
    await stack.aclose()



class LosesOurs(MockDA):
    """A primary that takes our posts and stores none of them; other members' blobs land (``theirs``)."""

    async def post(self, data: bytes) -> BlobRef:
        return BlobRef(self.name, 10**9, hashlib.sha256(data).digest())

    async def theirs(self, data: bytes) -> BlobRef:
        return await super().post(data)


@pytest.mark.parametrize("ours_land", [False, True])
async def test_only_our_own_later_blobs_back_from_the_primary_prove_a_held_blob_its_own_failure(
        tmp_path: Path, autojump_clock: trio.testing.MockClock, ours_land: bool) -> None:
    """After an outage, with blobs pending: a primary that loses every blob of ours must not end Recovering because
    other members' blobs land on it and our consumer reads them (a first version counted every blob read from the
    log as proof: Healthy within 25 s, then Degraded and back for ever, a regression review's run). A poisoned blob
    of ours, on a primary that stores what we post after it (read from its log), is its own failure: Healthy."""
    key = nacl.signing.SigningKey(b"o" * 32)
    primary = MockDA() if ours_land else LosesOurs()
    poison = MAGIC + b" poison"
    if ours_land:
        garble_reads(primary, poison)
    autojump_clock.autojump_threshold = 0.02
    stack = make_stack(tmp_path, primary, health_interval_s=5.0, max_retries=1, members=lambda: frozenset(),
                       adopt_grace_s=60.0, own_key=bytes(key.verify_key), probe=lambda: encode_blob(key, "c0", []))
    stack.reconciler.clock = lambda: int(trio.current_time() * 1000)
    await fill(stack, [poison] if ours_land else [MAGIC + b" ours %d" % i for i in range(5)])
    for _ in range(3):  # an outage, over now
        stack.machine.observe(PRIMARY, False, 0, "down", write=True)
    other = nacl.signing.SigningKey(b"t" * 32)
    statuses, cursor = [], 0
    async with trio.open_nursery() as nursery:
        await nursery.start(stack.monitor)
        for i in range(240):  # 20 minutes
            await trio.sleep(5)
            if ours_land:  # our publisher's blobs, through the router
                await stack.router.post(encode_blob(key, "c0", [b"event %d" % i]))
            else:
                await primary.theirs(encode_blob(other, "c1", [b"event %d" % i]))  # type: ignore[attr-defined]
            cursor = (await stack.followed[PRIMARY].read_after(cursor, 100)).cursor  # our consumer's poll
            statuses.append(stack.machine.status)
        nursery.cancel_scope.cancel()
    if ours_land:
        assert statuses[-1] is Status.HEALTHY and statuses.count(Status.HEALTHY) >= 200
    else:
        assert Status.HEALTHY not in statuses and stack.machine.relapses >= 3
    await stack.aclose()



@pytest.mark.parametrize("probe_read_once_not_yet", [False, True])
async def test_a_member_that_writes_nothing_proves_a_poisoned_blob_with_a_probe(
        tmp_path: Path, autojump_clock: trio.testing.MockClock, probe_read_once_not_yet: bool) -> None:
    """After an outage, a member whose only pending blob is one the primary never gives back, and which writes
    nothing itself: nothing of ours came back to prove the blob its own failure, so the status stayed Recovering
    for ever, the blob posted again every 30 s (a regression review's run: 206 paid posts an hour). A probe blob of
    ours, posted and read back, proves it: Healthy, the blob held back and still pending. Read back once, a probe
    a node one block behind did not have yet sent a working primary back to the fallback: it is read again."""
    key = nacl.signing.SigningKey(b"p" * 32)
    primary = MockDA()
    poison = MAGIC + b" poison"
    probe = encode_blob(key, "c0", [])
    posted, get = count_posts(primary, poison=poison, probe=probe), primary.get

    not_yet = [probe_read_once_not_yet]

    async def wrong_bytes(ref: BlobRef) -> bytes:
        data = await get(ref)
        if data == probe and not_yet[0]:
            not_yet[0] = False
            raise BlobNotFound(f"{PRIMARY}: no blob at height {ref.height} (this node is a block behind)")
        return b"other bytes" if data == poison else data

    primary.get = wrong_bytes  # type: ignore[method-assign]
    autojump_clock.autojump_threshold = 0.02
    stack = make_stack(tmp_path, primary, health_interval_s=5.0, max_retries=1, own_key=bytes(key.verify_key),
                       probe=lambda: probe)
    stack.reconciler.clock = lambda: int(trio.current_time() * 1000)
    await fill(stack, [poison])
    for _ in range(3):  # an outage, over now
        stack.machine.observe(PRIMARY, False, 0, "down", write=True)
    seen, on_change = [], stack.machine.on_change

    def record() -> None:
        seen.append(stack.machine.status)
        if on_change is not None:
            on_change()

    stack.machine.on_change = record
    async with trio.open_nursery() as nursery:
        await nursery.start(stack.monitor)
        await trio.sleep(60)
        assert stack.machine.status is Status.HEALTHY and not not_yet[0]
        assert seen[seen.index(Status.RECOVERING):].count(Status.DEGRADED) == 0  # never back to the fallback
        await trio.sleep(3540)
        assert stack.machine.status is Status.HEALTHY and posted["poison"] <= 20 and 1 <= posted["probe"] <= 3
        nursery.cancel_scope.cancel()
    assert stack.pending.pending_count == 1
    await stack.aclose()



async def test_another_member_s_blob_missed_in_a_pass_does_not_stop_the_probe(
        tmp_path: Path, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Recovering pass that misses only an adopted blob of another member still probes for our held blob: the
    probe was skipped whenever any blob was missed in the pass, ours or not, and with nothing of ours back the
    foreign miss counted as the primary's failure (a regression review)."""
    key = nacl.signing.SigningKey(b"q" * 32)
    primary = MockDA()
    poison = MAGIC + b" poison"
    garble_reads(primary, poison)
    autojump_clock.autojump_threshold = 0.02
    stack = make_stack(tmp_path, primary, health_interval_s=5.0, max_retries=1, own_key=bytes(key.verify_key),
                       probe=lambda: encode_blob(key, "c0", []))
    stack.reconciler.clock = lambda: int(trio.current_time() * 1000)
    await fill(stack, [poison])
    await stack.reconciler.run_pass()  # missed once: held back, unproven
    assert stack.reconciler.held

    async def a_foreign_blob_missed(self: reconcile.Reconciler, report: reconcile.Report) -> None:
        self._hold(["ab" * 32], True, "another member's blob: not given back", 10**6)

    monkeypatch.setattr(reconcile.Reconciler, "_adopt", a_foreign_blob_missed)
    for _ in range(3):  # an outage, over now
        stack.machine.observe(PRIMARY, False, 0, "down", write=True)
    async with trio.open_nursery() as nursery:
        await nursery.start(stack.monitor)
        await trio.sleep(60)
        assert stack.machine.status is Status.HEALTHY
        nursery.cancel_scope.cancel()
    await stack.aclose()



async def test_a_manual_pass_stops_once_the_primary_keeps_failing_and_at_its_deadline(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """A manual pass against a primary that is down posted every pending blob with all its retries (a reviewer's
    run: one HTTP request for 2.9 hours, 80 doomed posts): it stops once the primary failed failure_threshold times
    in a row. And a manual pass has a deadline (POST /fallback/reconcile: MANUAL_PASS_S)."""
    autojump_clock.autojump_threshold = 0.02
    primary = MockDA()
    stack = make_stack(tmp_path, primary, max_retries=3)
    await fill(stack, [b"blob %d" % i for i in range(20)])
    primary.down = True
    posts = {"n": 0}
    post = primary.post

    async def counting(data: bytes) -> BlobRef:
        posts["n"] += 1
        return await post(data)

    primary.post = counting  # type: ignore[method-assign]
    report = await stack.reconciler.run_pass()
    assert not report.success and report.aborted and posts["n"] == stack.machine.failure_threshold == 3
    assert "failed 3 times in a row" in report.errors[-1] and stack.pending.pending_count == 20
    primary.down = False
    slow = primary.post

    async def slow_post(data: bytes) -> BlobRef:
        await trio.sleep(4)  # (under the layer's 5 s timeout)
        return await slow(data)

    primary.post = slow_post  # type: ignore[method-assign]
    started = trio.current_time()
    seen: list[dict[str, Any]] = []

    async def watch() -> None:
        await trio.sleep(10)
        seen.append(stack.reconciler.progress())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        report = await stack.reconciler.run_pass(deadline_s=35)
    assert seen[0]["current_pass"]["blobs_reconciled"] == 2 and "last_pass" not in seen[0]  # progress meanwhile
    assert trio.current_time() - started == pytest.approx(35, abs=1)
    assert report.aborted and "deadline" in report.errors[-1] and 6 <= report.blobs_reconciled <= 9
    assert stack.pending.pending_count == 20 - report.blobs_reconciled
    await stack.aclose()


async def test_settled_fallback_records_are_pruned_and_pending_ones_never(tmp_path: Path) -> None:
    """Every blob read from the primary added a row for ever, and reconciled blobs kept their data (a reviewer's
    finding): what settled before the cut goes, but the most recent reconciled ones (the consistency check's
    sample); pending blobs stay whatever their age. An older file's on_primary table gains its seen_ms column."""
    path = tmp_path / "pending.sqlite"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE on_primary (blob_id TEXT PRIMARY KEY) WITHOUT ROWID")
    old.execute("INSERT INTO on_primary VALUES ('ab')")
    old.commit()
    old.close()
    store = PendingStore(path)
    ids = [await store.record(BlobRef(SECONDARY, i, b"c"), b"blob %d" % i, certificate=b"cert") for i in range(6)]
    for i, blob_id in enumerate(ids[:4]):
        await store.mark_reconciled(blob_id, BlobRef(PRIMARY, 10 + i, b"p"))
    await store.note_primary([(BlobRef(PRIMARY, 20 + i, b"p"), b"other %d" % i) for i in range(3)])
    assert await store.note_fallback([(BlobRef(SECONDARY, 30 + i, b"f"), b"foreign %d" % i) for i in range(2)]) == 2
    await store.note_primary([(BlobRef(PRIMARY, 40, b"p"), b"foreign 0")])  # one foreign blob resolved
    assert await store.prune(1, 2) == (0, 0, 1)  # only the old file's row (seen_ms 0) is older than 1 ms
    removed = await store.prune(int(time.time() * 1000) + 1, 2)
    assert removed == (2, 1, 4)  # 2 of 4 reconciled (2 kept), 1 resolved foreign, 4 primary ids (3 + 1)
    assert {b.blob_id for b in await store.pending()} == set(ids[4:]) and store.pending_count == 2
    assert len(await store.reconciled()) == 2 and store.foreign_waiting == 1
    certificates = store._db.execute("SELECT COUNT(*) FROM certificates").fetchone()[0]
    assert certificates == 4  # those of the 2 pending and the 2 kept
    store.close()


async def test_a_primary_that_gives_no_blob_back_stays_in_the_fallback(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """A primary that takes every post and gives nothing back, with blobs pending from an outage and its health
    checks passing: held-back blobs once hid it, and it went back to Healthy and took the writes (a reviewer's
    reproduction). A pass that sees no blob back counts each miss as the primary's failure."""
    autojump_clock.autojump_threshold = 0.02

    class BlackHole(MockDA):
        async def get(self, ref: BlobRef) -> bytes:
            raise BlobNotFound(f"{self.name}: not found")

    stack = make_stack(tmp_path, BlackHole(), health_interval_s=5.0, max_retries=1)
    stack.reconciler.clock = lambda: int(trio.current_time() * 1000)
    await fill(stack, [b"blob %d" % i for i in range(5)])
    for _ in range(3):
        stack.machine.observe(PRIMARY, False, 0, "down", write=True)
    assert stack.machine.status is Status.DEGRADED
    statuses = []
    async with trio.open_nursery() as nursery:
        await nursery.start(stack.monitor)
        for _ in range(120):
            await trio.sleep(5)
            statuses.append(stack.machine.status)
        nursery.cancel_scope.cancel()
    assert Status.HEALTHY not in statuses and statuses[-1] is Status.DEGRADED and stack.machine.relapses >= 1
    assert (await stack.router.post(b"a new blob")).layer == SECONDARY
    await stack.aclose()


async def test_a_held_blob_read_from_the_primary_log_no_longer_hides_other_blobs(tmp_path: Path) -> None:
    """A held blob that later shows up in the primary's log is reconciled there, but its hold kept counting against
    ``waiting``: a new pending blob was hidden from the monitor until the hold expired (a reviewer's finding)."""
    x, y = MAGIC + b"X", MAGIC + b"Y"  # (event blobs, as far as the primary log's reader looks)
    primary = MockDA()
    get = primary.get

    async def late(ref: BlobRef) -> bytes:  # the read-back of X misses (not visible yet)
        data = await get(ref)
        return b"other" if data == x else data

    primary.get = late  # type: ignore[method-assign]
    stack = make_stack(tmp_path, primary, max_retries=0)
    await fill(stack, [x])
    await stack.reconciler.run_pass(stop_on_fallback=True)
    assert len(stack.reconciler.held) == 1 and stack.reconciler.waiting == 0
    page = await primary.read_after(0, 100)  # the log reader finds X on the primary
    await stack._primary_page(page, 0)
    assert stack.pending.pending_count == 0 and not stack.reconciler.held
    await fill(stack, [y])
    assert stack.reconciler.waiting == 1 and stack._should_reconcile()
    await stack.aclose()


async def test_the_stack_says_when_a_layer_is_healthy_again(tmp_path: Path) -> None:
    """What the coordinator hangs the consumers' retry_now on: a layer turning healthy again, once per recovery."""
    stack = make_stack(tmp_path, MockDA())
    recovered: list[str] = []
    stack.on_recovered = recovered.append
    for _ in range(3):
        stack.machine.observe(PRIMARY, False, 0, "down", write=True)
    for _ in range(FALLBACK_READ_FAILURES):
        stack.machine.observe(SECONDARY, False, 0, "down")
    assert recovered == []
    stack.machine.observe(SECONDARY, True, 0)
    for _ in range(3):
        stack.machine.observe(PRIMARY, True, 0)
    assert recovered == [SECONDARY, PRIMARY]
    await stack.aclose()


async def test_a_pass_loads_a_bounded_amount_of_blob_data_at_once(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A page of 256 pending blobs was loaded whole, data and all: near 2 MB each after a long outage, 510 MB at once
    (a reviewer's finding). A page is now loaded in parts of at most LOAD_BYTES (scaled down here), every blob still
    reconciled in order."""
    monkeypatch.setattr(reconcile, "LOAD_BYTES", 10_000)
    primary = BatchingDA(max_submit_bytes=20_000)
    stack = make_stack(tmp_path, primary)
    loaded: list[int] = []
    load = stack.pending.load

    async def measured(blob_ids: Any) -> Any:
        blobs = await load(blob_ids)
        loaded.append(sum(len(b.data) for b in blobs))
        return blobs

    monkeypatch.setattr(stack.pending, "load", measured)
    blobs = [os.urandom(1500) for _ in range(40)] + [os.urandom(12_000)]  # and one larger than a part alone
    await fill(stack, blobs)
    report = await stack.reconciler.run_pass()
    assert report.success and report.blobs_reconciled == 41
    assert sorted(await primary_blobs(primary)) == sorted(blobs)
    assert max(loaded) == 12_000 and sorted(loaded)[-2] <= 10_000 and len(loaded) >= 7
    await stack.aclose()


def lagging_reader_node() -> tuple[dict[str, Any], Callable[[httpx.Request], httpx.Response]]:
    """A Celestia node behind a load balancer whose reader is one block behind its writer: the first blob.GetAll of
    each new height answers "from the future"."""
    state: dict[str, Any] = {"height": 0, "chain": {}, "read": set(), "submits": 0}

    def answer(rid: int, **what: Any) -> httpx.Response:
        return httpx.Response(200, json={"jsonrpc": "2.0", "id": rid, **what})

    def handler(request: httpx.Request) -> httpx.Response:
        req = json.loads(request.content)
        method, rid = req["method"], req["id"]
        if method == "blob.Submit":
            state["submits"] += 1
            state["height"] += 1
            state["chain"][state["height"]] = req["params"][0]
            return answer(rid, result=state["height"])
        if method == "blob.GetAll":
            height = req["params"][0]
            if height not in state["read"]:
                state["read"].add(height)
                return answer(rid, error={"code": 1, "message": "header: given height is from the future: "
                                          f"networkHeight: {height - 1}, requestedHeight: {height}"})
            return answer(rid, result=state["chain"].get(height))
        if method == "header.WaitForHeight":  # (the read back waits for a lagging node)
            return answer(rid, result={"header": {"height": str(req["params"][0]), "time": "2030-01-01T00:00:00Z"}})
        raise AssertionError(method)

    return state, handler


@pytest.mark.parametrize("recovering", [True, False])
async def test_a_primary_reading_a_block_behind_gets_each_group_once_and_stays_in_use(
        tmp_path: Path, recovering: bool) -> None:
    """Reconciliation read a group back once: a lagging node's "from the future" made it post the group again, up
    to 4 paid submits, and count its blobs as the primary's failures, so a Recovering primary relapsed and a
    Healthy one failed over (a reviewer's reproduction). It reads again, as CelestiaDA.post does."""
    state, handler = lagging_reader_node()
    da = CelestiaDA("http://dsdn.invalid", NS, None, timeout_s=5, retry_count=0, retry_delay_s=0.01)
    da._client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    da._client_run = trio.lowlevel.current_root_task()
    machine = DAStatusMachine((PRIMARY, SECONDARY), 3, 2)
    now: Callable[[], int] = lambda: time.time_ns() // 1_000_000  # noqa: E731
    if recovering:
        for _ in range(3):
            machine.observe(PRIMARY, False, now(), "down", write=True)
        for _ in range(2):
            machine.observe(PRIMARY, True, now())
        assert machine.status is Status.RECOVERING
    pending = PendingStore(tmp_path / "pending.sqlite")
    for i in range(3):
        data = b"fell through %d" % i
        await pending.record(BlobRef(SECONDARY, i + 1, hashlib.sha256(data).digest()), data)
    reconciler = reconcile.Reconciler({PRIMARY: MeteredLayer(da, 5.0)}, pending, machine, now, batch_size=10,
                                      retry_delay_s=0.05, max_retries=3)
    report = await reconciler.run_pass(stop_on_fallback=True)
    assert state["submits"] == 1 and report.blobs_reconciled == 3 and pending.pending_count == 0
    assert machine.status is Status.HEALTHY and machine.relapses == 0
    pending.close()


def lagging_chain(lag_s: float) -> tuple[dict[str, int], Callable[[httpx.Request], httpx.Response]]:
    """A Celestia node whose headers stay ``lag_s`` behind each block it includes ("syncing in progress", as
    celestia-node's header service answers past its local head + 1), behind a balancer whose caught-up backend
    answers header.WaitForHeight at once. Returns its Submit count and its handler."""
    made: dict[int, float] = {}
    chain: dict[int, Any] = {}
    count = {"submits": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        req = json.loads(request.content)

        def answer(**kw: Any) -> httpx.Response:
            return httpx.Response(200, json={"jsonrpc": "2.0", "id": req["id"], **kw})

        if req["method"] == "blob.Submit":
            count["submits"] += 1
            height = count["submits"]
            chain[height], made[height] = req["params"][0], time.monotonic()
            return answer(result=height)
        if req["method"] == "header.WaitForHeight":
            return answer(result={"header": {"height": str(req["params"][0]), "time": "2030-01-01T00:00:00Z"}})
        height = req["params"][0]
        if time.monotonic() - made[height] < lag_s:
            return answer(error={"code": 1, "message": f"header: syncing in progress: localHeadHeight: "
                                                       f"{height - 2}, requestedHeight: {height}"})
        return answer(result=chain[height][0] if req["method"] == "blob.Get" else chain[height])

    return count, handler


@pytest.mark.parametrize("lag_s", [0.3, math.inf])
async def test_a_primary_whose_headers_lag_gets_each_group_once_and_is_not_blamed(tmp_path: Path,
                                                                                 lag_s: float) -> None:
    """celestia-node answers "syncing in progress" for a height past its headers' head + 1, and a caught-up backend
    behind the same balancer may answer header.WaitForHeight at once: a lag of 0.3 s failed every group's read-back
    (the reads no longer retry_delay_s apart), the primary counted as failing and the status went to Degraded (a
    regression review); a node that stays behind had the group posted again at every attempt (an answered miss),
    each post paid. Read again retry_delay_s apart; still behind: held back, not posted again, no failure; and a
    Recovering pass's probe, taken but not read back from such a node, blames it no more (a regression review)."""
    count, handler = lagging_chain(lag_s)
    da = CelestiaDA("http://dsdn.invalid", NS, None, timeout_s=5, retry_count=0, retry_delay_s=0.2,
                    max_submit_bytes=20)
    da._client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    da._client_run = trio.lowlevel.current_root_task()
    machine = DAStatusMachine((PRIMARY, SECONDARY), 3, 2)
    now: Callable[[], int] = lambda: time.time_ns() // 1_000_000  # noqa: E731
    pending = PendingStore(tmp_path / "pending.sqlite")
    for i in range(3):
        data = b"fell through %d" % i
        await pending.record(BlobRef(SECONDARY, i + 1, hashlib.sha256(data).digest()), data)
    reconciler = reconcile.Reconciler({PRIMARY: MeteredLayer(da, 5.0)}, pending, machine, now, batch_size=10,
                                      retry_delay_s=0.2, max_retries=3, probe=lambda: b"probe blob")
    report = await reconciler.run_pass(stop_on_fallback=True)
    assert count["submits"] == 3 and machine.status is Status.HEALTHY  # (max_submit_bytes: one blob a group)
    if lag_s < math.inf:
        assert report.blobs_reconciled == 3 and pending.pending_count == 0
    else:
        assert report.blobs_reconciled == 0 and pending.pending_count == 3 and len(reconciler.held) == 3
        assert await reconciler.run_pass(stop_on_fallback=True) and count["submits"] == 3  # held: not again
        for _ in range(3):
            machine.observe(PRIMARY, False, now(), "down", write=True)
        for _ in range(2):
            machine.observe(PRIMARY, True, now())
        for _ in range(4):  # (failure_threshold 3: one blamed probe a pass)
            await reconciler.run_pass(stop_on_fallback=True)
            assert machine.status is Status.RECOVERING
    pending.close()


async def test_a_primary_that_takes_blobs_and_never_answers_reading_them_is_not_probed_for_ever(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """From a review: a quiet member (no writes of its own) with one blob held back, and a primary that takes posts
    and passes health checks but never answers a read: the probe's unanswered read-back counted as one read
    failure, which the next health check undid, so the member stayed in Recovering and posted a paid probe every
    health interval for ever (124 posts in ten minutes). Unanswered, the probe is not given back: as a lost one, the
    primary goes back to the fallback, and each relapse waits longer."""
    primary = MockDA()
    posts = count_posts(primary, probe=b"probe blob")

    async def hangs(ref: BlobRef) -> bytes:
        await trio.sleep_forever()
        raise AssertionError  # (never)

    primary.get = hangs  # type: ignore[method-assign]
    autojump_clock.autojump_threshold = 0.01
    stack = make_stack(tmp_path, primary, health_interval_s=5.0, retry_delay_s=1.0, probe=lambda: b"probe blob")
    stack.reconciler.clock = lambda: int(trio.current_time() * 1000)
    await fill(stack, [b"written during the outage"])
    for _ in range(3):  # an outage, over now
        stack.machine.observe(PRIMARY, False, 0, "down", write=True)
    async with trio.open_nursery() as nursery:
        await nursery.start(stack.monitor)
        await trio.sleep(600)
        nursery.cancel_scope.cancel()
    assert stack.machine.status is Status.DEGRADED  # writes go to the fallback: the primary gives nothing back
    assert 1 <= posts["probe"] <= 10, posts
    await stack.aclose(close_layers=False)


@pytest.mark.parametrize("batching", [False, True])
async def test_a_primary_that_takes_every_blob_and_gives_none_back_is_caught_by_a_probe_within_the_pass(
        tmp_path: Path, autojump_clock: trio.testing.MockClock, batching: bool) -> None:
    """A primary that takes every post and gives nothing back: one pass posted every pending blob with all its
    retries (200 blobs, 800 paid posts; a whole outage's backlog, each time). Three blobs missed in a row call for a
    probe of ours: lost too, the primary fails over and the pass stops, every blob still pending."""
    key = nacl.signing.SigningKey(b"s" * 32)
    primary = BatchingDA() if batching else MockDA()
    probe = encode_blob(key, "c0", [])
    blobs = [MAGIC + b" blob %03d" % i for i in range(200)]
    posted = {"n": 0}
    post = primary.post

    async def counting(data: bytes) -> BlobRef:
        posted["n"] += 1
        return await post(data)

    async def lost(ref: BlobRef) -> bytes:
        raise BlobNotFound(f"{PRIMARY}: no blob at height {ref.height}")

    primary.post = counting  # type: ignore[method-assign]
    primary.get = lost  # type: ignore[method-assign]
    if batching:
        primary.missing.update([*blobs, probe])
    autojump_clock.autojump_threshold = 0.02
    stack = make_stack(tmp_path, primary, max_retries=3, own_key=bytes(key.verify_key), probe=lambda: probe)
    await fill(stack, blobs)
    report = await stack.reconciler.run_pass()
    assert report.aborted and report.blobs_reconciled == 0 and stack.pending.pending_count == 200
    assert stack.machine.status is not Status.HEALTHY and any("probe" in e for e in report.errors)
    assert posted["n"] <= (201 if batching else 10)  # (batching: one call of 200 blobs, then the probe)
    await stack.aclose()


@pytest.mark.parametrize("batching", [False, True])
async def test_poisoned_blobs_in_a_row_do_not_stop_a_pass_when_the_probe_comes_back(
        tmp_path: Path, autojump_clock: trio.testing.MockClock, batching: bool) -> None:
    """Five blobs the primary never gives back, first in the queue: the probe comes back, so they are the blobs'
    fault; the pass goes on and reconciles the 30 after them, and the primary stays usable. A blob a probe proved at
    fault is not posted again in the pass (retried, each attempt called for another probe: twice the paid calls)."""
    key = nacl.signing.SigningKey(b"t" * 32)
    primary = BatchingDA() if batching else MockDA()
    poisoned = [MAGIC + b" poison %d" % i for i in range(5)]
    good = [MAGIC + b" good %02d" % i for i in range(30)]
    probe = encode_blob(key, "c0", [])
    posted = count_posts(primary, probe=probe, **{f"poison{i}": p for i, p in enumerate(poisoned)})
    get = primary.get

    async def garbled(ref: BlobRef) -> bytes:
        data = await get(ref)
        return b"other bytes" if data in poisoned else data

    primary.get = garbled  # type: ignore[method-assign]
    autojump_clock.autojump_threshold = 0.02
    stack = make_stack(tmp_path, primary, max_retries=3, own_key=bytes(key.verify_key), probe=lambda: probe)
    await fill(stack, poisoned + good)
    report = await stack.reconciler.run_pass()
    assert not report.aborted and report.blobs_reconciled == 30 and stack.pending.pending_count == 5
    assert stack.machine.status is Status.HEALTHY
    poison_posts = sum(n for name, n in posted.items() if name != "probe")
    if batching:  # one call of all 35, then the probe (before: four calls, each posting the five again)
        assert len(primary.calls) == 1 and posted["probe"] == 1 and poison_posts == 5
    else:  # two blobs with all their attempts, the third once and the probe, then two more (before: 20 posts)
        assert posted["probe"] == 1 and poison_posts + posted["probe"] <= 18
    await stack.aclose()


def refuse_writes(db: sqlite3.Connection, table: str) -> Callable[[], None]:
    """Every change to ``table`` fails in SQLite as on a full disk (the schema's pages have room, so ``PRAGMA
    max_page_count`` does not stop an UPDATE); returns what gives the room back."""
    db.execute(f"CREATE TEMP TRIGGER full_disk BEFORE UPDATE ON {table} BEGIN "
               "SELECT RAISE(ABORT, 'database or disk is full'); END")
    return lambda: db.execute("DROP TRIGGER temp.full_disk")


@pytest.mark.parametrize("batching", [True, False])
async def test_blobs_that_landed_while_the_disk_is_full_are_posted_once_and_recorded_once_there_is_room(
        tmp_path: Path, batching: bool, caplog: pytest.LogCaptureFixture) -> None:
    """From a review: a full disk failed every mark after the primary gave the blobs back; each pass (every health
    interval) posted, and paid for, the same blobs again (~720 paid posts an hour), logged a traceback, and the status
    never left Recovering. The blobs that landed are now kept in memory and recorded first by the next passes, which
    post nothing while the disk stays full."""
    primary = BatchingDA() if batching else MockDA(name=PRIMARY)
    stack = make_stack(tmp_path, primary)
    datas = [b"on the fallback %d" % i for i in range(12)]
    await fill(stack, datas)
    posted = count_posts(primary, **{f"b{i}": d for i, d in enumerate(datas)})
    room = refuse_writes(stack.pending._db, "fallback_blobs")
    stack.machine.status = Status.RECOVERING
    for _ in range(4):  # four health intervals with the disk full
        await stack.check_once()
        assert stack._should_reconcile()  # (the unrecorded blobs keep passes coming: they try to record them)
    assert sum(posted.values()) > 0 and max(posted.values()) == 1  # each blob posted at most once
    assert stack.reconciler.unrecorded == sum(posted.values()) and stack.pending.pending_count == 12
    assert stack.machine.status is Status.RECOVERING
    report = stack.reconciler.last_report
    assert report is not None and report.aborted
    assert "local storage failed: database or disk is full" in report.errors[0]
    warnings = [r for r in caplog.records if r.name == "dsdn.reconcile" and r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "reconciliation paused" in warnings[0].getMessage()  # (one a minute at most)
    assert not [r for r in caplog.records if r.exc_info]
    room()
    for _ in range(3):
        await stack.check_once()
    assert stack.pending.pending_count == 0 and stack.reconciler.unrecorded == 0
    assert set(posted.values()) == {1}  # the rest posted once, the landed ones recorded without a second post
    assert stack.machine.status is Status.HEALTHY
    await stack.aclose()


async def test_a_pass_whose_pending_blobs_cannot_be_read_says_so_in_one_line(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A failing disk under the pages a pass reads: an exception group out of the pass's nursery, logged as a
    traceback at every health interval (a regression review). It ends the pass as local storage failing."""
    stack = make_stack(tmp_path, MockDA(name=PRIMARY))
    await fill(stack, [b"on the fallback"])

    async def failing(*args: Any) -> Any:
        raise sqlite3.OperationalError("disk I/O error")

    stack.pending.pending_keys = failing  # type: ignore[method-assign]
    stack.machine.status = Status.RECOVERING
    await stack.check_once()
    report = stack.reconciler.last_report
    assert report is not None and report.aborted and "local storage failed: disk I/O error" in report.errors[0]
    assert not [r for r in caplog.records if r.exc_info]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        "reconciliation paused: local storage failed: disk I/O error; 0 blob(s) on the primary wait to be recorded, "
        "nothing is posted until they are"]
    await stack.aclose()
