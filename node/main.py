"""Process entry for ``dsdn-coordinator``: config from the environment, one trio nursery holding the
coordinator's background tasks and the Hypercorn server; SIGTERM/SIGINT stop it gracefully.

Exit codes: 0 after a clean stop, 2 for a configuration error (one line on stderr), 1 when the
server cannot start (for example the port is taken).
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from functools import partial

import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.trio import serve

from api.app import create_app
from api.blobstore import BlobStore
from node import config as config_mod
from node.coordinator import Coordinator
from node.da.factory import build_layers
from node.process import run_process, setup_logging, stop_on_signals

log = logging.getLogger("dsdn.main")


def tune_gc() -> None:
    """A coordinator holds a large, long-lived heap (the state): collect the young generation less
    often, so a rebuild of millions of events does not spend a fifth of its time in the collector."""
    gc.set_threshold(50_000, 20, 20)


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def hypercorn_config(host: str, port: int) -> HyperConfig:
    """The server settings every coordinator (and the socket tests, and the HTTP benchmark) use."""
    hcfg = HyperConfig()
    hcfg.bind = [_bind(host, port)]
    hcfg.accesslog = None
    hcfg.errorlog = logging.getLogger("hypercorn.error")
    hcfg.graceful_timeout = 5.0
    return hcfg


async def run(cfg: config_mod.Config) -> None:
    tune_gc()
    layers = build_layers(cfg)
    coord = Coordinator(cfg, layers.primary, layers.secondary, layers.emergency, layers.followed)
    validator = BlobStore(cfg.data_dir) if cfg.quorum_validator else None
    app = create_app(coord, validator)
    hcfg = hypercorn_config(cfg.host, cfg.port)
    stop = trio.Event()
    async with trio.open_nursery() as outer:
        outer.start_soon(stop_on_signals, stop)
        await outer.start(coord.run)
        async with trio.open_nursery() as http:
            binds = await http.start(partial(serve, app, hcfg, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
            primary = (("mock " + (cfg.mock_da_file if cfg.mock_da_path != ":memory:" else "in memory"))
                       if cfg.use_mock_da else f"celestia {cfg.da_rpc_url}")
            log.info("coordinator %s listening on %s (public key %s; DA primary: %s; layers: %s; follows: %s%s)",
                     coord.id, ", ".join(binds), coord.public_key.hex(), primary, ", ".join(coord.da.layers),
                     ", ".join(coord.da.followed), "; hosts a quorum validator" if validator else "")
            outer.start_soon(_announce_ready, coord)
        outer.cancel_scope.cancel()
    if validator is not None:
        validator.close()
    log.info("stopped cleanly")


async def _announce_ready(coord: Coordinator) -> None:
    while not coord.rebuilt:
        await trio.sleep(0.05)
    log.info("ready: state rebuilt (%d events, root %s)", coord.state.events_applied, coord.state.root().hex()[:16])


def main() -> None:
    setup_logging()
    try:
        cfg = config_mod.load(os.environ)
    except config_mod.ConfigError as exc:
        print(f"dsdn-coordinator: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    run_process("dsdn-coordinator", run, cfg)


if __name__ == "__main__":
    main()
