"""The OpenAPI 3.1 document served at /openapi.json, built from one route table.

``ROUTES`` is checked against the app's URL map at start-up (api.app._check_routes), so a route cannot
be added without being documented.
"""

from __future__ import annotations

import re
from typing import Any

NUM = {"type": "number"}
NUM_OR_NULL = {"type": ["number", "null"]}
STR = {"type": "string"}
BOOL = {"type": "boolean"}
INT = {"type": "integer", "minimum": 0}
OK = {"type": "object", "properties": {"ok": BOOL}, "required": ["ok"]}
ERROR = {"type": "object", "properties": {"error": STR, "message": STR}, "required": ["error"]}
NODE = {"type": "object", "required": ["id", "zone", "addr", "capacity_gb", "meta"],
        "properties": {"id": STR, "zone": STR, "addr": STR, "capacity_gb": INT, "meta": {"type": "object"}}}
STATS = {"type": "object", "properties": {k: NUM for k in
                                          ("cpu_free", "ram_free_mb", "gpu_free", "latency_ms", "io_pressure")}}
REGISTER = {"type": "object", "required": ["id", "zone", "addr"], "properties": {
    "id": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"}, "zone": STR,
    "addr": {"type": "string", "description": "host:port"}, "capacity_gb": {"type": ["integer", "null"], "minimum": 0}}}
STATS_IN = {"type": "object", "required": ["cpu_free", "ram_free_mb"], "properties": {
    "cpu_free": NUM, "ram_free_mb": NUM, "gpu_free": NUM, "latency_ms": {"type": "number", "exclusiveMinimum": 0},
    "io_pressure": {"type": "number", "minimum": 0, "maximum": 1}}}
WORKLOAD = {"type": "object", "properties": {k: NUM_OR_NULL for k in
                                             ("cpu_req", "ram_req_mb", "gpu_req", "max_latency_ms", "io_tolerance")}}
WEIGHTS = {"type": "object", "properties": {k: NUM for k in ("w_cpu", "w_ram", "w_gpu", "w_latency", "w_io")}}
OBJECT_IN = {"type": "object", "required": ["hash", "size"], "properties": {"hash": STR, "size": INT}}
OBJECT = {"type": "object", "properties": {"hash": STR, "size": INT, "replicas": {"type": "array", "items": STR}}}
REPLICA_IN = {"type": "object", "required": ["hash", "node_id"], "properties": {"hash": STR, "node_id": STR}}
DA_POST_IN = {"type": "object", "required": ["data_hex"], "properties": {"data_hex": STR}}
OBJ = {"type": "object"}
IDS = {"type": "array", "items": STR}

# (method, path as Quart writes it, summary, request body schema or None, 200 schema, other statuses)
ROUTES: list[tuple[str, str, str, dict[str, Any] | None, dict[str, Any], tuple[int, ...]]] = [
    ("POST", "/register", "Register or update a node", REGISTER, OK, (400, 401, 413, 415, 422)),
    ("GET", "/nodes", "List all nodes (sorted by id)", None, {"type": "array", "items": NODE}, ()),
    ("GET", "/node/<node_id>", "Get one node", None, NODE, (404,)),
    ("GET", "/node/<node_id>/stats", "Get a node's runtime stats", None, OBJ, ()),
    ("POST", "/node/<node_id>/stats", "Report a node's runtime stats", STATS_IN, OBJ, (400, 401, 404, 415, 422)),
    ("GET", "/placement/<key>", "Replica placement for a hash (?rf=1..64, default 3)", None, IDS, (422,)),
    ("POST", "/schedule", "Pick the best node for a workload", WORKLOAD, OBJ, (400, 404, 415, 422)),
    ("POST", "/scheduler/config", "Set scheduler weights", WEIGHTS, OBJ, (400, 401, 415, 422)),
    ("POST", "/object/register", "Register an object (or update its size)", OBJECT_IN, OK, (400, 401, 415, 422)),
    ("GET", "/object/<obj>", "Get an object and its replicas", None, OBJECT, (404,)),
    ("POST", "/replica/mark_missing", "Mark a replica missing", REPLICA_IN, OK, (400, 401, 404, 415, 422)),
    ("POST", "/replica/mark_healed", "Mark a replica healed", REPLICA_IN, OK, (400, 401, 404, 415, 422)),
    ("POST", "/da/post", "Post a raw blob to DA", DA_POST_IN, OBJ, (400, 401, 413, 415, 422, 503)),
    ("GET", "/da/metrics", "DA counters and latencies", None, OBJ, ()),
    ("GET", "/da/routing", "DA routing state", None, OBJ, ()),
    ("GET", "/fallback/status", "Fallback status", None, OBJ, ()),
    ("GET", "/fallback/pending", "Blobs pending reconciliation, oldest first (?limit=1..1000, default 1000)", None,
     {"type": "array"}, (422,)),
    ("POST", "/fallback/reconcile", "Run reconciliation now", None, OBJ, (401, 409)),
    ("GET", "/fallback/consistency", "Check published blobs are readable from DA", None, OBJ, ()),
    ("GET", "/health", "Liveness and DA health (always 200 while the process lives)", None, OBJ, ()),
    ("GET", "/ready", "Readiness (503 while rebuilding or when no DA layer takes writes)", None, OBJ, (503,)),
    ("GET", "/system/info", "Version, node count and DA status", None, OBJ, ()),
    ("GET", "/state/root", "State root, events applied, events pending publication", None, OBJ, ()),
    ("GET", "/cluster/peers", "Each peer: id, address, state, rtt_ms, last_seen, messages in/out, errors", None,
     {"type": "array"}, ()),
    ("GET", "/cluster/status", "Group public key, threshold, members with their verifying shares, DKG state", None,
     OBJ, ()),
    ("POST", "/cluster/dkg", "Start a distributed key generation ({threshold?}); 202 with the session", None, OBJ,
     (401, 409, 422)),
    ("GET", "/openapi.json", "This document", None, OBJ, ()),
]

# Hosted only by a coordinator with QUORUM_VALIDATOR=true (api/blobstore.py documents them in full).
QUORUM_ROUTES: list[tuple[str, str, str, dict[str, Any] | None, dict[str, Any], tuple[int, ...]]] = [
    ("POST", "/quorum/v1/blobs", "Store a blob (raw body, ?namespace=<58 hex>, signed by a cluster member); "
     "returns the signed receipt", None, OBJ, (401, 403, 413, 415, 422, 503)),
    ("GET", "/quorum/v1/blobs/<blob_hash>", "A stored blob by SHA-256", None, OBJ, (404, 422)),
    ("GET", "/quorum/v1/log", "Stored blobs in log order (?after=&limit=&namespace=)", None, OBJ, (422,)),
    ("GET", "/quorum/v1/health", "Validator health, head position and public key", None, OBJ, ()),
]

_DESCRIPTIONS = {400: "Malformed JSON", 401: "Missing or wrong bearer token or signature",
                 403: "Writer not allowed", 404: "Not found",
                 413: "Body too large", 415: "Content-Type is not application/json",
                 409: "Conflict with the current state", 422: "Schema violation",
                 503: "Not ready / DA unavailable"}


def openapi_path(rule: str) -> str:
    return re.sub(r"<(?:[a-z]+:)?([A-Za-z_]+)>", r"{\1}", rule)


def openapi_document(version: str, quorum: bool = False) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for method, rule, summary, request_schema, ok_schema, errors in ROUTES + (QUORUM_ROUTES if quorum else []):
        op: dict[str, Any] = {
            "summary": summary,
            "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": ok_schema}}}},
        }
        params = [{"name": n, "in": "path", "required": True, "schema": STR}
                  for n in re.findall(r"\{([A-Za-z_]+)\}", openapi_path(rule))]
        if rule.startswith("/placement"):
            params.append({"name": "rf", "in": "query", "required": False,
                           "schema": {"type": "integer", "minimum": 1, "maximum": 64, "default": 3}})
        if params:
            op["parameters"] = params
        if request_schema is not None:
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": request_schema}}}
        for code in errors:
            op["responses"][str(code)] = {"description": _DESCRIPTIONS[code],
                                          "content": {"application/json": {"schema": ERROR}}}
        if method == "POST" and rule not in ("/schedule", "/quorum/v1/blobs"):
            op["security"] = [{"bearer": []}, {}]
        paths.setdefault(openapi_path(rule), {})[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "DSDN coordinator", "version": version},
        "paths": paths,
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
