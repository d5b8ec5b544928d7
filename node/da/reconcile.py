"""Reconciliation: re-post blobs stored on fallback layers to the primary, and check consistency.

One pass at a time. Blobs go to the primary directly (not through the router), in batches of
RECONCILE_BATCH_SIZE, concurrently within a batch when RECONCILE_PARALLEL; each blob gets up to
1 + RECONCILE_MAX_RETRIES attempts, RECONCILE_RETRY_DELAY_MS apart. A blob is marked reconciled only
after the primary returned it byte for byte; a blob that still fails stays pending with its error.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import trio

from node.da.base import DAError, DALayer
from node.da.pending import FallbackBlob, PendingStore
from node.da.status import PRIMARY, DAStatusMachine

log = logging.getLogger("dsdn.reconcile")


@dataclass
class Report:
    success: bool = True
    blobs_processed: int = 0
    blobs_reconciled: int = 0
    blobs_failed: int = 0
    duration_ms: int = 0
    errors: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"success": self.success, "blobs_processed": self.blobs_processed,
                "blobs_reconciled": self.blobs_reconciled, "blobs_failed": self.blobs_failed,
                "duration_ms": self.duration_ms, "errors": self.errors}


class AlreadyRunning(Exception):
    """A reconciliation pass is in progress."""


class Reconciler:
    def __init__(self, layers: Mapping[str, DALayer], pending: PendingStore, machine: DAStatusMachine,
                 clock: Callable[[], int], batch_size: int = 10, retry_delay_s: float = 1.0,
                 max_retries: int = 3, parallel: bool = False) -> None:
        self.layers, self.pending, self.machine, self.clock = layers, pending, machine, clock
        self.batch_size, self.retry_delay_s = batch_size, retry_delay_s
        self.max_retries, self.parallel = max_retries, parallel
        self._lock = trio.Lock()
        self.passes = 0
        self.total_reconciled = 0
        self.last_report: Report | None = None

    @property
    def running(self) -> bool:
        return self._lock.locked()

    async def run_pass(self) -> Report:
        if self._lock.locked():
            raise AlreadyRunning("a reconciliation pass is already running")
        async with self._lock:
            started = time.perf_counter()
            report = Report()
            blobs = await self.pending.pending()
            for i in range(0, len(blobs), self.batch_size):
                batch = blobs[i : i + self.batch_size]
                if self.parallel:
                    async with trio.open_nursery() as nursery:
                        for blob in batch:
                            nursery.start_soon(self._reconcile_one, blob, report)
                else:
                    for blob in batch:
                        await self._reconcile_one(blob, report)
            report.success = report.blobs_failed == 0
            report.duration_ms = int((time.perf_counter() - started) * 1000)
            self.passes += 1
            self.total_reconciled += report.blobs_reconciled
            self.last_report = report
            self.machine.reconciled(self.pending.pending_count, self.clock())
            if report.blobs_processed:
                log.info("reconciliation: %d processed, %d reconciled, %d failed in %d ms (%d still pending)",
                         report.blobs_processed, report.blobs_reconciled, report.blobs_failed, report.duration_ms,
                         self.pending.pending_count)
            return report

    async def _reconcile_one(self, blob: FallbackBlob, report: Report) -> None:
        report.blobs_processed += 1
        primary = self.layers[PRIMARY]
        error = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                await trio.sleep(self.retry_delay_s)
            try:
                ref = await primary.post(blob.data)
                back = await primary.get(ref)
                if back != blob.data:
                    raise DAError(f"primary returned different bytes at height {ref.height}")
            except DAError as exc:
                error = str(exc)
                self.machine.observe(PRIMARY, False, self.clock(), error)
                await self.pending.mark_failed(blob.blob_id, error)
                continue
            self.machine.observe(PRIMARY, True, self.clock())
            await self.pending.mark_reconciled(blob.blob_id, ref)
            report.blobs_reconciled += 1
            return
        report.blobs_failed += 1
        report.errors.append(f"blob {blob.blob_id[:16]}: {error} (stays pending)")

    async def consistency(self) -> dict[str, Any]:
        """Check for real: each pending blob readable from its fallback, each reconciled blob readable
        from the primary, with the same bytes."""
        details: list[str] = []
        pending = await self.pending.pending()
        reconciled = await self.pending.reconciled()
        for blob in pending:
            details += await self._check(blob.ref.layer, blob, blob.ref)
        for blob in reconciled:
            assert blob.primary_ref is not None
            details += await self._check(PRIMARY, blob, blob.primary_ref)
        return {"is_consistent": not details, "items_verified": len(pending) + len(reconciled),
                "inconsistencies_found": len(details), "details": details, "verified_at": self.clock()}

    async def _check(self, layer_name: str, blob: FallbackBlob, ref: Any) -> list[str]:
        layer = self.layers.get(layer_name)
        if layer is None:
            return [f"blob {blob.blob_id[:16]}: layer {layer_name} is not configured"]
        try:
            data = await layer.get(ref)
        except DAError as exc:
            return [f"blob {blob.blob_id[:16]}: not readable from {layer_name} at {ref.height}: {exc}"]
        if data != blob.data:
            return [f"blob {blob.blob_id[:16]}: {layer_name} returned different bytes at {ref.height}"]
        return []
