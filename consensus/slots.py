"""The lock rules a coordinator applies before it releases a signature share. Pure; no I/O.

For each receipt of a batch, in batch order: a receipt that fails validation is refused (``invalid``, or
``not_yet`` when it depends on a write not seen here yet); otherwise its slot is looked up in the lock table —
absent: lock it to this receipt; locked to this receipt: fine; locked to another: ``conflict`` (the evidence,
both receipt ids, is kept). Two receipts of one batch for one slot: the first wins. The caller stores the new
locks durably (one transaction) before any share for the batch leaves the process.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import msgpack

from consensus.receipts import Receipt, Slot


class Verdict(enum.IntEnum):
    OK = 0
    CONFLICT = 1
    INVALID = 2
    NOT_YET = 3


@dataclass(frozen=True)
class Decision:
    receipt_id: bytes
    verdict: Verdict
    reason: str = ""
    conflicting_id: bytes | None = None


Validate = Callable[[Receipt], tuple[Verdict, str]]


def slot_key(slot: Slot) -> bytes:
    return msgpack.packb(list(slot), use_bin_type=True)


def decide(receipts: Sequence[Receipt], locks: Mapping[bytes, bytes], validate: Validate,
           closed: Mapping[bytes, Decision] | None = None, hold_new: str | None = None
           ) -> tuple[list[Decision], dict[bytes, Receipt]]:
    """Decisions for ``receipts`` given the current ``locks`` (slot key -> receipt id) and the new locks to
    store (slot key -> receipt). ``closed``: the decision for a receipt whose own lock here is closed for good (it
    lost its slot to a rival, or can no longer be signed): submitted again, it is that, not a fresh OK (which
    acknowledged it "locked" with a new optimistic promise). ``hold_new``: no slot is locked anew (``not_yet``,
    this reason); the locks held are kept to."""
    closed = closed or {}
    decisions: list[Decision] = []
    new: dict[bytes, Receipt] = {}
    for receipt in receipts:
        rid = receipt.id
        verdict, reason = validate(receipt)
        if verdict is not Verdict.OK:
            decisions.append(Decision(rid, verdict, reason))
            continue
        key = slot_key(receipt.slot)
        held = locks.get(key)
        if held is None and key in new:
            held = new[key].id
        if held is None and hold_new is not None:
            decisions.append(Decision(rid, Verdict.NOT_YET, hold_new))
        elif held is None:
            new[key] = receipt
            decisions.append(Decision(rid, Verdict.OK))
        elif held == rid:
            decisions.append(closed.get(rid) or Decision(rid, Verdict.OK))
        else:
            decisions.append(Decision(rid, Verdict.CONFLICT, "slot conflict", held))
    return decisions, new


def choose_batch(ids: Sequence[bytes], accepted: Mapping[int, set[bytes]], threshold: int
                 ) -> tuple[list[bytes], set[int]]:
    """Which receipts to sign and who can sign them. ``accepted``: signer -> receipt ids it locked. Receipts
    locked by fewer than t signers leave; then, while fewer than t signers locked every remaining receipt, the
    receipt with the fewest lockers leaves (ties: the later one). Returns (receipts in batch order, signers)."""
    keep = [r for r in ids if sum(r in a for a in accepted.values()) >= threshold]
    while keep:
        signers = {s for s, a in accepted.items() if all(r in a for r in keep)}
        if len(signers) >= threshold:
            return keep, signers
        counts = {r: sum(r in a for a in accepted.values()) for r in keep}
        weakest = min(range(len(keep)), key=lambda i: (counts[keep[i]], -i))
        del keep[weakest]
    return [], set()
