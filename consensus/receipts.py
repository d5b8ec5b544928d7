"""Usage receipts: the fields, their canonical bytes, ids and slots, the messages that get signed, and the
offline verification of a signed receipt document. Pure; no I/O.

``receipt_bytes`` = msgpack (``use_bin_type=True``) of
``[1, receipt_type, node_id, node_public_key(32 B), subject, epoch, usage_proof_hash(32 B),
execution_commitment (None or 6 × 32 B), reward_base, submitter_address(20 B), timestamp]``;
``receipt_id`` = SHA-256(receipt_bytes). The node signs ``b"dsdn/usage/v1" + receipt_bytes``; the cluster
signs, with FROST, ``b"dsdn/receipt-batch/v1" ‖ group key ‖ Merkle root ‖ tree size (u64 BE)`` over a batch.
The slot ``(receipt_type, node_id, subject, epoch)`` gets at most one signed receipt, ever.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import msgpack
import nacl.exceptions
import nacl.signing

from node import merkle
from node.events import MAX_BIN
from node.receipt_bytes import (  # the rules of receipt bytes live with the ledger, which checks them too
    BATCH_DOMAIN,
    HEX64,
    ID,
    MAX_RECEIPT_BYTES,
    MAX_REWARD,
    MAX_U63,
    RECEIPT_VERSION,
    SUBJECT,
    TYPES,
    USAGE_DOMAIN,
    ReceiptError,
    batch_message,
    check_int,
    parse,
    signed_by_node,
    valid_signers,
)

__all__ = ["BATCH_DOMAIN", "MAX_RECEIPT_BYTES", "MAX_REWARD", "MAX_U63", "RECEIPT_VERSION", "TYPES", "USAGE_DOMAIN",
           "Receipt", "ReceiptError", "batch_message", "decode", "document", "from_json", "sign_as_node",
           "verify_document"]

OPTIMISTIC_DOMAIN = b"dsdn/receipt-optimistic/v1"
COMMITMENT_FIELDS = ("workload_id", "input_hash", "output_hash", "state_root_before", "state_root_after",
                     "trace_root")
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_HEX128 = re.compile(r"^[0-9a-f]{128}$")

Slot = tuple[str, str, str, int]


def _hex(value: Any, field: str, pattern: re.Pattern[str], what: str) -> str:
    if type(value) is not str or not pattern.fullmatch(value.lower()):
        raise ReceiptError(field, what)
    return value.lower()


_HEX = re.compile(r"(?:[0-9a-fA-F]{2})*")


def _doc_hex(value: Any, field: str, size: int | None = None) -> bytes:
    """A hex field of a document: hex digits only, either case, ``size`` bytes if given (``bytes.fromhex`` alone
    skips whitespace: a root or signature with spaces in it was reported valid, though no strict verifier takes
    it); ValueError otherwise."""
    if type(value) is not str or not _HEX.fullmatch(value) or (size is not None and len(value) != 2 * size):
        raise ValueError(f"{field} is not {'' if size is None else f'{2 * size} '}hex characters")
    return bytes.fromhex(value)


def _json_int(value: Any) -> Any:
    """A JSON number as JSON Schema reads it: ``5.0`` is the integer 5 (``receipt_bytes`` keep strict types)."""
    return int(value) if type(value) is float and value.is_integer() else value


@dataclass(frozen=True)
class Receipt:
    receipt_type: str
    node_id: str
    node_public_key: bytes
    subject: str
    epoch: int
    usage_proof_hash: bytes
    execution_commitment: tuple[bytes, ...] | None
    reward_base: int
    submitter_address: bytes
    timestamp: int
    node_signature: bytes

    # ---- encoding ------------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        return self._bytes

    @cached_property
    def _bytes(self) -> bytes:  # a receipt is immutable: its bytes, id and signature check are computed once
        return msgpack.packb([
            RECEIPT_VERSION, self.receipt_type, self.node_id, self.node_public_key, self.subject, self.epoch,
            self.usage_proof_hash, list(self.execution_commitment) if self.execution_commitment is not None else None,
            self.reward_base, self.submitter_address, self.timestamp,
        ], use_bin_type=True)

    @cached_property
    def id(self) -> bytes:
        return hashlib.sha256(self._bytes).digest()

    @property
    def slot(self) -> Slot:
        return (self.receipt_type, self.node_id, self.subject, self.epoch)

    def signing_message(self) -> bytes:
        return USAGE_DOMAIN + self.to_bytes()

    def node_signature_valid(self) -> bool:
        return self._signature_valid

    @cached_property
    def _signature_valid(self) -> bool:
        return signed_by_node(self.to_bytes(), self.node_public_key, self.node_signature)

    def to_json(self) -> dict[str, Any]:
        return {
            "receipt_type": self.receipt_type, "node_id": self.node_id,
            "node_public_key": self.node_public_key.hex(), "subject": self.subject, "epoch": self.epoch,
            "usage_proof_hash": self.usage_proof_hash.hex(),
            "execution_commitment": [c.hex() for c in self.execution_commitment]
            if self.execution_commitment is not None else None,
            "reward_base": self.reward_base, "submitter_address": self.submitter_address.hex(),
            "timestamp": self.timestamp, "node_signature": self.node_signature.hex(),
        }

    # ---- the wire form between coordinators: receipt bytes + node signature ----------------------

    def to_wire(self) -> bytes:
        return self.to_bytes() + self.node_signature

    @classmethod
    def from_wire(cls, data: bytes) -> Receipt:
        if not isinstance(data, bytes) or not 64 < len(data) <= MAX_RECEIPT_BYTES + 64:
            raise ReceiptError("receipt", "receipt bytes followed by a 64-byte node signature")
        return decode(data[:-64], data[-64:])


def from_json(body: dict[str, Any], node_public_key: bytes | None = None) -> Receipt:
    """A receipt from its JSON fields (hex strings, lower or upper case). ``node_public_key`` comes from the
    registry when the body does not carry one."""
    rtype = body.get("receipt_type")
    if rtype not in TYPES:
        raise ReceiptError("receipt_type", "storage or compute")
    node_id = body.get("node_id")
    if type(node_id) is not str or not ID.fullmatch(node_id):
        raise ReceiptError("node_id", "a registered node id (1-128 characters of A-Z a-z 0-9 . _ : -)")
    subject = body.get("subject")
    if rtype == "compute":
        subject = _hex(subject, "subject", HEX64, "a workload id: 64 hex characters")
    elif type(subject) is not str or not SUBJECT.fullmatch(subject):
        raise ReceiptError("subject", "a registered object hash (1-256 characters of A-Z a-z 0-9 . _ : -)")
    epoch = check_int(_json_int(body.get("epoch")), "epoch", 1, MAX_U63)
    proof = bytes.fromhex(_hex(body.get("usage_proof_hash"), "usage_proof_hash", HEX64, "64 hex characters"))
    ec_raw = body.get("execution_commitment")
    commitment: tuple[bytes, ...] | None = None
    if rtype == "compute":
        if isinstance(ec_raw, dict):  # the six by name (as /openapi.json documents): no other name, none missing
            if set(ec_raw) != set(COMMITMENT_FIELDS):
                raise ReceiptError("execution_commitment", f"exactly the names {', '.join(COMMITMENT_FIELDS)} "
                                                           f"(given: {', '.join(map(repr, ec_raw))[:200]})")
            ec_raw = [ec_raw[name] for name in COMMITMENT_FIELDS]
        if not isinstance(ec_raw, list) or len(ec_raw) != 6:
            raise ReceiptError("execution_commitment", "6 hashes of 64 hex characters (workload_id, input_hash, "
                                                       "output_hash, state_root_before, state_root_after, trace_root)")
        commitment = tuple(bytes.fromhex(_hex(c, f"execution_commitment[{i}]", HEX64, "64 hex characters"))
                           for i, c in enumerate(ec_raw))
        if commitment[0].hex() != subject:
            raise ReceiptError("execution_commitment", "its workload_id equal to the subject")
    elif ec_raw is not None:
        raise ReceiptError("execution_commitment", "null for a storage receipt")
    reward = check_int(_json_int(body.get("reward_base")), "reward_base", 1, MAX_REWARD)
    submitter = bytes.fromhex(_hex(body.get("submitter_address"), "submitter_address", _HEX40, "40 hex characters"))
    timestamp = check_int(_json_int(body.get("timestamp")), "timestamp", 0, MAX_U63)
    signature = bytes.fromhex(_hex(body.get("node_signature"), "node_signature", _HEX128, "128 hex characters"))
    key_field = body.get("node_public_key")
    if key_field is not None:
        node_public_key = bytes.fromhex(_hex(key_field, "node_public_key", HEX64, "64 hex characters"))
    if node_public_key is None:
        raise ReceiptError("node_public_key", "64 hex characters (or a registered node key)")
    return Receipt(rtype, node_id, node_public_key, subject, epoch, proof, commitment, reward, submitter, timestamp,
                   signature)


def decode(receipt_bytes: bytes, node_signature: bytes = bytes(64)) -> Receipt:
    """Strictly decode canonical ``receipt_bytes``; ReceiptError if anything is off (``node.receipt_bytes.parse``:
    every coordinator decodes every receipt of every batch it locks)."""
    fields = parse(receipt_bytes)
    if not isinstance(node_signature, bytes) or len(node_signature) != 64:
        raise ReceiptError("node_signature", "128 hex characters")
    return Receipt(*fields, node_signature)


def sign_as_node(key: nacl.signing.SigningKey, **fields: Any) -> Receipt:
    """A receipt signed by a node's key (tools and tests)."""
    body = {**fields, "node_public_key": bytes(key.verify_key).hex(), "node_signature": "00" * 64}
    unsigned = from_json(body)
    signature = key.sign(unsigned.signing_message()).signature
    return from_json({**body, "node_signature": signature.hex()})


# ---- batches and documents --------------------------------------------------------------------------




# A batch event's ``receipts`` field (msgpack of [[receipt_bytes, node_signature], ...]) is at most this long
# (node.events.MAX_BIN): a batch of 1,024 receipts with long ids was signed, then could not be published, and its
# proposer, and every peer keeping it, crashed (a reviewer's reproduction). Batches are cut by size too.
MAX_BATCH_BYTES = MAX_BIN


def packed_size(wire_len: int) -> int:
    """An upper bound of what a receipt of ``to_wire()`` length ``wire_len`` adds to a batch's packed receipts: a
    2-element array header, two bin headers (up to 3 and 2 bytes)."""
    return wire_len + 6


def fits(wire_lengths: Iterable[int]) -> bool:
    """Whether receipts of these ``to_wire()`` lengths make a batch whose packed receipts fit MAX_BATCH_BYTES."""
    return 5 + sum(map(packed_size, wire_lengths)) <= MAX_BATCH_BYTES


def fitting(receipts: list[Receipt], max_count: int) -> int:
    """How many of ``receipts``, from the first, make a batch of at most ``max_count`` receipts whose packed
    receipts stay within MAX_BATCH_BYTES (at least one: a receipt alone always fits)."""
    budget = MAX_BATCH_BYTES - 5  # the outer array's header
    for count, r in enumerate(receipts[:max_count]):
        budget -= packed_size(len(r.to_bytes()) + 64)
        if budget < 0:
            return max(1, count)
    return min(len(receipts), max_count)


def optimistic_message(receipt_id: bytes) -> bytes:
    return OPTIMISTIC_DOMAIN + receipt_id


def document(receipt: Receipt, root: bytes, tree_size: int, index: int, path: list[bytes], signature: bytes,
             group_public_key: bytes, signers: list[str]) -> dict[str, Any]:
    """The signed receipt document: everything a third party needs to verify it."""
    return {
        "receipt_id": receipt.id.hex(), "receipt": receipt.to_json(), "receipt_bytes": receipt.to_bytes().hex(),
        "batch": {"root": root.hex(), "tree_size": tree_size, "index": index, "path": [p.hex() for p in path]},
        "signature": signature.hex(), "group_public_key": group_public_key.hex(), "signers": signers,
        "epoch": receipt.epoch, "status": "final",
    }


def verify_document(doc: Any, group_public_key: bytes | None = None) -> tuple[bool, str]:
    """Offline verification: the receipt bytes match its fields and id, the node signed them, the Merkle path
    leads to the root, and the root carries a valid Ed25519 signature of the group key (``group_public_key``
    pins the key; otherwise the document's own key is used)."""
    try:
        if not isinstance(doc, dict):
            return False, "the document is not a JSON object"
        raw = _doc_hex(doc["receipt_bytes"], "receipt_bytes")
        receipt = decode(raw, _doc_hex(doc["receipt"]["node_signature"], "receipt.node_signature", 64))
        fields = doc["receipt"]
        # a document's integers are JSON integers: 1700000000.0000001 reads as the float 1700000000.0, and matched
        # the bytes' 1700000000 (a reviewer's reproduction); 5.0 is taken only from clients submitting receipts
        if any(type(fields.get(name)) is not int for name in ("epoch", "reward_base", "timestamp")):
            return False, "receipt fields do not match receipt_bytes: epoch, reward_base and timestamp are integers"
        if receipt != from_json(fields):
            return False, "receipt fields do not match receipt_bytes"
        if _doc_hex(doc["receipt_id"], "receipt_id", 32) != receipt.id:  # (either case, like every hex field)
            return False, "receipt_id is not SHA-256(receipt_bytes)"
        # what readers take from the document's top level, checked as its fields are (an epoch other than the
        # receipt's, or a status other than final, was reported valid: a reviewer's reproduction)
        if type(doc["epoch"]) is not int or doc["epoch"] != receipt.epoch:
            return False, "epoch does not match receipt_bytes"
        if doc["status"] != "final":
            return False, f"status is {doc['status']!r}, not 'final'"
        if not valid_signers(doc["signers"]):  # (not covered by the signature: a shape check, as a reader needs)
            return False, "signers is not a non-empty list of distinct coordinator ids"
        if not receipt.node_signature_valid():
            return False, "the node signature is invalid"
        key = _doc_hex(doc["group_public_key"], "group_public_key", 32)
        if group_public_key is not None and key != group_public_key:
            return False, "signed under another group key"
        batch = doc["batch"]
        root, size, index = _doc_hex(batch["root"], "batch.root", 32), batch["tree_size"], batch["index"]
        if type(batch["path"]) is not list:
            raise ValueError("batch.path is not a list")
        path = [_doc_hex(p, "batch.path[]", 32) for p in batch["path"]]
        if type(size) is not int or type(index) is not int or not 1 <= size <= MAX_U63:
            return False, "bad tree_size or index"
        if not merkle.verify_inclusion(raw, index, size, path, root):
            return False, "the Merkle path does not lead to the batch root"
        signature = _doc_hex(doc["signature"], "signature", 64)
        nacl.signing.VerifyKey(key).verify(batch_message(key, root, size), signature)
    except nacl.exceptions.BadSignatureError:
        return False, "the batch signature is invalid"
    except ReceiptError as exc:  # a document of the right shape whose receipt is no valid one (non-canonical bytes,
        return False, f"invalid receipt: {exc}"  # a field out of range): invalid, not malformed (the CLI exits 1)
    except (KeyError, TypeError, ValueError, AttributeError, nacl.exceptions.CryptoError) as exc:
        return False, f"malformed document: {exc}"
    return True, "valid"
