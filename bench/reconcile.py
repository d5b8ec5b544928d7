"""Reconciliation benchmark: moving the blobs of a primary-DA outage from the fallback to the real devnet.

A devnet process (``python -m deploy.devnet``, ``--block-interval-ms 1``: the shortest block interval it
takes) is the primary. The blobs are signed event blobs of about 1 KiB, each one distinct.

Baseline, same run, same devnet: its raw Submit rate through the same Celestia client (``CelestiaDA.
post_many``), batched the way a good client would: as many blobs per ``blob.Submit`` call as one call
carries (capped at SUBMIT_BLOBS), one or several calls in flight; the best of a few such settings counts.

Measured: an outage. The devnet is told to fail (fault mode ``down``), the DA stack's health checks move it to
Degraded, N blobs written through the router land on the secondary (a file-backed Mock DA; reconciliation
reads the blobs from the durable fallback record, not from the fallback layer) and are recorded; then the
devnet heals and one reconciliation pass (what ``POST /fallback/reconcile`` runs, with the RECONCILE_*
defaults of node.config) moves them to the devnet: blobs/s from the start of the pass until none is pending.
Then the consistency check reads the most recent reconciled blobs back from the devnet. The machine is shared
and noisy: ROUNDS rounds of (baseline, outage); the baseline is the best of the settings' median rates, and
the ratio is the median reconciliation rate over it.

Goal: reconciliation ≥ 500 blobs/s and ≥ 0.5× the devnet's raw Submit rate.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import nacl.signing
import trio

from bench._common import say, title
from deploy.cluster import free_port
from node.blob import encode_blob
from node.config import Config, load
from node.da.base import DALayer
from node.da.celestia import CelestiaDA
from node.da.mock import MockDA
from node.da.namespace import namespace_from_name
from node.da.stack import DAStack
from node.da.status import PRIMARY, SECONDARY, Status

BLOBS = int(os.environ.get("BENCH_RECONCILE_BLOBS", "2000"))
BLOCK_INTERVAL_MS = 1  # deploy/devnet.py's minimum
TOKEN = "bench-reconcile"
NS = namespace_from_name("dsdn-bench-rec")
EVENTS_PER_BLOB, EVENT_BYTES = 8, 120
#: Most blobs the baseline puts in one blob.Submit call (the byte limit of one call applies too).
SUBMIT_BLOBS = 256
#: (blobs per call, calls in flight) the baseline tries; the best counts.
BASELINE_SETTINGS = ((SUBMIT_BLOBS, 1), (SUBMIT_BLOBS, 4), (64, 4), (64, 8))
GOAL_RATE, GOAL_RATIO = 500.0, 0.5
ROUNDS = int(os.environ.get("BENCH_RECONCILE_ROUNDS", "3"))


def make_blobs(n: int, tag: bytes) -> list[bytes]:
    """``n`` distinct signed event blobs (node.blob's envelope, as the publisher makes them)."""
    key = nacl.signing.SigningKey(b"\x07" * 32)
    out = []
    for i in range(n):
        events = [tag + i.to_bytes(4, "big") + j.to_bytes(2, "big") + os.urandom(EVENT_BYTES - len(tag) - 6)
                  for j in range(EVENTS_PER_BLOB)]
        out.append(encode_blob(key, "coordinator-0", events))
    return out



def start_devnet(tmp: Path, port: int) -> subprocess.Popen[bytes]:
    with open(tmp / "devnet.log", "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "deploy.devnet", "--port", str(port), "--db",
                                 str(tmp / "devnet.sqlite"), "--block-interval-ms", str(BLOCK_INTERVAL_MS),
                                 "--auth-token", TOKEN], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def admin(url: str, path: str, body: dict[str, object] | None = None) -> dict[str, object]:
    async with httpx.AsyncClient(base_url=url, timeout=10, headers={"Authorization": f"Bearer {TOKEN}"},
                                 trust_env=False) as http:
        resp = await (http.post(path, json=body) if body is not None else http.get(path))
        resp.raise_for_status()
        result: dict[str, object] = resp.json()
        return result


async def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    with trio.move_on_after(timeout_s):
        while proc.poll() is None:
            try:
                await admin(url, "/admin/status")
                return
            except httpx.HTTPError:
                await trio.sleep(0.05)
    raise RuntimeError(f"the devnet at {url} did not become ready (exit code {proc.poll()})")


def groups(blobs: list[bytes], per_call: int, max_bytes: int) -> list[list[bytes]]:
    out: list[list[bytes]] = [[]]
    size = 0
    for b in blobs:
        if out[-1] and (len(out[-1]) >= per_call or size + len(b) > max_bytes):
            out.append([])
            size = 0
        out[-1].append(b)
        size += len(b)
    return out


async def raw_submit(da: CelestiaDA, blobs: list[bytes], per_call: int, in_flight: int) -> float:
    """Blobs/s for ``blobs`` posted with ``post_many``: ``per_call`` blobs a call, ``in_flight`` calls at once."""
    todo = groups(blobs, per_call, da.max_submit_bytes)
    position = 0

    async def worker() -> None:
        nonlocal position
        while position < len(todo):
            group = todo[position]
            position += 1
            await da.post_many(group)

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(in_flight):
            nursery.start_soon(worker)
    return len(blobs) / (time.perf_counter() - t0)


def make_stack(cfg: Config, tmp: Path) -> DAStack:
    """The DA stack as node.coordinator builds it (Celestia primary, the RECONCILE_* defaults), with a
    file-backed Mock DA as the secondary."""
    layers: dict[str, DALayer] = {PRIMARY: CelestiaDA.from_config(cfg),
                                  SECONDARY: MockDA(str(tmp / "secondary.sqlite"), name=SECONDARY)}
    return DAStack(layers, cfg.data_dir, timeout_s=cfg.da_timeout_ms / 1000, da_retry_count=cfg.da_retry_count,
                   da_retry_delay_s=cfg.da_retry_delay_ms / 1000, failure_threshold=cfg.da_failure_threshold,
                   recovery_threshold=cfg.da_recovery_threshold, health_interval_s=cfg.da_health_interval_ms / 1000,
                   batch_size=cfg.reconcile_batch_size, retry_delay_s=cfg.reconcile_retry_delay_ms / 1000,
                   max_retries=cfg.reconcile_max_retries, parallel=cfg.reconcile_parallel,
                   health_timeout_s=cfg.da_health_timeout_ms / 1000)


async def baseline(cfg: Config, round_: int) -> list[float]:
    """The devnet's raw Submit rate with each of BASELINE_SETTINGS, each with BLOBS new blobs."""
    rates = []
    async with CelestiaDA.from_config(cfg) as da:
        await raw_submit(da, make_blobs(50, b"warm%d" % round_), 10, 2)  # warm up the connection pool
        for n, (per_call, in_flight) in enumerate(BASELINE_SETTINGS):
            rates.append(await raw_submit(da, make_blobs(BLOBS, b"raw%d.%d" % (round_, n)), per_call, in_flight))
            say(f"raw Submit, up to {per_call} blobs per call, {in_flight} call(s) in flight: {rates[-1]:,.0f} "
                "blobs/s")
    return rates


async def outage(url: str, cfg: Config, tmp: Path, round_: int) -> tuple[float, bool]:
    """Fill the fallback with BLOBS blobs while the devnet is down, heal it, run one reconciliation pass;
    its blobs/s and whether every blob was reconciled and the consistency check passed."""
    stack = make_stack(cfg, tmp)
    try:
        await admin(url, "/admin/fault", {"mode": "down"})
        for _ in range(cfg.da_failure_threshold):  # the health checks see the outage: Degraded
            await stack.check_once()
        if stack.machine.status is not Status.DEGRADED:
            raise RuntimeError(f"the stack did not see the outage: status {stack.machine.status.value}")
        blobs = make_blobs(BLOBS, b"outage%d" % round_)
        t0 = time.perf_counter()
        position = 0

        async def writer() -> None:
            nonlocal position
            while position < len(blobs):
                data = blobs[position]
                position += 1
                if (await stack.router.post(data)).layer != SECONDARY:
                    raise RuntimeError("a write reached the primary during the outage")

        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(writer)
        fill_s = time.perf_counter() - t0
        pending = stack.pending.pending_count

        await admin(url, "/admin/fault", {"mode": "ok"})
        t0 = time.perf_counter()
        report = await stack.reconciler.run_pass()
        elapsed = time.perf_counter() - t0
        rate = report.blobs_reconciled / elapsed
        stack.reconciler.check_deadline_s = 120.0  # a verification, not measured: let it finish on a busy machine
        consistency = await stack.reconciler.consistency()
        ok = (pending == BLOBS and report.blobs_reconciled == BLOBS and stack.pending.pending_count == 0
              and bool(consistency["is_consistent"]))
        say(f"outage: {pending:,} blobs on the secondary (written in {fill_s:.1f} s); reconciled "
            f"{report.blobs_reconciled:,} ({report.blobs_failed} failed) in {elapsed:.2f} s = {rate:,.0f} blobs/s; "
            f"{stack.pending.pending_count} still pending; {consistency['items_verified']} read back, consistent: "
            f"{consistency['is_consistent']}")
        return rate, ok
    finally:
        await stack.aclose()


async def run(url: str, tmp: Path) -> bool:
    cfg = load({"DA_RPC_URL": url, "DA_NAMESPACE": NS.hex(), "DA_AUTH_TOKEN": TOKEN,
                "COORDINATOR_DATA_DIR": str(tmp / "coordinator")})
    say(f"{BLOBS:,} blobs of ~{len(make_blobs(1, b'x')[0]):,} B per measurement; devnet block interval "
        f"{BLOCK_INTERVAL_MS} ms; RECONCILE_BATCH_SIZE={cfg.reconcile_batch_size}, RECONCILE_PARALLEL="
        f"{str(cfg.reconcile_parallel).lower()} (the defaults); {ROUNDS} rounds, the median counts")
    rates: list[float] = []
    raw: list[list[float]] = []
    oks: list[bool] = []
    for r in range(ROUNDS):
        title(f"Round {r + 1}/{ROUNDS}")
        raw.append(await baseline(cfg, r))
        (tmp / f"round{r}").mkdir()
        round_cfg = load({"DA_RPC_URL": url, "DA_NAMESPACE": NS.hex(), "DA_AUTH_TOKEN": TOKEN,
                          "COORDINATOR_DATA_DIR": str(tmp / f"round{r}")})
        rate, ok = await outage(url, round_cfg, tmp / f"round{r}", r)
        rates.append(rate)
        oks.append(ok)
    title("Result (medians over the rounds)")
    best, best_at = max((statistics.median(col), i) for i, col in enumerate(zip(*raw, strict=True)))
    for i, col in enumerate(zip(*raw, strict=True)):
        per_call, in_flight = BASELINE_SETTINGS[i]
        say(f"raw Submit, up to {per_call} blobs per call, {in_flight} in flight: {statistics.median(col):,.0f} "
            f"blobs/s{' (the best: the baseline)' if i == best_at else ''}")
    rate = statistics.median(rates)
    ratio = rate / best
    say(f"reconciliation: {rate:,.0f} blobs/s (rounds: {', '.join(f'{x:,.0f}' for x in rates)})")
    if not all(oks):
        say("WARNING: in some round not every blob was reconciled and read back")
    met = all(oks) and rate >= GOAL_RATE and ratio >= GOAL_RATIO
    say(f"GOAL reconciliation ≥ {GOAL_RATE:,.0f} blobs/s and ≥ {GOAL_RATIO}× devnet submit: {rate:,.0f} blobs/s, "
        f"{ratio:.2f}× — {'goal met' if met else 'goal NOT met'}")
    return met


def main() -> int:
    say(__doc__.split("\n\n")[0] if __doc__ else "")
    with tempfile.TemporaryDirectory(prefix="dsdn-bench-reconcile-") as tmp_name:
        tmp = Path(tmp_name)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = start_devnet(tmp, port)
        try:
            trio.run(wait_ready, url, proc)
            trio.run(run, url, tmp)
        except RuntimeError as exc:
            say(f"bench failed: {exc}")
            say((tmp / "devnet.log").read_text(errors="replace")[-2000:])
            return 1
        finally:
            stop(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
