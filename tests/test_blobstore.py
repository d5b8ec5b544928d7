"""The blob-store service (deploy/blobstore.py) over real sockets with real SQLite, and BlobStoreDA against it.
The server helpers here are shared with tests/test_quorum.py."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import nacl.signing
import pytest
import trio
from quart_trio import QuartTrio

from api import blobstore as blobstore_mod
from api.blobstore import LOG_PAGE_BYTES, MAX_BODY_LIMIT, BlobStore, Record, register_blobstore_routes
from deploy.blobstore import serve_blobstore, serve_store
from node.consumer import Consumer
from node.da.base import BlobNotFound, BlobRef, DAError, DATimeout, DAUnavailable
from node.da.blobstore_client import (
    DEFAULT_NAMESPACE,
    MAX_ANSWER_BYTES,
    BlobRejected,
    BlobStoreDA,
    VerificationFailed,
    signed_message,
    verify_signature,
)
from node.process import GRACEFUL_TIMEOUT_S
from tests.conftest import wait_for

NS = DEFAULT_NAMESPACE
OTHER_NS = bytes(19) + b"other-ns00"
OCTET = {"Content-Type": "application/octet-stream"}


@dataclass
class Server:
    url: str
    store: BlobStore
    stop: trio.Event
    stopped: trio.Event

    async def shutdown(self) -> None:
        self.stop.set()
        with trio.fail_after(10):
            await self.stopped.wait()


async def start_server(nursery: trio.Nursery, data_dir: Path, port: int = 0, **kwargs: int) -> Server:
    store = BlobStore(data_dir, **kwargs)
    stop, stopped = trio.Event(), trio.Event()

    async def run(task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await serve_store(store, "127.0.0.1", port, shutdown_trigger=stop.wait, task_status=task_status)
        finally:
            store.close()
            stopped.set()

    url = await nursery.start(run)
    return Server(url, store, stop, stopped)


async def dead_url() -> str:
    """A URL on which nothing listens (connection refused)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    for listener in listeners:
        await listener.aclose()
    return f"http://127.0.0.1:{port}"


@pytest.fixture
async def hung_url() -> AsyncIterator[str]:
    """A URL whose socket accepts TCP connections (kernel backlog) but never answers."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    yield f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
    for listener in listeners:
        await listener.aclose()


@pytest.fixture
async def server(nursery: trio.Nursery, tmp_path: Path) -> Server:
    return await start_server(nursery, tmp_path / "store")


async def post_raw(http: httpx.AsyncClient, data: bytes, namespace: bytes = NS) -> httpx.Response:
    return await http.post("/quorum/v1/blobs", params={"namespace": namespace.hex()}, content=data, headers=OCTET)


# ---- the service ---------------------------------------------------------------------------------------


async def test_store_read_log_and_signature(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as http:
        health = (await http.get("/quorum/v1/health")).json()
        assert health == {"ok": True, "head": 0, "public_key": server.store.public_key.hex(),
                          "log_id": server.store.log_id.hex()}
        r = await post_raw(http, b"hello")
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        body = r.json()
        digest = hashlib.sha256(b"hello").digest()
        assert body["position"] == 1 and body["hash"] == digest.hex() and body["duplicate"] is False
        assert body["validator"] == health["public_key"]
        key = nacl.signing.VerifyKey(bytes.fromhex(body["validator"]))
        assert key.verify(b"dsdn-quorum-v1" + NS + digest, bytes.fromhex(body["signature"]))
        assert signed_message(NS, digest) == b"dsdn-quorum-v1" + NS + digest and len(signed_message(NS, digest)) == 75
        assert not verify_signature(key.encode(), OTHER_NS, digest, bytes.fromhex(body["signature"]))

        got = (await http.get(f"/quorum/v1/blobs/{digest.hex()}")).json()
        assert base64.b64decode(got["data"]) == b"hello"
        assert (got["position"], got["namespace"], got["signature"]) == (1, NS.hex(), body["signature"])
        await post_raw(http, b"world")
        page = (await http.get("/quorum/v1/log", params={"after": 0})).json()
        assert [base64.b64decode(i["data"]) for i in page["items"]] == [b"hello", b"world"]
        assert (page["head"], page["cursor"], page["at_head"]) == (2, 2, True)
        page = (await http.get("/quorum/v1/log", params={"after": 1})).json()
        assert [i["position"] for i in page["items"]] == [2]


async def test_idempotent_by_namespace_and_hash(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as http:
        first = (await post_raw(http, b"same")).json()
        again = (await post_raw(http, b"same")).json()
        assert (again["position"], again["duplicate"], again["signature"]) == (first["position"], True,
                                                                               first["signature"])
        other = (await post_raw(http, b"same", OTHER_NS)).json()
        assert other["position"] == 2 and other["duplicate"] is False and other["signature"] != first["signature"]
        assert (await http.get("/quorum/v1/health")).json()["head"] == 2


async def test_log_pages_and_namespace_filter(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as http:
        for i in range(5):
            await post_raw(http, f"a{i}".encode())
            await post_raw(http, f"b{i}".encode(), OTHER_NS)
        seen, cursor = [], 0
        while True:
            page = (await http.get("/quorum/v1/log", params={"after": cursor, "limit": 2,
                                                             "namespace": NS.hex()})).json()
            assert page["head"] == 10 and all(i["namespace"] == NS.hex() for i in page["items"])
            seen += [base64.b64decode(i["data"]) for i in page["items"]]
            assert page["cursor"] > cursor or page["at_head"]
            cursor = page["cursor"]
            if page["at_head"]:
                break
        assert seen == [f"a{i}".encode() for i in range(5)]
        assert cursor == 10  # the follower moved past the other namespace's last blob


async def test_size_limit(nursery: trio.Nursery, tmp_path: Path) -> None:
    server = await start_server(nursery, tmp_path / "small", max_body_bytes=1024)
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as http:
        assert (await post_raw(http, b"x" * 1024)).status_code == 200
        r = await post_raw(http, b"y" * 1025)
        assert r.status_code == 413 and r.json()["error"] == "payload_too_large" and "1024" in r.json()["message"]

        async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: the limit applies while reading
            for _ in range(4):
                yield b"z" * 512

        r = await http.post("/quorum/v1/blobs", params={"namespace": NS.hex()}, content=chunked(), headers=OCTET)
        assert r.status_code == 413 and r.json()["error"] == "payload_too_large"
        assert (await http.get("/quorum/v1/health")).json()["head"] == 1


async def test_bad_input_gets_json_errors(server: Server) -> None:
    ns = NS.hex()
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as http:
        cases = [
            (http.post("/quorum/v1/blobs", params={"namespace": ns}, content=b"x",
                       headers={"Content-Type": "application/json"}), 415, "unsupported_media_type"),
            (http.post("/quorum/v1/blobs", content=b"x", headers=OCTET), 422, "invalid_request"),
            (http.post("/quorum/v1/blobs", params={"namespace": "zz" * 29}, content=b"x", headers=OCTET), 422,
             "invalid_request"),
            (http.post("/quorum/v1/blobs", params={"namespace": "00" * 28}, content=b"x", headers=OCTET), 422,
             "invalid_request"),
            (http.post("/quorum/v1/blobs", params={"namespace": ns}, content=b"", headers=OCTET), 422,
             "invalid_request"),
            (http.get("/quorum/v1/blobs/nothex"), 422, "invalid_request"),
            (http.get(f"/quorum/v1/blobs/{'ab' * 32}"), 404, "blob_not_found"),
            (http.get(f"/quorum/v1/blobs/{'ab' * 32}", params={"namespace": "x"}), 422, "invalid_request"),
            (http.get("/quorum/v1/log", params={"after": "-1"}), 422, "invalid_request"),
            (http.get("/quorum/v1/log", params={"after": "x"}), 422, "invalid_request"),
            (http.get("/quorum/v1/log", params={"limit": "0"}), 422, "invalid_request"),
            (http.get("/quorum/v1/log", params={"limit": "1001"}), 422, "invalid_request"),
            (http.get("/quorum/v1/log", params={"after": "9" * 40}), 422, "invalid_request"),
            (http.get("/quorum/v1/nowhere"), 404, "not_found"),
            (http.delete("/quorum/v1/blobs"), 405, "method_not_allowed"),
            (http.get("/quorum/v1/log?limit=1&limit=zz"), 422, "invalid_request"),  # only the first was read
            (http.get(f"/quorum/v1/log?namespace={ns}&namespace=zz"), 422, "invalid_request"),
            (http.post(f"/quorum/v1/blobs?namespace={ns}&namespace={ns}", content=b"x", headers=OCTET), 422,
             "invalid_request"),
        ]
        for request, status, error in cases:
            r = await request
            assert (r.status_code, r.headers["content-type"], r.json()["error"]) == (status, "application/json",
                                                                                     error), r.text
            assert r.json()["message"]
        assert (await http.get("/quorum/v1/health")).json()["head"] == 0
        r = await http.delete("/quorum/v1/log")  # RFC 9110: a 405 lists the methods the resource supports
        assert r.status_code == 405 and set(r.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}
        r = await http.options("/quorum/v1/log")  # Quart's own answer was an empty text/html 200
        assert (r.status_code, r.headers["content-type"], r.content) == (204, "text/plain", b"")
        assert set(r.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}


async def test_restart_keeps_log_and_key(tmp_path: Path) -> None:
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(partial(serve_blobstore, "127.0.0.1", 0, tmp_path / "s", shutdown_trigger=stop.wait))
        async with httpx.AsyncClient(base_url=url, timeout=5) as http:
            first = (await post_raw(http, b"durable")).json()
        stop.set()
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(partial(serve_blobstore, "127.0.0.1", 0, tmp_path / "s", shutdown_trigger=stop.wait))
        async with httpx.AsyncClient(base_url=url, timeout=5) as http:
            assert (await http.get("/quorum/v1/health")).json()["public_key"] == first["validator"]
            again = (await post_raw(http, b"durable")).json()
            assert (again["position"], again["duplicate"], again["signature"]) == (1, True, first["signature"])
        stop.set()


async def test_routes_can_be_hosted_by_another_app(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "hosted")
    app = QuartTrio("host")
    app.config["MAX_CONTENT_LENGTH"] = store.max_body_bytes

    @app.get("/own")
    async def own() -> dict[str, bool]:
        return {"own": True}

    register_blobstore_routes(app, store)
    client = app.test_client()
    r = await client.post(f"/quorum/v1/blobs?namespace={NS.hex()}", data=b"hosted", headers=OCTET)
    assert r.status_code == 200 and (await r.get_json())["position"] == 1
    r = await client.get(f"/quorum/v1/blobs/{'cd' * 32}")
    assert r.status_code == 404 and (await r.get_json())["error"] == "blob_not_found"
    assert (await (await client.get("/own")).get_json()) == {"own": True}
    store.close()


async def blobstore_process(data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A `dsdn blobstore` process on a free port, once it listens; its URL (its stderr stays a pipe: read it, close
    it)."""
    proc = subprocess.Popen([sys.executable, "-m", "deploy.blobstore", "--port", "0", "--data-dir", str(data_dir)],
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=Path(__file__).parent.parent)
    assert proc.stderr is not None
    line = await trio.to_thread.run_sync(proc.stderr.readline)
    while b"listening on" not in line:
        if not line:
            proc.wait(5)
            proc.stderr.close()
            raise AssertionError("blob store exited before listening")
        line = await trio.to_thread.run_sync(proc.stderr.readline)
    return proc, line.split(b"listening on ")[1].split()[0].decode()


async def test_process_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    proc, url = await blobstore_process(tmp_path / "p")
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            r = await http.get(f"{url}/quorum/v1/health")
            assert r.status_code == 200 and r.json()["ok"] is True
        proc.send_signal(signal.SIGTERM)
        assert await trio.to_thread.run_sync(partial(proc.wait, 10)) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        if proc.stderr is not None:
            proc.stderr.close()


@pytest.mark.parametrize("second_signal", [False, True])
async def test_readers_that_never_read_their_answer_do_not_keep_the_process_from_stopping(
        tmp_path: Path, second_signal: bool) -> None:
    """Hypercorn shields every send to a client: three readers of a page of 8 MiB that never read it kept the blob
    store from stopping, a second SIGTERM included (only kill -9 did). Now a stop gives them the graceful timeout,
    a second signal nothing."""
    proc, url = await blobstore_process(tmp_path / "p")
    streams: list[trio.SocketStream] = []
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            for _ in range(4):
                r = await http.post(f"{url}/quorum/v1/blobs?namespace={NS.hex()}",
                                    content=os.urandom(2 * 1024 * 1024 - 16), headers=OCTET)
                assert r.status_code == 200
        host, port = url.removeprefix("http://").rsplit(":", 1)
        for _ in range(3):
            stream = await trio.open_tcp_stream(host, int(port))
            await stream.send_all(b"GET /quorum/v1/log?limit=1000 HTTP/1.1\r\nHost: localhost\r\n\r\n")
            streams.append(stream)  # and never read
        await trio.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        started = trio.current_time()
        if second_signal:
            await trio.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            assert await trio.to_thread.run_sync(partial(proc.wait, 10)) == 128 + signal.SIGTERM
            assert trio.current_time() - started < 3.0
        else:
            assert await trio.to_thread.run_sync(partial(proc.wait, 15)) == 0
            assert trio.current_time() - started < GRACEFUL_TIMEOUT_S + 3.0
        err = await trio.to_thread.run_sync(proc.stderr.read)
        assert b"did not take the answer before the stop" in err and b"Traceback" not in err
    finally:
        for stream in streams:
            await stream.aclose()
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        if proc.stderr is not None:
            proc.stderr.close()


def test_bad_arguments_exit_2() -> None:
    r = subprocess.run([sys.executable, "-m", "deploy.blobstore", "--port", "70000"], capture_output=True,
                       cwd=Path(__file__).parent.parent, timeout=30)
    assert r.returncode == 2 and b"--port" in r.stderr
    # a blob larger than this would push a log page past what a follower reads of one answer: every follower's read
    # of that page would fail for ever
    r = subprocess.run([sys.executable, "-m", "deploy.blobstore", "--max-body-bytes", str(MAX_BODY_LIMIT + 1)],
                       capture_output=True, cwd=Path(__file__).parent.parent, timeout=30)
    assert r.returncode == 2 and b"--max-body-bytes from 1 to" in r.stderr
    largest_page = (LOG_PAGE_BYTES + MAX_BODY_LIMIT) * 4 // 3 + (1 << 20)  # base64 in JSON, and room for the rest
    assert largest_page <= MAX_ANSWER_BYTES


# ---- BlobStoreDA -------------------------------------------------------------------------------------------


async def test_blobstore_da_roundtrip(server: Server) -> None:
    async with BlobStoreDA(server.url, public_key=server.store.public_key, timeout_s=5) as da:
        ref = await da.post(b"event batch")
        assert ref == BlobRef("emergency", 1, hashlib.sha256(b"event batch").digest())
        assert await da.post(b"event batch") == ref
        assert await da.get(ref) == b"event batch"
        ref2 = await da.post(b"second")
        page = await da.read_after(0, 10)
        assert [(r, d) for r, d in page.items] == [(ref, b"event batch"), (ref2, b"second")]
        assert (page.cursor, page.at_head) == (2, True)
        page = await da.read_after(0, 1)
        assert (len(page.items), page.cursor, page.at_head) == (1, 1, False)
        assert await da.head() == 2
        with pytest.raises(BlobNotFound):
            await da.get(BlobRef("emergency", 9, hashlib.sha256(b"never").digest()))


async def test_blobstore_da_ignores_proxy_variables(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP(S)_PROXY in the environment rerouted the emergency store's and every validator's traffic through a
    proxy (the Celestia client already ignored them; a reviewer's finding): a dead proxy made the store unreachable."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    async with BlobStoreDA(server.url, public_key=server.store.public_key, timeout_s=5) as da:
        ref = await da.post(b"through no proxy")
        assert await da.get(ref) == b"through no proxy"


async def test_blobstore_da_rejects_tampered_signature(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    good_sign = server.store.sign

    def tampered(namespace: bytes, blob_hash: bytes) -> bytes:
        sig = bytearray(good_sign(namespace, blob_hash))
        sig[0] ^= 1
        return bytes(sig)

    async with BlobStoreDA(server.url, public_key=server.store.public_key, timeout_s=5) as da:
        monkeypatch.setattr(server.store, "sign", tampered)
        with pytest.raises(VerificationFailed, match="signature does not verify"):
            await da.post(b"tampered")
        monkeypatch.setattr(server.store, "sign", good_sign)
        assert (await da.post(b"tampered")).height == 1  # the store had it; only the answer was bad


async def test_blobstore_da_rejects_unexpected_key(server: Server) -> None:
    other = bytes(nacl.signing.SigningKey.generate().verify_key)
    async with BlobStoreDA(server.url, public_key=other, timeout_s=5) as da:
        with pytest.raises(VerificationFailed, match="expected"):
            await da.post(b"x")


async def test_blobstore_da_pins_key_on_first_use(server: Server) -> None:
    async with BlobStoreDA(server.url, timeout_s=5) as da:
        assert da.public_key is None
        await da.post(b"first")
        assert da.public_key == server.store.public_key
        server.store.key = nacl.signing.SigningKey.generate()  # the store's key changes under us
        with pytest.raises(VerificationFailed):
            await da.post(b"second")
        with pytest.raises(VerificationFailed):
            await da.head()


async def test_a_damaged_blob_is_never_served_and_a_store_serving_one_is_caught(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """A row damaged on disk went out with a valid signature over its hash (our client re-hashes; another would
    not: a reviewer's reproduction): the store now refuses it (503, naming the damage); and a store that serves one
    anyway (a liar) is still caught by the client."""
    async with BlobStoreDA(server.url, timeout_s=5) as da, httpx.AsyncClient(base_url=server.url) as http:
        ref = await da.post(b"original")
        await trio.to_thread.run_sync(
            lambda: server.store._db.execute("UPDATE blobs SET data = ? WHERE position = 1", (b"forged",)))
        for path in (f"/quorum/v1/blobs/{ref.commitment.hex()}", "/quorum/v1/log?after=0"):
            r = await http.get(path)
            assert r.status_code == 503 and "does not match its hash" in r.json()["message"]
        with pytest.raises(DAUnavailable):
            await da.get(ref)
        monkeypatch.setattr(blobstore_mod, "_checked", lambda row: Record(int(row[0]), *map(bytes, row[1:])))
        with pytest.raises(VerificationFailed):
            await da.get(ref)
        with pytest.raises(VerificationFailed):
            await da.read_after(0, 10)


async def test_a_post_of_a_blob_whose_copy_is_damaged_repairs_it_before_signing(server: Server) -> None:
    """A re-post found the row and signed "stored" again, the copy damaged: a validator counted toward the quorum
    for a blob it answered 503 for, its log stuck at 503 for good (a reviewer's reproduction)."""
    async with BlobStoreDA(server.url, timeout_s=5) as da, httpx.AsyncClient(base_url=server.url) as http:
        ref = await da.post(b"original")
        await trio.to_thread.run_sync(
            lambda: server.store._db.execute("UPDATE blobs SET data = ? WHERE position = 1", (b"forged",)))
        assert (await http.get("/quorum/v1/log?after=0")).status_code == 503
        again = await da.post(b"original")  # (the client checks the signed answer)
        assert again.height == ref.height == 1
        assert await da.get(ref) == b"original"
        r = await http.get("/quorum/v1/log?after=0")
        assert r.status_code == 200 and len(r.json()["items"]) == 1


async def test_reads_wait_while_answers_are_stuck_with_readers_that_do_not_read(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each reader of a page that never reads it held the page (~12 MiB) for as long as it kept the connection:
    40 of them grew the store by 480 MB (a reviewer's reproduction). Past CLIENT_SENDING_LIMIT_BYTES being sent to
    one address, that address's reads get 503 with Retry-After until those answers drain (a first version counted
    only the total: six such sockets shut every reader out); past SENDING_LIMIT_BYTES in all, everyone's."""
    monkeypatch.setattr(blobstore_mod, "CLIENT_SENDING_LIMIT_BYTES", 8 * 1024 * 1024)
    monkeypatch.setattr(blobstore_mod, "SENDING_LIMIT_BYTES", 100 * 1024 * 1024)
    liar = httpx.AsyncClient(base_url=server.url, timeout=10,
                             transport=httpx.AsyncHTTPTransport(local_address="127.0.0.2"))
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http, liar:
        for _ in range(2):
            r = await http.post(f"/quorum/v1/blobs?namespace={NS.hex()}", content=os.urandom(2 * 1024 * 1024 - 16),
                                headers=OCTET)
            assert r.status_code == 200
            blob_hash = r.json()["hash"]
        host, port = server.url.removeprefix("http://").rsplit(":", 1)
        stuck = []
        try:
            for _ in range(6):  # from 127.0.0.2
                stream = await trio.open_tcp_stream(host, int(port), local_address="127.0.0.2")
                await stream.send_all(b"GET /quorum/v1/log HTTP/1.1\r\nHost: localhost\r\n\r\n")
                stuck.append(stream)  # and never read
            await wait_for(lambda: server.store.sending > 8 * 1024 * 1024, timeout=10, what="the answers to be held")
            for path in ("/quorum/v1/log", f"/quorum/v1/blobs/{blob_hash}"):
                r = await liar.get(path)
                assert r.status_code == 503 and r.headers["Retry-After"] == "1" and r.json()["error"] == "busy"
                assert (await http.get(path)).status_code == 200  # another address reads on
            assert (await liar.get(f"/quorum/v1/blobs/{'ab' * 32}")).status_code == 404  # (nothing to hold)
            monkeypatch.setattr(blobstore_mod, "SENDING_LIMIT_BYTES", 8 * 1024 * 1024)
            r = await http.get("/quorum/v1/log")
            assert r.status_code == 503 and r.json()["error"] == "busy"
        finally:  # (left open, the server could not be cancelled: hypercorn shields its sends)
            for stream in stuck:
                await stream.aclose()
        await wait_for(lambda: server.store.sending == 0 and not server.store.sending_to, timeout=10,
                       what="the stuck answers to drain")
        r = await liar.get("/quorum/v1/log")
        assert r.status_code == 200 and len(r.json()["items"]) == 2
        r = await http.get("/quorum/v1/log?after=2")  # an empty page: nothing held, no entry kept for its client
        assert r.status_code == 200 and r.json()["items"] == []
        await wait_for(lambda: server.store.sending == 0 and not server.store.sending_to, timeout=10,
                       what="nothing held")


async def test_blobstore_da_errors(nursery: trio.Nursery, tmp_path: Path, hung_url: str) -> None:
    async with BlobStoreDA(hung_url, timeout_s=0.3) as da:
        for call in (da.post(b"x"), da.get(BlobRef("emergency", 1, bytes(32))), da.read_after(0, 10), da.head()):
            start = trio.current_time()
            with pytest.raises(DATimeout, match=r"no answer within 0\.3s"):
                await call
            assert trio.current_time() - start < 1.5
    async with BlobStoreDA(await dead_url(), timeout_s=5) as da:
        with pytest.raises(DAUnavailable) as caught:
            await da.post(b"x")
        assert not isinstance(caught.value, DATimeout)
    small = await start_server(nursery, tmp_path / "small", max_body_bytes=10)
    async with BlobStoreDA(small.url, timeout_s=5) as da:
        with pytest.raises(BlobRejected, match="413"):
            await da.post(b"x" * 11)
    async with BlobStoreDA(small.url + "/elsewhere", timeout_s=5) as da:  # not a blob store
        with pytest.raises(DAUnavailable):
            await da.get(BlobRef("emergency", 1, bytes(32)))
    with pytest.raises(ValueError):
        BlobStoreDA("ftp://x")


async def test_a_store_with_a_writer_list_takes_only_signed_writes_from_listed_keys(
        nursery: trio.Nursery, tmp_path: Path) -> None:
    import nacl.signing

    from node.da.base import DAUnavailable

    writer, stranger = nacl.signing.SigningKey.generate(), nacl.signing.SigningKey.generate()
    server = await start_server(nursery, tmp_path / "s", writers=frozenset({bytes(writer.verify_key)}))  # type: ignore[arg-type]
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as http:
        r = await post_raw(http, b"unsigned")
        assert r.status_code == 401 and r.json()["error"] == "unauthorized"
        data = b"blob"
        message = b"dsdn-blobstore-write-v1" + NS + hashlib.sha256(b"another blob").digest()  # signs other data
        r = await http.post("/quorum/v1/blobs", params={"namespace": NS.hex()}, content=data,
                            headers={"Content-Type": "application/octet-stream",
                                     "X-Dsdn-Writer": bytes(writer.verify_key).hex(),
                                     "X-Dsdn-Writer-Signature": writer.sign(message).signature.hex()})
        assert r.status_code == 401
    async with BlobStoreDA(server.url, namespace=NS, timeout_s=5, signer=stranger) as da:
        with pytest.raises(DAUnavailable, match="403"):
            await da.post(b"from a stranger")
    async with BlobStoreDA(server.url, namespace=NS, timeout_s=5, signer=writer) as da:
        ref = await da.post(b"from the writer")
        assert await da.get(ref) == b"from the writer"
    assert await server.store.head() == 1  # nothing else got in


async def test_a_write_without_a_listed_writer_is_refused_before_its_body_is_read(
        nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The body was read first: a client with no writer headers held up to the body limit per connection for the
    body timeout (40 stalled uploads: 490 MiB, a reviewer's reproduction), and a listed key (public) with a junk
    signature did the same (a regression review). Answered 401/403 at once now, or held within a bound."""
    import nacl.signing

    writer, stranger = nacl.signing.SigningKey.generate(), nacl.signing.SigningKey.generate()
    server = await start_server(nursery, tmp_path / "s", writers=frozenset({bytes(writer.verify_key)}))  # type: ignore[arg-type]
    port = int(server.url.rsplit(":", 1)[1])

    async def stalled_upload(headers: bytes, length: int = 1_000_000) -> trio.SocketStream:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"POST /quorum/v1/blobs?namespace=" + NS.hex().encode() + b" HTTP/1.1\r\n"
                              b"Host: x\r\nContent-Type: application/octet-stream\r\nContent-Length: "
                              + str(length).encode() + b"\r\n" + headers + b"\r\n" + b"x" * 1000)  # (no more comes)
        return stream

    async def answer_of(stream: trio.SocketStream) -> bytes:
        answer = b""
        with trio.fail_after(5):  # (the body timeout is 30 s)
            while b"\r\n\r\n" not in answer:
                answer += await stream.receive_some(65536)
        await stream.aclose()
        return answer

    def named(key: nacl.signing.SigningKey, declared: bytes | None = None) -> bytes:
        return (b"X-Dsdn-Writer: " + bytes(key.verify_key).hex().encode() + b"\r\nX-Dsdn-Writer-Signature: "
                + b"00" * 64 + b"\r\n" + (b"X-Dsdn-Blob-Hash: " + declared.hex().encode() + b"\r\n"
                                           if declared is not None else b""))

    # no writer; an unlisted one; a listed one (its key is public) with a junk signature over the hash it declares
    for headers, status in ((b"", b"401"), (named(stranger), b"403"), (named(writer, b"h" * 32), b"401")):
        answer = await answer_of(await stalled_upload(headers))
        assert answer.startswith(b"HTTP/1.1 " + status), (headers, answer[:80])
    # a listed writer's good signature over the hash it declares, with another body: refused, nothing stored
    declared = hashlib.sha256(b"what was signed").digest()
    signature = writer.sign(b"dsdn-blobstore-write-v1" + NS + declared).signature
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as http:
        r = await http.post("/quorum/v1/blobs", params={"namespace": NS.hex()}, content=b"another body",
                            headers={"Content-Type": "application/octet-stream",
                                     "X-Dsdn-Writer": bytes(writer.verify_key).hex(),
                                     "X-Dsdn-Writer-Signature": signature.hex(), "X-Dsdn-Blob-Hash": declared.hex()})
    assert r.status_code == 422 and "X-Dsdn-Blob-Hash" in r.json()["message"] and await server.store.head() == 0
    # a listed writer declaring no hash (its signature can be checked only once the body is read): such reads hold
    # UNPROVEN_LIMIT_BYTES at most, the next is refused at once
    size = 2_000_000
    held = [await stalled_upload(named(writer), size) for _ in range(blobstore_mod.UNPROVEN_LIMIT_BYTES // size)]
    await wait_for(lambda: server.store.unproven == len(held) * size, what="the held uploads to be counted")
    answer = await answer_of(await stalled_upload(named(writer), size))
    assert answer.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in answer.replace(b"retry-after", b"Retry-After")
    for stream in held:
        await stream.aclose()
    await wait_for(lambda: server.store.unproven == 0, what="the closed uploads to be released")
    # one signed header set (every validator sees it with each write) replayed with stalled bodies: the budget
    # above was bypassed (40 uploads of 2 MiB held 82 MiB: a reviewer's reproduction). Such a body must come at
    # MIN_BODY_RATE (a stalled one is a 408 within its grace and size's time), and the writer's own post of that
    # blob meanwhile is not held up; a blob already stored is answered without reading any
    good = (b"X-Dsdn-Writer: " + bytes(writer.verify_key).hex().encode() + b"\r\nX-Dsdn-Writer-Signature: "
            + signature.hex().encode() + b"\r\nX-Dsdn-Blob-Hash: " + declared.hex().encode() + b"\r\n")
    small = 100_000  # (its time: BODY_GRACE_S + ~1.6 s)
    replays = [await stalled_upload(good, small) for _ in range(3)]
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as http:
        signed = {"Content-Type": "application/octet-stream", "X-Dsdn-Writer": bytes(writer.verify_key).hex(),
                  "X-Dsdn-Writer-Signature": signature.hex(), "X-Dsdn-Blob-Hash": declared.hex()}
        r = await http.post("/quorum/v1/blobs", params={"namespace": NS.hex()}, content=b"what was signed",
                            headers=signed)
        assert r.status_code == 200 and r.json()["position"] == 1 and r.json()["duplicate"] is False
    started = trio.current_time()
    for stream in replays:
        answer = b""
        with trio.fail_after(10):
            while b"\r\n\r\n" not in answer:
                answer += await stream.receive_some(65536)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        await stream.aclose()
    assert trio.current_time() - started < blobstore_mod.BODY_GRACE_S + small / blobstore_mod.MIN_BODY_RATE + 2
    answer = await answer_of(await stalled_upload(good, size))  # stored: answered at once, the body unread
    assert answer.startswith(b"HTTP/1.1 200") and await server.store.head() == 1
    # an early answer to a client that then went away: hypercorn closing the connection (its send_eof) raced the
    # answer's send, logged as an ERROR traceback ("Error in ASGI Framework") for each such connection
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_store_restored_from_a_backup_is_read_again_from_the_start(nursery: trio.Nursery,
                                                                             tmp_path: Path) -> None:
    """A store whose data folder was restored from a backup keeps its key and its log id, and gives the positions
    past the backup's head to new blobs: a follower whose cursor was past the backup's read on from it once the new
    head passed it, and skipped the new blobs below (a reviewer's reproduction) — a running follower, and one
    resumed from a coordinator's snapshot. The page names the blob at its cursor; a follower checks it."""
    first = await start_server(nursery, tmp_path / "store")
    port = int(first.url.rsplit(":", 1)[1])
    writer = BlobStoreDA(first.url)
    for i in range(3):
        await writer.post(b"a%d" % i)
    await first.shutdown()
    shutil.copytree(tmp_path / "store", tmp_path / "backup")
    second = await start_server(nursery, tmp_path / "store", port=port)
    for i in range(3, 6):
        await writer.post(b"a%d" % i)
    running = BlobStoreDA(first.url)
    page = await running.read_after(0, 100)
    assert page.cursor == 6 and page.log is not None and page.log["at"] == hashlib.sha256(b"a5").hexdigest()
    assert [data for _, data in (await running.read_after(6, 100)).items] == []  # the same log: read on
    await second.shutdown()
    shutil.rmtree(tmp_path / "store")
    shutil.copytree(tmp_path / "backup", tmp_path / "store")
    third = await start_server(nursery, tmp_path / "store", port=port)
    assert third.store.log_id == second.store.log_id
    for i in range(4):
        await writer.post(b"b%d" % i)  # at positions 4 .. 7
    everything = [b"a0", b"a1", b"a2", b"b0", b"b1", b"b2", b"b3"]
    resumed = BlobStoreDA(first.url)  # a restarted coordinator's, from the identity its snapshot kept
    resumed.resume_log(page.log, 6)
    for follower in (running, resumed):
        got = await follower.read_after(6, 100)
        assert [data for _, data in got.items] == everything and got.cursor == 7
    for client in (writer, running, resumed):
        await client.aclose()
    await third.shutdown()


async def test_a_long_poll_past_the_head_is_answered_at_once(server: Server) -> None:
    """A follower's cursor past the head (the store's log was replaced): its long poll waited out its whole wait
    before the follower could see that, and read the new log from the start (a reviewer's reproduction)."""
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        await post_raw(http, b"one")
        started = time.monotonic()
        r = await http.get("/quorum/v1/log", params={"after": 5, "namespace": NS.hex(), "wait_ms": 5000})
        assert r.status_code == 200 and r.json()["head"] == 1 and time.monotonic() - started < 2


@pytest.mark.parametrize("answer", [b"[" * 200_000, b'{"pad": "' + b"x" * (40 << 20) + b'"}'])
async def test_a_store_answering_nested_or_huge_bodies_is_unavailable_not_a_crash(answer: bytes) -> None:
    """A faulty store or proxy: a body nested past the JSON parser (RecursionError escaped every DA caller and took
    the coordinator down), or one larger than any page (read whole into memory): both are DAUnavailable."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=answer, headers={"Content-Type": "application/json"})

    async with BlobStoreDA("http://store.invalid:1", timeout_s=5) as da:
        await da._http.aclose()
        da._http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        for call in (da.health(), da.read_after(0, 10), da.store(b"blob")):
            with pytest.raises(DAUnavailable, match="more than 32 MiB" if len(answer) > 1 << 20 else "JSON"):
                await call


async def test_an_answer_whose_signature_fails_does_not_pin_its_key() -> None:
    """Trust on first use pins a store's key only from a signature that verifies: a forged answer (a bad
    signature, or a bare /health claim from a proxy) used to pin its key for the client's life, failing every
    genuine answer after it."""
    forger = bytes(nacl.signing.SigningKey.generate().verify_key)
    store = nacl.signing.SigningKey.generate()
    genuine = [False]

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/health"):
            return httpx.Response(200, json={"ok": True, "head": 0, "public_key": forger.hex()})
        digest = hashlib.sha256(request.content).digest()
        if not genuine[0]:
            return httpx.Response(200, json={"position": 1, "hash": digest.hex(), "signature": "00" * 64,
                                             "validator": forger.hex()})
        signature = store.sign(signed_message(NS, digest)).signature
        return httpx.Response(200, json={"position": 1, "hash": digest.hex(), "signature": signature.hex(),
                                         "validator": bytes(store.verify_key).hex()})

    async with BlobStoreDA("http://store.invalid:1", timeout_s=5) as da:
        await da._http.aclose()
        da._http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        with pytest.raises(VerificationFailed, match="does not verify"):
            await da.store(b"blob")
        await da.health()
        assert da._key is None
        genuine[0] = True
        await da.store(b"blob")  # the genuine store's signed answer pins its key
        assert da._key == bytes(store.verify_key)
        with pytest.raises(VerificationFailed):  # and a claim of another key is refused from then on
            await da.health()


async def test_a_store_whose_log_restarted_is_read_again_from_the_start(nursery: trio.Nursery,
                                                                       tmp_path: Path) -> None:
    """A store that comes back with an empty log (lost disk): its positions start again at 1, and a consumer whose
    cursor was past them never read its new blobs (a reviewer's reproduction). A log head behind our cursor makes
    the client read the log again from the start (applying is idempotent); saying so again within a minute is a
    failed read, so a store that keeps saying it cannot make a consumer spin."""
    first = await start_server(nursery, tmp_path / "first")
    da = BlobStoreDA(first.url)
    for i in range(5):
        await da.post(b"old-%d" % i)
    seen: list[bytes] = []
    consumer = Consumer(da, lambda events: 0, frozenset())
    consumer.ingest = lambda data: seen.append(data) or 0  # type: ignore[method-assign]
    await consumer.poll_once()
    assert consumer.cursor == 5 and len(seen) == 5
    await first.shutdown()
    second = await start_server(nursery, tmp_path / "second")
    again = BlobStoreDA(second.url)
    consumer.da = again
    for i in range(3):
        await again.post(b"new-%d" % i)
    seen.clear()
    assert await consumer.poll_once() and seen == [b"new-0", b"new-1", b"new-2"] and consumer.cursor == 3
    consumer.cursor = 9  # the store says its head is behind our cursor again, at once
    with pytest.raises(DAError, match="changed under our cursor 9 again"):
        await consumer.poll_once()
    await second.shutdown()
    await da.aclose()
    await again.aclose()


async def test_a_store_rebuilt_at_the_same_url_whose_log_grew_past_our_cursor_is_read_from_the_start(
        nursery: trio.Nursery, tmp_path: Path) -> None:
    """A store rebuilt (lost disk, new key) at the same URL whose new log already holds more blobs than our cursor:
    reading on from the cursor skipped its first blobs without a word (a reviewer's reproduction). Its log answers
    name its key: another key is another log, read from the start."""
    first = await start_server(nursery, tmp_path / "first")
    port = int(first.url.rsplit(":", 1)[1])
    da = BlobStoreDA(first.url)
    for i in range(3):
        await da.post(b"old-%d" % i)
    page = await da.read_after(0, 100)
    assert page.cursor == 3
    await first.shutdown()
    second = await start_server(nursery, tmp_path / "second", port=port)
    writer = BlobStoreDA(second.url)
    for i in range(5):
        await writer.post(b"new-%d" % i)
    page = await da.read_after(3, 100)
    assert [data for _, data in page.items] == [b"new-%d" % i for i in range(5)] and page.cursor == 5
    assert [data for _, data in (await da.read_after(5, 100)).items] == []  # and on from there, once
    await second.shutdown()
    await da.aclose()
    await writer.aclose()


async def test_a_store_that_lost_its_database_but_kept_its_key_is_read_from_the_start(
        nursery: trio.Nursery, tmp_path: Path) -> None:
    """A store whose database was lost (an operator deleted a damaged file) while its key was kept: its positions
    start again at 1 under the same key, and a follower read on from its old cursor past the new log's first blobs
    (a reviewer's reproduction). The log id, made with the database, names the log."""
    first = await start_server(nursery, tmp_path / "store")
    port = int(first.url.rsplit(":", 1)[1])
    da = BlobStoreDA(first.url)
    for i in range(3):
        await da.post(b"old-%d" % i)
    assert (await da.read_after(0, 100)).cursor == 3
    old_id = first.store.log_id
    await first.shutdown()
    for path in (tmp_path / "store").glob("blobs.sqlite3*"):
        path.unlink()
    second = await start_server(nursery, tmp_path / "store", port=port)
    assert second.store.public_key == da.public_key and second.store.log_id != old_id
    for i in range(5):
        await da.post(b"new-%d" % i)
    page = await da.read_after(3, 100)
    assert [data for _, data in page.items] == [b"new-%d" % i for i in range(5)] and page.cursor == 5
    assert (await da.health())["log_id"] == second.store.log_id.hex()
    await second.shutdown()
    third = await start_server(nursery, tmp_path / "store", port=port)  # a plain restart keeps its log id
    assert third.store.log_id == second.store.log_id
    assert (await da.read_after(5, 100)).items == []
    await third.shutdown()
    await da.aclose()


async def test_a_failed_read_of_a_rebuilt_store_from_the_start_is_tried_again() -> None:
    """The client took the rebuilt store's key as known before its read from the start: when that read failed, the
    next read went on from the old cursor in the new log, its first blobs skipped (a reviewer's reproduction)."""
    blobs = [(i, b"new-log-blob-%d" % i) for i in range(1, 11)]
    state = {"key": b"\x01" * 32, "fail_from_start": False}

    def handler(request: httpx.Request) -> httpx.Response:
        after = int(request.url.params["after"])
        if after == 0 and state["fail_from_start"]:
            state["fail_from_start"] = False
            return httpx.Response(503, json={"error": "busy", "message": "transient"})
        items = [{"position": p, "hash": hashlib.sha256(d).hexdigest(), "namespace": DEFAULT_NAMESPACE.hex(),
                  "data": base64.b64encode(d).decode()} for p, d in blobs if p > after]
        return httpx.Response(200, json={"items": items, "head": 10, "cursor": 10, "at_head": True,
                                         "public_key": state["key"].hex()})

    da = BlobStoreDA("http://store.invalid:1", timeout_s=5)
    await da._http.aclose()
    da._http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    await da.read_after(0, 5)  # the old log, followed to 5
    state["key"], state["fail_from_start"] = b"\x02" * 32, True  # rebuilt: another key, its head already past 5
    with pytest.raises(DAError):
        await da.read_after(5, 100)
    page = await da.read_after(5, 100)
    assert [ref.height for ref, _ in page.items] == list(range(1, 11))
    await da.aclose()


async def test_a_compressed_answer_is_refused_unread(nursery: trio.Nursery) -> None:
    """httpx inflated a gzip answer chunk by chunk before our size limit saw it: one compressed chunk of a hostile
    store grew a health check by 130 MiB (a reviewer's reproduction). We ask for none, and refuse one unread."""
    body = gzip.compress(json.dumps({"ok": True, "head": 0, "public_key": "ab" * 32}).encode())
    asked: list[bytes] = []

    async def handler(stream: trio.SocketStream) -> None:
        asked.append(await stream.receive_some(65536))
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
                              b"Content-Length: %d\r\n\r\n" % len(body) + body)

    listeners = await nursery.start(trio.serve_tcp, handler, 0)
    da = BlobStoreDA(f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}", timeout_s=5)
    with pytest.raises(DAUnavailable, match="compressed"):
        await da.health()
    assert b"accept-encoding: identity" in asked[0].lower()
    await da.aclose()


async def test_a_cursor_resumed_after_a_restart_knows_which_log_it_counts_in(nursery: trio.Nursery,
                                                                             tmp_path: Path) -> None:
    """Coordinator and store both restarted, the store without its database (key kept) and with new blobs past the
    snapshot's cursor: a fresh client had nothing to compare the store's log with, and read on from the cursor,
    skipping the new log's first blobs (a reviewer's reproduction). The snapshot keeps the log's identity beside
    the cursor; a cursor resumed without one is read again from the start."""
    first = await start_server(nursery, tmp_path / "store")
    port = int(first.url.rsplit(":", 1)[1])
    da = BlobStoreDA(first.url)
    assert da.log_identity is None
    for i in range(3):
        await da.post(b"old-%d" % i)
    assert (await da.read_after(0, 100)).cursor == 3
    identity = da.log_identity
    assert identity is not None and identity["key"] and identity["log_id"]
    resumed = BlobStoreDA(first.url)  # the same log, intact: read on from the cursor
    resumed.resume_log(identity, 3)
    await da.post(b"old-3")
    assert [data for _, data in (await resumed.read_after(3, 100)).items] == [b"old-3"]
    await first.shutdown()
    for path in (tmp_path / "store").glob("blobs.sqlite3*"):  # the store loses its database, keeps its key
        path.unlink()
    second = await start_server(nursery, tmp_path / "store", port=port)
    writer = BlobStoreDA(second.url)
    for i in range(5):
        await writer.post(b"new-%d" % i)
    new = [b"new-%d" % i for i in range(5)]
    for saved in (identity, None):  # the identity the snapshot kept; none (a snapshot of an earlier version)
        client = BlobStoreDA(second.url)  # a restarted coordinator's
        client.resume_log(saved, 4)
        page = await client.read_after(4, 100)
        assert [data for _, data in page.items] == new and page.cursor == 5
        assert client.log_identity is not None and client.log_identity["log_id"] != identity["log_id"]
        assert (await client.read_after(5, 100)).items == []  # and on from there
        await client.aclose()
    fresh = BlobStoreDA(second.url)  # a first start (cursor 0) reads from the start anyway, once
    fresh.resume_log(None, 0)
    assert [data for _, data in (await fresh.read_after(0, 100)).items] == new
    for client in (da, resumed, writer, fresh):
        await client.aclose()
    await second.shutdown()


async def test_a_coordinator_snapshot_keeps_the_log_each_cursor_counts_in(nursery: trio.Nursery,
                                                                          tmp_path: Path) -> None:
    from node import snapshot
    from node.config import load
    from node.coordinator import Coordinator
    from node.da.mock import MockDA

    server = await start_server(nursery, tmp_path / "store")
    async with BlobStoreDA(server.url) as writer:
        for i in range(3):
            await writer.post(b"blob-%d" % i)  # no member's: skipped, but the cursor passes them
    cfg = load({"USE_MOCK_DA": "true", "COORDINATOR_ID": "c0", "COORDINATOR_DATA_DIR": str(tmp_path / "c0"),
                "PUBLISH_INTERVAL_MS": "10", "DA_HEALTH_INTERVAL_MS": "100"})

    async def run_once(client: BlobStoreDA) -> Coordinator:
        coord = Coordinator(cfg, MockDA(), emergency=client)
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as inner:
                await inner.start(coord.run)
                with trio.fail_after(10):
                    while coord.consumers["emergency"].cursor < 3 or coord.consumers["emergency"].log is None:
                        await trio.sleep(0.05)
                scope.cancel()  # (run writes its final snapshot as it stops)
        return coord

    first = BlobStoreDA(server.url)
    await run_once(first)
    saved = snapshot.load(cfg.data_dir)
    assert saved is not None and saved.cursors["emergency"] == 3, saved
    assert saved.logs.get("emergency") == first.log_identity is not None, (saved.logs, first.log_identity)
    second = BlobStoreDA(server.url)
    coord = Coordinator(cfg, MockDA(), emergency=second)
    await coord.restore()
    assert coord.consumers["emergency"].cursor == 3 and second.log_identity == first.log_identity
    # a snapshot of the previous version (no logs): the log is read again once, and its identity is then saved
    # though nothing else changed (the mark ignored it: every restart read the log again)
    await snapshot.save(cfg.data_dir, snapshot.Snapshot(saved.state, saved.cursors, saved.outbox_seq,
                                                        basis=saved.basis))
    third = BlobStoreDA(server.url)
    await run_once(third)
    assert snapshot.load(cfg.data_dir).logs.get("emergency") == first.log_identity
    for client in (first, second, third):
        await client.aclose()
    await server.shutdown()


async def test_a_cursor_moved_by_other_namespaces_blobs_alone_makes_no_periodic_snapshot(nursery: trio.Nursery,
                                                                                        tmp_path: Path) -> None:
    """The log's identity names the blob at its cursor ("at"), which moves with the cursor: compared in full, it
    made every periodic snapshot due whenever another namespace's blob moved the cursor (the whole state rewritten
    and fsynced, CURSORS_ONLY_SNAPSHOT_S ignored: a regression review)."""
    from node.config import load
    from node.coordinator import Coordinator

    server = await start_server(nursery, tmp_path / "store")
    other = BlobStoreDA(server.url, namespace=OTHER_NS)
    await other.post(b"another cluster's blob 0")
    cfg = load({"USE_MOCK_DA": "true", "COORDINATOR_ID": "c0", "COORDINATOR_DATA_DIR": str(tmp_path / "c0")})
    ours = BlobStoreDA(server.url, namespace=NS)
    coord = Coordinator(cfg, ours)
    await coord.restore()
    consumer = coord.consumers["primary"]
    consumer.wait_s = 0.0  # (no long polls: another namespace's blob does not end one of ours)
    await consumer.poll_once()
    assert await coord.write_snapshot(cursors_alone=False) and consumer.log is not None
    for i in range(1, 4):
        await other.post(b"another cluster's blob %d" % i)
        await consumer.poll_once()
        assert consumer.cursor == i + 1 and consumer.log["at"] == hashlib.sha256(b"another cluster's blob %d"
                                                                                  % i).hexdigest()
        assert not await coord.write_snapshot(cursors_alone=False)
    assert coord.snapshots_written == 1 and await coord.write_snapshot()  # (a stop's snapshot keeps the cursor)
    coord.outbox.close()
    await other.aclose()
    await ours.aclose()
    await server.shutdown()


async def test_a_snapshot_cut_while_a_new_log_is_read_never_pairs_an_old_cursor_with_its_name(
        nursery: trio.Nursery, tmp_path: Path) -> None:
    """The client recorded a new log's name as it read it, and the consumer moved its cursor after a thread hop
    (noting the page's blobs): a snapshot in between saved the old log's cursor with the new log's name, and the
    restart read the new log on from there, skipping its first blobs (a regression review's reproduction). The
    page carries the name; the consumer takes both in one step."""
    import shutil

    from node import snapshot
    from node.config import load
    from node.coordinator import Coordinator
    from node.da.mock import MockDA

    cfg = load({"USE_MOCK_DA": "true", "COORDINATOR_ID": "c0", "COORDINATOR_DATA_DIR": str(tmp_path / "c0"),
                "PUBLISH_INTERVAL_MS": "10", "DA_HEALTH_INTERVAL_MS": "100"})
    server = await start_server(nursery, tmp_path / "store")
    port = int(server.url.rsplit(":", 1)[1])
    async with BlobStoreDA(server.url) as writer:
        for i in range(5):
            await writer.post(b"old-%d" % i)

    async def run(client: BlobStoreDA, until: Any, hook: Any = None) -> None:
        coord = Coordinator(cfg, MockDA(), emergency=client)
        if hook is not None:
            hook(coord)
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as inner:
                await inner.start(coord.run)
                with trio.fail_after(10):
                    while not until(coord):
                        await trio.sleep(0.02)
                scope.cancel()
        await client.aclose()

    await run(BlobStoreDA(server.url), lambda c: c.consumers["emergency"].cursor == 5)
    await server.shutdown()
    for path in (tmp_path / "store").glob("blobs.sqlite3*"):
        path.unlink()  # the store loses its database (key kept): a new log
    server = await start_server(nursery, tmp_path / "store", port=port)
    async with BlobStoreDA(server.url) as writer:
        for i in range(2):
            await writer.post(b"new-%d" % i)
    crashed = tmp_path / "snapshot-at-the-crash"

    def snapshot_during_the_page(coord: Coordinator) -> None:
        layer = coord.da.followed["emergency"]
        noting = layer.on_page

        async def on_page(page: Any, started: int) -> None:
            if not crashed.exists():  # the snapshot loop wakes during the thread hop; the process dies after it
                coord._snapshot_mark = (-1, {}, {})
                await coord.write_snapshot()
                shutil.copy(cfg.data_dir / snapshot.FILE, crashed)
            if noting is not None:
                await noting(page, started)

        layer.on_page = on_page

    await run(BlobStoreDA(server.url), lambda c: c.consumers["emergency"].cursor == 2 and crashed.exists(),
              snapshot_during_the_page)
    shutil.copy(crashed, cfg.data_dir / snapshot.FILE)
    async with BlobStoreDA(server.url) as writer:  # while it is down the new log grows past the old cursor
        for i in range(2, 8):
            await writer.post(b"new-%d" % i)
    reader, seen = BlobStoreDA(server.url), []
    read_after = reader.read_after

    async def recording(cursor: int, limit: int, wait_s: float = 0.0) -> Any:
        page = await read_after(cursor, limit, wait_s)
        seen.extend(ref.height for ref, _ in page.items)
        return page

    reader.read_after = recording  # type: ignore[method-assign]
    await run(reader, lambda c: c.consumers["emergency"].cursor == 8)
    assert sorted(set(seen)) == list(range(1, 9))
    await server.shutdown()


async def test_long_polls_on_a_namespace_nobody_writes_do_not_read_again_at_every_write(tmp_path: Path) -> None:
    """Every stored blob woke every long poll, and each read the log again under the one lock the writes take:
    2,000 idle polls on a namespace nobody writes held each write ~0.6 s (a reviewer's measurement; a few thousand
    more time the quorum's signatures out). A poll reads again only once its namespace moved past its cursor."""
    from api.blobstore import BlobStore, create_blobstore_app
    from node.da.blobstore_client import DEFAULT_NAMESPACE

    other = bytes(19) + b"other-ns00"
    store = BlobStore(tmp_path)
    client = create_blobstore_app(store).test_client()
    reads = 0
    log = store.log

    async def counted(*args: Any) -> Any:
        nonlocal reads
        reads += 1
        return await log(*args)

    store.log = counted  # type: ignore[method-assign]
    answers: list[Any] = []

    async def poll() -> None:
        answers.append(await client.get(f"/quorum/v1/log?after=0&wait_ms=30000&namespace={other.hex()}"))

    headers = {"Content-Type": "application/octet-stream"}
    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(poll)
        await trio.sleep(0.5)
        assert reads == 20  # each poll's first read
        for i in range(5):
            answer = await client.post(f"/quorum/v1/blobs?namespace={DEFAULT_NAMESPACE.hex()}", data=b"w%d" % i,
                                       headers=headers)
            assert answer.status_code == 200
        await trio.sleep(0.5)
        assert reads == 20 and not answers  # not read again: nothing new in their namespace
        answer = await client.post(f"/quorum/v1/blobs?namespace={other.hex()}", data=b"theirs", headers=headers)
        assert answer.status_code == 200
        with trio.fail_after(5):
            while len(answers) < 20:
                await trio.sleep(0.05)
    for a in answers:
        assert len((await a.get_json())["items"]) == 1
    store.close()


@pytest.mark.parametrize("writers", [",", " , ", "zz"])
def test_writers_given_but_naming_no_key_are_refused_not_an_open_store(writers: str, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """``--writers ","`` parsed to no key and started a store anyone may write to (a reviewer's find)."""
    from deploy import blobstore

    with pytest.raises(SystemExit) as exited:
        blobstore.main(["--writers", writers, "--port", "0", "--data-dir", str(tmp_path)])
    assert exited.value.code == 2 and "--writers" in capsys.readouterr().err
