"""What a running job can see and report, on every dialect."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

import anyio
import anyio.lowlevel
import pytest

from asyncjobs import (
    AsyncCommand,
    BackgroundJobs,
    JobOptions,
    JobResult,
    JobState,
    SyncCommand,
    cancellation_requested,
    current_job,
    job_logger,
    update_status,
)
from asyncjobs.context import CAPPED_MARKER, MAX_LOG_CHARS
from asyncjobs.exceptions import InvalidOptionsError
from tests.commands import Add, AddCommand, Sum

pytestmark = pytest.mark.anyio
Factory = Callable[..., BackgroundJobs]


def test_current_job_outside_a_job_is_a_lookup_error() -> None:
    with pytest.raises(LookupError, match="only available inside a running job"):
        current_job()
    with pytest.raises(LookupError):
        job_logger()


class Chatty(AsyncCommand[Add]):
    async def run(self, request: Add) -> None:
        log = job_logger()
        for i in range(request.a):
            log.info("line %d", i)
            if i % 50 == 0:
                await anyio.sleep(0.2)  # six pauses: the job outlasts a few progress writes


async def test_job_logger_writes_to_logging_and_job_logs_in_batches(
    make_jobs: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    async with make_jobs(commands=[Chatty]) as jobs:
        writes = 0
        real_update = jobs.store.update_progress

        async def counting(updates: object) -> None:
            nonlocal writes
            writes += 1
            await real_update(updates)  # type: ignore[arg-type]

        jobs.store.update_progress = counting  # type: ignore[method-assign]
        with caplog.at_level(logging.INFO, logger="asyncjobs.job"):
            ref = await jobs.enqueue_command(Chatty, Add(300, 0))
            result = await jobs.wait_for_job(ref.id)
    assert result.completed is not None and result.completed.logs is not None
    lines = result.completed.logs.splitlines()
    assert len(lines) == 300 and lines[0].endswith("INFO line 0") and lines[-1].endswith("line 299")
    assert sum("line 299" in r.getMessage() for r in caplog.records) == 1
    assert 1 <= writes < 10  # written as it ran, batched: far fewer writes than lines


class LogsAFailure(AsyncCommand[Add]):
    async def run(self, request: Add) -> None:
        try:
            {}["missing"]
        except KeyError:
            job_logger().exception("lookup failed")


async def test_job_logger_records_name_the_job_and_keep_the_traceback(
    make_jobs: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    async with make_jobs(commands=[LogsAFailure]) as jobs:
        with caplog.at_level(logging.INFO, logger="asyncjobs.job"):
            ref = await jobs.enqueue_command(LogsAFailure, Add(0, 0))
            result = await jobs.wait_for_job(ref.id)
    [record] = [r for r in caplog.records if r.getMessage() == "lookup failed"]
    assert (record.filename, record.funcName) == ("test_context.py", "run")
    assert result.completed is not None and result.completed.logs is not None
    assert "ERROR lookup failed\nTraceback (most recent call last):" in result.completed.logs
    assert "KeyError: 'missing'" in result.completed.logs


class LogsThenWaits(AsyncCommand[Add]):
    """Logs ``a`` lines, then waits until ``released`` (so a progress write falls between)."""

    released = anyio.Event()

    async def run(self, request: Add) -> None:
        for i in range(request.a):
            job_logger().info("line %d", i)
        await LogsThenWaits.released.wait()
        job_logger().info("last line")


@pytest.mark.parametrize("reply_lost_after_commit", [False, True])
@pytest.mark.parametrize("job_ends_during_the_write", [False, True])
async def test_log_lines_a_failed_progress_write_took_are_stored_once(
    make_jobs: Factory, job_ends_during_the_write: bool, reply_lost_after_commit: bool
) -> None:
    """The lines go to a later progress write, or before the outcome of a job that ended while
    the failing write was in flight; and a write that did store them, its reply lost after the
    commit, does not make them appear twice."""
    LogsThenWaits.released = anyio.Event()
    async with make_jobs(commands=[LogsThenWaits]) as jobs:
        real_update = jobs.store.update_progress
        failed: list[object] = []

        async def fails_first_with_logs(updates: list[dict[str, object]]) -> None:
            if not failed and any(u["logs"] for u in updates):
                failed.append(updates)
                if reply_lost_after_commit:
                    await real_update(updates)
                if job_ends_during_the_write:
                    LogsThenWaits.released.set()
                    with anyio.fail_after(10):
                        while jobs.statistics()["running"]:
                            await anyio.sleep(0.01)
                raise ConnectionResetError("database unreachable")
            await real_update(updates)

        jobs.store.update_progress = fails_first_with_logs  # type: ignore[method-assign]
        ref = await jobs.enqueue_command(LogsThenWaits, Add(3, 0))
        with anyio.fail_after(10):
            while not failed:
                await anyio.sleep(0.05)
        LogsThenWaits.released.set()
        result = await jobs.wait_for_job(ref.id)
    assert result.completed is not None and result.completed.logs is not None
    lines = [line.rsplit("INFO ", 1)[-1] for line in result.completed.logs.splitlines()]
    assert lines == ["line 0", "line 1", "line 2", "last line"]


async def test_a_progress_write_sent_again_appends_only_what_is_not_stored(
    make_jobs: Factory,
) -> None:
    """update_progress appends at an offset: text stored past it by a write whose reply was
    lost is not appended twice, whatever the text (quotes, %, characters past the BMP)."""
    async with make_jobs(commands=[Chatty], execute=False) as jobs:
        ref = await jobs.enqueue_command(Chatty, Add(0, 0))
        assert [job.id for job in (await jobs.store.claim("n1", 1)).jobs] == [ref.id]

        async def write(logs: str, logs_at: int) -> str | None:
            now = datetime.now(UTC)
            row = {"id": ref.id, "progress": None, "status": None, "logs": logs, "now": now,
                   "node": "n1"}  # fmt: skip
            await jobs.store.update_progress([{**row, "logs_at": logs_at}])
            found = await jobs.get_job(ref.id)
            assert found is not None and found.job is not None
            return found.job.logs

        first = "it's 100%\n"
        assert await write(first, 0) == first
        second = "é 😀 'x'\n"
        whole = first + second
        assert await write(first + second, 0) == whole  # the first write's reply was lost
        assert await write(first + second, 0) == whole  # and so was this one's
        length = jobs.dialect.text_length(whole)
        assert await write("last\n", length) == whole + "last\n"
        # A node that no longer holds the job (its lease lapsed, the job went elsewhere)
        # writes nothing into it.
        await jobs.store.update_progress(
            [{"id": ref.id, "progress": 0.5, "status": "stale", "logs": "stale\n",
              "logs_at": 0, "now": datetime.now(UTC), "node": "n0"}]
        )  # fmt: skip
        found = await jobs.get_job(ref.id)
        assert found is not None and found.job is not None
        assert (found.job.logs, found.job.status) == (whole + "last\n", None)


async def test_stored_logs_are_capped_with_a_marker(make_jobs: Factory) -> None:
    class Flood(AsyncCommand[Add]):
        async def run(self, request: Add) -> None:
            for _ in range(request.a):
                job_logger().info("x" * 1000)

    async with make_jobs(commands=[Flood]) as jobs:
        ref = await jobs.enqueue_command(Flood, Add(200, 0))
        result = await jobs.wait_for_job(ref.id)
    assert result.completed is not None and result.completed.logs is not None
    logs = result.completed.logs
    assert logs.endswith(CAPPED_MARKER)
    assert MAX_LOG_CHARS < len(logs) <= MAX_LOG_CHARS + len(CAPPED_MARKER) + 1


async def _running_with_progress(jobs: BackgroundJobs, job_id: int, progress: float) -> JobResult:
    """The job, once a progress write stored ``progress`` while it runs."""
    with anyio.fail_after(10):
        while True:
            result = await jobs.get_job(job_id)
            assert result is not None
            if result.queued is not None and result.queued.progress == progress:
                return result
            await anyio.sleep(0.05)


async def test_progress_and_status_are_visible_while_running(make_jobs: Factory) -> None:
    release = anyio.Event()

    class Reporter(AsyncCommand[Add]):
        async def run(self, request: Add) -> None:
            update_status(progress=0.25, status="step 1 of 4")
            await release.wait()

    async with make_jobs(commands=[Reporter]) as jobs:
        ref = await jobs.enqueue_command(Reporter, Add(0, 0))
        result = await _running_with_progress(jobs, ref.id, 0.25)
        assert result.queued is not None and result.queued.status == "step 1 of 4"
        assert result.queued.state is JobState.STARTED
        release.set()
        final = await jobs.wait_for_job(ref.id)
    assert final.completed is not None and final.completed.progress == 1.0


async def test_a_failed_job_keeps_the_progress_it_reported_last(make_jobs: Factory) -> None:
    class GivesUp(AsyncCommand[Add]):
        async def run(self, request: Add) -> None:
            update_status(progress=0.7, status="70% done")
            raise RuntimeError("gave up")

    async with make_jobs(commands=[GivesUp], default_retry_limit=0) as jobs:
        ref = await jobs.enqueue_command(GivesUp, Add(0, 0))
        result = await jobs.wait_for_job(ref.id)
    assert result.failed is not None
    assert (result.failed.progress, result.failed.status) == (0.7, "70% done")


async def test_progress_is_estimated_from_earlier_durations(make_jobs: Factory) -> None:
    class Steady(AsyncCommand[Add]):
        async def run(self, request: Add) -> None:
            await anyio.sleep(request.a / 1000)

    async with make_jobs(commands=[Steady]) as jobs:
        for _ in range(2):
            ref = await jobs.enqueue_command(Steady, Add(800, 0))
            await jobs.wait_for_job(ref.id)
        ref = await jobs.enqueue_command(Steady, Add(800, 0))
        seen: list[float] = []
        with anyio.fail_after(5):
            while True:
                result = await jobs.get_job(ref.id)
                assert result is not None
                if result.state is JobState.COMPLETED:
                    break
                if result.queued is not None and result.queued.progress is not None:
                    seen.append(result.queued.progress)
                await anyio.sleep(0.05)
    assert seen and all(0 < p < 1 for p in seen)
    assert seen == sorted(seen)


async def test_progress_a_job_reports_is_never_replaced_by_an_estimate(make_jobs: Factory) -> None:
    """The estimate's durations are read from the database: progress the job reports during
    that read is the job's, and stays."""
    reading, reported, estimated = anyio.Event(), anyio.Event(), anyio.Event()
    release = anyio.Event()
    seen: list[float | None] = []

    class Reporter(AsyncCommand[Add]):
        async def run(self, request: Add) -> None:
            await reading.wait()
            update_status(progress=0.9)
            reported.set()
            await estimated.wait()
            await anyio.sleep(0.01)  # the estimate is made
            seen.append(current_job().progress)
            await release.wait()

    async with make_jobs(commands=[Reporter]) as jobs:

        async def slow_durations(command: str, worker: str | None) -> list[int]:
            reading.set()
            await reported.wait()  # the job reports while this read is under way
            estimated.set()
            return [1000]

        jobs.store.recent_durations = slow_durations  # type: ignore[method-assign]
        ref = await jobs.enqueue_command(Reporter, Add(0, 0))
        with anyio.fail_after(5):
            while not seen:
                await anyio.sleep(0.01)
        await anyio.sleep(0.6)  # a progress write
        running = await jobs.get_job(ref.id)
        release.set()
        await jobs.wait_for_job(ref.id)
    assert seen == [0.9]
    assert running is not None and running.queued is not None and running.queued.progress == 0.9


@dataclass
class User:
    id: str
    name: str


async def test_user_and_job_fields_are_visible_to_the_command(make_jobs: Factory) -> None:
    seen: dict[str, object] = {}

    class WhoAmI(AsyncCommand[Add]):
        async def run(self, request: Add) -> None:
            job = current_job()
            seen.update(
                user=job.user, args=job.args, reply_to=job.reply_to, tag=job.tag,
                batch_id=job.batch_id, created_by=job.created_by, attempts=job.attempts,
            )  # fmt: skip

    async def resolve(user_id: str) -> User:
        return User(user_id, "Ada")

    def resolve_at_once(user_id: str) -> User:  # a plain function will do too
        return User(user_id, "Ada")

    options = JobOptions(
        user_id="u7", args={"lang": "en"}, reply_to="https://example.invalid/cb", tag="t1",
        batch_id="b1", created_by="admin",
    )  # fmt: skip
    for resolver in (resolve, resolve_at_once):
        seen.clear()
        async with make_jobs(commands=[WhoAmI], user_resolver=resolver) as jobs:
            ref = await jobs.enqueue_command(WhoAmI, Add(0, 0), options)
            await jobs.wait_for_job(ref.id)
        assert seen == {
            "user": User("u7", "Ada"), "args": {"lang": "en"},
            "reply_to": "https://example.invalid/cb", "tag": "t1", "batch_id": "b1",
            "created_by": "admin", "attempts": 1,
        }  # fmt: skip


class PatientSync(SyncCommand[Add]):
    checks = 0

    def run(self, request: Add) -> None:
        while not cancellation_requested():
            PatientSync.checks += 1
            assert current_job().id > 0
            time.sleep(0.01)


async def test_sync_command_sees_a_cancel_request(make_jobs: Factory) -> None:
    PatientSync.checks = 0
    async with make_jobs(commands=[PatientSync]) as jobs:
        ref = await jobs.enqueue_command(PatientSync, Add(0, 0))
        with anyio.fail_after(5):
            while PatientSync.checks == 0:
                await anyio.sleep(0.01)
        await jobs.cancel_job(ref.id)
        with anyio.fail_after(5):
            result = await jobs.wait_for_job(ref.id)
    assert result.state is JobState.CANCELLED
    assert result.failed is not None and result.failed.attempts == 1


#: set by every MarkCommand; what each saw before it set it
_MARK: ContextVar[str | None] = ContextVar("mark", default=None)
SEEN_MARKS: list[tuple[str | None, int]] = []


class MarkCommand(AsyncCommand[Add]):
    async def run(self, request: Add) -> None:
        SEEN_MARKS.append((_MARK.get(), id(asyncio.current_task())))
        _MARK.set(f"job {request.a}")
        await anyio.lowlevel.checkpoint()


async def test_context_variables_a_job_sets_stay_its_own(make_jobs: Factory) -> None:
    """Jobs share runner tasks, one after another; each still starts from a clean copy of the
    context, as a task of its own would."""
    SEEN_MARKS.clear()
    async with make_jobs(commands=[MarkCommand], max_concurrency=1) as jobs:
        for i in range(4):
            ref = await jobs.enqueue_command(MarkCommand, Add(i, 0))
            with anyio.fail_after(10):
                await jobs.wait_for_job(ref.id)
    assert [mark for mark, _task in SEEN_MARKS] == [None] * 4
    assert len({task for _mark, task in SEEN_MARKS}) < 4  # the runner was reused


class WaitsForATransient(AsyncCommand[Add]):
    """Runs a transient job and waits for it, then logs as itself."""

    seen: list[tuple[int, int]] = []

    def __init__(self, jobs: BackgroundJobs) -> None:
        self.jobs = jobs

    async def run(self, request: Add) -> None:
        me = current_job().id
        await self.jobs.run_command_async(AddCommand, request)
        WaitsForATransient.seen.append((me, current_job().id))
        job_logger().info("after the transient job")


async def test_a_transient_job_awaited_leaves_its_caller_what_it_was(make_jobs: Factory) -> None:
    """run_command_async runs the job in the caller's task but not as the caller: afterwards
    application code is outside any job again, and a job that waited is its own job again."""
    WaitsForATransient.seen.clear()
    jobs = make_jobs(commands=[WaitsForATransient, AddCommand])
    jobs.services[BackgroundJobs] = jobs
    async with jobs:
        serial = JobOptions(worker="w")
        assert await jobs.run_command_async(AddCommand, Add(1, 2), serial) == Sum(3)
        with pytest.raises(LookupError):
            current_job()
        # Not taken for a job on worker "w" waiting for another job of "w" (refused)
        assert await jobs.run_command_async(AddCommand, Add(3, 4), serial) == Sum(7)
        ref = await jobs.enqueue_command(WaitsForATransient, Add(1, 1))
        with anyio.fail_after(10):
            result = await jobs.wait_for_job(ref.id)
    assert WaitsForATransient.seen == [(ref.id, ref.id)]
    assert "after the transient job" in (result.job.logs or "")


class PatientUntilAsked(SyncCommand[Add]):
    """Polls for a cancel request, for up to ``a`` seconds; records whether one came."""

    asked: list[bool] = []

    def run(self, request: Add) -> None:
        give_up = time.monotonic() + request.a
        while time.monotonic() < give_up:
            if cancellation_requested():
                PatientUntilAsked.asked.append(True)
                return
            time.sleep(0.01)
        PatientUntilAsked.asked.append(False)


async def test_a_sync_command_past_its_timeout_is_asked_to_stop(make_jobs: Factory) -> None:
    PatientUntilAsked.asked = []
    options = JobOptions(timeout=timedelta(seconds=0.2), retry_limit=0)
    async with make_jobs(commands=[PatientUntilAsked]) as jobs:
        ref = await jobs.enqueue_command(PatientUntilAsked, Add(20, 0), options)
        with anyio.fail_after(30):
            result = await jobs.wait_for_job(ref.id)
    assert PatientUntilAsked.asked == [True]
    assert result.state is JobState.FAILED
    assert result.failed is not None and result.failed.error_code == "Timeout"


class BadStatus(AsyncCommand[Add]):
    """Reports progress of the wrong kinds (each refused, nothing stored), then a good one;
    logs a line whose arguments do not format; all beside another running job."""

    async def run(self, request: Add) -> None:
        refused = []
        for progress in (Decimal("0.3"), Fraction(1, 3), True, "0.5", 1.5, float("nan")):
            try:
                update_status(progress=progress)  # type: ignore[arg-type]
            except InvalidOptionsError:
                refused.append(True)
        assert len(refused) == 6
        update_status(progress=0.25, status="a quarter")
        job_logger().info("processed %d items", "three")  # a mistake logging forgives
        await anyio.sleep(1.2)  # progress writes happen meanwhile


async def test_bad_progress_is_refused_where_it_is_reported_and_holds_up_no_job(
    make_jobs: Factory,
) -> None:
    async with make_jobs(commands=[BadStatus, Chatty]) as jobs:
        bad = await jobs.enqueue_command(BadStatus, Add(1, 0))
        other = await jobs.enqueue_command(Chatty, Add(1, 0))
        mid = await _running_with_progress(jobs, bad.id, 0.25)
        assert mid.queued is not None and mid.queued.status == "a quarter"
        results = [await jobs.wait_for_job(ref.id) for ref in (bad, other)]
    assert [result.state for result in results] == [JobState.COMPLETED] * 2
    assert results[0].completed is not None and results[0].completed.logs is not None
    assert "'processed %d items' % ('three',) (could not be formatted)" in (
        results[0].completed.logs
    )
