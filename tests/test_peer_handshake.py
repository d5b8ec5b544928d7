"""Peer handshake hardening (issue 8 §3, items 1 and 2): a zero or low-order ephemeral key ends that
connection only, and the listener reveals nothing about itself before the dialer has proved that it is
a member (its transcript signature)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgpack
import nacl.public
import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, open_websocket_url, serve_websocket

from protocol.handshake import (
    CLOSE_BAD_AUTH,
    CLOSE_BAD_VERSION,
    CLOSE_PROTOCOL,
    CLOSE_UNKNOWN_PEER,
    Handshake,
    HandshakeRefused,
)
from protocol.manager import PeerManager, State
from tests.test_peers import KEYS, MEMBERS, members, registry, running, wait_for

P = 2**255 - 19
# X25519 public keys that give no shared secret: zero, one, the two points of order 8, and the
# non-canonical encodings p - 1, p, p + 1 (low order too).
LOW_ORDER = [
    bytes(32),
    (1).to_bytes(32, "little"),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    (P - 1).to_bytes(32, "little"),
    P.to_bytes(32, "little"),
    (P + 1).to_bytes(32, "little"),
]


def hello_with(ephemeral: bytes, my_id: str = "a", key: bytes | None = None) -> bytes:
    """A well-formed hello of ``my_id`` (by default with its real public key) and the given ephemeral key."""
    return msgpack.packb({"v": 1, "cluster": "test", "id": my_id,
                          "identity": key if key is not None else MEMBERS[my_id],
                          "ephemeral": ephemeral, "nonce": bytes(32)}, use_bin_type=True)


def test_a_stranger_with_a_nil_identity_or_a_version_of_another_type_is_refused_at_its_hello() -> None:
    """An unknown id sent with a nil identity passed the membership check (None == None) and was challenged; and
    true passed for version 1 (a reviewer's reproduction)."""
    good = bytes(nacl.public.PrivateKey.generate().public_key)
    for frame, code in ((msgpack.packb({"v": 1, "cluster": "test", "id": "stranger", "identity": None,
                                        "ephemeral": good, "nonce": bytes(32)}), CLOSE_UNKNOWN_PEER),
                        (msgpack.packb({"v": True, "cluster": "test", "id": "a", "identity": MEMBERS["a"],
                                        "ephemeral": good, "nonce": bytes(32)}), CLOSE_BAD_VERSION)):
        listener = Handshake(dialer=False, my_id="b", identity=KEYS["b"], cluster="test", members=MEMBERS)
        with pytest.raises(HandshakeRefused) as err:
            listener.receive_hello(frame)
        assert err.value.code == code and listener.peer is None


@asynccontextmanager
async def raw(port: int) -> AsyncIterator[WebSocketConnection]:
    async with open_websocket_url(f"ws://127.0.0.1:{port}/peer/v1") as ws:
        yield ws


async def frames_until_closed(ws: WebSocketConnection, timeout: float = 5) -> tuple[list[bytes], int | None]:
    """Every message the server sends until it closes; and the close code."""
    got: list[bytes] = []
    with trio.fail_after(timeout):
        while True:
            try:
                got.append(await ws.get_message())  # type: ignore[arg-type]
            except ConnectionClosed as exc:
                return got, exc.reason.code if exc.reason else None


# ---- item 1: low-order ephemeral keys -------------------------------------------------------------

@pytest.mark.parametrize("ephemeral", LOW_ORDER, ids=range(len(LOW_ORDER)))
def test_low_order_ephemeral_keys_are_refused_with_a_close_code_on_both_sides(ephemeral: bytes) -> None:
    listener = Handshake(dialer=False, my_id="b", identity=KEYS["b"], cluster="test", members=MEMBERS)
    with pytest.raises(HandshakeRefused) as err:
        listener.receive_hello(hello_with(ephemeral))
    assert err.value.code == CLOSE_PROTOCOL and "ephemeral" in err.value.reason
    dialer = Handshake(dialer=True, my_id="a", identity=KEYS["a"], cluster="test", members=MEMBERS, expect="b")
    dialer.hello()
    with pytest.raises(HandshakeRefused) as err:
        dialer.receive_challenge(msgpack.packb({"ephemeral": ephemeral, "nonce": bytes(32)}))
    assert err.value.code == CLOSE_PROTOCOL


async def test_a_members_low_order_hello_ends_that_connection_only(caplog: pytest.LogCaptureFixture) -> None:
    ms = members(["a", "b", "c"])
    async with running(ms[0], ms) as a, running(ms[1], ms) as b, running(ms[2], ms) as c:
        await wait_for(lambda: all(len(m.up_peers()) == 2 for m in (a, b, c)), what="a full mesh")
        for ephemeral in LOW_ORDER:  # "a" (a member, its real key) dials b with an unusable ephemeral key
            async with raw(ms[1].port) as ws:
                await ws.send_message(hello_with(ephemeral))
                got, code = await frames_until_closed(ws)
            assert got == [] and code == CLOSE_PROTOCOL  # refused at once, nothing sent back
        # b still serves every link it had, and new ones
        assert b.peers["a"].state is State.UP and b.peers["c"].state is State.UP
        assert b.peers["a"].links == 1 and b.inbound["refused"] == len(LOW_ORDER)
        await wait_for(lambda: b.unauthenticated == 0, what="the refused connections to be released")

        async def echo(peer_id: str, body: dict[str, object]) -> dict[str, object]:
            return {"data": b"still here"}

        b.on_request("echo", "echo.reply", echo)
        for asker in (a, c):
            reply = await asker.request("b", "echo", {"data": b""}, timeout_s=5, expect="echo.reply")
            assert reply.body == {"data": b"still here"}
    peer_records = [r for r in caplog.records if r.name == "dsdn.peers"]
    assert not [r for r in peer_records if r.levelno >= logging.ERROR]  # a refusal, not a crash
    assert any("ephemeral" in r.getMessage() for r in peer_records if r.levelno == logging.WARNING)


async def test_a_listener_answering_with_a_low_order_key_does_not_take_the_dialer_down() -> None:
    ms = members(["a", "b", "c"])
    answered = 0

    async def fake_b(request: WebSocketRequest) -> None:  # answers a's hello with a zero ephemeral key
        nonlocal answered
        ws = await request.accept()
        await ws.get_message()
        await ws.send_message(msgpack.packb({"ephemeral": bytes(32), "nonce": bytes(32)}))
        answered += 1
        with trio.move_on_after(2), pytest.raises(ConnectionClosed):
            await ws.get_message()

    async with trio.open_nursery() as nursery:
        await nursery.start(serve_websocket, fake_b, "127.0.0.1", ms[1].port, None)
        async with running(ms[0], ms) as a, running(ms[2], ms):
            await wait_for(lambda: answered >= 2, what="a to redial the fake b")
            await wait_for(lambda: a.peers["c"].state is State.UP, what="a's other link")
            assert "ephemeral" in (a.peers["b"].last_error or "")
        nursery.cancel_scope.cancel()


# ---- item 2: the dialer proves membership first ------------------------------------------------------

async def test_the_listener_reveals_nothing_before_the_dialer_has_proved_membership() -> None:
    ms = members(["a", "b"])
    b_secrets = (MEMBERS["b"], KEYS["b"].verify_key.encode())
    async with running(ms[1], ms) as b:
        # a connection that says nothing hears nothing
        async with raw(ms[1].port) as ws:
            with trio.move_on_after(0.5) as silent:
                await ws.get_message()
            assert silent.cancelled_caught
        # a stranger's hello is refused without a word about b
        async with raw(ms[1].port) as ws:
            await ws.send_message(hello_with(bytes(range(32)), "stranger", bytes(KEYS["stranger"].verify_key)))
            got, code = await frames_until_closed(ws)
            assert got == [] and code == CLOSE_UNKNOWN_PEER
        # someone who knows a's public key (not a secret) gets a challenge of random bytes, then a refusal
        hs = Handshake(dialer=True, my_id="a", identity=KEYS["stranger"], cluster="test",
                       members={"a": MEMBERS["a"], "b": MEMBERS["b"]}, expect="b")
        hello = msgpack.unpackb(hs.hello())
        hello["identity"] = MEMBERS["a"]
        async with raw(ms[1].port) as ws:
            await ws.send_message(msgpack.packb(hello))
            challenge = await ws.get_message()
            assert isinstance(challenge, bytes) and set(msgpack.unpackb(challenge)) == {"ephemeral", "nonce"}
            await ws.send_message(msgpack.packb({"sig": bytes(64)}))
            got, code = await frames_until_closed(ws)
            assert code == CLOSE_BAD_AUTH
        for frame in [challenge, *got]:
            assert not any(secret in frame for secret in b_secrets) and b"b" not in msgpack.unpackb(frame).values()
        assert b.peers["a"].links == 0
        # the real a: b's welcome names b and carries its signature
        hs = Handshake(dialer=True, my_id="a", identity=KEYS["a"], cluster="test",
                       members={"a": MEMBERS["a"], "b": MEMBERS["b"]}, expect="b")
        async with raw(ms[1].port) as ws:
            await ws.send_message(hs.hello())
            await ws.send_message(hs.receive_challenge(await ws.get_message()))  # type: ignore[arg-type]
            welcome = await ws.get_message()
            assert isinstance(welcome, bytes) and msgpack.unpackb(welcome)["identity"] == MEMBERS["b"]
            assert hs.receive_welcome(welcome).peer.id == "b"
            await wait_for(lambda: b.peers["a"].state is State.UP, what="the link")


async def test_a_failing_link_up_callback_is_logged_and_breaks_nothing(caplog: pytest.LogCaptureFixture) -> None:
    ms = members(["a", "b", "c"])
    async with running(ms[1], ms) as b, running(ms[2], ms) as c:
        mgr = PeerManager("a", KEYS["a"], "test", ms, registry(), port=ms[0].port, heartbeat_s=0.1)

        def broken(peer_id: str) -> None:
            raise RuntimeError(f"a layer's bug ({peer_id})")

        mgr.on_link_up(broken)
        async with trio.open_nursery() as nursery:
            await nursery.start(mgr.run)  # "a" dials b and c: both links come up and stay up
            await wait_for(lambda: len(mgr.up_peers()) == 2 and len(b.up_peers()) == len(c.up_peers()) == 2,
                           what="a full mesh")
            await trio.sleep(0.3)
            assert all(link.links == 1 for link in mgr.peers.values())
            nursery.cancel_scope.cancel()
    assert any("a layer's bug" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)
