"""The admin's reads: the named queries of ``sql/<dialect>/admin.sql``, rows in, plain dicts out.

Like :class:`asyncjobs.store.Store`, this is the only place (for the admin) that knows query
names. Each method is one autocommitting read on the dialect's connection.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from ..dialects import Dialect, Row
from ..store import Store, add_months, month_key, month_start, utcnow

#: the list views of the History page and the query behind each
LIST_QUERIES = {
    "summary": "admin_list_summary",
    "completed": "admin_list_completed",
    "failed": "admin_list_failed",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class JobFilter:
    """Validated filters of a job list; ``None`` means "any". Bound as parameters, never SQL."""

    state: str | None = None
    command: str | None = None
    request_type: str | None = None
    worker: str | None = None
    tag: str | None = None
    batch_id: str | None = None
    ref_id: str | None = None
    created_by: str | None = None
    user_id: str | None = None
    from_date: datetime | None = None
    to_date: datetime | None = None
    month: str | None = None  # YYYYMM
    text: str | None = None
    limit: int = 50
    offset: int = 0

    def params(self) -> dict[str, Any]:
        """The query parameters; the month narrows the date range to itself."""
        from_date, to_date = self.from_date, self.to_date
        if self.month is not None:
            start, end = month_start(self.month), month_start(add_months(self.month, 1))
            from_date = start if from_date is None else max(from_date, start)
            to_date = end if to_date is None else min(to_date, end)
        return {
            "state": self.state, "command": self.command, "request_type": self.request_type,
            "worker": self.worker, "tag": self.tag, "batch_id": self.batch_id,
            "ref_id": self.ref_id, "created_by": self.created_by, "user_id": self.user_id,
            "from_date": from_date, "to_date": to_date, "q": like_pattern(self.text),
            "limit": self.limit, "offset": self.offset,
        }  # fmt: skip


def like_pattern(text: str | None) -> str | None:
    """A lower-case ``LIKE`` pattern matching ``text`` anywhere; ``!`` escapes wildcards."""
    if text is None:
        return None
    escaped = text.lower().replace("!", "!!").replace("%", "!%").replace("_", "!_")
    return f"%{escaped}%"


def _plain(value: Any) -> Any:
    # Drivers return aggregates as Decimal (MySQL SUM/AVG); JSON wants numbers.
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def _rows(rows: list[Row]) -> list[dict[str, Any]]:
    return [{key: _plain(value) for key, value in row.items()} for row in rows]


class AdminStore:
    """Named admin queries of one dialect."""

    def __init__(self, dialect: Dialect, store: Store) -> None:
        self.dialect = dialect
        self.store = store
        self.monthly_tables = dialect.capabilities.monthly_archive_tables

    async def _fetch(
        self, query: str, params: dict[str, Any] | None = None, **templates: str
    ) -> list[dict[str, Any]]:
        async with self.dialect.connection() as conn:
            return _rows(await conn.fetch(query, params, **templates))

    async def active_counts(self) -> list[dict[str, Any]]:
        """Jobs in the queue by state, with how many are delayed by the database's clock."""
        return await self._fetch("admin_active_counts", {})

    async def recent_counts(self, since: datetime) -> list[dict[str, Any]]:
        return await self._fetch("admin_recent_counts", {"since": since})

    async def throughput(self, since: datetime) -> list[dict[str, Any]]:
        return await self._fetch("admin_throughput", {"since": since})

    async def command_stats(self, since: datetime) -> list[dict[str, Any]]:
        return await self._fetch("admin_command_stats", {"since": since})

    async def worker_stats(self, since: datetime) -> list[dict[str, Any]]:
        return await self._fetch("admin_worker_stats", {"since": since})

    async def active_by_command(self) -> list[dict[str, Any]]:
        return await self._fetch("admin_active_by_command")

    async def active_by_worker(self) -> list[dict[str, Any]]:
        return await self._fetch("admin_active_by_worker")

    async def running(self, limit: int) -> list[dict[str, Any]]:
        return await self._fetch("admin_running", {"limit": limit})

    async def queued(self, limit: int) -> list[dict[str, Any]]:
        return await self._fetch("admin_queued", {"limit": limit})

    async def months(self) -> list[str]:
        return await self.store.archive_months()

    async def list_jobs(self, view: str, where: JobFilter) -> list[dict[str, Any]]:
        """One page of a History view. The archives are read one month at a time."""
        query = LIST_QUERIES[view]
        if view == "summary":
            return await self._fetch(query, where.params())
        where = replace(where, month=where.month or month_key(utcnow()))
        assert where.month is not None
        if not self.monthly_tables:
            return await self._fetch(query, where.params())
        if where.month not in await self.months():
            return []  # no table for that month: nothing was archived then
        return await self._fetch(query, where.params(), month=where.month)

    async def related(self, job_id: int) -> list[dict[str, Any]]:
        return await self._fetch("admin_related", {"id": job_id})

    async def job_live(self, job_id: int, log_offset: int) -> dict[str, Any] | None:
        rows = await self._fetch("admin_job_live", {"id": job_id, "log_offset": log_offset})
        return rows[0] if rows else None

    async def scheduled_tasks(self) -> list[dict[str, Any]]:
        return await self._fetch("admin_scheduled_tasks")

    async def nodes(self) -> list[dict[str, Any]]:
        return await self._fetch("admin_nodes")
