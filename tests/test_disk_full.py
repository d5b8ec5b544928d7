"""A full disk under each SQLite writer (the outbox, the lock table, the blob store): SQLite rolls the transaction
back itself, and the error a caller sees (a 503, a log line, the lock table's ``broken``) must say the disk is full,
not "cannot rollback - no transaction is active" from a second rollback (a reviewer's reproduction); the writer works
again once there is room. The disk is filled with ``PRAGMA max_page_count`` on the writer's own connection."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import nacl.signing
import pytest
import trio

from api.blobstore import BlobStore
from consensus import receipts as rc
from consensus.lockstore import LockStore, LockTableBroken
from consensus.slots import Verdict
from node import events as ev
from node.hlc import HybridLogicalClock
from node.outbox import Outbox

KEY = nacl.signing.SigningKey(b"\x05" * 32)


def fill(db: sqlite3.Connection) -> int:
    """The disk is full: no page may be added. Returns the limit it had."""
    limit = db.execute("PRAGMA max_page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count={db.execute('PRAGMA page_count').fetchone()[0]}")
    return int(limit)


async def test_the_outbox_says_the_disk_is_full_and_writes_again_once_there_is_room(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite", lambda committed: None)
    hlc = HybridLogicalClock()
    async with trio.open_nursery() as nursery:
        await nursery.start(outbox.run)
        limit = fill(outbox._db)
        with pytest.raises(sqlite3.Error, match="full"):
            for i in range(200):  # (the pages it has left fill up first)
                await outbox.append(ev.make_event(ev.NODE_REGISTERED, hlc.now(), "c0", id=f"n{i}", zone="z" * 100,
                                                  addr="h:1", capacity_gb=1))
        assert not outbox._db.in_transaction
        outbox._db.execute(f"PRAGMA max_page_count={limit}")
        await outbox.append(ev.make_event(ev.NODE_UNREGISTERED, hlc.now(), "c0", id="after"))
        assert ev.decode_event((await outbox.unpublished(1000))[-1][1]).fields == ("after",)
        nursery.cancel_scope.cancel()
    outbox.close()


def test_the_lock_table_broken_by_a_full_disk_says_so(tmp_path: Path) -> None:
    store = LockStore(tmp_path / "locks.sqlite")
    fill(store.db)
    with pytest.raises(LockTableBroken, match="full"):
        for i in range(200):
            subject = f"{i:064x}"
            r = rc.sign_as_node(KEY, receipt_type="compute", node_id="n1", subject=subject, epoch=5,
                                usage_proof_hash="00" * 32, execution_commitment=[subject] + ["11" * 32] * 5,
                                reward_base=1, submitter_address="ab" * 20, timestamp=1_800_000_000)
            store.lock_batch([r], lambda _: (Verdict.OK, ""), "c0", batch=bytes(16))
    assert store.broken is not None and "full" in store.broken and not store.db.in_transaction
    store.close()


async def test_the_blob_store_says_the_disk_is_full_and_stores_again_once_there_is_room(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "store")
    limit = fill(store._db)
    with pytest.raises(sqlite3.Error, match="full"):
        for i in range(50):
            await store.put(b"\x00" * 29, i.to_bytes(4, "big") * 1000)
    store._db.execute(f"PRAGMA max_page_count={limit}")
    stored = await store.put(b"\x00" * 29, b"after")
    assert not stored.duplicate and stored.position > 0
    store.close()
