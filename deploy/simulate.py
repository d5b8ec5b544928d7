"""``dsdn simulate``: seeded fault schedules against a simulated receipt-signing cluster, with checkers.

A seed fixes everything: the cluster size (4..7), the byzantine members and their behaviour (within the fault budget
n − t), clock skews, the network (loss, duplication, delay), the workload (receipts, conflicting pairs for one slot,
receipts of a node registered on DA only later) and the fault schedule (crashes and restarts — also right after a
durable step, before what it guards leaves: a lock write and its share, an outbox commit and its acknowledgement, a
blob on DA and the outbox's record of it —, a lock-table commit failing as on a full disk (the member stops signing
until restarted), a member lost for good with its disk (when the fault budget allows
it: its outbox and lock table are gone, it never comes back), symmetric and one-way partitions, a slow member, DA
outages and inclusion lag). Every member runs a coordinator's real DA pipeline (outbox, publisher, consumer) over a
shared in-memory DA (deploy/simulation.py). The run happens in one trio run under MockClock with deterministic
scheduling, so a seed replays exactly. After the last fault heals, a client resubmits what is not final yet; then:

* safety — never two signed receipts for one slot (member ledgers, documents, adversary signatures), every
  signed batch verifies (Ed25519 under the group key + Merkle root), no nonce commitment used twice, no
  honest member blamed, every acknowledged node/object write (the workload writes some through members' outboxes)
  present on every honest member (but those of a lost member: its outbox went with its disk), every receipt a
  client was given a signed document for signed on every honest member (final stays final, lost proposer or not),
  nothing let out before what it rests on is durable (a signature share before its locks are committed, a DKG
  confirmation before its key share is stored: checked as each leaves);
* liveness — every valid receipt without a rival for its slot is final on every honest member within
  ``LIVENESS_BOUND_S`` of simulated time;
* convergence — honest members hold the same state root and the same signed receipts, and so does a coordinator
  rebuilt from DA alone (what DA holds is the truth: nothing final lives only in members' memories).

Keys: in a seeded fraction of the runs (``DKG_FRACTION``; ``--dkg all|none`` overrides) the members start
without a key and run the real DKG (consensus/dkg_service.py) under the seed's message faults plus a crash and
restart of a member while it runs (at a random moment, or right after its key share is durable and before its
confirmation leaves); the receipts then get signed with the key it produced. Those runs also check
liveness — after the heal, the DKG completes on every honest member within the bound — and convergence — every
honest member holds the same group key. The other runs start from a seeded dealt key (cheaper: the DKG roughly
doubles a seed's cost, and ``make test`` runs 1,000 seeds).

``dsdn simulate --seeds START:COUNT [--nodes N] [--receipts K] [--dkg seeded|all|none] [-v]`` prints a line per
failing seed (with the command that replays it) and ``simulate: <COUNT> seeds, <V> violations (<S> safety, <L>
liveness, <C> convergence)``; exit 0 only without violations.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import inspect
import logging
import os
import random
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import trio
import trio.testing

from consensus import receipts as rc
from consensus.dkg import default_threshold
from consensus.lockstore import CLOSED_CONFLICT
from consensus.receipt_service import Unavailable
from deploy.simulation import EPOCH, IDLE_POLL_S, Member, SimCluster
from node import events as ev
from node import merkle
from node.blob import decode_blob
from node.receipt_ledger import batch_verifies, parse_batch

LIVENESS_BOUND_S = 90.0
QUIET_BOUND_S = 60.0  # after the liveness checks, the cluster goes quiet within this (virtual) time
SETTLE_S = 4.0
RECORDS_SETTLE_S = 1.5  # once quiet, before the records are judged: three housekeeping rounds of the receipt services
RESUBMIT_S = 3.0  # how often the simulated client resubmits what is not final yet
DKG_FRACTION = 0.25  # of the seeds run the DKG (see the module docstring)
LOST_FRACTION = 0.2  # of the seeds with room in the fault budget lose a member for good (not with the DKG)
DISK_ERROR_FRACTION = 0.2  # of the seeds see a lock-table commit of an honest member fail
SIMULATED = "(simulated)"  # in the message of an injected error: its logged consequences are expected
DKG_MODES = ("seeded", "all", "none")
PROGRESS_S = 10.0  # a long ``dsdn simulate`` prints its progress this often (wall-clock seconds)


@dataclass
class Fault:
    at: float
    kind: str  # crash | crash_after_{lock,dkg_share,commit,post} | lost[_{before,after}_announce] | partition | cut
    #            | slow | da_outage | disk_error
    members: tuple[str, ...]
    duration: float

    def describe(self) -> str:
        return f"{self.at:5.2f}s {self.kind} {','.join(self.members)} for {self.duration:.2f}s"


@dataclass
class Plan:
    seed: int
    n: int
    byzantine: dict[str, str]
    skew: dict[str, float]
    drop: float
    duplicate: float
    delay: tuple[float, float]
    da_lag: float
    receipts: list[tuple[float, str, rc.Receipt]]  # (time, member it is sent to, receipt)
    conflicts: list[tuple[rc.Receipt, rc.Receipt]]
    late_node_at: float
    faults: list[Fault]
    dkg: bool = False  # members start without a key and run the DKG (one of ``faults`` crashes a member during it)
    writes: list[tuple[float, str, str, dict[str, Any]]] = field(default_factory=list)  # (time, member, kind, fields)
    refused: list[tuple[float, str, rc.Receipt]] = field(default_factory=list)  # never valid: never to be signed

    @property
    def heal_at(self) -> float:
        return max([f.at + f.duration for f in self.faults] + [r[0] for r in self.receipts] + [self.late_node_at]
                   + [w[0] for w in self.writes] + [r[0] for r in self.refused])

    def describe(self) -> str:
        lines = [f"seed {self.seed}: n={self.n} t={default_threshold(self.n)} byzantine={self.byzantine or 'none'} "
                 f"drop={self.drop:.2f} dup={self.duplicate:.2f} delay={self.delay[0]:.3f}-{self.delay[1]:.3f}s "
                 f"da_lag={self.da_lag:.2f}s skew={ {m: round(s, 2) for m, s in self.skew.items() if s} } "
                 f"keys={'DKG' if self.dkg else 'dealt'}",
                 f"  workload: {len(self.receipts)} submissions, {len(self.conflicts)} conflicting pairs, "
                 f"{len(self.refused)} never valid, {len(self.writes)} node/object writes, late node at "
                 f"{self.late_node_at:.2f}s; "
                 f"heal at {self.heal_at:.2f}s"]
        lines += [f"  fault {f.describe()}" for f in self.faults]
        return "\n".join(lines)


@dataclass
class Outcome:
    safety: list[str] = field(default_factory=list)
    liveness: list[str] = field(default_factory=list)
    convergence: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # ERROR records logged (a handler's exception, say): bugs
    fingerprint: str = ""
    group_key: bytes | None = None  # the key receipts were signed with (dealt, or the DKG's)
    signed: int = 0  # receipts final on some member
    faults_planned: int = 0
    faults_fired: int = 0  # the planned faults that took effect (a trap its member never reached, a crash of a
    #                        member already down: planned, not fired)

    @property
    def violations(self) -> list[str]:
        return [*(f"safety: {v}" for v in self.safety), *(f"liveness: {v}" for v in self.liveness),
                *(f"convergence: {v}" for v in self.convergence), *(f"error: {v}" for v in self.errors)]


class ErrorLog(logging.Handler):
    """Keeps the ERROR records logged during a seed: an exception a request handler raised is logged and the
    request goes unanswered, which the protocols survive, so it passed unseen (a reviewer's reproduction). No
    fault of the simulation makes an honest member log an error, but the disk error it injects (``SIMULATED``: the
    member must say it stops signing)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.records) < 20 and SIMULATED not in (text := record.getMessage()):
            if record.exc_info and record.exc_info[1] is not None:
                text += f" ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
            self.records.append(f"{record.name}: {text}"[:300])


def uses_dkg(seed: int, mode: str = "seeded") -> bool:
    """Whether ``seed`` runs the DKG: drawn from an RNG of its own, so the rest of a seed's plan is the same either
    way (a seed that ran with a dealt key before the DKG was added keeps its schedule)."""
    if mode != "seeded":
        return mode == "all"
    return random.Random(seed ^ 0xD1C0_5EED).random() < DKG_FRACTION


def scratch_dir() -> str | None:
    """Where the members' files go: memory-backed when the machine has it (a simulated crash keeps what was written
    whether or not it reached the disk, so fsync only costs time), else the default temporary folder."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


def make_plan(seed: int, nodes: int | None = None, receipts: int | None = None,
              dkg: str = "seeded") -> tuple[Plan, SimCluster]:
    """The plan for ``seed`` and the cluster it runs on (its members, nodes and receipts)."""
    rng = random.Random(seed)
    with_dkg = uses_dkg(seed, dkg)
    n = nodes or rng.choice([4, 5, 6, 7])
    tmp = Path(tempfile.mkdtemp(prefix=f"dsdn-sim-{seed}-", dir=scratch_dir()))
    drop = rng.choice([0.0, 0.0, 0.02, 0.05, 0.1])
    duplicate = rng.choice([0.0, 0.05, 0.2])
    delay = (0.0, rng.choice([0.005, 0.02, 0.1, 0.3]))
    cluster = SimCluster(tmp, n, seed, dkg=with_dkg, drop=drop, duplicate=duplicate, delay=delay)
    cluster.seed_ledger()
    ids = sorted(cluster.members)
    budget = n - cluster.threshold
    byzantine = {m: rng.choice(SimCluster.BEHAVIOURS) for m in rng.sample(ids, rng.randint(0, budget))}
    skew = {m: rng.choice([0.0, 0.0, rng.uniform(-5, 5)]) for m in ids}
    honest = [m for m in ids if m not in byzantine]
    k = receipts or rng.randint(4, 10)
    work: list[tuple[float, str, rc.Receipt]] = []
    slots = rng.sample([(node, obj) for node in range(6) for obj in range(6)], k)
    for i, (node, obj) in enumerate(slots):
        r = cluster.receipt(f"n{node}", f"obj{obj}", proof=i, epoch=EPOCH - rng.randint(0, 1))
        work.append((rng.uniform(0, 4), rng.choice(ids), r))
    conflicts = []
    for _ in range(rng.randint(0, 2)):  # a rival receipt for the slot of an existing one, sent elsewhere
        _, _, original = rng.choice(work)
        rival = cluster.receipt(original.node_id, original.subject, epoch=original.epoch,
                                reward=original.reward_base + 1 + rng.randint(0, 50), proof=rng.randint(100, 999))
        if all(rival.slot != a.slot for a, _ in conflicts):
            conflicts.append((original, rival))
            work.append((rng.uniform(0, 4), rng.choice(ids), rival))
    late_at = rng.uniform(1, 6)
    cluster.late_events = cluster.late_node("late")  # type: ignore[attr-defined]
    for i in range(rng.randint(0, 2)):
        work.append((rng.uniform(0, late_at), rng.choice(ids), cluster.receipt("late", f"obj{i}", proof=500 + i)))
    cluster.conflicts = conflicts
    faults: list[Fault] = []
    for _ in range(rng.randint(0, 4)):
        kind = rng.choice(["crash", "crash_after_lock", "crash_after_commit", "crash_after_post", "partition", "cut",
                           "slow", "da_outage"])
        at, duration = rng.uniform(0, 5), rng.uniform(0.3, 4)
        if kind == "crash" or kind in CRASH_AFTER:
            members: tuple[str, ...] = (rng.choice(honest),)
        elif kind == "partition":
            members = tuple(sorted(rng.sample(ids, rng.randint(1, n // 2))))
        elif kind == "cut":
            members = tuple(rng.sample(ids, 2))
        elif kind == "slow":
            members = (rng.choice(ids),)
        else:
            members = ()
        faults.append(Fault(at, kind, members, duration))
    da_lag = rng.choice([0.1, 0.2, 0.5, 1.0])
    if with_dkg:  # a member crashes while the DKG runs (it starts once every member is connected, ~0.2 s in):
        # at a random moment, or right after its key share of the session is durable, before its confirmation leaves
        dkg_rng = random.Random(seed ^ 0xD1C0_FA17)
        kind = dkg_rng.choice(["crash", "crash_after_dkg_share"])
        at = dkg_rng.uniform(0.1, 2.5) if kind == "crash" else 0.0
        faults.append(Fault(at, kind, (dkg_rng.choice(honest),), dkg_rng.uniform(0.3, 4)))
    lost_rng = random.Random(seed ^ 0x10_57D15C)  # its own stream: the other draws stay as they were
    if not with_dkg and len(byzantine) < budget and lost_rng.random() < LOST_FRACTION:
        # one honest member dies for good with its disk: its outbox (batches maybe not on DA yet) and lock table;
        # at once, or as it announces its next signed batch: before any peer heard of it, or once enough keep it
        faults.append(Fault(lost_rng.uniform(0, 3), lost_rng.choice(["lost", "lost_before_announce",
                                                                      "lost_after_announce"]),
                            (lost_rng.choice(honest),), 0.0))
    disk_rng = random.Random(seed ^ 0xD15C_E770)  # its own stream too
    if disk_rng.random() < DISK_ERROR_FRACTION:  # a lock commit fails (disk full, I/O error); restarted later
        faults.append(Fault(disk_rng.uniform(0, 5), "disk_error", (disk_rng.choice(honest),),
                            disk_rng.uniform(0.5, 4)))
    writes: list[tuple[float, str, str, dict[str, Any]]] = []
    for i in range(rng.randint(0, 6)):  # writes to the ledger through a member's outbox: each must never be lost
        fields: dict[str, Any] = ({"id": f"w{i}", "zone": "z", "addr": "h:3", "capacity_gb": 1} if rng.random() < 0.5
                                  else {"hash": f"wobj{i}", "size": rng.randint(1, 10**6)})
        kind = ev.NODE_REGISTERED if "id" in fields else ev.OBJECT_REGISTERED
        writes.append((rng.uniform(0, 6), rng.choice(honest), kind, fields))
    # a rival sent to a member just restarted, for a receipt submitted before its crash (the member may hold a lock
    # for it): a signer that forgets its locks at a restart signs it (only rivals sent with the originals, at the
    # start, tested that: a planted lock loss at restarts went unseen for 60 seeds, a checker audit)
    rival_rng = random.Random(seed ^ 0x2_1BA1)  # its own stream: the other draws stay as they were
    for f in [f for f in faults if f.kind == "crash" or f.kind in CRASH_AFTER]:
        before = [r for at, _, r in work if at < f.at and all(r.slot != a.slot for a, _ in conflicts)]
        if before and rival_rng.random() < 0.7:
            original = rival_rng.choice(before)
            rival = cluster.receipt(original.node_id, original.subject, epoch=original.epoch,
                                    reward=original.reward_base + 100 + rival_rng.randint(0, 50),
                                    proof=rival_rng.randint(1000, 1999))
            conflicts.append((original, rival))
            work.append((f.at + f.duration + rival_rng.uniform(0.2, 1.0), f.members[0], rival))
    refused_rng = random.Random(seed ^ 0x4EF_05ED)  # its own stream: the other draws stay as they were
    refused = [(refused_rng.uniform(0, 5), refused_rng.choice(ids), r)
               for r in refused_rng.sample(cluster.refused_receipts(), refused_rng.randint(0, 3))]
    plan = Plan(seed, n, byzantine, skew, drop, duplicate, delay, da_lag, work, conflicts, late_at,
                sorted(faults, key=lambda f: f.at), with_dkg, writes, refused)
    for m, behaviour in byzantine.items():
        cluster.members[m].behaviour = behaviour
    for m, s in skew.items():
        cluster.members[m].skew_s = s
    cluster.da.lag = plan.da_lag
    return plan, cluster


async def run_plan(plan: Plan, cluster: SimCluster) -> Outcome:
    outcome = Outcome()
    records: list[Any] = []
    submitted: list[tuple[str, Any]] = []  # (member, record) of every submission
    acknowledged: list[ev.Event] = []  # writes a member acknowledged
    refused_records: list[tuple[str, Any]] = []  # (member, record) of each submission of a never valid receipt
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        t0 = cluster.t0

        async def submit_at(at: float, member: str, receipt: rc.Receipt) -> None:
            await trio.sleep_until(t0 + at)
            m = cluster.members[member]
            if m.up and m.service is not None:
                with contextlib.suppress(Unavailable):  # the client is told to come back later; it resubmits
                    records.append(m.service.submit(receipt))
                    submitted.append((member, records[-1]))

        async def submit_refused_at(at: float, member: str, receipt: rc.Receipt) -> None:
            await trio.sleep_until(t0 + at)
            m = cluster.members[member]
            if m.up and m.service is not None:
                with contextlib.suppress(Unavailable):
                    refused_records.append((member, m.service.submit(receipt)))

        async def write_at(at: float, member: str, kind: str, fields: dict[str, Any]) -> None:
            await trio.sleep_until(t0 + at)
            m = cluster.members[member]
            if m.up:
                incarnation = m.incarnation
                with trio.move_on_after(5):  # a member that crashes meanwhile never answers: not acknowledged
                    acknowledged.append(await cluster.write(member, kind, **fields))
                    return
                if m.incarnation == incarnation:  # it did not crash: a write it swallowed (went unseen: a review)
                    outcome.liveness.append(f"a {kind} write to {member} at {at:.2f}s got no answer within 5 s, "
                                            "though the member did not crash")

        async def apply_fault(f: Fault) -> None:
            await trio.sleep_until(t0 + f.at)
            await inject(cluster, f)

        async def post_late_node() -> None:
            await trio.sleep_until(t0 + plan.late_node_at)
            await cluster.post_events(cluster.late_events)  # type: ignore[attr-defined]

        async with trio.open_nursery() as schedule:
            for at, member, receipt in plan.receipts:
                schedule.start_soon(submit_at, at, member, receipt)
            for f in plan.faults:
                schedule.start_soon(apply_fault, f)
            for write in plan.writes:
                schedule.start_soon(write_at, *write)
            for at, member, receipt in plan.refused:
                schedule.start_soon(submit_refused_at, at, member, receipt)
            schedule.start_soon(post_late_node)
        await trio.sleep_until(t0 + plan.heal_at + 0.01)
        await heal(cluster)
        # like a real client, resubmit what is not final yet (idempotent) to an honest member that is up, every
        # few seconds: an answer "pending" (not yet valid here) is no acknowledgement, nothing of it is durable.
        # What a member acknowledged is never resubmitted: the cluster must finish it by itself (resubmitted, a
        # receipt acknowledged and then dropped was signed anew and the loss went unseen: a reviewer's reproduction)
        rng = random.Random(plan.seed ^ 0x5EED)
        acked = acknowledged_receipts(cluster, submitted)
        rivals = {r.id for pair in plan.conflicts for r in pair}
        expected = {r.id for _, _, r in plan.receipts if r.id not in rivals}
        def given() -> set[bytes]:  # receipts a client holds a signed document of (rivals included): they too
            #                          must reach every honest member (a heard batch republished, or a takeover);
            #                          waited for here, they were checked before they could (seed 214215)
            return {r.id for r, _ in cluster.observed.documents} | {r.receipt.id for r in records
                                                                     if r.document is not None}

        liveness_deadline = trio.current_time() + LIVENESS_BOUND_S
        with trio.move_on_at(liveness_deadline):  # the DKG too must complete within the bound
            resubmit_at = trio.current_time()
            while not all(expected | given() <= set(m.state.ledger.receipts) for m in cluster.honest()) \
                    or cluster.keyless() or unsettled_acknowledged(cluster, submitted):
                if trio.current_time() >= resubmit_at:
                    resubmit_at += RESUBMIT_S
                    final_ids = cluster.signed_ids()
                    acked = acknowledged_receipts(cluster, submitted)  # (resubmissions acknowledge receipts too)
                    for _, _, receipt in plan.receipts:
                        honest = [m for m in cluster.honest() if m.up]
                        if receipt.id not in final_ids and receipt.id not in acked and honest:
                            member = rng.choice(honest)
                            with contextlib.suppress(Unavailable):  # its answer is checked like the first one's
                                records.append(member.service.submit(receipt))  # type: ignore[union-attr]
                                submitted.append((member.id, records[-1]))  # (a 202 given here went unchecked)
                await trio.sleep(0.25)  # look often, resubmit every RESUBMIT_S: the run ends soon after the last
        if cluster.dkg and cluster.keyless():
            errors = sorted({str(m.dkg.status()["dkg"]["error"])[:120] for m in cluster.honest()
                             if m.dkg is not None and m.keys.key is None})
            outcome.liveness.append(f"the DKG did not complete on {cluster.keyless()} {LIVENESS_BOUND_S:.0f}s after "
                                    f"the heal; their errors: {errors}")
        for m in cluster.honest():
            missing = expected - set(m.state.ledger.receipts)
            if missing:
                states = sorted({f"{r.status}({r.reason[:60]})" for r in records if r.receipt.id in missing})
                outcome.liveness.append(f"{len(missing)} valid receipt(s) not final on {m.id} "
                                        f"{LIVENESS_BOUND_S:.0f}s after the heal; their records: {states}")
        await trio.sleep(SETTLE_S)
        await _wait_quiet(cluster, outcome)
        # A receipt of a pair left undecided when the loop above ended (its rival not signed yet, too few honest
        # signers for either) is decided if the rival was signed since: its member then closes its lock as a conflict
        # at its next takeover pass (rank-staggered: 21 s for the 7th member). Judged at once, it was reported
        # unsettled (seeds 446722, 447071: a rival signed during the quiet wait). Within the same liveness bound;
        # then quiet again (what settled meanwhile may have moved)
        if unsettled_acknowledged(cluster, submitted):
            with trio.move_on_at(liveness_deadline):
                while unsettled_acknowledged(cluster, submitted):
                    await trio.sleep(0.25)
            await _wait_quiet(cluster, outcome)
        check_safety(cluster, records, outcome, [r for _, _, r in plan.refused])
        check_refused(plan, cluster, refused_records, outcome)
        check_acknowledged(cluster, submitted, outcome)
        check_writes(cluster, acknowledged, outcome)
        check_convergence(cluster, outcome)
        outcome.fingerprint = hashlib.sha256(b"".join(
            [m.state.root() for m in cluster.members.values()] + sorted(cluster.signed_ids())
            + [cluster.group_key or b""])).hexdigest()[:16]
        outcome.group_key, outcome.signed = cluster.group_key, len(cluster.signed_ids())
        outcome.faults_planned, outcome.faults_fired = len(plan.faults), cluster.faults_fired
        nursery.cancel_scope.cancel()
    cluster.close()
    return outcome


async def inject(cluster: SimCluster, f: Fault) -> None:
    """Apply one fault and, after its duration, undo it (a crashed member restarts from its data dir)."""
    assert cluster.nursery is not None
    if f.kind == "crash":
        if cluster.members[f.members[0]].up:
            cluster.crash(f.members[0])
            cluster.faults_fired += 1
            cluster.nursery.start_soon(_restart_later, cluster, f.members[0], f.duration)
    elif f.kind in CRASH_AFTER:
        m = cluster.members[f.members[0]]
        if m.up:
            CRASH_AFTER[f.kind](cluster, m, lambda: _crash_now(cluster, m.id, f.duration))
    elif f.kind == "lost":
        cluster.lose(f.members[0])
        cluster.faults_fired += 1
    elif f.kind.startswith("lost_"):
        m = cluster.members[f.members[0]]
        if m.up:
            _lose_at_announce(cluster, m, announced=f.kind == "lost_after_announce")
    elif f.kind == "partition":
        cut = cluster.net.partition(set(f.members), set(cluster.members) - set(f.members))
        cluster.faults_fired += 1
        cluster.nursery.start_soon(_later, f.duration, lambda: cluster.net.heal(cut))
    elif f.kind == "cut":
        pair = (f.members[0], f.members[1])
        cluster.net.cuts.add(pair)
        cluster.faults_fired += 1
        cluster.nursery.start_soon(_later, f.duration, lambda: cluster.net.cuts.discard(pair))
    elif f.kind == "slow":
        cluster.net.slow[f.members[0]] = 0.4
        cluster.faults_fired += 1
        cluster.nursery.start_soon(_later, f.duration, lambda: cluster.net.slow.pop(f.members[0], None))
    elif f.kind == "da_outage":
        cluster.da.down_until = max(cluster.da.down_until, trio.current_time() + f.duration)
        cluster.faults_fired += 1
    elif f.kind == "disk_error":
        m = cluster.members[f.members[0]]
        if m.up and m.locks is not None and m.locks.broken is None:
            def fired() -> None:  # (counted when a commit fails: set up, one the member never reached counted too)
                cluster.faults_fired += 1

            m.locks.db = FailingCommit(m.locks.db, fired)  # type: ignore[assignment]
            # the member stops signing (its table is broken) until an operator restarts it (part of this fault: not
            # counted again, as _crash_now counts a trap's crash)
            cluster.nursery.start_soon(_later, f.duration, lambda: _restart_now(cluster, m.id))


class FailingCommit:
    """A lock table's connection whose next COMMIT fails as a full disk or an I/O error makes it fail: the store's
    own error handling runs (rollback, the table marked broken, no more signing until a restart), and nothing made
    from the locks it failed to commit may have left (``Observed.undurable``)."""

    def __init__(self, db: Any, on_fire: Callable[[], None] | None = None) -> None:
        self._db, self.armed, self.on_fire = db, True, on_fire

    def _fire(self) -> None:
        self.armed = False
        if self.on_fire is not None:
            self.on_fire()
        raise sqlite3.OperationalError(f"disk I/O error {SIMULATED}")

    def execute(self, sql: str, *args: Any) -> Any:
        if self.armed and sql.strip().upper() == "COMMIT":
            self._fire()
        return self._db.execute(sql, *args)

    def __enter__(self) -> Any:
        self._db.__enter__()
        return self

    def __exit__(self, *exc: Any) -> Any:
        if self.armed and exc[0] is None and self._db.in_transaction:  # (``with conn:`` commits without execute)
            self._db.rollback()
            self._fire()
        return self._db.__exit__(*exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


def _restart_now(cluster: SimCluster, member: str) -> None:
    if cluster.members[member].up:
        cluster.crash(member)
        assert cluster.nursery is not None
        cluster.nursery.start_soon(_restart_later, cluster, member, 0.2)


def _crash_now(cluster: SimCluster, member: str, downtime: float) -> None:
    """A trap went off: the member crashes at once (unless it is down already) and restarts after ``downtime``."""
    if cluster.members[member].up:
        cluster.crash(member)
        cluster.faults_fired += 1
        assert cluster.nursery is not None
        cluster.nursery.start_soon(_restart_later, cluster, member, downtime)


# Crashes right after a durable step, before what it guards leaves the member. Each arms a trap on the member's
# current incarnation (``crash``: call it after the step) and records how to disarm it at the heal.

def _after_lock(cluster: SimCluster, m: Member, crash: Callable[[], None]) -> None:
    """After a durable slot-lock write, before the share it guards is sent."""
    store = m.locks
    if store is None:
        return
    original = store.lock_batch

    def then_crash(*args: Any, **kwargs: Any) -> Any:
        decisions = original(*args, **kwargs)
        store.lock_batch = original  # type: ignore[method-assign]
        if kwargs.get("commit", True):  # durable: committed
            crash()
        else:  # decided in the event loop: durable once its commit returns (a proposer's peers are being asked,
            #    a signer's share is made, meanwhile)
            _crash_after_call(cluster, store, "commit", crash)
        return decisions

    store.lock_batch = then_crash  # type: ignore[method-assign]
    cluster.traps.append(lambda: setattr(store, "lock_batch", original))


def _crash_after_call(cluster: SimCluster, owner: Any, name: str, crash: Callable[[], None],
                      when: Callable[[], bool] = lambda: True) -> None:
    """Wrap ``owner.name`` (a function or a coroutine function) so that its next call completes, then the member
    crashes (if ``when()``); disarmed at the heal."""
    original = getattr(owner, name)

    def after(result: Any) -> Any:
        setattr(owner, name, original)
        if when():
            crash()
        return result

    async def then_crash_async(*args: Any, **kwargs: Any) -> Any:
        return after(await original(*args, **kwargs))

    setattr(owner, name, then_crash_async if inspect.iscoroutinefunction(original)
            else lambda *args, **kwargs: after(original(*args, **kwargs)))
    cluster.traps.append(lambda: setattr(owner, name, original))


def _after_dkg_share(cluster: SimCluster, m: Member, crash: Callable[[], None]) -> None:
    """After its DKG key share and journal are durable, before its confirmation leaves."""
    service = m.dkg
    if service is not None and service.key is None:
        _crash_after_call(cluster, service, "_store_pending", crash, lambda: m.dkg is service)


def _after_commit(cluster: SimCluster, m: Member, crash: Callable[[], None]) -> None:
    """After an outbox commit (the events are durable), before the writes it acknowledges are answered."""
    if m.outbox is not None:
        _crash_after_call(cluster, m.outbox, "_on_commit", crash)


def _after_post(cluster: SimCluster, m: Member, crash: Callable[[], None]) -> None:
    """After a blob is on DA, before the outbox records where it landed: the restarted member posts it again."""
    publisher = m.publisher
    if publisher is None:
        return
    da = publisher.da

    async def post_then_crash(data: bytes) -> Any:
        ref = await da.post(data)
        publisher.da = da
        crash()
        return ref

    publisher.da = SimpleNamespace(name=da.name, post=post_then_crash)  # type: ignore[assignment]
    cluster.traps.append(lambda: setattr(publisher, "da", da))


CRASH_AFTER: dict[str, Callable[[SimCluster, Member, Callable[[], None]], None]] = {
    "crash_after_lock": _after_lock, "crash_after_dkg_share": _after_dkg_share,
    "crash_after_commit": _after_commit, "crash_after_post": _after_post}


def _lose_now(cluster: SimCluster, member: str) -> None:
    cluster.lose(member)
    cluster.faults_fired += 1


def _lose_at_announce(cluster: SimCluster, m: Member, *, announced: bool) -> None:
    """The member is lost for good as it announces its next signed batch: before any peer heard of it (their locks
    stay open: a takeover signs the receipts again, if their slots allow), or once enough peers keep it, before its
    own outbox has it (one of them publishes it again). Not lost if it signs no batch before the heal."""
    service = m.service
    if service is None:
        return
    if announced:
        _crash_after_call(cluster, service, "_announce", lambda: _lose_now(cluster, m.id))
        return
    original = service._announce

    async def lose_first(*args: Any, **kwargs: Any) -> Any:
        service._announce = original  # type: ignore[method-assign]
        _lose_now(cluster, m.id)
        await trio.lowlevel.checkpoint()  # cancelled: it is gone

    service._announce = lose_first  # type: ignore[method-assign]
    cluster.traps.append(lambda: setattr(service, "_announce", original))


async def _later(delay: float, undo: Callable[[], Any]) -> None:
    await trio.sleep(delay)
    undo()


async def _restart_later(cluster: SimCluster, member: str, delay: float) -> None:
    await trio.sleep(delay)
    if not cluster.members[member].up and not cluster.members[member].lost:
        await cluster.restart(member)


async def heal(cluster: SimCluster) -> None:
    for disarm in cluster.traps:
        disarm()
    cluster.traps.clear()
    cluster.net.heal()
    cluster.net.cuts.clear()
    cluster.net.slow.clear()
    cluster.da.down_until = 0.0
    for m in cluster.members.values():
        if not m.up and not m.lost:
            await cluster.restart(m.id)


def check_safety(cluster: SimCluster, records: list[Any], outcome: Outcome, never_valid: list[rc.Receipt]) -> None:
    """``never_valid``: receipts no state makes valid (``SimCluster.refused_receipts``): none may be signed."""
    key = cluster.group_key  # None: no honest member has a key (the DKG did not complete: a liveness violation)
    if key is None and (cluster.signed_ids() or cluster.observed.documents
                        or any(r.document is not None for r in records)):
        outcome.safety.append("receipts signed while no honest member holds a group key")
    signed: dict[tuple[str, str, str, int], set[bytes]] = {}
    for m in cluster.members.values():
        for slot, ids in m.state.ledger.by_slot.items():
            signed.setdefault(slot, set()).update(ids)
        for batch in m.state.ledger.batches.values():
            raws = [raw for raw, _ in batch.wires]
            root = bytes.fromhex(batch.root)
            if key is None or merkle.root(raws) != root or not rc_verify(key, root, len(raws),
                                                                         bytes.fromhex(batch.signature)):
                outcome.safety.append(f"a batch on {m.id} does not verify under the group key")
    # every receipt batch an honest member put on DA, read from DA itself: the states keep a batch out that fails
    # its checks, so a member publishing a bad one went unseen there (a reviewer's reproduction)
    keys, honest_ids = frozenset(cluster.member_keys.values()), {m.id for m in cluster.members.values()
                                                                  if m.behaviour is None}
    for _, data in cluster.da.blobs:
        for kind, _, _, origin, fields, _, _ in decode_blob(data, keys, member_ids=cluster.ids).events:
            if kind != ev.RECEIPT_BATCH or origin not in honest_ids:
                continue
            batch = parse_batch(fields)
            if batch is None or key is None or batch.group_key != key.hex() or not batch_verifies(batch):
                outcome.safety.append(f"{origin} published a receipt batch that does not verify under the group key")
                continue
            for raw, _ in batch.wires:
                receipt = rc.decode(raw, bytes(64))
                signed.setdefault(receipt.slot, set()).add(receipt.id)
    given = [*cluster.observed.documents, *((r.receipt, r.document) for r in records if r.document is not None)]
    for receipt, doc in given:
        valid, reason = rc.verify_document(doc, key) if key is not None else (False, "no group key")
        if not valid:
            outcome.safety.append(f"a document given to a client does not verify: {reason}")
        elif doc.get("receipt_id") != receipt.id.hex():  # (another receipt's valid document went unseen: an audit)
            outcome.safety.append(f"a client got the document of another receipt for {receipt.id.hex()[:12]}")
        signed.setdefault(receipt.slot, set()).add(receipt.id)
    lost = sorted({receipt.id.hex()[:12] for receipt, _ in given
                   for m in cluster.honest() if receipt.id not in m.state.ledger.receipts})
    if lost:
        outcome.safety.append(f"{len(lost)} receipt(s) given to clients as signed are not signed on every honest "
                              f"member: {lost[:3]}")
    for receipts, root, signature in [*cluster.observed.adversary_signatures, *cluster.observed.signatures]:
        if key is not None and rc_verify(key, root, len(receipts), signature):
            for r in receipts:
                signed.setdefault(r.slot, set()).add(r.id)
    for slot, ids in signed.items():
        if len(ids) > 1:
            outcome.safety.append(f"slot {slot} has {len(ids)} signed receipts")
    by_id = {r.id: r for r in never_valid}
    for rid in sorted(by_id.keys() & set().union(*signed.values())):
        outcome.safety.append(f"a receipt no state makes valid was signed: {by_id[rid].slot}")
    for what in dict.fromkeys(cluster.observed.undurable):  # (each once, in order)
        outcome.safety.append(what)
    for (member, slot), ids in cluster.observed.promised.items():
        if len(ids) > 1:
            outcome.safety.append(f"{member} released signature shares for {len(ids)} receipts of slot {slot}")
    seen: set[tuple[str, tuple[bytes, bytes]]] = set()
    for share in cluster.observed.shares:
        if share in seen:
            outcome.safety.append(f"{share[0]} released two shares for one nonce commitment")
        seen.add(share)
    honest_blamed = sorted({(by, name) for by, name in cluster.observed.blames  # by every incarnation of a member
                            if cluster.members[by].behaviour is None and cluster.members[name].behaviour is None})
    for by, name in honest_blamed:
        outcome.safety.append(f"{by} blamed honest member {name}")
    for m in cluster.members.values():
        if m.dkg is not None and m.behaviour is None:
            left_out = {m.dkg.name(i) for i in m.dkg.proofs}
            if any(cluster.members[name].behaviour is None for name in left_out):
                outcome.safety.append(f"{m.id} left honest member(s) out of the DKG: {sorted(left_out)}")


def check_refused(plan: Plan, cluster: SimCluster, refused_records: list[tuple[str, Any]],
                  outcome: Outcome) -> None:
    """Receipts no state makes valid (``SimCluster.refused_receipts``; their being signed is ``check_safety``'s):
    no honest member locked one, nor acknowledged one to its client (its record pending, or rejected)."""
    for _, _, receipt in plan.refused:
        for m in cluster.honest():
            if m.up and m.locks is not None and m.locks.broken is None and m.locks.lock_of(receipt.id) is not None:
                outcome.safety.append(f"{m.id} locked a receipt no state makes valid: {receipt.slot}")
    for member, record in refused_records:
        if cluster.members[member].behaviour is None and (record.optimistic is not None
                                                         or record.status not in ("pending", "rejected")):
            outcome.safety.append(f"{member} answered {record.status} for a receipt no state makes valid: "
                                  f"{record.receipt.slot}")


def _answers_for(cluster: SimCluster, member: str) -> bool:
    """Whether ``member``'s acknowledgements bind the cluster: a member lost with its disk takes those only it held
    with it, and a liar's prove nothing (seed 3416: one acknowledged by the equivocator alone was never sent to an
    honest member again)."""
    m = cluster.members[member]
    return not m.lost and m.behaviour is None


def acknowledged_receipts(cluster: SimCluster,
                          submitted: list[tuple[str, Any]]) -> dict[bytes, tuple[rc.Receipt, set[str]]]:
    """Receipts an honest member acknowledged (its own lock durable: the optimistic promise; or final) and still
    answers for (``_answers_for``), each with the members that did."""
    acked: dict[bytes, tuple[rc.Receipt, set[str]]] = {}
    for member, record in submitted:
        if (record.optimistic is not None or record.status == "final") and _answers_for(cluster, member):
            acked.setdefault(record.receipt.id, (record.receipt, set()))[1].add(member)
    return acked


async def _wait_quiet(cluster: SimCluster, outcome: Outcome) -> None:
    """Until the cluster is quiet: nothing in flight, nothing new for two idle reads (a liveness finding if not within
    QUIET_BOUND_S)."""
    posted = -1
    with trio.move_on_after(QUIET_BOUND_S):
        while True:
            while not cluster.quiet():
                await trio.sleep(0.1)
            posted = cluster.da.posts
            # (long enough for the records too: a batch that ended unsigned just before has its receipts, final
            # here by another's batch, settled at their next retry; judged at once, they looked stuck)
            await trio.sleep(max(2 * IDLE_POLL_S, RECORDS_SETTLE_S))
            if cluster.da.posts == posted and cluster.quiet():
                break
    if not cluster.quiet() or cluster.da.posts != posted:  # (it passed, and was checked as if quiet)
        outcome.liveness.append(f"the cluster is not quiet {QUIET_BOUND_S:.0f}s after the liveness checks "
                                f"({cluster.da.posts} DA posts so far)")


def unsettled_acknowledged(cluster: SimCluster, submitted: list[tuple[str, Any]]) -> list[bytes]:
    """Acknowledged receipts (``acknowledged_receipts``) neither final on every honest member nor a conflict at
    the member that acknowledged it (its record, or its lock closed as one: what its client is told). Of two
    receipts for one slot possibly neither is signed; then both clients must learn it, unless a member lost for
    good or a liar holds the deciding vote, the honest members up that could sign it being fewer than t: then a
    receipt of a pair may stay locked while its rival is not signed either (refused by n - t others it closes as a
    conflict; here fewer refuse it than it lacks signers: seed 690, t = 5 of 6, one member lost, one holding the
    rival), as the nemesis checker allows."""
    honest = cluster.honest()
    rivals = {a.id: b.id for pair in cluster.conflicts for a, b in (pair, pair[::-1])}  # receipt -> its rival
    undecidable = any(m.lost or m.behaviour is not None for m in cluster.members.values())
    unsettled = []
    for rid, (receipt, members) in acknowledged_receipts(cluster, submitted).items():
        if all(rid in m.state.ledger.receipts for m in honest):
            continue
        if all(_conflict_at(cluster.members[name], rid) for name in members if cluster.members[name] in honest):
            continue
        if undecidable and rid in rivals and not any(m.state.ledger.by_slot.get(receipt.slot) for m in honest) \
                and _honest_signers_possible(cluster, rivals[rid]) < default_threshold(len(cluster.members)):
            continue
        unsettled.append(rid)
    return sorted(unsettled)


def _honest_signers_possible(cluster: SimCluster, rival: bytes) -> int:
    """Honest members up that could still sign a receipt: those not holding the lock of its rival (read from their
    lock tables)."""
    return sum(1 for m in cluster.honest() if m.up and m.locks is not None and m.locks.broken is None
               and m.locks.lock_of(rival) is None)


def _conflict_at(m: Any, rid: bytes) -> bool:
    record = m.service.records.get(rid) if m.service is not None else None
    if record is not None and record.status == "conflict":
        return True
    if m.locks is None or m.locks.broken is not None or not m.up:  # (down: its table closed; seed 71419 crashed)
        return False
    held = m.locks.lock_of(rid)
    return held is not None and held[1] == CLOSED_CONFLICT


def check_acknowledged(cluster: SimCluster, submitted: list[tuple[str, Any]], outcome: Outcome) -> None:
    """Every acknowledged receipt ends final on every honest member, or in conflict where it was acknowledged. And
    every submission an honest member still holds (its record, not replaced by a crash or an eviction) is settled
    there: final, a conflict or rejected (the client resubmits what is not final to another member, which signed
    it, so a proposer that dropped receipts from its batches left its own clients waiting for ever unseen: a
    reviewer's plant), unless it is one of a pair of rivals that may stay undecided (``unsettled_acknowledged``)."""
    lost = unsettled_acknowledged(cluster, submitted)
    if lost:
        outcome.safety.append(f"{len(lost)} acknowledged receipt(s) neither final on every honest member nor a "
                              f"conflict where acknowledged: {[rid.hex()[:12] for rid in lost[:3]]}")
    rivals = {a.id: b.id for pair in cluster.conflicts for a, b in (pair, pair[::-1])}  # receipt -> its rival
    undecidable = any(m.lost or m.behaviour is not None for m in cluster.members.values())
    t = default_threshold(len(cluster.members))

    def may_stay_open(record: Any) -> bool:  # (as unsettled_acknowledged excuses it: locked, never "pending")
        rid = record.receipt.id
        return (record.status == "locked" and undecidable and rid in rivals
                and not any(m.state.ledger.by_slot.get(record.receipt.slot) for m in cluster.honest())
                and _honest_signers_possible(cluster, rivals[rid]) < t)

    stuck = sorted({(member, record.receipt.id.hex()[:12], record.status) for member, record in submitted
                    if record.status in ("pending", "locked") and cluster.members[member] in cluster.honest()
                    and cluster.members[member].up and cluster.members[member].service is not None
                    and cluster.members[member].service.records.get(record.receipt.id) is record
                    and not may_stay_open(record)})
    if stuck:
        outcome.liveness.append(f"{len(stuck)} submission(s) an honest member holds never settled there: "
                                f"{stuck[:3]}")


def check_writes(cluster: SimCluster, acknowledged: list[ev.Event], outcome: Outcome) -> None:
    """Every acknowledged node/object write is in every honest member's state as written (nothing acknowledged is
    lost or changed: a key present with other fields passed, a reviewer's reproduction)."""
    for event in acknowledged:
        if cluster.members[event.origin].lost:
            continue  # acknowledged once durable in its outbox, which is gone with its disk (DA never had it)
        node = event.kind == ev.NODE_REGISTERED
        key = event.field("id" if node else "hash")
        expected = ((event.field("zone"), event.field("addr"), event.field("capacity_gb")) if node
                    else event.field("size"))
        for m in cluster.honest():
            held = m.state.node(key) if node else m.state.object(key)
            if held is None:
                outcome.safety.append(f"an acknowledged write ({event.kind} {key}, to {event.origin}) is missing "
                                      f"on {m.id}")
            elif (tuple(held) if node else held[0]) != expected:  # type: ignore[index]
                outcome.safety.append(f"an acknowledged write ({event.kind} {key}, to {event.origin}) holds other "
                                      f"fields on {m.id}: {held!r}, written {expected!r}")


def rc_verify(key: bytes, root: bytes, size: int, signature: bytes) -> bool:
    from consensus.frost import verify

    return verify(key, rc.batch_message(key, root, size), signature)


def check_convergence(cluster: SimCluster, outcome: Outcome) -> None:
    honest = cluster.honest()
    keys = {k for k in cluster.group_keys().values() if k is not None}
    if len(keys) > 1:
        outcome.convergence.append(f"honest members hold {len(keys)} different group keys: "
                                   f"{ {m: k.hex()[:12] if k else None for m, k in cluster.group_keys().items()} }")
    roots = {m.state.root() for m in honest}
    if len(roots) > 1:
        outcome.convergence.append(f"{len(roots)} different state roots among honest members")
    rebuilt = cluster.rebuilt_from_da()
    if roots and rebuilt.root() not in roots:
        outcome.convergence.append("a coordinator rebuilt from DA alone holds another state than the honest members"
                                   f" ({len(set(rebuilt.ledger.receipts))} signed receipts, they hold "
                                   f"{sorted(len(m.state.ledger.receipts) for m in honest)})")
    sets = {frozenset(m.state.ledger.receipts) for m in honest}
    if len(sets) > 1:
        outcome.convergence.append("honest members hold different signed receipts")


def run_seed(seed: int, nodes: int | None = None, receipts: int | None = None,
             dkg: str = "seeded") -> tuple[Plan, Outcome]:
    """One seed, deterministically: trio's scheduler and every RNG are seeded from it."""
    from trio._core import _run  # the scheduler's own RNG: seeded, the run is replayable

    _run._ALLOW_DETERMINISTIC_SCHEDULING = True  # type: ignore[misc]
    _run._r.seed(seed)
    plan, cluster = make_plan(seed, nodes, receipts, dkg)
    errors = ErrorLog()
    logging.getLogger().addHandler(errors)
    try:
        outcome = trio.run(run_plan, plan, cluster, clock=trio.testing.MockClock(autojump_threshold=0))
        outcome.errors.extend(errors.records)
    finally:
        logging.getLogger().removeHandler(errors)
        for p in cluster.tmp.glob("*"):
            p.unlink(missing_ok=True)
        cluster.tmp.rmdir()
    return plan, outcome


def parse_seeds(text: str) -> range:
    start, _, count = text.partition(":")
    if not start.isdigit() or not count.isdigit() or int(count) < 1:
        raise argparse.ArgumentTypeError("expected START:COUNT, e.g. 0:1000")
    return range(int(start), int(start) + int(count))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="dsdn simulate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=parse_seeds, default=parse_seeds("0:100"), help="START:COUNT")
    parser.add_argument("--nodes", type=int, choices=range(4, 8), metavar="N", help="4..7 (default: from the seed)")
    parser.add_argument("--receipts", type=int, choices=range(1, 37), metavar="K",
                        help="receipts per seed, 1..36 (default: from the seed)")
    parser.add_argument("--dkg", choices=DKG_MODES, default="seeded",
                        help=f"run the DKG first: in a seeded {DKG_FRACTION * 100:.0f}%% of the seeds (default), "
                             "all, none")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every seed's schedule")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    logging.disable(logging.WARNING)  # the engines' warnings are expected under faults
    safety = liveness = convergence = errors = dkg_runs = planned = fired = 0
    started = time.perf_counter()
    report_at = started + PROGRESS_S
    for done, seed in enumerate(args.seeds):
        if done and time.perf_counter() >= report_at:  # a long run says how far it is, on stderr (stdout: the record)
            report_at += PROGRESS_S
            elapsed = time.perf_counter() - started
            rate = done / elapsed
            print(f"simulate: {done}/{len(args.seeds)} seeds done, {safety + liveness + convergence + errors} "
                  "violations so "
                  f"far, {rate:.1f} seeds/s, about {(len(args.seeds) - done) / rate:.0f}s to go", file=sys.stderr,
                  flush=True)
        plan, outcome = run_seed(seed, args.nodes, args.receipts, args.dkg)
        dkg_runs += plan.dkg
        planned, fired = planned + outcome.faults_planned, fired + outcome.faults_fired
        if args.verbose:
            key = outcome.group_key.hex()[:16] if outcome.group_key else None
            print(f"{plan.describe()}\n  outcome {outcome.fingerprint} ({outcome.signed} signed, group key {key}; "
                  f"{outcome.faults_fired} of {outcome.faults_planned} faults took effect)", flush=True)
        for violation in outcome.violations:
            print(f"seed {seed}: {violation}\n  replay: dsdn simulate --seeds {seed}:1 -v"
                  + (f" --nodes {args.nodes}" if args.nodes else "")
                  + (f" --receipts {args.receipts}" if args.receipts else "")
                  + (f" --dkg {args.dkg}" if args.dkg != "seeded" else ""), flush=True)
        safety += len(outcome.safety)
        liveness += len(outcome.liveness)
        convergence += len(outcome.convergence)
        errors += len(outcome.errors)
    total = safety + liveness + convergence + errors
    print(f"simulate: {len(args.seeds)} seeds, {total} violations ({safety} safety, {liveness} liveness, "
          f"{convergence} convergence, {errors} errors logged) in {time.perf_counter() - started:.1f}s; {dkg_runs} "
          f"ran the DKG; {fired} of {planned} planned faults took effect (a trap its member never reached, a crash "
          "of a member already down: planned, not fired)", flush=True)
    sys.exit(1 if total else 0)


if __name__ == "__main__":
    main()
