"""Everything DA for one coordinator: the configured layers (metered), the status machine, the router,
the durable record of fallback blobs, the reconciler and the health monitor task.

``logs()`` lists what consumers follow: the primary, each quorum validator's log, the emergency log.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from pathlib import Path

import trio

from node.da.base import DAError, DALayer
from node.da.metered import MeteredLayer
from node.da.pending import PendingStore
from node.da.reconcile import AlreadyRunning, Reconciler
from node.da.router import DARouter
from node.da.status import PRIMARY, DAStatusMachine, Status, StatusSnapshot
from node.hlc import wall_ms

log = logging.getLogger("dsdn.da")


class DAStack:
    def __init__(self, layers: Mapping[str, DALayer], data_dir: Path, *, timeout_s: float,
                 da_retry_count: int = 0, da_retry_delay_s: float = 0.0,
                 failure_threshold: int = 3, recovery_threshold: int = 2, health_interval_s: float = 5.0,
                 batch_size: int = 10, retry_delay_s: float = 1.0, max_retries: int = 3, parallel: bool = False,
                 followed: Mapping[str, DALayer] | None = None) -> None:
        """``layers``: primary (required), secondary, emergency. ``followed``: extra logs for consumers
        (e.g. each quorum validator); by default every layer is followed."""
        # Layers that retry internally (Celestia) need room for every attempt and the backoff between them.
        backoff_s = sum(min(30.0, da_retry_delay_s * 2**k) * 1.25 for k in range(da_retry_count))
        budget_s = timeout_s * (da_retry_count + 1) + backoff_s
        self.layers = {name: MeteredLayer(layer, budget_s) for name, layer in layers.items()}
        self.machine = DAStatusMachine(tuple(self.layers), failure_threshold, recovery_threshold)
        self.pending = PendingStore(data_dir / "fallback.sqlite")
        self.router = DARouter(self.layers, self.machine, self.pending, wall_ms)
        self.reconciler = Reconciler(self.layers, self.pending, self.machine, wall_ms, batch_size, retry_delay_s,
                                     max_retries, parallel)
        self.health_interval_s = health_interval_s
        if followed is None:
            self.followed: dict[str, DALayer] = dict(self.layers)
        else:
            self.followed = {name: MeteredLayer(layer, budget_s) for name, layer in followed.items()}
        self._last_status = self.machine.status

    @property
    def primary(self) -> MeteredLayer:
        return self.layers[PRIMARY]

    def snapshot(self) -> StatusSnapshot:
        return self.machine.snapshot()

    def observe(self, layer: str, ok: bool, error: str | None = None) -> None:
        self.machine.observe(layer, ok, wall_ms(), error)
        self._log_transition()

    def _log_transition(self) -> None:
        if self.machine.status is not self._last_status:
            entering_fallback = self.machine.status in (Status.DEGRADED, Status.EMERGENCY)
            log.warning("DA status %s -> %s (routing: %s)%s", self._last_status.value, self.machine.status.value,
                        self.machine.snapshot().routing,
                        f": {self.machine.fallback_reason}" if entering_fallback else "")
            self._last_status = self.machine.status

    async def check_once(self) -> None:
        """Health-check every layer concurrently; reconcile while Recovering."""
        async def check(name: str, layer: MeteredLayer) -> None:
            try:
                await layer.head()
            except DAError as exc:
                self.observe(name, False, str(exc))
            else:
                self.observe(name, True)

        async with trio.open_nursery() as nursery:
            for name, layer in self.layers.items():
                nursery.start_soon(check, name, layer)
        if self.machine.status is Status.RECOVERING:
            with contextlib.suppress(AlreadyRunning):
                await self.reconciler.run_pass()
            self._log_transition()

    async def monitor(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self.check_once()
            await trio.sleep(self.health_interval_s)

    def close(self) -> None:
        self.pending.close()
