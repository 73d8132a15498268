"""The database servers, and small raw connections the harness uses to watch and check a run.

Everything lives in one database named ``bench`` on each server (created if missing): on
PostgreSQL each system gets its own schema there (asyncjobs ``aj``, pgqueuer ``pgq``,
procrastinate ``procr``, the raw-driver limits ``raw``), dropped and recreated between
workloads; on MariaDB the ``bench`` database itself is dropped and recreated.

The servers default to the local test servers; ``BENCH_POSTGRES`` and ``BENCH_MYSQL`` (server
DSNs without a database) point elsewhere.
"""

from __future__ import annotations

import abc
import os
import re
import sqlite3
from typing import Any
from urllib.parse import urlsplit

import anyio.to_thread

PG_SERVER = os.environ.get("BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432")
MYSQL_SERVER = os.environ.get("BENCH_MYSQL", "mysql://root@127.0.0.1:3306")
DATABASE = "bench"


def pg_dsn(database: str = DATABASE) -> str:
    return f"{PG_SERVER.rstrip('/')}/{database}"


def mysql_dsn(database: str = DATABASE) -> str:
    return f"{MYSQL_SERVER.rstrip('/')}/{database}"


def _mysql_params() -> dict[str, Any]:
    parts = urlsplit(MYSQL_SERVER)
    return {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 3306,
        "user": parts.username or "root",
        "password": parts.password or "",
    }


class Probe(abc.ABC):
    """One raw connection. SQL is written with ``?`` placeholders in every dialect."""

    @abc.abstractmethod
    async def fetchval(self, sql: str, *args: Any) -> Any: ...

    @abc.abstractmethod
    async def execute(self, sql: str, *args: Any) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...


class PgProbe(Probe):
    def __init__(self, conn: Any) -> None:
        self.conn = conn

    @classmethod
    async def connect(cls, database: str = DATABASE, schema: str | None = None) -> PgProbe:
        import asyncpg

        settings = {"search_path": schema} if schema else {}
        return cls(await asyncpg.connect(pg_dsn(database), server_settings=settings))

    @staticmethod
    def _sql(sql: str) -> str:
        count = 0

        def number(_match: re.Match[str]) -> str:
            nonlocal count
            count += 1
            return f"${count}"

        return re.sub(r"\?", number, sql)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self.conn.fetchval(self._sql(sql), *args)

    async def execute(self, sql: str, *args: Any) -> None:
        await self.conn.execute(self._sql(sql), *args)

    async def close(self) -> None:
        await self.conn.close()


class MysqlProbe(Probe):
    def __init__(self, conn: Any) -> None:
        self.conn = conn

    @classmethod
    async def connect(cls, database: str | None = DATABASE) -> MysqlProbe:
        import aiomysql

        params = _mysql_params()
        if database:
            params["db"] = database
        return cls(await aiomysql.connect(autocommit=True, **params))

    async def fetchval(self, sql: str, *args: Any) -> Any:
        async with self.conn.cursor() as cur:
            await cur.execute(sql.replace("?", "%s"), args or None)
            row = await cur.fetchone()
        return None if row is None else row[0]

    async def execute(self, sql: str, *args: Any) -> None:
        async with self.conn.cursor() as cur:
            await cur.execute(sql.replace("?", "%s"), args or None)

    async def close(self) -> None:
        self.conn.close()


class SqliteProbe(Probe):
    """A second connection to the file; WAL lets it read while the worker writes."""

    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._limiter = anyio.CapacityLimiter(1)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        def run() -> Any:
            row = self.db.execute(sql, args).fetchone()
            return None if row is None else row[0]

        return await anyio.to_thread.run_sync(run, limiter=self._limiter)

    async def execute(self, sql: str, *args: Any) -> None:
        await anyio.to_thread.run_sync(lambda: self.db.execute(sql, args), limiter=self._limiter)

    async def close(self) -> None:
        self.db.close()


#: The servers this run uses (set by ``ensure_databases``), which ``settle`` quiets.
_in_use: set[str] = set()

#: How long ``settle`` waits for MariaDB at most, and what counts as quiet: the dirty pages of
#: the buffer pool and the undo log that purge has still to clean.
SETTLE_TIMEOUT = 30.0
QUIET_DIRTY_PAGES = 20
QUIET_HISTORY = 50


async def settle() -> None:
    """Let the servers finish the background work that earlier writes left, before a timed
    part begins, so that no run pays for its predecessor's: PostgreSQL checkpoints now (else
    the checkpoint every 5 minutes lands inside whichever run is going), MariaDB flushes its
    dirty pages (which moves its redo checkpoint on, so a drain starts with the whole redo
    log free) and purges the rows that earlier transactions deleted. Every subject gets it,
    peers and raw loops alike."""
    if "postgres" in _in_use:
        import asyncpg

        probe: Probe = await PgProbe.connect()
        try:
            await probe.execute("CHECKPOINT")
        except asyncpg.InsufficientPrivilegeError:
            pass  # a server of BENCH_POSTGRES where the user may not: it checkpoints on its own
        finally:
            await probe.close()
    if "mysql" in _in_use:
        import aiomysql

        probe = await MysqlProbe.connect(None)
        try:
            limit = await probe.fetchval("SELECT @@GLOBAL.innodb_max_dirty_pages_pct")
            try:
                # Zero tells the page cleaner to flush everything; the setting is put back.
                await probe.execute("SET GLOBAL innodb_max_dirty_pages_pct = 0")
            except aiomysql.OperationalError:
                flushing = False  # no privilege (BENCH_MYSQL): wait for purge alone
            else:
                flushing = True
            try:
                with anyio.move_on_after(SETTLE_TIMEOUT):
                    while not await _mysql_quiet(probe, flushing):
                        await anyio.sleep(0.1)
            finally:
                if flushing:
                    await probe.execute(f"SET GLOBAL innodb_max_dirty_pages_pct = {float(limit)}")
        finally:
            await probe.close()


async def _mysql_quiet(probe: Probe, flushing: bool) -> bool:
    dirty = await probe.fetchval(
        "SELECT variable_value FROM information_schema.global_status"
        " WHERE variable_name = 'INNODB_BUFFER_POOL_PAGES_DIRTY'"
    )
    history = await probe.fetchval(
        "SELECT variable_value FROM information_schema.global_status"
        " WHERE variable_name = 'INNODB_HISTORY_LIST_LENGTH'"
    )
    return (not flushing or int(dirty) <= QUIET_DIRTY_PAGES) and int(history) <= QUIET_HISTORY


async def ensure_databases(postgres: bool, mysql: bool) -> None:
    """Create the ``bench`` database on the servers that a run needs."""
    _in_use.update(name for name, used in (("postgres", postgres), ("mysql", mysql)) if used)
    if postgres:
        probe = await PgProbe.connect("postgres")
        try:
            if not await probe.fetchval("SELECT 1 FROM pg_database WHERE datname = ?", DATABASE):
                await probe.execute(f"CREATE DATABASE {DATABASE}")
        finally:
            await probe.close()
    if mysql:
        await recreate_mysql_database()


async def recreate_mysql_database() -> None:
    probe = await MysqlProbe.connect(None)
    try:
        await probe.execute(f"DROP DATABASE IF EXISTS {DATABASE}")
        await probe.execute(f"CREATE DATABASE {DATABASE} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    finally:
        await probe.close()


async def recreate_pg_schema(schema: str) -> None:
    probe = await PgProbe.connect()
    try:
        await probe.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await probe.execute(f"CREATE SCHEMA {schema}")
    finally:
        await probe.close()


async def server_versions(postgres: bool, mysql: bool) -> dict[str, str]:
    versions = {"sqlite": sqlite3.sqlite_version}
    if postgres:
        probe = await PgProbe.connect()
        try:
            versions["postgres"] = str(await probe.fetchval("SHOW server_version"))
            for name in ("fsync", "synchronous_commit", "shared_buffers", "autovacuum"):
                versions[f"postgres.{name}"] = str(await probe.fetchval(f"SHOW {name}"))
        finally:
            await probe.close()
    if mysql:
        my = await MysqlProbe.connect(None)
        try:
            versions["mysql"] = str(await my.fetchval("SELECT VERSION()"))
            versions["mysql.innodb_flush_log_at_trx_commit"] = str(
                await my.fetchval("SELECT @@innodb_flush_log_at_trx_commit")
            )
        finally:
            await my.close()
    return versions
