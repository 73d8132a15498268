"""The SQLite dialect's own settings, on a real database file."""

from __future__ import annotations

from pathlib import Path

import pytest

from asyncjobs import BackgroundJobs
from asyncjobs.dialects.sqlite import SqliteDialect
from asyncjobs.exceptions import ConfigurationError, InvalidDsnError

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
