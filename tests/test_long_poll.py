"""Long polls at the head of a log: the blob store's ``GET /log?wait_ms=``, Celestia's ``header.WaitForHeight``
(devnet), and the consumer that uses them (node/consumer.py), over real sockets with real SQLite."""

from __future__ import annotations

import base64
import hashlib
import time
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from deploy.devnet import serve_devnet
from node.consumer import Consumer
from node.da import celestia
from node.da.base import DAError, DAUnavailable, Page
from node.da.blobstore_client import BlobStoreDA
from node.da.celestia import CelestiaDA, DAUnauthorized, _Retryable, map_rpc_error
from node.da.mock import MockDA
from node.events import Event
from tests.test_blobstore import NS, OTHER_NS, Server, post_raw, start_server

TOKEN = "long-poll-token"


@pytest.fixture
async def server(nursery: trio.Nursery, tmp_path: Path) -> Server:
    return await start_server(nursery, tmp_path / "store")


async def test_a_waiting_log_read_answers_as_soon_as_a_blob_is_stored(nursery: trio.Nursery, tmp_path: Path) -> None:
    server = await start_server(nursery, tmp_path / "store")
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        got: list[tuple[dict[str, object], float]] = []

        async def poll() -> None:
            start = time.monotonic()
            r = await http.get("/quorum/v1/log", params={"after": 0, "namespace": NS.hex(), "wait_ms": 20_000})
            got.append((r.json(), time.monotonic() - start))

        async with trio.open_nursery() as polls:
            polls.start_soon(poll)
            await trio.sleep(0.3)
            assert not got  # nothing stored: still waiting
            await post_raw(http, b"other namespace", OTHER_NS)  # not what it follows: it keeps waiting
            await trio.sleep(0.3)
            assert not got
            await post_raw(http, b"news")
        (page, took), = got
        assert [base64.b64decode(i["data"]) for i in page["items"]] == [b"news"]  # type: ignore[union-attr]
        assert (page["cursor"], page["at_head"]) == (2, True) and 0.5 < took < 5


async def test_a_waiting_log_read_with_nothing_new_answers_an_empty_page_after_its_wait(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        await post_raw(http, b"old")
        start = time.monotonic()
        r = await http.get("/quorum/v1/log", params={"after": 1, "namespace": NS.hex(), "wait_ms": 400})
        took = time.monotonic() - start
        old = hashlib.sha256(b"old").hexdigest()  # the blob at the cursor named (a follower checks it)
        assert r.status_code == 200 and r.json() == {"items": [], "head": 1, "cursor": 1, "at_head": True,
                                                     "public_key": server.store.public_key.hex(),
                                                     "log_id": server.store.log_id.hex(), "after_hash": old,
                                                     "cursor_hash": old}
        assert 0.4 <= took < 3
        start = time.monotonic()  # something already after the cursor: no wait at all
        r = await http.get("/quorum/v1/log", params={"after": 0, "namespace": NS.hex(), "wait_ms": 20_000})
        assert len(r.json()["items"]) == 1 and time.monotonic() - start < 3
        for bad in ("-1", "30001", "x"):
            r = await http.get("/quorum/v1/log", params={"after": 0, "wait_ms": bad})
            assert r.status_code == 422 and r.json()["error"] == "invalid_request" and "wait_ms" in r.json()["message"]


async def test_a_store_shutting_down_answers_its_long_polls_at_once(nursery: trio.Nursery, tmp_path: Path) -> None:
    server = await start_server(nursery, tmp_path / "store")
    answers: list[int] = []
    async with BlobStoreDA(server.url, namespace=NS, timeout_s=5) as da:

        async def poll() -> None:
            page = await da.read_after(0, 10, wait_s=25)
            answers.append(len(page.items))

        nursery.start_soon(poll)
        await trio.sleep(0.3)
        start = time.monotonic()
        await server.shutdown()  # fails after 10 s: the graceful stop must not wait out the 25 s poll
        assert time.monotonic() - start < 3
        with trio.fail_after(3):
            while not answers:
                await trio.sleep(0.02)
        assert answers == [0]


async def test_blobstore_da_long_poll_brings_the_new_blob(server: Server) -> None:
    async with BlobStoreDA(server.url, namespace=NS, timeout_s=1) as da:  # the wait is added to the deadline
        await da.post(b"first")
        pages: list[Page] = []

        async def poll() -> None:
            pages.append(await da.read_after(1, 10, wait_s=3))

        async with trio.open_nursery() as polls:
            polls.start_soon(poll)
            await trio.sleep(1.5)  # past the plain timeout: a long poll is not a timeout
            assert not pages
            await da.post(b"second")
        assert [d for _, d in pages[0].items] == [b"second"] and pages[0].cursor == 2


async def test_celestia_long_poll_waits_for_the_next_height(nursery: trio.Nursery) -> None:
    url = await nursery.start(partial(serve_devnet, "127.0.0.1", 0, ":memory:", 0.4, TOKEN))
    async with CelestiaDA(url, NS, TOKEN, timeout_s=2, retry_count=0) as da:
        ref = await da.post(b"in a block")
        start = time.monotonic()
        page = await da.read_after(ref.height - 1, 10, wait_s=5)  # that height exists: no wait
        assert [d for _, d in page.items] == [b"in a block"] and page.cursor == ref.height
        assert time.monotonic() - start < 1.5
        head = await da.head()
        start = time.monotonic()
        page = await da.read_after(head, 10, wait_s=5)  # the next block ends the wait (one every 0.4 s)
        assert page.items == [] and page.cursor >= head + 1 and page.at_head
        assert time.monotonic() - start < 2
        posted = await da.post(b"later")
        page = await da.read_after(posted.height - 1, 10, wait_s=5)
        assert [d for _, d in page.items] == [b"later"]


async def test_celestia_long_poll_with_no_new_block_answers_empty_after_its_wait(nursery: trio.Nursery) -> None:
    url = await nursery.start(partial(serve_devnet, "127.0.0.1", 0, ":memory:", 30.0, TOKEN))  # a slow chain
    async with CelestiaDA(url, NS, TOKEN, timeout_s=0.5, retry_count=0) as da:
        head = await da.head()
        start = time.monotonic()
        page = await da.read_after(head, 10, wait_s=1.0)
        took = time.monotonic() - start
        assert page == Page([], head, True) and 1.0 <= took < 2.0
        assert await da.head() == head  # the connection cancelled mid-wait does not break the next call


class CountingLog:
    """Counts the reads of a wrapped layer and whether each was a long poll."""

    def __init__(self, inner: BlobStoreDA | MockDA) -> None:
        self.inner, self.name = inner, inner.name
        self.reads: list[float] = []

    async def read_after(self, cursor: int, limit: int, wait_s: float = 0.0) -> Page:
        self.reads.append(wait_s)
        return await self.inner.read_after(cursor, limit, wait_s)


def consumer_of(log_: CountingLog, applied: list[Event], wait_s: float) -> Consumer:
    def apply_events(events: list[Event]) -> int:
        applied.extend(events)
        return len(events)

    return Consumer(log_, apply_events, frozenset(), wait_s=wait_s)  # type: ignore[arg-type]


async def test_a_consumer_at_the_head_long_polls_and_sees_a_new_blob_at_once(server: Server) -> None:
    async with BlobStoreDA(server.url, namespace=NS, timeout_s=5) as da:
        log_ = CountingLog(da)
        consumer = consumer_of(log_, [], wait_s=10)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(consumer.run)
            await consumer.caught_up.wait()
            await trio.sleep(1.5)  # idle: one long poll outstanding, not a read per poll interval
            assert log_.reads[0] == 0 and log_.reads[1:] == [10] and consumer.cursor == 0
            await da.post(b"not a member's blob")  # dropped by the consumer, but the cursor moves at once
            with trio.fail_after(1):
                while consumer.cursor != 1:
                    await trio.sleep(0.01)
            assert consumer.rejected["foreign"] == 1 and all(w == 10 for w in log_.reads[1:])
            nursery.cancel_scope.cancel()


async def test_a_consumer_of_a_layer_that_cannot_wait_paces_its_reads(tmp_path: Path) -> None:
    mock = MockDA(str(tmp_path / "mock.sqlite"))  # answers at once whatever the wait asked
    log_ = CountingLog(mock)
    consumer = consumer_of(log_, [], wait_s=10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(consumer.run)
        await consumer.caught_up.wait()
        await trio.sleep(2.0)
        nursery.cancel_scope.cancel()
    mock.close()
    assert 3 <= len(log_.reads) <= 8, log_.reads  # 0.1 s doubling to 1 s, as without long polls; no hot loop


async def test_celestia_long_poll_reads_every_height_up_to_the_head_it_reports(nursery: trio.Nursery) -> None:
    url = await nursery.start(partial(serve_devnet, "127.0.0.1", 0, ":memory:", 0.1, TOKEN))
    async with CelestiaDA(url, NS, TOKEN, timeout_s=2, retry_count=0) as da:
        first = await da.post(b"first")
        await trio.sleep(0.6)  # several more heights, one more blob among them
        second = await da.post(b"second")
        page = await da.read_after(first.height - 1, 100, wait_s=5)  # the next height exists: no wait
        assert [d for _, d in page.items] == [b"first", b"second"]  # not just the height the wait was for
        assert page.at_head and page.cursor >= second.height


async def test_celestia_long_poll_held_by_a_gateway_still_reads_new_heights(nursery: trio.Nursery) -> None:
    url = await nursery.start(partial(serve_devnet, "127.0.0.1", 0, ":memory:", 0.2, TOKEN))
    async with CelestiaDA(url, NS, TOKEN, timeout_s=2, retry_count=0) as da:
        attempt = da._attempt

        async def holding(method: str, params: list[object], timeout_s: float | None = None,
                          wait_s: float = 0.0) -> object:
            if method == "header.WaitForHeight":  # a proxy that never passes this one on
                await trio.sleep_forever()
            return await attempt(method, params, timeout_s, wait_s)  # type: ignore[arg-type]

        da._attempt = holding  # type: ignore[method-assign]
        cursor = await da.head()
        ref = await da.post(b"past a held wait")
        start = time.monotonic()
        page = await da.read_after(cursor, 100, wait_s=0.5)  # the wait runs out: NetworkHead, then the heights
        assert b"past a held wait" in [d for _, d in page.items] and page.cursor >= ref.height
        assert 0.5 <= time.monotonic() - start < 2.5


@pytest.mark.parametrize("refusal", [
    map_rpc_error(-32601, "method 'header.WaitForHeight' not found", "header.WaitForHeight"),
    DAUnavailable("header.WaitForHeight: HTTP 404 from a gateway, not JSON-RPC"),  # these escaped the read before
    DAUnauthorized("header.WaitForHeight: missing permission"),
])
async def test_celestia_long_polls_end_for_a_node_that_refuses_wait_for_height(
        nursery: trio.Nursery, caplog: pytest.LogCaptureFixture, refusal: DAError,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """...for a while: they are tried again after LONG_POLLS_AGAIN_S (one passing error, a node not started yet,
    turned them off for good: a reviewer's reproduction)."""
    monkeypatch.setattr(celestia, "LONG_POLLS_AGAIN_S", 0.5)
    url = await nursery.start(partial(serve_devnet, "127.0.0.1", 0, ":memory:", 0.2, TOKEN))
    async with CelestiaDA(url, NS, TOKEN, timeout_s=2, retry_count=1, retry_delay_s=0.01) as da:
        attempt, asked = da._attempt, {"wait": 0, "failures": 1}

        async def gateway(method: str, params: list[object], timeout_s: float | None = None,
                          wait_s: float = 0.0) -> object:
            if method == "header.WaitForHeight":
                asked["wait"] += 1
                if asked["wait"] == 1:  # a connection reset: the plain read (with its retries) goes on
                    raise _Retryable("WaitForHeight: ReadError: connection reset")
                raise refusal
            return await attempt(method, params, timeout_s, wait_s)  # type: ignore[arg-type]

        da._attempt = gateway  # type: ignore[method-assign]
        ref = await da.post(b"still read")
        page = await da.read_after(ref.height - 1, 100, wait_s=5)  # the reset: read on at once
        assert [d for _, d in page.items] == [b"still read"] and da.long_polls
        ref = await da.post(b"read again")
        page = await da.read_after(ref.height - 1, 100, wait_s=5)  # refused: long polls off, the read goes on
        assert [d for _, d in page.items] == [b"read again"] and not da.long_polls
        page = await da.read_after(page.cursor, 100, wait_s=0.1)
        assert asked["wait"] == 2  # not asked again for a while
        assert sum("reading without long polls" in r.getMessage() for r in caplog.records) == 1
        await trio.sleep(0.6)
        await da.read_after(page.cursor, 100, wait_s=0.1)
        assert asked["wait"] == 3  # asked again
