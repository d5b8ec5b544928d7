"""Byzantine members for the simulator: an equivocating proposer, a replayer of other members' messages, and a
forger of replies. Each speaks the real peer protocol through its member's simulated links and records any
signature it manages to obtain, so the safety checker can prove it never got two receipts of one slot signed.

The behaviours a real coordinator takes with DSDN_BYZANTINE (``BYZANTINE_BEHAVIOURS``, test clusters only, see
deploy/coordinator.py) are installed by :func:`make_byzantine`: the lying signers of :func:`corrupt_signer` and
the equivocating proposer of :func:`equivocate_batches`.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import trio

from consensus import frost
from consensus import receipts as rc
from consensus.dkg import DkgParticipant, Outgoing
from consensus.dkg_messages import Round2
from consensus.group import IDENTITY, is_valid_element
from consensus.receipt_service import FINAL, FINAL_ACK, LOCK, LOCK_REPLY, SIGN, SIGN_REPLY
from consensus.slots import Decision, Verdict
from node import merkle

if TYPE_CHECKING:
    from consensus.receipt_service import ReceiptService
    from deploy.simulation import Member, SimCluster

SIGNER_BEHAVIOURS = ("bad_shares", "withhold", "bad_commitments")
BYZANTINE_BEHAVIOURS = (*SIGNER_BEHAVIOURS, "equivocate")  # what DSDN_BYZANTINE accepts
SEEN_SLOTS = 4096  # slots whose receipts an equivocating proposer remembers


def make_byzantine(service: ReceiptService, behaviour: str) -> None:
    """Make a real coordinator's receipt engine lie (before it runs): see :func:`corrupt_signer` and
    :func:`equivocate_batches`."""
    if behaviour == "equivocate":
        equivocate_batches(service)
    else:
        corrupt_signer(service, behaviour)


def equivocate_batches(service: ReceiptService) -> None:
    """Make a proposer equivocate, before its service runs: every batch it proposes goes to half of its peers as
    proposed, and to the other half as a different batch under the same batch id — each receipt for whose slot
    this coordinator has seen a rival (submitted to it, or in a peer's lock request) replaced by that rival, or
    else the first receipt replaced by another receipt it has seen, and the order reversed. It ignores its own
    lock table for its own batches (it proposes a receipt whose slot it locked to a rival for another proposer),
    and the state's signed slots for what is submitted to it (it proposes the rival of a receipt already signed).
    Its signing requests are the honest ones (for the batch as proposed): the peers that locked the other batch
    must refuse them, and no slot may end up signed twice."""
    seen: OrderedDict[tuple[Any, ...], dict[bytes, bytes]] = OrderedDict()  # slot -> receipt id -> wire

    def remember(r: rc.Receipt) -> None:
        seen.setdefault(r.slot, {})[r.id] = r.to_wire()
        seen.move_to_end(r.slot)
        while len(seen) > SEEN_SLOTS:
            seen.popitem(last=False)

    honest_submit, honest_lock, honest_lock_own = service.submit, service._on_lock, service._lock_own
    honest_rival = service.view.signed_rival
    proposing: set[bytes] = set()  # what is submitted to it, proposed whatever the state says

    def signed_rival(receipt_id: bytes, slot: tuple[str, str, str, int]) -> bytes | None:
        return None if receipt_id in proposing else honest_rival(receipt_id, slot)

    service.view.signed_rival = signed_rival  # type: ignore[method-assign]

    def submit(receipt: rc.Receipt) -> Any:
        remember(receipt)
        if len(proposing) >= 1 << 16:  # (bounded: a long run's earliest are long signed or given up)
            proposing.clear()
        proposing.add(receipt.id)
        return honest_submit(receipt)

    async def on_lock(peer: str, body: dict[str, Any]) -> dict[str, Any]:
        for wire in body["receipts"]:
            with contextlib.suppress(rc.ReceiptError):
                remember(rc.Receipt.from_wire(wire))
        return await honest_lock(peer, body)

    async def lock_own(batch: list[rc.Receipt], batch_id: bytes) -> list[Decision]:
        decisions = await honest_lock_own(batch, batch_id)
        return [Decision(d.receipt_id, Verdict.OK) if d.verdict is Verdict.CONFLICT else d for d in decisions]

    def other_batch(wires: list[bytes]) -> list[bytes]:
        out, changed = [], False
        for wire in wires:
            try:
                r = rc.Receipt.from_wire(wire)
            except rc.ReceiptError:
                out.append(wire)
                continue
            rival = next((w for rid, w in seen.get(r.slot, {}).items() if rid != r.id), None)
            out.append(rival or wire)
            changed |= rival is not None
        if not changed and out:
            first = rc.Receipt.from_wire(out[0])
            other = next((w for slot in reversed(seen) if slot != first.slot for w in seen[slot].values()), None)
            if other is not None:
                out[0] = other
        return out[::-1]

    service.submit = submit  # type: ignore[method-assign]
    service._on_lock = on_lock  # type: ignore[method-assign]  # run() registers what this attribute holds
    service._lock_own = lock_own  # type: ignore[method-assign]
    service.net = _EquivocatingNet(service.net, sorted(service.members), other_batch)  # type: ignore[assignment]


class _EquivocatingNet:
    """The proposer's peer links, with every lock request to the second half of the peers rewritten."""

    def __init__(self, net: Any, members: list[str], rewrite: Any) -> None:
        self._net, self._rewrite = net, rewrite
        peers = [m for m in members if m != net.my_id]
        self._other_half = set(peers[len(peers) // 2:])

    def __getattr__(self, name: str) -> Any:
        return getattr(self._net, name)

    async def request(self, peer_id: str, type_: str, body: dict[str, Any], timeout_s: float, *,
                      expect: str) -> Any:
        if type_ == LOCK and peer_id in self._other_half:
            body = {**body, "receipts": self._rewrite(list(body["receipts"]))}
        return await self._net.request(peer_id, type_, body, timeout_s, expect=expect)


def corrupt_signer(service: ReceiptService, behaviour: str) -> None:
    """Make a signer lie, before its service runs: ``bad_shares`` sends well-formed but wrong shares, ``withhold``
    never answers another member's sign request (its own batches it still signs), ``bad_commitments`` offers other
    members nonce commitments that are no group element (the identity point), in lock and sign replies, spares
    included. Used by the simulator and by a coordinator started with DSDN_BYZANTINE (test clusters only)."""
    if behaviour not in SIGNER_BEHAVIOURS:
        raise ValueError(f"unknown byzantine behaviour {behaviour!r}: expected one of {SIGNER_BEHAVIOURS}")
    if behaviour == "withhold":
        async def silent(peer: str, body: dict[str, Any]) -> dict[str, Any]:
            await trio.sleep_forever()  # the dispatcher's handler deadline ends it; no answer ever leaves
            raise AssertionError("unreachable")

        service._on_sign = silent  # type: ignore[method-assign]  # run() registers what this attribute holds
        service._fast_share = lambda peer, body, held: b""  # type: ignore[method-assign]  # nor in a lock reply
        return
    if behaviour == "bad_commitments":
        honest_lock, honest_share = service._on_lock, service._sign_share

        def identity(pair: list[bytes]) -> list[bytes]:
            return [IDENTITY, IDENTITY] if pair else []

        async def lock(peer: str, body: dict[str, Any]) -> dict[str, Any]:
            reply = await honest_lock(peer, body)
            return {**reply, "commitment": identity(reply["commitment"]), "spare": identity(reply["spare"])}

        def share(peer: str, body: dict[str, Any], held: list[rc.Receipt]) -> dict[str, Any]:
            reply = honest_share(peer, body, held)
            return reply if peer == service.my_id else {**reply, "commitment": identity(reply["commitment"])}

        service._on_lock, service._sign_share = lock, share  # type: ignore[method-assign]
        return
    honest = service._sign_share

    def lying(peer: str, body: dict[str, Any], held: list[rc.Receipt]) -> dict[str, Any]:
        reply = honest(peer, body, held)
        if reply["share"]:
            reply["share"] = (int.from_bytes(reply["share"], "little") ^ 1).to_bytes(32, "little")
        return reply

    service._sign_share = lying  # type: ignore[method-assign]


class GarblingDealer(DkgParticipant):
    """A DKG participant that deals one other participant (the one with the smallest identifier) a share that does
    not decrypt, in every session: the victim proves it (revealing the pair's key) and the others leave the dealer
    out of the next session. Deterministic (the garbled box is the real one with every byte flipped), so a
    simulated run replays."""

    def _advance(self) -> None:
        super()._advance()
        target = min(i for i in self.participants if i != self.identifier)
        for k, out in enumerate(self._outbox):
            m = out.message
            if isinstance(m, Round2) and m.recipient == target:
                bad = Round2(self.session_id, self.identifier, m.recipient, bytes(b ^ 0xFF for b in m.box),
                             m.recipient_key)
                self._outbox[k] = Outgoing(out.to, self._sign(bad))


class Adversary:
    def __init__(self, cluster: SimCluster, member: Member) -> None:
        self.cluster, self.member = cluster, member
        self.node = cluster.net.nodes[member.id]
        self.rng = cluster.rng
        self.seen: list[tuple[str, dict[str, Any]]] = []  # (type, body) of requests it received

    async def run(self, behaviour: str) -> None:
        if behaviour == "equivocate":
            await self.equivocate()
        elif behaviour == "replay":
            await self.replay()
        elif behaviour == "forge":
            await self.forge()

    def _peers(self) -> list[str]:
        return sorted(p for p in self.cluster.members if p != self.member.id)

    # ---- equivocation: conflicting batches to two sets of t - 1 peers each ---------------------------

    async def equivocate(self) -> None:
        while self.member.keys.key is None:  # a key from the DKG first
            await trio.sleep(0.1)
        await trio.sleep(self.rng.uniform(0.1, 2.0))
        key = self.member.keys.key
        assert key is not None
        for a, b in self.cluster.conflicts:
            peers = self._peers()
            self.rng.shuffle(peers)
            # each rival to t - 1 peers, the two sets overlapping as little as they can, one after the other: enough
            # shares for both if the overlap signs the second over the first's lock (split in halves, neither half
            # could reach t - 1 for n >= 5, so the attempt could not succeed even against signers that check no
            # lock: a reviewer's count)
            k = min(key.threshold - 1, len(peers))
            await self._push([a], peers[:k])
            await self._push([b], peers[-k:])

    async def _push(self, receipts: list[rc.Receipt], peers: list[str]) -> None:
        """Lock ``receipts`` at ``peers`` and try to get them signed with our own share added."""
        key = self.member.keys.key
        if key is None:
            return
        batch = self.rng.randbytes(16)
        commitments: dict[int, tuple[bytes, bytes]] = {}
        names: dict[int, str] = {}
        for peer in peers:
            try:
                wires = [r.to_wire() for r in receipts]
                reply = await self.node.request(peer, LOCK, {"batch": batch, "receipts": wires}, timeout_s=1.0,
                                                expect=LOCK_REPLY)
            except TimeoutError:
                continue
            body = reply.body
            if (list(body["verdicts"]) == [Verdict.OK] * len(receipts) and len(body["commitment"]) == 2
                    and all(map(is_valid_element, body["commitment"]))):  # (not another liar's non-points)
                ident = self.cluster.service(self.member.id).identifier_of[peer]
                commitments[ident], names[ident] = (body["commitment"][0], body["commitment"][1]), peer
        chosen = dict(list(commitments.items())[: key.threshold - 1])
        if len(chosen) < key.threshold - 1:
            return
        own_nonces, own_commitment = frost.commit(key.secret_share, self.rng.randbytes(32), self.rng.randbytes(32))
        chosen[key.identifier] = own_commitment
        root = merkle.root([r.to_bytes() for r in receipts])
        message = rc.batch_message(key.group_public_key, root, len(receipts))
        ids = sorted(chosen)
        request = {"batch": batch, "ids": b"".join(r.id for r in receipts), "session": 0, "signers": bytes(ids),
                   "hiding": [chosen[i][0] for i in ids], "binding": [chosen[i][1] for i in ids]}
        try:
            shares = {key.identifier: frost.sign(key.identifier, key.secret_share, key.group_public_key, own_nonces,
                                                 message, chosen)}
        except frost.FrostError:  # another liar's commitment that is no group element: no signature this time
            return
        for ident in ids:
            if ident == key.identifier:
                continue
            try:
                reply = await self.node.request(names[ident], SIGN, request, timeout_s=1.0, expect=SIGN_REPLY)
            except TimeoutError:
                return
            if len(reply.body["share"]) != 32:
                return
            shares[ident] = reply.body["share"]
        try:
            signature = frost.aggregate(chosen, message, key.group_public_key, shares)
        except frost.FrostError:  # a share that is no scalar (another liar's): no signature this time (a whole
            return  # campaign stopped at seed 1133 with this traceback, a reviewer's finding)
        if frost.verify(key.group_public_key, message, signature):
            self.cluster.observed.adversary_signatures.append((receipts, root, signature))

    # ---- replay: other members' requests and finals, sent again as our own --------------------------

    async def replay(self) -> None:
        service = self.cluster.service(self.member.id)
        for type_, reply_type, handler in ((SIGN, SIGN_REPLY, service._on_sign), (LOCK, LOCK_REPLY, service._on_lock)):
            self.node.on_request(type_, reply_type, self._recording(type_, handler))
        while True:
            await trio.sleep(self.rng.uniform(0.2, 1.0))
            for type_, body in list(self.seen)[-8:]:
                peer = self.rng.choice(self._peers())
                expect = SIGN_REPLY if type_ == SIGN else LOCK_REPLY
                with contextlib.suppress(TimeoutError):
                    await self.node.request(peer, type_, body, timeout_s=0.5, expect=expect)

    def _recording(self, type_: str, handler: Any) -> Any:
        async def record(peer: str, body: dict[str, Any]) -> dict[str, Any]:
            self.seen.append((type_, body))
            del self.seen[:-64]
            return await handler(peer, body)

        return record

    # ---- forged replies: answers nobody asked this member for ---------------------------------------

    def _forge_reply(self, peer: str, re: int, *, lock: bool) -> None:
        if lock:
            self.node.send(peer, LOCK_REPLY, {"verdicts": bytes(1), "conflicts": [], "reasons": [""],
                                              "commitment": []}, re=re)
        else:
            self.node.send(peer, SIGN_REPLY, {"share": self.rng.randbytes(32), "commitment": [], "error": ""}, re=re)

    async def forge(self) -> None:
        """Replies to requests a peer sent to others: a peer numbers its requests in sequence and asks every signer
        at once, so as a request arrives here the ids next to its own name those the others were sent, still
        awaiting their replies: each gets a forged one at once (random ids never matched a pending request: the
        peer and type checks went untested, a reviewer's finding)."""
        heard: dict[str, list[int]] = {}  # request ids each peer sent here, latest last
        deliver = self.node.dispatcher.deliver

        async def recording(peer: str, msg: Any, deadline: float | None = None, size: int = 0) -> int:
            if msg.id is not None:
                ids = heard.setdefault(peer, [])
                ids.append(msg.id)
                del ids[:-16]
                for re in range(msg.id - 6, msg.id + 7):
                    if re != msg.id:
                        self._forge_reply(peer, re, lock=msg.type == LOCK)
            return await deliver(peer, msg, deadline, size)

        self.node.dispatcher.deliver = recording  # type: ignore[method-assign]
        while True:
            await trio.sleep(self.rng.uniform(0.05, 0.3))
            peer = self.rng.choice(self._peers())
            re = self.rng.choice(heard[peer]) + self.rng.randint(-4, 16) if heard.get(peer) else \
                self.rng.randrange(1, 400)
            self._forge_reply(peer, re, lock=self.rng.random() < 0.5)
            if self.rng.random() < 0.1:  # a batch that does not verify, and a "kept" nobody asked for
                self.node.send(peer, FINAL, {"group_key": self.rng.randbytes(32).hex(),
                                             "root": self.rng.randbytes(32).hex(), "tree_size": 1,
                                             "signature": self.rng.randbytes(64).hex(), "signers": "c0",
                                             "receipts": self.rng.randbytes(64)}, id_=self.rng.randrange(1, 2**40))
                self.node.send(peer, FINAL_ACK, {"kept": 1}, re=re)
