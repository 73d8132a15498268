"""A claim that commits but whose reply never arrives (the connection breaks after the commit)
leaves jobs Started under a node that stays alive: no lease runs out, so nobody would ever run
them. Each test breaks one claim path that way on purpose and checks that every job still runs
exactly once, with one attempt counted."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import anyio
import pytest

from asyncjobs import AsyncCommand, BackgroundJobs, JobOptions, JobState, current_job
from asyncjobs.store import Store
from tests.commands import (
    EVENTS,
    CallbackHangsFirstCommand,
    EchoSleepCommand,
    SerialSleepCommand,
    Sleep,
    SleepCommand,
)

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


async def enqueue_labelled(make_jobs: Factory, command: type[Any], labels: list[str]) -> list[int]:
    """Enqueue one job of ``command`` per label from a process that runs nothing; their ids."""
    EVENTS.clear()
    async with make_jobs(commands=COMMANDS, execute=False) as producer:
        return [(await producer.enqueue_command(command, Sleep(0, label))).id for label in labels]


def lose_first_reply(
    monkeypatch: pytest.MonkeyPatch, store: Store, method: str, when: Callable[[Any], bool]
) -> list[Any]:
    """Make ``store.<method>`` commit as usual, then raise :class:`ReplyLost` the first time its
    result satisfies ``when``; returns the list that result (the lost reply) is put in."""
    real = getattr(store, method)
    lost: list[Any] = []

    async def commit_then_lose_reply(*args: Any, **kwargs: Any) -> Any:
        result = await real(*args, **kwargs)
        if not lost and when(result):
            lost.append(result)
            raise ReplyLost(f"connection lost after {method} committed")
        return result

    monkeypatch.setattr(store, method, commit_then_lose_reply)
    return lost


async def test_jobs_of_a_dispatcher_claim_whose_reply_was_lost_run_once(
    make_jobs: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    labels = [f"lost-claim-{i}" for i in range(3)]
    job_ids = await enqueue_labelled(make_jobs, SleepCommand, labels)
    jobs = make_jobs(commands=COMMANDS)
    lost = lose_first_reply(monkeypatch, jobs.store, "claim", lambda claim: bool(claim.jobs))
    async with jobs:
        await assert_ran_once(jobs, job_ids, labels)
    assert len(lost) == 1 and sorted(job.id for job in lost[0].jobs) == sorted(job_ids)


async def test_jobs_of_a_finisher_claim_whose_reply_was_lost_run_once(
    make_jobs: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A named worker's job completing makes the finisher claim the worker's next job in the
    # same statement; that statement commits both, then the reply is lost.
    labels = [f"lost-finish-{i}" for i in range(4)]
    job_ids = await enqueue_labelled(make_jobs, SerialSleepCommand, labels)
    jobs = make_jobs(commands=COMMANDS)
    lost = lose_first_reply(
        monkeypatch, jobs.store, "complete_and_claim", lambda claim: claim.final and claim.jobs
    )
    async with jobs:
        await assert_ran_once(jobs, job_ids, labels)
    assert len(lost) == 1 and len(lost[0].jobs) == 1


async def test_a_job_started_at_once_whose_insert_reply_was_lost_runs_once(
    make_jobs: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    EVENTS.clear()
    async with make_jobs(commands=COMMANDS) as jobs:
        # The first claim finds the queue drained; from then on enqueues start at once.
        warm_up = await jobs.enqueue_command(SleepCommand, Sleep(0, "lost-start-warm-up"))
        await jobs.wait_for_job(warm_up.id)
        lost = lose_first_reply(monkeypatch, jobs.store, "enqueue_started", lambda _: True)
        with pytest.raises(ReplyLost):
            await jobs.enqueue_command(
                SleepCommand, Sleep(0, "lost-start"), JobOptions(ref_id="lost-start")
            )
        assert len(lost) == 1 and len(lost[0]) == 1
        found = await jobs.get_job_by_ref_id("lost-start")
        assert found is not None and found.summary.id == lost[0][0].id
        await assert_ran_once(jobs, [found.summary.id], ["lost-start"])


class FailsFirstAttempt(AsyncCommand[Sleep]):
    """Fails its first attempt at once; later ones sleep, then return."""

    async def run(self, request: Sleep) -> None:
        EVENTS.append(("start", request.label, current_job().attempts))
        if current_job().attempts == 1:
            raise RuntimeError("first attempt fails")
        await anyio.sleep(request.seconds)


async def test_a_retry_whose_reply_was_lost_is_not_written_over_the_next_attempt(
    make_jobs: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write that puts a failed attempt back in the queue commits, its reply is lost, and
    the job is claimed again before the write is sent again: that second write must not put
    the running attempt back in the queue (it would run beside itself)."""
    EVENTS.clear()
    async with make_jobs(commands=[FailsFirstAttempt]) as jobs:
        real_finish = jobs.store.finish
        lost: list[bool] = []

        async def finish_then_lose_the_reply(node: str, outcomes: Any) -> Any:
            report = await real_finish(node, outcomes)
            if not lost and any(o.state is JobState.QUEUED for o in outcomes):
                lost.append(True)
                with anyio.fail_after(10):  # until the next attempt runs
                    while starts("fenced") < 2:
                        await anyio.sleep(0.01)
                raise ReplyLost("the connection broke after the commit")
            return report

        monkeypatch.setattr(jobs.store, "finish", finish_then_lose_the_reply)
        ref = await jobs.enqueue_command(FailsFirstAttempt, Sleep(0.5, "fenced"))
        with anyio.fail_after(20):
            result = await jobs.wait_for_job(ref.id)
        await anyio.sleep(0.3)  # a third attempt would have started by now
    assert lost == [True]
    assert result.state is JobState.COMPLETED and result.summary.attempts == 2
    assert [e[2] for e in EVENTS if e[0] == "start"] == [1, 2]


async def test_a_cancel_asked_while_an_attempt_fails_is_not_lost_to_the_retry(
    make_jobs: Factory,
) -> None:
    """Another process asks to cancel a running job; the attempt fails before its node hears of
    the request (no notifications, a long poll): the job ends Cancelled, not retried."""
    EVENTS.clear()
    asked = anyio.Event()

    class FailsLater(AsyncCommand[Sleep]):
        async def run(self, request: Sleep) -> None:
            EVENTS.append(("start", request.label, current_job().attempts))
            with anyio.fail_after(request.seconds):
                await asked.wait()
            raise RuntimeError("failed after the cancel was asked")

    # Nothing tells the node of the cancel soon: no notifications, a long poll, a heartbeat
    # (which looks for cancels) every 10 s.
    slow_to_hear = {
        "notifications": False,
        "poll_interval": timedelta(seconds=30),
        "lease_duration": timedelta(seconds=30),
    }
    async with (
        make_jobs(commands=[FailsLater], **slow_to_hear) as node,
        make_jobs(commands=[FailsLater], execute=False) as other,
    ):
        # With retries left the failure would be retried; without, it would end Failed.
        ref = await node.enqueue_command(FailsLater, Sleep(10, "asked"))
        last = await node.enqueue_command(FailsLater, Sleep(10, "last"), JobOptions(retry_limit=0))
        with anyio.fail_after(10):
            while starts("asked") < 1 or starts("last") < 1:
                await anyio.sleep(0.01)
        assert await other.cancel_job(ref.id) is True
        assert await other.cancel_job(last.id) is True
        asked.set()
        with anyio.fail_after(20):
            results = [await node.wait_for_job(ref.id), await node.wait_for_job(last.id)]
    for result in results:
        assert result.state is JobState.CANCELLED and result.summary.attempts == 1
        assert result.summary.error_code == "Cancelled"
    assert starts("asked") == 1 and starts("last") == 1


async def test_jobs_of_a_claim_whose_reply_was_lost_go_back_unused_if_a_shutdown_comes_first(
    make_jobs: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process stops (a deploy) right after a claim's reply was lost: the claimed jobs
    are given back before the node goes, not left Started to wait out its lease and lose an
    attempt they never had."""
    job_ids = await enqueue_labelled(make_jobs, SleepCommand, ["unsure"])
    jobs = make_jobs(commands=COMMANDS)
    lost = lose_first_reply(monkeypatch, jobs.store, "claim", lambda claim: bool(claim.jobs))
    async with jobs:
        with anyio.fail_after(10):
            while not lost:
                await anyio.sleep(0.001)
    async with make_jobs(commands=COMMANDS, execute=False) as probe:
        result = await probe.get_job(job_ids[0])
    assert result is not None
    # (had the dispatcher given it back first, it may have run before the exit)
    assert (result.state, result.summary.attempts) in [
        (JobState.QUEUED, 0), (JobState.COMPLETED, 1),
    ]  # fmt: skip


async def test_a_cancel_asked_while_a_claims_reply_is_lost_is_not_lost_to_its_requeue(
    make_jobs: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job's claim commits, its reply is lost, and the job is cancelled (from another
    process) before its node gives it back: it ends Cancelled and never runs."""
    job_ids = await enqueue_labelled(make_jobs, SleepCommand, ["unsure"])
    async with make_jobs(commands=COMMANDS, execute=False) as other:
        jobs = make_jobs(commands=COMMANDS)
        real_claim = jobs.store.claim
        acknowledged: list[bool] = []

        async def claim_cancelled_then_lost(*args: Any, **kwargs: Any) -> Any:
            claim = await real_claim(*args, **kwargs)
            if claim.jobs and not acknowledged:
                acknowledged.append(await other.cancel_job(job_ids[0]))
                raise ReplyLost("connection lost after claim committed")
            return claim

        monkeypatch.setattr(jobs.store, "claim", claim_cancelled_then_lost)
        async with jobs:
            with anyio.fail_after(20):
                result = await jobs.wait_for_job(job_ids[0])
    assert acknowledged == [True]
    assert result.state is JobState.CANCELLED
    assert starts("unsure") == 0


async def test_an_outcome_the_database_refuses_holds_up_no_other(
    make_jobs: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database refuses, again and again, every write that holds one job's outcome (a value
    it cannot take): the other jobs' outcomes are recorded all the same, and that job is
    recorded as failed, saying why, rather than held Started (and run again after a restart)."""
    EVENTS.clear()
    async with make_jobs(commands=[SleepCommand]) as jobs:
        real = jobs.store.complete_and_claim
        poisoned: list[int] = []

        async def refuse_the_poisoned(node: str, outcomes: Any, *args: Any, **kwargs: Any) -> Any:
            if any(o.job.id in poisoned for o in outcomes):
                raise ValueError("Data too long for column 'status'")
            return await real(node, outcomes, *args, **kwargs)

        monkeypatch.setattr(jobs.store, "complete_and_claim", refuse_the_poisoned)
        bad = await jobs.enqueue_command(SleepCommand, Sleep(0.3, "poisoned"))
        poisoned.append(bad.id)
        good = [await jobs.enqueue_command(SleepCommand, Sleep(0.3, f"g{i}")) for i in range(5)]
        with anyio.fail_after(20):
            results = [await jobs.wait_for_job(ref.id) for ref in good]
            refused = await jobs.wait_for_job(bad.id)
    assert [r.state for r in results] == [JobState.COMPLETED] * 5
    assert refused.state is JobState.FAILED and refused.failed is not None
    assert refused.failed.error_code == "UnrecordableOutcome"
    assert refused.failed.error is not None and "Data too long" in refused.failed.error.message
    assert starts("poisoned") == 1


def no_answer_once(monkeypatch: pytest.MonkeyPatch, store: Store, method: str) -> list[bool]:
    """Make the first call of ``store.<method>`` wait for an answer that never comes (its
    connection's host gone); returns a list that holds True once that call was made."""
    real = getattr(store, method)
    waited: list[bool] = []

    async def never_answered_once(*args: Any, **kwargs: Any) -> Any:
        if not waited:
            waited.append(True)
            await anyio.sleep_forever()
        return await real(*args, **kwargs)

    monkeypatch.setattr(store, method, never_answered_once)
    return waited


async def test_a_give_back_after_a_lost_claim_that_gets_no_answer_is_tried_again(
    make_jobs: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim's reply is lost, and the call that gives back its jobs gets no answer either:
    it gives up in time and is sent again, rather than stop the dispatcher (and its jobs,
    leased to a node that lives on, would never run)."""
    labels = ["claim-lost-then-no-answer"]
    job_ids = await enqueue_labelled(make_jobs, SleepCommand, labels)
    jobs = make_jobs(commands=COMMANDS)
    jobs._answer_bound = 1.0  # (10 s at least otherwise)
    lost = lose_first_reply(monkeypatch, jobs.store, "claim", lambda claim: bool(claim.jobs))
    waited = no_answer_once(monkeypatch, jobs.store, "requeue_unknown")
    async with jobs:
        await assert_ran_once(jobs, job_ids, labels)
    assert len(lost) == 1 and waited == [True]


async def test_a_mark_executed_that_gets_no_answer_does_not_hold_the_job(
    make_jobs: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job's command succeeded and its callback is next: the mark that it was executed
    gets no answer, gives up in time, and the callback runs (the mark only spares the command
    a second run should the process stop during the callback)."""
    EVENTS.clear()
    jobs = make_jobs(commands=[EchoSleepCommand, CallbackHangsFirstCommand], default_retry_limit=0)
    jobs._answer_bound = 1.0
    waited = no_answer_once(monkeypatch, jobs.store, "mark_executed")
    async with jobs:
        ref = await jobs.enqueue_command(
            EchoSleepCommand, Sleep(0, "marked"), JobOptions(callback="CallbackHangsFirstCommand")
        )
        with anyio.fail_after(20):
            result = await jobs.wait_for_job(ref.id)
    assert result.state is JobState.COMPLETED and waited == [True]
    assert [event[0] for event in EVENTS] == ["start", "callback"]
