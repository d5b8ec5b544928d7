"""Workaround for quart-trio 0.12 + hypercorn-trio 0.18 never closing HTTP/1.1 connections.

Hypercorn delivers ``http.disconnect`` to the app from inside the final body ``send``; quart-trio
then cancels its request nursery, which cancels the rest of that send (the close / keep-alive
recycle). Shielding the final send lets it finish. Regression test: tests/test_http_socket.py.
"""

from __future__ import annotations

from typing import Any

import trio

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
