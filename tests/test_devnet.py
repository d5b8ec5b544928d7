"""The devnet as a real process: CLI flags, graceful SIGTERM, chain kept on disk, port already taken."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from deploy.devnet import Devnet, main
from node.da.celestia import CelestiaDA, b64
from node.da.namespace import namespace_from_name
from node.process import STOP_AT_STDIN_EOF
from tests.proc import free_port, wait_http_ok

TOKEN = "proc-secret"
NS = namespace_from_name("dsdn-devnet-proc")


def spawn(port: int, db: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:  # SIGHUP as a terminal gives it (a test run under nohup would pass it on ignored)
        return subprocess.Popen([sys.executable, "-m", "deploy.devnet", "--port", str(port), "--db", str(db),
                                 "--block-interval-ms", "50", "--auth-token", TOKEN],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))


async def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    if not await wait_http_ok(f"{url}/admin/status", proc, timeout, {"Authorization": f"Bearer {TOKEN}"}):
        raise AssertionError(f"devnet at {url} did not become ready (exit code {proc.poll()})")


async def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    proc.send_signal(signal.SIGTERM)
    with trio.fail_after(timeout):
        while proc.poll() is None:
            await trio.sleep(0.02)
    return proc.returncode


async def test_process_serves_stops_on_sigterm_and_keeps_its_chain(tmp_path: Path) -> None:
    db, log = tmp_path / "chain" / "devnet.sqlite", tmp_path / "devnet.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = spawn(port, db, log)
    try:
        await wait_ready(url, proc)
        async with CelestiaDA(url, NS, TOKEN, timeout_s=5, retry_count=0) as da:
            ref = await da.post(b"on disk")
            head = await da.head()
        assert await stop(proc) == 0
        assert "stopped cleanly" in log.read_text()
        assert db.exists()

        proc = spawn(port, db, log)
        await wait_ready(url, proc)
        async with CelestiaDA(url, NS, TOKEN, timeout_s=5, retry_count=0) as da:
            assert await da.get(ref) == b"on disk"
            assert await da.head() >= head

        # A second devnet on the same port cannot start: exit code 1 and one clear line.
        other = subprocess.run([sys.executable, "-m", "deploy.devnet", "--port", str(port), "--db", ":memory:"],
                               capture_output=True, timeout=30)
        assert other.returncode == 1 and b"cannot start" in other.stderr
        assert await stop(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("service", ["devnet", "blobstore"])
def test_a_port_already_taken_is_named(service: str, tmp_path: Path) -> None:
    """A DA service whose port is taken says which port and which flag (it said only "[Errno 98] Address already in
    use", beside a coordinator naming its own: a fresh user's run)."""
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        extra = ["--data-dir", str(tmp_path / "store")] if service == "blobstore" else []
        result = subprocess.run([sys.executable, "-c", f"from deploy.{service} import main; main()", "--port",
                                 str(port), *extra], capture_output=True, text=True, timeout=60,
                                cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 1, result.stderr
    assert f"port 127.0.0.1:{port} (--port): Address already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_flags_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--block-interval-ms", "0"], ["--block-interval-ms", str(10**30)], ["--port", "70000"],
                 ["--port", "x"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
    assert capsys.readouterr().err.count("--block-interval-ms must be from 1 to 3600000") == 2


async def test_reads_do_not_wait_for_the_block_being_committed(tmp_path: Path) -> None:
    devnet = Devnet(str(tmp_path / "devnet.sqlite"), 0.05)
    await devnet.open()
    try:
        await devnet.produce_block()
        async with devnet._lock:  # the writer is busy (a block commit holds it): reads go on their own connection
            with trio.fail_after(2):
                header = await devnet.dispatch("header.GetByHeight", [2])
                assert await devnet.dispatch("blob.GetAll", [2, [b64(NS)]]) is None
        assert header["header"]["height"] == "2"
    finally:
        devnet.close()


async def test_sighup_a_closed_launcher_pipe_and_a_locked_data_file(tmp_path: Path) -> None:
    """A closed terminal (SIGHUP) stops a process gracefully; so does the end of its stdin when its launcher set
    DSDN_STOP_AT_STDIN_EOF (``dsdn cluster up``, killed with -9, left every child running on its ports: a
    reviewer's reproduction); and a second process on the same data file refuses to start (two devnets on one chain
    file: the second stalled for good)."""
    db, log = tmp_path / "devnet.sqlite", tmp_path / "devnet.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = spawn(port, db, log)
    try:
        await wait_ready(url, proc)
        other = subprocess.run([sys.executable, "-m", "deploy.devnet", "--port", str(free_port()), "--db", str(db)],
                               capture_output=True, timeout=30)
        assert other.returncode == 1 and b"another process uses" in other.stderr
        proc.send_signal(signal.SIGHUP)
        with trio.fail_after(10):
            while proc.poll() is None:
                await trio.sleep(0.02)
        assert proc.returncode == 0 and "stopped cleanly" in log.read_text()
        with open(log, "ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "deploy.devnet", "--port", str(port), "--db", str(db),
                                     "--auth-token", TOKEN], stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.PIPE, env={**os.environ, STOP_AT_STDIN_EOF: "1"})
        await wait_ready(url, proc)  # the lock was released with the first process
        assert proc.stdin is not None
        proc.stdin.close()  # what the kernel does when the launcher dies
        with trio.fail_after(10):
            while proc.poll() is None:
                await trio.sleep(0.02)
        assert proc.returncode == 0 and "its pipe closed" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_a_process_started_under_nohup_keeps_running_after_sighup(tmp_path: Path) -> None:
    """nohup sets SIGHUP to be ignored: the process must honour that (trio's signal receiver replaced it, so a
    process started with nohup stopped when its terminal closed: a reviewer's reproduction)."""
    db, log = tmp_path / "devnet.sqlite", tmp_path / "devnet.log"
    port = free_port()
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "deploy.devnet", "--port", str(port), "--db", str(db),
                                 "--auth-token", TOKEN], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL,
                                preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))  # what nohup does
    try:
        await wait_ready(f"http://127.0.0.1:{port}", proc)
        proc.send_signal(signal.SIGHUP)
        await trio.sleep(1)
        assert proc.poll() is None
        assert await stop(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_blocks_and_submits_are_bounded_like_celestia_s(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The devnet put whatever arrived in one block (concurrent writers made blocks our client cannot read back: a
    GetAll answer over its 64 MiB) and took any number of blobs per Submit (110,000 tiny ones froze it for 1.8 s): a
    reviewer's runs. A block holds at most a square's worth of whole Submits; a Submit is one bounded transaction."""
    import deploy.devnet as devnet_mod

    monkeypatch.setattr(devnet_mod, "MAX_BLOCK_BYTES", 64 * 1024)
    devnet = Devnet(str(tmp_path / "devnet.sqlite"), 3600)  # blocks made by hand below
    await devnet.open()
    heights: list[int] = []

    async def submit(k: int) -> None:
        heights.append(await devnet.dispatch("blob.Submit", [[
            {"namespace": b64(NS), "data": b64(bytes([k]) * 20_000), "share_version": 0},
            {"namespace": b64(NS), "data": b64(bytes([k + 100]) * 100), "share_version": 0}]]))

    try:
        async with trio.open_nursery() as nursery:
            for k in range(10):
                nursery.start_soon(submit, k)
            await trio.sleep(0.1)
            while len(heights) < 10:
                await devnet.produce_block()
                await trio.sleep(0.01)
        for height in sorted(set(heights)):
            blobs = await devnet.dispatch("blob.GetAll", [height, [b64(NS)]])
            assert 0 < sum(len(b["data"]) * 3 // 4 for b in blobs) <= 64 * 1024
            assert len(blobs) % 2 == 0  # a Submit's two blobs share a block
        assert len(set(heights)) >= 4
        tiny = {"namespace": b64(NS), "data": b64(b"x"), "share_version": 0}
        too_many = [tiny] * (devnet_mod.MAX_BLOBS_PER_SUBMIT + 1)
        with pytest.raises(devnet_mod.RPCError, match="too large"):
            await devnet.dispatch("blob.Submit", [too_many])
        big = [{"namespace": b64(NS), "data": b64(bytes(devnet.max_blob_bytes // 2 + 1)), "share_version": 0}] * 2
        with pytest.raises(devnet_mod.RPCError, match="too large"):
            await devnet.dispatch("blob.Submit", [big])
    finally:
        devnet.close()


async def test_submits_waiting_for_a_block_are_bounded_like_a_node_s_mempool(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Every Submit waiting for a block was kept in memory without bound (60 of 1.9 MB under slow blocks: 730 MB, a
    reviewer's run). Past MAX_MEMPOOL_BYTES waiting, a Submit is refused at once ("mempool is full", as a node's
    bounded mempool answers); once a block takes the waiting ones, Submits are taken again."""
    import deploy.devnet as devnet_mod

    monkeypatch.setattr(devnet_mod, "MAX_MEMPOOL_BYTES", 100_000)
    devnet = Devnet(str(tmp_path / "devnet.sqlite"), 3600)  # blocks made by hand below
    await devnet.open()
    heights: list[int] = []
    refused: list[str] = []

    async def submit(k: int) -> None:
        try:
            heights.append(await devnet.dispatch("blob.Submit", [[
                {"namespace": b64(NS), "data": b64(bytes([k]) * 20_000), "share_version": 0}]]))
        except devnet_mod.RPCError as exc:
            refused.append(str(exc))

    try:
        async with trio.open_nursery() as nursery:
            for k in range(10):
                nursery.start_soon(submit, k)
            await trio.sleep(0.1)
            assert len(refused) == 5 and all("mempool is full" in r for r in refused) and heights == []
            await devnet.produce_block()
            await trio.sleep(0.1)
            assert len(heights) == 5
            nursery.start_soon(submit, 99)  # room again
            await trio.sleep(0.1)
            await devnet.produce_block()
        assert len(heights) == 6 and len(refused) == 5
    finally:
        devnet.close()


async def test_a_graceful_stop_answers_the_callers_waiting_for_a_height(tmp_path: Path) -> None:
    """A header.WaitForHeight for a far height held SIGTERM for hypercorn's whole graceful timeout (5 s), and its
    caller was then dropped without an answer (a reviewer's reproduction)."""
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = spawn(port, tmp_path / "devnet.sqlite", tmp_path / "devnet.log")
    answers: list[dict[str, object]] = []
    try:
        await wait_ready(url, proc)
        async with httpx.AsyncClient(timeout=30) as http, trio.open_nursery() as nursery:
            async def waiter() -> None:
                response = await http.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "header.WaitForHeight",
                                                      "params": [10**9]}, headers={"Authorization": f"Bearer {TOKEN}"})
                answers.append(response.json())

            nursery.start_soon(waiter)
            await trio.sleep(0.5)
            started = trio.current_time()
            assert await stop(proc) == 0
            assert trio.current_time() - started < 3
        assert answers and "shutting down" in answers[0]["error"]["message"]  # type: ignore[index]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
