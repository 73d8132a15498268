"""Commands and data for the admin tests: jobs that report progress and log, a command that fails
until told otherwise, a history of finished jobs, and scheduled-task rows."""

from __future__ import annotations

import random
import sqlite3
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import anyio
import anyio.to_thread

from asyncjobs import AsyncCommand, BackgroundJobs, JobOptions, job_logger, update_status
from tests.commands import (
    ALL_COMMANDS,
    Add,
    AddCommand,
    Fail,
    FailCommand,
    Sleep,
    SleepCommand,
    Sum,
)

XSS = "<script>alert(1)</script>"


@dataclass
class Steps:
    steps: int = 10
    delay: float = 0.3


class ProgressCommand(AsyncCommand[Steps]):
    """Reports progress, a status line and a log line at every step."""

    async def run(self, request: Steps) -> None:
        log = job_logger()
        log.info("starting %d steps", request.steps)
        for step in range(1, request.steps + 1):
            await anyio.sleep(request.delay)
            update_status(progress=step / request.steps, status=f"step {step} of {request.steps}")
            log.info("finished step %d of %d", step, request.steps)


@dataclass
class Switch:
    name: str


#: names of switches whose jobs fail
FAILING: set[str] = set()


class SwitchCommand(AsyncCommand[Switch]):
    """Fails while its switch is in :data:`FAILING`, succeeds after."""

    async def run(self, request: Switch) -> None:
        job_logger().info("switch %s", request.name)
        if request.name in FAILING:
            raise RuntimeError(f"switch {request.name} is off")


class RecordSum(AsyncCommand[Sum]):
    """A callback: receives an AddCommand's result."""

    async def run(self, request: Sum) -> None:
        job_logger().info("callback got %d", request.total)


@dataclass
class Ping:
    text: str


async def ping_api(request: Ping) -> str:
    return request.text.upper()


ADMIN_COMMANDS = [*ALL_COMMANDS, ProgressCommand, SwitchCommand, RecordSum]


def admin_jobs(jobs: BackgroundJobs) -> BackgroundJobs:
    for command in ADMIN_COMMANDS:
        jobs.register_command(command)
    jobs.register_api(Ping, ping_api)
    return jobs


async def wait_state(jobs: BackgroundJobs, job_id: int, *states: str, seconds: float = 10) -> str:
    with anyio.fail_after(seconds):
        while True:
            result = await jobs.get_job(job_id)
            if result is not None and str(result.state) in states:
                return str(result.state)
            await anyio.sleep(0.05)


async def seed_history(jobs: BackgroundJobs) -> dict[str, int]:
    """A small history: completed, failed, tagged, batched, API, dependent and delayed jobs."""
    ids: dict[str, int] = {}
    for n in range(3):
        ref = await jobs.enqueue_command(AddCommand, Add(n, n), JobOptions(tag="math"))
        ids[f"add{n}"] = ref.id
    ids["batch"] = (
        await jobs.enqueue_command(
            AddCommand, Add(5, 5), JobOptions(batch_id="batch-7", created_by="alice", user_id="u1")
        )
    ).id
    ids["failed"] = (
        await jobs.enqueue_command(FailCommand, Fail("kaput"), JobOptions(retry_limit=0))
    ).id
    ids["api"] = (await jobs.enqueue_api(Ping("hello"), JobOptions(worker="pinger"))).id
    ids["xss"] = (
        await jobs.enqueue_command(
            FailCommand, Fail(f"error {XSS}"), JobOptions(retry_limit=0, tag=XSS, ref_id=f"r{XSS}")
        )
    ).id
    for key in ("add0", "add1", "add2", "batch", "api"):
        await wait_state(jobs, ids[key], "Completed")
    for key in ("failed", "xss"):
        await wait_state(jobs, ids[key], "Failed")
    ids["child"] = (
        await jobs.enqueue_command(
            AddCommand, Add(1, 1), JobOptions(depends_on=ids["add0"], parent_id=ids["add0"])
        )
    ).id
    await wait_state(jobs, ids["child"], "Completed")
    ids["delayed"] = (
        await jobs.enqueue_command(
            SleepCommand,
            Sleep(0.01),
            JobOptions(run_after=datetime.now(UTC) + timedelta(hours=1), worker="later"),
        )
    ).id
    return ids


async def insert_task(
    dsn: str,
    name: str,
    schedule: str,
    *,
    last_job_id: int | None = None,
    last_run: datetime | None = None,
    next_run: datetime | None = None,
) -> None:
    """A scheduled_task row, written straight into the table (as the scheduler would)."""
    now = datetime.now(UTC)
    values = (name, schedule, "CMD", "PingCommand", "None", "null", last_run, last_job_id,
              next_run, now, now)  # fmt: skip
    if dsn.startswith("sqlite:///"):
        fmt = "%Y-%m-%d %H:%M:%S.%f"
        text = tuple(
            v.astimezone(UTC).strftime(fmt) if isinstance(v, datetime) else v for v in values
        )

        def write() -> None:
            db = sqlite3.connect(dsn.removeprefix("sqlite:///"), timeout=30)
            try:
                db.execute(
                    "INSERT INTO scheduled_task (name, schedule, request_type, command, request, "
                    "request_body, last_run, last_job_id, next_run, created_date, modified_date) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    text,
                )
                db.commit()
            finally:
                db.close()

        # In a thread: the runtime on this event loop may hold the write lock meanwhile.
        await anyio.to_thread.run_sync(write)
        return
    if dsn.startswith("mysql://"):
        from tests.db_mysql import connect

        naive = tuple(v.astimezone(UTC).replace(tzinfo=None) if isinstance(v, datetime) else v
                      for v in values)  # fmt: skip
        mysql = await connect(dsn)
        try:
            async with mysql.cursor() as cur:
                await cur.execute(
                    "INSERT INTO scheduled_task (name, schedule, request_type, command, request, "
                    "request_body, last_run, last_job_id, next_run, created_date, modified_date) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    naive,
                )
        finally:
            mysql.close()
        return
    import asyncpg

    parts = urlsplit(dsn)
    query = dict(parse_qsl(parts.query))
    schema = query.pop("schema", "public")
    conn = await asyncpg.connect(urlunsplit(parts._replace(query="")))
    try:
        await conn.execute(
            f'INSERT INTO "{schema}".scheduled_task (name, schedule, request_type, command, '
            "request, request_body, last_run, last_job_id, next_run, created_date, "
            "modified_date) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            *values,
        )
    finally:
        await conn.close()


#: made-up traffic for a lived-in dashboard:
#: (command, request type, worker, typical milliseconds, failure rate)
_TRAFFIC = [
    ("SendEmailCommand", "CMD", "smtp", 320, 0.02),
    ("ResizeImageCommand", "CMD", "images", 1400, 0.05),
    ("GenerateReportCommand", "CMD", None, 8200, 0.08),
    ("SyncInventory", "API", None, 2100, 0.03),
    ("CleanupCommand", "CMD", None, 90, 0.0),
]


def insert_past_summaries(dsn: str, count: int, *, seed: int = 7) -> Counter[str]:
    """Summary rows of jobs that ran over the last day (SQLite only, before any job is
    enqueued: they take ids 1..count and the queue's ids continue after them). Returns how
    many ended in each state."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    fmt = "%Y-%m-%d %H:%M:%S.%f"
    rows = []
    states: Counter[str] = Counter()
    for job_id in range(1, count + 1):
        # Busier in the last hours, like a day that is picking up.
        hours_ago = 23.5 * (1 - rng.random() ** 0.7)
        command, kind, worker, typical, failure = rng.choice(_TRAFFIC)
        created = now - timedelta(hours=hours_ago)
        duration = int(typical * rng.lognormvariate(0, 0.45))
        started = created + timedelta(milliseconds=rng.randint(5, 900))
        roll = rng.random()
        state = (
            "Failed" if roll < failure else "Cancelled" if roll < failure + 0.01 else "Completed"
        )
        states[state] += 1
        error = {"Failed": "upstream timed out", "Cancelled": "cancelled by an operator"}
        rows.append((
            job_id, f"past-{job_id}", worker, created.strftime(fmt), kind,
            command if kind == "CMD" else None, command if kind == "API" else "Request", state,
            started.strftime(fmt), (started + timedelta(milliseconds=duration)).strftime(fmt),
            duration, 1, None if state == "Completed" else state, error.get(state),
        ))  # fmt: skip
    db = sqlite3.connect(dsn.removeprefix("sqlite:///"), timeout=30)
    try:
        db.executemany(
            "INSERT INTO job_summary (id, ref_id, worker, created_date, request_type, command, "
            "request, state, started_date, completed_date, duration_ms, attempts, error_code, "
            "error_message) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        db.execute("DELETE FROM sqlite_sequence WHERE name = 'background_job'")
        db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('background_job', ?)", (count,))
        db.commit()
    finally:
        db.close()
    return states
