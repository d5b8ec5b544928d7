"""The durable outbox: every locally created event is committed here (SQLite, WAL, synchronous=FULL)
before the request that made it is answered. The publisher later records where each event landed.

Writes are group-committed: concurrent ``append`` calls that arrive while a commit is in flight share
the next transaction (one fsync), so throughput grows with concurrency instead of queueing on fsync. Each
commit also records the latest timestamp among the events (``clock``; or the one each ``append`` names as its
clock's, see there): the restarted coordinator's clock resumes past every timestamp it ever issued, pruned or not
(``high_water``). It records too the latest timestamp of any event it committed (``stamps``: an event stamped after
a register's version further ahead exceeds the clock's), which no event of this coordinator on DA exceeds unless this
outbox is an older copy (``stamp_high_water``).
At most ``max_inflight`` appends wait at once (queued or being committed); one more raises
``Overloaded`` at once (the API answers 503 with Retry-After), so a write flood cannot grow the queue
without bound. All SQLite work runs in ``trio.to_thread`` (or the ``run_blocking`` given: the simulator runs
it inline, in virtual time) under one lock.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import trio

from node.da.base import BlobRef
from node.events import Event, EventDecodeError, decode_event

T = TypeVar("T")
#: how long a statement waits for a write lock another connection holds (a backup, the sqlite3 shell: this process
#: holds the only connection) before it fails: an API write then answers 503. 30 s held every stop as long, per
#: statement: the commit and the mark in a thread cannot be abandoned (a reviewer's reproduction)
BUSY_TIMEOUT_S = 5.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    raw BLOB NOT NULL,
    created_ms INTEGER NOT NULL,
    layer TEXT,
    height INTEGER,
    commitment BLOB,
    published_ms INTEGER
);
CREATE INDEX IF NOT EXISTS outbox_unpublished ON outbox (seq) WHERE layer IS NULL;
CREATE TABLE IF NOT EXISTS clock (k INTEGER PRIMARY KEY CHECK (k = 0), wall INTEGER NOT NULL,
                                  counter INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS stamps (k INTEGER PRIMARY KEY CHECK (k = 0), wall INTEGER NOT NULL,
                                   counter INTEGER NOT NULL);
"""

MAX_GROUP = 1024
PRUNE_CHUNK = 20_000  # published events forgotten per transaction (~10 ms each)
MAX_INFLIGHT = 1024  # default bound of appends waiting at once (config MAX_INFLIGHT_WRITES)


class Overloaded(Exception):
    """Too many writes are in flight; the caller should retry later. Nothing was stored."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"{limit} writes are already waiting for their commit (MAX_INFLIGHT_WRITES); retry later")


@dataclass
class _Waiter:
    event: Event
    clock: tuple[int, int]  # what the high-water mark takes from it
    done: trio.Event = field(default_factory=trio.Event)
    seq: int = 0
    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class Landed:
    seq: int
    raw: bytes
    ref: BlobRef


class Outbox:
    def __init__(self, path: Path, on_commit: Callable[[list[tuple[int, Event]]], None],
                 max_inflight: int = MAX_INFLIGHT,
                 run_blocking: Callable[..., Awaitable[object]] = trio.to_thread.run_sync) -> None:
        """``on_commit`` runs synchronously after each commit, in sequence order, before any
        ``append`` of that group returns: the coordinator applies the events to its state there.
        ``max_inflight``: appends allowed to wait at once (see ``Overloaded``)."""
        self._on_commit = on_commit
        self._run_blocking = run_blocking
        self.max_inflight = max_inflight
        self.inflight = 0  # appends queued or being committed (a cancelled caller's stays until committed)
        self.overloaded = 0  # appends refused with Overloaded
        path.parent.mkdir(parents=True, exist_ok=True)
        try:  # (the error named no file: "cannot start: file is not a database")
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None,
                                       timeout=BUSY_TIMEOUT_S)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise sqlite3.OperationalError(f"cannot use the outbox file {path}: {exc}") from None
        self._lock = trio.Lock()
        self._queue: deque[list[_Waiter]] = deque()  # one entry per append_all call: its events commit together
        self._wake = trio.Event()
        self.appended = trio.Event()  # set after each commit; the publisher waits on it
        row = self._db.execute("SELECT COUNT(*) FROM outbox WHERE layer IS NULL").fetchone()
        self.pending = int(row[0])
        self.commits = 0

    def close(self) -> None:
        self._db.close()

    async def _db_call(self, fn: Callable[..., T], *args: object) -> T:
        async with self._lock:
            return await self._run_blocking(fn, *args)  # type: ignore[return-value]

    # ---- writing ---------------------------------------------------------------------------------

    async def append(self, event: Event, clock: tuple[int, int] | None = None) -> int:
        """Durably store one event; return its sequence number once committed (and applied). Raise
        ``Overloaded`` at once, storing nothing, when ``max_inflight`` appends already wait. ``clock``: see
        ``append_all``."""
        return (await self.append_all([event], clock))[0]

    async def append_all(self, events: list[Event], clock: tuple[int, int] | None = None) -> list[int]:
        """Durably store these events, in one commit (all or none); their sequence numbers once committed.
        ``Overloaded`` at once, storing none of them, unless all of them fit: a write of two events (a node and its
        key) was refused half-way, the first stored, the client told 503. Alone, any write fits: with
        ``max_inflight`` 1, a node with its key was refused for ever. No events: nothing to store (an empty group
        reaching the writer alone killed it: a reviewer's reproduction). ``clock``: the timestamp the high-water mark
        takes from this call instead of its events' latest: its clock's own, when an event is stamped after a
        register's version further ahead (``Coordinator._stamp``), which must not drag the clock of a restart."""
        if not events:
            return []
        if self.inflight and self.inflight + len(events) > self.max_inflight:
            self.overloaded += 1
            raise Overloaded(self.max_inflight)
        waiters = [_Waiter(event, (event.wall, event.counter) if clock is None else clock) for event in events]
        self._queue.append(waiters)
        self._wake.set()
        self.inflight += len(waiters)  # until the writer is done with them, whether or not the caller still waits
        for waiter in waiters:
            await waiter.done.wait()
        for waiter in waiters:
            if waiter.error is not None:
                raise waiter.error
        return [waiter.seq for waiter in waiters]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The group-commit writer. Must run for ``append`` to complete."""
        task_status.started()
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while self._queue:
                # whole calls only: a call's events cut across two commits were half stored when the second
                # failed (a full disk), the caller told it failed (a reviewer's reproduction)
                # a copy: the first call's own list, extended by the others, made it return their sequence numbers
                group = list(self._queue.popleft())
                while self._queue and len(group) + len(self._queue[0]) <= MAX_GROUP:
                    group += self._queue.popleft()
                try:
                    with trio.CancelScope(shield=True):  # never abandon a commit half-way
                        latest = max(w.clock for w in group)
                        stamped = max((w.event.wall, w.event.counter) for w in group)
                        seqs = await self._db_call(self._insert, [w.event.raw for w in group], latest, stamped)
                except (sqlite3.Error, OSError) as exc:
                    self.inflight -= len(group)
                    for w in group:
                        w.error = exc
                        w.done.set()
                    continue
                self.pending += len(group)
                self.inflight -= len(group)
                self.commits += 1
                self._on_commit([(seq, w.event) for w, seq in zip(group, seqs, strict=True)])
                for w, seq in zip(group, seqs, strict=True):
                    w.seq = seq
                    w.done.set()
                self.appended.set()
                self.appended = trio.Event()

    def _insert(self, raws: list[bytes], latest: tuple[int, int], stamped: tuple[int, int]) -> list[int]:
        now = time.time_ns() // 1_000_000
        with self._db_tx():
            for table, stamp in (("clock", latest), ("stamps", stamped)):
                self._db.execute(f"INSERT INTO {table} VALUES (0, ?, ?) ON CONFLICT (k) DO UPDATE SET "
                                 "wall = excluded.wall, counter = excluded.counter "
                                 "WHERE (excluded.wall, excluded.counter) > (wall, counter)", stamp)
            return [int(self._db.execute("INSERT INTO outbox (raw, created_ms) VALUES (?, ?)", (r, now)).lastrowid
                        or 0) for r in raws]

    async def stamp_high_water(self) -> tuple[int, int] | None:
        """The latest timestamp of any event ever committed here; None when not recorded (an outbox that never
        committed one, or written before ``stamps`` existed)."""
        row = await self._db_call(lambda: self._db.execute("SELECT wall, counter FROM stamps WHERE k = 0").fetchone())
        return None if row is None else (int(row[0]), int(row[1]))

    async def high_water(self) -> tuple[int, int]:
        """The latest timestamp of any event ever committed here ((0, 0) for none); an outbox written before
        the ``clock`` table existed: the latest among the events it still holds."""
        def read() -> tuple[int, int]:
            row = self._db.execute("SELECT wall, counter FROM clock WHERE k = 0").fetchone()
            if row is not None:
                return int(row[0]), int(row[1])
            latest = (0, 0)
            for (raw,) in self._db.execute("SELECT raw FROM outbox"):
                with contextlib.suppress(EventDecodeError):
                    event = decode_event(bytes(raw))
                    latest = max(latest, (event.wall, event.counter))
            return latest

        return await self._db_call(read)

    async def mark_published(self, seqs: list[int], ref: BlobRef) -> None:
        def mark() -> int:
            now = time.time_ns() // 1_000_000
            with self._db_tx():
                cur = self._db.executemany(
                    "UPDATE outbox SET layer = ?, height = ?, commitment = ?, published_ms = ? "
                    "WHERE seq = ? AND layer IS NULL",
                    [(ref.layer, ref.height, ref.commitment, now, s) for s in seqs],
                )
            return cur.rowcount

        marked = await self._db_call(mark)  # not `pending -= await ...`: that would lose concurrent appends
        self.pending -= marked

    def _db_tx(self) -> _Tx:
        return _Tx(self._db)

    # ---- reading ---------------------------------------------------------------------------------

    async def unpublished(self, limit: int, max_bytes: int | None = None) -> list[tuple[int, bytes]]:
        """The oldest events not published yet: at most ``limit``, and no more bytes than ``max_bytes`` (the first
        event whatever its size). The publisher read 4,096 rows for each blob whatever their size, and posted one
        blob's worth: a backlog of large events (receipt batches) was read again for every blob (a reviewer's
        run: 378 MB read, 43 MB of heap, to post a 36 MB backlog)."""
        return await self._db_call(self._read_rows, "SELECT seq, raw FROM outbox WHERE layer IS NULL ORDER BY seq "
                                   "LIMIT ?", (limit,), max_bytes)

    async def since(self, seq: int, limit: int = -1, max_bytes: int | None = None) -> list[tuple[int, bytes]]:
        """The stored events with a sequence number above ``seq``, at most ``limit`` (-1: all) and no more bytes than
        ``max_bytes`` (the first event whatever its size) (restart replay: a page of 4,096 receipt batches was
        ~2 GB in memory at once)."""
        return await self._db_call(self._read_rows, "SELECT seq, raw FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
                                   (seq, limit), max_bytes)

    def _read_rows(self, sql: str, params: tuple[int, ...], max_bytes: int | None) -> list[tuple[int, bytes]]:
        """(seq, raw) rows of ``sql`` up to ``max_bytes`` (the first row whatever its size), stepped row by row: the
        rows past the budget stay unread."""
        rows: list[tuple[int, bytes]] = []
        size = 0
        for s, r in self._db.execute(sql, params):
            if rows and max_bytes is not None and size + len(r) > max_bytes:
                break
            rows.append((int(s), bytes(r)))
            size += len(r)
        return rows

    async def recently_landed(self, limit: int) -> list[Landed]:
        def read() -> list[Landed]:
            rows = self._db.execute(
                "SELECT seq, raw, layer, height, commitment FROM outbox WHERE layer IS NOT NULL "
                "ORDER BY seq DESC LIMIT ?", (limit,)
            ).fetchall()
            return [Landed(int(s), bytes(r), BlobRef(layer, int(h), bytes(c))) for s, r, layer, h, c in rows]

        return await self._db_call(read)

    async def last_seq(self) -> int:
        def read() -> int:
            row = self._db.execute("SELECT MAX(seq) FROM outbox").fetchone()
            return int(row[0] or 0)

        return await self._db_call(read)

    async def issued_seq(self) -> int:
        """The highest sequence number this outbox ever gave (pruned rows included; 0 for a new one)."""
        def read() -> int:
            row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
            return int(row[0]) if row else 0

        return await self._db_call(read)

    async def prune(self, upto_seq: int) -> int:
        """Forget published events at or below ``upto_seq`` (they are in a snapshot and on DA), ``PRUNE_CHUNK`` at
        a time, the outbox free for appends between chunks: one transaction for a backlog of a million events held
        every append for ~0.5 s. Returns how many were forgotten."""
        def delete() -> int:
            with self._db_tx():
                cur = self._db.execute("DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE seq <= ? AND "
                                       "layer IS NOT NULL ORDER BY seq LIMIT ?)", (upto_seq, PRUNE_CHUNK))
            return cur.rowcount

        pruned = 0
        while (deleted := await self._db_call(delete)) > 0:
            pruned += deleted
            if deleted < PRUNE_CHUNK:
                break
        return pruned


class _Tx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type:
            # (SQLite rolls a transaction back itself on some errors, a full disk among them: a ROLLBACK then failed,
            # "no transaction is active", and its error replaced the real one in the 503 and the logs: a review)
            if self._db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
            return
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error:  # SQLite may keep the transaction open after a failed COMMIT (IOERR, FULL, BUSY):
            if self._db.in_transaction:  # then every later BEGIN failed until a restart (a reviewer's finding)
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
            raise
