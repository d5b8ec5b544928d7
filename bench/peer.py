"""Peer-link benchmark: two PeerManagers in two processes against raw trio-websocket between the same two.

The parent (client, manager "a") spawns a child (``--serve``, manager "b" plus a bare trio-websocket echo
server) so that both sides are separate processes sharing the cores, like real coordinators. Every
message carries the same ~200-byte body (the stack notes' 217-byte message). Measured for ours (envelope +
schema checks + XChaCha20-Poly1305 + dispatcher) and for raw (plain msgpack frames, no handshake, no
encryption; one-way, up to MAX_BATCH messages per frame, as a busy link of ours packs them) in 8 interleaved
rounds, the order alternating (the machine is shared, its load drifts):

1. Round trip: 500 warm-up + 5,000 measured request/response pairs (``PeerManager.request`` answered by an
   ``on_request`` handler; raw: ping-pong); p50/p99 over all rounds.
2. One-way: the client sends 20,000 messages (``PeerManager.send``; when the bounded queue is full it
   sleeps 1 ms and retries, counted), the server acknowledges once it has the last one; msgs/s =
   N / (first send .. ack). Goal: ours ≥ 70 % of raw msgs/s (median of the per-round ratios ours/raw).

Run it as ``python -m bench.peer``; ``--serve RAW_PORT PORT_A PORT_B PUBKEY_A`` (internal) is the child,
which reads the hex signing key of "b" from ``BENCH_PEER_KEY_B`` and exits when its stdin closes.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import nacl.signing
import trio
from trio_websocket import (
    ConnectionClosed,
    HandshakeError,
    WebSocketConnection,
    WebSocketRequest,
    open_websocket_url,
    serve_websocket,
)

from bench._common import say, title, verdict
from deploy.cluster import free_port
from protocol.dispatch import Inbox
from protocol.envelope import Message, Registry, is_bytes, is_int, is_str
from protocol.handshake import Handshake
from protocol.manager import MAX_BATCH, Member, PeerManager

HOST = "127.0.0.1"
CLUSTER = "bench"
ROUNDS = 8
WARMUP_RTT, RTT_N, ONEWAY_N, WARMUP_ONEWAY = 500, 5_000, 20_000, 2_000
RETRY_SLEEP_S = 0.001
REQ, RESP, DATA, ACK = "bench.req", "bench.resp", "bench.data", "bench.ack"
KEY_ENV = "BENCH_PEER_KEY_B"
DIGEST, SIG, PAYLOAD = bytes(range(32)), bytes(range(64)), bytes(range(48))
SCHEMA = {"i": is_int(), "view": is_int(), "seq": is_int(), "from": is_str(), "kind": is_str(),
          "digest": is_bytes(32), "sig": is_bytes(64), "payload": is_bytes(48)}


def body(i: int, n: int, kind: str = "data") -> dict[str, Any]:
    """The benchmark message; ``i`` of ``n`` (the server acknowledges when ``i == n - 1``)."""
    return {"i": i, "view": n, "seq": 1_234_567, "from": "coordinator-0", "kind": kind,
            "digest": DIGEST, "sig": SIG, "payload": PAYLOAD}


def make_registry() -> Registry:
    r = Registry()
    for type_ in (REQ, RESP, DATA):
        r.register(type_, SCHEMA)
    r.register(ACK, {"count": is_int()})
    return r


def members(port_a: int, pub_a: bytes, port_b: int, pub_b: bytes) -> list[Member]:
    return [Member("a", pub_a, HOST, port_a), Member("b", pub_b, HOST, port_b)]


# ---- the server (child process) -----------------------------------------------------------------------


async def raw_handler(request: WebSocketRequest) -> None:
    ws = await request.accept()
    count = 0
    try:
        while True:
            frame = msgpack.unpackb(await ws.get_message())
            if isinstance(frame, dict) and frame["kind"] == "ping":
                await ws.send_message(msgpack.packb(frame))
                continue
            for obj in frame:  # one-way: a batch of messages per frame, as our links send them
                count = 1 if obj["i"] == 0 else count + 1
                if obj["i"] == obj["view"] - 1:
                    await ws.send_message(msgpack.packb({"kind": "ack", "count": count}))
    except ConnectionClosed:
        pass


async def serve(raw_port: int, port_a: int, port_b: int, pub_a: bytes, key_b: nacl.signing.SigningKey) -> None:
    mgr = PeerManager("b", key_b, CLUSTER, members(port_a, pub_a, port_b, bytes(key_b.verify_key)),
                      make_registry(), port=port_b)

    async def echo(_peer: str, msg_body: dict[str, Any]) -> dict[str, Any]:
        return msg_body

    async def count_ours() -> None:
        count = 0
        async for peer, msg in data:
            count = 1 if msg.body["i"] == 0 else count + 1
            if msg.body["i"] == msg.body["view"] - 1:
                mgr.send(peer, ACK, {"count": count})

    mgr.on_request(REQ, RESP, echo)
    data = mgr.subscribe(DATA)
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: serve_websocket(raw_handler, HOST, raw_port, ssl_context=None,
                                                                task_status=task_status))
        await nursery.start(mgr.run)  # once "a" sees "b" up, the raw server listens too
        nursery.start_soon(count_ours)
        while await stdin.receive_some():  # the parent closes our stdin (or dies): stop
            pass
        nursery.cancel_scope.cancel()


# ---- the client (parent process) ----------------------------------------------------------------------


@dataclass
class Results:
    rtt_us: dict[str, list[float]] = field(default_factory=lambda: {"raw": [], "ours": []})
    msgs_s: dict[str, list[float]] = field(default_factory=lambda: {"raw": [], "ours": []})
    cpu_us: dict[str, list[tuple[float, float]]] = field(default_factory=lambda: {"raw": [], "ours": []})
    blocked: list[int] = field(default_factory=list)
    lost: int = 0


def cpu_s(pid: int | None = None) -> float:
    """User + system CPU seconds of this process, or of ``pid`` (Linux /proc)."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def raw_rtt(ws: WebSocketConnection, n: int) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter_ns()
        await ws.send_message(msgpack.packb(body(i, n, "ping")))
        msgpack.unpackb(await ws.get_message())
        out.append((time.perf_counter_ns() - t0) / 1e3)
    return out


async def ours_rtt(mgr: PeerManager, n: int) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter_ns()
        await mgr.request("b", REQ, body(i, n, "ping"), timeout_s=5, expect=RESP)
        out.append((time.perf_counter_ns() - t0) / 1e3)
    return out


async def raw_oneway(ws: WebSocketConnection, n: int) -> tuple[float, int]:
    """Up to MAX_BATCH messages per frame, as a busy peer link packs them (one frame per message made raw ~20×
    slower per message than its frames allow, and the ratio a measure of batching, not of our envelope, encryption
    and dispatcher: an audit)."""
    t0 = time.perf_counter()
    for start in range(0, n, MAX_BATCH):
        await ws.send_message(msgpack.packb([body(i, n) for i in range(start, min(n, start + MAX_BATCH))]))
    with trio.fail_after(30):
        ack = msgpack.unpackb(await ws.get_message())
    return n / (time.perf_counter() - t0), n - ack["count"]


async def ours_oneway(mgr: PeerManager, acks: Inbox,
                      n: int) -> tuple[float, int, int]:
    blocked = 0
    t0 = time.perf_counter()
    for i in range(n):
        msg = body(i, n)
        while not mgr.send("b", DATA, msg):
            blocked += 1
            await trio.sleep(RETRY_SLEEP_S)
    with trio.fail_after(30):
        _, ack = await acks.receive()
    return n / (time.perf_counter() - t0), n - ack.body["count"], blocked


class Terminated(Exception):
    pass


async def raise_on_sigterm() -> None:
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async for _ in signals:
            raise Terminated("SIGTERM")


async def client(child: subprocess.Popen[bytes], raw_port: int, port_a: int, port_b: int,
                 key_a: nacl.signing.SigningKey, pub_b: bytes) -> Results:
    res = Results()
    mgr = PeerManager("a", key_a, CLUSTER, members(port_a, bytes(key_a.verify_key), port_b, pub_b),
                      make_registry(), port=port_a)
    acks = mgr.subscribe(ACK)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(raise_on_sigterm)
        await nursery.start(mgr.run)
        with trio.fail_after(30):
            while "b" not in mgr.up_peers():
                if child.poll() is not None:
                    raise RuntimeError(f"the server process exited with code {child.returncode}")
                await trio.sleep(0.05)
        async with open_websocket_url(f"ws://{HOST}:{raw_port}/") as ws:
            await raw_rtt(ws, WARMUP_RTT)
            await ours_rtt(mgr, WARMUP_RTT)
            await raw_oneway(ws, WARMUP_ONEWAY)
            await ours_oneway(mgr, acks, WARMUP_ONEWAY)
            for r in range(ROUNDS):
                for name in ("raw", "ours") if r % 2 == 0 else ("ours", "raw"):  # alternate: load drifts
                    n = RTT_N // ROUNDS
                    res.rtt_us[name] += await (raw_rtt(ws, n) if name == "raw" else ours_rtt(mgr, n))
                    c0, s0 = cpu_s(), cpu_s(child.pid)
                    if name == "raw":
                        rate, lost = await raw_oneway(ws, ONEWAY_N)
                    else:
                        rate, lost, blocked = await ours_oneway(mgr, acks, ONEWAY_N)
                        res.blocked.append(blocked)
                    res.cpu_us[name].append(((cpu_s() - c0) / ONEWAY_N * 1e6,
                                             (cpu_s(child.pid) - s0) / ONEWAY_N * 1e6))
                    res.msgs_s[name].append(rate)
                    res.lost += lost
        nursery.cancel_scope.cancel()
    return res


# ---- report -------------------------------------------------------------------------------------------


def per_msg_us(fn: Callable[[Any], object], arg: object, n: int = 20_000) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn(arg)
    return (time.perf_counter() - t0) / n * 1e6


def cost_breakdown() -> str:
    """CPU µs per message of each step ours adds, measured in this process."""
    keys = {i: nacl.signing.SigningKey.generate() for i in "ab"}
    pubs = {i: bytes(k.verify_key) for i, k in keys.items()}
    a = Handshake(dialer=True, my_id="a", identity=keys["a"], cluster=CLUSTER, members=pubs, expect="b")
    b = Handshake(dialer=False, my_id="b", identity=keys["b"], cluster=CLUSTER, members=pubs)
    welcome, rx = b.receive_auth(a.receive_challenge(b.receive_hello(a.hello())))
    tx = a.receive_welcome(welcome)
    reg, msg = make_registry(), Message(DATA, body(1, 2))
    frame = reg.encode(msg)
    sealed = [tx.seal(frame) for _ in range(20_000)]
    it = iter(sealed)
    steps = {"msgpack.packb": per_msg_us(msgpack.packb, msg.body),
             "msgpack.unpackb": per_msg_us(msgpack.unpackb, msgpack.packb(msg.body)),
             "Registry.encode": per_msg_us(reg.encode, msg), "Registry.decode": per_msg_us(reg.decode, frame),
             "Session.seal": per_msg_us(tx.seal, frame), "Session.open": per_msg_us(lambda _: rx.open(next(it)), 0)}
    return ", ".join(f"{k} {v:.2f}" for k, v in steps.items())


def report(res: Results) -> bool:
    raw_size = len(msgpack.packb(body(1, ONEWAY_N)))
    ours_size = len(make_registry().encode(Message(DATA, body(1, ONEWAY_N)))) + 16
    title(f"Results: {ROUNDS} interleaved rounds (order alternating), each {RTT_N // ROUNDS} round trips and "
          f"{ONEWAY_N:,} one-way messages per side")
    say(f"message: raw {raw_size} B msgpack; ours {ours_size} B on the wire (envelope + 16-byte AEAD tag)")
    rtt: dict[str, tuple[float, float]] = {}
    rate: dict[str, float] = {}
    for name in ("raw", "ours"):
        rtt[name] = statistics.median(res.rtt_us[name]), statistics.quantiles(res.rtt_us[name], n=100)[98]
        rate[name] = statistics.median(res.msgs_s[name])
        client_cpu = statistics.median(c for c, _ in res.cpu_us[name])
        server_cpu = statistics.median(s for _, s in res.cpu_us[name])
        say(f"{name:<4}  RTT p50 {rtt[name][0]:4.0f} µs, p99 {rtt[name][1]:5.0f} µs ({len(res.rtt_us[name]):,} round "
            f"trips) | one-way median {rate[name]:7,.0f} msgs/s, rounds {min(res.msgs_s[name]):,.0f}.."
            f"{max(res.msgs_s[name]):,.0f} | CPU per one-way msg: client {client_cpu:.1f} µs, server "
            f"{server_cpu:.1f} µs")
    paired = sorted(o / r for o, r in zip(res.msgs_s["ours"], res.msgs_s["raw"], strict=True))
    ratio = statistics.median(paired)
    say(f"ratios ours/raw: RTT p50 {rtt['ours'][0] / rtt['raw'][0]:.2f}×, p99 {rtt['ours'][1] / rtt['raw'][1]:.2f}×; "
        f"one-way msgs/s: median of the per-round ratios {ratio:.0%} (rounds {paired[0]:.0%}..{paired[-1]:.0%}), "
        f"ratio of the medians {rate['ours'] / rate['raw']:.0%}")
    say(f"ours: send() returned False (queue full, slept {RETRY_SLEEP_S * 1e3:.0f} ms) "
        f"{', '.join(map(str, res.blocked))} times per {ONEWAY_N:,} messages; messages lost: {res.lost}")
    say(f"CPU µs per message, in-process: {cost_breakdown()}")
    return verdict("ours ≥ 70 % of raw trio-websocket one-way msgs/s (median of the per-round ratios)",
                   ratio >= 0.70 and res.lost == 0,
                   f"{ratio:.0%}{'' if res.lost == 0 else f', {res.lost} messages lost'}")


# ---- processes ----------------------------------------------------------------------------------------



def stop(proc: subprocess.Popen[bytes]) -> None:
    """Close its stdin (it exits by itself), then SIGTERM, then SIGKILL."""
    if proc.stdin is not None:
        proc.stdin.close()
    try:
        proc.wait(2)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def main() -> int:
    if len(sys.argv) == 6 and sys.argv[1] == "--serve":
        raw_port, port_a, port_b = map(int, sys.argv[2:5])
        key_b = nacl.signing.SigningKey(bytes.fromhex(os.environ.pop(KEY_ENV)))
        trio.run(serve, raw_port, port_a, port_b, bytes.fromhex(sys.argv[5]), key_b)
        return 0
    say(__doc__.split("\n\n")[0] if __doc__ else "")

    def on_term(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    key_a, key_b = nacl.signing.SigningKey.generate(), nacl.signing.SigningKey.generate()
    raw_port, port_a, port_b = free_port(), free_port(), free_port()
    t0 = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "bench.peer", "--serve", str(raw_port), str(port_a), str(port_b),
                              bytes(key_a.verify_key).hex()], stdin=subprocess.PIPE, start_new_session=True,
                             env={**os.environ, KEY_ENV: bytes(key_b).hex()})
    try:
        res = trio.run(client, child, raw_port, port_a, port_b, key_a, bytes(key_b.verify_key))
    except BaseException as exc:  # trio wraps what it raises in (nested) exception groups
        leaves = _leaves(exc)
        if stop_by := next((e for e in leaves if isinstance(e, Terminated | SystemExit | KeyboardInterrupt)), None):
            say(f"stopped by {type(stop_by).__name__}")
            return 130 if isinstance(stop_by, KeyboardInterrupt) else 143
        if not all(isinstance(e, RuntimeError | TimeoutError | trio.TooSlowError | OSError | HandshakeError)
                   for e in leaves):
            raise
        say(f"ERROR: {'; '.join(f'{type(e).__name__}: {e}' for e in leaves)}")
        return 1
    finally:
        stop(child)
    report(res)
    say(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
