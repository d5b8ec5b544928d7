"""The one DA status machine (pure: no I/O; time is passed in).

Fed by periodic health checks and by the outcome of real operations on each layer, it decides which
layer takes writes. Every HTTP view (/health, /ready, /da/routing, /fallback/status, /system/info)
reads one ``StatusSnapshot`` of it, so they never disagree.

    Healthy ──primary fails──▶ Warning ──failures ≥ failure_threshold──▶ Degraded (secondary)
       ▲                          │ primary ok                              │ secondary fails
       │                          ▼                                         ▼
       │                       Healthy                                  Emergency (emergency layer)
       │                                                                    │
       └── reconciliation done ◀── Recovering ◀── primary ok ≥ recovery_threshold (from either)

In Recovering the primary takes writes again while blobs stored on fallbacks are re-posted to it;
``failure_threshold`` failures in Recovering go back to Degraded/Emergency.

Writes and reads are told apart (``observe(..., write=True)`` for a post): a primary that serves reads and health
checks but rejects every write must still reach the failure threshold. So the primary's failure count is its failed
writes plus its failed reads in a row; only a successful read or health check resets the read failures, only a
successful write resets the write failures (a primary failing its health checks but taking writes reaches the
threshold too, instead of flipping Healthy ⇄ Warning at every check and write). Recovery from Degraded/Emergency may
come from reads alone (``recovery_threshold`` successes in a row): Recovering then starts with a clean count, and
reconciliation's writes are the probe (if they fail, the status goes back to the fallback). A fallback layer is
unhealthy after any failure, but the one taking writes only after a failed write or ``FALLBACK_READ_FAILURES`` failed
reads or health checks in a row (one slow check of a secondary taking writes, a QuorumDA write outlasting the check's
deadline, took the status to Emergency and abandoned the write in flight there: a reviewer's reproduction; its writes
tell soon enough), and healthy again after a successful write, or after a successful read or health check, unless it
failed a write lately: then only ``FALLBACK_WRITE_RETRY_MS`` after that failure, doubling with each failed write since
its last good one. (A fallback answering health checks but refusing our writes, its writer list lacking our key say,
flipped the status on every check and every write, each write trying it first in vain: a reviewer's reproduction.) A
write that fails on it falls through to the next layer.

Outcomes arrive out of order: a write or read that started before an outage may succeed after the first
failures of that outage were observed. Such a success says nothing about the present, so a caller that
takes ``mark()`` when an operation starts and passes it as ``since`` has a success ignored (counted in
``stale``) when the layer failed after the mark: one failure sequence gives one transition (Healthy →
Warning → fallback), not Healthy → Warning → Healthy → Warning as late answers arrive. Likewise a failed
read or health check that started before a later success (a slow read timing out after the layer answered
again: for the primary, a later read or health check, not a write) is ignored; a failed write always counts. An
outcome without ``since`` counts as fresh.

``on_change`` (if set) is called after every observation that changed the status or a layer's health (the
stack logs it and abandons the writes in flight on a layer that failed).

Relapses: a primary that serves reads but still fails writes comes back to Recovering on reads alone, fails its
first writes and goes back to the fallback: for ever, every few health checks (a reviewer's run: 66 transitions in
ten minutes, and with slow refusals the publisher blocked in doomed writes most of the time). So each return from
Recovering to a fallback doubles the successes in a row it takes to leave the fallback again (``relapses``, at
most 2^MAX_RELAPSE_DOUBLINGS times ``recovery_threshold``); Recovering → Healthy resets it.

A write failure is forgotten once the primary answered a read or health check ``WRITE_FAILURES_FORGOTTEN_MS``
after it: with no writes in between, one failed write kept the status at Warning for ever (and /health said
degraded), and isolated failures hours apart added up to a failover. A primary refusing writes that keep coming
still reaches the threshold.

``primary_ok_since`` is when the primary's current run of successes began (None after a failure): how long the
primary has worked again, e.g. before adopting other members' fallback blobs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

PRIMARY, SECONDARY, EMERGENCY = "primary", "secondary", "emergency"
MAX_RELAPSE_DOUBLINGS = 6  # leaving a fallback after relapses takes at most 64 times recovery_threshold successes
WRITE_FAILURES_FORGOTTEN_MS = 600_000  # a read or health check this long after the latest failed write clears it
FALLBACK_WRITE_RETRY_MS = 30_000  # a fallback that failed a write: trusted again on a health check this long after
MAX_FALLBACK_RETRY_DOUBLINGS = 5  # ... doubling with each failed write since its last successful one (16 min at most)
FALLBACK_READ_FAILURES = 2  # failed reads or checks in a row that make the fallback taking writes unhealthy


class Status(Enum):
    HEALTHY = "Healthy"
    WARNING = "Warning"
    DEGRADED = "Degraded"
    EMERGENCY = "Emergency"
    RECOVERING = "Recovering"


@dataclass(frozen=True)
class StatusSnapshot:
    status: Status
    routing: str  # the layer that takes writes first
    write_order: tuple[str, ...]  # every configured layer, in the order a write tries them
    healthy: dict[str, bool]  # per configured layer
    fallback_active: bool
    fallback_reason: str | None
    last_fallback_at: int | None  # wall ms of the latest entry into Degraded/Emergency
    primary_failures: int
    transitions: int

    @property
    def takes_writes(self) -> bool:
        return any(self.healthy.values())


@dataclass
class _Layer:
    healthy: bool = True
    write_failures: int = 0  # failed writes in a row; only a successful write resets them
    read_failures: int = 0  # failed reads/health checks in a row; a successful read or health check resets them
    successes: int = 0  # successes (of any kind) in a row
    last_error: str | None = None
    last_failure_seq: int = 0  # the machine's observation number of this layer's latest failure
    last_success_seq: int = 0  # ... and of its latest success
    last_read_success_seq: int = 0  # ... and of its latest successful read or health check (not a write)
    ok_since_ms: int | None = None  # when the current run of successes began (None: the latest outcome failed)
    write_failed_ms: int = 0  # when the latest write failed

    @property
    def failures(self) -> int:
        return self.write_failures + self.read_failures


@dataclass
class DAStatusMachine:
    layers: tuple[str, ...] = (PRIMARY,)  # configured layers, a subset of (primary, secondary, emergency)
    failure_threshold: int = 3
    recovery_threshold: int = 2
    status: Status = Status.HEALTHY
    fallback_reason: str | None = None
    last_fallback_at: int | None = None
    transitions: int = 0
    relapses: int = 0  # returns from Recovering to a fallback since the primary was last fully back (see above)
    stale: int = 0  # outcomes ignored: their operation started before a later opposite outcome (see above)
    on_change: Callable[[], None] | None = None
    _state: dict[str, _Layer] = field(default_factory=dict)
    _seq: int = 0  # observations so far (failures are stamped with it)
    _primary_reason: str | None = None  # why the status last left the primary (the fallback's reason in Degraded)

    def __post_init__(self) -> None:
        self._state = {name: _Layer() for name in self.layers}

    def mark(self) -> int:
        """Take when an operation starts; pass as ``observe(..., since=mark)`` with its outcome."""
        return self._seq

    # ---- inputs ----------------------------------------------------------------------------------

    def observe(self, layer: str, ok: bool, now_ms: int, error: str | None = None, write: bool = False,
                since: int | None = None) -> Status:
        """A health check, a read, or (``write=True``) a write on ``layer`` succeeded or failed. ``since``: the
        ``mark()`` taken when the operation started: a success is ignored if the layer failed after it, a failed
        read if the layer succeeded after it."""
        st = self._state.get(layer)
        if st is None:
            return self.status
        # (a failed read of the primary is stale only after a later successful read: a write says nothing of reads,
        # and with writes every 200 ms every timed-out health check was ignored as stale, a regression review's run;
        # a fallback, unhealthy at its first failure, keeps any later success: a slow check of a secondary taking
        # writes took the status to Emergency and abandoned the writes in flight on it)
        later = st.last_read_success_seq if layer == PRIMARY else st.last_success_seq
        if since is not None and (st.last_failure_seq > since if ok else (not write and later > since)):
            self.stale += 1
            return self.status
        before = (self.status, st.healthy)
        in_use = layer != PRIMARY and not ok and not write and st.healthy and self.write_order()[0] == layer
        self._seq += 1
        if ok:
            st.last_success_seq = self._seq
            if not write:
                st.last_read_success_seq = self._seq
            if st.successes == 0:
                st.ok_since_ms = now_ms
            st.successes += 1
            if not write:  # (a write says nothing of reads: a primary failing every health check but taking
                st.read_failures = 0  # writes went Healthy -> Warning -> Healthy at each check and write, for ever)
            if layer == PRIMARY:
                if write or now_ms - st.write_failed_ms >= WRITE_FAILURES_FORGOTTEN_MS:
                    st.write_failures = 0
                if st.failures < self.failure_threshold:
                    st.healthy = True
            elif write:  # (its failed checks too: slow checks beside good writes, two of them however far apart
                #           took it out of use, and each one after that again: a regression review)
                st.write_failures, st.read_failures, st.healthy = 0, 0, True
            elif not st.write_failures or now_ms - st.write_failed_ms >= FALLBACK_WRITE_RETRY_MS * 2 ** min(
                    st.write_failures - 1, MAX_FALLBACK_RETRY_DOUBLINGS):
                st.healthy = True  # (its failed writes still count: the next one that fails waits twice as long)
            if st.failures == 0:
                st.last_error = None
        else:
            st.successes, st.last_error, st.ok_since_ms = 0, error, None
            st.last_failure_seq = self._seq
            if write:
                st.write_failures += 1
                st.write_failed_ms = now_ms
            else:
                st.read_failures += 1
            if st.failures >= (self.failure_threshold if layer == PRIMARY else
                               FALLBACK_READ_FAILURES if in_use and not st.write_failures else 1):
                st.healthy = False
        self._step(now_ms)
        if self.on_change is not None and (self.status, st.healthy) != before:
            self.on_change()
        return self.status

    def reconciled(self, pending: int, now_ms: int) -> Status:
        """Reconciliation finished a pass with ``pending`` blobs still waiting for the primary."""
        if self.status is Status.RECOVERING and pending == 0:
            self._go(Status.HEALTHY, None, now_ms)
            self._step(now_ms)  # (a primary with failures counted meanwhile: Warning, as any failure from Healthy)
            if self.on_change is not None:
                self.on_change()
        return self.status

    @property
    def primary_ok_since(self) -> int | None:
        """Wall ms when the primary's current run of successes began; None if its latest outcome failed."""
        return self._state[PRIMARY].ok_since_ms

    # ---- transitions -----------------------------------------------------------------------------

    def _fallback_status(self) -> Status:
        if SECONDARY in self._state and self._state[SECONDARY].healthy:
            return Status.DEGRADED
        if EMERGENCY in self._state and self._state[EMERGENCY].healthy:
            return Status.EMERGENCY
        return Status.DEGRADED if SECONDARY in self._state else (
            Status.EMERGENCY if EMERGENCY in self._state else Status.DEGRADED)

    def _step(self, now_ms: int) -> None:
        primary = self._state[PRIMARY]
        s = self.status
        if s in (Status.HEALTHY, Status.WARNING, Status.RECOVERING):
            if primary.failures >= self.failure_threshold:
                target = self._fallback_status()
                self._primary_reason = f"primary DA failed {primary.failures} times in a row: {primary.last_error}"
                self._go(target, self._primary_reason, now_ms)
            elif primary.failures > 0 and s is Status.HEALTHY:
                self._go(Status.WARNING, None, now_ms)
            elif primary.failures == 0 and s is Status.WARNING:
                self._go(Status.HEALTHY, None, now_ms)
        elif s in (Status.DEGRADED, Status.EMERGENCY):
            if primary.successes >= self.recovery_needed:
                # reads alone may bring the primary back; Recovering starts with a clean count and its writes
                # (reconciliation, then every write) decide whether it stays
                primary.healthy, primary.write_failures, primary.read_failures = True, 0, 0
                self._go(Status.RECOVERING, None, now_ms)
            else:
                target = self._fallback_status()
                if target is not s:
                    # (back to Degraded: the primary's failure again, not the secondary's that led to Emergency)
                    reason = (f"secondary DA unavailable: {self._state[SECONDARY].last_error}"
                              if target is Status.EMERGENCY and SECONDARY in self._state else self._primary_reason)
                    self._go(target, reason, now_ms)

    @property
    def recovery_needed(self) -> int:
        """The primary's successes in a row that end a fallback now (see the module docstring on relapses)."""
        return self.recovery_threshold * 2 ** min(self.relapses, MAX_RELAPSE_DOUBLINGS)

    def _go(self, status: Status, reason: str | None, now_ms: int) -> None:
        if status is self.status:
            return
        if self.status is Status.RECOVERING:
            self.relapses = 0 if status is Status.HEALTHY else self.relapses + 1
        if status in (Status.DEGRADED, Status.EMERGENCY):
            if self.status not in (Status.DEGRADED, Status.EMERGENCY):
                self.last_fallback_at = now_ms
            self.fallback_reason = reason
        elif status is Status.HEALTHY or status is Status.WARNING:
            self.fallback_reason = None
        self.status = status
        self.transitions += 1

    # ---- output ----------------------------------------------------------------------------------

    def write_order(self) -> tuple[str, ...]:
        if self.status is Status.DEGRADED:
            preferred = (SECONDARY, EMERGENCY, PRIMARY)
        elif self.status is Status.EMERGENCY:
            preferred = (EMERGENCY, SECONDARY, PRIMARY)
        else:
            preferred = (PRIMARY, SECONDARY, EMERGENCY)
        configured = [name for name in preferred if name in self._state]
        # layers believed healthy first (in preference order), the others after them as a last resort
        return tuple([n for n in configured if self._state[n].healthy] +
                     [n for n in configured if not self._state[n].healthy])

    def snapshot(self) -> StatusSnapshot:
        order = self.write_order()
        return StatusSnapshot(
            status=self.status,
            routing=order[0],
            write_order=order,
            healthy={name: st.healthy for name, st in self._state.items()},
            fallback_active=self.status in (Status.DEGRADED, Status.EMERGENCY, Status.RECOVERING),
            fallback_reason=self.fallback_reason,
            last_fallback_at=self.last_fallback_at,
            primary_failures=self._state[PRIMARY].failures,
            transitions=self.transitions,
        )

    def is_healthy(self, layer: str) -> bool:
        st = self._state.get(layer)
        return st.healthy if st else False

    def last_error(self, layer: str) -> str | None:
        st = self._state.get(layer)
        return st.last_error if st else None
