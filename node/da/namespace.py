"""Celestia namespace rules for blobs this cluster posts: parsing, validation, and derivation from a name.

A namespace is 29 bytes: a version byte and a 28-byte id. Blobs must use version 0, whose id starts
with 18 zero bytes, leaving 10 user bytes: ``00 || 00*18 || user10``. Celestia reserves for protocol
use every namespace up to ``MAX_PRIMARY_RESERVED_NAMESPACE`` (version 0, id ``00*27 || ff``; it
includes the transaction, intermediate-state-root, pay-for-blob and reserved-padding namespaces and the
all-zero namespace) and from ``MIN_SECONDARY_RESERVED_NAMESPACE`` (version 255) upwards (tail padding,
parity shares). A v0 namespace is therefore reserved exactly when the first 9 of its 10 user bytes are
zero. Sources: celestia-app ``specs/src/specs/namespace.md``, go-square ``share/namespace.go``.
"""

from __future__ import annotations

import hashlib

NAMESPACE_SIZE = 29
NAMESPACE_VERSION_SIZE = 1
NAMESPACE_ID_SIZE = 28
NAMESPACE_VERSION_ZERO = 0
NAMESPACE_VERSION_MAX = 255
#: A version-0 id starts with this many zero bytes.
V0_PREFIX_SIZE = 18
#: User-chosen bytes at the end of a version-0 id.
V0_USER_SIZE = NAMESPACE_ID_SIZE - V0_PREFIX_SIZE


def _primary_reserved(last: int) -> bytes:
    return bytes(NAMESPACE_SIZE - 1) + bytes([last])


def _secondary_reserved(last: int) -> bytes:
    return b"\xff" * (NAMESPACE_SIZE - 1) + bytes([last])


TX_NAMESPACE = _primary_reserved(0x01)
INTERMEDIATE_STATE_ROOTS_NAMESPACE = _primary_reserved(0x02)
PAY_FOR_BLOB_NAMESPACE = _primary_reserved(0x04)
PRIMARY_RESERVED_PADDING_NAMESPACE = _primary_reserved(0xFF)
MAX_PRIMARY_RESERVED_NAMESPACE = _primary_reserved(0xFF)
MIN_SECONDARY_RESERVED_NAMESPACE = bytes([NAMESPACE_VERSION_MAX]) + bytes(NAMESPACE_ID_SIZE)
TAIL_PADDING_NAMESPACE = _secondary_reserved(0xFE)
PARITY_SHARES_NAMESPACE = _secondary_reserved(0xFF)

#: Named reserved namespaces (for messages). Every namespace <= MAX_PRIMARY_RESERVED_NAMESPACE or
#: >= MIN_SECONDARY_RESERVED_NAMESPACE is reserved, named or not.
RESERVED_NAMESPACES: dict[bytes, str] = {
    bytes(NAMESPACE_SIZE): "the all-zero namespace",
    TX_NAMESPACE: "the transaction namespace",
    INTERMEDIATE_STATE_ROOTS_NAMESPACE: "the intermediate-state-roots namespace",
    PAY_FOR_BLOB_NAMESPACE: "the pay-for-blob namespace",
    PRIMARY_RESERVED_PADDING_NAMESPACE: "the primary reserved padding (max primary reserved) namespace",
    MIN_SECONDARY_RESERVED_NAMESPACE: "the min secondary reserved namespace",
    TAIL_PADDING_NAMESPACE: "the tail padding namespace",
    PARITY_SHARES_NAMESPACE: "the parity shares namespace",
}

_HOW_TO_FIX = (
    "A valid namespace is 58 hex characters: version byte 00, then 18 zero bytes, then 10 user bytes "
    "whose first 9 are not all zero. Run `dsdn namespace NAME` to derive a valid one from a name."
)


class NamespaceError(ValueError):
    """A namespace this cluster cannot post blobs to. The message says why and how to get a valid one."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"invalid Celestia namespace: {reason}. {_HOW_TO_FIX}")


def is_reserved(ns: bytes) -> bool:
    """True if the 29-byte namespace is reserved for the Celestia protocol (primary or secondary)."""
    return ns <= MAX_PRIMARY_RESERVED_NAMESPACE or ns >= MIN_SECONDARY_RESERVED_NAMESPACE


def validate_namespace(ns: bytes) -> None:
    """Raise NamespaceError unless ``ns`` is a 29-byte, version-0, non-reserved blob namespace."""
    if not isinstance(ns, bytes | bytearray | memoryview):
        raise NamespaceError(f"expected bytes, got {type(ns).__name__}")
    ns = bytes(ns)
    if len(ns) != NAMESPACE_SIZE:
        raise NamespaceError(f"it is {len(ns)} bytes long, but a namespace is {NAMESPACE_SIZE} bytes")
    if ns in RESERVED_NAMESPACES:
        raise NamespaceError(f"{ns.hex()} is {RESERVED_NAMESPACES[ns]}, which Celestia reserves for protocol use")
    version = ns[0]
    if version != NAMESPACE_VERSION_ZERO:
        raise NamespaceError(f"its version byte is {version} (0x{version:02x}); blobs must use namespace version 0")
    prefix = ns[NAMESPACE_VERSION_SIZE : NAMESPACE_VERSION_SIZE + V0_PREFIX_SIZE]
    if any(prefix):
        raise NamespaceError(f"a version-0 namespace id must start with {V0_PREFIX_SIZE} zero bytes, but {ns.hex()} "
                             "has non-zero bytes there")
    if is_reserved(ns):
        raise NamespaceError(f"{ns.hex()} is in Celestia's primary reserved range (up to "
                             f"{MAX_PRIMARY_RESERVED_NAMESPACE.hex()}), which is for protocol use")


def parse_namespace(hex_str: str) -> bytes:
    """Parse a 58-hex-character namespace (an optional ``0x`` prefix is accepted) and validate it."""
    if not isinstance(hex_str, str):
        raise NamespaceError(f"expected a hex string, got {type(hex_str).__name__}")
    text = hex_str.strip()
    if text[:2].lower() == "0x":
        text = text[2:]
    if len(text) != 2 * NAMESPACE_SIZE:
        raise NamespaceError(f"{hex_str!r} has {len(text)} characters, but a namespace is {2 * NAMESPACE_SIZE} "
                             f"hex characters ({NAMESPACE_SIZE} bytes)")
    try:
        ns = bytes.fromhex(text)
    except ValueError:
        raise NamespaceError(f"{hex_str!r} is not hexadecimal") from None
    validate_namespace(ns)
    return ns


def _user_bytes(name: str, attempt: int) -> bytes:
    """Candidate user bytes for ``name``: SHA-256(name) first, then domain-separated re-hashes."""
    raw = name.encode("utf-8")
    if attempt == 0:
        return hashlib.sha256(raw).digest()[:V0_USER_SIZE]
    tag = b"dsdn-namespace-retry:" + attempt.to_bytes(4, "big") + b":"
    return hashlib.sha256(tag + raw).digest()[:V0_USER_SIZE]


def namespace_from_name(name: str) -> bytes:
    """A valid version-0 namespace derived deterministically from ``name``.

    ``00 || 00*18 || SHA-256(name)[:10]``; in the (2^-72) case that this is reserved, deterministic
    domain-separated re-hashes are tried until one is not.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError("namespace name must be a non-empty string")
    attempt = 0
    while True:
        ns = bytes(NAMESPACE_VERSION_SIZE + V0_PREFIX_SIZE) + _user_bytes(name, attempt)
        if not is_reserved(ns):
            return ns
        attempt += 1
