"""Events and the convergent state machine: encoding, LWW, tombstones, order-independence."""

from __future__ import annotations

import random

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node import events as ev
from node.events import EventDecodeError, decode_event, make_event
from node.hlc import HybridLogicalClock
from node.state import State


def reg(node: str, zone: str, t: int, origin: str = "c0", cap: int = 100, addr: str = "10.0.0.1:1") -> ev.Event:
    return make_event(ev.NODE_REGISTERED, (t, 0), origin, id=node, zone=zone, addr=addr, capacity_gb=cap)


def test_event_id_is_sha256_of_canonical_encoding_and_roundtrips() -> None:
    e = reg("n1", "z", 5)
    import hashlib

    assert e.id == hashlib.sha256(e.raw).digest()
    again = decode_event(e.raw)
    assert again == e and again.as_dict() == {"id": "n1", "zone": "z", "addr": "10.0.0.1:1", "capacity_gb": 100}


@pytest.mark.parametrize(
    "obj",
    [
        [2, ev.NODE_UNREGISTERED, 1, 0, "c0", ["n"]],  # unknown format version
        [1, "node.exploded", 1, 0, "c0", ["n"]],  # unknown kind
        [1, ev.NODE_UNREGISTERED, -1, 0, "c0", ["n"]],  # negative clock
        [1, ev.NODE_UNREGISTERED, 1, 0, "", ["n"]],  # empty origin
        [1, ev.NODE_UNREGISTERED, 1, 0, "c0", [""]],  # empty id
        [1, ev.NODE_UNREGISTERED, 1, 0, "c0", ["n", "extra"]],  # wrong arity
        [1, ev.OBJECT_REGISTERED, 1, 0, "c0", ["h", True]],  # bool is not an int
        [1, ev.OBJECT_REGISTERED, 1, 0, "c0", ["h", 1.5]],  # float is not an int
        [1, ev.SCHEDULER_CONFIG, 1, 0, "c0", [1.0, 1.0, 1.0, float("nan"), 1.0]],  # not finite
        {"kind": "x"},
    ],
)
def test_decoder_rejects_malformed_events(obj: object) -> None:
    with pytest.raises(EventDecodeError):
        decode_event(msgpack.packb(obj, use_bin_type=True))


def test_decoder_rejects_non_canonical_encoding_and_garbage() -> None:
    e = make_event(ev.NODE_UNREGISTERED, (1, 0), "c0", id="n")
    # the same array with the integer 1 written as a uint16 is not canonical
    non_canonical = e.raw.replace(b"\x01", b"\xcd\x00\x01", 1)
    with pytest.raises(EventDecodeError, match="canonical"):
        decode_event(non_canonical)
    with pytest.raises(EventDecodeError):
        decode_event(b"\xc1garbage")


def test_last_writer_wins_by_hlc_then_origin() -> None:
    s = State()
    s.apply(reg("n1", "zone-b", 20))
    s.apply(reg("n1", "zone-a", 10))  # older: loses even though applied later
    assert s.node("n1") == ("zone-b", "10.0.0.1:1", 100)
    s.apply(reg("n1", "zone-c", 20, origin="c9"))  # same HLC, larger origin wins
    assert s.node("n1")[0] == "zone-c"


def test_unregister_is_a_tombstone_that_older_registrations_cannot_undo() -> None:
    s = State()
    s.apply(reg("n1", "z", 10))
    s.apply(make_event(ev.NODE_UNREGISTERED, (20, 0), "c0", id="n1"))
    s.apply(reg("n1", "z", 15))
    assert s.node("n1") is None and s.node_count == 0 and s.live_nodes() == []
    s.apply(reg("n1", "z", 30))
    assert s.node_count == 1


def test_objects_and_replicas() -> None:
    s = State()
    s.apply(make_event(ev.OBJECT_REGISTERED, (1, 0), "c0", hash="h", size=10))
    s.apply(make_event(ev.OBJECT_REGISTERED, (2, 0), "c0", hash="h", size=20))  # re-register updates size
    s.apply(make_event(ev.REPLICA_HEALED, (3, 0), "c0", hash="h", node_id="n2"))
    s.apply(make_event(ev.REPLICA_HEALED, (3, 1), "c0", hash="h", node_id="n1"))
    s.apply(make_event(ev.REPLICA_MISSING, (4, 0), "c0", hash="h", node_id="n2"))
    s.apply(make_event(ev.REPLICA_HEALED, (3, 5), "c0", hash="h", node_id="n2"))  # older than the missing mark
    assert s.object("h") == (20, ["n1"])
    assert s.object("other") is None


def test_duplicates_are_not_counted_and_change_nothing() -> None:
    s = State()
    e = reg("n1", "z", 1)
    assert s.apply(e) is True
    root = s.root()
    assert s.apply(e) is False and s.apply(decode_event(e.raw)) is False
    assert s.events_applied == 1 and s.root() == root


def test_hlc_is_monotonic_and_orders_after_observed_timestamps() -> None:
    wall = [100]
    clock = HybridLogicalClock(lambda: wall[0])
    a = clock.now()
    b = clock.now()
    assert a == (100, 0) and b == (100, 1)
    clock.observe((500, 7))
    assert clock.now() == (500, 8)
    wall[0] = 50  # the wall clock stepping back does not make time go backwards
    assert clock.now() > (500, 8)
    wall[0] = 1000
    assert clock.now() == (1000, 0)


ids = st.sampled_from([f"n{i}" for i in range(6)])
hashes = st.sampled_from([f"h{i}" for i in range(4)])
clock = st.tuples(st.integers(0, 20), st.integers(0, 3))
origins = st.sampled_from(["c0", "c1", "c2"])
weights = st.floats(0, 100, allow_nan=False, allow_infinity=False)

event_strategy = st.one_of(
    st.builds(lambda i, z, c, t, o: make_event(ev.NODE_REGISTERED, t, o, id=i, zone=z, addr="1.2.3.4:5",
                                               capacity_gb=c),
              ids, st.sampled_from(["za", "zb"]), st.integers(0, 1000), clock, origins),
    st.builds(lambda i, t, o: make_event(ev.NODE_UNREGISTERED, t, o, id=i), ids, clock, origins),
    st.builds(lambda h, size, t, o: make_event(ev.OBJECT_REGISTERED, t, o, hash=h, size=size),
              hashes, st.integers(0, 10**12), clock, origins),
    st.builds(lambda h, i, t, o: make_event(ev.REPLICA_MISSING, t, o, hash=h, node_id=i), hashes, ids, clock, origins),
    st.builds(lambda h, i, t, o: make_event(ev.REPLICA_HEALED, t, o, hash=h, node_id=i), hashes, ids, clock, origins),
    st.builds(lambda a, b, t, o: make_event(ev.SCHEDULER_CONFIG, t, o, w_cpu=a, w_ram=b, w_gpu=1.0, w_latency=2.0,
                                            w_io=0.5), weights, weights, clock, origins),
)


def view(s: State) -> tuple[object, ...]:
    objs = {h: s.object(h) for h in s.objects}
    return (s.live_nodes(), objs, s.weights(), s.events_applied)


@settings(max_examples=300, deadline=None)
@given(st.lists(event_strategy, min_size=1, max_size=40), st.randoms(use_true_random=False))
def test_any_permutation_with_duplicates_gives_the_same_root(events: list[ev.Event], rnd: random.Random) -> None:
    a = State()
    a.apply_all(events)
    shuffled = events + rnd.sample(events, k=len(events) // 2)  # duplicates
    rnd.shuffle(shuffled)
    b = State()
    b.apply_all(shuffled)
    assert a.root() == b.root()
    assert view(a) == view(b)
    # and a snapshot round trip preserves both
    c = State.from_snapshot(b.to_snapshot())
    assert c.root() == a.root() and view(c) == view(a)


@settings(max_examples=100, deadline=None)
@given(st.lists(event_strategy, min_size=2, max_size=30, unique_by=lambda e: e.id))
def test_different_event_sets_usually_differ_in_root(events: list[ev.Event]) -> None:
    # A state root that ignored content would pass the permutation test; this one catches that.
    a, b = State(), State()
    a.apply_all(events)
    b.apply_all(events[:-1])
    if view(a)[:3] != view(b)[:3]:
        assert a.root() != b.root()


async def test_a_snapshot_is_the_state_at_the_moment_it_was_taken(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import trio

    from node import snapshot

    s = State()
    s.apply(reg("n1", "z", 1))
    root, applied = s.root(), s.events_applied

    cutting = trio.Event()

    async def write() -> None:
        cutting.set()  # save() takes its cut before its first checkpoint, so once we run again it is taken
        await snapshot.save(tmp_path, snapshot.Snapshot(s, {"primary": 3}, 1))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write)
        await cutting.wait()  # the encoding now runs in a thread while the state moves on
        s.apply(reg("n2", "z", 2))
        s.apply(make_event(ev.NODE_UNREGISTERED, (3, 0), "c0", id="n1"))
    back = snapshot.load(tmp_path)
    assert back is not None and back.cursors == {"primary": 3} and back.outbox_seq == 1
    assert back.state.root() == root and back.state.events_applied == applied
    assert back.state.node("n1") is not None and back.state.node("n2") is None
    assert s.node("n1") is None and s.root() != root
