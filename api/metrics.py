"""GET /metrics: the coordinator's metrics in the Prometheus text format (prometheus-client), without auth.

This module owns every metric of the coordinator and the route that serves them. Each app has its own
``CollectorRegistry`` (never the process-wide default: tests run many apps in one process). Most metrics are
read at scrape time from the status objects the JSON routes already serve (the DA stack, the outbox, the
consumers, the state, the peer links, the DKG, the receipt engine), so /metrics never disagrees with
/da/metrics, /state/root, /cluster/peers or /cluster/status (a layer's errors on /metrics also count its followed
log's failed reads). The histograms are observed when things happen:
HTTP requests through a before/after-request hook of the app, DA calls through ``MeteredLayer.observers``,
receipt batches and finality through ``ReceiptService.observers``.

Names follow the Prometheus conventions: a ``dsdn_`` prefix, base units (seconds, bytes), ``_total`` on
counters. The route label of HTTP metrics is the route template as /openapi.json writes it
(``/node/{node_id}``), ``unmatched`` for a path no route serves (or a method it does not allow), and a method
outside the standard ones is ``other``, so the label set stays bounded whatever clients send.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from quart import Response, g, request
from quart_trio import QuartTrio

from consensus.dkg import DkgState
from consensus.dkg_service import DkgService
from consensus.receipt_service import ReceiptService
from node.coordinator import VERSION, Coordinator
from node.da.metered import MeteredLayer
from node.da.status import Status
from protocol.manager import PeerManager
from protocol.manager import State as PeerState

PATH = "/metrics"
#: the route as api/openapi.py documents it: (method, path, summary, request schema, 200 schema, other statuses)
METRICS_ROUTE: tuple[str, str, str, None, dict[str, Any], tuple[int, ...]] = (
    "GET", PATH, "Metrics in the Prometheus text format (HTTP, DA layers, outbox, consumers, state, peers, DKG, "
    "receipts); no auth", None, {"type": "string"}, ())
#: its media type in the document (the answer carries the format version too: CONTENT_TYPE_LATEST)
METRICS_MEDIA_TYPE = "text/plain"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"})
_PARAM = re.compile(r"<(?:[a-z]+:)?([A-Za-z_]+)>")  # api.openapi.openapi_path (which imports this module)

HTTP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
DA_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
SIGN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
FINAL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
DKG_STATES = ("unavailable", "none", *(s.value for s in DkgState))
OUTBOX_FILE = "outbox.sqlite"  # node.coordinator keeps its outbox there, in the data dir


def register_metrics_routes(app: QuartTrio, coord: Coordinator, peers: PeerManager | None = None,
                            dkg: DkgService | None = None, receipts: ReceiptService | None = None
                            ) -> CollectorRegistry:
    """Serve GET /metrics on ``app``, time every request of the app, and hook the DA layers' and the receipt
    engine's observations; return the app's registry."""
    registry = CollectorRegistry(auto_describe=False)
    requests = Counter("dsdn_http_requests", "HTTP requests answered, by method, route template and status",
                       ["method", "route", "status"], registry=registry)
    durations = Histogram("dsdn_http_request_duration_seconds", "Time to answer an HTTP request",
                          ["method", "route"], buckets=HTTP_BUCKETS, registry=registry)
    da_durations = Histogram("dsdn_da_operation_duration_seconds", "Duration of successful DA calls, by layer "
                             "(or followed log) and operation (post, get, read, head)", ["layer", "operation"],
                             buckets=DA_BUCKETS, registry=registry)
    seen: set[int] = set()
    for metered in [*coord.da.layers.values(), *coord.da.followed.values()]:
        if id(metered) not in seen:
            seen.add(id(metered))
            metered.observers.append(_da_observer(da_durations, metered.name))
    if receipts is not None:
        receipts.observers.append(_receipt_observer(registry))
    scrape = _Scrape()
    registry.register(_Collector(coord, peers, dkg, receipts, scrape))

    async def _start_timer() -> None:
        g.dsdn_started = time.perf_counter()

    # first of the before-request hooks: a request an earlier one refused (a parameter given twice: 422) was counted
    # but never timed, so the request counter and the latency histogram disagreed (a reviewer's reproduction)
    app.before_request_funcs.setdefault(None, []).insert(0, _start_timer)

    children: dict[tuple[str, str | None, int], tuple[Any, Any]] = {}  # labels() costs more than inc/observe

    @app.after_request
    async def _count_request(response: Response) -> Response:
        rule = request.url_rule
        method = request.method if request.method in _METHODS else "other"  # any token is a method: bounded
        key = (method, rule.rule if rule is not None else None, response.status_code)
        child = children.get(key)
        if child is None:
            route = _PARAM.sub(r"{\1}", rule.rule) if rule is not None else "unmatched"
            child = children[key] = (requests.labels(method, route, str(response.status_code)),
                                     durations.labels(method, route))
        child[0].inc()
        started = g.get("dsdn_started")
        if started is not None:
            child[1].observe(time.perf_counter() - started)
        return response

    @app.get(PATH)
    async def metrics() -> Response:
        scrape.oldest_unpublished_s = await _oldest_unpublished_age(coord)
        return Response(generate_latest(registry), 200, {"Content-Type": CONTENT_TYPE_LATEST})

    return registry


def _da_observer(histogram: Histogram, layer: str) -> Callable[[str, float], None]:
    def observe(operation: str, seconds: float) -> None:
        histogram.labels(layer, operation).observe(seconds)

    return observe


def _receipt_observer(registry: CollectorRegistry) -> Callable[[str, float], None]:
    histograms = {
        "batch_size": Histogram("dsdn_receipt_batch_size", "Receipts per batch signed by this coordinator",
                                buckets=BATCH_BUCKETS, registry=registry),
        "sign_seconds": Histogram("dsdn_receipt_signing_duration_seconds", "Threshold signing of a batch (ROAST "
                                  "sessions until t valid shares aggregate), per batch signed by this coordinator",
                                  buckets=SIGN_BUCKETS, registry=registry),
        "final_seconds": Histogram("dsdn_receipt_final_latency_seconds", "From a receipt first seen here to final",
                                   buckets=FINAL_BUCKETS, registry=registry),
    }

    def observe(what: str, value: float) -> None:
        histogram = histograms.get(what)
        if histogram is not None:
            histogram.observe(value)

    return observe


class _Scrape:
    """What the route computes before a scrape (awaitable work the synchronous collector cannot do)."""

    oldest_unpublished_s: float | None = 0.0


async def _oldest_unpublished_age(coord: Coordinator) -> float | None:
    """Seconds since the oldest event not yet published to DA was committed (0 when none waits; None when the
    outbox cannot be read). Read through a connection of its own: a WAL reader never waits for the writer."""
    if coord.outbox.pending <= 0:
        return 0.0
    path = coord.config.data_dir / OUTBOX_FILE

    def read() -> int | None:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, timeout=1.0)  # never creates a file
        try:
            db.execute("PRAGMA query_only = 1")
            row = db.execute("SELECT created_ms FROM outbox WHERE layer IS NULL ORDER BY seq LIMIT 1").fetchone()
            return int(row[0]) if row is not None else None
        finally:
            db.close()

    try:
        created_ms = await trio.to_thread.run_sync(read)
    except sqlite3.Error:
        return None
    return 0.0 if created_ms is None else max(0.0, time.time() - created_ms / 1000)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _labelled(kind: type[CounterMetricFamily] | type[GaugeMetricFamily], name: str, doc: str, label: str | list[str],
              samples: Iterable[tuple[Any, float]]) -> Metric:
    labels = [label] if isinstance(label, str) else label
    family = kind(name, doc, labels=labels)
    for key, value in samples:
        family.add_metric([str(k) for k in key] if isinstance(key, tuple) else [str(key)], value)
    return family


class _Collector:
    """Everything read at scrape time."""

    def __init__(self, coord: Coordinator, peers: PeerManager | None, dkg: DkgService | None,
                 receipts: ReceiptService | None, scrape: _Scrape) -> None:
        self.coord, self.peers, self.dkg, self.receipts, self.scrape = coord, peers, dkg, receipts, scrape

    def describe(self) -> list[Metric]:
        return []  # names are only known from collect (labels vary); nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        coord = self.coord
        info = GaugeMetricFamily("dsdn_build_info", "Version and identity of this coordinator (always 1)",
                                 labels=["version", "coordinator_id"])
        info.add_metric([VERSION, coord.id], 1)
        yield info
        for family in (*self._da(), *self._pipeline(), *self._peers(), *self._dkg(), *self._receipts()):
            if family.samples:  # a labelled family with no label values yet (no peers, no rejection) says nothing
                yield family

    # ---- DA ------------------------------------------------------------------------------------------

    def _by_layer(self) -> dict[str, list[MeteredLayer]]:
        """Every metered layer and followed log by name, each object once (a followed log of a configured layer
        is a second object under the same name: one does its writes and checks, the other the consumer's reads)."""
        out: dict[str, list[MeteredLayer]] = {}
        seen: set[int] = set()
        for metered in [*self.coord.da.layers.values(), *self.coord.da.followed.values()]:
            if id(metered) not in seen:
                seen.add(id(metered))
                out.setdefault(metered.name, []).append(metered)
        return out

    def _da(self) -> Iterator[Metric]:
        da = self.coord.da
        snap = self.coord.da_view()
        layers = self._by_layer()

        def total(field: str) -> list[tuple[str, float]]:
            return [(name, sum(getattr(m.metrics, field) for m in ms)) for name, ms in layers.items()]

        yield _labelled(CounterMetricFamily, "dsdn_da_posts", "Successful posts, by layer", "layer",
                        total("post_count"))
        yield _labelled(CounterMetricFamily, "dsdn_da_gets", "Successful blob reads by reference, by layer",
                        "layer", total("get_count"))
        yield _labelled(CounterMetricFamily, "dsdn_da_reads", "Successful log reads (consumer polls), by layer or "
                        "followed log", "layer", total("read_count"))
        yield _labelled(CounterMetricFamily, "dsdn_da_errors", "Failed or timed-out DA calls, by layer (its followed "
                        "log's failed reads included)", "layer", total("error_count"))
        yield _labelled(CounterMetricFamily, "dsdn_da_health_checks", "Health checks, by layer", "layer",
                        total("health_check_count"))
        # (a layer and its followed log may wrap one client: its retries counted once, not once for each wrapper)
        yield _labelled(CounterMetricFamily, "dsdn_da_retries", "Retries of layers that retry (Celestia), by layer",
                        "layer", [(name, sum(int(getattr(inner, "retries", 0))
                                             for inner in {id(m.inner): m.inner for m in ms}.values()))
                                  for name, ms in layers.items()])
        yield _labelled(GaugeMetricFamily, "dsdn_da_layer_healthy", "1 when the status machine holds the layer "
                        "healthy", "layer", [(name, int(ok)) for name, ok in snap.healthy.items()])
        yield _labelled(GaugeMetricFamily, "dsdn_da_status", "The DA status (1 for the current state)", "status",
                        [(s.value, int(s is snap.status)) for s in Status])
        yield _labelled(GaugeMetricFamily, "dsdn_da_routing", "The layer writes try first (1) among the configured "
                        "layers", "layer", [(name, int(name == snap.routing)) for name in snap.healthy])
        yield _gauge("dsdn_da_available", "1 when a DA layer takes writes", int(snap.takes_writes))
        yield _gauge("dsdn_da_fallback_active", "1 while the DA status is Degraded or Emergency (the primary is "
                     "failing: writes go to a fallback layer, if any takes them) or Recovering (fallback blobs being "
                     "reconciled)", int(snap.fallback_active))
        yield _counter("dsdn_da_status_transitions", "Changes of the DA status", snap.transitions)
        yield _counter("dsdn_da_fallthroughs", "Writes that fell through to the next layer", da.router.fallthroughs)
        yield _labelled(CounterMetricFamily, "dsdn_da_router_posts", "Writes that landed, by layer", "layer",
                        da.router.posts_by_layer.items())
        yield _gauge("dsdn_da_pending_reconcile_blobs", "Blobs on a fallback not yet confirmed on the primary",
                     da.pending.pending_count)
        yield _gauge("dsdn_da_reconciling", "1 while a reconciliation pass runs", int(da.reconciler.running))

    # ---- outbox, consumers, state ------------------------------------------------------------------------

    def _pipeline(self) -> Iterator[Metric]:
        coord = self.coord
        outbox = coord.outbox
        yield _gauge("dsdn_outbox_pending_events", "Events committed here and not yet published to DA", outbox.pending)
        if self.scrape.oldest_unpublished_s is not None:
            yield _gauge("dsdn_outbox_oldest_unpublished_age_seconds", "Age of the oldest event not yet published "
                         "(0 when none waits)", self.scrape.oldest_unpublished_s)
        yield _gauge("dsdn_outbox_inflight_writes", "Writes waiting for their outbox commit", outbox.inflight)
        yield _counter("dsdn_outbox_commits", "Outbox group commits", outbox.commits)
        yield _counter("dsdn_outbox_overloaded", "Writes refused with 503 overloaded (MAX_INFLIGHT_WRITES)",
                       outbox.overloaded)
        consumers = coord.consumers
        heads = {name: max((m.head_seen for m in ms if m.head_seen is not None), default=None)
                 for name, ms in self._by_layer().items()}
        yield _labelled(GaugeMetricFamily, "dsdn_consumer_cursor", "Position read up to, per followed log", "log",
                        [(name, c.cursor) for name, c in consumers.items()])
        yield _labelled(GaugeMetricFamily, "dsdn_consumer_head", "Newest head the log reported (a health check or "
                        "a read that reached it), per followed log", "log",
                        [(name, heads[name]) for name in consumers if heads.get(name) is not None])
        yield _labelled(GaugeMetricFamily, "dsdn_consumer_caught_up", "1 once the log was read up to its head",
                        "log", [(name, int(c.caught_up.is_set())) for name, c in consumers.items()])
        yield _labelled(GaugeMetricFamily, "dsdn_consumer_reading", "1 when the latest read of the log worked", "log",
                        [(name, int(c.last_ok)) for name, c in consumers.items()])
        yield _labelled(CounterMetricFamily, "dsdn_consumer_blobs_applied", "Blobs read and applied, per log", "log",
                        [(name, c.blobs_applied) for name, c in consumers.items()])
        yield _labelled(CounterMetricFamily, "dsdn_consumer_events_new", "Events new to the state, per log", "log",
                        [(name, c.events_new) for name, c in consumers.items()])
        yield _labelled(CounterMetricFamily, "dsdn_consumer_blobs_rejected", "Blobs dropped, per log and reason",
                        ["log", "reason"], [((name, reason), n) for name, c in consumers.items()
                                            for reason, n in sorted(c.rejected.items())])
        yield _labelled(CounterMetricFamily, "dsdn_consumer_events_dropped", "Events dropped: invalid, or an origin "
                        "that is not the signer's member id", ["log", "reason"],
                        [((name, why), n) for name, c in consumers.items()
                         for why, n in (("invalid", c.events_invalid), ("wrong_origin", c.events_wrong_origin))])
        yield _counter("dsdn_state_events_applied", "Events applied to the state (what /state/root reports)",
                       coord.state.events_applied)
        yield _gauge("dsdn_state_nodes", "Registered nodes", coord.state.node_count)
        yield _gauge("dsdn_ready", "1 when /ready answers 200 (state rebuilt, no followed log stuck, DA takes "
                     "writes)", int(coord.readiness()["ready"]))
        yield _counter("dsdn_snapshots_written", "Local snapshots written", coord.snapshots_written)
        yield _counter("dsdn_snapshots_failed", "Local snapshots that failed to be written (the previous one stays)",
                       coord.snapshots_failed)

    # ---- peers -------------------------------------------------------------------------------------------

    def _peers(self) -> Iterator[Metric]:
        links = self.peers.status() if self.peers is not None else []
        up = (PeerState.UP.value, PeerState.SUSPECT.value)
        yield _labelled(GaugeMetricFamily, "dsdn_peer_up", "1 when the link to the peer is up (or suspect)", "peer",
                        [(p["id"], int(p["state"] in up)) for p in links])
        yield _labelled(GaugeMetricFamily, "dsdn_peer_state", "State of the link to each peer (1 for the current "
                        "one)", ["peer", "state"], [((p["id"], s.value), int(p["state"] == s.value))
                                                     for p in links for s in PeerState])
        yield _labelled(GaugeMetricFamily, "dsdn_peer_rtt_seconds", "Latest heartbeat round trip, per peer", "peer",
                        [(p["id"], p["rtt_ms"] / 1000) for p in links if p["rtt_ms"] is not None])
        yield _labelled(GaugeMetricFamily, "dsdn_peer_last_seen_timestamp_seconds", "Unix time of the last frame "
                        "from the peer", "peer", [(p["id"], p["last_seen"] / 1000) for p in links
                                                  if p["last_seen"] is not None])
        for name, key, doc in (("dsdn_peer_sent_bytes", "bytes_out", "Bytes sent (sealed frames), per peer"),
                               ("dsdn_peer_received_bytes", "bytes_in", "Bytes received (frames), per peer"),
                               ("dsdn_peer_sent_messages", "messages_out", "Messages sent, per peer"),
                               ("dsdn_peer_received_messages", "messages_in", "Messages received, per peer"),
                               ("dsdn_peer_errors", "errors", "Link errors, per peer"),
                               ("dsdn_peer_frames_dropped", "dropped", "Messages dropped (full queue or refused by "
                                "the dispatcher), per peer"),
                               ("dsdn_peer_links", "links", "Times the link came up, per peer")):
            yield _labelled(CounterMetricFamily, name, doc, "peer", [(p["id"], p[key]) for p in links])

    # ---- DKG -----------------------------------------------------------------------------------------------

    def _dkg(self) -> Iterator[Metric]:
        status = self.dkg.status() if self.dkg is not None else None
        state = status["dkg"]["state"] if status is not None else "unavailable"
        states = DKG_STATES if state in DKG_STATES else (*DKG_STATES, state)
        yield _labelled(GaugeMetricFamily, "dsdn_dkg_state", "The DKG state (1 for the current one; unavailable: "
                        "no cluster configured)", "state", [(s, int(s == state)) for s in states])
        if status is None:
            return
        yield _gauge("dsdn_dkg_group_key_present", "1 when the cluster key exists",
                     int(bool(status["group_public_key"])))
        if status["threshold"] is not None:
            yield _gauge("dsdn_dkg_threshold", "Signers needed for the cluster key", status["threshold"])
        yield _gauge("dsdn_dkg_members", "Cluster members", len(status["members"]))
        yield _gauge("dsdn_dkg_excluded_members", "Members proven to cheat in a DKG", len(status["dkg"]["excluded"]))
        yield _counter("dsdn_dkg_sessions_run", "DKG sessions run", status["dkg"]["sessions_run"])

    # ---- receipts ----------------------------------------------------------------------------------------

    def _receipts(self) -> Iterator[Metric]:
        if self.receipts is None:
            return
        s = self.receipts.status()
        for name, key, doc in (
                ("dsdn_receipts_proposed", "proposed", "Receipts submitted here (proposed by this coordinator)"),
                ("dsdn_receipts_final", "final", "Receipts final (threshold-signed) that this coordinator tracks"),
                ("dsdn_receipt_conflicts", "conflicts", "Receipts that lost their slot to a rival"),
                ("dsdn_receipt_batches", "batches", "Batches proposed"),
                ("dsdn_receipt_batches_failed", "batches_failed", "Batches that ended unsigned"),
                ("dsdn_receipt_roast_sessions", "sessions", "ROAST signing sessions started"),
                ("dsdn_receipt_one_round_batches", "one_round",
                 "Batches signed in the lock round itself (with spare nonce commitments), no ROAST session"),
                ("dsdn_receipt_takeovers", "takeovers", "Open locks re-proposed by this coordinator"),
                ("dsdn_receipt_batches_republished", "republished",
                 "Signed batches whose announcers were gone and which DA lacked, published again here"),
                ("dsdn_receipt_shares_released", "shares_released", "Signature shares released as a signer"),
                ("dsdn_receipt_sign_refused", "sign_refused", "Signing requests refused as a signer")):
            yield _counter(name, doc, s[key])
        yield _labelled(CounterMetricFamily, "dsdn_receipts_rejected", "Receipts rejected, by reason", "reason",
                        sorted(s["rejected"].items()))
        yield _labelled(CounterMetricFamily, "dsdn_receipt_blamed_signers", "Invalid signature shares, by signer",
                        "signer", sorted(s["blamed"].items()))
        yield _labelled(GaugeMetricFamily, "dsdn_receipts_held", "Receipts held here, by status", "status",
                        sorted(s["by_status"].items()))
        yield _gauge("dsdn_receipt_queue_length", "Receipts waiting for a batch", s["queued"])
        yield _gauge("dsdn_receipt_nonces_held", "Nonce commitments offered and not used yet", s["nonces_held"])
        table = s["lock_table"]
        if table["locks"] is not None:
            yield _gauge("dsdn_receipt_locks", "Rows of the durable slot-lock table", table["locks"])
        yield _gauge("dsdn_receipt_lock_table_broken", "1 when the lock table is lost or corrupt (no signing)",
                     int(bool(table["broken"])))
