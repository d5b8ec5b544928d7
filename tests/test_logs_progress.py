"""LOG_FORMAT=json (node.process.JsonFormatter, in a real coordinator process too) and the progress of a
rebuild from DA (node.consumer.RebuildProgress): its log lines under trio's MockClock, and /ready's 503 body
on a real Coordinator whose DA log holds back its second half until the test releases it."""

from __future__ import annotations

import gc
import io
import json
import logging
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nacl.signing
import pytest
import trio
import trio.testing

from api.app import create_app
from node import events as ev
from node.blob import encode_blob
from node.config import Config
from node.consumer import Consumer, RebuildProgress
from node.coordinator import Coordinator
from node.da.base import BlobNotFound, BlobRef, DAUnavailable, Page
from node.da.metered import MeteredLayer
from node.process import JsonFormatter, set_log_context
from tests.conftest import fill_outbox, wait_for
from tests.proc import CoordinatorProcess

EVENTS_PER_BLOB = 5


def signed_blobs(key: nacl.signing.SigningKey, count: int) -> list[bytes]:
    """``count`` blobs of EVENTS_PER_BLOB node registrations each, signed by ``key``."""
    blobs = []
    for b in range(count):
        raws = [ev.make_event(ev.NODE_REGISTERED, (1_000 + b, i), "writer", id=f"n-{b}-{i}", zone="z",
                              addr="10.0.0.1:5000", capacity_gb=10).raw for i in range(EVENTS_PER_BLOB)]
        blobs.append(encode_blob(key, "writer", raws))
    return blobs


class SlowLog:
    """A DA log of fixed blobs (heights 1..n): every read takes ``read_s``; blobs above ``gate`` are held back
    (reads there find nothing and are not at the head) until ``release`` is set."""

    def __init__(self, blobs: list[bytes], read_s: float, gate: int | None = None, name: str = "primary") -> None:
        self.blobs, self.read_s, self.gate, self.name = blobs, read_s, gate, name
        self.release = trio.Event()
        self.head_calls = 0

    async def read_after(self, cursor: int, limit: int, wait_s: float = 0.0) -> Page:
        await trio.sleep(self.read_s)
        top = len(self.blobs) if self.gate is None or self.release.is_set() else self.gate
        heights = range(cursor + 1, min(top, cursor + limit) + 1)
        items = [(BlobRef(self.name, h, b"c" * 32), self.blobs[h - 1]) for h in heights]
        end = heights[-1] if items else cursor
        return Page(items, end, end >= len(self.blobs))

    async def head(self) -> int:
        self.head_calls += 1
        return len(self.blobs)

    async def post(self, data: bytes) -> BlobRef:
        self.blobs.append(data)
        return BlobRef(self.name, len(self.blobs), b"c" * 32)

    async def get(self, ref: BlobRef) -> bytes:
        if not 1 <= ref.height <= len(self.blobs):
            raise BlobNotFound(f"no blob at {ref.height}")
        return self.blobs[ref.height - 1]


@pytest.fixture
def coordinator_context() -> Iterator[None]:
    yield
    set_log_context(coordinator=None)


# ---- JSON log lines ---------------------------------------------------------------------------------

def test_json_lines_carry_time_level_logger_coordinator_message_and_extra_fields(coordinator_context: None) -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("dsdn.test.json")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        set_log_context(coordinator="coordinator-7")
        logger.info("cursor at %d", 42, extra={"cursor": 42, "logs": {"primary": {"head": 50}}, "path": Path("/x")})
        try:
            raise ValueError("boom\nsecond line")
        except ValueError:
            logger.exception("it failed")
        set_log_context(coordinator=None)
        logger.warning("no coordinator here")
    finally:
        logger.removeHandler(handler)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3  # a traceback stays inside its one line
    first, second, third = (json.loads(line) for line in lines)
    assert first["level"] == "INFO" and first["logger"] == "dsdn.test.json"
    assert first["coordinator"] == "coordinator-7" and first["message"] == "cursor at 42"
    assert first["cursor"] == 42 and first["logs"] == {"primary": {"head": 50}} and first["path"] == "/x"
    assert first["time"].endswith("Z") and first["time"][10] == "T" and len(first["time"]) == 24
    assert "args" not in first and "msg" not in first and "levelno" not in first  # no LogRecord internals
    assert second["level"] == "ERROR" and "ValueError: boom" in second["exception"]
    assert third["coordinator"] is None and third["level"] == "WARNING"


async def test_a_real_coordinator_logs_json_lines_with_its_id(tmp_path: Path) -> None:
    proc = CoordinatorProcess(tmp_path / "data", tmp_path / "coordinator.log", COORDINATOR_ID="coord-json",
                              LOG_FORMAT="json", MOCK_DA_PATH=":memory:")
    proc.start()
    try:
        await proc.wait_ready()
        await trio.sleep(0.2)
        proc.kill(signal.SIGTERM)
        assert await proc.wait_exit() == 0
    finally:
        proc.stop_now()
    lines = [line for line in proc.log().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert records and all(r["coordinator"] == "coord-json" for r in records)
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    messages = [r["message"] for r in records]
    assert any("listening on" in m for m in messages) and any(m.startswith("ready: state rebuilt") for m in messages)
    assert any(m == "stopped cleanly" for m in messages)


def test_an_invalid_log_format_stops_start_up_with_one_line(tmp_path: Path) -> None:
    env = {"USE_MOCK_DA": "true", "COORDINATOR_DATA_DIR": str(tmp_path), "LOG_FORMAT": "xml", "PATH": "/usr/bin"}
    done = subprocess.run([sys.executable, "-m", "deploy.coordinator"], env=env, capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).parent.parent)
    assert done.returncode == 2
    assert done.stderr.strip() == "dsdn-coordinator: configuration error: LOG_FORMAT='xml': expected one of text, json"


# ---- rebuild progress -------------------------------------------------------------------------------

class Applied:
    def __init__(self) -> None:
        self.ids: set[bytes] = set()

    def __call__(self, events: list[ev.EventTuple]) -> int:
        before = len(self.ids)
        self.ids.update(event[6] for event in events)  # plain tuples: [6] is the id
        return len(self.ids) - before


async def test_a_rebuild_reports_cursor_head_rate_and_eta_every_two_seconds(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    key = nacl.signing.SigningKey.generate()
    log = SlowLog(signed_blobs(key, 400), read_s=0.7)  # 32 blobs a read: ~45.7 heights/s, ~229 events/s
    applied = Applied()
    consumer = Consumer(log, applied, frozenset({bytes(key.verify_key)}))
    progress = RebuildProgress({"primary": consumer}, lambda: len(applied.ids), consumer.caught_up.is_set)
    caplog.set_level(logging.INFO, logger="dsdn.consumer")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(consumer.run)
        started = trio.current_time()
        await progress.run()  # returns when the consumer reached the head
        elapsed = trio.current_time() - started
        nursery.cancel_scope.cancel()
    assert len(applied.ids) == 2000 and consumer.cursor == 400
    reports = [r for r in caplog.records if r.getMessage().startswith("rebuilding from DA")]
    # 13 reads of 0.7 s: 9.1 s, one report every 2 s while behind
    assert 9.0 <= elapsed < 9.4 and len(reports) == 4 and progress.reports == 4
    cursors = [0]
    for n, record in enumerate(reports, 1):
        p: dict[str, Any] = record.progress  # type: ignore[attr-defined]
        primary = p["logs"]["primary"]
        assert primary["head"] == 400 and primary["behind"] == 400 - primary["cursor"] and not primary["caught_up"]
        # the rates are those of the last 2 s (whole reads of 32 blobs: 64 or 96 heights)
        assert primary["heights_per_s"] == (primary["cursor"] - cursors[-1]) / 2.0
        assert 32 / 0.7 * 0.6 <= primary["heights_per_s"] <= 32 / 0.7 * 1.1
        assert p["events_per_s"] == primary["heights_per_s"] * EVENTS_PER_BLOB
        cursors.append(primary["cursor"])
        assert p["eta_s"] == pytest.approx(primary["behind"] / primary["heights_per_s"], rel=0.01)
        assert p["events_applied"] == primary["cursor"] * EVENTS_PER_BLOB
        assert p["elapsed_s"] == pytest.approx(2.0 * n, abs=0.01) and p["reports"] == n
        message = record.getMessage()
        assert f"primary {primary['cursor']}/400" in message and "events/s" in message and "ETA" in message
    assert cursors == sorted(cursors) and cursors[1] < cursors[-1]
    assert log.head_calls == 4  # one head() per report, for the log that is behind
    done = [r for r in caplog.records if r.getMessage().startswith("rebuild from DA complete")]
    assert len(done) == 1 and done[0].events == 2000  # type: ignore[attr-defined]
    assert done[0].elapsed_s == pytest.approx(elapsed, abs=0.11)  # type: ignore[attr-defined]


async def test_a_log_that_does_not_say_its_head_leaves_head_and_eta_unknown(
        autojump_clock: trio.testing.MockClock) -> None:
    key = nacl.signing.SigningKey.generate()
    log = SlowLog(signed_blobs(key, 1000), read_s=0.7)

    async def no_head() -> int:
        await trio.sleep_forever()
        return 0

    log.head = no_head  # type: ignore[method-assign]
    consumer = Consumer(log, Applied(), frozenset({bytes(key.verify_key)}))
    progress = RebuildProgress({"primary": consumer}, lambda: consumer.events_new, consumer.caught_up.is_set,
                               head_timeout_s=1.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(consumer.run)
        nursery.start_soon(progress.run)
        await trio.sleep(3.5)  # the first report: at 2 s, done when head() gave up after 1 s
        assert progress.reports == 1
        report = progress.snapshot()
        nursery.cancel_scope.cancel()
    primary = report["logs"]["primary"]
    assert primary["head"] is None and primary["behind"] is None and report["eta_s"] is None
    assert "no answer within 1s" in primary["error"] and primary["heights_per_s"] > 0


async def test_ready_503_carries_the_progress_while_rebuilding(make_config: Callable[..., Config]) -> None:
    key = nacl.signing.SigningKey.generate()
    log = SlowLog(signed_blobs(key, 200), read_s=0.005, gate=100)
    coord = Coordinator(make_config("rebuilder", CLUSTER_MEMBER_KEYS=bytes(key.verify_key).hex()), log)
    coord.progress.interval_s = 0.1
    client = create_app(coord).test_client()
    async with trio.open_nursery() as nursery:
        await nursery.start(coord.run)
        await wait_for(lambda: coord.progress.reports >= 2 and coord.consumers["primary"].cursor == 100,
                       timeout=10, what="progress reports at the gate")
        response = await client.get("/ready")
        assert response.status_code == 503
        body = await response.get_json()
        assert body["ready"] is False and body["reason"].startswith("rebuilding state from DA")
        progress = body["progress"]
        primary = progress["logs"]["primary"]
        assert primary == {**primary, "cursor": 100, "head": 200, "behind": 100, "caught_up": False}
        assert progress["events_applied"] == 100 * EVENTS_PER_BLOB and progress["elapsed_s"] > 0
        assert set(progress) >= {"events_per_s", "eta_s", "reports"}
        log.release.set()
        await wait_for(lambda: coord.rebuilt, timeout=10, what="the rebuild to finish")
        response = await client.get("/ready")
        assert response.status_code == 200 and await response.get_json() == {"ready": True}
        assert coord.state.node_count == 200 * EVENTS_PER_BLOB
        nursery.cancel_scope.cancel()


async def test_a_log_that_cannot_be_read_names_the_error(autojump_clock: trio.testing.MockClock) -> None:
    key = nacl.signing.SigningKey.generate()
    log = SlowLog(signed_blobs(key, 10), read_s=0.1)

    async def failing(cursor: int, limit: int, wait_s: float = 0.0) -> Page:
        raise DAUnavailable("primary: connection refused")

    log.read_after = failing  # type: ignore[method-assign]
    consumer = Consumer(MeteredLayer(log, 5.0), Applied(), frozenset({bytes(key.verify_key)}))
    progress = RebuildProgress({"primary": consumer}, lambda: consumer.events_new, consumer.caught_up.is_set)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(consumer.run)
        nursery.start_soon(progress.run)
        await trio.sleep(2.5)
        report = progress.snapshot()
        nursery.cancel_scope.cancel()
    primary = report["logs"]["primary"]
    assert primary["error"] == "reading after 0 failed: primary: connection refused"
    assert primary["cursor"] == 0 and primary["head"] == 10 and primary["heights_per_s"] == 0.0
    assert report["eta_s"] is None and progress.reports == 1


async def test_catching_up_freezes_the_collected_heap_until_the_head(autojump_clock: trio.testing.MockClock) -> None:
    """While behind, each page's registers leave the collector's generations (gc.freeze: no young-generation pass
    walks them again); a page at the head, or the consumer stopping mid-way, hands them all back (gc.unfreeze)."""
    key = nacl.signing.SigningKey.generate()
    log = SlowLog(signed_blobs(key, 80), read_s=0.1)  # pages of 32 blobs: 32, 64 behind, then 80 at the head
    consumer = Consumer(log, Applied(), frozenset({bytes(key.verify_key)}))
    gc.unfreeze()
    try:
        frozen = []
        for _ in range(3):
            at_head = await consumer.poll_once()
            frozen.append((consumer.cursor, at_head, gc.get_freeze_count() > 0))
        assert frozen == [(32, False, True), (64, False, True), (80, True, False)]
        # a consumer cancelled behind the head unfreezes too
        behind = Consumer(SlowLog(signed_blobs(key, 40), read_s=0.1), Applied(), frozenset({bytes(key.verify_key)}))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(behind.run)
            await wait_for(lambda: behind.cursor == 32, timeout=5)
            assert gc.get_freeze_count() > 0
            nursery.cancel_scope.cancel()  # stopped behind the head
        assert gc.get_freeze_count() == 0
    finally:
        gc.unfreeze()


async def test_a_long_outbox_replay_at_start_says_how_far_it_got(
        make_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """It said nothing between the start and "restored:", however long the replay of a large outbox took."""
    import node.coordinator as coordinator_mod
    monkeypatch.setattr(coordinator_mod, "PROGRESS_EVERY_S", 0.0)  # every page, here
    monkeypatch.setattr(coordinator_mod, "REPLAY_PAGE", 10)
    cfg = make_config("c0")
    cfg.data_dir.mkdir(parents=True)
    fill_outbox(cfg.data_dir / "outbox.sqlite", 30)
    coord = Coordinator(cfg, SlowLog([], read_s=0.0))
    with caplog.at_level(logging.INFO, logger="dsdn.coordinator"):
        await coord.restore()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("restoring")]
    assert lines[0] == "restoring: no snapshot, outbox events 1 to 30 to replay"
    assert [line.split(" in ")[0] for line in lines[1:]] == [
        "restoring: 10 events of the outbox replayed (at 10 of 30)",
        "restoring: 20 events of the outbox replayed (at 20 of 30)"]
    assert coord.state.node_count == 30
    coord.outbox.close()
    caplog.clear()  # an empty outbox: "no outbox event to replay", not "1 to 0"
    empty = make_config("c1")
    empty.data_dir.mkdir(parents=True)
    again = Coordinator(empty, SlowLog([], read_s=0.0))
    with caplog.at_level(logging.INFO, logger="dsdn.coordinator"):
        await again.restore()
    assert "restoring: no snapshot, no outbox event to replay" in [r.getMessage() for r in caplog.records]
    again.outbox.close()


async def test_an_outbox_that_is_not_the_snapshots_is_replayed_whole(make_config: Callable[..., Config]) -> None:
    """outbox.sqlite lost or replaced (its numbers start at 1 again) beside a snapshot taken at outbox 20: the
    writes acknowledged since (seq 1, 2, 3) were skipped at the next start, missing until DA gave them back
    (a reviewer's reproduction); and a save killed midway left snapshot.tmp for good."""
    from node import snapshot
    from node.state import State

    cfg = make_config("c0")
    cfg.data_dir.mkdir(parents=True)
    fill_outbox(cfg.data_dir / "outbox.sqlite", 3)
    coord = Coordinator(cfg, SlowLog([], read_s=0.0))
    await snapshot.save(cfg.data_dir, snapshot.Snapshot(State(), {"primary": 0}, 20, basis=coord.basis))
    (cfg.data_dir / "snapshot.tmp").write_bytes(b"half a snapshot")
    await coord.restore()
    assert coord.state.node_count == 3 and coord.applied_outbox_seq == 3
    assert not (cfg.data_dir / "snapshot.tmp").exists()
    # a snapshot at once (the old watermark left on disk, a crash once the new outbox numbered past 20 skipped its
    # rows up to there at the next start: a reviewer's reproduction)
    saved = snapshot.load(cfg.data_dir)
    assert saved is not None and saved.outbox_seq == 3 and coord.snapshots_written == 1
    coord.outbox.close()


class DownFor(SlowLog):
    """A log that refuses reads (connection refused) while ``down`` is set."""

    def __init__(self) -> None:
        super().__init__([], read_s=0.0, name="secondary/0")
        self.down = True

    async def read_after(self, cursor: int, limit: int, wait_s: float = 0.0) -> Page:
        if self.down:
            raise DAUnavailable("ConnectError: [Errno 111] Connection refused")
        return await super().read_after(cursor, limit, wait_s)


async def test_a_log_not_listening_yet_at_start_is_noted_and_a_warning_comes_only_if_it_stays_so(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    """The members of a local cluster start one after another: each start printed a dozen warnings about validators
    not listening yet (a fresh user's run). A log never read yet that fails within START_GRACE_S of the start is noted
    at INFO; still failing after it, one WARNING; one that was read and then fails, a WARNING at once."""
    from node.consumer import START_GRACE_S

    def said() -> list[tuple[str, str]]:
        found = [(r.levelname, r.getMessage().split(";")[0].split(":")[0]) for r in caplog.records
                 if r.getMessage().startswith("reading secondary/0")]
        caplog.clear()
        return found

    caplog.set_level(logging.INFO, logger="dsdn.consumer")
    for stays_down_s, expected in ((1.0, [("INFO", "reading secondary/0 failed (cursor 0) at start"),
                                          ("INFO", "reading secondary/0 works now (cursor 0)")]),
                                   (START_GRACE_S + 15, [("INFO", "reading secondary/0 failed (cursor 0) at start"),
                                                         ("WARNING", "reading secondary/0 still fails 10s after the "
                                                                     "start (cursor 0)"),
                                                         ("INFO", "reading secondary/0 works now (cursor 0)")])):
        layer = DownFor()
        consumer = Consumer(layer, lambda events: 0, frozenset())  # type: ignore[arg-type]
        async with trio.open_nursery() as nursery:
            await nursery.start(consumer.run)
            await trio.sleep(stays_down_s)
            layer.down = False
            await trio.sleep(12)  # (the backoff's longest wait: 10 s)
            assert said() == expected
            layer.down = True  # read once, then failing: a warning at once
            await trio.sleep(12)
            assert said()[0] == ("WARNING", "reading secondary/0 failed (cursor 0)")
            nursery.cancel_scope.cancel()


async def test_a_log_failing_while_the_process_stops_is_noted_not_warned(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    """The members of a cluster stop at the same moment: each clean stop printed a dozen warnings about the others'
    validators going away under its reads (a fresh user's run). Once its own stop has begun, they are INFO."""
    from node import process

    caplog.set_level(logging.INFO, logger="dsdn.consumer")
    layer = DownFor()
    layer.down = False
    consumer = Consumer(layer, lambda events: 0, frozenset())  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(consumer.run)
        await trio.sleep(1)
        process._cut_sends(process.GRACEFUL_TIMEOUT_S)  # (what a stop signal does first)
        assert process.stopping()
        layer.down = True
        await trio.sleep(2)
        nursery.cancel_scope.cancel()
    failed = [r for r in caplog.records if "failed" in r.getMessage()]
    assert failed and all(r.levelname == "INFO" and "while stopping" in r.getMessage() for r in failed), failed
