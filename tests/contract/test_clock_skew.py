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
from itertools import pairwise

import anyio
import pytest

import asyncjobs.runtime
import asyncjobs.store
from asyncjobs import AsyncCommand, BackgroundJobs, JobOptions, JobState, Schedule, current_job
from asyncjobs.clock import DatabaseClock
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


class _Ahead:
    """This process's clock, running ``by`` ahead."""

    def __init__(self, by: timedelta) -> None:
        self.by = by

    def now(self) -> datetime:
        return datetime.now(UTC) + self.by

    async def sleep_until(self, deadline: datetime) -> None:
        await anyio.sleep(max(0.0, (deadline - self.now()).total_seconds()))


_TICKS: list[tuple[datetime, datetime]] = []


class _TickCommand(AsyncCommand[Add]):
    """Notes its occurrence's fire time, and when it started by the true clock."""

    async def run(self, request: Add) -> None:
        meta = current_job().meta or {}
        _TICKS.append((datetime.fromisoformat(meta["fire_time"]), datetime.now(UTC)))


async def test_a_scheduler_whose_clock_runs_ahead_fires_each_occurrence_on_time(
    make_jobs: Factory,
) -> None:
    """Two processes run an every-second task, one of them with a clock 3 s ahead: each
    occurrence fires once, none is skipped and none is early, as both go by the database's
    clock (the fast one fired the occurrences 3 s early, and took those between as missed)."""
    _TICKS.clear()
    ahead = DatabaseClock(_Ahead(timedelta(seconds=3)))
    every_second = Schedule.cron("* * * * * *")
    async with make_jobs(commands=[_TickCommand]) as jobs:
        await jobs.recurring_command(_TickCommand, every_second, Add(1, 1), name="tick")
        await anyio.sleep(1.5)
        async with make_jobs(commands=[_TickCommand], clock=ahead):
            await anyio.sleep(3.5)
    fire_times = sorted(fire for fire, _ in _TICKS)
    assert len(fire_times) >= 4, _TICKS
    assert all(b - a == timedelta(seconds=1) for a, b in pairwise(fire_times)), fire_times
    early = [(fire, started) for fire, started in _TICKS if started < fire - timedelta(seconds=0.1)]
    assert not early, early
    assert abs(ahead.offset + timedelta(seconds=3)) < timedelta(milliseconds=200), ahead.offset
