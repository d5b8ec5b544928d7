"""The receipt routes' limits and formats, importable without Quart: the server (api/receipts.py) enforces them and
the `dsdn receipt` client (deploy/receipt_cli.py) checks its arguments against the same values."""

from __future__ import annotations

import re

MAX_WAIT_MS = 30_000  # POST /receipts?wait_ms=
LOCK_WAIT_S = 10.0  # how long a submission waits for the proposer's own durable lock before answering
MAX_LIMIT = 1000  # GET /receipts?limit=
MAX_BULK = 1024  # receipts in one POST /receipts/batch
STATUSES = ("final", "pending", "locked", "conflict", "rejected")
RECEIPT_ID = re.compile(r"^[0-9a-fA-F]{64}$")
