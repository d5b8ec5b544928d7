"""The DA status machine, as a pure unit: every transition and what each state routes to."""

from __future__ import annotations

from node.da.status import (
    EMERGENCY,
    FALLBACK_READ_FAILURES,
    FALLBACK_WRITE_RETRY_MS,
    PRIMARY,
    SECONDARY,
    WRITE_FAILURES_FORGOTTEN_MS,
    DAStatusMachine,
    Status,
)

ALL = (PRIMARY, SECONDARY, EMERGENCY)


def fail(m: DAStatusMachine, layer: str, times: int = 1, t: int = 1000, write: bool = False) -> Status:
    for _ in range(times):
        m.observe(layer, False, t, f"{layer} broke", write=write)
    return m.status


def ok(m: DAStatusMachine, layer: str, times: int = 1, t: int = 2000, write: bool = False) -> Status:
    for _ in range(times):
        m.observe(layer, True, t, write=write)
    return m.status


def test_healthy_to_warning_and_back() -> None:
    m = DAStatusMachine(ALL)
    assert m.snapshot().routing == PRIMARY and not m.snapshot().fallback_active
    assert fail(m, PRIMARY) is Status.WARNING
    snap = m.snapshot()
    assert snap.routing == PRIMARY and snap.primary_failures == 1 and not snap.fallback_active
    assert ok(m, PRIMARY) is Status.HEALTHY


def test_warning_to_degraded_at_the_failure_threshold() -> None:
    m = DAStatusMachine(ALL, failure_threshold=3)
    assert fail(m, PRIMARY, 2) is Status.WARNING
    assert fail(m, PRIMARY, 1, t=1234) is Status.DEGRADED
    snap = m.snapshot()
    assert snap.routing == SECONDARY and snap.write_order == (SECONDARY, EMERGENCY, PRIMARY)
    assert snap.fallback_active and snap.last_fallback_at == 1234
    assert snap.fallback_reason is not None and "primary broke" in snap.fallback_reason


def test_degraded_to_emergency_when_the_secondary_fails_and_back() -> None:
    m = DAStatusMachine(ALL, failure_threshold=1)
    fail(m, PRIMARY)
    assert fail(m, SECONDARY, FALLBACK_READ_FAILURES) is Status.EMERGENCY
    assert m.snapshot().routing == EMERGENCY and m.snapshot().write_order[0] == EMERGENCY
    assert "secondary" in (m.snapshot().fallback_reason or "")
    assert ok(m, SECONDARY) is Status.DEGRADED


def test_straight_to_emergency_without_a_secondary() -> None:
    m = DAStatusMachine((PRIMARY, EMERGENCY), failure_threshold=2)
    assert fail(m, PRIMARY, 2) is Status.EMERGENCY
    assert m.snapshot().routing == EMERGENCY


def test_recovery_needs_recovery_threshold_successes_then_reconciliation() -> None:
    m = DAStatusMachine(ALL, failure_threshold=1, recovery_threshold=2)
    fail(m, PRIMARY)
    assert ok(m, PRIMARY, 1) is Status.DEGRADED  # one success is not enough
    assert ok(m, PRIMARY, 1) is Status.RECOVERING
    snap = m.snapshot()
    assert snap.routing == PRIMARY and snap.fallback_active
    assert m.reconciled(pending=3, now_ms=3000) is Status.RECOVERING  # still blobs to move
    assert m.reconciled(pending=0, now_ms=3000) is Status.HEALTHY
    assert m.snapshot().fallback_reason is None and not m.snapshot().fallback_active
    assert m.snapshot().last_fallback_at == 1000  # kept as history


def test_recovery_from_emergency_and_relapse_during_recovering() -> None:
    m = DAStatusMachine(ALL, failure_threshold=2, recovery_threshold=2)
    fail(m, PRIMARY, 2)
    fail(m, SECONDARY, FALLBACK_READ_FAILURES)
    assert m.status is Status.EMERGENCY
    assert ok(m, PRIMARY, 2) is Status.RECOVERING
    assert fail(m, PRIMARY, 1) is Status.RECOVERING  # one failure is tolerated
    assert fail(m, PRIMARY, 1) is Status.EMERGENCY  # secondary is still down


def test_success_interrupts_a_failure_streak() -> None:
    m = DAStatusMachine(ALL, failure_threshold=3)
    fail(m, PRIMARY, 2)
    ok(m, PRIMARY)
    assert fail(m, PRIMARY, 2) is Status.WARNING


def test_nothing_takes_writes_when_every_layer_is_down() -> None:
    m = DAStatusMachine(ALL, failure_threshold=1)
    fail(m, PRIMARY)
    fail(m, SECONDARY, FALLBACK_READ_FAILURES)
    assert m.snapshot().takes_writes
    fail(m, EMERGENCY, FALLBACK_READ_FAILURES)
    snap = m.snapshot()
    assert not snap.takes_writes and set(snap.write_order) == set(ALL)


def test_primary_only_cluster() -> None:
    m = DAStatusMachine((PRIMARY,), failure_threshold=2, recovery_threshold=1)
    assert fail(m, PRIMARY, 2) is Status.DEGRADED
    assert not m.snapshot().takes_writes and m.snapshot().routing == PRIMARY
    assert ok(m, PRIMARY) is Status.RECOVERING
    assert m.reconciled(0, 5) is Status.HEALTHY


def test_one_failed_check_of_a_fallback_in_use_changes_nothing_and_a_failed_write_does_at_once() -> None:
    """From a review: one slow health check of a secondary taking writes (a QuorumDA write outlasting the check's
    deadline) took the status to Emergency, abandoning the write in flight there, and back at the next check."""
    m = DAStatusMachine(ALL, failure_threshold=1)
    assert fail(m, EMERGENCY) is Status.HEALTHY and not m.is_healthy(EMERGENCY)  # (on standby: one failed check)
    ok(m, EMERGENCY)
    fail(m, PRIMARY)
    changes = []
    m.on_change = lambda: changes.append(m.status)
    assert fail(m, SECONDARY) is Status.DEGRADED and m.is_healthy(SECONDARY) and changes == []
    assert ok(m, SECONDARY) is Status.DEGRADED and fail(m, SECONDARY) is Status.DEGRADED  # (a success in between)
    for _ in range(5):  # slow checks beside good writes: never two in a row
        assert ok(m, SECONDARY, write=True) is Status.DEGRADED and fail(m, SECONDARY) is Status.DEGRADED
    assert fail(m, SECONDARY) is Status.EMERGENCY and not m.is_healthy(SECONDARY)  # (two in a row)
    assert ok(m, SECONDARY, write=True) is Status.DEGRADED
    assert fail(m, SECONDARY, write=True) is Status.EMERGENCY  # a failed write: at once


def test_back_from_emergency_to_degraded_the_reason_is_the_primary_s_again() -> None:
    """From a review: back in Degraded, /fallback/status still gave the secondary's failure as the reason."""
    m = DAStatusMachine(ALL, failure_threshold=1)
    fail(m, PRIMARY)
    fail(m, SECONDARY, write=True)
    assert "secondary" in (m.snapshot().fallback_reason or "")
    assert ok(m, SECONDARY, write=True) is Status.DEGRADED
    assert "primary broke" in (m.snapshot().fallback_reason or ""), m.snapshot().fallback_reason


def test_reconciliation_done_with_primary_failures_counted_meanwhile_ends_in_warning() -> None:
    """From a review: Recovering -> Healthy with a failure counted; the next observation of any layer went Warning."""
    m = DAStatusMachine(ALL, failure_threshold=3)
    fail(m, PRIMARY, 3)
    assert ok(m, PRIMARY, 2) is Status.RECOVERING
    fail(m, PRIMARY)
    assert m.reconciled(0, 5) is Status.WARNING and m.relapses == 0
    assert ok(m, PRIMARY) is Status.HEALTHY


def test_unconfigured_layers_are_ignored_and_transitions_counted() -> None:
    m = DAStatusMachine((PRIMARY,))
    assert fail(m, SECONDARY, 5) is Status.HEALTHY
    before = m.transitions
    fail(m, PRIMARY)
    ok(m, PRIMARY)
    assert m.transitions == before + 2


def test_reads_do_not_reset_write_failures() -> None:
    """A primary that serves reads and health checks but rejects every write reaches the threshold."""
    m = DAStatusMachine(ALL, failure_threshold=3)
    for _ in range(2):
        assert fail(m, PRIMARY, write=True) is Status.WARNING
        assert ok(m, PRIMARY, 10) is Status.WARNING  # consumer polls and health checks keep succeeding
        assert m.snapshot().healthy[PRIMARY]
    assert fail(m, PRIMARY, write=True) is Status.DEGRADED
    assert "primary broke" in (m.snapshot().fallback_reason or "") and not m.snapshot().healthy[PRIMARY]


def test_only_a_write_success_resets_write_failures_and_reads_count_too() -> None:
    m = DAStatusMachine(ALL, failure_threshold=3)
    fail(m, PRIMARY, 2, write=True)
    assert ok(m, PRIMARY, write=True) is Status.HEALTHY and m.snapshot().primary_failures == 0
    fail(m, PRIMARY, 1, write=True)
    assert fail(m, PRIMARY, 1) is Status.WARNING and m.snapshot().primary_failures == 2  # unreachable: both fail
    assert ok(m, PRIMARY) is Status.WARNING and m.snapshot().primary_failures == 1  # the read failure is cleared
    assert fail(m, PRIMARY, 2) is Status.DEGRADED  # 1 write + 2 read failures in a row
    m = DAStatusMachine(ALL, failure_threshold=3)
    fail(m, PRIMARY, 2)
    assert ok(m, PRIMARY) is Status.HEALTHY  # read failures alone are cleared by a read success


def test_recovery_by_health_checks_then_failed_writes_go_back_to_the_fallback() -> None:
    m = DAStatusMachine(ALL, failure_threshold=2, recovery_threshold=2)
    assert fail(m, PRIMARY, 2, write=True) is Status.DEGRADED
    assert ok(m, PRIMARY) is Status.DEGRADED and not m.snapshot().healthy[PRIMARY]
    assert ok(m, PRIMARY) is Status.RECOVERING  # health checks may bring it back ...
    snap = m.snapshot()
    assert snap.healthy[PRIMARY] and snap.primary_failures == 0 and snap.routing == PRIMARY
    assert fail(m, PRIMARY, write=True) is Status.RECOVERING
    assert ok(m, PRIMARY, 5) is Status.RECOVERING  # ... but reads do not excuse failed writes
    assert fail(m, PRIMARY, write=True) is Status.DEGRADED  # reconciliation's writes failed: back to the fallback
    assert ok(m, PRIMARY, 3) is Status.DEGRADED and m.recovery_needed == 4  # a relapse: twice the successes
    assert ok(m, PRIMARY) is Status.RECOVERING
    assert ok(m, PRIMARY, write=True) is Status.RECOVERING
    assert m.reconciled(0, 3000) is Status.HEALTHY and m.recovery_needed == 2


def test_each_relapse_doubles_the_successes_it_takes_to_leave_the_fallback() -> None:
    """A primary that answers reads but refuses every write: reads brought it back to Recovering and its writes
    sent it back to the fallback every few health checks, for ever (a reviewer's run: 66 transitions in ten
    minutes). Each relapse doubles the successes needed, up to 64 times; a recovery that holds resets it."""
    m = DAStatusMachine(ALL, failure_threshold=2, recovery_threshold=2)
    fail(m, PRIMARY, 2, write=True)
    checks = []
    for _ in range(9):
        needed = 0
        while m.status is not Status.RECOVERING:
            ok(m, PRIMARY)
            needed += 1
        checks.append(needed)
        fail(m, PRIMARY, 2, write=True)
    assert checks == [2, 4, 8, 16, 32, 64, 128, 128, 128]
    ok(m, PRIMARY, 128)
    assert ok(m, PRIMARY, write=True) is Status.RECOVERING and m.reconciled(0, 3000) is Status.HEALTHY
    fail(m, PRIMARY, 2, write=True)
    assert m.status is Status.DEGRADED and ok(m, PRIMARY, 2) is Status.RECOVERING  # back to 2


def test_a_write_failure_is_forgotten_once_the_primary_answered_long_after_it() -> None:
    """One failed write and no write since: the status stayed at Warning for ever, and isolated failures hours
    apart added up to a failover (a reviewer's findings). Failures that keep coming still reach the threshold."""
    m = DAStatusMachine(ALL, failure_threshold=3)
    assert fail(m, PRIMARY, write=True, t=1_000) is Status.WARNING
    assert ok(m, PRIMARY, 50, t=1_000 + WRITE_FAILURES_FORGOTTEN_MS - 1) is Status.WARNING
    assert ok(m, PRIMARY, t=1_000 + WRITE_FAILURES_FORGOTTEN_MS) is Status.HEALTHY
    hours = 3_600_000
    for k in range(1, 4):  # one failed write every hour, health checks in between
        fail(m, PRIMARY, write=True, t=k * hours)
        ok(m, PRIMARY, t=k * hours + WRITE_FAILURES_FORGOTTEN_MS)
    assert m.status is Status.HEALTHY and m.transitions == 8
    for k in range(3):  # refused writes a minute apart, reads fine
        fail(m, PRIMARY, write=True, t=5 * hours + k * 60_000)
        ok(m, PRIMARY, t=5 * hours + k * 60_000 + 1)
    assert m.status is Status.DEGRADED


def test_a_fallback_layer_recovers_with_any_success_unless_it_failed_a_write_lately() -> None:
    m = DAStatusMachine(ALL, failure_threshold=1)
    fail(m, PRIMARY)
    assert fail(m, SECONDARY, FALLBACK_READ_FAILURES, t=1_000) is Status.EMERGENCY  # (the next good check ends it)
    assert ok(m, SECONDARY, t=1_001) is Status.DEGRADED
    assert fail(m, SECONDARY, write=True, t=2_000) is Status.EMERGENCY
    assert ok(m, SECONDARY, write=True, t=2_001) is Status.DEGRADED  # a good write ends it at once


def test_a_fallback_that_answers_health_checks_but_refuses_writes_does_not_flap() -> None:
    """Health checks passed and every write failed: the status flipped Emergency ⇄ Degraded on each, and each write
    tried the refusing layer first (a reviewer's reproduction: 40 transitions in 20 rounds). A health check brings it
    back only FALLBACK_WRITE_RETRY_MS after its failed write, twice as long after each more."""
    m = DAStatusMachine(ALL, failure_threshold=1)
    fail(m, PRIMARY)
    t = 10_000
    assert fail(m, SECONDARY, write=True, t=t) is Status.EMERGENCY
    transitions = m.transitions
    for k in range(20):  # health checks a second apart
        assert ok(m, SECONDARY, t=t + 1_000 * (k + 1)) is Status.EMERGENCY
    assert m.transitions == transitions and m.write_order()[0] == EMERGENCY
    assert ok(m, SECONDARY, t=t + FALLBACK_WRITE_RETRY_MS) is Status.DEGRADED  # worth another try
    assert fail(m, SECONDARY, t=t + FALLBACK_WRITE_RETRY_MS + 1) is Status.EMERGENCY  # (its write failed: one check)
    assert ok(m, SECONDARY, t=t + FALLBACK_WRITE_RETRY_MS + 1) is Status.DEGRADED
    t += FALLBACK_WRITE_RETRY_MS + 1
    assert fail(m, SECONDARY, write=True, t=t) is Status.EMERGENCY  # refused again: twice as long now
    assert ok(m, SECONDARY, t=t + FALLBACK_WRITE_RETRY_MS) is Status.EMERGENCY
    assert ok(m, SECONDARY, t=t + 2 * FALLBACK_WRITE_RETRY_MS) is Status.DEGRADED
    assert ok(m, SECONDARY, write=True, t=t + 2 * FALLBACK_WRITE_RETRY_MS + 1) is Status.DEGRADED
    assert fail(m, SECONDARY, write=True, t=t + 3 * FALLBACK_WRITE_RETRY_MS) is Status.EMERGENCY  # (reset by the write)
    assert ok(m, SECONDARY, t=t + 4 * FALLBACK_WRITE_RETRY_MS) is Status.DEGRADED


# ---- outcomes that arrive out of order (issue 8 §4.2) ----------------------------------------------------------


def test_late_successes_at_the_start_of_an_outage_do_not_flap_the_status() -> None:
    """A write and a read that started before the outage answer after its first failures: one failure sequence
    is one transition sequence, Healthy → Warning → Degraded, never back to Healthy in between."""
    m = DAStatusMachine(ALL, failure_threshold=3)
    seen = [m.status]
    m.on_change = lambda: seen.append(m.status)
    write_started, read_started = m.mark(), m.mark()  # in flight when the outage begins
    fail(m, PRIMARY)  # a health check fails
    m.observe(PRIMARY, True, 1001, write=True, since=write_started)  # the in-flight Submit is included anyway
    m.observe(PRIMARY, True, 1002, since=read_started)  # the consumer's read answers late
    assert m.status is Status.WARNING and m.snapshot().primary_failures == 1 and m.stale == 2
    probe = m.mark()
    fail(m, PRIMARY)
    m.observe(PRIMARY, True, 1003, since=probe)  # started before that failure: stale too
    fail(m, PRIMARY)
    assert seen == [Status.HEALTHY, Status.WARNING, Status.DEGRADED]
    assert m.transitions == 2


def test_a_success_that_started_after_the_failures_still_counts() -> None:
    m = DAStatusMachine(ALL, failure_threshold=3)
    fail(m, PRIMARY, 2)
    fresh = m.mark()
    assert m.observe(PRIMARY, True, 2000, since=fresh) is Status.HEALTHY
    assert m.stale == 0 and m.primary_ok_since == 2000
    assert m.observe(PRIMARY, True, 2500) is Status.HEALTHY and m.primary_ok_since == 2000  # the run goes on
    fail(m, PRIMARY)
    assert m.primary_ok_since is None


def test_a_failed_read_that_started_before_a_success_is_stale_a_failed_write_is_not() -> None:
    """The end of an outage: a read that started while the layer was slow times out after fresh successes."""
    m = DAStatusMachine(ALL, failure_threshold=2, recovery_threshold=2)
    fail(m, PRIMARY, 2)
    assert m.status is Status.DEGRADED
    slow_read, slow_write = m.mark(), m.mark()
    ok(m, PRIMARY, 2)
    assert m.status is Status.RECOVERING
    m.reconciled(0, 3000)
    assert m.status is Status.HEALTHY
    assert m.observe(PRIMARY, False, 3001, "read timed out", since=slow_read) is Status.HEALTHY
    assert m.stale == 1 and m.snapshot().primary_failures == 0
    # a write failure always counts: a primary that answers reads but not writes must still be noticed
    assert m.observe(PRIMARY, False, 3002, "write failed", write=True, since=slow_write) is Status.WARNING


def test_recovery_needs_fresh_successes() -> None:
    m = DAStatusMachine(ALL, failure_threshold=1, recovery_threshold=2)
    before = m.mark()
    fail(m, PRIMARY)
    assert m.status is Status.DEGRADED
    for _ in range(5):  # answers to requests sent before the failure do not bring the primary back
        m.observe(PRIMARY, True, 1500, since=before)
    assert m.status is Status.DEGRADED and m.stale == 5
    ok(m, PRIMARY, 2)
    assert m.status is Status.RECOVERING


def test_a_primary_failing_its_health_checks_but_taking_writes_fails_over_instead_of_flapping() -> None:
    """Each successful write reset the read failures: a primary whose health checks time out but which takes every
    write went Healthy -> Warning at each check and back at each write, for ever (a reviewer's run: 240 transitions
    in ten minutes, each one abandoning writes and probing every fallback). Only reads reset read failures now."""
    m = DAStatusMachine((PRIMARY, SECONDARY), failure_threshold=3)
    for t in range(10):
        m.observe(PRIMARY, False, t * 5000, "health check: no answer")
        for dt in (2000, 4000):  # the writes meanwhile, to the layer the machine routes them to
            m.observe(m.write_order()[0], True, t * 5000 + dt, write=True)
    assert m.status is Status.DEGRADED and m.transitions == 2  # Healthy -> Warning -> Degraded, then settled
    back = DAStatusMachine((PRIMARY, SECONDARY), failure_threshold=3)
    back.observe(PRIMARY, False, 0, "health check: no answer")
    back.observe(PRIMARY, True, 1000, write=True)
    assert back.status is Status.WARNING  # a write says nothing of reads
    back.observe(PRIMARY, True, 2000)
    assert back.status is Status.HEALTHY  # a read does


def test_a_timed_out_health_check_counts_though_writes_succeeded_meanwhile() -> None:
    """A failed read is ignored as stale only after a later successful read: with writes every 200 ms, every health
    check that timed out had a write succeed meanwhile and was ignored, so a primary failing every check but taking
    writes stayed Healthy, its failures uncounted (a regression review's run: 20 of 20 ignored)."""
    m = DAStatusMachine((PRIMARY, SECONDARY), failure_threshold=3)
    for t in range(5):
        since = m.mark()  # the health check starts; it times out 1.5 s later
        for dt in (200, 400, 600):
            m.observe(m.write_order()[0], True, t * 5000 + dt, write=True)
        m.observe(PRIMARY, False, t * 5000 + 1500, "health check: no answer", since=since)
    assert m.status is Status.DEGRADED and m.stale == 0
    late = DAStatusMachine((PRIMARY, SECONDARY), failure_threshold=3)
    since = late.mark()
    late.observe(PRIMARY, True, 100)  # a read answered after the check started: the check's failure is stale
    late.observe(PRIMARY, False, 1500, "health check: no answer", since=since)
    assert late.status is Status.HEALTHY and late.stale == 1


def test_a_slow_check_of_a_fallback_taking_writes_is_stale() -> None:
    """A fallback is unhealthy at its first failure: a health check of the secondary that timed out after writes to
    it succeeded took a Degraded cluster to Emergency and abandoned the writes in flight (a regression review's
    run). For a fallback any later success makes a failed read stale; for the primary only a later read."""
    m = DAStatusMachine((PRIMARY, SECONDARY, EMERGENCY), failure_threshold=3)
    for _ in range(3):
        m.observe(PRIMARY, False, 0, "down", write=True)
    assert m.status is Status.DEGRADED
    since = m.mark()
    m.observe(SECONDARY, True, 100, write=True)
    m.observe(SECONDARY, False, 1500, "health check: no answer", since=since)
    assert m.status is Status.DEGRADED and m.is_healthy(SECONDARY) and m.stale == 1


def test_the_fallback_start_time_is_kept_from_degraded_to_emergency() -> None:
    """From a review: ``last_fallback_at`` is when the fallback began; moving on from Degraded to Emergency (the
    secondary failing too) restamped it, so the views said the outage had just started."""
    m = DAStatusMachine(ALL, failure_threshold=1)
    assert fail(m, PRIMARY, t=1000) is Status.DEGRADED and m.last_fallback_at == 1000
    assert fail(m, SECONDARY, FALLBACK_READ_FAILURES, t=5000) is Status.EMERGENCY
    assert m.last_fallback_at == 1000 and m.snapshot().last_fallback_at == 1000


def test_successful_writes_do_not_restart_the_primary_s_run_of_successes() -> None:
    """From a review: a successful write restarted ``primary_ok_since`` (the run was taken as beginning at each
    write), so with writes coming the primary never seemed to have worked long enough (e.g. to adopt fallback
    blobs)."""
    m = DAStatusMachine(ALL, failure_threshold=3)
    fail(m, PRIMARY)
    assert m.observe(PRIMARY, True, 2000) is Status.HEALTHY and m.primary_ok_since == 2000
    for t in (2500, 3000, 3500):
        m.observe(PRIMARY, True, t, write=True)
        m.observe(PRIMARY, True, t + 100)
        assert m.primary_ok_since == 2000  # the run goes on
    fail(m, PRIMARY, t=4000)
    assert m.primary_ok_since is None
    m.observe(PRIMARY, True, 4500, write=True)  # a write may begin a run too
    m.observe(PRIMARY, True, 4600, write=True)
    assert m.primary_ok_since == 4500
