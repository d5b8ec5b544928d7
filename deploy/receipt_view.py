"""The receipt engine's view of a coordinator's DA-derived state (consensus.receipt_service.LedgerView).

It lives with the composition root because it joins node (state, events) and consensus (receipt bytes,
Merkle paths, batch signatures), which never import each other.

A batch a member announces (``rc.final``) is *heard*, not applied: the state holds only what this coordinator wrote
or read from DA, so every member's state stays the one DA rebuilds. Applied at once, a batch whose proposer died
before its outbox reached DA (its disk lost) lived in every peer's state and snapshots and on no DA: a receipt
reported final was lost to any coordinator rebuilt from DA. Heard batches are served (``signed_document``) until
DA brings them, and the receipt engine publishes one again when its announcers are gone and DA still lacks it.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from consensus import receipts as rc
from consensus.frost import verify
from consensus.receipt_service import KeySource
from node import events as ev
from node import merkle
from node.outbox import Overloaded
from node.receipt_ledger import Batch, ReceiptInfo, checked_receipt, parse_batch, parse_receipt
from node.state import State

log = logging.getLogger("dsdn.receipts")
_BATCH_FIELDS = tuple(name for name, _ in ev.SCHEMAS[ev.RECEIPT_BATCH])


@dataclass
class HeardBatch:
    """A signed batch members announced, not (yet) in this coordinator's state."""

    batch: Batch
    fields: dict[str, Any]  # the batch event's fields, to publish it again
    ids: list[bytes]  # its receipt ids in batch order
    origins: set[str]  # the members that announced it (each has it in its outbox)
    heard_at: float  # trio time it was first heard
    kept: bool = False  # on disk here (the lock table's ``heard``): set by the receipt engine
    flowing_mark: float = 0.0  # the receipt engine's count of seconds DA worked for it, when it was heard


class StateLedgerView:
    def __init__(self, state: Callable[[], State], submit: Callable[..., Awaitable[ev.Event]],
                 keys: KeySource, da_read_through: Callable[[], float | None] = lambda: None) -> None:
        """``state``: the current state; ``submit(kind, **fields)``: append an event of ours durably and apply
        it; ``keys``: the group key holder; ``da_read_through()``: see ``LedgerView``."""
        self._state, self._submit, self._keys = state, submit, keys
        self.da_read_through = da_read_through
        self._paths: OrderedDict[bytes, list[list[bytes]]] = OrderedDict()  # batch root -> every leaf's path
        # batch root -> the batch, oldest first. Not capped: heard batches are kept until the state holds them (a
        # long DA outage grows them as it grows the proposers' states), and one dropped here was signed again by a
        # takeover, whose batch, announced, dropped another at the peers (a reviewer's run: every batch 4 times)
        self._heard: OrderedDict[bytes, HeardBatch] = OrderedDict()
        self._heard_of: dict[bytes, tuple[bytes, int]] = {}  # receipt id -> (root, index) of a heard batch
        self._heard_slots: dict[tuple[str, str, str, int], set[bytes]] = {}  # slot -> receipt ids in heard batches
        self._heard_version = 0  # bumps whenever _heard_of changes

    def node_key(self, node_id: str) -> tuple[bool, bytes | None]:
        state = self._state()
        if state.node(node_id) is None:
            return False, None
        return True, state.ledger.key_of(node_id)

    def replica(self, object_hash: str, node_id: str) -> bool | None:
        found = self._state().object(object_hash)
        if found is None:
            return None
        return node_id in found[1]

    def _group_keys(self) -> frozenset[str] | None:
        """The cluster's group keys (hex): the current one and those before a new DKG; None while none is known. A
        member holding no key may still know the cluster's: left out by a DKG (``DkgService.left_out``), or its key
        share lost, its past keys kept; it served batches signed under any key, a liar's own included, as final
        (reviewers' finds)."""
        key = self._keys.key
        if key is None:
            held = getattr(self._keys, "group_keys", None)
            return frozenset(k.hex() for k in held) if held else None
        held = getattr(self._keys, "group_keys", None)
        return frozenset(k.hex() for k in (held or (key.group_public_key,)))

    def _located(self, receipt_id: bytes) -> tuple[Batch, int] | None:
        """Where the state holds a receipt signed under one of the cluster's keys (any key while this coordinator
        knows none). A batch a member signed under a key of its own is kept by the state (it cannot tell), but it
        is no signed receipt: it was served as final and listed (a reviewer's reproduction). A batch signed under
        an earlier cluster key, before a new DKG, still is one."""
        groups = self._group_keys()
        key = self._keys.key
        located = self._state().ledger.locate(receipt_id, key.group_public_key.hex() if key is not None else None)
        if located is None or (groups is not None and located[0].group_key not in groups):
            if located is not None and groups is not None:  # another batch of it, under an earlier cluster key?
                return self._state().ledger.locate_under(receipt_id, groups)
            return None
        return located

    def signed_document(self, receipt_id: bytes) -> dict[str, Any] | None:
        """The signed document of a receipt in the state, or else in a heard batch."""
        located = self._located(receipt_id)
        if located is None:
            heard = self._heard_of.get(receipt_id)
            if heard is None:
                return None
            located = self._heard[heard[0]].batch, heard[1]
        batch, index = located
        raw, node_signature = batch.wires[index]
        receipt = rc.decode(raw, node_signature)
        path = self._path(batch, index)
        return rc.document(receipt, bytes.fromhex(batch.root), batch.tree_size, index, path,
                           bytes.fromhex(batch.signature), bytes.fromhex(batch.group_key), list(batch.signers))

    def holds(self, receipt_id: bytes) -> bool:
        return self._located(receipt_id) is not None

    def signed_rival(self, receipt_id: bytes, slot: tuple[str, str, str, int]) -> bytes | None:
        """A receipt of ``slot`` other than ``receipt_id`` signed under one of the cluster's keys, or one the node
        itself signed (its registered key) under any key: safety first (a member whose lock table was replaced
        relies on this check, and a batch under a key it does not know may be the cluster's from before it lost its
        data). Not any batch's: a liar's batch under a key of its own, holding a receipt it signed with a key of its
        own in the node's name, held up that node's real receipt for good (a reviewer's reproduction)."""
        ledger = self._state().ledger
        ids = ledger.by_slot.get(slot) or set()
        heard = self._heard_slots.get(slot) or set()  # (a batch announced, not in the state yet: its receipt was
        # served as final here while a rival was locked and promised, a reviewer's reproduction)
        rivals = [rid for rid in heard if rid != receipt_id]
        if ids - {receipt_id}:
            groups, node_key = self._group_keys(), ledger.key_of(slot[1])
            rivals += [rid for rid in ids if rid != receipt_id and self._rival_counts(rid, groups, node_key)]
        return min(rivals, default=None)

    def _rival_counts(self, receipt_id: bytes, groups: frozenset[str] | None, node_key: bytes | None) -> bool:
        ledger = self._state().ledger
        if groups is not None and ledger.locate_under(receipt_id, groups) is not None:
            return True
        located = ledger.locate(receipt_id)
        if located is None or node_key is None:
            return False
        raw, node_signature = located[0].wires[located[1]]
        return rc.decode(raw, node_signature).node_public_key == node_key

    def slot_of(self, receipt_id: bytes) -> tuple[str, str, str, int] | None:
        info = self._state().ledger.info.get(receipt_id)
        return (info.receipt_type, info.node_id, info.subject, info.epoch) if info is not None else None

    def signed_ids(self) -> list[bytes]:
        """Every receipt signed (under the cluster's key) in the state or in a heard batch. (A heard one held by the
        state only under another key, a liar's batch of it, was left out of both: listed nowhere, served by id; a
        reviewer's reproduction.)"""
        groups = self._group_keys()
        ledger = self._state().ledger
        if groups is None:  # (any key while this coordinator knows none)
            signed = list(ledger.receipts)
            return [*signed, *(rid for rid in self._heard_of if rid not in ledger.receipts)]
        under = [ledger.under_key[g] for g in sorted(groups) if g in ledger.under_key]
        signed = list(under[0]) if len(under) == 1 else list(dict.fromkeys(rid for ids in under for rid in ids))
        return [*signed, *(rid for rid in self._heard_of if not any(rid in ids for ids in under))]

    def signed_version(self) -> tuple[Any, ...]:
        """Changes whenever ``signed_ids`` may (a cache of it is keyed by this)."""
        state = self._state()
        return state.ledger.version, self._heard_version, self._group_keys()

    def _path(self, batch: Batch, index: int) -> list[bytes]:
        root = bytes.fromhex(batch.root)
        paths = self._paths.get(root)
        if paths is None:
            _, paths = merkle.all_paths([raw for raw, _ in batch.wires])
            self._paths[root] = paths
            while len(self._paths) > 256:
                self._paths.popitem(last=False)
        return paths[index]

    async def publish_batch(self, fields: dict[str, Any]) -> bytes:
        """A signed batch is never dropped: an outbox full of in-flight writes is waited out, and so is a failing
        outbox (a full disk: one such error escaped into the coordinator's nursery and took it down, a reviewer's
        reproduction), retried with backoff and logged; the peers hear of the batch once it is durable."""
        delay = 0.01
        while True:
            try:
                event = await self._submit(ev.RECEIPT_BATCH, **fields)
                return event.raw
            except Overloaded:
                await trio.sleep(delay)
                delay = min(delay * 2, 1.0)
            except (sqlite3.Error, OSError) as exc:
                delay = min(max(delay, 0.1) * 2, 5.0)
                log.error("a signed receipt batch cannot be stored in the outbox (%s); retrying in %.1f s", exc,
                          delay)
                await trio.sleep(delay)

    def check_batch(self, fields: dict[str, Any]) -> HeardBatch | None:
        """A signed batch a member announced (a batch event's fields): its group key (ours), Merkle root and
        signature checked. The heard batch with its root if there is one, else a new one, not served yet
        (``serve``); None when it does not verify."""
        try:
            values = tuple(fields[name] for name in _BATCH_FIELDS)
        except KeyError:
            return None
        verified = verify_batch(values, self._keys)
        if verified is None:
            return None
        batch, ids = verified
        heard = self._heard.get(bytes.fromhex(batch.root))
        if heard is not None:
            return heard
        fields = dict(zip(_BATCH_FIELDS, values, strict=True))
        try:  # what the signature does not cover (its signers, say) must still make a valid event: a liar's empty
            # signers were kept, served, and crashed the service when it published the batch (a reviewer's find)
            ev.make_event(ev.RECEIPT_BATCH, (0, 0), "check", **fields)
        except ValueError:
            return None
        return HeardBatch(batch, fields, ids, set(), trio.current_time())

    def serve(self, heard: HeardBatch, origin: str) -> HeardBatch:
        """Serve a checked batch (its documents) until the state holds it; ``origin`` announced it. The batch
        served: this one, or one with its root served already."""
        root = bytes.fromhex(heard.batch.root)
        served = self._heard.get(root)
        if served is None:
            served = self._heard[root] = heard
            self._heard_version += 1
            for index, rid in enumerate(heard.ids):
                self._heard_of[rid] = (root, index)
                info = parse_receipt(heard.batch.wires[index][0])
                if info is not None:
                    self._heard_slots.setdefault(_slot(info), set()).add(rid)
        served.origins.add(origin)
        return served

    def covered(self, receipt_ids: list[bytes]) -> bool:
        """Whether each of these receipts is signed in a batch served here already (heard) or held by the state."""
        return all(rid in self._heard_of or self.holds(rid) for rid in receipt_ids)

    def in_state(self, heard: HeardBatch) -> bool:
        """Whether the state holds every receipt of the batch signed under a cluster key: a liar's batch of them
        under a key of its own made members forget a cluster-signed batch DA did not have, and close its locks
        (a reviewer's reproduction)."""
        held = self._state().ledger.receipts
        return all(rid in held for rid in heard.ids) and all(self.holds(rid) for rid in heard.ids)

    def _forget_heard(self, root: bytes) -> HeardBatch:
        heard = self._heard.pop(root)
        self._heard_version += 1
        for index, rid in enumerate(heard.ids):
            if self._heard_of.get(rid) == (root, index):
                del self._heard_of[rid]
                info = parse_receipt(heard.batch.wires[index][0])
                held = self._heard_slots.get(_slot(info)) if info is not None else None
                if held is not None:
                    held.discard(rid)
                    if not held:
                        del self._heard_slots[_slot(info)]  # type: ignore[arg-type]
        return heard

    def settled_heard(self) -> list[HeardBatch]:
        """The heard batches the state now holds (from DA, or published here), forgotten as heard."""
        done = [root for root, heard in self._heard.items() if self.in_state(heard)]
        return [self._forget_heard(root) for root in done]

    def heard_batches(self) -> list[HeardBatch]:
        """The heard batches the state does not hold yet, oldest first."""
        return list(self._heard.values())


def _slot(info: ReceiptInfo) -> tuple[str, str, str, int]:
    return info.receipt_type, info.node_id, info.subject, info.epoch


def verify_batch(fields: tuple[Any, ...], keys: KeySource) -> tuple[Batch, list[bytes]] | None:
    """The batch and its receipt ids of a batch event's fields whose group key is ours, whose root is the Merkle
    root of its receipts and whose signature verifies; None otherwise."""
    key = keys.key
    batch = parse_batch(fields)
    if key is None or batch is None or batch.group_key != key.group_public_key.hex():
        return None
    raws = [raw for raw, _ in batch.wires]
    try:
        root = bytes.fromhex(batch.root)
        signature = bytes.fromhex(batch.signature)
    except ValueError:
        return None
    if merkle.root(raws) != root:
        return None
    if not verify(key.group_public_key, rc.batch_message(key.group_public_key, root, len(raws)), signature):
        return None
    if not all(checked_receipt(raw, node_signature) is not None for raw, node_signature in batch.wires):
        return None  # as the ledger keeps such a batch out (a liar re-announcing ours with other node signatures)
    return batch, [hashlib.sha256(raw).digest() for raw in raws]
