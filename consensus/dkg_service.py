"""Drives the DKG state machine (consensus/dkg.py) over the peer network and keeps the resulting key.

* ``start()`` (``POST /cluster/dkg``) broadcasts ``dkg.start`` {session, threshold, participants, proofs}; every
  member without a key joins, unless it refuses the start (see below). With ``auto``, the member with the
  smallest id among those not proven to misbehave starts one by itself when every participant is connected and
  no key exists, and again (with a growing back-off) after a session ends without a key.
* Thresholds: the floor everywhere is ⌊(n + f)/2⌋ + 1 with f = ⌊(n - 1)/3⌋ (n: cluster members;
  :func:`consensus.dkg.threshold_floor`): a start below it (or above n) is refused even by a joiner configured
  with that very threshold. Above the floor, a joiner with a configured threshold accepts exactly that one;
  without one, any t with ⌊2n/3⌋ + 1 <= t <= n (:func:`consensus.dkg.threshold_refusal`). A refused start is
  logged (one warning naming the starter, the threshold and the reason), listed in ``status()`` (``dkg.error``,
  ``dkg.refused_starts``: starter, threshold, reason) and answered with a signed abort, so the starter's session
  ends saying why.
* Two sessions at once (two starts racing): every member keeps the one with the smaller session id, unless it
  already confirmed the other; leaving a session means broadcasting a signed abort.
* Losses: a member lacking messages broadcasts ``dkg.sync`` (what it lacks) every ``sync_interval_s``; peers
  answer with what they hold (signed messages can be relayed by anyone), members with a key answer with the
  certificate of their session (every member's confirmation), and members that left answer with their abort.
  The starter re-sends ``dkg.start`` while round-1 messages are missing; a sync also lets a member that missed
  the start (or restarted: its secrets are derived, so its messages are identical) join.
* Durability: the key share is written to the encrypted key store (0600) before the confirmation is sent (as a
  pending share, ``<key store>.pending-<session>``, plus the journal ``<key store>.dkg``), and becomes the key
  store (an atomic rename) once every member's identical confirmation is in hand; the certificate is kept
  (``<key store>.cert``) to help members that missed it. A session id this member left is journaled before its
  abort is sent, so it never confirms it later. A restarted member that had confirmed resumes waiting.
* Timeouts: a session not confirmed within ``timeout_s`` is left (naming the members still waited for). A member
  that confirmed never leaves (others may complete with its confirmation); it gives up waiting only when some
  member withdrew, and even then completes if the certificate turns up.
* Unreachable members: a member that stays unreachable (a machine that never came up, a withholding one cut off)
  would keep every session from completing, and the cluster without a key for good. A start may leave out,
  without proof, members its starter has not reached for ``leave_out_after_s`` (auto; default 10 × ``timeout_s``)
  or for ``timeout_s`` (``start(leave_out=...)``, POST /cluster/dkg {"leave_out": [...]}) when at least the
  threshold of participants remain; a joiner accepts it only if it has not reached those members for ``timeout_s``
  either (a starter cannot leave out a member its peers see), and only if it never confirmed a session that did not
  complete here. Left out, a member holds no key share: it cannot sign receipts until a new DKG includes it. Two keys
  cannot form: a key A exists only once every participant of A confirmed it; any later session B of at least the
  threshold shares an honest member with A (t ≥ ⌊(n + f)/2⌋ + 1), which either holds A (and joins nothing) or
  confirmed A without completing it, and then refuses every start that leaves anyone out without proof (a member
  left out might hold A, and would not be there to hand its certificate round: a regression review's two keys,
  with one liar confirming A to one member only and a short outage of that member). The member next in id order
  starts such a session too once ``leave_out_after_s`` + 2 × ``timeout_s`` have passed (its rank times that after
  the first), in case the first keeps restarting (each restart saw the missing member afresh). A member left out
  learns it from the certificate (every participant's confirmation, each checked) that f + 1 members relay (members
  with the key answer its start, and the ``dkg.ask`` a keyless member sends now and then, with it): it then stops
  starting sessions (each timed out, for ever) and says so (``dkg.left_out``, ``dkg.error``, journaled; its
  receipt view serves that key's batches only), and checks again
  after ``leave_out_after_s``, doubling each time, by a start (a new DKG may include it). The next member in id
  order also starts when it has had neither a key nor a session for ``leave_out_after_s`` + 2 × ``timeout_s`` (the
  first starts nothing: left out, say). A member that withholds its confirmation and is then cut off is not
  covered: the others confirmed and wait for it (it may hold the key; leaving it out could make a second one).
* Misbehaviour: a participant proven to misbehave (see :mod:`consensus.dkg`; a complaint whose evidence does not
  hold proves its sender a liar) is left out of the next session when at least ``threshold`` members remain; the
  start carries the proofs, and every joiner checks them (and refuses a start that includes a member it holds a
  proof against). Proofs are journaled: a proven member stays left out (``status()``: ``dkg.excluded``).
* A key too few hold: a liar choosing who hears what when can still complete a session at one member after the
  others gave it up (they dealt in or confirmed a later one: ``_deliver``, ``_store_pending``). Such a member, told
  that key's certificate, answers with a signed ``dkg.noshare`` (it holds no share of it and never will); a holder
  told so by enough participants that fewer than the threshold can hold the key sets it aside (it can never sign,
  and its holder refused every new session) and takes part in the next DKG. A healthy key has at most f members
  that could say so falsely, fewer than the n − t + 1 needed.
* File I/O goes through ``run_blocking`` (a worker thread by default; tests run it inline under the MockClock).
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import msgpack
import nacl.exceptions
import nacl.signing
import trio

from consensus import keystore
from consensus.dkg import (
    ComplaintRecord,
    DkgError,
    DkgParticipant,
    DkgState,
    Outgoing,
    Want,
    assign_identifiers,
    check_exclusion_proof,
    check_threshold,
    default_threshold,
    session_context,
    sign_abort,
    threshold_floor,
    threshold_refusal,
)
from consensus.dkg_messages import SESSION_ID_SIZE, Confirm, DkgMessageError, Round2, decode
from consensus.frost import KeyShare
from protocol.dispatch import Inbox
from protocol.envelope import Registry, is_bytes, is_int, is_list

log = logging.getLogger("dsdn.dkg")
START, MSG, SYNC, PROOFS, ASK = "dkg.start", "dkg.msg", "dkg.sync", "dkg.proofs", "dkg.ask"
NO_SHARE = "dkg.noshare"  # a signed statement: the sender holds no share of the key of that session, and never will
NO_SHARE_CONTEXT = b"dsdn/dkg/no-share/v1"
MAX_BUFFERED = 4096  # messages of a session we have not joined yet
MAX_BUFFERED_SESSIONS = 8  # sessions not joined yet whose messages are kept
MAX_BUFFERED_BYTES = 32 << 20  # their messages together
MAX_ABORTED = 4096  # session ids left with a signed abort, remembered (journaled) for good: one forgotten could be
#                     joined and confirmed again, and confirming a session this member signed an abort for proves it
#                     an "equivocator" (a liar's 4,096 starts, each left, evicted one: a reviewer's reproduction).
#                     Once as many are remembered, sessions are left without a signed abort.
MAX_REFUSED = 4096  # session ids of refused starts (each answered with a signed abort), remembered apart (a flood
#                    of refused starts evicted the sessions left: a reviewer's run) and never forgotten: one forgotten
#                    whose refusal reason went away could be joined and confirmed, its signed abort beside (a
#                    reviewer's reading). Past it, starts are refused without a signed abort.
MAX_GROUP_KEYS = 64  # past group keys remembered (one per new DKG)
MAX_PENDING = 1  # sessions confirmed whose key shares are kept for a late certificate: the one confirmed last (kept
#                  for every failed session, a liar's made them pile up: 688 files and an 829 kB journal in an hour)
MAX_CONFIRMED = 4096  # sessions confirmed and never completed, remembered for good: past it, no session is joined
MAX_DEALING = 8  # sessions whose round-one messages are journaled as dealt against (see ``_deliver``)
MAX_IGNORED = 64  # sessions completed too late to be adopted here, remembered so as to say so once
MAX_PROOF = 64 * 1024
RunBlocking = Callable[..., Awaitable[Any]]


class Network(Protocol):
    my_id: str

    def send(self, peer_id: str, type_: str, body: dict[str, Any]) -> bool: ...
    def broadcast(self, type_: str, body: dict[str, Any]) -> int: ...
    def subscribe(self, type_: str) -> Inbox: ...
    def up_peers(self) -> list[str]: ...


def register(registry: Registry) -> None:
    ids = is_list(is_int(1, 255), max_len=255)
    proofs = is_list(is_bytes(max_len=MAX_PROOF), max_len=255)
    registry.register(START, {"session": is_bytes(SESSION_ID_SIZE), "threshold": is_int(1, 255),
                              "participants": ids, "proofs": proofs})
    registry.register(MSG, {"data": is_bytes(max_len=512 * 1024)})
    registry.register(SYNC, {"session": is_bytes(SESSION_ID_SIZE), "threshold": is_int(1, 255),
                             "participants": ids, "round1": ids, "round2": ids, "confirm": ids})
    registry.register(PROOFS, {"proofs": proofs})
    registry.register(ASK, {})
    registry.register(NO_SHARE, {"session": is_bytes(SESSION_ID_SIZE), "sig": is_bytes(64)})


@dataclass
class SessionInfo:
    id: bytes
    threshold: int
    participant: DkgParticipant
    starter: str | None = None
    started: float = field(default_factory=trio.current_time)
    last_sync: float = field(default_factory=trio.current_time)
    durable: bool = False  # the pending key share is in the key store
    reason: str | None = None  # why we left it
    abandoned: bool = False  # confirmed, then someone withdrew: kept only to complete on a late certificate
    held: list[Outgoing] = field(default_factory=list)  # not sent yet: their precondition could not be stored

    @property
    def participants(self) -> dict[int, bytes]:
        return self.participant.participants


@dataclass(frozen=True)
class Certificate:
    session: bytes
    threshold: int
    participants: tuple[int, ...]
    confirms: tuple[bytes, ...]  # msgpack wire of every participant's confirmation


def _left_out_record(value: Any) -> bool:
    """Whether a journal's ``left_out`` is one this service wrote: strings, a 32-byte group key in hex."""
    if not (isinstance(value, dict) and {"session", "group_public_key", "message"} <= set(value)
            and all(type(v) is str for v in value.values())):
        return False
    try:
        return len(bytes.fromhex(value["group_public_key"])) == 32
    except ValueError:
        return False


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, max_bin_len=64 * 1024, max_str_len=1024, max_array_len=1024,
                           max_map_len=64)


class DkgService:
    def __init__(self, net: Network, identity: nacl.signing.SigningKey, members: dict[str, bytes],
                 keystore_path: Path, *, passphrase: bytes | None = None, threshold: int | None = None,
                 auto: bool = True, timeout_s: float = 30.0, sync_interval_s: float = 1.0,
                 run_blocking: RunBlocking = trio.to_thread.run_sync,
                 participant_class: type[DkgParticipant] = DkgParticipant,
                 leave_out_after_s: float | None = None) -> None:
        """``members``: member id -> Ed25519 identity key, this coordinator included. ``run_blocking`` runs the
        key store's file I/O (tests pass an inline runner); ``participant_class`` lets tests inject misbehaviour."""
        if threshold is not None:
            check_threshold(len(members), threshold)
        self.threshold = threshold
        self.net, self.identity, self.members = net, identity, members
        self.keystore_path, self.passphrase, self.auto, self.timeout_s = keystore_path, passphrase, auto, timeout_s
        self.sync_interval_s, self.run_blocking = sync_interval_s, run_blocking
        self.leave_out_after_s = 10 * timeout_s if leave_out_after_s is None else leave_out_after_s
        self._missing_since: dict[int, float] = {}  # member -> since when it has not been reached (trio time)
        # per peer, the confirmations it relayed of sessions this member is not in: (session id, group key) -> by
        # sender (its two latest sessions: a liar fills only its own), until they make a complete certificate
        self._relayed: dict[str, OrderedDict[tuple[bytes, bytes], dict[int, Confirm]]] = {}
        # complete certificates of keys made without this member -> the peers that relayed one (f + 1 needed)
        self._certified: dict[tuple[bytes, bytes], set[str]] = {}
        self._next_recheck = 0.0  # while left out: when a start is to check whether that still holds (trio time)
        self._left_out_checks = 0  # re-checks since left_out was set: the next comes after leave_out_after_s × 2^this
        self._idle_since: float | None = None  # since when this member has had no key and no session (trio time)
        self.left_out: dict[str, str] | None = None  # the key the cluster made without this member, once known
        self._completed: list[bytes] = []  # sessions completed here (journaled): see _unresolved
        self.participant_class = participant_class
        self.identifiers = assign_identifiers(members.values())  # identifier -> key, the same on every member
        self._member_of = {key: member for member, key in members.items()}
        self._ident_of = {self._member_of[key]: i for i, key in self.identifiers.items()}
        self.me = self._ident_of.get(net.my_id, 0)
        self.key: KeyShare | None = None
        self.cert: Certificate | None = None
        self.session: SessionInfo | None = None
        self.last_error: str | None = None
        self.sessions_run = 0
        self.refused_starts: deque[dict[str, Any]] = deque(maxlen=16)
        self.proofs: dict[int, tuple[bytes, str]] = {}  # identifier -> (exclusion proof, what it proves)
        self._pending: dict[bytes, SessionInfo] = {}  # sessions confirmed and not yet resolved
        self._recent: dict[bytes, SessionInfo] = {}  # the last sessions left (late complaints still count)
        self._ignored: dict[bytes, None] = {}  # sessions completed too late to be adopted, already said so
        self._no_share_sent: dict[tuple[str, bytes], float] = {}  # (peer, session) -> when we last told it (trio time)
        self._disowned: set[int] = set()  # participants of our key's session that signed they hold no share of it
        self._aborted: list[bytes] = []
        # every session confirmed here (journaled, never forgotten): a superseded one (``_store_pending``) is never
        # joined again, nor refused or left with a signed abort: joined again, a member signed an abort for a
        # session it had confirmed, and was proven an equivocator (a reviewer's reproduction, no liar needed)
        self._confirmed: list[bytes] = []
        self._refused: list[bytes] = []
        self._dealing: dict[bytes, list[bytes]] = {}  # session id -> the round-one messages we dealt shares against
        self._buffer: dict[bytes, list[bytes]] = {}
        self._buffered_bytes = 0
        self._lock = trio.Lock()
        self._failures = 0
        self._next_auto = 0.0
        self._all_up_since: float | None = None
        self._next_proofs_hint = 0.0  # when this member may next send its proofs to the expected starter
        self._cert_sent: dict[str, float] = {}
        self._last_pending_sync = 0.0
        self._next_ask, self._asks = 0.0, 0  # when a keyless member next asks for the cluster's certificate (ASK)
        path = Path(keystore_path)
        self._journal_path = path.with_name(path.name + ".dkg")
        self._cert_path = path.with_name(path.name + ".cert")
        # every group key this member has held, oldest first: receipts signed under an earlier key (before a new
        # DKG) are still the cluster's (``group_keys``)
        self._group_keys_path = path.with_name(path.name + ".group-keys")
        self._past_group_keys: list[bytes] = []
        self._stored: tuple[dict[str, Any], list[bytes]] | None = None  # (read_stored's, for _restore)

    # ---- views and commands ------------------------------------------------------------------------

    def name(self, identifier: int) -> str:
        """The member id of an identifier; a complaint may name any number (a false one, by its complainer)."""
        key = self.identifiers.get(identifier)
        return self._member_of[key] if key is not None else f"non-member {identifier}"

    def names(self, identifiers: set[int] | list[int]) -> list[str]:
        return sorted(self.name(i) for i in identifiers)

    def describe(self, record: ComplaintRecord) -> str:
        if record.proven:
            return f"{record.reason} by {self.name(record.accused)}, proven by {self.name(record.complainer)}"
        return f"false {record.reason} complaint by {self.name(record.complainer)} against {self.name(record.accused)}"

    def status(self) -> dict[str, Any]:
        key = self.key
        members = []
        for identifier, public_key in sorted(self.identifiers.items()):
            share = key.verifying_shares.get(identifier) if key else None
            members.append({"id": self._member_of[public_key], "identifier": identifier, "public_key": public_key.hex(),
                            "verifying_share": share.hex() if share else None,
                            "excluded": identifier in self.proofs})
        s = self.session
        state = "complete" if key else (s.participant.state.value if s else ("failed" if self.last_error else "none"))
        return {
            "group_public_key": key.group_public_key.hex() if key else None,
            "threshold": key.threshold if key else (s.threshold if s else None),
            "members": members,
            "dkg": {"state": state, "session": s.id.hex() if s else None,
                    "error": self.left_out["message"] if self.left_out else self.last_error,
                    "waiting_for": self.names(s.participant.waiting_for())
                    if s and s.participant.state is not DkgState.COMPLETE else [],
                    "sessions_run": self.sessions_run,
                    "excluded": [{"id": self.name(i), "proof": what} for i, (_, what) in sorted(self.proofs.items())],
                    "refused_starts": list(self.refused_starts),
                    "pending_sessions": [sid.hex() for sid in self._pending if self.key is None],
                    "left_out": self.left_out},
        }

    def start(self, threshold: int | None = None, leave_out: list[str] | None = None) -> bytes:
        """Begin a session; DkgError if a key exists, a session is running, or the threshold or the members left
        after exclusions do not allow one. ``leave_out``: members left out without proof, each unreached here for
        ``timeout_s`` at least (see the module docstring)."""
        if self.key is not None:
            raise DkgError("this cluster already has a key")
        if self.session is not None:
            raise DkgError(f"DKG session {self.session.id.hex()} is already running")
        n = len(self.members)
        t = threshold or self.threshold or default_threshold(n)
        refusal = threshold_refusal(n, t, self.threshold)
        if refusal is not None:
            raise DkgError(refusal)
        if self.me in self.proofs:
            raise DkgError(f"this member is excluded from DKG: {self.proofs[self.me][1]}")
        if len(self._confirmed) >= MAX_CONFIRMED:
            raise DkgError(f"this member confirmed {len(self._confirmed)} sessions that never completed: move the DKG "
                           f"journal {self._journal_path.name} aside")
        unknown = sorted(set(leave_out or ()) - set(self._ident_of))
        if unknown:
            raise DkgError(f"cannot leave out {unknown}: not members of this cluster")
        left = {self._ident_of[m] for m in leave_out or ()}
        if self.me in left:
            raise DkgError("cannot leave out this member: it starts the session")
        if left and self._unresolved():
            raise DkgError("cannot leave out a member without proof: this member confirmed a session that did not "
                           "complete here (a member left out might hold its key)")
        reached = self._reached_lately(left, trio.current_time())
        if reached:
            raise DkgError(f"cannot leave out {self.names(reached)}: reached within the last {self.timeout_s:g} s "
                           "(a member may be left out only when unreachable)")
        participants = {i: k for i, k in self.identifiers.items() if i not in self.proofs and i not in left}
        if len(participants) < t:
            raise DkgError(f"only {len(participants)} members remain after leaving out "
                           f"{self.names(list(self.proofs) + sorted(left))}, fewer than the threshold {t}")
        session_id = os.urandom(SESSION_ID_SIZE)
        s = self._new_session(session_id, t, participants, self.net.my_id)
        self.net.broadcast(START, self._start_body(s))
        self._send(s, s.participant.start())
        return session_id

    # ---- running -------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self._restore()
        channels = [(t, self.net.subscribe(t)) for t in (START, MSG, SYNC, PROOFS, ASK, NO_SHARE)]
        async with trio.open_nursery() as nursery:
            for type_, channel in channels:
                nursery.start_soon(self._inbox, type_, channel)
            nursery.start_soon(self._supervise)
            task_status.started()

    def _load(self) -> KeyShare:
        return keystore.load(self.keystore_path, identity=self.identity, passphrase=self.passphrase)

    async def _inbox(self, type_: str, inbox: Inbox) -> None:
        handler = {START: self._on_start, MSG: self._on_msg, SYNC: self._on_sync, PROOFS: self._on_proofs,
                   ASK: self._on_ask, NO_SHARE: self._on_no_share}[type_]
        async for peer, msg in inbox:
            if peer not in self._ident_of:
                continue
            async with self._lock:
                await handler(peer, msg.body)

    async def _supervise(self) -> None:
        """Time sessions out, ask for what is missing, start sessions by ourselves when ``auto``."""
        while True:
            await trio.sleep(min(0.25, self.sync_interval_s / 2))
            async with self._lock:
                await self._tick()

    def _unresolved(self) -> bool:
        """Whether this member confirmed a session, since the last one that completed here, that did not complete
        here: a member left out might hold its key. (Sessions confirmed before one that completed here cannot have
        completed anywhere: counting them, a new DKG after the key was moved aside could leave no one out.)"""
        last = max((self._confirmed.index(sid) for sid in self._completed if sid in self._confirmed), default=-1)
        return len(self._confirmed) > last + 1

    def _note_reachability(self, now: float) -> None:
        up = set(self.net.up_peers())
        for i in self.identifiers:
            if i == self.me or self.name(i) in up:
                self._missing_since.pop(i, None)
            else:
                self._missing_since.setdefault(i, now)

    def _reached_lately(self, members: set[int], now: float) -> set[int]:
        """Those of ``members`` reached here within the last ``timeout_s`` (or never watched yet)."""
        self._note_reachability(now)
        return {i for i in members if now - self._missing_since.get(i, now) < self.timeout_s}

    async def _tick(self) -> None:
        now = trio.current_time()
        self._note_reachability(now)
        s = self.session
        if s is not None and s.held:
            await self._deliver(s, [])
        if s is not None and self.session is s:
            p = s.participant
            if not p.committed and now - s.started > self.timeout_s:
                await self._leave(s, f"timed out after {self.timeout_s:.0f}s waiting for {self.names(p.waiting_for())}")
            elif now - s.last_sync >= self.sync_interval_s:
                s.last_sync = now
                if p.committed and now - s.started > self.timeout_s:
                    self.last_error = (f"confirmed session {s.id.hex()[:12]}; still waiting for the confirmations "
                                       f"of {self.names(p.waiting_for())}")
                self._send_sync(s)
                if s.starter == self.net.my_id and p.state is DkgState.ROUND1:
                    for j in p.waiting_for():
                        self.net.send(self.name(j), START, self._start_body(s))
        elif self.key is None and self._pending and now - self._last_pending_sync >= 4 * self.sync_interval_s:
            self._last_pending_sync = now  # ask for a late certificate of a session we confirmed
            self._send_sync(list(self._pending.values())[-1])
        self._ask_for_certificate(now)
        self._maybe_auto_start(now)

    def _ask_for_certificate(self, now: float) -> None:
        """Keyless, in no session and not known to be left out: ask the members that are up for the cluster's
        certificate now and then (2, 4, 8 … s apart, up to ``leave_out_after_s``). A member the others made their
        key without while it was away (a machine replaced, say) learns it at once: it waited, saying nothing, until
        its own start came round (``leave_out_after_s`` and more after a restart, unless it was the starter)."""
        if self.key is not None or self.left_out is not None:
            self._next_ask, self._asks = 0.0, 0
            return
        if self.session is not None:  # (not reset: a member whose sessions all time out, one that lost its key
            return  #                   share, say, asked every few seconds for ever; a regression review)
        up = self.net.up_peers()
        if not up or now < self._next_ask:
            return
        self._asks += 1
        self._next_ask = now + min(self.leave_out_after_s, self.sync_interval_s * 2 ** min(self._asks, 16))
        for peer in up:
            self.net.send(peer, ASK, {})

    def _maybe_auto_start(self, now: float) -> None:
        idle = self.key is None and self.session is None
        self._idle_since = (self._idle_since if self._idle_since is not None else now) if idle else None
        # left out: checked again now and then (a new DKG may include it), by a start the key holders answer (left_out
        # stays meanwhile: cleared, its receipt view knew no key and served any key's batches: a regression review)
        recheck = self.left_out is not None and now >= self._next_recheck
        if (not self.auto or self.key is not None or self.session is not None or self.me in self.proofs
                or (self.left_out is not None and not recheck)):
            return
        participants = [i for i in self.identifiers if i not in self.proofs]
        # members unreached here for leave_out_after_s: left out of the start (joiners check it for themselves)
        gone = {i for i in participants if now - self._missing_since.get(i, now) >= self.leave_out_after_s}
        order = sorted(self.name(i) for i in participants if i not in gone)
        starter, rank = order[0], order.index(self.net.my_id)
        up = set(self.net.up_peers())
        wait = self.leave_out_after_s + 2 * rank * self.timeout_s
        overdue = ((bool(gone) and now - min(self._missing_since[i] for i in gone) >= wait)  # (it keeps restarting)
                   or (self._idle_since is not None and now - self._idle_since >= wait))  # (or starts nothing)
        if self.net.my_id != starter and not overdue:
            # The starter may lack a proof held here (it was down while the proof went round, once): it then waits
            # for the proven member to start, which it never does, and no DKG ever completes (simulate seed 5066,
            # --dkg all). Remind it now and then while no session runs here.
            if self.proofs and starter in up and now >= self._next_proofs_hint:
                self._next_proofs_hint = now + 4 * self.sync_interval_s
                self.net.send(starter, PROOFS, {"proofs": [self.proofs[i][0] for i in sorted(self.proofs)]})
            return
        if not all(self.name(i) in up for i in participants if i != self.me and i not in gone):
            self._all_up_since = None
            return
        if self._all_up_since is None:
            self._all_up_since = now
        if now - self._all_up_since < 0.2 or now < self._next_auto:  # let links settle; back off after failures
            return
        if recheck:  # (what was relayed so far does not count: f + 1 fresh certificates are needed again)
            self._left_out_checks += 1
            self._next_recheck = now + self.leave_out_after_s * 2 ** min(self._left_out_checks, 8)
            self._certified.clear()
            self._relayed.clear()
            log.info("left out of the cluster's key: starting a DKG session to see whether that still holds")
        if gone:
            log.warning("starting a DKG session without %s: not reached for %.0f s (they will hold no key share)",
                        self.names(gone), self.leave_out_after_s)
        else:
            log.info("every participant is connected and no key exists: starting a DKG session")
        try:
            self.start(leave_out=self.names(gone) if gone else None)
        except DkgError as exc:
            if self.last_error != f"cannot start a DKG session: {exc}":
                log.warning("cannot start a DKG session: %s", exc)
            self.last_error = f"cannot start a DKG session: {exc}"
            self._next_auto = now + self.timeout_s

    # ---- handlers ------------------------------------------------------------------------------------

    async def _on_start(self, peer: str, body: dict[str, Any]) -> None:
        session_id, threshold, ids, proofs = body["session"], body["threshold"], body["participants"], body["proofs"]
        if self.key is not None:
            self._send_certificate(peer)
            return
        if (self.session is not None and self.session.id == session_id) or session_id in self._pending \
                or session_id in self._confirmed:
            return
        if session_id in self._aborted or session_id in self._refused:
            self._send_abort(peer, session_id, threshold, ids)
            return
        if len(self._confirmed) >= MAX_CONFIRMED:
            log.error("refusing DKG session %s: this member confirmed %d sessions that never completed; move the "
                      "DKG journal aside once no session runs", session_id.hex()[:12], len(self._confirmed))
            return
        refusal, participants = await self._check_start(peer, threshold, ids, proofs)
        if refusal is not None:
            await self._refuse(peer, session_id, threshold, ids, refusal)
            return
        current = self.session
        if current is not None:
            if current.participant.committed or current.id < session_id:
                return  # the smaller session id wins a race between two starts; a confirmed session is kept
            await self._leave(current, f"session {session_id.hex()[:12]} started by {peer} wins the race")
            if self.key is not None or self.session is not None:
                return
        await self._join(session_id, threshold, participants, peer)

    async def _on_sync(self, peer: str, body: dict[str, Any]) -> None:
        session_id, threshold, ids = body["session"], body["threshold"], body["participants"]
        if self.key is not None:
            self._send_certificate(peer)
            return
        s = self._find(session_id)
        if s is None and session_id in self._confirmed:
            return  # confirmed here, superseded since: never joined again (nor aborted)
        if s is None and (session_id in self._aborted or session_id in self._refused):
            self._send_abort(peer, session_id, threshold, ids)
            return
        if s is None and self.session is None and len(self._confirmed) < MAX_CONFIRMED:
            # missed the start, or restarted before confirming: join now
            refusal, participants = await self._check_start(peer, threshold, ids, [])
            if refusal is None:
                await self._join(session_id, threshold, participants, None)
                s = self.session if self.session is not None and self.session.id == session_id else None
        if s is not None:
            want = Want(frozenset(body["round1"]), frozenset(body["round2"]), frozenset(body["confirm"]))
            # through _deliver, as any message of ours: the answer may hold our confirmation (or abort, or shares),
            # never sent before what it requires is durable; answered directly, a peer's sync took our confirmation
            # while our key share could not be stored, the others adopted the key, and we, crashed then, never
            # had one (a reviewer's reproduction)
            await self._deliver(s, s.participant.answer(self._ident_of[peer], want), keep=False)

    async def _on_msg(self, peer: str, body: dict[str, Any]) -> None:
        data = body["data"]
        try:
            wire = _unpack(data)
            session_id = wire["session"] if isinstance(wire, dict) else None
        except Exception:  # msgpack raises many unrelated types for garbage
            log.warning("dropped an undecodable DKG message from %s", peer)
            return
        if type(session_id) is not bytes or len(session_id) != SESSION_ID_SIZE:  # (a list was unhashable: crash)
            log.warning("dropped a DKG message from %s: no session id of %d bytes", peer, SESSION_ID_SIZE)
            return
        self._maybe_disown(peer, session_id, wire)
        s = self._find(session_id) or self._recent.get(session_id)
        if s is None and self.key is None and self._note_foreign_key(peer, session_id, wire):
            try:  # (journaled, and kept among the keys the cluster signed under: a restarted member knows it at once,
                #    and batches under it stay the cluster's after a new DKG)
                await self._save_journal()
                assert self.left_out is not None
                await self.run_blocking(self._remember_group_key, bytes.fromhex(self.left_out["group_public_key"]))
            except OSError as exc:
                log.warning("cannot update the DKG journal: %s", exc)
        if s is None:  # kept for a session not joined yet, within bounds (a peer chooses both ids and sizes)
            buffered = self._buffer.get(session_id)
            if buffered is None and self.key is None and len(self._buffer) < MAX_BUFFERED_SESSIONS:
                buffered = self._buffer[session_id] = []
            if (buffered is not None and len(buffered) < MAX_BUFFERED
                    and self._buffered_bytes + len(data) <= MAX_BUFFERED_BYTES):
                buffered.append(data)
                self._buffered_bytes += len(data)
            return
        try:
            out = s.participant.receive(wire)
        except (DkgMessageError, DkgError) as exc:
            log.warning("dropped a DKG message from %s: %s", peer, exc)
            return
        await self._deliver(s, out)

    def _note_foreign_key(self, peer: str, session_id: bytes, wire: Any) -> bool:
        """A confirmation of a session this member is not in (members with a key answer a start or a sync with their
        certificate). Once every participant's is in, each signed for the session with those participants, this
        member not among them, the cluster has a key without it (left out while unreachable)."""
        try:
            message = decode(wire)
        except (DkgMessageError, ValueError, TypeError, KeyError):
            return False
        if not isinstance(message, Confirm) or message.sender not in self.identifiers or message.sender == self.me:
            return False
        key = (session_id, message.group_public_key)
        relayed = self._relayed.setdefault(peer, OrderedDict())
        if key not in relayed:
            if len(relayed) >= 2:
                relayed.popitem(last=False)
            relayed[key] = {}
        confirms = relayed[key]
        if message.sender in confirms:
            return False  # (the first kept: another copy does not replace it)
        confirms[message.sender] = message
        count = len(message.verifying_shares)
        if len(confirms) != count or any(len(c.verifying_shares) != count for c in confirms.values()):
            return False
        members = {i: self.identifiers[i] for i in sorted(confirms)}
        for threshold in range(threshold_floor(len(self.members)), count + 1):  # (the certificate does not say it)
            context = session_context(session_id, threshold, members)
            if all(c.verify_signature(self.identifiers[i], context) for i, c in confirms.items()):
                break
        else:
            return False
        del relayed[key]
        certified = self._certified.setdefault(key, set())
        certified.add(peer)
        if len(certified) <= (len(self.members) - 1) // 3:  # f + 1 peers: one honest at least, holding that key
            return False
        if self.left_out is not None and self.left_out["group_public_key"] == message.group_public_key.hex():
            return False  # (still so: told again)
        if self.left_out is None:  # (a key other than the one known: the re-check schedule goes on)
            self._left_out_checks = 0
            self._next_recheck = trio.current_time() + self.leave_out_after_s
        why = (f"the cluster made its key {message.group_public_key.hex()[:16]} without this member (session "
               f"{session_id.hex()[:12]}, while it was unreachable): it holds no key share and signs no receipt until "
               "a new DKG includes it")
        self.left_out = {"session": session_id.hex(), "group_public_key": message.group_public_key.hex(),
                         "message": why}
        self.last_error = why
        log.warning("%s", why)
        return True

    def _maybe_disown(self, peer: str, session_id: bytes, wire: Any) -> None:
        """A confirmation of a session this member confirmed but can never complete any more (it dealt in or
        confirmed a later one since, and gave it up: ``_deliver``, ``_store_pending``), from a peer holding its key
        (a certificate answers our asks and syncs): tell that peer, signed, that we hold no share of it. A liar can
        still complete such a session at one member while the others gave it up (it chooses who hears what when):
        that key, held by fewer than its threshold, can never sign, and its holder, refusing every new session,
        kept the cluster without a usable key for good (a regression review's reproduction). Our statements tell it
        (``_on_no_share``)."""
        if (session_id not in self._confirmed or session_id in self._pending
                or (self.cert is not None and self.cert.session == session_id)
                or (self.session is not None and self.session.id == session_id)):
            return
        try:
            message = decode(wire)
        except (DkgMessageError, ValueError, TypeError, KeyError):
            return
        if not isinstance(message, Confirm) or (self.key is not None
                                                and message.group_public_key == self.key.group_public_key):
            return  # (our own key, its certificate unreadable: never disowned)
        now = trio.current_time()
        if now - self._no_share_sent.get((peer, session_id), -1e9) < 4 * self.sync_interval_s:
            return
        self._no_share_sent[(peer, session_id)] = now
        while len(self._no_share_sent) > 4 * len(self.members):
            del self._no_share_sent[next(iter(self._no_share_sent))]
        signature = self.identity.sign(NO_SHARE_CONTEXT + session_id).signature
        self.net.send(peer, NO_SHARE, {"session": session_id, "sig": signature})

    async def _on_no_share(self, peer: str, body: dict[str, Any]) -> None:
        """A participant of our key's session says, signed, that it holds no share of that key. Once so many say so
        that fewer than the threshold can hold it (an honest member says so only when true; a healthy key has at
        most f members that could lie so, fewer than that count), the key can never sign anything: it is set aside
        (``keyshare.bin.dead-<session>``), and this member takes part in the next DKG."""
        cert, key = self.cert, self.key
        ident = self._ident_of.get(peer)
        if (cert is None or key is None or body["session"] != cert.session or ident not in cert.participants
                or ident in self._disowned):
            return
        try:
            nacl.signing.VerifyKey(self.members[peer]).verify(NO_SHARE_CONTEXT + cert.session, body["sig"])
        except nacl.exceptions.BadSignatureError:
            return
        self._disowned.add(ident)
        if len(cert.participants) - len(self._disowned) >= cert.threshold:
            return
        why = (f"the cluster key {key.group_public_key.hex()[:16]} (session {cert.session.hex()[:12]}) can never sign: "
               f"{', '.join(self.names(sorted(self._disowned)))} signed that they hold no share of it, so fewer than "
               f"its threshold {cert.threshold} do; it is set aside and this member takes part in the next DKG")
        try:
            await self.run_blocking(self._set_aside, cert.session)
        except OSError as exc:
            log.error("cannot set the dead cluster key aside: %s", exc)
            self._disowned.discard(ident)  # (asked again: the peer tells us again)
            return
        self.key, self.cert, self._disowned = None, None, set()
        self.last_error = why
        self._next_auto = 0.0
        log.error("%s", why)
        try:
            await self._save_journal()
        except OSError as exc:
            log.warning("cannot update the DKG journal: %s", exc)

    def _set_aside(self, session_id: bytes) -> None:
        """Move the key store and its certificate aside (blocking): a restart finds no key."""
        for path in (self.keystore_path, self._cert_path):
            if path.exists():
                os.replace(path, path.with_name(f"{path.name}.dead-{session_id.hex()}"))
        keystore.fsync_dir(self.keystore_path.parent)

    def _find(self, session_id: bytes) -> SessionInfo | None:
        """The running session or a confirmed one with that id."""
        if self.session is not None and self.session.id == session_id:
            return self.session
        return self._pending.get(session_id)

    async def _on_ask(self, peer: str, body: dict[str, Any]) -> None:
        if self.key is not None:  # (no key: nothing to tell; what it holds unfinished is its own business)
            self._send_certificate(peer)

    async def _on_proofs(self, peer: str, body: dict[str, Any]) -> None:
        await self._learn_proofs(body["proofs"], peer)

    # ---- sessions ------------------------------------------------------------------------------------

    async def _check_start(self, peer: str, threshold: int, ids: list[int],
                           proofs: list[bytes]) -> tuple[str | None, dict[int, bytes]]:
        """(why this start is refused or None, its participants)."""
        if len(set(ids)) != len(ids) or not set(ids) <= set(self.identifiers):
            return "participants are not members of this cluster", {}
        if self._ident_of[peer] not in ids:
            return f"the starter {peer} is not a participant", {}
        if self.me not in ids:
            for proof in proofs:
                try:
                    record = check_exclusion_proof(proof, self.identifiers)
                except DkgMessageError:
                    continue
                if record.culprit == self.me:
                    await self._learn_proofs([proof], peer)
                    return f"this member is left out: {self.describe(record)}", {}
            return "this member is left out without proof", {}
        refusal = threshold_refusal(len(self.members), threshold, self.threshold)
        if refusal is not None:
            return refusal, {}
        if len(ids) < threshold:
            return f"{len(ids)} participants are fewer than the threshold {threshold}", {}
        proven: dict[int, bytes] = {}
        for proof in proofs:
            try:
                culprit = check_exclusion_proof(proof, self.identifiers).culprit
            except DkgMessageError as exc:
                return f"invalid exclusion proof: {exc}", {}
            proven.setdefault(culprit, proof)
        left_out = set(self.identifiers) - set(ids)
        unproven = left_out - set(proven) - set(self.proofs)
        if unproven and self._unresolved():
            return (f"leaves out {self.names(unproven)} without proof, and this member confirmed a session that did "
                    "not complete here (a member left out might hold its key)"), {}
        reached = self._reached_lately(unproven, trio.current_time())
        if reached:
            return f"leaves out {self.names(reached)} without proof, reached here within {self.timeout_s:g} s", {}
        bad = set(ids) & set(self.proofs)
        if bad:
            self.net.send(peer, PROOFS, {"proofs": [self.proofs[i][0] for i in sorted(bad)]})
            return f"includes {self.names(bad)}, proven to misbehave", {}
        await self._learn_proofs([proven[i] for i in sorted(left_out & set(proven))], peer)
        return None, {i: self.identifiers[i] for i in sorted(ids)}

    async def _refuse(self, peer: str, session_id: bytes, threshold: int, ids: list[int], reason: str) -> None:
        """Log and list a refused start, and tell the starter with a signed abort (so its session ends now, saying
        why); the session id is journaled first, as for any abort."""
        if self.refused_starts and self.refused_starts[-1]["session"] == session_id.hex():
            self.refused_starts[-1]["count"] += 1  # the starter re-sends its start
            return
        log.warning("refusing DKG session %s started by %s (threshold %d): %s", session_id.hex()[:12], peer,
                    threshold, reason)
        self.refused_starts.append({"session": session_id.hex(), "from": peer, "threshold": threshold,
                                    "reason": reason, "count": 1})
        self.last_error = f"refused DKG session {session_id.hex()[:12]} started by {peer}: {reason}"
        if self.me in ids and session_id not in self._aborted and session_id not in self._refused \
                and len(self._refused) < MAX_REFUSED:  # (past it: refused unsigned, see MAX_REFUSED)
            refused = [*self._refused, session_id]
            try:
                await self._save_journal(refused=refused)
            except OSError as exc:
                log.warning("cannot update the DKG journal: %s", exc)
                return
            self._refused = refused
            self._send_abort(peer, session_id, threshold, ids, f"refused: {reason}")

    def _new_session(self, session_id: bytes, threshold: int, participants: dict[int, bytes],
                     starter: str | None) -> SessionInfo:
        participant = self.participant_class(session_id, self.identity, participants, threshold)
        participant.signs_aborts = len(self._aborted) < MAX_ABORTED
        s = self.session = SessionInfo(session_id, threshold, participant, starter)
        self.sessions_run += 1
        self.last_error = None
        return s

    async def _join(self, session_id: bytes, threshold: int, participants: dict[int, bytes],
                    starter: str | None) -> None:
        try:
            s = self._new_session(session_id, threshold, participants, starter)
        except DkgError as exc:
            log.warning("cannot join DKG session %s: %s", session_id.hex()[:12], exc)
            return
        log.info("joining DKG session %s %s (%d-of-%d)", session_id.hex()[:12],
                 f"started by {starter}" if starter else "(asked for by a peer)", threshold, len(participants))
        out = s.participant.start()
        for data in self._dealing.get(session_id, ()):  # rejoined after a restart: the round one we dealt against
            try:
                out += s.participant.receive(_unpack(data))
            except (DkgMessageError, DkgError):
                continue
        buffered = self._buffer.pop(session_id, [])
        self._buffered_bytes -= sum(map(len, buffered))
        for data in buffered:
            try:
                out += s.participant.receive(_unpack(data))
            except Exception:  # undecodable or rejected: it was never going to count
                continue
        await self._deliver(s, out)

    async def _leave(self, s: SessionInfo, reason: str) -> None:
        """Stop running ``s``: abort it when not confirmed, else keep it only for a late certificate."""
        s.reason = reason
        await self._deliver(s, s.participant.abort(reason))
        if self.session is s:
            await self._end(s, reason)

    async def _deliver(self, s: SessionInfo, out: list[Outgoing], *, keep: bool = True) -> None:
        """Send ``out`` once what it requires is durable: the key share before a confirmation, the left session's
        id before an abort. Then act on the session's new state. Held meanwhile if ``keep``, else dropped (an answer
        to a sync: the next sync asks again; kept, the answers to peers syncing every few seconds piled up while the
        disk was full, 10,000 an hour, and went out in one burst: a regression review)."""
        p = s.participant
        held = s.held
        out, s.held = held + out, []
        try:
            if p.committed and not s.durable:
                await self._store_pending(s)
            if p.left and p.signs_aborts and s.id not in self._aborted:
                aborted = [*self._aborted, s.id]  # (never one forgotten: see MAX_ABORTED)
                await self._save_journal(aborted)
                self._aborted = aborted
            if s.id not in self._dealing and any(isinstance(o.message, Round2) and o.message.sender == p.identifier
                                                 for o in out):
                # Our shares are sealed to the recipients' round-one encryption keys. A member restarted before
                # confirming rejoins with these messages, so it deals byte-identical shares again, and a dealer
                # that shows it another round one now is the one proven an equivocator; before, the restarted
                # member dealt a second share to such a liar, which then proved *it* an equivocator (a reviewer's
                # reproduction)
                dealing = {**self._dealing, s.id: [msgpack.packb(m.to_wire(), use_bin_type=True) for m in p.round1]}
                for sid in list(dealing)[:-MAX_DEALING]:
                    del dealing[sid]
                # Once our shares of this session are out, the others may confirm it and forget the key shares of the
                # sessions they confirmed before (``_store_pending``): none of those may complete here any more. A
                # liar that withheld its confirmation of an earlier session and gave it to this member alone after
                # the others confirmed this one left the cluster's only key with fewer holders than its threshold,
                # and every member stuck for good (a reviewer's reproduction)
                superseded = [sid for sid in self._pending if sid != s.id]
                pending = {sid: info for sid, info in self._pending.items() if sid == s.id}
                await self._save_journal(dealing=dealing, pending=pending)
                self._dealing, self._pending = dealing, pending
                if superseded:
                    log.warning("forgetting the key shares of %d earlier DKG session(s) confirmed here: this member "
                                "dealt in session %s", len(superseded), s.id.hex()[:12])
                    await self.run_blocking(self._forget_pending, superseded)
        except (OSError, keystore.KeystoreError) as exc:
            log.error("cannot store DKG state for session %s (will retry): %s", s.id.hex()[:12], exc)
            self.last_error = f"cannot store the DKG state: {exc}"
            s.held = out if keep else held
            return
        self._send(s, out)
        if p.state is DkgState.COMPLETE and p.result is not None:
            await self._adopt(s)
        elif p.state is DkgState.FAILED and self.session is s:
            await self._end(s, self._why(s))
        elif self.session is not s:
            await self._share_new_proofs(s)

    def _why(self, s: SessionInfo) -> str:
        p = s.participant
        parts = [s.reason] if s.reason else []
        if p.complaints:
            parts.append("; ".join(self.describe(r) for r in p.complaints))
        reasons = p.abort_reasons
        for i in sorted(p.withdrawn, key=self.name):
            parts.append(f"{self.name(i)} left the session" + (f" ({reasons[i]})" if i in reasons else
                                                                 " (confirmed another result)"))
        return "; ".join(parts)[:500] or "failed"

    async def _end(self, s: SessionInfo, error: str) -> None:
        """The running session is over without a key."""
        log.warning("DKG session %s failed: %s", s.id.hex()[:12], error)
        self.last_error = error
        self.session = None
        now = trio.current_time()
        self._failures += 1
        self._next_auto = now + min(self.timeout_s, 0.5 * 2 ** min(self._failures, 8))
        self._recent[s.id] = s
        while len(self._recent) > 4:
            del self._recent[next(iter(self._recent))]
        await self._share_new_proofs(s)
        if s.participant.committed and not s.abandoned:
            s.abandoned = True
            try:
                await self._save_journal()
            except OSError as exc:  # (it escaped into the coordinator's nursery and took it down: a reviewer's run)
                log.warning("cannot update the DKG journal: %s", exc)

    async def _share_new_proofs(self, s: SessionInfo) -> None:
        """Learn the proofs of misbehaviour ``s`` holds and we did not know, and pass them on to every member."""
        new = [proof for i, proof in s.participant.proofs().items() if i not in self.proofs and len(proof) <= MAX_PROOF]
        if new:
            await self._learn_proofs(new, None)
            for peer in self.members:
                if peer != self.net.my_id:
                    self.net.send(peer, PROOFS, {"proofs": new})

    async def _adopt(self, s: SessionInfo) -> None:
        p = s.participant
        key = p.result
        assert key is not None
        if self.key is not None:  # a session left earlier, completed late by a member's last confirmation: it
            #                         replaced the key share in use, on disk too (a reviewer's run)
            log.warning("DKG session %s completed after this member got its key: ignored", s.id.hex()[:12])
            return
        if s.id not in self._pending:  # confirmed here before another one was confirmed or dealt in: never adopted
            if s.id not in self._ignored:  # (once: each copy of a peer's certificate logged it again, ~1/s for ever)
                self._ignored[s.id] = None
                while len(self._ignored) > MAX_IGNORED:
                    del self._ignored[next(iter(self._ignored))]
                log.warning("DKG session %s completed, but this member dealt in or confirmed a later session since: "
                            "ignored", s.id.hex()[:12])
            return
        running = self.session
        if running is not None and running is not s:
            if running.participant.committed:  # confirmed the running session: that is the one it stands by
                log.warning("DKG session %s completed while this member has confirmed session %s: ignored",
                            s.id.hex()[:12], running.id.hex()[:12])
                return
            await self._leave(running, f"session {s.id.hex()[:12]} completed")  # an abort: no one waits for us
        cert = Certificate(s.id, s.threshold, tuple(s.participants),
                           tuple(msgpack.packb(c.to_wire(), use_bin_type=True) for c in p.certificate()))
        stale = [self._stored_pending(sid) for sid in self._pending if sid != s.id]
        try:
            await self.run_blocking(self._store_final, s.id, key, cert, stale)
        except (OSError, keystore.KeystoreError) as exc:
            log.error("cannot store the DKG key share: %s", exc)
            self.last_error = f"cannot store the key share: {exc}"
            return
        self.key, self.cert, self._disowned = key, cert, set()
        self.session = None
        self._completed = [*self._completed, s.id]
        self.left_out = None
        self._pending.clear()
        self._buffer.clear()
        self._buffered_bytes = 0
        self.last_error = None
        self._failures = 0
        log.info("DKG complete: group key %s (%d-of-%d), key share stored in %s", key.group_public_key.hex(),
                 key.threshold, len(key.verifying_shares), self.keystore_path)
        try:
            await self._save_journal()
        except OSError as exc:
            log.warning("cannot update the DKG journal: %s", exc)

    # ---- sending -------------------------------------------------------------------------------------

    def _start_body(self, s: SessionInfo) -> dict[str, Any]:
        left_out = set(self.identifiers) - set(s.participants)
        return {"session": s.id, "threshold": s.threshold, "participants": sorted(s.participants),
                "proofs": [self.proofs[i][0] for i in sorted(left_out) if i in self.proofs]}

    def _send(self, s: SessionInfo, out: list[Outgoing], only: str | None = None) -> None:
        for item in out:
            body = {"data": msgpack.packb(item.message.to_wire(), use_bin_type=True)}
            if item.to is not None:
                self.net.send(only or self.name(item.to), MSG, body)
            else:
                for j in s.participants:
                    if j != self.me:
                        self.net.send(self.name(j), MSG, body)

    def _send_sync(self, s: SessionInfo) -> None:
        want = s.participant.want()
        body = {"session": s.id, "threshold": s.threshold, "participants": sorted(s.participants),
                "round1": sorted(want.round1), "round2": sorted(want.round2), "confirm": sorted(want.confirm)}
        for j in s.participants:
            if j != self.me:
                self.net.send(self.name(j), SYNC, body)

    def _send_certificate(self, peer: str) -> None:
        now = trio.current_time()
        if self.cert is None or now - self._cert_sent.get(peer, -1e9) < self.sync_interval_s / 2:
            return
        self._cert_sent[peer] = now
        for data in self.cert.confirms:
            self.net.send(peer, MSG, {"data": data})

    def _send_abort(self, peer: str, session_id: bytes, threshold: int, ids: list[int],
                    reason: str = "left this session") -> None:
        if not set(ids) <= set(self.identifiers) or len(set(ids)) != len(ids):
            return
        try:
            abort = sign_abort(self.identity, session_id, threshold, {i: self.identifiers[i] for i in ids}, reason)
        except DkgError:
            return
        self.net.send(peer, MSG, {"data": msgpack.packb(abort.to_wire(), use_bin_type=True)})

    async def _learn_proofs(self, proofs: list[bytes], peer: str | None) -> None:
        new = False
        for proof in proofs:
            if len(proof) > MAX_PROOF:  # (one kept could never be sent: its send raised out of the service, which
                # took the coordinator down at every start; a liar's false complaint of 300 kB, a reviewer's run)
                log.warning("ignoring an exclusion proof of %d bytes from %s: over the %d a member may send",
                            len(proof), peer or "a session here", MAX_PROOF)
                continue
            try:
                record = check_exclusion_proof(proof, self.identifiers)
            except DkgMessageError as exc:
                log.warning("ignoring an invalid exclusion proof from %s: %s", peer, exc)
                continue
            culprit, what = record.culprit, self.describe(record)
            if culprit not in self.proofs:
                self.proofs[culprit] = (proof, what)
                new = True
                log.warning("member %s is proven to misbehave (%s): left out of DKG sessions", self.name(culprit), what)
        if new:
            try:
                await self._save_journal()
            except OSError as exc:
                log.warning("cannot update the DKG journal: %s", exc)

    # ---- storage -------------------------------------------------------------------------------------

    def _pending_path(self, session_id: bytes) -> Path:
        """Named by the whole session id: by half of it, two sessions a liar started with ids sharing that half
        shared one file, and the key share of one was renamed into the key store when the other completed (a
        reviewer's reproduction)."""
        return self.keystore_path.with_name(f"{self.keystore_path.name}.pending-{session_id.hex()}")

    def _stored_pending(self, session_id: bytes) -> Path:
        """Where the pending share of ``session_id`` is stored: ``_pending_path``, or where a version before it put
        it (named by half the id), so a member that confirmed before an upgrade still finds its share (it was lost,
        and the key never adopted: a reviewer's reproduction). What it holds is checked where it is used: against
        the stored confirmation (``restore``) or the completed key (``_holds``)."""
        path = self._pending_path(session_id)
        legacy = self.keystore_path.with_name(f"{self.keystore_path.name}.pending-{session_id.hex()[:32]}")
        return legacy if not path.exists() and legacy.exists() else path

    async def _store_pending(self, s: SessionInfo) -> None:
        share = s.participant.key_share
        assert share is not None
        await self.run_blocking(partial(keystore.save, self._pending_path(s.id), share, identity=self.identity,
                                        passphrase=self.passphrase))
        # Only the session confirmed last may ever complete here: the others' shares go. Kept for a late
        # certificate, a liar could complete a different one at each member (it withheld its confirmations and
        # said it left, session after session, then confirmed one session to one member and another to another:
        # two group keys, a reviewer's reproduction). A member runs, deals and confirms one session at a time, so
        # two members' last confirmed sessions that both complete are one and the same.
        dropped = [sid for sid in self._pending if sid != s.id]
        confirmed = self._confirmed if s.id in self._confirmed else [*self._confirmed, s.id]
        await self._save_journal(confirmed=confirmed, pending={s.id: s})
        self._pending, self._confirmed = {s.id: s}, confirmed
        s.durable = True
        if dropped:
            log.warning("forgetting the key shares of %d earlier DKG session(s) confirmed here: only the one "
                        "confirmed last may complete", len(dropped))
            await self.run_blocking(self._forget_pending, dropped)

    def _forget_pending(self, session_ids: list[bytes]) -> None:
        for sid in session_ids:
            self._stored_pending(sid).unlink(missing_ok=True)

    async def _save_journal(self, aborted: list[bytes] | None = None, refused: list[bytes] | None = None,
                            dealing: dict[bytes, list[bytes]] | None = None, confirmed: list[bytes] | None = None,
                            pending: dict[bytes, SessionInfo] | None = None) -> None:
        pending_entries = [
            {"session": s.id, "threshold": s.threshold, "participants": sorted(s.participants),
             "confirm": msgpack.packb(s.participant.own_confirm.to_wire(), use_bin_type=True),  # type: ignore[union-attr]
             "dealt": [msgpack.packb(m.to_wire(), use_bin_type=True) for m in s.participant.dealt],
             "abandoned": s.abandoned} for s in (self._pending if pending is None else pending).values()
            if self.key is None]
        dealing = self._dealing if dealing is None else dealing
        data = msgpack.packb({"v": 1, "aborted": self._aborted if aborted is None else aborted,
                              "confirmed": self._confirmed if confirmed is None else confirmed,
                              "refused": self._refused if refused is None else refused, "pending": pending_entries,
                              "dealing": [{"session": sid, "round1": round1} for sid, round1 in dealing.items()]
                              if self.key is None else [],
                              "proofs": [p for p, _ in self.proofs.values()], "completed": self._completed,
                              "left_out": self.left_out if self.key is None else None},
                             use_bin_type=True)
        await self.run_blocking(keystore.write_private, self._journal_path, data)

    @property
    def group_keys(self) -> frozenset[bytes]:
        """Every group key the cluster has signed under, as this member knows: the current one and those it held
        before a new DKG."""
        current = [self.key.group_public_key] if self.key is not None else []
        if self.key is None and self.left_out is not None:  # (made without this member: still the cluster's)
            current = [bytes.fromhex(self.left_out["group_public_key"])]
        return frozenset([*self._past_group_keys, *current])

    def _remember_group_key(self, group_key: bytes) -> None:
        """Add ``group_key`` to the durable list of keys held (blocking)."""
        if group_key in self._past_group_keys:
            return
        keys = [*self._past_group_keys, group_key][-MAX_GROUP_KEYS:]
        keystore.write_private(self._group_keys_path, msgpack.packb(keys, use_bin_type=True))
        self._past_group_keys = keys

    def _read_group_keys(self) -> list[bytes]:
        try:
            keys = msgpack.unpackb(self._group_keys_path.read_bytes(), raw=False)
        except FileNotFoundError:
            return []
        except Exception as exc:  # msgpack raises many unrelated types for garbage
            # not ignored: the next key adopted rewrote the file with itself alone, and the receipts signed under the
            # cluster's earlier keys were no longer counted as signed here (a reviewer's reproduction)
            raise keystore.KeystoreError(f"{self._group_keys_path}: unreadable list of the cluster's past group keys "
                                         f"({type(exc).__name__}: {exc}); restore it from a backup, or move it aside "
                                         "to start without it") from None
        if not isinstance(keys, list) or not all(type(k) is bytes and len(k) == 32 for k in keys):
            raise keystore.KeystoreError(f"{self._group_keys_path}: not a list of the cluster's past group keys "
                                         "(32-byte keys); restore it from a backup, or move it aside to start "
                                         "without it")
        return keys[-MAX_GROUP_KEYS:]

    def _store_final(self, session_id: bytes, key: KeyShare, cert: Certificate, stale: list[Path]) -> None:
        self._remember_group_key(key.group_public_key)
        keystore.write_private(self._cert_path, msgpack.packb(
            {"session": cert.session, "threshold": cert.threshold, "participants": list(cert.participants),
             "confirms": list(cert.confirms)}, use_bin_type=True))
        pending = self._stored_pending(session_id)
        if pending.exists() and self._holds(pending, key):
            os.replace(pending, self.keystore_path)
            keystore.fsync_dir(self.keystore_path.parent)
        else:
            keystore.save(self.keystore_path, key, identity=self.identity, passphrase=self.passphrase)
        for path in stale:
            path.unlink(missing_ok=True)

    def _holds(self, path: Path, key: KeyShare) -> bool:
        """Whether the key store at ``path`` holds ``key`` (what the key store becomes is checked, never assumed)."""
        try:
            return keystore.load(path, identity=self.identity, passphrase=self.passphrase) == key
        except keystore.KeystoreError as exc:
            log.warning("the pending key share %s is not this session's (%s): the key is stored anew", path, exc)
            return False

    def _read_state(self) -> dict[str, Any]:
        """Everything stored (blocking): the key and its certificate, or the journal and its pending shares."""
        out: dict[str, Any] = {"key": None, "cert": None, "journal": None, "pending": {}}
        if self._cert_path.exists():
            try:
                out["cert"] = msgpack.unpackb(self._cert_path.read_bytes(), raw=False)
            except Exception as exc:  # msgpack raises many unrelated types for garbage
                log.warning("ignoring an unreadable DKG certificate %s: %s", self._cert_path, exc)
        if os.path.lexists(self.keystore_path):  # (a link to nowhere, a secrets volume not mounted, is no "no key":
            out["key"] = self._load()            # a new DKG replaced it with a key of its own: a reviewer's finding)
        if self._journal_path.exists():  # (read with a key too: what it remembers of sessions must outlive it)
            try:
                journal = msgpack.unpackb(self._journal_path.read_bytes(), raw=False)
                if not isinstance(journal, dict) or journal.get("v") != 1:
                    raise ValueError("unknown format")
            except Exception as exc:  # msgpack raises many unrelated types for garbage
                # not ignored (then rewritten): it remembers the sessions this member confirmed or left, and without
                # it the member could confirm a session it had left: an "equivocation" that proves it a liar
                raise keystore.KeystoreError(f"{self._journal_path}: unreadable DKG journal ({type(exc).__name__}: "
                                             f"{exc}); restore it from a backup, or move it aside once no DKG session "
                                             "runs in the cluster") from None
            for name in ("aborted", "refused", "confirmed", "proofs", "pending", "dealing", "completed"):
                value = journal.get(name, [])  # (a field of another shape is dropped, not a crash at every start)
                journal[name] = [v for v in value if name not in ("pending", "dealing") or (isinstance(v, dict)
                                 and type(v.get("session")) is bytes)] if isinstance(value, list) else []
            out["journal"] = journal
            for entry in journal.get("pending", []) if out["key"] is None else []:
                path = self._stored_pending(entry["session"])
                if not path.exists():
                    log.warning("ignoring pending DKG session %s: its key share %s is gone",
                                entry["session"].hex()[:12], path)
                    continue
                # one that does not open stops the start, as keyshare.bin does: ignored, the session was dropped from
                # the journal at its next write, and the member, which had confirmed it, was without a key for good,
                # the right passphrase back or not (a reviewer's reproduction)
                out["pending"][entry["session"]] = keystore.load(path, identity=self.identity,
                                                                 passphrase=self.passphrase)
        return out

    def read_stored(self) -> None:
        """Read what is stored now (blocking; KeystoreError if a key file does not open), for ``run`` to use: a
        process calls it before anything else starts, so a damaged key share is one line and exit 2 at once (it came
        after a restore, a snapshot and a misleading error about the lock table: a reviewer's run)."""
        self._stored = (self._read_state(), self._read_group_keys())

    async def _restore(self) -> None:
        if self._stored is not None:
            (state, self._past_group_keys), self._stored = self._stored, None
        else:
            state = await self.run_blocking(self._read_state)
            self._past_group_keys = await self.run_blocking(self._read_group_keys)
        cert = state["cert"]
        if isinstance(cert, dict):
            self.cert = Certificate(cert["session"], cert["threshold"], tuple(cert["participants"]),
                                    tuple(cert["confirms"]))
        journal = state["journal"] or {}
        # Loaded with a key too: restarted with one, the sessions left and confirmed were forgotten, the next journal
        # write (a proof learnt) wiped them, and once the key was moved aside for a new DKG, a replayed start of the
        # completed session made the member sign an abort for it: an "equivocator" (a reviewer's reproduction)
        self._aborted = list(journal.get("aborted", []))
        self._confirmed = [sid for sid in journal.get("confirmed", []) if type(sid) is bytes]
        for entry in journal.get("pending", []):  # (journals before it: the pending sessions were all it kept)
            if isinstance(entry, dict) and type(entry.get("session")) is bytes and entry["session"] not in \
                    self._confirmed:
                self._confirmed.append(entry["session"])
        if self.cert is not None and type(self.cert.session) is bytes and self.cert.session not in self._confirmed:
            self._confirmed.append(self.cert.session)  # (the session completed here was confirmed here)
        completed = journal.get("completed")
        self._completed = [sid for sid in completed if type(sid) is bytes][-MAX_CONFIRMED:] \
            if isinstance(completed, list) else []
        left_out = journal.get("left_out")
        if state["key"] is None and _left_out_record(left_out):
            self.left_out, self._next_recheck = left_out, trio.current_time() + self.leave_out_after_s
        if self.cert is not None and type(self.cert.session) is bytes and self.cert.session not in self._completed:
            self._completed.append(self.cert.session)
        self._refused = list(journal.get("refused", []))
        for proof in journal.get("proofs", []):
            if not isinstance(proof, bytes) or len(proof) > MAX_PROOF:  # (one journaled before the limit was kept:
                continue  # its sends crashed every start; see _learn_proofs)
            try:
                record = check_exclusion_proof(proof, self.identifiers)
            except DkgMessageError:
                continue
            self.proofs.setdefault(record.culprit, (proof, self.describe(record)))
        if state["key"] is not None:
            key = state["key"]
            if not self._made_for_these_members(key):
                # made for another membership: identifiers follow the members' identity keys, so a member added or
                # removed shifts them, and the key's signer numbers no longer name the members (it was loaded as
                # is: signing failed or blamed honest members, and nothing said why; a reviewer's reproduction)
                raise keystore.KeystoreError(
                    f"{self.keystore_path}: this key share was made for other members ({len(key.verifying_shares)} "
                    f"key holders, this member identifier {key.identifier}); the cluster has {len(self.identifiers)} "
                    f"members now (this member identifier {self.me}): the membership changed since. Move "
                    f"{self.keystore_path.name} aside on every member and run a new DKG (POST /cluster/dkg)")
            self.key = key
            if key.group_public_key not in self._past_group_keys:  # (a key share stored by an older version)
                try:
                    await self.run_blocking(self._remember_group_key, key.group_public_key)
                except OSError as exc:
                    log.warning("cannot record the group key in %s: %s", self._group_keys_path, exc)
            log.info("key share loaded: group key %s, identifier %d, %d-of-%d", self.key.group_public_key.hex(),
                     self.key.identifier, self.key.threshold, len(self.key.verifying_shares))
            floor = threshold_floor(len(self.identifiers))
            if self.key.threshold < floor:  # made before the floor was enforced: it still signs, but say so loudly
                self.last_error = (f"the key share is {self.key.threshold}-of-{len(self.identifiers)}, below the "
                                   f"floor {floor} for {len(self.identifiers)} members: lying members could get two "
                                   f"receipts for one slot signed; move {self.keystore_path.name} aside and run a new "
                                   f"DKG (POST /cluster/dkg) at threshold {floor} or more")
                log.error("%s", self.last_error)
            if self.cert is not None:
                self._check_cert()
            return
        for entry in journal.get("dealing", [])[-MAX_DEALING:]:  # (journals before it: none)
            if isinstance(entry, dict) and type(entry.get("session")) is bytes \
                    and isinstance(entry.get("round1"), list):
                self._dealing[entry["session"]] = [d for d in entry["round1"] if type(d) is bytes]
        for entry in journal.get("pending", []):
            share = state["pending"].get(entry["session"])
            if share is None:
                continue
            try:
                participants = {i: self.identifiers[i] for i in entry["participants"]}
                p = self.participant_class.restore(
                    entry["session"], self.identity, participants, entry["threshold"], share,
                    msgpack.unpackb(entry["confirm"], raw=False),
                    dealt=[msgpack.unpackb(d, raw=False) for d in entry.get("dealt", [])])  # (journals before it: none)
            except (DkgError, DkgMessageError, KeyError, ValueError) as exc:
                log.warning("ignoring pending DKG session %s: %s", entry["session"].hex()[:12], exc)
                continue
            s = SessionInfo(entry["session"], entry["threshold"], p, durable=True, abandoned=entry["abandoned"])
            self._pending[s.id] = s
            log.info("resuming DKG session %s: confirmed before the restart, waiting for the certificate",
                     s.id.hex()[:12])
        if len(self._pending) > MAX_PENDING:  # (an older version's journal kept several: only the last may complete)
            last = list(self._pending)[-1]
            self._pending = {last: self._pending[last]}
        active = [s for s in self._pending.values() if not s.abandoned]
        if active:
            self.session = active[-1]
        if self.cert is not None and self.cert.session in self._pending:  # stored, but not yet renamed into place
            s = self._pending[self.cert.session]
            for data in self.cert.confirms:
                try:
                    s.participant.receive(msgpack.unpackb(data, raw=False))
                except (DkgMessageError, DkgError):
                    break
            if s.participant.state is DkgState.COMPLETE:
                await self._adopt(s)

    def _made_for_these_members(self, key: KeyShare) -> bool:
        """Whether ``key`` names the members as they are configured now: our identifier is the key's, every
        identifier holding a share is a member's (a member left out of the DKG, a proven liar, holds none), and,
        with the certificate, its first confirmation verifies under the identity keys our identifiers stand for
        now (a membership of the same size whose identity keys changed order fails there)."""
        if key.identifier != self.me or not set(key.verifying_shares) <= set(self.identifiers):
            return False
        cert = self.cert
        if cert is None:
            return True
        if not set(cert.participants) <= set(self.identifiers):
            return False
        try:
            first = decode(msgpack.unpackb(cert.confirms[0], raw=False))
        except (DkgMessageError, ValueError, IndexError, TypeError):
            return True  # no usable certificate (``_check_cert`` drops it): the checks above are all there is
        if not isinstance(first, Confirm) or first.group_public_key != key.group_public_key \
                or first.sender not in self.identifiers:
            return True
        context = session_context(cert.session, cert.threshold, {i: self.identifiers[i] for i in cert.participants})
        return first.verify_signature(self.identifiers[first.sender], context)

    def _check_cert(self) -> None:
        """Drop a stored certificate that does not belong to the stored key."""
        assert self.key is not None and self.cert is not None
        try:
            first = decode(msgpack.unpackb(self.cert.confirms[0], raw=False))
        except (DkgMessageError, ValueError, IndexError, TypeError):
            first = None
        if not isinstance(first, Confirm) or first.group_public_key != self.key.group_public_key:
            log.warning("ignoring a DKG certificate that does not match the key share")
            self.cert = None
