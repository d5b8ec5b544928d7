"""The publisher: moves committed outbox events into signed blobs on DA, never dropping one.

Batches up to the blob size cap, posts through the DA layer, records where each event landed, retries
with exponential backoff and jitter while the layer fails (the events simply stay in the outbox), and
posts at most once per publish interval unless a blob is full.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

import nacl.signing
import trio

from node.backoff import Backoff
from node.blob import blob_size, encode_blob
from node.da.base import DAError, DALayer
from node.outbox import Outbox

log = logging.getLogger("dsdn.publisher")
READ_AHEAD = 4096


class Publisher:
    def __init__(
        self,
        outbox: Outbox,
        da: DALayer,
        key: nacl.signing.SigningKey,
        origin: str,
        max_blob_bytes: int,
        interval_s: float,
        on_result: Callable[[bool, str | None], None] = lambda ok, err: None,
        rng: random.Random | None = None,
    ) -> None:
        """``rng``: the retry jitter's source (seeded by the simulator)."""
        self.outbox, self.da, self.key, self.origin = outbox, da, key, origin
        self.max_blob_bytes, self.interval_s = max_blob_bytes, interval_s
        self.on_result = on_result
        self.blobs_posted = 0
        self.events_published = 0
        self.failures = 0
        self.last_error: str | None = None
        self._backoff = Backoff(0.2, 30.0, rng)

    def take(self, rows: list[tuple[int, bytes]]) -> tuple[list[int], list[bytes]]:
        """The longest prefix of ``rows`` that fits in one blob (at least one event)."""
        seqs: list[int] = []
        raws: list[bytes] = []
        size = blob_size(self.origin, [])
        for seq, raw in rows:
            if raws and size + len(raw) + 5 > self.max_blob_bytes:
                break
            seqs.append(seq)
            raws.append(raw)
            size += len(raw) + 5
        return seqs, raws

    async def publish_once(self) -> int:
        """Post one blob of pending events; return how many events it carried (0 if none pending)."""
        rows = await self.outbox.unpublished(READ_AHEAD)
        if not rows:
            return 0
        seqs, raws = self.take(rows)
        blob = encode_blob(self.key, self.origin, raws)
        ref = await self.da.post(blob)
        await self.outbox.mark_published(seqs, ref)
        self.blobs_posted += 1
        self.events_published += len(seqs)
        return len(seqs)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            if self.outbox.pending == 0:
                await self.outbox.appended.wait()
                await trio.sleep(self.interval_s)  # let a batch build up
            try:
                await self.publish_once()
            except DAError as exc:
                self.failures += 1
                self.last_error = str(exc)
                self.on_result(False, str(exc))
                delay = self._backoff.next()
                (log.warning if self._backoff.attempt == 1 else log.debug)(
                    "publish failed (%s pending events kept, retry in %.2fs): %s", self.outbox.pending, delay, exc)
                await trio.sleep(delay)
                continue
            self._backoff.reset()
            self.on_result(True, None)
