"""MySQL 8 and MariaDB 10.6+ on aiomysql.

A pool of autocommitting connections; ``transaction()`` opens an explicit transaction on one.
Every session runs READ COMMITTED (see ``_SESSION``), stores datetimes as naive UTC in
DATETIME(6) and reads them back as aware UTC datetimes. Archives are monthly RANGE partitions.

MySQL has no ``UPDATE ... RETURNING``, so a named query may be a *sequence of statements*
(each ending with ``;`` at the end of a line). The convention, which keeps the store unchanged
and all SQL in ``sql/mysql/``:

- the statements run in order on one connection, inside the caller's transaction (on an
  autocommitting ``connection()`` they get a transaction of their own);
- they are sent together, as one multi-statement packet (``CLIENT.MULTI_STATEMENTS``), with the
  ``START TRANSACTION`` and ``COMMIT`` of that own transaction: a query is one round trip however
  many statements it has (the driver interpolates the parameters client-side, as for one
  statement). The server stops at the first statement that fails; the dialect then rolls back
  the transaction it opened. A ``transaction()`` sends its ``START TRANSACTION`` with its first
  query, so it costs no round trip of its own;
- ``fetch`` returns the rows of the last statement and ``execute`` its row count;
- a statement that begins with ``/* only if :name */`` is left out of the packet when that
  parameter is empty (NULL, 0, '' or '[]'), one that begins with ``/* only if no :name */``
  when it is not. Only for a statement that then does nothing, so that sending it anyway
  changes nothing (the server is spared parsing and planning it: e.g. the claim's statements
  in a flush that claims nothing), or for a last statement that reads the same report as the
  one it stands in for, with fewer columns;
- a last statement ``SELECT LAST_INSERT_ID() AS name`` (optionally followed by parameters,
  ``, :param AS name``) is not sent: the dialect answers it. The server reports the id an
  INSERT made in that INSERT's reply, and the parameters are the caller's own values, so the
  server is spared a statement and the client a result set to decode (a tenth of a one-job
  enqueue's round trip);
- on MariaDB, a query's own transaction is one compound statement instead
  (``BEGIN NOT ATOMIC START TRANSACTION; ...; COMMIT; END``) when its last statement is a
  SELECT or is answered (then only the id is selected, after the COMMIT): the server replies
  once, with that SELECT's rows, where a packet gets a reply per statement and aiomysql wakes
  up for each. A one-job enqueue waits about 0.2 ms less. (MySQL runs compound statements
  only in stored programs.)
- a parenthesized group after ``/* each :name */`` is written out once per row of the list
  parameter ``name`` (dicts of the group's parameters), comma-separated, its values escaped
  as the driver escapes parameters: a batch insert is one multi-row ``INSERT ... VALUES``.
  (MariaDB's JSON_TABLE took about 5 ms to read 500 jobs from a JSON array parameter, in
  each statement that read it: a batch of 500 cost the server three times as much that way);
- statements hand values to each other in session variables named ``@asyncjobs_*``, e.g.
  ``SELECT JSON_ARRAYAGG(id) INTO @asyncjobs_ids FROM (... FOR UPDATE) AS t``, then
  ``UPDATE JSON_TABLE(@asyncjobs_ids, ...) AS i STRAIGHT_JOIN background_job b ...``. The
  dialect passes nothing between them; the SQL runs as written in a MySQL client. (An
  aggregate always returns a row, so a variable is always assigned, NULL for no rows.)

A deadlock (1213) or lock-wait timeout (1205) in a query that is the first of its transaction
(as the claim is) is retried a bounded number of times: nothing else of the transaction has run,
so a retry is invisible. ``statistics()`` counts those retries and the deadlocks left to the
caller. A pooled connection the server dropped while it sat idle, unseen by the pool, fails
its first query; that query is sent again on another connection when it cannot run twice (the
first of a transaction, or a read; see ``MysqlConnection._attempt``).

MySQL has no notifications; instead a process watches for new job ids (and a count of
requeued jobs, which keep their ids) on a connection of its own (``listen``), and so learns of
new jobs committed elsewhere within milliseconds.

Settings (keyword arguments or DSN query options): ``min_size`` and ``max_size`` (the pool),
``deadlock_retries`` (default 5), ``pool_recycle`` (seconds a connection is kept, default 3600),
``connect_timeout`` (seconds, default 10); and as a keyword argument only,
``change_poll_interval`` (a timedelta, default 10 ms: how often the watch reads while jobs come).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import aiomysql
import aiomysql.connection
import anyio

from .._settings import check_pool_settings
from .._sql import Queries, convert_params, each_groups, load_queries, split_statements
from ..exceptions import ConfigurationError, InvalidDsnError, StatementTooLargeError
from ._base import (
    CLEANUP_SECONDS,
    Capabilities,
    Connection,
    Dialect,
    NewJobIds,
    NoAnswerError,
    Params,
    Row,
    WatchedIds,
    WatchesNewJobIds,
    answered_in_time,
    in_arrival_order,
    retry_deadlocks,
    watched_ids,
)
from ._dsn import Dsn

log = logging.getLogger("asyncjobs.mysql")
T = TypeVar("T")

_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
#: DSN query options read by this dialect
_OPTIONS = ("min_size", "max_size", "deadlock_retries", "pool_recycle", "connect_timeout")
#: keyword arguments: the DSN options and the change watch's interval (a timedelta)
_SETTINGS = (*_OPTIONS, "change_poll_interval")
_DEADLOCK = 1213
_LOCK_WAIT_TIMEOUT = 1205
_DUPLICATE_KEY = 1062
_CLIENT_FOUND_ROWS = 2  # pymysql.constants.CLIENT.FOUND_ROWS
_CLIENT_MULTI_STATEMENTS = 1 << 16  # pymysql.constants.CLIENT.MULTI_STATEMENTS
#: column type codes of DATETIME and TIMESTAMP (pymysql.constants.FIELD_TYPE)
_TIME_TYPES = frozenset({7, 12})
#: the guard of a statement sent only with, or only without, a parameter (see the module docstring)
_GUARD = re.compile(r"/\* only if (no )?:(\w+) \*/\s*")
_PYFORMAT_PARAM = re.compile(r"%\((\w+)\)s")
#: a last statement that the dialect answers itself (see the module docstring), and its columns
_INSERT_ID_REPLY = re.compile(
    r"SELECT\s+LAST_INSERT_ID\(\)\s+AS\s+(\w+)((?:\s*,\s*%\(\w+\)s\s+AS\s+\w+)*)\s*",
    re.IGNORECASE,
)
#: a statement whose rows a compound statement sends back (an INTO sends none)
_SELECT = re.compile(r"SELECT\b(?!.*\bINTO\s+@)", re.IGNORECASE | re.DOTALL)
_REPLY_PARAM = re.compile(r"%\((\w+)\)s\s+AS\s+(\w+)", re.IGNORECASE)
#: the values of an empty parameter
_EMPTY = (None, 0, "", "[]")
#: executemany sends its statements in packets of about this many bytes
_BATCH_BYTES = 1 << 20
#: the server went away or refuses us for now: can't connect (2002, 2003), gone away (2006),
#: lost connection (2013, 2055), server shutdown (1053), connection killed (1927, MariaDB),
#: disconnected for inactivity (4031, MySQL 8), too many connections (1040)
_DISCONNECT_CODES = frozenset({2002, 2003, 2006, 2013, 2055, 1053, 1927, 4031, 1040})
#: Applied once to each pooled connection.
#: READ COMMITTED: every statement of a multi-statement claim reads what was committed when it
#: started, so after the claim's first statement has locked a named worker's row, the second
#: sees every earlier claim of that worker (REPEATABLE READ would keep the snapshot taken before
#: the lock and could start a second job of the worker). It also takes no gap locks, so
#: enqueues, claims and finishes touching neighbouring index ranges do not block or deadlock
#: each other. The fixed sql_mode is the one the SQL files are written for; sql_notes = 0 keeps
#: "already exists" notes of idempotent DDL from becoming driver warnings (aiomysql turns them
#: into Python warnings); JSON_ARRAYAGG is bounded by group_concat_max_len on MariaDB; a UTC
#: time zone makes NOW() agree with the stored times.
_SESSION = (
    "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED;\n"
    "SET SESSION sql_mode = 'ONLY_FULL_GROUP_BY,STRICT_TRANS_TABLES,ERROR_FOR_DIVISION_BY_ZERO,"
    "NO_ENGINE_SUBSTITUTION', sql_notes = 0, group_concat_max_len = 1073741824, "
    "time_zone = '+00:00'"
)


def to_db_time(value: datetime) -> str:
    """The naive-UTC text of a datetime, as DATETIME(6) and JSON_TABLE read it."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime(_FORMAT)


def _read_time(value: str | bytes) -> datetime | str:
    """A DATETIME as stored (naive UTC) into an aware datetime: one C call where the driver's
    own converter parses with a regular expression (on the claim's hot path)."""
    text = value.decode("ascii") if isinstance(value, bytes) else value
    try:
        return datetime.fromisoformat(text).replace(tzinfo=UTC)
    except ValueError:
        return text  # e.g. a zero date: text, as the driver leaves it


#: the driver's decoders, with our DATETIME and TIMESTAMP one
_DECODERS = {**aiomysql.connection.decoders, 7: _read_time, 12: _read_time}


def _convert(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value
    if isinstance(value, bool):
        return int(value)
    return value


def _error_code(exc: BaseException) -> int | None:
    if isinstance(exc, aiomysql.MySQLError) and exc.args and isinstance(exc.args[0], int):
        return exc.args[0]
    return None


def _is_server_error(exc: BaseException) -> bool:
    """An error the server reported: the connection is still in a known state."""
    code = _error_code(exc)
    return code is not None and 1000 <= code < 2000 and code not in _DISCONNECT_CODES


async def _decode(cur: Any) -> list[Row]:
    """The current result set's rows as dicts, datetimes aware (UTC): ours are decoded so
    (``_read_time``), an application's connection may give naive ones."""
    description = cur.description
    if not description:
        return []
    names = [column[0] for column in description]
    rows: list[Row] = [dict(zip(names, record, strict=True)) for record in await cur.fetchall()]
    for name in [column[0] for column in description if column[1] in _TIME_TYPES]:
        for row in rows:
            value = row[name]
            if isinstance(value, datetime) and value.tzinfo is None:
                row[name] = value.replace(tzinfo=UTC)
    return rows


def _literal(value: Any, escape: Callable[[Any], str]) -> str:
    """A value as SQL text; the common cases first (most of a new job's columns are NULL)."""
    if value is None:
        return "NULL"
    if type(value) is int:
        return str(value)
    return escape(_convert(value))


#: where _take_groups left a group
_GROUP_TOKEN = re.compile(r"/\*each:\d+\*/")


def _take_groups(sql: str, expansions: list[tuple[str, str, str]]) -> str:
    """Replace each ``/* each :name */ (...)`` group with a placeholder, noting the group."""
    for marker, start, end, name in reversed(each_groups(sql)):
        token = f"/*each:{len(expansions)}*/"
        expansions.append((token, name, sql[start:end]))
        sql = sql[:marker] + token + sql[end:]
    return sql


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A named query rendered for the driver: its statements, and the text sent in one packet
    (``packet``) or, when it opens its own transaction, with START TRANSACTION and COMMIT.
    ``guards`` names, per statement, the parameter it is sent only with, or only without
    (None: always sent). ``reply`` stands in for a last ``SELECT LAST_INSERT_ID() ...`` that is
    not sent: the id's column name, then (parameter, column name) pairs."""

    statements: list[str]
    packet: str
    wrapped: str
    guards: tuple[tuple[str, bool] | None, ...] = ()
    reply: tuple[str, tuple[tuple[str, str], ...]] | None = None
    #: MariaDB: ``wrapped`` as one compound statement, for a query that ends with a SELECT or
    #: a ``reply`` (then selected after the COMMIT) (see the module docstring)
    compound: str | None = None
    #: groups repeated per row of a list parameter: (placeholder in the text, the parameter,
    #: the group in pyformat)
    expansions: tuple[tuple[str, str, str], ...] = ()
    #: the query with guarded statements left out, by which of its statements are sent
    variants: dict[tuple[bool, ...], _Prepared] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        statements: list[str],
        guards: Sequence[tuple[str, bool] | None] = (),
        reply: tuple[str, tuple[tuple[str, str], ...]] | None = None,
        expansions: Sequence[tuple[str, str, str]] = (),
    ) -> _Prepared:
        answered = _INSERT_ID_REPLY.fullmatch(statements[-1]) if len(statements) > 1 else None
        if answered is not None and (not guards or guards[-1] is None):
            reply = (answered.group(1), tuple(_REPLY_PARAM.findall(answered.group(2))))
            statements, guards = statements[:-1], guards[:-1]
        packet = ";\n".join(statements)
        wrapped = f"START TRANSACTION;\n{packet};\nCOMMIT"
        compound = None
        if len(statements) > 1 and (reply is not None or _SELECT.match(statements[-1])):
            answer = "SELECT LAST_INSERT_ID();\n" if reply is not None else ""
            compound = f"BEGIN NOT ATOMIC\nSTART TRANSACTION;\n{packet};\nCOMMIT;\n{answer}END"
        return cls(
            statements,
            packet,
            wrapped,
            tuple(guards) if any(guards) else (),
            reply,
            compound,
            tuple(e for e in expansions if e[0] in packet),
        )

    def with_rows(self, values: dict[str, Any], escape: Callable[[Any], str]) -> _Prepared:
        """The query with each repeated group written out for the rows of its list parameter
        (escaped as the driver escapes parameters), and those parameters taken out of
        ``values``: the text of a multi-row INSERT ... VALUES, without a JSON detour."""
        # Each value a group uses is escaped once, however many groups use it.
        used: dict[str, set[str]] = {}
        for _, name, group in self.expansions:
            used.setdefault(name, set()).update(_PYFORMAT_PARAM.findall(group))
        escaped: dict[str, list[dict[str, str]]] = {}
        for name, keys in used.items():
            rows = values.pop(name)
            if not rows:
                raise ConfigurationError(f"'each :{name}' needs at least one row")
            escaped[name] = [{k: _literal(row[k], escape) for k in keys} for row in rows]
        texts = {}
        for token, name, group in self.expansions:
            text = ", ".join(group % row for row in escaped[name])
            # The whole text is interpolated once more: a % in a value must survive it.
            texts[token] = text.replace("%", "%%")

        def fill(sql: str) -> str:
            # One pass: a value that looks like a placeholder is never replaced in turn.
            return _GROUP_TOKEN.sub(lambda found: texts[found.group(0)], sql)

        return _Prepared(
            [fill(sql) for sql in self.statements],
            fill(self.packet),
            fill(self.wrapped),
            reply=self.reply,
            compound=None if self.compound is None else fill(self.compound),
        )

    def answer(self, insert_id: int, values: dict[str, Any]) -> list[Row]:
        """The rows of the ``SELECT LAST_INSERT_ID() ...`` this query did not send."""
        assert self.reply is not None
        name, params = self.reply
        return [{name: insert_id, **{column: values[param] for param, column in params}}]

    def for_values(self, values: dict[str, Any]) -> _Prepared:
        """The statements to send with these parameter values."""
        if not self.guards:
            return self
        sent = tuple(
            guard is None or (values.get(guard[0]) in _EMPTY) == guard[1] for guard in self.guards
        )
        found = self.variants.get(sent)
        if found is None:
            kept = [sql for sql, send in zip(self.statements, sent, strict=True) if send]
            found = self.variants[sent] = _Prepared.of(
                kept, reply=self.reply, expansions=self.expansions
            )
        return found


def _multi_statements(conn: Any) -> bool:
    return bool(getattr(conn, "client_flag", 0) & _CLIENT_MULTI_STATEMENTS)


class MysqlConnection:
    """Runs named queries on one aiomysql connection (see the module docstring)."""

    def __init__(
        self,
        dialect: MysqlDialect,
        conn: Any,
        *,
        in_transaction: bool,
        own: bool,
        replace: Callable[[Any], Awaitable[Any]] | None = None,
    ) -> None:
        self._dialect = dialect
        self._conn = conn
        #: set on a pooled connection until its first query has run: a connection the server
        #: dropped while it sat idle is then replaced, and the query sent again where that is
        #: safe (see _attempt)
        self._replace = replace
        self._in_transaction = in_transaction
        #: the connection is ours (not an application's, adopted)
        self._own = own
        #: nothing has run yet in this transaction, so a deadlock may be retried
        self._fresh = own
        #: our own transaction() not begun yet: its START TRANSACTION goes with the first query
        self.begin_pending = in_transaction and own
        self._multi = _multi_statements(conn)
        #: the connection's session state is unknown (a script stopped half-way)
        self.broken = False

    @property
    def driver(self) -> Any:
        """The aiomysql connection the queries run on now."""
        return self._conn

    async def fetch(self, query: str, params: Params | None = None, **templates: str) -> list[Row]:
        values = {k: _convert(v) for k, v in (params or {}).items()}
        prepared = self._dialect.prepared(query, templates).for_values(values)
        if prepared.expansions:
            prepared = prepared.with_rows(values, self._conn.escape)
        rows, _ = await self._attempt(query, lambda: self._run(prepared, values))
        return rows

    async def execute(self, query: str, params: Params | None = None, **templates: str) -> int:
        values = {k: _convert(v) for k, v in (params or {}).items()}
        prepared = self._dialect.prepared(query, templates).for_values(values)
        if prepared.expansions:
            prepared = prepared.with_rows(values, self._conn.escape)
        _, count = await self._attempt(query, lambda: self._run(prepared, values))
        return count

    async def executemany(self, query: str, params: Sequence[Params], **templates: str) -> None:
        if not params:
            return
        statements = self._dialect.prepared(query, templates).statements
        if len(statements) != 1:
            raise ConfigurationError(f"executemany needs a single-statement query, not {query}")
        rows = [{k: _convert(v) for k, v in p.items()} for p in params]

        async def run() -> None:
            await self._begin()
            async with self._conn.cursor(aiomysql.Cursor) as cur:
                if not self._multi or statements[0].lstrip()[:6].upper() == "INSERT":
                    # The driver makes one multi-row INSERT of an INSERT ... VALUES.
                    await cur.executemany(statements[0], rows)
                    return
                # Anything else the driver would send row by row: a packet of statements.
                texts = [cur.mogrify(statements[0], row) for row in rows]
                start = 0
                while start < len(texts):
                    end, size = start, 0
                    while end < len(texts) and (end == start or size < _BATCH_BYTES):
                        size += len(texts[end])
                        end += 1
                    await cur.execute(";\n".join(texts[start:end]))
                    while await cur.nextset():
                        pass
                    start = end

        await self._attempt(query, run)

    async def script(self, query: str, **templates: str) -> None:
        """Run DDL statement by statement. MySQL commits implicitly around DDL, so a script is
        never atomic; the scripts in sql/mysql are written to be re-run."""
        statements = self._dialect.prepared(query, templates).statements
        self._fresh = False
        self._replace = None
        try:
            await self._begin()
            async with self._conn.cursor(aiomysql.Cursor) as cur:
                for sql in statements:
                    await cur.execute(sql, {})
        except BaseException:
            self.broken = True  # e.g. a named lock still held: the connection is dropped
            raise

    async def _begin(self) -> None:
        if self.begin_pending:
            self.begin_pending = False
            await self._conn.begin()

    async def _run(self, prepared: _Prepared, values: dict[str, Any]) -> tuple[list[Row], int]:
        statements = prepared.statements
        if not self._own and len(statements) > 1:
            return await self._run_all_or_nothing(prepared, values)
        if not self._multi and len(statements) > 1:
            return await self._run_each(prepared, values)
        # Our own transaction around a sequence, or a transaction() begun by this query.
        wrap = len(statements) > 1 and not self._in_transaction
        if wrap and prepared.compound is not None and self._dialect.compound_statements:
            return await self._run_compound(prepared, prepared.compound, values)
        if wrap:
            text = prepared.wrapped
        elif self.begin_pending:
            text = "START TRANSACTION;\n" + prepared.packet
            self.begin_pending = False
        else:
            text = prepared.packet
        # The result sets before the last statement's (START TRANSACTION, earlier statements).
        before = len(statements) - 1 + (text is not prepared.packet)
        try:
            async with self._conn.cursor(aiomysql.Cursor) as cur:
                self._check_size(cur, text, values)
                await cur.execute(text, values)
                insert_id = cur.lastrowid
                for _ in range(before):
                    await cur.nextset()
                    insert_id = cur.lastrowid or insert_id
                count = int(cur.rowcount)
                rows = await _decode(cur)
                if prepared.reply:
                    rows = prepared.answer(insert_id, values)
                    count = len(rows)
                if wrap:
                    await cur.nextset()  # COMMIT: its error, if any, is raised here
        except BaseException as exc:
            if wrap and _is_server_error(exc):  # else the connection is dropped
                await _roll_back(self._conn)
            raise
        return rows, count

    def _check_size(self, cur: Any, text: str, values: dict[str, Any]) -> None:
        """Refuse a statement longer than the server's max_allowed_packet before it is sent:
        the server would drop the connection, which looks like a lost database (and a batch
        of outcomes would be retried without end). Measured exactly only when its values
        could come near the limit (a value may be written more than once)."""
        limit = self._dialect.max_packet
        if limit is None:
            return
        chars = sum(len(v) for v in values.values() if isinstance(v, str | bytes))
        # (4: UTF-8's longest character; a batch's rows may be in the text already)
        if (len(text) + chars * max(1, text.count("%("))) * 4 < limit:
            return
        size = len(cur.mogrify(text, values).encode("utf-8", "surrogatepass"))
        if size > limit - 1024:  # (the packet's header and the driver's framing)
            raise StatementTooLargeError(
                f"a statement of {size} bytes is over the server's max_allowed_packet of "
                f"{limit} bytes: the request, result or batch is too large to store (a batch "
                "can be enqueued in smaller parts)"
            )

    async def _run_compound(
        self, prepared: _Prepared, text: str, values: dict[str, Any]
    ) -> tuple[list[Row], int]:
        """Our own transaction as one MariaDB compound statement. The server replies once, with
        the rows of its SELECTs and an OK, where a packet of statements gets a reply per
        statement, and aiomysql wakes up for each (about 0.1 ms apiece on this machine)."""
        rows: list[Row] = []
        count = 0
        try:
            async with self._conn.cursor(aiomysql.Cursor) as cur:
                self._check_size(cur, text, values)
                await cur.execute(text, values)
                while True:
                    if cur.description is not None:
                        rows, count = await _decode(cur), int(cur.rowcount)
                    # The last reply is the OK; a failed COMMIT's error is raised here.
                    if not await cur.nextset():
                        break
        except BaseException as exc:
            if _is_server_error(exc):  # the transaction may be open; else the connection goes
                await _roll_back(self._conn)
            raise
        if prepared.reply is not None:
            rows = prepared.answer(int(next(iter(rows[0].values()))), values)
            count = len(rows)
        return rows, count

    async def _run_all_or_nothing(
        self, prepared: _Prepared, values: dict[str, Any]
    ) -> tuple[list[Row], int]:
        """A sequence of statements on an application's connection (adopt): all of it or none.
        In a transaction a failed statement ends only itself, leaving those before it applied
        (a job without its summary, which the application's commit would keep, and every
        claim would then return): a savepoint undoes them, and the error is raised as it was.
        On a connection that autocommits outside a transaction, the sequence gets a
        transaction of its own, as our own connections give it."""
        conn = self._conn
        if conn.get_autocommit() and not conn.get_transaction_status():
            await conn.begin()
            try:
                result = await self._run_each(prepared, values)
            except BaseException as exc:
                if _is_server_error(exc):
                    await _roll_back(conn)
                raise
            await answered_in_time(conn.commit(), "COMMIT", conn.close)
            return result
        await _statement(conn, "SAVEPOINT asyncjobs_batch")
        try:
            result = await self._run_each(prepared, values)
        except BaseException as exc:
            if _is_server_error(exc):
                with anyio.move_on_after(CLEANUP_SECONDS, shield=True):
                    await _statement(conn, "ROLLBACK TO SAVEPOINT asyncjobs_batch")
            raise
        await _statement(conn, "RELEASE SAVEPOINT asyncjobs_batch")
        return result

    async def _run_each(self, prepared: _Prepared, values: dict[str, Any]) -> tuple[list[Row], int]:
        """A connection without multi-statements (an application's own): one round trip per
        statement, inside its transaction."""
        insert_id = 0
        async with self._conn.cursor(aiomysql.Cursor) as cur:
            for sql in prepared.statements:
                self._check_size(cur, sql, values)
                await cur.execute(sql, values)
                insert_id = cur.lastrowid or insert_id
            if prepared.reply:
                rows = prepared.answer(insert_id, values)
                return rows, len(rows)
            return await _decode(cur), int(cur.rowcount)

    async def _attempt(self, query: str, run: Callable[[], Awaitable[T]]) -> T:
        """Run the query, sending it again on another pooled connection if this one turns out
        dropped, and retrying deadlocks (see _retrying_deadlocks).
        Sent again only when that cannot run it twice: the first query of a transaction
        (START TRANSACTION goes with it, and a dropped connection never commits) or a query
        that only reads. An autocommitting write that lost its connection may have committed,
        and goes to the caller. Every pooled connection may have been dropped at once (a
        server restart): each replacement may be another dead one, up to the pool's size."""
        replace, self._replace = self._replace, None
        pending, fresh = self.begin_pending, self._fresh
        if replace is None or not (pending or self._dialect.reads_only(query)):
            return await self._retrying_deadlocks(run)
        for _attempt in range(self._dialect.max_size):
            try:
                return await self._retrying_deadlocks(run)
            except Exception as exc:
                if not self._dialect.is_disconnect(exc):
                    raise
                # (None while replaced: the stale one is back in the pool already)
                stale, self._conn = self._conn, None
                self._conn = await replace(stale)
                self.begin_pending, self._fresh = pending, fresh
        return await self._retrying_deadlocks(run)

    async def _retrying_deadlocks(self, run: Callable[[], Awaitable[T]]) -> T:
        """Run, retrying a deadlock or lock-wait timeout while it is the transaction's first
        query (autocommitting queries always are)."""
        first_is_retryable = self._fresh or not self._in_transaction
        self._fresh = False
        return await retry_deadlocks(
            run,
            first_is_retryable=first_is_retryable,
            is_deadlock=lambda exc: _error_code(exc) in (_DEADLOCK, _LOCK_WAIT_TIMEOUT),
            recover=self._after_deadlock,
            limit=self._dialect.deadlock_retries,
            stats=self._dialect.stats,
        )

    async def _after_deadlock(self) -> None:
        # A deadlock rolled the transaction back; a lock-wait timeout only the statement.
        await self._conn.rollback()
        if self._in_transaction:
            self.begin_pending = True  # begun again by the retry


class MysqlDialect(WatchesNewJobIds, Dialect):
    name = "mysql"
    # "notifications": a watch of new job ids stands in for them (see WatchesNewJobIds).
    capabilities = Capabilities(partitioned_archive=True, notifications=True, batch_rows=True)
    writes_in_a_select = ("FOR UPDATE", "FOR SHARE", "LOCK IN SHARE MODE", "GET_LOCK")
    #: how datetimes are written inside JSON parameters (JSON_TABLE reads DATETIME(6) text)
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
        if not dsn.database:
            raise InvalidDsnError("a MySQL DSN needs a database: mysql://user@host:3306/dbname")
        check_pool_settings(
            min_size,
            max_size,
            deadlock_retries,
            pool_recycle,
            connect_timeout,
            change_poll_interval,
        )
        #: how often the change watch reads new job ids while jobs come (see WatchesNewJobIds)
        self.change_poll_interval = change_poll_interval
        self._new_job_ids = NewJobIds()
        self.dsn = dsn
        self.queries: Queries = load_queries("mysql")
        self.deadlock_retries = deadlock_retries
        self._min_size = min_size
        self.max_size = max_size
        self._pool_recycle = pool_recycle
        self._connect_timeout = connect_timeout
        self._pool: Any = None
        self._turns: anyio.Semaphore | None = None
        self._configured: weakref.WeakSet[Any] = weakref.WeakSet()
        self._prepared: dict[object, _Prepared] = {}
        #: whether the server runs compound statements (BEGIN NOT ATOMIC ... END), as MariaDB
        #: does; None until the first connection tells
        self.compound_statements: bool | None = None
        #: the server's max_allowed_packet: a longer statement makes it drop the connection
        #: (known from the first connection)
        self.max_packet: int | None = None
        self.stats = {"deadlock_retries": 0, "deadlocks": 0}

    def prepared(self, query: str, templates: dict[str, str]) -> _Prepared:
        """A query's statements in the driver's ``%(name)s`` style, rendered and cached."""
        key = (query, *sorted(templates.items())) if templates else query
        found = self._prepared.get(key)
        if found is None:
            named = self.queries[query]
            text = named.render(**templates) if templates else named.sql
            statements: list[str] = []
            guards: list[tuple[str, bool] | None] = []
            expansions: list[tuple[str, str, str]] = []
            used: set[str] = set()
            for sql in split_statements(text):
                guard = _GUARD.match(sql)
                guards.append(None if guard is None else (guard.group(2), bool(guard.group(1))))
                body = convert_params(named, "pyformat", sql[guard.end() :] if guard else sql)[0]
                used.update(_PYFORMAT_PARAM.findall(body))
                statements.append(_take_groups(body, expansions))
            for name in {guard[0] for guard in guards if guard is not None} - used:
                # a misspelt guard would silently leave its statement out (or in)
                raise ConfigurationError(
                    f"{named.source}: 'only if :{name}' names no parameter of the query"
                )
            found = self._prepared[key] = _Prepared.of(statements, guards, expansions=expansions)
        return found

    def statements(self, query: str, templates: dict[str, str]) -> list[str]:
        """A query's statements as the driver runs them (e.g. to EXPLAIN one)."""
        return self.prepared(query, templates).statements

    def statistics(self) -> dict[str, int]:
        """Deadlocks retried transparently and deadlocks passed on; pool size and free."""
        pool = self._pool
        return {
            **self.stats,
            "pool_size": 0 if pool is None else int(pool.size),
            "pool_free": 0 if pool is None else int(pool.freesize),
        }

    def _connect_args(self) -> dict[str, Any]:
        return {
            "host": self.dsn.host or "127.0.0.1",
            "port": self.dsn.port or 3306,
            "user": self.dsn.user or "root",
            "password": self.dsn.password or "",
            "db": self.dsn.database,
            "connect_timeout": self._connect_timeout,
            "autocommit": True,
            "charset": "utf8mb4",
            # UPDATE counts the rows it matched, as on the other databases, not only those it
            # changed; a query's statements go in one packet (see the module docstring).
            "client_flag": _CLIENT_FOUND_ROWS | _CLIENT_MULTI_STATEMENTS,
            "conv": _DECODERS,
        }

    async def open(self) -> None:
        # A free turn is taken without a pass through the event loop: the query that
        # follows yields anyway.
        self._turns = anyio.Semaphore(self.max_size, fast_acquire=True)
        self._pool = await aiomysql.create_pool(
            minsize=self._min_size,
            maxsize=self.max_size,
            pool_recycle=self._pool_recycle,
            **self._connect_args(),
        )

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        with anyio.CancelScope(shield=True):
            pool.close()
            with anyio.move_on_after(10):
                await pool.wait_closed()
            pool.terminate()

    async def _checkout(self) -> Any:
        """A pooled connection, set up for our sessions. (The pool drops idle connections whose
        socket the server closed; one that died unnoticed fails here and is replaced once.)"""
        pool = self._pool
        if pool is None:
            raise RuntimeError("the MySQL dialect is not open")
        for attempt in range(2):
            conn = await pool.acquire()
            try:
                if conn not in self._configured:
                    async with conn.cursor(aiomysql.Cursor) as cur:
                        await cur.execute(_SESSION)
                        while await cur.nextset():
                            pass
                    if self.compound_statements is None:
                        # MySQL has no compound statements outside stored programs.
                        self.compound_statements = "MariaDB" in conn.get_server_info()
                    if self.max_packet is None:
                        async with conn.cursor(aiomysql.Cursor) as cur:
                            await cur.execute("SELECT @@max_allowed_packet")
                            (self.max_packet,) = await cur.fetchone()
                    self._configured.add(conn)
            except BaseException as exc:
                conn.close()
                pool.release(conn)
                if attempt or not self.is_disconnect(exc):
                    raise
            else:
                return conn
        raise AssertionError("unreachable")

    async def _replace(self, stale: Any) -> Any:
        """Drop a pooled connection that the server closed while it sat idle (unseen by the
        pool) and check out another one."""
        log.debug("replacing a dropped pooled connection")
        stale.close()
        self._pool.release(stale)
        return await self._checkout()

    @asynccontextmanager
    async def _session(self, *, in_transaction: bool) -> AsyncIterator[MysqlConnection]:
        pool = self._pool
        async with in_arrival_order(self._turns):
            session = MysqlConnection(
                self, await self._checkout(), in_transaction=in_transaction, own=True,
                replace=self._replace,
            )  # fmt: skip
            try:
                yield session
            except BaseException as exc:
                # Cancelled or failed mid-query, the connection's protocol state is unknown:
                # close it (the server rolls back) rather than return it to the pool.
                if not _is_server_error(exc) and session.driver is not None:
                    session.driver.close()
                raise
            finally:
                if session.driver is not None:
                    pool.release(session.driver)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        """A transaction on a pooled connection; its START TRANSACTION is sent with its first
        query (and nothing at all is sent for a transaction that runs none)."""
        async with self._session(in_transaction=True) as tx:
            try:
                yield tx
            except BaseException as exc:
                if tx.driver is None:  # its replacement failed: nothing left to end
                    pass
                elif tx.broken or not _is_server_error(exc):
                    tx.driver.close()
                elif not tx.begin_pending:
                    with contextlib.suppress(TimeoutError):  # (closed: the server rolls back)
                        await answered_in_time(tx.driver.rollback(), "ROLLBACK", tx.driver.close)
                raise
            if tx.broken:  # a script failed but its error was swallowed by the caller
                tx.driver.close()
                raise ConfigurationError("a DDL script failed; the transaction was abandoned")
            if not tx.begin_pending:  # else nothing ran: no transaction to commit
                await answered_in_time(tx.driver.commit(), "COMMIT", tx.driver.close)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        async with self._session(in_transaction=False) as session:
            yield session
            if session.broken:
                session.driver.close()

    @asynccontextmanager
    async def _adopted(self, conn: Any) -> AsyncIterator[Connection]:
        yield MysqlConnection(self, conn, in_transaction=True, own=False)

    def adopt(self, driver_connection: object) -> Any:
        """Run queries inside the application's own aiomysql transaction: nothing is committed
        or rolled back here, and the application's session settings are left as they are."""
        if not isinstance(driver_connection, aiomysql.Connection):
            raise ConfigurationError(
                f"the mysql dialect enqueues on an aiomysql connection, "
                f"not {type(driver_connection).__name__}"
            )
        return self._adopted(driver_connection)

    def _watched(self) -> str:
        return str(self.dsn.database)

    async def _watch_connect(self) -> Any:
        return await aiomysql.connect(**self._connect_args())

    async def _watch_close(self, conn: Any) -> None:
        conn.close()

    async def _newest_job_id(self, conn: Any) -> WatchedIds:
        async with conn.cursor(aiomysql.Cursor) as cur:
            await cur.execute(self.prepared("newest_job_id", {}).packet)
            return watched_ids(await cur.fetchall())

    async def _visible_job_ids(self, conn: Any, after: int, skipped: list[int]) -> WatchedIds:
        values = {"after": after, "ids": json.dumps(skipped)}
        async with conn.cursor(aiomysql.Cursor) as cur:
            await cur.execute(self.prepared("visible_job_ids", {}).packet, values)
            return watched_ids(await cur.fetchall())

    def is_unique_violation(self, exc: BaseException) -> bool:
        return _error_code(exc) == _DUPLICATE_KEY

    def is_disconnect(self, exc: BaseException) -> bool:
        if _error_code(exc) in _DISCONNECT_CODES:
            return True
        if isinstance(exc, aiomysql.InterfaceError):  # used after the connection closed
            return True
        return isinstance(exc, OSError | ConnectionError | EOFError)


def create(dsn: Dsn, **settings: Any) -> MysqlDialect:
    unknown = sorted(set(settings) - set(_SETTINGS))
    if unknown:
        raise ConfigurationError(
            f"unknown MySQL settings {unknown}; known settings: {', '.join(_SETTINGS)}"
        )
    options: dict[str, Any] = {}
    for key, value in dsn.options.items():
        if key not in _OPTIONS:
            raise InvalidDsnError(
                f"unknown MySQL DSN option {key!r}; known options: {', '.join(_OPTIONS)}"
            )
        try:
            options[key] = (
                float(value) if key in ("pool_recycle", "connect_timeout") else int(value)
            )
        except ValueError:
            raise InvalidDsnError(f"MySQL DSN option {key}={value!r} is not a number") from None
    return MysqlDialect(dsn, **{**options, **settings})


async def _statement(conn: Any, sql: str) -> None:
    async with conn.cursor(aiomysql.Cursor) as cur:
        await cur.execute(sql)


async def _roll_back(conn: Any) -> None:
    """Roll back after a server error, shielded and bounded: a server that stops answering
    meanwhile gets the connection closed (it is dropped from the pool), not a wait without
    end."""
    with contextlib.suppress(NoAnswerError):
        await answered_in_time(conn.rollback(), "ROLLBACK", conn.close)
