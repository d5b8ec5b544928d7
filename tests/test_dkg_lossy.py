"""Issue 8 §2.2 over many seeds: four DKG services on a simulated network that loses, duplicates and delays
messages (MockClock, virtual time) all end with the same group key, stored in their key stores."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from consensus import keystore
from tests.test_dkg_service import IDS, one_group_key, setup, wait_until

SEEDS = range(60)
DROP = (0.1, 0.2, 0.3)


@pytest.mark.parametrize("seed", SEEDS)
async def test_every_member_ends_with_the_same_key_despite_losses(
        tmp_path: Path, autojump_clock: trio.testing.MockClock, seed: int) -> None:
    drop = DROP[seed % len(DROP)]
    net, services = setup(tmp_path, seed=seed, drop=drop, duplicate=0.1, delay=(0.001, 0.2))
    async with trio.open_nursery() as nursery:
        await nursery.start(net.run)
        for s in services.values():
            await nursery.start(s.run)
        await wait_until(lambda: all(s.key for s in services.values()), timeout=600)
        group_key = one_group_key(list(services.values()))
        nursery.cancel_scope.cancel()
    assert net.stats.dropped > 0 or drop < 0.2
    for i, s in services.items():
        assert keystore.load(tmp_path / f"{i}.keyshare", identity=s.identity).group_public_key == group_key
    assert {s.key.threshold for s in services.values()} == {3}  # type: ignore[union-attr]
    assert sorted(IDS) == sorted(services)
