"""The signed blob envelope: members only, tamper-evident, size-capped, bad events counted."""

from __future__ import annotations

import msgpack
import nacl.signing
import pytest

from node import events as ev
from node.blob import BlobError, blob_size, decode_blob, encode_blob
from node.events import make_event

KEY = nacl.signing.SigningKey(b"\x01" * 32)
OTHER = nacl.signing.SigningKey(b"\x02" * 32)
MEMBERS = frozenset({bytes(KEY.verify_key)})


def events(n: int) -> list[ev.Event]:
    return [make_event(ev.OBJECT_REGISTERED, (i, 0), "c0", hash=f"h{i}", size=i) for i in range(n)]


def test_roundtrip() -> None:
    evs = events(5)
    blob = encode_blob(KEY, "c0", [e.raw for e in evs])
    assert len(blob) <= blob_size("c0", [e.raw for e in evs])
    decoded = decode_blob(blob, MEMBERS, 1 << 20)
    assert decoded.events == evs and decoded.origin == "c0" and decoded.invalid_events == 0


def test_rejections_carry_a_reason() -> None:
    raws = [e.raw for e in events(3)]
    good = encode_blob(KEY, "c0", raws)
    cases = {
        "foreign": b"hello world",
        "unknown_signer": encode_blob(OTHER, "c0", raws),
        "bad_signature": good[:-1] + bytes([good[-1] ^ 1]),
        "too_large": good,
        "bad_version": good[:6] + b"\x09" + good[7:],
    }
    for reason, data in cases.items():
        with pytest.raises(BlobError) as err:
            decode_blob(data, MEMBERS, 100 if reason == "too_large" else 1 << 20)
        assert err.value.reason == reason


def test_signed_blob_with_a_bad_event_keeps_the_good_ones() -> None:
    raws = [e.raw for e in events(2)] + [msgpack.packb([1, "nope", 1, 0, "c0", []])]
    decoded = decode_blob(encode_blob(KEY, "c0", raws), MEMBERS, 1 << 20)
    assert len(decoded.events) == 2 and decoded.invalid_events == 1
