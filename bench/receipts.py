"""Receipt consensus benchmark: a real local cluster (``dsdn cluster up -n 5``: devnet, emergency blob store,
5 coordinator processes on loopback, t = 4) signing compute receipts submitted over HTTP.

Measured in the same run:
1. Floors: the in-process FROST signing of one batch message by t signers (commit, sign, aggregate and one
   Ed25519 verification), the peer links' heartbeat RTT (/cluster/peers) between the coordinators, and the HTTP
   floor: ``GET /health`` by the same submitters with the same concurrency, round-robin over the coordinators (the
   most requests per second these clients and servers exchange on this machine, with no consensus at all).
   And the idle cluster's CPU (every process, 10 s before any receipt): the background load each receipt
   competes with on these 2-core machines.
2. Latency: 200 receipts one at a time (``POST /receipts?wait_ms=``, round-robin over the coordinators),
   p50/p99 from request to the signed document, as a lean client sees it: a minimal HTTP/1.1 client on one
   kept-alive connection per coordinator (what wrk, curl or a Go/Rust client cost: next to nothing). The same
   with httpx is printed beside it, in alternating blocks of the same run: the difference is httpx's own CPU
   time per request on this machine, not the cluster's.
3. Throughput: N receipts by C concurrent submitters (each POST waits for its signed document), receipts final per
   second. Each submitter is a lean client of its own, as for the latency: one httpx client shared by 64 tasks
   spent most of each request in its own connection pool (880 ms of a 1.2 s mean before the server saw the
   request; 40 receipts/s where lean clients got 120-150), so it measured httpx, not the cluster; its HTTP floor
   is printed beside the lean one; then the same through ``POST /receipts/batch`` (B receipts per request, C/8
   concurrent submitters: an aggregator reporting for many nodes), where the HTTP cost per receipt no longer
   dominates.
4. Resources: each coordinator's open file descriptors and RSS before and after both throughput runs (a leak of
   one descriptor per client connection showed up so).
Goals (issue 9): p50 ≤ 15 ms, p99 ≤ 50 ms, ≥ 1,000 receipts/s final. Run ``python -m bench.receipts``
(``--receipts N --concurrency C``); the cluster runs in a temporary directory and is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import nacl.signing
import trio

from bench._common import say, title, verdict
from consensus import frost
from consensus import receipts as rc
from deploy.cluster import free_base_port

N_COORDINATORS = 5
NODES = 16


def frost_floor(t: int, n: int, rounds: int = 50) -> float:
    """Seconds for one t-of-n FROST signature of a batch message, all parties in one process."""
    keys = frost.trusted_dealer_key_shares(n, t)
    group = keys[1].group_public_key
    message = rc.batch_message(group, secrets.token_bytes(32), 256)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        signers = list(keys.values())[:t]
        nonces, commitments = {}, {}
        for k in signers:
            nonces[k.identifier], commitments[k.identifier] = frost.commit(k.secret_share)
        shares = {k.identifier: frost.sign(k.identifier, k.secret_share, group, nonces[k.identifier], message,
                                           commitments) for k in signers}
        frost.aggregate_or_blame(commitments, message, group, shares, keys[1].verifying_shares)
        times.append(time.perf_counter() - t0)
        frost.clear_session_cache()
    return statistics.median(times)


def compute_receipt(key: nacl.signing.SigningKey, node: str, epoch: int) -> dict[str, Any]:
    workload = secrets.token_hex(32)
    return rc.sign_as_node(key, receipt_type="compute", node_id=node, subject=workload, epoch=epoch,
                           usage_proof_hash=secrets.token_hex(32),
                           execution_commitment=[workload, *(secrets.token_hex(32) for _ in range(5))],
                           reward_base=1000, submitter_address="ab" * 20, timestamp=int(time.time())).to_json()


class LeanHttp:
    """A minimal HTTP/1.1 client: one kept-alive connection per server, JSON bodies, Content-Length responses.
    A connection that fails or answers in a way this client does not read is closed (the next request opens
    a new one), and the error raised."""

    def __init__(self, timeout_s: float = 60.0) -> None:
        self.streams: dict[str, trio.SocketStream] = {}
        self.timeout_s = timeout_s

    async def post_json(self, url: str, target: str, body: Any) -> tuple[int, bytes]:
        return await self.request(url, "POST", target, json.dumps(body).encode())

    async def request(self, url: str, method: str, target: str, data: bytes | None = None) -> tuple[int, bytes]:
        """(status, body) of one request (a JSON body when ``data`` is given)."""
        stream = self.streams.get(url)
        try:
            with trio.fail_after(self.timeout_s):
                if stream is None:  # trio sets TCP_NODELAY on its TCP streams
                    u = urlsplit(url)
                    stream = self.streams[url] = await trio.open_tcp_stream(u.hostname or "127.0.0.1", u.port or 80)
                return await self._exchange(stream, url, method, target, data)
        except BaseException:
            if self.streams.pop(url, None) is not None:
                with trio.CancelScope(shield=True):
                    await stream.aclose()  # type: ignore[union-attr]
            raise

    @staticmethod
    async def _exchange(stream: trio.SocketStream, url: str, method: str, target: str,
                        data: bytes | None) -> tuple[int, bytes]:
        head = f"{method} {target} HTTP/1.1\r\nHost: {urlsplit(url).netloc}\r\n"
        if data is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
        await stream.send_all((head + "\r\n").encode() + (data or b""))

        async def more(buf: bytes) -> bytes:
            chunk = await stream.receive_some(65536)
            if not chunk:
                raise ConnectionError(f"{url} closed the connection mid-response")
            return buf + chunk

        buf = b""
        while b"\r\n\r\n" not in buf:
            buf = await more(buf)
        head, rest = buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        length = next((int(v) for k, _, v in (line.partition(":") for line in lines[1:])
                       if k.strip().lower() == "content-length"), None)
        if length is None:
            raise ConnectionError(f"{url} answered without Content-Length: {lines[0]}")
        while len(rest) < length:
            rest = await more(rest)
        return int(lines[0].split()[1]), rest

    async def aclose(self) -> None:
        for stream in self.streams.values():
            await stream.aclose()
        self.streams.clear()


def resources(pid: int) -> tuple[int, float] | None:
    """(open file descriptors, resident MiB) of a process (Linux /proc), None where that cannot be read."""
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        rss_kib = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                       if line.startswith("VmRSS:"))
    except (OSError, StopIteration, ValueError):
        return None
    return fds, rss_kib / 1024


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds a process has used so far (Linux /proc), None where that cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def idle_cpu(processes: list[dict[str, Any]], seconds: float = 10.0) -> None:
    """Print the CPU the idle cluster uses (health checks, long polls, heartbeats): the background every
    receipt competes with on this 2-core machine."""
    before = {p["id"]: cpu_seconds(p["pid"]) for p in processes}
    await trio.sleep(seconds)
    used: dict[str, float] = {}
    for p in processes:
        after, start = cpu_seconds(p["pid"]), before[p["id"]]
        if after is None or start is None:
            say("idle CPU: not measured (no /proc here)")
            return
        used[p["id"]] = (after - start) / seconds * 1000
    coordinators = [ms for pid, ms in used.items() if pid.startswith("coordinator")]
    others = ", ".join(f"{pid} {ms:.0f}" for pid, ms in used.items() if not pid.startswith("coordinator"))
    say(f"idle CPU over {seconds:g} s: {sum(used.values()):.0f} ms/s in all ({sum(used.values()) / 10:.0f}% of one "
        f"core): coordinators {min(coordinators):.0f}–{max(coordinators):.0f} ms/s each, {others} ms/s")


async def timed(worker: Callable[[list[Any]], Awaitable[None]], work: list[Any], workers: int) -> float:
    """Seconds for ``workers`` concurrent ``worker`` tasks to get through ``work`` (dealt round-robin)."""
    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for c in range(workers):
            nursery.start_soon(worker, work[c::workers])
    return time.perf_counter() - t0


async def signed_batches(http: httpx.AsyncClient, urls: list[str]) -> int:
    """Batches signed so far, over every coordinator."""
    return sum([(await http.get(f"{u}/cluster/status")).json()["receipts"]["batches"] for u in urls])


async def run(receipts: int, concurrency: int, sequential: int, bulk: int) -> None:
    with tempfile.TemporaryDirectory(prefix="dsdn-bench-receipts-") as tmp:
        data = Path(tmp) / "cluster"
        base = free_base_port(N_COORDINATORS)
        log = open(Path(tmp) / "cluster.log", "wb")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen([sys.executable, "-m", "deploy.cli", "cluster", "up", "-n", str(N_COORDINATORS),
                                 "--base-port", str(base), "--data-dir", str(data)],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, "LOG_LEVEL": "WARNING"})
        try:
            await measure(data, receipts, concurrency, sequential, bulk)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
            log.close()


async def measure(data: Path, receipts: int, concurrency: int, sequential: int, bulk: int) -> None:
    with trio.fail_after(90):
        while not (data / "cluster.json").exists():
            await trio.sleep(0.2)
    info = json.loads((data / "cluster.json").read_text())
    urls = [p["url"] for p in info["processes"] if p["role"] == "coordinator"]
    limits = httpx.Limits(max_connections=concurrency + 8, max_keepalive_connections=concurrency + 8)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        with trio.fail_after(90):
            while True:
                keys = {(await http.get(f"{u}/cluster/status")).json()["group_public_key"] for u in urls}
                if len(keys) == 1 and None not in keys:
                    break
                await trio.sleep(0.2)
        status = (await http.get(f"{urls[0]}/cluster/status")).json()
        t, group = status["threshold"], bytes.fromhex(status["group_public_key"])
        title(f"receipts: {len(urls)} coordinator processes, t = {t}, group key {status['group_public_key'][:16]}…")
        node_keys = {f"bn{i}": nacl.signing.SigningKey(bytes([i + 1]) * 32) for i in range(NODES)}
        for node, key in node_keys.items():
            r = await http.post(f"{urls[0]}/register", json={"id": node, "zone": "z", "addr": "h:1",
                                                               "public_key": bytes(key.verify_key).hex()})
            r.raise_for_status()
        with trio.fail_after(30):
            while len({(await http.get(f"{u}/state/root")).json()["root"] for u in urls}) > 1:
                await trio.sleep(0.1)
        await idle_cpu(info["processes"])
        epoch = int(time.time() // 3600) + 1
        rtts = [p["rtt_ms"] for u in urls for p in (await http.get(f"{u}/cluster/peers")).json()
                if p["rtt_ms"] is not None]
        floor = frost_floor(t, len(urls))
        say(f"floor: FROST {t}-of-{len(urls)} signing in one process {floor * 1000:.2f} ms; "
            f"peer heartbeat RTT p50 {statistics.median(rtts):.2f} ms (over {len(rtts)} links)")

        # warm-up, then sequential latency
        names = list(node_keys)
        for k in range(10):
            node = names[k % NODES]
            (await http.post(f"{urls[k % len(urls)]}/receipts", params={"wait_ms": 10000},
                             json=compute_receipt(node_keys[node], node, epoch))).raise_for_status()
        lean = LeanHttp()
        latencies: dict[str, list[float]] = {"lean": [], "httpx": []}
        block = max(1, sequential // 4)  # alternating blocks: both clients see the same machine, drift included
        for k in range(2 * sequential):
            client = "lean" if (k // block) % 2 == 0 else "httpx"
            if len(latencies[client]) == sequential:
                client = "httpx" if client == "lean" else "lean"
            node = names[k % NODES]
            body = compute_receipt(node_keys[node], node, epoch)
            url = urls[k % len(urls)]
            t0 = time.perf_counter()
            if client == "lean":
                status, text = await lean.post_json(url, "/receipts?wait_ms=10000", body)
            else:
                r = await http.post(f"{url}/receipts", params={"wait_ms": 10000}, json=body)
                status, text = r.status_code, r.content
            latencies[client].append(time.perf_counter() - t0)
            if status != 200:
                raise RuntimeError(f"receipt not final: {status} {text[:300]!r}")
        await lean.aclose()
        percentiles = {}
        for client, times in latencies.items():
            times.sort()
            percentiles[client] = (times[len(times) // 2], times[int(len(times) * 0.99) - 1])
        p50, p99 = percentiles["lean"]
        say(f"sequential: {sequential} receipts, p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms "
            f"({p50 / floor:.1f}× the FROST floor), minimal HTTP/1.1 client")
        x50, x99 = percentiles["httpx"]
        say(f"sequential: {sequential} receipts, p50 {x50 * 1000:.1f} ms, p99 {x99 * 1000:.1f} ms with httpx, in "
            f"alternating blocks of {block} (its own cost per request: {(x50 - p50) * 1000:+.1f} ms at the median)")

        # the HTTP floor: requests per second with no work behind them; each submitter a lean client of its own
        # (httpx's connection pool shared by 64 tasks is itself the bottleneck: its floor is printed beside)
        health_done = 0

        async def health_submitter(items: list[str]) -> None:
            nonlocal health_done
            client = LeanHttp()
            try:
                for url in items:
                    status, text = await client.request(url, "GET", "/health")
                    if status != 200:
                        raise RuntimeError(f"GET /health answered {status}: {text[:200]!r}")
                    health_done += 1
            finally:
                await client.aclose()

        async def httpx_health_submitter(items: list[str]) -> None:
            for url in items:
                (await http.get(f"{url}/health")).raise_for_status()

        http_floor = receipts / await timed(health_submitter, [urls[k % len(urls)] for k in range(receipts)],
                                            concurrency)
        few = receipts // 3
        httpx_floor = few / await timed(httpx_health_submitter, [urls[k % len(urls)] for k in range(few)],
                                        concurrency)
        say(f"HTTP floor: {health_done} GET /health by {concurrency} concurrent submitters = {http_floor:.0f} "
            f"requests/s (one httpx client shared by them: {httpx_floor:.0f} requests/s)")

        # throughput
        bodies = [(urls[k % len(urls)], compute_receipt(node_keys[names[k % NODES]], names[k % NODES], epoch))
                  for k in range(receipts)]
        done, failed = 0, 0
        documents: list[tuple[dict[str, Any], bytes]] = []  # (receipt sent, what its 200 carried): checked after

        async def submitter(items: list[tuple[str, dict[str, Any]]]) -> None:
            nonlocal done, failed
            client = LeanHttp()
            try:
                for url, body in items:
                    status, text = await client.post_json(url, "/receipts?wait_ms=30000", body)
                    if status == 200:
                        done += 1
                        documents.append((body, text))
                    else:
                        failed += 1
            finally:
                await client.aclose()

        coordinators = [p for p in info["processes"] if p["role"] == "coordinator"]
        held = {p["id"]: resources(p["pid"]) for p in coordinators}
        before = await signed_batches(http, urls)
        elapsed = await timed(submitter, bodies, concurrency)
        rate = done / elapsed
        batches = await signed_batches(http, urls) - before
        say(f"throughput: {done} final ({failed} not) by {concurrency} concurrent submitters in {elapsed:.2f} s "
            f"= {rate:.0f} receipts/s ({rate / http_floor:.2f}× the HTTP floor); {batches} batches (mean "
            f"{done / max(batches, 1):.1f} receipts each)")

        # throughput, bulk submission
        bulk_bodies = [compute_receipt(node_keys[names[k % NODES]], names[k % NODES], epoch) for k in range(receipts)]
        chunks = [bulk_bodies[i:i + bulk] for i in range(0, len(bulk_bodies), bulk)]
        bulk_done = bulk_failed = 0
        bulk_documents: list[tuple[dict[str, Any], Any]] = []  # (receipt sent, its document)

        async def bulk_submitter(items: list[tuple[str, list[dict[str, Any]]]]) -> None:
            nonlocal bulk_done, bulk_failed
            client = LeanHttp()
            try:
                for url, chunk in items:
                    status, text = await client.post_json(url, "/receipts/batch?wait_ms=30000", {"receipts": chunk})
                    results = json.loads(text)["results"] if status == 200 else []
                    statuses = [e["status"] for e in results]
                    bulk_documents.extend((r, e.get("document")) for r, e in zip(chunk, results, strict=False)
                                          if e["status"] == "final")
                    bulk_done += statuses.count("final")
                    bulk_failed += len(chunk) - statuses.count("final")
            finally:
                await client.aclose()

        submitters = max(1, concurrency // 8)
        work = [(urls[i % len(urls)], c) for i, c in enumerate(chunks)]
        before = await signed_batches(http, urls)
        elapsed = await timed(bulk_submitter, work, submitters)
        bulk_rate = bulk_done / elapsed
        batches = await signed_batches(http, urls) - before
        say(f"bulk throughput: {bulk_done} final ({bulk_failed} not) in requests of {bulk} by {submitters} "
            f"concurrent submitters in {elapsed:.2f} s = {bulk_rate:.0f} receipts/s; {batches} batches (mean "
            f"{bulk_done / max(batches, 1):.1f} receipts each)")
        # what the coordinators hold after 2 × N receipts from 64 + 8 clients that closed their connections: open
        # file descriptors should come back to where they were (a leak of one per client connection was found so)
        await trio.sleep(1.0)
        after = {p["id"]: resources(p["pid"]) for p in coordinators}
        if all(held.values()) and all(after.values()):
            say("coordinators before → after both throughput runs: open fds "
                + ", ".join(f"{held[k][0]}→{after[k][0]}" for k in held)  # type: ignore[index]
                + "; RSS MiB " + ", ".join(f"{held[k][1]:.0f}→{after[k][1]:.0f}" for k in held))  # type: ignore[index]
        # "final" is what the server says: every document counted is checked here as a verifier would check it
        # (node signature, Merkle path, the group's Ed25519 signature under the cluster's key), off the clock
        # and each is the document of the receipt that was sent, each receipt counted once (an audit: a document of
        # another receipt, or the same one twice, passed)
        def sound_document(sent: dict[str, Any], doc: Any) -> bool:
            return (isinstance(doc, dict) and doc.get("receipt_id") == rc.from_json(sent).id.hex()
                    and rc.verify_document(doc, group)[0])

        pairs = [(sent, json.loads(text)) for sent, text in documents] + bulk_documents
        checked = [sound_document(sent, doc) for sent, doc in pairs]
        ids = [doc.get("receipt_id") for _, doc in pairs if isinstance(doc, dict)]
        checked += [False] * (len(ids) - len(set(ids)))  # (each id seen twice or more: one bad per extra copy)
        bad = checked.count(False)
        say(f"documents counted as final, verified against the group key and matched to the receipt sent (each "
            f"once): {len(checked) - bad} valid, {bad} not"
            + ("" if t == 4 else f"; NOTE: t = {t}, the issue's setting is t = 4"))
        sound = bad == 0 and t == 4
        verdict("receipt latency p50 ≤ 15 ms", p50 <= 0.015 and sound, f"{p50 * 1000:.1f} ms")
        verdict("receipt latency p99 ≤ 50 ms", p99 <= 0.050 and sound, f"{p99 * 1000:.1f} ms")
        verdict("receipts final ≥ 1,000/s (one receipt per POST)", rate >= 1000 and failed == 0 and sound,
                f"{rate:.0f}/s, {failed} not final")
        verdict("receipts final ≥ 1,000/s (POST /receipts/batch)", bulk_rate >= 1000 and bulk_failed == 0 and sound,
                f"{bulk_rate:.0f}/s, {bulk_failed} not final")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--receipts", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--sequential", type=int, default=200)
    parser.add_argument("--bulk", type=int, default=128, help="receipts per POST /receipts/batch")
    args = parser.parse_args()
    trio.run(run, args.receipts, args.concurrency, args.sequential, args.bulk)


if __name__ == "__main__":
    main()
