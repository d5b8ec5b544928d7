"""dsdn nemesis against a real 4-coordinator cluster (one of them byzantine: bad shares) under load: kill -9,
a pause, a cut link and a devnet outage, then the checker — no slot signed twice, every acknowledged write and
receipt present and final, equal roots within 10 s of healing. Also the history it leaves behind; the
equivocating proposer that DSDN_BYZANTINE=equivocate makes (in process, on the simulated network: different
batches under one batch id, and no slot signed twice); the byzantine switch refused on mainnet."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import nacl.signing
import pytest
import trio
import trio.testing

from consensus import receipt_service
from consensus import receipts as rc
from consensus.receipt_service import LOCK
from deploy import coordinator
from deploy.adversary import BYZANTINE_BEHAVIOURS
from deploy.simulation import SimCluster
from node import config as config_mod
from node.state import State
from protocol.envelope import Registry
from protocol.simnet import SimNetwork


def test_a_short_nemesis_run_holds(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", "from deploy.cli import main; main()", "nemesis", "--duration",
                           "20", "-n", "4", "--seed", "5", "--byzantine", "bad_shares", "--faults",
                           "kill,pause,cut,devnet_down", "--data-dir", str(tmp_path / "nem")],
                          capture_output=True, text=True, timeout=240)
    report = done.stdout[done.stdout.find("faults injected"):]
    print(f"\nnemesis took {time.perf_counter() - t0:.0f}s\n{report}")
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    for kind in ("kill", "pause", "cut", "devnet_down"):
        assert f"{kind} " in report.splitlines()[0]
    assert "violations                       0" in report
    # every member reached the others' quorum validators through the fault proxies (a cut cuts that HTTP too)
    peer_links, validator_links = map(int, report.split("proxied connections peer/quorum")[1].split()[0::2][:2])
    assert peer_links >= 6 and validator_links >= 12, report  # (a peer link per pair, dialed by one side)
    history = [json.loads(line) for line in (tmp_path / "nem" / "history.jsonl").read_text().splitlines()]
    receipts = [h for h in history if h["op"] == "receipt"]
    assert len(receipts) > 50 and all({"t", "to", "status", "answer", "body", "phase"} <= set(h) for h in history)
    assert sum(h["status"] in (200, 202) for h in receipts) > 30
    # after the heal, every coordinator took a new receipt and a new registration (then checked like the others)
    fresh = {(h["to"], h["op"]) for h in history if h["phase"] == "fresh" and h["status"] in (200, 202)}
    assert fresh == {(f"coordinator-{i}", op) for i in range(4) for op in ("receipt", "register")}, fresh


async def test_an_equivocating_proposer_sends_different_batches_under_one_id_and_no_slot_is_signed_twice(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    cluster = SimCluster(tmp_path, 4, seed=10, delay=(0.0, 0.02))
    cluster.seed_ledger()
    liar = "c3"
    cluster.members[liar].behaviour = "equivocate"  # its proposals as with DSDN_BYZANTINE=equivocate
    sent: dict[bytes, dict[str, list[bytes]]] = {}  # batch id -> peer -> the receipt ids it was asked to lock
    transmit = cluster.net.transmit

    def record(src: str, dst: str, frame: bytes) -> bool:
        msg = cluster.registry.decode(frame)
        if src == liar and msg.type == LOCK:
            sent.setdefault(msg.body["batch"], {})[dst] = [rc.Receipt.from_wire(w).id for w in msg.body["receipts"]]
        return transmit(src, dst, frame)

    cluster.net.transmit = record  # type: ignore[method-assign]
    pairs = [(cluster.receipt(f"n{k}", f"obj{k}", reward=10), cluster.receipt(f"n{k}", f"obj{k}", reward=20))
             for k in range(3)]  # rivals: one slot each
    plain = [cluster.receipt(f"n{k}", f"obj{k + 1}", proof=k) for k in range(4)]
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        for a, b in pairs:
            cluster.service("c0").submit(b)  # an honest proposer locks the rival at the peers first
            await trio.sleep(0.5)
            cluster.service(liar).submit(a)  # the liar has seen b (in c0's lock request): it equivocates with it
        for r in plain:
            cluster.service(liar).submit(r)
            cluster.service("c1").submit(r)
        await trio.sleep(20)
        nursery.cancel_scope.cancel()
    split = [b for b, by_peer in sent.items() if len({tuple(ids) for ids in by_peer.values()}) > 1]
    assert split, "the liar never sent two different batches under one batch id"
    rivals = {b.id for _, b in pairs}  # the liar proposed only the a's: a b in its lock request is equivocation
    assert any(rivals & set(ids) for by_peer in sent.values() for ids in by_peer.values())
    assert not cluster.double_signed()
    for m in cluster.members.values():
        assert all(len(ids) == 1 for ids in m.state.ledger.by_slot.values())
    for m in cluster.honest():  # what an honest member was given is final everywhere (the liar's say is void)
        assert {r.id for r in plain} | {b.id for _, b in pairs} <= set(m.state.ledger.receipts)


@pytest.mark.parametrize("behaviour", BYZANTINE_BEHAVIOURS)
def test_the_receipt_engine_takes_the_byzantine_switch_except_on_mainnet(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, behaviour: str) -> None:
    """Where the switch is read (deploy/coordinator.receipt_engine): mainnet refuses it, a test network takes it."""
    registry = Registry()
    receipt_service.register(registry)
    keys = [nacl.signing.SigningKey(bytes([k + 1]) * 32) for k in range(4)]
    members = [SimpleNamespace(id=f"c{k}", public_key=bytes(key.verify_key)) for k, key in enumerate(keys)]
    coord = SimpleNamespace(key=keys[0], state=State(), submit_event=None, da_read_through=lambda: None,
                            older_copy=None, on_older_copy=None)
    peers = SimNetwork(registry).add("c0")
    monkeypatch.setenv("DSDN_BYZANTINE", behaviour)
    for network in ("mainnet", "mocha"):
        (tmp_path / network).mkdir()
        cfg = SimpleNamespace(data_dir=tmp_path / network, da_network=network, peers=members, receipt_batch_max=64,
                              receipt_batch_wait_ms=2, epoch_length_s=3600, receipt_epoch_grace=1)
        if network == "mainnet":
            with pytest.raises(config_mod.ConfigError, match="DSDN_BYZANTINE"):
                coordinator.receipt_engine(cfg, coord, peers, SimpleNamespace(key=None))  # type: ignore[arg-type]
            continue
        service, locks = coordinator.receipt_engine(cfg, coord, peers, SimpleNamespace(key=None))  # type: ignore[arg-type]
        locks.close()
        replaced = {"bad_shares": ["_sign_share"], "withhold": ["_on_sign"],
                    "bad_commitments": ["_on_lock", "_sign_share"],
                    "equivocate": ["_on_lock", "_lock_own", "submit", "net"]}[behaviour]
        assert all(name in vars(service) for name in replaced)  # the lying versions, installed on the instance
        assert (service.net is not peers) == (behaviour == "equivocate")
    monkeypatch.setenv("DSDN_BYZANTINE", "lies")
    (tmp_path / "x").mkdir()
    with pytest.raises(config_mod.ConfigError, match="bad_shares or withhold or bad_commitments or equivocate"):
        coordinator.receipt_engine(SimpleNamespace(**{**vars(cfg), "data_dir": tmp_path / "x"}), coord, peers,
                                   SimpleNamespace(key=None))  # type: ignore[arg-type]


@pytest.mark.parametrize("behaviour", BYZANTINE_BEHAVIOURS)
def test_the_byzantine_switch_is_refused_on_mainnet(tmp_path: Path, behaviour: str) -> None:
    env = {"PATH": "/usr/bin:/bin", "DSDN_BYZANTINE": behaviour, "DA_NETWORK": "mainnet",
           "COORDINATOR_DATA_DIR": str(tmp_path / "c")}
    done = subprocess.run([sys.executable, "-m", "deploy.coordinator"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert "DSDN_BYZANTINE" in done.stderr or "DA_" in done.stderr  # a one-line configuration error
    assert "Traceback" not in done.stderr


SLOT = {"receipt_type": "compute", "node_id": "nem0", "subject": "ab" * 32, "epoch": 5}
R1, R2 = "11" * 32, "22" * 32


async def run_checker(tmp_path: Path, views: dict[str, dict[str, str]], history: list[dict[str, Any]],
                      listed_signature: str = "good", failing_listing: set[str] | None = None,
                      group_keys: dict[str, str] | None = None, logged: list[str] | None = None) -> list[str]:
    """The checker against coordinators played by a mock transport: ``views`` member -> receipt id -> status;
    documents verify when their signature is "good" (a real one is not needed to test the checker's logic)."""
    import re

    import httpx

    from deploy import cluster as launcher
    from deploy import nemesis

    def answer(request: httpx.Request) -> httpx.Response:
        member, path = request.url.host.split(".")[0], request.url.path
        if path == "/state/root":
            return httpx.Response(200, json={"root": "same"})
        if path == "/cluster/status":
            return httpx.Response(200, json={"group_public_key": (group_keys or {}).get(member, "00" * 32)})
        if path == "/receipts":
            if member in (failing_listing or set()):
                return httpx.Response(500, text="boom")
            return httpx.Response(200, json={"receipts": [
                {"receipt_id": rid, "status": s, "receipt": SLOT, "signature": listed_signature}
                for rid, s in views[member].items() if s == "final"], "next_after": None})
        if (found := re.fullmatch(r"/receipts/(\w+)", path)) is not None:
            status = views[member].get(found[1])
            return httpx.Response(200 if status else 404, json={"receipt_id": found[1], "status": status,
                                                                "receipt": SLOT, "signature": "good"})
        return httpx.Response(200, json={})

    nem = nemesis.Nemesis(2, 1, 1, tmp_path, tmp_path / "history.jsonl")
    nem.members = [launcher.Member("coordinator", c, f"http://{c}.test", "/ready", []) for c in views]
    for line in logged or []:
        nem.logs.say(line)
    nem.history = [*history, {"op": "register", "to": "c0", "status": 200, "body": {"id": "n1"}, "answer": {},
                              "phase": "load"}]
    original, parse = nemesis.rc.verify_document, nemesis.rc.from_json
    nemesis.rc.verify_document = lambda doc, group: ((True, "valid") if doc.get("signature") == "good"  # type: ignore
                                                     else (False, "bad signature"))
    # a body's receipt id: the one receipt_op wrote in it (its reward_base), as the real one is its bytes' hash
    nemesis.rc.from_json = lambda body: SimpleNamespace(id=bytes.fromhex(body["reward_base"]))  # type: ignore
    try:
        async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
            await nem.check(http, trio.current_time())
    finally:
        nemesis.rc.verify_document, nemesis.rc.from_json = original, parse  # type: ignore[assignment]
    return nem.violations


def receipt_op(to: str, rid: str | None, status: int | None, answered: str | None = "locked",
               **extra: Any) -> dict[str, Any]:
    answer: Any = {"receipt_id": rid, "status": answered, **extra} if status is not None else \
        "ConnectError: all attempts to connect failed"
    return {"op": "receipt", "to": to, "status": status, "body": {**SLOT, "reward_base": rid}, "answer": answer,
            "phase": "load"}


async def test_an_error_in_an_honest_member_s_output_is_a_violation(tmp_path: Path) -> None:
    """A checker audit's planted bug (a peer handler failing now and then on every member: 35 tracebacks) ended in
    a clean report: the members' output was only printed. The liar's own errors prove nothing."""
    views = {"c0": {R1: "final"}, "c1": {R1: "final"}}
    quiet = await run_checker(tmp_path, views, [receipt_op("c0", R1, 202)],
                              logged=["[c1 ] 2026-12-05 12:00:00,000 WARNING dsdn.da: the devnet is down"])
    assert quiet == []
    from deploy import nemesis
    watch = nemesis.LogWatch(liar="c3")
    for line in ("[c0 ] 2026-12-05 12:00:00,000 ERROR dsdn.peers: handler for rc.lock from c1 failed",
                 "[c1 ] Traceback (most recent call last):", "[c3 ] 2026-12-05 12:00:00,000 ERROR dsdn.x: a liar's",
                 "[c2 ] 2026-12-05 12:00:00,000 WARNING dsdn.x: a fault, as planned"):
        watch.say(line)
    assert [line[:4] for line in watch.errors] == ["[c0 ", "[c1 "]
    loud = await run_checker(tmp_path / "again", views, [receipt_op("c0", R1, 202)], logged=watch.errors)
    assert any("2 ERROR line(s) or traceback(s) in the honest members' output" in v for v in loud), loud


async def test_an_answer_naming_another_receipt_is_caught(tmp_path: Path) -> None:
    """A checker audit's: the receipt followed was the one the answer named, not the one sent: a coordinator that
    acknowledged R1 with R2's id (R2 final everywhere, R1 known nowhere) passed."""
    views = {"c0": {R2: "final"}, "c1": {R2: "final"}}
    lost = receipt_op("c0", R2, 202)
    lost["body"] = {**SLOT, "reward_base": R1, "subject": "cd" * 32}  # (its own slot: no rival excuses it)
    violations = await run_checker(tmp_path, views, [receipt_op("c1", R2, 202), lost])
    assert any("answered receipt 111111111111… with the id 222222222222…" in v for v in violations), violations
    assert any("not final on every coordinator" in v for v in violations), violations


@pytest.mark.parametrize("listing_fails", [False, True])
async def test_the_checker_sees_rivals_final_on_different_coordinators_and_a_listing_it_cannot_read(
        tmp_path: Path, listing_fails: bool) -> None:
    """Rivals for one slot, each final on the coordinator it was sent to (a conflict on the other), passed: slots
    were checked per coordinator. And a listing that failed counted as an empty one (a reviewer's runs). The
    coordinators are played by a mock HTTP transport; a real double signature would verify, so a document
    "verifies" here when its signature is "good"."""
    views = {"c0": {R1: "final", R2: "conflict"}, "c1": {R2: "final", R1: "conflict"}}
    history = [receipt_op("c0", R1, 202), receipt_op("c1", R2, 202)]
    violations = await run_checker(tmp_path, views, history, failing_listing={"c1"} if listing_fails else set())
    assert any("signed 2 times" in v for v in violations), violations
    assert any("could not list" in v for v in violations) == listing_fails, violations


async def test_a_rival_that_never_reached_the_cluster_excuses_nothing(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """R1 acknowledged, then locked for ever; its "rival" got a refused connection (the coordinator was down): it
    excused R1 (a reviewer's reproduction). A rival that may have reached the cluster (an answer, or a timeout)
    still does."""
    views = {"c0": {R1: "locked"}, "c1": {R1: "locked"}, "c2": {R1: "locked"}}
    history = [receipt_op("c0", R1, 202), receipt_op("c1", None, None)]
    violations = await run_checker(tmp_path, views, history)
    assert any("neither final nor" in v for v in violations), violations
    history[1] = {**history[1], "answer": "ReadTimeout: timed out"}  # may have arrived: a rival
    assert not await run_checker(tmp_path / "again", views, history)


async def test_a_receipt_answered_final_must_stay_final_rival_or_not(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """R1 answered final to its submitter, later "conflict" everywhere while its rival R2 is final: the slot is
    signed twice, and R1 was excused as a receipt with a rival (a reviewer's reproduction)."""
    views = {"c0": {R1: "conflict", R2: "final"}, "c1": {R1: "conflict", R2: "final"}}
    history = [receipt_op("c0", R1, 200, "final", receipt=SLOT, signature="good", receipt_bytes="00"),
               receipt_op("c1", R2, 202)]
    violations = await run_checker(tmp_path, views, history)
    assert any("signed 2 times" in v for v in violations), violations
    assert any("not final on every coordinator" in v for v in violations), violations


async def test_a_listed_final_document_is_verified(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    views = {"c0": {R1: "final", R2: "final"}, "c1": {R1: "final"}}  # R2: never acknowledged, only listed
    history = [receipt_op("c0", R1, 202)]
    assert not any("does not verify" in v for v in await run_checker(tmp_path, views, history))
    violations = await run_checker(tmp_path / "bad", views, history, listed_signature="forged")
    assert any("listed final on c0 does not verify" in v for v in violations), violations


@pytest.mark.parametrize("rival", ["refused 503", "rejected 422", "the same receipt again"])
async def test_only_a_rival_the_cluster_may_have_locked_excuses_a_stuck_receipt(
        tmp_path: Path, autojump_clock: trio.testing.MockClock, rival: str) -> None:
    """R1 acknowledged, then locked for ever; a "rival" answered 503 or 422 (refused before any lock), or R1
    itself sent again, excused it (a reviewer's reproductions). A 409 answer may follow a peer's lock: it does."""
    views = {"c0": {R1: "locked"}, "c1": {R1: "locked"}, "c2": {R1: "locked"}}
    other = {"refused 503": {**receipt_op("c1", R2, 503), "answer": {"error": "unavailable"}},
             "rejected 422": {**receipt_op("c1", R2, 422), "answer": {"error": "invalid_request"}},
             "the same receipt again": receipt_op("c1", R1, 202)}[rival]
    violations = await run_checker(tmp_path, views, [receipt_op("c0", R1, 202), other])
    assert any("neither final nor" in v for v in violations), violations
    conflict = {**receipt_op("c1", R2, 409), "answer": {"error": "slot conflict", "receipt_id": R2}}
    assert not await run_checker(tmp_path / "409", views, [receipt_op("c0", R1, 202), conflict])


async def test_a_document_answered_final_is_verified(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """The document a submitter got as final was never checked (a reviewer's reproduction)."""
    views = {"c0": {R1: "final"}, "c1": {R1: "final"}}
    history = [receipt_op("c0", R1, 200, "final", receipt=SLOT, signature="forged", receipt_bytes="00")]
    violations = await run_checker(tmp_path, views, history)
    assert any("answered final" in v and "does not verify" in v for v in violations), violations
    history[0]["answer"]["signature"] = "good"
    assert not await run_checker(tmp_path / "good", views, history)
    # a 202 "final" names a receipt already final, without its document: an acknowledgement, not a forgery
    assert not await run_checker(tmp_path / "202", views, [receipt_op("c0", R1, 202, "final")])


async def test_receipts_with_a_rival_wait_for_their_document_too(tmp_path: Path,
                                                                 autojump_clock: trio.testing.MockClock) -> None:
    """The wait and the rival were decided by one draw: no receipt with a rival ever waited, so "final stays
    final" never met a rival slot in a real run (a reviewer's count)."""
    import nacl.signing

    from deploy import cluster as launcher
    from deploy import nemesis

    nem = nemesis.Nemesis(2, 1, 7, tmp_path, tmp_path / "history.jsonl")
    nem.members = [launcher.Member("coordinator", c, f"http://{c}.test", "/ready", []) for c in ("c0", "c1", "c2")]
    ops: list[tuple[str, dict[str, Any], str | None]] = []

    async def op(http: Any, kind: str, method: str, path: str, body: dict[str, Any], phase: str = "setup",
                 target: Any = None) -> None:
        if kind == "receipt":
            ops.append((path, body, target.id if target is not None else None))

    nem.op = op  # type: ignore[method-assign]
    keys = {f"nem{i}": nacl.signing.SigningKey(bytes([i + 1]) * 32) for i in range(3)}
    await nem.load(None, trio.current_time() + 100, keys)  # type: ignore[arg-type]
    per_slot: dict[tuple[str, str, int], list[tuple[str, str | None]]] = {}
    for path, body, to in ops:
        per_slot.setdefault((body["node_id"], body["subject"], body["epoch"]), []).append((path, to))
    rival_slots = [sent for sent in per_slot.values() if len(sent) > 1]
    assert rival_slots and any(all("wait_ms" in p for p, _ in sent) for sent in rival_slots)
    assert any("wait_ms" not in p for sent in rival_slots for p, _ in sent)
    # a rival goes to another coordinator than its original (4 pairs in 31 went to one, a reviewer's count)
    assert all(len({to for _, to in sent}) == len(sent) and None not in {to for _, to in sent}
               for sent in rival_slots)


async def test_every_coordinator_must_answer_the_same_group_key(tmp_path: Path,
                                                                autojump_clock: trio.testing.MockClock) -> None:
    """The key was asked of the first coordinator only: a member holding another went unseen."""
    views = {"c0": {R1: "final"}, "c1": {R1: "final"}}
    history = [receipt_op("c0", R1, 202)]
    violations = await run_checker(tmp_path, views, history, group_keys={"c1": "ff" * 32})
    assert any("one group key" in v for v in violations), violations
    assert not await run_checker(tmp_path / "same", views, history)


def test_a_coordinator_that_exited_on_its_own_is_a_violation(tmp_path: Path) -> None:
    from deploy import cluster as launcher
    from deploy import nemesis

    nem = nemesis.Nemesis(2, 1, 1, tmp_path, tmp_path / "history.jsonl")
    m = launcher.Member("coordinator", "c1", "http://c1.test", "/ready", [])
    m.process = SimpleNamespace(returncode=None)  # type: ignore[assignment]
    assert nem.check_alive(m) and not nem.violations
    m.process = SimpleNamespace(returncode=-11)  # type: ignore[assignment]  # a segfault, say
    assert not nem.check_alive(m)
    assert nem.violations == ["c1 exited on its own (exit code -11)"]


@pytest.mark.parametrize("argv, says", [
    (["--duration", "-1"], "--duration must be from 1 to"),
    (["--duration", "nan"], "--duration must be from 1 to"),
    (["--duration", "inf"], "--duration must be from 1 to"),
    (["--faults", "kill,nope"], "--faults: kinds are"),
    (["--data-dir", "FILE"], "is not a folder"),
    (["--data-dir", "."], "is not empty"),  # (tmp_path, holding FILE: a previous run's state answered for the next)
    (["--history", "FILE/h.jsonl"], "its folder is missing or not writable"),
])
def test_bad_arguments_exit_2_in_one_line_and_leave_nothing(tmp_path: Path, argv: list[str], says: str) -> None:
    """A negative or nan duration started a whole cluster for nothing (inf: until killed), a file as --data-dir was
    a traceback, a bad --faults left an empty temporary folder behind."""
    (tmp_path / "FILE").write_text("")
    argv = [str(tmp_path / a) if a.startswith("FILE") else str(tmp_path) if a == "." else a for a in argv]
    r = subprocess.run([sys.executable, "-c", "from deploy.nemesis import main; main()", *argv],
                       capture_output=True, text=True, timeout=60, env={**os.environ,
                                                                        "TMPDIR": str(tmp_path)})
    assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FILE"]


async def test_a_cluster_that_takes_nothing_new_after_the_heal_is_caught(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """From a review: the checks only read; a cluster answering 503 to every new write after its faults passed, as
    long as what it took before them was final."""
    import httpx

    from deploy import cluster as launcher
    from deploy import nemesis

    nem = nemesis.Nemesis(2, 1, 1, tmp_path, tmp_path / "history.jsonl")
    nem.members = [launcher.Member("coordinator", c, f"http://{c}.test", "/ready", []) for c in ("c0", "c1")]
    keys = {"nem0": nacl.signing.SigningKey(bytes(32))}
    refusing = httpx.MockTransport(lambda request: httpx.Response(503, json={"error": "unavailable"}))
    async with httpx.AsyncClient(transport=refusing) as http:
        await nem.after_heal(http, keys)
    assert sorted(v.split(" within")[0] for v in nem.violations) == [
        "after the heal, c0 did not take a new receipt", "after the heal, c0 did not take a new registration",
        "after the heal, c1 did not take a new receipt", "after the heal, c1 did not take a new registration"]
    # a receipt answered 202 "pending" (not valid there yet) is not taken: the checks would not follow it
    nem.violations.clear()
    pending = httpx.MockTransport(lambda request: httpx.Response(200, json={"ok": True}) if request.url.path ==
                                  "/register" else httpx.Response(202, json={"receipt_id": "ab", "status": "pending",
                                                                             "reason": "node not registered here"}))
    async with httpx.AsyncClient(transport=pending) as http:
        await nem.after_heal(http, keys)
    assert sorted(v.split(" within")[0] for v in nem.violations) == [
        "after the heal, c0 did not take a new receipt", "after the heal, c1 did not take a new receipt"]


async def test_the_faults_of_a_seed_are_the_same_whatever_the_order_trio_runs_them(
        tmp_path: Path, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """From a review: the victims were drawn inside the fault tasks, a fault and the devnet down started together,
    in the order trio happened to run them: one seed gave six different fault logs in eight runs."""
    from trio._core import _run

    from deploy import cluster as launcher
    from deploy import nemesis

    monkeypatch.setattr(_run, "_ALLOW_DETERMINISTIC_SCHEDULING", True)
    logs = []
    for run_seed in range(6):
        _run._r.seed(run_seed)  # (the order trio runs tasks started together differs between these runs)
        nem = nemesis.Nemesis(4, 30, 9, tmp_path, tmp_path / "history.jsonl")
        nem.members = [launcher.Member("coordinator", f"c{i}", f"http://c{i}.test", "/ready", []) for i in range(4)]
        said: list[str] = []

        async def inject(nursery: Any, http: Any, kind: str, span: float, victim: Any, other: Any,
                         said: list[str] = said) -> None:
            said.append(f"{kind} {victim.id} {other.id} {span:.2f}" if not kind.startswith("devnet") else kind)
            await trio.sleep(span)

        nem.inject = inject  # type: ignore[method-assign]
        async with trio.open_nursery() as nursery:
            await nem.nemesis(nursery, None, trio.current_time() + 60, None)  # type: ignore[arg-type]
        logs.append(sorted(said))
    assert all(log == logs[0] for log in logs) and len(logs[0]) > 10
