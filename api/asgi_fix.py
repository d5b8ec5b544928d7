"""Workarounds in how our Quart apps are made (``quart_app``: the coordinator, the blob store, the devnet).

1. quart-trio 0.12 + hypercorn-trio 0.18 never close HTTP/1.1 connections: hypercorn delivers
   ``http.disconnect`` to the app from inside the final body ``send``; quart-trio then cancels its request
   nursery, which cancels the rest of that send (the close / keep-alive recycle). Shielding the final send lets
   it finish. Regression test: tests/test_http_socket.py.
2. Werkzeug's router merges repeated slashes by answering a 308 redirect with an HTML body, which Quart hands
   out without calling any error handler (``GET /system//info``): our errors are JSON everywhere, so such a path
   is simply not a route (a JSON 404).
3. A WebSocket handshake (to any path: none of our apps has a WebSocket route) reached Quart, whose error
   handling then ran ours outside any request context: a 500 and a logged traceback for any client that sent
   ``Upgrade: websocket``. It is answered here with our JSON 404, before Quart sees it.
4. A ``Host`` header that is no valid host name (``..``, ``a..b``, a label of 64 characters) made Werkzeug raise
   ``BadHost`` while Quart built the request context, before any error handler of ours: hypercorn answered an
   empty 500 and logged a traceback, on every route, with no token needed (a reviewer's reproduction). It is
   answered here with our JSON 400.
5. Quart answers OPTIONS by itself with an empty ``text/html`` 200: a 204 with ``Allow`` (``allowed_methods``).
6. An answer given before the request's body was all received (a 413 for its ``Content-Length``, a 401, a 415) ended
   the connection: hypercorn cannot recycle it, but said nothing, and a keep-alive client sent its next request
   on it and lost it ("server disconnected without sending a response": a POST is not retried; a reviewer's
   reproduction). An error answer reads the rest of a small body for a moment first; otherwise the answer says
   ``Connection: close`` (``finish_body_or_close``).
7. hypercorn hands the router the percent-decoded path: ``/node/n1%2Fstats`` was routed as ``/node/n1/stats`` (a
   lookup of node ``n1/stats`` answered for ``n1``, and a POST stored stats for ``n1``: a reviewer's reproduction).
   No id of ours holds a '/': a path with an encoded slash is a JSON 404 (``refuse_encoded_slashes``).
"""

from __future__ import annotations

import json
from typing import Any

import trio
from quart import Response, request
from quart.globals import request_ctx
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

Scope = dict[str, Any]


def refuse_websockets(asgi_app: Any) -> Any:
    async def wrapped(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            await _refuse_websocket(scope, receive, send)
        else:
            await asgi_app(scope, receive, send)

    return wrapped


async def _refuse_websocket(scope: Scope, receive: Any, send: Any) -> None:
    """Answer a WebSocket handshake with a JSON 404 (or a plain refusal where the server cannot send one)."""
    message = await receive()
    if message.get("type") != "websocket.connect":
        return
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1008})
        return
    body = json.dumps({"error": "not_found", "message": f"no WebSocket route for {scope.get('path', '')!r}: "
                       "this server has none"}).encode()
    await send({"type": "websocket.http.response.start", "status": 404,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "websocket.http.response.body", "body": body})


def refuse_encoded_slashes(asgi_app: Any) -> Any:
    async def wrapped(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and b"%2f" in scope.get("raw_path", b"").lower():
            body = json.dumps({"error": "not_found", "message": "no route: a path parameter holding '/' (%2F) "
                               "matches none"}).encode()
            await send({"type": "http.response.start", "status": 404,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode()),
                                    (b"connection", b"close")]})  # (its body, if any, is not read: see 6.)
            await send({"type": "http.response.body", "body": body})
            return
        await asgi_app(scope, receive, send)

    return wrapped


def refuse_bad_host(asgi_app: Any) -> Any:
    async def wrapped(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not _valid_host(scope):
            body = json.dumps({"error": "bad_request", "message": "invalid Host header"}).encode()
            await send({"type": "http.response.start", "status": 400,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        await asgi_app(scope, receive, send)

    return wrapped


def _valid_host(scope: Scope) -> bool:
    """Whether Werkzeug's router takes the request's ``Host`` (its name part IDNA-encodes, as it checks)."""
    for name, value in scope.get("headers", ()):
        if name == b"host":
            try:
                value.decode("latin-1").lower().partition(":")[0].encode("idna")
            except UnicodeError:
                return False
            return True
    return True


def shield_final_send(asgi_app: Any) -> Any:
    async def wrapped(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await asgi_app(scope, receive, send)
            return

        async def send_shielded(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                with trio.CancelScope(shield=True):
                    await send(message)
                return
            await send(message)

        await asgi_app(scope, receive, send_shielded)

    return wrapped


def quart_app(name: str) -> QuartTrio:
    """A QuartTrio app with the seven workarounds, before any route is added (a rule takes the map's slash
    setting)."""
    app = QuartTrio(name)
    app.url_map.merge_slashes = False
    app.asgi_app = refuse_websockets(refuse_encoded_slashes(refuse_bad_host(  # type: ignore[method-assign]
        shield_final_send(app.asgi_app))))
    app.make_default_options_response = _options  # type: ignore[method-assign]
    app.after_request(finish_body_or_close)
    return app


#: an error answered before a small body (up to DRAIN_BYTES) was all read waits up to DRAIN_S for the rest, so the
#: connection stays usable (a body in flight on a LAN arrives within that); anything else closes the connection
DRAIN_BYTES = 64 * 1024
DRAIN_S = 0.1


async def finish_body_or_close(response: Response) -> Response:
    """An HTTP/1 answer given before the request's body was all read (see 6.; HTTP/2 has no such header, a stream
    ends alone): an error answer (401, 415, 422 ...) to a small body reads the rest of it for a moment first, so
    hypercorn can take the connection's next request (saying ``Connection: close`` to every early 401 or 422 cost a
    reconnect, and a request pipelined behind it was lost); any other answer, a 413 or 503, a larger body or one
    that does not come within DRAIN_S, says ``Connection: close``. (Waiting up to 2 s for a 1 MiB body on any answer
    let an anonymous client hold each request that long: a regression review.)"""
    if request.http_version not in ("1.0", "1.1"):
        return response
    length = request.content_length
    if not (length or "chunked" in request.headers.get("Transfer-Encoding", "").lower()):
        return response
    complete = getattr(request.body, "_complete", None)  # (quart's Body: set once the last part arrived, or the
    if complete is not None and complete.is_set() and response.status_code not in (413, 503):  # limit passed)
        return response
    drain = (complete is not None and 400 <= response.status_code < 500 and response.status_code != 413
             and length is not None and length <= DRAIN_BYTES)
    if drain:
        with trio.move_on_after(DRAIN_S):
            try:
                await request.get_data(cache=False)
                return response
            except HTTPException:  # (over the app's limit as it arrived)
                pass
    response.headers["Connection"] = "close"
    return response


async def _options() -> Response:
    return Response("", 204, {"Allow": allowed_methods(())}, content_type="text/plain")


def allowed_methods(fallback: Any) -> str:
    """The methods of the route the request's path names (for ``Allow``: a 405 must list them, RFC 9110 §15.5.6).
    A fixed route wins over one with a parameter: /object/register allows POST (and OPTIONS), though
    GET /object/<obj> serves the object named register."""
    try:
        adapter = request_ctx.url_adapter
        rule, _ = adapter.match(method="OPTIONS", return_rule=True)  # type: ignore[union-attr]
        methods = {m for r in adapter.map.iter_rules() if r.rule == rule.rule for m in r.methods or ()}  # type: ignore[union-attr]
    except HTTPException:
        methods = fallback
    return ", ".join(sorted(methods))
