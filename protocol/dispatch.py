"""What a node does with messages whatever carries them (real links or the simulated network):
subscriptions by type, request/response with timeouts, and request handlers.

Request handlers are bounded too: at most ``max_handlers`` run at once, and at most ``max_handlers_per_peer``
(a quarter of them) for one peer, so a member flooding requests it never waits for cannot take every handler
from the others (a cluster tolerates at most three faulty members of ten); a request beyond either is dropped
and counted (the requester times out). Each handler gets ``handler_timeout_s`` to answer; a reply that cannot
be encoded (a handler's bug) is logged and not sent, never raised into the transport.
Subscriber channels are bounded, in messages (``subscriber_buffer``) and in the bytes of their encodings
(``subscriber_bytes``: a member's 1,024 messages of 1 MiB parked a GiB in a busy layer's channel, a reviewer's
reproduction; one message larger than the budget still gets through an empty channel). A full one makes delivery
wait (the link's reader stops reading, so TCP slows the sender down) for up to ``backpressure_s``; a subscriber stuck
longer than that loses the message (counted by the caller), so one stuck layer cannot stall a link forever. A
handler's exception is logged, never raised into the transport.

A reply is bound to its request: it names its id, which starts at a random 62-bit number in every process (a
reply queued for a previous run of this node, before a restart, names none of this run's requests), it must
come from the peer asked and be of the type the requester expects (``request(..., expect=...)``); any other
message naming the request, or a reply to no pending request (late, or made up), is dropped and counted
(``stray_replies``, ``late_replies``), and the request keeps waiting for the real answer.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from protocol.envelope import Message

log = logging.getLogger("dsdn.peers")
Handler = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


class SendFn(Protocol):
    def __call__(self, peer_id: str, type_: str, body: dict[str, Any], *, id_: int | None = None,
                 re: int | None = None) -> bool: ...


class Inbox:
    """A subscriber's end of its channel: ``(peer id, message)`` in arrival order (``receive``, ``receive_nowait``,
    ``async for``), with the bytes still queued counted for the dispatcher's budget."""

    def __init__(self, send: trio.MemorySendChannel[tuple[str, Message, int]],
                 recv: trio.MemoryReceiveChannel[tuple[str, Message, int]], max_bytes: int) -> None:
        self._send, self._recv, self.max_bytes = send, recv, max_bytes
        self.queued_bytes = 0
        self._drained = trio.Event()  # set whenever a message is taken: a delivery over budget waits on it

    def _taken(self, item: tuple[str, Message, int]) -> tuple[str, Message]:
        self.queued_bytes -= item[2]
        self._drained.set()
        return item[0], item[1]

    async def receive(self) -> tuple[str, Message]:
        return self._taken(await self._recv.receive())

    def receive_nowait(self) -> tuple[str, Message]:
        return self._taken(self._recv.receive_nowait())

    def __aiter__(self) -> Inbox:
        return self

    async def __anext__(self) -> tuple[str, Message]:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    def put_nowait(self, item: tuple[str, Message, int]) -> None:
        """Queue ``item`` (its size last) if it fits in both budgets, else raise trio.WouldBlock."""
        if self.queued_bytes and self.queued_bytes + item[2] > self.max_bytes:
            raise trio.WouldBlock
        self._send.send_nowait(item)
        self.queued_bytes += item[2]

    async def put(self, item: tuple[str, Message, int]) -> None:
        """Queue ``item`` once it fits (the caller bounds the wait)."""
        while True:
            try:
                self.put_nowait(item)
                return
            except trio.WouldBlock:
                pass
            if self.queued_bytes and self.queued_bytes + item[2] > self.max_bytes:
                if self._drained.is_set():  # (one event for every waiting delivery: each gets its turn)
                    self._drained = trio.Event()
                await self._drained.wait()
            else:  # (counted before it is handed over: the receiver may take it, and subtract it, at once)
                self.queued_bytes += item[2]
                try:
                    await self._send.send(item)
                except BaseException:  # not sent (cancelled, closed)
                    self.queued_bytes -= item[2]
                    raise
                return


@dataclass
class _Pending:
    peer_id: str
    expect: str
    done: trio.Event = field(default_factory=trio.Event)
    reply: Message | None = None


class Dispatcher:
    def __init__(self, send: SendFn, subscriber_buffer: int = 1024, backpressure_s: float = 1.0,
                 max_handlers: int = 64, handler_timeout_s: float = 30.0, *, first_id: int | None = None,
                 subscriber_bytes: int = 16 << 20) -> None:
        """``first_id``: the id of the first request (random unless given: the simulation's are seeded)."""
        self._send = send
        self.max_handlers, self.handler_timeout_s = max_handlers, handler_timeout_s
        self.max_handlers_per_peer = max(1, max_handlers // 4)
        self.running_handlers = 0
        self._running_by_peer: dict[str, int] = {}
        self.backpressure_s = backpressure_s
        self.subscriber_buffer, self.subscriber_bytes = subscriber_buffer, subscriber_bytes
        self._subscribers: dict[str, list[Inbox]] = {}
        self._handlers: dict[str, tuple[str, Handler]] = {}
        self._pending: dict[int, _Pending] = {}
        self.stray_replies = 0  # from another peer than the one asked, or of another type than expected
        self.late_replies = 0  # naming no pending request (it timed out, or never existed)
        self._next_id = first_id if first_id is not None else 1 + secrets.randbits(62)
        self.nursery: trio.Nursery | None = None  # where request handlers run; set by the transport

    def subscribe(self, type_: str) -> Inbox:
        """Every message of ``type_`` as ``(peer id, message)``."""
        send, recv = trio.open_memory_channel[tuple[str, Message, int]](self.subscriber_buffer)
        inbox = Inbox(send, recv, self.subscriber_bytes)
        self._subscribers.setdefault(type_, []).append(inbox)
        return inbox

    def on_request(self, type_: str, reply_type: str, handler: Handler) -> None:
        """Answer requests of ``type_`` with ``reply_type`` messages whose body ``handler`` returns."""
        self._handlers[type_] = (reply_type, handler)

    async def request(self, peer_id: str, type_: str, body: dict[str, Any], timeout_s: float, *,
                      expect: str) -> Message:
        """Send a request and wait for its reply: a message of type ``expect`` from ``peer_id`` (anything
        else answering it is dropped); raise TimeoutError if none arrives in time."""
        rid = self._next_id
        self._next_id += 1
        pending = self._pending[rid] = _Pending(peer_id, expect)
        try:
            if not self._send(peer_id, type_, body, id_=rid):
                raise TimeoutError(f"could not queue {type_} to {peer_id}")
            with trio.move_on_after(timeout_s):
                await pending.done.wait()
            if pending.reply is None:
                raise TimeoutError(f"no reply from {peer_id} to {type_} within {timeout_s}s")
            return pending.reply
        finally:
            del self._pending[rid]

    async def deliver(self, peer_id: str, msg: Message, deadline: float | None = None, size: int = 0) -> int:
        """Hand a received message to whoever wants it; return how many copies were dropped. A full subscriber is
        waited for until ``deadline`` (default: ``backpressure_s`` from now): a link's reader passes one deadline
        for a whole frame, so a stuck subscriber holds the link up for ``backpressure_s`` a frame, not a message
        (a batch of them kept the reader from the link's frames long enough for the heartbeat to close it: a
        reviewer's reproduction). ``size``: the bytes of the message's encoding (for the subscribers' budget)."""
        if deadline is None:
            deadline = trio.current_time() + self.backpressure_s
        if msg.re is not None:
            pending = self._pending.get(msg.re)
            if pending is None or pending.reply is not None:
                self.late_replies += 1
                return 1
            if peer_id != pending.peer_id or msg.type != pending.expect:
                self.stray_replies += 1
                log.debug("dropped a %s from %s answering request %d (asked %s for a %s)", msg.type, peer_id,
                          msg.re, pending.peer_id, pending.expect)
                return 1
            pending.reply = msg
            pending.done.set()
            return 0
        if msg.id is not None and msg.type in self._handlers and self.nursery is not None:
            mine = self._running_by_peer.get(peer_id, 0)
            if self.running_handlers >= self.max_handlers or mine >= self.max_handlers_per_peer:
                return 1
            self.running_handlers += 1
            self._running_by_peer[peer_id] = mine + 1
            self.nursery.start_soon(self._answer, peer_id, msg)
            return 0
        dropped = 0
        for inbox in self._subscribers.get(msg.type, ()):
            try:
                inbox.put_nowait((peer_id, msg, size))
                continue
            except trio.WouldBlock:
                pass
            except trio.BrokenResourceError:
                dropped += 1
                continue
            with trio.move_on_at(deadline):
                try:
                    await inbox.put((peer_id, msg, size))
                    continue
                except trio.BrokenResourceError:
                    pass
            dropped += 1
        return dropped

    async def _answer(self, peer_id: str, msg: Message) -> None:
        reply_type, handler = self._handlers[msg.type]
        try:
            with trio.move_on_after(self.handler_timeout_s) as scope:
                body = await handler(peer_id, msg.body)
            if scope.cancelled_caught:
                log.warning("handler for %s from %s gave no answer within %gs", msg.type, peer_id,
                            self.handler_timeout_s)
                return
        except Exception:  # a handler must never take the transport down
            log.exception("handler for %s from %s failed", msg.type, peer_id)
            return
        finally:
            self.running_handlers -= 1
            left = self._running_by_peer.pop(peer_id) - 1
            if left:
                self._running_by_peer[peer_id] = left
        try:
            self._send(peer_id, reply_type, body, re=msg.id)
        except Exception:  # a handler's answer that breaks its schema (not even a dict: an AttributeError took the
            #                 manager down): the requester times out
            log.exception("handler for %s from %s answered what cannot be sent", msg.type, peer_id)
