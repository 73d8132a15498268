"""Crash safety: a worker process killed with SIGKILL loses no job and reruns no completed job."""

from __future__ import annotations

import signal
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from asyncjobs import BackgroundJobs, JobOptions, JobState
from tests.commands import (
    ALL_COMMANDS,
    EVENTS,
    Add,
    AddCommand,
    BlocksItsLoopFirstCommand,
    CallbackHangsFirstCommand,
    EchoSleepCommand,
    FirstAttemptHangsCommand,
    NoResultCallbackHangsFirstCommand,
    Sleep,
    SleepCommand,
    Sum,
    SyncIgnoresCancelFirstCommand,
)
from tests.processes import event_lines, start_worker, stop_worker, wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
Factory = Callable[..., BackgroundJobs]


async def _kill_when(
    worker: subprocess.Popen[str], ready: Callable[[], bool], seconds: float
) -> None:
    """SIGKILL the worker process once ``ready()`` holds; reap it whatever happens."""
    try:
        await wait_for(ready, seconds)
        worker.send_signal(signal.SIGKILL)
        await anyio.to_thread.run_sync(worker.wait)
    finally:
        if worker.poll() is None:
            worker.kill()
        if worker.stdout:
            worker.stdout.close()


async def test_jobs_of_a_killed_worker_are_retried_with_an_extra_attempt(
    make_jobs: Factory, dsn: str, tmp_path: Path
) -> None:
    log_file = tmp_path / "events.log"
    async with make_jobs(commands=ALL_COMMANDS, execute=False) as producer:
        pass  # migrate before the worker starts
    worker = await anyio.to_thread.run_sync(start_worker, dsn, "--lease-seconds", "1")
    try:
        async with make_jobs(commands=ALL_COMMANDS, execute=False) as producer:
            refs = [
                await producer.enqueue_command(
                    FirstAttemptHangsCommand, Sleep(60, label=f"j{i}", log_file=str(log_file))
                )
                for i in range(5)
            ]
            await wait_for(
                lambda: len([x for x in event_lines(log_file) if x[0] == "start"]) == 5, 20
            )
            worker.send_signal(signal.SIGKILL)
            await anyio.to_thread.run_sync(worker.wait)
            mid = [await producer.get_job(r.id) for r in refs]
            assert all(r is not None and r.state is JobState.STARTED for r in mid)
    finally:
        if worker.poll() is None:
            worker.kill()
        if worker.stdout:
            worker.stdout.close()
    async with make_jobs(commands=ALL_COMMANDS, lease_duration=anyio_seconds(1)) as jobs:
        with anyio.fail_after(30):
            results = [await jobs.wait_for_job(r.id) for r in refs]
    for result in results:
        assert result.state is JobState.COMPLETED
        assert result.completed is not None and result.completed.attempts == 2
    ends = [x for x in event_lines(log_file) if x[0] == "end"]
    assert sorted(x[1] for x in ends) == [f"j{i}" for i in range(5)]


async def test_a_sync_command_that_never_looks_at_its_cancel_does_not_hold_the_process(
    make_jobs: Factory, dsn: str, tmp_path: Path
) -> None:
    """SIGTERM: the shutdown asks the sync command to stop, waits a bounded time, then leaves
    it to its (daemon) thread, and the process exits. The job is not handed back while the
    thread may run: it stays leased to the node, and runs again once the node's lease lapses."""
    log_file = tmp_path / "events.log"
    async with make_jobs(commands=ALL_COMMANDS, execute=False) as producer:
        pass  # migrate before the worker starts
    worker = await anyio.to_thread.run_sync(
        start_worker, dsn, "--lease-seconds", "1", "--grace-seconds", "0.2"
    )
    try:
        async with make_jobs(commands=ALL_COMMANDS, execute=False) as producer:
            ref = await producer.enqueue_command(
                SyncIgnoresCancelFirstCommand, Sleep(3600, label="stuck", log_file=str(log_file))
            )
            await wait_for(lambda: any(x[0] == "start" for x in event_lines(log_file)), 20)
            assert await anyio.to_thread.run_sync(stop_worker, worker, 30) == 0
            left = await producer.get_job(ref.id)
            assert left is not None and left.state is JobState.STARTED
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    async with make_jobs(commands=ALL_COMMANDS, lease_duration=anyio_seconds(1)) as jobs:
        with anyio.fail_after(30):
            result = await jobs.wait_for_job(ref.id)
    assert result.state is JobState.COMPLETED
    assert result.completed is not None and result.completed.attempts == 2
    assert [x[0] for x in event_lines(log_file)] == ["start", "start", "end"]


def anyio_seconds(seconds: float) -> object:
    from datetime import timedelta

    return timedelta(seconds=seconds)


@pytest.mark.parametrize("kill_at", [0.2, 0.6])
async def test_kill_during_completion_neither_loses_nor_duplicates(
    make_jobs: Factory, dsn: str, tmp_path: Path, kill_at: float
) -> None:
    log_file = tmp_path / "events.log"
    total = 2000
    async with make_jobs(commands=ALL_COMMANDS, execute=False) as producer:
        # 5 ms each, 20 at a time: about half a second of draining, so the kill lands in it
        # even on a busy machine (with no-op jobs the drain could end before the kill).
        refs = await producer.enqueue_many(
            (SleepCommand, Sleep(0.005, label=f"j{i}", log_file=str(log_file)))
            for i in range(total)
        )
    worker = await anyio.to_thread.run_sync(
        start_worker, dsn, "--lease-seconds", "1", "--max-concurrency", "20"
    )
    # Kill it while it is busy finishing and archiving jobs, at a fraction of the drain.
    await _kill_when(worker, lambda: len(event_lines(log_file)) > 2 * total * kill_at, 30)
    async with make_jobs(commands=ALL_COMMANDS, execute=False) as reader:
        before = {r.id: await reader.get_job(r.id) for r in refs}
    committed = {i for i, r in before.items() if r is not None and r.state is JobState.COMPLETED}
    starts_before = Counter(int(x[4]) for x in event_lines(log_file) if x[0] == "start")
    async with make_jobs(commands=ALL_COMMANDS, lease_duration=anyio_seconds(1)) as jobs:
        with anyio.fail_after(60):
            results = {r.id: await jobs.wait_for_job(r.id) for r in refs}
    starts_after = Counter(int(x[4]) for x in event_lines(log_file) if x[0] == "start")
    assert all(r.state is JobState.COMPLETED for r in results.values())
    assert all(r.completed is not None and r.queued is None for r in results.values())
    # every job ran; a job whose completion had been committed never ran again
    assert set(starts_after) == set(results)
    assert all(starts_after[i] == starts_before[i] for i in committed)
    assert len(committed) < total  # the kill really happened mid-drain


async def test_a_worker_killed_during_the_callback_runs_only_the_callback_again(
    make_jobs: Factory, dsn: str, tmp_path: Path
) -> None:
    """The command succeeded and the job is Executed when its process dies: the next attempt
    runs the callback with the kept result, not the command a second time."""
    log_file = tmp_path / "events.log"
    echo = Sleep(60, label="echoed", log_file=str(log_file))
    async with make_jobs(commands=ALL_COMMANDS, execute=False) as producer:
        ref = await producer.enqueue_command(
            EchoSleepCommand, echo, JobOptions(callback=CallbackHangsFirstCommand.__name__)
        )
    worker = await anyio.to_thread.run_sync(start_worker, dsn, "--lease-seconds", "1")
    await _kill_when(worker, lambda: any(x[0] == "callback" for x in event_lines(log_file)), 20)
    async with make_jobs(commands=ALL_COMMANDS, execute=False) as reader:
        mid = await reader.get_job(ref.id)
        assert mid is not None and mid.state is JobState.EXECUTED
    async with make_jobs(commands=ALL_COMMANDS, lease_duration=anyio_seconds(1)) as jobs:
        with anyio.fail_after(30):
            result = await jobs.wait_for_job(ref.id)
    assert result.state is JobState.COMPLETED
    assert result.completed is not None and result.completed.attempts == 2
    events = [(x[0], x[1]) for x in event_lines(log_file)]
    # the callback got the command's result (the echoed request) both times
    assert events == [("start", "echoed"), ("callback", "echoed"), ("callback", "echoed")]


async def test_a_shutdown_during_the_callback_of_a_command_without_result_reruns_the_callback(
    make_jobs: Factory,
) -> None:
    EVENTS.clear()
    options = JobOptions(callback=NoResultCallbackHangsFirstCommand.__name__)
    async with make_jobs(commands=ALL_COMMANDS, shutdown_grace=anyio_seconds(0.2)) as jobs:
        ref = await jobs.enqueue_command(SleepCommand, Sleep(0, label="no-result"), options)
        await wait_for(lambda: any(event == "callback" for event, _, _ in EVENTS), 20)
    async with make_jobs(commands=ALL_COMMANDS) as jobs:
        with anyio.fail_after(30):
            result = await jobs.wait_for_job(ref.id)
    assert result.state is JobState.COMPLETED
    assert result.completed is not None and result.completed.response is None
    assert [(e, label) for e, label, _ in EVENTS if e in ("start", "end")] == [
        ("start", "no-result"),
        ("end", "no-result"),
    ]
    assert [label for e, label, _ in EVENTS if e == "callback"] == [str(ref.id)] * 2


async def test_a_host_cancelled_during_the_callback_leaves_the_callback_to_run_again(
    make_jobs: Factory,
) -> None:
    """Cancelled from outside (not a graceful shutdown) while the callback runs: the job must
    not be recorded Completed, as if its callback had run."""
    EVENTS.clear()
    options = JobOptions(callback=NoResultCallbackHangsFirstCommand.__name__)
    with anyio.fail_after(20), anyio.CancelScope() as host:
        async with make_jobs(commands=ALL_COMMANDS, shutdown_grace=anyio_seconds(0.2)) as jobs:
            ref = await jobs.enqueue_command(SleepCommand, Sleep(0, label="cb-host"), options)
            await wait_for(lambda: any(event == "callback" for event, _, _ in EVENTS), 20)
            host.cancel()
            await anyio.sleep(10)
    assert host.cancelled_caught
    async with make_jobs(commands=ALL_COMMANDS) as jobs:
        with anyio.fail_after(30):
            result = await jobs.wait_for_job(ref.id)
    assert result.state is JobState.COMPLETED and result.completed is not None
    assert result.completed.notified_date is not None
    assert [label for e, label, _ in EVENTS if e == "callback"] == [str(ref.id)] * 2
    assert [label for e, label, _ in EVENTS if e == "start"] == ["cb-host"]


@pytest.mark.parametrize("retry_limit", [2, 0])
async def test_a_job_whose_cancel_was_asked_while_its_worker_died_is_cancelled(
    make_jobs: Factory, dsn: str, tmp_path: Path, retry_limit: int
) -> None:
    """The cancel request reaches a job whose process was killed: when its lease runs out the
    job is cancelled, not run again; nor failed, had it no retries left."""
    log_file = tmp_path / "events.log"
    async with make_jobs(commands=ALL_COMMANDS, execute=False) as producer:
        ref = await producer.enqueue_command(
            FirstAttemptHangsCommand,
            Sleep(60, label="doomed", log_file=str(log_file)),
            JobOptions(retry_limit=retry_limit),
        )
    worker = await anyio.to_thread.run_sync(start_worker, dsn, "--lease-seconds", "1")
    await _kill_when(worker, lambda: any(x[0] == "start" for x in event_lines(log_file)), 20)
    async with make_jobs(commands=ALL_COMMANDS, lease_duration=anyio_seconds(1)) as jobs:
        assert await jobs.cancel_job(ref.id) is True  # Started: flagged for its (dead) node
        with anyio.fail_after(30):
            result = await jobs.wait_for_job(ref.id)
    assert result.state is JobState.CANCELLED and result.summary.error_code == "Cancelled"
    assert [x[0] for x in event_lines(log_file)] == ["start"]


async def test_a_process_that_missed_its_lease_stops_the_job_taken_over_from_it(
    make_jobs: Factory, dsn: str, tmp_path: Path
) -> None:
    """A worker's event loop blocks past its lease: another process takes the job back and
    runs it. When the first wakes up, it stops its own run of the job instead of finishing it
    beside the other."""
    log_file = tmp_path / "events.log"
    async with make_jobs(commands=ALL_COMMANDS, execute=False) as producer:
        ref = await producer.enqueue_command(
            BlocksItsLoopFirstCommand, Sleep(3, label="slow", log_file=str(log_file))
        )
    worker = await anyio.to_thread.run_sync(start_worker, dsn, "--lease-seconds", "1")
    try:
        await wait_for(lambda: any(x[0] == "start" for x in event_lines(log_file)), 20)
        async with make_jobs(commands=ALL_COMMANDS, lease_duration=anyio_seconds(1)) as jobs:
            with anyio.fail_after(20):
                result = await jobs.wait_for_job(ref.id)
            await anyio.sleep(5)  # the first worker wakes, and would end its run by now
    finally:
        if worker.poll() is None:
            worker.kill()
        await anyio.to_thread.run_sync(worker.wait)
        if worker.stdout:
            worker.stdout.close()
    assert result.state is JobState.COMPLETED and result.summary.attempts == 2
    assert [(x[0], x[1]) for x in event_lines(log_file)] == [
        ("start", "slow#1"), ("start", "slow#2"), ("end", "slow#2"),
    ]  # fmt: skip


async def test_a_job_back_on_the_node_whose_stopped_run_goes_on_waits_for_that_run(
    make_jobs: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """This node alone loses the database for longer than its lease: its sync job, whose
    command never looks at the stop request, runs on while another process takes the job
    back. Reachable again, the node claims the job anew: the new attempt starts once the old
    run has ended, never beside it, and the node goes on running jobs."""
    EVENTS.clear()
    async with make_jobs(commands=ALL_COMMANDS, execute=False) as other:
        jobs = make_jobs(commands=ALL_COMMANDS, lease_duration=anyio_seconds(1))
        async with jobs:
            ref = await jobs.enqueue_command(SyncIgnoresCancelFirstCommand, Sleep(3, "held"))
            with anyio.fail_after(10):
                while not EVENTS:
                    await anyio.sleep(0.01)
            renew = jobs.store.renew_node

            async def unreachable(*args: object, **kwargs: object) -> None:
                raise ConnectionResetError("the database is out of this node's reach")

            monkeypatch.setattr(jobs.store, "renew_node", unreachable)
            await anyio.sleep(1.0)
            with anyio.fail_after(10):  # until its lease lapses in the database
                while not (requeued := (await other.store.recover_orphans())[1]):
                    await anyio.sleep(0.05)
            assert requeued == [ref.id]
            taken = await other.get_job(ref.id)
            assert taken is not None and taken.queued is not None
            assert taken.queued.error is not None and taken.queued.error.message == (
                "the process running the job stopped or lost its lease; retrying"
            )  # (this process lives: it lost its lease)
            monkeypatch.setattr(jobs.store, "renew_node", renew)
            with anyio.fail_after(20):
                result = await jobs.wait_for_job(ref.id)
            assert await jobs.run_command_async(AddCommand, Add(1, 1)) == Sum(2)
    assert result.state is JobState.COMPLETED and result.summary.attempts == 2
    assert [(event, label) for event, label, _ in EVENTS] == [
        ("start", "held"), ("end", "held"), ("start", "held"), ("end", "held"),
    ]  # fmt: skip


async def test_a_job_whose_thread_a_shutdown_left_runs_again_when_the_runtime_comes_back(
    make_jobs: Factory,
) -> None:
    """A shutdown leaves behind a sync command that does not stop: its job stays leased to
    that run's node, to be taken back when its lease runs out. The same object entered again
    (an app's lifespan restarted in the process) is a new node, so the lease does run out."""
    EVENTS.clear()
    jobs = make_jobs(
        commands=ALL_COMMANDS, shutdown_grace=anyio_seconds(0), lease_duration=anyio_seconds(1)
    )
    async with jobs:
        ref = await jobs.enqueue_command(SyncIgnoresCancelFirstCommand, Sleep(2, "left"))
        with anyio.fail_after(10):
            while not EVENTS:
                await anyio.sleep(0.01)
    async with jobs:
        with anyio.fail_after(20):
            result = await jobs.wait_for_job(ref.id)
    assert result.state is JobState.COMPLETED and result.summary.attempts == 2
