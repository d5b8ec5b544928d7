"""Scheduler: the seed's score, filters, io_tolerance, stats TTL, ties by node id."""

from __future__ import annotations

from node.scheduler import DEFAULT_WEIGHTS, WEIGHT_NAMES, NodeStats, Workload, choose, score
from node.stats import StatsTable

W = tuple(DEFAULT_WEIGHTS[n] for n in WEIGHT_NAMES)


def stats(cpu=0.5, ram=1000.0, gpu=0.0, lat=10.0, io=0.1, at=1000) -> NodeStats:
    return NodeStats(cpu, ram, gpu, lat, io, at)


def test_score_formula() -> None:
    s = stats(cpu=0.75, ram=8192, gpu=0.5, lat=5, io=0.1)
    w = (1.0, 1.5, 0.5, 1.0, 0.8)
    assert score(w, s) == 1.0 * 0.75 + 1.5 * 8192 + 0.5 * 0.5 + 1.0 / 5 - 0.8 * 0.1


def test_best_score_wins_and_ties_go_to_the_smaller_id() -> None:
    nodes = [("b", stats(cpu=0.9)), ("a", stats(cpu=0.5)), ("c", stats(cpu=0.9))]
    assert choose(nodes, Workload(), W, 1000, 10_000) == "b"
    assert choose(list(reversed(nodes)), Workload(), W, 1000, 10_000) == "b"


def test_requirements_filter_nodes() -> None:
    nodes = [("cpu", stats(cpu=0.9, ram=100)), ("ram", stats(cpu=0.1, ram=90_000)),
             ("gpu", stats(cpu=0.1, gpu=1.0, ram=100)), ("slow", stats(cpu=1.0, ram=100_000, lat=500))]
    assert choose(nodes, Workload(ram_req_mb=50_000, max_latency_ms=100), W, 1000, 10_000) == "ram"
    assert choose(nodes, Workload(gpu_req=0.5), W, 1000, 10_000) == "gpu"
    assert choose(nodes, Workload(cpu_req=0.5, max_latency_ms=20), W, 1000, 10_000) == "cpu"
    assert choose(nodes, Workload(cpu_req=2.0), W, 1000, 10_000) is None


def test_io_tolerance_excludes_busy_nodes() -> None:
    nodes = [("busy", stats(ram=10_000, io=0.9)), ("calm", stats(ram=1_000, io=0.1))]
    assert choose(nodes, Workload(), W, 1000, 10_000) == "busy"
    assert choose(nodes, Workload(io_tolerance=0.5), W, 1000, 10_000) == "calm"


def test_stale_stats_are_not_eligible() -> None:
    nodes = [("old", stats(cpu=1.0, at=0)), ("new", stats(cpu=0.1, at=9_000))]
    assert choose(nodes, Workload(), W, 10_000, 5_000) == "new"
    assert choose(nodes, Workload(), W, 20_000, 5_000) is None


def test_stats_table_keeps_the_newest_report_and_prunes_by_ttl() -> None:
    table = StatsTable(ttl_ms=100)
    table.put("n", stats(cpu=0.2, at=50), 50)
    assert not table.put("n", stats(cpu=0.9, at=40), 55)  # older report arrives late
    assert table.get("n", 60).cpu_free == 0.2
    assert table.get("n", 200) is None
    assert table.prune(200) == 1 and table.current(200) == []


def test_zero_or_invalid_stats_are_never_eligible_and_never_crash() -> None:
    import math

    good = ("good", stats(cpu=0.1))
    for bad in (stats(lat=0.0), stats(lat=-1.0), stats(cpu=math.nan), stats(ram=math.inf), stats(io=2.0),
                stats(gpu=-math.inf), stats(lat=math.nan)):
        assert choose([("bad", bad), good], Workload(), W, 1000, 10_000) == "good"
        assert choose([("bad", bad)], Workload(), W, 1000, 10_000) is None
    assert score(W, stats(lat=0.0)) == score((*W[:3], 0.0, W[4]), stats(lat=0.0))  # no division by zero
    # a tiny latency gives an infinite latency term: still a valid, comparable score
    assert choose([("fast", stats(lat=5e-324)), good], Workload(), W, 1000, 10_000) == "fast"
    # NaN weights (never accepted by the API) make no node win rather than an arbitrary one
    assert choose([good], Workload(), (math.nan, *W[1:]), 1000, 10_000) is None


def test_stats_stamped_in_the_future_are_eligible_only_within_the_clock_skew() -> None:
    from node.scheduler import MAX_FUTURE_MS

    nodes = [("skewed", stats(cpu=0.9, at=1000 + MAX_FUTURE_MS)), ("pinned", stats(cpu=1.0, at=2**62))]
    assert choose(nodes, Workload(), W, 1000, 10_000) == "skewed"
    assert choose(nodes[1:], Workload(), W, 1000, 10_000) is None


def test_the_stats_rules_are_the_http_rules() -> None:
    import pytest

    from node.scheduler import STAT_DEFAULTS, InvalidValue, check_stats

    assert check_stats({"cpu_free": 1, "ram_free_mb": 2}, STAT_DEFAULTS) == {
        "cpu_free": 1.0, "ram_free_mb": 2.0, "gpu_free": 0.0, "latency_ms": 10.0, "io_pressure": 0.0}
    with pytest.raises(InvalidValue, match="latency_ms: expected a number > 0"):
        check_stats({"cpu_free": 1, "ram_free_mb": 2, "latency_ms": 0}, STAT_DEFAULTS)
    with pytest.raises(InvalidValue, match=r"gpu_free: expected a finite number \(required\)"):
        check_stats({"cpu_free": 1, "ram_free_mb": 2})  # without defaults (peers), every field is required
    with pytest.raises(InvalidValue, match="cpu_free"):
        check_stats({"cpu_free": True, "ram_free_mb": 2}, STAT_DEFAULTS)


def test_two_reports_stamped_alike_are_kept_alike_whatever_order_they_come_in() -> None:
    """Two coordinators, each with a report of one node from the same millisecond, swapped them when they gossiped
    (the later arrival won a tie on time), so each scheduled with the other's values (a reviewer's reproduction)."""
    mine, theirs = stats(cpu=0.9, at=5000), stats(cpu=0.1, at=5000)
    a, b = StatsTable(30_000), StatsTable(30_000)
    a.put("n", mine, 5000)
    a.put("n", theirs, 5000)
    b.put("n", theirs, 5000)
    b.put("n", mine, 5000)
    assert a.get("n", 5001) == b.get("n", 5001) == mine
    a.put("n", stats(cpu=0.0, at=5001), 5001)  # a later report still wins, whatever its values
    assert a.get("n", 5002).cpu_free == 0.0  # type: ignore[union-attr]


def test_a_latency_near_zero_scores_finitely_and_the_other_stats_still_count() -> None:
    """latency_ms only has to be > 0: 1e-320 made the latency term inf, every such node tied, and the smaller id won
    whatever its other stats (a reviewer's reproduction)."""
    rich = stats(cpu=1e6, ram=1e12, gpu=1e6, lat=1e-320, io=0.0)
    poor = stats(cpu=0.0, ram=0.0, gpu=0.0, lat=1e-308, io=1.0)
    assert score(W, rich) < float("inf") and score(W, rich) > score(W, poor)
    assert choose([("z-rich", rich), ("a-poor", poor)], Workload(), W, 1000, 30_000) == "z-rich"


def test_an_entry_held_from_a_clock_that_ran_fast_is_absent_once_it_stepped_back() -> None:
    """Held while this clock ran an hour fast, a report stamped then beat every later one of the node (they are
    stamped by the clock), made the node unschedulable for the hour and never expired (a reviewer's reproduction)."""
    from node.scheduler import MAX_FUTURE_MS

    table = StatsTable(ttl_ms=30_000)
    hour = 3_600_000
    assert table.put("n", stats(cpu=0.1, at=1_000 + hour), 1_000 + hour)  # the clock ran an hour fast
    assert table.get("n", 2_000) is None and table.latest_ms("n", 2_000) == -1  # stepped back: from the future
    assert table.put("n", stats(cpu=0.9, at=2_000), 2_000)  # the node's next report is kept
    assert table.get("n", 2_001).cpu_free == 0.9  # type: ignore[union-attr]
    table.put("m", stats(cpu=0.5, at=3_000 + MAX_FUTURE_MS + 1), 3_000 + MAX_FUTURE_MS + 1)
    assert table.prune(3_000) == 1 and table.get("m", 3_000) is None
    table.put("k", stats(cpu=0.5, at=3_000 + MAX_FUTURE_MS), 3_000)  # within the allowance: held, and counted
    assert table.get("k", 3_000) is not None and table.latest_ms("k", 3_000) == 3_000 + MAX_FUTURE_MS


def test_a_report_stamped_ahead_ages_from_its_arrival() -> None:
    """A report stamped 50 s ahead (a peer's fast clock, within the allowance, or a lying member) kept a node that
    stopped reporting schedulable for the TTL plus the skew: 52 s past a 2 s TTL (a reviewer's reproduction)."""
    table = StatsTable(ttl_ms=2_000)
    assert table.put("n", stats(at=1_000 + 50_000), 1_000)
    assert table.get("n", 2_900) is not None and [nid for nid, _ in table.current(2_900)] == ["n"]
    assert table.get("n", 3_001) is None and table.current(3_001) == []  # the TTL after it came, not the stamp
    assert choose(table.current(3_001), Workload(), W, 3_001, 2_000) is None
    assert table.prune(3_001) == 0 and table.prune(51_000 + 2_000) == 0  # (kept until its stamp is stale too)
    assert table.prune(51_000 + 2_001) == 1


def test_a_report_stamped_ahead_and_pruned_does_not_come_back_when_a_peer_sends_it_again() -> None:
    """Pruned once stale by its arrival, the same report re-sent by a peer (a catch-up at every link coming up)
    was taken as new, for another TTL, again and again until stamp + TTL (a reviewer's reproduction: schedulable
    until 53 s for a report that came at 1 s with a 2 s TTL)."""
    table = StatsTable(ttl_ms=2_000)
    report = stats(at=1_000 + 50_000)
    assert table.put("n", report, 1_000)
    last_current = 0
    for now in range(1_000, 60_000, 500):
        table.prune(now)
        if now % 1_500 == 0:
            table.put("n", report, now)
        if table.get("n", now) is not None:
            last_current = now
    assert last_current <= 3_000, last_current


def test_the_same_report_sent_again_does_not_refresh_it_but_a_newer_one_does() -> None:
    table = StatsTable(ttl_ms=2_000)
    report = stats(at=1_000 + 50_000)
    table.put("n", report, 1_000)
    assert table.put("n", report, 2_500)  # a peer's catch-up: the same report, later
    assert table.get("n", 3_001) is None
    table.put("n", report, 1_000)
    assert table.put("n", stats(cpu=0.9, at=1_000 + 50_001), 2_500)  # the node reported again
    assert table.get("n", 4_400).cpu_free == 0.9  # type: ignore[union-attr]
    assert table.get("n", 4_501) is None


def test_minus_zero_is_zero() -> None:
    from node.scheduler import check_number

    assert str(check_number(-0.0, "cpu_free", 0.0, 1.0)) == "0.0"
