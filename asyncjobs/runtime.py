"""``BackgroundJobs``: the object users hold. It enqueues and queries jobs, and (with
``execute=True``) runs them: a dispatcher claims runnable jobs in batches sized to free capacity,
each job runs in its own cancel scope, and a finisher writes many outcomes per transaction."""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import json
import logging
import math
import os
import socket
import time
import traceback
import types
import uuid
from collections import deque
from collections.abc import (
    Awaitable,
    Callable,
    Coroutine,
    Generator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import ModuleType, TracebackType
from typing import Any, Self

import anyio
import anyio.abc
import anyio.lowlevel
import msgspec

from ._ref_ids import new_ref_id
from ._retry import retry_backoff
from ._serialization import check_encodable, check_loads, decode, encode, type_name
from ._settings import check_bool, check_duration, check_int
from ._threads import SyncThreads
from .clock import Clock, DatabaseClock
from .commands import (
    NO_RESULT,
    CommandInfo,
    Registry,
    constructor_args,
    instantiate,
    result_type,
)
from .context import JobContext, _current
from .dialects import Dialect, create_dialect
from .dialects._base import NoAnswerError
from .exceptions import (
    AsyncJobsError,
    ConfigurationError,
    DatabaseError,
    InvalidOptionsError,
    JobCancelledError,
    JobFailedError,
    JobNotFoundError,
    RegistrationError,
    ReplyToError,
    SerializationError,
    StatementTooLargeError,
)
from .models import (
    BackgroundJob,
    JobError,
    JobOptions,
    JobRef,
    JobResult,
    JobState,
    ScheduledTask,
    check_name,
    check_text,
    storable_text,
)
from .schedule import Schedule
from .scheduler import Scheduler, row_to_task, task_job
from .store import Claim, FinishReport, NewJob, Outcome, Store, add_months, month_key, utcnow

log = logging.getLogger("asyncjobs")

#: the options of a job enqueued without any (frozen, so one instance serves every job)
_NO_OPTIONS = JobOptions()
#: errors that another attempt cannot fix
#: (a malformed ReplyTo, or one naming a variable this process does not allow, stays so)
_PERMANENT_ERRORS = (SerializationError, RegistrationError, ReplyToError)
UserResolver = Callable[[str], Awaitable[Any]] | Callable[[str], Any]
#: the first poll after a claim that found work (polls then back off up to poll_interval)
_FAST_POLL = 0.05
#: a claim made while every unnamed slot is busy looks for up to this many named-worker jobs
_NAMED_ONLY_CLAIM = 8
#: while a process drains a backlog claim after claim, its claims look at named workers' heads
#: at most this often (seconds): a look probes every named worker with a queued job, and 1 000
#: workers whose head waits (a retry's backoff, a parent) cost each claim 17 ms on PostgreSQL
_NAMED_LOOK_INTERVAL = 0.2
#: how often a shutdown names the stopped jobs it still waits for (see _until_stopped_jobs_end)
_STUCK_JOB_REPORT_EVERY = 10.0
#: the least time a database call of the runtime's loops waits for its answer (see _db_shield)
_LEAST_ANSWER_BOUND = 10.0
#: why jobs stop when this node's lease may have run out (see _lease_loop)
_LEASE_LAPSED = "may no longer be this node's (its lease was not renewed in time)"
#: the notification channel a dialect with notifications uses for "work arrived" / "cancel:<id>"
NOTIFY_CHANNEL = "asyncjobs"


@dataclass(slots=True, eq=False)
class _Running:
    """A job executing in this process."""

    job: BackgroundJob
    context: JobContext
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    #: why the scope was cancelled: "cancelled" (by a user) or "shutdown"
    stop_reason: str | None = None
    #: the length of the job's log text in the database, as far as this process knows (the
    #: offset a progress write appends at; see update_progress)
    logs_stored: int = 0
    #: the pending log text starts with lines a failed write took, perhaps stored all the same
    logs_in_doubt: bool = False
    #: a shutdown stopped waiting for its sync command's thread: the job keeps its lease
    abandoned: bool = False
    #: the job's code began (so its attempt counts, however it ends)
    began: bool = False
    #: the job claimed here again while this run, stopped when the lease lapsed, goes on: it
    #: starts when this run ends (see _start)
    next_attempt: BackgroundJob | None = None
    #: a transient job's failure, for run_command_async to raise, and whether its callback
    #: failed (its command succeeded)
    failure: BaseException | None = None
    callback_failed: bool = False


@types.coroutine
def _pass_up(value: Any) -> Generator[Any, Any, Any]:
    """Yield what an inner coroutine yielded (a future) to the event loop; return its reply."""
    return (yield value)


async def _in_context(context: contextvars.Context, coro: Coroutine[Any, Any, None]) -> None:
    """Drive ``coro`` to its end with each of its steps run inside ``context``, as a task of
    its own would run it: context variables a job sets stay its own, though jobs share runner
    tasks. Everything the event loop sends or throws in (cancellation included) is passed on to
    ``coro``, which decides what to do with it; whatever it raises propagates."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            if error is None:
                yielded = context.run(coro.send, value)
            else:
                thrown, error = error, None
                yielded = context.run(coro.throw, thrown)
                del thrown
        except StopIteration:
            return
        try:
            value = await _pass_up(yielded)
        except GeneratorExit:  # this coroutine is being closed: close the inner one too
            coro.close()
            raise
        except BaseException as exc:
            value, error = None, exc


class BackgroundJobs:
    """Durable background jobs in your own database. Use as ``async with jobs: ...``."""

    def __init__(
        self,
        dsn: str = "sqlite:///jobs.db",
        *,
        commands: Iterable[type[Any] | ModuleType] = (),
        services: Mapping[type[Any], Any] | None = None,
        default_retry_limit: int = 2,
        default_timeout: timedelta | None = timedelta(minutes=10),
        retry_delay: timedelta = timedelta(seconds=1),
        max_retry_delay: timedelta = timedelta(minutes=10),
        max_concurrency: int = 50,
        max_sync_threads: int = 20,
        poll_interval: timedelta = timedelta(seconds=1),
        lease_duration: timedelta = timedelta(seconds=30),
        shutdown_grace: timedelta = timedelta(seconds=30),
        retention_months: int | None = None,
        execute: bool = True,
        notifications: bool = True,
        user_resolver: UserResolver | None = None,
        reply_to_env: Iterable[str] = (),
        clock: Clock | None = None,
        schedule_refresh: timedelta = timedelta(seconds=5),
        dialect: Dialect | None = None,
        **dialect_settings: Any,
    ) -> None:
        check_int(
            "default_retry_limit", default_retry_limit, 0, 2**31 - 1, error=InvalidOptionsError
        )
        check_int("max_concurrency", max_concurrency, 1, 100_000)
        check_int("max_sync_threads", max_sync_threads, 1, 100_000)
        if retention_months is not None:
            check_int("retention_months", retention_months, 1, 12 * 1000)
        # Loops that run this often would keep a core busy (and a shutdown waiting on them).
        at_least_1ms = timedelta(milliseconds=1)
        for name, value, minimum in (
            ("poll_interval", poll_interval, at_least_1ms),
            ("schedule_refresh", schedule_refresh, at_least_1ms),
            ("shutdown_grace", shutdown_grace, timedelta(0)),
        ):
            check_duration(name, value, minimum)
        # A retry's due time is the database's clock plus the backoff: a year keeps it a date.
        for name, value in (("retry_delay", retry_delay), ("max_retry_delay", max_retry_delay)):
            check_duration(name, value, timedelta(0), timedelta(days=365))
        # A dead process's jobs wait out its lease; the databases add it to their clock.
        check_duration("lease_duration", lease_duration, at_least_1ms, timedelta(days=1))
        if default_timeout is not None:
            check_duration("default_timeout", default_timeout, timedelta(microseconds=1))
        if services is not None and not (
            isinstance(services, Mapping) and all(isinstance(key, type) for key in services)
        ):
            raise ConfigurationError(f"services must map types to instances, got {services!r}")
        if isinstance(reply_to_env, str) or not (
            isinstance(reply_to_env, Iterable)
            and all(isinstance(name, str) for name in reply_to_env)
        ):
            raise ConfigurationError(
                f"reply_to_env must be a collection of variable names, got {reply_to_env!r}"
            )
        check_bool("execute", execute)
        check_bool("notifications", notifications)
        if user_resolver is not None and not callable(user_resolver):
            raise ConfigurationError(
                f"user_resolver must be a function (async or not), got {user_resolver!r}"
            )
        if clock is not None and not (
            callable(getattr(clock, "now", None)) and callable(getattr(clock, "sleep_until", None))
        ):
            raise ConfigurationError(f"clock must have now() and sleep_until(), got {clock!r}")
        if dialect is not None and not isinstance(dialect, Dialect):
            raise ConfigurationError(f"dialect must be a Dialect, got {type(dialect).__name__}")
        if dialect is None and not isinstance(dsn, str):
            raise ConfigurationError(f"dsn must be a string, got {type(dsn).__name__}")
        self.dsn = dsn
        self.dialect = dialect or create_dialect(dsn, **dialect_settings)
        self.store = Store(self.dialect)
        self.registry = Registry()
        if isinstance(commands, type | ModuleType | str) or not isinstance(commands, Iterable):
            raise ConfigurationError(
                f"commands must be a list of command classes or modules, got {commands!r}"
            )
        for item in commands:
            if isinstance(item, ModuleType):
                self.registry.add_module(item)
            else:
                self.registry.add_command(item)
        self.services: dict[type[Any], Any] = dict(services or {})
        self.default_retry_limit = default_retry_limit
        self.default_timeout = default_timeout
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self.max_concurrency = max_concurrency
        self.poll_interval = poll_interval
        self.lease_duration = lease_duration
        #: how long a database call of the runtime's loops may go unanswered: past a lease,
        #: this node's jobs are taken back anyway (never under a floor, for a slow database)
        self._answer_bound = max(lease_duration.total_seconds(), _LEAST_ANSWER_BOUND)
        self.shutdown_grace = shutdown_grace
        self.retention_months = retention_months
        self.execute = execute
        self.notifications = notifications and self.dialect.capabilities.notifications
        self.user_resolver = user_resolver
        self.reply_to_env = frozenset(reply_to_env)
        self.clock: Clock = clock or DatabaseClock()
        self.schedule_refresh = schedule_refresh
        self.scheduler: Scheduler | None = None
        self.node_id = _new_node_id()

        self._max_sync_threads = max_sync_threads
        self._exit_stack: AsyncExitStack | None = None
        self._shutting_down = False
        self._tg: anyio.abc.TaskGroup | None = None
        self._running: dict[int, _Running] = {}
        self._running_unnamed = 0
        self._outcomes: list[Outcome] = []
        self._waiters: dict[int, anyio.Event] = {}
        self._saturated = False
        #: when a claim last looked at named workers' heads (anyio's clock)
        self._named_looked_at = -math.inf
        #: unnamed slots held by enqueues that start their jobs at once (see _start_at_once)
        self._reserved = 0
        self._poll_delay = poll_interval.total_seconds()
        #: when the next delayed job is due (anyio's clock), as the last claim reported
        self._next_due_at: float | None = None
        #: the dispatcher's sleep until work or a poll, while it sleeps
        self._sleep_scope: anyio.CancelScope | None = None
        self._transient_ids = -1
        self._durations: dict[tuple[str, str | None], tuple[float | None, float]] = {}
        self._started = False
        self._stats = {"claimed": 0, "completed": 0, "failed": 0, "retried": 0, "cancelled": 0}

    def _new_runtime_state(self) -> None:
        """Synchronisation objects belong to an event loop, so they are made on entry (the
        object itself may be built at import time, e.g. for ``--app module:attr``)."""
        # A node of its own each time: jobs an earlier run left leased to its node (abandoned
        # threads, a claim whose reply was lost) are taken back once that node's lease runs
        # out, which renewing it here would put off for good.
        self.node_id = _new_node_id()
        self._loops_scope = anyio.CancelScope()
        self._dispatch_scope = anyio.CancelScope()
        # Until a claim finds the queue drained, enqueued jobs wait their turn (no start at once).
        self._saturated = True
        self._wake = anyio.Event()
        self._wakes = 0  # wake-ups so far, so the finisher can tell one came during its claim
        self._found_work = False  # a claim found jobs since the dispatcher last slept
        #: the dispatcher left its claim to the finisher (see _leave_claim_to_finisher)
        self._claim_deferred = False
        self._flush_failing = False  # the last flush raised; the finisher retries after a pause
        #: log text of ended jobs that a failed progress write took (see _give_back)
        self._unsettled_logs: list[dict[str, Any]] = []
        # Started jobs wait here for a runner (see _runner), each with the context it starts in.
        self._ready: deque[tuple[_Running, contextvars.Context]] = deque()
        self._idle_runners: list[anyio.Event] = []
        self._runners_closed = False
        # A claim failed after perhaps committing: jobs may be leased to this node that it
        # never heard of; the dispatcher gives them back (see _requeue_unknown_jobs).
        self._unsure_claims = False
        self._requeuing_unknown = False  # ...and no claim starts while it does
        self._claims_settled = anyio.Event()  # set when no claim holds reserved slots
        self._flushing: list[Outcome] = []  # outcomes being written (their jobs still leased)
        self._check_cancels = anyio.Event()
        self._dispatch_stopped = anyio.Event()
        self._scheduler_scope = anyio.CancelScope()
        #: the shutdown has asked running jobs to stop (see _register_transient)
        self._stopping = False
        #: set while no transient job runs here
        self._transient_idle = anyio.Event()
        self._transient_idle.set()
        #: shields of database calls whose answer must be seen (see _db_shield), and the
        #: deadline a shutdown gives them
        self._shields: set[anyio.CancelScope] = set()
        self._shield_deadline = math.inf
        #: when the last renewal of this node's lease that got through was sent (event loop
        #: time), whether the lease may have run out since, and a signal of each renewal
        self._lease_renewed_at = -math.inf
        self._lease_lapsed = False
        self._lease_renewed = anyio.Event()
        # fast_acquire: an uncontended lock is taken without a trip through the event loop,
        # one of the few per job of a serial worker (held across awaits, so nothing starves).
        self._flush_lock = anyio.Lock(fast_acquire=True)
        self._idle = anyio.Event()
        self._idle.set()
        self._outcome_ready = anyio.Event()
        self._worker_locks: dict[str, anyio.Lock] = {}
        self._threads = SyncThreads(self._max_sync_threads)
        self._waiters = {}
        #: jobs whose sync command a shutdown left running in its thread (see _abandon_threads)
        self._abandoned: list[int] = []
        #: transient jobs running here, by their (negative) ids
        self._transient: dict[int, _Running] = {}

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self.execute:
            # A command whose service is missing would fail each of its jobs: say so now. (Not
            # refused: an application may add services later, e.g. the runtime itself.)
            for info in self.registry.commands.values():
                try:
                    constructor_args(info.cls, self.services)
                except RegistrationError as exc:
                    log.warning("%s; until then its jobs fail", exc)
        self._new_runtime_state()
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            await open_database(self.dialect)
            stack.push_async_callback(self._close_dialect)
            await self.store.migrate()
            await self.store.ensure_archives(utcnow())
            await self._sync_clock()
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            self._started = True
            if self.execute:
                await self._renew_lease()
                if self.notifications:
                    # A hint from other processes that work arrived; polling stays the backstop.
                    await stack.enter_async_context(
                        self.dialect.listen(NOTIFY_CHANNEL, self._on_notification)
                    )
                stack.push_async_callback(self._shutdown)
                self.scheduler = Scheduler(
                    self.store,
                    self.clock,
                    sync_clock=self._sync_clock,
                    refresh=self.schedule_refresh,
                    make_job=self._task_job,
                    prepare_transient=self._task_transient,
                    on_enqueued=self._wake_dispatcher,
                )
                self._tg.start_soon(self._loops)
        except BaseException:
            await stack.__aexit__(None, None, None)
            raise
        self._exit_stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        stack, self._exit_stack = self._exit_stack, None
        if stack is not None:
            # Jobs still running in the shutdown's grace may enqueue (their jobs wait in the
            # queue: none starts here now) and query until the database closes; no transient
            # job starts.
            self._shutting_down = True
            try:
                # The body's own exception is not handed to our task group, which would wrap
                # it in an ExceptionGroup: it propagates as raised, after a normal shutdown.
                await stack.__aexit__(None, None, None)
            finally:
                self._started = False
                self._shutting_down = False
        return None

    def _on_notification(self, payload: str) -> None:
        if payload.startswith("cancel:"):
            self._check_cancels.set()
        self._wake_dispatcher()

    async def _close_dialect(self) -> None:
        self._started = False
        with anyio.CancelScope(shield=True):
            await self.dialect.close()

    async def _shutdown(self) -> None:
        """Stop claiming, let running jobs finish within the grace period, then cancel and
        requeue the rest, write every outcome, and release the node."""
        with anyio.CancelScope(shield=True):
            # How long the database gets to answer, at each step that waits for it.
            db_bound = max(self.shutdown_grace.total_seconds(), 5.0)
            self._scheduler_scope.cancel()  # no occurrence fires (nor starts a job) from now
            self._dispatch_scope.cancel()
            self._bound_db_waits(db_bound)  # a claim in flight
            await self._dispatch_stopped.wait()
            # An enqueue may be inserting jobs that start here (their slots are reserved):
            # they must start, to be handed back with the others, not be left Started.
            while self._reserved:
                self._claims_settled = anyio.Event()
                await self._claims_settled.wait()
            self._shield_deadline = math.inf  # the writes of the jobs' ends have their turn
            with anyio.move_on_after(self.shutdown_grace.total_seconds()):
                await self._all_idle()
            self._stopping = True  # a transient job that comes now is stopped as it comes
            for running in [*self._running.values(), *self._transient.values()]:
                self._stop_for_shutdown(running)
            # A sync command sees the request when it looks; one that does not, in time, is
            # left to its thread (async jobs end at their next await).
            with anyio.move_on_after(max(self.shutdown_grace.total_seconds(), 1.0)):
                await self._all_idle()
            self._abandon_threads()
            await self._until_stopped_jobs_end()
            # Bounded: with the database gone for good (or not answering: a frozen host, a
            # network that drops everything), the unwritten outcomes' jobs stay leased to
            # this node and are retried elsewhere once the lease runs out.
            self._bound_db_waits(db_bound)
            with anyio.move_on_after(db_bound):
                await self._flush_outcomes()
            if self._outcomes:
                log.error("could not record %d finished jobs before exiting", len(self._outcomes))
            self._close_runners()
            self._threads.close()
            self._loops_scope.cancel()
            if self._abandoned:
                # Their jobs stay leased to this node, which is not released: they run again
                # elsewhere once its lease lapses, as after a crash, and not while the
                # threads surely still run.
                return
            if self._unsure_claims:
                # A claim whose reply was lost may have left jobs Started under this node:
                # given back now, unused; released with the node, they would wait out its
                # lease and lose an attempt they never had.
                try:
                    with anyio.fail_after(db_bound):
                        await self._requeue_unknown_jobs()
                except Exception as exc:
                    log.warning(
                        "could not give back the jobs of a claim that failed (%r): they are "
                        "taken back once this node's lease runs out", exc,
                    )  # fmt: skip
                    return
            try:
                with anyio.fail_after(db_bound):
                    await self.store.delete_node(self.node_id)
            except Exception as exc:  # its lease lapses; other processes then forget it
                log.warning("could not release node %s: %r", self.node_id, exc)

    async def _until_stopped_jobs_end(self) -> None:
        """Shutdown: until the jobs it stopped have ended. An async command that catches its
        cancellation and carries on holds the shutdown (ending it would orphan the task), so
        the jobs still running are named in the log, again and again while they run."""
        waited = 0.0
        while True:
            with anyio.move_on_after(_STUCK_JOB_REPORT_EVERY):
                await self._all_idle()
                return
            waited += _STUCK_JOB_REPORT_EVERY
            for running in [*self._running.values(), *self._transient.values()]:
                log.error(
                    "job %s (%s) has not ended %.0f s after the shutdown stopped it (does its "
                    "command catch its cancellation?): the shutdown waits for it",
                    running.job.id,
                    running.job.command or running.job.request,
                    waited,
                )

    async def _all_idle(self) -> None:
        """Until no job runs here, stored or transient."""
        while not (self._idle.is_set() and self._transient_idle.is_set()):
            await self._idle.wait()
            await self._transient_idle.wait()

    @staticmethod
    def _stop_for_shutdown(running: _Running) -> None:
        running.stop_reason = running.stop_reason or "shutdown"
        running.context.cancel_event.set()
        running.scope.cancel()

    def _abandon_threads(self) -> None:
        """Shutdown: stop waiting for the sync commands that did not return when asked to."""
        for running in [*self._running.values(), *self._transient.values()]:
            if running.context.thread_wait is None:
                continue
            running.abandoned = True
            running.context.thread_wait.cancel()
            if running.job.id > 0:  # a transient job has nothing stored to run again
                self._abandoned.append(running.job.id)
            log.error(
                "job %s (%s) did not stop when asked to: its thread is left running%s",
                running.job.id,
                running.job.command or running.job.request,
                "; the job runs again once this node's lease lapses" if running.job.id > 0 else "",
            )

    @contextmanager
    def _db_shield(self) -> Iterator[None]:
        """Shield a database call whose answer must be seen (a claim's jobs must start, a
        flush's report be read): cancellation from outside waits for it. It has a deadline,
        which a shutdown brings forward (see _bound_db_waits): a call that gets no answer by
        then, from a database that stopped answering without closing the connection (its
        host gone), raises NoAnswerError, and is retried as when a connection drops."""
        deadline = min(self._shield_deadline, anyio.current_time() + self._answer_bound)
        scope = anyio.CancelScope(shield=True, deadline=deadline)
        self._shields.add(scope)
        try:
            with scope:
                yield
        finally:
            self._shields.discard(scope)
        if scope.cancelled_caught:
            raise NoAnswerError("the database did not answer in time")

    def _bound_db_waits(self, seconds: float) -> None:
        """Shutdown: shielded database calls, those running and those to come, end within
        ``seconds`` (answered or not)."""
        self._shield_deadline = anyio.current_time() + seconds
        for scope in self._shields:
            scope.deadline = min(scope.deadline, self._shield_deadline)

    def _is_disconnect(self, exc: BaseException) -> bool:
        """The database is unreachable (not refusing this write): retrying it alone will not
        help, and its outcome must not be taken for unrecordable."""
        return isinstance(exc, NoAnswerError) or self.dialect.is_disconnect(exc)

    async def _loops(self) -> None:
        with self._loops_scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._dispatch_loop)
                tg.start_soon(self._finish_loop)
                tg.start_soon(self._heartbeat_loop)
                tg.start_soon(self._lease_loop)
                tg.start_soon(self._progress_loop)
                tg.start_soon(self._maintenance_loop)
                if self.scheduler is not None:
                    tg.start_soon(self._run_scheduler, self.scheduler)

    async def _sync_clock(self) -> None:
        """Set the scheduler's clock to the database's (unless a clock was given)."""
        if isinstance(self.clock, DatabaseClock):
            await self.clock.sync(self.store.database_time)

    async def _run_scheduler(self, scheduler: Scheduler) -> None:
        with self._scheduler_scope:
            await scheduler.run()

    def statistics(self) -> dict[str, int]:
        """Counters of this process: jobs claimed, completed, failed, retried, cancelled."""
        return {**self._stats, "running": len(self._running)}

    # -- registration ---------------------------------------------------------------------

    def register_command(self, command: type[Any]) -> None:
        self.registry.add_command(command)

    def register_api(
        self, request_type: type[Any], handler: Callable[[Any], Awaitable[Any]]
    ) -> None:
        """Run ``handler(request)`` for jobs enqueued with ``enqueue_api(request)``."""
        self.registry.add_api(request_type, handler)

    def api(
        self, request_type: type[Any]
    ) -> Callable[[Callable[[Any], Awaitable[Any]]], Callable[[Any], Awaitable[Any]]]:
        """Decorator form of :meth:`register_api`."""

        def decorate(handler: Callable[[Any], Awaitable[Any]]) -> Callable[[Any], Awaitable[Any]]:
            self.register_api(request_type, handler)
            return handler

        return decorate

    # -- enqueue --------------------------------------------------------------------------

    def _job_template(
        self,
        request_type: str,
        command: str | None,
        options: JobOptions | None,
        class_worker: str | None,
        created_date: datetime | None = None,
    ) -> NewJob:
        """What every job of one command (or API) and one options object shares; _with_request
        completes a copy per request. (enqueue_many builds this once per distinct pair.)"""
        options = options or _NO_OPTIONS
        if not isinstance(options, JobOptions):
            raise InvalidOptionsError(f"options must be JobOptions, got {type(options).__name__}")
        timeout = options.timeout or self.default_timeout
        return NewJob(
            ref_id="",
            request_type=request_type,
            command=command,
            request="",
            request_body="",
            retry_limit=self.default_retry_limit
            if options.retry_limit is None
            else options.retry_limit,
            created_date=created_date or utcnow(),
            # A dependent's parent is the job it depends on, unless the options name another.
            parent_id=options.depends_on if options.parent_id is None else options.parent_id,
            worker=options.worker or class_worker,
            tag=options.tag,
            batch_id=options.batch_id,
            callback=options.callback,
            depends_on=options.depends_on,
            run_after=options.run_after,
            created_by=options.created_by,
            user_id=options.user_id,
            timeout_secs=None if timeout is None else timeout.total_seconds(),
            reply_to=options.reply_to,
            args=None if options.args is None else dict(options.args),
            meta=None if options.meta is None else dict(options.meta),
            priority=options.priority,
        )

    @staticmethod
    def _with_request(
        template: NewJob, request: Any, request_cls: Any, ref_id: str | None, what: str
    ) -> NewJob:
        """A job from its template and its request, checked and serialized now: bad input
        fails the enqueue call, before anything is stored."""
        if request_cls is not None:
            if request is None:
                raise SerializationError(f"{what} needs a request of type {type_name(request_cls)}")
            check_encodable(request, request_cls)
        elif request is not None:
            raise SerializationError(f"{what} takes no request, got a {type(request).__name__}")
        body = encode(request)
        if request_cls is not None:
            check_loads(body, request_cls)
        return msgspec.structs.replace(
            template,
            ref_id=ref_id or new_ref_id(),
            request=type_name(type(request)) if request is not None else "None",
            request_body=body,
        )

    def _command_job(
        self,
        command: type[Any] | str,
        request: Any,
        options: JobOptions | None,
        created_date: datetime | None = None,
    ) -> NewJob:
        info = self.registry.command(command)
        if options is not None and not isinstance(options, JobOptions):
            raise InvalidOptionsError(f"options must be JobOptions, got {type(options).__name__}")
        if options is not None and options.callback is not None:
            self._check_callback(options.callback, info.name, result_type(info.cls))
        template = self._job_template("CMD", info.name, options, info.worker, created_date)
        ref_id = options.ref_id if options is not None else None
        return self._with_request(template, request, info.request_type, ref_id, info.name)

    def _check_callback(self, callback: str, command: str, result: Any) -> None:
        """Fail now, not after the job ran: an unknown callback, or one that takes a request
        the command's result cannot be."""
        wanted = self.registry.command(callback).request_type
        if wanted is None or result is None:  # takes nothing, or cannot be told
            return
        if result is NO_RESULT:
            raise InvalidOptionsError(
                f"callback {callback} takes a request of type {type_name(wanted)}, but {command} "
                "returns nothing"
            )
        if isinstance(result, type) and isinstance(wanted, type) and not issubclass(result, wanted):
            raise InvalidOptionsError(
                f"callback {callback} takes a request of type {type_name(wanted)}, but {command} "
                f"returns a {type_name(result)}"
            )

    def _api_job(self, request: Any, options: JobOptions | None) -> NewJob:
        if options is not None and not isinstance(options, JobOptions):
            raise InvalidOptionsError(f"options must be JobOptions, got {type(options).__name__}")
        if options is not None and options.callback is not None:
            self._check_callback(options.callback, "an API", None)
        api = self.registry.api(type_name(type(request)))
        template = self._job_template("API", None, options, None)
        ref_id = options.ref_id if options is not None else None
        return self._with_request(template, request, api.request_type, ref_id, "this API")

    async def enqueue_command(
        self,
        command: type[Any] | str,
        request: Any = None,
        options: JobOptions | None = None,
        *,
        connection: object | None = None,
    ) -> JobRef:
        """Store a job that runs ``command`` with ``request``; returns its id and ref id.

        With ``connection`` (the application's own driver connection inside a transaction),
        the job exists only if that transaction commits.
        """
        return (await self._enqueue([self._command_job(command, request, options)], connection))[0]

    async def enqueue_api(
        self, request: Any, options: JobOptions | None = None, *, connection: object | None = None
    ) -> JobRef:
        """Store a job that runs the API handler registered for ``type(request)``."""
        return (await self._enqueue([self._api_job(request, options)], connection))[0]

    async def enqueue_many(
        self,
        items: Iterable[
            tuple[type[Any] | str, Any] | tuple[type[Any] | str, Any, JobOptions | None]
        ],
        *,
        connection: object | None = None,
    ) -> list[JobRef]:
        """Enqueue many command jobs in one transaction and one round trip."""
        new_jobs = []
        now = utcnow()  # one transaction, one creation time
        # Jobs of one command and one options object share a template, made once: what is
        # left per job is its request (checked, serialized) and its ref id.
        templates: dict[tuple[Any, int], tuple[NewJob, Any, JobOptions | None]] = {}
        for item in items:
            if not isinstance(item, tuple) or not 2 <= len(item) <= 3:
                raise InvalidOptionsError(
                    f"enqueue_many takes (command, request) or (command, request, options) "
                    f"tuples, got {item!r}"
                )
            command, request, *rest = item
            options = rest[0] if rest else None
            key = (command, id(options))  # the options object is kept alive in the value
            known = templates.get(key)
            if known is None:
                first = self._command_job(command, request, options, now)
                info = self.registry.command(command)
                templates[key] = (first, info.request_type, options)
                new_jobs.append(first)
                continue
            template, request_cls, options = known
            ref_id = options.ref_id if options is not None else None
            what = template.command or ""
            new_jobs.append(self._with_request(template, request, request_cls, ref_id, what))
        return await self._enqueue(new_jobs, connection)

    async def _enqueue(self, new_jobs: Sequence[NewJob], connection: object | None) -> list[JobRef]:
        if not new_jobs:
            return []
        self._require_started()
        if connection is None and self._can_start_at_once(new_jobs):
            return await self._start_at_once(new_jobs)
        adopted = None if connection is None else self.dialect.adopt(connection)
        ids = await self.store.enqueue(new_jobs, adopted)
        if self.execute and connection is None:
            self._wake_dispatcher()
        return [JobRef(job_id, ref_id) for job_id, ref_id in ids]

    def _can_start_at_once(self, new_jobs: Sequence[NewJob]) -> bool:
        """Whether jobs enqueued here start here at once: this process executes jobs and has
        room for them, they are runnable now (no worker, dependency or delay), and nothing
        older waits (the last claim did not fill up, so it found the queue drained)."""
        return (
            self.execute
            and not self._saturated
            and not self._dispatch_scope.cancel_called
            and not self._requeuing_unknown
            and not self._lease_lapsed
            and self.max_concurrency - self._running_unnamed - self._reserved >= len(new_jobs)
            and all(
                j.worker is None and j.depends_on is None and j.run_after is None for j in new_jobs
            )
        )

    async def _start_at_once(self, new_jobs: Sequence[NewJob]) -> list[JobRef]:
        """Insert the jobs already claimed by this node (one round trip) and start them: no
        claim, no wake-up of the dispatcher."""
        self._reserved += len(new_jobs)
        try:
            # Shielded: jobs a committed insert claimed for this node must be started.
            with self._db_shield():
                jobs = await self.store.enqueue_started(new_jobs, self.node_id)
        except Exception:
            self._claim_failed()
            raise
        finally:
            self._release_slots(len(new_jobs))
        for job in jobs:
            self._start(job)
        return [JobRef(job.id, job.ref_id) for job in jobs]

    def _require_started(self) -> None:
        if not self._started:
            if self._shutting_down:
                raise ConfigurationError("the jobs runtime is shutting down")
            raise ConfigurationError("use `async with jobs:` before enqueueing or querying jobs")

    def _require_running(self) -> None:
        """Transient jobs run in this process: none starts once it is shutting down."""
        if self._shutting_down:
            raise ConfigurationError("the jobs runtime is shutting down")
        self._require_started()

    # -- queries and actions --------------------------------------------------------------

    async def get_job(self, job_id: int) -> JobResult | None:
        self._require_started()
        if not _storable_id(job_id):
            return None
        return await self.store.get_job(job_id)

    async def get_job_by_ref_id(self, ref_id: str) -> JobResult | None:
        self._require_started()
        check_text("ref_id", ref_id)
        if ref_id.endswith(" "):  # never stored (see check_name); MySQL would find "x" for "x "
            return None
        return await self.store.get_job_by_ref_id(ref_id)

    async def wait_for_job(self, job_id: int) -> JobResult:
        """Return once the job is Completed, Failed or Cancelled (here or in any process).
        Bound the wait with ``anyio.fail_after`` if needed."""
        self._require_started()
        if job_id in self._transient:
            raise JobNotFoundError(
                f"job {job_id} is transient (run_command): nothing is stored to wait for; "
                "watch the job run_command returned, or await run_command_async"
            )
        if not _storable_id(job_id):
            raise JobNotFoundError(f"no job with id {job_id}")
        while True:
            self._require_started()  # (the runtime may have closed while this waited)
            event = self._waiters.setdefault(job_id, anyio.Event())
            try:
                result = await self.store.get_job(job_id)
            except BaseException:
                self._waiters.pop(job_id, None)  # (another waiter makes its own again)
                raise
            if result is None:
                self._waiters.pop(job_id, None)
                raise JobNotFoundError(f"no job with id {job_id}")
            if result.summary.state.is_final:
                self._waiters.pop(job_id, None)
                return result
            # Finished here: the event fires at once; elsewhere: the next poll sees it.
            with anyio.move_on_after(self.poll_interval.total_seconds()):
                await event.wait()

    async def cancel_job(self, job_id: int) -> bool:
        """Cancel a queued job (it never starts) or a running one (in any process), or a
        transient job running here."""
        self._require_started()
        transient = self._transient.get(job_id)
        if transient is not None:
            self._stop(transient)
            return True
        if not _storable_id(job_id):
            return False
        return await self._cancel([job_id], f"job {job_id} was cancelled") > 0

    async def cancel_jobs(self, *, state: JobState | None = None, worker: str | None = None) -> int:
        """Cancel every active job in ``state`` and/or on ``worker``; returns how many."""
        self._require_started()
        if state is not None and not isinstance(state, JobState):
            try:
                state = JobState(state)
            except ValueError:
                states = ", ".join(str(s) for s in JobState)
                raise InvalidOptionsError(f"state must be one of {states}, got {state!r}") from None
        if worker is not None:
            check_name("worker", worker)
        ids = await self.store.select_job_ids(state, worker)
        return await self._cancel(ids, "cancelled in bulk") if ids else 0

    async def _cancel(self, ids: Sequence[int], reason: str) -> int:
        self._require_started()
        final, running = await self.store.cancel(ids, reason)
        self._stats["cancelled"] += len(final)
        self._resolve(final)
        stopped = 0
        for job_id, node in running:
            if node == self.node_id:
                # A job here whose command has returned (its outcome not written yet) ends
                # as it ended: not counted as cancelled.
                stopped += self._cancel_local(job_id)
            else:
                stopped += 1
                if self.notifications:
                    await self.dialect.notify(NOTIFY_CHANNEL, f"cancel:{job_id}")
        return len(final) + stopped

    def _stop_unleased(self, job_ids: Sequence[int], why: str) -> None:
        """Jobs running here that are no longer (or may no longer be) leased to this node: it
        missed its lease (its event loop blocked, or the database unreachable from here
        alone) and another process took them back, or may have, to run again. They stop
        here; an outcome is dropped unless the job is still this node's (then it is
        requeued)."""
        for job_id in job_ids:
            running = self._running.get(job_id)
            if running is not None and running.stop_reason is None:
                log.warning("job %s %s; stopped here", job_id, why)
                running.stop_reason = "taken over"
                running.context.cancel_event.set()
                running.scope.cancel()

    def _cancel_local(self, job_id: int) -> bool:
        """Stop a job running here; whether the request cancels it. One whose command has
        returned, its outcome not written yet, ends as it ended, but for a retry: the request
        cancels that (see cancel_requested_among)."""
        running = self._running.get(job_id)
        if running is not None:
            self._stop(running)
            return True
        pending = [o for o in (*self._outcomes, *self._flushing) if o.job.id == job_id]
        return not pending or pending[0].state is JobState.QUEUED

    @staticmethod
    def _stop(running: _Running) -> None:
        if running.stop_reason is None:
            running.stop_reason = "cancelled"
            running.context.cancel_event.set()
            running.scope.cancel()

    async def requeue_failed_job(self, job_id: int) -> None:
        """Bring a failed or cancelled job back to the queue with the same id."""
        self._require_started()
        if not _storable_id(job_id):
            raise JobNotFoundError(f"no job with id {job_id}")
        await self.store.requeue_failed(job_id)
        self._waiters.pop(job_id, None)
        self._wake_dispatcher()

    # -- recurring tasks ------------------------------------------------------------------

    async def recurring_command(
        self,
        command: type[Any] | str,
        schedule: Schedule,
        request: Any = None,
        *,
        name: str | None = None,
        options: JobOptions | None = None,
        skip_if_running: bool = False,
    ) -> None:
        """Run ``command`` on ``schedule``. Registering the same name again updates the task
        and keeps its history. ``skip_if_running`` skips an occurrence while the previous
        run is still going."""
        new = self._command_job(command, request, options)
        await self._register_task(
            (new.command or "") if name is None else name, schedule, new, options, skip_if_running
        )

    async def recurring_api(
        self,
        schedule: Schedule,
        request: Any,
        *,
        name: str | None = None,
        options: JobOptions | None = None,
        skip_if_running: bool = False,
    ) -> None:
        """Run the API registered for ``type(request)`` on ``schedule``."""
        new = self._api_job(request, options)
        await self._register_task(
            new.request if name is None else name, schedule, new, options, skip_if_running
        )

    async def _register_task(
        self,
        name: str,
        schedule: Schedule,
        new: NewJob,
        options: JobOptions | None,
        skip_if_running: bool,
    ) -> None:
        self._require_started()
        if not isinstance(schedule, Schedule):
            raise ConfigurationError(f"schedule must be a Schedule, got {type(schedule).__name__}")
        try:
            check_name("name", name)
        except InvalidOptionsError as exc:
            raise ConfigurationError(f"a recurring task needs a name: {exc}") from None
        if options is not None:
            # Each occurrence is a new job, due when the schedule says: one ref_id, delay or
            # parent to wait for does not fit them all, and would be dropped unseen.
            once_only = [
                field for field in ("ref_id", "run_after", "depends_on")
                if getattr(options, field) is not None
            ]  # fmt: skip
            if once_only:
                raise InvalidOptionsError(
                    f"a recurring task cannot take {' or '.join(once_only)}: each occurrence "
                    "is a new job, due when its schedule says"
                )
        stored_options = (options or JobOptions()).to_dict()
        if skip_if_running:
            stored_options["skip_if_running"] = True
        next_run = schedule.next_after(self.clock.now())
        if next_run is None:
            raise ConfigurationError(f"schedule {schedule!r} never comes (e.g. February 31st)")
        try:
            options_text = json.dumps(stored_options)
        except (TypeError, ValueError) as exc:
            raise InvalidOptionsError(f"a recurring task's options must be JSON: {exc}") from None
        await self.store.upsert_task(
            {
                "name": name, "schedule": schedule.to_text(), "request_type": new.request_type,
                "command": new.command, "request": new.request, "request_body": new.request_body,
                "options": options_text,
                "next_run": next_run,
            }
        )  # fmt: skip
        if self.scheduler is not None:
            self.scheduler.notify_changed()

    async def delete_recurring_task(self, name: str) -> bool:
        """Stop and forget a recurring task; returns whether it existed."""
        self._require_started()
        try:
            check_name("name", name)
        except InvalidOptionsError as exc:
            raise ConfigurationError(f"no recurring task could have that name: {exc}") from None
        return await self.store.delete_task(name)

    async def scheduled_tasks(self) -> list[ScheduledTask]:
        """Every recurring task with its schedule, last run, last job and next run (but those
        this version cannot read, which are logged)."""
        self._require_started()
        tasks = []
        for row in await self.store.list_tasks():
            try:
                tasks.append(row_to_task(row))
            except AsyncJobsError as exc:
                log.warning("recurring task %s cannot be read: %r", row["name"], exc)
        return tasks

    async def run_scheduled_task(self, name: str) -> JobRef | None:
        """Run a recurring task now, outside its schedule (its next run stays as it is).
        Returns the job, or None for a task that runs transiently (``run_command``)."""
        self._require_started()
        rows = [row for row in await self.store.list_tasks() if row["name"] == name]
        if not rows:
            raise JobNotFoundError(f"no recurring task named {name!r}")
        task = row_to_task(rows[0])
        if task.options.run_command:
            self._require_running()
            self._task_transient(task, self.clock.now())()
            return None
        new = self._task_job(task, self.clock.now())
        job_id = await self.store.run_task_now(name, new)
        self._wake_dispatcher()
        return JobRef(job_id, new.ref_id)

    def _task_job(self, task: ScheduledTask, fire_time: datetime) -> NewJob:
        # The class's named worker as the class says now (the task may be older than that).
        known = self.registry.commands.get(task.command) if task.command else None
        return task_job(
            task, fire_time, self.default_retry_limit, self.default_timeout,
            class_worker=None if known is None else known.worker,
        )  # fmt: skip

    def _task_transient(self, task: ScheduledTask, fire_time: datetime) -> Callable[[], None]:
        """One occurrence of a transient task, ready to start: raises (RegistrationError,
        SerializationError) if this process cannot run it."""
        if task.command is not None:
            info = self.registry.command(task.command)
            request = None
            if info.request_type is not None:
                request = decode(task.request_body, info.request_type)
            new = self._command_job(info.name, request, task.options)
        else:
            request = decode(task.request_body, self.registry.api(task.request).request_type)
            new = self._api_job(request, task.options)
        # Which task and occurrence, as a stored occurrence's meta says.
        new.meta = {
            **(new.meta or {}), "scheduled_task": task.name, "fire_time": fire_time.isoformat()
        }  # fmt: skip
        job = self._transient_job(new, request)
        tg = self._started_group()
        scheduler = self.scheduler

        async def run() -> None:
            if scheduler is not None:
                scheduler.transient_started(task.name)
            try:
                await self._run_transient(self._register_transient(job))
            finally:
                if scheduler is not None:
                    scheduler.transient_finished(task.name)

        def start() -> None:
            tg.start_soon(run)

        return start

    # -- transient jobs -------------------------------------------------------------------

    def _started_group(self) -> anyio.abc.TaskGroup:
        if self._tg is None:
            raise ConfigurationError("use `async with jobs:` before running commands")
        return self._tg

    def _transient_job(self, new: NewJob, request: Any) -> BackgroundJob:
        """The in-memory job (with an id below zero) that runs what ``new`` would store."""
        if not self.execute:
            raise ConfigurationError(
                "this process does not execute jobs (execute=False): enqueue the job instead"
            )
        if new.run_after is not None or new.depends_on is not None:
            raise InvalidOptionsError(
                "a transient job runs now and is not stored: run_after and depends_on need "
                "an enqueued job"
            )
        self._transient_ids -= 1
        job = BackgroundJob(
            id=self._transient_ids,
            ref_id=new.ref_id,
            parent_id=new.parent_id,
            request_type=new.request_type,
            request=new.request,
            request_body=new.request_body,
            state=JobState.QUEUED,
            created_date=new.created_date,
            retry_limit=new.retry_limit,
            command=new.command,
            worker=new.worker,
            tag=new.tag,
            batch_id=new.batch_id,
            callback=new.callback,
            created_by=new.created_by,
            user_id=new.user_id,
            timeout_secs=new.timeout_secs,
            reply_to=new.reply_to,
            args=None if new.args is None else dict(new.args),
            meta=None if new.meta is None else dict(new.meta),
            priority=new.priority,
        )
        job.request_object = request
        return job

    async def run_command(
        self, command: type[Any] | str, request: Any = None, options: JobOptions | None = None
    ) -> BackgroundJob:
        """Run a command now, through its named worker, without writing to the database.
        Returns the in-memory job at once; it is updated as it runs. A transient job runs
        once (nothing is stored to retry it from), within its timeout, then its callback."""
        self._require_running()
        job = self._transient_job(self._command_job(command, request, options), request)
        group = self._started_group()
        # Registered now, so that cancel_job(job.id) reaches it from the moment it returns.
        group.start_soon(self._run_transient, self._register_transient(job))
        return job

    async def run_command_async(
        self, command: type[Any] | str, request: Any = None, options: JobOptions | None = None
    ) -> Any:
        """Run a command now without the database and return its result (or raise its error)."""
        self._require_running()
        job = self._transient_job(self._command_job(command, request, options), request)
        running_here = _current.get()
        if (
            job.worker is not None
            and running_here is not None
            and running_here.job.worker == job.worker
        ):
            raise InvalidOptionsError(
                f"a job on worker {job.worker!r} cannot wait for a transient job on the same "
                "worker: it runs only after this one ends"
            )
        # In a copy of the caller's context, as a task of its own would run it: the job it
        # becomes while it runs (current_job(), job_logger()) is not left behind as the
        # caller's.
        running = self._register_transient(job)
        await _in_context(contextvars.copy_context(), self._run_transient(running))
        if job.state is JobState.COMPLETED:
            return job.result
        if job.state is JobState.CANCELLED:
            raise JobCancelledError(f"transient job {job.ref_id} was cancelled")
        error = running.failure
        message = job.error.message if job.error else repr(error)
        if running.callback_failed:
            # The command succeeded: its caller must not take the callback's error for its.
            raise JobFailedError(message) from error
        if isinstance(error, Exception):
            raise error
        # (not for the caller to stop on: SystemExit, ...)
        raise JobFailedError(message) from error

    def _register_transient(self, job: BackgroundJob) -> _Running:
        running = _Running(job, JobContext(job, reply_to_env=self.reply_to_env))
        self._transient[job.id] = running
        if self._transient_idle.is_set():
            self._transient_idle = anyio.Event()
        if self._stopping:  # too late to start: it ends Cancelled, as the others were
            self._stop_for_shutdown(running)
        return running

    async def _run_transient(self, running: _Running) -> None:
        try:
            await self._run_transient_locked(running)
        finally:
            job = running.job
            if not job.state.is_final:
                # Cancelled from outside (its caller's scope, or the runtime's, left without
                # a graceful stop): it did not run to its end.
                job.state, job.completed_date = JobState.CANCELLED, utcnow()
            del self._transient[running.job.id]
            if not self._transient:
                self._transient_idle.set()

    async def _run_transient_locked(self, running: _Running) -> None:
        job, context, scope = running.job, running.context, running.scope
        timeout = _timeout_of(job)
        failure: BaseException | None = None
        started = time.monotonic()
        # A cancel reaches a job still waiting for its named worker too; its timeout starts
        # once the worker is its own.
        with scope:
            async with self._worker_lock(job.worker):
                await anyio.lowlevel.checkpoint_if_cancelled()  # cancelled before it started
                job.state = JobState.STARTED
                job.attempts = 1
                job.started_date = utcnow()
                started = time.monotonic()
                scope.deadline = anyio.current_time() + timeout
                try:
                    await self._prepare(job)
                    job.result = await self._invoke(job, context)
                    if job.callback:
                        job.state = JobState.EXECUTED
                        # The callback within the job's timeout too, from its start.
                        scope.deadline = anyio.current_time() + timeout
                        callback = self.registry.command(job.callback)
                        await self._call(callback, _callback_args(callback, job.result))
                except BaseException as exc:
                    if not _raised_by_the_job(exc):
                        raise
                    failure = exc
        if running.stop_reason is not None:  # asked to stop, even if a sync command returned
            job.state = JobState.CANCELLED
        elif scope.cancel_called:
            failure = TimeoutError(f"job timed out after {timeout:g}s")
        if job.state is JobState.CANCELLED:
            pass
        elif failure is not None:
            error = _job_error(failure)
            if job.state is JobState.EXECUTED:
                message = f"callback {job.callback} failed: {error.message}"
                error = JobError(message, error.type, error.traceback)
                running.callback_failed = True
            job.state, job.error = JobState.FAILED, error
            running.failure = failure
            # Stored jobs' failures are logged as they are recorded; this one is not recorded.
            log.warning("transient job %s (%s) failed: %s", job.ref_id, job.command, error.message)
        else:
            job.state = JobState.COMPLETED
            job.progress = 1.0
        job.completed_date = utcnow()
        job.duration_ms = int((time.monotonic() - started) * 1000)

    def _worker_lock(self, worker: str | None) -> anyio.Lock | _NoLock:
        if worker is None:
            return _NO_LOCK
        lock = self._worker_locks.get(worker)
        if lock is None:
            lock = self._worker_locks[worker] = anyio.Lock(fast_acquire=True)
        return lock

    # -- the dispatcher -------------------------------------------------------------------

    def _wake_dispatcher(self) -> None:
        self._wakes += 1
        self._wake.set()

    async def _dispatch_loop(self) -> None:
        failures = 0
        try:
            await self._dispatch(failures)
        finally:
            self._dispatch_stopped.set()

    async def _dispatch(self, failures: int) -> None:
        draining = False  # the last claim filled its limit, and the loop went on at once
        with self._dispatch_scope:
            while True:
                self._wake = anyio.Event()
                # Only the claim right after it continues the drain (not one after a sleep).
                continuing, draining = draining, False
                if self._unsure_claims:
                    try:
                        await self._requeue_unknown_jobs()
                    except Exception as exc:
                        failures += 1
                        await self._pause_after_error("taking back unknown jobs", exc, failures)
                        continue
                if self._leave_claim_to_finisher():
                    self._claim_deferred = True
                    await self._sleep_until_work()
                    continue
                if self._lease_lapsed:  # woken once the lease is renewed
                    await self._sleep_until_work()
                    continue
                limit, named_only = self._claim_size()
                if named_only and self._found_work:
                    # Every slot is busy and the finisher keeps claiming as slots free up
                    # (named workers' jobs included, looked at every _NAMED_LOOK_INTERVAL at
                    # least): a claim here would find nothing more.
                    await self._sleep_until_work()
                    continue
                skip_named = not named_only and self._skip_named(continuing)
                self._reserved += limit
                try:
                    # Shielded: jobs a committed claim returned must be started, not dropped.
                    with self._db_shield():
                        claim = await self.store.claim(
                            self.node_id, limit, named_only=named_only, skip_named=skip_named
                        )
                    failures = 0
                except Exception as exc:
                    self._claim_failed()
                    failures += 1
                    await self._pause_after_error("claiming jobs", exc, failures)
                    continue
                finally:
                    self._release_slots(limit)
                self._start_claimed(claim, limit, named_only)
                if not named_only and (self._saturated or skip_named):
                    # A claim that left named workers out and came back short looks at them
                    # at once, rather than after a sleep.
                    draining = self._saturated
                    await anyio.lowlevel.checkpoint()
                    continue
                await self._sleep_until_work()

    def _leave_claim_to_finisher(self) -> bool:
        """With a single writer (SQLite), a claim of its own would queue behind the finisher's
        transaction and commit separately; the finisher claims for the freed slots in the
        transaction that records the outcomes instead (a drain commits half as often). Where
        writers run concurrently, the dispatcher's claim overlaps the finisher's write. Not
        while the finisher's writes fail: it may be a while before one succeeds."""
        if self.dialect.capabilities.concurrent_writers or self._flush_failing:
            return False
        return bool(self._outcomes or self._flushing)

    def _skip_named(self, draining: bool) -> bool:
        """Whether a claim may leave named workers' heads out: only one that continues a drain
        (the claim before it filled its limit), and only until _NAMED_LOOK_INTERVAL has passed
        since a claim last looked at them. The dispatcher's claim after a sleep (a wake, a due
        job, a poll) and a claim after a named worker's job finished here look; a finisher's
        claim made for the dispatcher (SQLite) may not, so a named job waits up to the
        interval."""
        now = anyio.current_time()
        if draining and now - self._named_looked_at < _NAMED_LOOK_INTERVAL:
            return True
        self._named_looked_at = now
        return False

    def _claim_size(self) -> tuple[int, bool]:
        """How many jobs a claim may take now, and whether only named workers' jobs. With every
        unnamed slot busy, still look for named-worker jobs: a busy pool must not hold back a
        serial worker. Nothing once shutting down. The caller reserves the slots while it
        claims, so the dispatcher and the finisher never claim the same free slot twice."""
        if self._dispatch_scope.cancel_called or self._requeuing_unknown or self._lease_lapsed:
            return 0, False
        free = self.max_concurrency - self._running_unnamed - self._reserved
        return (free, False) if free > 0 else (_NAMED_ONLY_CLAIM, True)

    def _release_slots(self, count: int) -> None:
        """A claim that reserved ``count`` slots is over."""
        self._reserved -= count
        if not self._reserved:
            self._claims_settled.set()

    def _claim_failed(self) -> None:
        """A claim raised: perhaps before its commit, perhaps after (the reply was lost)."""
        self._unsure_claims = True
        self._wake_dispatcher()

    async def _requeue_unknown_jobs(self) -> None:
        """Give back jobs leased to this node that it does not hold: a claim that committed
        but raised left them Started under a node that stays alive and would never run them.
        Claims are held off meanwhile (slots reserved means a claim is in flight), so every job
        a claim returns is known here before the database is asked."""
        self._requeuing_unknown = True
        try:
            while self._reserved:
                self._claims_settled = anyio.Event()
                await self._claims_settled.wait()
            self._unsure_claims = False
            known = {*self._running, *(o.job.id for o in (*self._outcomes, *self._flushing))}
            try:
                # Bounded: it runs right after a claim got no answer, and one that never gets
                # an answer either (its connection's host gone) would stop the dispatcher.
                with anyio.fail_after(self._answer_bound):
                    final, requeued = await self.store.requeue_unknown(self.node_id, known)
            except BaseException:
                self._unsure_claims = True
                raise
        finally:
            self._requeuing_unknown = False
        self._resolve(final)
        if final:
            log.warning("jobs %s of a claim that failed were asked to stop: cancelled", list(final))
        if requeued:
            log.warning("jobs %s were claimed by a claim that failed; requeued", requeued)

    def _start_claimed(self, claim: Claim, limit: int, named_only: bool) -> None:
        # A claim that filled its limit may have left more behind: enqueues wait their turn.
        # (A named-only claim says nothing about the jobs without a worker.)
        jobs = claim.jobs
        if not named_only:
            self._saturated = len(jobs) >= limit
        if jobs:
            self._found_work = True
        # The database's word on when the next delayed job (or retry) is due: the dispatcher
        # wakes for it, rather than finding it at a poll up to poll_interval later.
        due_in = claim.next_due_in
        if due_in is None:
            self._next_due_at = None
        else:
            # A millisecond late rather than a claim a moment early (SQLite's clock reads
            # milliseconds); and sooner than the dispatcher now sleeps, if it does.
            self._next_due_at = anyio.current_time() + due_in + 0.001
            if self._sleep_scope is not None:
                self._sleep_scope.deadline = min(self._sleep_scope.deadline, self._next_due_at)
        for job in jobs:
            self._start(job)

    async def _sleep_until_work(self) -> None:
        """Sleep until woken (local work) or the next poll for other processes' work. The
        poll adapts: soon after a claim (the dispatcher's or the finisher's) found work,
        doubling while none comes, up to ``poll_interval``; and it comes no later than the
        next delayed job is due."""
        ceiling = self.poll_interval.total_seconds()
        found, self._found_work = self._found_work, False
        if found:
            self._poll_delay = min(_FAST_POLL, ceiling)
        else:
            self._poll_delay = min(self._poll_delay * 2, ceiling)
        delay = self._poll_delay
        if self._next_due_at is not None:
            delay = max(0.0, min(delay, self._next_due_at - anyio.current_time()))
        try:
            with anyio.move_on_after(delay) as self._sleep_scope:
                await self._wake.wait()
        finally:
            self._sleep_scope = None
        if self._next_due_at is not None and self._next_due_at <= anyio.current_time():
            self._next_due_at = None  # woken for it: the claim that follows reports the next

    async def _pause_after_error(
        self, what: str, exc: Exception, failures: int, *, longest: float = 5.0
    ) -> None:
        delay = min(0.1 * 2 ** min(failures, 10), 5.0, longest)
        log.warning("error while %s (retrying in %.1fs): %r", what, delay, exc)
        await anyio.sleep(delay)

    def _start(self, job: BackgroundJob) -> None:
        assert self._tg is not None
        previous = self._running.get(job.id)
        if previous is not None:
            # Stopped when this node's lease lapsed (a sync command that does not look, say),
            # the run goes on, and the job, taken back meanwhile, was claimed here again. One
            # run of a job at a time here: the new attempt waits for the old run's end, in its
            # slot, and the old run's outcome is dropped then (see _job_ended).
            previous.next_attempt = job
            self._stats["claimed"] += 1
            return
        running = _Running(job, JobContext(job, reply_to_env=self.reply_to_env))
        if job.logs:  # an earlier attempt's
            running.logs_stored = self.dialect.text_length(job.logs)
        self._running[job.id] = running
        if self._lease_lapsed:  # claimed before the lease lapsed: it goes back unstarted
            self._stop_unleased([job.id], _LEASE_LAPSED)
        if job.worker is None:
            self._running_unnamed += 1
        if self._idle.is_set():
            self._idle = anyio.Event()
        self._stats["claimed"] += 1
        # The context a task of the job's own would start with: a copy of the starter's.
        self._ready.append((running, contextvars.copy_context()))
        if self._idle_runners:
            self._idle_runners.pop().set()
        else:
            self._tg.start_soon(self._runner, name="asyncjobs job runner")

    async def _runner(self) -> None:
        """Run started jobs, one after another, in the runtime's task group. A task per job
        cost a no-op job's drain a fifth of its time (anyio's task handles and cancel scopes);
        a runner is made only when every other one is busy, so as many jobs run at once as
        before, and idle runners wait for the next job until shutdown. Each job still runs in
        its own cancel scope and its own context (see _in_context)."""
        wake: anyio.Event | None = None
        try:
            while True:
                while self._ready:
                    running, context = self._ready.popleft()
                    await _in_context(context, self._run_job(running))
                if self._runners_closed:
                    return
                wake = anyio.Event()
                self._idle_runners.append(wake)
                await wake.wait()
        except BaseException:
            # Cancelled from outside (the task group is going down): no job may wait for this
            # runner, and jobs no runner will take go back to the queue, as jobs cut off in
            # mid-run do.
            if wake is not None and wake in self._idle_runners:
                self._idle_runners.remove(wake)
            while self._ready:
                running, _context = self._ready.popleft()
                self._job_ended(running, None, time.monotonic())
            raise

    def _close_runners(self) -> None:
        """Shutdown, once no job runs: idle runners return, busy ones after their job."""
        self._runners_closed = True
        for wake in self._idle_runners:
            wake.set()
        self._idle_runners.clear()

    async def _run_job(self, running: _Running) -> None:
        job = running.job
        started = time.monotonic()
        outcome: Outcome | None = None
        try:
            # The job's own scope also carries its timeout (one cancel scope per job: they are
            # not free). Cancelled with no stop_reason means the deadline passed. A cancel
            # reaches a job still waiting for its named worker (a transient job of the worker
            # holds it) too; its timeout starts once the worker is its own.
            scope = running.scope
            timeout = _timeout_of(job)
            with scope:
                async with self._worker_lock(job.worker):
                    scope.deadline = anyio.current_time() + timeout
                    try:
                        await anyio.lowlevel.checkpoint_if_cancelled()  # before it started
                        running.began = True
                        await self._prepare(job)
                        if job.callback and job.response is not None:
                            outcome = self._command_succeeded_before(job, running.context)
                        else:
                            result = await self._invoke(job, running.context)
                            outcome = self._success(job, result)
                    except BaseException as exc:
                        if not _raised_by_the_job(exc):
                            raise
                        outcome = self._failure(
                            job, exc, permanent=isinstance(exc, _PERMANENT_ERRORS)
                        )
                    if outcome is not None and job.callback and outcome.state is JobState.COMPLETED:
                        # The timeout bounds the command; each callback attempt has its own.
                        scope.deadline = math.inf
                        # Interrupted meanwhile, the job has no outcome yet (it goes back to
                        # the queue, Executed, and only its callback runs again).
                        succeeded, outcome = outcome, None
                        outcome = await self._run_callback(running, succeeded)
            # The deadline passed: a timeout, even if a sync command saw it (as a cancel
            # request) and returned.
            if scope.cancel_called and running.stop_reason is None:
                outcome = self._failure(
                    job, TimeoutError(f"job timed out after {timeout:g}s"), permanent=False
                )
                outcome.error_code = "Timeout"
            # Asked to stop: Cancelled, even when a sync command saw the request and returned.
            if running.stop_reason == "cancelled":
                outcome = Outcome(
                    job,
                    JobState.CANCELLED,
                    error=JobError(f"job {job.id} was cancelled", "Cancelled"),
                    error_code="Cancelled",
                )
            elif running.stop_reason == "shutdown" and running.scope.cancelled_caught:
                outcome = _requeued_by_shutdown(job, unused=not running.began)
        finally:
            self._job_ended(running, outcome, started)

    def _job_ended(self, running: _Running, outcome: Outcome | None, started: float) -> None:
        """Hand a job's outcome to the finisher; no outcome (cancelled from outside, or never
        run) gives the job back to the queue."""
        job = running.job
        if running.next_attempt is not None:
            # The database counts the newer attempt: this run's outcome belongs to none.
            log.warning("job %s: a run stopped earlier ended; its next attempt starts", job.id)
            self._forget_running(running)
            if not running.abandoned:
                self._start_next_attempt(running.next_attempt)
            return
        if running.abandoned:  # left leased to this node, with no outcome (see _shutdown)
            self._forget_running(running)
            return
        if outcome is None:
            outcome = Outcome(
                job,
                JobState.QUEUED,
                error=JobError("interrupted", "Interrupted"),
                attempt_unused=not running.began,
            )
        outcome.duration_ms = int((time.monotonic() - started) * 1000)
        outcome.logs, outcome.progress, outcome.status = running.context.take_pending()
        if running.logs_in_doubt and outcome.logs:
            # An outcome appends its lines as they are: these go at their offset first.
            self._write_before_outcomes(running, outcome.logs, utcnow())
            outcome.logs = None
        self._outcomes.append(outcome)
        self._outcome_ready.set()
        self._forget_running(running)

    def _start_next_attempt(self, job: BackgroundJob) -> None:
        """Start an attempt that waited for an earlier run of its job here; once the runtime
        is stopping, give it back unused, as a shutdown does with jobs not yet begun."""
        if not self._dispatch_scope.cancel_called:
            self._start(job)
            return
        self._outcomes.append(_requeued_by_shutdown(job, unused=True))
        self._outcome_ready.set()

    def _forget_running(self, running: _Running) -> None:
        job = running.job
        if self._running.get(job.id) is not running:
            return
        del self._running[job.id]
        if job.worker is None:
            self._running_unnamed -= 1
        if not self._running:
            self._idle.set()

    async def _prepare(self, job: BackgroundJob) -> None:
        """Load what a job may read: its parent (for depends_on) and its user."""
        if job.depends_on is not None:
            parent = await self.store.get_job(job.depends_on)
            job.parent_job = parent.job if parent is not None else None
        if job.user_id is not None and self.user_resolver is not None:
            user = self.user_resolver(job.user_id)
            # An async resolver, or a plain function (which runs on the event loop: keep it
            # quick)
            job.user = await user if inspect.isawaitable(user) else user

    async def _invoke(self, job: BackgroundJob, context: JobContext) -> Any:
        """Run the job's command or API handler with its request; returns the result."""
        _current.set(context)
        if job.request_type == "API":
            api = self.registry.api(job.request)
            request = job.request_object
            if request is None:
                request = job.request_object = decode(job.request_body, api.request_type)
            return await api.handler(request)
        info = self.registry.command(job.command or "")
        args: tuple[Any, ...] = ()
        if info.request_type is not None:
            if job.request_object is None:
                job.request_object = decode(job.request_body, info.request_type)
            args = (job.request_object,)
        return await self._call(info, args)

    async def _call(self, info: CommandInfo, args: tuple[Any, ...]) -> Any:
        """Create the command (with its services) and run it; sync ones in a thread."""
        instance = instantiate(info.cls, self.services)
        if info.is_async:
            return await instance.run(*args)
        return await self._threads.run(instance.run, args)

    async def _run_callback(self, running: _Running, outcome: Outcome) -> Outcome:
        """The job succeeded: it is Executed while its callback command runs with the result.
        The callback is retried like a job; if it keeps failing, the job fails."""
        job = running.job
        try:
            info = self.registry.command(job.callback or "")
            args = _callback_args(info, job.result)
        except (RegistrationError, SerializationError) as exc:
            # Not registered in this process (or renamed since the job was queued), or the
            # result does not load as its request: the job fails, as with a callback that
            # fails; another attempt here would fare no better.
            return Outcome(
                job, JobState.FAILED, response=outcome.response,
                response_body=outcome.response_body,
                error=JobError(f"callback failed: {exc}", type(exc).__name__),
                error_code="CallbackFailed",
            )  # fmt: skip
        try:
            # Bounded: an answer that never comes must not hold the job (and its worker).
            with anyio.fail_after(self._answer_bound):
                await self.store.mark_executed(self.node_id, outcome)
        except Exception as exc:
            # The mark only spares the command a second run should this process stop during
            # the callback: without it the callback still runs, and the outcome is written
            # as usual (a database error here must not take the runtime down).
            log.warning("could not mark job %s Executed; running its callback: %r", job.id, exc)
        job.state = JobState.EXECUTED
        last_error: BaseException | None = None
        timeout = _timeout_of(job)
        for attempt in range(1, job.retry_limit + 2):
            try:
                # Each attempt within the job's timeout, as its command was: a callback that
                # hangs fails, rather than hold the job Executed (and its worker) for good.
                with anyio.move_on_after(timeout) as bound:
                    await self._call(info, args)
                if bound.cancelled_caught:
                    if running.stop_reason is None:
                        # The timeout raised the flag a sync callback looks at: the next
                        # attempt starts with it down.
                        running.context.cancel_event.clear()
                    raise TimeoutError(f"callback timed out after {timeout:g}s")
            except BaseException as exc:
                if not _raised_by_the_job(exc):
                    raise
                last_error = exc
                delay = retry_backoff(attempt, self.retry_delay, self.max_retry_delay)
                if attempt <= job.retry_limit:
                    await anyio.sleep(delay.total_seconds())
                continue
            outcome.notified_date = utcnow()
            return outcome
        assert last_error is not None
        error = _job_error(last_error)
        error = JobError(
            f"callback {info.name} failed: {error.message}", error.type, error.traceback
        )
        return Outcome(
            job, JobState.FAILED, response=outcome.response, response_body=outcome.response_body,
            error=error, error_code="CallbackFailed",
        )  # fmt: skip

    def _command_succeeded_before(self, job: BackgroundJob, context: JobContext) -> Outcome:
        """The job's command succeeded in an earlier attempt, whose process stopped while the
        callback ran (the job was Executed, its result kept: see Store.mark_executed). The
        command's side effects happened once; only the callback runs again, with that result."""
        _current.set(context)
        callback = self.registry.command(job.callback or "")
        body = job.response_body
        if body is not None and callback.request_type is not None:
            job.result = decode(body, callback.request_type)
        return Outcome(job, JobState.COMPLETED, response=job.response or None, response_body=body)

    def _success(self, job: BackgroundJob, result: Any) -> Outcome:
        job.result = result
        response = None if result is None else type_name(type(result))
        body = None if result is None else encode(result)
        return Outcome(job, JobState.COMPLETED, response=response, response_body=body)

    def _failure(self, job: BackgroundJob, exc: BaseException, *, permanent: bool) -> Outcome:
        error = _job_error(exc)
        code = type(exc).__name__
        if not permanent and job.attempts <= job.retry_limit:
            delay = retry_backoff(job.attempts, self.retry_delay, self.max_retry_delay)
            retry_in = delay if delay > timedelta(0) else None
            return Outcome(job, JobState.QUEUED, error=error, error_code=code, retry_in=retry_in)
        log.warning("job %s (%s) failed: %s", job.id, job.command or job.request, error.message)
        return Outcome(job, JobState.FAILED, error=error, error_code=code)

    # -- the finisher ---------------------------------------------------------------------

    async def _finish_loop(self) -> None:
        while True:
            await self._outcome_ready.wait()
            await self._flush_outcomes()

    async def _flush_outcomes(self) -> None:
        # One flush at a time: shutdown's final flush waits for one in flight.
        async with self._flush_lock:
            await self._flush_locked()

    async def _flush_locked(self) -> None:
        """Write finished jobs' outcomes, many per round trip. When all of a batch completed
        (the common case) and more work is likely queued (the last claim filled up, or a named
        worker's job finished, whose next job could not be claimed before), the same statement
        claims jobs for the freed slots: one round trip where a finish and a claim take two."""
        failures = 0
        while self._outcomes:
            self._outcome_ready = anyio.Event()
            batch, self._outcomes = self._outcomes, []
            all_completed = all(o.state is JobState.COMPLETED for o in batch)
            named_done = any(o.job.worker is not None for o in batch)
            deferred, self._claim_deferred = self._claim_deferred, False
            claim_here = all_completed and (self._saturated or named_done or deferred)
            limit, named_only = self._claim_size() if claim_here else (0, False)
            if named_only and not named_done:
                limit = 0  # no slot freed, and no named worker's job finished: nothing to claim
            # The last claim filled up, and no named worker's job finished here: a drain goes on.
            skip_named = (
                bool(limit)
                and not named_only
                and self._skip_named(self._saturated and not named_done)
            )
            wakes = self._wakes
            self._reserved += limit
            self._flushing = batch
            try:
                with self._db_shield():
                    if self._unsettled_logs:
                        await self.store.update_progress(self._unsettled_logs)
                        self._unsettled_logs = []
                    if all_completed:
                        report: FinishReport = await self.store.complete_and_claim(
                            self.node_id,
                            batch,
                            limit,
                            named_only=named_only,
                            skip_named=skip_named,
                        )
                    else:
                        report = await self.store.finish(self.node_id, batch)
            except Exception as exc:
                failures += 1
                if limit:
                    self._claim_failed()
                if (
                    failures >= _FAILURES_BEFORE_ONE_BY_ONE
                    or isinstance(exc, StatementTooLargeError)
                ) and not self._is_disconnect(exc):
                    # The same error again and again, with the database there: perhaps one
                    # outcome it cannot take. Written one by one, the others are not held up.
                    batch = await self._write_one_by_one(batch)
                    if not batch:
                        failures = 0
                        continue
                self._outcomes[:0] = batch  # keep them: nothing is lost while the db is away
                self._flush_failing = True
                if not limit and deferred:
                    self._wake_dispatcher()  # it claims for itself while the writes fail
                await self._pause_after_error("recording finished jobs", exc, failures)
                continue
            finally:
                self._release_slots(limit)
                self._flushing = []
            self._flush_failing = False
            if isinstance(report, Claim) and limit:
                self._start_claimed(report, limit, named_only)
            self._count_outcomes(batch)
            self._resolve(report.final)
            if report.lost:
                await self._report_lost(report.lost, after_failure=failures > 0)
            failures = 0
            # The dispatcher claims what this flush did not: retried jobs and dependents of
            # finished ones, and work it was woken for while the slots were reserved here.
            if (
                not isinstance(report, Claim)
                or report.dependents
                or (deferred and not limit)
                or (limit and self._wakes != wakes and len(report.jobs) < limit)
                # it left named workers out and came back short: the dispatcher looks at them
                or (skip_named and len(report.jobs) < limit)
            ):
                self._wake_dispatcher()
        if self._claim_deferred:
            # The dispatcher was woken while the last flush ran, and left the claim to it.
            self._claim_deferred = False
            self._wake_dispatcher()

    async def _write_one_by_one(self, batch: Sequence[Outcome]) -> list[Outcome]:
        """Write each outcome alone; one the database still refuses is recorded as a failure
        that says so, without the text it could not take (a command that succeeded is not
        run again for it). Returns the outcomes still unwritten (the database went away)."""
        unwritten: list[Outcome] = []
        for outcome in batch:
            attempt, refusals = outcome, 0
            while True:
                try:
                    with self._db_shield():
                        report = await self.store.finish(self.node_id, [attempt])
                except Exception as exc:
                    refusals += 1
                    if self._is_disconnect(exc) or attempt is not outcome:
                        unwritten.append(outcome)
                        break
                    if refusals > 1:  # refused twice alone: not a passing conflict
                        log.error("job %s: outcome not recordable: %r", outcome.job.id, exc)
                        attempt = _unrecordable(outcome, exc)
                    continue
                self._count_outcomes([attempt])
                self._resolve(report.final)
                if report.lost:
                    await self._report_lost(report.lost, after_failure=True)
                break
        return unwritten

    async def _report_lost(self, job_ids: Sequence[int], *, after_failure: bool) -> None:
        """Outcomes the database did not take: the jobs are no longer held here. After a
        failed attempt of the same batch that is usually because that attempt committed and
        only its reply was lost: jobs found finished are not reported."""
        if after_failure:
            try:
                finished = await self.store.final_states(job_ids)
            except Exception as exc:
                log.warning("could not check finished jobs %s: %r", job_ids, exc)
            else:
                self._resolve(finished)
                job_ids = [job_id for job_id in job_ids if job_id not in finished]
        if job_ids:
            log.warning("jobs %s were taken over by another node; outcome dropped", job_ids)

    def _count_outcomes(self, batch: Sequence[Outcome]) -> None:
        for outcome in batch:
            key = (outcome.job.command or "", outcome.job.worker)
            if outcome.state is JobState.COMPLETED and self._durations.get(key, (1.0,))[0] is None:
                del self._durations[key]
            if outcome.state is JobState.QUEUED:
                self._stats["retried"] += 1
            elif outcome.state is JobState.COMPLETED:
                self._stats["completed"] += 1
            elif outcome.state is JobState.FAILED:
                self._stats["failed"] += 1
            elif outcome.state is JobState.CANCELLED:  # (a queued job's cancel counts itself)
                self._stats["cancelled"] += 1

    def _resolve(self, final: Mapping[int, JobState]) -> None:
        for job_id in final:
            event = self._waiters.pop(job_id, None)
            if event is not None:
                event.set()

    # -- heartbeat, progress, maintenance -------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        """Renew this node's lease, stop jobs cancelled elsewhere, take back dead nodes' jobs."""
        lease = self.lease_duration.total_seconds()
        interval = min(self.poll_interval.total_seconds(), lease / 3)
        last_recover = anyio.current_time()
        failures = 0
        while True:
            with anyio.move_on_after(interval):
                await self._check_cancels.wait()
            self._check_cancels = anyio.Event()
            try:
                # Bounded, as the shielded calls are: a query the database never answers
                # (its host gone) fails, and the next round takes a new connection.
                with anyio.fail_after(self._answer_bound):
                    now = anyio.current_time()
                    if now - self._lease_renewed_at >= lease / 3:
                        await self._renew_lease()
                    if self._running:
                        # The runs the read speaks of: not one started during the read (an
                        # attempt failed, was requeued and claimed here again meanwhile, say).
                        running = dict(self._running)
                        held = await self.store.held_jobs(self.node_id)
                        for job_id, cancel_asked in held.items():
                            if cancel_asked:
                                self._cancel_local(job_id)
                        taken = [
                            job_id
                            for job_id, run in running.items()
                            if job_id not in held and self._running.get(job_id) is run
                        ]
                        self._stop_unleased(taken, "was taken over by another process")
                    if now - last_recover >= lease / 2:
                        final, requeued = await self.store.recover_orphans()
                        released = await self.store.release_dependents()
                        last_recover = now
                        self._resolve(final)
                        if requeued or released:
                            self._wake_dispatcher()
                failures = 0
            except Exception as exc:
                failures += 1
                # Not past the next renewal: errors elsewhere here must not let the lease lapse.
                await self._pause_after_error(
                    "renewing the node lease", exc, failures, longest=lease / 6
                )

    async def _renew_lease(self) -> None:
        sent = anyio.current_time()
        await self.store.renew_node(
            self.node_id, socket.gethostname(), os.getpid(), self.lease_duration
        )
        if anyio.current_time() >= self._lease_lapses_at() and not self._lease_lapsed:
            # The reply came after the lease may have run out, before the lease loop woke (the
            # event loop lagged): the jobs may be running elsewhere already.
            self._stop_unleased(list(self._running), _LEASE_LAPSED)
        # The database's lease runs from when it took the renewal: not before it was sent.
        self._lease_renewed_at = sent
        self._lease_renewed.set()

    def _lease_lapses_at(self) -> float:
        """When this node stops its jobs unless renewed: a little before the database's lease
        can end (a stop is a request, that a job sees at its next await)."""
        lease = self.lease_duration.total_seconds()
        return self._lease_renewed_at + lease - min(lease / 10, 5.0)

    async def _lease_loop(self) -> None:
        """Stop this node's jobs once its lease may run out: no renewal got through for
        (almost) a lease's length (the database unreachable from here alone, or the event
        loop blocked), so other processes may take the jobs back and run them. The lease is
        counted from when the last renewal was sent, so they stop here before another process
        can take them; each goes back to the queue if it is still this node's. No claim
        meanwhile (and jobs a claim in flight returns stop as they start): what it took could
        be taken back at once."""
        while True:
            await anyio.sleep_until(self._lease_lapses_at())
            if anyio.current_time() < self._lease_lapses_at():
                continue  # renewed meanwhile
            self._lease_lapsed = True
            log.warning("node %s could not renew its lease in time", self.node_id)
            self._stop_unleased(list(self._running), _LEASE_LAPSED)
            while anyio.current_time() >= self._lease_lapses_at():
                self._lease_renewed = anyio.Event()
                await self._lease_renewed.wait()
            self._lease_lapsed = False
            self._wake_dispatcher()

    async def _progress_loop(self) -> None:
        """Write progress, status and log lines of running jobs, batched."""
        while True:
            await anyio.sleep(0.5)
            updates = []
            now = utcnow()
            try:
                await self._estimate_progress(now)
            except Exception as exc:
                log.warning("could not estimate job progress: %r", exc)
            # Under the finisher's lock: a job that ends during the write keeps its outcome
            # queued until the write is over, so lines the write took and could not store
            # still reach the outcome (see _give_back).
            async with self._flush_lock:
                taken = []
                for running in list(self._running.values()):
                    if running.context.dirty:
                        logs, progress, status = running.context.take_pending()
                        taken.append((running, logs))
                        updates.append(
                            {"id": running.job.id, "progress": progress, "status": status,
                             "logs": logs, "logs_at": running.logs_stored, "now": now,
                             "node": self.node_id}
                        )  # fmt: skip
                if not updates:
                    continue
                try:
                    # Bounded as the finisher's calls are: a write whose connection never
                    # answers (its host gone) would hold the finisher back for good.
                    with anyio.fail_after(self._answer_bound):
                        await self.store.update_progress(updates)
                except BaseException as exc:
                    for running, logs in taken:
                        self._give_back(running, logs, now)
                    if not isinstance(exc, Exception):
                        raise
                    log.warning("could not write job progress: %r", exc)
                else:
                    for running, logs in taken:
                        if logs:
                            running.logs_stored += self.dialect.text_length(logs)
                            running.logs_in_doubt = False

    def _give_back(self, running: _Running, logs: str | None, now: datetime) -> None:
        """Log lines a failed progress write took, which it may have stored all the same (its
        reply lost after the commit): they are written again at the same offset, which stores
        them once either way. By the job's next progress write if it still runs; else before
        its outcome, which appends the lines after them (the outcome waits in the queue
        meanwhile)."""
        if self._running.get(running.job.id) is running:
            running.context.give_back(logs)
            running.logs_in_doubt = running.logs_in_doubt or bool(logs)
        elif logs:
            self._write_before_outcomes(running, logs, now)

    def _write_before_outcomes(self, running: _Running, logs: str, now: datetime) -> None:
        """Log text of an ended job for the finisher to write, at the job's offset, before it
        writes outcomes."""
        self._unsettled_logs.append(
            {"id": running.job.id, "progress": None, "status": None, "logs": logs,
             "logs_at": running.logs_stored, "now": now, "node": self.node_id}
        )  # fmt: skip

    async def _estimate_progress(self, now: datetime) -> None:
        """For running jobs that report no progress, estimate it from the last durations of the
        same command on the same worker (capped below 1: only completion says 100%)."""
        for running in list(self._running.values()):
            job, context = running.job, running.context
            if context.progress_reported or job.started_date is None or job.command is None:
                continue
            key = (job.command, job.worker)
            cached = self._durations.get(key)
            # Averages are refreshed every minute ("no history yet" when one completes).
            if cached is None or time.monotonic() - cached[1] > 60:
                # Bounded: a read that never gets an answer would stop progress writes.
                with anyio.fail_after(self._answer_bound):
                    durations = await self.store.recent_durations(job.command, job.worker)
                average = sum(durations) / len(durations) if durations else None
                cached = self._durations[key] = (average, time.monotonic())
            average_ms = cached[0]
            if not average_ms or context.progress_reported:  # (reported during the read)
                continue
            elapsed_ms = (now - job.started_date).total_seconds() * 1000
            job.progress = round(min(0.99, elapsed_ms / average_ms), 3)
            context.dirty = True

    async def _maintenance_loop(self) -> None:
        """Create archive months ahead of need; drop months past retention."""
        while True:
            try:
                now = utcnow()
                await self.store.ensure_archives(now)
                if self.retention_months is not None:
                    await self.drop_expired_archives(now)
            except Exception as exc:
                log.warning("archive maintenance failed: %r", exc)
            await anyio.sleep(3600)

    async def drop_expired_archives(self, now: datetime | None = None) -> list[str]:
        """Drop archive months older than ``retention_months``; returns the months dropped."""
        if self.retention_months is None:
            return []
        keep_from = add_months(month_key(now or utcnow()), -(self.retention_months - 1))
        return await self.store.drop_months_before(keep_from)


class _NoLock:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


_NO_LOCK = _NoLock()


def _storable_id(job_id: object) -> bool:
    """Whether a job id could be stored (ids are BIGINT); one that could not names no job."""
    if not isinstance(job_id, int) or isinstance(job_id, bool):
        raise InvalidOptionsError(f"a job id is an int, got {job_id!r}")
    return -(2**63) <= job_id < 2**63


def _requeued_by_shutdown(job: BackgroundJob, *, unused: bool) -> Outcome:
    """A job a shutdown gives back to the queue; ``unused``: its code never began, so the
    claim's count of the attempt is taken back."""
    return Outcome(
        job,
        JobState.QUEUED,
        error=JobError("interrupted by a shutdown; requeued", "Shutdown"),
        error_code="Shutdown",
        attempt_unused=unused,
    )


def _new_node_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


async def open_database(dialect: Dialect) -> None:
    """Open the dialect; a database that is not there (unreachable, unknown, a refused login)
    is a DatabaseError, the driver's error its cause."""
    try:
        await dialect.open()
    except Exception as exc:
        if isinstance(exc, AsyncJobsError):
            raise
        raise DatabaseError(f"cannot open the {dialect.name} database: {exc!r}") from exc


def _callback_args(callback: CommandInfo, result: Any) -> tuple[Any, ...]:
    """The callback's request: the job's result, as the callback's request type. A result of
    another type (a dict an API handler returned, say) is loaded as that type from its JSON, as
    when the callback runs again after its process stopped and reads the stored result (see
    _command_succeeded_before): the callback gets the same request either way."""
    request_type = callback.request_type
    if request_type is None:
        return ()
    try:
        same_type = result is None or isinstance(result, request_type)
    except TypeError:  # Any, a generic: no class to test against
        same_type = False
    return (result,) if same_type else (decode(encode(result), request_type),)


def _timeout_of(job: BackgroundJob) -> float:
    """The seconds the job's command (and each callback attempt) may take."""
    return job.timeout_secs if job.timeout_secs is not None else math.inf


def _raised_by_the_job(exc: BaseException) -> bool:
    """Whether an exception out of a job's code is the job's failure: any, even SystemExit or
    another BaseException (a job must not stop the worker, nor be requeued without end
    because it did), except the cancellation of its scope or of the runtime, and Ctrl-C. A
    cancellation exception that no cancellation caused (the job awaited a task someone else
    cancelled, or a sync command's asyncio.run ended cancelled) is the job's: raised on, it
    would cancel the runtime's task group, and with it the application."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_raised_by_the_job(inner) for inner in exc.exceptions)
    if isinstance(exc, anyio.get_cancelled_exc_class()):
        return not _cancellation_in_effect()
    return not isinstance(exc, KeyboardInterrupt | GeneratorExit)


def _cancellation_in_effect() -> bool:
    """Whether the running task is being cancelled: by a cancel scope around it (the job's
    own, the runtime's), or itself (as asyncio.run's shutdown cancels every task)."""
    if anyio.current_effective_deadline() == -math.inf:
        return True
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no asyncio loop runs: trio, whose Cancelled only a scope raises
        return False
    return task is not None and task.cancelling() > 0


#: consecutive failures of the same batch of outcomes before they are written one by one
_FAILURES_BEFORE_ONE_BY_ONE = 3


def _unrecordable(outcome: Outcome, refused: BaseException) -> Outcome:
    """What is recorded of a job whose outcome the database refused: a failure, without the
    job's text (response, status, logs), naming the database's error."""
    error = JobError(
        storable_text(f"the job's outcome could not be recorded: {refused!r}"[:4096]),
        "UnrecordableOutcome",
    )
    return Outcome(outcome.job, JobState.FAILED, error=error, error_code="UnrecordableOutcome")


def _job_error(exc: BaseException) -> JobError:
    try:
        message = str(exc)
    except Exception:  # an exception whose __str__ fails is still the job's failure
        message = f"<{type(exc).__name__} whose message cannot be shown>"
    return JobError(
        storable_text(message or type(exc).__name__),
        type(exc).__name__,
        storable_text("".join(traceback.format_exception(exc))),
    )


__all__ = ["BackgroundJobs"]
