"""Drives the DKG state machine (consensus/dkg.py) over the peer network and keeps the resulting key.

* ``start()`` (``POST /cluster/dkg``) broadcasts ``dkg.start`` {session, threshold}; every member without
  a key joins. With ``auto``, the member with the smallest id starts one by itself when every peer is
  connected and no key exists, and again after a failed or timed-out session.
* Two sessions at once (two starts racing): every member keeps the one with the smaller session id.
* A session that does not complete within ``timeout_s`` fails, naming the members it still waited for.
* The key share is written to the encrypted key store (0600) when the session completes and loaded at
  start, so a restarted coordinator keeps its key.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import msgpack
import nacl.signing
import trio

from consensus import keystore
from consensus.dkg import DkgError, DkgParticipant, DkgState, Outgoing, assign_identifiers, check_threshold
from consensus.dkg_messages import SESSION_ID_SIZE, DkgMessageError
from consensus.frost import KeyShare
from protocol.envelope import Message, Registry, is_bytes, is_int

log = logging.getLogger("dsdn.dkg")
START, MSG = "dkg.start", "dkg.msg"
MAX_BUFFERED = 4096  # messages of a session we have not joined yet


class Network(Protocol):
    my_id: str

    def send(self, peer_id: str, type_: str, body: dict[str, Any]) -> bool: ...
    def broadcast(self, type_: str, body: dict[str, Any]) -> int: ...
    def subscribe(self, type_: str) -> trio.MemoryReceiveChannel[tuple[str, Message]]: ...
    def up_peers(self) -> list[str]: ...


def register(registry: Registry) -> None:
    registry.register(START, {"session": is_bytes(SESSION_ID_SIZE), "threshold": is_int(1, 255)})
    registry.register(MSG, {"data": is_bytes(max_len=512 * 1024)})


@dataclass
class SessionInfo:
    id: bytes
    threshold: int
    participant: DkgParticipant
    started: float = field(default_factory=trio.current_time)


class DkgService:
    def __init__(self, net: Network, identity: nacl.signing.SigningKey, members: dict[str, bytes],
                 keystore_path: Path, *, passphrase: bytes | None = None, threshold: int | None = None,
                 auto: bool = True, timeout_s: float = 30.0) -> None:
        """``members``: member id -> Ed25519 identity key, this coordinator included."""
        self.net, self.identity, self.members = net, identity, members
        self.keystore_path, self.passphrase, self.auto, self.timeout_s = keystore_path, passphrase, auto, timeout_s
        self.identifiers = assign_identifiers(members.values())  # identifier -> key, the same on every member
        self._member_of = {key: member for member, key in members.items()}
        self.threshold = threshold
        if threshold is not None:
            check_threshold(len(members), threshold)
        self.key: KeyShare | None = None
        self.session: SessionInfo | None = None
        self.last_error: str | None = None
        self.sessions_run = 0
        self._buffer: dict[bytes, list[bytes]] = {}
        self._wake = trio.Event()

    # ---- views and commands ------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        key = self.key
        members = []
        for identifier, public_key in sorted(self.identifiers.items()):
            share = key.verifying_shares.get(identifier) if key else None
            members.append({"id": self._member_of[public_key], "identifier": identifier, "public_key": public_key.hex(),
                            "verifying_share": share.hex() if share else None})
        s = self.session
        state = "complete" if key else (s.participant.state.value if s else ("failed" if self.last_error else "none"))
        return {
            "group_public_key": key.group_public_key.hex() if key else None,
            "threshold": key.threshold if key else (s.threshold if s else None),
            "members": members,
            "dkg": {"state": state, "session": s.id.hex() if s else None, "error": self.last_error,
                    "waiting_for": sorted(self._member_of[self.identifiers[i]] for i in s.participant.waiting_for())
                    if s and s.participant.state not in (DkgState.COMPLETE, DkgState.FAILED) else [],
                    "sessions_run": self.sessions_run},
        }

    def start(self, threshold: int | None = None) -> bytes:
        """Begin a session; DkgError if a key exists or a session is running, or the threshold is wrong."""
        if self.key is not None:
            raise DkgError("this cluster already has a key")
        if self.session is not None:
            raise DkgError(f"DKG session {self.session.id.hex()} is already running")
        t = threshold or self.threshold or None
        session_id = os.urandom(SESSION_ID_SIZE)
        self._join(session_id, t)
        assert self.session is not None
        self.net.broadcast(START, {"session": session_id, "threshold": self.session.threshold})
        self._send(self.session.participant.start())
        return session_id

    # ---- running -------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self.keystore_path.exists():
            self.key = await trio.to_thread.run_sync(self._load)
            log.info("key share loaded: group key %s, identifier %d, %d-of-%d", self.key.group_public_key.hex(),
                     self.key.identifier, self.key.threshold, len(self.key.verifying_shares))
        starts, msgs = self.net.subscribe(START), self.net.subscribe(MSG)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._on_starts, starts)
            nursery.start_soon(self._on_msgs, msgs)
            nursery.start_soon(self._supervise)
            task_status.started()

    def _load(self) -> KeyShare:
        return keystore.load(self.keystore_path, identity=self.identity, passphrase=self.passphrase)

    async def _on_starts(self, inbox: trio.MemoryReceiveChannel[tuple[str, Message]]) -> None:
        async for peer, msg in inbox:
            session_id, threshold = msg.body["session"], msg.body["threshold"]
            if self.key is not None:
                continue
            current = self.session
            if current is not None and (current.id == session_id or current.id < session_id):
                continue  # the smaller session id wins a race between two starts
            try:
                self._join(session_id, threshold)
            except DkgError as exc:
                log.warning("ignoring DKG start from %s: %s", peer, exc)
                continue
            assert self.session is not None
            log.info("joining DKG session %s started by %s (%d-of-%d)", session_id.hex()[:12], peer,
                     self.session.threshold, len(self.members))
            self._send(self.session.participant.start())
            for data in self._buffer.pop(session_id, []):
                self._feed(data)

    async def _on_msgs(self, inbox: trio.MemoryReceiveChannel[tuple[str, Message]]) -> None:
        async for peer, msg in inbox:
            self._feed(msg.body["data"], peer)
            self._wake.set()

    def _feed(self, data: bytes, peer: str = "?") -> None:
        try:
            wire = msgpack.unpackb(data, raw=False, max_bin_len=64 * 1024, max_str_len=1024,
                                   max_array_len=1024, max_map_len=64)
            session_id = wire["session"] if isinstance(wire, dict) else None
        except Exception:  # msgpack raises many unrelated types for garbage
            log.warning("dropped an undecodable DKG message from %s", peer)
            return
        s = self.session
        if s is None or session_id != s.id:
            if self.key is None and isinstance(session_id, bytes):
                buffered = self._buffer.setdefault(session_id, [])
                if len(buffered) < MAX_BUFFERED and len(self._buffer) <= 8:
                    buffered.append(data)
            return
        try:
            out = s.participant.receive(wire)
        except (DkgMessageError, DkgError) as exc:
            log.warning("dropped a DKG message from %s: %s", peer, exc)
            return
        self._send(out)
        self._check_done()

    def _join(self, session_id: bytes, threshold: int | None) -> None:
        participant = DkgParticipant(session_id, self.identity, self.identifiers, threshold)
        self.session = SessionInfo(session_id, participant.threshold, participant)
        self.sessions_run += 1
        self.last_error = None

    def _send(self, out: list[Outgoing]) -> None:
        for item in out:
            body = {"data": msgpack.packb(item.message.to_wire(), use_bin_type=True)}
            if item.to is None:
                self.net.broadcast(MSG, body)
            else:
                self.net.send(self._member_of[self.identifiers[item.to]], MSG, body)
        self._check_done()

    def _check_done(self) -> None:
        s = self.session
        if s is None:
            return
        if s.participant.state is DkgState.COMPLETE and s.participant.result is not None:
            self.key = s.participant.result
            self.session = None
            self._buffer.clear()
            self._wake.set()
        elif s.participant.state is DkgState.FAILED:
            accused = [self._member_of[self.identifiers[i]] for i in sorted(s.participant.accused)]
            self._fail(s, f"complaints against {accused}: "
                          + "; ".join(c.reason for c in s.participant.complaints)[:500])

    def _fail(self, s: SessionInfo, error: str) -> None:
        log.warning("DKG session %s failed: %s", s.id.hex()[:12], error)
        self.last_error = error
        self.session = None

    async def _supervise(self) -> None:
        """Store a completed key; time sessions out; start sessions by ourselves when ``auto``."""
        stored = False
        while True:
            with trio.move_on_after(0.5):
                await self._wake.wait()
            self._wake = trio.Event()
            if self.key is not None and not stored:
                if not self.keystore_path.exists():
                    key = self.key
                    await trio.to_thread.run_sync(partial(keystore.save, self.keystore_path, key,
                                                          identity=self.identity, passphrase=self.passphrase))
                    log.info("DKG complete: group key %s (%d-of-%d), key share stored in %s",
                             key.group_public_key.hex(), key.threshold, len(key.verifying_shares),
                             self.keystore_path)
                stored = True
            s = self.session
            if s is not None and trio.current_time() - s.started > self.timeout_s:
                waiting = sorted(self._member_of[self.identifiers[i]] for i in s.participant.waiting_for())
                self._fail(s, f"timed out after {self.timeout_s:.0f}s waiting for {waiting}")
            if (self.auto and self.key is None and self.session is None
                    and self.net.my_id == min(self.members)
                    and len(self.net.up_peers()) == len(self.members) - 1):
                await trio.sleep(1.0 if self.last_error else 0.2)  # let links settle; back off after a failure
                if self.key is None and self.session is None and len(self.net.up_peers()) == len(self.members) - 1:
                    log.info("every peer is connected and no key exists: starting a DKG session")
                    try:
                        self.start()
                    except DkgError as exc:
                        log.warning("cannot start a DKG session: %s", exc)
