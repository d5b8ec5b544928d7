"""The event blob envelope posted to DA: versioned, magic-prefixed, size-capped, Ed25519-signed.

Layout: ``b"DSDNEV" | version (1 byte) | signer public key (32) | signature (64) | body``, where body is
msgpack ``[origin id, [event bytes, ...]]`` and the signature covers ``magic | version | key | body``.
DA namespaces are public, so consumers accept a blob only if its signer is a cluster member, and keep
only the events whose origin is that member's id (the others are counted as ``wrong_origin``).

Acceptance is a property of the protocol, the same on every coordinator: a blob of up to
``MAX_BLOB_BYTES`` is accepted whatever this coordinator's ``DA_BLOB_MAX_BYTES`` (which only limits the
blobs it posts itself), so coordinators configured differently never disagree on which events exist.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import msgpack
import nacl.exceptions
import nacl.signing

from node.events import EventTuple, decode_events

MAGIC = b"DSDNEV"
VERSION = 1
HEADER = len(MAGIC) + 1 + 32 + 64
BODY_OVERHEAD = 64  # msgpack array headers and the origin string's header, generously
MAX_EVENTS_PER_BLOB = 100_000
# The largest blob any coordinator accepts (the protocol's limit: a Celestia blob of 1.9 MiB; blob stores take
# 2 MiB bodies). DA_BLOB_MAX_BYTES may lower what a coordinator posts, never what it accepts.
MAX_BLOB_BYTES = 1_992_294


class BlobError(ValueError):
    """Bytes that are not an acceptable event blob; ``reason`` is a short counter label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass(frozen=True)
class DecodedBlob:
    signer: bytes
    origin: str  # as the blob declares it
    # the valid events whose origin is the signer's member id, as plain tuples in Event's field order
    # (Event._make(e) gives the named view; State.apply_events reads them as they are)
    events: list[EventTuple]
    invalid_events: int  # undecodable events
    wrong_origin: int = 0  # valid events whose origin is not the signer's member id


def encode_blob(key: nacl.signing.SigningKey, origin: str, raw_events: list[bytes]) -> bytes:
    body = msgpack.packb([origin, raw_events], use_bin_type=True)
    pub = bytes(key.verify_key)
    head = MAGIC + bytes((VERSION,)) + pub
    sig = key.sign(head + body).signature
    return head + sig + body


def blob_size(origin: str, raw_events: list[bytes]) -> int:
    """Upper bound of the encoded size, for filling a blob up to the cap without encoding it."""
    return HEADER + BODY_OVERHEAD + len(origin.encode()) + sum(len(r) + 5 for r in raw_events)


def expected_origin(signer: bytes, declared: str, member_ids: Mapping[bytes, str]) -> str | None:
    """The only origin a blob's events may carry: the signer's member id when the cluster configuration
    binds one to its key (``member_ids``: key -> id); for a member listed by key alone, the origin the blob
    declares, unless that id is bound to another member's key (then None: no event is accepted)."""
    bound = member_ids.get(signer)
    if bound is not None:
        return bound
    if declared in member_ids.values():
        return None
    return declared


def decode_blob(data: bytes, members: frozenset[bytes], *,
                member_ids: Mapping[bytes, str] | None = None) -> DecodedBlob:
    """Verify and decode; raise BlobError (not ours / unsigned / malformed). Bad events are skipped
    and counted in ``invalid_events``, events from another origin than the signer's (see
    ``expected_origin``) in ``wrong_origin``; the rest of a validly signed blob is kept."""
    if len(data) > MAX_BLOB_BYTES:
        raise BlobError("too_large", f"{len(data)} bytes; the protocol's limit is {MAX_BLOB_BYTES}")
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
                              max_bin_len=MAX_BLOB_BYTES, max_str_len=1024, max_map_len=0)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise BlobError("malformed", str(exc)) from None
    if type(obj) is not list or len(obj) != 2 or type(obj[0]) is not str or type(obj[1]) is not list:
        raise BlobError("malformed", "body is not [origin, [events]]")
    origin = expected_origin(pub, obj[0], member_ids or {})
    events, invalid, wrong = decode_events(obj[1], origin)
    return DecodedBlob(pub, obj[0], events, invalid, wrong)
