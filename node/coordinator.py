"""The coordinator service: one object that owns the state and the pipeline, and offers the domain
operations the HTTP API calls.

Write path: validate (in the API) → event with an HLC timestamp → outbox commit (durable) → applied to
the state → answer. Background tasks: outbox writer, publisher (through the DA router), one consumer
per followed DA log, snapshots, the DA health monitor.
Start-up: snapshot (if any) → replay outbox events after its watermark → follow each DA log from its
cursor.
"""

from __future__ import annotations

import hashlib
import logging
import operator
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import trio

from node import events as ev
from node import identity, snapshot
from node.blob import encode_blob
from node.config import Config, ConfigError
from node.consumer import LONG_POLL_S, Consumer, RebuildProgress, stuck_logs
from node.da.base import BlobRef, DAError, DALayer
from node.da.mock import MockDA
from node.da.router import LandedUnrecorded
from node.da.stack import DAStack
from node.da.status import EMERGENCY, PRIMARY, SECONDARY, Status, StatusSnapshot
from node.events import Event, EventTuple
from node.hlc import MAX_DRIFT_MS, MAX_PART, HybridLogicalClock, Timestamp, wall_ms
from node.outbox import Outbox
from node.placement import Placement
from node.publisher import Publisher
from node.scheduler import (
    DEFAULT_WEIGHTS,
    MAX_FUTURE_MS,
    WEIGHT_NAMES,
    WEIGHT_RANGE,
    NodeStats,
    Workload,
    choose,
)
from node.state import State
from node.stats import StatsTable

log = logging.getLogger("dsdn.coordinator")
VERSION = "0.1.0"
REPLAY_PAGE = 4096  # outbox events read at a time when replaying it at start, and at most
PROGRESS_EVERY_S = 5.0  # a long restore logs how far it got this often
CURSORS_ONLY_SNAPSHOT_S = 600.0  # a periodic snapshot for moved cursors alone comes at most this often
REPLAY_PAGE_BYTES = 8 * 2**20  # this many bytes (the first event whatever its size)
#: How far past this coordinator's wall clock a local write may be stamped to follow the version its register holds
#: (see ``Coordinator._stamp``); a register held by a member's write stamped further ahead refuses local writes.
FUTURE_WRITE_LIMIT_MS = 24 * 3600 * 1000
MAX_STAMPED_AHEAD = 4096  # registers whose latest stamp ahead is kept (past it, those the clock passed go at once)


_hlc_of = operator.itemgetter(1, 2)  # an event's (hlc wall, hlc counter)


def _register_of(kind: str, fields: dict[str, Any]) -> tuple[str, ...]:
    """The register a local event of ``kind`` writes (see ``State.held_version``)."""
    if kind in (ev.NODE_REGISTERED, ev.NODE_UNREGISTERED):
        return ("node", fields["id"])
    if kind in (ev.REPLICA_HEALED, ev.REPLICA_MISSING):
        return ("replica", fields["hash"], fields["node_id"])
    return (kind, str(fields.get("id") or fields.get("hash") or ""))


class NotFound(Exception):
    """A referenced entity does not exist; ``body`` is the JSON error the API returns."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(body.get("error", "not found"))
        self.body = body


class ClockConflict(Exception):
    """A local write cannot be stamped after the version its register holds (a member's write stamped more than
    FUTURE_WRITE_LIMIT_MS ahead): it would be ignored, so it is refused (the API answers 409)."""


def snapshot_basis(config: Config, members: frozenset[bytes], member_ids: dict[bytes, str]) -> str:
    """What a snapshot's state and cursors were read under, as a digest: the member keys whose blobs count and the
    ids bound to them, and the primary log (its kind, network and namespace). A snapshot of another basis is
    refused at restore (see ``Coordinator.restore``)."""
    what = [sorted(members), sorted(member_ids.items()), "mock" if config.use_mock_da else "celestia",
            config.da_network, (config.da_namespace or b"").hex()]
    return hashlib.sha256(msgpack.packb(what, use_bin_type=True)).hexdigest()


def _named(logs: dict[str, dict[str, str]]) -> dict[str, tuple[str, str]]:
    """The logs as their names alone (key, log id): where a blob store cursor stands (``at``) moves with it, as the
    cursor does (compared in full, it made every periodic snapshot due: a regression review)."""
    return {name: (log.get("key", ""), log.get("log_id", "")) for name, log in logs.items()}


def _log_client(consumer: Consumer) -> Any:
    """The blob store client a consumer reads through (under its metering), or None for another kind of log."""
    layer = getattr(consumer.da, "inner", consumer.da)
    return layer if hasattr(layer, "resume_log") else None


@dataclass
class _ConsistencyCheck:
    """A consistency check in flight, shared by the callers that arrive while it runs."""

    done: trio.Event = field(default_factory=trio.Event)
    report: dict[str, Any] | None = None


class Coordinator:
    def __init__(self, config: Config, primary: DALayer | None = None, secondary: DALayer | None = None,
                 emergency: DALayer | None = None, followed: dict[str, DALayer] | None = None) -> None:
        """Layers default to a Mock DA primary from the config; ``followed`` lists the logs consumers
        follow (default: every layer; with a QuorumDA, pass each validator's log instead)."""
        self.config = config
        self.id = config.coordinator_id
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.key = identity.load_or_create(config.data_dir)
        self.public_key = bytes(self.key.verify_key)
        self.members = frozenset({self.public_key, *config.cluster_member_keys})
        # a member's blobs may carry only its own events: the id bound to its key, where the config binds one
        self.member_ids = dict(config.cluster_member_ids)
        if self.member_ids.get(self.public_key, self.id) != self.id:  # our own events would be dropped on DA
            raise ConfigError("CLUSTER_MEMBER_KEYS", f"{self.member_ids[self.public_key]}={self.public_key.hex()}",
                              f"this coordinator's key bound to its own id {self.id!r}")
        if config.cluster_member_keys and self.public_key not in config.cluster_member_keys:
            log.warning("this coordinator's key %s is not in CLUSTER_MEMBER_KEYS: if the other members' lists do "
                        "not have it either (a new data dir makes a new key), they will drop its writes",
                        self.public_key.hex())
        self.basis = snapshot_basis(config, self.members, self.member_ids)
        self.state = State()
        self.hlc = HybridLogicalClock()
        # register -> the latest local stamp issued after its version, while that write is in flight (_stamp)
        self._stamped_ahead: dict[tuple[str, ...], Timestamp] = {}
        self.stats = StatsTable(config.stats_ttl_ms)
        self.placement = Placement(self.state)
        self.outbox = Outbox(config.data_dir / "outbox.sqlite", self._on_commit, config.max_inflight_writes)
        self.applied_outbox_seq = 0
        if primary is None:
            primary = MockDA(config.mock_da_file if config.mock_da_path != ":memory:" else ":memory:")
        layers = {PRIMARY: primary, SECONDARY: secondary, EMERGENCY: emergency}
        self.da = DAStack(
            {name: layer for name, layer in layers.items() if layer is not None}, config.data_dir,
            timeout_s=config.da_timeout_ms / 1000, da_retry_count=config.da_retry_count,
            da_retry_delay_s=config.da_retry_delay_ms / 1000, failure_threshold=config.da_failure_threshold,
            recovery_threshold=config.da_recovery_threshold, health_interval_s=config.da_health_interval_ms / 1000,
            batch_size=config.reconcile_batch_size, retry_delay_s=config.reconcile_retry_delay_ms / 1000,
            max_retries=config.reconcile_max_retries, parallel=config.reconcile_parallel, followed=followed,
            health_timeout_s=config.da_health_timeout_ms / 1000, members=lambda: self.members,
            adopt_grace_s=config.reconcile_adopt_grace_ms / 1000, own_key=self.public_key,
            probe=lambda: encode_blob(self.key, self.id, []),
        )
        self.publisher = Publisher(self.outbox, self.da.router, self.key, self.id, config.blob_max_bytes,
                                   config.publish_interval_ms / 1000)
        self.consumers = {
            name: Consumer(log_, self._apply_remote_events, self.members, member_ids=self.member_ids,
                           on_result=self._consumer_result(name),
                           # long polls at the head; a layer that cannot wait (the mock) is polled: the primary
                           # makes a block every interval, a quiet fallback log is read once a second
                           wait_s=LONG_POLL_S, idle_poll_s=0.25 if name == PRIMARY else 1.0)
            for name, log_ in self.da.followed.items()
        }
        # A pruned Celestia node does not keep old heights: start where the cluster's history begins.
        self.consumers[PRIMARY].cursor = config.da_start_height - 1
        self.da.on_recovered = self._layer_recovered
        # logged every 2 s while the consumers catch up at start; /ready's 503 body carries it
        self.progress = RebuildProgress(self.consumers, lambda: self.state.events_applied, lambda: self.rebuilt)
        self._consistency_flight: _ConsistencyCheck | None = None  # the consistency check running, if any
        # (latest timestamp of an event the outbox ever committed, this run's first stamp): an event of ours on DA
        # between the two is one this data folder never wrote (``_check_own_events``); None: not checked
        self._own_stamps: tuple[Timestamp, Timestamp] | None = None
        self.older_copy: str | None = None  # why this data folder is an older copy of itself, once found
        self.on_older_copy: Callable[[str], None] | None = None  # told so (the receipt engine)
        self.snapshots_written = 0
        self.snapshots_failed = 0
        self._final_snapshot: trio.CancelScope | None = None  # the final snapshot's scope while ``run`` writes it
        self._final_snapshot_cut = False
        self._snapshot_mark: tuple[int, dict[str, int], dict[str, dict[str, str]]] = (-1, {}, {})
        self._snapshot_at = -1e18  # trio time of the last snapshot written (see write_snapshot)
        self.started_ms = wall_ms()

    def _layer_recovered(self, layer: str) -> None:
        """A DA layer works again: its logs (a quorum layer's: its validators') are read at once, not after their
        backoff (an old failure streak counted as stuck meanwhile: /ready said 503 right after the recovery)."""
        for name, consumer in self.consumers.items():
            if name == layer or name.startswith(f"{layer}/"):
                consumer.retry_now()

    # ---- life cycle ------------------------------------------------------------------------------

    async def restore(self) -> None:
        """Load the snapshot and replay outbox events after its watermark (acknowledged writes)."""
        t0 = time.perf_counter()
        try:
            # (abandoned when the start is cut short: it only reads, and a large one takes seconds)
            snap = await trio.to_thread.run_sync(snapshot.load, self.config.data_dir, abandon_on_cancel=True)
        except Exception as exc:  # only an optimisation: rebuild from DA instead (whatever is wrong with it)
            log.warning("ignoring unreadable snapshot (%s: %s); rebuilding from DA", type(exc).__name__, exc)
            snap = None
        if snap is not None and snap.basis != self.basis:
            # read under other members (blobs of a member added since were passed by as an unknown signer's, and
            # its cursors are past them; a member's removed since are in its state) or another primary log (its
            # cursor is another log's height): its state root would differ from a rebuild's for good
            log.warning("ignoring the snapshot: it was taken under another member list or DA primary (namespace, "
                        "network) than this configuration's; rebuilding from DA")
            snap = None
        replaced = False
        if snap is not None:
            self.state = snap.state
            self.placement = Placement(self.state)
            for name, cursor in snap.cursors.items():
                if name in self.consumers:
                    consumer = self.consumers[name]
                    consumer.cursor, consumer.log = cursor, snap.logs.get(name)
                    log_client = _log_client(consumer)
                    if log_client is not None:
                        log_client.resume_log(consumer.log, cursor)
            self.applied_outbox_seq = snap.outbox_seq
            self._snapshot_mark = (snap.state.events_applied, snap.cursors, snap.logs)
            issued = await self.outbox.issued_seq()
            if issued < snap.outbox_seq:  # (its events after the snapshot's were skipped: acknowledged writes)
                log.warning("the outbox is not the one the snapshot was taken with (it numbered up to %d, the "
                            "snapshot is at %d: lost or replaced): all of it is replayed", issued, snap.outbox_seq)
                self.applied_outbox_seq, replaced = 0, True
        replayed = 0
        last = await self.outbox.last_seq()
        log.info("restoring: %s, %s", f"a snapshot of {self.state.events_applied} events" if snap is not None
                 else "no snapshot", f"outbox events {self.applied_outbox_seq + 1} to {last} to replay"
                 if last > self.applied_outbox_seq else "no outbox event to replay")
        told = time.perf_counter()
        # a page at a time: read all at once, an outbox grown through a long DA outage filled the memory
        while rows := await self.outbox.since(self.applied_outbox_seq, REPLAY_PAGE, REPLAY_PAGE_BYTES):
            for seq, raw in rows:
                try:
                    replayed += self.state.apply(ev.decode_event(raw))
                except ev.EventDecodeError as exc:  # (a damaged row: it stopped every start; no member accepts it)
                    log.error("outbox event %d is no valid event (%s): not applied (no member accepts it either)",
                              seq, exc)
                self.applied_outbox_seq = seq
            if self.applied_outbox_seq < last and time.perf_counter() - told >= PROGRESS_EVERY_S:
                told = time.perf_counter()  # (a long replay said nothing until its end)
                log.info("restoring: %d events of the outbox replayed (at %d of %d) in %.0f s", replayed,
                         self.applied_outbox_seq, last, told - t0)
        self.hlc.observe(self.state.max_hlc)
        issued = await self.outbox.high_water()
        ahead_s = (issued[0] - wall_ms()) / 1000
        if ahead_s > MAX_DRIFT_MS / 1000:
            log.error("this coordinator issued timestamps up to %.0f s ahead of its clock now (a clock stepped back, "
                      "or once wrong): its writes go on after them, and win over others' until the clock catches up",
                      ahead_s)
        self.hlc.resume(issued)
        own = await self.outbox.stamp_high_water()
        if own is not None:  # (none recorded: an outbox made anew, or by an older version: nothing to tell by)
            started = max(self.hlc.last, (wall_ms(), 0))
            self.hlc.resume(started)  # (our stamps from now on come after it, even if the wall clock steps back:
            #                            such a stamp read back from DA passed for an older copy's: a regression review)
            self._own_stamps = (own, started)
        log.info("restored: snapshot=%s cursors=%s events=%d outbox-replayed=%d pending=%d in %.3fs",
                 "yes" if snap else "no", self.cursors(), self.state.events_applied, replayed,
                 self.outbox.pending, time.perf_counter() - t0)
        if replaced:  # at once: the old watermark left on disk, a crash once the new outbox numbered past it made
            # the next start skip its rows up to there (acknowledged writes missing until DA gave them back: a
            # reviewer's reproduction)
            self._snapshot_mark = (-1, {}, {})
            await self._snapshot_or_log()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run every background task until cancelled; then write a final snapshot."""
        await self.restore()
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.outbox.run)
                await nursery.start(self.publisher.run)
                for consumer in self.consumers.values():
                    await nursery.start(consumer.run)
                await nursery.start(self.da.monitor)
                nursery.start_soon(self._snapshot_loop)
                nursery.start_soon(self.progress.run)
                task_status.started()
        finally:
            try:
                with trio.CancelScope(shield=not self._final_snapshot_cut) as self._final_snapshot, \
                        trio.move_on_after(10):
                    await self._snapshot_or_log()
            finally:  # (also when a second signal cut the final snapshot short: cut_final_snapshot)
                self.outbox.close()
                await self.da.aclose(close_layers=False)  # the layers belong to whoever made them

    def cut_final_snapshot(self) -> None:
        """Let a cancel reach the final snapshot ``run`` writes as it stops (shielded: a stop's own cancel must not
        cut it): a second SIGTERM or Ctrl-C during a long one (a large state) stops at once. The previous snapshot
        stays; the next start replays the outbox beyond it."""
        self._final_snapshot_cut = True
        if self._final_snapshot is not None:
            self._final_snapshot.shield = False

    def cursors(self) -> dict[str, int]:
        return {name: c.cursor for name, c in self.consumers.items()}

    async def write_snapshot(self, *, cursors_alone: bool = True) -> bool:
        """Write a snapshot if anything changed since the last one; prune the outbox below it. ``cursors_alone``
        False (the periodic ones): not when only the cursors moved, unless ``CURSORS_ONLY_SNAPSHOT_S`` passed since
        the last one (a Celestia cursor moves at every block: an idle coordinator rewrote and fsynced its whole
        state, 133 MiB at 1M events, every 30 s; a reviewer's reading). A restart reads those heights again."""
        # (the logs too: restored from a snapshot without them, a log read again from the start ends where it was,
        # and no snapshot was written to keep them: every restart read it again: a reviewer's reproduction)
        logs = {name: c.log for name, c in self.consumers.items() if c.log is not None}
        mark = (self.state.events_applied, self.cursors(), logs)
        if mark == self._snapshot_mark:
            return False
        if (not cursors_alone and (mark[0], _named(mark[2])) == (self._snapshot_mark[0], _named(self._snapshot_mark[2]))
                and trio.current_time() - self._snapshot_at < CURSORS_ONLY_SNAPSHOT_S):
            return False
        snap = snapshot.Snapshot(self.state, mark[1], self.applied_outbox_seq, logs, self.basis)
        size = await snapshot.save(self.config.data_dir, snap)
        self._snapshot_mark, self._snapshot_at = mark, trio.current_time()
        self.snapshots_written += 1
        try:  # (the snapshot is written: a failed prune is not a failed snapshot; the next one prunes again)
            pruned = await self.outbox.prune(snap.outbox_seq)
        except sqlite3.Error as exc:
            log.warning("snapshot written, but pruning the outbox below it failed (%s); the next snapshot tries "
                        "again", exc)
            pruned = 0
        log.info("snapshot written: %d bytes, %d events, cursors %s, pruned %d outbox rows",
                 size, mark[0], mark[1], pruned)
        return True

    async def _snapshot_or_log(self, *, cursors_alone: bool = True) -> None:
        """``write_snapshot``, its failure logged and counted (``snapshots_failed``): a snapshot is only an
        optimisation, and a full disk must not take the coordinator down (it did), nor skip the clean-up after
        the final one. The previous snapshot stays in place, the outbox is not pruned; the next interval tries
        again."""
        try:
            await self.write_snapshot(cursors_alone=cursors_alone)
        except (OSError, sqlite3.Error) as exc:
            self.snapshots_failed += 1
            log.error("writing a snapshot failed (%s: %s); the previous one stays, trying again in %g s",
                      type(exc).__name__, exc, self.config.snapshot_interval_ms / 1000)

    async def _snapshot_loop(self) -> None:
        while True:
            await trio.sleep(self.config.snapshot_interval_ms / 1000)
            await self._snapshot_or_log(cursors_alone=False)
            self.stats.prune(wall_ms())

    # ---- applying --------------------------------------------------------------------------------

    def _on_commit(self, committed: list[tuple[int, Event]]) -> None:
        for seq, event in committed:
            self.state.apply(event)
            self.applied_outbox_seq = seq
            if self._stamped_ahead:  # the state holds it now: its stamp ahead is done with (see _stamp)
                register = _register_of(event.kind, event.as_dict())
                if self._stamped_ahead.get(register) == (event.wall, event.counter):
                    del self._stamped_ahead[register]

    def _apply_remote_events(self, events: list[EventTuple]) -> int:
        """Events of other members (a blob's, read from DA): they are applied, and the clock observes them (their
        latest one, which the state found, when it is within the clock's bound)."""
        try:
            return self.state.apply_events(events)
        finally:
            self.hlc.observe_all(map(_hlc_of, events), self.state.last_hlc)
            if self._own_stamps is not None and events and events[-1][3] == self.id:
                self._check_own_events(events)

    def _check_own_events(self, events: list[EventTuple]) -> None:
        """Events of ours read from DA (signed with our identity key: nobody else makes them). One stamped after
        the latest the outbox ever committed, yet before this run began, was written by this coordinator from a data
        folder that went on past this one: this folder is an older copy (a backup restored, a VM snapshot
        reverted), or another process ran with this identity. Its lock table may miss the slot locks taken since,
        and nothing in it tells: the receipt engine locks no slot anew until those could no longer be signed."""
        assert self._own_stamps is not None
        committed, started = self._own_stamps
        latest = max((e[1], e[2]) for e in events if e[3] == self.id)
        if not committed < latest < started:
            return
        self._own_stamps = None  # (found once)
        self.older_copy = (f"an event of this coordinator on DA (stamped {latest[0]}) is later than any its outbox "
                           f"ever committed ({committed[0]}): this data folder is an older copy of itself (restored "
                           "from a backup, a snapshot reverted), or another process ran with its identity")
        log.error("%s", self.older_copy)
        if self.on_older_copy is not None:
            self.on_older_copy(self.older_copy)

    async def submit_event(self, kind: str, **fields: Any) -> Event:
        """Append an event of this coordinator durably (outbox → DA) and apply it; for the receipt engine."""
        return await self._submit(kind, **fields)

    async def _submit(self, kind: str, **fields: Any) -> Event:
        event = ev.make_event(kind, self._stamp(kind, fields), self.id, **fields)
        await self.outbox.append(event, self.hlc.last)
        return event

    def _stamp(self, kind: str, fields: dict[str, Any]) -> Timestamp:
        """The timestamp of a local write: the clock's next one, or, when the register the write is for holds a
        version stamped at or after that, the next one after that version (and after any stamp issued so, for two
        such writes in flight at once). Our clock follows an observed timestamp no further than MAX_DRIFT_MS past
        the wall clock (a member's clock running fast, or a liar's, must not drag every later write with it); so a
        write to a register a member with a fast clock wrote lost to its version, last writer wins, though
        acknowledged (a reviewer's reproduction: a node re-registered here kept the member's zone). The register's
        version is followed up to FUTURE_WRITE_LIMIT_MS ahead of the wall clock; past that the write is refused
        (ClockConflict) rather than acknowledged and ignored. Such a stamp is kept per register while its write is
        in flight (one shared by all registers carried a liar's lead to every other write: a regression review),
        and the outbox's high-water mark takes the clock's own timestamp, not it (``Outbox.append_all``). An entry
        goes once its write commits (``_on_commit``) or the clock passes it, never when a write fails or its caller
        goes (rolled back then, a later write got the very stamp of one still in flight: a regression review)."""
        now = self.hlc.now()
        held = self.state.held_version(kind, fields)
        register = _register_of(kind, fields)
        after = self._stamped_ahead.get(register)  # a write of ours to it, stamped ahead, still in flight
        if after is not None and after < now:
            del self._stamped_ahead[register]
            after = None
        if len(self._stamped_ahead) > MAX_STAMPED_AHEAD:  # (entries of writes that failed, mostly)
            kept = [(r, t) for r, t in self._stamped_ahead.items() if t > now]
            self._stamped_ahead = dict(kept[-MAX_STAMPED_AHEAD // 2 :])  # the latest: writes in flight are among them
        if held is not None and (after is None or (held[0], held[1]) > after):
            after = (held[0], held[1])
        if after is None or after < now:
            return now
        wall, counter = after if after[1] < MAX_PART else (after[0] + 1, -1)
        ahead_ms = wall - self.hlc.wall()
        if ahead_ms > FUTURE_WRITE_LIMIT_MS:
            what = f"{kind} {fields.get('id') or fields.get('hash') or ''}".strip()
            writer = held[2] if held is not None else self.id
            raise ClockConflict(f"the register this write is for ({what}) holds a write of member {writer!r} "
                                f"stamped {ahead_ms / 3_600_000:.1f} h ahead of this coordinator's clock (more than "
                                f"the {FUTURE_WRITE_LIMIT_MS // 3_600_000} h a write may be stamped ahead to follow "
                                "it): this write would be ignored, so it is refused; check that member's clock")
        stamp = self._stamped_ahead[register] = (wall, counter + 1)
        return stamp

    def _consumer_result(self, name: str) -> Any:
        def record(ok: bool, error: str | None) -> None:
            if name in self.da.layers:  # a validator's own log is not a layer of the status machine
                self.da.observe(name, ok, error)

        return record

    def da_read_through(self) -> float | None:
        """While DA works for this coordinator (the status is Healthy: its writes land on the primary; and its
        latest read of the primary log reached the head, not merely once: one catching up after an outage is not
        there), the trio time its latest read that reached the head began: everything the log held then is in
        the state. None otherwise. (For the receipt engine: whether a batch announced before then is missing.)"""
        primary = self.consumers[PRIMARY]
        if self.da.snapshot().status is not Status.HEALTHY or not primary.at_head:
            return None
        return primary.head_read_started

    @property
    def rebuilt(self) -> bool:
        """The primary log (the source of truth) has been read up to its head at least once, and so has
        every other followed log that answers."""
        return self.consumers[PRIMARY].caught_up.is_set() and all(
            c.caught_up.is_set() or not c.last_ok for c in self.consumers.values())

    # ---- nodes -----------------------------------------------------------------------------------

    async def register_node(self, node_id: str, zone: str, addr: str, capacity_gb: int,
                            public_key: str | None = None) -> None:
        """``public_key``: the node's Ed25519 key (64 lower-case hex), which it needs to earn receipts."""
        writes: list[tuple[str, dict[str, Any]]] = [
            (ev.NODE_REGISTERED, {"id": node_id, "zone": zone, "addr": addr, "capacity_gb": capacity_gb})]
        if public_key is not None:  # both or neither (Outbox.append_all)
            writes.append((ev.NODE_KEY, {"id": node_id, "public_key": public_key}))
        events = [ev.make_event(kind, self._stamp(kind, fields), self.id, **fields) for kind, fields in writes]
        await self.outbox.append_all(events, self.hlc.last)

    def node_json(self, node_id: str, rec: tuple[str, str, int]) -> dict[str, Any]:
        """The seed's node shape, plus ``public_key`` for a node that registered one."""
        out: dict[str, Any] = {"id": node_id, "zone": rec[0], "addr": rec[1], "capacity_gb": rec[2], "meta": {}}
        key = self.state.ledger.key_of(node_id)
        if key is not None:
            out["public_key"] = key.hex()
        return out

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
        # stamped past what the table holds: a peer's report stamped ahead of this clock (up to MAX_FUTURE_MS, a
        # clock running fast or a lying member) hid every report the node itself made until then (a reviewer's
        # reproduction); the node's own latest report wins here, and everywhere it is sent with this stamp
        # ... but never so far ahead that it is ignored (here and by every peer, as from the future: reports coming
        # faster than one per millisecond, or right behind such a peer's report, did; a reviewer's reproduction)
        now = wall_ms()
        stats = NodeStats(reported_ms=min(max(now, self.stats.latest_ms(node_id, now) + 1), now + MAX_FUTURE_MS - 1),
                          **values)
        if self.stats.put(node_id, stats, now):  # (one refused here is not sent: peers held what this one did not)
            self.on_stats(node_id, stats)

    def on_stats(self, node_id: str, stats: NodeStats) -> None:
        """Called with every locally reported stats update; the process entry shares them with peers."""

    def accept_stats(self, node_id: str, stats: NodeStats) -> None:
        """Stats a peer received (last writer wins by report time; the node may not be replicated here yet)."""
        self.stats.put(node_id, stats)

    # ---- placement and scheduling ----------------------------------------------------------------

    async def place(self, key: str, rf: int) -> list[str]:
        await self.placement.follow()  # a large change is followed in a worker thread, not on the event loop
        return self.placement.place(key, rf)

    def weights(self) -> dict[str, float]:
        """The weights in force: the latest scheduler.config's, or the defaults while there is none, or while it
        holds a weight outside WEIGHT_RANGE (the HTTP route refuses those, but a member's event is checked for
        finite numbers only: -1e308 and 1e308 made every score NaN and every /schedule a 404)."""
        current = self.state.weights()
        if current is None or not all(WEIGHT_RANGE[0] <= w <= WEIGHT_RANGE[1] for w in current):
            return dict(DEFAULT_WEIGHTS)
        return dict(zip(WEIGHT_NAMES, current, strict=True))

    async def set_weights(self, values: dict[str, float]) -> dict[str, float]:
        weights = {name: values.get(name, DEFAULT_WEIGHTS[name]) for name in WEIGHT_NAMES}
        await self._submit(ev.SCHEDULER_CONFIG, **weights)
        return weights

    def schedule(self, workload: Workload) -> str | None:
        now = wall_ms()
        candidates = ((nid, s) for nid, s in self.stats.current(now) if self.state.node(nid) is not None)
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
        # missing: a node registered once (its replicas outlive its unregistration) or holding a replica register
        # of the object; a name never seen would publish an event about nothing
        if not present and node_id not in self.state.nodes and not self.state.holds_replica_register(obj, node_id):
            raise NotFound({"error": "node not found", "node_id": node_id})
        kind = ev.REPLICA_HEALED if present else ev.REPLICA_MISSING
        await self._submit(kind, hash=obj, node_id=node_id)

    # ---- DA views (all read one snapshot of the health, so they never disagree) -------------------

    async def da_post(self, data: bytes) -> BlobRef:
        try:
            return await self.da.router.post(data)
        except LandedUnrecorded as landed:  # a local storage failure (503): the caller may post it again
            raise landed.cause from landed

    def da_view(self) -> StatusSnapshot:
        return self.da.snapshot()

    def readiness(self) -> dict[str, Any]:
        """``{"ready": True}``, or ``{"ready": False, "reason", ...}`` saying why not (GET /ready answers it with
        200 or 503; /health and /metrics report the same verdict)."""
        if not self.rebuilt:  # a log that cannot be read keeps its cursor: say why instead of skipping it
            why = "; ".join(f"{name} log: {error}" for name, error in self.da.read_problems().items())
            return {"ready": False, "reason": "rebuilding state from DA" + (f": {why}" if why else ""),
                    "progress": self.progress.snapshot()}  # cursor/head per log, events/s, ETA
        snap = self.da_view()
        # once rebuilt: a log whose reads keep failing (its cursor stays: events after it may be missing) — not a
        # layer the DA status reports down: an outage is that view's matter (writes fall back); nor, with the quorum
        # layer down, its validators' logs (they are that layer: all of them down made every coordinator unready
        # while the primary took the writes, a reviewer's finding)
        quorum = getattr(self.da.layers.get(SECONDARY), "inner", None)  # a QuorumDA: its validators' logs
        validator_logs = [name for name in self.consumers if name not in self.da.layers]
        down = [name for name, ok in snap.healthy.items() if not ok]
        stuck = stuck_logs(self.consumers, down=down + (validator_logs if SECONDARY in down else []),
                           quorum_logs=validator_logs,
                           quorum_required=getattr(quorum, "required", 1))
        if stuck:
            why = "; ".join(f"{name} log: {s['error']} (cursor stays at {s['cursor']}; failing for "
                            f"{s['failing_for_s']:.0f}s, {s['failed_reads']} reads)" for name, s in stuck.items())
            return {"ready": False, "reason": f"a DA log cannot be read: {why}", "stuck": stuck}
        if not snap.takes_writes:
            return {"ready": False, "reason": "no DA layer takes writes"}
        return {"ready": True}

    async def consistency(self) -> dict[str, Any]:
        """Fallback blobs (pending and reconciled) and recently published event blobs, checked for real. Callers
        arriving while a check runs share its report (``GET /fallback/consistency`` is open and each check reads up
        to a few hundred blobs: a hundred concurrent callers ran a hundred checks against DA); if the check they
        waited for was cancelled with its caller, the next one runs its own."""
        while (flight := self._consistency_flight) is not None:
            await flight.done.wait()
            if flight.report is not None:
                return flight.report
        flight = self._consistency_flight = _ConsistencyCheck()
        try:
            flight.report = await self._check_consistency()
            return flight.report
        finally:
            self._consistency_flight = None
            flight.done.set()

    async def _check_consistency(self) -> dict[str, Any]:
        report = await self.da.reconciler.consistency()
        published = await self.published_consistency()
        details = report["details"] + published["details"]
        return {**report, "is_consistent": not details, "complete": report["complete"] and published["complete"],
                "items_verified": report["items_verified"] + published["items_verified"],
                "inconsistencies_found": report["inconsistencies_found"] + published["inconsistencies_found"],
                "details": details, "verified_at": wall_ms()}

    async def published_consistency(self, limit: int = 100) -> dict[str, Any]:
        """Check for real that recently published events are readable from DA inside their blob, within the
        reconciler's check deadline (each read may take the layer's whole retry budget: a primary that accepts
        connections and never answers held a request for hours); what it left unchecked is reported."""
        landed = await self.outbox.recently_landed(limit)
        by_ref: dict[BlobRef, list[bytes]] = {}
        for item in landed:
            by_ref.setdefault(item.ref, []).append(item.raw)
        details: list[str] = []
        checked = 0
        deadline_s = self.da.reconciler.check_deadline_s
        with trio.move_on_after(deadline_s) as deadline:
            for ref, raws in by_ref.items():
                try:
                    data = await self.da.router.get(ref)
                except DAError as exc:
                    details.append(f"blob {ref.layer}@{ref.height}: not readable: {exc}")
                    checked += 1
                    continue
                checked += 1
                missing = sum(1 for raw in raws if raw not in data)
                if missing:
                    details.append(f"blob {ref.layer}@{ref.height}: {missing} of {len(raws)} events missing")
        inconsistencies = len(details)
        if deadline.cancelled_caught:  # not verified is not consistent
            details.append(f"published blobs check stopped at its {deadline_s:.3g}s deadline: {len(by_ref) - checked} "
                           f"of {len(by_ref)} recent blobs unchecked")
        return {
            "is_consistent": not details,
            "items_verified": checked,
            "inconsistencies_found": inconsistencies,
            "details": details,
            "verified_at": wall_ms(),
            "complete": not deadline.cancelled_caught,
        }
