"""The document and the server agree, body by body: a request body valid by the schema that /openapi.json
publishes is accepted by the route (never a 422), and one the schema refuses is refused (422). The cases
are the contract findings of issue 8 §6 and their neighbours; the schema is checked with jsonschema-rs
(ECMA 262 patterns, like any client generated from the document), the server through the ASGI app.
tests/test_contract_schemathesis.py fuzzes the same agreement over every route."""

from __future__ import annotations

from typing import Any

import jsonschema_rs
import pytest

NODE = {"id": "node-1", "zone": "zone-a", "addr": "10.0.0.1:50051"}

# (route, body, valid by the rules)
CASES: list[tuple[str, dict[str, Any], bool]] = [
    ("/object/register", {"hash": "", "size": 1}, False),
    ("/object/register", {"hash": "h", "size": 0}, True),
    ("/object/register", {"hash": "h" * 257, "size": 1}, False),
    ("/object/register", {"hash": "h\n", "size": 1}, False),
    ("/object/register", {"hash": "h", "size": 2**63}, False),
    ("/object/register", {"hash": "h", "size": 2.0}, True),  # JSON Schema: 2.0 is an integer
    ("/register", {**NODE, "zone": ""}, False),
    ("/register", {**NODE, "zone": "   "}, False),
    ("/register", {**NODE, "zone": "eu west 1"}, True),
    ("/register", {**NODE, "zone": "z" * 129}, False),
    ("/register", {**NODE, "zone": "\u00e9t\u00e9 \u6771\u4eac"}, True),
    ("/register", {**NODE, "zone": "tab\there"}, False),
    ("/register", {**NODE, "id": "a" * 128}, True),
    ("/register", {**NODE, "id": "n\n"}, False),
    ("/register", {**NODE, "addr": "[2001:db8::1]:443"}, True),
    ("/register", {**NODE, "addr": "[::ffff:10.0.0.1]:443"}, True),
    ("/register", {**NODE, "addr": "[1:2:3:4:5:6:7:8:9]:443"}, False),
    ("/register", {**NODE, "addr": "storage-3.example.org:65535"}, True),
    ("/register", {**NODE, "addr": "host:65536"}, False),
    ("/register", {**NODE, "addr": "host:0"}, False),
    ("/register", {**NODE, "addr": "-host:1"}, False),
    ("/register", {**NODE, "addr": "a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 62 + ":1"}, True),
    ("/register", {**NODE, "addr": "a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 63 + ":1"}, False),
    ("/register", {**NODE, "capacity_gb": None}, True),
    ("/register", {**NODE, "capacity_gb": 1.5}, False),
    ("/da/post", {"data_hex": ""}, False),
    ("/da/post", {"data_hex": "0"}, False),
    ("/da/post", {"data_hex": "0A"}, True),
    ("/da/post", {"data_hex": "00 11"}, False),
    ("/da/post", {"data_hex": "0x00"}, False),
    ("/schedule", {"max_latency_ms": 0}, False),
    ("/schedule", {"max_latency_ms": 5e-324}, True),
    ("/schedule", {"max_latency_ms": None, "cpu_req": None}, True),
    ("/schedule", {"io_tolerance": 1.01}, False),
    ("/schedule", {"ram_req_mb": 1e12}, True),
    ("/scheduler/config", {"w_io": None}, True),
    ("/scheduler/config", {"w_io": 0}, True),
    ("/scheduler/config", {"w_io": -1}, False),
    ("/scheduler/config", {"w_io": 1e9 + 1}, False),
    ("/scheduler/config", {"w_io": "1"}, False),
    ("/node/node-1/stats", {"cpu_free": 1, "ram_free_mb": 1, "latency_ms": 0}, False),
    ("/node/node-1/stats", {"cpu_free": 1, "ram_free_mb": 1, "latency_ms": None}, True),
    ("/node/node-1/stats", {"cpu_free": 1, "ram_free_mb": None}, False),
    ("/node/node-1/stats", {"cpu_free": 1e6, "ram_free_mb": 0, "gpu_free": 1e6, "io_pressure": 1}, True),
    ("/replica/mark_healed", {"hash": "h", "node_id": ""}, False),
    ("/replica/mark_healed", {"hash": "h", "node_id": "node-1"}, True),
    ("/cluster/dkg", {"threshold": 20.0}, True),
    ("/cluster/dkg", {"threshold": 0}, False),
    ("/cluster/dkg", {"threshold": None}, True),
    ("/cluster/dkg", {"threshold": 256}, False),
    ("/cluster/dkg", {"leave_out": ["c3"]}, True),
    ("/cluster/dkg", {"leave_out": None}, True),
    ("/cluster/dkg", {"leave_out": "c3"}, False),
    ("/cluster/dkg", {"leave_out": [3]}, False),
    ("/cluster/dkg", {"leave_out": ["member one"]}, False),  # (a member id: the schema said any string)
]


@pytest.fixture
async def contract(client: Any) -> tuple[Any, dict[str, Any]]:
    doc = (await client.get("/openapi.json"))
    assert (await client.post("/register", json=NODE)).status_code == 200
    assert (await client.post("/object/register", json={"hash": "h", "size": 1})).status_code == 200
    return client, await doc.get_json()


def request_schema(doc: dict[str, Any], route: str) -> dict[str, Any]:
    path = "/node/{node_id}/stats" if route.startswith("/node/") else route
    return doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]


@pytest.mark.parametrize(("route", "body", "valid"), CASES)
async def test_the_schema_and_the_route_agree(contract: tuple[Any, dict[str, Any]], route: str, body: dict[str, Any],
                                             valid: bool) -> None:
    client, doc = contract
    by_schema = jsonschema_rs.Draft202012Validator(request_schema(doc, route)).is_valid(body)
    resp = await client.post(route, json=body)
    answer = await resp.get_json()
    assert resp.status_code != 500, answer
    by_server = resp.status_code != 422
    assert (by_schema, by_server) == (valid, valid), (resp.status_code, answer)
    if not valid:
        assert answer["error"] == "invalid_request" and answer["field"] in body and answer["message"]
