"""The app factory and every route: the seed's 22 endpoints plus /state/root and /openapi.json.

Errors are JSON everywhere: ``{"error": <code>, "message": <text>}`` plus the fields the seed
documents (``node_id``, ``hash``). Malformed JSON → 400, wrong content type → 415, schema → 422,
unknown → 404, too large → 413, unauthorized → 401; too many writes in flight → 503 ``overloaded`` with
Retry-After (MAX_INFLIGHT_WRITES). Never a 500 for bad input.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any
from urllib.parse import quote, urlsplit

from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from api import validation as v
from api.asgi_fix import allowed_methods, quart_app
from api.auth import bearer_matches
from api.blobstore import BlobStore, register_blobstore_routes
from api.dashboard import register_dashboard_routes
from api.limits import unique_names
from api.metrics import register_metrics_routes
from api.openapi import QUORUM_ROUTES, ROUTES, openapi_document, query_parameters
from api.receipts import node_public_key, register_receipt_routes
from consensus.dkg import DkgError
from consensus.dkg_service import DkgService
from consensus.receipt_service import LedgerView, ReceiptService
from node.config import is_loopback
from node.coordinator import VERSION, ClockConflict, Coordinator, NotFound
from node.da.base import DAError
from node.da.celestia import BlobTooLarge
from node.da.reconcile import MANUAL_PASS_S, AlreadyRunning
from node.da.router import is_caller_error
from node.da.status import EMERGENCY, PRIMARY, SECONDARY, Status, StatusSnapshot
from node.outbox import Overloaded
from node.scheduler import WEIGHT_NAMES, Workload
from protocol.manager import PeerManager

log = logging.getLogger("dsdn.api")
MAX_BODY = 1024 * 1024
JSONDict = dict[str, Any]


class ApiError(Exception):
    def __init__(self, status: int, body: JSONDict, headers: dict[str, str] | None = None) -> None:
        super().__init__(body.get("message", body.get("error")))
        self.status, self.body, self.headers = status, body, headers or {}


def json_response(value: Any, status: int = 200) -> Response:
    return Response(json.dumps(value, separators=(",", ":")), status, {"Content-Type": "application/json"})


def da_health_text(snap: StatusSnapshot) -> str:
    """The seed's ``Ok(<status>)`` text; ``Ok(Unavailable)`` when no layer takes writes."""
    return f"Ok({snap.status.value})" if snap.takes_writes else "Ok(Unavailable)"


def fallback_status_text(snap: StatusSnapshot) -> str:
    if not snap.takes_writes:
        return "unavailable"
    return {Status.HEALTHY: "primary_healthy", Status.WARNING: "primary_degraded",
            Status.DEGRADED: "fallback_secondary", Status.EMERGENCY: "fallback_emergency",
            Status.RECOVERING: "recovering"}[snap.status]


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


async def json_body() -> JSONDict:
    """The request body as a JSON object, or an ApiError with the right status."""
    if request.mimetype != "application/json":
        raise ApiError(415, {"error": "unsupported_media_type",
                             "message": "send the body as JSON with Content-Type: application/json"})
    charset = request.mimetype_params.get("charset", "utf-8").lower()
    if charset not in ("utf-8", "utf8"):  # JSON is UTF-8 (RFC 8259 §8.1); another charset was decoded as UTF-8
        raise ApiError(415, {"error": "unsupported_media_type",
                             "message": f"send the body as UTF-8 JSON (charset {charset!r} is not accepted)"})
    if (request.content_length or 0) > MAX_BODY:
        raise ApiError(413, {"error": "payload_too_large", "message": f"request body is larger than {MAX_BODY} bytes"})
    data = await request.get_data(as_text=False)
    if len(data) > MAX_BODY:  # a body without Content-Length
        raise ApiError(413, {"error": "payload_too_large", "message": f"request body is larger than {MAX_BODY} bytes"})
    try:  # UTF-8 only (a byte-order mark allowed): json.loads of bytes also guessed UTF-16 and UTF-32
        body = json.loads(data.decode("utf-8-sig"), parse_constant=_reject_constant, parse_int=_parse_int,
                          object_pairs_hook=unique_names)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, {"error": "malformed_json", "message": f"body is not valid JSON: {exc}"}) from None
    except RecursionError:
        raise ApiError(400, {"error": "malformed_json", "message": "body is nested too deeply"}) from None
    return v.require_object(body)


def _parse_int(text: str) -> int | float:
    """A JSON integer; one of more digits than any field takes is read as ±infinity, so the field's check refuses
    it as out of range (422), as it does 1e400: Python's limit on digits (4,300) answered 400 "malformed JSON"
    with a message about ``sys.set_int_max_str_digits``."""
    if len(text) > 64:
        return float("-inf") if text.startswith("-") else float("inf")
    return int(text)


def _same_origin(origin: str, host: str) -> bool:
    """Whether a browser's ``Origin`` is this server: the same host, and the same port once defaults are filled in
    (``http://h`` is ``http://h:80``); a Host without a port (a proxy in front, perhaps terminating TLS) matches the
    origin's host whatever its scheme."""
    defaults = {"http": 80, "https": 443}
    try:
        theirs, ours = urlsplit(origin), urlsplit(f"//{host}")
        their_port, our_port = theirs.port or defaults.get(theirs.scheme), ours.port
    except ValueError:  # a port that is no number
        return False
    if theirs.hostname is None or theirs.hostname != ours.hostname:
        return False
    return our_port is None or their_port == our_port


def create_app(coord: Coordinator, validator: BlobStore | None = None, peers: PeerManager | None = None,
               dkg: DkgService | None = None, receipts: ReceiptService | None = None,
               receipt_view: LedgerView | None = None) -> QuartTrio:
    """The coordinator's app; with ``validator`` it also hosts the quorum validator routes (/quorum/v1);
    ``peers``: its peer links (/cluster/peers); ``dkg``: the cluster key (/cluster/status, /cluster/dkg);
    ``receipts``: the receipt engine (/receipts, api/receipts.py); ``receipt_view``: the signed receipts of the
    state, served without an engine too."""
    app = quart_app("dsdn-coordinator")
    app.config["MAX_CONTENT_LENGTH"] = max(MAX_BODY, validator.max_body_bytes if validator else 0)
    app.config["BODY_TIMEOUT"] = 30
    app.json.sort_keys = False  # type: ignore[attr-defined]
    token = coord.config.api_token

    def mutating(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @wraps(fn)
        async def guarded(*args: Any, **kwargs: Any) -> Any:
            origin = request.headers.get("Origin")
            if origin is not None and not _same_origin(origin, request.host):
                # a browser's write on behalf of another site: a POST without a body needs no CORS preflight, so
                # any web page could start a DKG on a coordinator without a token (a reviewer's reproduction).
                # Our clients (CLI, SDKs, peers) send no Origin; the dashboard only reads.
                raise ApiError(403, {"error": "forbidden", "message": f"cross-origin writes are refused (Origin "
                                                                      f"{origin[:100]!r})"})
            if token is not None:
                given = request.headers.get("Authorization", "")
                if not bearer_matches(given, token):
                    raise ApiError(401, {"error": "unauthorized",
                                         "message": "this route needs Authorization: Bearer <COORDINATOR_API_TOKEN>"},
                                   {"WWW-Authenticate": "Bearer"})
            one_value_per_parameter()  # (after the token: a caller without one learnt which parameters count)
            return await fn(*args, **kwargs)

        guarded.mutating = True  # type: ignore[attr-defined]  # (its parameters are checked in it, not before)
        return guarded

    def one_value_per_parameter() -> None:
        """A query parameter the route reads, given twice, is refused: only the first value was checked and used,
        so ``?rf=3&rf=abc`` answered 200 (a reviewer's finding). Parameters a route does not read are ignored
        (``/health?_=1&_=2`` is a health check; an unknown path stays a 404, a missing token a 401)."""
        rule = request.url_rule
        if rule is None:
            return
        for name in query_parameters(request.method, rule.rule):
            if len(request.args.getlist(name)) > 1:
                raise v.Invalid(name, "one value (the parameter is given more than once)")

    # ---- errors ----------------------------------------------------------------------------------

    @app.errorhandler(ApiError)
    async def api_error(e: ApiError) -> Response:
        response = json_response(e.body, e.status)
        response.headers.update(e.headers)
        return response

    if token is None and is_loopback(coord.config.host):
        @app.before_request
        async def loopback_names_only() -> None:
            """Without a token, a server on loopback answers requests naming a loopback host only. DNS rebinding:
            a web page at http://evil.example:8080 whose name its owner re-pointed at 127.0.0.1 reads and writes
            this server as its own origin (Origin and Host both evil.example:8080, so the cross-origin check of
            ``mutating`` passes: a reviewer's reproduction); its browser still names evil.example in Host."""
            if not any(name == b"host" for name, _ in request.scope.get("headers", ())):
                return  # (HTTP/1.0 from a health checker, say: no browser, so no page behind it)
            name = (urlsplit(f"//{request.host}").hostname or "").rstrip(".")
            if not (is_loopback(name) or name.endswith(".localhost")):
                raise ApiError(403, {"error": "forbidden", "message": f"Host {request.host[:100]!r} does not name "
                                     "this server's loopback address (a name re-pointed at 127.0.0.1 by a web "
                                     "page?): use 127.0.0.1 or localhost, or set COORDINATOR_API_TOKEN"})

    @app.before_request
    async def parameters_of_reads() -> None:
        """``one_value_per_parameter`` before a read; a write checks its token first (``mutating``): a caller
        without one got the parameters' 422, not the 401 (a reviewer's reproduction)."""
        view = app.view_functions.get(request.endpoint or "")
        if not getattr(view, "mutating", False):
            one_value_per_parameter()

    @app.errorhandler(v.Invalid)
    async def invalid(e: v.Invalid) -> tuple[JSONDict, int]:
        return {"error": "invalid_request", "message": str(e), "field": e.field}, 422

    @app.errorhandler(Overloaded)
    async def overloaded(e: Overloaded) -> Response:
        response = json_response({"error": "overloaded", "message": str(e)}, 503)
        response.headers["Retry-After"] = "1"
        return response

    @app.errorhandler(ClockConflict)
    async def clock_conflict(e: ClockConflict) -> tuple[JSONDict, int]:
        return {"error": "clock_conflict", "message": str(e)}, 409

    @app.errorhandler(NotFound)
    async def not_found(e: NotFound) -> tuple[JSONDict, int]:
        body = e.body
        message = ("no node {node_id!r} is registered here" if "node_id" in body else
                   "no object {hash!r} is registered here" if "hash" in body else body["error"]).format_map(body)
        return {"message": message, **body}, 404  # (the body's own message, when it has one, goes first)

    @app.errorhandler(HTTPException)
    async def http_error(e: HTTPException) -> Response:
        code = e.code or 500
        names = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large", 400: "bad_request",
                 408: "request_timeout"}
        message = e.description or e.name
        if code == 404:
            message = f"no route for {request.method} {request.path}"
        elif code == 413:
            message = f"request body is larger than {MAX_BODY} bytes"
        response = json_response({"error": names.get(code, e.name.lower().replace(" ", "_")), "message": message},
                                 code)
        if code == 405:  # RFC 9110 §15.5.6: a 405 lists the methods the resource supports
            response.headers["Allow"] = allowed_methods(getattr(e, "valid_methods", None) or ())
        return response

    @app.errorhandler(sqlite3.Error)
    @app.errorhandler(OSError)
    async def storage_unavailable(e: Exception) -> Response:
        """Local storage failing (a full disk, an I/O error) under a write: the write was not stored; a 500 said
        less than this (the blob store answers the same)."""
        log.error("local storage failed on %s %s: %s", request.method, request.path, e)
        response = json_response({"error": "storage_unavailable", "message": f"local storage failed ({e}); the "
                                  "request was not stored, retry later"}, 503)
        response.headers["Retry-After"] = "5"
        return response

    @app.errorhandler(Exception)
    async def internal(e: Exception) -> tuple[JSONDict, int]:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return {"error": "internal", "message": f"internal error ({type(e).__name__}); see the coordinator log"}, 500

    # ---- nodes -----------------------------------------------------------------------------------

    @app.post("/register")
    @mutating
    async def register() -> JSONDict:
        body = await json_body()
        capacity = body.get("capacity_gb")
        await coord.register_node(
            v.node_id(body.get("id")), v.zone(body.get("zone")), v.addr(body.get("addr")),
            100 if capacity is None else v.integer(capacity, "capacity_gb"), node_public_key(body.get("public_key")),
        )
        return {"ok": True}

    @app.get("/nodes")
    async def nodes() -> Response:
        return json_response(coord.list_nodes())

    @app.get("/node/<node_id>")
    async def node(node_id: str) -> JSONDict:
        return coord.get_node(node_id)

    @app.get("/node/<node_id>/stats")
    async def node_stats(node_id: str) -> JSONDict:
        return coord.get_stats(v.node_id(node_id, "node_id"))  # an id that can never be registered: 422

    @app.post("/node/<node_id>/stats")
    @mutating
    async def put_node_stats(node_id: str) -> JSONDict:
        values = v.stats(await json_body())
        coord.put_stats(v.node_id(node_id, "node_id"), values)  # an id that can never be registered: 422, as GET
        return {"ok": True, "node_id": node_id}

    # ---- placement and scheduling ----------------------------------------------------------------

    @app.get("/placement/<key>")
    async def placement(key: str) -> Response:
        v.object_hash(key)
        return json_response(await coord.place(key, v.query_integer(request.args.get("rf"), "rf", 3, 1, 64)))

    @app.post("/schedule")
    async def schedule() -> JSONDict:
        chosen = coord.schedule(Workload(**v.workload(await json_body())))
        if chosen is None:
            raise ApiError(404, {"error": "no suitable node", "message": "no node with fresh stats fits the workload"})
        return {"node_id": chosen}

    @app.post("/scheduler/config")
    @mutating
    async def scheduler_config() -> JSONDict:
        weights = await coord.set_weights(v.weights(await json_body(), WEIGHT_NAMES))
        return {"ok": True, "message": "scheduler config updated", "config": weights}

    # ---- objects ---------------------------------------------------------------------------------

    @app.post("/object/register")
    @mutating
    async def object_register() -> JSONDict:
        body = await json_body()
        if body.get("size") is None:
            raise v.Invalid("size", "an integer (required)")
        await coord.register_object(v.object_hash(body.get("hash")), v.integer(body.get("size"), "size"))
        return {"ok": True}

    @app.get("/object/<obj>")
    async def get_object(obj: str) -> JSONDict:
        return coord.get_object(obj)

    async def _mark(present: bool) -> JSONDict:
        body = await json_body()
        await coord.mark_replica(v.object_hash(body.get("hash")), v.node_id(body.get("node_id"), "node_id"), present)
        return {"ok": True}

    @app.post("/replica/mark_missing")
    @mutating
    async def mark_missing() -> JSONDict:
        return await _mark(False)

    @app.post("/replica/mark_healed")
    @mutating
    async def mark_healed() -> JSONDict:
        return await _mark(True)

    # ---- DA and fallback ---------------------------------------------------------------------------

    @app.post("/da/post")
    @mutating
    async def da_post() -> tuple[JSONDict, int]:
        data = v.data_hex((await json_body()).get("data_hex"))  # bad hex: 422 like every schema violation
        if len(data) > coord.config.blob_max_bytes:
            return {"success": False, "error": "blob too large",
                    "message": f"blob is {len(data)} bytes; the limit is {coord.config.blob_max_bytes}"}, 413
        try:
            ref = await coord.da_post(data)
        except DAError as exc:
            if is_caller_error(exc):  # the DA layer refused this blob itself: not an outage
                return {"success": False, "error": "blob refused", "message": str(exc)}, (
                    413 if isinstance(exc, BlobTooLarge) else 422)
            return {"success": False, "error": "da unavailable", "message": str(exc)}, 503
        return {"success": True, "commitment": ref.commitment.hex(), "height": ref.height, "layer": ref.layer}, 200

    @app.get("/da/metrics")
    async def da_metrics() -> JSONDict:
        snap = coord.da_view()
        layers = {name: layer.metrics_json(snap.healthy[name]) for name, layer in coord.da.layers.items()}
        return {**layers[snap.routing], "routing": snap.routing, "layers": layers,
                "router": {"fallthroughs": coord.da.router.fallthroughs, "posts": coord.da.router.posts_by_layer}}

    @app.get("/da/routing")
    async def da_routing() -> JSONDict:
        snap = coord.da_view()
        return {"current_state": snap.routing, "primary_healthy": snap.healthy[PRIMARY],
                "secondary_healthy": snap.healthy.get(SECONDARY, False),
                "emergency_healthy": snap.healthy.get(EMERGENCY, False), "fallback_active": snap.fallback_active,
                "pending_reconcile": coord.da.pending.pending_count, "status": snap.status.value,
                "write_order": list(snap.write_order)}

    @app.get("/fallback/status")
    async def fallback_status() -> JSONDict:
        snap = coord.da_view()
        return {"current_status": fallback_status_text(snap), "fallback_active": snap.fallback_active,
                "fallback_reason": snap.fallback_reason, "pending_reconcile_count": coord.da.pending.pending_count,
                "last_fallback_at": snap.last_fallback_at, "status": snap.status.value,
                "reconciling": coord.da.reconciler.running, "reconciliation": coord.da.reconciler.progress()}

    @app.get("/fallback/pending")
    async def fallback_pending() -> Response:
        limit = v.query_integer(request.args.get("limit"), "limit", 1000, 1, 1000)
        after = request.args.get("after")
        if after is not None and not 0 < len(after) <= 256:
            raise v.Invalid("after", "a blob_id from a previous page")
        page = await coord.da.pending.list_pending(limit, after)
        if page is None:
            raise NotFound({"error": "not found", "after": after,
                            "message": "no blob has this blob_id (any more): start again without after"})
        response = json_response(page)
        if len(page) == limit:  # maybe more: the seed's bare array cannot say so (a client following it read only
            # the first 1,000 without a word: a reviewer's find); the next page's address, RFC 8288
            response.headers["Link"] = (f'</fallback/pending?after={quote(page[-1]["blob_id"], safe="")}'
                                        f'&limit={limit}>; rel="next"')
        return response

    @app.post("/fallback/reconcile")
    @mutating
    async def fallback_reconcile() -> JSONDict:
        try:
            report = await coord.da.reconciler.run_pass(deadline_s=MANUAL_PASS_S)
        except AlreadyRunning:
            raise ApiError(409, {"error": "reconciliation_running",  # noqa: B904 - the cause is not an error
                                 "message": "a reconciliation pass is already running; try again when it ends"})
        return report.as_json()

    @app.get("/fallback/consistency")
    async def fallback_consistency() -> JSONDict:
        return await coord.consistency()

    # ---- system ----------------------------------------------------------------------------------

    @app.get("/health")
    async def health() -> JSONDict:
        snap = coord.da_view()
        if not snap.takes_writes:
            status = "unavailable"
        elif snap.status is Status.HEALTHY:
            status = f"healthy (routing: {snap.routing})"
        else:
            status = f"degraded (routing: {snap.routing})"
        return {"status": status, "da_available": snap.takes_writes, "da_health": da_health_text(snap),
                "metrics": coord.da.layers[snap.routing].metrics_json(snap.healthy[snap.routing]),
                "ready": coord.readiness()["ready"]}

    @app.get("/ready")
    async def ready() -> tuple[JSONDict, int]:
        verdict = coord.readiness()
        return verdict, 200 if verdict["ready"] else 503

    @app.get("/system/info")
    async def system_info() -> JSONDict:
        snap = coord.da_view()
        return {"version": VERSION, "node_count": coord.state.node_count, "da_status": da_health_text(snap),
                "routing_state": snap.routing, "fallback_active": snap.fallback_active,
                "coordinator_id": coord.id, "public_key": coord.public_key.hex()}

    @app.get("/cluster/peers")
    async def cluster_peers() -> Response:
        return json_response(peers.status() if peers is not None else [])

    @app.get("/cluster/status")
    async def cluster_status() -> JSONDict:
        if dkg is None:
            return {"group_public_key": None, "threshold": None, "members": [],
                    "dkg": {"state": "unavailable", "session": None, "error": "this coordinator has no cluster "
                            "configuration (CLUSTER_CONFIG or CLUSTER_PEERS)", "waiting_for": [], "sessions_run": 0,
                            "excluded": [], "refused_starts": [], "pending_sessions": [], "left_out": None},
                    "receipts": None}
        return {**dkg.status(), "receipts": receipts.status() if receipts is not None else None}

    @app.post("/cluster/dkg")
    @mutating
    async def cluster_dkg() -> tuple[JSONDict, int]:
        threshold, leave_out = None, None
        if request.content_length or await request.get_data(as_text=False):  # the body {threshold?} is optional
            body = await json_body()
            if body.get("threshold") is not None:
                threshold = v.integer(body["threshold"], "threshold", 1, 255)
            if body.get("leave_out") is not None:  # members unreachable for good, left out without proof
                given = body["leave_out"]
                if not isinstance(given, list) or len(given) > 255:
                    raise v.Invalid("leave_out", "a list of member ids")
                leave_out = [v.node_id(m, "leave_out") for m in given]
        if dkg is None:
            raise ApiError(409, {"error": "no_cluster", "message": "this coordinator has no cluster configuration"})
        try:
            session = dkg.start(threshold, leave_out)
        except DkgError as exc:
            already = "already" in str(exc)
            raise ApiError(409 if already else 422, {"error": "dkg_refused", "message": str(exc)}) from None
        return {"session": session.hex(), "threshold": dkg.status()["threshold"]}, 202

    @app.get("/state/root")
    async def state_root() -> JSONDict:
        return {"root": coord.state.root().hex(), "events_applied": coord.state.events_applied,
                "pending": coord.outbox.pending}

    @app.get("/openapi.json")
    async def openapi() -> JSONDict:
        return openapi_document(VERSION, quorum=validator is not None)

    def registered_key(node_id: str) -> bytes | None:
        return coord.state.ledger.key_of(node_id) if coord.state.node(node_id) is not None else None

    register_receipt_routes(app, receipts, receipt_view, mutating, json_body, ApiError, registered_key)
    register_metrics_routes(app, coord, peers, dkg, receipts)  # GET /metrics, no auth (like /health)
    register_dashboard_routes(app, coord.config, coord.public_key)  # GET /dashboard, /cluster/members
    if validator is not None:
        register_blobstore_routes(app, validator)
    _check_routes(app, quorum=validator is not None)
    return app


def _check_routes(app: QuartTrio, quorum: bool) -> None:
    """Every served route is documented and every documented route is served."""
    served = {(m, r.rule) for r in app.url_map.iter_rules() if r.endpoint != "static"
              for m in (r.methods or ()) if m not in ("HEAD", "OPTIONS")}
    documented = {(method, path) for method, path, *_ in ROUTES + (QUORUM_ROUTES if quorum else [])}
    if served != documented:
        raise RuntimeError(f"OpenAPI and routes differ: {sorted(served ^ documented)}")
