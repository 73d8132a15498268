"""A small pipeline: a report job logs and reports progress, a dependent job publishes it, and a
callback is told when the report is ready.

Run: ``python examples/report_pipeline.py``
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import anyio

from asyncjobs import (
    AsyncCommand,
    AsyncCommandWithResult,
    BackgroundJobs,
    JobOptions,
    JobResult,
    current_job,
    job_logger,
    update_status,
)


@dataclass
class ReportRequest:
    name: str
    sections: int


@dataclass
class Report:
    name: str
    pages: int


class BuildReport(AsyncCommandWithResult[ReportRequest, Report]):
    async def run(self, request: ReportRequest) -> Report:
        log = job_logger()
        for section in range(1, request.sections + 1):
            log.info("rendering section %d of %d", section, request.sections)
            update_status(progress=section / request.sections, status=f"section {section}")
            await anyio.sleep(0.01)
        return Report(request.name, pages=request.sections * 2)


class PublishReport(AsyncCommand[ReportRequest]):
    """Depends on BuildReport: runs only after it completed, and reads its result."""

    async def run(self, request: ReportRequest) -> None:
        parent = current_job().parent_job
        job_logger().info("publishing %s", parent.response_body if parent else "nothing")


class ReportReady(AsyncCommand[Report]):
    """The callback: runs with BuildReport's result once it succeeded."""

    notified: list[Report] = []

    async def run(self, request: Report) -> None:
        ReportReady.notified.append(request)


async def run_pipeline(dsn: str) -> tuple[JobResult, JobResult]:
    jobs = BackgroundJobs(dsn, commands=[BuildReport, PublishReport, ReportReady])
    async with jobs:
        request = ReportRequest("q3", sections=4)
        build = await jobs.enqueue_command(BuildReport, request, JobOptions(callback="ReportReady"))
        publish = await jobs.enqueue_command(
            PublishReport, request, JobOptions(depends_on=build.id)
        )
        return await jobs.wait_for_job(build.id), await jobs.wait_for_job(publish.id)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as folder:
        built, published = anyio.run(run_pipeline, f"sqlite:///{Path(folder) / 'jobs.db'}")
    for result in (built, published):
        job = result.job
        assert job is not None
        print(f"{job.command}: {result.state}\n{job.logs}")
    print(f"callback received: {ReportReady.notified}")
