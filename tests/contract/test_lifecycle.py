"""The core job lifecycle, on every dialect."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest

import asyncjobs.runtime
from asyncjobs import (
    AsyncCommand,
    AsyncNoRequestCommand,
    BackgroundJob,
    BackgroundJobs,
    JobOptions,
    JobState,
    JobSummary,
    Schedule,
    current_job,
)
from asyncjobs._serialization import encode
from asyncjobs.exceptions import (
    ConfigurationError,
    DuplicateRefIdError,
    InvalidJobStateError,
    InvalidOptionsError,
    JobNotFoundError,
    RegistrationError,
    SerializationError,
)
from tests.commands import (
    EVENTS,
    Add,
    AddCommand,
    Fail,
    FailCommand,
    PingCommand,
    Sleep,
    SleepCommand,
    SyncStopsWhenAskedCommand,
)

pytestmark = pytest.mark.anyio
Factory = Callable[..., BackgroundJobs]


async def test_enqueue_runs_and_archives_completed_job(make_jobs: Factory) -> None:
    async with make_jobs(commands=[AddCommand]) as jobs:
        ref = await jobs.enqueue_command(AddCommand, Add(2, 3))
        assert ref.id > 0 and len(ref.ref_id) == 32
        result = await jobs.wait_for_job(ref.id)
    assert result.state is JobState.COMPLETED
    assert result.queued is None and result.failed is None
    assert result.completed is not None and result.job is result.completed
    job = result.completed
    assert job.response == "Sum" and job.response_body == '{"total":5}'
    assert job.attempts == 1 and job.progress == 1.0
    assert job.started_date is not None and job.completed_date is not None
    assert job.completed_date >= job.started_date >= job.created_date
    assert result.summary.state is JobState.COMPLETED and result.summary.command == "AddCommand"


async def test_get_job_by_ref_id_and_unknown_ids(make_jobs: Factory) -> None:
    async with make_jobs(commands=[AddCommand], execute=False) as jobs:
        ref = await jobs.enqueue_command(AddCommand, Add(1, 1), JobOptions(ref_id="order-42"))
        assert ref.ref_id == "order-42"
        found = await jobs.get_job_by_ref_id("order-42")
        assert found is not None and found.queued is not None
        assert found.queued.id == ref.id and found.state is JobState.QUEUED
        assert await jobs.get_job(ref.id + 1000) is None
        assert await jobs.get_job_by_ref_id("nope") is None


async def test_get_job_finds_the_job_row_while_jobs_finish(make_jobs: Factory) -> None:
    # get_job reads the summary, then the job where the summary says it is: a job that
    # finishes between the two reads must still be found (in the archive), not reported
    # without its row. Each job is polled in a tight loop while it finishes, by more readers
    # than the pool has connections: they must not starve the worker's completions.
    async with make_jobs(commands=[SleepCommand]) as jobs:
        refs = [await jobs.enqueue_command(SleepCommand, Sleep(0.05 + 0.01 * n)) for n in range(40)]

        async def poll_until_completed(job_id: int) -> None:
            while True:
                result = await jobs.get_job(job_id)
                assert result is not None and result.job is not None, result
                if result.state is JobState.COMPLETED:
                    assert result.completed is not None
                    return

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for ref in refs:
                    tg.start_soon(poll_until_completed, ref.id)


async def test_every_option_is_stored_and_returned(make_jobs: Factory) -> None:
    run_after = datetime.now(UTC) + timedelta(hours=1)
    options = JobOptions(
        ref_id="r-1", parent_id=7, worker="w", run_after=run_after, created_by="alice",
        retry_limit=5, timeout=timedelta(seconds=90), callback="PingCommand", depends_on=None,
        user_id="u-1", reply_to="https://example.invalid/hook", tag="t", batch_id="b",
        args={"k": "v"}, meta={"n": 1}, priority=3,
    )  # fmt: skip
    async with make_jobs(commands=[AddCommand, PingCommand], execute=False) as jobs:
        ref = await jobs.enqueue_command(AddCommand, Add(1, 2), options)
        result = await jobs.get_job(ref.id)
    assert result is not None and result.queued is not None
    job = result.queued
    assert (job.ref_id, job.parent_id, job.worker, job.created_by) == ("r-1", 7, "w", "alice")
    assert job.run_after is not None and abs(job.run_after - run_after) < timedelta(milliseconds=1)
    assert (job.retry_limit, job.timeout, job.callback) == (5, timedelta(seconds=90), "PingCommand")
    assert (job.user_id, job.reply_to, job.tag, job.batch_id) == (
        "u-1", "https://example.invalid/hook", "t", "b",
    )  # fmt: skip
    assert (job.args, job.meta, job.priority) == ({"k": "v"}, {"n": 1}, 3)
    assert (job.request_type, job.command, job.request) == ("CMD", "AddCommand", "Add")
    assert job.request_body == '{"a":1,"b":2}'
    assert result.summary.tag == "t" and result.summary.batch_id == "b"


async def test_failed_job_is_retried_then_archived_as_failed(make_jobs: Factory) -> None:
    async with make_jobs(commands=[FailCommand]) as jobs:
        ref = await jobs.enqueue_command(FailCommand, Fail("nope"), JobOptions(retry_limit=2))
        result = await jobs.wait_for_job(ref.id)
    assert result.state is JobState.FAILED
    assert result.failed is not None and result.completed is None
    assert result.failed.attempts == 3  # the first attempt and two retries
    assert result.failed.error is not None and result.failed.error.message == "nope"
    assert result.failed.error.type == "RuntimeError"
    assert "RuntimeError: nope" in (result.failed.error.traceback or "")
    assert result.summary.error_message == "nope" and result.summary.attempts == 3


async def test_retry_succeeds_on_a_later_attempt(make_jobs: Factory) -> None:
    async with make_jobs(commands=[FailCommand]) as jobs:
        ref = await jobs.enqueue_command(FailCommand, Fail(succeed_on_attempt=2))
        result = await jobs.wait_for_job(ref.id)
    assert result.state is JobState.COMPLETED
    assert result.completed is not None and result.completed.attempts == 2
    # the first attempt's error no longer shows in the summary
    assert result.summary.error_code is None and result.summary.error_message is None


async def test_zero_retry_limit_fails_after_one_attempt(make_jobs: Factory) -> None:
    async with make_jobs(commands=[FailCommand], default_retry_limit=0) as jobs:
        ref = await jobs.enqueue_command(FailCommand, Fail())
        result = await jobs.wait_for_job(ref.id)
    assert result.failed is not None and result.failed.attempts == 1


async def test_retry_waits_for_the_backoff(make_jobs: Factory) -> None:
    async with make_jobs(commands=[FailCommand], retry_delay=timedelta(seconds=30)) as jobs:
        ref = await jobs.enqueue_command(FailCommand, Fail())
        with anyio.fail_after(10):
            while True:
                result = await jobs.get_job(ref.id)
                assert result is not None
                if (
                    result.queued is not None
                    and result.queued.attempts == 1
                    and (result.queued.state is JobState.QUEUED)
                ):
                    break
                await anyio.sleep(0.02)
        queued = result.queued
        assert queued is not None and queued.run_after is not None
        delay = queued.run_after - datetime.now(UTC)
        # base 30 s with jitter in [0.5, 1.0]
        assert timedelta(seconds=10) < delay <= timedelta(seconds=30)
        assert queued.error is not None and queued.error.message == "boom"


async def test_a_delayed_job_starts_when_due_not_at_the_next_poll(make_jobs: Factory) -> None:
    """Each claim learns from the database when the next delayed job is due, and the runtime
    wakes for it; its next poll is 30 s away."""
    async with make_jobs(commands=[AddCommand], poll_interval=timedelta(seconds=30)) as jobs:
        due = datetime.now(UTC) + timedelta(milliseconds=500)
        ref = await jobs.enqueue_command(AddCommand, Add(1, 2), JobOptions(run_after=due))
        with anyio.fail_after(5):
            result = await jobs.wait_for_job(ref.id)
    assert result.completed is not None and result.completed.started_date is not None
    # not before it is due (as the process's clock reads the claim's time)
    assert result.completed.started_date > due - timedelta(milliseconds=50)


async def test_a_retry_starts_when_its_backoff_ends(make_jobs: Factory) -> None:
    async with make_jobs(
        commands=[FailCommand],
        poll_interval=timedelta(seconds=30),
        retry_delay=timedelta(milliseconds=600),
    ) as jobs:
        ref = await jobs.enqueue_command(FailCommand, Fail(succeed_on_attempt=2))
        with anyio.fail_after(5):
            result = await jobs.wait_for_job(ref.id)
    assert result.completed is not None and result.completed.attempts == 2
    started, created = result.completed.started_date, result.completed.created_date
    assert started is not None and started - created >= timedelta(milliseconds=300)  # jitter


async def test_timeout_fails_the_attempt(make_jobs: Factory) -> None:
    async with make_jobs(commands=[SleepCommand]) as jobs:
        options = JobOptions(timeout=timedelta(milliseconds=200), retry_limit=1)
        ref = await jobs.enqueue_command(SleepCommand, Sleep(30), options)
        with anyio.fail_after(10):
            result = await jobs.wait_for_job(ref.id)
    assert result.failed is not None
    assert result.failed.error_code == "Timeout" and result.failed.attempts == 2
    assert result.failed.error is not None and "timed out" in result.failed.error.message


async def test_default_timeout_applies(make_jobs: Factory) -> None:
    async with make_jobs(
        commands=[SleepCommand], default_timeout=timedelta(milliseconds=100),
        default_retry_limit=0,
    ) as jobs:  # fmt: skip
        ref = await jobs.enqueue_command(SleepCommand, Sleep(30))
        with anyio.fail_after(10):
            result = await jobs.wait_for_job(ref.id)
    assert result.failed is not None and result.failed.error_code == "Timeout"
    assert result.failed.timeout_secs == pytest.approx(0.1)


async def test_run_after_delays_a_job(make_jobs: Factory) -> None:
    async with make_jobs(commands=[AddCommand]) as jobs:
        start = datetime.now(UTC)
        options = JobOptions(run_after=start + timedelta(seconds=2))
        ref = await jobs.enqueue_command(AddCommand, Add(1, 1), options)
        await anyio.sleep(0.3)
        early = await jobs.get_job(ref.id)
        assert early is not None and early.state is JobState.QUEUED
        with anyio.fail_after(10):
            result = await jobs.wait_for_job(ref.id)
    assert result.completed is not None and result.completed.started_date is not None
    # not before it is due: the database judges that by its clock, and the start time is the
    # process's reading from just before the claim was sent
    assert result.completed.started_date > start + timedelta(seconds=2, milliseconds=-50)


async def test_cancel_queued_job_never_runs(make_jobs: Factory) -> None:
    EVENTS.clear()
    async with make_jobs(commands=[SleepCommand]) as jobs:
        due = datetime.now(UTC) + timedelta(seconds=2)
        ref = await jobs.enqueue_command(
            SleepCommand, Sleep(0, label="never"), JobOptions(run_after=due)
        )
        assert await jobs.cancel_job(ref.id) is True
        result = await jobs.wait_for_job(ref.id)
        assert result.state is JobState.CANCELLED
        await anyio.sleep(max(0.0, (due - datetime.now(UTC)).total_seconds() + 0.5))  # past due
        assert await jobs.cancel_job(ref.id) is False  # already final
    assert result.failed is not None and result.failed.attempts == 0
    assert [label for _, label, _ in EVENTS if label == "never"] == []


async def test_cancel_running_job_is_not_retried(make_jobs: Factory) -> None:
    EVENTS.clear()
    async with make_jobs(commands=[SleepCommand]) as jobs:
        ref = await jobs.enqueue_command(SleepCommand, Sleep(30, label="long"))
        with anyio.fail_after(10):
            while ("start", "long") not in [(e[0], e[1]) for e in EVENTS]:
                await anyio.sleep(0.01)
        assert await jobs.cancel_job(ref.id) is True
        with anyio.fail_after(5):
            result = await jobs.wait_for_job(ref.id)
    assert result.state is JobState.CANCELLED
    assert result.failed is not None and result.failed.attempts == 1
    assert result.failed.error_code == "Cancelled"


async def test_a_running_job_counts_as_cancelled_once_however_often_asked(
    make_jobs: Factory,
) -> None:
    """A sync command ends only when it returns: its cancel stays pending meanwhile, and
    cancelling it again (a second click, a bulk cancel) cancels nothing more."""
    from asyncjobs import SyncCommand, cancellation_requested

    started, asked = threading.Event(), threading.Event()

    class Slow(SyncCommand[Add]):
        def run(self, request: Add) -> None:
            started.set()
            asked.wait(10)  # looks only at the end, once all three were asked
            assert cancellation_requested()

    async with make_jobs(commands=[Slow]) as jobs:
        ref = await jobs.enqueue_command(Slow, Add(0, 0))
        with anyio.fail_after(10):
            while not started.is_set():
                await anyio.sleep(0.01)
        assert await jobs.cancel_job(ref.id) is True
        assert await jobs.cancel_job(ref.id) is False
        assert await jobs.cancel_jobs(state=JobState.STARTED) == 0
        asked.set()
        with anyio.fail_after(10):
            result = await jobs.wait_for_job(ref.id)
    assert result.state is JobState.CANCELLED


async def test_cancel_jobs_by_worker_and_state(make_jobs: Factory) -> None:
    async with make_jobs(commands=[AddCommand], execute=False) as jobs:
        refs = [
            await jobs.enqueue_command(
                AddCommand, Add(i, i), JobOptions(worker="a" if i < 3 else "b")
            )
            for i in range(5)
        ]
        assert await jobs.cancel_jobs(worker="a") == 3
        states = [(await jobs.get_job(r.id)).state for r in refs]  # type: ignore[union-attr]
        assert states == [JobState.CANCELLED] * 3 + [JobState.QUEUED] * 2
        assert await jobs.cancel_jobs(state=JobState.QUEUED) == 2


async def test_requeue_failed_job_runs_again_with_same_id(make_jobs: Factory) -> None:
    async with make_jobs(commands=[FailCommand], default_retry_limit=1) as jobs:
        ref = await jobs.enqueue_command(FailCommand, Fail(succeed_on_attempt=3))
        first = await jobs.wait_for_job(ref.id)
        assert first.state is JobState.FAILED and first.failed is not None
        assert first.failed.attempts == 2
        await jobs.requeue_failed_job(ref.id)
        # A fresh retry budget: attempts restart at 1, so attempt 3 (which would succeed)
        # never comes, and it fails again after two more runs.
        result = await jobs.wait_for_job(ref.id)
    assert result.state is JobState.FAILED and result.failed is not None
    assert result.failed.id == ref.id and result.failed.attempts == 2
    assert first.failed.completed_date is not None and result.failed.completed_date is not None
    assert result.failed.completed_date > first.failed.completed_date  # it ran again


async def test_requeues_of_a_failed_job_at_once_requeue_it_once(make_jobs: Factory) -> None:
    """Clicks on Requeue, or processes, at once: one requeues, the others are told the job is
    no longer failed (whether they read it failed, or found its archived row gone)."""
    async with make_jobs(commands=[FailCommand], default_retry_limit=0) as jobs:
        refs = [await jobs.enqueue_command(FailCommand, Fail()) for _ in range(5)]
        for ref in refs:
            assert (await jobs.wait_for_job(ref.id)).state is JobState.FAILED
    async with (
        make_jobs(commands=[FailCommand], execute=False) as one,
        make_jobs(commands=[FailCommand], execute=False) as other,
    ):
        outcomes: dict[int, list[str]] = {ref.id: [] for ref in refs}

        async def requeue(jobs: BackgroundJobs, job_id: int) -> None:
            try:
                await jobs.requeue_failed_job(job_id)
            except InvalidJobStateError:
                outcomes[job_id].append("refused")
            else:
                outcomes[job_id].append("requeued")

        for ref in refs:
            async with anyio.create_task_group() as group:
                for i in range(6):
                    group.start_soon(requeue, (one, other)[i % 2], ref.id)
        states = [(await one.get_job(ref.id)).state for ref in refs]  # type: ignore[union-attr]
    assert [sorted(found) for found in outcomes.values()] == [["refused"] * 5 + ["requeued"]] * 5
    assert states == [JobState.QUEUED] * 5


async def test_requeue_rejects_active_and_unknown_jobs(make_jobs: Factory) -> None:
    from asyncjobs.exceptions import JobNotFoundError

    async with make_jobs(commands=[AddCommand], execute=False) as jobs:
        ref = await jobs.enqueue_command(AddCommand, Add(1, 1))
        with pytest.raises(InvalidJobStateError, match="only failed or cancelled"):
            await jobs.requeue_failed_job(ref.id)
        with pytest.raises(JobNotFoundError):
            await jobs.requeue_failed_job(ref.id + 1000)


async def test_requeued_cancelled_job_completes(make_jobs: Factory) -> None:
    async with make_jobs(commands=[AddCommand]) as jobs:
        options = JobOptions(run_after=datetime.now(UTC) + timedelta(hours=1))
        ref = await jobs.enqueue_command(AddCommand, Add(4, 4), options)
        await jobs.cancel_job(ref.id)
        await jobs.requeue_failed_job(ref.id)
        result = await jobs.wait_for_job(ref.id)
    assert result.state is JobState.COMPLETED and result.completed is not None
    assert result.completed.response_body == '{"total":8}'


async def test_priority_then_age_order(make_jobs: Factory) -> None:
    EVENTS.clear()
    async with make_jobs(commands=[SleepCommand], execute=False) as producer:
        for label, priority in [("a", 0), ("b", 5), ("c", 0), ("d", 5), ("e", 9)]:
            await producer.enqueue_command(
                SleepCommand, Sleep(0, label=label), JobOptions(priority=priority)
            )
    async with make_jobs(commands=[SleepCommand], max_concurrency=1) as jobs:
        with anyio.fail_after(10):
            while len([e for e in EVENTS if e[0] == "end"]) < 5:
                await anyio.sleep(0.01)
        del jobs
    assert [label for event, label, _ in EVENTS if event == "start"] == ["e", "b", "d", "a", "c"]


async def test_duplicate_ref_id_is_a_clear_error(make_jobs: Factory) -> None:
    async with make_jobs(commands=[AddCommand], execute=False) as jobs:
        await jobs.enqueue_command(AddCommand, Add(1, 1), JobOptions(ref_id="same"))
        with pytest.raises(DuplicateRefIdError, match="same"):
            await jobs.enqueue_command(AddCommand, Add(1, 1), JobOptions(ref_id="same"))
        # nothing was half-written by the failed enqueue
        assert len(await jobs.store.select_job_ids(None, None)) == 1
        batch = [(AddCommand, Add(i, 1), JobOptions(ref_id=f"new-{i}")) for i in range(6)]
        batch.append((AddCommand, Add(1, 1), JobOptions(ref_id="same")))
        with pytest.raises(DuplicateRefIdError, match=r"one of the batch's ref_ids \(new-0,"):
            await jobs.enqueue_many(batch)
        assert len(await jobs.store.select_job_ids(None, None)) == 1


async def test_bulk_cancel_and_task_removal_refuse_what_names_nothing(make_jobs: Factory) -> None:
    """A state that is no state, or a name no database could hold, is a clear error rather
    than a driver's (or a silent 0)."""
    async with make_jobs(commands=[AddCommand], execute=False) as jobs:
        ref = await jobs.enqueue_command(AddCommand, Add(1, 1))
        with pytest.raises(InvalidOptionsError, match="state must be one of Queued, "):
            await jobs.cancel_jobs(state="queued")  # type: ignore[arg-type]
        for worker in ("a\x00b", 5, "w" * 256):
            with pytest.raises(InvalidOptionsError, match="worker"):
                await jobs.cancel_jobs(worker=worker)  # type: ignore[arg-type]
        for name in ("a\x00b", 5):
            with pytest.raises(ConfigurationError, match="no recurring task could have"):
                await jobs.delete_recurring_task(name)  # type: ignore[arg-type]
        assert await jobs.cancel_jobs(state="Queued") == 1  # type: ignore[arg-type]
        result = await jobs.get_job(ref.id)
        assert result is not None and result.state is JobState.CANCELLED


class PaddedWorkerCommand(AsyncCommand[Add]):
    worker = "w "

    async def run(self, request: Add) -> None:
        pass


async def test_names_differing_by_a_trailing_space_are_not_taken_for_each_other(
    make_jobs: Factory,
) -> None:
    """MySQL compares text without trailing spaces: "x " would find or collide with "x"
    there and not elsewhere. Such names are refused, and looked up as the nothing they are."""
    async with make_jobs(commands=[AddCommand], execute=False) as jobs:
        await jobs.enqueue_command(AddCommand, Add(1, 1), JobOptions(ref_id="order-1"))
        assert await jobs.get_job_by_ref_id("order-1 ") is None
        with pytest.raises(InvalidOptionsError, match="must not end with a space"):
            await jobs.enqueue_command(AddCommand, Add(1, 1), JobOptions(ref_id="order-1 "))
        with pytest.raises(ConfigurationError, match="must not end with a space"):
            await jobs.recurring_command(AddCommand, Schedule.hourly, Add(1, 1), name="report ")
    with pytest.raises(RegistrationError, match=r"PaddedWorkerCommand\.worker: .* space"):
        make_jobs(commands=[PaddedWorkerCommand])


def test_commands_must_be_a_list() -> None:
    with pytest.raises(ConfigurationError, match="commands must be a list"):
        BackgroundJobs("sqlite:///unused.db", commands=AddCommand)  # type: ignore[arg-type]


async def test_enqueue_many_keeps_each_jobs_command_options_and_request(
    make_jobs: Factory,
) -> None:
    """A batch mixing commands and options objects: jobs sharing both share the work of
    building them, never their request, ref id or another pair's options."""
    tagged = JobOptions(tag="t", priority=3, args={"k": "v"})
    named = JobOptions(worker="w", batch_id="b")
    items = [
        (AddCommand, Add(1, 1), tagged), (SleepCommand, Sleep(0.5), tagged),
        (AddCommand, Add(2, 2), named), (AddCommand, Add(3, 3), tagged),
        (AddCommand, Add(4, 4)), (SleepCommand, Sleep(0.25), named),
    ]  # fmt: skip
    async with make_jobs(commands=[AddCommand, SleepCommand], execute=False) as jobs:
        refs = await jobs.enqueue_many(items)
        stored = [await jobs.get_job(ref.id) for ref in refs]
    assert len({ref.ref_id for ref in refs}) == len(items)
    for item, ref, result in zip(items, refs, stored, strict=True):
        assert result is not None and result.queued is not None
        job, options = result.queued, item[2] if len(item) == 3 else JobOptions()
        assert job.ref_id == ref.ref_id and job.command == item[0].__name__
        assert job.request == type(item[1]).__name__
        assert job.request_body == encode(item[1])
        assert (job.tag, job.priority, job.args) == (options.tag, options.priority, options.args)
        assert (job.worker, job.batch_id) == (options.worker, options.batch_id)


async def test_a_bad_request_in_a_batch_stores_none_of_it(make_jobs: Factory) -> None:
    async with make_jobs(commands=[AddCommand], execute=False) as jobs:
        with pytest.raises(SerializationError, match="expected a request of type Add"):
            await jobs.enqueue_many([(AddCommand, Add(1, 1)), (AddCommand, Sleep(1.0))])
        with pytest.raises(SerializationError, match="needs a request"):
            await jobs.enqueue_many([(AddCommand, Add(1, 1)), (AddCommand, None)])
        assert await jobs.store.select_job_ids(None, None) == []


async def test_bad_input_errors(make_jobs: Factory) -> None:
    class NotJson:
        pass

    async with make_jobs(commands=[AddCommand], execute=False) as jobs:
        with pytest.raises(RegistrationError, match="unknown command 'Nope'"):
            await jobs.enqueue_command("Nope", Add(1, 1))
        with pytest.raises(RegistrationError, match="no API is registered"):
            await jobs.enqueue_api(Add(1, 1))
        with pytest.raises(SerializationError, match="expected a request of type Add"):
            await jobs.enqueue_command(AddCommand, NotJson())
        with pytest.raises(SerializationError, match="needs a request"):
            await jobs.enqueue_command(AddCommand)
        assert await jobs.store.select_job_ids(None, None) == []
    with pytest.raises(InvalidOptionsError, match="retry_limit"):
        JobOptions(retry_limit=-1)
    with pytest.raises(InvalidOptionsError, match="timezone-aware"):
        JobOptions(run_after=datetime(2030, 1, 1))
    with pytest.raises(InvalidOptionsError, match="default_retry_limit"):
        make_jobs(default_retry_limit=-1)


async def test_more_bad_input_gets_typed_errors_and_stores_nothing(make_jobs: Factory) -> None:
    async with make_jobs(commands=[AddCommand, SleepCommand, PingCommand]) as jobs:
        with pytest.raises(RegistrationError, match="not NoneType"):
            await jobs.enqueue_command(None, Add(1, 1))  # type: ignore[arg-type]
        with pytest.raises(InvalidOptionsError, match="options must be JobOptions"):
            await jobs.enqueue_command(AddCommand, Add(1, 1), {"tag": "x"})  # type: ignore[arg-type]
        with pytest.raises(SerializationError, match="would not load back as Add"):
            await jobs.enqueue_command(AddCommand, Add("1", 2))  # type: ignore[arg-type]
        with pytest.raises(SerializationError, match="would not load back as Sleep"):
            await jobs.enqueue_command(SleepCommand, Sleep(float("nan")))
        with pytest.raises(SerializationError, match="takes no request"):
            await jobs.enqueue_command(PingCommand, Add(1, 1))
        for items in ([AddCommand], [(AddCommand,)], [(AddCommand, Add(1, 1), None, "x")]):
            with pytest.raises(InvalidOptionsError, match="takes \\(command, request\\)"):
                await jobs.enqueue_many(items)  # type: ignore[arg-type]
        with pytest.raises(
            InvalidOptionsError, match="of type Sleep, but AddCommand returns a Sum"
        ):
            await jobs.enqueue_command(AddCommand, Add(1, 1), JobOptions(callback="SleepCommand"))
        with pytest.raises(
            InvalidOptionsError, match="of type Sleep, but PingCommand returns nothing"
        ):
            await jobs.enqueue_command(PingCommand, None, JobOptions(callback="SleepCommand"))
        with pytest.raises(RegistrationError, match="unknown command 'Nope'"):
            await jobs.enqueue_api(Add(1, 1), JobOptions(callback="Nope"))
        assert await jobs.store.select_job_ids(None, None) == []
        assert await jobs.get_job(2**70) is None
        assert await jobs.cancel_job(2**70) is False
        with pytest.raises(JobNotFoundError):
            await jobs.wait_for_job(2**70)
        with pytest.raises(JobNotFoundError):
            await jobs.requeue_failed_job(-(2**70))
        with pytest.raises(InvalidOptionsError, match="a job id is an int"):
            await jobs.get_job("1")  # type: ignore[arg-type]
        with pytest.raises(InvalidOptionsError, match="ref_id must be a non-empty string"):
            await jobs.get_job_by_ref_id(7)  # type: ignore[arg-type]
        assert await _ping(jobs) == JobState.COMPLETED  # the runtime is none the worse


async def _ping(jobs: BackgroundJobs) -> JobState:
    ref = await jobs.enqueue_command(PingCommand)
    with anyio.fail_after(10):
        return (await jobs.wait_for_job(ref.id)).state


async def test_unserializable_request_is_rejected(make_jobs: Factory) -> None:
    async with make_jobs(commands=[AddCommand], execute=False) as jobs:
        with pytest.raises(SerializationError, match="cannot store"):
            await jobs.enqueue_command(AddCommand, Add(object(), 1))  # type: ignore[arg-type]


async def test_execute_false_only_enqueues(make_jobs: Factory) -> None:
    async with make_jobs(commands=[AddCommand], execute=False) as jobs:
        ref = await jobs.enqueue_command(AddCommand, Add(1, 1))
        await anyio.sleep(0.3)
        result = await jobs.get_job(ref.id)
    assert result is not None and result.state is JobState.QUEUED


async def test_local_enqueue_starts_without_waiting_for_a_poll(make_jobs: Factory) -> None:
    async with make_jobs(commands=[AddCommand], poll_interval=timedelta(seconds=30)) as jobs:
        await anyio.sleep(0.1)  # the dispatcher is now asleep for 30 s
        with anyio.fail_after(10):  # (the poll is 30 s away)
            ref = await jobs.enqueue_command(AddCommand, Add(1, 1))
            result = await jobs.wait_for_job(ref.id)
    assert result.state is JobState.COMPLETED


#: what CaptureCommand saw of its job, a copy per run
CAPTURED: list[BackgroundJob] = []


class CaptureCommand(AsyncCommand[Sleep]):
    async def run(self, request: Sleep) -> None:
        CAPTURED.append(dataclasses.replace(current_job()))
        await anyio.sleep(request.seconds)


async def test_a_job_enqueued_alone_is_stored_as_one_from_a_batch(make_jobs: Factory) -> None:
    """One job and a batch are inserted by different queries: every column and the summary
    must come out the same."""
    options = JobOptions(
        parent_id=7, created_by="alice", retry_limit=4, timeout=timedelta(seconds=90),
        reply_to="https://example.invalid/hook", tag="t", batch_id="b", args={"k": "v"},
        meta={"n": 1}, priority=2, worker="solo", run_after=datetime(2031, 1, 1, tzinfo=UTC),
        user_id="u1",
    )  # fmt: skip
    async with make_jobs(commands=[CaptureCommand], execute=False) as jobs:
        alone = await jobs.enqueue_command(CaptureCommand, Sleep(1.0), options)
        batch = await jobs.enqueue_many([(CaptureCommand, Sleep(1.0), options)] * 2)
        results = [await jobs.get_job(ref.id) for ref in [alone, *batch]]
    rows = [r.queued for r in results if r is not None and r.queued is not None]
    summaries = [r.summary for r in results if r is not None]
    assert len(rows) == len(summaries) == 3
    assert rows[0].ref_id == alone.ref_id and rows[0].worker == "solo"
    assert rows[0].state is JobState.QUEUED and rows[0].args == {"k": "v"}
    assert rows[0].run_after == datetime(2031, 1, 1, tzinfo=UTC)
    differ = {"id", "ref_id", "created_date"}
    for name in (f.name for f in dataclasses.fields(BackgroundJob)):
        if name not in differ:
            assert getattr(rows[0], name) == getattr(rows[1], name), name
    for name in (f.name for f in dataclasses.fields(JobSummary)):
        if name not in differ:
            assert getattr(summaries[0], name) == getattr(summaries[1], name), name
    assert summaries[0].id == alone.id and summaries[0].ref_id == alone.ref_id


@pytest.mark.parametrize("count", [1, 3], ids=["one job", "a batch"])
async def test_a_job_started_at_once_sees_its_row_as_stored(make_jobs: Factory, count: int) -> None:
    """A job this process enqueues and starts at once is built from what was inserted, not
    read back: it must match the stored row field for field, and its summary the row. (One job
    and a batch are inserted by different queries.)"""
    CAPTURED.clear()
    options = JobOptions(
        parent_id=7, created_by="alice", retry_limit=4, timeout=timedelta(seconds=90),
        reply_to="https://example.invalid/hook", tag="t", batch_id="b", args={"k": "v"},
        meta={"n": 1, "when": datetime(2030, 1, 2, tzinfo=UTC)}, priority=2,
    )  # fmt: skip
    async with make_jobs(commands=[CaptureCommand], poll_interval=timedelta(seconds=30)) as jobs:
        await anyio.sleep(0.1)  # the dispatcher is asleep: only a start at once runs it soon
        refs = await jobs.enqueue_many([(CaptureCommand, Sleep(1.0), options)] * count)
        with anyio.fail_after(10):  # (the poll is 30 s away)
            while len(CAPTURED) < count:
                await anyio.sleep(0.01)
        results = [await jobs.get_job(ref.id) for ref in refs]
    runtime_only = {"parent_job", "user", "request_object", "result"}
    summary_fields = {f.name for f in dataclasses.fields(JobSummary)}
    seen_by_id = {job.id: job for job in CAPTURED}
    assert sorted(seen_by_id) == sorted(ref.id for ref in refs)
    for ref, result in zip(refs, results, strict=True):
        assert result is not None and result.queued is not None
        seen, stored = seen_by_id[ref.id], result.queued
        assert seen.ref_id == ref.ref_id
        assert seen.state is JobState.STARTED and seen.attempts == 1
        assert seen.meta == {"n": 1, "when": "2030-01-02T00:00:00Z"}  # as JSON keeps it
        for name in (f.name for f in dataclasses.fields(BackgroundJob)):
            if name not in runtime_only:
                assert getattr(seen, name) == getattr(stored, name), name
            if name in summary_fields:
                assert getattr(result.summary, name) == getattr(stored, name), name


async def test_graceful_shutdown_requeues_unfinished_jobs(make_jobs: Factory) -> None:
    EVENTS.clear()
    async with make_jobs(
        commands=[SleepCommand], shutdown_grace=timedelta(milliseconds=200)
    ) as jobs:
        quick = await jobs.enqueue_command(SleepCommand, Sleep(0.05, label="quick"))
        slow = await jobs.enqueue_command(SleepCommand, Sleep(30, label="slow"))
        with anyio.fail_after(10):
            while ("start", "slow") not in [(e[0], e[1]) for e in EVENTS]:
                await anyio.sleep(0.01)
    async with make_jobs(commands=[SleepCommand], execute=False) as reader:
        quick_result = await reader.get_job(quick.id)
        slow_result = await reader.get_job(slow.id)
    assert quick_result is not None and quick_result.state is JobState.COMPLETED
    assert slow_result is not None and slow_result.queued is not None
    assert slow_result.queued.state is JobState.QUEUED
    assert slow_result.queued.error_code == "Shutdown"


async def test_a_sync_command_that_stops_when_asked_by_a_shutdown_is_requeued(
    make_jobs: Factory,
) -> None:
    """It returns normally, but it stopped because it was asked: its work may be undone, so
    the job goes back to the queue, not to Completed."""
    EVENTS.clear()
    async with make_jobs(
        commands=[SyncStopsWhenAskedCommand], shutdown_grace=timedelta(milliseconds=200)
    ) as jobs:
        ref = await jobs.enqueue_command(SyncStopsWhenAskedCommand, Sleep(30, label="asked"))
        with anyio.fail_after(10):
            while ("start", "asked") not in [(e[0], e[1]) for e in EVENTS]:
                await anyio.sleep(0.01)
    assert ("end", "asked") in [(e[0], e[1]) for e in EVENTS]
    async with make_jobs(commands=[SyncStopsWhenAskedCommand], execute=False) as reader:
        result = await reader.get_job(ref.id)
    assert result is not None and result.queued is not None
    assert result.queued.state is JobState.QUEUED
    assert result.queued.error_code == "Shutdown"


async def no_claim_in_flight(jobs: BackgroundJobs) -> None:
    """Wait until no claim is in flight: one (the dispatcher's polls) holds every free slot,
    and jobs would not start at once. Nothing may await between this and the enqueue's check."""
    while jobs._reserved:
        await anyio.sleep(0.001)


async def test_an_error_in_the_body_propagates_unwrapped(make_jobs: Factory) -> None:
    async def failing_body() -> None:
        async with make_jobs(commands=[AddCommand]) as jobs:
            await jobs.enqueue_command(AddCommand, Add(1, 1))
            raise KeyError("from the body")

    with pytest.raises(KeyError, match="from the body"):
        await failing_body()


# Without the fix shutdown waits forever, shielded: only a thread can end the test.
@pytest.mark.timeout(30, method="thread")
async def test_a_cancelled_host_gives_back_jobs_an_idle_runner_was_woken_for(
    make_jobs: Factory,
) -> None:
    """The host is cancelled just as an enqueue's jobs are inserted started; they go to an idle
    runner (woken, but cancelled before it takes one) and to new runners. The cancelled runner
    must give back every job still waiting: no other runner may come for them, and shutdown
    would wait forever for jobs nobody runs."""
    with anyio.fail_after(20):
        with anyio.CancelScope() as host:
            quiet = timedelta(seconds=30)  # the dispatcher claims only when woken
            async with make_jobs(commands=[SleepCommand], poll_interval=quiet) as jobs:
                first = await jobs.enqueue_command(SleepCommand, Sleep(0.0))
                await jobs.wait_for_job(first.id)  # its runner is idle now
                await no_claim_in_flight(jobs)
                insert_started = jobs.store.enqueue_started
                inserted: list[Any] = []

                async def insert_then_cancel_host(*args: Any, **kwargs: Any) -> Any:
                    inserted.extend(await insert_started(*args, **kwargs))
                    host.cancel()
                    return inserted

                jobs.store.enqueue_started = insert_then_cancel_host  # type: ignore[method-assign]
                refs = await jobs.enqueue_many([(SleepCommand, Sleep(5.0)) for _ in range(5)])
                assert len(inserted) == 5, "the jobs were not started at once"
                await anyio.sleep(10)
        assert host.cancelled_caught
        async with make_jobs(commands=[SleepCommand], execute=False) as reader:
            done = await reader.get_job(first.id)
            results = [await reader.get_job(ref.id) for ref in refs]
    assert done is not None and done.state is JobState.COMPLETED
    assert [r.summary.state for r in results if r is not None] == [JobState.QUEUED] * 5


async def test_a_cancelled_host_gives_back_every_started_job(make_jobs: Factory) -> None:
    """The application's task is cancelled right after jobs were started at once, before any
    runner took them: the runtime still shuts down, and every job is back in the queue."""
    with anyio.fail_after(20):
        with anyio.CancelScope() as host:
            async with make_jobs(commands=[SleepCommand]) as jobs:
                await anyio.sleep(0.1)
                await no_claim_in_flight(jobs)
                refs = await jobs.enqueue_many([(SleepCommand, Sleep(5.0)) for _ in range(5)])
                assert jobs.statistics()["running"] == 5
                host.cancel()
                await anyio.sleep(10)
        assert host.cancelled_caught
        async with make_jobs(commands=[SleepCommand], execute=False) as reader:
            results = [await reader.get_job(ref.id) for ref in refs]
    assert all(r is not None and r.queued is not None for r in results)
    assert [r.summary.state for r in results if r is not None] == [JobState.QUEUED] * 5
    # none of them ran: the attempt their start counted is given back
    assert [r.queued.attempts for r in results if r is not None and r.queued] == [0] * 5


async def test_a_shutdown_waits_for_jobs_an_enqueue_is_starting_here(
    make_jobs: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runtime stops while another task's enqueue is inserting jobs that start here: the
    enqueue returns them, and the shutdown hands them back to the queue (it does not leave them
    Started under a node that is gone)."""
    quiet = timedelta(seconds=30)  # no poll claims the free slots before the enqueue runs
    jobs = make_jobs(
        commands=[SleepCommand], shutdown_grace=timedelta(seconds=0.2), poll_interval=quiet
    )
    inserted, release = anyio.Event(), anyio.Event()
    refs: list[Any] = []

    async def enqueue() -> None:
        refs.append(await jobs.enqueue_command(SleepCommand, Sleep(30, "in-flight")))

    async def release_soon() -> None:
        await anyio.sleep(0.3)  # well into the shutdown
        release.set()

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg, jobs:  # the group outlives the runtime
            await anyio.sleep(0.1)  # the first claim found the queue empty
            await no_claim_in_flight(jobs)
            real_insert = jobs.store.enqueue_started

            async def insert_slowly(*args: Any, **kwargs: Any) -> Any:
                started = await real_insert(*args, **kwargs)
                inserted.set()
                await release.wait()
                return started

            monkeypatch.setattr(jobs.store, "enqueue_started", insert_slowly)
            tg.start_soon(enqueue)
            await inserted.wait()
            tg.start_soon(release_soon)
    async with make_jobs(commands=[SleepCommand], execute=False) as reader:
        result = await reader.get_job(refs[0].id)
    assert result is not None and result.summary.state is JobState.QUEUED


async def test_a_transient_job_gets_the_shutdown_grace_too(make_jobs: Factory) -> None:
    EVENTS.clear()
    async with make_jobs(commands=[SleepCommand], shutdown_grace=timedelta(seconds=5)) as jobs:
        job = await jobs.run_command(SleepCommand, Sleep(0.3, label="graced"))
        await anyio.sleep(0.05)  # (it started)
    assert job.state is JobState.COMPLETED  # it ended within the grace, not cancelled at once
    assert ("end", "graced") in [(e[0], e[1]) for e in EVENTS]


async def _transient_sleep_task(jobs: BackgroundJobs, name: str, cron: str) -> None:
    """A recurring task that runs SleepCommand transiently, its events labelled ``name``."""
    await jobs.recurring_command(
        SleepCommand, Schedule.cron(cron), Sleep(0, label=name),
        name=name, options=JobOptions(run_command=True),
    )  # fmt: skip


async def test_a_job_finishing_in_the_shutdowns_grace_enqueues_and_reads(
    make_jobs: Factory,
) -> None:
    """A job still running when the shutdown begins ends within the grace as it would have
    otherwise: its follow-up job is stored (and waits in the queue: nothing starts here now),
    and it can read jobs. The follow-up runs in the next process."""
    EVENTS.clear()
    follow_ups: list[int] = []
    shutdown_began = anyio.Event()

    class EnqueuesWhenDone(AsyncCommand[Add]):
        def __init__(self, jobs: BackgroundJobs) -> None:
            self.jobs = jobs

        async def run(self, request: Add) -> None:
            EVENTS.append(("start", "first", time.monotonic()))
            await shutdown_began.wait()
            await anyio.sleep(0.2)  # well inside the exit
            ref = await self.jobs.enqueue_command(SleepCommand, Sleep(0, label="follow-up"))
            found = await self.jobs.get_job(ref.id)
            assert found is not None and found.state is JobState.QUEUED
            follow_ups.append(ref.id)
            with pytest.raises(ConfigurationError, match="shutting down"):
                await self.jobs.run_scheduled_task("transient")  # nothing starts here now

    commands = [EnqueuesWhenDone, SleepCommand]
    jobs = make_jobs(commands=commands, shutdown_grace=timedelta(seconds=5))
    jobs.services[BackgroundJobs] = jobs
    async with jobs:
        await _transient_sleep_task(jobs, "transient", "0 0 1 1 *")
        first = await jobs.enqueue_command(EnqueuesWhenDone, Add(1, 1))
        with anyio.fail_after(10):
            while ("start", "first") not in [(e[0], e[1]) for e in EVENTS]:
                await anyio.sleep(0.01)
        shutdown_began.set()
    async with make_jobs(commands=commands, execute=False) as reader:
        done = await reader.get_job(first.id)
        assert done is not None and done.state is JobState.COMPLETED
        assert len(follow_ups) == 1
        waiting = await reader.get_job(follow_ups[0])
        assert waiting is not None and waiting.state is JobState.QUEUED
    async with make_jobs(commands=commands) as later:
        with anyio.fail_after(10):
            ran = await later.wait_for_job(follow_ups[0])
    assert ran.state is JobState.COMPLETED


@pytest.mark.dialects("sqlite")
async def test_a_shutdown_names_the_jobs_that_ignore_being_stopped(
    make_jobs: Factory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """It cannot end them (that would orphan their tasks), so it waits, and says for what."""
    monkeypatch.setattr(asyncjobs.runtime, "_STUCK_JOB_REPORT_EVERY", 0.2)
    EVENTS.clear()
    released = anyio.Event()

    class Stubborn(AsyncCommand[Add]):
        async def run(self, request: Add) -> None:
            EVENTS.append(("start", "stubborn", time.monotonic()))
            while not released.is_set():
                try:
                    await anyio.sleep(0.01)
                except anyio.get_cancelled_exc_class():
                    continue  # the mistake: swallowed, again and again

    async def release_once_named() -> None:
        try:
            with anyio.move_on_after(10):
                while not [r for r in caplog.records if "has not ended" in r.getMessage()]:
                    await anyio.sleep(0.02)
        finally:
            released.set()  # named or not, the shutdown may end

    jobs = make_jobs(commands=[Stubborn], shutdown_grace=timedelta(0))
    async with anyio.create_task_group() as tg, jobs:
        ref = await jobs.enqueue_command(Stubborn, Add(1, 1))
        with anyio.fail_after(10):
            while ("start", "stubborn") not in [(e[0], e[1]) for e in EVENTS]:
                await anyio.sleep(0.01)
        tg.start_soon(release_once_named)
    named = [r for r in caplog.records if "has not ended" in r.getMessage()]
    assert named, "the shutdown waited without a word"
    assert named[0].levelname == "ERROR"
    assert f"job {ref.id} (Stubborn) has not ended" in named[0].getMessage()


async def test_no_transient_job_starts_once_the_shutdown_began(make_jobs: Factory) -> None:
    """The scheduler stops first, and a transient job asked for meanwhile (here by a job's
    cleanup) ends Cancelled without starting: nothing starts that the shutdown would not
    wait for."""
    EVENTS.clear()
    late: list[BaseException] = []

    class SlowToStop(AsyncCommand[Add]):
        def __init__(self, jobs: BackgroundJobs) -> None:
            self.jobs = jobs

        async def run(self, request: Add) -> None:
            EVENTS.append(("start", "slow", time.monotonic()))
            try:
                await anyio.sleep(30)
            finally:
                with anyio.CancelScope(shield=True):
                    try:
                        await self.jobs.run_command(SleepCommand, Sleep(0, label="late"))
                    except ConfigurationError as exc:
                        late.append(exc)
                    await anyio.sleep(2.5)  # the shutdown waits for this

    jobs = make_jobs(commands=[SlowToStop, SleepCommand], shutdown_grace=timedelta(seconds=0.2))
    jobs.services[BackgroundJobs] = jobs
    async with jobs:
        await _transient_sleep_task(jobs, "tick", "* * * * * *")
        await jobs.enqueue_command(SlowToStop, Add(1, 1))
        with anyio.fail_after(10):
            while ("start", "slow") not in [(e[0], e[1]) for e in EVENTS]:
                await anyio.sleep(0.01)
        stopping_from = time.monotonic()
    ticks_since = [e for e in EVENTS if e[:2] == ("start", "tick") and e[2] > stopping_from]
    assert ticks_since == []
    assert [str(exc) for exc in late] == ["the jobs runtime is shutting down"]
    assert ("start", "late") not in [(e[0], e[1]) for e in EVENTS]


async def test_a_schema_newer_than_this_version_is_named_at_start(
    make_jobs: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    """A newer asyncjobs migrated the database (a rolling upgrade half done): an older process
    goes on, and says it should be upgraded."""
    from asyncjobs.store import MIGRATIONS, utcnow

    async with make_jobs(execute=False) as jobs, jobs.dialect.transaction() as tx:
        newer = {"version": len(MIGRATIONS) + 1, "now": utcnow()}
        await tx.execute("set_schema_version", newer)
    assert "newer than this asyncjobs knows" not in caplog.text
    async with make_jobs(execute=False):
        pass
    assert f"schema is at version {len(MIGRATIONS) + 1}, newer than this asyncjobs knows" in (
        caplog.text
    )


async def test_a_cancel_that_comes_after_the_command_returned_is_not_counted(
    make_jobs: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command has returned and its outcome waits to be written: the job ends Completed,
    so the cancel that came meanwhile cancelled nothing and says so (it said True)."""
    entered, release = anyio.Event(), anyio.Event()
    async with make_jobs(commands=[AddCommand]) as jobs:
        complete_and_claim = jobs.store.complete_and_claim

        async def held(node: str, outcomes: Any, *args: Any, **kwargs: Any) -> Any:
            if outcomes:  # the finisher's write (a claim passes none)
                entered.set()
                await release.wait()
            return await complete_and_claim(node, outcomes, *args, **kwargs)

        monkeypatch.setattr(jobs.store, "complete_and_claim", held)
        ref = await jobs.enqueue_command(AddCommand, Add(1, 2))
        with anyio.fail_after(5):
            await entered.wait()
        assert await jobs.cancel_job(ref.id) is False
        release.set()
        final = await jobs.wait_for_job(ref.id)
    assert final.state is JobState.COMPLETED


async def test_a_cancel_reaches_a_job_waiting_for_its_named_worker(make_jobs: Factory) -> None:
    """A stored job claimed while a transient job of its named worker runs here waits for
    the worker; a cancel ends it at once, not when the worker is free."""
    async with make_jobs(commands=[SleepCommand]) as jobs:
        on_w = JobOptions(worker="w")
        transient = await jobs.run_command(SleepCommand, Sleep(30, label="transient"), on_w)
        ref = await jobs.enqueue_command(SleepCommand, Sleep(0, label="stored"), on_w)
        with anyio.fail_after(5):
            while (result := await jobs.get_job(ref.id)) is None or result.state is not (
                JobState.STARTED
            ):
                await anyio.sleep(0.02)
        assert await jobs.cancel_job(ref.id) is True
        with anyio.fail_after(10):  # (the transient job holding its worker runs for 30 s)
            final = await jobs.wait_for_job(ref.id)
        assert final.state is JobState.CANCELLED
        assert ("start", "stored") not in [(e[0], e[1]) for e in EVENTS]
        assert transient.state is JobState.STARTED
        assert await jobs.cancel_job(transient.id) is True


class FailsFirstThenSleeps(AsyncNoRequestCommand):
    """Attempt 1 fails after a moment; attempt 2 runs for a second."""

    starts: list[int] = []

    async def run(self) -> None:
        attempt = current_job().attempts
        FailsFirstThenSleeps.starts.append(attempt)
        await anyio.sleep(0.3 if attempt == 1 else 1.0)
        if attempt == 1:
            raise RuntimeError("first attempt fails")


async def test_the_heartbeat_stops_no_attempt_that_began_after_its_read(
    make_jobs: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    """The heartbeat reads which jobs this node holds while a job's attempt fails, is
    requeued and claimed here again: the read (without the job) speaks of the attempt that
    ended, not of the next one, which runs to its end rather than being stopped as taken
    over (and run once more). The store's calls are wrapped only to fix that order."""
    FailsFirstThenSleeps.starts = []
    jobs = make_jobs(commands=[FailsFirstThenSleeps])
    store = jobs.store
    real_held, real_finish, real_claim = store.held_jobs, store.finish, store.complete_and_claim
    job_ids: list[int] = []
    stale: list[dict[int, bool]] = []
    read_after_requeue = anyio.Event()

    async def finish(node: str, outcomes: Any) -> Any:
        report = await real_finish(node, outcomes)
        if job_ids and not stale:
            stale.append(await real_held(node))  # the heartbeat's read lands here
            read_after_requeue.set()
        return report

    async def held_jobs(node: str) -> dict[int, bool]:
        if not job_ids and jobs._running:
            job_ids.extend(jobs._running)  # the heartbeat has seen attempt 1 running
            await read_after_requeue.wait()
            while jobs._running.get(job_ids[0]) is None:  # attempt 2 runs before the reply
                await anyio.sleep(0.005)
            return stale[0]
        return await real_held(node)

    async def complete_and_claim(*args: Any, **kwargs: Any) -> Any:
        if job_ids and not read_after_requeue.is_set():  # the claim of attempt 2 comes after
            await read_after_requeue.wait()
        return await real_claim(*args, **kwargs)

    store.held_jobs, store.finish = held_jobs, finish  # type: ignore[method-assign]
    store.complete_and_claim = complete_and_claim  # type: ignore[method-assign]
    async with jobs:
        ref = await jobs.enqueue_command(FailsFirstThenSleeps, None, JobOptions(retry_limit=1))
        with anyio.fail_after(15):
            final = await jobs.wait_for_job(ref.id)
    assert stale == [{}]  # the read came between the requeue and the claim
    assert FailsFirstThenSleeps.starts == [1, 2]
    assert final.state is JobState.COMPLETED and final.summary.attempts == 2
    assert "taken over" not in caplog.text
