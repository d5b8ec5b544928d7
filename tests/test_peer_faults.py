"""Peer links under the faults a review reproduced: a dialer whose peer froze mid-link dials again once the peer is
back; a stuck subscriber does not get a healthy link closed; a handler's unsendable answer does not take the
manager down; a message carried over a reconnect is sent, first."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from protocol.envelope import Message, pack_batch, unpack_batch
from protocol.handshake import Handshake
from protocol.manager import MAX_QUEUED_BYTES, Member, PeerManager, State
from tests.test_peers import KEYS, accept_by_hand, members, registry, wait_for


@asynccontextmanager
async def managed(member: Member, all_members: list[Member], **options: Any) -> AsyncIterator[PeerManager]:
    options.setdefault("heartbeat_s", 0.1)
    mgr = PeerManager(member.id, KEYS[member.id], "test", all_members, registry(), port=member.port, **options)
    async with trio.open_nursery() as nursery:
        await nursery.start(mgr.run)
        yield mgr
        nursery.cancel_scope.cancel()


async def test_a_dialer_whose_peer_froze_mid_link_dials_again_once_the_peer_is_back() -> None:
    """b (played by hand) links up, sends a few messages a's stuck subscriber cannot take, then freezes: it reads
    nothing and closes nothing, its TCP connection open. a's heartbeat closes the link, but the library's close
    waited for its reader task, blocked handing a message over: a's dialer hung there for ever and never dialed
    the restarted b (a reviewer's reproduction). The close is bounded now."""
    ms = members(["a", "b"])
    frozen: list[trio.SocketStream] = []

    async def frozen_b(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(ms[1].port, host="127.0.0.1")
        task_status.started()
        stream = await listeners[0].accept()
        await listeners[0].aclose()  # b "dies": its port is free for the restarted b
        async with trio.open_nursery() as nursery:
            ws, session = await accept_by_hand(nursery, stream, "b", ms)
            await trio.sleep(1.5)
            for n in range(6):
                await ws.send_message(session.seal(pack_batch([registry().encode(Message("chat", {"text": "x",
                                                                                                   "n": n}))])))
            frozen.append(stream)
            await trio.sleep_forever()

    async with trio.open_nursery() as outer:
        await outer.start(frozen_b)
        async with managed(ms[0], ms, subscriber_buffer=2) as a:
            a.subscribe("chat")  # a layer that stopped reading
            await wait_for(lambda: a.peers["b"].links == 1, what="the link to the frozen b")
            started = trio.current_time()
            while trio.current_time() - started < 4:  # a keeps sending; b reads nothing: a's send buffer fills
                if a.queue_room("b"):
                    a.send("b", "echo", {"data": b"z" * (256 * 1024)})
                await trio.sleep(0.01)
            await wait_for(lambda: a.peers["b"].state is not State.UP, timeout=20, what="the link closed")
            async with managed(ms[1], ms) as b_again:
                await wait_for(lambda: a.peers["b"].links >= 2 and b_again.peers["a"].state is State.UP, timeout=20,
                               what="a dialing the restarted b")
        outer.cancel_scope.cancel()


@pytest.mark.parametrize("heartbeat_s", [1.0, 0.1])
async def test_a_stuck_subscriber_does_not_get_a_healthy_link_closed(heartbeat_s: float) -> None:
    """A full subscriber channel was waited for up to backpressure_s per message, so a frame of 20 such messages held
    the reader for 20 s: no frame read, so heartbeats counted as missed, and the link was closed under the requests
    it carried (a reviewer's reproduction). The wait is per frame now; and with a heartbeat short beside that wait
    (6 × 0.1 s < 1 s), the time spent delivering counts as the peer's sign of life (a reviewer's reproduction)."""
    ms = members(["a", "b"])
    async with managed(ms[0], ms, heartbeat_s=heartbeat_s) as a, managed(ms[1], ms, heartbeat_s=heartbeat_s,
                                                                           subscriber_buffer=4) as b:
        await wait_for(lambda: a.peers["b"].state is State.UP and b.peers["a"].state is State.UP, what="linked")

        async def echo(peer: str, body: dict[str, Any]) -> dict[str, Any]:
            return {"data": body["data"]}

        b.on_request("echo", "echo.reply", echo)
        b.subscribe("chat")  # never read
        for n in range(20):
            a.send("b", "chat", {"text": "x", "n": n})
        reply = await a.request("b", "echo", {"data": b"?"}, 4, expect="echo.reply")
        assert reply.body == {"data": b"?"}
        await trio.sleep(8)  # more than the 6 heartbeats after which a silent link goes down
        assert b.peers["a"].state is State.UP and b.peers["a"].links == 1 and a.peers["b"].links == 1
        assert b.peers["a"].dropped >= 16  # what the stuck layer could not take


async def test_a_handler_answering_what_cannot_be_sent_does_not_take_the_manager_down() -> None:
    ms = members(["a", "b"])
    async with managed(ms[0], ms) as a, managed(ms[1], ms) as b:
        await wait_for(lambda: a.peers["b"].state is State.UP, what="linked")

        async def handler(peer: str, body: dict[str, Any]) -> Any:
            return None if body["data"] == b"bad" else {"data": b"ok"}  # a handler's bug: not a dict

        b.on_request("echo", "echo.reply", handler)
        with pytest.raises(TimeoutError):
            await a.request("b", "echo", {"data": b"bad"}, 1, expect="echo.reply")
        reply = await a.request("b", "echo", {"data": b"x"}, 2, expect="echo.reply")  # (an AttributeError ended b)
        assert reply.body == {"data": b"ok"}


class FakeWebsocket:
    def __init__(self, blocked: bool) -> None:
        self.blocked, self.frames = blocked, list[bytes]()

    async def send_message(self, data: bytes) -> None:
        if self.blocked:
            await trio.sleep_forever()
        self.frames.append(data)


def sessions() -> tuple[Any, Any]:
    keys = {i: bytes(KEYS[i].verify_key) for i in "ab"}
    dialer = Handshake(dialer=True, my_id="a", identity=KEYS["a"], cluster="test", members=keys, expect="b")
    listener = Handshake(dialer=False, my_id="b", identity=KEYS["b"], cluster="test", members=keys)
    welcome, theirs = listener.receive_auth(dialer.receive_challenge(listener.receive_hello(dialer.hello())))
    return dialer.receive_welcome(welcome), theirs


async def test_a_message_carried_over_a_reconnect_is_sent_first() -> None:
    """A message taken from the queue that did not fit in the frame (the link's carry) outlived the connection whose
    sender was cancelled; the next connection's sender overwrote it: lost, uncounted (a reviewer's reproduction)."""
    ms = members(["a", "b"])
    mgr = PeerManager("a", KEYS["a"], "test", ms, registry())
    link = mgr.peers["b"]
    for tag in (b"1", b"2"):
        mgr.send("b", "echo", {"data": tag * (600 * 1024)})
    ours, _ = sessions()
    with trio.move_on_after(0.2):  # the first connection: the peer stops reading, the link closes
        await mgr._sender(link, FakeWebsocket(blocked=True), ours)  # type: ignore[arg-type]
    assert link.carry is not None
    for tag in (b"3", b"4"):
        mgr.send("b", "echo", {"data": tag * (600 * 1024)})
    ours, theirs = sessions()
    second = FakeWebsocket(blocked=False)
    with trio.move_on_after(0.2):
        await mgr._sender(link, second, ours)  # type: ignore[arg-type]
    got = [registry().decode(m).body["data"][:1] for f in second.frames for m in unpack_batch(theirs.open(f), 64)]
    assert got == [b"2", b"3", b"4"] and link.carry is None


async def test_what_waits_for_a_peer_is_bounded_in_bytes_too() -> None:
    """1,024 messages of up to 1 MiB each could wait for a peer gone silent (a reviewer's finding): the queue is
    bounded in bytes too, and what does not fit is dropped and counted, as a full queue's messages are."""
    ms = members(["a", "b"])
    mgr = PeerManager("a", KEYS["a"], "test", ms, registry())
    sent = sum(mgr.send("b", "echo", {"data": b"x" * (512 * 1024)}) for _ in range(200))
    link = mgr.peers["b"]
    assert 0 < sent < MAX_QUEUED_BYTES // (512 * 1024) and link.dropped == 200 - sent
    assert MAX_QUEUED_BYTES - 513 * 1024 < link.queued_bytes <= MAX_QUEUED_BYTES
    assert mgr.send("b", "chat", {"text": "small", "n": 1})  # small ones still fit beside them
    ours, _ = sessions()
    with trio.move_on_after(0.5):  # once sent, they no longer count
        await mgr._sender(link, FakeWebsocket(blocked=False), ours)  # type: ignore[arg-type]
    assert link.queued_bytes == 0 and link.carry is None


async def test_a_large_frame_on_a_slow_link_arrives_and_the_link_stays_up() -> None:
    """A frame that takes longer than DOWN_AFTER heartbeats to arrive (900 kB at 300 kB/s, heartbeats of 0.2 s):
    liveness counted whole frames only, so the receiver closed the link mid-frame every time, and the message,
    retried, never arrived (a reviewer's reproduction). Bytes arriving are a sign of life."""
    from deploy.faultproxy import LinkProxy

    ms = members(["a", "b"])
    proxy = LinkProxy("a->b", ms[1].port, rate=300_000)
    async with trio.open_nursery() as nursery:
        proxy_port = await nursery.start(proxy.serve)
        via_proxy = [ms[0], Member("b", ms[1].public_key, "127.0.0.1", proxy_port)]
        a = PeerManager("a", KEYS["a"], "test", via_proxy, registry(), port=ms[0].port, heartbeat_s=0.2)
        b = PeerManager("b", KEYS["b"], "test", ms, registry(), port=ms[1].port, heartbeat_s=0.2)
        inbox = b.subscribe("echo")
        await nursery.start(a.run)
        await nursery.start(b.run)
        await wait_for(lambda: "b" in a.up_peers() and "a" in b.up_peers(), what="the link")
        links = b.peers["a"].links
        assert a.send("b", "echo", {"data": b"x" * 900_000})
        with trio.fail_after(20):
            peer, msg = await inbox.receive()
        assert peer == "a" and len(msg.body["data"]) == 900_000
        assert b.peers["a"].links == links  # never closed meanwhile
        nursery.cancel_scope.cancel()
