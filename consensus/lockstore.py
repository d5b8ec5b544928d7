"""The durable slot-lock table (SQLite, WAL, synchronous=FULL): checked and written in one exclusive
transaction per batch, committed before any signature share for the batch leaves the process.

It also keeps the conflict evidence (both receipts of a slot) and each lock's receipt bytes, proposer and
time, so a signer can take over a batch whose proposer died; and the signed batches peers announced (``heard``),
until the state holds them, so one stays on disk here when its proposer's disk is lost. A table that fails its
integrity check, or that was lost while this member already holds a key share, puts the store in ``broken``
state: the coordinator then refuses to sign (never sign blind). Blocking calls: run them with ``trio.to_thread``.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from consensus.receipts import Receipt, ReceiptError
from consensus.slots import Decision, Validate, Verdict, decide, slot_key

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS locks (
    slot BLOB PRIMARY KEY, receipt_id BLOB NOT NULL, wire BLOB NOT NULL, proposer TEXT NOT NULL,
    locked_ms INTEGER NOT NULL, batch BLOB NOT NULL, idx INTEGER NOT NULL, final INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS locks_open ON locks (final, locked_ms);
CREATE INDEX IF NOT EXISTS locks_receipt ON locks (receipt_id);
CREATE TABLE IF NOT EXISTS conflicts (
    receipt_id BLOB NOT NULL, conflicting_id BLOB NOT NULL, wire BLOB NOT NULL, seen_ms INTEGER NOT NULL,
    PRIMARY KEY (receipt_id, conflicting_id));
CREATE TABLE IF NOT EXISTS heard (
    root BLOB PRIMARY KEY, origin TEXT NOT NULL, batch BLOB NOT NULL, heard_ms INTEGER NOT NULL);
"""


OPEN_WAIT_S = 5.0  # at open, how long another program's hold on the file is waited for
OPEN, SIGNED, CLOSED_CONFLICT, CLOSED_REJECTED = 0, 1, 2, 3  # the ``final`` column: why a lock is closed


class LockTableBroken(RuntimeError):
    """The lock table is lost or corrupt: this coordinator must not sign."""


@dataclass(frozen=True)
class OpenLock:
    receipt: Receipt
    proposer: str
    locked_ms: int
    batch: bytes  # the batch it was locked for, and its place there: a takeover re-proposes the same batch
    idx: int


class LockStore:
    def __init__(self, path: Path, *, expect_existing: bool = False, owner: bytes | None = None) -> None:
        """``expect_existing``: this member already holds a key share, so a missing table means it was lost.
        ``owner``: this member's identity key, kept in the table (``meta``) the first time it is opened with one; a
        table kept for another member (another coordinator's data folder copied in) is broken: its locks are not
        this member's, and rivals of the slots this one locked would be locked."""
        self.path = path
        self.broken: str | None = None
        self.held_until_ms = 0  # no slot is locked anew before then (``hold_new``)
        self.held_reason = ""
        self._count: int | None = None  # rows in ``locks``, counted at open, then kept (uncommitted ones included)
        lost = (f"lock table {path} is missing although this coordinator holds a key share: its locks were lost, so "
                "it will not sign (restore the file, or run a new DKG)")
        if expect_existing and not path.exists():
            # Not created in its place: an empty table made here passed for the real one at the next start, and
            # this member signed again, rivals of slots it had locked included (a reviewer's reproduction)
            self.broken = lost
            self.db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
            return
        existed = path.exists()
        try:
            # EXCLUSIVE: the file's lock is taken at open and held until close, so no other program (an operator's
            # sqlite3 shell, a backup script) can hold it while this one locks slots: a batch decided in the event
            # loop waited up to 5 s for such a lock, then broke the store. At open, another's is waited for a while.
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=OPEN_WAIT_S)
            self.db.execute("PRAGMA locking_mode=EXCLUSIVE")
            if existed:  # (read-only checks first: a lost table's stand-in is left as it was found)
                # integrity_check, not quick_check: only it compares the slot index with the rows, and every
                # slot lookup goes through that index (a stale index page passed quick_check, a rival's slot
                # looked free and was locked beside the first: a reviewer's reproduction)
                check = self.db.execute("PRAGMA integrity_check(1)").fetchone()
                if check is None or check[0] != "ok":
                    self.broken = f"lock table {path} failed its integrity check: {check}"
                elif expect_existing and self.db.execute(
                        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'locks'").fetchone() is None:
                    self.broken = lost.replace("is missing", "holds no locks table (an empty or another file)")
            if self.broken is None:
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=FULL")
                # Every commit is checkpointed into the table itself before it returns (~0.5 ms, in the
                # committing thread): a copy of locks.sqlite alone, without its -wal file (a partial restore, a
                # lost log after a crash), lacked the latest locks and let their rivals be locked
                self.db.execute("PRAGMA wal_autocheckpoint=1")
                self.db.executescript(SCHEMA)
                self.db.execute("BEGIN EXCLUSIVE")  # the file's lock, from now on
                self.db.execute("COMMIT")
                self.db.execute("PRAGMA busy_timeout=0")  # (nobody else can hold it now: never wait)
                self._count = int(self.db.execute("SELECT count(*) FROM locks").fetchone()[0])  # (before any thread)
                if owner is not None:
                    self._check_owner(owner, expect_existing)
                held = dict(self.db.execute("SELECT k, v FROM meta WHERE k IN ('held_until_ms', 'held_reason')"))
                if len(held) == 2:  # (a hold outlives restarts: see keep_hold)
                    try:  # (bytes only: text or a number set by hand in a shell crashed the start; bytes() of a
                        #   millisecond time allocated terabytes: a regression review)
                        if not all(type(v) is bytes for v in held.values()):
                            raise ValueError("not bytes")
                        self.held_until_ms = int(held["held_until_ms"].decode())
                        self.held_reason = held["held_reason"].decode()
                    except ValueError:  # (UnicodeDecodeError too)
                        self.broken = f"lock table {path} holds a damaged hold on new locks: it will not sign"
        except sqlite3.DatabaseError as exc:
            self.broken = f"lock table {path} is unreadable: {exc}"
        if not hasattr(self, "db"):  # (not even opened: a directory in its place, no permission)
            self.db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)

    def hold_new(self, until_ms: int, reason: str) -> None:
        """Lock no slot anew until ``until_ms`` (unix ms): this table may miss locks taken since the copy it was
        restored from (``Coordinator.restored_from_older_copy``); a slot locked then can no longer be signed once its
        epoch is past the grace. The locks held here are still kept to."""
        if until_ms > self.held_until_ms:
            self.held_until_ms, self.held_reason = until_ms, reason

    def keep_hold(self) -> None:
        """Keep the hold in the table (blocking; like every write, never beside another open transaction): a restart
        during it found nothing to tell it again (its outbox and cursors past the lost copy's events) and locked
        anew at once (a regression review)."""
        if not self.held_until_ms:
            return
        until_ms, reason = self.held_until_ms, self.held_reason
        with self._using(), self.db:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT OR REPLACE INTO meta (k, v) VALUES (?, ?)",
                                [("held_until_ms", str(until_ms).encode()), ("held_reason", reason.encode())])

    def _check_owner(self, owner: bytes, holds_key: bool) -> None:
        """Bind the table to ``owner`` (a new one, or one from before the owner was kept), or refuse it as another's
        while this member holds a key share: its own locks would be missing. Without a key share (a new identity
        starting over, its share moved aside) it is taken over: locks kept only ever refuse more."""
        row = self.db.execute("SELECT v FROM meta WHERE k = 'owner'").fetchone()
        if row is not None and not isinstance(row[0], bytes):  # (text or a number set by hand: bytes() crashed)
            row = (b"",)
        if row is not None and bytes(row[0]) != owner and holds_key:
            self.broken = (f"lock table {self.path} is another member's (kept for {bytes(row[0]).hex()[:16]}…, this "
                           f"member is {owner.hex()[:16]}…): its locks are not this member's, so it will not sign "
                           "(put this member's own table back; or move keyshare.bin aside and run a new DKG: the "
                           "table is then taken over)")
        elif row is None or bytes(row[0]) != owner:
            self.db.execute("INSERT OR REPLACE INTO meta (k, v) VALUES ('owner', ?)", (owner,))

    def close(self) -> None:
        self.db.close()

    def _check(self) -> None:
        if self.broken is not None:
            raise LockTableBroken(self.broken)

    @contextmanager
    def _using(self) -> Iterator[None]:
        """Around every other read or write of the table: refused once broken; a database error (disk full, an
        I/O error) breaks the store, so the caller sees ``LockTableBroken`` and the coordinator stops signing
        but keeps serving, rather than an sqlite3 error taking the service down."""
        self._check()
        try:
            yield
        except sqlite3.DatabaseError as exc:
            self.broken = f"lock table {self.path} failed: {exc}"
            raise LockTableBroken(self.broken) from None
        except ReceiptError as exc:  # a stored receipt that no longer decodes: the table is damaged
            self.broken = f"lock table {self.path} holds a receipt that does not decode: {exc}"
            raise LockTableBroken(self.broken) from None

    def lock_batch(self, receipts: Sequence[Receipt], validate: Validate, proposer: str,
                   now_ms: int | None = None, batch: bytes = b"", *, commit: bool = True) -> list[Decision]:
        """Check every slot and lock the free ones, in one exclusive transaction (blocking). ``commit=False``
        leaves that transaction open: the decisions are final for this connection, but nothing is durable (and
        no share may rest on it) until ``commit()``; the caller makes no other call in between."""
        self._check()
        now = int(time.time() * 1000) if now_ms is None else now_ms
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                keys = [slot_key(r.slot) for r in receipts]
                held: dict[bytes, bytes] = {}
                closed: dict[bytes, Decision] = {}
                for i in range(0, len(keys), 500):
                    chunk = keys[i:i + 500]
                    rows = self.db.execute(f"SELECT slot, receipt_id, final FROM locks WHERE slot IN "
                                           f"({','.join('?' * len(chunk))})", chunk)
                    for s, r, why in rows:
                        held[bytes(s)] = rid = bytes(r)
                        if why == CLOSED_REJECTED:
                            closed[rid] = Decision(rid, Verdict.INVALID, "this receipt can no longer be signed")
                        elif why == CLOSED_CONFLICT:
                            rival = self.db.execute("SELECT conflicting_id FROM conflicts WHERE receipt_id = ? "
                                                    "LIMIT 1", (rid,)).fetchone()
                            closed[rid] = Decision(rid, Verdict.CONFLICT, "slot conflict",
                                                   bytes(rival[0]) if rival else None)
                hold = self.held_reason if now < self.held_until_ms else None
                decisions, new = decide(receipts, held, validate, closed, hold)
                index = {r.id: i for i, r in enumerate(receipts)}
                self.db.executemany("INSERT INTO locks (slot, receipt_id, wire, proposer, locked_ms, batch, idx) "
                                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                                    [(k, r.id, r.to_wire(), proposer, now, batch, index[r.id])
                                     for k, r in new.items()])
                by_id = {r.id: r for r in receipts}
                self.db.executemany("INSERT OR IGNORE INTO conflicts VALUES (?, ?, ?, ?)",
                                    [(d.receipt_id, d.conflicting_id, by_id[d.receipt_id].to_wire(), now)
                                     for d in decisions
                                     if d.verdict is Verdict.CONFLICT and d.conflicting_id is not None])
                if commit:
                    self.db.execute("COMMIT")
            except BaseException:  # (rolled back by SQLite itself already on a full disk: its error is the one)
                if self.db.in_transaction:
                    try:
                        self.db.execute("ROLLBACK")
                    except sqlite3.Error as exc:  # its locks may stay pending, to be committed by the next batch's:
                        self.broken = f"lock table {self.path} failed: cannot roll a batch back: {exc}"  # never
                raise
        except sqlite3.DatabaseError as exc:
            self.broken = f"lock table {self.path} failed: {exc}"
            raise LockTableBroken(self.broken) from None
        if self._count is not None:
            self._count += len(new)
        return decisions

    def commit(self) -> None:
        """Make the locks of a ``lock_batch(commit=False)`` durable (blocking; nothing to do without one)."""
        self._check()  # (broken meanwhile: what is pending may be a batch that could not be rolled back, or none any
        #               more: a failing write rolled it back, and a share on its locks must not go out)
        if not self.db.in_transaction:
            return
        try:
            self.db.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            if self.db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self.db.execute("ROLLBACK")
            self.broken = f"lock table {self.path} failed: {exc}"
            raise LockTableBroken(self.broken) from None

    def holds(self, receipt_ids: Sequence[bytes]) -> list[Receipt] | None:
        """The locked receipts with these ids, in order, or None if any is not locked here (blocking)."""
        found: dict[bytes, Receipt] = {}
        with self._using():
            for i in range(0, len(receipt_ids), 500):
                chunk = list(receipt_ids[i:i + 500])
                rows = self.db.execute(f"SELECT receipt_id, wire FROM locks WHERE receipt_id IN "
                                       f"({','.join('?' * len(chunk))})", chunk)
                found.update((bytes(r), Receipt.from_wire(bytes(w))) for r, w in rows)
        if any(r not in found for r in receipt_ids):
            return None
        return [found[r] for r in receipt_ids]

    def mark_final(self, receipt_ids: Sequence[bytes], why: int = SIGNED, heard: Sequence[bytes] = ()) -> None:
        """Close these locks (signed, or never signable: ``why``): no takeover re-proposes them; and forget the
        heard batches with these roots (the state holds them). One transaction."""
        with self._using(), self.db:
            self.db.execute("BEGIN")
            self.db.executemany("UPDATE locks SET final = ? WHERE receipt_id = ?", [(why, r) for r in receipt_ids])
            self.db.executemany("DELETE FROM heard WHERE root = ?", [(root,) for root in heard])

    def keep_heard(self, root: bytes, origin: str, batch: bytes, now_ms: int | None = None) -> None:
        """Keep a signed batch a peer announced (``batch``: its encoded fields) until ``mark_final`` forgets it;
        durable when this returns (blocking)."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        with self._using(), self.db:
            self.db.execute("BEGIN")
            self.db.execute("INSERT OR IGNORE INTO heard VALUES (?, ?, ?, ?)", (root, origin, batch, now))

    def heard(self) -> list[tuple[bytes, str, bytes]]:
        """The heard batches kept: (root, origin, encoded fields), oldest first (blocking)."""
        with self._using():
            rows = self.db.execute("SELECT root, origin, batch FROM heard ORDER BY heard_ms").fetchall()
        return [(bytes(r), o, bytes(b)) for r, o, b in rows]

    def close_conflicts(self, lost: Sequence[tuple[Receipt, bytes | None]], now_ms: int | None = None) -> None:
        """Close the locks of receipts that lost their slot to a rival (receipt, the rival's id when known), and
        keep the rival as evidence, in one transaction: after a restart the status is still known."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        with self._using(), self.db:
            self.db.execute("BEGIN")
            self.db.executemany("UPDATE locks SET final = ? WHERE receipt_id = ?",
                                [(CLOSED_CONFLICT, r.id) for r, _ in lost])
            self.db.executemany("INSERT OR IGNORE INTO conflicts VALUES (?, ?, ?, ?)",
                                [(r.id, rival, r.to_wire(), now) for r, rival in lost if rival is not None])

    def open_locks(self, older_than_ms: int, limit: int = 1024,
                   after: tuple[int, bytes, int] | None = None) -> list[OpenLock]:
        """Locks not known to be final, taken before ``older_than_ms`` (candidates for a takeover), in lock
        order from just past ``after`` (locked_ms, batch, idx): a caller that pages through them keeps old
        locks nobody can sign (a liar among the few holding them) from starving newer ones."""
        lo_ms, lo_batch, lo_idx = after if after is not None else (-1, b"", -1)
        with self._using():
            rows = self.db.execute("SELECT wire, proposer, locked_ms, batch, idx FROM locks WHERE final = 0 AND "
                                   "locked_ms < ? AND (locked_ms, batch, idx) > (?, ?, ?) "
                                   "ORDER BY locked_ms, batch, idx LIMIT ?",
                                   (older_than_ms, lo_ms, lo_batch, lo_idx, limit)).fetchall()
            return [OpenLock(Receipt.from_wire(bytes(w)), p, t, bytes(b), i) for w, p, t, b, i in rows]

    def lock_of(self, receipt_id: bytes) -> tuple[Receipt, int, bytes | None] | None:
        """The receipt locked here under this id, why its lock is closed (OPEN, SIGNED, ...), and a rival
        receipt of its slot seen here if any; None when it holds no lock here (blocking)."""
        with self._using():
            row = self.db.execute("SELECT wire, final FROM locks WHERE receipt_id = ?", (receipt_id,)).fetchone()
            if row is None:
                return None
            rival = self.db.execute("SELECT conflicting_id FROM conflicts WHERE receipt_id = ? UNION ALL "
                                    "SELECT receipt_id FROM conflicts WHERE conflicting_id = ? LIMIT 1",
                                    (receipt_id, receipt_id)).fetchone()
            return Receipt.from_wire(bytes(row[0])), int(row[1]), bytes(rival[0]) if rival else None

    def refused_for_conflict(self, receipt_id: bytes) -> tuple[Receipt, bytes] | None:
        """A receipt this table refused to lock because its slot was locked to a rival (kept as evidence, no lock
        of its own), and that rival's id; None if it holds none (blocking)."""
        with self._using():
            row = self.db.execute("SELECT wire, conflicting_id FROM conflicts WHERE receipt_id = ? LIMIT 1",
                                  (receipt_id,)).fetchone()
            return (Receipt.from_wire(bytes(row[0])), bytes(row[1])) if row else None

    def conflict_for(self, receipt_id: bytes) -> bytes | None:
        with self._using():
            row = self.db.execute("SELECT conflicting_id FROM conflicts WHERE receipt_id = ? LIMIT 1",
                                  (receipt_id,)).fetchone()
        return bytes(row[0]) if row else None

    def count(self) -> int:
        """Locks held (kept in memory: a status page asks every second, and counting rows scans the table); a
        table that failed to open is counted here (and raises when unreadable)."""
        if self._count is None:
            self._count = int(self.db.execute("SELECT count(*) FROM locks").fetchone()[0])
        return self._count
