"""Reconciliation: re-post blobs stored on fallback layers to the primary, and check consistency.

One pass at a time. Blobs go to the primary directly (not through the router). A pass pages through the
pending blobs, oldest first (keys first, then the data of one page at a time), so memory stays bounded by a
few pages. A blob is marked reconciled only after the primary returned it byte for byte; a blob that still
fails stays pending with its error. A blob the primary refuses as bad input (router.CALLER_ERRORS) is not
the primary's failure: it is not reported to the status machine, not retried within the pass (nor by the
monitor's later passes; a manual pass tries it again), and stays pending with its error.

A blob the primary took but did not give back (not included, other bytes, not found: it answered both calls)
is the blob's failure, not the primary's: it is not reported to the status machine (one such blob used to flip a
healthy primary to a fallback and back every health interval, for ever, and post it again each time: 180 paid
posts in ten minutes), and the monitor's passes hold it back (``held``) for HOLD_BASE_S, doubling with each
miss up to HOLD_MAX_S, while it stays pending with its error; a manual pass tries it at once. A held blob keeps
the status in Recovering until a blob of ours posted after its miss came back from the primary (``_proven_held``:
another blob reconciled, our publisher's read from the log, or a probe blob of ours that a Recovering pass posts and
reads back when nothing else proves it; a lost probe counts as ``failure_threshold`` failures). Unless the pass saw
no blob back at all: then the primary may be losing every blob, and each blob missed counts as its failure (up to
the failure threshold; no return to Healthy from such a pass). A blob whose read-back got no answer (a timeout) is
held back the same way at once, its read counted as the primary's failure. (Posted again at every attempt and every
pass, or at every health interval while Recovering, such blobs were paid for again and again, for ever: 1,438 posts
an hour for one poisoned blob, and a member writing nothing itself stayed in Recovering for ever.) Within a pass,
``failure_threshold`` different blobs missed in a row (none given back since) call for a probe at once: lost too, the
primary is losing our posts and the pass stops (it posted every pending blob with all its retries); given back, the
blobs are at fault and the pass goes on.

A primary that takes several blobs per call and reads them back in one (``post_many`` and ``included``:
CelestiaDA, whose blob.Submit takes an array) gets them in calls of up to SUBMIT_BLOBS blobs and its
``max_submit_bytes`` bytes (pages of max(RECONCILE_BATCH_SIZE, SUBMIT_BLOBS) keys), SUBMITS_IN_FLIGHT calls
at once while the pass pages on (RECONCILE_PARALLEL does not apply). Each call is one attempt for all its
blobs (1 + RECONCILE_MAX_RETRIES attempts, RECONCILE_RETRY_DELAY_MS apart), read back with one call, and what
came back is marked in one SQLite transaction; a blob not read back is posted again on the next attempt. A
call the primary refuses as bad input (e.g. too large together: a node whose limit is below ours) is split in
halves, down to the one blob at fault. These calls go through the primary's MeteredLayer bookkeeping (its
timeout, counters and observers; a call of several blobs counts once). A crash between a call and its mark
leaves its blobs pending: the next pass posts them again, and a blob on the primary twice is harmless (events
are deduplicated by id). Any other primary (one blob per post) gets batches of RECONCILE_BATCH_SIZE blobs,
concurrently within a batch when RECONCILE_PARALLEL; each blob gets up to 1 + RECONCILE_MAX_RETRIES attempts,
RECONCILE_RETRY_DELAY_MS apart.

Other members' fallback blobs (node.da.pending's foreign blobs: signed by a cluster member, read from a
fallback log this coordinator follows, not seen on the primary) are re-posted the same way ("adopted") after
the own ones, so they reach the primary even if their writer is gone for good. Not at once: a foreign blob is
due only once the primary has worked (its current run of successes) and the blob has been known for
``adopt_grace_s`` plus a random share of it (0–100 %, different on every member, so members do not all
re-post the same blob at once), and only if the primary log was read up to its head after that moment
(``primary_read_ms``) without it, and no blob signed by its writer was read from the primary within the grace
period (``signer_active``): the writer, if alive, reconciles its blobs first and the others see them land.
A blob posted twice anyway is harmless (events are deduplicated by id). Foreign blobs do not keep the status
in Recovering.

The consistency check reads the most recent ``check_limit`` pending blobs (from their fallback) and the
most recent ``check_limit`` reconciled blobs (from the primary), ``check_concurrency`` at a time, within
``check_deadline_s``; what a deadline left unchecked is reported in ``details``.

Local storage failing (a full disk: SQLite refuses the marks) stops a pass at once: the blobs the primary gave back
whose mark failed are kept in memory (``unrecorded``) and recorded before anything else at the next passes, which
post nothing until that works. Else each pass paid to post the same blobs again (their marks failing every time,
every health interval: ~720 paid posts an hour) and logged a traceback (a reviewer's reproduction).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import trio

from node.blob import MAGIC
from node.da.base import DAError, DALayer, DATimeout, DAUnavailable
from node.da.celestia import READ_BACK_TRIES, lagging
from node.da.pending import FallbackBlob, PageKey, PendingStore
from node.da.router import is_caller_error
from node.da.status import PRIMARY, DAStatusMachine, Status

log = logging.getLogger("dsdn.reconcile")
T = TypeVar("T")

#: A primary that takes several blobs per call (Celestia's blob.Submit takes an array): the most blobs one call
#: carries (its byte limit, ``max_submit_bytes``, applies too), and how many such calls a pass keeps in flight.
SUBMIT_BLOBS = 256
SUBMITS_IN_FLIGHT = 4
LOAD_BYTES = 32 << 20  # blob data loaded at once by a pass: a page of 256 blobs near 2 MB each held 510 MB

#: How long the monitor's passes hold back a blob the primary took but did not give back: HOLD_BASE_S after its
#: first miss, doubling with each miss, at most HOLD_MAX_S.
HOLD_BASE_S = 30.0
HOLD_MAX_S = 3600.0
STORAGE_WARN_EVERY_S = 60.0  # local storage failing: at most one warning a minute (a pass runs every health interval)

#: How long a manual pass (POST /fallback/reconcile) may run: what it left at that point stays pending.
MANUAL_PASS_S = 120.0

#: Defaults of the consistency check's bounds.
CHECK_LIMIT = 200
CHECK_CONCURRENCY = 4
CHECK_DEADLINE_S = 10.0


@dataclass
class Report:
    success: bool = True
    blobs_processed: int = 0
    blobs_reconciled: int = 0
    blobs_failed: int = 0
    duration_ms: int = 0
    errors: list[str] = field(default_factory=list)
    blobs_rejected: int = 0  # of blobs_failed: refused by the primary as bad input (not in as_json)
    aborted: bool = False  # stopped early because the primary failed (automatic passes only)
    foreign_processed: int = 0  # other members' fallback blobs tried (not in as_json, nor in blobs_processed)
    blobs_adopted: int = 0  # of those: now on the primary, posted by us

    def as_json(self) -> dict[str, Any]:
        return {"success": self.success, "blobs_processed": self.blobs_processed,
                "blobs_reconciled": self.blobs_reconciled, "blobs_failed": self.blobs_failed,
                "duration_ms": self.duration_ms, "errors": self.errors}


def _signer(data: bytes) -> bytes:
    """The signer key of an event blob (node.blob's envelope: magic, version, key, ...)."""
    return data[len(MAGIC) + 1 : len(MAGIC) + 33]


class AlreadyRunning(Exception):
    """A reconciliation pass is in progress."""


class Reconciler:
    def __init__(self, layers: Mapping[str, DALayer], pending: PendingStore, machine: DAStatusMachine,
                 clock: Callable[[], int], batch_size: int = 10, retry_delay_s: float = 1.0,
                 max_retries: int = 3, parallel: bool = False, *, adopt_grace_s: float | None = None,
                 primary_read_ms: Callable[[], int | None] = lambda: None,
                 probe: Callable[[], bytes] | None = None) -> None:
        """``adopt_grace_s`` (None: off) and ``primary_read_ms`` (when the latest read of the primary log that
        reached its head started, wall ms): see the module docstring on other members' blobs. ``probe``: a small
        blob of ours (an event blob of no event, signed by us) posted to test the primary (see ``_probe``)."""
        self.probe = probe
        self.layers, self.pending, self.machine, self.clock = layers, pending, machine, clock
        self.adopt_grace_s, self.primary_read_ms = adopt_grace_s, primary_read_ms
        self._salt = os.urandom(16)  # this member's share of the grace period for each foreign blob
        self.signer_active: dict[bytes, int] = {}  # signer key -> wall ms a blob it signed was last read on the primary
        self.batch_size, self.retry_delay_s = max(1, batch_size), retry_delay_s
        self.max_retries, self.parallel = max_retries, parallel
        self.check_limit = CHECK_LIMIT  # most recent pending (and reconciled) blobs a consistency check reads
        self.check_concurrency = CHECK_CONCURRENCY
        self.check_deadline_s = CHECK_DEADLINE_S
        self._lock = trio.Lock()
        self._stop_on_fallback = False
        self._failed_in_row = 0  # the primary's failures in a row in the current pass
        self._confirmed = 0  # blobs the current pass saw back on the primary
        self._missed: list[str] = []  # errors of the blobs it took but did not give back, in the current pass
        self._missed_own = 0  # ... of those, blobs of ours (not other members' adopted ones)
        self._missed_in_row: set[str] = set()  # blobs it took and did not give back since one last came back (the pass)
        self._probing = False  # a probe decides whether the primary loses every blob (see ``_missed_some``)
        self._rejected: set[str] = set()  # pending blobs the primary refused as bad input (automatic passes skip them)
        self._rejected_foreign: set[str] = set()  # the same for other members' blobs
        # blobs the primary took but did not give back -> (wall ms until which automatic passes skip them, misses,
        # another member's blob)
        self.held: dict[str, tuple[int, int, bool]] = {}
        # the highest primary height at which a blob of ours came back (read back here, or read from its log)
        self.served_height = 0
        self._missed_at: dict[str, int] = {}  # held blob -> the primary height of its latest missed post
        self._batching = False  # this pass posts several blobs per call (see _submitter)
        self._submits: trio.Nursery | None = None  # the pass's submits in flight
        self._in_flight = trio.Semaphore(SUBMITS_IN_FLIGHT)
        # blobs the primary gave back whose mark failed (local storage failing) -> (their ref there, another
        # member's blob); recorded at the start of the next passes, never posted again
        self._landed: dict[str, tuple[Any, bool]] = {}
        self._storage_error: str | None = None  # local storage failed in the current pass: it stops
        self._storage_warned_at = -math.inf
        self.passes = 0
        self.total_reconciled = 0
        self.last_report: Report | None = None
        self._report = Report()  # the pass running (while ``running``)

    @property
    def running(self) -> bool:
        return self._lock.locked()

    @property
    def waiting(self) -> int:
        """Pending blobs worth another automatic pass (not those the primary refused as bad input, nor those held
        back for now)."""
        now = self.clock()
        held = sum(1 for blob_id, (until, _, foreign) in self.held.items()
                   if until > now and not foreign and blob_id not in self._rejected)
        landed = sum(1 for _, foreign in self._landed.values() if not foreign)
        return max(0, self.pending.pending_count - len(self._rejected) - held - landed)

    @property
    def unrecorded(self) -> int:
        """Blobs on the primary whose mark local storage refused so far: a pass records them first."""
        return len(self._landed)

    def progress(self) -> dict[str, Any]:
        """What /fallback/status shows of reconciliation: passes so far, blobs reconciled in all, the pass running
        now (its counts so far) or the latest one's report, and the blobs held back or refused as bad input."""
        now = self.clock()
        report = self._report if self.running else self.last_report
        return {"passes": self.passes, "total_reconciled": self.total_reconciled,
                "current_pass" if self.running else "last_pass": None if report is None else {
                    **report.as_json(), "aborted": report.aborted, "foreign_processed": report.foreign_processed,
                    "blobs_adopted": report.blobs_adopted, "errors": report.errors[-10:]},
                "held_back": sum(1 for until, _, _ in self.held.values() if until > now),
                "rejected": len(self._rejected) + len(self._rejected_foreign)}

    def _skipped(self, blob_id: str, rejected: set[str]) -> bool:
        """An automatic pass leaves this blob be: refused as bad input, or held back for now (while Recovering too:
        retried there at every health interval, one blob whose read-back timed out cost 119 paid posts in ten
        minutes, and one the primary never gave back 1,438 an hour; the probe tests the primary instead)."""
        held = self.held.get(blob_id, (0, 0, False))[0] > self.clock()
        return blob_id in self._landed or (self._stop_on_fallback and (blob_id in rejected or held))

    def _proven_held(self, blob_id: str) -> bool:
        """Held back, and a blob of ours posted after this one's latest miss came back from the primary (at a greater
        height: another blob reconciled, our publisher's read from the log, or the probe): the blob's failure, not
        the primary's, and no longer keeping the status in Recovering (one poisoned blob kept a working primary
        there for ever). Other members' blobs, and ours from before the miss, prove nothing of what the primary does
        with our posts now (a first version counted every blob read from its log: a primary losing every blob of
        ours went back to Healthy, a regression review's run)."""
        missed = self._missed_at.get(blob_id)
        return (self.held.get(blob_id, (0, 0, False))[0] > self.clock() and missed is not None
                and self.served_height > missed)

    def _unproven_held(self) -> bool:
        """Some blob of ours is held back and nothing proves it its own failure yet (see ``_proven_held``)."""
        return any(not foreign and blob_id not in self._rejected and not self._proven_held(blob_id)
                   for blob_id, (until, _, foreign) in self.held.items() if until > self.clock())

    async def _probe(self, report: Report) -> bool | None:
        """While Recovering with blobs of ours held back unproven: post a probe blob of ours and read it back (up to
        READ_BACK_TRIES times, ``retry_delay_s`` apart, while the answers say not yet: a node one block behind).
        Back, it proves the held blobs their own failures (Recovering can end: a member that writes nothing itself
        stayed there for ever); not given back, the primary is losing our blobs: that counts as
        ``failure_threshold`` failures (back to the fallback). True: given back; False: taken, not given back; None:
        not taken."""
        assert self.probe is not None
        data, primary = self.probe(), self.layers[PRIMARY]
        since = self.machine.mark()
        try:
            ref = await primary.post(data)
        except DAError as exc:
            if lagging(exc):  # taken, and its read-back found a node behind that height: no verdict (nor blame)
                report.errors.append(f"probe: the primary took it, but its headers are behind: {exc}")
                return None
            if not is_caller_error(exc):
                self._primary_failed(str(exc), write=True)
            report.errors.append(f"probe: the primary did not take it: {exc}")
            return None
        self._primary_took(since)
        unanswered: DAUnavailable | None = None
        for read in range(READ_BACK_TRIES):
            if read:
                await trio.sleep(self.retry_delay_s)
            try:
                back: bytes | None = await primary.get(ref)
            except DAUnavailable as exc:  # (tried again: one unanswered read is no verdict)
                unanswered, back = exc, None
            except DAError:
                back = None
            if back == data:  # (a blob given back: another member's missed in this pass is not the primary's)
                self._confirmed += 1
                self.served(ref.height)
                return True
        # Not given back, answered or not: the primary failed as a write would have. Counted as one read failure, an
        # unanswered read was undone by the next health check, and a member with no writes of its own stayed in
        # Recovering, posting a paid probe every health interval for ever (a reviewer's reproduction).
        error = (f"the primary took a probe blob of ours and gave no answer reading it back at height {ref.height}: "
                 f"{unanswered}" if unanswered is not None else
                 f"the primary took a probe blob of ours but did not give it back at height {ref.height}")
        report.errors.append(f"probe: {error}")
        for _ in range(self.machine.failure_threshold):
            self.machine.observe(PRIMARY, False, self.clock(), error, write=True)
        return False

    async def _missed_some(self, blob_ids: list[str], report: Report) -> bool:
        """The primary took these blobs and did not give them back (one attempt's misses). Once
        ``failure_threshold`` different blobs were missed in a row (none given back since), a probe blob of ours
        decides: given back, these blobs are at fault (poisoned) and the pass goes on; taken and lost too, the
        primary is losing our posts: counted as its failures (back to the fallback) and the pass stops. Without it
        a primary that took every blob and gave none back had every pending blob posted in one pass, each with all
        its retries (800 paid posts for 200 blobs, where this takes 10: a reviewer's reproduction). True when the
        probe came back: these blobs are at fault, and not posted again in this pass (retried, they called for a
        probe at every attempt: twice the paid calls of a pass over poisoned blobs; a regression review)."""
        self._missed_in_row.update(blob_ids)
        if self.probe is None or self._probing or len(self._missed_in_row) < self.machine.failure_threshold:
            return False
        self._probing = True
        try:
            back = await self._probe(report)
        finally:
            self._probing = False
        self._missed_in_row.clear()
        if back is False:
            self._failed_in_row = max(self._failed_in_row, self.machine.failure_threshold)
        return back is True

    def served(self, height: int) -> None:
        """A blob of ours came back from the primary at ``height`` (read from its log: see ``_proven_held``)."""
        self.served_height = max(self.served_height, height)

    def _hold(self, blob_ids: list[str], foreign: bool, error: str, height: int, *, answered: bool = True) -> None:
        """These blobs were taken (at ``height``) but not given back (``answered``: the primary answered that it has
        not got them; else its read-back went unanswered, already counted as its failed read): the monitor's passes
        skip them for a while (see HOLD_*)."""
        if answered:
            self._missed.extend(error for _ in blob_ids)
            self._missed_own += 0 if foreign else len(blob_ids)
        now = self.clock()
        for blob_id in blob_ids:
            misses = self.held.get(blob_id, (0, 0, foreign))[1] + 1
            hold_ms = int(min(HOLD_MAX_S, HOLD_BASE_S * 2 ** min(misses - 1, 20)) * 1000)
            self.held[blob_id] = (now + hold_ms, misses, foreign)
            self._missed_at[blob_id] = height

    def forget(self, blob_ids: list[str]) -> None:
        """These blobs are on the primary now (read from its log): no longer held back or refused (else they kept
        counting against ``waiting``, hiding other blobs from the monitor for up to an hour)."""
        for blob_id in blob_ids:
            self.held.pop(blob_id, None)
            self._missed_at.pop(blob_id, None)
            self._rejected.discard(blob_id)
            self._rejected_foreign.discard(blob_id)

    def _hold_s(self, blob_id: str) -> float:
        return (self.held[blob_id][0] - self.clock()) / 1000

    def _done(self, blob_ids: list[str], rejected: set[str], height: int) -> None:
        """These blobs came back from the primary (at ``height`` at most)."""
        self._confirmed += len(blob_ids)
        self._missed_in_row.clear()
        self.served(height)
        for blob_id in blob_ids:
            rejected.discard(blob_id)
            self.held.pop(blob_id, None)
            self._missed_at.pop(blob_id, None)

    def adoption_due(self) -> bool:
        """Foreign blobs wait and the primary has worked for the grace period: worth an automatic pass."""
        if self.adopt_grace_s is None or self.pending.foreign_waiting <= len(self._rejected_foreign):
            return False
        ok_since = self.machine.primary_ok_since
        return ok_since is not None and self.clock() - ok_since >= self.adopt_grace_s * 1000

    def _adopt_delay_ms(self, blob_id: str) -> int:
        assert self.adopt_grace_s is not None
        share = int.from_bytes(hashlib.blake2b(self._salt + bytes.fromhex(blob_id), digest_size=8).digest(), "big")
        return int(self.adopt_grace_s * 1000 * (1 + share / 2**64))

    async def run_pass(self, *, stop_on_fallback: bool = False, deadline_s: float | None = None) -> Report:
        """One pass over every pending blob. ``stop_on_fallback`` (the monitor's passes): stop once the status
        machine has gone back to a fallback, and skip blobs the primary already refused as bad input or holds
        back; a manual pass tries every blob. Any pass stops once the primary failed ``failure_threshold`` times in
        a row in it, and at ``deadline_s`` (a manual pass: see MANUAL_PASS_S); what it left stays pending."""
        if self._lock.locked():
            raise AlreadyRunning("a reconciliation pass is already running")
        async with self._lock:
            started = time.perf_counter()
            report = self._report = Report()
            self._stop_on_fallback = stop_on_fallback
            self._failed_in_row = 0
            self._confirmed, self._missed, self._missed_own = 0, [], 0
            self._missed_in_row.clear()
            self._batching = self._submitter() is not None
            self._storage_error = None
            if not await self._record_landed(report):
                return self._ended(report, started)
            with trio.move_on_after(deadline_s if deadline_s is not None else math.inf) as deadline:
                async with trio.open_nursery() as nursery:  # the submits in flight (a primary that takes several)
                    self._submits = nursery
                    try:
                        await self._pages(report)
                    except sqlite3.Error as exc:  # reading the pending blobs (here: out of the nursery, it was an
                        self._storage_error = str(exc)  # exception group, logged as a traceback: a regression review)
                self._submits = None  # (every submit of the pass done: what they proved is known)
                report.aborted = report.aborted or self._failed_in_row >= self.machine.failure_threshold
                # the probe proves blobs held before this pass only: a pass that missed blobs of ours counts as below
                # (another member's blob missed does not stop it: a regression review)
                if (stop_on_fallback and not report.aborted and self.probe is not None and not self._missed_own
                        and self.machine.status is Status.RECOVERING and self._unproven_held()):
                    await self._probe(report)
            self._submits = None
            if deadline.cancelled_caught:
                report.aborted = True
                report.errors.append(f"stopped at the pass's {deadline_s:g} s deadline; the rest stays pending")
            elif report.aborted and self._failed_in_row >= self.machine.failure_threshold:
                report.errors.append(f"stopped: the primary failed {self._failed_in_row} times in a row; the rest "
                                     "stays pending")
            if self._storage_error is not None:
                report.aborted = True
                self._storage_failed(report, self._storage_error)
            self._ended(report, started)
            if self._missed and not self._confirmed:
                # it took blobs and gave none back: perhaps a poisoned blob, perhaps a primary that loses every blob
                # (which is not to go back to Healthy and take the writes); one failure per blob missed
                for error in self._missed[: self.machine.failure_threshold]:
                    self.machine.observe(PRIMARY, False, self.clock(), error, write=True)
                report.errors.append(f"the primary took {len(self._missed)} blob(s) and gave none back: counted as "
                                     "its failures")
            elif not report.aborted:  # blobs the primary refuses as bad input do not keep it in Recovering, nor do
                # held ones it gave other blobs back since (_proven_held); the others do: Recovering ends once the
                # primary gave back every blob it is to take
                proven = sum(1 for blob_id, (_, _, foreign) in self.held.items()
                             if not foreign and blob_id not in self._rejected and self._proven_held(blob_id))
                self.machine.reconciled(max(0, self.pending.pending_count - len(self._rejected) - proven),
                                        self.clock())
            if report.blobs_processed or report.foreign_processed:
                log.info("reconciliation: %d processed, %d reconciled, %d failed in %d ms (%d still pending); other "
                         "members' fallback blobs: %d tried, %d adopted (%d still waiting)%s",
                         report.blobs_processed, report.blobs_reconciled, report.blobs_failed, report.duration_ms,
                         self.pending.pending_count, report.foreign_processed, report.blobs_adopted,
                         self.pending.foreign_waiting,
                         "; stopped: local storage failed" if self._storage_error is not None else
                         "; stopped: the primary failed" if report.aborted else "")
            return report

    async def _pages(self, report: Report) -> None:
        """Our pending blobs, page by page, then other members' that are due."""
        after: PageKey | None = None
        while True:
            if self._should_stop():
                report.aborted = True
                return
            keys = await self.pending.pending_keys(after, self._page_size)
            if not keys:
                break
            after = keys[-1]
            ids = [k.blob_id for k in keys if not self._skipped(k.blob_id, self._rejected)]
            for part in await self._by_size(ids, foreign=False):
                batch = [b for b in await self.pending.load(part) if b.primary_ref is None]
                await self._run_batch(batch, report, foreign=False)
        await self._adopt(report)

    def _ended(self, report: Report, started: float) -> Report:
        report.success = report.blobs_failed == 0 and not report.aborted
        report.duration_ms = int((time.perf_counter() - started) * 1000)
        self.passes += 1
        self.total_reconciled += report.blobs_reconciled
        self.last_report = report
        return report

    async def _record_landed(self, report: Report) -> bool:
        """Mark the blobs the primary gave back in an earlier pass whose mark failed; False (the pass to post
        nothing) while local storage still refuses."""
        if not self._landed:
            return True
        for foreign, mark_done in ((False, self.pending.mark_reconciled_many), (True, self.pending.mark_adopted_many)):
            done = [(blob_id, ref) for blob_id, (ref, theirs) in self._landed.items() if theirs is foreign]
            if not done:
                continue
            try:
                await mark_done(done)
            except sqlite3.Error as exc:
                report.aborted = True
                self._storage_failed(report, str(exc))
                return False
            for blob_id, _ in done:
                del self._landed[blob_id]
        return True

    def _storage_failed(self, report: Report, error: str) -> None:
        what = (f"local storage failed: {error}; {len(self._landed)} blob(s) on the primary wait to be recorded, "
                "nothing is posted until they are")
        report.errors.append(what)
        if trio.current_time() - self._storage_warned_at >= STORAGE_WARN_EVERY_S:
            self._storage_warned_at = trio.current_time()
            log.warning("reconciliation paused: %s", what)

    async def _marked(self, mark: Callable[..., Awaitable[None]], *args: Any) -> bool:
        """Run a pending-store mark; False, the pass stopping, when local storage refuses it."""
        try:
            await mark(*args)
        except sqlite3.Error as exc:
            self._storage_error = str(exc)
            return False
        return True

    async def _by_size(self, ids: list[str], *, foreign: bool) -> list[list[str]]:
        """``ids`` in order, cut into parts of at most LOAD_BYTES of data each (a blob larger alone is a part):
        a page's blobs are loaded part by part, so a pass holds a bounded amount of blob data."""
        sizes = await self.pending.sizes(ids, foreign=foreign)
        parts: list[list[str]] = []
        total = LOAD_BYTES
        for blob_id in ids:
            size = sizes.get(blob_id, 0)
            if total + size > LOAD_BYTES:
                parts.append([])
                total = 0
            parts[-1].append(blob_id)
            total += size
        return parts

    @property
    def _page_size(self) -> int:
        return max(self.batch_size, SUBMIT_BLOBS) if self._batching else self.batch_size

    def _submitter(self) -> Any:
        """The primary itself (unwrapped from its MeteredLayer) if it takes several blobs per call and confirms
        them in one read (``post_many`` and ``included``: CelestiaDA), else None."""
        primary = self.layers[PRIMARY]
        inner = getattr(primary, "inner", primary)
        if callable(getattr(inner, "post_many", None)) and callable(getattr(inner, "included", None)):
            return inner
        return None

    async def _run_batch(self, batch: list[FallbackBlob], report: Report, *, foreign: bool) -> None:
        if self._batching and self._submits is not None:
            for group in self._groups(batch):
                await self._in_flight.acquire()  # at most SUBMITS_IN_FLIGHT; the pass pages on meanwhile
                self._submits.start_soon(self._submit_group, group, report, foreign)
            return
        if self.parallel:
            async with trio.open_nursery() as nursery:
                for blob in batch:
                    nursery.start_soon(self._reconcile_one, blob, report, foreign)
        else:
            for blob in batch:
                await self._reconcile_one(blob, report, foreign)

    def _groups(self, batch: list[FallbackBlob]) -> list[list[FallbackBlob]]:
        """``batch`` in order, cut into calls of at most SUBMIT_BLOBS blobs and ``max_submit_bytes`` bytes."""
        limit = int(getattr(self._submitter(), "max_submit_bytes", 0)) or 1
        groups: list[list[FallbackBlob]] = []
        size = 0
        for blob in batch:
            if not groups or len(groups[-1]) >= SUBMIT_BLOBS or size + len(blob.data) > limit:
                groups.append([])
                size = 0
            groups[-1].append(blob)
            size += len(blob.data)
        return groups

    async def _read_back(self, submitter: Any, refs: list[Any], datas: list[bytes]) -> list[bool]:
        """Whether the primary returns each blob just submitted, read up to READ_BACK_TRIES times ``retry_delay_s``
        apart while an answer says not (yet): a load-balanced node one block behind answers "from the future" or
        without the blob, as for ``CelestiaDA.post``. Read once, such a group was posted again up to 4 times, each a
        paid submit, and its blobs counted as the primary's failures: a healthy primary failed over (a reviewer's
        reproduction). DAUnavailable (no answer) is raised at once."""
        for read in range(READ_BACK_TRIES):
            last = read + 1 == READ_BACK_TRIES
            try:
                back: list[bool] = await self._on_primary("get", partial(submitter.included, refs, datas))
            except DAUnavailable:
                raise
            except DAError:
                if last:
                    raise
            else:
                if all(back) or last:
                    return back
            await trio.sleep(self.retry_delay_s)
        raise AssertionError("unreachable")

    async def _submit_group(self, group: list[FallbackBlob], report: Report, foreign: bool) -> None:
        try:
            await self._reconcile_group(group, report, foreign)
        finally:
            self._in_flight.release()

    async def _reconcile_group(self, group: list[FallbackBlob], report: Report, foreign: bool,
                               counted: bool = False) -> None:
        """Post ``group`` to the primary in one call, read it back in one call, and mark what came back byte for
        byte in one transaction; with the same retries as one blob. A group the primary refuses as bad input
        (e.g. too large together) is split in halves, down to the one blob at fault. Not if the pass is to stop:
        they stay pending."""
        if self._should_stop():
            return
        if not counted:
            if foreign:
                report.foreign_processed += len(group)
            else:
                report.blobs_processed += len(group)
        if foreign:
            mark_failed, mark_done = self.pending.mark_foreign_failed_many, self.pending.mark_adopted_many
            rejected = self._rejected_foreign
        else:
            mark_failed, mark_done = self.pending.mark_failed_many, self.pending.mark_reconciled_many
            rejected = self._rejected
        submitter = self._submitter()
        todo = list(group)
        error = ""
        missed = False  # the latest attempt: the primary took the blobs but did not give them back
        for attempt in range(self.max_retries + 1):
            if attempt:
                await trio.sleep(self.retry_delay_s)
                if self._should_stop():
                    break
            since = self.machine.mark()
            ids = [b.blob_id for b in todo]
            datas = [b.data for b in todo]
            try:
                refs = await self._on_primary("post", partial(submitter.post_many, datas))
            except DAError as exc:
                error, missed = str(exc), False
                if is_caller_error(exc):
                    if len(todo) > 1:  # not the primary's failure: find the blob at fault, post the others
                        half = len(todo) // 2
                        await self._reconcile_group(todo[:half], report, foreign, True)
                        await self._reconcile_group(todo[half:], report, foreign, True)
                        return
                    await self._marked(mark_failed, ids, error)
                    rejected.add(todo[0].blob_id)
                    report.blobs_failed += 1
                    report.blobs_rejected += 1
                    report.errors.append(f"{self._what(todo[0], foreign)}: rejected by the primary: {error} "
                                         "(stays pending)")
                    return
                if not await self._marked(mark_failed, ids, error):
                    break
                self._primary_failed(error, write=True)
                continue
            self._primary_took(since)
            try:
                back = await self._read_back(submitter, refs, datas)
            except DAError as exc:
                error = str(exc)
                marked = await self._marked(mark_failed, ids, error)
                # no answer, or a node still behind the height it took them at: held back, not posted again (and
                # paid) this pass; only the silence is the primary's failure (a lagging node did take them)
                if isinstance(exc, DAUnavailable) or lagging(exc):
                    if isinstance(exc, DAUnavailable):
                        self._primary_failed(error, write=False)
                    self._hold(ids, foreign, error, max(r.height for r in refs), answered=False)
                    error += f" (held back from automatic passes for {self._hold_s(ids[0]):.0f} s)"
                    missed = False
                    break
                missed = True  # answered: not found, say
                if not marked or await self._missed_some(ids, report):  # (no paid probe while storage fails)
                    break
                continue
            done = [(b.blob_id, ref) for b, ref, ok in zip(todo, refs, back, strict=True) if ok]
            if done:
                if not await self._marked(mark_done, done):
                    self._landed.update((blob_id, (ref, foreign)) for blob_id, ref in done)
                self._done([blob_id for blob_id, _ in done], rejected, max(ref.height for _, ref in done))
                if foreign:
                    report.blobs_adopted += len(done)
                else:
                    report.blobs_reconciled += len(done)
            todo = [b for b, ok in zip(todo, back, strict=True) if not ok]
            if not todo:
                return
            error = f"the primary took the blob but did not return it at height {refs[0].height}"
            missed = True
            if not await self._marked(mark_failed, [b.blob_id for b in todo], error):
                break
            if await self._missed_some([b.blob_id for b in todo], report):
                break
        if missed:
            self._hold([b.blob_id for b in todo], foreign, error, max(r.height for r in refs))
            error += f" (held back from automatic passes for {self._hold_s(todo[0].blob_id):.0f} s)"
        report.blobs_failed += len(todo)
        report.errors.extend(f"{self._what(b, foreign)}: {error} (stays pending)" for b in todo)

    async def _on_primary(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        """One call on the unwrapped primary, bounded, counted and timed by its MeteredLayer like its own calls (a
        call of several blobs counts once); a DATimeout past the layer's ``timeout_s`` without one."""
        primary = self.layers[PRIMARY]
        metered = getattr(primary, "_call", None)
        if callable(metered):
            result: T = await metered(what, fn)
            return result
        timeout_s = float(getattr(primary, "timeout_s", 0) or 3600.0)
        try:
            with trio.fail_after(timeout_s):
                return await fn()
        except trio.TooSlowError:
            raise DATimeout(f"{primary.name}: {what} timed out after {timeout_s:.3g}s") from None

    @staticmethod
    def _what(blob: FallbackBlob, foreign: bool) -> str:
        return f"another member's blob {blob.blob_id[:16]}" if foreign else f"blob {blob.blob_id[:16]}"

    async def _adopt(self, report: Report) -> None:
        """Re-post the foreign blobs that are due (see the module docstring), oldest first, a batch at a time."""
        if self.adopt_grace_s is None or self.pending.foreign_waiting == 0:
            return
        ok_since, read_ms = self.machine.primary_ok_since, self.primary_read_ms()
        if ok_since is None or read_ms is None:
            return
        # due when max(first read, primary ok since) + delay <= both now and the start of the latest full read of
        # the primary log (so a copy the writer posted before that moment would have been seen)
        limit_ms = min(self.clock(), read_ms)
        if limit_ms - ok_since < self.adopt_grace_s * 1000:
            return
        after: PageKey | None = None
        while True:
            if self._should_stop():
                report.aborted = True
                return
            keys = await self.pending.foreign_keys(after, self._page_size, limit_ms - int(self.adopt_grace_s * 1000))
            if not keys:
                return
            after = keys[-1]
            due = [k.blob_id for k in keys if max(k.stored_ms, ok_since) + self._adopt_delay_ms(k.blob_id) <= limit_ms
                   and not self._skipped(k.blob_id, self._rejected_foreign)]
            quiet_since = limit_ms - int(self.adopt_grace_s * 1000)
            for part in await self._by_size(due, foreign=True):
                batch = [b for b in await self.pending.load_foreign(part)
                         if self.signer_active.get(_signer(b.data), -1) < quiet_since]
                await self._run_batch(batch, report, foreign=True)

    def _should_stop(self) -> bool:
        """The monitor's passes stop once the status went back to a fallback; every pass stops once the primary
        failed ``failure_threshold`` times in a row in it (a manual pass against a primary that is down posted
        every pending blob, each with its retries: 80 doomed posts in 2.9 hours of one HTTP request)."""
        return ((self._stop_on_fallback and self.machine.status in (Status.DEGRADED, Status.EMERGENCY))
                or self._failed_in_row >= self.machine.failure_threshold or self._storage_error is not None)

    def _primary_failed(self, error: str, *, write: bool) -> None:
        self._failed_in_row += 1
        self.machine.observe(PRIMARY, False, self.clock(), error, write=write)

    def _primary_took(self, since: int) -> None:
        self._failed_in_row = 0
        self.machine.observe(PRIMARY, True, self.clock(), write=True, since=since)

    async def _reconcile_one(self, blob: FallbackBlob, report: Report, foreign: bool = False) -> None:
        """Post one blob (ours, or ``foreign``: another member's) to the primary and read it back (not if the pass
        is to stop: it stays pending)."""
        if self._should_stop():
            return
        if foreign:
            report.foreign_processed += 1
            mark_failed, mark_done = self.pending.mark_foreign_failed, self.pending.mark_adopted
            what, rejected = f"another member's blob {blob.blob_id[:16]}", self._rejected_foreign
        else:
            report.blobs_processed += 1
            mark_failed, mark_done = self.pending.mark_failed, self.pending.mark_reconciled
            what, rejected = f"blob {blob.blob_id[:16]}", self._rejected
        primary = self.layers[PRIMARY]
        error = ""
        missed = False  # the latest attempt: the primary took the blob but did not give it back
        for attempt in range(self.max_retries + 1):
            if attempt:
                await trio.sleep(self.retry_delay_s)
                if self._should_stop():
                    break
            since = self.machine.mark()
            try:
                ref = await primary.post(blob.data)
            except DAError as exc:
                error, missed = str(exc), False
                if not await self._marked(mark_failed, blob.blob_id, error):
                    break
                if is_caller_error(exc):  # the blob's fault, not the primary's: no retry, no failure counted
                    rejected.add(blob.blob_id)
                    report.blobs_failed += 1
                    report.blobs_rejected += 1
                    report.errors.append(f"{what}: rejected by the primary: {error} (stays pending)")
                    return
                self._primary_failed(error, write=True)
                continue
            self._primary_took(since)
            try:
                back = await primary.get(ref)
            except DAError as exc:
                # answered: not found, say; no answer, or a node still behind its height: held back, not posted
                # again (and paid) this pass (only the silence counted as the primary's failure)
                error, missed = str(exc), not isinstance(exc, DAUnavailable) and not lagging(exc)
                marked = await self._marked(mark_failed, blob.blob_id, error)
                if not missed:
                    if isinstance(exc, DAUnavailable):
                        self._primary_failed(error, write=False)
                    self._hold([blob.blob_id], foreign, error, ref.height, answered=False)
                    error += f" (held back from automatic passes for {self._hold_s(blob.blob_id):.0f} s)"
                    break
                if not marked or await self._missed_some([blob.blob_id], report):
                    break
                continue
            if back != blob.data:
                error, missed = f"the primary took the blob but returned different bytes at height {ref.height}", True
                if not await self._marked(mark_failed, blob.blob_id, error):
                    break
                if await self._missed_some([blob.blob_id], report):
                    break
                continue
            if not await self._marked(mark_done, blob.blob_id, ref):
                self._landed[blob.blob_id] = (ref, foreign)
            self._done([blob.blob_id], rejected, ref.height)
            if foreign:
                report.blobs_adopted += 1
            else:
                report.blobs_reconciled += 1
            return
        if missed:
            self._hold([blob.blob_id], foreign, error, ref.height)
            error += f" (held back from automatic passes for {self._hold_s(blob.blob_id):.0f} s)"
        report.blobs_failed += 1
        report.errors.append(f"{what}: {error} (stays pending)")

    async def consistency(self) -> dict[str, Any]:
        """Check for real, within bounds: the most recent pending blobs readable from their fallback, the
        most recent reconciled blobs readable from the primary, with the same bytes."""
        details: list[str] = []
        pending_ids, pending_total = await self.pending.recent_ids(False, self.check_limit)
        reconciled_ids, reconciled_total = await self.pending.recent_ids(True, self.check_limit)
        todo = [(blob_id, False) for blob_id in pending_ids] + [(blob_id, True) for blob_id in reconciled_ids]
        checked = {False: 0, True: 0}
        position = 0

        async def worker() -> None:
            nonlocal position
            while position < len(todo):
                blob_id, reconciled = todo[position]
                position += 1
                found = await self.pending.load([blob_id])
                if found:
                    blob = found[0]
                    if reconciled:
                        assert blob.primary_ref is not None
                        details.extend(await self._check(PRIMARY, blob, blob.primary_ref))
                    else:
                        details.extend(await self._check(blob.ref.layer, blob, blob.ref))
                checked[reconciled] += 1

        with trio.move_on_after(self.check_deadline_s) as deadline:
            async with trio.open_nursery() as nursery:
                for _ in range(max(1, min(self.check_concurrency, len(todo)))):
                    nursery.start_soon(worker)
        pending_left = pending_total - checked[False]
        reconciled_left = reconciled_total - checked[True]
        inconsistencies = len(details)
        if deadline.cancelled_caught:  # not verified is not consistent
            details.append(f"consistency check stopped at its {self.check_deadline_s:.3g}s deadline: "
                           f"{len(pending_ids) - checked[False]} pending and {len(reconciled_ids) - checked[True]} "
                           f"reconciled blobs of the sample left unchecked ({pending_left} pending and "
                           f"{reconciled_left} reconciled blobs unchecked in all)")
        return {"is_consistent": not details, "items_verified": checked[False] + checked[True],
                "inconsistencies_found": inconsistencies, "details": details, "verified_at": self.clock(),
                "pending_unchecked": pending_left, "reconciled_unchecked": reconciled_left,
                "complete": not deadline.cancelled_caught}

    async def _check(self, layer_name: str, blob: FallbackBlob, ref: Any) -> list[str]:
        layer = self.layers.get(layer_name)
        if layer is None:
            return [f"blob {blob.blob_id[:16]}: layer {layer_name} is not configured"]
        try:
            data = await layer.get(ref)
        except DAError as exc:
            return [f"blob {blob.blob_id[:16]}: not readable from {layer_name} at {ref.height}: {exc}"]
        if data != blob.data:
            return [f"blob {blob.blob_id[:16]}: {layer_name} returned different bytes at {ref.height}"]
        return []
