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


def test_a_blob_applied_at_once_counts_and_ends_as_its_events_applied_one_by_one() -> None:
    obj = make_event(ev.OBJECT_REGISTERED, (5, 0), "c0", hash="h", size=10)
    newer = make_event(ev.OBJECT_REGISTERED, (6, 0), "c1", hash="h", size=11)
    healed = make_event(ev.REPLICA_HEALED, (7, 0), "c0", hash="h", node_id="n1")
    missing = make_event(ev.REPLICA_MISSING, (7, 1), "c0", hash="h", node_id="n1")
    # the very same Event (and bytes object) twice in one blob, an overwrite, an older write after a newer one
    blob = [reg("n1", "z", 1), obj, healed, obj, newer, missing, healed, make_event(
        ev.SCHEDULER_CONFIG, (9, 0), "c0", w_cpu=1.0, w_ram=0.5, w_gpu=0.5, w_latency=0.8, w_io=0.6), obj]
    one_by_one = State()
    assert [one_by_one.apply(e) for e in blob] == [True, True, True, False, True, True, False, True, False]
    at_once = State()
    assert at_once.apply_events(blob) == 6
    assert at_once.root() == one_by_one.root() == at_once.recomputed_root()
    assert at_once.object("h") == (11, []) and at_once.max_hlc == (9, 0) and at_once.events_applied == 6
    assert at_once.apply_events(blob) == 0 and at_once.root() == one_by_one.root()


def test_an_event_that_fails_midway_leaves_the_earlier_ones_applied_and_counted() -> None:
    s = State()
    good = [reg("n1", "z", 1), make_event(ev.OBJECT_REGISTERED, (2, 0), "c0", hash="h", size=1)]
    alien = good[1]._replace(kind="no.such.kind")
    with pytest.raises(KeyError):
        s.apply_events([*good, alien, reg("n2", "z", 3)])
    clean = State()
    clean.apply_events(good)
    assert s.root() == clean.root() == s.recomputed_root()
    assert (s.events_applied, s.max_hlc) == (2, (2, 0))


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


# ---- duplicates: the full id, a bounded cache (issue 8 §4.4) ---------------------------------------


def test_duplicate_detection_uses_the_whole_event_id() -> None:
    # two different events whose ids share their first 64 bits are both applied
    a = reg("n1", "z", 1)
    b = reg("n2", "z", 2)
    b = b._replace(id=a.id[:8] + b.id[8:])
    s = State()
    assert s.apply(a) is True and s.apply(b) is True
    assert s.events_applied == 2 and s.node("n2") is not None


def test_the_recent_id_cache_and_the_snapshot_stay_bounded() -> None:
    s = State(recent_ids=8)
    evs = [make_event(ev.OBJECT_REGISTERED, (t, 0), "c0", hash=f"h{t}", size=t) for t in range(100)]
    s.apply_all(evs)
    snap = s.to_snapshot()
    assert "seen" not in snap and len(snap["recent"]) == 8 * 32 and snap["applied"] == 100
    root = s.root()
    # every one of them is still its register's winner: recognised as a duplicate without the cache
    assert s.apply_all(evs) == 0 and s.events_applied == 100 and s.root() == root
    back = State.from_snapshot(snap, recent_ids=8)
    assert back.root() == root and back.events_applied == 100 and back.apply_all(evs) == 0


@settings(max_examples=300, deadline=None)
@given(st.lists(event_strategy, min_size=1, max_size=40), st.randoms(use_true_random=False), st.integers(1, 4))
def test_the_root_ignores_order_and_duplicates_even_with_a_tiny_id_cache(events: list[ev.Event], rnd: random.Random,
                                                                         cache: int) -> None:
    # with a cache of 1..4 ids most duplicates are found only through their register (or not at all, when
    # superseded): the state does not depend on it
    a = State()
    a.apply_all(events)
    shuffled = events + rnd.sample(events, k=len(events) // 2) + events
    rnd.shuffle(shuffled)
    b = State(recent_ids=cache)
    b.apply_all(shuffled)
    assert a.root() == b.root() and view(a)[:3] == view(b)[:3]
    c = State.from_snapshot(b.to_snapshot(), recent_ids=cache)
    c.apply_all(reversed(shuffled))
    assert c.root() == a.root() and view(c)[:3] == view(a)[:3]


# ---- the HLC under far-future timestamps (issue 8 §4.3) --------------------------------------------


def test_a_far_future_timestamp_moves_the_clock_at_most_max_drift_ahead() -> None:
    from node.hlc import MAX_DRIFT_MS

    wall = [1_000_000]
    clock = HybridLogicalClock(lambda: wall[0])
    clock.observe((ev.MAX_U63, ev.MAX_U63))
    assert clock.clamped == 1 and clock.last == (1_000_000 + MAX_DRIFT_MS, 0)
    for _ in range(3):  # every later local write can still be encoded
        t = clock.now()
        assert t[0] <= wall[0] + MAX_DRIFT_MS
        make_event(ev.NODE_UNREGISTERED, t, "c0", id="n")
    clock.observe((wall[0] + 10, 3))  # a timestamp within the bound still orders our next one after it
    assert clock.clamped == 1 and clock.now() > (wall[0] + 10, 3)
    wall[0] += 2 * MAX_DRIFT_MS  # once the wall clock passes the bound, it leads again
    assert clock.now() == (wall[0], 0)


def test_a_blob_observed_at_once_orders_after_each_of_its_timestamps_even_beside_a_clamped_one() -> None:
    # a timestamp at the bound and one past it (clamped to (bound, 0)): the latest of the two after clamping is
    # the one at the bound; taking the latest before clamping would have ordered our next stamp before it
    clock = HybridLogicalClock(lambda: 1000, max_drift_ms=100)
    clock.observe_all([(1100, 5), (5000, 0)])
    assert clock.clamped == 1 and clock.now() == (1100, 6)
    one_by_one = HybridLogicalClock(lambda: 1000, max_drift_ms=100)
    for stamp in [(5000, 0), (1100, 5), (900, 2)]:
        one_by_one.observe(stamp)
    at_once = HybridLogicalClock(lambda: 1000, max_drift_ms=100)
    at_once.observe_all([(5000, 0), (1100, 5), (900, 2)])
    assert at_once.last == one_by_one.last == (1100, 5) and at_once.clamped == one_by_one.clamped == 1


def test_an_exhausted_counter_borrows_a_millisecond_instead_of_overflowing() -> None:
    clock = HybridLogicalClock(lambda: 5)
    clock.observe((6, ev.MAX_U63))
    t = clock.now()
    assert t == (7, 0)
    make_event(ev.NODE_UNREGISTERED, t, "c0", id="n")


def test_a_batch_signed_by_many_members_with_long_ids_is_a_valid_event() -> None:
    """The signers were a "str" field of at most 256 characters: 18 ids like coordinator-NN, or two of the 128
    characters ids may have, made a batch event that make_event and every decoder refused, so a signed batch could
    not be published (a reviewer's reproduction). The field holds up to 255 ids of 128 characters now."""
    def batch(signers: str) -> ev.Event:
        return ev.make_event(ev.RECEIPT_BATCH, (1, 0), "c0", group_key="ab" * 32, root="cd" * 32, tree_size=1,
                             signature="ef" * 64, signers=signers, receipts=b"\x90" * 2000)

    for signers in (",".join(f"coordinator-{i:02d}" for i in range(18)), ",".join(f"{i:03d}" + "x" * 125
                                                                                   for i in range(255))):
        event = batch(signers)
        assert ev.decode_event(event.raw) == event
        events, invalid, wrong = ev.decode_events([event.raw], "c0")
        assert (events[0][4][4], invalid, wrong) == (signers, 0, 0)
    with pytest.raises(ev.EventDecodeError):
        batch("x" * (ev.MAX_NAMES + 1))
    with pytest.raises(ev.EventDecodeError):
        ev.make_event(ev.NODE_KEY, (1, 0), "c0", id="x" * 257, public_key="ab" * 32)  # other strings keep their bound


def test_a_blob_s_latest_timestamp_observed_alone_moves_the_clock_as_all_of_them_do() -> None:
    """A consumer applies a blob's events, then the clock observes them given their latest one, which the state found
    while applying (``State.last_hlc``): the same clock and the same count of clamped stamps as observing each, for
    batches within the bound, past it, and beside it."""
    rng = random.Random(5)
    for _ in range(400):
        now = rng.randrange(1, 10_000)
        stamps = [(rng.choice((rng.randrange(0, now + 300), rng.randrange(0, 2**63))), rng.randrange(0, 9))
                  for _ in range(rng.randrange(1, 6))]
        events = [(ev.NODE_UNREGISTERED, wall, counter, "c0", (f"n{i}",), b"x%d" % i, bytes(32)) for i, (wall, counter)
                  in enumerate(stamps)]
        state = State()
        state.apply_events(events)
        assert state.last_hlc == max(stamps) and state.max_hlc == max(stamps)
        start = (rng.randrange(0, now + 200), rng.randrange(0, 5))
        each, hinted = (HybridLogicalClock(lambda now=now: now, last=start, max_drift_ms=100) for _ in range(2))
        each.observe_all(stamps)
        hinted.observe_all(iter(stamps), state.last_hlc)
        assert (hinted.last, hinted.clamped) == (each.last, each.clamped)
    later = State()
    later.apply_events([(ev.NODE_UNREGISTERED, 50, 1, "c0", ("m",), b"y", bytes(32))])
    later.apply_events([(ev.NODE_UNREGISTERED, 7, 0, "c0", ("k",), b"z", bytes(32))])
    assert later.last_hlc == (7, 0) and later.max_hlc == (50, 1)  # the last call's latest; the state's latest


# ---- an object with many replica registers (node/state.py WIDE) --------------------------------------


def test_an_object_with_thousands_of_replica_registers_keeps_them_in_a_dict_and_a_cut_unchanged() -> None:
    """A member's blob of 51,000 replica events for one object (node ids need not be registered) took 17 s of the
    event loop to apply: its registers were one flat tuple, copied and scanned at every write. Past 2 * WIDE items
    they are a dict; the root, the reads, a cut taken midway and a snapshot are the same as before."""
    from node import state as state_mod

    events = [make_event(ev.REPLICA_HEALED if k % 3 else ev.REPLICA_MISSING, (10 + k, 0), "c0", hash="obj",
                         node_id=f"node{k:05d}") for k in range(3000)]
    s = State()
    s.apply(make_event(ev.OBJECT_REGISTERED, (1, 0), "c0", hash="obj", size=5))
    s.apply_all(events[:1500])
    cut, cut_root = s.frozen(), s.root()
    s.apply_all(events[1500:])
    s.apply_all(events[:10])  # duplicates
    s.apply(make_event(ev.REPLICA_MISSING, (9999, 0), "c1", hash="obj", node_id="node00001"))  # a later version
    held = s._replicas[ord("j") & state_mod._MASK]["obj"]
    assert type(held) is dict and len(held) == 3000
    assert s.root() == s.recomputed_root() and s.replica_count == 3000
    present = s.object("obj")
    assert present is not None and len(present[1]) == 1999 and "node00001" not in present[1]
    assert cut.root() == cut_root and cut.replica_count == 1500  # the cut kept its own registers
    late, late_root = s.frozen(), s.root()
    assert late.replica_count == 3000  # (the cut took its shards: the live state writes in place again)
    s.apply(make_event(ev.REPLICA_HEALED, (10**5, 0), "c1", hash="obj", node_id="one-more"))
    s.apply(make_event(ev.REPLICA_HEALED, (10**5, 0), "c1", hash="obj", node_id="node00002"))
    assert late.replica_count == 3000 and late.recomputed_root() == late_root != s.root()
    back = State.from_snapshot(msgpack.unpackb(b"".join(cut.snapshot_pieces()), use_list=False))
    assert back.root() == cut_root == back.recomputed_root() and back.replica_count == 1500
    again = State.from_snapshot(s.to_snapshot())  # kept as a tuple when restored; a dict again at its next write
    assert again.root() == s.root() and again.object("obj") == s.object("obj")
    again.apply(make_event(ev.REPLICA_HEALED, (10**6, 0), "c2", hash="obj", node_id="node00001"))
    assert again.root() == again.recomputed_root() and "node00001" in again.object("obj")[1]  # type: ignore[index]


def registers(s: State) -> dict[str, set[tuple[str, bytes]]]:
    return {h: set(zip(t[::2], t[1::2], strict=True)) for h, t in s.replicas.items()}


@settings(max_examples=200, deadline=None)
@given(st.lists(event_strategy, min_size=1, max_size=60), st.randoms(use_true_random=False))
def test_replica_registers_in_dicts_give_the_same_state_as_tuples(events: list[ev.Event], rnd: random.Random) -> None:
    """With WIDE at its smallest, nearly every object's registers become a dict: the same root and reads, in any
    order, through a cut taken midway and a snapshot, as with flat tuples."""
    from node import state as state_mod

    a = State()
    a.apply_all(events)
    shuffled = events + rnd.sample(events, k=len(events) // 2)
    rnd.shuffle(shuffled)
    wide, state_mod.WIDE = state_mod.WIDE, 1
    try:
        b = State()
        half = len(shuffled) // 2
        b.apply_all(shuffled[:half])
        cut, cut_root, cut_view = b.frozen(), b.root(), view(b)
        b.apply_all(shuffled[half:])
        assert b.root() == a.root() == b.recomputed_root() and view(b)[:3] == view(a)[:3]
        assert b.replica_count == a.replica_count and registers(b) == registers(a)
        assert cut.root() == cut_root and view(cut) == cut_view
        c = State.from_snapshot(msgpack.unpackb(b"".join(b.snapshot_pieces()), use_list=False))
        assert c.root() == a.root() and view(c)[:3] == view(a)[:3]
    finally:
        state_mod.WIDE = wide


def test_the_live_state_encoded_beside_a_cut_keeps_its_writes_and_the_cut_its_view() -> None:
    """``snapshot_pieces`` took the shards a cut shares whoever encoded: the live state, encoded while a cut was
    outstanding, put the values of the cut's moment back into its own tables (its root no longer its registers'),
    and the cut then read the live values (a reviewer's fuzzing)."""
    from node import snapshot

    s = State()
    s.apply(make_event(ev.OBJECT_REGISTERED, (1, 0), "c0", hash="a0", size=1))
    cut = s.frozen()
    s.apply(make_event(ev.OBJECT_REGISTERED, (2, 0), "c0", hash="a0", size=2))
    s.apply(make_event(ev.OBJECT_REGISTERED, (2, 0), "c0", hash="b1", size=7))
    root = s.root()
    snapshot.encode(snapshot.Snapshot(s, {}, 0))
    assert s.object("a0") == (2, []) and s.object("b1") == (7, []) and s.root() == root == s.recomputed_root()
    assert cut.object("a0") == (1, []) and cut.object("b1") is None and cut.recomputed_root() == cut.root()


def test_a_cut_dropped_unreleased_stops_sharing_at_once() -> None:
    """A cut referred to itself (its event handlers, its ledger's rehash): dropped without ``release``, it lived on
    until the collector found the cycle, and meanwhile the live state noted every first write for it."""
    import gc

    s = State()
    s.apply(make_event(ev.OBJECT_REGISTERED, (1, 0), "c0", hash="a0", size=1))
    gc.disable()
    try:
        s.frozen()  # (dropped at once)
        s.apply(make_event(ev.OBJECT_REGISTERED, (2, 0), "c0", hash="b1", size=7))
        assert not s._shared and not any(s._undo)
    finally:
        gc.enable()
