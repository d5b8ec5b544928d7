"""The DA router: the single way writes reach DA.

A write tries the layers in the order the status machine gives; a failure of the layer is reported to
the machine (as a write) and the write falls through to the next layer at once. A caller error (the blob
itself is unacceptable: empty, too large, rejected as malformed) is not the layer's fault: it is raised
at once, neither reported nor tried elsewhere. A blob that lands on a fallback is recorded durably
(node.da.pending) before the write returns — shielded from cancellation, so a caller that goes away
cannot leave it on the fallback unrecorded — so reconciliation can move it to the primary.

A write in flight on a layer that the status machine declares unhealthy meanwhile (e.g. the health checks
found the primary too slow and the status went to Degraded) is abandoned (``abandon_unhealthy``) and falls
through to the next layer at once, instead of waiting for its own timeout and retries. The abandoned write
may still land: the blob then exists twice, which readers tolerate (events are deduplicated by id).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Mapping

import trio

from node.da.base import BlobRef, DAError, DALayer, DAUnavailable
from node.da.blobstore_client import BlobRejected
from node.da.celestia import BlobTooLarge, InvalidBlob
from node.da.pending import PendingStore
from node.da.status import PRIMARY, DAStatusMachine

log = logging.getLogger("dsdn.router")

#: Errors that blame the blob, not the layer: retrying it (here or on another layer) will not help.
CALLER_ERRORS: tuple[type[DAError], ...] = (InvalidBlob, BlobTooLarge, BlobRejected)


def is_caller_error(exc: BaseException) -> bool:
    """The request was bad (see CALLER_ERRORS; any error may also say so with ``caller_error = True``)."""
    return isinstance(exc, CALLER_ERRORS) or getattr(exc, "caller_error", False) is True


class LandedUnrecorded(Exception):
    """A blob landed on a fallback layer (``ref``) but recording it (node.da.pending) failed on local storage
    (``cause``, a full disk say): the caller records it with ``DARouter.record_landed`` before anything else, and
    never posts it again (it did, at every retry: a blob a minute on the fallback while the disk stayed full, a
    reviewer's reproduction)."""

    def __init__(self, ref: BlobRef, data: bytes, cert: bytes | None, cause: sqlite3.Error | OSError) -> None:
        super().__init__(f"landed on {ref.layer}, not recorded: {cause}")
        self.ref, self.data, self.cert, self.cause = ref, data, cert, cause


class DARouter:
    name = "router"

    def __init__(self, layers: Mapping[str, DALayer], machine: DAStatusMachine, pending: PendingStore,
                 clock: Callable[[], int]) -> None:
        self.layers, self.machine, self.pending, self.clock = layers, machine, pending, clock
        self.posts_by_layer: dict[str, int] = dict.fromkeys(layers, 0)
        self.fallthroughs = 0
        self.rejected = 0  # writes refused as caller errors
        self.abandoned = 0  # writes given up on a layer that became unhealthy while they were in flight
        self._in_flight: dict[str, set[trio.CancelScope]] = {name: set() for name in layers}

    def abandon_unhealthy(self) -> None:
        """Give up the writes in flight on every layer the status machine now holds unhealthy."""
        for name, scopes in self._in_flight.items():
            if not self.machine.is_healthy(name):
                for scope in scopes:
                    scope.cancel()

    #: ``post(data, past_size_refusals=True)`` is understood (the publisher asks so for a one-event blob).
    takes_size_fallthrough = True

    async def post(self, data: bytes, *, past_size_refusals: bool = False) -> BlobRef:
        """``past_size_refusals``: a layer refusing the blob (a caller error: ``BlobTooLarge``, its node's limit is
        below ours, or ``BlobRejected``, its store or every quorum validator refusing it, 413 included) passes it on
        to the next layer instead of failing the write, not as the layer's failure; for a blob that cannot be split
        any more (one event), which the primary alone would refuse for ever, keeping every later event from DA (a
        reviewer's reproduction: 52 refused submits, 50 events stuck, a healthy secondary unused; and a quorum's
        "every validator refused" stopped the write before the emergency store, which takes 2 MiB). The blob lands
        on a fallback, recorded for reconciliation like any other."""
        errors: list[str] = []
        size_refusals = 0
        for name in self.machine.write_order():
            since = self.machine.mark()
            with trio.CancelScope() as scope:
                if self.machine.is_healthy(name):  # a last-resort write on an unhealthy layer is never abandoned
                    self._in_flight[name].add(scope)
                try:
                    ref = await self.layers[name].post(data)
                except DAError as exc:
                    if past_size_refusals and is_caller_error(exc):
                        errors.append(f"{name}: {exc}")
                        size_refusals += 1
                        log.warning("%s refuses a blob of %d bytes, trying the next layer: %s", name, len(data), exc)
                        continue
                    if is_caller_error(exc):
                        self.rejected += 1
                        raise
                    self.machine.observe(name, False, self.clock(), str(exc), write=True)
                    errors.append(f"{name}: {exc}")
                    self.fallthroughs += 1
                    log.warning("write to %s DA failed, trying the next layer: %s", name, exc)
                    continue
                finally:
                    self._in_flight[name].discard(scope)
            if scope.cancelled_caught:  # the layer failed meanwhile (not this write's verdict: not observed)
                errors.append(f"{name}: abandoned, the layer became unhealthy during the write")
                self.abandoned += 1
                self.fallthroughs += 1
                log.warning("write to %s DA abandoned (the layer became unhealthy), trying the next layer", name)
                continue
            self.machine.observe(name, True, self.clock(), write=True, since=since)
            if name != PRIMARY:
                layer = getattr(self.layers[name], "inner", self.layers[name])
                cert = layer.certificate(ref) if callable(getattr(layer, "certificate", None)) else None
                self.posts_by_layer[name] += 1
                await self.record_landed(LandedUnrecorded(ref, data, cert.to_bytes() if cert is not None else None,
                                                          OSError("not recorded yet")))
                return ref
            self.posts_by_layer[name] += 1
            return ref
        if errors and size_refusals == len(errors):
            self.rejected += 1
            raise BlobTooLarge("every DA layer refuses the blob: " + "; ".join(errors))
        raise DAUnavailable("no DA layer took the write: " + "; ".join(errors))

    async def record_landed(self, landed: LandedUnrecorded) -> None:
        """Record a blob that landed on a fallback (shielded: a caller that goes away cannot leave it unrecorded);
        raise LandedUnrecorded again if local storage fails."""
        with trio.CancelScope(shield=True):
            try:
                await self.pending.record(landed.ref, landed.data, landed.cert)
            except (sqlite3.Error, OSError) as exc:
                raise LandedUnrecorded(landed.ref, landed.data, landed.cert, exc) from exc

    async def get(self, ref: BlobRef) -> bytes:
        layer = self.layers.get(ref.layer)
        if layer is None:
            raise DAError(f"unknown DA layer {ref.layer!r}")
        return await layer.get(ref)
