"""PostgreSQL on asyncpg.

A pool of connections (its own, or the application's); every named query is converted to
asyncpg's ``$1`` style once and then runs as a prepared statement, which asyncpg caches per
connection. Claims use ``FOR UPDATE SKIP LOCKED``; archives are monthly partitions; other
processes are woken with LISTEN/NOTIFY on a channel named after the schema.

Settings (keyword arguments or DSN query options): ``schema`` (tables live there; created if
missing; ``search_path`` of every connection), ``min_size`` and ``max_size`` (the pool; two
connections at least), ``connect_timeout`` (seconds, default 60). Other DSN options go to
asyncpg (``sslmode``, ...), which sends those it does not know to the server as settings.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
import anyio.abc
import asyncpg
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._settings import check_int, check_seconds
from .._sql import Queries, convert_params, load_queries
from ..exceptions import ConfigurationError, InvalidDsnError
from ._base import (
    CLEANUP_SECONDS,
    Capabilities,
    Connection,
    Dialect,
    NoAnswerError,
    Params,
    Row,
    answered_in_time,
    deliver,
)
from ._dsn import Dsn, redact_dsn

log = logging.getLogger("asyncjobs.postgres")
T = TypeVar("T")

_SCHEMA = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}\Z")
#: DSN query options read by this dialect; the rest go to asyncpg (sslmode, ...)
_OPTIONS = ("schema", "min_size", "max_size", "connect_timeout")
#: SQLSTATEs meaning the server went away or refuses connections for now: connection
#: exceptions (class 08), shutdowns (57P01-57P03) and too many connections (53300)
_DISCONNECT_STATES = frozenset({"57P01", "57P02", "57P03", "53300"})
#: how often an idle LISTEN connection is checked, so a silently dead one is replaced
_LISTEN_HEALTH_CHECK = 30.0


def _closed(conn: Any) -> bool:
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:  # the pool took it back, having seen it close
        return True


def _nothing_ran(exc: BaseException) -> bool:
    """Whether a failed query certainly did nothing on the server: asyncpg refused to send it
    (the connection was closed, or its protocol had already seen the session end). A session
    the server ends while the query runs (57P01) usually rolls it back, but not if the end
    comes between the commit and the reply: that is as unsure as any broken connection."""
    return isinstance(exc, asyncpg.InterfaceError | asyncpg.InternalClientError)


def _rowcount(status: str) -> int:
    """The row count in a command tag such as ``UPDATE 3`` or ``INSERT 0 1``."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


class PostgresConnection:
    """Runs named queries on one asyncpg connection."""

    def __init__(self, dialect: PostgresDialect, conn: Any, *, pool: Any = None) -> None:
        self._dialect = dialect
        self._conn = conn
        #: set on an autocommitting connection() until its first query has run: a pooled
        #: connection the server dropped while it sat idle is then replaced (as
        #: transaction() does when its BEGIN fails)
        self._pool = pool

    async def _run(self, operation: Callable[[Any], Awaitable[T]], *, reads_only: bool) -> T:
        pool, self._pool = self._pool, None
        if pool is None:
            return await operation(self._conn)
        # Every pooled connection may have been dropped at once (a server restart): each
        # replacement may be another dead one, up to the pool's size.
        for _attempt in range(pool.get_max_size()):
            if _closed(self._conn):  # dropped while idle, and the driver saw it: nothing sent
                await self._replace(pool, "closed while idle")
            try:
                return await operation(self._conn)
            except Exception as exc:
                # Sent again only when nothing ran. A connection that broke mid-query may have
                # broken after the commit (the reply was lost): a claim sent again would leave
                # the first one's jobs Started here, and an insert would run twice. Those
                # errors go to the caller, unless the query only reads.
                if not _nothing_ran(exc) and not (reads_only and self._dialect.is_disconnect(exc)):
                    raise
                await self._replace(pool, repr(exc))
        return await operation(self._conn)

    async def _replace(self, pool: Any, why: str) -> None:
        log.debug("replacing a dropped pooled connection: %s", why)
        stale, self._conn = self._conn, None
        # So that the pool opens a new one rather than hand it back (unless asyncpg has
        # already taken it back, having seen it close).
        with contextlib.suppress(asyncpg.InterfaceError):
            stale.terminate()
        with anyio.CancelScope(shield=True):
            await pool.release(stale)
        self._conn = await pool.acquire()

    async def fetch(self, query: str, params: Params | None = None, **templates: str) -> list[Row]:
        sql, args = self._dialect.bind(query, params, templates)
        reads = self._dialect.reads_only(query)
        records = await self._run(lambda conn: conn.fetch(sql, *args), reads_only=reads)
        return [dict(record) for record in records]

    async def execute(self, query: str, params: Params | None = None, **templates: str) -> int:
        sql, args = self._dialect.bind(query, params, templates)
        reads = self._dialect.reads_only(query)
        return _rowcount(await self._run(lambda conn: conn.execute(sql, *args), reads_only=reads))

    async def executemany(self, query: str, params: Sequence[Params], **templates: str) -> None:
        if not params:
            return
        sql, order = self._dialect.statement(query, templates)
        rows = [self._dialect.arguments(query, order, p) for p in params]
        await self._conn.executemany(sql, rows)

    async def script(self, query: str, **templates: str) -> None:
        # One simple-protocol round trip: DDL needs no parameters, and a script may hold
        # dollar-quoted function bodies that a split at ';' would cut apart.
        sql, order = self._dialect.statement(query, templates)
        if order:
            raise ConfigurationError(f"script {query} must not take parameters")
        await self._conn.execute(sql)


class PostgresDialect(Dialect):
    """PostgreSQL through asyncpg: from a DSN (own pool) or an application's pool."""

    name = "postgres"
    capabilities = Capabilities(partitioned_archive=True, notifications=True)
    writes_in_a_select = ("FOR UPDATE", "FOR SHARE", "FOR NO KEY", "FOR KEY", "PG_ADVISORY",
                          "PG_NOTIFY", "ENSURE_", "NEXTVAL", "SETVAL")  # fmt: skip

    def __init__(
        self,
        dsn: str | None = None,
        *,
        pool: Any = None,
        schema: str | None = None,
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout: float = 60,
    ) -> None:
        if (dsn is None) == (pool is None):
            raise ConfigurationError("PostgresDialect needs either a dsn or a pool, not both")
        if schema is not None and not (isinstance(schema, str) and _SCHEMA.match(schema)):
            raise ConfigurationError(f"schema {schema!r} is not a valid PostgreSQL identifier")
        check_int("min_size", min_size, 0, 10_000)
        # Two at least: reads keep one connection of their own (the lane, see connection()),
        # and transactions need another.
        check_int("max_size", max_size, 2, 10_000)
        if min_size > max_size:
            raise ConfigurationError(f"min_size ({min_size}) must not exceed max_size ({max_size})")
        self._connect_timeout = check_seconds("connect_timeout", connect_timeout, 0.001)
        self.queries: Queries = load_queries("postgres")
        self.schema = schema
        self._dsn = dsn
        self._pool: Any = pool
        self._owns_pool = pool is None
        # One pooled connection kept aside for autocommitting statements, the hot path
        # (enqueue, claim, finish): taking it is a flag check, where a pool checkout and return
        # cost a task and several event-loop turns (asyncpg shields each release in a task).
        # While it is busy, connection() uses the pool. Only with our own pool.
        self._lane: Any = None
        self._lane_busy = False
        self._min_size = min_size
        self._max_size = max_size
        self._statements: dict[tuple[object, ...], tuple[str, tuple[str, ...]]] = {}
        #: the schema our tables are in, for the notification channel (found in open())
        self._channel_schema: str | None = schema

    # -- queries --------------------------------------------------------------------------

    def statement(self, query: str, templates: dict[str, str]) -> tuple[str, tuple[str, ...]]:
        """The query in ``$n`` style and its parameter names in order (converted once)."""
        key = (query, *sorted(templates.items()))
        found = self._statements.get(key)
        if found is None:
            named = self.queries[query]
            sql = named.render(**templates) if templates else named.sql
            found = self._statements[key] = convert_params(named, "numeric", sql)
        return found

    def arguments(self, query: str, order: tuple[str, ...], params: Params | None) -> list[Any]:
        values = params or {}
        try:
            return [values[name] for name in order]
        except KeyError as exc:
            raise ConfigurationError(f"query {query} needs parameter {exc.args[0]!r}") from None

    def bind(
        self, query: str, params: Params | None, templates: dict[str, str]
    ) -> tuple[str, list[Any]]:
        sql, order = self.statement(query, templates)
        return sql, self.arguments(query, order, params)

    # -- connections ----------------------------------------------------------------------

    def _server_settings(self) -> dict[str, str]:
        # No JIT: its compile time (seconds, for the claim's statement on a large queue whose
        # estimated cost crosses jit_above_cost) dwarfs these short statements' run time.
        settings = {"application_name": "asyncjobs", "timezone": "UTC", "jit": "off"}
        if self.schema is not None:
            settings["search_path"] = _quote(self.schema)
        return settings

    def _connect_dsn(self) -> str:
        assert self._dsn is not None
        return _asyncpg_dsn(self._dsn)

    async def open(self) -> None:
        if self._owns_pool:
            try:
                self._pool = await asyncpg.create_pool(
                    dsn=self._connect_dsn(),
                    min_size=self._min_size,
                    max_size=self._max_size,
                    timeout=self._connect_timeout,
                    server_settings=self._server_settings(),
                    reset=_keep_session,
                )
            except (asyncpg.ClientConfigurationError, asyncpg.UndefinedObjectError) as exc:
                # An option asyncpg cannot use, or one it sent the server as a setting and the
                # server does not know (a typo, say).
                raise InvalidDsnError(f"PostgreSQL refused the DSN's options: {exc}") from exc
        try:
            async with self._acquire() as conn:
                if self.schema is not None:
                    await self._create_schema(conn)
                else:
                    self._channel_schema = await conn.fetchval("SELECT current_schema()")
        except BaseException:
            await self.close()
            raise

    async def _create_schema(self, conn: Any) -> None:
        exists = await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", self.schema)
        if exists:
            return
        # Processes starting together would race on CREATE SCHEMA; take turns.
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('asyncjobs.schema'))")
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote(str(self.schema))}")

    async def close(self) -> None:
        if not self._owns_pool or self._pool is None:
            return  # an application's pool is not ours to close
        pool, self._pool = self._pool, None
        lane, self._lane = self._lane, None
        with anyio.move_on_after(10, shield=True) as waited:
            if lane is not None:
                await pool.release(lane)
            await pool.close()  # waits for connections in use to come back
        if waited.cancelled_caught:
            pool.terminate()

    @asynccontextmanager
    async def _acquire(self) -> AsyncIterator[Any]:
        if self._pool is None:
            raise RuntimeError("the PostgreSQL dialect is not open")
        pool = self._pool
        conn = await pool.acquire()
        try:
            yield conn
        finally:
            with anyio.CancelScope(shield=True):
                await pool.release(conn, timeout=CLEANUP_SECONDS)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        # Every pooled connection may have been dropped at once (a server restart): each
        # replacement may be another dead one, up to the pool's size.
        attempts = self._pool.get_max_size() + 1 if self._pool is not None else 1
        for attempt in range(attempts):
            async with self._acquire() as conn:
                tx = conn.transaction()
                try:
                    # A BEGIN cut off half-way would leave a transaction no one rolls back.
                    await answered_in_time(tx.start(), "BEGIN", conn.terminate)
                except Exception as exc:
                    # A pooled connection the server dropped while it sat idle fails here,
                    # before any work was done: the pool replaces it; try the next one. (Not
                    # one that went unanswered: the next would wait as long.)
                    if (
                        attempt == attempts - 1
                        or isinstance(exc, NoAnswerError)
                        or not (self.is_disconnect(exc) or _nothing_ran(exc))
                    ):
                        raise
                    continue
                try:
                    await self._local_search_path(conn)
                    yield PostgresConnection(self, conn)
                except BaseException:
                    try:
                        await answered_in_time(tx.rollback(), "ROLLBACK", conn.terminate)
                    except Exception as exc:  # the connection is gone; the pool drops it
                        log.debug("rollback failed: %r", exc)
                    raise
                await answered_in_time(tx.commit(), "COMMIT", conn.terminate)
                return

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        if self._needs_local_search_path:
            # An application's pool has its own search_path; set ours for one transaction only.
            async with self.transaction() as conn:
                yield conn
            return
        if self._pool is None:
            raise RuntimeError("the PostgreSQL dialect is not open")
        pool = self._pool
        if self._owns_pool and not self._lane_busy:
            async with self._on_lane(pool) as held:
                yield held
            return
        held = PostgresConnection(self, await pool.acquire(), pool=pool)
        try:
            yield held
        finally:
            if held._conn is not None:
                with anyio.CancelScope(shield=True):
                    await pool.release(held._conn, timeout=CLEANUP_SECONDS)

    @asynccontextmanager
    async def _on_lane(self, pool: Any) -> AsyncIterator[PostgresConnection]:
        self._lane_busy = True
        try:
            if self._lane is None:
                self._lane = await pool.acquire()
            held = PostgresConnection(self, self._lane, pool=pool)
            try:
                yield held
            except BaseException:
                # Perhaps cut off mid-query: the pool checks the connection and drops it if
                # it is unusable; the lane is taken afresh next time.
                lane, self._lane = held._conn, None
                if lane is not None:
                    with anyio.CancelScope(shield=True):
                        await pool.release(lane, timeout=CLEANUP_SECONDS)
                raise
            self._lane = held._conn  # replaced if the server had dropped it
        finally:
            self._lane_busy = False

    @property
    def _needs_local_search_path(self) -> bool:
        return self.schema is not None and not self._owns_pool

    async def _local_search_path(self, conn: Any) -> None:
        if self._needs_local_search_path:
            await conn.execute(
                "SELECT set_config('search_path', $1, true)", _quote(str(self.schema))
            )

    @asynccontextmanager
    async def adopt(self, driver_connection: object) -> AsyncIterator[Connection]:
        """Run queries on the application's asyncpg connection, inside its transaction, so
        the jobs exist only if that transaction commits."""
        conn: Any = driver_connection
        if not isinstance(conn, asyncpg.Connection | asyncpg.pool.PoolConnectionProxy):
            raise ConfigurationError(
                f"connection must be an asyncpg connection, got {type(driver_connection).__name__}"
            )
        if not conn.is_in_transaction():
            # Not in a transaction: the enqueue is still atomic on its own.
            async with conn.transaction(), self._on_schema(conn):
                yield PostgresConnection(self, conn)
            return
        async with self._on_schema(conn):
            yield PostgresConnection(self, conn)

    @asynccontextmanager
    async def _on_schema(self, conn: Any) -> AsyncIterator[None]:
        """Point search_path at our schema for our statements only, inside the caller's
        transaction, and give the application its own back afterwards."""
        if self.schema is None:
            yield
            return
        previous = await conn.fetchval(
            "SELECT current_setting('search_path') AS previous, "
            "set_config('search_path', $1, true)",
            _quote(self.schema),
        )
        try:
            yield
        finally:
            # If the transaction failed, its rollback restores the setting anyway.
            with anyio.CancelScope(shield=True), contextlib.suppress(asyncpg.PostgresError):
                await conn.execute("SELECT set_config('search_path', $1, true)", previous)

    # -- errors ---------------------------------------------------------------------------

    def is_unique_violation(self, exc: BaseException) -> bool:
        return getattr(exc, "sqlstate", None) == "23505"

    def is_disconnect(self, exc: BaseException) -> bool:
        if isinstance(
            exc,
            OSError | ConnectionError | asyncpg.exceptions.ConnectionDoesNotExistError,
        ):
            return True
        state = getattr(exc, "sqlstate", None)
        return isinstance(state, str) and (state.startswith("08") or state in _DISCONNECT_STATES)

    # -- notifications --------------------------------------------------------------------

    def channel(self, channel: str) -> str:
        """The channel on the wire: one per schema, so schemas do not wake each other.
        The statements that queue jobs (insert_jobs, requeue_failed) build the same name."""
        if self._channel_schema is None:
            return channel[:63]
        return f"{channel}.{self._channel_schema}"[:63]

    async def notify(self, channel: str, payload: str) -> None:
        async with self._acquire() as conn:
            await conn.execute("SELECT pg_notify($1, $2)", self.channel(channel), payload)

    def listen(
        self, channel: str, on_message: Callable[[str], Awaitable[None] | None]
    ) -> AbstractAsyncContextManager[None]:
        return _Listening(self, self.channel(channel), on_message)

    async def _listen_loop(
        self,
        channel: str,
        send: MemoryObjectSendStream[str],
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Keep one connection listening; reconnect with backoff when it is lost. The first
        connection must succeed (start-up fails otherwise); later failures only delay."""
        listening = False

        failures = 0

        def on_listening() -> None:
            nonlocal listening, failures
            failures = 0  # back: the next loss waits the shortest delay again
            if listening:
                _send(send, "")  # work may have arrived while we were away
            else:
                listening = True
                task_status.started()

        with send:
            while True:
                try:
                    await self._listen_once(channel, send, on_listening)
                except Exception as exc:
                    if not listening:
                        raise
                    failures += 1
                    delay = min(0.1 * 2 ** min(failures, 10), 5.0)
                    log.warning("LISTEN connection lost (retrying in %.1fs): %r", delay, exc)
                    await anyio.sleep(delay)

    async def _listen_once(
        self, channel: str, send: MemoryObjectSendStream[str], on_listening: Callable[[], None]
    ) -> None:
        """Listen on one connection until it is lost (then raise)."""
        lost = anyio.Event()

        def on_notify(_conn: object, _pid: int, _channel: str, payload: str) -> None:
            _send(send, payload)

        def on_terminate(_conn: object) -> None:
            lost.set()

        async with self._listen_connection() as conn:
            conn.add_termination_listener(on_terminate)
            try:
                await conn.add_listener(channel, on_notify)
                on_listening()
                await _wait_until_lost(conn, lost)
            finally:
                conn.remove_termination_listener(on_terminate)
                with anyio.move_on_after(5, shield=True):
                    if not conn.is_closed():
                        await conn.remove_listener(channel, on_notify)

    @asynccontextmanager
    async def _listen_connection(self) -> AsyncIterator[Any]:
        """A dedicated connection: our own when we have a DSN, else one held from the pool."""
        if self._dsn is None:
            async with self._acquire() as conn:
                yield conn
            return
        conn = await asyncpg.connect(
            dsn=self._connect_dsn(),
            timeout=self._connect_timeout,
            server_settings=self._server_settings(),
        )
        try:
            yield conn
        finally:
            with anyio.move_on_after(5, shield=True):
                await conn.close()
            if not conn.is_closed():
                conn.terminate()


class _Listening:
    """Owns the task group that keeps a LISTEN connection and hands notifications over.

    A class rather than a generator: an error raised by the code inside ``async with`` must
    reach the caller as it is, not wrapped in the task group's ExceptionGroup."""

    def __init__(
        self,
        dialect: PostgresDialect,
        channel: str,
        on_message: Callable[[str], Awaitable[None] | None],
    ) -> None:
        self._dialect = dialect
        self._channel = channel
        self._on_message = on_message
        self._tg = anyio.create_task_group()

    async def __aenter__(self) -> None:
        send, receive = anyio.create_memory_object_stream[str](math.inf)
        await self._tg.__aenter__()
        try:
            await self._tg.start(self._dialect._listen_loop, self._channel, send)
            self._tg.start_soon(_deliver, receive, self._on_message)
        except BaseException:
            await self._stop()
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stop()

    async def _stop(self) -> None:
        # Our tasks never raise, so the group exits with nothing to report.
        self._tg.cancel_scope.cancel()
        await self._tg.__aexit__(None, None, None)


async def _wait_until_lost(conn: Any, lost: anyio.Event) -> None:
    """Return when the listening connection closed, or stopped answering a health check."""
    while not lost.is_set():
        with anyio.move_on_after(_LISTEN_HEALTH_CHECK):
            await lost.wait()
        if not lost.is_set():
            with anyio.fail_after(10):
                await conn.execute("SELECT 1")
    raise ConnectionError("the LISTEN connection closed")


def _send(send: MemoryObjectSendStream[str], payload: str) -> None:
    # Called by asyncpg outside our tasks; after shutdown there is no one left to tell.
    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
        send.send_nowait(payload)


async def _deliver(
    receive: MemoryObjectReceiveStream[str],
    on_message: Callable[[str], Awaitable[None] | None],
) -> None:
    async with receive:
        async for payload in receive:
            await deliver(on_message, payload)


async def _keep_session(conn: Any) -> None:
    """How our own pool resets a connection it gets back: it does not. asyncpg's default runs
    ``RESET ALL; UNLISTEN *; ...``, one more round trip for every query we run, to undo session
    state that our statements never leave (settings are per transaction, locks are transaction
    locks, LISTEN has its own connection); asyncpg still rolls back a transaction left open."""


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _asyncpg_dsn(raw: str) -> str:
    """The DSN for asyncpg: scheme ``postgresql``, without the options this dialect reads
    (asyncpg would send unknown ones to the server as settings)."""
    parts = urlsplit(raw)
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k not in _OPTIONS])
    return urlunsplit(("postgresql", parts.netloc, parts.path, query, parts.fragment))


def create(dsn: Dsn, **settings: Any) -> PostgresDialect:
    options: dict[str, Any] = {k: v for k, v in dsn.options.items() if k in _OPTIONS}
    unknown = set(settings) - set(_OPTIONS)
    if unknown:
        raise ConfigurationError(
            f"unknown PostgreSQL settings {sorted(unknown)}; known: {', '.join(_OPTIONS)}"
        )
    try:  # the DSN's options are text
        for size in ("min_size", "max_size"):
            if size in options:
                options[size] = int(options[size])
        if "connect_timeout" in options:  # as libpq spells it; asyncpg's own is timeout=
            options["connect_timeout"] = float(options["connect_timeout"])
    except ValueError as exc:
        raise InvalidDsnError(f"invalid pool setting in {redact_dsn(dsn.raw)!r}: {exc}") from None
    return PostgresDialect(dsn.raw, **{**options, **settings})
