"""The SQLite dialect's own settings, on a real database file."""

from __future__ import annotations

import multiprocessing
import sqlite3
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from asyncjobs import BackgroundJobs, JobOptions
from asyncjobs.dialects.sqlite import SqliteDialect, connect
from asyncjobs.exceptions import ConfigurationError, DatabaseBusyError, InvalidDsnError
from asyncjobs.store import month_key, utcnow
from tests.commands import Add, AddCommand

pytestmark = pytest.mark.anyio


async def test_connection_runs_wal_with_rare_checkpoints_and_a_bounded_file(
    tmp_path: Path,
) -> None:
    """WAL, NORMAL sync, a checkpoint every 10 000 pages (the queue's hot pages are then copied
    once per 10 000, not per 1 000) and the WAL file cut back to 64 MiB afterwards."""
    dialect = SqliteDialect(str(tmp_path / "jobs.db"))
    await dialect.open()
    try:
        settings = await dialect.run(
            lambda db: [
                db.execute(f"PRAGMA {name}").fetchone()[0]
                for name in (
                    "journal_mode",
                    "synchronous",
                    "wal_autocheckpoint",
                    "journal_size_limit",
                )
            ]
        )
    finally:
        await dialect.close()
    assert settings == ["wal", 1, 10_000, 64 * 1024 * 1024]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_path_that_is_no_database_is_a_configuration_error(tmp_path: Path) -> None:
    not_a_database = tmp_path / "notes.txt"
    not_a_database.write_text("not SQLite, " * 1000)
    a_file = tmp_path / "file"
    a_file.write_text("")
    for path, reason in (
        (tmp_path, "unable to open"),
        (not_a_database, "not a database"),
        (a_file / "jobs.db", "cannot make the directory"),
        (tmp_path / "nul\x00.db", "null byte"),
    ):
        jobs = BackgroundJobs(f"sqlite:///{path}")
        with pytest.raises(ConfigurationError, match=reason):
            async with jobs:
                pass
    assert not_a_database.read_text().startswith("not SQLite")


@pytest.mark.parametrize(
    "query",
    ["busy_timeout=abc", "busy_timeout=5", "max_size=-5", "nonsense=1", "nonsense", "a=1&b=2"],
)
def test_dsn_query_options_are_refused(tmp_path: Path, query: str) -> None:
    """SQLite's settings are keyword arguments only: an option in the DSN is an error, not
    dropped without a word."""
    with pytest.raises(InvalidDsnError, match="takes no query options"):
        BackgroundJobs(f"sqlite:///{tmp_path / 'jobs.db'}?{query}")
    BackgroundJobs(f"sqlite:///{tmp_path / 'jobs.db'}", busy_timeout=5)


async def test_connection_folds_case_as_python_does(tmp_path: Path) -> None:
    """unicode_lower(), which the admin's search uses: SQLite's LOWER folds ASCII only."""
    dialect = SqliteDialect(str(tmp_path / "jobs.db"))
    await dialect.open()
    try:
        folded = await dialect.run(
            lambda db: db.execute(
                "SELECT LOWER('ÄRGER Öl'), unicode_lower('ÄRGER Öl'), unicode_lower(NULL), "
                "unicode_lower(7)"
            ).fetchone()
        )
    finally:
        await dialect.close()
    assert folded == ("Ärger Öl", "ärger öl", None, 7)


def _open_at(path: str, start: float) -> str:
    """In another process: open ``path`` as the dialect does, at ``start`` (wall clock)."""
    time.sleep(max(0.0, start - time.time()))
    try:
        connect(path, 30.0).close()
    except sqlite3.Error as exc:
        return repr(exc)
    return "ok"


def test_processes_opening_a_new_file_together_all_open_it(tmp_path: Path) -> None:
    """Replicas started together on a new database file race to switch it to WAL, and SQLite
    tells the losers "locked" at once, without waiting out the busy timeout: they try again
    rather than fail to start. (Four processes, forty new files: without the retry about one
    open in fifteen failed.)"""
    with ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_open_at, [str(tmp_path / "warm.db")] * 4, [0.0] * 4))  # started
        results = []
        for round_ in range(40):
            path = str(tmp_path / f"new-{round_}.db")
            start = time.time() + 0.05
            results += pool.map(_open_at, [path] * 4, [start] * 4)
    assert results == ["ok"] * 160


@pytest.mark.anyio
async def test_a_database_another_process_keeps_locked_is_a_busy_error_after_one_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Another connection holds the write lock past the busy timeout: the enqueue fails with
    DatabaseBusyError once that timeout is out (sent once: nothing was written, so nothing was
    lost either), and works once the lock is let go."""
    path = tmp_path / "jobs.db"
    jobs = BackgroundJobs(f"sqlite:///{path}", commands=[AddCommand], busy_timeout=1.0)
    async with jobs:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with pytest.raises(DatabaseBusyError, match="stayed locked by another connection"):
            await jobs.enqueue_command(AddCommand, Add(1, 2))
        waited = time.monotonic() - started
        other.execute("ROLLBACK")
        other.close()
        ref = await jobs.enqueue_command(AddCommand, Add(1, 2))
        assert (await jobs.wait_for_job(ref.id)).state.value == "Completed"
    assert 1.0 <= waited < 2.0  # one busy timeout, not two
    assert "connection lost" not in caplog.text


async def _claim_steps(path: Path, delayed: int, *, dependents: bool = False) -> int:
    """SQLite's virtual-machine steps for one claim of 50 ready jobs that were enqueued after
    ``delayed`` jobs not due for an hour, or with ``dependents`` after as many jobs that depend
    on such a job (the claim run on its own connection, rolled back)."""
    dsn = f"sqlite:///{path}"
    async with BackgroundJobs(dsn, commands=[AddCommand], execute=False) as jobs:
        later = JobOptions(run_after=datetime.now(UTC) + timedelta(hours=1))
        if dependents:
            parent = await jobs.enqueue_command(AddCommand, Add(0, 0), later)
            later = JobOptions(depends_on=parent.id)
        for start in range(0, delayed, 1000):
            count = min(1000, delayed - start)
            await jobs.enqueue_many((AddCommand, Add(i, i), later) for i in range(count))
        await jobs.enqueue_many((AddCommand, Add(i, i)) for i in range(100))
        assert isinstance(jobs.dialect, SqliteDialect)
        statements = jobs.dialect.statements(
            "complete_and_claim_jobs", {"month": month_key(utcnow())}
        )
    params = {
        "now": utcnow().strftime("%Y-%m-%d %H:%M:%S.%f"),  # as the dialect stores datetimes
        "node": "n",
        "limit": 50,
        "named_only": 0,
        "skip_named": 0,
        "outcomes": "[]",
    }
    steps, claimed = _vm_steps(path, statements, params)
    assert claimed == 50
    return steps


def _vm_steps(
    path: Path, statements: list[str], params: dict[str, Any] | None = None
) -> tuple[int, int]:
    """Run ``statements`` on a connection of their own, in a transaction rolled back: SQLite's
    virtual-machine steps (in hundreds), and the most rows one statement changed."""
    conn = sqlite3.connect(path, isolation_level=None)
    steps = changed = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.set_progress_handler(count, 100)
        for sql in statements:
            cursor = conn.execute(sql, {k: v for k, v in (params or {}).items() if f":{k}" in sql})
            cursor.fetchall()
            changed = max(changed, cursor.rowcount)
        conn.set_progress_handler(None, 0)
        conn.execute("ROLLBACK")
    finally:
        conn.close()
    return steps, changed


@pytest.mark.parametrize("dependents", [False, True], ids=["delayed", "dependents"])
async def test_a_backlog_of_jobs_not_runnable_costs_the_claim_nothing(
    tmp_path: Path, dependents: bool
) -> None:
    """Jobs not due yet (delayed, or retries waiting out their backoff), and dependents of a
    job not completed, are in no index the claim walks: with 3 000 of them queued ahead of the
    ready jobs, a claim does about the work it does without them (it read every one of them
    before)."""
    without = await _claim_steps(tmp_path / "empty.db", 0)
    behind = await _claim_steps(tmp_path / "behind.db", 3000, dependents=dependents)
    assert behind < without * 1.5, (without, behind)


async def test_the_periodic_recovery_reads_a_row_per_parent_not_per_dependent(
    tmp_path: Path,
) -> None:
    """The recovery's look for dependents a cascade or a completion missed reads each parent
    that has dependents once: with 3 000 dependents of one job it does about the work it does
    with 3 (it read every one of them before)."""
    steps = {}
    for dependents in (3, 3000):
        path = tmp_path / f"{dependents}.db"
        async with BackgroundJobs(
            f"sqlite:///{path}", commands=[AddCommand], execute=False
        ) as jobs:
            later = JobOptions(run_after=datetime.now(UTC) + timedelta(hours=1))
            parent = await jobs.enqueue_command(AddCommand, Add(0, 0), later)
            for start in range(0, dependents, 1000):
                dependent = JobOptions(depends_on=parent.id)
                count = min(1000, dependents - start)
                await jobs.enqueue_many((AddCommand, Add(i, i), dependent) for i in range(count))
            assert isinstance(jobs.dialect, SqliteDialect)
            statements = [
                sql
                for name in ("stranded_parents", "release_dependents")
                for sql in jobs.dialect.statements(name, {})
            ]
        steps[dependents], _ = _vm_steps(path, statements)
    assert steps[3000] < steps[3] + 5, steps
