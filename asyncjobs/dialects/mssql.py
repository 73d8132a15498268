"""SQL Server 2019+ (and Azure SQL) on aioodbc, through Microsoft's ODBC driver.

A pool of autocommitting connections; ``transaction()`` runs ``BEGIN TRANSACTION`` on one and
commits or rolls it back. Every pooled session runs with ``XACT_ABORT ON``, so a failed
statement rolls back its whole transaction rather than leaving part of it applied; in the
application's own transaction (``adopt``) a batch of several statements runs under a savepoint
instead (see ``_all_or_nothing``). Datetimes are stored as naive
UTC in datetime2(6) and read back as aware UTC datetimes. Archives are monthly tables, as on
SQLite (see ``sql/mssql/archive.sql``).

A named query of several statements is sent as one batch (one round trip): its statements hand
values to each other in table variables, ``fetch`` returns the rows of the last result set and
``execute`` the row count of the last statement that changed rows. On an autocommitting
``connection()`` such a batch is wrapped in a transaction of its own. Every result of a batch is
read, because SQL Server reports an error of a later statement only when its result is reached.
DDL scripts run statement by statement, inside a transaction (SQL Server DDL is transactional).

Parameters are written ``:name`` in the SQL files and sent as ODBC ``?`` markers (repeated as
often as used). aioodbc is imported when the dialect opens, so the DSN conversion can be used
(and tested) without the driver.

A deadlock (1205) in a query that is the first of its transaction (as a claim is) is retried a
bounded number of times: SQL Server rolled the whole transaction back, so nothing of it remains
and a retry is invisible. ``statistics()`` counts those retries and the deadlocks left to the
caller.

SQL Server has no notifications that reach a client; as on MySQL, a process watches for new job
ids on a connection of its own (``listen``) and so learns of new jobs committed elsewhere within
milliseconds. Its reads skip rows that uncommitted enqueues hold (READPAST) rather than wait.

Settings (keyword arguments or DSN query options): ``min_size`` and ``max_size`` (the pool),
``deadlock_retries`` (default 5), ``pool_recycle`` (seconds a connection is kept, default 3600),
``connect_timeout`` (login timeout in seconds, default 10); as a keyword argument only,
``change_poll_interval`` (a timedelta, default 10 ms: how often the watch reads while jobs
come). Other DSN query options go into the ODBC connection string as they are (``driver``,
``TrustServerCertificate``, ``Encrypt``, ...).
"""

from __future__ import annotations

import importlib
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import anyio

from .._settings import check_pool_settings
from .._sql import Queries, convert_params, load_queries, split_statements
from ..exceptions import ConfigurationError, InvalidDsnError
from ._base import (
    Capabilities,
    Connection,
    Dialect,
    NewJobIds,
    Params,
    Row,
    WatchedIds,
    WatchesNewJobIds,
    in_arrival_order,
    retry_deadlocks,
    watched_ids,
)
from ._dsn import Dsn

log = logging.getLogger("asyncjobs.mssql")
T = TypeVar("T")

DEFAULT_DRIVER = "ODBC Driver 18 for SQL Server"
#: DSN query options read by this dialect; the others go into the ODBC connection string
_OPTIONS = ("min_size", "max_size", "deadlock_retries", "pool_recycle", "connect_timeout")
_FLOAT_OPTIONS = ("pool_recycle", "connect_timeout")
#: settings that are keyword arguments only
_SETTINGS = (*_OPTIONS, "change_poll_interval")
#: ODBC connection-string keys this dialect writes itself from the DSN's parts
_RESERVED_KEYS = frozenset({"server", "database", "uid", "pwd", "address", "addr"})
_KEY = re.compile(r"[A-Za-z][A-Za-z0-9 _-]*\Z")
_DEADLOCK = 1205
_UNIQUE = frozenset({2627, 2601})  # unique constraint, unique index
#: a native error number as pyodbc writes it: "message (2627) (SQLExecDirectW)", and for the
#: further diagnostic records "; [01000] ... message (3621)". Numbers inside a message, such as
#: "The duplicate key value is (1205).", are followed by neither and are not taken.
_NATIVE = re.compile(r"\((\d+)\)(?= \(SQL\w*\)|; \[|$)")
_FORMAT = "%Y-%m-%dT%H:%M:%S.%f"
#: Run once on each new connection. XACT_ABORT ON: any error (a client timeout included) rolls
#: back the whole transaction and ends the batch, so a failed batch never leaves part of its
#: statements applied. READ COMMITTED is the default; it is set because a pooled connection
#: must not inherit another isolation level (the claim's reasoning assumes it, with or without
#: the database's READ_COMMITTED_SNAPSHOT).
_SESSION = "SET XACT_ABORT ON; SET NOCOUNT OFF; SET TRANSACTION ISOLATION LEVEL READ COMMITTED;"
_BEGIN = "BEGIN TRANSACTION"
_COMMIT = "COMMIT TRANSACTION"
_ROLLBACK = "IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION"


def to_db_time(value: datetime) -> str:
    """Naive-UTC ISO 8601 text, as OPENJSON reads it into datetime2 whatever the language."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.strftime(_FORMAT)


def _brace(value: str) -> str:
    """An ODBC connection-string value, braced when it has characters that end or open one."""
    if any(c in value for c in ";{}=") or value != value.strip():
        return "{" + value.replace("}", "}}") + "}"
    return value


def odbc_connection_string(dsn: Dsn) -> str:
    """The ODBC connection string of an ``mssql://user:pw@host:port/db?options`` DSN."""
    if not dsn.host:
        raise InvalidDsnError("a SQL Server DSN needs a host: mssql://user:pw@host:1433/dbname")
    if not dsn.database:
        raise InvalidDsnError("a SQL Server DSN needs a database: mssql://user:pw@host:1433/dbname")
    extra = {k: v for k, v in dsn.options.items() if k not in _OPTIONS}
    driver = DEFAULT_DRIVER
    for key in list(extra):
        if key.lower() == "driver":
            driver = extra.pop(key)
    if not driver.strip():
        raise InvalidDsnError(
            "the DSN option driver is empty; e.g. driver=ODBC+Driver+18+for+SQL+Server"
        )
    parts = [f"DRIVER={{{driver.replace('}', '}}')}}}"]
    server = dsn.host if dsn.port is None else f"{dsn.host},{dsn.port}"
    parts += [f"SERVER={_brace(server)}", f"DATABASE={_brace(dsn.database)}"]
    if dsn.user is not None:
        parts.append(f"UID={_brace(dsn.user)}")
    if dsn.password is not None:
        parts.append(f"PWD={_brace(dsn.password)}")
    for key, value in extra.items():
        if not _KEY.match(key):
            raise InvalidDsnError(f"invalid ODBC keyword {key!r} in a SQL Server DSN")
        if key.lower() in _RESERVED_KEYS:
            raise InvalidDsnError(
                f"the DSN option {key!r} conflicts with the DSN's host, database or credentials"
            )
        parts.append(f"{key}={_brace(value)}")
    return ";".join(parts)


def _odbc_error(exc: BaseException) -> tuple[str, str] | None:
    """(SQLSTATE, message) of a pyodbc error, without importing pyodbc. Errors pyodbc raises
    itself (a closed connection or cursor) have a message only: their SQLSTATE is ''."""
    if type(exc).__module__ != "pyodbc" or not exc.args:
        return None
    if len(exc.args) == 1:
        return "", str(exc.args[0])
    return str(exc.args[0]), str(exc.args[1])


def native_errors(exc: BaseException) -> list[int]:
    """SQL Server's error numbers in a pyodbc error (several diagnostic records may be joined)."""
    error = _odbc_error(exc)
    return [] if error is None else [int(n) for n in _NATIVE.findall(error[1])]


def _is_server_error(exc: BaseException) -> bool:
    """An error the server reported: the connection is still in a known state."""
    error = _odbc_error(exc)
    return error is not None and "[SQL Server]" in error[1] and not error[0].startswith("08")


def _convert(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value
    if isinstance(value, bool):
        return int(value)
    return value


class MssqlConnection:
    """Runs named queries on one aioodbc connection (see the module docstring)."""

    def __init__(self, dialect: MssqlDialect, conn: Any, *, in_transaction: bool, own: bool):
        self._dialect = dialect
        self._conn = conn
        self._in_transaction = in_transaction
        #: the session is ours (pooled, set up with _SESSION), not the application's
        self._own = own
        #: nothing has run yet in this transaction, so a deadlock may be retried
        self._fresh = own
        #: the transaction's state is unknown (a script failed half-way)
        self.broken = False

    async def fetch(self, query: str, params: Params | None = None, **templates: str) -> list[Row]:
        rows, _ = await self._attempt(lambda: self._run(query, params or {}, templates))
        return rows

    async def execute(self, query: str, params: Params | None = None, **templates: str) -> int:
        _, count = await self._attempt(lambda: self._run(query, params or {}, templates))
        return count

    async def executemany(self, query: str, params: Sequence[Params], **templates: str) -> None:
        """One batch per parameter set. (pyodbc's fast_executemany binds arrays, but cannot
        send nvarchar(max) values or read every result of a batch.)"""
        if not params:
            return

        async def run() -> None:
            for values in params:
                await self._run(query, values, templates)

        await self._attempt(run)

    async def script(self, query: str, **templates: str) -> None:
        """Run DDL statement by statement, inside the caller's transaction or one of its own."""
        statements = self._dialect.script_statements(query, templates)
        self._fresh = False
        own = not self._in_transaction
        cur = await self._conn.cursor()
        try:
            if own:
                await cur.execute(_BEGIN)
            for sql in statements:
                await cur.execute(sql)
                await _drain(cur)
            if own:
                await cur.execute(_COMMIT)
        except BaseException as exc:
            if own and _is_server_error(exc):
                with anyio.CancelScope(shield=True):
                    await cur.execute(_ROLLBACK)
            else:
                self.broken = True
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await cur.close()

    async def _run(
        self, query: str, params: Params, templates: dict[str, str]
    ) -> tuple[list[Row], int]:
        sql, names, multi = self._dialect.batch(query, templates)
        if multi and not self._in_transaction:
            sql = f"{_BEGIN};\n{sql};\n{_COMMIT};"
        elif multi and not self._own:
            sql = _all_or_nothing(sql)
        values = [_convert(params[name]) for name in names]
        cur = await self._conn.cursor()
        try:
            await cur.execute(sql, *values)
            return await _drain(cur)
        finally:
            with anyio.CancelScope(shield=True):
                await cur.close()

    async def _attempt(self, run: Callable[[], Awaitable[T]]) -> T:
        """Run, retrying a deadlock while it is the transaction's first query (autocommitting
        queries always are)."""
        first_is_retryable = self._fresh or not self._in_transaction
        self._fresh = False
        return await retry_deadlocks(
            run,
            first_is_retryable=first_is_retryable,
            is_deadlock=lambda exc: _DEADLOCK in native_errors(exc),
            recover=self._after_deadlock,
            limit=self._dialect.deadlock_retries,
            stats=self._dialect.stats,
        )

    async def _after_deadlock(self) -> None:
        # The deadlock victim's transaction is rolled back already: open a new one.
        if self._in_transaction:
            await _statement(self._conn, _BEGIN)


def _all_or_nothing(batch: str) -> str:
    """A batch of several statements for the application's own transaction, whose session may
    run with XACT_ABORT OFF (the default): there a failed statement (a duplicate ref id, say)
    ends only itself, and the batch goes on, leaving the statements before it applied (a job
    without its summary, which a commit would keep). A savepoint undoes them, and the error is
    raised again as it was; a transaction the error doomed is the application's to roll back."""
    return (
        f"SAVE TRANSACTION asyncjobs_batch;\nBEGIN TRY\n{batch};\nEND TRY\nBEGIN CATCH\n"
        "IF XACT_STATE() = 1 ROLLBACK TRANSACTION asyncjobs_batch;\nTHROW;\nEND CATCH;"
    )


async def _drain(cur: Any) -> tuple[list[Row], int]:
    """Read every result of a batch: the rows of the last result set and the row count of the
    last statement that reported one."""
    rows: list[Row] = []
    count = -1
    while True:
        if cur.description:
            names = [column[0] for column in cur.description]
            rows = [
                {
                    name: value.replace(tzinfo=UTC) if isinstance(value, datetime) else value
                    for name, value in zip(names, record, strict=True)
                }
                for record in await cur.fetchall()
            ]
        if cur.rowcount >= 0:
            count = int(cur.rowcount)
        if not await cur.nextset():
            return rows, max(count, 0)


async def _statement(conn: Any, sql: str) -> None:
    cur = await conn.cursor()
    try:
        await cur.execute(sql)
        await _drain(cur)
    finally:
        await cur.close()


class MssqlDialect(WatchesNewJobIds, Dialect):
    name = "mssql"
    # "notifications": a watch of new job ids stands in for them (see WatchesNewJobIds).
    capabilities = Capabilities(monthly_archive_tables=True, notifications=True)
    #: how datetimes are written inside JSON parameters (OPENJSON reads them into datetime2)
    json_time = staticmethod(to_db_time)

    def __init__(
        self,
        dsn: Dsn,
        *,
        min_size: int = 1,
        max_size: int = 10,
        deadlock_retries: int = 5,
        pool_recycle: float = 3600,
        connect_timeout: float = 10,
        change_poll_interval: timedelta = timedelta(milliseconds=10),
    ) -> None:
        check_pool_settings(
            min_size,
            max_size,
            deadlock_retries,
            pool_recycle,
            connect_timeout,
            change_poll_interval,
        )
        self.change_poll_interval = change_poll_interval
        self._new_job_ids = NewJobIds()
        self.dsn = dsn
        self.connection_string = odbc_connection_string(dsn)
        self.queries: Queries = load_queries("mssql")
        self.deadlock_retries = deadlock_retries
        self._min_size = min_size
        self._max_size = max_size
        self._pool_recycle = pool_recycle
        self._connect_timeout = connect_timeout
        self._pool: Any = None
        self._turns: anyio.Semaphore | None = None
        self._batches: dict[tuple[object, ...], tuple[str, tuple[str, ...], bool]] = {}
        self._scripts: dict[tuple[object, ...], list[str]] = {}
        self.stats = {"deadlock_retries": 0, "deadlocks": 0}

    def batch(self, query: str, templates: dict[str, str]) -> tuple[str, tuple[str, ...], bool]:
        """A query as one batch with ``?`` markers, the parameter names in marker order, and
        whether it has several statements; rendered and cached."""
        key = (query, *sorted(templates.items()))
        found = self._batches.get(key)
        if found is None:
            named = self.queries[query]
            text = named.render(**templates) if templates else named.sql
            statements = split_statements(text)
            sql, names = convert_params(named, "qmark", ";\n".join(statements))
            found = (sql, names, len(statements) > 1)
            self._batches[key] = found
        return found

    def script_statements(self, query: str, templates: dict[str, str]) -> list[str]:
        key = (query, *sorted(templates.items()))
        found = self._scripts.get(key)
        if found is None:
            named = self.queries[query]
            found = split_statements(named.render(**templates) if templates else named.sql)
            self._scripts[key] = found
        return found

    def statistics(self) -> dict[str, int]:
        """Deadlocks retried transparently and deadlocks passed on; pool size and free."""
        pool = self._pool
        return {
            **self.stats,
            "pool_size": 0 if pool is None else int(pool.size),
            "pool_free": 0 if pool is None else int(pool.freesize),
        }

    async def open(self) -> None:
        # A free turn is taken without a pass through the event loop: the query that
        # follows yields anyway.
        self._turns = anyio.Semaphore(self._max_size, fast_acquire=True)
        aioodbc = importlib.import_module("aioodbc")

        async def configure(raw: Any) -> None:
            # aioodbc hands over the pyodbc connection, whose calls block: run in a thread.
            await anyio.to_thread.run_sync(lambda: raw.execute(_SESSION).close())

        self._pool = await aioodbc.create_pool(
            dsn=self.connection_string,
            minsize=self._min_size,
            maxsize=self._max_size,
            pool_recycle=self._pool_recycle,
            timeout=int(self._connect_timeout),
            autocommit=True,
            after_created=configure,
        )

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        with anyio.CancelScope(shield=True):
            pool.close()
            with anyio.move_on_after(10):
                await pool.wait_closed()

    async def _checkout(self, *, begin: bool) -> Any:
        """A pooled connection, with ``begin`` in a transaction. A connection that died while
        idle fails here and is replaced once."""
        pool = self._pool
        if pool is None:
            raise RuntimeError("the SQL Server dialect is not open")
        for attempt in range(2):
            conn = await pool.acquire()
            try:
                if begin:
                    await _statement(conn, _BEGIN)
            except BaseException as exc:
                await _discard(pool, conn)
                if attempt or not self.is_disconnect(exc):
                    raise
            else:
                return conn
        raise AssertionError("unreachable")

    @asynccontextmanager
    async def _acquire(self, *, begin: bool = False) -> AsyncIterator[Any]:
        async with in_arrival_order(self._turns), self._checked_out(begin) as conn:
            yield conn

    @asynccontextmanager
    async def _checked_out(self, begin: bool) -> AsyncIterator[Any]:
        pool = self._pool
        conn = await self._checkout(begin=begin)
        try:
            yield conn
        except BaseException as exc:
            # Cancelled or failed mid-batch, the connection's state is unknown: close it (the
            # server rolls back) rather than return it to the pool.
            if not _is_server_error(exc):
                await _discard(pool, conn)
                raise
            if not begin:
                # XACT_ABORT does not roll back on every error (a batch ended by a compile
                # error, e.g. a missing table, keeps its transaction): never pool one still open.
                try:
                    with anyio.CancelScope(shield=True):
                        await _statement(conn, _ROLLBACK)
                except Exception:
                    await _discard(pool, conn)
                    raise exc from None
            await pool.release(conn)
            raise
        await pool.release(conn)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        async with self._acquire(begin=True) as conn:
            tx = MssqlConnection(self, conn, in_transaction=True, own=True)
            try:
                yield tx
            except BaseException as exc:
                if tx.broken or not _is_server_error(exc):
                    raise
                with anyio.CancelScope(shield=True):
                    await _statement(conn, _ROLLBACK)
                raise
            if tx.broken:  # a script failed but its error was swallowed by the caller
                with anyio.CancelScope(shield=True):
                    await _statement(conn, _ROLLBACK)
                raise ConfigurationError("a DDL script failed; the transaction was abandoned")
            with anyio.CancelScope(shield=True):
                await _statement(conn, _COMMIT)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        async with self._acquire() as conn:
            yield MssqlConnection(self, conn, in_transaction=False, own=True)

    @asynccontextmanager
    async def _adopted(self, conn: Any) -> AsyncIterator[Connection]:
        yield MssqlConnection(self, conn, in_transaction=True, own=False)

    def adopt(self, driver_connection: object) -> Any:
        """Run queries inside the application's own aioodbc transaction (a connection with
        autocommit off): nothing is committed or rolled back here."""
        aioodbc = importlib.import_module("aioodbc")
        if not isinstance(driver_connection, aioodbc.Connection):
            raise ConfigurationError(
                f"the mssql dialect enqueues on an aioodbc connection, "
                f"not {type(driver_connection).__name__}"
            )
        return self._adopted(driver_connection)

    def _watched(self) -> str:
        return str(self.dsn.database or self.dsn.host)

    async def _watch_connect(self) -> Any:
        aioodbc = importlib.import_module("aioodbc")
        conn = await aioodbc.connect(
            dsn=self.connection_string, autocommit=True, timeout=int(self._connect_timeout)
        )
        try:
            await _statement(conn, _SESSION)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await conn.close()
            raise
        return conn

    async def _watch_close(self, conn: Any) -> None:
        await conn.close()

    async def _watch_read(self, conn: Any, query: str, params: Params) -> list[Row]:
        sql, names, _ = self.batch(query, {})
        cur = await conn.cursor()
        try:
            await cur.execute(sql, *[params[name] for name in names])
            rows, _ = await _drain(cur)
            return rows
        finally:
            with anyio.CancelScope(shield=True):
                await cur.close()

    async def _newest_job_id(self, conn: Any) -> WatchedIds:
        rows = await self._watch_read(conn, "newest_job_id", {})
        return watched_ids((row["id"], row["requeues"]) for row in rows)

    async def _visible_job_ids(self, conn: Any, after: int, skipped: list[int]) -> WatchedIds:
        params = {"after": after, "ids": json.dumps(skipped)}
        rows = await self._watch_read(conn, "visible_job_ids", params)
        return watched_ids((row["id"], row["requeues"]) for row in rows)

    def text_length(self, text: str) -> int:
        # nvarchar's string functions count UTF-16 code units: a character outside the Basic
        # Multilingual Plane is two.
        return len(text.encode("utf-16-le")) // 2

    def is_unique_violation(self, exc: BaseException) -> bool:
        return any(code in _UNIQUE for code in native_errors(exc))

    def is_disconnect(self, exc: BaseException) -> bool:
        error = _odbc_error(exc)
        if error is not None:
            state, message = error
            # 08xxx: connection exceptions (08S01 link failure, 08001 cannot connect); HYT00 on
            # login and HYT01: timeouts; the rest: used after the connection was closed.
            if state.startswith("08") or state == "HYT01":
                return True
            if state == "HYT00" and "login timeout" in message.lower():  # not a query's
                return True
            return "closed connection" in message or "Cursor is closed" in message
        return isinstance(exc, OSError | ConnectionError | EOFError)


async def _discard(pool: Any, conn: Any) -> None:
    with anyio.CancelScope(shield=True):
        try:
            await conn.close()
        except Exception as exc:  # already broken: nothing to release on the server
            log.debug("closing a broken connection: %r", exc)
        await pool.release(conn)


def create(dsn: Dsn, **settings: Any) -> MssqlDialect:
    unknown = sorted(set(settings) - set(_SETTINGS))
    if unknown:
        raise ConfigurationError(
            f"unknown SQL Server settings {unknown}; known settings: {', '.join(_SETTINGS)}"
        )
    options: dict[str, Any] = {}
    for key, value in dsn.options.items():
        if key not in _OPTIONS:
            continue  # an ODBC connection-string keyword
        try:
            options[key] = float(value) if key in _FLOAT_OPTIONS else int(value)
        except ValueError:
            raise InvalidDsnError(
                f"SQL Server DSN option {key}={value!r} is not a number"
            ) from None
    return MssqlDialect(dsn, **{**options, **settings})
