"""The receipt routes' limits and formats, importable without Quart: the server (api/receipts.py) enforces them and
the `dsdn receipt` client (deploy/receipt_cli.py) checks its arguments against the same values; and the JSON rule
both read documents by (``unique_names``)."""

from __future__ import annotations

import re
from typing import Any

MAX_WAIT_MS = 30_000  # POST /receipts?wait_ms=
LOCK_WAIT_S = 10.0  # how long a submission waits for the proposer's own durable lock before answering
MAX_LIMIT = 1000  # GET /receipts?limit=
MAX_BULK = 1024  # receipts in one POST /receipts/batch
STATUSES = ("final", "pending", "locked", "conflict", "rejected")
RECEIPT_ID = re.compile(r"^[0-9a-fA-F]{64}$")


def unique_names(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose names are unique: ``{"capacity_gb": -5, "capacity_gb": 7}`` was taken as 7, the -5 never
    checked, and a proxy or an audit log reading the first value saw another request than the one carried out
    (a reviewer's reproduction)."""
    body = dict(pairs)
    if len(body) != len(pairs):
        seen: set[str] = set()
        twice = next(name for name, _ in pairs if name in seen or seen.add(name))  # type: ignore[func-returns-value]
        raise ValueError(f"the name {twice!r} is given more than once in one object")
    return body
