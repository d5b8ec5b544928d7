"""Receipt consensus across real processes (``dsdn cluster up -n 4``, t = 3): receipts submitted to different
coordinators are final and verify with nacl's VerifyKey(group key) plus the Merkle path; conflicting receipts
for one slot are never both signed; a coordinator killed with SIGKILL under load: every acknowledged receipt
ends final, no slot is signed twice, and the restarted coordinator keeps its locks."""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import nacl.signing
import pytest
import trio

from consensus import receipts as rc
from node import merkle
from tests.test_cluster import Cluster, free_base_port, until

NODES = 8
EPOCH = int(time.time() // 3600) + 1


@pytest.fixture
def cluster4(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path / "cluster", tmp_path / "cluster.log", n=4)
    c.start()
    yield c
    code = c.stop()
    for extra in c.extra:
        if extra.poll() is None:
            extra.terminate()
            extra.wait(20)
    assert code == 0, f"the cluster did not stop cleanly (exit {code}):\n{c.log()}"


def verify_like_a_third_party(doc: dict[str, Any], group_key: bytes) -> None:
    batch = doc["batch"]
    root, raw = bytes.fromhex(batch["root"]), bytes.fromhex(doc["receipt_bytes"])
    nacl.signing.VerifyKey(group_key).verify(rc.batch_message(group_key, root, batch["tree_size"]),
                                             bytes.fromhex(doc["signature"]))
    assert merkle.verify_inclusion(raw, batch["index"], batch["tree_size"], [bytes.fromhex(p) for p in batch["path"]],
                                   root)
    assert doc["receipt_id"] == rc.decode(raw).id.hex()


def make(keys: dict[str, nacl.signing.SigningKey], k: int, reward: int = 100) -> dict[str, Any]:
    node = f"rn{k % NODES}"
    return rc.sign_as_node(keys[node], receipt_type="storage", node_id=node, subject=f"robj{k // NODES}",
                           epoch=EPOCH, usage_proof_hash=f"{k:064x}", execution_commitment=None, reward_base=reward,
                           submitter_address="ab" * 20, timestamp=int(time.time())).to_json()


async def all_pages(http: httpx.AsyncClient, url: str) -> list[dict[str, Any]]:
    docs, after = [], None
    while True:
        params: dict[str, Any] = {"limit": 200, "status": "final", **({"after": after} if after else {})}
        page = (await http.get(f"{url}/receipts", params=params)).json()
        docs += page["receipts"]
        after = page["next_after"]
        if after is None:
            return docs


async def test_receipts_across_real_coordinators_with_a_kill_9(cluster4: Cluster, tmp_path: Path) -> None:
    cluster = cluster4
    await cluster.wait_up()
    urls = cluster.coordinators
    async with httpx.AsyncClient(timeout=40) as http:
        async def keyed() -> bool:
            keys = {(await http.get(f"{u}/cluster/status")).json()["group_public_key"] for u in urls}
            return len(keys) == 1 and None not in keys

        await until("the DKG to give every coordinator one group key", keyed, 60, cluster)
        group_key = bytes.fromhex((await http.get(f"{urls[0]}/cluster/status")).json()["group_public_key"])

        # the ledger: nodes with keys, objects each held by every node
        node_keys = {f"rn{i}": nacl.signing.SigningKey(bytes([i + 7]) * 32) for i in range(NODES)}
        for node, key in node_keys.items():
            r = await http.post(f"{urls[0]}/register", json={"id": node, "zone": "z", "addr": "h:1",
                                                               "public_key": bytes(key.verify_key).hex()})
            assert r.status_code == 200, r.text
        for o in range(17):  # receipts k use object robj{k // 8}: k < 136
            r = await http.post(f"{urls[0]}/object/register", json={"hash": f"robj{o}", "size": 1})
            assert r.status_code == 200
            for node in node_keys:
                r = await http.post(f"{urls[0]}/replica/mark_healed", json={"hash": f"robj{o}", "node_id": node})
                assert r.status_code == 200

        async def replicated() -> bool:
            roots = {(await http.get(f"{u}/state/root")).json()["root"] for u in urls}
            return len(roots) == 1

        await until("the ledger on every coordinator", replicated, 30, cluster)
        gone = (await http.get(f"{urls[1]}/node/rn3")).json()
        assert gone["public_key"] == bytes(node_keys["rn3"].verify_key).hex()

        # 1. receipts sent to every coordinator, one at a time then concurrently: final, verifiable
        latencies = []
        for k in range(8):
            t0 = time.perf_counter()
            r = await http.post(f"{urls[k % 4]}/receipts", params={"wait_ms": 10000}, json=make(node_keys, k))
            latencies.append(time.perf_counter() - t0)
            assert r.status_code == 200, r.text
            verify_like_a_third_party(r.json(), group_key)
        print(f"sequential receipt latency: p50 {statistics.median(latencies) * 1000:.1f} ms, "
              f"max {max(latencies) * 1000:.1f} ms")
        results: dict[int, httpx.Response] = {}

        async def submit(k: int) -> None:
            results[k] = await http.post(f"{urls[k % 4]}/receipts", params={"wait_ms": 10000},
                                         json=make(node_keys, k))

        async with trio.open_nursery() as nursery:
            for k in range(8, 40):
                nursery.start_soon(submit, k)
        assert all(r.status_code == 200 for r in results.values()), [r.text for r in results.values()][:3]
        for r in results.values():
            verify_like_a_third_party(r.json(), group_key)
        rid9 = results[9].json()["receipt_id"]

        async def final_on_c3() -> bool:  # a peer hears of a batch once it is durable at its proposer
            return (await http.get(f"{urls[3]}/receipts/{rid9}")).json().get("status") == "final"

        await until("a receipt signed elsewhere to be final on coordinator-3", final_on_c3, 10, cluster)
        doc = (await http.get(f"{urls[3]}/receipts/{rid9}")).json()
        check = await http.post(f"{urls[2]}/receipts/verify", json=doc)
        assert check.json() == {"valid": True, "reason": "valid"}

        # 2. two receipts for one slot sent to two coordinators at once: never both signed
        a, b = make(node_keys, 90, reward=1), make(node_keys, 90, reward=2)
        answers: dict[str, httpx.Response] = {}

        async def race(name: str, url: str, body: dict[str, Any]) -> None:
            answers[name] = await http.post(f"{url}/receipts", params={"wait_ms": 10000}, json=body)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(race, "a", urls[1], a)
            nursery.start_soon(race, "b", urls[3], b)
        codes = sorted(r.status_code for r in answers.values())
        assert codes in ([200, 409], [409, 409]), [r.text for r in answers.values()]
        for r in answers.values():
            if r.status_code == 409:
                body = r.json()
                assert body["error"] == "slot conflict" and body["conflicting_receipt_id"]

        # 2a. the answers are what /openapi.json says, body by body (its schemas were bare objects before)
        doc_api = (await http.get(f"{urls[0]}/openapi.json")).json()
        responses = doc_api["paths"]["/receipts"]["post"]["responses"]
        schema_of = {code: responses[code]["content"]["application/json"]["schema"] for code in ("202", "409")}
        assert {"receipt_id", "status"} <= set(schema_of["202"]["required"])
        assert {"receipt_id", "conflicting_receipt_id"} <= set(schema_of["409"]["required"])
        for r in [*answers.values(), results[9]]:
            jsonschema_rs.validate(responses[str(r.status_code)]["content"]["application/json"]["schema"], r.json())
        acked = await http.post(f"{urls[0]}/receipts", json=make(node_keys, 91))
        assert acked.status_code == 202
        jsonschema_rs.validate(responses["202"]["content"]["application/json"]["schema"], acked.json())
        got = doc_api["paths"]["/receipts/{receipt_id}"]["get"]["responses"]["200"]["content"]["application/json"]
        jsonschema_rs.validate(got["schema"], doc)

        # 2b. one bulk request: valid receipts final and verifiable, rivals within it never both signed, the
        # malformed and the badly signed ones named in their own entries
        bulk = [make(node_keys, k) for k in range(40, 80)]
        forged = {**make(node_keys, 80), "node_signature": "00" * 64}
        rivals = [make(node_keys, 96, reward=1), make(node_keys, 96, reward=2)]
        r = await http.post(f"{urls[2]}/receipts/batch", params={"wait_ms": 10000},
                            json={"receipts": [*bulk, forged, "not a receipt", {**bulk[0], "epoch": 0}, *rivals]})
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert len(results) == len(bulk) + 5
        for entry in results[:len(bulk)]:
            assert entry["status"] == "final", entry
            verify_like_a_third_party(entry["document"], group_key)
        assert results[len(bulk)]["status"] == "rejected" and "signature" in results[len(bulk)]["reason"]
        assert results[len(bulk) + 1]["status"] == "invalid" and results[len(bulk) + 2]["field"] == "epoch"
        assert sorted(e["status"] for e in results[-2:]) in (["conflict", "final"], ["conflict", "conflict"])
        r = await http.post(f"{urls[2]}/receipts/batch", json={"receipts": []})
        assert r.status_code == 422 and r.json()["field"] == "receipts"

        # 3. kill -9 a coordinator under load; acknowledged receipts all end final
        victim = cluster.process("coordinator-3")
        locks_before = (await http.get(f"{victim['url']}/cluster/status")).json()["receipts"]["lock_table"]["locks"]
        acknowledged: dict[str, str] = {}

        async def load(k: int) -> None:
            try:
                r = await http.post(f"{urls[k % 3]}/receipts", json=make(node_keys, k))
            except httpx.HTTPError:
                return
            if r.status_code in (200, 202):
                acknowledged[r.json()["receipt_id"]] = urls[k % 3]

        async with trio.open_nursery() as nursery:
            for k in range(100, 130):
                nursery.start_soon(load, k)
                if k == 110:
                    os.kill(victim["pid"], signal.SIGKILL)
                await trio.sleep(0.02)
        assert len(acknowledged) >= 25

        not_final: dict[str, Any] = {}

        async def all_final() -> bool:
            not_final.clear()
            for rid, url in acknowledged.items():
                doc = (await http.get(f"{url}/receipts/{rid}")).json()
                if doc.get("status") != "final":
                    not_final[rid] = (url, doc.get("status"), doc.get("reason"))
            return not not_final

        try:
            await until("every acknowledged receipt to be final without coordinator-3", all_final, 60)
        except AssertionError:
            statuses = [(await http.get(f"{u}/cluster/status")).json()["receipts"] for u in urls[:3]]
            raise AssertionError(f"not final: {list(not_final.values())[:5]}; engines: {statuses}") from None
        with open(tmp_path / "c3-restarted.log", "wb") as log:
            restarted = subprocess.Popen([sys.executable, "-m", "deploy.coordinator"],
                                         env={**os.environ, **victim["env"]}, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        cluster.extra.append(restarted)

        async def back() -> bool:
            try:
                status = (await http.get(f"{victim['url']}/cluster/status")).json()
            except httpx.TransportError:
                return False
            return status["receipts"] is not None and status["receipts"]["lock_table"]["locks"] is not None

        await until("coordinator-3 back", back, 30, cluster)
        status = (await http.get(f"{victim['url']}/cluster/status")).json()["receipts"]
        assert status["lock_table"]["broken"] is None and status["lock_table"]["locks"] >= locks_before > 0
        await until("equal roots on all four", replicated, 30, cluster)
        signed = await all_pages(http, victim["url"])
        slots = [(d["receipt"]["receipt_type"], d["receipt"]["node_id"], d["receipt"]["subject"], d["epoch"])
                 for d in signed]
        assert len(slots) == len(set(slots))  # no slot signed twice
        assert set(acknowledged) <= {d["receipt_id"] for d in signed}

        # 4. a coordinator outside the cluster, rebuilt from DA with an empty data dir, serves the receipts
        env = {**os.environ, **cluster.process("coordinator-2")["env"]}
        port = free_base_port(1)
        members = cluster.process("coordinator-0")["env"]["CLUSTER_PEERS"]
        env.update(COORDINATOR_ID="rebuilt", COORDINATOR_PORT=str(port), COORDINATOR_DATA_DIR=str(tmp_path / "rebuilt"),
                   QUORUM_VALIDATOR="false", CLUSTER_PEERS="", PEER_PORT="",
                   CLUSTER_MEMBER_KEYS=",".join(m.split("@")[0] for m in members.split(",")))
        with open(tmp_path / "rebuilt.log", "wb") as log:
            rebuilt = subprocess.Popen([sys.executable, "-m", "deploy.coordinator"], env=env, stdout=log,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        cluster.extra.append(rebuilt)
        url = f"http://127.0.0.1:{port}"
        some = sorted(acknowledged)[:5]

        async def serves() -> bool:
            try:
                docs = [(await http.get(f"{url}/receipts/{rid}")).json() for rid in some]
            except httpx.TransportError:
                return False
            return all(d.get("status") == "final" for d in docs)

        await until("the rebuilt coordinator to serve the signed receipts", serves, 60)
        for rid in some:
            verify_like_a_third_party((await http.get(f"{url}/receipts/{rid}")).json(), group_key)
        assert len(await all_pages(http, url)) == len(signed)
