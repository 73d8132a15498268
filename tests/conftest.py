"""Shared fixtures. The contract suite runs every test once per selected dialect; each test gets
its own database (a file for SQLite, a schema for PostgreSQL, a database for MariaDB).

Select dialects with ``--dialects sqlite,postgres`` (default: all). A selected dialect whose
server is unreachable makes its tests fail, never skip.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from asyncjobs import BackgroundJobs

ALL_DIALECTS = ("sqlite", "postgres", "mysql")

# No per-example deadline anywhere: on a machine the databases and the suite share, a stall says
# nothing about the property under test.
settings.register_profile("asyncjobs", deadline=None)
settings.load_profile("asyncjobs")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--dialects",
        default=os.environ.get("ASYNCJOBS_TEST_DIALECTS", ",".join(ALL_DIALECTS)),
        help="comma-separated dialects the contract suite runs on",
    )


def selected_dialects(config: pytest.Config) -> list[str]:
    names = [d.strip() for d in str(config.getoption("--dialects")).split(",") if d.strip()]
    unknown = set(names) - set(ALL_DIALECTS) - {"mssql"}
    if unknown:
        raise pytest.UsageError(f"unknown dialects {sorted(unknown)}")
    return names


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "dialect_name" in metafunc.fixturenames:
        only = metafunc.definition.get_closest_marker("dialects")
        names = selected_dialects(metafunc.config)
        if only is not None:
            names = [n for n in names if n in only.args]
        metafunc.parametrize(
            "dialect_name", [pytest.param(n, marks=getattr(pytest.mark, n)) for n in names]
        )


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _isolated_dsn(dialect_name: str, tmp_path: Path) -> AsyncIterator[str]:
    if dialect_name == "sqlite":
        yield f"sqlite:///{tmp_path / 'jobs.db'}"
        return
    # Each server dialect provides tests/db_<dialect>.py with an `isolated_dsn()` generator.
    module = importlib.import_module(f"tests.db_{dialect_name}")
    async for dsn in module.isolated_dsn():
        yield dsn


@pytest.fixture
async def dsn(dialect_name: str, tmp_path: Path) -> AsyncIterator[str]:
    async for value in _isolated_dsn(dialect_name, tmp_path):
        yield value


FAST = {
    "poll_interval": timedelta(milliseconds=100),
    "retry_delay": timedelta(0),
    "lease_duration": timedelta(seconds=2),
    "shutdown_grace": timedelta(seconds=2),
}


@pytest.fixture
def make_jobs(dsn: str) -> Callable[..., BackgroundJobs]:
    """A factory of BackgroundJobs on this test's database, with test-speed intervals."""

    def factory(**settings: Any) -> BackgroundJobs:
        return BackgroundJobs(dsn, **{**FAST, **settings})

    return factory
