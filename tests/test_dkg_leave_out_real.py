"""A member that never comes up is left out of the cluster's key by real coordinator processes (consensus.dkg_service
leave-out, tested on the simulated network in test_dkg_service.py): three of a four-member cluster, over real peer
links and real key stores, make a 3-of-3 key without it, and sign with it."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import nacl.signing
import trio

from deploy import cluster as launcher
from tests.test_cluster import sign_with_key_stores

DKG_TIMEOUT_MS = 1500  # left out after 10 × that unreached: 15 s


async def test_three_real_coordinators_make_a_key_without_a_fourth_that_never_came_up(tmp_path: Path) -> None:
    members = launcher.plan(4, launcher.free_base_port(4), tmp_path / "cluster", block_interval_ms=200)
    coords = [m for m in members if m.role == "coordinator"]
    for m in coords:
        m.env["DKG_TIMEOUT_MS"] = str(DKG_TIMEOUT_MS)
    absent = coords[0]  # the smallest id: the one that would start the DKG
    running = [m for m in members if m is not absent]
    try:
        async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=3) as http:
            started = trio.current_time()  # (before any starts: the leave-out's clock starts at a member's start)
            for m in running:
                await launcher._start(nursery, m)
            for m in running:
                await launcher._wait_ready(m, http)
            statuses: list[dict] = []
            with trio.fail_after(90):
                while True:
                    statuses = [(await http.get(f"{m.url}/cluster/status")).json() for m in running
                                if m.role == "coordinator"]
                    if all(s["dkg"]["state"] == "complete" for s in statuses):
                        break
                    await trio.sleep(0.5)
            took = trio.current_time() - started
            print(f"\nkey made without {absent.id} {took:.1f} s after the others were started")
            assert took >= 10 * DKG_TIMEOUT_MS / 1000 * 0.9  # not before the member counts as unreachable
            assert len({s["group_public_key"] for s in statuses}) == 1 and all(s["threshold"] == 3 for s in statuses)
            shares = [m for m in statuses[0]["members"] if m["verifying_share"]]
            assert sorted(m["id"] for m in shares) == sorted(m.id for m in running if m.role == "coordinator")
            # the three key stores sign together under the group key
            signature = sign_with_key_stores([Path(m.env["COORDINATOR_DATA_DIR"]) for m in running
                                              if m.role == "coordinator"], b"left out")
            nacl.signing.VerifyKey(bytes.fromhex(statuses[0]["group_public_key"])).verify(b"left out", signature)
            nursery.cancel_scope.cancel()
    finally:
        for m in running:
            if m.process is not None and m.process.returncode is None:
                m.process.send_signal(signal.SIGKILL)
