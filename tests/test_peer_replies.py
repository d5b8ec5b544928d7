"""A reply is bound to its request (issue 8 §3, item 3): only the peer asked, and only with the expected
type, can answer it; anything else naming the request is dropped and counted."""

from __future__ import annotations

import inspect

import pytest
import trio
import trio.testing

from protocol.envelope import Message
from protocol.manager import PeerManager
from protocol.simnet import SimNetwork
from tests.test_peers import KEYS, members, registry, running, wait_for


def test_request_takes_a_required_keyword_only_expect_everywhere() -> None:
    ms = members(["a", "b"])
    mgr = PeerManager("a", KEYS["a"], "test", ms, registry())
    sim = SimNetwork(registry()).add("a")
    for request in (mgr.request, sim.request, mgr.dispatcher.request):
        params = inspect.signature(request).parameters
        assert list(params) == ["peer_id", "type_", "body", "timeout_s", "expect"]
        assert params["expect"].kind is inspect.Parameter.KEYWORD_ONLY
        assert params["expect"].default is inspect.Parameter.empty
    assert inspect.signature(mgr.request) == inspect.signature(sim.request)


async def test_replies_from_another_peer_or_of_another_type_are_dropped_and_counted(
        autojump_clock: trio.testing.MockClock) -> None:
    net = SimNetwork(registry(), seed=3)
    a, b, c = net.add("a"), net.add("b"), net.add("c")
    release = trio.Event()

    async def echo(peer_id: str, body: dict[str, object]) -> dict[str, object]:
        await release.wait()
        return {"data": b"from b"}

    b.on_request("echo", "echo.reply", echo)
    async with trio.open_nursery() as nursery:
        await nursery.start(net.run)
        got: list[Message] = []

        async def ask() -> None:
            got.append(await a.request("b", "echo", {"data": b""}, timeout_s=10, expect="echo.reply"))

        nursery.start_soon(ask)
        await trio.sleep(1)
        rid = next(iter(a.dispatcher._pending))
        c.send("a", "echo.reply", {"data": b"forged by c"}, re=rid)  # the right type, the wrong peer
        b.send("a", "chat", {"text": "not a reply", "n": 0}, re=rid)  # the right peer, the wrong type
        await trio.sleep(1)
        assert got == [] and a.dispatcher.stray_replies == 2  # still waiting for the real answer
        release.set()
        await trio.sleep(1)
        assert [m.body for m in got] == [{"data": b"from b"}]
        b.send("a", "echo.reply", {"data": b"again"}, re=rid)  # answers a request no longer pending
        await trio.sleep(1)
        assert a.dispatcher.late_replies == 1 and a.dispatcher.stray_replies == 2

        async def answer_with_the_wrong_type() -> None:
            await trio.sleep(0.5)
            c.send("a", "echo.reply", {"data": b"x"}, re=rid + 1)

        nursery.start_soon(answer_with_the_wrong_type)
        with pytest.raises(TimeoutError):  # c has no handler; its reply of another type does not count
            await a.request("c", "echo", {"data": b""}, timeout_s=2, expect="chat")
        assert a.dispatcher.stray_replies == 3
        nursery.cancel_scope.cancel()


async def test_a_forged_reply_over_a_real_link_is_dropped_and_counted() -> None:
    ms = members(["a", "b", "c"])
    async with running(ms[0], ms) as a, running(ms[1], ms) as b, running(ms[2], ms) as c:
        await wait_for(lambda: all(len(m.up_peers()) == 2 for m in (a, b, c)), what="a full mesh")
        release = trio.Event()

        async def echo(peer_id: str, body: dict[str, object]) -> dict[str, object]:
            await release.wait()
            return {"data": b"from b"}

        b.on_request("echo", "echo.reply", echo)
        async with trio.open_nursery() as nursery:
            got: list[Message] = []

            async def ask() -> None:
                got.append(await a.request("b", "echo", {"data": b""}, timeout_s=10, expect="echo.reply"))

            nursery.start_soon(ask)
            await wait_for(lambda: bool(a.dispatcher._pending), what="the request")
            rid = next(iter(a.dispatcher._pending))
            dropped = a.peers["c"].dropped
            c.send("a", "echo.reply", {"data": b"forged by c"}, re=rid)
            await wait_for(lambda: a.dispatcher.stray_replies == 1, what="the forged reply to be dropped")
            assert got == [] and a.peers["c"].dropped == dropped + 1
            release.set()
        assert [m.body for m in got] == [{"data": b"from b"}]
