"""The DKG's wire messages: signed dataclasses with a canonical signing encoding and strict wire codecs.

Owns the five message kinds of :mod:`consensus.dkg` (round-1 commitments with proof of knowledge and an
ephemeral encryption key, encrypted round-2 shares, complaints, confirmations, aborts), how each is signed by
its sender's Ed25519 identity key (over an unambiguous length-prefixed encoding bound to the session context),
and ``to_wire()``/``from_wire()``: plain dicts of str keys to bytes/ints/strs/lists that msgpack carries,
decoded with exact key sets, exact types and sizes (anything else raises :class:`DkgMessageError`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import nacl.exceptions
import nacl.signing

DOMAIN = b"dsdn/dkg/v1"
MAX_PARTICIPANTS = 255
SESSION_ID_SIZE = 32
BOX_SIZE = 24 + 32 + 16  # SecretBox nonce + 32-byte scalar + Poly1305 tag
PROOF_SIZE = 64  # a Chaum-Pedersen proof: challenge || response
MAX_REASON = 200  # characters of an abort's reason
REASONS = frozenset({"bad_proof", "bad_share", "equivocation", "bad_confirm"})


class DkgMessageError(ValueError):
    """A DKG message is malformed, unauthenticated, or not meant for this participant/session."""


def encode(*items: object) -> bytes:
    """Unambiguous encoding of bytes / non-negative ints / strs / nested lists (for signing and hashing)."""
    out = bytearray()
    for it in items:
        if isinstance(it, bytes):
            out += b"b" + len(it).to_bytes(4, "big") + it
        elif isinstance(it, bool):
            raise TypeError("bool is not encodable")
        elif isinstance(it, int):
            out += b"i" + it.to_bytes(8, "big")
        elif isinstance(it, str):
            raw = it.encode()
            out += b"s" + len(raw).to_bytes(4, "big") + raw
        elif isinstance(it, list | tuple):
            out += b"l" + len(it).to_bytes(4, "big") + encode(*it)
        else:
            raise TypeError(f"cannot encode {type(it).__name__}")
    return bytes(out)


# ---- strict field readers --------------------------------------------------------------------------------


def _bytes(d: Mapping[str, Any], key: str, size: int | tuple[int, ...]) -> bytes:
    v = d[key]
    sizes = (size,) if isinstance(size, int) else size
    if type(v) is not bytes or len(v) not in sizes:
        raise DkgMessageError(f"field {key!r}: expected bytes of length {' or '.join(map(str, sizes))}")
    return v


def _ident(d: Mapping[str, Any], key: str) -> int:
    v = d[key]
    if type(v) is not int or not 1 <= v <= MAX_PARTICIPANTS:
        raise DkgMessageError(f"field {key!r}: expected an identifier in [1, {MAX_PARTICIPANTS}]")
    return v


def _points(d: Mapping[str, Any], key: str, min_len: int) -> tuple[bytes, ...]:
    v = d[key]
    if type(v) not in (list, tuple) or not min_len <= len(v) <= MAX_PARTICIPANTS:
        raise DkgMessageError(f"field {key!r}: expected a list of {min_len}..{MAX_PARTICIPANTS} items")
    if any(type(p) is not bytes or len(p) != 32 for p in v):
        raise DkgMessageError(f"field {key!r}: every item must be 32 bytes")
    return tuple(v)


# ---- messages -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """Common header: session id, sender identifier, Ed25519 signature of the sender's identity key."""

    TYPE: ClassVar[str] = ""
    FIELDS: ClassVar[tuple[str, ...]] = ()

    session: bytes
    sender: int

    def body(self) -> tuple[object, ...]:
        return tuple(getattr(self, f) for f in self.FIELDS)

    def signing_bytes(self, context: bytes) -> bytes:
        return encode(DOMAIN, self.TYPE, context, self.session, self.sender, *self.body())

    @property
    def sig(self) -> bytes:
        return getattr(self, "signature", b"")

    def signed(self, key: nacl.signing.SigningKey, context: bytes) -> Self:
        return dataclasses.replace(self, signature=key.sign(self.signing_bytes(context)).signature)  # type: ignore[call-arg]

    def verify_signature(self, identity_key: bytes, context: bytes) -> bool:
        try:
            nacl.signing.VerifyKey(identity_key).verify(self.signing_bytes(context), self.sig)
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, TypeError):
            return False
        return True

    def same_content(self, other: Message) -> bool:
        return type(self) is type(other) and (self.session, self.sender, self.body()) == (
            other.session, other.sender, other.body())

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"type": self.TYPE, "session": self.session, "sender": self.sender}
        for f in self.FIELDS:
            v = getattr(self, f)
            wire[f] = [e.to_wire() for e in v] if f == "evidence" else list(v) if isinstance(v, tuple) else v
        wire["sig"] = self.sig
        return wire

    @classmethod
    def _parse(cls, d: Mapping[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_wire(cls, d: object) -> Self:
        msg = decode(d)
        if not isinstance(msg, cls):
            raise DkgMessageError(f"expected a {cls.TYPE} message, got {msg.TYPE}")
        return msg


@dataclass(frozen=True)
class Round1(Message):
    """Broadcast: commitments to the sender's polynomial coefficients, a Schnorr proof of knowledge of a_0, and the
    sender's ephemeral encryption key for this session (shares to and from it are encrypted under a key derived
    from the pair's ephemeral Diffie-Hellman point)."""

    TYPE: ClassVar[str] = "dkg.round1"
    FIELDS: ClassVar[tuple[str, ...]] = ("commitment", "proof", "enc_key")

    commitment: tuple[bytes, ...]
    proof: bytes  # R || mu
    enc_key: bytes  # E = e·B
    signature: bytes = b""

    @classmethod
    def _parse(cls, d: Mapping[str, Any]) -> dict[str, Any]:
        return {"commitment": _points(d, "commitment", 1), "proof": _bytes(d, "proof", 64),
                "enc_key": _bytes(d, "enc_key", 32)}


@dataclass(frozen=True)
class Round2(Message):
    """To one recipient: the sender's polynomial evaluated at the recipient, SecretBox-encrypted to it, naming the
    recipient's round-one encryption key it was sealed to (signed with it: else a complainer could sign a second
    round one of its own, with a key the box does not open under, and "prove" any honest dealer's share bad; a
    reviewer's reproduction framed every honest dealer of a session)."""

    TYPE: ClassVar[str] = "dkg.round2"
    FIELDS: ClassVar[tuple[str, ...]] = ("recipient", "box", "recipient_key")

    recipient: int
    box: bytes
    recipient_key: bytes = b""
    signature: bytes = b""

    @classmethod
    def _parse(cls, d: Mapping[str, Any]) -> dict[str, Any]:
        return {"recipient": _ident(d, "recipient"), "box": _bytes(d, "box", BOX_SIZE),
                "recipient_key": _bytes(d, "recipient_key", 32)}


@dataclass(frozen=True)
class Confirm(Message):
    """Broadcast: the group key, every verifying share (identifier order) and the round-1 transcript hash."""

    TYPE: ClassVar[str] = "dkg.confirm"
    FIELDS: ClassVar[tuple[str, ...]] = ("group_public_key", "verifying_shares", "transcript")

    group_public_key: bytes
    verifying_shares: tuple[bytes, ...]
    transcript: bytes
    signature: bytes = b""

    @classmethod
    def _parse(cls, d: Mapping[str, Any]) -> dict[str, Any]:
        return {"group_public_key": _bytes(d, "group_public_key", 32),
                "verifying_shares": _points(d, "verifying_shares", 2), "transcript": _bytes(d, "transcript", 64)}


@dataclass(frozen=True)
class Complaint(Message):
    """Broadcast: the sender accuses ``accused``; ``evidence`` holds signed messages that prove it (see
    :func:`consensus.dkg.judge_complaint`). For a bad share, ``key`` is the pair's ephemeral Diffie-Hellman point
    of this session and ``proof`` a Chaum-Pedersen proof that it is the right one, so anyone can open the share."""

    TYPE: ClassVar[str] = "dkg.complaint"
    FIELDS: ClassVar[tuple[str, ...]] = ("accused", "reason", "key", "proof", "evidence")

    accused: int
    reason: str
    key: bytes
    proof: bytes
    evidence: tuple[Message, ...]
    signature: bytes = b""

    def body(self) -> tuple[object, ...]:
        return (self.accused, self.reason, self.key, self.proof,
                [encode(e.signing_bytes(b""), e.sig) for e in self.evidence])

    @classmethod
    def _parse(cls, d: Mapping[str, Any]) -> dict[str, Any]:
        reason = d["reason"]
        if type(reason) is not str or reason not in REASONS:
            raise DkgMessageError(f"field 'reason': expected one of {sorted(REASONS)}")
        ev = d["evidence"]
        if type(ev) not in (list, tuple) or len(ev) > MAX_PARTICIPANTS + 1:
            raise DkgMessageError(f"field 'evidence': expected a list of at most {MAX_PARTICIPANTS + 1} messages")
        evidence = tuple(decode(e, nested=True) for e in ev)
        return {"accused": _ident(d, "accused"), "reason": reason, "key": _bytes(d, "key", (0, 32)),
                "proof": _bytes(d, "proof", (0, PROOF_SIZE)), "evidence": evidence}


@dataclass(frozen=True)
class Abort(Message):
    """Broadcast: the sender leaves the session without confirming it (and never will confirm it)."""

    TYPE: ClassVar[str] = "dkg.abort"
    FIELDS: ClassVar[tuple[str, ...]] = ("reason",)

    reason: str
    signature: bytes = b""

    @classmethod
    def _parse(cls, d: Mapping[str, Any]) -> dict[str, Any]:
        reason = d["reason"]
        if type(reason) is not str or len(reason) > MAX_REASON or not _encodable(reason):
            raise DkgMessageError(f"field 'reason': expected a string of at most {MAX_REASON} characters")
        return {"reason": reason}


def _encodable(text: str) -> bool:
    """Whether ``text`` has a UTF-8 encoding (a lone surrogate has none: signing_bytes raised UnicodeEncodeError out
    of ``receive``, before any signature check: a reviewer's fuzzing of the pure core)."""
    try:
        text.encode()
        return True
    except UnicodeEncodeError:
        return False


_KINDS: dict[str, type[Message]] = {k.TYPE: k for k in (Round1, Round2, Confirm, Complaint, Abort)}
_EVIDENCE_KINDS = (Round1, Round2, Confirm, Abort)


def decode(wire: object, *, nested: bool = False) -> Message:
    """Strictly decode a wire dict into a message (signature not checked here: that needs the session context)."""
    if not isinstance(wire, Mapping):
        raise DkgMessageError("expected a map")
    kind = _KINDS.get(wire.get("type")) if isinstance(wire.get("type"), str) else None
    if kind is None or (nested and kind not in _EVIDENCE_KINDS):
        raise DkgMessageError(f"unknown or unexpected message type {wire.get('type')!r}")
    expected = {"type", "session", "sender", "sig", *kind.FIELDS}
    if set(wire) != expected:
        raise DkgMessageError(f"{kind.TYPE}: fields {sorted(map(str, wire))} != {sorted(expected)}")
    fields = kind._parse(wire)
    make: Callable[..., Message] = kind
    return make(session=_bytes(wire, "session", SESSION_ID_SIZE), sender=_ident(wire, "sender"),
                signature=_bytes(wire, "sig", 64), **fields)
