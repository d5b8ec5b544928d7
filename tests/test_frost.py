"""FROST(Ed25519, SHA-512): every value of the RFC 9591 vector, input validation, threshold properties and
identifiable abort."""

from __future__ import annotations

import itertools
import json
import math
import os
from pathlib import Path
from typing import Any

import nacl.bindings as sodium
import nacl.exceptions
import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus import frost
from consensus.frost import FrostError, InvalidShareError
from consensus.group import IDENTITY, L, base_mul, random_scalar, serialize_scalar

VECTORS = Path(__file__).resolve().parent / "vectors" / "frost-ed25519-sha512-rfc9591.json"  # see vectors/README.md

SMALL_ORDER = {  # encodings of the points of order 1, 2, 4 and 8, and a non-canonical identity (y = p + 1)
    "identity": IDENTITY,
    "order 2": bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    "order 4": bytes(32),
    "order 4 (sign bit)": bytes(31) + b"\x80",
    "order 8": bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),
    "order 8 (other)": bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
    "non-canonical identity": bytes.fromhex("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
}


@pytest.fixture(scope="module")
def vec() -> dict[str, Any]:
    if not VECTORS.is_file():
        pytest.fail(f"RFC 9591 test vectors not found at {VECTORS}")
    return json.loads(VECTORS.read_text())


def x(h: str) -> bytes:
    return bytes.fromhex(h)


@pytest.fixture(scope="module")
def rfc(vec: dict[str, Any]) -> dict[str, Any]:
    """The vector's session replayed with our functions (the tests below compare each value)."""
    inp = vec["inputs"]
    n, t = int(vec["config"]["MAX_PARTICIPANTS"]), int(vec["config"]["MIN_PARTICIPANTS"])
    coefficients = [x(c) for c in inp["share_polynomial_coefficients"]]
    shares, gpk, commitment = frost.trusted_dealer_keygen(x(inp["group_secret_key"]), n, t, coefficients)
    nonces, commitments = {}, {}
    for o in vec["round_one_outputs"]["outputs"]:
        i = o["identifier"]
        nonces[i], commitments[i] = frost.commit(shares[i], x(o["hiding_nonce_randomness"]),
                                                 x(o["binding_nonce_randomness"]))
    msg = x(inp["message"])
    sig_shares = {i: frost.sign(i, shares[i], gpk, nonces[i], msg, commitments) for i in commitments}
    return {"n": n, "t": t, "shares": shares, "gpk": gpk, "commitment": commitment, "nonces": nonces,
            "commitments": commitments, "msg": msg, "sig_shares": sig_shares}


# ---- RFC 9591 Appendix E.1 vector ------------------------------------------------------------------------------


def test_vector_config(vec: dict[str, Any]) -> None:
    cfg = vec["config"]
    assert cfg["name"] == "FROST(Ed25519, SHA-512)" and cfg["group"] == "ed25519" and cfg["hash"] == "SHA-512"
    assert vec["inputs"]["participant_list"] == [o["identifier"] for o in vec["round_one_outputs"]["outputs"]]
    assert len(vec["inputs"]["participant_list"]) == int(cfg["NUM_PARTICIPANTS"])


def test_vector_key_generation(vec: dict[str, Any], rfc: dict[str, Any]) -> None:
    inp = vec["inputs"]
    assert base_mul(int.from_bytes(x(inp["group_secret_key"]), "little")).hex() == inp["group_public_key"]
    assert rfc["gpk"].hex() == inp["group_public_key"]
    assert {p["identifier"]: p["participant_share"] for p in inp["participant_shares"]} == {
        i: s.hex() for i, s in rfc["shares"].items()}
    gpk, public = frost.derive_group_info(rfc["n"], rfc["t"], rfc["commitment"])
    assert gpk == rfc["gpk"]
    for i, share in rfc["shares"].items():
        assert frost.vss_verify(i, share, rfc["commitment"])
        assert public[i] == base_mul(int.from_bytes(share, "little"))
    for pair in itertools.combinations(rfc["shares"].items(), rfc["t"]):
        assert frost.secret_share_combine(dict(pair)).hex() == inp["group_secret_key"]


def test_vector_round_one(vec: dict[str, Any], rfc: dict[str, Any]) -> None:
    for o in vec["round_one_outputs"]["outputs"]:
        i = o["identifier"]
        (hn, bn), (hc, bc) = rfc["nonces"][i], rfc["commitments"][i]
        assert (hn.hex(), bn.hex()) == (o["hiding_nonce"], o["binding_nonce"])
        assert (hc.hex(), bc.hex()) == (o["hiding_nonce_commitment"], o["binding_nonce_commitment"])
        assert frost.nonce_generate(rfc["shares"][i], x(o["hiding_nonce_randomness"])).hex() == o["hiding_nonce"]


def test_vector_binding_factors(vec: dict[str, Any], rfc: dict[str, Any]) -> None:
    inputs = frost.binding_factor_inputs(rfc["gpk"], rfc["commitments"], rfc["msg"])
    factors = frost.compute_binding_factors(rfc["gpk"], rfc["commitments"], rfc["msg"])
    for o in vec["round_one_outputs"]["outputs"]:
        assert inputs[o["identifier"]].hex() == o["binding_factor_input"]
        assert frost.H1(inputs[o["identifier"]]).hex() == o["binding_factor"]
        assert factors[o["identifier"]].hex() == o["binding_factor"]


def test_vector_round_two_and_share_verification(vec: dict[str, Any], rfc: dict[str, Any]) -> None:
    _, public = frost.derive_group_info(rfc["n"], rfc["t"], rfc["commitment"])
    for o in vec["round_two_outputs"]["outputs"]:
        i = o["identifier"]
        assert rfc["sig_shares"][i].hex() == o["sig_share"]
        assert frost.verify_signature_share(i, public[i], rfc["sig_shares"][i], rfc["commitments"], rfc["msg"],
                                            rfc["gpk"])


def test_vector_final_signature(vec: dict[str, Any], rfc: dict[str, Any]) -> None:
    sig = frost.aggregate(rfc["commitments"], rfc["msg"], rfc["gpk"], rfc["sig_shares"])
    assert sig.hex() == vec["final_output"]["sig"]
    nacl.signing.VerifyKey(rfc["gpk"]).verify(rfc["msg"], sig)  # a standard Ed25519 verifier accepts it
    r = frost.compute_group_commitment(rfc["commitments"], rfc["msg"], rfc["gpk"])
    assert sig[:32] == r
    assert frost.compute_challenge(r, rfc["gpk"], rfc["msg"]) == frost.H2(r + rfc["gpk"] + rfc["msg"])
    _, public = frost.derive_group_info(rfc["n"], rfc["t"], rfc["commitment"])
    assert frost.aggregate_or_blame(rfc["commitments"], rfc["msg"], rfc["gpk"], rfc["sig_shares"], public) == sig


def test_commitment_list_form_and_session_reuse(rfc: dict[str, Any]) -> None:
    triples = [(i, d, e) for i, (d, e) in sorted(rfc["commitments"].items(), reverse=True)]
    assert frost.aggregate(triples, rfc["msg"], rfc["gpk"], rfc["sig_shares"]) == frost.aggregate(
        rfc["commitments"], rfc["msg"], rfc["gpk"], rfc["sig_shares"])
    a = frost.prepare(rfc["commitments"], rfc["msg"], rfc["gpk"])
    assert frost.prepare(triples, rfc["msg"], rfc["gpk"]) is a  # computed once per session
    assert a.identifiers == (1, 3)


# ---- input validation ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SMALL_ORDER))
@pytest.mark.parametrize("slot", [0, 1])
def test_identity_and_small_order_commitments_rejected(rfc: dict[str, Any], name: str, slot: int) -> None:
    bad = dict(rfc["commitments"])
    pair = list(bad[3])
    pair[slot] = SMALL_ORDER[name]
    bad[3] = (pair[0], pair[1])
    with pytest.raises(FrostError, match="commitment of participant 3"):
        frost.sign(1, rfc["shares"][1], rfc["gpk"], rfc["nonces"][1], rfc["msg"], bad)
    with pytest.raises(FrostError):
        frost.aggregate(bad, rfc["msg"], rfc["gpk"], rfc["sig_shares"])


def test_mixed_order_point_rejected(rfc: dict[str, Any]) -> None:
    """A valid point plus a torsion point is on the curve but outside the prime-order subgroup."""
    d, e = rfc["commitments"][3]
    for slot, point in ((0, d), (1, e)):
        mixed = sodium.crypto_core_ed25519_add(point, SMALL_ORDER["order 8"])
        assert not sodium.crypto_core_ed25519_is_valid_point(mixed)
        bad = dict(rfc["commitments"])
        bad[3] = (mixed, e) if slot == 0 else (d, mixed)
        with pytest.raises(FrostError, match="not a valid prime-order group element"):
            frost.aggregate(bad, rfc["msg"], rfc["gpk"], rfc["sig_shares"])


@pytest.mark.parametrize("name", sorted(SMALL_ORDER))
def test_bad_group_key_and_public_share_rejected(rfc: dict[str, Any], name: str) -> None:
    with pytest.raises(FrostError, match="group public key"):
        frost.aggregate(rfc["commitments"], rfc["msg"], SMALL_ORDER[name], rfc["sig_shares"])
    with pytest.raises(FrostError, match="public share"):
        frost.verify_signature_share(1, SMALL_ORDER[name], rfc["sig_shares"][1], rfc["commitments"], rfc["msg"],
                                     rfc["gpk"])


def test_non_canonical_scalars_rejected(rfc: dict[str, Any]) -> None:
    big = serialize_scalar(L)  # == 0 mod L, but not canonical
    above = (L + 5).to_bytes(32, "little")
    hn, bn = rfc["nonces"][1]
    for bad in (big, above, b"\x01" * 31):
        with pytest.raises(FrostError):
            frost.sign(1, bad, rfc["gpk"], (hn, bn), rfc["msg"], rfc["commitments"])
        with pytest.raises(FrostError):
            frost.sign(1, rfc["shares"][1], rfc["gpk"], (bad, bn), rfc["msg"], rfc["commitments"])
        with pytest.raises(FrostError):
            frost.commit(bad)
    with pytest.raises(FrostError, match="zero"):
        frost.sign(1, bytes(32), rfc["gpk"], (hn, bn), rfc["msg"], rfc["commitments"])
    # a non-canonical share equal (mod L) to the right one is still rejected, and its signer named
    good = int.from_bytes(rfc["sig_shares"][3], "little")
    shares = {1: rfc["sig_shares"][1], 3: (good + L).to_bytes(32, "little")}
    _, public = frost.derive_group_info(rfc["n"], rfc["t"], rfc["commitment"])
    assert not frost.verify_signature_share(3, public[3], shares[3], rfc["commitments"], rfc["msg"], rfc["gpk"])
    with pytest.raises(InvalidShareError) as e:
        frost.aggregate(rfc["commitments"], rfc["msg"], rfc["gpk"], shares)
    assert e.value.culprits == (3,)
    with pytest.raises(InvalidShareError) as e:
        frost.aggregate_or_blame(rfc["commitments"], rfc["msg"], rfc["gpk"], shares, public)
    assert e.value.culprits == (3,)


@pytest.mark.parametrize("ident", [0, -1, L, L + 1, True, "1", 1.0])
def test_bad_identifiers_rejected(rfc: dict[str, Any], ident: object) -> None:
    triples = [(1, *rfc["commitments"][1]), (ident, *rfc["commitments"][3])]
    with pytest.raises(FrostError, match="identifier"):
        frost.aggregate(triples, rfc["msg"], rfc["gpk"], rfc["sig_shares"])
    with pytest.raises(FrostError, match="identifier"):
        frost.derive_interpolating_value([1, ident], 1)  # type: ignore[list-item]


def test_duplicate_identifiers_rejected(rfc: dict[str, Any]) -> None:
    d, e = rfc["commitments"][1]
    triples = [(1, d, e), (3, *rfc["commitments"][3]), (1, d, e)]
    with pytest.raises(FrostError, match="duplicated"):
        frost.aggregate(triples, rfc["msg"], rfc["gpk"], rfc["sig_shares"])
    with pytest.raises(FrostError, match="duplicate"):
        frost.derive_interpolating_value([1, 3, 3], 1)
    with pytest.raises(FrostError, match="duplicate"):
        frost.encode_group_commitment_list(triples)


def test_session_mismatches_rejected(rfc: dict[str, Any]) -> None:
    msg, gpk, c = rfc["msg"], rfc["gpk"], rfc["commitments"]
    with pytest.raises(FrostError, match="not in the commitment list"):
        frost.sign(2, rfc["shares"][2], gpk, rfc["nonces"][1], msg, c)
    with pytest.raises(FrostError, match="does not match its nonces"):
        frost.sign(1, rfc["shares"][1], gpk, rfc["nonces"][3], msg, c)
    with pytest.raises(FrostError, match="missing \\[3\\]"):
        frost.aggregate(c, msg, gpk, {1: rfc["sig_shares"][1]})
    with pytest.raises(FrostError, match="unexpected \\[2\\]"):
        frost.aggregate(c, msg, gpk, {**rfc["sig_shares"], 2: rfc["sig_shares"][1]})
    with pytest.raises(FrostError, match="32 bytes"):
        frost.aggregate({1: (c[1][0][:31], c[1][1]), 3: c[3]}, msg, gpk, rfc["sig_shares"])
    with pytest.raises(FrostError, match="empty"):
        frost.aggregate({}, msg, gpk, {})
    with pytest.raises(FrostError, match="message"):
        frost.aggregate(c, "text", gpk, rfc["sig_shares"])  # type: ignore[arg-type]
    with pytest.raises(FrostError):
        frost.trusted_dealer_keygen(None, 2, 3)
    with pytest.raises(FrostError):
        frost.trusted_dealer_keygen(None, 3, 0)


def test_nonces_are_fresh_and_bound_to_the_secret(rfc: dict[str, Any]) -> None:
    secret = rfc["shares"][1]
    assert frost.nonce_generate(secret) != frost.nonce_generate(secret)
    r = os.urandom(32)
    assert frost.nonce_generate(secret, r) == frost.nonce_generate(secret, r) != frost.nonce_generate(
        rfc["shares"][3], r)
    (hn, bn), (hc, bc) = frost.commit(secret)
    assert hn != bn and hc == base_mul(int.from_bytes(hn, "little")) and bc == base_mul(int.from_bytes(bn, "little"))


def test_key_share_validation() -> None:
    ks = frost.trusted_dealer_key_shares(5, 3)
    for k in ks.values():
        k.validate()
        assert "secret_share" not in repr(k)
    k = ks[2]
    other = ks[3].secret_share
    vs, gpk = k.verifying_shares, k.group_public_key
    for broken in (frost.KeyShare(2, 3, other, gpk, vs),  # secret does not match the verifying share
                   frost.KeyShare(2, 6, k.secret_share, gpk, vs),  # threshold above n
                   frost.KeyShare(2, 3, k.secret_share, ks[1].public_share, vs),  # wrong group key
                   frost.KeyShare(2, 3, k.secret_share, gpk, {**vs, 5: ks[4].public_share}),  # off the polynomial
                   frost.KeyShare(2, 3, k.secret_share, gpk, {**vs, 4: IDENTITY}),
                   frost.KeyShare(2, 3, k.secret_share, gpk, {i: vs[i] for i in (1, 3, 4, 5)})):  # own share missing
        with pytest.raises(FrostError):
            broken.validate()


# ---- properties -----------------------------------------------------------------------------------------------------


def _sign_with(keys: dict[int, frost.KeyShare], signers: tuple[int, ...], msg: bytes) -> tuple[dict, dict]:
    gpk = keys[signers[0]].group_public_key
    rounds = {i: frost.commit(keys[i].secret_share) for i in signers}
    commitments = {i: rounds[i][1] for i in signers}
    shares = {i: frost.sign(i, keys[i].secret_share, gpk, rounds[i][0], msg, commitments) for i in signers}
    return commitments, shares


sizes = st.integers(2, 7).flatmap(lambda n: st.tuples(st.just(n), st.integers(2, n)))


@settings(max_examples=30, deadline=None)
@given(sizes, st.binary(max_size=64))
def test_every_threshold_subset_signs_a_valid_ed25519_signature(nt: tuple[int, int], msg: bytes) -> None:
    n, t = nt
    keys = frost.trusted_dealer_key_shares(n, t)
    gpk = keys[1].group_public_key
    vk = nacl.signing.VerifyKey(gpk)
    for signers in itertools.combinations(range(1, n + 1), t):
        commitments, shares = _sign_with(keys, signers, msg)
        sig = frost.aggregate_or_blame(commitments, msg, gpk, shares, keys[1].verifying_shares)
        assert vk.verify(msg, sig) == msg
        with pytest.raises(nacl.exceptions.BadSignatureError):
            vk.verify(msg + b"x", sig)


@settings(max_examples=40, deadline=None)
@given(sizes, st.binary(max_size=64), st.randoms(use_true_random=False))
def test_fewer_than_threshold_signers_cannot_sign(nt: tuple[int, int], msg: bytes, rnd: Any) -> None:
    n, t = nt
    keys = frost.trusted_dealer_key_shares(n, t)
    gpk = keys[1].group_public_key
    signers = tuple(sorted(rnd.sample(range(1, n + 1), t - 1)))
    commitments, shares = _sign_with(keys, signers, msg)
    for i in signers:  # every share is honest...
        assert frost.verify_signature_share(i, keys[i].public_share, shares[i], commitments, msg, gpk)
    sig = frost.aggregate(commitments, msg, gpk, shares)
    with pytest.raises(nacl.exceptions.BadSignatureError):  # ...but t-1 of them do not make a signature
        nacl.signing.VerifyKey(gpk).verify(msg, sig)
    with pytest.raises(FrostError, match="fewer signers than the threshold") as e:
        frost.aggregate_or_blame(commitments, msg, gpk, shares, keys[1].verifying_shares)
    assert not isinstance(e.value, InvalidShareError)
    assert frost.secret_share_combine({i: keys[i].secret_share for i in signers}) != frost.secret_share_combine(
        {i: keys[i].secret_share for i in range(1, t + 1)})


@settings(max_examples=40, deadline=None)
@given(sizes, st.binary(max_size=64), st.randoms(use_true_random=False), st.sampled_from(["plus-one", "random",
                                                                                          "other-signer"]))
def test_corrupted_shares_are_identified(nt: tuple[int, int], msg: bytes, rnd: Any, how: str) -> None:
    n, t = nt
    keys = frost.trusted_dealer_key_shares(n, t)
    gpk = keys[1].group_public_key
    signers = tuple(sorted(rnd.sample(range(1, n + 1), t)))
    commitments, shares = _sign_with(keys, signers, msg)
    if how == "other-signer":  # liars replay the (valid) share of one honest signer
        liars = set(rnd.sample(signers, rnd.randint(1, t - 1)))
        honest_share = shares[min(set(signers) - liars)]
        shares.update({i: honest_share for i in liars})
    else:
        liars = set(rnd.sample(signers, rnd.randint(1, t)))
        for i in liars:
            z = (int.from_bytes(shares[i], "little") + 1) % L if how == "plus-one" else random_scalar()
            shares[i] = serialize_scalar(z)
    with pytest.raises(InvalidShareError) as e:
        frost.aggregate_or_blame(commitments, msg, gpk, shares, keys[1].verifying_shares)
    assert set(e.value.culprits) == liars
    honest = {i: shares[i] for i in signers if i not in liars}
    for i in signers:
        assert frost.verify_signature_share(i, keys[i].public_share, shares[i], commitments, msg, gpk) == (i in honest)


def test_every_subset_of_every_size_up_to_seven() -> None:
    """Exhaustive companion of the property above: all 2 <= t <= n <= 7 and every t-subset sign; no t-1 subset does."""
    msg, checked = b"receipt", 0
    for n in range(2, 8):
        for t in range(2, n + 1):
            keys = frost.trusted_dealer_key_shares(n, t)
            vk = nacl.signing.VerifyKey(keys[1].group_public_key)
            for signers in itertools.combinations(range(1, n + 1), t):
                commitments, shares = _sign_with(keys, signers, msg)
                assert vk.verify(msg, frost.aggregate(commitments, msg, keys[1].group_public_key, shares)) == msg
                checked += 1
            commitments, shares = _sign_with(keys, tuple(range(1, t)), msg)
            with pytest.raises(nacl.exceptions.BadSignatureError):
                vk.verify(msg, frost.aggregate(commitments, msg, keys[1].group_public_key, shares))
    assert checked == sum(math.comb(n, t) for n in range(2, 8) for t in range(2, n + 1)) == 219
