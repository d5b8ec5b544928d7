"""The receipt engine's view of a coordinator's DA-derived state (consensus.receipt_service.LedgerView).

It lives with the composition root because it joins node (state, events) and consensus (receipt bytes,
Merkle paths, batch signatures), which never import each other.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from consensus import receipts as rc
from consensus.frost import verify
from consensus.receipt_service import KeySource
from node import events as ev
from node import merkle
from node.outbox import Overloaded
from node.receipt_ledger import Batch, parse_batch
from node.state import State

log = logging.getLogger("dsdn.receipts")


class StateLedgerView:
    def __init__(self, state: Callable[[], State], submit: Callable[..., Awaitable[ev.Event]],
                 apply: Callable[[ev.Event], bool], keys: KeySource) -> None:
        """``state``: the current state; ``submit(kind, **fields)``: append an event of ours durably and apply
        it; ``apply(event)``: apply a peer's event; ``keys``: the group key holder."""
        self._state, self._submit, self._apply, self._keys = state, submit, apply, keys
        self._paths: OrderedDict[bytes, list[list[bytes]]] = OrderedDict()  # batch root -> every leaf's path

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

    def signed_document(self, receipt_id: bytes) -> dict[str, Any] | None:
        key = self._keys.key  # the cluster's: a member may have signed the receipt again under a key of its own
        located = self._state().ledger.locate(receipt_id, key.group_public_key.hex() if key is not None else None)
        if located is None:
            return None
        batch, index = located
        raw, node_signature = batch.wires[index]
        receipt = rc.decode(raw, node_signature)
        path = self._path(batch, index)
        return rc.document(receipt, bytes.fromhex(batch.root), batch.tree_size, index, path,
                           bytes.fromhex(batch.signature), bytes.fromhex(batch.group_key), list(batch.signers))

    def holds(self, receipt_id: bytes) -> bool:
        return receipt_id in self._state().ledger.receipts

    def signed_ids(self) -> list[bytes]:
        return list(self._state().ledger.receipts)

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

    def apply_batch_event(self, raw: bytes, origin: str) -> list[bytes] | None:
        try:
            event = ev.decode_event(raw)
        except ev.EventDecodeError:
            return None
        if event.kind != ev.RECEIPT_BATCH or event.origin != origin:  # a member speaks only for itself
            return None
        ids = verify_batch(event, self._keys)
        if ids is None:
            return None
        self._apply(event)
        return ids


def verify_batch(event: ev.Event, keys: KeySource) -> list[bytes] | None:
    """The receipt ids of a batch event whose group key is ours, whose root is the Merkle root of its receipts
    and whose signature verifies; None otherwise."""
    key = keys.key
    batch = parse_batch(event.fields)
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
    return [hashlib.sha256(raw).digest() for raw in raws]
