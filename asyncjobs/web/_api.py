"""The admin's JSON API: what each endpoint reads or does, as plain dicts.

Live views are polled by every open page about once a second, so what they read is cached
briefly and shared by all viewers: however many pages are open, the database sees a few cheap
queries per second. Actions clear the cache so their effect shows at once.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import fields, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import anyio

from ..exceptions import (
    ConfigurationError,
    CronFormatError,
    InvalidJobStateError,
    JobNotFoundError,
    RegistrationError,
    SerializationError,
)
from ..models import FINAL_STATES, BackgroundJob, JobResult, JobState, JobSummary
from ..replyto import mask_reply_to
from ..schedule import Schedule
from ..scheduler import row_to_task
from ..store import utcnow
from ._admin_store import AdminStore, JobFilter
from ._http import HTTPError

if TYPE_CHECKING:
    from ..runtime import BackgroundJobs

#: the dashboard's window
WINDOW = timedelta(hours=24)
LIVE_TTL = 1.0  # counts, the queue, lists: at most one refresh per second for everyone
DASHBOARD_TTL = 5.0  # 24-hour aggregates move slowly and cost more
DURATIONS_TTL = 30.0
ACTIVE_STATES = (JobState.QUEUED, JobState.STARTED, JobState.EXECUTED)
_HIDDEN_FIELDS = frozenset({"parent_job", "user", "request_object", "result"})
_JOB_FIELDS = tuple(f.name for f in fields(BackgroundJob) if f.name not in _HIDDEN_FIELDS)
_SUMMARY_FIELDS = tuple(f.name for f in fields(JobSummary))


class TTLCache:
    """Values kept for a few seconds; concurrent misses of one key share one computation.

    Bounded by entries and by rows (a list counts its length, anything else one): a reader
    asking for many large pages, each a different search, holds at most ``max_rows`` rows."""

    def __init__(self, max_entries: int = 256, max_rows: int = 2_000) -> None:
        self._entries: dict[Hashable, tuple[float, Any, int]] = {}
        self._locks: dict[Hashable, anyio.Lock] = {}
        self._max_entries = max_entries
        self._max_rows = max_rows
        self._rows = 0

    async def get(self, key: Hashable, ttl: float, compute: Callable[[], Awaitable[Any]]) -> Any:
        entry = self._entries.get(key)
        if entry is not None and entry[0] > time.monotonic():
            return entry[1]
        lock = self._locks.setdefault(key, anyio.Lock())
        async with lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] > time.monotonic():
                return entry[1]  # another viewer refreshed it while this one waited
            value = await compute()
            self._store(key, time.monotonic() + ttl, value)
        self._drop_idle_locks()
        return value

    def _store(self, key: Hashable, expires: float, value: Any) -> None:
        self._remove(key)
        now = time.monotonic()
        for old in [k for k, (until, _v, _n) in self._entries.items() if until <= now]:
            self._remove(old)
        rows = len(value) if isinstance(value, list) else 1
        if rows > self._max_rows:
            return  # served, not kept
        # All fresh: the oldest go first.
        while self._entries and (
            len(self._entries) >= self._max_entries or self._rows + rows > self._max_rows
        ):
            self._remove(next(iter(self._entries)))
        self._entries[key] = (expires, value, rows)
        self._rows += rows

    def _remove(self, key: Hashable) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._rows -= entry[2]

    def _drop_idle_locks(self) -> None:
        for key in [k for k, lock in self._locks.items() if not lock.locked()]:
            del self._locks[key]

    def clear(self) -> None:
        self._entries.clear()
        self._rows = 0
        self._drop_idle_locks()


def job_dict(job: BackgroundJob) -> dict[str, Any]:
    data = {name: getattr(job, name) for name in _JOB_FIELDS}
    if job.reply_to is not None:  # its credentials are not for the admin's readers
        data["reply_to"] = mask_reply_to(job.reply_to)
    error = job.error
    data["error"] = (
        None
        if error is None
        else {"message": error.message, "type": error.type, "traceback": error.traceback}
    )
    return data


def summary_dict(summary: JobSummary) -> dict[str, Any]:
    return {name: getattr(summary, name) for name in _SUMMARY_FIELDS}


def describe_schedule(text: str) -> str:
    """``cron:0 * * * *|UTC`` → ``0 * * * * (UTC)``; ``interval:90.0`` → ``every 1m 30s``."""
    kind, _, rest = text.partition(":")
    try:
        Schedule.from_text(text)  # only a valid schedule is described
        if kind == "interval":
            return "every " + _duration(float(rest))
    except Exception:
        return text
    expression, _, zone = rest.partition("|")
    return f"{expression} ({zone or 'UTC'})"


def _duration(seconds: float) -> str:
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            parts.append(f"{int(seconds // size)}{unit}")
            seconds %= size
    if seconds or not parts:
        parts.append(f"{seconds:g}s")
    return " ".join(parts)


class AdminApi:
    """The endpoints' logic over one :class:`BackgroundJobs`."""

    def __init__(self, jobs: BackgroundJobs) -> None:
        self.jobs = jobs
        self.store = AdminStore(jobs.dialect, jobs.store)
        self.cache = TTLCache()

    # -- live views -----------------------------------------------------------------------

    async def overview(self) -> dict[str, Any]:
        return dict(await self.cache.get("overview", LIVE_TTL, self._overview))

    async def _overview(self) -> dict[str, Any]:
        now = utcnow()
        counts = {state.value: 0 for state in JobState}
        delayed = 0
        for row in await self.store.active_counts():
            if row["state"] in ACTIVE_STATES:
                counts[row["state"]] = int(row["total"])
                delayed += int(row["delayed_jobs"] or 0)
        for row in await self.store.recent_counts(now - WINDOW):
            if row["state"] in FINAL_STATES:
                counts[row["state"]] = int(row["total"])
        nodes = await self.store.nodes()
        for node in nodes:
            node["alive"] = bool(node["alive"])
        return {
            "now": now,
            "window_hours": int(WINDOW.total_seconds() // 3600),
            "counts": counts,
            "running": counts[JobState.STARTED] + counts[JobState.EXECUTED],
            "delayed": delayed,
            "nodes": nodes,
        }

    async def dashboard(self) -> dict[str, Any]:
        return dict(await self.cache.get("dashboard", DASHBOARD_TTL, self._dashboard))

    async def _dashboard(self) -> dict[str, Any]:
        now = utcnow()
        since = now - WINDOW
        hours = [
            (now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=23 - i))
            for i in range(24)
        ]
        buckets = {
            hour.strftime("%Y-%m-%d %H"): {
                "hour": hour,
                "Completed": 0,
                "Failed": 0,
                "Cancelled": 0,
            }
            for hour in hours
        }
        for row in await self.store.throughput(since):
            bucket = buckets.get(str(row["bucket"]))
            if bucket is not None:
                bucket[str(row["state"])] = int(row["total"])
        commands = _merge(
            await self.store.command_stats(since), await self.store.active_by_command()
        )
        workers = _merge(await self.store.worker_stats(since), await self.store.active_by_worker())
        return {
            "now": now,
            "since": since,
            "throughput": list(buckets.values()),
            "commands": commands,
            "workers": workers,
        }

    async def queue(self) -> dict[str, Any]:
        return dict(await self.cache.get("queue", LIVE_TTL, self._queue))

    async def _queue(self) -> dict[str, Any]:
        now = utcnow()
        running = await self.store.running(200)
        for job in running:
            await self._estimate(job, now)
        queued = await self.store.queued(200)
        for job in queued:
            job["waiting"] = _waiting_reason(job)
        overview = await self.overview()
        return {
            "now": now,
            "running": running,
            "queued": queued,
            "queued_total": overview["counts"][JobState.QUEUED],
            "running_total": overview["running"],
        }

    async def _estimate(self, job: dict[str, Any], now: datetime) -> None:
        """The typical duration of the job's command, its elapsed time and what remains."""
        job["cancel_requested"] = bool(job.get("cancel_requested"))
        started = job.get("started_date")
        elapsed = (now - started).total_seconds() if isinstance(started, datetime) else None
        job["elapsed_ms"] = None if elapsed is None else int(elapsed * 1000)
        job["average_ms"] = job["eta_ms"] = None
        job["progress_estimated"] = False
        if job.get("command") is None:
            return
        key = ("durations", job["command"], job.get("worker"))
        durations: list[int] = await self.cache.get(
            key,
            DURATIONS_TTL,
            lambda: self.jobs.store.recent_durations(job["command"], job["worker"]),
        )
        if not durations or elapsed is None:
            return
        average = sum(durations) / len(durations)
        job["average_ms"] = int(average)
        job["eta_ms"] = max(0, int(average - elapsed * 1000))
        if job.get("progress") is None and average > 0:
            job["progress"] = round(min(0.99, elapsed * 1000 / average), 3)
            job["progress_estimated"] = True

    # -- lists and details ----------------------------------------------------------------

    async def months(self) -> list[str]:
        months: list[str] = await self.cache.get("months", LIVE_TTL, self.store.months)
        return months

    async def list_jobs(self, view: str, where: JobFilter) -> dict[str, Any]:
        key = ("list", view, where)
        page = replace(where, limit=where.limit + 1)  # one more tells whether a next page exists
        rows: list[dict[str, Any]] = await self.cache.get(
            key, LIVE_TTL, lambda: self.store.list_jobs(view, page)
        )
        month = where.month
        if view != "summary" and month is None:
            month = utcnow().strftime("%Y%m")
        return {
            "view": view,
            "month": month,
            "months": await self.months(),
            "items": rows[: where.limit],
            "limit": where.limit,
            "offset": where.offset,
            "has_more": len(rows) > where.limit,
        }

    async def job(self, *, job_id: int | None = None, ref_id: str | None = None) -> dict[str, Any]:
        if job_id is not None:
            result = await self.jobs.get_job(job_id)
            missing = f"no job with id {job_id}"
        else:
            assert ref_id is not None
            result = await self.jobs.get_job_by_ref_id(ref_id)
            missing = f"no job with ref id {ref_id!r}"
        if result is None:
            raise HTTPError(404, missing)
        return await self._detail(result)

    async def _detail(self, result: JobResult) -> dict[str, Any]:
        summary = result.summary
        job = result.job
        state = result.state
        location = (
            "queue" if result.queued else "completed" if result.completed
            else "failed" if result.failed else "summary"
        )  # fmt: skip
        related = await self.store.related(summary.id)
        linked = {i for i in (summary.parent_id, summary.depends_on) if i is not None}
        others = {}
        for other_id in linked:
            other = await self.jobs.get_job(other_id)
            others[other_id] = None if other is None else summary_dict(other.summary)
        return {
            "summary": summary_dict(summary),
            "job": None if job is None else job_dict(job),
            "state": state,
            "location": location,
            "parent": others.get(summary.parent_id) if summary.parent_id else None,
            "depends_on_job": others.get(summary.depends_on) if summary.depends_on else None,
            "dependents": [r for r in related if r["depends_on"] == summary.id],
            "children": [
                r for r in related if r["parent_id"] == summary.id and r["depends_on"] != summary.id
            ],
            # Where the live log tail starts, in the database's own count (MySQL counts
            # characters, SQL Server UTF-16 units): the page cannot tell.
            "log_length": self.jobs.dialect.text_length(job.logs) if job and job.logs else 0,
            "can_cancel": state in ACTIVE_STATES,
            "can_requeue": state in (JobState.FAILED, JobState.CANCELLED) and location == "failed",
        }

    async def live(self, job_id: int, log_offset: int) -> dict[str, Any]:
        """A job's progress and the log text after ``log_offset``; ``active`` is false once it
        left the queue (the panel then reloads the whole job)."""
        row = await self.store.job_live(job_id, log_offset)
        if row is None:
            result = await self.jobs.get_job(job_id)
            if result is None:
                raise HTTPError(404, f"no job with id {job_id}")
            return {"id": job_id, "active": False, "state": result.state}
        length = int(row.pop("log_length") or 0)
        tail = row.pop("log_tail") or ""
        if length < log_offset:  # the log was replaced: send it whole
            row = await self.store.job_live(job_id, 0) or row
            tail = row.pop("log_tail", "") or ""
            row.pop("log_length", None)
        row["cancel_requested"] = bool(row.get("cancel_requested"))
        return {**row, "active": True, "logs": tail, "log_offset": length}

    async def scheduled(self) -> dict[str, Any]:
        tasks: list[dict[str, Any]] = await self.cache.get(
            "scheduled", LIVE_TTL, self.store.scheduled_tasks
        )
        now = utcnow()
        items = []
        for task in tasks:
            item = dict(task, enabled=bool(task["enabled"]))
            item.pop("options")
            item["schedule_text"] = describe_schedule(str(task["schedule"]))
            if item["next_run"] is None and item["enabled"]:
                try:
                    item["next_run"] = Schedule.from_text(str(task["schedule"])).next_after(now)
                except Exception:
                    item["next_run"] = None
            item["cannot_run_now"] = self._cannot_run_now(task)
            item["can_run_now"] = item["cannot_run_now"] is None
            items.append(item)
        # At the top: this runtime has Run now at all (older ones had not); each task says
        # whether it can run now from here.
        return {"now": now, "tasks": items, "can_run_now": True}

    def _cannot_run_now(self, task: dict[str, Any]) -> str | None:
        """Why Run now would fail for a listed task (as :meth:`run_task` would say), or None."""
        try:
            # The request body is decoded only when a transient task runs: not needed here.
            parsed = row_to_task({**task, "request_body": None})
        except (ConfigurationError, CronFormatError) as exc:
            return f"this version cannot read the task: {exc}"
        if not parsed.options.run_command:
            return None  # enqueued as a job: whichever process runs jobs will run it
        if not self.jobs.execute:
            return (
                "the task runs in the process that starts it (run_command=True), and this "
                "process does not execute jobs"
            )
        try:
            if parsed.command is not None:
                self.jobs.registry.command(parsed.command)
            else:
                self.jobs.registry.api(parsed.request)
        except RegistrationError as exc:
            return str(exc)
        return None

    # -- actions --------------------------------------------------------------------------

    async def cancel(self, job_id: int) -> dict[str, Any]:
        try:
            if await self.jobs.cancel_job(job_id):
                return {"cancelled": 1, "id": job_id}
            result = await self.jobs.get_job(job_id)
        finally:
            self.cache.clear()
        if result is None:
            raise HTTPError(404, f"no job with id {job_id}")
        raise HTTPError(
            409, f"job {job_id} is {result.state}; only queued or running jobs can be cancelled"
        )

    async def cancel_many(
        self, ids: list[int] | None, state: JobState | None, worker: str | None
    ) -> dict[str, Any]:
        try:
            if ids is not None:
                count = 0
                for job_id in ids:
                    count += await self.jobs.cancel_job(job_id)
                return {"cancelled": count}
            return {"cancelled": await self.jobs.cancel_jobs(state=state, worker=worker)}
        finally:
            self.cache.clear()

    async def requeue(self, job_id: int) -> dict[str, Any]:
        try:
            await self.jobs.requeue_failed_job(job_id)
        except JobNotFoundError as exc:
            raise HTTPError(404, str(exc)) from None
        except InvalidJobStateError as exc:
            raise HTTPError(409, str(exc)) from None
        finally:
            self.cache.clear()
        return {"requeued": 1, "id": job_id}

    async def requeue_many(self, ids: list[int]) -> dict[str, Any]:
        requeued: list[int] = []
        errors: dict[str, str] = {}
        try:
            for job_id in ids:
                try:
                    await self.jobs.requeue_failed_job(job_id)
                except (JobNotFoundError, InvalidJobStateError) as exc:
                    errors[str(job_id)] = str(exc)
                else:
                    requeued.append(job_id)
        finally:
            self.cache.clear()
        return {"requeued": requeued, "errors": errors}

    async def run_task(self, name: str) -> dict[str, Any]:
        try:
            ref = await self.jobs.run_scheduled_task(name)
        except JobNotFoundError as exc:
            raise HTTPError(404, str(exc) or f"no scheduled task named {name!r}") from None
        except (ConfigurationError, CronFormatError, RegistrationError, SerializationError) as exc:
            # The task exists but cannot run from here: a transient task in a process that
            # does not execute jobs or does not know its command, or one this version cannot
            # read (another version's, or written by hand).
            raise HTTPError(409, f"task {name!r} cannot run now: {exc}") from None
        finally:
            self.cache.clear()
        return {
            "name": name,
            "job_id": None if ref is None else ref.id,
            "ref_id": None if ref is None else ref.ref_id,
        }


def _merge(stats: list[dict[str, Any]], active: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Outcomes over the window joined with what is queued and running now, by name."""
    rows: dict[Any, dict[str, Any]] = {}
    empty = {"completed": 0, "failed": 0, "cancelled": 0, "avg_ms": None, "p95_ms": None}
    for row in stats:
        rows[row["name"]] = {"queued": 0, "running": 0, **row}
    for row in active:
        rows.setdefault(row["name"], {**empty, "name": row["name"]}).update(
            {key: value for key, value in row.items() if key != "request_type" or value}
        )
    for row in rows.values():
        for key in ("completed", "failed", "cancelled", "queued", "running"):
            row[key] = int(row.get(key) or 0)
        if row.get("avg_ms") is not None:
            row["avg_ms"] = round(float(row["avg_ms"]), 1)
        if row.get("p95_ms") is not None:
            row["p95_ms"] = int(row["p95_ms"])
    return sorted(
        rows.values(),
        key=lambda r: (
            -(r["completed"] + r["failed"] + r["queued"] + r["running"]),
            str(r["name"]),
        ),
    )


def _waiting_reason(job: dict[str, Any]) -> dict[str, Any]:
    """Why a queued job has not started: its run_after (still ahead by the database's clock),
    its parent, the job ahead of it on its named worker, or the job that worker is running
    (the first that applies)."""
    if job.pop("is_delayed", None):
        return {"reason": "run_after", "until": job.get("run_after")}
    if job.get("depends_on") is not None and job.get("parent_state") != JobState.COMPLETED:
        return {
            "reason": "depends_on",
            "job_id": job["depends_on"],
            "state": job.get("parent_state"),
        }
    if job.get("worker_ahead_id") is not None:
        return {"reason": "worker_queue", "worker": job["worker"], "job_id": job["worker_ahead_id"]}
    if job.get("worker_running_id") is not None:
        return {
            "reason": "worker_busy",
            "worker": job["worker"],
            "job_id": job["worker_running_id"],
        }
    return {"reason": "ready"}
