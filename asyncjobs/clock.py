"""Where the scheduler takes its time from, so tests can move time instead of waiting."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol

import anyio


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware."""

    async def sleep_until(self, deadline: datetime) -> None:
        """Return once ``now() >= deadline`` (or earlier; callers re-check the time)."""


class SystemClock:
    """The real clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep_until(self, deadline: datetime) -> None:
        await anyio.sleep(max(0.0, (deadline - self.now()).total_seconds()))
