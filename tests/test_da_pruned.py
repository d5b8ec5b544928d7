"""A pruned Celestia node (issue 8 §4.1): a height it no longer has answers ``header: not found``. A coordinator
whose history starts there must not skip it as an empty height and report ready without its events: its primary
cursor stays, /ready is 503 and says why, and once the height can be read the events are applied. Real devnet
(its socket, its pruning), coordinators in process."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import httpx
import trio

from api.app import create_app
from deploy.devnet import serve_devnet
from node.config import Config
from node.coordinator import Coordinator
from node.da.celestia import CelestiaDA
from node.da.namespace import namespace_from_name
from node.da.status import PRIMARY, Status
from tests.conftest import wait_for

NS = namespace_from_name("dsdn-pruned")
TOKEN = "pruned-devnet"


def celestia_env(url: str, **extra: str) -> dict[str, str]:
    return {"USE_MOCK_DA": "false", "DA_RPC_URL": url, "DA_AUTH_TOKEN": TOKEN, "DA_NAMESPACE": NS.hex(),
            "DA_TIMEOUT_MS": "2000", "DA_RETRY_COUNT": "0", "DA_HEALTH_INTERVAL_MS": "100", **extra}


async def prune(url: str, below: int) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=5, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        assert (await http.post("/admin/prune", json={"below": below})).status_code == 200


async def test_a_pruned_height_keeps_the_cursor_and_ready_says_why(make_config: Callable[..., Config],
                                                                    nursery: trio.Nursery) -> None:
    url: str = await nursery.start(partial(serve_devnet, "127.0.0.1", 0, ":memory:", 0.05, TOKEN))
    cfg_a = make_config("a", **celestia_env(url))
    a = Coordinator(cfg_a, CelestiaDA.from_config(cfg_a))
    async with trio.open_nursery() as inner:
        await inner.start(a.run)
        await a.register_node("from-history", "z", "10.0.0.1:1", 1)
        await wait_for(lambda: a.outbox.pending == 0, what="A's event on the devnet")
        [landed] = await a.outbox.recently_landed(1)
        inner.cancel_scope.cancel()
    history = landed.ref.height
    await prune(url, history + 1)  # the node no longer has the height where the cluster's history begins

    cfg_b = make_config("b", **celestia_env(url, CLUSTER_MEMBER_KEYS=a.public_key.hex(), DA_START_HEIGHT="1"))
    primary = CelestiaDA.from_config(cfg_b)
    b = Coordinator(cfg_b, primary)
    client: Any = create_app(b).test_client()
    async with trio.open_nursery() as inner:
        await inner.start(b.run)
        await wait_for(lambda: PRIMARY in b.da.read_problems(), what="B's primary read to fail")
        await trio.sleep(0.5)  # several more polls: the cursor must not move past the pruned heights
        assert b.consumers[PRIMARY].cursor == 0 and b.state.node("from-history") is None
        response = await client.get("/ready")
        body = await response.get_json()
        assert response.status_code == 503, body
        assert "header: not found" in body["reason"] and body["reason"].startswith("rebuilding state from DA")
        assert f"{PRIMARY} log: reading after 0 failed" in body["reason"]
        assert "header: not found" in b.da.read_problems()[PRIMARY]
        # the node answered (an error, not an outage): the primary still takes writes, no flapping to Warning
        assert b.da_view().status is Status.HEALTHY and b.da.machine.transitions == 0

        await prune(url, 0)  # e.g. an archive node behind the same URL: the history is read, nothing was skipped
        await wait_for(lambda: b.rebuilt, what="B to rebuild once the heights can be read")
        assert b.state.node("from-history") is not None and b.consumers[PRIMARY].cursor >= history
        response = await client.get("/ready")
        assert response.status_code == 200 and b.da.read_problems() == {}
        inner.cancel_scope.cancel()
    await primary.aclose()
    await a.da.primary.inner.aclose()  # type: ignore[attr-defined]
