"""The nemesis's link proxy (deploy/faultproxy.py): bytes pass both ways, a cut ends the connections through it and
refuses new ones (also one whose upstream connect was in flight when the cut came), a heal lets new ones
through."""

from __future__ import annotations

from functools import partial

import pytest
import trio

from deploy import faultproxy


async def echo_server(nursery: trio.Nursery) -> int:
    async def echo(stream: trio.SocketStream) -> None:
        async for data in stream:
            await stream.send_all(data)

    listeners = await nursery.start(partial(trio.serve_tcp, echo, 0, host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


async def through(port: int, data: bytes) -> bytes | None:
    """What comes back through the proxy at ``port`` (None: nothing within a second, or the link closed)."""
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        return None
    async with stream:
        return await exchange(stream, data)


async def exchange(stream: trio.SocketStream, data: bytes) -> bytes | None:
    try:
        await stream.send_all(data)
        with trio.move_on_after(1):
            return await stream.receive_some(100) or None
    except trio.BrokenResourceError:
        return None
    return None


async def test_bytes_pass_a_cut_stops_them_and_a_heal_lets_them_through_again() -> None:
    async with trio.open_nursery() as nursery:
        proxy = faultproxy.LinkProxy("a->b", await echo_server(nursery))
        port = await nursery.start(proxy.serve)
        kept = await trio.open_tcp_stream("127.0.0.1", port)
        assert await exchange(kept, b"hello") == b"hello"
        proxy.set(cut=True)
        await trio.sleep(0.05)
        assert await exchange(kept, b"during") is None  # the open connection ended
        assert await through(port, b"new") is None  # and a new one is refused
        proxy.set()
        assert await through(port, b"healed") == b"healed"
        nursery.cancel_scope.cancel()


async def test_a_cut_during_the_upstream_connect_ends_that_connection_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """The connection's cancel scope was registered only after its upstream connect: a cut meanwhile missed it, and
    bytes went through the cut link (a reviewer's run)."""
    real = trio.open_tcp_stream

    async def slow_connect(*args: object, **kwargs: object) -> trio.SocketStream:
        await trio.sleep(0.05)
        return await real(*args, **kwargs)  # type: ignore[arg-type]

    async with trio.open_nursery() as nursery:
        proxy = faultproxy.LinkProxy("a->b", await echo_server(nursery))
        port = await nursery.start(proxy.serve)
        monkeypatch.setattr(faultproxy.trio, "open_tcp_stream", slow_connect)
        client = await real("127.0.0.1", port)
        await trio.sleep(0.01)  # accepted; the proxy's upstream connect is in flight
        proxy.set(cut=True)
        await trio.sleep(0.2)
        assert await exchange(client, b"still through?") is None
        nursery.cancel_scope.cancel()
