"""Real ``dsdn-coordinator`` processes: the seed's Quick Test, signals, kill -9 restart, rebuild from a
shared file Mock DA, start-up errors."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from node.process import SAME_REQUEST_S
from tests.conftest import fill_outbox, wait_for
from tests.proc import CoordinatorProcess, free_port


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[list[CoordinatorProcess]]:
    started: list[CoordinatorProcess] = []
    yield started
    for p in started:
        p.stop_now()


def launch(procs: list[CoordinatorProcess], tmp_path: Path, name: str, **env: str) -> CoordinatorProcess:
    p = CoordinatorProcess(tmp_path / name, tmp_path / f"{name}.log", COORDINATOR_ID=name, **env).start()
    procs.append(p)
    return p


async def test_seed_quick_test(procs: list[CoordinatorProcess], tmp_path: Path) -> None:
    c = launch(procs, tmp_path, "c0")
    await c.wait_ready()
    async with httpx.AsyncClient(base_url=c.url, timeout=5) as http:
        r = await http.post("/register", json={"id": "node-1", "zone": "zone-a", "addr": "10.0.0.1:50051",
                                               "capacity_gb": 100})
        assert (r.status_code, r.json()) == (200, {"ok": True})
        r = await http.get("/nodes")
        assert r.json() == [{"id": "node-1", "zone": "zone-a", "addr": "10.0.0.1:50051", "capacity_gb": 100,
                             "meta": {}}]
        info = (await http.get("/system/info")).json()
        assert {k: info[k] for k in ("version", "node_count", "da_status", "routing_state", "fallback_active")} == {
            "version": "0.1.0", "node_count": 1, "da_status": "Ok(Healthy)", "routing_state": "primary",
            "fallback_active": False}
        health = (await http.get("/health")).json()
        assert health["status"] == "healthy (routing: primary)" and health["da_available"] is True
        assert health["da_health"] == "Ok(Healthy)" and "post_count" in health["metrics"]


async def test_sigterm_and_sigint_stop_gracefully_even_with_an_idle_keepalive(
        procs: list[CoordinatorProcess], tmp_path: Path) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        c = launch(procs, tmp_path, f"c-{sig.name}")
        await c.wait_ready()
        async with httpx.AsyncClient(base_url=c.url, timeout=5) as http:
            await http.post("/register", json={"id": "n", "zone": "z", "addr": "1.1.1.1:1"})  # keeps a connection
            c.kill(sig)
            started = trio.current_time()
            assert await c.wait_exit() == 0
            assert trio.current_time() - started < 3.0  # not the 5 s graceful timeout
        assert "stopped cleanly" in c.log() and "snapshot written" in c.log()


async def test_a_request_read_as_the_stop_closes_its_connection_does_not_hold_the_stop(
        procs: list[CoordinatorProcess], tmp_path: Path) -> None:
    """From a review: a keep-alive client's next request, read just as the stop closed its connection (under load:
    a request sent as the previous answer ended), left the connection's reader waiting for good, and every stop
    under load took the whole graceful timeout (5 s). Here the next request comes with the end of a body the stop
    waits for, so it is read while its connection closes, every time."""
    c = launch(procs, tmp_path, "c0")
    await c.wait_ready()
    body = b'{"id": "n1", "zone": "z", "addr": "10.0.0.1:5000"}'
    stream = await trio.open_tcp_stream("127.0.0.1", c.port)
    try:
        await stream.send_all(b"POST /register HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                              b"Content-Length: %d\r\n\r\n" % len(body) + body[:10])
        await trio.sleep(0.3)
        c.kill(signal.SIGTERM)
        await trio.sleep(0.3)
        started = trio.current_time()
        await stream.send_all(body[10:] + b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        answer = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        assert await c.wait_exit() == 0
        assert trio.current_time() - started < 3.0, c.log()[-2000:]
    finally:
        await stream.aclose()


async def test_a_second_signal_during_a_held_up_stop_exits_at_once_with_one_line(
        procs: list[CoordinatorProcess], tmp_path: Path) -> None:
    """A request whose body never comes holds the graceful stop up; Ctrl-C again stops at once: exit 130 and one
    line (it was Python's KeyboardInterrupt, a traceback, and the lock table and DA clients left unclosed)."""
    c = launch(procs, tmp_path, "c0")
    await c.wait_ready()
    stream = await trio.open_tcp_stream("127.0.0.1", c.port)
    await stream.send_all(b"POST /register HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                          b"Content-Length: 100\r\n\r\n{")  # and nothing more
    await trio.sleep(0.3)
    c.kill(signal.SIGINT)
    await trio.sleep(0.5)
    assert c.proc is not None and c.proc.poll() is None  # held up by the open request
    c.kill(signal.SIGINT)
    started = trio.current_time()
    assert await c.wait_exit() == 128 + signal.SIGINT
    assert trio.current_time() - started < 3.0
    assert "stopped at once by a second SIGINT" in c.log() and "Traceback" not in c.log()
    await stream.aclose()


async def test_the_same_signal_twice_at_once_is_one_request_to_stop_gracefully(
        procs: list[CoordinatorProcess], tmp_path: Path) -> None:
    """``kill -TERM -<group>`` reaches a process from the shell and again from its parent passing it on (make, the
    cluster launcher): that copy, a moment later, was taken for a second request and cut the stop short (no final
    snapshot; a reviewer's run). A signal within SAME_REQUEST_S of the first is the same request."""
    c = launch(procs, tmp_path, "c0")
    await c.wait_ready()
    stream = await trio.open_tcp_stream("127.0.0.1", c.port)  # a request that holds the graceful stop up
    await stream.send_all(b"POST /register HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                          b"Content-Length: 100\r\n\r\n{")
    await trio.sleep(0.3)
    c.kill(signal.SIGTERM)
    await trio.sleep(SAME_REQUEST_S / 5)  # (sent together, the kernel may deliver the two as one)
    c.kill(signal.SIGTERM)
    await trio.sleep(0.5)
    assert c.proc is not None and c.proc.poll() is None, c.log()[-2000:]  # still stopping gracefully
    await stream.aclose()  # the request ends: the graceful stop goes on
    assert await c.wait_exit() == 0, c.log()[-2000:]
    assert "the same request" in c.log() and "stopped cleanly" in c.log() and "at once by" not in c.log()


async def test_a_second_signal_during_the_final_snapshot_exits_at_once_with_one_line(
        procs: list[CoordinatorProcess], tmp_path: Path) -> None:
    """From a review: the signals were heard only until the API stopped; a second Ctrl-C while the final snapshot of a
    large state was written was Python's KeyboardInterrupt (a traceback, exit 1), a second SIGTERM the default end
    (exit -15, a snapshot.tmp left). Now it cuts the snapshot short: exit 128 + the signal, one line."""
    (tmp_path / "c0").mkdir()
    fill_outbox(tmp_path / "c0" / "outbox.sqlite", 400_000)  # a state whose final snapshot takes a while
    c = launch(procs, tmp_path, "c0", SNAPSHOT_INTERVAL_MS="86400000")
    await c.wait_ready(timeout=90)
    c.kill(signal.SIGTERM)
    with trio.fail_after(10):
        while True:  # the API stops first; then the final snapshot is written
            try:
                await (await trio.open_tcp_stream("127.0.0.1", c.port)).aclose()
            except OSError:
                break
            await trio.sleep(0.01)
    assert c.proc is not None and c.proc.poll() is None, c.log()[-2000:]  # still stopping
    await trio.sleep(SAME_REQUEST_S)  # (a signal sooner is the same request: see the next test)
    c.kill(signal.SIGINT)
    assert await c.wait_exit() == 128 + signal.SIGINT, c.log()[-3000:]
    assert "stopped at once by a second SIGINT" in c.log() and "Traceback" not in c.log()
    assert not (tmp_path / "c0" / "snapshot.tmp").exists()


async def test_sigterm_during_a_long_restore_stops_at_once(procs: list[CoordinatorProcess], tmp_path: Path) -> None:
    """A large outbox (a long DA outage) takes seconds to replay at start; a SIGTERM then went on restoring,
    started the API and only then stopped (a second signal was the only way out)."""
    c = launch(procs, tmp_path, "c0")
    await c.wait_ready()
    c.kill(signal.SIGTERM)
    assert await c.wait_exit() == 0
    fill_outbox(tmp_path / "c0" / "outbox.sqlite", 250_000)  # ~2 s to replay here
    c.start()
    await wait_for(lambda: "restoring: a snapshot" in c.log(), timeout=20, what="the restore to start")
    c.kill(signal.SIGTERM)
    started = trio.current_time()
    assert await c.wait_exit() == 0
    assert trio.current_time() - started < 1.0
    restarts = c.log().split("restoring: a snapshot")
    assert "the start is cut short" in restarts[-1] and "restored:" not in restarts[-1]
    assert "stopped cleanly" in restarts[-1] and "Traceback" not in c.log()
    c.start()  # and the next start replays it all
    await c.wait_ready(timeout=60)
    async with httpx.AsyncClient(base_url=c.url, timeout=5) as http:
        assert (await http.get("/system/info")).json()["node_count"] == 250_000


async def test_sigterm_answers_a_peers_long_poll_on_the_hosted_validator_at_once(
        procs: list[CoordinatorProcess], tmp_path: Path) -> None:
    c = launch(procs, tmp_path, "validator", QUORUM_VALIDATOR="true")
    await c.wait_ready()
    answers: list[httpx.Response] = []
    async with httpx.AsyncClient(base_url=c.url, timeout=30) as http, trio.open_nursery() as nursery:

        async def poll() -> None:  # a peer following this validator's log, at its head
            answers.append(await http.get("/quorum/v1/log", params={"after": 0, "wait_ms": 25_000}))

        nursery.start_soon(poll)
        await trio.sleep(0.5)
        assert not answers  # it waits
        c.kill(signal.SIGTERM)
        started = trio.current_time()
        assert await c.wait_exit() == 0
        assert trio.current_time() - started < 3.0  # neither the 25 s poll nor the 5 s graceful timeout
    assert answers[0].status_code == 200 and answers[0].json()["items"] == []


async def test_a_hosted_validator_outside_a_cluster_takes_only_its_own_signed_writes(
        procs: list[CoordinatorProcess], tmp_path: Path) -> None:
    """A coordinator hosting a quorum validator without cluster members took anyone's write, with or without
    COORDINATOR_API_TOKEN: the one write route the token did not guard (a reviewer's finding). Outside a cluster it
    is the only member: a write signed by its own key is taken, an unsigned one (401) or a stranger's (403) not."""
    import nacl.signing

    from node import identity
    from node.da.base import DAUnavailable
    from node.da.blobstore_client import BlobStoreDA

    c = launch(procs, tmp_path, "validator", QUORUM_VALIDATOR="true", COORDINATOR_API_TOKEN="s3cret")
    await c.wait_ready()
    own = identity.load_or_create(tmp_path / "validator")
    for signer, refused in ((None, "401"), (nacl.signing.SigningKey.generate(), "403"), (own, None)):
        async with BlobStoreDA(f"{c.url}/quorum/v1", name="validator", timeout_s=5, signer=signer) as store:
            if refused is None:
                ref = await store.post(b"a member's write")
                assert await store.get(ref) == b"a member's write"
            else:
                with pytest.raises(DAUnavailable, match=f"refused with {refused}"):
                    await store.post(b"an outsider's write")
    async with httpx.AsyncClient(base_url=c.url, timeout=5) as http:
        page = (await http.get("/quorum/v1/log", params={"after": 0})).json()
    assert len(page["items"]) == 1


async def test_an_idle_keepalive_connection_outlives_common_client_expiries(
        procs: list[CoordinatorProcess], tmp_path: Path) -> None:
    """Under load a client saw "server disconnected without sending a response": httpx reuses a connection idle
    for up to 5 s, and hypercorn closed idle connections at exactly 5 s. Now an idle connection is kept far
    longer than that, so a request on a connection idle for 6 s is answered."""
    c = launch(procs, tmp_path, "c0")
    await c.wait_ready()
    host, port = c.url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    request = f"GET /health HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()

    async def exchange() -> bytes:
        await stream.send_all(request)
        data = b""
        with trio.fail_after(5):
            while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return data
                data += chunk
        return data

    assert (await exchange()).startswith(b"HTTP/1.1 200")
    await trio.sleep(6.0)
    assert (await exchange()).startswith(b"HTTP/1.1 200")  # same connection, not closed under the client
    await stream.aclose()


async def test_kill_9_then_restart_on_the_same_data_dir_gives_the_same_state(
        procs: list[CoordinatorProcess], tmp_path: Path) -> None:
    c = launch(procs, tmp_path, "c0")
    await c.wait_ready()
    async with httpx.AsyncClient(base_url=c.url, timeout=5) as http:
        for i in range(20):
            await http.post("/register", json={"id": f"node-{i}", "zone": f"z{i % 3}", "addr": f"10.0.0.{i}:1"})
        for i in range(10):
            await http.post("/object/register", json={"hash": f"obj-{i}", "size": i * 1000})
            await http.post("/replica/mark_healed", json={"hash": f"obj-{i}", "node_id": f"node-{i}"})
        root = (await http.get("/state/root")).json()
        nodes = (await http.get("/nodes")).json()
    c.kill(signal.SIGKILL)
    await c.wait_exit()
    assert "snapshot written" not in c.log()  # no graceful path ran
    again = CoordinatorProcess(tmp_path / "c0", tmp_path / "c0-again.log", port=c.port, COORDINATOR_ID="c0")
    procs.append(again.start())
    await again.wait_ready()
    async with httpx.AsyncClient(base_url=again.url, timeout=5) as http:
        after = (await http.get("/state/root")).json()
        assert after["root"] == root["root"] and after["events_applied"] == root["events_applied"] == 40
        assert (await http.get("/nodes")).json() == nodes
        assert (await http.get("/object/obj-3")).json() == {"hash": "obj-3", "size": 3000, "replicas": ["node-3"]}


async def test_second_coordinator_with_empty_data_dir_rebuilds_from_shared_mock_da(
        procs: list[CoordinatorProcess], tmp_path: Path) -> None:
    shared = str(tmp_path / "shared-da.sqlite")
    a = launch(procs, tmp_path, "a", MOCK_DA_PATH=shared)
    await a.wait_ready()
    async with httpx.AsyncClient(timeout=5) as http:
        for i in range(30):
            await http.post(f"{a.url}/register", json={"id": f"node-{i}", "zone": f"z{i % 4}", "addr": "1.2.3.4:5"})
        await http.post(f"{a.url}/scheduler/config", json={"w_cpu": 9})
        key = (await http.get(f"{a.url}/system/info")).json()["public_key"]
        with trio.fail_after(10):
            while (await http.get(f"{a.url}/state/root")).json()["pending"]:
                await trio.sleep(0.05)
        root_a = (await http.get(f"{a.url}/state/root")).json()
        b = launch(procs, tmp_path, "b", MOCK_DA_PATH=shared, CLUSTER_MEMBER_KEYS=key)
        await b.wait_ready()
        root_b = (await http.get(f"{b.url}/state/root")).json()
        assert root_b["root"] == root_a["root"] and root_b["events_applied"] == 31
        # and a write on A reaches B through the shared DA
        await http.post(f"{a.url}/register", json={"id": "late", "zone": "z", "addr": "1.2.3.4:5"})
        with trio.fail_after(10):
            while (await http.get(f"{b.url}/node/late")).status_code != 200:
                await trio.sleep(0.05)


def run_cli(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([sys.executable, "-m", "deploy.coordinator"], env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=30, stdin=subprocess.DEVNULL)


def test_bad_configuration_exits_2_with_one_line(tmp_path: Path) -> None:
    result = run_cli({"USE_MOCK_DA": "true", "COORDINATOR_PORT": "99999", "COORDINATOR_DATA_DIR": str(tmp_path)})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == ["dsdn-coordinator: configuration error: COORDINATOR_PORT='99999': expected an integer from 0 "
                     "to 65535"]
    result = run_cli({"USE_MOCK_DA": "", "DA_RPC_URL": "", "COORDINATOR_DATA_DIR": str(tmp_path)})
    assert result.returncode == 2 and "DA_RPC_URL" in result.stderr and "Traceback" not in result.stderr
    result = run_cli({"USE_MOCK_DA": "true", "LOG_LEVEL": "verbose", "COORDINATOR_DATA_DIR": str(tmp_path)})
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "dsdn-coordinator: configuration error: LOG_LEVEL='verbose': expected one of debug, info, warning, error, "
        "critical"]  # it was ignored, silently


def test_an_unusable_mock_da_file_is_named(tmp_path: Path) -> None:
    """It said "cannot start: unable to open database file" (or "file is not a database"), naming no file."""
    (tmp_path / "junk").write_text("not a database, not empty" * 100)
    for path, why in ((tmp_path, "unable to open database file"), (tmp_path / "junk", "file is not a database")):
        result = run_cli({"USE_MOCK_DA": "true", "MOCK_DA_PATH": str(path),
                          "COORDINATOR_DATA_DIR": str(tmp_path / "d")})
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines()[-1] == \
            f"dsdn-coordinator: cannot start: cannot use the Mock DA file {path}: {why}"


def test_an_unusable_outbox_or_fallback_record_is_named(tmp_path: Path) -> None:
    """From a review: a damaged outbox.sqlite or fallback.sqlite said "cannot start: file is not a database"."""
    for name, what in (("outbox.sqlite", "the outbox file"), ("fallback.sqlite", "the fallback record file")):
        data = tmp_path / name.split(".")[0]
        data.mkdir()
        (data / name).write_text("not a database, not empty" * 100)
        result = run_cli({"USE_MOCK_DA": "true", "COORDINATOR_DATA_DIR": str(data)})
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines()[-1] == \
            f"dsdn-coordinator: cannot start: cannot use {what} {data / name}: file is not a database"


def test_port_in_use_exits_1_with_a_clear_message(tmp_path: Path) -> None:
    import socket

    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        result = run_cli({"USE_MOCK_DA": "true", "COORDINATOR_PORT": str(port), "COORDINATOR_DATA_DIR": str(tmp_path)})
    assert result.returncode == 1
    assert "cannot start" in result.stderr and "Traceback" not in result.stderr
    # the line names the cause, not the nursery that carried it
    assert "address already in use" in result.stderr.lower() and "nursery" not in result.stderr.lower()
    assert f"the API port 127.0.0.1:{port} (COORDINATOR_PORT)" in result.stderr  # which of its two ports
    # the peer port from the member's entry in CLUSTER_PEERS (no PEER_PORT): that entry is named, not PEER_PORT
    key = subprocess.run([sys.executable, "-m", "deploy.cli", "keys", "show", "--data-dir", str(tmp_path / "c0")],
                         capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        result = run_cli({"USE_MOCK_DA": "true", "COORDINATOR_ID": "c0", "COORDINATOR_DATA_DIR": str(tmp_path / "c0"),
                          "COORDINATOR_PORT": str(free_port()), "CLUSTER_PEERS": f"c0={key}@127.0.0.1:{port}"})
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert (f"the peer port 127.0.0.1:{port} (this member's entry in CLUSTER_PEERS / CLUSTER_CONFIG)"
            in result.stderr), result.stderr


def test_dsdn_namespace_prints_a_valid_namespace() -> None:
    from node.da.namespace import validate_namespace

    out = subprocess.run([sys.executable, "-m", "deploy.cli", "namespace", "my-cluster"], capture_output=True,
                         text=True, timeout=30, check=True).stdout.strip()
    assert len(out) == 58
    validate_namespace(bytes.fromhex(out))


def test_dsdn_cli_prints_the_identity(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "deploy.cli", "identity", "--data-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    again = subprocess.run([sys.executable, "-m", "deploy.cli", "identity", "--data-dir", str(tmp_path)],
                           capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    assert len(out) == 64 and out == again and (tmp_path / "identity.key").stat().st_mode & 0o077 == 0


def test_keys_show_and_a_member_key_mismatch_is_a_clear_start_error(tmp_path: Path) -> None:
    key = subprocess.run([sys.executable, "-m", "deploy.cli", "keys", "show", "--data-dir", str(tmp_path / "c0")],
                         capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    assert len(key) == 64
    wrong = "cd" * 32
    result = run_cli({"USE_MOCK_DA": "true", "COORDINATOR_ID": "c0", "COORDINATOR_DATA_DIR": str(tmp_path / "c0"),
                      "COORDINATOR_PORT": str(free_port()), "CLUSTER_PEERS": f"c0={wrong}@127.0.0.1:{free_port()}"})
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert "configuration error" in line and key in line and "Traceback" not in result.stderr


def test_a_key_share_that_does_not_open_is_one_line_and_exit_2_before_anything_starts(tmp_path: Path) -> None:
    """A damaged keyshare.bin was reported after an error about the lock table, a restore and a snapshot (a
    reviewer's run): now at once, one line, exit 2, nothing else done."""
    data_dir = tmp_path / "c0"
    key = subprocess.run([sys.executable, "-m", "deploy.cli", "keys", "show", "--data-dir", str(data_dir)],
                         capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    share = data_dir / "keyshare.bin"
    share.write_bytes(b"DSDN")
    share.chmod(0o600)
    result = run_cli({"USE_MOCK_DA": "true", "COORDINATOR_ID": "c0", "COORDINATOR_DATA_DIR": str(data_dir),
                      "COORDINATOR_PORT": str(free_port()), "CLUSTER_PEERS": f"c0={key}@127.0.0.1:{free_port()}"})
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1].endswith(f"{share}: truncated key store"), result.stderr
    assert "lock table" not in result.stderr and "restor" not in result.stderr and "Traceback" not in result.stderr
    assert not (data_dir / "snapshot.msgpack").exists() and share.read_bytes() == b"DSDN"
