"""The DKG driven over the simulated network: automatic start, one group key that signs, timeouts under a
partition and recovery after it heals, the key kept across a restart, races between two starts."""

from __future__ import annotations

import os
from pathlib import Path

import nacl.signing
import pytest
import trio
import trio.testing

from consensus import frost
from consensus.dkg import DkgError
from consensus.dkg_service import DkgService, register
from protocol.envelope import Registry
from protocol.simnet import SimNetwork

IDS = ["c0", "c1", "c2", "c3"]


def setup(tmp_path: Path, **net_options: object) -> tuple[SimNetwork, dict[str, DkgService]]:
    registry = Registry()
    register(registry)
    net = SimNetwork(registry, seed=7, **net_options)  # type: ignore[arg-type]
    keys = {i: nacl.signing.SigningKey.generate() for i in IDS}
    members = {i: bytes(k.verify_key) for i, k in keys.items()}
    services = {i: DkgService(net.add(i), keys[i], members, tmp_path / f"{i}.keyshare", timeout_s=5)
                for i in IDS}
    return net, services


def sign_with(shares: list[frost.KeyShare], message: bytes) -> bytes:
    nonces, commitments = {}, {}
    for s in shares:
        nonces[s.identifier], commitments[s.identifier] = frost.commit(s.secret_share)
    sig_shares = {s.identifier: frost.sign(s.identifier, s.secret_share, s.group_public_key, nonces[s.identifier],
                                           message, commitments) for s in shares}
    return frost.aggregate(commitments, message, shares[0].group_public_key, sig_shares)


async def test_auto_dkg_gives_one_group_key_that_signs(tmp_path: Path,
                                                       autojump_clock: trio.testing.MockClock) -> None:
    net, services = setup(tmp_path, delay=(0.001, 0.05), duplicate=0.1)
    async with trio.open_nursery() as nursery:
        await nursery.start(net.run)
        for s in services.values():
            await nursery.start(s.run)
        with trio.fail_after(60):
            while not all(s.key for s in services.values()) or not all(
                    (tmp_path / f"{i}.keyshare").exists() for i in IDS):
                await trio.sleep(0.1)
        group_keys = {s.key.group_public_key for s in services.values()}  # type: ignore[union-attr]
        assert len(group_keys) == 1
        shares = [s.key for s in services.values()]
        t = shares[0].threshold  # type: ignore[union-attr]
        assert t == 3  # floor(2n/3) + 1 for n = 4
        sig = sign_with(shares[:t], b"receipt")  # type: ignore[arg-type]
        nacl.signing.VerifyKey(group_keys.pop()).verify(b"receipt", sig)
        status = services["c2"].status()
        assert status["dkg"]["state"] == "complete" and status["threshold"] == 3
        assert all(m["verifying_share"] for m in status["members"]) and len(status["members"]) == 4
        with pytest.raises(DkgError, match="already has a key"):
            services["c1"].start()
        nursery.cancel_scope.cancel()
    # restart: the key comes back from the encrypted key store
    _, again = setup(tmp_path)
    again["c1"].identity = services["c1"].identity
    assert again["c1"]._load().group_public_key == services["c1"].key.group_public_key  # type: ignore[union-attr]


async def test_a_partition_times_the_session_out_then_it_completes(tmp_path: Path,
                                                                  autojump_clock: trio.testing.MockClock) -> None:
    net, services = setup(tmp_path, delay=(0.001, 0.01))
    net.partition({"c0", "c1", "c2"}, {"c3"})
    for s in services.values():
        s.auto = False
    async with trio.open_nursery() as nursery:
        await nursery.start(net.run)
        for s in services.values():
            await nursery.start(s.run)
        services["c0"].start()
        with trio.fail_after(30):
            while services["c0"].last_error is None:
                await trio.sleep(0.1)
        assert "timed out" in services["c0"].last_error and "c3" in services["c0"].last_error
        assert services["c0"].status()["dkg"]["state"] == "failed"
        net.heal()
        services["c0"].auto = True
        with trio.fail_after(60):
            while not all(s.key for s in services.values()):
                await trio.sleep(0.1)
        assert len({s.key.group_public_key for s in services.values()}) == 1  # type: ignore[union-attr]
        nursery.cancel_scope.cancel()


async def test_two_racing_starts_settle_on_one_session(tmp_path: Path,
                                                       autojump_clock: trio.testing.MockClock) -> None:
    net, services = setup(tmp_path, delay=(0.01, 0.2))
    for s in services.values():
        s.auto = False
    async with trio.open_nursery() as nursery:
        await nursery.start(net.run)
        for s in services.values():
            await nursery.start(s.run)
        a, b = services["c1"].start(), services["c3"].start()
        assert a != b
        with trio.fail_after(60):
            while not all(s.key for s in services.values()):
                await trio.sleep(0.1)
        assert len({s.key.group_public_key for s in services.values()}) == 1  # type: ignore[union-attr]
        nursery.cancel_scope.cancel()


def test_threshold_below_a_majority_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DkgError):
        DkgService(object(), nacl.signing.SigningKey(os.urandom(32)), {"a": b"1" * 32, "b": b"2" * 32,  # type: ignore[arg-type]
                                                                        "c": b"3" * 32, "d": b"4" * 32},
                   tmp_path / "k", threshold=2)
