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


@dataclass(frozen=True, slots=True)
class BlobRef:
    layer: str
    height: int
    commitment: bytes


class DALayer(Protocol):
    name: str

    async def post(self, data: bytes) -> BlobRef: ...

    async def get(self, ref: BlobRef) -> bytes: ...

    async def read_after(self, cursor: int, limit: int) -> list[tuple[BlobRef, bytes]]:
        """Blobs with height > cursor, in height order, at most ``limit``."""
        ...

    async def head(self) -> int:
        """Height of the newest blob (0 when empty)."""
        ...
