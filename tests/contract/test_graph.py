"""Named workers, dependencies, callbacks and transient jobs, on every dialect."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any, ClassVar

import anyio
import pytest

from asyncjobs import (
    AsyncCommand,
    AsyncCommandWithResult,
    BackgroundJobs,
    JobOptions,
    JobState,
    SyncCommand,
    cancellation_requested,
    current_job,
)
from asyncjobs.exceptions import (
    ConfigurationError,
    InvalidJobStateError,
    InvalidOptionsError,
    JobFailedError,
    JobNotFoundError,
)
from asyncjobs.store import Outcome
from tests.commands import (
    EVENTS,
    Add,
    AddCommand,
    Fail,
    FailCommand,
    SerialSleepCommand,
    Sleep,
    SleepCommand,
    Sum,
)

pytestmark = pytest.mark.anyio
Factory = Callable[..., BackgroundJobs]


def _spans(label_prefix: str) -> list[tuple[str, float, float]]:
    starts = {label: t for event, label, t in EVENTS if event == "start"}
    ends = {label: t for event, label, t in EVENTS if event == "end"}
    return sorted(
        (label, starts[label], ends[label])
        for label in starts
        if label.startswith(label_prefix) and label in ends
    )


async def test_named_worker_runs_one_at_a_time_in_enqueue_order(make_jobs: Factory) -> None:
    EVENTS.clear()
    async with make_jobs(commands=[SleepCommand]) as jobs:
        refs = [
            await jobs.enqueue_command(
                SleepCommand, Sleep(0.05, label=f"w{i:02d}"), JobOptions(worker="mailer")
            )
            for i in range(8)
        ]
        for ref in refs:
            await jobs.wait_for_job(ref.id)
    starts = [label for event, label, _ in EVENTS if event == "start"]
    assert starts == [f"w{i:02d}" for i in range(8)]
    spans = sorted(_spans("w"), key=lambda s: s[1])
    for (_, _, end), (_, next_start, _) in pairwise(spans):
        assert next_start >= end  # never overlapping


async def test_class_worker_attribute_serialises(make_jobs: Factory) -> None:
    EVENTS.clear()
    async with make_jobs(commands=[SerialSleepCommand]) as jobs:
        refs = [
            await jobs.enqueue_command(SerialSleepCommand, Sleep(0.05, label=f"s{i}"))
            for i in range(4)
        ]
        results = [await jobs.wait_for_job(r.id) for r in refs]
    assert {r.job.worker for r in results if r.job} == {"serial"}
    spans = sorted(_spans("s"), key=lambda s: s[1])
    assert [s[0] for s in spans] == ["s0", "s1", "s2", "s3"]
    assert all(b[1] >= a[2] for a, b in pairwise(spans))


async def test_unnamed_jobs_run_in_parallel(make_jobs: Factory) -> None:
    EVENTS.clear()
    async with make_jobs(commands=[SleepCommand], max_concurrency=50) as jobs:
        refs = await jobs.enqueue_many(
            (SleepCommand, Sleep(0.5, label=f"p{i:02d}")) for i in range(20)
        )
        started = anyio.current_time()
        for ref in refs:
            await jobs.wait_for_job(ref.id)
        elapsed = anyio.current_time() - started
    spans = _spans("p")
    assert len(spans) == 20
    latest_start = max(s[1] for s in spans)
    earliest_end = min(s[2] for s in spans)
    assert latest_start < earliest_end  # all 20 were running at one moment
    assert elapsed < 5  # far below 20 x 0.5 s run one by one


async def test_max_concurrency_bounds_unnamed_jobs(make_jobs: Factory) -> None:
    EVENTS.clear()
    async with make_jobs(commands=[SleepCommand], max_concurrency=3) as jobs:
        refs = await jobs.enqueue_many(
            (SleepCommand, Sleep(0.1, label=f"c{i:02d}")) for i in range(9)
        )
        for ref in refs:
            await jobs.wait_for_job(ref.id)
    points = sorted(
        [(s, 1) for _, s, _ in _spans("c")] + [(e, -1) for _, _, e in _spans("c")],
        key=lambda p: (p[0], p[1]),
    )
    running = peak = 0
    for _, delta in points:
        running += delta
        peak = max(peak, running)
    assert peak == 3


async def test_slow_named_worker_blocks_neither_other_workers_nor_unnamed_jobs(
    make_jobs: Factory,
) -> None:
    EVENTS.clear()
    async with make_jobs(commands=[SleepCommand], max_concurrency=2) as jobs:
        slow = await jobs.enqueue_command(
            SleepCommand, Sleep(30, label="slow"), JobOptions(worker="slowpoke")
        )
        await jobs.enqueue_command(
            SleepCommand, Sleep(30, label="slow2"), JobOptions(worker="slowpoke")
        )
        with anyio.fail_after(10):  # well before the slow job could end
            other = await jobs.enqueue_command(
                SleepCommand, Sleep(0, label="other"), JobOptions(worker="fast")
            )
            unnamed = await jobs.enqueue_command(SleepCommand, Sleep(0, label="free"))
            assert (await jobs.wait_for_job(other.id)).state is JobState.COMPLETED
            assert (await jobs.wait_for_job(unnamed.id)).state is JobState.COMPLETED
        await jobs.cancel_jobs(worker="slowpoke")
        del slow


async def test_dependent_runs_after_parent_and_sees_it(make_jobs: Factory) -> None:
    seen: list[tuple[int | None, int | None, str | None, str | None]] = []

    class Child(AsyncCommand[Add]):
        async def run(self, request: Add) -> None:
            job = current_job()
            parent = job.parent_job
            seen.append((
                job.depends_on, job.parent_id, parent and parent.response_body,
                parent and str(parent.state),
            ))  # fmt: skip

    async with make_jobs(commands=[AddCommand, Child, SleepCommand]) as jobs:
        # a parent that finishes after its dependent was enqueued
        slow_parent = await jobs.enqueue_command(
            AddCommand,
            Add(1, 2),
            JobOptions(run_after=datetime.now(UTC) + timedelta(seconds=2)),
        )
        child1 = await jobs.enqueue_command(Child, Add(0, 0), JobOptions(depends_on=slow_parent.id))
        await anyio.sleep(0.1)
        assert (await jobs.get_job(child1.id)).state is JobState.QUEUED  # type: ignore[union-attr]
        await jobs.wait_for_job(child1.id)
        # a parent that finished before its dependent was enqueued
        done_parent = await jobs.enqueue_command(AddCommand, Add(5, 5))
        await jobs.wait_for_job(done_parent.id)
        child2 = await jobs.enqueue_command(Child, Add(0, 0), JobOptions(depends_on=done_parent.id))
        await jobs.wait_for_job(child2.id)
        first = await jobs.get_job(child1.id)
        parent_done = await jobs.get_job(slow_parent.id)
    assert seen == [
        (slow_parent.id, slow_parent.id, '{"total":3}', "Completed"),
        (done_parent.id, done_parent.id, '{"total":10}', "Completed"),
    ]
    assert first is not None and first.completed is not None and parent_done is not None
    assert first.summary.parent_id == slow_parent.id
    assert parent_done.completed is not None and parent_done.completed.completed_date is not None
    assert first.completed.started_date is not None
    assert first.completed.started_date >= parent_done.completed.completed_date


async def test_the_recovery_releases_only_dependents_whose_parent_completed(
    make_jobs: Factory,
) -> None:
    """The periodic recovery's release of held dependents says how many it released, and
    releases none while their parent has not completed (a count it got wrong woke the
    dispatcher at every recovery)."""
    async with make_jobs(commands=[AddCommand], execute=False) as jobs:
        later = JobOptions(run_after=datetime.now(UTC) + timedelta(hours=1))
        parent = await jobs.enqueue_command(AddCommand, Add(1, 1), later)
        await jobs.enqueue_many([(AddCommand, Add(2, 2), JobOptions(depends_on=parent.id))] * 3)
        assert await jobs.store.release_dependents() == 0
        assert (await jobs.store.claim("n1", 10)).jobs == []


async def test_a_requeued_dependent_is_held_for_its_parent_as_an_enqueued_one_is(
    make_jobs: Factory,
) -> None:
    """Requeued while its parent has yet to complete, a dependent is marked held, as at its
    enqueue, so that it stays out of the claim's index (it was left in it: a mass requeue of
    such dependents cost every claim a read apiece); the parent's completion releases it. One
    requeued after its parent completed is not held."""

    async def held(job_id: int) -> bool:
        async with jobs.dialect.connection() as conn:
            (row,) = await conn.fetch("get_active_job", {"id": job_id})
        return bool(row["parent_pending"])

    async with make_jobs(commands=[AddCommand], execute=False) as jobs:
        parent = await jobs.enqueue_command(AddCommand, Add(1, 1))
        dependent = await jobs.enqueue_command(
            AddCommand, Add(2, 2), JobOptions(depends_on=parent.id)
        )
        assert await jobs.cancel_job(dependent.id)
        await jobs.requeue_failed_job(dependent.id)
        assert await held(dependent.id)
        (running,) = (await jobs.store.claim("n1", 10)).jobs
        assert running.id == parent.id
        done = Outcome(job=running, state=JobState.COMPLETED, duration_ms=1)
        claim = await jobs.store.complete_and_claim("n1", [done], 10)
        # released here (the claim in the same statement on PostgreSQL sees them next time)
        claimed = claim.jobs or (await jobs.store.claim("n1", 10)).jobs
        assert [job.id for job in claimed] == [dependent.id]
        assert not await held(dependent.id)

        after = await jobs.enqueue_command(AddCommand, Add(3, 3), JobOptions(depends_on=parent.id))
        assert await jobs.cancel_job(after.id)
        await jobs.requeue_failed_job(after.id)
        assert not await held(after.id)


async def test_a_drain_looks_at_named_workers_now_and_then_not_at_every_claim(
    make_jobs: Factory,
) -> None:
    """While a process drains a backlog claim after claim, its claims look at named workers'
    heads (a probe of every named worker with a queued job: 1 000 whose head waits cost each
    PostgreSQL claim 17 ms) at most every 0.2 s, not at every claim; a claim woken for new
    work, or after a named worker's job finished, looks. A named worker's job that comes due
    during the drain, ahead of the backlog in enqueue order, starts during it."""
    claims: list[bool] = []  # per claim of unnamed and named jobs: whether it looked

    async with make_jobs(commands=[AddCommand, SleepCommand], max_concurrency=20) as jobs:
        complete_and_claim = jobs.store.complete_and_claim

        async def recorded(
            node: str,
            outcomes: Any,
            limit: int,
            *,
            named_only: bool = False,
            skip_named: bool = False,
            now: datetime | None = None,
        ) -> Any:
            if limit and not named_only:
                claims.append(not skip_named)
            return await complete_and_claim(
                node, outcomes, limit, named_only=named_only, skip_named=skip_named, now=now
            )

        jobs.store.complete_and_claim = recorded  # type: ignore[method-assign]
        later = datetime.now(UTC) + timedelta(hours=1)
        await jobs.enqueue_many(
            (AddCommand, Add(i, i), JobOptions(worker=f"w{i}", run_after=later)) for i in range(20)
        )
        soon = datetime.now(UTC) + timedelta(seconds=0.5)
        named = await jobs.enqueue_command(
            AddCommand, Add(1, 2), JobOptions(worker="soon", run_after=soon)
        )
        backlog = await jobs.enqueue_many((SleepCommand, Sleep(0.01)) for _ in range(3000))
        enqueued = datetime.now(UTC)  # (on SQLite nothing starts while the backlog is written)
        with anyio.fail_after(60):
            named_result = await jobs.wait_for_job(named.id)
            last = await jobs.wait_for_job(backlog[-1].id)
    assert named_result.completed is not None and last.completed is not None
    started = named_result.completed.started_date
    assert started is not None and last.completed.started_date is not None
    assert started < last.completed.started_date
    assert started - max(soon, enqueued) < timedelta(seconds=1)
    looked = sum(claims)
    assert looked < len(claims) / 3, (looked, len(claims))


async def test_a_job_that_depends_on_no_job_is_refused(make_jobs: Factory) -> None:
    """It would wait forever, and hold up every later job of its named worker."""
    async with make_jobs(commands=[AddCommand]) as jobs:
        parent = await jobs.enqueue_command(AddCommand, Add(1, 1))
        with pytest.raises(JobNotFoundError, match="no job with id 987654"):
            await jobs.enqueue_command(
                AddCommand, Add(1, 1), JobOptions(depends_on=987654, worker="w")
            )
        with pytest.raises(JobNotFoundError, match="no job with id 987654, 987655"):
            await jobs.enqueue_many(
                [(AddCommand, Add(1, 1), JobOptions(depends_on=parent_id))
                 for parent_id in (parent.id, 987655, 987654)]
            )  # fmt: skip
        later = await jobs.enqueue_command(AddCommand, Add(2, 2), JobOptions(worker="w"))
        with anyio.fail_after(10):
            assert (await jobs.wait_for_job(later.id)).state is JobState.COMPLETED
        assert await jobs.store.select_job_ids(None, None) == []  # nothing else was stored
        await jobs.wait_for_job(parent.id)


async def test_failed_parent_cancels_dependents_transitively(make_jobs: Factory) -> None:
    async with make_jobs(commands=[FailCommand, AddCommand], default_retry_limit=1) as jobs:
        parent = await jobs.enqueue_command(
            FailCommand,
            Fail(),
            JobOptions(run_after=datetime.now(UTC) + timedelta(milliseconds=200)),
        )
        child = await jobs.enqueue_command(AddCommand, Add(1, 1), JobOptions(depends_on=parent.id))
        grandchild = await jobs.enqueue_command(
            AddCommand, Add(1, 1), JobOptions(depends_on=child.id)
        )
        results = [await jobs.wait_for_job(r.id) for r in (parent, child, grandchild)]
        # enqueued after the parent already failed: cancelled at once
        late = await jobs.enqueue_command(AddCommand, Add(1, 1), JobOptions(depends_on=parent.id))
        late_result = await jobs.wait_for_job(late.id)
    assert [r.state for r in results] == [JobState.FAILED, JobState.CANCELLED, JobState.CANCELLED]
    assert results[0].failed is not None and results[0].failed.attempts == 2  # retried first
    for result in (results[1], results[2], late_result):
        assert result.failed is not None and result.failed.attempts == 0
        assert result.failed.error is not None
        assert f"job {parent.id} it depends on failed" in result.failed.error.message
        assert result.failed.error_code == "DependencyFailed"


async def test_a_dependent_is_requeued_only_after_its_parent(make_jobs: Factory) -> None:
    """Requeued while its parent is failed or cancelled, a dependent would wait forever (and
    hold its named worker's later jobs): refused, and nothing changes; once the parent is back,
    it runs."""
    async with make_jobs(commands=[AddCommand]) as jobs:
        # Not due before it is cancelled (its requeue below clears the delay).
        later = datetime.now(UTC) + timedelta(hours=1)
        parent = await jobs.enqueue_command(AddCommand, Add(1, 1), JobOptions(run_after=later))
        child = await jobs.enqueue_command(
            AddCommand, Add(1, 1), JobOptions(depends_on=parent.id, worker="w")
        )
        await jobs.cancel_job(parent.id)
        assert (await jobs.wait_for_job(child.id)).state is JobState.CANCELLED
        with pytest.raises(InvalidJobStateError, match=f"requeue job {parent.id} first"):
            await jobs.requeue_failed_job(child.id)
        still = await jobs.get_job(child.id)
        assert still is not None and still.state is JobState.CANCELLED and still.queued is None
        await jobs.requeue_failed_job(parent.id)
        await jobs.requeue_failed_job(child.id)  # waits for the parent now
        results = [await jobs.wait_for_job(r.id) for r in (parent, child)]
    assert [r.state for r in results] == [JobState.COMPLETED, JobState.COMPLETED]


async def test_cancelled_parent_cancels_dependents(make_jobs: Factory) -> None:
    async with make_jobs(commands=[AddCommand]) as jobs:
        parent = await jobs.enqueue_command(
            AddCommand, Add(1, 1), JobOptions(run_after=datetime.now(UTC) + timedelta(hours=1))
        )
        child = await jobs.enqueue_command(AddCommand, Add(1, 1), JobOptions(depends_on=parent.id))
        await jobs.cancel_job(parent.id)
        result = await jobs.wait_for_job(child.id)
    assert result.state is JobState.CANCELLED


async def test_children_of_a_failing_job_never_run(make_jobs: Factory) -> None:
    EVENTS.clear()

    class Spawner(AsyncCommand[Add]):
        def __init__(self, jobs: BackgroundJobs) -> None:
            self.jobs = jobs

        async def run(self, request: Add) -> None:
            for i in range(3):
                await self.jobs.enqueue_command(
                    SleepCommand, Sleep(0, label=f"kid{i}"),
                    JobOptions(depends_on=current_job().id),
                )  # fmt: skip
            raise RuntimeError("spawner failed after enqueueing its children")

    async with make_jobs(commands=[Spawner, SleepCommand], default_retry_limit=0) as jobs:
        jobs.services[BackgroundJobs] = jobs
        ref = await jobs.enqueue_command(Spawner, Add(0, 0))
        assert (await jobs.wait_for_job(ref.id)).state is JobState.FAILED
        await anyio.sleep(0.3)
        kids = await jobs.store.select_job_ids(None, None)
    assert kids == []  # all cancelled and archived
    assert [label for _, label, _ in EVENTS if label.startswith("kid")] == []


class Notify(AsyncCommand[Sum]):
    received: list[Sum] = []

    async def run(self, request: Sum) -> None:
        Notify.received.append(request)


class FlakyNotify(AsyncCommand[Sum]):
    calls = 0

    async def run(self, request: Sum) -> None:
        FlakyNotify.calls += 1
        raise ConnectionError("receiver down")


async def test_callback_runs_with_the_result_then_job_completes(make_jobs: Factory) -> None:
    Notify.received = []
    async with make_jobs(commands=[AddCommand, Notify]) as jobs:
        ref = await jobs.enqueue_command(AddCommand, Add(2, 2), JobOptions(callback="Notify"))
        result = await jobs.wait_for_job(ref.id)
    assert Notify.received == [Sum(4)]
    assert result.completed is not None and result.completed.notified_date is not None
    assert result.completed.completed_date is not None
    assert result.completed.notified_date <= result.completed.completed_date


async def test_job_is_executed_while_its_callback_runs(make_jobs: Factory) -> None:
    release = anyio.Event()

    class SlowNotify(AsyncCommand[Sum]):
        async def run(self, request: Sum) -> None:
            await release.wait()

    async with make_jobs(commands=[AddCommand, SlowNotify]) as jobs:
        ref = await jobs.enqueue_command(AddCommand, Add(1, 1), JobOptions(callback="SlowNotify"))
        with anyio.fail_after(5):
            while True:
                result = await jobs.get_job(ref.id)
                if result is not None and result.state is JobState.EXECUTED:
                    break
                await anyio.sleep(0.02)
        assert result.queued is not None and result.queued.response_body == '{"total":2}'
        release.set()
        final = await jobs.wait_for_job(ref.id)
    assert final.state is JobState.COMPLETED


async def test_callback_that_keeps_failing_fails_the_job(make_jobs: Factory) -> None:
    FlakyNotify.calls = 0
    async with make_jobs(commands=[AddCommand, FlakyNotify], default_retry_limit=2) as jobs:
        ref = await jobs.enqueue_command(AddCommand, Add(1, 1), JobOptions(callback="FlakyNotify"))
        result = await jobs.wait_for_job(ref.id)
    assert result.state is JobState.FAILED and result.failed is not None
    assert result.failed.error is not None
    assert result.failed.error.message == "callback FlakyNotify failed: receiver down"
    assert FlakyNotify.calls == 3  # the first call and two retries


async def test_run_command_is_transient_and_updates_in_memory(make_jobs: Factory) -> None:
    async with make_jobs(commands=[AddCommand, SleepCommand]) as jobs:
        job = await jobs.run_command(SleepCommand, Sleep(0.2, label="t"))
        assert job.id < 0 and job.state in (JobState.QUEUED, JobState.STARTED)
        with anyio.fail_after(5):
            while job.state is not JobState.COMPLETED:
                await anyio.sleep(0.02)
        total = await jobs.run_command_async(AddCommand, Add(20, 22))
        assert await jobs.store.select_job_ids(None, None) == []
        assert await jobs.get_job(1) is None  # nothing was written
    assert total == Sum(42)
    assert job.duration_ms is not None and job.duration_ms >= 150


async def test_run_command_async_reraises_the_commands_error(make_jobs: Factory) -> None:
    async with make_jobs(commands=[FailCommand]) as jobs:
        with pytest.raises(RuntimeError, match="kaput"):
            await jobs.run_command_async(FailCommand, Fail("kaput"))


async def test_transient_jobs_share_the_named_worker_with_stored_jobs(make_jobs: Factory) -> None:
    EVENTS.clear()
    async with make_jobs(commands=[SleepCommand]) as jobs:
        stored = await jobs.enqueue_command(
            SleepCommand, Sleep(0.3, label="x-stored"), JobOptions(worker="printer")
        )
        with anyio.fail_after(5):
            while ("start", "x-stored") not in [(e[0], e[1]) for e in EVENTS]:
                await anyio.sleep(0.01)
        await jobs.run_command_async(
            SleepCommand, Sleep(0.05, label="x-transient"), JobOptions(worker="printer")
        )
        await jobs.wait_for_job(stored.id)
    spans = {label: (start, end) for label, start, end in _spans("x-")}
    assert spans["x-transient"][0] >= spans["x-stored"][1]


async def test_a_transient_job_is_bounded_by_its_timeout(make_jobs: Factory) -> None:
    async with make_jobs(commands=[SleepCommand]) as jobs:
        slow = JobOptions(timeout=timedelta(seconds=0.2))
        with anyio.fail_after(3), pytest.raises(TimeoutError, match=r"timed out after 0\.2s"):
            await jobs.run_command_async(SleepCommand, Sleep(30, label="t-slow"), slow)
        job = await jobs.run_command(SleepCommand, Sleep(30, label="t-slow2"), slow)
        with anyio.fail_after(3):
            while not job.state.is_final:
                await anyio.sleep(0.02)
    assert job.state is JobState.FAILED and job.error is not None
    assert job.error.type == "TimeoutError"


async def test_a_transient_job_runs_its_callback_with_its_result(
    make_jobs: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    received: list[Sum] = []

    class KeepSum(AsyncCommand[Sum]):
        async def run(self, request: Sum) -> None:
            assert current_job().state is JobState.EXECUTED
            received.append(request)

    class RefuseSum(AsyncCommand[Sum]):
        async def run(self, request: Sum) -> None:
            raise RuntimeError(f"no room for {request.total}")

    class SaysCallback(AsyncCommandWithResult[Add, Sum]):
        async def run(self, request: Add) -> Sum:
            raise ValueError("callback URL unreachable")

    async with make_jobs(commands=[AddCommand, KeepSum, RefuseSum, SaysCallback]) as jobs:
        total = await jobs.run_command_async(AddCommand, Add(1, 2), JobOptions(callback="KeepSum"))
        assert total == Sum(3) and received == [Sum(3)]
        # The command succeeded: the caller is not handed the callback's error as if it were
        # the command's own.
        with pytest.raises(JobFailedError, match="callback RefuseSum failed: no room for 7") as e:
            await jobs.run_command_async(AddCommand, Add(3, 4), JobOptions(callback="RefuseSum"))
        assert isinstance(e.value.__cause__, RuntimeError)
        # The command's own error, whatever its words
        with pytest.raises(ValueError, match="callback "):
            await jobs.run_command_async(SaysCallback, Add(0, 0), JobOptions(callback="KeepSum"))
        options = JobOptions(callback="RefuseSum", meta={"order": 7})
        job = await jobs.run_command(AddCommand, Add(5, 5), options)
        with anyio.fail_after(3):
            while not job.state.is_final:
                await anyio.sleep(0.02)
    assert job.state is JobState.FAILED and job.error is not None
    assert job.error.message == "callback RefuseSum failed: no room for 10"
    assert job.result == Sum(10) and job.meta == {"order": 7}  # the caller's, as given
    # Nothing is stored of a transient job: its failure is logged, as a stored job's is.
    assert f"transient job {job.ref_id} (AddCommand) failed: callback RefuseSum failed" in (
        caplog.text
    )


async def test_a_callback_gets_its_request_type_whatever_the_result_was(
    make_jobs: Factory,
) -> None:
    """An API handler returns a dict; the callback declares a request type: it gets the
    result loaded as that type (as it would after a restart, from the stored result), stored
    or transient."""
    received: list[Sum] = []

    class KeepSum(AsyncCommand[Sum]):
        async def run(self, request: Sum) -> None:
            received.append(request)

    class Total(AsyncCommandWithResult[Add, dict[str, int]]):
        async def run(self, request: Add) -> dict[str, int]:
            return {"total": request.a + request.b}

    async def total(request: Add) -> dict[str, int]:
        return {"total": request.a + request.b}

    class Wrong(AsyncCommandWithResult[Add, dict[str, int]]):
        async def run(self, request: Add) -> dict[str, int]:
            return {"sum": request.a + request.b}

    async with make_jobs(commands=[KeepSum, Total, Wrong]) as jobs:
        jobs.register_api(Add, total)
        ref = await jobs.enqueue_api(Add(1, 2), JobOptions(callback="KeepSum"))
        assert (await jobs.wait_for_job(ref.id)).state is JobState.COMPLETED
        await jobs.run_command_async(Total, Add(3, 4), JobOptions(callback="KeepSum"))
        # A result that does not load as the callback's request fails the job, at once
        options = JobOptions(callback="KeepSum", retry_limit=3)
        wrong = await jobs.enqueue_command(Wrong, Add(5, 6), options)
        failed = await jobs.wait_for_job(wrong.id)
    assert received == [Sum(3), Sum(7)]
    assert failed.state is JobState.FAILED and failed.summary.attempts == 1
    assert failed.summary.error_code == "CallbackFailed"
    assert failed.job is not None and failed.job.response_body == '{"sum":11}'


async def test_a_transient_job_can_be_cancelled(make_jobs: Factory) -> None:
    EVENTS.clear()
    async with make_jobs(commands=[SleepCommand]) as jobs:
        job = await jobs.run_command(SleepCommand, Sleep(30, label="t-cancel"))
        with anyio.fail_after(10):
            while job.state is not JobState.STARTED:
                await anyio.sleep(0.01)
        assert await jobs.cancel_job(job.id) is True
        with anyio.fail_after(10):
            while not job.state.is_final:
                await anyio.sleep(0.01)
        assert job.state is JobState.CANCELLED
        assert await jobs.cancel_job(job.id) is False  # it has ended
        # one that waits for its named worker, held by a stored job, ends at once
        await jobs.enqueue_command(SleepCommand, Sleep(30, label="t-hold"), JobOptions(worker="w"))
        with anyio.fail_after(10):
            while ("start", "t-hold") not in [(e[0], e[1]) for e in EVENTS]:
                await anyio.sleep(0.01)
        waiting = await jobs.run_command(
            SleepCommand, Sleep(0, label="t-wait"), JobOptions(worker="w")
        )
        await anyio.sleep(0.05)
        assert waiting.state is JobState.QUEUED
        assert await jobs.cancel_job(waiting.id) is True
        with anyio.fail_after(3):
            while not waiting.state.is_final:
                await anyio.sleep(0.01)
        assert waiting.state is JobState.CANCELLED and waiting.started_date is None
        await jobs.cancel_jobs(worker="w")


async def test_a_transient_job_can_be_cancelled_as_soon_as_run_command_returns(
    make_jobs: Factory,
) -> None:
    EVENTS.clear()
    async with make_jobs(commands=[SleepCommand]) as jobs:
        job = await jobs.run_command(SleepCommand, Sleep(30, label="t-at-once"))
        assert await jobs.cancel_job(job.id) is True
        with anyio.fail_after(3):
            while not job.state.is_final:
                await anyio.sleep(0.01)
    assert job.state is JobState.CANCELLED
    assert ("start", "t-at-once") not in [(e[0], e[1]) for e in EVENTS]


async def test_a_transient_job_gets_its_user_and_parent(make_jobs: Factory) -> None:
    seen: list[tuple[Any, int | None]] = []

    class WhoRuns(AsyncCommand[Add]):
        async def run(self, request: Add) -> None:
            job = current_job()
            seen.append((job.user, job.parent_id))

    async def resolve(user_id: str) -> str:
        return f"user {user_id}"

    async with make_jobs(commands=[WhoRuns], user_resolver=resolve) as jobs:
        options = JobOptions(user_id="7", parent_id=12)
        await jobs.run_command_async(WhoRuns, Add(1, 1), options)
    assert seen == [("user 7", 12)]


async def test_options_a_transient_job_cannot_honour_are_refused(make_jobs: Factory) -> None:
    async with make_jobs(commands=[AddCommand]) as jobs:
        later = JobOptions(run_after=datetime.now(UTC) + timedelta(minutes=1))
        with pytest.raises(InvalidOptionsError, match="run_after and depends_on"):
            await jobs.run_command(AddCommand, Add(1, 1), later)
        with pytest.raises(InvalidOptionsError, match="run_after and depends_on"):
            await jobs.run_command_async(AddCommand, Add(1, 1), JobOptions(depends_on=1))
    async with make_jobs(commands=[AddCommand], execute=False) as producer:
        with pytest.raises(ConfigurationError, match="execute=False"):
            await producer.run_command_async(AddCommand, Add(1, 1))
        with pytest.raises(ConfigurationError, match="execute=False"):
            await producer.run_command(AddCommand, Add(1, 1))


async def test_result_types_round_trip(make_jobs: Factory) -> None:
    class Echo(AsyncCommandWithResult[Add, list[int]]):
        async def run(self, request: Add) -> list[int]:
            return [request.a, request.b]

    async with make_jobs(commands=[Echo]) as jobs:
        assert await jobs.run_command_async(Echo, Add(1, 2)) == [1, 2]


async def test_a_database_error_while_marking_a_job_executed_does_not_stop_the_runtime(
    make_jobs: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The Executed mark only spares the command a second run if the process dies during the
    # callback; when it cannot be written, the callback still runs and the job completes.
    Notify.received = []
    async with make_jobs(commands=[AddCommand, Notify]) as jobs:
        real = jobs.store.mark_executed
        failed: list[int] = []

        async def unreachable_once(node: str, outcome: Any) -> None:
            if not failed:
                failed.append(outcome.job.id)
                raise ConnectionResetError("database unreachable")
            await real(node, outcome)

        monkeypatch.setattr(jobs.store, "mark_executed", unreachable_once)
        ref = await jobs.enqueue_command(AddCommand, Add(2, 3), JobOptions(callback="Notify"))
        with anyio.fail_after(10):
            result = await jobs.wait_for_job(ref.id)
        later = await jobs.enqueue_command(AddCommand, Add(1, 1), JobOptions(callback="Notify"))
        with anyio.fail_after(10):
            assert (await jobs.wait_for_job(later.id)).state is JobState.COMPLETED
    assert failed == [ref.id]
    assert result.state is JobState.COMPLETED
    assert Notify.received == [Sum(5), Sum(2)]


async def test_transient_jobs_need_a_running_runtime(make_jobs: Factory) -> None:
    jobs = make_jobs(commands=[AddCommand])
    for attempt in ("before", "after"):
        with pytest.raises(ConfigurationError, match="async with jobs"):
            await jobs.run_command_async(AddCommand, Add(1, 1))
        with pytest.raises(ConfigurationError, match="async with jobs"):
            await jobs.run_command(AddCommand, Add(1, 1))
        with pytest.raises(ConfigurationError, match="async with jobs"):
            await jobs.cancel_job(-1)
        if attempt == "before":
            async with jobs:
                pass


async def test_waiting_for_a_transient_or_unknown_job_says_why(make_jobs: Factory) -> None:
    async with make_jobs(commands=[SleepCommand]) as jobs:
        job = await jobs.run_command(SleepCommand, Sleep(30))
        with pytest.raises(JobNotFoundError, match="is transient"):
            await jobs.wait_for_job(job.id)
        assert await jobs.cancel_job(job.id)
        for _ in range(3):
            with pytest.raises(JobNotFoundError, match="no job with id 424242"):
                await jobs.wait_for_job(424242)
        assert jobs._waiters == {}  # nothing left behind for jobs that do not exist


async def test_a_cancelled_running_job_is_counted(make_jobs: Factory) -> None:
    EVENTS.clear()
    async with make_jobs(commands=[SleepCommand]) as jobs:
        ref = await jobs.enqueue_command(SleepCommand, Sleep(30, label="counted"))
        with anyio.fail_after(10):
            while ("start", "counted") not in [(e[0], e[1]) for e in EVENTS]:
                await anyio.sleep(0.01)
        assert await jobs.cancel_job(ref.id)
        assert (await jobs.wait_for_job(ref.id)).state is JobState.CANCELLED
        assert jobs.statistics()["cancelled"] == 1


async def test_a_job_cannot_wait_for_a_transient_job_on_its_own_worker(
    make_jobs: Factory,
) -> None:
    class RunsItsOwn(AsyncCommand[Add]):
        worker = "w"

        def __init__(self, jobs: BackgroundJobs) -> None:
            self.jobs = jobs

        async def run(self, request: Add) -> None:
            await self.jobs.run_command_async(AddCommand, request, JobOptions(worker="w"))

    jobs = make_jobs(commands=[RunsItsOwn, AddCommand], default_retry_limit=0)
    jobs.services[BackgroundJobs] = jobs
    async with jobs:
        ref = await jobs.enqueue_command(RunsItsOwn, Add(1, 1))
        with anyio.fail_after(10):
            result = await jobs.wait_for_job(ref.id)
    assert result.failed is not None and result.failed.error is not None
    assert "cannot wait for a transient job on the same worker" in result.failed.error.message


class _HangsCommand(AsyncCommand[Sum]):
    """A callback that never returns."""

    async def run(self, request: Sum) -> None:
        await anyio.sleep(3600)


async def test_a_callback_that_hangs_times_out_like_its_command(make_jobs: Factory) -> None:
    """Each callback attempt has the job's timeout: one that hangs fails the job (after its
    retries), rather than hold it Executed, and its named worker, for good; a transient job's
    callback too."""
    options = JobOptions(
        callback="_HangsCommand", timeout=timedelta(seconds=0.3), retry_limit=1, worker="w"
    )
    async with make_jobs(commands=[AddCommand, _HangsCommand]) as jobs:
        ref = await jobs.enqueue_command(AddCommand, Add(1, 2), options)
        after = await jobs.enqueue_command(AddCommand, Add(3, 4), JobOptions(worker="w"))
        with anyio.fail_after(10):
            final = await jobs.wait_for_job(ref.id)
            assert (await jobs.wait_for_job(after.id)).state is JobState.COMPLETED
        with anyio.fail_after(10), pytest.raises(JobFailedError, match=r"timed out after 0\.3s"):
            await jobs.run_command_async(AddCommand, Add(1, 2), options)
    assert final.state is JobState.FAILED and final.summary.error_code == "CallbackFailed"
    assert "timed out after 0.3s" in (final.summary.error_message or "")


class _SyncCallbackSlowAtFirst(SyncCommand[Sum]):
    """A sync callback that overruns its first attempt (returning once asked to stop, as a
    sync command should) and returns at once on later ones; notes whether each attempt began
    with the stop request already made."""

    flags: ClassVar[list[bool]] = []

    def run(self, request: Sum) -> None:
        self.flags.append(cancellation_requested())
        if len(self.flags) == 1:
            while not cancellation_requested():
                time.sleep(0.01)


async def test_a_callback_attempt_after_a_timed_out_one_starts_afresh(make_jobs: Factory) -> None:
    """The first attempt's timeout asked it to stop; the next attempt is not asked to (it
    began with the request made, and a callback that honours it failed the job)."""
    _SyncCallbackSlowAtFirst.flags.clear()
    options = JobOptions(
        callback="_SyncCallbackSlowAtFirst", timeout=timedelta(seconds=0.3), retry_limit=2
    )
    async with make_jobs(
        commands=[AddCommand, _SyncCallbackSlowAtFirst], retry_delay=timedelta(0)
    ) as jobs:
        ref = await jobs.enqueue_command(AddCommand, Add(1, 2), options)
        with anyio.fail_after(10):
            final = await jobs.wait_for_job(ref.id)
    assert _SyncCallbackSlowAtFirst.flags == [False, False]
    assert final.state is JobState.COMPLETED
