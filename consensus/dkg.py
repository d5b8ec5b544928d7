"""Distributed key generation: Pedersen DKG with proofs of knowledge (the FROST paper's KeyGen) plus a
confirmation round, as a pure state machine.

Owns one participant's view of one DKG session. No I/O and no clock (like h11): the caller feeds received
messages to :meth:`DkgParticipant.receive` and sends whatever it returns (:class:`Outgoing`, to one
participant or to all others); it decides timeouts itself (:meth:`DkgParticipant.waiting_for`,
:meth:`DkgParticipant.abort`) and repairs losses by asking peers for what it lacks (:meth:`DkgParticipant.want`,
answered by :meth:`DkgParticipant.answer`).

Rounds:
1. every participant broadcasts commitments to a degree-(t-1) polynomial, a Schnorr proof of knowledge of its
   constant term and an ephemeral encryption key E = e·B, all bound to the session context (session id,
   threshold, participants); everyone echoes each round-1 message the first time it sees it (they are signed, so
   they can be relayed), so a dealer that shows different commitments to different participants is caught;
2. once all round-1 messages verified, it sends each other participant its polynomial's value there, encrypted
   (SecretBox under a key derived from the pair's ephemeral Diffie-Hellman point e_d·E_r = e_r·E_d) and signed;
3. once every share verified against its dealer's commitments, it derives its key share, the group key and every
   verifying share, and broadcasts a signed confirmation of (group key, verifying shares, round-1 transcript
   hash). The caller must store the key share durably *before* sending that confirmation (:attr:`committed`).
   The session is COMPLETE for a participant once it holds, from every participant, a signed confirmation
   identical to its own (a "certificate", :meth:`certificate`); completion is final, and anyone holding the
   same key share completes on the same certificate, however late it arrives.

Secrets (polynomial, ephemeral key, proof nonces) are derived from the identity seed and the session context,
so a participant that restarts and joins the same session again sends byte-identical messages (no equivocation).

Leaving: a participant that has not confirmed may leave (timeout, complaint) and then broadcasts a signed
:class:`Abort`; it never confirms that session afterwards. A participant that has confirmed never leaves: it
waits for the certificate, and the session is FAILED for it (it can still complete) once some participant
withdrew (signed an abort, or a confirmation different from its own) without having confirmed identically.

Misbehaviour produces a signed, broadcast complaint naming the culprit with evidence anyone can check
(:func:`judge_complaint`): a bad proof of knowledge (the dealer's signed round-1 message), a bad or
undecryptable share (the dealer's signed round 1 and ciphertext, the complainer's round 1, and the pair's
Diffie-Hellman point with a Chaum-Pedersen proof that it is the right one, so anyone can open exactly that
share), equivocation (two different signed messages for one slot), or a confirmation that does not follow
from the round-1 transcript it names (the confirmation plus every round-1 message). A complaint whose evidence
does not hold proves its own sender a liar; it does not stop the session. Either way the culprit is recorded in
:attr:`DkgParticipant.proven_bad`, with a self-contained proof (:func:`exclusion_proof`) that lets the next
session leave it out.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import nacl.exceptions
import nacl.secret
import nacl.signing

from consensus.dkg_messages import (
    MAX_PARTICIPANTS,
    MAX_REASON,
    PROOF_SIZE,
    SESSION_ID_SIZE,
    Abort,
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
    GroupError,
    L,
    add,
    add_all,
    base_mul,
    hash_to_scalar,
    is_valid_element,
    mul,
    serialize_scalar,
)
from node.thresholds import default_threshold, faults_tolerated, threshold_floor

__all__ = ["Abort", "Complaint", "ComplaintRecord", "Confirm", "DkgError", "DkgMessageError", "DkgParticipant",
           "DkgState", "Outgoing", "Round1", "Round2", "Want", "assign_identifiers", "check_exclusion_proof",
           "check_threshold", "decode", "default_threshold", "exclusion_proof", "faults_tolerated",
           "judge_complaint", "session_context", "sign_abort", "threshold_floor", "threshold_refusal"]


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
    """An accusation this participant knows of. ``proven``: the evidence holds (else the complainer lied)."""

    complainer: int
    accused: int
    reason: str
    proven: bool

    @property
    def culprit(self) -> int:
        return self.accused if self.proven else self.complainer


@dataclass(frozen=True)
class Want:
    """What a participant lacks: round-1 messages (by sender), shares to it (by dealer), confirmations (by sender)."""

    round1: frozenset[int] = frozenset()
    round2: frozenset[int] = frozenset()
    confirm: frozenset[int] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.round1 or self.round2 or self.confirm)


# ---- thresholds -------------------------------------------------------------------------------------------------


def check_threshold(n: int, t: int) -> None:
    """2 <= n <= 255 and :func:`threshold_floor` (n) <= t <= n, else DkgError saying which bound ``t`` breaks."""
    if not 2 <= n <= MAX_PARTICIPANTS:
        raise DkgError(f"need 2..{MAX_PARTICIPANTS} participants, got {n}")
    lo = threshold_floor(n)
    if isinstance(t, bool) or not isinstance(t, int):
        raise DkgError(f"threshold {t!r} is not an integer (allowed: {lo} to {n} for n = {n})")
    if t < lo:
        raise DkgError(f"threshold {t} is below the floor {lo} = floor((n + f)/2) + 1 for n = {n}, "
                       f"f = {faults_tolerated(n)} (allowed: {lo} to {n})")
    if t > n:
        raise DkgError(f"threshold {t} is above the {n} members (allowed: {lo} to {n})")


def threshold_refusal(n: int, t: int, configured: int | None) -> str | None:
    """Why a member of an ``n``-member cluster refuses a session of threshold ``t`` (None: it accepts).

    The rule: never below :func:`threshold_floor` (n) nor above n, whatever the configuration says (this does not
    rely on the configuration having been validated); with a configured threshold, exactly that one; without,
    any t with ⌊2n/3⌋ + 1 <= t <= n (the default and above). A lower threshold, down to the floor, needs every
    member to configure it.
    """
    try:
        check_threshold(n, t)
    except DkgError as exc:
        return str(exc)
    if configured is not None and t != configured:
        return f"threshold {t} differs from the configured threshold {configured}"
    if configured is None and t < default_threshold(n):
        return (f"threshold {t} is below {default_threshold(n)} = floor(2n/3) + 1 for n = {n} "
                f"(configure DKG_THRESHOLD on every member to use a lower one)")
    return None


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


def _check_participants(participants: Mapping[int, bytes]) -> None:
    if not all(type(i) is int and 1 <= i <= MAX_PARTICIPANTS for i in participants):
        raise DkgError(f"participant identifiers must be in 1..{MAX_PARTICIPANTS}")
    if len(set(participants.values())) != len(participants) or not all(
            is_valid_element(k) for k in participants.values()):
        raise DkgError("identity keys must be distinct valid Ed25519 public keys")


# ---- the pure checks anyone can run ---------------------------------------------------------------------------------


def _pok_challenge(context: bytes, identifier: int, constant: bytes, r: bytes) -> int:
    return hash_to_scalar(CONTEXT_STRING, b"dkg", context, serialize_scalar(identifier), constant, r)


def _dleq_challenge(context: bytes, dealer: int, recipient: int, own: bytes, other: bytes, shared: bytes,
                    r1: bytes, r2: bytes) -> int:
    return hash_to_scalar(CONTEXT_STRING, b"dkg-dh", context, serialize_scalar(dealer), serialize_scalar(recipient),
                          own, other, shared, r1, r2)


def _dleq_verify(context: bytes, dealer: int, recipient: int, own: bytes, other: bytes, shared: bytes,
                 proof: bytes) -> bool:
    """The recipient's proof that ``shared`` = e·``other`` for the e with e·B = ``own`` (Chaum-Pedersen)."""
    if len(proof) != PROOF_SIZE or not all(is_valid_element(p) for p in (own, other, shared)):
        return False
    c, z = int.from_bytes(proof[:32], "little"), int.from_bytes(proof[32:], "little")
    if c >= L or z >= L:
        return False
    r1 = add(base_mul(z), mul(own, L - c))
    r2 = add(mul(other, z), mul(shared, L - c))
    return _dleq_challenge(context, dealer, recipient, own, other, shared, r1, r2) == c


def _round1_valid(m: Round1, context: bytes, threshold: int) -> bool:
    if len(m.commitment) != threshold or not all(is_valid_element(p) for p in (*m.commitment, m.enc_key)):
        return False
    r, mu = m.proof[:32], int.from_bytes(m.proof[32:], "little")
    if not is_valid_element(r) or mu >= L:
        return False
    c = _pok_challenge(context, m.sender, m.commitment[0], r)
    return base_mul(mu) == add(r, mul(m.commitment[0], c))


def _pair_key(context: bytes, dealer: int, recipient: int, shared: bytes) -> bytes:
    """SecretBox key of the one share ``dealer`` sends ``recipient`` in this session."""
    return hashlib.blake2b(encode(context, dealer, recipient, shared), digest_size=32,
                           person=b"dsdn/dkg/share").digest()


def _seal(key: bytes, plain: bytes) -> bytes:
    nonce = hashlib.blake2b(plain, key=key, digest_size=24, person=b"dsdn/dkg/nonce").digest()  # SIV-like
    return bytes(nacl.secret.SecretBox(key).encrypt(plain, nonce))


def _open_share(m: Round2, key: bytes, commitment: Sequence[bytes]) -> int | None:
    """The share in ``m`` if it opens under ``key`` and lies on ``commitment``'s polynomial, else None."""
    try:
        plain = nacl.secret.SecretBox(key).decrypt(m.box)
    except (nacl.exceptions.CryptoError, nacl.exceptions.ValueError, TypeError):
        return None
    share = int.from_bytes(plain, "little")
    if len(plain) != 32 or share >= L or base_mul(share) != evaluate_commitment(commitment, m.recipient):
        return None
    return share


def _transcript(round1: Sequence[Round1], context: bytes) -> bytes:
    # content only: the same message under another (valid) signature must not make transcripts differ
    return hashlib.sha512(encode(*[m.signing_bytes(context) for m in round1])).digest()


def _group_info(round1: Sequence[Round1], threshold: int, identifiers: Iterable[int]) -> tuple[bytes, dict[int, bytes]]:
    summed = [add_all([m.commitment[k] for m in round1]) for k in range(threshold)]
    return summed[0], {i: evaluate_commitment(summed, i) for i in sorted(identifiers)}


def judge_complaint(c: Complaint, context: bytes, participants: Mapping[int, bytes], threshold: int) -> bool:
    """Whether ``c``'s evidence proves its accusation (pure: anyone with the session context gets the same answer).

    The complaint's own signature is the caller's to check. False means the evidence does not hold; since an
    honest participant only sends complaints whose evidence holds, a signed complaint judged False proves its
    sender a liar.
    """
    try:
        return _judge(c, context, participants, threshold)
    except (GroupError, FrostError, ValueError, TypeError):
        return False


def _judge(c: Complaint, context: bytes, participants: Mapping[int, bytes], threshold: int) -> bool:
    ev = c.evidence

    def signed_by(e: Message, who: int) -> bool:
        return (e.session == c.session and e.sender == who and who in participants
                and e.verify_signature(participants[who], context))

    if c.accused not in participants:
        return False
    if c.reason == "equivocation":  # two different messages for one slot, or an abort and a confirmation
        if len(ev) != 2 or not all(signed_by(e, c.accused) for e in ev):
            return False
        if {type(ev[0]), type(ev[1])} == {Confirm, Abort}:
            return True
        return (type(ev[0]) is type(ev[1]) and not isinstance(ev[0], Abort) and not ev[0].same_content(ev[1])
                # two shares for one recipient, dealt to one of its round ones (to two, the recipient equivocated)
                and (not isinstance(ev[0], Round2) or (ev[0].recipient, ev[0].recipient_key)  # type: ignore[attr-defined]
                     == (ev[1].recipient, ev[1].recipient_key)))  # type: ignore[attr-defined]
    if c.reason == "bad_proof":
        return (len(ev) == 1 and isinstance(ev[0], Round1) and signed_by(ev[0], c.accused)
                and not _round1_valid(ev[0], context, threshold))
    if c.reason == "bad_share":  # evidence: the dealer's round 1 and ciphertext, the complainer's round 1
        if len(ev) != 3 or not (isinstance(ev[0], Round1) and isinstance(ev[1], Round2) and isinstance(ev[2], Round1)):
            return False
        dealt, m, own = ev
        if not (signed_by(dealt, c.accused) and signed_by(m, c.accused) and signed_by(own, c.sender)
                and m.recipient == c.sender != c.accused and m.recipient_key == own.enc_key):
            return False  # (a share is judged against the round one it was dealt to, not one the complainer shows)
        if not _round1_valid(dealt, context, threshold):
            return True  # the dealer signed an invalid round 1: misbehaviour whatever its share
        if not _round1_valid(own, context, threshold) or not _dleq_verify(
                context, c.accused, c.sender, own.enc_key, dealt.enc_key, c.key, c.proof):
            return False
        return _open_share(m, _pair_key(context, c.accused, c.sender, c.key), dealt.commitment) is None
    if c.reason == "bad_confirm":  # evidence: the confirmation, then every round-1 message in identifier order
        if len(ev) != 1 + len(participants) or not isinstance(ev[0], Confirm) or not signed_by(ev[0], c.accused):
            return False
        confirm, round1 = ev[0], ev[1:]
        if [m.sender for m in round1] != sorted(participants) or not all(
                isinstance(m, Round1) and signed_by(m, m.sender) for m in round1):
            return False
        if _transcript(round1, context) != confirm.transcript:  # type: ignore[arg-type]
            return False
        if not all(_round1_valid(m, context, threshold) for m in round1):  # type: ignore[arg-type]
            return True  # it confirmed a transcript with an invalid round 1, which no honest participant does
        gpk, verifying = _group_info(round1, threshold, participants)  # type: ignore[arg-type]
        return (confirm.group_public_key, confirm.verifying_shares) != (gpk, tuple(verifying.values()))
    return False


def exclusion_proof(session_id: bytes, threshold: int, participants: Iterable[int], complaint: Complaint) -> bytes:
    """A self-contained proof against a culprit: the complaint plus the session parameters needed to check it."""
    return msgpack.packb({"session": session_id, "threshold": threshold, "participants": sorted(participants),
                          "complaint": complaint.to_wire()}, use_bin_type=True)


def check_exclusion_proof(data: bytes, members: Mapping[int, bytes]) -> ComplaintRecord:
    """What ``data`` proves among ``members`` (identifier -> identity key); DkgMessageError if it proves nothing. The
    record's culprit is the accused when the evidence holds, else the complainer (who lied)."""
    try:
        d = msgpack.unpackb(data, raw=False, max_bin_len=64 * 1024, max_array_len=1024, max_map_len=64)
    except Exception:  # msgpack raises many unrelated types for garbage
        raise DkgMessageError("undecodable exclusion proof") from None
    if not isinstance(d, dict) or set(d) != {"session", "threshold", "participants", "complaint"}:
        raise DkgMessageError("malformed exclusion proof")
    session, threshold, ids = d["session"], d["threshold"], d["participants"]
    if type(session) is not bytes or len(session) != SESSION_ID_SIZE or type(threshold) is not int or not (
            isinstance(ids, list) and all(type(i) is int and i in members for i in ids) and len(set(ids)) == len(ids)
            and 1 <= threshold <= len(ids)):  # (a negative threshold raised OverflowError, past every caller)
        raise DkgMessageError("malformed exclusion proof")
    participants = {i: members[i] for i in ids}
    c = decode(d["complaint"])
    if not isinstance(c, Complaint) or c.session != session or c.sender not in participants:
        raise DkgMessageError("an exclusion proof must hold a complaint of a participant of its session")
    context = session_context(session, threshold, participants)
    if not c.verify_signature(participants[c.sender], context):
        raise DkgMessageError("bad signature on the complaint of an exclusion proof")
    return ComplaintRecord(c.sender, c.accused, c.reason, judge_complaint(c, context, participants, threshold))


def sign_abort(identity: nacl.signing.SigningKey, session_id: bytes, threshold: int,
               participants: Mapping[int, bytes], reason: str) -> Abort:
    """A signed abort for a session this member is not (or no longer) running (it never confirmed it)."""
    own = bytes(identity.verify_key)
    me = [i for i, k in participants.items() if k == own]
    if not me:
        raise DkgError("this identity key is not among the participants")
    return Abort(session_id, me[0], reason[:MAX_REASON]).signed(identity, session_context(
        session_id, threshold, participants))


# ---- one participant ---------------------------------------------------------------------------------------------


class DkgParticipant:
    """One participant of one DKG session (see the module docstring for the protocol).

    ``participants`` maps identifiers (any distinct values in 1..255, e.g. a cluster's identifiers without the
    members left out) to identity keys. ``entropy`` is mixed into the derivation of this participant's secrets;
    a restarted participant must use the same value to rejoin a session without equivocating.
    """

    def __init__(
        self,
        session_id: bytes,
        identity: nacl.signing.SigningKey,
        participants: Mapping[int, bytes],
        threshold: int | None = None,
        *,
        entropy: bytes = b"",
    ) -> None:
        if type(session_id) is not bytes or len(session_id) != SESSION_ID_SIZE:
            raise DkgError(f"session id must be {SESSION_ID_SIZE} bytes")
        n = len(participants)
        t = default_threshold(n) if threshold is None else threshold
        check_threshold(n, t)
        _check_participants(participants)
        own = bytes(identity.verify_key)
        me = [i for i, k in participants.items() if k == own]
        if not me:
            raise DkgError("this identity key is not among the participants")
        self.session_id, self.identifier, self.n, self.threshold = session_id, me[0], n, t
        self.participants = dict(sorted(participants.items()))
        self.state = DkgState.ROUND1
        self.result: KeyShare | None = None
        self.complaints: list[ComplaintRecord] = []
        self.proven_bad: dict[int, Complaint] = {}  # culprit -> the complaint proving it (see ComplaintRecord)
        self._identity = identity
        self._context = session_context(session_id, t, self.participants)
        self._seed, self._entropy = bytes(identity), bytes(entropy)
        self._started = False
        self._outbox: list[Outgoing] = []
        self._complained: set[tuple[int, str]] = set()
        self._complaint_msgs: dict[tuple[int, int, str], Complaint] = {}
        self._false_complainers: set[int] = set()  # senders of a complaint judged false: the rest of theirs ignored
        # False: leave without a signed abort (the others wait for their timeout). A member that can no longer
        # remember every session it left must not sign aborts: joined again and confirmed, a forgotten one made a
        # proof of "equivocation" against it (``dkg_service.MAX_ABORTED``)
        self.signs_aborts = True
        self._round1: dict[int, Round1] = {}
        self._round2: dict[int, Round2] = {}  # shares addressed to me, by dealer
        self._dealt: dict[int, Round2] = {}  # shares I sent, by recipient (to answer who lost one)
        self._shares: dict[int, int] = {}  # verified shares, by dealer
        self._seen_confirms: dict[int, list[Confirm]] = {}  # distinct confirmations, by sender (at most two)
        self._aborts: dict[int, Abort] = {}
        self._abort: Abort | None = None  # mine
        self._confirm: Confirm | None = None  # mine
        self._transcript: bytes | None = None
        self._key_share: KeyShare | None = None
        self._coefficients: list[int] | None = [self._derive("coefficient", k) for k in range(t)]
        self._enc_secret: int | None = self._derive("encryption", 0)
        commitment = tuple(base_mul(a) for a in self._coefficients)
        k = self._derive("proof-nonce", 0)
        r = base_mul(k)
        mu = (k + self._coefficients[0] * _pok_challenge(self._context, self.identifier, commitment[0], r)) % L
        self._round1[self.identifier] = self._sign(Round1(session_id, self.identifier, commitment,
                                                          r + serialize_scalar(mu), base_mul(self._enc_secret)))

    @classmethod
    def restore(cls, session_id: bytes, identity: nacl.signing.SigningKey, participants: Mapping[int, bytes],
                threshold: int, key_share: KeyShare, confirm: Confirm | Mapping[str, Any], *,
                dealt: Iterable[Round2 | Mapping[str, Any]] = (), entropy: bytes = b"") -> DkgParticipant:
        """A participant that had confirmed (with ``confirm``, holding ``key_share``) before a restart: it waits for
        the certificate and answers others' requests for confirmations, and for the round-two shares it had sent
        (``dealt``, as sent: signed and sealed to their recipients, so a member that lost one can still confirm);
        DkgError if the pieces do not fit."""
        p = cls(session_id, identity, participants, threshold, entropy=entropy)
        msg = decode(confirm) if isinstance(confirm, Mapping) else confirm
        if not isinstance(msg, Confirm) or msg.sender != p.identifier or msg.session != session_id:
            raise DkgError("not this participant's confirmation of this session")
        if not msg.verify_signature(participants[p.identifier], p._context):
            raise DkgError("bad signature on the stored confirmation")
        if (key_share.identifier, key_share.threshold, key_share.group_public_key) != (
                p.identifier, threshold, msg.group_public_key) or tuple(
                key_share.verifying_shares.get(i) for i in p.participants) != msg.verifying_shares:
            raise DkgError("the key share does not match the stored confirmation")
        for item in dealt:
            share = decode(item) if isinstance(item, Mapping) else item
            if not (isinstance(share, Round2) and share.sender == p.identifier and share.session == session_id
                    and share.recipient in p.participants and share.verify_signature(participants[p.identifier],
                                                                                        p._context)):
                raise DkgError("a stored round-two share is not one this participant sent in this session")
            p._dealt[share.recipient] = share
        p._started, p._coefficients, p._enc_secret = True, None, None
        p._key_share, p._confirm, p._transcript = key_share, msg, msg.transcript
        p._seen_confirms[p.identifier] = [msg]
        p.state = DkgState.CONFIRM
        p._advance()
        return p

    # ---- public interface ---------------------------------------------------------------------------------

    def start(self) -> list[Outgoing]:
        """Round one: the broadcast to send first (plus whatever the messages received so far now allow)."""
        if self._started:
            return []
        self._started = True
        if self._abort is None:
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
        elif isinstance(msg, Abort):
            self._on_abort(msg)
        return self._flush()

    def abort(self, reason: str) -> list[Outgoing]:
        """Leave the session (timeout, or another session wins): the signed abort to broadcast. A participant that
        has confirmed cannot leave (others may complete with its confirmation): then nothing happens."""
        self._withdraw(reason)
        return self._flush(force=True)

    def waiting_for(self) -> set[int]:
        """Participants whose message for the current round has not arrived (for the caller's timeouts)."""
        everyone = set(self.participants)
        if self.state is DkgState.ROUND1:
            return everyone - set(self._round1)
        if self.state is DkgState.ROUND2:
            return everyone - set(self._shares) - {self.identifier}
        if self.state is DkgState.CONFIRM or (self.state is DkgState.FAILED and self.committed):
            return everyone - set(self._matching())
        return set()

    def want(self) -> Want:
        """What to ask peers for (nothing once complete, or once left without confirming)."""
        everyone = set(self.participants)
        if self.state is DkgState.COMPLETE or (self.state is DkgState.FAILED and not self.committed):
            return Want()
        if self.committed:
            return Want(confirm=frozenset(everyone - set(self._matching())))
        missing_shares = frozenset(everyone - {self.identifier} - set(self._round2))
        if self.state is DkgState.ROUND1:
            return Want(round1=frozenset(everyone - set(self._round1)), round2=missing_shares)
        return Want(round2=missing_shares)

    def answer(self, requester: int, want: Want) -> list[Outgoing]:
        """The messages this participant holds that ``requester`` says it lacks, plus every abort and complaint it
        knows (they tell the requester why it may wait in vain)."""
        if requester not in self.participants or requester == self.identifier:
            return []
        out = [self._round1[j] for j in sorted(want.round1) if j in self._round1]
        if self.identifier in want.round2 and requester in self._dealt:
            out.append(self._dealt[requester])
        matching = self._matching()
        for j in sorted(want.confirm):
            m = matching.get(j) or next(iter(self._seen_confirms.get(j, [])), None)
            if m is not None:
                out.append(m)
        out += [*self._aborts.values(), *self._complaint_msgs.values()]
        if self._abort is not None:
            out.append(self._abort)
        return [Outgoing(requester, m) for m in out]

    def certificate(self) -> tuple[Confirm, ...]:
        """Every participant's confirmation identical to mine, in identifier order (empty until COMPLETE)."""
        if self.state is not DkgState.COMPLETE:
            return ()
        matching = self._matching()
        return tuple(matching[i] for i in self.participants)

    def proofs(self) -> dict[int, bytes]:
        """Culprit -> self-contained exclusion proof (see :func:`exclusion_proof`)."""
        return {i: exclusion_proof(self.session_id, self.threshold, self.participants, c)
                for i, c in self.proven_bad.items()}

    @property
    def committed(self) -> bool:
        """Whether this participant has confirmed (its key share must then be durable before anything is sent)."""
        return self._confirm is not None

    @property
    def left(self) -> bool:
        """Whether this participant has signed an abort (it will never confirm this session)."""
        return self._abort is not None

    @property
    def key_share(self) -> KeyShare | None:
        """The key share derived when confirming (final only once COMPLETE)."""
        return self._key_share

    @property
    def own_confirm(self) -> Confirm | None:
        return self._confirm

    @property
    def round1(self) -> list[Round1]:
        """The round-one messages held, this participant's own included: what its round-two shares are dealt
        against (the recipients' encryption keys)."""
        return list(self._round1.values())

    @property
    def dealt(self) -> list[Round2]:
        """The round-two shares this participant sent (signed, sealed to their recipients), to keep with the
        confirmation: restored (see ``restore``), it can still answer a member that lost one."""
        return list(self._dealt.values())

    @property
    def withdrawn(self) -> set[int]:
        """Participants that signed an abort, or (once I confirmed) a confirmation different from mine."""
        out = set(self._aborts)
        if self._confirm is not None:
            matching = self._matching()
            out |= {j for j in self._seen_confirms if j not in matching}
        return out

    @property
    def abort_reasons(self) -> dict[int, str]:
        """Why each participant that signed an abort left, as it said."""
        return {i: m.reason for i, m in self._aborts.items()}

    @property
    def accused(self) -> set[int]:
        return {c.accused for c in self.complaints}

    # ---- helpers --------------------------------------------------------------------------------------------

    def _derive(self, label: str, index: int) -> int:
        digest = hashlib.blake2b(encode(self._context, self._entropy, label, index), key=self._seed, digest_size=64,
                                 person=b"dsdn/dkg/secret").digest()
        return int.from_bytes(digest, "little") % L or 1  # 0 has negligible probability

    def _sign(self, msg: Message) -> Any:
        return msg.signed(self._identity, self._context)

    def _authenticate(self, msg: Message) -> None:
        if msg.session != self.session_id:
            raise DkgMessageError("message of another DKG session")
        if msg.sender not in self.participants:
            raise DkgMessageError(f"unknown sender {msg.sender}")
        if not msg.verify_signature(self.participants[msg.sender], self._context):
            raise DkgMessageError(f"bad signature on a {msg.TYPE} message from {msg.sender}")

    def _flush(self, force: bool = False) -> list[Outgoing]:
        if self._started or force:
            if self._started:
                self._advance()
            out, self._outbox = self._outbox, []
            return out
        return []

    def _share_key(self, dealer: int, recipient: int) -> bytes:
        """Key for the one share ``dealer`` sends ``recipient`` in this session (both ends can derive it)."""
        assert self._enc_secret is not None
        peer = recipient if dealer == self.identifier else dealer
        return _pair_key(self._context, dealer, recipient, mul(self._round1[peer].enc_key, self._enc_secret))

    def _share_for(self, recipient: int) -> int:
        assert self._coefficients is not None
        return polynomial_evaluate(recipient, self._coefficients)

    def _decrypt_share(self, m: Round2, key: bytes, commitment: tuple[bytes, ...]) -> int | None:
        return _open_share(m, key, commitment)

    def _round1_valid(self, m: Round1) -> bool:
        return _round1_valid(m, self._context, self.threshold)

    def _matching(self) -> dict[int, Confirm]:
        if self._confirm is None:
            return {}
        mine = self._confirm.body()
        return {j: m for j, seen in self._seen_confirms.items() for m in seen if m.body() == mine}

    def _complain(self, accused: int, reason: str, evidence: Iterable[Message], key: bytes = b"",
                  proof: bytes = b"") -> None:
        if (accused, reason) in self._complained:
            return
        c = self._sign(Complaint(self.session_id, self.identifier, accused, reason, key, proof, tuple(evidence)))
        if not self._evidence_holds(c):
            return  # evidence the others would judge false proves its sender the liar: never sent (a backstop)
        self._complained.add((accused, reason))
        self.complaints.append(ComplaintRecord(self.identifier, accused, reason, True))
        self.proven_bad.setdefault(accused, c)
        self._complaint_msgs[(self.identifier, accused, reason)] = c
        self._outbox.append(Outgoing(None, c))
        self._withdraw(f"{reason} by participant {accused}")

    def _evidence_holds(self, c: Complaint) -> bool:
        """Whether the others will judge our complaint ``c`` proven (``judge_complaint``)."""
        return judge_complaint(c, self._context, self.participants, self.threshold)

    def _withdraw(self, reason: str) -> None:
        """Leave, unless confirmed (then only completion or others' withdrawal decide) or already complete."""
        if self._confirm is not None or self.state is DkgState.COMPLETE:
            return
        self.state = DkgState.FAILED
        self.result = None
        self._coefficients = self._enc_secret = None
        if self._abort is None and self.signs_aborts:
            self._abort = self._sign(Abort(self.session_id, self.identifier, reason[:MAX_REASON]))
            self._outbox.append(Outgoing(None, self._abort))

    # ---- message handlers -------------------------------------------------------------------------------------

    def _on_round1(self, m: Round1) -> None:
        prev = self._round1.get(m.sender)
        if prev is not None:
            if not prev.same_content(m):
                self._complain(m.sender, "equivocation", [prev, m])
            return
        self._round1[m.sender] = m
        if m.sender != self.identifier and self._abort is None:  # echo: a two-faced dealer gets caught by either
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
        own = self._round1.get(self.identifier)
        if own is not None and m.recipient_key != own.enc_key:
            # a lying dealer's share dealt to another key, sent first: kept, the genuine one made us complain of an
            # "equivocation" the others judge false, and we were proven the liar (a reviewer's reproduction)
            raise DkgMessageError("a share dealt to another key than this participant's")
        prev = self._round2.get(m.sender)
        if prev is not None:
            if not prev.same_content(m):
                self._complain(m.sender, "equivocation", [prev, m])
            return
        self._round2[m.sender] = m
        if m.sender in self._round1:
            self._check_share(m.sender)

    def _check_share(self, dealer: int) -> None:
        dealt, own = self._round1[dealer], self._round1[self.identifier]
        if not self._round1_valid(dealt) or self._enc_secret is None or self._key_share is not None:
            return  # already complained about the dealer's round 1, left, or past this round
        m = self._round2[dealer]
        if m.recipient_key != own.enc_key:  # not dealt to my round one: nothing to open, nothing to prove
            return
        shared = mul(dealt.enc_key, self._enc_secret)
        share = self._decrypt_share(m, _pair_key(self._context, dealer, self.identifier, shared), dealt.commitment)
        if share is not None:
            self._shares[dealer] = share
            return
        k = self._derive(f"dh-proof/{dealer}", 0)
        r1, r2 = base_mul(k), mul(dealt.enc_key, k)
        c = _dleq_challenge(self._context, dealer, self.identifier, own.enc_key, dealt.enc_key, shared, r1, r2)
        proof = serialize_scalar(c) + serialize_scalar((k + c * self._enc_secret) % L)
        self._complain(dealer, "bad_share", [dealt, m, own], key=shared, proof=proof)

    def _on_confirm(self, m: Confirm) -> None:
        seen = self._seen_confirms.setdefault(m.sender, [])
        if any(s.same_content(m) for s in seen):
            return
        if len(seen) >= 2:  # already proven an equivocator; more copies add nothing, but for the one that matches
            #                 ours: two bogus confirmations sent first kept out its real one, relayed later in the
            #                 certificate, and stranded this member without a key for ever (a reviewer's run)
            if self._confirm is not None and m.body() == self._confirm.body():
                seen.append(m)
            return
        seen.append(m)
        if len(seen) == 2:
            self._complain(m.sender, "equivocation", seen)
        elif m.sender in self._aborts:
            self._complain(m.sender, "equivocation", [m, self._aborts[m.sender]])

    def _on_abort(self, m: Abort) -> None:
        if m.sender in self._aborts or m.sender == self.identifier:
            return
        self._aborts[m.sender] = m
        if m.sender in self._seen_confirms:  # it confirmed, and now says it left
            self._complain(m.sender, "equivocation", [self._seen_confirms[m.sender][0], m])
        self._withdraw(f"participant {m.sender} left: {m.reason}")

    def _on_complaint(self, c: Complaint) -> None:
        key = (c.sender, c.accused, c.reason)
        if c.sender == self.identifier or key in self._complaint_msgs:
            return  # my own complaint echoed back, or one already recorded
        if c.accused not in self.participants or c.sender in self._false_complainers:
            return  # one false complaint proves its sender a liar: more (each up to 512 kB, one per accused and
            #         reason, and relayed in every sync answer: ~1 GB a liar a session) add nothing (a reviewer's find)
        proven = judge_complaint(c, self._context, self.participants, self.threshold)
        if not proven:
            self._false_complainers.add(c.sender)
        self._complaint_msgs[key] = c
        record = ComplaintRecord(c.sender, c.accused, c.reason, proven)
        self.complaints.append(record)
        self.proven_bad.setdefault(record.culprit, c)
        for e in c.evidence:  # learn what it shows (a conflicting copy is equivocation)
            if isinstance(e, Round1) and e.session == self.session_id:
                try:
                    self._authenticate(e)
                except DkgMessageError:
                    continue
                self._on_round1(e)
        if proven:  # the complainer cannot finish this session; a false complaint changes nothing else
            self._withdraw(f"participant {c.accused} proven to misbehave ({c.reason})")

    # ---- progress ----------------------------------------------------------------------------------------------

    def _advance(self) -> None:
        if self.state is DkgState.ROUND1 and len(self._round1) == self.n:
            self.state = DkgState.ROUND2
            for j in self.participants:
                if j != self.identifier:
                    box = _seal(self._share_key(self.identifier, j), serialize_scalar(self._share_for(j)))
                    self._dealt[j] = self._sign(Round2(self.session_id, self.identifier, j, box,
                                                       self._round1[j].enc_key))
                    self._outbox.append(Outgoing(j, self._dealt[j]))
        if self.state is DkgState.ROUND2 and len(self._shares) == self.n - 1:
            self._derive_key()
        if self._confirm is not None and self.state is not DkgState.COMPLETE:
            matching = self._matching()
            round1 = [self._round1[i] for i in sorted(self._round1)]
            for j, seen in self._seen_confirms.items():
                bad = next((m for m in seen if m.transcript == self._transcript), None)
                if (j not in matching and bad is not None and (j, "bad_confirm") not in self._complained
                        and len(round1) == self.n and _transcript(round1, self._context) == self._transcript):
                    self._complain(j, "bad_confirm", [bad, *round1])  # same transcript, other key: provably false
            if len(matching) == self.n:
                self.state = DkgState.COMPLETE
                self.result = self._key_share
            elif self.withdrawn - set(matching):
                self.state = DkgState.FAILED  # someone will not confirm as I did; a certificate can still come

    def _derive_key(self) -> None:
        assert self._coefficients is not None
        secret = (self._share_for(self.identifier) + sum(self._shares.values())) % L
        self._coefficients = self._enc_secret = None  # no longer needed
        self._round1 = dict(sorted(self._round1.items()))
        round1 = list(self._round1.values())
        gpk, verifying = _group_info(round1, self.threshold, self.participants)
        share = KeyShare(self.identifier, self.threshold, serialize_scalar(secret), gpk, verifying)
        try:
            share.validate()
        except FrostError:
            self._withdraw("degenerate key share")  # only with negligible probability (an identity verifying share)
            return
        self._transcript = _transcript(round1, self._context)
        self._key_share = share
        self._confirm = self._sign(Confirm(self.session_id, self.identifier, gpk, tuple(verifying.values()),
                                           self._transcript))
        self.state = DkgState.CONFIRM
        self._seen_confirms.setdefault(self.identifier, []).insert(0, self._confirm)
        self._outbox.append(Outgoing(None, self._confirm))
