"""Recurring tasks with a clock the test moves, on every dialect."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest

from asyncjobs import BackgroundJobs, JobOptions, Schedule, current_job
from asyncjobs.exceptions import ConfigurationError, InvalidOptionsError
from asyncjobs.models import ScheduledTask
from tests.clocks import FakeClock
from tests.commands import EVENTS, Add, AddCommand, SerialSleepCommand, Sleep, SleepCommand

pytestmark = pytest.mark.anyio
Factory = Callable[..., BackgroundJobs]
T0 = datetime(2026, 3, 28, 6, 59, 30, tzinfo=UTC)


async def _task(jobs: BackgroundJobs, name: str) -> ScheduledTask:
    (task,) = [t for t in await jobs.scheduled_tasks() if t.name == name]
    return task


async def _fired_jobs(jobs: BackgroundJobs, name: str, count: int) -> list[int]:
    """Wait until the task has fired ``count`` times; returns its jobs' ids in order."""
    ids: list[int] = []
    with anyio.fail_after(10):
        while True:
            task = await _task(jobs, name)
            if task.last_job_id is not None and task.last_job_id not in ids:
                ids.append(task.last_job_id)
            if len(ids) >= count:
                return ids
            await anyio.sleep(0.02)


async def test_interval_task_fires_on_time(make_jobs: Factory) -> None:
    clock = FakeClock(T0)
    async with make_jobs(commands=[AddCommand], clock=clock) as jobs:
        await jobs.recurring_command(AddCommand, Schedule.interval(timedelta(minutes=1)), Add(1, 1))
        task = await _task(jobs, "AddCommand")
        assert task.next_run == T0 + timedelta(minutes=1) and task.last_run is None
        clock.advance(timedelta(seconds=30))
        await anyio.sleep(0.3)
        assert (await _task(jobs, "AddCommand")).last_job_id is None  # not yet due
        clock.advance(timedelta(seconds=31))
        (first,) = await _fired_jobs(jobs, "AddCommand", 1)
        result = await jobs.wait_for_job(first)
        task = await _task(jobs, "AddCommand")
    assert result.completed is not None and result.completed.response_body == '{"total":2}'
    assert result.completed.meta == {
        "scheduled_task": "AddCommand", "fire_time": (T0 + timedelta(minutes=1)).isoformat(),
    }  # fmt: skip
    assert task.last_run == T0 + timedelta(minutes=1)
    assert task.next_run == T0 + timedelta(seconds=61) + timedelta(minutes=1)


async def test_cron_task_in_a_time_zone_across_dst(make_jobs: Factory) -> None:
    # 09:00 Berlin: 08:00 UTC before the switch to summer time on 29 March, 07:00 UTC after.
    clock = FakeClock(T0)
    schedule = Schedule.cron("0 9 * * *", tz="Europe/Berlin")
    async with make_jobs(commands=[AddCommand], clock=clock) as jobs:
        await jobs.recurring_command(AddCommand, schedule, Add(0, 0), name="berlin")
        assert (await _task(jobs, "berlin")).next_run == datetime(2026, 3, 28, 8, tzinfo=UTC)
        clock.advance(timedelta(hours=1, minutes=1))
        await _fired_jobs(jobs, "berlin", 1)
        task = await _task(jobs, "berlin")
    assert task.last_run == datetime(2026, 3, 28, 8, tzinfo=UTC)
    assert task.next_run == datetime(2026, 3, 29, 7, tzinfo=UTC)
    assert task.schedule == schedule


async def test_reregistering_updates_the_task_and_keeps_its_history(make_jobs: Factory) -> None:
    clock = FakeClock(T0)
    every_minute = Schedule.every_minute
    async with make_jobs(commands=[AddCommand], clock=clock) as jobs:
        await jobs.recurring_command(AddCommand, every_minute, Add(1, 1), name="sum")
        clock.advance(timedelta(minutes=1))
        (first,) = await _fired_jobs(jobs, "sum", 1)
        before = await _task(jobs, "sum")
        await jobs.recurring_command(
            AddCommand, every_minute, Add(2, 2), name="sum", options=JobOptions(tag="v2")
        )
        after = await _task(jobs, "sum")
        assert (after.last_run, after.last_job_id, after.next_run) == (
            before.last_run, before.last_job_id, before.next_run,
        )  # fmt: skip
        assert after.options.tag == "v2" and after.request_body == '{"a":2,"b":2}'
        clock.advance(timedelta(minutes=1))
        second = (await _fired_jobs(jobs, "sum", 2))[-1]
        result = await jobs.wait_for_job(second)
        assert len(await jobs.scheduled_tasks()) == 1
    assert first != second
    assert result.completed is not None and result.completed.tag == "v2"
    assert result.completed.response_body == '{"total":4}'


async def test_missed_occurrences_fire_once_after_downtime(make_jobs: Factory) -> None:
    clock = FakeClock(T0)
    async with make_jobs(commands=[AddCommand], execute=False, clock=clock) as registrar:
        await registrar.recurring_command(AddCommand, Schedule.every_minute, Add(1, 1))
    clock.advance(timedelta(minutes=30))  # everything was down for half an hour
    async with make_jobs(commands=[AddCommand], clock=clock) as jobs:
        (job_id,) = await _fired_jobs(jobs, "AddCommand", 1)
        await anyio.sleep(0.3)
        task = await _task(jobs, "AddCommand")
        assert jobs.scheduler is not None and jobs.scheduler.fired == 1
        await jobs.wait_for_job(job_id)
    assert task.last_job_id == job_id
    assert task.next_run == datetime(2026, 3, 28, 7, 30, tzinfo=UTC)  # continues from now


async def test_overlap_is_skipped_while_the_previous_run_goes_on(make_jobs: Factory) -> None:
    EVENTS.clear()
    clock = FakeClock(T0)
    async with make_jobs(commands=[SleepCommand], clock=clock) as jobs:
        await jobs.recurring_command(
            SleepCommand, Schedule.every_minute, Sleep(30, label="long"), skip_if_running=True
        )
        clock.advance(timedelta(minutes=1))
        (first,) = await _fired_jobs(jobs, "SleepCommand", 1)
        with anyio.fail_after(5):
            while ("start", "long") not in [(e[0], e[1]) for e in EVENTS]:
                await anyio.sleep(0.01)
        clock.advance(timedelta(minutes=1))
        assert jobs.scheduler is not None
        with anyio.fail_after(5):
            while jobs.scheduler.skipped == 0:
                await anyio.sleep(0.02)
        task = await _task(jobs, "SleepCommand")
        await jobs.cancel_job(first)
    assert task.last_job_id == first and jobs.scheduler.fired == 1
    assert task.next_run == datetime(2026, 3, 28, 7, 2, tzinfo=UTC)


async def test_transient_task_runs_without_a_stored_job(make_jobs: Factory) -> None:
    EVENTS.clear()
    clock = FakeClock(T0)
    async with make_jobs(commands=[SleepCommand], clock=clock) as jobs:
        await jobs.recurring_command(
            SleepCommand, Schedule.every_minute, Sleep(0, label="transient"),
            options=JobOptions(run_command=True),
        )  # fmt: skip
        clock.advance(timedelta(minutes=1))
        with anyio.fail_after(5):
            while ("end", "transient") not in [(e[0], e[1]) for e in EVENTS]:
                await anyio.sleep(0.01)
        task = await _task(jobs, "SleepCommand")
        assert await jobs.store.select_job_ids(None, None) == []
    assert task.last_run == datetime(2026, 3, 28, 7, 0, tzinfo=UTC)
    assert task.last_job_id is None


async def test_a_transient_task_is_left_to_a_process_that_can_run_it(
    make_jobs: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    """A process without a transient task's command leaves each occurrence due (and says so
    once); a process with the command runs it."""
    EVENTS.clear()
    clock = FakeClock(T0)
    async with make_jobs(commands=[SleepCommand], execute=False, clock=clock) as registering:
        await registering.recurring_command(
            SleepCommand, Schedule.every_minute, Sleep(0, label="left"),
            options=JobOptions(run_command=True),
        )  # fmt: skip
    async with make_jobs(clock=clock, schedule_refresh=timedelta(seconds=0.05)) as lacking:
        clock.advance(timedelta(minutes=1))
        await anyio.sleep(0.5)  # ten refreshes
        assert (await _task(lacking, "SleepCommand")).last_run is None
        async with make_jobs(commands=[SleepCommand], clock=clock):
            with anyio.fail_after(5):
                while ("end", "left") not in [(e[0], e[1]) for e in EVENTS]:
                    await anyio.sleep(0.01)
        task = await _task(lacking, "SleepCommand")
    assert task.last_run == datetime(2026, 3, 28, 7, 0, tzinfo=UTC)
    said = [r for r in caplog.records if "SleepCommand is left to a process" in r.getMessage()]
    assert len(said) == 1 and "unknown command 'SleepCommand'" in said[0].getMessage()


async def test_a_transient_task_left_to_others_after_a_pause_does_not_spin(
    make_jobs: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task whose fire failed once (a pause of 0.2 s) and that is then left to another
    process (registered again for a command this one lacks) waits for the next refresh: the
    end of its old pause, gone by, was taken as the time to wake, again and again."""
    clock = FakeClock(T0)
    async with make_jobs(commands=[SleepCommand, AddCommand], execute=False, clock=clock) as other:
        await other.recurring_command(
            SleepCommand, Schedule.every_minute, Sleep(0), name="t",
            options=JobOptions(run_command=True),
        )  # fmt: skip
        async with make_jobs(commands=[SleepCommand], clock=clock) as jobs:
            real_fire_task, real_due_tasks = jobs.store.fire_task, jobs.store.due_tasks
            failed: list[str] = []
            looks: list[datetime] = []

            async def fails_once(name: str, *args: Any, **kwargs: Any) -> Any:
                if not failed:
                    failed.append(name)
                    raise ConnectionError("connection reset")
                return await real_fire_task(name, *args, **kwargs)

            async def counted(now: datetime) -> Any:
                looks.append(now)
                return await real_due_tasks(now)

            monkeypatch.setattr(jobs.store, "fire_task", fails_once)
            monkeypatch.setattr(jobs.store, "due_tasks", counted)
            clock.advance(timedelta(minutes=1))
            with anyio.fail_after(5):
                while not failed:
                    await anyio.sleep(0.01)
            await other.recurring_command(
                AddCommand, Schedule.every_minute, Add(1, 2), name="t",
                options=JobOptions(run_command=True),
            )  # fmt: skip
            clock.advance(timedelta(seconds=1))  # past the pause
            await anyio.sleep(0.3)
            before = len(looks)
            await anyio.sleep(1)  # the clock stands still: nothing is due to wake for
            woken = len(looks) - before
    assert woken <= 2, woken


async def test_a_transient_occurrence_whose_request_does_not_load_is_taken_and_logged(
    make_jobs: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    """No process could run it (its stored request does not load as the command's request
    type): each occurrence is taken and logged, not left due for ever."""
    clock = FakeClock(T0)
    async with make_jobs(commands=[AddCommand], clock=clock) as jobs:
        await jobs.recurring_command(
            AddCommand, Schedule.every_minute, Add(1, 2), options=JobOptions(run_command=True)
        )
        (row,) = await jobs.store.list_tasks()
        keys = ("name", "schedule", "request_type", "command", "request", "options", "next_run")
        await jobs.store.upsert_task({**{k: row[k] for k in keys}, "request_body": '{"a":"x"}'})
        for fire_time in (T0 + timedelta(seconds=30), T0 + timedelta(seconds=90)):
            clock.advance(timedelta(minutes=1))
            with anyio.fail_after(5):
                while (await _task(jobs, "AddCommand")).last_run != fire_time:
                    await anyio.sleep(0.01)
    said = [r for r in caplog.records if "AddCommand could not run at" in r.getMessage()]
    assert len(said) == 2


async def test_api_task_and_delete(make_jobs: Factory) -> None:
    clock = FakeClock(T0)
    async with make_jobs(clock=clock) as jobs:
        jobs.register_api(Add, _multiply)
        await jobs.recurring_api(Schedule.hourly, Add(6, 7))
        task = await _task(jobs, "Add")
        assert (task.request_type, task.command) == ("API", None)
        assert task.next_run == datetime(2026, 3, 28, 7, tzinfo=UTC)
        clock.advance(timedelta(minutes=1))
        (job_id,) = await _fired_jobs(jobs, "Add", 1)
        result = await jobs.wait_for_job(job_id)
        assert await jobs.delete_recurring_task("Add") is True
        assert await jobs.delete_recurring_task("Add") is False
        with pytest.raises(ConfigurationError, match="never comes"):
            await jobs.recurring_command(AddCommand, Schedule.cron("0 0 31 2 *"), Add(1, 1))
        assert await jobs.scheduled_tasks() == []
    assert result.completed is not None and result.completed.response_body == "42"


async def test_a_transient_api_task_runs_its_api(make_jobs: Factory) -> None:
    clock = FakeClock(T0)
    products: list[int] = []

    metas: list[dict[str, Any] | None] = []

    async def multiply_and_keep(request: Add) -> int:
        products.append(request.a * request.b)
        metas.append(current_job().meta)
        return products[-1]

    async with make_jobs(clock=clock) as jobs:
        jobs.register_api(Add, multiply_and_keep)
        await jobs.recurring_api(
            Schedule.every_minute, Add(6, 7), options=JobOptions(run_command=True)
        )
        assert await jobs.run_scheduled_task("Add") is None
        with anyio.fail_after(5):
            while products != [42]:
                await anyio.sleep(0.01)
        clock.advance(timedelta(minutes=1))
        with anyio.fail_after(5):
            while products != [42, 42]:
                await anyio.sleep(0.01)
        assert await jobs.store.select_job_ids(None, None) == []
    # Which task and occurrence, as a stored occurrence's meta says (run now: the time it ran).
    assert metas == [
        {"scheduled_task": "Add", "fire_time": T0.isoformat()},
        {"scheduled_task": "Add", "fire_time": datetime(2026, 3, 28, 7, tzinfo=UTC).isoformat()},
    ]


async def test_a_task_runs_on_its_commands_named_worker(make_jobs: Factory) -> None:
    clock = FakeClock(T0)
    async with make_jobs(commands=[SerialSleepCommand], clock=clock) as jobs:
        await jobs.recurring_command(SerialSleepCommand, Schedule.every_minute, Sleep(0))
        await jobs.recurring_command(
            SerialSleepCommand, Schedule.hourly, Sleep(0), name="elsewhere",
            options=JobOptions(worker="other"),
        )  # fmt: skip
        clock.advance(timedelta(minutes=1))
        (fired,) = await _fired_jobs(jobs, "SerialSleepCommand", 1)
        now = await jobs.run_scheduled_task("SerialSleepCommand")
        assert now is not None
        other = await jobs.run_scheduled_task("elsewhere")
        assert other is not None
        workers = [(await jobs.wait_for_job(i)).summary.worker for i in (fired, now.id, other.id)]
    assert workers == ["serial", "serial", "other"]


async def _multiply(request: Add) -> int:
    return request.a * request.b


async def test_run_a_scheduled_task_now(make_jobs: Factory) -> None:
    from asyncjobs.exceptions import JobNotFoundError

    clock = FakeClock(T0)
    async with make_jobs(commands=[AddCommand], clock=clock) as jobs:
        await jobs.recurring_command(AddCommand, Schedule.daily, Add(3, 4), name="daily")
        ref = await jobs.run_scheduled_task("daily")
        assert ref is not None
        result = await jobs.wait_for_job(ref.id)
        task = await _task(jobs, "daily")
        with pytest.raises(JobNotFoundError, match="no recurring task named 'nope'"):
            await jobs.run_scheduled_task("nope")
    assert result.completed is not None and result.completed.response_body == '{"total":7}'
    assert task.last_job_id == ref.id
    assert task.next_run == datetime(2026, 3, 29, tzinfo=UTC)  # the schedule is unchanged


@pytest.mark.parametrize(
    ("schedule", "options"),
    [
        ("cron:every other minute", "{}"),
        ("cron:* * * * *|UTC", '{"timeout": "PT5M"}'),
        ("cron:* * * * *|UTC", "[]"),
        ("cron:* * * * *|UTC", "not json"),
    ],
)
async def test_a_task_that_cannot_be_read_holds_up_no_other(
    make_jobs: Factory, caplog: pytest.LogCaptureFixture, schedule: str, options: str
) -> None:
    """A task row this version cannot read (written by another version, or by hand) is
    logged and left as it is; the other tasks still run, and the list leaves it out."""
    clock = FakeClock(T0)
    async with make_jobs(commands=[AddCommand], clock=clock) as jobs:
        await jobs.store.upsert_task({
            "name": "a-unreadable", "schedule": schedule, "request_type": "CMD",
            "command": "AddCommand", "request": "Add", "request_body": '{"a":1,"b":1}',
            "options": options, "next_run": T0 - timedelta(minutes=1),
        })  # fmt: skip
        await jobs.recurring_command(AddCommand, Schedule.every_minute, Add(1, 1))
        for minute in (1, 2):
            clock.advance(timedelta(minutes=1))
            await _fired_jobs(jobs, "AddCommand", minute)
        assert [task.name for task in await jobs.scheduled_tasks()] == ["AddCommand"]
        unreadable = [t for t in await jobs.store.list_tasks() if t["name"] == "a-unreadable"]
    assert unreadable[0]["last_run"] is None
    assert any("a-unreadable cannot be read" in record.getMessage() for record in caplog.records)


async def test_a_recurring_tasks_jobs_keep_its_parent_id(make_jobs: Factory) -> None:
    clock = FakeClock(T0)
    async with make_jobs(commands=[AddCommand], clock=clock) as jobs:
        parent = await jobs.enqueue_command(AddCommand, Add(0, 0))
        options = JobOptions(parent_id=parent.id)
        await jobs.recurring_command(AddCommand, Schedule.every_minute, Add(1, 1), options=options)
        clock.advance(timedelta(minutes=1))
        (job_id,) = await _fired_jobs(jobs, "AddCommand", 1)
        fired = await jobs.get_job(job_id)
    assert fired is not None and fired.summary.parent_id == parent.id


async def test_a_task_that_cannot_fire_holds_up_no_other(
    make_jobs: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task whose firing fails every time (its job refused by the database, say) is tried
    again after a pause; the tasks due after it still fire."""
    clock = FakeClock(T0)
    async with make_jobs(commands=[AddCommand], clock=clock) as jobs:
        real_fire_task = jobs.store.fire_task
        attempts: list[str] = []

        async def refused_for_one(name: str, *args: Any, **kwargs: Any) -> Any:
            if name == "a-refused":
                attempts.append(name)
                raise RuntimeError("refused by the database")
            return await real_fire_task(name, *args, **kwargs)

        monkeypatch.setattr(jobs.store, "fire_task", refused_for_one)
        await jobs.recurring_command(AddCommand, Schedule.every_minute, Add(2, 2), name="a-refused")
        await jobs.recurring_command(AddCommand, Schedule.every_minute, Add(1, 1))
        for minute in (1, 2):
            clock.advance(timedelta(minutes=1))
            await _fired_jobs(jobs, "AddCommand", minute)
        assert (await _task(jobs, "a-refused")).last_run is None
    assert len(attempts) >= 2


async def test_a_task_that_cannot_be_read_does_not_slow_the_others(make_jobs: Factory) -> None:
    """It stays due, and is looked at again only at the next refresh: the others still fire
    when they are due, not at that refresh."""
    async with make_jobs(commands=[AddCommand], schedule_refresh=timedelta(seconds=60)) as jobs:
        await jobs.store.upsert_task({
            "name": "a-unreadable", "schedule": "cron:garbage|UTC", "request_type": "CMD",
            "command": "AddCommand", "request": "Add", "request_body": '{"a":1,"b":1}',
            "options": "{}", "next_run": datetime.now(UTC) - timedelta(minutes=1),
        })  # fmt: skip
        await jobs.recurring_command(AddCommand, Schedule.cron("* * * * * *"), Add(1, 1))
        await _fired_jobs(jobs, "AddCommand", 3)  # every second, not every refresh


async def test_bad_recurring_tasks_are_refused_when_registered(make_jobs: Factory) -> None:
    async with make_jobs(commands=[AddCommand]) as jobs:
        with pytest.raises(ConfigurationError, match="needs a name"):
            await jobs.recurring_command(AddCommand, Schedule.hourly, Add(1, 1), name="")
        with pytest.raises(ConfigurationError, match="needs a name"):
            await jobs.recurring_command(AddCommand, Schedule.hourly, Add(1, 1), name=5)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match="at most 255"):
            await jobs.recurring_command(AddCommand, Schedule.hourly, Add(1, 1), name="n" * 256)
        later = datetime(2030, 1, 1, tzinfo=UTC)
        with pytest.raises(InvalidOptionsError, match="cannot take run_after"):
            await jobs.recurring_command(
                AddCommand, Schedule.hourly, Add(1, 1),
                options=JobOptions(run_command=True, run_after=later),
            )  # fmt: skip
        with pytest.raises(InvalidOptionsError, match="cannot take depends_on"):
            await jobs.recurring_command(
                AddCommand, Schedule.hourly, Add(1, 1),
                options=JobOptions(run_command=True, depends_on=1),
            )  # fmt: skip
        # Nor a stored job's: one delay, parent to wait for or ref_id cannot fit every
        # occurrence.
        for once_only, refused in [
            (JobOptions(run_after=later), "run_after"),
            (JobOptions(depends_on=1), "depends_on"),
            (JobOptions(ref_id="once"), "ref_id"),
        ]:
            with pytest.raises(InvalidOptionsError, match=f"cannot take {refused}:"):
                await jobs.recurring_command(
                    AddCommand, Schedule.hourly, Add(1, 1), options=once_only
                )
        assert await jobs.scheduled_tasks() == []
        with pytest.raises(InvalidOptionsError, match="must be JSON"):
            await jobs.recurring_command(
                AddCommand, Schedule.hourly, Add(1, 1), options=JobOptions(meta={"at": later})
            )
        assert await jobs.scheduled_tasks() == []


async def test_a_transient_task_is_running_until_its_last_run_here_ends(
    make_jobs: Factory,
) -> None:
    """Two runs at once (its schedule's and run_scheduled_task's): the first to end does not
    make skip_if_running forget the other."""
    async with make_jobs(commands=[AddCommand]) as jobs:
        await jobs.recurring_command(
            AddCommand, Schedule.hourly, Add(1, 1),
            options=JobOptions(run_command=True), skip_if_running=True,
        )  # fmt: skip
        task = await _task(jobs, "AddCommand")
        scheduler = jobs.scheduler
        assert scheduler is not None
        scheduler.transient_started(task.name)
        scheduler.transient_started(task.name)
        scheduler.transient_finished(task.name)
        assert await scheduler._still_running(task)
        scheduler.transient_finished(task.name)
        assert not await scheduler._still_running(task)


async def test_a_task_that_cannot_fire_pauses_alone_and_the_others_keep_time(
    make_jobs: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task whose job the database refuses pauses, growing to 5 s, and is tried again; the
    others fire on time meanwhile, occurrence after occurrence (the whole scheduler used to
    pause, so they came ever later)."""
    clock = FakeClock(T0)
    async with make_jobs(commands=[AddCommand], clock=clock) as jobs:
        every_minute = Schedule.interval(timedelta(minutes=1))
        await jobs.recurring_command(AddCommand, every_minute, Add(1, 1), name="refused")
        await jobs.recurring_command(AddCommand, every_minute, Add(2, 2), name="healthy")
        fire_task = jobs.store.fire_task
        refused: list[datetime] = []

        async def refusing(name: str, expected: datetime, *args: Any) -> Any:
            if name == "refused":
                refused.append(clock.now())
                raise RuntimeError("the database refuses this job")
            return await fire_task(name, expected, *args)

        monkeypatch.setattr(jobs.store, "fire_task", refusing)
        for occurrence in range(1, 8):
            clock.advance(timedelta(minutes=1))
            with anyio.fail_after(5):
                while (await _task(jobs, "healthy")).last_run != T0 + timedelta(minutes=occurrence):
                    await anyio.sleep(0.01)
        assert (await _task(jobs, "refused")).last_run is None
    # Tried again at each of its occurrences (its pause is over by then), not in between.
    assert refused == [T0 + timedelta(minutes=n) for n in range(1, 8)]
