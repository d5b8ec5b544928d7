"""Everything DA for one coordinator: the configured layers (metered), the status machine, the router,
the durable record of fallback blobs, the reconciler and the health monitor task.

``followed`` lists what consumers follow: the primary, each quorum validator's log, the emergency log.

Health checks: every ``health_interval_s`` each layer is probed (``MeteredLayer.probe``: one attempt within
``health_timeout_s``, so a layer slower than that fails its check), on a fixed cadence that a slow probe does not
stretch (at most MAX_PROBES_IN_FLIGHT per layer at once). While the status is Healthy the fallback layers are on
standby: they are probed once every STANDBY_MAX_AGE_S (5 s) only, or every interval if that is longer, so their
health is never older than it could be at the default interval (a failed read or write of one still counts at
once). The moment the status leaves Healthy, whatever the cause (probes, failed writes or reads), the fallbacks are
probed at once, and from then on every layer every interval: the failover that follows ``failure_threshold``
failures chooses its fallback on fresh checks as far as they can be (a write failing on it falls through
regardless). A status change abandons the writes in flight on a layer that became unhealthy (the router), and is
logged.

With ``members`` and ``adopt_grace_s``, the pages consumers read are tapped: event blobs read from the primary
log are remembered, and blobs signed by a cluster member read from a fallback log that are neither ours nor
seen on the primary are recorded as foreign blobs, which reconciliation re-posts to the primary after the
grace period (node.da.reconcile) — so another member's fallback blobs reach the primary even if that member
is gone. ``read_problems()`` tells which followed logs cannot be read, and why (for /ready).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import sqlite3
from collections.abc import Callable, Mapping
from pathlib import Path

import nacl.exceptions
import nacl.signing
import trio

from node.blob import HEADER, MAGIC, VERSION
from node.da.base import DAError, DALayer, Page
from node.da.metered import MeteredLayer
from node.da.pending import PendingStore
from node.da.reconcile import CHECK_LIMIT, AlreadyRunning, Reconciler
from node.da.router import DARouter
from node.da.status import PRIMARY, DAStatusMachine, Status, StatusSnapshot
from node.hlc import wall_ms

log = logging.getLogger("dsdn.da")

#: Default deadline of a health check (DA_HEALTH_TIMEOUT_MS).
HEALTH_TIMEOUT_S = 1.5
#: Health checks of one layer in flight at once (a slow layer is probed again before the previous one ends).
MAX_PROBES_IN_FLIGHT = 2
#: While Healthy a fallback layer is probed once this many seconds, or every health interval if that is longer
#: (see the module docstring): the age its health could have before, at the default DA_HEALTH_INTERVAL_MS. In a
#: ``dsdn cluster up`` of 5 (1 s interval) this drops 25 of the 35 health requests a second (each QuorumDA probe
#: asks every validator), whose bursts delayed the receipts in flight: the slowest tenth by 13 ms in a benchmark.
STANDBY_MAX_AGE_S = 5.0
#: for this long after the start, a layer found unhealthy is checked every START_PROBE_S instead of every health
#: interval: the members of a local cluster host each other's validators and start one after another, and the
#: secondary showed as down for a whole interval (5 s) after every member was ready (a fresh user's run)
START_S = 30.0
START_PROBE_S = 1.0
#: Settled fallback records (reconciled blobs, resolved other members' blobs, ids of blobs read from the primary)
#: are forgotten this long after they settled, checked every PRUNE_EVERY_S by the monitor.
PRUNE_AFTER_S = 7 * 24 * 3600.0
PRUNE_EVERY_S = 3600.0


def member_signed(data: bytes, members: frozenset[bytes]) -> bool:
    """An event blob (node.blob's envelope) with a valid signature of one of ``members``."""
    if len(data) < HEADER or not data.startswith(MAGIC) or data[len(MAGIC)] != VERSION:
        return False
    key = data[len(MAGIC) + 1 : len(MAGIC) + 33]
    if key not in members:
        return False
    try:
        nacl.signing.VerifyKey(key).verify(data[: len(MAGIC) + 33] + data[HEADER:], data[len(MAGIC) + 33 : HEADER])
    except nacl.exceptions.BadSignatureError:
        return False
    return True


class DAStack:
    def __init__(self, layers: Mapping[str, DALayer], data_dir: Path, *, timeout_s: float,
                 da_retry_count: int = 0, da_retry_delay_s: float = 0.0,
                 failure_threshold: int = 3, recovery_threshold: int = 2, health_interval_s: float = 5.0,
                 batch_size: int = 10, retry_delay_s: float = 1.0, max_retries: int = 3, parallel: bool = False,
                 followed: Mapping[str, DALayer] | None = None, health_timeout_s: float = HEALTH_TIMEOUT_S,
                 members: Callable[[], frozenset[bytes]] | None = None, adopt_grace_s: float | None = None,
                 own_key: bytes | None = None, probe: Callable[[], bytes] | None = None) -> None:
        """``layers``: primary (required), secondary, emergency. ``followed``: extra logs for consumers
        (e.g. each quorum validator); by default every layer is followed. ``members`` (the cluster members' keys)
        and ``adopt_grace_s``: reconcile other members' fallback blobs too (off without either). ``own_key``: this
        coordinator's key, never held "active" (see ``_primary_page``). ``probe``: see ``Reconciler``."""
        self.own_key = own_key
        # Layers that retry internally (Celestia) need room for every attempt and the backoff between them.
        backoff_s = sum(min(30.0, da_retry_delay_s * 2**k) * 1.25 for k in range(da_retry_count))
        budget_s = timeout_s * (da_retry_count + 1) + backoff_s
        self.layers = {name: MeteredLayer(layer, budget_s) for name, layer in layers.items()}
        self.machine = DAStatusMachine(tuple(self.layers), failure_threshold, recovery_threshold)
        self.pending = PendingStore(data_dir / "fallback.sqlite")
        self.router = DARouter(self.layers, self.machine, self.pending, wall_ms)
        if followed is None:
            self.followed: dict[str, MeteredLayer] = dict(self.layers)
        else:
            self.followed = {name: MeteredLayer(layer, budget_s) for name, layer in followed.items()}
        self.members = members
        adopting = members is not None and adopt_grace_s is not None and PRIMARY in self.followed
        self.primary_head_read_ms: int | None = None  # start of the latest read that reached the primary's head
        self.reconciler = Reconciler(self.layers, self.pending, self.machine, wall_ms, batch_size, retry_delay_s,
                                     max_retries, parallel, adopt_grace_s=adopt_grace_s if adopting else None,
                                     primary_read_ms=lambda: self.primary_head_read_ms, probe=probe)
        for name, log_ in self.followed.items():
            log_.marker = self.machine.mark
            if adopting:
                log_.on_page = self._primary_page if name == PRIMARY else self._fallback_page
        self.health_interval_s = health_interval_s
        self._started_at: float | None = None  # trio time the monitor started (see START_S)
        self.health_timeout_s = health_timeout_s
        self._probing: dict[str, int] = dict.fromkeys(self.layers, 0)
        self._fallbacks_probed_at: float | None = None  # trio time of the latest probe of the fallbacks
        self._last_status = self.machine.status
        self.machine.on_change = self._on_change
        self._was_healthy: dict[str, bool] = {}  # each layer's health at the latest change
        #: called with a layer's name when the status machine holds it healthy again (the coordinator cuts the
        #: backoff of the consumers reading it short)
        self.on_recovered: Callable[[str], None] | None = None
        self._nursery: trio.Nursery | None = None
        self._pass_running = False

    @property
    def primary(self) -> MeteredLayer:
        return self.layers[PRIMARY]

    def snapshot(self) -> StatusSnapshot:
        return self.machine.snapshot()

    def observe(self, layer: str, ok: bool, error: str | None = None, *, write: bool = False,
                since: int | None = None) -> None:
        """The outcome of an operation on ``layer``: a read (a consumer's poll) unless ``write``. ``since``: the
        machine's mark when it started; for a read of a followed log, by default the mark its latest
        ``read_after`` took (see node.da.status on stale outcomes). A consumer's read that failed because the
        layer answered with an error (e.g. ``header: not found`` for a pruned height) is not an outage: it is
        not counted (the health checks and writes judge the layer; ``read_problems`` tells why reading
        stopped), so such a log does not flap the status between Healthy and Warning."""
        if since is None and not write and layer in self.followed:
            followed = self.followed[layer]
            if not ok and followed.last_read_answered and followed.last_read_error is not None:
                return
            since = followed.read_mark
        self.machine.observe(layer, ok, wall_ms(), error, write=write, since=since)
        self._log_transition()

    def _on_change(self) -> None:
        healthy = self.machine.snapshot().healthy
        for name, ok in healthy.items():
            if ok and not self._was_healthy.get(name, True) and self.on_recovered is not None:
                self.on_recovered(name)
        self._was_healthy = healthy
        left_healthy = self._last_status is Status.HEALTHY and self.machine.status is not Status.HEALTHY
        self._log_transition()
        self.router.abandon_unhealthy()
        if left_healthy and self._nursery is not None:  # the fallbacks' health may be a standby's: check it now
            self._nursery.start_soon(self._probe, [name for name in self.layers if name != PRIMARY])

    def read_problems(self) -> dict[str, str]:
        """The followed logs whose latest read failed, with the error (the cursor stays where it was)."""
        return {name: log_.last_read_error for name, log_ in self.followed.items() if log_.last_read_error}

    # ---- taps on the consumers' reads (other members' fallback blobs) ---------------------------------

    async def _primary_page(self, page: Page, started_ms: int) -> None:
        blobs = [(ref, data) for ref, data in page.items if data.startswith(MAGIC)]
        now, members = wall_ms(), self.members() if self.members is not None else frozenset()
        for _, data in blobs:  # a writer still active on the primary reconciles its own fallback blobs
            signer = data[len(MAGIC) + 1 : len(MAGIC) + 33]
            # (verified: nobody else can make a member look active). Never ourselves: a blob of ours found on a
            # fallback and not in our pending store is one whose record we lost (a data dir restored from a backup,
            # the key kept); waiting for us to reconcile it would wait for ever, while we keep writing
            if signer != self.own_key and member_signed(data, members):
                self.reconciler.signer_active[signer] = now
        if self.reconciler.held and self.own_key is not None:  # ours, back from the primary: what proves a hold
            own = frozenset((self.own_key,))  # the highest one above what was seen, verified (nobody else signs
            for ref, data in sorted(blobs, key=lambda b: -b[0].height):  # with our key): one check a page at most
                if ref.height <= self.reconciler.served_height:
                    break
                if data[len(MAGIC) + 1 : len(MAGIC) + 33] == self.own_key and member_signed(data, own):
                    self.reconciler.served(ref.height)
                    break
        self.reconciler.forget([hashlib.sha256(data).hexdigest() for _, data in blobs])
        try:
            if blobs:
                await self.pending.note_primary(blobs)
        except sqlite3.Error as exc:  # never the consumer's problem; the blob is simply not remembered
            log.warning("cannot record blobs read from the primary: %s", exc)
            return
        if page.at_head:
            self.primary_head_read_ms = started_ms

    async def _fallback_page(self, page: Page, started_ms: int) -> None:
        members = self.members() if self.members is not None else frozenset()
        blobs = [(ref, data) for ref, data in page.items if member_signed(data, members)]
        try:
            added = await self.pending.note_fallback(blobs) if blobs else 0
            if added:
                log.info("%d blobs of other members found on %s and not (yet) on the primary", added,
                         blobs[0][0].layer)
        except sqlite3.Error as exc:
            log.warning("cannot record blobs read from a fallback log: %s", exc)

    def _log_transition(self) -> None:
        if self.machine.status is not self._last_status:
            entering_fallback = self.machine.status in (Status.DEGRADED, Status.EMERGENCY)
            # back to Healthy (or on the way, Recovering) is good news: INFO; any other change a WARNING
            level = logging.INFO if self.machine.status in (Status.HEALTHY, Status.RECOVERING) else logging.WARNING
            log.log(level, "DA status %s -> %s (routing: %s)%s", self._last_status.value, self.machine.status.value,
                        self.machine.snapshot().routing,
                        f": {self.machine.fallback_reason}" if entering_fallback else "")
            self._last_status = self.machine.status

    def _should_reconcile(self) -> bool:
        """The primary takes writes and blobs wait on fallbacks (or Recovering waits for a pass to end)."""
        status = self.machine.status
        if status is Status.RECOVERING:
            return True
        return status in (Status.HEALTHY, Status.WARNING) and (
            self.reconciler.waiting > 0 or self.reconciler.unrecorded > 0 or self.reconciler.adoption_due())

    async def check_once(self) -> None:
        """Health-check every layer concurrently (each within ``health_timeout_s``; a layer that already has
        MAX_PROBES_IN_FLIGHT checks running is skipped; fallbacks on standby while Healthy); then, when the
        primary takes writes and blobs are waiting on fallbacks (or while Recovering), start a reconciliation
        pass in the monitor's nursery (it runs alongside the next health checks; inline when no monitor
        runs)."""
        now = trio.current_time()
        standby = (self.machine.status is Status.HEALTHY and self._fallbacks_probed_at is not None
                   and now - self._fallbacks_probed_at < STANDBY_MAX_AGE_S - self.health_interval_s / 2
                   and not self._starting())
        await self._probe([name for name in self.layers if not standby or name == PRIMARY])
        if self._should_reconcile() and not self._pass_running:
            self._pass_running = True
            if self._nursery is not None:
                self._nursery.start_soon(self._reconcile_pass)
            else:
                await self._reconcile_pass()

    def _starting(self) -> bool:
        """Within START_S of the monitor's start, with a layer found unhealthy: checked every START_PROBE_S."""
        return (self._started_at is not None and trio.current_time() - self._started_at < START_S
                and not all(self.machine.snapshot().healthy.values()))

    async def _probe(self, names: list[str]) -> None:
        """Health-check these layers concurrently (a layer with MAX_PROBES_IN_FLIGHT checks running is skipped)."""
        async def check(name: str, layer: MeteredLayer) -> None:
            since = self.machine.mark()
            try:
                await layer.probe(self.health_timeout_s)
            except DAError as exc:
                self.observe(name, False, str(exc), since=since)
            else:
                self.observe(name, True, since=since)
            finally:
                self._probing[name] -= 1

        if any(name != PRIMARY for name in names):
            self._fallbacks_probed_at = trio.current_time()
        async with trio.open_nursery() as nursery:
            for name in names:
                if self._probing[name] < MAX_PROBES_IN_FLIGHT:
                    self._probing[name] += 1
                    nursery.start_soon(check, name, self.layers[name])

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
                next_at = self._started_at = trio.current_time()
                prune_at = next_at + PRUNE_EVERY_S
                while True:  # a fixed cadence: a slow check does not delay the next one
                    nursery.start_soon(self.check_once)
                    if trio.current_time() >= prune_at:
                        prune_at = trio.current_time() + PRUNE_EVERY_S
                        nursery.start_soon(self.prune)
                    interval = min(self.health_interval_s, START_PROBE_S) if self._starting() else \
                        self.health_interval_s
                    next_at = max(next_at + interval, trio.current_time())
                    await trio.sleep_until(next_at)
            finally:
                self._nursery = None

    async def prune(self) -> None:
        """Forget settled fallback records older than ``PRUNE_AFTER_S`` (see ``PendingStore.prune``)."""
        try:
            removed = await self.pending.prune(wall_ms() - int(PRUNE_AFTER_S * 1000), CHECK_LIMIT)
        except sqlite3.Error as exc:
            log.warning("cannot prune the fallback records: %s", exc)
            return
        if any(removed):
            log.info("fallback records pruned: %d reconciled blobs, %d other members' blobs, %d primary blob ids",
                     *removed)

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
