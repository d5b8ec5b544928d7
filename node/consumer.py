"""The consumer: follows a DA layer from a cursor, verifies each blob's signer, applies its events.

Blobs not signed by a cluster member (DA namespaces are public), larger than the protocol's limit
(``node.blob.MAX_BLOB_BYTES``, the same on every coordinator) or malformed are dropped and counted by
reason; events whose origin is not the signer's member id are dropped and counted too. Application is
idempotent and order-free, so re-reading a blob is harmless. The cursor is persisted only inside
snapshots, together with the state it produced.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping

import trio

from node.backoff import Backoff
from node.blob import BlobError, decode_blob
from node.da.base import DAError, DALayer
from node.events import Event

log = logging.getLogger("dsdn.consumer")
READ_LIMIT = 32


class Consumer:
    def __init__(
        self,
        da: DALayer,
        apply: Callable[[Event], bool],
        members: frozenset[bytes],
        *,
        member_ids: Mapping[bytes, str] | None = None,
        cursor: int = 0,
        poll_s: float = 0.1,
        idle_poll_s: float = 1.0,
        on_result: Callable[[bool, str | None], None] = lambda ok, err: None,
    ) -> None:
        """``members``: the keys whose blobs are accepted; ``member_ids``: the member id bound to each key
        that has one (see ``node.blob.expected_origin``)."""
        self.da, self.apply, self.members = da, apply, members
        self.member_ids: Mapping[bytes, str] = member_ids or {}
        self.cursor, self.poll_s, self.idle_poll_s = cursor, poll_s, idle_poll_s
        self._idle = poll_s  # the pause at the head: doubles while reads find nothing, back to poll_s on data
        self.on_result = on_result
        self.caught_up = trio.Event()
        self.blobs_applied = 0
        self.events_new = 0
        self.events_invalid = 0
        self.events_wrong_origin = 0
        self.rejected: Counter[str] = Counter()
        self.last_ok = True
        self._backoff = Backoff(0.1, 10.0)

    def ingest(self, data: bytes) -> int:
        """Verify and apply one blob; return the number of new events it brought."""
        try:
            blob = decode_blob(data, self.members, member_ids=self.member_ids)
        except BlobError as exc:
            self.rejected[exc.reason] += 1
            if exc.reason != "foreign":
                log.warning("dropped blob: %s", exc)
            return 0
        self.events_invalid += blob.invalid_events
        if blob.wrong_origin:
            self.events_wrong_origin += blob.wrong_origin
            log.warning("dropped %d events of a blob signed by %s (declaring origin %r): their origin is not the "
                        "signer's member id", blob.wrong_origin, blob.signer.hex(), blob.origin)
        new = 0
        for event in blob.events:
            new += self.apply(event)
        self.blobs_applied += 1
        self.events_new += new
        return new

    async def poll_once(self) -> bool:
        """Read and ingest the next blobs after the cursor; return True when the head was reached."""
        page = await self.da.read_after(self.cursor, READ_LIMIT)
        for _, data in page.items:
            self.ingest(data)
        self.cursor = page.cursor
        self._idle = self.poll_s if page.items else min(self._idle * 2, self.idle_poll_s)
        return page.at_head

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            try:
                at_head = await self.poll_once()
            except DAError as exc:
                if self.last_ok:  # once per failure streak; the rest at debug level
                    log.warning("reading %s failed (cursor %d); retrying with backoff: %s", self.da.name,
                                self.cursor, exc)
                self.last_ok = False
                self.on_result(False, str(exc))
                delay = self._backoff.next()
                log.debug("reading %s failed again (retry in %.2fs): %s", self.da.name, delay, exc)
                await trio.sleep(delay)
                continue
            self._backoff.reset()
            if not self.last_ok:
                log.info("reading %s works again (cursor %d)", self.da.name, self.cursor)
            self.last_ok = True
            self.on_result(True, None)
            if at_head:
                self.caught_up.set()
                await trio.sleep(self._idle)  # an idle log (a fallback in good times) is read about once a second
            else:
                await trio.sleep(0)
