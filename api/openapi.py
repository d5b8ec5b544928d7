"""The OpenAPI 3.1 document served at /openapi.json, built from one route table.

``ROUTES`` is checked against the app's URL map at start-up (api.app._check_routes), so a route cannot
be added without being documented. The request schemas state the rules the handlers enforce: the same
patterns, lengths and ranges, taken from api/validation.py and node/scheduler.py rather than copied, and
tests/test_contract_schemathesis.py fuzzes every route of the document against a real server (positive
and negative data, every check) so the two cannot drift apart.
"""

from __future__ import annotations

import re
from typing import Any

from api import validation as v
from api.dashboard import DASHBOARD_MEDIA, DASHBOARD_ROUTES
from api.metrics import METRICS_MEDIA_TYPE, METRICS_ROUTE
from api.receipts import (
    RECEIPT_DOC,
    RECEIPT_ERROR_BODIES,
    RECEIPT_PATH_PARAMS,
    RECEIPT_QUERY_PARAMS,
    RECEIPT_ROUTES,
    RECEIPT_SUCCESS,
)
from node.da.blobstore_client import (
    MAX_LOG_LIMIT,
    MAX_LOG_WAIT_MS,
    NAMESPACE_LEN,
    WRITER_HEADER,
    WRITER_SIGNATURE_HEADER,
)
from node.scheduler import STAT_DEFAULTS, STAT_RANGES, WEIGHT_NAMES, WEIGHT_RANGE

Schema = dict[str, Any]

NUM = {"type": "number"}
STR = {"type": "string"}
BOOL = {"type": "boolean"}
INT = {"type": "integer", "minimum": 0}
U63 = {"type": "integer", "minimum": 0, "maximum": v.MAX_U63}
OBJ = {"type": "object"}
ID = {"type": "string", "pattern": v.ID_PATTERN, "description": "1-128 characters of A-Z a-z 0-9 . _ : -"}
HASH = {"type": "string", "pattern": v.HASH_PATTERN, "description": "1-256 characters of A-Z a-z 0-9 . _ : -"}
ZONE = {"type": "string", "minLength": 1, "maxLength": v.MAX_ZONE, "pattern": v.ZONE_PATTERN,
        "description": "1-128 characters, no control characters, no space at either end"}
ADDR = {"type": "string", "maxLength": v.MAX_ADDR, "pattern": v.ADDR_PATTERN,
        "description": "host:port, port 1-65535; host a DNS name, a dotted IPv4 address or [IPv6]"}
HEX32 = {"type": "string", "pattern": "^[0-9a-fA-F]{64}$", "description": "32 bytes in hex"}
NAMESPACE = {"type": "string", "pattern": f"^[0-9a-fA-F]{{{2 * NAMESPACE_LEN}}}$",
             "description": f"a Celestia namespace: {NAMESPACE_LEN} bytes in hex"}
OK = {"type": "object", "properties": {"ok": {"const": True}}, "required": ["ok"]}
ERROR = {"type": "object", "properties": {"error": STR, "message": STR, "field": STR}, "required": ["error", "message"],
         "description": "Every error: a code, a message, and the field at fault for a schema violation (422)"}


def _range(lo: float, hi: float, lo_open: bool, nullable: bool = False) -> Schema:
    schema: Schema = {"type": ["number", "null"] if nullable else "number", "maximum": hi}
    schema["exclusiveMinimum" if lo_open else "minimum"] = lo
    return schema


NODE_KEY = {**HEX32, "description": "the node's Ed25519 public key (64 hex, a valid point): needed to earn receipts"}
NODE = {"type": "object", "required": ["id", "zone", "addr", "capacity_gb", "meta"],
        "properties": {"id": ID, "zone": STR, "addr": STR, "capacity_gb": INT, "meta": OBJ,
                       "public_key": {**NODE_KEY, "description": "present once the node registered a key"}}}
STATS = {"type": "object", "required": list(STAT_RANGES),
         "properties": {k: _range(*r) for k, r in STAT_RANGES.items()}}
REGISTER = {"type": "object", "required": ["id", "zone", "addr"], "properties": {
    "id": ID, "zone": ZONE, "addr": ADDR,
    "capacity_gb": {**U63, "type": ["integer", "null"], "description": "GB; omitted or null: 100"},
    "public_key": {**NODE_KEY, "type": ["string", "null"], "description":
                   NODE_KEY["description"] + "; omitted or null: none (a key registered before is kept)"}}}
STATS_IN = {"type": "object", "required": [k for k in STAT_RANGES if k not in STAT_DEFAULTS], "properties": {
    k: {**_range(*r, nullable=k in STAT_DEFAULTS)} | (
        {"description": f"omitted or null: {STAT_DEFAULTS[k]:g}"} if k in STAT_DEFAULTS else {})
    for k, r in STAT_RANGES.items()}}
WORKLOAD = {"type": "object", "properties": {
    name: {**_range(*STAT_RANGES[stat], nullable=True), "description": f"requirement on {stat}; null: none"}
    for name, stat in v.WORKLOAD_FIELDS.items()}}
WEIGHTS = {"type": "object", "properties": {
    name: {**_range(*WEIGHT_RANGE, False, nullable=True), "description": "omitted or null: the default"}
    for name in WEIGHT_NAMES}}
OBJECT_IN = {"type": "object", "required": ["hash", "size"], "properties": {"hash": HASH, "size": U63}}
OBJECT = {"type": "object", "required": ["hash", "size", "replicas"],
          "properties": {"hash": STR, "size": INT, "replicas": {"type": "array", "items": STR}}}
REPLICA_IN = {"type": "object", "required": ["hash", "node_id"], "properties": {"hash": HASH, "node_id": ID}}
DA_POST_IN = {"type": "object", "required": ["data_hex"], "properties": {"data_hex": {
    "type": "string", "pattern": v.DATA_HEX_PATTERN,
    "description": "the blob in hex: whole bytes, at least one, no 0x prefix, no spaces; over DA_BLOB_MAX_BYTES "
                   "bytes (or a body over 1 MiB) → 413"}}}
DA_POSTED = {"type": "object", "required": ["success", "commitment", "height", "layer"], "properties": {
    "success": {"const": True}, "commitment": STR, "height": INT, "layer": STR}}
DKG_IN = {"type": "object", "properties": {"threshold": {
    "type": ["integer", "null"], "minimum": 1, "maximum": 255, "description": "omitted or null: DKG_THRESHOLD"},
    "leave_out": {"type": ["array", "null"], "items": ID, "maxItems": 255,
                  "description": "members left out without proof: each unreachable from every participant for the "
                                 "DKG timeout at least (they hold no key share)"}}}
NODE_STATS = {"type": "object", "required": ["node_id", "found"],
              "properties": {"node_id": STR, "found": BOOL, "stats": STATS}}
READY = {"type": "object", "required": ["ready"], "properties": {
    "ready": BOOL, "reason": STR,
    # 503 while rebuilding: events applied, events/s, ETA, and per followed log cursor, head, heights/s (nulls
    # while unknown; node.consumer.RebuildProgress)
    "progress": {"type": "object", "required": ["events_applied", "events_per_s", "eta_s", "elapsed_s", "logs"],
                 "properties": {"events_applied": INT, "events_per_s": {"type": ["number", "null"]},
                                "eta_s": {"type": ["number", "null"]}, "elapsed_s": NUM, "reports": INT,
                                "logs": {"type": "object", "additionalProperties": {"type": "object"}}}},
    # 503 once rebuilt while a followed log is stuck (node.consumer.Consumer.stuck): per log why, since when
    "stuck": {"type": "object", "additionalProperties": {
        "type": "object", "required": ["cursor", "error", "failing_since_ms", "failing_for_s", "failed_reads"],
        "properties": {"cursor": INT, "error": STR, "failing_since_ms": INT, "failing_for_s": NUM,
                       "failed_reads": INT}}}}}
IDS = {"type": "array", "items": STR}

# (method, path as Quart writes it, summary, request body schema or None, 200 schema, other statuses)
ROUTES: list[tuple[str, str, str, dict[str, Any] | None, dict[str, Any], tuple[int, ...]]] = [
    ("POST", "/register", "Register or update a node", REGISTER, OK, (400, 401, 409, 413, 415, 422, 503)),
    ("GET", "/nodes", "List all nodes (sorted by id)", None, {"type": "array", "items": NODE}, ()),
    ("GET", "/node/<node_id>", "Get one node", None, NODE, (404,)),
    ("GET", "/node/<node_id>/stats", "Get a node's runtime stats (found: false when none are fresh)", None,
     NODE_STATS, (404, 422)),
    ("POST", "/node/<node_id>/stats", "Report a node's runtime stats", STATS_IN,
     {"type": "object", "required": ["ok", "node_id"], "properties": {"ok": {"const": True}, "node_id": STR}},
     (400, 401, 404, 413, 415, 422)),
    ("GET", "/placement/<key>", "Replica placement for a hash (?rf=1..64, default 3)", None, IDS, (404, 422)),
    ("POST", "/schedule", "Pick the best node for a workload", WORKLOAD,
     {"type": "object", "required": ["node_id"], "properties": {"node_id": STR}}, (400, 404, 413, 415, 422)),
    ("POST", "/scheduler/config", "Set scheduler weights", WEIGHTS,
     {"type": "object", "required": ["ok", "config"], "properties": {
         "ok": {"const": True}, "message": STR, "config": {"type": "object", "required": list(WEIGHT_NAMES),
                                                          "properties": {k: NUM for k in WEIGHT_NAMES}}}},
     (400, 401, 409, 413, 415, 422, 503)),
    ("POST", "/object/register", "Register an object (or update its size)", OBJECT_IN, OK,
     (400, 401, 409, 413, 415, 422, 503)),
    ("GET", "/object/<obj>", "Get an object and its replicas", None, OBJECT, (404,)),
    ("POST", "/replica/mark_missing", "Mark a replica missing", REPLICA_IN, OK,
     (400, 401, 404, 409, 413, 415, 422, 503)),
    ("POST", "/replica/mark_healed", "Mark a replica healed", REPLICA_IN, OK,
     (400, 401, 404, 409, 413, 415, 422, 503)),
    ("POST", "/da/post", "Post a raw blob to DA", DA_POST_IN, DA_POSTED, (400, 401, 413, 415, 422, 503)),
    ("GET", "/da/metrics", "DA counters and latencies", None, OBJ, ()),
    ("GET", "/da/routing", "DA routing state", None, OBJ, ()),
    ("GET", "/fallback/status", "Fallback status", None, OBJ, ()),
    ("GET", "/fallback/pending", "Blobs pending reconciliation, oldest first (?limit=1..1000, default 1000; "
     "?after=<blob_id of the previous page's last blob> for the next page; 404 when no blob has it). A full "
     "page carries a Link header (rel=\"next\") to the next one", None,
     {"type": "array"}, (404, 422)),
    ("POST", "/fallback/reconcile", "Run reconciliation now", None, OBJ, (401, 409)),
    ("GET", "/fallback/consistency", "Check the newest published blobs (200 of each kind, within 10 s, then the "
     "newest 100 event blobs, within 10 s more) are readable from DA", None, OBJ, ()),
    ("GET", "/health", "Liveness and DA health (always 200 while the process lives)", None, OBJ, ()),
    ("GET", "/ready", "Readiness (503 while rebuilding, while a followed DA log is stuck on a read error, or when "
     "no DA layer takes writes)", None, READY, (503,)),
    ("GET", "/system/info", "Version, node count and DA status", None, OBJ, ()),
    ("GET", "/state/root", "State root, events applied, events pending publication", None, OBJ, ()),
    ("GET", "/cluster/peers", "Each peer: id, address, state, rtt_ms, last_seen, messages in/out, errors", None,
     {"type": "array"}, ()),
    ("GET", "/cluster/status", "Group public key, threshold, members with their verifying shares, DKG state", None,
     OBJ, ()),
    ("POST", "/cluster/dkg", "Start a distributed key generation ({threshold?}); 202 with the session", DKG_IN, OBJ,
     (400, 401, 409, 413, 415, 422)),
    ("GET", "/openapi.json", "This document", None, OBJ, ()),
    *RECEIPT_ROUTES,
    *DASHBOARD_ROUTES,
    METRICS_ROUTE,
]

# Hosted only by a coordinator with QUORUM_VALIDATOR=true (api/blobstore.py documents them in full).
QUORUM_ROUTES: list[tuple[str, str, str, dict[str, Any] | None, dict[str, Any], tuple[int, ...]]] = [
    ("POST", "/quorum/v1/blobs", "Store a blob (raw body, ?namespace=<58 hex>, signed by a cluster member); "
     "returns the signed receipt", None, OBJ, (401, 403, 413, 415, 422, 503)),
    ("GET", "/quorum/v1/blobs/<blob_hash>", "A stored blob by SHA-256", None, OBJ, (404, 422)),
    ("GET", "/quorum/v1/log", "Stored blobs in log order (?after=&limit=&namespace=)", None, OBJ, (422,)),
    ("GET", "/quorum/v1/health", "Validator health, head position and public key", None, OBJ, ()),
]

# What differs from "200, JSON, schema of the table": another success status, another body for an error.
_SUCCESS = {("POST", "/cluster/dkg"): 202, **RECEIPT_SUCCESS}
_ERROR_BODIES: dict[tuple[str, str, int], Schema] = {("GET", "/ready", 503): READY, **RECEIPT_ERROR_BODIES}
_DESCRIBED = {("POST", "/quorum/v1/blobs", 415): "Content-Type is not application/octet-stream"}
_REQUEST_OPTIONAL = {("POST", "/cluster/dkg")}  # an empty body is allowed
_MEDIA_TYPES = {**DASHBOARD_MEDIA, METRICS_ROUTE[:2]: METRICS_MEDIA_TYPE}  # successes that are not JSON
_PATH_PARAMS: dict[str, Schema] = {"node_id": ID, "key": HASH, "obj": HASH, "blob_hash": HEX32, **RECEIPT_PATH_PARAMS}
_QUERY_PARAMS: dict[str, list[tuple[str, Schema, bool]]] = {
    "/placement/<key>": [("rf", {"type": "integer", "minimum": 1, "maximum": 64, "default": 3}, False)],
    "/fallback/pending": [("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 1000}, False),
                          ("after", {"type": "string", "minLength": 1, "maxLength": 256, "description":
                                     "the blob_id of the previous page's last blob: the page starts after it"},
                           False)],
    "/quorum/v1/blobs": [("namespace", NAMESPACE, True)],
    "/quorum/v1/blobs/<blob_hash>": [("namespace", NAMESPACE, False)],
    "/quorum/v1/log": [("after", {"type": "integer", "minimum": 0, "maximum": v.MAX_U63, "default": 0}, False),
                       ("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LOG_LIMIT, "default": 100}, False),
                       ("namespace", NAMESPACE, False),
                       ("wait_ms", {"type": "integer", "minimum": 0, "maximum": MAX_LOG_WAIT_MS, "default": 0}, False)],
}

# POST routes that take no COORDINATOR_API_TOKEN (every other POST does; tests/test_api.py checks both ways)
UNGUARDED_POSTS = frozenset({"/schedule", "/quorum/v1/blobs", "/receipts/verify"})

_DESCRIPTIONS = {400: "Malformed JSON", 401: "Missing or wrong bearer token or signature",
                 403: "Writer not allowed, or a browser's write for another origin (Origin header)",
                 404: "Not found (also: a path parameter holding '/' matches no route)",
                 413: "Body too large", 415: "Content-Type is not application/json",
                 409: "Conflict with the current state", 422: "Schema violation",
                 503: "Not ready / DA unavailable"}


LOOPBACK_HOST_ONLY = ("A Host header naming no loopback address, to a server on loopback without "
                      "COORDINATOR_API_TOKEN (a web page's name re-pointed at 127.0.0.1)")


def openapi_path(rule: str) -> str:
    return re.sub(r"<(?:[a-z]+:)?([A-Za-z_]+)>", r"{\1}", rule)


def _operation(method: str, rule: str, summary: str, request_schema: Schema | None, ok_schema: Schema,
               errors: tuple[int, ...]) -> Schema:
    ok = str(_SUCCESS.get((method, rule), 200))
    op: Schema = {"summary": summary, "responses": {
        ok: {"description": "OK" if ok == "200" else "Accepted",
             "content": {_MEDIA_TYPES.get((method, rule), "application/json"): {"schema": ok_schema}}}}}
    params = [{"name": n, "in": "path", "required": True, "schema": _PATH_PARAMS.get(n, STR)}
              for n in re.findall(r"\{([A-Za-z_]+)\}", openapi_path(rule))]
    params += [{"name": n, "in": "query", "required": req, "schema": schema}
               for n, schema, req in RECEIPT_QUERY_PARAMS.get((method, rule), _QUERY_PARAMS.get(rule, []))]
    if rule == "/quorum/v1/blobs":
        params += [{"name": h, "in": "header", "required": False, "schema": STR,
                    "description": "hex; required when the store lists its writers"}
                   for h in (WRITER_HEADER, WRITER_SIGNATURE_HEADER)]
        op["requestBody"] = {"required": True, "content": {"application/octet-stream": {
            "schema": {"type": "string", "format": "binary", "minLength": 1}}}}
    if (method, rule) == ("POST", "/receipts"):  # with ?wait_ms: the signed document once final
        op["responses"]["200"] = {"description": "Final", "content": {"application/json": {"schema": RECEIPT_DOC}}}
    if params:
        op["parameters"] = params
    if request_schema is not None:
        op["requestBody"] = {"required": (method, rule) not in _REQUEST_OPTIONAL,
                             "content": {"application/json": {"schema": request_schema}}}
    guarded = method == "POST" and rule not in UNGUARDED_POSTS
    # 403 on every route: a Host naming no loopback address, to a loopback server without a token (DNS rebinding:
    # api/app.py's loopback_names_only); and a browser's write for another origin on a guarded one
    for code in sorted({*errors, 403}):
        described = (_DESCRIBED.get((method, rule, code), _DESCRIPTIONS[code]) if code != 403 or guarded else
                     LOOPBACK_HOST_ONLY)
        if code == 403 and guarded:
            described += "; or " + LOOPBACK_HOST_ONLY[0].lower() + LOOPBACK_HOST_ONLY[1:]
        op["responses"][str(code)] = {"description": described, "content": {
            "application/json": {"schema": _ERROR_BODIES.get((method, rule, code), ERROR)}}}
    if guarded:
        op["security"] = [{"bearer": []}, {}]
    return op


def query_parameters(method: str, rule: str) -> frozenset[str]:
    """The query parameters the route ``rule`` (Quart's form) reads for ``method`` (HEAD as GET)."""
    method = "GET" if method == "HEAD" else method
    return frozenset(name for name, _, _ in RECEIPT_QUERY_PARAMS.get((method, rule), _QUERY_PARAMS.get(rule, [])))


def openapi_document(version: str, quorum: bool = False) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for method, rule, summary, request_schema, ok_schema, errors in ROUTES + (QUORUM_ROUTES if quorum else []):
        paths.setdefault(openapi_path(rule), {})[method.lower()] = _operation(
            method, rule, summary, request_schema, ok_schema, errors)
    return {
        "openapi": "3.1.0",
        "info": {"title": "DSDN coordinator", "version": version, "description": (
            "Errors are JSON {error, message} (plus field on 422). Two answers come from the HTTP server "
            "before the app sees the request and have no JSON body: 400 for a request line it cannot parse "
            "(for example raw non-ASCII bytes in the path: send them percent-encoded) and 431 for headers "
            "over its limit.")},
        "paths": paths,
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
