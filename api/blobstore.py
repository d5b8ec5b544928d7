"""The blob store: an append-only, signed blob log over HTTP, backed by SQLite. The ``dsdn blobstore``
service (deploy/blobstore.py) serves it alone, as the emergency DA (EMERGENCY_DA_URL) or one QuorumDA
validator (QUORUM_VALIDATORS); a coordinator with QUORUM_VALIDATOR=true hosts the same routes in its own
app (``register_blobstore_routes``).

Routes (prefix /quorum/v1). Every error is JSON ``{"error": <code>, "message": <text>}``, never a 500 for bad
input; hashes, keys, signatures and namespaces are lowercase hex, blob data in answers is base64.

``POST /quorum/v1/blobs?namespace=<58 hex>`` with the raw blob as the body, ``Content-Type:
application/octet-stream`` → 200 ``{"position", "hash", "signature", "validator", "duplicate"}``.
    Raw bytes rather than base64-in-JSON so the body limit (default 2 MiB) is the blob limit: the
    coordinator's DA_BLOB_MAX_BYTES default (1,992,294) fits, which it would not after base64 (+33%).
    Idempotent by (namespace, sha256(data)): the same blob again returns its first position with
    ``"duplicate": true``. A store with a writer list takes only writes signed by a listed key: headers
    ``X-Dsdn-Writer`` (hex key) and ``X-Dsdn-Writer-Signature`` (hex Ed25519 over ``write_message``);
    401 without a valid signature, 403 for an unlisted writer. With ``X-Dsdn-Blob-Hash`` (hex sha256 of the body,
    what our client sends) the signature is checked before the body is read (422 if the body then does not hash
    to it); without it, the body is read first, and such reads may hold ``UNPROVEN_LIMIT_BYTES`` at once (503,
    Retry-After, past it): a listed key is public, and a client naming one with a junk signature otherwise held up
    to the body limit per connection for the body timeout (a reviewer's reproduction).
    Errors: 415 other content type, 422 missing/bad namespace or empty body,
    413 body over the limit, 503 storage failure.
``GET /quorum/v1/blobs/<hash>[?namespace=<hex>]`` → 200 ``{"position", "hash", "namespace", "data", "signature",
    "validator"}`` (the earliest copy if the hash is in several namespaces and none is given);
    404 ``{"error": "blob_not_found"}``; 422 bad hash or namespace.
``GET /quorum/v1/log?after=<position>&limit=<1..1000>[&namespace=<hex>][&wait_ms=<0..30000>]`` (defaults after=0,
    limit=100, wait_ms=0) →
    200 ``{"items": [{"position", "hash", "namespace", "data"}, ...], "head", "cursor", "at_head", "public_key",
    "log_id"}`` (``log_id``, 32 hex, names the log: random, made with the store's database, so a store rebuilt at
    the same URL, or one that lost its database and kept its key, has another one): blobs in
    log order after ``after``, at most ``limit`` and about 8 MiB of data (always at least one). ``head`` is
    the newest position in the whole log; ``cursor`` is where to continue: the last item returned, or
    ``head`` when the page reached the end (so a follower of one namespace skips the others' blobs).
    ``after_hash`` and ``cursor_hash`` (64 hex, or null where no blob is) are the hashes of the blobs at ``after``
    and at ``cursor``: a follower checks that its cursor still names the blob it read there (a store restored from
    a backup keeps its key and log id, and gives the positions past the backup's head to other blobs: a follower
    read on from its cursor and skipped them, a reviewer's reproduction).
    ``wait_ms`` makes it a long poll: with nothing (of that namespace) after ``after``, the answer waits up to
    that long for a blob to be stored, so a follower learns of a new blob at once and an idle one asks once per
    wait instead of polling (not past the head: that log is another one, told at once); the store's shutdown
    answers waiting polls at once (an empty page).
``GET /quorum/v1/health`` → 200 ``{"ok": true, "head", "public_key", "log_id"}``.
Both reads of blobs answer 503 ``{"error": "busy"}`` with ``Retry-After: 1`` while more than 160 MiB of answers
are still being sent (clients slow to read them), or 64 MiB to the asking client's address, and 503
``storage_unavailable`` for a blob whose stored data no longer hashes to its hash (a damaged database: never
served, nor signed).

Positions start at 1 and grow by one per new blob, across namespaces. The signature is Ed25519 by the
store's key over ``signed_message(namespace, sha256(data))`` (node/da/blobstore_client.py), exactly::

    b"dsdn-quorum-v1" || namespace (29 bytes) || sha256(data) (32 bytes)       -- 75 bytes

It is only issued after the blob is committed (SQLite WAL, synchronous=FULL), so it means "stored durably".
Files: ``<data_dir>/blobs.sqlite3`` and the key ``<data_dir>/identity.key`` (node.identity.load_or_create).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import re
import sqlite3
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import nacl.exceptions
import nacl.signing
import trio
from quart import Blueprint, Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from api.asgi_fix import allowed_methods, quart_app
from node.da.blobstore_client import (
    BLOB_HASH_HEADER,
    MAX_LOG_LIMIT,
    MAX_LOG_WAIT_MS,
    NAMESPACE_LEN,
    PREFIX,
    WRITER_HEADER,
    WRITER_SIGNATURE_HEADER,
    signed_message,
    write_message,
)
from node.identity import load_or_create

log = logging.getLogger("dsdn.blobstore")
T = TypeVar("T")
DEFAULT_MAX_BODY = 2 * 1024 * 1024
#: The largest --max-body-bytes: a log page (LOG_PAGE_BYTES of blobs, plus one) in base64 inside JSON must stay
#: under what a follower reads of one answer (node.da.blobstore_client.MAX_ANSWER_BYTES), or one large blob would
#: make every follower's read of that page fail for ever
MAX_BODY_LIMIT = 12 * 1024 * 1024
DEFAULT_LOG_LIMIT = 100
LOG_PAGE_BYTES = 8 * 1024 * 1024
#: bytes of answers being sent (blobs, log pages) past which reads are refused (503, Retry-After) until they drain:
#: readers that never read their answer each held a page (~12 MiB) for as long as they kept the connection; one
#: client address may hold only part of it (a few such sockets shut every reader out, not only their own)
SENDING_LIMIT_BYTES = 160 * 1024 * 1024
UNPROVEN_LIMIT_BYTES = 32 * 1024 * 1024  # bodies being read before their writer's signature can be checked
# bytes a second a signed write's body must come at (after BODY_GRACE_S), else 408: below what a client's timeout asks
# of a 1.9 MiB blob (DA_TIMEOUT_MS, 30 s: ~66 KiB/s; 256 KiB/s refused writes over a 1 Mbit/s link: a regression review)
MIN_BODY_RATE = 60 * 1024
BODY_GRACE_S = 2.0
CLIENT_SENDING_LIMIT_BYTES = 64 * 1024 * 1024  # (a follower reads a page, ~11 MiB in base64, at a time; the
#                                               members of a local cluster all read from 127.0.0.1)
DB_FILE = "blobs.sqlite3"
JSONDict = dict[str, Any]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    namespace BLOB NOT NULL,
    hash BLOB NOT NULL,
    data BLOB NOT NULL,
    stored_ms INTEGER NOT NULL,
    UNIQUE (namespace, hash)
);
CREATE INDEX IF NOT EXISTS blobs_by_hash ON blobs (hash);
CREATE INDEX IF NOT EXISTS blobs_by_namespace ON blobs (namespace, position);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
INSERT OR IGNORE INTO meta (name, value) VALUES ('log_id', randomblob(16));
"""


@dataclass(frozen=True, slots=True)
class Stored:
    position: int
    blob_hash: bytes
    duplicate: bool


@dataclass(frozen=True, slots=True)
class Record:
    position: int
    namespace: bytes
    blob_hash: bytes
    data: bytes


@dataclass(frozen=True, slots=True)
class LogPage:
    items: list[Record]
    head: int
    cursor: int
    at_head: bool
    after_hash: bytes | None = None  # the hash of the blob at ``after`` (None: none there), and at ``cursor``: a
    cursor_hash: bytes | None = None  # follower checks its cursor still names the blob it read there


class BlobStore:
    """The SQLite blob log and the signing key. All SQLite work runs in ``trio.to_thread`` under one lock."""

    def __init__(self, data_dir: Path, *, max_body_bytes: int = DEFAULT_MAX_BODY,
                 writers: frozenset[bytes] | None = None) -> None:
        """``writers``: the Ed25519 keys whose signed writes are accepted (None: anyone may write)."""
        if not 1 <= max_body_bytes <= MAX_BODY_LIMIT:
            raise ValueError(f"max_body_bytes must be from 1 to {MAX_BODY_LIMIT}")
        self.max_body_bytes = max_body_bytes
        self.writers = writers
        self.key = load_or_create(data_dir)  # creates data_dir
        self._db = sqlite3.connect(str(data_dir / DB_FILE), check_same_thread=False, isolation_level=None,
                                   timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        # the log's identity, born with its database: a store whose database was lost (or replaced) while its key
        # was kept has positions starting at 1 again under the same key, and a follower read on from its old
        # cursor past the new log's first blobs (a reviewer's reproduction); it compares this instead
        self.log_id: bytes = self._db.execute("SELECT value FROM meta WHERE name = 'log_id'").fetchone()[0]
        self._lock = trio.Lock()
        self.appended = 0  # blobs stored since start: a long poll waits for this to move
        # namespace -> the position of the latest blob stored in it since start: a long poll on a namespace reads the
        # log again only once it moved past its cursor (each blob woke every poll, each read again under the one
        # lock the writes take: 2,000 idle polls on a namespace nobody writes held each write ~0.6 s, a reviewer's
        # measurement, and a few thousand more would time the quorum's signatures out)
        self.latest: dict[bytes, int] = {}
        self.sending = 0  # bytes of answers under /quorum/v1 read and not yet sent (count_answers)
        self.unproven = 0  # bytes of write bodies being read before their signature can be checked
        self.sending_to: dict[str, int] = {}  # the same by client address
        self._append_event = trio.Event()  # set (and replaced) at each new blob and at stop_waiting
        self.stopping = False

    @property
    def public_key(self) -> bytes:
        return bytes(self.key.verify_key)

    def sign(self, namespace: bytes, blob_hash: bytes) -> bytes:
        return self.key.sign(signed_message(namespace, blob_hash)).signature

    def close(self) -> None:
        self._db.close()

    async def _db_call(self, fn: Callable[..., T], *args: object) -> T:
        async with self._lock:
            return await trio.to_thread.run_sync(fn, *args)

    async def put(self, namespace: bytes, data: bytes) -> Stored:
        """Store ``data`` durably (or find it already stored) and return its position."""
        blob_hash = hashlib.sha256(data).digest()

        def insert() -> Stored:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT position, data FROM blobs WHERE namespace = ? AND hash = ?",
                                       (namespace, blob_hash)).fetchone()
                if row is None:  # look first: a conflicting INSERT would still use up a position
                    cur = self._db.execute("INSERT INTO blobs (namespace, hash, data, stored_ms) VALUES (?, ?, ?, ?)",
                                           (namespace, blob_hash, data, time.time_ns() // 1_000_000))
                elif hashlib.sha256(bytes(row[1])).digest() != blob_hash:
                    # the copy held is damaged (served as 503, never signed): repaired from the bytes just sent,
                    # which hash right. Not checked, a re-post was signed "stored" for a blob this validator could
                    # not serve, and its log stayed 503 for good (a reviewer's reproduction)
                    self._db.execute("UPDATE blobs SET data = ? WHERE position = ?", (data, row[0]))
                    log.warning("repaired the damaged copy of blob %s at position %d from a new post of it",
                                blob_hash.hex(), row[0])
                self._db.execute("COMMIT")
            except BaseException:  # (rolled back by SQLite itself already on a full disk: its error is the one)
                if self._db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                raise
            if row is not None:
                return Stored(int(row[0]), blob_hash, True)
            return Stored(int(cur.lastrowid or 0), blob_hash, False)

        stored = await self._db_call(insert)
        if not stored.duplicate:
            self.latest[namespace] = max(self.latest.get(namespace, 0), stored.position)
            self._wake()
        return stored

    def _wake(self) -> None:
        self.appended += 1
        self._append_event.set()
        self._append_event = trio.Event()

    async def wait_appended(self, seen: int) -> None:
        """Return once a blob was stored after ``appended`` was ``seen`` (at once if one was, or when stopping)."""
        while self.appended == seen and not self.stopping:
            await self._append_event.wait()

    def stop_waiting(self) -> None:
        """The server is shutting down: answer every long poll now and take no new wait."""
        self.stopping = True
        self._wake()

    async def by_hash(self, blob_hash: bytes, namespace: bytes | None = None) -> Record | None:
        def read() -> Record | None:
            if namespace is None:
                row = self._db.execute("SELECT position, namespace, hash, data FROM blobs WHERE hash = ? "
                                       "ORDER BY position LIMIT 1", (blob_hash,)).fetchone()
            else:
                row = self._db.execute("SELECT position, namespace, hash, data FROM blobs WHERE hash = ? "
                                       "AND namespace = ?", (blob_hash, namespace)).fetchone()
            return None if row is None else _checked(row)

        return await self._db_call(read)

    async def log(self, after: int, limit: int, namespace: bytes | None = None) -> LogPage:
        def read() -> LogPage:
            self._db.execute("BEGIN")  # one snapshot for the items and the head
            try:
                if namespace is None:
                    cur = self._db.execute("SELECT position, namespace, hash, data FROM blobs WHERE position > ? "
                                           "ORDER BY position LIMIT ?", (after, limit))
                else:
                    cur = self._db.execute("SELECT position, namespace, hash, data FROM blobs WHERE namespace = ? "
                                           "AND position > ? ORDER BY position LIMIT ?", (namespace, after, limit))
                items: list[Record] = []
                size, full = 0, False
                for row in cur:
                    if items and size + len(row[3]) > LOG_PAGE_BYTES:
                        full = True
                        break
                    items.append(_checked(row))
                    size += len(row[3])
                head = int(self._db.execute("SELECT MAX(position) FROM blobs").fetchone()[0] or 0)
                cursor = items[-1].position if full or len(items) == limit else max(after, head)
                after_hash, cursor_hash = (self._hash_at(after), self._hash_at(cursor))
            finally:
                self._db.execute("COMMIT")
            return LogPage(items, head, cursor, cursor >= head, after_hash, cursor_hash)

        return await self._db_call(read)

    def _hash_at(self, position: int) -> bytes | None:
        row = self._db.execute("SELECT hash FROM blobs WHERE position = ?", (position,)).fetchone()
        return None if row is None else bytes(row[0])

    async def head(self) -> int:
        def read() -> int:
            return int(self._db.execute("SELECT MAX(position) FROM blobs").fetchone()[0] or 0)

        return await self._db_call(read)


# ---- HTTP ------------------------------------------------------------------------------------------------


class Reject(Exception):
    """A request the store refuses; becomes a JSON error answer."""

    def __init__(self, status: int, error: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.error, self.message, self.headers = status, error, message, headers or {}


class DamagedBlob(sqlite3.DatabaseError):
    """A stored blob whose bytes no longer hash to its hash (bit rot, a hand edit): never served, nor signed."""


def _hex_or_none(value: bytes | None) -> str | None:
    return None if value is None else value.hex()


def _checked(row: tuple[Any, ...]) -> Record:
    """The record of a row (position, namespace, hash, data), its data checked against its hash: served as it
    was, a damaged row went out with a valid signature over the hash (a reviewer's reproduction)."""
    record = Record(int(row[0]), bytes(row[1]), bytes(row[2]), bytes(row[3]))
    if hashlib.sha256(record.data).digest() != record.blob_hash:
        raise DamagedBlob(f"the blob at position {record.position} does not match its hash "
                          f"{record.blob_hash.hex()}: the database is damaged")
    return record


_HELD: ContextVar[tuple[str, list[int]] | None] = ContextVar("blobstore_answer_bytes", default=None)


def count_answers(asgi_app: Any, store: BlobStore) -> Any:
    """``store.sending``: the bytes of /quorum/v1 answers read and not yet sent (``hold``), until their request ends
    (a client that does not read holds its send: hypercorn sends each answer whole)."""
    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith(PREFIX + "/"):
            await asgi_app(scope, receive, send)
            return
        client, held = str((scope.get("client") or ("",))[0]), [0]
        token = _HELD.set((client, held))
        try:
            await asgi_app(scope, receive, send)
        finally:
            _HELD.reset(token)
            if held[0]:
                store.sending -= held[0]
                left = store.sending_to.pop(client) - held[0]
                if left:
                    store.sending_to[client] = left

    return wrapped


def hold(store: BlobStore, records: list[Record]) -> None:
    """Count an answer of these blobs in ``store.sending`` until its request ends, or refuse it (503, Retry-After)
    past ``SENDING_LIMIT_BYTES`` (readers that never read their answer each held a page, ~12 MiB, for as long as
    they kept the connection: 40 of them grew a store by 480 MB; a reviewer's reproduction)."""
    context = _HELD.get()
    if context is None:
        return
    client, held = context
    if store.sending > SENDING_LIMIT_BYTES or store.sending_to.get(client, 0) > CLIENT_SENDING_LIMIT_BYTES:
        raise Reject(503, "busy", f"{store.sending_to.get(client, 0)} bytes of answers to this client and "
                     f"{store.sending} in all are still being sent (clients slow to read them): try again shortly",
                     {"Retry-After": "1"})
    size = sum(len(r.data) for r in records) * 4 // 3  # (base64)
    if not size:  # (an empty page, a long poll's: no entry for its client, which nothing would remove)
        return
    held[0] += size
    store.sending += size
    store.sending_to[client] = store.sending_to.get(client, 0) + size


def _json(value: JSONDict, status: int = 200) -> Response:
    return Response(json.dumps(value, separators=(",", ":")), status, {"Content-Type": "application/json"})


def _hex_arg(raw: str | None, size: int, field: str) -> bytes:
    if raw is None or not re.fullmatch(f"[0-9a-fA-F]{{{2 * size}}}", raw):
        raise Reject(422, "invalid_request", f"{field} must be {2 * size} hexadecimal characters ({size} bytes)")
    return bytes.fromhex(raw)


def _arg(name: str) -> str | None:
    """The query argument ``name``; given more than once it is refused (only the first value was read, so
    ``?limit=1&limit=zz`` answered 200: the coordinator-hosted routes answered 422)."""
    values = request.args.getlist(name)
    if len(values) > 1:
        raise Reject(422, "invalid_request", f"{name}: one value (the parameter is given more than once)")
    return values[0] if values else None


def _namespace_arg() -> bytes | None:
    """The optional ``namespace`` query argument."""
    raw = _arg("namespace")
    return None if raw is None else _hex_arg(raw, NAMESPACE_LEN, "namespace")


def _int_arg(name: str, default: int, lo: int, hi: int) -> int:
    raw = _arg(name)
    if raw is None:
        return default
    if not re.fullmatch(r"[0-9]{1,19}", raw) or not lo <= int(raw) <= hi:
        raise Reject(422, "invalid_request", f"{name} must be an integer from {lo} to {hi}")
    return int(raw)


def _listed_writer(writers: frozenset[bytes], namespace: bytes) -> tuple[bytes, bytes, bytes | None]:
    """The writer key and signature the request's headers name, and the blob hash it declares (None: not declared):
    401 without them or with a signature that does not cover the declared hash, 403 if the writer is not listed.
    Checked before the body is read (read first, a client with no writer headers at all had up to the body limit
    held per connection for the body timeout: 40 stalled uploads held 490 MiB, a reviewer's reproduction)."""
    key = _hex_header(WRITER_HEADER, 32)
    signature = _hex_header(WRITER_SIGNATURE_HEADER, 64)
    if key not in writers:
        raise Reject(403, "forbidden", f"writer {key.hex()} is not allowed to write to this store")
    declared = request.headers.get(BLOB_HASH_HEADER)
    if declared is None:
        return key, signature, None
    blob_hash = _hex_header(BLOB_HASH_HEADER, 32)
    _check_signature(key, signature, namespace, blob_hash)
    return key, signature, blob_hash


def _check_signature(key: bytes, signature: bytes, namespace: bytes, blob_hash: bytes) -> None:
    """401 unless ``signature`` by the writer ``key`` covers the blob of that hash."""
    try:
        nacl.signing.VerifyKey(key).verify(write_message(namespace, blob_hash), signature)
    except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
        raise Reject(401, "unauthorized", "the writer signature does not verify") from None


def _stored_answer(store: BlobStore, namespace: bytes, position: int, blob_hash: bytes, duplicate: bool) -> Response:
    return _json({"position": position, "hash": blob_hash.hex(), "signature": store.sign(namespace, blob_hash).hex(),
                  "validator": store.public_key.hex(), "duplicate": duplicate})


async def _stored_copy(store: BlobStore, namespace: bytes, blob_hash: bytes) -> Record | None:
    """The intact copy held of the blob a signed write declares (None: none, or a damaged one, which the write's
    body repairs): its body need not be read."""
    try:
        return await store.by_hash(blob_hash, namespace)
    except DamagedBlob:
        return None


async def _declared_body(store: BlobStore) -> bytes:
    """The body of a signed write that declared its hash, read at ``MIN_BODY_RATE`` at least (after a grace of
    ``BODY_GRACE_S``), else 408. The signature covers the hash only, so one header set, seen once (every validator
    gets it with each write), could be replayed with any body: stalled uploads held memory without a bound, the
    budget of unproven bodies bypassed (a reviewer's reproduction: 40 uploads of 2 MiB, 82 MiB held). Now holding
    memory costs sending it, as any upload does; and one already stored is answered without reading any. (One at a
    time per hash let a replayer holding that slot refuse the writer's own post: a regression review.)"""
    size = request.content_length if request.content_length is not None else store.max_body_bytes
    with trio.move_on_after(BODY_GRACE_S + size / MIN_BODY_RATE):
        return await request.get_data(cache=False, as_text=False)
    raise Reject(408, "request_timeout", f"the body did not come at {MIN_BODY_RATE >> 10} KiB/s")


async def _unproven_body(store: BlobStore) -> bytes:
    """The body of a write whose signature can be checked only once it is read: counted in ``store.unproven``
    while it is, refused (503, Retry-After) past ``UNPROVEN_LIMIT_BYTES``."""
    size = request.content_length if request.content_length is not None else store.max_body_bytes
    if store.unproven + size > UNPROVEN_LIMIT_BYTES:
        raise Reject(503, "busy", f"more than {UNPROVEN_LIMIT_BYTES} bytes of writes are being read before their "
                                  f"signature can be checked: send {BLOB_HASH_HEADER}, or try again shortly",
                     {"Retry-After": "1"})
    store.unproven += size
    try:
        return await request.get_data(cache=False, as_text=False)
    finally:
        store.unproven -= size


def _hex_header(name: str, size: int) -> bytes:
    raw = request.headers.get(name, "")
    try:
        value = bytes.fromhex(raw)
    except ValueError:
        value = b""
    if len(value) != size:
        raise Reject(401, "unauthorized", f"this store only takes signed writes: send {WRITER_HEADER} and "
                                          f"{WRITER_SIGNATURE_HEADER}")
    return value


def _too_large(store: BlobStore) -> Response:
    return _json({"error": "payload_too_large",
                  "message": f"request body is larger than {store.max_body_bytes} bytes"}, 413)


def register_blobstore_routes(app: QuartTrio, store: BlobStore) -> None:
    """Add the blob-store routes (under /quorum/v1) and their JSON error handlers to ``app``."""
    bp = Blueprint("blobstore", __name__, url_prefix=PREFIX)
    app.asgi_app = count_answers(app.asgi_app, store)  # type: ignore[method-assign]

    @bp.errorhandler(Reject)
    async def rejected(e: Reject) -> Response:
        response = _json({"error": e.error, "message": e.message}, e.status)
        response.headers.update(e.headers)
        return response


    @bp.errorhandler(sqlite3.Error)
    async def storage_failed(e: sqlite3.Error) -> Response:
        log.error("blob store storage error on %s %s: %s", request.method, request.path, e)
        return _json({"error": "storage_unavailable", "message": f"the blob store cannot use its database: {e}"}, 503)

    @bp.errorhandler(HTTPException)
    async def http_error(e: HTTPException) -> Response:
        if e.code == 413:
            return _too_large(store)
        return _json({"error": e.name.lower().replace(" ", "_"), "message": e.description or e.name}, e.code or 500)

    @bp.post("/blobs")
    async def post_blob() -> Response:
        if request.mimetype != "application/octet-stream":
            raise Reject(415, "unsupported_media_type",
                         "send the blob as the raw body with Content-Type: application/octet-stream")
        namespace = _hex_arg(_arg("namespace"), NAMESPACE_LEN, "namespace")
        if request.content_length is not None and request.content_length > store.max_body_bytes:
            return _too_large(store)
        writer = _listed_writer(store.writers, namespace) if store.writers is not None else None
        if writer is not None and writer[2] is None:
            data = await _unproven_body(store)
        elif writer is not None and writer[2] is not None:
            known = await _stored_copy(store, namespace, writer[2])
            if known is not None:
                return _stored_answer(store, namespace, known.position, known.blob_hash, True)
            data = await _declared_body(store)
        else:
            data = await request.get_data(cache=False, as_text=False)
        if len(data) > store.max_body_bytes:
            return _too_large(store)
        if not data:
            raise Reject(422, "invalid_request", "the blob is empty")
        if writer is not None:
            key, signature, declared = writer
            if declared is None:
                _check_signature(key, signature, namespace, hashlib.sha256(data).digest())
            elif hashlib.sha256(data).digest() != declared:
                raise Reject(422, "invalid_request", f"the body does not hash to its {BLOB_HASH_HEADER}")
        stored = await store.put(namespace, data)
        return _stored_answer(store, namespace, stored.position, stored.blob_hash, stored.duplicate)

    @bp.get("/blobs/<blob_hash>")
    async def get_blob(blob_hash: str) -> Response:
        wanted = _hex_arg(blob_hash, 32, "hash")
        record = await store.by_hash(wanted, _namespace_arg())
        if record is None:
            raise Reject(404, "blob_not_found", f"no blob with hash {wanted.hex()}")
        hold(store, [record])
        return _json({"position": record.position, "hash": record.blob_hash.hex(), "namespace": record.namespace.hex(),
                      "data": base64.b64encode(record.data).decode(),
                      "signature": store.sign(record.namespace, record.blob_hash).hex(),
                      "validator": store.public_key.hex()})

    @bp.get("/log")
    async def get_log() -> Response:
        after = _int_arg("after", 0, 0, 2**63 - 1)
        limit = _int_arg("limit", DEFAULT_LOG_LIMIT, 1, MAX_LOG_LIMIT)
        wait_ms = _int_arg("wait_ms", 0, 0, MAX_LOG_WAIT_MS)
        namespace = _namespace_arg()
        seen = store.appended  # before the read: a blob stored during it ends the wait at once
        page = await store.log(after, limit, namespace)
        if wait_ms and not page.items:
            with trio.move_on_after(wait_ms / 1000):  # (not past the head: a replaced log, told at once)
                while not page.items and not store.stopping and after <= page.head:
                    await store.wait_appended(seen)
                    seen = store.appended
                    if namespace is not None and store.latest.get(namespace, 0) <= after and not store.stopping:
                        continue  # (nothing new in its namespace: not read again)
                    page = await store.log(after, limit, namespace)
        hold(store, page.items)
        items = [{"position": r.position, "hash": r.blob_hash.hex(), "namespace": r.namespace.hex(),
                  "data": base64.b64encode(r.data).decode()} for r in page.items]
        return _json({"items": items, "head": page.head, "cursor": page.cursor, "at_head": page.at_head,
                      "public_key": store.public_key.hex(), "log_id": store.log_id.hex(),
                      "after_hash": _hex_or_none(page.after_hash), "cursor_hash": _hex_or_none(page.cursor_hash)})

    @bp.get("/health")
    async def health() -> Response:
        return _json({"ok": True, "head": await store.head(), "public_key": store.public_key.hex(),
                      "log_id": store.log_id.hex()})

    app.register_blueprint(bp)


def create_blobstore_app(store: BlobStore) -> QuartTrio:
    """A stand-alone app serving only the blob store, with JSON errors for every path."""
    app = quart_app("dsdn-blobstore")
    app.config["MAX_CONTENT_LENGTH"] = store.max_body_bytes
    app.config["BODY_TIMEOUT"] = 30

    @app.errorhandler(HTTPException)
    async def http_error(e: HTTPException) -> Response:
        if e.code == 413:
            return _too_large(store)
        names = {404: "not_found", 405: "method_not_allowed", 400: "bad_request"}
        message = f"no route for {request.method} {request.path}" if e.code == 404 else (e.description or e.name)
        response = _json({"error": names.get(e.code or 500, e.name.lower().replace(" ", "_")), "message": message},
                         e.code or 500)
        if e.code == 405:
            response.headers["Allow"] = allowed_methods(getattr(e, "valid_methods", None) or ())
        return response

    @app.errorhandler(Exception)
    async def internal(e: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _json({"error": "internal", "message": f"internal error ({type(e).__name__}); see the blob store log"},
                     500)

    register_blobstore_routes(app, store)
    return app
