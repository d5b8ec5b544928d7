"""Distributed key generation: Pedersen DKG with proofs of knowledge (the FROST paper's KeyGen) plus a
confirmation round, as a pure state machine.

Owns one participant's view of one DKG session. No I/O and no clock (like h11): the caller feeds received
messages to :meth:`DkgParticipant.receive` and sends whatever it returns (:class:`Outgoing`, to one
participant or to all others); it decides timeouts itself, using :meth:`DkgParticipant.waiting_for`.

Rounds:
1. every participant broadcasts commitments to a random degree-(t-1) polynomial and a Schnorr proof of
   knowledge of its constant term, bound to the session context (session id, threshold, participants);
   everyone echoes each round-1 message the first time it sees it (they are signed, so they can be relayed),
   so a dealer that shows different commitments to different participants is caught with proof;
2. once all n round-1 messages verified, it sends each other participant its polynomial's value there,
   encrypted end to end (SecretBox under a key derived from the pair's X25519 Box key, which comes from their
   Ed25519 identity keys, and bound to the session, dealer and recipient) and signed;
3. once all n-1 shares verified against their dealers' commitments, it derives its key share, the group key
   and every verifying share, and broadcasts a signed confirmation of (group key, verifying shares, round-1
   transcript hash). The result is COMPLETE only when all n confirmations are identical.

Every message is signed by its sender's identity key. Misbehaviour produces a signed, broadcast complaint
naming the culprit with evidence others can check: a bad proof of knowledge (the dealer's signed round-1
message), a bad share (the dealer's signed ciphertext plus the key that opens exactly that share),
equivocation (two different signed messages for one slot), or a mismatching confirmation (the accused's signed
confirmation; not proof of guilt, since the accused may have been misled). Any complaint ends the session in
FAILED; the caller restarts without the participants named with proof (``ComplaintRecord.proven``).
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import nacl.bindings as sodium
import nacl.exceptions
import nacl.public
import nacl.secret
import nacl.signing

from consensus.dkg_messages import (
    MAX_PARTICIPANTS,
    SESSION_ID_SIZE,
    Complaint,
    Confirm,
    DkgMessageError,
    Message,
    Round1,
    Round2,
    decode,
    encode,
)
from consensus.frost import CONTEXT_STRING, FrostError, KeyShare, evaluate_commitment, polynomial_evaluate
from consensus.group import (
    L,
    add,
    add_all,
    base_mul,
    hash_to_scalar,
    is_valid_element,
    mul,
    random_scalar,
    serialize_scalar,
)

__all__ = ["Complaint", "ComplaintRecord", "Confirm", "DkgError", "DkgMessageError", "DkgParticipant",
           "DkgState", "Outgoing", "Round1", "Round2", "assign_identifiers", "check_threshold", "decode",
           "default_threshold", "session_context"]


class DkgError(ValueError):
    """Invalid DKG configuration (participants, threshold, identity key, session id)."""


class DkgState(enum.Enum):
    ROUND1 = "round1"
    ROUND2 = "round2"
    CONFIRM = "confirm"
    COMPLETE = "complete"
    FAILED = "failed"


@dataclass(frozen=True)
class Outgoing:
    """A message to send: to one participant, or to every other participant when ``to`` is None."""

    to: int | None
    message: Message


@dataclass(frozen=True)
class ComplaintRecord:
    """An accusation this participant knows of. ``proven``: it checked the misbehaviour itself."""

    complainer: int
    accused: int
    reason: str
    proven: bool


def default_threshold(n: int) -> int:
    return 2 * n // 3 + 1


def check_threshold(n: int, t: int) -> None:
    """2 <= n <= 255 and n//2 + 1 <= t <= n (a strict majority must sign), else DkgError."""
    if not 2 <= n <= MAX_PARTICIPANTS:
        raise DkgError(f"need 2..{MAX_PARTICIPANTS} participants, got {n}")
    if isinstance(t, bool) or not isinstance(t, int) or not n // 2 + 1 <= t <= n:
        raise DkgError(f"threshold {t!r} out of range: need {n // 2 + 1} <= t <= {n} for n = {n}")


def assign_identifiers(identity_keys: Iterable[bytes]) -> dict[int, bytes]:
    """Identifiers 1..n for the cluster's identity keys, in byte order (every member computes the same map)."""
    keys = sorted(identity_keys)
    if len(set(keys)) != len(keys):
        raise DkgError("duplicate identity keys")
    return {i: k for i, k in enumerate(keys, start=1)}


def session_context(session_id: bytes, threshold: int, participants: Mapping[int, bytes]) -> bytes:
    """What every signature and proof in the session is bound to."""
    members = [[i, participants[i]] for i in sorted(participants)]
    return hashlib.sha512(encode(b"dsdn/dkg/context", session_id, threshold, members)).digest()


def _pok_challenge(context: bytes, identifier: int, constant: bytes, r: bytes) -> int:
    return hash_to_scalar(CONTEXT_STRING, b"dkg", context, serialize_scalar(identifier), constant, r)


class DkgParticipant:
    """One participant of one DKG session (see the module docstring for the protocol)."""

    def __init__(
        self,
        session_id: bytes,
        identity: nacl.signing.SigningKey,
        participants: Mapping[int, bytes],
        threshold: int | None = None,
    ) -> None:
        if type(session_id) is not bytes or len(session_id) != SESSION_ID_SIZE:
            raise DkgError(f"session id must be {SESSION_ID_SIZE} bytes")
        n = len(participants)
        t = default_threshold(n) if threshold is None else threshold
        check_threshold(n, t)
        if sorted(participants) != list(range(1, n + 1)):
            raise DkgError("participant identifiers must be 1..n")
        if len(set(participants.values())) != n or not all(is_valid_element(k) for k in participants.values()):
            raise DkgError("identity keys must be distinct valid Ed25519 public keys")
        own = bytes(identity.verify_key)
        me = [i for i, k in participants.items() if k == own]
        if not me:
            raise DkgError("this identity key is not among the participants")
        self.session_id, self.identifier, self.n, self.threshold = session_id, me[0], n, t
        self.participants = dict(participants)
        self.state = DkgState.ROUND1
        self.result: KeyShare | None = None
        self.complaints: list[ComplaintRecord] = []
        self._identity = identity
        self._context = session_context(session_id, t, self.participants)
        _, sk64 = sodium.crypto_sign_seed_keypair(bytes(identity))
        self._x25519 = nacl.public.PrivateKey(sodium.crypto_sign_ed25519_sk_to_curve25519(sk64))
        self._started = False
        self._outbox: list[Outgoing] = []
        self._complained: set[tuple[int, str]] = set()
        self._round1: dict[int, Round1] = {}
        self._round2: dict[int, Round2] = {}  # shares addressed to me, by dealer
        self._shares: dict[int, int] = {}  # verified shares, by dealer
        self._confirms: dict[int, Confirm] = {}
        self._confirm: Confirm | None = None
        self._key_share: KeyShare | None = None
        self._coefficients: list[int] | None = [random_scalar() for _ in range(t)]
        commitment = tuple(base_mul(a) for a in self._coefficients)
        k = random_scalar()
        r = base_mul(k)
        mu = (k + self._coefficients[0] * _pok_challenge(self._context, self.identifier, commitment[0], r)) % L
        self._round1[self.identifier] = self._sign(Round1(session_id, self.identifier, commitment,
                                                          r + serialize_scalar(mu)))

    # ---- public interface ---------------------------------------------------------------------------------

    def start(self) -> list[Outgoing]:
        """Round one: the broadcast to send first (plus whatever the messages received so far now allow)."""
        if self._started:
            return []
        self._started = True
        self._outbox.insert(0, Outgoing(None, self._round1[self.identifier]))
        return self._flush()

    def receive(self, message: Message | Mapping[str, Any]) -> list[Outgoing]:
        """Process one received message (decoded, or a wire dict); return the messages to send.

        Raises DkgMessageError (and changes nothing) for malformed or unauthenticated messages, messages of
        another session, or shares addressed to someone else. Exact duplicates are ignored.
        """
        msg = decode(message) if isinstance(message, Mapping) else message
        if not isinstance(msg, Message):
            raise DkgMessageError(f"expected a DKG message, got {type(msg).__name__}")
        self._authenticate(msg)
        if isinstance(msg, Round1):
            self._on_round1(msg)
        elif isinstance(msg, Round2):
            self._on_round2(msg)
        elif isinstance(msg, Confirm):
            self._on_confirm(msg)
        elif isinstance(msg, Complaint):
            self._on_complaint(msg)
        return self._flush()

    def waiting_for(self) -> set[int]:
        """Participants whose message for the current round has not arrived (for the caller's timeouts)."""
        everyone = set(self.participants)
        if self.state is DkgState.ROUND1:
            return everyone - set(self._round1)
        if self.state is DkgState.ROUND2:
            return everyone - set(self._shares) - {self.identifier}
        if self.state is DkgState.CONFIRM:
            return everyone - set(self._confirms)
        return set()

    @property
    def accused(self) -> set[int]:
        return {c.accused for c in self.complaints}

    # ---- helpers --------------------------------------------------------------------------------------------

    def _sign(self, msg: Message) -> Any:
        return msg.signed(self._identity, self._context)

    def _authenticate(self, msg: Message) -> None:
        if msg.session != self.session_id:
            raise DkgMessageError("message of another DKG session")
        if msg.sender not in self.participants:
            raise DkgMessageError(f"unknown sender {msg.sender}")
        if not msg.verify_signature(self.participants[msg.sender], self._context):
            raise DkgMessageError(f"bad signature on a {msg.TYPE} message from {msg.sender}")

    def _flush(self) -> list[Outgoing]:
        if self._started:
            self._advance()
            out, self._outbox = self._outbox, []
            return out
        return []

    def _share_key(self, dealer: int, recipient: int) -> bytes:
        """Key for the one share ``dealer`` sends ``recipient`` in this session (both ends can derive it)."""
        peer = recipient if dealer == self.identifier else dealer
        peer_x = sodium.crypto_sign_ed25519_pk_to_curve25519(self.participants[peer])
        shared = nacl.public.Box(self._x25519, nacl.public.PublicKey(peer_x)).shared_key()
        return hashlib.blake2b(encode(self._context, dealer, recipient), key=shared, digest_size=32,
                               person=b"dsdn/dkg/share").digest()

    def _share_for(self, recipient: int) -> int:
        assert self._coefficients is not None
        return polynomial_evaluate(recipient, self._coefficients)

    def _complain(self, accused: int, reason: str, evidence: Iterable[Message], key: bytes = b"",
                  proven: bool = True) -> None:
        self._fail()
        if (accused, reason) in self._complained:
            return
        self._complained.add((accused, reason))
        self.complaints.append(ComplaintRecord(self.identifier, accused, reason, proven))
        c = Complaint(self.session_id, self.identifier, accused, reason, key, tuple(evidence))
        self._outbox.append(Outgoing(None, self._sign(c)))

    def _fail(self) -> None:
        """Any complaint ends the session: even a confirmed key is withdrawn, since not everyone may hold it."""
        self.state = DkgState.FAILED
        self.result = None

    def _round1_valid(self, m: Round1) -> bool:
        if len(m.commitment) != self.threshold or not all(is_valid_element(p) for p in m.commitment):
            return False
        r, mu = m.proof[:32], int.from_bytes(m.proof[32:], "little")
        if not is_valid_element(r) or mu >= L:
            return False
        c = _pok_challenge(self._context, m.sender, m.commitment[0], r)
        return base_mul(mu) == add(r, mul(m.commitment[0], c))

    def _decrypt_share(self, m: Round2, key: bytes, commitment: tuple[bytes, ...]) -> int | None:
        """The share in ``m`` if it opens under ``key`` and lies on ``commitment``'s polynomial, else None."""
        try:
            plain = nacl.secret.SecretBox(key).decrypt(m.box)
        except (nacl.exceptions.CryptoError, nacl.exceptions.ValueError, TypeError):
            return None
        share = int.from_bytes(plain, "little")
        if len(plain) != 32 or share >= L or base_mul(share) != evaluate_commitment(commitment, m.recipient):
            return None
        return share

    # ---- message handlers -------------------------------------------------------------------------------------

    def _on_round1(self, m: Round1) -> None:
        prev = self._round1.get(m.sender)
        if prev is not None:
            if not prev.same_content(m):
                self._complain(m.sender, "equivocation", [prev, m])
            return
        self._round1[m.sender] = m
        if m.sender != self.identifier:  # echo: a dealer showing two faces to two groups gets caught by either
            self._outbox.append(Outgoing(None, m))
        if not self._round1_valid(m):
            self._complain(m.sender, "bad_proof", [m])
        elif m.sender in self._round2:
            self._check_share(m.sender)

    def _on_round2(self, m: Round2) -> None:
        if m.recipient != self.identifier:
            raise DkgMessageError(f"share addressed to {m.recipient}, not to {self.identifier}")
        if m.sender == self.identifier:
            raise DkgMessageError("a share from myself")
        prev = self._round2.get(m.sender)
        if prev is not None:
            if not prev.same_content(m):
                self._complain(m.sender, "equivocation", [prev, m])
            return
        self._round2[m.sender] = m
        if m.sender in self._round1:
            self._check_share(m.sender)

    def _check_share(self, dealer: int) -> None:
        dealt = self._round1[dealer]
        if not self._round1_valid(dealt):
            return  # already complained about the dealer's round 1
        m, key = self._round2[dealer], self._share_key(dealer, self.identifier)
        share = self._decrypt_share(m, key, dealt.commitment)
        if share is None:
            self._complain(dealer, "bad_share", [dealt, m], key=key)
        else:
            self._shares[dealer] = share

    def _on_confirm(self, m: Confirm) -> None:
        prev = self._confirms.get(m.sender)
        if prev is not None:
            if not prev.same_content(m):
                self._complain(m.sender, "equivocation", [prev, m])
            return
        self._confirms[m.sender] = m
        self._compare_confirm(m)

    def _compare_confirm(self, m: Confirm) -> None:
        if self._confirm is not None and not m.same_content(
                Confirm(m.session, m.sender, *self._confirm.body())):
            self._complain(m.sender, "mismatch", [m], proven=False)

    def _on_complaint(self, c: Complaint) -> None:
        if c.sender == self.identifier or any(
                (r.complainer, r.accused, r.reason) == (c.sender, c.accused, c.reason) for r in self.complaints):
            return  # my own complaint echoed back, or one already recorded
        self._fail()
        proven = self._check_evidence(c)
        self.complaints.append(ComplaintRecord(c.sender, c.accused, c.reason, proven))

    def _check_evidence(self, c: Complaint) -> bool:
        ev = [e for e in c.evidence
              if e.session == self.session_id and e.sender in self.participants
              and e.verify_signature(self.participants[e.sender], self._context)]
        if len(ev) != len(c.evidence):
            return False
        if not ev or any(e.sender != c.accused for e in ev):
            return False
        if c.reason == "mismatch":  # the accused did confirm something else, but it may be the one misled
            return False
        if c.reason == "equivocation":
            return len(ev) == 2 and type(ev[0]) is type(ev[1]) and not ev[0].same_content(ev[1]) and (
                not isinstance(ev[0], Round2) or ev[0].recipient == ev[1].recipient)  # type: ignore[attr-defined]
        if c.reason == "bad_proof":
            return len(ev) == 1 and isinstance(ev[0], Round1) and not self._round1_valid(ev[0])
        if c.reason == "bad_share":  # evidence: the dealer's signed round 1 and its signed ciphertext
            if len(ev) != 2 or not isinstance(ev[0], Round1) or not isinstance(ev[1], Round2):
                return False
            dealt, m = ev[0], ev[1]
            self._on_round1(dealt)  # learn it if new; a conflicting copy is equivocation
            if m.recipient != c.sender or not self._round1_valid(dealt) or len(c.key) != 32:
                return False
            try:
                nacl.secret.SecretBox(c.key).decrypt(m.box)
            except (nacl.exceptions.CryptoError, nacl.exceptions.ValueError, TypeError):
                return False  # undecryptable under the revealed key: cannot tell who lies
            return self._decrypt_share(m, c.key, dealt.commitment) is None
        return False

    # ---- progress ----------------------------------------------------------------------------------------------

    def _advance(self) -> None:
        if self.state is DkgState.ROUND1 and len(self._round1) == self.n:
            self.state = DkgState.ROUND2
            for j in sorted(self.participants):
                if j != self.identifier:
                    box = nacl.secret.SecretBox(self._share_key(self.identifier, j)).encrypt(
                        serialize_scalar(self._share_for(j)))
                    self._outbox.append(Outgoing(j, self._sign(Round2(self.session_id, self.identifier, j,
                                                                        bytes(box)))))
        if self.state is DkgState.ROUND2 and len(self._shares) == self.n - 1:
            self._derive_key()
        if (self.state is DkgState.CONFIRM and len(self._confirms) == self.n
                and all(c.same_content(Confirm(c.session, c.sender, *self._confirm.body()))  # type: ignore[union-attr]
                        for c in self._confirms.values())):
            self.state = DkgState.COMPLETE
            self.result = self._key_share

    def _derive_key(self) -> None:
        assert self._coefficients is not None
        secret = (self._share_for(self.identifier) + sum(self._shares.values())) % L
        self._coefficients = None  # the polynomial is no longer needed
        dealers = [self._round1[i].commitment for i in sorted(self._round1)]
        summed = [add_all([c[k] for c in dealers]) for k in range(self.threshold)]
        verifying = {i: evaluate_commitment(summed, i) for i in sorted(self.participants)}
        share = KeyShare(self.identifier, self.threshold, serialize_scalar(secret), summed[0], verifying)
        try:
            share.validate()
        except FrostError:
            self.state = DkgState.FAILED  # only with negligible probability (an identity verifying share)
            return
        # content only: the same message under another (valid) signature must not make transcripts differ
        transcript = hashlib.sha512(encode(*[self._round1[i].signing_bytes(self._context)
                                             for i in sorted(self._round1)])).digest()
        self._key_share = share
        self._confirm = self._sign(Confirm(self.session_id, self.identifier, summed[0],
                                           tuple(verifying[i] for i in sorted(verifying)), transcript))
        self.state = DkgState.CONFIRM
        self._confirms[self.identifier] = self._confirm
        self._outbox.append(Outgoing(None, self._confirm))
        for c in list(self._confirms.values()):
            self._compare_confirm(c)
