"""A pruned Celestia node (issue 8 §4.1): a height it no longer has answers ``header: not found``. A coordinator
whose history starts there must not skip it as an empty height and report ready without its events: its primary
cursor stays, /ready is 503 and says why, and once the height can be read the events are applied. Real devnet
(its socket, its pruning), coordinators in process.

Once ready, a log stuck on such an answer (node.consumer.STUCK_AFTER_S, shortened here) makes /ready 503 too,
naming the log, its cursor and the error, until a read works again; a transient error does not."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import httpx
import trio
import trio.testing

from api.app import create_app
from deploy.devnet import serve_devnet
from node.config import Config
from node.consumer import Consumer, stuck_logs
from node.coordinator import Coordinator
from node.da.base import DAError, DAUnavailable, Page
from node.da.celestia import CelestiaDA
from node.da.namespace import namespace_from_name
from node.da.status import PRIMARY, Status
from tests.conftest import wait_for

NS = namespace_from_name("dsdn-pruned")
TOKEN = "pruned-devnet"


def celestia_env(url: str, **extra: str) -> dict[str, str]:
    return {"USE_MOCK_DA": "false", "DA_RPC_URL": url, "DA_AUTH_TOKEN": TOKEN, "DA_NAMESPACE": NS.hex(),
            "DA_TIMEOUT_MS": "2000", "DA_RETRY_COUNT": "0", "DA_HEALTH_INTERVAL_MS": "100", **extra}


async def prune(url: str, below: int, *, data: bool = False) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=5, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        assert (await http.post("/admin/prune", json={"below": below, "data": data})).status_code == 200


async def history_on_a_devnet(make_config: Callable[..., Config], nursery: trio.Nursery
                              ) -> tuple[str, Coordinator, int]:
    """A devnet where coordinator A (stopped again) wrote the cluster's history: a node registration; (its URL, A,
    the height of that event)."""
    url: str = await nursery.start(partial(serve_devnet, "127.0.0.1", 0, ":memory:", 0.05, TOKEN))
    cfg_a = make_config("a", **celestia_env(url))
    a = Coordinator(cfg_a, CelestiaDA.from_config(cfg_a))
    async with trio.open_nursery() as inner:
        await inner.start(a.run)
        await a.register_node("from-history", "z", "10.0.0.1:1", 1)
        await wait_for(lambda: a.outbox.pending == 0, what="A's event on the devnet")
        [landed] = await a.outbox.recently_landed(1)
        inner.cancel_scope.cancel()
    return url, a, landed.ref.height


@asynccontextmanager
async def stuck_follower(make_config: Callable[..., Config], url: str, a: Coordinator,
                         **env: str) -> AsyncIterator[tuple[Coordinator, Any, trio.Nursery]]:
    """Coordinator B, reading the cluster's history from height 1, running once its primary read failed and its
    cursor stayed before the history (checked over several more polls): (B, its API's test client, its nursery)."""
    cfg_b = make_config("b", **celestia_env(url, CLUSTER_MEMBER_KEYS=a.public_key.hex(), DA_START_HEIGHT="1", **env))
    primary = CelestiaDA.from_config(cfg_b)
    b = Coordinator(cfg_b, primary)
    async with trio.open_nursery() as inner:
        await inner.start(b.run)
        await wait_for(lambda: PRIMARY in b.da.read_problems(), what="B's primary read to fail")
        await trio.sleep(0.5)  # several more polls: the cursor must not move past the heights it cannot read
        assert b.consumers[PRIMARY].cursor == 0 and b.state.node("from-history") is None
        yield b, create_app(b).test_client(), inner
    await primary.aclose()


async def test_a_pruned_height_keeps_the_cursor_and_ready_says_why(make_config: Callable[..., Config],
                                                                    nursery: trio.Nursery) -> None:
    url, a, history = await history_on_a_devnet(make_config, nursery)
    await prune(url, history + 1)  # the node no longer has the height where the cluster's history begins

    async with stuck_follower(make_config, url, a) as (b, client, inner):
        response = await client.get("/ready")
        body = await response.get_json()
        assert response.status_code == 503, body
        assert "header: not found" in body["reason"] and body["reason"].startswith("rebuilding state from DA")
        assert f"{PRIMARY} log: reading after 0 failed" in body["reason"]
        assert "header: not found" in b.da.read_problems()[PRIMARY]
        # the node answered (an error, not an outage): the primary still takes writes, no flapping to Warning
        assert b.da_view().status is Status.HEALTHY and b.da.machine.transitions == 0

        await prune(url, 0)  # e.g. an archive node behind the same URL: the history is read, nothing was skipped
        await wait_for(lambda: b.rebuilt, what="B to rebuild once the heights can be read")
        assert b.state.node("from-history") is not None and b.consumers[PRIMARY].cursor >= history
        response = await client.get("/ready")
        assert response.status_code == 200 and b.da.read_problems() == {}
        inner.cancel_scope.cancel()
    await a.da.primary.inner.aclose()  # type: ignore[attr-defined]


async def test_heights_whose_data_the_node_pruned_are_not_taken_for_empty(make_config: Callable[..., Config],
                                                                           nursery: trio.Nursery) -> None:
    """From a review of celestia-node's source: past its storage window a pruned node keeps a height's header and
    drops its data, and ``blob.GetAll`` then answers null, as for a height with no blob of ours: a coordinator whose
    history was that old moved its cursor past it and was ready without its events. An empty answer for a height
    older than DA_STORAGE_WINDOW_S (1 s here, 7 days by default; `dsdn cluster up` sets 0, the devnet never prunes)
    is not trusted: the cursor stays and /ready says why; an archival node's (DA_STORAGE_WINDOW_S=0) is."""
    url, a, history = await history_on_a_devnet(make_config, nursery)
    await prune(url, history + 1, data=True)  # headers kept, data gone: GetAll answers null there
    await trio.sleep(1.2)  # every height so far is older than the window of 1 s

    async with stuck_follower(make_config, url, a, DA_STORAGE_WINDOW_S="1") as (b, client, inner):
        status, body = await ready(client)
        assert status == 503 and "beyond the node's storage window" in body["reason"], body
        # the node answered (a reviewer's finding: counted as an outage, it took the cluster to its fallback)
        assert b.da_view().status is Status.HEALTHY and b.da.machine.transitions == 0
        inner.cancel_scope.cancel()

    await prune(url, 0, data=True)  # an archival node: every height's data is there, its empty answers are true
    cfg_c = make_config("c", **celestia_env(url, DA_STORAGE_WINDOW_S="0", CLUSTER_MEMBER_KEYS=a.public_key.hex(),
                                            DA_START_HEIGHT="1"))
    c = Coordinator(cfg_c, CelestiaDA.from_config(cfg_c))
    async with trio.open_nursery() as inner:
        await inner.start(c.run)
        await wait_for(lambda: c.rebuilt, what="C to rebuild from the archival node")
        assert c.state.node("from-history") is not None
        inner.cancel_scope.cancel()
    await c.da.primary.inner.aclose()  # type: ignore[attr-defined]
    await a.da.primary.inner.aclose()  # type: ignore[attr-defined]


BOUND_S = 1.0  # the stuck bound in these tests (STUCK_AFTER_S is 30 s)
EVERY_HEIGHT = 10**9  # pruning below this makes every height, the next one too, answer "header: not found"


async def ready(client: Any) -> tuple[int, dict[str, Any]]:
    response = await client.get("/ready")
    return response.status_code, await response.get_json()


async def ready_coordinator(make_config: Callable[..., Config], nursery: trio.Nursery,
                            inner: trio.Nursery) -> tuple[str, Coordinator, Any]:
    url: str = await nursery.start(partial(serve_devnet, "127.0.0.1", 0, ":memory:", 0.05, TOKEN))
    cfg = make_config("c", **celestia_env(url))
    coord = Coordinator(cfg, CelestiaDA.from_config(cfg))
    coord.consumers[PRIMARY].stuck_after_s = BOUND_S
    coord.consumers[PRIMARY]._backoff.cap_s = 0.2  # retries every 0.2 s at most: several within the bound
    client = create_app(coord).test_client()
    await inner.start(coord.run)
    await wait_for(lambda: coord.rebuilt, what="the coordinator to be rebuilt")
    assert await ready(client) == (200, {"ready": True})
    return url, coord, client


async def test_a_lasting_read_error_after_ready_makes_ready_503_until_a_read_works(
        make_config: Callable[..., Config], nursery: trio.Nursery) -> None:
    async with trio.open_nursery() as inner:
        url, coord, client = await ready_coordinator(make_config, nursery, inner)
        consumer = coord.consumers[PRIMARY]
        await prune(url, EVERY_HEIGHT)  # the node starts answering "header: not found" for the next height
        await wait_for(lambda: consumer.failing_since is not None, what="the first failed read")
        assert consumer.failing_since is not None
        with trio.fail_after(BOUND_S + 5):
            while (answer := await ready(client))[0] == 200:
                await trio.sleep(0.02)
        assert trio.current_time() - consumer.failing_since >= BOUND_S  # not before the bound
        status, body = answer
        cursor = consumer.cursor
        assert status == 503 and body["ready"] is False and set(body["stuck"]) == {PRIMARY}, body
        stuck = body["stuck"][PRIMARY]
        assert stuck["cursor"] == cursor and stuck["failed_reads"] >= 1 and stuck["failing_for_s"] >= BOUND_S
        assert f"reading after {cursor} failed" in stuck["error"] and "header: not found" in stuck["error"]
        assert isinstance(stuck["failing_since_ms"], int)
        assert body["reason"].startswith(f"a DA log cannot be read: {PRIMARY} log: reading after {cursor} failed")
        assert "header: not found" in body["reason"]
        # the node answers its health checks: the DA status has nothing to say; /ready says why, /health and
        # /metrics give the same verdict
        assert coord.da_view().status is Status.HEALTHY and coord.da_view().takes_writes
        assert (await (await client.get("/health")).get_json())["ready"] is False
        assert "dsdn_ready 0.0" in (await (await client.get("/metrics")).get_data()).decode()
        reads = stuck["failed_reads"]
        await wait_for(lambda: consumer.failed_reads >= reads + 3, what="more failed reads")
        assert consumer.cursor == cursor < await coord.da.primary.inner.head()  # nothing skipped
        assert (await ready(client))[0] == 503

        await prune(url, 0)  # the heights can be read again
        await wait_for(lambda: consumer.cursor > cursor, what="the cursor to move on")
        assert await ready(client) == (200, {"ready": True}) and consumer.stuck() is None
        assert (await (await client.get("/health")).get_json())["ready"] is True
        assert "dsdn_ready 1.0" in (await (await client.get("/metrics")).get_data()).decode()
        inner.cancel_scope.cancel()
    await coord.da.primary.inner.aclose()  # type: ignore[attr-defined]


async def test_a_transient_read_error_after_ready_keeps_it_ready(make_config: Callable[..., Config],
                                                                 nursery: trio.Nursery) -> None:
    async with trio.open_nursery() as inner:
        url, coord, client = await ready_coordinator(make_config, nursery, inner)
        consumer = coord.consumers[PRIMARY]
        answers: list[int] = []
        watching, watched = True, trio.Event()

        async def watch() -> None:  # stopped between requests: cancelling the test client mid-request can corrupt
            while watching:        # its nursery stack (trio's "Nursery stack corrupted"), a flake of the harness
                answers.append((await ready(client))[0])
                await trio.sleep(0.02)
            watched.set()

        inner.start_soon(watch)
        await prune(url, EVERY_HEIGHT)
        await wait_for(lambda: consumer.failing_since is not None, what="a failed read")
        failed_at = consumer.failing_since
        assert failed_at is not None
        await prune(url, 0)  # it heals before the bound
        await wait_for(lambda: consumer.last_ok, what="a read to work again")
        await trio.sleep_until(failed_at + 2 * BOUND_S)  # well past the bound since the failure
        watching = False
        await watched.wait()
        assert answers and set(answers) == {200} and consumer.stuck() is None
        inner.cancel_scope.cancel()
    await coord.da.primary.inner.aclose()  # type: ignore[attr-defined]


class ScriptedLog:
    """A log of no blobs whose reads raise ``error`` while it is set (the test changes it)."""

    name = PRIMARY

    def __init__(self) -> None:
        self.error: DAError | None = None

    async def read_after(self, cursor: int, limit: int, wait_s: float = 0.0) -> Page:
        if self.error is not None:
            raise self.error
        return Page([], cursor + 1, True)


async def test_the_stuck_rule_counts_failures_the_da_status_does_not_report(
        autojump_clock: trio.testing.MockClock) -> None:
    """Under trio's MockClock: reads failing for STUCK_AFTER_S make a log stuck, an answered error or an outage alike
    (a reviewer's finding: a node answering health checks while every read failed left the coordinator ready and
    applying nothing); a successful read ends it; a layer the DA status reports down is left out, and quorum
    validators' logs count only once as many as a quorum needs cannot be read."""
    log = ScriptedLog()
    consumer = Consumer(log, len, frozenset())  # type: ignore[arg-type]
    assert consumer.stuck_after_s == 30.0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(consumer.run)
        await trio.sleep(1)
        log.error = DAUnavailable("primary: connection refused")
        while consumer.failing_since is None:
            await trio.sleep(0.01)
        began = consumer.failing_since
        await trio.sleep(29)
        assert not consumer.last_ok and consumer.failed_reads > 5 and consumer.stuck() is None
        log.error = DAError("primary: blob.GetAll: header: not found: height 2")  # the streak goes on
        await trio.sleep(1.5)
        stuck = consumer.stuck()
        assert stuck is not None and stuck["cursor"] == consumer.cursor and consumer.failing_since == began
        assert stuck["failing_for_s"] == round(trio.current_time() - began, 3)  # the whole streak
        await trio.sleep(11)  # a retry at the backoff's cap reported the latest error
        stuck = consumer.stuck()
        assert stuck is not None
        assert stuck["error"] == f"reading after {consumer.cursor} failed: primary: blob.GetAll: header: not found: " \
                                 "height 2"
        assert stuck_logs({PRIMARY: consumer}) == {PRIMARY: stuck}
        assert stuck_logs({PRIMARY: consumer}, down=[PRIMARY]) == {}  # the DA status reports it: not stuck
        # as one of three quorum validators' logs: stuck only once as many as a quorum needs are stuck
        logs = {"v1": consumer, "v2": Consumer(ScriptedLog(), len, frozenset()),  # type: ignore[arg-type]
                "v3": consumer}
        assert stuck_logs(logs, quorum_logs=["v1", "v2"], quorum_required=2) == {"v3": stuck}
        assert stuck_logs(logs, quorum_logs=["v1", "v2"], quorum_required=1) == {"v1": stuck, "v3": stuck}
        assert stuck_logs(logs, quorum_logs=["v1", "v2", "v3"], quorum_required=2) == {"v1": stuck, "v3": stuck}
        # a validator failing for less than STUCK_AFTER_S is not stuck, but it cannot be read either: with one
        # stuck beside it, a blob stored on just those two would be missed
        outage = ScriptedLog()
        outage.error = DAUnavailable("v2: connection refused")
        in_outage = Consumer(outage, len, frozenset())  # type: ignore[arg-type]
        nursery.start_soon(in_outage.run)
        while in_outage.failing_since is None:
            await trio.sleep(0.01)
        assert in_outage.stuck() is None
        mixed = {"v1": consumer, "v2": in_outage}
        assert set(stuck_logs(mixed, quorum_logs=["v1", "v2"], quorum_required=2)) == {"v1"}
        assert stuck_logs(mixed, quorum_logs=["v1", "v2"], quorum_required=3) == {}
        log.error = None
        await trio.sleep(11)  # the backoff's cap
        assert consumer.last_ok and consumer.stuck() is None and stuck_logs({PRIMARY: consumer}) == {}
        nursery.cancel_scope.cancel()


async def test_a_page_with_nothing_that_is_not_the_head_and_no_step_forward_is_a_failed_read(
        autojump_clock: trio.testing.MockClock) -> None:
    """A faulty blob store answered every read with no items, the same cursor and at_head false: the consumer read
    again at once, 3,500 times a second, and never caught up (a reviewer's reproduction). Such a page is a failed
    read now: the consumer backs off, the log is stuck after STUCK_AFTER_S, and it no longer holds up the rebuild."""

    class Spinning(ScriptedLog):
        reads = 0

        async def read_after(self, cursor: int, limit: int, wait_s: float = 0.0) -> Page:
            self.reads += 1
            return Page([], cursor, False)

    log = Spinning()
    consumer = Consumer(log, len, frozenset())  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(consumer.run)
        await trio.sleep(31)
        assert log.reads < 20 and not consumer.last_ok and consumer.cursor == 0  # backing off, not spinning
        stuck = consumer.stuck()
        assert stuck is not None and "no progress" in stuck["error"]
        nursery.cancel_scope.cancel()


async def test_a_layer_that_works_again_is_read_at_once_not_after_its_backoff(
        autojump_clock: trio.testing.MockClock) -> None:
    """After a long outage the consumer's backoff is at its cap (10 s): the layer recovered, the DA status said so,
    and for up to 10 s its old failure streak counted as stuck (a reviewer's note: /ready 503 right after the
    recovery). retry_now() (the coordinator calls it when the DA status holds the layer healthy again) ends the
    backoff at once."""
    log = ScriptedLog()
    consumer = Consumer(log, len, frozenset())  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(consumer.run)
        log.error = DAUnavailable("primary: connection refused")
        await trio.sleep(120)  # the backoff is at its cap
        assert consumer.stuck() is not None
        log.error = None
        consumer.retry_now()
        await trio.sleep(0.01)
        assert consumer.last_ok and consumer.stuck() is None
        nursery.cancel_scope.cancel()
