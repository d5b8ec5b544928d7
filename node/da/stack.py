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
        self._nursery: trio.Nursery | None = None
        self._pass_running = False

    @property
    def primary(self) -> MeteredLayer:
        return self.layers[PRIMARY]

    def snapshot(self) -> StatusSnapshot:
        return self.machine.snapshot()

    def observe(self, layer: str, ok: bool, error: str | None = None, *, write: bool = False) -> None:
        """The outcome of an operation on ``layer``: a read (a consumer's poll) unless ``write``."""
        self.machine.observe(layer, ok, wall_ms(), error, write=write)
        self._log_transition()

    def _log_transition(self) -> None:
        if self.machine.status is not self._last_status:
            entering_fallback = self.machine.status in (Status.DEGRADED, Status.EMERGENCY)
            log.warning("DA status %s -> %s (routing: %s)%s", self._last_status.value, self.machine.status.value,
                        self.machine.snapshot().routing,
                        f": {self.machine.fallback_reason}" if entering_fallback else "")
            self._last_status = self.machine.status

    def _should_reconcile(self) -> bool:
        """The primary takes writes and blobs wait on fallbacks (or Recovering waits for a pass to end)."""
        status = self.machine.status
        if status is Status.RECOVERING:
            return True
        return status in (Status.HEALTHY, Status.WARNING) and self.reconciler.waiting > 0

    async def check_once(self) -> None:
        """Health-check every layer concurrently; then, when the primary takes writes and blobs are waiting
        on fallbacks (or while Recovering), start a reconciliation pass in the monitor's nursery (it runs
        alongside the next health checks; inline when no monitor runs)."""
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
        if self._should_reconcile() and not self._pass_running:
            self._pass_running = True
            if self._nursery is not None:
                self._nursery.start_soon(self._reconcile_pass)
            else:
                await self._reconcile_pass()

    async def _reconcile_pass(self) -> None:
        try:
            with contextlib.suppress(AlreadyRunning):  # a manual pass (POST /fallback/reconcile) is running
                await self.reconciler.run_pass(stop_on_fallback=True)
        except Exception:  # a broken pass must not take the health monitor (and the coordinator) down
            log.exception("reconciliation pass failed")
        finally:
            self._pass_running = False
            self._log_transition()

    async def monitor(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                task_status.started()
                while True:
                    await self.check_once()
                    await trio.sleep(self.health_interval_s)
            finally:
                self._nursery = None

    async def aclose(self, *, close_layers: bool = True) -> None:
        """Close every layer and followed log once each (``aclose()`` or ``close()``, whichever the layer has;
        a QuorumDA closes its validators, which are also followed logs), then the pending store. Shielded: safe
        in a ``finally`` of a cancelled task. ``close_layers=False`` closes the pending store only (the caller
        owns the layers, e.g. a test that hands the same Mock DA to the next coordinator)."""
        with trio.CancelScope(shield=True):
            if close_layers:
                done: set[int] = set()
                for metered in [*self.layers.values(), *self.followed.values()]:
                    layer = getattr(metered, "inner", metered)
                    if id(layer) in done:
                        continue
                    done.add(id(layer))
                    children = getattr(layer, "validators", None)
                    if callable(children):
                        done.update(id(child) for child in children())
                    try:
                        if callable(getattr(layer, "aclose", None)):
                            await layer.aclose()
                        elif callable(getattr(layer, "close", None)):
                            layer.close()
                    except Exception:
                        log.exception("closing DA layer %s failed", getattr(layer, "name", layer))
            self.pending.close()
