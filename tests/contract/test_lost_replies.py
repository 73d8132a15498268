"""A statement that commits but whose reply never arrives: the connection breaks after the
server answered, so the caller cannot tell whether the work was done. Each test breaks one
connection that way on purpose (in asyncpg's call on PostgreSQL, whose dialect decides what
to send again; in the dialect's connection on MySQL and SQL Server, which send nothing again)
and checks that nothing is done twice and nothing is stranded: an enqueue is neither lost nor
duplicated and returns its job, a claim is not sent again blindly. The last test has the
server drop every session again and again during a drain. (SQLite runs in-process: there is
no connection to lose.)"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest

from asyncjobs import BackgroundJobs, JobOptions, JobState, Schedule
from tests.commands import EVENTS, Sleep, SleepCommand

pytestmark = [pytest.mark.anyio, pytest.mark.dialects("postgres", "mysql", "mssql")]
Factory = Callable[..., BackgroundJobs]
#: a reply's rows: whether this is the reply to lose
Wanted = Callable[[list[Any]], bool]


async def break_connection(dialect_name: str, driver_conn: Any) -> Exception:
    """Close a driver connection the way a network failure would, after the server answered;
    returns what the driver raises then."""
    if dialect_name == "postgres":
        import asyncpg

        driver_conn.terminate()
        return asyncpg.ConnectionDoesNotExistError(
            "connection was closed in the middle of operation"
        )
    if dialect_name == "mysql":
        import aiomysql

        driver_conn.close()
        return aiomysql.OperationalError(2013, "Lost connection to server during query")
    import pyodbc

    await driver_conn.close()
    return pyodbc.OperationalError("08S01", "Communication link failure")


def lose_reply(monkeypatch: pytest.MonkeyPatch, dialect_name: str, wanted: Wanted) -> list[Any]:
    """Lose the first reply whose rows satisfy ``wanted``: the server has run (and committed)
    the statement, then the connection breaks before the caller sees the rows. Returns the list
    the lost rows are put in."""
    lost: list[Any] = []

    def should_lose(rows: list[Any]) -> bool:
        if lost or not wanted(rows):
            return False
        lost.append(rows)
        return True

    if dialect_name == "postgres":
        import asyncpg

        real_pg = asyncpg.connection.Connection.fetch

        async def pg_fetch(self: Any, query: str, *args: Any, **kwargs: Any) -> Any:
            rows = await real_pg(self, query, *args, **kwargs)
            if should_lose([dict(r) for r in rows]):
                raise await break_connection(dialect_name, self)
            return rows

        monkeypatch.setattr(asyncpg.connection.Connection, "fetch", pg_fetch)
    elif dialect_name == "mysql":
        from asyncjobs.dialects.mysql import MysqlConnection

        real_my = MysqlConnection.fetch

        async def my_fetch(self: Any, *args: Any, **kwargs: Any) -> list[Any]:
            rows = await real_my(self, *args, **kwargs)
            if should_lose(rows):
                raise await break_connection(dialect_name, self._conn)
            return rows

        monkeypatch.setattr(MysqlConnection, "fetch", my_fetch)
    else:
        from asyncjobs.dialects.mssql import MssqlConnection

        real_ms = MssqlConnection.fetch

        async def ms_fetch(self: Any, *args: Any, **kwargs: Any) -> list[Any]:
            rows = await real_ms(self, *args, **kwargs)
            if should_lose(rows):
                raise await break_connection(dialect_name, self._conn)
            return rows

        monkeypatch.setattr(MssqlConnection, "fetch", ms_fetch)
    return lost


def lose_commit_reply(monkeypatch: pytest.MonkeyPatch, dialect_name: str) -> list[bool]:
    """Lose the reply to the first COMMIT of a transaction: it commits, then the connection
    breaks. Returns a list that holds True once it happened."""
    lost: list[bool] = []
    if dialect_name == "postgres":
        import asyncpg

        real_pg = asyncpg.connection.Connection.execute

        async def pg_execute(self: Any, query: str, *args: Any, **kwargs: Any) -> Any:
            status = await real_pg(self, query, *args, **kwargs)
            if not lost and query.strip().upper().startswith("COMMIT"):
                lost.append(True)
                raise await break_connection(dialect_name, self)
            return status

        monkeypatch.setattr(asyncpg.connection.Connection, "execute", pg_execute)
    elif dialect_name == "mysql":
        import aiomysql

        real_my = aiomysql.Connection.commit

        async def my_commit(self: Any) -> None:
            await real_my(self)
            if not lost:
                lost.append(True)
                raise await break_connection(dialect_name, self)

        monkeypatch.setattr(aiomysql.Connection, "commit", my_commit)
    else:
        from asyncjobs.dialects import mssql

        real_ms = mssql._statement

        async def ms_statement(conn: Any, sql: str) -> None:
            await real_ms(conn, sql)
            if not lost and sql == mssql._COMMIT:
                lost.append(True)
                raise await break_connection(dialect_name, conn)

        monkeypatch.setattr(mssql, "_statement", ms_statement)
    return lost


def inserted(ref_prefix: str) -> Wanted:
    """The reply of an insert of jobs whose ref ids start with ``ref_prefix``."""
    return lambda rows: bool(rows) and str(rows[0].get("ref_id", "")).startswith(ref_prefix)


def claimed(rows: list[Any]) -> bool:
    """The reply of a claim that took jobs."""
    return bool(rows) and "done_ids" in rows[0] and rows[0].get("id") is not None


async def jobs_with_ref(jobs: BackgroundJobs, ref_id: str) -> list[int]:
    found = await jobs.get_job_by_ref_id(ref_id)
    return [] if found is None else [found.summary.id]


async def test_an_enqueue_whose_reply_was_lost_returns_its_job_once(
    make_jobs: Factory, dialect_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with make_jobs(commands=[SleepCommand], execute=False) as producer:
        lost = lose_reply(monkeypatch, dialect_name, inserted("lost-enqueue"))
        ref = await producer.enqueue_command(
            SleepCommand, Sleep(0, "a"), JobOptions(ref_id="lost-enqueue")
        )
        assert len(lost) == 1 and int(lost[0][0]["id"]) == ref.id
        assert await jobs_with_ref(producer, "lost-enqueue") == [ref.id]
        assert len(await producer.store.select_job_ids(JobState.QUEUED, None)) == 1


async def test_an_enqueue_many_whose_reply_was_lost_returns_its_jobs_once(
    make_jobs: Factory, dialect_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    refs = [f"lost-many-{i}" for i in range(3)]
    async with make_jobs(commands=[SleepCommand], execute=False) as producer:
        lost = lose_reply(monkeypatch, dialect_name, inserted("lost-many"))
        jobs = await producer.enqueue_many(
            [(SleepCommand, Sleep(0, r), JobOptions(ref_id=r)) for r in refs]
        )
        assert len(lost) == 1
        assert [job.ref_id for job in jobs] == refs
        assert sorted(int(r["id"]) for r in lost[0]) == sorted(job.id for job in jobs)
        for job in jobs:
            assert await jobs_with_ref(producer, job.ref_id) == [job.id]
        assert len(await producer.store.select_job_ids(JobState.QUEUED, None)) == 3


@pytest.mark.parametrize("lost_at", ["commit", "insert"])
async def test_a_scheduled_task_run_now_whose_reply_was_lost_enqueues_once(
    make_jobs: Factory, dialect_name: str, monkeypatch: pytest.MonkeyPatch, lost_at: str
) -> None:
    # The COMMIT's reply lost: the job exists, and is read back. The insert's reply lost inside
    # the transaction: the server rolls it back, so the job that reply named does not exist,
    # and the second attempt inserts it.
    async with make_jobs(commands=[SleepCommand], execute=False) as producer:
        await producer.recurring_command(SleepCommand, Schedule.daily, Sleep(0, "t"), name="t")
        if lost_at == "commit":
            lost: list[Any] = lose_commit_reply(monkeypatch, dialect_name)
        else:
            lost = lose_reply(
                monkeypatch, dialect_name, lambda rows: bool(rows) and "ref_id" in rows[0]
            )
        ref = await producer.run_scheduled_task("t")
        assert ref is not None and len(lost) == 1
        if lost_at == "insert":
            assert int(lost[0][0]["id"]) != ref.id
        (task,) = await producer.scheduled_tasks()
        assert task.last_job_id == ref.id
        assert await producer.store.select_job_ids(JobState.QUEUED, None) == [ref.id]


async def test_an_enqueue_that_never_reached_the_server_is_sent_again(
    make_jobs: Factory, dialect_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The other side of the same failure: the connection broke before the insert ran (here it
    # is rolled back), so the enqueue is sent again rather than reported failed.
    async with make_jobs(commands=[SleepCommand], execute=False) as producer:
        sent: list[int] = []
        real = producer.store._insert

        async def breaks_first(*args: Any, **kwargs: Any) -> Any:
            sent.append(1)
            if len(sent) == 1:
                raise ConnectionResetError("connection reset before the insert ran")
            return await real(*args, **kwargs)

        monkeypatch.setattr(producer.store, "_insert", breaks_first)
        ref = await producer.enqueue_command(
            SleepCommand, Sleep(0, "b"), JobOptions(ref_id="never-sent")
        )
        assert len(sent) == 2
        assert await jobs_with_ref(producer, "never-sent") == [ref.id]


async def test_a_job_started_at_once_whose_reply_was_lost_runs_once_here(
    make_jobs: Factory, dialect_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    EVENTS.clear()
    async with make_jobs(commands=[SleepCommand]) as jobs:
        # The first claim finds the queue drained; from then on enqueues start at once.
        warm_up = await jobs.enqueue_command(SleepCommand, Sleep(0, "warm-up"))
        await jobs.wait_for_job(warm_up.id)
        lost = lose_reply(monkeypatch, dialect_name, inserted("lost-start"))
        ref = await jobs.enqueue_command(
            SleepCommand, Sleep(0, "lost-start"), JobOptions(ref_id="lost-start")
        )
        assert len(lost) == 1 and int(lost[0][0]["id"]) == ref.id
        with anyio.fail_after(20):
            result = await jobs.wait_for_job(ref.id)
        assert result.state is JobState.COMPLETED and result.summary.attempts == 1
        assert [name for event, name, _ in EVENTS if event == "start"] == ["warm-up", "lost-start"]


async def test_a_claim_whose_reply_was_lost_is_not_sent_again_blindly(
    make_jobs: Factory, dialect_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A claim sent again on a new connection would take other jobs and leave the first
    # claim's Started under this live node, where no lease runs out.
    labels = [f"lost-claim-{i}" for i in range(3)]
    EVENTS.clear()
    async with make_jobs(commands=[SleepCommand], execute=False) as producer:
        job_ids = [(await producer.enqueue_command(SleepCommand, Sleep(0, n))).id for n in labels]
    jobs = make_jobs(commands=[SleepCommand])
    lost = lose_reply(monkeypatch, dialect_name, claimed)
    async with jobs:
        with anyio.fail_after(20):
            results = [await jobs.wait_for_job(job_id) for job_id in job_ids]
    assert len(lost) == 1 and sorted(int(r["id"]) for r in lost[0]) == sorted(job_ids)
    assert [r.summary.attempts for r in results] == [1, 1, 1]
    assert sorted(name for event, name, _ in EVENTS if event == "start") == labels


def completed(rows: list[Any]) -> bool:
    """The reply of a completion that recorded jobs."""
    return bool(rows) and "done_ids" in rows[0] and rows[0]["done_ids"] not in (None, "[]", [])


async def test_a_completion_whose_reply_was_lost_is_not_reported_as_taken_over(
    make_jobs: Factory,
    dialect_name: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    EVENTS.clear()
    async with make_jobs(commands=[SleepCommand]) as jobs:
        lost = lose_reply(monkeypatch, dialect_name, completed)
        ref = await jobs.enqueue_command(SleepCommand, Sleep(0, "done-once"))
        with anyio.fail_after(20):
            result = await jobs.wait_for_job(ref.id)
        with anyio.fail_after(5):
            while jobs.statistics()["completed"] < 1:
                await anyio.sleep(0.05)
    assert len(lost) == 1
    assert result.state is JobState.COMPLETED and result.summary.attempts == 1
    assert [name for event, name, _ in EVENTS if event == "start"] == ["done-once"]
    assert not [r for r in caplog.records if "taken over" in r.getMessage()]


async def drop_connections(dialect_name: str, dsn: str) -> int:
    """Have the server end every session of this test's database (asyncjobs' pools, watch and
    listen connections); returns how many it ended."""
    if dialect_name == "postgres":
        import asyncpg

        from tests.db_postgres import SERVER

        conn = await asyncpg.connect(SERVER)
        try:
            return int(
                await conn.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE application_name = 'asyncjobs' AND pid <> pg_backend_pid()"
                )
            )
        finally:
            await conn.close()
    from tests.db_mysql import connect

    conn = await connect(dsn)
    try:
        async with conn.cursor() as cur:
            await cur.execute(
                "SELECT id FROM information_schema.processlist"
                " WHERE db = DATABASE() AND id <> CONNECTION_ID()"
            )
            sessions = [int(row[0]) for row in await cur.fetchall()]
            for session in sessions:
                await cur.execute(f"KILL CONNECTION {session}")
        return len(sessions)
    finally:
        conn.close()


@pytest.mark.dialects("postgres", "mysql")
async def test_every_job_runs_once_while_the_server_keeps_dropping_connections(
    make_jobs: Factory, dialect_name: str, dsn: str
) -> None:
    # Sessions end mid-claim, mid-completion and mid-enqueue, at random points of the drain:
    # every reply in flight is lost. No job may be lost, run twice or left Started.
    EVENTS.clear()
    labels = [f"dropped-{i}" for i in range(300)]
    async with make_jobs(commands=[SleepCommand], execute=False) as producer:
        refs = await producer.enqueue_many([(SleepCommand, Sleep(0.005, n)) for n in labels])
    dropped = 0
    async with make_jobs(commands=[SleepCommand], max_concurrency=10) as consumer:
        for _ in range(10):
            await anyio.sleep(0.1)
            dropped += await drop_connections(dialect_name, dsn)
        with anyio.fail_after(60):
            results = [await consumer.wait_for_job(ref.id) for ref in refs]
    assert dropped >= 10
    assert {r.state for r in results} == {JobState.COMPLETED}
    started = sorted(name for event, name, _ in EVENTS if event == "start")
    assert started == sorted(labels)
