"""``dsdn blobstore``: the blob-store service alone (the store and its routes live in api/blobstore.py).

Used as the emergency DA (EMERGENCY_DA_URL) or as one QuorumDA validator (QUORUM_VALIDATORS).
SIGTERM/SIGINT stop it gracefully.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import trio
from hypercorn.trio import serve

from api.blobstore import DEFAULT_MAX_BODY, MAX_BODY_LIMIT, BlobStore, create_blobstore_app
from node import process
from node.process import hypercorn_config, lock_data, run_process, serve_until_signalled, setup_logging

log = logging.getLogger("dsdn.blobstore")


async def serve_store(store: BlobStore, host: str, port: int, *,
                      shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
                      task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``store`` until ``shutdown_trigger`` returns (graceful) or the caller cancels; reports the URL."""
    app = create_blobstore_app(store)

    trigger = None
    if shutdown_trigger is not None:
        async def trigger() -> None:
            await shutdown_trigger()
            store.stop_waiting()  # answer the long polls now: the graceful stop would wait for them

    async with trio.open_nursery() as nursery:
        try:
            binds = await nursery.start(partial(serve, app, hypercorn_config(host, port),  # type: ignore[arg-type]
                                                shutdown_trigger=trigger))
        except* OSError as group:  # (start() hands it over in a group)
            raise process.bind_error(process.leaves(group)[0], "blob store", host, port, "--port") from None
        task_status.started(binds[0])


async def serve_blobstore(host: str, port: int, data_dir: Path, *, max_body_bytes: int = DEFAULT_MAX_BODY,
                          writers: frozenset[bytes] | None = None,
                          shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
                          task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Open the store in ``data_dir`` and serve it; ``nursery.start`` returns the bound URL (port 0 works)."""
    store = BlobStore(Path(data_dir), max_body_bytes=max_body_bytes, writers=writers)
    if writers is None:
        log.warning("this blob store accepts writes from anyone; list the writers' keys with --writers")
    try:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(partial(serve_store, store, host, port, shutdown_trigger=shutdown_trigger))
            log.info("blob store listening on %s (public key %s, data in %s)", url, store.public_key.hex(), data_dir)
            task_status.started(url)
    finally:
        store.close()


def main(argv: list[str] | None = None) -> None:
    """``dsdn blobstore``: exit 0 after SIGTERM/SIGINT, 2 for bad arguments or key file, 1 if it cannot start."""
    parser = argparse.ArgumentParser(prog="dsdn blobstore", description="Serve an append-only signed blob log "
                                     "(emergency DA or QuorumDA validator) over HTTP.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8090, help="port to bind; 0 picks a free one (default 8090)")
    parser.add_argument("--data-dir", default=".dsdn/blobstore", help="SQLite log and identity.key live here")
    parser.add_argument("--writers", default=os.environ.get("BLOBSTORE_WRITERS", ""),
                        help="comma-separated Ed25519 public keys (hex) whose signed writes are accepted "
                             "(default $BLOBSTORE_WRITERS; none: anyone may write)")
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY,
                        help=f"largest accepted blob (default {DEFAULT_MAX_BODY})")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535 or not 1 <= args.max_body_bytes <= MAX_BODY_LIMIT:
        parser.error(f"--port must be 0..65535 and --max-body-bytes from 1 to {MAX_BODY_LIMIT} (what its followers "
                     "read of one log page bounds it)")
    try:
        writers = frozenset(bytes.fromhex(k.strip()) for k in args.writers.split(",") if k.strip()) or None
    except ValueError:
        parser.error("--writers: comma-separated hex public keys")
    if writers is not None and any(len(k) != 32 for k in writers):
        parser.error("--writers: each key is 64 hex characters")
    if writers is None and args.writers.strip():  # ("," or " , ": given, yet no key: it started open to anyone)
        parser.error("--writers: comma-separated hex public keys (none given: leave it unset for an open store)")
    setup_logging()
    lock_data("dsdn blobstore", Path(args.data_dir) / ".lock")
    run_process("dsdn blobstore", serve_until_signalled, partial(
        serve_blobstore, args.host, args.port, Path(args.data_dir), max_body_bytes=args.max_body_bytes,
        writers=writers), "blobstore")


if __name__ == "__main__":
    main()
