"""The live cluster dashboard: ``GET /dashboard`` and its assets, ``GET /cluster/members``, and the CORS header
on the read-only routes the dashboard polls.

This module owns the dashboard: the routes that serve the static page (``api/static/dashboard.html``,
``dashboard.js``, ``dashboard.css``: no CDN, no build step; found through the package, so they work from an
installed package), the member list the page starts from, and the narrow ``Access-Control-Allow-Origin: *``
the page needs to poll the other coordinators' own JSON endpoints from the browser (GET only, on the routes in
``POLLED`` only). Everything the page shows comes from existing endpoints; it keeps its history client-side.

A member's HTTP URL is not part of the cluster config (that lists peer addresses). A coordinator that hosts a
quorum validator signs with its member key, so the QuorumDA list (QUORUM_VALIDATORS with
QUORUM_VALIDATOR_KEYS) names the HTTP URL of every member that is also a validator (``dsdn cluster up`` makes
every coordinator one); a member found there gets its URL, one that is not gets ``http_url: null`` (the page
shows it as unknown), and this coordinator is ``self`` (the page reaches it at its own origin).
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from quart import Response, request
from quart_trio import QuartTrio

from node.config import Config
from protocol.manager import host_port

STATIC_PACKAGE = "api"
# route → (file in api/static, media type)
ASSETS: dict[str, tuple[str, str]] = {
    "/dashboard": ("dashboard.html", "text/html; charset=utf-8"),
    "/dashboard/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}
# The GET routes the page polls on every member: they answer any origin (read-only JSON, no credentials).
POLLED = frozenset({"/health", "/ready", "/state/root", "/cluster/status", "/cluster/peers", "/cluster/members",
                    "/da/routing", "/da/metrics", "/receipts", "/system/info"})
# The page runs no inline script or style; it fetches JSON from any coordinator (their URLs come from the config).
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src *; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

_STR = {"type": "string"}
_NULLABLE_STR = {"type": ["string", "null"]}
MEMBERS = {"type": "object", "required": ["self", "members"], "properties": {
    "self": {**_NULLABLE_STR, "description": "this coordinator's member id (null outside a cluster)"},
    "members": {"type": "array", "items": {
        "type": "object", "required": ["id", "public_key", "peer_address", "http_url", "self"], "properties": {
            "id": _STR, "public_key": _STR, "peer_address": _NULLABLE_STR,
            "http_url": {**_NULLABLE_STR, "description": "null: unknown (not a quorum validator of this config), "
                                                         "or this coordinator itself"},
            "self": {"type": "boolean"}}}}}}

# (method, path, summary, request schema, 200 schema, other statuses): merged into api/openapi.py's ROUTES
DASHBOARD_ROUTES: list[tuple[str, str, str, dict[str, Any] | None, dict[str, Any], tuple[int, ...]]] = [
    ("GET", "/dashboard", "The live cluster dashboard (an HTML page that polls every member's JSON endpoints)",
     None, _STR, ()),
    ("GET", "/dashboard/", "The same page (typed with a trailing slash)", None, _STR, ()),
    ("GET", "/dashboard/dashboard.js", "The dashboard's script", None, _STR, ()),
    ("GET", "/dashboard/dashboard.css", "The dashboard's style sheet", None, _STR, ()),
    ("GET", "/cluster/members", "Every cluster member: id, public key, peer address, HTTP URL (when known)",
     None, MEMBERS, ()),
]
# The media type of each route whose 200 is not JSON (api/openapi.py documents it so).
DASHBOARD_MEDIA: dict[tuple[str, str], str] = {("GET", path): media.split(";")[0] for path, (_, media) in
                                               ASSETS.items()}
DASHBOARD_MEDIA["GET", "/dashboard/"] = DASHBOARD_MEDIA["GET", "/dashboard"]


def load_assets() -> dict[str, tuple[bytes, str]]:
    """Each asset route's bytes and content type, read from the installed package."""
    folder = resources.files(STATIC_PACKAGE).joinpath("static")
    return {path: (folder.joinpath(name).read_bytes(), media) for path, (name, media) in ASSETS.items()}


def members_json(config: Config, public_key: bytes) -> dict[str, Any]:
    """The member list of ``/cluster/members``."""
    by_key = dict(zip(config.quorum_validator_keys, config.quorum_validators, strict=False))
    if not config.peers:
        return {"self": None, "members": [{"id": config.coordinator_id, "public_key": public_key.hex(),
                                           "peer_address": None, "http_url": None, "self": True}]}
    me = next((p.id for p in config.peers if p.public_key == public_key), None)
    return {"self": me, "members": [
        {"id": p.id, "public_key": p.public_key.hex(), "peer_address": host_port(p.host, p.port),
         "http_url": None if p.id == me else by_key.get(p.public_key), "self": p.id == me}
        for p in config.peers]}


def register_dashboard_routes(app: QuartTrio, config: Config, public_key: bytes) -> None:
    """Serve the dashboard and /cluster/members, and let any origin read the routes in ``POLLED``.
    ``public_key``: this coordinator's member key (which entry of the cluster config it is)."""
    assets = load_assets()  # a few kB, read once at start-up: no file I/O while serving
    members = members_json(config, public_key)

    def asset(path: str) -> Response:
        body, media = assets[path]
        return Response(body, 200, {"Content-Type": media, "Cache-Control": "no-cache",
                                    "X-Content-Type-Options": "nosniff", "Content-Security-Policy": CSP})

    @app.get("/dashboard")
    @app.get("/dashboard/")  # (typed with a slash, it was a 404: a fresh user's run; the page's links are absolute)
    async def dashboard() -> Response:
        return asset("/dashboard")

    @app.get("/dashboard/dashboard.js")
    async def dashboard_js() -> Response:
        return asset("/dashboard/dashboard.js")

    @app.get("/dashboard/dashboard.css")
    async def dashboard_css() -> Response:
        return asset("/dashboard/dashboard.css")

    @app.get("/cluster/members")
    async def cluster_members() -> dict[str, Any]:
        return members

    @app.after_request
    async def allow_any_origin(response: Response) -> Response:
        if request.method in ("GET", "HEAD") and request.path in POLLED:
            response.headers["Access-Control-Allow-Origin"] = "*"
        return response
