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
    table.put("n", stats(cpu=0.2, at=50))
    table.put("n", stats(cpu=0.9, at=40))  # older report arrives late
    assert table.get("n", 60).cpu_free == 0.2
    assert table.get("n", 200) is None
    assert table.prune(200) == 1 and list(table.items()) == []
