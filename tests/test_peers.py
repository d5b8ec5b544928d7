"""The peer protocol: envelope limits, handshake and sealed channel (pure), real websocket links between
managers in one process, and the simulated network under MockClock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from functools import partial

import msgpack
import nacl.signing
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from trio_websocket import WebSocketConnection, open_websocket_url

from protocol.envelope import Message, ProtocolError, Registry, is_bytes, is_int, is_str, pack_batch, unpack_batch
from protocol.handshake import (
    CLOSE_BAD_AUTH,
    CLOSE_BAD_VERSION,
    CLOSE_UNKNOWN_PEER,
    CLOSE_WRONG_CLUSTER,
    ChannelBroken,
    Handshake,
    HandshakeRefused,
    Session,
)
from protocol.manager import CLOSE_WAIT_S, Member, PeerManager, State
from protocol.simnet import SimNetwork
from tests.conftest import wait_for as _wait_for
from tests.proc import free_port

wait_for = partial(_wait_for, timeout=10.0)  # links take longer than in-process state to settle


def registry() -> Registry:
    r = Registry()
    r.register("chat", {"text": is_str(), "n": is_int()})
    r.register("echo", {"data": is_bytes()})
    r.register("echo.reply", {"data": is_bytes()})
    return r


# ---- envelope ---------------------------------------------------------------------------------------

def test_envelope_roundtrip_and_strictness() -> None:
    r = registry()
    msg = Message("chat", {"text": "hi", "n": 3}, id=7)
    assert r.decode(r.encode(msg)) == msg
    bad = [
        {"v": 2, "type": "chat", "body": {"text": "hi", "n": 3}},  # version
        {"v": 1, "type": "nope", "body": {}},  # unknown type
        {"v": 1, "type": "chat", "body": {"text": "hi"}},  # missing field
        {"v": 1, "type": "chat", "body": {"text": "hi", "n": 3, "x": 1}},  # unknown field
        {"v": 1, "type": "chat", "body": {"text": 5, "n": 3}},  # wrong type
        {"v": 1, "type": "chat", "body": {"text": "hi", "n": -1}},  # out of range
        {"v": 1, "type": "chat", "body": {"text": "hi", "n": 3}, "id": "x"},  # bad id
        [1, "chat", {}],  # not a map
    ]
    for obj in bad:
        with pytest.raises(ProtocolError):
            r.decode(msgpack.packb(obj))
    with pytest.raises(ProtocolError):
        r.decode(r.encode(msg) + b"\x00")  # trailing data
    deep: object = 1
    for _ in range(20):
        deep = [deep]
    with pytest.raises(ProtocolError):
        r.decode(msgpack.packb({"v": 1, "type": "chat", "body": {"text": "hi", "n": deep}}))
    with pytest.raises(ProtocolError):
        r.encode(Message("echo", {"data": b"x" * (1024 * 1024)}))  # over the frame limit


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(max_size=50), min_size=1, max_size=5), st.binary(max_size=12))
def test_batches_roundtrip_and_bad_framing_only_raises_protocol_error(msgs: list[bytes], junk: bytes) -> None:
    assert unpack_batch(pack_batch(msgs), 64) == msgs
    with suppress(ProtocolError):
        unpack_batch(pack_batch(msgs)[:-1] + junk, 64)


def test_a_batch_holds_no_more_messages_than_a_sender_puts_in_one() -> None:
    """A member's frame of 52k tiny messages was decoded whole, without a checkpoint (a reviewer's reproduction):
    a batch of more than MAX_BATCH messages is a protocol error."""
    from protocol.manager import MAX_BATCH

    assert len(unpack_batch(pack_batch([b"x"] * MAX_BATCH), MAX_BATCH)) == MAX_BATCH
    with pytest.raises(ProtocolError, match="more than 64 messages"):
        unpack_batch(pack_batch([b"x"] * (MAX_BATCH + 1)), MAX_BATCH)


def test_a_body_with_text_and_bytes_keys_is_a_protocol_error() -> None:
    """sorted() of a body's keys raised TypeError for str and bytes keys mixed: the link ended as an "unexpected
    error", uncounted (a reviewer's reproduction)."""
    with pytest.raises(ProtocolError, match="fields"):
        registry().decode(msgpack.packb({"v": 1, "type": "chat", "body": {"text": "hi", b"n": 1}},
                                        use_bin_type=True))


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_decoder_fuzz_random_bytes_only_raises_protocol_error(data: bytes) -> None:
    with suppress(ProtocolError):
        registry().decode(data)


scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=10)
json_like = st.recursive(scalars | st.binary(max_size=10),
                         lambda children: st.lists(children, max_size=4)
                         | st.dictionaries(st.text(max_size=5), children, max_size=4), max_leaves=20)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(["v", "type", "body", "id", "re", "x"]), json_like, max_size=6))
def test_decoder_fuzz_envelope_shaped_objects_only_raises_protocol_error(obj: dict[str, object]) -> None:
    with suppress(ProtocolError):
        registry().decode(msgpack.packb(obj, use_bin_type=True))


# ---- handshake --------------------------------------------------------------------------------------

KEYS = {name: nacl.signing.SigningKey.generate() for name in ("a", "b", "c", "stranger")}
MEMBERS = {name: bytes(KEYS[name].verify_key) for name in ("a", "b", "c")}


async def accept_by_hand(nursery: trio.Nursery, stream: trio.SocketStream, me: str, ms: list[Member]
                         ) -> tuple[WebSocketConnection, Session]:
    """Member ``me``, played by hand: accept a dialer's websocket on ``stream`` and complete the handshake."""
    import trio_websocket

    ws = await (await trio_websocket.wrap_server_stream(nursery, stream, max_message_size=2**21)).accept()
    hs = Handshake(dialer=False, my_id=me, identity=KEYS[me], cluster="test", members={m.id: m.public_key for m in ms})
    await ws.send_message(hs.receive_hello(await ws.get_message()))
    welcome, session = hs.receive_auth(await ws.get_message())
    await ws.send_message(welcome)
    return ws, session


def pair(**overrides: object) -> tuple[Handshake, Handshake]:
    dialer = Handshake(dialer=True, my_id="a", identity=KEYS["a"], cluster="test", members=MEMBERS, expect="b")
    kw: dict[str, object] = {"dialer": False, "my_id": "b", "identity": KEYS["b"], "cluster": "test",
                             "members": MEMBERS}
    kw.update(overrides)
    return dialer, Handshake(**kw)  # type: ignore[arg-type]


def complete(dialer: Handshake, listener: Handshake) -> tuple[Session, Session]:
    """Run the four steps; return the dialer's and the listener's sessions."""
    auth = dialer.receive_challenge(listener.receive_hello(dialer.hello()))
    welcome, listener_session = listener.receive_auth(auth)
    return dialer.receive_welcome(welcome), listener_session


def test_handshake_gives_working_sessions_in_both_directions() -> None:
    sa, sb = complete(*pair())
    assert sa.peer.id == "b" and sb.peer.id == "a"
    for i in range(3):
        assert sb.open(sa.seal(f"to b {i}".encode())) == f"to b {i}".encode()
        assert sa.open(sb.seal(f"to a {i}".encode())) == f"to a {i}".encode()


def test_replayed_reordered_and_tampered_frames_break_the_channel() -> None:
    sa, sb = complete(*pair())
    f0, f1 = sa.seal(b"zero"), sa.seal(b"one")
    with pytest.raises(ChannelBroken):
        sb.open(f1)  # reordered
    assert sb.open(f0) == b"zero"
    with pytest.raises(ChannelBroken):
        sb.open(f0)  # replayed
    tampered = bytearray(f1)
    tampered[3] ^= 1
    with pytest.raises(ChannelBroken):
        sb.open(bytes(tampered))


def test_refusals_carry_a_code_and_reason() -> None:
    stranger = Handshake(dialer=True, my_id="stranger", identity=KEYS["stranger"], cluster="test",
                         members={**MEMBERS, "stranger": bytes(KEYS["stranger"].verify_key)}, expect="b")
    _, b = pair()
    with pytest.raises(HandshakeRefused) as err:
        b.receive_hello(stranger.hello())
    assert err.value.code == CLOSE_UNKNOWN_PEER
    impostor = Handshake(dialer=True, my_id="c", identity=KEYS["stranger"], cluster="test", members=MEMBERS,
                         expect="b")
    with pytest.raises(HandshakeRefused) as err:
        pair()[1].receive_hello(impostor.hello())  # a member's id with another key
    assert err.value.code == CLOSE_UNKNOWN_PEER
    a, other_cluster = pair(cluster="other")
    with pytest.raises(HandshakeRefused) as err:
        other_cluster.receive_hello(a.hello())
    assert err.value.code == CLOSE_WRONG_CLUSTER and "cluster" in err.value.reason
    hello = msgpack.unpackb(pair()[0].hello())
    hello["v"] = 99
    with pytest.raises(HandshakeRefused) as err:
        pair()[1].receive_hello(msgpack.packb(hello))
    assert err.value.code == CLOSE_BAD_VERSION
    a, b = pair()
    b.receive_hello(a.hello())
    with pytest.raises(HandshakeRefused) as err:
        b.receive_auth(msgpack.packb({"sig": bytes(64)}))  # a forged transcript signature
    assert err.value.code == CLOSE_BAD_AUTH
    a, b = pair()
    a.receive_challenge(b.receive_hello(a.hello()))
    with pytest.raises(HandshakeRefused) as err:  # the listener's forged signature
        a.receive_welcome(msgpack.packb({"id": "b", "identity": MEMBERS["b"], "sig": bytes(64)}))
    assert err.value.code == CLOSE_BAD_AUTH
    a, c = pair(my_id="c", identity=KEYS["c"])  # a dials "b", but c answers
    auth = a.receive_challenge(c.receive_hello(a.hello()))
    with pytest.raises(HandshakeRefused) as err:  # a signed for b: c cannot use it
        c.receive_auth(auth)
    assert err.value.code == CLOSE_BAD_AUTH


# ---- real links -------------------------------------------------------------------------------------

def members(ids: list[str]) -> list[Member]:
    return [Member(i, bytes(KEYS[i].verify_key), "127.0.0.1", free_port()) for i in ids]


@asynccontextmanager
async def running(member: Member, all_members: list[Member], key: nacl.signing.SigningKey | None = None,
                  cluster: str = "test") -> AsyncIterator[PeerManager]:
    mgr = PeerManager(member.id, key or KEYS[member.id], cluster, all_members, registry(), port=member.port,
                      heartbeat_s=0.1)
    async with trio.open_nursery() as nursery:
        await nursery.start(mgr.run)
        yield mgr
        nursery.cancel_scope.cancel()


async def test_three_managers_link_exchange_request_and_broadcast() -> None:
    ms = members(["a", "b", "c"])
    async with running(ms[0], ms) as a, running(ms[1], ms) as b, running(ms[2], ms) as c:
        mgrs = (a, b, c)
        await wait_for(lambda: all(len(m.up_peers()) == 2 for m in mgrs), what="a full mesh")
        assert all(link.links == 1 for m in mgrs for link in m.peers.values())  # one link per pair
        inbox = c.subscribe("chat")
        assert a.send("c", "chat", {"text": "hello", "n": 1})
        with trio.fail_after(5):
            peer, msg = await inbox.receive()
        assert (peer, msg.body) == ("a", {"text": "hello", "n": 1})

        async def echo(peer_id: str, body: dict[str, object]) -> dict[str, object]:
            return {"data": peer_id.encode() + body["data"]}  # type: ignore[operator]

        b.on_request("echo", "echo.reply", echo)
        reply = await c.request("b", "echo", {"data": b"!"}, timeout_s=5, expect="echo.reply")
        assert reply.body == {"data": b"c!"}
        inbox_a, inbox_b = a.subscribe("chat"), b.subscribe("chat")
        assert c.broadcast("chat", {"text": "all", "n": 2}) == 2
        with trio.fail_after(5):
            assert (await inbox_a.receive()) [1].body["text"] == "all"
            assert (await inbox_b.receive())[1].body["text"] == "all"
        await wait_for(lambda: all(link.rtt_ms is not None for m in mgrs for link in m.peers.values()), what="rtt")
        status = {s["id"]: s for s in a.status()}
        assert status["c"]["state"] == "up" and status["c"]["messages_out"] >= 1 and status["c"]["rtt_ms"] < 1000
        with pytest.raises(TimeoutError):
            await c.request("a", "echo", {"data": b"?"}, timeout_s=0.3, expect="echo.reply")  # a has no handler


async def test_peers_on_ipv6_addresses_link() -> None:
    """``ws://::1:9000/peer/v1`` is no URL: links to an IPv6 peer never came up (a reviewer's reproduction)."""
    ms = [Member(i, bytes(KEYS[i].verify_key), "::1", free_port()) for i in ("a", "b")]

    @asynccontextmanager
    async def on_ipv6(member: Member) -> AsyncIterator[PeerManager]:
        mgr = PeerManager(member.id, KEYS[member.id], "test", ms, registry(), host="::1", port=member.port,
                          heartbeat_s=0.1)
        async with trio.open_nursery() as nursery:
            await nursery.start(mgr.run)
            yield mgr
            nursery.cancel_scope.cancel()

    async with on_ipv6(ms[0]) as a, on_ipv6(ms[1]) as b:
        await wait_for(lambda: a.up_peers() == ["b"] and b.up_peers() == ["a"], what="the IPv6 link")
        assert a.url.startswith("ws://[::1]:") and a.status()[0]["address"] == f"[::1]:{ms[1].port}"


async def test_unknown_key_and_wrong_cluster_are_refused(caplog: pytest.LogCaptureFixture) -> None:
    ms = members(["a", "b"])
    async with running(ms[1], ms) as b:
        # "a" dials b with a key that is not a's: b refuses and logs why; b never sees "a" up
        async with running(ms[0], ms, key=KEYS["stranger"]) as impostor:
            await wait_for(lambda: impostor.peers["b"].last_error is not None, what="a refusal")
            await trio.sleep(0.3)
            assert b.peers["a"].state is State.DOWN and b.peers["a"].links == 0
            assert "refused" in (impostor.peers["b"].last_error or "")
        async with running(ms[0], ms, cluster="other-cluster") as wrong:
            await wait_for(lambda: "cluster" in (wrong.peers["b"].last_error or ""), what="cluster refusal")
            assert b.peers["a"].links == 0
    assert any("not a member" in r.getMessage() for r in caplog.records)


@asynccontextmanager
async def raw_dial(port: int, ms: list[Member], my_id: str = "a", expect: str = "b"
                   ) -> AsyncIterator[tuple[WebSocketConnection, Session]]:
    """Act as ``my_id`` by hand: complete the handshake with ``expect`` at ``port``."""
    hs = Handshake(dialer=True, my_id=my_id, identity=KEYS[my_id], cluster="test",
                   members={m.id: m.public_key for m in ms}, expect=expect)
    async with open_websocket_url(f"ws://127.0.0.1:{port}/peer/v1") as ws:
        await ws.send_message(hs.hello())
        await ws.send_message(hs.receive_challenge(await ws.get_message()))  # type: ignore[arg-type]
        yield ws, hs.receive_welcome(await ws.get_message())  # type: ignore[arg-type]


async def test_a_tampered_frame_kills_the_link_and_the_dialer_reconnects() -> None:
    ms = members(["a", "b"])
    async with running(ms[1], ms) as b:
        # act as "a" by hand: complete the handshake, then send a frame sealed with the wrong counter
        async with raw_dial(ms[1].port, ms) as (ws, session):
            await wait_for(lambda: b.peers["a"].state is State.UP, what="link up")
            frame = bytearray(session.seal(pack_batch([registry().encode(Message("chat", {"text": "x", "n": 1}))])))
            frame[-1] ^= 0xFF
            await ws.send_message(bytes(frame))
            await wait_for(lambda: b.peers["a"].state is State.DOWN, what="the link to close")
        assert "authentication" in (b.peers["a"].last_error or "")
        # b survived: the real "a" connects normally afterwards
        async with running(ms[0], ms) as a:
            await wait_for(lambda: a.peers["b"].state is State.UP and b.peers["a"].state is State.UP, what="relink")


async def test_malformed_messages_are_counted_then_the_link_is_closed() -> None:
    ms = members(["a", "b"])
    async with running(ms[1], ms) as b:
        async with raw_dial(ms[1].port, ms) as (ws, session):
            await ws.send_message(session.seal(pack_batch([b"\xc1 not msgpack"])))
            await wait_for(lambda: b.peers["a"].errors == 1, what="one malformed message counted")
            assert b.peers["a"].state is State.UP  # one bad message does not close the link
            good = registry().encode(Message("chat", {"text": "ok", "n": 1}))
            inbox = b.subscribe("chat")
            await ws.send_message(session.seal(pack_batch([b"\x00", good])))  # a bad and a good one in a batch
            with trio.fail_after(5):
                assert (await inbox.receive())[1].body["text"] == "ok"
            await ws.send_message(session.seal(b"\x00\x00\x00\x09short"))  # broken batch framing
            await wait_for(lambda: b.peers["a"].errors == 3, what="the framing error counted")
            for _ in range(10):
                await ws.send_message(session.seal(pack_batch([msgpack.packb({"v": 1, "type": "chat", "body": {}})])))
            await wait_for(lambda: b.peers["a"].state is State.DOWN, what="the link to close")
        assert b.peers["a"].errors >= 10


async def test_messages_of_an_unknown_type_are_counted_and_keep_the_link_up() -> None:
    """A member upgraded first sends types its peers do not know yet: dropped and counted, not malformed (ten of
    them closed the link, so links between versions flapped through a rolling upgrade)."""
    ms = members(["a", "b"])
    async with running(ms[1], ms) as b, raw_dial(ms[1].port, ms) as (ws, session):
        await wait_for(lambda: b.peers["a"].state is State.UP, what="link up")
        newer = msgpack.packb({"v": 1, "type": "from.a.newer.build", "body": {"x": 1}})
        for _ in range(25):
            await ws.send_message(session.seal(pack_batch([newer])))
        inbox = b.subscribe("chat")
        await ws.send_message(session.seal(pack_batch([registry().encode(Message("chat", {"text": "ok",
                                                                                          "n": 1}))])))
        with trio.fail_after(5):
            assert (await inbox.receive())[1].body["text"] == "ok"
        assert b.peers["a"].state is State.UP and b.peers["a"].unknown_in == 25 and b.peers["a"].errors == 0


async def test_a_restarted_peer_is_reconnected() -> None:
    ms = members(["a", "b"])
    async with running(ms[0], ms) as a:
        async with running(ms[1], ms):
            await wait_for(lambda: a.peers["b"].state is State.UP, what="link up")
        await wait_for(lambda: a.peers["b"].state in (State.DOWN, State.CONNECTING), what="link down")
        async with running(ms[1], ms) as b2:
            started = trio.current_time()
            await wait_for(lambda: a.peers["b"].state is State.UP and b2.peers["a"].state is State.UP,
                             what="reconnection")
            assert trio.current_time() - started < 5
            assert a.peers["b"].links == 2


async def test_a_stopping_member_says_so_and_does_not_wait_for_peers_stopping_with_it() -> None:
    """A member cancelled from outside (it stops) closes its links with 1001 "stopping" and does not wait for the
    close's answer, which peers stopping at the same moment never send: every member of a cluster stopped at once
    spent a second more on its links than on its work (CLOSE_WAIT_S, a floor: before, the stop below took >= 1 s)."""
    ms = members(["a", "b", "c"])
    async with running(ms[0], ms) as a:
        async with trio.open_nursery() as both:
            b, c = (PeerManager(m.id, KEYS[m.id], "test", ms, registry(), port=m.port, heartbeat_s=0.1)
                    for m in ms[1:])
            await both.start(b.run)
            await both.start(c.run)
            await wait_for(lambda: all(len(m.up_peers()) == 2 for m in (a, b, c)), what="a full mesh")
            started = trio.current_time()
            both.cancel_scope.cancel()
        took = trio.current_time() - started
        assert took < CLOSE_WAIT_S, f"stopping two members at once took {took:.2f} s"
        await wait_for(lambda: a.peers["b"].state is not State.UP and a.peers["c"].state is not State.UP,
                       what="links down")
        for peer in ("b", "c"):  # the member still running learns why
            assert "code=1001" in (a.peers[peer].last_error or "") and "stopping" in (a.peers[peer].last_error or "")


async def test_a_dialer_whose_link_an_inbound_one_replaced_does_not_mark_the_peer_down() -> None:
    """b dials a too (a member that should only accept, misconfigured or faulty): a's inbound link from b replaces
    a's own, which ends; a must not mark b down while the new link is up (a reviewer found it did, so b dropped
    out of a's up_peers while they were linked)."""
    ms = members(["a", "b"])
    async with running(ms[0], ms) as a, running(ms[1], ms) as b:
        await wait_for(lambda: a.peers["b"].state is State.UP, what="link up")
        states: list[State] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(b._dial_forever, b.peers["a"])
            await wait_for(lambda: a.peers["b"].links >= 3, what="the links to replace each other")
            for _ in range(100):
                states.append(a.peers["b"].state)
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        assert State.DOWN not in states and State.CONNECTING not in states


# ---- simulated network --------------------------------------------------------------------------------

async def test_simnet_delivers_drops_delays_duplicates_and_partitions(autojump_clock: trio.testing.MockClock
                                                                      ) -> None:
    net = SimNetwork(registry(), seed=42, delay=(0.01, 0.5))
    a, b, c = net.add("a"), net.add("b"), net.add("c")
    async with trio.open_nursery() as nursery:
        await nursery.start(net.run)
        inbox = b.subscribe("chat")
        start = trio.current_time()
        for i in range(100):
            a.send("b", "chat", {"text": "m", "n": i})
        with trio.fail_after(10):
            got = [(await inbox.receive())[1].body["n"] for _ in range(100)]
        assert sorted(got) == list(range(100)) and got != list(range(100))  # all delivered, reordered
        assert 0.01 <= trio.current_time() - start <= 0.5 + 1e-6  # virtual time: the configured delays

        net.drop, net.duplicate = 0.3, 0.2
        for i in range(1000):
            a.send("b", "chat", {"text": "m", "n": i})
        await trio.sleep(1)
        received = 0
        while True:
            try:
                inbox.receive_nowait()
                received += 1
            except trio.WouldBlock:
                break
        assert 250 <= net.stats.dropped <= 350 and net.stats.duplicated > 100
        assert received == 1000 - net.stats.dropped + net.stats.duplicated

        net.drop = net.duplicate = 0.0
        net.partition({"a"}, {"b", "c"})
        assert a.up_peers() == [] and b.up_peers() == ["c"]
        a.send("b", "chat", {"text": "cut", "n": 1})
        c.send("b", "chat", {"text": "same side", "n": 2})
        await trio.sleep(1)
        assert inbox.receive_nowait()[1].body["text"] == "same side"
        with pytest.raises(trio.WouldBlock):
            inbox.receive_nowait()
        net.heal()

        async def echo(peer_id: str, body: dict[str, object]) -> dict[str, object]:
            return {"data": b"pong"}

        c.on_request("echo", "echo.reply", echo)
        assert (await a.request("c", "echo", {"data": b""}, timeout_s=2, expect="echo.reply")).body == {"data": b"pong"}
        net.partition({"a"}, {"c"})
        with pytest.raises(TimeoutError):
            await a.request("c", "echo", {"data": b""}, timeout_s=2, expect="echo.reply")
        nursery.cancel_scope.cancel()


async def test_request_handlers_are_bounded_in_number_and_time(autojump_clock: trio.testing.MockClock) -> None:
    net = SimNetwork(registry(), seed=1)
    a, b = net.add("a"), net.add("b")
    b.dispatcher.max_handlers, b.dispatcher.handler_timeout_s = 2, 5.0
    release = trio.Event()

    async def slow(peer_id: str, body: dict[str, object]) -> dict[str, object]:
        await release.wait()
        return {"data": b"late"}

    b.on_request("echo", "echo.reply", slow)
    async with trio.open_nursery() as nursery:
        await nursery.start(net.run)
        results: list[object] = []

        async def ask() -> None:
            try:
                results.append((await a.request("b", "echo", {"data": b""}, timeout_s=10, expect="echo.reply")).body)
            except TimeoutError:
                results.append("timeout")

        for _ in range(3):
            nursery.start_soon(ask)
        await trio.sleep(1)
        assert b.dispatcher.running_handlers == 2  # the third request was refused, not queued
        await trio.sleep(5)  # the handlers' time runs out: they give up without answering
        assert b.dispatcher.running_handlers == 0
        await trio.sleep(5)
        assert results == ["timeout"] * 3
        nursery.cancel_scope.cancel()


async def test_a_peers_unknown_type_name_and_forged_pong_are_kept_small_and_sane() -> None:
    """A member's message of a 1 MB unknown type name was kept whole as the link's last error (served by
    /cluster/peers), and a pong carrying any time made any RTT, negative included (a reviewer's reproduction)."""
    ms = members(["a", "b"])
    async with running(ms[1], ms) as b, raw_dial(ms[1].port, ms) as (ws, session):
        await wait_for(lambda: b.peers["a"].state is State.UP, what="link up")
        big = msgpack.packb({"v": 1, "type": "x" * 1_000_000, "body": {}})
        pong = msgpack.packb({"v": 1, "type": "peer.pong", "body": {"t": 2**63 - 1}})
        await ws.send_message(session.seal(pack_batch([big, pong])))
        await wait_for(lambda: b.peers["a"].unknown_in == 1, what="the unknown type counted")
        await trio.sleep(0.2)
        link = b.peers["a"]
        assert link.last_error is not None and len(link.last_error) <= 200
        assert link.rtt_ms is None or 0 <= link.rtt_ms < 10_000
