"""Isolated MariaDB/MySQL databases for the contract suite: one fresh database per test.

The server is ``ASYNCJOBS_TEST_MYSQL`` (default: the local test server, root without a
password). If it cannot be reached the test fails; it is never skipped.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiomysql

SERVER = os.environ.get("ASYNCJOBS_TEST_MYSQL", "mysql://root@127.0.0.1:3306/test")


def server_dsn(database: str) -> str:
    """The test server's DSN with another database."""
    parts = urlsplit(SERVER)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", "", ""))


async def connect(dsn: str = SERVER, *, autocommit: bool = True) -> aiomysql.Connection:
    """A plain aiomysql connection to a DSN's server and database (the application's own,
    in tests); raises when the server is away (fail, not skip)."""
    parts = urlsplit(dsn)
    return await aiomysql.connect(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 3306,
        user=parts.username or "root",
        password=parts.password or "",
        db=parts.path.lstrip("/") or None,
        autocommit=autocommit,
        charset="utf8mb4",
    )


async def admin() -> aiomysql.Connection:
    """A connection to the test server without a database."""
    return await connect(server_dsn(""))


async def _run(sql: str) -> None:
    conn = await admin()
    try:
        async with conn.cursor() as cur:
            await cur.execute(sql)
    finally:
        conn.close()


async def isolated_dsn() -> AsyncIterator[str]:
    """Create a database with a random name, yield a DSN that uses it, drop it afterwards."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    await _run(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    try:
        yield server_dsn(name)
    finally:
        await _run(f"DROP DATABASE IF EXISTS `{name}`")


async def query(dsn: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Run one statement on a connection of its own; its rows as tuples."""
    conn = await connect(dsn)
    try:
        async with conn.cursor() as cur:
            await cur.execute(sql, args or None)
            return list(await cur.fetchall())
    finally:
        conn.close()
