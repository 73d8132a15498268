"""Isolated SQL Server databases for the contract suite: one fresh database per test.

The server is ``ASYNCJOBS_MSSQL_DSN`` (``mssql://user:pw@host:1433/master?driver=...``; its
database is where the test databases are created from). There is no default: selecting
``--dialects mssql`` without it fails every test with a message saying so, and a server that
cannot be reached fails too. Neither is ever skipped.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from asyncjobs.dialects._dsn import parse_dsn

ENV = "ASYNCJOBS_MSSQL_DSN"


def server_dsn() -> str:
    dsn = os.environ.get(ENV)
    if not dsn:
        pytest.fail(
            f"--dialects includes mssql but {ENV} is not set; set it to a SQL Server DSN, e.g. "
            f"{ENV}='mssql://sa:pw@127.0.0.1:1433/master?driver=ODBC+Driver+18+for+SQL+Server"
            "&TrustServerCertificate=yes'",
            pytrace=False,
        )
    return dsn


def with_database(dsn: str, database: str) -> str:
    """The DSN with another database (same server, credentials and options)."""
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, ""))


async def connect(dsn: str, *, autocommit: bool = True) -> Any:
    """A plain aioodbc connection to a DSN's database; raises when the server is away."""
    import aioodbc  # only when the suite runs on SQL Server

    from asyncjobs.dialects.mssql import odbc_connection_string

    return await aioodbc.connect(dsn=odbc_connection_string(parse_dsn(dsn)), autocommit=autocommit)


async def _run(sql: str) -> None:
    conn = await connect(server_dsn())
    try:
        cur = await conn.cursor()
        await cur.execute(sql)
        await cur.close()
    finally:
        await conn.close()


async def isolated_dsn() -> AsyncIterator[str]:
    """Create a database with a random name, yield a DSN that uses it, drop it afterwards."""
    server = server_dsn()
    name = f"t_{uuid.uuid4().hex[:16]}"
    await _run(f"CREATE DATABASE [{name}]")
    try:
        yield with_database(server, name)
    finally:
        # Pooled connections of the test may still be open: end them first.
        await _run(
            f"IF DB_ID(N'{name}') IS NOT NULL BEGIN "
            f"ALTER DATABASE [{name}] SET SINGLE_USER WITH ROLLBACK IMMEDIATE; "
            f"DROP DATABASE [{name}]; END"
        )
