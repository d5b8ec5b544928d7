"""The dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright's sync API) against a
real cluster of processes (``dsdn cluster up -n 3``): the page loads without console errors, shows every member
UP with its peer links, shows a coordinator killed with SIGKILL as DOWN within seconds, and is saved as a
screenshot. Chromium is installed with apt-get when it is missing (as bench/http.py does for wrk); the test is
skipped, saying why, when that is impossible."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import nacl.signing
import pytest

from consensus import receipts as rc
from tests.test_cluster import Cluster

N = 3
DOWN_WITHIN_S = 10.0
RECEIPTS = 3


def find_chromium() -> tuple[str | None, str]:
    """(path to chromium, why not): installs Debian's package when it is missing and apt-get can."""
    path = shutil.which("chromium")
    if path is not None:
        return path, ""
    if shutil.which("apt-get") is None:
        return None, "chromium is not on PATH and there is no apt-get to install it"
    if os.geteuid() != 0:
        return None, "chromium is not on PATH and installing it needs root (apt-get install -y chromium)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        try:
            done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False,
                                  timeout=600)
        except subprocess.TimeoutExpired:
            return None, f"installing chromium timed out after 600 s ({' '.join(cmd)})"
        if done.returncode != 0:
            return None, f"installing chromium failed ({' '.join(cmd)}): {done.stderr.decode(errors='replace')[-500:]}"
    path = shutil.which("chromium")
    return (path, "") if path else (None, "apt-get installed chromium but it is not on PATH")


def wait_cluster_json(cluster: Cluster, timeout: float = 60.0) -> dict[str, Any]:
    path = cluster.data_dir / "cluster.json"
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert cluster.proc is not None and cluster.proc.poll() is None, cluster.log()
        assert time.monotonic() < deadline, f"cluster not up after {timeout}s:\n{cluster.log()}"
        time.sleep(0.1)
    return json.loads(path.read_text())


def sign_receipts(urls: list[str]) -> list[str]:
    """A node with a key, an object it holds, and RECEIPTS receipts signed by the cluster (on urls[0]); their ids."""
    key = nacl.signing.SigningKey(bytes(range(32)))
    epoch = int(time.time() // 3600) + 1
    with httpx.Client(timeout=30) as http:
        steps: list[tuple[str, dict[str, Any]]] = [("/register", {"id": "dash-node", "zone": "z", "addr": "h:1",
                                                                  "public_key": bytes(key.verify_key).hex()})]
        for k in range(RECEIPTS):  # one slot (type, node, subject, epoch) per receipt: one object each
            steps += [("/object/register", {"hash": f"dash-obj{k}", "size": 1}),
                      ("/replica/mark_healed", {"hash": f"dash-obj{k}", "node_id": "dash-node"})]
        for path, body in steps:
            assert http.post(urls[0] + path, json=body).status_code == 200
        deadline = time.monotonic() + 20
        while len({http.get(f"{u}/state/root").json()["root"] for u in urls}) != 1:  # every signer knows the node
            assert time.monotonic() < deadline, "the ledger did not reach every coordinator"
            time.sleep(0.1)
        ids = []
        for k in range(RECEIPTS):
            receipt = rc.sign_as_node(key, receipt_type="storage", node_id="dash-node", subject=f"dash-obj{k}",
                                      epoch=epoch, usage_proof_hash=f"{k:064x}", execution_commitment=None,
                                      reward_base=100, submitter_address="ab" * 20, timestamp=int(time.time()))
            r = http.post(f"{urls[0]}/receipts", params={"wait_ms": 15000}, json=receipt.to_json())
            assert r.status_code == 200, r.text
            ids.append(r.json()["receipt_id"])
        return ids


@pytest.fixture
def browser_tools() -> tuple[str, Any]:
    """(chromium's path, playwright's sync API); the one skip of this module, saying why, when chromium cannot be
    installed or playwright is missing."""
    chromium, why = find_chromium()
    if chromium is None:
        pytest.skip(why)
    return chromium, pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")


def test_dashboard_shows_every_member_and_a_killed_one_as_down(tmp_path: Path, browser_tools: tuple[str, Any]
                                                               ) -> None:
    chromium, sync_api = browser_tools

    cluster = Cluster(tmp_path / "cluster", tmp_path / "cluster.log", n=N)
    cluster.start()
    try:
        info = wait_cluster_json(cluster)
        coordinators = [p for p in info["processes"] if p["role"] == "coordinator"]
        ids = [p["id"] for p in coordinators]
        victim = coordinators[-1]
        errors: list[str] = []  # console errors and uncaught exceptions, with where they came from

        def on_console(msg: Any) -> None:
            if msg.type == "error":
                errors.append(f"console: {msg.text} ({msg.location.get('url', '')})")

        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, headless=True,
                                         args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1100})
                page.on("console", on_console)
                page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
                response = page.goto(f"{coordinators[0]['url']}/dashboard")
                assert response is not None and response.status == 200
                expect = sync_api.expect
                rows = page.locator("#members tbody tr[data-member]")
                expect(rows).to_have_count(N, timeout=10_000)
                assert [rows.nth(i).get_attribute("data-member") for i in range(N)] == ids
                for cid in ids:
                    expect(page.locator(f'tr[data-member="{cid}"] td.status')).to_have_text("UP", timeout=15_000)
                # every directed peer link as its reporting member sees it: up, with an RTT
                links = page.locator("#links td[data-link]")
                expect(links).to_have_count(N * (N - 1))
                expect(page.locator('#links td[data-state="up"]')).to_have_count(N * (N - 1), timeout=15_000)
                for cid in ids:  # its state root
                    expect(page.locator(f'tr[data-member="{cid}"] td.root')).to_have_attribute(
                        "title", re.compile(r"^[0-9a-f]{64}$"))
                # the DKG's key on every member, then receipts the cluster signed: listed final, counted
                expect(page.locator("#summary-key")).to_have_text(re.compile(r"^group key [0-9a-f]{16}"),
                                                                  timeout=30_000)
                receipt_ids = sign_receipts([p["url"] for p in coordinators])
                for rid in receipt_ids:
                    expect(page.locator(f'#receipts tr[data-receipt="{rid}"] td.status')).to_have_text(
                        "final", timeout=10_000)
                page.wait_for_function(  # counted final by the members that proposed them
                    "n => [...document.querySelectorAll('#members td.final')]"
                    ".reduce((sum, td) => sum + (parseInt(td.textContent, 10) || 0), 0) >= n", arg=RECEIPTS,
                    timeout=5_000)
                expect(page.locator("#chart-rate path.series")).to_have_count(N)
                for cid in ids:  # the DA layers each member writes to, healthy, and no root marked as differing
                    expect(page.locator(f'tr[data-member="{cid}"] td.layers span.chip.ok')).not_to_have_count(0)
                expect(page.locator("#members td.root.differs")).to_have_count(0)
                assert errors == [], errors

                # a member whose state root disagrees stands out, and only that one: its /state/root answer is
                # replaced in the browser (a real divergence cannot be held still long enough to look at)
                odd = "f" * 64
                real = httpx.get(f"{victim['url']}/state/root", timeout=10).json()

                def diverge(route: Any) -> None:
                    route.fulfill(status=200, content_type="application/json", body=json.dumps({**real, "root": odd}),
                                  headers={"Access-Control-Allow-Origin": "*"})

                page.route(f"{victim['url']}/state/root", diverge)
                differs = page.locator("#members td.root.differs")
                expect(differs).to_have_count(1, timeout=5_000)
                expect(page.locator(f'tr[data-member="{victim["id"]}"] td.root')).to_have_attribute("title", odd)
                page.unroute(f"{victim['url']}/state/root")
                expect(differs).to_have_count(0, timeout=5_000)

                os.kill(victim["pid"], signal.SIGKILL)
                killed_at = time.monotonic()
                status = page.locator(f'tr[data-member="{victim["id"]}"] td.status')
                expect(status).to_have_text("DOWN", timeout=DOWN_WITHIN_S * 1000)
                took = time.monotonic() - killed_at
                for cid in ids[:-1]:
                    expect(page.locator(f'tr[data-member="{cid}"] td.status')).to_have_text("UP")
                expect(page.locator("#summary-up")).to_have_text(f"{N - 1} / {N} members up")
                print(f"dashboard: {victim['id']} shown DOWN {took:.2f}s after SIGKILL")

                shot = tmp_path / "dashboard.png"
                page.screenshot(path=str(shot), full_page=True)
                assert shot.exists() and shot.stat().st_size > 0
            finally:
                browser.close()
        # the killed member's refused connections are expected (Chromium logs each one); nothing else is
        unexpected = [e for e in errors if not (e.startswith("console: Failed to load resource")
                                                and victim["url"] in e)]
        assert unexpected == [], unexpected
    finally:
        cluster.stop()


LIAR_SERVER = r'''
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
ANSWERS = {
    "/health": {"status": "healthy", "ready": True},
    "/state/root": {"root": "ab" * 32, "events_applied": {"toString": 0}, "pending": {"valueOf": 1}},
    "/cluster/peers": [None, 7, {"id": {"toString": 0}}],
    "/cluster/status": {"group_public_key": None, "dkg": {"state": "none", "waiting_for": ["x"] * 100000},
                        "receipts": {"final": {"toString": 0}, "final_latency_ms": {"p50": "x", "p99": None}}},
    "/da/routing": {"current_state": "<img src=x onerror=\"document.title='PWNED'\">", "status": "ok",
                    "write_order": ["primary"] * 100000, "primary_healthy": True},
}
class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = ANSWERS.get(self.path.split("?")[0])
        data = json.dumps(body).encode()
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, *args):
        pass
HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
'''


def test_a_lying_member_cannot_blank_freeze_or_script_the_dashboard(tmp_path: Path,
                                                                   browser_tools: tuple[str, Any]) -> None:
    """A member answering {"toString": 0} where a number goes made every render throw: the page stayed on
    "loading…" for good, the honest members' rows included; 100,000 layer names froze it for seconds a tick (a
    reviewer's reproductions in Chromium). Each part renders on its own, lists are capped, and markup is text."""
    chromium, sync_api = browser_tools
    from tests.proc import CoordinatorProcess, free_port

    seed = bytes(range(1, 33))
    data = tmp_path / "honest"
    data.mkdir()
    (data / "identity.key").write_bytes(seed)
    (data / "identity.key").chmod(0o600)
    me = bytes(nacl.signing.SigningKey(seed).verify_key).hex()
    liar = bytes(nacl.signing.SigningKey(bytes(range(2, 34))).verify_key).hex()
    port, liar_port = free_port(), free_port()
    fake = subprocess.Popen([sys.executable, "-c", LIAR_SERVER, str(liar_port)])
    honest = CoordinatorProcess(data, tmp_path / "honest.log", port=port, COORDINATOR_ID="honest",
                                CLUSTER_PEERS=f"honest={me}@127.0.0.1:{free_port()},liar={liar}@127.0.0.1:{free_port()}",
                                QUORUM_VALIDATORS=f"http://127.0.0.1:{port},http://127.0.0.1:{liar_port}",
                                QUORUM_VALIDATOR_KEYS=f"{me},{liar}").start()
    errors: list[str] = []
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{honest.url}/cluster/members", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, honest.log()
            time.sleep(0.1)
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, headless=True,
                                         args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
            try:
                page = browser.new_page()
                page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
                page.goto(f"{honest.url}/dashboard")
                expect = sync_api.expect
                expect(page.locator("#members tbody tr[data-member='honest'] td.status")).to_have_text(
                    "UP", timeout=15_000)
                polls = int(page.locator("body").get_attribute("data-polls") or 0)
                expect(page.locator("#members tbody tr[data-member='liar']")).to_have_count(1)
                page.wait_for_function(f"() => Number(document.body.dataset.polls) >= {polls + 3}", timeout=15_000)
                started = time.monotonic()
                counts = page.evaluate("""() => ({chips: document.querySelectorAll('.chip').length,
                    waiting: document.getElementById('dkg').textContent.length,
                    images: document.querySelectorAll('main img').length, title: document.title})""")
                assert time.monotonic() - started < 2  # the page answers at once
                assert counts["chips"] <= 2 * 16 and counts["waiting"] < 5_000, counts
                assert counts["images"] == 0 and "PWNED" not in counts["title"], counts
            finally:
                browser.close()
    finally:
        honest.kill(signal.SIGTERM)
        if honest.proc is not None:
            honest.proc.wait(timeout=15)
        fake.kill()
        fake.wait()
    assert not errors, errors


STAND_IN_HEAD = r'''
import json, sys, time
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
STATIC, port = Path(sys.argv[1]), int(sys.argv[2])
ASSETS = {"/dashboard": "dashboard.html", "/dashboard/dashboard.js": "dashboard.js",
          "/dashboard/dashboard.css": "dashboard.css"}
'''
# what a stand-in's ``answer(path)`` gives ((status, JSON or text) or None: 404) is served with the dashboard's assets
STAND_IN_TAIL = r'''
class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args): pass
    def do_GET(self):
        path = self.path.split("?")[0]
        if path in ASSETS:
            status, body, media = 200, (STATIC / ASSETS[path]).read_bytes(), "text/html"
            media = {"js": "text/javascript", "css": "text/css"}.get(path.rsplit(".", 1)[-1], "text/html")
        else:
            status, obj = answer(path) or (404, {"error": "not found"})
            body, media = (obj if isinstance(obj, str) else json.dumps(obj)).encode(), "application/json"
        self.send_response(status)
        self.send_header("Content-Type", media)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
'''


@contextmanager
def stand_in(script: str) -> Iterator[int]:
    """A stand-in coordinator (``script``: STAND_IN_HEAD + its ``answer`` + STAND_IN_TAIL) serving the real dashboard
    on a free port, until the block ends; its port."""
    from tests.proc import free_port

    port = free_port()
    static = Path(__file__).resolve().parent.parent / "api" / "static"
    server = subprocess.Popen([sys.executable, "-c", script, str(static), str(port)])
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/cluster/members", timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the stand-in server did not start"
                time.sleep(0.05)
        yield port
    finally:
        server.kill()
        server.wait()


ODD_MEMBERS = STAND_IN_HEAD + r'''
polls = {"n": 0}

def answer(path):
    """(status, body) of a coordinator c0 whose member c1 sits behind a failing proxy, whose member c2 reports a
    latency of 1e308 ms, whose member c3 never answers in time and whose member c4 is a wrong URL."""
    if path == "/cluster/members":
        return 200, {"self": "c0", "members": [
            {"id": f"c{i}", "public_key": f"{i:02x}" * 32, "peer_address": f"h:{i}",
             "http_url": None if i == 0 else f"http://127.0.0.1:{port}/m{i}", "self": i == 0} for i in range(5)]}
    if path.startswith("/m1/"):
        return 502, "<html><body>502 Bad Gateway</body></html>"
    if path.startswith("/m3/"):  # hung: accepts, never answers in time
        time.sleep(5)
        return 503, {"error": "late"}
    if path.startswith("/m4/"):  # a wrong URL: 200, but no coordinator's health
        return 200, []
    huge = path.startswith("/m2/")
    sub = path[3:] if huge else path
    polls["n"] += sub == "/cluster/status"
    return 200, {"/health": {"status": "healthy", "ready": True},
                 "/state/root": {"root": "cd" * 32, "events_applied": 1, "pending": 0},
                 "/cluster/peers": [], "/receipts": {"receipts": [], "next_after": None},
                 "/da/routing": {"current_state": "primary", "status": "Healthy", "write_order": ["primary"],
                                 "primary_healthy": True},
                 "/cluster/status": {"group_public_key": "ab" * 32, "threshold": 2, "members": [],
                                     "dkg": {"state": "complete"},
                                     "receipts": {"final": polls["n"] * (10**300 if huge else 3),
                                                  "final_latency_ms": {"p50": 1e308 if huge else 12.5,
                                                                       "p99": 1e308 if huge else 20.0}}}}.get(sub)

''' + STAND_IN_TAIL


def test_a_member_behind_a_failing_proxy_is_down_and_huge_numbers_break_no_chart(
        tmp_path: Path, browser_tools: tuple[str, Any]) -> None:
    """From a review: a member whose every answer was an HTTP error (a reverse proxy's 502 for a dead coordinator, a
    wrong URL's 404) showed UP, since any answer counted; and one member's latency of 1e308 ms made every grid line
    of the chart NaN (console errors) for the five minutes it stayed in the history; a hung member's reason read
    "signal is aborted without reason". The members are served by a stand-in here (a proxy's 502 and such numbers
    are what a real coordinator cannot be made to answer); the page is the real one, in a real Chromium. And the
    hung member's 2 s a poll no longer holds the others' updates back: each member is polled on its own."""
    chromium, sync_api = browser_tools
    with stand_in(ODD_MEMBERS) as port:
        errors: list[str] = []
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, headless=True,
                                         args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
            page = browser.new_page()
            page.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
            page.goto(f"http://127.0.0.1:{port}/dashboard")
            page.wait_for_function("document.querySelectorAll('#members tbody tr').length === 5", timeout=15_000)
            polls_of_c0 = "Number(document.querySelector('#members tr[data-member=c0]').dataset.polls)"
            ticks = "Number(document.body.dataset.polls)"
            before, ticks_before = page.evaluate(polls_of_c0), page.evaluate(ticks)
            time.sleep(6)  # a few polls: the history holds the huge samples
            polls, ticked = page.evaluate(polls_of_c0) - before, page.evaluate(ticks) - ticks_before
            statuses = page.evaluate("[...document.querySelectorAll('#members td.status')].map(td => "
                                     "[td.dataset.status, td.title])")
            summary = page.locator("#summary-up").inner_text()
            charts = page.evaluate("document.getElementById('chart-latency').innerHTML + "
                                   "document.getElementById('chart-rate').innerHTML")
            browser.close()
        assert [s for s, _ in statuses] == ["UP", "DOWN", "UP", "DOWN", "DOWN"], statuses
        assert "HTTP 502" in statuses[1][1] and "no answer within 2 s" in statuses[3][1], statuses
        assert statuses[4][1] == "/health answered HTTP 200 without a JSON object", statuses
        assert summary == "2 / 5 members up"
        assert "NaN" not in charts and "Infinity" not in charts
        assert polls >= 4, polls  # ~6 (once a second): the hung c3 (2 s a poll) held every member back (3 in 6 s)
        assert ticked >= 4, ticked  # the page's own refresh too (a tick waiting for the members' polls: 2 in 6 s)
        assert [e for e in errors if "Failed to load resource" not in e] == [], errors  # (the 502s: the browser's)


SPLIT_MEMBERS = STAND_IN_HEAD + r'''
ROOTS = ["aa", "bb", "aa", "bb"]  # two against two: no majority
roots_asked = {"n": 0}

def answer(path):
    """c0..c3; c0's receipt counter grows 100 a second (read when answered), and its /state/root answers 1.2 s late
    every other time."""
    if path == "/cluster/members":
        return 200, {"self": "c0", "members": [
            {"id": f"c{i}", "public_key": f"{i:02x}" * 32, "peer_address": f"h:{i}",
             "http_url": None if i == 0 else f"http://127.0.0.1:{port}/m{i}", "self": i == 0} for i in range(4)]}
    i = int(path[2]) if path.startswith("/m") else 0
    sub = path[3:] if path.startswith("/m") else path
    if sub == "/state/root" and i == 0:
        roots_asked["n"] += 1
        if roots_asked["n"] % 2 == 0:
            time.sleep(1.2)
    return 200, {"/health": {"status": "healthy", "ready": True},
                 "/state/root": {"root": ROOTS[i] * 32, "events_applied": 1, "pending": 0},
                 "/cluster/peers": [], "/receipts": {"receipts": [], "next_after": None},
                 "/da/routing": {"current_state": "primary", "status": "Healthy", "write_order": ["primary"],
                                 "primary_healthy": True},
                 "/cluster/status": {"group_public_key": "ab" * 32, "threshold": 3, "members": [],
                                     "dkg": {"state": "complete"},
                                     "receipts": {"final": int(time.time() * 100) if i == 0 else 7,
                                                  "final_latency_ms": {"p50": 12.5, "p99": 20.0}}}}.get(sub)

''' + STAND_IN_TAIL


def test_a_split_has_no_majority_and_a_slow_answer_does_not_skew_the_rate(
        tmp_path: Path, browser_tools: tuple[str, Any]) -> None:
    """From a review: with roots two against two the first member's was marked right and the others "≠" (the most
    common value won, a majority or not); and the receipts/s were stamped when the slowest of a member's answers
    came, so a slow /state/root every other poll drew 40 and 1,400 receipts/s by turns for a steady 100."""
    chromium, sync_api = browser_tools
    with stand_in(SPLIT_MEMBERS) as port:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, headless=True,
                                         args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/dashboard")
            page.wait_for_function("Number(document.querySelector('#members tr[data-member=c0]')?.dataset.polls) >= 8",
                                   timeout=30_000)
            roots = page.evaluate("[...document.querySelectorAll('#members td.root')].map(td => td.className)")
            keys = page.evaluate("[...document.querySelectorAll('#members td.group-key')].map(td => td.className)")
            summary = page.locator("#summary-roots").inner_text()
            labels = page.evaluate("[...document.querySelectorAll('#chart-rate text.axis')].map(t => t.textContent)")
            browser.close()
        assert all("differs" in c for c in roots) and len(roots) == 4, roots
        assert not any("differs" in c for c in keys), keys
        assert summary == "state roots differ (2)"
        top = max(float(label) for label in labels if label.replace(".", "", 1).isdigit())
        assert 50 <= top <= 500, labels  # (about 100/s: spikes drew the axis up to 2,000)
