"""Process entry for ``dsdn-coordinator``, and the composition root that wires node, api, consensus and
protocol together (it lives in deploy/ so that node never imports api or consensus): config from the
environment, one trio nursery holding the coordinator's background tasks and the Hypercorn server;
SIGTERM/SIGINT stop it gracefully.

Exit codes: 0 after a clean stop, 2 for a configuration error (one line on stderr), 1 when the
server cannot start (for example the port is taken).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio
from hypercorn.trio import serve

from api.app import create_app
from api.blobstore import BlobStore
from consensus import dkg_service, keystore, receipt_service
from consensus.dkg_service import DkgService
from consensus.lockstore import LockStore
from consensus.receipt_service import ReceiptService
from deploy.adversary import BYZANTINE_BEHAVIOURS, make_byzantine
from deploy.receipt_view import StateLedgerView
from node import config as config_mod
from node import gossip
from node.coordinator import Coordinator
from node.da.factory import build_layers
from node.process import (
    StoppedBySignal,
    bind_error,
    hypercorn_config,
    leaves,
    lock_data,
    mark_started,
    run_process,
    set_log_context,
    setup_logging,
    stop_on_signals,
    tune_gc,
)
from protocol.envelope import Registry
from protocol.manager import Member, PeerManager

log = logging.getLogger("dsdn.main")


async def run(cfg: config_mod.Config) -> None:
    tune_gc()
    layers = build_layers(cfg)
    coord = Coordinator(cfg, layers.primary, layers.secondary, layers.emergency, layers.followed)
    # a hosted validator takes writes from cluster members only, each signed by its key (our DA clients sign every
    # write); a coordinator outside a cluster is its only member: it took anyone's write, token or not (a reviewer's
    # finding: the one write route COORDINATOR_API_TOKEN did not guard)
    validator = BlobStore(cfg.data_dir, writers=frozenset(coord.members)) if cfg.quorum_validator else None
    peers = peer_manager(cfg, coord)
    dkg = None
    if peers is not None:
        dkg = DkgService(peers, coord.key, {p.id: p.public_key for p in cfg.peers}, cfg.data_dir / "keyshare.bin",
                         passphrase=cfg.keystore_passphrase, threshold=cfg.dkg_threshold, auto=cfg.dkg_auto,
                         timeout_s=cfg.dkg_timeout_ms / 1000)
        if cfg.keystore_passphrase is None:
            log.warning(keystore.at_rest_warning(cfg.data_dir / "keyshare.bin"))
        dkg.read_stored()  # (a key file that does not open: one line and exit 2 now, before anything starts)
    if not cfg.enable_fallback and (cfg.quorum_validators or cfg.emergency_da_url):
        log.warning("QUORUM_VALIDATORS / EMERGENCY_DA_URL are set but ENABLE_FALLBACK is not true: no fallback DA "
                    "layer is used (the primary alone)")
    if cfg.api_token is None and not config_mod.is_loopback(cfg.host):  # ALLOW_UNAUTHENTICATED=true said so
        log.warning("HTTP on %s without COORDINATOR_API_TOKEN (ALLOW_UNAUTHENTICATED=true): POST /cluster/dkg and "
                    "every write are open to anyone who can reach it", cfg.host)
    receipts = locks = None
    if peers is not None and dkg is not None:
        receipts, locks = receipt_engine(cfg, coord, peers, dkg)
    # outside a cluster the signed receipts of the state are still served (a coordinator rebuilt from DA)
    view = StateLedgerView(lambda: coord.state, coord.submit_event, _NoKey())
    app = create_app(coord, validator, peers, dkg, receipts, view if receipts is None else None)
    stop = trio.Event()

    async def shutdown_trigger() -> None:
        await stop.wait()
        if validator is not None:  # answer the peers' long polls now: the graceful stop would wait for them
            validator.stop_waiting()

    try:
        async with trio.open_nursery() as listening:  # signals are heard until the stop is done (see _listen)
            listening.start_soon(_listen, stop, coord)
            await _serve(cfg, coord, validator, peers, dkg, receipts, app, stop, shutdown_trigger)
            listening.cancel_scope.cancel()
    finally:  # also after a second signal (StoppedBySignal): the lock table and the DA clients are closed
        if locks is not None:
            locks.close()
        await coord.da.aclose()  # we built the layers: close them (their HTTP clients, the Mock DA file)
        if validator is not None:
            validator.close()
    log.info("stopped cleanly")


async def _listen(stop: trio.Event, coord: Coordinator) -> None:
    """``stop_on_signals`` for the whole stop: a second signal while the coordinator wrote its final snapshot (seconds
    for a large state) was Python's KeyboardInterrupt (a traceback, exit 1), or a SIGTERM's default end (exit -15,
    a snapshot.tmp left): the listener had stopped with the API. Now it cuts that snapshot short, cleanly."""
    try:
        await stop_on_signals(stop)
    except StoppedBySignal:
        coord.cut_final_snapshot()
        raise


async def _serve(cfg: config_mod.Config, coord: Coordinator, validator: BlobStore | None, peers: PeerManager | None,
                 dkg: DkgService | None, receipts: ReceiptService | None, app: Any, stop: trio.Event,
                 shutdown_trigger: Callable[[], Awaitable[None]]) -> None:
    """Start everything, serve the API until ``stop``, then stop everything (the coordinator's final snapshot
    last)."""
    hcfg = hypercorn_config(cfg.host, cfg.port)
    async with trio.open_nursery() as outer:
        serving = trio.Event()
        outer.start_soon(_stop_while_starting, stop, serving, outer.cancel_scope)
        await outer.start(coord.run)
        if peers is not None:
            try:
                await outer.start(peers.run)
            except* OSError as group:  # (start() hands it over in a group)
                where = "PEER_PORT" if cfg.peer_port else "this member's entry in CLUSTER_PEERS / CLUSTER_CONFIG"
                raise bind_error(leaves(group)[0], "peer", peers.host, peers.port, where) from None
            outer.start_soon(gossip.run_stats_gossip, coord, peers)
        if dkg is not None:
            await outer.start(dkg.run)
        if receipts is not None:
            await outer.start(receipts.run)
        async with trio.open_nursery() as http:
            try:
                binds = await http.start(partial(serve, app, hcfg, shutdown_trigger=shutdown_trigger))  # type: ignore[arg-type]
            except* OSError as group:
                raise bind_error(leaves(group)[0], "API", cfg.host, cfg.port, "COORDINATOR_PORT") from None
            mark_started()
            serving.set()
            primary = (("mock " + (cfg.mock_da_file if cfg.mock_da_path != ":memory:" else "in memory"))
                       if cfg.use_mock_da else f"celestia {cfg.da_rpc_url}")
            log.info("coordinator %s listening on %s (public key %s; DA primary: %s; layers: %s; follows: %s%s%s)",
                     coord.id, ", ".join(binds), coord.public_key.hex(), primary, ", ".join(coord.da.layers),
                     ", ".join(coord.da.followed), "; hosts a quorum validator" if validator else "",
                     f"; peers at {peers.url} ({len(peers.peers)} members)" if peers else "")
            outer.start_soon(_announce_ready, coord)
        outer.cancel_scope.cancel()


async def _stop_while_starting(stop: trio.Event, serving: trio.Event, scope: trio.CancelScope) -> None:
    """A signal before the API serves cuts the start short: it went on restoring (a long outbox replay, a large
    snapshot), started the API and only then stopped, however long that took (a second signal was the only way).
    Nothing durable is half done there: the restore only reads, and only a started run writes its snapshot."""
    await stop.wait()
    if not serving.is_set():
        log.info("stopping while starting: the start is cut short")
        scope.cancel()


def peer_manager(cfg: config_mod.Config, coord: Coordinator) -> PeerManager | None:
    """The peer links of a coordinator that is a member of a configured cluster."""
    if not cfg.peers:
        return None
    me = next(p for p in cfg.peers if p.id == cfg.coordinator_id)
    if me.public_key != coord.public_key:
        raise config_mod.ConfigError("CLUSTER_CONFIG/CLUSTER_PEERS", me.public_key.hex(),
                                     f"the public key of {cfg.data_dir}/identity.key ({coord.public_key.hex()}) "
                                     f"for member {me.id}")
    registry = Registry()
    gossip.register(registry)
    dkg_service.register(registry)
    receipt_service.register(registry)
    members = [Member(p.id, p.public_key, p.host, p.port) for p in cfg.peers]
    return PeerManager(cfg.coordinator_id, coord.key, cfg.cluster_id, members, registry, host=cfg.peer_host,
                       port=cfg.peer_port or me.port, heartbeat_s=cfg.peer_heartbeat_ms / 1000)


class _NoKey:
    key = None


def receipt_engine(cfg: config_mod.Config, coord: Coordinator, peers: PeerManager, dkg: DkgService
                   ) -> tuple[ReceiptService, LockStore]:
    """The receipt engine over the peer links, the DKG's key share and the coordinator's state. A member that
    already holds a key share must find its lock table (a lost one stops signing)."""
    locks = LockStore(cfg.data_dir / "locks.sqlite", expect_existing=(cfg.data_dir / "keyshare.bin").exists(),
                      owner=bytes(coord.key.verify_key))
    if locks.broken:
        log.error("receipt signing disabled: %s", locks.broken)
    view = StateLedgerView(lambda: coord.state, coord.submit_event, dkg, coord.da_read_through)
    service = ReceiptService(peers, coord.key, {p.id: p.public_key for p in cfg.peers}, dkg, view, locks,
                             batch_max=cfg.receipt_batch_max, batch_wait_s=cfg.receipt_batch_wait_ms / 1000,
                             epoch_length_s=cfg.epoch_length_s, epoch_grace=cfg.receipt_epoch_grace)
    coord.on_older_copy = service.hold_new_locks  # (this data folder restored from an older copy of itself)
    if coord.older_copy is not None:
        service.hold_new_locks(coord.older_copy)
    behaviour = os.environ.get("DSDN_BYZANTINE")
    if behaviour:  # a lying member for fault-injection runs (dsdn nemesis); never on mainnet
        if cfg.da_network == "mainnet":
            raise config_mod.ConfigError("DSDN_BYZANTINE", behaviour, "unset: a test-only switch, refused on mainnet")
        if behaviour not in BYZANTINE_BEHAVIOURS:
            raise config_mod.ConfigError("DSDN_BYZANTINE", behaviour, " or ".join(BYZANTINE_BEHAVIOURS))
        make_byzantine(service, behaviour)
        log.warning("BYZANTINE: this coordinator lies: %s (DSDN_BYZANTINE, for fault-injection runs)", behaviour)
    return service, locks


async def _announce_ready(coord: Coordinator) -> None:
    while not coord.rebuilt:
        await trio.sleep(0.05)
    log.info("ready: state rebuilt (%d events, root %s)", coord.state.events_applied, coord.state.root().hex()[:16])


def main() -> None:
    setup_logging("dsdn-coordinator")
    try:
        cfg = config_mod.load(os.environ)
    except config_mod.ConfigError as exc:
        print(f"dsdn-coordinator: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    set_log_context(coordinator=cfg.coordinator_id)  # every JSON log line names this coordinator
    lock_data("dsdn-coordinator", cfg.data_dir / ".lock")
    run_process("dsdn-coordinator", run, cfg)


if __name__ == "__main__":
    main()
