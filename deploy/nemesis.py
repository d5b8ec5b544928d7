"""``dsdn nemesis``: break a real local cluster under load, then check the recorded history.

It starts a devnet, an emergency blob store and n coordinators (as ``dsdn cluster up`` does), with every peer
link, and every member's HTTP link to another's quorum validator, through a fault proxy of its own
(deploy/faultproxy.py; a cut or slow link between two members affects both), and optionally one coordinator started
byzantine (``--byzantine bad_shares|withhold|equivocate``). A bounded client load (receipts, some of them rival receipts
for one slot, and node registrations) runs throughout; each request, its answer and its time go into a
history file (JSON lines). Meanwhile faults come one after another: kill -9 and restart, SIGSTOP/SIGCONT, a cut
link, a slow link, the devnet down or slow; a fault on a coordinator comes with the devnet down at the same time
one time in ``OVERLAP`` (the fallback layers then run one member short). Then everything heals and the checker
checks that the state roots are equal within 10 s, sends each coordinator a new receipt and registration, which it
must take within 30 s, and reads every coordinator: no slot signed twice (across all of them), every acknowledged
node registration present everywhere, every acknowledged receipt final everywhere and verifiable under the group
key, equal state roots again at the end. It prints a report and exits 0 only if all of that holds. The faults draw
from a random stream of their own (a seed gives the same faults whatever the load's timing); the data folder must
be new or empty; a signal stops the run with its clean-up (paused processes resumed and stopped, the history
written).

``dsdn nemesis [--duration S] [-n N] [--seed X] [--byzantine B] [--history FILE] [--data-dir D]``
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import nacl.signing
import trio

from consensus import receipts as rc
from deploy import cluster as launcher
from deploy.adversary import BYZANTINE_BEHAVIOURS
from deploy.faultproxy import LinkProxy

FAULTS = ("kill", "pause", "cut", "slow_link", "devnet_down", "devnet_slow")
MEMBER_FAULTS = ("kill", "pause", "cut", "slow_link")
OVERLAP = 0.3  # the share of coordinator faults that come with the devnet down meanwhile
CONVERGE_S = 10.0
FRESH_S = 30.0  # after the heal, each coordinator must take a new receipt and registration within this
NODES = 6


@dataclass
class LogWatch:
    """The members' output as it comes: printed, and every ERROR line or traceback of an honest member kept (a
    checker audit's planted bug: a peer handler failing on every member, 35 tracebacks, a clean report)."""

    liar: str | None = None
    errors: list[str] = field(default_factory=list)

    def say(self, line: str) -> None:
        print(line, flush=True)
        if (" ERROR " in line or "Traceback (most recent call last)" in line) and not (
                self.liar is not None and line.startswith(f"[{self.liar} ")):
            self.errors.append(line[:300])


@dataclass
class Nemesis:
    n: int
    duration: float
    seed: int
    data_dir: Path
    history_path: Path
    byzantine: str | None = None
    rng: random.Random = field(init=False)  # the load's draws
    fault_rng: random.Random = field(init=False)  # the faults': apart, so a seed gives the same faults whatever the
    #                                               load's timing (one shared stream did not replay a run)
    members: list[launcher.Member] = field(default_factory=list)
    proxies: dict[tuple[str, str], LinkProxy] = field(default_factory=dict)  # (a, b): a's peer link to b
    validator_proxies: dict[tuple[str, str], LinkProxy] = field(default_factory=dict)  # a's HTTP to b's validator
    history: list[dict[str, Any]] = field(default_factory=list)
    faults: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    converge_s: float | None = None
    summary: dict[str, Any] | None = None  # what the check found (None until it ran)
    logs: LogWatch = field(init=False)  # the members' output, printed as it comes; their ERRORs kept
    wall_s: float = 0.0  # the whole run: cluster start, load and faults, heal, checks, stop

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.fault_rng = random.Random(self.seed ^ 0xFA_0175)
        self.logs = LogWatch()

    @property
    def coordinators(self) -> list[launcher.Member]:
        return [m for m in self.members if m.role == "coordinator"]

    def member(self, member_id: str) -> launcher.Member:
        return next(m for m in self.members if m.id == member_id)

    # ---- the cluster, with a proxy on every directed peer link ---------------------------------------

    async def start(self, nursery: trio.Nursery, http: httpx.AsyncClient) -> None:
        base = launcher.free_base_port(self.n)
        self.members = launcher.plan(self.n, base, self.data_dir)
        coords = self.coordinators
        peers = {m.id: m.env["CLUSTER_PEERS"] for m in coords}
        entries = {e.split("=")[0]: e for e in next(iter(peers.values())).split(",")}
        for a in coords:
            for b in coords:
                if a.id != b.id:
                    proxy = LinkProxy(f"{a.id}->{b.id}", int(b.env["PEER_PORT"]))
                    await nursery.start(proxy.serve)
                    self.proxies[(a.id, b.id)] = proxy
                    proxy = LinkProxy(f"{a.id}->{b.id} validator", int(b.env["COORDINATOR_PORT"]))
                    await nursery.start(proxy.serve)
                    self.validator_proxies[(a.id, b.id)] = proxy
        for a in coords:  # a reaches every other member b through proxy a->b (its validator too: a cut cuts both)
            view = [entries[b.id] if b.id == a.id else
                    f"{entries[b.id].split('@')[0]}@127.0.0.1:{self.proxies[(a.id, b.id)].port}" for b in coords]
            a.env["CLUSTER_PEERS"] = ",".join(view)
            a.env["QUORUM_VALIDATORS"] = ",".join(
                b.url if b.id == a.id else f"http://127.0.0.1:{self.validator_proxies[(a.id, b.id)].port}"
                for b in coords)
            a.env["LOG_LEVEL"] = os.environ.get("LOG_LEVEL", "WARNING")  # LOG_LEVEL=INFO dsdn nemesis: theirs too
        if self.byzantine:
            coords[-1].env["DSDN_BYZANTINE"] = self.byzantine
            self.logs.liar = coords[-1].id
        for m in self.members:  # (their output is read for ERROR lines: LOG_FORMAT=json inherited hid them all)
            m.env["LOG_FORMAT"] = "text"
        for m in self.members[:2]:
            await launcher._start(nursery, m, self.logs)
            await launcher._wait_ready(m, http)
        for m in coords:
            await launcher._start(nursery, m, self.logs)
        for m in coords:
            await launcher._wait_ready(m, http)
        with trio.fail_after(60):
            while True:
                keys = {(await get(http, f"{m.url}/cluster/status") or {}).get("group_public_key") for m in coords}
                if len(keys) == 1 and None not in keys:
                    break
                await trio.sleep(0.2)

    # ---- load -----------------------------------------------------------------------------------------

    async def setup_nodes(self, http: httpx.AsyncClient) -> dict[str, nacl.signing.SigningKey]:
        """The nodes that earn the receipts, registered with their keys on every coordinator before any fault."""
        node_keys = {f"nem{i}": nacl.signing.SigningKey(self.rng.randbytes(32)) for i in range(NODES)}
        for node, key in node_keys.items():
            await self.op(http, "register", "POST", "/register", {"id": node, "zone": "z", "addr": "h:1",
                                                                  "public_key": bytes(key.verify_key).hex()})
        with trio.fail_after(30):
            for m in self.coordinators:
                for node in node_keys:
                    while (await http.get(f"{m.url}/node/{node}")).status_code != 200:
                        await trio.sleep(0.1)
        return node_keys

    async def load(self, http: httpx.AsyncClient, until: float, node_keys: dict[str, nacl.signing.SigningKey]
                   ) -> None:
        epoch = int(time.time() // 3600) + 1
        k = 0
        while trio.current_time() < until:
            k += 1
            choice = self.rng.random()
            if choice < 0.15:
                await self.op(http, "register", "POST", "/register", {"id": f"w{self.seed}-{k}", "zone": "z",
                                                                      "addr": "h:2"}, phase="load")
                continue
            node = self.rng.choice(list(node_keys))
            body = self.receipt(node_keys, node, epoch)
            # some submitters wait for the signed document (the "final stays final" checks need answers "final"),
            # drawn apart from the rest (drawn with it, no receipt with a rival ever waited: a reviewer's count)
            path = "/receipts?wait_ms=1500" if self.rng.random() < 0.45 else "/receipts"
            if choice > 0.9:  # a rival receipt for the same slot, sent to another coordinator at the same time
                rival = {**body, "reward_base": 11}
                rival.update(rc.sign_as_node(node_keys[node], **{f: v for f, v in rival.items()
                                                                 if f not in ("node_public_key", "node_signature")}
                                             ).to_json())
                first, second = self.rng.sample(self.coordinators, 2)  # (drawn each alone, 4 in 31 went to one)
                async with trio.open_nursery() as both:
                    both.start_soon(self.op, http, "receipt", "POST", path, body, "load", first)
                    both.start_soon(self.op, http, "receipt", "POST", path, rival, "load", second)
            else:
                await self.op(http, "receipt", "POST", path, body, phase="load")
            await trio.sleep(0.05)

    def receipt(self, node_keys: dict[str, nacl.signing.SigningKey], node: str, epoch: int) -> dict[str, Any]:
        """A new compute receipt of ``node`` (its fields drawn from the load's stream)."""
        draw = [self.rng.randbytes(32).hex() for _ in range(7)]
        return rc.sign_as_node(node_keys[node], receipt_type="compute", node_id=node, subject=draw[0], epoch=epoch,
                               usage_proof_hash=draw[1], execution_commitment=[draw[0], *draw[2:]], reward_base=10,
                               submitter_address="ab" * 20, timestamp=int(time.time())).to_json()

    async def after_heal(self, http: httpx.AsyncClient, node_keys: dict[str, nacl.signing.SigningKey]) -> None:
        """New writes once everything healed, one of each kind to each coordinator, each retried until it is
        acknowledged (``FRESH_S``): the checks then want them present and final like the others. A cluster that
        took nothing new after its faults passed, as long as what it took before them was final (a reviewer's
        finding)."""
        epoch = int(time.time() // 3600) + 1
        deadline = trio.current_time() + FRESH_S
        for i, m in enumerate(self.coordinators):
            for kind, path, body in (("register", "/register", {"id": f"f{self.seed}-{i}", "zone": "z",
                                                                "addr": "h:3"}),
                                     ("receipt", "/receipts?wait_ms=3000",
                                      self.receipt(node_keys, self.rng.choice(list(node_keys)), epoch))):
                while True:
                    await self.op(http, kind, "POST", path, body, "fresh", m)
                    if _took(self.history[-1]) or trio.current_time() > deadline:
                        break
                    await trio.sleep(0.5)
                if not _took(self.history[-1]):
                    what = "registration" if kind == "register" else kind
                    self.violations.append(f"after the heal, {m.id} did not take a new {what} within {FRESH_S:.0f}s: "
                                           f"{self.history[-1]['status']} {str(self.history[-1]['answer'])[:200]}")

    async def op(self, http: httpx.AsyncClient, kind: str, method: str, path: str, body: dict[str, Any],
                 phase: str = "setup", target: launcher.Member | None = None) -> None:
        target = target or self.rng.choice(self.coordinators)
        entry: dict[str, Any] = {"t": round(time.time(), 3), "op": kind, "to": target.id, "path": path,
                                 "body": body, "phase": phase}
        try:
            r = await http.request(method, target.url + path, json=body, timeout=5.0)
            entry["status"] = r.status_code
            entry["answer"] = r.json()
        except (httpx.HTTPError, ValueError) as exc:
            entry["status"], entry["answer"] = None, f"{type(exc).__name__}: {exc}"
        self.history.append(entry)

    # ---- faults -------------------------------------------------------------------------------------------

    async def nemesis(self, nursery: trio.Nursery, http: httpx.AsyncClient, until: float,
                      sequence: list[str] | None) -> None:
        kinds = list(sequence or [])
        while trio.current_time() < until - 2:
            given = bool(kinds)
            kind = kinds.pop(0) if kinds else self.fault_rng.choice(FAULTS)
            span = self.fault_rng.uniform(1.5, 3.0)
            self.faults[kind] = self.faults.get(kind, 0) + 1
            overlap = not given and kind in MEMBER_FAULTS and self.fault_rng.random() < OVERLAP
            # (drawn here, in this order: drawn by the tasks, in the order trio happened to run them, a seed did not
            # give the same faults; a reviewer's reproduction)
            victim = self.fault_rng.choice(self.coordinators)
            other = self.fault_rng.choice([m for m in self.coordinators if m is not victim])
            async with trio.open_nursery() as both:
                both.start_soon(self.inject, nursery, http, kind, span, victim, other)
                if overlap:
                    name = f"{kind}+devnet_down"
                    self.faults[name] = self.faults.get(name, 0) + 1
                    both.start_soon(self.inject, nursery, http, "devnet_down", span, victim, other)
            await trio.sleep(self.fault_rng.uniform(0.5, 1.5))

    async def inject(self, nursery: trio.Nursery, http: httpx.AsyncClient, kind: str, span: float,
                     victim: launcher.Member, other: launcher.Member) -> None:
        self.say(f"{kind} {'' if kind.startswith('devnet') else victim.id} for {span:.1f}s")
        if kind == "kill":
            assert victim.process is not None
            self.check_alive(victim)
            victim.process.kill()
            await victim.process.wait()
            await trio.sleep(span)
            await launcher._start(nursery, victim, self.logs)
        elif kind == "pause":
            assert victim.process is not None
            victim.process.send_signal(signal.SIGSTOP)
            await trio.sleep(span)
            victim.process.send_signal(signal.SIGCONT)
        elif kind in ("cut", "slow_link"):
            self.say(f"  ({kind}: the links between {victim.id} and {other.id})")
            links = [proxies[pair] for proxies in (self.proxies, self.validator_proxies)
                     for pair in ((victim.id, other.id), (other.id, victim.id))]
            for p in links:
                p.set(cut=kind == "cut", delay_ms=0 if kind == "cut" else 300, rate=0 if kind == "cut" else 20_000)
            await trio.sleep(span)
            for p in links:
                p.set()
        else:
            await self.devnet(http, "down" if kind == "devnet_down" else "slow")
            await trio.sleep(span)
            await self.devnet(http, "ok")

    def say(self, text: str) -> None:
        """A line of the run's log: what happens when (faults; what the checker found), for reading a failure."""
        print(f"[nemesis] {time.strftime('%H:%M:%S')}.{int(time.time() * 1000) % 1000:03d} {text}", flush=True)

    async def devnet(self, http: httpx.AsyncClient, mode: str) -> None:
        """Set the devnet's fault mode; a refusal is a violation (the fault would be counted, never injected)."""
        devnet = self.member("devnet")
        try:
            r = await http.post(f"{devnet.url}/admin/fault", json={"mode": mode}, headers=devnet.headers,
                                timeout=5.0)
            if r.status_code != 200:
                self.violations.append(f"the devnet refused fault mode {mode!r}: HTTP {r.status_code}")
        except httpx.HTTPError as exc:
            self.violations.append(f"the devnet did not take fault mode {mode!r}: {type(exc).__name__}")

    async def heal(self, http: httpx.AsyncClient, nursery: trio.Nursery) -> None:
        self.say("healing: every link restored, the devnet up, every coordinator running")
        for p in [*self.proxies.values(), *self.validator_proxies.values()]:
            p.set()
        await self.devnet(http, "ok")
        for m in self.coordinators:
            assert m.process is not None
            if not self.check_alive(m):
                await launcher._start(nursery, m, self.logs)
            else:
                m.process.send_signal(signal.SIGCONT)

    def check_alive(self, m: launcher.Member) -> bool:
        """Whether ``m``'s process runs; one that exited though the nemesis did not kill it (every kill restarts
        its victim before the next fault) crashed: a violation (the heal restarted it without a word)."""
        assert m.process is not None
        if m.process.returncode is None:
            return True
        self.violations.append(f"{m.id} exited on its own (exit code {m.process.returncode})")
        return False

    # ---- the checker ------------------------------------------------------------------------------------

    async def check(self, http: httpx.AsyncClient, healed_at: float,
                    then: Callable[[], Awaitable[None]] | None = None) -> dict[str, Any]:
        """The checks; ``then`` runs once the roots were compared after the heal (the fresh writes: run before it,
        their own time counted as the cluster's, 10.7 s "to converge" when the first one waited for a restarted
        member), before anything is read for the other checks."""
        coords = self.coordinators
        roots: set[str] = set()
        with trio.move_on_after(60):  # processes restarted at the heal need a moment to come up
            while True:
                roots = {(await get(http, f"{m.url}/state/root") or {}).get("root") for m in coords}
                if len(roots) == 1 and None not in roots:
                    self.converge_s = trio.current_time() - healed_at
                    break
                await trio.sleep(0.2)
        if self.converge_s is None or self.converge_s > CONVERGE_S:
            self.violations.append(f"state roots not equal within {CONVERGE_S:.0f}s of healing "
                                   f"({'never' if self.converge_s is None else f'{self.converge_s:.1f}s'})")
        if then is not None:
            await then()
        liar = coords[-1].id if self.byzantine else None  # what a lying coordinator acknowledges proves nothing
        # the group key as every honest coordinator answers it (asked of one, a member holding another went unseen)
        keys = {m.id: ((await get(http, f"{m.url}/cluster/status")) or {}).get("group_public_key")
                for m in coords if m.id != liar}
        if len(set(keys.values())) != 1 or not all(isinstance(k, str) for k in keys.values()):
            self.violations.append(f"the coordinators do not all answer one group key after the heal: "
                                   f"{ {i: k[:12] if isinstance(k, str) else k for i, k in keys.items()} }")
            return {"acked_receipts": 0, "final": 0, "registrations": 0}
        group = bytes.fromhex(next(iter(keys.values())))
        acked = [h for h in self.history if h["op"] == "receipt" and h["status"] in (200, 202)
                 and h["answer"].get("status") in ("locked", "final", None)  # not a "pending": not yet valid
                 and h["to"] != liar]
        # each receipt followed by the id of the receipt sent, not by the id its answer names (a coordinator
        # answering another receipt's id, or another receipt's document, went unseen: a checker audit)
        for h in acked:
            h["rid"] = rc.from_json(h["body"]).id.hex()
            if h["answer"].get("receipt_id") != h["rid"]:
                self.violations.append(f"{h['to']} answered receipt {h['rid'][:12]}… with the id "
                                       f"{str(h['answer'].get('receipt_id'))[:12]}…")

        def slot_of(h: dict[str, Any]) -> tuple[Any, ...]:
            b = h["body"]
            return (b["receipt_type"], b["node_id"], b["subject"], b["epoch"])

        def receipt_of(h: dict[str, Any]) -> str:  # (the same receipt sent again has the same body)
            return json.dumps(h["body"], sort_keys=True)

        per_slot: dict[tuple[Any, ...], set[str]] = {}
        for h in self.history:
            # the receipts of a slot the cluster may have locked: acknowledged, answered 409 (refused by a lock of
            # its rival, maybe after peers locked it), or unanswered; a refused connection never reached it, and a
            # 503 or a 4xx was refused before any lock (counted, each excused an acknowledged receipt left locked
            # for ever, as did the same receipt sent twice: a reviewer's reproductions)
            if h["op"] == "receipt" and (h["status"] in (200, 202, 409) or (
                    h["status"] is None and not str(h["answer"]).startswith("ConnectError"))):
                per_slot.setdefault(slot_of(h), set()).add(receipt_of(h))

        def rival(h: dict[str, Any]) -> bool:
            """A receipt with a rival may end in conflict, or unsigned: unless its submitter was told it is final
            (final stays final: a receipt answered final that later read "conflict" went unnoticed, and its
            rival could be signed)."""
            others = per_slot.get(slot_of(h), set()) - {receipt_of(h)}
            return bool(others) and h["answer"].get("status") != "final"

        final, unsettled = 0, acked
        with trio.move_on_after(90):  # a receipt with a rival may end in conflict; every other one final
            while unsettled:
                still = []
                for h in unsettled:
                    url = self.member(h["to"]).url if rival(h) else coords[0].url
                    status = ((await get(http, f"{url}/receipts/{h['rid']}")) or {}).get("status")
                    final += status == "final"
                    if status != "final" and not (rival(h) and status == "conflict"):
                        still.append(h)
                unsettled = still  # replaced whole: a pass cut short by the deadline left the list of the one
                #                    before (a partial one was empty when cut early, and a stuck receipt passed)
                if unsettled:
                    await trio.sleep(0.5)
        # One map of slot -> signed receipt ids across every coordinator (what each lists as final, and every
        # acknowledged receipt as each answers for it): per coordinator, rivals final on two of them went unseen.
        signed: dict[tuple[Any, ...], set[str]] = {}

        def saw_final(doc: dict[str, Any]) -> None:
            r = doc["receipt"]
            signed.setdefault((r["receipt_type"], r["node_id"], r["subject"], r["epoch"]), set()).add(
                doc["receipt_id"])

        for h in acked:  # a document its submitter got as final is one more signed receipt of its slot
            # (a 202 "final" names the receipt only: one already final here, answered without its document)
            if h["answer"].get("status") == "final" and "receipt_bytes" in h["answer"]:
                valid, reason = rc.verify_document(h["answer"], group)
                if valid and h["answer"].get("receipt_id") != h["rid"]:
                    valid, reason = False, "it is another receipt's"
                if not valid:
                    self.violations.append(f"the document {h['to']} answered final for receipt "
                                           f"{str(h['answer'].get('receipt_id'))[:12]}… does not verify: {reason}")
                elif isinstance(h["answer"].get("receipt"), dict):
                    saw_final(h["answer"])
        to_check = [(h, m) for h in acked for m in coords if m.id != liar]
        seen_as: dict[tuple[str, str], str] = {}
        with trio.move_on_after(30):  # a coordinator that answers late, or still waits for DA, gets a while
            while to_check:
                again = []
                for h, m in to_check:
                    doc = await get(http, f"{m.url}/receipts/{h['rid']}")
                    if isinstance(doc, dict) and doc.get("status") == "final":
                        valid, reason = rc.verify_document(doc, group)
                        if valid and doc.get("receipt_id") != h["rid"]:
                            valid, reason = False, "it is another receipt's"
                        if not valid:
                            self.violations.append(f"receipt {doc['receipt_id'][:12]}… on {m.id} does not verify: "
                                                   f"{reason}")
                        saw_final(doc)
                    elif not rival(h):
                        again.append((h, m))
                        seen_as[(h["rid"], m.id)] = (
                            str(doc.get("status")) if isinstance(doc, dict) else "no answer")
                to_check = again  # (replaced whole: cut short mid-pass, the previous pass's list stands)
                if to_check:
                    await trio.sleep(1)
        not_everywhere = [f"{h['rid'][:12]}… on {m.id}: "
                          f"{seen_as.get((h['rid'], m.id), 'not asked')}" for h, m in to_check]
        if not_everywhere:
            self.violations.append(f"{len(not_everywhere)} acknowledged receipt(s) not final on every coordinator, "
                                   f"e.g. {not_everywhere[:3]}")
        for m in coords:
            listed = None
            for _ in range(3):
                listed = await all_final(http, m.url)
                if listed is not None:
                    break
                await trio.sleep(1)
            if listed is None:
                self.violations.append(f"could not list the final receipts of {m.id}")
                continue
            for doc in listed:  # checked as those fetched one by one (a listed final was believed unchecked)
                valid, reason = rc.verify_document(doc, group)
                if valid:
                    saw_final(doc)
                elif m.id != liar:
                    self.violations.append(f"receipt {str(doc.get('receipt_id'))[:12]}… listed final on {m.id} "
                                           f"does not verify: {reason}")
        # A receipt with a rival may also stay locked: when neither can get t shares (the slot's locks split, a
        # liar among the holders), neither is signed ("at most one, possibly none"). It may not while its rival
        # is final somewhere.
        unsettled = [h for h in unsettled if not (rival(h) and not signed.get(slot_of(h)))]
        if unsettled:
            examples = []
            for h in unsettled[:3]:
                doc = await get(http, f"{self.member(h['to']).url}/receipts/{h['rid']}") or {}
                examples.append(f"{h['rid'][:12]}… on {h['to']}: {doc.get('status')} "
                                f"{doc.get('reason', '')}".strip())
            engines = [(await get(http, f"{m.url}/cluster/status") or {}).get("receipts") for m in coords]
            self.violations.append(f"{len(unsettled)} acknowledged receipt(s) neither final nor (with a rival "
                                   f"for their slot) in conflict or unsigned with their rival, e.g. {examples}; "
                                   f"engines: {engines}")
        for slot, ids in signed.items():
            if len(ids) > 1:
                self.violations.append(f"slot {slot} signed {len(ids)} times: {sorted(i[:12] for i in ids)}")
        registered = [h["body"]["id"] for h in self.history if h["op"] == "register" and h["status"] == 200]
        missing: dict[str, list[str]] = {}
        with trio.move_on_after(CONVERGE_S):  # (the fresh ones were acknowledged a moment ago: on DA within a block
            while True:                     # or two; checked at once, one was "lacking" on two members: CI's seed 5)
                missing = {m.id: [node for node in registered if await status_of(http, f"{m.url}/node/{node}") != 200]
                           for m in coords}
                if not any(missing.values()):
                    break
                await trio.sleep(0.2)
        for member, nodes in missing.items():
            if nodes:
                self.violations.append(f"{member} lacks {len(nodes)} acknowledged node registration(s) "
                                       f"{CONVERGE_S:.0f}s after the last was acknowledged: {nodes[:3]}")
        during = [h for h in self.history if h.get("phase") == "load" and h["status"] in (200, 202)]
        if not any(h["op"] == "receipt" for h in during) or not any(h["op"] == "register" for h in during):
            # (the set-up's registrations, made before any fault, counted: this could not fail for them)
            self.violations.append(f"nothing to check: {sum(h['op'] == 'receipt' for h in during)} receipt(s) and "
                                   f"{sum(h['op'] == 'register' for h in during)} registration(s) acknowledged "
                                   "during the load")
        roots = set()  # (not the first loop's: a pass cut short here left those, and stale roots passed)
        with trio.move_on_after(CONVERGE_S):  # and the states agree again, once every receipt settled
            while len(roots := {(await get(http, f"{m.url}/state/root") or {}).get("root") for m in coords}) != 1 \
                    or None in roots:
                await trio.sleep(0.2)
        if len(roots) != 1 or None in roots:
            self.violations.append(f"state roots differ at the end of the check: {sorted(map(str, roots))}")
        if self.logs.errors:  # (a handler failing on every member went unseen: the output was only printed) ...
            self.violations.append(f"{len(self.logs.errors)} ERROR line(s) or traceback(s) in the honest members' "
                                   f"output, e.g. {self.logs.errors[:3]}")  # ... checked last: the whole check's
        if self.violations:  # how each coordinator sees its links now: a link that stayed down explains much
            for m in coords:
                links = await get(http, f"{m.url}/cluster/peers") or []
                self.say(f"{m.id}'s links: " + ", ".join(
                    f"{link.get('id')} {link.get('state')} (in {link.get('messages_in')}, out "
                    f"{link.get('messages_out')}, errors {link.get('errors')}, last error {link.get('last_error')})"
                    for link in links if isinstance(link, dict)))
        return {"acked_receipts": len(acked), "final": final, "registrations": len(registered)}


def _took(entry: dict[str, Any]) -> bool:
    """A write acknowledged: a registration answered 200, a receipt locked or final (a 202 "pending": not yet
    valid there, which the checks do not follow; a reviewer's finding)."""
    if entry["op"] != "receipt":
        return bool(entry["status"] == 200)
    answer = entry["answer"]
    return entry["status"] in (200, 202) and isinstance(answer, dict) and answer.get("status") in ("locked", "final")


async def get(http: httpx.AsyncClient, url: str) -> Any:
    try:
        r = await http.get(url, timeout=5.0)
        return r.json()
    except (httpx.HTTPError, ValueError):
        return None


async def status_of(http: httpx.AsyncClient, url: str) -> int | None:
    try:
        return (await http.get(url, timeout=5.0)).status_code
    except httpx.HTTPError:
        return None


async def all_final(http: httpx.AsyncClient, url: str) -> list[dict[str, Any]] | None:
    """Every final receipt a coordinator lists; None when a page cannot be read (a partial list would pass the
    slot check unseen)."""
    docs, after = [], None
    while True:
        page = await get(http, f"{url}/receipts?status=final&limit=1000" + (f"&after={after}" if after else ""))
        if not isinstance(page, dict) or not isinstance(page.get("receipts"), list):
            return None
        docs += page["receipts"]
        after = page["next_after"]
        if after is None:
            return docs


def write_history(nem: Nemesis) -> None:
    with open(nem.history_path, "w") as f:
        for entry in nem.history:
            f.write(json.dumps(entry, separators=(",", ":")) + "\n")


async def run(nem: Nemesis, sequence: list[str] | None, hurry: trio.Event | None = None) -> dict[str, Any]:
    """The whole run; its summary also in ``nem.summary`` (a signal during the clean-up lost it). ``hurry``: a second
    signal, the processes are killed rather than stopped."""
    async with httpx.AsyncClient(timeout=10) as http, trio.open_nursery() as nursery:
        try:
            started = time.perf_counter()
            await nem.start(nursery, http)
            print(f"[nemesis] cluster of {nem.n} up in {time.perf_counter() - started:.1f}s; "
                  f"{nem.duration:.0f}s of load and faults (seed {nem.seed})", flush=True)
            node_keys = await nem.setup_nodes(http)
            until = trio.current_time() + nem.duration
            async with trio.open_nursery() as work:
                work.start_soon(nem.load, http, until, node_keys)
                work.start_soon(nem.nemesis, nursery, http, until, sequence)
            await nem.heal(http, nursery)
            nem.summary = await nem.check(http, trio.current_time(), then=partial(nem.after_heal, http, node_keys))
        finally:
            try:  # first, whatever happened: a run that failed on its way left nothing to look at
                write_history(nem)
            except OSError as exc:  # (and the clean-up runs even so: a paused coordinator left stopped, else)
                print(f"[nemesis] could not write the history to {nem.history_path}: {exc}", flush=True)
            with trio.CancelScope(shield=True):
                for p in nem.members:  # a paused process cannot stop
                    if p.process is not None and p.process.returncode is None:
                        p.process.send_signal(signal.SIGCONT)
                await launcher._stop(nem.members, hurry if hurry is not None else trio.Event())
            nursery.cancel_scope.cancel()
    return nem.summary


async def _stop_on_signals(work: trio.CancelScope, hurry: trio.Event, got: list[int]) -> None:
    """SIGTERM, SIGINT or SIGHUP cut the run short, so its clean-up runs (killed by its default action, the nemesis
    left a paused coordinator stopped for good, holding its ports: a reviewer's reproduction); another one during
    the clean-up kills the processes instead of waiting for them. Heard until the clean-up is done."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            got.append(signum)
            if len(got) == 1:
                work.cancel()
            else:
                hurry.set()


async def run_until_signalled(nem: Nemesis, sequence: list[str] | None, got: list[int]) -> dict[str, Any] | None:
    hurry = trio.Event()
    async with trio.open_nursery() as listening:
        work = trio.CancelScope()
        listening.start_soon(_stop_on_signals, work, hurry, got)
        with work:
            await run(nem, sequence, hurry)
        listening.cancel_scope.cancel()
    return nem.summary


def report(nem: Nemesis, summary: dict[str, Any]) -> str:
    acked = sum(1 for h in nem.history if h["status"] in (200, 202))
    rows = [("faults injected", ", ".join(f"{k} {v}" for k, v in sorted(nem.faults.items())) or "none"),
            ("operations (acknowledged)", f"{len(nem.history)} ({acked})"),
            ("receipts acknowledged / final", f"{summary['acked_receipts']} / {summary['final']}"),
            ("node registrations acknowledged", str(summary["registrations"])),
            ("time to converge after healing", "never" if nem.converge_s is None else f"{nem.converge_s:.1f}s"),
            ("proxied connections peer/quorum",  # (what the cuts act on: the quorum layer's HTTP too)
             f"{sum(p.connections for p in nem.proxies.values())} / "
             f"{sum(p.connections for p in nem.validator_proxies.values())}"),
            ("violations", str(len(nem.violations))),
            ("wall time", f"{nem.wall_s:.0f}s")]
    width = max(len(r[0]) for r in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows] + [f"  - {v}" for v in nem.violations]
    return "\n".join(lines) + f"\nhistory: {nem.history_path}"


MAX_DURATION_S = 86_400.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="dsdn nemesis", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load and faults")
    parser.add_argument("-n", type=int, default=4, choices=(4, 5), help="coordinators (4 or 5)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--byzantine", choices=BYZANTINE_BEHAVIOURS,
                        help="start the last coordinator lying: bad shares, withheld shares, or an equivocating "
                             "proposer (different batches to different peers under one batch id)")
    parser.add_argument("--faults", help="comma-separated fault kinds to inject first, in order: " + ",".join(FAULTS))
    parser.add_argument("--history", type=Path, help="history file (JSON lines); default in the data dir")
    parser.add_argument("--data-dir", type=Path, help="default: a new temporary directory")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if not 1 <= args.duration <= MAX_DURATION_S:  # (nan fails this too; inf ran until killed)
        parser.error(f"--duration must be from 1 to {MAX_DURATION_S:.0f} seconds")
    sequence = args.faults.split(",") if args.faults else None
    if sequence and any(k not in FAULTS for k in sequence):
        parser.error(f"--faults: kinds are {', '.join(FAULTS)}")
    if args.data_dir is not None and args.data_dir.exists() and not args.data_dir.is_dir():
        parser.error(f"--data-dir {args.data_dir} is not a folder")
    if args.history is not None and not (args.history.parent.is_dir() and os.access(args.history.parent, os.W_OK)):
        parser.error(f"--history {args.history}: its folder is missing or not writable (found after the whole run)")
    if args.data_dir is not None and args.data_dir.is_dir() and any(args.data_dir.iterdir()):
        # (a previous run's chain and states: its registrations, same ids for the same seed, passed this run's checks)
        parser.error(f"--data-dir {args.data_dir} is not empty: give a new folder (a previous run's state would "
                     "answer for this one's)")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 30)
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="dsdn-nemesis-"))
    nem = Nemesis(args.n, args.duration, seed, data_dir, args.history or data_dir / "history.jsonl", args.byzantine)
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    started = time.perf_counter()
    got: list[int] = []
    summary = trio.run(run_until_signalled, nem, sequence, got)
    nem.wall_s = time.perf_counter() - started
    if summary is None:  # (stopped before the check ended; a signal after it still reports what it found)
        print(f"[nemesis] stopped by {signal.Signals(got[0]).name if got else 'a signal'}; history: "
              f"{nem.history_path}", flush=True)
        sys.exit(128 + (got[0] if got else signal.SIGTERM))
    print(report(nem, summary), flush=True)
    sys.exit(1 if nem.violations else 0)


if __name__ == "__main__":
    main()
