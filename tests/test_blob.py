"""The signed blob envelope: members only, tamper-evident, size-capped by the protocol, bad events and events
of another origin than the signer's counted."""

from __future__ import annotations

import struct

import msgpack
import nacl.signing
import pytest

from node import events as ev
from node.blob import MAX_BLOB_BYTES, BlobError, blob_size, decode_blob, encode_blob
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
    decoded = decode_blob(blob, MEMBERS)
    assert decoded.events == evs and decoded.origin == "c0" and decoded.invalid_events == 0


def test_rejections_carry_a_reason() -> None:
    raws = [e.raw for e in events(3)]
    good = encode_blob(KEY, "c0", raws)
    cases = {
        "foreign": b"hello world",
        "unknown_signer": encode_blob(OTHER, "c0", raws),
        "bad_signature": good[:-1] + bytes([good[-1] ^ 1]),
        "too_large": good + b"\0" * MAX_BLOB_BYTES,
        "bad_version": good[:6] + b"\x09" + good[7:],
    }
    for reason, data in cases.items():
        with pytest.raises(BlobError) as err:
            decode_blob(data, MEMBERS)
        assert err.value.reason == reason


def test_signed_blob_with_a_bad_event_keeps_the_good_ones() -> None:
    raws = [e.raw for e in events(2)] + [msgpack.packb([1, "nope", 1, 0, "c0", []])]
    decoded = decode_blob(encode_blob(KEY, "c0", raws), MEMBERS)
    assert len(decoded.events) == 2 and decoded.invalid_events == 1


def test_acceptance_is_the_protocol_limit_not_a_local_setting() -> None:
    # a blob as large as the protocol allows, from a member whose DA_BLOB_MAX_BYTES is the maximum
    filler = [make_event(ev.OBJECT_REGISTERED, (i, 0), "c0", hash="h" * 200, size=i).raw for i in range(8000)]
    raws: list[bytes] = []
    size = blob_size("c0", [])
    for raw in filler:
        if size + len(raw) + 5 > MAX_BLOB_BYTES:
            break
        raws.append(raw)
        size += len(raw) + 5
    blob = encode_blob(KEY, "c0", raws)
    assert 1_800_000 < len(blob) <= MAX_BLOB_BYTES  # far above a 4096-byte DA_BLOB_MAX_BYTES
    assert len(decode_blob(blob, MEMBERS).events) == len(raws)  # no local setting can refuse it
    with pytest.raises(BlobError) as err:
        decode_blob(blob + b"\0" * (MAX_BLOB_BYTES - len(blob) + 1), MEMBERS)
    assert err.value.reason == "too_large"


def test_events_must_carry_the_signers_member_id() -> None:
    members = frozenset({bytes(KEY.verify_key), bytes(OTHER.verify_key)})
    ids = {bytes(KEY.verify_key): "c0", bytes(OTHER.verify_key): "c1"}
    mine = make_event(ev.NODE_UNREGISTERED, (1, 0), "c0", id="n")
    forged = make_event(ev.NODE_UNREGISTERED, (2, 0), "c1", id="n")  # c0 signing an event of c1
    decoded = decode_blob(encode_blob(KEY, "c0", [mine.raw, forged.raw]), members, member_ids=ids)
    assert decoded.events == [mine] and decoded.wrong_origin == 1 and decoded.invalid_events == 0
    # the blob's declared origin does not matter when the key is bound to an id
    decoded = decode_blob(encode_blob(KEY, "c1", [mine.raw, forged.raw]), members, member_ids=ids)
    assert decoded.events == [mine] and decoded.wrong_origin == 1


def test_a_member_listed_by_key_alone_speaks_only_for_the_origin_it_declares() -> None:
    members = frozenset({bytes(KEY.verify_key), bytes(OTHER.verify_key)})
    a = make_event(ev.NODE_UNREGISTERED, (1, 0), "a", id="n")
    b = make_event(ev.NODE_UNREGISTERED, (2, 0), "b", id="n")
    decoded = decode_blob(encode_blob(KEY, "a", [a.raw, b.raw]), members)
    assert decoded.events == [a] and decoded.wrong_origin == 1
    # nor may it declare an id the configuration binds to another member's key
    ids = {bytes(OTHER.verify_key): "b"}
    decoded = decode_blob(encode_blob(KEY, "b", [a.raw, b.raw]), members, member_ids=ids)
    assert decoded.events == [] and decoded.wrong_origin == 2


def test_the_version_must_be_the_int_1_and_ints_stop_at_max_u63_in_both_decoders() -> None:
    """From a review: the checks a blob's events go through inline (``decode_events``) and one event's
    (``decode_event``) must refuse a version that only equals 1 (``True``, ``1.0``) and an int one past MAX_U63,
    and take an int of exactly MAX_U63; a version compared with ``==``, or ints bounded with ``<``, slipped
    through one of them."""
    def raw(version: object, size: int) -> bytes:
        return msgpack.packb([version, ev.OBJECT_REGISTERED, 5, 0, "c0", ["h", size]], use_bin_type=True)

    good = raw(1, ev.MAX_U63)
    assert ev.decode_event(good).fields == ("h", ev.MAX_U63)
    events, invalid, wrong = ev.decode_events([good], "c0")
    assert [e[4] for e in events] == [("h", ev.MAX_U63)] and invalid == wrong == 0
    for bad in (raw(True, 1), raw(1.0, 1), raw(1, ev.MAX_U63 + 1)):
        with pytest.raises(ev.EventDecodeError):
            ev.decode_event(bad)
        assert ev.decode_events([bad], "c0") == ([], 1, 0), bad
        assert ev.decode_events([good, bad], "c0")[1:] == (1, 0), bad  # beside a good one: still refused


def test_the_fast_path_refuses_what_one_event_s_decoder_refuses_beside_good_events() -> None:
    """``decode_events`` checks a blob's events inline and their encoding once for the whole blob: an event of
    the wrong arity right after a good one (whose values it must not reuse), a map with the six keys of an
    event, an int or a float not in its shortest form, and two events whose bytes are split at another
    boundary (the bytes joined are the same) are each refused and counted, and the good events beside them
    kept; the same verdicts as ``decode_event`` on each."""
    good = [make_event(ev.REPLICA_HEALED, (5 + i, 0), "c0", hash="ab" * 32, node_id=f"n{i}") for i in range(3)]
    sched = make_event(ev.SCHEDULER_CONFIG, (9, 0), "c0", w_cpu=1.0, w_ram=0.5, w_gpu=0.5, w_latency=0.8, w_io=0.6)
    short = msgpack.packb([1, ev.REPLICA_HEALED, 6, 0, "c0"], use_bin_type=True)  # five elements
    as_map = msgpack.packb({1: 0, ev.REPLICA_HEALED: 0, 6: 0, 0: 0, "c0": 0, ("ab" * 32, "n9"): 0})
    wide_int = good[1].raw.replace(b"\x06", b"\xcd\x00\x06", 1)  # the wall 6 as a uint16
    float32 = sched.raw.replace(msgpack.packb(0.5), b"\xca" + struct.pack(">f", 0.5), 1)
    split = [good[1].raw + good[2].raw[:1], good[2].raw[1:]]  # two events' bytes, cut one byte late
    for bad in (short, as_map, wide_int, float32):
        with pytest.raises(ev.EventDecodeError):
            ev.decode_event(bad)
    assert ev.decode_event(sched.raw).fields == sched.fields
    cases = {
        "wrong arity after a good one": ([good[0].raw, short, good[2].raw], [good[0], good[2]], 1),
        "a map of six keys": ([good[0].raw, as_map], [good[0]], 1),
        "a wide int": ([good[0].raw, wide_int, good[2].raw], [good[0], good[2]], 1),
        "a float32": ([good[0].raw, float32], [good[0]], 1),
        "a shifted boundary": ([good[0].raw, *split], [good[0]], 2),
        "all good": ([e.raw for e in good] + [sched.raw], [*good, sched], 0),
    }
    for name, (raws, kept, invalid) in cases.items():
        decoded = decode_blob(encode_blob(KEY, "c0", raws), MEMBERS)
        assert (decoded.events, decoded.invalid_events, decoded.wrong_origin) == (kept, invalid, 0), name
