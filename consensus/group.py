"""The Ed25519 prime-order group and its scalar field, on libsodium (``nacl.bindings``).

Owns the RFC 9591 serializations (32-byte little-endian scalars, 32-byte RFC 8032 compressed points) and
their validation, plus the few group operations FROST and the DKG need. Scalars are Python ints in
``[0, L)`` (int arithmetic is ~5× cheaper than a cffi call); points are their canonical 32-byte
encodings, as libsodium takes and returns them.

libsodium's ``noclamp`` scalar multiplications reject a zero scalar, the identity and small-order input
points (they raise ``RuntimeError``); the wrappers here map those cases to the group law (0·P = identity)
or to :class:`GroupError`, so callers never see a bare ``RuntimeError``.
"""

from __future__ import annotations

import hashlib
import os

import nacl.bindings as sodium

L = 2**252 + 27742317777372353535851937790883648493  # order of the prime-order subgroup
SCALAR_SIZE = 32
ELEMENT_SIZE = 32
IDENTITY = b"\x01" + bytes(31)  # the neutral element's encoding (y = 1, x = 0)

_base = sodium.crypto_scalarmult_ed25519_base_noclamp
_mul = sodium.crypto_scalarmult_ed25519_noclamp
_add = sodium.crypto_core_ed25519_add
_is_valid = sodium.crypto_core_ed25519_is_valid_point


class GroupError(ValueError):
    """A scalar or group element failed to deserialize or validate."""


def serialize_scalar(k: int) -> bytes:
    return k.to_bytes(SCALAR_SIZE, "little")


def deserialize_scalar(data: bytes, what: str = "scalar") -> int:
    """RFC 9591 DeserializeScalar: 32 bytes, little-endian, canonical (< L)."""
    if not isinstance(data, bytes) or len(data) != SCALAR_SIZE:
        raise GroupError(f"{what}: expected {SCALAR_SIZE} bytes")
    k = int.from_bytes(data, "little")
    if k >= L:
        raise GroupError(f"{what}: non-canonical scalar (not below the group order)")
    return k


def is_valid_element(data: bytes) -> bool:
    """Canonical encoding of a point on the curve, in the prime-order subgroup, not of small order (nor identity)."""
    return isinstance(data, bytes) and len(data) == ELEMENT_SIZE and bool(_is_valid(data))


def deserialize_element(data: bytes, what: str = "element") -> bytes:
    """RFC 9591 DeserializeElement for Ed25519: reject bad encodings, the identity and points outside the subgroup."""
    if not isinstance(data, bytes) or len(data) != ELEMENT_SIZE:
        raise GroupError(f"{what}: expected {ELEMENT_SIZE} bytes")
    if not _is_valid(data):
        raise GroupError(f"{what}: not a valid prime-order group element (identity, small order or not on the curve)")
    return data


def random_scalar() -> int:
    """Uniform non-zero scalar (libsodium's scalar_random is not exposed by pynacl; this is its method)."""
    while True:
        k = int.from_bytes(os.urandom(64), "little") % L
        if k:
            return k


def hash_to_scalar(*parts: bytes) -> int:
    """SHA-512 of the concatenation, read little-endian and reduced mod L (the ciphersuite's H1/H2/H3 shape)."""
    h = hashlib.sha512()
    for p in parts:
        h.update(p)
    return int.from_bytes(h.digest(), "little") % L


def base_mul(k: int) -> bytes:
    """k·B (B the standard base point); 0·B is the identity."""
    return _base(serialize_scalar(k % L)) if k % L else IDENTITY


def mul(point: bytes, k: int, what: str = "element") -> bytes:
    """k·P for a prime-order ``point``; libsodium validates P (raises GroupError if it is not in the subgroup)."""
    k %= L
    if not k:
        return IDENTITY
    try:
        return _mul(serialize_scalar(k), point)
    except RuntimeError:
        raise GroupError(
            f"{what}: not a valid prime-order group element (identity, small order or not on the curve)"
        ) from None


def add(p: bytes, q: bytes) -> bytes:
    """P + Q (either may be the identity). Inputs must be valid encodings (validate them first)."""
    return _add(p, q)


def add_all(points: list[bytes]) -> bytes:
    """Sum of the points (identity for an empty list)."""
    if not points:
        return IDENTITY
    acc = points[0]
    for p in points[1:]:
        acc = _add(acc, p)
    return acc


def invert_all(values: list[int]) -> list[int]:
    """Modular inverses of non-zero scalars with one exponentiation (Montgomery's trick)."""
    prefix = [1] * (len(values) + 1)
    for i, v in enumerate(values):
        prefix[i + 1] = prefix[i] * v % L
    inv = pow(prefix[-1], -1, L)
    out = [0] * len(values)
    for i in range(len(values) - 1, -1, -1):
        out[i] = prefix[i] * inv % L
        inv = inv * values[i] % L
    return out
