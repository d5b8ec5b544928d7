"""Exponential backoff with full jitter, for every retry loop."""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, base_s: float, cap_s: float, rng: random.Random | None = None) -> None:
        self.base_s, self.cap_s = base_s, cap_s
        self.attempt = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        """Seconds to wait before the next attempt: uniform in (0, min(cap, base·2^attempt)]."""
        ceiling = min(self.cap_s, self.base_s * (2 ** min(self.attempt, 32)))
        self.attempt += 1
        return max(self.base_s / 10, self._rng.uniform(0, ceiling))

    def reset(self) -> None:
        self.attempt = 0
