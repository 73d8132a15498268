"""Where the scheduler takes its time from: the database's clock by default, so processes
whose clocks disagree fire each occurrence on time, once; tests give one they move instead of
waiting."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
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


class DatabaseClock:
    """A clock (this process's, by default) set to the database's: ``sync`` reads the
    database's time and keeps the difference, which ``now`` adds. PostgreSQL, MySQL and SQL
    Server time leases and ``run_after`` by their own clock; the scheduler goes by it too, so
    a process whose clock runs ahead neither fires an occurrence early nor takes the ones
    between as missed."""

    def __init__(self, base: Clock | None = None) -> None:
        self.base: Clock = base or SystemClock()
        self.offset = timedelta(0)

    def now(self) -> datetime:
        return self.base.now() + self.offset

    async def sleep_until(self, deadline: datetime) -> None:
        await self.base.sleep_until(deadline - self.offset)

    async def sync(self, read: Callable[[], Awaitable[datetime]]) -> None:
        """Take the database's time from ``read``, as of half-way through the call."""
        before = self.base.now()
        database = await read()
        after = self.base.now()
        self.offset = database - (before + (after - before) / 2)
