"""Mock DA: an append-only blob log in SQLite, in memory (unit tests) or in a file (MOCK_DA_PATH),
so a coordinator survives restarts and several processes on one machine can share one log.

Heights start at 1 and grow by one per blob; the commitment is SHA-256 of the data. ``down`` makes
every call fail as an outage would (the mock stands in for a real network we do not have here).
"""

from __future__ import annotations

import hashlib
import sqlite3
import time

import trio

from node.da.base import BlobNotFound, BlobRef, DAUnavailable, Page

_SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs (
    height INTEGER PRIMARY KEY AUTOINCREMENT,
    commitment BLOB NOT NULL,
    data BLOB NOT NULL,
    posted_ms INTEGER NOT NULL
)
"""


class MockDA:
    def __init__(self, path: str = ":memory:", name: str = "primary") -> None:
        self.name = name
        self.path = path
        self.down = False
        try:  # (the error named no file: "cannot start: unable to open database file")
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10.0)
            if path != ":memory:":
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(_SCHEMA)
        except sqlite3.Error as exc:
            raise sqlite3.OperationalError(f"cannot use the Mock DA file {path}: {exc}") from None
        self._lock = trio.Lock()

    def close(self) -> None:
        self._db.close()

    async def _run(self, fn, *args):  # type: ignore[no-untyped-def]
        if self.down:
            raise DAUnavailable(f"{self.name}: mock DA is down")
        async with self._lock:
            try:
                result = await trio.to_thread.run_sync(fn, *args)
            except sqlite3.Error as exc:
                raise DAUnavailable(f"{self.name}: {exc}") from exc
        if self.down:  # the outage began while the call was in flight: its answer is lost too
            raise DAUnavailable(f"{self.name}: mock DA is down")
        return result

    def _post(self, data: bytes) -> BlobRef:
        commitment = hashlib.sha256(data).digest()
        cur = self._db.execute(
            "INSERT INTO blobs (commitment, data, posted_ms) VALUES (?, ?, ?)",
            (commitment, data, time.time_ns() // 1_000_000),
        )
        return BlobRef(self.name, int(cur.lastrowid or 0), commitment)

    async def post(self, data: bytes) -> BlobRef:
        return await self._run(self._post, bytes(data))

    def _get(self, ref: BlobRef) -> bytes:
        row = self._db.execute(
            "SELECT data FROM blobs WHERE height = ? AND commitment = ?", (ref.height, ref.commitment)
        ).fetchone()
        if row is None:
            raise BlobNotFound(f"{self.name}: no blob at height {ref.height} with that commitment")
        return bytes(row[0])

    async def get(self, ref: BlobRef) -> bytes:
        return await self._run(self._get, ref)

    def _read_after(self, cursor: int, limit: int) -> Page:
        rows = self._db.execute(
            "SELECT height, commitment, data FROM blobs WHERE height > ? ORDER BY height LIMIT ?", (cursor, limit)
        ).fetchall()
        items = [(BlobRef(self.name, h, bytes(c)), bytes(d)) for h, c, d in rows]
        return Page(items, items[-1][0].height if items else cursor, len(items) < limit)

    async def read_after(self, cursor: int, limit: int, wait_s: float = 0.0) -> Page:
        """Answers at once (no long poll: other processes may append to the same file unseen)."""
        return await self._run(self._read_after, cursor, limit)

    def _head(self) -> int:
        row = self._db.execute("SELECT MAX(height) FROM blobs").fetchone()
        return int(row[0] or 0)

    async def head(self) -> int:
        return await self._run(self._head)
