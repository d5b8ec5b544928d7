"""The coordinator service: one object that owns the state and the pipeline, and offers the domain
operations the HTTP API calls.

Write path: validate (in the API) → event with an HLC timestamp → outbox commit (durable) → applied to
the state → answer. Background tasks: outbox writer, publisher, consumer, snapshots, DA health checks.
Start-up: snapshot (if any) → replay outbox events after its watermark → follow DA from its cursor.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import trio

from node import events as ev
from node import identity, snapshot
from node.config import Config
from node.consumer import Consumer
from node.da.base import BlobRef, DAError, DALayer
from node.da.metered import MeteredLayer
from node.da.mock import MockDA
from node.events import Event
from node.hlc import HybridLogicalClock, wall_ms
from node.outbox import Outbox
from node.placement import Placement
from node.publisher import Publisher
from node.scheduler import DEFAULT_WEIGHTS, WEIGHT_NAMES, NodeStats, Workload, choose
from node.state import State
from node.stats import StatsTable

log = logging.getLogger("dsdn.coordinator")
VERSION = "0.1.0"


class NotFound(Exception):
    """A referenced entity does not exist; ``body`` is the JSON error the API returns."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(body.get("error", "not found"))
        self.body = body


@dataclass
class DAHealth:
    """What we know of the primary layer: fed by periodic checks and by real operations."""

    healthy: bool = True
    consecutive_failures: int = 0
    last_error: str | None = None
    checked_ms: int = 0

    def record(self, ok: bool, error: str | None) -> None:
        self.checked_ms = wall_ms()
        if ok:
            self.healthy, self.consecutive_failures, self.last_error = True, 0, None
        else:
            self.healthy = False
            self.consecutive_failures += 1
            self.last_error = error


class Coordinator:
    def __init__(self, config: Config, da: DALayer | None = None) -> None:
        self.config = config
        self.id = config.coordinator_id
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.key = identity.load_or_create(config.data_dir)
        self.public_key = bytes(self.key.verify_key)
        self.members = frozenset({self.public_key, *config.cluster_member_keys})
        self.state = State()
        self.hlc = HybridLogicalClock()
        self.stats = StatsTable(config.stats_ttl_ms)
        self.placement = Placement(self.state)
        self.outbox = Outbox(config.data_dir / "outbox.sqlite", self._on_commit)
        self.applied_outbox_seq = 0
        if da is None:
            da = MockDA(config.mock_da_file if config.mock_da_path != ":memory:" else ":memory:")
        self.da = MeteredLayer(da, config.da_timeout_ms / 1000)
        self.health = DAHealth()
        self.publisher = Publisher(
            self.outbox, self.da, self.key, self.id, config.blob_max_bytes,
            config.publish_interval_ms / 1000, self.health.record,
        )
        self.consumer = Consumer(self.da, self._apply_remote, self.members, config.blob_max_bytes,
                                 on_result=self.health.record)
        self.snapshots_written = 0
        self._snapshot_mark: tuple[int, int] = (-1, -1)
        self.started_ms = wall_ms()

    # ---- life cycle ------------------------------------------------------------------------------

    async def restore(self) -> None:
        """Load the snapshot and replay outbox events after its watermark (acknowledged writes)."""
        t0 = time.perf_counter()
        snap = await trio.to_thread.run_sync(snapshot.load, self.config.data_dir)
        if snap is not None:
            self.state = snap.state
            self.placement = Placement(self.state)
            self.consumer.cursor = snap.cursor
            self.applied_outbox_seq = snap.outbox_seq
            self._snapshot_mark = (snap.state.events_applied, snap.cursor)
        replayed = 0
        for seq, raw in await self.outbox.since(self.applied_outbox_seq):
            replayed += self.state.apply(ev.decode_event(raw))
            self.applied_outbox_seq = seq
        self.hlc.observe(self.state.max_hlc)
        log.info("restored: snapshot=%s cursor=%d events=%d outbox-replayed=%d pending=%d in %.3fs",
                 "yes" if snap else "no", self.consumer.cursor, self.state.events_applied, replayed,
                 self.outbox.pending, time.perf_counter() - t0)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run every background task until cancelled; then write a final snapshot."""
        await self.restore()
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.outbox.run)
                await nursery.start(self.publisher.run)
                await nursery.start(self.consumer.run)
                nursery.start_soon(self._snapshot_loop)
                nursery.start_soon(self._health_loop)
                task_status.started()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                await self.write_snapshot()
            self.outbox.close()

    async def write_snapshot(self) -> bool:
        """Write a snapshot if anything changed since the last one; prune the outbox below it."""
        mark = (self.state.events_applied, self.consumer.cursor)
        if mark == self._snapshot_mark:
            return False
        snap = snapshot.Snapshot(self.state, self.consumer.cursor, self.applied_outbox_seq)
        size = await snapshot.save(self.config.data_dir, snap)
        self._snapshot_mark = mark
        self.snapshots_written += 1
        pruned = await self.outbox.prune(snap.outbox_seq)
        log.info("snapshot written: %d bytes, %d events, cursor %d, pruned %d outbox rows",
                 size, mark[0], mark[1], pruned)
        return True

    async def _snapshot_loop(self) -> None:
        while True:
            await trio.sleep(self.config.snapshot_interval_ms / 1000)
            await self.write_snapshot()
            self.stats.prune(wall_ms())

    async def _health_loop(self) -> None:
        while True:
            try:
                await self.da.head()
                self.health.record(True, None)
            except DAError as exc:
                self.health.record(False, str(exc))
            await trio.sleep(self.config.da_health_interval_ms / 1000)

    # ---- applying --------------------------------------------------------------------------------

    def _on_commit(self, committed: list[tuple[int, Event]]) -> None:
        for seq, event in committed:
            self.state.apply(event)
            self.applied_outbox_seq = seq

    def _apply_remote(self, event: Event) -> bool:
        self.hlc.observe(event.hlc)
        return self.state.apply(event)

    async def _submit(self, kind: str, **fields: Any) -> Event:
        event = ev.make_event(kind, self.hlc.now(), self.id, **fields)
        await self.outbox.append(event)
        return event

    @property
    def ready(self) -> bool:
        return self.consumer.caught_up.is_set()

    # ---- nodes -----------------------------------------------------------------------------------

    async def register_node(self, node_id: str, zone: str, addr: str, capacity_gb: int) -> None:
        await self._submit(ev.NODE_REGISTERED, id=node_id, zone=zone, addr=addr, capacity_gb=capacity_gb)

    @staticmethod
    def node_json(node_id: str, rec: tuple[str, str, int]) -> dict[str, Any]:
        return {"id": node_id, "zone": rec[0], "addr": rec[1], "capacity_gb": rec[2], "meta": {}}

    def list_nodes(self) -> list[dict[str, Any]]:
        return [self.node_json(nid, rec) for nid, rec in self.state.live_nodes()]

    def get_node(self, node_id: str) -> dict[str, Any]:
        rec = self.state.node(node_id)
        if rec is None:
            raise NotFound({"error": "node not found", "node_id": node_id})
        return self.node_json(node_id, rec)

    def get_stats(self, node_id: str) -> dict[str, Any]:
        stats = self.stats.get(node_id, wall_ms()) if self.state.node(node_id) is not None else None
        if stats is None:
            return {"node_id": node_id, "found": False}
        return {"node_id": node_id, "found": True, "stats": stats.as_dict()}

    def put_stats(self, node_id: str, values: dict[str, float]) -> None:
        if self.state.node(node_id) is None:
            raise NotFound({"error": "node not found", "node_id": node_id})
        self.stats.put(node_id, NodeStats(reported_ms=wall_ms(), **values))

    # ---- placement and scheduling ----------------------------------------------------------------

    def place(self, key: str, rf: int) -> list[str]:
        return self.placement.place(key, rf)

    def weights(self) -> dict[str, float]:
        current = self.state.weights()
        if current is None:
            return dict(DEFAULT_WEIGHTS)
        return dict(zip(WEIGHT_NAMES, current, strict=True))

    async def set_weights(self, values: dict[str, float]) -> dict[str, float]:
        weights = {name: values.get(name, DEFAULT_WEIGHTS[name]) for name in WEIGHT_NAMES}
        await self._submit(ev.SCHEDULER_CONFIG, **weights)
        return weights

    def schedule(self, workload: Workload) -> str | None:
        now = wall_ms()
        candidates = ((nid, s) for nid, s in self.stats.items() if self.state.node(nid) is not None)
        w = self.weights()
        return choose(candidates, workload, tuple(w[n] for n in WEIGHT_NAMES),  # type: ignore[arg-type]
                      now, self.config.stats_ttl_ms)

    # ---- objects ---------------------------------------------------------------------------------

    async def register_object(self, obj: str, size: int) -> None:
        await self._submit(ev.OBJECT_REGISTERED, hash=obj, size=size)

    def get_object(self, obj: str) -> dict[str, Any]:
        found = self.state.object(obj)
        if found is None:
            raise NotFound({"error": "not found", "hash": obj})
        return {"hash": obj, "size": found[0], "replicas": found[1]}

    async def mark_replica(self, obj: str, node_id: str, present: bool) -> None:
        if self.state.object(obj) is None:
            raise NotFound({"error": "not found", "hash": obj})
        if present and self.state.node(node_id) is None:
            raise NotFound({"error": "node not found", "node_id": node_id})
        kind = ev.REPLICA_HEALED if present else ev.REPLICA_MISSING
        await self._submit(kind, hash=obj, node_id=node_id)

    # ---- DA views (all read one snapshot of the health, so they never disagree) -------------------

    async def da_post(self, data: bytes) -> BlobRef:
        try:
            ref = await self.da.post(data)
        except DAError as exc:
            self.health.record(False, str(exc))
            raise
        self.health.record(True, None)
        return ref

    def da_view(self) -> dict[str, Any]:
        h = self.health
        return {
            "available": h.healthy,
            "da_health": "Ok(Healthy)" if h.healthy else "Ok(Unavailable)",
            "routing": "primary",
            "last_error": h.last_error,
        }

    async def consistency(self, limit: int = 100) -> dict[str, Any]:
        """Check for real that recently published events are readable from DA inside their blob."""
        landed = await self.outbox.recently_landed(limit)
        by_ref: dict[BlobRef, list[bytes]] = {}
        for item in landed:
            by_ref.setdefault(item.ref, []).append(item.raw)
        details: list[str] = []
        for ref, raws in by_ref.items():
            try:
                data = await self.da.get(ref)
            except DAError as exc:
                details.append(f"blob {ref.layer}@{ref.height}: not readable: {exc}")
                continue
            missing = sum(1 for raw in raws if raw not in data)
            if missing:
                details.append(f"blob {ref.layer}@{ref.height}: {missing} of {len(raws)} events missing")
        return {
            "is_consistent": not details,
            "items_verified": len(by_ref),
            "inconsistencies_found": len(details),
            "details": details,
            "verified_at": wall_ms(),
        }
