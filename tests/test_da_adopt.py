"""Any member reconciles any member's fallback blobs (issue 8 §4.3): blobs a coordinator wrote to a fallback
while the primary was down used to reach the primary only through that coordinator's own record
(fallback.sqlite); with its data dir lost they never did. Every coordinator now records the members' blobs it
reads from the fallback logs it follows and re-posts those that do not show up on the primary after a grace
period. Real devnet and blob store sockets, coordinators in process; plus the rules on a Mock DA stack."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import nacl.signing
import trio

from deploy.blobstore import serve_blobstore
from deploy.devnet import serve_devnet
from node import identity
from node.blob import encode_blob
from node.config import Config
from node.coordinator import Coordinator
from node.da.base import BlobRef
from node.da.blobstore_client import BlobStoreDA
from node.da.celestia import CelestiaDA
from node.da.mock import MockDA
from node.da.namespace import namespace_from_name
from node.da.stack import DAStack, member_signed
from node.da.status import EMERGENCY, PRIMARY, Status
from tests.conftest import wait_for

NS = namespace_from_name("dsdn-adopt")
TOKEN = "adopt-devnet"


async def fault(url: str, mode: str) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=5, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        assert (await http.post("/admin/fault", json={"mode": mode})).status_code == 200


def env(devnet: str, store: str | None, grace_ms: int, members: list[str]) -> dict[str, str]:
    base = {"USE_MOCK_DA": "false", "DA_RPC_URL": devnet, "DA_AUTH_TOKEN": TOKEN, "DA_NAMESPACE": NS.hex(),
            "DA_TIMEOUT_MS": "2000", "DA_RETRY_COUNT": "0", "DA_HEALTH_INTERVAL_MS": "100",
            "DA_FAILURE_THRESHOLD": "2", "RECONCILE_RETRY_DELAY_MS": "50", "RECONCILE_ADOPT_GRACE_MS": str(grace_ms),
            "CLUSTER_MEMBER_KEYS": ",".join(members)}
    if store is not None:
        base.update(ENABLE_FALLBACK="true", EMERGENCY_DA_URL=store)
    return base


def coordinator(cfg: Config, store: str | None) -> Coordinator:
    emergency = BlobStoreDA(store, name=EMERGENCY, namespace=NS, timeout_s=2) if store is not None else None
    return Coordinator(cfg, CelestiaDA.from_config(cfg), None, emergency)


async def primary_blob_ids(devnet: str) -> list[str]:
    """Every blob of our namespace on the devnet, as sha256 ids, in log order (duplicates kept)."""
    async with CelestiaDA(devnet, NS, TOKEN, timeout_s=5, retry_count=0) as da:
        cursor, ids = 0, []
        while True:
            page = await da.read_after(cursor, 1000)
            ids += [hashlib.sha256(data).hexdigest() for _, data in page.items]
            cursor = page.cursor
            if page.at_head:
                return ids


async def close(coord: Coordinator) -> None:
    for layer in coord.da.layers.values():
        await layer.inner.aclose()  # type: ignore[attr-defined]


async def test_a_lost_writers_fallback_blobs_reach_the_primary_through_another_member(
        make_config: Callable[..., Config], tmp_path: Path, nursery: trio.Nursery) -> None:
    devnet: str = await nursery.start(partial(serve_devnet, "127.0.0.1", 0, ":memory:", 0.05, TOKEN))
    store: str = await nursery.start(partial(serve_blobstore, "127.0.0.1", 0, tmp_path / "store"))
    keys = [bytes(identity.load_or_create(tmp_path / name).verify_key).hex() for name in ("a", "b")]
    a = coordinator(make_config("a", **env(devnet, store, 500, keys)), store)
    b = coordinator(make_config("b", **env(devnet, store, 500, keys)), store)
    async with trio.open_nursery() as b_scope:
        await b_scope.start(b.run)
        async with trio.open_nursery() as a_scope:
            await a_scope.start(a.run)
            await wait_for(lambda: a.rebuilt and b.rebuilt, what="A and B ready")
            await fault(devnet, "down")
            for i in range(12):
                await a.register_node(f"during-{i}", "z", "10.0.0.1:1", 1)
            await wait_for(lambda: a.outbox.pending == 0, timeout=10, what="A's writes on the emergency store")
            assert a.da.pending.pending_count >= 1
            await wait_for(lambda: a.da_view().status is Status.EMERGENCY, what="A's status to reach Emergency")
            await wait_for(lambda: all(b.state.node(f"during-{i}") for i in range(12)), what="B reading them")
            a_blobs = {p.blob_id for p in await a.da.pending.pending()}
            a_scope.cancel_scope.cancel()  # A is gone ...
        await close(a)
        shutil.rmtree(tmp_path / "a")  # ... and so is its data dir (its record of the fallback blobs)
        await wait_for(lambda: b.da.pending.foreign_waiting == len(a_blobs), what="B to record A's blobs")

        await fault(devnet, "ok")
        await wait_for(lambda: b.da.pending.foreign_waiting == 0, timeout=20, what="B to adopt A's blobs")
        adopted = {blob_id for blob_id, how, ref in await b.da.pending.foreign(resolved=True)
                   if how == "adopted" and ref is not None}
        assert adopted == a_blobs
        assert b.da_view().status is Status.HEALTHY
        b_scope.cancel_scope.cancel()
    await close(b)
    on_primary = await primary_blob_ids(devnet)
    assert a_blobs <= set(on_primary)
    assert len(on_primary) == len(set(on_primary))  # each once: only B re-posted them

    # a coordinator that follows only the primary now has every write A made during the outage
    fresh = coordinator(make_config("fresh", **env(devnet, None, 500, keys[:1])), None)
    async with trio.open_nursery() as scope:
        await scope.start(fresh.run)
        await wait_for(lambda: fresh.rebuilt, what="a rebuild from the primary alone")
        assert all(fresh.state.node(f"during-{i}") is not None for i in range(12))
        scope.cancel_scope.cancel()
    await close(fresh)


async def test_a_live_writer_reconciles_its_own_blobs_and_nobody_duplicates_them(
        make_config: Callable[..., Config], tmp_path: Path, nursery: trio.Nursery) -> None:
    devnet: str = await nursery.start(partial(serve_devnet, "127.0.0.1", 0, ":memory:", 0.05, TOKEN))
    store: str = await nursery.start(partial(serve_blobstore, "127.0.0.1", 0, tmp_path / "store"))
    keys = [bytes(identity.load_or_create(tmp_path / name).verify_key).hex() for name in ("a", "b", "c")]
    coords = [coordinator(make_config(name, **env(devnet, store, 1500, keys)), store) for name in ("a", "b", "c")]
    a, b, c = coords
    async with trio.open_nursery() as scope:
        for coord in coords:
            await scope.start(coord.run)
        await wait_for(lambda: all(x.rebuilt for x in coords), what="everyone ready")
        await fault(devnet, "down")
        for i in range(8):
            await a.register_node(f"n{i}", "z", "10.0.0.1:1", 1)
        await wait_for(lambda: a.outbox.pending == 0, timeout=10, what="A's writes on the emergency store")
        count = a.da.pending.pending_count
        await wait_for(lambda: b.da.pending.foreign_waiting == c.da.pending.foreign_waiting == count,
                       what="B and C to record A's blobs")
        await fault(devnet, "ok")
        await wait_for(lambda: a.da.pending.pending_count == 0, timeout=20, what="A to reconcile")
        # B's and C's readers back off for up to 10 s after the outage: a quick reconciliation leaves them that
        await wait_for(lambda: b.da.pending.foreign_waiting == c.da.pending.foreign_waiting == 0, timeout=25,
                       what="B and C to see A's blobs on the primary")
        await trio.sleep(3.5)  # past twice the grace period: nobody adopts what is already there
        for other in (b, c):
            resolved = await other.da.pending.foreign(resolved=True)
            assert len(resolved) == count and {how for _, how, _ in resolved} == {"on_primary"}
        scope.cancel_scope.cancel()
    for coord in coords:
        await close(coord)
    on_primary = await primary_blob_ids(devnet)
    assert len(on_primary) == len(set(on_primary))


# ---- the rules, on a Mock DA stack -------------------------------------------------------------------------------


def signed(key: nacl.signing.SigningKey, text: bytes) -> bytes:
    return encode_blob(key, "writer", [text])


async def follow_to_heads(stack: DAStack, cursors: dict[str, int]) -> None:
    """What the consumers do: read every followed log on to its head (``cursors``: where each one is)."""
    for name, log_ in stack.followed.items():
        while True:
            page = await log_.read_after(cursors[name], 100)
            cursors[name] = page.cursor
            if page.at_head:
                break


async def test_only_member_signed_blobs_are_adopted_after_the_grace_period_and_quiet_writers(tmp_path: Path) -> None:
    writer, stranger = nacl.signing.SigningKey.generate(), nacl.signing.SigningKey.generate()
    members = frozenset({bytes(writer.verify_key)})
    primary, emergency = MockDA(), MockDA(name=EMERGENCY)
    stack = DAStack({PRIMARY: primary, EMERGENCY: emergency}, tmp_path, timeout_s=2, retry_delay_s=0.01,
                    members=lambda: members, adopt_grace_s=0.2)
    good = signed(writer, b"one")
    forged = bytearray(signed(writer, b"two"))
    forged[-1] ^= 1
    for data in (good, signed(stranger, b"three"), bytes(forged), b"not an event blob"):
        await emergency.post(data)
    assert member_signed(good, members) and not member_signed(bytes(forged), members)

    follow = partial(follow_to_heads, stack, dict.fromkeys(stack.followed, 0))

    await follow()
    assert stack.pending.foreign_waiting == 1  # the member's blob only
    stack.observe(PRIMARY, True)  # the primary works from now on
    report = await stack.reconciler.run_pass()
    assert report.blobs_adopted == 0 and not stack.reconciler.adoption_due()  # within the grace period
    await trio.sleep(0.45)  # past grace + its random share (at most 2 x grace)
    assert stack.reconciler.adoption_due()
    report = await stack.reconciler.run_pass()
    assert report.blobs_adopted == 0  # the primary log has not been read to its head since: maybe it is there
    await follow()
    report = await stack.reconciler.run_pass()
    assert report.blobs_adopted == 1 and report.foreign_processed == 1 and stack.pending.foreign_waiting == 0
    assert [d for _, d in (await primary.read_after(0, 10)).items] == [good]

    # a writer still active on the primary (a blob of it read there lately) is left to reconcile its own blobs
    later = signed(writer, b"four")
    await emergency.post(later)
    await primary.post(signed(writer, b"a new write of the writer"))
    await follow()
    assert stack.pending.foreign_waiting == 1
    await trio.sleep(0.45)
    await follow()  # the writer's new blob was read within the grace period
    await primary.post(signed(writer, b"and another one"))
    await follow()
    assert (await stack.reconciler.run_pass()).blobs_adopted == 0
    await trio.sleep(0.45)  # quiet for the grace period now
    await follow()
    assert (await stack.reconciler.run_pass()).blobs_adopted == 1
    await stack.aclose()


async def test_a_blob_of_ours_whose_pending_record_was_lost_is_adopted_while_we_keep_writing(tmp_path: Path) -> None:
    """Our own blob on a fallback log, not in our pending store (a data dir restored from a backup, the key kept):
    it counted as foreign, and since we kept writing to the primary our key always looked active, so neither we nor
    any member adopted it; it lived on the fallback only (a reviewer's reproduction). Our own key is never held
    active: the blob is adopted after the grace period although we write on; another member's key still is."""
    me, other = nacl.signing.SigningKey.generate(), nacl.signing.SigningKey.generate()
    members = frozenset({bytes(me.verify_key), bytes(other.verify_key)})
    primary, emergency = MockDA(), MockDA(name=EMERGENCY)
    stack = DAStack({PRIMARY: primary, EMERGENCY: emergency}, tmp_path, timeout_s=2, retry_delay_s=0.01,
                    members=lambda: members, adopt_grace_s=0.2, own_key=bytes(me.verify_key))
    orphan, theirs = signed(me, b"written during the outage"), signed(other, b"theirs, during the outage")
    await emergency.post(orphan)
    await emergency.post(theirs)
    follow = partial(follow_to_heads, stack, dict.fromkeys(stack.followed, 0))

    stack.observe(PRIMARY, True)
    adopted = 0
    for i in range(8):  # both of us write on the primary all along: 8 x 0.15 s, six grace periods
        await primary.post(signed(me, b"our write %d" % i))
        await primary.post(signed(other, b"their write %d" % i))
        await follow()
        adopted += (await stack.reconciler.run_pass()).blobs_adopted
        await trio.sleep(0.15)
    on_primary = [d for _, d in (await primary.read_after(0, 100)).items]
    assert adopted == 1 and orphan in on_primary and theirs not in on_primary
    assert stack.pending.foreign_waiting == 1  # theirs: its writer is active, and reconciles it itself
    await stack.aclose()


async def test_own_pending_blob_seen_on_the_primary_is_reconciled(tmp_path: Path) -> None:
    key = nacl.signing.SigningKey.generate()
    primary, emergency = MockDA(), MockDA(name=EMERGENCY)
    stack = DAStack({PRIMARY: primary, EMERGENCY: emergency}, tmp_path, timeout_s=2,
                    members=lambda: frozenset({bytes(key.verify_key)}), adopt_grace_s=10)
    data = signed(key, b"mine")
    ref = await emergency.post(data)
    await stack.pending.record(ref, data)
    page: Any = await stack.followed[EMERGENCY].read_after(0, 10)
    assert page.items and stack.pending.foreign_waiting == 0  # our own blob is not foreign
    where = await primary.post(data)  # e.g. another member adopted it while we were away
    await stack.followed[PRIMARY].read_after(0, 10)
    assert stack.pending.pending_count == 0
    [blob] = await stack.pending.reconciled()
    assert blob.primary_ref == where
    await stack.aclose()


async def test_a_primary_losing_every_adopted_blob_is_caught_by_a_probe_within_the_pass(tmp_path: Path) -> None:
    """A member gone for good left 40 blobs on the emergency layer; we adopt them, and the primary takes every post
    and gives none back. Missed adopted blobs count toward the probe as our own do: the probe of ours is lost too, so
    the primary fails over and the pass stops after a few posts (not every blob with all its retries)."""
    writer, me = nacl.signing.SigningKey.generate(), nacl.signing.SigningKey.generate()
    members = frozenset({bytes(writer.verify_key), bytes(me.verify_key)})
    primary, emergency = MockDA(), MockDA(name=EMERGENCY)
    probe = encode_blob(me, "me", [])
    stack = DAStack({PRIMARY: primary, EMERGENCY: emergency}, tmp_path, timeout_s=2, retry_delay_s=0.01,
                    members=lambda: members, adopt_grace_s=0.05, own_key=bytes(me.verify_key),
                    probe=lambda: probe)
    for i in range(40):
        await emergency.post(signed(writer, b"orphan %d" % i))
    follow = partial(follow_to_heads, stack, dict.fromkeys(stack.followed, 0))
    await follow()
    assert stack.pending.foreign_waiting == 40
    stack.observe(PRIMARY, True)
    await trio.sleep(0.15)  # past grace and its random share
    await follow()
    posts = {"n": 0}

    async def black_hole(data: bytes) -> BlobRef:  # taken, never stored: every read back finds nothing
        posts["n"] += 1
        return BlobRef(PRIMARY, 1000 + posts["n"], hashlib.sha256(data).digest())

    primary.post = black_hole  # type: ignore[method-assign]
    report = await stack.reconciler.run_pass()
    assert report.blobs_adopted == 0 and report.aborted and stack.pending.foreign_waiting == 40
    assert stack.machine.status is not Status.HEALTHY and any("probe" in e for e in report.errors)
    assert 1 <= posts["n"] <= 10, posts  # three blobs with their retries at most, then the probe
    await stack.aclose()
