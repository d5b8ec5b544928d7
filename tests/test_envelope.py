"""Message schemas: every required field present and valid, no unknown field, optional fields absent or valid."""

from __future__ import annotations

import pytest

from protocol.envelope import Message, ProtocolError, Registry, is_bytes, is_int, optional


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
