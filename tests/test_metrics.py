"""GET /metrics against real apps: the Prometheus text parses, the HTTP counters and histograms grow by exactly the
requests made (by route template and status), and the values read at scrape time are those of the JSON routes
(/state/root, /da/metrics, /cluster/status, /cluster/peers), for one coordinator, during a DA outage, and in a
cluster of three in-process coordinators (real peer links, DKG and receipt engines) that signs receipts."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import nacl.signing
import trio
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from consensus import receipts as rc
from consensus.dkg_service import DkgService
from deploy.adversary import make_byzantine
from deploy.coordinator import peer_manager, receipt_engine
from node import identity
from node.config import Config
from node.coordinator import Coordinator
from node.da.mock import MockDA
from tests.conftest import start, wait_for
from tests.proc import free_port

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(client: Any) -> Samples:
    resp = await client.get("/metrics")
    assert resp.status_code == 200
    assert resp.mimetype == "text/plain"
    out: Samples = {}
    for family in text_string_to_metric_families((await resp.get_data()).decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def labelled(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


async def get_json(client: Any, path: str) -> Any:
    resp = await client.get(path)
    assert resp.status_code == 200, (path, resp.status_code)
    return await resp.get_json()


async def test_request_counters_and_scrape_time_values_of_one_coordinator(client: Any, coord: Coordinator) -> None:
    before = await scrape(client)
    for _ in range(3):
        assert (await client.get("/nodes")).status_code == 200
    for i in range(2):
        resp = await client.post("/register", json={"id": f"n{i}", "zone": "z", "addr": "10.0.0.1:1"})
        assert resp.status_code == 200
    assert (await client.post("/register", json={"id": "", "zone": "z", "addr": "h:1"})).status_code == 422
    assert (await client.get("/node/n0")).status_code == 200
    assert (await client.get("/node/ghost")).status_code == 404
    assert (await client.get("/no/such/route")).status_code == 404
    assert (await client.delete("/nodes")).status_code == 405
    assert (await client.open("/nodes", method="BREW")).status_code == 405
    after = await scrape(client)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    requests = "dsdn_http_requests_total"
    assert grew(requests, method="GET", route="/nodes", status="200") == 3
    assert grew(requests, method="POST", route="/register", status="200") == 2
    assert grew(requests, method="POST", route="/register", status="422") == 1
    assert grew(requests, method="GET", route="/node/{node_id}", status="200") == 1  # the template, not the id
    assert grew(requests, method="GET", route="/node/{node_id}", status="404") == 1
    assert grew(requests, method="GET", route="unmatched", status="404") == 1
    assert grew(requests, method="DELETE", route="unmatched", status="405") == 1
    assert grew(requests, method="other", route="unmatched", status="405") == 1  # any token: one label value
    assert not any(("node_id", "n0") in labels or dict(labels).get("route") == "/node/n0"
                   for labels in labelled(after, requests))
    assert value(after, requests, method="GET", route="/metrics", status="200") == 1  # the first scrape
    histogram = "dsdn_http_request_duration_seconds"
    assert grew(f"{histogram}_count", method="GET", route="/nodes") == 3
    assert grew(f"{histogram}_count", method="POST", route="/register") == 3
    assert grew(f"{histogram}_bucket", method="GET", route="/nodes", le="+Inf") == 3
    assert grew(f"{histogram}_sum", method="GET", route="/nodes") > 0

    # scrape-time values are what the JSON routes say (nothing is written in between)
    await wait_for(lambda: coord.outbox.pending == 0, what="the writes to be published")
    posts = coord.da.primary.metrics.post_count  # one blob or two (the publisher batches)
    await wait_for(lambda: coord.consumers["primary"].cursor == posts, what="the consumer to read them back")
    root = await get_json(client, "/state/root")
    da = await get_json(client, "/da/metrics")
    now = await scrape(client)
    assert value(now, "dsdn_state_events_applied_total") == root["events_applied"] == 2
    assert value(now, "dsdn_outbox_pending_events") == root["pending"] == 0
    assert value(now, "dsdn_outbox_oldest_unpublished_age_seconds") == 0
    assert value(now, "dsdn_state_nodes") == 2
    assert value(now, "dsdn_da_posts_total", layer="primary") == da["layers"]["primary"]["post_count"] == posts
    assert value(now, "dsdn_da_errors_total", layer="primary") == da["layers"]["primary"]["error_count"] == 0
    # the app existed before the first post: the DA histogram saw every one
    assert value(now, "dsdn_da_operation_duration_seconds_count", layer="primary", operation="post") == posts >= 1
    assert value(now, "dsdn_da_reads_total", layer="primary") >= 1
    assert value(now, "dsdn_consumer_cursor", log="primary") == value(now, "dsdn_consumer_head", log="primary") == posts
    assert value(now, "dsdn_consumer_blobs_applied_total", log="primary") == posts
    assert labelled(now, "dsdn_da_status") == {frozenset({("status", s)}): float(s == "Healthy")
                                               for s in ("Healthy", "Warning", "Degraded", "Emergency", "Recovering")}
    assert value(now, "dsdn_da_layer_healthy", layer="primary") == 1
    assert value(now, "dsdn_ready") == 1
    assert value(now, "dsdn_build_info", version="0.1.0", coordinator_id="c0") == 1
    assert value(now, "dsdn_dkg_state", state="unavailable") == 1  # no cluster configured
    assert not labelled(now, "dsdn_peer_up") and not labelled(now, "dsdn_receipts_final_total")


async def test_a_request_an_earlier_check_refuses_is_timed_as_it_is_counted(client: Any) -> None:
    """The timer ran after the app's own before-request check: a request it refused (a parameter given twice, 422)
    was counted but never timed (a reviewer's reproduction)."""
    before = await scrape(client)
    for _ in range(5):
        assert (await client.get("/placement/abc?rf=3&rf=4")).status_code == 422
    after = await scrape(client)
    counted = (value(after, "dsdn_http_requests_total", method="GET", route="/placement/{key}", status="422")
               - value(before, "dsdn_http_requests_total", method="GET", route="/placement/{key}", status="422"))
    timed = (value(after, "dsdn_http_request_duration_seconds_count", method="GET", route="/placement/{key}")
             - value(before, "dsdn_http_request_duration_seconds_count", method="GET", route="/placement/{key}"))
    assert counted == timed == 5


async def test_a_da_outage_shows_in_errors_status_and_the_age_of_the_oldest_unpublished_event(
        nursery: trio.Nursery, make_config: Callable[..., Config]) -> None:
    mock = MockDA()
    coord = await start(nursery, make_config(DA_FAILURE_THRESHOLD="2"), mock)
    client = create_app(coord).test_client()
    mock.down = True
    written = time.time()
    assert (await client.post("/register", json={"id": "n1", "zone": "z", "addr": "h:1"})).status_code == 200
    await wait_for(lambda: not coord.da_view().takes_writes, what="the primary to be marked down")
    await trio.sleep(0.2)
    down = await scrape(client)
    root = await get_json(client, "/state/root")
    assert value(down, "dsdn_outbox_pending_events") == root["pending"] == 1
    age = value(down, "dsdn_outbox_oldest_unpublished_age_seconds")
    assert 0.2 <= age <= time.time() - written + 1.0
    assert value(down, "dsdn_da_errors_total", layer="primary") >= 2
    assert value(down, "dsdn_da_layer_healthy", layer="primary") == 0
    assert value(down, "dsdn_da_available") == 0 and value(down, "dsdn_ready") == 0
    assert sum(labelled(down, "dsdn_da_status").values()) == 1
    assert value(down, "dsdn_da_status", status="Healthy") == 0
    assert value(down, "dsdn_da_status_transitions_total") >= 1

    mock.down = False
    await wait_for(lambda: coord.outbox.pending == 0, timeout=10, what="the event to be published after the outage")
    up = await scrape(client)
    assert value(up, "dsdn_outbox_pending_events") == 0
    assert value(up, "dsdn_outbox_oldest_unpublished_age_seconds") == 0
    assert value(up, "dsdn_da_posts_total", layer="primary") == 1



async def test_a_client_that_is_a_layer_and_its_followed_log_counts_its_retries_once(
        nursery: trio.Nursery, make_config: Callable[..., Config]) -> None:
    """In production the Celestia primary is one client, wrapped as the primary layer and as its followed log
    (``node.da.factory``): /metrics summed its retries over both wrappers, twice what /da/metrics said."""
    class Retrying(MockDA):
        retries = 7

    layer = Retrying()
    coord = Coordinator(make_config(), layer, followed={"primary": layer})
    await nursery.start(coord.run)
    client = create_app(coord).test_client()
    assert coord.da.layers["primary"] is not coord.da.followed["primary"]  # two wrappers of one client
    samples = await scrape(client)
    assert value(samples, "dsdn_da_retries_total", layer="primary") == 7


# ---- a cluster of three coordinators in one process ----------------------------------------------------------

async def start_cluster(nursery: trio.Nursery, make_config: Callable[..., Config], n: int = 3,
                        liars: dict[int, str] | None = None) -> list[Any]:
    """n coordinators on one Mock DA, linked by real peer links, each with its DKG and receipt engine, as
    deploy/coordinator.py composes them (``liars``: member index -> a DSDN_BYZANTINE behaviour); returns their
    test clients."""
    cfgs = [make_config(f"c{i}") for i in range(n)]  # only for the data dirs: the keys must exist first
    keys = [identity.load_or_create(cfg.data_dir) for cfg in cfgs]
    spec = ",".join(f"c{i}={bytes(k.verify_key).hex()}@127.0.0.1:{free_port()}" for i, k in enumerate(keys))
    mock = MockDA()
    clients = []
    for i in range(n):
        cfg = make_config(f"c{i}", CLUSTER_PEERS=spec, PEER_HEARTBEAT_MS="200")
        coord = Coordinator(cfg, mock)
        peers = peer_manager(cfg, coord)
        assert peers is not None
        dkg = DkgService(peers, coord.key, {p.id: p.public_key for p in cfg.peers}, cfg.data_dir / "keyshare.bin",
                         passphrase=cfg.keystore_passphrase, threshold=cfg.dkg_threshold, auto=cfg.dkg_auto)
        receipts, _ = receipt_engine(cfg, coord, peers, dkg)
        if liars and i in liars:
            make_byzantine(receipts, liars[i])
        app = create_app(coord, None, peers, dkg, receipts)
        await nursery.start(coord.run)
        await nursery.start(peers.run)
        await nursery.start(dkg.run)
        await nursery.start(receipts.run)
        clients.append(app.test_client())
    return clients


async def until(what: str, check: Callable[[], Any], timeout: float = 30.0) -> None:
    with trio.move_on_after(timeout):
        while not await check():
            await trio.sleep(0.05)
        return
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def steady_status(client: Any) -> tuple[dict[str, Any], Samples]:
    """/cluster/status and a scrape taken while nothing changed in between (status read before and after)."""
    for _ in range(50):
        first = await get_json(client, "/cluster/status")
        samples = await scrape(client)
        if await get_json(client, "/cluster/status") == first:
            return first, samples
        await trio.sleep(0.1)
    raise AssertionError("/cluster/status never held still")


async def test_cluster_metrics_match_cluster_status_and_peers(
        nursery: trio.Nursery, make_config: Callable[..., Config]) -> None:
    c0, c1, c2 = clients = await start_cluster(nursery, make_config)

    async def keyed() -> bool:
        keys = {(await get_json(c, "/cluster/status"))["group_public_key"] for c in clients}
        return len(keys) == 1 and None not in keys

    await until("the DKG to give every coordinator the group key", keyed, 60)
    epoch = int(time.time() // 3600) + 1
    node_keys = {f"rn{i}": nacl.signing.SigningKey(bytes([i + 7]) * 32) for i in range(2)}
    for node, key in node_keys.items():
        resp = await c0.post("/register", json={"id": node, "zone": "z", "addr": "h:1",
                                               "public_key": bytes(key.verify_key).hex()})
        assert resp.status_code == 200
    for o in range(3):
        assert (await c0.post("/object/register", json={"hash": f"robj{o}", "size": 1})).status_code == 200
        for node in node_keys:
            resp = await c0.post("/replica/mark_healed", json={"hash": f"robj{o}", "node_id": node})
            assert resp.status_code == 200

    async def replicated() -> bool:
        return len({(await get_json(c, "/state/root"))["root"] for c in clients}) == 1

    await until("the ledger on every coordinator", replicated)

    def receipt(node: str, obj: int, proof: int, reward: int = 100, at_epoch: int = epoch) -> dict[str, Any]:
        return rc.sign_as_node(node_keys[node], receipt_type="storage", node_id=node, subject=f"robj{obj}",
                               epoch=at_epoch, usage_proof_hash=f"{proof:064x}", execution_commitment=None,
                               reward_base=reward, submitter_address="ab" * 20, timestamp=int(time.time())).to_json()

    finals = [receipt("rn0", 0, 1), receipt("rn1", 0, 2), receipt("rn0", 1, 3)]
    for body in finals:
        resp = await c0.post("/receipts", json=body, query_string={"wait_ms": "10000"})
        assert resp.status_code == 200, await resp.get_data()
    results: dict[int, int] = {}

    async def submit(k: int, body: dict[str, Any]) -> None:
        results[k] = (await c0.post("/receipts", json=body, query_string={"wait_ms": "10000"})).status_code

    async with trio.open_nursery() as batch:  # concurrent: they may share a batch
        for k, body in enumerate([receipt("rn1", 1, 4), receipt("rn0", 2, 5), receipt("rn1", 2, 6)]):
            batch.start_soon(submit, k, body)
    assert results == {0: 200, 1: 200, 2: 200}
    rival = await c0.post("/receipts", json=receipt("rn0", 0, 1, reward=7), query_string={"wait_ms": "10000"})
    assert rival.status_code == 409  # the slot of the first receipt
    late = await c0.post("/receipts", json=receipt("rn0", 0, 9, at_epoch=epoch + 5))
    assert late.status_code == 422  # an epoch outside the grace: rejected

    status, m = await steady_status(c0)
    r = status["receipts"]
    assert value(m, "dsdn_receipts_proposed_total") == r["proposed"] == 6  # the rival of a signed slot: refused
    assert value(m, "dsdn_receipts_final_total") == r["final"] == 6
    assert value(m, "dsdn_receipt_conflicts_total") == r["conflicts"] >= 1
    assert value(m, "dsdn_receipt_batches_total") == r["batches"]
    assert value(m, "dsdn_receipt_roast_sessions_total") == r["sessions"] >= 1
    assert value(m, "dsdn_receipt_one_round_batches_total") == r["one_round"]
    assert value(m, "dsdn_receipt_shares_released_total") == r["shares_released"]
    assert r["rejected"] and {k: v for k, v in r["rejected"].items()} == {
        dict(labels)["reason"]: v for labels, v in labelled(m, "dsdn_receipts_rejected_total").items()}
    assert {dict(labels)["status"]: v for labels, v in labelled(m, "dsdn_receipts_held").items()} == r["by_status"]
    assert value(m, "dsdn_receipt_locks") == r["lock_table"]["locks"]
    assert value(m, "dsdn_receipt_lock_table_broken") == 0
    # histograms observed as batches were signed here: every final receipt was in one of them
    assert value(m, "dsdn_receipt_batch_size_sum") == 6
    signed_batches = value(m, "dsdn_receipt_batch_size_count")
    assert 4 <= signed_batches <= 6 and signed_batches <= r["batches"]
    assert value(m, "dsdn_receipt_signing_duration_seconds_count") == signed_batches
    assert value(m, "dsdn_receipt_final_latency_seconds_count") == 6
    assert 0 < value(m, "dsdn_receipt_final_latency_seconds_sum") < 60
    # the DKG
    assert value(m, "dsdn_dkg_state", state="complete") == 1
    assert sum(labelled(m, "dsdn_dkg_state").values()) == 1
    assert value(m, "dsdn_dkg_threshold") == status["threshold"] == 3
    assert value(m, "dsdn_dkg_members") == 3 and value(m, "dsdn_dkg_group_key_present") == 1
    assert value(m, "dsdn_dkg_sessions_run_total") == status["dkg"]["sessions_run"]
    # a signer's view: it released the shares of every batch c0 signed (t = n = 3)
    s1 = (await get_json(c1, "/cluster/status"))["receipts"]
    m1 = await scrape(c1)
    assert value(m1, "dsdn_receipt_shares_released_total") == s1["shares_released"] >= signed_batches
    assert value(m1, "dsdn_receipts_proposed_total") == 0

    # peers: the counters only grow, so a scrape after /cluster/peers holds at least what it said
    links = await get_json(c0, "/cluster/peers")
    m = await scrape(c0)
    assert {dict(labels)["peer"] for labels in labelled(m, "dsdn_peer_up")} == {"c1", "c2"}
    for link in links:
        peer = link["id"]
        assert value(m, "dsdn_peer_up", peer=peer) == 1 and link["state"] == "up"
        assert value(m, "dsdn_peer_state", peer=peer, state="up") == 1
        assert value(m, "dsdn_peer_sent_bytes_total", peer=peer) >= link["bytes_out"] > 0
        assert value(m, "dsdn_peer_received_bytes_total", peer=peer) >= link["bytes_in"] > 0
        assert value(m, "dsdn_peer_sent_messages_total", peer=peer) >= link["messages_out"] > 0
        assert value(m, "dsdn_peer_frames_dropped_total", peer=peer) >= link["dropped"]
        assert value(m, "dsdn_peer_links_total", peer=peer) >= 1
        assert 0 < value(m, "dsdn_peer_rtt_seconds", peer=peer) < 5
    # every coordinator applied the same events (the receipt batches included), as /state/root says
    for client in clients:
        root = await get_json(client, "/state/root")
        assert value(await scrape(client), "dsdn_state_events_applied_total") >= root["events_applied"] > 0
    assert c2 is clients[2]


async def test_a_signer_sending_bad_shares_is_counted_by_name(
        nursery: trio.Nursery, make_config: Callable[..., Config]) -> None:
    """c2 sends wrong signature shares: the proposer names it, and /metrics counts it under its name as
    /cluster/status does (t = n = 3, so nothing gets signed while it lies)."""
    c0, c1, _ = clients = await start_cluster(nursery, make_config, liars={2: "bad_shares"})

    async def keyed() -> bool:
        keys = {(await get_json(c, "/cluster/status"))["group_public_key"] for c in clients}
        return len(keys) == 1 and None not in keys

    await until("the DKG to give every coordinator the group key", keyed, 60)
    key = nacl.signing.SigningKey(bytes([9]) * 32)
    assert (await c0.post("/register", json={"id": "bn", "zone": "z", "addr": "h:1",
                                             "public_key": bytes(key.verify_key).hex()})).status_code == 200

    async def replicated() -> bool:
        return len({(await get_json(c, "/state/root"))["root"] for c in clients}) == 1

    await until("the node on every coordinator", replicated)
    workload = "ab" * 32
    body = rc.sign_as_node(key, receipt_type="compute", node_id="bn", subject=workload,
                           epoch=int(time.time() // 3600) + 1, usage_proof_hash="cd" * 32,
                           execution_commitment=[workload, *(f"{k:064x}" for k in range(5))], reward_base=5,
                           submitter_address="ab" * 20, timestamp=int(time.time())).to_json()
    assert (await c0.post("/receipts", json=body)).status_code == 202

    async def blamed() -> bool:
        return bool((await get_json(c0, "/cluster/status"))["receipts"]["blamed"])

    await until("c0 to name the liar", blamed)
    status, m = await steady_status(c0)
    assert set(status["receipts"]["blamed"]) == {"c2"}
    assert {dict(labels)["signer"]: v for labels, v in labelled(m, "dsdn_receipt_blamed_signers_total").items()} \
        == status["receipts"]["blamed"]
    assert value(m, "dsdn_receipt_blamed_signers_total", signer="c2") >= 1
    assert value(await scrape(c1), "dsdn_receipt_blamed_signers_total", signer="c2") == 0  # c1 proposed nothing
