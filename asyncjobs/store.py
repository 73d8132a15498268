"""The store: the one place that knows query names. Rows in, records out.

Every method is one transaction (or one autocommitting read). Batches are the unit: enqueue many,
claim many, finish many; single-job calls are batches of one.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import msgspec

from .dialects import Connection, Dialect, Row
from .exceptions import (
    DatabaseBusyError,
    DuplicateRefIdError,
    InvalidJobStateError,
    JobNotFoundError,
)
from .models import (
    _JOB_FIELDS,
    _SUMMARY_FIELDS,
    STORED_JSON_ENCODER,
    BackgroundJob,
    JobError,
    JobResult,
    JobState,
    JobSummary,
)

log = logging.getLogger("asyncjobs.store")
T = TypeVar("T")

MIGRATIONS = (
    "migration_1",
    "migration_2",
    "migration_3",
    "migration_4",
    "migration_5",
    "migration_6",
    "migration_7",
    "migration_8",
)


#: the index that holds at most one running job per named worker (PostgreSQL), and how many
#: times a claim that lost a race for such a worker is sent again
_BUSY_WORKER_INDEX = "ix_background_job_worker_running"
_BUSY_WORKER_RETRIES = 3


def utcnow() -> datetime:
    return datetime.now(UTC)


def month_key(moment: datetime) -> str:
    """The archive month of a created_date, e.g. ``202611``."""
    moment = moment.astimezone(UTC)
    return f"{moment.year:04d}{moment.month:02d}"


def month_start(key: str) -> datetime:
    return datetime(int(key[:4]), int(key[4:]), 1, tzinfo=UTC)


def add_months(key: str, months: int) -> str:
    index = int(key[:4]) * 12 + int(key[4:]) - 1 + months
    return f"{index // 12:04d}{index % 12 + 1:02d}"


# A job that keeps moving between the reads of get_job (requeued and finished again) is
# reported where the last read found it.
_RESULT_READ_ATTEMPTS = 4

#: NewJob's plain fields that are usually empty (see NewJob.as_json)
_OPTIONAL_JSON_KEYS = (
    "parent_id", "worker", "tag", "batch_id", "callback", "depends_on", "created_by",
    "user_id", "timeout_secs", "reply_to",
)  # fmt: skip


class NewJob(msgspec.Struct, omit_defaults=True):
    """A job about to be inserted; the runtime builds it from a request and options. A msgspec
    Struct: built in a quarter of a dataclass's time (enqueue_many builds one per job), and on
    PostgreSQL a batch becomes the insert's JSON parameter in one call that leaves out the empty
    fields (see Store._jobs_json)."""

    ref_id: str
    request_type: str
    request: str
    request_body: str
    retry_limit: int
    created_date: datetime
    command: str | None = None
    parent_id: int | None = None
    worker: str | None = None
    tag: str | None = None
    batch_id: str | None = None
    callback: str | None = None
    depends_on: int | None = None
    run_after: datetime | None = None
    created_by: str | None = None
    user_id: str | None = None
    timeout_secs: float | None = None
    reply_to: str | None = None
    args: dict[str, str] | None = None
    meta: dict[str, Any] | None = None
    priority: int = 0
    #: a dependent whose parent has not completed yet: out of the claim's indexes until it does
    #: (set by the store from its read of the parent, see Store._insert)
    parent_pending: bool = False

    def as_json(self, time_format: Any) -> dict[str, Any]:
        """The job as one object of an insert's JSON array parameter. Keys whose value is None
        are left out: every dialect's JSON reader gives NULL for a missing key, and most of a
        typical job's fields are empty (PostgreSQL's json_to_recordset took 2.0 ms instead of
        4.4 ms for 500 jobs: it parses every key it is sent). The optional keys are added one
        by one, which costs a third of building them all and filtering. (For dialects whose
        JSON reader wants their own text of a time; PostgreSQL's reads the Struct's encoding.)"""
        values: dict[str, Any] = {
            "ref_id": self.ref_id, "created_date": time_format(self.created_date),
            "request_type": self.request_type, "request": self.request,
            "request_body": self.request_body, "retry_limit": self.retry_limit,
            "priority": self.priority,
        }  # fmt: skip
        if self.command is not None:
            values["command"] = self.command
        for key in _OPTIONAL_JSON_KEYS:
            value = getattr(self, key)
            if value is not None:
                values[key] = value
        if self.run_after is not None:
            values["run_after"] = time_format(self.run_after)
        if self.args is not None:
            values["args"] = _json_text(self.args)
        if self.meta is not None:
            values["meta"] = _json_text(self.meta)
        if self.parent_pending:
            values["parent_pending"] = True
        return values


@dataclass(slots=True)
class Outcome:
    """How one execution ended, to be written with others in one transaction."""

    job: BackgroundJob
    state: JobState  # Completed, Failed, Cancelled, or Queued (retry / shutdown requeue)
    duration_ms: int | None = None
    response: str | None = None
    response_body: str | None = None
    error: JobError | None = None
    error_code: str | None = None
    #: a retry's backoff, waited out by the database's clock (as the claim judges run_after)
    retry_in: timedelta | None = None
    logs: str | None = None
    notified_date: datetime | None = None  # when the callback succeeded
    status: str | None = None  # the last status line the job reported
    progress: float | None = None  # the last progress it reported (a completed job's is 1)
    #: requeued before its code ran (its runner was cancelled first): the claim's count of
    #: the attempt is given back
    attempt_unused: bool = False


@dataclass(slots=True)
class FinishReport:
    """What a finish batch did: final states by job id (cascaded cancellations included)."""

    final: dict[int, JobState] = field(default_factory=dict)
    requeued: list[int] = field(default_factory=list)
    lost: list[int] = field(default_factory=list)  # the lease was gone: another node owns it


@dataclass(slots=True)
class Claim(FinishReport):
    """What ``complete_and_claim`` did: the jobs claimed, in claim order, and whether a job
    completed here has queued dependents (runnable now, claimed by the next claim)."""

    jobs: list[BackgroundJob] = field(default_factory=list)
    dependents: bool = False
    #: seconds until the next delayed job is due, by the database's clock (None: none is
    #: delayed, or the call did not claim: limit 0)
    next_due_in: float | None = None


_STATES = {str(state): state for state in JobState}
_encoder = msgspec.json.Encoder()


def _dumps(value: Any) -> str:
    """JSON text of a batch parameter (msgspec: several times faster than json.dumps)."""
    return _encoder.encode(value).decode()


#: New jobs as they are (see Store._jobs_json), and their args and meta on every dialect; a meta
#: value JSON cannot hold is stored as its text (as JobOptions checked it).
_new_jobs_encoder = STORED_JSON_ENCODER


def _json_text(value: Any) -> str:
    """args or meta as stored: JSON text (a value JSON cannot hold becomes its text)."""
    return _new_jobs_encoder.encode(value).decode()


def _microseconds(delay: timedelta | None) -> int | None:
    return None if delay is None else delay // timedelta(microseconds=1)


def _json_or_none(value: Any) -> Any:
    if value is None or not isinstance(value, str):
        return value
    return json.loads(value)


def _error_json(error: JobError | None) -> str | None:
    if error is None:
        return None
    return json.dumps({"message": error.message, "type": error.type, "traceback": error.traceback})


def row_to_job(row: Row) -> BackgroundJob:
    # On the claim's hot path: the None checks skip calls for the columns usually empty.
    values = {_JOB_FIELDS[k]: v for k, v in row.items() if k in _JOB_FIELDS}
    values["state"] = _STATES[row["state"]]
    error = row.get("error")
    if error is not None:
        error = _json_or_none(error)
        values["error"] = JobError(
            str(error.get("message")), str(error.get("type")), error.get("traceback")
        )
    if values.get("args") is not None:
        values["args"] = _json_or_none(values["args"])
    if values.get("meta") is not None:
        values["meta"] = _json_or_none(values["meta"])
    if values.get("timeout_secs") is not None:
        values["timeout_secs"] = float(values["timeout_secs"])
    if values.get("progress") is not None:
        values["progress"] = float(values["progress"])
    return BackgroundJob(**values)


def _started_job(new: NewJob, job_id: int, now: datetime) -> BackgroundJob:
    """The row insert_started_jobs stored, built here rather than read back (less to send and
    to decode on the path from enqueue to start)."""
    meta = new.meta
    if meta is not None:  # as stored: a value JSON cannot hold became its text
        meta = msgspec.json.decode(_new_jobs_encoder.encode(meta))
    return BackgroundJob(
        id=job_id, ref_id=new.ref_id, request_type=new.request_type, request=new.request,
        request_body=new.request_body, state=JobState.STARTED, created_date=new.created_date,
        retry_limit=new.retry_limit, parent_id=new.parent_id, worker=new.worker, tag=new.tag,
        batch_id=new.batch_id, callback=new.callback, depends_on=new.depends_on,
        run_after=new.run_after, created_by=new.created_by, command=new.command,
        user_id=new.user_id, started_date=now, attempts=1, timeout_secs=new.timeout_secs,
        last_activity_date=now, reply_to=new.reply_to,
        args=None if new.args is None else dict(new.args), meta=meta, priority=new.priority,
    )  # fmt: skip


def _job_columns(new: NewJob) -> dict[str, Any]:
    """The parameters of insert_job and insert_started_job: one job's columns (the latter has
    no worker, dependency or delay). args and meta are JSON text, as NewJob.as_json writes
    them."""
    return {
        "parent_id": new.parent_id, "ref_id": new.ref_id, "worker": new.worker, "tag": new.tag,
        "depends_on": new.depends_on, "run_after": new.run_after,
        "batch_id": new.batch_id, "callback": new.callback, "created_date": new.created_date,
        "created_by": new.created_by, "request_type": new.request_type,
        "command": new.command, "request": new.request, "request_body": new.request_body,
        "user_id": new.user_id, "retry_limit": new.retry_limit,
        "timeout_secs": new.timeout_secs, "reply_to": new.reply_to,
        "args": None if new.args is None else _json_text(new.args),
        "meta": None if new.meta is None else _json_text(new.meta),
        "priority": new.priority, "parent_pending": new.parent_pending,
    }  # fmt: skip


def row_to_summary(row: Row) -> JobSummary:
    values = {_SUMMARY_FIELDS[k]: v for k, v in row.items() if k in _SUMMARY_FIELDS}
    values["state"] = JobState(row["state"])
    return JobSummary(**values)


class Store:
    """Named queries of one dialect, wrapped in transactions, returning records."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.caps = dialect.capabilities
        self._known_months: set[str] = set()
        #: how a dialect's JSON reader wants a time written; None: ISO 8601 as msgspec writes it
        self._json_time = getattr(dialect, "json_time", None)
        self._time_format = self._json_time or (lambda d: d.isoformat())

    # -- schema ---------------------------------------------------------------------------

    async def migrate(self) -> int:
        """Apply pending migrations; returns the schema version."""
        async with self.dialect.transaction() as tx:
            await tx.script("create_schema_version")
            version = int((await tx.fetch("get_schema_version"))[0]["version"] or 0)
            for number, name in enumerate(MIGRATIONS, start=1):
                if number <= version:
                    continue
                await tx.script(name)
                await tx.execute("set_schema_version", {"version": number, "now": utcnow()})
                version = number
        if version > len(MIGRATIONS):
            # A newer version of asyncjobs migrated it (a rolling upgrade half done, say): this
            # one goes on, but it may not know all it finds there.
            log.warning(
                "the database's schema is at version %d, newer than this asyncjobs knows (%d): "
                "upgrade this process",
                version,
                len(MIGRATIONS),
            )
        return version

    async def ensure_archives(self, now: datetime, months_ahead: int = 1) -> None:
        """Create the archive (tables or partitions) for this month and the next ones, ahead of
        need, so archiving a job never runs DDL on its hot path."""
        current = month_key(now)
        async with self.dialect.transaction() as tx:
            for key in (add_months(current, i) for i in range(months_ahead + 1)):
                await self._ensure_month(tx, key)

    async def _ensure_month(self, tx: Connection, key: str) -> None:
        if key not in self._known_months:
            start, end = month_start(key), month_start(add_months(key, 1))
            await tx.script(
                "create_archive",
                month=key,
                start=start.strftime("%Y%m%d"),
                end=end.strftime("%Y%m%d"),
            )
            self._known_months.add(key)

    async def archive_months(self) -> list[str]:
        async with self.dialect.connection() as conn:
            return [str(r["month"]) for r in await conn.fetch("archive_months")]

    async def drop_months_before(self, keep_from: str) -> list[str]:
        """Retention: drop whole archive months older than ``keep_from`` (YYYYMM), but none
        from the month of the oldest job still queued or running on, or of the oldest parent
        a queued job depends on."""
        async with self.dialect.connection() as conn:
            oldest = await conn.fetch("oldest_active_created")
        for row in oldest:
            keep_from = min(keep_from, month_key(row["created_date"]))
        dropped = [m for m in await self.archive_months() if m < keep_from]
        async with self.dialect.transaction() as tx:
            for key in dropped:
                await tx.script("drop_archive", month=key)
                self._known_months.discard(key)
            await tx.execute("delete_old_summaries", {"before": month_start(keep_from)})
        return dropped

    # -- enqueue --------------------------------------------------------------------------

    async def enqueue(
        self,
        jobs: Sequence[NewJob],
        connection: AbstractAsyncContextManager[Connection] | None = None,
    ) -> list[tuple[int, str]]:
        """Insert jobs (and their summaries) atomically; returns (id, ref_id) in order.
        ``insert_jobs`` is atomic by itself (one round trip on PostgreSQL); only jobs that
        depend on another need a transaction around it, to check the parent's fate. In the
        application's transaction (``connection``), its commit is the application's."""
        if connection is not None:
            async with connection as tx:
                return await self._insert(tx, jobs, committed_here=False)

        async def insert() -> list[tuple[int, str]]:
            if all(job.depends_on is None for job in jobs):
                async with self.dialect.connection() as conn:
                    return await self._insert(conn, jobs, committed_here=True)
            async with self.dialect.transaction() as tx:
                return await self._insert(tx, jobs, committed_here=True)

        async def read_back() -> list[tuple[int, str]] | None:
            ids = await self._inserted_before(jobs, holder=None)
            return None if ids is None else [(ids[job.ref_id], job.ref_id) for job in jobs]

        return await self._insert_once(insert, read_back)

    async def _insert_once(
        self, insert: Callable[[], Awaitable[T]], read_back: Callable[[], Awaitable[T | None]]
    ) -> T:
        """Run an insert that commits by itself, exactly once even if the connection breaks
        before its reply comes: that reply may have been lost after the commit. The insert is
        then sent again. Its ref ids are unique, so the second insert either succeeds (the
        first never committed, or was rolled back) or fails on them, once the first committed,
        which ``read_back`` then confirms by reading the jobs back (a job that held the ref id
        before is no confirmation: the error stands)."""
        try:
            return await insert()
        except Exception as exc:
            # (A database locked past its busy timeout wrote nothing, and would only make the
            # caller wait as long again.)
            if not self.dialect.is_disconnect(exc) or isinstance(exc, DatabaseBusyError):
                raise
            log.warning("connection lost during an enqueue; sending it again: %r", exc)
        try:
            return await insert()
        except DuplicateRefIdError:
            found = await read_back()
            if found is None:
                raise
            return found

    async def _inserted_before(
        self, jobs: Sequence[NewJob], *, holder: str | None
    ) -> dict[str, int] | None:
        """The ids of ``jobs`` if an earlier attempt inserted them all: each ref id is there
        with the job's own creation time (and held by ``holder``, if given); else None."""
        refs = {job.ref_id: job for job in jobs}
        async with self.dialect.connection() as conn:
            rows = await conn.fetch("jobs_by_ref_ids", {"ref_ids": json.dumps(list(refs))})
        ids = {
            str(r["ref_id"]): int(r["id"])
            for r in rows
            if r["created_date"] == refs[str(r["ref_id"])].created_date
            and (holder is None or r["lease_owner"] == holder)
        }
        if len(ids) != len(refs):
            return None
        self.dialect.inserted_here(ids.values())
        return ids

    async def _insert(
        self, tx: Connection, jobs: Sequence[NewJob], *, committed_here: bool
    ) -> list[tuple[int, str]]:
        parents = await self._check_parents(tx, jobs)
        for job in jobs:
            # Out of the claim's way until the parent completes, as this plain read finds it
            # (one that completes before this commits is caught by release_dependents).
            if job.depends_on is not None:
                job.parent_pending = parents[job.depends_on] != "Completed"
        query, params = self._insert_query(jobs, "insert_job", "insert_jobs")
        with self.dialect.inserting() if committed_here else nullcontext():
            try:
                rows = await tx.fetch(query, params)
            except Exception as exc:
                self._raise_duplicate(exc, jobs)
                raise
            if parents:
                # A parent that already failed takes these dependents with it.
                id_list = json.dumps(sorted(int(r["id"]) for r in rows))
                dead = await tx.fetch("orphaned_dependents", {"ids": id_list})
                if dead:
                    await self._cascade(tx, [int(r["id"]) for r in dead], utcnow())
            by_ref = {str(r["ref_id"]): int(r["id"]) for r in rows}
            if committed_here:
                # The caller wakes its dispatcher. Jobs of an application's transaction run once
                # it commits, which only a change watch or notification tells.
                self.dialect.inserted_here(by_ref.values())
        return [(by_ref[job.ref_id], job.ref_id) for job in jobs]

    @staticmethod
    async def _check_parents(tx: Connection, jobs: Sequence[NewJob]) -> dict[int, str]:
        """Refuse jobs that depend on a job that does not exist: they would wait for it
        forever (and hold up their named worker). Checked before the insert, which may be
        part of an application's transaction that goes on after the error. Returns the
        parents' states."""
        parents = sorted({job.depends_on for job in jobs if job.depends_on is not None})
        if not parents:
            return {}
        rows = await tx.fetch("get_summaries", {"ids": json.dumps(parents)})
        states = {int(row["id"]): str(row["state"]) for row in rows}
        missing = sorted(set(parents) - set(states))
        if missing:
            raise JobNotFoundError(
                f"depends_on names no job: no job with id {', '.join(map(str, missing))}"
            )
        return states

    async def enqueue_started(self, jobs: Sequence[NewJob], node: str) -> list[BackgroundJob]:
        """Insert jobs already claimed by ``node``, which starts them at once: jobs with no
        worker, dependency or delay, enqueued by a process with room to run them. One query;
        returns the jobs in order."""
        if any(j.worker is not None or j.depends_on is not None or j.run_after for j in jobs):
            raise ValueError("only jobs with no worker, dependency or delay start at once")
        now = utcnow()
        query, params = self._insert_query(jobs, "insert_started_job", "insert_started_jobs")
        params["node"], params["now"] = node, now

        async def insert() -> dict[str, int]:
            with self.dialect.inserting():
                async with self.dialect.connection() as conn:
                    try:
                        rows = await conn.fetch(query, params)
                    except Exception as exc:
                        self._raise_duplicate(exc, jobs)
                        raise
                ids = {str(r["ref_id"]): int(r["id"]) for r in rows}
                self.dialect.inserted_here(ids.values())
            return ids

        ids = await self._insert_once(insert, lambda: self._inserted_before(jobs, holder=node))
        return [_started_job(job, ids[job.ref_id], now) for job in jobs]

    def _insert_query(
        self, jobs: Sequence[NewJob], one: str, many: str
    ) -> tuple[str, dict[str, Any]]:
        """Which insert and its parameters: one job (how most enqueues come) is a row of
        parameters, with no JSON to read; a batch is one JSON array, or a list of such rows
        where the dialect wants them."""
        if len(jobs) == 1:
            return one, _job_columns(jobs[0])
        if self.caps.batch_rows:
            return many, {"jobs": [_job_columns(job) for job in jobs]}
        return many, {"jobs": self._jobs_json(jobs)}

    def _jobs_json(self, jobs: Sequence[NewJob]) -> str:
        """The JSON array parameter of new jobs. PostgreSQL reads ISO times and nested JSON as
        they come, so the Structs are encoded as they are (500 jobs in 0.1 ms instead of 1.7).
        Otherwise a batch shares its creation time, so each distinct time is formatted once."""
        if self._json_time is None:
            return _new_jobs_encoder.encode(jobs).decode()
        formatted: dict[datetime, str] = {}
        time_format = self._time_format

        def format_time(moment: datetime) -> str:
            text = formatted.get(moment)
            if text is None:
                text = formatted[moment] = time_format(moment)
            return text

        return _dumps([job.as_json(format_time) for job in jobs])

    def _raise_duplicate(self, exc: Exception, jobs: Sequence[NewJob]) -> None:
        if self.dialect.is_unique_violation(exc):
            if len(jobs) == 1:
                taken = f"a job with ref_id {jobs[0].ref_id} already exists"
            else:
                # Which one the database does not say in every dialect: name the batch.
                more = ", ..." if len(jobs) > 5 else ""
                refs = ", ".join(job.ref_id for job in jobs[:5]) + more
                taken = f"one of the batch's ref_ids ({refs}) is taken by an existing job"
            raise DuplicateRefIdError(f"{taken}; ref_id must be unique") from exc

    # -- scheduled tasks ------------------------------------------------------------------

    async def upsert_task(self, task: Mapping[str, Any]) -> None:
        """Register or update a task by name; its run history is kept."""
        async with self.dialect.transaction() as tx:
            await tx.execute("upsert_task", {**task, "now": utcnow()})

    async def delete_task(self, name: str) -> bool:
        async with self.dialect.transaction() as tx:
            return await tx.execute("delete_task", {"name": name}) > 0

    async def list_tasks(self) -> list[Row]:
        async with self.dialect.connection() as conn:
            return await conn.fetch("list_tasks")

    async def database_time(self) -> datetime:
        """The database's clock now (UTC)."""
        async with self.dialect.connection() as conn:
            value = (await conn.fetch("database_time"))[0]["now"]
        now = datetime.fromisoformat(value) if isinstance(value, str) else value  # SQLite: text
        if not isinstance(now, datetime):
            raise TypeError(f"the database's time came as {value!r}")
        return now if now.tzinfo is not None else now.replace(tzinfo=UTC)

    async def due_tasks(self, now: datetime) -> list[Row]:
        async with self.dialect.connection() as conn:
            return await conn.fetch("due_tasks", {"now": now})

    async def next_task_due(self) -> datetime | None:
        async with self.dialect.connection() as conn:
            rows = await conn.fetch("next_task_due")
        value = rows[0]["next_run"] if rows else None
        return value if isinstance(value, datetime) else None

    async def fire_task(
        self,
        name: str,
        expected: datetime,
        fire_time: datetime,
        next_run: datetime | None,
        job: NewJob | None,
    ) -> tuple[bool, int | None]:
        """Take one occurrence of a task: move its next_run on from ``expected`` and enqueue
        its job, in one transaction. Only one process can move next_run from ``expected``,
        so each occurrence is enqueued exactly once however many schedulers run."""
        async with self.dialect.transaction() as tx:
            taken = await tx.execute(
                "advance_task",
                {"name": name, "expected": expected, "next_run": next_run, "fire": fire_time,
                 "now": utcnow()},
            )  # fmt: skip
            if taken != 1:
                return False, None
            if job is None:
                return True, None
            ((job_id, _),) = await self._insert(tx, [job], committed_here=True)
            await tx.execute("set_task_job", {"name": name, "job_id": job_id})
            return True, job_id

    async def run_task_now(self, name: str, job: NewJob) -> int:
        """Enqueue a task's job outside its schedule and record it as the task's last job."""

        async def insert() -> int:
            async with self.dialect.transaction() as tx:
                ((job_id, _),) = await self._insert(tx, [job], committed_here=True)
                await tx.execute("set_task_job", {"name": name, "job_id": job_id})
                return job_id

        async def read_back() -> int | None:
            ids = await self._inserted_before([job], holder=None)
            return None if ids is None else ids[job.ref_id]

        return await self._insert_once(insert, read_back)

    async def skip_task(self, name: str, expected: datetime, next_run: datetime | None) -> bool:
        """Move past an occurrence without running it (the previous run is still going)."""
        async with self.dialect.transaction() as tx:
            params = {"name": name, "expected": expected, "next_run": next_run, "now": utcnow()}
            return await tx.execute("skip_task", params) == 1

    async def job_is_active(self, job_id: int) -> bool:
        async with self.dialect.connection() as conn:
            return bool(await conn.fetch("get_active_job", {"id": job_id}))

    # -- claim and finish -----------------------------------------------------------------

    async def claim(
        self,
        node: str,
        limit: int,
        *,
        named_only: bool = False,
        skip_named: bool = False,
        now: datetime | None = None,
    ) -> Claim:
        """Claim up to ``limit`` runnable jobs for this node, in priority-then-age order."""
        return await self.complete_and_claim(
            node, (), limit, named_only=named_only, skip_named=skip_named, now=now
        )

    async def complete_and_claim(
        self,
        node: str,
        outcomes: Sequence[Outcome],
        limit: int,
        *,
        named_only: bool = False,
        skip_named: bool = False,
        now: datetime | None = None,
    ) -> Claim:
        """Record successful executions and claim up to ``limit`` jobs, atomically.

        ``complete_and_claim_jobs`` archives the completed jobs with their outcome, updates
        their summaries, removes them from the queue and claims the next jobs (one statement and
        one round trip on PostgreSQL). A named worker whose job completes here can get its next
        job in the same call. With monthly archive tables, each month's jobs are one call (the
        last one claims). ``named_only`` claims named workers' jobs alone, ``skip_named``
        all but theirs (their heads are not looked at).

        Sent again while it fails for a named worker that another claim made busy since its
        snapshot (PostgreSQL's index of running named jobs is unique: see migration 8). The
        statement commits by itself, or its transaction fails with it: a failed one did
        nothing."""
        now = now or utcnow()
        for attempt in range(_BUSY_WORKER_RETRIES + 1):
            try:
                return await self._complete_and_claim(
                    node, outcomes, limit, named_only, skip_named, now
                )
            except Exception as exc:
                busy = self.dialect.is_unique_violation(exc) and _BUSY_WORKER_INDEX in str(exc)
                if not busy or attempt == _BUSY_WORKER_RETRIES:
                    raise
                log.debug("a claim raced another for a named worker; claiming again: %r", exc)
        raise AssertionError("unreachable")

    async def _complete_and_claim(
        self,
        node: str,
        outcomes: Sequence[Outcome],
        limit: int,
        named_only: bool,
        skip_named: bool,
        now: datetime,
    ) -> Claim:
        claim = Claim()
        monthly = self.caps.monthly_archive_tables
        by_month: dict[str, list[Outcome]] = defaultdict(list)
        for outcome in outcomes:
            by_month[month_key(outcome.job.created_date) if monthly else ""].append(outcome)
        if not by_month:
            by_month[month_key(now) if monthly else ""] = []
        time_format = self._time_format
        async with self.dialect.connection() as conn:
            last = len(by_month) - 1
            for index, (key, group) in enumerate(by_month.items()):
                templates = {"month": key} if key else {}
                if key:
                    await self._ensure_month(conn, key)
                payload = _dumps(
                    [
                        {
                            "id": o.job.id, "attempts": o.job.attempts,
                            "duration_ms": o.duration_ms,
                            "response": o.response, "response_body": o.response_body,
                            "status": o.status, "logs": o.logs,
                            "notified_date": None
                            if o.notified_date is None
                            else time_format(o.notified_date),
                        }
                        for o in group
                    ]
                )  # fmt: skip
                params = {
                    "node": node, "now": now, "outcomes": payload,
                    "limit": limit if index == last else 0, "named_only": int(named_only),
                    "skip_named": int(skip_named),
                }  # fmt: skip
                rows = await conn.fetch("complete_and_claim_jobs", params, **templates)
                report = rows[0]
                if params["limit"]:
                    due_in = report.get("next_due_in")
                    claim.next_due_in = None if due_in is None else float(due_in)
                done = set(_json_or_none(report["done_ids"]) or ())
                claim.dependents = claim.dependents or bool(report["dependents"])
                for outcome in group:
                    if outcome.job.id in done:
                        claim.final[outcome.job.id] = JobState.COMPLETED
                    else:
                        claim.lost.append(outcome.job.id)
                claim.jobs += [row_to_job(r) for r in rows if r.get("id") is not None]
        claim.jobs.sort(key=lambda j: (-j.priority, j.id))
        return claim

    async def finish(self, node: str, outcomes: Sequence[Outcome]) -> FinishReport:
        """Write many outcomes in one transaction: final jobs are archived and leave the queue,
        failed and cancelled ones take their dependents with them."""
        now = utcnow()
        report = FinishReport()
        completed = [o for o in outcomes if o.state is JobState.COMPLETED]
        if completed:
            recorded = await self.complete_and_claim(node, completed, 0, now=now)
            report.final.update(recorded.final)
            report.lost += recorded.lost
        final = [o for o in outcomes if o.state.is_final and o.state is not JobState.COMPLETED]
        requeue = [o for o in outcomes if not o.state.is_final]
        if not final and not requeue:
            return report
        async with self.dialect.transaction() as tx:
            if final:
                await tx.executemany(
                    "set_outcome",
                    [
                        {
                            "id": o.job.id, "node": node, "attempts": o.job.attempts,
                            "state": str(o.state), "now": now,
                            "duration_ms": o.duration_ms, "response": o.response,
                            "response_body": o.response_body, "error": _error_json(o.error),
                            "error_code": o.error_code,
                            "progress": 1.0 if o.state is JobState.COMPLETED else o.progress,
                            "status": o.status, "logs": o.logs,
                            "notified_date": o.notified_date,
                        }
                        for o in final
                    ],
                )  # fmt: skip
            if requeue:
                await tx.executemany(
                    "requeue_job",
                    [
                        {
                            "id": o.job.id, "node": node, "attempts": o.job.attempts,
                            "unused": int(o.attempt_unused),
                            "retry_in_us": _microseconds(o.retry_in), "now": now,
                            "error": _error_json(o.error),
                            "error_code": o.error_code, "logs": o.logs,
                        }
                        for o in requeue
                    ],
                )  # fmt: skip
                report.requeued = [o.job.id for o in requeue]
                cancelled = await self._cancel_requested(tx, report.requeued, now)
                report.final.update(cancelled)
                report.requeued = [i for i in report.requeued if i not in cancelled]
            created = {o.job.id: o.job.created_date for o in final}
            failed_roots = [o.job.id for o in final if o.state is not JobState.COMPLETED]
            await self._archive(tx, created)
            ids = list(created) + report.requeued
            if ids:
                await tx.execute("mark_summaries", {"ids": json.dumps(ids)})
            if created:
                done = await tx.fetch("final_states", {"ids": json.dumps(list(created))})
                states = {int(r["id"]): JobState(r["state"]) for r in done}
                report.final.update(states)
                report.lost += [i for i in created if i not in states]
            if failed_roots:
                report.final.update(await self._cascade(tx, failed_roots, now))
            if created:
                await tx.execute("delete_archived", {"ids": json.dumps(list(created))})
            if report.requeued:
                await tx.execute("announce_requeued")
        return report

    async def _archive(self, tx: Connection, created: Mapping[int, datetime]) -> None:
        """Copy final jobs into their archive (the month of their created_date)."""
        if not created:
            return
        if not self.caps.monthly_archive_tables:
            ids = json.dumps(list(created))
            await tx.execute("archive_completed", {"ids": ids})
            await tx.execute("archive_failed", {"ids": ids})
            return
        by_month: dict[str, list[int]] = defaultdict(list)
        for job_id, created_date in created.items():
            by_month[month_key(created_date)].append(job_id)
        for key, month_ids in by_month.items():
            await self._ensure_month(tx, key)
            ids = json.dumps(month_ids)
            await tx.execute("archive_completed", {"ids": ids}, month=key)
            await tx.execute("archive_failed", {"ids": ids}, month=key)

    async def _cascade(
        self, tx: Connection, roots: Iterable[int], now: datetime
    ) -> dict[int, JobState]:
        """Cancel every queued dependent (transitively) of failed or cancelled jobs."""
        rows = await tx.fetch("cancel_dependents", {"ids": json.dumps(list(roots)), "now": now})
        if not rows:
            return {}
        created = {int(r["id"]): r["created_date"] for r in rows}
        await self._archive(tx, created)
        ids = json.dumps(list(created))
        await tx.execute("mark_summaries", {"ids": ids})
        await tx.execute("delete_archived", {"ids": ids})
        return dict.fromkeys(created, JobState.CANCELLED)

    async def mark_executed(self, node: str, outcome: Outcome) -> None:
        """The command succeeded and its callback is about to run. The result is kept with
        the job, and ``response`` is never NULL here (a command that returned nothing gets ''),
        so a job claimed again with a response is one whose command already ran: if this
        process stops during the callback, the next attempt runs only the callback."""
        response = "" if outcome.response is None else outcome.response
        async with self.dialect.transaction() as tx:
            await tx.execute(
                "mark_executed",
                {"id": outcome.job.id, "node": node, "attempts": outcome.job.attempts,
                 "now": utcnow(), "response": response, "response_body": outcome.response_body},
            )  # fmt: skip
            await tx.execute("mark_summaries", {"ids": json.dumps([outcome.job.id])})

    async def update_progress(self, updates: Sequence[Mapping[str, Any]]) -> None:
        """Write progress, status and new log lines of running jobs, many in one round trip."""
        if not updates:
            return
        async with self.dialect.transaction() as tx:
            await tx.executemany("update_progress", updates)

    # -- cancel and requeue ---------------------------------------------------------------

    async def cancel(
        self, ids: Sequence[int], reason: str
    ) -> tuple[dict[int, JobState], list[tuple[int, str | None]]]:
        """Cancel queued jobs outright; flag running ones. Returns the cancelled jobs' final
        states and the (id, node) of running jobs that their node must stop."""
        now = utcnow()
        error = _error_json(JobError(reason, "Cancelled"))
        id_list = json.dumps(list(ids))
        async with self.dialect.transaction() as tx:
            final = await self._cancel_queued(tx, id_list, error, now)
            running = await tx.fetch("request_cancel", {"ids": id_list})
        return final, [(int(r["id"]), r["lease_owner"]) for r in running]

    async def _cancel_queued(
        self, tx: Connection, id_list: str, error: str | None, now: datetime
    ) -> dict[int, JobState]:
        """Cancel those of the jobs (a JSON list) that are queued, and their dependents."""
        rows = await tx.fetch("cancel_queued", {"ids": id_list, "now": now, "error": error})
        cancelled = [int(r["id"]) for r in rows]
        final: dict[int, JobState] = dict.fromkeys(cancelled, JobState.CANCELLED)
        if cancelled:
            created = await self._created_dates(tx, cancelled)
            await self._archive(tx, created)
            await tx.execute("mark_summaries", {"ids": json.dumps(cancelled)})
            final.update(await self._cascade(tx, cancelled, now))
            await tx.execute("delete_archived", {"ids": json.dumps(cancelled)})
        return final

    async def _cancel_requested(
        self, tx: Connection, requeued: Sequence[int], now: datetime
    ) -> dict[int, JobState]:
        """Of jobs just put back in the queue, cancel those another process asked to cancel
        while they ran (their node did not hear of it before the attempt ended), with their
        dependents, instead of running them again."""
        if not requeued:
            return {}
        rows = await tx.fetch("cancel_requested_among", {"ids": json.dumps(list(requeued))})
        if not rows:
            return {}
        error = _error_json(JobError("cancelled while its attempt ended", "Cancelled"))
        return await self._cancel_queued(tx, json.dumps([int(r["id"]) for r in rows]), error, now)

    async def _created_dates(self, tx: Connection, ids: Sequence[int]) -> dict[int, datetime]:
        rows = await tx.fetch("get_summaries", {"ids": json.dumps(list(ids))})
        return {int(r["id"]): r["created_date"] for r in rows}

    async def held_jobs(self, node: str) -> dict[int, bool]:
        """The jobs leased to ``node``, each with whether its cancellation was asked for."""
        async with self.dialect.connection() as conn:
            rows = await conn.fetch("held_jobs", {"node": node})
        return {int(r["id"]): bool(r["cancel_requested"]) for r in rows}

    async def select_job_ids(self, state: JobState | None, worker: str | None) -> list[int]:
        async with self.dialect.connection() as conn:
            rows = await conn.fetch(
                "select_job_ids", {"state": None if state is None else str(state), "worker": worker}
            )
        return [int(r["id"]) for r in rows]

    async def requeue_failed(self, job_id: int) -> None:
        """Bring a failed or cancelled job back to the queue with the same id."""
        async with self.dialect.transaction() as tx:
            rows = await tx.fetch("get_summary", {"id": job_id})
            if not rows:
                raise JobNotFoundError(f"no job with id {job_id}")
            state = JobState(rows[0]["state"])
            if state not in (JobState.FAILED, JobState.CANCELLED):
                raise InvalidJobStateError(
                    f"job {job_id} is {state}; only failed or cancelled jobs can be requeued"
                )
            templates = self._month_templates(rows[0]["created_date"])
            failed = await tx.fetch(
                "get_failed_job",
                {"id": job_id, "created_date": rows[0]["created_date"]},
                **templates,
            )
            parent_pending = False
            if failed and failed[0]["depends_on"] is not None:
                parent_pending = await self._check_parent_can_complete(
                    tx, job_id, failed[0]["depends_on"]
                )
            meanwhile = InvalidJobStateError(
                f"job {job_id} was requeued meanwhile; only failed or cancelled jobs can be "
                "requeued"
            )
            try:
                moved = await tx.execute(
                    "requeue_failed",
                    {"id": job_id, "now": utcnow(), "parent_pending": parent_pending},
                    **templates,
                )
            except Exception as exc:
                # Another requeue of the job committed after the state was read above (the
                # read takes no lock): its insert holds the id.
                if self.dialect.is_unique_violation(exc):
                    raise meanwhile from exc
                raise
            if moved != 1:
                # Another requeue moved the archived row first: the summary, read again (each
                # statement reads what was committed before it), no longer says failed.
                again = await tx.fetch("get_summary", {"id": job_id})
                if again and JobState(again[0]["state"]) not in (
                    JobState.FAILED,
                    JobState.CANCELLED,
                ):
                    raise meanwhile
                raise JobNotFoundError(f"job {job_id} is not in the failed archive")
            await tx.execute("delete_failed", {"id": job_id}, **templates)
            await tx.execute("mark_summaries", {"ids": json.dumps([job_id])})

    @staticmethod
    async def _check_parent_can_complete(tx: Connection, job_id: int, parent_id: int) -> bool:
        """A dependent runs once its parent completes: requeued while the parent is failed,
        cancelled or forgotten, it would wait forever, and hold its named worker's queue.
        Returns whether the parent has yet to complete (the requeued job is then held)."""
        parent = await tx.fetch("get_summary", {"id": parent_id})
        if not parent:
            raise InvalidJobStateError(
                f"job {job_id} depends on job {parent_id}, which is no longer known: it could "
                "never run"
            )
        state = JobState(parent[0]["state"])
        if state in (JobState.FAILED, JobState.CANCELLED):
            raise InvalidJobStateError(
                f"job {job_id} depends on job {parent_id}, which is {state}: requeue job "
                f"{parent_id} first"
            )
        return state is not JobState.COMPLETED

    def _month_templates(self, created_date: datetime) -> dict[str, str]:
        if self.caps.monthly_archive_tables:
            return {"month": month_key(created_date)}
        return {}

    # -- nodes and recovery ---------------------------------------------------------------

    async def renew_node(self, node: str, host: str, pid: int, lease: timedelta) -> None:
        """The server databases time the lease by their own clock; SQLite, on the processes'
        one machine, by theirs."""
        params = {
            "node": node, "host": host, "pid": pid, "now": utcnow(),
            "lease_seconds": lease.total_seconds(),
        }  # fmt: skip
        async with self.dialect.transaction() as tx:
            await tx.execute("renew_node", params)

    async def delete_node(self, node: str) -> None:
        async with self.dialect.transaction() as tx:
            await tx.execute("delete_node", {"node": node})

    async def requeue_unknown(
        self, node: str, known: Iterable[int]
    ) -> tuple[dict[int, JobState], list[int]]:
        """Give back the jobs leased to ``node`` other than ``known`` (the ones it holds): what
        a claim committed when its reply was lost. They never started, so their attempt is
        taken back; those another process asked to cancel meanwhile are cancelled instead (the
        next claim would clear the request). Returns the final states and the requeued ids.
        The caller must have no claim in flight."""
        now = utcnow()
        params = {"node": node, "known": json.dumps(sorted(known)), "now": now}
        async with self.dialect.transaction() as tx:
            ids = [int(r["id"]) for r in await tx.fetch("requeue_unknown_jobs", params)]
            final = await self._cancel_requested(tx, ids, now)
            requeued = [i for i in ids if i not in final]
            if requeued:
                await tx.execute("mark_summaries", {"ids": json.dumps(requeued)})
                await tx.execute("announce_requeued")
        return final, requeued

    async def recover_orphans(self) -> tuple[dict[int, JobState], list[int]]:
        """Take back jobs held by nodes whose lease ran out: fail those without retries left,
        requeue the rest (the next claim counts the attempt). Also cancel queued dependents of
        failed or cancelled jobs that their parent's cascade missed (see stranded_parents)."""
        now = utcnow()
        async with self.dialect.transaction() as tx:
            failed_rows = await tx.fetch("fail_orphans", {"now": now})
            final: dict[int, JobState] = {}
            if failed_rows:
                failed = [int(r["id"]) for r in failed_rows]
                final = dict.fromkeys(failed, JobState.FAILED)
                created = await self._created_dates(tx, failed)
                await self._archive(tx, created)
                await tx.execute("mark_summaries", {"ids": json.dumps(failed)})
                final.update(await self._cascade(tx, failed, now))
                await tx.execute("delete_archived", {"ids": json.dumps(failed)})
            stranded = [int(r["id"]) for r in await tx.fetch("stranded_parents")]
            if stranded:
                final.update(await self._cascade(tx, stranded, now))
            requeued = [int(r["id"]) for r in await tx.fetch("requeue_orphans", {"now": now})]
            cancelled = await self._cancel_requested(tx, requeued, now)
            final.update(cancelled)
            requeued = [i for i in requeued if i not in cancelled]
            await tx.execute("expire_dead_nodes")
            if requeued:
                await tx.execute("mark_summaries", {"ids": json.dumps(requeued)})
                await tx.execute("announce_requeued")
        return final, requeued

    async def release_dependents(self) -> int:
        """Let dependents run whose parent completed while their enqueue was not yet committed
        (see Store._insert); returns how many."""
        async with self.dialect.transaction() as tx:
            return await tx.execute("release_dependents")

    # -- reads ----------------------------------------------------------------------------

    async def get_job(self, job_id: int) -> JobResult | None:
        async with self.dialect.connection() as conn:
            rows = await conn.fetch("get_summary", {"id": job_id})
            return await self._result(conn, rows)

    async def get_job_by_ref_id(self, ref_id: str) -> JobResult | None:
        async with self.dialect.connection() as conn:
            rows = await conn.fetch("get_summary_by_ref_id", {"ref_id": ref_id})
            return await self._result(conn, rows)

    async def _result(self, conn: Connection, rows: list[Row]) -> JobResult | None:
        # The summary and the job row are separate reads, and a job can move between them
        # (finished, or requeued from the archive): when the second read misses, read the
        # summary again and follow the job to where it went.
        result = None
        for _ in range(_RESULT_READ_ATTEMPTS):
            if not rows:
                return None
            summary = row_to_summary(rows[0])
            result = await self._located(conn, summary)
            if result.queued or result.completed or result.failed:
                return result
            rows = await conn.fetch("get_summary", {"id": summary.id})
            if rows and row_to_summary(rows[0]).state is summary.state:
                return result
        return result

    async def _located(self, conn: Connection, summary: JobSummary) -> JobResult:
        active = await conn.fetch("get_active_job", {"id": summary.id})
        if active:
            return JobResult(summary, queued=row_to_job(active[0]))
        if not summary.state.is_final:
            return JobResult(summary)
        templates = self._month_templates(summary.created_date)
        if self.caps.monthly_archive_tables and templates["month"] not in set(
            await self._months(conn)
        ):
            return JobResult(summary)
        params = {"id": summary.id, "created_date": summary.created_date}
        if summary.state is JobState.COMPLETED:
            done = await conn.fetch("get_completed_job", params, **templates)
            return JobResult(summary, completed=row_to_job(done[0]) if done else None)
        failed = await conn.fetch("get_failed_job", params, **templates)
        return JobResult(summary, failed=row_to_job(failed[0]) if failed else None)

    async def _months(self, conn: Connection) -> list[str]:
        return [str(r["month"]) for r in await conn.fetch("archive_months")]

    async def final_states(self, ids: Sequence[int]) -> dict[int, JobState]:
        async with self.dialect.connection() as conn:
            rows = await conn.fetch("final_states", {"ids": json.dumps(list(ids))})
        return {int(r["id"]): JobState(r["state"]) for r in rows}

    async def recent_durations(self, command: str, worker: str | None) -> list[int]:
        async with self.dialect.connection() as conn:
            rows = await conn.fetch("recent_durations", {"command": command, "worker": worker})
        return [int(r["duration_ms"]) for r in rows]
