"""Threshold signing and receipt consensus (FROST, DKG, receipt engine).

Empty until the threshold-signing issue lands.
"""
