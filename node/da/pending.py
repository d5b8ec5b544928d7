"""Durable record of every blob that landed on a fallback layer, until it is confirmed on the primary.

Recorded when it lands (layer, reference, data); marked reconciled only after the primary returned it
back byte for byte; never deleted by a failure (a blob that keeps failing stays pending with its last
error). What is settled is forgotten after a week (``prune``, run by the stack's monitor every hour). SQLite
(WAL, synchronous=FULL) in the data dir, accessed through ``trio.to_thread``.

Other members' fallback blobs too, so any member can move them to the primary (its writer may be gone for
good): ``foreign_blobs`` holds the blobs signed by a cluster member that this coordinator read from a fallback
log, did not write itself and has not seen on the primary; ``on_primary`` the ids of the event blobs it read
from the primary log. A foreign blob is resolved when it is read from the primary (whoever posted it) or once
this coordinator re-posted it there; an own pending blob read from the primary is reconciled at once.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import trio

from node.da.base import BlobRef
from node.outbox import BUSY_TIMEOUT_S

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS fallback_blobs (
    blob_id TEXT PRIMARY KEY,          -- hex SHA-256 of the data
    layer TEXT NOT NULL, height INTEGER NOT NULL, commitment BLOB NOT NULL,
    data BLOB NOT NULL,
    stored_ms INTEGER NOT NULL,
    retry_count INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    reconciled_ms INTEGER,
    primary_height INTEGER, primary_commitment BLOB
);
CREATE INDEX IF NOT EXISTS fallback_pending ON fallback_blobs (stored_ms) WHERE reconciled_ms IS NULL;
CREATE TABLE IF NOT EXISTS foreign_blobs (     -- members' blobs read from a fallback log, not written by us
    blob_id TEXT PRIMARY KEY,
    layer TEXT NOT NULL, height INTEGER NOT NULL, commitment BLOB NOT NULL,
    data BLOB NOT NULL,
    seen_ms INTEGER NOT NULL,
    retry_count INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    resolved_ms INTEGER,
    resolution TEXT,                   -- 'on_primary' (read from the primary log) or 'adopted' (we posted it)
    primary_height INTEGER, primary_commitment BLOB
);
CREATE INDEX IF NOT EXISTS foreign_unresolved ON foreign_blobs (seen_ms) WHERE resolved_ms IS NULL;
CREATE TABLE IF NOT EXISTS on_primary (blob_id TEXT PRIMARY KEY) WITHOUT ROWID;  -- event blobs read there (and
-- since when: seen_ms, a column added to older files at open)
CREATE TABLE IF NOT EXISTS certificates (      -- what a fallback layer signed for a blob (QuorumDA)
    blob_id TEXT PRIMARY KEY,
    certificate BLOB NOT NULL
);
"""


@dataclass(frozen=True, order=True)
class PageKey:
    """Where a pending blob sits in the order reconciliation takes them (oldest first)."""

    stored_ms: int
    rowid: int
    blob_id: str


@dataclass(frozen=True)
class FallbackBlob:
    blob_id: str
    ref: BlobRef
    data: bytes
    stored_ms: int
    retry_count: int
    last_error: str | None
    primary_ref: BlobRef | None


def _row(r: tuple) -> FallbackBlob:  # type: ignore[type-arg]
    blob_id, layer, height, commitment, data, stored, retries, err, _, p_height, p_commit = r
    primary = BlobRef("primary", int(p_height), bytes(p_commit)) if p_height is not None else None
    return FallbackBlob(blob_id, BlobRef(layer, int(height), bytes(commitment)), bytes(data), int(stored),
                        int(retries), err, primary)


class PendingStore:
    def __init__(self, path: Path | str) -> None:
        try:  # (the error named no file: "cannot start: file is not a database")
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None,
                                       timeout=BUSY_TIMEOUT_S)
            if str(path) != ":memory:":
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            if "seen_ms" not in {row[1] for row in self._db.execute("PRAGMA table_info(on_primary)")}:
                self._db.execute("ALTER TABLE on_primary ADD COLUMN seen_ms INTEGER NOT NULL DEFAULT 0")
        except sqlite3.Error as exc:
            raise sqlite3.OperationalError(f"cannot use the fallback record file {path}: {exc}") from None
        self._lock = trio.Lock()
        self.pending_count = int(self._db.execute(
            "SELECT COUNT(*) FROM fallback_blobs WHERE reconciled_ms IS NULL").fetchone()[0])
        self.foreign_waiting = int(self._db.execute(
            "SELECT COUNT(*) FROM foreign_blobs WHERE resolved_ms IS NULL").fetchone()[0])

    def close(self) -> None:
        self._db.close()

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        async with self._lock:
            return await trio.to_thread.run_sync(fn, *args)

    async def record(self, ref: BlobRef, data: bytes, certificate: bytes | None = None) -> str:
        """Remember a blob that landed on a fallback (idempotent by content), with the layer's certificate."""
        blob_id = hashlib.sha256(data).hexdigest()

        def insert() -> int:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                cur = self._db.execute(
                    "INSERT OR IGNORE INTO fallback_blobs (blob_id, layer, height, commitment, data, stored_ms) "
                    "VALUES (?, ?, ?, ?, ?, ?)", (blob_id, ref.layer, ref.height, ref.commitment, data, _now()))
                if certificate is not None:
                    self._db.execute("INSERT OR REPLACE INTO certificates (blob_id, certificate) VALUES (?, ?)",
                                     (blob_id, certificate))
            return cur.rowcount

        added = await self._call(insert)
        self.pending_count += added
        return blob_id

    async def pending(self, limit: int = 1_000_000) -> list[FallbackBlob]:
        def read() -> list[FallbackBlob]:
            rows = self._db.execute("SELECT * FROM fallback_blobs WHERE reconciled_ms IS NULL ORDER BY stored_ms, "
                                    "blob_id LIMIT ?", (limit,)).fetchall()
            return [_row(r) for r in rows]

        return await self._call(read)

    async def certificate(self, blob_id: str) -> bytes | None:
        def read() -> bytes | None:
            row = self._db.execute("SELECT certificate FROM certificates WHERE blob_id = ?", (blob_id,)).fetchone()
            return bytes(row[0]) if row else None

        return await self._call(read)

    async def list_pending(self, limit: int, after: str | None = None) -> list[dict[str, object]] | None:
        """The oldest ``limit`` pending blobs as /fallback/pending shows them (without their data); with ``after``
        (a blob id) those that come after that blob, for paging; None when no blob has that id (any more)."""
        def read() -> list[dict[str, object]] | None:
            columns = "blob_id, layer, height, stored_ms, retry_count, last_error, length(data)"
            if after is None:
                rows = self._db.execute(
                    f"SELECT {columns} FROM fallback_blobs WHERE reconciled_ms IS NULL ORDER BY stored_ms, rowid "
                    "LIMIT ?", (limit,)).fetchall()
            else:
                key = self._db.execute("SELECT stored_ms, rowid FROM fallback_blobs WHERE blob_id = ?",
                                       (after,)).fetchone()
                if key is None:
                    return None
                rows = self._db.execute(
                    f"SELECT {columns} FROM fallback_blobs WHERE reconciled_ms IS NULL AND (stored_ms, rowid) > (?, ?) "
                    "ORDER BY stored_ms, rowid LIMIT ?", (*key, limit)).fetchall()
            return [{"blob_id": b, "source_da": layer, "target_da": "primary", "stored_at": ms, "retry_count": r,
                     "last_error": err, "height": h, "size": size} for b, layer, h, ms, r, err, size in rows]

        return await self._call(read)

    async def pending_keys(self, after: PageKey | None = None, limit: int = 100) -> list[PageKey]:
        """Keys of up to ``limit`` pending blobs after ``after``, oldest first (no data): page through
        every pending blob with ``pending_keys(keys[-1])`` and load each page's data with ``load``."""
        def read() -> list[PageKey]:
            if after is None:
                rows = self._db.execute(
                    "SELECT stored_ms, rowid, blob_id FROM fallback_blobs WHERE reconciled_ms IS NULL "
                    "ORDER BY stored_ms, rowid LIMIT ?", (limit,)).fetchall()
            else:
                rows = self._db.execute(
                    "SELECT stored_ms, rowid, blob_id FROM fallback_blobs WHERE reconciled_ms IS NULL "
                    "AND (stored_ms > ? OR (stored_ms = ? AND rowid > ?)) ORDER BY stored_ms, rowid LIMIT ?",
                    (after.stored_ms, after.stored_ms, after.rowid, limit)).fetchall()
            return [PageKey(int(ms), int(rowid), str(blob_id)) for ms, rowid, blob_id in rows]

        return await self._call(read)

    async def recent_ids(self, reconciled: bool, limit: int) -> tuple[list[str], int]:
        """Ids of the ``limit`` most recent pending (by storage) or reconciled (by reconciliation) blobs,
        newest first, and how many such blobs there are in all."""
        def read() -> tuple[list[str], int]:
            if reconciled:
                where, order = "reconciled_ms IS NOT NULL", "reconciled_ms DESC, rowid DESC"
            else:
                where, order = "reconciled_ms IS NULL", "stored_ms DESC, rowid DESC"
            total = int(self._db.execute(f"SELECT COUNT(*) FROM fallback_blobs WHERE {where}").fetchone()[0])
            rows = self._db.execute(f"SELECT blob_id FROM fallback_blobs WHERE {where} ORDER BY {order} LIMIT ?",
                                    (limit,)).fetchall()
            return [str(r[0]) for r in rows], total

        return await self._call(read)

    async def load(self, blob_ids: Sequence[str]) -> list[FallbackBlob]:
        """The rows (with data) of these blobs, in the order given; unknown ids are left out."""
        def read() -> list[FallbackBlob]:
            marks = ",".join("?" * len(blob_ids))
            rows = self._db.execute(f"SELECT * FROM fallback_blobs WHERE blob_id IN ({marks})",
                                    tuple(blob_ids)).fetchall()
            by_id = {r[0]: _row(r) for r in rows}
            return [by_id[i] for i in blob_ids if i in by_id]

        if not blob_ids:
            return []
        return await self._call(read)

    async def reconciled(self, limit: int = 1000) -> list[FallbackBlob]:
        def read() -> list[FallbackBlob]:
            rows = self._db.execute("SELECT * FROM fallback_blobs WHERE reconciled_ms IS NOT NULL "
                                    "ORDER BY reconciled_ms DESC LIMIT ?", (limit,)).fetchall()
            return [_row(r) for r in rows]

        return await self._call(read)

    async def mark_reconciled(self, blob_id: str, primary: BlobRef) -> None:
        await self.mark_reconciled_many([(blob_id, primary)])

    async def mark_reconciled_many(self, done: Sequence[tuple[str, BlobRef]]) -> None:
        """``mark_reconciled`` for several blobs, in one transaction (one fsync)."""
        changed = await self._resolve_many(
            "UPDATE fallback_blobs SET reconciled_ms = ?, primary_height = ?, primary_commitment = ?, "
            "last_error = NULL WHERE blob_id = ? AND reconciled_ms IS NULL", done)
        self.pending_count -= changed

    async def _resolve_many(self, sql: str, done: Sequence[tuple[str, BlobRef]]) -> int:
        """Run ``sql`` (now, height, commitment, blob id) for each blob, in one transaction; how many rows
        changed. (The caller subtracts it after the await: ``x -= await`` would read ``x`` before it.)"""
        def update() -> int:
            now = _now()
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                return sum(self._db.execute(sql, (now, primary.height, primary.commitment, blob_id)).rowcount
                           for blob_id, primary in done)

        return await self._call(update) if done else 0

    async def mark_failed(self, blob_id: str, error: str) -> None:
        await self.mark_failed_many([blob_id], error)

    async def mark_failed_many(self, blob_ids: Sequence[str], error: str) -> None:
        """One more failed attempt, with its error, for each of these blobs (one transaction)."""
        def update() -> None:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany("UPDATE fallback_blobs SET retry_count = retry_count + 1, last_error = ? "
                                     "WHERE blob_id = ?", [(error[:500], blob_id) for blob_id in blob_ids])

        if blob_ids:
            await self._call(update)

    # ---- other members' fallback blobs --------------------------------------------------------------

    async def note_primary(self, seen: Sequence[tuple[BlobRef, bytes]]) -> int:
        """Blobs read from the primary log: remembered as being there; a foreign blob among them is resolved, an
        own pending one reconciled (someone else, or an earlier attempt of ours, put it there). Returns how many
        foreign or pending blobs this resolved."""
        rows = [(hashlib.sha256(data).hexdigest(), ref) for ref, data in seen]

        def update() -> tuple[int, int]:
            now = _now()
            foreign = pending = 0
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany("INSERT OR IGNORE INTO on_primary (blob_id, seen_ms) VALUES (?, ?)",
                                     [(blob_id, now) for blob_id, _ in rows])
                for blob_id, ref in rows:
                    foreign += self._db.execute(
                        "UPDATE foreign_blobs SET resolved_ms = ?, resolution = 'on_primary', primary_height = ?, "
                        "primary_commitment = ? WHERE blob_id = ? AND resolved_ms IS NULL",
                        (now, ref.height, ref.commitment, blob_id)).rowcount
                    pending += self._db.execute(
                        "UPDATE fallback_blobs SET reconciled_ms = ?, primary_height = ?, primary_commitment = ?, "
                        "last_error = NULL WHERE blob_id = ? AND reconciled_ms IS NULL",
                        (now, ref.height, ref.commitment, blob_id)).rowcount
            return foreign, pending

        if not rows:
            return 0
        foreign, pending = await self._call(update)
        self.foreign_waiting -= foreign
        self.pending_count -= pending
        return foreign + pending

    async def prune(self, before_ms: int, keep_reconciled: int) -> tuple[int, int, int]:
        """Forget what is settled and older than ``before_ms``: own blobs reconciled then (but the most recent
        ``keep_reconciled``, the consistency check's sample) with their data and certificates, other members' blobs
        resolved then, and the ids of blobs read from the primary then (a blob of such an old id met again on a
        fallback log would be re-posted: harmless, events are deduplicated). Pending blobs are never touched.
        Without this, every blob read from the primary added a row for ever, and reconciled blobs kept their data.
        Returns the rows removed from each of the three."""
        def delete() -> tuple[int, int, int]:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                old = ("SELECT blob_id FROM fallback_blobs WHERE reconciled_ms IS NOT NULL AND reconciled_ms < ? "
                       "AND blob_id NOT IN (SELECT blob_id FROM fallback_blobs WHERE reconciled_ms IS NOT NULL "
                       "ORDER BY reconciled_ms DESC LIMIT ?)")
                self._db.execute(f"DELETE FROM certificates WHERE blob_id IN ({old})", (before_ms, keep_reconciled))
                own = self._db.execute(f"DELETE FROM fallback_blobs WHERE blob_id IN ({old})",
                                       (before_ms, keep_reconciled)).rowcount
                foreign = self._db.execute("DELETE FROM foreign_blobs WHERE resolved_ms IS NOT NULL "
                                           "AND resolved_ms < ?", (before_ms,)).rowcount
                seen = self._db.execute("DELETE FROM on_primary WHERE seen_ms < ?", (before_ms,)).rowcount
            return own, foreign, seen

        return await self._call(delete)

    async def note_fallback(self, seen: Sequence[tuple[BlobRef, bytes]]) -> int:
        """Members' blobs read from a fallback log: each one we did not write and have not seen on the primary
        is recorded as a foreign blob (idempotent). Returns how many are new."""
        rows = [(hashlib.sha256(data).hexdigest(), ref, data) for ref, data in seen]

        def insert() -> int:
            now = _now()
            added = 0
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                for blob_id, ref, data in rows:
                    if self._db.execute("SELECT 1 FROM fallback_blobs WHERE blob_id = ? UNION ALL "
                                        "SELECT 1 FROM on_primary WHERE blob_id = ?", (blob_id, blob_id)).fetchone():
                        continue
                    added += self._db.execute(
                        "INSERT OR IGNORE INTO foreign_blobs (blob_id, layer, height, commitment, data, seen_ms) "
                        "VALUES (?, ?, ?, ?, ?, ?)", (blob_id, ref.layer, ref.height, ref.commitment, data, now)
                    ).rowcount
            return added

        if not rows:
            return 0
        added = await self._call(insert)
        self.foreign_waiting += added
        return added

    async def foreign_keys(self, after: PageKey | None, limit: int, seen_before_ms: int) -> list[PageKey]:
        """Keys (``stored_ms`` = when we first read it) of unresolved foreign blobs first read at or before
        ``seen_before_ms``, oldest first, after ``after``."""
        def read() -> list[PageKey]:
            start = (-1, -1) if after is None else (after.stored_ms, after.rowid)
            rows = self._db.execute(
                "SELECT seen_ms, rowid, blob_id FROM foreign_blobs WHERE resolved_ms IS NULL AND seen_ms <= ? "
                "AND (seen_ms > ? OR (seen_ms = ? AND rowid > ?)) ORDER BY seen_ms, rowid LIMIT ?",
                (seen_before_ms, start[0], start[0], start[1], limit)).fetchall()
            return [PageKey(int(ms), int(rowid), str(blob_id)) for ms, rowid, blob_id in rows]

        return await self._call(read)

    async def sizes(self, blob_ids: Sequence[str], *, foreign: bool = False) -> dict[str, int]:
        """The data size of each of these blobs (pending or ``foreign``) that the store holds, without reading it."""
        def read() -> dict[str, int]:
            marks = ",".join("?" * len(blob_ids))
            table = "foreign_blobs" if foreign else "fallback_blobs"
            return dict(self._db.execute(f"SELECT blob_id, length(data) FROM {table} WHERE blob_id IN ({marks})",
                                         tuple(blob_ids)).fetchall())

        if not blob_ids:
            return {}
        return await self._call(read)

    async def load_foreign(self, blob_ids: Sequence[str]) -> list[FallbackBlob]:
        """Unresolved foreign blobs with these ids (``stored_ms``: when we first read it), in the order given."""
        def read() -> list[FallbackBlob]:
            marks = ",".join("?" * len(blob_ids))
            rows = self._db.execute(
                "SELECT blob_id, layer, height, commitment, data, seen_ms, retry_count, last_error, NULL, NULL, NULL "
                f"FROM foreign_blobs WHERE resolved_ms IS NULL AND blob_id IN ({marks})", tuple(blob_ids)).fetchall()
            by_id = {r[0]: _row(r) for r in rows}
            return [by_id[i] for i in blob_ids if i in by_id]

        if not blob_ids:
            return []
        return await self._call(read)

    async def mark_adopted(self, blob_id: str, primary: BlobRef) -> None:
        """We re-posted a foreign blob to the primary and read it back."""
        await self.mark_adopted_many([(blob_id, primary)])

    async def mark_adopted_many(self, done: Sequence[tuple[str, BlobRef]]) -> None:
        """``mark_adopted`` for several foreign blobs, in one transaction."""
        changed = await self._resolve_many(
            "UPDATE foreign_blobs SET resolved_ms = ?, resolution = 'adopted', primary_height = ?, "
            "primary_commitment = ?, last_error = NULL WHERE blob_id = ? AND resolved_ms IS NULL", done)
        self.foreign_waiting -= changed

    async def mark_foreign_failed(self, blob_id: str, error: str) -> None:
        await self.mark_foreign_failed_many([blob_id], error)

    async def mark_foreign_failed_many(self, blob_ids: Sequence[str], error: str) -> None:
        def update() -> None:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany("UPDATE foreign_blobs SET retry_count = retry_count + 1, last_error = ? "
                                     "WHERE blob_id = ?", [(error[:500], blob_id) for blob_id in blob_ids])

        if blob_ids:
            await self._call(update)

    async def foreign(self, resolved: bool | None = None) -> list[tuple[str, str | None, BlobRef | None]]:
        """(blob_id, resolution, primary ref) of every foreign blob (or only the resolved / unresolved ones)."""
        def read() -> list[tuple[str, str | None, BlobRef | None]]:
            where = "" if resolved is None else (
                "WHERE resolved_ms IS NOT NULL" if resolved else "WHERE resolved_ms IS NULL")
            rows = self._db.execute(f"SELECT blob_id, resolution, primary_height, primary_commitment FROM "
                                    f"foreign_blobs {where} ORDER BY seen_ms, rowid").fetchall()
            return [(str(b), r, BlobRef("primary", int(h), bytes(c)) if h is not None else None)
                    for b, r, h, c in rows]

        return await self._call(read)


def _now() -> int:
    return time.time_ns() // 1_000_000
