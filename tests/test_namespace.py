"""Celestia version-0 namespace rules: parsing, validation, reserved namespaces, derivation from a name."""

from __future__ import annotations

import pytest

from node.da import namespace as n
from node.da.namespace import NamespaceError, namespace_from_name, parse_namespace, validate_namespace

VALID = [
    "0000000000000000000000000000000000000001010101010101010101",
    "0000000000000000000000000000000000000011111111111111111111",
    "00000000000000000000000000000000000000000000c27fc4694d31d1",
    "0000000000000000000000000000000000000000000000000000000100",  # just above the max primary reserved
    "00000000000000000000000000000000000000ffffffffffffffffffff",
]

RESERVED = [
    n.TX_NAMESPACE,
    n.INTERMEDIATE_STATE_ROOTS_NAMESPACE,
    n.PAY_FOR_BLOB_NAMESPACE,
    n.PRIMARY_RESERVED_PADDING_NAMESPACE,
    n.MAX_PRIMARY_RESERVED_NAMESPACE,
    bytes(29),
    bytes(28) + b"\x03",  # unnamed, but inside the primary reserved range
    bytes(28) + b"\x80",
    n.MIN_SECONDARY_RESERVED_NAMESPACE,
    n.TAIL_PADDING_NAMESPACE,
    n.PARITY_SHARES_NAMESPACE,
]


def _assert_helpful(err: NamespaceError, reason: str) -> None:
    msg = str(err)
    assert reason in msg
    assert "dsdn namespace" in msg


@pytest.mark.parametrize("text", VALID)
def test_valid(text: str) -> None:
    ns = parse_namespace(text)
    assert ns == bytes.fromhex(text)
    validate_namespace(ns)
    assert parse_namespace("0x" + text.upper()) == ns


def test_reserved_values() -> None:
    assert n.TX_NAMESPACE.hex() == "00" * 28 + "01"
    assert n.INTERMEDIATE_STATE_ROOTS_NAMESPACE.hex() == "00" * 28 + "02"
    assert n.PAY_FOR_BLOB_NAMESPACE.hex() == "00" * 28 + "04"
    assert n.PRIMARY_RESERVED_PADDING_NAMESPACE.hex() == n.MAX_PRIMARY_RESERVED_NAMESPACE.hex() == "00" * 28 + "ff"
    assert n.MIN_SECONDARY_RESERVED_NAMESPACE.hex() == "ff" + "00" * 28
    assert n.TAIL_PADDING_NAMESPACE.hex() == "ff" * 28 + "fe"
    assert n.PARITY_SHARES_NAMESPACE.hex() == "ff" * 29


@pytest.mark.parametrize("ns", RESERVED, ids=lambda b: b.hex())
def test_reserved_rejected(ns: bytes) -> None:
    assert n.is_reserved(ns)
    with pytest.raises(NamespaceError) as exc:
        validate_namespace(ns)
    msg = str(exc.value)
    assert "dsdn namespace" in msg
    assert "reserve" in msg or "version" in msg
    with pytest.raises(NamespaceError):
        parse_namespace(ns.hex())


def test_seed_all_zero_example_rejected() -> None:
    with pytest.raises(NamespaceError) as exc:
        parse_namespace("0" * 58)
    _assert_helpful(exc.value, "reserve")
    assert isinstance(exc.value, ValueError)


SHORT = "00000000000000000000000000000000000000010101010101010101"


@pytest.mark.parametrize("text", ["", "00", "0" * 56, "0" * 60, SHORT])
def test_wrong_length(text: str) -> None:
    with pytest.raises(NamespaceError) as exc:
        parse_namespace(text)
    _assert_helpful(exc.value, "58")


def test_wrong_length_bytes() -> None:
    with pytest.raises(NamespaceError) as exc:
        validate_namespace(bytes(19) + b"\x01" * 9)
    _assert_helpful(exc.value, "29 bytes")


def test_bad_hex() -> None:
    with pytest.raises(NamespaceError) as exc:
        parse_namespace("00000000000000000000000000000000000000010101010101010101zz")
    _assert_helpful(exc.value, "not hexadecimal")


@pytest.mark.parametrize("text", ["0100000000000000000000000000000000000001010101010101010101",
                                  "1000000000000000000000000000000000000000000000000000000000",
                                  "1111111111111111111111111111111111111111111111111111111111",
                                  "ff00000000000000000000000000000000000001010101010101010101"])
def test_wrong_version(text: str) -> None:
    with pytest.raises(NamespaceError) as exc:
        parse_namespace(text)
    _assert_helpful(exc.value, "version")


@pytest.mark.parametrize("pos", range(1, 19))
def test_nonzero_prefix(pos: int) -> None:
    ns = bytearray(bytes(19) + b"\x01" * 10)
    ns[pos] = 0x01
    with pytest.raises(NamespaceError) as exc:
        validate_namespace(bytes(ns))
    _assert_helpful(exc.value, "18 zero bytes")


def test_spec_invalid_example_prefix() -> None:
    with pytest.raises(NamespaceError, match="18 zero bytes"):
        parse_namespace("0000000000000000000000000111111111111111111111111111111111")


def test_from_name_deterministic_valid_distinct() -> None:
    a = namespace_from_name("my-cluster")
    assert a == namespace_from_name("my-cluster")
    validate_namespace(a)
    assert a[:19] == bytes(19) and len(a) == 29
    names = [f"cluster-{i}" for i in range(200)] + ["a", "b", "dsdn", "ü"]
    derived = {namespace_from_name(x) for x in names}
    assert len(derived) == len(names)
    for ns in derived:
        validate_namespace(ns)
    assert parse_namespace(a.hex()) == a


def test_from_name_avoids_reserved(monkeypatch: pytest.MonkeyPatch) -> None:
    real = n._user_bytes

    def fake(name: str, attempt: int) -> bytes:
        if attempt == 0:
            return bytes(9) + b"\x04"  # would be the pay-for-blob namespace
        if attempt == 1:
            return bytes(10)  # would be the all-zero namespace
        return real(name, attempt)

    monkeypatch.setattr(n, "_user_bytes", fake)
    ns = namespace_from_name("x")
    validate_namespace(ns)
    assert ns == namespace_from_name("x")
    assert ns[19:] == real("x", 2)


@pytest.mark.parametrize("name", ["", "   "])
def test_from_name_rejects_empty(name: str) -> None:
    with pytest.raises(ValueError):
        namespace_from_name(name)
