"""The cluster's signing-threshold arithmetic (pure): how many faulty members n coordinators tolerate, the smallest
threshold that keeps two signing quorums overlapping in an honest member, and the default threshold. The
configuration (node/config.py) and the DKG (consensus/dkg.py) both use these, and nothing else computes them."""

from __future__ import annotations


def faults_tolerated(n: int) -> int:
    """f = ⌊(n - 1)/3⌋: the Byzantine members an ``n``-member cluster tolerates (n >= 3f + 1)."""
    return (n - 1) // 3


def threshold_floor(n: int) -> int:
    """⌊(n + f)/2⌋ + 1 with f = :func:`faults_tolerated` (n): the smallest threshold an ``n``-member cluster may use.

    Any two signing quorums of this size share more than f members, so at least one honest member: two receipts
    for one slot can never both be signed. The one formula for it: the configuration (DKG_THRESHOLD), the
    starter and every joiner call this. n = 1..10: 1, 2, 2, 3, 4, 4, 5, 6, 6, 7."""
    if n < 1:
        raise ValueError(f"need at least one member, got {n}")
    return (n + faults_tolerated(n)) // 2 + 1


def default_threshold(n: int) -> int:
    """⌊2n/3⌋ + 1: the smallest t with t > (n + f)/2 for f = n - t faulty members (two signing quorums always
    share an honest member, and t honest members can sign without the others); never below
    :func:`threshold_floor`."""
    return 2 * n // 3 + 1
