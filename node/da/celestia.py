"""Celestia DA over celestia-node's JSON-RPC API (HTTP POST of JSON-RPC 2.0 envelopes to one URL).

Methods used: ``blob.Submit``, ``blob.Get``, ``blob.GetAll``, ``header.NetworkHead``,
``header.GetByHeight``, ``header.WaitForHeight``. Binary fields (namespace, data, commitment) are
base64; header heights are decimal strings. The share commitment is computed locally
(node.da.commitment) before posting and re-checked on every blob read back, so a node can never hand
us data that does not match the reference we hold: ``get`` raises CommitmentMismatch, while
``read_after``/``blobs_at`` skip (and count in ``skipped_blobs``) a blob of our — public — namespace that
they cannot verify (share version other than 0, mismatched commitment) instead of failing its height.
Anything httpx raises becomes a DAError (transport failures DAUnavailable/DATimeout after the retries).

``post`` submits one blob; ``post_many`` several in one ``blob.Submit`` call (one transaction: one inclusion
height for all; their total bounded by ``max_submit_bytes``), which reconciliation uses, and ``included``
checks that the node returns such blobs byte for byte with one ``blob.GetAll`` per height.

Only celestia-node's ``blob: not found`` (``blob.ErrBlobNotFound``) means "no such blob" (BlobNotFound), and for
``blob.GetAll`` "no blob of ours at this height". Every other error is an error, in particular go-header's
``header: not found`` (a pruned node that no longer has the height, or one that does not have it yet): a
reader must not take it for an empty height and move its cursor past it.

A pruned node keeps a height's header longer than its data (celestia-node: data for ``StorageWindow``, 7 days and an
hour; headers for two weeks), and its ``blob.GetAll`` answers ``null`` for a height whose data it dropped, as for a
height with no blob of ours: a follower took the history the node pruned for empty heights, moved its cursor past
it and reported ready without its events (a reviewer's reading of celestia-node's source). So an empty answer for
a height older than ``storage_window_s`` (``DA_STORAGE_WINDOW_S``; its header's time tells) is not trusted: the read
fails there, saying why, and the cursor stays (an archival node keeps every height's data: 0 turns the check off).
One header is asked per page of heights at most, and none once a height younger than the window was seen.

Every attempt is bounded by ``timeout_s`` (a peer that accepts TCP and never answers times out).
Transport failures (refused/reset connections, timeouts, HTTP 5xx without a JSON-RPC error body) are
retried ``retry_count`` times with exponential backoff and jitter; JSON-RPC errors never are. A ``blob.Submit`` is
retried only when it never reached the node (its request headers were not sent, or an HTTP 503: not taken): each
one is a transaction, paid, and one whose answer was lost may have been included anyway (retried after a timeout or
a 502, one post landed three times: a reviewer's reproduction). Readers tolerate a blob that appears twice (a write
that went on to a fallback is reconciled). ``probe(timeout_s)`` is the health check: one attempt of
``header.NetworkHead`` within its own deadline, never retried.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import itertools
import json
import logging
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import httpx
import trio

from node.da.base import BlobNotFound, BlobRef, DAError, DATimeout, DAUnavailable, Page
from node.da.commitment import blob_commitment
from node.da.namespace import validate_namespace

log = logging.getLogger("dsdn.da.celestia")

DEFAULT_MAX_BLOB_BYTES = 1_992_294
#: Longest single backoff sleep (unless retry_delay itself is longer).
MAX_BACKOFF_S = 30.0
#: Heights fetched concurrently by ``read_after``.
READ_CONCURRENCY = 8
#: celestia-node's StorageWindow: a pruned node drops a height's data 7 days and an hour after it
DEFAULT_STORAGE_WINDOW_S = 7 * 86400
HEADER_CHECK_MARGIN_S = 0.5  # a storage-window check ends this long before the read's deadline
LONG_POLLS_AGAIN_S = 60.0  # long polls refused: tried again after this long (one error turned them off for good)
#: The largest answer read (decoded): all of our namespace's blobs at one height, in base64 inside JSON, from a block
#: of up to 48 MiB of them (Celestia's blocks are 8 MiB today). An answer is streamed and refused past it: read whole,
#: a hostile node's gzip of 0.9 MB inflating to 200 MiB took a coordinator from 34 to 639 MiB.
MAX_ANSWER_BYTES = 64 << 20
READ_BACK_TRIES = 3  # reads of a blob just submitted before it counts as not included (see CelestiaDA.post)
#: JSON-RPC 2.0 protocol-level error codes (parse error, invalid request, method not found, invalid params).
_PROTOCOL_ERRORS = frozenset({-32700, -32600, -32601, -32602})
#: celestia-node's blob.ErrBlobNotFound: the one answer that means "no such blob" / "no blob at this height".
BLOB_NOT_FOUND = "blob: not found"


class DAUnauthorized(DAError):
    """The node rejected our credentials (HTTP 401/403 or a permission error): fix DA_AUTH_TOKEN."""


class BlobTooLarge(DAError):
    """The blob exceeds the size limit (ours, checked before any I/O, or the node's)."""


class InvalidBlob(DAError):
    """The blob cannot be posted at all (for example it is empty)."""


class CommitmentMismatch(DAError):
    """The node returned data whose share commitment is not the one asked for / announced."""


class DARPCError(DAError):
    """Any other JSON-RPC error, or a response that is not valid JSON-RPC."""

    def __init__(self, code: int | None, message: str, method: str = "") -> None:
        self.code, self.message, self.method = code, message, method
        where = f"{method}: " if method else ""
        super().__init__(f"{where}JSON-RPC error {code}: {message}" if code is not None else f"{where}{message}")


class _Retryable(Exception):
    """Internal: one attempt failed in a way worth retrying; ``sent``: the node may have got the request (all but a
    connection never made), so a call that must not happen twice (``blob.Submit``: paid) is not retried."""

    def __init__(self, message: str, timeout: bool = False, sent: bool = True) -> None:
        super().__init__(message)
        self.timeout, self.sent = timeout, sent


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def b64decode_strict(value: Any, what: str) -> bytes:
    """celestia-node's base64 fields, strictly (ValueError naming ``what`` otherwise); the devnet uses it too."""
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} is not valid base64") from None


def unb64(value: Any, what: str) -> bytes:
    try:
        return b64decode_strict(value, what)
    except ValueError as exc:
        raise DARPCError(None, str(exc)) from None


def lagging(exc: DAError) -> bool:
    """An answer of a node whose headers are behind the height asked (celestia-node's header service: "syncing in
    progress" past its local head + 1; the devnet, and older nodes: "from the future")."""
    low = str(exc).lower()
    return "syncing in progress" in low or "from the future" in low


def map_rpc_error(code: Any, message: str, method: str) -> DAError:
    """A JSON-RPC error object as the most specific DAError."""
    low = message.lower()
    if "blob data must be" in low:  # celestia-node refusing a blob's size while decoding it: -32700, a parse error
        return BlobTooLarge(f"{method}: {message}")
    if type(code) is int and code in _PROTOCOL_ERRORS:  # e.g. -32601 "method 'x' not found" is not a missing blob
        return DARPCError(code, message, method)
    if BLOB_NOT_FOUND in low:  # not any "not found": "header: not found" is a pruned (or missing) height
        return BlobNotFound(f"{method}: {message}")
    if "signature verification failed" not in low and any(  # (that one is the chain's: account, sequence)
            s in low for s in ("missing permission", "unauthorized", "permission denied", "invalid token", "jwt",
                               "authorization")):
        return DAUnauthorized(f"{method}: {message}")
    if "too large" in low or "too big" in low or ("exceeds" in low and "size" in low):
        return BlobTooLarge(f"{method}: {message}")
    return DARPCError(code if type(code) is int else None, message, method)


MAX_HEIGHT = 2**63 - 1  # what SQLite and msgpack hold (a lying node's larger height crashed the publisher)


def header_time(header: Any) -> float:
    """``result.header.time`` of an ExtendedHeader (RFC 3339, nanoseconds) as unix seconds."""
    inner = header.get("header") if isinstance(header, dict) else None
    raw = inner.get("time") if isinstance(inner, dict) else None  # (a null header raised AttributeError: a crash)
    if not isinstance(raw, str):
        raise DARPCError(None, "header has no header.time")
    match = _RFC3339.fullmatch(raw.strip())
    if match is None:
        raise DARPCError(None, f"header.time is {raw[:64]!r}, not an RFC 3339 time")
    base, fraction, zone = match.groups()
    try:
        when = datetime.datetime.fromisoformat(base + (zone if zone not in ("Z", "z") else "+00:00"))
    except ValueError:
        raise DARPCError(None, f"header.time is {raw[:64]!r}, not an RFC 3339 time") from None
    return when.timestamp() + (float("0" + fraction) if fraction else 0.0)


_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|z|[+-]\d\d:\d\d)")


def header_height(header: Any) -> int:
    """``result.header.height`` of an ExtendedHeader (a decimal string; a number is accepted too)."""
    try:
        raw = header["header"]["height"]
    except (TypeError, KeyError):
        raise DARPCError(None, "header has no header.height") from None
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        raise DARPCError(None, f"header.height is {raw!r}, not a decimal string")
    try:
        height = int(raw)
    except ValueError:
        raise DARPCError(None, f"header.height is {raw!r}, not a decimal string") from None
    if not 0 <= height <= MAX_HEIGHT:
        raise DARPCError(None, f"header.height is out of range: {raw!r}")
    return height


@dataclass
class _SharedRead:
    """One ``blob.GetAll`` that several callers wait for (``CelestiaDA.included``)."""

    done: trio.Event = field(default_factory=trio.Event)
    blobs: dict[str, list[str]] | None = None
    error: DAError | None = None


class CelestiaDA:
    """A DALayer on a celestia-node (or the local devnet, deploy/devnet.py) JSON-RPC endpoint."""

    def __init__(self, url: str, namespace: bytes, auth_token: str | None = None, *, timeout_s: float = 30.0,
                 retry_count: int = 3, retry_delay_s: float = 1.0, gas_price: float = -1.0,
                 max_blob_bytes: int = DEFAULT_MAX_BLOB_BYTES, max_submit_bytes: int | None = None,
                 name: str = "primary", storage_window_s: float = DEFAULT_STORAGE_WINDOW_S) -> None:
        """``max_blob_bytes``: the largest blob posted (larger ones are refused before any I/O); ``max_submit_bytes``
        (default: the same): the most bytes of several blobs one ``post_many`` carries; ``storage_window_s``: see
        the module docstring (0: the node keeps every height's data)."""
        validate_namespace(namespace)
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if retry_count < 0 or retry_delay_s < 0:
            raise ValueError("retry_count and retry_delay_s must be >= 0")
        self.name = name
        self.url = url
        self.namespace = bytes(namespace)
        self.auth_token = auth_token
        self.timeout_s = float(timeout_s)
        self.retry_count = int(retry_count)
        self.retry_delay_s = float(retry_delay_s)
        self.gas_price = float(gas_price)
        self.max_blob_bytes = int(max_blob_bytes)
        self._max_submit_bytes = int(max_submit_bytes if max_submit_bytes is not None else max_blob_bytes)
        self.retries = 0  # cumulative retried attempts (read by the metrics)
        self.long_polls = True  # off for a while once the node refuses header.WaitForHeight (see read_after)
        self._long_polls_again_at = 0.0
        self._long_polls_refusal = ""  # the last refusal logged
        self.storage_window_s = float(storage_window_s)
        self._young_from: tuple[int, float] | None = None  # a height and its header time, younger than the window
        self.skipped_blobs = 0  # blobs in our namespace read_after/blobs_at could not verify and skipped
        self.rng = random.Random()
        self._ns_b64 = b64(self.namespace)
        self._ids = itertools.count(1)
        self._client: httpx.AsyncClient | None = None
        self._client_run: object | None = None
        self._shared_reads: dict[int, _SharedRead] = {}  # blob.GetAll in flight for ``included``, by height

    @classmethod
    def from_config(cls, cfg: Any, name: str = "primary") -> CelestiaDA:
        """``DA_BLOB_MAX_BYTES`` bounds what the publisher packs in a blob and reconciliation in one transaction;
        a blob of one event larger than that (a receipt batch of ~560 KB under a cap of 100 KB) is still posted, up
        to the protocol's limit: refused here before any I/O, it was refused for ever, and every later event stayed
        in the outbox with it (a reviewer's reproduction). The node's own limit, if lower, refuses it as too large:
        then it goes to the fallbacks (``DARouter.post(past_size_refusals=True)``)."""
        if not cfg.da_rpc_url or cfg.da_namespace is None:
            raise ValueError("CelestiaDA needs DA_RPC_URL and DA_NAMESPACE")
        return cls(cfg.da_rpc_url, cfg.da_namespace, cfg.da_auth_token, timeout_s=cfg.da_timeout_ms / 1000,
                   retry_count=cfg.da_retry_count, retry_delay_s=cfg.da_retry_delay_ms / 1000,
                   max_blob_bytes=DEFAULT_MAX_BLOB_BYTES, max_submit_bytes=cfg.blob_max_bytes,
                   gas_price=cfg.da_gas_price, name=name, storage_window_s=cfg.da_storage_window_s)

    # ---- HTTP client lifecycle ------------------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        """The client, created lazily inside the running trio loop (and again if the loop changed)."""
        run = trio.lowlevel.current_root_task()
        if self._client is None or self._client_run is not run:
            headers = {"Content-Type": "application/json", "Accept": "application/json"}
            if self.auth_token:
                headers["Authorization"] = f"Bearer {self.auth_token}"
            # trust_env=False: a DA node is a local/private endpoint; HTTP(S)_PROXY must not reroute it.
            self._client = httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(self.timeout_s),
                                             trust_env=False)
            self._client_run = run
        return self._client

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with trio.CancelScope(shield=True):
                await client.aclose()

    async def __aenter__(self) -> CelestiaDA:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    # ---- JSON-RPC ---------------------------------------------------------------------------------

    async def _attempt(self, method: str, params: list[Any], timeout_s: float | None = None,
                       wait_s: float = 0.0) -> Any:
        """One JSON-RPC call within ``timeout_s`` (at most the layer's timeout), longer by ``wait_s`` for a call
        that waits by design (``header.WaitForHeight``)."""
        request_id = next(self._ids)
        body = json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params},
                          separators=(",", ":"))
        deadline = (self.timeout_s if timeout_s is None else min(timeout_s, self.timeout_s)) + wait_s
        sent = False  # whether the request may have reached the node: its headers went out (httpcore's trace)

        async def trace(event: str, info: dict[str, Any]) -> None:
            nonlocal sent
            sent = sent or event.endswith("send_request_headers.started")

        try:
            with trio.fail_after(deadline):
                async with self._http().stream("POST", self.url, content=body, timeout=deadline,
                                               extensions={"trace": trace}) as response:
                    status = response.status_code
                    content = bytearray()
                    async for chunk in response.aiter_bytes():  # decoded (a gzip answer counts inflated)
                        content += chunk
                        if len(content) > MAX_ANSWER_BYTES:
                            raise DARPCError(None, f"answer larger than {MAX_ANSWER_BYTES >> 20} MiB", method)
        except trio.TooSlowError:  # (a connection never made times out here too: it is not sent)
            raise _Retryable(f"{method}: no answer within {deadline:.3g}s", timeout=True, sent=sent) from None
        except httpx.TimeoutException as exc:
            raise _Retryable(f"{method}: timed out ({type(exc).__name__})", timeout=True, sent=sent) from None
        except httpx.TransportError as exc:
            raise _Retryable(f"{method}: {type(exc).__name__}: {exc or 'transport failure'}", sent=sent) from None
        except httpx.HTTPError as exc:  # anything else httpx raises (bad encoding, redirects...): not retried
            raise DAUnavailable(f"{self.name}: {method}: {type(exc).__name__}: {exc or 'HTTP failure'}") from None

        if status in (401, 403):
            raise DAUnauthorized(f"{method}: HTTP {status} from the DA node (check DA_AUTH_TOKEN)")
        try:
            envelope = json.loads(content)
        except (ValueError, RecursionError):  # not JSON (undecodable, or nested past the parser)
            envelope = None
        error = envelope.get("error") if isinstance(envelope, dict) else None
        if isinstance(error, dict):
            message = error.get("message")
            raise map_rpc_error(error.get("code"), message if isinstance(message, str) else repr(error), method)
        if status == 413:
            raise BlobTooLarge(f"{method}: HTTP 413, the request is too large for the DA node")
        if status >= 500:  # (a 503 says it is not serving: the request was not taken; a 502 or 504 may come after)
            raise _Retryable(f"{method}: HTTP {status} from the DA node", sent=status != 503)
        if envelope is None:  # e.g. a proxy's HTML page: not a JSON-RPC endpoint (now)
            raise DAUnavailable(f"{self.name}: {method}: HTTP {status} answer is not JSON; is {self.url} a "
                                "celestia-node RPC endpoint?")
        if status != 200:
            raise DARPCError(status, f"unexpected HTTP status {status}", method)
        if not isinstance(envelope, dict) or "result" not in envelope:
            raise DARPCError(None, "response is not a JSON-RPC 2.0 result", method)
        if envelope.get("id") != request_id:
            raise DARPCError(None, f"response id {envelope.get('id')!r} does not match request id {request_id}",
                             method)
        return envelope["result"]

    def _backoff(self, retry: int) -> float:
        base = self.retry_delay_s * 2 ** (retry - 1)
        base = min(base, max(MAX_BACKOFF_S, self.retry_delay_s))
        return base * (0.75 + 0.5 * self.rng.random())

    async def call(self, method: str, params: Sequence[Any], *, once: bool = False) -> Any:
        """One JSON-RPC call with retries on transport failures; the ``result`` or a DAError. ``once``: a call the
        node may have got is not made again (``blob.Submit``: each is a transaction, paid; retried after a timeout
        or a proxy's 502, one post landed three times: a reviewer's reproduction); one never sent (no connection)
        is."""
        attempt = 0
        while True:
            try:
                return await self._attempt(method, list(params))
            except _Retryable as exc:
                if attempt >= self.retry_count or (once and exc.sent):
                    tail = (f" (after {attempt} retries)" if attempt else "") + (
                        " (not sent again: the node may have taken it)" if once and exc.sent else "")
                    cls = DATimeout if exc.timeout else DAUnavailable
                    raise cls(f"{self.name}: {exc}{tail}") from None
                attempt += 1
                self.retries += 1
                delay = self._backoff(attempt)
                log.warning("%s: %s; retry %d/%d in %.2fs", self.name, exc, attempt, self.retry_count, delay)
                await trio.sleep(delay)

    # ---- DALayer --------------------------------------------------------------------------------

    def op_timeout_s(self, what: str, call_s: float) -> float:
        """The time an operation may take (``MeteredLayer``), given ``call_s`` for one call with its retries: a
        post is a Submit and up to READ_BACK_TRIES reads back, ``retry_delay_s`` apart; a read stops starting
        rounds of heights as its deadline nears (``read_after``), so one call's time is its own."""
        if what == "post":
            return call_s * (1 + READ_BACK_TRIES) + self.retry_delay_s * (READ_BACK_TRIES - 1)
        return call_s

    async def post(self, data: bytes) -> BlobRef:
        """Submit one blob, then read it back at the height the node answered (``blob.Get``, which checks the
        commitment): a node that acknowledges a blob it never included would otherwise have the writer mark its
        events published and prune them from its outbox, lost to DA for good (a reviewer's finding). Not found
        there (after ``READ_BACK_TRIES`` reads, ``retry_delay_s`` apart: a load-balanced node may lag a block) is
        this layer's failure: the write goes on to the next layer."""
        ref = (await self.post_many([data]))[0]
        last = ""
        for attempt in range(READ_BACK_TRIES):
            try:
                await self.get(ref)
                return ref
            except (BlobNotFound, DARPCError) as exc:  # not there, or not yet (a lagging node: "from the future")
                last = str(exc)
                if attempt + 1 < READ_BACK_TRIES:
                    await self._catch_up(exc, ref.height)
        raise DARPCError(None, f"the node acknowledged the blob at height {ref.height} but does not have it "
                         f"there ({last})", "blob.Submit")

    def _checked(self, data: bytes) -> bytes:
        data = bytes(data)
        if not data:
            raise InvalidBlob(f"{self.name}: a blob can not be empty")
        if len(data) > self.max_blob_bytes:
            raise BlobTooLarge(f"{self.name}: blob is {len(data)} bytes; the limit is {self.max_blob_bytes}")
        return data

    async def post_many(self, blobs: Sequence[bytes]) -> list[BlobRef]:
        """Several blobs in one ``blob.Submit`` call (one pay-for-blobs transaction: all of them are included at
        the same height, or none is). Each blob is checked before any I/O (InvalidBlob, BlobTooLarge), and so is
        their total: at most ``max_submit_bytes`` together, the most one transaction
        carries; a caller with more splits them into several calls. The refs, in the order given."""
        datas = [self._checked(d) for d in blobs]
        if not datas:
            raise InvalidBlob(f"{self.name}: blob.Submit needs at least one blob")
        total = sum(len(d) for d in datas)
        if len(datas) > 1 and total > self.max_submit_bytes:
            raise BlobTooLarge(f"{self.name}: {len(datas)} blobs of {total} bytes together; one blob.Submit "
                               f"carries at most {self.max_submit_bytes}")
        commitments = [blob_commitment(self.namespace, d) for d in datas]
        payload = [{"namespace": self._ns_b64, "data": b64(d), "share_version": 0, "commitment": b64(c)}
                   for d, c in zip(datas, commitments, strict=True)]
        # celestia-node TxConfig: gas_price is only used when is_gas_price_set is true; otherwise the node
        # estimates it (our gas_price < 0 means exactly that).
        options: dict[str, Any] = {}
        if self.gas_price >= 0:
            options = {"gas_price": self.gas_price, "is_gas_price_set": True}
        result = await self.call("blob.Submit", [payload, options], once=True)
        if isinstance(result, bool) or not isinstance(result, int) or not 0 < result <= MAX_HEIGHT:
            raise DARPCError(None, f"blob.Submit returned {result!r}, not an inclusion height", "blob.Submit")
        return [BlobRef(self.name, result, c) for c in commitments]

    @property
    def max_submit_bytes(self) -> int:
        """The most blob bytes one ``post_many`` call of several blobs takes (one transaction's worth)."""
        return self._max_submit_bytes

    def _decode_blob(self, obj: Any, height: int) -> tuple[BlobRef, bytes, int] | None:
        """(ref, data, index) for a blob JSON of our namespace; None for another namespace, and None (counted
        in ``skipped_blobs``) for a blob of ours we cannot verify: share version other than 0, or a commitment
        that does not match its data. The namespace is public: one such blob must not stop a reader."""
        if not isinstance(obj, dict):
            raise DARPCError(None, f"blob at height {height} is not an object")
        if unb64(obj.get("namespace"), "blob.namespace") != self.namespace:
            return None
        version = obj.get("share_version", 0)
        if version != 0 or isinstance(version, bool):
            return self._skip(height, f"share version {version!r}")
        data = unb64(obj.get("data"), "blob.data")
        claimed = unb64(obj.get("commitment"), "blob.commitment")
        try:
            actual = blob_commitment(self.namespace, data, 0)
        except ValueError as exc:  # e.g. empty data
            return self._skip(height, str(exc))
        if claimed != actual:
            return self._skip(height, f"commitment {actual.hex()}, the node says {claimed.hex()}")
        index = obj.get("index")
        return BlobRef(self.name, height, actual), data, index if isinstance(index, int) else -1

    def _skip(self, height: int, why: str) -> None:
        self.skipped_blobs += 1
        log.warning("%s: skipping a blob at height %d in our namespace: %s", self.name, height, why)
        return None

    async def get(self, ref: BlobRef) -> bytes:
        result = await self.call("blob.Get", [ref.height, self._ns_b64, b64(ref.commitment)])
        if result is None:
            raise BlobNotFound(f"{self.name}: no blob at height {ref.height} with commitment {ref.commitment.hex()}")
        if not isinstance(result, dict):
            raise DARPCError(None, "blob.Get returned a non-object", "blob.Get")
        data = unb64(result.get("data"), "blob.data")
        try:
            actual = blob_commitment(self.namespace, data, 0)
        except ValueError as exc:
            raise CommitmentMismatch(f"{self.name}: blob at height {ref.height}: {exc}") from None
        if actual != ref.commitment:
            raise CommitmentMismatch(f"{self.name}: blob at height {ref.height}: asked for commitment "
                                     f"{ref.commitment.hex()}, got data with commitment {actual.hex()}")
        return data

    async def _catch_up(self, exc: DAError, height: int) -> None:
        """Before reading ``height`` again after ``exc``: ``retry_delay_s``, and a node whose headers lag the height
        it included a blob at ("syncing in progress", "from the future": its header store is behind the chain by a
        block or more) is waited for too (``header.WaitForHeight``, up to the layer's timeout, leaving one call's
        time before the caller's deadline). A lag of two blocks outlasted the read-back's tries: the write went to a
        fallback, and reconciliation posted the blob again, paid twice (a reviewer's reading of celestia-node's
        header service). (A wait answered at once, by a caught-up node behind the same balancer, is no delay: the
        tries must still be ``retry_delay_s`` apart; a regression review.)"""
        started = trio.current_time()
        room = trio.current_effective_deadline() - started - self.timeout_s
        if lagging(exc) and room > 0:
            await self._wait_for_height(height, min(self.timeout_s, room), may_stop_long_polls=False)
        await trio.sleep_until(started + self.retry_delay_s)

    async def included(self, refs: Sequence[BlobRef], datas: Sequence[bytes]) -> list[bool]:
        """Whether the node returns each blob (a ref we hold, with the data we posted) byte for byte at its
        height: one ``blob.GetAll`` per height, shared by the callers that ask for the same height at the same
        time (several calls of ``post_many`` often land in one block). The node's claimed commitment only picks
        the candidates; a blob counts as there only if the node returns exactly our bytes (compared in their
        base64 form: a node that encodes them otherwise only makes us post them again), whose commitment we
        computed ourselves."""
        found = {height: await self._namespace_blobs_caught_up(height)
                 for height in sorted({ref.height for ref in refs})}
        return [b64(data) in found[ref.height].get(b64(ref.commitment), ())
                for ref, data in zip(refs, datas, strict=True)]

    async def _namespace_blobs_caught_up(self, height: int) -> dict[str, list[str]]:
        """``_namespace_blobs``, once more after the node caught up with ``height`` if it lagged behind it (still
        lagging: its error, which reconciliation's read-back tries again, and then holds the blobs back rather than
        post them again, each post paid)."""
        try:
            return await self._namespace_blobs(height)
        except DARPCError as exc:
            if not lagging(exc):
                raise
            await self._catch_up(exc, height)
        return await self._namespace_blobs(height)

    async def _namespace_blobs(self, height: int) -> dict[str, list[str]]:
        """Our namespace's share-version-0 blobs at ``height`` as {claimed commitment: [data]}, both base64 as
        the node sent them; one ``blob.GetAll`` for all the callers asking for ``height`` at the same time."""
        shared = self._shared_reads.get(height)
        if shared is not None:
            await shared.done.wait()
        else:
            shared = self._shared_reads[height] = _SharedRead()
            try:
                try:
                    result = await self.call("blob.GetAll", [height, [self._ns_b64]])
                except BlobNotFound:  # celestia-node < 0.15: an empty height
                    result = None
                if result is not None and not isinstance(result, list):
                    raise DARPCError(None, "blob.GetAll returned neither a list nor null", "blob.GetAll")
                blobs: dict[str, list[str]] = {}
                for obj in result or []:
                    if (isinstance(obj, dict) and obj.get("namespace") == self._ns_b64
                            and obj.get("share_version", 0) == 0 and isinstance(obj.get("commitment"), str)
                            and isinstance(obj.get("data"), str)):
                        blobs.setdefault(obj["commitment"], []).append(obj["data"])
                shared.blobs = blobs
            except DAError as exc:
                shared.error = exc
            finally:
                del self._shared_reads[height]
                shared.done.set()
        if shared.blobs is None:
            raise shared.error or DAUnavailable(f"{self.name}: blob.GetAll at {height} was abandoned")
        return shared.blobs

    async def blobs_at(self, height: int) -> list[tuple[BlobRef, bytes]]:
        """Every blob of our namespace at ``height``, in index order (empty if none)."""
        return (await self._blobs_at(height))[0]

    async def _blobs_at(self, height: int) -> tuple[list[tuple[BlobRef, bytes]], bool]:
        """``blobs_at``, and whether the node answered with any blob at all (skipped ones included: it holds that
        height's data, so an empty result is no sign of pruning)."""
        try:
            result = await self.call("blob.GetAll", [height, [self._ns_b64]])
        except BlobNotFound:  # celestia-node < 0.15 reports an empty height as "blob: not found" (only that)
            return [], False
        if result is None:
            return [], False
        if not isinstance(result, list):
            raise DARPCError(None, "blob.GetAll returned neither a list nor null", "blob.GetAll")
        found = [b for b in (self._decode_blob(obj, height) for obj in result) if b is not None]
        found.sort(key=lambda b: b[2])  # stable: blobs without an index keep the node's order
        return [(ref, data) for ref, data, _ in found], bool(result)

    async def _fetch_into(self, height: int, results: dict[int, list[tuple[BlobRef, bytes]]],
                          errors: dict[int, DAError], answered: set[int]) -> None:
        try:
            results[height], held = await self._blobs_at(height)
        except DAError as exc:  # kept per height, so the caller can return the heights before it
            errors[height] = exc
        else:
            if held:
                answered.add(height)

    async def read_after(self, cursor: int, limit: int, wait_s: float = 0.0) -> Page:
        """Whole heights after ``cursor``, up to the network head (``header.NetworkHead``). A long poll
        (``wait_s`` > 0, asked by a consumer at the head) first waits for the next height with
        ``header.WaitForHeight(cursor + 1)`` (it answers at once if that height exists), at most ``wait_s``; then it
        reads as a plain read does, so its page ends at the head it reports. A wait that gets no answer, or fails
        on the way (the plain read retries), ends in that plain read too: a gateway that holds WaitForHeight slows
        the reads down but never stops them; one that refuses the method (an answered error) turns long polls off
        for this layer for LONG_POLLS_AGAIN_S (logged once, and again if the refusal changes)."""
        if wait_s > 0 and not self.long_polls and trio.current_time() >= self._long_polls_again_at:
            self.long_polls = True  # (tried again now and then: one error turned them off for good)
        if wait_s > 0 and self.long_polls:
            await self._wait_for_height(cursor + 1, wait_s)
        head = await self.head()
        if cursor >= head:
            return Page([], cursor, True)
        last = min(head, cursor + max(1, limit))
        items: list[tuple[BlobRef, bytes]] = []
        height = cursor
        deadline = trio.current_effective_deadline()  # the caller's (MeteredLayer: one call's time, retries too)
        round_s = 0.0
        while height < last and len(items) < limit:
            # the heights read so far, rather than a timeout that threw them away: a node answering each call in a
            # quarter of the time limit never let a catching-up reader past its cursor (a reviewer's reproduction)
            if height > cursor and trio.current_time() + 2 * round_s > deadline:
                break
            round_started = trio.current_time()
            batch = list(range(height + 1, min(last, height + READ_CONCURRENCY) + 1))
            results: dict[int, list[tuple[BlobRef, bytes]]] = {}
            errors: dict[int, DAError] = {}
            answered: set[int] = set()  # heights the node gave blobs for, none of them ours to keep: not pruned
            async with trio.open_nursery() as nursery:
                for h in batch:
                    nursery.start_soon(self._fetch_into, h, results, errors, answered)
            # (a height whose only blobs were skipped, a share version 1 blob in our public namespace, say, was an
            # empty answer: past the storage window, "maybe pruned", and the read stopped there for good; a
            # reviewer's reproduction)
            first_empty = next((h for h in batch if h in errors or not (results[h] or h in answered)), None)
            if first_empty is not None and first_empty not in errors and not self._trusts_empty(first_empty):
                trusted = False
                # (before the read's own deadline: reached, that cancels the whole read, and the heights read so
                # far were lost with it; a reviewer's reproduction)
                with trio.move_on_at(deadline - HEADER_CHECK_MARGIN_S):
                    trusted = await self._check_kept(first_empty, errors)
                if not trusted and first_empty not in errors:
                    errors[first_empty] = DATimeout(f"{self.name}: no header for height {first_empty} in time (its "
                                                    f"age tells whether its empty answer can be trusted)")
            for h in batch:  # whole heights, in order; stop at the first failed one
                if h in errors:
                    if height == cursor:
                        raise errors[h]
                    return Page(items, height, False)
                items.extend(results[h])
                height = h
                if len(items) >= limit:
                    break
            round_s = trio.current_time() - round_started
        return Page(items, height, height >= head)

    def _trusts_empty(self, height: int) -> bool:
        """An empty answer for ``height`` is trusted without asking its header (see the module docstring): a height at
        or after one whose header is younger than the window still is (it is no older). Not for ever: a reader that
        fell behind by more than the window, the process running all along, trusted what the node had pruned since."""
        if not self.storage_window_s:
            return True
        if self._young_from is None:
            return False
        young_height, young_time = self._young_from
        return height >= young_height and time.time() - young_time < self.storage_window_s

    async def _check_kept(self, height: int, errors: dict[int, DAError]) -> bool:
        """Whether the node's empty answer for ``height`` (the first empty one of a page) can be trusted: the height
        is within the storage window (and so is every later one); else False, with an error for it in ``errors``."""
        try:
            header = await self.call("header.GetByHeight", [height])
            made = header_time(header)
        except DAError as exc:
            errors[height] = exc
            return False
        age = time.time() - made
        if age < self.storage_window_s:
            self._young_from = (height, made)
            return True
        errors[height] = DARPCError(None,  # (an answer, not an outage: the status machine must not count it)
            f"{self.name}: height {height} is {age / 86400:.1f} days old, beyond the node's storage window "
            f"(DA_STORAGE_WINDOW_S={self.storage_window_s:g} s): its empty answer may be data the node pruned; read "
            f"the history from an archival node (and set DA_STORAGE_WINDOW_S=0), or restore a snapshot")
        return False

    async def head(self) -> int:
        return header_height(await self.call("header.NetworkHead", []))

    async def _wait_for_height(self, height: int, wait_s: float, *, may_stop_long_polls: bool = True) -> None:
        """Return once the node has ``height`` (``header.WaitForHeight``, one attempt), or after ``wait_s``, or
        at once when the attempt fails (see ``read_after``): a best-effort wait, where ``wait_for_height`` is
        the call that must succeed (retried, within the layer's timeout, the header returned). A refusal turns
        long polls off for a while (see ``read_after``), unless ``may_stop_long_polls`` is False (a post's wait)."""
        with trio.move_on_after(wait_s):
            try:
                await self._attempt("header.WaitForHeight", [height], wait_s=wait_s)
            except _Retryable:
                return
            except DAError as exc:  # refused (an RPC error, a gateway's 404 or non-JSON answer, no permission)
                if not may_stop_long_polls:
                    return
                self.long_polls = False
                self._long_polls_again_at = trio.current_time() + LONG_POLLS_AGAIN_S
                # (said once, and again only if the refusal changes: a node that never long-polls is no news)
                log.log(logging.WARNING if str(exc) != self._long_polls_refusal else logging.DEBUG,
                        "%s: header.WaitForHeight refused (%s): reading without long polls (tried again every %g s)",
                        self.name, exc, LONG_POLLS_AGAIN_S)
                self._long_polls_refusal = str(exc)

    async def probe(self, timeout_s: float) -> int:
        """The health check: ``header.NetworkHead`` in one attempt within ``timeout_s`` (no retries)."""
        try:
            return header_height(await self._attempt("header.NetworkHead", [], timeout_s))
        except _Retryable as exc:
            cls = DATimeout if exc.timeout else DAUnavailable
            raise cls(f"{self.name}: health check: {exc}") from None

    # ---- headers ----------------------------------------------------------------------------------

    async def header_by_height(self, height: int) -> dict[str, Any]:
        """The ExtendedHeader JSON at ``height`` (``header.GetByHeight``)."""
        result = await self.call("header.GetByHeight", [height])
        header_height(result)
        return dict(result)

    async def wait_for_height(self, height: int) -> dict[str, Any]:
        """Block until the node has ``height`` (``header.WaitForHeight``); its ExtendedHeader JSON."""
        result = await self.call("header.WaitForHeight", [height])
        header_height(result)
        return dict(result)
