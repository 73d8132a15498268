"""Monthly archives and retention, on every dialect."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import anyio
import pytest

from asyncjobs import AsyncCommand, BackgroundJobs, JobOptions, JobState, current_job
from asyncjobs.store import add_months, month_key
from asyncjobs.web._admin_store import AdminStore, JobFilter
from tests.commands import Add, AddCommand, Fail, FailCommand

pytestmark = pytest.mark.anyio
Factory = Callable[..., BackgroundJobs]


async def test_archives_exist_for_this_and_next_month(make_jobs: Factory) -> None:
    async with make_jobs(execute=False) as jobs:
        months = await jobs.store.archive_months()
    this_month = month_key(datetime.now(UTC))
    assert this_month in months and add_months(this_month, 1) in months


async def test_completed_and_failed_jobs_are_archived_by_created_month(make_jobs: Factory) -> None:
    """Jobs created two months ago and finished now go to that month's archive (its table on
    SQLite, its partition elsewhere), not to this month's."""
    now = datetime.now(UTC)
    old_key = add_months(month_key(now), -2)
    created = month_start_of(old_key) + timedelta(days=3)
    async with make_jobs(commands=[AddCommand, FailCommand], default_retry_limit=0) as jobs:
        await jobs.store.ensure_archives(month_start_of(old_key), months_ahead=3)
        ok_job = jobs._command_job(AddCommand, Add(1, 1), None, created)
        bad_job = jobs._command_job(FailCommand, Fail(), None, created)
        ((ok_id, _), (bad_id, _)) = await jobs.store.enqueue([ok_job, bad_job])
        ok_result = await jobs.wait_for_job(ok_id)
        bad_result = await jobs.wait_for_job(bad_id)
        assert await jobs.store.select_job_ids(None, None) == []  # the queue is empty
        admin = AdminStore(jobs.dialect, jobs.store)
        listed = {
            (view, month): [
                row["id"] for row in await admin.list_jobs(view, JobFilter(month=month))
            ]
            for view in ("completed", "failed")
            for month in (old_key, month_key(now))
        }
    assert ok_result.completed is not None and ok_result.failed is None
    assert bad_result.failed is not None and bad_result.completed is None
    assert bad_result.failed.state is JobState.FAILED
    assert ok_result.completed.created_date == created
    assert listed == {
        ("completed", old_key): [ok_id], ("completed", month_key(now)): [],
        ("failed", old_key): [bad_id], ("failed", month_key(now)): [],
    }  # fmt: skip


async def test_retention_drops_whole_old_months(make_jobs: Factory) -> None:
    now = datetime.now(UTC)
    old = month_start_of(add_months(month_key(now), -6))
    async with make_jobs(commands=[AddCommand]) as runner:
        ref = await runner.enqueue_command(AddCommand, Add(1, 1))
        await runner.wait_for_job(ref.id)
    # execute=False: no maintenance loop racing the test
    async with make_jobs(retention_months=3, execute=False) as jobs:
        await jobs.store.ensure_archives(old, months_ahead=2)  # three old months
        before = await jobs.store.archive_months()
        dropped = await jobs.drop_expired_archives(now)
        after = await jobs.store.archive_months()
        current = await jobs.get_job(ref.id)
    old_months = [add_months(month_key(old), i) for i in range(3)]
    assert set(old_months) <= set(before)
    assert sorted(dropped) == old_months
    assert not set(old_months) & set(after)
    assert month_key(now) in after
    assert current is not None and current.completed is not None  # this month is kept


def month_start_of(key: str) -> datetime:
    return datetime(int(key[:4]), int(key[4:]), 1, tzinfo=UTC)


async def test_retention_keeps_the_month_of_a_job_still_queued(make_jobs: Factory) -> None:
    """A job created in an old month is still queued: its month is kept (the job is archived
    there when it ends, by a process that knows the month exists), and the months before go."""
    now = datetime.now(UTC)
    old = month_start_of(add_months(month_key(now), -6))
    async with make_jobs(commands=[AddCommand], retention_months=3, execute=False) as jobs:
        await jobs.store.ensure_archives(month_start_of(add_months(month_key(old), -1)), 3)
        late = jobs._command_job(AddCommand, Add(2, 3), None, old + timedelta(days=2))
        ((job_id, _),) = await jobs.store.enqueue([late])
        dropped = await jobs.drop_expired_archives(now)
        after = await jobs.store.archive_months()
    assert dropped == [add_months(month_key(old), -1)]
    assert {add_months(month_key(old), i) for i in range(3)} <= set(after)
    async with make_jobs(commands=[AddCommand]) as runner:
        with anyio.fail_after(10):
            result = await runner.wait_for_job(job_id)
    assert result.completed is not None and result.completed.response_body == '{"total":5}'


async def test_retention_keeps_the_month_of_a_parent_a_queued_job_depends_on(
    make_jobs: Factory,
) -> None:
    """A parent created in an old month completed; a job that depends on it waits in the queue
    (for its run_after, its worker, a busy node). Retention keeps the parent's month, whose
    summary lets the dependent run and whose archived row it reads; the months before go."""
    now = datetime.now(UTC)
    old = month_start_of(add_months(month_key(now), -6))
    seen: list[str | None] = []

    class Child(AsyncCommand[Add]):
        async def run(self, request: Add) -> None:
            parent = current_job().parent_job
            seen.append(parent and parent.response_body)

    async with make_jobs(commands=[AddCommand], default_retry_limit=0) as runner:
        await runner.store.ensure_archives(month_start_of(add_months(month_key(old), -1)), 3)
        parent_job = runner._command_job(AddCommand, Add(2, 3), None, old + timedelta(days=2))
        ((parent_id, _),) = await runner.store.enqueue([parent_job])
        with anyio.fail_after(10):
            assert (await runner.wait_for_job(parent_id)).state is JobState.COMPLETED
    async with make_jobs(commands=[Child], retention_months=3, execute=False) as jobs:
        child = await jobs.enqueue_command(Child, Add(0, 0), JobOptions(depends_on=parent_id))
        dropped = await jobs.drop_expired_archives(now)
        after = await jobs.store.archive_months()
    assert dropped == [add_months(month_key(old), -1)]
    assert month_key(old) in after
    async with make_jobs(commands=[Child]) as runner:
        with anyio.fail_after(10):
            result = await runner.wait_for_job(child.id)
    assert result.state is JobState.COMPLETED and seen == ['{"total":5}']
