"""The dialect interface the store talks to.

A dialect opens connections and runs named queries; everything that differs between databases is
either in its SQL files or in its :class:`Capabilities`. A :class:`Connection` has four methods:
``fetch``, ``execute``, ``executemany`` and ``script``.
"""

from __future__ import annotations

import abc
import inspect
import logging
import random
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import (
    AbstractAsyncContextManager,
    AbstractContextManager,
    asynccontextmanager,
    contextmanager,
    nullcontext,
)
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Generic, Protocol, TypeVar, cast

import anyio

from .._sql import Queries
from ..exceptions import ConfigurationError

Row = dict[str, Any]
Params = Mapping[str, Any]
T = TypeVar("T")
C = TypeVar("C")
log = logging.getLogger("asyncjobs.dialects")


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What the runtime may rely on, as data rather than ``if dialect == ...`` branches."""

    #: archives are one table pair per month (``completed_job_YYYYMM``) rather than partitions
    monthly_archive_tables: bool = False
    #: partitions are managed by ``create_partitions`` / ``drop_partitions`` queries
    partitioned_archive: bool = False
    #: other processes can be woken with a notification (PostgreSQL LISTEN/NOTIFY)
    notifications: bool = False
    #: transactions from several processes may run concurrently (not SQLite's single writer)
    concurrent_writers: bool = True
    #: a batch insert takes its jobs as a list of rows (one dict of columns each), written out
    #: as a multi-row INSERT, rather than as one JSON array for the server to read
    batch_rows: bool = False


class Connection(Protocol):
    """A connection (inside a transaction, or autocommitting) that runs named queries."""

    async def fetch(self, query: str, params: Params | None = None, **templates: str) -> list[Row]:
        """Run a query and return its rows as dicts."""

    async def execute(self, query: str, params: Params | None = None, **templates: str) -> int:
        """Run a statement and return the number of rows it touched."""

    async def executemany(self, query: str, params: Sequence[Params], **templates: str) -> None:
        """Run a statement once per parameter set, in one round trip where the driver can."""

    async def script(self, query: str, **templates: str) -> None:
        """Run a multi-statement query (DDL) statement by statement."""


class Dialect(abc.ABC):
    """A database the store can use."""

    name: str
    capabilities: Capabilities
    queries: Queries
    #: what makes a SELECT more than a read here: row locks, and the functions our queries call
    #: that write, lock or notify (see reads_only)
    writes_in_a_select: tuple[str, ...] = ("FOR UPDATE", "FOR SHARE")

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect (a pool or a file)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release every connection."""

    @abc.abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[Connection]:
        """A connection inside a transaction that commits on success, rolls back on error."""

    @abc.abstractmethod
    def connection(self) -> AbstractAsyncContextManager[Connection]:
        """An autocommitting connection for reads and single statements."""

    def adopt(self, driver_connection: object) -> AbstractAsyncContextManager[Connection]:
        """Run queries on the application's own driver connection (transactional enqueue)."""
        raise ConfigurationError(f"{self.name} cannot enqueue on an application connection")

    @abc.abstractmethod
    def is_unique_violation(self, exc: BaseException) -> bool:
        """Whether a driver error is a unique-key violation."""

    def is_disconnect(self, exc: BaseException) -> bool:
        """Whether a driver error means the database went away (the runtime retries)."""
        return isinstance(exc, OSError | ConnectionError)

    def reads_only(self, query: str) -> bool:
        """Whether a named query only reads: one plain SELECT that locks nothing and calls none
        of the functions that write, so sending it again after a broken connection is safe."""
        cache: dict[str, bool] = self.__dict__.setdefault("_reads_only", {})
        found = cache.get(query)
        if found is None:
            named = self.queries[query]
            text = named.sql.strip().upper()
            found = cache[query] = (
                len(named.statements()) == 1
                and text.startswith("SELECT")
                and not any(word in text for word in self.writes_in_a_select)
            )
        return found

    def text_length(self, text: str) -> int:
        """The length of ``text`` as the database's string functions count it (code points)."""
        return len(text)

    def inserted_here(self, ids: Iterable[int]) -> None:  # noqa: B027 - optional
        """Jobs this process has just inserted: a change watch need not wake it for them (its
        own enqueues wake it directly, or start at once)."""

    def inserting(self) -> AbstractContextManager[None]:
        """Around an insert whose ids go to ``inserted_here``, from before it commits."""
        return nullcontext()

    async def notify(self, channel: str, payload: str) -> None:  # noqa: B027 - optional
        """Wake listeners in other processes; a no-op where there are none."""

    def listen(
        self, channel: str, on_message: Callable[[str], Awaitable[None] | None]
    ) -> AbstractAsyncContextManager[None]:
        """Call ``on_message`` for each notification while the context is open."""
        return no_listen()


@asynccontextmanager
async def in_arrival_order(turns: anyio.Semaphore | None) -> AsyncIterator[None]:
    """Hold one of a pool's ``turns`` (a semaphore of its size) while a connection is out.
    aiomysql's and aioodbc's pools give a released connection to whichever task asks next, so
    tasks that query in a loop can starve the rest (a worker's completions among them); the
    semaphore hands connections out in arrival order."""
    if turns is None:
        raise RuntimeError("the dialect is not open")
    async with turns:
        yield


class _NoListen:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


def no_listen() -> AbstractAsyncContextManager[None]:
    return _NoListen()


#: how many times its interval a change watch waits between reads once nothing has changed for
#: a while
_QUIET_BACKOFF = 8
#: the longest a change watch waits before trying again a database that keeps failing (seconds)
_FAILING_CEILING = 5.0
_UNREAD = object()
#: how long, and how many, ids a watch of new job ids saw skipped it keeps looking up
_SKIPPED_FOR = 30.0
_SKIPPED_MAX = 100
#: how many reads in a row a watch of new job ids may put off judging for an insert in flight
_DEFER_MAX = 3


class ValueChanged:
    """A change watch's default judge: news whenever the value read differs from the last."""

    def __init__(self) -> None:
        self._last: object = _UNREAD

    def __call__(self, value: object) -> bool:
        last, self._last = self._last, value
        return last is not _UNREAD and value != last


class ChangeWatch(Generic[C]):
    """The stand-in for notifications where a database has none: on a connection of its own, it
    reads a value that moves when another process adds work (SQLite: the file's data version;
    MySQL: the newest job id) and calls ``on_change("")`` when ``judge`` finds the value is news
    (by default: it moved; the first read is the baseline). It reads every
    ``interval`` seconds while changes come, backing off, doubling, to ``_QUIET_BACKOFF`` times
    that when none do: each wake-up of the event loop costs ~0.15 ms of CPU on a small VM.

    It never raises (polling stays the backstop): a failed connect or read is logged, the
    connection dropped and made again at the next read, which comes later after each failure
    in a row (up to ``_FAILING_CEILING``). A class rather than a generator, like
    PostgreSQL's listener: an error inside ``async with`` reaches the caller unwrapped."""

    def __init__(
        self,
        what: str,
        interval: float,
        on_change: Callable[[str], Awaitable[None] | None],
        *,
        connect: Callable[[], Awaitable[C]],
        read: Callable[[C], Awaitable[object]],
        close: Callable[[C], Awaitable[None] | None],
        judge: Callable[[object], bool] | None = None,
    ) -> None:
        self._what = what
        self._interval = interval
        self._on_change = on_change
        self._connect = connect
        self._read = read
        self._close = close
        self._judge = judge or ValueChanged()
        self._tg = anyio.create_task_group()

    async def __aenter__(self) -> None:
        await self._tg.__aenter__()
        self._tg.start_soon(self._watch)

    async def __aexit__(self, *exc_info: object) -> None:
        # The watch never raises, so the group exits with nothing to report.
        self._tg.cancel_scope.cancel()
        await self._tg.__aexit__(None, None, None)

    async def _watch(self) -> None:
        conn: C | None = None
        quiet = self._interval * _QUIET_BACKOFF
        delay = self._interval
        failing = False
        try:
            while True:
                try:
                    if conn is None:
                        conn = await self._connect()
                    value = await self._read(conn)
                except Exception as exc:
                    # e.g. busy, or the server went away: read again later, connected afresh
                    (log.debug if failing else log.warning)("watching %s: %r", self._what, exc)
                    failing = True
                    if conn is not None:
                        await self._closed(conn)
                        conn = None
                    # a database that stays away is tried less and less often
                    delay = min(max(delay * 2, quiet), _FAILING_CEILING)
                else:
                    failing = False
                    if self._judge(value):
                        delay = self._interval
                        await deliver(self._on_change, "")
                    else:
                        delay = min(delay * 2, quiet)
                await anyio.sleep(delay)
        finally:
            if conn is not None:
                await self._closed(conn)

    async def _closed(self, conn: C) -> None:
        """Close a connection of the watch (a driver may close in a thread: awaited, shielded,
        as the watch is usually being cancelled). A connection that fails to close is
        dropped all the same: the watch never raises."""
        with anyio.CancelScope(shield=True):
            try:
                result = self._close(conn)
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:
                log.debug("watching %s: closing its connection: %r", self._what, exc)


@dataclass(frozen=True, slots=True)
class WatchedIds:
    """What a read of a watch of new job ids returns: job ids, and the count of failed jobs
    ever requeued (None when the read could not see it)."""

    ids: frozenset[int]
    requeues: int | None


@dataclass(frozen=True, slots=True)
class BaselineRead:
    """A watch's first read: the newest id (if any) and the count of requeues."""

    seen: WatchedIds


def watched_ids(rows: Iterable[tuple[object, object]]) -> WatchedIds:
    """(id, requeues) rows as the dialects' reads return them: the count in a row of its
    own (its id NULL), or beside the newest id."""
    ids: set[int] = set()
    requeues: int | None = None
    for job_id, count in rows:
        if job_id is not None:
            ids.add(int(cast(int, job_id)))
        if count is not None:
            requeues = int(cast(int, count))
    return WatchedIds(frozenset(ids), requeues)


class NewJobIds:
    """The judge of a change watch that reads new job ids (where a database has no
    notifications, but ids only grow): news when a job appears that this process did not
    insert itself (it woke its own dispatcher). A job appears when its id passes the highest
    seen so far, or when an id skipped below it shows up: ids are handed out at INSERT, so an
    enqueue whose transaction commits after a newer one (an application's transaction,
    usually) is visible only once the newest id has moved past it. Skipped ids are looked up
    at every read for ``_SKIPPED_FOR`` seconds, at most ``_SKIPPED_MAX`` of them, the newest;
    most are jobs another process finished between two reads, or ids the server skipped. An
    enqueue that stays uncommitted longer is found by the dispatcher's poll. A failed job
    requeued under its old id is news through a count of requeues that each read returns too.

    An insert of this process is visible from its commit, but its ids are known here only once
    the reply arrives: while one is in flight (``inserting``), ids not known as its own are
    judged at a later read (at most ``_DEFER_MAX`` reads later), so that it wakes nobody."""

    def __init__(self) -> None:
        self.watches = 0
        #: ids inserted here and not yet passed by a read
        self.own: set[int] = set()
        #: inserts of this process under way (see inserting)
        self.in_flight = 0
        #: reads in a row whose judgment waited for an insert in flight
        self.deferred = 0
        #: the highest id seen (None: not read yet)
        self.highest: int | None = None
        #: skipped ids, each with the time it stops being looked up
        self.skipped: dict[int, float] = {}
        #: the count of requeues last read (None: not read yet)
        self.requeues: int | None = None

    def inserted_here(self, ids: Iterable[int]) -> None:
        """Jobs this process inserted, outside an application's transaction (see
        Dialect.inserted_here): recorded only while a watch runs."""
        if self.watches:
            self.own.update(ids)

    @contextmanager
    def inserting(self) -> Iterator[None]:
        """Around an insert this process commits, until its ids are handed to inserted_here."""
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    @asynccontextmanager
    async def watching(
        self,
        what: str,
        interval: float,
        on_change: Callable[[str], Awaitable[None] | None],
        *,
        connect: Callable[[], Awaitable[C]],
        newest: Callable[[C], Awaitable[WatchedIds]],
        visible: Callable[[C, int, list[int]], Awaitable[WatchedIds]],
        close: Callable[[C], Awaitable[None] | None],
    ) -> AsyncIterator[None]:
        """A ChangeWatch judged by this: its first read is ``newest`` (the newest job's id, if
        any), every later one ``visible`` (the ids above the highest seen, and which of the
        skipped ones exist now); each with the count of requeues."""

        async def read(conn: C) -> object:
            if self.highest is None:
                return BaselineRead(await newest(conn))
            return await visible(conn, self.highest, sorted(self.skipped))

        self.watches += 1
        try:
            async with ChangeWatch(
                what, interval, on_change, connect=connect, read=read, close=close, judge=self
            ):
                yield
        finally:
            self.watches -= 1

    def __call__(self, value: object) -> bool:
        if isinstance(value, BaselineRead):  # the first read
            self.highest = max(value.seen.ids, default=0)
            self.requeues = value.seen.requeues
            return False
        assert self.highest is not None and isinstance(value, WatchedIds)
        ids = value.ids
        appeared = [i for i in ids if i in self.skipped]
        newer = [i for i in ids if i > self.highest]
        unknown = any(i not in self.own for i in (*appeared, *newer))
        if unknown and self.in_flight and self.deferred < _DEFER_MAX:
            self.deferred += 1  # the same ids come back at the next read
            return False
        self.deferred = 0
        # (a count not read this time, held by a requeue under way, is news at a later read)
        requeued = value.requeues is not None and value.requeues != self.requeues
        if value.requeues is not None:
            self.requeues = value.requeues
        now = time.monotonic()
        for i in appeared:
            del self.skipped[i]
        news = any(i not in self.own for i in appeared)
        if newer:
            top = max(newer)
            news = news or any(i not in self.own for i in newer)
            until = now + _SKIPPED_FOR
            start = max(self.highest + 1, top - _SKIPPED_MAX)
            for i in range(start, top):
                if i not in ids and i not in self.own:
                    self.skipped[i] = until
            self.highest = top
        if self.skipped:
            live = sorted(i for i, until in self.skipped.items() if until > now)
            self.skipped = {i: self.skipped[i] for i in live[-_SKIPPED_MAX:]}
        if self.own:
            # an id of ours skipped (its insert committed after a newer one) is still ours
            self.own = {i for i in self.own if i > self.highest or i in self.skipped}
        return news or requeued


class WatchesNewJobIds(abc.ABC):
    """For a dialect whose database has no notifications that reach a client (MySQL, SQL
    Server): ``listen`` calls ``on_message("")`` soon after another process enqueues. A
    connection of its own (outside the pool) reads the ids of new jobs, every
    ``change_poll_interval`` while jobs come and up to 8 times that when none do (see
    ChangeWatch): key lookups, cheap for the server. Jobs this process inserted itself, outside
    an application's transaction, wake nobody (see NewJobIds): an empty claim costs the server
    far more. A job whose enqueue commits after a newer one is heard of too, as an id the watch
    saw skipped and then appear, and a failed job requeued under its old id by the count of
    requeues the reads return (this process's own requeues too: one claim more each, as
    requeues are rare). The dialect supplies the connection and the two reads."""

    change_poll_interval: timedelta
    _new_job_ids: NewJobIds

    def listen(
        self, channel: str, on_message: Callable[[str], Awaitable[None] | None]
    ) -> AbstractAsyncContextManager[None]:
        return self._new_job_ids.watching(
            f"{self._watched()} for new jobs",
            self.change_poll_interval.total_seconds(),
            on_message,
            connect=self._watch_connect,
            newest=self._newest_job_id,
            visible=self._visible_job_ids,
            close=self._watch_close,
        )

    def inserted_here(self, ids: Iterable[int]) -> None:
        self._new_job_ids.inserted_here(ids)

    def inserting(self) -> AbstractContextManager[None]:
        return self._new_job_ids.inserting()

    @abc.abstractmethod
    def _watched(self) -> str:
        """What the watch's log messages name."""

    @abc.abstractmethod
    async def _watch_connect(self) -> Any:
        """A connection of the watch's own, outside the pool."""

    @abc.abstractmethod
    async def _watch_close(self, conn: Any) -> None:
        """Close a connection ``_watch_connect`` made."""

    @abc.abstractmethod
    async def _newest_job_id(self, conn: Any) -> WatchedIds:
        """The newest job's id (none: no job), and the count of requeues."""

    @abc.abstractmethod
    async def _visible_job_ids(self, conn: Any, after: int, skipped: list[int]) -> WatchedIds:
        """The ids above ``after`` and those of ``skipped`` that exist now, and the count of
        requeues."""


async def deliver(on_message: Callable[[str], Awaitable[None] | None], payload: str) -> None:
    """Hand a notification to its handler. A failing handler is logged, not raised: it must
    not end the listener, which would leave the process deaf until it restarts."""
    try:
        result = on_message(payload)
        if inspect.isawaitable(result):
            await result
    except Exception:
        log.exception("notification handler failed")


async def retry_deadlocks(
    run: Callable[[], Awaitable[T]],
    *,
    first_is_retryable: bool,
    is_deadlock: Callable[[BaseException], bool],
    recover: Callable[[], Awaitable[None]],
    limit: int,
    stats: dict[str, int],
) -> T:
    """Run a query, retrying it when the server chose it as a deadlock victim, at most ``limit``
    times. Only a query that was its transaction's first (``first_is_retryable``; autocommitting
    queries always are) is retried: nothing else of the transaction ran, so a retry is
    invisible. ``recover`` undoes what the deadlock left (rolls back, begins again);
    ``stats`` counts the retries and the deadlocks passed on to the caller."""
    retryable = first_is_retryable
    retries = 0
    while True:
        try:
            return await run()
        except Exception as exc:
            if not is_deadlock(exc):
                raise
            if not retryable or retries >= limit:
                stats["deadlocks"] += 1
                raise
            retries += 1
            stats["deadlock_retries"] += 1
            log.debug("retrying after %r (retry %d)", exc, retries)
            await recover()
            retryable = True
            await anyio.sleep(random.uniform(0, 0.005 * 2**retries))


#: how long a shielded step (BEGIN, COMMIT, ROLLBACK, the return of a connection) waits for the
#: server: shielded, it must still end when the server stopped answering without closing the
#: connection (a frozen host, a network that drops everything), or a shutdown would never end.
#: Past it the connection is closed; a COMMIT then raises, as one whose reply was lost.
CLEANUP_SECONDS = 5.0


class NoAnswerError(TimeoutError):
    """The server did not answer a shielded step in time; its connection was closed."""


async def answered_in_time(step: Awaitable[Any], what: str, close: Callable[[], object]) -> None:
    """Run ``step`` shielded from cancellation, for at most CLEANUP_SECONDS: past them the
    connection is closed with ``close`` (its state unknown) and NoAnswerError raised."""
    with anyio.move_on_after(CLEANUP_SECONDS, shield=True) as waited:
        await step
    if waited.cancelled_caught:
        close()
        raise NoAnswerError(
            f"{what} got no answer in {CLEANUP_SECONDS:g} s; the connection was closed"
            + (" (the transaction may have committed)" if what == "COMMIT" else "")
        )
