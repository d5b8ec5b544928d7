"""Shared fixtures: configs in temp dirs, coordinators running in the test's nursery, HTTP clients."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from api.app import create_app
from node import config as config_mod
from node import events as ev
from node.coordinator import Coordinator
from node.da.mock import MockDA
from node.outbox import _SCHEMA


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., config_mod.Config]:
    def make(name: str = "c0", **env: str) -> config_mod.Config:
        base = {"USE_MOCK_DA": "true", "COORDINATOR_ID": name, "COORDINATOR_DATA_DIR": str(tmp_path / name),
                "PUBLISH_INTERVAL_MS": "10", "DA_HEALTH_INTERVAL_MS": "100"}
        base.update(env)
        return config_mod.load(base)

    return make


async def start(nursery: trio.Nursery, cfg: config_mod.Config, da: Any = None) -> Coordinator:
    coord = Coordinator(cfg, da if da is not None else MockDA())
    await nursery.start(coord.run)
    return coord


@pytest.fixture
async def coord(nursery: trio.Nursery, make_config: Callable[..., config_mod.Config]) -> AsyncIterator[Coordinator]:
    yield await start(nursery, make_config())


@pytest.fixture
async def client(coord: Coordinator) -> Any:
    return create_app(coord).test_client()


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(0.01)
        return
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def fill_outbox(path: Path, count: int) -> None:
    """``count`` unpublished node registrations in the outbox file ``path`` (created): what a coordinator holds
    after a long DA outage, for its next start to replay."""
    db = sqlite3.connect(path)
    db.executescript(_SCHEMA)
    db.executemany("INSERT INTO outbox (raw, created_ms) VALUES (?, 0)",
                   [(ev.make_event(ev.NODE_REGISTERED, (1_000 + i, 0), "c0", id=f"n-{i}", zone="z",
                                   addr="10.0.0.1:5000", capacity_gb=1).raw,) for i in range(count)])
    db.commit()
    db.close()
