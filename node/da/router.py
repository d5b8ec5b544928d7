"""The DA router: the single way writes reach DA.

A write tries the layers in the order the status machine gives; a failure is reported to the machine
and the write falls through to the next layer at once. A blob that lands on a fallback is recorded
durably (node.da.pending) before the write returns, so reconciliation can move it to the primary.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from node.da.base import BlobRef, DAError, DALayer, DAUnavailable
from node.da.pending import PendingStore
from node.da.status import PRIMARY, DAStatusMachine

log = logging.getLogger("dsdn.router")


class DARouter:
    name = "router"

    def __init__(self, layers: Mapping[str, DALayer], machine: DAStatusMachine, pending: PendingStore,
                 clock: Callable[[], int]) -> None:
        self.layers, self.machine, self.pending, self.clock = layers, machine, pending, clock
        self.posts_by_layer: dict[str, int] = dict.fromkeys(layers, 0)
        self.fallthroughs = 0

    async def post(self, data: bytes) -> BlobRef:
        errors: list[str] = []
        for name in self.machine.write_order():
            try:
                ref = await self.layers[name].post(data)
            except DAError as exc:
                self.machine.observe(name, False, self.clock(), str(exc))
                errors.append(f"{name}: {exc}")
                self.fallthroughs += 1
                log.warning("write to %s DA failed, trying the next layer: %s", name, exc)
                continue
            self.machine.observe(name, True, self.clock())
            if name != PRIMARY:
                await self.pending.record(ref, data)
            self.posts_by_layer[name] += 1
            return ref
        raise DAUnavailable("no DA layer took the write: " + "; ".join(errors))

    async def get(self, ref: BlobRef) -> bytes:
        layer = self.layers.get(ref.layer)
        if layer is None:
            raise DAError(f"unknown DA layer {ref.layer!r}")
        return await layer.get(ref)
