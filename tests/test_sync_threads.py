"""The threads sync commands run in (``asyncjobs._threads``): daemon threads, reused, bounded,
with the job's context, and a wait a shutdown can give up."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import anyio
import anyio.from_thread
import anyio.lowlevel
import pytest

from asyncjobs import BackgroundJob, JobState, _threads, cancellation_requested, current_job
from asyncjobs._threads import SyncThreads
from asyncjobs.context import JobContext, _current

pytestmark = pytest.mark.anyio


def _enter_job(job_id: int = 1) -> JobContext:
    job = BackgroundJob(
        id=job_id,
        ref_id=f"r{job_id}",
        request_type="CMD",
        request="Nothing",
        request_body="null",
        state=JobState.STARTED,
        created_date=datetime.now(UTC),
        retry_limit=0,
    )
    context = JobContext(job)
    _current.set(context)
    return context


def _pool_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "asyncjobs sync command"]


async def _three_at_once(threads: SyncThreads) -> None:
    """Three short commands at once: three threads, idle after."""

    async def one(job_id: int) -> None:
        _enter_job(job_id)
        await threads.run(time.sleep, (0.05,))

    async with anyio.create_task_group() as tg:
        for job_id in range(3):
            tg.start_soon(one, job_id)


async def test_a_command_runs_in_a_daemon_thread_with_its_job_and_threads_are_reused() -> None:
    threads = SyncThreads(4)
    _enter_job(7)

    def where() -> tuple[int, bool, int]:
        thread = threading.current_thread()
        return thread.ident or 0, thread.daemon, current_job().id

    seen = [await threads.run(where, ()) for _ in range(5)]
    assert {daemon for _ident, daemon, _job in seen} == {True}
    assert {job for _ident, _daemon, job in seen} == {7}
    assert len({ident for ident, _daemon, _job in seen}) == 1  # one after another: one thread
    assert seen[0][0] != threading.get_ident()


async def test_results_and_errors_come_back_as_the_command_made_them() -> None:
    threads = SyncThreads(2)
    _enter_job()
    assert await threads.run(lambda a, b: a + b, (2, 3)) == 5

    class Boom(Exception):
        pass

    def fail() -> None:
        raise Boom("no")

    with pytest.raises(Boom, match="no"):
        await threads.run(fail, ())


async def test_no_more_threads_run_at_once_than_the_limit() -> None:
    threads = SyncThreads(2)
    running = 0
    most = 0
    lock = threading.Lock()

    def busy() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.05)
        with lock:
            running -= 1

    async def one(job_id: int) -> None:
        _enter_job(job_id)
        await threads.run(busy, ())

    async with anyio.create_task_group() as tg:
        for job_id in range(6):
            tg.start_soon(one, job_id)
    assert most == 2


async def test_idle_threads_end_and_new_work_still_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_threads, "IDLE_SECONDS", 0.05)
    before = len(_pool_threads())
    threads = SyncThreads(3)
    await _three_at_once(threads)
    with anyio.fail_after(5):
        while len(_pool_threads()) > before:
            await anyio.sleep(0.02)
    _enter_job()
    assert await threads.run(lambda: "again", ()) == "again"


async def test_a_cancelled_job_raises_the_flag_and_waits_for_its_thread() -> None:
    threads = SyncThreads(1)
    _enter_job()
    saw_flag = threading.Event()

    def until_asked() -> str:
        while not cancellation_requested():
            time.sleep(0.01)
        saw_flag.set()
        time.sleep(0.1)  # the job still waits for this
        return "stopped"

    with anyio.move_on_after(0.1) as scope:
        await threads.run(until_asked, ())
    assert scope.cancelled_caught
    assert saw_flag.is_set()  # the run did not end before the thread did


async def test_a_thread_that_never_returns_can_be_given_up() -> None:
    threads = SyncThreads(1)
    context = _enter_job()
    release = threading.Event()
    ended = anyio.Event()

    async def run_it(scope: anyio.CancelScope) -> None:
        with scope:
            await threads.run(release.wait, ())
        ended.set()

    try:
        scope = anyio.CancelScope()
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_it, scope)
            await anyio.sleep(0.05)
            scope.cancel()  # as a shutdown does: the job's scope, then the wait
            await anyio.sleep(0.1)
            assert not ended.is_set()  # a cancel alone waits for the thread
            assert context.cancel_event.is_set()
            assert context.thread_wait is not None
            context.thread_wait.cancel()
            with anyio.fail_after(5):
                await ended.wait()
    finally:
        release.set()


async def test_a_command_can_call_async_code_through_anyio_from_thread() -> None:
    threads = SyncThreads(1)
    _enter_job()
    loop_thread = threading.get_ident()

    async def in_the_loop(value: int) -> tuple[int, int]:
        await anyio.lowlevel.checkpoint()
        return value * 2, threading.get_ident()

    def command() -> tuple[int, int]:
        return anyio.from_thread.run(in_the_loop, 21)

    assert await threads.run(command, ()) == (42, loop_thread)


async def test_closing_ends_the_idle_threads_at_once() -> None:
    """The runtime closes its pool when it stops: its idle threads end then, not IDLE_SECONDS
    later (an application that starts and stops runtimes piled them up), and a pool used
    again starts new ones."""
    before = set(_pool_threads())
    threads = SyncThreads(3)
    await _three_at_once(threads)
    assert len(set(_pool_threads()) - before) == 3
    threads.close()
    with anyio.fail_after(5):  # well under IDLE_SECONDS
        while set(_pool_threads()) - before:
            await anyio.sleep(0.02)
    _enter_job()
    assert await threads.run(lambda: "again", ()) == "again"
