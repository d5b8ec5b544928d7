"""BlobStoreDA: the DA layer over ONE blob-store service (deploy/blobstore.py) — the emergency layer, and
each validator inside QuorumDA — plus the protocol pieces the server shares: the signed message, the
namespace size, the route prefix.

Every answer is checked before it is believed: a post must come back with sha256(data) and an Ed25519
signature over ``signed_message(namespace, sha256(data))`` by the expected key; a fetched blob must hash
to the commitment asked for; log items must hash to the hash they claim, in increasing positions.

The expected key is given (preferred) or pinned on first use: the first answer that names the store's key
(a post or /health) fixes it for the life of this object, and any later answer under another key fails.

Errors: connection refused / reset → DAUnavailable; no answer within ``timeout_s`` (a total deadline per
call, so a store that accepts TCP and never answers cannot stall a caller) → DATimeout; 404 for a blob →
BlobNotFound; the store refusing the blob itself (413/415/422) → BlobRejected; an answer that fails a
check → VerificationFailed. Refs: BlobRef(name, position in the store's log, sha256(data)).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import nacl.exceptions
import nacl.signing
import trio

from node.da.base import BlobNotFound, BlobRef, DAError, DATimeout, DAUnavailable, Page

PREFIX = "/quorum/v1"
DOMAIN = b"dsdn-quorum-v1"
NAMESPACE_LEN = 29
HASH_LEN = 32
KEY_LEN = 32
LOG_ID_LEN = 16  # a blob store log id (api/blobstore.py)
MAX_LOG_LIMIT = 1000
#: The largest answer read from a store: a log page is at most ~8 MiB of blobs plus one (the store's
#: LOG_PAGE_BYTES), in base64 inside JSON. A store (or proxy) sending more is misbehaving: it is not read on.
MAX_ANSWER_BYTES = 32 << 20
log = logging.getLogger("dsdn.blobstore_client")
MAX_LOG_WAIT_MS = 30_000  # the longest long poll of GET /log a store accepts
RESTART_QUIET_S = 60.0  # a store's log found restarted again within this long is a failed read (see read_after)
# Celestia v0 shape (version 0, 18 zero bytes, 10-byte id); the store accepts any 29 bytes.
DEFAULT_NAMESPACE = bytes(19) + b"dsdn-coord"


WRITE_DOMAIN = b"dsdn-blobstore-write-v1"
WRITER_HEADER, WRITER_SIGNATURE_HEADER = "X-Dsdn-Writer", "X-Dsdn-Writer-Signature"
BLOB_HASH_HEADER = "X-Dsdn-Blob-Hash"  # the sha256 the signature covers: the store checks it before the body


def write_message(namespace: bytes, blob_hash: bytes) -> bytes:
    """What a writer signs to be allowed to store a blob: ``b"dsdn-blobstore-write-v1" || namespace ||
    sha256(data)`` (a store with a writer list accepts only blobs signed by a listed key)."""
    return WRITE_DOMAIN + namespace + blob_hash


def signed_message(namespace: bytes, blob_hash: bytes) -> bytes:
    """What a store signs for a blob it has durably stored: ``b"dsdn-quorum-v1" || namespace (29 bytes) ||
    sha256(data) (32 bytes)`` — 75 bytes, fixed layout, so no two inputs give the same message."""
    if len(namespace) != NAMESPACE_LEN:
        raise ValueError(f"namespace must be {NAMESPACE_LEN} bytes, not {len(namespace)}")
    if len(blob_hash) != HASH_LEN:
        raise ValueError(f"blob hash must be {HASH_LEN} bytes, not {len(blob_hash)}")
    return DOMAIN + namespace + blob_hash


def verify_signature(public_key: bytes, namespace: bytes, blob_hash: bytes, signature: bytes) -> bool:
    try:
        nacl.signing.VerifyKey(public_key).verify(signed_message(namespace, blob_hash), signature)
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        return False
    return True


class VerificationFailed(DAError):
    """A store's answer did not check out: wrong hash, bad signature, or a key other than the expected one."""


class BlobRejected(DAError):
    """The store refused the blob itself (too large, malformed request): retrying will not help."""


@dataclass(frozen=True, slots=True)
class Receipt:
    """A verified answer to a post: the store committed the blob at ``position`` and signed it."""

    position: int
    blob_hash: bytes
    signature: bytes
    public_key: bytes


class BlobStoreDA:
    def __init__(self, url: str, *, name: str = "emergency", namespace: bytes = DEFAULT_NAMESPACE,
                 public_key: bytes | None = None, timeout_s: float = 10.0,
                 signer: nacl.signing.SigningKey | None = None) -> None:
        """``signer``: our identity key, to sign each write for a store that only accepts listed writers."""
        self.signer = signer
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"blob store URL must be http(s)://host[:port], not {url!r}")
        if len(namespace) != NAMESPACE_LEN:
            raise ValueError(f"namespace must be {NAMESPACE_LEN} bytes")
        if public_key is not None and len(public_key) != KEY_LEN:
            raise ValueError(f"public key must be {KEY_LEN} bytes")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.name = name
        self.url = url.rstrip("/")
        self.namespace = namespace
        self.timeout_s = timeout_s
        self._base = self.url if self.url.endswith(PREFIX) else self.url + PREFIX
        self._key = public_key
        # trust_env=False: a blob store or validator is a private endpoint; HTTP(S)_PROXY must not reroute it
        # identity: the store never compresses, and httpx inflated each gzip chunk before the size check saw it (one
        # compressed chunk of a hostile store's answer grew a health check by 130 MiB: a reviewer's reproduction);
        # a compressed answer is refused unread (``_call``)
        self._http = httpx.AsyncClient(timeout=timeout_s, trust_env=False, headers={"Accept-Encoding": "identity"})
        self._restarted_at: float | None = None  # trio time we last read its log again from the start
        self._mark: tuple[int, bytes] | None = None  # the latest page's cursor and the hash of the blob there
        self._log_key: bytes | None = None  # the key the store's log answers named last (its log's identity)
        self._log_id: bytes | None = None  # the log id they named last (the same, for a store keeping its key)
        self._unverified = False  # a cursor resumed with no record of the log it counts in (see resume_log)

    @property
    def log_identity(self) -> dict[str, str] | None:
        """The log our reads follow, as its answers named it (key, log id: hex; "" for one not named), and the hash
        of the blob at the latest page's cursor ("at"; "" if none), None before any did. A snapshot keeps it beside
        the cursor, which counts positions in that log (``resume_log``)."""
        if self._log_key is None and self._log_id is None:
            return None
        return {"key": self._log_key.hex() if self._log_key else "",
                "log_id": self._log_id.hex() if self._log_id else "",
                "at": self._mark[1].hex() if self._mark is not None else ""}

    def resume_log(self, identity: Mapping[str, str] | None, cursor: int) -> None:
        """Go on reading at ``cursor`` of the log ``identity`` names (a restored snapshot's): the first read then
        compares the store's log with it. Without one (a snapshot written before they were kept) a cursor past 0
        is read again from the start: the store may have lost its database and taken new blobs past our cursor
        while this process was down, and this client knew nothing to compare with (the new log's first blobs were
        skipped: a reviewer's reproduction)."""
        identity = identity or {}
        self._log_key = bytes.fromhex(identity["key"]) if identity.get("key") else None
        self._log_id = bytes.fromhex(identity["log_id"]) if identity.get("log_id") else None
        self._mark = (cursor, bytes.fromhex(identity["at"])) if identity.get("at") else None
        self._unverified = cursor > 0 and self._log_key is None and self._log_id is None

    @property
    def public_key(self) -> bytes | None:
        """The key answers must be signed with: given, or pinned from the first answer (None before)."""
        return self._key

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> BlobStoreDA:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    # ---- DALayer -----------------------------------------------------------------------------------

    async def post(self, data: bytes) -> BlobRef:
        receipt = await self.store(data)
        return BlobRef(self.name, receipt.position, receipt.blob_hash)

    async def get(self, ref: BlobRef) -> bytes:
        return await self.fetch(ref.commitment)

    async def read_after(self, cursor: int, limit: int, wait_s: float = 0.0) -> Page:
        """One ``GET /log`` page; ``wait_s`` > 0 makes it a long poll (``wait_ms``), its deadline longer by it."""
        limit = max(1, min(limit, MAX_LOG_LIMIT))
        params = {"after": str(cursor), "limit": str(limit), "namespace": self.namespace.hex()}
        wait_ms = min(round(wait_s * 1000), MAX_LOG_WAIT_MS)
        if wait_ms > 0:
            params["wait_ms"] = str(wait_ms)
        body = await self._call("GET", "/log", "read", params=params, timeout_s=self.timeout_s + wait_ms / 1000)
        raw_items, page_cursor, at_head = body.get("items"), body.get("cursor"), body.get("at_head")
        if type(raw_items) is not list or not _is_int(page_cursor) or type(at_head) is not bool:
            raise self._malformed("log page")
        head = body.get("head")
        if head is not None and not _is_int(head):
            raise self._malformed("log head")
        log_key = _hex(body.get("public_key"), KEY_LEN)  # names the log (absent from an older store's answers)
        log_id = _hex(body.get("log_id"), LOG_ID_LEN)  # so does its log id (a store's database lost, its key kept)
        known = self._log_key or self._key
        # and the blob at our cursor is still the one we read there (a store restored from a backup keeps both
        # names, and its positions past the backup's head name other blobs: read on, they were skipped)
        moved = (self._mark is not None and self._mark[0] == cursor and "after_hash" in body
                 and _hex(body["after_hash"], HASH_LEN) != self._mark[1])
        another_log = ((log_key is not None and known is not None and log_key != known)
                       or (log_id is not None and self._log_id is not None and log_id != self._log_id)
                       or self._unverified or moved)
        if ((_is_int(head) and head < cursor) or another_log) and cursor > 0:
            # The store's log is another one: it restarted (lost its disk, a new store at the same URL). Its
            # positions start again at 1, and reading on from our cursor skipped every blob it takes now, whether
            # its head is still behind our cursor or already past it (reviewers' reproductions). Read it again
            # from the start (applying events is idempotent); a second time within RESTART_QUIET_S is a failed
            # read (backoff), so a store that keeps saying so cannot make us spin.
            now = trio.current_time()
            if self._restarted_at is not None and now - self._restarted_at < RESTART_QUIET_S:
                raise DAError(f"{self.name}: the store's log changed under our cursor {cursor} again")
            why = ("no record of the log our cursor counts in (a snapshot of an earlier version)" if self._unverified
                   else f"the blob at our cursor {cursor} is another one (restored from a backup?)" if moved
                   else f"it names another log (key {log_key.hex()[:16]}…, log id {log_id.hex() if log_id else '-'})"
                   if another_log and log_key is not None else f"its head {head} is behind our cursor {cursor}")
            log.warning("%s: the store's log is another one (%s; the store was rebuilt?): reading it from the "
                        "start", self.name, why)
            # (the new log's names are recorded by that read once it worked: recorded before, a failed read left
            # the next one reading on from our old cursor in the new log: a reviewer's reproduction)
            page = await self.read_after(0, limit)  # no long poll: this call's deadline is spent in part
            self._restarted_at = now  # (only once that read worked: a failed one is retried as any read)
            return page
        if log_key is not None:
            self._log_key = log_key
        if log_id is not None:
            self._log_id = log_id
        self._unverified = False
        if _is_int(head) and page_cursor > max(head, cursor):
            raise self._malformed("log cursor (beyond the head)")
        items: list[tuple[BlobRef, bytes]] = []
        last = cursor
        for item in raw_items:
            position, blob_hash, data = self._blob_fields(item)
            if position <= last:
                raise VerificationFailed(f"{self.name}: log positions out of order ({position} after {last})")
            items.append((BlobRef(self.name, position, blob_hash), data))
            last = position
        if page_cursor < last:
            raise self._malformed("log cursor")
        cursor_hash = _hex(body.get("cursor_hash"), HASH_LEN)
        self._mark = None if cursor_hash is None else (page_cursor, cursor_hash)
        return Page(items, page_cursor, at_head, self.log_identity)

    async def head(self) -> int:
        return int((await self.health())["head"])

    # ---- the store's own calls ---------------------------------------------------------------------

    async def store(self, data: bytes, *, timeout_s: float | None = None) -> Receipt:
        """Post ``data``; return the verified receipt (position, hash, signature, key). ``timeout_s``
        overrides this store's call timeout (QuorumDA passes its signature timeout)."""
        data = bytes(data)
        headers = {"Content-Type": "application/octet-stream"}
        if self.signer is not None:
            blob_hash = hashlib.sha256(data).digest()
            message = write_message(self.namespace, blob_hash)
            headers[BLOB_HASH_HEADER] = blob_hash.hex()
            headers[WRITER_HEADER] = bytes(self.signer.verify_key).hex()
            headers[WRITER_SIGNATURE_HEADER] = self.signer.sign(message).signature.hex()
        body = await self._call("POST", "/blobs", "post", params={"namespace": self.namespace.hex()}, content=data,
                                headers=headers, timeout_s=timeout_s)
        position, blob_hash = body.get("position"), _hex(body.get("hash"), HASH_LEN)
        signature, key = _hex(body.get("signature"), 64), _hex(body.get("validator"), KEY_LEN)
        if not _is_int(position) or position < 1 or blob_hash is None or signature is None or key is None:
            raise self._malformed("post answer")
        expected_hash = hashlib.sha256(data).digest()
        if blob_hash != expected_hash:
            raise VerificationFailed(f"{self.name}: store answered hash {blob_hash.hex()}, the blob's is "
                                     f"{expected_hash.hex()}")
        if not verify_signature(key, self.namespace, expected_hash, signature):  # before pinning it on first use
            raise VerificationFailed(f"{self.name}: signature does not verify under key {key.hex()[:16]}…")
        key = self._check_key(key)
        return Receipt(position, expected_hash, signature, key)

    async def fetch(self, blob_hash: bytes) -> bytes:
        """The blob with this sha256, checked; BlobNotFound if this store does not have it."""
        body = await self._call("GET", f"/blobs/{blob_hash.hex()}", "get", params={"namespace": self.namespace.hex()})
        _, got_hash, data = self._blob_fields(body)
        if got_hash != blob_hash:
            raise VerificationFailed(f"{self.name}: asked for {blob_hash.hex()}, got {got_hash.hex()}")
        return data

    async def health(self) -> dict[str, Any]:
        body = await self._call("GET", "/health", "health")
        key = _hex(body.get("public_key"), KEY_LEN)
        if body.get("ok") is not True or not _is_int(body.get("head")) or key is None:
            raise self._malformed("health answer")
        if self._key is not None:  # compared with a key pinned from a signature, never pinned from a bare claim
            self._check_key(key)
        return body

    # ---- plumbing ----------------------------------------------------------------------------------

    def _check_key(self, key: bytes) -> bytes:
        if self._key is None:
            self._key = key  # trust on first use
        elif key != self._key:
            raise VerificationFailed(f"{self.name}: store signs with key {key.hex()[:16]}…, expected "
                                     f"{self._key.hex()[:16]}…")
        return self._key

    def _blob_fields(self, item: object) -> tuple[int, bytes, bytes]:
        """(position, hash, data) of one blob in an answer, with data checked against hash and namespace."""
        if not isinstance(item, dict):
            raise self._malformed("blob")
        position, blob_hash = item.get("position"), _hex(item.get("hash"), HASH_LEN)
        namespace, raw = _hex(item.get("namespace"), NAMESPACE_LEN), item.get("data")
        if not _is_int(position) or blob_hash is None or namespace is None or type(raw) is not str:
            raise self._malformed("blob")
        try:
            data = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise self._malformed("blob data") from None
        if hashlib.sha256(data).digest() != blob_hash:
            raise VerificationFailed(f"{self.name}: blob at position {position} does not hash to {blob_hash.hex()}")
        if namespace != self.namespace:
            raise VerificationFailed(f"{self.name}: blob at position {position} is in another namespace")
        return position, blob_hash, data

    def _malformed(self, what: str) -> DAUnavailable:
        return DAUnavailable(f"{self.name} ({self.url}): malformed {what}; is this a blob store?")

    async def _call(self, method: str, path: str, what: str, *, timeout_s: float | None = None,
                    **kwargs: Any) -> dict[str, Any]:
        timeout = self.timeout_s if timeout_s is None else timeout_s
        try:
            with trio.fail_after(timeout):  # a total deadline; httpx's own timeouts are per phase
                async with self._http.stream(method, self._base + path, timeout=timeout, **kwargs) as response:
                    if response.headers.get("content-encoding", "identity").strip().lower() != "identity":
                        raise DAUnavailable(f"{self.name} ({self.url}): {what} answered compressed "
                                            f"({response.headers['content-encoding'][:40]!r}), unasked; is this a "
                                            "blob store?")
                    content = bytearray()
                    async for chunk in response.aiter_bytes():  # identity: as sent (checked above)
                        content += chunk
                        if len(content) > MAX_ANSWER_BYTES:
                            raise DAUnavailable(f"{self.name} ({self.url}): {what} answered more than "
                                                f"{MAX_ANSWER_BYTES >> 20} MiB; is this a blob store?")
        except (trio.TooSlowError, httpx.TimeoutException):
            raise DATimeout(f"{self.name} ({self.url}): {what} got no answer within {timeout:.3g}s") from None
        except httpx.HTTPError as exc:
            raise DAUnavailable(f"{self.name} ({self.url}): {what} failed: {type(exc).__name__}: {exc}") from None
        try:
            body = json.loads(content)
        except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes
            body = None
        if not isinstance(body, dict):
            raise DAUnavailable(f"{self.name} ({self.url}): {what} answered {response.status_code} without a JSON "
                                "object; is this a blob store?")
        status, message = response.status_code, f"{body.get('error')}: {body.get('message')}"
        if status == 404 and body.get("error") == "blob_not_found":
            raise BlobNotFound(f"{self.name} ({self.url}): {message}")
        if status in (400, 413, 415, 422):
            raise BlobRejected(f"{self.name} ({self.url}): {what} rejected with {status} {message}")
        if status in (401, 403):  # this store does not take our writes: a layer we cannot use, not a bad blob
            raise DAUnavailable(f"{self.name} ({self.url}): {what} refused with {status} {message}")
        if status != 200:
            raise DAUnavailable(f"{self.name} ({self.url}): {what} answered {status} {message}")
        return body


MAX_POSITION = 2**63 - 1  # what SQLite and msgpack hold: a store answering more would crash whoever stores it


def _is_int(value: object) -> bool:
    """A position, cursor or head as a store may answer it: an int in 0 .. 2^63 - 1 (one beyond took a coordinator
    down with an OverflowError from SQLite or msgpack, outside every DA error path: a reviewer's reproduction)."""
    return type(value) is int and 0 <= value <= MAX_POSITION


def _hex(value: object, size: int) -> bytes | None:
    """``value`` decoded from hex if it is a string of exactly ``size`` bytes, else None."""
    if type(value) is not str or len(value) != 2 * size:
        return None
    try:
        return bytes.fromhex(value)
    except ValueError:
        return None
