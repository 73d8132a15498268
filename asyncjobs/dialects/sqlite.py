"""SQLite, the embedded default, on the standard library's ``sqlite3``.

One connection per process, used from a worker thread so the event loop never blocks on a busy
database. Writers take the database lock up front (``BEGIN IMMEDIATE``), which is what makes a
claim atomic across processes sharing the file. WAL mode lets readers in other processes proceed.
SQLite has no notifications; instead a process watches the file's data version, which moves with
every commit made through another connection, and so learns of new work within milliseconds.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from .._settings import check_duration, check_seconds
from .._sql import Queries, load_queries, split_statements
from ..exceptions import ConfigurationError, DatabaseBusyError, InvalidDsnError
from ._base import Capabilities, ChangeWatch, Connection, Dialect, Params, Row, no_listen
from ._dsn import Dsn

T = TypeVar("T")
log = logging.getLogger("asyncjobs.sqlite")

# Columns stored as text 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC) and read back as aware datetimes.
DATETIME_COLUMNS = frozenset(
    {
        "run_after", "created_date", "started_date", "completed_date", "notified_date",
        "last_activity_date", "lease_expires", "applied_date", "last_run", "next_run",
        "modified_date", "fire_time",
    }
)  # fmt: skip
_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
#: WAL pages between automatic checkpoints (SQLite's default is 1 000; see SqliteDialect.open)
_WAL_CHECKPOINT_PAGES = 10_000
#: bytes the WAL file is truncated to after a checkpoint
_WAL_SIZE_LIMIT = 64 * 1024 * 1024


def to_db_time(value: datetime) -> str:
    """The text form of an aware datetime; fixed width so text order is time order."""
    return value.astimezone(UTC).strftime(_FORMAT)


def _from_db_time(value: Any) -> Any:
    if isinstance(value, str):
        # fromisoformat reads the stored form (and is many times faster than strptime)
        return datetime.fromisoformat(value).replace(tzinfo=UTC)
    return value


def _unicode_lower(value: Any) -> Any:
    """SQL ``unicode_lower(text)``: ``str.lower`` (NULL and numbers pass unchanged)."""
    return value.lower() if isinstance(value, str) else value


def _convert(value: Any) -> Any:
    if isinstance(value, datetime):
        return to_db_time(value)
    if isinstance(value, bool):
        return int(value)
    return value


def _fetch_rows(cursor: sqlite3.Cursor) -> list[Row]:
    """A statement's rows as dicts, converted together: the column names and which of them
    hold times are worked out once per statement, not once per row (a claim returns dozens of
    rows of some forty columns)."""
    records = cursor.fetchall()
    if cursor.description is None:
        return []
    names = [column[0] for column in cursor.description]
    times = [(i, name) for i, name in enumerate(names) if name in DATETIME_COLUMNS]
    rows: list[Row] = []
    for values in records:
        row = dict(zip(names, values, strict=True))
        for i, name in times:
            if isinstance(values[i], str):
                row[name] = _from_db_time(values[i])
        rows.append(row)
    return rows


class SqliteConnection:
    """Runs named queries on the dialect's connection, each call in the worker thread.

    A named query may be several statements (each ending with ``;`` at the end of a line), as
    in the MySQL dialect: they run in order in one trip to the worker thread, atomically (in a
    transaction of their own on an autocommitting ``connection()``); ``fetch`` returns the rows
    of the last statement that returns rows (e.g. an ``UPDATE ... RETURNING`` followed by an
    UPDATE of the summaries), ``execute`` the row count of the last statement."""

    def __init__(self, dialect: SqliteDialect, *, in_transaction: bool = False) -> None:
        self._dialect = dialect
        self._in_transaction = in_transaction

    async def fetch(self, query: str, params: Params | None = None, **templates: str) -> list[Row]:
        statements = self._dialect.statements(query, templates)
        values = {k: _convert(v) for k, v in (params or {}).items()}
        if len(statements) == 1:
            sql = statements[0]
            return await self._dialect.run(lambda db: _fetch_rows(db.execute(sql, values)))
        rows, _ = await self._dialect.run(lambda db: self._run_all(db, statements, values))
        return rows

    async def execute(self, query: str, params: Params | None = None, **templates: str) -> int:
        statements = self._dialect.statements(query, templates)
        values = {k: _convert(v) for k, v in (params or {}).items()}
        if len(statements) == 1:
            sql = statements[0]
            return await self._dialect.run(lambda db: db.execute(sql, values).rowcount)
        _, count = await self._dialect.run(lambda db: self._run_all(db, statements, values))
        return count

    def _run_all(
        self, db: sqlite3.Connection, statements: Sequence[str], values: dict[str, Any]
    ) -> tuple[list[Row], int]:
        """In the worker thread: every statement of a query, atomically."""
        wrap = not self._in_transaction
        if wrap:
            db.execute("BEGIN IMMEDIATE")
        try:
            rows: list[Row] = []
            count = 0
            for sql in statements:
                cursor = db.execute(sql, values)
                found = _fetch_rows(cursor)
                if cursor.description is not None:
                    rows = found
                count = cursor.rowcount
        except BaseException:
            if wrap:
                db.execute("ROLLBACK")
            raise
        if wrap:
            db.execute("COMMIT")
        return rows, count

    async def executemany(self, query: str, params: Sequence[Params], **templates: str) -> None:
        if not params:
            return
        sql = self._dialect.sql(query, templates)
        rows = [{k: _convert(v) for k, v in p.items()} for p in params]
        await self._dialect.run(lambda db: db.executemany(sql, rows))

    async def script(self, query: str, **templates: str) -> None:
        statements = split_statements(self._dialect.sql(query, templates))

        def run_all(db: sqlite3.Connection) -> None:
            for statement in statements:
                db.execute(statement)

        await self._dialect.run(run_all)


class SqliteDialect(Dialect):
    name = "sqlite"
    # "notifications": the change watch below stands in for them (see listen).
    capabilities = Capabilities(
        monthly_archive_tables=True, concurrent_writers=False, notifications=True
    )
    #: how datetimes are written inside JSON parameters (json_each reads them as text)
    json_time = staticmethod(to_db_time)

    def __init__(
        self,
        path: str,
        *,
        busy_timeout: float = 30.0,
        change_poll_interval: timedelta = timedelta(milliseconds=10),
    ) -> None:
        check_seconds("busy_timeout", busy_timeout, 0)
        check_duration("change_poll_interval", change_poll_interval, timedelta(milliseconds=1))
        self.path = path
        self.queries: Queries = load_queries("sqlite")
        self._busy_timeout = busy_timeout
        #: how often the change watch reads the data version while changes come (see listen)
        self.change_poll_interval = change_poll_interval
        self._db: sqlite3.Connection | None = None
        self._rendered: dict[tuple[object, ...], str] = {}
        self._split: dict[tuple[object, ...], list[str]] = {}

    def statements(self, query: str, templates: dict[str, str]) -> list[str]:
        """The query's statements (one, or several run as one; see SqliteConnection)."""
        key = (query, *sorted(templates.items()))
        found = self._split.get(key)
        if found is None:
            found = self._split[key] = split_statements(self.sql(query, templates))
        return found

    def sql(self, query: str, templates: dict[str, str]) -> str:
        if not templates:
            return self.queries[query].sql
        key = (query, *sorted(templates.items()))
        rendered = self._rendered.get(key)
        if rendered is None:
            rendered = self._rendered[key] = self.queries[query].render(**templates)
        return rendered

    async def open(self) -> None:
        # Made here, not in __init__: they belong to the running event loop.
        self._lock = anyio.Lock(fast_acquire=True)  # see BackgroundJobs._flush_lock
        self._thread_limiter = anyio.CapacityLimiter(1)
        if self.path != ":memory:":
            try:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            except (OSError, ValueError) as exc:
                raise ConfigurationError(
                    f"cannot make the directory of SQLite database {self.path!r}: {exc}"
                ) from exc

        try:
            self._db = await anyio.to_thread.run_sync(connect, self.path, self._busy_timeout)
        except (sqlite3.DatabaseError, ValueError) as exc:
            # Not a database file, a directory, a path with NUL in it, ...
            raise ConfigurationError(f"cannot open SQLite database {self.path!r}: {exc}") from exc

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            with anyio.CancelScope(shield=True):
                async with self._lock:
                    await anyio.to_thread.run_sync(db.close, limiter=self._thread_limiter)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        db = self._db
        if db is None:
            raise RuntimeError("the SQLite dialect is not open")
        try:
            return await anyio.to_thread.run_sync(lambda: fn(db), limiter=self._thread_limiter)
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise
            raise DatabaseBusyError(
                f"the SQLite database {self.path!r} stayed locked by another connection for "
                f"the busy timeout ({self._busy_timeout:g} s): {exc}"
            ) from exc

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        async with self._lock:
            await self.run(lambda db: db.execute("BEGIN IMMEDIATE"))
            try:
                yield SqliteConnection(self, in_transaction=True)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await self.run(lambda db: db.execute("ROLLBACK"))
                raise
            with anyio.CancelScope(shield=True):
                await self.run(lambda db: db.execute("COMMIT"))

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        async with self._lock:
            yield SqliteConnection(self)

    def listen(
        self, channel: str, on_message: Callable[[str], Awaitable[None] | None]
    ) -> AbstractAsyncContextManager[None]:
        """Call ``on_message("")`` soon after another connection (another process, usually)
        commits to the database: the stand-in for notifications. Commits of this process's own
        connection count too; a wake-up that finds nothing costs one empty claim."""
        if self.path == ":memory:":  # private to one connection: nobody else writes to it
            return no_listen()
        return ChangeWatch(
            self.path,
            self.change_poll_interval.total_seconds(),
            on_message,
            connect=self._watch_connect,
            read=_read_data_version,
            close=sqlite3.Connection.close,
        )

    async def _watch_connect(self) -> sqlite3.Connection:
        # No busy timeout: the watch never waits for a lock (a busy database is simply read
        # again at the next tick).
        path = self.path
        return await anyio.to_thread.run_sync(
            lambda: sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)
        )

    def is_unique_violation(self, exc: BaseException) -> bool:
        return (
            isinstance(exc, sqlite3.IntegrityError)
            and getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_CONSTRAINT_UNIQUE
        )

    def is_disconnect(self, exc: BaseException) -> bool:
        # (Locked by another process for the busy timeout: not refused, to be tried again.)
        return isinstance(exc, DatabaseBusyError)


def connect(path: str, busy_timeout: float) -> sqlite3.Connection:
    """The dialect's connection to ``path``, set up (in a worker thread: it may wait)."""
    db = sqlite3.connect(
        path,
        timeout=busy_timeout,
        isolation_level=None,  # we issue BEGIN/COMMIT ourselves
        check_same_thread=False,  # used from one worker thread at a time, under a lock
    )
    try:
        _enable_wal(db, busy_timeout)
        # NORMAL is durable against a process crash (the failure this library guards
        # against); only a power loss can drop the last commits.
        db.execute("PRAGMA synchronous=NORMAL")
        # A checkpoint copies every page the WAL holds into the database, once however
        # often the page changed since the last one. The queue's hot pages (the claim
        # index, the newest summaries) change with every commit, so checkpointing every
        # 10 000 pages rather than SQLite's 1 000 writes far fewer pages in all: a drain
        # commits in half the time. The WAL file is cut back after each checkpoint.
        db.execute(f"PRAGMA wal_autocheckpoint={_WAL_CHECKPOINT_PAGES}")
        db.execute(f"PRAGMA journal_size_limit={_WAL_SIZE_LIMIT}")
    except BaseException:
        db.close()
        raise
    # SQLite's LOWER and LIKE fold ASCII letters only: the admin's search folds the
    # others with this, as Python folds the search text (see sql/sqlite/admin.sql).
    db.create_function("unicode_lower", 1, _unicode_lower, deterministic=True)
    return db


def _enable_wal(db: sqlite3.Connection, busy_timeout: float) -> None:
    """Switch a new database file to WAL. Processes that open a new file together race for
    it, and the losers are told "locked" at once, without the busy timeout's wait: they try
    again, for as long as that timeout."""
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.005)


async def _read_data_version(db: sqlite3.Connection) -> object:
    """The change watch's read: ``PRAGMA data_version`` moves whenever another connection has
    committed. In WAL mode it is a look at the shared-memory WAL index (a few microseconds, no
    disk I/O), so it runs on the event loop itself rather than paying a thread hand-off."""
    return db.execute("PRAGMA data_version").fetchone()[0]


_SETTINGS = ("busy_timeout", "change_poll_interval")


def create(dsn: Dsn, **settings: Any) -> SqliteDialect:
    unknown = sorted(set(settings) - set(_SETTINGS))
    if unknown:
        raise ConfigurationError(
            f"unknown SQLite settings {unknown}; known settings: {', '.join(_SETTINGS)}"
        )
    # SQLite's settings are keyword arguments only: an option would otherwise be dropped
    # without a word (a mistyped or a pool option, say). The raw text catches "?name" alone,
    # which parsing drops.
    query = dsn.raw.partition("?")[2]
    if dsn.options or query:
        raise InvalidDsnError(
            f"a SQLite DSN takes no query options, got {query or dsn.options!r}; its settings "
            f"({', '.join(_SETTINGS)}) are keyword arguments"
        )
    return SqliteDialect(dsn.database, **settings)
