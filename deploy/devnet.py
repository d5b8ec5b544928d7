"""A local Celestia devnet: the subset of celestia-node's JSON-RPC API the coordinator uses, on one
POST endpoint at ``/``, with a real chain of blocks kept in SQLite.

Methods: ``blob.Submit`` (waits until the blobs — one or several per call — are in a block and returns
that height, like celestia-node), ``blob.Get`` (error ``blob: not found``), ``blob.GetAll`` (list, or null when the
height has no blob in the namespaces), ``header.NetworkHead`` / ``header.LocalHead``,
``header.GetByHeight`` and ``header.WaitForHeight`` (ExtendedHeader-like JSON, ``header.height`` a
decimal string). A block is produced every block interval, empty or not; submitted blobs go into the
next block. Namespaces must be valid v0 blob namespaces; commitments are recomputed with Celestia's
real share commitment and a mismatch is rejected. A chain kept in a file is read on a connection of its own
(WAL), so reads never wait for the block being committed.

Auth: with a token, every route needs ``Authorization: Bearer <token>`` (HTTP 401 otherwise).
Fault injection for tests and demos: ``POST /admin/fault {"mode": "down"|"slow"|"error"|"ok",
"latency_ms": N}`` (down: JSON-RPC answers HTTP 503; slow: added latency; error: every call is a
JSON-RPC error), ``GET /admin/status``. Admin routes keep working in every mode. Pruning, as a pruned
celestia-node behaves: ``POST /admin/prune {"below": N}`` makes every height below N answer go-header's
``header: not found`` (``blob.Get``, ``blob.GetAll``, ``header.GetByHeight``); ``{"below": 0}`` undoes it
(the blocks are kept). ``{"below": N, "data": true}`` prunes the data only, as a node past its storage window and
within its header window does: the headers are served, ``blob.GetAll`` answers ``null`` and ``blob.Get``
``blob: not found``, as for a height without the blob.

Run: ``dsdn devnet --port 26658 --db .dsdn/devnet.sqlite`` (or ``python -m deploy.devnet``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import trio
from hypercorn.trio import serve
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from api.asgi_fix import allowed_methods, quart_app
from api.auth import bearer_matches
from node import process
from node.da.celestia import b64, b64decode_strict
from node.da.commitment import blob_commitment, share_count
from node.da.namespace import NamespaceError, validate_namespace
from node.process import hypercorn_config, lock_data, run_process, serve_until_signalled, setup_logging

log = logging.getLogger("dsdn.devnet")
T = TypeVar("T")

CHAIN_ID = "dsdn-devnet"
DEFAULT_PORT = 26658
MAX_BLOB_BYTES_LIMIT = 64 * 1024 * 1024  # the largest --max-blob-bytes (a real network's blobs are ~2 MB)
DEFAULT_MAX_BLOB_BYTES = 1_992_294
FAULT_MODES = ("ok", "down", "slow", "error")
DEFAULT_SLOW_MS = 1000
#: go-jsonrpc reports errors returned by a method with code 1.
SERVER_ERROR = 1
INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, PARSE_ERROR = -32600, -32601, -32602, -32700
# A Celestia block holds at most a 128 x 128 square of 512-byte shares, and a Submit is one transaction: the
# devnet put whatever arrived in one block, so concurrent writers made blocks our client cannot read back (a
# GetAll answer over its 64 MiB), and one Submit of 110,000 tiny blobs froze it for 1.8 s (a reviewer's runs).
MAX_BLOCK_BYTES = 128 * 128 * 512
MAX_MEMPOOL_BYTES = 4 * MAX_BLOCK_BYTES  # the Submits waiting for a block, at most (beyond: "mempool is full", as a
#                                         node's bounded mempool answers; 60 waiting Submits of 1.9 MB held 730 MB)
MAX_BLOBS_PER_SUBMIT = 1024
MAX_NAMESPACES = 16  # namespaces one blob.GetAll may name (each answered once: listing one again used to repeat it)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400: a float parses it as infinity, echoed back as Infinity
        raise ValueError(f"{text} is out of range")
    return value


def _strict_json(data: bytes) -> Any:
    """JSON as RFC 8259 has it: NaN and Infinity refused, and numbers too large for a float (a strict JSON-RPC client
    could not read them echoed: an id of 1e400 came back as Infinity, a reviewer's finding)."""
    return json.loads(data, parse_constant=_no_constant, parse_float=_finite)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (
    height INTEGER PRIMARY KEY,
    time_ns INTEGER NOT NULL,
    hash BLOB NOT NULL,
    prev_hash BLOB NOT NULL,
    data_hash BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS blobs (
    height INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    namespace BLOB NOT NULL,
    commitment BLOB NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (height, idx)
);
CREATE INDEX IF NOT EXISTS blobs_by_namespace ON blobs (height, namespace);
"""

Block = tuple[int, int, bytes, bytes, bytes]  # height, time_ns, hash, prev_hash, data_hash
BlobRow = tuple[int, int, bytes, bytes, bytes]  # height, idx, namespace, commitment, data


class RPCError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass
class _Pending:
    namespace: bytes
    data: bytes
    commitment: bytes
    done: trio.Event = field(default_factory=trio.Event)
    height: int = 0
    error: str | None = None


class ChainStore:
    """Blocks and blobs in SQLite. Blocking methods: call them through ``Devnet._db`` (writes) or
    ``Devnet._read`` (``head``, ``block``, ``blob_count``, ``blobs``). A file has a second connection for the
    reads (WAL: they see every committed block and never wait for the block being written); ``:memory:`` has
    one connection for both."""

    def __init__(self, path: str) -> None:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:  # (the error named no file: "cannot start: file is not a database")
            self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10.0)
            if path != ":memory:":
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(_SCHEMA)
            self.reader = self.db
            if path != ":memory:":
                self.reader = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10.0)
        except sqlite3.Error as exc:
            raise sqlite3.OperationalError(f"cannot use the chain file {path} (--db): {exc}") from None

    @property
    def separate_reader(self) -> bool:
        return self.reader is not self.db

    def close(self) -> None:
        if self.separate_reader:
            self.reader.close()
        self.db.close()

    def head(self) -> Block | None:
        return self.reader.execute("SELECT height, time_ns, hash, prev_hash, data_hash FROM blocks "
                                   "ORDER BY height DESC LIMIT 1").fetchone()

    def block(self, height: int) -> Block | None:
        return self.reader.execute("SELECT height, time_ns, hash, prev_hash, data_hash FROM blocks WHERE height = ?",
                                   (height,)).fetchone()

    def blob_count(self) -> int:
        return int(self.reader.execute("SELECT COUNT(*) FROM blobs").fetchone()[0])

    def add_block(self, block: Block, blobs: list[BlobRow]) -> None:
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("INSERT INTO blocks VALUES (?, ?, ?, ?, ?)", block)
            self.db.executemany("INSERT INTO blobs VALUES (?, ?, ?, ?, ?)", blobs)

    def blobs(self, height: int, namespace: bytes) -> list[BlobRow]:
        return self.reader.execute("SELECT height, idx, namespace, commitment, data FROM blobs "
                               "WHERE height = ? AND namespace = ? ORDER BY idx", (height, namespace)).fetchall()


def _rfc3339(time_ns: int) -> str:
    secs, nanos = divmod(time_ns, 1_000_000_000)
    return datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos:09d}Z"


def header_json(block: Block) -> dict[str, Any]:
    """An ExtendedHeader-shaped object (tendermint JSON: 64-bit integers as decimal strings)."""
    height, time_ns, block_hash, prev_hash, data_hash = block
    block_id = {"hash": block_hash.hex().upper(), "parts": {"total": 1, "hash": data_hash.hex().upper()}}
    return {
        "header": {
            "version": {"block": "11", "app": "1"},
            "chain_id": CHAIN_ID,
            "height": str(height),
            "time": _rfc3339(time_ns),
            "last_block_id": {"hash": prev_hash.hex().upper(), "parts": {"total": 0, "hash": ""}},
            "data_hash": data_hash.hex().upper(),
        },
        "commit": {"height": str(height), "round": 0, "block_id": block_id, "signatures": []},
        "validator_set": {"validators": [], "proposer": None},
        "dah": {"row_roots": [], "column_roots": []},
    }


def blob_json(row: BlobRow) -> dict[str, Any]:
    _, idx, namespace, commitment, data = row
    return {"namespace": b64(namespace), "data": b64(data), "share_version": 0, "commitment": b64(commitment),
            "index": idx}


def _unb64(value: Any, what: str) -> bytes:
    try:
        return b64decode_strict(value, what)
    except ValueError as exc:
        raise RPCError(INVALID_PARAMS, f"invalid params: {exc}") from None


def _height_param(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RPCError(INVALID_PARAMS, f"invalid params: height must be a positive integer, got {value!r}")
    return value


def _namespace_param(value: Any) -> bytes:
    ns = _unb64(value, "namespace")
    try:
        validate_namespace(ns)
    except NamespaceError as exc:
        raise RPCError(SERVER_ERROR, str(exc)) from None
    return ns


def _params(params: list[Any], low: int, high: int, method: str) -> list[Any]:
    if not low <= len(params) <= high:
        want = str(low) if low == high else f"{low} to {high}"
        raise RPCError(INVALID_PARAMS, f"invalid params: {method} takes {want} params, got {len(params)}")
    return params + [None] * (high - len(params))


class Devnet:
    def __init__(self, db_path: str = ":memory:", block_interval_s: float = 0.5, auth_token: str | None = None,
                 *, max_blob_bytes: int = DEFAULT_MAX_BLOB_BYTES, max_wait_s: float = 60.0) -> None:
        if block_interval_s <= 0:
            raise ValueError(f"block interval must be > 0, got {block_interval_s}")
        self.store = ChainStore(db_path)
        self.block_interval_s = block_interval_s
        self.auth_token = auth_token or None
        self.max_blob_bytes = max_blob_bytes
        self.max_wait_s = max_wait_s
        self.mode = "ok"
        self.latency_s = 0.0
        self.pruned_below = 0  # heights below this answer "header: not found", as on a pruned node
        self.data_pruned_below = 0  # heights below this have a header and no data (see the module docstring)
        self.blob_total = 0
        self.head: Block | None = None
        self._pending: list[list[_Pending]] = []  # the Submits waiting for a block, each whole, oldest first
        self._pending_bytes = 0  # their blobs' data
        self._new_block = trio.Event()
        self.stopping = False  # a graceful stop began (see stop_waiting)
        self._lock = trio.Lock()
        self._read_lock = trio.Lock()

    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        async with self._lock:
            return await trio.to_thread.run_sync(fn, *args)

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        """A read of the chain: on its own connection (and lock) when the store has one, so a read does not
        wait for the block being committed (with a short block interval, nearly always one)."""
        if not self.store.separate_reader:
            return await self._db(fn, *args)
        async with self._read_lock:
            return await trio.to_thread.run_sync(fn, *args)

    async def open(self) -> None:
        """Load the chain, or create block 1 (genesis) for a new one."""
        self.head = await self._read(self.store.head)
        self.blob_total = await self._read(self.store.blob_count)
        if self.head is None:
            await self.produce_block()
        log.info("devnet chain at height %d (%d blobs)", self.height, self.blob_total)

    def close(self) -> None:
        self.store.close()

    @property
    def height(self) -> int:
        return self.head[0] if self.head else 0

    # ---- blocks ---------------------------------------------------------------------------------

    async def produce_block(self) -> None:
        taken, size = 0, 0  # whole Submits, first come first served, while the square has room (one at least)
        while taken < len(self._pending):
            submit_size = sum(share_count(len(p.data)) for p in self._pending[taken]) * 512
            if taken and size + submit_size > MAX_BLOCK_BYTES:
                break
            taken, size = taken + 1, size + submit_size
        pending = [p for submit in self._pending[:taken] for p in submit]
        del self._pending[:taken]
        self._pending_bytes -= sum(len(p.data) for p in pending)
        pending.sort(key=lambda p: p.namespace)  # blobs sit in namespace order in a Celestia square
        height = self.height + 1
        prev_hash = self.head[2] if self.head else bytes(32)
        time_ns = max(time.time_ns(), (self.head[1] + 1) if self.head else 0)
        rows: list[BlobRow] = []
        share_index = 1  # share 0: the pay-for-blob transactions
        for p in pending:
            rows.append((height, share_index, p.namespace, p.commitment, p.data))
            share_index += share_count(len(p.data))
        data_hash = hashlib.sha256(b"".join(ns + c for _, _, ns, c, _ in rows)).digest()
        block_hash = hashlib.sha256(height.to_bytes(8, "big") + time_ns.to_bytes(8, "big") + prev_hash
                                    + data_hash).digest()
        block: Block = (height, time_ns, block_hash, prev_hash, data_hash)
        try:
            await self._db(self.store.add_block, block, rows)
        except sqlite3.Error as exc:
            log.error("cannot store block %d: %s", height, exc)
            for p in pending:
                p.error = f"devnet: cannot store block {height}: {exc}"
                p.done.set()
            return
        self.head = block
        self.blob_total += len(rows)
        for p in pending:
            p.height = height
            p.done.set()
        self._new_block.set()
        self._new_block = trio.Event()

    async def produce_blocks(self) -> None:
        """Produce a block every interval, forever (empty blocks too)."""
        deadline = trio.current_time()
        while True:
            deadline += self.block_interval_s
            now = trio.current_time()
            if deadline < now:  # fell behind (e.g. a slow disk): do not burst to catch up
                deadline = now
            await trio.sleep_until(deadline)
            await self.produce_block()

    async def wait_for_height(self, height: int, max_wait_s: float) -> bool:
        with trio.move_on_after(max_wait_s):
            while self.height < height:
                if self.stopping:
                    raise RPCError(SERVER_ERROR, "devnet: shutting down")
                await self._new_block.wait()
            return True
        return False

    def stop_waiting(self) -> None:
        """A graceful stop begins: the callers waiting for a height are answered now (the stop waited its whole
        timeout for them, then dropped them without an answer: a reviewer's reproduction)."""
        self.stopping = True
        self._new_block.set()
        self._new_block = trio.Event()

    # ---- JSON-RPC methods -------------------------------------------------------------------------

    async def _block_at(self, height: int) -> Block:
        if height > self.height:
            raise RPCError(SERVER_ERROR, f"header: given height is from the future: networkHeight: {self.height}, "
                                         f"requestedHeight: {height}")
        block = await self._read(self.store.block, height) if height >= self.pruned_below else None
        if block is None:  # go-header's ErrNotFound, as celestia-node wraps it
            raise RPCError(SERVER_ERROR, f"header: not found: height {height}")
        return block

    async def submit(self, params: list[Any]) -> int:
        blobs, options = _params(params, 1, 2, "blob.Submit")
        if not isinstance(blobs, list) or not blobs:
            raise RPCError(INVALID_PARAMS, "invalid params: blobs must be a non-empty list")
        if len(blobs) > MAX_BLOBS_PER_SUBMIT:
            raise RPCError(SERVER_ERROR, f"tx too large: {len(blobs)} blobs in one transaction; at most "
                                         f"{MAX_BLOBS_PER_SUBMIT}")
        if options is not None and not isinstance(options, dict | int | float):
            raise RPCError(INVALID_PARAMS, "invalid params: options must be a TxConfig object")
        entries: list[_Pending] = []
        total = 0
        for i, blob in enumerate(blobs):
            if not isinstance(blob, dict):
                raise RPCError(INVALID_PARAMS, f"invalid params: blob {i} is not an object")
            namespace = _namespace_param(blob.get("namespace"))
            data = _unb64(blob.get("data"), "data")
            if not data:
                raise RPCError(SERVER_ERROR, "blob: data can not be empty")
            if len(data) > self.max_blob_bytes:
                raise RPCError(SERVER_ERROR, f"blob too large: {len(data)} bytes exceeds the maximum blob size "
                                             f"of {self.max_blob_bytes} bytes")
            total += len(data)
            if total > self.max_blob_bytes:  # one transaction: what the client's max_submit_bytes assumes too
                raise RPCError(SERVER_ERROR, f"blob too large: the transaction carries more than {self.max_blob_bytes} "
                                             "bytes of blobs")
            if blob.get("share_version", 0) != 0:
                raise RPCError(SERVER_ERROR, f"unsupported share version {blob.get('share_version')!r}")
            commitment = blob_commitment(namespace, data)
            if blob.get("commitment") is not None and _unb64(blob["commitment"], "commitment") != commitment:
                raise RPCError(SERVER_ERROR, "blob: mismatched commitment")
            entries.append(_Pending(namespace, data, commitment))
        if self._pending_bytes + total > MAX_MEMPOOL_BYTES:
            raise RPCError(SERVER_ERROR, "mempool is full: try again after the next block")
        self._pending.append(entries)
        self._pending_bytes += total
        for entry in entries:
            await entry.done.wait()
            if entry.error:
                raise RPCError(SERVER_ERROR, entry.error)
        return entries[0].height

    async def get(self, params: list[Any]) -> dict[str, Any]:
        height, ns, commitment = _params(params, 3, 3, "blob.Get")
        height, namespace = _height_param(height), _namespace_param(ns)
        wanted = _unb64(commitment, "commitment")
        await self._block_at(height)
        for row in await self._read(self.store.blobs, height, namespace) if height >= self.data_pruned_below else ():
            if row[3] == wanted:
                return blob_json(row)
        raise RPCError(SERVER_ERROR, "blob: not found")

    async def get_all(self, params: list[Any]) -> list[dict[str, Any]] | None:
        height, namespaces = _params(params, 2, 2, "blob.GetAll")
        height = _height_param(height)
        if not isinstance(namespaces, list) or not namespaces:
            raise RPCError(INVALID_PARAMS, "invalid params: namespaces must be a non-empty list")
        if len(namespaces) > MAX_NAMESPACES:
            raise RPCError(INVALID_PARAMS, f"invalid params: at most {MAX_NAMESPACES} namespaces per call")
        wanted = list(dict.fromkeys(_namespace_param(ns) for ns in namespaces))  # each once: the answer is bounded
        await self._block_at(height)
        if height < self.data_pruned_below:  # (celestia-node: the data is gone, and GetAll says "no blobs")
            return None
        found = [blob_json(row) for ns in wanted for row in await self._read(self.store.blobs, height, ns)]
        return found or None

    async def dispatch(self, method: str, params: list[Any]) -> Any:
        if method == "blob.Submit":
            return await self.submit(params)
        if method == "blob.Get":
            return await self.get(params)
        if method == "blob.GetAll":
            return await self.get_all(params)
        if method in ("header.NetworkHead", "header.LocalHead"):
            _params(params, 0, 0, method)
            assert self.head is not None
            return header_json(self.head)
        if method == "header.GetByHeight":
            (height,) = _params(params, 1, 1, method)
            return header_json(await self._block_at(_height_param(height)))
        if method == "header.WaitForHeight":
            (height,) = _params(params, 1, 1, method)
            height = _height_param(height)
            if not await self.wait_for_height(height, self.max_wait_s):
                raise RPCError(SERVER_ERROR, f"header: timed out after {self.max_wait_s:g}s waiting for height "
                                             f"{height} (network head {self.height})")
            return header_json(await self._block_at(height))
        raise RPCError(METHOD_NOT_FOUND, f"method '{method}' not found")

    # ---- HTTP -------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {"height": self.height, "mode": self.mode, "latency_ms": round(self.latency_s * 1000),
                "blobs": self.blob_total, "pending": sum(map(len, self._pending)), "chain_id": CHAIN_ID,
                "block_interval_ms": round(self.block_interval_s * 1000), "pruned_below": self.pruned_below,
                "data_pruned_below": self.data_pruned_below}

    def set_prune(self, body: Any) -> None:
        below = body.get("below") if isinstance(body, dict) else None
        data = body.get("data", False) if isinstance(body, dict) else False
        if (isinstance(below, bool) or not isinstance(below, int) or below < 0 or not isinstance(data, bool)
                or set(body) - {"below", "data"}):
            raise ValueError('send {"below": N[, "data": true]}: heights below N (>= 0) answer "header: not found" '
                             '(with "data": their data only is gone)')
        if data:
            self.data_pruned_below = below
            log.info("pruned: the data of heights below %d is gone (their headers are kept)", below)
        else:
            self.pruned_below = below
            log.info("pruned: heights below %d are gone", below)

    def set_fault(self, body: Any) -> None:
        if not isinstance(body, dict) or body.get("mode") not in FAULT_MODES:
            raise ValueError(f"send {{\"mode\": one of {', '.join(FAULT_MODES)}, \"latency_ms\": N}}")
        latency = body.get("latency_ms", DEFAULT_SLOW_MS if body["mode"] == "slow" else 0)
        if isinstance(latency, bool) or not isinstance(latency, int | float) or not 0 <= latency <= 3_600_000:
            raise ValueError("latency_ms must be a number from 0 to 3600000")
        self.mode = body["mode"]
        self.latency_s = latency / 1000 if self.mode == "slow" else 0.0
        log.info("fault mode %s%s", self.mode, f" ({latency:g} ms)" if self.mode == "slow" else "")

    def create_app(self) -> QuartTrio:
        app = quart_app("dsdn-devnet")
        app.config["MAX_CONTENT_LENGTH"] = 4 * self.max_blob_bytes + 1024 * 1024

        def reply(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
            return Response(json.dumps(value, separators=(",", ":")), status,
                            {"Content-Type": "application/json", **(headers or {})})

        def rpc_error(request_id: Any, code: int, message: str) -> Response:
            return reply({"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}})

        def unauthorized() -> Response | None:
            if self.auth_token is None:
                return None
            given = request.headers.get("Authorization", "")
            if bearer_matches(given, self.auth_token):
                return None
            return reply({"error": "unauthorized", "message": "send Authorization: Bearer <token>"}, 401,
                         {"WWW-Authenticate": "Bearer"})

        @app.errorhandler(HTTPException)
        async def http_error(e: HTTPException) -> Response:
            response = reply({"error": e.name.lower().replace(" ", "_"), "message": e.description or e.name},
                             e.code or 500)
            if e.code == 405:  # RFC 9110 §15.5.6: a 405 lists the methods the resource supports
                response.headers["Allow"] = allowed_methods(getattr(e, "valid_methods", None) or ())
            return response

        @app.errorhandler(Exception)
        async def internal(e: Exception) -> Response:
            log.exception("unhandled error on %s %s", request.method, request.path)
            return reply({"error": "internal", "message": f"devnet internal error ({type(e).__name__})"}, 500)

        @app.post("/")
        async def jsonrpc() -> Response:
            if self.mode == "down":
                return reply({"error": "unavailable", "message": "devnet fault mode: down"}, 503)
            if self.latency_s:
                await trio.sleep(self.latency_s)
            if (denied := unauthorized()) is not None:
                return denied
            try:
                envelope = _strict_json(await request.get_data(as_text=False))
            except (ValueError, UnicodeDecodeError, RecursionError) as exc:
                return rpc_error(None, PARSE_ERROR, f"parse error: {type(exc).__name__}: {str(exc)[:200]}")
            if not isinstance(envelope, dict):
                return rpc_error(None, INVALID_REQUEST, "invalid request: send one JSON-RPC 2.0 request object")
            request_id = envelope.get("id")
            method, params = envelope.get("method"), envelope.get("params", [])
            if envelope.get("jsonrpc") != "2.0" or not isinstance(method, str):
                return rpc_error(request_id, INVALID_REQUEST, "invalid request: need jsonrpc \"2.0\" and a method")
            if not isinstance(params, list):
                return rpc_error(request_id, INVALID_PARAMS, "invalid params: params must be a list (by position)")
            if self.mode == "error":
                return rpc_error(request_id, SERVER_ERROR, "devnet: injected failure (fault mode 'error')")
            try:
                result = await self.dispatch(method, params)
            except RPCError as exc:
                return rpc_error(request_id, exc.code, exc.message)
            return reply({"jsonrpc": "2.0", "id": request_id, "result": result})

        @app.post("/admin/fault")
        async def admin_fault() -> Response:
            if (denied := unauthorized()) is not None:
                return denied
            try:
                self.set_fault(_strict_json(await request.get_data(as_text=False)))
            except (ValueError, RecursionError) as exc:
                return reply({"error": "invalid_request", "message": str(exc)}, 422)
            return reply(self.status())

        @app.post("/admin/prune")
        async def admin_prune() -> Response:
            if (denied := unauthorized()) is not None:
                return denied
            try:
                self.set_prune(_strict_json(await request.get_data(as_text=False)))
            except (ValueError, RecursionError) as exc:
                return reply({"error": "invalid_request", "message": str(exc)}, 422)
            return reply(self.status())

        @app.get("/admin/status")
        async def admin_status() -> Response:
            if (denied := unauthorized()) is not None:
                return denied
            return reply(self.status())

        return app


async def serve_devnet(host: str = "127.0.0.1", port: int = DEFAULT_PORT, db_path: str = ":memory:",
                       block_interval_s: float = 0.5, auth_token: str | None = None, *,
                       max_blob_bytes: int = DEFAULT_MAX_BLOB_BYTES, max_wait_s: float = 60.0,
                       shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
                       task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Run a devnet until cancelled (or until ``shutdown_trigger`` returns: graceful stop).
    ``nursery.start(serve_devnet, ...)`` returns its URL, e.g. ``http://127.0.0.1:26658``."""
    devnet = Devnet(db_path, block_interval_s, auth_token, max_blob_bytes=max_blob_bytes, max_wait_s=max_wait_s)
    try:
        await devnet.open()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(devnet.produce_blocks)

            async def stop_then_answer_the_waiting() -> None:
                if shutdown_trigger is None:
                    await trio.sleep_forever()
                else:
                    await shutdown_trigger()
                devnet.stop_waiting()

            async def http(task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
                await serve(devnet.create_app(), hypercorn_config(host, port),  # type: ignore[arg-type]
                            shutdown_trigger=stop_then_answer_the_waiting, task_status=task_status)
                nursery.cancel_scope.cancel()  # the server stopped: stop producing blocks too

            try:
                binds: list[str] = await nursery.start(http)
            except* OSError as group:  # (start() hands it over in a group)
                raise process.bind_error(process.leaves(group)[0], "devnet", host, port, "--port") from None
            log.info("devnet %s listening on %s (block interval %g ms, auth %s)", CHAIN_ID, ", ".join(binds),
                     block_interval_s * 1000, "on" if auth_token else "off")
            task_status.started(binds[0])
    finally:
        devnet.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="dsdn devnet", description="Local Celestia devnet (celestia-node JSON-RPC "
                                     "subset, blocks in SQLite, fault injection under /admin).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--db", default=".dsdn/devnet.sqlite", help="SQLite file (':memory:' keeps nothing)")
    parser.add_argument("--block-interval-ms", type=int, default=500)
    parser.add_argument("--auth-token", default=os.environ.get("DEVNET_AUTH_TOKEN") or None,
                        help="require Authorization: Bearer TOKEN (default: $DEVNET_AUTH_TOKEN, else no auth)")
    parser.add_argument("--max-blob-bytes", type=int, default=DEFAULT_MAX_BLOB_BYTES)
    args = parser.parse_args(argv)
    if not 1 <= args.block_interval_ms <= 3_600_000:  # (as `dsdn cluster up`: 1e20 produced no block, silently)
        parser.error("--block-interval-ms must be from 1 to 3600000")
    if not 0 <= args.port <= 65535:
        parser.error("--port must be 0..65535")
    if not 1 <= args.max_blob_bytes <= MAX_BLOB_BYTES_LIMIT:  # (0 or less refused every blob; its body limit grows
        parser.error(f"--max-blob-bytes must be from 1 to {MAX_BLOB_BYTES_LIMIT}")  # with it: a bound)
    setup_logging()
    if args.db != ":memory:":
        lock_data("dsdn devnet", Path(args.db + ".lock"))
    run_process("dsdn devnet", serve_until_signalled, partial(
        serve_devnet, args.host, args.port, args.db, args.block_interval_ms / 1000, args.auth_token,
        max_blob_bytes=args.max_blob_bytes), "devnet")


if __name__ == "__main__":
    main()
