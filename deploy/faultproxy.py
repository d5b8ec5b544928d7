"""A small TCP fault proxy for one directed peer link: pass, cut, delay or throttle what flows through it.

The nemesis puts one in front of every coordinator's peer port for every other member (member a dials b
through proxy a→b), so one link can be broken without touching the processes. ``cut`` closes the link's
connections and refuses new ones; ``delay_ms`` holds every chunk that long; ``rate`` caps bytes per second.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial

import trio

log = logging.getLogger("dsdn.faultproxy")
CHUNK = 65536


@dataclass
class LinkProxy:
    name: str
    target_port: int
    cut: bool = False
    delay_ms: float = 0.0
    rate: float = 0.0  # bytes per second; 0: unlimited
    port: int = 0
    connections: int = 0
    _scopes: set[trio.CancelScope] = field(default_factory=set)

    def set(self, *, cut: bool = False, delay_ms: float = 0.0, rate: float = 0.0) -> None:
        self.cut, self.delay_ms, self.rate = cut, delay_ms, rate
        if cut:
            for scope in list(self._scopes):
                scope.cancel()

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream) -> None:
        upstream: trio.SocketStream | None = None
        with trio.CancelScope() as scope:  # registered before the connect: a cut during it ends this one too
            self._scopes.add(scope)
            try:
                if not self.cut:
                    try:
                        with trio.fail_after(2):
                            upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
                    except (OSError, trio.TooSlowError):
                        upstream = None
                if upstream is not None and not self.cut:
                    self.connections += 1
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(partial(self._pipe, client, upstream, nursery.cancel_scope))
                        nursery.start_soon(partial(self._pipe, upstream, client, nursery.cancel_scope))
            finally:
                self._scopes.discard(scope)
        with trio.CancelScope(shield=True):
            await client.aclose()
            if upstream is not None:
                await upstream.aclose()

    async def _pipe(self, src: trio.SocketStream, dst: trio.SocketStream, done: trio.CancelScope) -> None:
        try:
            while True:
                data = await src.receive_some(CHUNK)
                if not data:
                    break
                if self.delay_ms:
                    await trio.sleep(self.delay_ms / 1000)
                if self.rate:
                    await trio.sleep(len(data) / self.rate)
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        done.cancel()
