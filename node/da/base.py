"""What every DA layer provides (post, get, follow from a cursor, health), its errors and references."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class DAError(Exception):
    """A DA operation failed."""


class DAUnavailable(DAError):
    """The layer cannot be reached or refuses service (retryable)."""


class DATimeout(DAUnavailable):
    """The layer did not answer within DA_TIMEOUT_MS."""


class BlobNotFound(DAError):
    """No blob at that reference."""


def read_failure(cursor: int, exc: DAError) -> tuple[str, bool]:
    """How a failed ``read_after(cursor)`` is reported (/ready, logs), and whether the layer answered it (an error
    such as a pruned height's ``header: not found``) rather than being out (DAUnavailable, DATimeout)."""
    return f"reading after {cursor} failed: {exc}", not isinstance(exc, DAUnavailable)


@dataclass(frozen=True, slots=True)
class BlobRef:
    layer: str
    height: int
    commitment: bytes


@dataclass(frozen=True, slots=True)
class Page:
    """What one ``read_after`` call found: blobs in log order, the cursor to continue from (it may
    move past empty heights), and whether the layer's head was reached."""

    items: list[tuple[BlobRef, bytes]]
    cursor: int
    at_head: bool
    # the log ``cursor`` counts in, where the layer names it (a blob store: its key and log id, hex); the consumer
    # keeps it with the cursor in the same step, so a snapshot never pairs a cursor with another log's name
    log: dict[str, str] | None = None


class DALayer(Protocol):
    name: str

    async def post(self, data: bytes) -> BlobRef: ...

    async def get(self, ref: BlobRef) -> bytes:
        """The blob's bytes; raise BlobNotFound if the layer does not have it."""
        ...

    async def read_after(self, cursor: int, limit: int, wait_s: float = 0.0) -> Page:
        """Blobs after ``cursor`` (a height or log position), in order, about ``limit`` of them; a
        layer with several blobs per height returns whole heights only, so the cursor never splits one.

        ``wait_s`` > 0 asks for a long poll: when nothing follows the cursor, a layer that can be told of new
        blobs (a blob store, a Celestia node's ``header.WaitForHeight``) waits up to ``wait_s`` for some before it
        answers; one that cannot answers at once, and the caller paces its next read itself."""
        ...

    async def head(self) -> int:
        """Height of the newest blob (0 when empty)."""
        ...
