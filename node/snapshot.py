"""Local snapshots: the state, the consumer cursor and the outbox watermark, written atomically.

A snapshot lets a restart skip replaying DA from height 0. It is only an optimisation: with no
snapshot (an empty data dir) the state is rebuilt from DA alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import trio

from node.state import State

FILE = "snapshot.msgpack"
FORMAT = 2


@dataclass
class Snapshot:
    state: State
    cursors: dict[str, int]  # one per followed DA log
    outbox_seq: int


def encode(snap: Snapshot) -> bytes:
    return msgpack.packb(
        {"format": FORMAT, "state": snap.state.to_snapshot(), "cursors": snap.cursors, "outbox_seq": snap.outbox_seq},
        use_bin_type=True,
    )


def decode(data: bytes) -> Snapshot:
    obj: dict[str, Any] = msgpack.unpackb(data, raw=False, strict_map_key=False)
    if obj.get("format") != FORMAT:
        raise ValueError(f"unsupported snapshot format {obj.get('format')!r}")
    cursors = {str(k): int(v) for k, v in obj["cursors"].items()}
    return Snapshot(State.from_snapshot(obj["state"]), cursors, int(obj["outbox_seq"]))


def load(data_dir: Path) -> Snapshot | None:
    path = data_dir / FILE
    if not path.exists():
        return None
    return decode(path.read_bytes())


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


async def save(data_dir: Path, snap: Snapshot) -> int:
    """Encode in the caller's task (a consistent cut), write and fsync in a thread; return the size."""
    data = encode(snap)
    await trio.to_thread.run_sync(_write, data_dir / FILE, data)
    return len(data)
