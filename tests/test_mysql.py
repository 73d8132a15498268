"""MariaDB/MySQL specifics: the multi-statement claim and its named-worker lock, deadlock
retries, partitions, migrations, transactional enqueue on an aiomysql connection, and several
worker processes on one database."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import aiomysql
import anyio
import anyio.to_thread
import pytest

from asyncjobs import AsyncCommandWithResult, BackgroundJobs, JobOptions, JobState
from asyncjobs.dialects import parse_dsn
from asyncjobs.dialects._base import BaselineRead, WatchedIds
from asyncjobs.dialects.mysql import MysqlDialect, create
from asyncjobs.exceptions import (
    ConfigurationError,
    DatabaseError,
    DuplicateRefIdError,
    InvalidDsnError,
    StatementTooLargeError,
)
from asyncjobs.store import MIGRATIONS, Outcome, month_key
from tests import db_mysql
from tests.commands import ALL_COMMANDS, Add, AddCommand, Nested, NestedCommand, Sleep, SleepCommand
from tests.db_mysql import connect, query
from tests.processes import ROOT

pytestmark = [pytest.mark.anyio, pytest.mark.dialects("mysql")]
Factory = Callable[..., BackgroundJobs]
NODE = "test-node"

#: the schema_version rows of a fully migrated database
APPLIED = [(number,) for number in range(1, len(MIGRATIONS) + 1)]


def dialect_of(jobs: BackgroundJobs) -> MysqlDialect:
    assert isinstance(jobs.dialect, MysqlDialect)
    return jobs.dialect


async def claim(jobs: BackgroundJobs, tx: Any, limit: int = 10) -> list[int]:
    params = {
        "now": datetime.now(UTC), "node": NODE, "limit": limit, "named_only": 0, "skip_named": 0,
        "outcomes": "[]",
    }  # fmt: skip
    rows = await tx.fetch("complete_and_claim_jobs", params)
    return sorted(int(r["id"]) for r in rows if r["id"] is not None)


# -- transactional enqueue ------------------------------------------------------------------


async def test_enqueue_in_a_rolled_back_transaction_leaves_no_job(
    make_jobs: Factory, dsn: str
) -> None:
    async with make_jobs(commands=[AddCommand]) as jobs:
        app = await connect(dsn, autocommit=False)
        try:
            await app.begin()
            ref = await jobs.enqueue_command(AddCommand, Add(1, 2), connection=app)
            async with app.cursor() as cur:  # the job is visible inside the transaction
                await cur.execute("SELECT COUNT(*) FROM background_job WHERE id = %s", (ref.id,))
                assert (await cur.fetchone()) == (1,)
            await app.rollback()
        finally:
            app.close()
        await anyio.sleep(0.3)  # a poll or two: nothing may run
        assert await jobs.get_job(ref.id) is None
        assert await jobs.get_job_by_ref_id(ref.ref_id) is None
        assert await jobs.store.select_job_ids(None, None) == []


@pytest.mark.parametrize("in_transaction", [True, False])
async def test_a_refused_enqueue_on_the_applications_connection_leaves_nothing(
    make_jobs: Factory, dsn: str, in_transaction: bool
) -> None:
    """A ref id whose job completed (its row gone from the queue, its summary kept) is taken:
    the enqueue's first statement succeeds, its second fails. On the application's connection
    nothing of it may stay, or the job would sit in the queue without its summary, which every
    claim returns and runs. In the application's transaction (which it then commits as if the
    job were already there) and on an autocommitting connection alike."""
    async with make_jobs(commands=[AddCommand]) as jobs:
        first = await jobs.enqueue_command(AddCommand, Add(1, 1), JobOptions(ref_id="order-7"))
        with anyio.fail_after(10):
            assert (await jobs.wait_for_job(first.id)).state is JobState.COMPLETED
        app = await connect(dsn, autocommit=not in_transaction)
        try:
            if in_transaction:
                await app.begin()
            with pytest.raises(DuplicateRefIdError):
                await jobs.enqueue_command(
                    AddCommand, Add(2, 2), JobOptions(ref_id="order-7"), connection=app
                )
            if in_transaction:
                await app.commit()
        finally:
            app.close()
        assert await query(dsn, "SELECT id FROM background_job") == []
        assert await jobs.store.select_job_ids(None, None) == []


async def test_enqueue_in_a_committed_transaction_runs(make_jobs: Factory, dsn: str) -> None:
    async with make_jobs(commands=[AddCommand]) as jobs:
        app = await connect(dsn, autocommit=False)
        try:
            await app.begin()
            async with app.cursor() as cur:  # the application's own write, same transaction
                await cur.execute("CREATE TABLE IF NOT EXISTS app_order (id INT PRIMARY KEY)")
                await cur.execute("INSERT INTO app_order (id) VALUES (7)")
            ref = await jobs.enqueue_command(AddCommand, Add(2, 3), connection=app)
            await app.commit()
        finally:
            app.close()
        with anyio.fail_after(10):
            result = await jobs.wait_for_job(ref.id)
    assert result.state is JobState.COMPLETED
    assert result.completed is not None and result.completed.response_body is not None
    assert json.loads(result.completed.response_body) == {"total": 5}
    assert await query(dsn, "SELECT id FROM app_order") == [(7,)]


async def test_an_open_application_batch_does_not_block_other_enqueues(
    make_jobs: Factory, dsn: str
) -> None:
    """A batch enqueued in the application's REPEATABLE READ transaction copies its summaries
    from its own new rows, found one key at a time: it locks those rows only, not the gaps
    between them, so enqueues elsewhere go on while the application's transaction is open."""
    async with make_jobs(commands=[AddCommand], execute=False) as jobs:
        serial = JobOptions(worker="app-serial")
        # A worker's first enqueue creates its row, which a second must wait for; known now.
        known = await jobs.enqueue_command(AddCommand, Add(0, 0), serial)
        app = await connect(dsn, autocommit=False)
        try:
            async with app.cursor() as cur:  # the server default, unless configured otherwise
                await cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            await app.begin()
            held = await jobs.enqueue_many(
                [(AddCommand, Add(i, 1)) for i in range(3)] + [(AddCommand, Add(9, 9), serial)],
                connection=app,
            )
            with anyio.fail_after(10):  # blocked, these would wait out the lock timeout (50 s)
                others = await jobs.enqueue_many((AddCommand, Add(i, 2)) for i in range(50))
                other = await jobs.enqueue_command(AddCommand, Add(7, 7), serial)
            await app.commit()
        finally:
            app.close()
        ids = await jobs.store.select_job_ids(None, None)
    assert sorted(ids) == sorted(r.id for r in [known, *held, *others, other])
    assert await query(dsn, "SELECT COUNT(*) FROM job_summary") == [(len(ids),)]


# -- the claim ------------------------------------------------------------------------------


async def test_open_claims_take_disjoint_batches(make_jobs: Factory) -> None:
    """A claim locks only the rows it returns, and one beside it takes the next ones: its plain
    read of the claim index reads twice the limit, and the rows the first claim holds are
    skipped (with a window of the limit alone, the second claim gets nothing)."""
    async with make_jobs(commands=[AddCommand], execute=False) as jobs:
        await jobs.enqueue_many((AddCommand, Add(i, i)) for i in range(30))
        dialect = dialect_of(jobs)
        async with dialect.transaction() as first, dialect.transaction() as second:
            a = await claim(jobs, first, 5)
            b = await claim(jobs, second, 5)
        assert len(a) == 5 and len(b) == 5 and not set(a) & set(b)
        assert a == list(range(1, 6)) and b == list(range(6, 11))  # priority, then age


async def test_open_claims_take_disjoint_batches_of_due_delayed_jobs(make_jobs: Factory) -> None:
    """The same for delayed jobs now due."""
    async with make_jobs(commands=[AddCommand], execute=False) as jobs:
        due = JobOptions(run_after=datetime.now(UTC) - timedelta(seconds=5))
        await jobs.enqueue_many((AddCommand, Add(i, i), due) for i in range(20))
        dialect = dialect_of(jobs)
        async with dialect.transaction() as first, dialect.transaction() as second:
            a = await claim(jobs, first, 3)
            b = await claim(jobs, second, 3)
        assert a == [1, 2, 3] and b == [4, 5, 6]
        # Whatever their limits: one beside a larger claim still finds one.
        async with dialect.transaction() as first, dialect.transaction() as second:
            a = await claim(jobs, first, 5)
            b = await claim(jobs, second, 1)
        assert a == [7, 8, 9, 10, 11] and b == [12]


async def test_claim_reads_by_index_only(make_jobs: Factory, dsn: str) -> None:
    """Check the plan: jobs without a worker are read from ix_background_job_claim in order (no
    sort, and no named job walked), then locked by key; each named worker's head is one probe
    of ix_background_job_worker; workers, parents and running jobs are looked up by key;
    nothing scans a table (job_summary keeps every job ever run)."""
    async with make_jobs(commands=[AddCommand], execute=False) as jobs:
        parent = await jobs.enqueue_command(AddCommand, Add(0, 0))
        await jobs.enqueue_many((AddCommand, Add(i, i)) for i in range(2000))
        await jobs.enqueue_many(
            (AddCommand, Add(i, i), JobOptions(worker=f"w{i % 20}")) for i in range(500)
        )
        await jobs.enqueue_many(
            (AddCommand, Add(i, i), JobOptions(depends_on=parent.id)) for i in range(50)
        )
        await query(dsn, "ANALYZE TABLE background_job, job_summary, job_worker")
        plan = []
        for outcomes in ([], [{"id": 5}]):
            statements = dialect_of(jobs).statements("complete_and_claim_jobs", {})
            params = {
                "now": datetime.now(UTC).replace(tzinfo=None), "node": NODE, "limit": 10,
                "named_only": 0, "skip_named": 0, "outcomes": json.dumps(outcomes),
            }  # fmt: skip
            conn = await connect(dsn)
            try:
                async with conn.cursor(aiomysql.DictCursor) as cur:
                    await cur.execute('SET @asyncjobs_workers = \'["w1", "w2"]\'')
                    for sql in statements:
                        if sql.startswith(("SELECT", "UPDATE", "DELETE", "INSERT")):
                            await cur.execute("EXPLAIN " + sql, params)
                            plan += await cur.fetchall()
            finally:
                conn.close()
    tables = {row["table"]: row for row in plan}
    for row in plan:
        if row["table"] == "j":
            assert row["key"] == "ix_background_job_claim", plan
            assert row["type"] == "ref" and "filesort" not in (row["Extra"] or ""), plan
        if row["table"] in ("n", "cj", "b", "s", "p", "np"):
            assert row["type"] == "eq_ref", (row, plan)
        if row["table"] in ("h", "q", "r", "x"):
            assert row["type"] == "ref", (row, plan)
        if row["table"] == "k":  # the workers with jobs: one probe each
            assert "Using index for group-by" in (row["Extra"] or ""), plan
    for name in ("w", "h", "q", "r", "x", "j", "cj", "n", "p", "np", "b", "s"):
        assert tables[name]["type"] != "ALL", (name, plan)


async def test_named_worker_is_decided_by_one_claim_at_a_time(make_jobs: Factory, dsn: str) -> None:
    """The race the job_worker lock closes: w1 enqueued (id 1) but committed after w2 (id 2).
    Claim A sees only w2 and takes it; before A commits, claim B sees w1 as the worker's oldest
    queued job and w2 still Queued. Without the worker row lock B would start w1 alongside w2."""
    async with make_jobs(commands=[AddCommand], execute=False) as jobs:
        x = JobOptions(worker="x")
        w0 = await jobs.enqueue_command(AddCommand, Add(0, 0), x)  # the worker's row exists
        await jobs.cancel_job(w0.id)
        app = await connect(dsn, autocommit=False)
        try:
            await app.begin()
            w1 = await jobs.enqueue_command(AddCommand, Add(1, 1), x, connection=app)
            w2 = await jobs.enqueue_command(AddCommand, Add(2, 2), x)
            assert w1.id < w2.id
            dialect = dialect_of(jobs)
            async with dialect.transaction() as claim_a:
                assert await claim(jobs, claim_a) == [w2.id]
                await app.commit()
                async with dialect.transaction() as claim_b:
                    assert await claim(jobs, claim_b) == []
            async with dialect.transaction() as claim_c:
                assert await claim(jobs, claim_c) == []  # w2 runs: w1 waits for it
        finally:
            app.close()


async def test_deadlock_in_the_first_query_is_retried_and_counted(
    make_jobs: Factory, dsn: str
) -> None:
    async with make_jobs(commands=[AddCommand], execute=False) as jobs:
        a, b = await jobs.enqueue_many([(AddCommand, Add(1, 1)), (AddCommand, Add(2, 2))])
        await jobs.enqueue_many((AddCommand, Add(i, i)) for i in range(200))
        dialect = dialect_of(jobs)
        other = await connect(dsn, autocommit=False)
        cancelled: list[int] = []

        async def cancel_b_then_a() -> None:
            async with dialect.transaction() as tx:
                params = {"ids": json.dumps([b.id, a.id]), "now": datetime.now(UTC), "error": None}
                cancelled.extend(int(r["id"]) for r in await tx.fetch("cancel_queued", params))

        try:
            async with other.cursor() as cur:
                await other.begin()
                # A heavy transaction (many changed rows): InnoDB picks the light one as victim.
                await cur.execute("UPDATE background_job SET tag = 'x' WHERE id > %s", (b.id,))
                await cur.execute("SELECT id FROM background_job WHERE id = %s FOR UPDATE", (a.id,))
                async with anyio.create_task_group() as tg:
                    tg.start_soon(cancel_b_then_a)  # locks b, then waits for a
                    with anyio.fail_after(10):
                        while not await query(
                            dsn,
                            "SELECT 1 FROM information_schema.innodb_trx "
                            "WHERE trx_state = 'LOCK WAIT'",
                        ):
                            await anyio.sleep(0.01)
                    # b is held by the claim: a deadlock, which rolls the light side back
                    await cur.execute(
                        "SELECT id FROM background_job WHERE id = %s FOR UPDATE", (b.id,)
                    )
                    await other.rollback()
        finally:
            other.close()
        assert sorted(cancelled) == [a.id, b.id]
        stats = dialect.statistics()
        assert stats["deadlock_retries"] == 1 and stats["deadlocks"] == 0


# -- partitions -----------------------------------------------------------------------------


async def partitions(dsn: str, table: str) -> list[tuple[str, int]]:
    rows = await query(
        dsn,
        "SELECT partition_name, table_rows FROM information_schema.partitions "
        "WHERE table_schema = DATABASE() AND table_name = %s ORDER BY partition_ordinal_position",
        table,
    )
    return [(str(name), int(count or 0)) for name, count in rows]


async def rows_in(dsn: str, table: str, partition: str) -> list[int]:
    rows = await query(dsn, f"SELECT id FROM {table} PARTITION ({partition}) ORDER BY id")
    return [int(r[0]) for r in rows]


async def test_archives_are_monthly_partitions_with_a_catch_all(
    make_jobs: Factory, dsn: str
) -> None:
    now = datetime.now(UTC)
    this, following = month_key(now), month_key(now.replace(day=1) + timedelta(days=32))
    async with make_jobs(execute=False):
        pass
    for table in ("completed_job", "failed_job"):
        names = [name for name, _ in await partitions(dsn, table)]
        assert names == [f"p{this}", f"p{following}", "pmax"], table


async def test_a_job_of_a_month_without_partition_is_kept_and_moved(
    make_jobs: Factory, dsn: str
) -> None:
    future, past = datetime(2031, 5, 10, 12, tzinfo=UTC), datetime(2019, 1, 15, tzinfo=UTC)
    async with make_jobs(commands=[AddCommand], execute=False) as producer:
        late = await producer.enqueue_command(AddCommand, Add(1, 1))
        early = await producer.enqueue_command(AddCommand, Add(2, 2))
    for ref, when in ((late, future), (early, past)):
        for table in ("background_job", "job_summary"):
            await query(dsn, f"UPDATE {table} SET created_date = %s WHERE id = %s", when, ref.id)
    async with make_jobs(commands=[AddCommand]) as jobs:
        with anyio.fail_after(10):
            for ref in (late, early):
                assert (await jobs.wait_for_job(ref.id)).completed is not None
        this = month_key(datetime.now(UTC))
        assert await rows_in(dsn, "completed_job", "pmax") == [late.id]
        assert await rows_in(dsn, "completed_job", f"p{this}") == [early.id]  # lowest partition
        await jobs.store.ensure_archives(future, months_ahead=0)
        await jobs.store.ensure_archives(past, months_ahead=0)
        assert await rows_in(dsn, "completed_job", "p203105") == [late.id]
        assert await rows_in(dsn, "completed_job", "p201901") == [early.id]
        assert await rows_in(dsn, "completed_job", "pmax") == []
        for ref in (late, early):  # found through the partition key
            result = await jobs.get_job(ref.id)
            assert result is not None and result.completed is not None
        assert {"201901", "203105"} <= set(await jobs.store.archive_months())
        assert await jobs.store.drop_months_before("201902") == ["201901"]
        assert await rows_in(dsn, "completed_job", f"p{this}") == []
        assert await rows_in(dsn, "completed_job", "p203105") == [late.id]


async def test_archive_reads_prune_to_one_partition(make_jobs: Factory, dsn: str) -> None:
    async with make_jobs(commands=[AddCommand]) as jobs:
        ref = await jobs.enqueue_command(AddCommand, Add(1, 1))
        with anyio.fail_after(10):
            done = (await jobs.wait_for_job(ref.id)).completed
        sql = dialect_of(jobs).statements("get_completed_job", {})[0]
    assert done is not None
    conn = await connect(dsn)
    try:
        async with conn.cursor(aiomysql.DictCursor) as cur:
            await cur.execute("SELECT VERSION() AS v")
            mariadb = "MariaDB" in str((await cur.fetchone())["v"])
            explain = "EXPLAIN PARTITIONS " if mariadb else "EXPLAIN "
            params = {"id": ref.id, "created_date": done.created_date.replace(tzinfo=None)}
            await cur.execute(explain + sql, params)
            plan = await cur.fetchall()
    finally:
        conn.close()
    assert [row["partitions"] for row in plan] == [f"p{month_key(done.created_date)}"], plan


async def test_partition_maintenance_is_idempotent_and_safe_concurrently(
    make_jobs: Factory, dsn: str
) -> None:
    months = [datetime(2030, m, 1, tzinfo=UTC) for m in range(1, 7)]
    instances = [make_jobs(execute=False) for _ in range(4)]
    async with AsyncExitStack() as stack:
        for jobs in instances:
            await stack.enter_async_context(jobs)

        async def ensure(jobs: BackgroundJobs) -> None:
            for moment in months:
                await jobs.store.ensure_archives(moment, months_ahead=0)

        async with anyio.create_task_group() as tg:
            for jobs in instances:
                tg.start_soon(ensure, jobs)
        expected = [f"2030{m:02d}" for m in range(1, 7)]
        for table in ("completed_job", "failed_job"):
            names = [n for n, _ in await partitions(dsn, table)]
            assert [n[1:] for n in names if n.startswith("p2030")] == expected, names

        async def drop(jobs: BackgroundJobs) -> None:
            await jobs.store.drop_months_before("203004")

        async with anyio.create_task_group() as tg:
            for jobs in instances:
                tg.start_soon(drop, jobs)
        assert [m for m in await instances[0].store.archive_months() if m.startswith("2030")] == [
            "203004", "203005", "203006"
        ]  # fmt: skip


# -- schema ---------------------------------------------------------------------------------


async def test_processes_starting_together_on_a_fresh_database(
    make_jobs: Factory, dsn: str
) -> None:
    async def start_and_stop(jobs: BackgroundJobs) -> None:
        async with jobs:  # migrates and creates the archive partitions
            pass

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(start_and_stop, make_jobs(execute=False))
    assert await query(dsn, "SELECT version FROM schema_version") == APPLIED


async def test_an_interrupted_migration_completes_on_the_next_start(
    make_jobs: Factory, dsn: str
) -> None:
    async with make_jobs(execute=False):
        pass
    # As if the process died after creating background_job: MySQL had committed that DDL.
    for table in ("job_summary", "job_node", "scheduled_task", "completed_job", "failed_job"):
        await query(dsn, f"DROP TABLE {table}")
    await query(dsn, "DELETE FROM schema_version")
    async with make_jobs(commands=[AddCommand]) as jobs:
        ref = await jobs.enqueue_command(AddCommand, Add(1, 1))
        with anyio.fail_after(10):
            assert (await jobs.wait_for_job(ref.id)).completed is not None


# -- values ---------------------------------------------------------------------------------


async def test_text_and_times_round_trip(make_jobs: Factory) -> None:
    big = "x" * 2_000_000
    run_after = datetime(2020, 2, 29, 23, 59, 59, 123456, tzinfo=UTC)
    async with make_jobs(commands=[NestedCommand], execute=False) as jobs:
        options = JobOptions(tag="tâg 🎉", args={"ключ": "値 %s %% 'q' \\"}, run_after=run_after)
        ref = await jobs.enqueue_command(NestedCommand, Nested(big, ["🎉", "%(x)s"]), options)
        result = await jobs.get_job(ref.id)
    assert result is not None and result.queued is not None
    job = result.queued
    assert job.tag == "tâg 🎉" and job.args == {"ключ": "値 %s %% 'q' \\"}
    assert job.run_after == run_after and job.created_date.tzinfo is UTC
    assert json.loads(job.request_body) == {"name": big, "tags": ["🎉", "%(x)s"], "inner": None}


def test_dsn_options_are_checked() -> None:
    dialect = create(parse_dsn("mysql://u:p%40ss@db:3307/jobs?max_size=3&deadlock_retries=2"))
    assert dialect.deadlock_retries == 2 and dialect.dsn.password == "p@ss"
    with pytest.raises(InvalidDsnError, match="unknown MySQL DSN option 'pool'"):
        create(parse_dsn("mysql://u@db/jobs?pool=3"))
    with pytest.raises(InvalidDsnError, match="needs a database"):
        create(parse_dsn("mariadb://u@db"))
    with pytest.raises(ConfigurationError, match="unknown MySQL settings"):
        create(parse_dsn("mysql://u@db/jobs"), pool_size=3)
    watched = create(parse_dsn("mysql://u@db/jobs"), change_poll_interval=timedelta(seconds=1))
    assert watched.change_poll_interval == timedelta(seconds=1)
    with pytest.raises(ConfigurationError, match="change_poll_interval must be at least"):
        create(parse_dsn("mysql://u@db/jobs"), change_poll_interval=timedelta(0))


def test_driver_errors_are_classified() -> None:
    dialect = create(parse_dsn("mysql://u@db/jobs"))
    assert dialect.is_unique_violation(aiomysql.IntegrityError(1062, "Duplicate entry"))
    assert not dialect.is_unique_violation(aiomysql.IntegrityError(1452, "foreign key"))
    for code in (2003, 2006, 2013, 1927):
        assert dialect.is_disconnect(aiomysql.OperationalError(code, "gone"))
    assert dialect.is_disconnect(ConnectionResetError())
    assert not dialect.is_disconnect(aiomysql.OperationalError(1213, "Deadlock found"))
    assert not dialect.is_disconnect(aiomysql.IntegrityError(1062, "Duplicate entry"))


async def test_jobs_run_on_after_the_server_drops_every_connection(
    make_jobs: Factory, dsn: str
) -> None:
    database = dsn.rsplit("/", 1)[1]
    async with (
        make_jobs(commands=[AddCommand], execute=False) as producer,
        make_jobs(commands=[AddCommand]) as consumer,
    ):
        first = await producer.enqueue_command(AddCommand, Add(1, 1))
        with anyio.fail_after(10):
            await consumer.wait_for_job(first.id)
        conn = await connect(dsn)
        try:
            async with conn.cursor() as cur:
                await cur.execute(
                    "SELECT id FROM information_schema.processlist"
                    " WHERE db = %s AND id <> CONNECTION_ID()",
                    (database,),
                )
                sessions = [row[0] for row in await cur.fetchall()]
                for session in sessions:
                    await cur.execute(f"KILL CONNECTION {int(session)}")
        finally:
            conn.close()
        assert len(sessions) >= 2  # both pools
        ref = await producer.enqueue_command(AddCommand, Add(2, 2))
        with anyio.fail_after(10):
            assert (await consumer.wait_for_job(ref.id)).state is JobState.COMPLETED


async def test_an_unreachable_server_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db_mysql, "SERVER", "mysql://root@127.0.0.1:1/test")
    with pytest.raises(aiomysql.OperationalError):
        async for _ in db_mysql.isolated_dsn():
            pass
    jobs = BackgroundJobs("mysql://root@127.0.0.1:1/test", connect_timeout=2)
    with pytest.raises(DatabaseError, match="cannot open the mysql database") as failed:
        async with jobs:
            pass
    assert isinstance(failed.value.__cause__, aiomysql.OperationalError)


# -- the change watch -----------------------------------------------------------------------


async def test_the_change_watch_hears_new_jobs_and_survives_a_killed_connection(
    make_jobs: Factory, dsn: str
) -> None:
    """The watch's connection is killed on the server; the watch connects again and still
    hears the next enqueue (and nothing in between)."""
    async with make_jobs(commands=[AddCommand], execute=False) as producer:
        dialect = MysqlDialect(parse_dsn(dsn), change_poll_interval=timedelta(milliseconds=5))
        connections: list[Any] = []
        connect_watch = dialect._watch_connect

        async def recording_connect() -> Any:
            conn = await connect_watch()
            connections.append(conn)
            return conn

        dialect._watch_connect = recording_connect  # type: ignore[method-assign]
        calls: list[str] = []
        async with dialect.listen("any", calls.append):
            await baseline_read(dialect)
            assert calls == []
            await producer.enqueue_command(AddCommand, Add(1, 1))
            with anyio.fail_after(5):
                while len(calls) < 1:
                    await anyio.sleep(0.01)
            await query(dsn, f"KILL CONNECTION {connections[0].thread_id()}")
            with anyio.fail_after(10):  # a failed read waits the quiet interval, then reconnects
                while len(connections) < 2:
                    await anyio.sleep(0.01)
            await anyio.sleep(0.1)
            assert calls == [""]
            await producer.enqueue_command(AddCommand, Add(2, 2))
            with anyio.fail_after(5):
                while len(calls) < 2:
                    await anyio.sleep(0.01)
        assert calls == ["", ""]
        assert all(conn.closed for conn in connections)


async def baseline_read(dialect: Any) -> None:
    """Until the change watch's first read, the baseline its later reads are judged against (a
    job committed before it is no news): its new connection may take a while on a busy server."""
    with anyio.fail_after(10):
        while dialect._new_job_ids.highest is None:
            await anyio.sleep(0.01)


def ids(*values: int) -> WatchedIds:
    """A read of the change watch: these job ids, and no requeue since the baseline."""
    return WatchedIds(frozenset(values), 0)


def test_the_change_watch_wakes_for_jobs_it_did_not_start_here_only() -> None:
    """The judge of new job ids: the first read (the newest id) is the baseline; ids this
    process inserted itself are no news, other new ids are; an id skipped below a newer one is
    news when it appears (an enqueue that committed late), until it has been waited for long
    enough; a read with nothing new is not news."""
    dialect = create(parse_dsn("mysql://u@db/jobs"))
    judge = dialect._new_job_ids
    dialect.inserted_here([1])
    assert judge.own == set()  # recorded only while a watch runs
    judge.watches = 1
    assert judge(BaselineRead(ids(10))) is False and judge.highest == 10  # the baseline
    dialect.inserted_here([11, 12])
    assert judge(ids(11, 12)) is False and judge.own == set()
    assert judge(ids(13)) is True  # another process's job
    dialect.inserted_here([15])
    assert judge(ids(15)) is False  # ours; 14 skipped, not ours
    assert sorted(judge.skipped) == [14]
    assert judge(ids()) is False  # nothing new
    assert judge(ids(14)) is True and judge.skipped == {}  # 14 committed late
    assert judge(ids(20)) is True and sorted(judge.skipped) == [16, 17, 18, 19]
    for i in judge.skipped:
        judge.skipped[i] = 0.0  # waited for long enough
    assert judge(ids()) is False and judge.skipped == {}
    assert judge(ids(*range(21, 321))) is True
    assert judge.highest == 320 and judge.skipped == {}
    assert judge(ids(1000)) is True
    assert len(judge.skipped) == 100 and min(judge.skipped) == 900  # the newest skipped ids


async def test_the_change_watch_hears_a_transaction_that_commits_after_a_newer_one(
    make_jobs: Factory, dsn: str
) -> None:
    """Two applications enqueue in their transactions; the first to begin commits last, after
    the watch has seen the newer id: it is still heard of (not left to the poll)."""
    async with make_jobs(commands=[AddCommand], execute=False) as producer:
        dialect = MysqlDialect(parse_dsn(dsn), change_poll_interval=timedelta(milliseconds=5))
        calls: list[str] = []
        first, second = await connect(dsn, autocommit=False), await connect(dsn, autocommit=False)
        try:
            async with dialect.listen("any", calls.append):
                await baseline_read(dialect)
                await first.begin()
                await producer.enqueue_command(AddCommand, Add(1, 1), connection=first)
                await second.begin()
                await producer.enqueue_command(AddCommand, Add(2, 2), connection=second)
                await second.commit()
                with anyio.fail_after(5):
                    while len(calls) < 1:
                        await anyio.sleep(0.01)
                await anyio.sleep(0.2)  # reads that see nothing new
                assert calls == [""]
                await first.commit()
                with anyio.fail_after(5):
                    while len(calls) < 2:
                        await anyio.sleep(0.01)
        finally:
            first.close()
            second.close()


async def test_a_process_hears_its_own_enqueue_when_the_applications_transaction_commits(
    make_jobs: Factory, dsn: str
) -> None:
    """A job enqueued in the application's transaction cannot wake the dispatcher at enqueue
    (it is not committed yet): the change watch must hear it, though this process inserted it."""
    async with make_jobs(commands=[AddCommand], execute=False) as jobs:
        calls: list[str] = []
        app = await connect(dsn, autocommit=False)
        try:
            async with jobs.dialect.listen("any", calls.append):
                await baseline_read(jobs.dialect)
                await app.begin()
                await jobs.enqueue_command(AddCommand, Add(1, 1), connection=app)
                await anyio.sleep(0.2)
                assert calls == []  # not committed yet
                await app.commit()
                with anyio.fail_after(5):
                    while not calls:
                        await anyio.sleep(0.01)
                await jobs.enqueue_command(AddCommand, Add(2, 2))  # wakes its own dispatcher
                await anyio.sleep(0.2)
                assert calls == [""]
        finally:
            app.close()


# -- several processes ----------------------------------------------------------------------


def start(dsn: str, stderr: Path, *args: str) -> subprocess.Popen[str]:
    """Start ``tests.mysql_worker`` with its log in ``stderr``; wait until it is ready."""
    with stderr.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.mysql_worker", dsn, *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        raise RuntimeError(f"worker did not start: {stderr.read_text()}")
    return proc


def stop(proc: subprocess.Popen[str]) -> dict[str, Any]:
    """SIGTERM (a graceful stop); returns the statistics the worker prints on exit."""
    if proc.poll() is None:
        proc.terminate()
    out, _ = proc.communicate(timeout=30)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    return cast(dict[str, Any], json.loads(lines[-1])) if lines else {}


@pytest.fixture
async def processes() -> AsyncIterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def events(path: Path) -> list[tuple[str, str, float, int, int]]:
    """The start/end lines the Sleep commands of every process appended."""
    if not path.exists():
        return []
    out = []
    text = path.read_text()
    # Only whole lines: a worker may be halfway through appending the last one.
    for line in text[: text.rfind("\n") + 1].splitlines():
        event, label, moment, pid, job_id = line.split()
        out.append((event, label, float(moment), int(pid), int(job_id)))
    return out


async def wait_for(predicate: Callable[[], bool], seconds: float) -> None:
    with anyio.fail_after(seconds):
        while not predicate():
            await anyio.sleep(0.05)


def assert_clean_logs(logs: Sequence[Path]) -> None:
    for path in logs:
        bad = [ln for ln in path.read_text().splitlines() if ln.split(" ", 1)[0] != "INFO"]
        assert not bad, f"{path.name}: {bad[:5]}"


@pytest.mark.slow
async def test_three_processes_drain_3000_jobs_exactly_once_in_worker_order(
    make_jobs: Factory,
    dsn: str,
    tmp_path: Path,
    processes: list[subprocess.Popen[str]],
) -> None:
    log_file, total = tmp_path / "events.log", 3000
    async with make_jobs(execute=False):
        pass  # migrated before the workers start
    logs = [tmp_path / f"worker{i}.log" for i in range(3)]
    for path in logs:
        args = ("--max-concurrency", "20", "--poll-ms", "200", "--lease-seconds", "10")
        processes.append(await anyio.to_thread.run_sync(start, dsn, path, *args))
    # Every fifth job runs on one of three named workers (serial, in enqueue order).
    named = {i: f"w{i % 3}" for i in range(0, total, 5)}
    items = [
        (
            SleepCommand,
            Sleep(0.003 if i in named else 0, label=f"j{i}", log_file=str(log_file)),
            JobOptions(worker=named.get(i)),
        )
        for i in range(total)
    ]
    async with make_jobs(commands=ALL_COMMANDS, execute=False) as producer:
        for chunk in range(0, total, 250):  # enqueued while the workers already drain
            await producer.enqueue_many(items[chunk : chunk + 250])
        await wait_for(lambda: sum(e[0] == "end" for e in events(log_file)) >= total, 50)
    reports = [await anyio.to_thread.run_sync(stop, proc) for proc in processes]

    seen = events(log_file)
    starts = Counter(label for event, label, *_ in seen if event == "start")
    ends = Counter(label for event, label, *_ in seen if event == "end")
    assert set(starts) == {f"j{i}" for i in range(total)} and set(starts.values()) == {1}
    assert ends == starts
    assert len({pid for *_, pid, _ in seen}) == 3  # all three processes took work
    summaries = await query(dsn, "SELECT state, attempts, COUNT(*) FROM job_summary GROUP BY 1, 2")
    assert summaries == [("Completed", 1, total)]
    by_worker: dict[str, list[tuple[float, float, int]]] = defaultdict(list)
    spans: dict[str, dict[str, float]] = defaultdict(dict)
    for event, label, moment, _pid, _job_id in seen:
        spans[label][event] = moment
    for event, label, _moment, _pid, job_id in seen:
        index = int(label[1:])
        if event == "start" and index in named:
            span = spans[label]
            by_worker[named[index]].append((span["start"], span["end"], job_id))
    for worker, runs in by_worker.items():
        runs.sort()
        ids = [job_id for *_, job_id in runs]
        assert ids == sorted(ids), f"{worker} ran out of enqueue order"
        overlaps = [(a, b) for a, b in itertools.pairwise(runs) if b[0] < a[1]]
        assert not overlaps, f"{worker} ran two jobs at once: {overlaps[:3]}"
    assert_clean_logs(logs)
    dialect_stats = [r["dialect"] for r in reports]
    assert sum(s["deadlocks"] for s in dialect_stats) == 0, dialect_stats
    claimed = sum(r["runtime"]["claimed"] for r in reports)
    assert claimed == total
    assert sum(s["deadlock_retries"] for s in dialect_stats) <= total // 100, dialect_stats


@pytest.mark.slow
async def test_cancel_reaches_other_processes(
    make_jobs: Factory, dsn: str, tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    log_file = tmp_path / "events.log"
    async with make_jobs(execute=False):
        pass
    log = tmp_path / "worker.log"
    processes.append(await anyio.to_thread.run_sync(start, dsn, log, "--poll-ms", "100"))
    solo = JobOptions(worker="solo")
    async with make_jobs(commands=ALL_COMMANDS, execute=False) as producer:
        running = await producer.enqueue_command(
            SleepCommand, Sleep(30, label="running", log_file=str(log_file)), solo
        )
        waiting = await producer.enqueue_command(
            SleepCommand, Sleep(0, label="waiting", log_file=str(log_file)), solo
        )
        await wait_for(lambda: any(e[:2] == ("start", "running") for e in events(log_file)), 10)
        assert await producer.cancel_job(waiting.id)  # queued behind it: never starts
        started = anyio.current_time()
        assert await producer.cancel_job(running.id)  # running in the worker process
        with anyio.fail_after(5):
            result = await producer.wait_for_job(running.id)
        elapsed = anyio.current_time() - started
        waited = await producer.get_job(waiting.id)
    assert result.state is JobState.CANCELLED and result.failed is not None
    assert elapsed < 2.0
    assert waited is not None and waited.state is JobState.CANCELLED
    await anyio.sleep(0.3)
    assert [e[:2] for e in events(log_file)] == [("start", "running")]
    report = await anyio.to_thread.run_sync(stop, processes[0])
    assert report["runtime"]["claimed"] == 1
    assert_clean_logs([log])


class Repeat(AsyncCommandWithResult[Add, str]):
    """Returns ``a`` characters."""

    async def run(self, request: Add) -> str:
        return "y" * request.a


async def test_what_is_over_the_servers_packet_limit_is_refused_and_holds_up_nothing(
    make_jobs: Factory,
) -> None:
    """Sent, the server would drop the connection, which looks like a lost database: a batch
    of outcomes was retried without end, holding up every outcome of its process."""
    commands = [Repeat, AddCommand, NestedCommand]
    async with make_jobs(commands=commands, default_retry_limit=0) as jobs:
        limit = cast(MysqlDialect, jobs.dialect).max_packet
        assert limit is not None
        with pytest.raises(StatementTooLargeError, match="max_allowed_packet"):
            await jobs.enqueue_command(NestedCommand, Nested("n" * (limit + 10)))
        with pytest.raises(StatementTooLargeError):
            await jobs.enqueue_command(AddCommand, Add(1, 1), JobOptions(args={"a": "t" * limit}))
        part = "n" * (limit // 10)
        with pytest.raises(StatementTooLargeError, match="smaller parts"):
            await jobs.enqueue_many((NestedCommand, Nested(part)) for _ in range(20))
        # A completion carries its result three times: half the limit is too much.
        big = await jobs.enqueue_command(Repeat, Add(limit // 2, 0))
        small = await jobs.enqueue_command(AddCommand, Add(1, 1))
        with anyio.fail_after(60):
            results = [await jobs.wait_for_job(ref.id) for ref in (big, small)]
        assert await query(jobs.dsn, "SELECT COUNT(*) FROM job_summary") == [(2,)]
    assert results[0].failed is not None and results[0].failed.error_code == "UnrecordableOutcome"
    assert results[0].failed.error is not None
    assert "max_allowed_packet" in results[0].failed.error.message
    assert results[1].completed is not None and results[1].completed.response_body == '{"total":2}'


async def test_a_dependent_committed_after_its_parent_was_cancelled_is_cancelled_too(
    make_jobs: Factory, dsn: str
) -> None:
    """Enqueued in the application's transaction while its parent was still queued, the
    dependent is committed after the parent's cancel, whose cascade could not see it: the
    periodic recovery cancels it (else it waits forever, and holds its named worker)."""
    later = datetime.now(UTC) + timedelta(hours=1)
    async with make_jobs(commands=ALL_COMMANDS, lease_duration=timedelta(seconds=1)) as jobs:
        parent = await jobs.enqueue_command(AddCommand, Add(1, 1), JobOptions(run_after=later))
        app = await connect(dsn, autocommit=False)
        try:
            await app.begin()
            child = await jobs.enqueue_command(
                AddCommand, Add(2, 2), JobOptions(depends_on=parent.id, worker="w"),
                connection=app,
            )  # fmt: skip
            assert await jobs.cancel_job(parent.id)  # its cascade cannot see the child
            await app.commit()
        finally:
            app.close()
        with anyio.fail_after(10):
            result = await jobs.wait_for_job(child.id)
    assert result.failed is not None and result.failed.state is JobState.CANCELLED
    assert result.failed.error_code == "DependencyFailed"


async def test_a_dependent_committed_after_its_parent_completed_runs(
    make_jobs: Factory, dsn: str
) -> None:
    """Enqueued in the application's transaction while its parent was still queued, the
    dependent is held out of the claim until the parent completes; it is committed after that
    completion, which could not see it: the periodic recovery lets it run (else it waits
    forever)."""
    async with make_jobs(commands=ALL_COMMANDS, lease_duration=timedelta(seconds=1)) as jobs:
        soon = JobOptions(run_after=datetime.now(UTC) + timedelta(seconds=0.5))
        parent = await jobs.enqueue_command(AddCommand, Add(1, 1), soon)
        app = await connect(dsn, autocommit=False)
        try:
            await app.begin()
            child = await jobs.enqueue_command(
                AddCommand, Add(2, 2), JobOptions(depends_on=parent.id), connection=app
            )
            with anyio.fail_after(10):
                await jobs.wait_for_job(parent.id)  # its completion cannot see the child
            await app.commit()
        finally:
            app.close()
        with anyio.fail_after(10):
            result = await jobs.wait_for_job(child.id)
    assert result.completed is not None and result.completed.response_body == '{"total":4}'


async def test_a_named_dependent_still_marked_after_its_parent_completed_is_claimed_at_once(
    make_jobs: Factory, dsn: str
) -> None:
    """A named worker's dependent committed by an application after its parent completed keeps
    its mark (the completion could not see it), but the claim goes by the parent's state for a
    named worker's head: the next claim takes it, without waiting up to half a lease for the
    recovery to clear the mark."""
    async with make_jobs(commands=[AddCommand], execute=False) as jobs:
        parent = await jobs.enqueue_command(AddCommand, Add(1, 1))
        (running,) = (await jobs.store.claim(NODE, 10)).jobs
        app = await connect(dsn, autocommit=False)
        try:
            await app.begin()
            child = await jobs.enqueue_command(
                AddCommand, Add(2, 2), JobOptions(worker="w", depends_on=parent.id), connection=app
            )
            done = Outcome(running, JobState.COMPLETED, duration_ms=1)
            await jobs.store.complete_and_claim(NODE, [done], 0)
            await app.commit()
        finally:
            app.close()
        assert [job.id for job in (await jobs.store.claim(NODE, 10)).jobs] == [child.id]


@pytest.mark.parametrize("then", ["complete", "release"])
async def test_an_uncommitted_dependent_holds_up_no_completion(
    make_jobs: Factory, dsn: str, then: str
) -> None:
    """An application's transaction left open with a dependent of a job in it: the job's
    completion, and the recovery's release of dependents, go on without waiting for it (they
    waited for its lock, the completion's batch up to five lock timeouts, and the release in
    the loop that renews the lease, so the lease could lapse)."""
    async with make_jobs(commands=[AddCommand], execute=False) as jobs:
        parent = await jobs.enqueue_command(AddCommand, Add(1, 1))
        await jobs.enqueue_command(AddCommand, Add(0, 0), JobOptions(depends_on=parent.id))
        (job,) = (await jobs.store.claim(NODE, 1)).jobs
        outcome = Outcome(job, JobState.COMPLETED, duration_ms=1)
        if then == "release":
            await jobs.store.complete_and_claim(NODE, [outcome], 0)
        app = await connect(dsn, autocommit=False)
        try:
            await app.begin()
            await jobs.enqueue_command(
                AddCommand, Add(2, 2), JobOptions(depends_on=parent.id), connection=app
            )
            with anyio.fail_after(5):
                if then == "complete":
                    done = await jobs.store.complete_and_claim(NODE, [outcome], 0)
                    assert done.final == {parent.id: JobState.COMPLETED}
                else:
                    assert await jobs.store.release_dependents() == 0
        finally:
            await app.rollback()
            app.close()


async def _rows_read(tx: Any) -> int:
    """Rows this session has read through indexes so far (its handler counters; not
    Handler_read_rnd_next, which SHOW STATUS itself moves)."""
    async with tx.driver.cursor() as cur:
        await cur.execute("SHOW SESSION STATUS LIKE 'Handler_read%'")
        rows = await cur.fetchall()
    return sum(int(value) for name, value in rows if name != "Handler_read_rnd_next")


async def _claim_counting_reads(jobs: BackgroundJobs, limit: int) -> tuple[list[int], int]:
    """A claim, rolled back: the jobs it took and the rows it read."""
    try:
        async with dialect_of(jobs).transaction() as tx:
            await tx.fetch("held_jobs", {"node": NODE})  # the transaction's connection
            before = await _rows_read(tx)
            claimed = await claim(jobs, tx, limit)
            read = await _rows_read(tx) - before
            raise _RolledBack
    except _RolledBack:
        pass
    return claimed, read


@pytest.mark.parametrize("waiting", ["delayed", "dependents"])
async def test_a_backlog_of_jobs_not_runnable_costs_the_claim_nothing(
    make_jobs: Factory, waiting: str
) -> None:
    """Jobs not due yet (delayed, or retries waiting out their backoff), and dependents of a
    job not completed, are walked by no read of the claim: with 3 000 of them queued ahead of
    the ready jobs, a claim of 50 reads a few hundred rows (it read every one of them, twice,
    before)."""
    async with make_jobs(commands=[AddCommand], execute=False) as jobs:
        later = JobOptions(run_after=datetime.now(UTC) + timedelta(hours=1))
        if waiting == "dependents":
            parent = await jobs.enqueue_command(AddCommand, Add(0, 0), later)
            later = JobOptions(depends_on=parent.id)
        for _ in range(3):
            await jobs.enqueue_many((AddCommand, Add(i, i), later) for i in range(1000))
        await jobs.enqueue_many((AddCommand, Add(i, i)) for i in range(100))
        claimed, read = await _claim_counting_reads(jobs, 50)
    assert len(claimed) == 50
    assert read < 1000, read


async def test_named_workers_whose_head_waits_cost_the_claim_few_reads(
    make_jobs: Factory,
) -> None:
    """A named worker whose head is not runnable (a retry waiting out its backoff, a dependent
    of a job not completed) is passed over by the claim's first statement: it is not locked,
    and the second statement does not look at it again. 300 such workers cost a claim of 50
    about 7 reads each (14 before)."""
    async with make_jobs(commands=[AddCommand], execute=False) as jobs:
        later = datetime.now(UTC) + timedelta(hours=1)
        parent = await jobs.enqueue_command(AddCommand, Add(0, 0), JobOptions(run_after=later))
        waiting = [
            JobOptions(worker=f"w{i}", run_after=later)
            if i % 2
            else JobOptions(worker=f"w{i}", depends_on=parent.id)
            for i in range(300)
        ]
        await jobs.enqueue_many(
            (AddCommand, Add(i, i), options) for i, options in enumerate(waiting)
        )
        await jobs.enqueue_many((AddCommand, Add(i, i)) for i in range(100))
        ready = await jobs.enqueue_command(AddCommand, Add(1, 1), JobOptions(worker="ready"))
        claimed, read = await _claim_counting_reads(jobs, 50)
    assert len(claimed) == 50 and ready.id not in claimed  # the unnamed jobs came first
    assert read < 300 * 8, read


async def test_the_periodic_recovery_reads_a_row_per_parent_not_per_dependent(
    make_jobs: Factory,
) -> None:
    """The recovery's look for dependents a cascade or a completion missed reads each parent
    that has dependents once: 3 000 dependents of one job cost a few reads (they cost one or
    more each before)."""
    async with make_jobs(commands=[AddCommand], execute=False) as jobs:
        later = JobOptions(run_after=datetime.now(UTC) + timedelta(hours=1))
        parent = await jobs.enqueue_command(AddCommand, Add(0, 0), later)
        for _ in range(3):
            dependent = JobOptions(depends_on=parent.id)
            await jobs.enqueue_many((AddCommand, Add(i, i), dependent) for i in range(1000))
        try:
            async with dialect_of(jobs).transaction() as tx:
                await tx.fetch("held_jobs", {"node": NODE})  # the transaction's connection
                before = await _rows_read(tx)
                assert await tx.fetch("stranded_parents") == []
                assert await tx.execute("release_dependents") == 0
                read = await _rows_read(tx) - before
                raise _RolledBack
        except _RolledBack:
            pass
    assert read < 100, read


class _RolledBack(Exception):
    """Leaves a transaction by rolling it back."""


async def test_worker_names_no_job_uses_any_more_cost_the_claim_nothing(
    make_jobs: Factory,
) -> None:
    """job_worker keeps every worker name ever used; the claim looks only at the workers that
    have jobs (it walked every row of job_worker, and probed the queue for each)."""
    async with make_jobs(commands=[AddCommand], execute=False) as jobs:
        once = [(AddCommand, Add(i, i), JobOptions(worker=f"tenant-{i}")) for i in range(2000)]
        await jobs.enqueue_many(once)
        assert await jobs.cancel_jobs() == 2000
        await jobs.enqueue_many((AddCommand, Add(i, i), JobOptions(worker="w")) for i in range(3))
        await jobs.enqueue_many((AddCommand, Add(i, i)) for i in range(100))
        claimed, read = await _claim_counting_reads(jobs, 50)
    assert len(claimed) == 50
    assert read < 1000, read
