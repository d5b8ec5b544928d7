"""The receipt routes: submit (optionally waiting for the threshold signature), fetch, list, verify.

* ``POST /receipts[?wait_ms=N]`` → 202 ``{receipt_id, status[, optimistic]}``; with ``wait_ms`` (≤ 30000) 200 and
  the signed document once final. 409 ``{"error": "slot conflict", receipt_id, conflicting_receipt_id}``; 422
  invalid or rejected (with the reason); 503 when the cluster cannot sign now (no key, too few peers up).
* ``POST /receipts/batch[?wait_ms=N]``: up to 1,024 receipts in one request (an aggregator reporting for many
  nodes); 200 ``{"results": [...]}``, one entry per receipt in order, each with the status a single POST would
  have given (``locked`` = acknowledged; ``unavailable`` = not acknowledged, submit it again), and with
  ``wait_ms`` the signed document of each receipt final by then.
* ``GET /receipts/<id>``: the document (final) or the receipt and its status; 404 when unknown here.
* ``GET /receipts?node=&epoch=&status=&after=&limit=``: pages ordered by receipt id.
* ``POST /receipts/verify``: a document in, ``{valid, reason}`` out (pinned to this cluster's group key).
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import nacl.bindings
import trio
from quart import request
from quart_trio import QuartTrio

from api import validation as v
from api.limits import LOCK_WAIT_S, MAX_BULK, MAX_LIMIT, MAX_WAIT_MS, STATUSES
from api.limits import RECEIPT_ID as _RID
from consensus import receipts as rc
from consensus.receipt_service import LedgerView, ReceiptService, Record, Unavailable

SCAN_MAX = 10_000  # receipts GET /receipts looks at per request (see list_receipts)
SCAN_STEP = 500  # ... with a checkpoint every this many


def node_public_key(value: Any) -> str | None:
    """``public_key`` of POST /register: absent/null, or a valid Ed25519 point (64 hex, canonical, not of small
    order), returned in lower case."""
    if value is None:
        return None
    if type(value) is not str or not _RID.fullmatch(value) or not nacl.bindings.crypto_core_ed25519_is_valid_point(
            bytes.fromhex(value)):
        raise v.Invalid("public_key", "an Ed25519 public key: 64 hex characters encoding a valid curve point")
    return value.lower()


def register_receipt_routes(app: QuartTrio, service: ReceiptService | None, view: LedgerView | None,
                            mutating: Callable[..., Any], json_body: Callable[[], Awaitable[dict[str, Any]]],
                            error: type[Exception], node_key: Callable[[str], bytes | None]) -> None:
    """``service``: the receipt engine of a cluster member (submitting needs it); ``view``: the signed receipts
    of the state, which any coordinator serves (one rebuilt from DA outside the cluster too); ``error(status,
    body)`` is the app's JSON error; ``node_key(id)`` the registered key of a node."""
    if view is None and service is not None:
        view = service.view

    def lookup(receipt_id: bytes) -> dict[str, Any] | None:
        if service is not None:
            return service.lookup(receipt_id)
        if view is None:
            raise fail(503, "no_cluster", "this coordinator serves no receipts")
        return view.signed_document(receipt_id)

    sorted_ids: list[Any] = [None, []]  # (the view's signed_version, its ids sorted): sorted once per change

    def known_ids() -> list[bytes]:
        if service is not None:
            return service.receipt_ids()
        if view is None:
            raise fail(503, "no_cluster", "this coordinator serves no receipts")
        version = view.signed_version()
        if sorted_ids[0] != version:
            sorted_ids[:] = [version, sorted(view.signed_ids())]
        return sorted_ids[1]

    def slot_of(receipt_id: bytes) -> tuple[str, str, str, int] | None:
        """A receipt's slot without building its document (a listing's filters look at it first: building every
        scanned receipt's document, Merkle path included, cost ~1 ms each, seconds of event loop per page of a
        filter that matched little: a reviewer's measurement)."""
        record = service.records.get(receipt_id) if service is not None else None
        if record is not None:
            return record.receipt.slot
        return view.slot_of(receipt_id) if view is not None else None

    def fail(status: int, code: str, message: str, **extra: Any) -> Exception:
        return error(status, {"error": code, "message": message, **extra})  # type: ignore[call-arg]

    def need_service() -> ReceiptService:
        if service is None:
            raise fail(503, "no_cluster", "this coordinator has no cluster configuration: it cannot sign receipts")
        return service

    def settled(record: Record) -> None:
        rid = record.receipt.id.hex()
        if record.status == "conflict":
            raise fail(409, "slot conflict", "another receipt holds this slot (receipt type, node, subject, "
                       "epoch): at most one is ever signed", receipt_id=rid,
                       conflicting_receipt_id=record.conflicting_id.hex() if record.conflicting_id else None)
        if record.status == "rejected":
            raise fail(422, "receipt_rejected", record.reason, receipt_id=rid)

    async def wait_for(record: Record, deadline: float, until: tuple[str, ...]) -> None:
        """Wait until ``record``'s status is one of ``until`` or trio's clock passes ``deadline`` (past: no wait)."""
        with trio.move_on_at(deadline):
            while record.status not in until:
                await record.changed.wait()

    @app.post("/receipts")
    @mutating
    async def submit_receipt() -> Any:
        wait_ms = v.query_integer(request.args.get("wait_ms"), "wait_ms", 0, 0, MAX_WAIT_MS)
        until = trio.current_time() + wait_ms / 1000  # wait_ms bounds the whole wait (the lock's included)
        body = await json_body()
        node_id = body.get("node_id")
        registered = node_key(node_id) if isinstance(node_id, str) else None
        try:
            receipt = rc.from_json(body, registered)
        except rc.ReceiptError as exc:
            raise fail(422, "invalid_receipt", str(exc), field=exc.field) from None
        svc = need_service()
        try:
            record = svc.submit(receipt)
        except Unavailable as exc:
            raise error(503, {"error": "unavailable", "message": str(exc)}, {"Retry-After": "1"}) from None  # type: ignore[call-arg]
        settled(record)
        with trio.move_on_after(LOCK_WAIT_S):  # acknowledged = locked here durably (or already settled)
            while record.awaiting_lock:
                await record.changed.wait()
        if record.status == "pending" and not record.reason:
            raise error(503, {"error": "unavailable", "receipt_id": receipt.id.hex(),  # type: ignore[call-arg]
                              "message": "the receipt is not locked here durably yet: submit it again"},
                        {"Retry-After": "1"})
        if wait_ms:  # (it waited for the lock first, up to LOCK_WAIT_S, and then wait_ms more: a reviewer's find)
            await wait_for(record, until, ("final", "conflict", "rejected"))
        settled(record)
        if record.status == "final":
            doc = svc.lookup(receipt.id)
            if doc is not None and wait_ms:
                return doc, 200
        out: dict[str, Any] = {"receipt_id": receipt.id.hex(), "status": record.status}
        if record.optimistic is not None:
            out["optimistic"] = record.optimistic
        if record.status == "pending" and record.reason:
            out["reason"] = record.reason
        return out, 202

    @app.post("/receipts/batch")
    @mutating
    async def submit_receipts() -> Any:
        wait_ms = v.query_integer(request.args.get("wait_ms"), "wait_ms", 0, 0, MAX_WAIT_MS)
        until = trio.current_time() + wait_ms / 1000
        items = (await json_body()).get("receipts")
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_BULK:
            raise v.Invalid("receipts", f"a list of 1 to {MAX_BULK} receipts")
        svc = need_service()
        results: list[dict[str, Any]] = []
        records: list[Record | None] = []
        for body in items:
            record, answer = None, None
            if not isinstance(body, dict):
                answer = {"status": "invalid", "error": "invalid_receipt", "message": "a receipt is a JSON object"}
            else:
                node_id = body.get("node_id")
                try:
                    receipt = rc.from_json(body, node_key(node_id) if isinstance(node_id, str) else None)
                    record = svc.submit(receipt)
                except rc.ReceiptError as exc:
                    answer = {"status": "invalid", "error": "invalid_receipt", "message": str(exc),
                              "field": exc.field}
                except Unavailable as exc:
                    if not records or all(r is None for r in records):
                        raise error(503, {"error": "unavailable", "message": str(exc)},  # type: ignore[call-arg]
                                    {"Retry-After": "1"}) from None
                    answer = {"status": "unavailable", "error": "unavailable", "message": str(exc)}
            records.append(record)
            results.append(answer or {})
        with trio.move_on_after(LOCK_WAIT_S):  # acknowledged = locked here durably (or already settled)
            for record in records:
                while record is not None and record.awaiting_lock:
                    await record.changed.wait()
        if wait_ms:
            for record in records:
                if record is not None:
                    await wait_for(record, until, ("final", "conflict", "rejected"))
        for k, record in enumerate(records):
            if record is not None:
                results[k] = bulk_answer(svc, record, with_document=bool(wait_ms))
        return {"results": results}

    def bulk_answer(svc: ReceiptService, record: Record, with_document: bool) -> dict[str, Any]:
        rid = record.receipt.id.hex()
        if record.status == "final" and with_document:
            doc = svc.lookup(record.receipt.id)
            if doc is not None:
                return {"receipt_id": rid, "status": "final", "document": doc}
        if record.status == "pending" and not record.reason:
            return {"receipt_id": rid, "status": "unavailable", "error": "unavailable",
                    "message": "the receipt is not locked here durably yet: submit it again"}
        out: dict[str, Any] = {"receipt_id": rid, "status": record.status}
        if record.status == "conflict":
            out["error"] = "slot conflict"
            out["conflicting_receipt_id"] = record.conflicting_id.hex() if record.conflicting_id else None
        elif record.status == "rejected" or (record.status == "pending" and record.reason):
            out["reason"] = record.reason
        if record.optimistic is not None and record.status in ("locked", "final"):
            out["optimistic"] = record.optimistic
        return out

    @app.get("/receipts/<receipt_id>")
    async def get_receipt(receipt_id: str) -> Any:
        if not _RID.fullmatch(receipt_id):
            raise fail(404, "receipt not found", "a receipt id is 64 hex characters", receipt_id=receipt_id)
        rid = bytes.fromhex(receipt_id)
        doc = await service.lookup_durable(rid) if service is not None else lookup(rid)
        if doc is None:
            raise fail(404, "receipt not found", "no receipt with this id is known here", receipt_id=receipt_id.lower())
        return doc

    @app.get("/receipts")
    async def list_receipts() -> Any:
        args = request.args
        node = args.get("node")
        if node is not None:
            v.node_id(node, "node")
        epoch = v.query_integer(args["epoch"], "epoch", 1, 1, v.MAX_U63) if "epoch" in args else None
        status = args.get("status")
        if status is not None and status not in STATUSES:
            raise v.Invalid("status", " or ".join(STATUSES))
        after = args.get("after")
        if after is not None and not _RID.fullmatch(after):
            raise v.Invalid("after", "a receipt id: 64 hex characters")
        limit = v.query_integer(args.get("limit"), "limit", 100, 1, MAX_LIMIT)
        ids = known_ids()
        picked: list[dict[str, Any]] = []
        next_after = None
        start = bisect.bisect_right(ids, bytes.fromhex(after)) if after is not None else 0
        # A filter that matches little walked every known receipt in one go, the event loop held all along (16 µs
        # a receipt: 16 s at a million, long past the peers' lock timeout; a reviewer's finding): at most SCAN_MAX
        # receipts a request, the loop's turn every SCAN_STEP; a page may then hold fewer than ``limit`` and
        # ``next_after`` says where to go on (null only at the end).
        for scanned, rid in enumerate(itertools.islice(ids, start, start + SCAN_MAX + 1)):
            if scanned and scanned % SCAN_STEP == 0:
                await trio.lowlevel.checkpoint()
            if scanned == SCAN_MAX:
                next_after = ids[start + SCAN_MAX - 1].hex()
                break
            if node is not None or epoch is not None:
                slot = slot_of(rid)
                if slot is not None and ((node is not None and slot[1] != node)
                                         or (epoch is not None and slot[3] != epoch)):
                    continue
            doc = lookup(rid)
            if doc is None or (status is not None and doc["status"] != status):
                continue
            if (node is not None and doc["receipt"]["node_id"] != node) or (epoch is not None
                                                                             and doc["epoch"] != epoch):
                continue
            if len(picked) == limit:
                next_after = picked[-1]["receipt_id"]
                break
            picked.append(doc)
        return {"receipts": picked, "next_after": next_after}

    @app.post("/receipts/verify")
    async def verify_receipt() -> Any:
        doc = await json_body()
        key = service.keys.key if service is not None else None
        if key is None:  # the document's own key proves nothing: anyone can sign a batch with a key of their own
            raise fail(503, "no_group_key", "this coordinator holds no group key yet (no cluster, or its key "
                       "generation has not finished), so it cannot tell the cluster's signature from anyone's: "
                       "verify offline with `dsdn receipt verify --group-key <the cluster's key>`")
        # a receipt signed before a new DKG is the cluster's too: under a key the cluster held (its members keep
        # them), the document is checked against that key; under any other, against the current one (and fails)
        assert service is not None  # (a key comes from its key holder)
        held = getattr(service.keys, "group_keys", None) or frozenset({key.group_public_key})
        claimed = doc.get("group_public_key") if isinstance(doc, dict) else None
        group = next((k for k in held if isinstance(claimed, str) and claimed.lower() == k.hex()),
                     key.group_public_key)
        valid, reason = rc.verify_document(doc, group)
        return {"valid": valid, "reason": reason}


# ---- the OpenAPI description of these routes (merged into api/openapi.py's table) ----------------------

_HEX64 = {"type": "string", "pattern": "^[0-9a-fA-F]{64}$", "description": "32 bytes in hex"}
_OBJ = {"type": "object"}
RECEIPT_IN = {"type": "object", "required": ["receipt_type", "node_id", "subject", "epoch", "usage_proof_hash",
                                             "reward_base", "submitter_address", "timestamp", "node_signature"],
              "description": "A usage receipt signed by its node: the node signs b'dsdn/usage/v1' + receipt_bytes",
              "properties": {
                  "receipt_type": {"enum": list(rc.TYPES)},
                  "node_id": {"type": "string", "pattern": v.ID_PATTERN},
                  "node_public_key": {**_HEX64, "type": ["string", "null"],
                                      "description": "omitted: the node's registered key"},
                  "subject": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,256}$",
                              "description": "storage: a registered object hash; compute: a workload id (64 hex)"},
                  "epoch": {"type": "integer", "minimum": 1, "maximum": rc.MAX_U63},
                  "usage_proof_hash": _HEX64,
                  "execution_commitment": {
                      "oneOf": [{"type": "array", "items": _HEX64, "minItems": 6, "maxItems": 6},
                                {"type": "object", "required": list(rc.COMMITMENT_FIELDS),
                                 "properties": dict.fromkeys(rc.COMMITMENT_FIELDS, _HEX64),
                                 "additionalProperties": False},
                                {"type": "null"}],
                      "description": "compute only: workload_id (= subject), input_hash, output_hash, "
                                     "state_root_before, state_root_after, trace_root: in this order, or by name"},
                  "reward_base": {"type": "integer", "minimum": 1, "maximum": rc.MAX_REWARD},
                  "submitter_address": {"type": "string", "pattern": "^[0-9a-fA-F]{40}$"},
                  "timestamp": {"type": "integer", "minimum": 0, "maximum": rc.MAX_U63},
                  "node_signature": {"type": "string", "pattern": "^[0-9a-fA-F]{128}$"}},
              # storage: no execution commitment; compute: one, and its subject is a 64-hex workload id
              "if": {"properties": {"receipt_type": {"const": "storage"}}},
              "then": {"properties": {"execution_commitment": {"type": "null"}}},
              "else": {"properties": {"subject": _HEX64, "execution_commitment": {"type": ["array", "object"]}},
                       "required": ["execution_commitment"]}}
RECEIPT_DOC = {"type": "object", "required": ["receipt_id", "receipt", "receipt_bytes", "epoch", "status"],
               "description": "final: with batch {root, tree_size, index, path}, signature, group_public_key, "
                              "signers — verifiable with Ed25519 and SHA-256 alone",
               "properties": {
                   "receipt_id": _HEX64, "receipt": RECEIPT_IN,
                   "receipt_bytes": {"type": "string", "pattern": "^([0-9a-fA-F]{2})*$"},
                   "epoch": {"type": "integer"}, "status": {"enum": list(STATUSES)},
                   "batch": {"type": "object", "required": ["root", "tree_size", "index", "path"],
                             "properties": {"root": _HEX64, "tree_size": {"type": "integer", "minimum": 1},
                                            "index": {"type": "integer", "minimum": 0},
                                            "path": {"type": "array", "items": _HEX64}}},
                   "signature": {"type": "string", "pattern": "^[0-9a-fA-F]{128}$"}, "group_public_key": _HEX64,
                   "signers": {"type": "array", "items": {"type": "string"}},
                   "conflicting_receipt_id": _HEX64, "reason": {"type": "string"}}}
RECEIPT_ACK = {"type": "object", "required": ["receipt_id", "status"],
               "properties": {"receipt_id": _HEX64, "status": {"enum": list(STATUSES)},
                              "optimistic": {"type": "object", "description": "the proposer's own signed promise, "
                                                                              "replaced by the final document"},
                              "reason": {"type": "string", "description": "why it is still pending"}}}
SLOT_CONFLICT = {"type": "object", "required": ["error", "message", "receipt_id", "conflicting_receipt_id"],
                 "properties": {"error": {"const": "slot conflict"}, "message": {"type": "string"},
                                "receipt_id": _HEX64, "conflicting_receipt_id": {**_HEX64, "type": ["string", "null"]}}}
BULK_IN = {"type": "object", "required": ["receipts"],
           "properties": {"receipts": {"type": "array", "minItems": 1, "maxItems": MAX_BULK, "items": RECEIPT_IN}}}
BULK_OUT = {"type": "object", "required": ["results"],
            "properties": {"results": {"type": "array", "items": {"type": "object", "required": ["status"]}}}}
RECEIPT_PAGE = {"type": "object", "required": ["receipts", "next_after"],
                "properties": {"receipts": {"type": "array", "items": RECEIPT_DOC},
                               "next_after": {"type": ["string", "null"]}}}
VERIFIED = {"type": "object", "required": ["valid", "reason"],
            "properties": {"valid": {"type": "boolean"}, "reason": {"type": "string"}}}
RECEIPT_ROUTES: list[tuple[str, str, str, dict[str, Any] | None, dict[str, Any], tuple[int, ...]]] = [
    ("POST", "/receipts", "Submit a usage receipt for threshold signing; 202 {receipt_id, status, optimistic?}, "
     "or with ?wait_ms=N 200 and the signed document once final", RECEIPT_IN, RECEIPT_ACK,
     (400, 401, 409, 413, 415, 422, 503)),
    ("POST", "/receipts/batch", f"Submit up to {MAX_BULK} receipts in one request: 200 {{results}}, one entry per "
     "receipt in order ({receipt_id, status, ...}: locked = acknowledged, unavailable = submit it again; with "
     "?wait_ms=N the signed document of each receipt final by then)", BULK_IN, BULK_OUT,
     (400, 401, 413, 415, 422, 503)),
    ("GET", "/receipts", "Receipts known here, by receipt id (?node=&epoch=&status=&after=&limit=)", None,
     RECEIPT_PAGE, (422, 503)),
    ("GET", "/receipts/<receipt_id>", "A receipt: the signed document when final, else its status", None,
     RECEIPT_DOC, (404, 503)),
    ("POST", "/receipts/verify", "Verify a signed receipt document against this cluster's group key: {valid, "
     "reason}", _OBJ, VERIFIED, (400, 413, 415, 422, 503)),
]
RECEIPT_SUCCESS = {("POST", "/receipts"): 202}
RECEIPT_ERROR_BODIES = {("POST", "/receipts", 409): SLOT_CONFLICT}
RECEIPT_PATH_PARAMS = {"receipt_id": {"type": "string", "description": "64 hex characters"}}
RECEIPT_QUERY_PARAMS: dict[tuple[str, str], list[tuple[str, dict[str, Any], bool]]] = {
    ("POST", "/receipts"): [("wait_ms", {"type": "integer", "minimum": 0, "maximum": MAX_WAIT_MS, "default": 0},
                             False)],
    ("POST", "/receipts/batch"): [("wait_ms", {"type": "integer", "minimum": 0, "maximum": MAX_WAIT_MS,
                                               "default": 0}, False)],
    ("GET", "/receipts"): [("node", {"type": "string", "pattern": v.ID_PATTERN}, False),
                           ("epoch", {"type": "integer", "minimum": 1, "maximum": rc.MAX_U63}, False),
                           ("status", {"enum": list(STATUSES)}, False),
                           ("after", _HEX64, False),
                           ("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 100}, False)],
}
