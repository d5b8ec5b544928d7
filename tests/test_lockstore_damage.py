"""The lock table's own damage checks: what a partial restore, a lost write-ahead log, a damaged row or a second
opener does to it must stop signing (``broken``) rather than let a rival of a locked slot be locked, or crash."""

from __future__ import annotations

import gc
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import nacl.signing
import pytest

from consensus import lockstore
from consensus import receipts as rc
from consensus.lockstore import LockStore, LockTableBroken
from consensus.slots import Verdict

KEY = nacl.signing.SigningKey(b"\x01" * 32)
ROOT = Path(__file__).resolve().parents[1]


def receipt(reward: int = 100, node: str = "n1") -> rc.Receipt:
    subject = "ab" * 32
    return rc.sign_as_node(KEY, receipt_type="compute", node_id=node, subject=subject, epoch=5,
                           usage_proof_hash="00" * 32, execution_commitment=[subject] + ["11" * 32] * 5,
                           reward_base=reward, submitter_address="ab" * 20, timestamp=1_800_000_000)


def ok(_: rc.Receipt) -> tuple[Verdict, str]:
    return Verdict.OK, ""


def test_a_stale_slot_index_is_found_at_open(tmp_path: Path) -> None:
    """A table whose slot index misses a row (pages from two moments: a torn copy) passes quick_check; the slot
    looked free and a rival was locked beside the first receipt."""
    path = tmp_path / "locks.sqlite"
    store = LockStore(path)
    store.lock_batch([receipt(node="n0")], ok, "c0", batch=b"x" * 16)
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before = path.read_bytes()
    a, b = receipt(reward=1), receipt(reward=2)  # rivals for one slot
    assert [d.verdict for d in store.lock_batch([a], ok, "c0", batch=b"a" * 16)] == [Verdict.OK]
    store.close()
    db = sqlite3.connect(path)
    root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'sqlite_autoindex_locks_1'").fetchone()[0]
    size = db.execute("PRAGMA page_size").fetchone()[0]
    db.close()
    torn = bytearray(path.read_bytes())
    torn[(root - 1) * size: root * size] = before[(root - 1) * size: root * size]  # the index before A's lock
    path.write_bytes(bytes(torn))
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA quick_check").fetchone() == ("ok",)  # what the old check saw
    db.close()
    again = LockStore(path, expect_existing=True)
    assert again.broken is not None and "integrity" in again.broken
    with pytest.raises(LockTableBroken):
        again.lock_batch([b], ok, "c1", batch=b"b" * 16)


CHILD = """
import sys, time
from pathlib import Path
from consensus.lockstore import LockStore
from tests.test_lockstore_damage import ok, receipt
store = LockStore(Path(sys.argv[1]))
store.lock_batch([receipt(int(sys.argv[2]))], ok, "c0", batch=b"k" * 16)
print(store.broken, flush=True)
time.sleep(60)
"""


def crash_after_locking(path: Path, reward: int) -> None:
    """A process opens the table, locks one receipt durably, and is killed (-9)."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(reward)], cwd=ROOT,
                             stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "None"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)


def test_the_table_alone_holds_every_lock_committed(tmp_path: Path) -> None:
    """Locks committed since the last checkpoint lived only in locks.sqlite-wal: a copy of the table alone (a
    partial restore, a log lost after a crash) lacked them and let their rivals be locked. Every commit is
    checkpointed into the table before it returns."""
    path = tmp_path / "locks.sqlite"
    crash_after_locking(path, 1)
    shutil.copy(path, tmp_path / "copy.sqlite")  # the table without its log
    copy = LockStore(tmp_path / "copy.sqlite", expect_existing=True)
    assert copy.broken is None and copy.holds([receipt(1).id]) is not None
    assert [d.verdict for d in copy.lock_batch([receipt(2)], ok, "c1")] == [Verdict.CONFLICT]
    copy.close()
    store = LockStore(path, expect_existing=True)  # the table and its log, as the crash left them
    assert store.broken is None and [d.verdict for d in store.lock_batch([receipt(2)], ok, "c1")] == \
        [Verdict.CONFLICT]
    store.close()


def test_a_receipt_that_no_longer_decodes_breaks_the_table(tmp_path: Path) -> None:
    """One damaged row raised ReceiptError out of the takeover pass and took the receipt service down."""
    path = tmp_path / "locks.sqlite"
    store = LockStore(path)
    r = receipt()
    store.lock_batch([r], ok, "c0", batch=b"a" * 16)
    wire = bytearray(store.db.execute("SELECT wire FROM locks").fetchone()[0])
    wire[0] ^= 0xFF
    store.db.execute("UPDATE locks SET wire = ?", (bytes(wire),))
    with pytest.raises(LockTableBroken):
        store.open_locks(older_than_ms=2**62)
    assert store.broken is not None and "does not decode" in store.broken
    store.broken = None
    with pytest.raises(LockTableBroken):
        store.lock_of(r.id)
    store.broken = None
    with pytest.raises(LockTableBroken):
        store.holds([r.id])


def test_a_second_opener_cannot_take_the_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The table's lock is held until close: another process's connection cannot write (it made a batch decided
    in the event loop wait 5 s, then broke the store), and a second store on it (a second coordinator on one data
    directory) does not sign."""
    monkeypatch.setattr(lockstore, "OPEN_WAIT_S", 0.2)
    path = tmp_path / "locks.sqlite"
    store = LockStore(path)
    store.lock_batch([receipt(1)], ok, "c0")
    other = sqlite3.connect(path, timeout=0)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        other.execute("BEGIN IMMEDIATE")
    other.close()
    second = LockStore(path, expect_existing=True)
    assert second.broken is not None and "locked" in second.broken
    second.close()
    assert [d.verdict for d in store.lock_batch([receipt(2)], ok, "c0")] == [Verdict.CONFLICT]
    assert store.broken is None


def test_a_table_that_cannot_be_opened_is_broken_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / "locks.sqlite").mkdir()
    store = LockStore(tmp_path / "locks.sqlite")
    assert store.broken is not None and "unreadable" in store.broken
    with pytest.raises(LockTableBroken):
        store.lock_batch([receipt()], ok, "c0")


def test_a_store_dropped_without_close_or_broken_then_closed_opens_fine(tmp_path: Path) -> None:
    """A first version marked the table open until close(): one freed without it (a start-up error before the
    service ran), or closed once broken (a full disk), read as a lost log at the next start: signing stayed off."""
    path = tmp_path / "locks.sqlite"
    store = LockStore(path)
    store.lock_batch([receipt(1)], ok, "c0")
    del store
    gc.collect()  # (freed: Python closes the connection, SQLite folds the log in and removes it)
    assert not (tmp_path / "locks.sqlite-wal").exists()
    store = LockStore(path, expect_existing=True)
    assert store.broken is None and store.holds([receipt(1).id]) is not None
    store.broken = "lock table failed: database or disk is full"
    store.close()
    again = LockStore(path, expect_existing=True)
    assert again.broken is None and [d.verdict for d in again.lock_batch([receipt(2)], ok, "c1")] == \
        [Verdict.CONFLICT]


def test_a_reader_that_lets_go_within_the_wait_does_not_break_the_table(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """At open another program's hold on the file is waited for (with no wait, a backup script reading it as the
    coordinator started turned signing off until the next restart)."""
    import threading

    path = tmp_path / "locks.sqlite"
    LockStore(path).close()
    reader = sqlite3.connect(path, check_same_thread=False)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM locks").fetchone()  # a read transaction in progress
    timer = threading.Timer(0.3, reader.close)
    timer.start()
    try:
        store = LockStore(path, expect_existing=True)
    finally:
        timer.join()
    assert store.broken is None and [d.verdict for d in store.lock_batch([receipt(1)], ok, "c0")] == [Verdict.OK]


def test_a_batch_that_cannot_be_rolled_back_breaks_the_table_and_is_never_committed(tmp_path: Path) -> None:
    """A batch failing midway whose ROLLBACK fails too (an I/O error) left its first locks pending in the open
    transaction, and the next batch's commit made them durable: the table is broken instead (a regression review)."""
    store = LockStore(tmp_path / "locks.sqlite")
    real = store.db

    class NoRollback:
        def execute(self, sql: str, *args: object) -> object:
            if sql == "ROLLBACK":
                raise sqlite3.OperationalError("disk I/O error")
            return real.execute(sql, *args)

        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

    def fails_on_the_second(r: rc.Receipt) -> tuple[Verdict, str]:
        if r.reward_base == 2:
            raise RuntimeError("a validation bug")
        return Verdict.OK, ""

    store.db = NoRollback()  # type: ignore[assignment]
    with pytest.raises(RuntimeError):
        store.lock_batch([receipt(reward=1, node="a"), receipt(reward=2, node="b")], fails_on_the_second, "c0",
                         batch=b"x" * 16, commit=False)
    assert store.broken is not None and "cannot roll a batch back" in store.broken
    with pytest.raises(LockTableBroken):
        store.commit()
    store.db = real
    real.rollback()
    assert real.execute("SELECT COUNT(*) FROM locks").fetchone() == (0,)
    store.close()


def test_a_table_holding_new_locks_keeps_to_the_ones_it_has_and_locks_no_slot_anew_until_then(tmp_path: Path) -> None:
    """An older copy of the table (the coordinator found its own later events on DA) cannot tell which slots it
    locked since: until those can no longer be signed, a free slot here is "not yet", not locked to a rival."""
    store = LockStore(tmp_path / "locks.sqlite")
    held, free, other = receipt(reward=1), receipt(reward=2, node="n0"), receipt(reward=3, node="n2")
    assert [d.verdict for d in store.lock_batch([held], ok, "c0", now_ms=1_000, batch=b"h" * 16)] == [Verdict.OK]
    store.hold_new(5_000, "restored from an older copy")
    store.hold_new(4_000, "a shorter hold does not shorten it")
    store.keep_hold()
    decisions = store.lock_batch([held, free, other], ok, "c0", now_ms=4_999, batch=b"x" * 16)
    assert [d.verdict for d in decisions] == [Verdict.OK, Verdict.NOT_YET, Verdict.NOT_YET]
    assert decisions[1].reason == "restored from an older copy" and store.count() == 1
    store.close()
    # the hold outlives a restart: one within it locked anew at once (nothing told it again: a regression review)
    again = LockStore(tmp_path / "locks.sqlite", expect_existing=True)
    assert again.held_until_ms == 5_000 and again.held_reason == "restored from an older copy"
    assert [d.verdict for d in again.lock_batch([free], ok, "c0", now_ms=4_999, batch=b"z" * 16)] == [Verdict.NOT_YET]
    later = again.lock_batch([free, other], ok, "c0", now_ms=5_000, batch=b"y" * 16)
    assert [d.verdict for d in later] == [Verdict.OK, Verdict.OK] and again.count() == 3
    again.close()


def test_a_batch_whose_open_transaction_a_failing_write_rolled_back_is_never_committed_as_durable(
        tmp_path: Path) -> None:
    """A write that fails beside a batch's open transaction breaks the table and rolls that batch back: ``commit``
    returned without a word (nothing in transaction), and the share on the lost locks went out; after a restart a
    rival of the slot was locked (a regression review's reproduction). It raises."""
    store = LockStore(tmp_path / "locks.sqlite")
    decisions = store.lock_batch([receipt()], ok, "c0", batch=b"a" * 16, commit=False)
    assert [d.verdict for d in decisions] == [Verdict.OK] and store.db.in_transaction
    store.hold_new(10**13, "an older copy")
    with pytest.raises(LockTableBroken):
        store.keep_hold()  # (BEGIN within the open transaction: it fails, and the batch is rolled back)
    with pytest.raises(LockTableBroken):
        store.commit()
    store.close()


@pytest.mark.parametrize("damage", [b"\xff", "1999999999999", 1.5, 1999999999999])
def test_a_damaged_hold_row_breaks_the_table_rather_than_the_start(tmp_path: Path, damage: object) -> None:
    """Bytes that are no number, or a value of another type (set by hand in a shell: the column takes any): the
    start crashed with a traceback (a regression review)."""
    store = LockStore(tmp_path / "locks.sqlite")
    store.hold_new(10**13, "an older copy")
    store.keep_hold()
    store.db.execute("UPDATE meta SET v = ? WHERE k = 'held_until_ms'", (damage,))
    store.close()
    again = LockStore(tmp_path / "locks.sqlite", expect_existing=True)
    assert again.broken is not None and "hold" in again.broken
    again.close()


@pytest.mark.parametrize("damage", ["c0", 7])
def test_an_owner_row_of_another_type_breaks_a_key_holder_s_table_rather_than_the_start(tmp_path: Path,
                                                                                       damage: object) -> None:
    owner = bytes(KEY.verify_key)
    LockStore(tmp_path / "locks.sqlite", owner=owner).close()
    db = sqlite3.connect(tmp_path / "locks.sqlite")
    db.execute("UPDATE meta SET v = ? WHERE k = 'owner'", (damage,))
    db.commit()
    db.close()
    again = LockStore(tmp_path / "locks.sqlite", expect_existing=True, owner=owner)
    assert again.broken is not None and "another member" in again.broken
    again.close()
