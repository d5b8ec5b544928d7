"""Local snapshots: the state, the consumer cursor and the outbox watermark, written atomically.

A snapshot lets a restart skip replaying DA from height 0. It is only an optimisation: with no
snapshot (an empty data dir) the state is rebuilt from DA alone. Its size follows the registers, not
the number of events ever applied.

Format 8 (state layout 5, see ``State.to_snapshot``): objects and replicas as flat columns (per shard) of their
stored registers (the events that wrote them) plus the state root's accumulator, so a restore is one msgpack call
and a few dict builds, with no register decoded or hashed again; the map's last entry, ``crc``, is the CRC-32 of
every byte before it (``TAIL``): a snapshot damaged on disk is refused (the state is rebuilt from DA) rather than
loaded (format 5, the same without it, loaded one flipped bit as a wrong object size, and the state root, restored
with the registers, did not show it). A CRC, not a cryptographic hash: it guards against accidents (whoever can
write the data folder can also replace the key share); zlib-ng computes it in 20 ms at 1M events (the standard
library's zlib 79 ms, SHA-256 115 ms), against a restore of ~300 ms.

Only this format is read. A snapshot holds what its version accepted from DA, and the rules for accepting events and
receipt batches changed between formats (in both directions: a batch with a bad group signature kept, an event with
``true`` for its version kept, a batch with 18 long signer ids refused and its blob passed by for good): a
coordinator restored from an older one held another state root than one rebuilt from DA, for ever (a reviewer's
reproductions). So an older format is refused and the state rebuilt from DA; ``FORMAT`` goes up whenever those rules
change either way. A coordinator that knows only older formats refuses a newer one and rebuilds from DA too. Format 8
adds ``basis``: the member list and primary log the state was read under (format 7 had none: a member added to the
configuration had its earlier blobs, passed by as an unknown signer's, never read after a restart, and its state root
differed from a rebuild's for good; a reviewer's reproduction). Format 9: a receipt batch whose signers are not
distinct coordinator ids is refused (format 8 kept one; a regression review), and a blob store log's identity
names the blob at its cursor (``at``).
``save`` never holds the event loop for long: see there.
"""

from __future__ import annotations

import gc
import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import msgpack
import trio
from zlib_ng import zlib_ng as zlib  # the standard library's zlib.crc32, four times faster (pyproject)

from node.state import LAYOUT, State

FILE = "snapshot.msgpack"
WRITE_BATCH = 4 << 20  # encoded bytes handed to the writing thread at a time
FORMAT = 9  # raise it whenever the rules for accepting events or receipt batches change (see above)
TAIL = msgpack.packb("crc") + b"\xce"  # the last entry's key and its value's header (uint 32): the CRC follows


@dataclass
class Snapshot:
    state: State
    cursors: dict[str, int]  # one per followed DA log
    outbox_seq: int
    # the log each blob store cursor counts in (``BlobStoreDA.log_identity``): a store that lost its database while
    # this coordinator was down is read again from the start (absent from snapshots of earlier versions)
    logs: dict[str, dict[str, str]] = field(default_factory=dict)
    # what the state and cursors were read under (the coordinator's ``basis``: its member keys and their ids, its
    # primary log): restored under another, a snapshot is refused (see ``Coordinator.restore``)
    basis: str = ""


def pieces(snap: Snapshot) -> Iterator[bytes]:
    """The encoding in pieces, each a short, bounded amount of work (see ``State.snapshot_pieces``), but for its
    last entry: ``tail`` of the CRC-32 of these pieces."""
    packer = msgpack.Packer(use_bin_type=True)
    yield packer.pack_map_header(7)
    yield packer.pack("format") + packer.pack(FORMAT)
    yield packer.pack("basis") + packer.pack(snap.basis)
    yield packer.pack("cursors") + packer.pack(snap.cursors)
    yield packer.pack("logs") + packer.pack(snap.logs)
    yield packer.pack("outbox_seq") + packer.pack(snap.outbox_seq)
    yield packer.pack("state")
    yield from snap.state.snapshot_pieces()


def tail(crc: int) -> bytes:
    """The snapshot's last entry, ``crc``: the CRC-32 of every byte before it (``TAIL`` included)."""
    return (crc & 0xFFFFFFFF).to_bytes(4, "big")


def encode(snap: Snapshot) -> bytes:
    body = b"".join(pieces(snap)) + TAIL
    return body + tail(zlib.crc32(body))


def decode(data: bytes | mmap.mmap) -> Snapshot:
    """The snapshot in ``data``; ValueError if it is not one this version reads (whatever is wrong with it)."""
    # The collector is paused meanwhile: the decoding creates a tuple per replica holder, nothing cyclic, and
    # a collection every few ten thousand of them would walk the growing heap again and again (the load took
    # twice as long). use_list=False: the replica tuples come out as the tuples the state keeps.
    collecting = gc.isenabled()
    gc.disable()
    try:
        try:
            obj: dict[str, Any] = msgpack.unpackb(data, raw=False, use_list=False, strict_map_key=False)
        except ValueError:
            raise
        except Exception as exc:  # damage can make a map a key: TypeError (unhashable), not the ValueError promised
            raise ValueError(f"malformed snapshot: {type(exc).__name__}: {exc}") from None
        if type(obj) is not dict or obj.get("format") != FORMAT:
            raise ValueError(f"unsupported snapshot format {obj.get('format') if type(obj) is dict else None!r}: "
                             f"this version reads format {FORMAT} only")
        if type(obj.get("state")) is not dict or obj["state"].get("layout") != LAYOUT:
            raise ValueError(f"snapshot format {FORMAT} without state layout {LAYOUT}")
        with memoryview(data) as view:
            if view[-9:-4] != TAIL or type(obj.get("crc")) is not int or tail(zlib.crc32(view[:-4])) != view[-4:]:
                raise ValueError("snapshot damaged: its CRC-32 does not match its contents")
        try:
            cursors = {str(k): _int(v) for k, v in obj["cursors"].items()}
            logs = {str(k): {"key": _hex(v["key"]), "log_id": _hex(v["log_id"]), "at": _hex(v.get("at", ""))}
                    for k, v in obj.get("logs", {}).items()}
            basis = obj["basis"]
            if type(basis) is not str:
                raise ValueError(f"malformed snapshot: {basis!r} where its basis belongs")
            snap = Snapshot(State.from_snapshot(obj["state"]), cursors, _count(obj["outbox_seq"]), logs, basis)
        except (KeyError, TypeError, AttributeError, IndexError, OverflowError) as exc:  # a field of the wrong shape
            raise ValueError(f"malformed snapshot: {type(exc).__name__}: {exc}") from None
        return snap
    finally:
        if collecting:
            gc.enable()


def _hex(value: Any) -> str:
    if type(value) is not str or len(value) % 2 or any(c not in "0123456789abcdef" for c in value):
        raise ValueError(f"malformed snapshot: {value!r} where lowercase hex belongs")
    return value


def _int(value: Any) -> int:
    if type(value) is not int:
        raise ValueError(f"malformed snapshot: {value!r} where an integer belongs")
    return value


def _count(value: Any) -> int:
    if _int(value) < 0:
        raise ValueError(f"malformed snapshot: {value!r} where a count belongs")
    return value  # type: ignore[no-any-return]


def load(data_dir: Path) -> Snapshot | None:
    """The snapshot in ``data_dir`` (None if there is none), decoded straight from a read-only map of the
    file; ValueError if it is unreadable (an empty file included). Run at start: it removes a save's leftover."""
    path = data_dir / FILE
    # a save killed midway leaves its temporary file (nearly a snapshot's size), and an idle coordinator writes no
    # snapshot that would replace it: gone at the next start
    path.with_suffix(".tmp").unlink(missing_ok=True)
    if not path.exists():
        return None
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        return decode(data)


def _write(f: BinaryIO, batch: list[bytes], crc: int) -> int:
    """Write pieces (in a thread); the CRC-32 of what was written so far, these pieces included."""
    for piece in batch:
        crc = zlib.crc32(piece, crc)
    f.writelines(batch)
    return crc


def _finish(f: BinaryIO, last: list[bytes], tmp: Path, path: Path) -> None:
    """Write the last pieces, fsync, move into place, fsync the directory (in a thread)."""
    try:
        f.writelines(last)
        f.flush()
        os.fsync(f.fileno())
    finally:
        f.close()
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _discard(f: BinaryIO, tmp: Path) -> None:
    f.close()
    tmp.unlink(missing_ok=True)


async def save(data_dir: Path, snap: Snapshot) -> int:
    """Write a snapshot atomically; return its size. The cut (``State.frozen``) is taken at once, in the
    caller's task; the encoding runs on the event loop one short piece at a time, with a checkpoint after
    each, and the file is written and fsynced in a thread, a few MiB at a time: however large the state,
    no step holds the loop (or the GIL) for long. Cancelled, it leaves the previous snapshot in place."""
    cut = Snapshot(snap.state.frozen(), dict(snap.cursors), snap.outbox_seq, dict(snap.logs), snap.basis)
    try:
        return await _write_cut(data_dir, cut)
    finally:
        cut.state.release()  # (taken whole, it is a no-op; cut short, the live state stops noting changes for it)


async def _write_cut(data_dir: Path, cut: Snapshot) -> int:
    path = data_dir / FILE
    tmp = path.with_suffix(".tmp")
    f: BinaryIO = await trio.to_thread.run_sync(open, tmp, "wb")
    size, batch, batch_size, crc = 0, [], 0, 0
    try:
        for piece in pieces(cut):
            batch.append(piece)
            batch_size += len(piece)
            if batch_size >= WRITE_BATCH:
                crc = await trio.to_thread.run_sync(_write, f, batch, crc)
                size, batch, batch_size = size + batch_size, [], 0
            else:
                await trio.lowlevel.checkpoint()
        batch.append(TAIL)
        crc = await trio.to_thread.run_sync(_write, f, batch, crc)
        await trio.to_thread.run_sync(_finish, f, [tail(crc)], tmp, path)
        batch_size += 9
    except BaseException:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(_discard, f, tmp)
        raise
    return size + batch_size
