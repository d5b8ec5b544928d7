"""The consumer: follows a DA layer from a cursor, verifies each blob's signer, applies its events.

Blobs not signed by a cluster member (DA namespaces are public), larger than the protocol's limit
(``node.blob.MAX_BLOB_BYTES``, the same on every coordinator) or malformed are dropped and counted by
reason; events whose origin is not the signer's member id are dropped and counted too. Application is
idempotent and order-free, so re-reading a blob is harmless. The cursor is persisted only inside
snapshots, together with the state it produced.

``RebuildProgress`` reports a rebuild from DA (the consumers catching up at start): every 2 s while behind,
one log line (structured fields in ``extra=``) with events applied and events/s, each followed log's cursor,
head and heights/s, and an ETA; /ready's 503 body carries the same fields. A log's *head* is what its layer's
``head()`` answered at the latest report (fetched then, once per behind log, with a short deadline): for
Celestia the network head height (``header.NetworkHead``: heights without blobs of ours count), for a blob
store or QuorumDA validator log the position of its newest blob, for the Mock DA the height of its newest blob;
cursor and head are in the same unit (the consumer's cursor). Unknown (null) until the first report or while
the layer does not answer.

A *stuck* log (``Consumer.stuck``, ``stuck_logs``; /ready's 503 once rebuilt): its reads have kept failing for
``STUCK_AFTER_S`` or longer with no successful read in between. An answered error (e.g. a pruned Celestia node's
``header: not found``) counts, and so does an outage (``DAUnavailable``/``DATimeout``) unless the DA status machine
reports the layer down (``stuck_logs``' ``down``: then /health and /da/routing say so, writes go to a fallback and
the coordinator stays ready). An outage the status machine does not see used to leave the coordinator ready while
it applied nothing: a node whose headers answer the health checks while every ``blob.GetAll`` fails (each such
read, retried for seconds, overlapped a successful health check and so counted as a stale outcome). Its cursor
stays, so events after it may be missing from the state; the first successful read ends it.
"""

from __future__ import annotations

import gc
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from typing import Any

import trio

from node.backoff import Backoff
from node.blob import BlobError, decode_blob
from node.da.base import DAError, DALayer, read_failure
from node.events import EventTuple
from node.hlc import wall_ms
from node.process import stopping

log = logging.getLogger("dsdn.consumer")
READ_LIMIT = 32
#: A coordinator's long poll at the head of a log (see ``Consumer.poll_once``). Longer costs fewer idle requests
#: (each is one HTTP exchange on both sides); it does not delay anything: new blobs end the wait at once, a store
#: shutting down answers its waiting polls at once, and a Celestia block (about 6 s on mainnet) ends it.
LONG_POLL_S = 10.0
PROGRESS_INTERVAL_S = 2.0
HEAD_TIMEOUT_S = 5.0
#: How long a followed log's reads must keep failing (no successful read in between; an outage the DA status reports is
#: left out) before it counts as stuck and /ready answers 503 (see the module docstring). Why 30 s: one failed read, or
#: a few in a row, is normal and heals by itself (a node restarting, a load-balanced RPC whose replica is a block behind
#: and answers ``header: not found`` for a height it does not have yet), and readiness drives load balancers: flipping
#: it for a blip would drain a coordinator that is fine. The consumer retries with backoff (0.1 s doubling to 10 s, full
#: jitter), so 30 s spans about ten failed reads, and an error that outlasts them (a pruned height) will not heal alone.
#: Only a successful read resets the streak, so a steadily failing log turns unready once and stays so (no flapping on
#: every retry), while a log that fails now and then but keeps reading moves its cursor and stays ready. Short next to
#: the alternative (a stuck log went unnoticed for ever).
STUCK_AFTER_S = 30.0
DROPPED_LOG_EVERY_S = 60.0  # a blob dropped for a reason already logged is logged again after this long at most
#: a log never read yet that fails within this long of the start is noted at INFO, and a WARNING comes only if it still
#: fails after it: the members of a local cluster start one after another, and each start printed a dozen warnings
#: about validators not listening yet (a fresh user's run)
START_GRACE_S = 10.0


def spare_collector(*, catching_up: bool) -> None:
    """Called after each page a consumer read. A rebuild adds millions of long-lived tuples (the registers) to the
    heap, and the collector's young-generation passes walked each of them again for nothing (they hold no cycles):
    5% of a rebuild's CPU time, in a few passes of ~25 ms. So while catching up, ``gc.freeze()`` after each page
    moves everything alive to the permanent generation, which no collection walks; once a page reaches the head,
    ``gc.unfreeze()`` hands all of it to the oldest generation, where the next full collection finds any cycles
    among it as usual: nothing escapes the collector for longer than a catch-up. The price: cyclic garbage made
    meanwhile waits for the head too (measured: ~140 objects a page of Celestia reads, ~0.1% of what a page adds to
    the state). Both calls are O(1) and process-wide: with several consumers (one per followed log), one at its
    head unfreezes while another still catches up, which only costs the latter part of the gain."""
    if catching_up:
        gc.freeze()
    else:
        gc.unfreeze()


class Consumer:
    def __init__(
        self,
        da: DALayer,
        apply_events: Callable[[list[EventTuple]], int],
        members: frozenset[bytes],
        *,
        member_ids: Mapping[bytes, str] | None = None,
        cursor: int = 0,
        poll_s: float = 0.1,
        idle_poll_s: float = 1.0,
        wait_s: float = 0.0,
        on_result: Callable[[bool, str | None], None] = lambda ok, err: None,
        rng: random.Random | None = None,
    ) -> None:
        """``apply_events``: applies a blob's events in order and returns how many were new; ``members``: the
        keys whose blobs are accepted; ``member_ids``: the member id bound to each key
        that has one (see ``node.blob.expected_origin``); ``rng``: the retry jitter's source (the simulator's is
        seeded); ``wait_s`` > 0: at the head, read with long polls of that length (see ``poll_once``)."""
        self.da, self.apply_events, self.members = da, apply_events, members
        self.member_ids: Mapping[bytes, str] = member_ids or {}
        self.cursor, self.poll_s, self.idle_poll_s = cursor, poll_s, idle_poll_s
        self.log: dict[str, str] | None = None  # the log the cursor counts in, where the layer names it (Page.log)
        self._idle = poll_s  # the pause at the head: doubles while reads find nothing, back to poll_s on data
        self.wait_s = wait_s
        self._at_head = False  # the latest read reached the head: the next one is a long poll (if wait_s)
        self._pause = 0.0  # how long to sleep after the latest read, if it reached the head
        self.on_result = on_result
        self.caught_up = trio.Event()  # the head was reached once (it stays set: see ``at_head``)
        self.head_read_started: float | None = None  # trio time the latest read that reached the head began: what
        #                                              the log held then, this member has read
        self.blobs_applied = 0
        self.events_new = 0
        self.events_invalid = 0
        self.events_wrong_origin = 0
        self.rejected: Counter[str] = Counter()
        self._dropped_logged: dict[str, tuple[float, int]] = {}  # reason -> (when last logged, rejected count then)
        self.last_ok = True
        self._backoff = Backoff(0.1, 10.0, rng)
        self._retry_now = trio.Event()  # set: end the current backoff at once (see retry_now)
        self.stuck_after_s = STUCK_AFTER_S  # tests shorten it
        # the current streak of failed reads (all None/0 after a successful read)
        self.last_error: str | None = None  # the latest failure: "reading after <cursor> failed: <error>"
        self.failed_reads = 0
        self.failing_since: float | None = None  # trio time of the streak's first failed read
        self.failing_since_ms: int | None = None  # ... in wall ms (for /ready)

    def ingest(self, data: bytes) -> int:
        """Verify and apply one blob; return the number of new events it brought."""
        try:
            blob = decode_blob(data, self.members, member_ids=self.member_ids)
        except BlobError as exc:
            self.rejected[exc.reason] += 1
            if exc.reason != "foreign":
                self._log_dropped(exc)
            return 0
        self.events_invalid += blob.invalid_events
        if blob.wrong_origin:
            self.events_wrong_origin += blob.wrong_origin
            log.warning("dropped %d events of a blob signed by %s (declaring origin %r): their origin is not the "
                        "signer's member id", blob.wrong_origin, blob.signer.hex(), blob.origin)
        new = self.apply_events(blob.events)
        self.blobs_applied += 1
        self.events_new += new
        return new

    def _log_dropped(self, exc: BlobError) -> None:
        """One warning per reason at most every DROPPED_LOG_EVERY_S, saying how many more were dropped meanwhile: the
        namespace is public, so anyone could fill the log with a warning per junk blob (the counts are in
        ``rejected``: dsdn_consumer_blobs_rejected on /metrics)."""
        now, count = time.monotonic(), self.rejected[exc.reason]
        last = self._dropped_logged.get(exc.reason)
        if last is not None and now - last[0] < DROPPED_LOG_EVERY_S:
            return
        more = count - last[1] - 1 if last is not None else 0
        log.warning("dropped blob: %s%s", exc, f" ({more} more dropped for this reason since the last warning)"
                    if more else "")
        self._dropped_logged[exc.reason] = (now, count)

    async def poll_once(self) -> bool:
        """Read and ingest the next blobs after the cursor; return True when the head was reached.

        Once at the head, with ``wait_s`` set, every read is a long poll: the layer answers when something
        follows the cursor (or after ``wait_s``), so a new blob is applied as soon as the layer has it and an idle
        log costs one read per ``wait_s``, not one per poll interval. A layer that cannot wait answers at once with
        nothing: then the reads are paced as without long polls (``poll_s`` doubling to ``idle_poll_s``)."""
        wait = self.wait_s if self._at_head else 0.0
        started, before = trio.current_time(), self.cursor
        page = await self.da.read_after(self.cursor, READ_LIMIT, wait)
        if not page.items and not page.at_head and page.cursor <= before:
            # nothing, not the head, and no step forward: read again at once, for ever (a faulty blob store did
            # so 3,500 times a second, and the coordinator never became ready); a failed read backs off instead
            raise DAError(f"{self.da.name}: a page with nothing after {before} that is not the head (no progress)")
        for _, data in page.items:
            self.ingest(data)
        spare_collector(catching_up=bool(page.items) and not page.at_head)
        self.cursor = page.cursor
        if page.log is not None:
            self.log = page.log
        self._idle = self.poll_s if page.items else min(self._idle * 2, self.idle_poll_s)
        if self.wait_s and (not wait or page.items or page.cursor != before
                            or trio.current_time() - started >= wait / 2):
            self._pause = 0.0  # the next read waits on the layer instead
        else:
            self._pause = self._idle
        self._at_head = page.at_head
        if page.at_head:
            self.head_read_started = started
        return page.at_head

    @property
    def at_head(self) -> bool:
        """The latest read reached the log's head (and succeeded)."""
        return self._at_head and self.last_ok

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        started, ever_read, warn_later = trio.current_time(), False, False
        try:
            while True:
                try:
                    at_head = await self.poll_once()
                except DAError as exc:
                    early = not ever_read and trio.current_time() - started < START_GRACE_S
                    if self.last_ok:  # once per failure streak; the rest at debug level
                        (log.info if early or stopping() else log.warning)(
                            "reading %s failed (cursor %d)%s; retrying with backoff: %s", self.da.name, self.cursor,
                            " at start" if early else " while stopping" if stopping() else "", exc)
                        warn_later = early
                    elif warn_later and not early and not stopping():
                        log.warning("reading %s still fails %.0fs after the start (cursor %d): %s", self.da.name,
                                    START_GRACE_S, self.cursor, exc)
                        warn_later = False
                    self.last_ok = False
                    self._note_failure(exc)
                    self.on_result(False, str(exc))
                    self._at_head = False  # the retry reads at once: no long poll until the head is reached again
                    delay = self._backoff.next()
                    log.debug("reading %s failed again (retry in %.2fs): %s", self.da.name, delay, exc)
                    with trio.move_on_after(delay):
                        await self._retry_now.wait()
                    self._retry_now = trio.Event()
                    continue
                self._backoff.reset()
                if not self.last_ok:
                    log.info("reading %s works %s (cursor %d)", self.da.name, "again" if ever_read else "now",
                             self.cursor)
                self.last_ok, ever_read, warn_later = True, True, False
                self.last_error, self.failed_reads = None, 0
                self.failing_since = self.failing_since_ms = None
                self.on_result(True, None)
                if at_head:
                    self.caught_up.set()
                    await trio.sleep(self._pause)  # 0 with long polls; else an idle log is read about once a second
                else:
                    await trio.sleep(0)
        finally:  # stopped (cancelled) while catching up: hand the frozen heap back to the collector
            spare_collector(catching_up=False)

    def retry_now(self) -> None:
        """Cut a failed read's backoff short: its layer works again (the DA status says so). Its next read, up to
        10 s away, would otherwise keep an old failure streak counting as stuck: /ready said 503 right after the
        layer recovered."""
        self._retry_now.set()

    def _note_failure(self, exc: DAError) -> None:
        now = trio.current_time()
        if self.failing_since is None:
            self.failing_since, self.failing_since_ms = now, wall_ms()
        self.last_error, _ = read_failure(self.cursor, exc)
        self.failed_reads += 1

    def stuck(self) -> dict[str, Any] | None:
        """Why this log is stuck (see the module docstring), or None: ``cursor`` (where it stays), ``error``
        (the latest failure), ``failing_since_ms`` (wall ms of the streak's first failed read), ``failing_for_s``
        and ``failed_reads`` (in the streak)."""
        if self.failing_since is None:
            return None
        now = trio.current_time()
        if now - self.failing_since < self.stuck_after_s:
            return None
        return {"cursor": self.cursor, "error": self.last_error, "failing_since_ms": self.failing_since_ms,
                "failing_for_s": round(now - self.failing_since, 3), "failed_reads": self.failed_reads}


def stuck_logs(consumers: Mapping[str, Consumer], down: Collection[str] = (), quorum_logs: Collection[str] = (),
               quorum_required: int = 1) -> dict[str, dict[str, Any]]:
    """The stuck logs among ``consumers`` (name → ``Consumer.stuck()``), except:

    - those in ``down``, the layers the DA status machine already reports unhealthy: an outage is a DA-status
      matter (/health, /da/routing) and writes go to the next layer; the coordinator stays ready through it;
    - the quorum validators' own logs (``quorum_logs``) while fewer than ``quorum_required`` of them cannot be
      read (stuck, or failing for any other reason, an outage included): a quorum blob is stored on at least that
      many validators, so it can still be read from another one (and one faulty validator must not make every
      coordinator unready: the quorum is there to tolerate it)."""
    found = {name: consumer.stuck() for name, consumer in consumers.items() if name not in down}
    stuck = {name: why for name, why in found.items() if why is not None}
    unreadable = sum(consumers[name].failing_since is not None for name in quorum_logs if name in consumers)
    if unreadable < quorum_required:
        stuck = {name: why for name, why in stuck.items() if name not in quorum_logs}
    return stuck


class RebuildProgress:
    """Progress of the consumers catching up with their logs (see the module docstring)."""

    def __init__(self, consumers: Mapping[str, Consumer], events_applied: Callable[[], int],
                 done: Callable[[], bool], *, interval_s: float = PROGRESS_INTERVAL_S,
                 head_timeout_s: float = HEAD_TIMEOUT_S) -> None:
        """``events_applied``: the state's count; ``done``: the rebuild is over (the coordinator's ``rebuilt``)."""
        self.consumers, self.events_applied, self.done = consumers, events_applied, done
        self.interval_s, self.head_timeout_s = interval_s, head_timeout_s
        self.heads: dict[str, int | None] = dict.fromkeys(consumers)
        self.head_errors: dict[str, str] = {}
        self.cursor_rates: dict[str, float | None] = dict.fromkeys(consumers)
        self.events_per_s: float | None = None
        self.reports = 0  # progress lines logged
        self._started: float | None = None  # trio time when run() began
        self._last_t = 0.0
        self._last_events = 0
        self._last_cursors: dict[str, int] = {}

    def _mark(self) -> None:
        self._last_t = trio.current_time()
        self._last_events = self.events_applied()
        self._last_cursors = {name: c.cursor for name, c in self.consumers.items()}

    async def run(self) -> None:
        """Report every ``interval_s`` until the rebuild is over; then one line with the totals."""
        self._started = started = trio.current_time()
        self._mark()
        first_events = self._last_events
        next_at = started + self.interval_s
        while not self.done():  # looked at every 0.1 s, so the summary's time is that of the rebuild
            if trio.current_time() >= next_at:
                await self.report()
                next_at = max(next_at + self.interval_s, trio.current_time())
            await trio.sleep(max(0.0, min(0.1, next_at - trio.current_time())))
        elapsed = trio.current_time() - started
        if self.reports:  # a rebuild long enough to be reported gets its summary too
            events = self.events_applied() - first_events
            log.info("rebuild from DA complete: %d events in %.1fs (%.0f events/s)", events, elapsed,
                     events / elapsed if elapsed > 0 else 0.0,
                     extra={"events": events, "elapsed_s": round(elapsed, 3)})

    async def _fetch_head(self, name: str, consumer: Consumer) -> None:
        layer = getattr(consumer.da, "inner", consumer.da)  # past the metering wrapper: this is no health check
        try:
            with trio.fail_after(self.head_timeout_s):
                self.heads[name] = await layer.head()
            self.head_errors.pop(name, None)
        except (DAError, trio.TooSlowError) as exc:
            self.head_errors[name] = str(exc) or f"no answer within {self.head_timeout_s:g}s"

    async def report(self) -> dict[str, Any]:
        """Fetch the head of every log still behind, update the rates since the previous report, log one line
        and return the progress."""
        async with trio.open_nursery() as nursery:
            for name, consumer in self.consumers.items():
                if not consumer.caught_up.is_set():
                    nursery.start_soon(self._fetch_head, name, consumer)
        now = trio.current_time()
        dt = now - self._last_t
        if dt > 0:
            self.events_per_s = (self.events_applied() - self._last_events) / dt
            for name, consumer in self.consumers.items():
                self.cursor_rates[name] = max(0, consumer.cursor - self._last_cursors.get(name, consumer.cursor)) / dt
        self._mark()
        self.reports += 1
        progress = self.snapshot()  # its ``reports`` counts this one
        behind = ", ".join(
            f"{name} {entry['cursor']}/{'?' if entry['head'] is None else entry['head']}"
            + (f" ({entry['heights_per_s']:.1f}/s)" if entry["heights_per_s"] is not None else "")
            for name, entry in progress["logs"].items() if not entry["caught_up"])
        eta = progress["eta_s"]
        log.info("rebuilding from DA: %d events applied (%.0f events/s); behind: %s; ETA %s",
                 progress["events_applied"], progress["events_per_s"] or 0.0, behind or "none",
                 "unknown" if eta is None else f"{eta:.0f}s", extra={"progress": progress})
        return progress

    def _error(self, name: str, consumer: Consumer) -> str | None:
        """Why the log does not move: its latest read failed (the metered layer's error), or its head is unknown."""
        if not consumer.last_ok:
            return getattr(consumer.da, "last_read_error", None) or "reading fails"
        return self.head_errors.get(name)

    def snapshot(self) -> dict[str, Any]:
        """The progress now: live cursors and counts, heads and rates of the latest report (null before it).
        ``eta_s``: the slowest behind log's (head − cursor) / heights per second; null while unknown."""
        logs: dict[str, dict[str, Any]] = {}
        etas: list[float | None] = []
        for name, consumer in self.consumers.items():
            caught_up = consumer.caught_up.is_set()
            head = self.heads.get(name)
            if head is not None or caught_up:
                head = max(head or 0, consumer.cursor)  # at its head, or past the head seen at the last report
            behind = None if head is None else head - consumer.cursor
            rate = self.cursor_rates.get(name)
            eta: float | None = 0.0 if caught_up or behind == 0 else None
            if eta is None and behind is not None and rate:
                eta = behind / rate
            if not caught_up:
                etas.append(eta)
            logs[name] = {"cursor": consumer.cursor, "head": head, "behind": behind, "caught_up": caught_up,
                          "heights_per_s": None if rate is None else round(rate, 3),
                          "eta_s": None if eta is None else round(eta, 3),
                          "error": self._error(name, consumer)}
        started = trio.current_time() if self._started is None else self._started
        return {"events_applied": self.events_applied(),
                "events_per_s": None if self.events_per_s is None else round(self.events_per_s, 1),
                "eta_s": None if any(e is None for e in etas) else round(max(etas, default=0.0), 3),
                "elapsed_s": round(trio.current_time() - started, 3), "reports": self.reports, "logs": logs}
