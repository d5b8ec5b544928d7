"""Workarounds in how our Quart apps are made (``quart_app``: the coordinator, the blob store, the devnet).

1. quart-trio 0.12 + hypercorn-trio 0.18 never close HTTP/1.1 connections: hypercorn delivers
   ``http.disconnect`` to the app from inside the final body ``send``; quart-trio then cancels its request
   nursery, which cancels the rest of that send (the close / keep-alive recycle). Shielding the final send lets
   it finish. Regression test: tests/test_http_socket.py.
2. Werkzeug's router merges repeated slashes by answering a 308 redirect with an HTML body, which Quart hands
   out without calling any error handler (``GET /system//info``): our errors are JSON everywhere, so such a path
   is simply not a route (a JSON 404).
"""

from __future__ import annotations

from typing import Any

import trio
from quart_trio import QuartTrio

Scope = dict[str, Any]


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
    """A QuartTrio app with both workarounds, before any route is added (a rule takes the map's slash setting)."""
    app = QuartTrio(name)
    app.url_map.merge_slashes = False
    app.asgi_app = shield_final_send(app.asgi_app)  # type: ignore[method-assign]
    return app
