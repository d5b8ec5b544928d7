"""``dsdn cluster up``: a local cluster of real processes on loopback.

A devnet (the Celestia-compatible primary DA), an emergency blob store, and N coordinators; each
coordinator hosts a quorum validator under /quorum/v1/ and the N of them form the QuorumDA; they are
linked by the peer protocol (CLUSTER_PEERS). Ports: coordinator i serves HTTP on base-port + i and peer
links on base-port + 200 + i; the devnet on base-port + 100, the blob store on base-port + 101.
Output lines of every process are prefixed with its name; ``cluster.json`` in the
data dir lists every process (role, id, pid, URL) while the cluster runs. Ctrl-C (or SIGTERM) stops everything cleanly:
coordinators first (they write their final snapshots), then the blob store and the devnet.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import httpx
import trio

from node import identity
from node.config import MAX_MEMBERS
from node.da.namespace import namespace_from_name
from node.process import STOP_AT_STDIN_EOF, lock_data, mark_started, run_process, stop_on_signals

STOP_TIMEOUT_S = 10.0
OUTPUT_LINES = 10_000  # lines waiting for stdout at most (then dropped and counted)
# what the local cluster sets itself: from our environment, these would reshape it (an inherited CLUSTER_CONFIG
# took precedence over the cluster's own CLUSTER_PEERS, and every coordinator refused to start)
NOT_INHERITED = ("CLUSTER_CONFIG", "CLUSTER_MEMBER_KEYS", "MOCK_DA_PATH", "DA_START_HEIGHT", "COORDINATOR_HOST")
READY_TIMEOUT_S = 60.0  # a member not ready for this long, without progress, fails the start
PROGRESS_SAY_S = 10.0


@dataclass
class Member:
    role: str
    id: str
    url: str
    ready_path: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)  # for the readiness probe
    # the identity key (hex) its answers at ``key_path`` must name: another server on its port (a leftover
    # coordinator, any dev server answering 200) passed the readiness probe while this member could not bind
    # (a reviewer's reproduction)
    key: str | None = None
    key_path: str = ""
    process: trio.Process | None = None
    ready: bool = False

    def record(self) -> dict[str, Any]:
        """Its cluster.json entry; ``env`` is what it was started with (enough to start it again)."""
        port = self.env.get("PEER_PORT")
        gone = self.process is not None and self.process.returncode is not None
        return {"role": self.role, "id": self.id,
                "pid": self.process.pid if self.process is not None and not gone else None,
                **({"exited": self.process.returncode} if gone and self.process is not None else {}),
                "url": self.url, "peer_address": f"127.0.0.1:{port}" if port else None, "argv": self.argv,
                "env": self.env}


def ephemeral_port_range() -> tuple[int, int]:
    """The ports the kernel hands out to outgoing connections (Linux's default when unreadable)."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def free_base_port(n: int) -> int:
    """A base port whose n coordinator ports, DA service ports (+100, +101) and peer ports (+200…) are free."""
    return _free_ports((*range(n), 100, 101, *range(200, 200 + n)))


def free_port() -> int:
    """One free port for a server started later (outside the ephemeral range, like ``free_base_port``)."""
    return _free_ports((0,))


def _free_ports(offsets: tuple[int, ...]) -> int:
    """A base port such that base + each offset is free now, chosen outside the ephemeral range: otherwise
    any outgoing connection (a coordinator dialing a peer, a test's client) can take one of them between
    this check and the server's bind (seen in CI: a coordinator of a test cluster could not start)."""
    span = max(offsets) + 1
    low, high = ephemeral_port_range()
    choices = [(start, stop) for start, stop in ((10000, low - span), (high + 1, 65536 - span)) if stop > start]
    if not choices:
        raise RuntimeError(f"no port range outside the ephemeral range {low}-{high}")
    start, stop = max(choices, key=lambda c: c[1] - c[0])
    for _ in range(100):
        base = random.randrange(start, stop)
        if any(base + offset in _HANDED_OUT for offset in offsets):
            continue  # free now, but given to a caller that may not have bound it yet
        try:
            for offset in offsets:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", base + offset))
        except OSError:
            continue
        if len(_HANDED_OUT) > 4096:  # (those handed out long ago are bound or dropped by now)
            _HANDED_OUT.clear()
        _HANDED_OUT.update(base + offset for offset in offsets)
        return base
    raise RuntimeError("no free port range")


# ports handed out by this process: a caller asks for several before binding any (a test's three peers), and the
# same free port given twice made one of them fail to bind (seen in a full test run)
_HANDED_OUT: set[int] = set()


def plan(n: int, base_port: int, data_dir: Path, block_interval_ms: int = 500) -> list[Member]:
    """Every process of the cluster with its command line and environment."""
    py = sys.executable
    token = secrets.token_hex(16)
    devnet_url = f"http://127.0.0.1:{base_port + 100}"
    store_url = f"http://127.0.0.1:{base_port + 101}"
    devnet = Member("devnet", "devnet", devnet_url, "/admin/status", [
        py, "-c", "from deploy.devnet import main; main()", "--port", str(base_port + 100),
        "--db", str(data_dir / "devnet.sqlite"), "--block-interval-ms", str(block_interval_ms)],
        {"DEVNET_AUTH_TOKEN": token},  # in the environment, not on the command line (ps shows argv)
        {"Authorization": f"Bearer {token}"})
    ids = [f"coordinator-{i}" for i in range(n)]
    keys = [bytes(identity.load_or_create(data_dir / cid).verify_key).hex() for cid in ids]
    store_key = bytes(identity.load_or_create(data_dir / "blobstore").verify_key).hex()
    store = Member("emergency-da", "blobstore", store_url, "/quorum/v1/health", [
        py, "-c", "from deploy.blobstore import main; main()", "--port", str(base_port + 101),
        "--data-dir", str(data_dir / "blobstore")], {"BLOBSTORE_WRITERS": ",".join(keys)}, key=store_key,
        key_path="/quorum/v1/health")
    urls = [f"http://127.0.0.1:{base_port + i}" for i in range(n)]
    peers = ",".join(f"{cid}={key}@127.0.0.1:{base_port + 200 + i}" for i, (cid, key) in enumerate(zip(ids, keys,
                                                                                                       strict=True)))
    common = {
        "USE_MOCK_DA": "false", "DA_RPC_URL": devnet_url, "DA_AUTH_TOKEN": token, "DA_NETWORK": "local",
        "DA_STORAGE_WINDOW_S": "0",  # (the devnet never prunes: its empty heights are empty, however old)
        "DA_NAMESPACE": namespace_from_name("dsdn-local-cluster").hex(), "DA_TIMEOUT_MS": "5000",
        "DA_RETRY_COUNT": "1", "DA_RETRY_DELAY_MS": "200", "DA_HEALTH_INTERVAL_MS": "1000",
        "ENABLE_FALLBACK": "true", "FALLBACK_DA_TYPE": "quorum", "QUORUM_VALIDATORS": ",".join(urls),
        "QUORUM_VALIDATOR_KEYS": ",".join(keys), "QUORUM_VALIDATOR": "true", "EMERGENCY_DA_URL": store_url,
        "EMERGENCY_DA_KEY": store_key,
        "CLUSTER_PEERS": peers, "CLUSTER_ID": "dsdn-local", "PEER_HEARTBEAT_MS": "500",
        "PUBLISH_INTERVAL_MS": "50", "QUORUM_SIGNATURE_TIMEOUT_MS": "2000",
        "RECONCILE_PARALLEL": "true", "RECONCILE_RETRY_DELAY_MS": "500",
    }
    coordinators = [
        Member("coordinator", cid, url, "/ready", [py, "-m", "deploy.coordinator"],
               {**common, "COORDINATOR_ID": cid, "COORDINATOR_PORT": str(base_port + i),
                "PEER_PORT": str(base_port + 200 + i),
                "COORDINATOR_DATA_DIR": str(data_dir / cid)}, key=key, key_path="/system/info")
        for i, (cid, url, key) in enumerate(zip(ids, urls, keys, strict=True))
    ]
    return [devnet, store, *coordinators]


class Output:
    """The launcher's output, its children's included: lines go to stdout through one task that writes in a worker
    thread, so a terminal that stops reading (Ctrl-S, ``make run | less`` not scrolled) blocks that thread alone.
    Before, the launcher printed from its event loop: it froze, SIGTERM went unheard, the children's pipes filled
    and the coordinators stopped answering (a reviewer's reproduction). Lines past OUTPUT_LINES waiting are
    dropped and counted; a closed stdout (EPIPE) drops the rest instead of stopping the cluster."""

    def __init__(self, fd: int = 1) -> None:
        self.fd, self.dropped, self.closed = fd, 0, False
        self._send, self._recv = trio.open_memory_channel[str](OUTPUT_LINES)
        self._written = trio.Event()  # every line taken was written (or dropped) and no more come

    def say(self, line: str) -> None:
        try:
            self._send.send_nowait(line)
        except (trio.WouldBlock, trio.ClosedResourceError):
            self.dropped += 1

    async def run(self) -> None:
        async for line in self._recv:
            lines = [line]
            with contextlib.suppress(trio.WouldBlock, trio.EndOfChannel):
                while len(lines) < 1000:
                    lines.append(self._recv.receive_nowait())
            if self.dropped:
                lines.insert(0, f"[cluster] ({self.dropped} lines of output dropped: stdout was not read)")
                self.dropped = 0
            if not self.closed:
                await trio.to_thread.run_sync(self._write, ("\n".join(lines) + "\n").encode(errors="replace"),
                                              abandon_on_cancel=True)
        self._written.set()

    def _write(self, data: bytes) -> None:
        try:
            while data:
                data = data[os.write(self.fd, data):]
        except OSError:  # stdout closed (EPIPE) or gone: the cluster runs on without it
            self.closed = True

    async def drain(self, timeout_s: float = 2.0) -> None:
        """Stop taking lines and write what is waiting, for at most ``timeout_s``."""
        self._send.close()
        with trio.move_on_after(timeout_s):
            await self._written.wait()


def _print(line: str) -> None:
    print(line, flush=True)


class Lines(Protocol):
    """Where a child's output lines go (``Output``; dsdn nemesis reads them as they come)."""

    def say(self, line: str) -> None: ...


async def _pump(member: Member, stream: trio.abc.ReceiveStream, output: Lines | None) -> None:
    """Copy a child's output to ours, one prefixed line at a time (printed at once without ``output``)."""
    say = output.say if output is not None else _print
    buffer = b""
    width = 16
    async for chunk in stream:
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            say(f"[{member.id:<{width}}] {line.decode(errors='replace')}")
    if buffer:
        say(f"[{member.id:<{width}}] {buffer.decode(errors='replace')}")


async def _start(nursery: trio.Nursery, member: Member, output: Lines | None = None) -> None:
    inherited = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
    env = {**inherited, "PYTHONUNBUFFERED": "1", STOP_AT_STDIN_EOF: "1", **member.env}
    # A session of its own: Ctrl-C in the terminal reaches only us, and we stop the children in order. Its stdin is a
    # pipe we hold and never write to: if we die (kill -9), it closes and the child stops (node.process).
    member.process = await trio.lowlevel.open_process(member.argv, env=env, stdout=subprocess.PIPE,
                                                      stderr=subprocess.STDOUT, stdin=subprocess.PIPE,
                                                      start_new_session=True)
    assert member.process.stdout is not None
    nursery.start_soon(_pump, member, member.process.stdout, output)


async def _wait_ready(member: Member, http: httpx.AsyncClient, say: Callable[[str], None] = _print) -> None:
    """Until ``member`` answers ready. It may take READY_TIMEOUT_S without progress: a coordinator rebuilding from DA
    (its /ready 503 carries ``progress``) is waited for as long as a log still catching up reads further
    (``_catching_up``), its ETA said every PROGRESS_SAY_S (the whole cluster was stopped after 60 s of a rebuild that
    said it needed 132: a reviewer's reproduction)."""
    deadline = trio.current_time() + READY_TIMEOUT_S
    best: dict[str, int] = {}  # the furthest cursor seen of each log still catching up
    said = trio.current_time()
    while trio.current_time() < deadline:
        if member.process is not None and member.process.returncode is not None:
            raise RuntimeError(f"{member.id} exited with code {member.process.returncode}")
        try:
            answer = await http.get(member.url + member.ready_path, headers=member.headers)
            if answer.status_code == 200:
                _check_identity(member, await http.get(member.url + member.key_path) if member.key else None)
                if member.key is None and member.headers:  # (the devnet: its token, new each run, is its identity)
                    _check_token_known(member, await http.get(member.url + member.ready_path,
                                                              headers={"Authorization": "Bearer not-the-token"}))
                member.ready = True
                return
            progress = _progress(answer)
            if progress is not None:
                if _catching_up(progress, best):
                    deadline = trio.current_time() + READY_TIMEOUT_S
                if trio.current_time() - said >= PROGRESS_SAY_S:
                    said = trio.current_time()
                    eta = progress.get("eta_s")
                    say(f"[cluster] {member.id} is rebuilding its state from DA: {progress.get('events_applied')} "
                        f"events applied, ETA {f'{eta:.0f}s' if isinstance(eta, int | float) else 'unknown'}")
        except httpx.TransportError:
            pass
        await trio.sleep(0.1)
    raise RuntimeError(f"{member.id} not ready after {READY_TIMEOUT_S:.0f}s without progress "
                       f"({member.url}{member.ready_path})")


def _catching_up(progress: dict[str, Any], best: dict[str, int]) -> bool:
    """Whether a log still catching up has read further than ever before (``best``: each one's furthest cursor).
    A caught-up log's cursor follows its head, and events keep coming while one log is stuck: counted, they kept a
    member that never got ready waited for, for ever (the regression review's run)."""
    logs = progress.get("logs")
    moved = False
    for name, log in (logs.items() if isinstance(logs, dict) else ()):
        cursor = log.get("cursor") if isinstance(log, dict) and not log.get("caught_up") else None
        if type(cursor) is int and cursor > best.get(name, -1):
            moved = moved or name in best  # (the first sight of a log is no progress yet)
            best[name] = cursor
    return moved


def _progress(answer: httpx.Response) -> dict[str, Any] | None:
    """The rebuild progress a 503 from /ready carries, if any."""
    try:
        body = answer.json()
    except ValueError:
        return None
    progress = body.get("progress") if isinstance(body, dict) else None
    return progress if isinstance(progress, dict) else None


def _check_token_known(member: Member, answer: httpx.Response) -> None:
    """Raise RuntimeError unless ``answer`` (to a request with a wrong token) refuses it: a server that takes any
    token is not the member started with this run's token (another devnet on its port passed the readiness probe
    while this one could not bind, and the coordinators read its chain; a reviewer's reproduction)."""
    if answer.status_code != 401:
        raise RuntimeError(f"{member.id}: another server answers at {member.url} (it takes a wrong token: not the "
                           f"{member.role} started now): is its port taken?")


def _check_identity(member: Member, answer: httpx.Response | None) -> None:
    """Raise RuntimeError unless ``answer`` (to ``member.key_path``) names the member's key (None: nothing to
    check)."""
    if answer is None:
        return
    try:
        body = answer.json()
    except ValueError:
        body = None
    named = body.get("public_key") if isinstance(body, dict) else None
    if answer.status_code != 200 or named != member.key:
        raise RuntimeError(f"{member.id}: another server answers at {member.url} (its {member.key_path} names "
                           f"{'key ' + str(named)[:16] + '…' if named else 'no key'}, not this member's): is its "
                           f"port taken?")


async def _stop(members: list[Member], hurry: trio.Event, output: Output | None = None) -> None:
    """SIGTERM, wait, then SIGKILL what is left; coordinators first, the DA services last. Once ``hurry`` is set
    (Ctrl-C again), what is still running is killed at once."""
    say = output.say if output is not None else _print
    if any(m.process is not None and m.process.returncode is None for m in members) and not hurry.is_set():
        say(f"[cluster] stopping: each process stops gracefully (up to {STOP_TIMEOUT_S:.0f}s); a second Ctrl-C or "
            "SIGTERM kills what is left")
    for group in (
        [m for m in members if m.role == "coordinator"],
        [m for m in members if m.role != "coordinator"],
    ):
        for m in group:
            if m.process is not None and m.process.returncode is None:
                m.process.send_signal(signal.SIGKILL if hurry.is_set() else signal.SIGTERM)
        with trio.move_on_after(STOP_TIMEOUT_S) as waiting:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_cancel_when_set, hurry, waiting)
                for m in group:
                    if m.process is not None:
                        await m.process.wait()
                nursery.cancel_scope.cancel()
        for m in group:
            if m.process is not None and m.process.returncode is None:
                why = "a second stop signal" if hurry.is_set() else f"it did not stop in {STOP_TIMEOUT_S:.0f}s"
                say(f"[cluster] killing {m.id} ({why})")
                m.process.kill()
                await m.process.wait()


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (it holds the devnet's auth token), whole or not at all: a reader
    polling for it never sees half of it."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def table(members: list[Member]) -> str:
    rows = [f"{'role':<14} {'id':<16} {'pid':>7}  {'url':<28} ready"]
    for m in members:
        pid = m.process.pid if m.process else "-"
        rows.append(f"{m.role:<14} {m.id:<16} {pid:>7}  {m.url:<28} {'yes' if m.ready else 'no'}")
    return "\n".join(rows)


def _check_chain_kept(data_dir: Path) -> None:
    """RuntimeError if coordinators hold state read from a devnet chain that is gone: their cursors were past the
    new chain's head, which read as caught up; once it grew past them, its first heights (other members' writes)
    were never read, and the states diverged for good, every status saying Healthy (a reviewer's reproduction)."""
    if (data_dir / "devnet.sqlite").exists():
        return
    holding = sorted(d.name for d in data_dir.glob("coordinator-*")
                     if (d / "snapshot.msgpack").exists() or (d / "outbox.sqlite").exists())
    if holding:
        raise RuntimeError(f"{', '.join(holding)} hold state read from a devnet chain that is gone ({data_dir}/"
                           f"devnet.sqlite is missing): a new chain would never be read from its start. Put that very "
                           f"file back, or remove {data_dir} to start afresh")


async def run_cluster(n: int, base_port: int, data_dir: Path, block_interval_ms: int = 500,
                      *, task_status: trio.TaskStatus[list[Member]] = trio.TASK_STATUS_IGNORED) -> None:
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # (created 755: every local user read its databases)
    _check_chain_kept(data_dir)
    members = plan(n, base_port, data_dir, block_interval_ms)
    stop, hurry = trio.Event(), trio.Event()
    output = Output()
    info = data_dir / "cluster.json"
    info.unlink(missing_ok=True)  # a previous run's: its pids and devnet token are stale (pollers took it as ours)
    async with trio.open_nursery() as outside:
        outside.start_soon(output.run)
        try:
            if n == 1:  # (its /cluster/status said the DKG failed, and nothing said why earlier)
                output.say("[cluster] one coordinator runs no DKG: it keeps the registry but signs no receipts "
                           "(-n 2 or more for receipts)")
            ignored = sorted(k for k in NOT_INHERITED if k in os.environ)
            if ignored:
                output.say(f"[cluster] ignoring {', '.join(ignored)} from the environment: the local cluster sets "
                           "its own")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stop_on_signals, stop, hurry)
                try:
                    with trio.CancelScope() as startup:  # Ctrl-C during start-up stops at once, not after it
                        nursery.start_soon(_cancel_when_set, stop, startup)
                        async with httpx.AsyncClient(timeout=2.0) as http:
                            for m in members[:2]:  # the DA services first
                                await _start(nursery, m, output)
                            for m in members[:2]:
                                await _wait_ready(m, http, output.say)
                            for m in members[2:]:
                                await _start(nursery, m, output)
                            for m in members[2:]:
                                await _wait_ready(m, http, output.say)
                    if stop.is_set():
                        return
                    write_info = partial(_write_cluster_json, info, data_dir, members)
                    write_info()
                    output.say("\n" + table(members) + f"\n\ncluster.json: {info}\nPress Ctrl-C to stop.\n")
                    task_status.started(members)
                    mark_started()
                    await _wait_for_stop_or_exit(stop, members, output, write_info)
                finally:
                    with trio.CancelScope(shield=True):
                        await _stop(members, hurry, output)
                    nursery.cancel_scope.cancel()
        finally:
            info.unlink(missing_ok=True)
            output.say("[cluster] stopped")
            with trio.CancelScope(shield=True):
                await output.drain()
            outside.cancel_scope.cancel()


async def _cancel_when_set(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


def _write_cluster_json(info: Path, data_dir: Path, members: list[Member]) -> None:
    _write_private(info, json.dumps({"data_dir": str(data_dir), "processes": [m.record() for m in members]},
                                    indent=2) + "\n")


async def _wait_for_stop_or_exit(stop: trio.Event, members: list[Member], output: Output,
                                 write_info: Callable[[], None] = lambda: None) -> None:
    """Until Ctrl-C; a member that exits is reported (and cluster.json rewritten: its pid null, its exit code
    beside; a stale pid there could be another process's by now) and the others keep running (so faults can be
    studied), except the DA services, without which the cluster cannot work."""
    reported: set[str] = set()
    while not stop.is_set():
        for m in members:
            if m.process is None or m.process.returncode is None or m.id in reported:
                continue
            if m.role != "coordinator":
                raise RuntimeError(f"{m.id} exited unexpectedly with code {m.process.returncode}")
            reported.add(m.id)
            output.say(f"[cluster] {m.id} exited with code {m.process.returncode}; the others keep running")
            try:
                write_info()
            except OSError as exc:
                output.say(f"[cluster] cannot update cluster.json: {exc}")
        with trio.move_on_after(0.5):
            await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="dsdn cluster up", description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=4, help="number of coordinators (default 4: one may crash or lie)")
    parser.add_argument("--base-port", type=int, default=8080,
                        help="coordinator i serves on base-port + i, its peer links on base-port + 200 + i; the devnet "
                             "on base-port + 100, the blob store on base-port + 101")
    parser.add_argument("--data-dir", type=Path, default=Path(".dsdn/cluster"))
    parser.add_argument("--block-interval-ms", type=int, default=500)
    args = parser.parse_args(argv)
    if not 1 <= args.n <= MAX_MEMBERS:
        parser.error(f"-n must be from 1 to {MAX_MEMBERS} (node.config.MAX_MEMBERS)")
    if not 1 <= args.block_interval_ms <= 3_600_000:
        parser.error("--block-interval-ms must be from 1 to 3600000")
    if not 1 <= args.base_port <= 65535 - 200 - args.n:
        parser.error("--base-port must leave room for base-port + 200 + n (the peer ports)")
    data_dir = args.data_dir.resolve()  # (cluster.json's entries must start a member again from any folder)
    lock_data("dsdn cluster", data_dir / ".lock")
    run_process("dsdn cluster", run_cluster, args.n, args.base_port, data_dir, args.block_interval_ms)
