"""Receipt consensus against a lying member and at its limits, on the simulated network under MockClock: fields a
batch signature does not cover, batches too large to publish, a batch signed again under a liar's own key,
repeated receipt ids, and receipts that became final through DA alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import nacl.signing
import pytest
import trio
import trio.testing

from consensus import frost
from consensus import receipts as rc
from consensus.group import IDENTITY
from consensus.lockstore import SIGNED
from consensus.receipt_service import LOCK, LOCK_REPLY
from consensus.slots import Verdict
from deploy.simulation import EPOCH, NOW, SimCluster, started
from node import events as ev
from node import merkle


def cluster_signed(cluster: SimCluster, receipts: list[rc.Receipt], signers: tuple[str, ...] = ("c0", "c1", "c2"),
                   signers_field: str | None = None) -> dict[str, Any]:
    """A batch event's fields, genuinely threshold-signed with the members' key shares."""
    keys = {cluster.members[m].keys.key.identifier: cluster.members[m].keys.key for m in signers}
    group = next(iter(keys.values())).group_public_key
    raws = [r.to_bytes() for r in receipts]
    root = merkle.root(raws)
    message = rc.batch_message(group, root, len(raws))
    nonces, commitments = {}, {}
    for i, key in keys.items():
        nonces[i], commitments[i] = frost.commit(key.secret_share)
    shares = {i: frost.sign(i, key.secret_share, group, nonces[i], message, commitments) for i, key in keys.items()}
    signature = frost.aggregate(commitments, message, group, shares)
    return {"group_key": group.hex(), "root": root.hex(), "tree_size": len(raws), "signature": signature.hex(),
            "signers": ",".join(signers) if signers_field is None else signers_field,
            "receipts": msgpack.packb([[raw, r.node_signature] for raw, r in zip(raws, receipts, strict=True)],
                                      use_bin_type=True)}


def signed_batch_fields(receipts: list[rc.Receipt], group: nacl.signing.SigningKey) -> dict[str, Any]:
    """A batch event's fields signed with ``group`` as a plain Ed25519 key (the cluster's, or a liar's own)."""
    raws = [r.to_bytes() for r in receipts]
    key, root = bytes(group.verify_key), merkle.root(raws)
    return {"group_key": key.hex(), "root": root.hex(), "tree_size": len(raws), "signers": "c0,c1",
            "signature": group.sign(rc.batch_message(key, root, len(raws))).signature.hex(),
            "receipts": msgpack.packb([[raw, r.node_signature] for raw, r in zip(raws, receipts, strict=True)],
                                      use_bin_type=True)}


def numbered_receipt(i: int) -> rc.Receipt:
    """Receipt i of the nodes of tests/test_snapshot_perf.py's ledger (``receipt_events``)."""
    from tests.test_snapshot_perf import NODE_KEYS

    return rc.sign_as_node(NODE_KEYS[i % 5], receipt_type="storage", node_id=f"n{i % 5}", subject=f"{i:064x}",
                           epoch=1, usage_proof_hash="00" * 32, execution_commitment=None, reward_base=1,
                           submitter_address="00" * 20, timestamp=0)


async def test_a_signed_batch_whose_unsigned_fields_make_no_event_is_not_kept(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """A liar re-announced a genuinely signed batch with empty signers (a field its signature does not cover): it
    was kept and served, and publishing it later raised out of the service and took the member down (a reviewer's
    reproduction). A heard batch must make a valid event; the genuine one is kept."""
    async with started(tmp_path, seed=5) as cluster:
        r = cluster.receipt("n1", "obj1")
        victim = cluster.service("c0")
        # and signers a document cannot name (a regression review: kept, served and republished by every member,
        # each document failing verify_document): refused too, here and in a batch event on DA
        for odd in ("", "c0,c0,c1", "c0,c1,", "c0, c1"):
            assert await victim._on_final("c3", cluster_signed(cluster, [r], signers_field=odd)) == {"kept": 0}
            assert victim.lookup(r.id) is None and victim.locks.heard() == []
        await cluster.write("c3", ev.RECEIPT_BATCH, **cluster_signed(cluster, [r], signers_field="c0,c0,c1"))
        await trio.sleep(5)
        assert victim.lookup(r.id) is None
        assert await victim._on_final("c3", cluster_signed(cluster, [r])) == {"kept": 1}
        assert victim.lookup(r.id)["signers"] == ["c0", "c1", "c2"]
        assert rc.verify_document(victim.lookup(r.id), cluster.group_key) == (True, "valid")
        await trio.sleep(400)  # republished once DA has not brought it (c3 never published it): no crash
        assert victim.counters.republished == 1 and victim.lookup(r.id)["status"] == "final"
        assert rc.verify_document(victim.lookup(r.id), cluster.group_key) == (True, "valid")


async def test_batches_signed_again_over_receipts_kept_already_are_acknowledged_not_kept_again(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """A liar had the same few locked receipts signed again in every order and subset (each a new root, each a
    genuine group signature) and announced them all: each was kept on disk and in memory, without bound (120
    batches from 6 receipts: a reviewer's reproduction). A batch whose every receipt is signed in one kept here is
    acknowledged, not kept again; one with a receipt not kept yet still is."""
    from itertools import islice, permutations

    from tests.test_receipt_sim import distinct_receipt

    async with started(tmp_path, seed=5) as cluster:
        target = cluster.service("c3")
        receipts = [distinct_receipt(cluster, k) for k in range(5)]
        before = len(target.view.heard_batches())
        assert (await target._on_final("c0", cluster_signed(cluster, receipts)))["kept"] == 1
        for order in islice(permutations(receipts), 1, 25):
            assert (await target._on_final("c0", cluster_signed(cluster, list(order)[:4])))["kept"] == 1
        assert len(target.view.heard_batches()) - before == 1 and len(target.locks.heard()) == 1
        assert all(target.view.signed_document(r.id) is not None for r in receipts)
        more = [*receipts[:2], distinct_receipt(cluster, 9)]
        assert (await target._on_final("c0", cluster_signed(cluster, more)))["kept"] == 1
        assert len(target.view.heard_batches()) - before == 2 and len(target.locks.heard()) == 2


def test_batches_are_cut_so_their_receipts_fit_one_event() -> None:
    """A batch's packed receipts must fit the event's bin field (MAX_BIN): ``fitting`` cuts by size as well as by
    count, never below one receipt."""
    key = nacl.signing.SigningKey(b"k" * 32)

    def long_receipt(k: int) -> rc.Receipt:
        return rc.sign_as_node(key, receipt_type="storage", node_id=f"{k:04d}" + "N" * 124, subject="h" * 256,
                               epoch=EPOCH, usage_proof_hash="ab" * 32, execution_commitment=None,
                               reward_base=10**12, submitter_address="ab" * 20, timestamp=int(NOW))

    receipts = [long_receipt(k) for k in range(1024)]
    cut = rc.fitting(receipts, 1024)
    assert 800 < cut < 1024
    packed = msgpack.packb([[r.to_bytes(), r.node_signature] for r in receipts[:cut]], use_bin_type=True)
    assert len(packed) <= ev.MAX_BIN
    over = msgpack.packb([[r.to_bytes(), r.node_signature] for r in receipts[:cut + 1]], use_bin_type=True)
    assert len(over) > ev.MAX_BIN - 6 * (cut + 1)  # (the bound is tight: a few bytes per receipt at most)
    assert rc.fitting(receipts, 256) == 256 and rc.fitting(receipts[:3], 256) == 3 and rc.fitting([], 8) == 0
    assert rc.fits(len(r.to_wire()) for r in receipts[:cut]) and not rc.fits(len(r.to_wire()) for r in receipts)


async def test_a_thousand_long_receipts_are_signed_and_published_in_batches_that_fit(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """RECEIPT_BATCH_MAX 1024 (allowed) and receipts with long ids (allowed): the signed batch could not be made an
    event, and the proposer, and each peer keeping it, crashed (a reviewer's reproduction)."""
    cluster = SimCluster(tmp_path, 4, seed=7, delay=(0.001, 0.01))
    cluster.service_options = {"batch_max": 1024}
    raws, keys = [], {}
    for k in range(8):
        nid = f"{k}" + "N" * 127
        keys[nid] = nacl.signing.SigningKey(bytes([k + 1]) * 32)
        raws.append(ev.make_event(ev.NODE_REGISTERED, (1, k), "c0", id=nid, zone="z", addr="h:1", capacity_gb=10).raw)
        raws.append(ev.make_event(ev.NODE_KEY, (1, 100 + k), "c0", id=nid,
                                  public_key=bytes(keys[nid].verify_key).hex()).raw)
    objects = [f"{o:03d}" + "h" * 253 for o in range(128)]
    for o, h in enumerate(objects):
        raws.append(ev.make_event(ev.OBJECT_REGISTERED, (2, o), "c0", hash=h, size=1).raw)
        for k, nid in enumerate(keys):
            raws.append(ev.make_event(ev.REPLICA_HEALED, (3, o * 8 + k), "c0", hash=h, node_id=nid).raw)
    for i in range(0, len(raws), 200):
        cluster.da.preload(cluster.blob_of_c0(raws[i:i + 200]))
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        receipts = [rc.sign_as_node(keys[nid], receipt_type="storage", node_id=nid, subject=h, epoch=EPOCH,
                                    usage_proof_hash="ab" * 32, execution_commitment=None, reward_base=10**12,
                                    submitter_address="ab" * 20, timestamp=int(NOW))
                    for nid in keys for h in objects]
        c0 = cluster.service("c0")
        records = [c0.submit(r) for r in receipts]
        await cluster.wait_final({r.id for r in receipts}, timeout=60)
        assert {x.status for x in records} == {"final"} and c0.counters.batches >= 2
        nursery.cancel_scope.cancel()
    cluster.close()


async def test_a_lock_request_too_large_to_publish_locks_nothing(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """A lying proposer's lock request whose batch, signed, could not be published: refused whole, nothing locked."""
    async with started(tmp_path, seed=11) as cluster:
        r = cluster.receipt("n1", "obj1")
        padding = [b"\x00" * (rc.MAX_RECEIPT_BYTES + 64)] * 600  # malformed receipts, but they count in the size
        reply = await cluster.service("c2")._on_lock("c3", {"batch": b"B" * 16, "receipts": [r.to_wire(), *padding]})
        assert set(reply["verdicts"]) == {2} and reply["share"] == b"" and reply["commitment"] == []
        assert cluster.service("c2").locks.lock_of(r.id) is None


async def test_a_batch_naming_one_receipt_twice_gets_no_share(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """Signers released shares for an id list repeating one locked receipt: a liar could mint batches without end
    (distinct roots) from one lock, each kept by every peer (a reviewer's reproduction)."""
    async with started(tmp_path, seed=2) as cluster:
        signer = cluster.service("c2")
        me = signer.keys.key.identifier
        r = cluster.receipt("n1", "obj1")
        released = {}
        for k in (1, 2, 3):
            reply = await signer._on_lock("c3", {"batch": bytes([k]) * 16, "receipts": [r.to_wire()]})
            commitments = {me: tuple(reply["commitment"])}
            commitments.update({m.keys.key.identifier: frost.commit(m.keys.key.secret_share)[1]
                                for m in cluster.members.values() if m.id in ("c0", "c3")})
            ids = sorted(commitments)
            answer = await signer._on_sign("c3", {"batch": bytes([k]) * 16, "ids": r.id * k, "session": 0,
                                                  "signers": bytes(ids), "hiding": [commitments[i][0] for i in ids],
                                                  "binding": [commitments[i][1] for i in ids]})
            released[k] = (len(answer["share"]) == 32, answer["error"])
        assert released == {1: (True, ""), 2: (False, "a receipt appears twice in the batch"),
                            3: (False, "a receipt appears twice in the batch")}


async def test_a_receipt_final_through_da_alone_is_final_at_its_proposer(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """c0 locks r everywhere, then is cut off from its peers (not from DA) before signing; c1 takes the batch over
    and publishes it. c0's state held r signed, yet its record stayed "locked": a client waiting there was answered
    "locked", and c0 proposed r again every half second (a reviewer's reproduction)."""
    async with started(tmp_path, seed=3) as cluster:
        c0 = cluster.service("c0")
        sign = c0._sign

        async def cut_then_sign(*args: Any, **kwargs: Any) -> Any:
            cluster.net.partition({"c0"}, {"c1", "c2", "c3"})
            return await sign(*args, **kwargs)

        c0._sign = cut_then_sign  # type: ignore[method-assign]
        r = cluster.receipt("n1", "obj1")
        record = c0.submit(r)
        with trio.fail_after(5):
            while record.status == "pending":
                await trio.sleep(0.001)
        assert record.status == "locked"
        started_at = trio.current_time()
        with trio.fail_after(30):
            while record.status != "final":
                await record.changed.wait()
        assert c0.view.holds(r.id) and cluster.service("c1").counters.takeovers >= 1
        batches = c0.counters.batches
        await trio.sleep(10)
        assert c0.counters.batches == batches and r.id not in c0._retry  # not proposed again
        assert trio.current_time() - started_at < 30


async def test_a_liars_own_key_batch_does_not_settle_a_cluster_signed_batch_kept_here(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """n = 7, t = 5: c0's signed batch is kept by five members, then c0 is lost before publishing it, and liar c6
    publishes the same receipt under a key of its own. Members counted the state's receipt as settling their kept
    batch: they forgot it and closed its locks, and the cluster-signed batch never reached DA (a reviewer's
    reproduction). Only a batch under a cluster key settles it: it is republished."""
    cluster = SimCluster(tmp_path, 7, seed=9, delay=(0.001, 0.01))
    cluster.seed_ledger()
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        r = cluster.receipt("n1", "obj1")
        honest = ["c1", "c2", "c3", "c4", "c5"]
        for m in honest:
            reply = await cluster.service(m)._on_lock("c0", {"batch": b"B" * 16, "receipts": [r.to_wire()]})
            assert list(reply["verdicts"]) == [0]
        fields = cluster_signed(cluster, [r], signers=("c0", "c1", "c2", "c3", "c4"))
        for m in honest:
            assert (await cluster.service(m)._on_final("c0", fields))["kept"] == 1
        cluster.lose("c0")
        own = nacl.signing.SigningKey(b"\x07" * 32)
        own_key, root = bytes(own.verify_key), bytes.fromhex(fields["root"])
        await cluster.write("c6", ev.RECEIPT_BATCH, **{**fields, "group_key": own_key.hex(), "signers": "c6",
                                                       "signature": own.sign(rc.batch_message(own_key, root, 1))
                                                       .signature.hex()})
        await trio.sleep(200)
        on_da = cluster.rebuilt_from_da().ledger.batches.values()
        assert any(b.group_key == cluster.group_key.hex() and b.root == fields["root"] for b in on_da)
        c1 = cluster.service("c1")
        assert c1.lookup(r.id)["status"] == "final" and c1.locks.lock_of(r.id)[1] == SIGNED
        assert sum(cluster.service(m).counters.republished for m in honest) >= 1
        nursery.cancel_scope.cancel()
    cluster.close()


async def test_an_unsignable_locked_receipt_is_settled_with_a_broken_lock_table(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """A receipt locked at its proposer whose epoch leaves the window while that proposer's lock table is broken
    was taken out of the retries but never settled: its client read "locked" for ever (a reviewer's find)."""
    async with started(tmp_path, seed=3) as cluster:
        c0 = cluster.service("c0")
        r = cluster.receipt("n1", "obj1")
        record = c0.submit(r)
        cluster.net.partition({"c0"}, {"c1", "c2", "c3"})
        with trio.fail_after(10):
            while not (record.status == "locked" and r.id in c0._retry):
                await trio.sleep(0.05)
        c0.locks.broken = "simulated: the disk failed"
        for m in cluster.members.values():
            m.skew_s = 2 * 3600.0
        await trio.sleep(30)
        assert record.status == "rejected" and "outside" in record.reason and r.id not in c0._retry


@pytest.mark.parametrize("seed", [1, 2])
async def test_signers_refusing_with_fresh_commitments_do_not_get_into_session_after_session(
        tmp_path: Path, autojump_clock: trio.testing.MockClock, seed: int) -> None:
    """Two liars of seven lock honestly, then answer every signing request at once with a refusal carrying a fresh
    valid commitment: each refusal put the liar back among the ready signers, and one batch took up to 44 sessions
    where ROAST's bound is n - t + 1 (a reviewer's reproduction). A refusal leaves a signer out for the batch."""
    cluster = SimCluster(tmp_path, 7, seed=seed, delay=(0.001, 0.01))
    cluster.seed_ledger()
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        for liar_id in ("c5", "c6"):
            liar = cluster.service(liar_id)

            def refusing(key: frost.KeyShare) -> Any:
                async def refuse(peer: str, body: dict[str, Any]) -> dict[str, Any]:
                    return {"share": b"", "commitment": list(frost.commit(key.secret_share)[1]), "error": "no"}
                return refuse

            liar.net.on_request("rc.sign", "rc.sign.reply", refusing(liar.keys.key))
            liar._fast_share = lambda *args: b""  # type: ignore[method-assign]
        c0 = cluster.service("c0")
        r = cluster.receipt("n1", "obj1")
        record = c0.submit(r)
        with trio.fail_after(10):
            while record.status != "final":
                await record.changed.wait()
        threshold = c0.keys.key.threshold
        assert c0.counters.batches == 1 and 1 <= c0.counters.sessions <= 7 - threshold + 1
        nursery.cancel_scope.cancel()
    cluster.close()


async def test_a_heard_batch_a_liar_signed_again_stays_listed_and_the_listing_key_follows_every_change() -> None:
    """A cluster-signed batch heard (not in DA yet) whose receipts a liar published first under a key of its own:
    the listing dropped them (held by the state, but not as signed) while GET /receipts/{id} served them; and the
    listing's cache, keyed by the count and the last id, went stale when one id left and another came (a
    reviewer's reproductions). And the cluster's receipts are found without locating each one."""
    from deploy.receipt_view import StateLedgerView
    from node.state import State
    from tests.test_snapshot_perf import GROUP, T0, receipt_events

    T1 = T0 + 1000

    batch_fields, receipt = signed_batch_fields, numbered_receipt

    async def no_submit(*_: Any) -> bytes:
        raise AssertionError("nothing is published here")

    state = State()
    state.apply_all(receipt_events(0, 0))  # the nodes' keys
    keys = type("Keys", (), {"key": type("Key", (), {"group_public_key": bytes(GROUP.verify_key)})()})()
    view = StateLedgerView(lambda: state, no_submit, keys)
    ours, liar = [receipt(i) for i in range(3)], nacl.signing.SigningKey(b"\x07" * 32)
    versions = {view.signed_version()}
    heard = view.check_batch(batch_fields(ours, GROUP))
    assert heard is not None
    view.serve(heard, "c1")
    versions.add(view.signed_version())
    assert sorted(view.signed_ids()) == sorted(r.id for r in ours)
    state.apply(ev.make_event(ev.RECEIPT_BATCH, (T1, 1), "c6", **batch_fields(ours, liar)))
    versions.add(view.signed_version())
    assert sorted(view.signed_ids()) == sorted(r.id for r in ours)  # (it was [])
    assert all(view.signed_document(r.id)["group_public_key"] == bytes(GROUP.verify_key).hex() for r in ours)
    state.apply(ev.make_event(ev.RECEIPT_BATCH, (T1, 2), "c0", **batch_fields(ours, GROUP)))  # DA brings ours
    assert view.settled_heard() == [heard]
    versions.add(view.signed_version())
    assert sorted(view.signed_ids()) == sorted(r.id for r in ours)
    assert len(versions) == 4  # every change: served, the liar's batch, ours in the state, heard forgotten
    late = receipt(7)
    state.apply(ev.make_event(ev.RECEIPT_BATCH, (T1, 3), "c6", **batch_fields([late], liar)))
    assert late.id not in view.signed_ids() and view.signed_version() not in versions  # the liar's alone: not ours


async def test_a_liar_answering_first_does_not_choose_the_rival_a_submitter_is_shown(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """From a review: the rival id in the submitter's 409, and the evidence kept with the closed lock, came from the
    first CONFLICT reply: a fast liar naming a made-up rival chose it over the honest members, who name the real
    one. n = 7 (t = 5): the receipt closes on three refusals, two honest ones naming the real rival."""
    fake = b"\xee" * 32
    async with started(tmp_path, seed=6, n=7) as cluster:
        a, b = cluster.receipt("n3", "obj3", reward=1), cluster.receipt("n3", "obj3", reward=2)
        for member in ("c1", "c4"):  # they hold the slot for b, and answer a little later than the liar
            await cluster.service(member)._on_lock("c0", {"batch": b"B" * 16, "receipts": [b.to_wire()]})
            honest = cluster.service(member)._on_lock

            async def slow(peer: str, body: dict[str, Any], honest: Any = honest) -> dict[str, Any]:
                await trio.sleep(0.05)
                return await honest(peer, body)  # type: ignore[no-any-return]

            cluster.net.nodes[member].dispatcher.on_request(LOCK, LOCK_REPLY, slow)

        async def liar(peer: str, body: dict[str, Any]) -> dict[str, Any]:  # every receipt "in conflict"
            n = len(body["receipts"])
            return {"verdicts": bytes([Verdict.CONFLICT]) * n, "conflicts": [i.to_bytes(4, "big") + fake
                                                                              for i in range(n)],
                    "reasons": ["slot conflict"] * n, "commitment": [], "share": b"", "spare": []}

        cluster.net.nodes["c3"].dispatcher.on_request(LOCK, LOCK_REPLY, liar)
        record = cluster.service("c2").submit(a)
        with trio.fail_after(30):
            while record.status in ("pending", "locked"):
                await trio.sleep(0.01)
        assert record.status == "conflict" and record.conflicting_id == b.id
        held = cluster.members["c2"].locks.lock_of(a.id)  # (receipt, why closed, the rival kept as evidence)
        assert held is not None and held[2] == b.id


async def test_a_rival_of_a_receipt_final_in_an_announced_batch_is_a_conflict_at_once(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """From a review: a member that knew a receipt as final from its batch's announcement only (DA had not brought
    it yet) served it as final, and yet locked a rival for its slot and promised it (202 "locked", optimistic):
    the rival check read the state alone. The announced batches count too."""
    async with started(tmp_path, seed=7) as cluster:
        cluster.da.lag = 60.0  # DA brings nothing for a minute: the batch is known from its announcement only
        ra, rb = cluster.receipt("n3", "obj3", reward=1), cluster.receipt("n3", "obj3", reward=2)
        record = cluster.service("c0").submit(ra)
        with trio.fail_after(20):
            while record.status != "final":
                await trio.sleep(0.01)
        knowing = [m for m in ("c1", "c2", "c3") if cluster.service(m).view.signed_document(ra.id) is not None
                   and not cluster.service(m).view.holds(ra.id)]
        assert knowing  # (what this test is about: a member that has heard the batch, its state not yet)
        service = cluster.service(knowing[0])
        assert service.view.signed_rival(rb.id, rb.slot) == ra.id
        rival = service.submit(rb)
        assert rival.status == "conflict" and rival.conflicting_id == ra.id
        assert service.locks.lock_of(rb.id) is None  # nothing locked for it


@pytest.mark.parametrize("one_round", [True, False, "spares only"])
async def test_a_signer_offering_commitments_that_are_no_group_element_is_blamed_not_its_honest_peers(
        tmp_path: Path, autojump_clock: trio.testing.MockClock, one_round: bool | str) -> None:
    """A liar answers lock and sign requests with the identity point as its nonce commitments, spares included.
    Taken unchecked, its spare in a one-round signer set made each honest signer named beside it refuse (the set is
    invalid), and those were penalised, while the one-round path never ran again and the liar was never named (a
    reviewer's reproduction: 0 of 12 batches in one round, honest signers' lag growing); in a signing session the
    honest refusals took the honest signers out of the batch. Checked as they arrive, such commitments name the
    liar at once, and nothing else changes. ("spares only": its lock commitments are valid, its spares not.)"""
    cluster = SimCluster(tmp_path, 4, seed=4, delay=(0.001, 0.01))
    cluster.seed_ledger()
    if one_round != "spares only":
        cluster.members["c3"].behaviour = "bad_commitments"
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        c0 = cluster.service("c0")
        if one_round == "spares only":
            honest_lock = cluster.service("c3")._on_lock

            async def lock(peer: str, body: dict[str, Any]) -> dict[str, Any]:
                reply = await honest_lock(peer, body)
                return {**reply, "spare": [IDENTITY, IDENTITY] if reply["spare"] else []}

            cluster.net.nodes["c3"].on_request(LOCK, LOCK_REPLY, lock)
        if not one_round:
            c0._fast_plan = lambda *args: None  # type: ignore[method-assign]
        for k in range(12):
            record = c0.submit(cluster.receipt(f"n{k % 6}", f"obj{k // 6}"))
            with trio.fail_after(30):
                while record.status != "final":
                    await record.changed.wait()
        assert c0.counters.batches == 12 and set(c0.counters.blamed) == {"c3"}
        assert c0.counters.one_round >= (10 if one_round else 0) and c0.counters.sessions <= (2 if one_round else 12)
        assert cluster.service("c1").counters.sign_refused == cluster.service("c2").counters.sign_refused == 0
        assert max(c0._lag["c1"], c0._lag["c2"]) < 0.5  # never penalised for the liar's commitments
        assert all(by != "c0" or name == "c3" for by, name in cluster.observed.blames)
        nursery.cancel_scope.cancel()
    cluster.close()


async def test_a_member_without_a_share_of_the_key_is_never_named_for_one_round_signing(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """A member a DKG left out (unreachable then) holds no share, yet answers lock requests with spare commitments:
    named in a one-round signer set, every such attempt failed ("no public share") and fell back to a session. Here
    the proposer's key lacks c3's share."""
    import dataclasses

    cluster = SimCluster(tmp_path, 4, seed=4, delay=(0.001, 0.01))
    cluster.seed_ledger()
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        c0 = cluster.service("c0")
        key = c0.keys.key
        assert key is not None
        without = {i: v for i, v in key.verifying_shares.items() if i != c0.identifier_of["c3"]}
        c0.keys.key = dataclasses.replace(key, verifying_shares=without)  # type: ignore[misc]
        for k in range(12):
            record = c0.submit(cluster.receipt(f"n{k % 6}", f"obj{k // 6}"))
            with trio.fail_after(30):
                while record.status != "final":
                    await record.changed.wait()
        assert c0.counters.batches == 12 and c0.counters.one_round >= 10 and c0.counters.sessions <= 2
        nursery.cancel_scope.cancel()
    cluster.close()


def test_a_member_left_out_of_the_key_serves_only_batches_signed_under_the_cluster_s_key() -> None:
    """A member a DKG left out holds no key, and served batches under any key as final, a liar's own included: it
    knows the cluster's key from the certificate (``left_out``), and serves only those."""
    from deploy.receipt_view import StateLedgerView
    from node.state import State
    from tests.test_snapshot_perf import GROUP, T0, receipt_events

    receipt, fields = numbered_receipt, signed_batch_fields

    state = State()
    state.apply_all(receipt_events(0, 0))
    ours, theirs, liar = receipt(1), receipt(2), nacl.signing.SigningKey(b"\x07" * 32)
    state.apply(ev.make_event(ev.RECEIPT_BATCH, (T0 + 10, 0), "c0", **fields([ours], GROUP)))
    state.apply(ev.make_event(ev.RECEIPT_BATCH, (T0 + 11, 0), "c6", **fields([theirs], liar)))
    keyless = type("Keys", (), {"key": None, "left_out": None, "group_keys": frozenset()})()
    assert {ours.id, theirs.id} <= set(StateLedgerView(lambda: state, None, keyless).signed_ids())  # type: ignore[arg-type]
    left_out = type("Keys", (), {"key": None, "left_out": {"group_public_key": bytes(GROUP.verify_key).hex()},
                                 "group_keys": frozenset({bytes(GROUP.verify_key)})})()
    # and a member whose key share was lost (no key, not left out) that kept the cluster's past keys (a review)
    lost = type("Keys", (), {"key": None, "left_out": None, "group_keys": frozenset({bytes(GROUP.verify_key)})})()
    for keys in (left_out, lost):
        view = StateLedgerView(lambda: state, None, keys)  # type: ignore[arg-type]
        assert ours.id in view.signed_ids() and theirs.id not in view.signed_ids()
        assert view.signed_document(ours.id) is not None and view.signed_document(theirs.id) is None


async def test_a_liar_s_batch_in_a_node_s_name_does_not_block_the_node_s_own_receipt(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """c3 publishes, under a group key of its own, a batch holding a receipt for n1's slot that it signed with a key of
    its own (no node signed it). Any batch's receipt counted as a signed rival: n1's real receipt for that slot was
    refused as a slot conflict on every member, for good (a reviewer's reproduction). A rival counts when the
    cluster signed it, or when the node itself did."""
    async with started(tmp_path, seed=1) as cluster:
        forged = rc.sign_as_node(nacl.signing.SigningKey(b"\x09" * 32), receipt_type="storage", node_id="n1",
                                 subject="obj1", epoch=EPOCH, usage_proof_hash="11" * 32, execution_commitment=None,
                                 reward_base=10**12, submitter_address="cd" * 20, timestamp=int(NOW))
        own = nacl.signing.SigningKey(b"\x07" * 32)  # a group key the liar made up
        group_key, raws = bytes(own.verify_key), [forged.to_bytes()]
        root = merkle.root(raws)
        await cluster.write("c3", ev.RECEIPT_BATCH, group_key=group_key.hex(), root=root.hex(), tree_size=1,
                            signature=own.sign(rc.batch_message(group_key, root, 1)).signature.hex(), signers="c3",
                            receipts=msgpack.packb([[raws[0], forged.node_signature]], use_bin_type=True))
        with trio.fail_after(60):  # (DA brings it to every member)
            while not all(forged.id in cluster.members[m].state.ledger.receipts for m in ("c0", "c1", "c2")):
                await trio.sleep(1)
        genuine = cluster.receipt("n1", "obj1")
        assert cluster.service("c1").validate(genuine)[0] is Verdict.OK
        cluster.service("c0").submit(genuine)
        await cluster.wait_final({genuine.id}, members={"c0", "c1", "c2"})
        # the node's own second receipt for that slot is still its conflict
        second = cluster.receipt("n1", "obj1", reward=77)
        record = cluster.service("c0").submit(second)
        assert record.status == "conflict" and record.conflicting_id == genuine.id
