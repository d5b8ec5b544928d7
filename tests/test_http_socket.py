"""The API through a real Hypercorn socket (in-process server, httpx and raw-socket clients)."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable
from functools import partial

import httpx
import pytest
import trio
from hypercorn.trio import serve

from api.app import create_app
from node.config import Config
from node.process import hypercorn_config
from tests.conftest import start


@pytest.fixture
async def base_url(nursery: trio.Nursery, make_config: Callable[..., Config]) -> AsyncIterator[str]:
    coord = await start(nursery, make_config())
    stop = trio.Event()
    binds = await nursery.start(partial(serve, create_app(coord), hypercorn_config("127.0.0.1", 0),
                                        shutdown_trigger=stop.wait))
    yield binds[0]
    stop.set()


async def test_seed_flow_over_a_socket(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=5) as http:
        r = await http.post("/register", json={"id": "node-1", "zone": "zone-a", "addr": "10.0.0.1:50051",
                                               "capacity_gb": 100})
        assert r.status_code == 200 and r.json() == {"ok": True}
        r = await http.get("/nodes")
        assert r.json() == [{"id": "node-1", "zone": "zone-a", "addr": "10.0.0.1:50051", "capacity_gb": 100,
                             "meta": {}}]
        assert r.headers["content-type"] == "application/json"
        r = await http.get("/placement/abc?rf=2")
        assert r.status_code == 200 and r.json() == ["node-1"]
        r = await http.post("/register", content=b"{", headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["error"] == "malformed_json"
        big = b"x" * (1024 * 1024 + 10)
        r = await http.post("/register", content=big, headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and r.json()["error"] == "payload_too_large"
        r = await http.get("/node/node%2F1")  # an encoded slash is not a path separator: just unknown
        assert r.status_code == 404 and r.headers["content-type"] == "application/json"
        # ... not even where the decoded path names a route: /node/node-1%2Fstats answered for node-1's stats, and a
        # POST there stored stats for node-1 (hypercorn routes the decoded path: a reviewer's reproduction)
        for path in ("/node/node-1%2Fstats", "/node/node-1%2fstats", "/state%2Froot"):
            r = await http.get(path)
            assert r.status_code == 404 and r.json()["error"] == "not_found", path
        r = await http.post("/node/node-1%2Fstats", json={"cpu": 0.5})
        assert r.status_code == 404 and r.json()["error"] == "not_found"
        r = await http.get("/ready")
        assert r.status_code == 200


async def raw_exchange(base_url: str, request: bytes, timeout: float) -> tuple[bytes, bool]:
    """Send a raw request; read until the server closes (True) or the timeout passes (False)."""
    host, port = base_url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    await stream.send_all(request)
    data = b""
    with trio.move_on_after(timeout):
        while chunk := await stream.receive_some(65536):
            data += chunk
        await stream.aclose()
        return data, True
    await stream.aclose()
    return data, False


async def test_connection_close_is_honoured(base_url: str) -> None:
    # Regression test for the quart-trio/hypercorn bug worked around in api/asgi_fix.py.
    data, closed = await raw_exchange(base_url, b"GET /health HTTP/1.1\r\nHost: localhost\r\n"
                                      b"Connection: close\r\n\r\n", 3)
    assert data.startswith(b"HTTP/1.1 200") and closed
    body = b'{"id":"n","zone":"z","addr":"1.1.1.1:1"}'
    request = (b"POST /register HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\n"
               b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    data, closed = await raw_exchange(base_url, request, 3)
    assert data.startswith(b"HTTP/1.1 200") and closed


async def test_an_answer_before_the_body_was_read_says_the_connection_closes(base_url: str) -> None:
    """A 413 for a declared length is answered before the body arrives, and hypercorn then drops the connection:
    the answer says ``Connection: close``, so a keep-alive client does not send its next request on it (it did, and
    lost it: a reviewer's reproduction). An error after the body was read (a 422) keeps the connection."""
    host, port = base_url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    head = (b"POST /register HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n")
    with trio.fail_after(5):
        await stream.send_all(head % (2 * 1024 * 1024))  # the body never follows
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += await stream.receive_some(65536)
    assert answer.startswith(b"HTTP/1.1 413") and b"\r\nconnection: close\r\n" in answer.lower()
    await stream.aclose()
    chunk = b"x" * 65536  # a chunked body past the limit: quart takes it as complete once refused (a review)
    chunked = (b"POST /register HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n"
               + b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(20)) + b"0\r\n\r\n")
    data, _ = await raw_exchange(base_url, chunked, 3)
    assert data.startswith(b"HTTP/1.1 413") and b"\r\nconnection: close\r\n" in data.lower(), data[:300]
    async with httpx.AsyncClient(base_url=base_url, timeout=5) as http:
        r = await http.post("/register", json={"id": "n"})  # read whole, then refused
        assert r.status_code == 422 and "connection" not in r.headers
        r = await http.post("/register", content=b"x" * (1024 * 1024 + 10),
                            headers={"Content-Type": "application/json"})
        assert r.status_code == 413  # (sent whole by httpx: closed or not, the next request must be answered)
        for _ in range(3):  # on the same connection pool: none is lost to a connection the server dropped
            r = await http.post("/register", json={"id": "n", "zone": "z", "addr": "1.1.1.1:1", "capacity_gb": 1})
            assert r.status_code == 200


async def test_connections_their_clients_close_are_closed_at_once(base_url: str) -> None:
    # hypercorn-trio kept each one open (CLOSE-WAIT) until its keep-alive timeout, 75 s: a client opening and
    # closing connections leaked a file descriptor per connection (node.process.close_connections_at_eof)
    host, port = base_url.removeprefix("http://").split(":")

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    async def list_nodes(stream: trio.SocketStream) -> None:  # keep-alive: the server keeps the connection
        await stream.send_all(b"GET /nodes HTTP/1.1\r\nHost: localhost\r\n\r\n")
        data = b""
        while not data.endswith(b"\r\n\r\n[]"):  # the whole response: no node is registered
            chunk = await stream.receive_some(65536)
            assert chunk, f"the server closed a kept-alive connection: {data!r}"
            data += chunk
        assert data.startswith(b"HTTP/1.1 200"), data

    await trio.sleep(0.1)
    before = open_fds()
    for _ in range(20):
        stream = await trio.open_tcp_stream(host, int(port))
        await list_nodes(stream)
        await trio.sleep(0.02)  # the server has gone idle on it (closed at once, the leak did not show)
        await stream.aclose()
    with trio.fail_after(5):
        while open_fds() > before + 2:  # the server's side of all 20 is closed (not in 75 s)
            await trio.sleep(0.05)
    stream = await trio.open_tcp_stream(host, int(port))  # while one its client keeps serves request after request
    for _ in range(3):
        await list_nodes(stream)
        await trio.sleep(0.1)
    await stream.aclose()


async def test_an_http2_frame_for_a_stream_already_answered_ends_that_connection_not_the_server(
        nursery: trio.Nursery, make_config: Callable[..., Config]) -> None:
    # hypercorn 0.18's HTTP/2 code raised KeyError for a DATA frame on a stream it had answered (here a 401 sent
    # before the body was read), and that error stopped the whole server: one ~100-byte connection, no token
    # needed (a reviewer's reproduction; node.process.contain_connection_failures)
    import h2.config
    import h2.connection
    import h2.events

    coord = await start(nursery, make_config(COORDINATOR_API_TOKEN="secret"))
    stopped = trio.Event()

    async def serve_then_note(task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        await serve(create_app(coord), hypercorn_config("127.0.0.1", 0), shutdown_trigger=trio.sleep_forever,
                    task_status=task_status)
        stopped.set()

    base_url = (await nursery.start(serve_then_note))[0]
    host, port = base_url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "POST"), (":path", "/register"), (":scheme", "http"), (":authority", "x"),
                          ("content-type", "application/json")])
    await stream.send_all(conn.data_to_send())
    status, ended = None, False
    with trio.fail_after(5):
        while not ended:
            for event in conn.receive_data(await stream.receive_some(65536)):
                if isinstance(event, h2.events.ResponseReceived):
                    status = dict(event.headers)[b":status"]
                ended = ended or isinstance(event, h2.events.StreamEnded)
            await stream.send_all(conn.data_to_send())
    assert status == b"401"
    conn.send_data(1, b"{}", end_stream=True)  # the body a client was still uploading
    await stream.send_all(conn.data_to_send())
    with trio.move_on_after(1):
        while await stream.receive_some(65536):
            pass
    await stream.aclose()
    async with httpx.AsyncClient(base_url=base_url, timeout=5) as http:
        assert (await http.get("/health")).status_code == 200  # the server still serves
    assert not stopped.is_set()


async def test_a_small_body_refused_unread_is_read_and_the_request_pipelined_behind_it_answered(
        base_url: str) -> None:
    """A 415 (or 401, 422 ...) is given before the handler reads the body: the rest of a small body is read first,
    so the connection takes the next request. Saying ``Connection: close`` instead cost a reconnect, and a request
    pipelined behind it was lost (a regression review)."""
    body = b'{"id": "n"}'
    refused = (b"POST /register HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\n"
               b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    health = b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n"
    for _ in range(5):
        data, closed = await raw_exchange(base_url, refused + health, 1.5)
        assert data.startswith(b"HTTP/1.1 415") and data.count(b"HTTP/1.1 ") == 2, data[:400]
        assert b"HTTP/1.1 200" in data and b"connection: close" not in data.lower() and not closed


async def test_an_early_answer_waits_for_a_slow_or_large_body_only_a_moment(base_url: str) -> None:
    """Waiting up to 2 s for a declared body on any answer let an anonymous client hold each request that long (a
    regression review): an error waits DRAIN_S at most for a small body, anything else not at all; both close."""
    from api.asgi_fix import DRAIN_S

    slow = (b"POST /register HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\r\n"
            b"{")  # and nothing more for now
    declared = b"GET /health HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\n"  # and no body
    for request, status in ((slow, b"415"), (declared, b"200")):
        started = trio.current_time()
        data, _ = await raw_exchange(base_url, request, 3)
        assert data.startswith(b"HTTP/1.1 " + status) and b"\r\nconnection: close\r\n" in data.lower(), data[:200]
        assert trio.current_time() - started < 1.0
    assert DRAIN_S <= 0.2


async def test_over_http2_an_answer_before_the_body_names_no_connection_header(base_url: str) -> None:
    """HTTP/2 has no ``Connection`` header (RFC 9113 §8.2.2: a response with one is malformed): the 413 for a declared
    length is a well-formed answer there, without one (``finish_body_or_close`` adds none over HTTP/2, and
    hypercorn would drop it)."""
    import h2.config
    import h2.connection
    import h2.events

    host, port = base_url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "POST"), (":path", "/register"), (":scheme", "http"), (":authority", "localhost"),
                          ("content-type", "application/json"), ("content-length", str(2 * 1024 * 1024))])
    await stream.send_all(conn.data_to_send())
    headers: dict[bytes, bytes] = {}
    with trio.fail_after(5):
        while not headers:
            for event in conn.receive_data(await stream.receive_some(65536)):
                if isinstance(event, h2.events.ResponseReceived):
                    headers = dict(event.headers)
            await stream.send_all(conn.data_to_send())
    await stream.aclose()
    assert headers[b":status"] == b"413" and b"connection" not in headers


async def test_a_websocket_handshake_gets_a_json_404_not_a_500(base_url: str) -> None:
    for path in (b"/nope", b"/register", b"/health"):
        request = (b"GET " + path + b" HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        data, _ = await raw_exchange(base_url, request, 2)
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 404"), data
        assert b"application/json" in head and json.loads(body)["error"] == "not_found"


async def test_a_host_header_that_is_no_host_name_gets_a_json_400_not_a_500(base_url: str,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    """Werkzeug raised BadHost while Quart built the request context, before any handler of ours: an empty 500 and
    a traceback logged, on every route (a reviewer's reproduction)."""
    for host in (b"..", b"a..b", b".x", b"x" * 64, b"x" * 64 + b":8080"):
        request = b"GET /health HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n"
        data, _ = await raw_exchange(base_url, request, 2)
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400"), data
        assert b"application/json" in head and json.loads(body) == {"error": "bad_request",
                                                                     "message": "invalid Host header"}
    for host in (b"localhost:1", b"[::1]:80", b"127.0.0.2", b"a.localhost", b"a.localhost.", b"127.0.0.1.:8080"):
        data, _ = await raw_exchange(base_url, b"GET /health HTTP/1.1\r\nHost: " + host + b"\r\n"
                                     b"Connection: close\r\n\r\n", 2)
        assert data.startswith(b"HTTP/1.1 200"), data
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


async def test_without_a_token_a_loopback_server_answers_loopback_names_only(base_url: str) -> None:
    """DNS rebinding: a page at http://evil.example:8080, its name re-pointed at 127.0.0.1, sent Origin and Host
    both evil.example:8080, passed the cross-origin check and wrote to a token-less coordinator (a reviewer's
    reproduction); it could read every route too. Its browser still names evil.example in Host."""
    port = base_url.rsplit(":", 1)[1]
    register = json.dumps({"id": "n-rebind", "zone": "z", "addr": "h:1", "capacity_gb": 1}).encode()
    for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.nip.io:{port}"):
        for request in (f"GET /nodes HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode(),
                        f"POST /register HTTP/1.1\r\nHost: {host}\r\nOrigin: http://{host}\r\nConnection: close"
                        f"\r\nContent-Type: application/json\r\nContent-Length: {len(register)}\r\n\r\n".encode()
                        + register):
            data, _ = await raw_exchange(base_url, request, 2)
            head, _, body = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 403"), data
            assert json.loads(body)["error"] == "forbidden" and "loopback" in json.loads(body)["message"]
    async with httpx.AsyncClient(base_url=base_url, timeout=5) as http:  # the write above never happened
        assert "n-rebind" not in {n["id"] for n in (await http.get("/nodes")).json()}
        assert (await http.get("/nodes", headers={"Host": f"localhost:{port}"})).status_code == 200
        # a 403 any route may answer: documented on every operation (reads said 200 only: a reviewer's find)
        doc = (await http.get("/openapi.json")).json()
        undocumented = [(path, method) for path, ops in doc["paths"].items() for method, op in ops.items()
                        if "403" not in op["responses"]]
        assert undocumented == []
        assert "loopback" in doc["paths"]["/nodes"]["get"]["responses"]["403"]["description"]
    data, _ = await raw_exchange(base_url, b"GET /health HTTP/1.0\r\n\r\n", 2)  # no Host (a health checker)
    assert data.startswith(b"HTTP/1.0 200") or data.startswith(b"HTTP/1.1 200"), data


async def test_with_a_token_any_host_name_is_answered(nursery: trio.Nursery,
                                                      make_config: Callable[..., Config]) -> None:
    coord = await start(nursery, make_config(COORDINATOR_API_TOKEN="s3cret"))
    stop = trio.Event()
    binds = await nursery.start(partial(serve, create_app(coord), hypercorn_config("127.0.0.1", 0),
                                        shutdown_trigger=stop.wait))
    async with httpx.AsyncClient(base_url=binds[0], timeout=5) as http:
        assert (await http.get("/nodes", headers={"Host": "coordinator.example"})).status_code == 200
    stop.set()
