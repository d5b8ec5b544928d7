"""Benchmarks, each runnable as ``python -m bench.<name>``: placement, replay, http, frost, peer.

Every benchmark measures a baseline in the same run and reports a ratio to it (machines are noisy),
then says whether its goal is met. None of them asserts an absolute threshold.
"""
