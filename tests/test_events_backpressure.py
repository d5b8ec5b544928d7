"""A write flood is refused, not queued without bound (issue 8 §4.5): above MAX_INFLIGHT_WRITES writes waiting
for the outbox commit, mutating routes answer 503 ``overloaded`` with Retry-After, and recover at once."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import nacl.signing
import pytest
import trio

from api.app import create_app
from node import events as ev
from node.config import Config, ConfigError, load
from node.outbox import MAX_GROUP, Outbox
from tests.conftest import start, wait_for

WRITES: list[tuple[str, dict[str, Any]]] = [
    ("/register", {"id": "flood", "zone": "z", "addr": "10.0.0.1:1"}),
    ("/object/register", {"hash": "h", "size": 1}),
    ("/scheduler/config", {"w_cpu": 2.0}),
    ("/replica/mark_missing", {"hash": "h", "node_id": "holder"}),  # (a node it knows: a 404 else)
]


def test_max_inflight_writes_is_configured_and_checked() -> None:
    assert load({"USE_MOCK_DA": "true"}).max_inflight_writes == 1024
    assert load({"USE_MOCK_DA": "true", "MAX_INFLIGHT_WRITES": "8"}).max_inflight_writes == 8
    for bad in ("0", "-1", "many"):
        with pytest.raises(ConfigError, match="MAX_INFLIGHT_WRITES"):
            load({"USE_MOCK_DA": "true", "MAX_INFLIGHT_WRITES": bad})


async def test_writes_beyond_the_inflight_bound_get_503_with_retry_after(
        nursery: trio.Nursery, make_config: Callable[..., Config]) -> None:
    coord = await start(nursery, make_config(MAX_INFLIGHT_WRITES="4"))
    client = create_app(coord).test_client()
    assert (await client.post("/object/register", json={"hash": "h", "size": 1})).status_code == 200
    assert (await client.post("/register", json={"id": "holder", "zone": "z", "addr": "10.0.0.1:1"})).status_code == 200
    statuses: list[int] = []

    async def register(i: int) -> None:
        response = await client.post("/register", json={"id": f"n{i}", "zone": "z", "addr": "10.0.0.1:1"})
        statuses.append(response.status_code)

    # holding the outbox's lock stalls the commit (a slow disk): writes pile up in flight. The lock is released
    # (inner context) before the nursery waits for the writers.
    async with trio.open_nursery() as writers, coord.outbox._lock:
        for i in range(4):
            writers.start_soon(register, i)
        await wait_for(lambda: coord.outbox.inflight == 4, what="4 writes in flight")
        for path, body in WRITES:
            response = await client.post(path, json=body)
            assert response.status_code == 503, path
            assert response.headers["Retry-After"] == "1"
            assert response.headers["Content-Type"] == "application/json"
            error = await response.get_json()
            assert error["error"] == "overloaded" and "MAX_INFLIGHT_WRITES" in error["message"]
        assert coord.outbox.inflight == 4 and coord.outbox.overloaded == len(WRITES) and statuses == []
    assert statuses == [200] * 4  # the ones in flight were committed once the disk came back
    assert (await client.post("/register", json={"id": "later", "zone": "z", "addr": "10.0.0.1:1"})).status_code == 200
    assert coord.state.node_count == 6 and coord.state.object("h") == (1, [])  # nothing refused was applied
    assert coord.outbox.inflight == 0


async def test_a_registration_with_a_key_is_stored_whole_or_refused_whole(
        nursery: trio.Nursery, make_config: Callable[..., Config]) -> None:
    """A node with a key is two events: with room for one only, the first was stored and the client told 503, and the
    node was left without its key, unable to earn receipts (a reviewer's reproduction). Both or neither now."""
    coord = await start(nursery, make_config(MAX_INFLIGHT_WRITES="4"))
    client = create_app(coord).test_client()
    key = bytes(nacl.signing.SigningKey(b"k" * 32).verify_key).hex()
    async with trio.open_nursery() as writers, coord.outbox._lock:  # a slow disk: writes pile up in flight
        for i in range(3):
            writers.start_soon(partial(client.post, "/register", json={"id": f"n{i}", "zone": "z", "addr": "h:1"}))
        await wait_for(lambda: coord.outbox.inflight == 3, what="3 writes in flight")
        with trio.fail_after(5):  # (before: the first event went in, and its write waited for the disk)
            response = await client.post("/register", json={"id": "keyed", "zone": "z", "addr": "h:1",
                                                             "public_key": key})
        assert response.status_code == 503 and coord.outbox.inflight == 3  # room for one event: none stored
    assert coord.state.node("keyed") is None
    response = await client.post("/register", json={"id": "keyed", "zone": "z", "addr": "h:1", "public_key": key})
    assert response.status_code == 200
    assert (await (await client.get("/node/keyed")).get_json())["public_key"] == key


async def test_a_write_larger_than_the_bound_still_goes_through_alone(
        nursery: trio.Nursery, make_config: Callable[..., Config]) -> None:
    """With MAX_INFLIGHT_WRITES=1 (allowed), a node with its key (two events) was refused with 503 for ever, even by
    an idle outbox (a reviewer's reproduction): alone, a write always fits."""
    coord = await start(nursery, make_config(MAX_INFLIGHT_WRITES="1"))
    client = create_app(coord).test_client()
    key = bytes(nacl.signing.SigningKey(b"k" * 32).verify_key).hex()
    response = await client.post("/register", json={"id": "keyed", "zone": "z", "addr": "h:1", "public_key": key})
    assert response.status_code == 200
    assert (await (await client.get("/node/keyed")).get_json())["public_key"] == key


async def test_the_events_of_one_write_share_a_commit_even_behind_a_full_group(tmp_path: Path) -> None:
    """Groups were cut every MAX_GROUP events, so a node-and-key write queued behind MAX_GROUP - 1 others spanned
    two commits: when the second failed (a full disk), the first event was stored, applied and bound for DA while
    its caller was told the write failed (a reviewer's reproduction). A call's events now always commit together."""
    inserts: list[int] = []

    async def disk_fills_on_the_second_commit(fn: Callable[..., Any], *args: Any) -> Any:
        if getattr(fn, "__name__", "") == "_insert":
            inserts.append(len(args[0]))
            if len(inserts) == 2:
                raise sqlite3.OperationalError("database or disk is full")
        return fn(*args)

    applied: list[ev.Event] = []
    outbox = Outbox(tmp_path / "outbox.sqlite", lambda committed: applied.extend(e for _, e in committed),
                    max_inflight=10_000, run_blocking=disk_fills_on_the_second_commit)

    def node(k: int) -> ev.Event:
        return ev.make_event(ev.NODE_REGISTERED, (1_000 + k, 0), "c0", id=f"n{k}", zone="z", addr="h:1",
                             capacity_gb=1)

    outcome: list[str] = []

    async def pair() -> None:
        try:
            await outbox.append_all([node(90_000), node(90_001)])
            outcome.append("stored")
        except sqlite3.OperationalError:
            outcome.append("failed")

    async with trio.open_nursery() as writers:
        for k in range(MAX_GROUP - 1):
            writers.start_soon(outbox.append, node(k))
        await trio.sleep(0.01)  # (queued before the pair: the writer is not running yet)
        writers.start_soon(pair)
        await trio.sleep(0.01)
        await writers.start(outbox.run)
        with trio.fail_after(10):
            while not outcome:
                await trio.sleep(0.01)
        writers.cancel_scope.cancel()
    stored = {bytes(raw) for (raw,) in outbox._db.execute("SELECT raw FROM outbox")}
    assert inserts[:2] == [MAX_GROUP - 1, 2] and outcome == ["failed"]
    assert node(90_000).raw not in stored and node(90_001).raw not in stored
    assert not any(e.raw == node(90_000).raw for e in applied)
    outbox.close()


async def test_an_empty_write_stores_nothing_and_the_writer_lives_on(tmp_path: Path) -> None:
    """``append_all([])`` queued an empty group; reaching the writer alone, it killed it (``max`` of nothing), and
    every later write waited for ever (a reviewer's reproduction)."""
    applied: list[ev.Event] = []
    outbox = Outbox(tmp_path / "outbox.sqlite", lambda committed: applied.extend(e for _, e in committed))
    async with trio.open_nursery() as nursery:
        await nursery.start(outbox.run)
        assert await outbox.append_all([]) == []
        await trio.sleep(0.05)  # the writer's turn, alone with whatever was queued
        event = ev.make_event(ev.NODE_REGISTERED, (1_000, 0), "c0", id="n1", zone="z", addr="h:1", capacity_gb=1)
        with trio.fail_after(5):
            seq = await outbox.append(event)
        assert seq >= 1 and applied == [event] and outbox.inflight == 0
        nursery.cancel_scope.cancel()
