"""A real local cluster (``dsdn cluster up``): devnet + emergency blob store + 3 coordinators, each a
quorum validator. Replication, a devnet outage under write load, a devnet + QuorumDA outage (the
emergency path), and a coordinator rebuilt from an empty data dir. Every process and socket is real."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import nacl.signing
import pytest
import trio

from consensus import keystore
from deploy.cluster import free_base_port
from node import identity
from tests.test_dkg_service import sign_with

BLOCK_MS = 500


def sign_with_key_stores(data_dirs: list[Path], message: bytes) -> bytes:
    """A FROST signature of ``message`` by the key shares kept in these coordinators' data folders (each decrypted
    with its identity key, as its process does)."""
    return sign_with([keystore.load(d / "keyshare.bin", identity=identity.load_or_create(d)) for d in data_dirs],
                     message)


class Cluster:
    def __init__(self, data_dir: Path, log_path: Path, n: int = 3) -> None:
        self.data_dir, self.log_path, self.n = data_dir, log_path, n
        self.base = free_base_port(n)
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}
        self.extra: list[subprocess.Popen[bytes]] = []  # processes a test started besides the launcher's

    def start(self) -> None:
        log = open(self.log_path, "wb")  # noqa: SIM115 - the child owns it for its lifetime
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from deploy.cli import main; main()", "cluster", "up", "-n", str(self.n),
             "--base-port", str(self.base), "--data-dir", str(self.data_dir), "--block-interval-ms", str(BLOCK_MS)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()

    async def wait_up(self, timeout: float = 60) -> None:
        path = self.data_dir / "cluster.json"
        with trio.move_on_after(timeout):
            while not path.exists():
                assert self.proc is not None and self.proc.poll() is None, self.log()
                await trio.sleep(0.1)
            self.info = json.loads(path.read_text())
            return
        raise AssertionError(f"cluster not up after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-20000:]

    def process(self, pid_of: str) -> dict[str, Any]:
        return next(p for p in self.info["processes"] if p["id"] == pid_of)

    @property
    def coordinators(self) -> list[str]:
        return [p["url"] for p in self.info["processes"] if p["role"] == "coordinator"]

    async def devnet_fault(self, http: httpx.AsyncClient, mode: str) -> None:
        devnet = self.process("devnet")
        token = devnet["env"]["DEVNET_AUTH_TOKEN"]
        r = await http.post(f"{devnet['url']}/admin/fault", json={"mode": mode},
                            headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        return self.proc.returncode


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path / "cluster", tmp_path / "cluster.log")
    c.start()
    yield c
    try:
        code = c.stop()
    finally:  # also when the launcher did not stop cleanly: a failed run left its extra coordinator running
        for extra in c.extra:
            if extra.poll() is None:
                extra.terminate()
                extra.wait(20)
    assert code == 0, f"the cluster did not stop cleanly (exit {code}):\n{c.log()}"
    assert "[cluster] stopped" in c.log()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


async def until(what: str, check: Any, timeout: float = 60.0, cluster: Cluster | None = None) -> float:
    """Poll the async predicate ``check`` until true; return the seconds it took."""
    start = trio.current_time()
    with trio.move_on_after(timeout):
        while not await check():
            await trio.sleep(0.05)
        return trio.current_time() - start
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f"\n{cluster.log()}" if cluster else ""))


async def status(http: httpx.AsyncClient, url: str) -> dict[str, Any]:
    return (await http.get(f"{url}/fallback/status")).json()


async def converged(http: httpx.AsyncClient, urls: list[str], ids: list[str]) -> bool:
    """Every coordinator Healthy with nothing pending, the same root, and every id present."""
    roots = set()
    for url in urls:
        st = await status(http, url)
        root = (await http.get(f"{url}/state/root")).json()
        if st["status"] != "Healthy" or st["pending_reconcile_count"] or root["pending"]:
            return False
        roots.add(root["root"])
    if len(roots) != 1:
        return False
    nodes = {n["id"] for n in (await http.get(f"{urls[-1]}/nodes")).json()}
    return set(ids) <= nodes


async def _all_have(http: httpx.AsyncClient, urls: list[str], node_id: str) -> bool:
    return all([(await http.get(f"{u}/node/{node_id}")).status_code == 200 for u in urls])


async def write_during(http: httpx.AsyncClient, url: str, prefix: str, seconds: float) -> list[str]:
    """Register nodes on ``url`` for ``seconds``; return the ids whose write was acknowledged (200)."""
    acked = []
    deadline = trio.current_time() + seconds
    i = 0
    while trio.current_time() < deadline:
        node_id = f"{prefix}-{i}"
        r = await http.post(f"{url}/register", json={"id": node_id, "zone": f"z{i % 3}", "addr": "10.0.0.1:5000"})
        assert r.status_code == 200, r.text  # a DA outage never fails a write: the outbox is durable
        acked.append(node_id)
        i += 1
        await trio.sleep(0.05)
    return acked


async def test_cluster_replicates_survives_outages_and_rebuilds(cluster: Cluster, http: httpx.AsyncClient,
                                                                tmp_path: Path) -> None:
    await cluster.wait_up()
    c0, c1, c2 = cluster.coordinators
    for url in cluster.coordinators:
        assert (await http.get(f"{url}/ready")).status_code == 200
        assert (await http.get(f"{url}/quorum/v1/health")).json()["ok"] is True

    # 0. Peer links: a full mesh, and node stats posted on one coordinator reach the others over it.
    async def mesh() -> bool:
        for url in cluster.coordinators:
            peers = (await http.get(f"{url}/cluster/peers")).json()
            if sorted(p["state"] for p in peers) != ["up", "up"]:
                return False
        return True

    await until("a full mesh of peer links", mesh, 30, cluster)
    peers = (await http.get(f"{c0}/cluster/peers")).json()
    assert {p["id"] for p in peers} == {"coordinator-1", "coordinator-2"}
    assert all(p["rtt_ms"] is not None and p["messages_in"] > 0 and p["errors"] == 0 for p in peers)
    await http.post(f"{c0}/register", json={"id": "worker", "zone": "z", "addr": "10.0.0.9:1"})
    await until("worker registered everywhere", lambda: _all_have(http, cluster.coordinators, "worker"), 10)
    stats = {"cpu_free": 0.9, "ram_free_mb": 4096.0, "gpu_free": 0.0, "latency_ms": 3.0, "io_pressure": 0.1}
    assert (await http.post(f"{c0}/node/worker/stats", json=stats)).status_code == 200

    async def stats_everywhere() -> bool:
        got = [(await http.get(f"{u}/node/worker/stats")).json() for u in (c1, c2)]
        return all(g["found"] and g["stats"] == stats for g in got)

    took = await until("stats to reach the other coordinators", stats_everywhere, 5, cluster)
    print(f"\nstats reached both peers in {took * 1000:.0f} ms")
    assert (await http.post(f"{c2}/schedule", json={"cpu_req": 0.5})).json() == {"node_id": "worker"}

    # The DKG starts by itself once the mesh is up: one group key; the key shares in the three data dirs
    # (encrypted key stores) sign a message any Ed25519 verifier accepts.
    async def keyed() -> bool:
        statuses = [(await http.get(f"{u}/cluster/status")).json() for u in cluster.coordinators]
        return all(st["dkg"]["state"] == "complete" for st in statuses) and len(
            {st["group_public_key"] for st in statuses}) == 1

    took = await until("the DKG to complete on every coordinator", keyed, 60, cluster)
    key_status = (await http.get(f"{c1}/cluster/status")).json()
    print(f"DKG complete on all three in {took:.2f}s: group key {key_status['group_public_key'][:16]}…, "
          f"{key_status['threshold']}-of-{len(key_status['members'])}")
    assert key_status["threshold"] == 3 and all(m["verifying_share"] for m in key_status["members"])
    assert (await http.post(f"{c0}/cluster/dkg", json={})).status_code == 409  # a key exists
    signature = sign_with_key_stores([cluster.data_dir / f"coordinator-{i}" for i in range(3)], b"usage receipt")
    nacl.signing.VerifyKey(bytes.fromhex(key_status["group_public_key"])).verify(b"usage receipt", signature)

    # a coordinator killed with SIGKILL and started again is relinked
    c2_proc = cluster.process("coordinator-2")
    os.kill(c2_proc["pid"], signal.SIGKILL)

    async def marked_exited() -> bool:  # (its pid could be another process's by now)
        entry = next(p for p in json.loads((cluster.data_dir / "cluster.json").read_text())["processes"]
                     if p["id"] == "coordinator-2")
        return entry["pid"] is None and entry["exited"] == -signal.SIGKILL

    await until("cluster.json to say c2 exited", marked_exited, 10, cluster)

    async def c2_down_on_c0() -> bool:
        return any(p["id"] == "coordinator-2" and p["state"] != "up"
                   for p in (await http.get(f"{c0}/cluster/peers")).json())

    await until("c0 to see c2 down", c2_down_on_c0, 15, cluster)
    with open(cluster.log_path.with_name("c2-restarted.log"), "wb") as log:
        restarted = subprocess.Popen([sys.executable, "-m", "deploy.coordinator"], env={**os.environ, **c2_proc["env"]},
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    cluster.extra.append(restarted)
    c2_proc["pid"] = restarted.pid  # the steps below pause and resume the new process

    async def relinked() -> bool:
        try:
            return await mesh()
        except httpx.TransportError:
            return False

    took = await until("c2 to be relinked after its restart", relinked, 30, cluster)
    print(f"restarted coordinator relinked in {took:.2f}s")
    restarted_status = (await http.get(f"{c2}/cluster/status")).json()
    assert restarted_status["group_public_key"] == key_status["group_public_key"]  # its key share was kept

    async def stats_on_c2() -> bool:  # sent at link-up; merged once c2 has replayed the worker's registration
        return bool((await http.get(f"{c2}/node/worker/stats")).json()["found"])

    await until("the restarted c2 to catch up on stats", stats_on_c2, 5, cluster)

    # 1. Replication: a node registered on one coordinator appears on the others within two blocks.
    delays = []
    for i in range(5):
        await http.post(f"{c0}/register", json={"id": f"rep-{i}", "zone": "z", "addr": "10.0.0.1:1"})

        async def everywhere(node: str = f"rep-{i}") -> bool:
            codes = [(await http.get(f"{u}/node/{node}")).status_code for u in (c1, c2)]
            return codes == [200, 200]

        delays.append(await until(f"rep-{i} on every coordinator", everywhere, 10, cluster))
    print(f"\nreplication delays (s): {[round(d, 3) for d in delays]}")
    assert statistics.median(delays) <= 2 * BLOCK_MS / 1000

    # 2. The devnet goes down for several health intervals while c0 takes writes.
    await cluster.devnet_fault(http, "down")
    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        acked: list[str] = []

        async def load() -> None:
            acked.extend(await write_during(http, c0, "outage", 5.0))

        nursery.start_soon(load)

        async def degraded() -> bool:
            return (await status(http, c0))["status"] == "Degraded"

        failover = await until("c0 to fail over to the QuorumDA", degraded, 20, cluster)
    pending = (await status(http, c0))["pending_reconcile_count"]
    assert pending > 0
    await cluster.devnet_fault(http, "ok")
    recovery = await until("convergence after the devnet outage", lambda: converged(http, cluster.coordinators,
                                                                                  acked), 90, cluster)
    report = (await http.get(f"{c0}/fallback/consistency")).json()
    assert report["is_consistent"] and report["items_verified"] >= pending
    print(f"devnet outage: {len(acked)} writes acknowledged, failover after {failover:.2f}s, {pending} blobs on "
          f"the QuorumDA, reconciled and converged {recovery:.2f}s after the devnet came back "
          f"(outage began {trio.current_time() - started:.1f}s ago)")

    # 3. The devnet and the QuorumDA down (c1, c2 paused: only 1 of 3 validators answers): emergency path.
    pids = [cluster.process(f"coordinator-{i}")["pid"] for i in (1, 2)]
    await cluster.devnet_fault(http, "down")
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        async with trio.open_nursery() as nursery:
            acked2: list[str] = []

            async def load2() -> None:
                acked2.extend(await write_during(http, c0, "emergency", 6.0))

            nursery.start_soon(load2)

            async def emergency() -> bool:
                return (await status(http, c0))["status"] == "Emergency"

            to_emergency = await until("c0 to reach Emergency", emergency, 30, cluster)
        pending2 = (await status(http, c0))["pending_reconcile_count"]
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    await cluster.devnet_fault(http, "ok")
    recovery2 = await until("convergence after the emergency", lambda: converged(
        http, cluster.coordinators, acked + acked2), 120, cluster)
    report = (await http.get(f"{c0}/fallback/consistency")).json()
    assert report["is_consistent"], report
    print(f"devnet + QuorumDA outage: {len(acked2)} writes acknowledged, Emergency after {to_emergency:.2f}s, "
          f"{pending2} fallback blobs pending, converged {recovery2:.2f}s after recovery")

    # 4. A coordinator started with an empty data dir rebuilds the same root from devnet + fallbacks.
    env = {**os.environ, **cluster.process("coordinator-2")["env"]}
    port = free_base_port(1)
    env.update(COORDINATOR_ID="rebuilt", COORDINATOR_PORT=str(port), COORDINATOR_DATA_DIR=str(tmp_path / "rebuilt"),
               QUORUM_VALIDATOR="false", CLUSTER_PEERS="", PEER_PORT="")  # an outsider: no peer links
    members = cluster.process("coordinator-0")["env"]["CLUSTER_PEERS"]
    env["CLUSTER_MEMBER_KEYS"] = ",".join(m.split("=")[1].split("@")[0] for m in members.split(","))
    with open(tmp_path / "rebuilt.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "deploy.coordinator"], env=env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"

        async def same_root() -> bool:
            try:
                mine = (await http.get(f"{url}/state/root")).json()["root"]
            except httpx.TransportError:
                return False
            return mine == (await http.get(f"{c0}/state/root")).json()["root"]

        took = await until("the rebuilt coordinator to reach the same root", same_root, 60)
        async def ready() -> bool:
            return (await http.get(f"{url}/ready")).status_code == 200

        took_ready = await until("the rebuilt coordinator to be ready (every log read to its head)", ready, 60)
        assert await same_root()
        print(f"rebuilt from an empty data dir: same root after {took:.2f}s, ready after {took + took_ready:.2f}s")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0


def test_cluster_ports_are_never_ones_the_kernel_gives_outgoing_connections() -> None:
    """An outgoing connection's local port comes from the ephemeral range; a member port chosen there can be
    taken between the check and the member's bind (seen in CI: a coordinator could not start)."""
    from deploy.cluster import ephemeral_port_range, free_port

    low, high = ephemeral_port_range()
    assert all(not low <= free_port() <= high for _ in range(50))
    for n in (1, 4, 7):
        for _ in range(50):
            base = free_base_port(n)
            ports = [*range(base, base + n), base + 100, base + 101, *range(base + 200, base + 200 + n)]
            assert all(not low <= port <= high for port in ports), (base, low, high)


def test_cluster_up_by_default_plans_4_coordinators_whose_dkg_threshold_is_3(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`dsdn cluster up` with no -n: 4 coordinators (one may crash or lie), and the configuration each of them
    loads gives the DKG threshold floor(2n/3) + 1 = 3. No process is started: the command's arguments are caught
    where it would run the cluster, and its plan is loaded as each coordinator would load its environment."""
    from consensus.dkg import default_threshold, threshold_refusal
    from deploy import cluster as cluster_mod
    from node import config as config_mod

    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(cluster_mod, "run_process", lambda name, fn, *args: calls.append((fn, *args)))
    cluster_mod.main(["--data-dir", str(tmp_path)])
    [(fn, n, base_port, data_dir, block_interval_ms)] = calls
    assert fn is cluster_mod.run_cluster and n == 4 and data_dir == tmp_path
    members = cluster_mod.plan(n, base_port, data_dir, block_interval_ms)
    coordinators = [m for m in members if m.role == "coordinator"]
    assert [m.id for m in coordinators] == [f"coordinator-{i}" for i in range(4)]
    for member in coordinators:
        cfg = config_mod.load(member.env)  # as deploy/coordinator.py loads it (its environment is the plan's)
        assert cfg.coordinator_id == member.id and len({p.id for p in cfg.peers}) == 4
        # deploy/coordinator.py hands cfg.dkg_threshold to the DKG service, which falls back to the default
        threshold = cfg.dkg_threshold or default_threshold(len(cfg.peers))
        assert threshold == 3
        assert threshold_refusal(4, 3, cfg.dkg_threshold) is None  # a session of 3 is accepted, 2 refused
        assert threshold_refusal(4, 2, cfg.dkg_threshold) is not None


async def test_ctrl_c_twice_stops_every_process_of_the_cluster_at_once(tmp_path: Path) -> None:
    """A request whose body never comes holds coordinator-0's graceful stop up; Ctrl-C again kills what still runs
    and the launcher ends normally. Before, the second Ctrl-C was a KeyboardInterrupt in the middle of the stop:
    a traceback, and the devnet and blob store left running, holding their ports (the next `cluster up` failed)."""
    c = Cluster(tmp_path / "cluster", tmp_path / "cluster.log", n=2)
    c.start()
    try:
        await c.wait_up()
        pids = [p["pid"] for p in c.info["processes"]]
        host, port = c.coordinators[0].removeprefix("http://").split(":")
        stream = await trio.open_tcp_stream(host, int(port))
        await stream.send_all(b"POST /register HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                              b"Content-Length: 100\r\n\r\n{")
        await trio.sleep(0.3)
        assert c.proc is not None
        c.proc.send_signal(signal.SIGINT)
        await trio.sleep(0.5)
        c.proc.send_signal(signal.SIGINT)
        with trio.fail_after(10):
            while c.proc.poll() is None:
                await trio.sleep(0.05)
        assert c.proc.returncode == 0 and "Traceback" not in c.log() and "[cluster] stopped" in c.log()
        assert "(a second stop signal)" in c.log() and "[cluster] stopping: each process stops gracefully" in c.log()
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)  # gone (reaped by the launcher)
        await stream.aclose()
    finally:
        c.stop()


async def test_a_launcher_killed_with_minus_9_takes_its_children_down_and_the_folder_is_locked(
        tmp_path: Path) -> None:
    """kill -9 (or the OOM killer, or a lost ssh session's SIGHUP before it was handled) ended the launcher and left
    the devnet, blob store and coordinators running on their ports: the next `cluster up` failed (a reviewer's
    reproduction). Each child's stdin is a pipe the launcher holds: it closes with the launcher, and the child stops.
    And a second launcher on the same folder refuses to start while the first runs."""
    c = Cluster(tmp_path / "cluster", tmp_path / "cluster.log", n=1)
    c.start()
    try:
        await c.wait_up()
        second = subprocess.run([sys.executable, "-c", "from deploy.cli import main; main()", "cluster", "up", "-n",
                                 "1", "--base-port", str(free_base_port(1)), "--data-dir", str(c.data_dir)],
                                capture_output=True, timeout=60)
        assert second.returncode == 1 and b"another process uses" in second.stderr
        children = [p["pid"] for p in c.info["processes"]]
        assert c.proc is not None
        c.proc.kill()
        c.proc.wait()
        with trio.fail_after(30):
            while True:
                alive = []
                for pid in children:
                    try:
                        os.kill(pid, 0)
                        alive.append(pid)
                    except ProcessLookupError:
                        pass
                if not alive:
                    break
                await trio.sleep(0.1)
    finally:
        c.stop()


async def test_a_launcher_whose_output_is_not_read_keeps_the_cluster_serving_and_stops_on_sigterm(
        tmp_path: Path) -> None:
    """The launcher printed its children's lines from its event loop: with its stdout not read (Ctrl-S, `| less`
    not scrolled) it froze, heard no SIGTERM, and the children, their own pipes full, stopped answering (a reviewer's
    reproduction). Lines now wait in a bounded queue and are dropped past it. An inherited CLUSTER_CONFIG (another
    cluster's) no longer overrides the local cluster's members either: every coordinator refused to start. A
    relative --data-dir is recorded in cluster.json resolved (its entries start a member again from any folder)."""
    data = tmp_path / "cluster"
    base = free_base_port(1)
    proc = subprocess.Popen(
        [sys.executable, "-c", "from deploy.cli import main; main()", "cluster", "up", "-n", "1", "--base-port",
         str(base), "--data-dir", "cluster"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, start_new_session=True, cwd=tmp_path,
        env={**os.environ, "LOG_LEVEL": "DEBUG", "CLUSTER_CONFIG": str(Path("deploy/cluster.example.toml").resolve())})
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    seen = b""
    try:
        with trio.fail_after(90):
            while not (data / "cluster.json").exists():
                assert proc.poll() is None, seen.decode(errors="replace")[-3000:]
                seen += proc.stdout.read() or b""
                await trio.sleep(0.05)
        seen += proc.stdout.read() or b""
        assert b"ignoring CLUSTER_CONFIG" in seen and b"signs no receipts" in seen
        info = json.loads((data / "cluster.json").read_text())
        url = next(p["url"] for p in info["processes"] if p["role"] == "coordinator")
        assert info["data_dir"] == str(data.resolve()) and all(Path(p["env"]["COORDINATOR_DATA_DIR"]).is_absolute()
                                                               for p in info["processes"] if p["role"] == "coordinator")
        async with httpx.AsyncClient(timeout=3) as http:
            for _ in range(15):  # the launcher's stdout is not read from now on: its pipe fills within a second
                await trio.sleep(1)
                assert (await http.get(f"{url}/health")).status_code == 200
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            while proc.poll() is None:
                await trio.sleep(0.1)
        assert proc.returncode == 0 and not (data / "cluster.json").exists()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.parametrize("command", [
    ["cluster", "up", "--data-dir", "{blocked}/sub"],
    ["blobstore", "--data-dir", "{blocked}/sub"],
    ["devnet", "--db", "{blocked}/sub/devnet.sqlite"],
])
def test_a_data_folder_that_cannot_be_made_is_one_clear_line(tmp_path: Path, command: list[str]) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("in the way")
    argv = [part.format(blocked=blocked) for part in command]
    result = subprocess.run([sys.executable, "-c", "from deploy.cli import main; main()", *argv],
                            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "cannot use the data folder" in result.stderr and str(blocked) in result.stderr


def test_a_port_is_never_handed_out_twice_before_it_is_bound() -> None:
    """A test asks for three peers' ports before binding any: the same free port given twice made a peer fail to
    bind (``Address already in use``, seen in a full test run). Ports handed out are not handed out again."""
    from deploy import cluster
    from deploy.cluster import free_port

    cluster._HANDED_OUT.clear()
    ports = [free_port() for _ in range(2000)]
    assert len(set(ports)) == len(ports)
    base = free_base_port(4)
    assert not {base + offset for offset in (0, 1, 2, 3, 100, 101, 200, 201, 202, 203)} & set(ports)
    cluster._HANDED_OUT.clear()  # (the later tests of this process have the whole range again)


async def test_a_member_is_ready_only_when_the_server_answering_is_that_member() -> None:
    """Another server on a coordinator's port (a leftover coordinator, a dev server answering 200 on any path)
    passed the readiness probe while the coordinator could not bind: the launcher said "ready" and wrote its URL
    into cluster.json (a reviewer's reproduction). The answer must name the member's key."""
    from deploy.cluster import Member, _wait_ready

    key = "ab" * 32
    answers = {"key": "cd" * 32}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"ready": True, "public_key": answers["key"]})

    member = Member("coordinator", "coordinator-0", "http://127.0.0.1:1", "/ready", [], key=key,
                    key_path="/system/info")
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        with pytest.raises(RuntimeError, match=r"another server answers at http://127\.0\.0\.1:1 .*port taken"):
            await _wait_ready(member, http)
        assert not member.ready
        answers["key"] = key
        await _wait_ready(member, http)
        assert member.ready


async def test_the_devnet_is_ready_only_when_the_server_answering_knows_this_runs_token() -> None:
    """Another devnet on the devnet's port (started by hand, without a token) passed the readiness probe while the
    launcher's could not bind: the coordinators read that chain, and kept its cursors (a reviewer's reproduction).
    The devnet has no key: it must refuse a wrong token."""
    from deploy.cluster import Member, _wait_ready

    token = {"value": None}

    def handler(request: httpx.Request) -> httpx.Response:
        if token["value"] is not None and request.headers.get("Authorization") != f"Bearer {token['value']}":
            return httpx.Response(401, json={"error": "unauthorized"})
        return httpx.Response(200, json={"height": 1})

    member = Member("devnet", "devnet", "http://127.0.0.1:1", "/admin/status", [],
                    headers={"Authorization": "Bearer t0k3n"})
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        with pytest.raises(RuntimeError, match=r"another server answers at http://127\.0\.0\.1:1 .*port taken"):
            await _wait_ready(member, http)
        assert not member.ready
        token["value"] = "t0k3n"
        await _wait_ready(member, http)
        assert member.ready


@pytest.mark.parametrize("argv, says", [
    (["devnet", "--max-blob-bytes", "0"], "--max-blob-bytes must be from 1 to"),
    (["devnet", "--max-blob-bytes", str(2**40)], "--max-blob-bytes must be from 1 to"),
    (["cluster", "up", "--block-interval-ms", "0"], "--block-interval-ms must be from 1 to"),
])
def test_launcher_limits_are_checked_up_front(argv: list[str], says: str, tmp_path: Path) -> None:
    """A devnet with --max-blob-bytes 0 or less refused every blob; ``cluster up --block-interval-ms 0`` answered
    with the devnet's usage text (reviewers' finds)."""
    result = subprocess.run([sys.executable, "-c", "from deploy.cli import main; main()", *argv, *(
        ["--db", str(tmp_path / "d.sqlite")] if argv[0] == "devnet" else ["--data-dir", str(tmp_path / "c")])],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 2 and says in result.stderr and "Traceback" not in result.stderr


def test_coordinators_holding_state_of_a_devnet_chain_that_is_gone_do_not_start(tmp_path: Path) -> None:
    """devnet.sqlite removed, the coordinators' data kept: their cursors were past the new chain's head, which read
    as caught up; once it grew past them its first heights were never read, and the states diverged for good,
    every status saying Healthy (a reviewer's reproduction)."""
    data = tmp_path / "cluster"
    (data / "coordinator-1").mkdir(parents=True)
    (data / "coordinator-1" / "outbox.sqlite").write_bytes(b"")
    result = subprocess.run([sys.executable, "-c", "from deploy.cli import main; main()", "cluster", "up",
                             "--data-dir", str(data), "--base-port", "23000"],
                            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "coordinator-1 hold state read from a devnet chain that is gone" in result.stderr
    assert not (data / "devnet.sqlite").exists()
