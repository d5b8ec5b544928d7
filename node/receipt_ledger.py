"""The receipt part of the ledger state: node keys and threshold-signed receipt batches (pure: no I/O).

* ``node_keys[id]``      -> the node's Ed25519 key (64 hex), a last-writer-wins register
* ``receipts[id]``       -> (batch event id, index in the batch), a last-writer-wins register: a receipt
  signed in two batches (a takeover re-signed it) converges on one of them everywhere
* ``batches[event id]``  -> the batch as published (group key, root, size, signature, signers, receipts); the
  state root counts each (``batch_acc``): counting only the receipt registers, a member that missed a batch whose
  receipts all point at a later one had the same root, yet served other documents (a reviewer's reproduction)

The batch's signature is checked where it is made (consensus/receipt_service.py) and by anyone holding the
document. Here a batch event comes signed by a cluster member, and is still checked on its own terms before it
counts: its root must be the Merkle root of its receipts, its signature must verify under the group key it
names, and each receipt must be a valid one signed by its node. Else a lying member could point every receipt at
a batch of its own (the register is last-writer-wins) and leave no coordinator a document that verifies. A batch
that fails is kept out whole, the same way on every coordinator. A member may still sign a batch under a key of
its own (the state does not know the cluster's key: it is no event), later than the cluster's batch of the same
receipts, so the register points at it; ``locate`` given the cluster's key still finds the batch signed under it,
and the receipt service's view (deploy/receipt_view.py) counts only batches under the cluster's key.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import msgpack
import nacl.exceptions
import nacl.signing

from node import merkle
from node.receipt_bytes import ReceiptError, batch_message, parse, signed_by_node, valid_signers

Version = tuple[int, int, str, bytes]
Rehash = Callable[[str, Any, "tuple[Version, Any] | None", Version, Any], None]
MAX_BATCH = 4096
SAME = 2  # what a write returns when the register already holds exactly this version (as in state.py)


@dataclass(frozen=True)
class ReceiptInfo:
    receipt_type: str
    node_id: str
    subject: str
    epoch: int


@dataclass(frozen=True)
class Batch:
    group_key: str
    root: str
    tree_size: int
    signature: str
    signers: tuple[str, ...]
    wires: tuple[tuple[bytes, bytes], ...]  # (receipt_bytes, node_signature) in batch order


def parse_receipt(receipt_bytes: bytes) -> ReceiptInfo | None:
    """The slot fields of canonical receipt bytes, or None if they are not a version-1 receipt."""
    try:
        obj = msgpack.unpackb(receipt_bytes, raw=False, max_str_len=256, max_bin_len=64, max_array_len=16,
                              max_map_len=0)
    except Exception:  # msgpack raises several unrelated types for garbage
        return None
    if type(obj) is not list or len(obj) != 11 or obj[0] != 1:
        return None
    _, rtype, node_id, _, subject, epoch = obj[:6]
    if type(rtype) is not str or type(node_id) is not str or type(subject) is not str or type(epoch) is not int:
        return None
    return ReceiptInfo(rtype, node_id, subject, epoch)


def checked_receipt(receipt_bytes: bytes, node_signature: bytes) -> ReceiptInfo | None:
    """The slot fields of a receipt of a batch, or None unless it is a valid receipt (strictly decoded, as every
    reader decodes it) signed by its node. The batch's signature covers the receipt bytes, not the node signatures
    beside them: a lying member republished the cluster's batch with garbage node signatures, later, so the register
    pointed at it and every coordinator served "final" documents that fail verification; and receipt bytes that
    pass a loose parse but not the strict decode made every listing answer 500 (a reviewer's reproductions)."""
    try:
        rtype, node_id, node_key, subject, epoch, *_ = parse(receipt_bytes)
    except ReceiptError:
        return None
    if not signed_by_node(receipt_bytes, node_key, node_signature):
        return None
    return ReceiptInfo(rtype, node_id, subject, epoch)


def batch_verifies(batch: Batch) -> bool:
    """The batch's root is the Merkle root of its receipts, signed (the batch message) under its group key."""
    try:
        key, root, signature = bytes.fromhex(batch.group_key), bytes.fromhex(batch.root), bytes.fromhex(batch.signature)
        if len(key) != 32 or len(root) != 32 or len(signature) != 64:
            return False
        if merkle.root([raw for raw, _ in batch.wires]) != root:
            return False
        nacl.signing.VerifyKey(key).verify(batch_message(key, root, batch.tree_size), signature)
    except (ValueError, nacl.exceptions.CryptoError):  # bad hex, a key that is no point, a bad signature
        return False
    return True


def parse_batch(fields: tuple[Any, ...]) -> Batch | None:
    group_key, root, tree_size, signature, signers, receipts = fields
    try:
        wires = msgpack.unpackb(receipts, raw=False, max_bin_len=1024, max_array_len=MAX_BATCH, max_str_len=0,
                                max_map_len=0)
    except Exception:  # msgpack raises several unrelated types for garbage
        return None
    if (type(wires) is not list or len(wires) != tree_size or not wires
            or not all(type(w) is list and len(w) == 2 and type(w[0]) is bytes and type(w[1]) is bytes
                       and len(w[1]) == 64 for w in wires)):
        return None
    names = tuple(signers.split(","))
    if not valid_signers(names):  # (see valid_signers: not covered by the signature)
        return None
    return Batch(group_key, root, tree_size, signature, names, tuple((w[0], w[1]) for w in wires))


_VERSIONS = itertools.count(1)


class ReceiptLedger:
    def __init__(self, rehash: Rehash) -> None:
        self._rehash = rehash
        self.node_keys: dict[str, tuple[Version, str]] = {}
        self.receipts: dict[bytes, tuple[Version, tuple[bytes, int]]] = {}
        self.batches: dict[bytes, Batch] = {}
        self.batch_acc = 0  # the sum of the batches' terms (batch_term), added to the state's accumulator by its root
        self.info: dict[bytes, ReceiptInfo] = {}  # derived: receipt id -> its slot fields
        self.by_slot: dict[tuple[str, str, str, int], set[bytes]] = {}  # derived: slot -> signed receipt ids
        # derived: receipt id -> every (batch, index) holding it, for the receipts held by more than one batch (a
        # takeover re-signed it, or a member signed it again under a key of its own: see ``locate``)
        self.also: dict[bytes, set[tuple[bytes, int]]] = {}
        # derived: group key (hex) -> the receipt ids some batch signed under it holds, in the order they came (a
        # listing finds the cluster's receipts here: locating each one, as it did once a batch under another key
        # was held, cost 25 ms a listing at 40,000 receipts; a reviewer's measurement)
        self.under_key: dict[str, dict[bytes, None]] = {}
        # bumps with every batch added (what a listing's cache of ids depends on); from a process-wide counter, so
        # that a ledger replacing another (a restore) never repeats a version the other had
        self.version = next(_VERSIONS)

    # Writes return True when they wrote, False when they did not (a later version, an unreadable batch) and
    # SAME when the register already holds exactly this version (the event was applied before).

    def set_key(self, version: Version, node_id: str, key: str) -> int:
        current = self.node_keys.get(node_id)
        if current is not None and current[0] >= version:
            return SAME if current[0] == version else False
        self.node_keys[node_id] = (version, key)
        self._rehash("k", node_id, current, version, key)
        return True

    def key_of(self, node_id: str) -> bytes | None:
        """The node's key as 32 bytes, or None: none registered, or the register holds something that is not 64
        hex digits (the API only writes valid keys, but a faulty or lying member may publish any string; the
        register keeps it like any other value, and every reader takes it for "no key")."""
        entry = self.node_keys.get(node_id)
        try:
            key = bytes.fromhex(entry[1]) if entry is not None and len(entry[1]) == 64 else None
        except ValueError:
            return None
        return key if key is not None and len(key) == 32 else None  # (fromhex skips spaces)

    def add_batch(self, version: Version, fields: tuple[Any, ...]) -> int:
        batch_id = version[3]
        if batch_id in self.batches:
            return SAME
        batch = parse_batch(fields)
        if batch is None:
            return False
        # the group signature first: one Ed25519 check, and nobody forges it; then each receipt's node signature
        # (a batch of bad ones cost every coordinator ~70 µs a receipt, each time a member published it again)
        if not batch_verifies(batch):
            return False
        infos = []
        for raw, node_signature in batch.wires:
            info = checked_receipt(raw, node_signature)
            if info is None:
                return False
            infos.append(info)
        self.batches[batch_id] = batch
        self.batch_acc += batch_term(batch_id)
        self.version = next(_VERSIONS)
        under_key = self.under_key.setdefault(batch.group_key, {})
        for index, ((raw, _), info) in enumerate(zip(batch.wires, infos, strict=True)):
            assert info is not None
            rid = hashlib.sha256(raw).digest()
            under_key[rid] = None
            self.info[rid] = info
            self.by_slot.setdefault((info.receipt_type, info.node_id, info.subject, info.epoch), set()).add(rid)
            current = self.receipts.get(rid)
            if current is not None:
                self.also.setdefault(rid, {current[1]}).add((batch_id, index))
            if current is None or current[0] < version:
                self.receipts[rid] = (version, (batch_id, index))
                self._rehash("rc", rid, current, version, (batch_id, index))
        return True

    def locate(self, receipt_id: bytes, group_key: str | None = None) -> tuple[Batch, int] | None:
        """The batch holding a receipt, and its place there: the register's (the latest batch), unless
        ``group_key`` (hex) is given and that batch is signed under another key while one signed under
        ``group_key`` holds the receipt too. A member may sign a batch under a key of its own, later than the
        cluster's batch: the register is last-writer-wins, but a coordinator that knows the cluster's key still
        serves the document that verifies under it."""
        entry = self.receipts.get(receipt_id)
        if entry is None:
            return None
        batch_id, index = entry[1]
        batch = self.batches[batch_id]
        if group_key is not None and batch.group_key != group_key:
            for other_id, other_index in sorted(self.also.get(receipt_id, ())):
                other = self.batches[other_id]
                if other.group_key == group_key:
                    return other, other_index
        return batch, index

    def locate_under(self, receipt_id: bytes, group_keys: frozenset[str]) -> tuple[Batch, int] | None:
        """A batch signed under one of ``group_keys`` (hex) holding the receipt, and its place there, or None."""
        entry = self.receipts.get(receipt_id)
        if entry is None:
            return None
        for batch_id, index in sorted({entry[1], *self.also.get(receipt_id, ())}):
            batch = self.batches[batch_id]
            if batch.group_key in group_keys:
                return batch, index
        return None

    def double_signed(self) -> list[tuple[tuple[str, str, str, int], set[bytes]]]:
        """Slots holding more than one signed receipt (must always be empty)."""
        return [(slot, ids) for slot, ids in self.by_slot.items() if len(ids) > 1]

    # ---- snapshots -------------------------------------------------------------------------------

    def cut(self, rehash: Rehash) -> ReceiptLedger:
        """The registers as they are now, for a snapshot (``State.frozen``): three dict copies, a few
        milliseconds at 100,000 receipts. The derived indexes (``info``, ``by_slot``, ``also``, ``under_key``) stay
        empty: a cut is encoded, never queried (copying a set per slot took 200 ms at 100,000 receipts, on the event
        loop)."""
        other = ReceiptLedger(rehash)
        other.node_keys, other.receipts = self.node_keys.copy(), self.receipts.copy()
        other.batches, other.batch_acc = self.batches.copy(), self.batch_acc
        return other

    def to_snapshot(self) -> dict[str, Any]:
        return {
            "keys": [_key_entry(item) for item in self.node_keys.items()],
            "batches": [_batch_entry(item) for item in self.batches.items()],
            "receipts": [_receipt_entry(item) for item in self.receipts.items()],
        }

    def snapshot_pieces(self, packer: msgpack.Packer, chunk: int) -> Iterator[bytes]:
        """``packer.pack(self.to_snapshot())``, byte for byte, in pieces of about ``chunk`` entries (batches: of
        about ``chunk`` receipts) each, built when the piece is asked for: the encoder checkpoints between
        pieces (``node.snapshot.save``), so a large ledger never holds the event loop for long."""
        pack = packer.pack
        yield packer.pack_map_header(3)
        for name, table, entry in (("keys", self.node_keys, _key_entry), ("batches", self.batches, _batch_entry),
                                   ("receipts", self.receipts, _receipt_entry)):
            items = list(table.items())
            yield pack(name) + packer.pack_array_header(len(items))
            piece: list[bytes] = []
            weight = 0
            for item in items:
                piece.append(pack(entry(item)))
                weight += item[1].tree_size if name == "batches" else 1
                if weight >= chunk:
                    yield b"".join(piece)
                    piece, weight = [], 0
            if piece:
                yield b"".join(piece)

    def recomputed_acc(self) -> int:
        """The sum of the entry hashes of every register here, as the state's accumulator counts them."""
        def entry_hash(tag: str, key: Any, version: Version, value: Any) -> int:
            packed = msgpack.packb((tag, key, version, value), use_bin_type=True)
            return int.from_bytes(hashlib.sha256(packed).digest(), "big")

        return (sum(entry_hash("k", k, v, key) for k, (v, key) in self.node_keys.items())
                + sum(entry_hash("rc", rid, v, loc) for rid, (v, loc) in self.receipts.items()))

    def load_snapshot(self, snap: dict[str, Any], *, rehash: bool = True) -> None:
        """Load the registers; ``rehash=False`` when the state's accumulator is restored with them (it already
        counts every register)."""
        for k, v, key in snap.get("keys", []):
            if rehash:
                self.set_key(tuple(v), k, key)  # type: ignore[arg-type]
            else:
                self.node_keys[k] = (tuple(v), key)  # type: ignore[assignment]
        for bid, gk, root, size, sig, signers, wires in snap.get("batches", []):
            self.batches[bid] = Batch(gk, root, size, sig, tuple(signers.split(",")),
                                      tuple((w[0], w[1]) for w in wires))
        self.batch_acc = sum(map(batch_term, self.batches))  # (not in a snapshot's accumulator: counted here)
        for rid, v, bid, i in snap.get("receipts", []):
            version = tuple(v)
            self.receipts[rid] = (version, (bid, i))  # type: ignore[assignment]
            if rehash:
                self._rehash("rc", rid, None, version, (bid, i))  # type: ignore[arg-type]
        first: dict[bytes, tuple[bytes, int]] = {}
        self.version = next(_VERSIONS)
        for bid, b in self.batches.items():
            under_key = self.under_key.setdefault(b.group_key, {})
            for index, (raw, _) in enumerate(b.wires):
                info = parse_receipt(raw)
                rid = hashlib.sha256(raw).digest()
                under_key[rid] = None
                if rid in first:
                    self.also.setdefault(rid, {first[rid]}).add((bid, index))
                else:
                    first[rid] = (bid, index)
                if info is not None:
                    self.info[rid] = info
                    self.by_slot.setdefault((info.receipt_type, info.node_id, info.subject, info.epoch),
                                            set()).add(rid)


def batch_term(batch_id: bytes) -> int:
    """A batch's term of the state root: its event id (which covers its content), hashed under its own tag."""
    return int.from_bytes(hashlib.sha256(b"dsdn-batch\x00" + batch_id).digest(), "big")


def _key_entry(item: tuple[str, tuple[Version, str]]) -> list[Any]:
    node_id, (version, key) = item
    return [node_id, list(version), key]


def _batch_entry(item: tuple[bytes, Batch]) -> list[Any]:
    bid, b = item
    return [bid, b.group_key, b.root, b.tree_size, b.signature, ",".join(b.signers), [list(w) for w in b.wires]]


def _receipt_entry(item: tuple[bytes, tuple[Version, tuple[bytes, int]]]) -> list[Any]:
    rid, (version, (bid, index)) = item
    return [rid, list(version), bid, index]
