"""A claim that commits but whose reply never arrives (the connection breaks after the commit)
leaves jobs Started under a node that stays alive: no lease runs out, so nobody would ever run
them. Each test breaks one claim path that way on purpose and checks that every job still runs
exactly once, with one attempt counted."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest

from asyncjobs import BackgroundJobs, JobOptions, JobState
from asyncjobs.store import Claim
from tests.commands import EVENTS, SerialSleepCommand, Sleep, SleepCommand

pytestmark = pytest.mark.anyio
Factory = Callable[..., BackgroundJobs]
COMMANDS = [SleepCommand, SerialSleepCommand]


class ReplyLost(ConnectionResetError):
    """What the caller sees when the connection breaks after the server committed."""


def starts(label: str) -> int:
    return sum(1 for event, name, _ in EVENTS if event == "start" and name == label)


async def assert_ran_once(jobs: BackgroundJobs, job_ids: list[int], labels: list[str]) -> None:
    with anyio.fail_after(20):
        results = [await jobs.wait_for_job(job_id) for job_id in job_ids]
    for result in results:
        assert result.state is JobState.COMPLETED
        assert result.summary.attempts == 1
    assert [starts(label) for label in labels] == [1] * len(labels)


async def test_jobs_of_a_dispatcher_claim_whose_reply_was_lost_run_once(
    make_jobs: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    EVENTS.clear()
    labels = [f"lost-claim-{i}" for i in range(3)]
    async with make_jobs(commands=COMMANDS, execute=False) as producer:
        refs = [await producer.enqueue_command(SleepCommand, Sleep(0, label)) for label in labels]
    jobs = make_jobs(commands=COMMANDS)
    real_claim = jobs.store.claim
    broken: list[int] = []

    async def claim_then_lose_reply(*args: Any, **kwargs: Any) -> Any:
        claimed = await real_claim(*args, **kwargs)
        if claimed and not broken:
            broken.extend(job.id for job in claimed)
            raise ReplyLost("connection lost after the claim committed")
        return claimed

    monkeypatch.setattr(jobs.store, "claim", claim_then_lose_reply)
    async with jobs:
        await assert_ran_once(jobs, [r.id for r in refs], labels)
    assert sorted(broken) == sorted(r.id for r in refs)


async def test_jobs_of_a_finisher_claim_whose_reply_was_lost_run_once(
    make_jobs: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A named worker's job completing makes the finisher claim the worker's next job in the
    # same statement; that statement commits both, then the reply is lost.
    EVENTS.clear()
    labels = [f"lost-finish-{i}" for i in range(4)]
    async with make_jobs(commands=COMMANDS, execute=False) as producer:
        refs = [
            await producer.enqueue_command(SerialSleepCommand, Sleep(0, label)) for label in labels
        ]
    jobs = make_jobs(commands=COMMANDS)
    real = jobs.store.complete_and_claim
    broken: list[Claim] = []

    async def complete_and_claim_then_lose_reply(*args: Any, **kwargs: Any) -> Claim:
        claim = await real(*args, **kwargs)
        if claim.final and claim.jobs and not broken:
            broken.append(claim)
            raise ReplyLost("connection lost after the completion and claim committed")
        return claim

    monkeypatch.setattr(jobs.store, "complete_and_claim", complete_and_claim_then_lose_reply)
    async with jobs:
        await assert_ran_once(jobs, [r.id for r in refs], labels)
    assert len(broken) == 1 and len(broken[0].jobs) == 1


async def test_a_job_started_at_once_whose_insert_reply_was_lost_runs_once(
    make_jobs: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    EVENTS.clear()
    async with make_jobs(commands=COMMANDS) as jobs:
        # The first claim finds the queue drained; from then on enqueues start at once.
        warm_up = await jobs.enqueue_command(SleepCommand, Sleep(0, "lost-start-warm-up"))
        await jobs.wait_for_job(warm_up.id)
        real = jobs.store.enqueue_started
        broken: list[int] = []

        async def insert_then_lose_reply(*args: Any, **kwargs: Any) -> Any:
            started = await real(*args, **kwargs)
            if not broken:
                broken.extend(job.id for job in started)
                raise ReplyLost("connection lost after the insert committed")
            return started

        monkeypatch.setattr(jobs.store, "enqueue_started", insert_then_lose_reply)
        with pytest.raises(ReplyLost):
            await jobs.enqueue_command(
                SleepCommand, Sleep(0, "lost-start"), JobOptions(ref_id="lost-start")
            )
        assert len(broken) == 1
        found = await jobs.get_job_by_ref_id("lost-start")
        assert found is not None and found.summary.id == broken[0]
        await assert_ran_once(jobs, broken, ["lost-start"])
