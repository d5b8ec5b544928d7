"""Stats from peers are checked like POST /node/{id}/stats: zero latency, out-of-range or non-finite values,
report times from the future and unknown node ids cannot reach the scheduler, pin an entry or grow the
table; /schedule never answers 500 whatever the table holds."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import trio
import trio.testing

from node import events as ev
from node import gossip
from node.coordinator import Coordinator
from node.hlc import wall_ms
from node.scheduler import DEFAULT_WEIGHTS, MAX_FUTURE_MS, NodeStats
from node.stats import StatsTable
from protocol.envelope import Registry
from protocol.manager import PeerManager
from protocol.simnet import SimNetwork
from tests.test_peers import KEYS, members
from tests.test_peers import registry as peer_registry

NODE = {"id": "n1", "zone": "z", "addr": "10.0.0.1:50051"}
GOOD = {"cpu_free": 0.5, "ram_free_mb": 1000.0, "gpu_free": 0.0, "latency_ms": 5.0, "io_pressure": 0.1}


def body(node_id: str = "n1", reported_ms: int | None = None, **values: Any) -> dict[str, Any]:
    return {"node_id": node_id, "reported_ms": wall_ms() if reported_ms is None else reported_ms, **GOOD, **values}


async def registered(client: Any, *ids: str) -> None:
    for node_id in ids:
        resp = await client.post("/register", json={**NODE, "id": node_id})
        assert resp.status_code == 200


@pytest.mark.parametrize(("values", "field"), [
    ({"latency_ms": 0.0}, "latency_ms"), ({"latency_ms": -1.0}, "latency_ms"), ({"cpu_free": -0.5}, "cpu_free"),
    ({"io_pressure": 1.5}, "io_pressure"), ({"ram_free_mb": 1e13}, "ram_free_mb"), ({"gpu_free": math.inf}, "gpu_free"),
    ({"cpu_free": math.nan}, "cpu_free"), ({"latency_ms": 1e8}, "latency_ms")])
async def test_gossip_uses_the_http_validator(coord: Coordinator, client: Any, values: dict[str, float],
                                             field: str) -> None:
    await registered(client, "n1")
    with pytest.raises(gossip.InvalidValue) as err:
        gossip.from_body(body(**values), wall_ms(), coord.stats.ttl_ms)
    assert err.value.field == field
    value = values[field]
    literal = repr(value) if math.isfinite(value) else "1e400"  # JSON has no NaN/inf: 1e400 overflows to inf
    data = json.dumps({**GOOD, field: 0}).replace(f'"{field}": 0', f'"{field}": {literal}')
    resp = await client.post("/node/n1/stats", data=data, headers={"Content-Type": "application/json"})
    assert resp.status_code == 422 and (await resp.get_json())["field"] == field  # the HTTP route agrees
    intake = gossip.StatsIntake(coord)
    assert intake.receive("peer", body(**values), wall_ms()) is False and intake.refused == 1
    assert coord.stats.get("n1", wall_ms()) is None


async def test_report_times_from_the_future_or_the_past_are_refused_and_small_skew_is_kept_as_stamped(
        coord: Coordinator, client: Any) -> None:
    await registered(client, "n1")
    intake = gossip.StatsIntake(coord)
    now = wall_ms()
    assert not intake.receive("peer", body(reported_ms=2**62), now)  # would win every merge and never expire
    assert not intake.receive("peer", body(reported_ms=now + MAX_FUTURE_MS + 1), now)
    assert not intake.receive("peer", body(reported_ms=now - coord.stats.ttl_ms - 1), now)  # already stale
    assert not intake.receive("peer", body(reported_ms=-5), now)
    assert intake.refused == 4 and coord.stats.get("n1", now) is None
    # a little clock skew: taken as stamped (clamped to our clock, it was another report here than on its sender,
    # and won or lost merges differently there and here: a reviewer's reproduction)
    assert intake.receive("peer", body(reported_ms=now + 5_000), now)
    assert coord.stats.get("n1", now).reported_ms == now + 5_000  # type: ignore[union-attr]


async def test_a_report_stamped_ahead_by_a_peer_does_not_hide_the_nodes_own_later_report(
        coord: Coordinator, client: Any) -> None:
    await registered(client, "n1")
    sent: list[NodeStats] = []
    coord.on_stats = lambda node_id, stats: sent.append(stats)  # type: ignore[method-assign]
    now = wall_ms()
    ahead = now + MAX_FUTURE_MS - 1_000  # a peer whose clock runs fast, or a lying member
    assert gossip.StatsIntake(coord).receive("peer", body(reported_ms=ahead, cpu_free=0.0, latency_ms=9e6), now)
    resp = await client.post("/node/n1/stats", json={**GOOD, "cpu_free": 0.75})
    assert resp.status_code == 200
    held = coord.stats.get("n1", wall_ms())
    assert held is not None and held.cpu_free == 0.75 and held.reported_ms > ahead
    assert sent == [held]  # sent to the peers with that stamp: it wins there too
    other = StatsTable(coord.stats.ttl_ms)
    other.put("n1", gossip.from_body(body(reported_ms=ahead, cpu_free=0.0, latency_ms=9e6), now, other.ttl_ms)[1])
    other.put("n1", gossip.from_body(gossip.to_body("n1", held), now, other.ttl_ms)[1])
    assert other.get("n1", now).cpu_free == 0.75  # type: ignore[union-attr]


async def test_unknown_node_ids_wait_in_a_bounded_buffer(coord: Coordinator, client: Any) -> None:
    intake = gossip.StatsIntake(coord, max_waiting=100)
    now = wall_ms()
    accepted = sum(intake.receive("peer", body(f"ghost-{i}"), now) for i in range(5000))
    assert accepted == 100 and intake.dropped == 4900 and len(intake.waiting) == 100
    assert coord.stats.current(wall_ms()) == []  # the table holds registered nodes only
    assert intake.receive("peer", body("ghost-7", reported_ms=now + 1), now)  # a newer report for a waiting id
    await registered(client, "ghost-7")  # its registration arrives: the waiting report is merged
    intake.flush(now)
    assert coord.stats.get("ghost-7", now) is not None and len(intake.waiting) == 99
    intake.flush(now + coord.stats.ttl_ms + 10)  # the others went stale
    assert intake.waiting == {}


async def test_schedule_never_500s_whatever_the_stats_table_holds(coord: Coordinator, client: Any) -> None:
    await registered(client, "a", "b", "c", "d")
    now = wall_ms()
    # what the old gossip path stored without a check: every coordinator answered 500 from then on
    coord.accept_stats("a", NodeStats(0.9, 1e6, 1.0, 0.0, 0.0, now))  # latency 0: w_latency / 0
    coord.accept_stats("b", NodeStats(math.nan, 1e6, 1.0, 1.0, 0.0, now))
    coord.accept_stats("c", NodeStats(math.inf, 1e6, 1.0, 1.0, 0.0, now + 10**12))  # pinned in the future
    for workload in ({}, {"max_latency_ms": 1e7}, {"cpu_req": 0.0, "io_tolerance": 1.0}):
        resp = await client.post("/schedule", json=workload)
        assert resp.status_code == 404, await resp.get_data()
    assert (await client.post("/node/d/stats", json=GOOD)).status_code == 200
    resp = await client.post("/schedule", json={})
    assert resp.status_code == 200 and (await resp.get_json()) == {"node_id": "d"}


async def test_weights_a_member_published_out_of_range_leave_the_defaults_in_force(
        coord: Coordinator, client: Any) -> None:
    """The HTTP route keeps weights within WEIGHT_RANGE, but a member's scheduler.config event was checked for finite
    numbers only: -1e308 and 1e308 made every score NaN, and /schedule answered 404 on every coordinator (a
    reviewer's reproduction). Every coordinator applies the same rule: the defaults stay in force."""
    await registered(client, "d")
    assert (await client.post("/node/d/stats", json=GOOD)).status_code == 200
    coord.state.apply(ev.make_event(ev.SCHEDULER_CONFIG, (wall_ms(), 0), "c9", w_cpu=-1e308, w_ram=0.0, w_gpu=0.0,
                                    w_latency=1e308, w_io=0.0))
    assert coord.weights() == DEFAULT_WEIGHTS
    resp = await client.post("/schedule", json={})
    assert resp.status_code == 200 and (await resp.get_json()) == {"node_id": "d"}


async def test_over_the_peer_protocol_only_checked_stats_of_known_nodes_are_merged(
        nursery: trio.Nursery, coord: Coordinator, client: Any) -> None:
    registry = Registry()
    gossip.register(registry)
    net = SimNetwork(registry, seed=3)
    sender, receiver = net.add("peer"), net.add("me")
    receiver.on_link_up = lambda callback: None  # type: ignore[attr-defined]
    await nursery.start(net.run)
    intake = gossip.StatsIntake(coord)
    nursery.start_soon(gossip.run_stats_gossip, coord, receiver, intake)
    await registered(client, "n1", "n2")
    await trio.sleep(0.05)
    sender.broadcast(gossip.STATS, body("n1", latency_ms=0.0))
    sender.broadcast(gossip.STATS, body("n2", reported_ms=wall_ms() + 3_600_000))
    sender.broadcast(gossip.STATS, body("stranger"))
    sender.broadcast(gossip.STATS, body("n2", cpu_free=0.25))
    with trio.fail_after(5):
        while intake.accepted + intake.refused + len(intake.waiting) < 4:
            await trio.sleep(0.01)
    assert (intake.accepted, intake.refused, set(intake.waiting)) == (1, 2, {"stranger"})
    assert coord.stats.get("n1", wall_ms()) is None
    assert coord.stats.get("n2", wall_ms()).cpu_free == 0.25  # type: ignore[union-attr]
    resp = await client.post("/schedule", json={})
    assert resp.status_code == 200 and (await resp.get_json()) == {"node_id": "n2"}


async def test_a_peer_whose_link_comes_up_gets_every_fresh_entry_and_other_messages_still_get_through() -> None:
    """Catch-up pushed every fresh entry into the peer's 1,024-message send queue at once: with 3,000 nodes, 1,978
    were lost, and a request sent to that peer meanwhile was refused (a reviewer's reproduction)."""
    ms = members(["a", "b"])
    regs = [peer_registry(), peer_registry()]
    for r in regs:
        gossip.register(r)
    a = PeerManager("a", KEYS["a"], "test", ms, regs[0], port=ms[0].port, heartbeat_s=0.5)
    b = PeerManager("b", KEYS["b"], "test", ms, regs[1], port=ms[1].port, heartbeat_s=0.5)
    receiving, sending = FakeCoord(0), FakeCoord(3000)
    queued: list[bool] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        await nursery.start(b.run)
        nursery.start_soon(gossip.run_stats_gossip, receiving, a)
        nursery.start_soon(gossip.run_stats_gossip, sending, b)
        b.on_link_up(lambda peer: queued.append(b.send(peer, "chat", {"text": "after the link-up", "n": 1})))
        with trio.fail_after(20):
            while receiving.got < 3000:
                await trio.sleep(0.05)
        assert queued == [True] and b.peers["a"].dropped == 0
        nursery.cancel_scope.cancel()


class FakeCoord:
    """What run_stats_gossip uses of a coordinator: ``stats``, ``state.node``, ``accept_stats``, ``on_stats``."""

    def __init__(self, nodes: int) -> None:
        self.stats = StatsTable(300_000)
        self.state = self
        self.got = 0
        for i in range(nodes):
            self.stats.put(f"node-{i}", NodeStats(1.0, 1.0, 0.0, 10.0, 0.0, wall_ms()))

    def node(self, node_id: str) -> object:
        return object()

    def on_stats(self, node_id: str, stats: NodeStats) -> None:
        pass

    def accept_stats(self, node_id: str, stats: NodeStats) -> None:
        self.got += 1


async def test_a_peer_that_stops_reading_holds_up_its_own_catch_up_only(autojump_clock: trio.testing.MockClock) -> None:
    """Catch-ups ran one peer after the other, and one waited for ever on a peer whose link stayed up while its
    queue did not drain: no other peer got its catch-up (a reviewer's reproduction). One task per peer now, and a
    peer whose queue does not drain for CATCH_UP_PATIENCE_S is given up until its next link-up."""

    class Peers:
        def __init__(self) -> None:
            self.sent = {"stuck": 0, "healthy": 0}
            self.callbacks: list[Any] = []
            self.inbox = trio.open_memory_channel[Any](10)

        def subscribe(self, type_: str) -> Any:
            return self.inbox[1]

        def broadcast(self, *args: Any) -> int:
            return 0

        def on_link_up(self, callback: Any) -> None:
            self.callbacks.append(callback)

        def up_peers(self) -> list[str]:
            return ["stuck", "healthy"]

        def queue_room(self, peer: str) -> int:
            return 0 if peer == "stuck" and self.sent["stuck"] >= 1024 and not self.drained else 1024

        drained = False

        def send(self, peer: str, type_: str, body: Any) -> bool:
            self.sent[peer] += 1
            return True

    peers, coord = Peers(), FakeCoord(3000)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(gossip.run_stats_gossip, coord, peers)
        await trio.testing.wait_all_tasks_blocked()
        peers.callbacks[0]("stuck")
        await trio.sleep(1)
        peers.callbacks[0]("healthy")
        await trio.sleep(1)
        assert peers.sent == {"stuck": 1024, "healthy": 3000}
        await trio.sleep(gossip.CATCH_UP_PATIENCE_S)  # given up on "stuck"
        peers.drained = True  # it reads again, and its link comes up again: a new catch-up, all of it
        peers.callbacks[0]("stuck")
        await trio.sleep(1)
        assert peers.sent == {"stuck": 1024 + 3000, "healthy": 3000}
        nursery.cancel_scope.cancel()


async def test_live_reports_go_to_the_peers_that_are_up_and_leave_room_in_their_queues(
        autojump_clock: trio.testing.MockClock) -> None:
    """Every report was broadcast to every peer: a stream of them filled the queue of a slow or down peer, and the
    receipt engine's and the DKG's messages to it were refused (a reviewer's reading). Now only peers that are up
    get them, each while its queue has more room than CATCH_UP_RESERVE (a down peer gets a catch-up at link-up)."""

    class Peers:
        def __init__(self) -> None:
            self.sent = {"fast": 0, "slow": 0, "down": 0}
            self.inbox = trio.open_memory_channel[Any](10)

        def subscribe(self, type_: str) -> Any:
            return self.inbox[1]

        def on_link_up(self, callback: Any) -> None:
            pass

        def up_peers(self) -> list[str]:
            return ["fast", "slow"]

        def queue_room(self, peer: str) -> int:
            return 1024 - self.sent[peer] if peer == "slow" else 1024  # ("slow" never sends what it queued)

        def send(self, peer: str, type_: str, body: Any) -> bool:
            self.sent[peer] += 1
            return True

    peers, coord = Peers(), FakeCoord(0)
    intake = gossip.StatsIntake(coord)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(gossip.run_stats_gossip, coord, peers, intake)
        await trio.testing.wait_all_tasks_blocked()
        for i in range(2000):
            coord.on_stats(f"n{i}", NodeStats(reported_ms=wall_ms(), **GOOD))
        assert peers.sent == {"fast": 2000, "slow": 1024 - gossip.CATCH_UP_RESERVE, "down": 0}
        assert intake.shed == 2000 - (1024 - gossip.CATCH_UP_RESERVE)
        nursery.cancel_scope.cancel()


async def test_a_burst_of_reports_is_never_stamped_beyond_the_future_allowance(
        coord: Coordinator, client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each report was stamped past the one held: a node reporting faster than once per millisecond pushed its
    stamps ever further ahead, past MAX_FUTURE_MS, and from then on the scheduler here ignored the node and every
    peer refused its reports (a reviewer's reproduction). The stamp stays within the allowance."""
    import node.coordinator as coordinator_module

    await registered(client, "n1")
    clock = [wall_ms()]
    monkeypatch.setattr(coordinator_module, "wall_ms", lambda: clock[0])
    for _ in range(3):  # three frozen milliseconds of a burst
        for _ in range(MAX_FUTURE_MS // 2 + 10):
            coord.put_stats("n1", {**GOOD})
        clock[0] += 1
    held = coord.stats.get("n1", clock[0])
    assert held is not None and held.reported_ms - clock[0] <= MAX_FUTURE_MS
    gossip.from_body(gossip.to_body("n1", held), clock[0], coord.stats.ttl_ms)  # a peer takes it
    resp = await client.post("/schedule", json={})
    assert resp.status_code == 200 and (await resp.get_json())["node_id"] == "n1"


async def test_a_report_held_while_the_clock_ran_fast_does_not_pin_the_node_after_it_stepped_back(
        coord: Coordinator, client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A report stamped while this clock ran an hour fast beat every later one (stamped by the clock once it stepped
    back): the node showed the old values and could not be scheduled for the hour, while its later reports were
    still sent to the peers (a reviewer's reproduction)."""
    import node.coordinator as coordinator_module

    await registered(client, "n1")
    sent: list[NodeStats] = []
    coord.on_stats = lambda node_id, stats: sent.append(stats)  # type: ignore[method-assign]
    monkeypatch.setattr(coordinator_module, "wall_ms", lambda: wall_ms() + 3_600_000)
    coord.put_stats("n1", {**GOOD, "cpu_free": 0.1})
    monkeypatch.undo()
    resp = await client.post("/node/n1/stats", json={**GOOD, "cpu_free": 0.9})
    assert resp.status_code == 200
    held = coord.stats.get("n1", wall_ms())
    assert held is not None and held.cpu_free == 0.9 and sent[-1] is held
    resp = await client.post("/schedule", json={})
    assert resp.status_code == 200 and (await resp.get_json())["node_id"] == "n1"
