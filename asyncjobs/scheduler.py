"""The scheduler: fires recurring tasks when due, exactly once across processes.

It sleeps until the earliest ``next_run`` (never busy-polls), waking earlier when a task is
registered here and at least every ``refresh`` to notice tasks changed by other processes.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from functools import partial

import anyio

from ._ref_ids import new_ref_id
from .clock import Clock
from .dialects import Row
from .exceptions import AsyncJobsError, ConfigurationError, RegistrationError
from .models import JobOptions, ScheduledTask
from .schedule import Schedule
from .store import NewJob, Store, utcnow

log = logging.getLogger("asyncjobs.scheduler")


def row_to_task(row: Row) -> ScheduledTask:
    """The task a stored row describes; ConfigurationError if this version cannot read it
    (stored by another version, or by hand)."""
    try:
        stored = json.loads(row["options"] or "{}")
        if not isinstance(stored, dict):
            raise TypeError(f"options must be a JSON object, got {row['options']!r}")
        skip = bool(stored.pop("skip_if_running", False))
        options = JobOptions.from_dict(stored)
    except AsyncJobsError:
        raise
    except (ValueError, TypeError, AttributeError, KeyError, OverflowError) as exc:
        raise ConfigurationError(f"recurring task {row['name']!r}: bad options: {exc}") from None
    return ScheduledTask(
        name=row["name"],
        schedule=Schedule.from_text(row["schedule"]),
        request_type=row["request_type"],
        command=row["command"],
        request=row["request"],
        request_body=row["request_body"],
        options=options,
        skip_if_running=skip,
        enabled=bool(row["enabled"]),
        last_run=row["last_run"],
        last_job_id=row["last_job_id"],
        next_run=row["next_run"],
    )


def task_job(
    task: ScheduledTask,
    fire_time: datetime,
    default_retry_limit: int,
    default_timeout: timedelta | None,
    class_worker: str | None = None,
) -> NewJob:
    """The job one occurrence of a task enqueues; its meta says which task and occurrence.
    ``class_worker`` is the command class's own named worker (the options may name another)."""
    options = task.options
    timeout = options.timeout or default_timeout
    return NewJob(
        ref_id=new_ref_id(),
        parent_id=options.parent_id,
        request_type=task.request_type,
        request=task.request,
        request_body=task.request_body,
        retry_limit=default_retry_limit if options.retry_limit is None else options.retry_limit,
        created_date=utcnow(),
        command=task.command,
        worker=options.worker or class_worker,
        tag=options.tag,
        batch_id=options.batch_id,
        callback=options.callback,
        created_by=options.created_by,
        user_id=options.user_id,
        timeout_secs=None if timeout is None else timeout.total_seconds(),
        reply_to=options.reply_to,
        args=None if options.args is None else dict(options.args),
        meta={**(options.meta or {}), "scheduled_task": task.name,
              "fire_time": fire_time.isoformat()},
        priority=options.priority,
    )  # fmt: skip


class _CannotRunHere(Exception):
    """A transient task's occurrence this process cannot run (the cause says why)."""


def _pause_after(failures: int) -> float:
    """Seconds to wait after ``failures`` in a row: 0.2 s, doubling, up to 5 s."""
    return min(0.1 * 2.0 ** min(failures, 10), 5.0)


class Scheduler:
    """Runs inside the runtime's task group while it executes jobs."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        sync_clock: Callable[[], Awaitable[None]],
        refresh: timedelta,
        make_job: Callable[[ScheduledTask, datetime], NewJob],
        prepare_transient: Callable[[ScheduledTask, datetime], Callable[[], None]],
        on_enqueued: Callable[[], None],
    ) -> None:
        self.store = store
        self.clock = clock
        self.sync_clock = sync_clock
        self.refresh = refresh
        self.make_job = make_job
        self.prepare_transient = prepare_transient
        self.on_enqueued = on_enqueued
        self.changed = anyio.Event()
        self.fired = 0
        self.skipped = 0
        #: tasks whose last fire here failed, by name: when to try again, and failures in a row
        self._retry: dict[str, tuple[datetime, int]] = {}
        #: runs of transient tasks going on in this process, by task name
        self._transient_running: Counter[str] = Counter()
        #: transient tasks this process cannot run, already logged (once each while due)
        self._left_to_others: set[str] = set()

    def notify_changed(self) -> None:
        self.changed.set()

    async def run(self) -> None:
        failures = 0
        while True:
            self.changed = anyio.Event()
            #: due tasks left for later: unreadable ones (looked at again at the next refresh)
            #: and those waiting out a pause after their fire failed
            held: set[str] = set()
            try:
                await self.sync_clock()
                now = self.clock.now()
                rows = await self.store.due_tasks(now)
                self._retry = {
                    r["name"]: self._retry[r["name"]] for r in rows if r["name"] in self._retry
                }
                self._left_to_others.intersection_update(r["name"] for r in rows)
                for row in rows:
                    retry = self._retry.get(row["name"])
                    if retry is not None and retry[0] > now:
                        held.add(row["name"])
                        continue
                    try:
                        task = row_to_task(row)
                    except AsyncJobsError as exc:
                        # Stored by another version, or by hand: the other tasks go on.
                        log.error("recurring task %s cannot be read: %r", row["name"], exc)
                        held.add(row["name"])
                        self._retry.pop(row["name"], None)
                        continue
                    try:
                        await self.fire(task, now)
                    except _CannotRunHere as exc:
                        # Another process, with its command, runs it; this one looks again
                        # at the next refresh (not at the end of an earlier pause, gone by).
                        held.add(task.name)
                        self._retry.pop(task.name, None)
                        if task.name not in self._left_to_others:
                            self._left_to_others.add(task.name)
                            log.warning(
                                "recurring task %s is left to a process that can run it: %s",
                                task.name, exc.__cause__,
                            )  # fmt: skip
                    except Exception as exc:
                        # Perhaps a value the database refuses: it pauses, growing to 5 s,
                        # and the other tasks fire on time meanwhile.
                        count = 1 if retry is None else retry[1] + 1
                        pause = timedelta(seconds=_pause_after(count))
                        self._retry[task.name] = (now + pause, count)
                        held.add(task.name)
                        log.error("recurring task %s could not fire: %r", task.name, exc)
                    else:
                        self._retry.pop(task.name, None)
                if held:
                    # They stay due: the wake-up comes from the others, due before the next
                    # refresh, and from the end of a pause.
                    next_due = min(
                        (
                            *(
                                row["next_run"]
                                for row in await self.store.due_tasks(now + self.refresh)
                                if row["name"] not in held
                                and isinstance(row["next_run"], datetime)
                                and row["next_run"] > now
                            ),
                            *(at for name, (at, _) in self._retry.items() if name in held),
                        ),
                        default=None,
                    )
                else:
                    next_due = await self.store.next_task_due()
                failures = 0
            except Exception as exc:
                failures += 1
                delay = _pause_after(failures)
                log.warning("scheduler error (retrying in %.1fs): %r", delay, exc)
                await anyio.sleep(delay)
                continue
            wake_at = now + self.refresh
            if next_due is not None and next_due < wake_at:
                wake_at = next_due
            await self._sleep_until(wake_at)

    async def _sleep_until(self, deadline: datetime) -> None:
        async with anyio.create_task_group() as tg:

            async def sleep() -> None:
                await self.clock.sleep_until(deadline)
                tg.cancel_scope.cancel()

            async def changed() -> None:
                await self.changed.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(sleep)
            tg.start_soon(changed)

    async def fire(self, task: ScheduledTask, now: datetime) -> None:
        """Fire one due task. After downtime the missed occurrences make one catch-up run
        (at the first missed time), then the schedule continues from now."""
        expected = task.next_run
        if expected is None:
            return
        start_transient = None
        if task.options.run_command:
            # Made before the occurrence is taken: one whose command or API is not registered
            # here stays due for a process that has it. One that runs nowhere (its request or
            # options do not load) is taken and logged, as no process could run it.
            try:
                start_transient = self.prepare_transient(task, expected)
            except RegistrationError as exc:
                raise _CannotRunHere from exc
            except Exception as exc:
                start_transient = partial(
                    log.error, "recurring task %s could not run at %s: %r", task.name, expected, exc
                )
        next_run = task.schedule.next_after(max(now, expected))
        if task.skip_if_running and await self._still_running(task):
            if await self.store.skip_task(task.name, expected, next_run):
                self.skipped += 1
                log.info("skipped %s at %s: its previous run is still going", task.name, expected)
            return
        if start_transient is not None:
            taken, _ = await self.store.fire_task(task.name, expected, expected, next_run, None)
            if taken:
                self.fired += 1
                start_transient()
            return
        taken, job_id = await self.store.fire_task(
            task.name, expected, expected, next_run, self.make_job(task, expected)
        )
        if taken:
            self.fired += 1
            log.debug("fired %s for %s as job %s", task.name, expected, job_id)
            self.on_enqueued()

    async def _still_running(self, task: ScheduledTask) -> bool:
        if task.options.run_command:
            return task.name in self._transient_running
        return task.last_job_id is not None and await self.store.job_is_active(task.last_job_id)

    def transient_started(self, name: str) -> None:
        self._transient_running[name] += 1

    def transient_finished(self, name: str) -> None:
        self._transient_running[name] -= 1
        if self._transient_running[name] <= 0:
            del self._transient_running[name]
