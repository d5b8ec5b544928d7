"""HTTP contract of every endpoint (through the ASGI app): seed shapes, status codes, JSON errors."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import nacl.signing
import pytest
import trio
import trio.testing

from api.app import create_app
from api.openapi import ROUTES, openapi_path
from consensus import receipts as rc
from deploy.receipt_view import StateLedgerView
from node import events as ev
from node import merkle
from node.config import Config
from node.coordinator import Coordinator
from node.da.base import BlobRef
from node.da.mock import MockDA
from tests.conftest import start, wait_for

NODE = {"id": "node-1", "zone": "zone-a", "addr": "10.0.0.1:50051", "capacity_gb": 100}
STATS = {"cpu_free": 0.75, "ram_free_mb": 8192.0, "gpu_free": 0.5, "latency_ms": 5.0, "io_pressure": 0.1}


async def post(client: Any, path: str, body: Any, status: int = 200, **kw: Any) -> Any:
    resp = await client.post(path, json=body, **kw)
    assert resp.status_code == status, (path, body, resp.status_code, await resp.get_data())
    assert resp.mimetype == "application/json"
    return await resp.get_json()


async def get(client: Any, path: str, status: int = 200) -> Any:
    resp = await client.get(path)
    assert resp.status_code == status, (path, resp.status_code, await resp.get_data())
    assert resp.mimetype == "application/json"
    return await resp.get_json()


# ---- nodes -------------------------------------------------------------------------------------

async def test_register_list_and_get_nodes(client: Any) -> None:
    assert await get(client, "/nodes") == []
    assert await post(client, "/register", NODE) == {"ok": True}
    expected = {**NODE, "meta": {}}
    assert await get(client, "/nodes") == [expected]
    assert await get(client, "/node/node-1") == expected
    assert await post(client, "/register", {**NODE, "zone": "zone-b", "capacity_gb": None}) == {"ok": True}
    assert await get(client, "/node/node-1") == {**expected, "zone": "zone-b", "capacity_gb": 100}
    await post(client, "/register", {"id": "a:b.c_d-9", "zone": "z", "addr": "[::1]:1"})
    await post(client, "/register", {"id": "n3", "zone": "z", "addr": "storage-3.example.org:65535"})
    assert [n["id"] for n in await get(client, "/nodes")] == ["a:b.c_d-9", "n3", "node-1"]


def compute_receipt(key: nacl.signing.SigningKey) -> rc.Receipt:
    return rc.sign_as_node(key, receipt_type="compute", node_id="node-1", subject="ab" * 32, epoch=1,
                           usage_proof_hash="cd" * 32, execution_commitment=["ab" * 32] + ["ef" * 32] * 5,
                           reward_base=1, submitter_address="12" * 20, timestamp=1)


async def test_a_node_key_that_is_not_hex_reads_as_no_key(client: Any, coord: Coordinator) -> None:
    """The API writes only valid keys, but the log may carry any string from a faulty member: it reads as no key
    (GET /node leaves it out, the receipt engine's validation finds no key), never as a 500."""
    view = StateLedgerView(lambda: coord.state, None, None)  # type: ignore[arg-type]
    key = nacl.signing.SigningKey(b"k" * 32)
    await post(client, "/register", {**NODE, "public_key": bytes(key.verify_key).hex()})
    assert (await get(client, "/node/node-1"))["public_key"] == bytes(key.verify_key).hex()
    for junk in ("not-hex", "a b" * 21 + "c", "zz" * 32, "ab" * 31):
        assert coord.state.apply(ev.make_event(ev.NODE_KEY, (2**62, len(junk) + ord(junk[0])), "c9", id="node-1",
                                               public_key=junk))
        assert "public_key" not in await get(client, "/node/node-1")
        body = await post(client, "/receipts", compute_receipt(key).to_json(), 503)  # past the key: no receipt engine
        assert body["error"] == "no_cluster", body
        assert view.node_key("node-1") == (True, None)


async def test_without_a_group_key_a_document_is_not_called_valid(client: Any) -> None:
    """A coordinator with no group key cannot tell the cluster's signature from anyone's: a document signed with a
    key of the forger's own (carried in the document) gets a 503, not {"valid": true}."""
    node, forger = nacl.signing.SigningKey(b"n" * 32), nacl.signing.SigningKey(b"f" * 32)
    receipt = compute_receipt(node)
    group = bytes(forger.verify_key)
    leaf = receipt.to_bytes()
    root = merkle.root([leaf])
    signature = forger.sign(rc.batch_message(group, root, 1)).signature
    doc = rc.document(receipt, root, 1, 0, [], signature, group, ["c0"])
    assert rc.verify_document(doc) == (True, "valid")  # self-consistent: only a pinned key tells it apart
    body = await post(client, "/receipts/verify", doc, 503)
    assert body["error"] == "no_group_key" and "--group-key" in body["message"]


async def test_unknown_node_is_404_with_the_seed_body(client: Any) -> None:
    body = await get(client, "/node/ghost", 404)
    assert body["error"] == "node not found" and body["node_id"] == "ghost"


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"id": ""}, "id"), ({"id": "x" * 129}, "id"), ({"id": "has space"}, "id"), ({"id": "a/b"}, "id"),
        ({"id": 7}, "id"), ({"id": None}, "id"),
        ({"zone": ""}, "zone"), ({"zone": "   "}, "zone"), ({"zone": 3}, "zone"),
        ({"addr": "10.0.0.1"}, "addr"), ({"addr": "10.0.0.1:0"}, "addr"), ({"addr": "10.0.0.1:70000"}, "addr"),
        ({"addr": ":80"}, "addr"), ({"addr": "host:"}, "addr"), ({"addr": "bad host:80"}, "addr"),
        ({"addr": "[zz]:80"}, "addr"), ({"addr": 5}, "addr"),
        ({"capacity_gb": -1}, "capacity_gb"), ({"capacity_gb": 1.5}, "capacity_gb"),
        ({"capacity_gb": True}, "capacity_gb"), ({"capacity_gb": "100"}, "capacity_gb"),
        # found by fuzzing the contract: a trailing newline passed `$`, a lone surrogate or an address over an
        # event's 256 characters answered 500
        ({"id": "node-1\n"}, "id"), ({"zone": "\ud800"}, "zone"), ({"zone": " z"}, "zone"), ({"zone": "z\x1f"}, "zone"),
        ({"zone": "a\x85b"}, "zone"), ({"zone": "\x9fz"}, "zone"),
        ({"addr": "h" * 250 + ".io:80"}, "addr"), ({"addr": "[::1%eth0]:80"}, "addr"),
        ({"addr": "10.0.0.1:080\n"}, "addr"),
    ],
)
async def test_register_schema_violations_are_422(client: Any, patch: dict[str, Any], field: str) -> None:
    body = await post(client, "/register", {**NODE, **patch}, 422)
    assert body["error"] == "invalid_request" and body["field"] == field and field in body["message"]
    assert await get(client, "/nodes") == []


async def test_a_name_given_twice_in_one_object_is_malformed(client: Any) -> None:
    """The last value won, the first never checked: a capacity of -5 then 7 registered 7, and a proxy reading the
    first value saw another request (a reviewer's reproduction)."""
    resp = await client.post("/register", headers={"Content-Type": "application/json"},
                             data=b'{"id": "node-1", "zone": "z", "addr": "10.0.0.1:1", "capacity_gb": -5, '
                                  b'"capacity_gb": 7}')
    body = await resp.get_json()
    assert resp.status_code == 400 and body["error"] == "malformed_json" and "'capacity_gb'" in body["message"]
    resp = await client.post("/object/register", headers={"Content-Type": "application/json"},
                             data=b'{"hash": "abc", "size": 1, "meta": {"a": 1, "a": 2}}')
    assert resp.status_code == 400 and "'a'" in (await resp.get_json())["message"]
    assert await get(client, "/nodes") == []


async def test_bad_bodies(client: Any) -> None:
    resp = await client.post("/register", data=b"{not json", headers={"Content-Type": "application/json"})
    assert resp.status_code == 400 and (await resp.get_json())["error"] == "malformed_json"
    resp = await client.post("/register", data=b'{"id": NaN}', headers={"Content-Type": "application/json"})
    assert resp.status_code == 400
    resp = await client.post("/register", data=b"id=node-1", headers={"Content-Type": "text/plain"})
    assert resp.status_code == 415 and (await resp.get_json())["error"] == "unsupported_media_type"
    resp = await client.post("/register", data=b"{}")  # no content type at all
    assert resp.status_code == 415
    assert (await post(client, "/register", [NODE], 422))["field"] == "body"
    big = b'{"id": "' + b"x" * (1024 * 1024) + b'"}'
    resp = await client.post("/register", data=big, headers={"Content-Type": "application/json"})
    assert resp.status_code == 413 and (await resp.get_json())["error"] == "payload_too_large"


async def test_unknown_routes_and_methods_are_json(client: Any) -> None:
    body = await get(client, "/no/such/thing", 404)
    assert body["error"] == "not_found"
    resp = await client.delete("/nodes")
    assert resp.status_code == 405 and (await resp.get_json())["error"] == "method_not_allowed"
    # repeated slashes are no route either (werkzeug would answer a 308 redirect with an HTML body)
    for path in ("/system//info", "/node//node-1", "/nodes//"):
        assert (await get(client, path, 404))["error"] == "not_found"
    assert (await post(client, "/fallback//reconcile", {}, 404))["error"] == "not_found"


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("DELETE", "/nodes", "GET, HEAD, OPTIONS"), ("TRACE", "/register", "OPTIONS, POST"),
    ("PUT", "/node/n1/stats", "GET, HEAD, OPTIONS, POST"), ("PATCH", "/cluster/dkg", "OPTIONS, POST"),
    # a fixed route wins over /object/<obj>: the document lists POST only for /object/register
    ("DELETE", "/object/register", "OPTIONS, POST"), ("OPTIONS", "/object/register", "OPTIONS, POST"),
    ("OPTIONS", "/object/abc", "GET, HEAD, OPTIONS")])
async def test_405_and_options_name_the_allowed_methods(client: Any, method: str, path: str, allow: str) -> None:
    resp = await client.open(path, method=method)
    assert resp.status_code == (204 if method == "OPTIONS" else 405)
    assert resp.headers["Allow"] == allow
    if method == "OPTIONS":  # an empty answer, not an empty HTML page
        assert resp.mimetype == "text/plain" and await resp.get_data() == b""


# ---- stats and scheduling ------------------------------------------------------------------------

async def test_node_stats(client: Any) -> None:
    assert await get(client, "/node/node-1/stats") == {"node_id": "node-1", "found": False}
    body = await post(client, "/node/node-1/stats", STATS, 404)
    assert body == {"error": "node not found", "node_id": "node-1", "message": "no node 'node-1' is registered here"}
    assert (await post(client, "/node/bad%20id/stats", STATS, 422))["field"] == "node_id"  # as GET answers
    await post(client, "/register", NODE)
    assert await post(client, "/node/node-1/stats", STATS) == {"ok": True, "node_id": "node-1"}
    assert await get(client, "/node/node-1/stats") == {"node_id": "node-1", "found": True, "stats": STATS}
    await post(client, "/node/node-1/stats", {"cpu_free": 0.5, "ram_free_mb": 100})
    got = await get(client, "/node/node-1/stats")
    assert got["stats"] == {"cpu_free": 0.5, "ram_free_mb": 100.0, "gpu_free": 0.0, "latency_ms": 10.0,
                            "io_pressure": 0.0}


@pytest.mark.parametrize(
    "patch",
    [{"cpu_free": -0.1}, {"cpu_free": None}, {"ram_free_mb": "lots"}, {"latency_ms": 0}, {"io_pressure": 1.5},
     {"gpu_free": -1}, {"cpu_free": 1e300}],
)
async def test_stats_out_of_range_are_422(client: Any, patch: dict[str, Any]) -> None:
    await post(client, "/register", NODE)
    body = await post(client, "/node/node-1/stats", {**STATS, **patch}, 422)
    assert body["field"] == next(iter(patch))


async def test_overflowing_number_literal_is_422_not_a_crash(client: Any) -> None:
    await post(client, "/register", NODE)
    data = b'{"cpu_free": 1e309, "ram_free_mb": 1}'  # valid JSON text that parses to infinity
    resp = await client.post("/node/node-1/stats", data=data, headers={"Content-Type": "application/json"})
    assert resp.status_code == 422 and (await resp.get_json())["field"] == "cpu_free"


async def test_hostile_bodies_are_client_errors(client: Any) -> None:
    await post(client, "/register", NODE)
    deep = b"[" * 200_000 + b"]" * 200_000
    resp = await client.post("/register", data=deep, headers={"Content-Type": "application/json"})
    assert resp.status_code in (400, 413) and (await resp.get_json())["error"] in ("malformed_json",
                                                                                    "payload_too_large")
    deep = b"[" * 100_000 + b"]" * 100_000  # under the size limit: the nesting must be refused
    resp = await client.post("/schedule", data=deep, headers={"Content-Type": "application/json"})
    assert resp.status_code == 400
    huge = b'{"cpu_free": 1' + b"0" * 400 + b', "ram_free_mb": 1}'
    resp = await client.post("/node/node-1/stats", data=huge, headers={"Content-Type": "application/json"})
    assert resp.status_code == 422 and (await resp.get_json())["field"] == "cpu_free"
    resp = await client.post("/scheduler/config", data=b'{"w_io": 1' + b"0" * 400 + b"}",
                             headers={"Content-Type": "application/json"})
    assert resp.status_code == 422


async def test_schedule(client: Any) -> None:
    assert (await post(client, "/schedule", {}, 404))["error"] == "no suitable node"
    for i, (cpu, ram, io) in enumerate([(0.9, 1000, 0.9), (0.2, 64_000, 0.1), (0.5, 2000, 0.2)]):
        await post(client, "/register", {**NODE, "id": f"n{i}"})
        await post(client, f"/node/n{i}/stats", {"cpu_free": cpu, "ram_free_mb": ram, "io_pressure": io})
    await post(client, "/register", {**NODE, "id": "no-stats"})  # never reported: never chosen
    assert await post(client, "/schedule", {}) == {"node_id": "n1"}
    assert await post(client, "/schedule", {"cpu_req": 0.4, "ram_req_mb": None}) == {"node_id": "n2"}
    assert await post(client, "/schedule", {"cpu_req": 0.4, "io_tolerance": 0.15}, 404) == {
        "error": "no suitable node", "message": "no node with fresh stats fits the workload"}
    assert (await post(client, "/schedule", {"cpu_req": -1}, 422))["field"] == "cpu_req"
    assert (await post(client, "/schedule", {"max_latency_ms": "fast"}, 422))["field"] == "max_latency_ms"


async def test_scheduler_config(client: Any) -> None:
    body = await post(client, "/scheduler/config", {"w_cpu": 1.0, "w_ram": 1.5, "w_gpu": 0.5, "w_latency": 1.0,
                                                    "w_io": 0.8})
    assert body == {"ok": True, "message": "scheduler config updated",
                    "config": {"w_cpu": 1.0, "w_ram": 1.5, "w_gpu": 0.5, "w_latency": 1.0, "w_io": 0.8}}
    body = await post(client, "/scheduler/config", {"w_cpu": 3})
    assert body["config"] == {"w_cpu": 3.0, "w_ram": 0.001, "w_gpu": 2.0, "w_latency": 50.0, "w_io": 1.5}
    assert (await post(client, "/scheduler/config", {"w_io": -1}, 422))["field"] == "w_io"
    assert (await post(client, "/scheduler/config", {"w_cpu": "x"}, 422))["field"] == "w_cpu"
    # the weights change the choice: all on RAM picks the node with most RAM
    for i, (cpu, ram) in enumerate([(1.0, 10.0), (0.0, 20.0)]):
        await post(client, "/register", {**NODE, "id": f"n{i}"})
        await post(client, f"/node/n{i}/stats", {"cpu_free": cpu, "ram_free_mb": ram})
    await post(client, "/scheduler/config", {"w_cpu": 0, "w_ram": 1, "w_gpu": 0, "w_latency": 0, "w_io": 0})
    assert await post(client, "/schedule", {}) == {"node_id": "n1"}
    await post(client, "/scheduler/config", {"w_cpu": 100, "w_ram": 0, "w_gpu": 0, "w_latency": 0, "w_io": 0})
    assert await post(client, "/schedule", {}) == {"node_id": "n0"}


# ---- placement ---------------------------------------------------------------------------------

async def test_placement(client: Any) -> None:
    assert await get(client, "/placement/abc") == []
    for i in range(5):
        await post(client, "/register", {**NODE, "id": f"node-{i}", "zone": f"zone-{i % 3}"})
    three = await get(client, "/placement/abc123")
    assert len(three) == 3 and len(set(three)) == 3
    assert three == await get(client, "/placement/abc123?rf=3")
    assert len(await get(client, "/placement/abc123?rf=64")) == 5
    for bad in ("0", "65", "abc", "-1", "2.5", "3_0", "%203", "%D9%A3", "", "+3"):  # int() took 3_0, " 3", "٣", "+3"
        assert (await get(client, f"/placement/abc?rf={bad}", 422))["field"] == "rf"


# ---- objects and replicas ------------------------------------------------------------------------

async def test_objects_and_replicas(client: Any) -> None:
    assert await get(client, "/object/abc123", 404) == {"error": "not found", "hash": "abc123",
                                                       "message": "no object 'abc123' is registered here"}
    assert await post(client, "/object/register", {"hash": "abc123", "size": 1048576}) == {"ok": True}
    assert await get(client, "/object/abc123") == {"hash": "abc123", "size": 1048576, "replicas": []}
    await post(client, "/object/register", {"hash": "abc123", "size": 2048})  # updates the size
    assert (await get(client, "/object/abc123"))["size"] == 2048
    await post(client, "/register", NODE)
    await post(client, "/register", {**NODE, "id": "node-2"})
    assert await post(client, "/replica/mark_healed", {"hash": "abc123", "node_id": "node-2"}) == {"ok": True}
    await post(client, "/replica/mark_healed", {"hash": "abc123", "node_id": "node-1"})
    assert (await get(client, "/object/abc123"))["replicas"] == ["node-1", "node-2"]
    assert await post(client, "/replica/mark_missing", {"hash": "abc123", "node_id": "node-1"}) == {"ok": True}
    assert (await get(client, "/object/abc123"))["replicas"] == ["node-2"]


async def test_object_and_replica_errors(client: Any) -> None:
    assert (await post(client, "/object/register", {"hash": "h"}, 422))["field"] == "size"
    assert (await post(client, "/object/register", {"hash": "h", "size": -5}, 422))["field"] == "size"
    assert (await post(client, "/object/register", {"hash": "", "size": 1}, 422))["field"] == "hash"
    assert (await post(client, "/object/register", {"hash": "a b", "size": 1}, 422))["field"] == "hash"
    for route in ("/replica/mark_missing", "/replica/mark_healed"):
        body = await post(client, route, {"hash": "nope", "node_id": "node-1"}, 404)
        assert body["error"] == "not found" and body["hash"] == "nope"
        assert (await post(client, route, {"hash": "nope"}, 422))["field"] == "node_id"
    await post(client, "/object/register", {"hash": "h", "size": 1})
    body = await post(client, "/replica/mark_healed", {"hash": "h", "node_id": "ghost"}, 404)
    assert body["error"] == "node not found" and body["node_id"] == "ghost"
    assert (await get(client, "/object/h"))["replicas"] == []


# ---- DA, fallback, system ------------------------------------------------------------------------

async def test_da_post_and_metrics(client: Any) -> None:
    before = await get(client, "/da/metrics")
    body = await post(client, "/da/post", {"data_hex": "68656c6c6f20776f726c64"})
    assert body["success"] is True and body["commitment"] == hashlib.sha256(b"hello world").hexdigest()
    second = await post(client, "/da/post", {"data_hex": "00"})
    assert second["height"] == body["height"] + 1
    assert (await post(client, "/da/post", {"data_hex": ""}, 422))["field"] == "data_hex"
    after = await get(client, "/da/metrics")
    seed_fields = {"available", "post_count", "get_count", "error_count", "health_check_count", "retry_count",
                   "avg_post_latency_us", "avg_get_latency_us"}
    assert seed_fields <= set(after) and set(after["layers"]["primary"]) == seed_fields
    assert after["routing"] == "primary" and after["router"]["posts"]["primary"] >= 2
    assert after["available"] is True and after["post_count"] >= before["post_count"] + 2
    assert after["avg_post_latency_us"] > 0
    for bad_hex in ("abc", "zz", "00 11", "0x00", "00\n"):  # the usual 422 shape, like every schema violation
        bad = await post(client, "/da/post", {"data_hex": bad_hex}, 422)
        assert bad == {"error": "invalid_request", "field": "data_hex", "message": bad["message"]}
    assert (await post(client, "/da/post", {"data": "00"}, 422))["field"] == "data_hex"


async def test_da_post_when_da_is_down_is_503(nursery: trio.Nursery, make_config: Callable[..., Config]) -> None:
    da = MockDA()
    coord = await start(nursery, make_config(DA_FAILURE_THRESHOLD="1"), da)
    client = create_app(coord).test_client()
    da.down = True
    body = await post(client, "/da/post", {"data_hex": "00"}, 503)
    assert body["success"] is False and "down" in body["message"]
    # a health check already in flight when the outage began may still report success once
    await wait_for(lambda: not coord.da_view().takes_writes, what="the outage to be seen")
    health = await get(client, "/health")
    routing = await get(client, "/da/routing")
    info = await get(client, "/system/info")
    status = await get(client, "/fallback/status")
    assert health["status"] == "unavailable" and health["da_available"] is False
    assert routing["primary_healthy"] is False and info["da_status"] == health["da_health"] == "Ok(Unavailable)"
    assert status["current_status"] == "unavailable"
    assert (await get(client, "/ready", 503))["ready"] is False
    da.down = False
    await wait_for(lambda: coord.da_view().status.value == "Healthy", what="Degraded -> Recovering -> Healthy")
    assert (await get(client, "/health"))["status"] == "healthy (routing: primary)"
    assert (await get(client, "/fallback/status"))["last_fallback_at"] is not None


async def test_a_blob_the_layer_refuses_is_a_client_error_not_an_outage(
        nursery: trio.Nursery, make_config: Callable[..., Config]) -> None:
    from node.da.celestia import BlobTooLarge, InvalidBlob

    class Picky(MockDA):
        async def post(self, data: bytes) -> Any:
            if data == b"\x00":
                raise InvalidBlob("primary: the node refuses this blob")
            if data == b"\x01":
                raise BlobTooLarge("primary: blob too large for the node")
            return await super().post(data)

    coord = await start(nursery, make_config(DA_FAILURE_THRESHOLD="1"), Picky())
    client = create_app(coord).test_client()
    assert (await post(client, "/da/post", {"data_hex": "00"}, 422))["error"] == "blob refused"
    assert (await post(client, "/da/post", {"data_hex": "01"}, 413))["success"] is False
    assert coord.da_view().status.value == "Healthy"  # a bad blob is not a sick DA
    assert (await post(client, "/da/post", {"data_hex": "02"}))["success"] is True
    pending = await get(client, "/fallback/pending?limit=5")
    assert pending == []
    assert (await get(client, "/fallback/pending?limit=0", 422))["field"] == "limit"


async def test_routing_and_fallback_views(client: Any) -> None:
    assert await get(client, "/da/routing") == {
        "current_state": "primary", "primary_healthy": True, "secondary_healthy": False,
        "emergency_healthy": False, "fallback_active": False, "pending_reconcile": 0,
        "status": "Healthy", "write_order": ["primary"]}
    assert await get(client, "/fallback/status") == {
        "current_status": "primary_healthy", "fallback_active": False, "fallback_reason": None,
        "pending_reconcile_count": 0, "last_fallback_at": None, "status": "Healthy", "reconciling": False,
        "reconciliation": {"passes": 0, "total_reconciled": 0, "last_pass": None, "held_back": 0, "rejected": 0}}
    assert await get(client, "/fallback/pending") == []
    report = await post(client, "/fallback/reconcile", None)
    assert 0 <= report.pop("duration_ms") < 1000  # an empty pass still takes a moment
    assert report == {"success": True, "blobs_processed": 0, "blobs_reconciled": 0, "blobs_failed": 0,
                      "errors": []}
    progress = (await get(client, "/fallback/status"))["reconciliation"]
    assert progress["passes"] == 1 and progress["last_pass"]["success"] is True
    assert progress["last_pass"]["aborted"] is False and progress["last_pass"]["blobs_processed"] == 0


async def test_consistency_checks_published_blobs(client: Any, coord: Coordinator) -> None:
    await post(client, "/register", NODE)
    await wait_for(lambda: coord.outbox.pending == 0, what="publication")
    report = await get(client, "/fallback/consistency")
    assert report["is_consistent"] is True and report["items_verified"] >= 1
    assert report["inconsistencies_found"] == 0 and report["details"] == [] and report["verified_at"] > 0
    # make DA lose the blob: the report must say so
    coord.da.primary.inner._db.execute("UPDATE blobs SET data = x'00'")
    report = await get(client, "/fallback/consistency")
    assert report["is_consistent"] is False and report["inconsistencies_found"] >= 1
    assert "events missing" in report["details"][0]
    coord.da.primary.inner._db.execute("DELETE FROM blobs")
    report = await get(client, "/fallback/consistency")
    assert report["is_consistent"] is False and "not readable" in report["details"][0]
    # a primary that never answers: the check stops at its deadline and says what it left unchecked
    coord.da.reconciler.check_deadline_s = 0.3

    async def silent(ref: object) -> bytes:
        await trio.sleep_forever()
        raise AssertionError

    coord.da.router.get = silent  # type: ignore[method-assign]
    with trio.fail_after(5):
        report = await get(client, "/fallback/consistency")
    assert report["is_consistent"] is False and report["complete"] is False
    assert report["inconsistencies_found"] == 0  # unchecked is not found inconsistent (it is not consistent either)
    assert "stopped at its 0.3s deadline: 1 of 1 recent blobs unchecked" in report["details"][-1]


async def test_health_ready_info_and_state_root(client: Any, coord: Coordinator) -> None:
    await wait_for(lambda: coord.rebuilt, what="ready")
    health = await get(client, "/health")
    assert health["status"] == "healthy (routing: primary)" and health["da_available"] is True
    assert health["da_health"] == "Ok(Healthy)" and health["metrics"]["available"] is True
    assert await get(client, "/ready") == {"ready": True}
    await post(client, "/register", NODE)
    info = await get(client, "/system/info")
    assert info["version"] == "0.1.0" and info["node_count"] == 1 and info["da_status"] == "Ok(Healthy)"
    assert info["routing_state"] == "primary" and info["fallback_active"] is False
    root = await get(client, "/state/root")
    assert root == {"root": coord.state.root().hex(), "events_applied": 1, "pending": coord.outbox.pending}


async def test_ready_is_503_while_rebuilding(make_config: Callable[..., Config]) -> None:
    coord = Coordinator(make_config(), MockDA())  # not started: the consumer has not caught up
    client = create_app(coord).test_client()
    body = await get(client, "/ready", 503)
    assert body["ready"] is False and body["reason"].startswith("rebuilding state from DA")
    assert (await get(client, "/health"))["da_available"] is True  # /health is 200 while the process lives


# ---- auth and OpenAPI ----------------------------------------------------------------------------

async def test_token_guards_mutating_routes(nursery: trio.Nursery, make_config: Callable[..., Config]) -> None:
    coord = await start(nursery, make_config(COORDINATOR_API_TOKEN="s3cret"))
    client = create_app(coord).test_client()
    doc = await get(client, "/openapi.json")
    guarded = [(m, p) for p, ops in doc["paths"].items() for m, op in ops.items() if {"bearer": []} in
               op.get("security", [])]  # the document says which routes take the token
    assert ("post", "/register") in guarded and ("post", "/cluster/dkg") in guarded
    assert all(m == "post" for m, _ in guarded) and ("post", "/schedule") not in guarded
    for _, path in guarded:
        resp = await client.post(path.replace("{node_id}", "node-1"), json={})
        assert resp.status_code == 401, path
        assert resp.headers["WWW-Authenticate"] == "Bearer"
        assert (await resp.get_json())["error"] == "unauthorized"
    resp = await client.post("/register", json=NODE, headers={"Authorization": "Bearer wrong"})
    assert resp.status_code == 401
    for wrong in ("Bearer s3cret2", "Bearer s3cre", "Basic s3cret", "Bearers3cret", "s3cret", "Bearer  s3cret x"):
        assert (await client.post("/register", json=NODE, headers={"Authorization": wrong})).status_code == 401
    assert await post(client, "/register", NODE, headers={"Authorization": "Bearer s3cret"}) == {"ok": True}
    # the scheme name is case-insensitive (RFC 9110 §11.1), and one or more spaces may follow it
    for right in ("bearer s3cret", "BEARER s3cret", "Bearer   s3cret"):
        assert await post(client, "/register", NODE, headers={"Authorization": right}) == {"ok": True}
    assert len(await get(client, "/nodes")) == 1  # reads need no token
    assert (await post(client, "/schedule", {}, 404))["error"] == "no suitable node"


async def test_a_browser_write_for_another_origin_is_refused(nursery: trio.Nursery,
                                                             make_config: Callable[..., Config]) -> None:
    """Without a token, any web page could start a DKG on a coordinator: a POST without a body needs no CORS
    preflight (a reviewer's reproduction in Chromium). A write carrying another origin's Origin is refused, with
    or without a token; clients that send no Origin (CLI, SDKs), or this server's own origin, are not."""
    coord = await start(nursery, make_config())
    client = create_app(coord).test_client()
    doc = await get(client, "/openapi.json")
    guarded = [p for p, ops in doc["paths"].items() for m, op in ops.items() if {"bearer": []} in
               op.get("security", [])]
    evil = {"Origin": "http://evil.example"}
    for path in guarded:
        resp = await client.post(path.replace("{node_id}", "node-1"), headers=evil)
        assert resp.status_code == 403 and (await resp.get_json())["error"] == "forbidden", path
        assert "403" in doc["paths"][path]["post"]["responses"]
    assert await post(client, "/register", NODE) == {"ok": True}
    for own in ("http://localhost", "https://localhost", "http://localhost:80"):  # the test client's own host,
        #                       a proxy in front (TLS ended there), a default port spelled out (a reviewer's find)
        assert await post(client, "/register", NODE, headers={"Origin": own}) == {"ok": True}
    on_8080 = {"Host": "localhost:8080"}
    assert await post(client, "/register", NODE, headers={**on_8080, "Origin": "http://localhost:8080"}) == {"ok": True}
    for other in ("http://localhost:3000", "null", "http://localhost:xx"):  # another service on this host, ...
        resp = await client.post("/register", json=NODE, headers={**on_8080, "Origin": other})
        assert resp.status_code == 403, other
    assert (await client.post("/schedule", json={}, headers=evil)).status_code == 404  # not a guarded write


async def test_openapi_documents_every_route(client: Any) -> None:
    doc = await get(client, "/openapi.json")
    assert doc["openapi"].startswith("3.")
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert documented == {(m, openapi_path(r)) for m, r, *_ in ROUTES}
    assert len(documented) >= 27  # the seed's 22 plus /state/root, /cluster/{peers,status,dkg}, /openapi.json
    assert doc["paths"]["/register"]["post"]["requestBody"]["content"]["application/json"]["schema"]["required"] == [
        "id", "zone", "addr"]
    # the node's key, which /register checks and /node returns, is documented on both (a reviewer's finding)
    register = doc["paths"]["/register"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    node = doc["paths"]["/node/{node_id}"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert register["properties"]["public_key"]["pattern"] == node["properties"]["public_key"]["pattern"]
    pending = doc["paths"]["/fallback/pending"]["get"]["parameters"]
    assert {p["name"] for p in pending} == {"limit", "after"}


async def test_cluster_status_without_a_cluster_has_the_shape_of_a_member(client: Any, tmp_path: Any) -> None:
    from types import SimpleNamespace

    import nacl.signing

    from consensus.dkg_service import DkgService

    body = await get(client, "/cluster/status")
    assert body["dkg"]["state"] == "unavailable" and body["receipts"] is None and body["group_public_key"] is None
    keys = {m: nacl.signing.SigningKey.generate() for m in ("a", "b", "c")}
    net = SimpleNamespace(my_id="a")  # only the member's status() is read: no network runs
    member = DkgService(net, keys["a"], {m: bytes(k.verify_key) for m, k in keys.items()},  # type: ignore[arg-type]
                        tmp_path / "keyshare.bin")
    assert set(body) == set(member.status()) | {"receipts"}
    assert set(body["dkg"]) == set(member.status()["dkg"])


async def test_pending_blobs_page_past_any_limit_with_after(nursery: trio.Nursery,
                                                            make_config: Callable[..., Config]) -> None:
    """/fallback/pending stopped at 1,000 blobs with no way to read the rest (a reviewer's finding): ``after`` (the
    previous page's last blob_id) pages on, in the order of the unpaged list, even past a blob reconciled
    meanwhile; a blob_id the store does not know is a 404. (No reconciliation pass meanwhile: one would move the
    blobs under the test; the start-up health check, slow under load, still started one after they were recorded.)"""
    coord = await start(nursery, make_config(DA_HEALTH_INTERVAL_MS="600000"))
    coord.da._should_reconcile = lambda: False  # type: ignore[method-assign]
    client = create_app(coord).test_client()
    ids = [await coord.da.pending.record(BlobRef("secondary", i, bytes([i])), f"blob {i}".encode()) for i in range(7)]
    whole = await get(client, "/fallback/pending")
    assert [p["blob_id"] for p in whole] == ids
    pages: list[list[str]] = []
    after = ""
    while page := await get(client, "/fallback/pending?limit=3" + (f"&after={after}" if after else "")):
        pages.append([p["blob_id"] for p in page])
        after = page[-1]["blob_id"]
        if len(pages) == 1:  # the last blob of this page is reconciled before the next page is read
            await coord.da.pending.mark_reconciled(after, BlobRef("primary", 1, b"c"))
    assert pages == [ids[:3], ids[3:6], ids[6:]]
    # a full page names the next one (the seed's bare array cannot: a client read the first 1,000 and no more)
    resp = await client.get("/fallback/pending?limit=2")
    assert resp.headers["Link"] == f'</fallback/pending?after={ids[1]}&limit=2>; rel="next"'
    assert "Link" not in (await client.get("/fallback/pending?limit=1000")).headers
    body = await get(client, "/fallback/pending?after=" + "00" * 32, 404)
    assert body["after"] == "00" * 32 and "start again" in body["message"]


async def test_parameters_a_route_does_not_read_are_ignored_even_twice(
        nursery: trio.Nursery, make_config: Callable[..., Config]) -> None:
    """Every repeated parameter was a 422 on every path (a reviewer's finding): ``/health?_=1&_=2`` failed a health
    check, an unknown path said 422 instead of 404, a request without its token 422 instead of 401."""
    coord = await start(nursery, make_config(COORDINATOR_API_TOKEN="s3cret"))
    client = create_app(coord).test_client()
    assert (await get(client, "/health?_=1&_=2"))["status"].startswith("healthy")
    assert (await get(client, "/no-such-route?a=1&a=2", 404))["error"] == "not_found"
    assert (await post(client, "/register?a=1&a=2", NODE, 401))["error"] == "unauthorized"
    assert "more than once" in (await get(client, "/fallback/pending?limit=1&limit=2", 422))["message"]
    # a write's token (and origin) come first: a caller without one learnt which parameters count (a reviewer's find)
    assert (await post(client, "/receipts?wait_ms=1&wait_ms=2", {}, 401))["error"] == "unauthorized"
    resp = await client.post("/receipts?wait_ms=1&wait_ms=2", json={}, headers={"Origin": "http://elsewhere.example"})
    assert resp.status_code == 403
    resp = await client.post("/receipts?wait_ms=1&wait_ms=2", json={}, headers={"Authorization": "Bearer s3cret"})
    assert resp.status_code == 422 and (await resp.get_json())["field"] == "wait_ms"


async def test_a_huge_integer_is_out_of_range_not_malformed_json(client: Any) -> None:
    """An integer of more than 4,300 digits is valid JSON; Python's digit limit answered 400 "malformed JSON" with
    a message about sys.set_int_max_str_digits (a reviewer's finding)."""
    for digits in ("1" + "0" * 4300, "-" + "9" * 5000):
        data = f'{{"id": "n1", "zone": "z", "addr": "h:1", "capacity_gb": {digits}}}'
        resp = await client.post("/register", data=data, headers={"Content-Type": "application/json"})
        body = await resp.get_json()
        assert resp.status_code == 422 and body["field"] == "capacity_gb", body
        assert "int_max_str_digits" not in json.dumps(body)
    assert (await post(client, "/register", {**NODE, "capacity_gb": 10**30}, 422))["field"] == "capacity_gb"
    await post(client, "/register", {**NODE, "capacity_gb": 2**63 - 1})


async def test_a_replica_of_a_node_never_seen_cannot_be_marked_missing(client: Any) -> None:
    """mark_missing took any node id and published an event about it (mark_healed already said 404): a node
    never registered and holding no replica register of the object is a 404."""
    await post(client, "/object/register", {"hash": "h", "size": 1})
    body = await post(client, "/replica/mark_missing", {"hash": "h", "node_id": "never-registered"}, 404)
    assert body["error"] == "node not found"
    await post(client, "/register", NODE)
    await post(client, "/replica/mark_healed", {"hash": "h", "node_id": "node-1"})
    assert await post(client, "/replica/mark_missing", {"hash": "h", "node_id": "node-1"}) == {"ok": True}
    assert (await get(client, "/object/h"))["replicas"] == []


async def test_a_parameter_given_twice_and_a_body_not_in_utf8_are_refused(client: Any) -> None:
    """Only the first value of a repeated parameter was checked and used (``?rf=3&rf=abc`` answered 200), the declared
    charset was ignored, and a UTF-16 body was accepted (json.loads of bytes guesses the encoding; a reviewer's
    findings). A UTF-8 byte-order mark stays accepted."""
    for path in ("/placement/abc?rf=3&rf=abc", "/placement/abc?rf=3&rf=3", "/fallback/pending?limit=1&limit=2"):
        body = await get(client, path, 422)
        assert body["error"] == "invalid_request" and "more than once" in body["message"], path
    assert len(await get(client, "/placement/abc?rf=3")) == 0  # (one value: fine; no nodes yet)
    raw = json.dumps(NODE)
    for content, content_type in ((raw.encode("latin-1"), "application/json; charset=latin-1"),
                                  (raw.encode("utf-16"), "application/json")):
        resp = await client.post("/register", data=content, headers={"Content-Type": content_type})
        assert resp.status_code in (400, 415), content_type
    resp = await client.post("/register", data=b"\xef\xbb\xbf" + raw.encode(),
                             headers={"Content-Type": "application/json; charset=UTF-8"})
    assert resp.status_code == 200


async def test_ids_of_dots_alone_are_refused(client: Any) -> None:
    """A node or object named "." or ".." was registered, but HTTP clients (httpx, browsers, curl) turn
    /node/.. into / and could never fetch it (a reviewer's reproduction). Dots among other characters stay fine."""
    for bad in (".", ".."):
        assert (await post(client, "/register", {**NODE, "id": bad}, 422))["field"] == "id"
        assert (await post(client, "/object/register", {"hash": bad, "size": 1}, 422))["field"] == "hash"
    await post(client, "/register", {**NODE, "id": "..."})
    await post(client, "/object/register", {"hash": "a.b", "size": 1})
    assert (await get(client, "/node/..."))["id"] == "..."


async def test_concurrent_consistency_checks_share_one(coord: Coordinator) -> None:
    """Callers arriving while a check runs get its report; a check cancelled with its caller is not waited on for
    ever: the next caller runs its own."""
    calls = 0
    release = trio.Event()
    real = coord.da.reconciler.consistency

    async def slow_check() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        await release.wait()
        return await real()

    coord.da.reconciler.consistency = slow_check  # type: ignore[method-assign]
    reports: list[dict[str, Any]] = []

    async def ask() -> None:
        reports.append(await coord.consistency())

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(ask)
            await trio.testing.wait_all_tasks_blocked()
            release.set()
    assert calls == 1 and len(reports) == 20 and all(r is reports[0] for r in reports)
    assert reports[0]["is_consistent"] is True
    # the leader cancelled mid-check: the waiter runs a check of its own and gets a report
    release = trio.Event()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            leader = trio.CancelScope()

            async def cancelled_leader() -> None:
                with leader:
                    await coord.consistency()

            nursery.start_soon(cancelled_leader)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(ask)
            await trio.testing.wait_all_tasks_blocked()
            leader.cancel()
            await trio.testing.wait_all_tasks_blocked()
            release.set()
    assert calls == 3 and len(reports) == 21 and reports[-1]["is_consistent"] is True


async def test_a_write_to_a_register_held_by_a_write_from_far_in_the_future_is_a_409(
        nursery: trio.Nursery, make_config: Callable[..., Config]) -> None:
    """A member's write stamped years ahead (a broken clock or a liar) holds n1: a local write of n1 would be
    ignored (last writer wins), so it is refused with a 409 that says why, not acknowledged with a 200."""
    from node.blob import encode_blob

    da, member = MockDA(), nacl.signing.SigningKey.generate()
    future = ev.make_event(ev.NODE_REGISTERED, (ev.MAX_U63, 0), "m", id="n1", zone="zone-m", addr="1.2.3.4:5",
                           capacity_gb=1)
    await da.post(encode_blob(member, "m", [future.raw]))
    coord = await start(nursery, make_config(CLUSTER_MEMBER_KEYS=bytes(member.verify_key).hex()), da)
    await wait_for(lambda: coord.state.node("n1") is not None, what="the member's write")
    client = create_app(coord).test_client()
    body = await post(client, "/register", {"id": "n1", "zone": "zone-local", "addr": "1.1.1.1:1"}, 409)
    assert body["error"] == "clock_conflict" and "'m'" in body["message"] and "ahead" in body["message"]
    assert (await get(client, "/node/n1"))["zone"] == "zone-m"
    await post(client, "/register", {"id": "n2", "zone": "zone-local", "addr": "1.1.1.1:1"})  # other registers: fine


async def test_the_dashboard_is_served_with_or_without_a_trailing_slash(client: Any) -> None:
    """``/dashboard/`` (typed with a slash) was a 404: a fresh user's run. The page's links are absolute."""
    plain, slashed = await client.get("/dashboard"), await client.get("/dashboard/")
    assert plain.status_code == slashed.status_code == 200
    assert await plain.get_data() == await slashed.get_data() and b"/dashboard/dashboard.js" in await plain.get_data()
    assert slashed.headers["Content-Security-Policy"] == plain.headers["Content-Security-Policy"]
