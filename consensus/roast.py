"""ROAST (Ruffing et al., CCS 2022) around FROST: the proposer's session tracker. Pure; no I/O, no clock.

The tracker keeps R (signers with a fresh commitment and no pending session), M (signers proven to have sent
a bad share) and each signer's current session. A signer's message carries its share for its current session
(if any) and its next commitment. Whenever |R| reaches t a new session starts with exactly R. A session with t
shares is aggregated: the aggregate is checked with one Ed25519 verification, and only when it fails are the
shares checked one by one — the culprits go to M (identifiable abort), the session is dead, and the honest
members of it are already back in R with their next commitments. A slow, crashed or lying minority delays
signing but cannot stall it: at most n − t + 1 sessions start while fewer than t honest signers answer.

Every commitment is accepted once: a signer that repeats a commitment already used (or offered) is put in M.
A session is checked before it starts (``frost.prepare``, memoised for the signing that follows): a signer whose
commitment is no group element goes to M there, so no honest signer spends a commitment on a doomed session.

Patience: with ``eager=False`` a new session starts from R only when no live session remains (a live session
is one that may still gather all its shares); ``kick()`` — called by the driver after a short patience —
starts one anyway. In the common case (everyone honest and quick) that signs with one session instead of
ROAST's eager two or three, and it keeps ROAST's liveness because the driver keeps kicking.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from consensus import frost

Commitment = tuple[bytes, bytes]


@dataclass
class Session:
    id: int
    commitments: dict[int, Commitment]
    shares: dict[int, bytes] = field(default_factory=dict)
    dead: bool = False


@dataclass
class Outcome:
    """What one step produced: sessions to start (send sign requests), a final signature, blamed signers."""

    start: list[Session] = field(default_factory=list)
    signature: bytes | None = None
    signers: tuple[int, ...] = ()
    blamed: set[int] = field(default_factory=set)


class RoastTracker:
    def __init__(self, threshold: int, eligible: set[int], message: bytes, group_public_key: bytes,
                 verifying_shares: dict[int, bytes], malicious: set[int] | None = None, eager: bool = True) -> None:
        if threshold < 1:
            raise ValueError("threshold must be ≥ 1")
        self.t, self.eligible, self.message = threshold, set(eligible), message
        self.group_public_key, self.verifying_shares = group_public_key, verifying_shares
        self.malicious: set[int] = set(malicious or ()) & self.eligible
        self.ready: dict[int, Commitment] = {}  # R, in arrival order
        self.current: dict[int, Session] = {}  # signer -> the session it was asked to sign in
        self.sessions: list[Session] = []
        self.used: set[Commitment] = set()
        self._forgotten: set[tuple[int, int]] = set()  # (signer, session) given up on: a late share is no lie
        self.signature: bytes | None = None
        self.signers: tuple[int, ...] = ()
        self.eager = eager

    @property
    def done(self) -> bool:
        return self.signature is not None

    @property
    def honest_possible(self) -> int:
        return len(self.eligible - self.malicious)

    def stalled(self) -> bool:
        """Fewer than t eligible signers remain unblamed: this batch cannot be signed by this set."""
        return not self.done and self.honest_possible < self.t

    def add_commitment(self, signer: int, commitment: Commitment) -> Outcome:
        """A signer's first commitment (from its lock reply)."""
        return self.receive(signer, None, None, commitment)

    def receive(self, signer: int, session_id: int | None, share: bytes | None,
                commitment: Commitment | None) -> Outcome:
        out = Outcome()
        if self.done or signer not in self.eligible or signer in self.malicious:
            return out
        if share is not None and (signer, session_id) in self._forgotten:
            share = None  # too late for a session we gave up on; its commitment is still fresh
        if share is not None:
            session = self.current.get(signer)
            if session is None or session.id != session_id or signer in session.shares:
                self._blame(out, {signer})  # an unsolicited share
                return out
            del self.current[signer]
            session.shares[signer] = share
            if len(session.shares) == len(session.commitments) and not session.dead:
                self._aggregate(session, out)
                if self.done or signer in self.malicious:  # a signer just proven to lie offers nothing more
                    return out
        elif signer in self.current:
            return out  # a commitment while a session of its own is pending: ignore it
        if commitment is not None:
            if not (type(commitment) is tuple and len(commitment) == 2
                    and all(type(p) is bytes and len(p) == 32 for p in commitment)):
                # (not two 32-byte points: frost.prepare refused the session with no one named, and every honest
                # signer's commitment in it was spent for nothing, session after session: a reviewer's find)
                self._blame(out, {signer})
                return out
            if commitment in self.used or signer in self.ready:
                self._blame(out, {signer})  # a reused commitment
                return out
            self.used.add(commitment)
            self.ready[signer] = commitment
            if self.eager or not self.live_sessions():
                self._start(out)
        return out

    def live_sessions(self) -> list[Session]:
        return [s for s in self.sessions if not s.dead and len(s.shares) < len(s.commitments)]

    def kick(self) -> Outcome:
        """Start a session from R now if t signers are ready (the driver's patience ran out)."""
        out = Outcome()
        if not self.done:
            self._start(out)
        return out

    def _start(self, out: Outcome) -> None:
        while True:
            if len(self.ready) < self.t:
                return
            chosen = dict(list(self.ready.items())[: self.t])
            try:  # the session's values, checked before anyone is asked (memoised: signing reuses them)
                frost.prepare(chosen, self.message, self.group_public_key)
            except frost.InvalidCommitmentError as exc:
                # a commitment that is no group element would make every honest signer of the session refuse,
                # spending their commitments for nothing: its sender is named, the others stay ready
                culprits = set(exc.culprits)
                self.malicious |= culprits & self.eligible
                out.blamed |= culprits & self.eligible
                for i in culprits:
                    self.ready.pop(i, None)
                continue
            except frost.FrostError:
                pass  # not any one signer's fault (a group commitment that sums to the identity): signers refuse
            break
        for i in chosen:
            del self.ready[i]
        session = Session(len(self.sessions), chosen)
        self.sessions.append(session)
        for i in chosen:
            self.current[i] = session
        out.start.append(session)

    def forget(self, signer: int) -> Outcome:
        """A signer's session request could not be delivered or timed out: its session cannot complete."""
        out = Outcome()
        session = self.current.pop(signer, None)
        if session is not None:
            session.dead = True
            self._forgotten.add((signer, session.id))
            if not self.eager and not self.live_sessions():
                self._start(out)
        return out

    def _aggregate(self, session: Session, out: Outcome) -> None:
        try:
            self.signature = frost.aggregate_or_blame(session.commitments, self.message, self.group_public_key,
                                                      session.shares, self.verifying_shares)
        except frost.InvalidShareError as exc:
            session.dead = True
            self._blame(out, set(exc.culprits))
            return
        except frost.FrostError:  # every share verifies, the aggregate does not (no one to name): the session is over
            session.dead = True
            return
        self.signers = tuple(sorted(session.commitments))
        out.signature, out.signers = self.signature, self.signers

    def _blame(self, out: Outcome, culprits: set[int]) -> None:
        culprits &= self.eligible
        self.malicious |= culprits
        out.blamed |= culprits
        for i in culprits:
            self.ready.pop(i, None)
            session = self.current.pop(i, None)
            if session is not None:
                session.dead = True
        if not self.eager and not self.done and not self.live_sessions():
            self._start(out)
