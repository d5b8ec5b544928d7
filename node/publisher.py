"""The publisher: moves committed outbox events into signed blobs on DA, never dropping one.

Batches up to the blob size cap, posts through the DA layer, records where each event landed, retries with
exponential backoff and jitter while the layer fails (the events simply stay in the outbox). An event written to an
empty outbox waits one publish interval, so the events written meanwhile share its blob; while events keep coming,
the next blob is posted as soon as the last one landed. (Waiting an interval between posts as well, tried under
bench.receipts, changed nothing measurable: the posts are not what limits a loaded cluster.)

A blob the layer refuses as such (too large for a node or proxy whose limit is below ``DA_BLOB_MAX_BYTES``, or
refused by every quorum validator: ``node.da.router.is_caller_error``) is split: blobs of at most half its bytes, at
once, until one passes; the cap relaxes again after ``RELAX_AFTER`` posts. Before, the same oldest blob was rebuilt
and refused for ever, and no later event reached DA. (A cap counted in events, halved at each refusal, went down to
1 for one event too large for the primary, and held every later event to blobs of one or two for ~1,200 posts: 2,000
small events took 339 paid posts, a reviewer's reproduction. Counted in bytes, the events before the large one pass
under half its blob, the large one goes alone, and those after it pass too.) A blob of one event that a layer
refuses as too large, or refuses at all, goes to the next layers (``DARouter.post(past_size_refusals=True)``): it
lands on a fallback. A failing outbox or pending-blob record (a full disk) is retried with the same backoff: the
events stay in the outbox, and the task lives on. A blob that landed but whose landing could not be recorded is not
posted again: the record alone is retried (each post to Celestia is paid, and a full disk lasting an hour re-posted
the same blob every 30 s: a review; after a restart it is posted again, harmless: events are deduplicated by id);
the same for a blob that landed on a fallback whose record for reconciliation failed (``LandedUnrecorded``): that
record first, then the outbox's.
"""

from __future__ import annotations

import logging
import random
import sqlite3
from collections.abc import Callable

import nacl.signing
import trio

from node.backoff import Backoff
from node.blob import blob_size, encode_blob
from node.da.base import BlobRef, DAError, DALayer
from node.da.router import LandedUnrecorded, is_caller_error
from node.outbox import Outbox

log = logging.getLogger("dsdn.publisher")
READ_AHEAD = 4096
RELAX_AFTER = 100  # posts under a cap of events per blob before it doubles again


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
        self.cap: int | None = None  # bytes per blob while the layer refuses larger blobs (see the module doc)
        self._alone_refused = False  # the latest blob, of one event, was refused as too large: next, any layer
        self._under_cap = 0  # posts since the cap last changed
        self._taken = 0  # events in the blob being posted
        self._taken_bytes = 0  # its size
        self._unrecorded: tuple[list[int], BlobRef] | None = None  # a blob that landed, its landing not recorded yet
        self._landed: tuple[list[int], LandedUnrecorded] | None = None  # one that landed on a fallback, not recorded
        #                                                                 there yet (node.da.pending)

    def take(self, rows: list[tuple[int, bytes]]) -> tuple[list[int], list[bytes]]:
        """The longest prefix of ``rows`` that fits in one blob and the cap (at least one event)."""
        seqs: list[int] = []
        raws: list[bytes] = []
        size = blob_size(self.origin, [])
        limit = self.max_blob_bytes if self.cap is None else min(self.cap, self.max_blob_bytes)
        for seq, raw in rows:
            if raws and size + len(raw) + 5 > limit:
                break
            seqs.append(seq)
            raws.append(raw)
            size += len(raw) + 5
        return seqs, raws

    async def publish_once(self) -> int:
        """Post one blob of pending events; return how many events it carried (0 if none pending)."""
        if self._landed is not None:  # (landed on a fallback, its pending record failed: retried alone first)
            seqs, landed = self._landed
            try:
                await self.da.record_landed(landed)  # type: ignore[attr-defined]
            except LandedUnrecorded as again:
                raise again.cause from again
            self._landed, self._unrecorded = None, (seqs, landed.ref)
        if self._unrecorded is not None:  # (its record failed: retried alone, the blob is not posted again)
            seqs, ref = self._unrecorded
            await self.outbox.mark_published(seqs, ref)
            return self._recorded(seqs)
        rows = await self.outbox.unpublished(READ_AHEAD, self.max_blob_bytes)  # (take() may keep fewer)
        if not rows:
            return 0
        seqs, raws = self.take(rows)
        self._taken = len(seqs)
        blob = encode_blob(self.key, self.origin, raws)
        self._taken_bytes = blob_size(self.origin, raws)  # (what take() counts: an upper bound of len(blob))
        try:
            if self._alone_refused and len(seqs) == 1 and getattr(self.da, "takes_size_fallthrough", False):
                ref = await self.da.post(blob, past_size_refusals=True)  # type: ignore[call-arg]
            else:
                ref = await self.da.post(blob)
        except LandedUnrecorded as landed:
            self._alone_refused, self._landed = False, (seqs, landed)
            raise landed.cause from landed
        self._alone_refused = False
        self._unrecorded = (seqs, ref)
        with trio.CancelScope(shield=True):  # (the post landed, maybe paid: a stop waiting for the outbox's lock
            #                                    left it unmarked, and it was posted again after the restart)
            await self.outbox.mark_published(seqs, ref)
        return self._recorded(seqs)

    def _recorded(self, seqs: list[int]) -> int:
        self._unrecorded = None
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
                if is_caller_error(exc) and self._taken > 1:
                    self.cap, self._under_cap = self._taken_bytes // 2, 0
                    log.warning("the DA layer refused a blob of %d events, %d bytes (%s): blobs of at most %d bytes "
                                "now", self._taken, self._taken_bytes, exc, self.cap)
                    continue  # the smaller blob at once
                if is_caller_error(exc) and not self._alone_refused:
                    self._alone_refused = True  # a blob of one event the layer refuses (too large?): the next layers
                    continue
                self.on_result(False, str(exc))
                delay = self._backoff.next()
                if is_caller_error(exc):  # one event alone: it stays in the outbox, nothing is dropped
                    log.error("the DA layers refuse even a blob of one event (%s); it stays in the outbox with %d "
                              "more after it until a layer takes it: mend what the reasons say (a blob size limit "
                              "below the event, a store whose writers do not list this coordinator's key) (retry in "
                              "%.2fs)", exc, self.outbox.pending - 1, delay)
                else:
                    (log.warning if self._backoff.attempt == 1 else log.debug)(
                        "publish failed (%s pending events kept, retry in %.2fs): %s", self.outbox.pending, delay,
                        exc)
                await trio.sleep(delay)
                continue
            except (sqlite3.Error, OSError) as exc:  # the outbox or the pending-blob record (a full disk?)
                self.failures += 1
                self.last_error = f"local storage: {exc}"
                self.on_result(False, self.last_error)
                delay = self._backoff.next()
                log.error("publish failed on local storage (%s pending events kept, retry in %.2fs): %s",
                          self.outbox.pending, delay, exc)
                await trio.sleep(delay)
                continue
            self._backoff.reset()
            self.on_result(True, None)
            if self.cap is not None:
                self._under_cap += 1
                if self._under_cap >= RELAX_AFTER:
                    self.cap, self._under_cap = (None if self.cap * 2 >= self.max_blob_bytes else self.cap * 2), 0
