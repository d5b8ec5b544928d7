"""Message schemas: every required field present and valid, no unknown field, optional fields absent or valid."""

from __future__ import annotations

import tracemalloc

import msgpack
import pytest

from protocol.envelope import Message, ProtocolError, Registry, UnknownType, is_bytes, is_int, optional


def registry() -> Registry:
    reg = Registry()
    reg.register("t.msg", {"batch": is_bytes(4), "spare": optional(is_int(0, 1))})
    return reg


@pytest.mark.parametrize("body", [{"batch": b"abcd"}, {"batch": b"abcd", "spare": 1},
                                  {"batch": b"abcd", "spare": None}])
def test_an_optional_field_may_be_absent_or_none(body: dict) -> None:
    reg = registry()
    assert reg.decode(reg.encode(Message("t.msg", body))).body == body


@pytest.mark.parametrize("body", [{}, {"spare": 1}, {"batch": b"abcd", "spare": 2}, {"batch": b"abc"},
                                  {"batch": b"abcd", "other": 1}])
def test_a_missing_required_an_unknown_or_a_bad_field_is_refused(body: dict) -> None:
    with pytest.raises(ProtocolError):
        registry().encode(Message("t.msg", body))


NESTED = b"\xdd" + (500_000).to_bytes(4, "big") + b"\x80" * 500_000  # an array of 500,000 empty maps


def _map(*pairs: tuple[str, bytes]) -> bytes:
    """An envelope written by hand: a map of these entries (name, encoded value) in this order."""
    return bytes([0x80 | len(pairs)]) + b"".join(msgpack.packb(k) + v for k, v in pairs)


def test_an_unknown_type_is_found_before_its_body_is_built() -> None:
    """From a review: the body of an unknown type (counted apart, never as malformed: a newer member's) was built
    whole first; a member's 1 MiB of empty maps cost 50 ms and 70 MiB per message, without end."""
    reg = registry()
    body = _map(("f", NESTED))
    for data in (_map(("v", b"\x01"), ("type", msgpack.packb("x.new")), ("body", body)),  # as members write it
                 _map(("body", body), ("type", msgpack.packb("x.new")), ("v", b"\x01")),  # another order
                 _map(("v", b"\x01"), ("type", msgpack.packb("x" * 5000)), ("body", body))):  # a long name
        tracemalloc.start()
        try:
            with pytest.raises(UnknownType):
                reg.decode(data)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 1 << 20, peak  # the body was never built (it was ~35 MiB)


def test_a_type_named_twice_or_written_oddly_is_malformed_not_unknown() -> None:
    """The look ahead and the decode must agree on the type: otherwise a body of an unknown type is built."""
    reg = registry()
    body = _map(("batch", msgpack.packb(b"abcd")))
    ok = _map(("v", b"\x01"), ("type", msgpack.packb("t.msg")), ("body", body))
    assert reg.decode(ok).body == {"batch": b"abcd"}
    assert reg.decode(_map(("v", b"\x01"), ("type", b"\xd9\x05t.msg"), ("body", body))).type == "t.msg"  # (a str8)
    for data in (_map(("v", b"\x01"), ("type", msgpack.packb("t.msg")), ("body", body), ("type",
                                                                                         msgpack.packb("x.new"))),
                 b"\x83\xd9\x04type" + msgpack.packb("x.new") + msgpack.packb("v") + b"\x01" + msgpack.packb("body")
                 + body):  # the key "type" as a str8
        with pytest.raises(ProtocolError) as info:
            reg.decode(data)
        assert type(info.value) is ProtocolError, data[:20]  # (not UnknownType: counted as malformed)


def test_a_huge_version_is_reported_short() -> None:
    """From a review: a 1 MiB version field was repeated whole in the error, kept as the link's last error and
    served on /cluster/peers."""
    data = _map(("v", msgpack.packb("9" * 500_000)), ("type", msgpack.packb("t.msg")), ("body", b"\x80"))
    with pytest.raises(ProtocolError) as info:
        registry().decode(data)
    assert len(str(info.value)) < 100


def test_every_cut_of_a_message_is_malformed_and_nothing_else() -> None:
    """From a review: a message cut after the type's first byte (9 bytes) raised IndexError from the look ahead, which
    took the link down as an "unexpected error" instead of counting one malformed message."""
    reg = registry()
    whole = reg.encode(Message("t.msg", {"batch": b"abcd"}, id=7))
    for n in range(len(whole)):
        with pytest.raises(ProtocolError):
            reg.decode(whole[:n])
