"""The deterministic simulator (``dsdn simulate``): ≥ 1,000 seeded fault schedules without a violation (a fixed
range and one that changes with every run, printed; a seeded quarter of them run the real DKG first, under the
seed's message faults and a crash of a member while it runs), exact replay of a seed, and planted bugs it must
catch — the slot-lock check disabled, a nonce commitment reused, share verification skipped, the DKG never
started, an honest member left out of the DKG, members adopting different group keys, an exception in a request
handler, a cluster that never goes quiet, an honest member blamed, a DKG confirmation sent before its key share is
stored, a share released over a failed lock commit."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from consensus import dkg_service, frost, lockstore, roast
from consensus import receipts as rc
from consensus.dkg import DkgParticipant
from consensus.dkg_service import DkgService
from consensus.receipt_service import ReceiptService
from consensus.slots import Decision, Verdict
from deploy import simulate, simulation
from node.da.base import DAUnavailable

FIXED = (0, 500)
ROTATING = 500


@pytest.fixture(autouse=True)
def quiet() -> Iterator[None]:
    logging.disable(logging.WARNING)  # faults make the engines warn on purpose
    yield
    logging.disable(logging.NOTSET)


def test_a_thousand_seeds_hold_safety_liveness_and_convergence() -> None:
    start = random.SystemRandom().randrange(1_000, 1_000_000)
    print(f"\nsimulate: fixed seeds {FIXED[0]}:{FIXED[1]}, this run's seeds {start}:{ROTATING}")
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "deploy.simulate", "--seeds", f"{a}:{n}"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for a, n in (FIXED, (start, ROTATING))]  # two processes: one per core
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    print(f"{sum(FIXED[1:]) + ROTATING} seeds in {time.perf_counter() - t0:.0f}s")
    for proc, out in zip(procs, outputs, strict=True):
        last = out.strip().splitlines()[-1]
        print(last)
        assert proc.returncode == 0, out[-5000:]
        assert ", 0 violations (0 safety, 0 liveness, 0 convergence, 0 errors logged)" in out
        dkg_runs = int(re.search(r"; (\d+) ran the DKG", last)[1])  # type: ignore[index]
        assert 0.15 * ROTATING < dkg_runs < 0.35 * ROTATING  # a seeded quarter ran the real DKG


def test_a_seed_replays_exactly() -> None:
    runs = {}
    for seed in (4, 11):  # 4: the DKG, a member crashed after its key share is durable, a garbling dealer left out
        first_plan, first = simulate.run_seed(seed)
        second_plan, second = simulate.run_seed(seed)
        assert first_plan.describe() == second_plan.describe()
        assert first.fingerprint == second.fingerprint and first.violations == second.violations
        runs[seed] = first_plan, first
    assert runs[4][0].dkg and "bad_shares" in runs[4][0].byzantine.values() and not runs[11][0].dkg
    assert runs[4][1].fingerprint != simulate.run_seed(5)[1].fingerprint


def first_violation(max_seeds: int = 300, dkg: str = "seeded", like: str = "") -> tuple[int, list[str]]:
    """The first seed with a violation (one containing ``like``), and its violations."""
    for seed in range(max_seeds):
        _, outcome = simulate.run_seed(seed, dkg=dkg)
        if any(like in v for v in outcome.violations):
            return seed, outcome.violations
    raise AssertionError(f"the planted bug went unnoticed for {max_seeds} seeds")


@pytest.mark.parametrize(("seed", "crash"), [(0, "crash_after_dkg_share"), (10, "crash")])
def test_the_dkg_completes_under_faults_and_its_key_signs_the_receipts(seed: int, crash: str) -> None:
    """Members start without a key; the real DKG runs over the faulty network (a member crashes and restarts while
    it runs: right after its key share is durable, or at some moment), every honest member ends with the same
    group key, and the receipts are signed with it."""
    plan, outcome = simulate.run_seed(seed, dkg="all")
    assert plan.dkg and "keys=DKG" in plan.describe()
    assert any(f.kind == crash and f.at < 2.5 for f in plan.faults)
    assert outcome.violations == []
    assert outcome.group_key is not None and outcome.signed > 0
    dealt_plan, dealt = simulate.run_seed(seed, dkg="none")  # the same schedule otherwise, with a dealt key
    assert not dealt_plan.dkg and dealt.group_key != outcome.group_key


def test_a_seeded_quarter_of_the_seeds_runs_the_dkg() -> None:
    chosen = [s for s in range(2000) if simulate.uses_dkg(s)]
    assert 400 < len(chosen) < 600 and chosen == [s for s in range(2000) if simulate.uses_dkg(s)]
    assert not any(simulate.uses_dkg(s, "none") for s in range(50)) and all(simulate.uses_dkg(s, "all")
                                                                              for s in range(50))


def test_a_dkg_that_never_starts_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted bug: no member ever starts a session by itself."""
    monkeypatch.setattr(DkgService, "_maybe_auto_start", lambda self, now: None)
    seed, violations = first_violation(20, dkg="all")
    print(f"DKG never started: caught at seed {seed}: {violations[0]}")
    assert any(v.startswith("liveness: the DKG did not complete") for v in violations)


def test_an_honest_member_left_out_of_the_dkg_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted bug: share decryption fails on a valid share (in the participant with the largest identifier, for
    the dealer with the smallest), and the check of its own complaint's evidence is gone too, so an honest member
    complains falsely, is proven a liar and left out."""
    decrypt = DkgParticipant._decrypt_share

    def broken(self: DkgParticipant, m: Any, key: bytes, commitment: tuple[bytes, ...]) -> int | None:
        if self.identifier == max(self.participants) and m.sender == min(self.participants):
            return None
        return decrypt(self, m, key, commitment)

    monkeypatch.setattr(DkgParticipant, "_decrypt_share", broken)
    monkeypatch.setattr(DkgParticipant, "_evidence_holds", lambda self, c: True)
    seed, violations = first_violation(20, dkg="all")
    print(f"honest member left out of the DKG: caught at seed {seed}: {violations[0]}")
    assert any("left honest member(s) out of the DKG" in v for v in violations)


def test_members_with_different_group_keys_are_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted bug: one member takes its own public share for the group key when it adopts the DKG's result."""
    adopt = DkgService._adopt

    async def wrong_key(self: DkgService, s: dkg_service.SessionInfo) -> None:
        await adopt(self, s)
        if self.net.my_id == "c1" and self.key is not None:
            self.key = dataclasses.replace(self.key, group_public_key=self.key.public_share)

    monkeypatch.setattr(DkgService, "_adopt", wrong_key)
    seed, violations = first_violation(20, dkg="all")
    print(f"group keys differ: caught at seed {seed}: {violations[0]}")
    assert any(v.startswith("convergence: honest members hold 2 different group keys") for v in violations)


def lock_blind(self: lockstore.LockStore, receipts: list[Any], validate: Any, proposer: str,
               now_ms: int | None = None, batch: bytes = b"", *, commit: bool = True) -> list[Decision]:
    """A planted bug: signers lock every receipt they are asked about, whatever their table holds for its slot."""
    decisions = []
    for i, r in enumerate(receipts):
        verdict, reason = validate(r)
        if verdict is Verdict.OK:
            self.db.execute("INSERT OR REPLACE INTO locks (slot, receipt_id, wire, proposer, locked_ms, batch, idx)"
                            " VALUES (?, ?, ?, ?, ?, ?, ?)", (lockstore.slot_key(r.slot), r.id, r.to_wire(),
                                                              proposer, now_ms or 0, batch, i))
        decisions.append(Decision(r.id, verdict, reason))
    return decisions


def test_disabling_the_lock_check_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lockstore.LockStore, "lock_batch", lock_blind)
    seed, violations = first_violation(like="signed receipts")  # (an acknowledged receipt left behind may come first)
    print(f"lock check disabled: caught at seed {seed}: {violations}")
    assert any(v.startswith("safety: slot") and "signed receipts" in v for v in violations)


def test_a_member_signing_for_a_replica_marked_missing_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted bug: validation takes a node whose replica of the object is marked missing as a present replica.
    The workload submits receipts no state makes valid (a node that left, a missing replica, an unknown object, a
    past epoch, a bad node signature): one signed, or locked by an honest member, is caught."""
    honest = ReceiptService.validate

    def blind_to_missing(self: ReceiptService, r: Any) -> tuple[Verdict, str]:
        verdict, reason = honest(self, r)
        return (Verdict.OK, "") if "not a present replica" in reason else (verdict, reason)

    monkeypatch.setattr(ReceiptService, "validate", blind_to_missing)
    seed, violations = first_violation(like="no state makes valid")
    print(f"a missing replica taken for a present one: caught at seed {seed}: {violations}")


def test_a_client_given_another_receipt_s_document_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted bug (a checker audit's): a proposer hands each client of a batch after the first the document of the
    receipt before it in the batch. Every such document verifies; the check counted the slot of the receipt the
    client sent and never looked at whose document it got (86 of 477 documents, 0 violations)."""
    honest = rc.document
    made: dict[bytes, dict[str, Any]] = {}

    def shifted(receipt: Any, root: bytes, size: int, index: int, *rest: Any) -> dict[str, Any]:
        doc = honest(receipt, root, size, index, *rest)
        before, made[root] = made.get(root), doc
        return before if before is not None and index > 0 else doc

    monkeypatch.setattr(rc, "document", shifted)
    seed, violations = first_violation(like="the document of another receipt")
    print(f"another receipt's document given: caught at seed {seed}: {violations}")


def test_a_signer_forgetting_its_locks_at_a_restart_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted bug (a reviewer's): after a restart a signer no longer sees the locks it took before, and locks and
    signs rivals. Judged only end to end (two signatures for one slot, which needs t such signers at once) it went
    unseen; an honest member releasing shares for two receipts of one slot is caught now."""
    honest = lockstore.LockStore.lock_batch

    def forgetful(self: lockstore.LockStore, receipts: list[Any], validate: Any, proposer: str,
                  now_ms: int | None = None, batch: bytes = b"", *, commit: bool = True) -> list[Decision]:
        first = self.__dict__.setdefault("first_ms", now_ms or 0)
        self.db.execute("DELETE FROM locks WHERE locked_ms < ?", (first,))  # (the planted bug: what came before)
        return honest(self, receipts, validate, proposer, now_ms, batch, commit=commit)

    monkeypatch.setattr(lockstore.LockStore, "lock_batch", forgetful)
    seed, violations = first_violation(like="released signature shares for 2 receipts")
    print(f"locks forgotten at a restart: caught at seed {seed}: {violations}")


def test_a_proposer_dropping_receipts_from_its_batches_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted bug (a reviewer's): the proposer silently drops the last receipt of every batch of two or more. The
    client resubmits what is not final to another member, which signs it: the dropped record stayed "pending" (or
    "locked") at the first for ever, its own client waiting, unseen. Every submission an honest member still holds
    must settle there."""
    honest = ReceiptService._run_batch_released

    async def dropping(self: ReceiptService, batch: list[Any], token: object | None = None,
                       ids: set[bytes] | None = None) -> None:
        await honest(self, batch[:-1] if len(batch) > 1 else batch, token, ids)

    monkeypatch.setattr(ReceiptService, "_run_batch_released", dropping)
    seed, violations = first_violation(like="never settled there")
    print(f"receipts dropped from batches: caught at seed {seed}: {violations}")


def test_an_acknowledged_receipt_dropped_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted bug: a member answers a receipt's first submission "locked" with its optimistic promise, then forgets
    it (no lock, nothing queued). The simulated client resubmitted whatever was not final after the heal, so the
    receipt was signed anew and the loss went unseen (a reviewer's reproduction): acknowledged receipts are not
    resubmitted, and each must end final, or a conflict where it was acknowledged."""
    from consensus import receipt_service

    submit, dropped = ReceiptService.submit, set()

    def ack_and_forget(self: ReceiptService, receipt: Any) -> Any:
        if receipt.id in dropped:
            return submit(self, receipt)
        self.check_available()
        dropped.add(receipt.id)
        record = receipt_service.Record(receipt, "locked")
        record.optimistic = self._optimistic(receipt.id)
        return record

    monkeypatch.setattr(ReceiptService, "submit", ack_and_forget)
    seed, violations = first_violation(dkg="none")
    print(f"acknowledged receipts dropped: caught at seed {seed}: {violations[0]}")
    assert any(v.startswith("safety: ") and "acknowledged receipt(s) neither final" in v for v in violations)


def test_a_rival_acknowledged_when_resubmitted_then_dropped_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted bug: a receipt submitted again (the client's resubmissions after the heal) whose slot is locked here
    to a rival is answered "locked" with an optimistic promise, then dropped. The answers to resubmissions were not
    checked at all (a checker review's reproduction: seeds 3, 11, 12 went by with 0 violations)."""
    from consensus import receipt_service
    from consensus.slots import slot_key

    submit, heal, healed = ReceiptService.submit, simulate.heal, [False]

    async def healing(cluster: Any) -> None:
        healed[0] = True
        await heal(cluster)

    def ack_rival_and_forget(self: ReceiptService, receipt: Any) -> Any:
        if healed[0] and self.locks.broken is None:  # (the answers before the heal were checked already)
            row = self.locks.db.execute("SELECT receipt_id FROM locks WHERE slot = ?",
                                        (slot_key(receipt.slot),)).fetchone()
            if row is not None and bytes(row[0]) != receipt.id:
                self.check_available()
                record = receipt_service.Record(receipt, "locked")
                record.optimistic = self._optimistic(receipt.id)
                return record
        return submit(self, receipt)

    def run_seed(seed: int, **kw: Any) -> Any:
        healed[0] = False
        return run(seed, **kw)

    run = simulate.run_seed
    monkeypatch.setattr(simulate, "heal", healing)
    monkeypatch.setattr(simulate, "run_seed", run_seed)
    monkeypatch.setattr(ReceiptService, "submit", ack_rival_and_forget)
    seed, violations = first_violation(dkg="none")
    print(f"rivals acknowledged on resubmission and dropped: caught at seed {seed}: {violations[0]}")
    assert any(v.startswith("safety: ") and "acknowledged receipt(s) neither final" in v for v in violations)


def test_a_write_a_live_member_swallows_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted bug: the outbox never answers an object registration. A write that got no answer was taken for one
    made to a member that crashed meanwhile, whether or not it had (a checker review's reproduction: 59 writes
    swallowed in 40 seeds, 0 violations)."""
    from node.outbox import Outbox

    append_all = Outbox.append_all

    async def swallow(self: Outbox, events: Any, *clock: Any) -> Any:
        if any(e.kind == "object.registered" for e in events):
            await trio.sleep_forever()
        return await append_all(self, events, *clock)

    monkeypatch.setattr(Outbox, "append_all", swallow)
    seed, violations = first_violation(dkg="none")
    print(f"writes swallowed: caught at seed {seed}: {violations[0]}")
    assert any(v.startswith("liveness: ") and "got no answer within 5 s" in v for v in violations)


def test_an_exception_in_a_request_handler_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted bug: c1's sign handler raises. The dispatcher logs it and leaves the request unanswered, which the
    protocol survives: the seeds passed (a reviewer's reproduction). Errors logged are violations."""
    on_sign = ReceiptService._on_sign

    async def buggy(self: ReceiptService, peer: str, body: dict[str, Any]) -> dict[str, Any]:
        if self.my_id == "c1":
            raise KeyError("a bug in the handler")
        return await on_sign(self, peer, body)

    monkeypatch.setattr(ReceiptService, "_on_sign", buggy)
    seed, violations = first_violation(20)
    print(f"handler exception: caught at seed {seed}: {violations[0]}")
    assert any(v.startswith("error: ") and "KeyError" in v for v in violations)


def test_a_cluster_that_never_goes_quiet_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted bug: something posts the same blob again and again for ever; the wait for quiescence ran out and the
    checks went on as if it had come (a reviewer's reproduction)."""
    start = simulation.SimCluster.start

    async def start_and_chatter(self: simulation.SimCluster, nursery: trio.Nursery) -> None:
        await start(self, nursery)

        async def chatter() -> None:
            while True:
                await trio.sleep(0.3)
                with contextlib.suppress(DAUnavailable):
                    await self.da.post(self.da.blobs[0][1])

        nursery.start_soon(chatter)

    monkeypatch.setattr(simulation.SimCluster, "start", start_and_chatter)
    _, outcome = simulate.run_seed(2)
    assert any("is not quiet" in v for v in outcome.liveness), outcome.violations


def test_an_honest_member_blamed_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted bug: a proposer blames an honest signer whose share it just verified."""
    signed = ReceiptService._signed

    async def blaming(self: ReceiptService, key: frost.KeyShare, final: list[Any], signature: bytes,
                      signers: tuple[int, ...], times: tuple[float, float, float]) -> None:
        honest = [i for i in signers if i != key.identifier]
        if honest:
            self._blame(honest[0])
        await signed(self, key, final, signature, signers, times)

    monkeypatch.setattr(ReceiptService, "_signed", blaming)
    seed, violations = first_violation(20)
    print(f"honest member blamed: caught at seed {seed}: {violations[0]}")
    assert any(v.startswith("safety: ") and "blamed honest member" in v for v in violations)


async def test_a_blame_is_recorded_beyond_the_incarnation_that_made_it(tmp_path: Path,
                                                                        autojump_clock: trio.testing.MockClock) -> None:
    """Blames were read from each member's current service at the end, so one made by an incarnation that crashed
    later went unseen (a reviewer's reproduction): they are recorded as they happen."""
    async with simulation.started(tmp_path, seed=5) as cluster:
        c0 = cluster.service("c0")
        c0._blame(c0.identifier_of["c1"])
        cluster.crash("c0")
        await cluster.restart("c0")
        assert cluster.service("c0").counters.blamed == {}
        assert cluster.observed.blames == [("c0", "c1")]


@pytest.mark.parametrize("n", [4, 5, 6, 7])
async def test_the_equivocator_gets_both_rivals_signed_by_signers_that_check_no_lock(
        tmp_path: Path, n: int, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """The simulator's equivocator must be able to succeed where the honest lock check is missing: it sent each
    rival to one half of its peers, and for n >= 5 neither half could give it t - 1 shares (a reviewer's count)."""
    from deploy.adversary import Adversary

    monkeypatch.setattr(lockstore.LockStore, "lock_batch", lock_blind)
    cluster = simulation.SimCluster(tmp_path, n, seed=n, delay=(0.001, 0.01))
    cluster.seed_ledger()
    liar = cluster.members[f"c{n - 1}"]
    liar.behaviour = "equivocate"
    a, b = cluster.receipt("n1", "obj1", reward=1), cluster.receipt("n1", "obj1", reward=2)
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        cluster.conflicts = [(a, b)]
        await Adversary(cluster, liar).equivocate()
        nursery.cancel_scope.cancel()
    cluster.close()
    assert {r.id for receipts, _, _ in cluster.observed.adversary_signatures for r in receipts} == {a.id, b.id}


def test_reusing_a_nonce_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A signer offers one commitment per (proposer, batch) and keeps its nonce after signing with it."""
    offer, sign_share = ReceiptService._offer, ReceiptService._sign_share
    offered: dict[tuple[str, str, bytes], tuple[bytes, bytes]] = {}

    def reused_offer(self: ReceiptService, peer: str, batch_id: bytes) -> tuple[bytes, bytes]:
        key = (self.my_id, peer, batch_id)
        if key not in offered:
            offered[key] = offer(self, peer, batch_id)
        return offered[key]

    def keep_nonce(self: ReceiptService, peer: str, body: dict[str, Any], held: list[Any]) -> dict[str, Any]:
        mine = next(((d, e) for i, d, e in zip(body["signers"], body["hiding"], body["binding"], strict=True)
                     if self.keys.key is not None and i == self.keys.key.identifier), None)
        nonce = self._nonces.get(mine) if mine else None
        reply = sign_share(self, peer, body, held)
        if nonce is not None:
            self._nonces[mine] = nonce  # type: ignore[index]
        return reply

    monkeypatch.setattr(ReceiptService, "_offer", reused_offer)
    monkeypatch.setattr(ReceiptService, "_sign_share", keep_nonce)
    seed, violations = first_violation()
    print(f"nonce reused: caught at seed {seed}: {violations[0]}")
    assert any(v.startswith("safety:") for v in violations)


def test_a_dkg_confirmation_sent_before_its_key_share_is_stored_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted bug (a reviewer's): the DKG service sends its messages, its confirmation included, before it stores
    the session's key share: a crash right then leaves a key completed by the others that this member holds no
    share of. No crash trap lands in that window (they fire after a durable step); the check as it leaves does."""
    deliver = DkgService._deliver

    async def send_first(self: DkgService, s: Any, out: list[Any], *, keep: bool = True) -> None:
        self._send(s, [*s.held, *out])
        s.held = []
        await deliver(self, s, [], keep=keep)

    monkeypatch.setattr(DkgService, "_deliver", send_first)
    seed, violations = first_violation(max_seeds=5, dkg="all", like="before its key share was stored")
    print(f"confirmation before its share: caught at seed {seed}: {violations[0]}")


def test_a_share_released_over_a_failed_lock_commit_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted bug (a reviewer's): a failed lock commit (the injected disk error) is logged and the share made meanwhile
    is released anyway: after a restart the table lacks those locks, so a rival can be locked and signed. It went
    unseen: nothing ever made a commit fail, and nothing checked what a share rests on as it leaves."""

    async def durably_blind(self: ReceiptService, work: Any) -> Any:
        with contextlib.suppress(lockstore.LockTableBroken):  # (the planted bug: keep going, the share is made)
            await self.run_blocking(self.locks.commit)
        return work()

    monkeypatch.setattr(ReceiptService, "_durably", durably_blind)
    seed, violations = first_violation(like="before its locks were committed")
    print(f"share over a failed commit: caught at seed {seed}: {violations[0]}")


def test_a_lock_commit_failing_stops_the_member_signing_until_restarted_and_nothing_is_lost() -> None:
    """The disk error fault: the member's table breaks (it logs that it stops signing: expected, not counted as an
    error), it is restarted later, and every check holds."""
    ran = 0
    for seed in range(1000, 1100):
        plan, outcome = simulate.run_seed(seed)
        assert outcome.violations == [], (seed, outcome.violations)
        assert outcome.faults_fired <= len(plan.faults)  # (its restart was counted as a fault of its own)
        ran += any(f.kind == "disk_error" for f in plan.faults)
        if ran == 3:
            break
    assert ran == 3


def test_skipping_share_verification_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The proposer aggregates whatever shares it got, without checking the result or blaming anyone. Caught as a
    batch or document that does not verify, or (peers refuse to keep a batch that does not verify, so it never
    leaves its proposer, which reports nothing final) as receipts that never become final."""
    monkeypatch.setattr(roast.frost, "aggregate_or_blame",
                        lambda commitments, message, key, shares, _public: frost.aggregate(commitments, message,
                                                                                           key, shares))
    seed, violations = first_violation()
    print(f"share verification skipped: caught at seed {seed}: {violations[0]}")
    assert any("does not verify" in v or (v.startswith("liveness") and "not final" in v) for v in violations)


def test_the_cli_reports_exits_by_its_findings_and_replays_across_processes() -> None:
    runs = [subprocess.run([sys.executable, "-c", "from deploy.cli import main; main()", "simulate", "--seeds", "9:2",
                            "-v"], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "PYTHONHASHSEED": hash_seed}) for hash_seed in ("1", "2")]
    for done in runs:
        assert done.returncode == 0, done.stdout + done.stderr
        assert "seed 9: n=" in done.stdout and "seed 10: n=" in done.stdout
        assert "keys=dealt" in done.stdout and "keys=DKG" in done.stdout  # seed 10 runs the DKG
        assert "simulate: 2 seeds, 0 violations (0 safety, 0 liveness, 0 convergence, 0 errors logged)" in done.stdout
    outcomes = [[line for line in done.stdout.splitlines() if "outcome" in line] for done in runs]
    assert len(outcomes[0]) == 2 and outcomes[0] == outcomes[1]  # same schedule, same result, other process
    bad = subprocess.run([sys.executable, "-m", "deploy.simulate", "--seeds", "x"], capture_output=True, text=True)
    assert bad.returncode == 2 and "START:COUNT" in bad.stderr


@pytest.mark.parametrize("seed", [534722, 15479, 247, 214215, 690, 3416, 71419])
def test_seeds_that_once_failed_hold(seed: int) -> None:
    """534722: convergence was checked before a late batch reached every member through DA (checker bug).
    15479: a receipt answered "pending" (not yet valid, nothing durable) was lost when its member crashed, and
    the simulated client never tried again; clients now resubmit until final, and crash traps end at the heal.
    690 and 3416 (checker bugs): a receipt of a pair left locked with a member lost and one holding the rival
    (undecidable without them); a receipt acknowledged by the equivocator alone, never sent elsewhere again.
    71419 (checker bug): waiting for the receipts to settle, the checker read the lock table of a member down at
    that moment (closed): the campaign stopped with a traceback."""
    _, outcome = simulate.run_seed(seed)
    assert outcome.violations == []


def test_a_long_run_reports_its_progress_on_stderr(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """stdout stays the record (failing seeds, then the summary); stderr says how far a long run is."""
    monkeypatch.setattr(simulate, "PROGRESS_S", 0.0)
    with pytest.raises(SystemExit) as exit_:
        simulate.main(["--seeds", "20:3", "--dkg", "none"])
    out, err = capsys.readouterr()
    assert exit_.value.code == 0
    assert out.splitlines()[-1].startswith("simulate: 3 seeds, 0 violations")
    progress = err.strip().splitlines()
    assert [line.split()[1] for line in progress] == ["1/3", "2/3"]
    assert all("0 violations so far" in line and "seeds/s" in line and "to go" in line for line in progress)


def test_a_batch_an_honest_member_published_that_does_not_verify_is_caught(tmp_path: Path) -> None:
    """The states keep such a batch out, so the check over their ledgers never saw it (a reviewer's
    reproduction): batches are read from DA too."""
    import msgpack

    from node import events as ev
    from node import merkle

    cluster = simulation.SimCluster(tmp_path, 4, seed=1)
    cluster.seed_ledger()
    r = cluster.receipt("n0", "obj0")
    fields = {"group_key": cluster.dealt_key.hex(), "root": merkle.root([r.to_bytes()]).hex(), "tree_size": 1,
              "signers": "c0,c1,c2", "receipts": msgpack.packb([[r.to_bytes(), r.node_signature]],
                                                               use_bin_type=True)}
    try:
        outcome = simulate.Outcome()
        cluster.da.preload(cluster.blob_of_c0([ev.make_event(ev.RECEIPT_BATCH, (9, 9), "c0", signature="00" * 64,
                                                             **fields).raw]))
        simulate.check_safety(cluster, [], outcome, [])
        assert any("c0 published a receipt batch that does not verify" in v for v in outcome.safety), outcome
    finally:
        cluster.close()


def test_an_acknowledged_write_held_with_other_fields_is_caught(tmp_path: Path) -> None:
    """Only the key of an acknowledged write was looked up: other fields under it passed."""
    from node import events as ev

    cluster = simulation.SimCluster(tmp_path, 4, seed=1)
    acked = [ev.make_event(ev.OBJECT_REGISTERED, (1, 1), "c1", hash="wobj0", size=5),
             ev.make_event(ev.NODE_REGISTERED, (1, 2), "c1", id="w1", zone="z", addr="h:3", capacity_gb=1)]
    try:
        outcome = simulate.Outcome()
        for m in cluster.members.values():
            m.state.apply_all(acked)
        simulate.check_writes(cluster, acked, outcome)
        assert outcome.safety == []
        for m in cluster.members.values():  # every member holds another version of what was acknowledged
            m.state.apply(ev.make_event(ev.OBJECT_REGISTERED, (1, 3), "c1", hash="wobj0", size=999_999))
            m.state.apply(ev.make_event(ev.NODE_REGISTERED, (1, 4), "c1", id="w1", zone="evil", addr="x:1",
                                        capacity_gb=9))
        simulate.check_writes(cluster, acked, outcome)
        assert sum("holds other fields" in v for v in outcome.safety) == 2 * len(cluster.members), outcome
    finally:
        cluster.close()


def test_forged_replies_name_requests_a_peer_has_pending(monkeypatch: pytest.MonkeyPatch) -> None:
    """The forger's replies carried random ids, which never named a pending request: the checks of the asked peer
    and the expected type went untested (a reviewer's finding). They now name some."""
    from protocol import dispatch

    matched = {"stray": 0}
    deliver = dispatch.Dispatcher.deliver

    async def counting(self: Any, peer_id: str, msg: Any, deadline: float | None = None, size: int = 0) -> int:
        pending = self._pending.get(msg.re) if msg.re is not None else None
        if pending is not None and pending.reply is None and pending.peer_id != peer_id:
            matched["stray"] += 1
        return await deliver(self, peer_id, msg, deadline, size)

    monkeypatch.setattr(dispatch.Dispatcher, "deliver", counting)
    plan, outcome = simulate.run_seed(49, dkg="none")
    assert "'forge'" in plan.describe() and outcome.violations == []
    assert matched["stray"] > 0


def test_faults_that_never_took_effect_are_not_counted_as_fired(monkeypatch: pytest.MonkeyPatch) -> None:
    """A third of the crash-after-a-step traps never went off and a crash of a member already down did nothing, yet
    the schedule listed them all (a reviewer's count): the outcome says how many took effect."""
    make_plan = simulate.make_plan

    def planned(seed: int, *args: Any) -> Any:
        plan, cluster = make_plan(seed, *args)
        member = next(m for m in cluster.members if cluster.members[m].behaviour is None)
        faults = [simulate.Fault(1.0, "crash", (member,), 3.0),  # takes effect
                  simulate.Fault(1.5, "crash", (member,), 3.0),  # the member is down already: nothing
                  simulate.Fault(2.0, "partition", (member,), 1.0),  # takes effect
                  simulate.Fault(0.5, "crash_after_dkg_share", (member,), 1.0)]  # no DKG runs: never goes off
        return dataclasses.replace(plan, faults=faults), cluster

    monkeypatch.setattr(simulate, "make_plan", planned)
    _, outcome = simulate.run_seed(3, dkg="none")
    assert outcome.violations == []
    assert (outcome.faults_planned, outcome.faults_fired) == (4, 2)


def test_a_disk_error_fires_on_any_commit_and_is_counted_when_it_fires(tmp_path: Path) -> None:
    """From a review: the fault was counted as fired when set up (a member that never committed again counted too),
    and the commits of ``with conn:`` (closing locks, keeping heard batches) went through unharmed."""
    import sqlite3

    fired: list[int] = []
    db = sqlite3.connect(tmp_path / "t.sqlite", isolation_level=None)
    db.execute("CREATE TABLE t (x)")
    failing = simulate.FailingCommit(db, lambda: fired.append(1))
    assert fired == []
    with pytest.raises(sqlite3.OperationalError, match="disk I/O error"), failing:
        failing.execute("BEGIN")
        failing.execute("INSERT INTO t VALUES (1)")
    assert fired == [1] and db.execute("SELECT count(*) FROM t").fetchone() == (0,)  # (rolled back)
    with failing:  # (once only)
        failing.execute("BEGIN")
        failing.execute("INSERT INTO t VALUES (2)")
    assert fired == [1] and db.execute("SELECT count(*) FROM t").fetchone() == (1,)
    db.close()


def test_a_rival_left_locked_is_excused_only_when_honest_members_cannot_sign_it() -> None:
    """A receipt of a pair left locked for ever at an honest member, never told "conflict", was excused whenever
    any member anywhere was lost or a liar (a reviewer's reproduction): only when the honest members up that
    could sign it (not holding its rival's lock) are fewer than t."""
    from types import SimpleNamespace as NS

    slot = ("compute", "n1", "obj1", 7)
    x, y = NS(id=b"X" * 32, slot=slot), NS(id=b"Y" * 32, slot=slot)

    def member(name: str, behaviour: str | None = None, holds: bytes | None = None) -> Any:
        return NS(id=name, behaviour=behaviour, lost=False, up=True, service=NS(records={}),
                  state=NS(ledger=NS(receipts={}, by_slot={})),
                  locks=NS(broken=None, lock_of=lambda rid: (None, 0, None) if rid == holds else None))

    for liar, holders_of_y, flagged in ((None, "", True), ("forge", "", True), ("forge", "bc", False)):
        members = {name: member(name, holds=x.id if name == "a" else y.id if name in holders_of_y else None)
                   for name in "abc"}
        members["d"] = member("d", liar)
        cluster = NS(members=members, conflicts=[(x, y)],
                     honest=lambda members=members: [m for m in members.values() if m.behaviour is None])
        acked = NS(receipt=x, optimistic={"locked": True}, status="locked")
        assert (simulate.unsettled_acknowledged(cluster, [("a", acked)]) == [x.id]) is flagged, (liar, holders_of_y)


def test_a_starter_that_missed_a_proof_is_told_it_and_the_dkg_completes() -> None:
    """Seed 5066 (--dkg all): the liar c0 was proven while c1 was down; c1, then the smallest id not proven in the
    others' view, still took c0 for the starter and waited, the others waited for c1: no DKG ever completed. The
    members holding a proof now remind the starter they expect of it while no session runs."""
    _, outcome = simulate.run_seed(5066, dkg="all")
    assert outcome.violations == [] and outcome.group_key is not None


async def test_a_signature_made_but_never_announced_counts_against_its_slot(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """Only the states' batches and the adversary's own signatures were checked for a second signed receipt of a
    slot: a batch an honest member signed and lost before announcing it, then a rival signed elsewhere, went
    unseen. Every signature a receipt service makes is recorded."""
    from tests.test_receipt_liars import cluster_signed

    cluster = simulation.SimCluster(tmp_path, 4, seed=1)
    cluster.seed_ledger()
    a, b = cluster.receipt("n1", "obj1", proof=1), cluster.receipt("n1", "obj1", proof=2)  # rivals
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        service = cluster.service("c0")
        key = cluster.members["c0"].keys.key
        for receipt in (a, b):  # as if c0 had signed both (never announced, never in a state)
            fields = cluster_signed(cluster, [receipt])
            service._finishing = trio.Semaphore(0)  # type: ignore[assignment]  # (stop before the announcement)
            with trio.move_on_after(0.1):
                await service._signed(key, [receipt], bytes.fromhex(fields["signature"]), (0, 1, 2), (0.0, 0.0, 0.0))
        nursery.cancel_scope.cancel()
    try:
        outcome = simulate.Outcome()
        simulate.check_safety(cluster, [], outcome, [])
        assert any("signed receipts" in v and "slot" in v for v in outcome.safety), outcome.safety
    finally:
        cluster.close()


@pytest.mark.parametrize("receipts", ["-1", "0", "37"])
def test_a_receipt_count_out_of_range_is_refused_in_one_line(capsys: pytest.CaptureFixture[str],
                                                             receipts: str) -> None:
    """-1 and 37 were a traceback (a sample larger than the 36 slots), 0 silently "from the seed"."""
    with pytest.raises(SystemExit) as exit_:
        simulate.main(["--seeds", "1:1", "--receipts", receipts])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--receipts" in err and "Traceback" not in err
