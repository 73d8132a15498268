"""One round trip that records finished jobs and claims the next ones (``complete_and_claim``),
on every dialect: what it completes, what it claims, and what it must refuse."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from asyncjobs import BackgroundJobs, JobOptions, JobState
from asyncjobs.models import BackgroundJob
from asyncjobs.store import Claim, Outcome
from tests.commands import Add, AddCommand, Sleep, SleepCommand
from tests.processes import started_at, wait_for

pytestmark = pytest.mark.anyio
Factory = Callable[..., BackgroundJobs]
NODE = "node-a"


def completed(*jobs: BackgroundJob) -> list[Outcome]:
    return [
        Outcome(job, JobState.COMPLETED, duration_ms=7, response="Sum", response_body="{}")
        for job in jobs
    ]


async def test_completes_jobs_and_claims_the_freed_slots(make_jobs: Factory) -> None:
    async with make_jobs(commands=[AddCommand], execute=False) as jobs:
        refs = await jobs.enqueue_many((AddCommand, Add(i, 1)) for i in range(5))
        first = (await jobs.store.claim(NODE, 2)).jobs
        assert [j.id for j in first] == [refs[0].id, refs[1].id]
        claim = await jobs.store.complete_and_claim(NODE, completed(*first), 2)
        assert claim.final == {refs[0].id: JobState.COMPLETED, refs[1].id: JobState.COMPLETED}
        assert claim.lost == [] and not claim.dependents
        assert [j.id for j in claim.jobs] == [refs[2].id, refs[3].id]
        assert all(j.state is JobState.STARTED and j.attempts == 1 for j in claim.jobs)
        for ref in refs[:2]:
            result = await jobs.get_job(ref.id)
            assert result is not None and result.completed is not None
            assert result.summary.state is JobState.COMPLETED
            assert result.summary.duration_ms == 7
        started = await jobs.get_job(refs[2].id)
        assert started is not None and started.summary.state is JobState.STARTED
        assert await jobs.store.select_job_ids(None, None) == [r.id for r in refs[2:]]


async def test_a_claim_may_leave_named_workers_out(make_jobs: Factory) -> None:
    """skip_named: the claim takes jobs without a worker only, and does not look at named
    workers' heads; the completion in the same call is unchanged."""
    async with make_jobs(commands=[AddCommand], execute=False) as jobs:
        named = await jobs.enqueue_command(AddCommand, Add(0, 0), JobOptions(worker="w"))
        unnamed = await jobs.enqueue_many((AddCommand, Add(i, 1)) for i in range(3))
        first = (await jobs.store.claim(NODE, 1, skip_named=True)).jobs
        assert [j.id for j in first] == [unnamed[0].id]
        claim = await jobs.store.complete_and_claim(NODE, completed(*first), 5, skip_named=True)
        assert claim.final == {unnamed[0].id: JobState.COMPLETED}
        assert [j.id for j in claim.jobs] == [unnamed[1].id, unnamed[2].id]
        assert (await jobs.store.claim(NODE, 5, skip_named=True)).jobs == []
        assert [j.id for j in (await jobs.store.claim(NODE, 5)).jobs] == [named.id]


async def test_a_claim_says_when_the_next_delayed_job_is_due(make_jobs: Factory) -> None:
    """By the database's clock, as it judges run_after: the soonest of the delayed jobs it
    did not claim, of any worker; nothing when none is delayed, or when the call claims
    nothing (limit 0, a pure finish)."""
    async with make_jobs(commands=[AddCommand], execute=False) as jobs:
        assert (await jobs.store.claim(NODE, 5)).next_due_in is None  # an empty queue
        now = datetime.now(UTC)
        soon, later = now + timedelta(seconds=20), now + timedelta(seconds=40)
        await jobs.enqueue_command(AddCommand, Add(1, 1), JobOptions(run_after=later))
        await jobs.enqueue_command(
            AddCommand, Add(1, 1), JobOptions(run_after=soon, worker="serial")
        )
        ready = await jobs.enqueue_command(AddCommand, Add(1, 1))
        claim = await jobs.store.claim(NODE, 5)
        assert [j.id for j in claim.jobs] == [ready.id]
        # (SQLite's arithmetic on julian days is off by some microseconds either way)
        assert claim.next_due_in is not None and 18 < claim.next_due_in <= 20.001
        finish = await jobs.store.complete_and_claim(NODE, completed(*claim.jobs), 0)
        assert finish.final == {ready.id: JobState.COMPLETED} and finish.next_due_in is None


async def test_a_named_workers_next_job_comes_with_the_completion(make_jobs: Factory) -> None:
    async with make_jobs(commands=[AddCommand], execute=False) as jobs:
        serial = JobOptions(worker="serial")
        refs = await jobs.enqueue_many((AddCommand, Add(i, 1), serial) for i in range(3))
        (head,) = (await jobs.store.claim(NODE, 10)).jobs
        assert head.id == refs[0].id
        assert (await jobs.store.claim(NODE, 10)).jobs == []  # one job of a worker at a time
        claim = await jobs.store.complete_and_claim(NODE, completed(head), 10)
        assert [j.id for j in claim.jobs] == [refs[1].id]
        # Also when every unnamed slot is busy (a named-only claim).
        outcomes = completed(*claim.jobs)
        claim = await jobs.store.complete_and_claim(NODE, outcomes, 8, named_only=True)
        assert [j.id for j in claim.jobs] == [refs[2].id]


async def test_a_job_whose_lease_moved_on_is_neither_completed_nor_counted(
    make_jobs: Factory,
) -> None:
    async with make_jobs(commands=[AddCommand], execute=False) as jobs:
        ref = await jobs.enqueue_command(AddCommand, Add(1, 1))
        (job,) = (await jobs.store.claim(NODE, 1)).jobs
        claim = await jobs.store.complete_and_claim("node-b", completed(job), 5)
        assert claim.lost == [ref.id] and claim.final == {} and claim.jobs == []
        result = await jobs.get_job(ref.id)
        assert result is not None and result.summary.state is JobState.STARTED


async def test_limit_zero_only_completes_and_reports_waiting_dependents(
    make_jobs: Factory,
) -> None:
    async with make_jobs(commands=[AddCommand], execute=False) as jobs:
        parent = await jobs.enqueue_command(AddCommand, Add(1, 1))
        (job,) = (await jobs.store.claim(NODE, 1)).jobs
        child = await jobs.enqueue_command(AddCommand, Add(2, 2), JobOptions(depends_on=parent.id))
        other = await jobs.enqueue_command(AddCommand, Add(3, 3))
        claim = await jobs.store.complete_and_claim(NODE, completed(job), 0)
        assert claim.final == {parent.id: JobState.COMPLETED} and claim.jobs == []
        assert claim.dependents  # the caller claims again: the child can run now
        claimed = (await jobs.store.claim(NODE, 5)).jobs
        assert [j.id for j in claimed] == [child.id, other.id]


async def test_a_serial_worker_needs_no_claim_between_its_jobs(make_jobs: Factory) -> None:
    """Each finished job of a named worker brings the next one: the dispatcher's own claims
    stay few however many jobs run."""
    async with make_jobs(commands=[AddCommand], execute=False) as producer:
        refs = await producer.enqueue_many(
            (AddCommand, Add(i, 1), JobOptions(worker="serial")) for i in range(30)
        )
    async with make_jobs(commands=[AddCommand]) as runner:
        claims = 0
        claim = runner.store.claim

        async def counting_claim(*args: object, **kwargs: object) -> Claim:
            nonlocal claims
            claims += 1
            return await claim(*args, **kwargs)  # type: ignore[arg-type]

        runner.store.claim = counting_claim  # type: ignore[method-assign]
        with anyio.fail_after(30):
            for ref in refs:
                result = await runner.wait_for_job(ref.id)
                assert result.summary.state is JobState.COMPLETED
    # Without the combined statement every job would need a claim of its own (30 or more);
    # what remains are the dispatcher's start-up claim and its polls.
    assert claims < len(refs) // 2, claims


async def test_a_drain_never_waits_for_a_poll_and_a_single_writer_claims_with_completions(
    make_jobs: Factory, dialect_name: str
) -> None:
    """Jobs finish in batches and free slots are claimed again at once, with a 30 s poll. On
    SQLite (one writer) the claims ride with the completions, one transaction per batch: the
    dispatcher leaves its claim to the finisher instead of committing one of its own."""
    async with make_jobs(commands=[AddCommand], execute=False) as producer:
        refs = await producer.enqueue_many((AddCommand, Add(i, 1)) for i in range(200))
    async with make_jobs(
        commands=[AddCommand], max_concurrency=10, poll_interval=timedelta(seconds=30)
    ) as jobs:
        dispatcher_claims = 0
        claim = jobs.store.claim

        async def counting_claim(*args: Any, **kwargs: Any) -> Claim:
            nonlocal dispatcher_claims
            dispatcher_claims += 1
            return await claim(*args, **kwargs)

        jobs.store.claim = counting_claim  # type: ignore[method-assign]
        with anyio.fail_after(20):
            while jobs.statistics()["completed"] < len(refs):
                await anyio.sleep(0.02)
        result = await jobs.get_job(refs[-1].id)
    assert result is not None and result.state is JobState.COMPLETED
    if dialect_name == "sqlite":
        # 20 batches of 10; a dispatcher claiming on its own would commit about 20 claims
        assert dispatcher_claims <= 4


@pytest.mark.dialects("sqlite")
async def test_work_that_arrives_during_a_flush_that_claims_nothing_is_claimed_at_once(
    make_jobs: Factory,
) -> None:
    """A job that cannot start at once (it has a named worker) is enqueued while this process
    records a finished job without claiming (the queue was drained). The dispatcher, woken for
    it meanwhile, left its claim to the finisher; the finisher hands it back rather than leave
    the job to the 30 s poll. (No change watch here: it would wake the dispatcher again.)"""
    async with make_jobs(
        commands=[AddCommand], poll_interval=timedelta(seconds=30), notifications=False
    ) as jobs:
        await anyio.sleep(0.2)  # the first claim found the queue drained
        arrived: list[int] = []
        complete_and_claim = jobs.store.complete_and_claim

        async def enqueue_first(*args: Any, **kwargs: Any) -> Any:
            if not arrived:
                ref = await jobs.enqueue_command(AddCommand, Add(2, 2), JobOptions(worker="w"))
                arrived.append(ref.id)
                await anyio.sleep(0.2)  # the dispatcher wakes, and leaves the claim to us
            return await complete_and_claim(*args, **kwargs)

        jobs.store.complete_and_claim = enqueue_first  # type: ignore[method-assign]
        first = await jobs.enqueue_command(AddCommand, Add(1, 1))  # starts here at once
        with anyio.fail_after(5):
            await jobs.wait_for_job(first.id)
            while not arrived:
                await anyio.sleep(0.01)
            result = await jobs.wait_for_job(arrived[0])
    assert result.state is JobState.COMPLETED


async def test_claims_go_on_while_the_finisher_cannot_write(
    make_jobs: Factory, tmp_path: Path
) -> None:
    """The finisher's writes fail (its outcomes are kept and retried); meanwhile the dispatcher
    still claims new work, also on SQLite, where it otherwise leaves claims to the finisher."""
    log_file = str(tmp_path / "events.log")
    async with make_jobs(
        commands=[SleepCommand], poll_interval=timedelta(seconds=30), notifications=False
    ) as jobs:
        await anyio.sleep(0.2)  # the first claim found the queue drained
        complete_and_claim = jobs.store.complete_and_claim

        async def failing_writes(node: str, outcomes: Any, *args: Any, **kwargs: Any) -> Any:
            if outcomes:
                raise ConnectionError("the database went away")
            return await complete_and_claim(node, outcomes, *args, **kwargs)

        jobs.store.complete_and_claim = failing_writes  # type: ignore[method-assign]
        first = await jobs.enqueue_command(SleepCommand, Sleep(0, label="first", log_file=log_file))
        await anyio.sleep(0.3)  # it ran; its outcome waits for the database
        second = await jobs.enqueue_command(
            SleepCommand, Sleep(0, label="second", log_file=log_file), JobOptions(worker="w")
        )
        await wait_for(lambda: started_at(Path(log_file), "second") is not None, 5)
        jobs.store.complete_and_claim = complete_and_claim  # type: ignore[method-assign]
        with anyio.fail_after(10):
            for ref in (first, second):
                assert (await jobs.wait_for_job(ref.id)).state is JobState.COMPLETED


async def test_an_outcome_counts_only_for_the_attempt_it_ended(make_jobs: Factory) -> None:
    """The job was taken back from this node (its lease lapsed) and claimed by it again: an
    outcome of the earlier attempt, written late, is dropped, whatever its kind; the newer
    attempt's own outcome counts."""
    async with make_jobs(commands=[AddCommand], execute=False) as jobs:
        ref = await jobs.enqueue_command(AddCommand, Add(1, 1))
        (first,) = (await jobs.store.claim(NODE, 1)).jobs  # NODE holds no lease: it is dead
        child = await jobs.enqueue_command(AddCommand, Add(2, 2), JobOptions(depends_on=ref.id))
        _final, requeued = await jobs.store.recover_orphans()
        assert requeued == [ref.id]
        (second,) = (await jobs.store.claim(NODE, 1)).jobs
        assert (first.attempts, second.attempts) == (1, 2)
        late = await jobs.store.complete_and_claim(NODE, completed(first), 0)
        assert late.final == {} and late.lost == [ref.id]
        failed = Outcome(first, JobState.FAILED, error_code="Boom")
        report = await jobs.store.finish(NODE, [failed])
        assert report.final.get(ref.id) is None and ref.id in report.lost
        result = await jobs.get_job(ref.id)
        assert result is not None and result.state is JobState.STARTED
        assert result.summary.attempts == 2
        waiting = await jobs.get_job(child.id)  # its parent did not fail: it waits on
        assert waiting is not None and waiting.state is JobState.QUEUED
        done = await jobs.store.complete_and_claim(NODE, completed(second), 0)
        assert done.final == {ref.id: JobState.COMPLETED}


async def test_due_delayed_jobs_and_retries_are_claimed_with_the_rest_by_priority(
    make_jobs: Factory,
) -> None:
    """Jobs never delayed, delayed jobs now due and retries whose backoff ended are one queue
    in priority-then-age order; jobs not yet due stay queued."""
    async with make_jobs(commands=[AddCommand], execute=False) as jobs:
        retried_ref = await jobs.enqueue_command(AddCommand, Add(0, 0))
        (retried,) = (await jobs.store.claim(NODE, 1)).jobs
        retry = Outcome(retried, JobState.QUEUED, retry_in=timedelta(milliseconds=1))
        await jobs.store.finish(NODE, [retry])
        past, future = (
            datetime.now(UTC) - timedelta(seconds=1),
            datetime.now(UTC) + timedelta(hours=1),
        )
        later = await jobs.enqueue_command(
            AddCommand, Add(1, 1), JobOptions(run_after=future, priority=9)
        )
        plain = await jobs.enqueue_command(AddCommand, Add(2, 2))
        due = await jobs.enqueue_command(
            AddCommand, Add(3, 3), JobOptions(run_after=past, priority=1)
        )
        urgent = await jobs.enqueue_command(AddCommand, Add(4, 4), JobOptions(priority=2))
        await anyio.sleep(0.05)  # the retry's backoff ends
        first = (await jobs.store.claim(NODE, 2)).jobs
        assert [j.id for j in first] == [urgent.id, due.id]
        rest = (await jobs.store.claim(NODE, 10)).jobs
        assert [j.id for j in rest] == [retried_ref.id, plain.id]
        assert await jobs.store.select_job_ids(JobState.QUEUED, None) == [later.id]


async def test_due_delayed_jobs_go_by_priority_not_by_when_they_came_due(
    make_jobs: Factory,
) -> None:
    async with make_jobs(commands=[AddCommand], execute=False) as jobs:
        now = datetime.now(UTC)
        refs = [
            await jobs.enqueue_command(
                AddCommand,
                Add(i, i),
                JobOptions(run_after=now - timedelta(seconds=due), priority=p),
            )
            for i, (due, p) in enumerate(((30, 0), (20, 0), (10, 10)))
        ]
        claimed = [(await jobs.store.claim(NODE, 1)).jobs for _ in refs]
    assert [[j.id for j in c] for c in claimed] == [[refs[2].id], [refs[0].id], [refs[1].id]]
