"""The event blob envelope posted to DA: versioned, magic-prefixed, size-capped, Ed25519-signed.

Layout: ``b"DSDNEV" | version (1 byte) | signer public key (32) | signature (64) | body``, where body is
msgpack ``[origin id, [event bytes, ...]]`` and the signature covers ``magic | version | key | body``.
DA namespaces are public, so consumers accept a blob only if its signer is a cluster member.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack
import nacl.exceptions
import nacl.signing

from node.events import Event, EventDecodeError, decode_event

MAGIC = b"DSDNEV"
VERSION = 1
HEADER = len(MAGIC) + 1 + 32 + 64
BODY_OVERHEAD = 64  # msgpack array headers and the origin string's header, generously
MAX_EVENTS_PER_BLOB = 100_000


class BlobError(ValueError):
    """Bytes that are not an acceptable event blob; ``reason`` is a short counter label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass(frozen=True)
class DecodedBlob:
    signer: bytes
    origin: str
    events: list[Event]
    invalid_events: int


def encode_blob(key: nacl.signing.SigningKey, origin: str, raw_events: list[bytes]) -> bytes:
    body = msgpack.packb([origin, raw_events], use_bin_type=True)
    pub = bytes(key.verify_key)
    head = MAGIC + bytes((VERSION,)) + pub
    sig = key.sign(head + body).signature
    return head + sig + body


def blob_size(origin: str, raw_events: list[bytes]) -> int:
    """Upper bound of the encoded size, for filling a blob up to the cap without encoding it."""
    return HEADER + BODY_OVERHEAD + len(origin.encode()) + sum(len(r) + 5 for r in raw_events)


def decode_blob(data: bytes, members: frozenset[bytes], max_bytes: int) -> DecodedBlob:
    """Verify and decode; raise BlobError (not ours / unsigned / malformed). Bad events are skipped
    and counted in ``invalid_events``, the rest of a validly signed blob is kept."""
    if len(data) > max_bytes:
        raise BlobError("too_large", f"{len(data)} bytes")
    if not data.startswith(MAGIC):
        raise BlobError("foreign")
    if len(data) < HEADER or data[len(MAGIC)] != VERSION:
        raise BlobError("bad_version")
    pub = data[len(MAGIC) + 1 : len(MAGIC) + 33]
    sig = data[len(MAGIC) + 33 : HEADER]
    body = data[HEADER:]
    if pub not in members:
        raise BlobError("unknown_signer", pub.hex())
    try:
        nacl.signing.VerifyKey(pub).verify(data[: len(MAGIC) + 33] + body, sig)
    except nacl.exceptions.BadSignatureError:
        raise BlobError("bad_signature") from None
    try:
        obj = msgpack.unpackb(body, raw=False, use_list=True, max_array_len=MAX_EVENTS_PER_BLOB,
                              max_bin_len=max_bytes, max_str_len=1024, max_map_len=0)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise BlobError("malformed", str(exc)) from None
    if type(obj) is not list or len(obj) != 2 or type(obj[0]) is not str or type(obj[1]) is not list:
        raise BlobError("malformed", "body is not [origin, [events]]")
    events, invalid = [], 0
    for raw in obj[1]:
        try:
            if type(raw) is not bytes:
                raise EventDecodeError("event is not bytes")
            events.append(decode_event(raw))
        except EventDecodeError:
            invalid += 1
    return DecodedBlob(pub, obj[0], events, invalid)
