"""FROST(Ed25519, SHA-512) as specified by RFC 9591, on libsodium's Ed25519 operations.

Owns the two-round threshold signing protocol: the ciphersuite hashes H1–H5, nonce generation and
commitments (round one), binding factors, group commitment, challenge and signature shares (round two),
share verification, aggregation into a plain 64-byte Ed25519 signature, identifiable abort
(:func:`aggregate_or_blame`), trusted-dealer key generation with verifiable secret sharing (RFC 9591
Appendix C, for tests and tools) and :class:`KeyShare`, the key material one signer holds.

Everything is a pure function of bytes and ints, named after the RFC's operations. Scalars and elements
use the RFC serializations (32-byte little-endian scalars, 32-byte compressed points); identifiers are
ints in ``[1, L)``; commitments are ``{identifier: (hiding_commitment, binding_commitment)}`` (or the RFC's
list of ``(identifier, hiding, binding)`` triples). Every input is validated and any violation raises
:class:`FrostError`. The per-session values (binding factors, group commitment, challenge, Lagrange
coefficients) are computed once per (group key, message, commitment list) and memoised, so a signer or an
aggregator calling several functions for one session pays for them once.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import nacl.exceptions
import nacl.signing

from consensus.group import (
    IDENTITY,
    GroupError,
    L,
    add,
    add_all,
    base_mul,
    deserialize_element,
    deserialize_scalar,
    hash_to_scalar,
    invert_all,
    mul,
    random_scalar,
    serialize_scalar,
)

CONTEXT_STRING = b"FROST-ED25519-SHA512-v1"
SIGNATURE_SIZE = 64

CommitmentInput = Mapping[int, tuple[bytes, bytes]] | Iterable[tuple[int, bytes, bytes]]
CommitmentList = tuple[tuple[int, bytes, bytes], ...]


class FrostError(ValueError):
    """Invalid input to a FROST operation (bad encoding, identity/small-order point, bad identifier, ...)."""


class InvalidCommitmentError(FrostError):
    """A session's nonce commitment is not a valid group element; ``culprits`` names whose it is."""

    def __init__(self, culprit: int, message: str) -> None:
        self.culprits: tuple[int, ...] = (culprit,)
        super().__init__(message)


class InvalidShareError(FrostError):
    """Signature shares failed verification; ``culprits`` names exactly the signers whose shares are bad."""

    def __init__(self, culprits: Iterable[int], message: str | None = None) -> None:
        self.culprits: tuple[int, ...] = tuple(sorted(culprits))
        super().__init__(message or f"invalid signature share(s) from participant(s) {list(self.culprits)}")


# ---- ciphersuite hashes, named as in RFC 9591 §6.5 ----------------------------------------------------------


def H1(m: bytes) -> bytes:
    return serialize_scalar(hash_to_scalar(CONTEXT_STRING, b"rho", m))


def H2(m: bytes) -> bytes:
    return serialize_scalar(hash_to_scalar(m))  # no context string: this is the RFC 8032 challenge


def H3(m: bytes) -> bytes:
    return serialize_scalar(hash_to_scalar(CONTEXT_STRING, b"nonce", m))


def H4(m: bytes) -> bytes:
    return hashlib.sha512(CONTEXT_STRING + b"msg" + m).digest()


def H5(m: bytes) -> bytes:
    return hashlib.sha512(CONTEXT_STRING + b"com" + m).digest()


# ---- validation helpers -------------------------------------------------------------------------------


def _scalar(data: bytes, what: str, *, nonzero: bool = False) -> int:
    try:
        k = deserialize_scalar(data, what)
    except GroupError as e:
        raise FrostError(str(e)) from None
    if nonzero and k == 0:
        raise FrostError(f"{what}: zero scalar")
    return k


def _element(data: bytes, what: str) -> bytes:
    try:
        return deserialize_element(data, what)
    except GroupError as e:
        raise FrostError(str(e)) from None


@functools.lru_cache(maxsize=256)
def _long_lived_element(data: bytes, what: str) -> bytes:
    """Validate keys that recur across sessions (group key) once."""
    return _element(data, what)


def _identifier(i: object) -> int:
    if not isinstance(i, int) or isinstance(i, bool):
        raise FrostError(f"identifier {i!r}: must be an int")
    if not 0 < i < L:
        raise FrostError(f"identifier {i}: must be in [1, L)")
    return i


def _message(message: object) -> bytes:
    if not isinstance(message, bytes):
        raise FrostError("message: must be bytes")
    return message


def _commitment_list(commitments: CommitmentInput) -> CommitmentList:
    """Normalise to the RFC's commitment list, sorted by identifier; encodings are checked, points later."""
    items: list[tuple[int, bytes, bytes]] = []
    if isinstance(commitments, Mapping):
        for i, pair in commitments.items():
            if not isinstance(pair, tuple | list) or len(pair) != 2:
                raise FrostError(f"commitment of participant {i!r}: expected (hiding, binding)")
            items.append((i, pair[0], pair[1]))
    else:
        for entry in commitments:
            if not isinstance(entry, tuple | list) or len(entry) != 3:
                raise FrostError("commitment list entries must be (identifier, hiding, binding)")
            items.append((entry[0], entry[1], entry[2]))
    if not items:
        raise FrostError("empty commitment list")
    seen: set[int] = set()
    for i, d, e in items:
        _identifier(i)
        if i in seen:
            raise FrostError(f"identifier {i}: duplicated in the commitment list")
        seen.add(i)
        for what, p in (("hiding", d), ("binding", e)):
            if not isinstance(p, bytes) or len(p) != 32:
                raise FrostError(f"{what} commitment of participant {i}: expected 32 bytes")
    return tuple(sorted(items))


# ---- round one (RFC 9591 §4.1, §5.1) -------------------------------------------------------------------


def nonce_generate(secret: bytes, random_bytes: bytes | None = None) -> bytes:
    """H3(random_bytes || SerializeScalar(secret)); fresh 32 random bytes when none are given."""
    _scalar(secret, "secret")
    if random_bytes is None:
        random_bytes = os.urandom(32)
    elif not isinstance(random_bytes, bytes) or len(random_bytes) != 32:
        raise FrostError("random_bytes: expected 32 bytes")
    return H3(random_bytes + secret)


def commit(
    secret: bytes, hiding_randomness: bytes | None = None, binding_randomness: bytes | None = None
) -> tuple[tuple[bytes, bytes], tuple[bytes, bytes]]:
    """Round one: ``((hiding_nonce, binding_nonce), (hiding_commitment, binding_commitment))``.

    The nonces are secret and must be used for exactly one :func:`sign` call; only the commitments are sent.
    """
    _scalar(secret, "secret", nonzero=True)
    while True:
        hiding, binding = nonce_generate(secret, hiding_randomness), nonce_generate(secret, binding_randomness)
        h, b = int.from_bytes(hiding, "little"), int.from_bytes(binding, "little")
        if h and b:
            return (hiding, binding), (base_mul(h), base_mul(b))
        if hiding_randomness is not None or binding_randomness is not None:
            raise FrostError("the given randomness yields a zero nonce")


# ---- round two helpers (RFC 9591 §4.2–4.6) -------------------------------------------------------------


def encode_group_commitment_list(commitments: CommitmentInput) -> bytes:
    return b"".join(serialize_scalar(i) + d + e for i, d, e in _commitment_list(commitments))


def binding_factor_inputs(group_public_key: bytes, commitments: CommitmentInput, message: bytes) -> dict[int, bytes]:
    """The ``rho_input`` of each participant: gpk || H4(msg) || H5(encoded commitments) || identifier."""
    clist = _commitment_list(commitments)
    prefix = group_public_key + H4(_message(message)) + H5(b"".join(serialize_scalar(i) + d + e for i, d, e in clist))
    return {i: prefix + serialize_scalar(i) for i, _, _ in clist}


def compute_binding_factors(group_public_key: bytes, commitments: CommitmentInput, message: bytes) -> dict[int, bytes]:
    session = prepare(commitments, message, group_public_key)
    return {i: serialize_scalar(rho) for i, rho in session.binding_factors.items()}


def compute_group_commitment(commitments: CommitmentInput, message: bytes, group_public_key: bytes) -> bytes:
    return prepare(commitments, message, group_public_key).group_commitment


def compute_challenge(group_commitment: bytes, group_public_key: bytes, message: bytes) -> bytes:
    return H2(group_commitment + group_public_key + message)


def _lagrange(xs: Sequence[int], at: int = 0) -> list[int]:
    """Lagrange coefficients for the points ``xs`` (distinct, non-zero) evaluated at ``at``."""
    nums, dens = [], []
    for i in xs:
        num = den = 1
        for j in xs:
            if j != i:
                num = num * (j - at) % L
                den = den * (j - i) % L
        nums.append(num)
        dens.append(den)
    return [n * d % L for n, d in zip(nums, invert_all(dens), strict=True)]


def derive_interpolating_value(identifiers: Sequence[int], identifier: int) -> bytes:
    """RFC 9591 §4.2: the Lagrange coefficient of ``identifier`` for the set ``identifiers`` at x = 0."""
    xs = [_identifier(x) for x in identifiers]
    if len(set(xs)) != len(xs):
        raise FrostError("duplicate identifiers")
    if _identifier(identifier) not in xs:
        raise FrostError(f"identifier {identifier} is not in the list")
    return serialize_scalar(_lagrange(xs)[xs.index(identifier)])


@dataclass(frozen=True, slots=True)
class SigningSession:
    """Everything one signing session shares: computed once from (commitments, message, group key)."""

    group_public_key: bytes
    message: bytes
    commitment_list: CommitmentList
    binding_factors: dict[int, int]
    commitment_shares: dict[int, bytes]  # D_i + rho_i·E_i, reused by share verification
    group_commitment: bytes
    challenge: int
    lagrange: dict[int, int]

    @property
    def identifiers(self) -> tuple[int, ...]:
        return tuple(i for i, _, _ in self.commitment_list)


@functools.lru_cache(maxsize=64)
def _session(group_public_key: bytes, message: bytes, clist: CommitmentList) -> SigningSession:
    _long_lived_element(group_public_key, "group public key")
    for i, d, _ in clist:
        try:
            deserialize_element(d, f"hiding commitment of participant {i}")
        except GroupError as err:
            raise InvalidCommitmentError(i, str(err)) from None
    prefix = group_public_key + H4(message) + H5(b"".join(serialize_scalar(i) + d + e for i, d, e in clist))
    rho = {i: hash_to_scalar(CONTEXT_STRING, b"rho", prefix, serialize_scalar(i)) for i, _, _ in clist}
    shares: dict[int, bytes] = {}
    for i, d, e in clist:
        try:  # mul validates E (canonical, on the curve, prime-order subgroup, not identity)
            shares[i] = add(d, mul(e, rho[i], f"binding commitment of participant {i}"))
        except GroupError as err:
            raise InvalidCommitmentError(i, str(err)) from None
    r = add_all(list(shares.values()))
    if r == IDENTITY:
        raise FrostError("group commitment is the identity element")
    c = hash_to_scalar(r, group_public_key, message)
    ids = [i for i, _, _ in clist]
    lam = dict(zip(ids, _lagrange(ids), strict=True))
    return SigningSession(group_public_key, message, clist, rho, shares, r, c, lam)


def prepare(commitments: CommitmentInput, message: bytes, group_public_key: bytes) -> SigningSession:
    """Validate a session's inputs and compute its shared values (memoised per session)."""
    if not isinstance(group_public_key, bytes) or len(group_public_key) != 32:
        raise FrostError("group public key: expected 32 bytes")
    return _session(group_public_key, _message(message), _commitment_list(commitments))


def clear_session_cache() -> None:
    _session.cache_clear()


# ---- round two, verification, aggregation (RFC 9591 §5.2–5.4) -------------------------------------------


def sign(
    identifier: int,
    secret: bytes,
    group_public_key: bytes,
    nonces: tuple[bytes, bytes],
    message: bytes,
    commitments: CommitmentInput,
) -> bytes:
    """Round two: this participant's signature share (32-byte scalar)."""
    _identifier(identifier)
    sk = _scalar(secret, "secret share", nonzero=True)
    if not isinstance(nonces, tuple | list) or len(nonces) != 2:
        raise FrostError("nonces: expected (hiding_nonce, binding_nonce)")
    hn, bn = _scalar(nonces[0], "hiding nonce", nonzero=True), _scalar(nonces[1], "binding nonce", nonzero=True)
    s = prepare(commitments, message, group_public_key)
    own = next(((d, e) for i, d, e in s.commitment_list if i == identifier), None)
    if own is None:
        raise FrostError(f"participant {identifier} is not in the commitment list")
    if own != (base_mul(hn), base_mul(bn)):
        raise FrostError(f"the commitment listed for participant {identifier} does not match its nonces")
    z = (hn + bn * s.binding_factors[identifier] + s.lagrange[identifier] * sk * s.challenge) % L
    return serialize_scalar(z)


def _verify_share(s: SigningSession, identifier: int, public_share: bytes, share: bytes) -> bool:
    if identifier not in s.commitment_shares:
        raise FrostError(f"participant {identifier} is not in the commitment list")
    if not isinstance(share, bytes) or len(share) != 32:
        return False
    z = int.from_bytes(share, "little")
    if z >= L:
        return False
    try:
        expected = add(s.commitment_shares[identifier],
                       mul(public_share, s.challenge * s.lagrange[identifier], f"public share of {identifier}"))
    except GroupError as e:
        raise FrostError(str(e)) from None
    return base_mul(z) == expected


def verify_signature_share(
    identifier: int,
    public_share: bytes,
    share: bytes,
    commitments: CommitmentInput,
    message: bytes,
    group_public_key: bytes,
) -> bool:
    """Is ``share`` this participant's correct share: z·B == D + rho·E + (c·lambda)·PK_i?

    Returns False for a wrong or malformed share; raises FrostError for invalid session inputs.
    """
    _identifier(identifier)
    if not isinstance(public_share, bytes) or len(public_share) != 32:
        raise FrostError(f"public share of {identifier}: expected 32 bytes")
    return _verify_share(prepare(commitments, message, group_public_key), identifier, public_share, share)


def _sum_shares(s: SigningSession, shares: Mapping[int, bytes]) -> bytes:
    if not isinstance(shares, Mapping):
        raise FrostError("shares: expected {identifier: share}")
    ids = set(s.identifiers)
    if set(shares) != ids:
        missing, extra = sorted(ids - set(shares)), sorted(set(shares) - ids)
        raise FrostError(f"shares do not match the commitment list (missing {missing}, unexpected {extra})")
    z, bad = 0, []
    for i in s.identifiers:
        sh = shares[i]
        if not isinstance(sh, bytes) or len(sh) != 32 or int.from_bytes(sh, "little") >= L:
            bad.append(i)
        else:
            z += int.from_bytes(sh, "little")
    if bad:
        raise InvalidShareError(bad, f"malformed signature share(s) from participant(s) {bad}")
    return s.group_commitment + serialize_scalar(z % L)


def aggregate(
    commitments: CommitmentInput, message: bytes, group_public_key: bytes, shares: Mapping[int, bytes]
) -> bytes:
    """The 64-byte signature R || z (RFC 8032 encoding). Does not check the shares: see aggregate_or_blame."""
    return _sum_shares(prepare(commitments, message, group_public_key), shares)


def verify(group_public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Plain Ed25519 verification (libsodium), as any third party would do it."""
    try:
        nacl.signing.VerifyKey(group_public_key).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, TypeError):
        return False
    return True


def aggregate_or_blame(
    commitments: CommitmentInput,
    message: bytes,
    group_public_key: bytes,
    shares: Mapping[int, bytes],
    public_shares: Mapping[int, bytes],
) -> bytes:
    """Aggregate, check the result with one Ed25519 verification, and only if it fails verify the shares one by
    one. Returns the signature, or raises InvalidShareError naming exactly the signers whose shares are bad.
    """
    s = prepare(commitments, message, group_public_key)
    missing = [i for i in s.identifiers if i not in public_shares]
    if missing:
        raise FrostError(f"no public share for participant(s) {missing}")
    try:
        signature = _sum_shares(s, shares)
    except InvalidShareError as e:
        malformed = set(e.culprits)
        bad = malformed | {i for i in s.identifiers
                           if i not in malformed and not _verify_share(s, i, public_shares[i], shares[i])}
        raise InvalidShareError(bad) from None
    if verify(group_public_key, s.message, signature):
        return signature
    bad = {i for i in s.identifiers if not _verify_share(s, i, public_shares[i], shares[i])}
    if bad:
        raise InvalidShareError(bad)
    raise FrostError("aggregate signature is invalid although every share verifies: fewer signers than the "
                     "threshold, or public shares inconsistent with the group key")


# ---- trusted dealer and verifiable secret sharing (RFC 9591 Appendix C) --------------------------------


def polynomial_evaluate(x: int, coefficients: Sequence[int]) -> int:
    """f(x) = coefficients[0] + coefficients[1]·x + ... (Horner), mod L."""
    value = 0
    for c in reversed(coefficients):
        value = (value * x + c) % L
    return value


def _check_sizes(max_participants: int, min_participants: int) -> None:
    for name, v in (("max_participants", max_participants), ("min_participants", min_participants)):
        if not isinstance(v, int) or isinstance(v, bool):
            raise FrostError(f"{name}: must be an int")
    if not 0 < min_participants <= max_participants:
        raise FrostError(f"need 0 < min_participants <= max_participants, got {min_participants}, {max_participants}")


def secret_share_shard(secret: bytes, coefficients: Sequence[bytes], max_participants: int) -> dict[int, bytes]:
    """Shamir shares f(1..max_participants) of f(x) = secret + coefficients[0]·x + ..."""
    _check_sizes(max_participants, len(coefficients) + 1)
    poly = [_scalar(secret, "secret")] + [_scalar(c, "coefficient") for c in coefficients]
    return {i: serialize_scalar(polynomial_evaluate(i, poly)) for i in range(1, max_participants + 1)}


def secret_share_combine(shares: Mapping[int, bytes]) -> bytes:
    """Recover f(0) from (at least threshold many) shares by Lagrange interpolation."""
    ids = [_identifier(i) for i in shares]
    if not ids:
        raise FrostError("no shares")
    ys = [_scalar(shares[i], f"share {i}") for i in ids]
    return serialize_scalar(sum(lam * y for lam, y in zip(_lagrange(ids), ys, strict=True)) % L)


def vss_commit(coefficients: Sequence[bytes]) -> list[bytes]:
    """Commitments to the polynomial's coefficients (secret first): [a_k·B]."""
    return [base_mul(_scalar(c, "coefficient", nonzero=True)) for c in coefficients]


def evaluate_commitment(vss_commitment: Sequence[bytes], x: int) -> bytes:
    """Σ_k C_k·x^k: the public image f(x)·B of a committed polynomial."""
    terms, power = [vss_commitment[0]], 1
    for k, ck in enumerate(vss_commitment[1:], start=1):
        power = power * x % L
        try:
            terms.append(mul(ck, power, f"commitment coefficient {k}"))
        except GroupError as e:
            raise FrostError(str(e)) from None
    return add_all(terms)


def vss_verify(identifier: int, share: bytes, vss_commitment: Sequence[bytes]) -> bool:
    """Does the share lie on the committed polynomial: share·B == Σ C_k·identifier^k?"""
    _identifier(identifier)
    commitment = [_element(c, f"commitment coefficient {k}") for k, c in enumerate(vss_commitment)]
    if not commitment:
        raise FrostError("empty commitment")
    return base_mul(_scalar(share, "share")) == evaluate_commitment(commitment, identifier)


def derive_group_info(
    max_participants: int, min_participants: int, vss_commitment: Sequence[bytes]
) -> tuple[bytes, dict[int, bytes]]:
    """(group public key, {identifier: public share}) from the dealer's commitment."""
    _check_sizes(max_participants, min_participants)
    if len(vss_commitment) != min_participants:
        raise FrostError(f"commitment has {len(vss_commitment)} coefficients, expected {min_participants}")
    commitment = [_element(c, f"commitment coefficient {k}") for k, c in enumerate(vss_commitment)]
    return commitment[0], {i: evaluate_commitment(commitment, i) for i in range(1, max_participants + 1)}


def trusted_dealer_keygen(
    secret_key: bytes | None,
    max_participants: int,
    min_participants: int,
    coefficients: Sequence[bytes] | None = None,
) -> tuple[dict[int, bytes], bytes, list[bytes]]:
    """``({identifier: secret share}, group public key, vss commitment)``; random secret/coefficients if None."""
    _check_sizes(max_participants, min_participants)
    secret = serialize_scalar(random_scalar()) if secret_key is None else secret_key
    _scalar(secret, "secret key", nonzero=True)
    if coefficients is None:
        coefficients = [serialize_scalar(random_scalar()) for _ in range(min_participants - 1)]
    elif len(coefficients) != min_participants - 1:
        raise FrostError(f"expected {min_participants - 1} coefficients, got {len(coefficients)}")
    shares = secret_share_shard(secret, coefficients, max_participants)
    commitment = vss_commit([secret, *coefficients])
    return shares, commitment[0], commitment


# ---- a signer's key material ---------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyShare:
    """One participant's signing key share plus the public data every signer and aggregator needs."""

    identifier: int
    threshold: int
    secret_share: bytes = field(repr=False)
    group_public_key: bytes
    verifying_shares: dict[int, bytes]  # every participant's public share, own included

    @property
    def public_share(self) -> bytes:
        return self.verifying_shares[self.identifier]

    def validate(self) -> None:
        """Check every field and that all verifying shares lie on one degree-(t-1) polynomial whose value at 0 is
        the group key (so any t of them interpolate to it). Raises FrostError."""
        _identifier(self.identifier)
        ids = sorted(self.verifying_shares)
        for i in ids:
            _identifier(i)
            _element(self.verifying_shares[i], f"verifying share of {i}")
        if self.identifier not in self.verifying_shares:
            raise FrostError(f"no verifying share for own identifier {self.identifier}")
        if not isinstance(self.threshold, int) or not 1 <= self.threshold <= len(ids):
            raise FrostError(f"threshold {self.threshold!r} out of range for {len(ids)} participants")
        _element(self.group_public_key, "group public key")
        if base_mul(_scalar(self.secret_share, "secret share", nonzero=True)) != self.public_share:
            raise FrostError("secret share does not match its verifying share")
        basis = ids[: self.threshold]
        for x in [0, *ids[self.threshold:]]:
            expected = self.group_public_key if x == 0 else self.verifying_shares[x]
            points = [mul(self.verifying_shares[j], lam) for j, lam in zip(basis, _lagrange(basis, x), strict=True)]
            if add_all(points) != expected:
                raise FrostError("verifying shares are inconsistent with the group key and threshold")


def trusted_dealer_key_shares(
    max_participants: int, min_participants: int, secret_key: bytes | None = None,
    coefficients: Sequence[bytes] | None = None,
) -> dict[int, KeyShare]:
    """Dealer-generated :class:`KeyShare` for identifiers 1..max_participants (tests and tools only)."""
    shares, group_key, commitment = trusted_dealer_keygen(secret_key, max_participants, min_participants,
                                                          coefficients)
    _, public = derive_group_info(max_participants, min_participants, commitment)
    return {i: KeyShare(i, min_participants, sk, group_key, dict(public)) for i, sk in shares.items()}
