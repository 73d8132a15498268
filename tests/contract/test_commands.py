"""Command shapes, APIs, serialization and injection, on every dialect."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass

import anyio
import pydantic
import pytest

from asyncjobs import (
    AsyncCommand,
    BackgroundJobs,
    JobOptions,
    JobResult,
    JobState,
    SyncCommand,
    current_job,
    job_logger,
    update_status,
)
from asyncjobs.exceptions import JobFailedError, RegistrationError
from tests.commands import (
    EVENTS,
    Add,
    AddCommand,
    AnswerCommand,
    Nested,
    PingCommand,
    Sleep,
    SleepCommand,
    Sum,
    SyncAddCommand,
    SyncAnswerCommand,
    SyncPingCommand,
    SyncRecordCommand,
)

pytestmark = pytest.mark.anyio
Factory = Callable[..., BackgroundJobs]


async def _run(jobs: BackgroundJobs, command: object, request: object = None) -> str | None:
    ref = await jobs.enqueue_command(command, request)  # type: ignore[arg-type]
    with anyio.fail_after(10):
        result = await jobs.wait_for_job(ref.id)
    assert result.state is JobState.COMPLETED, result.job and result.job.error
    assert result.completed is not None
    return result.completed.response_body


async def test_all_eight_command_shapes_run(make_jobs: Factory) -> None:
    EVENTS.clear()
    commands = [
        AddCommand, SyncAddCommand, PingCommand, AnswerCommand, SyncPingCommand,
        SyncAnswerCommand, SyncRecordCommand, SleepCommand,
    ]  # fmt: skip
    async with make_jobs(commands=commands) as jobs:
        assert await _run(jobs, AddCommand, Add(1, 2)) == '{"total":3}'  # async, request, result
        assert await _run(jobs, SyncAddCommand, Add(3, 4)) == '{"total":7}'
        assert await _run(jobs, PingCommand) is None  # async, no request, no result
        assert await _run(jobs, AnswerCommand) == "42"  # async, no request, result
        assert await _run(jobs, SyncPingCommand) is None
        assert await _run(jobs, SyncAnswerCommand) == '"forty-two"'
        assert await _run(jobs, "SyncRecordCommand", Add(5, 5)) is None  # by name
        assert await _run(jobs, SleepCommand, Sleep(0, label="s")) is None  # async, request
    assert [e[0] for e in EVENTS] == ["ping", "sync-ping", "sync", "start", "end"]
    assert EVENTS[2][1] == "10" and EVENTS[3][1] == "s"


async def test_nested_request_round_trips_into_its_declared_type(make_jobs: Factory) -> None:
    seen: list[object] = []

    class Inspect(AsyncCommand[Nested]):
        async def run(self, request: Nested) -> None:
            seen.append(request)

    async with make_jobs(commands=[Inspect]) as jobs:
        await _run(jobs, Inspect, Nested("n", ["x", "y"], Add(1, 2)))
    assert seen == [Nested("n", ["x", "y"], Add(1, 2))]
    assert isinstance(seen[0], Nested) and isinstance(seen[0].inner, Add)


async def test_sync_commands_run_in_worker_threads(make_jobs: Factory) -> None:
    threads: list[int] = []
    job_ids: list[int] = []

    class WhereAmI(AsyncCommand[Add]):
        async def run(self, request: Add) -> None:
            threads.append(threading.get_ident())

    from asyncjobs import SyncCommand

    class SyncWhereAmI(SyncCommand[Add]):
        def run(self, request: Add) -> None:
            threads.append(threading.get_ident())
            job_ids.append(current_job().id)  # the job context reaches the thread

    async with make_jobs(commands=[WhereAmI, SyncWhereAmI]) as jobs:
        await _run(jobs, WhereAmI, Add(1, 1))
        ref = await jobs.enqueue_command(SyncWhereAmI, Add(1, 1))
        await jobs.wait_for_job(ref.id)
    assert threads[0] == threading.get_ident() != threads[1]
    assert job_ids == [ref.id]


@dataclass
class Mailer:
    sent: list[str]


@dataclass
class Email:
    to: str


class SendEmail(AsyncCommand[Email]):
    def __init__(self, mailer: Mailer) -> None:
        self.mailer = mailer

    async def run(self, request: Email) -> None:
        self.mailer.sent.append(request.to)


class MaybeSendEmail(AsyncCommand[Email]):
    def __init__(self, mailer: Mailer | None = None) -> None:
        self.mailer = mailer

    async def run(self, request: Email) -> None:
        if self.mailer is not None:
            self.mailer.sent.append(request.to)


async def test_constructor_injection_by_type(make_jobs: Factory) -> None:
    mailer = Mailer([])
    commands = [SendEmail, MaybeSendEmail]
    async with make_jobs(commands=commands, services={Mailer: mailer}) as jobs:
        await _run(jobs, SendEmail, Email("a@b.c"))
        await _run(jobs, MaybeSendEmail, Email("d@e.f"))  # an optional service, there
    async with make_jobs(commands=[MaybeSendEmail]) as jobs:
        await _run(jobs, MaybeSendEmail, Email("g@h.i"))  # and not
    assert mailer.sent == ["a@b.c", "d@e.f"]


async def test_a_missing_service_is_named_at_start_and_fails_jobs_without_retrying(
    make_jobs: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    async with make_jobs(commands=[SendEmail]):
        pass
    assert "SendEmail needs a Mailer for 'mailer'" in caplog.text
    caplog.clear()
    async with make_jobs(commands=[SendEmail], execute=False) as producer:  # runs none: needs none
        await producer.enqueue_command(SendEmail, Email("a@b.c"))
    assert "needs a Mailer" not in caplog.text
    async with make_jobs(commands=[SendEmail], services={Mailer: Mailer([])}) as jobs:
        jobs.services.clear()  # (an application may change them after the start)
        ref = await jobs.enqueue_command(SendEmail, Email("a@b.c"))
        result = await jobs.wait_for_job(ref.id)
    assert result.failed is not None and result.failed.attempts == 1
    assert result.failed.error is not None and "needs a Mailer" in result.failed.error.message


async def test_api_handler_by_request_type(make_jobs: Factory) -> None:
    async with make_jobs() as jobs:

        @jobs.api(Add)
        async def add(request: Add) -> int:
            return request.a * request.b

        ref = await jobs.enqueue_api(Add(6, 7))
        result = await jobs.wait_for_job(ref.id)
    assert result.completed is not None
    assert (result.completed.request_type, result.completed.command) == ("API", None)
    assert result.completed.response_body == "42"


class Point(pydantic.BaseModel):
    x: int
    y: int


async def test_pydantic_requests_and_results(make_jobs: Factory) -> None:
    class Mirror(AsyncCommand[Point]):
        async def run(self, request: Point) -> None:
            assert isinstance(request, Point)
            current_job().status = f"{request.x},{request.y}"

    async with make_jobs(commands=[Mirror]) as jobs:
        jobs.register_api(Point, _double)
        await _run(jobs, Mirror, Point(x=1, y=2))
        ref = await jobs.enqueue_api(Point(x=2, y=3))
        result = await jobs.wait_for_job(ref.id)
    assert result.completed is not None
    assert result.completed.response == "Point"
    assert result.completed.response_body == '{"x":4,"y":6}'


async def _double(point: Point) -> Point:
    return Point(x=point.x * 2, y=point.y * 2)


async def test_stored_request_that_no_longer_loads_fails_cleanly(make_jobs: Factory) -> None:
    @dataclass
    class V1:
        name: str

    @dataclass
    class V2:
        name: int  # the type changed since the job was stored

    class Old(AsyncCommand[V1]):
        async def run(self, request: V1) -> None: ...

    class New(AsyncCommand[V2]):
        async def run(self, request: V2) -> None: ...

    New.__name__ = "Old"
    async with make_jobs(commands=[Old], execute=False) as producer:
        ref = await producer.enqueue_command(Old, V1("text"))
    async with make_jobs(commands=[New]) as jobs:
        result = await jobs.wait_for_job(ref.id)
        assert (await jobs.enqueue_command(New, V2(1))).id > ref.id  # the worker lives on
    assert result.failed is not None and result.failed.attempts == 1
    assert result.failed.error is not None
    assert "cannot load stored JSON" in result.failed.error.message


def test_command_without_request_type_is_rejected() -> None:
    from asyncjobs.commands import Registry

    class Bad(AsyncCommand):  # type: ignore[type-arg]
        async def run(self, request: object) -> None: ...

    with pytest.raises(RegistrationError, match="must name its request type"):
        Registry().add_command(Bad)
    with pytest.raises(RegistrationError, match="not a command class"):
        Registry().add_command(int)

    class NoRun(AsyncCommand[Add]):
        pass

    with pytest.raises(RegistrationError, match="NoRun does not implement run"):
        Registry().add_command(NoRun)


def _failures(results: list[JobResult]) -> list[tuple[int, str, str]]:
    """Each failed job's attempts, error type and message."""
    failures = []
    for result in results:
        assert result.state is JobState.FAILED and result.failed is not None
        assert result.failed.error is not None
        error = result.failed.error
        failures.append((result.failed.attempts, error.type, error.message))
    return failures


class Abort(BaseException):
    """Not an Exception: what a library might raise to unwind everything."""


class RaiseBaseException(AsyncCommand[Add]):
    async def run(self, request: Add) -> None:
        raise Abort(f"abort {request.a}")


class ExitInAThread(SyncCommand[Add]):
    def run(self, request: Add) -> None:
        sys.exit(request.a)


class CallbackExits(AsyncCommand[Sum]):
    async def run(self, request: Sum) -> None:
        raise SystemExit(9)


async def test_a_job_raising_what_is_no_exception_fails_and_the_worker_goes_on(
    make_jobs: Factory,
) -> None:
    """SystemExit or another BaseException out of a job is its failure (retried as usual),
    not the end of the process that runs it, nor a requeue without end."""
    commands = [RaiseBaseException, ExitInAThread, CallbackExits, AddCommand]
    async with make_jobs(commands=commands, default_retry_limit=1) as jobs:
        refs = [
            await jobs.enqueue_command(RaiseBaseException, Add(1, 0)),
            await jobs.enqueue_command(ExitInAThread, Add(3, 0)),
            await jobs.enqueue_command(AddCommand, Add(1, 1), JobOptions(callback="CallbackExits")),
        ]
        with anyio.fail_after(10):
            results = [await jobs.wait_for_job(ref.id) for ref in refs]
        with pytest.raises(JobFailedError, match="abort 2") as failed:
            await jobs.run_command_async(RaiseBaseException, Add(2, 0))
        assert isinstance(failed.value.__cause__, Abort)
        assert await _run(jobs, AddCommand, Add(2, 2)) == '{"total":4}'  # still running jobs
    assert _failures(results) == [
        (2, "Abort", "abort 1"),
        (2, "SystemExit", "3"),
        (1, "SystemExit", "callback CallbackExits failed: 9"),  # retried within its attempt
    ]


class StrayCancel(AsyncCommand[Add]):
    """Raises a cancellation that no cancellation caused: as awaiting a task that someone
    else cancelled does."""

    async def run(self, request: Add) -> None:
        raise asyncio.CancelledError(f"stray {request.a}")


class StrayCancelInAThread(SyncCommand[Add]):
    def run(self, request: Add) -> None:
        async def cancelled() -> None:
            raise asyncio.CancelledError(f"stray {request.a}")

        asyncio.run(cancelled())


class CallbackStrayCancel(AsyncCommand[Sum]):
    async def run(self, request: Sum) -> None:
        raise asyncio.CancelledError("stray callback")


async def test_a_cancellation_no_cancel_caused_is_the_jobs_failure(make_jobs: Factory) -> None:
    """Raised on, it would cancel the runtime's task group and the application in it, and
    leave the job queued to do the same to the next worker: it fails the job (retried as
    usual), and the worker goes on."""
    commands = [StrayCancel, StrayCancelInAThread, CallbackStrayCancel, AddCommand]
    async with make_jobs(commands=commands, default_retry_limit=1) as jobs:
        refs = [
            await jobs.enqueue_command(StrayCancel, Add(1, 0)),
            await jobs.enqueue_command(StrayCancelInAThread, Add(3, 0)),
            await jobs.enqueue_command(
                AddCommand, Add(1, 1), JobOptions(callback="CallbackStrayCancel")
            ),
        ]
        with anyio.fail_after(10):
            results = [await jobs.wait_for_job(ref.id) for ref in refs]
        with pytest.raises(JobFailedError, match="stray 2"):
            await jobs.run_command_async(StrayCancel, Add(2, 0))
        assert await _run(jobs, AddCommand, Add(2, 2)) == '{"total":4}'  # still running jobs
    assert _failures(results) == [
        (2, "CancelledError", "stray 1"),
        (2, "CancelledError", "stray 3"),
        (1, "CancelledError", "callback CallbackStrayCancel failed: stray callback"),
    ]


class Notify(AsyncCommand[Sum]):
    async def run(self, request: Sum) -> None:
        pass


async def test_a_callback_the_worker_does_not_know_fails_its_job_not_the_worker(
    make_jobs: Factory,
) -> None:
    """The producer knows the callback command, the worker process does not (a split
    deployment, or a rename while jobs waited): the job fails with its result kept, and the
    worker goes on."""
    async with make_jobs(commands=[AddCommand, Notify], execute=False) as producer:
        ref = await producer.enqueue_command(AddCommand, Add(1, 2), JobOptions(callback="Notify"))
    async with make_jobs(commands=[AddCommand], default_retry_limit=0) as worker:
        with anyio.fail_after(10):
            result = await worker.wait_for_job(ref.id)
        assert await _run(worker, AddCommand, Add(2, 2)) == '{"total":4}'  # still running jobs
    assert result.state is JobState.FAILED and result.failed is not None
    assert result.failed.error_code == "CallbackFailed"
    assert result.failed.error is not None and "Notify" in result.failed.error.message
    assert result.failed.response_body == '{"total":3}'


class Untidy(AsyncCommand[Add]):
    """Leaves text no database would take as it is: NUL, and a lone surrogate (as
    os.fsdecode makes of a file name that is not UTF-8)."""

    async def run(self, request: Add) -> None:
        bad = "a\x00b-" + os.fsdecode(b"file-\xff")
        update_status(status=bad)
        job_logger().info("line %s", bad)
        if request.a:
            raise RuntimeError(bad)


async def test_text_no_database_takes_is_stored_replaced_and_holds_up_nothing(
    make_jobs: Factory,
) -> None:
    async with make_jobs(commands=[Untidy, AddCommand], default_retry_limit=0) as jobs:
        refs = [
            await jobs.enqueue_command(Untidy, Add(0, 0)),
            await jobs.enqueue_command(Untidy, Add(1, 0)),
            await jobs.enqueue_command(AddCommand, Add(2, 2)),
        ]
        with anyio.fail_after(10):
            done, failed, other = [await jobs.wait_for_job(ref.id) for ref in refs]
    assert other.state is JobState.COMPLETED
    tidy = "a\ufffdb-file-?"
    assert done.completed is not None and done.completed.status == tidy
    assert done.completed.logs is not None and done.completed.logs.endswith(f"line {tidy}\n")
    assert failed.failed is not None and failed.failed.error is not None
    assert failed.failed.error.message == tidy and failed.failed.status == tidy


async def test_a_transient_job_cut_off_from_outside_ends_cancelled(make_jobs: Factory) -> None:
    """The application leaves `async with jobs` by a cancel of its own (no graceful stop): a
    transient job cut off there ends Cancelled, not Started for ever."""
    with anyio.CancelScope() as application:
        async with make_jobs(commands=[SleepCommand]) as jobs:
            job = await jobs.run_command(SleepCommand, Sleep(30))
            with anyio.fail_after(10):
                while job.state is not JobState.STARTED:
                    await anyio.sleep(0.01)
            # Cut off only once it runs: a slow start-up must not end the test before it.
            application.cancel()
            await anyio.sleep(30)
    assert job.state is JobState.CANCELLED and job.completed_date is not None


async def test_no_thread_of_the_runtime_outlives_it(make_jobs: Factory) -> None:
    """The sync commands' threads end with the runtime (they waited out IDLE_SECONDS)."""
    before = {t for t in threading.enumerate() if t.name == "asyncjobs sync command"}
    async with make_jobs(commands=[SyncAddCommand]) as jobs:
        refs = await jobs.enqueue_many((SyncAddCommand, Add(i, i)) for i in range(4))
        for ref in refs:
            assert (await jobs.wait_for_job(ref.id)).state is JobState.COMPLETED
    with anyio.fail_after(5):  # well under IDLE_SECONDS
        while {t for t in threading.enumerate() if t.name == "asyncjobs sync command"} - before:
            await anyio.sleep(0.02)
