"""Benchmarks, each runnable as ``python -m bench.<name>``: placement, replay, http, frost, peer, receipts, reconcile.

Every benchmark measures a baseline in the same run and reports its numbers next to it (machines are noisy), then
says whether each goal is met; a benchmark never fails a build. Most goals are ratios to the baseline; the receipt
goals of issue 9 are absolute (p50 ≤ 15 ms, p99 ≤ 50 ms, ≥ 1,000 receipts/s), printed beside the FROST floor, the
peer RTT and the HTTP floor measured in the same run.
"""
