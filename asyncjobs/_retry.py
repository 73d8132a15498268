"""Backoff between retries: exponential, capped, with jitter so retries of many jobs that failed
together do not stampede."""

from __future__ import annotations

import random
from datetime import timedelta


def retry_backoff(
    attempt: int,
    base: timedelta,
    cap: timedelta,
    rand: random.Random | None = None,
) -> timedelta:
    """The delay before the retry that follows execution number ``attempt`` (1-based).

    ``base * 2**(attempt-1)``, capped at ``cap``, then scaled by a random factor in [0.5, 1.0]
    ("equal jitter"). A zero base retries at once.
    """
    if base <= timedelta(0):
        return timedelta(0)
    exponent = min(max(attempt - 1, 0), 30)
    delay = min(base * (1 << exponent), cap)
    factor: float = 0.5 + 0.5 * (rand or random.Random()).random()
    return delay * factor
