"""Local snapshots: the state, the consumer cursor and the outbox watermark, written atomically.

A snapshot lets a restart skip replaying DA from height 0. It is only an optimisation: with no
snapshot (an empty data dir) the state is rebuilt from DA alone. Its size follows the registers, not
the number of events ever applied (format 3: a bounded cache of recent event ids instead of format 2's
set of every id prefix; format 2 is still read).
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
FORMAT = 3
READABLE = (2, 3)


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
    if obj.get("format") not in READABLE:
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
    """Take a consistent cut in the caller's task (``State.frozen``, a shallow copy), then encode, write and
    fsync it in a thread, so a large state does not stall the event loop; return the size."""
    cut = Snapshot(snap.state.frozen(), dict(snap.cursors), snap.outbox_seq)

    def encode_and_write() -> int:
        data = encode(cut)
        _write(data_dir / FILE, data)
        return len(data)

    return await trio.to_thread.run_sync(encode_and_write)
