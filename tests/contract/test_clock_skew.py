"""Leases, delayed jobs and retries are timed by the database's clock, not the clocks of the
processes that share it.

A process whose clock runs ahead of the others' (or one whose clock runs behind, renewing its
lease) would otherwise see a live process's lease run out, take its running job back and run
it a second time beside it; it would start delayed jobs early, or late, and retry at once or
long after the backoff. On one machine (SQLite) every process reads the same clock, so the
skew is tested where processes on several machines share a server."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import anyio
import pytest

import asyncjobs.runtime
import asyncjobs.store
from asyncjobs import BackgroundJobs, JobOptions, JobState
from tests.commands import Add, AddCommand, Fail, FailCommand, Sleep, SleepCommand

pytestmark = [pytest.mark.anyio, pytest.mark.dialects("postgres", "mysql", "mssql")]
Factory = Callable[..., BackgroundJobs]
SKEW = timedelta(hours=1)


def skew_clock(monkeypatch: pytest.MonkeyPatch, by: timedelta) -> None:
    """The wall clock of the store and the runtime, as read by a process whose clock is
    ``by`` off."""
    real = asyncjobs.store.utcnow

    def skewed() -> datetime:
        return real() + by

    monkeypatch.setattr(asyncjobs.store, "utcnow", skewed)
    monkeypatch.setattr(asyncjobs.runtime, "utcnow", skewed)


async def _started(jobs: BackgroundJobs, job_id: int) -> None:
    with anyio.fail_after(10):
        while (result := await jobs.get_job(job_id)) is None or result.state is not (
            JobState.STARTED
        ):
            await anyio.sleep(0.02)


@pytest.mark.parametrize("skew", ["recoverer ahead", "renewer behind"])
async def test_a_skewed_clock_takes_no_job_from_a_live_process(
    make_jobs: Factory, monkeypatch: pytest.MonkeyPatch, skew: str
) -> None:
    async with make_jobs(commands=[SleepCommand], lease_duration=timedelta(seconds=60)) as jobs:
        ref = await jobs.enqueue_command(SleepCommand, Sleep(1.5, label="held"))
        await _started(jobs, ref.id)
        if skew == "renewer behind":
            # The holder renews its lease by a clock an hour late; a process with a true
            # clock then looks for dead processes' jobs.
            with monkeypatch.context() as late:
                skew_clock(late, -SKEW)
                await jobs.store.renew_node(jobs.node_id, "h", 1, jobs.lease_duration)
        else:
            skew_clock(monkeypatch, SKEW)  # the holder's lease, seen from an hour later
        final, requeued = await jobs.store.recover_orphans()
        assert (final, requeued) == ({}, [])
        monkeypatch.undo()
        with anyio.fail_after(20):
            result = await jobs.wait_for_job(ref.id)
    assert result.state is JobState.COMPLETED
    assert result.summary.attempts == 1  # ran once, by its holder


@pytest.mark.parametrize("skew", [SKEW, -SKEW], ids=["ahead", "behind"])
async def test_a_delayed_job_is_due_by_the_database_clock(
    make_jobs: Factory, monkeypatch: pytest.MonkeyPatch, skew: timedelta
) -> None:
    skew_clock(monkeypatch, skew)
    async with make_jobs(commands=[AddCommand]) as jobs:
        due = datetime.now(UTC) + timedelta(seconds=2)
        ref = await jobs.enqueue_command(AddCommand, Add(1, 2), JobOptions(run_after=due))
        await anyio.sleep(0.5)
        early = await jobs.get_job(ref.id)
        assert early is not None and early.state is JobState.QUEUED  # not an hour early
        with anyio.fail_after(10):  # nor an hour late
            result = await jobs.wait_for_job(ref.id)
    assert result.state is JobState.COMPLETED


async def test_a_retry_waits_out_its_backoff_by_the_database_clock(
    make_jobs: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Timed from this process's clock, an hour behind, the backoff would have ended long
    ago when the retry was written."""
    skew_clock(monkeypatch, -SKEW)
    async with make_jobs(commands=[FailCommand], retry_delay=timedelta(seconds=4)) as jobs:
        ref = await jobs.enqueue_command(FailCommand, Fail(succeed_on_attempt=2))
        with anyio.fail_after(5):
            while (
                (result := await jobs.get_job(ref.id)) is None
                or result.queued is None
                or (result.queued.error is None)
            ):
                await anyio.sleep(0.02)
        await anyio.sleep(0.5)  # the backoff is 2 to 4 s
        waiting = await jobs.get_job(ref.id)
        assert waiting is not None and waiting.queued is not None
        assert (waiting.state, waiting.queued.attempts) == (JobState.QUEUED, 1)
        with anyio.fail_after(10):
            final = await jobs.wait_for_job(ref.id)
    assert final.completed is not None and final.completed.attempts == 2
