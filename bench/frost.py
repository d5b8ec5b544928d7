"""FROST(Ed25519, SHA-512) benchmark: sign, verify-share and aggregate against the libsodium floor.

For 2-of-3, 3-of-5 and 5-of-7 (t signers, 100-byte message, trusted-dealer keys), each step is timed as a
caller meets it:
- sign: one signer's ``sign`` in a fresh session (it validates the commitment list, computes the binding
  factors, the group commitment, the challenge and its Lagrange coefficient, and checks its own commitment);
- verify-share: one ``verify_signature_share`` inside a session the aggregator has already prepared (its
  per-share cost when it has to find a culprit), and the same call cold (session computed by the call);
- aggregate: ``aggregate`` in a fresh session, and ``aggregate_or_blame`` (the same plus one Ed25519
  verification of the result), for honest shares and with one bad share (which then checks all t shares).

The floor of a step is the libsodium work it cannot avoid: its count of variable-base scalar multiplications
(mul), fixed-base multiplications (base), point additions (add) and Ed25519 verifications, times the cost of
each measured here, in this run, with ``nacl.bindings``. Input validation (``is_valid_point`` on each hiding
commitment, about half a mul) is not in the floor: it is overhead we pay and count against ourselves.
Goal: every step within 2× of its floor.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

import nacl.bindings as sodium
import nacl.signing

from bench._common import say, title, verdict
from consensus import frost
from consensus.group import L, random_scalar, serialize_scalar

CONFIGS = ((3, 2), (5, 3), (7, 5))
MESSAGE = os.urandom(100)
GOAL = 2.0


def timed(fn: Callable[[], object], number: int, repeat: int = 5) -> float:
    """Best mean over ``repeat`` runs of ``number`` calls, in µs (the machine is noisy; the best is the signal)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - t0) / number)
    return best * 1e6


def primitives() -> dict[str, float]:
    a, b = serialize_scalar(random_scalar()), serialize_scalar(random_scalar())
    p, q = sodium.crypto_scalarmult_ed25519_base_noclamp(a), sodium.crypto_scalarmult_ed25519_base_noclamp(b)
    key = nacl.signing.SigningKey.generate()
    signed = key.sign(MESSAGE)
    vk = key.verify_key
    return {
        "mul": timed(lambda: sodium.crypto_scalarmult_ed25519_noclamp(a, p), 2000),
        "base": timed(lambda: sodium.crypto_scalarmult_ed25519_base_noclamp(a), 4000),
        "add": timed(lambda: sodium.crypto_core_ed25519_add(p, q), 4000),
        "valid": timed(lambda: sodium.crypto_core_ed25519_is_valid_point(p), 4000),
        "verify": timed(lambda: vk.verify(signed), 2000),
    }


def floor(cost: dict[str, float], **ops: int) -> tuple[float, str]:
    text = " + ".join(f"{n} {op}" for op, n in ops.items() if n)
    return sum(cost[op] * n for op, n in ops.items()), text


def bench_config(n: int, t: int, cost: dict[str, float]) -> dict[str, float]:
    keys = frost.trusted_dealer_key_shares(n, t)
    gpk = keys[1].group_public_key
    signers = tuple(range(1, t + 1))
    rounds = {i: frost.commit(keys[i].secret_share) for i in signers}
    commitments = {i: rounds[i][1] for i in signers}
    shares = {i: frost.sign(i, keys[i].secret_share, gpk, rounds[i][0], MESSAGE, commitments) for i in signers}
    public = keys[1].verifying_shares
    bad = {**shares, t: serialize_scalar((int.from_bytes(shares[t], "little") + 1) % L)}
    sig = frost.aggregate_or_blame(commitments, MESSAGE, gpk, shares, public)
    nacl.signing.VerifyKey(gpk).verify(MESSAGE, sig)
    clear = frost.clear_session_cache

    def sign() -> None:
        clear()
        frost.sign(1, keys[1].secret_share, gpk, rounds[1][0], MESSAGE, commitments)

    def verify_cold() -> None:
        clear()
        frost.verify_signature_share(t, public[t], shares[t], commitments, MESSAGE, gpk)

    def aggregate() -> None:
        clear()
        frost.aggregate(commitments, MESSAGE, gpk, shares)

    def aggregate_checked() -> None:
        clear()
        frost.aggregate_or_blame(commitments, MESSAGE, gpk, shares, public)

    def blame() -> None:
        clear()
        try:
            frost.aggregate_or_blame(commitments, MESSAGE, gpk, bad, public)
        except frost.InvalidShareError as e:
            assert e.culprits == (t,)
        else:
            raise AssertionError("bad share not detected")

    frost.prepare(commitments, MESSAGE, gpk)  # the warm case: session prepared once, shares checked inside it
    steps = [
        ("sign (one signer, fresh session)", timed(sign, 300), floor(cost, mul=t, add=2 * t - 1)),
        ("verify-share (prepared session)",
         timed(lambda: frost.verify_signature_share(t, public[t], shares[t], commitments, MESSAGE, gpk), 1000),
         floor(cost, base=1, mul=1, add=1)),
        ("verify-share (cold, standalone)", timed(verify_cold, 300), floor(cost, base=1, mul=t + 1, add=2 * t)),
        ("aggregate (fresh session)", timed(aggregate, 300), floor(cost, mul=t, add=2 * t - 1)),
        ("aggregate_or_blame, honest", timed(aggregate_checked, 300), floor(cost, mul=t, add=2 * t - 1, verify=1)),
        ("aggregate_or_blame, 1 bad share", timed(blame, 100),
         floor(cost, mul=2 * t, add=3 * t - 1, base=t, verify=1)),
    ]
    title(f"{t}-of-{n}: {t} signers, {len(MESSAGE)}-byte message")
    say(f"{'step':<34}{'ours µs':>9}{'floor µs':>10}{'ratio':>8}   floor = libsodium ops")
    ratios = {}
    for name, ours, (fl, ops) in steps:
        ratios[name] = ours / fl
        say(f"{name:<34}{ours:>9.0f}{fl:>10.0f}{ours / fl:>7.2f}×   {ops}")
    say(f"(input validation we pay in each fresh session and the floor omits: {t} × is_valid_point = "
        f"{t * cost['valid']:.0f} µs)")
    return ratios


def main() -> int:
    say(__doc__.split("\n\n")[0] if __doc__ else "")
    t0 = time.perf_counter()
    title("libsodium primitive costs, this run (µs)")
    cost = primitives()
    say("  ".join(f"{k} {v:.1f}" for k, v in cost.items()))
    results = {f"{t}-of-{n}": bench_config(n, t, cost) for n, t in CONFIGS}
    title("Goals (each step within 2× of its libsodium floor, every configuration)")
    met = []
    for step in next(iter(results.values())):
        per = {cfg: r[step] for cfg, r in results.items()}
        worst = max(per.values())
        met.append(verdict(f"{step} ≤ {GOAL:.0f}× floor", worst <= GOAL,
                           ", ".join(f"{cfg} {v:.2f}×" for cfg, v in per.items())))
    title("Summary")
    say(f"{sum(met)}/{len(met)} goals met; total {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
