"""Work enqueued by one process reaches an idle worker process at once, not at its next poll:
PostgreSQL through LISTEN/NOTIFY, SQLite through the watch of the file's data version, MySQL
and SQL Server (live only with its DSN) through the watch of new job ids."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from asyncjobs import BackgroundJobs, JobOptions
from asyncjobs.dialects import sqlite as sqlite_dialect
from asyncjobs.dialects.sqlite import SqliteDialect
from tests.commands import ALL_COMMANDS, Sleep, SleepCommand
from tests.processes import event_lines, start_worker, started_at, stop_worker, wait_for

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.slow,
    pytest.mark.dialects("sqlite", "postgres", "mysql", "mssql"),
]
Factory = Callable[..., BackgroundJobs]


async def test_enqueue_in_one_process_starts_in_another_well_before_a_poll(
    make_jobs: Factory, dsn: str, tmp_path: Path
) -> None:
    log_file = tmp_path / "events.log"
    # The producer starts (and migrates) first: its start-up must not use up the worker's sleep.
    async with make_jobs(commands=ALL_COMMANDS, execute=False) as producer:
        worker = await anyio.to_thread.run_sync(start_worker, dsn, "--poll-ms", "5000")
        try:
            await anyio.sleep(0.5)  # past the worker's first claim: it now sleeps for 5 s
            for i in range(3):
                label = f"n{i}"
                enqueued = time.time()
                await producer.enqueue_command(
                    SleepCommand, Sleep(0, label=label, log_file=str(log_file))
                )
                await wait_for(lambda label=label: started_at(log_file, label) is not None, 5)
                started = started_at(log_file, label)
                # its poll would take the first one about 4.5 s after its enqueue
                assert started is not None and started - enqueued < 2.0
                await anyio.sleep(0.2)
        finally:
            await anyio.to_thread.run_sync(stop_worker, worker)


async def test_without_the_wake_up_the_worker_waits_for_its_poll(
    make_jobs: Factory, dsn: str, tmp_path: Path
) -> None:
    """The control for the test above: the same worker without notifications (or the change
    watch) finds the job only at its next poll."""
    log_file = tmp_path / "events.log"
    # The producer starts (and migrates) first: its start-up must not use up the worker's sleep.
    async with make_jobs(commands=ALL_COMMANDS, execute=False) as producer:
        worker = await anyio.to_thread.run_sync(
            start_worker, dsn, "--poll-ms", "3000", "--no-notifications"
        )
        try:
            await anyio.sleep(0.5)  # its next poll is about 3 s after its start
            enqueued = time.time()
            await producer.enqueue_command(
                SleepCommand, Sleep(0, label="polled", log_file=str(log_file))
            )
            await wait_for(lambda: started_at(log_file, "polled") is not None, 10)
        finally:
            await anyio.to_thread.run_sync(stop_worker, worker)
    started = started_at(log_file, "polled")
    assert started is not None and started - enqueued > 1.0


async def test_the_sqlite_change_watch_hears_every_other_connection_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watch calls its handler after each commit of another connection (one by one here),
    never without one, and keeps watching after its handler raised."""
    path = str(tmp_path / "watched.db")
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("CREATE TABLE t (x INTEGER)")
    calls: list[str] = []

    def on_change(payload: str) -> None:
        calls.append(payload)
        if len(calls) == 1:
            raise RuntimeError("a failing handler must not end the watch")

    reads: list[object] = []
    read_data_version = sqlite_dialect._read_data_version

    async def counted_read(db: sqlite3.Connection) -> object:
        reads.append(value := await read_data_version(db))
        return value

    monkeypatch.setattr(sqlite_dialect, "_read_data_version", counted_read)
    dialect = SqliteDialect(path, change_poll_interval=timedelta(milliseconds=5))
    try:
        async with dialect.listen("any", on_change):
            await wait_for(lambda: bool(reads), 10)  # the watch's first read, the baseline
            assert calls == []
            for expected in (1, 2, 3):
                writer.execute("INSERT INTO t VALUES (?)", (expected,))
                await wait_for(lambda n=expected: len(calls) == n, 5)
            await anyio.sleep(0.2)
            assert calls == ["", "", ""]  # nothing committed since: no more calls
        async with SqliteDialect(":memory:").listen("any", on_change):
            pass  # private to its connection: nothing to watch, and no error
    finally:
        writer.close()


async def test_a_requeued_failed_job_starts_in_another_process_well_before_a_poll(
    make_jobs: Factory, dsn: str, tmp_path: Path
) -> None:
    log_file = tmp_path / "events.log"
    later = datetime.now(UTC) + timedelta(hours=1)
    async with make_jobs(commands=ALL_COMMANDS, execute=False) as producer:
        # Cancelled while it waits for its run_after: archived with the failed jobs.
        ref = await producer.enqueue_command(
            SleepCommand,
            Sleep(0, label="again", log_file=str(log_file)),
            JobOptions(run_after=later),
        )
        await producer.cancel_job(ref.id)
        # A newer job stays queued: the requeued one comes back below the newest id.
        await producer.enqueue_command(
            SleepCommand, Sleep(0, label="later"), JobOptions(run_after=later)
        )
        worker = await anyio.to_thread.run_sync(start_worker, dsn, "--poll-ms", "5000")
        try:
            await anyio.sleep(0.5)  # past the worker's first claim: it now sleeps for 5 s
            requeued = time.time()
            await producer.requeue_failed_job(ref.id)
            await wait_for(lambda: started_at(log_file, "again") is not None, 5)
        finally:
            await anyio.to_thread.run_sync(stop_worker, worker)
    started = started_at(log_file, "again")
    # its poll would take it about 4.5 s after the requeue
    assert started is not None and started - requeued < 2.0


async def test_a_dead_nodes_job_requeued_elsewhere_starts_in_another_process_before_a_poll(
    make_jobs: Factory, dsn: str, tmp_path: Path
) -> None:
    """A job taken back from a node whose lease ran out goes back under its old id. The
    process that takes it back may have no room for it (here it executes nothing): an idle
    worker process hears of it at once, not at its next poll."""
    log_file = tmp_path / "events.log"
    async with make_jobs(commands=ALL_COMMANDS, execute=False) as producer:
        ref = await producer.enqueue_command(
            SleepCommand, Sleep(0, label="orphan", log_file=str(log_file))
        )
        # A newer job that is never due: the orphan comes back below the newest id.
        await producer.enqueue_command(
            SleepCommand,
            Sleep(0, label="later"),
            JobOptions(run_after=datetime.now(UTC) + timedelta(hours=1)),
        )
        # Claimed by a node that holds no lease: Started under a dead node.
        (claimed,) = (await producer.store.claim("dead-node", 10)).jobs
        assert claimed.id == ref.id
        # The worker's own look for orphans comes 30 s after its start (half its lease).
        worker = await anyio.to_thread.run_sync(
            start_worker, dsn, "--poll-ms", "5000", "--lease-seconds", "60"
        )
        try:
            await anyio.sleep(0.5)  # past the worker's first claim: it now sleeps for 5 s
            requeued_at = time.time()
            _final, requeued = await producer.store.recover_orphans()
            assert requeued == [ref.id]
            await wait_for(lambda: started_at(log_file, "orphan") is not None, 5)
        finally:
            await anyio.to_thread.run_sync(stop_worker, worker)
    started = started_at(log_file, "orphan")
    # its poll would take it about 4.5 s after the requeue
    assert started is not None and started - requeued_at < 2.0


async def test_a_job_cut_off_by_a_shutdown_starts_in_another_process_before_a_poll(
    make_jobs: Factory, dsn: str, tmp_path: Path
) -> None:
    """A process that stops puts the jobs it cut off back in the queue under their old ids (a
    rolling deploy): an idle worker process takes them over at once, not at its next poll."""
    log_file = tmp_path / "events.log"
    async with make_jobs(commands=ALL_COMMANDS, execute=False):
        pass  # migrate before the workers start
    leaving = await anyio.to_thread.run_sync(start_worker, dsn, "--grace-seconds", "0.2")
    try:
        async with make_jobs(commands=ALL_COMMANDS, execute=False) as producer:
            await producer.enqueue_command(
                SleepCommand, Sleep(60, label="long", log_file=str(log_file))
            )
            await wait_for(lambda: started_at(log_file, "long") is not None, 5)
        staying = await anyio.to_thread.run_sync(start_worker, dsn, "--poll-ms", "5000")
        try:
            await anyio.sleep(0.5)  # past the idle worker's first claim: it now sleeps for 5 s

            def taken_over() -> float | None:
                starts = [
                    float(line[2])
                    for line in event_lines(log_file)
                    if line[0] == "start" and line[3] == str(staying.pid)
                ]
                return starts[0] if starts else None

            stopping = time.time()
            await anyio.to_thread.run_sync(stop_worker, leaving)
            await wait_for(lambda: taken_over() is not None, 5)
            started = taken_over()
            # the 0.2 s grace, then the requeue's commit wakes the idle worker (its poll would
            # take the job about 4.5 s after the stop began)
            assert started is not None and started - stopping < 3.0
        finally:
            await anyio.to_thread.run_sync(stop_worker, staying)
    finally:
        await anyio.to_thread.run_sync(stop_worker, leaving)
