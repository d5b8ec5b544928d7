"""What the README says about the two answers Hypercorn gives before the app sees a request (so they have
no JSON body): a request it cannot parse, such as raw non-ASCII bytes in the path, gets 400 with an empty
body; headers over its limit get 431. The same path percent-encoded reaches the app (JSON 404)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from functools import partial

import pytest
import trio
from hypercorn.trio import serve

from api.app import create_app
from node.config import Config
from node.process import hypercorn_config
from tests.conftest import start


@pytest.fixture
async def address(nursery: trio.Nursery, make_config: Callable[..., Config]) -> AsyncIterator[tuple[str, int]]:
    coord = await start(nursery, make_config())
    stop = trio.Event()
    binds = await nursery.start(partial(serve, create_app(coord), hypercorn_config("127.0.0.1", 0),
                                        shutdown_trigger=stop.wait))
    host, port = binds[0].removeprefix("http://").split(":")
    yield host, int(port)
    stop.set()


async def exchange(address: tuple[str, int], request: bytes) -> bytes:
    stream = await trio.open_tcp_stream(*address)
    data = b""
    with trio.move_on_after(5):
        await stream.send_all(request)
        while chunk := await stream.receive_some(65536):
            data += chunk
            if b"\r\n\r\n" in data:
                head, _, body = data.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                if len(body) >= length:
                    break
    await stream.aclose()
    return data


def status_and_body(response: bytes) -> tuple[int, bytes, bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), head.lower(), body


async def test_raw_non_ascii_path_bytes_get_an_empty_400_from_the_server(address: tuple[str, int]) -> None:
    status, head, body = status_and_body(await exchange(address, b"GET /node/\xc3\xa9 HTTP/1.1\r\nHost: localhost\r\n"
                                                                  b"Connection: close\r\n\r\n"))
    assert status == 400 and body == b"" and b"application/json" not in head
    status, head, body = status_and_body(await exchange(address, b"GET /node/%C3%A9 HTTP/1.1\r\nHost: localhost\r\n"
                                                                  b"Connection: close\r\n\r\n"))
    assert status == 404 and b"content-type: application/json" in head and b'"node not found"' in body


async def test_oversized_headers_get_431_from_the_server(address: tuple[str, int]) -> None:
    big = b"X-Big: " + b"a" * 200_000 + b"\r\n"
    status, head, body = status_and_body(await exchange(address, b"GET /health HTTP/1.1\r\nHost: localhost\r\n" + big +
                                                        b"Connection: close\r\n\r\n"))
    assert status == 431 and body == b"" and b"application/json" not in head
