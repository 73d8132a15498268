"""A clock that tests move by hand."""

from __future__ import annotations

from datetime import datetime, timedelta

import anyio


class FakeClock:
    def __init__(self, start: datetime) -> None:
        self.current = start
        self._moved: anyio.Event | None = None

    def now(self) -> datetime:
        return self.current

    async def sleep_until(self, deadline: datetime) -> None:
        while self.current < deadline:
            if self._moved is None:
                self._moved = anyio.Event()
            await self._moved.wait()

    def advance(self, delta: timedelta) -> None:
        self.current += delta
        if self._moved is not None:
            self._moved.set()
            self._moved = None
