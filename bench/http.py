"""HTTP benchmark: requests/s and p99 of the coordinator's hot endpoints next to a bare Quart-Trio route.

Two server processes run side by side: a real ``dsdn-coordinator`` (Mock DA in a temp data dir, 1,000
nodes pre-registered) and a bare QuartTrio app with one GET route returning a small JSON dict, served
by ``hypercorn.trio.serve`` with the coordinator's Hypercorn settings (accesslog off, same error log,
same graceful timeout, same final-send shield). wrk (``-t1 -c32``, keep-alive) drives GET /node/{id},
GET /placement/{hash}?rf=3 and the bare route in two interleaved rounds, then POST /register (a Lua
script varies the node id). Goal: each GET ≥ 80 % of the bare route's req/s.

Run it as ``python -m bench.http``; ``--bare PORT`` (internal) serves the bare app.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench._common import say, title, verdict
from deploy.cluster import free_port

CONNECTIONS = 32
DURATION_S = 6
WARMUP_S = 2
ROUNDS = 2
NODES = 1_000
HOST = "127.0.0.1"
OBJ = "b5bb9d8014a0f9b1d61e21e796d78dccdf1352f23cd32812f4850b878ae4944c"

# ---- the bare server (child process) ------------------------------------------------------------------


def serve_bare(port: int) -> None:
    import trio
    from hypercorn.config import Config as HyperConfig
    from hypercorn.trio import serve
    from quart_trio import QuartTrio

    from api.asgi_fix import shield_final_send

    logging.basicConfig(level="WARNING")
    app = QuartTrio("bare")
    app.asgi_app = shield_final_send(app.asgi_app)  # type: ignore[method-assign]

    @app.get("/bare")
    async def bare() -> dict[str, Any]:
        return {"id": "node-00001", "zone": "zone-1", "addr": "10.0.0.1:5000", "capacity_gb": 100, "meta": {}}

    cfg = HyperConfig()
    cfg.bind = [f"{HOST}:{port}"]
    cfg.accesslog = None
    cfg.errorlog = logging.getLogger("hypercorn.error")
    cfg.graceful_timeout = 5.0

    async def run() -> None:
        stop = trio.Event()

        async def watch() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    stop.set()
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            await serve(app, cfg, shutdown_trigger=stop.wait)  # type: ignore[arg-type]
            nursery.cancel_scope.cancel()

    trio.run(run)


# ---- helpers -----------------------------------------------------------------------------------------


def find_wrk() -> str | None:
    wrk = shutil.which("wrk")
    if wrk is None and shutil.which("apt-get"):
        say("wrk not found on PATH; installing it with apt-get (needs root) ...")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "wrk"]):
            if subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE).returncode != 0:
                break
        wrk = shutil.which("wrk")
    return wrk



def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout_s} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def run_wrk(wrk: str, url: str, duration_s: int, script: str | None = None) -> dict[str, float]:
    cmd = [wrk, "-t1", f"-c{CONNECTIONS}", f"-d{duration_s}s", "--latency", *(["-s", script] if script else []), url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
    if rps is None or p99 is None:
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {"rps": float(rps.group(1)), "p99_ms": float(p99.group(1)) * _UNIT[p99.group(2)],
            "non2xx": float(non2xx.group(1)) if non2xx else 0.0,
            "errors": float(sum(int(x) for x in errors.groups())) if errors else 0.0}


REGISTER_LUA = """
counter = 0
request = function()
  counter = counter + 1
  local body = string.format('{"id":"%s-%%d","zone":"zone-%%d","addr":"10.1.%%d.%%d:5000","capacity_gb":100}',
                             counter, counter %% 10, math.floor(counter / 250) %% 256, counter %% 250 + 1)
  return wrk.format("POST", "/register", {["Content-Type"] = "application/json"}, body)
end
"""


# ---- the benchmark -----------------------------------------------------------------------------------


def bench(wrk: str, tmp: Path, procs: list[subprocess.Popen[bytes]]) -> bool:
    bare_port, coord_port = free_port(), free_port()
    procs.append(subprocess.Popen([sys.executable, "-m", "bench.http", "--bare", str(bare_port)]))
    exe = Path(sys.executable).with_name("dsdn-coordinator")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "deploy.coordinator"]
    env = {**os.environ, "USE_MOCK_DA": "true", "COORDINATOR_PORT": str(coord_port),
           "COORDINATOR_DATA_DIR": str(tmp / "coordinator"), "LOG_LEVEL": "WARNING"}
    env.pop("COORDINATOR_API_TOKEN", None)
    procs.append(subprocess.Popen(cmd, env=env))
    bare, coord = f"http://{HOST}:{bare_port}", f"http://{HOST}:{coord_port}"
    wait_ready(f"{bare}/bare", procs[0])
    wait_ready(f"{coord}/ready", procs[1])

    t0 = time.perf_counter()
    with httpx.Client(base_url=coord, timeout=10) as client:
        for i in range(NODES):
            r = client.post("/register", json={"id": f"node-{i:05d}", "zone": f"zone-{i % 10}",
                                               "addr": f"10.0.{i // 250}.{i % 250 + 1}:5000", "capacity_gb": 100})
            r.raise_for_status()
        count = client.get("/system/info").json()["node_count"]
        node = client.get("/node/node-00500")
        place = client.get(f"/placement/{OBJ}", params={"rf": 3})
    say(f"coordinator {coord} and bare server {bare} up; {count} nodes registered in "
        f"{time.perf_counter() - t0:.1f} s; GET /node → {node.status_code}, GET /placement → {place.json()}")
    if count != NODES or node.status_code != 200 or place.status_code != 200:
        raise RuntimeError("the coordinator is not in the expected state")

    targets = {"bare GET /bare": f"{bare}/bare", "GET /node/{id}": f"{coord}/node/node-00500",
               "GET /placement/{hash}?rf=3": f"{coord}/placement/{OBJ}?rf=3"}
    say(f"wrk -t1 -c{CONNECTIONS} -d{DURATION_S}s --latency, {ROUNDS} interleaved rounds after a {WARMUP_S} s "
        f"warm-up of each target")
    for url in targets.values():
        run_wrk(wrk, url, WARMUP_S)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
    for _ in range(ROUNDS):
        for name, url in targets.items():
            runs[name].append(run_wrk(wrk, url, DURATION_S))
    script = tmp / "register.lua"
    script.write_text(REGISTER_LUA % "wrk")
    runs["POST /register"] = [run_wrk(wrk, f"{coord}/register", DURATION_S, str(script))]

    title("Results (mean over the runs; p99 = mean of the runs' p99)")
    base = statistics.fmean(r["rps"] for r in runs["bare GET /bare"])
    ratios: dict[str, float] = {}
    for name, rs in runs.items():
        rps = statistics.fmean(r["rps"] for r in rs)
        ratios[name] = rps / base
        bad = sum(r["non2xx"] + r["errors"] for r in rs)
        each = ", ".join(f"{r['rps']:,.0f}" for r in rs)
        say(f"{name:<28} {rps:>8,.0f} req/s  p99 {statistics.fmean(r['p99_ms'] for r in rs):7.1f} ms  "
            f"ratio to bare {rps / base:5.2f}  runs {each}"
            f"{f'  [{bad:.0f} non-2xx/socket errors]' if bad else ''}")
    worst = min(ratios["GET /node/{id}"], ratios["GET /placement/{hash}?rf=3"])
    # (a rate of errors is no rate of answers: a run with any non-2xx answer or socket error fails the goal)
    failed = sum(r["non2xx"] + r["errors"] for name in ("bare GET /bare", "GET /node/{id}",
                                                         "GET /placement/{hash}?rf=3") for r in runs[name])
    return verdict("each GET ≥ 80 % of the bare Quart-Trio route's req/s", worst >= 0.80 and not failed,
                   f"worst {worst:.0%}{f'; {failed:.0f} non-2xx answers or socket errors' if failed else ''}")


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--bare":
        serve_bare(int(sys.argv[2]))
        return 0
    say(__doc__.split("\n\n")[0] if __doc__ else "")
    wrk = find_wrk()
    if wrk is None:
        say("ERROR: wrk is not on PATH and could not be installed (try: apt-get update && apt-get install -y wrk)")
        return 2

    def on_term(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="dsdn-bench-http-") as tmp:
            try:
                bench(wrk, Path(tmp), procs)
            finally:
                for proc in reversed(procs):
                    stop(proc)
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        say(f"ERROR: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
