"""PostgreSQL-specific behaviour: the claim's plan on a big queue, LISTEN/NOTIFY wake-ups and
cancels across processes, named workers across processes, partitions, the schema option, the
application's own pool and transactional enqueue. Multi-process tests use ``tests.worker``."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import anyio
import anyio.to_thread
import asyncpg
import msgspec
import pytest

from asyncjobs import BackgroundJobs, JobOptions, JobState
from asyncjobs.dialects import create_dialect
from asyncjobs.dialects.postgres import PostgresDialect, _asyncpg_dsn
from asyncjobs.exceptions import ConfigurationError, InvalidDsnError
from asyncjobs.models import JobError
from asyncjobs.runtime import NOTIFY_CHANNEL
from asyncjobs.store import Outcome, month_key, utcnow
from tests import db_postgres
from tests.commands import ALL_COMMANDS, Add, AddCommand, Sleep, SleepCommand
from tests.conftest import FAST
from tests.db_postgres import SERVER
from tests.processes import event_lines, start_worker, started_at, stop_worker, wait_for, workers

pytestmark = [pytest.mark.anyio, pytest.mark.dialects("postgres")]
Factory = Callable[..., BackgroundJobs]


def _pg(jobs: BackgroundJobs) -> PostgresDialect:
    assert isinstance(jobs.dialect, PostgresDialect)
    return jobs.dialect


def _schema(dsn: str) -> str:
    return dict(parse_qsl(urlsplit(dsn).query))["schema"]


async def _connect(dsn: str) -> Any:
    """A plain asyncpg connection on the test's schema, for looking behind the API."""
    return await asyncpg.connect(SERVER, server_settings={"search_path": _schema(dsn)})


#: sessions waiting for a lock held by the session $1
_WAITING_FOR = "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY (pg_blocking_pids(pid))"
#: sessions waiting for one that waits for the session $1
_WAITING_BEHIND = (
    "SELECT count(*) FROM pg_stat_activity a WHERE EXISTS (SELECT 1 FROM"
    " unnest(pg_blocking_pids(a.pid)) p WHERE $1 = ANY (pg_blocking_pids(p)))"
)


async def _blocked(conn: Any, count_query: str, pid: int) -> int:
    """``count_query`` of pg_stat_activity, read afresh: inside a transaction (a test's
    locker holds one) its rows are otherwise the transaction's first reading of it."""
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    return int(await conn.fetchval(count_query, pid))


def _plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _plan_nodes(child)


async def _explain(conn: Any, sql: str, *args: Any) -> list[dict[str, Any]]:
    raw = await conn.fetchval("EXPLAIN (FORMAT JSON) " + sql, *args)
    return list(_plan_nodes(json.loads(raw)[0]["Plan"]))


@pytest.fixture
async def migrated(make_jobs: Factory) -> None:
    """The schema exists before worker processes start (they would migrate it in turn)."""
    async with make_jobs(commands=ALL_COMMANDS, execute=False):
        pass


# -- the claim ----------------------------------------------------------------------------


async def test_claim_uses_indexes_on_100k_queued_jobs(make_jobs: Factory, dsn: str) -> None:
    async with make_jobs(commands=ALL_COMMANDS, execute=False) as jobs:
        conn = await _connect(dsn)
        try:
            # 100k queued jobs: every 10th on one of 50 named workers, three priorities, and
            # two workers busy with a running job.
            await conn.execute(
                """
                INSERT INTO background_job (ref_id, worker, created_date, request_type, command,
                                            request, request_body, state, retry_limit, priority)
                SELECT 'r' || g, CASE WHEN g % 10 = 0 THEN 'w' || (g % 50) END, now(), 'CMD',
                       'SleepCommand', 'Sleep', '{"seconds": 0}', 'Queued', 2, g % 3
                FROM generate_series(1, 100000) g
                """
            )
            await conn.execute(
                "INSERT INTO job_summary (id, ref_id, created_date, request_type, request, state)"
                " SELECT id, ref_id, created_date, request_type, request, state"
                " FROM background_job"
            )
            busy = ("w10", "w20")
            await conn.execute(
                "UPDATE background_job SET state = 'Started' WHERE id IN"
                " (SELECT MIN(id) FROM background_job WHERE worker = ANY($1) GROUP BY worker)",
                list(busy),
            )
            await conn.execute("ANALYZE background_job; ANALYZE job_summary")
            sql, order = _pg(jobs).statement("complete_and_claim_jobs", {})
            for named_only, outcomes in ((0, "[]"), (1, "[]"), (0, '[{"id": 5}, {"id": 7}]')):
                params = {"now": datetime.now(UTC), "node": "n", "limit": 50}
                values = {**params, "named_only": named_only, "skip_named": 0, "outcomes": outcomes}
                args = [values[name] for name in order]
                nodes = await _explain(conn, sql, *args)
                assert not [n for n in nodes if n["Node Type"] == "Seq Scan"], nodes
                indexes = {n.get("Index Name") for n in nodes}
                assert "ix_background_job_worker_queue" in indexes
                assert ("ix_background_job_claim" in indexes) is (named_only == 0)

            claimed = (await jobs.store.claim("n", 50)).jobs
        finally:
            await conn.close()
    assert len(claimed) == 50
    assert [(-j.priority, j.id) for j in claimed] == sorted((-j.priority, j.id) for j in claimed)
    named = [j for j in claimed if j.worker is not None]
    # Each idle worker's head (its oldest queued job), nothing of the busy ones.
    assert named and len({j.worker for j in named}) == len(named)
    assert not {j.worker for j in named} & set(busy)


async def test_completion_plan_reads_no_small_queue_whole(make_jobs: Factory, dsn: str) -> None:
    """A prepared statement is soon run with a generic plan, which cannot know how many ids
    :outcomes holds. On a queue of a few thousand rows not yet analyzed (as one is right after
    it was filled) such a plan once found the jobs to complete by reading the whole table: 0.2
    ms of a serial drain's 1.2 ms per job."""
    async with make_jobs(commands=ALL_COMMANDS, execute=False) as jobs:
        conn = await _connect(dsn)
        try:
            await conn.execute(
                """
                INSERT INTO background_job (ref_id, worker, created_date, request_type, command,
                                            request, request_body, state, retry_limit,
                                            lease_owner)
                SELECT 'r' || g, 'serial', now(), 'CMD', 'SleepCommand', 'Sleep',
                       '{"seconds": 0}', CASE WHEN g = 1 THEN 'Started' ELSE 'Queued' END, 2,
                       CASE WHEN g = 1 THEN 'n' END
                FROM generate_series(1, 2000) g
                """
            )
            await conn.execute("SET plan_cache_mode = force_generic_plan")
            sql, order = _pg(jobs).statement("complete_and_claim_jobs", {})
            values = {"now": datetime.now(UTC), "node": "n", "limit": 1, "named_only": 0,
                      "skip_named": 0, "outcomes": '[{"id": 1}]'}  # fmt: skip
            nodes = await _explain(conn, sql, *[values[name] for name in order])
        finally:
            await conn.close()
    scans = [n for n in nodes if n.get("Relation Name") == "background_job"]
    assert scans and not [n for n in scans if n["Node Type"] == "Seq Scan"], scans


# -- wake-ups and cancels across processes ------------------------------------------------


async def test_without_notifications_polling_runs_the_job(make_jobs: Factory) -> None:
    async with (
        make_jobs(commands=ALL_COMMANDS, execute=False) as producer,
        make_jobs(
            commands=ALL_COMMANDS, notifications=False, poll_interval=timedelta(milliseconds=300)
        ) as consumer,
    ):
        assert consumer.notifications is False
        ref = await producer.enqueue_command(AddCommand, Add(2, 3))
        with anyio.fail_after(10):
            result = await consumer.wait_for_job(ref.id)
    assert result.state is JobState.COMPLETED


@pytest.mark.slow
@pytest.mark.usefixtures("migrated")
async def test_cancel_reaches_a_job_running_in_another_process(
    make_jobs: Factory, dsn: str, tmp_path: Path
) -> None:
    log_file = tmp_path / "events.log"
    # Polls and heartbeats every 5 s: only the notification can make the cancel prompt.
    worker = await anyio.to_thread.run_sync(
        start_worker, dsn, "--poll-ms", "5000", "--lease-seconds", "30"
    )
    try:
        async with make_jobs(commands=ALL_COMMANDS, execute=False) as producer:
            ref = await producer.enqueue_command(
                SleepCommand, Sleep(30, label="long", log_file=str(log_file))
            )
            await wait_for(lambda: started_at(log_file, "long") is not None, 10)
            asked = time.monotonic()
            assert await producer.cancel_job(ref.id)
            with anyio.fail_after(5):
                result = await producer.wait_for_job(ref.id)
            elapsed = time.monotonic() - asked
    finally:
        await anyio.to_thread.run_sync(stop_worker, worker)
    assert result.state is JobState.CANCELLED
    assert elapsed < 2.0
    assert not [line for line in event_lines(log_file) if line[0] == "end"]


@pytest.mark.slow
@pytest.mark.usefixtures("migrated")
async def test_three_processes_drain_3000_jobs_with_named_workers(
    make_jobs: Factory, dsn: str, tmp_path: Path
) -> None:
    log_file = tmp_path / "events.log"
    items: list[tuple[type[Any], Any, JobOptions | None]] = []
    for i in range(2700):
        items.append((SleepCommand, Sleep(0, label=f"u{i}", log_file=str(log_file)), None))
        if i % 9 == 0:  # 300 named jobs spread through the queue, 100 per worker
            k = (i // 9) % 3
            request = Sleep(0.002, label=f"w{k}-{i}", log_file=str(log_file))
            items.append((SleepCommand, request, JobOptions(worker=f"w{k}")))
    assert len(items) == 3000
    conn = await _connect(dsn)
    try:
        with workers(dsn, 3, "--max-concurrency", "20", "--lease-seconds", "10"):
            async with make_jobs(commands=ALL_COMMANDS, execute=False) as producer:
                for start in range(0, len(items), 250):
                    await producer.enqueue_many(items[start : start + 250])
            with anyio.fail_after(50):
                while await conn.fetchval(
                    "SELECT count(*) FROM job_summary WHERE state = 'Completed'"
                ) < len(items):
                    await anyio.sleep(0.2)
        attempts = await conn.fetchval("SELECT max(attempts) FROM job_summary")
    finally:
        await conn.close()
    assert attempts == 1  # no job ran twice, none was taken back

    starts: dict[str, list[str]] = defaultdict(list)
    ends: dict[str, list[str]] = defaultdict(list)
    for line in event_lines(log_file):
        (starts if line[0] == "start" else ends)[line[1]].append(line[2])
    assert sorted(starts) == sorted(str(item[1].label) for item in items)
    assert all(len(v) == 1 for v in starts.values()) and all(len(v) == 1 for v in ends.values())
    assert len({line[3] for line in event_lines(log_file)}) >= 2  # the work was shared

    by_worker: dict[str, list[tuple[int, float, float]]] = defaultdict(list)
    for line in event_lines(log_file):
        if line[0] == "start" and line[1].startswith("w"):
            label = line[1]
            by_worker[label.split("-")[0]].append(
                (int(label.split("-")[1]), float(starts[label][0]), float(ends[label][0]))
            )
    for runs in by_worker.values():
        runs.sort()  # enqueue order
        assert len(runs) == 100
        for (_, _, prev_end), (_, start, _) in pairwise(runs):
            assert start >= prev_end  # never overlapping, and started in enqueue order


# -- partitions ---------------------------------------------------------------------------


async def test_archives_are_monthly_partitions_with_a_default(make_jobs: Factory, dsn: str) -> None:
    now = datetime.now(UTC)
    this_month = month_key(now)
    next_month = month_key(now.replace(day=1) + timedelta(days=32))
    old = datetime(2020, 1, 15, 12, tzinfo=UTC)
    conn = await _connect(dsn)
    try:
        async with make_jobs(commands=ALL_COMMANDS) as jobs:
            parts = {
                r["name"]
                for r in await conn.fetch(
                    "SELECT inhrelid::regclass::text AS name FROM pg_inherits"
                    " WHERE inhparent IN ('completed_job'::regclass, 'failed_job'::regclass)"
                )
            }
            for table in ("completed_job", "failed_job"):
                assert {f"{table}_{this_month}", f"{table}_{next_month}", f"{table}_default"} <= (
                    parts
                )

            # A job created in a month that has no partition still lands, in the default one.
            new = msgspec.structs.replace(
                jobs._command_job(AddCommand, Add(1, 2), None), created_date=old
            )
            ((job_id, _),) = await jobs.store.enqueue([new])
            with anyio.fail_after(10):
                result = await jobs.wait_for_job(job_id)
            assert result.completed is not None and result.completed.created_date == old
            where = "SELECT tableoid::regclass::text FROM completed_job WHERE id = $1"
            assert await conn.fetchval(where, job_id) == "completed_job_default"

            # Creating that month's partition moves it out of the default partition.
            await jobs.store.ensure_archives(old, months_ahead=0)
            assert await conn.fetchval(where, job_id) == "completed_job_202001"
            assert "202001" in await jobs.store.archive_months()
            again = await jobs.get_job(job_id)
            assert again is not None and again.completed is not None

            # Reads by id and created_date touch that month's partition only.
            sql, order = _pg(jobs).statement("get_completed_job", {})
            params = {"id": job_id, "created_date": old}
            nodes = await _explain(conn, sql, *[params[name] for name in order])
            scanned = {n["Relation Name"] for n in nodes if "Relation Name" in n}
            assert scanned == {"completed_job_202001"}

            assert await jobs.store.drop_months_before("202002") == ["202001"]
            assert await conn.fetchval("SELECT to_regclass('completed_job_202001')") is None
            assert await jobs.get_job(job_id) is None
    finally:
        await conn.close()


# -- embedding: schemas, the application's pool, transactional enqueue -----------------------


@pytest.fixture
async def app_pool() -> AsyncIterator[Any]:
    """The application's own pool, with the server's default search_path."""
    pool = await asyncpg.create_pool(SERVER, min_size=1, max_size=4)
    try:
        yield pool
    finally:
        await pool.close()


async def _listener(channel: str) -> tuple[Any, list[str]]:
    received: list[str] = []
    conn = await asyncpg.connect(SERVER)
    await conn.add_listener(channel, lambda _c, _p, _ch, payload: received.append(payload))
    return conn, received


async def test_transactional_enqueue_on_the_apps_pool(dsn: str, app_pool: Any) -> None:
    dialect = PostgresDialect(pool=app_pool, schema=_schema(dsn))
    jobs = BackgroundJobs(dialect=dialect, commands=ALL_COMMANDS, **FAST)
    async with jobs:
        listener, notified = await _listener(dialect.channel(NOTIFY_CHANNEL))
        try:
            async with app_pool.acquire() as conn:
                before = await conn.fetchval("SHOW search_path")
                tx = conn.transaction()
                await tx.start()
                await conn.execute("CREATE TEMP TABLE app_work (x int)")  # the app's own work
                ref = await jobs.enqueue_command(AddCommand, Add(1, 2), connection=conn)
                assert await conn.fetchval("SHOW search_path") == before  # given back
                await tx.rollback()
            await anyio.sleep(0.3)
            assert await jobs.get_job(ref.id) is None
            assert await jobs.get_job_by_ref_id(ref.ref_id) is None
            assert notified == []  # a rolled-back enqueue wakes nobody

            async with app_pool.acquire() as conn, conn.transaction():
                ref = await jobs.enqueue_command(AddCommand, Add(20, 22), connection=conn)
            with anyio.fail_after(10):
                result = await jobs.wait_for_job(ref.id)
            assert notified == [""]
        finally:
            await listener.close()
    assert result.state is JobState.COMPLETED
    assert result.completed is not None and result.completed.attempts == 1
    assert result.completed.response_body is not None and "42" in result.completed.response_body
    assert await app_pool.fetchval("SELECT 1") == 1  # the application's pool stays open


async def test_schema_option_creates_the_schema_and_keeps_schemas_apart(
    dsn: str, make_jobs: Factory
) -> None:
    fresh = f"t_new_{int(time.time() * 1000) % 10**9}"
    fresh_dsn = f"{SERVER}?schema={fresh}"
    try:
        async with (
            make_jobs(commands=ALL_COMMANDS, execute=False) as first,
            BackgroundJobs(fresh_dsn, commands=ALL_COMMANDS, **FAST) as second,
        ):
            assert _pg(second).channel(NOTIFY_CHANNEL) == f"asyncjobs.{fresh}"
            listener, notified = await _listener(_pg(second).channel(NOTIFY_CHANNEL))
            try:
                ref = await first.enqueue_command(AddCommand, Add(1, 1))
                await anyio.sleep(0.5)
                assert notified == []  # the other schema's enqueue does not wake us
                assert await second.get_job(ref.id) is None
                queued = await first.get_job(ref.id)
                assert queued is not None and queued.state is JobState.QUEUED

                other = await second.enqueue_command(AddCommand, Add(2, 2))
                with anyio.fail_after(10):
                    assert (await second.wait_for_job(other.id)).state is JobState.COMPLETED
            finally:
                await listener.close()
        conn = await asyncpg.connect(SERVER)
        try:
            tables = await conn.fetchval(
                "SELECT count(*) FROM pg_tables WHERE schemaname = $1", fresh
            )
        finally:
            await conn.close()
        assert tables >= 5
    finally:
        conn = await asyncpg.connect(SERVER)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{fresh}" CASCADE')
        finally:
            await conn.close()


async def test_an_error_inside_listen_reaches_the_caller_unwrapped(dsn: str) -> None:
    dialect = create_dialect(dsn)
    await dialect.open()
    try:
        with pytest.raises(KeyError, match="mine"):
            async with dialect.listen(NOTIFY_CHANNEL, lambda _payload: None):
                raise KeyError("mine")
    finally:
        await dialect.close()


async def _kill_the_listen_connection(conn: Any, jobs: BackgroundJobs) -> None:
    """Terminate the backend of ``jobs``' LISTEN connection; return once another listens."""
    listening = "SELECT pid FROM pg_stat_activity WHERE query = $1"
    statement = f'LISTEN "{_pg(jobs).channel(NOTIFY_CHANNEL)}"'
    pid = await conn.fetchval(listening, statement)
    assert pid is not None
    await conn.execute("SELECT pg_terminate_backend($1)", pid)
    with anyio.fail_after(10):
        while await conn.fetchval(listening, statement) in (None, pid):
            await anyio.sleep(0.05)


async def test_listen_connection_is_replaced_after_it_is_killed(
    make_jobs: Factory, dsn: str
) -> None:
    conn = await asyncpg.connect(SERVER)
    try:
        async with (
            make_jobs(commands=ALL_COMMANDS, execute=False) as producer,
            make_jobs(commands=ALL_COMMANDS, poll_interval=timedelta(seconds=10)) as consumer,
        ):
            await _kill_the_listen_connection(conn, consumer)
            await anyio.sleep(0.2)  # past the wake-up sent on reconnecting
            ref = await producer.enqueue_command(AddCommand, Add(1, 1))
            with anyio.fail_after(5):  # well under the 10 s poll
                assert (await consumer.wait_for_job(ref.id)).state is JobState.COMPLETED
    finally:
        await conn.close()


async def test_each_loss_of_the_listen_connection_waits_the_shortest_delay_again(
    make_jobs: Factory, dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The delay before listening again grows while reconnecting fails, not from one loss
    to the next: after several losses a worker would otherwise go seconds without LISTEN."""
    conn = await asyncpg.connect(SERVER)
    try:
        async with make_jobs(commands=ALL_COMMANDS, poll_interval=timedelta(seconds=10)) as jobs:
            for _ in range(3):
                await _kill_the_listen_connection(conn, jobs)
    finally:
        await conn.close()
    delays = [
        record.getMessage().split("retrying in ")[1].split("s)")[0]
        for record in caplog.records
        if "LISTEN connection lost" in record.getMessage()
    ]
    assert delays == ["0.2"] * 3, [record.getMessage() for record in caplog.records]


async def test_jobs_run_on_after_the_server_drops_every_connection(
    make_jobs: Factory, dsn: str
) -> None:
    conn = await asyncpg.connect(SERVER)
    try:
        async with (
            make_jobs(commands=ALL_COMMANDS, execute=False) as producer,
            make_jobs(commands=ALL_COMMANDS) as consumer,
        ):
            first = await producer.enqueue_command(AddCommand, Add(1, 1))
            with anyio.fail_after(10):
                await consumer.wait_for_job(first.id)
            killed = await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = 'asyncjobs' AND pid <> pg_backend_pid()"
            )
            assert killed >= 3  # both pools and the LISTEN connection
            ref = await producer.enqueue_command(AddCommand, Add(2, 2))
            with anyio.fail_after(10):
                assert (await consumer.wait_for_job(ref.id)).state is JobState.COMPLETED
    finally:
        await conn.close()


# -- configuration ------------------------------------------------------------------------


def test_only_plain_reads_are_sent_again_after_a_broken_connection() -> None:
    # A query sent again after the connection broke mid-query may run twice: only those that
    # only read qualify, never a write, a row lock or a SELECT of a function that writes.
    dialect = create_dialect("postgresql://u@db.example/app")
    assert isinstance(dialect, PostgresDialect)
    for read in ("get_summary", "final_states", "jobs_by_ref_ids", "select_job_ids"):
        assert dialect.reads_only(read), read
    for write in (
        "complete_and_claim_jobs", "insert_job", "insert_started_jobs", "update_progress",
        "renew_node", "create_archive", "create_schema_version", "requeue_unknown_jobs",
    ):  # fmt: skip
        assert not dialect.reads_only(write), write
    selects = [n for n in dialect.queries if dialect.queries[n].sql.lstrip().startswith("SELECT")]
    assert {n for n in selects if not dialect.reads_only(n)} == {
        "announce_requeued",  # pg_notify
        "create_archive",
        "create_schema_version",
    }


def test_dsn_options_configure_the_dialect() -> None:
    dialect = create_dialect(
        "postgresql://u:p%40ss@db.example:6543/app?schema=jobs&min_size=2&max_size=4&sslmode=disable"
    )
    assert isinstance(dialect, PostgresDialect)
    assert dialect.schema == "jobs"
    assert dialect.capabilities.partitioned_archive and dialect.capabilities.notifications
    assert _asyncpg_dsn(dialect._dsn or "") == (
        "postgresql://u:p%40ss@db.example:6543/app?sslmode=disable"
    )
    other = create_dialect("postgresql://h/db", schema="s1", max_size=3)
    assert isinstance(other, PostgresDialect) and other.schema == "s1"
    with pytest.raises(ConfigurationError, match="not a valid PostgreSQL identifier"):
        create_dialect("postgresql://h/db?schema=bad-name")
    with pytest.raises(ConfigurationError, match="not a valid PostgreSQL identifier"):
        create_dialect("postgresql://h/db?schema=jobs%0A")  # `$` would let the newline by
    with pytest.raises(ConfigurationError, match="unknown PostgreSQL settings"):
        create_dialect("postgresql://h/db", pool_size=3)
    with pytest.raises(ConfigurationError, match="min_size"):
        create_dialect("postgresql://h/db?min_size=5&max_size=2")
    with pytest.raises(ConfigurationError, match="either a dsn or a pool"):
        PostgresDialect()
    # One connection would be the reads' own, leaving transactions none: they waited forever.
    with pytest.raises(ConfigurationError, match=r"max_size must be an int within 2\.\."):
        create_dialect("postgresql://h/db?max_size=1")
    with pytest.raises(InvalidDsnError, match="invalid pool setting"):
        create_dialect("postgresql://h/db?min_size=abc")
    with pytest.raises(InvalidDsnError, match="invalid pool setting"):
        create_dialect("postgresql://h/db?connect_timeout=soon")
    timed = create_dialect("postgresql://h/db?connect_timeout=2.5")
    assert isinstance(timed, PostgresDialect) and timed._connect_timeout == 2.5
    assert _asyncpg_dsn(timed._dsn or "") == "postgresql://h/db"  # not sent as a setting


@pytest.mark.parametrize(
    ("option", "refused"),
    [("max_sise=20", "max_sise"), ("sslmode=bogus", "sslmode")],
)
async def test_options_postgresql_refuses_are_a_dsn_error_when_it_opens(
    option: str, refused: str
) -> None:
    """A typo goes to the server as a setting, which it does not know; an option asyncpg
    cannot use fails in asyncpg: either is the DSN's fault, and says so."""
    dialect = create_dialect(f"{SERVER}?{option}")
    with pytest.raises(InvalidDsnError, match=refused):
        await dialect.open()


def test_driver_errors_are_classified() -> None:
    dialect = PostgresDialect("postgresql://h/db")
    assert dialect.is_unique_violation(asyncpg.UniqueViolationError("dup"))
    assert not dialect.is_unique_violation(asyncpg.ForeignKeyViolationError("fk"))
    assert dialect.is_disconnect(ConnectionResetError())
    assert dialect.is_disconnect(asyncpg.AdminShutdownError("bye"))
    assert dialect.is_disconnect(asyncpg.exceptions.ConnectionDoesNotExistError("gone"))
    assert not dialect.is_disconnect(asyncpg.UniqueViolationError("dup"))


async def test_unreachable_server_fails_rather_than_skips(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db_postgres, "SERVER", "postgresql://postgres@127.0.0.1:1/test")
    with pytest.raises(ConnectionRefusedError):
        async for _ in db_postgres.isolated_dsn():
            pass


async def test_a_dependent_committed_after_its_parent_was_cancelled_is_cancelled_too(
    make_jobs: Factory, dsn: str
) -> None:
    """Enqueued in the application's transaction while its parent was still queued, the
    dependent is committed after the parent's cancel, whose cascade could not see it: the
    periodic recovery cancels it (else it waits forever, and holds its named worker)."""
    later = datetime.now(UTC) + timedelta(hours=1)
    async with make_jobs(commands=ALL_COMMANDS, lease_duration=timedelta(seconds=1)) as jobs:
        parent = await jobs.enqueue_command(AddCommand, Add(1, 1), JobOptions(run_after=later))
        conn = await asyncpg.connect(SERVER, server_settings={"search_path": _schema(dsn)})
        try:
            async with conn.transaction():
                child = await jobs.enqueue_command(
                    AddCommand, Add(2, 2), JobOptions(depends_on=parent.id, worker="w"),
                    connection=conn,
                )  # fmt: skip
                assert await jobs.cancel_job(parent.id)  # its cascade cannot see the child
        finally:
            await conn.close()
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
        conn = await asyncpg.connect(SERVER, server_settings={"search_path": _schema(dsn)})
        try:
            async with conn.transaction():
                child = await jobs.enqueue_command(
                    AddCommand, Add(2, 2), JobOptions(depends_on=parent.id), connection=conn
                )
                with anyio.fail_after(10):
                    await jobs.wait_for_job(parent.id)  # its completion cannot see the child
        finally:
            await conn.close()
        with anyio.fail_after(10):
            result = await jobs.wait_for_job(child.id)
    assert result.completed is not None and result.completed.response_body == '{"total":4}'


async def test_a_completion_beside_a_cancel_of_its_dependent_does_not_deadlock(
    make_jobs: Factory,
) -> None:
    """A cancel of a held dependent and of its running parent locks both, in id order (the
    parent first); the parent's completion holds the parent, and releases its dependents
    skipping any another transaction locked. It waits for the cancel, then completes (the two
    deadlocked, and the completion failed, when the cancel locked the dependent first)."""
    async with make_jobs(commands=[AddCommand], execute=False) as jobs:
        parent = await jobs.enqueue_command(AddCommand, Add(1, 1))
        child = await jobs.enqueue_command(AddCommand, Add(2, 2), JobOptions(depends_on=parent.id))
        (job,) = (await jobs.store.claim("n1", 1)).jobs
        ids = json.dumps([child.id, parent.id])
        completed: list[Any] = []

        async def complete() -> None:
            outcome = Outcome(job, JobState.COMPLETED, duration_ms=1)
            completed.append(await jobs.store.complete_and_claim("n1", [outcome], 0))

        # Store.cancel's statements, in turn, with the completion sent between them
        async with anyio.create_task_group() as tg:
            async with jobs.dialect.transaction() as tx:
                cancelled = await tx.fetch(
                    "cancel_queued", {"ids": ids, "now": utcnow(), "error": None}
                )
                tg.start_soon(complete)
                running = await tx.fetch("request_cancel", {"ids": ids})
            with anyio.fail_after(10):  # (a deadlock would fail one of the two)
                while not completed:
                    await anyio.sleep(0.01)
    assert [r["id"] for r in cancelled] == [child.id]
    assert [r["id"] for r in running] == [parent.id]  # still running when the cancel came
    assert completed[0].final == {parent.id: JobState.COMPLETED}


@pytest.mark.parametrize("waiting", ["delayed", "dependents"])
async def test_a_backlog_of_jobs_not_runnable_costs_the_claim_nothing(
    make_jobs: Factory, dsn: str, waiting: str
) -> None:
    """Jobs not due yet (delayed, or retries waiting out their backoff), and dependents of a
    job not completed, are in no index the claim walks: with 3 000 of them queued ahead of the
    ready jobs, the claim's plan passes over none of them (it read, and filtered out, every
    one of them before)."""
    async with make_jobs(commands=[AddCommand], execute=False) as jobs:
        later = JobOptions(run_after=datetime.now(UTC) + timedelta(hours=1))
        if waiting == "dependents":
            parent = await jobs.enqueue_command(AddCommand, Add(0, 0), later)
            later = JobOptions(depends_on=parent.id)
        for _ in range(3):
            await jobs.enqueue_many((AddCommand, Add(i, i), later) for i in range(1000))
        await jobs.enqueue_many((AddCommand, Add(i, i)) for i in range(100))
        sql, order = _pg(jobs).statement("complete_and_claim_jobs", {})
        values = {
            "now": datetime.now(UTC), "node": "n", "limit": 50, "named_only": 0, "skip_named": 0,
            "outcomes": "[]",
        }  # fmt: skip
        conn = await _connect(dsn)
        try:
            async with conn.transaction():
                raw = await conn.fetchval(
                    "EXPLAIN (ANALYZE, FORMAT JSON) " + sql, *[values[name] for name in order]
                )
                raise _RolledBack
        except _RolledBack:
            pass
        finally:
            await conn.close()
    nodes = list(_plan_nodes(json.loads(raw)[0]["Plan"]))
    passed_over = sum(n.get("Rows Removed by Filter", 0) for n in nodes)
    assert passed_over < 50, nodes
    claimed = [n for n in nodes if n.get("Relation Name") == "background_job"]
    assert claimed and max(n["Actual Rows"] for n in claimed) <= 100, nodes


async def test_the_periodic_recovery_reads_a_row_per_parent_not_per_dependent(
    make_jobs: Factory, dsn: str
) -> None:
    """The recovery's look for dependents a cascade or a completion missed reads each parent
    that has dependents once: 3 000 dependents of one job cost a few rows (every one of them
    was read before)."""
    async with make_jobs(commands=[AddCommand], execute=False) as jobs:
        later = JobOptions(run_after=datetime.now(UTC) + timedelta(hours=1))
        parent = await jobs.enqueue_command(AddCommand, Add(0, 0), later)
        for _ in range(3):
            dependent = JobOptions(depends_on=parent.id)
            await jobs.enqueue_many((AddCommand, Add(i, i), dependent) for i in range(1000))
        queries = [
            _pg(jobs).statement(name, {})[0] for name in ("stranded_parents", "release_dependents")
        ]
        conn = await _connect(dsn)
        read = 0
        try:
            async with conn.transaction():
                for sql in queries:
                    raw = await conn.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + sql)
                    for node in _plan_nodes(json.loads(raw)[0]["Plan"]):
                        if node.get("Relation Name") == "background_job":
                            read += node["Actual Rows"] * node["Actual Loops"]
                            read += node.get("Rows Removed by Filter", 0)
                raise _RolledBack
        except _RolledBack:
            pass
        finally:
            await conn.close()
    assert read < 100, read


class _RolledBack(Exception):
    """Leaves a transaction by rolling it back."""


async def test_a_named_worker_never_runs_two_jobs_when_a_claims_snapshot_is_stale(
    make_jobs: Factory, dsn: str
) -> None:
    """A claim reads one snapshot. One waits (on a row it completes) while an older job of a
    named worker goes back to the queue ahead of the worker's head and another claim takes
    it: the waiting claim, whose snapshot shows the worker idle with the head first, must not
    take the head too. (The unique index of running named jobs makes the later claim wait for
    the earlier and fail; sent again, it sees the worker busy.)"""
    async with (
        make_jobs(commands=[AddCommand], execute=False) as jobs,
        make_jobs(commands=[AddCommand], execute=False) as other,  # (connections of its own)
    ):
        store = jobs.store
        on_w = JobOptions(worker="W", retry_limit=0)
        old = await jobs.enqueue_command(AddCommand, Add(1, 1), on_w)
        (first,) = (await store.claim("node-x", 5)).jobs
        failed = Outcome(first, JobState.FAILED, error=JobError("boom", "RuntimeError"))
        await store.finish("node-x", [failed])
        head = await jobs.enqueue_command(AddCommand, Add(2, 2), on_w)
        plain = await jobs.enqueue_command(AddCommand, Add(3, 3))
        (running,) = (await store.claim("node-a", 1, skip_named=True)).jobs
        assert running.id == plain.id
        locker = await _connect(dsn)
        claims: dict[str, Any] = {}
        try:
            hold = locker.transaction()
            await hold.start()
            await locker.execute("SELECT id FROM background_job WHERE id = $1 FOR UPDATE", plain.id)
            done = Outcome(running, JobState.COMPLETED, duration_ms=1)
            async with anyio.create_task_group() as tg:

                async def claim_a() -> None:
                    claims["a"] = await store.complete_and_claim("node-a", [done], 5)

                async def claim_b() -> None:
                    claims["b"] = await other.store.claim("node-b", 5)

                tg.start_soon(claim_a)
                pid = locker.get_server_pid()
                with anyio.fail_after(10):  # node-a's claim has its snapshot, and waits
                    while not await _blocked(locker, _WAITING_FOR, pid):
                        await anyio.sleep(0.01)
                await other.requeue_failed_job(old.id)  # the older job of W, ahead of the head
                tg.start_soon(claim_b)
                with anyio.fail_after(10):  # node-b's claim is done, or waits for node-a's
                    while "b" not in claims and not await _blocked(locker, _WAITING_BEHIND, pid):
                        await anyio.sleep(0.01)
                await hold.rollback()
        finally:
            await locker.close()
        assert claims["a"].final == {plain.id: JobState.COMPLETED}
        taken = [job.id for claim in claims.values() for job in claim.jobs]
        assert len(taken) == 1 and taken[0] in (old.id, head.id)
        assert await store.select_job_ids(JobState.STARTED, "W") == taken


@pytest.mark.parametrize("how", ["retry", "recovery"])
async def test_a_cancel_that_comes_while_a_job_goes_back_to_the_queue_is_not_lost(
    make_jobs: Factory, dsn: str, how: str
) -> None:
    """A job's attempt ends and the job goes back to the queue (a retry, or the recovery of a
    dead node's job) in a transaction still open when a cancel comes: the cancel waits for it
    and cancels the job, rather than finding it neither queued nor running."""
    async with (
        make_jobs(commands=[AddCommand], execute=False) as worker,
        make_jobs(commands=[AddCommand], execute=False) as app,
    ):
        ref = await app.enqueue_command(AddCommand, Add(1, 1))
        (job,) = (await worker.store.claim("node-a", 1)).jobs
        locker = await _connect(dsn)
        pid = locker.get_server_pid()
        results: dict[str, Any] = {}
        try:
            hold = locker.transaction()
            await hold.start()
            # Holds the requeue's transaction open: it waits to update the job's summary.
            await locker.execute("SELECT id FROM job_summary WHERE id = $1 FOR UPDATE", ref.id)
            async with anyio.create_task_group() as tg:

                async def go_back() -> None:
                    if how == "retry":
                        error = JobError("boom", "RuntimeError")
                        outcome = Outcome(job, JobState.QUEUED, error=error, error_code="Failed")
                        results["back"] = await worker.store.finish("node-a", [outcome])
                    else:  # node-a never renewed a lease: its job is an orphan
                        results["back"] = await worker.store.recover_orphans()

                async def cancel() -> None:
                    results["cancel"] = await app.store.cancel([ref.id], "cancelled")

                tg.start_soon(go_back)
                with anyio.fail_after(10):
                    while not await _blocked(locker, _WAITING_FOR, pid):
                        await anyio.sleep(0.01)
                tg.start_soon(cancel)
                with anyio.fail_after(10):  # the cancel waits for the transaction going back
                    while "cancel" not in results:
                        if await _blocked(locker, _WAITING_BEHIND, pid):
                            break
                        await anyio.sleep(0.01)
                await hold.rollback()
        finally:
            await locker.close()
        final, running = results["cancel"]
        assert final == {ref.id: JobState.CANCELLED} and running == []
        assert (await worker.store.claim("node-b", 1)).jobs == []
        result = await app.get_job(ref.id)
        assert result is not None and result.state is JobState.CANCELLED
